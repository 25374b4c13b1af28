"""Defaults that used to surprise a Hugging Face user: what the library's defaults do on our runs."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from conftest import run_script, tiny_args

PROMPT = "Once upon a time"


def generate_with_pipeline_defaults(model_dir: Path) -> list[int]:
    """`pipeline("text-generation", model=model_dir)(PROMPT)` as a user types it; the ids of prompt + continuation."""
    from transformers import AutoTokenizer, pipeline

    text = pipeline("text-generation", model=str(model_dir))(PROMPT)[0]["generated_text"]
    assert text.startswith(PROMPT)
    return AutoTokenizer.from_pretrained(model_dir)(text)["input_ids"]


class CollectWarnings(logging.Handler):
    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_a_new_model_generates_with_the_pipeline_defaults_and_an_explicit_length_without_a_warning(
        tmp_path, gpt2_tokenizer):
    """A 128-position GPT-2 saved as train_hf.py saves it: the pipeline's default of 256 new tokens ran past its
    position embedding (IndexError). Its generation_config.json now asks for half the context; a call that names its
    own max_new_tokens gets exactly that, with no "Both max_new_tokens and max_length" warning."""
    import torch
    from transformers import GPT2Config, pipeline

    from edugpt.modeling import new_gpt2

    torch.manual_seed(0)
    model = new_gpt2(GPT2Config(n_layer=1, n_head=2, n_embd=32, n_positions=128, vocab_size=50257))
    assert model.generation_config.max_new_tokens == 64
    model.generation_config.eos_token_id = None  # a random model may sample <|endoftext|> early; count every token
    model.save_pretrained(tmp_path)
    gpt2_tokenizer.save_pretrained(tmp_path)

    prompt_ids = gpt2_tokenizer(PROMPT)["input_ids"]
    pipe = pipeline("text-generation", model=str(tmp_path))
    out = pipe(PROMPT, return_tensors=True)[0]["generated_token_ids"]
    assert len(out) == len(prompt_ids) + 64 <= 128
    collect = CollectWarnings()
    logging.getLogger("transformers").addHandler(collect)
    try:
        out = pipe(PROMPT, max_new_tokens=5, return_tensors=True)[0]["generated_token_ids"]
    finally:
        logging.getLogger("transformers").removeHandler(collect)
    assert len(out) == len(prompt_ids) + 5
    assert not [m for m in collect.messages if "max_new_tokens" in m], collect.messages


def test_the_answer_length_is_capped_by_the_context_and_kept_when_it_fits():
    from transformers import GPT2Config, GPT2LMHeadModel

    from edugpt.modeling import fit_generation_to_context

    for positions, asked, expected in ((1024, None, 256), (64, None, 32), (128, 256, 64), (1024, 40, 40)):
        model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=1, n_embd=8, n_positions=positions, vocab_size=64))
        model.generation_config.max_new_tokens = asked
        assert fit_generation_to_context(model).generation_config.max_new_tokens == expected


@pytest.mark.slow
def test_every_saved_model_and_checkpoint_generates_with_the_pipeline_defaults(data_dir, tiny_model_dir, tmp_path):
    """The README's promise: pretraining (64 positions), SFT and DPO (128) outputs and each of their checkpoints
    answer `pipeline("text-generation", model=RUN)("Once upon a time")` within their context."""
    pretrain, sft, dpo = tmp_path / "pretrain", tmp_path / "sft", tmp_path / "dpo"
    run_script("train_hf.py", *tiny_args(data_dir, pretrain, "--max_steps", "2", "--save_steps", "1", "--eval_strategy",
                                         "no", "--sample_steps", "0"), check=True, timeout=300)
    short = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--logging_steps", "1"]
    run_script("finetune/sft.py", "--config", "configs/sft_smoke.yaml", "--model_name_or_path", tiny_model_dir,
               "--output_dir", sft, *short, check=True, timeout=300)
    run_script("finetune/dpo.py", "--config", "configs/dpo_smoke.yaml", "--model_name_or_path", sft,
               "--output_dir", dpo, *short, check=True, timeout=300)
    for run, positions in ((pretrain, 64), (sft, 128), (dpo, 128)):
        folders = [run, *sorted(run.glob("checkpoint-*"))]
        assert len(folders) == 3, folders
        for folder in folders:
            ids = generate_with_pipeline_defaults(folder)
            assert len(ids) <= positions, folder

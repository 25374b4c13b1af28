"""Recipes and data both ways with TRL: `trl sft` / `trl dpo` run our recipes unchanged, our scripts read TRL's
`datasets:` mixture, UltraFeedback-shaped pairs become the same training rows under `trl dpo` and finetune/dpo.py, and
the shipped chat template keeps a literal <|endoftext|> in a message from ending a turn in every consumer."""

from __future__ import annotations

import json
import shutil

import pytest
from factories import ROOT

from edugpt.model.tokenizer import GPT2_EOS_ID

EOT = "<|endoftext|>"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


@pytest.fixture(scope="module")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny GPT-2 with the tokenizer an SFT run saves: edugpt's template, pad token, model_max_length."""
    from transformers import AutoTokenizer

    from edugpt.model.chat import add_chat_template
    from edugpt.model.tokenizer import ready_to_save

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, path)
    tokenizer = ready_to_save(add_chat_template(AutoTokenizer.from_pretrained(path)), 128)
    tokenizer.save_pretrained(path)
    return path


def dpo_args(tmp_path, *extra):
    """configs/dpo.yaml as finetune/dpo.py parses it (CPU-sized)."""
    from trl import DatasetMixtureConfig, DPOConfig, ModelConfig, ScriptArguments

    from edugpt.config.arguments import RunArguments
    from edugpt.config.cli import parse_config

    return parse_config([ScriptArguments, DPOConfig, ModelConfig, DatasetMixtureConfig, RunArguments],
                        ["--config", "configs/dpo.yaml", "--bf16", "false", "--tf32", "false", "--use_cpu", "true",
                         "--dataset_num_proc", "1", "--output_dir", str(tmp_path / "out"), *extra])


def ultrafeedback_rows() -> list[dict]:
    """Rows shaped like HuggingFaceH4/ultrafeedback_binarized's train_prefs: a string `prompt` repeating the first turn,
    chosen/rejected as whole conversations, the same pair again as `messages`, scores and an id."""
    pairs = [
        ("Name a primary color.", "Red is a primary color.", "Purple."),
        ("Write a haiku about rain.\nKeep it short.", "Soft rain on the roof\nwhispers to the sleeping town\n"
         "morning comes washed clean", "Rain is wet."),
        (f"What does {EOT} mean in GPT-2?", f"{EOT} is the token that ends a document.", "Nothing."),
    ]
    rows = []
    for index, (prompt, good, bad) in enumerate(pairs):
        rows.append({"prompt": prompt, "prompt_id": f"{index:064x}",
                     "chosen": [user(prompt), assistant(good)], "rejected": [user(prompt), assistant(bad)],
                     "messages": [user(prompt), assistant(good)], "score_chosen": 9.0, "score_rejected": 3.5})
    return rows


def prepared_rows(trainer) -> list[tuple]:
    data = trainer.train_dataset
    return list(zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))


def test_ultrafeedback_shaped_pairs_are_the_same_training_rows_under_trl_dpo(chat_model_dir, tmp_path):
    """configs/dpo.yaml's mixture entry, pointed at a local file shaped like its Hub dataset: what `trl dpo` does with
    it (TRL's get_dataset, DPOTrainer's own preparation) and what finetune/dpo.py does (our loader first) give the very
    same token rows."""
    from dataclasses import replace

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer, get_dataset

    from edugpt.train.chat_data import load_stage_splits

    script_args, args, _, mixture, _ = dpo_args(tmp_path)
    (entry,) = mixture.datasets
    assert entry.path == "HuggingFaceH4/ultrafeedback_binarized" and entry.columns == ["chosen", "rejected"]
    data_file = tmp_path / "train_prefs.jsonl"
    data_file.write_text("".join(json.dumps(row) + "\n" for row in ultrafeedback_rows()))
    local = replace(mixture, datasets=[replace(entry, path="json", data_files=str(data_file), split="train")])

    def trainer(train_dataset):
        model = AutoModelForCausalLM.from_pretrained(chat_model_dir)
        return DPOTrainer(model=model, ref_model=AutoModelForCausalLM.from_pretrained(chat_model_dir), args=args,
                          train_dataset=train_dataset, processing_class=AutoTokenizer.from_pretrained(chat_model_dir))

    trl_rows = prepared_rows(trainer(get_dataset(local)["train"]))  # `trl dpo --config configs/dpo.yaml`
    ours, _ = load_stage_splits(script_args, args, "dpo", local)  # finetune/dpo.py
    assert ours[0] == {"prompt": [user("Name a primary color.")], "chosen": [assistant("Red is a primary color.")],
                       "rejected": [assistant("Purple.")]}
    assert prepared_rows(trainer(ours)) == trl_rows and len(trl_rows) == 3

    tokenizer = AutoTokenizer.from_pretrained(chat_model_dir)
    for prompt_ids, chosen_ids, rejected_ids in trl_rows:
        assert GPT2_EOS_ID not in prompt_ids  # the third prompt's literal <|endoftext|> stays text
        assert chosen_ids.count(GPT2_EOS_ID) == rejected_ids.count(GPT2_EOS_ID) == 1  # the turn's own end
        assert chosen_ids[-1] == rejected_ids[-1] == GPT2_EOS_ID
    assert tokenizer.decode(trl_rows[2][0]).replace("\u200b", "") == f"User: What does {EOT} mean in GPT-2?\n\nAssistant:"


def test_sft_rows_keep_a_literal_endoftext_as_text(chat_model_dir, tmp_path):
    """TRL's SFT preparation with the recipe's template file: one eos per assistant turn, each one trained on."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

    from edugpt.config.cli import parse_config

    _, args, _ = parse_config([ScriptArguments, SFTConfig, ModelConfig],
                              ["--config", "configs/sft_smoke.yaml", "--output_dir", str(tmp_path / "out"),
                               "--packing", "false"])
    conversations = [
        [user(f"Repeat {EOT} twice."), assistant(f"{EOT} {EOT}"), user("Thanks"), assistant("You're welcome.")],
        [{"role": "system", "content": f"Stop at {EOT}."}, user("Hi"), assistant("Hello!")],
    ]
    trainer = SFTTrainer(model=AutoModelForCausalLM.from_pretrained(chat_model_dir), args=args,
                         train_dataset=Dataset.from_dict({"messages": conversations}),
                         processing_class=AutoTokenizer.from_pretrained(chat_model_dir))
    for row, conversation in zip(trainer.train_dataset, conversations):
        ends = [i for i, token in enumerate(row["input_ids"]) if token == GPT2_EOS_ID]
        assert len(ends) == sum(m["role"] == "assistant" for m in conversation)
        assert all(row["labels"][i] == GPT2_EOS_ID for i in ends)


def test_pipeline_chat_input_keeps_a_literal_endoftext_as_text(chat_model_dir):
    from transformers import pipeline
    from transformers.utils.chat_template_utils import Chat

    pipe = pipeline("text-generation", model=str(chat_model_dir))
    inputs = pipe.preprocess(Chat([user(f"Say {EOT} and stop.")]))
    ids = inputs["input_ids"][0].tolist()
    assert GPT2_EOS_ID not in ids and pipe.tokenizer.decode(ids).endswith("\n\nAssistant:")
    reply = pipe([user(f"Say {EOT} and stop.")], max_new_tokens=3, do_sample=False)[0]["generated_text"][-1]
    assert reply["role"] == "assistant"


def test_our_scripts_read_trls_datasets_mixture(tmp_path):
    """The `datasets:` key (TRL's DatasetMixtureConfig) in finetune/*.py: TRL's get_dataset loads it, paths relative to
    the repository resolve from anywhere, and test_split_size splits with the run's seed (the same rows every run)."""
    from trl import DatasetMixtureConfig, ModelConfig, ScriptArguments, SFTConfig

    from edugpt.config.arguments import RunArguments
    from edugpt.config.cli import parse_config
    from edugpt.train.chat_data import load_stage_splits

    recipe = tmp_path / "mixture.yaml"
    recipe.write_text((ROOT / "configs/sft_smoke.yaml").read_text().replace(
        "dataset_name: edugpt/assets/finetune/sft_smoke\n",
        "datasets:\n  - path: json\n    data_files: edugpt/assets/finetune/sft_smoke/train.jsonl\n"
        "    columns: [messages]\n  - path: edugpt/assets/finetune/sft_smoke\n"
        "test_split_size: 0.1\n",
    ).replace('eval_strategy: "no"', "eval_strategy: steps\neval_steps: 10"))
    parsed = parse_config([ScriptArguments, SFTConfig, ModelConfig, DatasetMixtureConfig, RunArguments],
                          ["--config", str(recipe), "--output_dir", str(tmp_path / "out")])
    script_args, args, _, mixture, _ = parsed
    assert [d.path for d in mixture.datasets] == ["json", "edugpt/assets/finetune/sft_smoke"]
    train, test = load_stage_splits(script_args, args, "sft", mixture)
    assert (len(train), len(test)) == (149, 17)  # 2 x 83 conversations, 10% held out
    again, again_test = load_stage_splits(script_args, args, "sft", mixture)
    assert again["messages"] == train["messages"] and again_test["messages"] == test["messages"]


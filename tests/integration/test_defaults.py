"""Defaults that used to surprise a Hugging Face user: what the library's defaults do on our runs."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from factories import run_script, tiny_args

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

    from edugpt.model.gpt2 import new_gpt2

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

    from edugpt.model.gpt2 import fit_generation_to_context

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


# --- a launch that starts fewer processes than it asked for -----------------------------------------------------------

ACCELERATE_SIMPLE_LAUNCH = {"ACCELERATE_USE_CPU": "True", "ACCELERATE_MIXED_PRECISION": "no",
                            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_a_launch_asking_for_several_processes_that_started_one_is_told_from_its_environment():
    """What accelerate launch's simple launcher exports (accelerate 1.15, measured): MASTER_ADDR/PORT only when more
    than one process was asked for, never a world size; torchrun and mpirun set one."""
    from edugpt.config.cli import launch_problem

    assert "started only this one" in launch_problem(ACCELERATE_SIMPLE_LAUNCH)
    one = {k: v for k, v in ACCELERATE_SIMPLE_LAUNCH.items() if not k.startswith("MASTER_")}
    assert launch_problem(one) is None  # --num_processes 1
    for started in ({"WORLD_SIZE": "2", "RANK": "0"}, {"OMPI_COMM_WORLD_SIZE": "2"}, {"PMI_SIZE": "2"}):
        assert launch_problem({**ACCELERATE_SIMPLE_LAUNCH, **started}) is None
    assert launch_problem({"MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "1234"}) is None  # python train_hf.py on Slurm


def accelerate_launch(*launch_args: str, tmp_path) -> object:
    """`accelerate launch LAUNCH_ARGS train_hf.py` on data that does not exist: the launcher starts its processes,
    each sets up logging and then stops on the missing data with one `error:` line, in seconds. (Pass --quiet to
    accelerate's simple launcher, or it repeats the process's stderr in a traceback of its own.)"""
    import os
    import subprocess
    import sys

    from factories import ROOT

    accelerate = Path(sys.executable).with_name("accelerate")
    command = [str(accelerate), "launch", *launch_args, str(ROOT / "train_hf.py"), "--config", "configs/smoke.yaml",
               "--dataset_dir", str(tmp_path / "no-data"), "--output_dir", str(tmp_path / "out")]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PATH": f"{accelerate.parent}:{os.environ['PATH']}"})


def errors(proc) -> int:
    return sum(line.startswith("error: dataset_dir") for line in proc.stderr.splitlines())


@pytest.mark.slow
def test_accelerate_launch_cpu_num_processes_2_warns_that_it_runs_one_process(tmp_path):
    """`accelerate launch --cpu --num_processes 2` starts ONE process and says nothing (its multi-CPU mode needs
    mpirun); the run now says so and names the config that does start two. The same launch with one process, and the
    torchrun config that starts two, say nothing."""
    two = accelerate_launch("--quiet", "--cpu", "--num_processes", "2", tmp_path=tmp_path)
    assert errors(two) == 1, two.stderr[-3000:]  # one process ran
    assert "accelerate launch was asked for more than one process but started only this one" in two.stderr
    assert "configs/accelerate/cpu_ddp_2proc.yaml" in two.stderr
    one = accelerate_launch("--quiet", "--cpu", "--num_processes", "1", tmp_path=tmp_path)
    assert errors(one) == 1 and "started only this one" not in one.stderr, one.stderr[-3000:]
    with socket.socket() as probe:  # a free port: other tests may be running torchrun on accelerate's 29500
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    torchrun = accelerate_launch("--config_file", "configs/accelerate/cpu_ddp_2proc.yaml", "--main_process_port", port,
                                 tmp_path=tmp_path)
    # Two processes ran: both printed the error, or torchrun stopped rank 1 (SIGTERM, named in its failure report)
    # when rank 0 exited first.
    assert errors(torchrun) == 2 or (errors(torchrun) == 1 and "local_rank: 1" in torchrun.stderr), \
        torchrun.stderr[-3000:]
    assert "started only this one" not in torchrun.stderr


# --- the model card's lm-eval numbers ---------------------------------------------------------------------------------

def test_the_card_takes_a_complete_lm_eval_run_over_a_newer_limited_one(run_dir):
    """run_dir holds a `--limit 500` evaluation. A complete one, then a newer `--limit 10` check: the card keeps the
    complete numbers (it took the newest file); the newest complete run wins among complete ones."""
    import json
    import os

    from edugpt.report.card import build_model_card
    from edugpt.run.rundir import find_lm_eval_results

    [limited_500] = (run_dir / "eval").rglob("results_*.json")
    base = json.loads(limited_500.read_text())

    def results(name: str, acc_norm: float, effective: int | None, age: int) -> Path:
        data = {**base, "results": {"hellaswag": {**base["results"]["hellaswag"], "acc_norm,none": acc_norm}},
                "n-samples": {"hellaswag": {"original": 10042, "effective": effective or 10042}},
                "config": {**base["config"], "limit": effective}}
        path = limited_500.with_name(f"results_{name}.json")
        path.write_text(json.dumps(data))
        os.utime(path, (limited_500.stat().st_mtime + age,) * 2)
        return path

    full = results("2026-11-26T10-00-00", 0.3141, None, age=10)
    results("2026-11-26T11-00-00", 0.5, 10, age=20)  # a quick check afterwards
    assert find_lm_eval_results(run_dir)["_path"] == full
    assert "0.3141" in build_model_card(run_dir).text
    newer_full = results("2026-11-26T12-00-00", 0.3000, None, age=30)
    assert find_lm_eval_results(run_dir)["_path"] == newer_full

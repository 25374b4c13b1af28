"""Shared test fixtures. Everything runs offline on tiny local fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None, check: bool = False):
    """Run one of the project's entry points (`prepare_data.py`, `train_hf.py`, ...) as a user would, offline."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from edugpt.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt2_tokenizer):
    """A randomly initialised 2-layer GPT-2 (n_embd 32) saved with the GPT-2 tokenizer: a stand-in checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


class RecordingHub:
    """Stands in for the Hub (unreachable here) under Trainer's pushes and edugpt.hub.push_model_card (patch it over
    `transformers.trainer.hf_api` and `huggingface_hub.HfApi`): records each upload, or fails like a dropped
    connection. As HfApi does, a `run_as_future` upload (Trainer's pushes at each
    save, per hub_strategy) returns a Future holding the outcome instead of raising."""

    def __init__(self, fail: bool):
        self.fail, self.uploads = fail, []

    def __call__(self, *args, **kwargs):  # hf_api() / HfApi() -> this instance
        return self

    def create_repo(self, repo_id, **kwargs):
        from types import SimpleNamespace

        return SimpleNamespace(repo_id=repo_id)

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, commit_message=None, run_as_future=False,
                      **kwargs):
        from concurrent.futures import Future

        outcome = Future()
        if self.fail:
            outcome.set_exception(ConnectionError("Connection reset by peer"))
        else:
            card = Path(folder_path) / "README.md"
            self.uploads.append({"repo_id": repo_id, "message": commit_message, "allow": allow_patterns,
                                 "files": sorted(p.name for p in Path(folder_path).iterdir()),
                                 "card": card.read_text() if card.is_file() else None})
            outcome.set_result(None)
        return outcome if run_as_future else outcome.result()

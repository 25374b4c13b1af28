"""Shared test fixtures. Everything runs offline on tiny local fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from factories import make_run_dir, run_script, tiny_args

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two pytest-xdist workers on a machine of two cores: one thread each for torch's OpenMP/MKL (and
    # the processes they start), or the workers' threads spin against each other for the same cores.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def _no_logging_into_closed_streams():
    """An entry point run in this process sets up logging (cli.setup_logging: basicConfig(force=True)) on the
    sys.stderr of that moment, which is pytest's capture of one test: drop such handlers once that stream is closed,
    or a later test's logging prints '--- Logging error ---' with a traceback."""
    import logging

    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)


# --- tiny pretraining runs (train_hf.py) ---------------------------------------------------------------------------


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`build(folder)` run once for the whole session, also across pytest-xdist workers (they share the parent of
    their base temporary folders; a file lock makes one build while the others wait): the folder it built."""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    folder, done = root / f"shared-{name}", root / f"shared-{name}.done"
    with FileLock(str(root / f"shared-{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)  # a build that failed in another worker
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The embedded corpus prepared at seq 64 (40 documents): the data of every tiny pretraining run."""

    def prepare(folder):
        run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", folder / "data", "--seq_len", "64",
                   "--max_docs", "40", "--val_fraction", "0.1", check=True, timeout=300)

    return built_once(tmp_path_factory, "prepared", prepare) / "data"


@pytest.fixture(scope="session")
def baseline(data_dir, tmp_path_factory):
    """One uninterrupted 8-step run: the reference for outputs, resume and fallback tests (copy it before changing)."""
    # In-loop HellaSwag on here only: the resume tests compare runs without it, so their equal losses also show that
    # scoring leaves the weights, optimizer state and data order alone.
    hellaswag = ["--hellaswag_steps", "4", "--hellaswag_limit", "12",
                 "--hellaswag_file", "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"]

    def train(folder):
        proc = run_script("train_hf.py", *tiny_args(data_dir, folder / "run", *hellaswag), check=True, timeout=300)
        (folder / "stdout").write_text(proc.stdout)
        (folder / "stderr").write_text(proc.stderr)

    folder = built_once(tmp_path_factory, "baseline", train)
    proc = subprocess.CompletedProcess("train_hf.py", 0, (folder / "stdout").read_text(), (folder / "stderr").read_text())
    return folder / "run", proc


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from edugpt.model.tokenizer import load_tokenizer

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


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    return make_run_dir(tmp_path, tiny_model_dir)


def pytest_collection_modifyitems(session, config, items):
    """Under pytest-xdist (`make test`: `--dist loadfile`, a file's tests on one worker) the files go to the workers in
    collection order: the files with the most slow tests first, so that no worker ends alone on a long file while
    the other idles. The order within a file stays as written."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    items.sort(key=lambda item: -slow[item.path])

"""Faults while training and evaluating (issue 11): a checkpoint whose saved state does not load, a disk that fills up
while a checkpoint is written, damaged inputs to eval_harness.py, missing relative paths. Argument mistakes:
test_cli.py; special-token strings in text: test_special_tokens.py."""

from __future__ import annotations

import contextlib
import errno
import gzip
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from factories import assert_same_losses, load_train_main, run_script, tiny_args, train_records

from edugpt.errors import EduGPTError
from edugpt.eval.tasks.hellaswag_local import SMOKE_FILE
from edugpt.run.checkpoints import checkpoint_problem, read_marker, write_marker
from edugpt.run.rundir import MARKER


def error_line(proc) -> str:
    """The one `error:` line of a failed entry point (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and errors[0] == proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    return errors[0]


# --- a checkpoint that is whole by its marker but whose state Trainer cannot load --------------------------------------


def unloadable(checkpoint: Path) -> None:
    """Replace optimizer.pt with bytes torch cannot load and re-mark the checkpoint, so the marker's hashes match: what a
    checkpoint written by another torch version looks like."""
    settings = read_marker(checkpoint)["settings"]
    (checkpoint / "optimizer.pt").write_bytes(b"an optimizer state this torch cannot unpickle\n" * 100)
    write_marker(checkpoint, settings)
    assert checkpoint_problem(checkpoint) is None


@pytest.mark.slow
def test_a_checkpoint_whose_state_does_not_load_is_set_aside_and_training_falls_back(data_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, "--max_steps", "6", "--save_total_limit", "3", "--sample_steps", "0")
    run_script("train_hf.py", *args, check=True, timeout=300)
    reference = tmp_path / "reference"
    reference.mkdir()
    shutil.copy(output_dir / "metrics.jsonl", reference)
    # Killed after saving checkpoint-4; checkpoint-4 then turns out not to load.
    shutil.rmtree(output_dir / "checkpoint-6")
    for name in (MARKER, "model.safetensors"):
        (output_dir / name).unlink()
    unloadable(output_dir / "checkpoint-4")

    proc = run_script("train_hf.py", *args, check=True, timeout=300)
    warning = next(line for line in proc.stderr.splitlines() if "checkpoint-4 is not usable" in line)
    assert "its saved state did not load" in warning and "falling back" in warning and "corrupt-checkpoint-4" in warning
    assert (output_dir / "corrupt-checkpoint-4" / "optimizer.pt").read_bytes().startswith(b"an optimizer state")
    assert json.loads((output_dir / "run_config.json").read_text())["resumed_from"] == str(output_dir / "checkpoint-2")
    assert sorted(train_records(output_dir)) == [1, 2, 3, 4, 5, 6]
    assert_same_losses(reference, output_dir, [3, 4, 5, 6])  # trained on from checkpoint-2, as if never interrupted
    assert checkpoint_problem(output_dir, require_trainer_state=False) is None

    # Named explicitly, such a checkpoint is not replaced by another one: an error naming it.
    with pytest.raises(EduGPTError, match=r"corrupt-checkpoint-4' could not be loaded \(\w+Error"):
        load_train_main()(tiny_args(data_dir, tmp_path / "new", "--max_steps", "6", "--save_total_limit", "3",
                                    "--sample_steps", "0", "--resume_from_checkpoint",
                                    str(output_dir / "corrupt-checkpoint-4")))


# --- disk full while a checkpoint is written --------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes mounted at `path` (yields True), or a plain folder where mounting is not allowed."""
    path.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                                 capture_output=True).returncode == 0
    except OSError:
        mounted = False
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=False)


@pytest.mark.slow
def test_disk_full_while_saving_a_checkpoint_is_one_line_and_leaves_no_unfinished_checkpoint(
        baseline, data_dir, tmp_path, monkeypatch):
    checkpoint_bytes = sum(p.stat().st_size for p in (baseline[0] / "checkpoint-8").iterdir())
    disk = tmp_path / "disk"
    # Room for checkpoint-2 and the run's small files, not for checkpoint-4 as well.
    with small_disk(disk, int(checkpoint_bytes * 1.5) + 2 * 2**20) as real_disk:
        output_dir = disk / "run"
        args = tiny_args(data_dir, output_dir, "--sample_steps", "0")
        if real_disk:  # the real thing: the tmpfs fills up while Trainer writes checkpoint-4
            message = error_line(run_script("train_hf.py", *args, timeout=300))
        else:  # no permission to mount: the same failure, injected where Trainer writes checkpoint-4's optimizer.pt
            import torch

            real_save = torch.save

            def save(obj, f, *a, **kw):
                if str(f).endswith(os.path.join("checkpoint-4", "optimizer.pt")):
                    Path(f).write_bytes(b"\0" * 4096)
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_save(obj, f, *a, **kw)

            monkeypatch.setattr(torch, "save", save)
            with pytest.raises(EduGPTError) as error:
                load_train_main()(args)
            message = f"error: {error.value}"
        assert f"the disk holding {output_dir} is full" in message, message
        assert "removed the unfinished checkpoint-4" in message and "last complete checkpoint is checkpoint-2" in message
        assert [p.name for p in sorted(output_dir.iterdir()) if "checkpoint" in p.name] == ["checkpoint-2"]
        assert checkpoint_problem(output_dir / "checkpoint-2") is None
        assert not (output_dir / "model.safetensors").exists() and not (output_dir / MARKER).exists()
        assert sorted(train_records(output_dir)) == [1, 2, 3, 4]


# --- eval_harness.py: damaged inputs ----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", ["truncated_weights", "binary_hellaswag_file"])
def test_eval_harness_damaged_files_are_one_line(tiny_model_dir, tmp_path, case):
    model, hellaswag = tiny_model_dir, SMOKE_FILE
    if case == "truncated_weights":  # e.g. an interrupted copy
        model = tmp_path / "model"
        shutil.copytree(tiny_model_dir, model)
        weights = model / "model.safetensors"
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
        expected = f"{weights} is damaged"
    else:  # a gzipped file passed as the jsonl
        hellaswag = tmp_path / "hellaswag.jsonl"
        hellaswag.write_bytes(gzip.compress(SMOKE_FILE.read_bytes()))
        expected = f"HellaSwag file {hellaswag} line 1 is not UTF-8 text"
    proc = run_script("eval_harness.py", "--model", model, "--tasks", "hellaswag", "--limit", "2",
                      "--hellaswag_file", hellaswag, "--output_dir", tmp_path / "out", timeout=180)
    assert expected in error_line(proc)
    assert not (tmp_path / "out").exists()


# --- a relative path that does not exist ------------------------------------------------------------------------------


def test_a_missing_relative_path_is_reported_as_missing_not_as_a_hub_problem(tmp_path, monkeypatch):
    from edugpt.eval.harness import check_model_source
    from edugpt.model.chat import resolve_model_dir
    from edugpt.train.chat_data import load_finetune_dataset

    monkeypatch.chdir(tmp_path)
    for check in (resolve_model_dir, check_model_source):
        with pytest.raises(EduGPTError) as error:
            check("runs/demo/pretrain")
        assert f"'runs/demo/pretrain' does not exist (relative to {tmp_path})" in str(error.value)
        assert "Hub" not in str(error.value).split(";")[0]
        with pytest.raises(EduGPTError) as error:  # could be a Hub repo id (owner/name): both readings are named
            check("runs/pretrain")
        assert "'runs/pretrain' does not exist" in str(error.value) and "Hub" in str(error.value)
    for name in ("data/sft/train", "./sft_data", "data/train.jsonl"):
        with pytest.raises(EduGPTError, match=f"dataset '{name}' does not exist \\(relative to"):
            load_finetune_dataset(name, "sft")
    with pytest.raises(EduGPTError, match="dataset 'data/sft' is no local file or folder"):
        load_finetune_dataset("data/sft", "sft")

"""The lifecycle every training entry point shares (edugpt/run/lifecycle.py), shown on tiny train_hf.py runs: whose folder
may be written, one job per folder, resume from a given checkpoint, changed settings, starting over, a damaged final
model, zero steps. (Resume after SIGKILL, SIGTERM and corrupt checkpoints: test_train_hf.py; SFT: test_finetune.py.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import (
    ROOT,
    assert_same_losses,
    load_train_main,
    lock_held_in_another_pid_namespace,
    run_script,
    tiny_args,
    train_records,
)

from edugpt.errors import EduGPTError
from edugpt.io.safefs import DirLock
from edugpt.run.rundir import LOCK, MARKER, list_checkpoints

pytestmark = pytest.mark.slow


def snapshot(folder: Path) -> dict:
    """Every file's bytes, but the lock file's (it names the latest job that held it)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK}


def unfinished_copy(baseline_dir: Path, dest: Path, keep_through: int) -> Path:
    """The baseline run as if killed after saving checkpoint-`keep_through`: later checkpoints and the final model gone."""
    shutil.copytree(baseline_dir, dest)
    for name in (MARKER, "model.safetensors"):
        (dest / name).unlink()
    for checkpoint in list_checkpoints(dest):
        if int(checkpoint.name.split("-")[1]) > keep_through:
            shutil.rmtree(checkpoint)
    return dest


def test_someone_elses_folder_is_refused_and_left_as_it_was(data_dir, tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my thesis\n")
    (folder / "config.json").write_text("{}")
    before = snapshot(folder)
    with pytest.raises(EduGPTError, match=r"holds files that are not an edugpt run \(config.json, notes.txt\)"):
        load_train_main()(tiny_args(data_dir, folder))
    assert snapshot(folder) == before and not (folder / LOCK).exists()


def test_a_run_of_another_kind_and_a_file_are_refused(data_dir, tmp_path):
    sft = tmp_path / "sft"
    sft.mkdir()
    (sft / "run_config.json").write_text(json.dumps({"edugpt": {"kind": "sft", "version": "0.1.0"}, "script": "sft",
                                                     "training": {}}))
    with pytest.raises(EduGPTError, match="holds a sft run .*not a pretrain run"):
        load_train_main()(tiny_args(data_dir, sft))
    # A run_config.json without the "edugpt" stamp every edugpt run writes is not ours: refused in one line.
    (sft / "run_config.json").write_text(json.dumps({"script": "sft", "training": {}}))
    with pytest.raises(EduGPTError, match="holds a run_config.json that names no edugpt run kind .*pass a new folder"):
        load_train_main()(tiny_args(data_dir, sft))
    (tmp_path / "file").write_text("x")
    with pytest.raises(EduGPTError, match="is a file"):
        load_train_main()(tiny_args(data_dir, tmp_path / "file"))


def test_zero_steps_is_an_error_and_writes_nothing(data_dir, tmp_path):
    with pytest.raises(EduGPTError, match="max_steps is 0, so this run would train nothing"):
        load_train_main()(tiny_args(data_dir, tmp_path / "run", "--max_steps", "0"))
    assert not (tmp_path / "run").exists()


def test_a_second_job_on_the_same_output_dir_is_refused(data_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, "--max_steps", "100000", "--save_steps", "100000", "--eval_steps", "100000",
                     "--sample_steps", "0")
    first = subprocess.Popen([sys.executable, str(ROOT / "train_hf.py"), *args], cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while not (output_dir / "metrics.jsonl").exists() and first.poll() is None and time.time() < deadline:
            time.sleep(0.1)
        assert first.poll() is None, "the first run ended before the second could start"
        second = run_script("train_hf.py", *args, timeout=120)
        assert second.returncode == 2 and "Traceback" not in second.stderr
        assert f"is in use by another job (train_hf.py, pid {first.pid} on host" in second.stderr, second.stderr[-2000:]
    finally:
        first.send_signal(signal.SIGTERM)
        first.wait(timeout=120)
    assert first.returncode == 0 and len(list_checkpoints(output_dir)) == 1  # the first run was not disturbed


def test_the_lock_holds_across_pid_namespaces(tmp_path):
    """A holder whose pid means nothing here (another PID namespace, as another host or container would be) still
    holds the lock: the filesystem grants it, no pid is consulted."""
    with lock_held_in_another_pid_namespace("from edugpt.io.safefs import DirLock; DirLock(sys.argv[1], 'x').acquire()",
                                            tmp_path / LOCK, lambda: DirLock(tmp_path / LOCK, "output_dir x")) as held:
        if not held:
            pytest.skip("unshare is not permitted here")
        with pytest.raises(EduGPTError, match=r"is in use by another job \(.*pid 1 on host"):
            DirLock(tmp_path / LOCK, "output_dir x").acquire()


def test_resume_from_a_given_checkpoint_into_a_new_output_dir(baseline, data_dir, tmp_path):
    elsewhere = tmp_path / "kept" / "checkpoint-6"
    shutil.copytree(baseline[0] / "checkpoint-6", elsewhere)
    output_dir = tmp_path / "branch"
    load_train_main()(tiny_args(data_dir, output_dir, "--resume_from_checkpoint", str(elsewhere)))
    assert sorted(train_records(output_dir)) == [7, 8]
    assert_same_losses(baseline[0], output_dir, [7, 8])
    assert json.loads((output_dir / "run_config.json").read_text())["resumed_from"] == str(elsewhere)
    assert (output_dir / MARKER).is_file()


def test_resuming_an_older_checkpoint_over_newer_ones_is_refused(baseline, data_dir, tmp_path):
    output_dir = unfinished_copy(baseline[0], tmp_path / "run", keep_through=8)
    before = snapshot(output_dir)
    with pytest.raises(EduGPTError, match="already holds checkpoint-8, which training from checkpoint-6 would overwrite"):
        load_train_main()(tiny_args(data_dir, output_dir, "--resume_from_checkpoint", str(output_dir / "checkpoint-6")))
    assert snapshot(output_dir) == before


def test_changed_settings_are_refused_then_applied_with_resume_with_changes(baseline, data_dir, tmp_path):
    output_dir = unfinished_copy(baseline[0], tmp_path / "run", keep_through=6)
    before = snapshot(output_dir)
    with pytest.raises(EduGPTError, match=r"settings changed \(learning_rate: 0.003 in the checkpoint, 0.001 now; "
                                          r"tokens_per_step: 256 in the checkpoint, 512 now\)"):
        load_train_main()(tiny_args(data_dir, output_dir, "--learning_rate", "1e-3", "--per_device_train_batch_size", "8"))
    assert snapshot(output_dir) == before

    load_train_main()(tiny_args(data_dir, output_dir, "--learning_rate", "1e-3", "--resume_with_changes", "true"))
    # The schedule's shape is the checkpoint's; its peak is now 1e-3, not the 3e-3 the saved scheduler state holds.
    new, old = train_records(output_dir), train_records(baseline[0])
    for step in (7, 8):
        assert new[step]["learning_rate"] == pytest.approx(old[step]["learning_rate"] / 3, rel=1e-9)
    record = json.loads((output_dir / "run_config.json").read_text())
    assert record["resumed_with_changes"] == {"learning_rate": {"checkpoint": 0.003, "now": 0.001}}
    assert record["training"]["learning_rate"] == 0.001


def test_overwrite_output_dir_starts_over_and_keeps_what_a_run_did_not_write(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    (output_dir / "notes.txt").write_text("keep me")
    load_train_main()(tiny_args(data_dir, output_dir, "--overwrite_output_dir", "true"))
    assert_same_losses(baseline[0], output_dir, range(1, 9))
    assert sorted(train_records(output_dir)) == list(range(1, 9))
    assert (output_dir / "notes.txt").read_text() == "keep me"
    assert not (output_dir / "images" / "hellaswag.png").exists()  # the previous run's plot went with it


@pytest.mark.parametrize("damage", ["truncated", "bytes-changed"])
def test_a_damaged_final_model_is_restored_from_the_last_checkpoint(damage, baseline, data_dir, tmp_path):
    from safetensors.torch import load_file

    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    weights = output_dir / "model.safetensors"
    if damage == "truncated":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    else:
        with open(weights, "r+b") as f:
            f.seek(weights.stat().st_size - 64)
            f.write(os.urandom(64))
    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir), check=True, timeout=300)
    assert "final model in" in proc.stderr and "restored the final model" in proc.stderr
    final, last = load_file(weights), load_file(output_dir / "checkpoint-8" / "model.safetensors")
    assert all(final[k].equal(last[k]) for k in last)
    assert train_records(output_dir) == train_records(baseline[0])  # no step was trained again

"""The record of what a run wrote (edugpt/run/record.py) decides what is removed, marked as the model, resumed from and
uploaded — never a file's name (issue 18). The fast half drives the record and the lock directly; the slow half runs
train_hf.py on copies of the session's baseline run."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
from factories import load_train_main, run_script, tiny_args
from fakes.hub import FAKE_TOKEN

from edugpt.errors import EduGPTError
from edugpt.hub.plan import plan_publish
from edugpt.hub.publish import publish_run
from edugpt.io.safefs import DirLock
from edugpt.run import record
from edugpt.run.rundir import LOCK, MARKER


def tree(folder: Path) -> dict:
    """Every entry under `folder`: a file's bytes, a link's target, a folder as "dir" (the lock and record aside)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.name in (LOCK, record.RECORD):
            continue
        found[rel] = (f"-> {os.readlink(path)}" if path.is_symlink() else "dir" if path.is_dir()
                      else path.read_bytes())
    return found


USER_FILES = {  # what a user keeps beside a run, named like the run's own files
    "config.json.bak": b"my old config",
    "model_notes.txt": b"notes on the model",
    "images/mine.png": b"\x89PNG my own picture",
    "checkpoint-best/model.safetensors": b"my best weights",
    "runs/mine/notes.txt": b"my tensorboard notes",
}


def add_user_files(run: Path) -> None:
    for rel, data in USER_FILES.items():
        (run / rel).parent.mkdir(parents=True, exist_ok=True)
        (run / rel).write_bytes(data)


# ------------------------------------------------------------------------------------------------------------- fast
def test_removing_a_run_removes_only_what_its_record_lists(run_dir):
    add_user_files(run_dir)
    (run_dir / "samples.md").write_text("| Step | Output |\n| 0 | edited by me |\n")  # changed since the run wrote it
    left = record.Record.load(run_dir).remove_written(keep=(LOCK,))
    assert {rel: (run_dir / rel).read_bytes() for rel in USER_FILES} == USER_FILES
    assert (run_dir / "samples.md").read_text().endswith("edited by me |\n")
    assert not (run_dir / "checkpoint-2").exists() and not (run_dir / "model.safetensors").exists()
    assert not (run_dir / "images" / "train-loss.png").exists() and (run_dir / "eval").is_dir()
    assert "samples.md (changed since the run wrote it)" in left and "model_notes.txt (not written by a run)" in left
    assert "images (holds files the run did not write)" in left


def test_a_copied_run_directory_is_still_recognised_by_content(run_dir, tmp_path):
    copy = tmp_path / "copied"
    shutil.copytree(run_dir, copy)  # new inodes and times: the record's digests recognise the files
    found = record.Record.load(copy)
    assert found.matches("model.safetensors") and found.matches("checkpoint-4/optimizer.pt")
    assert found.matches("metrics.jsonl")  # a log the run appends to: by its first bytes
    with open(copy / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "tokens": 1}\n')
    assert found.matches("metrics.jsonl")
    (copy / "config.json").write_text("{}")  # replaced: not the run's any more
    assert not found.matches("config.json")


def test_a_damaged_record_makes_nothing_ours(run_dir):
    (run_dir / record.RECORD).write_bytes(b"\xff{not json")
    assert record.Record.load(run_dir).files() == []
    record.Record.load(run_dir).remove_written()
    assert (run_dir / "model.safetensors").is_file()


def test_record_entries_that_climb_out_of_the_run_are_ignored(run_dir, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("not yours")
    content = json.loads((run_dir / record.RECORD).read_text())
    st = os.lstat(outside)
    content["entries"]["../outside.txt"] = {"type": "file", "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size,
                                            "mtime_ns": st.st_mtime_ns, "role": "record"}
    (run_dir / record.RECORD).write_text(json.dumps(content))
    record.Record.load(run_dir).remove_written()
    assert outside.read_text() == "not yours"


@pytest.mark.parametrize("planted", ["symlink", "dangling symlink", "folder", "hardlink", "someone's file"])
def test_a_lock_never_writes_through_what_stands_in_its_place(planted, tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    lock = tmp_path / "run" / LOCK
    lock.parent.mkdir()
    if planted == "symlink":
        lock.symlink_to(target)
    elif planted == "dangling symlink":
        lock.symlink_to(tmp_path / "nowhere")
    elif planted == "folder":
        lock.mkdir()
    elif planted == "hardlink":
        os.link(target, lock)
    else:
        lock.write_text("my own notes, named like a lock")
    with pytest.raises(EduGPTError, match=str(lock)):
        DirLock(lock, "output_dir run").acquire()
    assert target.read_text() == "precious" and not (tmp_path / "nowhere").exists()
    if planted == "someone's file":
        assert lock.read_text() == "my own notes, named like a lock"


def test_a_lock_is_private_and_holds_no_command_line(tmp_path, monkeypatch):
    monkeypatch.setattr("sys.argv", ["train_hf.py", f"--hub_to={FAKE_TOKEN}", "--hub_tok", FAKE_TOKEN])
    lock = DirLock(tmp_path / LOCK, "output_dir x").acquire()
    try:
        text = (tmp_path / LOCK).read_text()
        assert FAKE_TOKEN not in text and "--hub" not in text and json.loads(text)["program"] == "train_hf.py"
        assert stat.S_IMODE(os.stat(tmp_path / LOCK).st_mode) == 0o600
        with pytest.raises(EduGPTError, match=r"in use by another job \(train_hf.py, pid"):
            DirLock(tmp_path / LOCK, "output_dir x").acquire()
    finally:
        lock.release()


def test_only_files_the_run_wrote_go_up_from_images_and_runs(run_dir, tmp_path):
    """A private key dropped into images/, a hardlink to a file outside the run in runs/: neither is the run's."""
    secret = tmp_path / "home" / "id_ed25519"
    secret.parent.mkdir()
    secret.write_bytes(b"-----BEGIN OPENSSH PRIVATE KEY-----")
    shutil.copy(secret, run_dir / "images" / "id_ed25519")
    (run_dir / "runs" / "x").mkdir(parents=True)
    os.link(secret, run_dir / "runs" / "x" / "events.out.tfevents.1")
    (run_dir / "README.md").write_text("my card draft")
    plan = plan_publish(run_dir, "someone/x")
    main = plan.uploads[0]
    assert "images/train-loss.png" in main.files
    assert not {"images/id_ed25519", "runs/x/events.out.tfevents.1"} & set(main.files)
    reasons = {e["path"]: e["reason"] for e in main.excluded}
    assert "not written by this run" in reasons["images/id_ed25519"] and "not written by this run" in reasons["runs/"]
    publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")
    staged = [p.read_bytes() for p in (tmp_path / "plan").rglob("*") if p.is_file()]
    assert not [data for data in staged if b"PRIVATE KEY" in data]


def test_a_checkpoint_or_model_file_copied_in_is_not_published(run_dir, tmp_path):
    shutil.copytree(run_dir / "checkpoint-4", run_dir / "checkpoint-6")  # whole by its marker, not the run's
    (run_dir / "tokenizer_extra.json").write_text("{}")
    plan = plan_publish(run_dir, "someone/x", branches=True)
    assert [u.branch for u in plan.uploads] == ["main", "step-2", "step-4"]
    assert {"path": "checkpoint-6", "reason": "not written by this run (not in its record, or changed since it was "
            "written): never uploaded"} in plan.skipped
    assert "tokenizer_extra.json" not in plan.uploads[0].files


# ------------------------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_overwrite_output_dir_removes_only_the_previous_runs_files_and_says_which(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    add_user_files(output_dir)
    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir, "--overwrite_output_dir", "true",
                                                 "--max_steps", "2", "--sample_steps", "0"), check=True, timeout=300)
    assert {rel: (output_dir / rel).read_bytes() for rel in USER_FILES} == USER_FILES
    warning = next(line for line in proc.stderr.splitlines() if "--overwrite_output_dir: removed" in line)
    assert "checkpoint-8" in warning and "model.safetensors" in warning and "config.json.bak (not written by a run)" \
        in warning and "checkpoint-best (not written by a run)" in warning
    assert not (output_dir / "checkpoint-8").exists() and (output_dir / "checkpoint-2").is_dir()


@pytest.mark.slow
def test_a_user_file_in_the_root_is_never_part_of_the_final_model(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    (output_dir / "notes.txt").write_text("mine")
    args = tiny_args(data_dir, output_dir, "--max_steps", "10", "--resume_with_changes", "true", "--sample_steps", "0")
    load_train_main()(args)
    marked = json.loads((output_dir / MARKER).read_text())["files"]
    assert "notes.txt" not in marked and "model.safetensors" in marked and "training_args.bin" not in marked
    (output_dir / "notes.txt").write_text("mine, edited")
    proc = run_script("train_hf.py", *args, check=True, timeout=300)
    assert "already reached its last step" in proc.stderr and "damaged" not in proc.stderr
    load_train_main()(tiny_args(data_dir, output_dir, "--overwrite_output_dir", "true", "--max_steps", "2",
                                "--sample_steps", "0"))
    assert (output_dir / "notes.txt").read_text() == "mine, edited"


@pytest.mark.slow
def test_overwrite_never_deletes_the_model_the_run_loads(baseline, data_dir, tmp_path):
    """`sft.py --model_name_or_path OUT/checkpoint-N --output_dir OUT --overwrite_output_dir` would delete its own
    base model: refused before anything is removed (the lifecycle's rule, shown with the settings finetunes record)."""
    from transformers import TrainingArguments

    from edugpt.config.arguments import RunArguments
    from edugpt.run.lifecycle import TrainingRun

    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    before = tree(output_dir)
    args = TrainingArguments(output_dir=str(output_dir), max_steps=8, report_to="none", use_cpu=True)
    run = TrainingRun("pretrain", args, RunArguments(overwrite_output_dir=True))
    with pytest.raises(EduGPTError, match=r"--overwrite_output_dir would delete .*checkpoint-8, the "
                                          r"--model_name_or_path this run loads"):
        run.begin({"base_model": str(output_dir / "checkpoint-8")}, {})
    assert tree(output_dir) == before


@pytest.mark.slow
def test_a_refused_resume_into_a_new_output_dir_leaves_nothing(baseline, data_dir, tmp_path):
    """A checkpoint whole by its marker whose state Trainer refuses to load, given with --resume_from_checkpoint:
    one error line, and the new output_dir is not left behind with a run_config.json, a data manifest and a lock."""
    from edugpt.run.checkpoints import write_marker

    source = tmp_path / "source" / "checkpoint-6"
    shutil.copytree(baseline[0] / "checkpoint-6", source)
    (source / "scheduler.pt").write_bytes(b"not a torch file")
    write_marker(source)
    new = tmp_path / "new"
    proc = run_script("train_hf.py", *tiny_args(data_dir, new, "--resume_from_checkpoint", source), timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "could not be loaded" in proc.stderr.splitlines()[-1]
    assert not new.exists()


@pytest.mark.slow
def test_resume_from_checkpoint_true_with_nothing_to_resume_is_an_error(data_dir, tmp_path):
    new = tmp_path / "new"
    proc = run_script("train_hf.py", *tiny_args(data_dir, new, "--resume_from_checkpoint", "true"), timeout=300)
    assert proc.returncode == 2 and "holds no valid checkpoint of this run" in proc.stderr.splitlines()[-1]
    assert not new.exists()


def test_a_finished_run_records_each_file_it_wrote_in_its_role(baseline):
    """What a real run's record holds (factories.record_as_written gives the fast tests the same roles)."""
    real = record.Record.load(baseline[0])
    roles = {rel: entry["role"] for rel, entry in real.entries.items()}
    assert roles["model.safetensors"] == "model" and roles["training_args.bin"] == "state"
    assert roles["checkpoint-8"] == "checkpoint" and roles["checkpoint-8/optimizer.pt"] == "checkpoint"
    assert real.entries["metrics.jsonl"].get("appends") and real.entries["samples.md"].get("appends")
    assert {"run_config.json", "data_manifest.json", "README.md", "images/train-loss.png", "trainer_state.json"} \
        <= {rel for rel, role in roles.items() if role == "record"}
    assert set(real.files()) == {k for k, v in real.entries.items() if v["type"] == "file"}  # all still as written
    assert "checkpoint-2" not in roles  # rotated away by save_total_limit: gone from the record too


def test_the_card_never_replaces_a_readme_the_run_did_not_write(run_dir):
    from edugpt.report.card import write_model_card

    (run_dir / "README.md").write_text("# My own notes on this run\n")
    with pytest.raises(EduGPTError, match="README.md was not written by edugpt"):
        write_model_card(run_dir)
    assert (run_dir / "README.md").read_text() == "# My own notes on this run\n"
    (run_dir / "README.md").unlink()
    write_model_card(run_dir)  # the card it writes is recorded, so it may replace it next time
    assert "edugpt" in write_model_card(run_dir).read_text()


def test_a_run_directory_given_as_a_relative_path_is_recorded(tmp_path, monkeypatch):
    """`--output_dir runs/x` (as the demo and most users pass it): what is written there is recorded under its name."""
    from edugpt.io.safefs import atomic_write_text

    monkeypatch.chdir(tmp_path)
    Path("runs/x").mkdir(parents=True)
    record.start("runs/x")
    atomic_write_text("runs/x/run_config.json", "{}")
    (tmp_path / "runs" / "x" / "images").mkdir()
    atomic_write_text(Path("runs/x/images/train-loss.png"), "png")
    found = record.Record.load("runs/x")
    assert found.files() == ["images/train-loss.png", "run_config.json"]
    assert record.Record.load(tmp_path / "runs" / "x").files() == found.files()

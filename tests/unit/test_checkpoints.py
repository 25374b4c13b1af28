"""Checkpoint validity (completion marker with sizes and SHA-256, safetensors headers) and resume fallback to the newest
valid one."""

from __future__ import annotations

import json
import logging
import shutil

import pytest

from edugpt.io.safefs import file_sha256
from edugpt.run import record
from edugpt.run.checkpoints import checkpoint_problem, find_resume_checkpoint, write_marker
from edugpt.run.rundir import MARKER, list_checkpoints


def make_checkpoint(root, step, source, complete=True):
    """A checkpoint-N folder like Trainer's (weights, config, trainer_state.json), marked complete when asked, and
    entered in the run's record as CompleteCheckpointCallback does."""
    path = root / f"checkpoint-{step}"
    shutil.copytree(source, path)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if complete:
        write_marker(path)
    record.start(root)
    record.note_tree(path, "checkpoint", root)
    return path


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    for step in (2, 4, 6):
        make_checkpoint(tmp_path, step, tiny_model_dir)
    return tmp_path


def test_list_checkpoints_oldest_first_by_number_as_trainer_rotates_them(run_dir):
    (run_dir / "checkpoint-10").mkdir()
    (run_dir / "checkpoint-x").mkdir()
    (run_dir / "checkpoint-12.old").mkdir()
    (run_dir / "corrupt-checkpoint-12").mkdir()
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4", "checkpoint-6", "checkpoint-10"]
    assert list_checkpoints(run_dir / "missing") == []


def test_complete_checkpoint_is_valid_and_marker_lists_sizes_and_hashes(run_dir):
    path = run_dir / "checkpoint-6"
    assert checkpoint_problem(path) is None
    recorded = json.loads((path / MARKER).read_text())["files"]
    assert recorded["model.safetensors"] == {"bytes": (path / "model.safetensors").stat().st_size,
                                             "sha256": file_sha256(path / "model.safetensors")}
    assert "trainer_state.json" in recorded and MARKER not in recorded


def test_same_size_corruption_is_detected_by_the_hash(run_dir):
    """Random bytes inside a file keep its size: only the recorded SHA-256 tells (a size check would load garbage)."""
    state = run_dir / "checkpoint-6" / "trainer_state.json"
    state.write_bytes(state.read_bytes()[:-4] + b"\x00\x01\x02\x03")
    assert "trainer_state.json changed after it was saved" in checkpoint_problem(run_dir / "checkpoint-6")


def test_a_marker_this_version_did_not_write_makes_no_checkpoint_whole(run_dir):
    from edugpt.run.checkpoints import MARKER_FORMAT
    from edugpt.run.settings import checkpoint_layout

    path = run_dir / "checkpoint-6"
    marker = json.loads((path / MARKER).read_text())
    assert marker["format"] == MARKER_FORMAT
    sizes_only = {k: v["bytes"] for k, v in marker["files"].items()}
    (path / MARKER).write_text(json.dumps({"format": MARKER_FORMAT, "files": sizes_only}))  # damaged
    assert checkpoint_problem(path) == f"unreadable {MARKER}"
    for other in ({"files": marker["files"], "settings": marker.get("settings")}, {**marker, "format": 0}):
        (path / MARKER).write_text(json.dumps(other))  # another format, or none: a marker this version did not write
        assert checkpoint_problem(path) == (f"{MARKER} has format {other.get('format')!r}, not {MARKER_FORMAT}: "
                                            "written by another version of edugpt")
        assert checkpoint_layout(path) is None


def test_a_checkpoint_the_run_did_not_write_is_never_resumed_from(run_dir, tiny_model_dir):
    """A whole checkpoint-N copied in (or a symlink named like one) is not in the run's record: resume ignores it."""
    shutil.copytree(run_dir / "checkpoint-6", run_dir / "checkpoint-8")
    (run_dir / "checkpoint-10").symlink_to(run_dir / "checkpoint-6", target_is_directory=True)
    assert checkpoint_problem(run_dir / "checkpoint-8") is None  # whole by its marker, but not this run's
    assert find_resume_checkpoint(run_dir) == run_dir / "checkpoint-6"


def test_unmarked_checkpoint_is_a_save_that_did_not_finish(run_dir, tiny_model_dir):
    path = make_checkpoint(run_dir, 8, tiny_model_dir, complete=False)
    assert "did not finish" in checkpoint_problem(path)


@pytest.mark.parametrize("damage", ["truncate", "delete", "grow"])
def test_damaged_files_are_detected(run_dir, damage):
    weights = run_dir / "checkpoint-6" / "model.safetensors"
    if damage == "truncate":
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    elif damage == "delete":
        weights.unlink()
    else:
        with open(weights, "ab") as f:
            f.write(b"\0" * 10)
    assert "model.safetensors" in checkpoint_problem(run_dir / "checkpoint-6")


def test_safetensors_header_is_checked_even_when_sizes_match_the_marker(run_dir):
    path = run_dir / "checkpoint-6"
    with open(path / "model.safetensors", "r+b") as f:
        f.write(b"\xff" * 8)  # header length now points past the end of the file
    write_marker(path)
    assert checkpoint_problem(path).startswith("model.safetensors: Error while deserializing header")


def test_resume_falls_back_to_previous_with_warning_and_quarantines(run_dir, tiny_model_dir, caplog):
    make_checkpoint(run_dir, 8, tiny_model_dir, complete=False)  # killed mid-save
    weights = run_dir / "checkpoint-6" / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(100)
    with caplog.at_level(logging.WARNING, logger="edugpt.run.checkpoints"):
        assert find_resume_checkpoint(run_dir) == run_dir / "checkpoint-4"
    assert "checkpoint-8 is not usable" in caplog.text and "checkpoint-6 is not usable" in caplog.text
    assert "falling back" in caplog.text
    assert (run_dir / "corrupt-checkpoint-8").is_dir() and (run_dir / "corrupt-checkpoint-6").is_dir()
    assert [p.name for p in list_checkpoints(run_dir)] == ["checkpoint-2", "checkpoint-4"]


def test_no_valid_checkpoint_means_start_fresh(tmp_path, tiny_model_dir):
    assert find_resume_checkpoint(tmp_path) is None
    make_checkpoint(tmp_path, 2, tiny_model_dir, complete=False)
    assert find_resume_checkpoint(tmp_path, quarantine=False) is None
    assert (tmp_path / "checkpoint-2").is_dir()  # without quarantine nothing is moved

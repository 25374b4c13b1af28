"""Checkpoints and final models that are either whole or visibly not: a completion marker written last, and resume
from the newest valid checkpoint.

Trainer writes `checkpoint-N/` in place, file by file, and `get_last_checkpoint` only looks at folder names, so a
crash mid-save, a truncated file or a few flipped bytes leave a checkpoint that looks newest and then crashes the
resume inside safetensors — or, worse, loads garbage optimizer state and diverges. Here every finished checkpoint gets
`edugpt-complete.json` — its format (MARKER_FORMAT), the size and SHA-256 of every file in it, plus the run settings it
was trained with — written after Trainer's last file (`on_save`). The final model at the root of output_dir gets the
same marker over its files.

A folder is valid when the marker exists, every listed file still has its size and hash, and its safetensors files
open (`safetensors.safe_open` checks that the header covers the file exactly). Invalid checkpoints are renamed
`corrupt-checkpoint-N` (kept for inspection, out of Trainer's `checkpoint-*` rotation) and resume falls back to the
next newest valid one with a warning naming the damage.

Hashing costs about a second per GB on one core (bench/RESULTS.md), paid once per save and once per resume.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from edugpt.io.safefs import atomic_write_json, file_sha256, read_json
from edugpt.model.saved import weights_problem
from edugpt.run import record
from edugpt.run.rundir import MARKER, list_checkpoints

logger = logging.getLogger(__name__)

# The marker's format: every file's size and SHA-256, and the run settings with the process layout (`settings.layout`).
# A marker of another format (or of none) is not taken as whole: that checkpoint was not written by this version.
MARKER_FORMAT = 1


def _saved_files(folder: Path) -> list[Path]:
    """Every regular file of a checkpoint folder Trainer just wrote (a link is not a file of it)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink() and p.name != MARKER
                  and not p.name.startswith(f".{MARKER}"))


def write_marker(folder: str | os.PathLike, settings: dict | None = None, *, files: list[str] | None = None,
                 role: str = "checkpoint") -> dict:
    """Record each file's size and SHA-256 (and the run `settings`) in `folder/edugpt-complete.json`, atomically.

    `files`: the names (relative to `folder`) that make up the save; a final model at a run's root passes the model
    files the run just wrote (edugpt.run.record), so nothing else in the root is ever taken for part of the model.
    Default: every file under a checkpoint folder. The marker is entered in the run's record in `role`. Returns the
    {name: {"bytes", "sha256"}} written."""
    root = Path(folder)
    paths = _saved_files(root) if files is None else [root / name for name in sorted(files)]
    marked = {p.relative_to(root).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)} for p in paths}
    content = {"format": MARKER_FORMAT, "files": marked}
    if settings is not None:
        content["settings"] = settings
    atomic_write_json(root / MARKER, content, indent=1, role=role if files is None else "state")
    return marked


def read_marker(folder: str | os.PathLike) -> dict | None:
    try:
        marker = read_json(Path(folder) / MARKER, follow_symlinks=False)  # a link is not a marker we wrote
    except Exception:
        return None
    if not (isinstance(marker, dict) and marker.get("format") == MARKER_FORMAT and isinstance(marker.get("files"), dict)):
        return None
    files = marker["files"]
    if not all(isinstance(v, dict) and isinstance(v.get("bytes"), int) and isinstance(v.get("sha256"), str)
               and record.safe_rel(k) for k, v in files.items()):
        return None  # not a marker this version wrote: a checkpoint with it is not taken as whole
    return marker


def _other_format(folder: Path) -> str | None:
    """Why the marker in `folder` is of another format than MARKER_FORMAT (one without `format` included), or None
    (it is of this format, or not a marker at all: damaged)."""
    try:
        marker = read_json(folder / MARKER, follow_symlinks=False)
    except Exception:
        return None
    if not isinstance(marker, dict) or marker.get("format") == MARKER_FORMAT or not {"format", "files"} & marker.keys():
        return None
    return f"{MARKER} has format {marker.get('format')!r}, not {MARKER_FORMAT}: written by another version of edugpt"


def checkpoint_problem(folder: str | os.PathLike, *, require_trainer_state: bool = True) -> str | None:
    """Why `folder` (a checkpoint, or with `require_trainer_state=False` a final model) is not whole, or None."""
    root = Path(folder)
    if not os.path.lexists(root / MARKER):
        return f"no {MARKER} (the save did not finish)"
    marker = read_marker(root)
    if marker is None:
        return _other_format(root) or f"unreadable {MARKER}"
    for name, recorded in marker["files"].items():
        path = root / name
        if path.is_symlink() or not path.is_file():
            return f"{name} is missing" if not path.is_symlink() else f"{name} is a symlink"
        size, digest = recorded["bytes"], recorded["sha256"]
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if file_sha256(path) != digest:
            return f"{name} changed after it was saved (its SHA-256 differs from the one recorded at save time)"
    if require_trainer_state and "trainer_state.json" not in marker["files"]:
        return "no trainer_state.json"
    for path in sorted(root.glob("*.safetensors")):
        if problem := weights_problem(path):
            return f"{path.name}: {problem}"
    return None


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to `corrupt-<name>` (a free name), out of Trainer's rotation and resume; its record
    entries follow it (it stays the run's, for --overwrite_output_dir)."""
    target, suffix = folder.with_name(f"corrupt-{folder.name}"), 1
    while os.path.lexists(target):
        suffix += 1
        target = folder.with_name(f"corrupt-{folder.name}.{suffix}")
    os.rename(folder, target)
    if record.Record.exists(folder.parent):
        record.update(folder.parent, lambda r: r.moved(folder, target))
    return target


def recorded_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of a run that the run wrote (its record says so; a folder copied in or a symlink
    named like one is not a checkpoint of this run), oldest first."""
    found = record.Record.load(output_dir)
    return [p for p in list_checkpoints(output_dir) if found.role(p.name) == "checkpoint"]


def find_resume_checkpoint(output_dir: str | os.PathLike, quarantine: bool = True) -> Path | None:
    """The newest valid `checkpoint-N` the run wrote in `output_dir` (None if there is none).

    Invalid newer ones are reported with a warning and, with `quarantine`, set aside as `corrupt-checkpoint-N` so that
    Trainer neither rotates them nor writes a new save into a half-written folder.
    """
    for path in reversed(recorded_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        message = f"checkpoint {path} is not usable ({problem}); falling back to the previous checkpoint"
        if quarantine:
            message += f" (moved it to {set_aside(path).name})"
        logger.warning(message)
    return None


class CompleteCheckpointCallback(TrainerCallback):
    """Writes the completion marker, with the run's `settings`, into each checkpoint once Trainer has written all of
    its files, and enters the checkpoint (every file, with the digests just computed) and the TensorBoard event files
    written so far in the run's record (edugpt.run.record); checkpoints Trainer's rotation deleted leave the record."""

    def __init__(self, settings: dict | None = None, trainer=None):
        self.settings = settings
        self.trainer = trainer

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        # Under FSDP every rank writes its shards: mark the checkpoint only when all of them are done.
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            marked = write_marker(folder, self.settings)

            def enter(run: record.Record) -> None:
                run.prune()
                run.add(folder, "checkpoint")
                for name, entry in marked.items():
                    run.add(folder / name, "checkpoint", sha256=entry["sha256"])
                run.add(folder / MARKER, "checkpoint")
                record_logs(run, self.trainer)

            record.update(args.output_dir, enter)
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero and record.Record.exists(args.output_dir):
            record.update(args.output_dir, lambda run: record_logs(run, self.trainer))
        return control


def record_logs(run: record.Record, trainer) -> None:
    """Enter the files of the run's TensorBoard folder (Trainer's TensorBoardCallback writes a new, timestamped folder
    per start: everything in it is its event files) in the record, as logs it appends to."""
    if trainer is None:
        return
    from edugpt.train.trainer_hooks import tensorboard_logging_dirs

    for folder in tensorboard_logging_dirs(trainer):
        if run.rel(folder) is None or not Path(folder).is_dir() or Path(folder).is_symlink():
            continue
        for dirpath, _, filenames in os.walk(folder):
            for name in filenames:
                run.add(Path(dirpath) / name, "record", appends=True)

"""Checkpoints and final models that are either whole or visibly not: a completion marker written last, and resume
from the newest valid checkpoint.

Trainer writes `checkpoint-N/` in place, file by file, and `get_last_checkpoint` only looks at folder names, so a
crash mid-save, a truncated file or a few flipped bytes leave a checkpoint that looks newest and then crashes the
resume inside safetensors — or, worse, loads garbage optimizer state and diverges. Here every finished checkpoint gets
`edugpt-complete.json` — the size and SHA-256 of every file in it, plus the run settings it was trained with — written
after Trainer's last file (`on_save`). The final model at the root of output_dir gets the same marker over its files.

A folder is valid when the marker exists, every listed file still has its size and hash, and its safetensors files
open (`safetensors.safe_open` checks that the header covers the file exactly). Invalid checkpoints are renamed
`corrupt-checkpoint-N` (kept for inspection, out of Trainer's `checkpoint-*` rotation) and resume falls back to the
next newest valid one with a warning naming the damage.

Hashing costs about a second per GB on one core (bench/RESULTS.md), paid once per save and once per resume.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

from transformers import TrainerCallback

from edugpt.rundir import MARKER, RUN_FILES, list_checkpoints
from edugpt.safefs import atomic_write_json, read_json

logger = logging.getLogger(__name__)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _marked_files(folder: Path, top_level_only: bool) -> list[Path]:
    if top_level_only:  # a final model: the model's own files at the run's root, not the run's logs or checkpoints
        return sorted(p for p in folder.iterdir() if p.is_file() and p.name not in RUN_FILES
                      and not p.name.startswith("."))
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER and not p.name.startswith(f".{MARKER}"))


def write_marker(folder: str | os.PathLike, settings: dict | None = None, *, top_level_only: bool = False) -> Path:
    """Record every file's size and SHA-256 (and the run `settings`) in `folder/edugpt-complete.json`, atomically.

    `top_level_only` marks a final model at a run's root: its top-level files minus the run's own (rundir.RUN_FILES).
    """
    root = Path(folder)
    files = {str(p.relative_to(root)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
             for p in _marked_files(root, top_level_only)}
    content = {"files": files}
    if settings is not None:
        content["settings"] = settings
    return atomic_write_json(root / MARKER, content, indent=1)


def read_marker(folder: str | os.PathLike) -> dict | None:
    try:
        marker = read_json(Path(folder) / MARKER)
    except Exception:
        return None
    return marker if isinstance(marker, dict) and isinstance(marker.get("files"), dict) else None


def weights_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, or None (its header parses and covers the file exactly)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="np"):
            return None
    except (SafetensorError, OSError) as err:
        return str(err).splitlines()[0] if str(err) else type(err).__name__


def checkpoint_problem(folder: str | os.PathLike, *, require_trainer_state: bool = True) -> str | None:
    """Why `folder` (a checkpoint, or with `require_trainer_state=False` a final model) is not whole, or None."""
    root = Path(folder)
    if not (root / MARKER).exists():
        return f"no {MARKER} (the save did not finish)"
    marker = read_marker(root)
    if marker is None:
        return f"unreadable {MARKER}"
    for name, recorded in marker["files"].items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        # Markers written before content hashes were recorded hold the size alone.
        size, digest = (recorded, None) if isinstance(recorded, int) else (recorded.get("bytes"), recorded.get("sha256"))
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
        if digest is not None and file_sha256(path) != digest:
            return f"{name} changed after it was saved (its SHA-256 differs from the one recorded at save time)"
    if require_trainer_state and "trainer_state.json" not in marker["files"]:
        return "no trainer_state.json"
    for path in sorted(root.glob("*.safetensors")):
        if problem := weights_problem(path):
            return f"{path.name}: {problem}"
    return None


def set_aside(folder: Path) -> Path:
    """Rename a damaged checkpoint to `corrupt-<name>` (a free name), out of Trainer's rotation and resume."""
    target, suffix = folder.with_name(f"corrupt-{folder.name}"), 1
    while target.exists():
        suffix += 1
        target = folder.with_name(f"corrupt-{folder.name}.{suffix}")
    os.replace(folder, target)
    return target


def find_resume_checkpoint(output_dir: str | os.PathLike, quarantine: bool = True) -> Path | None:
    """The newest valid `checkpoint-N` in `output_dir` (None if there is none).

    Invalid newer ones are reported with a warning and, with `quarantine`, set aside as `corrupt-checkpoint-N` so that
    Trainer neither rotates them nor writes a new save into a half-written folder.
    """
    for path in reversed(list_checkpoints(output_dir)):
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
    its files."""

    def __init__(self, settings: dict | None = None):
        self.settings = settings

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        # Under FSDP every rank writes its shards: mark the checkpoint only when all of them are done.
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}", self.settings)
        return control

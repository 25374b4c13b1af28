"""Checkpoints that are either complete or visibly not: a completion marker written last, and resume from the newest
valid one.

Trainer writes `checkpoint-N/` in place, file by file, and `get_last_checkpoint` only looks at folder names, so a
crash mid-save (or a truncated file) leaves a checkpoint that looks newest and then crashes the resume inside
safetensors. Here every finished checkpoint gets `edugpt-complete.json` — the size of every file in it — written
after Trainer's last file (`on_save`). A checkpoint is valid when that marker exists, every listed file still has
its recorded size, and its safetensors headers parse and cover the file. Invalid ones are renamed
`corrupt-checkpoint-N` (kept for inspection, out of Trainer's `checkpoint-*` rotation) and resume falls back to
the next newest valid one with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from pathlib import Path

from transformers import TrainerCallback

logger = logging.getLogger(__name__)

MARKER = "edugpt-complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """`checkpoint-N` folders in `output_dir`, newest (highest N) first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    return [path for _, path in sorted(found, reverse=True)]


def write_marker(checkpoint_dir: str | Path) -> Path:
    """Record every file's size in `checkpoint_dir/edugpt-complete.json` (atomically: temp file, fsync, rename)."""
    root = Path(checkpoint_dir)
    files = {
        str(path.relative_to(root)): path.stat().st_size
        for path in sorted(root.rglob("*"))
        if path.is_file() and path.name != MARKER and not path.name.startswith(f".{MARKER}")
    }
    tmp = root / f".{MARKER}.tmp"
    with open(tmp, "w") as f:
        json.dump({"files": files}, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, root / MARKER)
    return root / MARKER


def _safetensors_problem(path: Path) -> str | None:
    """Why `path` is not a whole safetensors file, or None when its header parses and its tensors fit the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            return "shorter than a safetensors header"
        (header_len,) = struct.unpack("<Q", raw)
        if 8 + header_len > size:
            return "header runs past the end of the file"
        try:
            header = json.loads(f.read(header_len))
        except ValueError:
            return "header is not valid JSON"
    ends = [entry["data_offsets"][1] for name, entry in header.items() if name != "__metadata__"]
    if 8 + header_len + max(ends, default=0) != size:
        return f"tensor data needs {8 + header_len + max(ends, default=0)} bytes but the file has {size}"
    return None


def checkpoint_problem(checkpoint_dir: str | Path) -> str | None:
    """Why `checkpoint_dir` cannot be resumed from, or None when it is complete."""
    root = Path(checkpoint_dir)
    try:
        recorded = json.loads((root / MARKER).read_text())["files"]
    except FileNotFoundError:
        return f"no {MARKER} (the save did not finish)"
    except (ValueError, KeyError, TypeError):
        return f"unreadable {MARKER}"
    for name, size in recorded.items():
        path = root / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    if "trainer_state.json" not in recorded:
        return "no trainer_state.json"
    for path in sorted(root.glob("*.safetensors")):
        if problem := _safetensors_problem(path):
            return f"{path.name}: {problem}"
    return None


def find_resume_checkpoint(output_dir: str | Path, quarantine: bool = True) -> Path | None:
    """The newest valid `checkpoint-N` in `output_dir` (None if there is none).

    Invalid newer ones are reported with a warning and, with `quarantine`, renamed `corrupt-checkpoint-N` so that
    Trainer neither rotates them nor writes a new save into a half-written folder.
    """
    for path in list_checkpoints(output_dir):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        message = f"checkpoint {path} is not usable ({problem}); falling back to the previous checkpoint"
        if quarantine:
            target = path.with_name(f"corrupt-{path.name}")
            suffix = 1
            while target.exists():
                suffix += 1
                target = path.with_name(f"corrupt-{path.name}.{suffix}")
            os.replace(path, target)
            message += f" (moved it to {target.name})"
        logger.warning(message)
    return None


class CompleteCheckpointCallback(TrainerCallback):
    """Writes the completion marker into each checkpoint once Trainer has written all of its files."""

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        # Under FSDP every rank writes its shards: mark the checkpoint only when all of them are done.
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if state.is_world_process_zero:
            write_marker(Path(args.output_dir) / f"checkpoint-{state.global_step}")
        return control

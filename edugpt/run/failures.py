"""When training or finishing fails: a checkpoint whose saved state Trainer cannot load (`CheckpointLoadError`, raised
by the hook edugpt.train.trainer_hooks.raise_checkpoint_load_errors_as) is set aside and training falls back to the
previous valid checkpoint; a save that fails leaves no unfinished checkpoint-N behind; a full disk is one error line."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.io.atomic import no_space_reason
from edugpt.run.checkpoints import find_resume_checkpoint, read_marker, recorded_checkpoints, set_aside
from edugpt.run.decide import settings_changes
from edugpt.run.ranks import on_main_then_shared
from edugpt.run.rundir import MARKER, read_run_config, write_run_config

logger = logging.getLogger(__name__)

# Less free space than this after a failed write means the disk filled up: torch.save reports a full disk as
# "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", without the errno.
LOW_SPACE_BYTES = 16 * 2**20


class CheckpointLoadError(Exception):
    """Trainer raised `cause` while loading the saved state of the checkpoint it resumes from: the checkpoint did not
    load, training itself did not fail."""

    def __init__(self, cause: Exception):
        super().__init__(f"{type(cause).__name__}: {cause}")
        self.cause = cause

    @property
    def reason(self) -> str:
        return f"{type(self.cause).__name__}: {(str(self.cause).strip().splitlines() or [''])[0][:200]}"


def fall_back(run, err: CheckpointLoadError) -> None:
    """A checkpoint can be whole by its marker and still fail to load in Trainer (state files from another torch
    version). Set it aside as a corrupt one and resume `run`
    from the previous valid checkpoint (or from the start), as `find_resume_checkpoint` does for corrupt ones: the
    caller retries with a fresh Trainer. A checkpoint named by --resume_from_checkpoint is not replaced: an error."""
    checkpoint, reason = run.decision.checkpoint, err.reason
    explicit = run.resume
    if explicit.path is not None:
        raise EduGPTError(f"--resume_from_checkpoint {str(explicit.value)!r} could not be loaded ({reason}); pass "
                          "another checkpoint-N folder.") from None

    def set_aside_and_find_previous():
        moved = set_aside(checkpoint)
        logger.warning("checkpoint %s is not usable (its saved state did not load: %s); falling back to the "
                       "previous checkpoint (moved it to %s)", checkpoint, reason, moved.name)
        previous = find_resume_checkpoint(run.output_dir, quarantine=True)
        config = read_run_config(run.output_dir) or {}
        write_run_config(run.output_dir, {**config, "resumed_from": str(previous) if previous else None})
        return previous

    run.decision.checkpoint = previous = on_main_then_shared(run.args, set_aside_and_find_previous)
    if previous is not None:
        run.decision.changes = settings_changes(previous, (read_marker(previous) or {}).get("settings"), run.settings,
                                                run.run_args.resume_with_changes)
        if run.decision.changes:
            logger.warning("resuming from %s with changed settings: %s", previous, ", ".join(run.decision.changes))


def disk_full(err: BaseException, folder: Path) -> str | None:
    """A short reason when `err` comes from a full disk or quota under `folder`, else None."""
    if reason := no_space_reason(err):
        return reason
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return f"{free / 2**20:.1f} MiB free" if free < LOW_SPACE_BYTES else None


def write_failure(run, trainer, err: Exception) -> EduGPTError | None:
    """After training or finishing failed: remove the checkpoint a save left unfinished (no marker: it could never be
    resumed, and it would sit where the next save goes), and turn a full disk into one error line (None: re-raise
    `err` as it is). `run.entries_before`: the folder's entries at the start, never ours to remove."""
    output_dir = run.output_dir
    full = disk_full(err, output_dir)
    step = trainer.state.global_step if trainer is not None else None
    partial = output_dir / f"checkpoint-{step}"
    removed = ""
    if (run.is_main and step is not None and partial.name not in run.entries_before and partial.is_dir()
            and not partial.is_symlink() and not (partial / MARKER).exists()):
        shutil.rmtree(partial, ignore_errors=True)
        removed = f", removed the unfinished {partial.name}"
        logger.warning("removed %s: saving it did not finish (%s)", partial, type(err).__name__)
    if full is None or isinstance(err, EduGPTError):
        return None
    good = recorded_checkpoints(output_dir)
    return EduGPTError(
        f"the disk holding {output_dir} is full ({full}){removed}; the last complete checkpoint is "
        f"{good[-1].name if good else 'none'}: free space (or choose another output_dir), then run the same "
        "command again to resume."
    )

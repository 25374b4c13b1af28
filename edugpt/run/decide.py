"""What a training run does with its output_dir: the pure rules of resume / restore / already finished / start /
start over / refuse, over a snapshot of what the folder holds (`FolderView`, gathered by edugpt.run.survey under the
run's lock). No I/O here and no locking: tests/unit/test_decide.py holds every rule in a table of cases.

    request = resume_request(args.resume_from_checkpoint)      # the one reading of "true" / "last" / PATH
    if starts_over(light_view, request, overwrite_output_dir):  # --overwrite_output_dir on a run: remove it first
        ...
    decision = decide(view, request, settings, resume_with_changes=...)

The rules (the lifecycle's, edugpt.run.lifecycle):
- `--resume_from_checkpoint PATH` resumes from that checkpoint when it is whole and the folder holds nothing it would
  overwrite (a checkpoint at or after its step, or a final model); also into a new output_dir.
- Otherwise a folder holding this run resumes from its newest valid checkpoint; with a whole final model the run is
  finished; a final model missing or damaged while a checkpoint reached the last step is restored from it.
- Settings that differ from the checkpoint's (or the finished model's) are refused unless resume_with_changes, which
  makes the run train on (not finished, nothing restored).
- `--resume_from_checkpoint true|last` with nothing to resume from is refused, as Trainer does.
- `--overwrite_output_dir` never deletes what the run is about to load (the checkpoint, a finetune's base model).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.run.settings import settings_differences

# --resume_from_checkpoint values that mean "the newest valid checkpoint in output_dir" (Trainer takes True).
RESUME_LAST = ("true", "last")


@dataclass(frozen=True)
class ResumeRequest:
    """--resume_from_checkpoint as given (`value`): nothing, "true"/"last" (`last`), or a checkpoint folder (`path`)."""

    value: object = None
    last: bool = False
    path: Path | None = None


def resume_request(value) -> ResumeRequest:
    """The one reading of --resume_from_checkpoint: None, true/last (any case), or a path."""
    if value is None:
        return ResumeRequest()
    if str(value).lower() in RESUME_LAST:
        return ResumeRequest(value, last=True)
    return ResumeRequest(value, path=Path(value))


@dataclass(frozen=True)
class CheckpointView:
    """A checkpoint folder as the survey found it."""

    path: Path
    step: int | None = None  # from its checkpoint-N name (None: another name)
    problem: str | None = None  # why it is not whole (edugpt.run.checkpoints.checkpoint_problem), None: whole
    settings: dict | None = None  # the run settings its completion marker records
    layout: dict | None = None  # processes and FSDP it was written with (edugpt.run.settings.checkpoint_layout)
    reached_end: bool = False  # saved at its run's last step (its trainer_state.json)


@dataclass(frozen=True)
class FolderView:
    """What output_dir holds, gathered by edugpt.run.survey before anything is decided."""

    output_dir: Path
    holds_run: bool = False  # a run of this kind (someone else's folder was refused before: rundir.require_own_run_dir)
    newest_valid: CheckpointView | None = None  # the run's newest valid checkpoint (broken newer ones set aside)
    final: str = "absent"  # the final model at the root: "whole", "damaged" or "absent"
    final_settings: dict | None = None  # the settings its marker records
    explicit: CheckpointView | None = None  # the --resume_from_checkpoint PATH folder
    recorded: tuple[tuple[str, int, bool], ...] = ()  # the run's checkpoints: (name, step, is the explicit one)
    root: Path | None = None  # output_dir resolved
    inputs: tuple[tuple[str, Path, Path], ...] = ()  # what the run loads: (flag, path, path resolved)


@dataclass
class Decision:
    """What rank 0 found in output_dir, shared with every rank."""

    checkpoint: Path | None = None  # resume from here (None: start from step 0)
    finished: bool = False  # the final model is whole: nothing to train
    restore_from: Path | None = None  # the final model is missing or damaged: copy it from this final-step checkpoint
    changes: dict = field(default_factory=dict)  # settings that differ from the checkpoint's (resume_with_changes)
    checkpoint_layout: dict | None = None  # processes and FSDP of the checkpoint resumed from (checked in attach)
    warnings: list[str] = field(default_factory=list)  # for the log

    @property
    def needs_training(self) -> bool:
        return not (self.finished or self.restore_from is not None)


def starts_over(folder: FolderView, request: ResumeRequest, overwrite_output_dir: bool) -> bool:
    """Does this run start its folder over (remove the previous run first)? --overwrite_output_dir on a folder holding
    a run, unless that would delete what the run loads: the checkpoint to resume from, the base model of a finetune
    (also DPO's reference, the same folder) — refused."""
    if not (folder.holds_run and overwrite_output_dir):
        return False
    root = folder.root
    for flag, path, resolved in folder.inputs:
        if resolved == root or root in resolved.parents:
            raise EduGPTError(f"--overwrite_output_dir would delete {path}, the {flag} this run loads; pass a new "
                              "output_dir (or copy that model out of this one first).")
    return True


def decide(folder: FolderView, request: ResumeRequest, settings: dict, *, resume_with_changes: bool = False) -> Decision:
    """Resume (from which checkpoint), restore the final model, already finished, or start from step 0; an
    EduGPTError saying why when the run is refused."""
    decision = Decision()
    source = None  # the save whose recorded settings this run must share
    if request.path is not None:
        source = _explicit_checkpoint(folder, request.path)
        decision.checkpoint = source.path
    elif folder.holds_run:
        source = folder.newest_valid
        decision.checkpoint = source.path if source is not None else None
        if folder.final == "whole":
            decision.finished = True
            source = CheckpointView(folder.output_dir, settings=folder.final_settings)
        elif source is not None and source.reached_end:
            decision.warnings.append(f"the final model in {folder.output_dir} is "
                                     f"{'damaged' if folder.final == 'damaged' else 'missing'}; restoring it from "
                                     f"{source.path}")
            decision.restore_from = source.path
    if source is not None:
        decision.changes = settings_changes(source.path, source.settings, settings, resume_with_changes)
        if decision.changes:
            decision.warnings.append(f"resuming from {source.path} with changed settings: {', '.join(decision.changes)}")
    if decision.checkpoint is not None:
        checkpoint = folder.explicit if request.path is not None else folder.newest_valid
        decision.checkpoint_layout = checkpoint.layout
    if decision.changes:  # e.g. a larger max_steps with --resume_with_changes: train on from the newest checkpoint
        decision.finished, decision.restore_from = False, None
    if request.last and decision.checkpoint is None and not (decision.finished or decision.restore_from):
        # As Trainer does for resume_from_checkpoint=True: asked to resume, nothing to resume from.
        raise EduGPTError(f"--resume_from_checkpoint {request.value} asks to resume, but "
                          f"output_dir {str(folder.output_dir)!r} holds no valid checkpoint of this run; leave the "
                          "option out to start from step 0, or pass a checkpoint-N folder.")
    return decision


def _explicit_checkpoint(folder: FolderView, path: Path) -> CheckpointView:
    checkpoint = folder.explicit
    if checkpoint.problem:
        raise EduGPTError(f"--resume_from_checkpoint {str(path)!r} is not a usable checkpoint ({checkpoint.problem}); "
                          "pass a complete checkpoint-N folder.")
    step = checkpoint.step
    later = [name for name, saved_at, same in folder.recorded if not same and (step is None or saved_at >= step)]
    if later or folder.final != "absent":
        held = ", ".join(later) or "a final model"
        raise EduGPTError(
            f"output_dir {str(folder.output_dir)!r} already holds {held}, which training from {path.name} would "
            "overwrite; resume into a new output_dir (they are kept), or pass --overwrite_output_dir to start "
            "that folder over."
        )
    return checkpoint


def settings_changes(source: Path, saved: dict | None, settings: dict, resume_with_changes: bool) -> dict:
    """{key: (saved, now)} of the settings that differ from those `source` recorded (`saved`; not a dict: nothing to
    compare); refused unless `resume_with_changes`."""
    if not isinstance(saved, dict):
        return {}
    changes = settings_differences(saved, settings)
    if changes and not resume_with_changes:
        listed = "; ".join(f"{key}: {json.dumps(old)} in the checkpoint, {json.dumps(new)} now"
                           for key, (old, new) in changes.items())
        raise EduGPTError(
            f"cannot resume from {source}: the run's settings changed ({listed}). Use the checkpoint's values, "
            "a new output_dir, or --resume_with_changes to continue with the new ones (recorded in run_config.json)."
        )
    return changes

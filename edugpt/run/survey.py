"""What an output_dir holds, gathered for edugpt.run.decide (rank 0, under the run's lock): the run's newest valid
checkpoint (checking newest first and setting broken newer ones aside as `corrupt-checkpoint-N`, as
edugpt.run.checkpoints.find_resume_checkpoint does: hashing stops at the first whole one), the final model's state, an
explicit --resume_from_checkpoint folder, and the inputs a start-over must not delete. The reading is here; every
rule is in decide()."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from edugpt.run.checkpoints import checkpoint_problem, find_resume_checkpoint, read_marker, recorded_checkpoints
from edugpt.run.decide import CheckpointView, FolderView, ResumeRequest
from edugpt.run.rundir import CHECKPOINT_RE, MARKER, TRAINER_STATE, checkpoint_step
from edugpt.run.settings import checkpoint_layout

logger = logging.getLogger(__name__)


def survey(output_dir: Path, holds_run: bool, request: ResumeRequest, base_model=None, *,
           scan: bool = True) -> FolderView:
    """The FolderView of `output_dir`. `scan=False`: only what `starts_over` needs (no checkpoint is read)."""
    inputs = [("--resume_from_checkpoint", request.path)]
    if isinstance(base_model, str) and os.path.isdir(base_model):
        inputs.append(("--model_name_or_path", Path(base_model)))
    view = FolderView(output_dir, holds_run, root=output_dir.resolve(),
                      inputs=tuple((flag, path, path.resolve()) for flag, path in inputs if path is not None))
    if not scan:
        return view
    newest = explicit = None
    recorded = ()
    if request.path is not None:
        explicit = view_checkpoint(request.path, problem=checkpoint_problem(request.path))
        if explicit.problem is None:
            same = request.path.resolve()
            recorded = tuple((p.name, checkpoint_step(p), p.resolve() == same) for p in recorded_checkpoints(output_dir))
    elif holds_run:
        found = find_resume_checkpoint(output_dir, quarantine=True)
        newest = view_checkpoint(found) if found is not None else None
    usable = explicit.problem is None if explicit is not None else holds_run  # decide() looks at the final model
    final = final_state(output_dir) if usable else "absent"
    final_settings = (read_marker(output_dir) or {}).get("settings") if final == "whole" else None
    return FolderView(output_dir, holds_run, newest, final, final_settings, explicit, recorded, view.root, view.inputs)


def view_checkpoint(path: Path, problem: str | None = None) -> CheckpointView:
    """`path` as decide() sees it (`problem`: checkpoint_problem's verdict, already known)."""
    match = CHECKPOINT_RE.match(path.name)
    return CheckpointView(path, step=int(match.group(1)) if match else None, problem=problem,
                          settings=(read_marker(path) or {}).get("settings"), layout=checkpoint_layout(path),
                          reached_end=reached_end(path))


def final_state(output_dir: Path) -> str:
    """'whole' (a final model with a valid marker), 'damaged' (model files without a valid one), or 'absent'."""
    if (output_dir / MARKER).exists() or (output_dir / "config.json").exists():
        problem = checkpoint_problem(output_dir, require_trainer_state=False)
        if problem is None:
            return "whole"
        logger.warning("the final model in %s is not whole (%s)", output_dir, problem)
        return "damaged"
    return "absent"


def reached_end(checkpoint: Path) -> bool:
    """Was `checkpoint` saved at its run's last step (per its own trainer_state.json)?"""
    try:
        state = json.loads((checkpoint / TRAINER_STATE).read_text())
        return state["max_steps"] > 0 and state["global_step"] >= state["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False

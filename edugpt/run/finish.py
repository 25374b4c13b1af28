"""The end of a training run: the final model, its completion marker, edugpt's model card and the push after the last
step (`finish_training`); for a re-run with no training left, the final model restored from the checkpoint at the last
step, a missing card written, the push finished (`finish_existing`); and the guard that routes every push of a Trainer
through edugpt.hub.publish and keeps Trainer's own card out of output_dir (`guard_pushes`)."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from edugpt.run import record
from edugpt.run.checkpoints import read_marker, write_marker
from edugpt.run.rundir import CARD, MARKER, TRAINER_STATE, checkpoint_step, entries, record_saved_model, save_file_role
from edugpt.train.trainer_hooks import replace_trainer_model_card, save_model_without_push

logger = logging.getLogger(__name__)


def card_kwargs(run) -> dict:
    repo_id = run.args.hub_model_id if run.args.push_to_hub else None
    return {"hub_model_id": repo_id}


def finish_training(run, trainer) -> None:
    """Save the final model (every rank: FSDP gathers it), then on rank 0 the card and the completion marker; with
    push_to_hub, push it (edugpt.hub.publish: the run's own files, scanned, with edugpt's card in the same commit) once
    the pushes of the saves before have finished, and report what could not be pushed. From the save on,
    `run.saving_final` is set: the final model is never removed, whatever fails after."""
    from edugpt.hub.trainer_pushes import pushes_failed_error
    from edugpt.report.card import write_model_card

    state, output_dir = trainer.state, run.output_dir
    if trainer.eval_dataset is not None and not any(
        "eval_loss" in entry and entry["step"] == state.global_step for entry in state.log_history
    ):
        trainer.evaluate()  # the final validation loss, for the card's table and the plot
    run.saving_final = True
    before = entries(output_dir)
    save_model_without_push(trainer, str(output_dir))  # the push below is the one
    trainer.accelerator.wait_for_everyone()
    failures = {}
    if run.is_main:
        model_files = record_saved_model(output_dir, before)
        if trainer.state.log_history:  # loss curves for the card, also with save_strategy "no"
            trainer.state.save_to_json(str(output_dir / TRAINER_STATE))
            record.note_written(output_dir / TRAINER_STATE, root=output_dir)
        write_model_card(output_dir, **card_kwargs(run))
        write_marker(output_dir, {**run.settings, "step": trainer.state.global_step}, files=model_files)
        if run.pushes is not None:
            failures = run.pushes.finish("End of training")
    if failures:
        raise pushes_failed_error(output_dir, run.args.hub_model_id, failures,
                                  run.pushes.main_branch if run.pushes else "main")
    logger.info("final model and model card saved to %s%s", output_dir,
                f" and pushed to {run.args.hub_model_id}" if run.args.push_to_hub else "")


def finish_existing(run) -> None:
    """A re-run of a run with no training left: restore a missing or damaged final model from the checkpoint at its
    last step, write a missing card, and push the run when asked (finishing a push that failed, step-N branches
    included with hub_step_branches)."""
    if not run.is_main:
        return
    from edugpt.hub.publish import publish_run
    from edugpt.report.card import write_model_card

    source = run.decision.restore_from
    if source is not None:
        restore_final_model(run, source)
    elif not (run.output_dir / CARD).exists():
        write_model_card(run.output_dir, **card_kwargs(run))
    if run.args.push_to_hub:
        publish_run(run.output_dir, run.args.hub_model_id, branches=getattr(run.run_args, "hub_step_branches", False),
                    private=run.args.hub_private_repo)
    logger.info("%s already reached its last step; final model in %s", run.kind, run.output_dir)


def restore_final_model(run, checkpoint: Path) -> None:
    from edugpt.report.card import write_model_card

    output_dir = run.output_dir
    root_marker = output_dir / MARKER
    if record.Record.load(output_dir).matches(MARKER):
        root_marker.unlink()
    before = entries(output_dir)
    marker = read_marker(checkpoint) or {}
    for name in sorted(marker.get("files", {})):  # the checkpoint's files as its marker lists them
        if "/" not in name and save_file_role(name) == "model":
            copy_nofollow(checkpoint / name, output_dir / name)
    model_files = record_saved_model(output_dir, before)
    write_model_card(output_dir, **card_kwargs(run))
    write_marker(output_dir, {**marker.get("settings", run.settings), "step": checkpoint_step(checkpoint)},
                 files=model_files)
    logger.info("restored the final model in %s from %s", output_dir, checkpoint)


def copy_nofollow(source: Path, target: Path) -> None:
    """Copy the regular file `source` over `target` (atomically; neither is followed if it is a link)."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        tmp = target.with_name(f".{target.name}.restore")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    os.replace(tmp, target)


def guard_pushes(trainer, run):
    """Route every push of this Trainer through edugpt.hub.publish (TrainerPushes: the run's own files only, no symlink
    followed, scanned for tokens, edugpt's card in the same commit; step-N branches with hub_step_branches), and keep
    Trainer's card out of output_dir: TRL calls `create_model_card` at every checkpoint save, which would write
    Trainer's generic card over edugpt's. Replaced on this instance rather than by subclassing, because the same
    trainer classes are TRL's SFTTrainer and DPOTrainer too. Returns the TrainerPushes, None without push_to_hub."""
    from edugpt.model.saved import is_saved_model
    from edugpt.report.card import write_model_card

    def create_model_card(*args, **kwargs):
        if trainer.is_world_process_zero() and is_saved_model(run.output_dir):
            write_model_card(run.output_dir, **card_kwargs(run))

    replace_trainer_model_card(trainer, create_model_card)
    if not run.args.push_to_hub:
        return None
    from edugpt.hub.trainer_pushes import TrainerPushes

    return TrainerPushes(trainer, run.output_dir, run.args,
                         step_branches=getattr(run.run_args, "hub_step_branches", False))

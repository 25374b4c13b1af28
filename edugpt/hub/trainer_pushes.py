"""A training run's pushes (`--push_to_hub`, `hub_strategy`, `--hub_step_branches`), all through the guarded path of
publish.py: Trainer's own pushes while and after training, and each checkpoint's `step-N` branch as it is saved, so
`from_pretrained(repo, revision="step-5000")` loads that checkpoint even after save_total_limit deleted it locally.
A push during training never fails the training step: it runs in the background (edugpt.hub.pusher) and what is not
on the Hub at the end is one error (`pushes_failed_error`) saying how to push the rest.
"""

from __future__ import annotations

import os
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.hub.plan import STAGING, BranchUpload, plan_branch, plan_main
from edugpt.hub.pusher import HubPusher
from edugpt.run import rundir
from edugpt.train.trainer_hooks import route_trainer_pushes, save_model_without_push


class TrainerPushes:
    """A training run's pushes, all through the guarded path. Installed on one Trainer instance (also TRL's SFTTrainer
    and DPOTrainer, hence no subclass): `push_to_hub` and `_push_from_checkpoint` (hub_strategy, at every save) are
    replaced (trainer_hooks.route_trainer_pushes) by versions that plan, stage, scan and upload as publish.py does,
    instead of Trainer's upload of all of output_dir (its lock file, corrupt checkpoints, whatever a symlink there
    points to). The pushes of a save happen in edugpt.train.callbacks.HubPushCallback.on_save, after the checkpoint's
    completion marker is written, so a pushed checkpoint can be resumed from: main with hub_strategy, and with
    `step_branches` branch step-N."""

    def __init__(self, trainer, output_dir: str | os.PathLike, training_args, *, step_branches: bool = False):
        from edugpt.train.callbacks import HubPushCallback

        self.trainer = trainer
        self.output_dir = Path(output_dir).resolve()
        self.args = training_args
        self.step_branches = step_branches
        self.main_branch = training_args.hub_revision or "main"
        self.pusher = None
        self._checkpoint_for_main: str | None = None  # set by Trainer's hub_strategy call, pushed at on_save
        if trainer.is_world_process_zero():
            self.pusher = HubPusher(self.output_dir, training_args.hub_model_id, private=training_args.hub_private_repo)
            self.pusher.adopt_pending()
        route_trainer_pushes(trainer, self._note_checkpoint, self.push_to_hub)
        trainer.add_callback(HubPushCallback(self))

    def _note_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer's _push_from_checkpoint, called inside _save_checkpoint before the on_save callbacks: note it, push
        # in on_saved.
        if self.pusher is not None and self.args.hub_strategy != "end":
            self._checkpoint_for_main = checkpoint_folder

    def on_saved(self, step: int) -> None:
        """After a save (rank 0): the hub_strategy push to main and the step-N branch, both in the background."""
        if self.pusher is None:
            return
        if self._checkpoint_for_main is not None:
            checkpoint, self._checkpoint_for_main = self._checkpoint_for_main, None
            self.push_from_checkpoint(checkpoint)
        if self.step_branches:
            self.push_step(step)

    @property
    def repo_id(self) -> str:
        return self.args.hub_model_id

    def push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's hub_strategy push at a save, in the background: main gets the checkpoint's model and the run's
        record ("checkpoint" / "all_checkpoints": also the checkpoint with its resume state, as Trainer does)."""
        state = self.trainer.state
        message = (f"Training in progress, step {state.global_step}" if self.args.save_strategy == "steps"
                   else f"Training in progress, epoch {int(state.epoch or 0)}")
        strategy = getattr(self.args.hub_strategy, "value", self.args.hub_strategy)  # HubStrategy enum or str
        copy = {"checkpoint": "last-checkpoint", "all_checkpoints": Path(checkpoint_folder).name}.get(strategy)
        try:
            upload = plan_main(self.output_dir, self.repo_id, model_dir=checkpoint_folder, branch=self.main_branch,
                               message=message, checkpoint_copy=copy)
        except Exception as err:  # never fail the training step
            self.pusher.record_failure(self.main_branch, err)
            return
        self.pusher.submit(upload)

    def push_step(self, step: int) -> None:
        """checkpoint-`step` to branch step-N, in the background."""
        if self.pusher is None:
            return
        branch = f"step-{step}"
        try:
            upload = plan_branch(self.output_dir, self.output_dir / f"checkpoint-{step}", self.repo_id, step=step)
        except Exception as err:  # never fail the training step
            self.pusher.record_failure(branch, err)
            return
        self.pusher.submit(upload)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision: str | None = None, private: bool | None = None, **kwargs):
        """Trainer.push_to_hub's contract (save the model on every rank, push from rank 0), through the guarded path."""
        before = rundir.entries(self.output_dir) if self.pusher is not None else {}
        save_model_without_push(self.trainer, self.trainer.args.output_dir)  # save_model()'s own default
        if self.pusher is None:
            return None
        rundir.record_saved_model(self.output_dir, before)
        self.pusher.push(self._final_upload(commit_message, revision or self.main_branch))
        return f"https://huggingface.co/{self.pusher.repo_id}"

    def _final_upload(self, message: str | None, branch: str) -> BranchUpload:
        """main from the final model in output_dir, its card as the local one (lm-eval results found the same way)."""
        lm_eval = rundir.find_lm_eval_results(self.output_dir)
        return plan_main(self.output_dir, self.repo_id, branch=branch, message=message,
                         eval_results=lm_eval["_path"] if lm_eval else None)

    def finish(self, message: str = "End of training") -> dict[str, str]:
        """The end of training (rank 0, the final model saved in output_dir): let the background pushes finish, push
        main, try the failed ones once more. Returns {branch: reason} of what is not on the Hub."""
        if self.pusher is None:
            return {}
        try:
            self.pusher.push(self._final_upload(message, self.main_branch))
        except EduGPTError:
            pass  # recorded in the pusher's failures
        return self.pusher.finish_pending()



def pushes_failed_error(output_dir: str | os.PathLike, repo_id: str, failures: dict[str, str],
                        main_branch: str = "main") -> EduGPTError:
    """The one error a run whose pushes failed ends with: the model is local, and this is how to push the rest."""
    steps = sorted((b for b in failures if b != main_branch), key=lambda b: int(b.removeprefix("step-"))
                   if b.removeprefix("step-").isdigit() else 0)
    branches = " --branches" if steps else ""
    if main_branch in failures:
        also = f" ({', '.join(steps)} not pushed either)" if steps else ""
        return EduGPTError(
            f"the model is saved in {output_dir}, but pushing it to {repo_id} failed ({failures[main_branch]}){also}; "
            f"check the network and your token's write access, then run the same command again or "
            f"`python publish.py {output_dir} --hub_model_id {repo_id}{branches}`."
        )
    shown = "; ".join(f"{b}: {failures[b]}" for b in steps[:3]) + ("; ..." if len(steps) > 3 else "")
    return EduGPTError(
        f"the model is saved in {output_dir} and pushed to {repo_id}, but {len(steps)} checkpoint branch(es) could not "
        f"be pushed ({shown}); their files are kept in {Path(output_dir) / STAGING}: run the same command again or "
        f"`python publish.py {output_dir} --hub_model_id {repo_id} --branches`."
    )


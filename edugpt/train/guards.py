"""The guards of every training run (train_hf.py, finetune/sft.py, finetune/dpo.py; edugpt.run.lifecycle attaches
them): SIGTERM (save a checkpoint at the step boundary, then stop) and non-finite loss or gradients (stop before a
broken checkpoint is saved, or skip the step's update). Under several processes every decision is taken on all of
them at once (`_any_rank`): one rank stopping alone would leave the others waiting in a collective.
"""

from __future__ import annotations

import logging
import math
import signal

from transformers import TrainerCallback

logger = logging.getLogger(__name__)


def _any_rank(flag: bool, device) -> bool:
    """True if `flag` is set on any process (every rank must take the same save/stop decision, or NCCL hangs)."""
    import torch
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return flag
    tensor = torch.tensor(int(flag), device=device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return bool(tensor.item())


class SigtermCallback(TrainerCallback):
    """On SIGTERM (cloud preemption): finish the current step, save a checkpoint there, stop; the script exits 0.

    The handler only sets a flag; the save happens at the step boundary through Trainer's own `should_save`. Under
    several processes a signal to any one of them (a preempted node) stops all of them at the same step: the flags
    are combined at every step end (`_any_rank`), so every process saves its part of the same checkpoint and leaves
    the loop together, instead of the others waiting in a collective for one that has gone.
    """

    def __init__(self):
        self.received = False
        self.stopped_at = None
        self._previous = None

    def _handle(self, signum, frame):
        self.received = True
        print("SIGTERM received: saving a checkpoint at the end of this step, then exiting.", flush=True)

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous = signal.signal(signal.SIGTERM, self._handle)

    def on_step_end(self, args, state, control, **kwargs):
        if _any_rank(self.received, args.device):
            if self.stopped_at is None:
                where = "received here" if self.received else "received by another process"
                print(f"process {args.process_index}: stopping at step "
                      f"{state.global_step} (SIGTERM {where}) after saving a checkpoint", flush=True)
            self.received = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class NonFiniteLossCallback(TrainerCallback):
    """Guards training against a NaN/inf loss or gradient; `mode` is the script's `nonfinite_loss`.

    "stop" (default): stops training when the loss or gradient norm turns NaN/inf, before a checkpoint of the broken
    weights is saved. Checked at every log record (Trainer's `logging_nan_inf_filter` hides a NaN loss, but not a NaN
    grad_norm) and, before every checkpoint, on the weights themselves. `failure` then holds the message for the
    script to raise.

    "skip": before every optimizer step (after clipping), gradients with any NaN/inf drop that step's update, so the
    weights stay finite; the step still counts (global_step, LR schedule). `skipped_steps` lists the skipped steps,
    and `counter`, which `install_callbacks` runs before the reporting callbacks, adds `skipped_nonfinite_steps` (how
    many of the steps a train record covers were skipped) to every train log record. More than `max_skipped_steps`
    in a row is a failure, as in "stop": a run that only produces NaNs must not go on. The log and weight checks of
    "stop" still run, except that a NaN that a skipped step put in a log record does not stop the run. Needs
    Trainer's `logging_nan_inf_filter` (on by default): without it one NaN loss keeps every later logged loss NaN
    (Trainer resets its running loss by subtracting it from itself). With it, Trainer counts a NaN loss as a share of
    the record's earlier losses, so a record holding a skipped step reads a little low (NaN if all its steps were).
    """

    def __init__(self, mode: str = "stop", max_skipped_steps: int = 10):
        if mode not in ("stop", "skip"):
            raise ValueError(f"mode must be 'stop' or 'skip', got {mode!r}")
        self.mode = mode
        self.max_skipped_steps = max_skipped_steps
        self.failure = None
        self.skipped_steps: list[int] = []
        self.counter = SkippedStepsCounter(self)
        self._in_a_row = 0
        self._last_log_step = 0

    def _stop(self, control, state, what):
        self.failure = f"{what} at step {state.global_step}"
        control.should_save = False
        control.should_evaluate = False
        control.should_training_stop = True
        return control

    def skipped_after(self, step: int) -> int:
        """How many skipped steps came after `step`."""
        return sum(skipped > step for skipped in self.skipped_steps)

    def on_train_begin(self, args, state, control, **kwargs):
        self._in_a_row = 0
        self._last_log_step = state.global_step

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.mode != "skip" or self.failure:
            return control
        import torch

        # Under FSDP2 gradients are DTensors: check this rank's shard; _any_rank combines the verdicts (under DDP the
        # gradients are already all-reduced, so every rank sees the same ones). One host sync per optimizer step.
        shards = [g.to_local() if hasattr(g, "to_local") else g for g in (p.grad for p in model.parameters())
                  if g is not None]
        broken = bool(shards) and not torch.stack([torch.isfinite(shard).all() for shard in shards]).all().item()
        if not _any_rank(broken, args.device):
            self._in_a_row = 0
            return control
        # torch's AdamW (single-tensor, foreach and fused alike) updates only parameters whose .grad is not None, so
        # with every .grad gone optimizer.step() changes nothing: no weight decay, no moment update, no step count.
        # Zeroed gradients would not do: the weights would still decay and move along the old momentum.
        model.zero_grad(set_to_none=True)
        step = state.global_step + 1  # the step being taken: the number its log record and checkpoint carry
        self.skipped_steps.append(step)
        self._in_a_row += 1
        if self._in_a_row > self.max_skipped_steps:
            self.failure = (f"the gradients were non-finite on {self._in_a_row} optimizer steps in a row (more than "
                            f"max_skipped_steps {self.max_skipped_steps}) up to step {step}")
            control.should_training_stop = True  # on_step_end cancels this step's save and evaluation
        elif state.is_world_process_zero:
            logger.warning("non-finite gradients at step %d: skipped its update (%d in a row, %d in all)",
                           step, self._in_a_row, len(self.skipped_steps))
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.failure or not logs or "loss" not in logs:
            return control
        # A skipped step leaves its NaN in the record: grad_norm is the logging step's own, the loss (unless
        # logging_nan_inf_filter replaced it) spans every step since the previous record. The weights never saw it.
        from_skipped_step = {"loss": self.skipped_after(self._last_log_step) > 0,
                             "grad_norm": state.global_step in self.skipped_steps}
        self._last_log_step = state.global_step
        for key in ("loss", "grad_norm"):
            value = logs.get(key)
            if value is not None and not math.isfinite(value) and not from_skipped_step[key]:
                return self._stop(control, state, f"the training {key.replace('_', ' ')} became {value}")
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.failure:  # set before this step's optimizer step (too many skips): no checkpoint, no evaluation
            control.should_save = False
            control.should_evaluate = False
        elif control.should_save:
            import torch

            # Under FSDP2 parameters are DTensors: check this rank's shard; _any_rank combines the verdicts.
            shards = (p.to_local() if hasattr(p, "to_local") else p for p in model.parameters())
            broken = any(not torch.isfinite(shard).all() for shard in shards)
            if _any_rank(broken, args.device):
                return self._stop(control, state, "the model weights became non-finite")
        return control


class SkippedStepsCounter(TrainerCallback):
    """Adds `skipped_nonfinite_steps` to every train log record of a skipping `NonFiniteLossCallback`."""

    def __init__(self, guard: NonFiniteLossCallback):
        self.guard = guard
        self._last_log_step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_log_step = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is not None and "loss" in logs:
            skipped = self.guard.skipped_after(self._last_log_step)
            logs["skipped_nonfinite_steps"] = skipped
            if skipped and skipped == state.global_step - self._last_log_step:
                # logging_nan_inf_filter fills a NaN loss in from the record's earlier steps: 0.0 when there are none.
                # No step of this record has a loss to show.
                logs["loss"] = float("nan")
            self._last_log_step = state.global_step

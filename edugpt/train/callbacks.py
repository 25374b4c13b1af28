"""Trainer callbacks of every training run (train_hf.py, finetune/sft.py, finetune/dpo.py): throughput/MFU,
metrics.jsonl, plots, new hyperparameters after a changed resume, the trackers' names for in-loop scores, the Hub
pushes of each save; and `install_callbacks`, which puts them (and edugpt.train.guards', edugpt.train.samples') in
Trainer's order of calls.

The training loop stays Trainer's; each concern here is a `TrainerCallback`. Order matters in one place:
`ThroughputCallback` (and the skipped-step counter of `NonFiniteLossCallback` in "skip" mode) must run before the
reporting callbacks (console, tensorboard, wandb) so that the numbers they add to a log record reach them;
`install_callbacks` puts them first.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from transformers import TrainerCallback

from edugpt.model.gpt2 import mfu
from edugpt.run.rundir import MetricsLog
from edugpt.train.guards import NonFiniteLossCallback
from edugpt.train.samples import SamplesCallback
from edugpt.train.trainer_hooks import insert_trainer_callbacks, set_scheduler_last_lr, trainer_callbacks

logger = logging.getLogger(__name__)

# What Trainer adds to every training record when it counts input tokens; ThroughputCallback's tokens_per_second
# replaces them there.
TRAINER_SPEED_KEYS = ("train_tokens_per_second", "train_runtime")


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_second` (all devices, training time only) and `mfu` to every training log record, and removes
    Trainer's own `train_tokens_per_second` / `train_runtime` from those records: one throughput, one meaning.

    Time is counted from the moment the previous step's callbacks finished (see `StepClockCallback`, which runs
    last) to this step's `on_step_end`: data loading, forward, backward and the optimizer step are in; evaluation,
    checkpointing, samples and HellaSwag are out. MFU = tokens/s * FLOPs per token / (peak FLOP/s * devices).
    Trainer's (5.24) figure is cumulative since this session started, evaluation and saving included, so it read up to
    2x lower beside ours; it stays in trainer_state.json's log_history and in the end-of-training summary record.
    """

    def __init__(self, flops_per_token: float, peak_flops: float | None, world_size: int = 1):
        self.flops_per_token = flops_per_token
        self.peak_flops = peak_flops
        self.world_size = world_size
        self.clock = StepClockCallback()
        self._seconds = 0.0
        self._tokens_at_last_log = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._seconds = 0.0
        self._tokens_at_last_log = state.num_input_tokens_seen
        self.clock.mark()

    def on_step_end(self, args, state, control, **kwargs):
        self._seconds += time.perf_counter() - self.clock.last

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs:
            return
        for key in TRAINER_SPEED_KEYS:
            logs.pop(key, None)
        tokens = state.num_input_tokens_seen - (self._tokens_at_last_log or 0)
        if self._seconds > 0 and tokens > 0:
            tokens_per_second = tokens / self._seconds
            logs["tokens_per_second"] = round(tokens_per_second, 1)
            if self.peak_flops:
                logs["mfu"] = round(mfu(tokens_per_second, self.flops_per_token, self.peak_flops, self.world_size), 4)
        self._seconds = 0.0
        self._tokens_at_last_log = state.num_input_tokens_seen


class StepClockCallback(TrainerCallback):
    """Registered last: remembers when the previous step's callbacks (eval, save, samples, ...) finished."""

    def __init__(self):
        self.last = time.perf_counter()

    def mark(self):
        self.last = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.mark()

    on_log = on_evaluate = on_save = on_train_begin = on_step_end


class MetricsJsonlCallback(TrainerCallback):
    """Appends every log record (train, eval, HellaSwag) to metrics.jsonl with its step and tokens seen."""

    def __init__(self, metrics: MetricsLog):
        self.metrics = metrics

    def on_train_begin(self, args, state, control, **kwargs):
        # Runs before the samples callback's step-0 record. A start from scratch (killed before its first
        # checkpoint, or its only checkpoint set aside as corrupt) must not append to the old attempt's records.
        if not state.is_world_process_zero:
            return
        if state.global_step == 0:
            self.metrics.clear()
        else:
            self.metrics.truncate_after(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        self.metrics.append({"step": state.global_step, "tokens": state.num_input_tokens_seen, **logs})


class PlotCallback(TrainerCallback):
    """Redraws images/train-loss.png after each evaluation and at the end; images/hellaswag.png when scored."""

    def __init__(self, output_dir: str | Path, metrics: MetricsLog, hellaswag_file: str | None = None):
        self.output_dir = Path(output_dir)
        self.metrics = metrics
        self.hellaswag_file = hellaswag_file  # the plot names the scored file when it is not HellaSwag itself

    def draw(self, state) -> None:
        from edugpt.report.plots import draw_run_plots

        if state.is_world_process_zero:
            draw_run_plots(self.output_dir, self.metrics.read(), self.hellaswag_file)

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "hellaswag/acc" in logs:
            self.draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.draw(state)


class NewHyperparametersCallback(TrainerCallback):
    """After a resume with `--resume_with_changes`: make the run's own learning rate, optimizer hyperparameters and
    schedule take effect. Trainer builds the optimizer and scheduler from the new arguments, then loads the
    checkpoint's state into them, and those state dicts carry the old values (each param group's lr, betas, eps and
    weight decay; the scheduler's base_lrs), which would silently win. `on_train_begin` runs after that load.

    Which groups decay is read from their parameters, not from their saved weight decay: a checkpoint trained with
    weight_decay 0 has 0 in every group, the decay group included."""

    def __init__(self, training_args):
        self.args = training_args

    def on_train_begin(self, args, state, control, model=None, optimizer=None, lr_scheduler=None, **kwargs):
        if optimizer is None:
            return
        decayed = _decayed_parameters(model)
        inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer wraps torch's
        options = {key: value for key, value in inner.defaults.items() if key not in _PER_GROUP}
        if any(set(group) - set(_PER_GROUP) != set(options) for group in inner.param_groups):
            # Saved by another kind of optimizer (optim adamw_torch -> adafactor, sgd ...): its moment estimates mean
            # nothing to this one, which would fail on them at its first step. The weights go on; the state restarts.
            logger.warning("the checkpoint's optimizer state is another optimizer's; %s starts with fresh state",
                           getattr(self.args.optim, "value", self.args.optim))
            inner.state.clear()
            for group in inner.param_groups:
                for key in set(group) - set(_PER_GROUP) - set(options):
                    del group[key]
        for group in optimizer.param_groups:
            # The optimizer's own options as this run built them (fused, foreach, momentum, optim_args ...): the
            # saved groups carry the checkpoint's.
            group.update(options)  # adam_beta1/2 and adam_epsilon among them, for the optimizers that have them
            group["initial_lr"] = self.args.learning_rate
            decays = (any(id(p) in decayed for p in group["params"]) if decayed is not None
                      else bool(group.get("weight_decay")))
            if "weight_decay" in group and decays:  # Trainer's no-decay group (biases, LayerNorm) stays at 0
                group["weight_decay"] = self.args.weight_decay
        if lr_scheduler is not None and hasattr(lr_scheduler, "lr_lambdas"):
            # Trainer's schedules are LambdaLR: their lambdas already follow the new warmup/max_steps; the saved
            # base_lrs do not. Re-apply the schedule at the current step with the new peak.
            lr_scheduler.base_lrs = [self.args.learning_rate] * len(optimizer.param_groups)
            step = lr_scheduler.last_epoch
            for group, base, factor in zip(optimizer.param_groups, lr_scheduler.base_lrs, lr_scheduler.lr_lambdas):
                group["lr"] = base * factor(step)
            set_scheduler_last_lr(lr_scheduler, [group["lr"] for group in optimizer.param_groups])


# Param-group values NewHyperparametersCallback sets itself: Trainer gives each group its own weight decay, and the
# learning rate follows the schedule.
_PER_GROUP = ("params", "lr", "initial_lr", "weight_decay")


def _decayed_parameters(model) -> set[int] | None:
    """ids of the parameters Trainer gives weight decay (all but biases and norm weights, by its own rule,
    `Trainer.get_decay_parameter_names`, which reads no Trainer state); None without a model."""
    if model is None:
        return None
    from transformers import Trainer

    names = set(Trainer.get_decay_parameter_names(None, model))
    return {id(p) for name, p in model.named_parameters() if name in names}


# In-loop evaluation scores (HellaSwagCallback) that the trackers file under eval/, beside eval/loss: Trainer's tracker
# callbacks put every key without the "eval_" prefix under train/ (transformers.integrations' rewrite_logs).
IN_LOOP_EVAL_KEYS = ("hellaswag/acc", "hellaswag/acc_norm")


class TrackerEvalNames(TrainerCallback):
    """Around Trainer's tracker callbacks (tensorboard, wandb, trackio ...), which see one shared `logs` dict: the
    one before them gives the in-loop evaluation scores Trainer's "eval_" prefix, the one after them (`restore`)
    takes it off again, so that the console, metrics.jsonl and the plots keep their names."""

    def __init__(self, restore: bool = False):
        self.restore = restore

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in IN_LOOP_EVAL_KEYS if logs else ():
            old, new = (f"eval_{key}", key) if self.restore else (key, f"eval_{key}")
            if old in logs:
                logs[new] = logs.pop(old)


def install_callbacks(trainer, *callbacks) -> None:
    """Add `callbacks` to `trainer`. What adds numbers to log records (a ThroughputCallback, a skipping
    NonFiniteLossCallback's counter) goes first, the step clock last (see module docstring). The trackers get the
    in-loop scores under eval/ (TrackerEvalNames) and the samples as text (SamplesCallback)."""
    front = []
    for callback in callbacks:
        if isinstance(callback, ThroughputCallback):
            front.append(callback)
        else:
            trainer.add_callback(callback)
            if isinstance(callback, NonFiniteLossCallback) and callback.mode == "skip":
                front.append(callback.counter)
    insert_trainer_callbacks(trainer, 0, *front)
    for callback in callbacks:
        if isinstance(callback, ThroughputCallback):
            trainer.add_callback(callback.clock)
    trackers = tracker_callbacks(trainer)
    if trackers:
        insert_trainer_callbacks(trainer, trainer_callbacks(trainer).index(trackers[-1]) + 1, TrackerEvalNames(restore=True))
        insert_trainer_callbacks(trainer, trainer_callbacks(trainer).index(trackers[0]), TrackerEvalNames())
    for callback in callbacks:
        if isinstance(callback, SamplesCallback):
            callback.trackers = trackers


def tracker_callbacks(trainer) -> list:
    """Trainer's `report_to` callbacks (tensorboard, wandb, trackio, mlflow ...), in their order."""
    return [callback for callback in trainer_callbacks(trainer)
            if type(callback).__module__.startswith("transformers.integrations")]


class HubPushCallback(TrainerCallback):
    """With --push_to_hub: the pushes of each save (edugpt.hub.trainer_pushes) — main as hub_strategy asks, and with
    --hub_step_branches checkpoint-N to branch step-N — staged at once and uploaded in the background, so training
    never waits for the Hub and a run with save_total_limit still leaves every saved step on the Hub. Added after the
    lifecycle's callbacks: the checkpoint's completion marker is written first."""

    def __init__(self, pushes):
        self.pushes = pushes

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.pushes.on_saved(state.global_step)

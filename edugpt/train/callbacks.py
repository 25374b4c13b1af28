"""Trainer callbacks of `train_hf.py`: throughput/MFU, metrics.jsonl, the samples table, plots, SIGTERM, NaN guard.

The training loop stays Trainer's; each concern here is a `TrainerCallback`. Order matters in one place:
`ThroughputCallback` (and the skipped-step counter of `NonFiniteLossCallback` in "skip" mode) must run before the
reporting callbacks (console, tensorboard, wandb) so that the numbers they add to a log record reach them;
`install_callbacks` puts them first.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import time
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import TrainerCallback

from edugpt.errors import EduGPTError
from edugpt.io.safefs import atomic_write_text
from edugpt.model.gpt2 import mfu
from edugpt.run.record import Record, note_written
from edugpt.run.rundir import MetricsLog

logger = logging.getLogger(__name__)

SAMPLES_HEADER = "| Step | Output |\n|------|--------|\n"
# What Trainer adds to every training record when it counts input tokens; ThroughputCallback's tokens_per_second
# replaces them there.
TRAINER_SPEED_KEYS = ("train_tokens_per_second", "train_runtime")


def _is_main(state) -> bool:
    return state.is_world_process_zero


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
        if not _is_main(state):
            return
        if state.global_step == 0:
            self.metrics.clear()
        else:
            self.metrics.truncate_after(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not _is_main(state):
            return
        self.metrics.append({"step": state.global_step, "tokens": state.num_input_tokens_seen, **logs})


class SamplesCallback(TrainerCallback):
    """Continues each prompt at step 0, every `every_steps` and at the end; rows go to samples.md and metrics.jsonl.

    Generation runs with a fixed seed inside `torch.random.fork_rng` and in eval mode, then restores the model's
    mode: the training RNG stream and dropout are exactly as if no sample had been drawn (resume stays bit-exact).
    """

    def __init__(self, tokenizer, prompts, every_steps, max_new_tokens, top_k, seed, samples_path, metrics: MetricsLog):
        self.tokenizer = tokenizer
        self.prompts = list(prompts)
        self.every_steps = every_steps
        self.max_new_tokens = max_new_tokens
        self.top_k = top_k
        self.seed = seed
        self.samples_path = Path(samples_path)
        self.metrics = metrics
        self._last_step = None
        self.rows: list[list] = []  # [step, prompt, text] of every sample so far: the trackers' table
        self.trackers: list = []  # Trainer's tracker callbacks (install_callbacks fills it)
        self.args = None

    def encode(self, prompt: str):
        """The prompt's ids as ordinary text (a literal "<|endoftext|>" in it is text, not the end of a document)."""
        from edugpt.model.tokenizer import encode_text

        return encode_text(self.tokenizer, prompt, add_special_tokens=True, return_tensors="pt")

    def generate(self, model, prompt: str) -> str:
        import torch

        device = next(model.parameters()).device
        encoded = self.encode(prompt).to(device)
        was_training = model.training
        cuda_devices = [device.index or 0] if device.type == "cuda" else []
        model.eval()
        try:
            with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
                torch.manual_seed(self.seed)
                output = model.generate(
                    **encoded,
                    max_new_tokens=self.max_new_tokens,
                    do_sample=self.top_k > 0,
                    top_k=self.top_k if self.top_k > 0 else None,
                    pad_token_id=self.tokenizer.eos_token_id,
                )
        finally:
            model.train(was_training)
        return self.tokenizer.decode(output[0])

    def sample(self, state, model) -> None:
        if self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        for prompt in self.prompts:
            text = self.generate(model, prompt)  # every rank generates: an FSDP-sharded model needs all of them
            if not _is_main(state):
                continue
            with logging_redirect_tqdm():  # through tqdm.write: the progress bar stays whole
                logger.info("sample at step %d: %s", state.global_step, one_line(text))
            self.rows.append([state.global_step, prompt, text])
            if not os.path.lexists(self.samples_path):
                self.samples_path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(self.samples_path, SAMPLES_HEADER, role=None)
                note_written(self.samples_path, appends=True)
            with open(self.samples_path, "a") as f:
                f.write(f"| {state.global_step} | {markdown_cell(text)} |\n")
            self.metrics.append({"step": state.global_step, "tokens": state.num_input_tokens_seen,
                                 "sample/prompt": prompt, "sample/text": text})
        if _is_main(state):
            send_samples_to_trackers(self.trackers, self.rows, self.args, state)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args = args
        if state.global_step == 0:
            if _is_main(state) and os.path.lexists(self.samples_path):
                if Record.load(self.samples_path.parent).role(self.samples_path.name) is None:
                    raise EduGPTError(f"{self.samples_path} was not written by this run (it is not in the run's "
                                      "record); move it away, then run the same command again.")
                self.samples_path.unlink()  # a fresh run starts a fresh table
            self.sample(state, model)
        elif _is_main(state) and self.samples_path.exists():
            truncate_samples(self.samples_path, state.global_step)
            self._last_step = state.global_step  # sampled when the checkpoint was written

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_steps and state.global_step % self.every_steps == 0:
            self.sample(state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step >= state.max_steps:  # finished, not preempted or stopped on a NaN
            self.sample(state, model)


def one_line(text: str) -> str:
    """`text` on one console line: each line break shown as "⏎"."""
    return " ⏎ ".join(line.strip() for line in text.strip().splitlines())


def tracker_callbacks(trainer) -> list:
    """Trainer's `report_to` callbacks (tensorboard, wandb, trackio, mlflow ...), in their order."""
    return [callback for callback in trainer.callback_handler.callbacks
            if type(callback).__module__.startswith("transformers.integrations")]


def send_samples_to_trackers(trackers: list, rows: list[list], args, state) -> None:
    """The samples so far as text where a tracker shows text: tensorboard's text plugin (a Markdown table per step),
    a wandb Table, a trackio Table (both of every sample so far: a logged table replaces the one shown, as TRL's
    LogCompletionsCallback does). Sent through each tracker callback's own `on_log`, so it lands in its run at this
    step, under train/samples."""
    from transformers.integrations import TensorBoardCallback, TrackioCallback, WandbCallback

    columns = ["step", "prompt", "text"]
    for tracker in trackers:
        if isinstance(tracker, TensorBoardCallback):
            now = [row for row in rows if row[0] == state.global_step]
            value = "| prompt | text |\n|---|---|\n" + "".join(
                f"| {markdown_cell(prompt)} | {markdown_cell(text)} |\n" for _, prompt, text in now)
        elif isinstance(tracker, WandbCallback):
            import wandb

            value = wandb.Table(columns=columns, data=[list(row) for row in rows])
        elif isinstance(tracker, TrackioCallback):
            import trackio

            value = trackio.Table(columns=columns, data=[list(row) for row in rows])
        else:
            continue  # mlflow, comet ... log numbers only
        tracker.on_log(args, state, None, logs={"samples": value})


def markdown_cell(text: str) -> str:
    """`text` on one line of a Markdown table: newlines as spaces, pipes and angle brackets escaped."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def truncate_samples(path: Path, step: int) -> None:
    """Keep the samples.md rows of steps <= `step` (a resumed run writes the later ones again)."""
    kept = []
    for line in path.read_text().splitlines(keepends=True):
        cells = line.split("|")
        if len(cells) > 2 and cells[1].strip().isdigit() and int(cells[1]) > step:
            continue
        kept.append(line)
    atomic_write_text(path, "".join(kept), role=None)
    note_written(path, appends=True)


class PlotCallback(TrainerCallback):
    """Redraws images/train-loss.png after each evaluation and at the end; images/hellaswag.png when scored."""

    def __init__(self, output_dir: str | Path, metrics: MetricsLog, hellaswag_file: str | None = None):
        self.output_dir = Path(output_dir)
        self.metrics = metrics
        self.hellaswag_file = hellaswag_file  # the plot names the scored file when it is not HellaSwag itself

    def draw(self, state) -> None:
        from edugpt.report.plots import draw_run_plots

        if _is_main(state):
            draw_run_plots(self.output_dir, self.metrics.read(), self.hellaswag_file)

    def on_evaluate(self, args, state, control, **kwargs):
        self.draw(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "hellaswag/acc" in logs:
            self.draw(state)

    def on_train_end(self, args, state, control, **kwargs):
        self.draw(state)


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
        elif _is_main(state):
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
            lr_scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


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
    # CallbackHandler has no insert(): its list is the documented order of calls, so place them directly.
    trainer.callback_handler.callbacks[0:0] = front
    for callback in callbacks:
        if isinstance(callback, ThroughputCallback):
            trainer.add_callback(callback.clock)
    trackers = tracker_callbacks(trainer)
    if trackers:
        order = trainer.callback_handler.callbacks
        order.insert(order.index(trackers[-1]) + 1, TrackerEvalNames(restore=True))
        order.insert(order.index(trackers[0]), TrackerEvalNames())
    for callback in callbacks:
        if isinstance(callback, SamplesCallback):
            callback.trackers = trackers


class HubPushCallback(TrainerCallback):
    """With --push_to_hub: the pushes of each save (edugpt.hub.publish.TrainerPushes) — main as hub_strategy asks, and with
    --hub_step_branches checkpoint-N to branch step-N — staged at once and uploaded in the background, so training
    never waits for the Hub and a run with save_total_limit still leaves every saved step on the Hub. Added after the
    lifecycle's callbacks: the checkpoint's completion marker is written first."""

    def __init__(self, pushes):
        self.pushes = pushes

    def on_save(self, args, state, control, **kwargs):
        if _is_main(state):
            self.pushes.on_saved(state.global_step)

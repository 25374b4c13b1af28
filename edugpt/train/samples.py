"""The samples callback: prompts continued at step 0, every N steps and at the end of a pretraining run (train_hf.py's
`sample_*` options), written to samples.md and metrics.jsonl and shown as text in the trackers (tensorboard, wandb,
trackio). samples.md is the run's own file: a fresh run starts it anew, a resumed run keeps the rows up to its
checkpoint's step.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm
from transformers import TrainerCallback

from edugpt.errors import EduGPTError
from edugpt.io.safefs import atomic_write_text
from edugpt.run.record import Record, note_written
from edugpt.run.rundir import MetricsLog

logger = logging.getLogger(__name__)

SAMPLES_HEADER = "| Step | Output |\n|------|--------|\n"


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
            if not state.is_world_process_zero:
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
        if state.is_world_process_zero:
            send_samples_to_trackers(self.trackers, self.rows, self.args, state)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.args = args
        if state.global_step == 0:
            if state.is_world_process_zero and os.path.lexists(self.samples_path):
                if Record.load(self.samples_path.parent).role(self.samples_path.name) is None:
                    raise EduGPTError(f"{self.samples_path} was not written by this run (it is not in the run's "
                                      "record); move it away, then run the same command again.")
                self.samples_path.unlink()  # a fresh run starts a fresh table
            self.sample(state, model)
        elif state.is_world_process_zero and self.samples_path.exists():
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

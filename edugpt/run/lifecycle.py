"""One lifecycle for every training entry point (train_hf.py, finetune/sft.py, finetune/dpo.py): claim the
output_dir, resume or refuse, train, stop cleanly, finish.

    run = TrainingRun("sft", training_args, run_args)
    run.check_output_dir()             # before any data or model is loaded: someone's folder is refused
    run.begin(settings, run_config)    # lock, decide: resume / restore / already finished / start; run_config.json
    run.execute(build_trainer)         # if training is left: build, attach callbacks, train, finish (final model,
                                       # marker, card, push); else restore a missing final model, card, push

The lifecycle only orchestrates: what output_dir holds is read by edugpt.run.survey, the rules that decide are
edugpt.run.decide's (pure, unit-tested), the settings compared are edugpt.run.settings', the fallback and the
failures are edugpt.run.failures', the end of a run edugpt.run.finish's.

The rules, the same for every kind of run:
- Re-running the same command resumes from the newest *valid* checkpoint (edugpt.run.checkpoints); a finished run is not
  trained again (its missing or damaged final model is restored from the checkpoint at its last step). Nothing a
  user produced is deleted by a re-run. `--resume_from_checkpoint PATH` resumes from that checkpoint, also into a new
  output_dir. Starting over in a folder that holds a run takes `--overwrite_output_dir`.
- A folder that is not this project's run, or holds another kind of run, is refused before anything is written
  (edugpt.run.rundir.require_own_run_dir). A second job on the same output_dir, on any host, is refused (DirLock).
- The settings a checkpoint was trained with (learning rate and schedule, optimizer, global batch, seed, sequence
  length, data) are recorded in its completion marker; resuming with different ones is refused with the list of
  differences, unless `--resume_with_changes`, which makes the new values take effect (the optimizer's and
  scheduler's saved hyperparameters would otherwise silently win) and records the change in run_config.json.
- A checkpoint that is whole by its marker but whose state Trainer cannot load is set aside like a corrupt one, and
  training restarts with a fresh Trainer from the previous valid checkpoint. A save that fails (a full disk: one
  error line) leaves no unfinished checkpoint-N behind: it is removed, the earlier ones are untouched.
- The marker also records the layout (number of processes, FSDP or not). A checkpoint resumes on another number of
  processes (the global batch in tokens, a compared setting, fixes the blocks of every step); a sharded (FSDP)
  checkpoint never resumes unsharded or the other way round: that is refused, naming both layouts.
- Under several processes, rank 0 decides (it holds the lock and reads the folder) and every rank gets the same
  decision or the same error, so a refused run never leaves other ranks waiting in a collective.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

from edugpt import __version__
from edugpt.errors import EduGPTError
from edugpt.io.safefs import DirLock, atomic_write_bytes, ensure_dir, read_json
from edugpt.run import record
from edugpt.run.checkpoints import CompleteCheckpointCallback, recorded_checkpoints
from edugpt.run.decide import Decision, decide, resume_request, starts_over
from edugpt.run.failures import CheckpointLoadError, fall_back, write_failure
from edugpt.run.finish import finish_existing, finish_training, guard_pushes
from edugpt.run.ranks import on_main_then_shared
from edugpt.run.rundir import (
    CARD,
    DATA_MANIFEST,
    KINDS,
    LOCK,
    MARKER,
    RUN_CONFIG,
    TRAINER_STATE,
    entries,
    require_own_run_dir,
    write_run_config,
)
from edugpt.run.settings import LAYOUT, describe_layout, layout_problem, training_layout
from edugpt.run.survey import survey
from edugpt.train.trainer_hooks import raise_checkpoint_load_errors_as

logger = logging.getLogger(__name__)


class TrainingRun:
    """One training run in its output_dir. `kind` is "pretrain", "sft" or "dpo" (edugpt.run.rundir.KINDS)."""

    def __init__(self, kind: str, training_args, run_args):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.kind = kind
        self.args = training_args
        self.run_args = run_args
        self.output_dir = Path(training_args.output_dir)
        self.resume = resume_request(training_args.resume_from_checkpoint)  # read once: decide, checks, fallback
        self.is_main = training_args.process_index == 0
        self.settings: dict = {}
        self.decision = Decision()
        self.lock = DirLock(self.output_dir / LOCK, f"output_dir {str(self.output_dir)!r}")
        self.sigterm = self.guard = None
        self.pushes = None  # edugpt.hub.trainer_pushes.TrainerPushes, with push_to_hub
        # This attempt found output_dir absent (created: True) or holding nothing: a refusal leaves it that way.
        self._fresh = self._created = False
        self.entries_before: dict[str, tuple[int, int]] = {}  # top-level entries at the start: never ours to remove
        # The files an attempt rewrites before it trains, as they were (rank 0): a refusal puts them back.
        self._before: dict[str, bytes | None] = {}
        self._progressed = False  # this attempt trained a step (or finished): nothing is put back then
        self.saving_final = False  # the final model is being (or was) saved: never removed, whatever fails after
        protect_token(training_args)
        check_hub_options(training_args, run_args)

    # ------------------------------------------------------------------------------------------------- before work
    def check_output_dir(self) -> None:
        """Refuse, before anything is loaded or written, an output_dir that cannot hold this run. Rank 0 looks and
        every rank gets its verdict: another process looking at the same time could see rank 0's half-written files
        (its lock, a temporary run_config.json) as someone else's folder."""
        on_main_then_shared(self.args, self._check_output_dir)

    def _check_output_dir(self) -> None:
        if self.args.max_steps == 0 or (self.args.max_steps < 0 and self.args.num_train_epochs <= 0):
            raise EduGPTError("max_steps is 0, so this run would train nothing and save an untrained model; set "
                              "max_steps to the number of optimizer steps to train.")
        require_own_run_dir(self.output_dir, self.kind)
        if self.resume.path is not None and not self.resume.path.is_dir():
            raise EduGPTError(f"--resume_from_checkpoint {self.resume.value!r} is not a folder; pass a checkpoint-N folder, "
                              "or leave it out to resume from the newest valid checkpoint in output_dir.")

    def begin(self, settings: dict, run_config: dict) -> TrainingRun:
        """Lock output_dir and decide what to do (on rank 0, shared with all ranks); write run_config.json."""
        self.settings = settings
        try:
            self.decision = on_main_then_shared(self.args, lambda: self._decide(run_config))
        except BaseException:
            self.abandon()
            raise
        if self.decision.checkpoint is not None and self.needs_training:
            logger.info("resuming from %s", self.decision.checkpoint)
        return self

    def __enter__(self) -> TrainingRun:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None and not issubclass(exc_type, KeyboardInterrupt):
            self.abandon()
        self.lock.release()

    def abandon(self) -> None:
        """The attempt failed: leave output_dir as it found it where nothing is lost by doing so. In a folder that held
        nothing before, when neither a checkpoint nor the final model was saved (nothing to keep), remove what it wrote
        (run_config.json, data_manifest.json, logs ... as its record lists them), the record and the lock, and the
        folder itself if this attempt created it. In an earlier run's folder, when no step was trained, put back the
        files the attempt rewrote before training (run_config.json, the data manifest, the final model's marker, the
        record). Then release the lock."""
        try:
            if not (self.is_main and self.lock.held):
                return
            if not self._fresh:
                if not self._progressed:
                    self._put_back()
            elif not self.saving_final and not recorded_checkpoints(self.output_dir):  # nothing worth keeping
                record.Record.load(self.output_dir).remove_written(keep=(LOCK,))
                if set(os.listdir(self.output_dir)) <= {LOCK, record.RECORD}:
                    for name in (record.RECORD, LOCK):  # the lock goes last, while still held
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(self.output_dir / name)
                    if self._created:
                        with contextlib.suppress(OSError):
                            os.rmdir(self.output_dir)
        finally:
            self.lock.release()

    def _start_step(self) -> int:
        """The step this attempt starts from: its checkpoint's (by trainer_state.json: an explicit checkpoint folder
        may have any name), else 0."""
        checkpoint = self.decision.checkpoint
        state = read_json(checkpoint / TRAINER_STATE, what="Trainer state") if checkpoint else None
        return state["global_step"] if isinstance(state, dict) and isinstance(state.get("global_step"), int) else 0

    def _put_back(self) -> None:
        for name, content in self._before.items():  # the record last: it describes the others
            path = self.output_dir / name
            if content is not None:
                atomic_write_bytes(path, content, role=None, mode=0o600 if name == record.RECORD else 0o644)
            elif name != record.RECORD and record.Record.load(self.output_dir).matches(name):
                os.unlink(path)

    @property
    def source(self) -> Path | None:
        """The folder whose weights this run continues from or keeps: a checkpoint, or the finished final model."""
        decision = self.decision
        return decision.checkpoint or decision.restore_from or (self.output_dir if decision.finished else None)

    @property
    def needs_training(self) -> bool:
        return self.decision.needs_training

    def _decide(self, run_config: dict) -> Decision:
        """Claim output_dir (create, lock, record), start it over with --overwrite_output_dir, survey it and decide
        (edugpt.run.decide); when there is training to do, write run_config.json."""
        self._check_output_dir()
        self._created = not os.path.lexists(self.output_dir)
        ensure_dir(self.output_dir, "output_dir")
        self.lock.acquire()
        self.entries_before = entries(self.output_dir)
        self._fresh = set(self.entries_before) <= {LOCK, record.RECORD}
        holds_run = require_own_run_dir(self.output_dir, self.kind)
        if self._fresh or holds_run:
            record.start(self.output_dir)
        request = self.resume
        base_model = self.settings.get("base_model")
        if starts_over(survey(self.output_dir, holds_run, request, base_model, scan=False), request,
                       self.run_args.overwrite_output_dir):
            remove_previous_run(self.output_dir)
            holds_run = False
        from edugpt.report.card import require_card_writable

        require_card_writable(self.output_dir / CARD)  # a README.md of someone else's is refused now, not at the end
        decision = decide(survey(self.output_dir, holds_run, request, base_model), request, self.settings,
                          resume_with_changes=self.run_args.resume_with_changes)
        for warning in decision.warnings:
            logger.warning("%s", warning)
        if decision.needs_training:
            self._before = {name: _read_own(self.output_dir / name)
                            for name in (RUN_CONFIG, DATA_MANIFEST, MARKER, record.RECORD)}
            # A final model from before (now to be superseded) loses its marker, so a kill from here on leaves it
            # visibly unfinished instead of "already finished".
            if record.Record.load(self.output_dir).matches(MARKER):
                (self.output_dir / MARKER).unlink()
            config = {**run_config, "edugpt": {"kind": self.kind, "version": __version__},
                      "resumed_from": str(decision.checkpoint) if decision.checkpoint else None}
            if decision.changes:
                config["resumed_with_changes"] = {k: {"checkpoint": old, "now": new}
                                                  for k, (old, new) in decision.changes.items()}
            write_run_config(self.output_dir, config)
        return decision

    # -------------------------------------------------------------------------------------------------- training
    def attach(self, trainer, *callbacks, nonfinite_loss: str = "stop", max_skipped_steps: int = 10,
               metrics=None) -> None:
        """Add the lifecycle's callbacks to `trainer` — completion markers with the run's settings, SIGTERM, the
        non-finite loss guard, metrics.jsonl, and (with --resume_with_changes) the new hyperparameters — together
        with the entry point's own `callbacks`, in one `install_callbacks` so their order is right; make a failure
        to load the resumed checkpoint's state a CheckpointLoadError (edugpt.run.failures falls back from it)."""
        from edugpt.run.rundir import METRICS, MetricsLog
        from edugpt.train import callbacks as cb
        from edugpt.train import guards

        self._check_layout(training_layout(trainer))
        self.sigterm = guards.SigtermCallback()
        self.guard = guards.NonFiniteLossCallback(nonfinite_loss, max_skipped_steps)  # after sigterm: checks the weights
        metrics = metrics or MetricsLog(self.output_dir / METRICS, enabled=self.is_main)  # before the save it asks for
        lifecycle = [self.sigterm, self.guard, CompleteCheckpointCallback(self.settings, trainer),
                     cb.MetricsJsonlCallback(metrics)]
        if self.decision.changes:
            lifecycle.append(cb.NewHyperparametersCallback(self.args))
        cb.install_callbacks(trainer, *lifecycle, *callbacks)
        raise_checkpoint_load_errors_as(trainer, CheckpointLoadError)
        self.pushes = guard_pushes(trainer, self)

    def _check_layout(self, layout: dict) -> None:
        """Record this launch's layout with the run's settings (every completion marker gets it) and refuse to resume
        a checkpoint whose layout Trainer cannot continue from: on every rank alike, since each holds the same
        decision and layout. Checked here, once the Trainer shows whether accelerate really shards (it runs an FSDP
        config as plain data parallel on CPUs)."""
        self.settings[LAYOUT] = layout
        saved, checkpoint = self.decision.checkpoint_layout, self.decision.checkpoint
        if checkpoint is None or not saved:
            return
        if problem := layout_problem(saved, layout):  # refused: abandon() puts the folder back as it was
            raise EduGPTError(
                f"cannot resume from {checkpoint}: {problem}. Trainer stores sharded (FSDP) and unsharded runs' model "
                "and optimizer state in different files, so one cannot continue the other; launch with the kind of "
                "accelerate config the checkpoint was written with (the number of processes may change), or train "
                "into a new output_dir."
            )
        if saved.get("processes") != layout["processes"]:
            logger.info("resuming %s, written by %s, with %s", checkpoint.name, describe_layout(saved),
                        describe_layout(layout))

    def train(self, trainer) -> bool:
        """Train (resuming as decided). True when training reached its end; False when SIGTERM stopped it after
        saving a checkpoint. A non-finite loss stops it with an error naming the last good checkpoint."""
        checkpoint = self.decision.checkpoint
        trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        if self.guard.failure:
            good = recorded_checkpoints(self.output_dir)
            raise EduGPTError(
                f"{self.guard.failure}, so training stopped without saving those weights; the last good checkpoint is "
                f"{good[-1] if good else 'none'}: lower learning_rate or raise warmup_steps, then run the same command "
                "again to resume from it."
            )
        if self.sigterm.received:
            logger.info("stopped by SIGTERM after saving checkpoint-%s; run the same command again to resume",
                        self.sigterm.stopped_at)
            return False
        return True

    def execute(self, build_trainer) -> None:
        """The rest of the run, holding output_dir's lock: when there is training left, `build_trainer()` (attached
        here unless it attached itself), train, finish; otherwise finish what a previous attempt left. A checkpoint
        whose state does not load is set aside and training restarts with a fresh Trainer (edugpt.run.failures)."""
        with self:
            if not self.needs_training:
                finish_existing(self)
                return
            trainer = None
            try:
                while trainer is None:
                    trainer = build_trainer()
                    if self.sigterm is None:
                        self.attach(trainer)
                    try:
                        finished = self.train(trainer)
                    except CheckpointLoadError as err:
                        if self.decision.checkpoint is None:
                            raise err.cause from None
                        fall_back(self, err)
                        trainer = self.sigterm = self.guard = None  # a fresh Trainer resumes from the fallback
                self._progressed = True
                if finished:
                    finish_training(self, trainer)
            except Exception as err:
                self._progressed = trainer is not None and trainer.state.global_step > self._start_step()
                if (failure := write_failure(self, trainer, err)) is None:
                    raise
                raise failure from None


def _read_own(path: Path) -> bytes | None:
    """The bytes of a regular file of the run (None if absent or not a regular file; a link is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def protect_token(training_args) -> None:
    """Trainer pickles TrainingArguments, hub_token included, into training_args.bin at every save: move a token
    given on the command line into the environment, where huggingface_hub finds it and nothing saves it."""
    if getattr(training_args, "hub_token", None):
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None


def check_hub_options(training_args, run_args) -> None:
    """hub_step_branches needs push_to_hub and checkpoints to push."""
    if not getattr(run_args, "hub_step_branches", False):
        return
    if not training_args.push_to_hub:
        raise EduGPTError("hub_step_branches pushes each checkpoint to its step-N branch of the Hub repo while "
                          "training; add --push_to_hub --hub_model_id NAME (or publish the checkpoints after "
                          "training with `python publish.py OUTPUT_DIR --hub_model_id NAME --branches`).")
    if training_args.save_strategy == "no":
        raise EduGPTError("hub_step_branches pushes checkpoints as they are saved, but save_strategy is 'no'; set "
                          "save_strategy: steps and save_steps N.")


def remove_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: remove what the previous run wrote — exactly what its record lists, each only if it
    is still the file that was written — and say what was removed and what was kept. Anything else (a user's
    notes, a `checkpoint-best/` of theirs, a file they edited since) stays. run_config.json goes last, when the
    new one is written, so the folder stays recognisably ours."""
    previous = record.Record.load(output_dir)
    before = set(previous.entries)
    kept = previous.remove_written(keep=(LOCK, RUN_CONFIG))
    previous.save()
    removed = sorted({rel.split("/")[0] for rel in before - set(previous.entries)})
    logger.warning("--overwrite_output_dir: removed the previous run's %s in %s%s",
                   ", ".join(removed) if removed else "nothing", output_dir,
                   f"; kept {', '.join(kept)}" if kept else "")

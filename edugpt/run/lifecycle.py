"""One lifecycle for every training entry point (train_hf.py, finetune/sft.py, finetune/dpo.py): claim the
output_dir, resume or refuse, train, stop cleanly, finish.

    run = TrainingRun("sft", training_args, run_args)
    run.check_output_dir()             # before any data or model is loaded: someone's folder is refused
    run.begin(settings, run_config)    # lock, decide: resume / restore / already finished / start; run_config.json
    run.execute(build_trainer)         # if training is left: build, attach callbacks, train, finish (final model,
                                       # marker, card, push); else restore a missing final model, card, push

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
import json
import logging
import os
import shutil
import stat
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from edugpt import __version__
from edugpt.errors import EduGPTError
from edugpt.io.safefs import DirLock, atomic_write_bytes, ensure_dir, no_space_reason, read_json
from edugpt.run import record
from edugpt.run.checkpoints import (
    CompleteCheckpointCallback,
    checkpoint_problem,
    find_resume_checkpoint,
    read_marker,
    recorded_checkpoints,
    set_aside,
    write_marker,
)
from edugpt.run.rundir import (
    CARD,
    DATA_MANIFEST,
    KINDS,
    LOCK,
    MARKER,
    RUN_CONFIG,
    TRAINER_STATE,
    checkpoint_step,
    entries,
    read_run_config,
    record_saved_model,
    require_own_run_dir,
    save_file_role,
    write_run_config,
)

logger = logging.getLogger(__name__)

# Compared between a checkpoint and the run that resumes it: what the optimizer, the schedule and the data order
# depend on. (Model shape is checked when the weights load.)
OPTIMIZER_KEYS = ("learning_rate", "optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon")
SCHEDULE_KEYS = ("lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "max_steps", "num_train_epochs")
# The settings key of the process layout (number of processes, FSDP or not), recorded in every completion marker.
LAYOUT = "layout"


def training_settings(training_args, **data) -> dict:
    """The settings a resumed run must share with its checkpoint, as plain JSON values."""
    args = training_args
    settings = {key: getattr(args, key) for key in OPTIMIZER_KEYS + SCHEDULE_KEYS}
    if args.max_steps > 0:
        settings.pop("num_train_epochs")
    global_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    if data.get("seq_len"):  # fixed-length blocks (pretraining): the global batch in tokens, whatever the layout
        settings["tokens_per_step"] = global_batch * data["seq_len"]
    else:
        settings["global_batch_size"] = global_batch
    settings["seed"] = args.seed if args.data_seed is None else args.data_seed
    settings.update(data)
    return json.loads(json.dumps(settings, default=str))


def settings_differences(saved: dict, new: dict) -> dict:
    """{key: (saved value, new value)} for every key whose value differs (a key absent on one side is not compared:
    checkpoints of older versions record fewer settings). The layout is checked on its own (`layout_problem`)."""
    keys = sorted((saved.keys() & new.keys()) - {LAYOUT})
    return {key: (saved[key], new[key]) for key in keys if saved[key] != new[key]}


def training_layout(trainer) -> dict:
    """How `trainer` spreads the run over processes: their number and the FSDP version (None: every process holds
    the whole model, as under DDP or on one device)."""
    plugin = getattr(trainer.accelerator.state, "fsdp_plugin", None) if trainer.is_fsdp_enabled else None
    return {"processes": trainer.args.world_size, "fsdp": getattr(plugin, "fsdp_version", None) if plugin else None}


def checkpoint_layout(checkpoint: Path) -> dict | None:
    """The layout recorded in `checkpoint`'s marker, else the one its files show (Trainer writes FSDP model state as
    pytorch_model_fsdp*, and one rng_state_N.pth per process when there are several); None if unknown."""
    recorded = ((read_marker(checkpoint) or {}).get("settings") or {}).get(LAYOUT)
    if isinstance(recorded, dict):
        return recorded
    try:
        names = [p.name for p in checkpoint.iterdir()]
    except OSError:
        return None
    fsdp = any(name.startswith("pytorch_model_fsdp") for name in names)
    return {"processes": max(1, sum(name.startswith("rng_state_") for name in names)), "fsdp": "unknown" if fsdp else None}


def _describe(layout: dict) -> str:
    processes = f"{layout['processes']} process{'es' if layout['processes'] != 1 else ''}"
    fsdp = layout.get("fsdp")
    return f"{processes} under FSDP{'' if fsdp == 'unknown' else fsdp}" if fsdp else f"{processes} without FSDP"


def layout_problem(saved: dict | None, now: dict) -> str | None:
    """Why a checkpoint written with layout `saved` cannot be resumed with layout `now`, or None.

    The number of processes may change: with the same global batch in tokens (a compared setting) every optimizer
    step trains on the same blocks (edugpt.train.pretrain.CompactRandomSampler), and unsharded runs save the whole
    optimizer state, FSDP runs with FULL_STATE_DICT a full one that is re-sharded on load. Sharded and unsharded runs
    cannot continue each other: Trainer keeps their model and optimizer state in different files
    (pytorch_model_fsdp.bin + optimizer.bin vs model.safetensors + optimizer.pt) and would crash on the other kind.
    """
    if not saved:
        return None
    was, now_fsdp = saved.get("fsdp"), now.get("fsdp")
    if bool(was) != bool(now_fsdp) or was not in ("unknown", now_fsdp):
        return f"it was written by {_describe(saved)} and this run has {_describe(now)}"
    return None


@dataclass
class Decision:
    """What rank 0 found in output_dir, shared with every rank."""

    checkpoint: Path | None = None  # resume from here (None: start from step 0)
    finished: bool = False  # the final model is whole: nothing to train
    restore_from: Path | None = None  # the final model is missing or damaged: copy it from this final-step checkpoint
    changes: dict = field(default_factory=dict)  # settings that differ from the checkpoint's (resume_with_changes)
    checkpoint_layout: dict | None = None  # processes and FSDP of the checkpoint resumed from (checked in attach)


class TrainingRun:
    """One training run in its output_dir. `kind` is "pretrain", "sft" or "dpo" (edugpt.run.rundir.KINDS)."""

    def __init__(self, kind: str, training_args, run_args):
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
        self.kind = kind
        self.args = training_args
        self.run_args = run_args
        self.output_dir = Path(training_args.output_dir)
        self.is_main = training_args.process_index == 0
        self.settings: dict = {}
        self.decision = Decision()
        self.lock = DirLock(self.output_dir / LOCK, f"output_dir {str(self.output_dir)!r}")
        self.sigterm = self.guard = None
        self.pushes = None  # edugpt.hub.publish.TrainerPushes, with push_to_hub
        # This attempt found output_dir absent (created: True) or holding nothing: a refusal leaves it that way.
        self._fresh = self._created = False
        self._entries_before: dict[str, tuple[int, int]] = {}  # top-level entries at the start: never ours to remove
        # The files an attempt rewrites before it trains, as they were (rank 0): a refusal puts them back.
        self._before: dict[str, bytes | None] = {}
        self._progressed = False  # this attempt trained a step (or finished): nothing is put back then
        self._saving_final = False  # the final model is being (or was) saved: never removed, whatever fails after
        self._protect_token()
        self._check_hub_options()

    # ------------------------------------------------------------------------------------------------- before work
    def _protect_token(self) -> None:
        """Trainer pickles TrainingArguments, hub_token included, into training_args.bin at every save: move a token
        given on the command line into the environment, where huggingface_hub finds it and nothing saves it."""
        if getattr(self.args, "hub_token", None):
            os.environ["HF_TOKEN"] = self.args.hub_token
            self.args.hub_token = None

    def _check_hub_options(self) -> None:
        if not getattr(self.run_args, "hub_step_branches", False):
            return
        if not self.args.push_to_hub:
            raise EduGPTError("hub_step_branches pushes each checkpoint to its step-N branch of the Hub repo while "
                              "training; add --push_to_hub --hub_model_id NAME (or publish the checkpoints after "
                              "training with `python publish.py OUTPUT_DIR --hub_model_id NAME --branches`).")
        if self.args.save_strategy == "no":
            raise EduGPTError("hub_step_branches pushes checkpoints as they are saved, but save_strategy is 'no'; set "
                              "save_strategy: steps and save_steps N.")

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
        resume = self.args.resume_from_checkpoint
        if resume is not None and str(resume).lower() not in ("true", "last") and not Path(resume).is_dir():
            raise EduGPTError(f"--resume_from_checkpoint {resume!r} is not a folder; pass a checkpoint-N folder, or "
                              "leave it out to resume from the newest valid checkpoint in output_dir.")

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
            elif not self._saving_final and not recorded_checkpoints(self.output_dir):  # nothing worth keeping
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
        return needs_training(self.decision)

    def _decide(self, run_config: dict) -> Decision:
        self._check_output_dir()
        self._created = not os.path.lexists(self.output_dir)
        ensure_dir(self.output_dir, "output_dir")
        self.lock.acquire()
        self._entries_before = entries(self.output_dir)
        self._fresh = set(self._entries_before) <= {LOCK, record.RECORD}
        holds_run = require_own_run_dir(self.output_dir, self.kind)
        if self._fresh or holds_run:
            record.start(self.output_dir)
        explicit = self.args.resume_from_checkpoint
        last = explicit is not None and str(explicit).lower() in ("true", "last")
        explicit = None if explicit is None or last else Path(explicit)
        if holds_run and self.run_args.overwrite_output_dir:
            self._refuse_deleting_inputs(explicit, self.settings.get("base_model"))
            self._remove_previous_run()
            holds_run = False
        from edugpt.report.card import require_card_writable

        require_card_writable(self.output_dir / CARD)  # a README.md of someone else's is refused now, not at the end

        decision = Decision()
        if explicit is not None:
            decision.checkpoint = self._explicit_checkpoint(explicit)
        elif holds_run:
            decision.checkpoint = find_resume_checkpoint(self.output_dir, quarantine=True)
            final = self._final_state()
            if final == "whole":
                decision.finished = True
            elif decision.checkpoint is not None and _reached_end(decision.checkpoint):
                logger.warning("the final model in %s is %s; restoring it from %s", self.output_dir,
                               "damaged" if final == "damaged" else "missing", decision.checkpoint)
                decision.restore_from = decision.checkpoint
        source = self.output_dir if decision.finished else decision.checkpoint
        decision.changes = self._changed_settings(source) if source is not None else {}
        if decision.checkpoint is not None:
            decision.checkpoint_layout = checkpoint_layout(decision.checkpoint)
        if decision.changes:  # e.g. a larger max_steps with --resume_with_changes: train on from the newest checkpoint
            decision.finished, decision.restore_from = False, None
        if last and decision.checkpoint is None and not (decision.finished or decision.restore_from):
            # As Trainer does for resume_from_checkpoint=True: asked to resume, nothing to resume from.
            raise EduGPTError(f"--resume_from_checkpoint {self.args.resume_from_checkpoint} asks to resume, but "
                              f"output_dir {str(self.output_dir)!r} holds no valid checkpoint of this run; leave the "
                              "option out to start from step 0, or pass a checkpoint-N folder.")

        if needs_training(decision):
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

    def _final_state(self) -> str:
        """'whole' (a final model with a valid marker), 'damaged' (model files without a valid one), or 'absent'."""
        if (self.output_dir / MARKER).exists() or (self.output_dir / "config.json").exists():
            problem = checkpoint_problem(self.output_dir, require_trainer_state=False)
            if problem is None:
                return "whole"
            logger.warning("the final model in %s is not whole (%s)", self.output_dir, problem)
            return "damaged"
        return "absent"

    def _explicit_checkpoint(self, path: Path) -> Path:
        if problem := checkpoint_problem(path):
            raise EduGPTError(f"--resume_from_checkpoint {str(path)!r} is not a usable checkpoint ({problem}); pass "
                              "a complete checkpoint-N folder.")
        step = checkpoint_step(path) if path.name.startswith("checkpoint-") else None
        later = [p.name for p in recorded_checkpoints(self.output_dir)
                 if p.resolve() != path.resolve() and (step is None or checkpoint_step(p) >= step)]
        if later or self._final_state() != "absent":
            held = ", ".join(later) or "a final model"
            raise EduGPTError(
                f"output_dir {str(self.output_dir)!r} already holds {held}, which training from {path.name} would "
                "overwrite; resume into a new output_dir (they are kept), or pass --overwrite_output_dir to start "
                "that folder over."
            )
        return path

    def _changed_settings(self, source: Path) -> dict:
        marker = read_marker(source) or {}
        saved = marker.get("settings")
        if not isinstance(saved, dict):
            return {}
        changes = settings_differences(saved, self.settings)
        if changes and not self.run_args.resume_with_changes:
            listed = "; ".join(f"{key}: {json.dumps(old)} in the checkpoint, {json.dumps(new)} now"
                               for key, (old, new) in changes.items())
            raise EduGPTError(
                f"cannot resume from {source}: the run's settings changed ({listed}). Use the checkpoint's values, "
                "a new output_dir, or --resume_with_changes to continue with the new ones (recorded in run_config.json)."
            )
        if changes:
            logger.warning("resuming from %s with changed settings: %s", source, ", ".join(changes))
        return changes

    def _refuse_deleting_inputs(self, checkpoint: Path | None, base_model) -> None:
        """--overwrite_output_dir must not delete what this run is about to load: the checkpoint to resume from, the
        base model of a finetune (also DPO's reference, the same folder)."""
        inputs = [("--resume_from_checkpoint", checkpoint)]
        if isinstance(base_model, str) and os.path.isdir(base_model):
            inputs.append(("--model_name_or_path", Path(base_model)))
        root = self.output_dir.resolve()
        for flag, path in inputs:
            if path is not None and (path.resolve() == root or root in path.resolve().parents):
                raise EduGPTError(f"--overwrite_output_dir would delete {path}, the {flag} this run loads; pass a new "
                                  "output_dir (or copy that model out of this one first).")

    def _remove_previous_run(self) -> None:
        """--overwrite_output_dir: remove what the previous run wrote — exactly what its record lists, each only if it
        is still the file that was written — and say what was removed and what was kept. Anything else (a user's
        notes, a `checkpoint-best/` of theirs, a file they edited since) stays. run_config.json goes last, when the
        new one is written, so the folder stays recognisably ours."""
        previous = record.Record.load(self.output_dir)
        before = set(previous.entries)
        kept = previous.remove_written(keep=(LOCK, RUN_CONFIG))
        previous.save()
        removed = sorted({rel.split("/")[0] for rel in before - set(previous.entries)})
        logger.warning("--overwrite_output_dir: removed the previous run's %s in %s%s",
                       ", ".join(removed) if removed else "nothing", self.output_dir,
                       f"; kept {', '.join(kept)}" if kept else "")

    # -------------------------------------------------------------------------------------------------- training
    def attach(self, trainer, *callbacks, nonfinite_loss: str = "stop", max_skipped_steps: int = 10,
               metrics=None) -> None:
        """Add the lifecycle's callbacks to `trainer` — completion markers with the run's settings, SIGTERM, the
        non-finite loss guard, metrics.jsonl, and (with --resume_with_changes) the new hyperparameters — together
        with the entry point's own `callbacks`, in one `install_callbacks` so their order is right."""
        from edugpt.run.rundir import METRICS, MetricsLog
        from edugpt.train import callbacks as cb

        self._check_layout(training_layout(trainer))
        self.sigterm = cb.SigtermCallback()
        self.guard = cb.NonFiniteLossCallback(nonfinite_loss, max_skipped_steps)  # after sigterm: checks the weights
        metrics = metrics or MetricsLog(self.output_dir / METRICS, enabled=self.is_main)  # before the save it asks for
        lifecycle = [self.sigterm, self.guard, CompleteCheckpointCallback(self.settings, trainer),
                     cb.MetricsJsonlCallback(metrics)]
        if self.decision.changes:
            lifecycle.append(cb.NewHyperparametersCallback(self.args))
        cb.install_callbacks(trainer, *lifecycle, *callbacks)
        self.pushes = _guard_pushes(trainer, self)

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
            logger.info("resuming %s, written by %s, with %s", checkpoint.name, _describe(saved), _describe(layout))

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
        here unless it attached itself), train, finish; otherwise finish what a previous attempt left."""
        with self:
            if not self.needs_training:
                self.finish_existing()
                return
            trainer = None
            try:
                while trainer is None:
                    trainer = build_trainer()
                    if self.sigterm is None:
                        self.attach(trainer)
                    try:
                        finished = self.train(trainer)
                    except Exception as err:
                        if not self._fell_back(err):
                            raise
                        trainer = self.sigterm = self.guard = None  # a fresh Trainer resumes from the fallback
                self._progressed = True
                if finished:
                    self.finish(trainer)
            except Exception as err:
                self._progressed = trainer is not None and trainer.state.global_step > self._start_step()
                if (failure := self._write_failure(trainer, err)) is None:
                    raise
                raise failure from None

    def _fell_back(self, err: Exception) -> bool:
        """A checkpoint can be whole by its marker and still fail to load in Trainer (state files from another torch
        version, a marker of an older edugpt that recorded sizes only). Set it aside as a corrupt one and resume
        from the previous valid checkpoint (or from the start), as `find_resume_checkpoint` does for corrupt ones.
        True when training is to be retried with a fresh Trainer."""
        checkpoint = self.decision.checkpoint
        if checkpoint is None or not _raised_in(err, CHECKPOINT_LOADERS):
            return False
        reason = f"{type(err).__name__}: {(str(err).strip().splitlines() or [''])[0][:200]}"
        explicit = self.args.resume_from_checkpoint
        if explicit is not None and str(explicit).lower() not in ("true", "last"):
            raise EduGPTError(f"--resume_from_checkpoint {str(explicit)!r} could not be loaded ({reason}); pass "
                              "another checkpoint-N folder.") from None

        def fall_back():
            moved = set_aside(checkpoint)
            logger.warning("checkpoint %s is not usable (its saved state did not load: %s); falling back to the "
                           "previous checkpoint (moved it to %s)", checkpoint, reason, moved.name)
            previous = find_resume_checkpoint(self.output_dir, quarantine=True)
            config = read_run_config(self.output_dir) or {}
            write_run_config(self.output_dir, {**config, "resumed_from": str(previous) if previous else None})
            return previous

        self.decision.checkpoint = on_main_then_shared(self.args, fall_back)
        if self.decision.checkpoint is not None:
            self.decision.changes = self._changed_settings(self.decision.checkpoint)
        return True

    def _write_failure(self, trainer, err: Exception) -> EduGPTError | None:
        """After training or finishing failed: remove the checkpoint a save left unfinished (no marker: it could
        never be resumed, and it would sit where the next save goes), and turn a full disk into one error line
        (None: re-raise `err` as it is)."""
        full = _disk_full(err, self.output_dir)
        step = trainer.state.global_step if trainer is not None else None
        partial = self.output_dir / f"checkpoint-{step}"
        removed = ""
        if (self.is_main and step is not None and partial.name not in self._entries_before and partial.is_dir()
                and not partial.is_symlink() and not (partial / MARKER).exists()):
            shutil.rmtree(partial, ignore_errors=True)
            removed = f", removed the unfinished {partial.name}"
            logger.warning("removed %s: saving it did not finish (%s)", partial, type(err).__name__)
        if full is None or isinstance(err, EduGPTError):
            return None
        good = recorded_checkpoints(self.output_dir)
        return EduGPTError(
            f"the disk holding {self.output_dir} is full ({full}){removed}; the last complete checkpoint is "
            f"{good[-1].name if good else 'none'}: free space (or choose another output_dir), then run the same "
            "command again to resume."
        )

    # ---------------------------------------------------------------------------------------------------- finish
    def card_kwargs(self) -> dict:
        repo_id = self.args.hub_model_id if self.args.push_to_hub else None
        return {"hub_model_id": repo_id}

    def finish(self, trainer) -> None:
        """Save the final model (every rank: FSDP gathers it), then on rank 0 the card and the completion marker;
        with push_to_hub, push it (edugpt.hub.publish: the run's own files, scanned, with edugpt's card in the same commit)
        once the pushes of the saves before have finished, and report what could not be pushed."""
        from edugpt.hub.publish import pushes_failed_error
        from edugpt.report.card import write_model_card

        state = trainer.state
        if trainer.eval_dataset is not None and not any(
            "eval_loss" in entry and entry["step"] == state.global_step for entry in state.log_history
        ):
            trainer.evaluate()  # the final validation loss, for the card's table and the plot
        self._saving_final = True
        before = entries(self.output_dir)
        # _internal_call: with push_to_hub, Trainer.save_model would also push ("Model save"); the push below is the one.
        trainer.save_model(str(self.output_dir), _internal_call=True)
        trainer.accelerator.wait_for_everyone()
        failures = {}
        if self.is_main:
            model_files = record_saved_model(self.output_dir, before)
            if trainer.state.log_history:  # loss curves for the card, also with save_strategy "no"
                trainer.state.save_to_json(str(self.output_dir / TRAINER_STATE))
                record.note_written(self.output_dir / TRAINER_STATE, root=self.output_dir)
            write_model_card(self.output_dir, **self.card_kwargs())
            write_marker(self.output_dir, {**self.settings, "step": trainer.state.global_step}, files=model_files)
            if self.pushes is not None:
                failures = self.pushes.finish("End of training")
        if failures:
            raise pushes_failed_error(self.output_dir, self.args.hub_model_id, failures,
                                      self.pushes.main_branch if self.pushes else "main")
        logger.info("final model and model card saved to %s%s", self.output_dir,
                    f" and pushed to {self.args.hub_model_id}" if self.args.push_to_hub else "")

    def finish_existing(self) -> None:
        """A re-run of a run with no training left: restore a missing or damaged final model from the checkpoint at
        its last step, write a missing card, and push the run when asked (finishing a push that failed, step-N
        branches included with hub_step_branches)."""
        if not self.is_main:
            return
        from edugpt.hub.publish import publish_run
        from edugpt.report.card import write_model_card

        source = self.decision.restore_from
        if source is not None:
            self._restore_final_model(source)
        elif not (self.output_dir / CARD).exists():
            write_model_card(self.output_dir, **self.card_kwargs())
        if self.args.push_to_hub:
            publish_run(self.output_dir, self.args.hub_model_id, branches=getattr(self.run_args, "hub_step_branches",
                                                                                  False),
                        private=self.args.hub_private_repo)
        logger.info("%s already reached its last step; final model in %s", self.kind, self.output_dir)

    def _restore_final_model(self, checkpoint: Path) -> None:
        from edugpt.report.card import write_model_card

        root_marker = self.output_dir / MARKER
        if record.Record.load(self.output_dir).matches(MARKER):
            root_marker.unlink()
        before = entries(self.output_dir)
        marker = read_marker(checkpoint) or {}
        for name in sorted(marker.get("files", {})):  # the checkpoint's files as its marker lists them
            if "/" not in name and save_file_role(name) == "model":
                _copy_nofollow(checkpoint / name, self.output_dir / name)
        model_files = record_saved_model(self.output_dir, before)
        write_model_card(self.output_dir, **self.card_kwargs())
        write_marker(self.output_dir, {**marker.get("settings", self.settings), "step": checkpoint_step(checkpoint)},
                     files=model_files)
        logger.info("restored the final model in %s from %s", self.output_dir, checkpoint)


# Trainer's functions that read the checkpoint it resumes from: an exception raised inside one of them means the
# checkpoint's saved state did not load, not that training failed.
CHECKPOINT_LOADERS = frozenset({
    "_load_from_checkpoint", "load_from_json", "_load_callback_state", "_load_optimizer_and_scheduler", "_load_scaler",
    "_load_rng_state", "deepspeed_load_checkpoint", "load_fsdp_model", "load_fsdp_optimizer",
})
# Less free space than this after a failed write means the disk filled up: torch.save reports a full disk as
# "RuntimeError: [enforce fail at inline_container.cc] unexpected pos", without the errno.
LOW_SPACE_BYTES = 16 * 2**20


def _raised_in(err: BaseException, function_names: frozenset) -> bool:
    """Was `err` raised (directly or by what it called) inside a function named in `function_names`?"""
    return any(frame.f_code.co_name in function_names for frame, _ in traceback.walk_tb(err.__traceback__))


def _disk_full(err: BaseException, folder: Path) -> str | None:
    """A short reason when `err` comes from a full disk or quota under `folder`, else None."""
    if reason := no_space_reason(err):
        return reason
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    return f"{free / 2**20:.1f} MiB free" if free < LOW_SPACE_BYTES else None


def needs_training(decision: Decision) -> bool:
    return not (decision.finished or decision.restore_from is not None)


def _reached_end(checkpoint: Path) -> bool:
    """Was `checkpoint` saved at its run's last step (per its own trainer_state.json)?"""
    try:
        state = json.loads((checkpoint / "trainer_state.json").read_text())
        return state["max_steps"] > 0 and state["global_step"] >= state["max_steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _read_own(path: Path) -> bytes | None:
    """The bytes of a regular file of the run (None if absent or not a regular file; a link is not followed)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read() if stat.S_ISREG(os.fstat(f.fileno()).st_mode) else None


def _copy_nofollow(source: Path, target: Path) -> None:
    """Copy the regular file `source` over `target` (atomically; neither is followed if it is a link)."""
    fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as src:
        tmp = target.with_name(f".{target.name}.restore")
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644), "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
            dst.flush()
            os.fsync(dst.fileno())
    os.replace(tmp, target)


def _guard_pushes(trainer, run: TrainingRun):
    """Route every push of this Trainer through edugpt.hub.publish (TrainerPushes: the run's own files only, no symlink
    followed, scanned for tokens, edugpt's card in the same commit; step-N branches with hub_step_branches), and keep
    Trainer's card out of output_dir: TRL calls `create_model_card` at every checkpoint save, which would write
    Trainer's generic card over edugpt's. Replaced on this instance rather than by subclassing, because the same
    trainer classes are TRL's SFTTrainer and DPOTrainer too. Returns the TrainerPushes, None without push_to_hub."""
    from edugpt.report.card import write_model_card
    from edugpt.run.rundir import is_saved_model

    def create_model_card(*args, **kwargs):
        if trainer.is_world_process_zero() and is_saved_model(run.output_dir):
            write_model_card(run.output_dir, **run.card_kwargs())

    trainer.create_model_card = create_model_card
    if not run.args.push_to_hub:
        return None
    from edugpt.hub.publish import TrainerPushes

    return TrainerPushes(trainer, run.output_dir, run.args,
                         step_branches=getattr(run.run_args, "hub_step_branches", False))


def on_main_then_shared(training_args, decide):
    """Run `decide()` on rank 0 only and return its result on every rank; an EduGPTError (or a crash) there is
    raised on every rank, so no rank is left waiting in a collective for one that gave up."""
    state = training_args.distributed_state
    if state is None or state.num_processes == 1:
        return decide()
    from accelerate.utils import broadcast_object_list

    outcome = [None]
    if state.is_main_process:
        try:
            outcome = [("ok", decide())]
        except EduGPTError as err:
            outcome = [("error", str(err))]
        except BaseException as err:
            broadcast_object_list([("crash", f"{type(err).__name__} on rank 0")], from_process=0)
            raise
    broadcast_object_list(outcome, from_process=0)
    kind, value = outcome[0]
    if kind == "error":
        raise EduGPTError(value)
    if kind == "crash":
        raise RuntimeError(f"rank 0 failed while preparing output_dir ({value})")
    return value

"""Where eval_harness.py's results go: lm-eval's own layout written by its EvaluationTracker (checked, then moved into
place, never over an existing file; a failed write leaves nothing), lm-eval's W&B / Trackio loggers, and lm-eval's
printed tables.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.eval.harness import first_line

logger = logging.getLogger(__name__)


def result_loggers(config) -> list:
    """lm-eval's own WandbLogger / TrackioLogger for --wandb_args / --trackio_args, started before the evaluation as
    lm_eval's CLI starts them."""
    from lm_eval.loggers import TrackioLogger, WandbLogger

    loggers = []
    try:
        if config.wandb_args:
            loggers.append(WandbLogger(config.wandb_args, config.wandb_config_args))
        if config.trackio_args:
            loggers.append(TrackioLogger(config.trackio_args))
    except ImportError as err:
        raise EduGPTError(f"{first_line(err)}") from None
    return loggers


def log_to_loggers(loggers: list, results: dict, samples: dict | None) -> None:
    """The results (and with --log_samples every item) to lm-eval's loggers, then each run finished, as lm_eval
    does; a logger's failure is logged, not raised (lm_eval's behaviour), the results are still written."""
    for result_logger in loggers:
        try:
            result_logger.post_init(results)
            result_logger.log_eval_result()
            if samples is not None:
                result_logger.log_eval_samples(samples)
        except Exception as err:  # noqa: BLE001 - lm_eval's CLI logs and goes on
            logger.warning("logging the results to %s failed: %s", type(result_logger).__name__, err)
        finally:
            run = getattr(result_logger, "run", None)
            if hasattr(result_logger, "finish"):
                result_logger.finish()
            elif run is not None:
                run.finish()


def check_output_path(output_path: str | None, model: str) -> None:
    """Refuse, before evaluating, an --output_dir where lm-eval cannot write its layout: a file, a path under one, a
    folder that cannot be written. A folder that already holds results is fine (as for `lm_eval --output_path`: every
    evaluation adds timestamped files), and so is a name ending in .json, beside which lm-eval writes
    NAME_<timestamp>.json."""
    from lm_eval.utils import sanitize_model_name

    if not output_path:
        return
    path = Path(output_path).expanduser()
    target = path.parent if path.suffix == ".json" else path / sanitize_model_name(model)
    for folder in (target, *target.parents):
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise EduGPTError(f"--output_dir {output_path}: {folder} is not writable; pass a folder you can write "
                                  "to.")
            return
        if folder.exists() or folder.is_symlink():  # a file, or a link to nothing: mkdir fails on either
            if folder == path:
                where = "is a file"
            elif folder in path.parents:
                where = f"lies under {folder}, which is a file"
            else:
                where = f"holds a file {folder.name} where lm-eval writes this model's results folder"
            raise EduGPTError(f"--output_dir {output_path} {where}; lm-eval writes a folder of results there "
                              "(OUTPUT/<model name>/results_<time>.json): pass a folder, new or one that holds "
                              "earlier results.")


def save_results(results: dict, evaluation_tracker) -> Path | None:
    """Write lm-eval's standard layout with its own `EvaluationTracker`, as `lm_eval --output_path` does:
    OUTPUT/<model name>/results_<timestamp>.json, plus samples_<task>_<timestamp>.jsonl with --log_samples. Each
    evaluation gets new files, so earlier results are never overwritten. Returns the results file (None without an
    output path).

    lm-eval catches its own write errors (a full disk, a folder it cannot write) and only logs them, which would leave
    a cut-off results file in place and a run that "succeeded". So the tracker writes into a fresh folder beside the
    results; its files are checked (the results parse as JSON, every task has its samples file) and then moved into
    place, none of them over an existing file. When anything fails, that folder and the folders this call created go
    again, and the error says why."""
    samples = results.pop("samples", None)
    if not evaluation_tracker.output_path:
        evaluation_tracker.save_results_aggregated(results=results, samples=samples)
        return None
    requested = Path(evaluation_tracker.output_path).expanduser()
    destination = requested.parent if requested.suffix == ".json" else requested  # where lm-eval's layout starts
    created: list[Path] = []  # the folders this call made, outermost first
    moved: list[Path] = []
    staging = None
    try:
        created += _make_dirs(destination)
        staging = Path(tempfile.mkdtemp(prefix=".lm-eval-unsaved-", dir=destination))
        evaluation_tracker.output_path = str(staging / requested.name if requested.suffix == ".json" else staging)
        with _lm_eval_save_errors() as save_errors:
            evaluation_tracker.save_results_aggregated(results=results, samples=samples)
            for task_name in results["configs"] if samples else ():
                evaluation_tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        date_id = getattr(evaluation_tracker, "date_id", None)  # set by lm-eval just before it writes
        model_folder = staging if requested.suffix == ".json" else \
            staging / evaluation_tracker.general_config_tracker.model_name_sanitized
        written = model_folder / (f"{requested.stem}_{date_id}.json" if requested.suffix == ".json"
                                  else f"results_{date_id}.json")
        tasks = list(results["configs"]) if samples else []
        missing = [task for task in tasks if not (model_folder / f"samples_{task}_{date_id}.jsonl").is_file()]
        if save_errors or date_id is None or not _whole_json(written) or missing:
            reason = (save_errors[-1] if save_errors else
                      f"no samples file for {', '.join(missing)}" if missing else f"no whole {written.name}")
            raise EduGPTError(_save_failure(destination, reason))
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = destination / file.relative_to(staging)
            created += _make_dirs(target.parent)
            _move_to_new_name(file, target)
            moved.append(target)
        saved = destination / written.relative_to(staging)
    except BaseException as err:
        for target in moved:
            target.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # innermost first; rmdir leaves a folder that holds anything else
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):  # making the folders or moving the files (lm-eval catches its own errors)
            raise EduGPTError(_save_failure(destination, f"{type(err).__name__}: {err}")) from None
        raise
    finally:
        evaluation_tracker.output_path = str(requested)
    shutil.rmtree(staging, ignore_errors=True)
    return saved


def _save_failure(destination: Path, reason: str) -> str:
    from edugpt.io.atomic import NO_SPACE_TEXT

    if any(text.lower() in reason.lower() for text in NO_SPACE_TEXT):
        return (f"no space left on the device while lm-eval wrote its results into {destination} ({reason}); nothing "
                "was saved: free space there (or pass another --output_dir) and run again.")
    return (f"lm-eval could not write its results into {destination} ({reason}); nothing was saved: pass an "
            "--output_dir you can write to and run again.")


def _move_to_new_name(source: Path, target: Path) -> None:
    """Move `source` to `target`, failing (FileExistsError) rather than replacing a file already there: a hard link
    refuses an existing name, which a rename would silently replace. On a filesystem without hard links, a rename
    after checking the name is free (the names hold a timestamp to the microsecond)."""
    try:
        os.link(source, target)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists already", str(target)) from None
        os.rename(source, target)
        return
    source.unlink()


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders it created, outermost first."""
    missing = [f for f in (folder, *folder.parents) if not f.is_dir()][::-1]
    for f in missing:
        f.mkdir()
    return missing


def _whole_json(path: Path) -> bool:
    import json

    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _lm_eval_save_errors():
    """Collect the errors lm-eval's EvaluationTracker catches while saving: it logs "Could not save ..." as a warning
    and then the exception's repr at INFO. Yields the list of those reprs."""
    log = logging.getLogger("lm_eval.loggers.evaluation_tracker")
    errors: list[str] = []
    failed = False

    class Collect(logging.Handler):
        def emit(self, record):
            nonlocal failed
            message = record.getMessage()
            if record.levelno >= logging.WARNING and message.startswith("Could not save"):
                failed = True
            elif failed and record.levelno == logging.INFO:
                errors.append(message)
                failed = False

    handler, level = Collect(logging.INFO), log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield errors
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def results_tables(results: dict) -> str:
    """lm-eval's own printed tables (`lm_eval.utils.make_table`): tasks, and groups when there are any."""
    from lm_eval.utils import make_table

    tables = [make_table(results)]
    if "groups" in results:
        tables.append(make_table(results, "groups"))
    return "\n".join(tables)


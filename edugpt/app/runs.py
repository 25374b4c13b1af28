"""The run directories the page (edugpt.app.page) shows, and what its Run tab draws from each: read-only.

A run is a folder with the run_config.json of train_hf.py, finetune/sft.py or finetune/dpo.py (edugpt.run.rundir); the
model it answers with is its final model, or while it trains its newest whole checkpoint. The Run tab's data is
metrics.jsonl re-read (curves by step and tokens, samples by step, a one-line status) and the headline rows of the
model card (edugpt.report.rows); metrics_signature tells the page's timer whether anything new was logged. Nothing here
opens a pickle or writes into a run.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.model.saved import is_saved_model
from edugpt.run import rundir


@dataclass(frozen=True)
class Run:
    path: Path
    name: str  # its label on the page
    kind: str  # "pretrain", "sft" or "dpo"


def open_run(path: str | os.PathLike, name: str | None = None) -> Run:
    """A run directory of this project (its run_config.json says which kind), or one EduGPTError. Reads only."""
    folder = Path(path)
    if not folder.is_dir():
        what = "does not exist" if not os.path.lexists(folder) else "is not a folder"
        raise EduGPTError(f"{str(path)!r} {what}; pass a run directory (the output_dir of train_hf.py, "
                          "finetune/sft.py or finetune/dpo.py).")
    kind = rundir.run_kind(rundir.read_run_config(folder))
    if kind is None:
        raise EduGPTError(f"{str(path)!r} is not an edugpt run (it has no {rundir.RUN_CONFIG} written by train_hf.py, "
                          "finetune/sft.py or finetune/dpo.py); pass a run directory.")
    return Run(folder, name or folder.resolve().name, kind)


def open_runs(paths: list[str]) -> list[Run]:
    """Every run, labelled by its folder name (with the parent's when two share one); refused before anything starts."""
    names = [Path(p).resolve().name for p in paths]
    labels = [f"{Path(p).resolve().parent.name}/{n}" if names.count(n) > 1 else n for p, n in zip(paths, names)]
    if len(set(labels)) < len(labels):
        raise EduGPTError("the same run directory is given twice; pass each run once.")
    return [open_run(p, label) for p, label in zip(paths, labels)]


def model_dir(run_dir: str | os.PathLike) -> Path | None:
    """The model a run answers with: its final model, else (while it trains) its newest whole checkpoint; None before
    the first save."""
    run_dir = Path(run_dir)
    if is_saved_model(run_dir):
        return run_dir
    from edugpt.run.checkpoints import checkpoint_problem

    for checkpoint in reversed(rundir.list_checkpoints(run_dir)):
        if not checkpoint.is_symlink() and checkpoint_problem(checkpoint) is None:
            return checkpoint
    return None



# ------------------------------------------------------------------------------------------- what the Run tab shows
def is_finite_number(value) -> bool:
    """A real, finite int or float (not a bool, NaN or inf): what a curve or a setting can hold."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def loss_curves(records: list[dict]) -> list[dict]:
    """One row per logged loss: {"step", "tokens", "loss", "split"} with split "train" or "validation" (a long table,
    one line per split)."""
    rows = []
    for record in records:
        for key, split in (("loss", "train"), ("eval_loss", "validation")):
            if is_finite_number(record.get(key)):
                rows.append({"step": record["step"], "tokens": record.get("tokens"), "loss": record[key],
                             "split": split})
    return rows


def hellaswag_curves(records: list[dict]) -> list[dict]:
    """One row per in-loop HellaSwag score: {"step", "tokens", "accuracy", "metric"} (acc and acc_norm)."""
    return [{"step": r["step"], "tokens": r.get("tokens"), "accuracy": r[key], "metric": key.split("/")[1]}
            for r in records for key in ("hellaswag/acc", "hellaswag/acc_norm") if is_finite_number(r.get(key))]


def samples_by_step(records: list[dict]) -> list[list]:
    """[step, prompt, text] of every logged sample, by step (records are not strictly ordered)."""
    rows = [[r["step"], r.get("sample/prompt", ""), r["sample/text"]] for r in records
            if isinstance(r.get("sample/text"), str) and isinstance(r.get("step"), int)]
    return sorted(rows, key=lambda row: row[0])


def run_status(records: list[dict]) -> str:
    """One line: the last step, the tokens seen and the latest train and validation losses."""
    from edugpt.report.numbers import final_tokens, human

    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    if not steps:
        return "No records in metrics.jsonl yet."
    parts = [f"step {max(steps):,}"]
    if tokens := final_tokens(records):
        parts.append(f"{human(tokens['tokens'])} tokens")
    for key, label in (("loss", "train loss"), ("eval_loss", "validation loss")):
        last = next((r for r in reversed(records) if is_finite_number(r.get(key))), None)
        if last is not None:
            parts.append(f"{label} {last[key]:.4f} (step {last['step']:,})")
    return " · ".join(parts)


def card_numbers(run_dir: str | os.PathLike) -> list[list[str]]:
    """The headline rows of the run's model card (edugpt.report.rows: losses, tokens, speed, HellaSwag, finetune
    metrics); empty before the run has saved its final model."""
    from edugpt.report.facts import collect_run_facts
    from edugpt.report.rows import lm_eval_scores, results_rows

    if not is_saved_model(run_dir):
        return []
    facts = collect_run_facts(run_dir)
    return results_rows(facts, lm_eval_scores(facts.lm_eval))


def metrics_signature(run_dir: str | os.PathLike) -> tuple | None:
    """What changes when a run logs: metrics.jsonl's size and mtime (None while it does not exist)."""
    try:
        st = os.stat(Path(run_dir) / rundir.METRICS)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


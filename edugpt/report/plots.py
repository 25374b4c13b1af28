"""The README's pictures, drawn from metrics.jsonl records: loss curves and HellaSwag accuracy against steps.

`python -m edugpt.report.plots RUN_DIR` redraws both from `RUN_DIR/metrics.jsonl` (training does this itself at every
evaluation and at the end).
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

from edugpt.io.safefs import atomic_write_bytes
from edugpt.run.rundir import HELLASWAG_PLOT, LOSS_PLOT, read_metrics, read_run_config

HELLASWAG = "HellaSwag"  # the name of the real task (Rowan/hellaswag validation, via lm-eval)
# GPT-2 124M (openai-community/gpt2) on lm-eval's `hellaswag`, 0-shot: acc_norm 31.1% (acc 28.9%), the number
# build-nanoGPT trains to beat. Drawn only for the real task: a local HellaSwag-format file is a different test.
GPT2_124M_HELLASWAG_ACC_NORM = 0.311
CHANCE = 0.25  # four endings per item


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on training machines
    import matplotlib.pyplot as plt

    return plt


def _series(records: list[dict], key: str) -> tuple[list, list, list]:
    """(steps, tokens, values) of `key`, one point per step (the last record wins: a resumed run re-logs steps)."""
    by_step = {}
    for record in records:
        if key in record and record.get(key) is not None:
            by_step[record["step"]] = (record.get("tokens", 0), record[key])
    steps = sorted(by_step)
    return steps, [by_step[s][0] for s in steps], [by_step[s][1] for s in steps]


def _tokens_label(tokens: float) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.0f}"


def _save(fig, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, buffer.getvalue())  # a reader (README, a browser) never sees half a PNG


def hellaswag_name(hellaswag_file: str | os.PathLike | None) -> str:
    """What in-loop HellaSwag scored, for titles: the real task, or the local HellaSwag-format file's name."""
    return f"HellaSwag-format file {Path(hellaswag_file).name}" if hellaswag_file else HELLASWAG


def _tokens_axis(ax, steps: list, tokens: list) -> None:
    """A secondary x-axis on top giving tokens seen (a run's tokens per step are constant: batch x accumulation x seq).

    Its label goes with the bottom one: a label on top sits right under the title and collides with it."""
    ax.set_xlabel("optimizer step")
    if not steps or steps[-1] <= 0 or tokens[-1] <= 0:
        return
    per_step = tokens[-1] / steps[-1]
    top = ax.secondary_xaxis("top", functions=(lambda s: s * per_step, lambda t: t / per_step))
    top.xaxis.set_major_formatter(lambda value, _: _tokens_label(value) if value >= 0 else "")
    ax.set_xlabel("optimizer step (top axis: tokens seen)")


def plot_losses(records: list[dict], path: str | Path, title: str | None = None) -> Path | None:
    """Train and validation loss against optimizer step (tokens on the top axis) in one chart; None without data."""
    train_steps, train_tokens, train_loss = _series(records, "loss")
    eval_steps, eval_tokens, eval_loss = _series(records, "eval_loss")
    if not train_steps and not eval_steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    if train_steps:
        ax.plot(train_steps, train_loss, label="train loss", color="tab:blue", linewidth=1, alpha=0.85)
    if eval_steps:
        ax.plot(eval_steps, eval_loss, label="validation loss", color="tab:orange", marker="o", markersize=3, linewidth=1.5)
    ax.set_ylabel("cross-entropy loss (nats/token)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    all_steps = sorted(set(train_steps) | set(eval_steps))
    tokens_by_step = dict(zip(train_steps + eval_steps, train_tokens + eval_tokens))
    _tokens_axis(ax, all_steps, [tokens_by_step[s] for s in all_steps])
    last = [f"train {train_loss[-1]:.3f}"] if train_steps else []
    last += [f"val {eval_loss[-1]:.3f}"] if eval_steps else []
    total_tokens = tokens_by_step[all_steps[-1]]
    ax.set_title(title or f"Loss — step {all_steps[-1]}, {_tokens_label(total_tokens)} tokens ({', '.join(last)})")
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def plot_hellaswag(records: list[dict], path: str | Path, title: str | None = None,
                   name: str = HELLASWAG) -> Path | None:
    """HellaSwag acc and acc_norm against optimizer step, with the 25% chance line and, for the real task, GPT-2
    124M's acc_norm; None without records.

    `name` says what was scored (`hellaswag_name`: HellaSwag, or a local HellaSwag-format file) in the title and the
    y label."""
    steps, tokens, acc = _series(records, "hellaswag/acc")
    norm_steps, _, acc_norm = _series(records, "hellaswag/acc_norm")
    if not steps:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, [100 * a for a in acc], label="acc", marker="o", markersize=3)
    if norm_steps:
        ax.plot(norm_steps, [100 * a for a in acc_norm], label="acc_norm", marker="s", markersize=3)
    ax.axhline(100 * CHANCE, color="gray", linestyle="--", linewidth=1, label=f"chance ({100 * CHANCE:.0f}%)")
    if name == HELLASWAG:
        ax.axhline(100 * GPT2_124M_HELLASWAG_ACC_NORM, color="tab:red", linestyle="--", linewidth=1,
                   label=f"GPT-2 124M acc_norm ({100 * GPT2_124M_HELLASWAG_ACC_NORM:.1f}%, lm-eval)")
    ax.set_ylabel(f"{'HellaSwag' if name == HELLASWAG else 'HellaSwag-format'} accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    _tokens_axis(ax, steps, tokens)
    ax.set_title(title or f"{name} — step {steps[-1]}: acc {100 * acc[-1]:.1f}%"
                 + (f", acc_norm {100 * acc_norm[-1]:.1f}%" if norm_steps else ""))
    path = Path(path)
    _save(fig, path)
    plt.close(fig)
    return path


def draw_run_plots(run_dir: str | os.PathLike, records: list[dict] | None = None,
                   hellaswag_file: str | None = None) -> list[Path]:
    """Redraw a run's pictures from its metrics.jsonl (or `records`); returns the files drawn."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    drawn = [plot_losses(records, run_dir / LOSS_PLOT)]
    if any("hellaswag/acc" in record for record in records):
        drawn.append(plot_hellaswag(records, run_dir / HELLASWAG_PLOT, name=hellaswag_name(hellaswag_file)))
    return [path for path in drawn if path]


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m edugpt.report.plots RUN_DIR")
    run_dir = Path(args[0])
    script = (read_run_config(run_dir) or {}).get("script")
    script = script if isinstance(script, dict) else {}  # train_hf.py's script arguments (a finetune's is a name)
    for drawn in draw_run_plots(run_dir, hellaswag_file=script.get("hellaswag_file")):
        print(drawn)


if __name__ == "__main__":
    from edugpt.config.cli import run

    run(main)  # a broken run_config.json is one error line, as in every entry point

"""edugpt.report.plots: the loss and HellaSwag PNGs from a small metrics.jsonl, with and without eval/HellaSwag records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edugpt.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TOKENS_PER_STEP = 8 * 128


def records(steps: int = 20, eval_every: int = 10, hellaswag: bool = True) -> list[dict]:
    rows = []
    for step in range(1, steps + 1):
        rows.append({"step": step, "tokens": step * TOKENS_PER_STEP, "loss": 10.0 - 0.2 * step})
        if eval_every and step % eval_every == 0:
            rows.append({"step": step, "tokens": step * TOKENS_PER_STEP, "eval_loss": 10.2 - 0.2 * step})
            if hellaswag:
                rows.append({"step": step, "tokens": step * TOKENS_PER_STEP,
                             "hellaswag/acc": 0.24 + step / 1000, "hellaswag/acc_norm": 0.25 + step / 1000})
    return rows


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC and path.stat().st_size > 10_000, path
    assert not list(path.parent.glob(".*.tmp*"))  # written atomically, no temp file left behind


@pytest.fixture
def drawn(monkeypatch):
    """What each saved figure showed: legend labels, axis labels and title, read before the figure is closed."""
    seen = {}
    save = plots._save

    def recording_save(fig, path):
        ax = fig.axes[0]
        seen[Path(path).name] = {
            "legend": [t.get_text() for t in ax.get_legend().get_texts()],
            "title": ax.get_title(), "xlabel": ax.get_xlabel(),
            "top_labels": [child.get_xlabel() for child in ax.child_axes],
        }
        save(fig, path)

    monkeypatch.setattr(plots, "_save", recording_save)
    return seen


def test_command_line_draws_both_plots_from_metrics_jsonl(tmp_path, drawn, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()) + '{"step": 21, "lo')
    plots.main([str(run_dir)])  # a torn last line (a run killed mid-write) is skipped

    assert_png(run_dir / "images" / "train-loss.png")
    assert_png(run_dir / "images" / "hellaswag.png")
    assert capsys.readouterr().out.split() == [str(run_dir / "images" / n) for n in ("train-loss.png", "hellaswag.png")]
    loss = drawn["train-loss.png"]
    assert loss["legend"] == ["train loss", "validation loss"]
    assert loss["title"] == "Loss — step 20, 20.5K tokens (train 6.000, val 6.200)"
    # tokens go on the top axis without a label of their own, which would sit under the title and crowd it
    assert loss["top_labels"] == [""] and "tokens seen" in loss["xlabel"]
    hellaswag = drawn["hellaswag.png"]
    assert hellaswag["legend"] == ["acc", "acc_norm", "chance (25%)", "GPT-2 124M acc_norm (31.1%, lm-eval)"]
    assert hellaswag["title"] == "HellaSwag — step 20: acc 26.0%, acc_norm 27.0%"


def test_local_hellaswag_format_file_gets_no_gpt2_reference(tmp_path, drawn):
    """The smoke file is not HellaSwag: chance is still drawn, GPT-2's HellaSwag score is not. The command line
    reads which file was scored from run_config.json."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records()))
    (run_dir / "run_config.json").write_text(json.dumps({"script": {"hellaswag_file": "x/smoke.jsonl"}}))
    plots.main([str(run_dir)])

    hellaswag = drawn["hellaswag.png"]
    assert hellaswag["legend"] == ["acc", "acc_norm", "chance (25%)"]
    assert hellaswag["title"].startswith("HellaSwag-format file smoke.jsonl — step 20")


def test_missing_eval_and_hellaswag_records(tmp_path, drawn):
    train_only = records(eval_every=0)
    assert plots.plot_losses(train_only, tmp_path / "loss.png") == tmp_path / "loss.png"
    assert_png(tmp_path / "loss.png")
    assert drawn["loss.png"]["legend"] == ["train loss"] and "val" not in drawn["loss.png"]["title"]
    assert plots.plot_hellaswag(train_only, tmp_path / "hellaswag.png") is None
    assert plots.plot_hellaswag(records(hellaswag=False), tmp_path / "hellaswag.png") is None
    assert not (tmp_path / "hellaswag.png").exists()

    # eval only (e.g. a run resumed after its train records), and a single HellaSwag point without acc_norm
    eval_only = [r for r in records() if "eval_loss" in r]
    assert plots.plot_losses(eval_only, tmp_path / "eval.png") == tmp_path / "eval.png"
    one = [{"step": 5, "tokens": 5 * TOKENS_PER_STEP, "hellaswag/acc": 0.3}]
    assert plots.plot_hellaswag(one, tmp_path / "one.png") == tmp_path / "one.png"
    assert_png(tmp_path / "one.png")

    assert plots.plot_losses([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()

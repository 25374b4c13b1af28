"""Trainer's report_to backends as the optional extras install them (pip install -e ".[trackio]" / ".[wandb]")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from factories import ROOT, run_script, tiny_args, train_records

from edugpt.run.rundir import read_metrics


@pytest.mark.slow
def test_report_to_trackio_works_offline_with_its_local_dashboard(data_dir, tmp_path):
    """`report_to: trackio` (pip install -e ".[trackio]") on an offline machine: Trainer's TrackioCallback logs every
    record into trackio's local database, and `trackio show`'s dashboard serves it from this machine."""
    pytest.importorskip("trackio")

    env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    out = tmp_path / "run"
    run_script("train_hf.py", *tiny_args(data_dir, out, "--max_steps", "2", "--sample_steps", "2", "--eval_strategy",
                                         "no", "--report_to", "trackio", "--project", "edugpt-test", "--run_name",
                                         "tiny"), env=env, check=True, timeout=300)
    with socket.socket() as probe:  # a free local port for the dashboard
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    script = f"""
import json, urllib.request, trackio
from trackio.sqlite_storage import SQLiteStorage
logs = SQLiteStorage.get_logs("edugpt-test", "tiny")
server = trackio.show(project="edugpt-test", open_browser=False, block_thread=False, server_port={port})
page = urllib.request.urlopen("http://127.0.0.1:{port}/", timeout=30)
print(json.dumps({{"status": page.status, "losses": [r["train/loss"] for r in logs if "train/loss" in r],
                  "samples": [r["train/samples"]["_value"] for r in logs if "train/samples" in r]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["losses"] == pytest.approx([r["loss"] for _, r in sorted(train_records(out).items())])
    # The samples as a trackio Table of every sample so far (step, prompt, text), as the run's metrics.jsonl has them.
    samples = [(r["step"], r["sample/prompt"], r["sample/text"]) for r in read_metrics(out / "metrics.jsonl")
               if "sample/text" in r]
    assert [[(row["step"], row["prompt"], row["text"]) for row in table] for table in result["samples"]] == [
        samples[:1], samples]


@pytest.mark.slow
def test_tensorboard_files_hellaswag_under_eval_and_shows_the_samples_as_text(data_dir, tmp_path):
    """`report_to: tensorboard` read back from its event file: the in-loop HellaSwag scores sit under eval/ beside
    eval/loss (they were train/hellaswag/acc), with metrics.jsonl's values, and every sample is a text entry at its
    step. metrics.jsonl and the console keep the names hellaswag/acc."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from edugpt.eval.tasks.hellaswag_local import SMOKE_FILE

    out = tmp_path / "run"
    proc = run_script("train_hf.py", *tiny_args(data_dir, out, "--max_steps", "2", "--eval_strategy", "no",
                                                "--report_to", "tensorboard",
                                                "--hellaswag_steps", "2", "--hellaswag_limit", "4", "--hellaswag_file",
                                                SMOKE_FILE, "--sample_steps", "2"), check=True, timeout=300)
    [logdir] = {path.parent for path in (out / "runs").rglob("events.out.tfevents.*")}  # output_dir/runs/<time>
    events = EventAccumulator(str(logdir), size_guidance={"tensors": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"eval/hellaswag/acc", "eval/hellaswag/acc_norm", "train/loss"} <= set(scalars), scalars
    assert not [tag for tag in scalars if tag.startswith("train/hellaswag")]
    records = read_metrics(out / "metrics.jsonl")
    [scored] = [r for r in records if "hellaswag/acc" in r]
    [(step, value)] = [(e.step, e.value) for e in events.Scalars("eval/hellaswag/acc")]
    assert step == 2 and value == pytest.approx(scored["hellaswag/acc"])
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("train/samples/text_summary")}
    samples = [r for r in records if "sample/text" in r]
    assert sorted(texts) == sorted({r["step"] for r in samples}) == [0, 2]
    for sample in samples:
        assert cb_cell(sample["sample/text"]) in texts[sample["step"]]
    assert "'hellaswag/acc'" in proc.stdout  # the console's record keeps its name


def cb_cell(text: str) -> str:
    from edugpt.train.samples import markdown_cell

    return markdown_cell(text)

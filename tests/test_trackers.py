"""Trainer's report_to backends as the optional extras install them (pip install -e ".[trackio]" / ".[wandb]")."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, run_script, tiny_args, train_records


@pytest.mark.slow
def test_report_to_trackio_works_offline_with_its_local_dashboard(data_dir, tmp_path):
    """`report_to: trackio` (pip install -e ".[trackio]") on an offline machine: Trainer's TrackioCallback logs every
    record into trackio's local database, and `trackio show`'s dashboard serves it from this machine."""
    pytest.importorskip("trackio")

    env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    out = tmp_path / "run"
    run_script("train_hf.py", *tiny_args(data_dir, out, "--max_steps", "2", "--sample_steps", "0", "--eval_strategy",
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
print(json.dumps({{"status": page.status, "losses": [r["train/loss"] for r in logs if "train/loss" in r]}}))
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == 200
    assert result["losses"] == pytest.approx([r["loss"] for _, r in sorted(train_records(out).items())])

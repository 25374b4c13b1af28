"""What a run prints: our one-line records and the libraries' warnings, not their INFO dumps of config objects."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from factories import ROOT, run_script


@pytest.mark.slow
def test_sft_prints_no_more_than_trl_sft_plus_our_one_line_records(tiny_model_dir, tmp_path):
    """The same recipe and model through finetune/sft.py and TRL's own `trl sft` (both --disable_tqdm true, each with
    a fresh datasets cache so both draw the same map bars). Measured: ours 16 lines, trl sft 21 (6 of them
    accelerate's notice about launch defaults); ours printed 205 before, with 6 config dumps."""
    import subprocess
    import sys

    common = ["--config", "configs/sft_smoke.yaml", "--model_name_or_path", str(tiny_model_dir), "--max_steps", "2",
              "--logging_steps", "1", "--disable_tqdm", "true"]
    ours = run_script("finetune/sft.py", *common, "--output_dir", tmp_path / "ours",
                      env={"HF_DATASETS_CACHE": str(tmp_path / "cache-ours")}, check=True, timeout=300)
    trl_cli = Path(sys.executable).with_name("trl")
    trl = subprocess.run([str(trl_cli), "sft", *common, "--output_dir", str(tmp_path / "trl")], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache-trl"),
                              "PATH": f"{trl_cli.parent}:{os.environ['PATH']}"})
    assert trl.returncode == 0, trl.stderr[-3000:]
    lines = (ours.stdout + ours.stderr).splitlines()
    records = [line for line in lines if " INFO edugpt." in line or " WARNING edugpt." in line]
    assert len(lines) - len(records) <= len((trl.stdout + trl.stderr).splitlines()), "\n".join(lines)
    assert len(records) <= 3, records  # the data, the final model (and at most one warning)
    assert not [line for line in lines if "Config {" in line]


def test_each_branch_pushed_and_each_failed_push_is_one_log_line(data_dir, tmp_path, monkeypatch):
    """--hub_step_branches pushed step-N in the background without a word when it worked; now one line per branch
    pushed, and one per failed attempt (the Hub here is the suite's fake, failing step-2)."""
    from factories import load_train_main, tiny_args
    from fakes.hub import FakeHub

    from edugpt.errors import EduGPTError

    hub = FakeHub(fail_on_branch="step-2")
    monkeypatch.setattr("transformers.trainer.hf_api", hub)
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    monkeypatch.setenv("HF_TOKEN", "unused")
    args = tiny_args(data_dir, tmp_path / "run", "--max_steps", "3", "--save_steps", "1", "--sample_steps", "0",
                     "--eval_strategy", "no", "--push_to_hub", "true", "--hub_model_id", "someone/edugpt-tiny",
                     "--hub_step_branches", "true", "--hub_strategy", "end")
    records: list[logging.LogRecord] = []
    collect = logging.Handler(logging.INFO)  # on the logger itself: setup_logging replaces the root's handlers
    collect.emit = records.append
    logging.getLogger("edugpt.hub.pusher").addHandler(collect)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        with pytest.raises(EduGPTError, match="step-2"):
            load_train_main()(args)
    finally:
        logging.getLogger("edugpt.hub.pusher").removeHandler(collect)
        root.handlers[:], root.level = saved
    lines = [r.getMessage() for r in records]
    pushed = sorted(line for line in lines if line.startswith("pushed "))
    assert pushed == [f"pushed {branch} to someone/edugpt-tiny" for branch in ("main", "step-1", "step-3")], lines
    failed = [line for line in lines if line.startswith("pushing step-2 to someone/edugpt-tiny failed")]
    assert len(failed) == hub.failed.count("step-2") >= 2, lines

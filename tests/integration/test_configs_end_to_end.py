"""Every shipped YAML parses with the parser its entry point uses, and a typo'd key fails."""

from __future__ import annotations

from pathlib import Path

import pytest
from factories import ROOT


@pytest.mark.slow
@pytest.mark.parametrize("key", ["fsdp_auto_wrap_policy", "fsdp_auto_wrap_polcy"])
def test_an_fsdp_config_key_accelerate_launch_ignores_is_told_to_the_run(tmp_path, key):
    """`accelerate launch` checks its config file before our code runs (broken YAML, unknown top-level keys, bad values:
    its own traceback, exit 1) but ignores an fsdp_config key it does not know, and passes the run only the values it
    read: a misspelled auto-wrap policy reaches the run as none at all, which it can tell (pretrain.fsdp_launch_problem)."""
    import os
    import subprocess
    import sys

    config = tmp_path / "fsdp_cpu.yaml"
    config.write_text((ROOT / "configs/accelerate/cpu_ddp_2proc.yaml").read_text().replace(
        "distributed_type: MULTI_GPU", "distributed_type: FSDP")
        + f"fsdp_config:\n  fsdp_version: 2\n  {key}: TRANSFORMER_BASED_WRAP\n")
    probe = tmp_path / "probe.py"
    probe.write_text("import os\nfrom edugpt.train.pretrain import fsdp_launch_problem\n"
                     "print('problem:', fsdp_launch_problem(os.environ))\n")
    launcher = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(launcher), "launch", "--config_file", str(config), str(probe)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("problem:")]
    assert len(lines) == 2  # one per process
    if key == "fsdp_auto_wrap_policy":
        assert lines == ["problem: None"] * 2
    else:
        assert all("sets no fsdp_auto_wrap_policy (missing, or misspelled" in line for line in lines)

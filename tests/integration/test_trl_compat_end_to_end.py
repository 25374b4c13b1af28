"""Recipes and data both ways with TRL: `trl sft` / `trl dpo` run our recipes unchanged, our scripts read TRL's"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from factories import ROOT


def trl_cli(*args, timeout=300):
    """TRL's own `trl` command, as a user runs it from the repository."""
    return subprocess.run([str(Path(sys.executable).with_name("trl")), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_recipes_run_unchanged_under_trl_sft_and_trl_dpo(tiny_model_dir, tmp_path):
    """`trl sft --config configs/sft_smoke.yaml` then `trl dpo --config configs/dpo_smoke.yaml`, offline, as they are."""
    from transformers import AutoTokenizer

    from edugpt.model.chat import EDUGPT_CHAT_TEMPLATE

    sft, dpo = tmp_path / "sft", tmp_path / "dpo"
    proc = trl_cli("sft", "--config", "configs/sft_smoke.yaml", "--model_name_or_path", tiny_model_dir,
                   "--output_dir", sft, "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "`gradient_checkpointing` is deprecated" not in proc.stderr  # the recipe uses the new name
    assert AutoTokenizer.from_pretrained(sft).chat_template == EDUGPT_CHAT_TEMPLATE  # from chat_template_path
    proc = trl_cli("dpo", "--config", "configs/dpo_smoke.yaml", "--model_name_or_path", sft, "--output_dir", dpo,
                   "--max_steps", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (dpo / "model.safetensors").is_file()
    assert AutoTokenizer.from_pretrained(dpo).chat_template == EDUGPT_CHAT_TEMPLATE

from dataclasses import dataclass

import pytest

from edugpt.cli import parse_config
from edugpt.errors import EduGPTError


@dataclass
class _Args:
    alpha: int = 1
    beta: str = "b"


def test_yaml_then_cli_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("alpha: 5\nbeta: from-yaml\n")
    (args,) = parse_config([_Args], ["--config", str(recipe), "--beta", "from-cli"])
    assert (args.alpha, args.beta) == (5, "from-cli")


def test_unknown_yaml_key_lists_valid_keys(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("alpah: 5\n")
    with pytest.raises(EduGPTError, match="alpah.*Valid keys are: alpha, beta"):
        parse_config([_Args], ["--config", str(recipe)])


def test_missing_config_file(tmp_path):
    with pytest.raises(EduGPTError, match="does not exist"):
        parse_config([_Args], ["--config", str(tmp_path / "missing.yaml")])

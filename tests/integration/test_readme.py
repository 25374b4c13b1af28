"""The README's commands stay true to the code: every script it runs exists, every flag it passes is one that
script's `--help` lists, and every repo file it names exists. (What the commands do is tested elsewhere and by
`make demo`; GPU and Hub commands can only be checked this far here.)"""

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest
from factories import ROOT

README = (ROOT / "README.md").read_text()


def _commands():
    blocks = re.findall(r"```sh\n(.*?)```", README, flags=re.S)
    lines = [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _entry_point(words):
    """('train_hf.py' | 'edugpt.report.card', args) for a `python X.py` / `accelerate launch ... X.py` / `python -m` line."""
    for i, word in enumerate(words):
        if word.endswith(".py"):
            return word, words[i + 1:]
        if word == "-m" and words[i + 1].startswith("edugpt."):
            return words[i + 1], words[i + 2:]
    return None, []


@cache
def _help(entry):
    cmd = [sys.executable, "-m", entry] if not entry.endswith(".py") else [sys.executable, str(ROOT / entry)]
    proc = subprocess.run([*cmd, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"{entry} --help failed: {proc.stderr[-2000:]}"
    return proc.stdout


COMMANDS = [c for c in _commands() if _entry_point(shlex.split(c))[0]]


def test_readme_starts_with_the_two_commands():
    first_block = re.search(r"```sh\n(.*?)```", README, flags=re.S).group(1)
    assert [line.split()[:2] for line in first_block.strip().splitlines()] == [["make", "demo"], ["make", "test"]]


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_uses_real_flags_and_files(command):
    entry, args = _entry_point(shlex.split(command))
    if entry.endswith(".py"):
        assert (ROOT / entry).is_file(), f"README runs {entry}, which does not exist"
    options = set(re.findall(r"(--[a-zA-Z_][\w-]*)", _help(entry)))
    for i, arg in enumerate(args):
        if arg.startswith("--"):
            assert arg.split("=")[0] in options | {"--config"}, f"{entry} has no option {arg} (README: {command})"
        if arg.startswith(("configs/", "edugpt/")) or (i and args[i - 1] in ("--config", "--config_file")):
            assert (ROOT / arg).exists(), f"README names {arg}, which does not exist"

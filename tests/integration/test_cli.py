"""edugpt.config.cli.parse_config: YAML recipe + command-line overrides, every mistake one line with the closest valid names,
values Trainer would only fail on later refused at parse time, and a --help that shows --config and groups the options
by dataclass (issue 11, issue 12)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest
import torch
from factories import ROOT, run_script
from fakes.hub import FAKE_TOKEN
from transformers import TrainingArguments
from trl import DPOConfig, ModelConfig, ScriptArguments, SFTConfig

from edugpt.config.arguments import (
    CardArguments,
    DataArguments,
    ModelArguments,
    PretrainArguments,
    PublishArguments,
    RunArguments,
)
from edugpt.config.cli import parse_config
from edugpt.errors import EduGPTError

# The dataclasses each entry point hands parse_config (train_hf.py, finetune/sft.py, finetune/dpo.py, eval_harness.py).
TRAIN = [ModelArguments, DataArguments, PretrainArguments, RunArguments, TrainingArguments]
SFT = [ScriptArguments, SFTConfig, ModelConfig, RunArguments]
DPO = [ScriptArguments, DPOConfig, ModelConfig, RunArguments]
CPU = [] if torch.cuda.is_available() else ["--bf16", "false", "--tf32", "false"]


@dataclass
class _Args:
    alpha: int = 1
    beta: str = "b"


def recipe(tmp_path, text: str, name: str = "r.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_then_cli_override(tmp_path):
    (args,) = parse_config([_Args], ["--config", recipe(tmp_path, "alpha: 5\nbeta: from-yaml\n"), "--beta", "from-cli"])
    assert (args.alpha, args.beta) == (5, "from-cli")
    (args,) = parse_config([_Args], [f"--config={recipe(tmp_path, 'alpha: 7')}"])  # argparse's --flag=value form
    assert args.alpha == 7


def test_missing_config_file(tmp_path):
    with pytest.raises(EduGPTError, match="does not exist"):
        parse_config([_Args], ["--config", str(tmp_path / "missing.yaml")])


def test_broken_yaml_names_the_file_and_line(tmp_path):
    path = recipe(tmp_path, "alpha: 1\nbeta: [1,\n  2\n")
    with pytest.raises(EduGPTError, match=r"r.yaml' line 4 is not valid YAML: expected ',' or '\]'.*"
                                          r"\(while parsing a flow sequence started on line 2\)"):
        parse_config([_Args], ["--config", path])


@pytest.mark.parametrize(("text", "what"), [("- alpha\n- beta\n", "holds a list"), ("", "is empty"),
                                            ("just words\n", "holds a str")])
def test_yaml_that_is_not_a_mapping(tmp_path, text, what):
    with pytest.raises(EduGPTError, match=f"{what}; a recipe is a YAML mapping"):
        parse_config([_Args], ["--config", recipe(tmp_path, text)])


@pytest.mark.parametrize("classes", [TRAIN, SFT], ids=["train_hf", "sft"])
def test_yaml_typo_suggests_the_closest_key_instead_of_listing_all(tmp_path, classes):
    path = recipe(tmp_path, "max_steps: 5\nlearnin_rate: 0.001\n")
    with pytest.raises(EduGPTError) as error:
        parse_config(classes, ["--config", path, *CPU])
    message = str(error.value)
    assert "r.yaml' line 2: unknown key 'learnin_rate' (did you mean learning_rate?)" in message
    assert len(message) < 200  # not the ~170 valid keys


def test_command_line_typo_is_one_line_with_did_you_mean():
    with pytest.raises(EduGPTError, match=r"^unknown option --learnng_rate \(did you mean --learning_rate\?\)"):
        parse_config(TRAIN, ["--learnng_rate", "1e-3", *CPU])
    with pytest.raises(EduGPTError, match=r"unknown option --max_stpes \(did you mean --max_steps"):
        parse_config(SFT, ["--max_stpes=5", *CPU])
    with pytest.raises(EduGPTError, match="unexpected argument '6'"):
        parse_config(TRAIN, ["--max_steps", "5", "6", *CPU])
    # argparse's own errors become the same one line instead of the ~170-option usage and SystemExit
    with pytest.raises(EduGPTError, match=r"^argument --learning_rate/--learning-rate: invalid float value: 'abc'"):
        parse_config(TRAIN, ["--learning_rate", "abc", *CPU])
    with pytest.raises(EduGPTError, match="the following arguments are required: --run_dir"):
        parse_config([CardArguments], [])


@pytest.mark.parametrize(("classes", "argv", "flag"), [
    (TRAIN, ["--hub_to=" + FAKE_TOKEN], "--hub_to"), (SFT, ["--hub_tok", FAKE_TOKEN], "--hub_tok"),
    (DPO, ["--learning_r", "1e-3"], "--learning_r"),
    ([PublishArguments], ["--run_dir", "runs/x", "--hub_model_id", "me/x", "--dry", "/tmp/plan"], "--dry"),
])
def test_an_abbreviated_option_is_unknown_not_guessed(classes, argv, flag):
    # argparse's default prefix matching took `--hub_to=hf_...` as --hub_token: a typo must never fill in a secret
    with pytest.raises(EduGPTError, match=rf"^unknown option {flag} \(did you mean --") as error:
        parse_config(classes, argv if classes[0] is PublishArguments else [*argv, *CPU])
    assert FAKE_TOKEN not in str(error.value)


@pytest.mark.parametrize("variable", ["PYTHONPATH", "HF_TOKEN", "HF_ENDPOINT"])
def test_a_recipe_cannot_set_environment_variables(tmp_path, monkeypatch, variable):
    # TrlParser exports a recipe's `env:` mapping into os.environ (and so into every process the run starts)
    monkeypatch.delenv(variable, raising=False)
    path = recipe(tmp_path, f"max_steps: 5\nenv:\n  {variable}: /tmp/not-trusted\n")
    with pytest.raises(EduGPTError, match=r"r.yaml' line 2: key 'env' is not accepted: it would set environment "
                                          r"variables .*set them in the shell instead"):
        parse_config(TRAIN, ["--config", path, *CPU])
    assert variable not in os.environ


@pytest.mark.parametrize(("classes", "flag", "value", "message"), [
    (TRAIN, "--learning_rate", "-1", "learning_rate must be a finite number >= 0, got -1.0"),
    (TRAIN, "--learning_rate", "nan", "learning_rate must be a finite number"),
    (SFT, "--learning_rate=-2e-5", None, "learning_rate must be a finite number >= 0"),  # argparse: -2e-5 is no number
    (DPO, "--adam_beta2", "1.5", r"adam_beta2 must be in \[0, 1\)"),
    (TRAIN, "--weight_decay", "-0.1", "weight_decay must be a finite number >= 0"),
    (TRAIN, "--per_device_train_batch_size", "0", "per_device_train_batch_size must be >= 1"),
    (SFT, "--gradient_accumulation_steps", "0", "gradient_accumulation_steps must be >= 1"),
    (TRAIN, "--save_steps", "0", "save_steps must be positive with save_strategy 'steps'"),
    (TRAIN, "--seed", "-1", "seed must be a finite number >= 0"),
    (TRAIN, "--max_grad_norm", "nan", r"max_grad_norm must be a finite number >= 0 \(0: no clipping"),  # clips never
    (SFT, "--max_grad_norm", "inf", "max_grad_norm must be a finite number >= 0"),
    (DPO, "--max_grad_norm", "-1", "max_grad_norm must be a finite number >= 0"),
])
def test_values_trainer_only_fails_on_later_are_refused_at_parse_time(classes, flag, value, message):
    with pytest.raises(EduGPTError, match=message):
        parse_config(classes, [flag, *([value] if value is not None else []), "--output_dir", "unused", *CPU])


def test_yaml_value_of_the_wrong_shape(tmp_path):
    with pytest.raises(EduGPTError, match=r"line 1: learning_rate takes one float, got a list"):
        parse_config(TRAIN, ["--config", recipe(tmp_path, "learning_rate: [0.001]\n"), *CPU])
    # an optional number too (TRL's parser wraps Optional[int] in a function of its own)
    with pytest.raises(EduGPTError, match=r"line 1: hellaswag_limit takes one int, got a list"):
        parse_config(TRAIN, ["--config", recipe(tmp_path, "hellaswag_limit: [1, 2]\n"), *CPU])


def test_report_to_a_backend_that_is_unknown_or_not_installed():
    pytest.importorskip("tensorboard")
    with pytest.raises(EduGPTError, match=r"report_to 'wandbb' is not a Trainer integration \(did you mean wandb\?\)"):
        parse_config(TRAIN, ["--report_to", "wandbb", *CPU])
    assert parse_config(TRAIN, ["--report_to", "tensorboard", *CPU])[-1].report_to == ["tensorboard"]
    try:
        import wandb  # noqa: F401
    except ImportError:
        with pytest.raises(EduGPTError, match=r"report_to 'wandb': wandb is not installed; `pip install wandb`"):
            parse_config(SFT, ["--report_to", "wandb", *CPU])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a GPU")
def test_bf16_and_tf32_without_a_gpu_are_one_line_naming_the_fix():
    with pytest.raises(EduGPTError, match="bf16 needs a GPU with bfloat16 support.*pass --bf16 false"):
        parse_config(TRAIN, ["--config", str(ROOT / "configs" / "gpt2_270m.yaml")])
    with pytest.raises(EduGPTError, match="tf32 needs an NVIDIA Ampere or newer GPU.*pass --tf32 false"):
        parse_config(SFT, ["--bf16", "false", "--tf32", "true"])
    assert parse_config(TRAIN, ["--bf16", "true", "--use_cpu", "true"])[-1].bf16  # the CPU's bf16, as suggested


def test_sample_prompts_string_is_one_prompt(tmp_path):
    path = recipe(tmp_path, 'sample_prompts: "Once upon a time"\n')
    assert parse_config(TRAIN, ["--config", path, *CPU])[2].sample_prompts == ["Once upon a time"]
    assert PretrainArguments(sample_prompts="In the beginning").sample_prompts == ["In the beginning"]
    with pytest.raises(EduGPTError, match="sample_prompts must be non-empty strings"):
        PretrainArguments(sample_prompts=["fine", ""])


@pytest.mark.parametrize("classes", [TRAIN, SFT, DPO, [CardArguments]], ids=["train_hf", "sft", "dpo", "card"])
def test_help_mentions_config_and_groups_options_by_dataclass(classes, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config(classes, ["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: ") and "[--config YAML]" in text.splitlines()[0]
    assert "--config YAML" in text and "command line override" in " ".join(text.split())
    headings = [f"\n{cls.__name__} ({cls.__module__}):\n" for cls in classes]
    positions = [text.index(heading) for heading in headings]
    assert positions == sorted(positions)
    for cls, start, end in zip(classes, positions, [*positions[1:], len(text)]):
        section = text[start:end]
        first_field = next(name for name in cls.__dataclass_fields__ if cls.__dataclass_fields__[name].init)
        assert f"--{first_field}" in section, (cls.__name__, first_field)


@pytest.mark.slow
@pytest.mark.parametrize(("script", "args", "message"), [
    ("train_hf.py", ["--config", "BROKEN"], "line 3 is not valid YAML"),
    ("finetune/sft.py", ["--config", "configs/sft_smoke.yaml", "--learnng_rate", "1"], "did you mean --learning_rate"),
    ("finetune/dpo.py", ["--config", "configs/dpo_smoke.yaml", "--learning_rate", "-1"], "learning_rate must be"),
    ("eval_harness.py", ["--model", "m", "--taks", "hellaswag"], "did you mean --tasks"),
])
def test_entry_points_exit_2_with_one_line_and_write_nothing(tmp_path, script, args, message):
    args = [recipe(tmp_path, "max_steps: 2\nlearning_rate: [1,\n") if a == "BROKEN" else a for a in args]
    proc = run_script(script, *args, "--output_dir", tmp_path / "out", timeout=180)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and sum(line.startswith("error") for line in lines) == 1, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()

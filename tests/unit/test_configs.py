"""Every shipped YAML parses with the parser its entry point uses, and a typo'd key fails.

Training recipes (configs/*.yaml) go through `edugpt.config.cli.parse_config` with the very dataclasses the script passes it,
read from the script's own `parse_config([...])` call (the script is loaded with importlib, never imported by another
script). Accelerate configs (accelerate_config.yaml, configs/accelerate/*.yaml) go through the loader
`accelerate launch` uses, plus the checks it would only make on a multi-GPU machine.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
from fnmatch import fnmatch
from pathlib import Path

import pytest
from factories import ROOT

from edugpt.errors import EduGPTError

# Which entry point reads which recipe (its docstring's launch command). A new YAML must be added here.
SCRIPTS = {"smoke.yaml": "train_hf.py", "gpt2_270m*.yaml": "train_hf.py", "sft*.yaml": "finetune/sft.py",
           "dpo*.yaml": "finetune/dpo.py"}
RECIPES = sorted(p.name for p in (ROOT / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = ["accelerate_config.yaml"] + sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "configs" / "accelerate").glob("*.yaml")
)
TYPO = "\nlearning_rat: 0.1   # a typo of learning_rate\n"


def script_for(recipe: str) -> str:
    matches = {script for pattern, script in SCRIPTS.items() if fnmatch(recipe, pattern)}
    assert len(matches) == 1, f"configs/{recipe}: say in SCRIPTS (tests/unit/test_configs.py) which script reads it"
    return matches.pop()


@functools.cache
def parser_classes(script: str) -> tuple[type, ...]:
    """The dataclasses `script` hands to parse_config, resolved in the script's own namespace."""
    path = ROOT / script
    calls = [node for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "parse_config"]
    assert len(calls) == 1 and isinstance(calls[0].args[0], ast.List), f"{script}: expected one parse_config([...])"
    spec = importlib.util.spec_from_file_location(f"_recipe_check_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports only: entry points do their work in main()
    return tuple(getattr(module, name.id) for name in calls[0].args[0].elts)


def cpu_overrides() -> list[str]:
    """The GPU recipes ask for bf16 and TF32, which TrainingArguments refuses on a machine without CUDA."""
    import torch

    return [] if torch.cuda.is_available() else ["--bf16", "false", "--tf32", "false"]


@functools.cache
def parse_recipe(recipe: str) -> tuple:
    return parse_config_file(script_for(recipe), ROOT / "configs" / recipe)


def parse_config_file(script: str, path: Path) -> tuple:
    from edugpt.config.cli import parse_config

    return parse_config(parser_classes(script), ["--config", str(path), *cpu_overrides()])


def test_every_recipe_has_a_script():
    assert {"smoke.yaml", "gpt2_270m.yaml", "sft.yaml", "dpo.yaml"} <= set(RECIPES)
    assert [script_for(recipe) for recipe in RECIPES]
    assert parser_classes("train_hf.py")[-1].__name__ == "TrainingArguments"
    assert [c.__name__ for c in parser_classes("finetune/dpo.py")] == ["ScriptArguments", "DPOConfig", "ModelConfig",
                                                                 "DatasetMixtureConfig", "RunArguments"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_parses_with_its_scripts_parser(recipe):
    from transformers import TrainingArguments

    parsed = parse_recipe(recipe)
    training = next(args for args in parsed if isinstance(args, TrainingArguments))  # SFTConfig/DPOConfig included
    assert (training.max_steps > 0 or training.num_train_epochs > 0) and training.learning_rate > 0
    if script_for(recipe) != "train_hf.py":
        script_args, training, dataset_args = parsed[0], parsed[1], parsed[3]
        assert (script_args.dataset_name or dataset_args.datasets) and training.max_length in (128, 1024)
        if recipe.startswith("sft"):  # the chat recipe: reply tokens only, packed rows, edugpt's template file
            assert training.assistant_only_loss and training.packing
            assert (ROOT / training.chat_template_path).is_file()


@pytest.mark.parametrize("recipe", [r for r in RECIPES if r.startswith(("sft", "dpo"))])
def test_finetune_recipe_is_a_trl_cli_recipe_without_warnings(recipe):
    """`trl sft|dpo --config configs/RECIPE` reads the same file: TRL's own parser takes every key (strictly here), and
    no key of ours triggers a deprecation warning (gradient_checkpointing is activation_checkpointing now)."""
    import warnings

    import trl.scripts.dpo
    import trl.scripts.sft

    script = trl.scripts.sft if recipe.startswith("sft") else trl.scripts.dpo
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        parse_recipe.cache_clear()
        parse_recipe(recipe)  # ours
        script.make_parser().parse_args_and_config(
            args=["--config", str(ROOT / "configs" / recipe), *cpu_overrides()], fail_with_unknown_args=True)


@pytest.mark.parametrize("recipe", ["smoke.yaml", "sft_smoke.yaml", "dpo.yaml"])
def test_a_typo_in_a_recipe_is_an_error(recipe, tmp_path):
    broken = tmp_path / recipe
    broken.write_text((ROOT / "configs" / recipe).read_text() + TYPO)
    with pytest.raises(EduGPTError, match=r"unknown key .learning_rat. \(did you mean learning_rate\?\)"):
        parse_config_file(script_for(recipe), broken)


# --- accelerate configs -----------------------------------------------------------------------------------------------


def check_accelerate_config(path: Path) -> None:
    """Load `path` as `accelerate launch --config_file` does (unknown top-level keys are a ValueError there), then
    check what accelerate only checks at launch: precision, process counts, and the fsdp_config keys, which launch
    copies onto its own flags without complaint when one is misspelled."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser
    from accelerate.utils import DistributedType, PrecisionType

    config = load_config_from_file(str(path))  # a ClusterConfig: distributed_type is validated into the enum
    assert isinstance(config.distributed_type, DistributedType)
    assert config.mixed_precision in {p.value for p in PrecisionType}, config.mixed_precision
    assert config.num_processes >= 1 and config.num_machines >= 1
    assert config.num_processes % config.num_machines == 0, "num_processes is the total over all machines"
    if config.distributed_type in (DistributedType.MULTI_GPU, DistributedType.FSDP):
        assert config.num_processes >= 2, "multi-process launch needs num_processes >= 2"
    if config.num_machines > 1:
        assert config.main_process_ip and config.main_process_port, "multi-node needs main_process_ip/port"
    if config.distributed_type == DistributedType.FSDP:
        assert config.fsdp_config, "FSDP needs an fsdp_config"
    launch_flags = {action.dest for action in launch_command_parser()._actions}
    for key in config.fsdp_config:
        flag = key if key.startswith("fsdp") else f"fsdp_{key}"  # launch's own renaming
        assert flag in launch_flags, f"{path.name}: fsdp_config key {key!r} is not an accelerate launch option"


@pytest.mark.parametrize("name", ACCELERATE_CONFIGS)
def test_accelerate_config_is_valid(name):
    check_accelerate_config(ROOT / name)


def test_accelerate_config_typos_are_caught(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text((ROOT / "accelerate_config.yaml").read_text().replace("num_processes:", "num_processe:"))
    with pytest.raises(ValueError, match="unknown keys.*num_processe"):
        check_accelerate_config(top)
    fsdp = tmp_path / "fsdp.yaml"
    fsdp.write_text((ROOT / "configs/accelerate/fsdp_8gpu.yaml").read_text().replace("fsdp_auto_wrap_policy",
                                                                                         "fsdp_auto_wrap_polcy"))
    with pytest.raises(AssertionError, match="fsdp_auto_wrap_polcy"):
        check_accelerate_config(fsdp)


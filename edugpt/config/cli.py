"""Shared entry-point plumbing: YAML recipe + CLI overrides that are loud on typos, one logging setup, and user
errors without tracebacks."""

from __future__ import annotations

import argparse
import difflib
import functools
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from edugpt.errors import EduGPTError

# Exit status for a user's mistake (argparse uses 2 for usage errors too).
USER_ERROR_EXIT = 2
CONFIG_HELP = ("A YAML file of option: value lines (e.g. a recipe in configs/); options given on the command line "
               "override it.")


def run(main: Callable[[], Any]) -> None:
    """Run an entry point's `main()`; turn an `EduGPTError` into one line on stderr and exit status 2."""
    try:
        main()
    except EduGPTError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def setup_logging(process_index: int = 0) -> None:
    """The one logging setup of every entry point: our INFO records on the main process, warnings only on the others
    (so N ranks do not print N copies), the same format everywhere. transformers and datasets print their warnings,
    as under `trl sft` (TRL's scripts leave transformers at WARNING); TrainingArguments' `--log_level info` brings
    transformers' INFO records back (Trainer applies it), but never the loggers that dump whole config objects
    (`QUIET_AT_INFO`). Warns once about a launch that started fewer processes than it asked for (`launch_problem`)."""
    import datasets
    import transformers

    level = logging.INFO if process_index == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    transformers.utils.logging.set_verbosity(logging.WARNING)
    datasets.utils.logging.set_verbosity(logging.WARNING if process_index == 0 else logging.ERROR)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(logging.WARNING)
    if process_index == 0 and (problem := launch_problem(os.environ)):
        logging.getLogger(__name__).warning(problem)


# transformers loggers whose INFO records print a whole GPT2Config / GenerationConfig (30-60 lines each) every time a
# config is built, loaded or saved: 7 dumps at the start of a run, more at each checkpoint. Their warnings still show.
QUIET_AT_INFO = ("transformers.configuration_utils", "transformers.generation.configuration_utils")
# Environment variables that tell a process how many processes share its job: torchrun's (what accelerate launch uses
# for several GPUs, or with a config file) and MPI's (accelerate's multi-CPU mode runs through mpirun).
WORLD_SIZE_VARIABLES = ("WORLD_SIZE", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_SIZE")


def launch_problem(environ) -> str | None:
    """What this process can tell of an `accelerate launch` that asked for several processes and started only this
    one: `accelerate launch --cpu --num_processes 2` (or --num_processes 2 without GPUs) runs its "simple" launcher,
    whose multi-CPU mode needs mpirun; it starts ONE process and says nothing (accelerate 1.15). That launcher exports
    MASTER_ADDR/MASTER_PORT when more than one process was asked for, and accelerate's settings (ACCELERATE_*), but no
    world size, which every launcher that really starts several processes sets."""
    launched_by_accelerate = "ACCELERATE_MIXED_PRECISION" in environ
    asked_for_several = "MASTER_ADDR" in environ and "MASTER_PORT" in environ
    if not (launched_by_accelerate and asked_for_several) or any(name in environ for name in WORLD_SIZE_VARIABLES):
        return None
    return ("accelerate launch was asked for more than one process but started only this one (its --cpu "
            "--num_processes N mode needs mpirun): this run uses 1 process. For N processes on CPUs launch with a "
            "config file that uses torchrun, e.g. accelerate launch --config_file configs/accelerate/cpu_ddp_2proc.yaml")


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `--config recipe.yaml` plus command-line overrides into the given dataclasses, as TRL scripts do.

    Every mistake is one EduGPTError sentence: broken YAML (file and line), an unknown key in the YAML or on the
    command line (with the closest valid names, as argparse suggests them; an abbreviated option is unknown too), a
    recipe's `env:` key (TrlParser would export it: a recipe must not be a way to set PYTHONPATH or HF_TOKEN), a value
    of the wrong type, and the ValueErrors of the dataclasses' own checks (TrainingArguments': bf16 or tf32 without a
    GPU that has them ...).
    `--help` lists the options grouped by dataclass.
    """
    args = _split_config_flag(list(sys.argv[1:] if argv is None else argv))
    config_path = None
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise EduGPTError("--config needs a path to a YAML recipe, e.g. --config configs/smoke.yaml.")
        config_path = args[index + 1]
        if "env" in _read_recipe(config_path):
            raise EduGPTError(
                f"config file {config_path!r}{_key_line(config_path, 'env')}: key 'env' is not accepted: it would set "
                "environment variables (PYTHONPATH, HF_TOKEN, HF_ENDPOINT ...) for this run and every process it starts, "
                "so a shared recipe could run code or redirect the token; set them in the shell instead."
            )
    parser = _recipe_parser_class()(list(dataclass_types), config_path=config_path)
    try:
        *parsed, _, unknown = parser.parse_args_and_config(
            args=args, return_remaining_strings=True, separate_remaining_strings=True
        )
    except ValueError as err:
        raise _argument_error(err) from None
    if unknown:
        raise parser.unknown_error(unknown)
    if len(parsed) != len(dataclass_types):  # an extra argparse.Namespace: "--config" was repeated
        raise EduGPTError("pass the recipe once, as --config PATH.")
    from transformers import TrainingArguments

    from edugpt.config.arguments import check_training_arguments

    for args_object in parsed:
        if isinstance(args_object, TrainingArguments):  # SFTConfig and DPOConfig are TrainingArguments too
            check_training_arguments(args_object)
    return tuple(parsed)


def _split_config_flag(args: list[str]) -> list[str]:
    """`--config=PATH` -> `--config PATH` (TrlParser only looks for the separate form)."""
    out = []
    for arg in args:
        out.extend(["--config", arg.partition("=")[2]] if arg.startswith("--config=") else [arg])
    return out


def _read_recipe(path: str) -> dict:
    """The recipe's mapping, or one error naming the file (and the line, for broken YAML)."""
    import yaml

    if not os.path.exists(path):
        raise EduGPTError(f"config file {path!r} does not exist; pass one of the YAML recipes in configs/.")
    if not os.path.isfile(path):
        raise EduGPTError(f"config file {path!r} is a folder, not a file; pass one of the YAML recipes in configs/.")
    try:
        with open(path, encoding="utf-8") as f:
            recipe = yaml.safe_load(f)
    except UnicodeDecodeError:
        raise EduGPTError(f"config file {path!r} is not UTF-8 text; pass a YAML recipe.") from None
    except yaml.YAMLError as err:
        mark, context = getattr(err, "problem_mark", None), getattr(err, "context_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        if context is not None and getattr(err, "context", None):
            problem += f" ({err.context} started on line {context.line + 1})"
        raise EduGPTError(f"config file {path!r}{where} is not valid YAML: {problem}; fix the YAML there.") from None
    if not isinstance(recipe, dict):
        what = "is empty" if recipe is None else f"holds a {type(recipe).__name__}"
        raise EduGPTError(f"config file {path!r} {what}; a recipe is a YAML mapping of option: value lines.")
    return recipe


def _argument_error(err: ValueError) -> EduGPTError:
    """One line for a ValueError raised while the dataclasses were built (their own checks, mostly TrainingArguments')."""
    message = " ".join(str(err).split())
    import torch

    if "bf16" in message and not torch.cuda.is_available():
        return EduGPTError("bf16 needs a GPU with bfloat16 support and this machine has none; pass --bf16 false to "
                           "train in fp32 here (or --use_cpu true for bf16 autocast on the CPU).")
    if "tf32" in message:
        return EduGPTError("tf32 needs an NVIDIA Ampere or newer GPU, which this machine does not have; pass --tf32 false.")
    return EduGPTError(f"invalid arguments: {message.rstrip('.')}; see --help.")


def _group(dtype: type) -> dict:
    """--help's group of a dataclass's options: its name and module, and the first sentence of its docstring."""
    doc = " ".join((dtype.__doc__ or "").split())
    first = doc.split(". ")[0].rstrip(".") + "."
    return {"title": f"{dtype.__name__} ({dtype.__module__})", "description": first if 1 < len(first) < 200 else None}


@functools.cache
def _recipe_parser_class():
    """TrlParser (YAML recipe + command-line overrides) with argparse's manners: one line per mistake with the
    closest valid option names, options grouped by dataclass in --help, and --config listed there."""
    from trl import TrlParser

    from edugpt.train.trainer_hooks import argparse_actions, parser_with_dataclass_groups

    class RecipeParser(parser_with_dataclass_groups(TrlParser, _group)):
        def __init__(self, dataclass_types: list[type], config_path: str | None = None):
            # The default usage line would list all ~170 options. No prefix matching (argparse's allow_abbrev): an
            # abbreviation is a typo to report, not an option to guess (`--hub_to=...` would be taken as --hub_token).
            super().__init__(dataclass_types, usage="%(prog)s [--config YAML] [--OPTION VALUE ...]", allow_abbrev=False)
            self.config_path = config_path
            # Shown in --help (argparse's general options group), never filled: TrlParser takes --config out of the
            # arguments before argparse sees them.
            self.add_argument("--config", metavar="YAML", default=argparse.SUPPRESS, help=CONFIG_HELP)

        def error(self, message):  # argparse would print the whole usage (~170 options) and exit
            raise EduGPTError(f"{message}; see --help.")

        def suggestion(self, name: str, prefix: str = "") -> str:
            options = {action.dest for action in argparse_actions(self)} - {"help", "config"}
            close = difflib.get_close_matches(name.lstrip("-").replace("-", "_"), sorted(options), n=3)
            return f" (did you mean {' or '.join(prefix + option for option in close)}?)" if close else ""

        def unknown_error(self, strings: list[str]) -> EduGPTError:
            flags = [s.partition("=")[0] for s in strings if s.startswith("-")]
            if not flags:
                return EduGPTError(f"unexpected argument {strings[0]!r}: every value follows its --option; see --help.")
            return EduGPTError(f"unknown option {flags[0]}{self.suggestion(flags[0], '--')}; see --help for the options.")

        def set_defaults_with_config(self, **config):
            actions = {action.dest: action for action in argparse_actions(self)}
            for key, value in config.items():
                action = actions.get(key)
                where = f"config file {self.config_path!r}{_key_line(self.config_path, key)}"
                if action is None or key in ("help", "config"):
                    raise EduGPTError(f"{where}: unknown key {key!r}{self.suggestion(key)}; see --help for the options.")
                if action.nargs == "+" and value is not None and not isinstance(value, list):
                    config[key] = [value]  # `sample_prompts: "a prompt"` is one prompt, not one per character
                elif (action.nargs is None and getattr(action.type, "__name__", None) in ("int", "float")
                      and isinstance(value, (list, dict))):  # TRL wraps Optional[int] in a parser named "int"
                    raise EduGPTError(f"{where}: {key} takes one {action.type.__name__}, got a "
                                      f"{type(value).__name__}; write `{key}: NUMBER`.")
            return super().set_defaults_with_config(**config)

    return RecipeParser


def _key_line(path: str | None, key: str) -> str:
    """' line N' of `key` at the top level of the YAML file `path` ('' if it cannot be told)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.compose(f, Loader=yaml.SafeLoader)
        return next(f" line {k.start_mark.line + 1}" for k, _ in node.value if k.value == key)
    except Exception:  # only a nicety of a message that is raised anyway
        return ""


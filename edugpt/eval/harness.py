"""lm-eval-harness on checkpoints and, through the same code, HellaSwag inside training.

Everything here is scored by lm-eval itself (its `HFLM` and its task definitions), never by a scorer of our own: the
original project normalised HellaSwag by token count and read 29.6 where lm-eval reads 31.1 for the same GPT-2.
So the in-training numbers are lm-eval's numbers: `HellaSwagCallback` wraps the in-memory model in an `HFLM` and runs
lm-eval's `evaluate()` on the same task object lm-eval would build, which gives, item by item, what

    lm_eval --model hf --model_args pretrained=RUN/checkpoint-N --tasks hellaswag --limit L --batch_size B

gives on the checkpoint saved at that step (tests/test_evaluation.py proves it on a tiny model). Use the same batch
size on both sides for bit-identical log-likelihoods: a different batch pads differently, which can move the last
float bits (not, in practice, acc).

Offline, HellaSwag comes from a local jsonl file in HellaSwag's schema through the `hellaswag_local` task in
`edugpt/eval/tasks/` (lm-eval's hellaswag definition with a local data source).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import difflib
import errno
import logging
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from edugpt.errors import EduGPTError
from edugpt.io.net import hub_available

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_HELLASWAG_TASK = "hellaswag_local"
LOCAL_HELLASWAG_YAML = TASKS_DIR / f"{LOCAL_HELLASWAG_TASK}.yaml"
HELLASWAG = "hellaswag"

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------- tasks
def local_hellaswag_config(hellaswag_file: str | os.PathLike, max_items: int | None = None) -> dict:
    """The `hellaswag_local` task config (edugpt/eval/tasks/hellaswag_local.yaml) reading `hellaswag_file`."""
    from lm_eval.tasks._yaml_loader import load_yaml

    from edugpt.eval.tasks.hellaswag_local import read_hellaswag_jsonl

    read_hellaswag_jsonl(hellaswag_file, max_items=max_items)  # fail here, with line and field, not inside lm-eval
    config = dict(load_yaml(LOCAL_HELLASWAG_YAML, resolve_func=True))
    config["dataset_path"] = str(hellaswag_file)
    config["dataset_kwargs"] = {"hellaswag_file": str(hellaswag_file), "max_items": max_items}
    return config


def task_specs(tasks: list[str], hellaswag_file: str | None = None) -> list[str | dict]:
    """lm-eval task specs for `tasks`; with a local HellaSwag file, `hellaswag` means the local task on that file."""
    specs: list[str | dict] = []
    for name in tasks:
        if hellaswag_file is not None and name in (HELLASWAG, LOCAL_HELLASWAG_TASK):
            specs.append(local_hellaswag_config(hellaswag_file))
        else:
            specs.append(name)
    return specs


def task_manager(names: list[str], include_path: str | None = None, metadata: dict | None = None):
    """lm-eval's TaskManager over edugpt/eval/tasks and the user's `include_path` (lm_eval --include_path), plus lm-eval's
    own ~thousands of task YAMLs only when a task is not found there: indexing those takes ~10 s on a small CPU,
    which the local HellaSwag task does not have to pay. `metadata` goes to every task, as lm_eval --metadata."""
    from lm_eval.tasks import TaskManager

    paths = [str(TASKS_DIR), *([include_path] if include_path else [])]
    manager = TaskManager(include_path=paths, include_defaults=False, metadata=metadata)
    if all(manager.match_tasks([name]) for name in names):
        return manager
    return TaskManager(include_path=paths, metadata=metadata)


def checked_task_manager(specs: list[str | dict], include_path: str | None = None, metadata: dict | None = None):
    """The TaskManager for `specs`, after checking that every task name is one lm-eval, edugpt/eval/tasks or the
    include_path defines (a name, group, tag or pattern, as lm_eval matches them)."""
    names = [s for s in specs if isinstance(s, str) and not s.endswith(".yaml")]
    manager = task_manager(names, include_path, metadata)
    for name in names:
        if not manager.match_tasks([name]):
            raise EduGPTError(
                f"unknown lm-eval task {name!r}; run `lm_eval ls tasks` for the names (offline, use "
                f"--tasks hellaswag with --hellaswag_file, or {LOCAL_HELLASWAG_TASK})."
            )
    return manager


def expand_task_specs(specs: list[str | dict], manager) -> list[str | dict]:
    """What lm_eval's CLI hands `simple_evaluate` for `specs`: a pattern (`mmlu_*`) as the task names it matches, a
    task YAML file (or glob of them) as its config, a config as is."""
    import glob

    from lm_eval.tasks._yaml_loader import load_yaml

    expanded: list[str | dict] = []
    for spec in specs:
        if isinstance(spec, dict):
            found = [spec]
        elif spec.endswith(".yaml"):
            found = [load_yaml(path, resolve_func=True) for path in sorted(glob.glob(str(Path(spec).absolute())))]
            if not found:
                raise EduGPTError(f"task file {spec} does not exist; pass a task YAML file or an lm-eval task name.")
        else:
            found = manager.match_tasks([spec])
        expanded += [task for task in found if task not in expanded]
    return expanded


def offline_data_error(specs: list[str | dict], err: Exception) -> EduGPTError:
    names = ", ".join(s if isinstance(s, str) else str(s.get("task") or s.get("group")) for s in specs)
    return EduGPTError(
        f"could not download the data of task(s) {names} ({type(err).__name__}): the Hugging Face Hub is offline or "
        "unreachable; go online, or for HellaSwag pass a local HellaSwag-format jsonl with --hellaswag_file "
        "(e.g. edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl, a smoke file, not HellaSwag)."
    )


def hub_hellaswag_task(max_items: int | None):
    """lm-eval's own `hellaswag` task (Rowan/hellaswag), cut to its first `max_items` validation items."""
    if not hub_available():
        raise EduGPTError(
            "HellaSwag from the Hub needs the Hugging Face Hub, which is offline or unreachable; set hellaswag_file "
            "to a local HellaSwag-format jsonl (e.g. edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl)."
        )
    try:
        task = checked_task_manager([HELLASWAG]).load([HELLASWAG])["tasks"][HELLASWAG]
    except ConnectionError as err:  # what `datasets` raises when the Hub cannot be reached
        raise offline_data_error([HELLASWAG], err) from None
    if max_items is not None:
        split = task.config.validation_split
        rows = task.dataset[split]
        task.dataset[split] = rows.select(range(min(max_items, len(rows))))
    return task


# ------------------------------------------------------------------------------------------------------ checkpoints
def check_model_source(model: str) -> None:
    """Fail early and clearly unless `model` is a saved causal LM directory or a Hub id we can reach."""
    from edugpt.io.net import looks_like_hub_id, missing_local_path
    from edugpt.model.chat import require_saved_model

    path = Path(model).expanduser()
    if not path.exists():
        if not (looks_like_hub_id(model) and hub_available()):
            raise EduGPTError(
                f"{missing_local_path(model, 'model')}; pass a checkpoint directory written by train_hf.py, e.g. "
                "runs/NAME/pretrain or runs/NAME/checkpoint-100, or a Hub model id."
            )
        return  # a Hub id: HFLM downloads it
    if not path.is_dir():
        raise EduGPTError(f"model {model!r} is a file; pass the checkpoint directory that holds config.json.")
    require_saved_model(path, model, "pass a checkpoint directory written by train_hf.py or finetune/*.py (its "
                        "output_dir or output_dir/checkpoint-N).")


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def model_arguments(model: str, revision: str | None = None, model_args: str | dict | None = None) -> dict:
    """lm-eval's `--model_args` of its `hf` model: pretrained=`model`, `revision`, then the user's key=value pairs
    (lm_eval's own syntax, e.g. "dtype=bfloat16,max_length=512", parsed by lm-eval; or a mapping, as lm_eval's JSON
    form and a recipe give them).

    lm-eval keeps the spaces of "dtype=bfloat16, max_length=512" in the key (" max_length"), which then fails inside
    `from_pretrained`; here a key is stripped, as it was meant. An item without `=` or a key given twice (lm-eval
    keeps the last silently) is refused."""
    from lm_eval.utils import simple_parse_args_string

    if isinstance(model_args, dict):
        pairs = [(str(key).strip(), value) for key, value in model_args.items()]
    else:
        pairs = []
        for item in (item for item in (model_args or "").split(",") if item.strip()):
            key, equals, value = item.partition("=")
            if not equals or not key.strip():
                raise EduGPTError(f"--model_args item {item.strip()!r} is not key=value; pass lm-eval's form, e.g. "
                                  "--model_args dtype=bfloat16,max_length=512.")
            pairs.append((key.strip(), value))
    keys = [key for key, _ in pairs]
    if "pretrained" in keys:
        raise EduGPTError("--model_args names pretrained=, which --model already sets; pass the model with --model.")
    if repeated := sorted({key for key in keys if keys.count(key) > 1}):
        raise EduGPTError(f"--model_args names {', '.join(repeated)} more than once; keep one value.")
    if isinstance(model_args, dict):
        extra = dict(pairs)
    else:
        extra = simple_parse_args_string(",".join(f"{key}={value}" for key, value in pairs))
    if revision and "revision" in extra and extra["revision"] != revision:
        raise EduGPTError(f"--revision {revision} and revision={extra['revision']} in --model_args disagree; pass one.")
    return {"pretrained": model, **({"revision": revision} if revision else {}), **extra}


def require_chat_model(model: str, revision: str | None = None) -> None:
    """For --apply_chat_template: a local model must carry a chat template (a pretrained edugpt model has none)."""
    if not Path(model).expanduser().is_dir():
        return  # a Hub id: lm-eval reports a missing template itself
    from edugpt.model.chat import load_model_tokenizer, require_chat_template

    require_chat_template(load_model_tokenizer(model, revision=revision), model)


def evaluate_checkpoint(
    model: str,
    tasks: list[str],
    *,
    limit: int | float | None = None,
    batch_size: int | str = 16,
    hellaswag_file: str | None = None,
    device: str | None = None,
    log_samples: bool = False,
    model_args: str | dict | None = None,
    revision: str | None = None,
    num_fewshot: int | None = None,
    apply_chat_template: bool | str = False,
    evaluation_tracker=None,
    include_path: str | None = None,
    metadata: dict | None = None,
    **options,
) -> dict:
    """lm-eval's `simple_evaluate` on its `hf` model, exactly as `lm_eval --model hf --model_args pretrained=MODEL,...`
    runs it, for a checkpoint dir or Hub id; returns lm-eval's results dict. `evaluation_tracker` (lm-eval's
    `EvaluationTracker`) records the run's settings for `save_results`. `include_path` and `metadata` are lm_eval's
    (its tasks see the model arguments merged with `metadata`, as lm_eval's CLI passes them); `options` are more
    `simple_evaluate` arguments (gen_kwargs, seeds, system_instruction ...)."""
    from lm_eval import simple_evaluate

    check_model_source(model)
    arguments = model_arguments(model, revision, model_args)
    if apply_chat_template:
        require_chat_model(model, revision)
    metadata = {**arguments, **(metadata or {})}
    manager = checked_task_manager(task_specs(tasks, hellaswag_file), include_path, metadata)
    specs = expand_task_specs(task_specs(tasks, hellaswag_file), manager)
    try:
        return simple_evaluate(
            model="hf", model_args=arguments, tasks=specs, num_fewshot=num_fewshot, batch_size=batch_size,
            device=device or default_device(), limit=limit, log_samples=log_samples,
            apply_chat_template=apply_chat_template, evaluation_tracker=evaluation_tracker, task_manager=manager,
            metadata=metadata, **options,
        )
    except ConnectionError as err:  # a task's dataset (or a Hub model) had to come from the Hub
        if hub_available():
            raise
        raise offline_data_error(specs, err) from None
    except OSError as err:  # missing weights / tokenizer, a revision or Hub id that does not exist
        raise EduGPTError(f"could not load model {model!r} for lm-eval ({_first_line(err)}).") from None
    except TypeError as err:  # a --model_args key that neither HFLM nor from_pretrained takes (a typo)
        unknown = [key for key in arguments if f"unexpected keyword argument '{key}'" in str(err)]
        if not unknown:
            raise
        raise EduGPTError(f"--model_args {unknown[0]}= is no argument of lm-eval's hf model or of the model's "
                          "from_pretrained; check its spelling (e.g. dtype, max_length, trust_remote_code).") from None


def _first_line(err: Exception) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


# ---------------------------------------------------------------------------------------------------- command line
# eval_harness.py's own options, which lm-eval's EvaluatorConfig does not have.
EDUGPT_OPTIONS = ("revision", "hellaswag_file")
DEFAULT_TASKS = ["hellaswag"]
DEFAULT_BATCH_SIZE = "16"


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes are one EduGPTError line (not the usage and SystemExit)."""

    def error(self, message):
        raise EduGPTError(f"{message}; see --help.")


def eval_parser() -> argparse.ArgumentParser:
    """`lm-eval run`'s own parser (lm_eval._cli.run.Run, lm-eval 0.4.13), so that eval_harness.py takes every option
    of the installed lm-eval as `lm_eval` takes it (--include_path, --gen_kwargs, --seed, --metadata,
    --system_instruction, --wandb_args, --trackio_args, --hf_hub_log_args ... and those of later releases), with
    edugpt's changes:

    --model/-M        a checkpoint folder or Hub id, loaded by lm-eval's `hf` model (lm_eval --model hf
                      --model_args pretrained=...); lm-eval's other model types do not load these checkpoints
    --model_args/-a   lm-eval's `key=value,...` or JSON, checked (`model_arguments`)
    --output_dir      the same option as --output_path/-o
    --revision, --hellaswag_file   edugpt's
    --tasks defaults to hellaswag and --batch_size to 16 (lm_eval: none and 1); no option may be abbreviated.
    """
    from lm_eval._cli.run import Run

    root = OneLineParser(prog="eval_harness.py")
    parser = Run.create(root.add_subparsers(parser_class=OneLineParser))._parser  # lm-eval keeps its parser there
    parser.prog = "eval_harness.py"
    parser.usage = "%(prog)s --model RUN [--tasks TASK ...] [--output_dir DIR] [lm_eval run's options]"
    parser.description = "lm_eval run on an edugpt checkpoint folder or Hub model, with lm_eval's own options."
    parser.epilog = None
    parser.allow_abbrev = False  # argparse would take `--hub_to=...` as whichever option it abbreviates
    _replace_option(parser, "--model", "-M", default=None, metavar="RUN",
                    help="Checkpoint directory (config.json, weights, tokenizer) or Hub model id; lm-eval's hf model "
                         "loads it.")
    _replace_option(parser, "--model_args", "-a", nargs="+", action="extend", default=None, metavar="<arg>",
                    help="More arguments of lm-eval's hf model: 'dtype=bfloat16,max_length=512' (or `key=val` "
                         "`key2=val2`, or JSON); pretrained= comes from --model.")
    _replace_option(parser, "--output_path", "--output_dir", "-o", default=None, metavar="<path>",
                    help="lm-eval's results layout goes here: <model name>/results_<time>.json (and "
                         "samples_<task>_<time>.jsonl). New files per evaluation; nothing is overwritten.")
    ours = parser.add_argument_group("edugpt")
    ours.add_argument("--revision", default=None, metavar="<branch>",
                      help="Branch, tag or commit of a Hub model, e.g. step-5000 (publish.py --branches).")
    ours.add_argument("--hellaswag_file", default=None, metavar="<path>",
                      help="Local HellaSwag-schema jsonl: `hellaswag` then runs on it, offline.")
    parser.set_defaults(batch_size=DEFAULT_BATCH_SIZE)
    return parser


def _replace_option(parser: argparse.ArgumentParser, *option_strings: str, **kwargs) -> None:
    """Define one of lm-eval's options anew, in its own --help group (argparse's "resolve" drops the old one)."""
    old = parser._option_string_actions[option_strings[0]]
    group = next(g for g in parser._action_groups if old in g._group_actions)
    group.conflict_handler = "resolve"
    group.add_argument(*option_strings, **kwargs)


def parse_eval_args(argv: list[str] | None = None) -> argparse.Namespace:
    """eval_harness.py's options: the command line over the `--config` recipe (lm_eval's YAML of option: value
    lines) over the defaults, as lm_eval merges them; --model_args checked and merged with --revision
    (`model_arguments`). Every mistake is one EduGPTError line."""
    import sys

    parser = eval_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parse(parser, argv)
    if args.config:
        given = _given_options(parser, argv)
        recipe = _recipe_values(parser, args.config)
        for name, value in recipe.items():
            if name not in given:
                setattr(args, name, value)
    if not args.model:
        raise EduGPTError("the following arguments are required: --model (a checkpoint folder or Hub model id); "
                          "see --help.")
    args.tasks = args.tasks or DEFAULT_TASKS
    args.model_args = model_arguments(args.model, args.revision, _model_args_value(args.model_args))
    batch_size = str(args.batch_size)
    if not (batch_size.startswith("auto") or batch_size.isdigit() and int(batch_size) > 0):
        raise EduGPTError(f"--batch_size must be a positive integer or 'auto', got {args.batch_size!r}.")
    args.batch_size = int(batch_size) if batch_size.isdigit() else batch_size
    if args.limit is not None:
        if args.limit <= 0:
            raise EduGPTError(f"--limit must be a number of items (or a fraction of them) above 0, got {args.limit}.")
        args.limit = int(args.limit) if args.limit >= 1 and args.limit == int(args.limit) else args.limit
    if args.num_fewshot is not None and args.num_fewshot < 0:
        raise EduGPTError(f"--num_fewshot must be 0 or more, got {args.num_fewshot}.")
    return args


def _parse(parser: argparse.ArgumentParser, tokens: list[str]) -> argparse.Namespace:
    args, unknown = parser.parse_known_args(tokens)
    if unknown:
        flags = [s.partition("=")[0] for s in unknown if s.startswith("-")]
        if not flags:
            raise EduGPTError(f"unexpected argument {unknown[0]!r}: every value follows its --option; see --help.")
        options = [o for o in parser._option_string_actions if o.startswith("--") and o not in ("--help", "--config")]
        close = difflib.get_close_matches(flags[0].replace("-", "_").lstrip("_"),
                                          [o.lstrip("-") for o in options], n=3)
        hint = f" (did you mean {' or '.join('--' + c for c in close)}?)" if close else ""
        raise EduGPTError(f"unknown option {flags[0]}{hint}; see --help for the options.")
    return args


def _given_options(parser: argparse.ArgumentParser, tokens: list[str]) -> set[str]:
    """The destinations of the options written on the command line (they override the recipe's)."""
    given = set()
    for token in tokens:
        action = parser._option_string_actions.get(token.partition("=")[0])
        if action is None and token.startswith("-") and not token.startswith("--"):
            action = parser._option_string_actions.get(token[:2])  # -L10, -sw
        if action is not None:
            given.add(action.dest)
    return given


def _recipe_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The options a `--config` YAML sets, parsed by the same parser as the command line (so `limit: ten` is the
    same error as `--limit ten`); an unknown key is one line with the closest names."""
    import json

    from edugpt.config.cli import _key_line, _read_recipe

    actions = {a.dest: a for a in parser._actions if a.option_strings and a.dest not in ("help", "config")}
    tokens: list[str] = []
    for key, value in _read_recipe(path).items():
        where = f"config file {path!r}{_key_line(path, key)}"
        action = actions.get(key)
        if action is None:
            close = difflib.get_close_matches(str(key), sorted(actions), n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise EduGPTError(f"{where}: unknown key {key!r}{hint}; see --help for the options.")
        flag = next(o for o in action.option_strings if o.startswith("--"))
        if value is None or value is False and (action.nargs == 0 or action.type is str):
            continue
        if value is True and action.nargs in (0, "?"):
            tokens.append(flag)
        elif isinstance(value, dict):
            tokens += [flag, json.dumps(value)]
        elif isinstance(value, list) and action.nargs in ("+", "*"):
            tokens += [flag, *map(str, value)]
        elif isinstance(value, (list, dict)) or action.nargs == 0:
            raise EduGPTError(f"{where}: {key} takes {'true or false' if action.nargs == 0 else 'one value'}, got "
                              f"{value!r:.80}; write `{key}: VALUE`.")
        else:
            tokens += [flag, str(value)]
    try:
        values = vars(_parse(parser, tokens))
    except EduGPTError as err:
        raise EduGPTError(f"config file {path!r}: {err}") from None
    return {actions[key].dest: values[actions[key].dest] for key in _read_recipe(path) if key in actions}


def _model_args_value(values: list[str] | None) -> str | dict | None:
    """--model_args as given: lm-eval's `key=value,...` items (joined), or one JSON object."""
    import json

    if not values:
        return None
    if values[0].lstrip().startswith("{"):
        if len(values) > 1:
            raise EduGPTError("--model_args takes one JSON object or key=value items, not both.")
        try:
            mapping = json.loads(values[0])
        except ValueError as err:
            raise EduGPTError(f"--model_args is not valid JSON ({err}); write it as '{{\"dtype\": \"bfloat16\"}}' "
                              "or dtype=bfloat16.") from None
        if not isinstance(mapping, dict):
            raise EduGPTError("--model_args JSON must be an object, e.g. '{\"dtype\": \"bfloat16\"}'.")
        return mapping
    return ",".join(values)


def evaluator_config(args: argparse.Namespace):
    """lm-eval's own `EvaluatorConfig` of the parsed options, built as lm_eval's CLI builds it (its checks and
    normalising: seeds, metadata, fewshot_as_multiturn, samples, trust_remote_code), on its hf model. Its
    `model_args` are the user's (pretrained and revision come from --model and --revision)."""
    from lm_eval.config.evaluate_config import EvaluatorConfig

    values = {key: value for key, value in vars(args).items() if key not in (*EDUGPT_OPTIONS, "config", "func")}
    extra = {key: value for key, value in args.model_args.items()
             if key != "pretrained" and not (key == "revision" and args.revision)}
    values.update(model="hf", model_args=extra)
    try:
        return EvaluatorConfig.from_cli(argparse.Namespace(**values))
    except (ValueError, TypeError) as err:
        raise EduGPTError(f"{_first_line(err).rstrip('.')}; see --help.") from None


def simple_evaluate_options(config) -> dict:
    """The `simple_evaluate` arguments that lm_eval's CLI derives from its config, beyond those `evaluate_checkpoint`
    sets itself. Taken by name, so an option a later lm-eval adds under its `simple_evaluate` name comes along."""
    import inspect

    from lm_eval import simple_evaluate

    own = {"model", "model_args", "tasks", "num_fewshot", "batch_size", "device", "limit", "log_samples",
           "apply_chat_template", "evaluation_tracker", "task_manager", "metadata", "cache_requests"}
    names = set(inspect.signature(simple_evaluate).parameters) - own
    options = {name: getattr(config, name) for name in sorted(names) if hasattr(config, name)}
    cache = config.cache_requests or {}
    options.update(cache_requests=cache.get("cache_requests", False),
                   rewrite_requests_cache=cache.get("rewrite_requests_cache", False),
                   delete_requests_cache=cache.get("delete_requests_cache", False))
    if config.seed:
        options.update(random_seed=config.seed[0], numpy_random_seed=config.seed[1],
                       torch_random_seed=config.seed[2], fewshot_random_seed=config.seed[3])
    return options


def result_loggers(config) -> list:
    """lm-eval's own WandbLogger / TrackioLogger for --wandb_args / --trackio_args, started before the evaluation as
    lm_eval's CLI starts them."""
    from lm_eval.loggers import TrackioLogger, WandbLogger

    loggers = []
    try:
        if config.wandb_args:
            loggers.append(WandbLogger(config.wandb_args, config.wandb_config_args))
        if config.trackio_args:
            loggers.append(TrackioLogger(config.trackio_args))
    except ImportError as err:
        raise EduGPTError(f"{_first_line(err)}") from None
    return loggers


def log_to_loggers(loggers: list, results: dict, samples: dict | None) -> None:
    """The results (and with --log_samples every item) to lm-eval's loggers, then each run finished, as lm_eval
    does; a logger's failure is logged, not raised (lm_eval's behaviour), the results are still written."""
    for result_logger in loggers:
        try:
            result_logger.post_init(results)
            result_logger.log_eval_result()
            if samples is not None:
                result_logger.log_eval_samples(samples)
        except Exception as err:  # noqa: BLE001 - lm_eval's CLI logs and goes on
            logger.warning("logging the results to %s failed: %s", type(result_logger).__name__, err)
        finally:
            run = getattr(result_logger, "run", None)
            if hasattr(result_logger, "finish"):
                result_logger.finish()
            elif run is not None:
                run.finish()


# ---------------------------------------------------------------------------------------------------------- output
def check_output_path(output_path: str | None, model: str) -> None:
    """Refuse, before evaluating, an --output_dir where lm-eval cannot write its layout: a file, a path under one, a
    folder that cannot be written. A folder that already holds results is fine (as for `lm_eval --output_path`: every
    evaluation adds timestamped files), and so is a name ending in .json, beside which lm-eval writes
    NAME_<timestamp>.json."""
    from lm_eval.utils import sanitize_model_name

    if not output_path:
        return
    path = Path(output_path).expanduser()
    target = path.parent if path.suffix == ".json" else path / sanitize_model_name(model)
    for folder in (target, *target.parents):
        if folder.is_dir():
            if not os.access(folder, os.W_OK | os.X_OK):
                raise EduGPTError(f"--output_dir {output_path}: {folder} is not writable; pass a folder you can write "
                                  "to.")
            return
        if folder.exists() or folder.is_symlink():  # a file, or a link to nothing: mkdir fails on either
            if folder == path:
                where = "is a file"
            elif folder in path.parents:
                where = f"lies under {folder}, which is a file"
            else:
                where = f"holds a file {folder.name} where lm-eval writes this model's results folder"
            raise EduGPTError(f"--output_dir {output_path} {where}; lm-eval writes a folder of results there "
                              "(OUTPUT/<model name>/results_<time>.json): pass a folder, new or one that holds "
                              "earlier results.")


def save_results(results: dict, evaluation_tracker) -> Path | None:
    """Write lm-eval's standard layout with its own `EvaluationTracker`, as `lm_eval --output_path` does:
    OUTPUT/<model name>/results_<timestamp>.json, plus samples_<task>_<timestamp>.jsonl with --log_samples. Each
    evaluation gets new files, so earlier results are never overwritten. Returns the results file (None without an
    output path).

    lm-eval catches its own write errors (a full disk, a folder it cannot write) and only logs them, which would leave
    a cut-off results file in place and a run that "succeeded". So the tracker writes into a fresh folder beside the
    results; its files are checked (the results parse as JSON, every task has its samples file) and then moved into
    place, none of them over an existing file. When anything fails, that folder and the folders this call created go
    again, and the error says why."""
    samples = results.pop("samples", None)
    if not evaluation_tracker.output_path:
        evaluation_tracker.save_results_aggregated(results=results, samples=samples)
        return None
    requested = Path(evaluation_tracker.output_path).expanduser()
    destination = requested.parent if requested.suffix == ".json" else requested  # where lm-eval's layout starts
    created: list[Path] = []  # the folders this call made, outermost first
    moved: list[Path] = []
    staging = None
    try:
        created += _make_dirs(destination)
        staging = Path(tempfile.mkdtemp(prefix=".lm-eval-unsaved-", dir=destination))
        evaluation_tracker.output_path = str(staging / requested.name if requested.suffix == ".json" else staging)
        with _lm_eval_save_errors() as save_errors:
            evaluation_tracker.save_results_aggregated(results=results, samples=samples)
            for task_name in results["configs"] if samples else ():
                evaluation_tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
        date_id = getattr(evaluation_tracker, "date_id", None)  # set by lm-eval just before it writes
        model_folder = staging if requested.suffix == ".json" else \
            staging / evaluation_tracker.general_config_tracker.model_name_sanitized
        written = model_folder / (f"{requested.stem}_{date_id}.json" if requested.suffix == ".json"
                                  else f"results_{date_id}.json")
        tasks = list(results["configs"]) if samples else []
        missing = [task for task in tasks if not (model_folder / f"samples_{task}_{date_id}.jsonl").is_file()]
        if save_errors or date_id is None or not _whole_json(written) or missing:
            reason = (save_errors[-1] if save_errors else
                      f"no samples file for {', '.join(missing)}" if missing else f"no whole {written.name}")
            raise EduGPTError(_save_failure(destination, reason))
        for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            target = destination / file.relative_to(staging)
            created += _make_dirs(target.parent)
            _move_to_new_name(file, target)
            moved.append(target)
        saved = destination / written.relative_to(staging)
    except BaseException as err:
        for target in moved:
            target.unlink(missing_ok=True)
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        for folder in reversed(created):  # innermost first; rmdir leaves a folder that holds anything else
            with contextlib.suppress(OSError):
                folder.rmdir()
        if isinstance(err, OSError):  # making the folders or moving the files (lm-eval catches its own errors)
            raise EduGPTError(_save_failure(destination, f"{type(err).__name__}: {err}")) from None
        raise
    finally:
        evaluation_tracker.output_path = str(requested)
    shutil.rmtree(staging, ignore_errors=True)
    return saved


def _save_failure(destination: Path, reason: str) -> str:
    from edugpt.io.safefs import NO_SPACE_TEXT

    if any(text.lower() in reason.lower() for text in NO_SPACE_TEXT):
        return (f"no space left on the device while lm-eval wrote its results into {destination} ({reason}); nothing "
                "was saved: free space there (or pass another --output_dir) and run again.")
    return (f"lm-eval could not write its results into {destination} ({reason}); nothing was saved: pass an "
            "--output_dir you can write to and run again.")


def _move_to_new_name(source: Path, target: Path) -> None:
    """Move `source` to `target`, failing (FileExistsError) rather than replacing a file already there: a hard link
    refuses an existing name, which a rename would silently replace. On a filesystem without hard links, a rename
    after checking the name is free (the names hold a timestamp to the microsecond)."""
    try:
        os.link(source, target)
    except OSError as err:
        if err.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        if target.exists() or target.is_symlink():
            raise FileExistsError(errno.EEXIST, "exists already", str(target)) from None
        os.rename(source, target)
        return
    source.unlink()


def _make_dirs(folder: Path) -> list[Path]:
    """mkdir -p `folder`; returns the folders it created, outermost first."""
    missing = [f for f in (folder, *folder.parents) if not f.is_dir()][::-1]
    for f in missing:
        f.mkdir()
    return missing


def _whole_json(path: Path) -> bool:
    import json

    try:
        json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return True


@contextlib.contextmanager
def _lm_eval_save_errors():
    """Collect the errors lm-eval's EvaluationTracker catches while saving: it logs "Could not save ..." as a warning
    and then the exception's repr at INFO. Yields the list of those reprs."""
    log = logging.getLogger("lm_eval.loggers.evaluation_tracker")
    errors: list[str] = []
    failed = False

    class Collect(logging.Handler):
        def emit(self, record):
            nonlocal failed
            message = record.getMessage()
            if record.levelno >= logging.WARNING and message.startswith("Could not save"):
                failed = True
            elif failed and record.levelno == logging.INFO:
                errors.append(message)
                failed = False

    handler, level = Collect(logging.INFO), log.level
    log.addHandler(handler)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)
    try:
        yield errors
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


def results_tables(results: dict) -> str:
    """lm-eval's own printed tables (`lm_eval.utils.make_table`): tasks, and groups when there are any."""
    from lm_eval.utils import make_table

    tables = [make_table(results)]
    if "groups" in results:
        tables.append(make_table(results, "groups"))
    return "\n".join(tables)


# ------------------------------------------------------------------------------------------------- in-loop scoring


@contextlib.contextmanager
def preserved_training_state(model: torch.nn.Module):
    """Restore RNG streams, every module's train/eval flag and grad mode afterwards: evaluation must leave no trace."""
    python_state, numpy_state = random.getstate(), np.random.get_state()
    torch_state = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    modes = [(module, module.training) for module in model.modules()]
    grad_enabled = torch.is_grad_enabled()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        for module, training in modes:
            module.training = training
        torch.set_grad_enabled(grad_enabled)


# lm-eval modules whose progress bars (building contexts, tokenizing, scoring) an in-training evaluation hides.
LM_EVAL_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


@contextlib.contextmanager
def quiet_lm_eval():
    """Keep an in-training evaluation to its one log record: lm-eval warns about pre-built models and custom datasets
    on every call, the tokenizer about long inputs, `datasets` draws a bar for each `process_docs` map, and lm-eval
    draws three bars of its own, which break Trainer's progress bar. lm-eval's `evaluate()` has no switch for its bars,
    so the `tqdm` its modules call is swapped for a disabled one while this block runs."""
    import importlib

    from datasets.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from tqdm.auto import tqdm

    def silent_tqdm(*args, **kwargs):
        return tqdm(*args, **{**kwargs, "disable": True})

    # HFLM cuts every request to the model's context itself, from the left; the tokenizer's "longer than the specified
    # maximum sequence length" warning about the uncut text is moot here.
    quieted = [logging.getLogger("lm_eval"), logging.getLogger("transformers.tokenization_utils_base")]
    levels = [logger.level for logger in quieted]
    bars_were_off = are_progress_bars_disabled()
    swapped = []
    for name in LM_EVAL_TQDM_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            swapped.append((module, module.tqdm))
            module.tqdm = silent_tqdm
    for logger in quieted:
        logger.setLevel(logging.ERROR)
    disable_progress_bars()
    try:
        yield
    finally:
        for module, original in swapped:
            module.tqdm = original
        for logger, level in zip(quieted, levels):
            logger.setLevel(level)
        if not bars_were_off:
            enable_progress_bars()


def score_task(model, tokenizer, task, *, limit: int | None, batch_size: int, accelerator=None) -> dict | None:
    """Score an in-memory causal LM on one lm-eval task exactly as `lm_eval` would; returns lm-eval's results dict.

    This is `simple_evaluate` minus what does not change the numbers and would cost seconds per call (seeding the
    global RNGs, collecting environment info, bootstrap stderrs). HFLM batches the requests and keeps only each
    continuation's summed log-likelihood, so memory holds one batch of logits at a time. HFLM gives `tokenizer` a pad
    token if it has none: pass a copy of the run's tokenizer.

    With a multi-process `accelerator` (the Trainer's) every process must call this: lm-eval's own data parallelism
    then shards the items (process p scores items p, p+P, ...), pads every process to the same number of requests
    and gathers the scores, which only process 0 gets (the others get None). HFLM treats a pre-built model as
    single-process, so its rank, world size and accelerator are set here. Each process runs the same number of
    forward passes, which a sharded (FSDP) model needs: every forward gathers the parameters with the other
    processes. For that, requests sharing a context are not merged into one row (HFLM's `logits_cache`), since the
    merges would differ between processes; the scores are the same.
    """
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    sharded = accelerator is not None and accelerator.num_processes > 1
    with quiet_lm_eval(), preserved_training_state(model):
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, logits_cache=not sharded)
        if sharded:
            lm._rank, lm._world_size, lm.accelerator = accelerator.process_index, accelerator.num_processes, accelerator
        if task.get_config("num_fewshot") is None:  # what simple_evaluate does for 0-shot tasks
            task.set_config(key="num_fewshot", value=0)
        return evaluate(lm=lm, task_dict={"tasks": {task.config.task: task}}, limit=limit, bootstrap_iters=0,
                        log_samples=True)


def per_item_scores(results: dict, task_name: str) -> list[dict]:
    """doc_id, acc, acc_norm and the choices' log-likelihoods of every scored item (small: no logits)."""
    items = []
    for sample in sorted(results["samples"][task_name], key=lambda s: s["doc_id"]):
        items.append({
            "doc_id": sample["doc_id"],
            "acc": float(sample["acc"]),
            "acc_norm": float(sample["acc_norm"]),
            "loglikelihoods": [float(resp[0]) for resp in sample["filtered_resps"]],
        })
    return items


class HellaSwagCallback(TrainerCallback):
    """Every `every_steps` steps, score the in-memory model on the first `limit` HellaSwag items (None: all) with
    lm-eval's own HFLM and task; `trainer.log` `hellaswag/acc` and `hellaswag/acc_norm` (console, report_to,
    metrics.jsonl).

    `hellaswag_file` selects a local HellaSwag-format jsonl (task `hellaswag_local`); without it lm-eval's Hub
    `hellaswag` task is used, and an offline run fails here, before training starts. The items are loaded once.
    Scoring runs under `preserved_training_state`, so the training trajectory is the same with or without it.
    `batch_size` defaults to the run's `per_device_eval_batch_size`.

    Under several processes the items are shared out (`score_task`): each process scores about 1/P of them, through
    its own replica under DDP or through the sharded module under FSDP (no process ever holds the whole model), and
    process 0 gathers the scores, item for item the ones a single process gets. Process 0 logs, and tells the others.
    """

    def __init__(self, trainer, every_steps: int, limit: int | None, hellaswag_file: str | None = None,
                 batch_size: int | None = None):
        if every_steps <= 0 or (limit is not None and limit <= 0):
            raise EduGPTError(
                f"HellaSwag every {every_steps} steps on {limit} items: both must be positive (hellaswag_steps, "
                "hellaswag_limit); set hellaswag_steps 0 to turn HellaSwag off, hellaswag_limit null for all items."
            )
        self.trainer = trainer
        self.every_steps = every_steps
        self.limit = limit
        self.batch_size = batch_size or trainer.args.per_device_eval_batch_size
        # HFLM sets a pad token on the tokenizer it is given: hand it a copy so the run's saved tokenizer is unchanged.
        self.tokenizer = copy.deepcopy(trainer.processing_class) if trainer.processing_class is not None else None
        if self.tokenizer is None:
            from edugpt.model.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer("gpt2")
        with quiet_lm_eval():
            if hellaswag_file is not None:
                from lm_eval.api.task import ConfigurableTask

                self.task = ConfigurableTask(config=local_hellaswag_config(hellaswag_file, max_items=limit))
            else:
                self.task = hub_hellaswag_task(max_items=limit)
        self.last_items: list[dict] = []  # per-item scores of the latest evaluation (process 0), for tests and debugging
        self.items_per_process: list[int] = []  # how many items each process scored in the latest evaluation

    def evaluate(self, model) -> dict[str, float]:
        from accelerate.utils import broadcast_object_list, gather_object

        accelerator = self.trainer.accelerator
        results = score_task(model, self.tokenizer, self.task, limit=self.limit, batch_size=self.batch_size,
                             accelerator=accelerator)
        scored_here = len({instance.doc_id for instance in self.task.instances})
        name = self.task.config.task
        scores = None
        if results is not None:
            self.last_items = per_item_scores(results, name)
            metrics = results["results"][name]
            scores = {"hellaswag/acc": metrics["acc,none"], "hellaswag/acc_norm": metrics["acc_norm,none"]}
        if accelerator.num_processes == 1:
            self.items_per_process = [scored_here]
            return scores
        self.items_per_process = gather_object([scored_here])
        return broadcast_object_list([scores], from_process=0)[0]

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            scores = self.evaluate(model if model is not None else self.trainer.model)
            if len(self.items_per_process) > 1 and state.is_world_process_zero:
                logger.info("HellaSwag at step %d: %d items scored by %d processes (%s)", state.global_step,
                            sum(self.items_per_process), len(self.items_per_process),
                            " + ".join(map(str, self.items_per_process)))
            # Trainer.log -> on_log clears control.should_log, which would drop this step's train-loss record.
            should_log = control.should_log
            self.trainer.log(scores)
            control.should_log = should_log

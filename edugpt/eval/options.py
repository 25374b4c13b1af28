"""eval_harness.py's command line: `lm-eval run`'s own parser with edugpt's changes (--model is a checkpoint folder or
Hub id, --output_dir, --revision, --hellaswag_file), a `--config` recipe under the command line as lm_eval merges them,
and lm-eval's own EvaluatorConfig checks; every mistake is one EduGPTError line. argparse's and lm-eval's private
names are reached through edugpt.train.trainer_hooks.
"""

from __future__ import annotations

import argparse
import difflib

from edugpt.errors import EduGPTError
from edugpt.eval.harness import first_line, model_arguments
from edugpt.train.trainer_hooks import argparse_actions, argparse_option_actions, lm_eval_run_parser, replace_argparse_option

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
    root = OneLineParser(prog="eval_harness.py")
    parser = lm_eval_run_parser(root.add_subparsers(parser_class=OneLineParser))
    parser.prog = "eval_harness.py"
    parser.usage = "%(prog)s --model RUN [--tasks TASK ...] [--output_dir DIR] [lm_eval run's options]"
    parser.description = "lm_eval run on an edugpt checkpoint folder or Hub model, with lm_eval's own options."
    parser.epilog = None
    parser.allow_abbrev = False  # argparse would take `--hub_to=...` as whichever option it abbreviates
    replace_argparse_option(parser, "--model", "-M", default=None, metavar="RUN",
                    help="Checkpoint directory (config.json, weights, tokenizer) or Hub model id; lm-eval's hf model "
                         "loads it.")
    replace_argparse_option(parser, "--model_args", "-a", nargs="+", action="extend", default=None, metavar="<arg>",
                    help="More arguments of lm-eval's hf model: 'dtype=bfloat16,max_length=512' (or `key=val` "
                         "`key2=val2`, or JSON); pretrained= comes from --model.")
    replace_argparse_option(parser, "--output_path", "--output_dir", "-o", default=None, metavar="<path>",
                    help="lm-eval's results layout goes here: <model name>/results_<time>.json (and "
                         "samples_<task>_<time>.jsonl). New files per evaluation; nothing is overwritten.")
    ours = parser.add_argument_group("edugpt")
    ours.add_argument("--revision", default=None, metavar="<branch>",
                      help="Branch, tag or commit of a Hub model, e.g. step-5000 (publish.py --branches).")
    ours.add_argument("--hellaswag_file", default=None, metavar="<path>",
                      help="Local HellaSwag-schema jsonl: `hellaswag` then runs on it, offline.")
    parser.set_defaults(batch_size=DEFAULT_BATCH_SIZE)
    return parser


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
        options = [o for o in argparse_option_actions(parser) if o.startswith("--") and o not in ("--help", "--config")]
        close = difflib.get_close_matches(flags[0].replace("-", "_").lstrip("_"),
                                          [o.lstrip("-") for o in options], n=3)
        hint = f" (did you mean {' or '.join('--' + c for c in close)}?)" if close else ""
        raise EduGPTError(f"unknown option {flags[0]}{hint}; see --help for the options.")
    return args


def _given_options(parser: argparse.ArgumentParser, tokens: list[str]) -> set[str]:
    """The destinations of the options written on the command line (they override the recipe's)."""
    given = set()
    for token in tokens:
        action = argparse_option_actions(parser).get(token.partition("=")[0])
        if action is None and token.startswith("-") and not token.startswith("--"):
            action = argparse_option_actions(parser).get(token[:2])  # -L10, -sw
        if action is not None:
            given.add(action.dest)
    return given


def _recipe_values(parser: argparse.ArgumentParser, path: str) -> dict:
    """The options a `--config` YAML sets, parsed by the same parser as the command line (so `limit: ten` is the
    same error as `--limit ten`); an unknown key is one line with the closest names."""
    import json

    from edugpt.config.cli import _key_line, _read_recipe

    actions = {a.dest: a for a in argparse_actions(parser) if a.option_strings and a.dest not in ("help", "config")}
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
        raise EduGPTError(f"{first_line(err).rstrip('.')}; see --help.") from None


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


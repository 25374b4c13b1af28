"""Shared entry-point plumbing: YAML recipe + CLI overrides that are loud on typos, one logging setup, and user
errors without tracebacks."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from typing import Any

from edugpt.errors import EduGPTError

# Exit status for a user's mistake (argparse uses 2 for usage errors too).
USER_ERROR_EXIT = 2


def run(main: Callable[[], Any]) -> None:
    """Run an entry point's `main()`; turn an `EduGPTError` into one line on stderr and exit status 2."""
    try:
        main()
    except EduGPTError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(USER_ERROR_EXIT)


def setup_logging(process_index: int = 0) -> None:
    """The one logging setup of every entry point: INFO on the main process, warnings only on the others (so N ranks
    do not print N copies), the same format everywhere. transformers' and datasets' own loggers follow."""
    import datasets
    import transformers

    level = logging.INFO if process_index == 0 else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    transformers.utils.logging.set_verbosity(level)
    datasets.utils.logging.set_verbosity(logging.WARNING if process_index == 0 else logging.ERROR)


def parse_config(dataclass_types: Sequence[type], argv: Sequence[str] | None = None) -> tuple:
    """Parse `--config recipe.yaml` plus command-line overrides into the given dataclasses, as TRL scripts do.

    Unknown keys in the YAML are an error listing the valid ones (TrlParser with `fail_with_unknown_args=True`);
    unknown command-line flags are argparse's usual usage error.
    """
    from trl import TrlParser

    args = list(sys.argv[1:] if argv is None else argv)
    if "--config" in args:
        index = args.index("--config")
        if index + 1 >= len(args):
            raise EduGPTError("--config needs a path to a YAML recipe, e.g. --config configs/smoke.yaml.")
        path = args[index + 1]
        if not os.path.isfile(path):
            raise EduGPTError(f"config file {path!r} does not exist; pass one of the YAML recipes in configs/.")
    parser = TrlParser(list(dataclass_types))
    try:
        return tuple(parser.parse_args_and_config(args=args, fail_with_unknown_args=True))
    except ValueError as err:
        if "Unknown arguments from config file" not in str(err) and "must contain a YAML mapping" not in str(err):
            raise
        valid = sorted({f.name for cls in dataclass_types for f in fields(cls) if f.init})
        raise EduGPTError(f"{str(err).rstrip('.')}. Valid keys are: {', '.join(valid)}.") from None

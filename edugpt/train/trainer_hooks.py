"""Every use of another library's private API (transformers, TRL, lm-eval, argparse, datasets) lives in this file,
as TRL keeps its patches in one place. Each hook says which private names it relies on with `@touches(...)`;
tests/unit/test_trainer_hooks.py resolves every such name in the installed versions, so an upgrade that renames or
removes one fails that test loudly instead of silently changing what a run does.

Call sites import the hook from here and never reach into a private name themselves.
"""

from __future__ import annotations

from collections.abc import Callable

# (dotted name of a private attribute, the hook that relies on it): filled by @touches at import.
TOUCHED: list[tuple[str, str]] = []


def touches(*names: str) -> Callable:
    """Register the private names (as "package.module:Object.attribute") the decorated hook relies on."""

    def register(hook: Callable) -> Callable:
        TOUCHED.extend((name, hook.__qualname__) for name in names)
        return hook

    return register

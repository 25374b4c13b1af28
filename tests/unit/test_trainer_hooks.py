"""Every private name edugpt.train.trainer_hooks relies on still exists in the installed library versions."""

import importlib
import inspect

import pytest

from edugpt.train import trainer_hooks


def resolve(name: str):
    """"package.module:Object.attribute" -> the object; an attribute set in __init__ is found in its source."""
    module_name, _, attributes = name.partition(":")
    found = importlib.import_module(module_name)
    for part in attributes.split(".") if attributes else []:
        if hasattr(found, part):
            found = getattr(found, part)
        elif inspect.isclass(found) and f"self.{part}" in inspect.getsource(found):
            return found  # an instance attribute Trainer / HFLM / argparse sets in its __init__
        else:
            raise AttributeError(f"{name}: no {part!r} in {found!r}")
    return found


def test_hooks_declare_what_they_touch():
    assert trainer_hooks.TOUCHED, "no hook registered its private names"
    hooks = {hook for _, hook in trainer_hooks.TOUCHED}
    defined = {name for name, value in vars(trainer_hooks).items() if callable(value) and not name.startswith("_")
               and getattr(value, "__module__", None) == trainer_hooks.__name__} - {"touches"}
    assert defined <= {hook.split(".")[0] for hook in hooks}, f"hooks without @touches: {defined}"


@pytest.mark.parametrize("name", sorted({name for name, _ in trainer_hooks.TOUCHED}))
def test_every_private_name_still_exists(name):
    resolve(name)

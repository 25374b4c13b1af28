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


# --- eval: lm-eval's task YAML reader, its `run` parser, HFLM sharding, its progress bars; argparse's tables ---
@touches("lm_eval.tasks._yaml_loader:load_yaml")
def load_lm_eval_task_yaml(path, resolve_func: bool = True) -> dict:
    """One task YAML read as lm-eval reads its own (`!function` tags resolved to functions with `resolve_func`):
    lm-eval has no public reader for a single task file."""
    from lm_eval.tasks._yaml_loader import load_yaml

    return load_yaml(path, resolve_func=resolve_func)


@touches("lm_eval._cli.run:Run.create", "lm_eval._cli.run:Run._parser")
def lm_eval_run_parser(subparsers):
    """`lm-eval run`'s own argparse parser (lm_eval._cli.run.Run), added to `subparsers`: lm-eval keeps it in the
    command's `_parser`, so eval_harness.py takes every option of the installed lm-eval as `lm_eval` takes it."""
    from lm_eval._cli.run import Run

    return Run.create(subparsers)._parser


@touches("argparse:ArgumentParser._option_string_actions")
def argparse_option_actions(parser) -> dict:
    """`parser`'s table of option strings (`--limit`, `-L` ...) to their actions, argparse's own (read only)."""
    return parser._option_string_actions


@touches("argparse:ArgumentParser._actions")
def argparse_actions(parser) -> list:
    """Every action of `parser`, in the order they were added, argparse's own list (read only)."""
    return parser._actions


@touches("argparse:ArgumentParser._option_string_actions", "argparse:ArgumentParser._action_groups",
         "argparse:_ArgumentGroup._group_actions")
def replace_argparse_option(parser, *option_strings: str, **kwargs) -> None:
    """Define one of `parser`'s options anew, in its own --help group (argparse's "resolve" drops the old one)."""
    old = parser._option_string_actions[option_strings[0]]
    group = next(g for g in parser._action_groups if old in g._group_actions)
    group.conflict_handler = "resolve"
    group.add_argument(*option_strings, **kwargs)


@touches("lm_eval.models.huggingface:HFLM._rank", "lm_eval.models.huggingface:HFLM._world_size")
def shard_prebuilt_hflm(lm, accelerator) -> None:
    """Make an HFLM built on an in-memory model one of `accelerator`'s processes (rank, world size, accelerator):
    HFLM treats a pre-built model as single-process and has no public way to say otherwise; lm-eval then shares the
    requests out by rank and gathers the scores on process 0 itself."""
    lm._rank, lm._world_size, lm.accelerator = accelerator.process_index, accelerator.num_processes, accelerator


# lm-eval modules whose progress bars (building contexts, tokenizing, scoring) an in-training evaluation hides.
LM_EVAL_TQDM_MODULES = ("lm_eval.api.task", "lm_eval.api.model", "lm_eval.models.huggingface")


@touches(*(f"{name}:tqdm" for name in LM_EVAL_TQDM_MODULES))
def swap_lm_eval_tqdm(replacement: Callable) -> Callable[[], None]:
    """Swap the module-level `tqdm` that lm-eval's modules (LM_EVAL_TQDM_MODULES) call for `replacement`: lm-eval's
    `evaluate()` has no switch for its bars. Returns the function that puts the originals back."""
    import importlib

    swapped = []
    for name in LM_EVAL_TQDM_MODULES:
        module = importlib.import_module(name)
        if hasattr(module, "tqdm"):
            swapped.append((module, module.tqdm))
            module.tqdm = replacement

    def restore() -> None:
        for module, original in swapped:
            module.tqdm = original

    return restore


# --- hub: Trainer's pushes routed through edugpt.hub (edugpt.hub.trainer_pushes.TrainerPushes) ---
@touches("transformers:Trainer._push_from_checkpoint", "transformers:Trainer.push_to_hub")
def route_trainer_pushes(trainer, push_from_checkpoint: Callable[[str], None], push_to_hub: Callable) -> None:
    """Replace, on this one Trainer instance (TRL's SFTTrainer and DPOTrainer too, hence no subclass), Trainer's
    upload at each save and its `push_to_hub` with edugpt's: Trainer calls `_push_from_checkpoint(checkpoint_folder)`
    inside `_save_checkpoint` (hub_strategy), before the on_save callbacks, and offers no public way to choose what
    it uploads (all of output_dir)."""
    trainer._push_from_checkpoint = push_from_checkpoint
    trainer.push_to_hub = push_to_hub


@touches("transformers.trainer:Trainer.save_model")
def save_model_without_push(trainer, output_dir: str | None = None) -> None:
    """`trainer.save_model(output_dir)` without the push save_model itself makes with push_to_hub ("Model save"), as
    Trainer.push_to_hub calls it: with the private keyword `_internal_call=True` (edugpt.hub.trainer_pushes and
    edugpt.run.finish push the run themselves). The unit test resolves save_model only, not the keyword; save_model
    takes no **kwargs, so a release without `_internal_call` fails here with a TypeError rather than pushing twice."""
    trainer.save_model(output_dir, _internal_call=True)


# --- train: Trainer's callback order, its train sampler, the LR scheduler's last lr; the recipe parser's groups ---
@touches("transformers.trainer:Trainer.callback_handler", "transformers.trainer_callback:CallbackHandler.callbacks")
def trainer_callbacks(trainer) -> list:
    """`trainer`'s callbacks in the order Trainer calls them (a copy of its CallbackHandler's own list)."""
    return list(trainer.callback_handler.callbacks)


@touches("transformers.trainer:Trainer.callback_handler", "transformers.trainer_callback:CallbackHandler.callbacks")
def insert_trainer_callbacks(trainer, index: int, *callbacks) -> None:
    """Put `callbacks` at `index` of the order in which `trainer` calls its callbacks: CallbackHandler has no
    insert() (add_callback appends), and its list is the documented order of calls, so they are placed in it directly."""
    trainer.callback_handler.callbacks[index:index] = callbacks


@touches("transformers.trainer:Trainer._get_train_sampler")
def trainer_with_train_sampler(trainer_class: type, make_sampler: Callable) -> type:
    """A subclass of `trainer_class` whose train sampler is `make_sampler(trainer, dataset)`, or Trainer's own where
    that returns None: Trainer chooses the sampler inside `_get_train_sampler`, and no argument or callback replaces it."""

    class WithTrainSampler(trainer_class):
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            sampler = make_sampler(self, dataset)
            return super()._get_train_sampler(train_dataset) if sampler is None else sampler

    return WithTrainSampler


@touches("torch.optim.lr_scheduler:LRScheduler._last_lr")
def set_scheduler_last_lr(lr_scheduler, lrs: list[float]) -> None:
    """Make `lrs` what `lr_scheduler.get_last_lr()` returns (what Trainer logs as learning_rate) after its param
    groups' lr were set by hand: torch's scheduler keeps the value of its last `step()` in `_last_lr` until the next."""
    lr_scheduler._last_lr = list(lrs)


@touches("transformers.hf_argparser:HfArgumentParser._add_dataclass_arguments", "argparse:ArgumentParser._actions",
         "argparse:ArgumentParser._optionals", "argparse:_ArgumentGroup._group_actions")
def parser_with_dataclass_groups(parser_class: type, group_of: Callable[[type], dict]) -> type:
    """A subclass of `parser_class` (an HfArgumentParser) that lists each dataclass's options in --help under a group
    of their own, `add_argument_group(**group_of(dtype))`: HfArgumentParser adds them in its private
    `_add_dataclass_arguments`, to argparse's general options group, and argparse has no public way to move an action
    from one group to another."""

    class WithDataclassGroups(parser_class):
        def _add_dataclass_arguments(self, dtype):
            first = len(self._actions)
            super()._add_dataclass_arguments(dtype)
            group = self.add_argument_group(**group_of(dtype))
            for action in self._actions[first:]:
                if action in self._optionals._group_actions:
                    self._optionals._group_actions.remove(action)
                    group._group_actions.append(action)

    return WithDataclassGroups


# --- run: loading a checkpoint's state, Trainer's model card, TensorBoard's folder ---
@touches("transformers.trainer:Trainer._load_from_checkpoint", "transformers.trainer:Trainer._load_optimizer_and_scheduler",
         "transformers.trainer:Trainer._load_scaler", "transformers.trainer:Trainer._load_rng_state",
         "transformers.trainer:Trainer._load_callback_state")
def raise_checkpoint_load_errors_as(trainer, error_class: type[Exception]) -> None:
    """On this Trainer instance, wrap the methods that read the checkpoint it resumes from (model weights, optimizer
    and scheduler, grad scaler, RNG states, callback state) so that an exception raised inside one is re-raised as
    `error_class(err)` (from err): edugpt.run.lifecycle tells "the checkpoint's saved state did not load" from
    "training failed" by that type. (FSDP's load_fsdp_model / load_fsdp_optimizer run inside the first two.)"""
    import functools

    for name in ("_load_from_checkpoint", "_load_optimizer_and_scheduler", "_load_scaler", "_load_rng_state",
                 "_load_callback_state"):
        method = getattr(trainer, name)

        @functools.wraps(method)
        def loading(*args, _method=method, **kwargs):
            try:
                return _method(*args, **kwargs)
            except error_class:
                raise
            except Exception as err:
                raise error_class(err) from err

        setattr(trainer, name, loading)


@touches("transformers.trainer:Trainer.create_model_card")
def replace_trainer_model_card(trainer, write_card: Callable) -> None:
    """Make this Trainer instance call `write_card(*args, **kwargs)` wherever it would write its own generic model
    card (TRL calls `create_model_card` at every checkpoint save, over edugpt's card)."""
    trainer.create_model_card = write_card


@touches("transformers.trainer:Trainer.callback_handler", "transformers.trainer_callback:CallbackHandler.callbacks",
         "transformers.integrations.integration_utils:TensorBoardCallback.logging_dir")
def tensorboard_logging_dirs(trainer) -> list[str]:
    """The folders this Trainer's TensorBoardCallback writes its event files to (none without one, or before it set
    its folder at the start of training)."""
    return [callback.logging_dir for callback in trainer.callback_handler.callbacks
            if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None)]

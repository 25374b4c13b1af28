"""lm-eval-harness on saved checkpoints: what eval_harness.py runs, exactly as `lm_eval --model hf` would.

Everything is scored by lm-eval itself (its `hf` model and its task definitions), never by a scorer of our own: the
original project normalised HellaSwag by token count and read 29.6 where lm-eval reads 31.1 for the same GPT-2.
`evaluate_checkpoint` checks the model source and its --model_args here, the task names in edugpt.eval.task_catalog,
and hands the rest to lm-eval's `simple_evaluate`. The command line is edugpt.eval.options (lm-eval run's own parser),
the results on disk edugpt.eval.results; the same numbers inside training come from edugpt.eval.hellaswag.
"""

from __future__ import annotations

from pathlib import Path

import torch

from edugpt.errors import EduGPTError
from edugpt.eval.task_catalog import checked_task_manager, expand_task_specs, offline_data_error, task_specs
from edugpt.io.net import hub_available


def check_model_source(model: str) -> None:
    """Fail early and clearly unless `model` is a saved causal LM directory or a Hub id we can reach."""
    from edugpt.io.net import looks_like_hub_id, missing_local_path
    from edugpt.model.saved import require_saved_model

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
        raise EduGPTError(f"could not load model {model!r} for lm-eval ({first_line(err)}).") from None
    except TypeError as err:  # a --model_args key that neither HFLM nor from_pretrained takes (a typo)
        unknown = [key for key in arguments if f"unexpected keyword argument '{key}'" in str(err)]
        if not unknown:
            raise
        raise EduGPTError(f"--model_args {unknown[0]}= is no argument of lm-eval's hf model or of the model's "
                          "from_pretrained; check its spelling (e.g. dtype, max_length, trust_remote_code).") from None


def first_line(err: Exception) -> str:
    """The first line of an error's message (or its type), for a one-line EduGPTError."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__

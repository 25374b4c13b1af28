"""Which lm-eval task a name means, for the checkpoint evaluation (edugpt.eval.harness) and the in-loop one
(edugpt.eval.hellaswag) alike: the task definitions in edugpt/eval/tasks/ (TASKS_DIR), among them `hellaswag_local`,
lm-eval's hellaswag definition over a local HellaSwag-format jsonl; the user's --include_path; lm-eval's own task YAMLs
only when a name is not found there; lm-eval's Hub `hellaswag`. An unknown task name and task data that had to come
from an unreachable Hub are one EduGPTError line.
"""

from __future__ import annotations

import os
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.eval.tasks import LOCAL_HELLASWAG_TASK
from edugpt.io.net import hub_available
from edugpt.train.trainer_hooks import load_lm_eval_task_yaml

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
LOCAL_HELLASWAG_YAML = TASKS_DIR / f"{LOCAL_HELLASWAG_TASK}.yaml"
HELLASWAG = "hellaswag"


def local_hellaswag_config(hellaswag_file: str | os.PathLike, max_items: int | None = None) -> dict:
    """The `hellaswag_local` task config (edugpt/eval/tasks/hellaswag_local.yaml) reading `hellaswag_file`."""
    from edugpt.eval.tasks.hellaswag_local import read_hellaswag_jsonl

    read_hellaswag_jsonl(hellaswag_file, max_items=max_items)  # fail here, with line and field, not inside lm-eval
    config = dict(load_lm_eval_task_yaml(LOCAL_HELLASWAG_YAML, resolve_func=True))
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

    expanded: list[str | dict] = []
    for spec in specs:
        if isinstance(spec, dict):
            found = [spec]
        elif spec.endswith(".yaml"):
            paths = sorted(glob.glob(str(Path(spec).absolute())))
            found = [load_lm_eval_task_yaml(path, resolve_func=True) for path in paths]
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

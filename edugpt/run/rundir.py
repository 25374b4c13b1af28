"""The run directory: a training run's `output_dir` (train_hf.py, finetune/sft.py, finetune/dpo.py), its file names,
its readers, and the rule for who may write into it.

    output_dir/
      run_config.json        every argument in effect, plus {"edugpt": {"kind", "version"}}: what makes it ours
      data_manifest.json     pretraining: the prepared dataset's manifest
      metrics.jsonl          one JSON record per log (MetricsLog), each with "step" and "tokens"
      samples.md             pretraining: the samples-by-step table
      images/*.png           plots
      checkpoint-N/          Trainer's checkpoints, each with the completion marker (edugpt.run.checkpoints)
      config.json, model.safetensors, tokenizer files, ...   the final model, with its own completion marker
      README.md              the model card (edugpt.report.card)
      published.json         after publish.py pushed the run: the Hub repo and branches (a finetune's card names it)
      .edugpt.lock           held while a job writes here (edugpt.io.safefs.DirLock)
      .edugpt-record.json    the record of every file and folder the run wrote here (edugpt.run.record): what
                             --overwrite_output_dir may remove, what the final model's marker lists, what is uploaded
      .edugpt-upload/        uploads staged for the Hub (edugpt.hub.stage); a step-N push that failed waits here

Nothing here imports torch or transformers at module level, so writing a card or a plot stays fast.
"""

from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path
from typing import Any

from edugpt.errors import EduGPTError
from edugpt.io.safefs import atomic_write_json, atomic_write_text, read_json
from edugpt.run.record import RECORD, Record, note_written, update

RUN_CONFIG = "run_config.json"
DATA_MANIFEST = "data_manifest.json"
METRICS = "metrics.jsonl"
SAMPLES = "samples.md"
CARD = "README.md"
PUBLISHED = "published.json"
IMAGES = "images"
LOSS_PLOT = f"{IMAGES}/train-loss.png"
HELLASWAG_PLOT = f"{IMAGES}/hellaswag.png"
TRAINER_STATE = "trainer_state.json"
LOCK = ".edugpt.lock"
STAGING = ".edugpt-upload"  # edugpt.hub.stage stages each upload here (hardlinks); hidden, so never uploaded itself
# Written last into every finished checkpoint and final model: the size and SHA-256 of each file (edugpt.run.checkpoints).
MARKER = "edugpt-complete.json"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")  # transformers.trainer_utils' PREFIX_CHECKPOINT_DIR + "-N"
# Of the files Trainer writes into a save (a checkpoint, or the final model), those of the model itself: what
# from_pretrained and AutoTokenizer read (and a PEFT adapter's). Every other file of a save is resume state (optimizer,
# scheduler, RNG, trainer state, training_args.bin, FSDP/DeepSpeed shards, the completion marker). This sorts files the
# record (edugpt.run.record) already says the run wrote; it never makes a file ours.
MODEL_FILES = (
    "config.json", "generation_config.json", "model.safetensors", "model-*-of-*.safetensors",
    "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model-*-of-*.bin", "pytorch_model.bin.index.json",
    "adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", "tokenizer.json", "tokenizer_config.json",
    "vocab.json", "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json",
)


def save_file_role(name: str) -> str:
    """"model" or "state": what a file Trainer wrote into a save is (by its name within the save, see MODEL_FILES)."""
    import fnmatch

    return "model" if any(fnmatch.fnmatch(name, pattern) for pattern in MODEL_FILES) else "state"
# Run kinds, with the entry point that makes each.
KINDS = {"pretrain": "train_hf.py", "sft": "finetune/sft.py", "dpo": "finetune/dpo.py"}


def entries(folder: str | os.PathLike) -> dict[str, tuple]:
    """Top-level entries of `folder` as they are now: name -> (type, inode, size, mtime_ns), links not followed."""
    found = {}
    with os.scandir(folder) as it:
        for entry in it:
            st = entry.stat(follow_symlinks=False)
            kind = "file" if entry.is_file(follow_symlinks=False) else "dir" if entry.is_dir(follow_symlinks=False) \
                else "other"
            found[entry.name] = (kind, st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def record_saved_model(run_dir: str | os.PathLike, before: dict[str, tuple]) -> list[str]:
    """Enter the files Trainer's save_model just wrote at the run's root (new or rewritten since `before`, an
    `entries()` taken just before the save) in the run's record: the model's files as "model", the rest of the save
    (training_args.bin) as "state". Returns the model's file names, which its completion marker lists."""
    run_dir = Path(run_dir)
    written = [name for name, ident in entries(run_dir).items()
               if ident[0] == "file" and before.get(name) != ident and name not in (LOCK, RECORD)]

    def enter(run: Record) -> None:
        for name in written:
            run.add(run_dir / name, save_file_role(name))

    update(run_dir, enter)
    return sorted(name for name in written if save_file_role(name) == "model")


# ------------------------------------------------------------------------------------------------------ metrics.jsonl
class MetricsLog:
    """`metrics.jsonl`: one JSON object per line, each with "step" and "tokens"; written by the main process only."""

    def __init__(self, path: str | os.PathLike, enabled: bool = True):
        self.path = Path(path)
        self.enabled = enabled

    def append(self, record: dict) -> None:
        if not self.enabled:
            return
        new = not os.path.lexists(self.path)
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if new:
            note_written(self.path, appends=True)

    def read(self) -> list[dict]:
        return read_metrics(self.path)

    def clear(self) -> None:
        """Forget an earlier attempt's records: a run starting at step 0 in the same output_dir logs afresh. Only the
        file the run wrote is removed (edugpt.run.record): a metrics.jsonl of someone else's is refused."""
        if not self.enabled or not os.path.lexists(self.path):
            return
        record = Record.load(self.path.parent)
        if not record.matches(METRICS) or self.path.parent.resolve() != record.root.resolve():
            raise EduGPTError(f"{self.path} was not written by this run (it is not in {RECORD}); move it away, then "
                              "run the same command again.")
        self.path.unlink()

    def truncate_after(self, step: int) -> None:
        """Drop records newer than `step`: a run resumed from checkpoint-`step` logs them again."""
        if not self.enabled or not self.path.exists():
            return
        kept = [record for record in self.read() if record.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(record) + "\n" for record in kept), role=None)
        note_written(self.path, appends=True)


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """The records of a metrics.jsonl file (or of `path/metrics.jsonl` for a run directory); a torn last line from a
    killed run, or a line that is not a record (not JSON, not UTF-8, no integer "step"), is skipped. A metrics.jsonl
    that is a folder or cannot be read is one EduGPTError."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS
    # bytes: one damaged line must not make the whole file unreadable
    lines = (read_regular_file(path, what="metrics log") or b"").splitlines()
    records = []
    for line in lines:
        try:
            record = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            continue
        if isinstance(record, dict) and type(record.get("step")) is int:  # not a bool either
            records.append(record)
    return records


def read_regular_file(path: str | os.PathLike, *, what: str = "file") -> bytes | None:
    """The bytes of `path`, None when it does not exist (or is a dangling link); one EduGPTError when it is a folder
    or another non-regular file (a pipe is never waited on), or cannot be read."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise EduGPTError(f"{what} {path} cannot be read ({os.strerror(err.errno)}); fix or delete it.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EduGPTError(f"{what} {path} is not a regular file (a folder?); fix or delete it.")
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    except OSError as err:
        raise EduGPTError(f"{what} {path} cannot be read ({os.strerror(err.errno)}); fix or delete it.") from None
    finally:
        os.close(fd)


def json_kind(value: Any) -> str:
    """What JSON calls `value`, with its article ("an array", "a string", "null"): for messages about a wrong type."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return {str: "a string", list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


# -------------------------------------------------------------------------------------------------------- checkpoints
def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of a run, oldest first — Trainer's own order (`trainer_utils.sort_checkpoints`,
    which its rotation uses), keeping only names that are exactly `checkpoint-<digits>`."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    from transformers.trainer_utils import sort_checkpoints  # imports torch: only when checkpoints are listed

    return [Path(p) for p in sort_checkpoints(str(run_dir)) if CHECKPOINT_RE.match(Path(p).name)]


def checkpoint_step(checkpoint_dir: str | os.PathLike) -> int:
    return int(CHECKPOINT_RE.match(Path(checkpoint_dir).name).group(1))


def read_log_history(run_dir: str | os.PathLike) -> list[dict]:
    """Trainer's `log_history`: from the run's trainer_state.json, else the newest checkpoint's that has one."""
    run_dir = Path(run_dir)
    for path in [run_dir / TRAINER_STATE] + [p / TRAINER_STATE for p in reversed(list_checkpoints(run_dir))]:
        state = read_json(path, what="Trainer state")
        if isinstance(state, dict) and isinstance(state.get("log_history"), list):
            return [r for r in state["log_history"] if isinstance(r, dict) and isinstance(r.get("step"), int)]
    return []


# --------------------------------------------------------------------------------------------------------- run config
# run_config.json's sections and the JSON types their readers take (None: the section may be absent or null).
RUN_CONFIG_SECTIONS = {"edugpt": (dict,), "model": (dict,), "data": (dict,), "training": (dict,),
                       "script": (dict, str)}  # script: the finetunes write their stage ("sft", "dpo")


def read_run_config(run_dir: str | os.PathLike) -> dict | None:
    """run_config.json, None when there is none; one EduGPTError when it is not a JSON object or one of its sections
    (RUN_CONFIG_SECTIONS) has the wrong type: a damaged record is reported, not read as "no run config"."""
    path = Path(run_dir) / RUN_CONFIG
    config = read_json(path, what="run config")
    if config is None and not os.path.lexists(path):
        return None
    if not isinstance(config, dict):
        raise EduGPTError(f"run config {path} holds {json_kind(config)}, not a JSON object; fix or delete it.")
    for section, types in RUN_CONFIG_SECTIONS.items():
        value = config.get(section)
        if value is not None and not isinstance(value, types):
            wanted = " or ".join(json_kind(t()) for t in types)
            raise EduGPTError(f"run config {path} has {json_kind(value)} as {section!r}, not {wanted}; fix or delete "
                              "it.")
    return config


def write_run_config(run_dir: str | os.PathLike, run_config: dict) -> Path:
    return atomic_write_json(Path(run_dir) / RUN_CONFIG, run_config)


def run_kind(run_config: dict | None) -> str | None:
    """"pretrain", "sft" or "dpo": the kind a run_config.json of this project names in its "edugpt" stamp (every one
    edugpt writes has it), else None."""
    if not isinstance(run_config, dict):
        return None
    stamp = run_config.get("edugpt")
    if isinstance(stamp, dict) and isinstance(stamp.get("kind"), str) and stamp["kind"] in KINDS:
        return stamp["kind"]
    return None


def require_own_run_dir(output_dir: str | os.PathLike, kind: str) -> bool:
    """Check that `output_dir` may hold a `kind` run: absent, empty, or a run directory of that kind (a re-run).

    Returns True when it already holds such a run. Someone else's folder, a run of another kind, or a path that is a
    file is refused before anything is written, and nothing in it changes.
    """
    path = Path(output_dir)
    if path.is_symlink() and not path.is_dir():
        raise EduGPTError(f"output_dir {str(path)!r} is a broken symlink; pass a folder path.")
    if path.exists() and not path.is_dir():
        raise EduGPTError(f"output_dir {str(path)!r} is a file; pass a folder path (a new one, or an earlier run's).")
    if not path.exists():
        return False
    entries = [p.name for p in path.iterdir()]
    if set(entries) <= {LOCK, RECORD}:  # new, or a run stopped before it wrote anything
        return False
    config = path / RUN_CONFIG
    if os.path.lexists(config) and not config.is_file() or config.is_symlink():
        raise EduGPTError(f"output_dir {str(path)!r} holds a {RUN_CONFIG} that is not a regular file (a folder or a "
                          "symlink): it is not an edugpt run; nothing was written there: pass a new folder.")
    found = run_kind(run_config := read_run_config(path))
    if found is None and run_config is not None:
        raise EduGPTError(f"output_dir {str(path)!r} holds a {RUN_CONFIG} that names no edugpt run kind (its 'edugpt' "
                          "stamp), so this version of edugpt did not write it; nothing was written there: pass a new "
                          "folder.")
    if found is None:
        shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
        raise EduGPTError(
            f"output_dir {str(path)!r} holds files that are not an edugpt run ({shown}) and no {RUN_CONFIG}; nothing "
            "was written there: pass a new folder, or an earlier run's output_dir to resume it."
        )
    if found != kind:
        raise EduGPTError(
            f"output_dir {str(path)!r} holds a {found} run ({KINDS[found]}), not a {kind} run ({KINDS[kind]}); pass a "
            "new folder for this one."
        )
    return True


# ---------------------------------------------------------------------------------------------------------- publishing
def write_published(run_dir: str | os.PathLike, repo_id: str, branches: list[str]) -> Path:
    """Record, after a successful push, the Hub repo (and branches) that now hold this run's model."""
    import time

    record = {"repo_id": repo_id, "branches": branches, "url": f"https://huggingface.co/{repo_id}",
              "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "created_by": "publish.py"}
    return atomic_write_json(Path(run_dir) / PUBLISHED, record)


def published_repo_id(run_dir: str | os.PathLike) -> str | None:
    """The Hub repo holding this run's final model: the one publish.py last pushed it to (published.json), else the
    one training pushed it to (run_config.json: training.push_to_hub with training.hub_model_id); None if neither."""
    published = read_json(Path(run_dir) / PUBLISHED, what="publish record")
    if isinstance(published, dict) and isinstance(published.get("repo_id"), str) and published["repo_id"]:
        return published["repo_id"]
    training = (read_run_config(run_dir) or {}).get("training")
    if isinstance(training, dict) and training.get("push_to_hub") and isinstance(training.get("hub_model_id"), str):
        return training["hub_model_id"] or None
    return None


# ----------------------------------------------------------------------------------------------------- lm-eval results
def evaluated_model(results: dict) -> str | None:
    """The model path/id an lm-eval results dict was scored on: eval_harness.py records it as config.model, the lm_eval
    CLI as `pretrained=...` in config.model_args (a string or a dict)."""
    config = results.get("config")
    config = config if isinstance(config, dict) else {}
    args = config.get("model_args")
    if isinstance(args, dict) and args.get("pretrained"):
        return str(args["pretrained"])
    if isinstance(args, str):
        match = re.search(r"(?:^|,)\s*pretrained=([^,]+)", args)
        if match:
            return match.group(1).strip()
    model = config.get("model")
    return model if isinstance(model, str) and model not in ("hf", "hf-auto", "huggingface") else None


def _same_model(reference: str, run_dir: Path) -> bool:
    """Does `reference` (as written at eval time, maybe relative to another working directory) name `run_dir`?"""
    ref = Path(reference)
    if ref.exists():
        return ref.resolve() == run_dir.resolve()
    tail = Path(os.path.normpath(reference)).parts
    return not ref.is_absolute() and len(tail) >= 2 and run_dir.resolve().parts[-len(tail):] == tail


def find_lm_eval_results(run_dir: str | os.PathLike, eval_dir: str | os.PathLike | None = None) -> dict | None:
    """The newest lm-eval results JSON (`results*.json` holding a "results" mapping) for this run's final model, with
    its path under "_path"; one that scored every item wins over newer ones run with --limit (`_scored_every_item`).

    With `eval_dir` (a folder or a file) that is where results are read, and all it holds must be: a results file
    there that is not lm-eval's (lm_eval_problem), or no scores at all, is one EduGPTError. Otherwise: under run_dir
    (lm-eval writes `OUTPUT/<model name>/results_<timestamp>.json`, so a few folders deep; checkpoint-N folders
    skipped), and in the run's sibling folders (`runs/demo/eval` next to `runs/demo/pretrain`, as eval_harness.py is
    used in the demo) — a sibling's file counts only when it names this run directory as the model it scored, and no
    file that names another model (a checkpoint, the SFT model) is taken for this one; a broken file found by this
    search is passed over.
    """
    run_dir = Path(run_dir)
    if eval_dir is not None:
        eval_dir = Path(eval_dir)
        if not eval_dir.exists():
            raise EduGPTError(f"eval results folder {eval_dir} does not exist; pass the --output_dir of eval_harness.py "
                              "(or lm_eval's --output_path).")
        candidates = [(eval_dir, False)] if eval_dir.is_file() else [(p, False) for p in eval_dir.rglob("results*.json")]
    else:
        candidates = [(p, False) for p in run_dir.rglob("results*.json")
                      if len(p.relative_to(run_dir).parts) <= 4
                      and not any(part.startswith("checkpoint-") for part in p.relative_to(run_dir).parts[:-1])]
        for sibling in run_dir.resolve().parent.iterdir():
            if sibling.is_dir() and sibling != run_dir.resolve():
                candidates += [(p, True) for p in sibling.rglob("results*.json")
                               if len(p.relative_to(sibling).parts) <= 3]
    best = None
    for path, must_match in sorted(candidates, key=lambda c: _mtime(c[0])):
        # What --eval_dir names must be lm-eval results; an unrelated broken file found near the run is not this
        # card's problem, and is passed over.
        try:
            data = read_json(path, what="lm-eval results")
        except EduGPTError:
            if eval_dir is not None:
                raise
            continue
        problem = lm_eval_problem(data) if data is not None else None
        if problem is not None and eval_dir is not None:
            raise EduGPTError(f"lm-eval results {path} {problem}; pass the results_<time>.json that eval_harness.py "
                              "(or lm_eval) wrote, or its folder.")
        if data is None or problem is not None or not data["results"]:
            continue
        reference = evaluated_model(data) if eval_dir is None else None
        if reference is not None and not _same_model(reference, run_dir):
            continue
        if reference is None and must_match:
            continue
        if best is None or _scored_every_item(data) or not _scored_every_item(best):  # newest, complete ones first
            best = {**data, "_path": path}
    if best is None and eval_dir is not None:
        raise EduGPTError(f"eval results folder {eval_dir} holds no lm-eval scores (a results*.json with a task in "
                          "\"results\"); pass the --output_dir of eval_harness.py (or lm_eval's --output_path).")
    return best


def _scored_every_item(data: dict) -> bool:
    """Whether lm-eval scored every item of every task (no --limit, no --samples subset): a quick `--limit 10` check
    run after a full evaluation must not replace its numbers on the card."""
    counts = data.get("n-samples") or {}
    return (data.get("config") or {}).get("limit") is None and all(
        isinstance(n, dict) and n.get("effective") == n.get("original") for n in counts.values())


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # a dangling link: read_json finds nothing there
        return 0.0


# The sections of an lm-eval results JSON the card reads, each an object (of objects, for the per-task ones).
LM_EVAL_SECTIONS = {"config": False, "n-shot": False, "n-samples": True, "configs": True, "results": True}


def lm_eval_problem(data: Any) -> str | None:
    """Why `data` is not an lm-eval results JSON the card can read ("holds an array, not ..."), None when it is one:
    an object with a "results" object, and "config", "n-shot", "n-samples", "configs" objects where present (the
    per-task entries of results, n-samples and configs objects too)."""
    if not isinstance(data, dict):
        return f"holds {json_kind(data)}, not an lm-eval results object"
    if "results" not in data:
        return 'has no "results"'
    for section, per_task in LM_EVAL_SECTIONS.items():
        value = data.get(section)
        if value is None and section != "results":
            continue
        if not isinstance(value, dict):
            return f"has {json_kind(value)} as {section!r}, not an object"
        if per_task:
            for task, entry in value.items():
                if not isinstance(entry, dict):
                    return f"has {json_kind(entry)} as {section!r} of task {task!r}, not an object"
    return None


def config_value(run_config: dict | None, *keys: str) -> Any:
    """The first non-empty string under any of `keys`, at the top of a run_config or in one of its sections."""
    if not run_config:
        return None
    sections = [run_config] + [v for v in run_config.values() if isinstance(v, dict)]
    for key in keys:
        for section in sections:
            if isinstance(section.get(key), str) and section[key]:
                return section[key]
    return None

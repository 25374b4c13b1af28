"""The work dir of a datatrove preparation and its plan (see `edugpt.corpus.datatrove` for the whole flow).

`WorkDir` is `.{output_dir name}.prepare/` beside the output: `plan.json`, the tasks' finished files, their records
and datatrove's logs; it is made and proven ours by `edugpt.corpus.install.make_dir`, and held under the output's lock
(`WorkDir.locked`). `make_plan` lists the input's parquet files with their row counts (footers only) and fixes the
number of tasks; `task_pieces` is task k's share of the rows. A task's record is sealed by `record_seal`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
from edugpt.corpus.install import MADE, made_here, make_dir, output_lock, recover_swap, remove_leftovers
from edugpt.corpus.layout import write_json
from edugpt.corpus.sources import ID_COLUMN, Source, document_columns, open_parquet
from edugpt.corpus.split import SPLIT_SALT, SPLITS
from edugpt.errors import EduGPTError

PLAN_FORMAT = "edugpt-prepare-plan-v1"

# What a work dir may hold (anything else is not ours and is never deleted).
WORK_ENTRIES = {MADE, "plan.json", "dataset", "tasks", "doc_ids", "tmp", "logs"}
PLAN_KEYS = ("format", "settings", "source", "files", "has_id", "tasks")

# Footers read at once while planning (Hub files: one or two HTTP range requests each).
FOOTER_THREADS = 16


# ------------------------------------------------------------------------------------------------------ work dir

class WorkDir:
    """`.{name}.prepare/` beside the output: the plan, the tasks' finished files, their records and datatrove's logs.

    It is resumable while it holds `plan.json` and `dataset/`; anything else (a run killed while planning, or the
    logs a finished Slurm run leaves) is emptied by the next run. It is made by `edugpt.corpus.install.make_dir`: a
    folder of that name that does not prove it was made so is never used, emptied or deleted."""

    def __init__(self, out: Path):
        self.out = out
        self.root = out.parent / f".{out.name}.prepare"
        self.plan = self.root / "plan.json"
        self.staging = self.root / "dataset"
        self.records = self.root / "tasks"
        self.ids = self.root / "doc_ids"
        self.tmp = self.root / "tmp"
        self.logs = self.root / "logs"
        self.tokenize_logs = self.logs / "tokenize"
        self.merge_logs = self.logs / "merge"

    def record(self, rank: int) -> Path:
        return self.records / f"{rank:05d}.json"

    def id_part(self, rank: int) -> Path:
        return self.ids / f"{rank:05d}.parquet"

    def completion(self, rank: int) -> Path:
        return self.tokenize_logs / "completions" / f"{rank:05d}"

    def read_plan(self) -> dict:
        """plan.json, checked to hold what a run wrote there; one line saying how to start over when it does not."""
        try:
            plan = json.loads(self.plan.read_text(encoding="utf-8"))
            missing = [key for key in PLAN_KEYS if key not in plan]
            if missing:
                raise ValueError(f"no {', '.join(missing)}")
            if plan["format"] != PLAN_FORMAT:
                raise ValueError(f"format {plan['format']!r}, expected {PLAN_FORMAT!r}")
            settings, files = plan["settings"], plan["files"]
            if not (isinstance(plan["tasks"], int) and plan["tasks"] >= 1 and isinstance(settings, dict)
                    and settings.get("tasks") == plan["tasks"] and isinstance(plan["has_id"], bool)
                    and isinstance(plan["source"], dict) and isinstance(files, list) and files
                    and all(isinstance(f, dict) and isinstance(f.get("path"), str) and isinstance(f.get("rows"), int)
                            for f in files)):
                raise ValueError("its values are not a plan's")
            missing = [key for key in ("dataset", "subset", "tokenizer", "seq_len", "val_fraction", "salt")
                       if key not in settings]
            if missing:
                raise ValueError(f"no settings.{', settings.'.join(missing)}")
        except (OSError, UnicodeDecodeError, ValueError, TypeError, AttributeError) as err:
            raise EduGPTError(f"{str(self.plan)!r} is damaged ({str(err)[:120]}); delete {str(self.root)!r} to "
                              "prepare from scratch (its finished tasks are lost), or put back the plan that run "
                              "wrote.") from None
        return plan

    def resumable(self) -> bool:
        return self.plan.is_file() and self.staging.is_dir()

    def create(self, plan: dict) -> None:
        for path in (*(self.staging / split for split in SPLITS), self.records, self.ids, self.tmp):
            path.mkdir(parents=True, exist_ok=True)
        write_json(self.plan, plan)  # last: a work dir with a plan is complete

    def empty(self) -> None:
        """Delete what a run put here (the folder proven ours by `made_here`), and refuse to touch anything else."""
        entries = [p for p in self.root.iterdir() if p.name != MADE]
        strangers = [p.name for p in entries if p.name not in WORK_ENTRIES and not p.name.startswith(".plan.json.")]
        if strangers or not made_here(self.root):
            raise EduGPTError(f"{str(self.root)!r} holds files prepare_data.py did not make "
                              f"({', '.join(strangers) or 'nothing records that it made that folder'}); move them "
                              "elsewhere and re-run.")
        for path in entries:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()

    @contextmanager
    def locked(self, wait: float = 0):
        """Hold the output's lock (`edugpt.corpus.install.output_lock`: an flock that holds across hosts and PID namespaces
        on a shared filesystem). A second run on the same output is refused, after waiting up to `wait` seconds for
        the first. Under it, a swap a kill interrupted is completed and a killed run's leftovers are removed."""
        if self.root.is_symlink() or (self.root.exists() and not self.root.is_dir()):
            raise EduGPTError(f"{str(self.root)!r} (where prepare_data.py keeps its tasks' work) exists and is not a "
                              "directory it made; move it away and re-run.")
        deadline = time.monotonic() + wait
        while True:
            try:
                lock = output_lock(self.out).acquire()
                break
            except EduGPTError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(1)
        try:
            recover_swap(self.out)
            remove_leftovers(self.out)
            if not os.path.lexists(self.root):
                make_dir(self.root)
            elif not made_here(self.root):
                raise EduGPTError(f"{str(self.root)!r} (where prepare_data.py keeps its tasks' work) exists, and "
                                  "nothing records that prepare_data.py made it; move it away and re-run.")
            yield self
        finally:
            lock.release()


# ---------------------------------------------------------------------------------------------------------- plan

def make_plan(args: PrepareDataArguments, ex: ExecutorArguments, source: Source) -> dict:
    """List the input's parquet files with their row counts and fix the number of tasks (see the module docstring)."""
    if source.kind == "hub":
        files, revision = hub_parquet_files(source)
    elif source.builder != "parquet":
        raise EduGPTError(f"--executor {ex.executor} reads parquet files, and {source.dataset!r} is jsonl; convert it "
                          "to parquet or use the default executor.")
    else:
        files, revision = [str(Path(f).absolute()) for f in source.files], None
    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        footers = list(pool.map(_footer, files))
    has_id = footers[0]["has_id"]
    for footer in footers[1:]:
        if footer["has_id"] != has_id:
            raise EduGPTError(f"{footer['path']!r} {'has' if footer['has_id'] else 'lacks'} an 'id' column and "
                              f"{footers[0]['path']!r} does not; give every file the same columns.")
    if not sum(f["rows"] for f in footers):
        raise EduGPTError(f"{source.dataset!r} holds no rows; point --dataset at parquet files with documents.")
    workers = ex.workers or ((os.cpu_count() or 1) if ex.executor == "local" else 1)
    tasks = ex.tasks or max(len(files), workers)
    return {
        "format": PLAN_FORMAT,
        "settings": plan_settings(args, source, tasks),
        "source": {"kind": source.kind, "dataset": source.dataset, "subset": source.subset, "revision": revision},
        "files": [{"path": f["path"], "rows": f["rows"], "stamp": f["stamp"]} for f in footers],
        "has_id": has_id,
        "tasks": tasks,
    }


def plan_settings(args: PrepareDataArguments, source: Source, tasks: int) -> dict:
    """What the output depends on; a re-run resumes only when these are the same."""
    return {"dataset": source.dataset, "subset": source.subset, "tokenizer": args.tokenizer, "seq_len": args.seq_len,
            "val_fraction": args.val_fraction, "salt": SPLIT_SALT, "tasks": tasks}


def _footer(path: str) -> dict:
    try:
        with open_parquet(path) as pf:
            has_id = ID_COLUMN in document_columns(pf, path)
            rows = pf.metadata.num_rows
    except EduGPTError:
        raise
    except Exception as err:  # a truncated or non-parquet file, a dropped connection: name the file
        raise EduGPTError(f"cannot read parquet file {path!r} ({type(err).__name__}: {err}); fix or remove it.") \
            from None
    return {"path": path, "rows": rows, "has_id": has_id, "stamp": file_stamp(path)}


def file_stamp(path: str):
    """Size and modification time of a local file (a Hub file is pinned by the plan's revision instead)."""
    if "://" in path:
        return None
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def hub_parquet_files(source: Source) -> tuple[list[str], str | None]:
    """The parquet files of a Hub dataset config as `hf://` URLs pinned to one commit: the same files, in the same
    order, that `datasets.load_dataset(dataset, name=subset)` reads (this asks `datasets` to resolve them)."""
    import datasets

    try:
        builder = datasets.load_dataset_builder(source.dataset, name=source.subset)
        files = [str(f) for f in builder.config.data_files["train"]]
    except Exception as err:
        raise EduGPTError(f"could not list the files of {source.dataset!r} (config {source.subset!r}) on the Hub "
                          f"({type(err).__name__}: {err}); check the dataset id and --subset.") from None
    if not files or not all(f.endswith(".parquet") for f in files):
        raise EduGPTError(f"{source.dataset!r} (config {source.subset!r}) is not stored as parquet files; use the "
                          "default executor for it.")
    revision = files[0].split("@", 1)[1].split("/", 1)[0] if "@" in files[0] else None
    return files, revision


def task_pieces(plan: dict, rank: int) -> list[tuple[str, int, int]]:
    """Task `rank`'s rows as (file, first row, end row) pieces: the rank-th of `tasks` equal, contiguous ranges of
    the input's rows in source order."""
    total = sum(f["rows"] for f in plan["files"])
    lo, hi = total * rank // plan["tasks"], total * (rank + 1) // plan["tasks"]
    pieces, first = [], 0
    for f in plan["files"]:
        a, b = max(lo, first), min(hi, first + f["rows"])
        if a < b:
            pieces.append((f["path"], a - first, b - first))
        first += f["rows"]
    return pieces


def record_seal(record: dict) -> str:
    """sha256 of a task's record without its seal (canonical JSON): the merge recomputes it, so a record changed after
    its task wrote it (its tails, its counts) is never merged."""
    body = {key: value for key, value in record.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def work_dir_output(work_root: Path) -> Path:
    """The output dir a work dir `.NAME.prepare` belongs to."""
    return work_root.parent / work_root.name[1:-len(".prepare")]


def incomplete_ranks(work: WorkDir, tasks: int) -> list[int]:
    return [rank for rank in range(tasks) if not work.completion(rank).is_file()]

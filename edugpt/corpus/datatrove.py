"""Prepare a corpus in parallel, resumable tasks with datatrove: on this machine, on a Slurm cluster, or on Ray.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128 --executor local --tasks 8 --workers 2
    python prepare_data.py --subset sample-100BT --output_dir data/prepared/edu100B --executor local --tasks 512 --workers 64
    python prepare_data.py --subset full --output_dir /shared/edu-full --executor slurm --tasks 4096 --slurm_partition cpu
    RAY_ADDRESS=head-node:6379 python prepare_data.py --subset sample-350BT --output_dir /shared/edu350B \\
        --executor ray --tasks 2048

The same split rule, tokenizer and packer as the single-machine path (`edugpt.corpus.prepare`), cut into tasks:

1. **Plan** (once, in the launching process). The input's parquet files (a local folder, or a Hub config's files as
   `hf://` URLs pinned to one commit) are listed with their row counts (from the parquet footers; nothing is
   downloaded), and the rows, in source order, are cut into `--tasks` contiguous ranges of equal size. The plan is
   frozen in `WORK/plan.json`, where WORK is `.{output_dir name}.prepare/` beside `--output_dir` (the same
   filesystem, so finished files are moved, never copied; on a cluster, a shared filesystem).
2. **Tasks** (datatrove's executors; any number at a time, on any machine). Task k streams its rows straight from
   the parquet files (one batch in memory), tokenizes each batch with `tokenize_batch`, and packs each split with a
   `SplitWriter` into Arrow files under WORK/tmp/; when done it moves them into WORK/dataset/<split>/, its kept
   document ids to WORK/doc_ids/, and writes WORK/tasks/k.json (its counts, its files' digests, the digest of its
   id part and its two tails, the < seq_len tokens left after its last full block of each split, sealed by a digest
   of the whole record) last. datatrove then marks the task complete
   (WORK/logs/tokenize/completions/); a re-run skips completed tasks.
3. **Merge** (once, after the last task; idempotent, so a killed merge is simply run again). Each task's record is
   checked against what the task wrote (its seal, its id part's digest, counts that add up with its tails); the
   tails are concatenated in task order and packed into a few more blocks per split (only the final remainder,
   < seq_len tokens per split, is dropped: the same count as the single-machine path); `write_layout` lists the task
   files in task order, then the tail blocks, in each split's state.json (no data is copied); the id parts are
   joined into doc_ids.parquet; manifest.json gets per-task counts, the content digests (each task hashed its files
   as it wrote them) and the record of the dataset's files; `verify` checks it all, recomputing every file's digest;
   and `move_into_place` swaps WORK/dataset in as `--output_dir`.

The output's lock (`edugpt.corpus.prepare.output_lock`, `.NAME.lock` beside it) is held by the launcher while it plans, runs
local or Ray tasks and merges. Tasks (local workers, Ray tasks on other nodes, Slurm array tasks) never take it: they
write only their own files inside WORK, and a task's half-written part is removed when it fails or is retried. A Slurm
merge job takes the lock itself (waiting for the launcher) before it touches the output. Local workers die with the
launcher (`die_with_parent`): a killed launcher leaves no worker running and nothing holding the lock, and the same
command resumes.

WORK and each task's temporary folder are made with `edugpt.corpus.prepare.make_dir`, which records their identity inside
them:
only a folder proven that way is ever emptied or deleted.

The result is the single-machine path's layout: `datasets.load_from_disk` and training read it unchanged. Block order
is task order, not finishing order, so a resumed run writes the same blocks as an uninterrupted one; with
`--tasks 1` the blocks equal the single-machine path's exactly.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from edugpt.corpus.prepare import (
    DOC_IDS,
    ID_ROW_GROUP_ROWS,
    MADE,
    SKIP_REASONS,
    SPLIT_SALT,
    SPLITS,
    EmptySplitError,
    PrepareDataArguments,
    SplitStats,
    SplitsWriter,
    SplitWriter,
    UnusableInputError,
    _write_json,
    build_manifest,
    check_not_input,
    check_output_dir,
    check_swap_room,
    check_tokenizer,
    column_values,
    content_section,
    id_schema,
    made_here,
    make_dir,
    move_into_place,
    output_lock,
    print_summary,
    recover_swap,
    remove_leftovers,
    remove_made,
    require_blocks,
    tokenize_batch,
    tokenized_features,
    verify,
    write_layout,
    write_manifest,
)
from edugpt.corpus.sources import (
    ID_COLUMN,
    TEXT_COLUMN,
    Source,
    document_columns,
    first_non_utf8_row,
    open_parquet,
    parquet_batches,
    resolve_source,
)
from edugpt.errors import EduGPTError
from edugpt.io.net import hub_available
from edugpt.io.safefs import ensure_dir, no_space_error, no_space_reason

logger = logging.getLogger(__name__)

EXECUTORS = ("datasets", "local", "slurm", "ray")
PLAN_FORMAT = "edugpt-prepare-plan-v1"
BLOCK_ORDER = ("per split: the blocks of task 0, then task 1, ... (each task's rows in source order), then the "
               "blocks packed from the tasks' tails in task order; the same for any executor and any finishing order")
TAIL_RULE = ("each task hands the < seq_len tokens after its last full block of each split to the merge, which packs "
             "them in task order; only the final remainder of each split is dropped (dropped_tail_tokens)")
# What a work dir may hold (anything else is not ours and is never deleted).
WORK_ENTRIES = {MADE, "plan.json", "dataset", "tasks", "doc_ids", "tmp", "logs"}
PLAN_KEYS = ("format", "settings", "source", "files", "has_id", "tasks")
# Seconds a Slurm merge job waits for a launcher that still holds the work dir (the job may start at once when
# every task was already done).
MERGE_LOCK_WAIT = 600
# Modules datatrove's local forkserver imports before forking task workers.
FORKSERVER_PRELOAD = ["datasets.arrow_writer", "edugpt.corpus.datatrove", "tiktoken"]
# Footers read at once while planning (Hub files: one or two HTTP range requests each).
FOOTER_THREADS = 16
# Set while a local run forks its workers: each process forked then (datatrove's multiprocess Manager, forked from
# the launcher with its lock's descriptor, and the pool workers forked by the forkserver) is killed when its parent dies.
DIE_WITH_PARENT = "EDUGPT_DIE_WITH_PARENT"


# ---------------------------------------------------------------------------------------------------- processes

_forking = {"pid": 0}
# Resolved now, in the parent: a child forked from a threaded process should not have to load or look up anything.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this process when `parent` (the process that forked it) dies (Linux prctl
    PR_SET_PDEATHSIG); if it already has, die now. A fork inherits every descriptor, the output's flock included: a
    forked helper outliving a SIGKILLed launcher kept the lock held (a re-run was refused for as long as it lived)."""
    pr_set_pdeathsig = 1
    if _PRCTL is not None and _PRCTL(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _before_fork() -> None:
    _forking["pid"] = os.getpid()


def _after_fork_in_child() -> None:
    if os.environ.get(DIE_WITH_PARENT) == "1":
        die_with_parent(_forking["pid"])


# Registered at import, which the forkserver does too (FORKSERVER_PRELOAD): its forks run the hook as well. Forks are
# made from a main thread (the launcher's for the Manager, the forkserver's for workers), whose end is the parent's.
os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)


@dataclass
class ExecutorArguments:
    """How `prepare_data.py` runs: the single-machine `datasets.map` path, or datatrove tasks (local, Slurm, Ray)."""

    executor: str = field(default="datasets", metadata={
        "help": "datasets (default: one machine, datasets.map over --num_proc processes), or datatrove tasks: "
                "local (this machine, --workers at a time), slurm (sbatch job arrays) or ray (a Ray cluster). "
                "Tasks are resumable: re-run the same command after a crash to do only what is left."})
    tasks: int | None = field(default=None, metadata={
        "help": "Tasks (equal shares of the input's rows, in order); default: one per input file, at least "
                "--workers. A re-run resumes only with the same number."})
    workers: int | None = field(default=None, metadata={
        "help": "Tasks running at once (local: default all cores; slurm/ray: default no limit)."})
    cpus_per_task: int = field(default=1, metadata={
        "help": "CPUs per task (slurm/ray reserve them; tokenizing uses that many threads)."})
    mem_per_cpu_gb: float = field(default=2.0, metadata={"help": "Memory per CPU in GB (slurm/ray reservation)."})
    slurm_partition: str | None = field(default=None, metadata={"help": "Slurm partition (required for slurm)."})
    slurm_time: str = field(default="24:00:00", metadata={"help": "Slurm time limit per job array task."})
    slurm_qos: str | None = field(default=None, metadata={"help": "Slurm QOS (default: the cluster's)."})
    slurm_env_command: str | None = field(default=None, metadata={
        "help": "Shell line each Slurm job runs to set up Python (default: source this venv's bin/activate)."})
    ray_address: str | None = field(default=None, metadata={
        "help": "Ray cluster to join (default: $RAY_ADDRESS, else a new single-node Ray on this machine)."})

    def __post_init__(self):
        if self.executor not in EXECUTORS:
            raise EduGPTError(f"--executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}.")
        for name in ("tasks", "workers", "cpus_per_task"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise EduGPTError(f"--{name} must be at least 1, got {value}.")
        if self.mem_per_cpu_gb <= 0:
            raise EduGPTError(f"--mem_per_cpu_gb must be positive, got {self.mem_per_cpu_gb}.")
        if self.executor == "datasets" and (self.tasks is not None or self.workers is not None):
            raise EduGPTError("--tasks and --workers apply to datatrove tasks; add --executor local (or slurm, ray), "
                              "or use --num_proc with the default executor.")
        if self.executor == "slurm" and not self.slurm_partition:
            raise EduGPTError("--executor slurm needs --slurm_partition (see `sinfo` for the cluster's partitions).")


# ------------------------------------------------------------------------------------------------------ work dir

class WorkDir:
    """`.{name}.prepare/` beside the output: the plan, the tasks' finished files, their records and datatrove's logs.

    It is resumable while it holds `plan.json` and `dataset/`; anything else (a run killed while planning, or the
    logs a finished Slurm run leaves) is emptied by the next run. It is made by `edugpt.corpus.prepare.make_dir`: a folder of
    that name that does not prove it was made so is never used, emptied or deleted."""

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
        _write_json(self.plan, plan)  # last: a work dir with a plan is complete

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
        """Hold the output's lock (`edugpt.corpus.prepare.output_lock`: an flock that holds across hosts and PID namespaces
        on
        a shared filesystem). A second run on the same output is refused, after waiting up to `wait` seconds for the
        first. Under it, a swap a kill interrupted is completed and a killed run's leftovers are removed."""
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
    return {"path": path, "rows": rows, "has_id": has_id, "stamp": _stamp(path)}


def _stamp(path: str):
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


# ---------------------------------------------------------------------------------------------------------- task

class TokenizeShard(PipelineStep):
    """datatrove step: tokenize, split and pack one task's rows (everything a task does; see `run_task`)."""

    name = "tokenize, split by id, pack"
    type = "edugpt"

    def __init__(self, work_root: str, threads: int = 1):
        super().__init__()
        self.work_root, self.threads = work_root, threads

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        from loguru import logger as task_logger

        # datatrove logs a failed task's exception with its traceback on the console; a user's error is one line.
        task_logger.configure(patcher=_without_user_error_traceback)
        record = run_task(Path(self.work_root), rank, world_size, self.threads)
        for split, counts in record["splits"].items():
            for key in ("documents", "tokens", "blocks"):
                self.stat_update(f"{split}_{key}", value=counts[key], unit="task")


def _without_user_error_traceback(record: dict) -> None:
    if record["exception"] is not None and isinstance(record["exception"].value, EduGPTError):
        record["exception"] = None


def run_task(work_root: Path, rank: int, world_size: int, threads: int = 1) -> dict:
    """Task `rank`: stream its rows, tokenize with `tokenize_batch`, write its blocks, ids and record (see above)."""
    started = time.time()
    work = WorkDir(_out_of(work_root))
    plan = work.read_plan()
    if world_size != plan["tasks"]:
        raise RuntimeError(f"the executor runs {world_size} tasks but {work.plan} plans {plan['tasks']}")
    for stale in work.tmp.glob(f"task-{rank:05d}.*"):  # an earlier attempt at this task, killed
        remove_made(stale)
    tmp = make_dir(work.tmp / f"task-{rank:05d}.{socket.gethostname()}-{os.getpid()}")
    try:
        return _run_task(work, plan, rank, tmp, started, threads)
    finally:  # whether it finished (its files were moved out) or failed (a half-written part: nothing to keep)
        remove_made(tmp)


def _run_task(work: WorkDir, plan: dict, rank: int, tmp: Path, started: float, threads: int) -> dict:

    settings = plan["settings"]
    writer = SplitsWriter(tmp, settings["seq_len"], tmp / DOC_IDS, prefix=f"task-{rank:05d}")
    try:
        _tokenize_rows(work, plan, rank, writer, threads)
        stats = writer.close()
    except BaseException:
        writer.abort()
        raise
    # Finished files go into the dataset being assembled; the record, written last, is what the merge trusts.
    for split, split_writer in writer.splits.items():
        for name in split_writer.files:
            os.replace(tmp / split / name, work.staging / split / name)
    ids_digest = file_sha256(tmp / DOC_IDS)
    os.replace(tmp / DOC_IDS, work.id_part(rank))
    record = {
        "rank": rank,
        "rows": sum(b - a for _, a, b in task_pieces(plan, rank)),
        "splits": {split: {**_task_counts(s), "files": writer.splits[split].files,
                           "digests": writer.splits[split].digests} for split, s in stats.items()},
        "tails": {split: writer.splits[split].tail.tolist() for split in SPLITS},
        "ids_sha256": ids_digest,
        "ran_on": {"executor": os.environ.get("DATATROVE_EXECUTOR", "").lower() or None,
                   "host": socket.gethostname(), "pid": os.getpid(), "started": started, "finished": time.time()},
    }
    _write_json(work.record(rank), {**record, "sha256": record_seal(record)})
    return record


def record_seal(record: dict) -> str:
    """sha256 of a task's record without its seal (canonical JSON): the merge recomputes it, so a record changed after
    its task wrote it (its tails, its counts) is never merged."""
    body = {key: value for key, value in record.items() if key != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _tokenize_rows(work: WorkDir, plan: dict, rank: int, writer: SplitsWriter, threads: int) -> None:
    import pyarrow as pa

    settings = plan["settings"]
    schema = tokenized_features().arrow_schema
    rows = {f["path"]: f["rows"] for f in plan["files"]}
    for path, start, stop in task_pieces(plan, rank):
        with open_parquet(path) as pf:
            if pf.metadata.num_rows != rows[path]:
                raise EduGPTError(f"{path!r} now has {pf.metadata.num_rows} rows, {rows[path]} when this run was "
                                  f"planned; delete {str(work.root)!r} to prepare the changed input from scratch.")
            columns = document_columns(pf, path)
            row = start
            for batch in parquet_batches(pf, columns, start, stop):
                try:
                    ids = column_values(batch.column(ID_COLUMN)) if plan["has_id"] else None
                    texts = column_values(batch.column(TEXT_COLUMN))
                except UnicodeDecodeError:
                    bad = first_non_utf8_row(batch)
                    raise UnusableInputError(f"{path!r} row {row + (bad or 0)} holds text that is not valid UTF-8; "
                                             "re-encode the input as UTF-8 (or remove that row) and re-run.") from None
                out = tokenize_batch(texts, ids, tokenizer=settings["tokenizer"], val_fraction=settings["val_fraction"],
                                     salt=settings["salt"], num_threads=threads)
                writer.add(pa.table(out, schema=schema))
                row += batch.num_rows


def _ran_on(ran_on: dict) -> dict:
    """Where and when a task ran, for the manifest (to spot slow hosts; a resumed run's tasks ran at other times)."""
    started = datetime.fromtimestamp(ran_on["started"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"executor": ran_on["executor"], "host": ran_on["host"], "started": started,
            "seconds": round(ran_on["finished"] - ran_on["started"], 3)}


def _task_counts(s: SplitStats) -> dict:
    return {"documents": s.documents, "tokens": s.tokens, "blocks": s.blocks, "tail_tokens": s.dropped_tail_tokens,
            **{key: getattr(s, key) for key in SKIP_REASONS.values()}}


def _out_of(work_root: Path) -> Path:
    """The output dir a work dir `.NAME.prepare` belongs to."""
    return work_root.parent / work_root.name[1:-len(".prepare")]


# --------------------------------------------------------------------------------------------------------- merge

class MergeShards(PipelineStep):
    """datatrove step (a one-task Slurm job after the tokenize array): `merge` and move the dataset into place."""

    name = "merge task outputs into one dataset"
    type = "edugpt"

    def __init__(self, work_root: str):
        super().__init__()
        self.work_root = work_root

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = WorkDir(_out_of(Path(self.work_root)))
        with work.locked(wait=MERGE_LOCK_WAIT):
            try:
                manifest = finish(work, work.read_plan(), started=None)
            except EmptySplitError:
                _clear_all_but_logs(work)  # too little input for these settings: nothing to resume
                raise
            _clear_all_but_logs(work)
        print(f"merged {manifest['preparation']['tasks']} tasks into {work.out}")


def _clear_all_but_logs(work: WorkDir) -> None:
    """The end of a Slurm run: the job scripts and job outputs (WORK/logs) stay for the user; the rest goes."""
    for path in work.root.iterdir():
        if path != work.logs and path.name != MADE:
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def incomplete_ranks(work: WorkDir, tasks: int) -> list[int]:
    return [rank for rank in range(tasks) if not work.completion(rank).is_file()]


def finish(work: WorkDir, plan: dict, started: float | None) -> dict:
    """Once every task is complete: merge, verify, move into place. Safe to run again after a kill."""
    missing = incomplete_ranks(work, plan["tasks"])
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise EduGPTError(f"{len(missing)} of {plan['tasks']} tasks did not finish (tasks {shown}); their logs are "
                          f"in {str(work.tokenize_logs / 'logs')!r}. Re-run the same command to run only those.")
    manifest = merge(work, plan)
    args = plan_args(plan)
    check_output_dir(work.out, args.overwrite)  # again (a Slurm merge runs long after the launcher checked)
    move_into_place(work.staging, work.out)
    if started is not None:
        print_summary(manifest, work.out, time.perf_counter() - started)
    return manifest


def plan_args(plan: dict) -> PrepareDataArguments:
    s = plan["settings"]
    return PrepareDataArguments(dataset=s["dataset"], subset=s["subset"], tokenizer=s["tokenizer"],
                                seq_len=s["seq_len"], val_fraction=s["val_fraction"], output_dir=plan["output_dir"],
                                overwrite=plan["overwrite"])


def merge(work: WorkDir, plan: dict) -> dict:
    """Pack the tasks' tails, write the layout around the tasks' files, join the ids, write and verify the manifest."""
    import pyarrow.parquet as pq

    args, seq_len = plan_args(plan), plan["settings"]["seq_len"]
    records = [task_record(work, rank, seq_len) for rank in range(plan["tasks"])]
    stats, files, digests = {}, {}, {}
    for split in SPLITS:
        tails = SplitWriter(work.staging / split, seq_len, prefix="tails")
        for record in records:
            tails.add_tokens(np.asarray(record["tails"][split], dtype=np.uint16))
        tails.close()
        counts = [r["splits"][split] for r in records]
        stats[split] = SplitStats(
            documents=sum(c["documents"] for c in counts), tokens=sum(c["tokens"] for c in counts),
            blocks=sum(c["blocks"] for c in counts) + tails.stats.blocks,
            dropped_tail_tokens=tails.stats.dropped_tail_tokens,
            **{key: sum(c.get(key, 0) for c in counts) for key in SKIP_REASONS.values()})
        files[split] = [name for c in counts for name in c["files"]] + tails.files
        # Each task hashed its files as it wrote them: the split's digest needs no second pass over the blocks.
        digests[split] = [digest for c in counts for digest in c["digests"]] + tails.digests
        for name in files[split]:
            if not (work.staging / split / name).is_file():
                raise EduGPTError(f"{str(work.staging / split / name)!r} is missing; delete the completion markers in "
                                  f"{str(work.tokenize_logs / 'completions')!r} of the tasks that wrote it and re-run.")
    require_blocks(stats, seq_len)
    write_layout(work.staging, files, seq_len)
    _remove_strays(work, files)

    ids_tmp = work.staging / f".{DOC_IDS}.tmp"
    with pq.ParquetWriter(str(ids_tmp), id_schema(), compression="zstd") as ids:
        for rank in range(plan["tasks"]):
            for batch in pq.ParquetFile(work.id_part(rank)).iter_batches(batch_size=ID_ROW_GROUP_ROWS):
                ids.write_batch(batch)
    os.replace(ids_tmp, work.staging / DOC_IDS)

    source = Source(plan["source"]["kind"], plan["source"]["dataset"], subset=plan["source"]["subset"])
    manifest = build_manifest(args, source, plan["has_id"], check_tokenizer(args.tokenizer), stats,
                              files=[f["path"] for f in plan["files"]], content=content_section(files, digests))
    manifest["source"]["revision"] = plan["source"]["revision"]
    manifest["preparation"] = {
        "executor": plan["executor"], "tasks": plan["tasks"], "block_order": BLOCK_ORDER, "tail": TAIL_RULE,
        "per_task": [{"rank": r["rank"], "rows": r["rows"], "splits": {
            split: {k: v for k, v in counts.items() if k not in ("files", "digests")}
            for split, counts in r["splits"].items()},
            **_ran_on(r["ran_on"])} for r in records],
    }
    manifest = write_manifest(work.staging, manifest)
    verify(work.staging)
    return manifest


def task_record(work: WorkDir, rank: int, seq_len: int) -> dict:
    """Task `rank`'s record, checked against what the task wrote: its seal (`record_seal`), the digest of its id part,
    and counts that add up with its tails. Its blocks' digests are recomputed from its files by `verify`."""
    path, redo = work.record(rank), (f"delete {str(work.record(rank))!r} and {str(work.completion(rank))!r} and re-run "
                                     "to redo that task")
    try:
        record = json.loads(path.read_text())
        seal = record.pop("sha256")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError):
        raise EduGPTError(f"task {rank} is marked complete but its record {str(path)!r} is missing or damaged; "
                          f"{redo}.") from None
    try:
        changed = "its seal" if seal != record_seal(record) or record["rank"] != rank else None
        if changed is None and file_sha256(work.id_part(rank)) != record["ids_sha256"]:
            changed = f"the digest of {str(work.id_part(rank))!r}"
        for split in SPLITS:
            counts, tail = record["splits"][split], record["tails"][split]
            if changed is None and not (len(tail) == counts["tail_tokens"] and all(0 <= t < 2**16 for t in tail)
                                        and counts["tokens"] == counts["blocks"] * seq_len + len(tail)):
                changed = f"its {split} counts and tail"
    except (OSError, KeyError, TypeError) as err:
        changed = f"{type(err).__name__}: {err}"
    if changed:
        raise EduGPTError(f"task {rank}'s record {str(path)!r} does not match what the task wrote ({changed} "
                          f"differs); {redo}.")
    return record


def _remove_strays(work: WorkDir, files: dict[str, list[str]]) -> None:
    """The dataset being assembled holds exactly what the merge lists: a file a killed merge (or task attempt) left in
    WORK/dataset, inside this run's own work dir, is removed so it is neither installed nor recorded."""
    wanted = {"dataset_dict.json", DOC_IDS, *(f"{split}/{name}" for split, names in files.items() for name in
                                              (*names, "state.json", "dataset_info.json"))}
    for folder, _, names in os.walk(work.staging):
        for name in names:
            path = Path(folder) / name
            if path.relative_to(work.staging).as_posix() not in wanted:
                logger.info("removing %s: left in the work dir by an interrupted run", path)
                path.unlink()


# -------------------------------------------------------------------------------------------------------- driver

def prepare_parallel(args: PrepareDataArguments, ex: ExecutorArguments) -> dict | None:
    """Plan (or resume), run the tasks on the chosen executor, merge. Returns the manifest (None for Slurm, whose
    merge runs later as a job)."""
    started = time.perf_counter()
    if args.max_docs is not None:
        raise EduGPTError("--max_docs takes the first N documents in order, which only the default executor does; "
                          "for a quick parallel slice point --dataset at fewer parquet files.")
    out = Path(args.output_dir).absolute()
    source = resolve_source(args.dataset, args.subset)
    check_not_input(out, source)
    check_output_dir(out, args.overwrite)
    if source.kind == "hub" and not hub_available():
        raise EduGPTError(f"the Hugging Face Hub is unreachable (offline), so {source.dataset!r} cannot be read; "
                          "pass a local folder of parquet files, or --dataset embedded.")
    check_tokenizer(args.tokenizer)
    _check_executor(ex)
    work = WorkDir(out)
    ensure_dir(out.parent, "the folder of --output_dir")
    # The launcher holds the output's lock while it plans, runs the tasks (local, Ray) and merges; Slurm tasks only
    # write inside the work dir, and the merge job takes the lock again before it touches the output.
    with work.locked():
        check_output_dir(out, args.overwrite)  # again, under the lock: an interrupted swap may have completed
        check_swap_room(out)
        plan = _resume_or_plan(work, args, ex, source)
        plan.update(executor=ex.executor, output_dir=str(out), overwrite=args.overwrite)
        _write_json(work.plan, plan)
        _forget_unrecorded_completions(work, plan["tasks"])
        todo = incomplete_ranks(work, plan["tasks"])
        print(f"{plan['tasks']} tasks over {len(plan['files'])} parquet files: {plan['tasks'] - len(todo)} already "
              f"done, {len(todo)} to run ({ex.executor}); work dir {work.root}", flush=True)
        if ex.executor == "slurm":
            _launch_slurm(work, plan, ex)
            return None
        try:
            _run_tasks(work, plan, ex)
        except UnusableInputError:
            remove_made(work.root)  # the input must change: no task of this run can be reused
            raise
        except (EduGPTError, KeyboardInterrupt):
            raise
        except Exception as err:  # a task failed (disk full, a damaged file, ...): datatrove logged its traceback
            if no_space_reason(err):
                raise EduGPTError(f"no space left on the device while the tasks wrote to {str(work.root)!r} ({err}); "
                                  "free space there and re-run the same command: the finished tasks are kept, so "
                                  "only the others run again.") from None
            raise EduGPTError(f"a task failed ({type(err).__name__}: {err}); the finished tasks are kept in "
                              f"{str(work.root)!r} and the task logs in {str(work.tokenize_logs / 'logs')!r}. Fix the "
                              "cause and re-run the same command to resume.") from err
        try:
            manifest = finish(work, plan, started)
        except EmptySplitError:
            remove_made(work.root)  # too little input for these settings: no other settings can reuse this work
            raise
        except OSError as err:  # disk full, permissions: the merge is redone from the start by a re-run
            if no_space_reason(err):
                raise no_space_error(out, err) from None
            raise EduGPTError(f"the merge failed ({err}); fix the cause and re-run the same command to redo it "
                              f"(the tasks' work is kept in {str(work.root)!r}).") from err
        remove_made(work.root)
    return manifest


def _resume_or_plan(work: WorkDir, args, ex: ExecutorArguments, source: Source) -> dict:
    if work.resumable():
        plan = work.read_plan()
        wanted = plan_settings(args, source, ex.tasks or plan["tasks"])
        changed = [f"{key} {plan['settings'].get(key)!r} -> {value!r}" for key, value in wanted.items()
                   if plan["settings"].get(key) != value]
        changed += [f"{f['path']} changed" for f in plan["files"] if _stamp(f["path"]) != f["stamp"]]
        if source.kind != "hub":
            listed = [str(Path(f).absolute()) for f in source.files]
            if listed != [f["path"] for f in plan["files"]]:
                changed.append("the list of input files changed")
        if changed:
            raise EduGPTError(f"{str(work.root)!r} holds an unfinished preparation with other settings or input "
                              f"({'; '.join(changed)}); re-run the command that started it to resume, or delete that "
                              "directory to start over.")
        logger.info("resuming the preparation in %s", work.root)
        return plan
    if any(p.name != MADE for p in work.root.iterdir()):
        logger.info("clearing %s: left by a finished or interrupted run, nothing to resume", work.root)
        work.empty()
    try:
        plan = make_plan(args, ex, source)
    except BaseException:
        remove_made(work.root)  # nothing was planned: leave nothing
        raise
    work.create(plan)
    return plan


def _forget_unrecorded_completions(work: WorkDir, tasks: int) -> None:
    """A completion marker without the task's record (or files) was not written by a finished task: redo that task."""
    for rank in range(tasks):
        if work.completion(rank).is_file() and not work.record(rank).is_file():
            logger.warning("task %d is marked complete but left no record: running it again", rank)
            work.completion(rank).unlink()


def _run_tasks(work: WorkDir, plan: dict, ex: ExecutorArguments) -> None:
    step = TokenizeShard(str(work.root), threads=ex.cpus_per_task)
    if ex.executor == "local":
        import multiprocess
        from datatrove.executor import LocalPipelineExecutor

        # Workers are forked from datatrove's forkserver: let it import what every task needs once (datasets' Arrow
        # writer: ~0.9 CPU-s), rather than each worker.
        multiprocess.get_context("forkserver").set_forkserver_preload(["__main__", *FORKSERVER_PRELOAD])
        workers = min(ex.workers or os.cpu_count() or 1, plan["tasks"])
        os.environ[DIE_WITH_PARENT] = "1"  # every process forked from here on dies with its parent
        try:
            LocalPipelineExecutor([step], tasks=plan["tasks"], workers=workers,
                                  logging_dir=str(work.tokenize_logs)).run()
        finally:
            os.environ.pop(DIE_WITH_PARENT, None)
        return
    import ray
    from datatrove.executor.ray import RayPipelineExecutor

    ray.init(address=ex.ray_address or os.environ.get("RAY_ADDRESS"), logging_level=logging.WARNING)
    try:
        RayPipelineExecutor([step], tasks=plan["tasks"], workers=ex.workers or -1,
                            logging_dir=str(work.tokenize_logs), cpus_per_task=ex.cpus_per_task,
                            mem_per_cpu_gb=ex.mem_per_cpu_gb).run()
    finally:
        ray.shutdown()


def _check_executor(ex: ExecutorArguments, timeout: float = 10.0) -> None:
    """What the executor needs, checked before any planning: sbatch for Slurm; Ray installed and its head reachable
    (`ray.init` waits for an absent head indefinitely: seen for 10+ minutes)."""
    if ex.executor == "slurm" and shutil.which("sbatch") is None:
        raise EduGPTError("--executor slurm submits jobs with sbatch, which is not on PATH here; run it on the "
                          "cluster's login node (or use --executor local).")
    if ex.executor != "ray":
        return
    try:
        import ray  # noqa: F401
    except ImportError:
        raise EduGPTError("--executor ray needs Ray: pip install 'edugpt[ray]' (on every node).") from None
    address = ex.ray_address or os.environ.get("RAY_ADDRESS")
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except (OSError, ValueError) as err:
        raise EduGPTError(f"cannot reach the Ray cluster at {address!r} ({err}); start it (`ray start --head`) or fix "
                          "--ray_address / RAY_ADDRESS.") from None


def slurm_executors(work: WorkDir, plan: dict, ex: ExecutorArguments):
    """The tokenize job array and the one-task merge job that waits for it (datatrove's `depends`)."""
    from datatrove.executor.slurm import SlurmPipelineExecutor

    env = {"env_command": ex.slurm_env_command}
    if not ex.slurm_env_command and sys.prefix != sys.base_prefix:
        env = {"venv_path": str(Path(sys.prefix) / "bin" / "activate")}
    # Memory in MB: datatrove writes `--mem-per-cpu={gb}G`, and Slurm takes no fraction there ("2.5G").
    memory = {"mem-per-cpu": f"{round(ex.mem_per_cpu_gb * 1024)}M"}
    common = {"time": ex.slurm_time, "partition": ex.slurm_partition, "qos": ex.slurm_qos or "", "sbatch_args": memory,
              **env}
    name = f"edugpt-prepare-{work.out.name}"
    tokenize = SlurmPipelineExecutor([TokenizeShard(str(work.root), threads=ex.cpus_per_task)], tasks=plan["tasks"],
                                     workers=ex.workers or -1, cpus_per_task=ex.cpus_per_task, job_name=name,
                                     logging_dir=str(work.tokenize_logs), **common)
    merge_job = SlurmPipelineExecutor([MergeShards(str(work.root))], tasks=1, cpus_per_task=1,
                                      job_name=f"{name}-merge", logging_dir=str(work.merge_logs), depends=tokenize,
                                      skip_completed=False, **common)
    return tokenize, merge_job


def _launch_slurm(work: WorkDir, plan: dict, ex: ExecutorArguments) -> None:
    import subprocess

    tokenize, merge_job = slurm_executors(work, plan, ex)
    try:
        merge_job.run()  # submits the tokenize array first (unless it is complete), then the merge after it
    except (subprocess.CalledProcessError, OSError) as err:
        raise EduGPTError(f"sbatch failed ({err}); nothing was prepared. Fix the Slurm options and re-run.") from None
    tokenize_id = "none needed" if tokenize.job_id in (None, -1) else tokenize.job_id
    print(f"submitted: tokenize job array {tokenize_id}, merge job {merge_job.job_id} (after it). The dataset "
          f"appears at {work.out} when the merge job ends; job scripts and logs are in {work.logs}. If a job fails, "
          "re-run this command to submit only the unfinished tasks and the merge.")

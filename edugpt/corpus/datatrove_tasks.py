"""One datatrove task of a preparation (see `edugpt.corpus.datatrove`): stream its rows straight from the parquet
files, tokenize with `tokenize_batch`, pack each split with a `SplitWriter`, move its finished files into the work
dir and write its sealed record last (`run_task`, as the datatrove step `TokenizeShard`). Also what keeps a local
run's forked processes from outliving the launcher (`die_with_parent`).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import sys
import time
from pathlib import Path

from datatrove.pipeline.base import PipelineStep

from edugpt.corpus.datatrove_work import WorkDir, record_seal, task_pieces, work_dir_output
from edugpt.corpus.install import make_dir, remove_made
from edugpt.corpus.layout import DOC_IDS, write_json
from edugpt.corpus.pack import SplitStats, SplitsWriter, UnusableInputError
from edugpt.corpus.sources import (
    ID_COLUMN,
    TEXT_COLUMN,
    document_columns,
    first_non_utf8_row,
    open_parquet,
    parquet_batches,
)
from edugpt.corpus.split import SPLITS
from edugpt.corpus.tokens import SKIP_REASONS, column_values, tokenize_batch, tokenized_features
from edugpt.errors import EduGPTError
from edugpt.io.safefs import file_sha256

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
    work = WorkDir(work_dir_output(work_root))
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
    write_json(work.record(rank), {**record, "sha256": record_seal(record)})
    return record


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


def _task_counts(s: SplitStats) -> dict:
    return {"documents": s.documents, "tokens": s.tokens, "blocks": s.blocks, "tail_tokens": s.dropped_tail_tokens,
            **{key: getattr(s, key) for key in SKIP_REASONS.values()}}

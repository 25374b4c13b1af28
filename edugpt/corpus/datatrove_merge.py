"""The merge of a datatrove preparation (see `edugpt.corpus.datatrove`), once every task is complete: check each
task's record against what it wrote, pack the tasks' tails, write the layout around the tasks' files, join the ids,
write and verify the manifest, and install the dataset (`finish_merge`; `MergeShards` runs it as a Slurm job).
Idempotent: a killed merge is simply run again.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from datatrove.pipeline.base import PipelineStep

from edugpt.config.arguments import PrepareDataArguments
from edugpt.corpus.datatrove_work import WorkDir, incomplete_ranks, record_seal, work_dir_output
from edugpt.corpus.install import MADE, check_dataset_output, move_into_place
from edugpt.corpus.layout import DOC_IDS, write_layout
from edugpt.corpus.manifest import build_manifest, content_section, print_summary, write_manifest
from edugpt.corpus.pack import ID_ROW_GROUP_ROWS, EmptySplitError, SplitStats, SplitWriter, id_schema, require_blocks
from edugpt.corpus.sources import Source
from edugpt.corpus.split import SPLITS
from edugpt.corpus.tokens import SKIP_REASONS, check_tokenizer
from edugpt.corpus.verify import verify
from edugpt.errors import EduGPTError
from edugpt.io.safefs import file_sha256

logger = logging.getLogger(__name__)

BLOCK_ORDER = ("per split: the blocks of task 0, then task 1, ... (each task's rows in source order), then the "
               "blocks packed from the tasks' tails in task order; the same for any executor and any finishing order")
TAIL_RULE = ("each task hands the < seq_len tokens after its last full block of each split to the merge, which packs "
             "them in task order; only the final remainder of each split is dropped (dropped_tail_tokens)")

# Seconds a Slurm merge job waits for a launcher that still holds the work dir (the job may start at once when
# every task was already done).
MERGE_LOCK_WAIT = 600


def _ran_on(ran_on: dict) -> dict:
    """Where and when a task ran, for the manifest (to spot slow hosts; a resumed run's tasks ran at other times)."""
    started = datetime.fromtimestamp(ran_on["started"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return {"executor": ran_on["executor"], "host": ran_on["host"], "started": started,
            "seconds": round(ran_on["finished"] - ran_on["started"], 3)}


# --------------------------------------------------------------------------------------------------------- merge

class MergeShards(PipelineStep):
    """datatrove step (a one-task Slurm job after the tokenize array): `finish_merge`
    (merge, move the dataset into place)."""

    name = "merge task outputs into one dataset"
    type = "edugpt"

    def __init__(self, work_root: str):
        super().__init__()
        self.work_root = work_root

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        work = WorkDir(work_dir_output(Path(self.work_root)))
        with work.locked(wait=MERGE_LOCK_WAIT):
            try:
                manifest = finish_merge(work, work.read_plan(), started=None)
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


def finish_merge(work: WorkDir, plan: dict, started: float | None) -> dict:
    """Once every task is complete: merge, verify, move into place. Safe to run again after a kill."""
    missing = incomplete_ranks(work, plan["tasks"])
    if missing:
        shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise EduGPTError(f"{len(missing)} of {plan['tasks']} tasks did not finish (tasks {shown}); their logs are "
                          f"in {str(work.tokenize_logs / 'logs')!r}. Re-run the same command to run only those.")
    manifest = merge_tasks(work, plan)
    args = plan_args(plan)
    check_dataset_output(work.out, args.overwrite)  # again (a Slurm merge runs long after the launcher checked)
    move_into_place(work.staging, work.out)
    if started is not None:
        print_summary(manifest, work.out, time.perf_counter() - started)
    return manifest


def plan_args(plan: dict) -> PrepareDataArguments:
    s = plan["settings"]
    return PrepareDataArguments(dataset=s["dataset"], subset=s["subset"], tokenizer=s["tokenizer"],
                                seq_len=s["seq_len"], val_fraction=s["val_fraction"], output_dir=plan["output_dir"],
                                overwrite=plan["overwrite"])


def merge_tasks(work: WorkDir, plan: dict) -> dict:
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

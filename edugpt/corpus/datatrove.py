"""Prepare a corpus in parallel, resumable tasks with datatrove: on this machine, on a Slurm cluster, or on Ray.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128 --executor local --tasks 8 --workers 2
    python prepare_data.py --subset sample-100BT --output_dir data/prepared/edu100B --executor local --tasks 512 --workers 64
    python prepare_data.py --subset full --output_dir /shared/edu-full --executor slurm --tasks 4096 --slurm_partition cpu
    RAY_ADDRESS=head-node:6379 python prepare_data.py --subset sample-350BT --output_dir /shared/edu350B \\
        --executor ray --tasks 2048

The same split rule, tokenizer and packer as the single-machine path (`edugpt.corpus.local`), cut into tasks
(the work dir and plan: `datatrove_work`; a task: `datatrove_tasks`; the merge: `datatrove_merge`; this module
launches them):

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

The output's lock (`edugpt.corpus.install.output_lock`, `.NAME.lock` beside it) is held by the launcher while it plans,
runs local or Ray tasks and merges. Tasks (local workers, Ray tasks on other nodes, Slurm array tasks) never take it: they
write only their own files inside WORK, and a task's half-written part is removed when it fails or is retried. A Slurm
merge job takes the lock itself (waiting for the launcher) before it touches the output. Local workers die with the
launcher (`die_with_parent`): a killed launcher leaves no worker running and nothing holding the lock, and the same
command resumes.

WORK and each task's temporary folder are made with `edugpt.corpus.install.make_dir`, which records their identity
inside them: only a folder proven that way is ever emptied or deleted.

The result is the single-machine path's layout: `datasets.load_from_disk` and training read it unchanged. Block order
is task order, not finishing order, so a resumed run writes the same blocks as an uninterrupted one; with
`--tasks 1` the blocks equal the single-machine path's exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
from edugpt.corpus.datatrove_merge import MergeShards, finish_merge
from edugpt.corpus.datatrove_tasks import DIE_WITH_PARENT, TokenizeShard
from edugpt.corpus.datatrove_work import WorkDir, file_stamp, incomplete_ranks, make_plan, plan_settings
from edugpt.corpus.install import MADE, check_dataset_output, check_not_input, check_swap_room, remove_made
from edugpt.corpus.layout import write_json
from edugpt.corpus.pack import EmptySplitError, UnusableInputError
from edugpt.corpus.sources import Source, resolve_source
from edugpt.corpus.tokens import check_tokenizer
from edugpt.errors import EduGPTError
from edugpt.io.atomic import no_space_error, no_space_reason
from edugpt.io.net import hub_available
from edugpt.io.safefs import ensure_dir

logger = logging.getLogger(__name__)

# Modules datatrove's local forkserver imports before forking task workers.
FORKSERVER_PRELOAD = ["datasets.arrow_writer", "edugpt.corpus.datatrove", "tiktoken"]


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
    check_dataset_output(out, args.overwrite)
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
        check_dataset_output(out, args.overwrite)  # again, under the lock: an interrupted swap may have completed
        check_swap_room(out)
        plan = resume_or_plan(work, args, ex, source)
        plan.update(executor=ex.executor, output_dir=str(out), overwrite=args.overwrite)
        write_json(work.plan, plan)
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
            manifest = finish_merge(work, plan, started)
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


def resume_or_plan(work: WorkDir, args, ex: ExecutorArguments, source: Source) -> dict:
    if work.resumable():
        plan = work.read_plan()
        wanted = plan_settings(args, source, ex.tasks or plan["tasks"])
        changed = [f"{key} {plan['settings'].get(key)!r} -> {value!r}" for key, value in wanted.items()
                   if plan["settings"].get(key) != value]
        changed += [f"{f['path']} changed" for f in plan["files"] if file_stamp(f["path"]) != f["stamp"]]
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

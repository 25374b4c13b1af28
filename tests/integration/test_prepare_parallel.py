"""edugpt.corpus.datatrove*: datatrove tasks (local, Ray, Slurm) give the single-machine path's dataset, resume after a
kill, and refuse bad input without leaving anything behind."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import ROOT, run_script

from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
from edugpt.corpus.datatrove import prepare_parallel
from edugpt.corpus.datatrove_work import WorkDir, task_pieces
from edugpt.corpus.install import MADE
from edugpt.corpus.local import prepare_dataset
from edugpt.corpus.manifest import MANIFEST
from edugpt.corpus.sources import EMBEDDED_CORPUS, open_parquet, parquet_batches
from edugpt.corpus.split import derive_id, split_of
from edugpt.corpus.verify import verify
from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import GPT2_EOS_ID, gpt2_tiktoken

ENC = gpt2_tiktoken()
SPLITS = ("train", "validation")


# ------------------------------------------------------------------------------------------------------- corpora

def write_parquet_folder(root: Path, rows: list[dict], n_files: int, row_group_sizes=(7, 50, 1000)) -> Path:
    """`rows` cut into `n_files` parquet files (one in a sub-folder), with different row-group sizes."""
    root.mkdir(parents=True)
    (root / "more").mkdir()
    bounds = np.linspace(0, len(rows), n_files + 1).astype(int)
    for k in range(n_files):
        folder = root / "more" if k == n_files - 1 else root
        pq.write_table(pa.Table.from_pylist(rows[bounds[k]:bounds[k + 1]]), folder / f"part-{k:02d}.parquet",
                       row_group_size=row_group_sizes[k % len(row_group_sizes)])
    return root


def embedded_rows(copies: int = 1) -> list[dict]:
    base = pq.read_table(EMBEDDED_CORPUS, columns=["id", "text"]).to_pylist()
    return [{"id": f"{row['id']}#{c}", "text": row["text"]} for c in range(copies) for row in base]


def awkward_rows() -> list[dict]:
    """The embedded corpus plus what real data holds: empty and missing texts, and ids repeated with other text."""
    rows = embedded_rows()
    rows[10]["text"], rows[200]["text"], rows[300]["text"] = "", None, "   \n"
    rows += [{"id": rows[k]["id"], "text": f"Another document with the id of document {k}. " * 30} for k in (5, 77)]
    return rows


def expected_documents(rows, val_fraction: float) -> dict[str, Counter]:
    """Each split's documents as token tuples (GPT-2 tokens + eos), from the rows directly."""
    docs = {split: Counter() for split in SPLITS}
    for row in rows:
        text = row["text"]
        if isinstance(text, str) and text.strip():
            split = split_of(row["id"] or derive_id(text), val_fraction)
            docs[split][tuple(ENC.encode_ordinary(text) + [GPT2_EOS_ID])] += 1
    return docs


# ------------------------------------------------------------------------------------------------------ reading

def load_blocks(out: Path) -> dict[str, np.ndarray]:
    import datasets

    dd = datasets.load_from_disk(str(out))
    return {split: np.asarray(dd[split].with_format("numpy")["input_ids"]) for split in SPLITS}


def documents_in(out: Path) -> dict[str, tuple[Counter, list[tuple]]]:
    """Per split: the documents found whole in the blocks, and the truncated pieces (documents whose end is dropped).

    A parallel dataset is read back with its manifest's per-task counts: task k's stream is its own blocks followed by
    its tail, which sits in the tail blocks after the tails of tasks 0..k-1."""
    manifest = json.loads((out / MANIFEST).read_text())
    seq_len, per_task = manifest["seq_len"], manifest.get("preparation", {}).get("per_task")
    found = {}
    for split, blocks in load_blocks(out).items():
        flat = blocks.reshape(-1)
        if per_task is None:
            streams = [flat]
        else:
            counts = [task["splits"][split] for task in per_task]
            tails = flat[sum(c["blocks"] for c in counts) * seq_len:]
            streams, at, tail_at = [], 0, 0
            for c in counts:
                own = flat[at:at + c["blocks"] * seq_len]
                streams.append(np.concatenate([own, tails[tail_at:tail_at + c["tail_tokens"]]]))
                at, tail_at = at + len(own), tail_at + c["tail_tokens"]
        whole, truncated = Counter(), []
        for stream in streams:
            ends = np.flatnonzero(stream == GPT2_EOS_ID)
            start = 0
            for end in ends:
                whole[tuple(stream[start:end + 1].tolist())] += 1
                start = end + 1
            if start < len(stream):
                truncated.append(tuple(stream[start:].tolist()))
        found[split] = (whole, truncated)
    return found


def assert_every_document_once(out: Path, rows, val_fraction: float) -> None:
    """Each split holds each of its documents exactly once, whole, except that the last `dropped_tail_tokens` tokens
    of the split are missing from the end of one or a few documents (the single path: one)."""
    manifest = json.loads((out / MANIFEST).read_text())
    expected = expected_documents(rows, val_fraction)
    for split, (whole, truncated) in documents_in(out).items():
        missing = expected[split] - whole
        assert not whole - expected[split], f"{split}: blocks hold documents the corpus does not"
        assert sum(missing.values()) == len(truncated), split
        lost = 0
        for piece in truncated:
            doc = next(d for d in missing if missing[d] and d[:len(piece)] == piece)
            missing[doc] -= 1
            lost += len(doc) - len(piece)
        assert lost == manifest["splits"][split]["dropped_tail_tokens"], split


def ids_by_split(out: Path) -> dict[str, Counter]:
    table = pq.read_table(out / "doc_ids.parquet").to_pylist()
    return {split: Counter(r["id"] for r in table if r["split"] == split) for split in SPLITS}


def task_counts(manifest: dict) -> list[dict]:
    """Per-task counts of a manifest, without where and when each task ran."""
    return [{k: t[k] for k in ("rank", "rows", "splits")} for t in manifest["preparation"]["per_task"]]


def parallel(tmp_path, dataset, name, executor="local", tasks=None, workers=None, **kwargs):
    kwargs = {"val_fraction": 0.05, "seq_len": 128, **kwargs}
    args = PrepareDataArguments(dataset=str(dataset), output_dir=str(tmp_path / name), **kwargs)
    return prepare_parallel(args, ExecutorArguments(executor=executor, tasks=tasks, workers=workers)), tmp_path / name


def single(tmp_path, dataset, name, **kwargs):
    kwargs = {"val_fraction": 0.05, "seq_len": 128, "num_proc": 1, **kwargs}
    args = PrepareDataArguments(dataset=str(dataset), output_dir=str(tmp_path / name),
                                cache_dir=str(tmp_path / "cache"), **kwargs)
    return prepare_dataset(args), tmp_path / name


# ------------------------------------------------------------------------------------------------ pure functions

def test_tasks_cut_the_rows_into_equal_contiguous_ranges():
    plan = {"tasks": 4, "files": [{"path": p, "rows": n} for p, n in zip("abcd", (5, 0, 7, 3))]}
    pieces = [task_pieces(plan, rank) for rank in range(4)]
    assert pieces == [[("a", 0, 3)], [("a", 3, 5), ("c", 0, 2)], [("c", 2, 6)], [("c", 6, 7), ("d", 0, 3)]]
    many = {"tasks": 20, "files": plan["files"]}  # more tasks than rows: some get nothing, none gets a row twice
    rows = [(p, r) for rank in range(20) for p, a, b in task_pieces(many, rank) for r in range(a, b)]
    assert rows == [(p, r) for p, n in zip("abcd", (5, 0, 7, 3)) for r in range(n)]


def test_parquet_batches_read_any_row_range_across_row_groups(tmp_path):
    table = pa.table({"text": [f"doc {i}" for i in range(23)], "id": [str(i) for i in range(23)]})
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=5)
    with open_parquet(str(tmp_path / "t.parquet")) as pf:
        for start, stop in ((0, 23), (5, 12), (13, 14), (4, 5), (22, 23), (7, 7)):
            got = [row for b in parquet_batches(pf, ["text", "id"], start, stop, batch_size=3) for row in b.to_pylist()]
            assert got == table.slice(start, stop - start).to_pylist()


# ------------------------------------------------------------------------------------------------ equivalence

@pytest.mark.slow
@pytest.mark.parametrize("corpus", ["embedded", "folder"])
def test_local_tasks_give_the_single_machine_dataset(tmp_path, corpus):
    """--tasks 1, --tasks 8 --workers 2 and the default path: same ids per split, every document once, same counts;
    --tasks 1 writes exactly the default path's blocks."""
    if corpus == "embedded":
        dataset, rows = EMBEDDED_CORPUS, pq.read_table(EMBEDDED_CORPUS, columns=["id", "text"]).to_pylist()
    else:
        rows = awkward_rows()
        dataset = write_parquet_folder(tmp_path / "corpus", rows, n_files=5)
    base, out_base = single(tmp_path, dataset, "single")
    one, out_one = parallel(tmp_path, dataset, "tasks1", tasks=1, workers=1)
    eight, out_eight = parallel(tmp_path, dataset, "tasks8", tasks=8, workers=2)

    assert base["splits"] == one["splits"] == eight["splits"]
    assert base["splits"]["validation"]["documents"] > 5
    ids = ids_by_split(out_base)
    assert ids == ids_by_split(out_one) == ids_by_split(out_eight)
    for split in SPLITS:
        assert sorted(ids[split]) == sorted({r["id"] for r in rows if split_of(r["id"], 0.05) == split and
                                             isinstance(r["text"], str) and r["text"].strip()})
    blocks_base, blocks_one = load_blocks(out_base), load_blocks(out_one)
    assert all(np.array_equal(blocks_base[s], blocks_one[s]) for s in SPLITS)
    for out in (out_base, out_eight):
        assert_every_document_once(out, rows, 0.05)
    # The same files and layout as the single-machine path; training's loader reads both.
    assert sorted(p.name for p in out_eight.iterdir()) == sorted(p.name for p in out_base.iterdir())
    prep = eight["preparation"]
    assert prep["tasks"] == 8 and len(prep["per_task"]) == 8 and "task order" in prep["block_order"]
    assert sum(t["rows"] for t in prep["per_task"]) == len(rows)
    assert {t["executor"] for t in prep["per_task"]} == {"local"}
    # No work dir left; only the outputs' lock files stay (never deleted, see safefs.DirLock).
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [
        ".single.lock", ".tasks1.lock", ".tasks8.lock"]
    # Each dataset's digests verify (--tasks 1 stores the default path's blocks in other files, so its digests differ).
    assert all(verify(out) for out in (out_base, out_one, out_eight))
    from transformers import GPT2Config

    from edugpt.train.pretrain import load_prepared

    data = load_prepared(out_eight, GPT2Config(n_positions=128), seq_len=128)
    assert len(data.train) == eight["splits"]["train"]["blocks"]


# ---------------------------------------------------------------------------------------------------- resume

def _kill_when(proc, condition, timeout=180):
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended before it could be killed:\n{proc.stdout.read()}"
        assert time.time() < deadline, "the run never got there"
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_a_killed_run_resumes_with_only_the_unfinished_tasks(tmp_path):
    corpus = write_parquet_folder(tmp_path / "corpus", embedded_rows(copies=12), n_files=3)
    command = ["--dataset", corpus, "--seq_len", "256", "--val_fraction", "0.02", "--executor", "local",
               "--tasks", "8", "--workers", "1"]
    out = tmp_path / "out"
    work = WorkDir(out)
    proc = subprocess.Popen([sys.executable, str(ROOT / "prepare_data.py"), *map(str, command), "--output_dir",
                             str(out)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    _kill_when(proc, lambda: len(list((work.tokenize_logs / "completions").glob("*"))) >= 2)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = sorted(int(p.name) for p in (work.tokenize_logs / "completions").iterdir())
    assert 2 <= len(done) < 8
    inodes = {rank: (work.staging / "train" / f"task-{rank:05d}-00000.arrow").stat().st_ino for rank in done}

    again = run_script("prepare_data.py", *command, "--output_dir", out, timeout=300, check=True)
    assert f"{len(done)} already done, {8 - len(done)} to run" in again.stdout
    # The finished tasks were not run again: their files are the ones the killed run wrote.
    assert {rank: (out / "train" / f"task-{rank:05d}-00000.arrow").stat().st_ino for rank in done} == inodes
    assert not work.root.exists()

    run_script("prepare_data.py", *command, "--output_dir", tmp_path / "reference", timeout=300, check=True)
    resumed = json.loads((out / MANIFEST).read_text())
    reference = json.loads((tmp_path / "reference" / MANIFEST).read_text())
    assert resumed["splits"] == reference["splits"] and task_counts(resumed) == task_counts(reference)
    blocks, ref_blocks = load_blocks(out), load_blocks(tmp_path / "reference")
    assert all(np.array_equal(blocks[s], ref_blocks[s]) for s in SPLITS)
    assert pq.read_table(out / "doc_ids.parquet").equals(pq.read_table(tmp_path / "reference" / "doc_ids.parquet"))
    verify(out)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.name.isdigit():
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_killing_the_launcher_kills_its_workers_and_the_same_command_resumes(tmp_path):
    """SIGKILL of the launcher alone (not its process group): datatrove's Manager (forked with the lock's descriptor)
    and the pool workers die with it, so the lock is free and the same command resumes (a forked Manager used to
    outlive it, holding the lock, for as long as the machine ran)."""
    corpus = write_parquet_folder(tmp_path / "corpus", embedded_rows(copies=12), n_files=3)
    out = tmp_path / "out"
    command = ["--dataset", corpus, "--output_dir", out, "--seq_len", "256", "--val_fraction", "0.02",
               "--executor", "local", "--tasks", "8", "--workers", "2"]
    work = WorkDir(out)
    proc = subprocess.Popen([sys.executable, str(ROOT / "prepare_data.py"), *map(str, command)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    helpers: set[int] = set()
    try:
        deadline = time.time() + 180
        while not list((work.tokenize_logs / "completions").glob("*")):
            assert proc.poll() is None and time.time() < deadline, "the run ended (or hung) before it could be killed"
            helpers |= _descendants(proc.pid)
            time.sleep(0.05)
        helpers |= _descendants(proc.pid)
        assert len(helpers) >= 3, helpers  # the Manager, the forkserver and its workers (and a resource tracker)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.time() + 15
        while [pid for pid in helpers if _alive(pid)] and time.time() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in helpers if _alive(pid)], "processes of the killed launcher are still running"
    finally:
        for pid in helpers:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
    again = run_script("prepare_data.py", *command, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "already done" in again.stdout and verify(out) and not work.root.exists()


@pytest.mark.slow
def test_a_task_record_changed_after_the_task_wrote_it_is_never_merged(tmp_path, monkeypatch):
    """The merge trusts a task's tails, counts and id part only as the task wrote them: its record's seal, the id
    part's digest and counts that add up are checked (a changed tail used to be merged and then pass --verify)."""
    import edugpt.corpus.datatrove as pp
    from edugpt.corpus import datatrove_work

    monkeypatch.setattr(pp, "finish_merge", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    monkeypatch.undo()
    work = WorkDir(tmp_path / "out")
    record_bytes, ids_bytes = work.record(1).read_bytes(), work.id_part(0).read_bytes()
    record = json.loads(record_bytes)
    assert record["tails"]["train"], "task 1 left no train tail: pick a seq_len that leaves one"
    record["tails"]["train"][0] = (record["tails"]["train"][0] + 1) % 50257
    work.record(1).write_text(json.dumps(record))
    with pytest.raises(EduGPTError, match=r"task 1's record .*00001.json' does not match what the task wrote \(its "
                                          r"seal differs\); delete"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    # Resealed by hand, but the tail no longer adds up with the counts.
    record["tails"]["train"] = record["tails"]["train"][1:]
    del record["sha256"]
    work.record(1).write_text(json.dumps({**record, "sha256": datatrove_work.record_seal(record)}))
    with pytest.raises(EduGPTError, match=r"\(its train counts and tail differs\)"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    work.record(1).write_bytes(record_bytes)
    pq.write_table(pq.read_table(work.id_part(0)).slice(1), work.id_part(0))  # one document dropped from task 0's ids
    with pytest.raises(EduGPTError, match=r"task 0's record .* \(the digest of .*00000.parquet' differs\)"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    assert not (tmp_path / "out").exists()
    work.id_part(0).write_bytes(ids_bytes)
    _, out = parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)  # as the tasks wrote it: merged
    assert verify(out) and not work.root.exists()


@pytest.mark.slow
def test_a_merge_killed_before_the_move_is_redone(tmp_path, monkeypatch):
    from edugpt.corpus import datatrove_merge

    def killed(tmp, out):
        raise KeyboardInterrupt  # as if the process died just before the dataset was moved into place

    monkeypatch.setattr(datatrove_merge, "move_into_place", killed)
    with pytest.raises(KeyboardInterrupt):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=6, workers=1)
    monkeypatch.undo()
    work = WorkDir(tmp_path / "out")
    # ... and as if it had died in the middle of writing the merge's own files.
    tails = sorted(work.staging.glob("*/tails-*.arrow"))
    assert tails, "the merge packed no tail block: pick a seq_len that leaves more tail tokens"
    for path in (*tails, work.staging / "doc_ids.parquet"):
        path.write_bytes(path.read_bytes()[:100])
    (work.staging / ".doc_ids.parquet.tmp").write_bytes(b"PAR1 half a file")
    (work.staging / "validation" / "state.json").unlink()

    manifest, out = parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=6, workers=1)
    reference, ref_out = parallel(tmp_path, EMBEDDED_CORPUS, "reference", tasks=6, workers=1)
    assert manifest["splits"] == reference["splits"]
    blocks, ref_blocks = load_blocks(out), load_blocks(ref_out)
    assert all(np.array_equal(blocks[s], ref_blocks[s]) for s in SPLITS)
    assert not work.root.exists() and not (out / ".doc_ids.parquet.tmp").exists()


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused_and_keeps_the_work(tmp_path, monkeypatch):
    import edugpt.corpus.datatrove as pp

    monkeypatch.setattr(pp, "finish_merge", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    monkeypatch.undo()
    work = WorkDir(tmp_path / "out")
    before = sorted(p.relative_to(work.root) for p in work.root.rglob("*"))
    with pytest.raises(EduGPTError, match=r"unfinished preparation with other settings .*tasks 2 -> 3"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=3, workers=1)
    with pytest.raises(EduGPTError, match="seq_len 128 -> 64"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1, seq_len=64)
    assert sorted(p.relative_to(work.root) for p in work.root.rglob("*")) == before
    manifest, _ = parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)  # the same command resumes
    assert manifest["preparation"]["tasks"] == 2


@pytest.mark.slow
def test_a_failed_task_is_reported_in_one_line_and_the_rest_resumes(tmp_path):
    """A damaged data page (its footer reads fine, so planning passes): the task reading it fails, the others' work is
    kept, and once the file is repaired the same command finishes only what is left."""
    folder = write_parquet_folder(tmp_path / "corpus", embedded_rows(), n_files=3, row_group_sizes=(50,))
    damaged = folder / "part-01.parquet"
    original, stat = damaged.read_bytes(), damaged.stat()
    chunk = pq.ParquetFile(damaged).metadata.row_group(1).column(1)  # the `text` column of the 2nd row group
    middle = chunk.data_page_offset + chunk.total_compressed_size // 2
    damaged.write_bytes(original[:middle] + b"\xff" * 64 + original[middle + 64:])
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    with pytest.raises(EduGPTError, match=r"a task failed \(OSError: Corrupt snappy.*re-run the same command"):
        parallel(tmp_path, folder, "out", tasks=6, workers=1)
    work = WorkDir(tmp_path / "out")
    done = sorted((work.tokenize_logs / "completions").iterdir())
    assert 0 < len(done) < 6 and not (tmp_path / "out").exists()

    damaged.write_bytes(original)
    os.utime(damaged, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    manifest, out = parallel(tmp_path, folder, "out", tasks=6, workers=1)
    reference, _ = single(tmp_path, folder, "reference")
    assert manifest["splits"] == reference["splits"] and not work.root.exists()
    verify(out)


# --------------------------------------------------------------------------------------------------------- Ray

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_cluster():
    """A real two-node Ray cluster on this machine: a head node with no CPUs and a worker node with two (separate
    `ray start` processes with their own ports; stopped by their process ids afterwards). The driver joins at the head,
    and every task has to run on the other node, fetching the pipeline from the head's object store."""
    ray_cli = str(Path(sys.executable).parent / "ray")
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's unix socket paths must fit 107 bytes
    port = _free_port()
    common = ["--block", "--object-store-memory=80000000", "--disable-usage-stats", "--node-ip-address=127.0.0.1",
              "--min-worker-port=0", "--max-worker-port=0", f"--dashboard-agent-listen-port={_free_port()}"]
    procs = [subprocess.Popen([ray_cli, "start", "--head", "--num-cpus=0", f"--port={port}",
                               "--include-dashboard=false", f"--temp-dir={temp}",
                               f"--ray-client-server-port={_free_port()}", *common],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        deadline = time.time() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.time() < deadline and procs[0].poll() is None, "the Ray head did not start"
                time.sleep(0.2)
        procs.append(subprocess.Popen([ray_cli, "start", "--num-cpus=2", f"--address=127.0.0.1:{port}", *common],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        import ray

        ray.init(address=f"127.0.0.1:{port}", logging_level="WARNING")
        try:
            while sum(node["Alive"] for node in ray.nodes()) < 2:
                assert time.time() < deadline and procs[1].poll() is None, "the Ray worker node did not join"
                time.sleep(0.5)
            cpus = sorted(node["Resources"].get("CPU", 0) for node in ray.nodes() if node["Alive"])
            assert cpus == [0, 2], cpus  # tasks (1 CPU each) can only run on the worker node
        finally:
            ray.shutdown()
        yield f"127.0.0.1:{port}"
    finally:
        for proc in reversed(procs):
            proc.terminate()  # `ray start --block` stops the processes it started
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        shutil.rmtree(temp, ignore_errors=True)


@pytest.mark.slow
def test_ray_tasks_on_a_two_node_cluster_give_the_same_dataset(tmp_path, ray_cluster):
    rows = awkward_rows()
    corpus = write_parquet_folder(tmp_path / "corpus", rows, n_files=3)
    common = ["--dataset", corpus, "--seq_len", "128", "--val_fraction", "0.05"]
    proc = run_script("prepare_data.py", *common, "--output_dir", tmp_path / "ray", "--executor", "ray",
                      "--tasks", "4", env={"RAY_ADDRESS": ray_cluster}, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "ray" / MANIFEST).read_text())
    local, _ = parallel(tmp_path, corpus, "local", tasks=4, workers=1)
    assert manifest["splits"] == local["splits"] and task_counts(manifest) == task_counts(local)
    blocks, local_blocks = load_blocks(tmp_path / "ray"), load_blocks(tmp_path / "local")
    assert all(np.array_equal(blocks[s], local_blocks[s]) for s in SPLITS)
    assert_every_document_once(tmp_path / "ray", rows, 0.05)
    assert {t["executor"] for t in manifest["preparation"]["per_task"]} == {"ray"}


def test_an_unreachable_ray_cluster_fails_fast(tmp_path, monkeypatch):
    import ray

    def no_init(*args, **kwargs):
        raise AssertionError("ray.init waits for an absent head indefinitely: it must not be reached")

    monkeypatch.setattr(ray, "init", no_init)
    with pytest.raises(EduGPTError, match="cannot reach the Ray cluster"):
        args = PrepareDataArguments(dataset="embedded", output_dir=str(tmp_path / "out"), seq_len=128)
        prepare_parallel(args, ExecutorArguments(executor="ray", tasks=2, ray_address=f"127.0.0.1:{_free_port()}"))
    assert not (tmp_path / "out").exists() and not WorkDir(tmp_path / "out").root.exists()


# ------------------------------------------------------------------------------------------------------- Slurm

FAKE_SBATCH = '''#!{python}
"""sbatch for tests: queues the job (script, options, the environment --export=ALL hands it) and prints its id.
`run_slurm_jobs` then plays the cluster."""
import json, os, sys
state = os.path.join(os.environ["FAKE_SLURM_DIR"], "jobs.json")
jobs = json.load(open(state)) if os.path.exists(state) else []
job_id = 1000 + len(jobs)
jobs.append({{"id": job_id, "options": sys.argv[1:-1], "script": open(sys.argv[-1]).read(), "env": dict(os.environ)}})
json.dump(jobs, open(state, "w"), indent=1)
print(f"Submitted batch job {{job_id}}")
'''
FAKE_SRUN = '''#!/usr/bin/env bash
# srun for tests: drop srun's own options (-l, -n N, --opt=value), run the command in place.
while [ $# -gt 0 ]; do case "$1" in -n|-N) shift 2;; -*) shift;; *) break;; esac; done
exec "$@"
'''
FAKE_SCONTROL = '''#!/usr/bin/env bash
# scontrol for tests: `scontrol show hostnames LIST` prints LIST (one local node); anything else does nothing.
if [ "$1 $2" = "show hostnames" ]; then echo "$3"; fi
'''


def run_slurm_jobs(state: Path) -> list[dict]:
    """Run the queued jobs as a cluster with free nodes would, in submission order: each array index as
    `bash SCRIPT` with Slurm's variables and the submitter's environment, output in the script's --output file. A job
    whose afterok dependency failed never runs (Slurm's DependencyNeverSatisfied)."""
    import re

    jobs = json.loads((state / "jobs.json").read_text())
    failed = set()
    for job in jobs:
        directives = dict(re.findall(r"^#SBATCH --([\w-]+)(?:=(.*))?$", job["script"], re.M))
        options = dict(o[2:].split("=", 1) for o in job["options"])
        env = dict(job["env"], SLURM_NODELIST="localhost", SLURM_ARRAY_JOB_ID=str(job["id"]))
        env.update(kv.split("=", 1) for kv in options.get("export", "ALL").split(",")[1:])
        dependency = options.get("dependency") or directives.get("dependency") or ""
        job["ran"] = not any(dep.startswith("afterok:") and any(j in failed for j in dep.split(":")[1:])
                             for dep in dependency.split(","))
        job["exit_codes"] = []
        if job["ran"]:
            script = state / f"job-{job['id']}.sh"
            script.write_text(job["script"])
            first, last = map(int, re.match(r"(\d+)-(\d+)", directives["array"]).groups())
            for index in range(first, last + 1):
                log = Path(directives["output"].replace("%A", str(job["id"])).replace("%a", str(index)))
                with log.open("w") as out:
                    job["exit_codes"].append(subprocess.run(
                        ["bash", str(script)], stdout=out, stderr=subprocess.STDOUT, timeout=300,
                        env=dict(env, SLURM_ARRAY_TASK_ID=str(index), SLURM_JOB_ID=f"{job['id']}_{index}")).returncode)
        if not job["ran"] or any(job["exit_codes"]):
            failed.add(str(job["id"]))
    return jobs


@pytest.fixture
def fake_slurm(tmp_path):
    bin_dir, state = tmp_path / "fake-slurm-bin", tmp_path / "fake-slurm"
    bin_dir.mkdir()
    state.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH.format(python=sys.executable)), ("srun", FAKE_SRUN),
                       ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}", "FAKE_SLURM_DIR": str(state)}
    return env, state


@pytest.mark.slow
def test_slurm_job_scripts_run_the_tasks_then_the_merge(tmp_path, fake_slurm):
    env, slurm = fake_slurm
    corpus = write_parquet_folder(tmp_path / "corpus", awkward_rows(), n_files=3)
    out = tmp_path / "out"
    proc = run_script("prepare_data.py", "--dataset", corpus, "--output_dir", out, "--seq_len", "128",
                      "--val_fraction", "0.05", "--executor", "slurm", "--tasks", "3", "--workers", "2",
                      "--slurm_partition", "cpu", "--slurm_time", "2:00:00", "--mem_per_cpu_gb", "3", env=env,
                      timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "submitted: tokenize job array 1000, merge job 1002" in proc.stdout
    work = WorkDir(out)
    assert not out.exists()  # sbatch only queued the jobs
    jobs = run_slurm_jobs(slurm)
    tokenize, tokenize_stats, merge, merge_stats = jobs
    # What datatrove generated: a 3-task array, at most 2 at once, the venv activated, each task through srun.
    script = tokenize["script"]
    for line in ("#SBATCH --array=0-2%2", "#SBATCH --partition=cpu", "#SBATCH --time=2:00:00",
                 "#SBATCH --cpus-per-task=1", "#SBATCH --mem-per-cpu=3072M", "#SBATCH --requeue",
                 f"#SBATCH --output={work.tokenize_logs}/slurm_logs/%A_%a.out",
                 f"source {Path(sys.executable).parent}/activate",
                 f"srun  -l -n 1 launch_pickled_pipeline {work.tokenize_logs}/executor.pik"):
        assert line in script, line
    assert "--qos" not in script and tokenize["options"] == ["--export=ALL,RUN_OFFSET=0"]
    assert "merge_stats" in tokenize_stats["script"] and "--dependency=afterok:1000" in tokenize_stats["script"]
    assert merge["options"] == ["--export=ALL,RUN_OFFSET=0", "--dependency=afterok:1000"]
    assert "#SBATCH --array=0-0" in merge["script"] and f"{work.merge_logs}/executor.pik" in merge["script"]
    assert all(job["ran"] and not any(job["exit_codes"]) for job in jobs), jobs

    # The jobs did the work: the dataset is in place and equals the local executor's with the same tasks.
    manifest = json.loads((out / MANIFEST).read_text())
    local, local_out = parallel(tmp_path, corpus, "local", tasks=3, workers=1)
    assert manifest["splits"] == local["splits"] and task_counts(manifest) == task_counts(local)
    blocks, local_blocks = load_blocks(out), load_blocks(local_out)
    assert all(np.array_equal(blocks[s], local_blocks[s]) for s in SPLITS)
    assert {t["executor"] for t in manifest["preparation"]["per_task"]} == {"slurm"}
    # Only the logs stay behind (job scripts and outputs), for the user to read, in the folder that records being ours.
    assert sorted(p.name for p in work.root.iterdir()) == [MADE, "logs"]
    assert len(list((work.tokenize_logs / "slurm_logs").glob("1000_*.out"))) == 3

    # Re-running the same command now finds the dataset there, as for any finished preparation.
    again = run_script("prepare_data.py", "--dataset", corpus, "--output_dir", out, "--executor", "slurm",
                       "--slurm_partition", "cpu", env=env, timeout=120)
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


@pytest.mark.slow
def test_slurm_resubmits_only_unfinished_tasks(tmp_path, fake_slurm):
    """A job array whose tasks partly failed: the re-run submits an array of just those, then the merge."""
    env, slurm = fake_slurm
    corpus = write_parquet_folder(tmp_path / "corpus", embedded_rows(), n_files=2)
    command = ["--dataset", corpus, "--output_dir", tmp_path / "out", "--seq_len", "128", "--executor", "slurm",
               "--tasks", "4", "--slurm_partition", "cpu"]
    work = WorkDir(tmp_path / "out")
    # As if tasks 1 and 3 had finished in an earlier job array: run them with the local executor on the same plan.
    parallel_args = PrepareDataArguments(dataset=str(corpus), output_dir=str(tmp_path / "out"), seq_len=128)
    import edugpt.corpus.datatrove as pp
    from edugpt.corpus import datatrove_tasks

    with work.locked():
        plan = pp.resume_or_plan(work, parallel_args, ExecutorArguments(executor="local", tasks=4), pp.resolve_source(
            str(corpus)))
    for rank in (1, 3):
        datatrove_tasks.run_task(work.root, rank, 4)
        work.completion(rank).parent.mkdir(parents=True, exist_ok=True)
        work.completion(rank).touch()
    proc = run_script("prepare_data.py", *command, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 already done, 2 to run (slurm)" in proc.stdout
    jobs = run_slurm_jobs(slurm)
    assert "#SBATCH --array=0-1" in jobs[0]["script"]
    assert all(job["ran"] and not any(job["exit_codes"]) for job in jobs), jobs
    assert json.loads((work.tokenize_logs / "ranks_to_run.json").read_text()) == [0, 2]
    assert json.loads((tmp_path / "out" / MANIFEST).read_text())["preparation"]["tasks"] == plan["tasks"] == 4
    verify(tmp_path / "out")


# --------------------------------------------------------------------------------------------------- bad input

def assert_refused(tmp_path, match, dataset, name="out", **kwargs):
    with pytest.raises(EduGPTError, match=match):
        parallel(tmp_path, dataset, name, **kwargs)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name in (name, f".{name}.prepare") or p.name.startswith(
        f".{name}.") and p.name != f".{name}.lock"]
    assert not leftovers, f"left behind: {leftovers}"


def test_executor_arguments_are_checked():
    with pytest.raises(EduGPTError, match="--executor must be one of datasets, local, slurm, ray"):
        ExecutorArguments(executor="dask")
    with pytest.raises(EduGPTError, match="--tasks and --workers apply to datatrove tasks"):
        ExecutorArguments(tasks=4)
    with pytest.raises(EduGPTError, match="needs --slurm_partition"):
        ExecutorArguments(executor="slurm")
    with pytest.raises(EduGPTError, match="--workers must be at least 1"):
        ExecutorArguments(executor="local", workers=0)


def test_bad_sources_are_refused_before_any_task(tmp_path, monkeypatch):
    (tmp_path / "c.jsonl").write_text(json.dumps({"id": "a", "text": "hello"}) + "\n")
    assert_refused(tmp_path, "reads parquet files, and .* is jsonl", tmp_path / "c.jsonl", tasks=2)
    assert_refused(tmp_path, "only the default executor does", EMBEDDED_CORPUS, tasks=2, max_docs=10)

    folder = write_parquet_folder(tmp_path / "corpus", embedded_rows(), n_files=3)
    pq.write_table(pa.table({"id": ["x"], "content": ["no text column"]}), folder / "part-01.parquet")
    assert_refused(tmp_path, r"part-01.parquet' has no 'text' column \(columns: id, content\)", folder, tasks=2)
    pq.write_table(pa.table({"text": ["no id column"]}), folder / "part-01.parquet")
    assert_refused(tmp_path, "part-01.parquet' lacks an 'id' column", folder, tasks=2)
    (folder / "part-01.parquet").write_bytes(b"PAR1 not really parquet")
    assert_refused(tmp_path, "cannot read parquet file .*part-01.parquet", folder, tasks=2)

    assert_refused(tmp_path, "Hub is unreachable", "HuggingFaceFW/fineweb-edu", subset="sample-100BT", tasks=2)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(EduGPTError, match="sbatch, which is not on PATH"):
        args = PrepareDataArguments(dataset="embedded", output_dir=str(tmp_path / "out"))
        prepare_parallel(args, ExecutorArguments(executor="slurm", slurm_partition="cpu"))


def test_an_output_that_is_inside_or_holds_the_input_is_refused(tmp_path):
    folder = write_parquet_folder(tmp_path / "corpus", embedded_rows(), n_files=2)
    before = sorted(folder.rglob("*"))
    (tmp_path / "link").symlink_to(folder)
    for out, relation in ((folder / "prepared", "lies inside"), (folder, "is"), (tmp_path / "link", "is"),
                          (tmp_path, "holds")):
        args = PrepareDataArguments(dataset=str(folder), output_dir=str(out), seq_len=128, overwrite=True)
        with pytest.raises(EduGPTError, match=f"{relation} the input"):
            prepare_parallel(args, ExecutorArguments(executor="local", tasks=2, workers=1))
    assert sorted(folder.rglob("*")) == before


@pytest.mark.slow
def test_too_little_input_leaves_nothing_behind(tmp_path):
    rows = [{"id": f"d{i}", "text": f"a short document {i}"} for i in range(40)]
    folder = write_parquet_folder(tmp_path / "corpus", rows, n_files=2)
    assert_refused(tmp_path, "the validation split would have 0 blocks", folder, tasks=2, workers=1,
                   val_fraction=0.01, seq_len=64)


def test_work_dir_is_never_shared_or_taken_over(tmp_path):
    out = tmp_path / "out"
    with WorkDir(out).locked():
        assert_refused_inside = pytest.raises(EduGPTError, match="is in use by another job")
        with assert_refused_inside:
            parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    assert not out.exists()
    # A file of the user's put into the work dir is never deleted, nor a folder of theirs where the work dir would go.
    root = WorkDir(out).root
    (root / "notes").mkdir()
    (root / "notes" / "keep.txt").write_text("mine")
    with pytest.raises(EduGPTError, match=r"holds files prepare_data.py did not make \(notes\)"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    assert (root / "notes" / "keep.txt").read_text() == "mine"
    (root / MADE).unlink()  # now nothing says the folder is ours
    with pytest.raises(EduGPTError, match="exists, and nothing records that prepare_data.py made it"):
        parallel(tmp_path, EMBEDDED_CORPUS, "out", tasks=2, workers=1)
    assert sorted(p.name for p in root.rglob("*")) == ["keep.txt", "notes"]
    # ... nor followed when it is a symlink.
    (tmp_path / "elsewhere").mkdir()
    link = WorkDir(tmp_path / "other").root
    link.symlink_to(tmp_path / "elsewhere")
    with pytest.raises(EduGPTError, match="is not a directory it made"):
        parallel(tmp_path, EMBEDDED_CORPUS, "other", tasks=2, workers=1)


@pytest.mark.slow
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path):
    folder = write_parquet_folder(tmp_path / "corpus", embedded_rows(), n_files=2)
    pq.write_table(pa.table({"body": ["x"]}), folder / "part-00.parquet")
    proc = run_script("prepare_data.py", "--dataset", folder, "--output_dir", tmp_path / "out", "--executor", "local",
                      "--tasks", "2", timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "has no 'text' column" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "corpus"]

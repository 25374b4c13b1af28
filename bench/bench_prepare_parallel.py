"""prepare_data.py with datatrove tasks vs the single-machine path: throughput, peak memory and disk, 1x vs 10x input.

    python bench/bench_prepare_parallel.py                  # 1x ~13M tokens, 10x ~130M tokens, 8 tasks
    python bench/bench_prepare_parallel.py --rounds 2 --tasks 16
    python bench/bench_prepare_parallel.py --throughput_only --rounds 3   # just the 10x runs behind the ratios

Input: the embedded corpus repeated (shuffled paragraphs, distinct ids) into a folder of 8 parquet files per size,
with 1,000-row row groups as datatrove writes FineWeb-Edu's files. Every run is a fresh `prepare_data.py` process with
an empty cache and output, timed from launch to exit, while a sampler reads /proc/PID/status of every process in its
tree every 50 ms (RssAnon: allocated memory; RssFile: page cache of memory-mapped or read files, which the kernel can
reclaim) and the size of everything the run writes beside its output (the datasets cache for the default path, the
work dir for tasks) every 0.5 s. Runs of one round alternate. Printed, from one invocation:
  * throughput: `--executor local --workers 2` vs `--workers 1` (the same 10x input), and vs the default path;
  * peak RSS per process role (driver, per worker) at 1x and 10x, and its ratio 10x / 1x;
  * disk: bytes per token of the dataset, the peak of everything the run has written (dataset, cache or work dir),
    and what stays behind beside the dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "parallel"


def make_corpus(folder: Path, min_mb: float, files: int = 8) -> tuple[int, int]:
    """bench_prepare.py's corpus (the embedded corpus repeated until it holds `min_mb` MB of text), as `files`
    parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from bench_prepare import corpus_rows

    rows, size = corpus_rows(min_mb)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    step = -(-len(rows) // files)
    for k in range(files):
        pq.write_table(pa.Table.from_pylist(rows[k * step:(k + 1) * step]), tmp / f"part-{k:02d}.parquet",
                       row_group_size=1000)
    tmp.rename(folder)
    return len(rows), size


# ---------------------------------------------------------------------------------------------------- sampling

_CMDLINES: dict[int, str] = {}


def _status(pid: int) -> dict | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            fields = dict(line.split(":", 1) for line in f if ":" in line)
        with open(f"/proc/{pid}/stat") as f:
            ticks = f.read().rsplit(")", 1)[1].split()[11:13]  # utime, stime
        if pid not in _CMDLINES:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                _CMDLINES[pid] = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    if "RssAnon" not in fields:  # a zombie
        return None
    return {"ppid": int(fields["PPid"]), "anon": int(fields["RssAnon"].split()[0]) << 10,
            "file": int(fields["RssFile"].split()[0]) << 10, "cmdline": _CMDLINES[pid],
            "cpu": sum(map(int, ticks)) / os.sysconf("SC_CLK_TCK")}


def _tree(root: int) -> dict[int, dict]:
    """`root` and its descendants, walked through /proc/PID/task/*/children (cheap: no scan of every process, which
    on 2 cores took a noticeable share of a core at this sampling rate)."""
    tree, frontier = {}, [root]
    while frontier:
        pid = frontier.pop()
        if (s := _status(pid)) is None:
            continue
        tree[pid] = s
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    frontier += [int(child) for child in f.read().split()]
        except OSError:
            pass
    return tree


def _role(pid: int, tree: dict, root: int) -> str:
    if pid == root:
        return "driver"
    s = tree[pid]
    parent = tree.get(s["ppid"], {})
    if "forkserver import main" in parent.get("cmdline", ""):
        return "worker"  # a datatrove task worker (multiprocess pool, forked from the forkserver)
    if s["ppid"] == root and s["cmdline"] == tree[root]["cmdline"]:
        return "worker"  # a datasets.map process (forked from the driver)
    return "helper"  # forkserver, resource tracker, datatrove's Manager


def _du(paths) -> int:
    total = 0
    for top in paths:
        for dirpath, _, files in os.walk(top):
            for name in files:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
                except OSError:
                    pass
    return total


def measure(cmd: list[str], env: dict, written_paths, temp_paths) -> dict:
    """Run `cmd`; peak anon/file RSS per process role (max over processes of that role), the peak of everything it
    has written (output, cache, work dirs) and what it leaves beside the output."""
    peaks = defaultdict(lambda: {"anon": 0, "file": 0})
    cpu = {}  # pid -> CPU seconds last seen (processes forked from datatrove's forkserver are not our children, so
    # RUSAGE_CHILDREN misses them; a process's last 50 ms are missed here)
    disk = [0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = threading.Event()

    def sample_memory():
        while not done.is_set():
            tree = _tree(proc.pid)
            for pid, s in tree.items():
                role = _role(pid, tree, proc.pid)
                peaks[role]["anon"] = max(peaks[role]["anon"], s["anon"])
                peaks[role]["file"] = max(peaks[role]["file"], s["file"])
                cpu[pid] = s["cpu"]
            time.sleep(0.05)

    def sample_disk():
        while not done.is_set():
            disk[0] = max(disk[0], _du(written_paths()))
            time.sleep(0.5)

    threads = [threading.Thread(target=sample_memory, daemon=True), threading.Thread(target=sample_disk, daemon=True)]
    for t in threads:
        t.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    for t in threads:
        t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{cmd} failed:\n{stderr[-3000:]}")
    tokens = int(re.search(r"([\d,]+) tokens ->", stdout).group(1).replace(",", ""))
    return {"wall": wall, "cpu": sum(cpu.values()), "tokens": tokens, "peaks": dict(peaks),
            "disk_peak": max(disk[0], _du(written_paths())),
            "left": _du(temp_paths())}


# ------------------------------------------------------------------------------------------------------- driver

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--min_mb", type=float, default=45, help="MB of text at 1x (10x is ten times that)")
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--throughput_only", action="store_true", help="only the 10x runs the throughput ratios use")
    args = parser.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    corpora = {}
    for scale in (1, 3, 10):
        folder = OUT / f"corpus-{args.min_mb * scale:g}mb"
        if not folder.exists():
            docs, size = make_corpus(folder, args.min_mb * scale)
            print(f"wrote {folder}: {docs:,} documents, {size / 1e6:.1f} MB of text", flush=True)
        corpora[scale] = folder

    def run(name: str, scale: int) -> dict:
        out = OUT / f"out-{name}-{scale}x"
        cache = OUT / f"cache-{name}-{scale}x"
        for path in (out, cache, out.parent / f".{out.name}.prepare"):
            shutil.rmtree(path, ignore_errors=True)
        cmd = [sys.executable, "prepare_data.py", "--dataset", str(corpora[scale]), "--output_dir", str(out)]
        if name == "default":
            cmd += ["--num_proc", "2", "--cache_dir", str(cache)]
        else:
            cmd += ["--executor", "local", "--tasks", str(args.tasks), "--workers", name[-1]]

        def temp_paths():
            return [p for p in (cache, *out.parent.glob(f".{out.name}.*")) if p.exists()]

        def written_paths():
            return [p for p in (out, *temp_paths()) if p.exists()]

        load = os.getloadavg()[0]
        result = measure(cmd, env, written_paths, temp_paths)
        result["output"] = _du([out])
        shutil.rmtree(out)
        shutil.rmtree(cache, ignore_errors=True)
        peaks = result["peaks"]
        print(f"{name:9s} {scale:2d}x {result['tokens']:>12,} tokens {result['wall']:6.1f} s "
              f"({result['tokens'] / result['wall']:>10,.0f} tokens/s, {result['cpu']:6.1f} CPU-s = "
              f"{result['cpu'] / result['wall']:.2f} cores) | peak anon MiB: driver "
              f"{peaks['driver']['anon'] >> 20}, worker {peaks.get('worker', {}).get('anon', 0) >> 20} | "
              f"peak file MiB: "
              f"driver {peaks['driver']['file'] >> 20}, worker {peaks.get('worker', {}).get('file', 0) >> 20} | "
              f"output {result['output'] / result['tokens']:.2f} B/token, disk peak "
              f"{result['disk_peak'] / result['tokens']:.2f} B/token, left {result['left'] / result['tokens']:.2f}"
              f" B/token | load avg before {load:.1f}", flush=True)
        return result

    # 3x is there to show where memory levels off: a task's fixed buffers (a 16 MiB record batch per split, a row
    # group of ids) are not full yet with 1x.
    plan = [("local-w2", 1), ("default", 1), ("local-w2", 3), ("default", 3), ("local-w1", 10), ("local-w2", 10),
            ("default", 10)]
    if args.throughput_only:
        plan = [("local-w1", 10), ("local-w2", 10), ("default", 10)]
    results = defaultdict(list)
    for round_ in range(args.rounds):
        print(f"round {round_ + 1}", flush=True)
        for name, scale in plan:
            results[name, scale].append(run(name, scale))

    def best(name, scale):
        return min(results[name, scale], key=lambda r: r["wall"])

    def peak(name, scale, role, kind="anon"):
        return max(r["peaks"].get(role, {}).get(kind, 0) for r in results[name, scale])

    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, load avg now {os.getloadavg()[0]:.1f}; "
          f"{args.tasks} tasks; best of {args.rounds} round(s) for times, max for memory")
    w1, w2, d10 = best("local-w1", 10), best("local-w2", 10), best("default", 10)
    print(f"throughput 10x: local --workers 2 / --workers 1: {w1['wall'] / w2['wall']:.2f}x wall "
          f"({w2['wall']:.1f} s vs {w1['wall']:.1f} s; {w2['cpu'] / w2['wall']:.2f} vs {w1['cpu'] / w1['wall']:.2f} "
          f"cores used), {w1['cpu'] / w2['cpu']:.2f}x per CPU-second; local --workers 2 / default path (num_proc 2): "
          f"{d10['wall'] / w2['wall']:.2f}x wall ({w2['wall']:.1f} s vs {d10['wall']:.1f} s), "
          f"{d10['cpu'] / w2['cpu']:.2f}x per CPU-second")
    if args.throughput_only:
        return
    for name in ("local-w2", "default"):
        for role in ("driver", "worker"):
            small, mid, large = (peak(name, scale, role) for scale in (1, 3, 10))
            print(f"peak anon RSS {name:8s} {role:6s}: 1x {small >> 20} MiB, 3x {mid >> 20} MiB, 10x {large >> 20} MiB,"
                  f" 10x / 1x {large / small:.2f}x, 10x / 3x {large / mid:.2f}x; page cache mapped (file RSS) "
                  f"1x {peak(name, 1, role, 'file') >> 20} MiB, 10x {peak(name, 10, role, 'file') >> 20} MiB")
    for name in ("local-w2", "default"):
        for scale in (1, 10):
            r = best(name, scale)
            print(f"disk {name:8s} {scale:2d}x: dataset {r['output'] / r['tokens']:.2f} B/token; everything the run "
                  f"had written at its peak {r['disk_peak'] / r['tokens']:.2f} B/token "
                  f"({r['disk_peak'] / r['output']:.2f}x"
                  f" the dataset); left beside it after the run {r['left'] / r['tokens']:.2f} B/token")


if __name__ == "__main__":
    main()

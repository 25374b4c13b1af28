"""Peak RSS of train_hf.py when the training set grows 100x: memory-mapped Arrow should keep it flat.

    python bench/bench_train_memory.py                  # 20,000 vs 2,000,000 blocks of 128 tokens (5 MB vs 512 MB)
    python bench/bench_train_memory.py --blocks 5000 --factor 100 --steps 10

Each size runs `train_hf.py --config configs/smoke.yaml` as a fresh process (20 training steps, one evaluation, one
checkpoint, samples) and reads that process's own peak RSS from `os.wait4`, plus its anonymous and file-backed parts
sampled from /proc. The baseline is the same run on the small set. Target: the large run's peak within 10% of the
small run's. Both sets are saved with prepare_data.py's writer (`edugpt.corpus.pack.save_blocks`), so their Arrow record
batches are the size a prepared dataset has (`--plain_save_to_disk`: plain `save_to_disk`, 1,000-row batches, for
comparison). Each size runs with the files as the writer left them in the page cache, then with their pages evicted
first. File-backed RSS is clean page cache (shared libraries, the memory-mapped Arrow files) that the kernel can drop
at will; anonymous RSS is memory the process allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def grow(small: Path, large: Path, factor: int, plain: bool = False) -> None:
    """`large` = the small train split repeated `factor` times (same manifest otherwise), saved with prepare_data.py's
    own writer (`edugpt.corpus.pack.save_blocks`: the same layout and record batch size as a prepared dataset), or with
    plain
    `save_to_disk` (`plain`: 1,000-row record batches)."""
    import datasets

    from edugpt.corpus.pack import save_blocks

    splits = datasets.load_from_disk(str(small))
    manifest = json.loads((small / "manifest.json").read_text())
    grown = datasets.DatasetDict({
        "train": datasets.concatenate_datasets([splits["train"]] * factor),
        "validation": splits["validation"],
    })
    if plain:
        grown.save_to_disk(str(large))
    else:
        save_blocks(grown, large, manifest["seq_len"])
    for key in ("tokens", "blocks"):
        manifest["splits"]["train"][key] *= factor
    manifest.pop("content", None)  # the small set's digests: not those of the grown blocks (training does not read them)
    (large / "manifest.json").write_text(json.dumps(manifest))


def record_batches(split_dir: Path) -> int:
    """Record batches in a saved split: `datasets` reads every batch header when it memory-maps the files."""
    import pyarrow as pa

    return sum(len(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_batches())
               for f in sorted(split_dir.glob("*.arrow")))


def _rss_kib(pid: int) -> dict:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in f) if k in ("RssAnon", "RssFile")}
    except (OSError, ValueError):
        return {}


def peak_rss_mib(data_dir: Path, output_dir: Path, steps: int) -> dict:
    """Peak RSS (kernel's ru_maxrss), peak anonymous and file-backed RSS (sampled every 20 ms), wall seconds."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [sys.executable, str(ROOT / "train_hf.py"), "--config", str(ROOT / "configs" / "smoke.yaml"),
               "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), "--max_steps", str(steps),
               "--eval_steps", str(steps), "--save_steps", str(steps), "--sample_steps", str(steps),
               "--hellaswag_steps", "0", "--disable_tqdm", "true"]
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peaks = {"RssAnon": 0, "RssFile": 0}
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        for key, value in _rss_kib(proc.pid).items():
            peaks[key] = max(peaks[key], value)
        time.sleep(0.02)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"train_hf.py failed:\n{proc.stderr.read().decode()[-3000:]}")
    return {"rss": usage.ru_maxrss / 1024, "anon": peaks["RssAnon"] / 1024, "file": peaks["RssFile"] / 1024,
            "wall": time.perf_counter() - start}  # ru_maxrss and /proc figures are KiB


def drop_page_cache(data_dir: Path) -> None:
    """Evict the dataset's Arrow files from the page cache (only those files), as for data prepared long before."""
    for path in data_dir.glob("*/*.arrow"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)  # dirty pages are not dropped
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--factor", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--plain_save_to_disk", action="store_true",
                        help="save both sets with plain save_to_disk (1,000-row record batches), for comparison")
    args = parser.parse_args()

    from bench_train_cpu import make_dataset

    modes = ("as written", "cold cache")
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        made = make_dataset(tmp / "made", 128, args.blocks)
        for name, factor in (("small", 1), ("large", args.factor)):
            grow(made, tmp / name, factor, plain=args.plain_save_to_disk)
        disk = sum(p.stat().st_size for p in (tmp / "large" / "train").glob("*.arrow"))
        batches = {name: record_batches(tmp / name / "train") for name in ("small", "large")}
        print(f"built the {args.factor}x set ({disk / 2**20:.0f} MiB of Arrow) in {time.perf_counter() - start:.0f} s; "
              f"train record batches: {batches['small']} (1x), {batches['large']} ({args.factor}x)")
        # "as written": the page cache still holds the files as the writer left them (large folios after large
        # writes: one fault can map up to 2 MiB). "cold cache": the files' pages are evicted before each run, so
        # they are read back by faults and readahead, as for a dataset prepared earlier. All "as written" rounds
        # run first, since a cold run re-reads the files into the cache differently.
        results = {(mode, name): [] for mode in modes for name in ("small", "large")}
        for mode in modes:
            for round_ in range(args.rounds):
                for name in ("small", "large"):
                    if mode == "cold cache":
                        drop_page_cache(tmp / name)
                    r = peak_rss_mib(tmp / name, tmp / f"run-{name}-{mode[:4]}-{round_}", args.steps)
                    results[mode, name].append(r)
                    print(f"{mode}, round {round_ + 1} {name:>5}: peak RSS {r['rss']:7.1f} MiB (anonymous "
                          f"{r['anon']:.1f}, file-backed {r['file']:.1f}; {r['wall']:.0f} s)", flush=True)
    peak = {key: {k: max(r[k] for r in rs) for k in ("rss", "anon", "file")} for key, rs in results.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; train split {args.blocks:,} vs "
          f"{args.blocks * args.factor:,} blocks of 128 tokens; {args.steps} steps + eval + checkpoint + samples")
    print("| page cache | training set | blocks | Arrow on disk | record batches | peak RSS | peak anonymous RSS | "
          "peak file-backed RSS |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in modes:
        for name, factor in (("small", 1), ("large", args.factor)):
            p = peak[mode, name]
            print(f"| {mode} | {factor}x | {args.blocks * factor:,} | {disk * factor / args.factor / 2**20:.1f} MiB | "
                  f"{batches[name]} | {p['rss']:.0f} MiB | {p['anon']:.0f} MiB | {p['file']:.0f} MiB |")
    for mode in modes:
        large, small = peak[mode, "large"], peak[mode, "small"]
        print(f"ratio large/small, {mode}: peak RSS {large['rss'] / small['rss']:.3f}x (target <= 1.10x); "
              f"anonymous {large['anon'] / small['anon']:.3f}x, file-backed {large['file'] / small['file']:.3f}x")


if __name__ == "__main__":
    main()

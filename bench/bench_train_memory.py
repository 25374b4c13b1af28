"""Peak RSS of train_hf.py when the training set grows 100x: memory-mapped Arrow should keep it flat.

    python bench/bench_train_memory.py                  # 20,000 vs 2,000,000 blocks of 128 tokens (5 MB vs 512 MB)
    python bench/bench_train_memory.py --blocks 5000 --factor 100 --steps 10

Each size runs `train_hf.py --config configs/smoke.yaml` as a fresh process (20 training steps, one evaluation, one
checkpoint, samples) and reads that process's own peak RSS from `os.wait4`, plus its anonymous and file-backed parts
sampled from /proc. The baseline is the same run on the small set. Target: the large run's peak within 10% of the
small run's. File-backed RSS is clean page cache of the memory-mapped Arrow file that the kernel can drop at will;
anonymous RSS is memory the process allocated.
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


def grow(small: Path, large: Path, factor: int) -> None:
    """`large` = the small train split repeated `factor` times (same manifest otherwise)."""
    import datasets

    splits = datasets.load_from_disk(str(small))
    datasets.DatasetDict({
        "train": datasets.concatenate_datasets([splits["train"]] * factor),
        "validation": splits["validation"],
    }).save_to_disk(str(large))
    manifest = json.loads((small / "manifest.json").read_text())
    for key in ("tokens", "blocks"):
        manifest["splits"]["train"][key] *= factor
    (large / "manifest.json").write_text(json.dumps(manifest))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=20_000)
    parser.add_argument("--factor", type=int, default=100)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from bench_train_cpu import make_dataset

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
        tmp = Path(tmp)
        small = make_dataset(tmp / "small", 128, args.blocks)
        start = time.perf_counter()
        grow(small, tmp / "large", args.factor)
        disk = sum(p.stat().st_size for p in (tmp / "large" / "train").glob("*.arrow"))
        print(f"built the {args.factor}x set ({disk / 2**20:.0f} MiB of Arrow) in {time.perf_counter() - start:.0f} s")
        results = {"small": [], "large": []}
        for round_ in range(args.rounds):
            for name in ("small", "large"):
                r = peak_rss_mib(tmp / name, tmp / f"run-{name}-{round_}", args.steps)
                results[name].append(r)
                print(f"round {round_ + 1} {name:>5}: peak RSS {r['rss']:7.1f} MiB (anonymous {r['anon']:.1f}, "
                      f"file-backed {r['file']:.1f}; {r['wall']:.0f} s)", flush=True)
    peak = {name: {key: max(r[key] for r in rs) for key in ("rss", "anon", "file")} for name, rs in results.items()}
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs; train split {args.blocks:,} vs "
          f"{args.blocks * args.factor:,} blocks of 128 tokens; {args.steps} steps + eval + checkpoint + samples")
    print("| training set | blocks | Arrow on disk | peak RSS | peak anonymous RSS | peak file-backed RSS |")
    print("|---|---|---|---|---|---|")
    for name, factor in (("small", 1), ("large", args.factor)):
        p = peak[name]
        print(f"| {factor}x | {args.blocks * factor:,} | {disk * factor / args.factor / 2**20:.1f} MiB | "
              f"{p['rss']:.0f} MiB | {p['anon']:.0f} MiB | {p['file']:.0f} MiB |")
    print(f"\nratio large/small: peak RSS {peak['large']['rss'] / peak['small']['rss']:.3f}x, anonymous "
          f"{peak['large']['anon'] / peak['small']['anon']:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()

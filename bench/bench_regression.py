"""The smoke pretraining run, this checkout vs an earlier commit, side by side: did throughput or peak memory regress?

    python bench/bench_regression.py                       # vs 413c1a9, the last commit before the issue-10 redesign
    python bench/bench_regression.py --baseline REV --rounds 3 --max_steps 150

The baseline commit is checked out into bench/out/ (a git worktree) and both sides run `train_hf.py --config
configs/smoke.yaml` from their own folder, with this venv, on the same prepared data, alternating rounds (old, new,
old, new, ...), each as a fresh process. Throughput is the median `tokens_per_second` of a run's metrics.jsonl (the
project's own metric: training time only, evaluation and samples left out); peak RSS is the process's ru_maxrss from
wait4, and its CPU time (user + system) from the same call. Printed: per round the figures, and the ratios new / old
of the medians over rounds.

On a shared machine the wall-clock figures measure the neighbours as much as the code (a step stalled by another
process reads 3x slower); CPU-seconds for the whole run and the upper quartile of a run's per-log tokens/s (its steps
that ran undisturbed) are the figures to compare there.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out" / "regression"
REDESIGN_BASE = "413c1a9"  # main before "one owner for the run directory" (issue 10)


def checkout(rev: str) -> Path:
    path = OUT / f"baseline-{rev}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def run(tree: Path, data_dir: Path, output_dir: Path, max_steps: int) -> dict:
    """One smoke run from `tree`; its median tokens/s and peak RSS."""
    shutil.rmtree(output_dir, ignore_errors=True)
    command = [sys.executable, str(tree / "train_hf.py"), "--config", str(tree / "configs" / "smoke.yaml"),
               "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), "--max_steps", str(max_steps),
               "--disable_tqdm", "true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    proc = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{tree.name}: train_hf.py exited {proc.returncode}\n{stderr[-3000:]}")
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [r["tokens_per_second"] for r in records if "tokens_per_second" in r]
    return {"tokens_per_second": statistics.median(speeds),
            "tokens_per_second_q3": statistics.quantiles(speeds, n=4)[2],
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mb": usage.ru_maxrss / 1024,
            "wall_s": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default=REDESIGN_BASE, help="git revision to compare with")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--max_steps", type=int, default=150, help="the smoke recipe's own 150 by default")
    args = parser.parse_args()

    data_dir = OUT / "data"
    if not (data_dir / "manifest.json").exists():
        subprocess.run([sys.executable, str(ROOT / "prepare_data.py"), "--dataset", "embedded", "--output_dir",
                        str(data_dir), "--seq_len", "128", "--val_fraction", "0.05"], cwd=ROOT, check=True,
                       capture_output=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    sides = {"old": checkout(args.baseline), "new": ROOT}
    results = {name: [] for name in sides}
    load = os.getloadavg()[0]
    for round_ in range(1, args.rounds + 1):
        for name, tree in sides.items():
            result = run(tree, data_dir, OUT / f"run-{name}", args.max_steps)
            results[name].append(result)
            print(f"round {round_} {name:>3}: {result['tokens_per_second']:,.0f} tokens/s (upper quartile "
                  f"{result['tokens_per_second_q3']:,.0f}), {result['cpu_s']:.0f} CPU-s, peak RSS "
                  f"{result['peak_rss_mb']:,.0f} MB, {result['wall_s']:.0f} s", flush=True)
    old, new = ({key: statistics.median(r[key] for r in results[name]) for key in results[name][0]}
                for name in ("old", "new"))
    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load average {load:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after; smoke recipe, {args.max_steps} steps, {args.rounds} alternating rounds")
    print("| side (median of rounds) | tokens/s | tokens/s, upper quartile | CPU-s | peak RSS, MB | wall, s |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, figures in (("old " + args.baseline, old), ("new (this checkout)", new)):
        print(f"| {name} | {figures['tokens_per_second']:,.0f} | {figures['tokens_per_second_q3']:,.0f} | "
              f"{figures['cpu_s']:.0f} | {figures['peak_rss_mb']:,.0f} | {figures['wall_s']:.0f} |")
    ratio = {key: new[key] / old[key] for key in new}
    print(f"ratio new/old: throughput {ratio['tokens_per_second']:.3f}x (upper quartile "
          f"{ratio['tokens_per_second_q3']:.3f}x), CPU-s {ratio['cpu_s']:.3f}x, peak RSS {ratio['peak_rss_mb']:.3f}x, "
          f"wall {ratio['wall_s']:.3f}x")


if __name__ == "__main__":
    main()

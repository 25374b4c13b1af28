"""GPU throughput of configs/gpt2_270m.yaml: tokens/s and MFU in bf16 with and without torch_compile, peak memory,
and the largest micro-batch that fits. One command on a machine with one CUDA GPU:

    python bench/bench_gpu.py                           # synthetic 1024-token blocks, ~5-10 min on an H100
    python bench/bench_gpu.py --dataset_dir data/prepared/edu10B --steps 40
    python bench/bench_gpu.py --tiny                    # CPU sanity check of this script (tiny model, no MFU)

The runs are built by `edugpt.train.pretrain.start_pretraining` exactly as train_hf.py builds them (same callbacks; tokens/s
and MFU are the numbers train_hf.py logs, MFU = tokens/s x 6N+12LdT FLOPs/token / peak bf16 FLOP/s of the GPU).
Evaluation, checkpoints and samples are off; the global batch is cut to `--grad_accum` micro-batches per step so a
step is short (throughput per token does not depend on it). The first `--warmup` steps (compilation, cache warm-up)
are excluded. Target from the issue: >= 45% MFU. With 2 or more GPUs it also runs bench/bench_eval_sharding.py --gpu:
one in-loop HellaSwag evaluation on 2 GPUs vs 1.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TINY = ["--n_layer", "2", "--n_head", "2", "--n_embd", "64", "--n_positions", "128", "--bf16", "false",
        "--tf32", "false", "--optim", "adamw_torch", "--use_cpu", "true", "--dataloader_num_workers", "0",
        "--dataloader_pin_memory", "false"]


def build(data_dir: Path, output_dir: Path, overrides: list[str]):
    """The Pretraining (Trainer and all) train_hf.py builds for configs/gpt2_270m.yaml with `overrides`, output_dir
    unlocked again (each measurement trains into a fresh temporary folder)."""
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments
    from edugpt.config.cli import parse_config
    from edugpt.train.pretrain import start_pretraining

    parsed = parse_config(
        [ModelArguments, DataArguments, PretrainArguments, RunArguments, TrainingArguments],
        ["--config", str(ROOT / "configs" / "gpt2_270m.yaml"), "--dataset_dir", str(data_dir),
         "--output_dir", str(output_dir), "--eval_strategy", "no", "--save_strategy", "no", "--sample_steps", "0",
         "--logging_steps", "1", "--report_to", "none", "--disable_tqdm", "true", "--hellaswag_steps", "0",
         *overrides],
    )
    run, pretraining = start_pretraining(*parsed)
    run.lock.release()
    return pretraining


def tokens_per_step(micro_batch: int, accumulation: int, seq_len: int) -> list[str]:
    """The recipe states its global batch in tokens; a measurement sets it to `accumulation` micro-batches."""
    tokens = micro_batch * accumulation * seq_len
    return ["--per_device_train_batch_size", str(micro_batch), "--tokens_per_step", str(tokens)]


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def throughput(data_dir: Path, overrides: list[str], steps: int, warmup: int) -> dict:
    """Median tokens/s and MFU over steps after `warmup`, and peak GPU memory, of one short train_hf.py run."""
    import torch

    free_memory()
    with tempfile.TemporaryDirectory() as out:
        pretraining = build(data_dir, Path(out), ["--max_steps", str(steps), *overrides])
        pretraining.trainer.train()
        records = [r for r in pretraining.metrics.read() if "tokens_per_second" in r and r["step"] > warmup]
    peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")
    del pretraining
    free_memory()
    return {
        "tokens_per_second": statistics.median(r["tokens_per_second"] for r in records),
        "mfu": statistics.median(r["mfu"] for r in records) if all("mfu" in r for r in records) else None,
        "peak_gib": peak,
    }


def fits(data_dir: Path, overrides: list[str], batch_size: int) -> bool:
    """Whether 2 optimizer steps at this micro-batch run without running out of GPU memory."""
    import torch

    free_memory()
    try:
        with tempfile.TemporaryDirectory() as out:
            pretraining = build(data_dir, Path(out), ["--max_steps", "2", *tokens_per_step(batch_size, 1, 1024),
                                                      *overrides])
            pretraining.trainer.train()
        return True
    except torch.OutOfMemoryError:
        return False
    finally:
        pretraining = None
        free_memory()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", help="a prepared seq-1024 dataset (default: synthetic blocks)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--grad_accum", type=int, default=4)
    parser.add_argument("--batch_sizes", default="16,24,32,48,64,96,128", help="micro-batches tried, ascending")
    parser.add_argument("--tiny", action="store_true", help="CPU sanity check with a tiny model")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    if not args.tiny and not torch.cuda.is_available():
        raise SystemExit("bench_gpu.py needs a CUDA GPU (use --tiny for a CPU check of the script itself).")
    base = TINY if args.tiny else []
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(args.dataset_dir) if args.dataset_dir else None
        if data_dir is None:
            from bench_train_cpu import make_dataset

            data_dir = make_dataset(Path(tmp) / "data", 128 if args.tiny else 1024, 4000)
        seq_len = 128 if args.tiny else 1024
        overrides = [*base, *tokens_per_step(4 if args.tiny else 16, args.grad_accum, seq_len)]
        rows = []
        for compile_ in (False, True):
            if compile_ and args.tiny:
                continue  # compiling on a CPU says nothing about the GPU path and takes minutes
            result = throughput(data_dir, [*overrides, "--torch_compile", str(compile_).lower()], args.steps, args.warmup)
            rows.append((compile_, result))
            print(f"torch_compile={compile_}: {result}", flush=True)
        largest = None
        if not args.tiny:
            for batch_size in (int(b) for b in args.batch_sizes.split(",")):
                if not fits(data_dir, base, batch_size):
                    break
                largest = batch_size
                print(f"micro-batch {batch_size} x 1024 fits", flush=True)

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\ndevice: {device}; torch {torch.__version__}, transformers {transformers.__version__}")
    shape = " with tiny CPU overrides (fp32)" if args.tiny else ", bf16"
    print(f"model: configs/gpt2_270m.yaml{shape}, sdpa, micro-batch from the "
          f"recipe, {args.grad_accum} micro-batches per step; medians over steps {args.warmup + 1}-{args.steps}")
    print("| torch_compile | tokens/s | MFU | peak memory |")
    print("|---|---|---|---|")
    for compile_, r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"| {compile_} | {r['tokens_per_second']:,.0f} | {mfu} | {r['peak_gib']:.1f} GiB |")
    if not args.tiny:
        print(f"\nlargest micro-batch that fits (of {args.batch_sizes}): {largest} x 1024 tokens")
    if len(rows) == 2:
        print(f"ratio compiled/eager tokens/s: {rows[1][1]['tokens_per_second'] / rows[0][1]['tokens_per_second']:.2f}x")
    if not args.tiny and rows and rows[-1][1]["mfu"] is not None:
        record_mfu(device, rows[-1][1]["mfu"], f"bench/bench_gpu.py, torch_compile {rows[-1][0]}, "
                   f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}")
    if not args.tiny and torch.cuda.device_count() >= 2:
        print("\nin-loop HellaSwag, 2 GPUs vs 1 (bench/bench_eval_sharding.py):", flush=True)
        import subprocess

        subprocess.run([sys.executable, str(ROOT / "bench" / "bench_eval_sharding.py"), "--gpu", "--shape", "270m",
                        "--limit", "1000", "--batch_size", "32"], check=True)


def record_mfu(device: str, mfu: float, how: str) -> None:
    """Write the measured MFU into bench/mfu.json under the GPU's short name (edugpt.model.gpt2's table), where the
    training plan (`--dry_run`, edugpt/run/plan.py) takes it instead of its assumed figure."""
    import json

    from edugpt.model.gpt2 import PEAK_BF16_FLOPS

    name = next((key for key, _ in PEAK_BF16_FLOPS if key.lower() in device.lower()), None)
    if name is None:
        print(f"(no short name for {device!r} in edugpt.model.gpt2.PEAK_BF16_FLOPS: bench/mfu.json not written)")
        return
    path = ROOT / "bench" / "mfu.json"
    measured = json.loads(path.read_text()) if path.exists() else {}
    measured[name] = {"mfu": round(mfu, 4), "measured": f"{device}: {how}"}
    path.write_text(json.dumps(measured, indent=2, sort_keys=True) + "\n")
    print(f"measured MFU written to {path} for {name}: the training plan uses it from now on")


if __name__ == "__main__":
    main()

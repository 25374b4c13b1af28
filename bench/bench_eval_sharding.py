"""In-loop HellaSwag on 2 processes vs 1: wall time of one `HellaSwagCallback.evaluate`, the call train_hf.py makes
every `hellaswag_steps`, with the items shared out across processes (edugpt.eval.hellaswag.score_task) against one
process scoring them all: 2 processes with a whole model each (DDP) and 2 processes scoring through an FSDP2-sharded
model (torch's fully_shard per GPT2Block, as accelerate shards it). Same model, same items, same batch size; the
script checks that all report the same acc and acc_norm and that each process scored about half the items.

    python bench/bench_eval_sharding.py                  # CPU: 2 gloo processes x 1 thread vs 1 process x 2 threads
    python bench/bench_eval_sharding.py --gpu            # 2 GPUs (NCCL) vs 1 GPU; bench/bench_gpu.py runs this too
    python bench/bench_eval_sharding.py --limit 1000 --shape 270m --gpu

On a CPU both sides get the same cores (the one process uses them as threads), so the ratio there measures the
overhead of sharding, not a speed-up; on GPUs each process has its own device and the ideal ratio is 2x.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SMOKE = ROOT / "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"
SHAPES = {"smoke": dict(n_layer=2, n_head=2, n_embd=64, n_positions=128),  # configs/smoke.yaml
          "270m": dict(n_layer=16, n_head=16, n_embd=1024, n_positions=1024)}  # configs/gpt2_270m.yaml


def worker(args) -> None:
    """One process of a measurement (launched plainly or by `accelerate launch`): time 2 evaluations."""
    import logging

    import torch
    import transformers
    from transformers import Trainer, TrainingArguments

    from edugpt.config.arguments import ModelArguments
    from edugpt.eval.hellaswag import HellaSwagCallback
    from edugpt.model.gpt2 import gpt2_config, new_gpt2
    from edugpt.model.tokenizer import load_tokenizer

    logging.disable(logging.WARNING)
    transformers.logging.set_verbosity_error()
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(output_dir=out, use_cpu=not args.gpu, report_to="none", bf16=args.gpu,
                                     per_device_eval_batch_size=args.batch_size)
        torch.manual_seed(0)
        model = new_gpt2(gpt2_config(ModelArguments(**SHAPES[args.shape]))).to(training.device)
        if args.gpu:
            model = model.to(torch.bfloat16)
        trainer = Trainer(model=model, args=training, processing_class=load_tokenizer("gpt2"))
        if args.fsdp:  # what accelerate's FSDP2 preparation does: one unit per GPT2Block, then the root
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            mesh = init_device_mesh(training.device.type, (trainer.accelerator.num_processes,))
            for block in model.transformer.h:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
        callback = HellaSwagCallback(trainer, every_steps=1, limit=args.limit, hellaswag_file=str(SMOKE))
        seconds = []
        for _ in range(args.rounds + 1):  # the first round warms caches (kernels, tokenizing) and is not counted
            trainer.accelerator.wait_for_everyone()
            start = time.perf_counter()
            scores = callback.evaluate(model)
            trainer.accelerator.wait_for_everyone()
            seconds.append(time.perf_counter() - start)
        if trainer.accelerator.is_main_process:
            print("RESULT " + json.dumps({"processes": trainer.accelerator.num_processes, "fsdp": args.fsdp,
                                          "seconds": seconds[1:],
                                          "scores": scores, "items_per_process": callback.items_per_process,
                                          "device": torch.cuda.get_device_name() if args.gpu else "CPU"}), flush=True)


def measure(args, processes: int, fsdp: bool = False) -> dict:
    command = [sys.executable, __file__, "--worker", "--limit", str(args.limit), "--rounds", str(args.rounds),
               "--batch_size", str(args.batch_size), "--shape", args.shape] + (["--gpu"] if args.gpu else []) \
        + (["--fsdp"] if fsdp else [])
    env = dict(os.environ)
    if processes > 1:
        launcher = [str(Path(sys.executable).parent / "accelerate"), "launch"]
        if args.gpu:
            launcher += ["--multi_gpu", "--num_processes", str(processes), "--mixed_precision", "bf16"]
        else:  # `--cpu --num_processes 2` starts one process; this config starts two gloo ones
            launcher += ["--config_file", str(ROOT / "configs/accelerate/cpu_ddp_2proc.yaml")]
            env["OMP_NUM_THREADS"] = str(max(1, args.cores // processes))
        command = launcher + command[1:]
    elif not args.gpu:
        env["OMP_NUM_THREADS"] = str(args.cores)
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"{processes}-process run failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100, help="HellaSwag-format items scored")
    parser.add_argument("--rounds", type=int, default=2, help="timed evaluations per side (after one warm-up)")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="smoke")
    parser.add_argument("--gpu", action="store_true", help="2 GPUs vs 1 (needs 2 CUDA devices)")
    parser.add_argument("--cores", type=int, default=os.cpu_count(), help="CPU threads shared out on CPU")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--fsdp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    one, two, sharded = measure(args, 1), measure(args, 2), measure(args, 2, fsdp=True)
    for other in (two, sharded):
        assert one["scores"] == other["scores"], (one["scores"], other["scores"])
        assert sorted(other["items_per_process"]) == sorted([args.limit // 2, args.limit - args.limit // 2])
    print(f"device: {one['device']}; model shape {args.shape}; {args.limit} items, batch {args.batch_size}; "
          f"best of {args.rounds} evaluations after a warm-up")
    print("| processes | model | items per process | seconds per evaluation (rounds) | acc | acc_norm |")
    print("|---:|---|---|---:|---:|---:|")
    for r in (one, two, sharded):
        rounds = ", ".join(f"{s:.2f}" for s in r["seconds"])
        model = "FSDP2-sharded" if r["fsdp"] else "whole (replica)"
        print(f"| {r['processes']} | {model} | {' + '.join(map(str, r['items_per_process']))} | "
              f"{min(r['seconds']):.2f} ({rounds}) | {r['scores']['hellaswag/acc']:.4f} | "
              f"{r['scores']['hellaswag/acc_norm']:.4f} |")
    for name, r in (("2 processes (replicas)", two), ("2 processes (FSDP2)", sharded)):
        print(f"speed-up {name} / 1 process: {min(one['seconds']) / min(r['seconds']):.2f}x (same scores)")


if __name__ == "__main__":
    main()

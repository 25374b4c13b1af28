"""Trainer overhead: train_hf.py's steady-state step throughput vs a minimal raw PyTorch loop, side by side.

    python bench/bench_train_cpu.py                      # smoke shape (2 x 64, seq 128, batch 8), fp32, ~6 min
    python bench/bench_train_cpu.py --rounds 10 --steps 30

Both sides train the same from-scratch GPT-2 (same seed, so the same initial weights) on the same prepared blocks
with the same collator, AdamW settings, LR schedule and gradient clipping. The Trainer side is built by
`edugpt.train.pretrain.start_pretraining`, exactly as train_hf.py builds it (all callbacks installed: throughput,
metrics.jsonl, checkpoint markers, SIGTERM, non-finite guard, plots; logging every 10 steps); evaluation, checkpoints
and samples are switched off because they are not step time. Short rounds alternate raw / Trainer so that load from other
processes on the machine hits both sides alike; every step after `--warmup` is timed (wall clock and this process's
CPU time). On a shared machine the best round and the fast percentiles are the steady-state cost; the median shows
the noise. Target: Trainer >= 0.95x raw.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_dataset(path: Path, seq_len: int, blocks: int) -> Path:
    """A prepared directory written by prepare_data.py's own writer (GPT-2 ids of real text; content does not affect
    speed)."""
    import numpy as np

    from edugpt.corpus.synthetic import write_prepared
    from edugpt.model.tokenizer import BUNDLED_GPT2_DIR, gpt2_tiktoken

    ids = gpt2_tiktoken().encode_ordinary((BUNDLED_GPT2_DIR / "merges.txt").read_text()[:2_000_000])
    tokens = np.resize(np.asarray(ids + [50256], dtype=np.uint16), (blocks + 8) * seq_len).reshape(-1, seq_len)
    return write_prepared(path, {"train": tokens[:blocks], "validation": tokens[blocks:]}, dataset="bench")


def parse(argv, data_dir: Path, output_dir: Path, steps: int):
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments
    from edugpt.config.cli import parse_config

    return parse_config(
        [ModelArguments, DataArguments, PretrainArguments, TrainingArguments],
        ["--config", str(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"),
         "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), "--max_steps", str(steps),
         "--eval_strategy", "no", "--save_strategy", "no", "--sample_steps", "0", "--hellaswag_steps", "0",
         "--disable_tqdm", "true", "--warmup_steps", "5", *argv],
    )


def per_step(marks: list, warmup: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each step after the first `warmup`, from (wall, CPU) clock readings at step ends."""
    return [(w1 - w0, c1 - c0) for (w0, c0), (w1, c1) in zip(marks[warmup - 1:], marks[warmup:])]


def trainer_round(argv, data_dir: Path, steps: int, warmup: int) -> list[tuple[float, float]]:
    """Per-step (wall, CPU) seconds after `warmup` steps of a Trainer built as train_hf.py builds it."""
    from transformers import TrainerCallback

    from edugpt.config.arguments import RunArguments
    from edugpt.train.pretrain import start_pretraining

    marks = []

    class StepTimes(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            marks.append((time.perf_counter(), time.process_time()))

    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, script_args, training_args = parse(argv, data_dir, Path(out), steps)
        run, pretraining = start_pretraining(model_args, data_args, script_args, RunArguments(), training_args)
        run.lock.release()
        trainer = pretraining.trainer
        trainer.add_callback(StepTimes())
        trainer.train()
    return per_step(marks, warmup)


def raw_round(argv, data_dir: Path, steps: int, warmup: int) -> list[tuple[float, float]]:
    """The same training with a plain loop: DataLoader, forward, backward, clip, AdamW, scheduler."""
    import torch
    from transformers import GPT2LMHeadModel, get_scheduler, set_seed

    from edugpt.model.gpt2 import gpt2_config
    from edugpt.train.pretrain import collate_blocks, load_prepared

    with tempfile.TemporaryDirectory() as out:
        model_args, data_args, _, args = parse(argv, data_dir, Path(out), steps)
    config = gpt2_config(model_args)
    data = load_prepared(data_dir, config)
    set_seed(args.seed)
    model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
    scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps,
                              num_training_steps=steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
    generator = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(data.train, batch_size=args.per_device_train_batch_size, shuffle=True,
                                         collate_fn=collate_blocks, generator=generator, drop_last=True)
    marks = []
    batches = iter(loader)
    for _ in range(steps):
        for _ in range(args.gradient_accumulation_steps):
            try:
                batch = next(batches)
            except StopIteration:
                batches = iter(loader)
                batch = next(batches)
            loss = model(**batch).loss / args.gradient_accumulation_steps
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        marks.append((time.perf_counter(), time.process_time()))
    return per_step(marks, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=6)
    args, overrides = parser.parse_known_args()  # anything else overrides the smoke recipe, e.g. --n_embd 128
    logging.disable(logging.WARNING)
    import torch
    import transformers

    transformers.logging.set_verbosity_error()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        model_args, *_ = parse(overrides, Path(tmp), Path(tmp), args.steps)
        data_dir = make_dataset(Path(tmp) / "data", model_args.n_positions, 2000)
        _, _, _, training_args = parse(overrides, data_dir, Path(tmp), args.steps)
        tokens_per_step = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps \
            * model_args.n_positions
        steps = {"raw": [], "trainer": []}
        round_means = {"raw": [], "trainer": []}
        for round_ in range(args.rounds):
            for name, fn in (("raw", raw_round), ("trainer", trainer_round)):
                times = fn(overrides, data_dir, args.steps, args.warmup)
                steps[name] += times
                wall = statistics.fmean(w for w, _ in times)
                round_means[name].append(wall)
                print(f"round {round_ + 1} {name:>7}: {wall * 1000:7.1f} ms/step wall (mean), "
                      f"{statistics.fmean(c for _, c in times) * 1000:7.1f} ms/step CPU, "
                      f"{tokens_per_step / wall:6.0f} tokens/s", flush=True)

    def pct(values, q):
        return statistics.quantiles(values, n=20)[q // 5 - 1]  # q in 5..95

    summary = {}
    for name in ("raw", "trainer"):
        walls, cpus = [w for w, _ in steps[name]], [c for _, c in steps[name]]
        summary[name] = {"best_round": min(round_means[name]), "p10": pct(walls, 10), "median": statistics.median(walls),
                         "cpu_median": statistics.median(cpus)}
    print()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), transformers {transformers.__version__}; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"model: {model_args.n_layer} layers x {model_args.n_embd} wide, seq {model_args.n_positions}, "
          f"{tokens_per_step} tokens/step, fp32; {args.rounds} alternating rounds x {args.steps - args.warmup} timed steps")
    print("| side | best round, ms/step | p10 step, ms | median step, ms | median step CPU, ms | tokens/s (best round) |")
    print("|---|---|---|---|---|---|")
    for name in ("raw", "trainer"):
        r = summary[name]
        print(f"| {name} | {r['best_round'] * 1000:.1f} | {r['p10'] * 1000:.1f} | {r['median'] * 1000:.1f} | "
              f"{r['cpu_median'] * 1000:.1f} | {tokens_per_step / r['best_round']:.0f} |")
    raw, trainer = summary["raw"], summary["trainer"]
    print(f"\nratio trainer/raw throughput: {raw['best_round'] / trainer['best_round']:.3f}x (best round), "
          f"{raw['p10'] / trainer['p10']:.3f}x (p10 step), {raw['median'] / trainer['median']:.3f}x (median step), "
          f"{raw['cpu_median'] / trainer['cpu_median']:.3f}x (median CPU per step); target >= 0.95x")


if __name__ == "__main__":
    main()

"""What tests build: entry points run as a user would, tiny pretraining runs, a run directory by the
run-directory contract, small files. Imported by the tests (`from factories import ...`); fixtures stay in
conftest.py."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None, check: bool = False):
    """Run one of the project's entry points (`prepare_data.py`, `train_hf.py`, ...) as a user would, offline."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# The smoke recipe shrunk to seconds: 2 layers of width 32 at seq 64, 8 steps of 4 blocks, a checkpoint every 2 steps.
TINY = [
    "--config", "configs/smoke.yaml", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--n_positions", "64",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--eval_max_batches", "2",
    "--max_steps", "8", "--save_steps", "2", "--save_total_limit", "2", "--eval_steps", "4", "--logging_steps", "1",
    "--sample_steps", "4", "--sample_max_new_tokens", "8", "--warmup_steps", "2", "--disable_tqdm", "true",
]


def tiny_args(data_dir, output_dir, *extra) -> list[str]:
    return [*TINY, "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), *extra]


def train_records(output_dir) -> dict[int, dict]:
    """metrics.jsonl's training records by step."""
    records = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def assert_same_losses(run_a, run_b, steps):
    a, b = train_records(run_a), train_records(run_b)
    for step in steps:
        for key in ("loss", "grad_norm", "learning_rate"):
            assert math.isclose(a[step][key], b[step][key], rel_tol=0, abs_tol=1e-6), (step, key, a[step], b[step])


def load_train_main():
    """train_hf.py's `main`, to run in this process (faster than a subprocess; errors arrive as EduGPTError)."""
    spec = importlib.util.spec_from_file_location("train_hf", ROOT / "train_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@contextlib.contextmanager
def lock_held_in_another_pid_namespace(acquire: str, path, lock):
    """A lock held by a process in another PID namespace, as a job on another host or in another container would hold
    it: `acquire` is Python that takes it on `Path(sys.argv[1])` (= `path`). Yields whether `unshare` was permitted
    (False: nothing holds it). Afterwards waits until `lock()` (a fresh DirLock) can be taken again: the kernel
    releases an flock when it reaps the holder."""
    code = f"import sys, time; from pathlib import Path; {acquire}; print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c",
                               code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # --kill-child: the holder dies with unshare
        holder.wait()
    deadline = time.time() + 30
    while True:
        try:
            lock().acquire().release()
            break
        except Exception:
            assert time.time() < deadline, "the lock outlived its holder"
            time.sleep(0.1)


# --- a run directory by the run-directory contract (edugpt.run.rundir), for the card and publishing tests -----------------
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                "edugpt-complete.json")


FINAL_TRAIN_LOSS = 6.8125


FINAL_VAL_LOSS = 6.9375


LM_EVAL_ACC_NORM = 0.2617


def png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (30, 90, 200)).save(path)


def write_jsonl(path: Path, rows) -> Path:
    """One JSON object per line, UTF-8 (a str row is written as it is: a line that is not JSON)."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def record_as_written(run: Path) -> Path:
    """Enter what a run writes into `run`'s record (edugpt.run.record), as training would have while writing it: the
    checkpoints, the final model's files, metrics.jsonl, the other files at the root and images/. (eval/ is written by
    eval_harness.py, not by the run: it stays out.)"""
    from edugpt.run import record
    from edugpt.run.rundir import CHECKPOINT_RE, save_file_role

    def enter(found: record.Record) -> None:
        for path in sorted(run.iterdir()):
            if path.name.startswith(".") or path.is_symlink():
                continue
            if path.is_dir() and CHECKPOINT_RE.match(path.name.removeprefix("corrupt-")):
                found.add_tree(path, "checkpoint")
            elif path.is_dir() and path.name in ("images", "runs"):
                found.add_tree(path, "record")
            elif path.is_file():
                role = "model" if save_file_role(path.name) == "model" else "record"
                found.add(path, role, appends=path.name == "metrics.jsonl")

    record.start(run)
    record.update(run, enter)
    return run


def make_run_dir(root: Path, model_dir: Path, *, steps=(2, 4), lm_eval: bool = True) -> Path:
    """A pretraining run directory as train_hf.py leaves it: final model, checkpoint-N folders with resume state,
    metrics.jsonl, samples.md, run_config.json, data_manifest.json, plots, and an lm-eval results file under eval/."""
    from edugpt.run.checkpoints import write_marker

    run = root / "run"
    shutil.copytree(model_dir, run)
    for step in steps:
        ckpt = run / f"checkpoint-{step}"
        shutil.copytree(model_dir, ckpt)
        for name in RESUME_STATE[:-1]:
            (ckpt / name).write_bytes(b"resume state stand-in " + name.encode())
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "log_history": []}))
        write_marker(ckpt)  # what train_hf.py's CompleteCheckpointCallback leaves in a finished checkpoint
    records = []
    for step in range(1, 5):
        tokens = step * 2048
        records.append({"step": step, "tokens": tokens, "loss": 10.0 - step * 0.5 if step < 4 else FINAL_TRAIN_LOSS,
                        "grad_norm": 1.5, "learning_rate": 3e-4, "tokens_per_second": 1000.0 + step, "mfu": 0.3125})
        if step in (2, 4):
            records.append({"step": step, "tokens": tokens, "eval_loss": 8.5 if step == 2 else FINAL_VAL_LOSS})
            records.append({"step": step, "tokens": tokens, "hellaswag/acc": 0.23 + step / 100,
                            "hellaswag/acc_norm": 0.24 + step / 100})
    records.append({"step": 0, "tokens": 0, "sample/prompt": "Once upon a time", "sample/text": "Once upon a time zebra"})
    write_jsonl(run / "metrics.jsonl", records)
    (run / "samples.md").write_text(
        "| Step | Output |\n|------|--------|\n| 0 | Once upon a time zebra |\n| 4 | Once upon a time, the cell |\n"
    )
    (run / "run_config.json").write_text(json.dumps({
        "edugpt": {"kind": "pretrain", "version": "0.1.0"},
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 128},
        "data": {"dataset_dir": "data/prepared/embedded"},
        "script": {"sample_steps": 2, "hellaswag_steps": 2},
        "training": {"output_dir": str(run), "max_steps": 4, "num_train_epochs": 3.0, "per_device_train_batch_size": 8,
                     "gradient_accumulation_steps": 2, "learning_rate": 0.0006, "lr_scheduler_type": "cosine",
                     "warmup_steps": 1, "seed": 1337, "hub_token": "<HUB_TOKEN>"},
    }))
    (run / "data_manifest.json").write_text(json.dumps({
        "format": "edugpt-prepared-v2", "created_by": "prepare_data.py",
        "source": {"dataset": "HuggingFaceFW/fineweb-edu", "subset": "sample-10BT", "max_docs": 500},
        "tokenizer": {"name": "gpt2", "vocab_size": 50257, "eos_token_id": 50256},
        "seq_len": 128,
        "split_rule": {"hash": "sha256", "salt": "edugpt", "val_fraction": 0.05,
                       "description": "sha256(salt + doc id) below 5% of the hash range goes to validation"},
        "splits": {"train": {"documents": 475, "tokens": 123456, "blocks": 964, "dropped_tail_tokens": 64,
                             "skipped_empty_documents": 0},
                   "validation": {"documents": 25, "tokens": 6543, "blocks": 51, "dropped_tail_tokens": 15,
                                  "skipped_empty_documents": 0}},
    }))
    png(run / "images" / "train-loss.png")
    png(run / "images" / "hellaswag.png")
    if lm_eval:
        results = run / "eval" / "tiny" / "results_2026-11-25T20-00-00.json"
        results.parent.mkdir(parents=True)
        results.write_text(json.dumps({
            "results": {"hellaswag": {"alias": "hellaswag", "acc,none": 0.2539, "acc_stderr,none": 0.0195,
                                      "acc_norm,none": LM_EVAL_ACC_NORM, "acc_norm_stderr,none": 0.0197}},
            "configs": {"hellaswag": {"dataset_path": "Rowan/hellaswag", "validation_split": "validation"}},
            "n-shot": {"hellaswag": 0},
            "n-samples": {"hellaswag": {"original": 10042, "effective": 500}},
            "config": {"model": "hf", "model_args": f"pretrained={run}", "limit": 500},
            "lm_eval_version": "0.4.13",
        }))
    return record_as_written(run)

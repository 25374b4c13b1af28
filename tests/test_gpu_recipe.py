"""The GPU recipe runs, settings and all, without a GPU: a recipe change that breaks the GPU run fails here.

configs/gpt2_270m.yaml trains 2 optimizer steps on the CPU with only shape and size overrides plus the two switches a
CPU needs (`use_cpu`, and `tf32: false`: TF32 is a CUDA matmul mode). Everything else stays the recipe's: bf16
autocast, fused AdamW, sdpa attention, torch_compile, 4 dataloader workers, tensorboard, in-loop HellaSwag, samples,
validation at the end, the final save. Measured on the project's 2-core CPU: the full 254M shape takes ~46 s per
1024-token step in fp32 and over 6 minutes in bf16 autocast, so the shape shrinks to 2 layers of width 128 at the
recipe's seq 1024; compiling it takes ~40 s of this test's ~1 minute.
"""

from __future__ import annotations

import json
import math

import pytest

from conftest import run_script

pytestmark = pytest.mark.slow

SHAPE_AND_SIZE = ["--n_layer", "2", "--n_head", "2", "--n_embd", "128", "--per_device_train_batch_size", "1",
                  "--tokens_per_step", "1024", "--per_device_eval_batch_size", "1", "--eval_max_batches", "1",
                  "--max_steps", "2", "--hellaswag_steps", "2", "--hellaswag_limit", "4", "--sample_max_new_tokens", "4",
                  # offline, HellaSwag comes from the shipped HellaSwag-format file instead of the Hub
                  "--hellaswag_file", "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"]
CPU_SWITCHES = ["--use_cpu", "true", "--tf32", "false"]


def test_the_270m_recipe_trains_two_steps_on_cpu_with_its_gpu_settings(tmp_path):
    data, output_dir = tmp_path / "data", tmp_path / "run"
    run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", data, "--seq_len", "1024",
               "--max_docs", "24", "--val_fraction", "0.2", check=True, timeout=300)
    proc = run_script("train_hf.py", "--config", "configs/gpt2_270m.yaml", *CPU_SWITCHES, *SHAPE_AND_SIZE,
                      "--dataset_dir", data, "--output_dir", output_dir, check=True, timeout=600)
    assert "global batch: 1,024 tokens per optimizer step = 1 process(es) x 1 blocks x 1 accumulation steps" in proc.stderr

    training = json.loads((output_dir / "run_config.json").read_text())["training"]
    model = json.loads((output_dir / "run_config.json").read_text())["model"]
    assert (training["bf16"], training["torch_compile"], training["optim"], model["attn_implementation"]) == \
        (True, True, "adamw_torch_fused", "sdpa")
    assert training["dataloader_num_workers"] == 4 and training["report_to"] == ["tensorboard"]
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in records if "train_loss" in r)
    assert final["step"] == 2 and math.isfinite(final["train_loss"]) and final["num_input_tokens_seen"] == 2048
    assert [r["step"] for r in records if "eval_loss" in r and math.isfinite(r["eval_loss"])] == [2]
    assert [r["step"] for r in records if "hellaswag/acc" in r] == [2]
    assert (output_dir / "model.safetensors").is_file() and any((output_dir / "runs").iterdir())  # tensorboard events

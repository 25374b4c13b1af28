"""The GPU recipes run, settings and all, without a GPU: a recipe change that breaks a GPU run fails here.

configs/gpt2_270m.yaml (80 GB cards) and its versions for 40-48 GB and 24 GB cards (configs/gpt2_270m_48gb.yaml,
configs/gpt2_270m_24gb.yaml) each train 2 optimizer steps on the CPU with only shape and size overrides plus the two
switches a CPU needs (`use_cpu`, and `tf32: false`: TF32 is a CUDA matmul mode). Everything else stays the recipe's:
bf16 autocast, fused AdamW, sdpa attention, torch_compile, activation checkpointing as set, 4 dataloader workers,
tensorboard, in-loop HellaSwag, samples, validation at the end, the final save. Measured on the project's 2-core CPU:
the full 254M shape takes ~46 s per 1024-token step in fp32 and over 6 minutes in bf16 autocast, so the shape shrinks
to 2 layers of width 128 at the recipes' seq 1024; compiling it takes ~40 s of each run's ~1 minute. Whether each
recipe fits its cards is edugpt.run.plan's question (tests/unit/test_plan.py).
"""

from __future__ import annotations

import json
import math

import pytest
import yaml
from factories import ROOT, run_script

pytestmark = pytest.mark.slow

RECIPES = ["gpt2_270m.yaml", "gpt2_270m_48gb.yaml", "gpt2_270m_24gb.yaml"]
SHAPE_AND_SIZE = ["--n_layer", "2", "--n_head", "2", "--n_embd", "128", "--per_device_train_batch_size", "1",
                  "--tokens_per_step", "1024", "--per_device_eval_batch_size", "1", "--eval_max_batches", "1",
                  "--max_steps", "2", "--hellaswag_steps", "2", "--hellaswag_limit", "4", "--sample_max_new_tokens", "4",
                  # offline, HellaSwag comes from the shipped HellaSwag-format file instead of the Hub
                  "--hellaswag_file", "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"]
CPU_SWITCHES = ["--use_cpu", "true", "--tf32", "false"]


@pytest.fixture(scope="module")
def data_1024(tmp_path_factory):
    data = tmp_path_factory.mktemp("prepared-1024") / "data"
    run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", data, "--seq_len", "1024",
               "--max_docs", "24", "--val_fraction", "0.2", check=True, timeout=300)
    return data


def test_the_gpu_recipes_differ_from_the_80gb_one_only_in_batch_sizes_and_their_folder():
    """Same model, same tokens per step, same schedule and settings: the 24 GB and 40-48 GB runs are the 80 GB run at
    another micro-batch (the validation set stays 3,200 blocks: eval_max_batches x per_device_eval_batch_size)."""
    reference = yaml.safe_load((ROOT / "configs" / RECIPES[0]).read_text())
    allowed = {"per_device_train_batch_size", "per_device_eval_batch_size", "eval_max_batches", "output_dir",
               "activation_checkpointing"}
    for name in RECIPES[1:]:
        recipe = yaml.safe_load((ROOT / "configs" / name).read_text())
        changed = {key for key in reference.keys() | recipe.keys() if reference.get(key) != recipe.get(key)}
        assert changed <= allowed, (name, changed - allowed)
        assert recipe["per_device_train_batch_size"] < reference["per_device_train_batch_size"]


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_270m_recipe_trains_two_steps_on_cpu_with_its_gpu_settings(recipe, data_1024, tmp_path):
    output_dir = tmp_path / "run"
    proc = run_script("train_hf.py", "--config", f"configs/{recipe}", *CPU_SWITCHES, *SHAPE_AND_SIZE,
                      "--dataset_dir", data_1024, "--output_dir", output_dir, check=True, timeout=600)
    assert "global batch: 1,024 tokens per optimizer step = 1 process(es) x 1 blocks x 1 accumulation steps" in proc.stderr

    settings = yaml.safe_load((ROOT / "configs" / recipe).read_text())
    run_config = json.loads((output_dir / "run_config.json").read_text())
    training, model = run_config["training"], run_config["model"]
    assert (training["bf16"], training["torch_compile"], training["optim"], model["attn_implementation"]) == \
        (True, True, "adamw_torch_fused", "sdpa")
    assert training["activation_checkpointing"] == settings.get("activation_checkpointing", False)
    assert training["dataloader_num_workers"] == 4 and training["report_to"] == ["tensorboard"]
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    final = next(r for r in records if "train_loss" in r)
    assert final["step"] == 2 and math.isfinite(final["train_loss"]) and final["num_input_tokens_seen"] == 2048
    assert [r["step"] for r in records if "eval_loss" in r and math.isfinite(r["eval_loss"])] == [2]
    assert [r["step"] for r in records if "hellaswag/acc" in r] == [2]
    assert (output_dir / "model.safetensors").is_file() and any((output_dir / "runs").iterdir())  # tensorboard events

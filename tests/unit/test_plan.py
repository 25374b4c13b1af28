"""edugpt.run.plan and `--dry_run`: the memory model against a measured CPU peak, the recipes against the cards they are
for, and the dry run of every training entry point (the plan printed, nothing written, exit 0; bad input refused)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from factories import ROOT, load_train_main

from edugpt.errors import EduGPTError
from edugpt.run import estimate, plan

RECIPES = ROOT / "configs"
# The card class each pretraining recipe is sized for (edugpt.run.estimate.MEMORY_CLASSES' names).
RECIPE_CARDS = {"gpt2_270m.yaml": "80 GB", "gpt2_270m_48gb.yaml": "40 GB", "gpt2_270m_24gb.yaml": "24 GB"}


@pytest.fixture(autouse=True)
def transformers_verbosity():
    """A dry run quiets transformers' logging for the rest of its process (the plan is the output); here that process
    is pytest's, so the level is put back after each test."""
    import transformers

    level = transformers.utils.logging.get_verbosity()
    yield
    transformers.utils.logging.set_verbosity(level)


# --- the memory model against a measured peak ------------------------------------------------------------------------



def test_a_block_saves_what_transformers_gpt2_keeps_for_backward():
    from edugpt.config.arguments import ModelArguments
    from edugpt.model.gpt2 import gpt2_config

    config = gpt2_config(ModelArguments(n_layer=1, n_head=4, n_embd=64, n_positions=32, vocab_size=100))
    # per token: 116 bytes per unit of width in fp32, 86 under bf16 autocast (the GELU's fp32 temporaries included)
    assert estimate.block_saved_bytes(config, 32, act=4) == 32 * 116 * 64
    assert estimate.block_saved_bytes(config, 32, act=2) == 32 * 86 * 64
    # eager attention keeps softmax's fp32 probabilities, plus their bf16 copy under autocast
    assert estimate.block_saved_bytes(config, 32, 4, "eager") - estimate.block_saved_bytes(config, 32, 4) == 4 * 32 * 32 * 4
    assert estimate.block_saved_bytes(config, 32, 2, "eager") - estimate.block_saved_bytes(config, 32, 2) == 4 * 32 * 32 * 6


def test_sharding_and_launch_layout_change_the_per_gpu_memory():
    from edugpt.config.arguments import ModelArguments
    from edugpt.model.gpt2 import gpt2_config

    config = gpt2_config(ModelArguments())
    n = 254_053_376
    common = dict(seq_len=1024, sequences=16, mixed_precision=True, optimizer_bytes=8)
    one = estimate.training_memory(config, n, checkpointing=False, **common)
    ddp = estimate.training_memory(config, n, checkpointing=False, world_size=8, **common)
    fsdp = estimate.training_memory(config, n, checkpointing=False, world_size=8, fsdp=True, **common)
    assert dict(ddp.parts)["DDP gradient buckets"] == 4 * n and ddp.total > one.total
    assert dict(fsdp.parts)["optimizer state"] == 8 * n / 8 and fsdp.total < one.total
    assert estimate.training_memory(config, n, checkpointing=True, **common).total < one.total


def test_checkpoints_kept_follow_save_total_limit_and_the_save_interval():
    assert estimate.checkpoints_kept(19073, "steps", 5000, 3) == 3
    assert estimate.checkpoints_kept(19073, "steps", 5000, None) == 3
    assert estimate.checkpoints_kept(100, "steps", 0.25, None) == 4  # a float < 1 is a share of the steps
    assert estimate.checkpoints_kept(None, "steps", 500, None) is None
    assert estimate.checkpoints_kept(100, "no", 10, 3) == 0


def test_a_measured_mfu_replaces_the_assumed_one(tmp_path):
    path = tmp_path / "mfu.json"
    assert estimate.read_measured_mfu(path) == {}
    path.write_text(json.dumps({"H100": {"mfu": 0.5, "measured": "bench/bench_gpu.py, 2026-12-01"}}))
    rows = {row["gpu"]: row for row in estimate.gpu_rows(1.72e9, 10**10, 1, False, estimate.read_measured_mfu(path))}
    assert (rows["H100 SXM"]["mfu"], rows["H100 SXM"]["source"]) == (0.5, "bench/bench_gpu.py, 2026-12-01")
    assert (rows["A100"]["mfu"], rows["A100"]["source"]) == (estimate.ASSUMED_MFU, "assumed")
    assert rows["H100 SXM"]["hours"] == pytest.approx(10**10 / (0.5 * 989e12 / 1.72e9) / 3600)
    path.write_text('{"H100": {"mfu": 43}}')
    with pytest.raises(EduGPTError, match="between 0 and 1"):
        estimate.read_measured_mfu(path)


# --- the recipes against their cards ---------------------------------------------------------------------------------


def recipe_plan(name: str, *extra: str) -> plan.Plan:
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments
    from edugpt.config.cli import parse_config

    model_args, data_args, _, _, training_args = parse_config(
        [ModelArguments, DataArguments, PretrainArguments, RunArguments, TrainingArguments],
        plan.dry_run_argv(["--config", str(RECIPES / name), "--dry_run", *extra]))
    return plan.pretraining_plan(model_args, data_args, training_args, name)


@pytest.mark.parametrize("name", sorted(RECIPE_CARDS))
def test_each_270m_recipe_fits_its_cards_with_headroom_at_the_same_global_batch(name):
    capacity = {card: size for card, _, size in estimate.MEMORY_CLASSES}[RECIPE_CARDS[name]]
    recipe = recipe_plan(name)
    reference = recipe_plan("gpt2_270m.yaml")
    needed = max(recipe.training[recipe.checkpointing].needed, recipe.evaluation.needed)
    assert estimate.fits_with_headroom(needed, capacity), (name, needed / 2**30)
    assert recipe.batch.startswith("524,288 tokens per optimizer step")
    assert (recipe.n_params, recipe.steps, recipe.tokens) == (reference.n_params, reference.steps, reference.tokens)
    # the validation set is the same 3,200 blocks, so eval_loss compares across the recipes
    import yaml

    keys = yaml.safe_load((RECIPES / name).read_text())
    assert keys["eval_max_batches"] * keys["per_device_eval_batch_size"] == 3200


def test_the_80gb_micro_batch_leaves_no_headroom_on_a_40gb_card():
    """Why the 40-48 GB recipe exists: the 80 GB recipe's micro-batch of 16 needs nearly all of an A100-40G."""
    capacity = {card: size for card, _, size in estimate.MEMORY_CLASSES}["40 GB"]
    recipe = recipe_plan("gpt2_270m.yaml")
    assert not estimate.fits_with_headroom(recipe.training[False].needed, capacity)


# --- --dry_run -------------------------------------------------------------------------------------------------------


def test_dry_run_plans_a_recipe_whose_data_is_not_prepared_yet(tmp_path, capsys):
    output_dir = tmp_path / "run"
    load_train_main()(["--config", "configs/gpt2_270m_24gb.yaml", "--dataset_dir", str(tmp_path / "none"),
                       "--output_dir", str(output_dir), "--dry_run"])
    out = capsys.readouterr().out
    assert f"{tmp_path / 'none'}: not prepared yet (prepare_data.py writes it)" in out
    assert "19,073 steps x 524,288 tokens = 10B tokens" in out
    assert "1 process(es) x 4 blocks x 128 accumulation steps x 1024 tokens" in out
    assert "activation checkpointing                   off (this run)" in out
    assert not output_dir.exists()


@pytest.mark.parametrize("script", ["train_hf.py", "finetune/sft.py", "finetune/dpo.py"])
def test_dry_run_is_an_option_of_every_training_entry_point(script, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_help_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_:
        module.main(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert exit_.value.code == 0 and "--dry_run" in help_text and "Print the plan and exit" in help_text


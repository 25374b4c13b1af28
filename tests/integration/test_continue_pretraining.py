"""train_hf.py --model_name_or_path: continue pretraining a saved GPT-2 (a run folder, one of its checkpoints, or a Hub
model at a revision) on prepared data. The Hub model is the real `from_pretrained(..., revision=R)` reading a HF cache
laid out as huggingface_hub lays it out, offline."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_inputs import snapshot
from factories import assert_same_losses, load_train_main, run_script, tiny_args, train_records

from edugpt.errors import EduGPTError
from edugpt.run.rundir import LOCK

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def in_hub_cache(cache: Path, repo_id: str, revision: str, model_dir: Path) -> None:
    """Put `model_dir`'s files into the HF cache `cache` as repo `repo_id` at branch `revision` (refs/<revision> names
    the commit whose snapshot holds them), as huggingface_hub leaves a download."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / revision).write_text(COMMIT)
    shutil.copytree(model_dir, storage / "snapshots" / COMMIT,
                    ignore=shutil.ignore_patterns("optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin"))


def without_lock(files: dict) -> dict:
    return {name: entry for name, entry in files.items() if name != LOCK}  # the lock names the latest job to hold it


def one_step_args(output_dir, **extra):
    from transformers import TrainingArguments

    return TrainingArguments(output_dir=str(output_dir), use_cpu=True, report_to="none", max_steps=1,
                             per_device_train_batch_size=4, logging_steps=1, eval_strategy="no", save_strategy="no",
                             disable_tqdm=True, **extra)


def start_from(model_dir_or_id, data_dir, output_dir, **model):
    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments
    from edugpt.train.pretrain import start_pretraining

    model_args = ModelArguments(model_name_or_path=str(model_dir_or_id), **model)
    run, pretraining = start_pretraining(model_args, DataArguments(dataset_dir=str(data_dir)),
                                         PretrainArguments(sample_steps=0), RunArguments(), one_step_args(output_dir))
    return model_args, run, pretraining


def same_weights(model, weights_file) -> bool:
    from safetensors.torch import load_file

    saved, state = load_file(weights_file), model.state_dict()
    return all(state[name].equal(tensor) for name, tensor in saved.items())


@pytest.mark.slow
def test_a_checkpoint_folder_gives_the_run_its_weights_and_the_shape_keys_left_unset(baseline, data_dir, tmp_path):
    import torch

    checkpoint = baseline[0] / "checkpoint-6"
    model_args, run, pretraining = start_from(checkpoint, data_dir, tmp_path / "run")
    with run:
        assert same_weights(pretraining.trainer.model, checkpoint / "model.safetensors")
        assert {p.dtype for p in pretraining.trainer.model.parameters()} == {torch.float32}  # fp32 master weights
        assert (model_args.n_layer, model_args.n_head, model_args.n_embd, model_args.n_positions) == (2, 2, 32, 64)
    run_config = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run_config["model"]["model_name_or_path"] == str(checkpoint) and run_config["model"]["n_embd"] == 32
    assert run.settings["base_model"] == str(checkpoint.resolve())


def test_a_hub_model_at_a_revision_is_loaded_with_from_pretrained_and_named_in_the_card(
        tiny_model_dir, data_dir, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    in_hub_cache(cache, "you/edugpt-tiny", "step-6", tiny_model_dir)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # offline (conftest): the cache is all there is
    output_dir = tmp_path / "run"
    _, run, pretraining = start_from("you/edugpt-tiny", data_dir, output_dir, model_revision="step-6")
    with run:
        assert same_weights(pretraining.trainer.model, tiny_model_dir / "model.safetensors")
        run.execute(lambda: pretraining.trainer)
    card = (output_dir / "README.md").read_text()
    assert "\nbase_model: you/edugpt-tiny\n" in card.split("---")[1]
    assert "further pretrained" in card and "starting from `you/edugpt-tiny`" in card
    marker = json.loads((output_dir / "edugpt-complete.json").read_text())["settings"]
    assert (marker["base_model"], marker["base_model_revision"]) == ("you/edugpt-tiny", "step-6")

    with pytest.raises(EduGPTError, match="the HF cache holds no revision 'step-8'"):
        start_from("you/edugpt-tiny", data_dir, tmp_path / "other", model_revision="step-8")
    assert not (tmp_path / "other").exists()


def test_a_recipe_shape_key_that_disagrees_with_the_model_is_one_error_naming_both_values(
        tiny_model_dir, data_dir, tmp_path):
    with pytest.raises(EduGPTError, match="n_embd 64 in the recipe, 32 in the model") as err:
        load_train_main()(tiny_args(data_dir, tmp_path / "run", "--n_embd", "64",
                                    "--model_name_or_path", str(tiny_model_dir)))
    assert "n_positions 64 in the recipe, 128 in the model" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("recipe", "argv", "message"), [
    ("max_steps: 1\n", ["--model_revision", "step-2"], "model_revision 'step-2' picks a branch .* --model_name_or_path"),
    ("n_layer: [2]\n", [], r"n_layer takes one int, got a list"),  # None-able now: still checked (edugpt.config.cli)
])
def test_model_arguments_that_cannot_work_are_one_error_at_parse_time(recipe, argv, message, tmp_path):
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments, RunArguments
    from edugpt.config.cli import parse_config

    (tmp_path / "recipe.yaml").write_text(recipe)
    with pytest.raises(EduGPTError, match=message):
        parse_config([ModelArguments, DataArguments, PretrainArguments, RunArguments, TrainingArguments],
                     ["--config", str(tmp_path / "recipe.yaml"), *argv, "--use_cpu", "true"])


@pytest.mark.parametrize(("shape", "message"), [
    ({"n_positions": 32}, "the data's blocks are 64 tokens but .* covers 32 positions"),
    ({"vocab_size": 1000}, "tokenized with a 50257-token vocabulary but .* has 1000 embedding rows"),
])
def test_data_that_does_not_fit_the_model_is_one_error(shape, message, data_dir, gpt2_tokenizer, tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    model_dir = tmp_path / "small"
    GPT2LMHeadModel(GPT2Config(**{"n_layer": 1, "n_head": 1, "n_embd": 8, **shape})).save_pretrained(model_dir)
    gpt2_tokenizer.save_pretrained(model_dir)
    # No shape keys given: the model's are taken, so the data is what is refused.
    with pytest.raises(EduGPTError, match=message):
        load_train_main()(["--dataset_dir", str(data_dir), "--output_dir", str(tmp_path / "run"), "--use_cpu", "true",
                           "--report_to", "none", "--model_name_or_path", str(model_dir)])
    assert not (tmp_path / "run").exists()


def test_a_truncated_base_model_is_refused_before_anything_is_written(tiny_model_dir, data_dir, tmp_path):
    model_dir = tmp_path / "copy"
    shutil.copytree(tiny_model_dir, model_dir)
    weights = model_dir / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])  # an interrupted copy
    with pytest.raises(EduGPTError, match="model.safetensors is damaged"):
        load_train_main()(tiny_args(data_dir, tmp_path / "run", "--model_name_or_path", str(model_dir)))
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_overwrite_output_dir_is_refused_when_the_base_model_lies_inside_it(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    before = without_lock(snapshot(output_dir))
    with pytest.raises(EduGPTError, match="--overwrite_output_dir would delete .*checkpoint-6, the --model_name_or_path"):
        load_train_main()(tiny_args(data_dir, output_dir, "--model_name_or_path", str(output_dir / "checkpoint-6"),
                                    "--overwrite_output_dir", "true"))
    assert without_lock(snapshot(output_dir)) == before


@pytest.fixture(scope="module")
def continued(baseline, data_dir, tmp_path_factory):
    """A copy of the baseline run (the base model) and a 4-step run continued from it (checkpoints at 2 and 4)."""
    root = tmp_path_factory.mktemp("continued")
    base = root / "base"
    shutil.copytree(baseline[0], base)
    output_dir = root / "run"
    run_script("train_hf.py", *tiny_args(data_dir, output_dir, "--model_name_or_path", base, "--max_steps", "4"),
               check=True, timeout=300)
    return base, output_dir


@pytest.mark.slow
def test_a_run_continued_from_a_run_folder_records_its_base_model_in_run_config_and_card(baseline, continued):
    from edugpt.report.card import write_model_card

    base, output_dir = continued
    # Step 1 starts from the trained weights, far below a new model's ln(50257) = 10.8.
    assert train_records(output_dir)[1]["loss"] < train_records(baseline[0])[1]["loss"] - 0.2
    assert json.loads((output_dir / "run_config.json").read_text())["model"]["model_name_or_path"] == str(base)
    card = (output_dir / "README.md").read_text()
    assert "further pretrained on edugpt's embedded offline corpus" in card and f"starting from `{base}`" in card
    assert "base_model:" not in card.split("---")[1]  # a local folder is no Hub id for the metadata

    (base / "published.json").write_text(json.dumps({"repo_id": "you/edugpt-tiny"}))  # as publish.py records it
    write_model_card(output_dir)
    assert "\nbase_model: you/edugpt-tiny\n" in (output_dir / "README.md").read_text().split("---")[1]


@pytest.mark.slow
def test_resuming_a_continued_run_takes_the_checkpoint_not_the_base_weights(continued, data_dir, tmp_path):
    base, first = continued
    output_dir = tmp_path / "run"
    run_script("train_hf.py", *tiny_args(data_dir, output_dir, "--model_name_or_path", base, "--max_steps", "4",
                                         "--resume_from_checkpoint", first / "checkpoint-2"), check=True, timeout=300)
    assert sorted(train_records(output_dir)) == [3, 4]
    assert_same_losses(first, output_dir, [3, 4])

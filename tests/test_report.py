"""The model card built from a run directory: valid Hub metadata, the run's numbers in the body, absent parts omitted.

`make_run_dir` builds a run directory by the run-directory contract (README "Run directory"); test_publish.py uses it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edugpt.checkpoints import write_marker
from edugpt.errors import EduGPTError
from edugpt.report import build_model_card, main, write_model_card

ROOT = Path(__file__).resolve().parents[1]
FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtokenFAKE12"  # shaped like a real token (hf_ + 34 chars)
RESUME_STATE = ("optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json", "training_args.bin",
                "edugpt-complete.json")
FINAL_TRAIN_LOSS = 6.8125
FINAL_VAL_LOSS = 6.9375
LM_EVAL_ACC_NORM = 0.2617


def _png(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (30, 90, 200)).save(path)


def _write_jsonl(path: Path, records: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def make_run_dir(root: Path, model_dir: Path, *, steps=(2, 4), lm_eval: bool = True) -> Path:
    """A pretraining run directory as train_hf.py leaves it: final model, checkpoint-N folders with resume state,
    metrics.jsonl, samples.md, run_config.json, data_manifest.json, plots, and an lm-eval results file under eval/."""
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
    _write_jsonl(run / "metrics.jsonl", records)
    (run / "samples.md").write_text(
        "| Step | Output |\n|------|--------|\n| 0 | Once upon a time zebra |\n| 4 | Once upon a time, the cell |\n"
    )
    (run / "run_config.json").write_text(json.dumps({
        "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "seq_len": 128},
        "data": {"dataset_dir": "data/prepared/embedded"},
        "training": {"output_dir": str(run), "max_steps": 4, "num_train_epochs": 3.0, "per_device_train_batch_size": 8,
                     "gradient_accumulation_steps": 2, "learning_rate": 0.0006, "lr_scheduler_type": "cosine",
                     "warmup_steps": 1, "seed": 1337, "hub_token": "<HUB_TOKEN>"},
    }))
    (run / "data_manifest.json").write_text(json.dumps({
        "format": "edugpt-prepared-v1", "created_by": "prepare_data.py",
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
    _png(run / "images" / "train-loss.png")
    _png(run / "images" / "hellaswag.png")
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
    return run


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    return make_run_dir(tmp_path, tiny_model_dir)


def _header(card_path: Path) -> dict:
    text = card_path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_full_run_card_metadata_and_numbers(run_dir):
    from huggingface_hub import ModelCard

    path = write_model_card(run_dir)
    assert path == run_dir / "README.md"
    card = ModelCard.load(path)
    data = card.data
    assert (data.license, data.library_name, data.pipeline_tag) == ("mit", "transformers", "text-generation")
    assert data.language == ["en"]
    assert data.datasets == ["HuggingFaceFW/fineweb-edu"]
    assert {"gpt2", "pretraining", "fineweb-edu"} <= set(data.tags)
    scores = {(r.dataset_type, r.metric_type): r.metric_value for r in data.eval_results}
    assert scores[("Rowan/hellaswag", "acc_norm")] == LM_EVAL_ACC_NORM
    model_index = _header(path)["model-index"]
    assert model_index[0]["results"][0]["dataset"]["split"] == "validation"

    body = card.text
    assert "1,637,792" in body  # parameters, from the safetensors header (tied lm_head counted once)
    assert f"Final train loss (step 4) | {FINAL_TRAIN_LOSS:.4f}" in body
    assert f"Final validation loss (step 4) | {FINAL_VAL_LOSS:.4f}" in body
    assert "8,192" in body and "| MFU (median) | 31.2% |" in body
    assert "| 4 | 8.19k | 0.2700 | 0.2800 |" in body  # in-loop HellaSwag at step 4
    assert f"| hellaswag | 0 | acc_norm | {LM_EVAL_ACC_NORM:.4f} | 0.0197 | 500 |" in body
    assert "![Training and validation loss by step](images/train-loss.png)" in body
    assert "![HellaSwag accuracy by step](images/hellaswag.png)" in body
    assert "| 4 | Once upon a time, the cell |" in body  # samples.md table
    assert "| train | 475 | 123,456 |" in body and "| validation | 25 | 6,543 |" in body
    assert "below 5% of the hash range" in body  # split rule
    assert "| gradient_accumulation_steps | 2 |" in body and "num_train_epochs |" not in body
    assert 'AutoModelForCausalLM.from_pretrained("' in body and "lm_eval --model hf" in body


def test_hub_id_and_revision_in_snippets(run_dir):
    card = build_model_card(run_dir, hub_model_id="someone/edugpt-tiny", revision="step-2")
    assert card.text.startswith("\n# edugpt-tiny\n")
    assert 'from_pretrained("someone/edugpt-tiny", revision="step-2")' in card.text
    assert "revision `step-2`" in card.text
    assert card.data.eval_results is None  # the final model's lm-eval scores are not this checkpoint's


def test_card_never_repeats_a_token_from_run_config(run_dir):
    config = json.loads((run_dir / "run_config.json").read_text())
    config["training"]["hub_token"] = FAKE_TOKEN
    config["model"]["tokenizer_name"] = "gpt2"
    (run_dir / "run_config.json").write_text(json.dumps(config))
    text = str(build_model_card(run_dir))
    assert FAKE_TOKEN not in text and '"hub_token": "<HUB_TOKEN>"' in text and "model.tokenizer_name | gpt2" in text


def test_bare_model_dir_omits_missing_sections(tmp_path, tiny_model_dir):
    run = tmp_path / "bare"
    shutil.copytree(tiny_model_dir, run)
    card = build_model_card(run)
    assert card.data.eval_results is None and card.data.datasets is None
    assert "model-index" not in str(card)
    for heading in ("## Results", "## Evaluation", "## Samples", "## Training recipe", "## Data", "## Finetuning"):
        assert heading not in card.text
    assert "## Model" in card.text and "## How to use" in card.text


def test_torn_metrics_line_and_explicit_eval_dir(run_dir, tmp_path):
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write('{"step": 5, "loss": 1.0')  # killed mid-write
    shutil.move(run_dir / "eval", tmp_path / "elsewhere")
    results_path = next((tmp_path / "elsewhere").rglob("results*.json"))
    results = json.loads(results_path.read_text())
    results["config"]["model_args"] = "pretrained=/copied/from/another/machine/run"
    results_path.write_text(json.dumps(results))
    assert build_model_card(run_dir).data.eval_results is None  # names another model: not auto-detected
    card = build_model_card(run_dir, eval_dir=tmp_path / "elsewhere")
    assert card.data.eval_results and f"{FINAL_TRAIN_LOSS:.4f}" in card.text


def test_lm_eval_results_found_beside_the_run_only_for_this_model(run_dir, tiny_model_dir):
    """eval_harness.py --output_dir runs/demo/eval next to runs/demo/pretrain: used when it scored this run dir."""
    results_path = next((run_dir / "eval").rglob("results*.json"))
    sibling = run_dir.parent / "eval"
    shutil.move(run_dir / "eval", sibling)
    results = json.loads(next(sibling.rglob("results*.json")).read_text())
    assert build_model_card(run_dir).data.eval_results  # config.model_args names run_dir
    other = run_dir.parent / "sft"
    shutil.copytree(tiny_model_dir, other)
    assert build_model_card(other).data.eval_results is None  # the sibling scored another model
    results["config"] = {"model": str(run_dir / "checkpoint-2"), "model_args": None, "limit": None}
    results_path.parent.mkdir(parents=True)
    results_path.write_text(json.dumps(results))
    shutil.rmtree(sibling)
    assert build_model_card(run_dir).data.eval_results is None  # a checkpoint's scores are not the final model's


def test_local_hellaswag_file_is_labelled_and_kept_out_of_model_index(run_dir):
    """Offline runs score a HellaSwag-format local file (task hellaswag_local): never reported as HellaSwag itself."""
    config = json.loads((run_dir / "run_config.json").read_text())
    config["script"] = {"hellaswag_file": "edugpt/assets/eval/smoke.jsonl", "hellaswag_limit": 40}
    (run_dir / "run_config.json").write_text(json.dumps(config))
    results_path = next((run_dir / "eval").rglob("results*.json"))
    results = json.loads(results_path.read_text())
    results["results"] = {"hellaswag_local": results["results"].pop("hellaswag")}
    results["configs"] = {"hellaswag_local": {"dataset_path": "json",
                                              "dataset_kwargs": {"hellaswag_file": "edugpt/assets/eval/smoke.jsonl"}}}
    results["n-shot"] = {"hellaswag_local": 0}
    results_path.write_text(json.dumps(results))
    card = build_model_card(run_dir)
    assert card.data.eval_results is None and "model-index" not in str(card).split("---")[1]  # YAML header
    assert "local file `edugpt/assets/eval/smoke.jsonl` in HellaSwag's format" in card.text
    assert "first 40 items" in card.text
    assert f"HellaSwag-format local file acc_norm, lm-eval 0-shot | {LM_EVAL_ACC_NORM:.4f}" in card.text


def test_dpo_finetune_card_from_trainer_state(tmp_path, tiny_model_dir):
    """TRL output dirs have no metrics.jsonl: the card reads the newest checkpoint's trainer_state.json."""
    run = tmp_path / "dpo"
    shutil.copytree(tiny_model_dir, run)
    (run / "checkpoint-3").mkdir()
    log = [
        {"step": 1, "epoch": 0.3, "loss": 0.6931, "rewards/chosen": 0.0, "rewards/rejected": 0.0,
         "rewards/accuracies": 0.5, "rewards/margins": 0.0},
        {"step": 3, "epoch": 1.0, "loss": 0.6512, "rewards/chosen": 0.031, "rewards/rejected": -0.052,
         "rewards/accuracies": 0.75, "rewards/margins": 0.083},
        {"step": 3, "epoch": 1.0, "eval_loss": 0.6601, "eval_rewards/margins": 0.061},
        {"step": 3, "train_loss": 0.67, "train_runtime": 4.2},
    ]
    (run / "checkpoint-3" / "trainer_state.json").write_text(json.dumps({"global_step": 3, "log_history": log}))
    (run / "run_config.json").write_text(json.dumps({
        "model": {"model_name_or_path": "someone/edugpt-sft"},
        "training": {"beta": 0.1, "loss_type": ["sigmoid"], "max_steps": 3, "learning_rate": 5e-7},
    }))
    card = build_model_card(run)
    assert card.data.base_model == "someone/edugpt-sft"
    assert {"dpo", "trl"} <= set(card.data.tags)
    assert "Direct Preference Optimization" in card.text
    assert "| rewards/margins | 3 | 0.0830 |" in card.text
    assert "| eval_rewards/margins | 3 | 0.0610 |" in card.text
    assert "Final train loss (step 3) | 0.6512" in card.text


def test_sft_card_reads_root_trainer_state_and_recipe(tmp_path, tiny_model_dir):
    run = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, run)
    (run / "trainer_state.json").write_text(json.dumps({"log_history": [
        {"step": 5, "loss": 2.25, "mean_token_accuracy": 0.41, "num_tokens": 3888.0},
        {"step": 10, "loss": 1.875, "mean_token_accuracy": 0.52, "num_tokens": 6977.0},
    ]}))
    (run / "run_config.json").write_text(json.dumps({
        "script": {"dataset_name": "HuggingFaceTB/smol-smoltalk", "dataset_train_split": "train"},
        "model": {"model_name_or_path": "someone/edugpt-base"},
        "training": {"assistant_only_loss": True, "packing": True, "max_length": 1024},
    }))
    card = build_model_card(run)
    assert (card.data.base_model, card.data.datasets) == ("someone/edugpt-base", ["HuggingFaceTB/smol-smoltalk"])
    assert "sft" in card.data.tags and "Supervised finetuning" in card.text
    assert "- Data: `HuggingFaceTB/smol-smoltalk` (split `train`)" in card.text
    assert "| num_tokens | 10 | 6,977 |" in card.text and "Final train loss (step 10) | 1.8750" in card.text


def test_not_a_run_dir_is_a_user_error(tmp_path):
    with pytest.raises(EduGPTError, match="no saved model"):
        main([str(tmp_path)])


@pytest.mark.slow
def test_command_line_regenerates_card(run_dir):
    proc = subprocess.run([sys.executable, "-m", "edugpt.report", str(run_dir), "--hub_model_id", "someone/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "README.md" in proc.stdout
    assert _header(run_dir / "README.md")["library_name"] == "transformers"
    assert not list(run_dir.glob(".README.*"))  # no temp file left behind

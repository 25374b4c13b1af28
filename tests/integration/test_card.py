"""The model card built from a run directory: valid Hub metadata, the run's numbers in the body, absent parts omitted.

`make_run_dir` and the `run_dir` fixture (conftest.py) build a pretraining run directory by the run-directory
contract (edugpt.run.rundir).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from factories import FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, LM_EVAL_ACC_NORM, ROOT
from fakes.hub import FAKE_TOKEN

from edugpt.errors import EduGPTError
from edugpt.report.card import build_model_card, main, write_model_card


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


def test_a_metrics_line_that_is_not_utf8_is_skipped_like_a_torn_one(run_dir):
    with (run_dir / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 5, "loss": 1.0, "note": "\xff\xfe"}\n')  # a damaged disk block, a binary append
    from edugpt.report.card import main

    main([str(run_dir)])  # python -m edugpt.report.card RUN_DIR
    card = (run_dir / "README.md").read_text(encoding="utf-8")
    assert f"{FINAL_TRAIN_LOSS:.4f}" in card and "| 5 |" not in card


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
        "edugpt": {"kind": "sft", "version": "0.1.0"},
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
    proc = subprocess.run([sys.executable, "-m", "edugpt.report.card", str(run_dir), "--hub_model_id", "someone/x"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "README.md" in proc.stdout
    assert _header(run_dir / "README.md")["library_name"] == "transformers"
    assert not list(run_dir.glob(".README.*"))  # no temp file left behind


# --- issue 12: base model of a finetune started from a local run, framework versions, citations --------------------


def _finetune_of(base: Path, root: Path, tiny_model_dir: Path, kind: str = "sft") -> Path:
    """A finetune run directory (run_config shaped as finetune/sft.py writes it) whose base is the folder `base`."""
    run = root / kind
    shutil.copytree(tiny_model_dir, run)
    training = {"assistant_only_loss": True} if kind == "sft" else {"beta": 0.1, "loss_type": ["sigmoid"]}
    (run / "run_config.json").write_text(json.dumps({
        "edugpt": {"kind": kind, "version": "0.1.0"}, "script": kind, "model": {"model_name_or_path": str(base)},
        "data": {"dataset_name": "edugpt/assets/finetune/sft_smoke.jsonl"}, "training": {"max_steps": 2, **training},
    }))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 2, "tokens": 512, "loss": 2.5}) + "\n")
    return run


def test_unpublished_local_base_is_described_by_its_own_card_summary(run_dir, tmp_path, tiny_model_dir):
    card = build_model_card(_finetune_of(run_dir, tmp_path, tiny_model_dir))
    assert card.data.base_model is None  # a local path is not Hub metadata
    assert (f"- Base model: `{run_dir}` (a local edugpt run, not published to the Hub). From its own card: A "
            "1.64M-parameter GPT-2-architecture causal language model (2 layers, 2 heads, d_model 32) pretrained from "
            "scratch on `HuggingFaceFW/fineweb-edu` (sample-10BT), 8.19k tokens seen, with the GPT-2 "
            "tokenizer.") in card.text


def test_local_base_pushed_by_training_or_publish_py_is_the_hub_base_model(run_dir, tmp_path, tiny_model_dir):
    from edugpt.run.rundir import write_published

    finetune = _finetune_of(run_dir, tmp_path, tiny_model_dir)
    config = json.loads((run_dir / "run_config.json").read_text())
    config["training"].update(push_to_hub=True, hub_model_id="someone/edugpt-pushed")
    (run_dir / "run_config.json").write_text(json.dumps(config))
    assert build_model_card(finetune).data.base_model == "someone/edugpt-pushed"

    write_published(run_dir, "someone/edugpt-published", ["main", "step-2"])  # publish.py's record wins
    card = build_model_card(finetune)
    assert card.data.base_model == "someone/edugpt-published"
    assert ("- Base model: [`someone/edugpt-published`](https://huggingface.co/someone/edugpt-published), published "
            f"from the local run `{run_dir}`") in card.text
    assert "starting from `someone/edugpt-published`" in card.text and "From its own card" not in card.text

    (run_dir / "published.json").write_text("{torn")
    with pytest.raises(EduGPTError, match=r"publish record .*published.json is not valid JSON"):
        build_model_card(finetune)


def test_local_base_that_is_not_an_edugpt_run_is_named_only(tmp_path, tiny_model_dir):
    card = build_model_card(_finetune_of(tiny_model_dir, tmp_path, tiny_model_dir))
    assert card.data.base_model is None
    assert f"- Base model: `{tiny_model_dir}`\n" in card.text


def test_framework_versions_and_citations_like_trl_cards(run_dir, tmp_path, tiny_model_dir):
    from importlib.metadata import version

    pretrain = build_model_card(run_dir).text
    sft = build_model_card(_finetune_of(run_dir, tmp_path / "a", tiny_model_dir, "sft")).text
    dpo = build_model_card(_finetune_of(run_dir, tmp_path / "b", tiny_model_dir, "dpo")).text
    for text in (pretrain, sft, dpo):
        versions = text.split("## Framework versions")[1].split("## Citations")[0]
        for label, distribution in (("edugpt", "edugpt"), ("Transformers", "transformers"), ("Pytorch", "torch")):
            assert f"- {label}: {version(distribution)}\n" in versions
        citations = text.split("## Citations")[1]
        assert "```bibtex\n@software{edugpt," in citations
        assert citations.count("```bibtex") == citations.count("\n}\n```")  # every BibTeX block is closed
    assert "- TRL: " not in pretrain and "vonwerra2020trl" not in pretrain
    assert f"- TRL: {version('trl')}\n" in sft and "@software{vonwerra2020trl," in sft and "rafailov2023" not in sft
    assert "@software{vonwerra2020trl," in dpo and "@inproceedings{rafailov2023direct," in dpo


def test_revision_card_links_no_images_and_loads_that_revision(run_dir):
    (run_dir / "images" / "lr.png").write_bytes((run_dir / "images" / "hellaswag.png").read_bytes())
    main_card = build_model_card(run_dir, hub_model_id="someone/x").text
    assert "](images/lr.png)" in main_card and "](images/hellaswag.png)" in main_card
    text = build_model_card(run_dir, hub_model_id="someone/x", revision="step-2").text
    assert "images/" not in text and "## More plots" not in text
    loads = re.findall(r"from_pretrained\((.*)\)", text)
    assert loads and all(args.endswith(', revision="step-2"') for args in loads)
    assert "--model_args pretrained=someone/x,revision=step-2 " in text
    assert "eval_harness.py" not in text.split("## How to use")[1].split("Offline,")[0]  # it takes no revision


def test_template_ships_as_package_data():
    import fnmatch

    from edugpt.report.card import TEMPLATE

    # pyproject's `[tool.setuptools.package-data]` line for edugpt (tomllib is 3.11+, the project supports 3.10).
    section = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1]
    patterns = json.loads(re.search(r"^edugpt = (\[.*\])$", section, re.MULTILINE).group(1))
    relative = TEMPLATE.relative_to(ROOT / "edugpt").as_posix()
    assert TEMPLATE.is_file() and any(fnmatch.fnmatch(relative, pattern) for pattern in patterns)


# --- damaged inputs: refused in one line where the card reads them, passed over where it only searches ---------------


def test_lm_eval_results_named_with_eval_dir_must_be_lm_evals_but_a_broken_one_found_nearby_is_passed_over(
        run_dir, tmp_path):
    results = next((run_dir / "eval").rglob("results*.json"))
    broken = results.with_name("results_2099-01-01T00-00-00.json")  # the newest: searched first
    for content in ("[1, 2, 3]", '{"results": {"hellaswag": {"acc,none": 0.3}}, "config": 5}'):
        broken.write_text(content)
        assert build_model_card(run_dir).data.eval_results  # found by searching: the good file is used
        with pytest.raises(EduGPTError, match=r"lm-eval results .*results_2099.* (holds an array|has a number as "
                                              r"'config'), not an (lm-eval results )?object"):
            build_model_card(run_dir, eval_dir=broken)
        with pytest.raises(EduGPTError, match="lm-eval results"):
            build_model_card(run_dir, eval_dir=run_dir / "eval")  # a folder named with --eval_dir: all of it
    (tmp_path / "empty").mkdir()
    with pytest.raises(EduGPTError, match="holds no lm-eval scores"):
        build_model_card(run_dir, eval_dir=tmp_path / "empty")


def test_a_card_path_held_by_a_link_is_refused_and_the_link_left_alone(run_dir, tmp_path):
    target = tmp_path / "my-notes.md"
    target.write_text("a user's notes\n")
    (run_dir / "README.md").symlink_to(target)
    with pytest.raises(EduGPTError, match="README.md is not a regular file"):
        write_model_card(run_dir)
    assert (run_dir / "README.md").is_symlink() and target.read_text() == "a user's notes\n"


RUN_CONFIG_DAMAGE = {"training": [1], "model": "x", "script": 5, "edugpt": "pretrain"}
MANIFEST_DAMAGE = {"source": 5, "splits": {"train": [1]}, "seq_len": "long", "tokenizer": [],
                   "split_rule": "sha256"}


@pytest.mark.parametrize("file, key, value", [("run_config.json", k, v) for k, v in RUN_CONFIG_DAMAGE.items()]
                         + [("data_manifest.json", k, v) for k, v in MANIFEST_DAMAGE.items()])
def test_a_record_file_with_a_wrong_type_is_one_error_naming_the_key(run_dir, file, key, value):
    content = json.loads((run_dir / file).read_text())
    content[key] = value
    (run_dir / file).write_text(json.dumps(content))
    with pytest.raises(EduGPTError, match=rf"{file} (has \S+ \S+ as |: )'{key}"):
        write_model_card(run_dir)
    assert not (run_dir / "README.md").exists()


def test_values_of_unexpected_types_in_the_record_files_still_make_a_card(run_dir):
    """Where a value is only shown (a recipe value, a count's display), any JSON value is shown, not a crash."""
    config = json.loads((run_dir / "run_config.json").read_text())
    config["training"]["max_steps"] = "four"
    config["script"]["hellaswag_limit"] = "all"
    (run_dir / "run_config.json").write_text(json.dumps(config))
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"step": "5", "loss": 1.0}) + "\n")  # no integer step: not a record
        f.write(json.dumps({"step": 6, "tokens": "many", "eval_loss": 2.0}) + "\n")
    text = build_model_card(run_dir).text
    assert "| max_steps | four |" in text and "first all items" in text and "| 6 | many |" in text

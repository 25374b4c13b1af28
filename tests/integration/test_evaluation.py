"""edugpt.eval (harness, hellaswag, task_catalog) and edugpt/eval/tasks: the local HellaSwag task is lm-eval's, the
in-training numbers are lm_eval's."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from factories import write_jsonl

from edugpt.errors import EduGPTError
from edugpt.eval.tasks.hellaswag_local import SMOKE_FILE, read_hellaswag_jsonl

ROOT = Path(__file__).resolve().parents[2]
GOOD_ROW = {"ind": 0, "activity_label": "Lists", "ctx_a": "A list is mutable.", "ctx_b": "", "ctx": "A list is mutable.",
            "endings": ["It can grow.", "Tuples are not.", "Sets hash.", "Dicts map."], "label": 0,
            "split": "val", "split_type": "indomain", "source_id": "x"}


# ------------------------------------------------------------------------------------------------ task definition
def test_local_task_is_lm_evals_hellaswag_definition():
    import lm_eval.tasks.hellaswag.utils as hellaswag_utils

    from edugpt.eval.task_catalog import LOCAL_HELLASWAG_YAML
    from edugpt.train.trainer_hooks import load_lm_eval_task_yaml as load_yaml

    theirs = load_yaml(Path(hellaswag_utils.__file__).with_name("hellaswag.yaml"), resolve_func=False)
    ours = load_yaml(LOCAL_HELLASWAG_YAML, resolve_func=False)
    for key in ("output_type", "validation_split", "doc_to_text", "doc_to_target", "doc_to_choice", "metric_list",
                "metadata"):
        assert ours[key] == theirs[key], key
    # Same prompt cleaning: our YAML points at lm-eval's own process_docs, not a copy.
    resolved = load_yaml(LOCAL_HELLASWAG_YAML, resolve_func=True)
    assert resolved["process_docs"] is hellaswag_utils.process_docs
    assert ours["task"] == "hellaswag_local" and "test_split" not in ours


def test_local_task_documents_are_cleaned_like_hellaswag(tmp_path):
    from lm_eval.api.task import ConfigurableTask

    from edugpt.eval.task_catalog import local_hellaswag_config

    row = {**GOOD_ROW, "activity_label": "Making tea", "ctx_a": "Boil water [title] Pour it.", "ctx_b": "then wait",
           "endings": ["and drink [step] it.", " stir.", "spill it.", "  sip  it."], "label": "3"}
    task = ConfigurableTask(config=local_hellaswag_config(write_jsonl(tmp_path / "one.jsonl", [row])))
    doc = task.eval_docs[0]
    # lm-eval's preprocess: " [title]" -> ". ", other [..] removed, double spaces collapsed, ctx_b capitalised.
    assert doc["query"] == "Making tea: Boil water. Pour it. Then wait"
    assert doc["choices"] == ["and drink it.", "stir.", "spill it.", "sip it."]
    assert task.doc_to_target(doc) == 3


# ------------------------------------------------------------------------------------------------------ smoke file
def test_smoke_file_is_honest_and_reproducible():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import build_hellaswag_smoke as builder
    finally:
        sys.path.pop(0)
    rows = [json.loads(line) for line in SMOKE_FILE.read_text().splitlines()]
    assert len(rows) == len(read_hellaswag_jsonl(SMOKE_FILE)) == 200
    assert set(rows[0]) == {"ind", "activity_label", "ctx_a", "ctx_b", "ctx", "endings", "label", "split",
                            "split_type", "source_id"}
    assert "hellaswag_format_smoke" in SMOKE_FILE.name  # never to be mistaken for HellaSwag itself
    documents = {doc["id"]: " ".join(doc["text"].split()) for doc in builder.load_documents("embedded")}
    for row in rows:
        doc_id = row["source_id"].removeprefix("edugpt-embedded~")
        right = row["endings"][row["label"]]
        assert f"{row['ctx_a']} {right}" in documents[doc_id]  # the right ending really follows the passage
        for wrong in (e for i, e in enumerate(row["endings"]) if i != row["label"]):
            assert wrong not in documents[doc_id]  # distractors come from other documents
    # Regenerating gives the same file, item for item.
    args = builder.SmokeArguments()
    rebuilt = builder.build_items(builder.load_documents(args.dataset), args)
    assert rebuilt == rows


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r.pop("endings"), "line 2: field 'endings' is missing"),
    (lambda r: r.update(label=4), "line 2: field 'label' is 4, out of range 0-3"),
    (lambda r: r.update(label="x"), "line 2: field 'label' must be an integer"),
    (lambda r: r.update(endings=["a", "b", "c"]), "line 2: field 'endings' has 3 endings, HellaSwag items have 4"),
    (lambda r: r.pop("ctx_a"), "line 2: field 'ctx_a' is missing"),
])
def test_malformed_hellaswag_file_names_line_and_field(tmp_path, change, message):
    bad = dict(GOOD_ROW, endings=list(GOOD_ROW["endings"]))
    change(bad)
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_ROW, bad])
    with pytest.raises(EduGPTError, match=message):
        read_hellaswag_jsonl(path)


def test_invalid_json_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [GOOD_ROW, GOOD_ROW, "{not json"])
    with pytest.raises(EduGPTError, match="line 3: not valid JSON"):
        read_hellaswag_jsonl(path)


# ------------------------------------------------------------------------------------------------- in-loop scoring
LIMIT, EVERY, BATCH = 12, 2, 4


def make_trainer(model_dir: Path, output_dir: Path, with_hellaswag: bool):
    import torch
    from datasets import Dataset
    from transformers import (
        AutoTokenizer,
        GPT2LMHeadModel,
        Trainer,
        TrainerCallback,
        TrainingArguments,
        default_data_collator,
    )

    from edugpt.eval.hellaswag import HellaSwagCallback

    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50257, (16, 32), generator=generator).tolist()
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=4, per_device_train_batch_size=2, learning_rate=1e-3, logging_steps=1,
        save_steps=EVERY, save_strategy="steps" if with_hellaswag else "no", report_to="none", use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )
    model = GPT2LMHeadModel.from_pretrained(model_dir)  # dropout 0.1: any RNG or train-mode change shows in the loss
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}),
                      data_collator=default_data_collator, processing_class=AutoTokenizer.from_pretrained(model_dir))
    items_by_step = {}
    if with_hellaswag:
        hellaswag = HellaSwagCallback(trainer, every_steps=EVERY, limit=LIMIT, hellaswag_file=str(SMOKE_FILE),
                                      batch_size=BATCH)

        class KeepItems(TrainerCallback):  # runs after HellaSwagCallback: remember each evaluation's items
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step % EVERY == 0:
                    items_by_step[state.global_step] = hellaswag.last_items

        trainer.add_callback(hellaswag)
        trainer.add_callback(KeepItems())
    return trainer, items_by_step


def lm_eval_cli_samples(checkpoint: Path, output: Path) -> tuple[dict, list[dict]]:
    """What README's offline command prints, run as a user would: results and per-item samples."""
    proc = subprocess.run(
        [sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={checkpoint}",
         "--include_path", "edugpt/eval/tasks", "--tasks", "hellaswag_local", "--limit", str(LIMIT),
         "--batch_size", str(BATCH), "--log_samples", "--output_path", str(output)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next(output.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(output.rglob("samples_hellaswag_local_*.jsonl")).open()]
    return results, sorted(samples, key=lambda s: s["doc_id"])


@pytest.mark.slow
def test_callback_equals_lm_eval_on_saved_checkpoints_and_keeps_trajectory(tiny_model_dir, tmp_path):
    from edugpt.eval.harness import evaluate_checkpoint
    from edugpt.eval.hellaswag import per_item_scores

    trainer, items_by_step = make_trainer(tiny_model_dir, tmp_path / "with", with_hellaswag=True)
    trainer.train()
    plain, _ = make_trainer(tiny_model_dir, tmp_path / "without", with_hellaswag=False)
    plain.train()

    # Same trajectory with and without in-loop HellaSwag: loss and grad norm identical at every step.
    def curve(t):
        return [(r["step"], r["loss"], r["grad_norm"]) for r in t.state.log_history if "loss" in r]
    assert len(curve(trainer)) == 4 and curve(trainer) == curve(plain)

    logged = {r["step"]: r for r in trainer.state.log_history if "hellaswag/acc" in r}
    assert sorted(logged) == [2, 4] and sorted(items_by_step) == [2, 4]

    # Step 2: the lm_eval CLI (offline, --include_path edugpt/eval/tasks) on checkpoint-2 gives the same items' scores.
    results, samples = lm_eval_cli_samples(tmp_path / "with" / "checkpoint-2", tmp_path / "cli")
    callback_items = items_by_step[2]
    assert [s["doc_id"] for s in samples] == [i["doc_id"] for i in callback_items] == list(range(LIMIT))
    for sample, item in zip(samples, callback_items):
        assert (float(sample["acc"]), float(sample["acc_norm"])) == (item["acc"], item["acc_norm"])
        assert [float(r[0]) for r in sample["filtered_resps"]] == item["loglikelihoods"]  # bit for bit
    cli = results["results"]["hellaswag_local"]
    assert (cli["acc,none"], cli["acc_norm,none"]) == (logged[2]["hellaswag/acc"], logged[2]["hellaswag/acc_norm"])

    # Step 4: lm-eval's Python API (what eval_harness.py runs) on checkpoint-4 agrees the same way.
    api = evaluate_checkpoint(str(tmp_path / "with" / "checkpoint-4"), ["hellaswag"], limit=LIMIT, batch_size=BATCH,
                              hellaswag_file=str(SMOKE_FILE), device="cpu", log_samples=True)
    assert per_item_scores(api, "hellaswag_local") == items_by_step[4]
    assert api["results"]["hellaswag_local"]["acc,none"] == logged[4]["hellaswag/acc"]
    assert items_by_step[2] != items_by_step[4]  # the weights moved between the two evaluations

    # The run's tokenizer was not given a pad token by lm-eval (the callback scores with a copy).
    assert trainer.processing_class.pad_token is None


def test_callback_without_file_fails_fast_offline(tiny_model_dir, tmp_path):
    from edugpt.eval.hellaswag import HellaSwagCallback

    trainer, _ = make_trainer(tiny_model_dir, tmp_path / "run", with_hellaswag=False)
    start = time.monotonic()
    with pytest.raises(EduGPTError, match="hellaswag_file"):
        HellaSwagCallback(trainer, every_steps=10, limit=100)
    assert time.monotonic() - start < 5


def test_preserved_training_state_restores_rng_and_modes(tiny_model_dir):
    import random

    import numpy as np
    import torch
    from transformers import GPT2LMHeadModel

    from edugpt.eval.hellaswag import preserved_training_state

    model = GPT2LMHeadModel.from_pretrained(tiny_model_dir).train()
    model.transformer.drop.eval()  # a deliberately mixed state must come back as it was
    before = [m.training for m in model.modules()]
    def reseed():
        random.seed(1)
        np.random.seed(1)
        torch.manual_seed(1)

    reseed()
    expected = (random.random(), np.random.rand(), torch.rand(1))
    reseed()
    with preserved_training_state(model), torch.no_grad():
        model.eval()
        random.random(), np.random.rand(100), torch.rand(100)
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
    assert [m.training for m in model.modules()] == before and torch.is_grad_enabled()


def test_model_arguments_are_lm_evals_own():
    """eval_harness.py's --model/--revision/--model_args become lm-eval's hf model_args, parsed by lm-eval."""
    from edugpt.eval.harness import model_arguments

    assert model_arguments("runs/x") == {"pretrained": "runs/x"}
    assert model_arguments("you/m", "step-100", "dtype=bfloat16,max_length=512,trust_remote_code=False") == {
        "pretrained": "you/m", "revision": "step-100", "dtype": "bfloat16", "max_length": 512,
        "trust_remote_code": False}
    with pytest.raises(EduGPTError, match="--model already sets"):
        model_arguments("runs/x", model_args="pretrained=other")
    with pytest.raises(EduGPTError, match="disagree"):
        model_arguments("you/m", "step-100", "revision=main")


def test_model_args_with_spaces_mean_what_was_typed_and_a_repeated_key_is_refused():
    """lm-eval keeps the space of "dtype=float32, max_length=96" in the key (" max_length"), which then fails with a
    traceback inside from_pretrained; " pretrained=X" slipped past the check that --model sets it."""
    from edugpt.eval.harness import model_arguments

    assert model_arguments("runs/x", model_args=" dtype = float32 , max_length=96,") == {
        "pretrained": "runs/x", "dtype": "float32", "max_length": 96}
    with pytest.raises(EduGPTError, match="--model already sets"):
        model_arguments("runs/x", model_args="dtype=float32, pretrained=runs/y")
    with pytest.raises(EduGPTError, match="names dtype more than once"):
        model_arguments("runs/x", model_args="dtype=float32,dtype=bfloat16")
    with pytest.raises(EduGPTError, match="item 'bfloat16' is not key=value"):
        model_arguments("runs/x", model_args="dtype=float32,bfloat16")


# ---------------------------------------------------------------------------------------------------------- console
@pytest.mark.slow
def test_in_loop_evaluation_is_one_line_and_records_carry_one_throughput(baseline):
    """The baseline run scores 12 HellaSwag-format items at steps 4 and 8: each evaluation prints its one record and
    no lm-eval progress bar (three per evaluation before, which broke Trainer's bar); every training record holds our
    tokens_per_second and not Trainer's cumulative train_tokens_per_second."""
    from factories import train_records

    output_dir, proc = baseline
    for bar in ("Running loglikelihood requests", "Tokenizing inputs", "| 12/12 ["):
        assert bar not in proc.stderr, bar
    assert sum("hellaswag/acc" in line for line in proc.stdout.splitlines()) == 2
    records = train_records(output_dir)
    assert sorted(records) == list(range(1, 9))
    assert all(r["tokens_per_second"] > 0 and "train_tokens_per_second" not in r for r in records.values())

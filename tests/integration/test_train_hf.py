"""train_hf.py end to end: real runs of a tiny GPT-2 on the embedded corpus, resume, faults, errors, 2-process launch."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from factories import ROOT, assert_same_losses, load_train_main, run_script, tiny_args, train_records
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.config.cli import parse_config
from edugpt.errors import EduGPTError
from edugpt.run.checkpoints import checkpoint_problem
from edugpt.run.rundir import MARKER, list_checkpoints

pytestmark = pytest.mark.slow

def test_pretraining_recipes_parse():
    from transformers import TrainingArguments

    from edugpt.config.arguments import DataArguments, ModelArguments, PretrainArguments

    for recipe in (ROOT / "configs" / "smoke.yaml", ROOT / "configs" / "gpt2_270m.yaml"):
        model, data, script, training = parse_config(
            [ModelArguments, DataArguments, PretrainArguments, TrainingArguments],
            ["--config", str(recipe), "--use_cpu", "true", "--bf16", "false", "--tf32", "false", "--torch_compile", "false",
             "--optim", "adamw_torch"],
        )
        assert model.n_embd % model.n_head == 0 and training.max_steps > 0, recipe
        assert training.save_total_limit is None or training.save_total_limit >= 2, recipe


def test_run_writes_the_run_directory_contract(baseline, data_dir):
    output_dir, proc = baseline
    records = [json.loads(line) for line in (output_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("step" in r and "tokens" in r for r in records)
    train = [r for r in records if "loss" in r]
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:
        assert {"loss", "grad_norm", "learning_rate", "tokens_per_second", "num_input_tokens_seen"} <= r.keys()
        assert r["tokens"] == r["num_input_tokens_seen"] == r["step"] * 4 * 64
        assert r["tokens_per_second"] > 0 and "mfu" not in r  # no GPU, no MFU
    assert train[-1]["loss"] < train[0]["loss"]
    assert [r["step"] for r in records if "eval_loss" in r] == [4, 8]
    assert [r["step"] for r in records if "sample/text" in r] == [0, 4, 8]
    hellaswag = [r for r in records if "hellaswag/acc" in r]
    assert [r["step"] for r in hellaswag] == [4, 8] and all(0 <= r["hellaswag/acc_norm"] <= 1 for r in hellaswag)
    assert (output_dir / "images" / "hellaswag.png").stat().st_size > 10_000

    rows = (output_dir / "samples.md").read_text().splitlines()
    assert rows[0] == "| Step | Output |" and [row.split("|")[1].strip() for row in rows[2:]] == ["0", "4", "8"]
    assert all("Once upon a time" in row for row in rows[2:])
    assert (output_dir / "images" / "train-loss.png").stat().st_size > 10_000

    run_config = json.loads((output_dir / "run_config.json").read_text())
    assert run_config["model"]["n_embd"] == 32 and run_config["data"]["seq_len"] == 64
    assert run_config["training"]["max_steps"] == 8
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert json.loads((output_dir / "data_manifest.json").read_text()) == manifest

    # save_total_limit 2 with saves every 2 steps: only the two newest remain, both complete.
    assert [p.name for p in list_checkpoints(output_dir)] == ["checkpoint-6", "checkpoint-8"]
    assert all(checkpoint_problem(p) is None for p in list_checkpoints(output_dir))
    for name in ("model.safetensors", "generation_config.json", "tokenizer.json", "optimizer.pt", "rng_state.pth"):
        assert (output_dir / "checkpoint-8" / name).is_file(), name

    # edugpt's model card, written at the end of every finished run
    from huggingface_hub import ModelCard

    card = ModelCard.load(output_dir / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
    assert "pretraining" in card.data.tags and not card.data.eval_results  # the local smoke file is not HellaSwag
    assert "![Training and validation loss by step](images/train-loss.png)" in card.text
    assert f"Final train loss (step 8) | {train[-1]['loss']:.4f}" in card.text


def test_final_model_loads_with_auto_classes(baseline):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    output_dir, _ = baseline
    model = AutoModelForCausalLM.from_pretrained(output_dir)
    tokenizer = AutoTokenizer.from_pretrained(output_dir)
    assert GenerationConfig.from_pretrained(output_dir).eos_token_id == 50256
    assert model.config.n_embd == 32 and len(tokenizer) == 50257
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    with torch.no_grad():
        assert model(ids).logits.shape == (1, 4, 50257)


def test_resume_after_sigkill_is_bit_exact(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    command = [sys.executable, str(ROOT / "train_hf.py"), *tiny_args(data_dir, output_dir)]
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = output_dir / "checkpoint-4" / MARKER
    deadline = time.time() + 240
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert marker.exists() and not (output_dir / "model.safetensors").exists(), "the run ended before it could be killed"

    run_script("train_hf.py", *tiny_args(data_dir, output_dir), check=True, timeout=300)
    assert_same_losses(baseline[0], output_dir, range(1, 9))
    steps = [json.loads(line)["step"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps == list(range(1, 9))  # records after the checkpoint were re-logged once, not twice


@pytest.mark.parametrize(("damage", "named"), [
    ("truncated-weights", "model.safetensors has"),
    ("optimizer-bytes-changed", "optimizer.pt changed after it was saved"),  # same size: only the hash tells
])
def test_corrupt_newest_checkpoint_falls_back_with_warning(damage, named, baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    for name in (MARKER, "model.safetensors"):  # killed after saving checkpoint-8, before the final model
        (output_dir / name).unlink()
    path = output_dir / "checkpoint-8" / ("model.safetensors" if damage == "truncated-weights" else "optimizer.pt")
    with open(path, "r+b") as f:
        if damage == "truncated-weights":
            f.truncate(path.stat().st_size // 2)
        else:
            f.seek(path.stat().st_size // 2)
            f.write(os.urandom(256))

    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir), check=True, timeout=300)
    warning = next(line for line in proc.stderr.splitlines() if "checkpoint-8 is not usable" in line)
    assert named in warning and "falling back" in warning
    assert (output_dir / "corrupt-checkpoint-8").is_dir()
    assert checkpoint_problem(output_dir / "checkpoint-8") is None  # re-trained from checkpoint-6 and saved again
    assert_same_losses(baseline[0], output_dir, [7, 8])


def test_sigterm_saves_a_checkpoint_and_exits_zero(data_dir, tmp_path):
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, "--max_steps", "100000", "--save_steps", "100000", "--eval_steps", "100000")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train_hf.py"), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = output_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if metrics.exists() and '"loss"' in metrics.read_text():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    checkpoints = list_checkpoints(output_dir)
    assert len(checkpoints) == 1 and checkpoint_problem(checkpoints[0]) is None, output
    step = int(checkpoints[0].name.split("-")[1])
    assert step >= 1 and max(train_records(output_dir)) == step
    assert not (output_dir / "model.safetensors").exists()  # preempted: no "final" model


def test_non_finite_loss_stops_with_a_clear_error_and_keeps_good_checkpoints(data_dir, tmp_path):
    import torch
    from safetensors.torch import load_file

    output_dir = tmp_path / "run"
    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir, "--learning_rate", "1e30", "--warmup_steps", "0",
                                                "--save_steps", "1"), timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "became non-finite" in proc.stderr or "became nan" in proc.stderr
    assert "last good checkpoint is" in proc.stderr and "Traceback" not in proc.stderr
    checkpoints = list_checkpoints(output_dir)
    assert checkpoints, proc.stderr
    for checkpoint in checkpoints:
        weights = load_file(checkpoint / "model.safetensors")
        assert all(torch.isfinite(t).all() for t in weights.values()), checkpoint
    assert not (output_dir / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset_dir", "/nonexistent/prepared"], "does not exist"),
        (["--seq_len", "128"], "does not match the data's blocks of 64"),
        (["--vocab_size", "1000"], "vocabulary"),
        (["--n_positions", "32"], "n_positions"),
        (["--n_head", "3"], "not divisible by n_head"),
    ],
)
def test_user_errors_name_the_problem(data_dir, tmp_path, extra, message):
    with pytest.raises(EduGPTError, match=message):
        load_train_main()([*tiny_args(data_dir, tmp_path / "run"), *extra])


def test_data_dir_not_made_by_prepare_data_is_rejected(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(EduGPTError, match="not made by prepare_data.py"):
        load_train_main()(tiny_args(tmp_path / "data", tmp_path / "run"))


def _blocks_data(path, seed: int):
    """A prepared dataset of 16 train and 4 validation blocks of 64 random tokens: same counts for every seed."""
    import numpy as np

    from edugpt.corpus.synthetic import write_prepared

    blocks = np.random.default_rng(seed).integers(0, 50256, size=(20, 64)).astype(np.uint16)
    return write_prepared(path, {"train": blocks[:16], "validation": blocks[16:]})


def test_resuming_on_other_data_under_the_same_path_is_refused_naming_its_digest(tmp_path):
    data, output_dir = tmp_path / "data", tmp_path / "run"
    quick = ["--sample_steps", "0", "--hellaswag_steps", "0", "--eval_strategy", "no"]
    _blocks_data(data, seed=0)
    load_train_main()(tiny_args(data, output_dir, *quick, "--max_steps", "2"))
    shutil.rmtree(data)
    _blocks_data(data, seed=1)  # re-prepared in place: the same source name, sizes and blocks per split
    with pytest.raises(EduGPTError, match=r"settings changed \(data_digest: \{\"train\": \"[0-9a-f]{64}\", "
                                          r"\"validation\": \"[0-9a-f]{64}\"\} in the checkpoint, \{"):
        load_train_main()(tiny_args(data, output_dir, *quick, "--max_steps", "2"))
    load_train_main()(tiny_args(data, output_dir, *quick, "--max_steps", "4", "--resume_with_changes", "true"))
    assert sorted(train_records(output_dir)) == [1, 2, 3, 4]
    changed = json.loads((output_dir / "run_config.json").read_text())["resumed_with_changes"]
    assert sorted(changed) == ["data_digest", "max_steps"]


def test_resuming_with_another_model_shape_is_rejected(baseline, data_dir, tmp_path):
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    with pytest.raises(EduGPTError, match="different shape.*n_embd 32 vs 64"):
        load_train_main()(tiny_args(data_dir, output_dir, "--n_embd", "64"))


def test_unknown_config_key_and_missing_data_exit_2_without_traceback(data_dir, tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("n_layers: 2\n")
    proc = run_script("train_hf.py", "--config", recipe, "--output_dir", tmp_path / "run", timeout=120)
    assert proc.returncode == 2 and "n_layers" in proc.stderr and "n_layer" in proc.stderr
    assert "Traceback" not in proc.stderr

    proc = run_script("train_hf.py", *tiny_args(tmp_path / "missing", tmp_path / "run"), timeout=120)
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_rerunning_a_finished_run_changes_nothing_and_restores_a_missing_final_model(baseline, data_dir, tmp_path):
    from safetensors.torch import load_file

    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir)
    (output_dir / "model.safetensors").unlink()  # e.g. killed between the last checkpoint and the final save
    (output_dir / "README.md").unlink()
    before = {name: (output_dir / name).read_text() for name in ("metrics.jsonl", "samples.md")}

    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir), check=True, timeout=300)
    assert "pretrain already reached its last step" in proc.stderr and "restored the final model" in proc.stderr
    assert {name: (output_dir / name).read_text() for name in before} == before  # no extra step, sample or record
    final, last = load_file(output_dir / "model.safetensors"), load_file(output_dir / "checkpoint-8" / "model.safetensors")
    assert final.keys() == last.keys() and all(final[k].equal(last[k]) for k in final)
    assert "Final train loss (step 8)" in (output_dir / "README.md").read_text()


def test_push_to_hub_offline_fails_before_any_work(tmp_path):
    """--push_to_hub checks the Hub before loading anything: offline, one clear error and no output_dir. The data
    folder does not even exist: the Hub check comes first, so that is not what the error says."""
    output_dir = tmp_path / "run"
    proc = run_script("train_hf.py", *tiny_args(tmp_path / "no-data", output_dir, "--push_to_hub", "true",
                                                "--hub_model_id", "someone/edugpt-tiny"),
                      env={"HF_TOKEN": FAKE_TOKEN}, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Hub is unreachable" in errors[0] and "publish.py" in errors[0], proc.stderr
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert not output_dir.exists() and "loss" not in proc.stderr




@pytest.mark.parametrize("fail", [False, True], ids=["pushed", "push-failed"])
def test_push_at_the_end_uploads_the_run_with_our_card_in_one_commit(fail, data_dir, tmp_path, monkeypatch):
    """Trainer pushes at each save (hub_strategy every_save) and at the end; edugpt's card goes up in the same commit
    as the model (Trainer.create_model_card is edugpt's). When the Hub fails, the run directory is complete and the
    error says how to publish it; the same command again, once the Hub answers, trains nothing and publishes it."""
    hub = FakeHub(fail)
    monkeypatch.setattr("transformers.trainer.hf_api", hub)
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)  # no token or network here
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, "--max_steps", "2", "--save_steps", "2", "--eval_steps", "2",
                     "--sample_steps", "0", "--hellaswag_steps", "0", "--push_to_hub", "true",
                     "--hub_model_id", "someone/edugpt-tiny")
    if fail:
        with pytest.raises(EduGPTError, match=r"saved in .*run, but pushing it to someone/edugpt-tiny failed "
                                              r"\(ConnectionError.*python publish.py .*run --hub_model_id someone/") as err:
            load_train_main()(args)
        assert FAKE_TOKEN not in str(err.value)
    else:
        load_train_main()(args)
    for name in ("config.json", "model.safetensors", "run_config.json", "metrics.jsonl", "README.md", MARKER):
        assert (output_dir / name).is_file(), name
    local_card = (output_dir / "README.md").read_text()
    assert 'from_pretrained("someone/edugpt-tiny")' in local_card and "generated_from_trainer" not in local_card
    if fail:
        assert hub.uploads == []
        hub.fail = False
        load_train_main()(args)  # trains nothing more, publishes the finished run
        (publish,) = hub.uploads
        assert publish["revision"] == "main" and {"model.safetensors", "README.md"} <= set(publish["files"])
        assert 'from_pretrained("someone/edugpt-tiny")' in publish["card"]
        return
    checkpoint_push, final_push = hub.uploads
    assert checkpoint_push["message"] == "Training in progress, step 2"  # hub_strategy every_save, Trainer's default
    assert final_push["message"] == "End of training"
    assert {"model.safetensors", "metrics.jsonl", "run_config.json", "README.md"} <= set(final_push["files"])
    assert final_push["card"] == local_card  # edugpt's card, in the same commit as the model

"""finetune/sft.py and finetune/dpo.py on the bundled smoke data, the shared loader, and bad input."""

from __future__ import annotations

import json
import logging
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from factories import ROOT, run_script, write_jsonl
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.errors import EduGPTError
from edugpt.model.chat import EDUGPT_CHAT_TEMPLATE, add_chat_template
from edugpt.run.rundir import MARKER, read_metrics
from edugpt.train.chat_data import load_finetune_dataset

# Local dataset folders (train.jsonl), as configs/*_smoke.yaml name them.
SFT_SMOKE = ROOT / "edugpt/assets/finetune/sft_smoke"
DPO_SMOKE = ROOT / "edugpt/assets/finetune/dpo_smoke"


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# --- the shared loader ------------------------------------------------------------------------------------------------


def test_sft_formats_all_become_messages(tmp_path):
    rows = [
        {"messages": [user("Hi"), assistant("Hello!")], "prompt": "Hi", "source": "x"},  # ultrachat-like extra columns
        {"messages": [user("Hi")], "prompt": "Hi", "source": "x"},  # no assistant turn: skipped
    ]
    data = load_finetune_dataset(str(write_jsonl(tmp_path / "a.jsonl", rows)), "sft")
    assert data.column_names == ["messages"]  # `prompt` dropped, or TRL would treat it as prompt-completion data
    assert data[0]["messages"] == [user("Hi"), assistant("Hello!")] and len(data) == 1

    sharegpt = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
    completion = [{"prompt": [user("Hi")], "completion": [assistant("Hello!")]}]
    for name, rows in (("sharegpt", sharegpt), ("completion", completion)):
        data = load_finetune_dataset(str(write_jsonl(tmp_path / f"{name}.jsonl", rows)), "sft")
        assert data[0]["messages"] == [user("Hi"), assistant("Hello!")], name


def test_missing_columns_name_what_is_missing_and_the_formats(tmp_path):
    text_only = str(write_jsonl(tmp_path / "text.jsonl", [{"text": "just text"}]))
    with pytest.raises(EduGPTError, match=r"lacks the column\(s\) messages.*it has: text.*formats: `messages`"):
        load_finetune_dataset(text_only, "sft")
    with pytest.raises(EduGPTError, match=r"lacks the column\(s\) rejected.*accepted formats: `prompt` \+ `chosen`"):
        load_finetune_dataset(str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "a"}])), "dpo")


def test_preference_rows_equal_or_empty_are_skipped_and_counted(tmp_path, caplog):
    # One format per file (strings here): `datasets` reads a column that mixes strings and message lists as JSON,
    # which turns a string such as "4" into the number 4.
    good = {"prompt": "2+2?", "chosen": "4", "rejected": "5"}
    rows = [
        good,
        {"prompt": "2+2?", "chosen": "4", "rejected": "4"},  # chosen == rejected
        {"prompt": "", "chosen": "4", "rejected": "5"},  # empty prompt
        {"prompt": "2+2?", "chosen": " ", "rejected": "5"},  # empty chosen
        {"prompt": "3+3?", "chosen": "6", "rejected": "7"},  # string format, kept
    ]
    with caplog.at_level(logging.WARNING, logger="edugpt.train.chat_data"):
        data = load_finetune_dataset(str(write_jsonl(tmp_path / "p.jsonl", rows)), "dpo")
    assert len(data) == 2
    assert data[1] == {"prompt": [user("3+3?")], "chosen": [assistant("6")], "rejected": [assistant("7")]}
    assert "skipped 3 of 5 rows" in caplog.text
    assert "1 where chosen == rejected" in caplog.text and "1 with an empty prompt" in caplog.text
    with pytest.raises(EduGPTError, match="no usable rows"):
        load_finetune_dataset(str(write_jsonl(tmp_path / "bad.jsonl", rows[1:4])), "dpo")


def test_implicit_prompt_is_extracted_as_in_ultrafeedback_binarized(tmp_path):
    row = {  # HuggingFaceH4/ultrafeedback_binarized: string prompt + whole conversations
        "prompt": "Name a color.",
        "chosen": [user("Name a color."), assistant("Blue.")],
        "rejected": [user("Name a color."), assistant("Seven.")],
        "messages": [user("Name a color."), assistant("Blue.")],
        "score_chosen": 8.0,
    }
    data = load_finetune_dataset(str(write_jsonl(tmp_path / "uf.jsonl", [row])), "dpo")
    assert data.column_names == ["prompt", "chosen", "rejected"]
    assert data[0]["prompt"] == [user("Name a color.")]
    assert (data[0]["chosen"], data[0]["rejected"]) == ([assistant("Blue.")], [assistant("Seven.")])


def test_unreadable_inputs(tmp_path):
    with pytest.raises(EduGPTError, match="does not exist"):
        load_finetune_dataset(str(tmp_path / "missing.jsonl"), "sft")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"messages": []}\n{not json\n')
    with pytest.raises(EduGPTError, match=r"could not load the dataset .*broken.jsonl.*JSON parse error.*in row 1"):
        load_finetune_dataset(str(broken), "sft")
    with pytest.raises(EduGPTError, match="no dataset given"):
        load_finetune_dataset(None, "dpo")


# --- SFT masks the prompt ---------------------------------------------------------------------------------------------


def test_sft_trains_on_assistant_tokens_only(tiny_model_dir, tmp_path):
    """The prepared (packed) SFT rows carry a label exactly on every reply token and its <|endoftext|>: the prompt
    tokens ("System: ...", "User: ...", "Assistant:") are all -100."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import ModelConfig, ScriptArguments, SFTConfig, SFTTrainer

    from edugpt.config.cli import parse_config

    _, args, _ = parse_config(
        [ScriptArguments, SFTConfig, ModelConfig],
        ["--config", "configs/sft_smoke.yaml", "--output_dir", str(tmp_path / "out")],
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    add_chat_template(tokenizer, model)
    data = load_finetune_dataset(str(SFT_SMOKE), "sft")
    trainer = SFTTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)

    expected = 0  # reply tokens counted independently of TRL, from the template's assistant mask
    for row in data:
        out = tokenizer.apply_chat_template(row["messages"], return_dict=True, return_assistant_tokens_mask=True)
        expected += sum(out["assistant_masks"])
    trained = 0
    for row in trainer.train_dataset:
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) <= 128 and sum(row["seq_lengths"]) == len(ids)  # packed to max_length
        assert all(label in (-100, token) for token, label in zip(ids, labels))
        trained_text = tokenizer.decode([t for t, label in zip(ids, labels) if label != -100])
        assert "User:" not in trained_text and "Assistant:" not in trained_text and "System:" not in trained_text
        trained += sum(label != -100 for label in labels)
    assert trained == expected > 0

    batch = next(iter(trainer.get_train_dataloader()))  # padding-free: one flat row, positions restart per conversation
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1
    assert (batch["labels"][batch["position_ids"] == 0] == -100).all()


# --- end to end: SFT then DPO, as `make demo` runs them ---------------------------------------------------------------


def assert_model_card(out: Path, kind: str, base_model: Path, last: dict):
    """README.md is edugpt's card (not TRL's): valid Hub metadata, the base model, the final train loss."""
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
    assert {kind, "trl", "edugpt"} <= set(card.data.tags)
    assert f"- Base model: `{base_model}`" in card.text
    assert card_value(card.text, f"Final train loss (step {last['step']})") == pytest.approx(last["loss"], abs=5e-5)
    assert f'from_pretrained("{out}")' in card.text
    return card


def card_value(text: str, label: str) -> float:
    """The number in the last cell of the card's table row that starts with `label`."""
    match = re.search(rf"^\| {re.escape(label)} \|(?:[^|\n]*\|)*? ([-0-9.,e]+) \|$", text, re.MULTILINE)
    assert match, f"no table row {label!r} in the card"
    return float(match.group(1).replace(",", ""))


@pytest.fixture(scope="module")
def sft_run(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("sft") / "sft"
    proc = run_script(
        "finetune/sft.py", "--config", "configs/sft_smoke.yaml", "--model_name_or_path", tiny_model_dir,
        "--output_dir", out, "--max_steps", "10", "--logging_steps", "1", timeout=300,
    )
    return proc, out


def test_sft_logged_loss_is_the_mean_over_predicted_tokens(tiny_model_dir, tmp_path):
    """SFT's logged loss recomputed without Trainer: with assistant_only_loss off, a row's first label is trained
    too, and Trainer would count it as a target (GPT-2's loss_type is None) though the loss shifts it away."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import ModelConfig, SFTConfig, SFTTrainer

    from edugpt.train.finetune import FinetuneJob, load_base_model

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    add_chat_template(tokenizer)
    job = FinetuneJob(run=None, model_path=str(tiny_model_dir), tokenizer=tokenizer, train_dataset=None,
                      eval_dataset=None)
    model = load_base_model(job, ModelConfig(model_name_or_path=str(tiny_model_dir)))
    for module in model.modules():  # the stand-in checkpoint has GPT-2's dropout; the recomputation has none
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    rows = [{"messages": [user(f"What is {word}?"), assistant(f"{word.capitalize()} is a word of length {len(word)}.")]}
            for word in ("a list", "recursion", "an interpreter")]
    args = SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=len(rows),
                     logging_steps=1, save_strategy="no", report_to="none", use_cpu=True, learning_rate=1e-3,
                     assistant_only_loss=False, activation_checkpointing=False, bf16=False)
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))  # every row: the mean does not depend on their order
    assert (batch["labels"][:, 0] != -100).all()  # the first label of each row is one Trainer could miscount
    initial = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    trainer.train()
    logged = next(r["loss"] for r in trainer.state.log_history if "loss" in r)
    model.load_state_dict(initial)
    with torch.no_grad():
        logits = model.eval()(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    targets = batch["labels"][:, 1:]
    expected = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=-100)
    assert abs(logged - expected.item()) < 1e-5


@pytest.mark.slow
def test_sft_writes_a_chat_model_and_the_loss_falls(sft_run, tiny_model_dir):
    proc, out = sft_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "chat_template.jinja"):
        assert (out / name).is_file(), name
    losses = [h["loss"] for h in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in h]
    assert len(losses) == 10
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.1, losses

    # The run files pretraining writes: every argument used, every log record with its step and tokens seen.
    run_config = json.loads((out / "run_config.json").read_text())
    assert run_config["script"] == "sft" and run_config["model"]["model_name_or_path"] == str(tiny_model_dir)
    assert run_config["data"]["dataset_name"].endswith("edugpt/assets/finetune/sft_smoke")
    assert run_config["training"]["max_steps"] == 10 and run_config["training"]["output_dir"] == str(out)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["loss"] for r in records if "loss" in r] == pytest.approx(losses)
    assert all(r["tokens"] > 0 for r in records) and records[-1]["tokens"] == records[-1]["num_input_tokens_seen"]
    card = assert_model_card(out, "sft", tiny_model_dir, [r for r in records if "loss" in r][-1])
    assert "Supervised finetuning (SFT)" in card.text and "sft_smoke" in card.text

    from transformers import AutoTokenizer, pipeline

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == EDUGPT_CHAT_TEMPLATE and tokenizer.pad_token_id == tokenizer.eos_token_id
    messages = [user("What is the capital of France?")]
    assert tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True).endswith("Assistant:")
    reply = pipeline("text-generation", model=str(out))(messages, max_new_tokens=4)[0]["generated_text"][-1]
    assert reply["role"] == "assistant" and isinstance(reply["content"], str)


def completion_logps(model, tokenizer, prompt, reply) -> float:
    """Summed log-probability of the reply tokens given the prompt, as DPO scores them."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=True)["input_ids"]
    full_ids = tokenizer.apply_chat_template(prompt + reply, return_dict=True)["input_ids"]
    ids = torch.tensor([full_ids])
    with torch.no_grad():
        logps = model(ids, use_cache=False).logits[0, :-1].log_softmax(-1)
    targets = ids[0, 1:]
    per_token = logps.gather(-1, targets[:, None])[:, 0]
    return per_token[len(prompt_ids) - 1 :].sum().item()


@pytest.mark.slow
def test_dpo_raises_the_margin_above_the_reference(sft_run, tmp_path):
    _, sft_dir = sft_run
    rows = [json.loads(line) for line in (DPO_SMOKE / "train.jsonl").read_text().splitlines()]
    bad = [{"prompt": "2+2?", "chosen": "4", "rejected": "4"}, {"prompt": "2+2?", "chosen": "", "rejected": "5"}]
    data = write_jsonl(tmp_path / "pairs.jsonl", rows + bad)
    out = tmp_path / "dpo"
    proc = run_script(
        "finetune/dpo.py", "--config", "configs/dpo_smoke.yaml", "--model_name_or_path", sft_dir,
        "--output_dir", out, "--dataset_name", data, "--max_steps", "8", "--learning_rate", "1e-3", timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skipped 2 of 70 rows" in proc.stderr

    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = [h for h in history if "rewards/margins" in h]
    assert logged and {"rewards/chosen", "rewards/rejected", "rewards/accuracies"} <= set(logged[-1])
    assert json.loads((out / "run_config.json").read_text())["script"] == "dpo"
    rewards = [r for r in read_metrics(out / "metrics.jsonl") if "rewards/margins" in r]
    assert [r["rewards/margins"] for r in rewards] == pytest.approx([h["rewards/margins"] for h in logged])
    card = assert_model_card(out, "dpo", sft_dir, logged[-1])
    assert "Direct Preference Optimization (DPO)" in card.text
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins"):
        value = card_value(card.text, f"{key} | {logged[-1]['step']:,}")
        assert value == pytest.approx(logged[-1][key], rel=1e-3, abs=5e-5), key  # printed to 4 places

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.chat_template == EDUGPT_CHAT_TEMPLATE
    policy, reference = AutoModelForCausalLM.from_pretrained(out), AutoModelForCausalLM.from_pretrained(sft_dir)
    margins = {"policy": [], "reference": []}
    for row in rows:
        for name, model in (("policy", policy), ("reference", reference)):
            chosen = completion_logps(model, tokenizer, row["prompt"], row["chosen"])
            rejected = completion_logps(model, tokenizer, row["prompt"], row["rejected"])
            margins[name].append(chosen - rejected)
    mean = {name: sum(values) / len(values) for name, values in margins.items()}
    assert mean["policy"] > mean["reference"] + 0.1, mean
    wins = sum(p > r for p, r in zip(margins["policy"], margins["reference"]))
    assert wins > len(rows) * 0.6, (wins, len(rows))


# --- the pretraining lifecycle: SIGTERM, then the same command resumes; a bad re-run deletes nothing -----------------


@pytest.mark.slow
def test_sft_stopped_by_sigterm_resumes_with_the_same_command_and_loses_nothing(sft_run, tiny_model_dir, tmp_path):
    out = tmp_path / "sft"
    args = ["--config", "configs/sft_smoke.yaml", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
            "--max_steps", "10", "--logging_steps", "1"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "finetune/sft.py"), *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and not any("loss" in r for r in read_metrics(out)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-3000:]
    (checkpoint,) = [p for p in out.iterdir() if p.name.startswith("checkpoint-")]
    assert not (out / "model.safetensors").exists()

    typo = run_script("finetune/sft.py", *args, "--dataset_name", "edugpt/assets/finetune/sft_smok.jsonl", timeout=120)
    assert typo.returncode == 2 and "sft_smok.jsonl" in typo.stderr and "does not exist" in typo.stderr
    assert (checkpoint / MARKER).is_file()  # a failed re-run deleted nothing

    again = run_script("finetune/sft.py", *args, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resuming from {checkpoint}" in again.stderr
    losses = {r["step"]: r["loss"] for r in read_metrics(out) if "loss" in r}
    assert sorted(losses) == list(range(1, 11))  # the steps after the checkpoint were logged once
    reference = {r["step"]: r["loss"] for r in read_metrics(sft_run[1]) if "loss" in r}
    assert losses == pytest.approx(reference, abs=1e-5)  # the same as an uninterrupted run
    assert (out / MARKER).is_file() and (out / "README.md").is_file()


# --- bad input: one clear error, exit status 2, nothing written -------------------------------------------------------


def assert_clean_failure(proc, out: Path, *phrases: str):
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1, proc.stderr[-3000:]
    for phrase in phrases:
        assert phrase in error_lines[0], error_lines[0]
    assert not out.exists()


@pytest.mark.slow
def test_sft_missing_model_path(tmp_path):
    out = tmp_path / "sft"
    proc = run_script(
        "finetune/sft.py", "--config", "configs/sft_smoke.yaml", "--model_name_or_path", tmp_path / "no-such-model",
        "--output_dir", out, timeout=120,
    )
    assert_clean_failure(proc, out, "no-such-model", "does not exist", "train_hf.py's output_dir")


@pytest.mark.slow
def test_sft_dataset_without_messages(tiny_model_dir, tmp_path):
    data = write_jsonl(tmp_path / "text.jsonl", [{"text": "plain pretraining text"}])
    out = tmp_path / "sft"
    proc = run_script(
        "finetune/sft.py", "--config", "configs/sft_smoke.yaml", "--model_name_or_path", tiny_model_dir,
        "--dataset_name", data, "--output_dir", out, timeout=120,
    )
    assert_clean_failure(proc, out, "lacks the column(s) messages", "accepted formats")


@pytest.mark.slow
def test_dpo_on_a_pretrained_model_says_run_sft_first(tiny_model_dir, tmp_path):
    out = tmp_path / "dpo"
    proc = run_script(
        "finetune/dpo.py", "--config", "configs/dpo_smoke.yaml", "--model_name_or_path", tiny_model_dir,
        "--output_dir", out, timeout=120,
    )
    assert_clean_failure(proc, out, "no chat template", "pretrain -> finetune/sft.py -> finetune/dpo.py")


@pytest.mark.slow
@pytest.mark.parametrize("script", ["sft", "dpo"])
def test_push_to_hub_offline_fails_before_any_work(script, tiny_model_dir, tmp_path):
    """--push_to_hub checks the Hub first: offline, one clear error in about the time it takes to import TRL."""
    out = tmp_path / script
    proc = run_script(
        f"finetune/{script}.py", "--config", f"configs/{script}_smoke.yaml", "--model_name_or_path", tiny_model_dir,
        "--output_dir", out, "--push_to_hub", "--hub_model_id", "someone/edugpt-chat",
        env={"HF_TOKEN": FAKE_TOKEN}, timeout=120,
    )
    assert_clean_failure(proc, out, "Hub is unreachable", "someone/edugpt-chat", "publish.py")
    assert FAKE_TOKEN not in proc.stdout + proc.stderr




@pytest.mark.slow
@pytest.mark.parametrize("fail", [False, True], ids=["pushed", "push-failed"])
def test_push_at_the_end_uploads_the_run_with_our_card(fail, tiny_model_dir, tmp_path, monkeypatch):
    """Trainer's push uploads the finished folder with edugpt's card in the same commit; when the Hub fails, the
    finished model is complete in output_dir and the error says how to publish it."""
    import importlib.util

    hub = FakeHub(fail)
    monkeypatch.setattr("transformers.trainer.hf_api", hub)
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    spec = importlib.util.spec_from_file_location("sft", ROOT / "finetune" / "sft.py")
    sft = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sft)
    out = tmp_path / "sft"
    argv = ["--config", "configs/sft_smoke.yaml", "--model_name_or_path", str(tiny_model_dir), "--output_dir", str(out),
            "--max_steps", "1", "--push_to_hub", "true", "--hub_model_id", "someone/edugpt-chat"]
    if fail:
        with pytest.raises(EduGPTError, match=r"saved in .*sft, but pushing it to someone/edugpt-chat failed "
                                              r"\(ConnectionError.*python publish.py .*sft --hub_model_id someone/"):
            sft.main(argv)
    else:
        sft.main(argv)
    for name in ("config.json", "model.safetensors", "run_config.json", "metrics.jsonl", "README.md", MARKER):
        assert (out / name).is_file(), name
    local_card = (out / "README.md").read_text()
    assert 'from_pretrained("someone/edugpt-chat")' in local_card  # the card describes the pushed repo
    assert "generated_from_trainer" not in local_card and "Built with edugpt" in local_card
    if fail:
        assert hub.uploads == []
        return
    (final_push,) = hub.uploads
    assert final_push["repo_id"] == "someone/edugpt-chat" and final_push["message"] == "End of training"
    assert {"model.safetensors", "metrics.jsonl", "run_config.json", "README.md"} <= set(final_push["files"])
    assert final_push["card"] == local_card  # ours went up with the model, in one commit


# --- rows longer than max_length: counted, and an error when nothing is left to learn ----------------------------------


def length_args(stage: str, **overrides):
    from types import SimpleNamespace

    args = {"max_length": 64, "assistant_only_loss": stage == "sft", "packing": True, "dataset_num_proc": None}
    return SimpleNamespace(**{**args, **overrides})


@pytest.fixture()
def chat_tokenizer(gpt2_tokenizer):
    import copy

    return add_chat_template(copy.deepcopy(gpt2_tokenizer))


def test_sft_counts_conversations_cut_by_max_length(chat_tokenizer, caplog):
    from datasets import Dataset

    from edugpt.train.chat_data import check_lengths

    long_question = "Tell me about " + "tokens " * 80  # ~85 tokens: the reply starts after the 64-token window
    rows = [[user("Hi"), assistant("Hello!")],  # fits
            [user(long_question), assistant("They are pieces of text.")],  # cut, no reply token left
            [user("Count."), assistant("one " * 80)]]  # cut, reply partly kept
    with caplog.at_level(logging.WARNING, logger="edugpt.train.chat_data"):
        check_lengths("sft", Dataset.from_dict({"messages": rows}), chat_tokenizer, length_args("sft"))
    assert ("SFT train data: 2 of 3 conversations are longer than max_length 64 tokens and are cut to it; 1 of them "
            "keep no trained token and train on nothing") in caplog.text
    with caplog.at_level(logging.WARNING, logger="edugpt.train.chat_data"):
        check_lengths("sft", Dataset.from_dict({"messages": rows}), chat_tokenizer, length_args("sft", packing=False))
    assert "1 of them keep no trained token and are dropped by TRL" in caplog.text
    with pytest.raises(EduGPTError, match=r"every one of the 1 conversations in the train data keeps no assistant "
                                          r"token in its first max_length 64 tokens.*raise max_length"):
        check_lengths("sft", Dataset.from_dict({"messages": rows[1:2]}), chat_tokenizer, length_args("sft"))


def test_dpo_pairs_whose_prompt_fills_max_length_are_counted_and_all_of_them_is_an_error(chat_tokenizer, caplog):
    from datasets import Dataset

    from edugpt.train.chat_data import check_lengths

    long_prompt = [user("Explain " + "this " * 80)]
    pairs = {"prompt": [[user("2+2?")], long_prompt], "chosen": [[assistant("4")], [assistant("Yes.")]],
             "rejected": [[assistant("5")], [assistant("No.")]]}
    with caplog.at_level(logging.WARNING, logger="edugpt.train.chat_data"):
        check_lengths("dpo", Dataset.from_dict(pairs), chat_tokenizer, length_args("dpo"))
    assert "DPO train data: 1 of 2 pairs are longer than max_length 64 tokens and are cut to it; 1 of them keep no " \
           "trained token and are dropped by TRL" in caplog.text
    only_long = Dataset.from_dict({key: value[1:] for key, value in pairs.items()})
    with pytest.raises(EduGPTError, match="every one of the 1 pairs in the eval data has a prompt of at least max_length"):
        check_lengths("dpo", only_long, chat_tokenizer, length_args("dpo"), split="eval")


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_data_longer_than_max_length_everywhere_fails_before_the_run_dir_is_written(stage, tiny_model_dir, tmp_path):
    """Today's trap: SFT on conversations that all exceed max_length trained on nothing and exited 0; DPO dropped every
    pair. Now one error and no output_dir at all (the check runs before the lifecycle writes anything). In-process:
    the entry points turn the error into one line and exit 2 (tests above)."""
    import importlib.util
    import shutil

    from transformers import AutoTokenizer

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    add_chat_template(AutoTokenizer.from_pretrained(model)).save_pretrained(model)  # DPO needs a chat model
    question = "Please explain " + "this " * 150  # > 128 tokens: the prompt alone fills max_length
    rows = ([{"messages": [user(question), assistant("Sure.")]}] * 3 if stage == "sft"
            else [{"prompt": [user(question)], "chosen": [assistant("Yes.")], "rejected": [assistant("No.")]}] * 3)
    spec = importlib.util.spec_from_file_location(f"_{stage}_script", ROOT / "finetune" / f"{stage}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / stage
    with pytest.raises(EduGPTError, match=r"every one of the 3 .* max_length 128 tokens.*raise max_length"):
        script.main(["--config", f"configs/{stage}_smoke.yaml", "--model_name_or_path", str(model),
                     "--dataset_name", str(write_jsonl(tmp_path / "long.jsonl", rows)), "--output_dir", str(out)])
    assert not out.exists()

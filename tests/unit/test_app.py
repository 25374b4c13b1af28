"""edugpt.app.page (the web page for run directories) and edugpt.app.space (the same page as a Hub Space).

Fast tests check the data the page shows (curves, samples, status, the card's numbers), the chat's formatting and
sampling settings on a real tiny model, the refusals, and the Space's upload against the fake Hub. One slow test
starts the page on a free port and drives it in headless Debian chromium through selenium (`make test` installs
both; without them it is skipped and says why)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import sys
from pathlib import Path

import pytest
from factories import FINAL_TRAIN_LOSS, FINAL_VAL_LOSS, ROOT
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.app import models as app_models
from edugpt.app import page as app
from edugpt.app import runs as app_runs
from edugpt.errors import EduGPTError
from edugpt.run import rundir


# --- what the Run tab shows -------------------------------------------------------------------------------------------
def test_curves_hold_every_logged_loss_and_hellaswag_score_by_step_and_tokens(run_dir):
    records = rundir.read_metrics(run_dir)
    losses = app_runs.loss_curves(records)
    train = [(r["step"], r["tokens"], r["loss"]) for r in losses if r["split"] == "train"]
    val = [(r["step"], r["loss"]) for r in losses if r["split"] == "validation"]
    assert [step for step, _, _ in train] == [1, 2, 3, 4] and train[-1] == (4, 8192, FINAL_TRAIN_LOSS)
    assert val == [(2, 8.5), (4, FINAL_VAL_LOSS)]
    hellaswag = app_runs.hellaswag_curves(records)
    assert {(r["step"], r["metric"]) for r in hellaswag} == {(2, "acc"), (2, "acc_norm"), (4, "acc"), (4, "acc_norm")}
    assert app_runs.samples_by_step(records) == [[0, "Once upon a time", "Once upon a time zebra"]]
    status = app_runs.run_status(records)
    assert "step 4" in status and f"train loss {FINAL_TRAIN_LOSS:.4f}" in status and "8.19k tokens" in status


def test_a_run_still_writing_its_metrics_shows_every_whole_record_and_grows(run_dir):
    """A torn last line (a record half written) is left out, not an error; once whole, the next read has it."""
    metrics = run_dir / "metrics.jsonl"
    before = app_runs.metrics_signature(run_dir)
    line = json.dumps({"step": 5, "tokens": 10240, "loss": 6.5})
    with open(metrics, "a") as f:
        f.write(line[:12])
    assert max(r["step"] for r in app_runs.loss_curves(rundir.read_metrics(run_dir))) == 4
    with open(metrics, "a") as f:
        f.write(line[12:] + "\n")
    assert app_runs.loss_curves(rundir.read_metrics(run_dir))[-1] == {"step": 5, "tokens": 10240, "loss": 6.5,
                                                                 "split": "train"}
    assert app_runs.metrics_signature(run_dir) != before  # what the page's timer compares to redraw


def test_the_card_numbers_are_the_model_cards_and_wait_for_the_final_model(run_dir, tmp_path):
    rows = dict((label, value) for label, value in app_runs.card_numbers(run_dir))
    assert rows["Final train loss (step 4)"] == f"{FINAL_TRAIN_LOSS:.4f}"
    training = tmp_path / "training"
    shutil.copytree(run_dir, training)
    (training / "config.json").unlink()  # still training: no final model yet
    assert app_runs.card_numbers(training) == []


def test_while_training_the_model_is_the_newest_whole_checkpoint(run_dir):
    assert app_runs.model_dir(run_dir) == run_dir
    (run_dir / "config.json").unlink()
    assert app_runs.model_dir(run_dir) == run_dir / "checkpoint-4"
    weights = run_dir / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a save cut short
    assert app_runs.model_dir(run_dir) == run_dir / "checkpoint-2"


# --- chat formatting and sampling -------------------------------------------------------------------------------------
def test_sampling_settings_become_generate_arguments_and_bad_ones_are_one_sentence():
    assert app_models.Sampling(0, 50, 0.9, 16).generate_kwargs() == {
        "max_new_tokens": 16, "do_sample": False, "temperature": None, "top_k": None, "top_p": None}
    assert app_models.Sampling(0.7, 0, 1.0, 32).generate_kwargs(8) == {
        "max_new_tokens": 8, "do_sample": True, "temperature": 0.7, "top_k": 0, "top_p": 1.0}
    for bad, phrase in (({"temperature": -1}, "temperature"), ({"top_k": 2.5}, "top-k"), ({"top_p": 0}, "top-p"),
                        ({"max_new_tokens": 0}, "max new tokens")):
        with pytest.raises(EduGPTError, match=phrase):
            app_models.Sampling(**bad)


@pytest.fixture(scope="module")
def chat_model(tiny_model_dir, tmp_path_factory):
    """The tiny model saved with edugpt's chat template, as SFT saves it: (folder, model, tokenizer)."""
    from edugpt.model.chat import add_chat_template
    from edugpt.model.chat import load_model_tokenizer as load

    folder = tmp_path_factory.mktemp("chat-model")
    for path in tiny_model_dir.iterdir():
        shutil.copy(path, folder / path.name)
    tokenizer = add_chat_template(load(str(folder)))
    tokenizer.save_pretrained(folder)
    model, tokenizer, had_template = app_models.load_model(folder)
    assert had_template
    return folder, model, tokenizer


def test_the_conversation_goes_through_the_chat_template_with_the_system_prompt(chat_model):
    _, model, tokenizer = chat_model
    history = [{"role": "user", "content": [{"type": "text", "text": "Hi"}], "metadata": None},  # gradio's shape
               {"role": "assistant", "content": "Hello."}]
    messages = app_models.chat_messages(history, "And you?", "Be brief.")
    assert messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "And you?"}]
    ids, max_new, dropped = app_models.chat_input_ids(tokenizer, messages, 128, 32)
    assert tokenizer.decode(ids[0]) == ("System: Be brief.\n\nUser: Hi\n\nAssistant: Hello.<|endoftext|>"
                                        "User: And you?\n\nAssistant:")
    assert (max_new, dropped) == (32, 0)
    assert app_models.chat_messages([], "Hi", "  ") == [{"role": "user", "content": "Hi"}]


def test_a_conversation_longer_than_the_context_drops_its_oldest_turns_and_keeps_the_system_prompt(chat_model):
    _, _, tokenizer = chat_model
    long_turns = []
    for i in range(6):
        long_turns += [{"role": "user", "content": f"question {i} " * 5}, {"role": "assistant", "content": "answer " * 5}]
    messages = [{"role": "system", "content": "Be brief."}, *long_turns, {"role": "user", "content": "Last?"}]
    ids, max_new, dropped = app_models.chat_input_ids(tokenizer, messages, 64, 32)
    text = tokenizer.decode(ids[0])
    assert dropped > 0 and text.startswith("System: Be brief.") and text.endswith("User: Last?\n\nAssistant:")
    assert ids.shape[1] + max_new <= 64 and max_new >= app_models.MIN_REPLY_TOKENS
    with pytest.raises(EduGPTError, match="send a shorter message"):
        app_models.chat_input_ids(tokenizer, [{"role": "user", "content": "word " * 80}], 64, 32)


def test_streaming_grows_token_by_token_to_the_greedy_continuation(chat_model):
    import torch

    _, model, tokenizer = chat_model
    pieces = list(app_models.stream_continuation(model, tokenizer, "Once upon a time", app_models.Sampling(0, 0, 1, 8)))
    assert len(pieces) > 1 and all(b.startswith(a) for a, b in zip(pieces, pieces[1:]))
    ids = tokenizer("Once upon a time", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        greedy = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)
    assert pieces[-1] == "Once upon a time" + tokenizer.decode(greedy[0, ids.shape[1]:], skip_special_tokens=True)


def test_a_reply_stops_at_the_end_of_turn_token(chat_model):
    """A model whose every next token is <|endoftext|> (the template's end of turn) answers with one forward pass
    and an empty reply: generation stops there instead of running to max_new_tokens."""
    import copy

    import torch

    _, model, tokenizer = chat_model
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.copy_(torch.linspace(-1, 1, model.config.n_embd))
        model.lm_head.weight[tokenizer.eos_token_id] = 50 * model.transformer.ln_f.bias  # tied with wte
    calls = []
    model.register_forward_hook(lambda *args: calls.append(1))
    greedy = app_models.Sampling(0, 0, 1, 40)
    replies = list(app_models.stream_reply(model, tokenizer, [{"role": "user", "content": "Hi"}], greedy))
    assert set(replies) <= {""} and len(calls) == 1


def test_models_load_from_safetensors_and_never_unpickle_anything(chat_model, tmp_path):
    """training_args.bin, optimizer.pt and a pytorch_model.bin beside the safetensors are pickles that would leave a
    file behind if anything unpickled them; loading the model and reading the run must not."""
    folder, _, _ = chat_model
    run = tmp_path / "run"
    shutil.copytree(folder, run)
    opened = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (Path.touch, (opened,))

    for name in ("training_args.bin", "optimizer.pt", "pytorch_model.bin", "rng_state.pth"):
        (run / name).write_bytes(pickle.dumps(Trap()))
    (run / "run_config.json").write_text(json.dumps({"edugpt": {"kind": "sft", "version": 1}, "script": "sft",
                                                     "training": {}}))
    app_models.load_model(run)
    app_runs.open_run(run)
    app_runs.card_numbers(run)
    assert not opened.exists()
    (run / "model.safetensors").unlink()
    with pytest.raises(EduGPTError, match="safetensors"):
        app_models.load_model(run)
    assert not opened.exists()


# --- the Space ----------------------------------------------------------------------------------------------------
def space_listing() -> set[str]:
    from edugpt.app import space

    modules = {f"edugpt/{p.relative_to(space.PACKAGE).as_posix()}" for p in space.package_modules()}
    return {"app.py", "requirements.txt", "README.md", *modules, *(f"edugpt/{rel}" for rel in space.SPACE_DATA)}


def test_the_space_upload_is_exactly_the_listed_files_in_one_commit_and_holds_no_token(monkeypatch, tmp_path):
    from importlib.metadata import version

    from edugpt.app import space

    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    url = space.publish_space("you/edugpt-chat", "you/edugpt-demo")
    assert url == "https://huggingface.co/spaces/you/edugpt-chat"
    assert [u["repo_id"] for u in hub.uploads] == ["you/edugpt-chat"]
    assert set(hub.uploads[0]["files"]) == space_listing()
    assert not any(FAKE_TOKEN.encode() in data for _, _, data in hub.blobs())
    files = hub.branches["main"]
    card = files["README.md"].decode()
    assert "sdk: gradio" in card and f"sdk_version: {version('gradio')}" in card and "app_file: app.py" in card
    assert "- you/edugpt-demo" in card
    assert f"transformers=={version('transformers')}" in files["requirements.txt"].decode()
    assert '"--hub_model_id", "you/edugpt-demo"' in files["app.py"].decode()


def test_a_token_in_a_space_file_stops_the_upload_before_anything_goes_up(monkeypatch, tmp_path):
    from edugpt.app import space

    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    monkeypatch.setattr(space, "app_source", lambda model_id: f"TOKEN = {FAKE_TOKEN!r}\n")
    with pytest.raises(EduGPTError, match="contains a Hugging Face access token"):
        space.publish_space("you/edugpt-chat", "you/edugpt-demo")
    assert hub.uploads == []
    dry = tmp_path / "dry"
    with pytest.raises(EduGPTError, match="access token"):
        space.publish_space("you/edugpt-chat", "you/edugpt-demo", dry_run=dry)
    assert not dry.exists() and list(tmp_path.iterdir()) == []


def test_the_space_page_reads_what_publish_puts_on_the_model_repo(run_dir, tmp_path, monkeypatch):
    """hub_page over a model repo whose branches are publish.py's dry run of the run: the run's record from main,
    and main, step-2 and step-4 as models (each downloaded only when asked, safetensors only)."""
    from huggingface_hub.utils import filter_repo_objects

    from edugpt.hub.publish import publish_run

    repo = Path(publish_run(run_dir, "you/edugpt-demo", branches=True, dry_run=tmp_path / "repo"))
    downloads = []

    def snapshot_download(repo_id, *, revision, allow_patterns, local_dir):
        downloads.append(revision)
        local = {p.relative_to(repo / revision).as_posix() for p in (repo / revision).rglob("*") if p.is_file()}
        for rel in filter_repo_objects(local, allow_patterns=allow_patterns):
            Path(local_dir, rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(repo / revision / rel, Path(local_dir, rel))
        return str(local_dir)

    class Refs:
        branches = [type("Ref", (), {"name": name}) for name in ("step-4", "main", "step-2")]

    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    monkeypatch.setattr("huggingface_hub.HfApi", lambda: type("Api", (), {"list_repo_refs": lambda self, r: Refs})())
    assert app.hub_branches("you/edugpt-demo") == ["main", "step-2", "step-4"]
    built = {}
    monkeypatch.setattr(app, "build_page", lambda runs, models, **kwargs: built.update(runs=runs, models=models))
    app.hub_page("you/edugpt-demo", tmp_path / "cache")
    (run,) = built["runs"]
    assert run.kind == "pretrain" and max(r["step"] for r in rundir.read_metrics(run.path)) == 4
    assert built["models"].labels == ["main", "step-2", "step-4"] and downloads == ["main"]
    model, tokenizer, _, folder = built["models"].get("step-2")
    assert downloads == ["main", "step-2"] and model.config.n_layer == 2
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.pt"))


def test_publish_space_flag_writes_the_spaces_dry_run_beside_the_models(run_dir, tmp_path, monkeypatch, capsys):
    spec = importlib.util.spec_from_file_location("publish_script", ROOT / "publish.py")
    publish = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(publish)
    dry = tmp_path / "dry"
    monkeypatch.setattr(sys, "argv", ["publish.py", str(run_dir), "--hub_model_id", "you/edugpt-demo",
                                      "--space", "you/edugpt-chat", "--dry_run", str(dry)])
    publish.main()
    assert (dry / "main" / "model.safetensors").is_file()
    assert {p.relative_to(dry / "space").as_posix() for p in (dry / "space").rglob("*") if p.is_file()} \
        == space_listing()
    assert "space" in capsys.readouterr().out


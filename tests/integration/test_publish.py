"""publish.py / edugpt.hub.publish: the dry-run folder is exactly a loadable model with a valid card, no resume state, no
token
and nothing from outside the run directory; checkpoints become step-N branches holding exactly their files; a push
in the background is retried and outlives its checkpoint; with no network or no login a real push fails cleanly."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from factories import FINAL_TRAIN_LOSS, RESUME_STATE, run_script
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.errors import EduGPTError
from edugpt.hub.plan import plan_branch, plan_publish
from edugpt.hub.publish import publish_run, require_push_ready
from edugpt.hub.pusher import HubPusher
from edugpt.hub.secrets import scan_file
from edugpt.run import record

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for the Hub"
LOADABLE = {".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json"}


def _snapshot(folder: Path) -> dict:
    """Every path under `folder` with its content hash, size and mtime: equal snapshots mean an untouched folder (the
    run's record by content: a push enters its staging folder there while it stages, and removes it after)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_file():
            stat = path.stat()
            mtime = None if key == record.RECORD else stat.st_mtime_ns
            out[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, mtime)
        else:
            out[key] = "dir"
    return out


def _files_under(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_dry_run_folder_loads_and_holds_no_secrets(run_dir, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForCausalLM, AutoTokenizer

    before = _snapshot(run_dir)
    out = tmp_path / "plan"
    proc = run_script("publish.py", run_dir, "--hub_model_id", "someone/edugpt-tiny", "--branches", "--dry_run", out,
                      env={"HF_TOKEN": FAKE_TOKEN}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert _snapshot(run_dir) == before

    plan = json.loads((out / "plan.json").read_text())
    assert plan["repo_id"] == "someone/edugpt-tiny"
    assert [b["branch"] for b in plan["branches"]] == ["main", "step-2", "step-4"]
    assert sorted(p.name for p in out.iterdir()) == ["main", "plan.json", "step-2", "step-4"]
    left_out = {e["path"] for b in plan["branches"] for e in b["excluded"]}
    assert {f"checkpoint-2/{name}" for name in RESUME_STATE} <= left_out

    for branch in ("main", "step-2", "step-4"):
        folder = out / branch
        files = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}
        assert files == set(next(b for b in plan["branches"] if b["branch"] == branch)["files"])
        assert not files & set(RESUME_STATE)
        for path in folder.rglob("*"):
            if path.is_file():
                assert FAKE_TOKEN.encode() not in path.read_bytes(), path
        card = ModelCard.load(folder / "README.md")
        assert (card.data.library_name, card.data.pipeline_tag) == ("transformers", "text-generation")
    assert {"metrics.jsonl", "images/train-loss.png", "run_config.json"} <= set(plan["branches"][0]["files"])

    model = AutoModelForCausalLM.from_pretrained(out / "main")
    tokenizer = AutoTokenizer.from_pretrained(out / "main")
    assert model.config.n_layer == 2 and tokenizer.encode("Once upon a time") == [7454, 2402, 257, 640]
    # A branch holds that checkpoint's own weights, and its card loads that revision.
    step2 = out / "step-2"
    assert (step2 / "model.safetensors").read_bytes() == (run_dir / "checkpoint-2" / "model.safetensors").read_bytes()
    AutoModelForCausalLM.from_pretrained(step2)
    assert 'revision="step-2"' in (step2 / "README.md").read_text()
    # A dry run is a copy: editing it in place cannot change the run.
    assert os.stat(out / "main" / "model.safetensors").st_ino != os.stat(run_dir / "model.safetensors").st_ino


def test_include_optimizer_and_incomplete_checkpoint(run_dir):
    (run_dir / "checkpoint-6").mkdir()
    (run_dir / "checkpoint-6" / "trainer_state.json").write_text("{}")  # killed before the weights were written
    truncated = run_dir / "checkpoint-4" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:1000])  # its completion marker no longer matches
    plan = plan_publish(run_dir, "someone/x", branches=True, include_optimizer=True)
    assert [u.branch for u in plan.uploads] == ["main", "step-2"]
    assert [s["path"] for s in plan.skipped] == ["checkpoint-4", "checkpoint-6"]
    assert "model.safetensors has 1000 bytes" in plan.skipped[0]["reason"]
    assert set(RESUME_STATE) <= set(plan.uploads[1].files)
    assert [u.branch for u in plan_publish(run_dir, "someone/x").uploads] == ["main"]


def test_symlinks_are_never_followed_and_what_is_left_out_is_said(run_dir, tmp_path, monkeypatch, capsys):
    """issue 11: a symlinked images/ or checkpoint-N, a symlinked file, a link through `..`: nothing outside the run
    directory reaches a dry run or the Hub, and the plan says what was left out and why."""
    outside = tmp_path / "home" / ".ssh"
    outside.mkdir(parents=True)
    (outside / "id_ed25519").write_bytes(SECRET)
    shutil.copy(run_dir / "images" / "train-loss.png", outside / "train-loss.png")
    shutil.rmtree(run_dir / "images")
    (run_dir / "images").symlink_to(outside)  # a symlinked folder
    (run_dir / "samples.md").unlink()
    (run_dir / "samples.md").symlink_to(outside / "id_ed25519")  # a symlinked file with an uploaded name
    # out through `..`, with the name of a tokenizer file
    (run_dir / "checkpoint-2" / "special_tokens_map.json").symlink_to("../../home/.ssh/id_ed25519")
    elsewhere = tmp_path / "scratch" / "checkpoint-4"
    shutil.move(run_dir / "checkpoint-4", elsewhere)
    shutil.copy(outside / "id_ed25519", elsewhere / "id_ed25519")
    (run_dir / "checkpoint-4").symlink_to(elsewhere)  # a symlinked checkpoint
    (run_dir / "runs" / "host").mkdir(parents=True)
    (run_dir / "runs" / "host" / "events.out.tfevents.1").write_bytes(b"tensorboard events")
    record.note_written(run_dir / "runs" / "host" / "events.out.tfevents.1", appends=True)  # as a run records them
    (run_dir / "runs" / "host" / "leak").symlink_to(outside, target_is_directory=True)
    (run_dir / ".edugpt.lock").write_text('{"host": "node1", "command": "train_hf.py ..."}')
    shutil.copytree(run_dir / "checkpoint-2", run_dir / "corrupt-checkpoint-6", symlinks=True)
    record.note_tree(run_dir / "corrupt-checkpoint-6", "checkpoint", run_dir)  # as set_aside leaves it

    out = tmp_path / "plan"
    publish_run(run_dir, "someone/x", branches=True, dry_run=out)
    printed = capsys.readouterr().out
    for folder in out.iterdir():
        if folder.is_dir():
            for name, data in _files_under(folder).items():
                assert SECRET not in data, f"{folder.name}/{name}"
    plan = json.loads((out / "plan.json").read_text())
    main, step2 = plan["branches"]
    reasons = {e["path"]: e["reason"] for e in main["excluded"] + step2["excluded"]}
    for path in ("images", "samples.md", "checkpoint-2/special_tokens_map.json", "runs/host/leak"):
        assert "outside the run directory: links are never followed" in reasons[path], path
        assert f"left out {path}: a symlink to " in printed
    assert "never uploaded" in reasons[".edugpt.lock"] and "corrupt" in reasons["corrupt-checkpoint-6/"]
    assert [b["branch"] for b in plan["branches"]] == ["main", "step-2"]
    assert "symlink" in plan["skipped_checkpoints"][0]["reason"]
    assert "runs/host/events.out.tfevents.1" in main["files"]  # TensorBoard logs go up with main
    assert not {f for f in main["files"] if f.startswith(("images/", ".", "corrupt")) or f == "samples.md"}
    card = (out / "main" / "README.md").read_text()
    assert "images/" not in card  # the card links no image that does not go up
    assert "special_tokens_map.json" not in step2["files"]

    hub = FakeHub()  # the same for a real push
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    publish_run(run_dir, "someone/x", branches=True)
    assert hub.uploads and not [(b, p) for b, p, data in hub.blobs() if SECRET in data]
    assert not (run_dir / ".edugpt-upload").exists()


def test_token_inside_an_uploaded_file_stops_the_dry_run(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (run_dir / "notes.txt").write_text(f"export HF_TOKEN={FAKE_TOKEN}\n")  # not a run file: left out, not read
    publish_run(run_dir, "someone/x", dry_run=tmp_path / "ok")
    assert "left out notes.txt: not written by this run" in capsys.readouterr().out
    with (run_dir / "samples.md").open("a") as f:
        f.write(f"| 8 | my token is {FAKE_TOKEN} |\n")
    record.note_written(run_dir / "samples.md")  # as if the run had written it (a sample that quotes a token)
    with pytest.raises(EduGPTError, match="samples.md contains a Hugging Face access token") as err:
        publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")
    assert FAKE_TOKEN not in str(err.value) + capsys.readouterr().out
    assert not (tmp_path / "plan").exists() and not list(tmp_path.glob(".plan*"))


def test_token_shaped_text_is_caught_without_a_login(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("edugpt.hub.secrets.known_tokens", lambda: [])
    (run_dir / "run_config.json").write_text(json.dumps({"training": {"hub_token": FAKE_TOKEN}}))
    record.note_written(run_dir / "run_config.json")
    with pytest.raises(EduGPTError, match="run_config.json contains a Hugging Face access token"):
        publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")


def test_token_inside_a_binary_file_is_caught(run_dir, tmp_path, monkeypatch):
    """issue 11: training_args.bin as Trainer pickles it with --hub_token, uploaded with --include_optimizer, is
    scanned byte by byte (with no login to compare against, by the token's shape; across chunk borders too)."""
    import torch
    from transformers import TrainingArguments

    from edugpt.run.checkpoints import write_marker

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("edugpt.hub.secrets.known_tokens", lambda: [])
    pickled = run_dir / "checkpoint-2" / "training_args.bin"
    torch.save(TrainingArguments(output_dir=str(tmp_path / "x"), hub_token=FAKE_TOKEN, report_to="none"), pickled)
    write_marker(run_dir / "checkpoint-2")  # as Trainer._save once left it
    record.note_tree(run_dir / "checkpoint-2", "checkpoint", run_dir)
    assert FAKE_TOKEN.encode() in pickled.read_bytes()
    publish_run(run_dir, "someone/x", branches=True, dry_run=tmp_path / "without")  # left out: nothing to see
    with pytest.raises(EduGPTError, match=r"checkpoint-2/training_args.bin contains a Hugging Face access token"):
        publish_run(run_dir, "someone/x", branches=True, include_optimizer=True, dry_run=tmp_path / "with")
    assert not (tmp_path / "with").exists()
    monkeypatch.setattr("edugpt.hub.secrets.SCAN_CHUNK_BYTES", 16)  # every token straddles a chunk border: still found
    with pytest.raises(EduGPTError, match="contains a Hugging Face access token"):
        scan_file(pickled, "training_args.bin")


def test_user_errors(run_dir, tmp_path):
    with pytest.raises(EduGPTError, match="no final model"):
        plan_publish(tmp_path, "someone/x")
    with pytest.raises(EduGPTError, match="not a valid Hub repo id"):
        plan_publish(run_dir, "bad id with spaces")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(EduGPTError, match="not empty"):
        publish_run(run_dir, "someone/x", dry_run=busy)
    assert (busy / "keep.txt").read_text() == "x"


@pytest.mark.slow
def test_a_dry_run_folder_under_a_file_is_one_error_line(run_dir, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    before = _snapshot(tmp_path)
    for dest, message in ((tmp_path / "notes.txt" / "plan", "lies under '[^']*notes.txt', which is a file"),
                          (tmp_path / "notes.txt", "exists and is not a folder")):
        proc = run_script("publish.py", run_dir, "--hub_model_id", "someone/x", "--dry_run", dest, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert re.fullmatch(rf"error: --dry_run '{re.escape(str(dest))}' {message}[^;\n]*; pass [^\n]*\n", proc.stderr)
    assert _snapshot(tmp_path) == before


def test_publishing_a_run_whose_metrics_hold_a_non_utf8_line(run_dir, tmp_path):
    with (run_dir / "metrics.jsonl").open("ab") as f:
        f.write(b'{"step": 5, "loss": 1.0, "note": "\xff\xfe"}\n')
    out = Path(publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan"))
    card = (out / "main" / "README.md").read_text(encoding="utf-8")
    assert f"{FINAL_TRAIN_LOSS:.4f}" in card and "| 5 |" not in card  # the good lines' numbers; the bad one skipped


def test_a_broken_run_config_is_named_by_its_own_path_never_a_temporary_one(run_dir, tmp_path, capsys):
    (run_dir / "run_config.json").write_text("{broken")
    try:
        publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")
    except EduGPTError as err:  # refused: the message names the run's file
        assert str(run_dir / "run_config.json") in str(err) and "edugpt-card-" not in str(err)
    else:  # published without it: the plan says why it stayed out
        plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
        assert any(e["path"] == "run_config.json" for e in plan["branches"][0]["excluded"]), plan
    assert "edugpt-card-" not in capsys.readouterr().out


def test_require_push_ready_offline_with_token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)  # conftest sets HF_HUB_OFFLINE=1: the Hub counts as unreachable
    with pytest.raises(EduGPTError, match="Hub is unreachable") as err:
        require_push_ready("someone/x")
    assert FAKE_TOKEN not in str(err.value)


@pytest.mark.slow
def test_real_push_fails_cleanly_offline_or_without_login(run_dir, tmp_path):
    before = _snapshot(run_dir)
    offline = run_script("publish.py", run_dir, "--hub_model_id", "someone/x", "--branches",
                         env={"HF_TOKEN": FAKE_TOKEN}, timeout=120)
    no_login = run_script("publish.py", run_dir, "--hub_model_id", "someone/x",
                          env={"HF_TOKEN": "", "HF_HOME": str(tmp_path / "empty-hf-home")}, timeout=120)
    for proc, reason in ((offline, "Hub is unreachable"), (no_login, "no Hugging Face token found")):
        assert proc.returncode == 2
        assert proc.stderr.startswith("error: ") and reason in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1  # one sentence, no traceback
        assert FAKE_TOKEN not in proc.stdout + proc.stderr
    assert _snapshot(run_dir) == before


def test_push_commits_main_then_one_branch_per_checkpoint(run_dir, monkeypatch):
    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    hub.branches["main"]["model-00001-of-00002.safetensors"] = b"an older sharded upload"
    url = publish_run_offline(run_dir, monkeypatch)
    assert url == "https://huggingface.co/someone/x"
    assert [u["revision"] for u in hub.uploads] == ["main", "step-2", "step-4"]
    main = hub.branches["main"]
    assert {"README.md", "model.safetensors", "metrics.jsonl", "images/hellaswag.png"} <= set(main)
    assert "model-00001-of-00002.safetensors" not in main  # weights on main are exactly the uploaded ones
    for step in (2, 4):  # exactly the checkpoint's loadable files and its own weights
        files = hub.branches[f"step-{step}"]
        assert set(files) == LOADABLE
        assert files["model.safetensors"] == (run_dir / f"checkpoint-{step}" / "model.safetensors").read_bytes()
    assert not (set(main) | set(hub.branches["step-2"])) & set(RESUME_STATE)
    card = main["README.md"].decode()
    assert hub.uploads[0]["card"] == card and 'from_pretrained("someone/x")' in card
    assert not (run_dir / ".edugpt-upload").exists()  # staging is gone once the push is done


def test_successful_push_records_the_repo_that_a_finetune_card_names_as_base(run_dir, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    from edugpt.report.card import build_model_card

    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub())
    publish_run_offline(run_dir, monkeypatch)
    record = json.loads((run_dir / "published.json").read_text())
    assert (record["repo_id"], record["branches"]) == ("someone/x", ["main", "step-2", "step-4"])
    sft = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, sft)
    (sft / "run_config.json").write_text(json.dumps({"edugpt": {"kind": "sft", "version": "0.1.0"}, "script": "sft",
                                                     "model": {"model_name_or_path": str(run_dir)},
                                                     "training": {"assistant_only_loss": True}}))
    assert build_model_card(sft).data.base_model == "someone/x"


def test_branch_cards_link_only_files_their_branch_holds(run_dir):
    (run_dir / "images" / "lr.png").write_bytes((run_dir / "images" / "hellaswag.png").read_bytes())
    record.note_written(run_dir / "images" / "lr.png")  # a plot the run drew
    plan = plan_publish(run_dir, "someone/x", branches=True)
    for upload in plan.uploads:
        links = set(re.findall(r"\]\((?!https?://)([^)]+)\)", upload.card))  # relative Markdown links and images
        assert links <= set(upload.files), upload.branch
        loads = re.findall(r"from_pretrained\((.*)\)", upload.card)
        revision = "" if upload.branch == "main" else f', revision="{upload.branch}"'
        assert loads and all(args == f'"someone/x"{revision}' for args in loads), upload.branch
    assert {"images/train-loss.png", "images/lr.png"} <= set(re.findall(r"\]\((images/[^)]+)\)", plan.uploads[0].card))


def test_the_pushed_card_is_the_local_card(run_dir):
    from edugpt.report.card import build_model_card

    plan = plan_publish(run_dir, "someone/x")
    assert plan.uploads[0].card == str(build_model_card(run_dir, hub_model_id="someone/x"))


def test_failed_push_is_one_clear_error_without_the_token(run_dir, monkeypatch):
    before = _snapshot(run_dir)
    monkeypatch.setattr("huggingface_hub.HfApi", FakeHub(fail_on_branch="step-4"))
    with pytest.raises(EduGPTError, match="pushing to someone/x failed .*ConnectionError.*local run is unchanged") as err:
        publish_run_offline(run_dir, monkeypatch)
    assert FAKE_TOKEN not in str(err.value) and "***" in str(err.value)
    assert _snapshot(run_dir) == before


def test_background_push_is_retried_and_outlives_its_checkpoint(run_dir, monkeypatch):
    """issue 12: a step-N push staged at save time is uploaded on another thread; one that fails is tried again at the
    next submit, and stays staged (hardlinks) after save_total_limit deleted the checkpoint, until publish.py (or the
    end of training) pushes it."""
    hub = FakeHub(fail_on_branch="step-2")
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    weights = (run_dir / "checkpoint-2" / "model.safetensors").read_bytes()
    pusher = HubPusher(run_dir, "someone/x")
    pusher.submit(plan_branch(run_dir, run_dir / "checkpoint-2", "someone/x", step=2))
    shutil.rmtree(run_dir / "checkpoint-2")  # save_total_limit at the next save
    pusher.submit(plan_branch(run_dir, run_dir / "checkpoint-4", "someone/x", step=4))
    pusher.wait()
    assert hub.failed.count("step-2") == 2  # tried again at the second submit
    assert [(u["revision"], u["thread"]) for u in hub.uploads] == [("step-4", "edugpt-hub-push")]
    assert set(pusher.failures) == {"step-2"} and FAKE_TOKEN not in pusher.failures["step-2"]
    (staged,) = (run_dir / ".edugpt-upload").iterdir()
    assert staged.name.startswith("step-2.") and (staged / "model.safetensors").read_bytes() == weights

    hub.fail_on_branch = None
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    publish_run(run_dir, "someone/x", branches=True)
    assert [u["revision"] for u in hub.uploads[1:]] == ["main", "step-2", "step-4"]
    assert hub.branches["step-2"]["model.safetensors"] == weights and set(hub.branches["step-2"]) == LOADABLE
    assert not (run_dir / ".edugpt-upload").exists()


def publish_run_offline(run_dir, monkeypatch):
    """publish_run with the readiness check passed (the Hub is unreachable here) and the fake token set."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)
    return publish_run(run_dir, "someone/x", branches=True)

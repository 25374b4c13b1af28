"""Pushes while and after training (edugpt.hub.trainer_pushes): Trainer's own pushes, hub_strategy and the step-N
branch
of each save all go through the guarded path publish.py uses, and no file the project writes holds the token."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

import pytest
from factories import ROOT, load_train_main, tiny_args
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.errors import EduGPTError
from edugpt.run.rundir import MARKER

SECRET = b"-----BEGIN OPENSSH PRIVATE KEY----- not for the Hub"
LOADABLE = {".gitattributes", "README.md", "config.json", "generation_config.json", "model.safetensors",
            "tokenizer.json", "tokenizer_config.json"}


def _use_fake_hub(monkeypatch, hub: FakeHub) -> FakeHub:
    monkeypatch.setattr("transformers.trainer.hf_api", hub)  # Trainer's own calls (init_hf_repo)
    monkeypatch.setattr("huggingface_hub.HfApi", hub)  # edugpt.hub.pusher
    monkeypatch.setattr("edugpt.hub.publish.require_push_ready", lambda repo_id: repo_id)  # no token or network here
    # --hub_token moves the token into HF_TOKEN (lifecycle.TrainingRun._protect_token): restored after the test.
    monkeypatch.setenv("HF_TOKEN", "unused-before-the-run")
    return hub


def _run_as_command(monkeypatch, main, script: str, argv: list[str]) -> None:
    """main(argv) in this process with sys.argv as the command line would be (the lock file records it)."""
    monkeypatch.setattr(sys, "argv", [script, *map(str, argv)])
    main([str(a) for a in argv])


def _files_holding(folder: Path, needle: bytes) -> list[str]:
    """Every regular file under `folder` (links not followed) whose bytes contain `needle`."""
    found = []
    for root, _dirs, files in os.walk(folder):
        for name in files:
            path = Path(root, name)
            if not path.is_symlink() and needle in path.read_bytes():
                found.append(path.relative_to(folder).as_posix())
    return found


def test_trainer_pushes_upload_only_the_runs_own_files(baseline, data_dir, tmp_path, monkeypatch):
    """Trainer's hub_strategy push at a save and its push at the end used to upload all of output_dir: the lock
    file (host, pid, command line), corrupt-checkpoint-N, and whatever a symlink there points to. Now every push is
    planned, staged and scanned like publish.py's, with edugpt's card; TensorBoard logs go up with main; a step-N
    branch holds only its checkpoint; and --hub_token is in no file the run writes, nor on the Hub."""
    output_dir = tmp_path / "run"
    shutil.copytree(baseline[0], output_dir, symlinks=True)  # a finished 8-step run, trained on to step 10
    outside = tmp_path / "home"
    outside.mkdir()
    (outside / "id_ed25519").write_bytes(SECRET)
    (output_dir / "images" / "leak.png").symlink_to(outside / "id_ed25519")
    (output_dir / "notes").symlink_to(outside, target_is_directory=True)
    shutil.copytree(output_dir / "checkpoint-6", output_dir / "corrupt-checkpoint-6")  # set aside by a resume
    assert (output_dir / ".edugpt.lock").is_file()
    hub = _use_fake_hub(monkeypatch, FakeHub())
    args = ["--hub_token", FAKE_TOKEN,
            *tiny_args(data_dir, output_dir, "--max_steps", "10", "--resume_with_changes", "true", "--sample_steps", "0",
                       "--push_to_hub", "true", "--hub_model_id", "someone/edugpt-tiny", "--hub_strategy", "checkpoint",
                       "--hub_step_branches", "true", "--report_to", "tensorboard")]
    _run_as_command(monkeypatch, load_train_main(), "train_hf.py", args)

    main = hub.branches["main"]
    assert not [p for p in main if p.startswith((".edugpt", "corrupt-", "notes", "images/leak"))]
    assert [(u["revision"], u["message"]) for u in hub.uploads if u["revision"] == "main"] == [
        ("main", "Training in progress, step 10"), ("main", "End of training")]
    assert all(u["thread"] == "edugpt-hub-push" for u in hub.uploads if u["message"] != "End of training")
    assert {"model.safetensors", "metrics.jsonl", "run_config.json", "images/train-loss.png"} <= set(main)
    assert {"last-checkpoint/optimizer.pt", f"last-checkpoint/{MARKER}"} <= set(main)  # hub_strategy checkpoint
    assert any(p.startswith("runs/") and "tfevents" in p for p in main)  # TensorBoard logs, as Trainer's push
    card = main["README.md"].decode()  # edugpt's card, in the model's commit, linking only images that went up
    assert "Built with edugpt" in card and "images/train-loss.png" in card and "images/leak.png" not in card
    assert set(hub.branches["step-10"]) == LOADABLE
    assert hub.branches["step-10"]["model.safetensors"] == (output_dir / "checkpoint-10" / "model.safetensors").read_bytes()
    step_card = hub.branches["step-10"]["README.md"].decode()
    assert 'revision="step-10"' in step_card and "images/" not in step_card
    assert not [(b, p) for b, p, data in hub.blobs() if SECRET in data or FAKE_TOKEN.encode() in data]

    # No file the run wrote holds the token: training_args.bin (root, checkpoint-10), run_config.json, the lock file
    # (it names the program, never the command line), metrics.jsonl, TensorBoard's events.
    assert (output_dir / "training_args.bin").is_file() and (output_dir / "checkpoint-10" / "training_args.bin").is_file()
    assert "--hub_token" not in (output_dir / ".edugpt.lock").read_text()
    assert _files_holding(output_dir, FAKE_TOKEN.encode()) == []
    assert not (output_dir / ".edugpt-upload").exists()


def test_step_branches_survive_rotation_and_a_failing_hub(data_dir, tmp_path, monkeypatch):
    """--hub_step_branches: each save goes to its step-N branch in the background, so save_total_limit 1 still leaves
    every step on the Hub; a failing push is retried at the next save, training never fails for it, the end reports
    it, and the same command again pushes it from the staged copy (its checkpoint is long gone)."""
    hub = _use_fake_hub(monkeypatch, FakeHub(fail_on_branch="step-2"))
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, "--max_steps", "4", "--save_steps", "1", "--save_total_limit", "1",
                     "--sample_steps", "0", "--push_to_hub", "true", "--hub_model_id", "someone/edugpt-tiny",
                     "--hub_step_branches", "true", "--hub_strategy", "end")
    with pytest.raises(EduGPTError, match=r"saved in .*run and pushed to someone/edugpt-tiny, but 1 checkpoint "
                                          r"branch\(es\) could not be pushed \(step-2: ConnectionError.*"
                                          r"\.edugpt-upload: run the same command again") as err:
        load_train_main()(args)
    assert FAKE_TOKEN not in str(err.value)
    assert (output_dir / MARKER).is_file() and [p.name for p in output_dir.glob("checkpoint-*")] == ["checkpoint-4"]
    assert hub.failed.count("step-2") >= 2  # at its own save, again at a later one, and at the end
    assert {u["revision"] for u in hub.uploads} == {"main", "step-1", "step-3", "step-4"}
    for step in (1, 3, 4):
        assert set(hub.branches[f"step-{step}"]) == LOADABLE
    weights = {step: hub.branches[f"step-{step}"]["model.safetensors"] for step in (1, 3, 4)}
    assert len(set(weights.values())) == 3 and weights[4] == (output_dir / "checkpoint-4" / "model.safetensors").read_bytes()
    assert {u["thread"] for u in hub.uploads if u["revision"].startswith("step-")} == {"edugpt-hub-push"}
    assert [u["message"] for u in hub.uploads if u["revision"] == "main"] == ["End of training"]  # hub_strategy end
    (staged,) = (output_dir / ".edugpt-upload").iterdir()
    staged_weights = (staged / "model.safetensors").read_bytes()

    hub.fail_on_branch = None
    load_train_main()(args)  # trains nothing; pushes the run and the step that is still missing
    assert set(hub.branches["step-2"]) == LOADABLE and hub.branches["step-2"]["model.safetensors"] == staged_weights
    assert staged_weights not in weights.values()
    assert not (output_dir / ".edugpt-upload").exists()


def test_trainer_push_to_hub_itself_is_guarded(tiny_model_dir, tmp_path, monkeypatch):
    """Whoever calls the Trainer's push_to_hub (Trainer.save_model does, with push_to_hub) gets the guarded push."""
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments

    from edugpt.hub.trainer_pushes import TrainerPushes

    hub = _use_fake_hub(monkeypatch, FakeHub())
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    (output_dir / ".edugpt.lock").write_text('{"host": "node1"}')
    (tmp_path / "id_ed25519").write_bytes(SECRET)
    (output_dir / "vocab.json").symlink_to(tmp_path / "id_ed25519")
    args = TrainingArguments(output_dir=str(output_dir), push_to_hub=True, hub_model_id="someone/x", report_to="none",
                             use_cpu=True)
    trainer = Trainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args)
    TrainerPushes(trainer, output_dir, args)
    trainer.save_model()  # Trainer's own "Model save" push
    (upload,) = hub.uploads
    assert upload["message"] == "Model save" and upload["thread"] == "MainThread"
    assert set(upload["files"]) == {"README.md", "config.json", "generation_config.json", "model.safetensors"}
    assert "Built with edugpt" in upload["card"]


def test_step_branches_need_push_to_hub_and_saves(tmp_path):
    from transformers import TrainingArguments

    from edugpt.config.arguments import RunArguments
    from edugpt.run.lifecycle import TrainingRun

    def run(**training):
        args = TrainingArguments(output_dir=str(tmp_path / "run"), report_to="none", **training)
        return TrainingRun("pretrain", args, RunArguments(hub_step_branches=True))

    with pytest.raises(EduGPTError, match="hub_step_branches .* add --push_to_hub --hub_model_id NAME"):
        run()
    with pytest.raises(EduGPTError, match="save_strategy is 'no'"):
        run(push_to_hub=True, hub_model_id="someone/x", save_strategy="no")
    assert not (tmp_path / "run").exists()


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "finetune" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_sft_and_dpo_write_no_token_and_push_only_their_files(tiny_model_dir, tmp_path, monkeypatch):
    """--hub_token with SFT, then DPO on its output: no file in either output_dir holds the token (training_args.bin
    in the root and every checkpoint, run_config.json, the lock file, metrics.jsonl), every save reaches its step-N
    branch through the same guarded path, and nothing on the Hub holds the token either."""
    common = ["--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1", "--push_to_hub", "true",
              "--hub_strategy", "checkpoint", "--hub_step_branches", "true"]
    model = tiny_model_dir
    for script in ("sft", "dpo"):
        hub = _use_fake_hub(monkeypatch, FakeHub())
        out = tmp_path / script
        argv = ["--hub_token", FAKE_TOKEN, "--config", f"configs/{script}_smoke.yaml", "--model_name_or_path", model,
                "--output_dir", out, "--hub_model_id", f"someone/edugpt-{script}", *common]
        _run_as_command(monkeypatch, _load_script(script).main, f"finetune/{script}.py", argv)
        assert [p.name for p in sorted(out.glob("checkpoint-*"))] == ["checkpoint-1", "checkpoint-2"], script
        for folder in (out, out / "checkpoint-1", out / "checkpoint-2"):
            assert (folder / "training_args.bin").is_file(), folder
        assert "--hub_token" not in (out / ".edugpt.lock").read_text()
        assert _files_holding(out, FAKE_TOKEN.encode()) == [], script
        assert set(hub.branches["step-1"]) >= LOADABLE - {"generation_config.json"} and "step-2" in hub.branches
        assert "last-checkpoint/training_args.bin" in hub.branches["main"]  # hub_strategy checkpoint: scanned, clean
        assert not [(b, p) for b, p, data in hub.blobs() if FAKE_TOKEN.encode() in data], script
        assert not [p for p in hub.branches["main"] if p.startswith(".") and p != ".gitattributes"], script
        model = out  # DPO starts from the SFT model

"""publish.py / edugpt.hub: the dry-run folder is exactly a loadable model with a valid card, no resume state and no
token; checkpoints become step-N branches; with no network or no login a real push fails cleanly, touching nothing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import FAKE_TOKEN, RESUME_STATE, run_script
from edugpt.errors import EduGPTError
from edugpt.hub import plan_publish, publish_run, require_push_ready


def _snapshot(folder: Path) -> dict:
    """Every path under `folder` with its content hash, size and mtime: equal snapshots mean an untouched folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        key = path.relative_to(folder).as_posix()
        if path.is_file():
            stat = path.stat()
            out[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns)
        else:
            out[key] = "dir"
    return out


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


def test_token_inside_a_run_file_stops_the_dry_run(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    (run_dir / "notes.txt").write_text(f"export HF_TOKEN={FAKE_TOKEN}\n")
    with pytest.raises(EduGPTError, match="notes.txt contains a Hugging Face access token") as err:
        publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")
    assert FAKE_TOKEN not in str(err.value) + capsys.readouterr().out
    assert not (tmp_path / "plan").exists()


def test_token_shaped_text_is_caught_without_a_login(run_dir, tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("edugpt.hub._known_tokens", lambda: [])
    (run_dir / "run_config.json").write_text(json.dumps({"training": {"hub_token": FAKE_TOKEN}}))
    with pytest.raises(EduGPTError, match="run_config.json contains a Hugging Face access token"):
        publish_run(run_dir, "someone/x", dry_run=tmp_path / "plan")


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


class _RecordingHub:
    """Stands in for HfApi where the real Hub cannot be reached: records each call, keeps each branch's file list."""

    def __init__(self, fail_on_branch: str | None = None):
        self.commits, self.branches, self.fail_on_branch = [], {"main": {".gitattributes"}}, fail_on_branch

    def __call__(self, *args, **kwargs):  # HfApi() -> this instance
        return self

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, *, branch, **kwargs):
        self.branches.setdefault(branch, set(self.branches["main"]))

    def list_repo_files(self, repo_id, *, revision, **kwargs):
        return sorted(self.branches[revision])

    def create_commit(self, repo_id, operations, *, revision, commit_message, **kwargs):
        from huggingface_hub import CommitOperationAdd

        if revision == self.fail_on_branch:
            raise ConnectionError(f"403 Forbidden: token {FAKE_TOKEN} has no write access")
        files = self.branches[revision]
        for op in operations:
            (files.add if isinstance(op, CommitOperationAdd) else files.discard)(op.path_in_repo)
        self.commits.append((revision, sorted(files)))


def test_push_commits_main_then_one_branch_per_checkpoint(run_dir, monkeypatch):
    hub = _RecordingHub()
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    url = publish_run_offline(run_dir, monkeypatch)
    assert url == "https://huggingface.co/someone/x"
    assert [branch for branch, _ in hub.commits] == ["main", "step-2", "step-4"]
    main_files = set(hub.branches["main"])
    assert {"README.md", "model.safetensors", "metrics.jsonl", "images/hellaswag.png"} <= main_files
    for branch in ("step-2", "step-4"):  # exactly the checkpoint's loadable files: main's extras were deleted
        assert hub.branches[branch] == {".gitattributes", "README.md", "config.json", "generation_config.json",
                                        "model.safetensors", "tokenizer.json", "tokenizer_config.json"}
    assert not (main_files | hub.branches["step-2"]) & set(RESUME_STATE)


def test_successful_push_records_the_repo_that_a_finetune_card_names_as_base(run_dir, tiny_model_dir, tmp_path,
                                                                             monkeypatch):
    from edugpt.card import build_model_card

    monkeypatch.setattr("huggingface_hub.HfApi", _RecordingHub())
    publish_run_offline(run_dir, monkeypatch)
    record = json.loads((run_dir / "published.json").read_text())
    assert (record["repo_id"], record["branches"]) == ("someone/x", ["main", "step-2", "step-4"])
    sft = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, sft)
    (sft / "run_config.json").write_text(json.dumps({"script": "sft", "model": {"model_name_or_path": str(run_dir)},
                                                     "training": {"assistant_only_loss": True}}))
    assert build_model_card(sft).data.base_model == "someone/x"


def test_branch_cards_link_only_files_their_branch_holds(run_dir):
    (run_dir / "images" / "lr.png").write_bytes((run_dir / "images" / "hellaswag.png").read_bytes())
    plan = plan_publish(run_dir, "someone/x", branches=True)
    for upload in plan.uploads:
        links = set(re.findall(r"\]\((?!https?://)([^)]+)\)", upload.card))  # relative Markdown links and images
        assert links <= set(upload.files), upload.branch
        loads = re.findall(r"from_pretrained\((.*)\)", upload.card)
        revision = "" if upload.branch == "main" else f', revision="{upload.branch}"'
        assert loads and all(args == f'"someone/x"{revision}' for args in loads), upload.branch
    assert {"images/train-loss.png", "images/lr.png"} <= set(re.findall(r"\]\((images/[^)]+)\)", plan.uploads[0].card))


def test_failed_push_is_one_clear_error_without_the_token(run_dir, monkeypatch):
    before = _snapshot(run_dir)
    monkeypatch.setattr("huggingface_hub.HfApi", _RecordingHub(fail_on_branch="step-4"))
    with pytest.raises(EduGPTError, match="pushing to someone/x failed .*ConnectionError.*local run is unchanged") as err:
        publish_run_offline(run_dir, monkeypatch)
    assert FAKE_TOKEN not in str(err.value) and "***" in str(err.value)
    assert _snapshot(run_dir) == before


def publish_run_offline(run_dir, monkeypatch):
    """publish_run with the readiness check passed (the Hub is unreachable here) and the fake token set."""
    monkeypatch.setenv("HF_TOKEN", FAKE_TOKEN)
    monkeypatch.setattr("edugpt.hub.require_push_ready", lambda repo_id: repo_id)
    return publish_run(run_dir, "someone/x", branches=True)

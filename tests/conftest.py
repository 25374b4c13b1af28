"""Shared test fixtures. Everything runs offline on tiny local fixtures."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_logging_into_closed_streams():
    """An entry point run in this process sets up logging (cli.setup_logging: basicConfig(force=True)) on the
    sys.stderr of that moment, which is pytest's capture of one test: drop such handlers once that stream is closed,
    or a later test's logging prints '--- Logging error ---' with a traceback."""
    import logging

    yield
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            stream = getattr(handler, "stream", None)
            if stream is not None and getattr(stream, "closed", False):
                logger.removeHandler(handler)


def run_script(script: str, *args: str, timeout: float = 600, env: dict | None = None, check: bool = False):
    """Run one of the project's entry points (`prepare_data.py`, `train_hf.py`, ...) as a user would, offline."""
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *map(str, args)],
        cwd=ROOT, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


# --- tiny pretraining runs (train_hf.py) ---------------------------------------------------------------------------

# The smoke recipe shrunk to seconds: 2 layers of width 32 at seq 64, 8 steps of 4 blocks, a checkpoint every 2 steps.
TINY = [
    "--config", "configs/smoke.yaml", "--n_layer", "2", "--n_head", "2", "--n_embd", "32", "--n_positions", "64",
    "--per_device_train_batch_size", "4", "--per_device_eval_batch_size", "4", "--eval_max_batches", "2",
    "--max_steps", "8", "--save_steps", "2", "--save_total_limit", "2", "--eval_steps", "4", "--logging_steps", "1",
    "--sample_steps", "4", "--sample_max_new_tokens", "8", "--warmup_steps", "2", "--disable_tqdm", "true",
]


def tiny_args(data_dir, output_dir, *extra) -> list[str]:
    return [*TINY, "--dataset_dir", str(data_dir), "--output_dir", str(output_dir), *extra]


def train_records(output_dir) -> dict[int, dict]:
    """metrics.jsonl's training records by step."""
    records = [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in records if "loss" in r}


def assert_same_losses(run_a, run_b, steps):
    a, b = train_records(run_a), train_records(run_b)
    for step in steps:
        for key in ("loss", "grad_norm", "learning_rate"):
            assert math.isclose(a[step][key], b[step][key], rel_tol=0, abs_tol=1e-6), (step, key, a[step], b[step])


def load_train_main():
    """train_hf.py's `main`, to run in this process (faster than a subprocess; errors arrive as EduGPTError)."""
    spec = importlib.util.spec_from_file_location("train_hf", ROOT / "train_hf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@contextlib.contextmanager
def lock_held_in_another_pid_namespace(acquire: str, path, lock):
    """A lock held by a process in another PID namespace, as a job on another host or in another container would hold
    it: `acquire` is Python that takes it on `Path(sys.argv[1])` (= `path`). Yields whether `unshare` was permitted
    (False: nothing holds it). Afterwards waits until `lock()` (a fresh DirLock) can be taken again: the kernel
    releases an flock when it reaps the holder."""
    code = f"import sys, time; from pathlib import Path; {acquire}; print('held', flush=True); time.sleep(120)"
    holder = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", sys.executable, "-c",
                               code, str(path)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield holder.stdout.readline().strip() == "held"
    finally:
        holder.kill()  # --kill-child: the holder dies with unshare
        holder.wait()
    deadline = time.time() + 30
    while True:
        try:
            lock().acquire().release()
            break
        except Exception:
            assert time.time() < deadline, "the lock outlived its holder"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The embedded corpus prepared at seq 64 (40 documents): the data of every tiny pretraining run."""
    path = tmp_path_factory.mktemp("prepared") / "data"
    run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", path, "--seq_len", "64",
               "--max_docs", "40", "--val_fraction", "0.1", check=True, timeout=300)
    return path


@pytest.fixture(scope="session")
def baseline(data_dir, tmp_path_factory):
    """One uninterrupted 8-step run: the reference for outputs, resume and fallback tests (copy it before changing)."""
    output_dir = tmp_path_factory.mktemp("baseline") / "run"
    # In-loop HellaSwag on here only: the resume tests compare runs without it, so their equal losses also show that
    # scoring leaves the weights, optimizer state and data order alone.
    hellaswag = ["--hellaswag_steps", "4", "--hellaswag_limit", "12",
                 "--hellaswag_file", "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"]
    proc = run_script("train_hf.py", *tiny_args(data_dir, output_dir, *hellaswag), check=True, timeout=300)
    return output_dir, proc


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    from edugpt.model.tokenizer import load_tokenizer

    return load_tokenizer("gpt2")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, gpt2_tokenizer):
    """A randomly initialised 2-layer GPT-2 (n_embd 32) saved with the GPT-2 tokenizer: a stand-in checkpoint."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=2, n_embd=32, n_positions=128, vocab_size=50257)
    model = GPT2LMHeadModel(config)
    path = tmp_path_factory.mktemp("tiny-gpt2")
    model.save_pretrained(path)
    gpt2_tokenizer.save_pretrained(path)
    return path


FAKE_TOKEN = "hf_FAKEtokenFAKEtokenFAKEtokenFAKE12"  # shaped like a real token (hf_ + 34 characters)


class FakeHub:
    """Stands in for the Hub, which is unreachable here: patch it over `huggingface_hub.HfApi` (edugpt.hub.pusher) and
    `transformers.trainer.hf_api` (Trainer's own pushes). Selects files as the real `HfApi.upload_folder` does
    (`folder.glob("**/*")` regular files, so a symlinked file's target is read; allow/ignore patterns plus
    huggingface_hub's default ignores; `delete_patterns` deletes matching remote files except .gitattributes and
    those uploaded again), and keeps every branch's files with their bytes (`branches[branch][path]`). Records every
    commit (`uploads`: repo_id, revision, message, files added, files deleted, card, the thread that uploaded) and the
    branch of each failed one (`failed`).
    `fail=True` fails every upload like a dropped connection, `fail_on_branch` only that branch's; `fail_times=N` makes
    either fail only N times. The error quotes the token, as some server errors do. As HfApi does, a
    `run_as_future` upload returns a Future holding the outcome; an upload to a branch that does not exist fails.
    Each commit gets an id (`uploads[i]["oid"]`, returned as upload_folder's CommitInfo.oid) and its files are kept
    (`commits`); `save_to_cache` writes a branch or commit as huggingface_hub lays out a download, so the real
    `hf_hub_download` / `snapshot_download` find it there offline, and `hf_hub_download` / `snapshot_download` stand in
    for those functions online (patched over `huggingface_hub`'s). The repo exists once `create_repo` made it or an
    upload went to it; asking for another is the Hub's RepositoryNotFoundError."""

    def __init__(self, fail: bool = False, fail_on_branch: str | None = None, fail_times: int | None = None):
        self.fail, self.fail_on_branch, self.fail_times = fail, fail_on_branch, fail_times
        self.uploads: list[dict] = []
        self.failed: list[str] = []  # the branch of every upload that failed
        self.branches: dict[str, dict[str, bytes]] = {"main": {".gitattributes": b"*.safetensors filter=lfs\n"}}
        self.commits: dict[str, dict[str, bytes]] = {}  # commit id -> the branch's files after that commit
        self.repos: set[str] = set()

    def __call__(self, *args, **kwargs):  # HfApi() / hf_api() -> this instance
        return self

    def _check(self, revision):
        if self.fail or revision == self.fail_on_branch:
            if self.fail_times is not None:
                if self.fail_times <= 0:
                    return
                self.fail_times -= 1
            self.failed.append(revision)
            raise ConnectionError(f"Connection reset by peer (token {FAKE_TOKEN})")
        if revision not in self.branches:
            raise ValueError(f"404 Client Error: Revision Not Found for {revision}")

    def blobs(self):
        """(branch, path, bytes) of every file on the fake Hub."""
        return [(branch, path, data) for branch, files in self.branches.items() for path, data in files.items()]

    def create_repo(self, repo_id, **kwargs):
        from huggingface_hub import RepoUrl

        self.repos.add(repo_id)
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def create_branch(self, repo_id, *, branch, revision=None, exist_ok=False, **kwargs):
        if branch in self.branches:
            if not exist_ok:
                raise ValueError(f"409 Client Error: Conflict: branch {branch} already exists")
            return
        self.branches[branch] = dict(self.branches[revision or "main"])

    def list_repo_files(self, repo_id, *, revision=None, **kwargs):
        return sorted(self.branches[revision or "main"])

    def _commit(self, repo_id, revision, message, added: dict[str, bytes], deleted: list[str], repo_type=None):
        import hashlib
        import threading

        files = self.branches[revision]
        for path in deleted:
            files.pop(path, None)
        files.update(added)
        card = added.get("README.md")
        self.uploads.append({"repo_id": repo_id, "revision": revision, "message": message, "files": sorted(added),
                             "deleted": sorted(deleted), "card": card.decode() if card is not None else None,
                             "thread": threading.current_thread().name, "repo_type": repo_type or "model",
                             "oid": hashlib.sha1(f"{len(self.uploads)}:{repo_id}:{revision}".encode()).hexdigest()})
        self.commits[self.uploads[-1]["oid"]] = dict(files)
        self.repos.add(repo_id)
        return self.uploads[-1]["oid"]

    def create_commit(self, repo_id, operations, *, revision=None, commit_message=None, **kwargs):
        from huggingface_hub import CommitOperationAdd

        revision = revision or "main"
        self._check(revision)
        added, deleted = {}, []
        for op in operations:
            if isinstance(op, CommitOperationAdd):
                content = op.path_or_fileobj
                added[op.path_in_repo] = content if isinstance(content, bytes) else Path(content).read_bytes()
            else:
                deleted.append(op.path_in_repo)
        self._commit(repo_id, revision, commit_message, added, deleted)

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, revision=None, run_as_future=False,
                      allow_patterns=None, ignore_patterns=None, delete_patterns=None, path_in_repo=None, **kwargs):
        from concurrent.futures import Future

        from huggingface_hub.utils import filter_repo_objects
        from huggingface_hub.utils._paths import DEFAULT_IGNORE_PATTERNS

        outcome = Future()
        try:
            revision = revision or "main"
            self._check(revision)
            root = Path(folder_path).expanduser().resolve()
            local = {p.relative_to(root).as_posix(): p for p in sorted(root.glob("**/*")) if p.is_file()}
            ignore = [ignore_patterns] if isinstance(ignore_patterns, str) else list(ignore_patterns or [])
            names = filter_repo_objects(local, allow_patterns=allow_patterns,
                                        ignore_patterns=ignore + DEFAULT_IGNORE_PATTERNS)
            prefix = f"{path_in_repo.strip('/')}/" if path_in_repo else ""
            added = {prefix + name: local[name].read_bytes() for name in names}
            deleted = []
            if delete_patterns is not None:
                remote = {p[len(prefix):]: p for p in self.branches[revision] if p.startswith(prefix)}
                deleted = [remote[rel] for rel in filter_repo_objects(remote, allow_patterns=delete_patterns)
                           if remote[rel] != ".gitattributes" and remote[rel] not in added]
            oid = self._commit(repo_id, revision, commit_message, added, deleted, kwargs.get("repo_type"))
            outcome.set_result(types.SimpleNamespace(oid=oid))  # as HfApi's CommitInfo
        except (ConnectionError, ValueError) as err:
            outcome.set_exception(err)
        return outcome if run_as_future else outcome.result()

    # --- downloads ------------------------------------------------------------------------------------------------
    def _files_at(self, repo_id, revision):
        import hashlib

        import httpx2
        from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

        url = f"https://huggingface.co/api/datasets/{repo_id}/revision/{revision}"
        if self.fail:
            raise ConnectionError(f"Connection reset by peer (token {FAKE_TOKEN})")
        if repo_id not in self.repos:
            raise RepositoryNotFoundError(f"404 Client Error: Repository Not Found for url: {url}",
                                          response=httpx2.Response(404, request=httpx2.Request("GET", url)))
        revision = revision or "main"
        files = self.branches.get(revision, self.commits.get(revision))
        if files is None:
            raise RevisionNotFoundError(f"404 Client Error: Revision Not Found for url: {url}",
                                        response=httpx2.Response(404, request=httpx2.Request("GET", url)))
        commit = revision if revision in self.commits else \
            next((oid for oid in reversed(list(self.commits)) if self.commits[oid] == files), None)
        if commit is None:  # the branch was changed in place by a test: its state is a commit of its own
            commit = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()
            self.commits[commit] = dict(files)
        return files, commit

    def save_to_cache(self, cache_dir, repo_id, *, repo_type="dataset", revision="main", allow_patterns=None) -> Path:
        """Write `revision` (a branch or commit id) of the repo into `cache_dir` as huggingface_hub lays out a download:
        blobs/<sha256>, snapshots/<commit>/<path> as relative links to them, refs/<branch>. Returns the snapshot."""
        import hashlib

        from huggingface_hub.file_download import repo_folder_name
        from huggingface_hub.utils import filter_repo_objects

        files, commit = self._files_at(repo_id, revision)
        storage = Path(cache_dir) / repo_folder_name(repo_id=repo_id, repo_type=repo_type)
        snapshot = storage / "snapshots" / commit
        for name in filter_repo_objects(sorted(files), allow_patterns=allow_patterns):
            blob = storage / "blobs" / hashlib.sha256(files[name]).hexdigest()
            blob.parent.mkdir(parents=True, exist_ok=True)
            blob.write_bytes(files[name])
            link = snapshot / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(blob, link.parent))
        snapshot.mkdir(parents=True, exist_ok=True)
        if revision in self.branches:
            (storage / "refs").mkdir(parents=True, exist_ok=True)
            (storage / "refs" / revision).write_text(commit)
        return snapshot

    def hf_hub_download(self, repo_id, filename, *, repo_type=None, revision=None, cache_dir=None, **kwargs):
        """huggingface_hub.hf_hub_download online, from this fake (into `cache_dir` or HF_HUB_CACHE)."""
        from huggingface_hub import constants
        from huggingface_hub.errors import EntryNotFoundError

        files, _ = self._files_at(repo_id, revision)
        if filename not in files:
            raise EntryNotFoundError(f"404 Client Error: Entry Not Found for {filename}")
        snapshot = self.save_to_cache(cache_dir or constants.HF_HUB_CACHE, repo_id, repo_type=repo_type or "model",
                                      revision=revision or "main", allow_patterns=[filename])
        return str(snapshot / filename)

    def snapshot_download(self, repo_id, *, repo_type=None, revision=None, cache_dir=None, allow_patterns=None,
                          **kwargs):
        """huggingface_hub.snapshot_download online, from this fake."""
        from huggingface_hub import constants

        return str(self.save_to_cache(cache_dir or constants.HF_HUB_CACHE, repo_id, repo_type=repo_type or "model",
                                      revision=revision or "main", allow_patterns=allow_patterns))


# --- a run directory by the run-directory contract (edugpt.run.rundir), for the card and publishing tests -----------------
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


def record_as_written(run: Path) -> Path:
    """Enter what a run writes into `run`'s record (edugpt.run.record), as training would have while writing it: the
    checkpoints, the final model's files, metrics.jsonl, the other files at the root and images/. (eval/ is written by
    eval_harness.py, not by the run: it stays out.)"""
    from edugpt.run import record
    from edugpt.run.rundir import CHECKPOINT_RE, save_file_role

    def enter(found: record.Record) -> None:
        for path in sorted(run.iterdir()):
            if path.name.startswith(".") or path.is_symlink():
                continue
            if path.is_dir() and CHECKPOINT_RE.match(path.name.removeprefix("corrupt-")):
                found.add_tree(path, "checkpoint")
            elif path.is_dir() and path.name in ("images", "runs"):
                found.add_tree(path, "record")
            elif path.is_file():
                role = "model" if save_file_role(path.name) == "model" else "record"
                found.add(path, role, appends=path.name == "metrics.jsonl")

    record.start(run)
    record.update(run, enter)
    return run


def make_run_dir(root: Path, model_dir: Path, *, steps=(2, 4), lm_eval: bool = True) -> Path:
    """A pretraining run directory as train_hf.py leaves it: final model, checkpoint-N folders with resume state,
    metrics.jsonl, samples.md, run_config.json, data_manifest.json, plots, and an lm-eval results file under eval/."""
    from edugpt.run.checkpoints import write_marker

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
        "script": {"sample_steps": 2, "hellaswag_steps": 2},
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
    return record_as_written(run)


@pytest.fixture
def run_dir(tmp_path, tiny_model_dir):
    return make_run_dir(tmp_path, tiny_model_dir)

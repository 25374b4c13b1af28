"""Publishing a run directory to the Hugging Face Hub: the final model and its card on `main`, and optionally each
`checkpoint-N` on its own branch `step-N`, so `from_pretrained(repo, revision="step-5000")` loads that checkpoint.

    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches --dry_run /tmp/publish-plan   # offline
    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches                               # uploads

What goes up: the run directory's top-level files (weights, config, tokenizer, metrics.jsonl, samples.md,
run_config.json, data_manifest.json) and images/, plus a freshly built model card; for a branch, the checkpoint's
files plus a card naming the step. Optimizer, scheduler, RNG and trainer state (the files only needed to resume)
stay local unless `include_optimizer=True`. Every file is checked for the Hugging Face token before anything is
uploaded, and the token is never printed. Nothing in the run directory is written before the push has succeeded, so
a failed push leaves it as it was; a successful one records the repo in RUN_DIR/published.json, which the card of a
finetune of this run reads to name its base model on the Hub.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edugpt import rundir
from edugpt.args import DEFAULT_LICENSE
from edugpt.card import build_model_card
from edugpt.errors import EduGPTError
from edugpt.modeling import saved_parameter_counts
from edugpt.net import hub_available

# Files that only matter for resuming training (Trainer's checkpoint extras, DeepSpeed/FSDP optimizer shards, the
# completion marker of edugpt.checkpoints). training_args.bin is a pickled TrainingArguments, which can hold hub_token
# in clear text.
RESUME_STATE_PATTERNS = (
    "optimizer*.pt", "optimizer*.bin", "scheduler*.pt", "scaler.pt", "rng_state*.pth", "trainer_state.json",
    "training_args.bin", "global_step*", "pytorch_model_fsdp*", "edugpt-complete.json",
)
# Never uploaded: hidden files (.env, .git...), temp files, logs that may echo the environment.
NEVER_PATTERNS = (".*", "*.tmp", "*.lock", "*.log", "*.out", "*.err")
WEIGHT_NAMES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# The token scan reads every file up to this size; larger ones are weight shards (binary tensors, no metadata text).
SCAN_LIMIT_BYTES = 64 * 1024 * 1024
HF_TOKEN_SHAPE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
TEXT_SUFFIXES = {".json", ".jsonl", ".md", ".txt", ".yaml", ".yml", ".jinja", ".csv", ".py", ".sh", ".cfg", ".toml"}


@dataclass
class BranchUpload:
    """One commit: `files` (paths relative to `source`) plus a generated card, to `branch` of the repo."""

    branch: str
    source: Path
    files: list[str]
    card: str
    step: int | None = None
    excluded: list[dict] = field(default_factory=list)

    def total_bytes(self) -> int:
        return sum((self.source / f).stat().st_size for f in self.files) + len(self.card.encode())


@dataclass
class PublishPlan:
    repo_id: str
    uploads: list[BranchUpload]
    skipped: list[dict] = field(default_factory=list)

    def to_json(self) -> dict:
        return {
            "repo_id": self.repo_id,
            "created_by": "publish.py",
            "branches": [
                {
                    "branch": u.branch,
                    "step": u.step,
                    "source": str(u.source),
                    "folder": u.branch,
                    "files": sorted(u.files + [rundir.CARD]),
                    "bytes": u.total_bytes(),
                    "load": (f'AutoModelForCausalLM.from_pretrained("{self.repo_id}"'
                             + (f', revision="{u.branch}")' if u.branch != "main" else ")")),
                    "excluded": u.excluded,
                }
                for u in self.uploads
            ],
            "skipped_checkpoints": self.skipped,
        }


def _matches(name: str, patterns) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _has_weights(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any((folder / n).is_file() for n in WEIGHT_NAMES)


def _checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder should not be published, or None. train_hf.py checkpoints carry a completion marker
    (edugpt.checkpoints), which is checked file by file; others (TRL) need config, weights and a readable header."""
    from edugpt.checkpoints import MARKER, checkpoint_problem

    if (folder / MARKER).is_file():
        return checkpoint_problem(folder)
    if not _has_weights(folder):
        return "no config.json + weights (the save did not finish)"
    if (folder / "model.safetensors").is_file() and saved_parameter_counts(folder) is None:
        return "model.safetensors is unreadable (truncated?)"
    return None


def _select_files(folder: Path, include_optimizer: bool, subdirs: tuple[str, ...] = ()) -> tuple[list[str], list[dict]]:
    """Top-level regular files of `folder` (and of the named subfolders), minus what must stay local."""
    chosen, excluded = [], []
    candidates = [p for p in folder.iterdir() if p.is_file() and not p.is_symlink()]
    for sub in subdirs:
        if (folder / sub).is_dir():
            candidates += [p for p in (folder / sub).rglob("*") if p.is_file() and not p.is_symlink()]
    for path in sorted(candidates):
        relative = path.relative_to(folder).as_posix()
        if path.name == rundir.CARD and path.parent == folder:
            continue  # replaced by a freshly built card
        if _matches(path.name, NEVER_PATTERNS):
            excluded.append({"path": relative, "reason": "hidden, temporary or log file: never uploaded"})
        elif _matches(path.name, RESUME_STATE_PATTERNS) and not include_optimizer:
            excluded.append({"path": relative, "reason": "optimizer/resume state: pass --include_optimizer to upload"})
        else:
            chosen.append(relative)
    return chosen, excluded


def plan_publish(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                 include_optimizer: bool = False, eval_dir: str | os.PathLike | None = None,
                 license: str = DEFAULT_LICENSE) -> PublishPlan:
    """What `publish` would upload: `main` from the run directory's root, and `step-N` per checkpoint-N if asked."""
    run_dir = Path(run_dir)
    _require_repo_id(hub_model_id)
    if not run_dir.is_dir():
        raise EduGPTError(f"run directory {run_dir} does not exist; pass the output_dir of a finished training run.")
    if not _has_weights(run_dir):
        raise EduGPTError(
            f"{run_dir} holds no final model (config.json + model.safetensors at its root); let training finish, "
            "or pass a checkpoint-N folder as RUN_DIR."
        )
    files, excluded = _select_files(run_dir, include_optimizer, subdirs=("images",))
    card = build_model_card(run_dir, eval_dir=eval_dir, hub_model_id=hub_model_id, license=license)
    plan = PublishPlan(repo_id=hub_model_id, uploads=[BranchUpload("main", run_dir, files, str(card), None, excluded)])
    if not branches:
        return plan
    for folder in rundir.list_checkpoints(run_dir):
        step = rundir.checkpoint_step(folder)
        if problem := _checkpoint_problem(folder):
            plan.skipped.append({"path": folder.name, "reason": problem})
            continue
        files, excluded = _select_files(folder, include_optimizer)
        branch = f"step-{step}"
        # The branch card describes the run (its plots and numbers live at the root) but loads this revision.
        card = build_model_card(run_dir, eval_dir=eval_dir, hub_model_id=hub_model_id, license=license,
                                revision=branch)
        excluded = [{**e, "path": f"{folder.name}/{e['path']}"} for e in excluded]
        plan.uploads.append(BranchUpload(branch, folder, files, str(card), step, excluded))
    return plan


def _known_tokens() -> list[str]:
    from huggingface_hub import get_token

    values = {os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    try:
        values.add(get_token())
    except Exception:  # an OIDC exchange that fails: the environment variables above are still checked
        pass
    return [v for v in values if v and len(v) >= 8]


def check_no_secrets(plan: PublishPlan) -> None:
    """Raise if any planned file (or card) contains the user's Hub token or anything shaped like an HF token."""
    tokens = [t.encode() for t in _known_tokens()]
    for upload in plan.uploads:
        blobs = []
        for name in upload.files:
            path = upload.source / name
            if path.stat().st_size <= SCAN_LIMIT_BYTES:
                blobs.append((str(path), path.read_bytes()))
        blobs.append((f"the generated {rundir.CARD} for {upload.branch}", upload.card.encode()))
        for label, data in blobs:
            leaked = any(t in data for t in tokens)
            text_like = Path(label).suffix in TEXT_SUFFIXES or label.endswith(rundir.CARD)
            if leaked or (text_like and HF_TOKEN_SHAPE.search(data)):
                raise EduGPTError(
                    f"{label} contains a Hugging Face access token; remove it from that file (or delete the file) "
                    "before publishing."
                )


def write_dry_run(plan: PublishPlan, dest: str | os.PathLike) -> Path:
    """Write each branch's exact upload as DEST/<branch>/ plus DEST/plan.json, atomically (all or nothing)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise EduGPTError(f"--dry_run folder {dest} already exists and is not empty; pass a new folder.")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        for upload in plan.uploads:
            folder = tmp / upload.branch
            for name in upload.files:
                (folder / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(upload.source / name, folder / name)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / rundir.CARD).write_text(upload.card, encoding="utf-8")
        (tmp / "plan.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


def _require_repo_id(hub_model_id: str | None) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if not hub_model_id:
        raise EduGPTError("no Hub repo given; pass --hub_model_id NAME (e.g. your-name/edugpt-270m).")
    try:
        validate_repo_id(hub_model_id)
    except HFValidationError:
        raise EduGPTError(
            f"{hub_model_id!r} is not a valid Hub repo id; use 'name' or 'owner/name' with letters, digits, '-', "
            "'_' and '.'."
        ) from None


def require_push_ready(hub_model_id: str | None) -> str:
    """Raise EduGPTError (one sentence) unless pushing to `hub_model_id` can work: valid id, a token, a reachable Hub,
    and a token the Hub accepts. Call it before training so a run that cannot be uploaded is not started.

    Returns the full repo id ('name' becomes 'your-user/name', as the Hub will create it)."""
    from huggingface_hub import HfApi, get_token

    _require_repo_id(hub_model_id)
    if not get_token():
        raise EduGPTError(
            f"no Hugging Face token found, so nothing can be pushed to {hub_model_id}; run `hf auth login` or set "
            "HF_TOKEN (or train without --push_to_hub and publish the run later with publish.py)."
        )
    if not hub_available():
        raise EduGPTError(
            f"the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set or there is no network), so nothing can be "
            f"pushed to {hub_model_id}; connect and unset HF_HUB_OFFLINE (or train without --push_to_hub and publish "
            "the run later with publish.py)."
        )
    try:
        user = HfApi().whoami(cache=True)
    except Exception as err:
        raise EduGPTError(
            f"the Hub did not accept your token ({type(err).__name__}); log in again with `hf auth login` or set a "
            "valid HF_TOKEN with write access."
        ) from None
    return hub_model_id if "/" in hub_model_id else f"{user['name']}/{hub_model_id}"


def scrub(message: str) -> str:
    """`message` without the user's token or anything shaped like one, first line only (for errors that quote the
    Hub's answer)."""
    for token in _known_tokens():
        message = message.replace(token, "***")
    message = HF_TOKEN_SHAPE.sub(b"***", message.encode()).decode()
    return message.splitlines()[0][:300] if message else ""


def push(plan: PublishPlan, *, private: bool | None = None) -> str:
    """Upload the plan: `main` first, then each step-N branch holding exactly that checkpoint's files. Returns the URL."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi

    api = HfApi()
    try:
        repo_id = api.create_repo(plan.repo_id, private=private, exist_ok=True).repo_id
        for upload in plan.uploads:
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(upload.source / name))
                          for name in upload.files]
            operations.append(CommitOperationAdd(path_in_repo=rundir.CARD, path_or_fileobj=upload.card.encode()))
            if upload.branch != "main":
                # A new branch starts as a copy of main; drop main's files so step-N holds only the checkpoint.
                api.create_branch(repo_id, branch=upload.branch, exist_ok=True)
                keep = set(upload.files) | {rundir.CARD, ".gitattributes"}
                operations += [CommitOperationDelete(path_in_repo=p)
                               for p in api.list_repo_files(repo_id, revision=upload.branch) if p not in keep]
            api.create_commit(repo_id, operations=operations, revision=upload.branch,
                              commit_message=f"Upload {upload.source.name} ({upload.branch}) with edugpt publish.py")
            print(f"pushed {upload.branch}: {len(upload.files) + 1} files from {upload.source}")
    except EduGPTError:
        raise
    except Exception as err:
        raise EduGPTError(
            f"pushing to {plan.repo_id} failed ({type(err).__name__}: {scrub(str(err))}); the local run is "
            "unchanged, check the repo id and that your token has write access, then run publish.py again."
        ) from None
    return f"https://huggingface.co/{repo_id}"


def publish_run(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                include_optimizer: bool = False, dry_run: str | os.PathLike | None = None,
                eval_dir: str | os.PathLike | None = None, private: bool | None = None,
                license: str = DEFAULT_LICENSE) -> str:
    """Plan, check for secrets, then either write the dry-run folder or push and record the repo in the run's
    published.json. Returns the folder path or repo URL."""
    if dry_run is None:
        hub_model_id = require_push_ready(hub_model_id)  # before any work: no token / no network fails in a second
    plan = plan_publish(run_dir, hub_model_id, branches=branches, include_optimizer=include_optimizer,
                        eval_dir=eval_dir, license=license)
    check_no_secrets(plan)
    for upload in plan.uploads:
        print(f"{upload.branch:>12}: {len(upload.files) + 1} files, {upload.total_bytes() / 1e6:.1f} MB "
              f"from {upload.source} ({len(upload.excluded)} left out)")
    for skipped in plan.skipped:
        print(f"     skipped: {skipped['path']} ({skipped['reason']})")
    if dry_run is not None:
        return str(write_dry_run(plan, dry_run))
    url = push(plan, private=private)
    rundir.write_published(run_dir, plan.repo_id, [upload.branch for upload in plan.uploads])
    return url


def push_failed_error(output_dir: str | os.PathLike, repo_id: str, failure: str) -> EduGPTError:
    """The one error a run whose push failed ends with: the model is local, and this is how to publish it later."""
    return EduGPTError(
        f"the model is saved in {output_dir}, but pushing it to {repo_id} failed ({failure}); check the network and "
        f"your token's write access, then run `python publish.py {output_dir} --hub_model_id {repo_id}`."
    )

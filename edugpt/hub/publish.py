"""Every upload to the Hugging Face Hub goes through here: publish.py, Trainer's pushes while and after training
(`--push_to_hub`, `hub_strategy`), and each checkpoint's `step-N` branch as it is saved (`--hub_step_branches`), so
`from_pretrained(repo, revision="step-5000")` loads that checkpoint even after save_total_limit deleted it locally.

    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches --dry_run /tmp/publish-plan   # offline
    python publish.py runs/demo --hub_model_id you/edugpt-demo --branches                               # uploads

One guarded path for all of them:
1. plan: a record, not a pattern. Only what the run's record (edugpt.run.record) says the run wrote, and that is still
   the file it wrote, is ever uploaded. `main` gets the final model's files and the run's record (run_config.json,
   data_manifest.json, metrics.jsonl, samples.md, the plots in images/, TensorBoard's event files); a step-N branch
   gets its checkpoint's model files. Resume state (optimizer, scheduler, RNG, trainer state, training_args.bin,
   completion marker) goes up only with `include_optimizer` (or `hub_strategy checkpoint`, whose point it is).
   Hidden files (the run's lock and record), corrupt-checkpoint-N, whatever the user put in the folder (in images/
   and runs/ too), a file edited since the run wrote it, and every symlink (wherever it points: nothing outside the
   run directory is ever read for an upload) stay local; the plan says which and why.
   The model card is built from exactly the planned files, so it links only images that go up.
2. stage: the exact upload as one folder. Large files are hardlinked (instant, no extra disk; a checkpoint deleted by
   save_total_limit meanwhile stays intact), small ones copied (a snapshot of files training appends to); each is
   opened without following links and must still be the very file that was planned. A dry run is this folder.
   (Why not upload_folder on the run directory with allow_patterns: its file listing reads through symlinked files,
   and a pattern cannot tell a link from a file.)
3. scan: every staged byte, binary files included (training_args.bin is a pickle), for the user's token and anything
   shaped like a Hugging Face token. A hit stops the upload and names the file; the token is never printed.
4. upload: `HfApi.upload_folder` of that folder, one commit with the card; a step-N branch (`create_branch`) ends up
   holding exactly its checkpoint's files (`delete_patterns`); main gains or replaces files (weight files that are
   not uploaded again are deleted, so a sharded model does not sit beside an older single file).

Pushes during training run on a background thread, one at a time; a failed one is kept (staged in
RUN_DIR/.edugpt-upload) and retried at the next save, at the end of training, by running the same command again or
by publish.py. A successful publish.py run records the repo in RUN_DIR/published.json, which the card of a finetune of
this run reads to name its base model on the Hub.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.config.arguments import DEFAULT_LICENSE
from edugpt.errors import EduGPTError
from edugpt.io.net import hub_available
from edugpt.io.safefs import ensure_dir, no_space_reason
from edugpt.run import rundir
from edugpt.run.record import RECORD, Record, find_root, note_written, update

logger = logging.getLogger(__name__)

STAGING = rundir.STAGING
# Weight files on main that an upload replaces: a sharded model after a single-file one must not leave the old file.
WEIGHT_PATTERNS = ("model*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin",
                   "pytorch_model.bin.index.json")

HIDDEN = "hidden (the run's lock file, .env, .git, ...): never uploaded"
RESUME = "optimizer/resume state: pass --include_optimizer to upload"
CHECKPOINT = "a checkpoint: each goes to its own branch step-N (publish.py --branches)"
CORRUPT = "a checkpoint set aside as corrupt: never uploaded"
NOT_OURS = "not a file of the model or of the run's record: only those are uploaded"
NOT_RECORDED = "not written by this run (not in its record, or changed since it was written): never uploaded"
NOT_REGULAR = "not a regular file (a pipe, socket or device)"

# Files at least this large are hardlinked into a staged upload; smaller ones are copied (a snapshot).
LINK_MIN_BYTES = 1 << 20
SCAN_CHUNK_BYTES = 16 << 20
HF_TOKEN_SHAPE = re.compile(rb"hf_[A-Za-z0-9]{30,}")
_TAKE, _SKIP = object(), object()


# ---------------------------------------------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class PlannedFile:
    """A regular file inside the run directory, found without following any link."""

    path: Path
    size: int
    identity: tuple[int, int]  # (st_dev, st_ino) when planned: staging refuses a path that now names another file


@dataclass
class BranchUpload:
    """One commit: `files` (path in the repo -> file) plus the card, to `branch` of the repo."""

    branch: str
    source: Path  # the folder the model comes from: the run directory or a checkpoint-N
    files: dict[str, PlannedFile]
    card: str
    step: int | None = None
    excluded: list[dict] = field(default_factory=list)
    message: str = ""
    delete_patterns: list[str] | None = None  # remote files matching these are deleted unless uploaded again

    def total_bytes(self) -> int:
        return sum(f.size for f in self.files.values()) + len(self.card.encode())


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
                    "files": sorted([*u.files, rundir.CARD]),
                    "bytes": u.total_bytes(),
                    "load": (f'AutoModelForCausalLM.from_pretrained("{self.repo_id}"'
                             + (f', revision="{u.branch}")' if u.branch != "main" else ")")),
                    "excluded": u.excluded,
                }
                for u in self.uploads
            ],
            "skipped_checkpoints": self.skipped,
        }


def _symlink_reason(path: str, root: Path) -> str:
    target = Path(os.path.realpath(path))
    where = "inside" if target == root or root in target.parents else "outside"
    return f"a symlink to {target}, {where} the run directory: links are never followed"


def _rules(run: Record, *, model: bool = True, record: bool = False, resume: bool = False,
           model_from: str | None = None):
    """What to do with each entry of a folder: take it (a folder: look inside), skip it silently (the card, rebuilt),
    or leave it out for a reason. Only what the run's record says the run wrote is ever taken; its role says what it
    is: the final model's files, the run's record (plots, logs, TensorBoard events), or resume state. Inside a save
    (a checkpoint-N folder) the file's name within the save sorts model files from resume state
    (rundir.save_file_role). `model_from`: the model comes from that checkpoint, not from here."""

    def classify(rel: str, name: str, is_dir: bool):
        role = run.role(rel)
        if role is None:
            return NOT_RECORDED
        if rel == rundir.CARD:
            return _SKIP  # replaced by a freshly built card
        top = "/" not in rel
        if role == "checkpoint" and top:
            if name.startswith("corrupt-"):
                return CORRUPT
            return CHECKPOINT if rundir.CHECKPOINT_RE.match(name) else NOT_OURS
        if role == "checkpoint":  # inside a save
            if is_dir:
                return _TAKE if resume else RESUME  # FSDP/DeepSpeed shard folders
            role = rundir.save_file_role(name)
        if role == "model":
            return _TAKE if model else f"this upload's model comes from {model_from}"
        if role == "record":
            return _TAKE if record else NOT_OURS
        if role == "state":
            return _TAKE if resume else RESUME
        return NOT_OURS

    return classify


def _take_all(rel: str, name: str, is_dir: bool):
    return _TAKE


def _collect(folder: Path, run: Record, classify, prefix: str = "") -> tuple[dict[str, PlannedFile], list[dict]]:
    """Regular files under `folder` that `classify` takes (looking into the folders it takes), by path relative to
    `folder`, and every other entry with the reason it stays local. Never follows a symlink: os.scandir's entries are
    judged by what they are themselves (a link to a folder is a link, not a folder)."""
    files, excluded = {}, []
    with os.scandir(folder) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        is_dir = entry.is_dir(follow_symlinks=False)
        shown = rel + "/" if is_dir else rel
        in_run = run.rel(entry.path) or ""
        if entry.name.startswith("."):
            excluded.append({"path": shown, "reason": HIDDEN})
        elif entry.is_symlink():
            excluded.append({"path": rel, "reason": _symlink_reason(entry.path, run.root)})
        elif is_dir:
            verdict = classify(in_run, entry.name, True)
            if verdict is _TAKE:
                sub_files, sub_excluded = _collect(Path(entry.path), run, classify, rel + "/")
                files.update(sub_files)
                excluded += sub_excluded
            else:
                excluded.append({"path": shown, "reason": verdict})
        elif not entry.is_file(follow_symlinks=False):
            excluded.append({"path": rel, "reason": NOT_REGULAR})
        else:
            verdict = classify(in_run, entry.name, False)
            if verdict is _TAKE:
                st = entry.stat(follow_symlinks=False)
                files[rel] = PlannedFile(Path(entry.path), st.st_size, (st.st_dev, st.st_ino))
            elif verdict is not _SKIP:
                excluded.append({"path": rel, "reason": verdict})
    return files, excluded


def _is_staged(run: Record, folder: Path) -> bool:
    """Is `folder` an upload staged in the run's own staging folder (made by the run, 0700: wholly edugpt's)?"""
    rel = run.rel(folder) or ""
    return rel.startswith(STAGING + "/") and "/" not in rel[len(STAGING) + 1:] and run.role(STAGING) == "staging" \
        and folder.is_dir() and not folder.is_symlink()


def run_record(run_dir: str | os.PathLike) -> Record:
    """The record of the run `run_dir` belongs to: its own, or (for a checkpoint-N folder given as the run) its
    parent's. Empty when there is none: then nothing is the run's, and nothing is uploaded."""
    run_dir = Path(run_dir)
    if Record.exists(run_dir):
        return Record.load(run_dir)
    root = find_root(run_dir / "x", depth=2)
    return Record.load(root) if root is not None else Record(run_dir)


def _prefixed(entries: list[dict], folder: str) -> list[dict]:
    return [{**e, "path": f"{folder}/{e['path']}"} for e in entries]


def _real_parent(path: str | os.PathLike) -> Path:
    """`path` with its parent folders resolved but not itself: a checkpoint that is a symlink stays a symlink."""
    path = Path(path)
    return Path(os.path.realpath(path.parent)) / path.name


def _has_model(files: dict) -> bool:
    return "config.json" in files and any(name in files for name in rundir.WEIGHT_FILES)


def _card(files: dict[str, PlannedFile], *, hub_model_id: str, revision: str | None, eval_results: Path | None,
          license: str) -> str:
    """edugpt's card (edugpt.report.card) built from exactly `files`: a temporary view of them, small files copied (checked
    like staged ones), weights linked (the card reads their headers only)."""
    from edugpt.report.card import build_model_card

    with tempfile.TemporaryDirectory(prefix="edugpt-card-") as tmp:
        view = Path(tmp) / "run"  # alone in its parent: the card's search for lm-eval results finds nothing else
        for rel, planned in files.items():
            target = view / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if planned.size >= LINK_MIN_BYTES:
                os.symlink(planned.path, target)
            else:
                _place(planned, target, link=False, tokens=None)
        card = build_model_card(view, eval_dir=eval_results, hub_model_id=hub_model_id, license=license,
                                revision=revision)
    return str(card)


def _card_inputs(run: Record, run_dir: Path, model_dir: Path) -> dict[str, PlannedFile]:
    """The run's record, for a card whose upload does not carry it, and a trainer_state.json (of the save, else the
    run's) for the loss history."""
    found, _ = _collect(run_dir, run, _rules(run, model=False, record=True))
    found = {k: v for k, v in found.items() if "/" not in k}
    for folder in (model_dir, run_dir):
        state = folder / rundir.TRAINER_STATE
        if run.role(run.rel(state) or "") is not None:
            st = os.lstat(state)
            found[rundir.TRAINER_STATE] = PlannedFile(state, st.st_size, (st.st_dev, st.st_ino))
            break
    return found


def plan_main(run_dir: str | os.PathLike, hub_model_id: str, *, model_dir: str | os.PathLike | None = None,
              include_optimizer: bool = False, eval_results: str | os.PathLike | None = None,
              license: str = DEFAULT_LICENSE, branch: str = "main", message: str | None = None,
              checkpoint_copy: str | None = None) -> BranchUpload:
    """`main` (or the branch Trainer's `hub_revision` names): the model from `model_dir` (default: the run directory's
    final model; during training, the checkpoint just saved), the run's record, and the card. `checkpoint_copy`
    ("last-checkpoint" or "checkpoint-N", Trainer's hub_strategy checkpoint / all_checkpoints) adds that checkpoint
    with its resume state under that folder, replacing what the folder held."""
    run_dir = Path(run_dir).resolve()
    run = run_record(run_dir)
    model_dir = _real_parent(model_dir) if model_dir is not None else run_dir
    if model_dir == run_dir:
        files, excluded = _collect(run_dir, run, _rules(run, record=True, resume=include_optimizer))
    else:
        files, excluded = _collect(model_dir, run, _rules(run, resume=include_optimizer))
        excluded = _prefixed(excluded, model_dir.name)
        found, found_excluded = _collect(run_dir, run, _rules(run, model=False, record=True,
                                                              model_from=model_dir.name))
        files.update(found)
        excluded += found_excluded
    if not _has_model(files):
        raise EduGPTError(
            f"{model_dir} holds no final model written by this run (config.json + model.safetensors as regular files "
            f"at its root, listed in the run's record {RECORD}; a symlink is never followed); let training finish, "
            "or pass a checkpoint-N folder as RUN_DIR."
        )
    delete_patterns = list(WEIGHT_PATTERNS)
    card_files = {**_card_inputs(run, run_dir, model_dir), **files}
    if checkpoint_copy:
        state, _ = _collect(model_dir, run, _rules(run, resume=True))
        files.update({f"{checkpoint_copy}/{rel}": planned for rel, planned in state.items()})
        delete_patterns.append(f"{checkpoint_copy}/*")
    card = _card(card_files, hub_model_id=hub_model_id, revision=None,
                 eval_results=Path(eval_results) if eval_results else None, license=license)
    return BranchUpload(branch, model_dir, files, card, None, excluded,
                        message or f"Upload {run_dir.name} with edugpt", delete_patterns)


def plan_branch(run_dir: str | os.PathLike, checkpoint: str | os.PathLike, hub_model_id: str, *, step: int,
                include_optimizer: bool = False, eval_results: str | os.PathLike | None = None,
                license: str = DEFAULT_LICENSE) -> BranchUpload:
    """Branch `step-N`: exactly the checkpoint's model files (and resume state with include_optimizer) plus a card
    that describes the run, links no images (they stay on main) and loads this revision."""
    run_dir, checkpoint = Path(run_dir).resolve(), _real_parent(checkpoint)
    run = run_record(run_dir)
    branch = f"step-{step}"
    staged = _is_staged(run, checkpoint)  # a step's upload staged by an earlier attempt
    files, excluded = _collect(checkpoint, run, _take_all if staged else _rules(run, resume=include_optimizer))
    if not _has_model(files):
        raise EduGPTError(f"{checkpoint} holds no config.json + weights written by this run as regular files (a "
                          "symlink is never followed)")
    card = _card({**_card_inputs(run, run_dir, checkpoint), **files}, hub_model_id=hub_model_id, revision=branch,
                 eval_results=Path(eval_results) if eval_results else None, license=license)
    folder = checkpoint.relative_to(run_dir).as_posix() if checkpoint.is_relative_to(run_dir) else checkpoint.name
    return BranchUpload(branch, checkpoint, files, card, step, _prefixed(excluded, folder),
                        f"Upload {checkpoint.name} as {branch} with edugpt", ["*"])


def _checkpoint_problem(folder: Path) -> str | None:
    """Why a checkpoint folder should not be published, or None. edugpt's checkpoints carry a completion marker
    (edugpt.run.checkpoints), which is checked file by file; others need config, weights and a readable header."""
    from edugpt.run.checkpoints import checkpoint_problem

    return checkpoint_problem(folder)


def _staged_steps(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, folder) of every staged step-N upload in RUN_DIR/.edugpt-upload, oldest first — only when that folder is
    the one the run made (its record says so; 0700, so nobody else writes into it)."""
    staging = Path(run_dir) / STAGING
    if Record.load(run_dir).role(STAGING) != "staging":
        return []
    found = []
    for path in sorted(staging.iterdir(), key=lambda p: p.stat(follow_symlinks=False).st_mtime_ns):
        match = re.match(r"^step-(\d+)\.", path.name)
        if match and path.is_dir() and not path.is_symlink():
            found.append((int(match.group(1)), path))
    return found


def pending_steps(run_dir: str | os.PathLike) -> dict[int, Path]:
    """Checkpoints staged for their step-N branch whose push has not succeeded yet (RUN_DIR/.edugpt-upload/step-N.*),
    newest staging per step. They outlive the checkpoint itself when save_total_limit deleted it."""
    return dict(_staged_steps(run_dir))


def plan_publish(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                 include_optimizer: bool = False, eval_dir: str | os.PathLike | None = None,
                 license: str = DEFAULT_LICENSE) -> PublishPlan:
    """What `publish` would upload: `main` from the run directory's root, and `step-N` per checkpoint-N if asked
    (also for a step whose push during training failed after its checkpoint was deleted: its staged copy)."""
    _require_repo_id(hub_model_id)
    if not Path(run_dir).is_dir():
        raise EduGPTError(f"run directory {run_dir} does not exist; pass the output_dir of a finished training run.")
    run_dir = Path(run_dir).resolve()  # the folder the user named; links inside it are never followed
    lm_eval = rundir.find_lm_eval_results(run_dir, eval_dir)
    eval_results = lm_eval["_path"] if lm_eval else None
    main = plan_main(run_dir, hub_model_id, include_optimizer=include_optimizer, eval_results=eval_results,
                     license=license, message=f"Upload {run_dir.name} with edugpt publish.py")
    plan = PublishPlan(repo_id=hub_model_id, uploads=[main])
    if not branches:
        return plan
    sources: dict[int, Path] = {}
    run = run_record(run_dir)
    for folder in rundir.list_checkpoints(run_dir):
        if folder.is_symlink():
            plan.skipped.append({"path": folder.name, "reason": _symlink_reason(str(folder), run_dir)})
        elif run.role(folder.name) != "checkpoint":
            plan.skipped.append({"path": folder.name, "reason": NOT_RECORDED})
        elif problem := _checkpoint_problem(folder):
            plan.skipped.append({"path": folder.name, "reason": problem})
        else:
            sources[rundir.checkpoint_step(folder)] = folder
    for step, staged in pending_steps(run_dir).items():
        sources.setdefault(step, staged)
    for step in sorted(sources):
        try:
            plan.uploads.append(plan_branch(run_dir, sources[step], hub_model_id, step=step,
                                            include_optimizer=include_optimizer, eval_results=eval_results,
                                            license=license))
        except EduGPTError as err:
            plan.skipped.append({"path": sources[step].name, "reason": str(err)})
    return plan


# ------------------------------------------------------------------------------------------------------- stage + scan
def _known_tokens() -> list[str]:
    from huggingface_hub import get_token

    values = {os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    try:
        values.add(get_token())
    except Exception:  # an OIDC exchange that fails: the environment variables above are still checked
        pass
    return [v for v in values if v and len(v) >= 8]


def _token_error(label: str) -> EduGPTError:
    return EduGPTError(f"{label} contains a Hugging Face access token; remove it from that file (or delete the file) "
                       "before publishing.")


def _has_token(read, tokens: list[bytes]) -> bool:
    """Does the stream `read(n)` hold one of `tokens` or anything shaped like an HF token? Read in chunks, each
    searched together with the end of the previous one, so a token across a chunk border is found too."""
    keep = max([len(t) for t in tokens] + [256])
    tail = b""
    while chunk := read(SCAN_CHUNK_BYTES):
        data = tail + chunk
        if _bytes_have_token(data, tokens):
            return True
        tail = data[-keep:]
    return False


def _bytes_have_token(data: bytes, tokens: list[bytes]) -> bool:
    return any(t in data for t in tokens) or HF_TOKEN_SHAPE.search(data) is not None


def scan_file(path: Path, label: str, tokens: list[bytes] | None = None) -> None:
    """Raise EduGPTError naming `label` if the file holds a token (every byte is read: binary files too)."""
    tokens = [t.encode() for t in _known_tokens()] if tokens is None else tokens
    with open(path, "rb") as f:
        if _has_token(f.read, tokens):
            raise _token_error(label)


def _place(planned: PlannedFile, target: Path, *, link: bool, tokens: list[bytes] | None) -> bool:
    """Put the planned file at `target`: a hardlink when `link` and the filesystem allows it (returns True: the caller
    scans it), else a copy, scanned for tokens first when `tokens` is given (returns False). The source is opened
    without following a link and must be the file that was planned, so nothing swapped in since is read."""
    try:
        fd = os.open(planned.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise EduGPTError(f"{planned.path} changed while publishing ({os.strerror(err.errno)}); run the command "
                          "again.") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != planned.identity:
            raise EduGPTError(f"{planned.path} was replaced while publishing; run the command again.")
        if link:
            try:
                os.link(planned.path, target, follow_symlinks=False)
                linked = os.lstat(target)
                if (linked.st_dev, linked.st_ino) == planned.identity:
                    return True
                target.unlink()
                raise EduGPTError(f"{planned.path} was replaced while publishing; run the command again.")
            except OSError:
                pass  # no hardlinks here (another filesystem, FUSE...): copy
        if tokens is not None:
            if _has_token(lambda n: os.read(fd, n), tokens):
                raise _token_error(str(planned.path))
            os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return False
    finally:
        os.close(fd)


def stage(upload: BranchUpload, dest: Path, *, link: bool) -> list[tuple[Path, str]]:
    """Write the upload as folder `dest` (it must not exist or be empty): its files and README.md, the card. With
    `link`, large files are hardlinked and returned as (staged path, label) for the caller to scan; everything
    copied was scanned before it was written, so a token never lands in a dry-run folder."""
    tokens = [t.encode() for t in _known_tokens()]
    dest.mkdir(parents=True, exist_ok=True)
    unscanned = []
    for rel, planned in upload.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if _place(planned, target, link=link and planned.size >= LINK_MIN_BYTES, tokens=tokens):
            unscanned.append((target, str(planned.path)))
    if _bytes_have_token(upload.card.encode(), tokens):  # after the files: a token the card quotes names its file
        raise _token_error(f"the generated {rundir.CARD} for {upload.branch}")
    (dest / rundir.CARD).write_text(upload.card, encoding="utf-8")
    return unscanned


def write_dry_run(plan: PublishPlan, dest: str | os.PathLike) -> Path:
    """Write each branch's exact upload as DEST/<branch>/ plus DEST/plan.json, atomically (all or nothing)."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise EduGPTError(f"--dry_run folder {dest} already exists and is not empty; pass a new folder.")
    ensure_dir(dest.parent, "--dry_run's parent folder")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as err:
        raise EduGPTError(f"--dry_run {dest} cannot be written ({os.strerror(err.errno)}); pass a folder you can "
                          "write to.") from None
    try:
        for upload in plan.uploads:
            stage(upload, tmp / upload.branch, link=False)  # copies: editing the dry run never touches the run
        (tmp / "plan.json").write_text(json.dumps(plan.to_json(), indent=2) + "\n", encoding="utf-8")
        if dest.exists():
            dest.rmdir()
        os.replace(tmp, dest)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and (reason := no_space_reason(err)):
            raise EduGPTError(f"no space left while writing the dry run into {dest} ({reason}); free space there or "
                              "pass another --dry_run folder (nothing was left there).") from None
        raise
    return dest


# ------------------------------------------------------------------------------------------------------------- upload
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


class PushError(EduGPTError):
    """The Hub refused or could not take an upload; `reason` is the short cause (exception type and scrubbed text)."""

    def __init__(self, repo_id: str, reason: str):
        self.reason = reason
        super().__init__(f"pushing to {repo_id} failed ({reason}); the local run is unchanged, check the repo id and "
                         "that your token has write access, then run publish.py again.")


@dataclass
class _Staged:
    branch: str
    folder: Path
    message: str
    delete_patterns: list[str] | None
    unscanned: list[tuple[Path, str]]
    due: bool = True


class HubPusher:
    """Uploads of one run directory to one repo, each staged, scanned and uploaded by `upload_folder`.

    `push(upload)` does it now and raises. `submit(upload)` stages now (hardlinks: instant, and the checkpoint may
    then be deleted) and scans and uploads on a background thread, one upload at a time, never raising; a failed
    upload is kept and tried again at the next `submit` (the next save) and by `finish_pending()`, and `failures`
    says what is still not on the Hub. A newer upload to the same branch replaces one that has not started yet."""

    def __init__(self, run_dir: str | os.PathLike, repo_id: str, *, private: bool | None = None):
        self.run_dir = Path(run_dir)
        self.repo_id = repo_id
        self.private = private
        self.failures: dict[str, str] = {}  # branch -> why its last attempt failed
        self._api = None
        self._lock = threading.Lock()
        self._pending: dict[str, _Staged] = {}
        self._thread: threading.Thread | None = None
        self._current: _Staged | None = None  # the upload the background thread is working on
        self._staging_root: Path | None = None

    # ---- staging
    def _staging(self) -> Path:
        if self._staging_root is None:
            root = self.run_dir / STAGING
            try:
                if not os.path.lexists(root):
                    root.mkdir(mode=0o700)
                    note_written(root, "staging", root=self.run_dir)
                if Record.load(self.run_dir).role(STAGING) != "staging":
                    raise OSError(f"{root} is not the run's own staging folder")
            except OSError:  # a read-only run directory, or a folder of that name not ours: stage in /tmp (copies)
                root = Path(tempfile.mkdtemp(prefix="edugpt-upload-"))
            self._staging_root = root
        return self._staging_root

    def _stage(self, upload: BranchUpload) -> _Staged:
        """Stage into a temporary name, renamed to BRANCH.XXXX once whole: a kill mid-way leaves no folder that the
        next attempt would take for a complete checkpoint."""
        root = self._staging()
        partial = Path(tempfile.mkdtemp(prefix="partial.", dir=root))
        try:
            unscanned = stage(upload, partial, link=True)
            folder = Path(tempfile.mkdtemp(prefix=f"{upload.branch.replace('/', '_')}.", dir=root))
            os.replace(partial, folder)  # onto the empty folder just made: the name is ours alone
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        unscanned = [(folder / path.relative_to(partial), label) for path, label in unscanned]
        return _Staged(upload.branch, folder, upload.message, upload.delete_patterns, unscanned)

    def adopt_pending(self) -> None:
        """Take up step branches a previous attempt of this run staged but could not push (retried at the next save
        and at the end); drop its other leftovers (a main push that a newer one supersedes anyway)."""
        staging = self.run_dir / STAGING
        if Record.load(self.run_dir).role(STAGING) != "staging":
            return
        steps = pending_steps(self.run_dir)
        for path in staging.iterdir():
            if path not in steps.values() and path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
        for step, folder in steps.items():
            files, _ = _collect(folder, Record(self.run_dir), _take_all)
            self._pending[f"step-{step}"] = _Staged(
                f"step-{step}", folder, f"Upload checkpoint-{step} as step-{step} with edugpt", ["*"],
                [(folder / rel, f"{folder}/{rel}") for rel in files], due=False)

    def _tidy(self) -> None:
        if self._staging_root is not None and not self._pending:
            try:
                self._staging_root.rmdir()  # only when empty
            except OSError:
                return
            if self._staging_root == self.run_dir / STAGING:
                update(self.run_dir, lambda run: run.forget(self.run_dir / STAGING))
            self._staging_root = None

    # ---- uploading
    def _hub(self):
        if self._api is None:
            from huggingface_hub import HfApi

            api = HfApi()
            self.repo_id = api.create_repo(self.repo_id, private=self.private, exist_ok=True).repo_id
            self._api = api
        return self._api

    def _upload(self, staged: _Staged) -> None:
        """Scan, then upload; raises EduGPTError for a token, PushError when the Hub fails."""
        tokens = [t.encode() for t in _known_tokens()]
        for path, label in staged.unscanned:
            scan_file(path, label, tokens)
        try:
            api = self._hub()
            if staged.branch != "main":
                api.create_branch(self.repo_id, branch=staged.branch, exist_ok=True)
            api.upload_folder(repo_id=self.repo_id, folder_path=str(staged.folder), revision=staged.branch,
                              commit_message=staged.message, delete_patterns=staged.delete_patterns)
        except Exception as err:
            raise PushError(self.repo_id, f"{type(err).__name__}: {scrub(str(err))}") from None
        logger.info("pushed %s to %s", staged.branch, self.repo_id)  # one line per branch pushed (a failure: _failed)
        if staged.branch.startswith("step-"):  # a staged copy left by an earlier attempt is now on the Hub
            for step, folder in _staged_steps(self.run_dir):
                if f"step-{step}" == staged.branch and folder != staged.folder:
                    shutil.rmtree(folder, ignore_errors=True)

    def push(self, upload: BranchUpload) -> None:
        """Stage, scan and upload now; an upload still waiting for the same branch is superseded."""
        self.wait()
        with self._lock:
            old = self._pending.pop(upload.branch, None)
        staged = None
        try:
            staged = self._stage(upload)
            self._upload(staged)
            self.failures.pop(upload.branch, None)
        except EduGPTError as err:
            self.failures[upload.branch] = getattr(err, "reason", str(err))
            raise
        finally:
            for folder in (staged.folder if staged else None, old.folder if old else None):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            self._tidy()

    def submit(self, upload: BranchUpload) -> None:
        """Stage now, upload in the background; never raises (a failure is logged and kept in `failures`)."""
        try:
            staged = self._stage(upload)
        except Exception as err:
            self._failed(upload.branch, err)
            return
        with self._lock:
            old = self._pending.get(upload.branch)
            self._pending[upload.branch] = staged
            for waiting in self._pending.values():
                waiting.due = True  # this save retries every upload that failed before
            if old is not None and old is not self._current:
                shutil.rmtree(old.folder, ignore_errors=True)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="edugpt-hub-push", daemon=True)
                self._thread.start()

    def _failed(self, branch: str, err: Exception) -> None:
        reason = getattr(err, "reason", None) or (str(err) if isinstance(err, EduGPTError)
                                                  else f"{type(err).__name__}: {scrub(str(err))}")
        self.failures[branch] = reason
        again = "; it is tried again at the next save and at the end" if isinstance(err, PushError) else ""
        logger.warning("pushing %s to %s failed (%s)%s", branch, self.repo_id, reason, again)

    def _work(self) -> None:
        # A daemon thread: if the process ends mid-upload, the Hub keeps no partial commit and the staged files stay
        # in RUN_DIR/.edugpt-upload for the next attempt.
        while True:
            with self._lock:
                due = [s for s in self._pending.values() if s.due]
                if not due:
                    self._thread = None
                    return
                staged = due[0]
                staged.due = False
                self._current = staged
            done = False
            try:
                self._upload(staged)
                self.failures.pop(staged.branch, None)
                done = True
            except EduGPTError as err:
                self._failed(staged.branch, err)
                done = not isinstance(err, PushError)  # a token: trying again cannot help, the files stay local
            except Exception as err:  # anything else must not end the thread silently
                self._failed(staged.branch, err)
            with self._lock:
                self._current = None
                current = self._pending.get(staged.branch) is staged
                if done and current:
                    del self._pending[staged.branch]
                if done or not current:
                    shutil.rmtree(staged.folder, ignore_errors=True)

    def wait(self) -> None:
        """Until the background thread has nothing left to try."""
        while (thread := self._thread) is not None:
            thread.join()

    def finish_pending(self) -> dict[str, str]:
        """Try every upload still waiting once more, now; returns {branch: reason} of those that remain unpushed
        (staged in RUN_DIR/.edugpt-upload: the same command again, or publish.py --branches, pushes them)."""
        self.wait()
        with self._lock:
            for waiting in self._pending.values():
                waiting.due = True
            self._thread = threading.current_thread()
        self._work()
        self._tidy()
        return dict(self.failures)


# ------------------------------------------------------------------------------------------------ pushes of a training
class TrainerPushes:
    """A training run's pushes, all through the guarded path. Installed on one Trainer instance (also TRL's SFTTrainer
    and DPOTrainer, hence no subclass): `push_to_hub` and `_push_from_checkpoint` (hub_strategy, at every save) are
    replaced by versions that plan, stage, scan and upload as publish.py does, instead of Trainer's upload of all of
    output_dir (its lock file, corrupt checkpoints, whatever a symlink there points to). The pushes of a save happen
    in edugpt.train.callbacks.HubPushCallback.on_save, after the checkpoint's completion marker is written, so a pushed
    checkpoint can be resumed from: main with hub_strategy, and with `step_branches` branch step-N."""

    def __init__(self, trainer, output_dir: str | os.PathLike, training_args, *, step_branches: bool = False):
        from edugpt.train.callbacks import HubPushCallback

        self.trainer = trainer
        self.output_dir = Path(output_dir).resolve()
        self.args = training_args
        self.step_branches = step_branches
        self.main_branch = training_args.hub_revision or "main"
        self.pusher = None
        self._checkpoint_for_main: str | None = None  # set by Trainer's hub_strategy call, pushed at on_save
        if trainer.is_world_process_zero():
            self.pusher = HubPusher(self.output_dir, training_args.hub_model_id, private=training_args.hub_private_repo)
            self.pusher.adopt_pending()
        trainer._push_from_checkpoint = self._push_from_checkpoint
        trainer.push_to_hub = self.push_to_hub
        trainer.add_callback(HubPushCallback(self))

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        # Trainer calls this inside _save_checkpoint, before the on_save callbacks: note it, push in on_saved.
        if self.pusher is not None and self.args.hub_strategy != "end":
            self._checkpoint_for_main = checkpoint_folder

    def on_saved(self, step: int) -> None:
        """After a save (rank 0): the hub_strategy push to main and the step-N branch, both in the background."""
        if self.pusher is None:
            return
        if self._checkpoint_for_main is not None:
            checkpoint, self._checkpoint_for_main = self._checkpoint_for_main, None
            self.push_from_checkpoint(checkpoint)
        if self.step_branches:
            self.push_step(step)

    @property
    def repo_id(self) -> str:
        return self.args.hub_model_id

    def push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """Trainer's hub_strategy push at a save, in the background: main gets the checkpoint's model and the run's
        record ("checkpoint" / "all_checkpoints": also the checkpoint with its resume state, as Trainer does)."""
        state = self.trainer.state
        message = (f"Training in progress, step {state.global_step}" if self.args.save_strategy == "steps"
                   else f"Training in progress, epoch {int(state.epoch or 0)}")
        strategy = getattr(self.args.hub_strategy, "value", self.args.hub_strategy)  # HubStrategy enum or str
        copy = {"checkpoint": "last-checkpoint", "all_checkpoints": Path(checkpoint_folder).name}.get(strategy)
        try:
            upload = plan_main(self.output_dir, self.repo_id, model_dir=checkpoint_folder, branch=self.main_branch,
                               message=message, checkpoint_copy=copy)
        except Exception as err:  # never fail the training step
            self.pusher._failed(self.main_branch, err)
            return
        self.pusher.submit(upload)

    def push_step(self, step: int) -> None:
        """checkpoint-`step` to branch step-N, in the background."""
        if self.pusher is None:
            return
        branch = f"step-{step}"
        try:
            upload = plan_branch(self.output_dir, self.output_dir / f"checkpoint-{step}", self.repo_id, step=step)
        except Exception as err:  # never fail the training step
            self.pusher._failed(branch, err)
            return
        self.pusher.submit(upload)

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True, token=None,
                    revision: str | None = None, private: bool | None = None, **kwargs):
        """Trainer.push_to_hub's contract (save the model on every rank, push from rank 0), through the guarded path."""
        before = rundir.entries(self.output_dir) if self.pusher is not None else {}
        self.trainer.save_model(_internal_call=True)
        if self.pusher is None:
            return None
        rundir.record_saved_model(self.output_dir, before)
        self.pusher.push(self._final_upload(commit_message, revision or self.main_branch))
        return f"https://huggingface.co/{self.pusher.repo_id}"

    def _final_upload(self, message: str | None, branch: str) -> BranchUpload:
        """main from the final model in output_dir, its card as the local one (lm-eval results found the same way)."""
        lm_eval = rundir.find_lm_eval_results(self.output_dir)
        return plan_main(self.output_dir, self.repo_id, branch=branch, message=message,
                         eval_results=lm_eval["_path"] if lm_eval else None)

    def finish(self, message: str = "End of training") -> dict[str, str]:
        """The end of training (rank 0, the final model saved in output_dir): let the background pushes finish, push
        main, try the failed ones once more. Returns {branch: reason} of what is not on the Hub."""
        if self.pusher is None:
            return {}
        try:
            self.pusher.push(self._final_upload(message, self.main_branch))
        except EduGPTError:
            pass  # recorded in the pusher's failures
        return self.pusher.finish_pending()


# ---------------------------------------------------------------------------------------------------------- publish.py
def _print_plan(plan: PublishPlan) -> None:
    for upload in plan.uploads:
        print(f"{upload.branch:>12}: {len(upload.files) + 1} files, {upload.total_bytes() / 1e6:.1f} MB "
              f"from {upload.source} ({len(upload.excluded)} left out)")
        resume = [e for e in upload.excluded if e["reason"] == RESUME]
        for entry in upload.excluded:
            if entry["reason"] != RESUME:
                print(f"{'':>12}  left out {entry['path']}: {entry['reason']}")
        if resume:
            print(f"{'':>12}  left out {len(resume)} resume-state files (--include_optimizer uploads them)")
    for skipped in plan.skipped:
        print(f"     skipped: {skipped['path']} ({skipped['reason']})")


def publish_run(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                include_optimizer: bool = False, dry_run: str | os.PathLike | None = None,
                eval_dir: str | os.PathLike | None = None, private: bool | None = None,
                license: str = DEFAULT_LICENSE) -> str:
    """Plan, then either write the dry-run folder or push (main first, then each step-N branch) and record the repo in
    the run's published.json. Everything is scanned for tokens before it is written or uploaded. Returns the folder
    path or repo URL."""
    if dry_run is None:
        hub_model_id = require_push_ready(hub_model_id)  # before any work: no token / no network fails in a second
    plan = plan_publish(run_dir, hub_model_id, branches=branches, include_optimizer=include_optimizer,
                        eval_dir=eval_dir, license=license)
    _print_plan(plan)
    if dry_run is not None:
        return str(write_dry_run(plan, dry_run))
    pusher = HubPusher(Path(run_dir).resolve(), plan.repo_id, private=private)
    for upload in plan.uploads:
        pusher.push(upload)
        print(f"pushed {upload.branch}: {len(upload.files) + 1} files from {upload.source}")
    rundir.write_published(run_dir, pusher.repo_id, [upload.branch for upload in plan.uploads])
    return f"https://huggingface.co/{pusher.repo_id}"


def pushes_failed_error(output_dir: str | os.PathLike, repo_id: str, failures: dict[str, str],
                        main_branch: str = "main") -> EduGPTError:
    """The one error a run whose pushes failed ends with: the model is local, and this is how to push the rest."""
    steps = sorted((b for b in failures if b != main_branch), key=lambda b: int(b.removeprefix("step-"))
                   if b.removeprefix("step-").isdigit() else 0)
    branches = " --branches" if steps else ""
    if main_branch in failures:
        also = f" ({', '.join(steps)} not pushed either)" if steps else ""
        return EduGPTError(
            f"the model is saved in {output_dir}, but pushing it to {repo_id} failed ({failures[main_branch]}){also}; "
            f"check the network and your token's write access, then run the same command again or "
            f"`python publish.py {output_dir} --hub_model_id {repo_id}{branches}`."
        )
    shown = "; ".join(f"{b}: {failures[b]}" for b in steps[:3]) + ("; ..." if len(steps) > 3 else "")
    return EduGPTError(
        f"the model is saved in {output_dir} and pushed to {repo_id}, but {len(steps)} checkpoint branch(es) could not "
        f"be pushed ({shown}); their files are kept in {Path(output_dir) / STAGING}: run the same command again or "
        f"`python publish.py {output_dir} --hub_model_id {repo_id} --branches`."
    )


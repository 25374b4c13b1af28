"""The upload plan: which files of a run go up, to which branch, and why each other one stays local. A record, not a
pattern: only what the run's record (edugpt.run.record) says the run wrote, and that is still the file it wrote, is
ever uploaded.

`main` (plan_main) gets the final model's files and the run's record (run_config.json, data_manifest.json,
metrics.jsonl, samples.md, the plots in images/, TensorBoard's event files); a step-N branch (plan_branch) gets its
checkpoint's model files. Resume state (optimizer, scheduler, RNG, trainer state, training_args.bin, completion marker)
goes up only with `include_optimizer` (or `hub_strategy checkpoint`, whose point it is). Hidden files (the run's lock
and record), corrupt-checkpoint-N, whatever the user put in the folder (in images/ and runs/ too), a file edited since
the run wrote it, and every symlink (wherever it points: nothing outside the run directory is ever read for an upload)
stay local; the plan says which and why. The model card is built from exactly the planned files, so it links only
images that go up.

A PlannedFile is a regular file found without following any link; `place_file` reads it only if the path still names
that very file (opened without following a link), as a hardlink or a copy, so nothing swapped in since is read.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.config.arguments import DEFAULT_LICENSE
from edugpt.errors import EduGPTError
from edugpt.hub.secrets import has_token, token_error
from edugpt.io.net import require_repo_id
from edugpt.model.saved import WEIGHT_FILES
from edugpt.run import rundir
from edugpt.run.record import RECORD, Record, find_root

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


def place_file(planned: PlannedFile, target: Path, *, link: bool, tokens: list[bytes] | None) -> bool:
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
            if has_token(lambda n: os.read(fd, n), tokens):
                raise token_error(str(planned.path))
            os.lseek(fd, 0, os.SEEK_SET)
        with os.fdopen(os.dup(fd), "rb") as src, open(target, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        os.chmod(target, stat.S_IMODE(st.st_mode))
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
        return False
    finally:
        os.close(fd)


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


def take_all(rel: str, name: str, is_dir: bool):
    return _TAKE


def collect_files(folder: Path, run: Record, classify, prefix: str = "") -> tuple[dict[str, PlannedFile], list[dict]]:
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
                sub_files, sub_excluded = collect_files(Path(entry.path), run, classify, rel + "/")
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
    return "config.json" in files and any(name in files for name in WEIGHT_FILES)


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
                place_file(planned, target, link=False, tokens=None)
        card = build_model_card(view, eval_dir=eval_results, hub_model_id=hub_model_id, license=license,
                                revision=revision)
    return str(card)


def _card_inputs(run: Record, run_dir: Path, model_dir: Path) -> dict[str, PlannedFile]:
    """The run's record, for a card whose upload does not carry it, and a trainer_state.json (of the save, else the
    run's) for the loss history."""
    found, _ = collect_files(run_dir, run, _rules(run, model=False, record=True))
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
        files, excluded = collect_files(run_dir, run, _rules(run, record=True, resume=include_optimizer))
    else:
        files, excluded = collect_files(model_dir, run, _rules(run, resume=include_optimizer))
        excluded = _prefixed(excluded, model_dir.name)
        found, found_excluded = collect_files(run_dir, run, _rules(run, model=False, record=True,
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
        state, _ = collect_files(model_dir, run, _rules(run, resume=True))
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
    files, excluded = collect_files(checkpoint, run, take_all if staged else _rules(run, resume=include_optimizer))
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


def staged_steps(run_dir: str | os.PathLike) -> list[tuple[int, Path]]:
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
    return dict(staged_steps(run_dir))


def plan_publish(run_dir: str | os.PathLike, hub_model_id: str, *, branches: bool = False,
                 include_optimizer: bool = False, eval_dir: str | os.PathLike | None = None,
                 license: str = DEFAULT_LICENSE) -> PublishPlan:
    """What `publish` would upload: `main` from the run directory's root, and `step-N` per checkpoint-N if asked
    (also for a step whose push during training failed after its checkpoint was deleted: its staged copy)."""
    require_repo_id(hub_model_id)
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


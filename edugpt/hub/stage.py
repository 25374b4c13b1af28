"""Staging: an upload written as one folder, exactly what goes up. Large files are hardlinked (instant, no extra disk;
a checkpoint deleted by save_total_limit meanwhile stays intact) and returned for the caller to scan before it
uploads; small ones are copied (a snapshot of files training appends to), each scanned for tokens before it is
written. Each is opened without following links and must still be the very file that was planned (plan.place_file).
A dry run is this folder, written all or nothing.

Pushes stage into the run's own staging folder, RUN_DIR/.edugpt-upload (0700, recorded as the run's: nobody else
writes into it; in /tmp when the run directory is read-only). Each upload is staged under a temporary name, renamed to
BRANCH.XXXX once whole, so a kill mid-way leaves no folder the next attempt would take for a complete checkpoint; a
step-N upload whose push failed waits there for the next attempt, even after its checkpoint was deleted.

(Why not upload_folder on the run directory with allow_patterns: its file listing reads through symlinked files, and
a pattern cannot tell a link from a file.)
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.hub.plan import (
    LINK_MIN_BYTES,
    STAGING,
    BranchUpload,
    PublishPlan,
    collect_files,
    pending_steps,
    place_file,
    take_all,
)
from edugpt.hub.secrets import bytes_have_token, known_token_bytes, token_error
from edugpt.io.atomic import no_space_reason
from edugpt.io.safefs import ensure_dir
from edugpt.run import rundir
from edugpt.run.record import Record, note_written, update


def stage(upload: BranchUpload, dest: Path, *, link: bool) -> list[tuple[Path, str]]:
    """Write the upload as folder `dest` (it must not exist or be empty): its files and README.md, the card. With
    `link`, large files are hardlinked and returned as (staged path, label) for the caller to scan; everything
    copied was scanned before it was written, so a token never lands in a dry-run folder."""
    tokens = known_token_bytes()
    dest.mkdir(parents=True, exist_ok=True)
    unscanned = []
    for rel, planned in upload.files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if place_file(planned, target, link=link and planned.size >= LINK_MIN_BYTES, tokens=tokens):
            unscanned.append((target, str(planned.path)))
    if bytes_have_token(upload.card.encode(), tokens):  # after the files: a token the card quotes names its file
        raise token_error(f"the generated {rundir.CARD} for {upload.branch}")
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



# ------------------------------------------------------------------------------------------- the run's staging folder
@dataclass
class StagedUpload:
    """An upload staged as `folder`, waiting for its push; `unscanned` (hardlinked files) are scanned just before it."""

    branch: str
    folder: Path
    message: str
    delete_patterns: list[str] | None
    unscanned: list[tuple[Path, str]]
    due: bool = True


def staging_root(run_dir: Path) -> Path:
    """RUN_DIR/.edugpt-upload, made (0700) and recorded as the run's staging folder if new."""
    root = run_dir / STAGING
    try:
        if not os.path.lexists(root):
            root.mkdir(mode=0o700)
            note_written(root, "staging", root=run_dir)
        if Record.load(run_dir).role(STAGING) != "staging":
            raise OSError(f"{root} is not the run's own staging folder")
    except OSError:  # a read-only run directory, or a folder of that name not ours: stage in /tmp (copies)
        root = Path(tempfile.mkdtemp(prefix="edugpt-upload-"))
    return root


def stage_upload(upload: BranchUpload, root: Path) -> StagedUpload:
    """Stage into a temporary name, renamed to BRANCH.XXXX once whole: a kill mid-way leaves no folder that the
    next attempt would take for a complete checkpoint."""
    partial = Path(tempfile.mkdtemp(prefix="partial.", dir=root))
    try:
        unscanned = stage(upload, partial, link=True)
        folder = Path(tempfile.mkdtemp(prefix=f"{upload.branch.replace('/', '_')}.", dir=root))
        os.replace(partial, folder)  # onto the empty folder just made: the name is ours alone
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    unscanned = [(folder / path.relative_to(partial), label) for path, label in unscanned]
    return StagedUpload(upload.branch, folder, upload.message, upload.delete_patterns, unscanned)


def staged_leftovers(run_dir: Path) -> dict[str, StagedUpload]:
    """The step branches a previous attempt of this run staged but could not push (not due: retried at the next save
    and at the end), by branch; its other leftovers (a main push that a newer one supersedes anyway) are removed."""
    staging = run_dir / STAGING
    if Record.load(run_dir).role(STAGING) != "staging":
        return {}
    steps = pending_steps(run_dir)
    for path in staging.iterdir():
        if path not in steps.values() and path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
    leftovers = {}
    for step, folder in steps.items():
        files, _ = collect_files(folder, Record(run_dir), take_all)
        leftovers[f"step-{step}"] = StagedUpload(
            f"step-{step}", folder, f"Upload checkpoint-{step} as step-{step} with edugpt", ["*"],
            [(folder / rel, f"{folder}/{rel}") for rel in files], due=False)
    return leftovers


def remove_staging_root(run_dir: Path, root: Path) -> bool:
    """Remove the staging folder `root` if it is empty (the run's own: also from its record); False if it is not."""
    try:
        root.rmdir()  # only when empty
    except OSError:
        return False
    if root == run_dir / STAGING:
        update(run_dir, lambda run: run.forget(run_dir / STAGING))
    return True

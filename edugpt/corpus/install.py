"""Putting a prepared dataset at --output_dir, and what may be replaced or deleted on the way.

Beside DIR, and only while a job writes it: `.DIR.lock` (the `DirLock` every job writing DIR holds; the file stays),
`.DIR.tmp/` (holding `dataset/`, the dataset being written), `.DIR.swap.json` + `.DIR.old/` (the journalled swap; see
`move_into_place`). What is deleted is decided by records, never by names: a folder this project makes holds
`.edugpt-made.json` with its own (st_dev, st_ino) (`make_dir`, `made_here`); `.DIR.old` is the old dataset only when
the journal's identity of it says so; and `--overwrite` replaces only a prepared dataset whose every file is in its
manifest's record (`replace_refusal`), never the input (`check_not_input`). Both executors install through here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import stat
from pathlib import Path

from edugpt.corpus.manifest import FORMAT, MANIFEST, check_manifest, record_problems
from edugpt.corpus.sources import Source
from edugpt.errors import EduGPTError
from edugpt.io.safefs import DirLock, atomic_write_text

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------- record
# What prepare_data.py may delete is decided by what it recorded when it wrote it, never by a name: a dataset's files
# by the manifest's `files` (path -> size), a folder it made by the (st_dev, st_ino) written into it.

MADE = ".edugpt-made.json"


def replace_refusal(path: Path) -> str | None:
    """Why `path` (an existing, non-empty folder) must not be replaced by --overwrite; None for a prepared dataset
    whose every file is the one its manifest records."""
    if path.is_symlink() or not path.is_dir():
        return "is not a dataset prepared by prepare_data.py"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return "is not a dataset prepared by prepare_data.py"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "is not a dataset prepared by prepare_data.py (of this version)"
    if (path / MANIFEST).is_symlink():
        return f"is not a dataset prepared by prepare_data.py ({MANIFEST} is a symbolic link)"
    try:
        check_manifest(manifest, path / MANIFEST)
    except EduGPTError:
        return f"is not a dataset prepared by prepare_data.py (its {MANIFEST} lacks keys or holds values of other types)"
    problems = record_problems(path, manifest)
    if problems:
        return f"holds what its manifest does not record: {problems[0]}"
    return None


def check_dataset_output(path: Path, overwrite: bool) -> None:
    """Refuse an output_dir that is not new or empty, unless it is a prepared dataset, unchanged since it was written
    (`replace_refusal`), and `overwrite` is set."""
    if path.is_symlink():
        raise EduGPTError(f"--output_dir {str(path)!r} is a symbolic link; pass the real path of the folder.")
    if path.exists() and not path.is_dir():
        raise EduGPTError(f"--output_dir {str(path)!r} is a file; pass a directory path.")
    if not path.exists() or not any(path.iterdir()):
        return
    refusal = replace_refusal(path)
    if refusal:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty, and {refusal}, so it is never "
                          "replaced (not even with --overwrite); choose a new directory (or move out of it what "
                          "prepare_data.py did not write).")
    if not overwrite:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty (a prepared dataset); pass --overwrite "
                          "to replace it or choose a new directory.")


def make_dir(path: Path) -> Path:
    """Create folder `path` (it must not exist) and record in it that this project made it: `made_here` is then the
    proof needed before deleting it."""
    path.mkdir()
    st = path.lstat()
    try:
        atomic_write_text(path / MADE, json.dumps({"made_by": "prepare_data.py", "st_dev": st.st_dev,
                                                   "st_ino": st.st_ino}) + "\n")
    except BaseException:
        path.rmdir()  # still empty: a folder without its record could never be removed again
        raise
    return path


def made_here(path: Path) -> bool:
    """Whether `path` is a real folder (not a symlink) that `make_dir` made: its record holds its own identity."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            return False
        fd = os.open(path / MADE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        made = json.loads(os.read(fd, 4096))
        return [made["st_dev"], made["st_ino"]] == [st.st_dev, st.st_ino]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    finally:
        os.close(fd)


def remove_made(path: Path) -> bool:
    """Delete folder `path` if `make_dir` made it (else leave it, with a warning); True when it was deleted."""
    if not made_here(path):
        if path.exists() or path.is_symlink():
            logger.warning("left %s alone: nothing records that prepare_data.py made it", path)
        return False
    shutil.rmtree(path)
    return True


def check_not_input(out: Path, source: Source) -> None:
    """Refuse an output_dir that is the input, lies inside it, or holds it (symlinks resolved): preparing must never
    replace, mix into or delete the corpus it reads."""
    if source.kind != "local":
        return
    for path in [Path(source.dataset), *map(Path, source.files)]:
        if relation := overlap(out, path):
            raise EduGPTError(f"--output_dir {str(out)!r} {relation} the input {str(path)!r}; write the prepared "
                              "dataset to a folder outside the input.")


def overlap(path: Path, other: Path) -> str | None:
    """How `path` stands to `other`, symlinks resolved: "is", "lies inside", "holds", or None when apart."""
    path, other = path.resolve(), other.resolve()
    if path == other:
        return "is"
    return "lies inside" if other in path.parents else "holds" if path in other.parents else None


def lock_path(out: Path) -> Path:
    """`.NAME.lock` beside the output (which may not exist yet, and is swapped by renames, so cannot hold its own
    lock). Never deleted: see `safefs.DirLock`."""
    return out.parent / f".{out.name}.lock"


def output_lock(out: Path) -> DirLock:
    """The lock every job writing `out` holds (the default path; the datatrove launcher and its merge)."""
    return DirLock(lock_path(out), f"--output_dir {out}")


# ------------------------------------------------------------------------------------------------------------ swap
# The one place where a prepared dataset appears at --output_dir, whichever executor made it. Every step runs under
# the output's lock. The journal `.NAME.swap.json` is written (fsync'd) before the first rename: from then on the swap
# is decided, and `recover_swap` (the next run, under the lock) completes it from whatever point a kill stopped it at.
# The journal holds the (st_dev, st_ino) of the new dataset and of the old one: a folder is moved or deleted only while
# it is still that folder. The old dataset is deleted only once the new one is in place, and only the files its own
# manifest records; there is never a moment with both gone.

def swap_journal(out: Path) -> Path:
    return out.parent / f".{out.name}.swap.json"


def swap_step(step: str) -> None:
    """Called between the swap's steps; tests replace it to stop the swap there, as a kill would."""


def check_swap_room(out: Path) -> None:
    """Refuse to replace `out` while `.NAME.old`, where the swap moves it, holds something (not ours, or it would have
    been removed: see `remove_leftovers`). Call with the output's lock held (an interrupted swap is completed first)."""
    old = out.parent / f".{out.name}.old"
    if _identity(out) is not None and os.path.lexists(old):
        raise EduGPTError(f"{str(old)!r} is in the way of replacing {str(out)!r}; move it elsewhere and re-run.")


def _identity(path: Path) -> list[int] | None:
    """(st_dev, st_ino) of a real folder at `path` (never through a symlink); None when there is none."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino] if stat.S_ISDIR(st.st_mode) else [-1, -1]


def move_into_place(new: Path, out: Path) -> None:
    """Swap the finished dataset `new` in at `out`; the old one (if any, with --overwrite) is removed last."""
    new, out = Path(os.path.abspath(new)), Path(os.path.abspath(out))
    old = out.parent / f".{out.name}.old"
    check_swap_room(out)
    if out.is_symlink() or (out.exists() and any(out.iterdir()) and replace_refusal(out)):
        check_dataset_output(out, overwrite=True)  # changed since the run began: refuse in its words
    _fsync_tree(new)  # the new dataset is on disk before the journal makes it the one to keep (a power cut)
    journal = swap_journal(out)
    atomic_write_text(journal, json.dumps({"new": str(new), "out": str(out), "old": str(old),
                                           "new_id": _identity(new), "old_id": _identity(out)}) + "\n")
    swap_step("journal written")
    _complete_swap(new, out, old, journal, _identity(new), _identity(out))


def _complete_swap(new: Path, out: Path, old: Path, journal: Path, new_id, old_id) -> None:
    """Each step is done only if it is not done yet, so running this again after a kill finishes the swap."""
    if _identity(new) is not None:
        if _identity(out) is not None:
            os.replace(out, old)
            _fsync_dir(out.parent)
            swap_step("old moved aside")
        os.replace(new, out)
        _fsync_dir(out.parent)
        swap_step("new in place")
    elif _identity(out) is None and _identity(old) is not None:  # cannot happen by our steps; never leave no dataset
        os.replace(old, out)
    if old_id is not None and _identity(old) == old_id:
        _remove_dataset(old)
        swap_step("old removed")
    journal.unlink()
    _fsync_dir(out.parent)


def _remove_dataset(root: Path) -> None:
    """Delete the files of a replaced dataset that its manifest records (each still the recorded plain file, found
    without following a symlink), then its emptied folders; anything else stays where it is, with a warning."""
    try:
        record = json.loads((root / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        record = None
    record = record if isinstance(record, dict) else {}
    for folder, _, names in os.walk(root):  # never into a symlinked folder
        for name in names:
            path = Path(folder) / name
            relative, st = path.relative_to(root).as_posix(), path.lstat()
            if stat.S_ISREG(st.st_mode) and (record.get(relative) == st.st_size or (relative == MANIFEST and record)):
                path.unlink()
    for folder, _, _ in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if os.path.lexists(root):
        left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        logger.warning("kept %s: it holds %s, which the replaced dataset's record does not list; look at it and delete "
                       "it yourself", root, ", ".join(left[:5]) or "a file")


def recover_swap(out: Path) -> None:
    """Finish a swap a kill interrupted (see above); a no-op when there is none. Call with the output's lock held."""
    journal = swap_journal(out)
    if not os.path.lexists(journal):
        return
    out = Path(os.path.abspath(out))
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # a symlink (ELOOP), a folder we cannot open: not a journal we wrote
        fd = None
    try:
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EduGPTError(f"{str(journal)!r} is not a journal prepare_data.py wrote (it is not a plain file); move "
                              f"it away (after checking {str(out)!r} and the folders beside it) and re-run.")
        text = os.read(fd, 1 << 16)
    finally:
        if fd is not None:
            os.close(fd)
    # Only the two places a swap ever starts from, and only our `.old`, each still the folder the journal recorded: a
    # journal naming anything else (damaged, or not written by us) must not make this delete or move a folder.
    allowed_new = {out.parent / f".{out.name}.tmp" / "dataset", out.parent / f".{out.name}.prepare" / "dataset"}
    try:
        paths = json.loads(text)
        new, old = Path(os.path.abspath(paths["new"])), Path(os.path.abspath(paths["old"]))
        new_id, old_id = paths["new_id"], paths["old_id"]
        if new not in allowed_new or old != out.parent / f".{out.name}.old" or \
                Path(os.path.abspath(paths["out"])) != out:
            raise ValueError("unexpected paths")
        if _identity(new) not in (None, new_id) or _identity(old) not in (None, old_id) or \
                _identity(out) not in (None, old_id, new_id):
            raise ValueError("a folder is not the one recorded")
    except (ValueError, KeyError, TypeError):
        raise EduGPTError(f"{str(journal)!r} is damaged or names folders that are not the ones it recorded; check "
                          f"{str(out)!r} and the folders beside it by hand, then delete the journal.") from None
    logger.warning("completing the replacement of %s that an interrupted run left half done", out)
    _complete_swap(new, out, old, journal, new_id, old_id)


def remove_leftovers(out: Path) -> None:
    """Delete what a killed run left beside the output: `.NAME.tmp` when it is the folder a run made (`made_here`).
    Anything else named like a leftover (`.NAME.old` without a journal, a `.NAME.tmp` nothing records as ours) is
    left alone with a warning. Only a job holding the output's lock calls this (after `recover_swap`)."""
    mine = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)")
    for path in sorted(p for p in out.parent.iterdir() if mine.fullmatch(p.name)):
        if path.name == f".{out.name}.tmp" and made_here(path):
            logger.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path)
        else:
            logger.warning("left %s alone: it is named like a leftover of prepare_data.py, but nothing records that "
                           "prepare_data.py made it", path)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (the kernel flushes what is still dirty; the rest costs nothing)."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a power cut after the swap must not bring the old state back)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)

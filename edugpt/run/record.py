"""The record of what edugpt wrote in a run directory: `.edugpt-record.json`, the one owner of "is this ours?".

Every file and folder a run writes into its output_dir is entered here when it is written: its path, its role, and
how to recognise it again: device, inode, size and modification time, and its SHA-256 (for a log the run keeps
appending to, the digest of its first 4 KiB), so that a run directory copied or moved elsewhere (`cp -r`, rsync)
is still recognised, by content, where the inode no longer says it.
Whatever may be deleted (`--overwrite_output_dir`, an interrupted attempt in a new folder), marked as part of the
final model, or uploaded is decided here, and only for an entry whose path still holds the very file or folder that
was recorded (`lstat`, never following a link). Anything else in the folder is the user's and is never touched: a
`config.json.bak` or `checkpoint-best/` beside the run, a file dropped into `images/`, a hardlink or symlink planted
under a name the run uses, a file edited since the run wrote it.

Roles (what the file is to the run):
    model       the final model's files in the root (config, weights, tokenizer, generation config, chat template)
    record      the run's own record: run_config.json, data_manifest.json, metrics.jsonl, samples.md, the card,
                images/*.png, TensorBoard event files, published.json, trainer_state.json
    state       resume-only state at the root (training_args.bin, a pickle: never uploaded without include_optimizer)
    checkpoint  a checkpoint-N/ folder and every file Trainer and edugpt wrote in it
    staging     the hidden folder uploads are staged in (edugpt.hub.stage)

Writes go through `note_written` (safefs.atomic_write_* call it for every file they write: a file written inside a
recorded run directory is recorded with the role its writer gives, "record" by default). Only the main process
writes, holding the run's lock; `python -m edugpt.report.card` and publish.py, which run beside it, update the record the
same way (read, change, atomic replace), so a card rewritten during training may race a save of the record: at worst
the card is not recorded, and so neither deleted nor uploaded until the next card is written.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import stat
import threading
from pathlib import Path

from edugpt.io.atomic import replace_whole

logger = logging.getLogger(__name__)

RECORD = ".edugpt-record.json"
FORMAT = 1
HASH_MAX_BYTES = 64 << 20  # files up to this size get their SHA-256 recorded when no digest is handed in
HEAD_BYTES = 4096  # a log the run appends to is recognised after a copy by the digest of its first bytes
ROLES = ("model", "record", "state", "checkpoint", "staging")
_lock = threading.Lock()  # the pusher thread and the training thread of one process


def _identity(path: Path) -> dict | None:
    """What `path` itself is (a link is not followed): a regular file or a folder, else None."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return {"type": "dir", "dev": st.st_dev, "ino": st.st_ino}
    if stat.S_ISREG(st.st_mode):
        return {"type": "file", "dev": st.st_dev, "ino": st.st_ino, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return None


class Record:
    """The record of one run directory. Load, `add`/`add_tree`/`forget`, `save`; or the module's `note_written`."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.entries: dict[str, dict] = {}
        self.path = self.root / RECORD
        self._digests: dict[str, str | None] = {}  # computed by matches(), once per file and Record

    @classmethod
    def load(cls, root: str | os.PathLike) -> Record:
        """The record of `root` (empty when there is none, or when it is not a regular file of ours: then nothing in
        the folder counts as written by edugpt, the safe reading)."""
        record = cls(root)
        try:
            fd = os.open(record.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return record
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                with os.fdopen(os.dup(fd), "rb") as f:
                    content = json.loads(f.read(64 << 20))
                entries = content.get("entries") if isinstance(content, dict) else None
                if isinstance(entries, dict):
                    record.entries = {k: v for k, v in entries.items() if isinstance(v, dict) and safe_rel(k)}
        except (ValueError, OSError, UnicodeDecodeError):
            logger.warning("%s is damaged: nothing in %s is taken as written by edugpt", record.path, root)
        finally:
            os.close(fd)
        return record

    @staticmethod
    def exists(root: str | os.PathLike) -> bool:
        try:
            return stat.S_ISREG(os.lstat(Path(root) / RECORD).st_mode)
        except OSError:
            return False

    def save(self) -> None:
        content = {"format": FORMAT, "entries": dict(sorted(self.entries.items()))}
        data = (json.dumps(content, indent=1) + "\n").encode()
        if _digest(self.path) == _sha256_bytes(data):
            return  # unchanged: the file (and its mtime) stays as it is
        replace_whole(self.path, data, mode=0o600)  # the record itself is not an entry of it

    # ----------------------------------------------------------------------------------------------------- writing
    def rel(self, path: str | os.PathLike) -> str | None:
        """`path` (absolute, or relative to the working directory like every path the run is given) relative to the
        root, as recorded (posix); None when it is not inside the root."""
        try:
            rel = Path(os.path.abspath(path)).relative_to(os.path.abspath(self.root))
        except ValueError:
            return None
        text = rel.as_posix()
        return text if safe_rel(text) else None

    def add(self, path: str | os.PathLike, role: str, *, appends: bool = False, sha256: str | None = None) -> bool:
        """Record the file or folder at `path` as written by this run, in `role`. `appends`: a log the run keeps
        appending to (metrics.jsonl, TensorBoard events), recognised by its inode alone. The folders between the root
        and `path` are recorded too (as folders of the same role), so removing the run can remove them when empty.
        `sha256`: the file's digest when the writer has it (a completion marker does); otherwise it is computed for
        files up to HASH_MAX_BYTES. Returns False (nothing recorded) for a symlink, anything but a file or folder, or a
        path outside the root."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        rel = self.rel(path)
        if rel is None:
            return False
        found = _identity(self.root / rel)
        if found is None:
            return False
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent not in self.entries and (ident := _identity(self.root / parent)) and ident["type"] == "dir":
                self.entries[parent] = {**ident, "role": role}
        entry = {**found, "role": role}
        if found["type"] == "file":
            if appends:
                entry["appends"] = True
                entry["head_bytes"] = min(found["size"], HEAD_BYTES)
                entry["head"] = _digest(self.root / rel, entry["head_bytes"])
            elif sha256 is not None:
                entry["sha256"] = sha256
            elif found["size"] <= HASH_MAX_BYTES:
                entry["sha256"] = _digest(self.root / rel)
        self.entries[rel] = entry
        return True

    def add_tree(self, folder: str | os.PathLike, role: str) -> None:
        """Record a folder the run just wrote whole (a checkpoint) and every regular file and folder inside it."""
        folder = Path(folder)
        if not self.add(folder, role):
            return
        for dirpath, dirnames, filenames in os.walk(folder):  # os.walk does not follow links to folders
            for name in dirnames + filenames:
                self.add(Path(dirpath) / name, role)

    def forget(self, path: str | os.PathLike) -> None:
        """Drop `path` (and, for a folder, everything under it) from the record."""
        rel = self.rel(path)
        if rel is not None:
            self.entries = {k: v for k, v in self.entries.items() if k != rel and not k.startswith(rel + "/")}

    def moved(self, old: str | os.PathLike, new: str | os.PathLike) -> None:
        """A recorded folder renamed by the run itself (a corrupt checkpoint set aside): its entries follow it."""
        old_rel, new_rel = self.rel(old), self.rel(new)
        if old_rel is None or new_rel is None:
            return
        moved = {}
        for key, entry in self.entries.items():
            if key == old_rel or key.startswith(old_rel + "/"):
                moved[new_rel + key[len(old_rel):]] = entry
        self.forget(old)
        self.entries.update(moved)

    def prune(self) -> None:
        """Forget entries whose file is gone (Trainer's rotation deletes old checkpoints) or is no longer ours."""
        self.entries = {k: v for k, v in self.entries.items() if self.matches(k)}

    # ----------------------------------------------------------------------------------------------------- reading
    def matches(self, rel: str) -> bool:
        """Does `rel` still hold the file recorded (and not a link)? The same inode, size and modification time say
        so at once; otherwise (a copied run directory) the same size and SHA-256 — for a log the run appends to, the
        same first bytes. A recorded folder matches any real folder at its path: removing one only ever removes it
        when empty."""
        entry = self.entries.get(rel)
        if entry is None:
            return False
        now = _identity(self.root / rel)
        if now is None or now["type"] != entry.get("type"):
            return False
        if now["type"] == "dir":
            return True
        same_inode = (now["dev"], now["ino"]) == (entry.get("dev"), entry.get("ino"))
        if entry.get("appends"):
            head = entry.get("head_bytes")
            return same_inode or (isinstance(head, int) and 0 < head <= now["size"]
                                  and _digest(self.root / rel, head) == entry.get("head"))
        if same_inode and (now["size"], now["mtime_ns"]) == (entry.get("size"), entry.get("mtime_ns")):
            return True
        return (now["size"] == entry.get("size") and entry.get("sha256") is not None
                and self._sha256(rel) == entry["sha256"])

    def _sha256(self, rel: str) -> str | None:
        if rel not in self._digests:
            self._digests[rel] = _digest(self.root / rel)
        return self._digests[rel]

    def role(self, rel: str) -> str | None:
        """The role of `rel` when it is still the recorded file or folder, else None."""
        return self.entries[rel].get("role") if self.matches(rel) else None

    def files(self, role: str | None = None, under: str | None = None) -> list[str]:
        """Recorded regular files that are still what was recorded, optionally of one role and under one folder."""
        prefix = None if under is None else under.rstrip("/") + "/"
        return sorted(k for k, v in self.entries.items() if v.get("type") == "file"
                      and (role is None or v.get("role") == role)
                      and (prefix is None or k.startswith(prefix)) and self.matches(k))

    # ---------------------------------------------------------------------------------------------------- removing
    def remove_written(self, keep: tuple[str, ...] = ()) -> list[str]:
        """Delete every recorded file that is still the one recorded, then every recorded folder left empty (deepest
        first), except the top-level names in `keep`; returns what was left in place (top-level entries), each with
        why. Nothing unrecorded, changed since it was written, or reached through a link is touched."""
        removed_dirs = []
        for rel in sorted(self.entries, key=lambda k: k.count("/"), reverse=True):
            if rel.split("/")[0] in keep or not self.matches(rel):
                continue
            path = self.root / rel
            try:
                if self.entries[rel]["type"] == "dir":
                    os.rmdir(path)  # only when empty: a user's file inside keeps its folder
                    removed_dirs.append(rel)
                else:
                    os.unlink(path)
            except OSError:
                continue
            del self.entries[rel]
        left = []
        for entry in sorted(os.scandir(self.root), key=lambda e: e.name):
            if entry.name in keep or entry.name == RECORD:
                continue
            why = "changed since the run wrote it" if entry.name in self.entries else "not written by a run"
            if entry.is_dir(follow_symlinks=False) and entry.name in self.entries:
                why = "holds files the run did not write"
            left.append(f"{entry.name} ({why})")
        return left


def _digest(path: Path, limit: int | None = None) -> str | None:
    """SHA-256 of the file at `path` (its first `limit` bytes), opened without following a link; None if unreadable."""
    import hashlib

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as f:
        if limit is not None:
            return hashlib.sha256(f.read(limit)).hexdigest()
        return hashlib.file_digest(f, "sha256").hexdigest()


def _sha256_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def safe_rel(rel: str) -> bool:
    """Is `rel` a path inside a run directory as a record or marker may name it (relative, no "..")?"""
    return bool(rel) and rel != "." and not rel.startswith("/") and ".." not in rel.split("/")


def find_root(path: str | os.PathLike, depth: int = 3) -> Path | None:
    """The run directory holding `path`: the nearest folder above it (at most `depth` levels) with a record."""
    folder = Path(os.path.abspath(path)).parent
    for _ in range(depth):
        if Record.exists(folder):
            return folder
        if folder.parent == folder:
            break
        folder = folder.parent
    return None


@contextlib.contextmanager
def _updating(root: Path):
    """Hold the right to change `root`'s record: this process's lock, and an flock on the run directory itself, so
    that `python -m edugpt.report.card` or publish.py beside a training job never loses an entry the other one just added
    (read, change, replace). Where the filesystem has no flock on folders (some NFS setups) only the first holds."""
    with _lock:
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            fd = None
        try:
            if fd is not None:
                with contextlib.suppress(OSError):
                    fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                os.close(fd)  # releases the flock


def note_written(path: str | os.PathLike, role: str = "record", *, appends: bool = False,
                 root: str | os.PathLike | None = None) -> None:
    """Record that edugpt just wrote `path`, in the record of the run directory it lies in (`root`, or the nearest
    one found above it); nothing when it lies in no run directory."""
    root = Path(root) if root is not None else find_root(path)
    if root is None:
        return
    update(root, lambda record: record.add(path, role, appends=appends))


def start(root: str | os.PathLike) -> Record:
    """Make `root` a recorded run directory (its record is created if absent) and return the record."""
    return update(root, lambda record: None)


def note_tree(folder: str | os.PathLike, role: str, root: str | os.PathLike) -> None:
    update(root, lambda record: record.add_tree(folder, role))


def update(root: str | os.PathLike, change) -> Record:
    """Load the record of `root`, apply `change(record)`, save it (only if it changed); returns the record."""
    with _updating(Path(root)):
        record = Record.load(root)
        change(record)
        record.save()
        return record

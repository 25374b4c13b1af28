"""Files that are whole or absent, folders that are new or left alone, and a lock that holds across hosts.

Every file the project writes for a reader (run_config.json, the model card, manifests, plots, markers) goes
through `atomic_write_*`: written whole or not at all (edugpt.io.atomic.replace_whole: a temporary file in the same
folder, flushed to disk, then renamed over the target, so a reader or a re-run after a kill sees the old file or the
new one, never half of one; a full disk becomes one `EduGPTError` naming the file, with nothing partial left behind),
then entered in the record of the run directory it lies in (edugpt.run.record).

`DirLock` is the one lock of the project (training run directories, prepared datasets). It is an `flock` on a
small file, granted by the filesystem's lock manager — the local kernel; on NFS, Linux turns it into a POSIX lock
held by the server; Lustre mounted with `flock`; GPFS — so a second process on this host or on another one, in any
PID namespace, sees it held, and it is released when its holder dies, even by SIGKILL, or when its node is lost
(NFSv4 leases expire). Nothing is inferred from process ids, which mean nothing across hosts or containers.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import socket
import stat
import sys
import time
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.io.atomic import NO_SPACE, no_space_error, replace_whole

logger = logging.getLogger(__name__)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, role: str | None = "record", mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename); returns the path. A file
    written inside a run directory is entered in its record (edugpt.run.record) in `role`; None: not recorded."""
    path = replace_whole(path, data, mode=mode)
    if role is not None:
        from edugpt.run.record import note_written

        note_written(path, role)
    return path


def atomic_write_text(path: str | os.PathLike, text: str, **kwargs) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"), **kwargs)


def atomic_write_json(path: str | os.PathLike, content, *, indent: int | None = 2, **kwargs) -> Path:
    """JSON with a trailing newline; values JSON cannot hold (paths, enums) are written as their str()."""
    return atomic_write_text(path, json.dumps(content, indent=indent, default=str) + "\n", **kwargs)


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of the whole file at `path`: checkpoint markers and datatrove's task records."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_json(path: str | os.PathLike, *, what: str = "file", follow_symlinks: bool = True):
    """The JSON in `path`, None when it does not exist; one clear error when it is not JSON, not a regular file
    (a folder, a pipe) or, with `follow_symlinks=False`, a symlink (a file of the project's own: a marker, a record)."""
    path = Path(path)
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow_symlinks else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        return None
    except OSError as err:
        kind = "a symlink" if err.errno == errno.ELOOP else os.strerror(err.errno)
        raise EduGPTError(f"{what} {path} cannot be read ({kind}); fix or delete it.") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EduGPTError(f"{what} {path} is not a regular file (a folder?); fix or delete it.")
        with os.fdopen(os.dup(fd), "rb") as f:
            data = f.read()
    finally:
        os.close(fd)
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise EduGPTError(f"{what} {path} is not valid JSON ({str(err)[:200]}); fix or delete it.") from None


def require_new_dir(path: str | os.PathLike, flag: str) -> Path:
    """Refuse a destination that exists and is not an empty folder: earlier output is never replaced or mixed in.

    `flag` names the option in the message (e.g. "--output_dir"). The folder itself is not created."""
    path = Path(path)
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise EduGPTError(f"{flag} {str(path)!r} exists and is not a folder; pass the path of a new folder.")
    if path.is_dir() and any(path.iterdir()):
        raise EduGPTError(f"{flag} {str(path)!r} already exists and is not empty; pass a new folder (or remove that "
                          "one) so that earlier results are not overwritten.")
    return path


def ensure_dir(path: str | os.PathLike, flag: str) -> Path:
    """Create folder `path` (and its parents) with a clear error when that cannot be done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise EduGPTError(f"{flag} {str(path)!r} is a file (or lies under one); pass a folder path.") from None
    except NotADirectoryError:
        raise EduGPTError(f"{flag} {str(path)!r} lies under a file, not a folder; pass a folder path.") from None
    except PermissionError:
        raise EduGPTError(f"{flag} {str(path)!r} cannot be created: permission denied; pass a folder you can "
                          "write to.") from None
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space_error(path, err) from None
        if err.errno == errno.EROFS:
            raise EduGPTError(f"{flag} {str(path)!r} cannot be created: the filesystem is read-only; pass a folder "
                              "on a writable one.") from None
        raise
    if not os.access(path, os.W_OK | os.X_OK):
        raise EduGPTError(f"{flag} {str(path)!r} is not writable; pass a folder you can write to.")
    return path


class DirLock:
    """An exclusive lock held for as long as one job writes somewhere; a second job is refused with who holds it.

    The lock file is never deleted (deleting a lock file lets two processes lock two different files of one name).
    It is opened without following a symlink, must be a regular file with one link, and is only ever written when it
    is empty or already an edugpt lock (a file someone else put under that name is refused, never truncated). It is
    private (0600) and holds the holder's host, pid, start time and program name for the next one's error message:
    never the command line, which can hold a token.
    """

    def __init__(self, lock_file: str | os.PathLike, what: str):
        self.path = Path(lock_file)
        self.what = what  # e.g. "output_dir runs/smoke", for messages
        self._fd: int | None = None

    def acquire(self) -> DirLock:
        fd = open_private(self.path, "lock file")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                holder = _read_holder(fd)
                os.close(fd)
                raise EduGPTError(
                    f"{self.what} is in use by another job ({holder}); wait for it to finish or stop it, then run "
                    "this command again (two jobs writing one folder would overwrite each other's files)."
                ) from None
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                # A filesystem without locks (Lustre mounted `noflock`, some FUSE mounts): say so, don't block.
                logger.warning("the filesystem of %s does not support locks (%s): a second job writing there at the "
                               "same time would not be detected", self.path, os.strerror(err.errno))
                self._fd = fd
                return self
            os.close(fd)
            raise
        if not _is_lock_content(os.pread(fd, 4096, 0)):
            os.close(fd)
            raise EduGPTError(f"{self.path} exists and is not an edugpt lock file; move it away (it is not ours to "
                              "overwrite), then run this command again.")
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                  "program": Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> DirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def open_private(path: str | os.PathLike, what: str, flags: int = os.O_RDWR) -> int:
    """Open (creating it 0600 if absent) the project's own small file at `path` — a lock, a journal — without
    following a symlink: the descriptor of a regular file with a single link. Anything else standing there (a
    symlink, a folder, a hardlink to some other file, a pipe) is refused with one error, untouched."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            kind = {errno.ELOOP: "a symlink", errno.EISDIR: "a folder"}.get(err.errno, "not a regular file")
            raise EduGPTError(f"the {what} {path} is {kind}; remove it (edugpt writes a regular file there and never "
                              "follows links), then run this command again.") from None
        if err.errno in NO_SPACE:
            raise no_space_error(path, err) from None
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise EduGPTError(f"the {what} {path} cannot be written ({os.strerror(err.errno)}); pass a folder you "
                              "can write to.") from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        kind = "not a regular file" if not stat.S_ISREG(st.st_mode) else "a hardlink shared with another file"
        raise EduGPTError(f"the {what} {path} is {kind}; remove it, then run this command again.")
    os.set_blocking(fd, True)
    return fd


def _is_lock_content(data: bytes) -> bool:
    """Empty (just created, or never written), or the holder record an earlier DirLock wrote."""
    if not data.strip():
        return True
    try:
        holder = json.loads(data)
    except ValueError:
        return False
    return isinstance(holder, dict) and {"host", "pid", "since"} <= holder.keys()


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        program = holder.get("program") or "a program"
        return f"{program}, pid {holder['pid']} on host {holder['host']} since {holder['since']}"
    except (ValueError, KeyError, TypeError, AttributeError, OSError):
        return "holder unknown"

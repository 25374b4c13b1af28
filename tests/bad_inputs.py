"""A corpus of bad inputs and the checks every refusal must pass (tests/integration/test_bad_input.py,
tests/integration/test_fuzz_readers.py).

A refusal is: exit status 2, exactly one stderr line starting with `error:`, no "Traceback" anywhere in the output,
and every folder the case touched byte-identical to before (`snapshot` / `tree_changes`), a new output absent.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import traceback
from pathlib import Path

# --- the corpus -----------------------------------------------------------------------------------------------------

NON_UTF8 = b"\xff\xfe\xfa not UTF-8 \x80\x81\xc3\x28\n"
GARBAGE = bytes((i * 37 + 11) % 256 for i in range(2048))  # deterministic binary noise (not UTF-8 either)
JSON_WRONG_TYPES = {"json_list": b"[1, 2, 3]\n", "json_string": b'"a string"\n', "json_null": b"null\n",
                    "json_number": b"42\n"}
# Every way a file can be bad without knowing what it should hold; "truncated" and "symlink_outside" need its valid
# bytes, which the caller passes.
FILE_VARIANTS = ("non_utf8", "garbage", "empty", "truncated", "dir", "dangling_symlink", "symlink_outside")


def corrupt(path: Path, variant: str, valid: bytes | None = None, outside: Path | None = None) -> None:
    """Put the bad input `variant` where the file `path` goes (replacing what is there).

    `outside` is a folder beside the touched one: a symlink's target lives there (dangling: a name that does not
    exist there; symlink_outside: a copy of the valid bytes)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if variant == "non_utf8":
        path.write_bytes(NON_UTF8)
    elif variant == "garbage":
        path.write_bytes(GARBAGE)
    elif variant == "empty":
        path.write_bytes(b"")
    elif variant == "truncated":
        assert valid is not None and len(valid) > 1, "truncated needs the file's valid bytes"
        path.write_bytes(valid[: len(valid) // 2])
    elif variant == "dir":
        path.mkdir()
    elif variant in ("dangling_symlink", "symlink_outside"):
        assert outside is not None, f"{variant} needs a folder outside for the target"
        outside.mkdir(parents=True, exist_ok=True)
        target = outside / f"target-of-{path.name}"
        if variant == "symlink_outside":
            assert valid is not None, "symlink_outside needs the file's valid bytes"
            target.write_bytes(valid)
        path.symlink_to(target)
    elif variant in JSON_WRONG_TYPES:
        path.write_bytes(JSON_WRONG_TYPES[variant])
    else:
        raise ValueError(f"unknown variant {variant!r}")


# --- folders before and after -----------------------------------------------------------------------------------------

def snapshot(root: Path) -> dict[str, tuple]:
    """relative path -> (type, size, sha256, link target) of everything under `root`; symlinks are not followed."""
    root = Path(root)
    found: dict[str, tuple] = {}
    if not root.exists() and not root.is_symlink():
        return found
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if path.is_symlink():
                found[rel] = ("link", None, None, os.readlink(path))
            elif path.is_dir():
                found[rel] = ("dir", None, None, None)
            elif path.is_file():
                with open(path, "rb") as f:
                    found[rel] = ("file", st.st_size, hashlib.file_digest(f, "sha256").hexdigest(), None)
            else:
                found[rel] = ("other", None, None, None)
    return found


def tree_changes(before: dict, after: dict, tolerated: set[str] = frozenset()) -> list[str]:
    """What differs between two snapshots, one line per path (paths in `tolerated`, and everything under an entry
    `DIR/**` there, may appear, unchanged or not)."""
    changes = []
    prefixes = tuple(t.removesuffix("**") for t in tolerated if t.endswith("/**"))
    for rel in sorted(set(before) | set(after)):
        if rel in tolerated or rel.startswith(prefixes) or f"{rel}/**" in tolerated or before.get(rel) == after.get(rel):
            continue
        if rel not in after:
            changes.append(f"removed {rel}")
        elif rel not in before:
            changes.append(f"created {rel} ({after[rel][0]})")
        else:
            changes.append(f"changed {rel}: {before[rel]} -> {after[rel]}")
    return changes


# --- mounts -----------------------------------------------------------------------------------------------------------

def _mount(*args: str) -> bool:
    try:
        return subprocess.run(["mount", *args], capture_output=True).returncode == 0
    except OSError:
        return False


def _umount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode:
        subprocess.run(["umount", "--lazy", str(path)], capture_output=True)


@contextlib.contextmanager
def read_only(path: Path):
    """`path` (an existing folder) bind-mounted read-only over itself; yields False where mounting is not allowed
    (as root, chmod does not stop writes, so there is no fallback)."""
    path = Path(path)
    if not _mount("--bind", str(path), str(path)):
        yield False
        return
    try:
        yield _mount("-o", "remount,bind,ro", str(path))
    finally:
        _umount(path)


@contextlib.contextmanager
def small_disk(path: Path, size: int):
    """A tmpfs of `size` bytes at `path` (created); yields False where mounting is not allowed."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if not _mount("-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)):
        yield False
        return
    try:
        yield True
    finally:
        _umount(path)


def fill(folder: Path, leave: int) -> None:
    """Fill the filesystem of `folder` until about `leave` bytes are free (a file `.filler` there)."""
    st = os.statvfs(folder)
    free = st.f_bavail * st.f_frsize
    with open(Path(folder) / ".filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


# --- running an entry point -------------------------------------------------------------------------------------------

class Outcome:
    """What an entry point did: its exit status ("crash" for an exception that escaped), stdout and stderr, with an
    escaped exception's traceback appended to stderr as the interpreter would print it."""

    def __init__(self, code, out: str, err: str, exc: BaseException | None = None):
        self.code, self.out, self.err, self.exc = code, out, err, exc

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]

    def summary(self) -> str:
        """One line: what happened instead of a clean refusal."""
        if self.exc is not None:
            return f"{type(self.exc).__name__}: {' '.join(str(self.exc).split())[:300]}"
        lines = self.error_lines
        return f"exit {self.code}; error lines: {lines[:2]}"

    def problems(self) -> list[str]:
        found = []
        if self.code != 2:
            found.append(f"exit status {self.code}, not 2")
        if len(self.error_lines) != 1:
            found.append(f"{len(self.error_lines)} lines start with 'error:' on stderr, not 1")
        if "Traceback" in self.out + self.err:
            found.append("a Traceback in the output")
        return found


# Streams on fds 1 and 2 that live as long as the session: libraries (datasets, transformers, logging.basicConfig)
# bind their handlers to whatever sys.stderr is when they first log, and a per-test capture stream would be closed
# under them by the next case ("--- Logging error ---", itself a traceback).
_STREAMS = {}


def _stream(fd: int):
    if fd not in _STREAMS:
        _STREAMS[fd] = open(fd, "w", buffering=1, encoding="utf-8", errors="backslashreplace", closefd=False)
    return _STREAMS[fd]


def _rebind_log_handlers(stream) -> None:
    """Point every console log handler at `stream` (the long-lived fd 2): see _STREAMS."""
    loggers = [logging.getLogger()] + [lg for lg in logging.Logger.manager.loggerDict.values()
                                       if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for handler in lg.handlers:
            if type(handler) is logging.StreamHandler:
                handler.setStream(stream)


def call_in_process(main) -> Outcome:
    """Run `main()` under `edugpt.config.cli.run` in this process, as the entry point's `__main__` guard does, with fds 1 and
    2 captured (child processes included). An exception other than EduGPTError escapes `run` exactly as it would kill
    the script: its traceback counts as printed."""
    import tempfile

    from edugpt.config.cli import run

    out_stream, err_stream = _stream(1), _stream(2)
    saved_sys = sys.stdout, sys.stderr
    for f in (sys.stdout, sys.stderr):
        f.flush()
    saved_fds = os.dup(1), os.dup(2)
    files = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    os.dup2(files[0].fileno(), 1)
    os.dup2(files[1].fileno(), 2)
    sys.stdout, sys.stderr = out_stream, err_stream
    _rebind_log_handlers(err_stream)
    root = logging.getLogger()
    handlers = list(root.handlers)
    code, exc, tb = 0, None, ""
    try:
        run(main)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if not isinstance(err.code, int) and err.code is not None:
            print(err.code, file=sys.stderr)
    except BaseException as err:  # noqa: BLE001 - an escaped exception is exactly what these tests look for
        code, exc = "crash", err
        tb = "".join(traceback.format_exception(err))
    finally:
        for handler in list(root.handlers):  # setup_logging() replaced the root logger's handlers: put them back
            if handler not in handlers:
                root.removeHandler(handler)
        for handler in handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        out_stream.flush()
        err_stream.flush()
        os.dup2(saved_fds[0], 1)
        os.dup2(saved_fds[1], 2)
        for fd in saved_fds:
            os.close(fd)
        sys.stdout, sys.stderr = saved_sys
    text = []
    for f in files:
        f.seek(0)
        text.append(f.read().decode("utf-8", errors="backslashreplace"))
        f.close()
    return Outcome(code, text[0], text[1] + tb, exc)


def call_subprocess(argv: list[str], cwd: Path, timeout: float = 300, env: dict | None = None) -> Outcome:
    proc = subprocess.run([sys.executable, *argv], cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True,
                          text=True, timeout=timeout)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def jsonl(rows) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()



"""A file replaced whole, and a full disk said in one line: the lowest layer of the project's writes.

`replace_whole` writes to a temporary file in the same folder, flushes it to disk, then renames it over the target,
so a reader or a re-run after a kill sees the old file or the new one, never half of one. A full disk or quota
(`no_space_reason` recognises one, also where its errno was lost) becomes one `EduGPTError` naming the file
(`no_space_error`), with nothing partial left behind. It records nothing: edugpt.io.safefs.atomic_write_* add the
entry in the run directory's record (edugpt.run.record), which itself is written with `replace_whole`.
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

from edugpt.errors import EduGPTError

# errno values that mean "the device is full" (ENOSPC) or "your quota is" (EDQUOT).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
# The same, where the errno was lost on the way: pyarrow's and safetensors' (Rust) messages, a datatrove task's error
# re-raised in the launcher.
NO_SPACE_TEXT = ("No space left", "quota exceeded", "os error 28", "os error 122")


def no_space_reason(err: BaseException) -> str | None:
    """Why `err`, or an error it was raised from, is a full disk or quota (e.g. "No space left on device"); None when
    it is not one."""
    seen = err
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in NO_SPACE:
            return os.strerror(seen.errno)
        if any(text in str(seen) for text in NO_SPACE_TEXT):
            return "no space left on device"
        seen = seen.__cause__ or seen.__context__
    return None


def no_space_error(path: str | os.PathLike, err: BaseException) -> EduGPTError:
    """The one message for a full disk or quota while writing `path`."""
    what = "disk quota exceeded" if getattr(err, "errno", None) == errno.EDQUOT else "no space left on the device"
    return EduGPTError(f"{what} while writing {path}; free space there (or choose another folder) and run the same "
                       "command again.")


def replace_whole(path: str | os.PathLike, data: bytes, *, mode: int = 0o644) -> Path:
    """Write `data` to `path` atomically (temp file in the same folder, fsync, rename); returns the path."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)  # mkstemp makes 0600 files; most of these are ordinary outputs
        os.replace(tmp, path)
    except OSError as err:
        if err.errno in NO_SPACE:
            raise no_space_error(path, err) from None
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path

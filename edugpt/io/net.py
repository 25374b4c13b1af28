"""Is the Hugging Face Hub usable from here? Asked once, answered in seconds, so offline runs never sit in retries.
And the one rule of what a Hub repo id looks like (`is_repo_id`, huggingface_hub's own check): `require_repo_id` for
a name that must be one (--hub_model_id, --space), `looks_like_hub_id` for a name that may be a repo id or a path.
"""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse

from edugpt.errors import EduGPTError


def hub_offline_requested() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set: huggingface_hub's own reading of it."""
    from huggingface_hub import is_offline_mode

    return is_offline_mode()


@functools.lru_cache(maxsize=1)
def hub_available(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE is set or the Hub endpoint cannot be reached within `timeout` seconds.

    Without this probe, huggingface_hub retries an unresolvable host with backoff for ~45 s per file.
    """
    if hub_offline_requested():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def is_repo_id(name: str) -> bool:
    """Is `name` a valid Hub repo id: 'name' or 'owner/name' with letters, digits, '-', '_' and '.' (the Hub's rule,
    as huggingface_hub's validate_repo_id checks it)?"""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def require_repo_id(hub_model_id: str | None) -> None:
    """Raise EduGPTError unless `hub_model_id` is given and is a valid repo id (publish.py, --push_to_hub, --space)."""
    if not hub_model_id:
        raise EduGPTError("no Hub repo given; pass --hub_model_id NAME (e.g. your-name/edugpt-270m).")
    if not is_repo_id(hub_model_id):
        raise EduGPTError(
            f"{hub_model_id!r} is not a valid Hub repo id; use 'name' or 'owner/name' with letters, digits, '-', "
            "'_' and '.'."
        )


# Endings of local files, never of a Hub repo id a user means.
FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".yaml", ".yml", ".safetensors", ".bin", ".pt", ".arrow")


def looks_like_hub_id(name: str) -> bool:
    """Could `name` be a Hub repo id ('owner/name', or a bare legacy one like 'gpt2') rather than a local path?

    A name that starts like a path ('.', '/', '~'), has more than one '/' or a file ending is a path, so a missing
    one is reported as a missing path rather than as a Hub problem.
    """
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.lower().endswith(FILE_SUFFIXES):
        return False
    return is_repo_id(name)


def missing_local_path(name: str, what: str) -> str:
    """The start of the message for a `name` that is no local file or folder: a missing path, and for a name that
    could also be a Hub id, that the Hub cannot be asked about it (offline or unreachable)."""
    from pathlib import Path

    where = f"{what} {name!r} does not exist" + ("" if Path(name).is_absolute() else f" (relative to {Path.cwd()})")
    return where + (", and the Hugging Face Hub, where it would be a repo id, is offline or unreachable"
                    if looks_like_hub_id(name) else "")

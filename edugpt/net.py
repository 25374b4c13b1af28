"""Is the Hugging Face Hub usable from here? Asked once, answered in seconds, so offline runs never sit in retries."""

from __future__ import annotations

import functools
import os
import socket
from urllib.parse import urlparse


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

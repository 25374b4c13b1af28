"""The token scan of every upload: nothing that holds the user's Hugging Face token, or anything shaped like one, goes
up or into a dry-run folder, and no error that quotes the Hub's answer prints one.

Every byte is read, binary files included (training_args.bin is a pickle), in chunks of SCAN_CHUNK_BYTES, each
searched together with the end of the previous one, so a token across a chunk border is found too. The tokens
compared against are the user's own (`known_tokens`: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, the stored login); without a
login a token is still caught by its shape (HF_TOKEN_SHAPE). A hit names the file, never the token.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from edugpt.errors import EduGPTError

SCAN_CHUNK_BYTES = 16 << 20
HF_TOKEN_SHAPE = re.compile(rb"hf_[A-Za-z0-9]{30,}")


def known_tokens() -> list[str]:
    """The user's tokens: the environment's and the stored login's (at least 8 characters, to compare against)."""
    from huggingface_hub import get_token

    values = {os.environ.get(k) for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    try:
        values.add(get_token())
    except Exception:  # an OIDC exchange that fails: the environment variables above are still checked
        pass
    return [v for v in values if v and len(v) >= 8]


def known_token_bytes() -> list[bytes]:
    """known_tokens() as the bytes the scan compares against."""
    return [t.encode() for t in known_tokens()]


def token_error(label: str) -> EduGPTError:
    return EduGPTError(f"{label} contains a Hugging Face access token; remove it from that file (or delete the file) "
                       "before publishing.")


def has_token(read, tokens: list[bytes]) -> bool:
    """Does the stream `read(n)` hold one of `tokens` or anything shaped like an HF token? Read in chunks, each
    searched together with the end of the previous one, so a token across a chunk border is found too."""
    keep = max([len(t) for t in tokens] + [256])
    tail = b""
    while chunk := read(SCAN_CHUNK_BYTES):
        data = tail + chunk
        if bytes_have_token(data, tokens):
            return True
        tail = data[-keep:]
    return False


def bytes_have_token(data: bytes, tokens: list[bytes]) -> bool:
    return any(t in data for t in tokens) or HF_TOKEN_SHAPE.search(data) is not None


def scan_file(path: Path, label: str, tokens: list[bytes] | None = None) -> None:
    """Raise EduGPTError naming `label` if the file holds a token (every byte is read: binary files too)."""
    tokens = known_token_bytes() if tokens is None else tokens
    with open(path, "rb") as f:
        if has_token(f.read, tokens):
            raise token_error(label)


def scrub(message: str) -> str:
    """`message` without the user's token or anything shaped like one, first line only (for errors that quote the
    Hub's answer)."""
    for token in known_tokens():
        message = message.replace(token, "***")
    message = HF_TOKEN_SHAPE.sub(b"***", message.encode()).decode()
    return message.splitlines()[0][:300] if message else ""

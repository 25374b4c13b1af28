"""The split rule: a document's split is a pure function of its ID (`split_of`), and a document without one gets an ID
from its text (`derive_id`).

Why split by ID rather than by position: the split is then the same on any machine, with any `num_proc` or number of
tasks, on any re-run and any `--max_docs` slice, and a duplicated document can never sit on both sides (the original
project's fix for build-nanogpt's "validation = shard 0"). The rule is written into every manifest
(`SPLIT_DESCRIPTION`) and re-checked by `edugpt.corpus.verify`.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "validation")
SPLIT_SALT = "edugpt-split-v1"
SPLIT_HASH = "sha256"
SPLIT_DESCRIPTION = (
    "validation iff int.from_bytes(sha256((salt + ':' + id).encode('utf-8')).digest()[:8], 'big') / 2**64 "
    "< val_fraction, else train"
)


# ----------------------------------------------------------------------------------------------------------- split

def split_of(doc_id: str, val_fraction: float, salt: str = SPLIT_SALT) -> str:
    """'validation' or 'train' for a document ID: a salted SHA-256 of the ID compared with `val_fraction`."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def derive_id(text) -> str:
    """An ID for a document whose source has none: the SHA-256 of its text (identical texts share it)."""
    payload = text if isinstance(text, str) else repr(text)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()

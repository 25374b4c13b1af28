"""Tokenizing documents: one batch of texts and ids -> each document's split and its GPT-2 token ids + `<|endoftext|>`
(`tokenize_batch`, the same for every executor), tiktoken for GPT-2's own names, a GPT-2-compatible `transformers`
tokenizer otherwise (`check_tokenizer` refuses any other). A row whose text is null, not a string or blank gives no
tokens and is counted by reason (`SKIP_REASONS`, the manifest's per-split `skipped_*` counts).
"""

from __future__ import annotations

import functools
import itertools
import json

import numpy as np

from edugpt.corpus.split import SPLIT_SALT, derive_id, split_of
from edugpt.model.tokenizer import (
    GPT2_EOS_ID,
    GPT2_NAMES,
    GPT2_VOCAB_SIZE,
    encode_text,
    gpt2_tiktoken,
    load_tokenizer,
    require_gpt2_compatible,
)

# Why a row gave no document (tokenize_batch's `skipped` code -> the manifest's per-split count of such rows).
SKIP_REASONS = {1: "skipped_missing_text", 2: "skipped_non_string_text", 3: "skipped_empty_documents"}
SKIP_WORDS = {"skipped_missing_text": "with no text (null or missing)", "skipped_non_string_text":
              "whose text is not a string", "skipped_empty_documents": "with empty or blank text"}


@functools.lru_cache(maxsize=4)
def _encoder(name: str, num_threads: int = 1):
    """Per-process encoder: tiktoken for GPT-2 (same ids as the HF tokenizer, several times faster), else the HF one."""
    if name in GPT2_NAMES:
        enc = gpt2_tiktoken()
        if num_threads > 1:
            return functools.partial(enc.encode_ordinary_batch, num_threads=num_threads)
        # encode_ordinary_batch(num_threads=1) still hands every text to a thread pool: ~30% slower than this loop.
        return lambda texts: [enc.encode_ordinary(text) for text in texts]
    tokenizer = load_tokenizer(name)
    # Ordinary text, as tiktoken's encode_ordinary: a web page quoting "<|endoftext|>" is not a document boundary.
    return lambda texts: encode_text(tokenizer, texts)["input_ids"]


def check_tokenizer(name: str, vocab_size: int = GPT2_VOCAB_SIZE) -> str:
    """Refuse a tokenizer whose ids are not GPT-2's (or do not fit `vocab_size`); return the backend used."""
    if name in GPT2_NAMES:
        return "tiktoken"
    require_gpt2_compatible(load_tokenizer(name), vocab_size)
    return "transformers"


def skip_reason(text) -> int:
    """0 for a usable text, else why the row is skipped: a key of `SKIP_REASONS`."""
    if text is None:
        return 1
    if not isinstance(text, str):
        return 2
    return 3 if text == "" or text.isspace() else 0


def tokenize_batch(texts, ids, *, tokenizer: str, val_fraction: float, salt: str = SPLIT_SALT,
                   num_threads: int = 1) -> dict:
    """One `datasets.map` batch: split each document by ID, tokenize the usable ones and append `<|endoftext|>`.

    Null, non-string and blank texts are kept as rows with no tokens and `skipped` = their `SKIP_REASONS` code (0 for
    a tokenized row) so each reason can be counted. Returns Arrow arrays (a uint16 list column) so no Python int lists
    are converted back by `datasets`.
    """
    import pyarrow as pa

    doc_ids = [derive_id(t) if i is None or i == "" else str(i) for t, i in zip(texts, ids or itertools.repeat(None))]
    reasons = [skip_reason(t) for t in texts]
    encoded = _encoder(tokenizer, num_threads)([t for t, r in zip(texts, reasons) if not r])
    lengths = iter(len(tokens) + 1 for tokens in encoded)
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([0 if r else next(lengths) for r in reasons])
    flat = np.fromiter(itertools.chain.from_iterable(tokens + [GPT2_EOS_ID] for tokens in encoded),
                       dtype=np.uint16, count=int(offsets[-1]))
    return {
        "id": doc_ids,
        "split": [split_of(i, val_fraction, salt) for i in doc_ids],
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "skipped": pa.array(reasons, pa.int8()),
    }


def tokenized_features():
    """Columns of a tokenized batch: `id`, `split`, `input_ids` (uint16 tokens + eos), `skipped` (0, or why the text
    is unusable: `SKIP_REASONS`)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features({"id": string, "split": string, "input_ids": datasets.List(datasets.Value("uint16")),
                              "skipped": datasets.Value("int8")})


def column_values(column) -> list:
    """Arrow column -> Python values; a mixed-type jsonl column arrives as JSON text (datasets' `Json` type)."""
    values = column.to_pylist()
    if "json" in str(column.type):
        return [None if v is None else json.loads(v) for v in values]
    return values

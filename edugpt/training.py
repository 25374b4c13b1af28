"""Loading the prepared dataset for training: validate it against its manifest, collate uint16 blocks, bound the eval set.

The data directory is `prepare_data.py`'s output (see the data contract): a `DatasetDict` saved with
`save_to_disk` whose rows are packed `uint16` blocks, plus `manifest.json`. Arrow files are memory-mapped, so the
training set's size does not show up in RAM.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edugpt.errors import EduGPTError
from edugpt.tokenizer import GPT2_EOS_ID

MANIFEST_FORMAT = "edugpt-prepared-v1"
SPLITS = ("train", "validation")


@dataclass
class PreparedData:
    train: object  # datasets.Dataset with one column `input_ids` (uint16 blocks of seq_len)
    validation: object
    manifest: dict
    seq_len: int


def read_manifest(dataset_dir: str | Path) -> dict:
    """The manifest of a prepared data directory; a clear error when the directory is not prepare_data.py's."""
    if not dataset_dir:
        raise EduGPTError("dataset_dir is not set; pass --dataset_dir DIR, a directory written by prepare_data.py.")
    root = Path(dataset_dir)
    if not root.is_dir():
        raise EduGPTError(
            f"dataset_dir {str(root)!r} does not exist; create it with "
            f"`python prepare_data.py --output_dir {root}` or point --dataset_dir at one that does."
        )
    path = root / "manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EduGPTError(
            f"{root} has no manifest.json, so it was not made by prepare_data.py; re-create it with "
            f"`python prepare_data.py --output_dir {root}`."
        ) from None
    except ValueError:
        raise EduGPTError(f"{path} is not valid JSON; re-create the directory with prepare_data.py.") from None
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise EduGPTError(
            f"{path} has format {found!r}, expected {MANIFEST_FORMAT!r}; re-create the directory with prepare_data.py."
        )
    return manifest


def load_prepared(dataset_dir: str | Path, model_config, seq_len: int | None = None) -> PreparedData:
    """Load and validate a prepared directory for a model with `model_config` (a GPT2Config).

    Checks: made by prepare_data.py, same tokenizer family and vocabulary as the model, block length equal to
    `seq_len` (when given) and within the model's `n_positions`, and splits whose rows match the manifest.
    """
    import datasets

    manifest = read_manifest(dataset_dir)
    root = Path(dataset_dir)
    tokenizer = manifest.get("tokenizer") or {}
    data_vocab, data_eos = tokenizer.get("vocab_size"), tokenizer.get("eos_token_id")
    if data_vocab is None or data_vocab > model_config.vocab_size:
        raise EduGPTError(
            f"the data was tokenized with a {data_vocab}-token vocabulary ({tokenizer.get('name')!r}) but the model has "
            f"vocab_size {model_config.vocab_size}; set vocab_size >= {data_vocab} or re-prepare with the GPT-2 tokenizer."
        )
    if data_eos != GPT2_EOS_ID:
        raise EduGPTError(
            f"the data's end-of-text id is {data_eos}, not GPT-2's {GPT2_EOS_ID}; re-prepare it with the GPT-2 tokenizer."
        )
    data_seq_len = manifest.get("seq_len")
    if seq_len is not None and seq_len != data_seq_len:
        raise EduGPTError(
            f"seq_len {seq_len} does not match the data's blocks of {data_seq_len} tokens ({root}/manifest.json); "
            f"drop seq_len, set it to {data_seq_len}, or re-prepare with --seq_len {seq_len}."
        )
    if not isinstance(data_seq_len, int) or data_seq_len > model_config.n_positions:
        raise EduGPTError(
            f"the data's blocks are {data_seq_len} tokens but the model's n_positions is {model_config.n_positions}; "
            f"set n_positions >= {data_seq_len} or re-prepare with a shorter --seq_len."
        )
    try:
        splits = datasets.load_from_disk(str(root))
    except FileNotFoundError:
        raise EduGPTError(
            f"{root} holds a manifest but no saved dataset (dataset_dict.json); re-create it with prepare_data.py."
        ) from None
    for name in SPLITS:
        if name not in splits:
            raise EduGPTError(f"{root} has no {name!r} split; re-create it with prepare_data.py.")
        split = splits[name]
        feature = split.features.get("input_ids")
        if feature is None or getattr(feature, "length", None) != data_seq_len or feature.feature.dtype != "uint16":
            raise EduGPTError(
                f"{root}/{name} does not hold uint16 blocks of {data_seq_len} tokens in `input_ids` ({feature}); "
                "re-create it with prepare_data.py."
            )
        expected = (manifest.get("splits") or {}).get(name, {}).get("blocks")
        if expected != len(split):
            raise EduGPTError(
                f"{root}/{name} has {len(split)} blocks but the manifest says {expected}; the directory is incomplete "
                "or was changed after preparing: re-create it with prepare_data.py."
            )
    if len(splits["train"]) == 0:
        raise EduGPTError(f"{root} has an empty train split; prepare more documents (raise --max_docs).")
    # numpy rows (datasets' numpy formatter widens the stored uint16 to int64 per row): the collator stacks a whole
    # batch at once, with no per-token Python objects.
    return PreparedData(
        train=splits["train"].with_format("numpy"),
        validation=splits["validation"].with_format("numpy"),
        manifest=manifest,
        seq_len=data_seq_len,
    )


def collate_blocks(examples: list[dict]) -> dict:
    """Stack packed blocks (stored as uint16) into int64 `input_ids` and `labels` (the model shifts labels itself).

    Every token, `<|endoftext|>` included, is a target: the eos between documents is what teaches the model where
    a document ends (DataCollatorForLanguageModeling with pad = eos would mask it out of the loss).
    """
    import torch

    input_ids = torch.from_numpy(np.stack([np.asarray(example["input_ids"]) for example in examples]).astype(np.int64))
    return {"input_ids": input_ids, "labels": input_ids}


def bound_eval_split(validation, max_batches: int | None, per_device_batch_size: int, world_size: int = 1):
    """The first rows of `validation` that fill at most `max_batches` eval batches on every device (None: all).

    A contiguous `select(range(n))` stays a zero-copy slice of the memory-mapped Arrow table.
    """
    if max_batches is None:
        return validation
    rows = min(len(validation), max_batches * per_device_batch_size * world_size)
    return validation.select(range(rows))

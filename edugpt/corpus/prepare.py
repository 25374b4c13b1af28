"""Prepare a corpus once: split by document ID, tokenize, pack each split into uint16 blocks, save, describe, verify.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128      # seconds, offline

The layout written (the data contract other modules load):
    DIR/dataset_dict.json, DIR/train/, DIR/validation/   `DatasetDict.save_to_disk`'s layout (`datasets.load_from_disk`
                                                         reads it); one column `input_ids`, fixed-length uint16
                                                         sequences of `seq_len` tokens
    DIR/manifest.json                                    source, tokenizer, split rule, per-split counts (skipped
                                                         rows per reason), `content`: SHA-256 digests of the blocks
    DIR/doc_ids.parquet                                  `id`, `split`: one row per kept document
    manifest.json's `files`                              the record: every other file prepare_data.py wrote in DIR,
                                                         with its size (`dataset_record`)

Both ways of preparing share every piece here: `split_of`, `tokenize_batch`, `SplitWriter` (packing straight into the
split's Arrow files), `write_layout` (the metadata around them, no copy), `build_manifest`, `move_into_place` and
`verify`. This module runs them in one process over `datasets.map`; `edugpt.corpus.datatrove` runs them in datatrove
tasks.

Beside DIR, and only while a job writes it: `.DIR.lock` (the `DirLock` every job writing DIR holds; the file stays),
`.DIR.tmp/` (holding `dataset/`, the dataset being written), `.DIR.swap.json` + `.DIR.old/` (the journalled swap; see
`move_into_place`). What is deleted is decided by records, never by names: a folder this project makes holds
`.edugpt-made.json` with its own (st_dev, st_ino) (`make_dir`, `made_here`); `.DIR.old` is the old dataset only when
the journal's identity of it says so; and `--overwrite` replaces only a prepared dataset whose every file is in its
manifest's record (`replace_refusal`), never the input (`check_not_input`).

Why split by ID rather than by position: a document's split is a pure function of its ID (`split_of`), so it is the
same on any machine, with any `num_proc`, on any re-run and any `--max_docs` slice, and a duplicated document can never
sit on both sides (the original project's fix for build-nanogpt's "validation = shard 0").
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import re
import shutil
import stat
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edugpt.config.arguments import PrepareDataArguments
from edugpt.corpus.sources import (
    ID_COLUMN,
    TEXT_COLUMN,
    Source,
    load_source,
    require_text_column,
    resolve_source,
)
from edugpt.errors import EduGPTError
from edugpt.io.safefs import DirLock, atomic_write_text, ensure_dir, no_space_error, no_space_reason
from edugpt.model.tokenizer import (
    GPT2_EOS_ID,
    GPT2_NAMES,
    GPT2_VOCAB_SIZE,
    encode_text,
    gpt2_tiktoken,
    load_tokenizer,
    require_gpt2_compatible,
)

logger = logging.getLogger(__name__)

# v2: the manifest records every file of the dataset (`files`), and `content` is required.
FORMAT = "edugpt-prepared-v2"
SPLITS = ("train", "validation")
SPLIT_SALT = "edugpt-split-v1"
SPLIT_HASH = "sha256"
SPLIT_DESCRIPTION = (
    "validation iff int.from_bytes(sha256((salt + ':' + id).encode('utf-8')).digest()[:8], 'big') / 2**64 "
    "< val_fraction, else train"
)
MANIFEST = "manifest.json"
DOC_IDS = "doc_ids.parquet"
# Why a row gave no document (tokenize_batch's `skipped` code -> the manifest's per-split count of such rows).
SKIP_REASONS = {1: "skipped_missing_text", 2: "skipped_non_string_text", 3: "skipped_empty_documents"}
SKIP_WORDS = {"skipped_missing_text": "with no text (null or missing)", "skipped_non_string_text":
              "whose text is not a string", "skipped_empty_documents": "with empty or blank text"}
# What the manifest's `content` digests are of: every split's blocks exactly as stored, file by file in the order of
# the split's state.json (the order `datasets.load_from_disk` and training read them).
CONTENT_DIGEST = ("per file: sha256 of the uint16 tokens of its blocks in stored order (little-endian); per split: "
                  "sha256 of its files' hex digests, one per line, in state.json order")
# Documents per tokenizing batch: large enough for tiktoken's threaded batch encode to pay off.
MAP_BATCH_SIZE = 1000
# Bytes per Arrow record batch of the saved blocks (8,192 blocks of 1024 tokens, 65,536 of 128). `save_to_disk`
# alone writes 1,000-row batches, and opening a memory-mapped Arrow file makes `datasets` read every batch header:
# each read faults ~64 KiB of the file into the process's RSS (+124 MiB for 2M blocks of 128, measured). Rows are
# fixed-size, so a large batch costs nothing when reading: rows are zero-copy slices of it.
RECORD_BATCH_BYTES = 16 << 20
# Ids per batch when `verify` streams doc_ids.parquet (as Python strings: ~1 MB), and how many misplaced ids it keeps
# to look for cross-split duplicates (a tampered or wrong file; a good one has none).
ID_BATCH_ROWS = 1 << 13
MAX_WRONG_IDS = 100_000
# Ids per row group of doc_ids.parquet (a parquet writer holds every row group's metadata until it is closed).
ID_ROW_GROUP_ROWS = 1 << 17


# ----------------------------------------------------------------------------------------------------------- split

def split_of(doc_id: str, val_fraction: float, salt: str = SPLIT_SALT) -> str:
    """'validation' or 'train' for a document ID: a salted SHA-256 of the ID compared with `val_fraction`."""
    digest = hashlib.sha256(f"{salt}:{doc_id}".encode()).digest()
    return "validation" if int.from_bytes(digest[:8], "big") / 2**64 < val_fraction else "train"


def derive_id(text) -> str:
    """An ID for a document whose source has none: the SHA-256 of its text (identical texts share it)."""
    payload = text if isinstance(text, str) else repr(text)
    return "sha256:" + hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


# -------------------------------------------------------------------------------------------------------- tokenize

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


# ------------------------------------------------------------------------------------------------------------ pack

class BlockPacker:
    """Concatenate token arrays and cut them into `(n, seq_len)` blocks; whatever is left at the end is the tail."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.carry = np.empty(0, dtype=np.uint16)

    def push(self, tokens: np.ndarray) -> np.ndarray:
        stream = np.concatenate([self.carry, tokens.astype(np.uint16, copy=False)])
        n_full = len(stream) // self.seq_len * self.seq_len
        self.carry = stream[n_full:].copy()
        return stream[:n_full].reshape(-1, self.seq_len)

    @property
    def tail(self) -> int:
        return len(self.carry)


def pack_blocks(documents, seq_len: int) -> tuple[np.ndarray, int]:
    """Pure packing: token lists -> (blocks of `seq_len`, number of dropped tail tokens)."""
    packer = BlockPacker(seq_len)
    blocks = [packer.push(np.asarray(doc, dtype=np.uint16)) for doc in documents]
    return (np.concatenate(blocks) if blocks else np.empty((0, seq_len), np.uint16)), packer.tail


def block_features(seq_len: int):
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("uint16"), length=seq_len)})


def record_batch_rows(seq_len: int) -> int:
    """Rows per Arrow record batch for blocks of `seq_len` uint16 tokens (never fewer than `datasets`' 1,000)."""
    import datasets

    return max(datasets.config.DEFAULT_MAX_BATCH_SIZE, RECORD_BATCH_BYTES // (2 * seq_len))


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    dropped_tail_tokens: int = 0
    skipped_empty_documents: int = 0  # empty or blank text
    skipped_missing_text: int = 0  # null, or no `text` key in a jsonl line
    skipped_non_string_text: int = 0  # a number, list, object ... where the text should be


class SplitWriter:
    """Packs one split's token stream into `seq_len` blocks and writes them as Arrow files `PREFIX-00000.arrow`, ...
    in `directory`: record batches of `record_batch_rows(seq_len)` rows (~16 MiB), a new file every `shard_bytes`
    (`datasets`' own 500 MB shard size by default). Memory holds at most one record batch and the tail.

    `close()` leaves the tail (fewer than `seq_len` tokens) in `tail`: the single-machine path drops it, a parallel
    task hands it to the merge.
    """

    def __init__(self, directory, seq_len: int, prefix: str = "data", shard_bytes: int | None = None):
        import datasets
        from datasets.utils.py_utils import convert_file_size_to_int

        self.directory = Path(directory)
        self.seq_len, self.prefix = seq_len, prefix
        self.batch_rows = record_batch_rows(seq_len)
        shard_bytes = shard_bytes or convert_file_size_to_int(datasets.config.MAX_SHARD_SIZE)
        self.batches_per_file = max(1, shard_bytes // (self.batch_rows * 2 * seq_len))
        self.packer = BlockPacker(seq_len)
        self.buffer, self.filled = None, 0  # the record batch being filled, in place
        self.writer = None
        self.batches_in_file = 0
        self.files: list[str] = []
        self.digests: list[str] = []  # sha256 of each file's blocks (see CONTENT_DIGEST), computed as they are written
        self._hash = None
        self.stats = SplitStats()

    def add(self, table) -> None:
        """Add a tokenized batch (Arrow table with `input_ids` and `skipped`) of this split's documents."""
        reasons = np.bincount(table["skipped"].to_numpy(), minlength=len(SKIP_REASONS) + 1)
        for code, name in SKIP_REASONS.items():
            setattr(self.stats, name, getattr(self.stats, name) + int(reasons[code]))
        self.stats.documents += int(reasons[0])
        tokens = table["input_ids"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.add_tokens(tokens)

    def add_tokens(self, tokens: np.ndarray) -> None:
        self.stats.tokens += len(tokens)
        self.add_blocks(self.packer.push(tokens))

    def add_blocks(self, blocks: np.ndarray) -> None:
        done = 0
        while done < len(blocks):
            if self.buffer is None:
                self.buffer = np.empty((self.batch_rows, self.seq_len), dtype=np.uint16)
            n = min(len(blocks) - done, self.batch_rows - self.filled)
            self.buffer[self.filled:self.filled + n] = blocks[done:done + n]
            self.filled, done = self.filled + n, done + n
            if self.filled == self.batch_rows:
                self._write(self.buffer)

    def _write(self, blocks: np.ndarray) -> None:
        import pyarrow as pa

        if self.writer is None:
            from datasets.arrow_writer import ArrowWriter

            name = f"{self.prefix}-{len(self.files):05d}.arrow"
            self.directory.mkdir(parents=True, exist_ok=True)
            self.writer = ArrowWriter(features=block_features(self.seq_len), path=str(self.directory / name),
                                      writer_batch_size=self.batch_rows)
            self.files.append(name)
            self._hash = hashlib.sha256()
        blocks = np.ascontiguousarray(blocks, dtype="<u2")
        self._hash.update(blocks)
        values = pa.array(blocks.reshape(-1), type=pa.uint16())
        self.writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, self.seq_len)}))
        self.stats.blocks += len(blocks)
        self.filled = 0
        self.batches_in_file += 1
        if self.batches_in_file == self.batches_per_file:
            self._finish_file()

    def _finish_file(self) -> None:
        self.writer.finalize()
        self.digests.append(self._hash.hexdigest())
        self.writer, self.batches_in_file = None, 0

    @property
    def tail(self) -> np.ndarray:
        return self.packer.carry

    def close(self) -> SplitStats:
        if self.filled:
            self._write(self.buffer[:self.filled])
        self.buffer = None
        if self.writer is not None:
            self._finish_file()
        self.stats.dropped_tail_tokens = self.packer.tail
        return self.stats


class SplitsWriter:
    """The writing half of a preparation: routes tokenized batches (`tokenize_batch`'s columns) to one `SplitWriter`
    per split under `root/<split>/` and lists each kept document's `id` and `split` in the parquet file `ids_path`.
    The single-machine path runs one over the whole corpus; a parallel task runs one over its share of the rows."""

    def __init__(self, root, seq_len: int, ids_path, prefix: str = "data"):
        import pyarrow.parquet as pq

        self.splits = {split: SplitWriter(Path(root) / split, seq_len, prefix) for split in SPLITS}
        self.ids = pq.ParquetWriter(str(ids_path), id_schema(), compression="zstd")
        self.pending_ids, self.pending_id_rows = [], 0

    def add(self, table) -> None:
        import pyarrow.compute as pc

        for split, writer in self.splits.items():
            part = table.filter(pc.equal(table["split"], split))
            writer.add(part)
            ids = part.filter(pc.equal(part["skipped"], 0)).select(["id", "split"]).cast(id_schema())
            self.pending_ids.append(ids)
            self.pending_id_rows += ids.num_rows
        if self.pending_id_rows >= ID_ROW_GROUP_ROWS:
            self._flush_ids()

    def _flush_ids(self) -> None:
        """One parquet row group per ~128K ids: the writer keeps every row group's metadata until it closes."""
        import pyarrow as pa

        if self.pending_ids:
            table = pa.concat_tables(self.pending_ids)
            self.ids.write_table(table, row_group_size=max(table.num_rows, 1))
        self.pending_ids, self.pending_id_rows = [], 0

    def close(self) -> dict[str, SplitStats]:
        self._flush_ids()
        self.ids.close()
        return {split: writer.close() for split, writer in self.splits.items()}

    def abort(self) -> None:
        """Close every open file after a failure (a full disk): an open descriptor would keep a deleted file's space."""
        for writer in self.splits.values():
            if writer.writer is not None:
                with contextlib.suppress(Exception):
                    writer.writer.stream.close()
        with contextlib.suppress(Exception):
            self.ids.close()


def id_schema():
    """Schema of doc_ids.parquet: one row per kept document."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("split", pa.string())])


class UnusableInputError(EduGPTError):
    """The input cannot be prepared as it is (it must change first), so nothing of this run can be reused."""


class EmptySplitError(UnusableInputError):
    """A split got no block: the input is too small for these settings (nothing of this run can be reused)."""


def require_blocks(stats: dict[str, SplitStats], seq_len: int) -> None:
    """Refuse a dataset in which a split has no block at all (training and evaluation need both)."""
    for split, s in stats.items():
        if s.blocks == 0:
            raise EmptySplitError(
                f"the {split} split would have 0 blocks ({s.tokens} tokens from {s.documents} documents < "
                f"--seq_len {seq_len}); " + ("raise" if split == "validation" else "lower") + " --val_fraction, "
                "use more documents (--max_docs) or lower --seq_len.")


def write_layout(root, files: dict[str, list[str]], seq_len: int) -> None:
    """Write the metadata of `DatasetDict.save_to_disk` around Arrow files already in `root/<split>/`, without copying
    them: `dataset_dict.json`, and per split `dataset_info.json` and `state.json` listing its files in order (which
    is all `datasets.load_from_disk` reads to memory-map them as one table)."""
    root = Path(root)
    info = layout_info(seq_len)
    for split, names in files.items():
        _write_json(root / split / "state.json", layout_state(split, seq_len, names), sort_keys=True)
        _write_json(root / split / "dataset_info.json", {key: info[key] for key in sorted(info)})
    _write_json(root / "dataset_dict.json", {"splits": list(files)})


def layout_state(split: str, seq_len: int, names: list[str]) -> dict:
    """A split's state.json as `write_layout` writes it (all of it follows from the split, seq_len and file names)."""
    fingerprint = hashlib.sha256(json.dumps([split, seq_len, names]).encode()).hexdigest()[:16]
    return {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
            "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
            "_split": None}


def layout_info(seq_len: int) -> dict:
    """A split's dataset_info.json as `write_layout` writes it: `datasets`' description of uint16 blocks."""
    from datasets import DatasetInfo
    from datasets.utils.py_utils import asdict

    return asdict(DatasetInfo(features=block_features(seq_len)))


def _write_json(path: Path, content, sort_keys: bool = False) -> None:
    """JSON written whole or not at all (`safefs.atomic_write_text`: a reader or a re-run after a kill never sees half
    of it; a full disk is one clear error)."""
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")


def save_blocks(splits, path, seq_len: int) -> None:
    """Save a `DatasetDict` of packed blocks exactly as prepare_data.py lays them out: `SplitWriter`'s Arrow files
    (few large record batches) plus `write_layout`'s metadata."""
    root, files = Path(path), {}
    for name, split in splits.items():
        writer = SplitWriter(root / name, seq_len)
        for table in split.with_format("arrow").iter(batch_size=writer.batch_rows):
            column = table["input_ids"].combine_chunks()
            writer.add_blocks(column.flatten().to_numpy(zero_copy_only=False).reshape(-1, seq_len))
        writer.close()
        files[name] = writer.files
    write_layout(root, files, seq_len)


# --------------------------------------------------------------------------------------------------------- prepare

def tokenized_batches(raw, *, has_id: bool, args: PrepareDataArguments, salt: str = SPLIT_SALT):
    """Yield tokenized Arrow tables in source order: via a cached, parallel `datasets.map` for a `Dataset`, or batch by
    batch for a streamed `IterableDataset` (never holding the raw set in memory)."""
    import datasets
    import pyarrow as pa
    from tqdm.auto import tqdm

    # One tiktoken thread per map process; a single process (or a stream) spreads its batches over all cores.
    threads = max(1, (os.cpu_count() or 1) // args.num_proc) if isinstance(raw, datasets.Dataset) else os.cpu_count()
    kwargs = {"tokenizer": args.tokenizer, "val_fraction": args.val_fraction, "salt": salt, "num_threads": threads}
    columns = [TEXT_COLUMN, ID_COLUMN] if has_id else [TEXT_COLUMN]
    features = tokenized_features()
    if isinstance(raw, datasets.Dataset):
        tokenized = raw.with_format("arrow").map(
            _tokenize_columns, batched=True, batch_size=MAP_BATCH_SIZE, input_columns=columns, fn_kwargs=kwargs,
            remove_columns=raw.column_names, features=features, num_proc=args.num_proc if args.num_proc > 1 else None,
            desc="tokenize",
        )
        # Packing reads the tokenized cache back one map batch at a time: larger batches only raise the allocator's
        # high-water mark (peak RSS grew with the number of 10,000-row batches read; with 1,000 rows it stays flat).
        yield from tqdm(tokenized.with_format("arrow").iter(batch_size=MAP_BATCH_SIZE), desc="pack",
                        total=-(-len(tokenized) // MAP_BATCH_SIZE), unit="batch")
        return
    rows = stream_rows(raw, args.max_docs)
    for batch in tqdm(raw.select_columns(columns).iter(batch_size=MAP_BATCH_SIZE), desc="stream+tokenize",
                      unit="batch", total=None if rows is None else -(-rows // MAP_BATCH_SIZE)):
        out = tokenize_batch(batch[TEXT_COLUMN], batch.get(ID_COLUMN), **kwargs)
        yield pa.table(out, schema=features.arrow_schema)


def stream_rows(stream, max_docs: int | None) -> int | None:
    """The documents a streamed source yields, when it can be told: the Hub's row count of the split (its dataset
    info, read with the stream), at most `max_docs`; None if neither is known. Gives the stream's bar a total and an
    ETA."""
    splits = getattr(stream.info, "splits", None) or {}
    known = splits["train"].num_examples if "train" in splits and splits["train"].num_examples else None
    return min(filter(None, (known, max_docs)), default=None)


def tokenized_features():
    """Columns of a tokenized batch: `id`, `split`, `input_ids` (uint16 tokens + eos), `skipped` (0, or why the text
    is unusable: `SKIP_REASONS`)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features({"id": string, "split": string, "input_ids": datasets.List(datasets.Value("uint16")),
                              "skipped": datasets.Value("int8")})


def _tokenize_columns(texts, ids=None, **kwargs):
    """`datasets.map` adapter in Arrow format: Arrow columns in, an Arrow table out (no per-token Python objects)."""
    import pyarrow as pa

    out = tokenize_batch(column_values(texts), None if ids is None else column_values(ids), **kwargs)
    return pa.table(out)


def column_values(column) -> list:
    """Arrow column -> Python values; a mixed-type jsonl column arrives as JSON text (datasets' `Json` type)."""
    values = column.to_pylist()
    if "json" in str(column.type):
        return [None if v is None else json.loads(v) for v in values]
    return values


# ---------------------------------------------------------------------------------------------------------- record
# What prepare_data.py may delete is decided by what it recorded when it wrote it, never by a name: a dataset's files
# by the manifest's `files` (path -> size), a folder it made by the (st_dev, st_ino) written into it.

MADE = ".edugpt-made.json"


def dataset_record(root: Path) -> dict[str, int]:
    """Every file under `root` but the manifest, as {relative path: size}: written into the manifest (`files`) once
    the dataset is complete."""
    record = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative != MANIFEST:
                record[relative] = path.lstat().st_size
    return dict(sorted(record.items()))


def record_problems(root: Path, manifest: dict) -> list[str]:
    """How `root` differs from its manifest's record: files it does not list, listed files missing, changed in size,
    or not plain files (symlinks are never followed). Empty for an untouched dataset."""
    record = manifest.get("files")
    if not isinstance(record, dict):
        return [f"{MANIFEST} holds no record of the dataset's files"]
    problems, seen = [], set()
    for folder, dirs, names in os.walk(root):
        for name in sorted(names) + sorted(d for d in dirs if Path(folder, d).is_symlink()):
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative == MANIFEST:
                continue
            seen.add(relative)
            st = path.lstat()
            if relative not in record:
                problems.append(f"{relative!r} is not in its record (prepare_data.py did not write it)")
            elif not stat.S_ISREG(st.st_mode):
                problems.append(f"{relative!r} is not the plain file prepare_data.py wrote")
            elif st.st_size != record[relative]:
                problems.append(f"{relative!r} changed since prepare_data.py wrote it ({st.st_size:,} bytes, recorded "
                                f"{record[relative]:,})")
        dirs[:] = [d for d in dirs if not Path(folder, d).is_symlink()]
    problems += [f"{name!r} is missing" for name in record if name not in seen]
    return problems


def replace_refusal(path: Path) -> str | None:
    """Why `path` (an existing, non-empty folder) must not be replaced by --overwrite; None for a prepared dataset
    whose every file is the one its manifest records."""
    if path.is_symlink() or not path.is_dir():
        return "is not a dataset prepared by prepare_data.py"
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return "is not a dataset prepared by prepare_data.py"
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        return "is not a dataset prepared by prepare_data.py (of this version)"
    if (path / MANIFEST).is_symlink():
        return f"is not a dataset prepared by prepare_data.py ({MANIFEST} is a symbolic link)"
    try:
        check_manifest(manifest, path / MANIFEST)
    except EduGPTError:
        return f"is not a dataset prepared by prepare_data.py (its {MANIFEST} lacks keys or holds values of other types)"
    problems = record_problems(path, manifest)
    if problems:
        return f"holds what its manifest does not record: {problems[0]}"
    return None


def check_output_dir(path: Path, overwrite: bool) -> None:
    """Refuse an output_dir that is not new or empty, unless it is a prepared dataset, unchanged since it was written
    (`replace_refusal`), and `overwrite` is set."""
    if path.is_symlink():
        raise EduGPTError(f"--output_dir {str(path)!r} is a symbolic link; pass the real path of the folder.")
    if path.exists() and not path.is_dir():
        raise EduGPTError(f"--output_dir {str(path)!r} is a file; pass a directory path.")
    if not path.exists() or not any(path.iterdir()):
        return
    refusal = replace_refusal(path)
    if refusal:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty, and {refusal}, so it is never "
                          "replaced (not even with --overwrite); choose a new directory (or move out of it what "
                          "prepare_data.py did not write).")
    if not overwrite:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty (a prepared dataset); pass --overwrite "
                          "to replace it or choose a new directory.")


def make_dir(path: Path) -> Path:
    """Create folder `path` (it must not exist) and record in it that this project made it: `made_here` is then the
    proof needed before deleting it."""
    path.mkdir()
    st = path.lstat()
    try:
        atomic_write_text(path / MADE, json.dumps({"made_by": "prepare_data.py", "st_dev": st.st_dev,
                                                   "st_ino": st.st_ino}) + "\n")
    except BaseException:
        path.rmdir()  # still empty: a folder without its record could never be removed again
        raise
    return path


def made_here(path: Path) -> bool:
    """Whether `path` is a real folder (not a symlink) that `make_dir` made: its record holds its own identity."""
    try:
        st = path.lstat()
        if not stat.S_ISDIR(st.st_mode):
            return False
        fd = os.open(path / MADE, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        made = json.loads(os.read(fd, 4096))
        return [made["st_dev"], made["st_ino"]] == [st.st_dev, st.st_ino]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    finally:
        os.close(fd)


def remove_made(path: Path) -> bool:
    """Delete folder `path` if `make_dir` made it (else leave it, with a warning); True when it was deleted."""
    if not made_here(path):
        if path.exists() or path.is_symlink():
            logger.warning("left %s alone: nothing records that prepare_data.py made it", path)
        return False
    shutil.rmtree(path)
    return True


def check_not_input(out: Path, source: Source) -> None:
    """Refuse an output_dir that is the input, lies inside it, or holds it (symlinks resolved): preparing must never
    replace, mix into or delete the corpus it reads."""
    if source.kind != "local":
        return
    for path in [Path(source.dataset), *map(Path, source.files)]:
        if relation := overlap(out, path):
            raise EduGPTError(f"--output_dir {str(out)!r} {relation} the input {str(path)!r}; write the prepared "
                              "dataset to a folder outside the input.")


def overlap(path: Path, other: Path) -> str | None:
    """How `path` stands to `other`, symlinks resolved: "is", "lies inside", "holds", or None when apart."""
    path, other = path.resolve(), other.resolve()
    if path == other:
        return "is"
    return "lies inside" if other in path.parents else "holds" if path in other.parents else None


def lock_path(out: Path) -> Path:
    """`.NAME.lock` beside the output (which may not exist yet, and is swapped by renames, so cannot hold its own
    lock). Never deleted: see `safefs.DirLock`."""
    return out.parent / f".{out.name}.lock"


def output_lock(out: Path) -> DirLock:
    """The lock every job writing `out` holds (the default path; the datatrove launcher and its merge)."""
    return DirLock(lock_path(out), f"--output_dir {out}")


def prepare(args: PrepareDataArguments) -> dict:
    """Run the whole preparation; returns the manifest. Output appears at `output_dir` only when complete."""
    started = time.perf_counter()
    out = Path(args.output_dir)
    source = resolve_source(args.dataset, args.subset)
    check_not_input(out, source)
    check_output_dir(out, args.overwrite)
    check_cache_dir(out, args.cache_dir)
    ensure_dir(out.parent, "the folder of --output_dir")
    backend = check_tokenizer(args.tokenizer)
    raw = load_source(source, max_docs=args.max_docs, num_proc=args.num_proc, cache_dir=args.cache_dir)
    has_id = require_text_column(raw, source)
    if not has_id:
        logger.warning("%s has no 'id' column: deriving each document's id from the SHA-256 of its text.",
                       source.dataset)

    with output_lock(out):
        recover_swap(out)
        remove_leftovers(out)
        check_output_dir(out, args.overwrite)  # again, under the lock: an interrupted swap may have completed
        check_swap_room(out)
        tmp = out.parent / f".{out.name}.tmp"
        if tmp.exists() or tmp.is_symlink():
            raise EduGPTError(f"{str(tmp)!r} is in the way and nothing records that prepare_data.py made it; move it "
                              "elsewhere and re-run.")
        try:
            make_dir(tmp)
            new = tmp / "dataset"
            new.mkdir()
            stats, content = write_dataset(tokenized_batches(raw, has_id=has_id, args=args), new, args.seq_len)
            manifest = build_manifest(args, source, has_id, backend, stats, content=content)
            manifest = write_manifest(new, manifest)
            move_into_place(new, out)
        except UnicodeDecodeError:
            raise non_utf8_error(source) from None
        except OSError as err:
            if no_space_reason(err):
                raise no_space_error(out, err) from None
            if isinstance(err, PermissionError):
                raise EduGPTError(f"cannot write beside --output_dir {str(out)!r} ({err}); pass a folder you can "
                                  "write to.") from None
            raise
        finally:
            if not os.path.lexists(swap_journal(out)):  # once journalled, the new dataset is what the next run installs
                remove_made(tmp)
    print_summary(manifest, out, time.perf_counter() - started)
    return manifest


def check_cache_dir(out: Path, cache_dir: str | None) -> None:
    """Refuse a datasets cache that is, lies inside or holds --output_dir: the cache would end up inside the dataset
    (or be replaced with it)."""
    import datasets

    cache = Path(cache_dir or datasets.config.HF_DATASETS_CACHE).expanduser().resolve()
    if relation := overlap(cache, out):
        raise EduGPTError(f"the datasets cache {str(cache)!r} {relation} --output_dir {str(out)!r}; pass a "
                          "--cache_dir outside the prepared dataset (and the dataset outside the cache).")


def non_utf8_error(source: Source) -> EduGPTError:
    """The one line for input text that is not UTF-8: the first file and line (jsonl) or row (parquet) holding it."""
    from edugpt.corpus.sources import find_non_utf8

    where = find_non_utf8(source)
    return EduGPTError(f"{where or source.dataset} holds text that is not valid UTF-8; re-encode the input as UTF-8 "
                       "(or remove that row) and re-run.")


def write_manifest(root: Path, manifest: dict) -> dict:
    """Write `root`'s manifest last, with the record of every other file in `root` (`files`): what --overwrite and
    --verify hold the dataset to."""
    manifest = {**manifest, "files": dataset_record(root)}
    _write_json(root / MANIFEST, manifest)
    return manifest


def write_dataset(batches, root: Path, seq_len: int) -> tuple[dict[str, SplitStats], dict]:
    """Pack each split's tokens into blocks written straight into `root/<split>/`, list the kept ids, and add the
    `DatasetDict` metadata: the finished layout, with no intermediate copy of the blocks. Returns the per-split
    counts and the manifest's `content` digests."""
    writer = SplitsWriter(root, seq_len, root / DOC_IDS)
    try:
        for table in batches:
            writer.add(table)
        stats = writer.close()
    except BaseException:
        writer.abort()
        raise
    require_blocks(stats, seq_len)
    files = {split: w.files for split, w in writer.splits.items()}
    write_layout(root, files, seq_len)
    return stats, content_section(files, {split: w.digests for split, w in writer.splits.items()})


def split_digest(file_digests) -> str:
    return hashlib.sha256("".join(f"{d}\n" for d in file_digests).encode()).hexdigest()


def content_section(files: dict[str, list[str]], digests: dict[str, list[str]]) -> dict:
    """The manifest's `content`: per split, the digest of its blocks and of each of its files (see CONTENT_DIGEST)."""
    return {"digest": CONTENT_DIGEST, **{split: {"sha256": split_digest(digests[split]),
                                                 "files": dict(zip(files[split], digests[split]))} for split in files}}


def write_prepared(path, splits: dict[str, np.ndarray], *, dataset: str = "arrays", **manifest_overrides) -> Path:
    """A prepared dataset written from arrays of blocks (`{"train": (n, seq_len) uint16, "validation": ...}`) with
    prepare_data.py's own writer, layout and manifest: for tests and benchmarks. Counts say one document per split;
    `manifest_overrides` replace top-level manifest keys (e.g. to write a deliberately wrong one)."""
    root = Path(path)
    seq_len = next(iter(splits.values())).shape[1]
    stats, files, digests = {}, {}, {}
    for split, blocks in splits.items():
        writer = SplitWriter(root / split, seq_len)
        writer.add_blocks(np.asarray(blocks, dtype=np.uint16))
        stats[split] = writer.close()
        stats[split].documents, stats[split].tokens = 1, stats[split].blocks * seq_len
        files[split], digests[split] = writer.files, writer.digests
    write_layout(root, files, seq_len)
    # One document id per split, chosen so that the split rule puts it there: `verify` passes on the result.
    ids = {split: next(f"doc-{i}" for i in itertools.count() if split_of(f"doc-{i}", 0.5) == split) for split in splits}
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": list(ids.values()), "split": list(ids)}, schema=id_schema()), root / DOC_IDS)
    args = PrepareDataArguments(dataset=dataset, output_dir=str(root), seq_len=seq_len, val_fraction=0.5, num_proc=1)
    source = Source("local", dataset)
    manifest = build_manifest(args, source, True, "tiktoken", stats, content=content_section(files, digests))
    _write_json(root / MANIFEST, {**manifest, "files": dataset_record(root), **manifest_overrides})
    return root


def print_summary(manifest: dict, out: Path, elapsed: float) -> None:
    splits, seq_len = manifest["splits"], manifest["seq_len"]
    total = {key: sum(s[key] for s in splits.values()) for key in asdict(SplitStats())}
    skipped = [f"{total[key]:,} rows {words}" for key, words in SKIP_WORDS.items() if total[key]]
    print(f"prepared {total['documents']:,} documents ({splits['train']['documents']:,} train / "
          f"{splits['validation']['documents']:,} validation), {total['tokens']:,} tokens -> "
          f"{splits['train']['blocks']:,} + {splits['validation']['blocks']:,} blocks of {seq_len} in {elapsed:.1f} s "
          f"({total['tokens'] / elapsed:,.0f} tokens/s)")
    if skipped:
        print(f"skipped {', '.join(skipped)}: no tokens from them (per split in the manifest)")
    if total["skipped_missing_text"] or total["skipped_non_string_text"]:
        logger.warning("%s rows had no text or a text that is not a string: check the input's 'text' column",
                       f"{total['skipped_missing_text'] + total['skipped_non_string_text']:,}")
    print(f"manifest: {out / MANIFEST}")


def build_manifest(args, source: Source, has_id: bool, backend: str, stats: dict, files=None,
                   content: dict | None = None) -> dict:
    """manifest.json: what was prepared from what, and the counts and digests `verify` re-checks (`files`: the source
    files)."""
    files = source.files if files is None else files
    manifest = {
        "format": FORMAT,
        "created_by": "prepare_data.py",
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"dataset": source.dataset, "subset": source.subset, "max_docs": args.max_docs,
                   "kind": source.kind, "files": [Path(f).name for f in files],
                   "id_column": ID_COLUMN if has_id else None,
                   "ids": "from the source" if has_id else "derived: 'sha256:' + sha256(text)"},
        "tokenizer": {"name": args.tokenizer, "vocab_size": GPT2_VOCAB_SIZE, "eos_token_id": GPT2_EOS_ID,
                      "backend": backend},
        "seq_len": args.seq_len,
        "dtype": "uint16",
        "split_rule": {"hash": SPLIT_HASH, "salt": SPLIT_SALT, "val_fraction": args.val_fraction,
                       "description": SPLIT_DESCRIPTION},
        "splits": {split: asdict(s) for split, s in stats.items()},
    }
    if content is not None:
        manifest["content"] = content
    return manifest


# ------------------------------------------------------------------------------------------------------------ swap
# The one place where a prepared dataset appears at --output_dir, whichever executor made it. Every step runs under
# the output's lock. The journal `.NAME.swap.json` is written (fsync'd) before the first rename: from then on the swap
# is decided, and `recover_swap` (the next run, under the lock) completes it from whatever point a kill stopped it at.
# The journal holds the (st_dev, st_ino) of the new dataset and of the old one: a folder is moved or deleted only while
# it is still that folder. The old dataset is deleted only once the new one is in place, and only the files its own
# manifest records; there is never a moment with both gone.

def swap_journal(out: Path) -> Path:
    return out.parent / f".{out.name}.swap.json"


def _swap_step(step: str) -> None:
    """Called between the swap's steps; tests replace it to stop the swap there, as a kill would."""


def check_swap_room(out: Path) -> None:
    """Refuse to replace `out` while `.NAME.old`, where the swap moves it, holds something (not ours, or it would have
    been removed: see `remove_leftovers`). Call with the output's lock held (an interrupted swap is completed first)."""
    old = out.parent / f".{out.name}.old"
    if _identity(out) is not None and os.path.lexists(old):
        raise EduGPTError(f"{str(old)!r} is in the way of replacing {str(out)!r}; move it elsewhere and re-run.")


def _identity(path: Path) -> list[int] | None:
    """(st_dev, st_ino) of a real folder at `path` (never through a symlink); None when there is none."""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return None
    return [st.st_dev, st.st_ino] if stat.S_ISDIR(st.st_mode) else [-1, -1]


def move_into_place(new: Path, out: Path) -> None:
    """Swap the finished dataset `new` in at `out`; the old one (if any, with --overwrite) is removed last."""
    new, out = Path(os.path.abspath(new)), Path(os.path.abspath(out))
    old = out.parent / f".{out.name}.old"
    check_swap_room(out)
    if out.is_symlink() or (out.exists() and any(out.iterdir()) and replace_refusal(out)):
        check_output_dir(out, overwrite=True)  # changed since the run began: refuse in its words
    _fsync_tree(new)  # the new dataset is on disk before the journal makes it the one to keep (a power cut)
    journal = swap_journal(out)
    atomic_write_text(journal, json.dumps({"new": str(new), "out": str(out), "old": str(old),
                                           "new_id": _identity(new), "old_id": _identity(out)}) + "\n")
    _swap_step("journal written")
    _complete_swap(new, out, old, journal, _identity(new), _identity(out))


def _complete_swap(new: Path, out: Path, old: Path, journal: Path, new_id, old_id) -> None:
    """Each step is done only if it is not done yet, so running this again after a kill finishes the swap."""
    if _identity(new) is not None:
        if _identity(out) is not None:
            os.replace(out, old)
            _fsync_dir(out.parent)
            _swap_step("old moved aside")
        os.replace(new, out)
        _fsync_dir(out.parent)
        _swap_step("new in place")
    elif _identity(out) is None and _identity(old) is not None:  # cannot happen by our steps; never leave no dataset
        os.replace(old, out)
    if old_id is not None and _identity(old) == old_id:
        _remove_dataset(old)
        _swap_step("old removed")
    journal.unlink()
    _fsync_dir(out.parent)


def _remove_dataset(root: Path) -> None:
    """Delete the files of a replaced dataset that its manifest records (each still the recorded plain file, found
    without following a symlink), then its emptied folders; anything else stays where it is, with a warning."""
    try:
        record = json.loads((root / MANIFEST).read_text()).get("files")
    except (OSError, ValueError, AttributeError):
        record = None
    record = record if isinstance(record, dict) else {}
    for folder, _, names in os.walk(root):  # never into a symlinked folder
        for name in names:
            path = Path(folder) / name
            relative, st = path.relative_to(root).as_posix(), path.lstat()
            if stat.S_ISREG(st.st_mode) and (record.get(relative) == st.st_size or (relative == MANIFEST and record)):
                path.unlink()
    for folder, _, _ in os.walk(root, topdown=False):
        with contextlib.suppress(OSError):
            os.rmdir(folder)
    if os.path.lexists(root):
        left = sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))
        logger.warning("kept %s: it holds %s, which the replaced dataset's record does not list; look at it and delete "
                       "it yourself", root, ", ".join(left[:5]) or "a file")


def recover_swap(out: Path) -> None:
    """Finish a swap a kill interrupted (see above); a no-op when there is none. Call with the output's lock held."""
    journal = swap_journal(out)
    if not os.path.lexists(journal):
        return
    out = Path(os.path.abspath(out))
    try:
        fd = os.open(journal, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:  # a symlink (ELOOP), a folder we cannot open: not a journal we wrote
        fd = None
    try:
        if fd is None or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EduGPTError(f"{str(journal)!r} is not a journal prepare_data.py wrote (it is not a plain file); move "
                              f"it away (after checking {str(out)!r} and the folders beside it) and re-run.")
        text = os.read(fd, 1 << 16)
    finally:
        if fd is not None:
            os.close(fd)
    # Only the two places a swap ever starts from, and only our `.old`, each still the folder the journal recorded: a
    # journal naming anything else (damaged, or not written by us) must not make this delete or move a folder.
    allowed_new = {out.parent / f".{out.name}.tmp" / "dataset", out.parent / f".{out.name}.prepare" / "dataset"}
    try:
        paths = json.loads(text)
        new, old = Path(os.path.abspath(paths["new"])), Path(os.path.abspath(paths["old"]))
        new_id, old_id = paths["new_id"], paths["old_id"]
        if new not in allowed_new or old != out.parent / f".{out.name}.old" or \
                Path(os.path.abspath(paths["out"])) != out:
            raise ValueError("unexpected paths")
        if _identity(new) not in (None, new_id) or _identity(old) not in (None, old_id) or \
                _identity(out) not in (None, old_id, new_id):
            raise ValueError("a folder is not the one recorded")
    except (ValueError, KeyError, TypeError):
        raise EduGPTError(f"{str(journal)!r} is damaged or names folders that are not the ones it recorded; check "
                          f"{str(out)!r} and the folders beside it by hand, then delete the journal.") from None
    logger.warning("completing the replacement of %s that an interrupted run left half done", out)
    _complete_swap(new, out, old, journal, new_id, old_id)


def remove_leftovers(out: Path) -> None:
    """Delete what a killed run left beside the output: `.NAME.tmp` when it is the folder a run made (`made_here`).
    Anything else named like a leftover (`.NAME.old` without a journal, `.NAME.tmp-PID` of older versions) is left
    alone with a warning. Only a job holding the output's lock calls this (after `recover_swap`)."""
    mine = re.compile(rf"\.{re.escape(out.name)}\.(tmp|old)(-\d+)?")
    for path in sorted(p for p in out.parent.iterdir() if mine.fullmatch(p.name)):
        if path.name == f".{out.name}.tmp" and made_here(path):
            logger.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path)
        else:
            logger.warning("left %s alone: it is named like a leftover of prepare_data.py, but nothing records that "
                           "prepare_data.py made it", path)


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under `root` (the kernel flushes what is still dirty; the rest costs nothing)."""
    for folder, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _fsync_dir(path: Path) -> None:
    """Make renames in `path` durable (a power cut after the swap must not bring the old state back)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the rename itself is still atomic
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------- verify

class DamagedDataset(EduGPTError):
    """A prepared dataset whose own files (manifest.json, `datasets`' JSON files, the Arrow files) are not what
    prepare_data.py wrote: cut short, garbage, a folder, values of the wrong type. `detail` says which and how."""

    def __init__(self, root: Path, detail: str):
        self.root, self.detail = Path(root), detail
        super().__init__(f"the prepared dataset {str(root)!r} is damaged ({detail}); prepare it again with "
                         f"prepare_data.py (`python prepare_data.py --verify {root}` lists everything that changed).")


def read_dataset_json(root: Path, rel: str):
    """The JSON in the prepared dataset's file `root/rel` (manifest.json, `datasets`' dataset_dict.json, state.json,
    dataset_info.json), None when there is none; a folder, a FIFO or bytes that are not UTF-8 JSON are a
    DamagedDataset, never an exception from deeper down (`datasets` reads these files with bare `json.load`)."""
    try:
        fd = os.open(root / rel, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO must not hang
    except FileNotFoundError:
        return None
    except OSError as err:
        raise DamagedDataset(root, f"{rel} cannot be read: {os.strerror(err.errno)}") from None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise DamagedDataset(root, f"{rel} is not a file")
            data = f.read()
    except OSError as err:
        raise DamagedDataset(root, f"{rel} cannot be read: {err.strerror or err}") from None
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as err:  # UnicodeDecodeError is a ValueError
        raise DamagedDataset(root, f"{rel} is not valid JSON: {' '.join(str(err).split())[:120]}") from None


def load_manifest(dataset_dir) -> dict:
    """The manifest of a prepared data directory, checked (`check_manifest`); a clear error when the directory is not
    prepare_data.py's, a DamagedDataset when its manifest is damaged."""
    root = Path(dataset_dir)
    path = root / MANIFEST
    if root.exists() and not root.is_dir():
        raise EduGPTError(f"{str(root)!r} is a file, not a folder; a prepared dataset is the folder prepare_data.py "
                          "wrote (its --output_dir).")
    manifest = read_dataset_json(root, MANIFEST)
    if manifest is None:
        raise EduGPTError(
            f"{root} has no {MANIFEST}, so it was not made by prepare_data.py; re-create it with "
            f"`python prepare_data.py --output_dir {root}`."
        )
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise EduGPTError(f"{str(path)!r} has format {found!r}, expected {FORMAT!r}; prepare the "
                          "dataset again with this version of prepare_data.py.")
    check_manifest_tokenizer(manifest, path)
    check_manifest(manifest, path)
    return manifest


def check_manifest_tokenizer(manifest: dict, path: Path) -> None:
    """Refuse a manifest whose tokenizer is not one prepare_data.py writes: a name with integer vocabulary size and
    end-of-text id, and a backend that fits the name (tiktoken only for GPT-2's names). Whether its ids fit a model is
    the loader's question (edugpt.train.pretrain)."""
    tokenizer = manifest.get("tokenizer")
    name = tokenizer.get("name") if isinstance(tokenizer, dict) else tokenizer
    backend = tokenizer.get("backend", "transformers") if isinstance(tokenizer, dict) else None
    if isinstance(tokenizer, dict) and isinstance(name, str) and name and all(
            isinstance(tokenizer.get(key), int) and not isinstance(tokenizer.get(key), bool) and tokenizer[key] >= 0
            for key in ("vocab_size", "eos_token_id")) and (
            backend == "transformers" or (backend == "tiktoken" and name in GPT2_NAMES)):
        return
    raise EduGPTError(f"{str(path)!r} names a tokenizer prepare_data.py does not know ({name!r}, backend {backend!r}: "
                      "GPT-2's with tiktoken, or a GPT-2-compatible one with transformers, with integer vocab_size "
                      "and eos_token_id); prepare the dataset again with prepare_data.py.")


# Keys `verify` reads, by section: a manifest without one is refused in one line, not with a KeyError.
VERIFY_KEYS = {None: ("seq_len", "split_rule", "splits", "tokenizer", "content", "files"),
               "split_rule": ("val_fraction", "salt"),
               "tokenizer": ("vocab_size",)}
VERIFY_SPLIT_KEYS = ("documents", "tokens", "blocks", "dropped_tail_tokens")


def require_manifest_keys(manifest: dict, path: Path) -> None:
    missing = []
    for section, keys in VERIFY_KEYS.items():
        where = manifest if section is None else manifest.get(section)
        missing += [k if section is None else f"{section}.{k}" for k in keys
                    if not isinstance(where, dict) or k not in where]
    splits = manifest.get("splits")
    for split in SPLITS:
        if isinstance(splits, dict):
            counts = splits.get(split)
            missing += [f"splits.{split}.{k}" for k in VERIFY_SPLIT_KEYS if not isinstance(counts, dict) or k not in counts]
    if missing:
        raise EduGPTError(f"{str(path)!r} lacks {', '.join(missing)}, so it cannot be verified; prepare the dataset "
                          "again with prepare_data.py.")


def _is_count(value) -> bool:
    return type(value) is int and value >= 0


def _object_of(test):
    return lambda value: isinstance(value, dict) and all(test(v) for v in value.values())


def _is_object(value) -> bool:
    return isinstance(value, dict)


# The type of every manifest value that verify, training, the resume check and --overwrite read, checked in one place
# (`check_manifest`) so that a manifest that parses but holds another type is one line, not a TypeError where the value
# is used. A key is checked where present; which keys must be present is VERIFY_KEYS.
MANIFEST_TYPES = (
    ("seq_len", lambda v: type(v) is int and v >= 2, "an integer >= 2"),
    ("source", _is_object, "an object"),
    ("split_rule", _is_object, "an object"),
    ("split_rule.val_fraction", lambda v: type(v) in (int, float) and 0 < v < 1, "a number between 0 and 1"),
    ("split_rule.salt", lambda v: isinstance(v, str), "a string"),
    ("splits", lambda v: isinstance(v, dict) and sorted(v) == sorted(SPLITS), "an object of the splits train and "
                                                                              "validation"),
    *((f"splits.{split}", _object_of(_is_count), "an object of counts (integers >= 0)") for split in SPLITS),
    ("content", _is_object, "an object"),
    *((f"content.{split}", _is_object, "an object") for split in SPLITS),
    *((f"content.{split}.sha256", lambda v: isinstance(v, str), "a string") for split in SPLITS),
    *((f"content.{split}.files", _object_of(lambda v: isinstance(v, str)), "an object of digests (strings)")
      for split in SPLITS),
    ("files", _object_of(_is_count), "an object of file sizes (integers >= 0)"),
)


def check_manifest(manifest: dict, path: Path) -> None:
    """Refuse a manifest that lacks a key its readers need ("lacks ...") or holds a value of another type than
    prepare_data.py writes (a DamagedDataset naming the key)."""
    require_manifest_keys(manifest, path)
    for key, test, what in MANIFEST_TYPES:
        node = manifest
        for part in key.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError and not test(node):
            shown = json.dumps(node)
            raise DamagedDataset(path.parent, f"{path.name}: {key} is {shown[:60]}{'...' if len(shown) > 60 else ''}, "
                                              f"not {what}")


# Arrow file names prepare_data.py writes (data-00000.arrow, task-00003-00000.arrow, tails-00000.arrow): a state.json
# naming anything else (a path, a hidden file) is not ours.
ARROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\.arrow")
# dataset_info.json keys besides `features` that `write_layout` writes (DatasetInfo's empty descriptive strings).
INFO_TEXT_KEYS = ("citation", "description", "homepage", "license")


def read_layout(root: Path) -> dict[str, list[str]]:
    """Each split that dataset_dict.json lists -> its Arrow files in order (state.json's), with every JSON file of
    `datasets`' layout checked to be one `write_layout` writes: `datasets.load_from_disk` then meets nothing it would
    trip over with a TypeError, and a damaged file is a DamagedDataset naming it. The block length is the one in
    dataset_info.json (whether it is the manifest's is the caller's check)."""
    listed = read_dataset_json(root, "dataset_dict.json")
    if listed is None:
        raise DamagedDataset(root, "it holds a manifest but no saved dataset (dataset_dict.json)")
    splits = listed.get("splits") if isinstance(listed, dict) and len(listed) == 1 else None
    if not (isinstance(splits, list) and all(split in SPLITS for split in splits) and len(set(splits)) == len(splits)):
        raise DamagedDataset(root, "dataset_dict.json is not the one prepare_data.py writes (an object listing the "
                                   "splits train and validation)")
    layout = {}
    for split in splits:
        info = read_dataset_json(root, f"{split}/dataset_info.json")
        seq_len = _block_length(info)
        if seq_len is None:
            raise DamagedDataset(root, f"{split}/dataset_info.json is " + (
                "missing" if info is None else "not the one prepare_data.py writes (uint16 blocks of N tokens)"))
        state = read_dataset_json(root, f"{split}/state.json")
        files = state.get("_data_files") if isinstance(state, dict) else None
        names = [f.get("filename") for f in files if isinstance(f, dict)] if isinstance(files, list) else []
        if state != layout_state(split, seq_len, names) or not all(isinstance(n, str) and ARROW_NAME.fullmatch(n)
                                                                    for n in names):
            raise DamagedDataset(root, f"{split}/state.json is " + (
                "missing" if state is None else "not the one prepare_data.py writes (the split's Arrow files)"))
        layout[split] = names
    return layout


def _block_length(info) -> int | None:
    """N when `info` (a dataset_info.json) describes uint16 blocks of N tokens exactly as `write_layout` writes it."""
    try:
        seq_len = info["features"]["input_ids"]["length"]
    except (TypeError, KeyError, IndexError):
        return None
    if type(seq_len) is not int or seq_len < 1 or info["features"] != layout_info(seq_len)["features"]:
        return None
    others = all(key in INFO_TEXT_KEYS and isinstance(value, str) for key, value in info.items() if key != "features")
    return seq_len if others else None


def load_splits(root: Path, layout: dict[str, list[str]] | None = None):
    """The prepared dataset's splits (a `datasets.DatasetDict`, memory-mapped) once `read_layout` has checked its JSON
    files. An Arrow file that cannot be read (cut short, garbage, missing) is a DamagedDataset naming it: `datasets`
    and pyarrow name no file."""
    import datasets
    import pyarrow as pa

    root = Path(root)
    layout = read_layout(root) if layout is None else layout
    try:
        return datasets.load_from_disk(str(root))
    except (OSError, ValueError, pa.ArrowException) as err:  # ArrowInvalid is a ValueError
        reason = f"{type(err).__name__}: {' '.join(str(err).split())[:120]}"
        for split, names in layout.items():
            for name in names:
                try:
                    with pa.memory_map(str(root / split / name)) as source:
                        pa.ipc.open_stream(source).read_all()
                except (OSError, ValueError, pa.ArrowException) as bad:
                    reason = f"{split}/{name} cannot be read: {type(bad).__name__}: {' '.join(str(bad).split())[:120]}"
                    break
            else:
                continue
            break
        raise DamagedDataset(root, reason) from None


def file_digest_and_max(path: Path) -> tuple[str, int]:
    """sha256 of an Arrow file's block tokens in stored order (see CONTENT_DIGEST) and its largest token id, read one
    memory-mapped record batch at a time (memory stays flat)."""
    import pyarrow as pa

    digest, top = hashlib.sha256(), 0
    with pa.memory_map(str(path)) as source:
        for batch in pa.ipc.open_stream(source):
            tokens = batch.column(0).flatten().to_numpy(zero_copy_only=False)
            digest.update(np.ascontiguousarray(tokens, dtype="<u2"))
            top = max(top, int(tokens.max(initial=0)))
    return digest.hexdigest(), top


def verification_failed(root: Path, problems: list[str]) -> EduGPTError:
    return EduGPTError(f"{str(root)!r} failed verification: " + "; ".join(problems)
                       + ". Prepare the dataset again with prepare_data.py.")


def verify(dataset_dir, *, check_record=None) -> dict:
    """Re-check a prepared dataset from its files: disjoint splits, the split rule, counts, block shape, token range,
    the blocks' content digests (manifest `content`) and the record of its files (`files`: none added, missing or
    changed in size). `check_record(root, manifest) -> problems` replaces that last check: a copy fetched from the Hub
    (edugpt.hub.datasets) lies in the HF cache as links to its blobs, beside the dataset card.

    Streams `doc_ids.parquet` (one batch of ids at a time) and the blocks (memory-mapped), so memory stays flat on
    FineWeb-sized datasets. Disjointness needs no set of ids: a document in both splits sits in the wrong one once.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(dataset_dir)
    try:
        manifest = load_manifest(root)
    except DamagedDataset as err:
        raise verification_failed(root, [err.detail]) from None
    seq_len = manifest["seq_len"]
    problems = (check_record or record_problems)(root, manifest)
    try:
        layout = read_layout(root)
        splits = load_splits(root, layout)
    except DamagedDataset as err:
        raise verification_failed(root, [err.detail, *problems]) from None
    try:
        id_file = pq.ParquetFile(root / DOC_IDS)
        schema = id_file.schema_arrow
        if any(schema.get_field_index(name) < 0 or not pa.types.is_string(schema.field(name).type)
               for name in ("id", "split")):
            raise ValueError("it does not hold the string columns id and split")
        counts = _check_doc_ids(id_file, manifest["split_rule"], problems)
    except (OSError, ValueError, pa.ArrowException) as err:  # FileNotFoundError is an OSError, ArrowInvalid a ValueError
        problems.insert(0, f"{DOC_IDS} cannot be read ({' '.join(str(err).split())[:160]})")
        raise verification_failed(root, problems) from None

    for split in SPLITS:
        expected = manifest["splits"][split]
        if counts[split] != expected["documents"]:
            problems.append(f"{DOC_IDS} lists {counts[split]} {split} documents, manifest says {expected['documents']}")
        if expected["blocks"] * seq_len + expected["dropped_tail_tokens"] != expected["tokens"]:
            problems.append(f"{split}: blocks * seq_len + dropped tail != tokens in the manifest")
        if split not in splits:
            problems.append(f"the {split} split is missing")
            continue
        ds = splits[split]
        if ds.features != block_features(seq_len):
            problems.append(f"{split} features are {ds.features}, expected uint16 blocks of {seq_len}")
            continue
        if ds.num_rows != expected["blocks"]:
            problems.append(f"{split} has {ds.num_rows} blocks, manifest says {expected['blocks']}")
        problems += _check_content(root, split, layout[split], manifest["content"], manifest["tokenizer"]["vocab_size"])
    if problems:
        raise verification_failed(root, problems)
    return manifest


def _check_doc_ids(id_file, rule: dict, problems: list[str]) -> dict[str, int]:
    """Documents per split in doc_ids.parquet; ids in a split their hash does not give, and ids in both splits, go to
    `problems`."""
    import pyarrow as pa
    import pyarrow.compute as pc

    counts = dict.fromkeys(SPLITS, 0)
    n_wrong, wrong = 0, []
    for batch in id_file.iter_batches(batch_size=ID_BATCH_ROWS, columns=["id", "split"]):
        for doc_id, split in zip(batch.column("id").to_pylist(), batch.column("split").to_pylist()):
            counts[split] = counts.get(split, 0) + 1
            if split_of(doc_id, rule["val_fraction"], rule["salt"]) != split:
                n_wrong += 1
                if len(wrong) < MAX_WRONG_IDS:
                    wrong.append((doc_id, split))
    if n_wrong:
        problems.append(f"{n_wrong} ids sit in a split their hash does not give (e.g. {wrong[0][0]!r} in "
                        f"{wrong[0][1]})")
        # An id listed in both splits is listed in the wrong one at least once, so only those ids need a second look
        # (no set of all ids in memory): their rows in the split the hash gives are the duplicates.
        suspects, shared = pa.array([doc_id for doc_id, _ in wrong], pa.string()), 0
        for batch in id_file.iter_batches(batch_size=ID_BATCH_ROWS, columns=["id", "split"]):
            hits = batch.filter(pc.is_in(batch.column("id"), value_set=suspects))
            shared += sum(split_of(doc_id, rule["val_fraction"], rule["salt"]) == split
                          for doc_id, split in zip(hits.column("id").to_pylist(), hits.column("split").to_pylist()))
        if shared:
            problems.append(f"{shared} document ids appear in both train and validation")
    return counts


def _check_content(root: Path, split: str, names: list[str], content: dict, vocab_size: int) -> list[str]:
    """One pass over a split's files, in the order training reads them: token range and content digests."""
    import pyarrow as pa

    digests, top, problems = [], 0, []
    for name in names:
        try:
            digest, file_top = file_digest_and_max(root / split / name)
        except (OSError, ValueError, pa.ArrowException) as err:
            return [f"{split}/{name} cannot be read ({' '.join(str(err).split())[:120]})"]
        digests.append(digest)
        top = max(top, file_top)
    if top >= vocab_size:
        problems.append(f"{split} holds token id {top} >= vocab_size {vocab_size}")
    recorded = content.get(split, {})
    if split_digest(digests) != recorded.get("sha256"):
        files = recorded.get("files", {})
        changed = [n for n, d in zip(names, digests) if files.get(n) != d] or names
        problems.append(f"the {split} blocks are not the ones prepared (content digest differs; "
                        f"changed or moved: {', '.join(changed[:5])}{' ...' if len(changed) > 5 else ''})")
    return problems

"""Prepare a corpus once: split by document ID, tokenize, pack each split into uint16 blocks, save, describe, verify.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128      # seconds, offline

The layout written (the data contract other modules load):
    DIR/dataset_dict.json, DIR/train/, DIR/validation/   `DatasetDict.save_to_disk`'s layout (`datasets.load_from_disk`
                                                         reads it); one column `input_ids`, fixed-length uint16
                                                         sequences of `seq_len` tokens
    DIR/manifest.json                                    source, tokenizer, split rule, per-split counts
    DIR/doc_ids.parquet                                  `id`, `split`: one row per kept document

Both ways of preparing share every piece here: `split_of`, `tokenize_batch`, `SplitWriter` (packing straight into the
split's Arrow files), `write_layout` (the metadata around them, no copy), `build_manifest`, `move_into_place` and
`verify`. This module runs them in one process over `datasets.map`; `edugpt.prepare_parallel` runs them in datatrove
tasks.

Why split by ID rather than by position: a document's split is a pure function of its ID (`split_of`), so it is the
same on any machine, with any `num_proc`, on any re-run and any `--max_docs` slice, and a duplicated document can never
sit on both sides (the original project's fix for build-nanogpt's "validation = shard 0").
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edugpt.corpus import (
    EMBEDDED,
    FINEWEB_EDU,
    ID_COLUMN,
    TEXT_COLUMN,
    Source,
    load_source,
    require_text_column,
    resolve_source,
)
from edugpt.errors import EduGPTError
from edugpt.tokenizer import (
    GPT2_EOS_ID,
    GPT2_NAMES,
    GPT2_VOCAB_SIZE,
    gpt2_tiktoken,
    load_tokenizer,
    require_gpt2_compatible,
)

logger = logging.getLogger(__name__)

FORMAT = "edugpt-prepared-v1"
SPLITS = ("train", "validation")
SPLIT_SALT = "edugpt-split-v1"
SPLIT_HASH = "sha256"
SPLIT_DESCRIPTION = (
    "validation iff int.from_bytes(sha256((salt + ':' + id).encode('utf-8')).digest()[:8], 'big') / 2**64 "
    "< val_fraction, else train"
)
MANIFEST = "manifest.json"
DOC_IDS = "doc_ids.parquet"
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


@dataclass
class PrepareDataArguments:
    """Arguments of `prepare_data.py` (also usable from Python: `prepare(PrepareDataArguments(...))`)."""

    dataset: str = field(default=FINEWEB_EDU, metadata={
        "help": f"Hub dataset id, a local parquet/jsonl file or directory, or '{EMBEDDED}' (offline Python docs)."})
    output_dir: str | None = field(default=None, metadata={"help": "Where the prepared dataset is written."})
    subset: str | None = field(default=None, metadata={
        "help": "Hub config: sample-10BT (default for fineweb-edu), sample-100BT, sample-350BT or full."})
    val_fraction: float = field(default=0.01, metadata={"help": "Share of documents (by ID hash) for validation."})
    seq_len: int = field(default=1024, metadata={"help": "Tokens per packed block."})
    num_proc: int = field(default_factory=lambda: os.cpu_count() or 1, metadata={
        "help": "Processes for tokenizing with the default executor (datasets.map); default: all cores."})
    max_docs: int | None = field(default=None, metadata={
        "help": "Only the first N documents (quick slices; default executor)."})
    tokenizer: str = field(default="gpt2", metadata={
        "help": "gpt2 (tiktoken with GPT-2's ids) or a GPT-2-compatible HF tokenizer id/path."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    verify: str | None = field(default=None, metadata={"help": "Only re-check an already prepared dataset dir."})
    cache_dir: str | None = field(default=None, metadata={
        "help": "datasets cache dir of the default executor (default: HF_DATASETS_CACHE); tasks use no cache."})

    def __post_init__(self):
        if self.verify is not None:
            return
        if not self.output_dir:
            raise EduGPTError("--output_dir is required; pass where the prepared dataset should go, e.g. "
                              "--output_dir runs/data.")
        if not 0.0 < self.val_fraction < 1.0:
            raise EduGPTError(f"--val_fraction must be between 0 and 1 (exclusive), got {self.val_fraction}; "
                              "try 0.01.")
        if self.seq_len < 2:
            raise EduGPTError(f"--seq_len must be at least 2, got {self.seq_len}; GPT-2 uses 1024.")
        if self.num_proc < 1:
            raise EduGPTError(f"--num_proc must be at least 1, got {self.num_proc}.")
        if self.max_docs is not None and self.max_docs < 1:
            raise EduGPTError(f"--max_docs must be a positive number of documents, got {self.max_docs}.")


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
    return lambda texts: tokenizer(texts, add_special_tokens=False)["input_ids"]


def check_tokenizer(name: str, vocab_size: int = GPT2_VOCAB_SIZE) -> str:
    """Refuse a tokenizer whose ids are not GPT-2's (or do not fit `vocab_size`); return the backend used."""
    if name in GPT2_NAMES:
        return "tiktoken"
    require_gpt2_compatible(load_tokenizer(name), vocab_size)
    return "transformers"


def tokenize_batch(texts, ids, *, tokenizer: str, val_fraction: float, salt: str = SPLIT_SALT,
                   num_threads: int = 1) -> dict:
    """One `datasets.map` batch: split each document by ID, tokenize the usable ones and append `<|endoftext|>`.

    Null, non-string and blank texts are kept as rows with no tokens and `skipped=True` so they can be counted.
    Returns Arrow arrays (a uint16 list column) so no Python int lists are converted back by `datasets`.
    """
    import pyarrow as pa

    doc_ids = [derive_id(t) if i is None or i == "" else str(i) for t, i in zip(texts, ids or itertools.repeat(None))]
    usable = [isinstance(t, str) and not t.isspace() and t != "" for t in texts]
    encoded = _encoder(tokenizer, num_threads)([t for t, ok in zip(texts, usable) if ok])
    lengths = iter(len(tokens) + 1 for tokens in encoded)
    offsets = np.zeros(len(texts) + 1, dtype=np.int32)
    offsets[1:] = np.cumsum([next(lengths) if ok else 0 for ok in usable])
    flat = np.fromiter(itertools.chain.from_iterable(tokens + [GPT2_EOS_ID] for tokens in encoded),
                       dtype=np.uint16, count=int(offsets[-1]))
    return {
        "id": doc_ids,
        "split": [split_of(i, val_fraction, salt) for i in doc_ids],
        "input_ids": pa.ListArray.from_arrays(pa.array(offsets), pa.array(flat)),
        "skipped": [not ok for ok in usable],
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
    skipped_empty_documents: int = 0


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
        self.stats = SplitStats()

    def add(self, table) -> None:
        """Add a tokenized batch (Arrow table with `input_ids` and `skipped`) of this split's documents."""
        import pyarrow.compute as pc

        skipped = int(pc.sum(table["skipped"]).as_py() or 0)
        self.stats.skipped_empty_documents += skipped
        self.stats.documents += table.num_rows - skipped
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
        values = pa.array(blocks.reshape(-1), type=pa.uint16())
        self.writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, self.seq_len)}))
        self.stats.blocks += len(blocks)
        self.filled = 0
        self.batches_in_file += 1
        if self.batches_in_file == self.batches_per_file:
            self.writer.finalize()
            self.writer, self.batches_in_file = None, 0

    @property
    def tail(self) -> np.ndarray:
        return self.packer.carry

    def close(self) -> SplitStats:
        if self.filled:
            self._write(self.buffer[:self.filled])
        self.buffer = None
        if self.writer is not None:
            self.writer.finalize()
            self.writer = None
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
            ids = part.filter(pc.invert(part["skipped"])).select(["id", "split"]).cast(id_schema())
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


def id_schema():
    """Schema of doc_ids.parquet: one row per kept document."""
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("split", pa.string())])


class EmptySplitError(EduGPTError):
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
    from datasets import DatasetInfo
    from datasets.utils.py_utils import asdict

    root = Path(root)
    info = asdict(DatasetInfo(features=block_features(seq_len)))
    for split, names in files.items():
        fingerprint = hashlib.sha256(json.dumps([split, seq_len, names]).encode()).hexdigest()[:16]
        state = {"_data_files": [{"filename": name} for name in names], "_fingerprint": fingerprint,
                 "_format_columns": None, "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False,
                 "_split": None}
        _write_json(root / split / "state.json", state, sort_keys=True)
        _write_json(root / split / "dataset_info.json", {key: info[key] for key in sorted(info)})
    _write_json(root / "dataset_dict.json", {"splits": list(files)})


def _write_json(path: Path, content, sort_keys: bool = False) -> None:
    """Write JSON through a temporary file and a rename: a reader (or a re-run after a kill) never sees half of it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")
    os.replace(tmp, path)


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
    for batch in tqdm(raw.select_columns(columns).iter(batch_size=MAP_BATCH_SIZE), desc="stream+tokenize",
                      unit="batch"):
        out = tokenize_batch(batch[TEXT_COLUMN], batch.get(ID_COLUMN), **kwargs)
        yield pa.table(out, schema=features.arrow_schema)


def tokenized_features():
    """Columns of a tokenized batch: `id`, `split`, `input_ids` (uint16 tokens + eos), `skipped` (unusable text)."""
    import datasets

    string = datasets.Value("string")
    return datasets.Features({"id": string, "split": string, "input_ids": datasets.List(datasets.Value("uint16")),
                              "skipped": datasets.Value("bool")})


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


def check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise EduGPTError(f"--output_dir {str(path)!r} is a file; pass a directory path.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty; pass --overwrite to replace it or "
                          "choose a new directory.")


def prepare(args: PrepareDataArguments) -> dict:
    """Run the whole preparation; returns the manifest. Output appears at `output_dir` only when complete."""
    started = time.perf_counter()
    out = Path(args.output_dir)
    check_output_dir(out, args.overwrite)
    source = resolve_source(args.dataset, args.subset)
    backend = check_tokenizer(args.tokenizer)
    raw = load_source(source, max_docs=args.max_docs, num_proc=args.num_proc, cache_dir=args.cache_dir)
    has_id = require_text_column(raw, source)
    if not has_id:
        logger.warning("%s has no 'id' column: deriving each document's id from the SHA-256 of its text.",
                       source.dataset)

    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_work(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        tmp.mkdir()
        stats = write_dataset(tokenized_batches(raw, has_id=has_id, args=args), tmp, args.seq_len)
        manifest = build_manifest(args, source, has_id, backend, stats)
        _write_json(tmp / MANIFEST, manifest)
        move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print_summary(manifest, out, time.perf_counter() - started)
    return manifest


def write_dataset(batches, root: Path, seq_len: int) -> dict[str, SplitStats]:
    """Pack each split's tokens into blocks written straight into `root/<split>/`, list the kept ids, and add the
    `DatasetDict` metadata: the finished layout, with no intermediate copy of the blocks."""
    writer = SplitsWriter(root, seq_len, root / DOC_IDS)
    for table in batches:
        writer.add(table)
    stats = writer.close()
    require_blocks(stats, seq_len)
    write_layout(root, {split: w.files for split, w in writer.splits.items()}, seq_len)
    return stats


def print_summary(manifest: dict, out: Path, elapsed: float) -> None:
    splits, seq_len = manifest["splits"], manifest["seq_len"]
    total = {key: sum(s[key] for s in splits.values()) for key in asdict(SplitStats())}
    print(f"prepared {total['documents']:,} documents ({splits['train']['documents']:,} train / "
          f"{splits['validation']['documents']:,} validation, {total['skipped_empty_documents']:,} empty skipped), "
          f"{total['tokens']:,} tokens -> {splits['train']['blocks']:,} + {splits['validation']['blocks']:,} blocks of "
          f"{seq_len} in {elapsed:.1f} s ({total['tokens'] / elapsed:,.0f} tokens/s)")
    print(f"manifest: {out / MANIFEST}")


def build_manifest(args, source: Source, has_id: bool, backend: str, stats: dict, files=None) -> dict:
    """manifest.json: what was prepared from what, and the counts `verify` re-checks (`files`: the source files)."""
    files = source.files if files is None else files
    return {
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


def _remove_abandoned_work(out: Path) -> None:
    """Delete `.NAME.tmp-PID` / `.NAME.old-PID` folders left by a run that was killed (its PID no longer exists)."""
    for path in [*out.parent.glob(f".{out.name}.tmp-*"), *out.parent.glob(f".{out.name}.old-*")]:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            logger.info("removing %s, left by an interrupted run", path)
            shutil.rmtree(path, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished dataset in: the old one (if any, with --overwrite) is removed only after the rename.
    The one place where a prepared dataset appears at `--output_dir`, whichever executor made it."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------- verify

def load_manifest(dataset_dir) -> dict:
    """The manifest of a prepared data directory; a clear error when the directory is not prepare_data.py's."""
    root = Path(dataset_dir)
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise EduGPTError(
            f"{root} has no {MANIFEST}, so it was not made by prepare_data.py; re-create it with "
            f"`python prepare_data.py --output_dir {root}`."
        ) from None
    except ValueError as err:
        raise EduGPTError(f"{str(path)!r} is not valid JSON ({err}); prepare the dataset again.") from None
    found = manifest.get("format") if isinstance(manifest, dict) else None
    if found != FORMAT:
        raise EduGPTError(f"{str(path)!r} has format {found!r}, expected {FORMAT!r}; prepare the "
                          "dataset again with this version of prepare_data.py.")
    return manifest


def verify(dataset_dir) -> dict:
    """Re-check a prepared dataset from its files: disjoint splits, the split rule, counts, block shape, token range.

    Streams `doc_ids.parquet` (one batch of ids at a time) and the blocks (memory-mapped), so memory stays flat on
    FineWeb-sized datasets. Disjointness needs no set of ids: a document in both splits sits in the wrong one once.
    """
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = Path(dataset_dir)
    manifest = load_manifest(root)
    seq_len, rule = manifest["seq_len"], manifest["split_rule"]
    problems = []
    try:
        id_file = pq.ParquetFile(root / DOC_IDS)
        splits = datasets.load_from_disk(str(root))
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as err:
        raise EduGPTError(f"cannot read the prepared dataset in {str(root)!r} ({err}); prepare it again.") from None

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
        top = max((pc.max(chunk.flatten()).as_py() or 0 for chunk in ds.data.column("input_ids").chunks), default=0)
        if top >= manifest["tokenizer"]["vocab_size"]:
            problems.append(f"{split} holds token id {top} >= vocab_size {manifest['tokenizer']['vocab_size']}")
    if problems:
        raise EduGPTError(f"{str(root)!r} failed verification: " + "; ".join(problems)
                          + ". Prepare the dataset again with prepare_data.py.")
    return manifest

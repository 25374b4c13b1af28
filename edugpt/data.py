"""Prepare a corpus once: split by document ID, tokenize, pack each split into uint16 blocks, save, describe, verify.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128      # seconds, offline

The layout written (the data contract other modules load):
    DIR/dataset_dict.json, DIR/train/, DIR/validation/   `DatasetDict.save_to_disk`; one column `input_ids`,
                                                         fixed-length uint16 sequences of `seq_len` tokens
    DIR/manifest.json                                    source, tokenizer, split rule, per-split counts
    DIR/doc_ids.parquet                                  `id`, `split`: one row per kept document

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
        "help": "Processes for tokenizing (datasets.map); default: all cores."})
    max_docs: int | None = field(default=None, metadata={"help": "Only the first N documents (quick slices)."})
    tokenizer: str = field(default="gpt2", metadata={
        "help": "gpt2 (tiktoken with GPT-2's ids) or a GPT-2-compatible HF tokenizer id/path."})
    overwrite: bool = field(default=False, metadata={"help": "Replace a non-empty output_dir."})
    verify: str | None = field(default=None, metadata={"help": "Only re-check an already prepared dataset dir."})
    cache_dir: str | None = field(default=None, metadata={"help": "datasets cache dir (default: HF_DATASETS_CACHE)."})

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


def save_blocks(splits, path, seq_len: int) -> None:
    """`DatasetDict.save_to_disk(path)` with record batches of `record_batch_rows(seq_len)` rows.

    `save_to_disk` takes no batch size: it reads `datasets.config.DEFAULT_MAX_BATCH_SIZE` when called (both for its
    own slices and as the ArrowWriter's default), so that value is raised for the duration of this call only.
    Saving runs in this process (no `num_proc`), where the raised value is seen.
    """
    import datasets

    default = datasets.config.DEFAULT_MAX_BATCH_SIZE
    datasets.config.DEFAULT_MAX_BATCH_SIZE = record_batch_rows(seq_len)
    try:
        splits.save_to_disk(str(path))
    finally:
        datasets.config.DEFAULT_MAX_BATCH_SIZE = default


@dataclass
class SplitStats:
    documents: int = 0
    tokens: int = 0
    blocks: int = 0
    dropped_tail_tokens: int = 0
    skipped_empty_documents: int = 0


class SplitWriter:
    """Streams one split's documents into packed blocks in an Arrow file (constant memory, one tail per split)."""

    def __init__(self, path: Path, seq_len: int):
        from datasets.arrow_writer import ArrowWriter

        self.path = path
        self.packer = BlockPacker(seq_len)
        self.writer = ArrowWriter(features=block_features(seq_len), path=str(path))
        self.stats = SplitStats()

    def add(self, table) -> None:
        """Add a tokenized batch (Arrow table with `input_ids` and `skipped`) of this split's documents."""
        import pyarrow as pa
        import pyarrow.compute as pc

        skipped = int(pc.sum(table["skipped"]).as_py() or 0)
        self.stats.skipped_empty_documents += skipped
        self.stats.documents += table.num_rows - skipped
        tokens = table["input_ids"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
        self.stats.tokens += len(tokens)
        blocks = self.packer.push(tokens)
        if len(blocks):
            values = pa.array(blocks.reshape(-1), type=pa.uint16())
            self.writer.write_table(pa.table({"input_ids": pa.FixedSizeListArray.from_arrays(values, blocks.shape[1])}))
            self.stats.blocks += len(blocks)

    def close(self) -> SplitStats:
        self.writer.finalize()
        self.stats.dropped_tail_tokens = self.packer.tail
        return self.stats


# --------------------------------------------------------------------------------------------------------- prepare

def tokenized_batches(raw, *, has_id: bool, args: PrepareDataArguments, salt: str = SPLIT_SALT):
    """Yield tokenized Arrow tables in source order: via a cached, parallel `datasets.map` for a `Dataset`, or batch by
    batch for a streamed `IterableDataset` (never holding the raw set in memory)."""
    import datasets
    import pyarrow as pa
    from tqdm.auto import tqdm

    string, uint16 = datasets.Value("string"), datasets.Value("uint16")
    features = datasets.Features({"id": string, "split": string, "input_ids": datasets.List(uint16),
                                  "skipped": datasets.Value("bool")})
    # One tiktoken thread per map process; a single process (or a stream) spreads its batches over all cores.
    threads = max(1, (os.cpu_count() or 1) // args.num_proc) if isinstance(raw, datasets.Dataset) else os.cpu_count()
    kwargs = {"tokenizer": args.tokenizer, "val_fraction": args.val_fraction, "salt": salt, "num_threads": threads}
    columns = [TEXT_COLUMN, ID_COLUMN] if has_id else [TEXT_COLUMN]
    if isinstance(raw, datasets.Dataset):
        tokenized = raw.with_format("arrow").map(
            _tokenize_columns, batched=True, batch_size=MAP_BATCH_SIZE, input_columns=columns, fn_kwargs=kwargs,
            remove_columns=raw.column_names, features=features, num_proc=args.num_proc if args.num_proc > 1 else None,
            desc="tokenize",
        )
        yield from tqdm(tokenized.with_format("arrow").iter(batch_size=10 * MAP_BATCH_SIZE), desc="pack",
                        total=-(-len(tokenized) // (10 * MAP_BATCH_SIZE)), unit="batch")
        return
    for batch in tqdm(raw.select_columns(columns).iter(batch_size=MAP_BATCH_SIZE), desc="stream+tokenize",
                      unit="batch"):
        out = tokenize_batch(batch[TEXT_COLUMN], batch.get(ID_COLUMN), **kwargs)
        yield pa.table(out, schema=features.arrow_schema)


def _tokenize_columns(texts, ids=None, **kwargs):
    """`datasets.map` adapter in Arrow format: Arrow columns in, an Arrow table out (no per-token Python objects)."""
    import pyarrow as pa

    out = tokenize_batch(_to_python(texts), None if ids is None else _to_python(ids), **kwargs)
    return pa.table(out)


def _to_python(column) -> list:
    """Arrow column -> Python values; a mixed-type jsonl column arrives as JSON text (datasets' `Json` type)."""
    values = column.to_pylist()
    if "json" in str(column.type):
        return [None if v is None else json.loads(v) for v in values]
    return values


def _check_output_dir(path: Path, overwrite: bool) -> None:
    if path.exists() and not path.is_dir():
        raise EduGPTError(f"--output_dir {str(path)!r} is a file; pass a directory path.")
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise EduGPTError(f"--output_dir {str(path)!r} exists and is not empty; pass --overwrite to replace it or "
                          "choose a new directory.")


def prepare(args: PrepareDataArguments) -> dict:
    """Run the whole preparation; returns the manifest. Output appears at `output_dir` only when complete."""
    started = time.perf_counter()
    out = Path(args.output_dir)
    _check_output_dir(out, args.overwrite)
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
        stats = _write_splits(tokenized_batches(raw, has_id=has_id, args=args), tmp, args.seq_len)
        manifest = _manifest(args, source, has_id, backend, stats)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        _move_into_place(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    elapsed = time.perf_counter() - started
    total = {key: sum(getattr(s, key) for s in stats.values()) for key in asdict(SplitStats())}
    print(f"prepared {total['documents']:,} documents ({stats['train'].documents:,} train / "
          f"{stats['validation'].documents:,} validation, {total['skipped_empty_documents']:,} empty skipped), "
          f"{total['tokens']:,} tokens -> {stats['train'].blocks:,} + {stats['validation'].blocks:,} blocks of "
          f"{args.seq_len} in {elapsed:.1f} s ({total['tokens'] / elapsed:,.0f} tokens/s)")
    print(f"manifest: {out / MANIFEST}")
    return manifest


def _write_splits(batches, tmp: Path, seq_len: int) -> dict[str, SplitStats]:
    """Pack each split's tokens into blocks, list kept ids, then `save_to_disk` both splits into `tmp`."""
    import datasets
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    scratch = tmp / "scratch"
    scratch.mkdir(parents=True)
    writers = {split: SplitWriter(scratch / f"{split}.arrow", seq_len) for split in SPLITS}
    id_schema = pa.schema([("id", pa.string()), ("split", pa.string())])
    with pq.ParquetWriter(tmp / DOC_IDS, id_schema, compression="zstd") as ids_writer:
        for table in batches:
            for split, writer in writers.items():
                part = table.filter(pc.equal(table["split"], split))
                writer.add(part)
                ids_writer.write_table(part.filter(pc.invert(part["skipped"])).select(["id", "split"]).cast(id_schema))
    stats = {split: writer.close() for split, writer in writers.items()}
    for split, s in stats.items():
        if s.blocks == 0:
            raise EduGPTError(
                f"the {split} split would have 0 blocks ({s.tokens} tokens from {s.documents} documents < "
                f"--seq_len {seq_len}); " + ("raise" if split == "validation" else "lower") + " --val_fraction, "
                "use more documents (--max_docs) or lower --seq_len.")
    # save_to_disk copies the scratch files into the standard layout (shards, dataset_info.json, state.json).
    splits = datasets.DatasetDict({s: datasets.Dataset.from_file(str(scratch / f"{s}.arrow")) for s in SPLITS})
    save_blocks(splits, tmp, seq_len)
    del splits
    shutil.rmtree(scratch)
    return stats


def _manifest(args, source: Source, has_id: bool, backend: str, stats: dict) -> dict:
    return {
        "format": FORMAT,
        "created_by": "prepare_data.py",
        "created_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "source": {"dataset": source.dataset, "subset": source.subset, "max_docs": args.max_docs,
                   "kind": source.kind, "files": [Path(f).name for f in source.files],
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


def _move_into_place(tmp: Path, out: Path) -> None:
    """Swap the finished dataset in: the old one (if any, with --overwrite) is removed only after the rename."""
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

    Streams `doc_ids.parquet` and the blocks (memory-mapped), so it also works on FineWeb-sized datasets; only the
    validation ids are held in memory.
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
    wrong, val_ids = [], []
    for batch in id_file.iter_batches(batch_size=1 << 20, columns=["id", "split"]):
        for doc_id, split in zip(batch.column("id").to_pylist(), batch.column("split").to_pylist()):
            counts[split] = counts.get(split, 0) + 1
            if split_of(doc_id, rule["val_fraction"], rule["salt"]) != split:
                wrong.append((doc_id, split))
        val_ids.append(batch.column("id").filter(pc.equal(batch.column("split"), "validation")))
    if wrong:
        problems.append(f"{len(wrong)} ids sit in a split their hash does not give (e.g. {wrong[0][0]!r} in "
                        f"{wrong[0][1]})")
    val_set = pa.concat_arrays(val_ids) if val_ids else pa.array([], pa.string())
    shared = 0
    for batch in id_file.iter_batches(batch_size=1 << 20, columns=["id", "split"]):
        train = batch.column("id").filter(pc.equal(batch.column("split"), "train"))
        shared += pc.sum(pc.is_in(train, value_set=val_set)).as_py() or 0
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

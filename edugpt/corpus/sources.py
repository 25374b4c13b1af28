"""Where documents come from: Hub FineWeb-Edu (streamed or downloaded), local parquet/jsonl, or the embedded corpus.

Every source yields rows in FineWeb-Edu's schema; only `text` is required (`id` is derived from the text when
missing). `load_source` returns a `datasets.Dataset` (Arrow, memory-mapped, cached: map-able with `num_proc`) or, for
the big Hub subsets and for `--max_docs` slices of the Hub, an `IterableDataset` that never holds the raw set in RAM.
`parquet_batches` is the one parquet reader of the project's own: local parquet for the single-machine path, and
every parallel task's share of the rows (local files or `hf://` URLs).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.io.atomic import no_space_error, no_space_reason
from edugpt.io.net import hub_available

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
# Real English prose from CPython 3.11.7's documentation; see assets/corpus/README.md for provenance and license.
EMBEDDED_CORPUS = Path(__file__).resolve().parents[1] / "assets" / "corpus" / "python-docs.parquet"
FINEWEB_EDU = "HuggingFaceFW/fineweb-edu"
DEFAULT_SUBSET = "sample-10BT"
# `--subset full` means the whole dataset, which the Hub calls the "default" config (about 1.3T tokens).
SUBSET_ALIASES = {"full": "default"}
# Configs too big to download whole (~270 GB of parquet and up): always streamed. sample-10BT (~27 GB) is downloaded
# into the datasets cache instead, which makes tokenizing parallel (`num_proc`) and resumable from the cache.
STREAMED_SUBSETS = {"sample-100BT", "sample-350BT", "default"}
TEXT_COLUMN = "text"
ID_COLUMN = "id"
# load_dataset builder for each supported file suffix.
FILE_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".jsonl.gz": "json", ".json.gz": "json",
                 ".jsonl.zst": "json"}
HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
# Bytes pyarrow reads at a time from a parquet column chunk. With a buffered stream (and no pre-buffering) it decodes
# one batch at a time; without, it loads a whole row group first, and `datasets`' parquet loader always does: a file
# written as one 450 MB row group cost 800 MiB of Arrow memory to load that way, 25 MiB this way (measured).
PARQUET_READ_BUFFER = 1 << 20
# Documents per batch read from parquet (the same batch size as tokenizing).
PARQUET_BATCH_ROWS = 1000


@dataclass
class Source:
    """A resolved `--dataset`: what it is, and everything needed to load it again."""

    kind: str  # "embedded" | "local" | "hub"
    dataset: str
    subset: str | None = None
    files: list[str] = field(default_factory=list)
    builder: str | None = None  # "parquet" | "json" for local files

    @property
    def streaming_hint(self) -> bool:
        return self.kind == "hub" and self.subset in STREAMED_SUBSETS


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(FILE_BUILDERS, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    return path.suffix.lower()


def resolve_source(dataset: str, subset: str | None = None) -> Source:
    """Decide what `--dataset` names: `embedded`, an existing file/directory, or a Hub dataset id."""
    if dataset == EMBEDDED:
        if subset is not None:
            raise EduGPTError("--subset only applies to Hub datasets; drop it for --dataset embedded.")
        return Source("embedded", EMBEDDED, files=[str(EMBEDDED_CORPUS)], builder="parquet")
    path = Path(dataset).expanduser()
    if path.exists():
        if subset is not None:
            raise EduGPTError(f"--subset only applies to Hub datasets; drop it for the local source {dataset!r}.")
        return _local_source(path)
    looks_like_path = dataset.startswith((".", "/", "~")) or _suffix(path) in {*FILE_BUILDERS, ".csv", ".txt", ".tsv"}
    if looks_like_path or not HUB_ID.match(dataset):
        raise EduGPTError(f"dataset path {dataset!r} does not exist; pass an existing parquet/jsonl file or directory, "
                          "a Hub dataset id, or --dataset embedded.")
    if subset is None and dataset == FINEWEB_EDU:
        subset = DEFAULT_SUBSET
    return Source("hub", dataset, subset=SUBSET_ALIASES.get(subset, subset))


def _local_source(path: Path) -> Source:
    if path.is_dir():
        # Hidden files and folders are skipped: `.cache/`, and a preparation's own `.NAME.prepare/` work dir when the
        # output sits inside the input folder.
        files = sorted(p for p in path.rglob("*") if (p.is_file() or not p.exists()) and _suffix(p) in FILE_BUILDERS
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        for p in files:  # a link to nothing, left out in silence, would make a smaller dataset than asked for
            if not p.exists():
                raise EduGPTError(f"{str(p)!r} is a symbolic link to {os.readlink(p)!r}, which does not exist; fix "
                                  "the link or remove it from the folder.")
        if not files:
            raise EduGPTError(f"directory {str(path)!r} holds no .parquet or .jsonl files; point --dataset at a folder "
                              "of FineWeb-Edu-style parquet/jsonl files.")
    else:
        files = [path]
    builders = {FILE_BUILDERS.get(_suffix(p)) for p in files}
    if None in builders:
        raise EduGPTError(f"unsupported file type {_suffix(path)!r} for {str(path)!r}; pass .parquet or .jsonl "
                          "(optionally .gz) files with a 'text' column.")
    if len(builders) > 1:
        raise EduGPTError(f"directory {str(path)!r} mixes parquet and jsonl files; keep one format per --dataset.")
    return Source("local", str(path), files=[str(p) for p in files], builder=builders.pop())


def load_source(source: Source, *, max_docs: int | None = None, num_proc: int = 1, cache_dir: str | None = None):
    """Raw documents: a `Dataset` (local, embedded, downloaded Hub subset) or an `IterableDataset` (streamed)."""
    import datasets

    if source.kind == "hub":
        if not hub_available():
            raise EduGPTError(f"the Hugging Face Hub is unreachable (offline), so {source.dataset!r} cannot be loaded; "
                              "pass a local parquet/jsonl file or directory, or --dataset embedded.")
        if source.streaming_hint or max_docs is not None:
            # Streaming reads parquet row groups on the fly: constant memory, nothing cached, no num_proc.
            stream = datasets.load_dataset(source.dataset, name=source.subset, split="train", streaming=True)
            return stream.take(max_docs) if max_docs is not None else stream
        ds = datasets.load_dataset(source.dataset, name=source.subset, split="train", cache_dir=cache_dir,
                                   num_proc=num_proc)
    elif source.builder == "parquet":
        ds = local_parquet_dataset(source, cache_dir=cache_dir)
    else:
        require_json_lines(source.files)
        try:
            ds = datasets.load_dataset(source.builder, data_files=source.files, split="train", cache_dir=cache_dir)
        except Exception as err:  # `datasets` wraps the parser's error without naming the line: find it
            if no_space_reason(err):  # its cache filled the disk: not bad input
                raise no_space_error(cache_dir or datasets.config.HF_DATASETS_CACHE, err.__cause__ or err) from None
            raise json_error(source.files, err) from None
    if len(ds) == 0:
        raise EduGPTError(f"{source.dataset!r} holds no documents; point --dataset at files with rows.")
    if max_docs is not None and max_docs < len(ds):
        ds = ds.select(range(max_docs))
    return ds


# What each line of a jsonl input must be, said when one is not (corpus inputs; finetune_data passes its own).
CORPUS_ROW = "one JSON object with a 'text' key"


def _json_lines(file: str):
    """(line number, bytes) of a local .jsonl/.json(.gz) file, streamed; nothing for .zst (read by `datasets` only)."""
    import gzip
    import zlib

    if file.endswith(".zst"):
        return
    try:
        with (gzip.open if file.endswith(".gz") else open)(file, "rb") as f:
            yield from enumerate(f, 1)
    except (OSError, EOFError, zlib.error) as bad:  # a damaged .gz: BadGzipFile (an OSError), EOFError or zlib.error
        raise EduGPTError(f"cannot read {file!r} ({bad}); fix or remove it.") from None


def bad_json_line(file: str, number: int, line: bytes, row: str = CORPUS_ROW) -> EduGPTError | None:
    """The one-line error for line `number` of a JSON Lines file when it is not blank and not a JSON object."""
    if not line.strip():
        return None
    try:
        value = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError:
        return EduGPTError(f"{file}:{number} holds text that is not valid UTF-8; re-encode the file as UTF-8 (or "
                           "remove that line) and re-run.")
    except (ValueError, RecursionError) as bad:
        return EduGPTError(f"{file}:{number} is not a line of JSON ({str(bad)[:80]}); fix or remove that line "
                           f"(.jsonl holds {row} per line).")
    if not isinstance(value, dict):
        kind = "null" if value is None else type(value).__name__
        return EduGPTError(f"{file}:{number} is a JSON {kind}, not an object; each line of a .jsonl file must be {row}.")
    return None


def require_json_lines(files, row: str = CORPUS_ROW) -> None:
    """Refuse, naming FILE:LINE, the first line of a JSON Lines input that holds a JSON value other than an object
    (`null`, a list, a number ...), before `datasets` reads it: its JSON loader segfaults on a file that starts with
    `null` (datasets 5.2) and reads a later `null` as an empty row. One streamed pass that parses only the lines that
    do not start with `{` (a line that does is an object or not JSON at all: the loader says which, `json_error` finds
    the line)."""
    for file in files:
        for number, line in _json_lines(file):
            if line.startswith(b"{"):
                continue  # the usual line: 250-380 MB/s on 2 busy cores (measured; bytes.count over chunks was slower)
            stripped = line.strip()
            if stripped and not stripped.startswith(b"{"):
                raise bad_json_line(file, number, line, row)  # never None: no object starts with another byte


def json_error(files, err: Exception) -> EduGPTError:
    """The one-line error for jsonl input `datasets` could not load: the first file and line that is not a JSON
    object, an input with no rows, or else what `datasets` said."""
    for file in files:
        for number, line in _json_lines(file):
            error = bad_json_line(file, number, line)
            if error is not None:
                return error
    if all(os.path.getsize(f) == 0 for f in files):
        return EduGPTError(f"{', '.join(files)} is empty; point --dataset at files with documents.")
    cause = err.__cause__ or err
    return EduGPTError(f"cannot load {', '.join(files)[:200]} ({type(cause).__name__}: {str(cause)[:200]}); check "
                       "that each line is a JSON object with a 'text' key.")


def first_non_utf8_row(batch) -> int | None:
    """Index of the first row of an Arrow record batch with a string value that is not valid UTF-8 (parquet and
    Arrow readers do not check; converting it to Python raises UnicodeDecodeError), or None."""
    import pyarrow as pa

    bad = None
    for column in batch.columns:
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            continue
        for row, value in enumerate(column.cast(pa.large_binary()).to_pylist()):
            if value is not None and (bad is None or row < bad):
                try:
                    value.decode("utf-8")
                except UnicodeDecodeError:
                    bad = row
                    break
    return bad


def find_non_utf8(source: Source) -> str | None:
    """Where the first text that is not UTF-8 sits in a local source: 'FILE:LINE' (jsonl) or 'FILE row N' (parquet,
    counted from 0); None when no file holds one (or the source is not local)."""
    import gzip

    for file in source.files if source.kind != "hub" else ():
        if source.builder == "parquet":
            try:
                with open_parquet(file) as pf:
                    first = 0
                    for batch in parquet_batches(pf, [n for n in (TEXT_COLUMN, ID_COLUMN)
                                                      if n in pf.schema_arrow.names]):
                        bad = first_non_utf8_row(batch)
                        if bad is not None:
                            return f"{file!r} row {first + bad}"
                        first += batch.num_rows
            except Exception:  # unreadable for another reason: that error is reported where it happens
                continue
        elif not file.endswith(".zst"):
            opener = gzip.open if file.endswith(".gz") else open
            with contextlib.suppress(OSError, EOFError), opener(file, "rb") as f:
                for number, line in enumerate(f, 1):
                    try:
                        line.decode("utf-8")
                    except UnicodeDecodeError:
                        return f"{file}:{number}"
    return None


def column_names(ds) -> list[str]:
    """Column names of a Dataset or IterableDataset (peeking at the first row when a stream does not declare them)."""
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)
    return list(first) if first is not None else []


def require_text_column(ds, source: Source) -> bool:
    """Raise unless there is a `text` column; return whether an `id` column exists."""
    return _check_columns(column_names(ds), source.dataset if source else "the dataset")


def _check_columns(names, where: str) -> bool:
    if TEXT_COLUMN not in names:
        raise EduGPTError(f"{where!r} has no {TEXT_COLUMN!r} column (columns: {', '.join(names) or 'none'}); "
                          "rename the document text column to 'text'.")
    return ID_COLUMN in names


# ------------------------------------------------------------------------------------------------------- parquet

@contextmanager
def open_parquet(path: str):
    """A `pyarrow.parquet.ParquetFile` on a local path or an fsspec URL (`hf://datasets/...`, `s3://...`), set up to
    stream: reading holds one batch, not one row group."""
    import pyarrow.parquet as pq
    from datatrove.io import open_file

    with open_file(path, "rb") as f, pq.ParquetFile(f, pre_buffer=False, buffer_size=PARQUET_READ_BUFFER) as pf:
        yield pf


def document_columns(pf, path: str) -> list[str]:
    """The columns to read from a parquet file in FineWeb-Edu's schema: `text`, and `id` when it has one."""
    names = pf.schema_arrow.names
    return [TEXT_COLUMN, ID_COLUMN] if _check_columns(names, path) else [TEXT_COLUMN]


def parquet_batches(pf, columns: list[str], start: int = 0, stop: int | None = None,
                    batch_size: int = PARQUET_BATCH_ROWS):
    """Record batches of `columns` for rows `[start, stop)` of an open parquet file, in order, reading only the row
    groups that hold them."""
    meta = pf.metadata
    stop = meta.num_rows if stop is None else stop
    if start >= stop:
        return
    groups, row, first_row = [], None, 0
    for g in range(meta.num_row_groups):
        n = meta.row_group(g).num_rows
        if first_row < stop and first_row + n > start:
            row = first_row if row is None else row  # the first row of the first group read
            groups.append(g)
        first_row += n
    if not groups:
        return
    for batch in pf.iter_batches(batch_size=batch_size, row_groups=groups, columns=columns, use_threads=False):
        lo, hi = max(start - row, 0), min(stop - row, batch.num_rows)
        row += batch.num_rows
        if hi > lo:
            yield batch.slice(lo, hi - lo)
        if row >= stop:
            return


def local_parquet_dataset(source: Source, cache_dir: str | None = None):
    """Local parquet files as one memory-mapped `Dataset`, cached as `load_dataset` caches them (keyed by the files'
    paths, sizes and modification times, so an edited file is read again) but read through `parquet_batches`: memory
    stays at one batch whatever the files' row-group sizes (`load_dataset` holds a whole row group)."""
    import datasets
    import pyarrow as pa
    from datasets.arrow_writer import ArrowWriter

    stamps = [(str(Path(f).resolve()), os.stat(f).st_size, os.stat(f).st_mtime_ns) for f in source.files]
    key = hashlib.sha256(json.dumps(["edugpt-parquet-v2", stamps]).encode()).hexdigest()[:16]
    path = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "edugpt_parquet" / key / "documents.arrow"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        schema, writer = None, None
        try:
            for file in source.files:
                try:
                    with open_parquet(file) as pf:
                        if schema is None:
                            schema = pf.schema_arrow.remove_metadata()
                            writer = ArrowWriter(features=datasets.Features.from_arrow_schema(schema), path=str(tmp))
                        elif set(pf.schema_arrow.names) != set(schema.names):
                            raise EduGPTError(f"{file!r} has columns {pf.schema_arrow.names} where "
                                              f"{source.files[0]!r} has {schema.names}; give every file the same "
                                              "columns.")
                        for batch in parquet_batches(pf, schema.names):
                            writer.write_table(pa.Table.from_batches([batch]).select(schema.names).cast(schema))
                except (pa.ArrowException, OSError) as err:
                    if no_space_reason(err):
                        raise no_space_error(path.parent, err) from None
                    # garbage, a truncated file, another format renamed .parquet, a damaged page: name the file
                    raise EduGPTError(f"cannot read parquet file {file!r} ({type(err).__name__}: {err}); fix or "
                                      "remove it.") from None
            writer.finalize()
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        # Hand the reader's freed buffers back to the OS: `map` workers forked next would otherwise show them as their
        # own memory (for one 430 MB row group: ~70 MiB held after reading).
        pa.default_memory_pool().release_unused()
    return datasets.Dataset.from_file(str(path))

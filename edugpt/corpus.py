"""Where documents come from: Hub FineWeb-Edu (streamed or downloaded), local parquet/jsonl, or the embedded corpus.

Every source yields rows in FineWeb-Edu's schema; only `text` is required (`id` is derived from the text when
missing). `load_source` returns a `datasets.Dataset` (Arrow, memory-mapped, cached: map-able with `num_proc`) or, for
the big Hub subsets and for `--max_docs` slices of the Hub, an `IterableDataset` that never holds the raw set in RAM.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from edugpt.errors import EduGPTError
from edugpt.net import hub_available

logger = logging.getLogger(__name__)

EMBEDDED = "embedded"
# Real English prose from CPython 3.11.7's documentation; see assets/corpus/README.md for provenance and license.
EMBEDDED_CORPUS = Path(__file__).parent / "assets" / "corpus" / "python-docs.parquet"
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
        files = sorted(p for p in path.rglob("*") if p.is_file() and _suffix(p) in FILE_BUILDERS)
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
    else:
        ds = datasets.load_dataset(source.builder, data_files=source.files, split="train", cache_dir=cache_dir)
    if max_docs is not None and max_docs < len(ds):
        ds = ds.select(range(max_docs))
    return ds


def column_names(ds) -> list[str]:
    """Column names of a Dataset or IterableDataset (peeking at the first row when a stream does not declare them)."""
    if ds.column_names is not None:
        return list(ds.column_names)
    first = next(iter(ds), None)
    return list(first) if first is not None else []


def require_text_column(ds, source: Source) -> bool:
    """Raise unless there is a `text` column; return whether an `id` column exists."""
    names = column_names(ds)
    if TEXT_COLUMN not in names:
        raise EduGPTError(f"{source.dataset!r} has no {TEXT_COLUMN!r} column (columns: {', '.join(names) or 'none'}); "
                          "rename the document text column to 'text'.")
    return ID_COLUMN in names

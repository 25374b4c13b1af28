"""Prepare a corpus on one machine: split by document ID, tokenize with `datasets.map`, pack each split, save,
describe, verify, install.

    python prepare_data.py --dataset embedded --output_dir runs/data --seq_len 128      # seconds, offline

Both ways of preparing share every piece: `split_of` (edugpt.corpus.split), `tokenize_batch` (tokens), `SplitWriter`
(pack: packing straight into the split's Arrow files), `write_layout` (layout: the metadata around them, no copy),
`build_manifest` (manifest), `move_into_place` (install) and `verify`. This module runs them in one process over
`datasets.map` (or one stream); `edugpt.corpus.datatrove` runs them in datatrove tasks.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edugpt.config.arguments import PrepareDataArguments
from edugpt.corpus.install import (
    check_dataset_output,
    check_not_input,
    check_swap_room,
    make_dir,
    move_into_place,
    output_lock,
    overlap,
    recover_swap,
    remove_leftovers,
    remove_made,
    swap_journal,
)
from edugpt.corpus.layout import DOC_IDS, write_layout
from edugpt.corpus.manifest import build_manifest, content_section, print_summary, write_manifest
from edugpt.corpus.pack import SplitStats, SplitsWriter, require_blocks
from edugpt.corpus.sources import ID_COLUMN, TEXT_COLUMN, Source, load_source, require_text_column, resolve_source
from edugpt.corpus.split import SPLIT_SALT
from edugpt.corpus.tokens import check_tokenizer, column_values, tokenize_batch, tokenized_features
from edugpt.errors import EduGPTError
from edugpt.io.atomic import no_space_error, no_space_reason
from edugpt.io.safefs import ensure_dir

logger = logging.getLogger(__name__)

# Documents per tokenizing batch: large enough for tiktoken's threaded batch encode to pay off.
MAP_BATCH_SIZE = 1000


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


def _tokenize_columns(texts, ids=None, **kwargs):
    """`datasets.map` adapter in Arrow format: Arrow columns in, an Arrow table out (no per-token Python objects)."""
    import pyarrow as pa

    out = tokenize_batch(column_values(texts), None if ids is None else column_values(ids), **kwargs)
    return pa.table(out)


def prepare_dataset(args: PrepareDataArguments) -> dict:
    """Run the whole preparation; returns the manifest. Output appears at `output_dir` only when complete."""
    started = time.perf_counter()
    out = Path(args.output_dir)
    source = resolve_source(args.dataset, args.subset)
    check_not_input(out, source)
    check_dataset_output(out, args.overwrite)
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
        check_dataset_output(out, args.overwrite)  # again, under the lock: an interrupted swap may have completed
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

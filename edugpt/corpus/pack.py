"""Packing: each split's token stream cut into `seq_len` uint16 blocks and written straight into its Arrow files as
they fill (`SplitWriter`, one per split; `SplitsWriter` routes tokenized batches to them and lists the kept ids), with
the per-split counts the manifest records (`SplitStats`). `pack_blocks` is the pure rule; `save_blocks` writes a
`DatasetDict` of blocks in this layout.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edugpt.corpus.layout import block_features, write_layout
from edugpt.corpus.split import SPLITS
from edugpt.corpus.tokens import SKIP_REASONS
from edugpt.errors import EduGPTError

# Bytes per Arrow record batch of the saved blocks (8,192 blocks of 1024 tokens, 65,536 of 128). `save_to_disk`
# alone writes 1,000-row batches, and opening a memory-mapped Arrow file makes `datasets` read every batch header:
# each read faults ~64 KiB of the file into the process's RSS (+124 MiB for 2M blocks of 128, measured). Rows are
# fixed-size, so a large batch costs nothing when reading: rows are zero-copy slices of it.
RECORD_BATCH_BYTES = 16 << 20

# Ids per row group of doc_ids.parquet (a parquet writer holds every row group's metadata until it is closed).
ID_ROW_GROUP_ROWS = 1 << 17


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

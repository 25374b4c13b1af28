"""Prepared datasets written from blocks already in memory, with prepare_data.py's own writer, layout and manifest,
for tests and benchmarks (`write_prepared`); preparing a corpus never calls it.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from edugpt.config.arguments import PrepareDataArguments
from edugpt.corpus.layout import DOC_IDS, write_json, write_layout
from edugpt.corpus.manifest import MANIFEST, build_manifest, content_section, dataset_record
from edugpt.corpus.pack import SplitWriter, id_schema
from edugpt.corpus.sources import Source
from edugpt.corpus.split import split_of


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
    write_json(root / MANIFEST, {**manifest, "files": dataset_record(root), **manifest_overrides})
    return root

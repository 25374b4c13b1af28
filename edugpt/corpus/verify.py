"""`--verify`: re-check a prepared dataset from its own files against its manifest (disjoint splits, the split rule,
counts, block shape, token range, content digests, the record of its files), streaming so memory stays flat. Both
executors run it on a dataset before installing it; the Hub's fetch runs it on a downloaded copy.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from edugpt.corpus.layout import DOC_IDS, DamagedDataset, block_features, load_splits, read_layout
from edugpt.corpus.manifest import load_manifest, record_problems, split_digest
from edugpt.corpus.split import SPLITS, split_of
from edugpt.errors import EduGPTError

# Ids per batch when `verify` streams doc_ids.parquet (as Python strings: ~1 MB), and how many misplaced ids it keeps
# to look for cross-split duplicates (a tampered or wrong file; a good one has none).
ID_BATCH_ROWS = 1 << 13
MAX_WRONG_IDS = 100_000


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

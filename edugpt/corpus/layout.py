"""The files of a prepared dataset around its blocks, written and read back (the data contract other modules load):

    DIR/dataset_dict.json, DIR/train/, DIR/validation/   `DatasetDict.save_to_disk`'s layout (`datasets.load_from_disk`
                                                         reads it); one column `input_ids`, fixed-length uint16
                                                         sequences of `seq_len` tokens
    DIR/manifest.json                                    source, tokenizer, split rule, per-split counts (skipped
                                                         rows per reason), `content`: SHA-256 digests of the blocks
                                                         (`edugpt.corpus.manifest`)
    DIR/doc_ids.parquet                                  `id`, `split`: one row per kept document
    manifest.json's `files`                              the record: every other file prepare_data.py wrote in DIR,
                                                         with its size (`edugpt.corpus.manifest.dataset_record`)

`write_layout` writes `datasets`' metadata around Arrow files already in place (no copy); `read_layout` and
`load_splits` read it back, a damaged file being a `DamagedDataset` that names it rather than an error from deeper down.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from pathlib import Path

from edugpt.corpus.split import SPLITS
from edugpt.errors import EduGPTError
from edugpt.io.safefs import atomic_write_text

DOC_IDS = "doc_ids.parquet"


def block_features(seq_len: int):
    from datasets import Features, Sequence, Value

    return Features({"input_ids": Sequence(Value("uint16"), length=seq_len)})


def write_layout(root, files: dict[str, list[str]], seq_len: int) -> None:
    """Write the metadata of `DatasetDict.save_to_disk` around Arrow files already in `root/<split>/`, without copying
    them: `dataset_dict.json`, and per split `dataset_info.json` and `state.json` listing its files in order (which
    is all `datasets.load_from_disk` reads to memory-map them as one table)."""
    root = Path(root)
    info = layout_info(seq_len)
    for split, names in files.items():
        write_json(root / split / "state.json", layout_state(split, seq_len, names), sort_keys=True)
        write_json(root / split / "dataset_info.json", {key: info[key] for key in sorted(info)})
    write_json(root / "dataset_dict.json", {"splits": list(files)})


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


def write_json(path: Path, content, sort_keys: bool = False) -> None:
    """JSON written whole or not at all (`safefs.atomic_write_text`: a reader or a re-run after a kill never sees half
    of it; a full disk is one clear error)."""
    atomic_write_text(path, json.dumps(content, indent=2, sort_keys=sort_keys) + "\n")


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

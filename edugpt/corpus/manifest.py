"""manifest.json: what a prepared dataset was made from and how (`build_manifest`), its counts and content digests,
and the record of its files (`dataset_record`), written last (`write_manifest`); read back and checked key by key
(`load_manifest`, `check_manifest`) before training, `--verify`, `--overwrite` or the Hub trust any of it. Also the
one-paragraph summary a preparation prints (`print_summary`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

from edugpt.corpus.layout import DamagedDataset, read_dataset_json, write_json
from edugpt.corpus.pack import SplitStats
from edugpt.corpus.sources import ID_COLUMN, Source
from edugpt.corpus.split import SPLIT_DESCRIPTION, SPLIT_HASH, SPLIT_SALT, SPLITS
from edugpt.corpus.tokens import SKIP_WORDS
from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import GPT2_EOS_ID, GPT2_NAMES, GPT2_VOCAB_SIZE

logger = logging.getLogger(__name__)

# v2: the manifest records every file of the dataset (`files`), and `content` is required.
FORMAT = "edugpt-prepared-v2"

MANIFEST = "manifest.json"

# What the manifest's `content` digests are of: every split's blocks exactly as stored, file by file in the order of
# the split's state.json (the order `datasets.load_from_disk` and training read them).
CONTENT_DIGEST = ("per file: sha256 of the uint16 tokens of its blocks in stored order (little-endian); per split: "
                  "sha256 of its files' hex digests, one per line, in state.json order")


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


def write_manifest(root: Path, manifest: dict) -> dict:
    """Write `root`'s manifest last, with the record of every other file in `root` (`files`): what --overwrite and
    --verify hold the dataset to."""
    manifest = {**manifest, "files": dataset_record(root)}
    write_json(root / MANIFEST, manifest)
    return manifest


def split_digest(file_digests) -> str:
    return hashlib.sha256("".join(f"{d}\n" for d in file_digests).encode()).hexdigest()


def content_section(files: dict[str, list[str]], digests: dict[str, list[str]]) -> dict:
    """The manifest's `content`: per split, the digest of its blocks and of each of its files (see CONTENT_DIGEST)."""
    return {"digest": CONTENT_DIGEST, **{split: {"sha256": split_digest(digests[split]),
                                                 "files": dict(zip(files[split], digests[split]))} for split in files}}


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

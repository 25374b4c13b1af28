"""Prepared data through the Hub: one machine prepares and publishes a dataset repo, any other trains from it.

    python prepare_data.py --dataset embedded --output_dir data/embedded --seq_len 128          # a CPU box
    python publish.py data/embedded --hub_dataset_id you/edugpt-embedded --dry_run /tmp/ds-plan # offline: what goes up
    python publish.py data/embedded --hub_dataset_id you/edugpt-embedded                        # prints the commit
    python train_hf.py --config configs/smoke.yaml \\
        --dataset_dir hf://datasets/you/edugpt-embedded@COMMIT                                  # a GPU box, or N nodes

Why publish.py and not a flag of prepare_data.py: publishing is a separate, later step (a dataset is prepared once,
verified, perhaps looked at, then shared), and publish.py is already the one command that uploads, with its guards
and its --dry_run; prepare_data.py stays offline-safe and never needs a token.

Publishing (`publish_dataset`) takes the guarded path of edugpt.hub.publish: plan from a record, not a pattern (exactly the
files the manifest's `files` record lists, plus manifest.json), verify the dataset first (`data.verify`: a file the
record does not list is refused, as `--overwrite` refuses it), stage the files (hardlinks, each still the planned
file), scan every byte for tokens, and one `upload_folder` commit with a dataset card (README.md) that states the
source, tokenizer, split rule and counts, and how to load it. Files an earlier publish recorded and this one does not
upload again are deleted from the repo; anything else someone put there stays.

Training (`local_dataset_dir`): `hf://datasets/OWNER/NAME[@REVISION]` is fetched into the Hugging Face cache, its
manifest first and then exactly the files that manifest records (pinned to the manifest's commit, so a branch that
moves meanwhile cannot mix two versions), and verified against the manifest's digests before the first step. Under
several processes the first process of each node fetches and verifies while the others wait (TrainingArguments'
`main_process_first`, as run_clm.py tokenizes): nodes without a shared filesystem each fetch their own copy. Offline,
a dataset already in the cache is used as it is. A bare `owner/name` is not taken for a Hub dataset: it is also a
relative path (`data/prepared`), and a typo in a local path must not start a download.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote

from edugpt.corpus.manifest import MANIFEST, load_manifest, record_problems
from edugpt.corpus.split import SPLITS
from edugpt.corpus.verify import verify
from edugpt.errors import EduGPTError
from edugpt.hub.plan import BranchUpload, PlannedFile
from edugpt.hub.secrets import scan_file, scrub
from edugpt.hub.stage import stage, write_dry_run
from edugpt.io.net import hub_available, is_repo_id

logger = logging.getLogger(__name__)

HF_DATASETS = "hf://datasets/"
CARD = "README.md"
# Licenses of the sources prepare_data.py knows; any other source's license is the user's to state (--license).
SOURCE_LICENSES = {"HuggingFaceFW/fineweb-edu": ("odc-by", None), "embedded": ("other", "psf-2.0")}


# ------------------------------------------------------------------------------------------------------------ names
def is_hub_dataset(dataset_dir) -> bool:
    return isinstance(dataset_dir, str) and dataset_dir.startswith("hf://")


def parse_hub_dataset(uri: str) -> tuple[str, str | None]:
    """`hf://datasets/OWNER/NAME[@REVISION]` -> (repo id, revision or None). A revision with '/' may be written as
    HfFileSystem writes it (`refs%2Fpr%2F1`)."""
    if not uri.startswith(HF_DATASETS):
        raise EduGPTError(f"--dataset_dir {uri!r}: only a Hub dataset repo can be trained from; write it as "
                          "hf://datasets/OWNER/NAME[@REVISION].")
    repo_id, _, revision = uri[len(HF_DATASETS):].partition("@")
    repo_id = repo_id.rstrip("/")
    if not is_repo_id(repo_id):
        raise EduGPTError(f"--dataset_dir {uri!r}: {repo_id!r} is not a Hub repo id; write it as "
                          "hf://datasets/OWNER/NAME[@REVISION].")
    return repo_id, unquote(revision) or None


def _exact(name: str) -> str:
    """`name` as an fnmatch pattern that matches only itself (allow_patterns takes patterns)."""
    return re.sub(r"([*?\[])", r"[\1]", name)


def _recorded_names(manifest: dict, where: str) -> list[str]:
    """The files the manifest's record lists, each a plain relative path inside the dataset."""
    record = manifest.get("files")
    if not isinstance(record, dict) or not record:
        raise EduGPTError(f"{where} holds no record of the dataset's files (manifest.json `files`); prepare and "
                          "publish it again with this version of edugpt.")
    for name in record:
        parts = name.split("/")
        if name.startswith("/") or any(p in ("", ".", "..") for p in parts) or not isinstance(record[name], int):
            raise EduGPTError(f"{where}'s record lists {name!r}, which is not a file inside the dataset; prepare and "
                              "publish it again.")
    return list(record)


# --------------------------------------------------------------------------------------------------------- publishing
@dataclass
class DatasetPlan:
    """What `publish_dataset` uploads: one commit to the dataset repo's main (write_dry_run writes it as DEST/main/)."""

    repo_id: str
    uploads: list[BranchUpload]
    manifest: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        upload = self.uploads[0]
        return {
            "repo_id": self.repo_id,
            "repo_type": "dataset",
            "created_by": "publish.py",
            "branches": [{
                "branch": upload.branch, "source": str(upload.source), "folder": upload.branch,
                "files": sorted([*upload.files, CARD]), "bytes": upload.total_bytes(),
                "load": f"python train_hf.py --dataset_dir hf://datasets/{self.repo_id}",
                "excluded": upload.excluded,
            }],
        }


def _require_dataset_id(hub_dataset_id: str | None) -> None:
    if not is_repo_id(hub_dataset_id or ""):
        raise EduGPTError(f"{hub_dataset_id!r} is not a valid Hub repo id; pass --hub_dataset_id 'name' or "
                          "'owner/name' with letters, digits, '-', '_' and '.'.")


def plan_dataset(dataset_dir: str | os.PathLike, hub_dataset_id: str, *, license: str | None = None) -> DatasetPlan:
    """Check the dataset is exactly what prepare_data.py wrote (its record, then `verify`: splits, split rule, counts,
    content digests), and plan its upload: the recorded files and manifest.json, each as a regular file found without
    following a link, plus the card."""
    _require_dataset_id(hub_dataset_id)
    given = Path(dataset_dir)
    if not given.is_dir():
        raise EduGPTError(f"{str(given)!r} is not a folder; pass the --output_dir of prepare_data.py.")
    root = given.resolve()  # the folder the user named; nothing inside it is followed
    manifest = load_manifest(root)
    names = _recorded_names(manifest, str(root / MANIFEST))
    problems = record_problems(root, manifest)
    if problems:
        raise EduGPTError(
            f"{str(given)!r} is not the dataset prepare_data.py wrote ({problems[0]}"
            f"{f', and {len(problems) - 1} more' if len(problems) > 1 else ''}); only what its manifest records is "
            "published: move out what prepare_data.py did not write, or prepare it again, then publish."
        )
    verify(root)
    files = {}
    for name in [MANIFEST, *names]:
        st = (root / name).lstat()
        if not stat.S_ISREG(st.st_mode):  # record_problems checked the recorded ones; this is manifest.json
            raise EduGPTError(f"{str(root / name)!r} is not a plain file; prepare the dataset again.")
        files[name] = PlannedFile(root / name, st.st_size, (st.st_dev, st.st_ino))
    card = dataset_card(manifest, hub_dataset_id, root, license=license)
    upload = BranchUpload("main", root, files, card, message=f"Upload prepared dataset {root.name} with edugpt")
    return DatasetPlan(hub_dataset_id, [upload], manifest)


def _split_files(root: Path, split: str) -> list[str]:
    """The split's Arrow files in state.json's order (the order training reads them), as paths in the repo."""
    state = json.loads((root / split / "state.json").read_text())
    return [f"{split}/{entry['filename']}" for entry in state["_data_files"]]


def dataset_card(manifest: dict, repo_id: str, root: Path, *, license: str | None = None) -> str:
    """README.md of the dataset repo: YAML metadata (license, `configs` naming each split's Arrow files, so the Hub's
    viewer and `datasets.load_dataset` read them) and what a user needs to trust and load the data."""
    from huggingface_hub import DatasetCardData

    source, tokenizer, rule = manifest["source"], manifest["tokenizer"], manifest["split_rule"]
    splits, seq_len = manifest["splits"], manifest["seq_len"]
    dataset = source.get("dataset")
    known_license, license_name = SOURCE_LICENSES.get(dataset, ("other", "the source's license"))
    if license is not None:
        known_license, license_name = license, None
    data = DatasetCardData(
        license=known_license, license_name=license_name,
        pretty_name=f"{dataset} as {tokenizer['name']} token blocks of {seq_len} (edugpt)",
        task_categories=["text-generation"],
        tags=["edugpt", "pretraining", "tokenized", tokenizer["name"]],
        source_datasets=[dataset] if source.get("kind") == "hub" else None,
        configs=[{"config_name": "default",
                  "data_files": [{"split": split, "path": _split_files(root, split)} for split in SPLITS]}],
    )
    revision = source.get("revision") or "not recorded by prepare_data.py (the source as it was when prepared)"
    rows = "\n".join(
        f"| {split} | {s['documents']:,} | {s['tokens']:,} | {s['blocks']:,} | {s['dropped_tail_tokens']:,} | "
        f"{sum(v for k, v in s.items() if k.startswith('skipped_')):,} | `{manifest['content'][split]['sha256']}` |"
        for split, s in splits.items())
    return f"""---
{data.to_yaml()}
---

# {repo_id}

`{dataset}` tokenized with {tokenizer['name']}'s tokenizer, split by document id and packed into blocks of {seq_len}
tokens (`input_ids`, uint16, one `<|endoftext|>` after each document) by edugpt's `prepare_data.py`, for pretraining
a GPT-2 with `train_hf.py`. `manifest.json` holds everything below, and `doc_ids.parquet` lists each kept document's
`id` and `split`.

## Load it

```bash
# train on it: fetched into the Hugging Face cache and verified against manifest.json before the first step
python train_hf.py --config configs/smoke.yaml --dataset_dir hf://datasets/{repo_id}
```

```python
# the layout as prepared (DatasetDict.save_to_disk), memory-mapped from the cache, no copy
from datasets import load_from_disk
from huggingface_hub import snapshot_download

splits = load_from_disk(snapshot_download("{repo_id}", repo_type="dataset"))  # add revision="..." to pin one

# or through this card's `configs` (datasets copies the blocks into its own cache first)
from datasets import load_dataset

splits = load_dataset("{repo_id}")
```

`datasets.load_dataset` does not read a `save_to_disk` folder by itself: it reads the Arrow files this card's
`configs` name. Pin a revision (`@COMMIT`, or `revision=`) to train twice on the same data.

## Source

| | |
|---|---|
| dataset | `{dataset}` ({source.get('kind')}) |
| subset | {f"`{source['subset']}`" if source.get('subset') else '-'} |
| revision | {revision} |
| documents read | {source.get('max_docs') or 'all'} |
| files | {', '.join(f'`{f}`' for f in source.get('files') or []) or '-'} |
| document ids | {source.get('ids')} |
| prepared | {manifest.get('created_at')} |

## Tokenizer

`{tokenizer['name']}` ({tokenizer.get('backend')}), vocabulary {tokenizer['vocab_size']:,}, end-of-text id
{tokenizer['eos_token_id']}.

## Split rule

A document's split is a pure function of its id, the same on any machine and any re-run: {rule['description']}, with
salt `{rule['salt']}` and val_fraction {rule['val_fraction']}.

## Counts

| split | documents | tokens | blocks of {seq_len} | tail tokens dropped | rows skipped (no usable text) | content sha256 |
|---|---|---|---|---|---|---|
{rows}

Content digest: {manifest['content'].get('digest')}. `train_hf.py --dataset_dir hf://datasets/...` checks the copy
it fetches against these digests, the counts and the split rule before training; `python prepare_data.py --verify DIR`
does the same for the prepared folder.
"""


def _dataset_push_ready(hub_dataset_id: str) -> str:
    """Raise EduGPTError unless uploading can work (a token, a reachable Hub that accepts it); the full repo id."""
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise EduGPTError(f"no Hugging Face token found, so nothing can be pushed to {hub_dataset_id}; run "
                          "`hf auth login` or set HF_TOKEN (or look first with --dry_run DIR, offline).")
    if not hub_available():
        raise EduGPTError(f"the Hugging Face Hub is unreachable (HF_HUB_OFFLINE is set or there is no network), so "
                          f"nothing can be pushed to {hub_dataset_id}; connect and unset HF_HUB_OFFLINE (or look "
                          "first with --dry_run DIR, offline).")
    try:
        user = HfApi().whoami(cache=True)
    except Exception as err:
        raise EduGPTError(f"the Hub did not accept your token ({type(err).__name__}); log in again with "
                          "`hf auth login` or set a valid HF_TOKEN with write access.") from None
    return hub_dataset_id if "/" in hub_dataset_id else f"{user['name']}/{hub_dataset_id}"


def _staging_folder(root: Path) -> Path:
    """A new private folder for the staged upload: beside the dataset (hardlinks then cost nothing), else in /tmp."""
    try:
        return Path(tempfile.mkdtemp(prefix=f".{root.name}.upload-", dir=root.parent))
    except OSError:  # a read-only parent: copies in the temporary folder
        return Path(tempfile.mkdtemp(prefix="edugpt-dataset-upload-"))


def _earlier_files(api, repo_id: str, uploading: set[str]) -> list[str]:
    """Files an earlier publish put on main (its manifest's record) that this one does not upload again: deleted, so
    the repo holds one dataset. Files nobody recorded (someone's LICENSE) stay."""
    from huggingface_hub.errors import EntryNotFoundError, RevisionNotFoundError

    try:
        path = api.hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision="main")
        old = json.loads(Path(path).read_text()).get("files")
    except (EntryNotFoundError, RevisionNotFoundError, ValueError, AttributeError):
        return []
    if not isinstance(old, dict):
        return []
    return sorted(name for name in old if name not in uploading)


def publish_dataset(dataset_dir: str | os.PathLike, hub_dataset_id: str, *, dry_run: str | os.PathLike | None = None,
                    private: bool | None = None, license: str | None = None) -> str:
    """Plan, then either write the dry-run folder (DEST/main/ and DEST/plan.json) or upload in one commit. Every byte
    is scanned for tokens before it is written or uploaded. Returns the folder path or the repo's URL at the commit."""
    if dry_run is None:
        _require_dataset_id(hub_dataset_id)
        hub_dataset_id = _dataset_push_ready(hub_dataset_id)  # before any work: no token / no network fails at once
    plan = plan_dataset(dataset_dir, hub_dataset_id, license=license)
    upload = plan.uploads[0]
    if dry_run is not None and upload.source in Path(os.path.abspath(dry_run)).resolve().parents:
        raise EduGPTError(f"--dry_run {str(dry_run)!r} lies inside the dataset {str(dataset_dir)!r}, which must hold "
                          "only what prepare_data.py wrote; pass a folder outside it.")
    splits = plan.manifest["splits"]
    print(f"dataset {plan.repo_id}: {len(upload.files) + 1} files, {upload.total_bytes() / 1e6:.1f} MB from "
          f"{upload.source} (" + ", ".join(f"{name} {s['blocks']:,} blocks" for name, s in splits.items()) + ")")
    if dry_run is not None:
        return str(write_dry_run(plan, dry_run))
    from huggingface_hub import HfApi

    folder = _staging_folder(upload.source)
    try:
        for path, label in stage(upload, folder / "main", link=True):  # copies were scanned as they were written
            scan_file(path, label)
        try:
            api = HfApi()
            repo_id = api.create_repo(plan.repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id
            stale = _earlier_files(api, repo_id, set(upload.files))
            commit = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(folder / "main"),
                                       commit_message=upload.message,
                                       delete_patterns=[_exact(name) for name in stale] or None)
        except Exception as err:
            raise EduGPTError(
                f"pushing the dataset to {plan.repo_id} failed ({type(err).__name__}: {scrub(str(err))}); the local "
                "dataset is unchanged: check the repo id and that your token has write access, then publish again."
            ) from None
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    oid = getattr(commit, "oid", None)
    pinned = f"hf://datasets/{repo_id}" + (f"@{oid}" if oid else "")
    print(f"published dataset {repo_id}" + (f" at commit {oid}" if oid else "") + f"; train on it with "
          f"--dataset_dir {pinned}")
    return f"https://huggingface.co/datasets/{repo_id}"


# ----------------------------------------------------------------------------------------------------------- training
def fetched_record_problems(root: Path, manifest: dict) -> list[str]:
    """How a copy fetched from the Hub differs from its manifest's record: each recorded file present (in the HF cache
    a link to its blob, made by huggingface_hub: followed), a regular file of the recorded size. Other files in the
    snapshot (the card, .gitattributes, someone's LICENSE) are never read by training, so they are not looked at."""
    problems = []
    for name, size in manifest["files"].items():
        try:
            st = os.stat(root / name)
        except FileNotFoundError:
            problems.append(f"{name!r} is missing")
            continue
        if not stat.S_ISREG(st.st_mode):
            problems.append(f"{name!r} is not a file")
        elif st.st_size != size:
            problems.append(f"{name!r} has {st.st_size:,} bytes, its record says {size:,}")
    return problems


def fetch_dataset(uri: str, *, local_files_only: bool | None = None) -> Path:
    """The local folder (a snapshot in the HF cache) holding the dataset `uri` names: manifest.json first, then
    exactly the files its record lists, at the manifest's commit. Offline (or `local_files_only`) only the cache is
    read. Every failure is one EduGPTError line."""
    from huggingface_hub import hf_hub_download, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo_id, revision = parse_hub_dataset(uri)
    offline = not hub_available() if local_files_only is None else local_files_only
    shown = f"{uri!r}"
    try:
        manifest_path = Path(hf_hub_download(repo_id, MANIFEST, repo_type="dataset", revision=revision,
                                             local_files_only=offline))
        commit = manifest_path.parent.name  # the cache's snapshots/<commit>/: the exact version of the manifest
        manifest = load_manifest(manifest_path.parent)
        names = _recorded_names(manifest, f"{shown}'s {MANIFEST}")
        root = Path(snapshot_download(repo_id, repo_type="dataset", revision=commit, local_files_only=offline,
                                      allow_patterns=[_exact(name) for name in [MANIFEST, *names]]))
    except EduGPTError:
        raise
    except GatedRepoError:
        raise EduGPTError(f"--dataset_dir {shown} is a gated repo your token cannot read; ask for access on its page "
                          "or log in with `hf auth login` as a user who has it.") from None
    except RepositoryNotFoundError:
        raise EduGPTError(f"--dataset_dir {shown}: no such dataset repo on the Hub (or it is private and your token "
                          "cannot read it); check the name, or log in with `hf auth login`.") from None
    except RevisionNotFoundError:
        raise EduGPTError(f"--dataset_dir {shown}: the repo has no revision {revision or 'main'!r}; check the "
                          "branch, tag or commit after '@'.") from None
    except LocalEntryNotFoundError:  # an EntryNotFoundError too: caught first
        raise EduGPTError(
            f"--dataset_dir {shown} is not in the Hugging Face cache ({_cache_dir()}) and the Hub is offline or "
            "unreachable; connect (and unset HF_HUB_OFFLINE) to fetch it, or fetch it once where the Hub is reachable "
            "and share that cache (HF_HUB_CACHE)."
        ) from None
    except EntryNotFoundError:
        raise EduGPTError(f"--dataset_dir {shown} holds no {MANIFEST}, so it is not a dataset published with "
                          "`publish.py DATASET_DIR --hub_dataset_id ...`; publish the prepared dataset that way.") \
            from None
    except Exception as err:  # the network, the Hub, a full disk: one line, no token in it
        raise EduGPTError(f"fetching --dataset_dir {shown} failed ({type(err).__name__}: {scrub(str(err))}); check "
                          "the network and the repo, then run again.") from None
    logger.info("dataset %s: commit %s in %s", uri, commit, root)
    return root


def _cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def fetch_verified(uri: str) -> Path:
    """fetch_dataset, then verify the copy against its manifest (splits, split rule, counts, content digests)."""
    root = fetch_dataset(uri)
    try:
        manifest = verify(root, check_record=fetched_record_problems)
    except EduGPTError as err:
        raise EduGPTError(f"--dataset_dir {uri!r} (fetched into {root}) is not the dataset its manifest describes: "
                          f"{err}") from None
    logger.info("dataset %s verified: %s", uri, ", ".join(
        f"{name} {s['blocks']:,} blocks" for name, s in manifest["splits"].items()))
    return root


def local_dataset_dir(dataset_dir, training_args=None):
    """--dataset_dir as a local folder: itself, or for `hf://datasets/...` the verified copy in the HF cache. Under
    several processes the first of each node fetches and verifies while the others wait, then find it in the cache."""
    if not is_hub_dataset(dataset_dir):
        return dataset_dir
    parse_hub_dataset(dataset_dir)  # a malformed one is the same line on every process, before any wait
    if training_args is None or training_args.world_size <= 1:
        return str(fetch_verified(dataset_dir))
    local_main = training_args.distributed_state.is_local_main_process
    with training_args.main_process_first(local=True, desc=f"fetching {dataset_dir}"):
        if local_main:
            return str(fetch_verified(dataset_dir))
    try:
        return str(fetch_dataset(dataset_dir, local_files_only=True))
    except EduGPTError:
        raise EduGPTError(f"the first process on this machine could not fetch --dataset_dir {dataset_dir!r} (its "
                          "error says why).") from None

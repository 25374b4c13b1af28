"""Prepared data through the Hub (edugpt/hub/datasets.py): publish.py DATASET_DIR --hub_dataset_id uploads exactly what the
dataset's record lists, its manifest and a card, verified and scanned first; train_hf.py --dataset_dir
hf://datasets/OWNER/NAME@REV fetches it into the Hugging Face cache, verifies it and trains on the same blocks.

The Hub is fakes.hub.FakeHub: uploads land in it, and `save_to_cache` writes a commit as huggingface_hub lays out a
download, so the real `hf_hub_download` / `snapshot_download` (offline here) find it in the cache; its
`hf_hub_download` / `snapshot_download` stand in for the online functions where a test needs the Hub's answers."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from factories import ROOT, TINY, run_script
from fakes.hub import FAKE_TOKEN, FakeHub

from edugpt.config.cli import run
from edugpt.corpus.manifest import MANIFEST
from edugpt.corpus.synthetic import write_prepared
from edugpt.errors import EduGPTError
from edugpt.hub.datasets import fetch_verified, local_dataset_dir, publish_dataset

REPO = "someone/edugpt-data"


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            if p.is_file() else "dir" for p in sorted(folder.rglob("*"))}


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _publish_main():
    spec = importlib.util.spec_from_file_location("_publish_script", ROOT / "publish.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def publish(monkeypatch, capsys, *argv) -> tuple[int, str, str]:
    """publish.py in this process, as a shell runs it: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["publish.py", *map(str, argv)])
    handlers, level = logging.root.handlers[:], logging.root.level  # setup_logging binds them to capsys's stream
    try:
        run(_publish_main())
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    finally:
        logging.root.handlers[:], logging.root.level = handlers, level
    out = capsys.readouterr()
    return code, out.out, out.err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


@pytest.fixture
def dataset(data_dir, tmp_path) -> Path:
    """A copy of the session's prepared dataset (prepare_data.py's real output) that a test may change."""
    return Path(shutil.copytree(data_dir, tmp_path / "data"))


@pytest.fixture
def hub(monkeypatch, tmp_path) -> FakeHub:
    """A fake Hub for uploads; the Hugging Face cache in tmp_path/hf-cache (online downloads write there)."""
    from huggingface_hub import constants

    fake = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", fake)
    monkeypatch.setattr("edugpt.hub.datasets._dataset_push_ready", lambda repo_id: repo_id)  # no token or network here
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return fake


def online(monkeypatch, fake: FakeHub) -> None:
    """Let edugpt.hub.datasets see a reachable Hub: the fake's answers for huggingface_hub's download functions."""
    monkeypatch.setattr("edugpt.hub.datasets.hub_available", lambda: True)
    monkeypatch.setattr("huggingface_hub.hf_hub_download", fake.hf_hub_download)
    monkeypatch.setattr("huggingface_hub.snapshot_download", fake.snapshot_download)


# ------------------------------------------------------------------------------------------------------------ publish
def test_dataset_dry_run_is_exactly_the_record_manifest_and_a_card_that_loads(dataset, tmp_path, monkeypatch, capsys):
    import datasets
    from huggingface_hub import DatasetCard

    before = _snapshot(dataset)
    dest = tmp_path / "plan"
    code, out, err = publish(monkeypatch, capsys, dataset, "--hub_dataset_id", REPO, "--dry_run", dest)
    assert code == 0, err
    assert _snapshot(dataset) == before
    manifest = json.loads((dataset / MANIFEST).read_text())
    staged = _files(dest / "main")
    assert set(staged) == {*manifest["files"], MANIFEST, "README.md"}
    assert all(staged[name] == (dataset / name).read_bytes() for name in [*manifest["files"], MANIFEST])
    plan = json.loads((dest / "plan.json").read_text())
    assert plan["repo_type"] == "dataset" and plan["branches"][0]["files"] == sorted(staged)

    card = DatasetCard.load(dest / "main" / "README.md")
    assert card.data.license == "other" and card.data.license_name == "psf-2.0"  # the embedded corpus: CPython's docs
    assert card.data.task_categories == ["text-generation"]
    rule, splits = manifest["split_rule"], manifest["splits"]
    for fact in (f"`{manifest['source']['dataset']}`", "gpt2", f"salt `{rule['salt']}`",
                 f"val_fraction {rule['val_fraction']}", "not recorded by prepare_data.py",
                 f"| train | {splits['train']['documents']:,} | {splits['train']['tokens']:,} | "
                 f"{splits['train']['blocks']:,} |", manifest["content"]["validation"]["sha256"],
                 f'snapshot_download("{REPO}", repo_type="dataset")', f"--dataset_dir hf://datasets/{REPO}"):
        assert fact in card.text, fact

    # The card's `configs` make datasets.load_dataset read the uploaded folder: the same blocks as load_from_disk.
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    loaded = datasets.load_dataset(str(dest / "main"), cache_dir=str(tmp_path / "datasets-cache"))
    local = datasets.load_from_disk(str(dataset))
    for split in ("train", "validation"):
        assert np.array_equal(np.array(loaded[split]["input_ids"]), np.array(local[split]["input_ids"]))


def test_a_file_the_record_does_not_list_is_refused_and_nothing_is_written(dataset, tmp_path, monkeypatch, capsys):
    (dataset / "notes.txt").write_text("my notes on this dataset\n")
    before = _snapshot(dataset)
    dest = tmp_path / "plan"
    code, out, err = publish(monkeypatch, capsys, dataset, "--hub_dataset_id", REPO, "--dry_run", dest)
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert "'notes.txt' is not in its record" in err and "move out what prepare_data.py did not write" in err
    assert not dest.exists() and _snapshot(dataset) == before
    assert [p.name for p in tmp_path.iterdir()] == ["data"]  # no staging folder left beside the dataset either


def test_a_token_in_the_dataset_stops_the_dry_run_and_the_upload(tmp_path, hub, monkeypatch, capsys):
    blocks = {"train": np.arange(8 * 16, dtype=np.uint16).reshape(8, 16), "validation": np.ones((2, 16), np.uint16)}
    dataset = write_prepared(tmp_path / "data", blocks, dataset=f"corpus-{FAKE_TOKEN}.jsonl")  # ends up in the manifest
    before = _snapshot(dataset)
    dest = tmp_path / "plan"
    code, out, err = publish(monkeypatch, capsys, dataset, "--hub_dataset_id", REPO, "--dry_run", dest)
    assert code == 2 and len(error_lines(err)) == 1, err
    assert f"{dataset / MANIFEST} contains a Hugging Face access token" in err
    assert FAKE_TOKEN not in out + err and not dest.exists()

    with pytest.raises(EduGPTError, match="contains a Hugging Face access token") as caught:
        publish_dataset(dataset, REPO)
    assert FAKE_TOKEN not in str(caught.value)
    assert hub.uploads == [] and _snapshot(dataset) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".data.upload")]  # the staging folder is gone


def test_a_dry_run_folder_inside_the_dataset_is_refused(dataset, monkeypatch, capsys):
    before = _snapshot(dataset)
    code, out, err = publish(monkeypatch, capsys, dataset, "--hub_dataset_id", REPO, "--dry_run", dataset / "plan")
    assert code == 2 and len(error_lines(err)) == 1 and "lies inside the dataset" in err, err
    assert _snapshot(dataset) == before


def test_publish_is_one_commit_to_a_dataset_repo_and_a_republish_deletes_only_what_was_recorded(dataset, hub):
    manifest = json.loads((dataset / MANIFEST).read_text())
    publish_dataset(dataset, REPO)
    (first,) = hub.uploads
    assert first["repo_type"] == "dataset" and first["revision"] == "main"
    assert set(first["files"]) == {*manifest["files"], MANIFEST, "README.md"}
    assert all(hub.branches["main"][name] == (dataset / name).read_bytes() for name in manifest["files"])

    # An earlier, larger version recorded a second train file; someone added a LICENSE on the Hub.
    old = {**manifest, "files": {**manifest["files"], "train/data-00001.arrow": 3}}
    hub.branches["main"].update({MANIFEST: json.dumps(old).encode(), "train/data-00001.arrow": b"old",
                                 "LICENSE": b"someone's license"})
    publish_dataset(dataset, REPO)
    assert hub.uploads[-1]["deleted"] == ["train/data-00001.arrow"]
    assert set(hub.branches["main"]) == {*manifest["files"], MANIFEST, "README.md", ".gitattributes", "LICENSE"}


def test_publish_arguments_for_a_dataset_are_checked_before_any_work(dataset, monkeypatch, capsys):
    for argv, said in ([["--hub_dataset_id", REPO, "--branches"], "--branches describe a training run"],
                       [["--hub_dataset_id", REPO, "--hub_model_id", "someone/m"], "pass one of --hub_model_id"],
                       [["--hub_dataset_id", "not a/valid//id", "--dry_run", "x"], "not a valid Hub repo id"]):
        code, out, err = publish(monkeypatch, capsys, dataset, *argv)
        assert code == 2 and len(error_lines(err)) == 1 and said in err, (argv, err)


# ----------------------------------------------------------------------------------------------------------- training
@pytest.mark.slow
def test_train_two_steps_from_hf_datasets_at_a_commit_on_the_local_blocks(data_dir, hub, tmp_path, monkeypatch):
    import datasets
    from huggingface_hub import constants

    before = _snapshot(data_dir)
    publish_dataset(data_dir, REPO)
    assert _snapshot(data_dir) == before
    commit = hub.uploads[-1]["oid"]
    cache = tmp_path / "gpu-box-cache"  # another machine's Hugging Face cache: only what the Hub gave it
    hub.save_to_cache(cache, REPO, revision=commit)
    out = tmp_path / "run"
    uri = f"hf://datasets/{REPO}@{commit}"
    args = [*TINY, "--dataset_dir", uri, "--output_dir", out, "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--sample_steps", "0"]
    proc = run_script("train_hf.py", *args, env={"HF_HUB_CACHE": str(cache)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"dataset {uri} verified" in proc.stderr
    assert json.loads((out / "run_config.json").read_text())["data"]["dataset_dir"] == uri
    assert json.loads((out / "data_manifest.json").read_text()) == json.loads((data_dir / MANIFEST).read_text())
    assert [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "loss" in r] == [1, 2]

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    fetched = Path(local_dataset_dir(uri))  # what training read, from the same cache
    assert fetched.is_relative_to(cache)
    theirs, ours = datasets.load_from_disk(str(fetched)), datasets.load_from_disk(str(data_dir))
    for split in ("train", "validation"):
        assert np.array_equal(np.array(theirs[split]["input_ids"]), np.array(ours[split]["input_ids"]))


@pytest.fixture
def published(dataset, hub, tmp_path, monkeypatch) -> str:
    """The dataset published to the fake Hub and fetched into this test's cache: its hf:// name at the commit."""
    from huggingface_hub import constants

    publish_dataset(dataset, REPO)
    commit = hub.uploads[-1]["oid"]
    hub.save_to_cache(constants.HF_HUB_CACHE, REPO, revision=commit)
    return f"hf://datasets/{REPO}@{commit}"


def test_a_fetched_copy_is_verified_against_its_manifest_before_training(published, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_CACHE", constants.HF_HUB_CACHE)
    root = fetch_verified(published)
    assert (root / MANIFEST).is_file()
    blob = (root / "train" / "data-00000.arrow").resolve()
    data = bytearray(blob.read_bytes())
    data[-200] ^= 0xFF  # one token changed, same size: only the content digest can tell
    blob.write_bytes(bytes(data))
    with pytest.raises(EduGPTError, match=r"is not the dataset its manifest describes: .*content digest differs"):
        fetch_verified(published)
    (root / "validation" / "state.json").unlink()
    with pytest.raises(EduGPTError, match="'validation/state.json' is missing"):
        fetch_verified(published)


@pytest.mark.parametrize("case", ["offline_not_cached", "no_such_repo", "no_such_revision", "no_manifest",
                                  "connection_fails", "not_a_dataset_uri"])
def test_a_hub_dataset_that_cannot_be_fetched_is_one_error_line(case, published, hub, monkeypatch):
    expected = {
        "offline_not_cached": (f"hf://datasets/{REPO}@main", "is not in the Hugging Face cache"),
        "no_such_repo": ("hf://datasets/someone/nothing", "no such dataset repo on the Hub"),
        "no_such_revision": (f"hf://datasets/{REPO}@v9", "the repo has no revision 'v9'"),
        "no_manifest": (f"hf://datasets/{REPO}@plain", "holds no manifest.json"),
        "connection_fails": (f"hf://datasets/{REPO}", "fetching --dataset_dir"),
        "not_a_dataset_uri": (f"hf://{REPO}", "only a Hub dataset repo can be trained from"),
    }
    uri, said = expected[case]
    if case == "offline_not_cached":  # the real huggingface_hub, offline, with a cache that holds only the commit
        pass
    else:
        online(monkeypatch, hub)
        hub.branches["plain"] = {".gitattributes": b""}
        hub.fail = case == "connection_fails"
    with pytest.raises(EduGPTError) as caught:
        fetch_verified(uri)
    message = str(caught.value)
    assert said in message and "\n" not in message and FAKE_TOKEN not in message, message


def test_online_fetch_downloads_the_recorded_files_at_the_manifests_commit(dataset, hub, monkeypatch):
    publish_dataset(dataset, REPO)
    from huggingface_hub import CommitOperationAdd

    hub.create_commit(REPO, [CommitOperationAdd("LICENSE", b"not read by training: not fetched")], repo_type="dataset")
    online(monkeypatch, hub)
    root = fetch_verified(f"hf://datasets/{REPO}")
    manifest = json.loads((dataset / MANIFEST).read_text())
    assert set(_files(root)) == {*manifest["files"], MANIFEST}
    assert root.name == hub.uploads[-1]["oid"]


def test_a_bare_hub_id_is_a_missing_path_that_names_the_hf_form(tmp_path, monkeypatch):
    from edugpt.train.pretrain import read_manifest

    monkeypatch.chdir(tmp_path)
    with pytest.raises(EduGPTError, match=f"a dataset on the Hub is --dataset_dir hf://datasets/{REPO}"):
        read_manifest(REPO)


@pytest.mark.slow
def test_train_hf_with_an_uncached_hub_dataset_offline_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    proc = run_script("train_hf.py", *TINY, "--dataset_dir", f"hf://datasets/{REPO}", "--output_dir", out,
                      env={"HF_HUB_CACHE": str(tmp_path / "empty-cache")}, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert len(error_lines(proc.stderr)) == 1 and "is not in the Hugging Face cache" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()


@pytest.mark.slow
def test_two_processes_train_from_one_fetch_and_a_failed_fetch_ends_both(data_dir, tmp_path, monkeypatch):
    """accelerate launch, 2 processes (DDP over gloo): the first fetches and verifies while the other waits at the
    barrier, then finds the copy in the cache; when the first cannot fetch, both end with an error, neither hangs."""
    from test_distributed import Launch  # before HfApi is patched: it imports transformers' hub module

    hub = FakeHub()
    monkeypatch.setattr("huggingface_hub.HfApi", hub)
    monkeypatch.setattr("edugpt.hub.datasets._dataset_push_ready", lambda repo_id: repo_id)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "publisher-cache"))
    publish_dataset(data_dir, REPO)
    commit = hub.uploads[-1]["oid"]
    cache = tmp_path / "cache"
    hub.save_to_cache(cache, REPO, revision=commit)
    args = ["--per_device_train_batch_size", "2", "--tokens_per_step", "256", "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--sample_steps", "0", "--hellaswag_steps", "0"]
    runs = {name: tmp_path / name for name in ("ok", "uncached")}
    launches = {
        "ok": Launch("cpu_ddp_2proc.yaml", [*TINY, "--dataset_dir", f"hf://datasets/{REPO}@{commit}", "--output_dir",
                                            str(runs["ok"]), *args], tmp_path / "ok.log", {"HF_HUB_CACHE": str(cache)}),
        "uncached": Launch("cpu_ddp_2proc.yaml", [*TINY, "--dataset_dir", f"hf://datasets/{REPO}@v2", "--output_dir",
                                                  str(runs["uncached"]), *args], tmp_path / "uncached.log",
                           {"HF_HUB_CACHE": str(cache)}),
    }
    outcome = {name: (launch.proc.wait(timeout=600), launch.wait()) for name, launch in launches.items()}
    code, log = outcome["ok"]
    assert code == 0, log[-3000:]
    steps = [r["step"] for r in map(json.loads, (runs["ok"] / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == [1, 2]
    assert json.loads((runs["ok"] / "data_manifest.json").read_text())["content"] == \
        json.loads((data_dir / MANIFEST).read_text())["content"]
    code, log = outcome["uncached"]
    assert code != 0 and "is not in the Hugging Face cache" in log, log[-3000:]
    assert "the first process on this machine could not fetch" in log and not runs["uncached"].exists()

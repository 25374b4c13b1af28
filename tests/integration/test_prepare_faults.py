"""prepare_data on both paths (the default executor and datatrove tasks) against a careless user and bad luck: what is
not a prepared dataset is never replaced, two jobs never write one output, a swap killed at any step is completed,
tampered blocks fail --verify, and every bad input or full disk is one line."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import ROOT, lock_held_in_another_pid_namespace, run_script

from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
from edugpt.corpus.datatrove import prepare_parallel
from edugpt.corpus.datatrove_work import WorkDir
from edugpt.corpus.install import make_dir, move_into_place, output_lock, recover_swap, remove_leftovers
from edugpt.corpus.local import prepare_dataset
from edugpt.corpus.manifest import MANIFEST
from edugpt.corpus.pack import SplitWriter
from edugpt.corpus.sources import EMBEDDED_CORPUS
from edugpt.corpus.synthetic import write_prepared
from edugpt.corpus.verify import verify
from edugpt.errors import EduGPTError

PATHS = ["default", "tasks"]
SEQ = 64
CACHE: list[Path] = []  # the default path's datasets cache, one per module


@pytest.fixture(autouse=True, scope="module")
def cache(tmp_path_factory):
    CACHE[:] = [tmp_path_factory.mktemp("cache")]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small parquet folder (200 documents of the embedded corpus) and a literal special-token string in text."""
    rows = pq.read_table(EMBEDDED_CORPUS, columns=["id", "text"]).slice(0, 200).to_pylist()
    rows[3]["text"] = "A web page that quotes <|endoftext|> in its text. " * 3
    folder = tmp_path_factory.mktemp("corpus")
    pq.write_table(pa.Table.from_pylist(rows[:120]), folder / "a.parquet")
    pq.write_table(pa.Table.from_pylist(rows[120:]), folder / "b.parquet")
    return folder


def run(path: str, dataset, out: Path, **kwargs) -> dict:
    kwargs = {"val_fraction": 0.1, "seq_len": SEQ, "num_proc": 1, **kwargs}
    if path == "default":
        args = PrepareDataArguments(dataset=str(dataset), output_dir=str(out), cache_dir=str(CACHE[0]), **kwargs)
        return prepare_dataset(args)
    args = PrepareDataArguments(dataset=str(dataset), output_dir=str(out), **kwargs)
    return prepare_parallel(args, ExecutorArguments(executor="local", tasks=2, workers=1))


def load_blocks(out: Path) -> dict[str, np.ndarray]:
    import datasets

    dd = datasets.load_from_disk(str(out))
    return {split: np.asarray(dd[split].with_format("numpy")["input_ids"]) for split in ("train", "validation")}


def beside(out: Path) -> list[str]:
    """What a run left beside its output (the lock file is meant to stay)."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")
                  and p.name != f".{out.name}.lock")


# ------------------------------------------------------------------------------------------------- --overwrite

@pytest.mark.parametrize("path", PATHS)
def test_overwrite_replaces_only_a_prepared_dataset_and_never_the_input(tmp_path, corpus, path):
    mine = tmp_path / "mine"
    (mine / "train").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    (mine / MANIFEST).write_text(json.dumps({"format": "edugpt-prepared-v1"}))  # a manifest, and a stranger beside
    with pytest.raises(EduGPTError, match="is not a dataset prepared by prepare_data.py.*so it is never replaced"):
        run(path, corpus, mine, overwrite=True)
    assert (mine / "notes.txt").read_text() == "precious"
    before = sorted(corpus.rglob("*"))
    for out, relation in ((corpus, "is"), (corpus / "sub" / "out", "lies inside"), (corpus.parent, "holds")):
        with pytest.raises(EduGPTError, match=f"{relation} the input"):
            run(path, corpus, out, overwrite=True)
    assert sorted(corpus.rglob("*")) == before


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("path", PATHS)
def test_overwrite_refuses_a_dataset_holding_a_file_its_record_does_not_list(tmp_path, corpus, path):
    """--overwrite replaces a prepared dataset only when every file in it is one its manifest records, unchanged in
    size: a user's `.json` or `.arrow` in a split folder (names the old rule took for ours), or a file of ours they
    grew, makes it refuse in one line naming the file, and nothing is deleted."""
    out = tmp_path / "out"
    run(path, corpus, out)
    for added, content in (("train/my-notes.json", b'{"keep": true}'), ("validation/mine.arrow", b"user data"),
                           ("dataset_dict.json", None)):
        before = snapshot(out)
        if content is None:  # a file of ours, changed in size
            (out / added).write_bytes((out / added).read_bytes() + b" ")
        else:
            (out / added).write_bytes(content)
        changed = snapshot(out)
        with pytest.raises(EduGPTError, match=f"{added}.*so it is never replaced .not even with --overwrite"):
            run(path, corpus, out, overwrite=True, seq_len=SEQ // 2)
        assert snapshot(out) == changed and beside(out) == []
        if content is None:
            (out / added).write_bytes(before[added])
        else:
            (out / added).unlink()
    assert json.loads((out / MANIFEST).read_text())["seq_len"] == SEQ
    run(path, corpus, out, overwrite=True, seq_len=SEQ // 2)  # as recorded again: replaced
    assert json.loads((out / MANIFEST).read_text())["seq_len"] == SEQ // 2 and beside(out) == [] and verify(out)


# ------------------------------------------------------------------------------------------------------- lock

@contextlib.contextmanager
def lock_held_elsewhere(out: Path):
    """The output's lock held by a process in another PID namespace (as on another host), or here if unshare is not
    permitted: either way the filesystem, not a pid, says it is held."""
    with lock_held_in_another_pid_namespace("from edugpt.corpus.install import output_lock; "
                                            "output_lock(Path(sys.argv[1])).acquire()",
                                            out, lambda: output_lock(out)) as held:
        if held:
            yield
        else:
            with output_lock(out):
                yield


@pytest.mark.parametrize("path", PATHS)
def test_a_job_holding_the_lock_is_never_raced_or_cleaned_up(tmp_path, corpus, path):
    out = tmp_path / "out"
    # Another job's work in progress beside the output (a folder no record names as this run's).
    (tmp_path / ".out.tmp-4194999" / "train").mkdir(parents=True)
    (tmp_path / ".out.tmp-4194999" / "train" / "data-00000.arrow").write_bytes(b"being written")
    with lock_held_elsewhere(out):
        with pytest.raises(EduGPTError, match=r"--output_dir .*out is in use by another job"):
            run(path, corpus, out)
    assert (tmp_path / ".out.tmp-4194999" / "train" / "data-00000.arrow").read_bytes() == b"being written"
    assert not out.exists()
    run(path, corpus, out)  # once it is free, the next job runs; a folder nothing records as ours is left alone
    assert beside(out) == [".out.tmp-4194999"] and verify(out)
    assert (tmp_path / ".out.tmp-4194999" / "train" / "data-00000.arrow").read_bytes() == b"being written"


# ------------------------------------------------------------------------------------------------------- swap

STEPS = ["journal written", "old moved aside", "new in place", "old removed"]


@pytest.mark.parametrize("step", STEPS)
def test_a_swap_stopped_at_any_step_is_completed_by_the_next_run(tmp_path, monkeypatch, step):
    import edugpt.corpus.install

    rng = np.random.default_rng(0)
    out, new = tmp_path / "out", make_dir(tmp_path / ".out.tmp") / "dataset"
    write_prepared(out, {s: rng.integers(0, 50257, (n, 8)).astype(np.uint16) for s, n in (("train", 4), ("validation", 2))})
    write_prepared(new, {s: rng.integers(0, 50257, (n, 8)).astype(np.uint16) for s, n in (("train", 5), ("validation", 3))})
    wanted = json.loads((new / MANIFEST).read_text())["content"]

    def killed(at):
        if at == step:
            raise KeyboardInterrupt(at)

    monkeypatch.setattr(edugpt.corpus.install, "swap_step", killed)
    with pytest.raises(KeyboardInterrupt):
        move_into_place(new, out)
    monkeypatch.undo()
    assert out.exists() or (tmp_path / ".out.old").exists()  # never both gone
    with output_lock(out):
        recover_swap(out)
        remove_leftovers(out)
    assert json.loads((out / MANIFEST).read_text())["content"] == wanted and verify(out)
    assert beside(out) == []


def test_an_interrupted_swap_keeps_the_new_dataset_for_the_next_run(tmp_path, corpus, monkeypatch):
    """Ctrl-C (or any exception) inside prepare_dataset()'s swap: the journalled new dataset is kept, not cleaned up with the
    rest, and the next run installs it."""
    import edugpt.corpus.install

    out = tmp_path / "out"
    run("default", corpus, out)

    def interrupted(at):
        if at == "old moved aside":
            raise KeyboardInterrupt(at)

    monkeypatch.setattr(edugpt.corpus.install, "swap_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run("default", corpus, out, overwrite=True, seq_len=SEQ // 2)
    monkeypatch.undo()
    assert not out.exists() and (tmp_path / ".out.old").is_dir() and (tmp_path / ".out.tmp").is_dir()
    with output_lock(out):
        recover_swap(out)
        remove_leftovers(out)
    assert json.loads((out / MANIFEST).read_text())["seq_len"] == SEQ // 2 and verify(out)  # the new one
    assert beside(out) == []


def test_a_journal_naming_other_folders_moves_or_deletes_nothing(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "keep.txt").write_text("mine")
    out = tmp_path / "out"
    (tmp_path / ".out.swap.json").write_text(json.dumps({"new": str(precious), "old": str(precious)}))
    with pytest.raises(EduGPTError, match="swap.json' is damaged"):
        recover_swap(out)
    assert (precious / "keep.txt").read_text() == "mine" and not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
def test_a_real_kill_between_the_renames_loses_nothing(tmp_path, corpus, path):
    """SIGKILL with the old dataset moved aside and the new one not yet in place: the next run finishes the swap
    (today's main deleted both); with --overwrite it then replaces it as asked."""
    out = tmp_path / "out"
    run(path, corpus, out, val_fraction=0.2)
    executor = "['--executor', 'local', '--tasks', '2', '--workers', '1']" if path == "tasks" else "[]"
    code = f"""
import os, signal, sys
import edugpt.corpus.install
edugpt.corpus.install.swap_step = lambda at: at == "old moved aside" and os.kill(os.getpid(), signal.SIGKILL)
sys.argv = ["prepare_data.py", "--dataset", {str(corpus)!r}, "--output_dir", {str(out)!r}, "--seq_len", "{SEQ}",
            "--val_fraction", "0.1", "--num_proc", "1", "--overwrite", "--cache_dir", {str(CACHE[0])!r},
            *{executor}]
sys.path.insert(0, {str(ROOT)!r})
import runpy
runpy.run_path({str(ROOT / 'prepare_data.py')!r}, run_name="__main__")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not out.exists() and (tmp_path / ".out.old").is_dir()
    again = run_script("prepare_data.py", "--dataset", corpus, "--output_dir", out, "--seq_len", SEQ,
                       "--cache_dir", CACHE[0], timeout=300)
    assert again.returncode == 2 and "exists and is not empty (a prepared dataset)" in again.stderr, again.stderr
    assert "completing the replacement" in again.stderr
    assert json.loads((out / MANIFEST).read_text())["split_rule"]["val_fraction"] == 0.1 and verify(out)
    assert beside(out) == ([".out.prepare"] if path == "tasks" else [])  # the finished work dir, emptied next time


# ---------------------------------------------------------------------------------------------------- verify

def rewrite_split(out: Path, split: str, blocks: np.ndarray) -> None:
    """Replace a split's blocks in place, keeping its file name and row count (what a careless copy would do)."""
    (name,) = [f["filename"] for f in json.loads((out / split / "state.json").read_text())["_data_files"]]
    scratch = out.parent / "scratch"
    writer = SplitWriter(scratch, blocks.shape[1])
    writer.add_blocks(blocks)
    writer.close()
    shutil.copyfile(scratch / writer.files[0], out / split / name)
    shutil.rmtree(scratch)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, corpus):
    """One dataset from each path, whole (one Arrow file per split) for the tampering below."""
    root = tmp_path_factory.mktemp("prepared")
    return {path: (run(path, corpus, root / path, **({} if path == "default" else {})), root / path) for path in
            ("default",)}


@pytest.mark.parametrize("tamper", ["zeroed", "swapped_between_splits", "validation_copied_into_train"])
def test_verify_catches_tampered_blocks(tmp_path, prepared, tamper):
    _, original = prepared["default"]
    out = tmp_path / "out"
    shutil.copytree(original, out)
    blocks = load_blocks(out)
    train, val = blocks["train"].copy(), blocks["validation"].copy()
    if tamper == "zeroed":
        train[3, 10:20] = 0
        rewrite_split(out, "train", train)
    elif tamper == "swapped_between_splits":
        train[0], val[0] = blocks["validation"][0], blocks["train"][0]
        rewrite_split(out, "train", train)
        rewrite_split(out, "validation", val)
    else:
        train[:len(val)] = val
        rewrite_split(out, "train", train)
    with pytest.raises(EduGPTError, match=r"blocks are not the ones prepared \(content digest differs"):
        verify(out)


@pytest.mark.slow
def test_verify_of_tasks_output_and_of_old_or_broken_manifests(tmp_path, corpus):
    manifest = run("tasks", corpus, tmp_path / "tasks")
    assert manifest["content"]["train"]["sha256"] and "unchecked" not in verify(tmp_path / "tasks")
    train = load_blocks(tmp_path / "tasks")["train"]
    first = json.loads((tmp_path / "tasks" / "train" / "state.json").read_text())["_data_files"][0]["filename"]
    data = (tmp_path / "tasks" / "train" / first).read_bytes()
    row = train[1].astype("<u2").tobytes()
    at = data.index(row)
    (tmp_path / "tasks" / "train" / first).write_bytes(data[:at] + b"\0" * len(row) + data[at + len(row):])
    with pytest.raises(EduGPTError, match=f"content digest differs; changed or moved: {first}"):
        verify(tmp_path / "tasks")

    old = tmp_path / "old"
    write_prepared(old, {"train": np.ones((3, 8), np.uint16), "validation": np.ones((2, 8), np.uint16)})
    manifest = json.loads((old / MANIFEST).read_text())
    (old / MANIFEST).write_text(json.dumps({**manifest, "format": "edugpt-prepared-v1"}))  # the format before records
    proc = run_script("prepare_data.py", "--verify", old, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith("has format 'edugpt-prepared-v1', expected "
                                                         "'edugpt-prepared-v2'; prepare the dataset again with this "
                                                         "version of prepare_data.py.")
    del manifest["content"], manifest["splits"]["train"]["tokens"], manifest["seq_len"]
    (old / MANIFEST).write_text(json.dumps(manifest))
    proc = run_script("prepare_data.py", "--verify", old, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (f"error: {str(old / MANIFEST)!r} lacks seq_len, content, "
                                                    "splits.train.tokens, so it cannot be verified; prepare the dataset "
                                                    "again with prepare_data.py.")


# ------------------------------------------------------------------------------------------------ skipped rows

@pytest.mark.parametrize("path", PATHS)
def test_rows_without_usable_text_are_counted_by_reason(tmp_path, path, capsys):
    rows = [{"id": f"d{i}", "text": f"Document number {i} says something. " * 4} for i in range(40)]
    rows += [{"id": "null1", "text": None}, {"id": "null2", "text": None}, {"id": "e", "text": ""},
             {"id": "blank", "text": " \n "}]
    (tmp_path / "corpus").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "corpus" / "c.parquet")
    manifest = run(path, tmp_path / "corpus", tmp_path / "out", val_fraction=0.3, seq_len=16)
    total = {key: sum(s[key] for s in manifest["splits"].values())
             for key in ("documents", "skipped_missing_text", "skipped_empty_documents", "skipped_non_string_text")}
    assert total == {"documents": 40, "skipped_missing_text": 2, "skipped_empty_documents": 2,
                     "skipped_non_string_text": 0}
    assert "skipped 2 rows with no text (null or missing), 2 rows with empty or blank text" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------- tokens

@pytest.mark.parametrize("path", PATHS)
def test_a_literal_special_token_in_text_is_ordinary_text_with_an_hf_tokenizer(tmp_path, corpus, gpt2_tokenizer, path):
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    hf = run(path, corpus, tmp_path / "hf", tokenizer=str(tmp_path / "tok"))
    assert hf["tokenizer"]["backend"] == "transformers"
    reference = prepared_reference(tmp_path, corpus, path)
    ours, theirs = load_blocks(tmp_path / "hf"), load_blocks(reference)
    assert all(np.array_equal(ours[s], theirs[s]) for s in ours)
    # One <|endoftext|> per document (the one appended after it), none from the quoted string.
    eos = sum(int((b == 50256).sum()) for b in ours.values())
    assert eos <= sum(s["documents"] for s in hf["splits"].values())


def prepared_reference(tmp_path, corpus, path) -> Path:
    run(path, corpus, tmp_path / "tiktoken")
    return tmp_path / "tiktoken"


# ----------------------------------------------------------------------------------------------- bad input

def error_of(path, dataset, out, **kwargs) -> str:
    with pytest.raises(EduGPTError) as error:
        run(path, dataset, out, **kwargs)
    assert not out.exists() and beside(out) == [], beside(out)
    return str(error.value)


@pytest.mark.parametrize("path", PATHS)
def test_bad_files_are_one_line_naming_the_file(tmp_path, path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"id": "a", "text": "fine"}\n\n{"id": "b", "text": broken}\n')
    (tmp_path / "garbage.parquet").write_bytes(os.urandom(3000))
    out = tmp_path / "out"
    if path == "default":
        assert "empty.jsonl is empty" in error_of(path, tmp_path / "empty.jsonl", out)
        assert "bad.jsonl:3 is not a line of JSON" in error_of(path, tmp_path / "bad.jsonl", out)
    else:
        assert "reads parquet files, and" in error_of(path, tmp_path / "bad.jsonl", out)
    assert f"cannot read parquet file {str(tmp_path / 'garbage.parquet')!r}" in error_of(
        path, tmp_path / "garbage.parquet", out)


@pytest.mark.parametrize("path", PATHS)
def test_an_output_dir_that_cannot_be_written_is_one_line(tmp_path, corpus, path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(EduGPTError, match=r"the folder of --output_dir .*file. is a file \(or lies under one\)"):
        run(path, corpus, tmp_path / "file" / "out")
    with small_disk(tmp_path / "ro", 1 << 20, "ro") as mounted:
        if not mounted:
            if os.geteuid() == 0:
                pytest.skip("cannot mount a read-only filesystem here, and root writes through chmod")
            (tmp_path / "ro").chmod(0o555)
        with pytest.raises(EduGPTError, match="is not writable"):
            run(path, corpus, tmp_path / "ro" / "out")


@contextlib.contextmanager
def small_disk(path: Path, size: int, options: str = ""):
    """A tmpfs of `size` bytes mounted at `path` (yields True), or a plain folder where mounting is not allowed."""
    path.mkdir()
    try:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(filter(None, [f"size={size}", options])),
                                  "tmpfs", str(path)], capture_output=True).returncode == 0
    except OSError:
        mounted = False
    try:
        yield mounted
    finally:
        if mounted and subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "--lazy", str(path)], check=False)  # still busy: detach it anyway


@pytest.mark.parametrize("path", PATHS)
def test_disk_full_is_one_line_and_leaves_nothing_partial(tmp_path, path):
    with small_disk(tmp_path / "disk", 600_000) as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs is not permitted here")
        out = tmp_path / "disk" / "out"
        message = error_of(path, EMBEDDED_CORPUS, out, seq_len=128, val_fraction=0.05) if path == "default" else None
        if path == "tasks":
            with pytest.raises(EduGPTError) as error:
                run(path, EMBEDDED_CORPUS, out, seq_len=128, val_fraction=0.05)
            message = str(error.value)
            assert not out.exists() and beside(out) == [".out.prepare"]  # finished tasks kept for the re-run
            assert not list(WorkDir(out).tmp.iterdir())  # the failed task's half-written part is gone
        assert "no space left on the device" in message, message
        assert "\n" not in message
        # No descriptor of this process still holds a deleted file's space there.
        held = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                if os.path.exists(f"/proc/self/fd/{fd}")]
        assert not [p for p in held if p.startswith(str(tmp_path / "disk"))], held


def test_a_full_cache_disk_is_named_as_such_not_as_bad_input(tmp_path):
    """jsonl input whose datasets cache fills the disk: the one line says the disk is full, not that a line is bad."""
    rows = pq.read_table(EMBEDDED_CORPUS, columns=["id", "text"]).slice(0, 300).to_pylist()
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(row) + "\n" for row in rows))
    with small_disk(tmp_path / "cache", 200_000) as mounted:
        if not mounted:
            pytest.skip("mounting a small tmpfs is not permitted here")
        args = PrepareDataArguments(dataset=str(corpus), output_dir=str(tmp_path / "out"), seq_len=SEQ, num_proc=1,
                                    cache_dir=str(tmp_path / "cache"))
        with pytest.raises(EduGPTError, match="^no space left on the device while writing") as error:
            prepare_dataset(args)
        assert "\n" not in str(error.value) and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------- one line, nothing left

def non_utf8_inputs(folder: Path) -> dict[str, Path]:
    """The same 60 documents as jsonl and as parquet, with bytes that are not UTF-8 in row 7's text."""
    rows = [{"id": f"d{i}", "text": f"Document {i} says something rather long. " * 20} for i in range(60)]
    texts = [row["text"].encode() for row in rows]
    texts[7] = texts[7].replace(b"says", b"s\xff\xfeys", 1)
    folder.mkdir()
    lines = [json.dumps(row).encode() for row in rows]
    lines[7] = lines[7].replace(b"says", b"s\xff\xfeys", 1)
    (folder / "bad.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (folder / "pq").mkdir()
    table = pa.table({"id": [row["id"] for row in rows], "text": pa.array(texts, pa.binary()).view(pa.string())})
    pq.write_table(table, folder / "pq" / "bad.parquet", row_group_size=5)
    return {"jsonl": folder / "bad.jsonl", "parquet": folder / "pq"}


@pytest.mark.parametrize("path", PATHS)
def test_text_that_is_not_utf8_is_one_line_naming_the_file_and_row(tmp_path, path):
    inputs = non_utf8_inputs(tmp_path / "input")
    out = tmp_path / "out"
    message = error_of(path, inputs["parquet"], out, seq_len=32, val_fraction=0.2)
    assert f"{str(inputs['parquet'] / 'bad.parquet')!r} row 7 holds text that is not valid UTF-8" in message, message
    message = error_of(path, inputs["jsonl"], out, seq_len=32, val_fraction=0.2)
    if path == "default":
        assert f"{inputs['jsonl']}:8 holds text that is not valid UTF-8" in message, message
    else:
        assert "reads parquet files, and" in message
    proc = run_script("prepare_data.py", "--dataset", inputs["parquet"], "--output_dir", out, "--seq_len", "32",
                      "--cache_dir", CACHE[0], *(["--executor", "local", "--tasks", "2"] if path == "tasks" else []),
                      timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "row 7 holds text" in proc.stderr
    assert not out.exists() and beside(out) == []


def test_a_damaged_plan_is_one_line_and_the_work_dir_is_kept(tmp_path):
    out = tmp_path / "out"
    work = WorkDir(out)
    make_dir(work.root)
    work.staging.mkdir()
    for damage in ('{"format": "edugpt-prepare-plan-v1", "tasks": "two"', '{"format": "edugpt-prepare-plan-v1"}',
                   '[1, 2]', b"\xff\xfe"):
        work.plan.write_bytes(damage if isinstance(damage, bytes) else damage.encode())
        before = snapshot(work.root)
        with pytest.raises(EduGPTError, match=r"plan.json' is damaged \(.*\); delete .*\.out\.prepare' to prepare "
                                              "from scratch") as error:
            run("tasks", EMBEDDED_CORPUS, out)
        assert "\n" not in str(error.value) and snapshot(work.root) == before and not out.exists()


UNKNOWN_TOKENIZERS = [{"name": "no-such-tokenizer", "vocab_size": 50257, "eos_token_id": 50256, "backend": "tiktoken"},
                      "no-such-tokenizer", {"name": "gpt2", "vocab_size": "50257", "eos_token_id": 50256},
                      {"name": None, "vocab_size": None, "eos_token_id": None}]


@pytest.mark.parametrize("tokenizer", UNKNOWN_TOKENIZERS, ids=["unknown-name", "a-string", "text-vocab", "nulls"])
def test_a_manifest_naming_an_unknown_tokenizer_is_one_line_for_verify_and_training(tmp_path, tokenizer):
    from transformers import GPT2Config

    from edugpt.train.pretrain import load_prepared

    root = write_prepared(tmp_path / "data", {"train": np.ones((3, 8), np.uint16),
                                              "validation": np.ones((2, 8), np.uint16)}, tokenizer=tokenizer)
    line = "names a tokenizer prepare_data.py does not know"
    with pytest.raises(EduGPTError, match=line):
        verify(root)
    with pytest.raises(EduGPTError, match=line):
        load_prepared(root, GPT2Config(n_positions=8))
    if tokenizer == UNKNOWN_TOKENIZERS[0]:
        proc = run_script("prepare_data.py", "--verify", root, timeout=120)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith(f"error: {str(root / MANIFEST)!r} {line}")


@pytest.mark.parametrize("kind", ["directory", "symlink"])
def test_a_journal_that_is_not_a_plain_file_is_one_line_and_nothing_moves(tmp_path, corpus, kind):
    out = tmp_path / "out"
    run("default", corpus, out)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps({"new": str(tmp_path / ".out.tmp" / "dataset"), "out": str(out),
                                     "old": str(tmp_path / ".out.old"), "new_id": None, "old_id": None}))
    journal = tmp_path / ".out.swap.json"
    journal.mkdir() if kind == "directory" else journal.symlink_to(elsewhere)
    before, target = snapshot(out), elsewhere.read_text()
    for path in PATHS:
        with pytest.raises(EduGPTError, match=r"\.out\.swap\.json' is not a journal prepare_data.py wrote \(it is not "
                                              r"a plain file\)"):
            run(path, corpus, out, overwrite=True)
    assert snapshot(out) == before and elsewhere.read_text() == target
    assert beside(out) == [".out.swap.json"] and (journal.is_dir() if kind == "directory" else journal.is_symlink())


def test_a_cache_dir_that_is_in_or_holds_the_output_is_refused_before_anything_is_written(tmp_path, corpus):
    out = tmp_path / "out"
    run("default", corpus, out)
    before = snapshot(out)
    for cache, relation in ((out, "is"), (out / "cache", "lies inside"), (tmp_path, "holds")):
        args = PrepareDataArguments(dataset=str(corpus), output_dir=str(out), cache_dir=str(cache), overwrite=True,
                                    seq_len=SEQ, num_proc=1)
        with pytest.raises(EduGPTError, match=f"the datasets cache .* {relation} --output_dir"):
            prepare_dataset(args)
        assert snapshot(out) == before and beside(out) == []


def test_a_journal_never_moves_or_deletes_a_folder_that_is_not_the_one_it_recorded(tmp_path, monkeypatch):
    """A kill after the old dataset was moved aside, then someone's folder put where it was (`.out.old`): the next run
    refuses in one line, and neither that folder nor the new dataset is touched."""
    import edugpt.corpus.install

    rng = np.random.default_rng(1)
    out, new = tmp_path / "out", make_dir(tmp_path / ".out.tmp") / "dataset"
    write_prepared(out, {s: rng.integers(0, 50257, (n, 8)).astype(np.uint16) for s, n in (("train", 4), ("validation", 2))})
    write_prepared(new, {s: rng.integers(0, 50257, (n, 8)).astype(np.uint16) for s, n in (("train", 5), ("validation", 3))})

    def killed(at):
        if at == "old moved aside":
            raise KeyboardInterrupt(at)

    monkeypatch.setattr(edugpt.corpus.install, "swap_step", killed)
    with pytest.raises(KeyboardInterrupt):
        move_into_place(new, out)
    monkeypatch.undo()
    (tmp_path / ".out.old").rename(tmp_path / "ours-moved")
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.old" / "manifest.json").write_text("someone's")
    with output_lock(out):
        before = snapshot(tmp_path)
        with pytest.raises(EduGPTError, match="names folders that are not the ones it recorded"):
            recover_swap(out)
        assert snapshot(tmp_path) == before

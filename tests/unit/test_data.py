"""edugpt.corpus (split, tokens, pack, local, verify, sources): split rule, packer, and whole preparations of tiny
local corpora (in-process)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import write_jsonl

from edugpt.config.arguments import PrepareDataArguments
from edugpt.corpus.install import MADE, make_dir
from edugpt.corpus.layout import DOC_IDS
from edugpt.corpus.local import prepare_dataset
from edugpt.corpus.manifest import MANIFEST
from edugpt.corpus.pack import pack_blocks, record_batch_rows, save_blocks
from edugpt.corpus.sources import EMBEDDED_CORPUS
from edugpt.corpus.split import derive_id, split_of
from edugpt.corpus.tokens import tokenize_batch
from edugpt.corpus.verify import verify
from edugpt.errors import EduGPTError
from edugpt.model.tokenizer import GPT2_EOS_ID, gpt2_tiktoken

ENC = gpt2_tiktoken()
EOS_BYTES = b"<|endoftext|>"


def corpus_rows(n=60, duplicates=10):
    """`n` distinct documents plus `duplicates` extra rows re-using earlier IDs with different text."""
    rows = [{"id": f"doc-{i}", "text": f"Document {i} talks about topic {i % 7}. " * (5 + i % 11)} for i in range(n)]
    rows += [{"id": f"doc-{i}", "text": f"A second copy of document {i}, edited. " * 4} for i in range(duplicates)]
    return rows


def run_prepare(tmp_path, dataset, name="out", **kwargs):
    kwargs = {"val_fraction": 0.2, "seq_len": 32, "num_proc": 1, "cache_dir": str(tmp_path / "cache"), **kwargs}
    args = PrepareDataArguments(dataset=str(dataset), output_dir=str(tmp_path / name), **kwargs)
    return prepare_dataset(args), tmp_path / name


def load_split_blocks(out):
    import datasets

    dd = datasets.load_from_disk(str(out))
    return {split: np.asarray(dd[split].with_format("numpy")["input_ids"]) for split in ("train", "validation")}


# ------------------------------------------------------------------------------------------------ pure functions

def test_split_is_a_pure_salted_function_of_the_id():
    ids = [f"<urn:uuid:{i}>" for i in range(20_000)]
    first = [split_of(i, 0.1) for i in ids]
    assert first == [split_of(i, 0.1) for i in ids]
    share = first.count("validation") / len(ids)
    assert 0.09 < share < 0.11
    # A different salt reshuffles; a larger fraction only moves documents from train to validation.
    assert first != [split_of(i, 0.1, salt="other") for i in ids]
    assert all(split_of(i, 0.2) == "validation" for i, s in zip(ids, first) if s == "validation")


def test_pack_blocks_concatenates_and_drops_one_tail():
    blocks, tail = pack_blocks([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=4)
    assert blocks.dtype == np.uint16
    assert blocks.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]] and tail == 1
    assert pack_blocks([[1, 2]], seq_len=4)[0].shape == (0, 4)


def test_tokenize_batch_appends_eos_and_skips_unusable_texts():
    texts = ["Once upon a time", None, 5, "", "   \n", ["a list"], "The end."]
    out = tokenize_batch(texts, [f"d{i}" for i in range(len(texts))], tokenizer="gpt2", val_fraction=0.5)
    tokens = out["input_ids"].to_pylist()
    assert tokens[0] == [7454, 2402, 257, 640, GPT2_EOS_ID]
    assert tokens[-1] == ENC.encode_ordinary("The end.") + [GPT2_EOS_ID]
    assert out["skipped"].to_pylist() == [0, 1, 2, 3, 3, 2, 0]  # kept, missing, not a string, blank: SKIP_REASONS
    assert all(t == [] for t, s in zip(tokens, out["skipped"].to_pylist()) if s)
    assert out["split"] == [split_of(f"d{i}", 0.5) for i in range(len(texts))]
    # Without ids, identical texts get identical derived ids.
    derived = tokenize_batch(["same", "same", "other"], None, tokenizer="gpt2", val_fraction=0.5)["id"]
    assert derived[0] == derived[1] == derive_id("same") != derived[2]


def test_save_blocks_writes_few_large_record_batches(tmp_path):
    """Every record batch header is read (and ~64 KiB of the file faulted into RSS) when a split is memory-mapped."""
    import datasets

    from edugpt.corpus.layout import block_features

    assert record_batch_rows(1024) == 8192 and record_batch_rows(128) == 65536
    blocks = np.arange(5000 * 8, dtype=np.uint16).reshape(5000, 8)
    features = block_features(8)
    splits = datasets.DatasetDict({name: datasets.Dataset.from_dict({"input_ids": blocks}, features=features)
                                   for name in ("train", "validation")})
    splits.save_to_disk(str(tmp_path / "plain"))
    save_blocks(splits, tmp_path / "big", seq_len=8)
    assert datasets.config.DEFAULT_MAX_BATCH_SIZE == 1000  # restored

    def batches(root):
        return [len(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().to_batches())
                for f in sorted((root / "train").glob("*.arrow"))]

    assert batches(tmp_path / "plain") == [5] and batches(tmp_path / "big") == [1]
    loaded = datasets.load_from_disk(str(tmp_path / "big"))
    assert loaded["train"].features == features
    assert np.array_equal(np.asarray(loaded["train"].with_format("numpy")["input_ids"]), blocks)


# ------------------------------------------------------------------------------------------- whole preparations

def test_splits_are_disjoint_and_validation_blocks_hold_only_validation_text(tmp_path):
    rows = corpus_rows()
    manifest, out = run_prepare(tmp_path, write_jsonl(tmp_path / "corpus.jsonl", rows))
    ids = pq.read_table(out / DOC_IDS).to_pylist()
    split_by_id = {}
    for row in ids:
        assert split_by_id.setdefault(row["id"], row["split"]) == row["split"], "an id landed in both splits"
    assert len(ids) == len(rows)  # duplicates are all kept, on one side

    blocks = load_split_blocks(out)
    for split in ("train", "validation"):
        # The split's blocks are exactly its documents' tokens (+ eos), in source order, cut into seq_len pieces.
        docs = [r for r in rows if split_of(r["id"], 0.2) == split]
        stream = [t for r in docs for t in ENC.encode_ordinary(r["text"]) + [GPT2_EOS_ID]]
        n = len(stream) // 32 * 32
        assert blocks[split].reshape(-1).tolist() == stream[:n]
        # ... and every block decodes to byte ranges of this split's documents only.
        doc_bytes = [r["text"].encode() for r in docs]
        for block in blocks[split]:
            for piece in ENC.decode_bytes(block.tolist()).split(EOS_BYTES):
                assert any(piece in d for d in doc_bytes), (split, piece[:60])
    assert blocks["validation"].size and blocks["train"].size


def test_manifest_counts_equal_a_recount(tmp_path):
    rows = corpus_rows() + [{"id": "empty", "text": ""}, {"id": "null", "text": None}, {"id": "num", "text": 42}]
    manifest, out = run_prepare(tmp_path, write_jsonl(tmp_path / "corpus.jsonl", rows))
    assert manifest == json.loads((out / MANIFEST).read_text())
    assert manifest["format"] == "edugpt-prepared-v2" and manifest["seq_len"] == 32
    # The record: every file prepare_data.py wrote beside the manifest, with its size.
    assert manifest["files"] == {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*")
                                 if p.is_file() and p.name != MANIFEST}
    assert manifest["tokenizer"] == {"name": "gpt2", "vocab_size": 50257, "eos_token_id": 50256, "backend": "tiktoken"}
    assert manifest["split_rule"]["val_fraction"] == 0.2 and manifest["split_rule"]["salt"]
    blocks = load_split_blocks(out)
    for split, counted in manifest["splits"].items():
        kept = [r for r in rows if split_of(r["id"], 0.2) == split and isinstance(r["text"], str) and r["text"]]
        tokens = sum(len(ENC.encode_ordinary(r["text"])) + 1 for r in kept)
        in_split = {r["id"] for r in rows[-3:] if split_of(r["id"], 0.2) == split}
        assert counted == {
            "documents": len(kept), "tokens": tokens, "blocks": tokens // 32, "dropped_tail_tokens": tokens % 32,
            "skipped_empty_documents": int("empty" in in_split), "skipped_missing_text": int("null" in in_split),
            "skipped_non_string_text": int("num" in in_split),
        }
        assert len(blocks[split]) == counted["blocks"]
    # Each reason counted on its own (one row each), none hidden among "empty" ones.
    for reason in ("skipped_empty_documents", "skipped_missing_text", "skipped_non_string_text"):
        assert sum(s[reason] for s in manifest["splits"].values()) == 1, reason
    assert verify(out)["splits"] == manifest["splits"]


def test_split_is_deterministic_across_num_proc_and_runs(tmp_path):
    # Separate caches for num_proc 1 and 2: the datasets fingerprint ignores num_proc, so a shared cache would
    # hand run "b" the result of run "a".
    results, cache_files = [], []
    for name, num_proc, cache in (("a", 1, "cache1"), ("b", 2, "cache2"), ("c", 2, "cache2")):
        manifest, out = run_prepare(tmp_path, EMBEDDED_CORPUS, name=name, num_proc=num_proc, seq_len=64,
                                    val_fraction=0.05, cache_dir=str(tmp_path / cache))
        results.append((manifest["splits"], pq.read_table(out / DOC_IDS).to_pylist(), load_split_blocks(out)))
        cache_files.append({p.name: p.stat().st_mtime_ns for p in (tmp_path / cache).rglob("cache-*.arrow")})
    assert len(cache_files[1]) == 2  # two tokenizing processes really ran
    # The re-run found its tokenized shards in the datasets cache instead of tokenizing again.
    assert cache_files[2] == cache_files[1]
    (splits, ids, blocks), others = results[0], results[1:]
    assert splits["validation"]["documents"] > 5
    for other_splits, other_ids, other_blocks in others:
        assert other_splits == splits and other_ids == ids
        for split in blocks:
            assert np.array_equal(blocks[split], other_blocks[split])


def test_derived_ids_when_the_source_has_none(tmp_path, caplog):
    rows = [{"text": f"Paragraph number {i} of a source without ids. " * 20} for i in range(30)]
    rows.append(dict(rows[0]))  # an exact duplicate: same derived id, so the same split
    manifest, out = run_prepare(tmp_path, write_jsonl(tmp_path / "noid.jsonl", rows), val_fraction=0.3)
    assert manifest["source"]["id_column"] is None and "derived" in manifest["source"]["ids"]
    assert "deriving each document's id" in caplog.text
    ids = pq.read_table(out / DOC_IDS).to_pylist()
    assert [r["id"] for r in ids].count(derive_id(rows[0]["text"])) == 2
    verify(out)


def test_directory_of_parquet_shards(tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    rows = corpus_rows(duplicates=0)
    for k in range(3):
        pq.write_table(pa.Table.from_pylist(rows[k::3]), shards / f"part-{k}.parquet")
    manifest, out = run_prepare(tmp_path, shards)
    assert manifest["source"]["files"] == ["part-0.parquet", "part-1.parquet", "part-2.parquet"]
    assert sum(s["documents"] for s in manifest["splits"].values()) == len(rows)


def test_max_docs_takes_a_slice(tmp_path):
    manifest, _ = run_prepare(tmp_path, EMBEDDED_CORPUS, max_docs=100, val_fraction=0.1, seq_len=64)
    assert manifest["source"]["max_docs"] == 100
    assert sum(s["documents"] for s in manifest["splits"].values()) == 100


def test_verify_catches_a_tampered_id_list(tmp_path):
    _, out = run_prepare(tmp_path, write_jsonl(tmp_path / "corpus.jsonl", corpus_rows()))
    ids = pq.read_table(out / DOC_IDS).to_pylist()
    train_id = next(r["id"] for r in ids if r["split"] == "train")
    pq.write_table(pa.Table.from_pylist(ids + [{"id": train_id, "split": "validation"}]), out / DOC_IDS)
    with pytest.raises(EduGPTError, match="both train and validation"):
        verify(out)
    pq.write_table(pa.Table.from_pylist(ids[1:]), out / DOC_IDS)
    with pytest.raises(EduGPTError, match="manifest says"):
        verify(out)
    moved = [dict(r, split="validation") if r["id"] == train_id else r for r in ids]
    pq.write_table(pa.Table.from_pylist(moved), out / DOC_IDS)
    with pytest.raises(EduGPTError, match="in a split their hash does not give"):
        verify(out)


def test_only_leftovers_a_record_proves_ours_are_deleted(tmp_path, caplog):
    """A killed run's `.NAME.tmp` (made by make_dir, which records its identity in it) is removed by the next run
    holding the output's lock; folders merely named like leftovers (`.NAME.old`, a `.NAME.tmp` someone made, or ours
    moved elsewhere and replaced) are left alone, and one in the way is refused in one line; other names are never
    touched."""
    make_dir(tmp_path / ".out.tmp")
    (tmp_path / ".out.tmp" / "dataset" / "train").mkdir(parents=True)
    (tmp_path / ".out.tmp-12345" / "train").mkdir(parents=True)
    (tmp_path / ".out.tmp-12345" / "train" / "mine.arrow").write_text("someone's")
    (tmp_path / ".out.old").mkdir()
    (tmp_path / ".out.tmpfile-of-someone").write_text("not ours")
    run_prepare(tmp_path, EMBEDDED_CORPUS, max_docs=60, val_fraction=0.2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", ".out.old", ".out.tmp-12345",
                                                          ".out.tmpfile-of-someone", "cache", "out"]
    assert (tmp_path / ".out.tmp-12345" / "train" / "mine.arrow").read_text() == "someone's"
    assert "left" in caplog.text and ".out.old alone" in caplog.text and ".out.tmp-12345" not in caplog.text

    # A `.out.tmp` whose record names another folder (ours, renamed, and a new one made in its place): not ours.
    make_dir(tmp_path / ".other.tmp")
    (tmp_path / ".other.tmp").rename(tmp_path / "moved")
    (tmp_path / ".other.tmp").mkdir()
    (tmp_path / "moved" / MADE).rename(tmp_path / ".other.tmp" / MADE)
    (tmp_path / ".other.tmp" / "keep.txt").write_text("mine")
    with pytest.raises(EduGPTError, match=r"\.other\.tmp' is in the way and nothing records that prepare_data.py "
                                          "made it"):
        run_prepare(tmp_path, EMBEDDED_CORPUS, name="other", max_docs=60, val_fraction=0.2)
    assert (tmp_path / ".other.tmp" / "keep.txt").read_text() == "mine" and not (tmp_path / "other").exists()


# ------------------------------------------------------------------------------------------------------ bad input

def assert_refused(tmp_path, match, dataset, name="out", **kwargs):
    with pytest.raises(EduGPTError, match=match):
        run_prepare(tmp_path, dataset, name=name, **kwargs)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{name}") and p.name != f".{name}.lock"]
    assert not leftovers, f"partial output left behind: {leftovers}"


def test_missing_path(tmp_path):
    assert_refused(tmp_path, "does not exist", tmp_path / "missing.jsonl")
    assert not (tmp_path / "out").exists()


def test_unsupported_file_type(tmp_path):
    (tmp_path / "corpus.csv").write_text("text\nhello\n")
    assert_refused(tmp_path, "unsupported file type '.csv'", tmp_path / "corpus.csv")
    (tmp_path / "empty_dir").mkdir()
    assert_refused(tmp_path, "no .parquet or .jsonl files", tmp_path / "empty_dir")


def test_missing_text_column_names_the_columns(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", [{"id": "a", "content": "hello", "url": "x"}])
    assert_refused(tmp_path, r"no 'text' column \(columns: id, content, url\)", path)


@pytest.mark.parametrize(("line", "says"), [(b"null", "is a JSON null, not an object"),
                                            (b'["a", "list"]', "is a JSON list, not an object"),
                                            (b"  42 ", "is a JSON int, not an object")])
def test_a_jsonl_line_that_is_not_an_object_is_refused_by_file_and_line(tmp_path, line, says):
    """`datasets` 5.2 reads a `null` line after good rows as one more (empty) row, and segfaults on a file that starts
    with `null`: a line that is not an object is refused, naming its line, before `datasets` reads the file."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"id": "a", "text": "A document."}\n\n' + line + b'\n{"id": "b", "text": "More."}\n')
    assert_refused(tmp_path, f"c.jsonl:3 {says}", path)


def test_a_dangling_symlink_among_the_input_files_is_refused_naming_it(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "part-00.jsonl", corpus_rows(20, 0))
    (folder / "part-01.jsonl").symlink_to(tmp_path / "gone.jsonl")
    assert_refused(tmp_path, r"part-01.jsonl' is a symbolic link to .*gone.jsonl', which does not exist", folder)


def _damaged_copy(tmp_path, name, damage):
    from edugpt.corpus.synthetic import write_prepared

    rng = np.random.default_rng(0)
    root = write_prepared(tmp_path / name, {"train": rng.integers(0, 50257, (6, 16), dtype=np.uint16),
                                            "validation": rng.integers(0, 50257, (2, 16), dtype=np.uint16)})
    damage(root)
    return root


def _cut_arrow(root):
    arrow = next((root / "train").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:arrow.stat().st_size // 2])


@pytest.mark.parametrize(("damage", "named"), [
    (lambda root: (root / "train" / "state.json").write_bytes(b""), "train/state.json is not valid JSON"),
    (lambda root: (root / "dataset_dict.json").write_text('{"splits": "train"}'), "dataset_dict.json is not the one"),
    (lambda root: (root / "validation" / "dataset_info.json").write_text("[1]"), "validation/dataset_info.json is not"),
    (_cut_arrow, r"train/data-00000.arrow cannot be read"),
], ids=["state_json_empty", "dataset_dict_wrong_type", "dataset_info_a_list", "arrow_cut_short"])
def test_a_damaged_file_of_a_prepared_dataset_is_named_by_verify_and_by_training(tmp_path, damage, named):
    from transformers import GPT2Config

    from edugpt.train.pretrain import load_prepared

    root = _damaged_copy(tmp_path, "data", damage)
    with pytest.raises(EduGPTError, match=f"failed verification: {named}"):
        verify(root)
    with pytest.raises(EduGPTError, match=f"the prepared dataset '{root}' is damaged \\({named}.*--verify {root}"):
        load_prepared(root, GPT2Config(n_positions=16))


@pytest.mark.parametrize(("key", "value", "says"), [("seq_len", "16", 'seq_len is "16", not an integer >= 2'),
                                                    ("files", {"train/state.json": "big"}, "files is"),
                                                    ("content", {"train": 5}, "content.train is 5, not an object")])
def test_a_manifest_value_of_another_type_is_one_line_naming_the_key(tmp_path, key, value, says):
    root = _damaged_copy(tmp_path, "data", lambda root: (root / MANIFEST).write_text(json.dumps(
        {**json.loads((root / MANIFEST).read_text()), key: value})))
    with pytest.raises(EduGPTError, match=f"failed verification: manifest.json: {says}"):
        verify(root)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_val_fraction_outside_open_interval(tmp_path, fraction):
    with pytest.raises(EduGPTError, match="--val_fraction must be between 0 and 1"):
        PrepareDataArguments(dataset="embedded", output_dir=str(tmp_path / "out"), val_fraction=fraction)


def test_non_empty_output_dir_needs_overwrite(tmp_path):
    first, out = run_prepare(tmp_path, EMBEDDED_CORPUS, max_docs=50, val_fraction=0.2)
    assert_refused(tmp_path, r"exists and is not empty \(a prepared dataset\); pass --overwrite", EMBEDDED_CORPUS,
                   max_docs=60)
    assert json.loads((out / MANIFEST).read_text()) == first
    second, _ = run_prepare(tmp_path, EMBEDDED_CORPUS, max_docs=60, overwrite=True, val_fraction=0.2)
    assert second["splits"] != first["splits"] and verify(out)["splits"] == second["splits"]


def test_split_with_zero_blocks_names_the_split(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", corpus_rows(n=20, duplicates=0))
    assert_refused(tmp_path, "the validation split would have 0 blocks .* raise --val_fraction", path,
                   val_fraction=0.01)
    assert_refused(tmp_path, "the train split would have 0 blocks", path, seq_len=100_000)
    assert not (tmp_path / "out").exists()


def test_incompatible_tokenizer(tmp_path, gpt2_tokenizer):
    import copy

    bigger = copy.deepcopy(gpt2_tokenizer)
    bigger.add_tokens(["<|new_token|>"])
    bigger.save_pretrained(tmp_path / "tok")
    assert_refused(tmp_path, "has 50258 tokens but the model's vocabulary is 50257", EMBEDDED_CORPUS,
                   tokenizer=str(tmp_path / "tok"))


def test_hf_tokenizer_path_gives_the_same_blocks(tmp_path, gpt2_tokenizer):
    gpt2_tokenizer.save_pretrained(tmp_path / "tok")
    a, out_a = run_prepare(tmp_path, EMBEDDED_CORPUS, name="a", max_docs=40)
    b, out_b = run_prepare(tmp_path, EMBEDDED_CORPUS, name="b", max_docs=40, tokenizer=str(tmp_path / "tok"))
    assert b["tokenizer"]["backend"] == "transformers" and a["splits"] == b["splits"]
    blocks_a, blocks_b = load_split_blocks(out_a), load_split_blocks(out_b)
    assert all(np.array_equal(blocks_a[split], blocks_b[split]) for split in blocks_a)


def test_hub_dataset_fails_fast_offline(tmp_path, monkeypatch):
    import datasets

    def no_loading(*args, **kwargs):
        raise AssertionError("offline, nothing may be loaded (datasets would retry the Hub)")

    monkeypatch.setattr(datasets, "load_dataset", no_loading)
    assert_refused(tmp_path, "Hub is unreachable", "HuggingFaceFW/fineweb-edu", subset="sample-100BT")


def test_streamed_source_tokenizes_like_the_cached_map(tmp_path):
    """The Hub's big subsets arrive as an IterableDataset; the same local file streamed must give identical rows."""
    import datasets

    from edugpt.corpus.local import tokenized_batches
    from edugpt.corpus.sources import require_text_column

    path = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows() + [{"id": "n", "text": None}])
    args = PrepareDataArguments(dataset=str(path), output_dir=str(tmp_path / "out"), val_fraction=0.2, num_proc=1)
    tables = {}
    for streaming in (False, True):
        raw = datasets.load_dataset("json", data_files=str(path), split="train", streaming=streaming,
                                    cache_dir=str(tmp_path / "cache"))
        assert isinstance(raw, datasets.IterableDataset) == streaming
        has_id = require_text_column(raw, None)
        tables[streaming] = pa.concat_tables(list(tokenized_batches(raw, has_id=has_id, args=args)))
    assert tables[True].num_rows == 71
    assert tables[True].to_pylist() == tables[False].to_pylist()

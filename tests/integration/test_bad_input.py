"""Every entry point x a corpus of bad inputs: each is one `error:` line, exit status 2, no traceback, and nothing the
case touched changes (a new output stays absent).

The corpus (tests/bad_inputs.py): non-UTF-8 bytes, truncated and garbage files of each kind the project reads (jsonl,
parquet, manifest.json, run_config.json, metrics.jsonl, edugpt-complete.json markers, model.safetensors,
config.json, the swap journal, datatrove's plan.json, HellaSwag jsonl, YAML recipes), wrong types in YAML, folders
and symlinks (dangling, or to a file outside) where files go, a read-only output parent (a read-only bind mount: as
root, chmod stops nothing) and a full disk (a small tmpfs). Where a mount is not permitted the case is skipped and
says why.

Entry points run in this process through `edugpt.config.cli.run`, as their `__main__` guard runs them; an exception that
escapes it is what would have killed the script with a traceback, and counts as one. The `slow` cases train, spawn
datatrove workers, or run the scripts as subprocesses to check the real stderr.

A case whose bad input is allowed by design is not here: a torn last line of metrics.jsonl (a killed run leaves one;
skipped), an unreadable checkpoint found while resuming (set aside, the previous one is used), an unreadable
lm-eval results file found by searching near a run (not that card's problem).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import (
    GARBAGE,
    NON_UTF8,
    call_in_process,
    call_subprocess,
    corrupt,
    fill,
    jsonl,
    read_only,
    small_disk,
    snapshot,
    tree_changes,
)
from factories import ROOT, TINY, make_run_dir

MOUNT_SKIP = "mounting is not permitted in this sandbox (a read-only bind mount or a tmpfs needs it; as root, chmod " \
             "does not stop writes)"
HELLASWAG = ROOT / "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"
SFT_SMOKE = ROOT / "edugpt/assets/finetune/sft_smoke/train.jsonl"
DPO_SMOKE = ROOT / "edugpt/assets/finetune/dpo_smoke/train.jsonl"


# --- valid surroundings -------------------------------------------------------------------------------------------------

@cache
def corpus_rows() -> list[dict]:
    """40 documents of the embedded corpus (FineWeb-Edu's schema)."""
    import pyarrow.parquet as pq

    from edugpt.corpus.sources import EMBEDDED_CORPUS

    return pq.read_table(EMBEDDED_CORPUS, columns=["id", "text"]).slice(0, 40).to_pylist()


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@cache
def parquet_bytes() -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(corpus_rows()), buffer)
    return buffer.getvalue()


def write_dataset(path: Path) -> Path:
    """A small prepared dataset (prepare_data.py's own writer): 24 train and 4 validation blocks of 64 tokens."""
    from edugpt.corpus.synthetic import write_prepared

    rng = np.random.default_rng(0)
    return write_prepared(path, {"train": rng.integers(0, 50257, (24, 64), dtype=np.uint16),
                                 "validation": rng.integers(0, 50257, (4, 64), dtype=np.uint16)})


def copy_model(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def plan_for(dataset: Path, out: Path, tasks: int = 2) -> dict:
    """The plan.json a `--executor local --tasks N` run of `dataset` writes."""
    from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
    from edugpt.corpus.datatrove_work import make_plan
    from edugpt.corpus.sources import resolve_source

    args = PrepareDataArguments(dataset=str(dataset), output_dir=str(out), seq_len=64, val_fraction=0.1, num_proc=1)
    source = resolve_source(str(dataset))
    plan = make_plan(args, ExecutorArguments(executor="local", tasks=tasks, workers=1), source)
    plan.update(executor="local", output_dir=str(out), overwrite=False)
    return plan


# --- one case -------------------------------------------------------------------------------------------------------------

class Context:
    """A case's world: `root` is snapshotted before and after (inputs, outputs, `outside` targets of symlinks);
    `cache` (the datasets cache) lies outside it."""

    def __init__(self, tmp_path: Path, request):
        self.root = tmp_path / "case"
        self.root.mkdir()
        self.outside = self.root / "outside"
        self.cache = tmp_path / "cache"
        self.request = request
        self.tolerated: set[str] = set()
        self.mounts = contextlib.ExitStack()

    def fixture(self, name: str):
        return self.request.getfixturevalue(name)

    def file(self, rel: str, data: bytes) -> Path:
        path = self.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def bad(self, rel: str, variant: str, valid: bytes | None = None) -> Path:
        """The bad input `variant` at root/rel; bytes (not a variant name) are written as they are."""
        path = self.root / rel
        if isinstance(variant, bytes):
            return self.file(rel, variant)
        corrupt(path, variant, valid, self.outside)
        return path

    def read_only(self, rel: str) -> Path:
        path = self.root / rel
        path.mkdir(parents=True, exist_ok=True)
        if not self.mounts.enter_context(read_only(path)):
            pytest.skip(MOUNT_SKIP)
        return path

    def full_disk(self, rel: str, size: int = 4 << 20, leave: int | None = 64 << 10) -> Path:
        """A small tmpfs at root/rel, filled until `leave` bytes are free (None: not filled yet)."""
        path = self.root / rel
        if not self.mounts.enter_context(small_disk(path, size)):
            pytest.skip(MOUNT_SKIP)
        if leave is not None:
            fill(path, leave)
        return path

    # prepare_data.py keeps its lock file `.NAME.lock` beside the output (documented: lock files are never deleted)
    def prepare_out(self, rel: str = "out") -> Path:
        out = self.root / rel
        self.tolerated.add((Path(rel).parent / f".{out.name}.lock").as_posix().removeprefix("./"))
        return out


@dataclass
class Case:
    entry: str
    name: str
    build: Callable[[Context], list[str]]
    slow: bool = False
    in_process: bool = True  # False: a case that may crash the interpreter itself runs only as a subprocess

    @property
    def id(self) -> str:
        return f"{self.entry}-{self.name}"


CASES: list[Case] = []


def case(entry: str, name: str, slow: bool = False, in_process: bool = True):
    def register(build):
        CASES.append(Case(entry, name, build, slow, in_process))
        return build
    return register


def cases(entry: str, names, slow: bool = False):
    """Register `build(ctx, name)` once per name."""
    def register(build):
        for name in names:
            CASES.append(Case(entry, name, lambda ctx, name=name: build(ctx, name), slow))
        return build
    return register


BAD_TEXT = ("non_utf8", "garbage", "empty", "truncated", "dir", "dangling_symlink")
BAD_JSON = ("non_utf8", "garbage", "truncated", "empty", "json_list", "json_string", "json_null", "dir",
            "dangling_symlink")


# ====================================================================================================== prepare_data.py

def prepare_args(ctx: Context, dataset, *extra, out: Path | None = None) -> list[str]:
    out = out or ctx.prepare_out()
    return ["--dataset", str(dataset), "--output_dir", str(out), "--seq_len", "64", "--val_fraction", "0.1",
            "--num_proc", "1", "--cache_dir", str(ctx.cache), *extra]


EMBEDDED = ("embedded", "--max_docs", "40")  # a good input, for the cases about the output side


@cases("prepare", [f"jsonl_{v}" for v in BAD_TEXT + ("json_list", "json_string", "row_is_a_list")])
def _(ctx, name):
    variant = name.removeprefix("jsonl_")
    valid = jsonl(corpus_rows())
    if variant == "row_is_a_list":
        variant = valid + b'["a", "row", "that is a list"]\n'
    return prepare_args(ctx, ctx.bad("corpus.jsonl", variant, valid))


@cases("prepare", [f"parquet_{v}" for v in BAD_TEXT + ("jsonl_renamed", "text_not_a_string")])
def _(ctx, name):
    variant = name.removeprefix("parquet_")
    if variant == "jsonl_renamed":
        variant = jsonl(corpus_rows())
    elif variant == "text_not_a_string":  # every row skipped: nothing to pack
        return prepare_args(ctx, write_parquet(ctx.root / "corpus.parquet", [{"id": "a", "text": 5}] * 40))
    return prepare_args(ctx, ctx.bad("corpus.parquet", variant, parquet_bytes()))


RECIPE_BAD = {
    "non_utf8": NON_UTF8, "garbage": GARBAGE, "empty": b"", "broken_yaml": b"seq_len: [64,\nval_fraction: 0.1\n",
    "top_level_list": b"- seq_len\n- 64\n", "seq_len_string": b"seq_len: many\n", "seq_len_list": b"seq_len: [64]\n",
    "seq_len_float": b"seq_len: 6.5\n", "val_fraction_mapping": b"val_fraction: {a: 1}\n",
    "overwrite_string": b"overwrite: maybe\n", "max_docs_list": b"max_docs: [1, 2]\n", "tasks_string": b"tasks: two\n",
"seq_len_negative": b"seq_len: -64\n",
    "val_fraction_above_one": b"val_fraction: 1.5\n", "unknown_key": b"seq_lenn: 64\n",
}


@cases("prepare", [f"yaml_{k}" for k in RECIPE_BAD] + ["yaml_dir", "yaml_dangling_symlink"])
def _(ctx, name):
    key = name.removeprefix("yaml_")
    recipe = ctx.bad("recipe.yaml", RECIPE_BAD.get(key, key))
    return ["--config", str(recipe), "--output_dir", str(ctx.prepare_out()), "--dataset", "embedded",
            "--cache_dir", str(ctx.cache)]


# `datasets`' JSON loader segfaults on a jsonl file holding `null` (datasets 5.2): only ever as a subprocess.
@case("prepare", "jsonl_null", slow=True, in_process=False)
def _(ctx):
    return prepare_args(ctx, ctx.file("corpus.jsonl", b"null"))


@case("sft", "data_null", slow=True, in_process=False)
def _(ctx):
    return finetune_args(ctx, "sft", data=ctx.file("data/train.jsonl", b"null"))


@case("prepare", "output_dir_is_a_file")
def _(ctx):
    return prepare_args(ctx, *EMBEDDED, out=ctx.file("out", b"a user's file\n"))


@case("prepare", "output_dir_dangling_symlink")
def _(ctx):
    out = ctx.prepare_out()
    out.symlink_to(ctx.outside / "nowhere")
    return prepare_args(ctx, *EMBEDDED, out=out)


@case("prepare", "output_dir_symlink_to_a_folder_outside")
def _(ctx):
    out = ctx.prepare_out()
    (ctx.outside / "real").mkdir(parents=True)
    out.symlink_to(ctx.outside / "real")
    return prepare_args(ctx, *EMBEDDED, out=out)


@case("prepare", "output_parent_is_a_file")
def _(ctx):
    ctx.file("parent", b"x")
    return prepare_args(ctx, *EMBEDDED, out=ctx.root / "parent" / "out")


@cases("prepare", [f"overwrite_manifest_{v}" for v in ("garbage", "non_utf8", "json_list", "dir", "symlink_outside")])
def _(ctx, name):
    """--overwrite of a folder whose manifest.json is damaged: not provably ours, so never replaced."""
    out = write_dataset(ctx.prepare_out())
    valid = (out / "manifest.json").read_bytes()
    corrupt(out / "manifest.json", name.removeprefix("overwrite_manifest_"), valid, ctx.outside)
    return prepare_args(ctx, *EMBEDDED, "--overwrite", out=out)


JOURNAL_BAD = ("non_utf8", "garbage", "truncated", "empty", "json_list", "json_null", "dir", "dangling_symlink",
               "symlink_outside", "wrong_types", "names_other_folders")


def journal_case(ctx, variant: str, out: Path) -> None:
    """A swap journal `.out.swap.json` beside the output, damaged; a user's folders where it points."""
    valid = json.dumps({"new": str(out.parent / f".{out.name}.tmp"), "out": str(out),
                        "old": str(out.parent / f".{out.name}.old")}).encode()
    if variant == "wrong_types":
        variant = b'{"new": 5, "out": ["x"], "old": {"a": null}}\n'
    elif variant == "names_other_folders":
        (ctx.root / "mine").mkdir()
        (ctx.root / "mine" / "thesis.txt").write_text("a user's work\n")
        variant = json.dumps({"new": str(ctx.root / "mine"), "out": str(out), "old": str(ctx.root / "mine")}).encode()
    ctx.bad(f".{out.name}.swap.json", variant, valid)


@cases("prepare", [f"swap_journal_{v}" for v in JOURNAL_BAD])
def _(ctx, name):
    out = ctx.prepare_out()
    journal_case(ctx, name.removeprefix("swap_journal_"), out)
    return prepare_args(ctx, *EMBEDDED, out=out)


@cases("prepare", [f"lock_{v}" for v in ("dir", "dangling_symlink", "symlink_outside")])
def _(ctx, name):
    """Locks never follow a symlink (nor open a folder)."""
    out = ctx.root / "out"
    ctx.bad(".out.lock", name.removeprefix("lock_"), b'{"pid": 1}\n')
    return prepare_args(ctx, *EMBEDDED, out=out)


@case("prepare", "cache_dir_is_a_file")
def _(ctx):
    argv = prepare_args(ctx, ctx.file("corpus.jsonl", jsonl(corpus_rows())))
    argv[argv.index("--cache_dir") + 1] = str(ctx.file("cache", b"a file\n"))
    return argv


@case("prepare", "read_only_output_parent")
def _(ctx):
    ro = ctx.read_only("ro")
    return prepare_args(ctx, *EMBEDDED, out=ro / "out")


@case("prepare", "full_disk")
def _(ctx):
    disk = ctx.full_disk("disk")
    ctx.tolerated.add("disk/.out.lock")
    return prepare_args(ctx, *EMBEDDED, out=disk / "out")


# ---------------------------------------------------------------------------------- prepare_data.py --executor local

LOCAL = ("--executor", "local", "--tasks", "2", "--workers", "1")


def corpus_folder(ctx) -> Path:
    folder = ctx.root / "corpus"
    rows = corpus_rows()
    write_parquet(folder / "part-00.parquet", rows[:20])
    write_parquet(folder / "part-01.parquet", rows[20:])
    return folder


@cases("prepare_local", [f"parquet_{v}" for v in ("garbage", "truncated", "empty", "non_utf8", "dangling_symlink",
                                                   "jsonl_renamed", "no_text_column")], slow=True)
def _(ctx, name):
    folder = corpus_folder(ctx)
    variant = name.removeprefix("parquet_")
    if variant == "jsonl_renamed":
        variant = jsonl(corpus_rows())
    elif variant == "no_text_column":
        write_parquet(folder / "part-01.parquet", [{"id": "a", "body": "x"}])
        return prepare_args(ctx, folder, *LOCAL)
    ctx.bad("corpus/part-01.parquet", variant, (folder / "part-01.parquet").read_bytes())
    return prepare_args(ctx, folder, *LOCAL)


@case("prepare_local", "jsonl_input", slow=True)
def _(ctx):
    return prepare_args(ctx, ctx.file("corpus.jsonl", jsonl(corpus_rows())), *LOCAL)


PLAN_BAD = ("non_utf8", "garbage", "truncated", "empty", "json_list", "json_null", "dir", "dangling_symlink",
            "symlink_outside", "wrong_types", "missing_keys", "files_not_a_list")


@cases("prepare_local", [f"plan_{v}" for v in PLAN_BAD], slow=True)
def _(ctx, name):
    """A resumable work dir (plan.json + dataset/) whose plan is damaged: refused, the work dir left as it is."""
    folder = corpus_folder(ctx)
    out = ctx.prepare_out()
    work = ctx.root / ".out.prepare"
    for sub in ("dataset/train", "dataset/validation", "tasks", "doc_ids", "tmp"):
        (work / sub).mkdir(parents=True)
    plan = plan_for(folder, out)
    valid = json.dumps(plan, indent=2).encode()
    variant = name.removeprefix("plan_")
    if variant == "wrong_types":
        variant = json.dumps({**plan, "settings": "x", "tasks": "two", "files": 5}).encode()
    elif variant == "missing_keys":
        variant = json.dumps({"format": plan["format"]}).encode()
    elif variant == "files_not_a_list":
        variant = json.dumps({**plan, "files": {"path": "x"}}).encode()
    ctx.bad(".out.prepare/plan.json", variant, valid)
    return prepare_args(ctx, folder, *LOCAL, out=out)


@case("prepare_local", "work_dir_is_a_file", slow=True)
def _(ctx):
    ctx.file(".out.prepare", b"a user's file\n")
    return prepare_args(ctx, corpus_folder(ctx), *LOCAL)


@cases("prepare_local", [f"swap_journal_{v}" for v in ("garbage", "non_utf8", "json_list", "wrong_types", "dir",
                                                        "symlink_outside", "names_other_folders")], slow=True)
def _(ctx, name):
    out = ctx.prepare_out()
    journal_case(ctx, name.removeprefix("swap_journal_"), out)
    return prepare_args(ctx, corpus_folder(ctx), *LOCAL, out=out)


@case("prepare_local", "lock_symlink_outside", slow=True)
def _(ctx):
    ctx.bad(".out.lock", "symlink_outside", b'{"pid": 1}\n')
    return prepare_args(ctx, corpus_folder(ctx), *LOCAL, out=ctx.root / "out")


@case("prepare_local", "read_only_output_parent", slow=True)
def _(ctx):
    folder = corpus_folder(ctx)
    return prepare_args(ctx, folder, *LOCAL, out=ctx.read_only("ro") / "out")


@case("prepare_local", "full_disk", slow=True)
def _(ctx):
    folder = corpus_folder(ctx)
    disk = ctx.full_disk("disk")
    # The finished tasks are kept for the same command to resume (README: "Resume"): only the output must not appear.
    ctx.tolerated |= {"disk/.out.lock", "disk/.out.prepare/**"}
    return prepare_args(ctx, folder, *LOCAL, out=disk / "out")


# ------------------------------------------------------------------------------------------- prepare_data.py --verify

def verify_case(ctx, rel: str, variant, *, remove: bool = False) -> list[str]:
    data = write_dataset(ctx.root / "data")
    path = data / rel
    if remove:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    else:
        valid = path.read_bytes() if path.is_file() else None
        if isinstance(variant, bytes):
            path.write_bytes(variant)
        elif callable(variant):
            path.write_bytes(json.dumps(variant(json.loads(path.read_text()))).encode())
        else:
            corrupt(path, variant, valid, ctx.outside)
    return ["--verify", str(data)]


def _set(keys: str, value):
    """A manifest edit: set the dotted key `keys` to `value`."""
    def edit(manifest):
        *parents, last = keys.split(".")
        node = manifest
        for key in parents:
            node = node[key]
        node[last] = value
        return manifest
    return edit


MANIFEST_EDITS = {
    "seq_len_string": _set("seq_len", "64"), "seq_len_null": _set("seq_len", None), "seq_len_zero": _set("seq_len", 0),
    "splits_string": _set("splits", "x"), "train_counts_string": _set("splits.train", "x"),
    "documents_string": _set("splits.train.documents", "many"), "blocks_float": _set("splits.train.blocks", 2.5),
    "val_fraction_string": _set("split_rule.val_fraction", "x"), "salt_number": _set("split_rule.salt", 5),
    "vocab_size_string": _set("tokenizer.vocab_size", "big"), "content_string": _set("content", "x"),
    "content_train_number": _set("content.train", 5), "format_other": _set("format", "something-else"),
}


@cases("verify", [f"manifest_{v}" for v in BAD_JSON] + [f"manifest_{k}" for k in MANIFEST_EDITS]
       + ["manifest_missing"])
def _(ctx, name):
    variant = name.removeprefix("manifest_")
    return verify_case(ctx, "manifest.json", MANIFEST_EDITS.get(variant, variant), remove=variant == "missing")


@cases("verify", [f"doc_ids_{v}" for v in ("garbage", "truncated", "empty", "non_utf8", "dir", "dangling_symlink",
                                           "missing", "id_not_a_string", "no_split_column", "unknown_split")])
def _(ctx, name):
    variant = name.removeprefix("doc_ids_")
    if variant in ("id_not_a_string", "no_split_column", "unknown_split"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = {"id_not_a_string": {"id": [1, 2], "split": ["train", "validation"]},
                 "no_split_column": {"id": ["doc-0", "doc-1"]},
                 "unknown_split": {"id": ["doc-0", "doc-1"], "split": ["test", "train"]}}[variant]
        data = write_dataset(ctx.root / "data")
        pq.write_table(pa.table(table), data / "doc_ids.parquet")
        return ["--verify", str(data)]
    return verify_case(ctx, "doc_ids.parquet", variant, remove=variant == "missing")


@cases("verify", [f"state_json_{v}" for v in ("garbage", "non_utf8", "json_list", "empty", "dir", "no_data_files",
                                              "data_files_wrong_type", "names_a_missing_file")])
def _(ctx, name):
    variant = name.removeprefix("state_json_")
    edits = {"no_data_files": lambda s: {k: v for k, v in s.items() if k != "_data_files"},
             "data_files_wrong_type": _set("_data_files", "x"),
             "names_a_missing_file": _set("_data_files", [{"filename": "data-99999-of-99999.arrow"}])}
    return verify_case(ctx, "train/state.json", edits.get(variant, variant))


@cases("verify", [f"arrow_{v}" for v in ("truncated", "garbage", "empty", "dir", "dangling_symlink")])
def _(ctx, name):
    data = write_dataset(ctx.root / "data")
    arrow = next((data / "train").glob("*.arrow")).relative_to(data).as_posix()
    return verify_case_at(ctx, data, arrow, name.removeprefix("arrow_"))


def verify_case_at(ctx, data: Path, rel: str, variant: str) -> list[str]:
    path = data / rel
    corrupt(path, variant, path.read_bytes() if path.is_file() else None, ctx.outside)
    return ["--verify", str(data)]


VERIFY_FILES_BAD = {
    "dataset_dict_garbage": ("dataset_dict.json", "garbage"), "dataset_dict_non_utf8": ("dataset_dict.json", "non_utf8"),
    "dataset_dict_json_list": ("dataset_dict.json", "json_list"), "dataset_dict_dir": ("dataset_dict.json", "dir"),
    "dataset_info_garbage": ("train/dataset_info.json", "garbage"),
    "dataset_info_json_list": ("train/dataset_info.json", "json_list"),
}


@cases("verify", list(VERIFY_FILES_BAD) + ["train_split_missing"])
def _(ctx, name):
    if name == "train_split_missing":
        return verify_case(ctx, "train", None, remove=True)
    return verify_case(ctx, *VERIFY_FILES_BAD[name])


@cases("verify", ["target_missing", "target_is_a_file", "target_dangling_symlink", "target_empty_folder"])
def _(ctx, name):
    target = ctx.root / "data"
    if name == "target_is_a_file":
        target.write_bytes(b"x")
    elif name == "target_dangling_symlink":
        target.symlink_to(ctx.outside / "nowhere")
    elif name == "target_empty_folder":
        target.mkdir()
    return ["--verify", str(target)]


# =========================================================================================================== train_hf.py

def train_args(data: Path, out: Path, *extra) -> list[str]:
    return [*TINY, "--dataset_dir", str(data), "--output_dir", str(out), "--max_steps", "2", "--save_steps", "2",
            "--eval_steps", "2", "--sample_steps", "2", *extra]


@cases("train", [f"dataset_manifest_{v}" for v in ("non_utf8", "garbage", "json_list", "dir", "dangling_symlink")]
       + [f"dataset_manifest_{k}" for k in ("seq_len_string", "seq_len_null", "splits_string", "vocab_size_string")])
def _(ctx, name):
    data = write_dataset(ctx.root / "data")
    variant = name.removeprefix("dataset_manifest_")
    if variant in MANIFEST_EDITS:
        (data / "manifest.json").write_text(json.dumps(MANIFEST_EDITS[variant](
            json.loads((data / "manifest.json").read_text()))))
    else:
        corrupt(data / "manifest.json", variant, None, ctx.outside)
    return train_args(data, ctx.root / "run")


TRAIN_DATA_BAD = {"dataset_arrow_truncated": ("ARROW", "truncated"), "dataset_arrow_garbage": ("ARROW", "garbage"),
                  "dataset_state_json_garbage": ("train/state.json", "garbage"),
                  "dataset_state_json_non_utf8": ("train/state.json", "non_utf8"),
                  "dataset_dict_json_garbage": ("dataset_dict.json", "garbage")}


@cases("train", list(TRAIN_DATA_BAD))
def _(ctx, name):
    data = write_dataset(ctx.root / "data")
    rel, variant = TRAIN_DATA_BAD[name]
    path = next((data / "train").glob("*.arrow")) if rel == "ARROW" else data / rel
    corrupt(path, variant, path.read_bytes(), ctx.outside)
    return train_args(data, ctx.root / "run")


TRAIN_RECIPE_BAD = {"non_utf8": NON_UTF8, "garbage": GARBAGE, "broken_yaml": b"n_layer: [2,\n",
                    "seed_string": b"seed: abc\n", "learning_rate_list": b"learning_rate: [0.001]\n",
                    "max_steps_mapping": b"max_steps: {a: 1}\n", "bf16_string": b"bf16: maybe\n",
                    "sample_prompts_mapping": b"sample_prompts: {a: 1}\n", "top_level_list": b"- 1\n"}


@cases("train", [f"yaml_{k}" for k in TRAIN_RECIPE_BAD])
def _(ctx, name):
    key = name.removeprefix("yaml_")
    body = TRAIN_RECIPE_BAD[key]
    if b": " in body:  # one wrong value in the smoke recipe (the last of a repeated key wins in YAML)
        body = (ROOT / "configs/smoke.yaml").read_bytes() + b"\n" + body
    recipe = ctx.file("recipe.yaml", body)
    argv = train_args(write_dataset(ctx.root / "data"), ctx.root / "run")
    argv[argv.index("--config") + 1] = str(recipe)  # TINY names configs/smoke.yaml
    return argv


def user_run_dir(ctx) -> Path:
    """An existing run directory as train_hf.py leaves it before its first checkpoint."""
    run = ctx.root / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 256, "loss": 10.0}\n')
    return run


def pretrain_run_config(run: Path) -> bytes:
    return json.dumps({"edugpt": {"kind": "pretrain", "version": 1}, "model": {"n_layer": 2}, "data": {},
                       "script": {}, "training": {"output_dir": str(run)}}).encode()


@cases("train", [f"run_config_{v}" for v in ("non_utf8", "garbage", "truncated", "json_list", "dir",
                                             "dangling_symlink", "symlink_outside", "kind_wrong_type")])
def _(ctx, name):
    run = user_run_dir(ctx)
    variant = name.removeprefix("run_config_")
    if variant == "kind_wrong_type":
        variant = json.dumps({"edugpt": {"kind": ["pretrain"]}, "training": "x", "script": 5}).encode()
    ctx.bad("run/run_config.json", variant, pretrain_run_config(run))
    return train_args(write_dataset(ctx.root / "data"), run)


@cases("train", [f"hellaswag_{v}" for v in ("non_utf8", "garbage", "truncated", "empty", "json_list", "dir",
                                            "dangling_symlink", "wrong_types")], slow=True)
def _(ctx, name):
    variant = name.removeprefix("hellaswag_")
    if variant == "wrong_types":
        variant = jsonl([{"ctx": 5, "endings": "not a list", "label": "first", "activity_label": None}] * 4)
    path = ctx.bad("hellaswag.jsonl", variant, HELLASWAG.read_bytes()[:4000])
    return train_args(write_dataset(ctx.root / "data"), ctx.root / "run", "--hellaswag_steps", "1",
                      "--hellaswag_limit", "4", "--hellaswag_file", str(path))


def baseline_args(ctx, out: Path, *extra: str) -> list[str]:
    """The baseline run's own command (conftest) into `out`: only what the case changes differs from its settings."""
    from factories import tiny_args

    hellaswag = ["--hellaswag_steps", "4", "--hellaswag_limit", "12", "--hellaswag_file",
                 "edugpt/assets/eval/python_docs_hellaswag_format_smoke.jsonl"]
    return tiny_args(ctx.fixture("data_dir"), out, *hellaswag, *extra)


def baseline_copy(ctx) -> Path:
    run = ctx.root / "run"
    shutil.copytree(ctx.fixture("baseline")[0], run, symlinks=True)
    return run


@cases("train", [f"resume_marker_{v}" for v in ("non_utf8", "garbage", "truncated", "json_list", "dir",
                                                "dangling_symlink", "symlink_outside", "files_wrong_type")]
       + ["resume_weights_truncated", "resume_weights_garbage", "resume_config_garbage", "resume_marker_missing"],
       slow=True)
def _(ctx, name):
    """--resume_from_checkpoint names a checkpoint that is not whole: refused (no fallback for an explicit one)."""
    run = baseline_copy(ctx)
    ckpt = run / "checkpoint-8"
    marker = ckpt / "edugpt-complete.json"
    valid = marker.read_bytes()
    if name.startswith("resume_marker_"):
        variant = name.removeprefix("resume_marker_")
        if variant == "missing":
            marker.unlink()
        else:
            if variant == "files_wrong_type":
                variant = json.dumps({"format": 1, "files": {"model.safetensors": "big", "config.json": [1]}}).encode()
            ctx.bad(marker.relative_to(ctx.root).as_posix(), variant, valid)
    else:
        target = ckpt / ("config.json" if "config" in name else "model.safetensors")
        corrupt(target, name.rsplit("_", 1)[-1], target.read_bytes(), ctx.outside)
    return baseline_args(ctx, ctx.root / "new", "--resume_from_checkpoint", str(ckpt))


@case("train", "read_only_output_parent", slow=True)
def _(ctx):
    data = write_dataset(ctx.root / "data")
    return train_args(data, ctx.read_only("ro") / "run")


@case("train", "full_disk", slow=True)
def _(ctx):
    data = write_dataset(ctx.root / "data")
    return train_args(data, ctx.full_disk("disk", leave=256 << 10) / "run")


# ================================================================================================= finetune/sft.py, dpo.py

@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with edugpt's chat template: a stand-in SFT output, for DPO."""
    from transformers import AutoTokenizer

    from edugpt.model.chat import add_chat_template

    path = copy_model(tiny_model_dir, tmp_path_factory.mktemp("chat-model") / "model")
    add_chat_template(AutoTokenizer.from_pretrained(path)).save_pretrained(path)
    return path


def finetune_args(ctx, stage: str, *extra: str, model: Path | None = None, data: Path | None = None) -> list[str]:
    model = model or copy_model(ctx.fixture("tiny_model_dir" if stage == "sft" else "chat_model_dir"),
                                ctx.root / "model")
    argv = ["--config", f"configs/{stage}_smoke.yaml", "--model_name_or_path", str(model),
            "--output_dir", str(ctx.root / stage), "--max_steps", "1"]
    if data is not None:
        argv += ["--dataset_name", str(data)]
    return argv + list(extra)


MODEL_BAD = {
    "config_garbage": ("config.json", "garbage"), "config_non_utf8": ("config.json", "non_utf8"),
    "config_json_list": ("config.json", "json_list"), "config_empty": ("config.json", "empty"),
    "config_dir": ("config.json", "dir"), "config_dangling_symlink": ("config.json", "dangling_symlink"),
    "config_wrong_types": ("config.json", b'{"model_type": "gpt2", "n_layer": "two", "n_embd": [32]}'),
    "weights_truncated": ("model.safetensors", "truncated"), "weights_garbage": ("model.safetensors", "garbage"),
    "weights_empty": ("model.safetensors", "empty"), "weights_dir": ("model.safetensors", "dir"),
    "tokenizer_garbage": ("tokenizer.json", "garbage"), "tokenizer_truncated": ("tokenizer.json", "truncated"),
    "tokenizer_config_json_list": ("tokenizer_config.json", "json_list"),
}


def bad_model(ctx, name: str, source: str = "tiny_model_dir") -> Path:
    model = copy_model(ctx.fixture(source), ctx.root / "model")
    rel, variant = MODEL_BAD[name]
    path = model / rel
    valid = path.read_bytes() if path.is_file() else b"{}"
    if isinstance(variant, bytes):
        path.write_bytes(variant)
    else:
        corrupt(path, variant, valid, ctx.outside)
    return model


SFT_ROWS_BAD = {
    "messages_string": {"messages": "hello"}, "messages_list_of_numbers": {"messages": [1, 2]},
    "role_number": {"messages": [{"role": 5, "content": None}]},
    "content_mapping": {"messages": [{"role": "user", "content": {"a": 1}}, {"role": "assistant", "content": "x"}]},
}
DPO_ROWS_BAD = {
    "chosen_number": {"prompt": [{"role": "user", "content": "hi"}], "chosen": 5, "rejected": "x"},
    "prompt_mapping": {"prompt": {"a": 1}, "chosen": [{"role": "assistant", "content": "a"}],
                       "rejected": [{"role": "assistant", "content": "b"}]},
}


FINETUNE_MODEL_BAD = {"sft": ("config_garbage", "config_dir", "weights_truncated", "tokenizer_garbage",
                              "tokenizer_config_json_list"),
                      "dpo": ("config_garbage", "weights_truncated", "tokenizer_garbage")}
# TRL's parser and a model load cost about a second a case: the finetuning cases are slow ones.
for _stage, _rows, _smoke in (("sft", SFT_ROWS_BAD, SFT_SMOKE), ("dpo", DPO_ROWS_BAD, DPO_SMOKE)):
    @cases(_stage, [f"data_{v}" for v in BAD_TEXT + ("json_list",) + tuple(_rows)], slow=True)
    def _(ctx, name, stage=_stage, rows=_rows, smoke=_smoke):
        variant = name.removeprefix("data_")
        if variant in rows:
            variant = jsonl([rows[variant]] * 8)
        data = ctx.bad("data/train.jsonl", variant, smoke.read_bytes()[:3000])
        return finetune_args(ctx, stage, data=data)

    # The model folder is read by the same loader as eval_harness.py and chat (every MODEL_BAD case there).
    @cases(_stage, [f"model_{k}" for k in MODEL_BAD if k in FINETUNE_MODEL_BAD[_stage]], slow=True)
    def _(ctx, name, stage=_stage):
        model = bad_model(ctx, name.removeprefix("model_"), "tiny_model_dir" if stage == "sft" else "chat_model_dir")
        return finetune_args(ctx, stage, model=model)

    @cases(_stage, [f"yaml_{k}" for k in (("max_length_string", "learning_rate_list", "non_utf8", "packing_string")
                                          if _stage == "sft" else ("beta_mapping", "non_utf8"))], slow=True)
    def _(ctx, name, stage=_stage):
        recipe = {"max_length_string": "max_length: long\n", "learning_rate_list": "learning_rate: [0.001]\n",
                  "beta_mapping": "beta: {a: 1}\n", "packing_string": "packing: maybe\n"}
        smoke = (ROOT / f"configs/{stage}_smoke.yaml").read_bytes()
        key = name.removeprefix("yaml_")
        body = smoke + b"\n" + recipe[key].encode() if key in recipe else NON_UTF8
        path = ctx.file("recipe.yaml", body.replace(b"max_length: 128", b"") if key == "max_length_string" else body)
        argv = finetune_args(ctx, stage)
        argv[argv.index("--config") + 1] = str(path)
        return argv

    @cases(_stage, [f"run_config_{v}" for v in ("non_utf8", "garbage", "dir", "symlink_outside")],
           slow=True)
    def _(ctx, name, stage=_stage):
        out = ctx.root / stage
        out.mkdir()
        (out / "metrics.jsonl").write_text('{"step": 1, "tokens": 10, "loss": 5.0}\n')
        valid = json.dumps({"edugpt": {"kind": stage, "version": 1}, "script": stage, "training": {}}).encode()
        ctx.bad(f"{stage}/run_config.json", name.removeprefix("run_config_"), valid)
        return finetune_args(ctx, stage)


@cases("sft", ["chat_template_non_utf8", "chat_template_dir", "chat_template_dangling_symlink"], slow=True)
def _(ctx, name):
    path = ctx.bad("template.jinja", name.removeprefix("chat_template_"))
    return finetune_args(ctx, "sft", "--chat_template_path", str(path))


@case("sft", "read_only_output_parent", slow=True)
def _(ctx):
    argv = finetune_args(ctx, "sft")
    argv[argv.index("--output_dir") + 1] = str(ctx.read_only("ro") / "sft")
    return argv


# ========================================================================================================= eval_harness.py

def eval_args(ctx, *, model: Path | None = None, hellaswag: Path = HELLASWAG, out: Path | None = None) -> list[str]:
    model = model or copy_model(ctx.fixture("tiny_model_dir"), ctx.root / "model")
    return ["--model", str(model), "--tasks", "hellaswag", "--limit", "2", "--batch_size", "2", "--device", "cpu",
            "--hellaswag_file", str(hellaswag), "--output_dir", str(out or ctx.root / "eval")]


HELLASWAG_ROWS_BAD = {
    "wrong_types": {"ind": "x", "activity_label": 5, "ctx_a": None, "ctx_b": [], "ctx": 5, "endings": "abcd",
                    "label": "first", "split": "val", "split_type": "indomain", "source_id": 1},
    "missing_keys": {"ctx": "A sentence"}, "label_out_of_range": {
        "ind": 0, "activity_label": "a", "ctx_a": "b", "ctx_b": "", "ctx": "b", "endings": ["1", "2", "3", "4"],
        "label": "7", "split": "val", "split_type": "indomain", "source_id": "s"},
}


@cases("eval", [f"hellaswag_{v}" for v in BAD_TEXT + ("json_list", "symlink_outside_garbage") + tuple(HELLASWAG_ROWS_BAD)])
def _(ctx, name):
    variant = name.removeprefix("hellaswag_")
    if variant in HELLASWAG_ROWS_BAD:
        variant = jsonl([HELLASWAG_ROWS_BAD[variant]] * 4)
    elif variant == "symlink_outside_garbage":  # a link is fine for an input; what it points at is garbage
        path = ctx.file("outside/garbage.jsonl", GARBAGE)
        (ctx.root / "hellaswag.jsonl").symlink_to(path)
        return eval_args(ctx, hellaswag=ctx.root / "hellaswag.jsonl")
    return eval_args(ctx, hellaswag=ctx.bad("hellaswag.jsonl", variant, HELLASWAG.read_bytes()[:4000]))


@cases("eval", [f"model_{k}" for k in MODEL_BAD])
def _(ctx, name):
    return eval_args(ctx, model=bad_model(ctx, name.removeprefix("model_")))


EVAL_RECIPE_BAD = {"limit_string": b"limit: ten\n", "batch_size_list": b"batch_size: [2]\n", "non_utf8": NON_UTF8,
                   "tasks_mapping": b"tasks: {a: 1}\n"}


@cases("eval", [f"yaml_{k}" for k in EVAL_RECIPE_BAD])
def _(ctx, name):
    key = name.removeprefix("yaml_")
    recipe = ctx.file("recipe.yaml", EVAL_RECIPE_BAD[key])
    argv = eval_args(ctx)
    for flag in ("--limit", "--batch_size", "--tasks"):  # the command line would override the recipe's value
        if flag.removeprefix("--") in key:
            del argv[argv.index(flag):argv.index(flag) + 2]
    return ["--config", str(recipe), *argv]


@case("eval", "output_dir_is_a_file")
def _(ctx):
    return eval_args(ctx, out=ctx.file("eval", b"a user's file\n"))


@case("eval", "read_only_output_parent", slow=True)
def _(ctx):
    model = copy_model(ctx.fixture("tiny_model_dir"), ctx.root / "model")
    return eval_args(ctx, model=model, out=ctx.read_only("ro") / "eval")


@case("eval", "full_disk", slow=True)
def _(ctx):
    model = copy_model(ctx.fixture("tiny_model_dir"), ctx.root / "model")
    return eval_args(ctx, model=model, out=ctx.full_disk("disk", leave=0) / "eval")


# ==================================================================================== python -m edugpt.model.chat --compare

@cases("chat", [f"model_{k}" for k in MODEL_BAD] + ["model_chat_template_non_utf8"])
def _(ctx, name):
    key = name.removeprefix("model_")
    if key == "model_chat_template_non_utf8" or key == "chat_template_non_utf8":
        model = copy_model(ctx.fixture("chat_model_dir"), ctx.root / "model")
        corrupt(model / "chat_template.jinja", "non_utf8")
    else:
        model = bad_model(ctx, key)
    return ["--compare", str(model), "--message", "Hi", "--max_new_tokens", "2"]


# ============================================================================================= python -m edugpt.report.card

def card_run(ctx) -> Path:
    return make_run_dir(ctx.root, ctx.fixture("tiny_model_dir"))


RUN_FILE_BAD = {
    "config_garbage": ("config.json", "garbage"), "config_non_utf8": ("config.json", "non_utf8"),
    "config_json_list": ("config.json", "json_list"), "config_dir": ("config.json", "dir"),
    "run_config_non_utf8": ("run_config.json", "non_utf8"), "run_config_garbage": ("run_config.json", "garbage"),
    "run_config_json_list": ("run_config.json", "json_list"),
    "run_config_wrong_types": ("run_config.json", b'{"model": "x", "training": [1], "script": {"a": 1}}'),
    "data_manifest_garbage": ("data_manifest.json", "garbage"),
    "data_manifest_non_utf8": ("data_manifest.json", "non_utf8"),
    "data_manifest_json_list": ("data_manifest.json", "json_list"),
    "data_manifest_wrong_types": ("data_manifest.json", b'{"splits": "x", "seq_len": "long", "source": 5}'),
    "samples_non_utf8": ("samples.md", "non_utf8"),
}
# The card reads these from their folders; publish.py plans only regular files and leaves the rest out, saying so in
# plan.json, so a folder where one goes is the card's problem only.
CARD_ONLY_BAD = {"run_config_dir": ("run_config.json", "dir"), "metrics_dir": ("metrics.jsonl", "dir"),
                 "data_manifest_dir": ("data_manifest.json", "dir")}
# The final model's weights cut short: publish.py must not upload them (the card only describes the run).
PUBLISH_ONLY_BAD = {"weights_truncated": ("model.safetensors", "truncated")}


def bad_run(ctx, key: str) -> Path:
    run = card_run(ctx)
    rel, variant = {**RUN_FILE_BAD, **CARD_ONLY_BAD, **PUBLISH_ONLY_BAD}[key]
    path = run / rel
    if isinstance(variant, bytes):
        path.write_bytes(variant)
    else:
        corrupt(path, variant, path.read_bytes() if path.is_file() else None, ctx.outside)
    return run


@cases("card", [f"run_{k}" for k in {**RUN_FILE_BAD, **CARD_ONLY_BAD}])
def _(ctx, name):
    return [str(bad_run(ctx, name.removeprefix("run_")))]


@cases("card", [f"eval_dir_{v}" for v in ("garbage", "non_utf8", "json_list", "dangling_symlink", "wrong_types")])
def _(ctx, name):
    run = card_run(ctx)
    variant = name.removeprefix("eval_dir_")
    if variant == "wrong_types":
        variant = b'{"results": {"hellaswag": {"acc,none": "high", "acc_norm,none": [1]}}, "config": 5}'
    path = ctx.bad("evals/results_2026.json", variant)
    return [str(run), "--eval_dir", str(path)]


@cases("card", ["card_is_a_dir", "run_dir_missing", "run_dir_is_a_file"])
def _(ctx, name):
    if name == "run_dir_missing":
        return [str(ctx.root / "nope")]
    if name == "run_dir_is_a_file":
        return [str(ctx.file("run", b"x"))]
    run = card_run(ctx)
    (run / "README.md").mkdir()
    (run / "README.md" / "notes.txt").write_text("a user's notes\n")
    return [str(run)]


@case("card", "read_only_run_dir")
def _(ctx):
    run = card_run(ctx)
    if not ctx.mounts.enter_context(read_only(run)):
        pytest.skip(MOUNT_SKIP)
    return [str(run)]


@case("card", "full_disk")
def _(ctx):
    disk = ctx.full_disk("disk", size=48 << 20, leave=None)
    run = make_run_dir(disk, ctx.fixture("tiny_model_dir"))
    fill(disk, 0)
    return [str(run)]


# ============================================================================================================= publish.py

def publish_args(run: Path, dest: Path, *extra) -> list[str]:
    return [str(run), "--hub_model_id", "someone/edugpt-test", "--dry_run", str(dest), *extra]


# Only the model's own files: publish.py uploads what the run's record lists, and leaves out (saying so in plan.json)
# a record file changed after it was written, as the corrupted ones here are.
@cases("publish", [f"run_{k}" for k in {**RUN_FILE_BAD, **PUBLISH_ONLY_BAD} if k.startswith(("config_", "weights_"))])
def _(ctx, name):
    return publish_args(bad_run(ctx, name.removeprefix("run_")), ctx.root / "dry")


@cases("publish", ["dest_is_a_file", "dest_not_empty", "dest_dangling_symlink", "dest_parent_is_a_file"])
def _(ctx, name):
    run = card_run(ctx)
    dest = ctx.root / "dry"
    if name == "dest_is_a_file":
        dest.write_bytes(b"x")
    elif name == "dest_not_empty":
        dest.mkdir()
        (dest / "keep.txt").write_text("a user's file\n")
    elif name == "dest_dangling_symlink":
        dest.symlink_to(ctx.outside / "nowhere")
    else:
        dest = ctx.file("parent", b"x") / "dry"
    return publish_args(run, dest)


@cases("publish", ["hub_model_id_bad"])
def _(ctx, name):
    run = card_run(ctx)
    return [str(run), "--hub_model_id", "not a/valid//id", "--dry_run", str(ctx.root / "dry")]


@case("publish", "read_only_dest_parent")
def _(ctx):
    run = card_run(ctx)
    return publish_args(run, ctx.read_only("ro") / "dry")


@case("publish", "full_disk")
def _(ctx):
    run = card_run(ctx)
    return publish_args(run, ctx.full_disk("disk", leave=64 << 10) / "dry")


# ================================================================================================================ running

def _load(rel: str, name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / rel)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@cache
def entry_main(entry: str):
    if entry in ("prepare", "prepare_local", "verify"):
        return _load("prepare_data.py", "_prepare_data_script")
    if entry == "train":
        return _load("train_hf.py", "_train_hf_script")
    if entry in ("sft", "dpo"):
        return _load(f"finetune/{entry}.py", f"_{entry}_script")
    if entry == "eval":
        return _load("eval_harness.py", "_eval_harness_script")
    if entry == "chat":
        from edugpt.model.chat import main
        return main
    if entry == "card":
        from edugpt.report.card import main
        return main
    if entry == "publish":
        return _load("publish.py", "_publish_script")
    raise KeyError(entry)


def run_entry(entry: str, argv: list[str], monkeypatch):
    main = entry_main(entry)
    if entry == "publish":  # publish.py's main() reads sys.argv
        monkeypatch.setattr(sys, "argv", ["publish.py", *argv])
        return call_in_process(main)
    monkeypatch.setattr(sys, "argv", [entry, *argv])  # what the lock file records
    return call_in_process(lambda: main(argv))


def assert_refused(outcome, before: dict, after: dict, tolerated: set[str]) -> None:
    problems = outcome.problems()
    changes = tree_changes(before, after, tolerated)
    if changes:
        problems.append("the folders changed: " + "; ".join(changes[:8]) + (" ..." if len(changes) > 8 else ""))
    assert not problems, (f"{outcome.summary()} || " + " | ".join(problems)
                          + f"\n--- stderr (last 3000 chars) ---\n{outcome.err[-3000:]}")


def params(cases_: list[Case]):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else []) for c in cases_]


@pytest.mark.parametrize("bad", params([c for c in CASES if c.in_process]))
def test_bad_input_is_one_error_line_exit_2_and_changes_nothing(bad: Case, tmp_path, request, monkeypatch):
    monkeypatch.chdir(ROOT)  # the recipes name the shipped data relative to the repository
    ctx = Context(tmp_path, request)
    with ctx.mounts:
        argv = bad.build(ctx)
        before = snapshot(ctx.root)
        outcome = run_entry(bad.entry, argv, monkeypatch)
        after = snapshot(ctx.root)
    assert_refused(outcome, before, after, ctx.tolerated)


# --- the real stderr: a few cases as the scripts run from a shell ------------------------------------------------------

SUBPROCESS_CASES = ["prepare-jsonl_null", "sft-data_null",
                    "prepare-jsonl_non_utf8", "verify-manifest_json_list",
                    "verify-doc_ids_garbage", "eval-hellaswag_garbage", "chat-model_config_garbage",
                    "card-run_data_manifest_json_list", "publish-run_config_garbage"]
SCRIPTS = {"prepare": ["prepare_data.py"], "verify": ["prepare_data.py"], "train": ["train_hf.py"],
           "sft": ["finetune/sft.py"], "eval": ["eval_harness.py"], "chat": ["-m", "edugpt.model.chat"],
           "card": ["-m", "edugpt.report.card"], "publish": ["publish.py"]}


@pytest.mark.slow
@pytest.mark.parametrize("bad", [pytest.param(c, id=c.id) for c in CASES if c.id in SUBPROCESS_CASES])
def test_bad_input_from_a_shell_is_one_error_line_exit_2_and_changes_nothing(bad: Case, tmp_path, request):
    ctx = Context(tmp_path, request)
    with ctx.mounts:
        argv = bad.build(ctx)
        before = snapshot(ctx.root)
        outcome = call_subprocess([*SCRIPTS[bad.entry], *argv], cwd=ROOT, timeout=300)
        after = snapshot(ctx.root)
    assert_refused(outcome, before, after, ctx.tolerated)


def test_every_subprocess_case_exists():
    assert set(SUBPROCESS_CASES) >= {c.id for c in CASES if not c.in_process}
    assert set(SUBPROCESS_CASES) <= {c.id for c in CASES}
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

"""The project's readers of files it did not write this moment, fed arbitrary bytes and arbitrary JSON: each returns a
normal result or raises EduGPTError (one line for the user), never another exception (a traceback).

Hypothesis, derandomized (the same examples on every run, so CI is deterministic), with a bounded number of examples
per reader. Besides arbitrary documents, each JSON reader gets its own valid document with one value replaced by an
arbitrary one or one key removed: that reaches the checks behind "is it JSON at all".
"""

from __future__ import annotations

import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import GARBAGE, NON_UTF8
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from edugpt.errors import EduGPTError

# Cheap readers: shrink a failure to a minimal example. Readers that open datasets: no shrinking (bounded time).
FAST = settings(max_examples=80, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
SLOW = settings(max_examples=25, derandomize=True, deadline=None, database=None,
                phases=[Phase.explicit, Phase.generate], suppress_health_check=[HealthCheck.too_slow,
                                                                                HealthCheck.data_too_large])
# `datasets`' JSON loader, in a forked child per example (see in_child): about a second each.
JSONL = settings(SLOW, max_examples=15)

# --- strategies ---------------------------------------------------------------------------------------------------------

scalars = (st.none() | st.booleans() | st.integers(min_value=-2**70, max_value=2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20))
json_values = st.recursive(scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4), max_leaves=12)
# Bytes a reader may meet: arbitrary, known-bad, and JSON-looking text.
raw_bytes = (st.binary(max_size=300) | st.sampled_from([b"", NON_UTF8, GARBAGE, b"\x00" * 64, b"{", b"[]", b"null"])
             | json_values.map(lambda v: json.dumps(v).encode()))


def paths_of(doc, prefix=()):
    """Every (path to a value) in a JSON document."""
    yield prefix
    if isinstance(doc, dict):
        for key, value in doc.items():
            yield from paths_of(value, (*prefix, key))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            yield from paths_of(value, (*prefix, index))


def _replace(doc, path, value, delete: bool):
    if not path:
        return value
    doc = json.loads(json.dumps(doc))
    node = doc
    for key in path[:-1]:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return doc


def mutations(valid):
    """`valid` with one value (anywhere in it) replaced by an arbitrary JSON value, or one key removed."""
    paths = list(paths_of(valid))
    return st.builds(_replace, st.just(valid), st.sampled_from(paths), json_values, st.booleans())


def json_documents(valid) -> st.SearchStrategy[bytes]:
    return raw_bytes | mutations(valid).map(lambda v: json.dumps(v).encode())


def jsonl_documents(valid_rows: list[dict]) -> st.SearchStrategy[bytes]:
    line = json_values | st.sampled_from(valid_rows) | mutations(valid_rows[0])
    lines = st.lists(line.map(json.dumps), min_size=0, max_size=6).map(lambda ls: "\n".join(ls).encode())
    return raw_bytes | lines | st.builds(lambda a, b: a + b, lines, raw_bytes)


def normal_or_refused(call):
    """The reader's result, or None when it refused with EduGPTError; any other exception fails the test."""
    try:
        return call()
    except EduGPTError as err:
        assert "\n" not in str(err).strip(), f"an error is one line: {err!r}"
        return None


def in_child(check) -> None:
    """Run `check()` in a forked child: a reader that crashes the interpreter (a segfault inside a library) fails
    this example instead of killing the test session. Any exception in the child fails it too, with its message."""
    import os
    import signal
    import traceback

    with tempfile.TemporaryFile() as report:
        pid = os.fork()
        if pid == 0:  # the child: never returns into pytest
            code = 0
            try:
                check()
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                report.write("".join(traceback.format_exception(err))[-4000:].encode())
                report.flush()
                code = 3
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        report.seek(0)
        message = report.read().decode(errors="replace")
    if os.WIFSIGNALED(status):
        raise AssertionError(f"the reader killed the process with {signal.Signals(os.WTERMSIG(status)).name}")
    assert os.WEXITSTATUS(status) == 0, message


@contextmanager
def scratch():
    folder = tempfile.mkdtemp(prefix="fuzz-")
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- safefs.read_json and the run directory's records (edugpt.run.rundir)

@FAST
@given(data=raw_bytes)
def test_read_json_returns_json_or_refuses(data):
    from edugpt.io.safefs import read_json

    with scratch() as tmp:
        (tmp / "f.json").write_bytes(data)
        normal_or_refused(lambda: read_json(tmp / "f.json"))


RUN_CONFIG = {"edugpt": {"kind": "pretrain", "version": 1}, "model": {"n_layer": 2}, "data": {"dataset_dir": "d"},
              "script": {"sample_steps": 2}, "training": {"output_dir": "run", "push_to_hub": True,
                                                          "hub_model_id": "me/model", "max_steps": 4}}


@FAST
@given(data=json_documents(RUN_CONFIG))
def test_run_config_readers_return_or_refuse(data):
    from edugpt.run import rundir

    with scratch() as run:
        (run / "run_config.json").write_bytes(data)
        (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 1, "loss": 1.0}\n')
        config = normal_or_refused(lambda: rundir.read_run_config(run))
        assert config is None or isinstance(config, dict)
        normal_or_refused(lambda: rundir.run_kind(config))
        normal_or_refused(lambda: rundir.published_repo_id(run))
        normal_or_refused(lambda: rundir.config_value(config, "dataset_name", "output_dir"))
        for kind in rundir.KINDS:
            normal_or_refused(lambda kind=kind: rundir.require_own_run_dir(run, kind))


@FAST
@given(value=json_values)
def test_run_kind_of_any_json_value(value):
    from edugpt.run import rundir

    assert normal_or_refused(lambda: rundir.run_kind(value)) in (None, *rundir.KINDS)


METRICS_ROW = {"step": 2, "tokens": 4096, "loss": 7.5, "eval_loss": 7.9, "learning_rate": 3e-4}


@FAST
@given(data=jsonl_documents([METRICS_ROW]))
def test_read_metrics_returns_records_or_refuses(data):
    from edugpt.run import rundir

    with scratch() as run:
        (run / "metrics.jsonl").write_bytes(data)
        records = normal_or_refused(lambda: rundir.read_metrics(run))
        assert records is None or all(isinstance(r, dict) for r in records)


PUBLISHED = {"repo_id": "me/model", "branches": ["main"], "url": "https://huggingface.co/me/model",
             "published_at": "2026-01-01T00:00:00Z", "created_by": "publish.py"}


@FAST
@given(data=json_documents(PUBLISHED))
def test_published_record_reader_returns_or_refuses(data):
    from edugpt.run import rundir

    with scratch() as run:
        (run / "published.json").write_bytes(data)
        repo = normal_or_refused(lambda: rundir.published_repo_id(run))
        assert repo is None or isinstance(repo, str)


TRAINER_STATE = {"global_step": 4, "log_history": [{"step": 2, "loss": 7.0}, {"step": 4, "eval_loss": 7.5}]}


@FAST
@given(data=json_documents(TRAINER_STATE))
def test_trainer_state_reader_returns_or_refuses(data):
    from edugpt.run import rundir

    with scratch() as run:
        (run / "trainer_state.json").write_bytes(data)
        history = normal_or_refused(lambda: rundir.read_log_history(run))
        assert history is None or isinstance(history, list)


LM_EVAL = {"results": {"hellaswag": {"acc,none": 0.25, "acc_norm,none": 0.26}},
           "config": {"model": "hf", "model_args": "pretrained=run", "limit": 10}, "n-shot": {"hellaswag": 0}}


@FAST
@given(data=json_documents(LM_EVAL))
def test_lm_eval_results_reader_returns_or_refuses(data):
    from edugpt.run import rundir

    with scratch() as tmp:
        run = tmp / "run"
        run.mkdir()
        results = tmp / "results_2026.json"
        results.write_bytes(data)
        normal_or_refused(lambda: rundir.find_lm_eval_results(run, results))
        normal_or_refused(lambda: rundir.find_lm_eval_results(run))  # the sibling search meets it too
        try:
            value = json.loads(data)
        except ValueError:
            return
        if isinstance(value, dict):
            normal_or_refused(lambda: rundir.evaluated_model(value))


# --- completion markers (edugpt.run.checkpoints)

@pytest.fixture(scope="module")
def marked_checkpoint(tmp_path_factory):
    """A checkpoint folder with a whole model.safetensors, trainer_state.json and its completion marker."""
    from safetensors.numpy import save_file

    from edugpt.run.checkpoints import write_marker

    folder = tmp_path_factory.mktemp("checkpoint") / "checkpoint-2"
    folder.mkdir()
    save_file({"w": np.zeros((4, 4), dtype=np.float32)}, str(folder / "model.safetensors"))
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": []}))
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    write_marker(folder, {"learning_rate": 3e-4})
    return folder


def _marker_fuzz(marked_checkpoint):
    valid = json.loads((marked_checkpoint / "edugpt-complete.json").read_text())
    return json_documents(valid)


@FAST
@given(data=st.data())
def test_marker_readers_return_or_refuse(marked_checkpoint, data):
    from edugpt.run.checkpoints import checkpoint_problem, read_marker

    document = data.draw(_marker_fuzz(marked_checkpoint))
    with scratch() as tmp:
        folder = tmp / "checkpoint-2"
        shutil.copytree(marked_checkpoint, folder)
        (folder / "edugpt-complete.json").write_bytes(document)
        marker = normal_or_refused(lambda: read_marker(folder))
        assert marker is None or isinstance(marker, dict)
        for trainer_state in (True, False):
            problem = normal_or_refused(lambda ts=trainer_state: checkpoint_problem(folder, require_trainer_state=ts))
            assert problem is None or isinstance(problem, str)


@FAST
@given(weights=raw_bytes)
def test_weights_check_of_arbitrary_bytes(weights):
    from edugpt.model.saved import weights_problem

    with scratch() as tmp:
        (tmp / "model.safetensors").write_bytes(weights)
        problem = normal_or_refused(lambda: weights_problem(tmp / "model.safetensors"))
        assert problem is None or isinstance(problem, str)


# --- prepared datasets: manifest, layout, --verify, the swap journal (edugpt.corpus.manifest, layout, verify, install)

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from edugpt.corpus.synthetic import write_prepared

    rng = np.random.default_rng(0)
    return write_prepared(tmp_path_factory.mktemp("prepared") / "data",
                          {"train": rng.integers(0, 50257, (6, 16), dtype=np.uint16),
                           "validation": rng.integers(0, 50257, (2, 16), dtype=np.uint16)})


def _with(prepared: Path, tmp: Path, rel: str, document: bytes) -> Path:
    data = tmp / "data"
    shutil.copytree(prepared, data)
    (data / rel).write_bytes(document)
    return data


def _valid(prepared: Path, rel: str):
    return json.loads((prepared / rel).read_text())


@SLOW
@given(data=st.data())
def test_manifest_readers_and_verify_return_or_refuse(prepared, data):
    from edugpt.corpus import install as prepared_data
    from edugpt.corpus.manifest import load_manifest
    from edugpt.corpus.verify import verify

    document = data.draw(json_documents(_valid(prepared, "manifest.json")))
    with scratch() as tmp:
        root = _with(prepared, tmp, "manifest.json", document)
        normal_or_refused(lambda: load_manifest(root))
        # What decides whether --overwrite may replace the folder: a reason (str) or None, never a crash.
        refusal = normal_or_refused(lambda: prepared_data.replace_refusal(root))
        assert refusal is None or isinstance(refusal, str)
        normal_or_refused(lambda: verify(root))


@SLOW
@given(data=st.data())
def test_verify_of_any_state_json_or_dataset_dict_returns_or_refuses(prepared, data):
    from edugpt.corpus.verify import verify

    rel = data.draw(st.sampled_from(["train/state.json", "dataset_dict.json", "train/dataset_info.json"]))
    document = data.draw(json_documents(_valid(prepared, rel)))
    with scratch() as tmp:
        normal_or_refused(lambda: verify(_with(prepared, tmp, rel, document)))


@SLOW
@given(ids=raw_bytes)
def test_verify_of_any_doc_ids_bytes_returns_or_refuses(prepared, ids):
    from edugpt.corpus.verify import verify

    with scratch() as tmp:
        normal_or_refused(lambda: verify(_with(prepared, tmp, "doc_ids.parquet", ids)))


@FAST
@given(data=st.data())
def test_swap_journal_recovery_returns_or_refuses_and_never_touches_other_folders(data):
    """A journal holding anything: the swap is completed (only ever between our .tmp/.old and the output) or refused;
    a user's folder beside them is never moved or deleted."""
    from edugpt.corpus.install import recover_swap

    with scratch() as tmp:
        out = tmp / "out"
        valid = {"new": str(tmp / ".out.tmp"), "out": str(out), "old": str(tmp / ".out.old")}
        others = [str(tmp / "mine"), str(tmp), "/", str(out / "x"), "", ".", ".."]
        journal = data.draw(json_documents(valid) | st.fixed_dictionaries(
            {k: st.sampled_from(others + [v]) for k, v in valid.items()}).map(lambda d: json.dumps(d).encode()))
        (tmp / "mine").mkdir()
        (tmp / "mine" / "thesis.txt").write_text("a user's work\n")
        (tmp / ".out.swap.json").write_bytes(journal)
        normal_or_refused(lambda: recover_swap(out))
        assert (tmp / "mine" / "thesis.txt").read_text() == "a user's work\n"


# --- datatrove's plan.json and task records (edugpt.corpus.datatrove_work, datatrove_merge) -------------------------------

@pytest.fixture(scope="module")
def plan_doc(tmp_path_factory):
    """The plan.json of a `--executor local --tasks 2` run over two small parquet files."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from edugpt.config.arguments import ExecutorArguments, PrepareDataArguments
    from edugpt.corpus.datatrove_work import make_plan
    from edugpt.corpus.sources import resolve_source

    folder = tmp_path_factory.mktemp("corpus")
    for k in range(2):
        pq.write_table(pa.table({"id": [f"d{k}-{i}" for i in range(5)], "text": ["some text"] * 5}),
                       folder / f"part-{k}.parquet")
    args = PrepareDataArguments(dataset=str(folder), output_dir=str(folder.parent / "out"), seq_len=16,
                                val_fraction=0.1, num_proc=1)
    plan = make_plan(args, ExecutorArguments(executor="local", tasks=2, workers=1), resolve_source(str(folder)))
    plan.update(executor="local", output_dir=args.output_dir, overwrite=False)
    return json.loads(json.dumps(plan))


@FAST
@given(data=st.data())
def test_plan_reader_returns_a_plan_or_refuses(plan_doc, data):
    from edugpt.corpus.datatrove_work import WorkDir

    document = data.draw(json_documents(plan_doc))
    with scratch() as tmp:
        work = WorkDir(tmp / "out")
        (work.staging / "train").mkdir(parents=True)
        work.plan.write_bytes(document)
        reader = getattr(work, "read_plan", None) or (lambda: json.loads(work.plan.read_text()))
        plan = normal_or_refused(reader)
        assert plan is None or isinstance(plan, dict)


TASK_RECORD = {"rank": 0, "rows": 5, "splits": {"train": {"documents": 4, "tokens": 20, "blocks": 1, "tail_tokens": 4,
                                                          "files": ["task-00000-00000.arrow"], "digests": ["ab"]},
                                                "validation": {"documents": 1, "tokens": 3, "blocks": 0,
                                                               "tail_tokens": 3, "files": [], "digests": []}},
               "tails": {"train": [1, 2, 3, 4], "validation": [5, 6, 7]}, "ran_on": {"executor": "local"},
               "ids_sha256": "0" * 64, "sha256": "0" * 64}


@FAST
@given(document=json_documents(TASK_RECORD))
def test_task_record_reader_returns_or_refuses(document):
    from edugpt.corpus import datatrove_merge
    from edugpt.corpus.datatrove_work import WorkDir

    reader = getattr(datatrove_merge, "task_record", None)
    if reader is None:
        pytest.skip("prepare_parallel has no task_record reader")
    with scratch() as tmp:
        work = WorkDir(tmp / "out")
        work.records.mkdir(parents=True)
        work.ids.mkdir(parents=True)
        work.record(0).write_bytes(document)
        work.id_part(0).write_bytes(b"PAR1")
        normal_or_refused(lambda: reader(work, 0, 16))


# --- corpus inputs: jsonl and parquet (edugpt.corpus.sources), HellaSwag jsonl, finetuning jsonl

DOC = {"id": "doc-1", "text": "Some text of a document.", "url": "https://example.com", "score": 3.2}


@pytest.mark.slow
@JSONL
@given(data=jsonl_documents([DOC]))
def test_jsonl_corpus_loads_or_refuses(data):
    """In a child process: `datasets`' JSON loader segfaults on some files (a file holding `null`)."""
    in_child(lambda: _load_jsonl_corpus(data))


def _load_jsonl_corpus(data: bytes) -> None:
    from edugpt.corpus.sources import load_source, require_text_column, resolve_source

    with scratch() as tmp:
        path = tmp / "corpus.jsonl"
        path.write_bytes(data)
        source = normal_or_refused(lambda: resolve_source(str(path)))
        if source is None:
            return
        raw = normal_or_refused(lambda: load_source(source, num_proc=1, cache_dir=str(tmp / "cache")))
        if raw is not None:
            normal_or_refused(lambda: require_text_column(raw, source))


@st.composite
def parquet_tables(draw):
    """Parquet files whose columns hold values of one arbitrary type each (text of any type, ids of any type)."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    n = draw(st.integers(min_value=0, max_value=5))
    column_values = st.sampled_from([st.text(max_size=40), st.integers(-5, 5), st.floats(allow_nan=True),
                                     st.none(), st.lists(st.integers(0, 3), max_size=3), st.booleans()])
    columns = draw(st.lists(st.sampled_from(["text", "id", "url", "Text", ""]), min_size=1, max_size=3, unique=True))
    table = {}
    for name in columns:
        values = draw(column_values)
        table[name] = draw(st.lists(values, min_size=n, max_size=n))
    buffer = io.BytesIO()
    try:
        pq.write_table(pa.table(table), buffer)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
        return b"PAR1 not a table PAR1"
    data = buffer.getvalue()
    cut = draw(st.sampled_from([None, None, len(data) // 2, len(data) - 8]))
    return data if cut is None else data[:cut]


@SLOW
@given(data=parquet_tables() | raw_bytes)
def test_parquet_corpus_loads_or_refuses(data):
    from edugpt.corpus.sources import load_source, require_text_column, resolve_source

    with scratch() as tmp:
        path = tmp / "corpus.parquet"
        path.write_bytes(data)
        source = normal_or_refused(lambda: resolve_source(str(path)))
        if source is None:
            return
        raw = normal_or_refused(lambda: load_source(source, num_proc=1, cache_dir=str(tmp / "cache")))
        if raw is not None:
            normal_or_refused(lambda: require_text_column(raw, source))


HELLASWAG_ROW = {"ind": 0, "activity_label": "a", "ctx_a": "It", "ctx_b": "was", "ctx": "It was",
                 "endings": ["one", "two", "three", "four"], "label": "2", "split": "val", "split_type": "indomain",
                 "source_id": "s"}


@FAST
@given(data=jsonl_documents([HELLASWAG_ROW]))
def test_hellaswag_reader_returns_items_or_refuses(data):
    from edugpt.eval.tasks.hellaswag_local import read_hellaswag_jsonl

    with scratch() as tmp:
        (tmp / "h.jsonl").write_bytes(data)
        items = normal_or_refused(lambda: read_hellaswag_jsonl(tmp / "h.jsonl"))
        assert items is None or isinstance(items, list)


SFT_ROW = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]}
DPO_ROW = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
           "rejected": [{"role": "assistant", "content": "Go away."}]}


@pytest.mark.slow
@JSONL
@given(data=st.data())
def test_finetuning_jsonl_loads_or_refuses(data):
    stage = data.draw(st.sampled_from(["sft", "dpo"]))
    document = data.draw(jsonl_documents([SFT_ROW if stage == "sft" else DPO_ROW]))
    in_child(lambda: _load_finetuning_jsonl(stage, document))


def _load_finetuning_jsonl(stage: str, document: bytes) -> None:
    from edugpt.train.chat_data import load_finetune_dataset, load_raw

    with scratch() as tmp:
        path = tmp / "train.jsonl"
        path.write_bytes(document)
        raw = normal_or_refused(lambda: load_raw(str(path)))
        if raw is not None:
            normal_or_refused(lambda: load_finetune_dataset(raw, stage, name=str(path), num_proc=None))


def test_the_json_strategies_reach_the_checks_behind_parsing():
    """The mutations keep a document JSON with one value changed: the readers' schema checks are exercised."""
    doc = {"a": {"b": [1, 2]}, "c": "x"}
    assert set(paths_of(doc)) == {(), ("a",), ("a", "b"), ("a", "b", 0), ("a", "b", 1), ("c",)}
    assert _replace(doc, ("a", "b", 0), "z", False) == {"a": {"b": ["z", 2]}, "c": "x"}
    assert _replace(doc, ("c",), None, True) == {"a": {"b": [1, 2]}}

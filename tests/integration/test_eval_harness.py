"""eval_harness.py as a user runs it: results on a saved checkpoint, and one clear error for each bad input."""

from __future__ import annotations

import json

import pytest
from factories import ROOT, run_script

from edugpt.errors import EduGPTError
from edugpt.eval.tasks.hellaswag_local import SMOKE_FILE

pytestmark = pytest.mark.slow


def eval_harness_main():
    """eval_harness.py's `main`, to run in this process (errors arrive as EduGPTError)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_eval_harness", ROOT / "eval_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def results_files(out):
    return sorted(out.rglob("results_*.json")), sorted(out.rglob("samples_*.jsonl"))


def test_writes_lm_evals_layout_and_prints_its_table(tiny_model_dir, tmp_path):
    """lm_eval --output_path's layout (its EvaluationTracker): OUTPUT/<model name>/results_<time>.json and
    samples_<task>_<time>.jsonl, and lm-eval's own table on stdout (make_table). Written beside a run (runs/NAME/eval
    next to runs/NAME/pretrain, as in the demo), it is what the run's model card reports."""
    from factories import make_run_dir
    from lm_eval.utils import make_table, sanitize_model_name

    from edugpt.report.card import build_model_card
    from edugpt.run.rundir import find_lm_eval_results

    run = make_run_dir(tmp_path, tiny_model_dir, lm_eval=False)
    out = tmp_path / "eval"
    proc = run_script("eval_harness.py", "--model", run, "--tasks", "hellaswag", "--limit", "8",
                      "--batch_size", "4", "--hellaswag_file", SMOKE_FILE, "--output_path", out, "--log_samples",
                      check=True)
    [results_path], [samples_path] = results_files(out)
    assert results_path.parent == out / sanitize_model_name(str(run))
    assert samples_path.name.startswith("samples_hellaswag_local_") and samples_path.parent == results_path.parent
    results = json.loads(results_path.read_text())
    metrics = results["results"]["hellaswag_local"]
    assert results["n-samples"]["hellaswag_local"] == {"original": 200, "effective": 8}
    assert results["config"]["model"] == "hf" and results["config"]["model_args"] == {"pretrained": str(run)}
    assert 0 <= metrics["acc,none"] <= 1 and 0 <= metrics["acc_norm,none"] <= 1
    assert make_table(results) in proc.stdout  # lm-eval's own table, printed as lm_eval prints it
    samples = [json.loads(line) for line in samples_path.open()]
    assert [s["doc_id"] for s in samples] == list(range(8))
    assert sum(s["acc"] for s in samples) / 8 == metrics["acc,none"]
    assert find_lm_eval_results(run)["_path"] == results_path
    assert f"{metrics['acc_norm,none']:.4f}" in build_model_card(run).text

    # A second evaluation into the same folder adds its own files, as lm_eval does; the first ones stay untouched.
    before = results_path.read_bytes()
    eval_harness_main()(["--model", str(run), "--tasks", "hellaswag", "--limit", "2", "--batch_size", "4",
                         "--hellaswag_file", str(SMOKE_FILE), "--output_dir", str(out)])
    assert len(results_files(out)[0]) == 2 and results_path.read_bytes() == before


def test_lm_eval_options_pass_through(tiny_model_dir, tmp_path):
    """--model_args, --revision, --num_fewshot and --apply_chat_template reach lm-eval as lm_eval's CLI passes them;
    the chat template needs a chat model."""
    import shutil

    from transformers import AutoTokenizer

    from edugpt.model.chat import EDUGPT_CHAT_TEMPLATE, add_chat_template

    chat_model = tmp_path / "sft"
    shutil.copytree(tiny_model_dir, chat_model)
    add_chat_template(AutoTokenizer.from_pretrained(chat_model)).save_pretrained(chat_model)
    out = tmp_path / "eval"
    proc = run_script("eval_harness.py", "--model", chat_model, "--tasks", "hellaswag", "--limit", "3",
                      "--batch_size", "4", "--hellaswag_file", SMOKE_FILE, "--output_dir", out, "--log_samples",
                      # spaces after commas, as people type them (lm-eval itself would pass " max_length" on)
                      "--model_args", "dtype=float32, max_length=96", "--revision", "main", "--num_fewshot", "1",
                      "--apply_chat_template", check=True)
    [results_path], [samples_path] = results_files(out)
    results = json.loads(results_path.read_text())
    assert results["config"]["model_args"] == {"pretrained": str(chat_model), "revision": "main", "dtype": "float32",
                                               "max_length": 96}
    assert results["n-shot"]["hellaswag_local"] == 1
    assert results["chat_template"] == EDUGPT_CHAT_TEMPLATE and results["fewshot_as_multiturn"] is True
    prompt = json.loads(samples_path.open().readline())["arguments"]["gen_args_0"]["arg_0"]
    assert prompt.startswith("User: ") and "Assistant:" in prompt  # the model's template rendered the items
    assert "hf ({'pretrained'" in proc.stdout

    with pytest.raises(EduGPTError, match="--model_args dtyp= is no argument of lm-eval's hf model"):  # a typo
        eval_harness_main()(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--limit", "2", "--hellaswag_file",
                             str(SMOKE_FILE), "--model_args", "dtyp=float32", "--output_dir", str(tmp_path / "typo")])
    assert not (tmp_path / "typo").exists()
    with pytest.raises(EduGPTError, match="no chat template"):  # a pretrained model: refused before any scoring
        eval_harness_main()(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--limit", "2", "--hellaswag_file",
                             str(SMOKE_FILE), "--apply_chat_template", "--output_dir", str(tmp_path / "base")])
    assert not (tmp_path / "base").exists()


def write_bad_file(path):
    row = {"activity_label": "x", "ctx_a": "A passage.", "ctx_b": "", "endings": ["a.", "b.", "c.", "d."], "label": 1}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "label": 7}) + "\n")
    return path


def write_image_model_dir(path):
    """A saved model that is no language model at all (ViT config + GPT-2 tokenizer files beside it)."""
    from transformers import ViTConfig

    from edugpt.model.tokenizer import load_tokenizer

    ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(path)
    load_tokenizer("gpt2").save_pretrained(path)
    return path


@pytest.mark.parametrize(("case", "message"), [
    ("missing", "does not exist"),
    ("no_config", "has no config.json, so it is not a saved model"),
    ("not_causal", "holds a 'vit' model, not a causal language model"),
    ("bad_file", "line 2: field 'label' is 7, out of range 0-3"),
    ("unknown_task", "unknown lm-eval task 'hellaswagg'"),
])
def test_bad_input_is_one_clear_error(tiny_model_dir, tmp_path, case, message):
    model, tasks, extra = str(tiny_model_dir), "hellaswag", ["--hellaswag_file", str(SMOKE_FILE)]
    if case == "missing":
        model = str(tmp_path / "runs" / "nope" / "pretrain")
    elif case == "no_config":
        model = str(tmp_path)
    elif case == "not_causal":
        model = str(write_image_model_dir(tmp_path / "vit"))
    elif case == "bad_file":
        extra = ["--hellaswag_file", str(write_bad_file(tmp_path / "bad.jsonl"))]
    elif case == "unknown_task":
        tasks = "hellaswagg"
    proc = run_script("eval_harness.py", "--model", model, "--tasks", tasks, "--output_dir", tmp_path / "out", *extra)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()  # nothing written where results would go


def run_eval_harness(argv: list[str], capsys) -> tuple[int, str, str]:
    """eval_harness.py in this process as its `__main__` guard runs it: (exit status, stdout, its one error line)."""
    from edugpt.config.cli import run

    code = 0
    try:
        run(lambda: eval_harness_main()(argv))
    except SystemExit as exit_info:
        code = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == (code != 0), captured.err[-3000:]
    return code, captured.out, errors[0] if errors else ""


@pytest.mark.parametrize(("case", "message"), [
    ("file", "is a file"),
    ("under_a_file", "lies under"),
])
def test_an_output_dir_lm_eval_cannot_write_is_refused_before_evaluating(tiny_model_dir, tmp_path, monkeypatch,
                                                                         capsys, case, message):
    """lm-eval's tracker only logs a warning when it cannot write; eval_harness.py printed "results written to" a
    path that never existed and exited 0."""
    import edugpt.eval.harness

    user_file = tmp_path / "notes.txt"
    user_file.write_text("a user's file\n")
    out = user_file if case == "file" else user_file / "eval"
    monkeypatch.setattr(edugpt.eval.harness, "evaluate_checkpoint", lambda *a, **k: pytest.fail("evaluated"))
    code, stdout, line = run_eval_harness(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--limit", "2",
                                           "--hellaswag_file", str(SMOKE_FILE), "--output_path", str(out)], capsys)
    assert code == 2 and f"--output_dir {out} {message}" in line and "written" not in stdout, line
    assert user_file.read_text() == "a user's file\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.fixture()
def small_disk(tmp_path):
    """An 8 KiB tmpfs (two pages): lm-eval's ~9 KB results file cannot fit. Skips where mounting is not allowed."""
    import subprocess

    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8k", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "--lazy", str(disk)], capture_output=True)


def test_results_that_do_not_fit_the_disk_leave_nothing_and_say_so(tiny_model_dir, small_disk, capsys):
    """lm-eval's tracker catches the ENOSPC and logs it; a cut-off results file was left, and the run exited 0."""
    (small_disk / "earlier").write_text("kept\n")
    code, stdout, line = run_eval_harness(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--limit", "2",
                                           "--batch_size", "2", "--hellaswag_file", str(SMOKE_FILE), "--output_dir",
                                           str(small_disk / "eval")], capsys)
    assert code == 2 and "no space left on the device while lm-eval wrote its results" in line, line
    assert "written" not in stdout
    assert sorted(p.name for p in small_disk.rglob("*")) == ["earlier"]  # no partial results, no empty folders


@pytest.mark.parametrize(("damage", "message"), [
    ("latin1", "line 3 is not UTF-8 text"),
    ("cut_mid_line", "line {last}: not valid JSON"),
    ("binary", "line 1 is not UTF-8 text"),
])
def test_a_hellaswag_file_that_is_not_whole_utf8_jsonl_is_one_line_naming_it(tiny_model_dir, tmp_path, capsys,
                                                                              damage, message):
    """Held before these tests were written (edugpt/eval/tasks/hellaswag_local.py reads bytes and names the line); kept
    here as the eval_harness.py end of it: one line, exit status 2, nothing written."""
    import gzip

    good = SMOKE_FILE.read_bytes()
    hellaswag = tmp_path / "hellaswag.jsonl"
    if damage == "latin1":  # a file re-saved in Latin-1: valid JSON lines, but "é" is the lone byte 0xE9
        lines = good.splitlines(keepends=True)
        lines[2] = lines[2].replace(b'"ctx_a": "', '"ctx_a": "Café '.encode("latin-1"), 1)
        hellaswag.write_bytes(b"".join(lines))
    elif damage == "cut_mid_line":  # an interrupted copy
        hellaswag.write_bytes(good[: len(good) // 2])
    else:
        hellaswag.write_bytes(gzip.compress(good))
    code, stdout, line = run_eval_harness(["--model", str(tiny_model_dir), "--tasks", "hellaswag", "--limit", "2",
                                           "--hellaswag_file", str(hellaswag), "--output_dir", str(tmp_path / "out")],
                                          capsys)
    last = hellaswag.read_bytes().count(b"\n") + 1  # the cut line
    assert code == 2 and f"HellaSwag file {hellaswag} {message.format(last=last)}" in line, line
    assert not (tmp_path / "out").exists()


def test_lm_evals_own_options_work_include_path_metadata_seed_gen_kwargs_config_and_trackio(tiny_model_dir, tmp_path):
    """eval_harness.py parses with `lm-eval run`'s own parser: --include_path, --metadata, --seed, --gen_kwargs, a
    --config YAML (the command line overrides it, as lm_eval does) and the tracker options, which it refused with
    "unknown option" before, reach lm-eval and show in its results (and trackio's local database)."""
    pytest.importorskip("trackio")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    local_task = ROOT / "edugpt/eval/tasks/hellaswag_local.yaml"
    (tasks / "my_task.yaml").write_text(f"include: {local_task}\ntask: my_hellaswag\n")
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("tasks: [my_hellaswag]\nlimit: 5\nbatch_size: 2\nnum_fewshot: 0\n")
    out = tmp_path / "eval"
    env = {"TRACKIO_DIR": str(tmp_path / "trackio")}
    metadata = json.dumps({"hellaswag_file": str(SMOKE_FILE), "max_items": 20})  # read by the task's loader
    proc = run_script("eval_harness.py", "--model", tiny_model_dir, "--config", recipe, "--include_path", tasks,
                      "--metadata", metadata, "--seed", "7", "--gen_kwargs", "temperature=0", "--limit", "3",
                      "--trackio_args", "project=edugpt-eval", "name=tiny", "--output_dir", out, env=env, check=True)
    [results_path], _ = results_files(out)
    results = json.loads(results_path.read_text())
    assert results["n-samples"]["my_hellaswag"] == {"original": 20, "effective": 3}  # --metadata's file, cut to 20
    config = results["config"]
    assert config["limit"] == 3 and config["batch_size"] == 2 and results["n-shot"]["my_hellaswag"] == 0
    assert [config[f"{k}_seed"] for k in ("random", "numpy", "torch", "fewshot")] == [7, 7, 7, 7]
    assert config["gen_kwargs"] == {"temperature": 0}
    assert "limit: 3" in proc.stdout

    script = ("import json; from trackio.sqlite_storage import SQLiteStorage; "
              "print(json.dumps(SQLiteStorage.get_logs('edugpt-eval', 'tiny')))")
    import os
    import subprocess
    import sys

    logs = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, check=True)
    logged = json.loads(logs.stdout.strip().splitlines()[-1])
    assert any(r.get("my_hellaswag/acc") == results["results"]["my_hellaswag"]["acc,none"] for r in logged), logged


@pytest.mark.parametrize(("argv", "message"), [
    (["--seed", "1,2,3,4,5"], "--seed"),
    (["--log_samples"], "--output_path"),  # lm-eval's own check, through its EvaluatorConfig
    (["--gen_kwargs", "temperature"], "expected `key=value`"),
    (["--limit", "0"], "--limit must be"),
    (["--model_args", '{"dtype": '], "--model_args is not valid JSON"),
    (["--tasks", "hellaswag", "--include_pat", "x"], "did you mean --include_path"),
])
def test_a_bad_lm_eval_option_is_one_line_before_anything_loads(tiny_model_dir, tmp_path, capsys, argv, message):
    code, _, line = run_eval_harness(["--model", str(tiny_model_dir), *argv], capsys)
    assert code == 2 and message in line, line


def test_a_recipe_key_lm_eval_does_not_know_is_one_line_with_the_closest_names(tiny_model_dir, tmp_path, capsys):
    recipe = tmp_path / "eval.yaml"
    recipe.write_text("tasks: hellaswag\nnum_fewshots: 0\n")
    code, _, line = run_eval_harness(["--model", str(tiny_model_dir), "--config", str(recipe)], capsys)
    assert code == 2 and "line 2: unknown key 'num_fewshots' (did you mean num_fewshot" in line, line

"""eval_harness.py as a user runs it: results on a saved checkpoint, and one clear error for each bad input."""

from __future__ import annotations

import json

import pytest

from conftest import run_script
from edugpt.errors import EduGPTError
from edugpt.tasks.hellaswag_local import SMOKE_FILE

pytestmark = pytest.mark.slow


def test_writes_lm_eval_results_and_table(tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    proc = run_script("eval_harness.py", "--model", tiny_model_dir, "--tasks", "hellaswag", "--limit", "8",
                      "--batch_size", "4", "--hellaswag_file", SMOKE_FILE, "--output_dir", out, "--log_samples",
                      check=True)
    results = json.loads((out / "results.json").read_text())
    metrics = results["results"]["hellaswag_local"]
    assert results["n-samples"]["hellaswag_local"] == {"original": 200, "effective": 8}
    assert 0 <= metrics["acc,none"] <= 1 and 0 <= metrics["acc_norm,none"] <= 1
    table = (out / "results.md").read_text()
    assert f"| hellaswag_local | acc | {metrics['acc,none']:.4f} | {metrics['acc_stderr,none']:.4f} | 8 |" in table
    assert f"| hellaswag_local | acc_norm | {metrics['acc_norm,none']:.4f} |" in table
    assert table in proc.stdout  # the table is printed too
    samples = [json.loads(line) for line in (out / "samples_hellaswag_local.jsonl").open()]
    assert [s["doc_id"] for s in samples] == list(range(8))
    assert sum(s["acc"] for s in samples) / 8 == metrics["acc,none"]


def write_bad_file(path):
    row = {"activity_label": "x", "ctx_a": "A passage.", "ctx_b": "", "endings": ["a.", "b.", "c.", "d."], "label": 1}
    path.write_text(json.dumps(row) + "\n" + json.dumps({**row, "label": 7}) + "\n")
    return path


def write_image_model_dir(path):
    """A saved model that is no language model at all (ViT config + GPT-2 tokenizer files beside it)."""
    from transformers import ViTConfig

    from edugpt.tokenizer import load_tokenizer

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


def test_results_never_overwrite_an_earlier_evaluation(tiny_model_dir, tmp_path):
    """A non-empty --output_dir is refused before any evaluation runs, and left exactly as it was."""
    out = tmp_path / "eval"
    out.mkdir()
    (out / "results.json").write_text('{"earlier": true}')
    proc = run_script("eval_harness.py", "--model", tiny_model_dir, "--tasks", "hellaswag", "--limit", "2",
                      "--hellaswag_file", SMOKE_FILE, "--output_dir", out)
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "loglikelihood" not in proc.stderr.lower()
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]
    assert (out / "results.json").read_text() == '{"earlier": true}'


def test_write_results_fills_an_empty_folder_and_refuses_a_full_one(tmp_path):
    from edugpt.evaluation import RESULTS_JSON, write_results

    results = {"results": {}, "configs": {}, "n-samples": {}, "versions": {}, "higher_is_better": {}}
    out = tmp_path / "eval"
    out.mkdir()
    write_results(results, out)
    assert (out / RESULTS_JSON).is_file()
    with pytest.raises(EduGPTError, match="already exists and is not empty"):
        write_results(results, out)

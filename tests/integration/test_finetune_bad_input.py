"""finetune/sft.py and finetune/dpo.py refuse damaged input before the run's lifecycle writes anything: text that is
not UTF-8 in the data, a base model whose weights or config.json are damaged. Each is one `error:` line, exit status
2, and no output_dir at all (today's traps: a UnicodeDecodeError traceback from inside `datasets.map`, and a
safetensors traceback after run_config.json and the lock file were already written)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from factories import ROOT

from edugpt.config.cli import run
from edugpt.errors import EduGPTError
from edugpt.model.chat import add_chat_template
from edugpt.train.chat_data import load_finetune_dataset

NOT_UTF8 = "caf\udce9"  # written with surrogateescape: the byte 0xE9 alone, Latin-1's "é", as a bare byte


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def write_rows(path: Path, rows: list[dict]) -> Path:
    """A .jsonl file whose text is written with surrogateescape, so NOT_UTF8 becomes the single byte 0xE9."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
                     .encode("utf-8", "surrogateescape"))
    return path


def sft_rows(bad_row: int | None = None) -> list[dict]:
    rows = [{"messages": [user(f"What is {n} + {n}?"), assistant(f"It is {2 * n}.")]} for n in range(4)]
    if bad_row is not None:
        rows[bad_row]["messages"][1]["content"] = f"Un {NOT_UTF8} au lait."
    return rows


def dpo_rows(bad_row: int | None = None) -> list[dict]:
    rows = [{"prompt": [user(f"What is {n} + {n}?")], "chosen": [assistant(f"{2 * n}.")],
             "rejected": [assistant(f"{2 * n + 1}.")]} for n in range(4)]
    if bad_row is not None:
        rows[bad_row]["prompt"][0]["content"] = f"Un {NOT_UTF8}?"
    return rows


def script_main(stage: str):
    spec = importlib.util.spec_from_file_location(f"_{stage}_script", ROOT / "finetune" / f"{stage}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def chat_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with edugpt's chat template: what DPO takes (SFT's output)."""
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("chat") / "model"
    shutil.copytree(tiny_model_dir, path)
    add_chat_template(AutoTokenizer.from_pretrained(path)).save_pretrained(path)
    return path


def refuse(stage: str, argv: list[str], capsys) -> str:
    """Run the script as its `__main__` guard does; return its one error line (after checking exit status 2)."""
    with pytest.raises(SystemExit) as exit_info:
        run(lambda: script_main(stage)(argv))
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err, err[-3000:]
    [line] = [line for line in err.splitlines() if line.startswith("error: ")]
    return line


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_text_that_is_not_utf8_names_the_row_whatever_the_format(stage, tmp_path):
    """`datasets` reads a .jsonl's bytes into string columns unchecked and decodes them only when a row is read: the
    row that is not UTF-8 is named, for a file and for a dataset folder, in one process or several."""
    rows = (sft_rows if stage == "sft" else dpo_rows)(bad_row=2)
    file = write_rows(tmp_path / "data.jsonl", rows)
    folder = write_rows(tmp_path / "folder" / "train.jsonl", rows).parent
    for data in (file, folder):
        with pytest.raises(EduGPTError, match=rf"{data.name}' row 3: its text is not UTF-8 .*save the data as UTF-8"):
            load_finetune_dataset(str(data), stage)
    # Several processes: in a fresh interpreter, since forking this threaded test process (servers and pushers of
    # earlier tests) can deadlock a pool worker on a lock another thread held at the fork.
    code = ("import sys; from edugpt.config.cli import run; from edugpt.train.chat_data import load_finetune_dataset; "
            "run(lambda: load_finetune_dataset(sys.argv[1], sys.argv[2], num_proc=2))")
    proc = subprocess.run([sys.executable, "-c", code, str(file), stage], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert re.search(rf"{file.name}' row 3: its text is not UTF-8 .*save the data as UTF-8", proc.stderr.splitlines()[-1])


@pytest.mark.parametrize(("stage", "where"), [("sft", "file"), ("dpo", "folder")])
def test_non_utf8_data_is_one_error_line_and_no_output_dir(stage, where, tiny_model_dir, chat_model, tmp_path, capsys):
    rows = (sft_rows if stage == "sft" else dpo_rows)(bad_row=1)
    data = write_rows(tmp_path / "data" / ("rows.jsonl" if where == "file" else "train.jsonl"), rows)
    out = tmp_path / "out"
    model = tiny_model_dir if stage == "sft" else chat_model
    line = refuse(stage, ["--config", f"configs/{stage}_smoke.yaml", "--model_name_or_path", str(model),
                          "--dataset_name", str(data if where == "file" else data.parent), "--output_dir", str(out)],
                  capsys)
    assert "row 2: its text is not UTF-8" in line, line
    assert not out.exists()


def damage(model: Path, how: str) -> str:
    """Damage a copy of a saved model as an interrupted copy or a bad edit would; returns what the error names."""
    if how == "truncated_weights":
        weights = model / "model.safetensors"
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
        return f"{weights} is damaged"
    if how == "invalid_config":
        config = model / "config.json"
        config.write_bytes(config.read_bytes()[:40])
        return f"'{config}' is not valid JSON"
    if how == "config_without_model_type":
        (model / "config.json").write_text(json.dumps({"n_layer": 2}))
        return "has no model_type"
    raise ValueError(how)


@pytest.mark.parametrize("stage", ["sft", "dpo"])
@pytest.mark.parametrize("how", ["truncated_weights", "invalid_config", "config_without_model_type"])
def test_damaged_base_model_is_refused_before_the_run_writes_anything(stage, how, tiny_model_dir, chat_model,
                                                                      tmp_path, capsys):
    """The base model (for DPO also its frozen reference, loaded from the same folder) is checked before
    TrainingRun.begin: no run_config.json, no lock file, no output_dir."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir if stage == "sft" else chat_model, model)
    expected = damage(model, how)
    before = {p.name: p.read_bytes() for p in model.iterdir()}
    out = tmp_path / "out"
    line = refuse(stage, ["--config", f"configs/{stage}_smoke.yaml", "--model_name_or_path", str(model),
                          "--output_dir", str(out)], capsys)
    assert expected in line, line
    assert not out.exists()
    assert {p.name: p.read_bytes() for p in model.iterdir()} == before


def test_a_chat_template_file_that_is_not_utf8_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    template = tmp_path / "template.jinja"
    template.write_bytes(b"{% for m in messages %}\xff{% endfor %}")
    out = tmp_path / "out"
    line = refuse("sft", ["--config", "configs/sft_smoke.yaml", "--model_name_or_path", str(tiny_model_dir),
                          "--chat_template_path", str(template), "--output_dir", str(out)], capsys)
    assert "chat_template_path" in line and "is not UTF-8 text" in line, line
    assert not out.exists()

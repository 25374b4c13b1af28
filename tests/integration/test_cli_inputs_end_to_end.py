"""train_hf.py's inputs that are checked before the run begins: a bad --tokenizer or --hellaswag_file is one error and"""

from __future__ import annotations

import pytest
from factories import ROOT, load_train_main, tiny_args

from edugpt.errors import EduGPTError

HELLASWAG = ["--hellaswag_steps", "4", "--hellaswag_limit", "4"]


def _bad_tokenizer(tmp_path, kind):
    folder = tmp_path / "tok"
    folder.mkdir()
    if kind == "garbage tokenizer.json":
        (folder / "tokenizer.json").write_bytes(b"\x00\xffnot json")
        (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "GPT2TokenizerFast"}')
    return str(folder if kind != "missing" else tmp_path / "absent")


@pytest.mark.parametrize("kind", ["missing", "empty folder", "garbage tokenizer.json"])
def test_a_bad_tokenizer_is_refused_before_the_run_writes_anything(data_dir, tmp_path, kind):
    output_dir = tmp_path / "run"
    with pytest.raises(EduGPTError, match="could not load tokenizer"):
        load_train_main()(tiny_args(data_dir, output_dir, "--tokenizer", _bad_tokenizer(tmp_path, kind)))
    assert not output_dir.exists()  # no run_config.json, data_manifest.json or lock left behind


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist"),
    (b"\x1f\x8b\x08\x00\xff\xfe binary", "is not UTF-8 text"),
    (b'{"text": "a web page, not a HellaSwag item"}\n', "line 1"),
])
def test_a_bad_hellaswag_file_is_refused_before_the_run_writes_anything(data_dir, tmp_path, content, message):
    path = tmp_path / "hellaswag.jsonl"
    if content is not None:
        path.write_bytes(content)
    output_dir = tmp_path / "run"
    output_dir.mkdir()  # an empty folder stays empty
    with pytest.raises(EduGPTError, match=f"HellaSwag file .*{message}"):
        load_train_main()(tiny_args(data_dir, output_dir, *HELLASWAG, "--hellaswag_file", str(path)))
    assert list(output_dir.iterdir()) == []


def test_in_loop_hellaswag_from_an_offline_hub_is_refused_before_the_run_writes_anything(data_dir, tmp_path):
    recipe = tmp_path / "no-file.yaml"  # the smoke recipe without its local hellaswag_file: lm-eval's Hub task
    recipe.write_text("".join(line for line in (ROOT / "configs" / "smoke.yaml").read_text().splitlines(True)
                              if not line.startswith("hellaswag_file:")))
    output_dir = tmp_path / "run"
    args = tiny_args(data_dir, output_dir, *HELLASWAG)
    args[args.index("configs/smoke.yaml")] = str(recipe)
    with pytest.raises(EduGPTError, match="hellaswag_steps needs HellaSwag from the Hugging Face Hub, which is offline"):
        load_train_main()(args)
    assert not output_dir.exists()

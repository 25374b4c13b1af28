"""prepare_data.py as a user runs it: the demo command, --verify, exit codes, and nothing partial on failure."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from factories import run_script

pytestmark = pytest.mark.slow


def test_demo_command_then_verify_then_tamper(tmp_path):
    out = tmp_path / "data"
    proc = run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", out, "--seq_len", "128",
                      "--cache_dir", tmp_path / "cache", timeout=180, check=True)
    assert "tokens/s" in proc.stdout and f"manifest: {out / 'manifest.json'}" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["tokens"] > 300_000 and manifest["splits"]["validation"]["blocks"] > 0
    assert sorted(p.name for p in out.iterdir()) == ["dataset_dict.json", "doc_ids.parquet", "manifest.json",
                                                     "train", "validation"]

    ok = run_script("prepare_data.py", "--verify", out, timeout=120)
    assert ok.returncode == 0 and ok.stdout.startswith("ok:"), ok.stderr

    ids = pq.read_table(out / "doc_ids.parquet").to_pylist()
    ids[0]["split"] = "validation" if ids[0]["split"] == "train" else "train"  # move one document across
    pq.write_table(pa.Table.from_pylist(ids), out / "doc_ids.parquet")
    bad = run_script("prepare_data.py", "--verify", out, timeout=120)
    assert bad.returncode == 2 and "failed verification" in bad.stderr and "Traceback" not in bad.stderr


def test_bad_input_exits_2_with_one_line_and_leaves_nothing(tmp_path):
    rows = "".join(json.dumps({"id": f"d{i}", "text": f"tiny document {i}"}) + "\n" for i in range(5))
    (tmp_path / "tiny.jsonl").write_text(rows)
    proc = run_script("prepare_data.py", "--dataset", tmp_path / "tiny.jsonl", "--output_dir", tmp_path / "out",
                      "--seq_len", "64", "--val_fraction", "0.5", "--cache_dir", tmp_path / "cache", timeout=180)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: the ")
    assert "split would have 0 blocks" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "cache", "tiny.jsonl"]  # the lock file stays

    proc = run_script("prepare_data.py", "--dataset", "embedded", "--output_dir", tmp_path / "out",
                      "--val_fraction", "1.5", timeout=120)
    assert proc.returncode == 2 and "error: --val_fraction must be between 0 and 1" in proc.stderr

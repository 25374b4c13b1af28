"""Read and check a local jsonl file in HellaSwag's schema, for the `hellaswag_local` lm-eval task next to this file.

lm-eval imports this module by file path (`custom_dataset: !function hellaswag_local.load_hellaswag_jsonl`), and
edugpt imports it as `edugpt.eval.tasks.hellaswag_local`; both run the same checks, so a malformed file fails with the
line and field named instead of a KeyError deep inside lm-eval.
"""

from __future__ import annotations

import json
from pathlib import Path

from edugpt.errors import EduGPTError

SMOKE_FILE = Path(__file__).resolve().parents[2] / "assets" / "eval" / "python_docs_hellaswag_format_smoke.jsonl"
NUM_ENDINGS = 4  # HellaSwag always offers four endings
# The fields lm-eval's hellaswag `process_docs` reads; the rest of HellaSwag's schema is filled in when absent.
REQUIRED_TEXT_FIELDS = ("activity_label", "ctx_a", "ctx_b")
SCHEMA_HINT = "each line needs activity_label, ctx_a, ctx_b (strings), endings (4 strings) and label (0-3)"


def _bad(path: Path, line_no: int, problem: str) -> EduGPTError:
    return EduGPTError(f"HellaSwag file {path} line {line_no}: {problem}; fix that line ({SCHEMA_HINT}).")


def _check_row(row, path: Path, line_no: int) -> dict:
    if not isinstance(row, dict):
        raise _bad(path, line_no, f"expected a JSON object, got {type(row).__name__}")
    for field in REQUIRED_TEXT_FIELDS:
        if field not in row:
            raise _bad(path, line_no, f"field '{field}' is missing")
        if not isinstance(row[field], str):
            raise _bad(path, line_no, f"field '{field}' must be a string, got {type(row[field]).__name__}")
    if "endings" not in row:
        raise _bad(path, line_no, "field 'endings' is missing")
    endings = row["endings"]
    if not isinstance(endings, list) or not all(isinstance(e, str) for e in endings):
        raise _bad(path, line_no, "field 'endings' must be a list of strings")
    if len(endings) != NUM_ENDINGS:
        raise _bad(path, line_no, f"field 'endings' has {len(endings)} endings, HellaSwag items have {NUM_ENDINGS}")
    if any(not e.strip() for e in endings):
        raise _bad(path, line_no, "field 'endings' contains an empty ending")
    if "label" not in row:
        raise _bad(path, line_no, "field 'label' is missing")
    label = row["label"]
    # The Hub's HellaSwag stores the label as a string ("2"), the original jsonl as an int (2): accept both.
    if isinstance(label, bool) or not (isinstance(label, int) or (isinstance(label, str) and label.isdigit())):
        raise _bad(path, line_no, f"field 'label' must be an integer 0-{NUM_ENDINGS - 1}, got {label!r}")
    if not 0 <= int(label) < len(endings):
        raise _bad(path, line_no, f"field 'label' is {label}, out of range 0-{len(endings) - 1}")
    return {
        "ind": row.get("ind", line_no - 1),
        "activity_label": row["activity_label"],
        "ctx_a": row["ctx_a"],
        "ctx_b": row["ctx_b"],
        "ctx": row.get("ctx", f"{row['ctx_a']} {row['ctx_b']}".strip()),
        "endings": endings,
        "source_id": str(row.get("source_id", "")),
        "split": str(row.get("split", "val")),
        "split_type": str(row.get("split_type", "")),
        "label": str(int(label)),  # the Hub's type, so the documents match Rowan/hellaswag's field for field
    }


def read_hellaswag_jsonl(path: str | Path, max_items: int | None = None) -> list[dict]:
    """The file's items as HellaSwag rows; raises EduGPTError naming the line and field of the first bad item."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise EduGPTError(f"HellaSwag file {path} {what}; pass a jsonl file in HellaSwag's schema.")
    rows = []
    with path.open("rb") as f:  # bytes, so a binary file is reported with its line instead of a UnicodeDecodeError
        for line_no, raw in enumerate(f, start=1):
            if max_items is not None and len(rows) >= max_items:
                break
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise EduGPTError(f"HellaSwag file {path} line {line_no} is not UTF-8 text (a binary file?); pass a "
                                  "jsonl file in HellaSwag's schema.") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise _bad(path, line_no, f"not valid JSON ({err.msg})") from None
            rows.append(_check_row(row, path, line_no))
    if not rows:
        raise EduGPTError(f"HellaSwag file {path} has no items; pass a jsonl file with one HellaSwag item per line.")
    return rows


def load_hellaswag_jsonl(hellaswag_file: str | None = None, max_items: int | None = None, **_metadata):
    """lm-eval `custom_dataset` hook: a DatasetDict with one `validation` split read from `hellaswag_file`.

    lm-eval passes the task's metadata (model_args, version, ...) as keyword arguments too; they are ignored.
    `max_items` keeps only the first items (what lm-eval's `limit` would score), so a short in-training evaluation
    does not preprocess a whole 10k-item file every time.
    """
    import datasets

    rows = read_hellaswag_jsonl(hellaswag_file or SMOKE_FILE, max_items=max_items)
    return datasets.DatasetDict({"validation": datasets.Dataset.from_list(rows)})

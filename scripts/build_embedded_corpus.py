"""Harvest the embedded offline corpus from Python's own documentation, once, in FineWeb-Edu's schema.

    python scripts/build_embedded_corpus.py                       # rewrites edugpt/assets/corpus/python-docs.parquet

Run it with the interpreter whose documentation you want (the committed file came from CPython 3.11.7). Sources:
  * `pydoc_data.topics` — the language reference and library topics that `help()` shows (one document per topic);
  * the standard library's docstrings, read with `ast` (nothing is imported or executed): one document per module,
    its docstring followed by the docstrings of its public classes, functions and methods.
Test suites, codec stubs (`encodings`) and modules with under MIN_CHARS characters of docstrings are left out.
Both sources are © Python Software Foundation under the PSF License (copied next to the corpus as LICENSE.txt).

The output is deterministic for a given Python build: documents in a fixed order, ids are UUID5s of their `url`.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import platform
import shutil
import sys
import sysconfig
import uuid
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from edugpt.model.tokenizer import gpt2_tiktoken

OUT_DIR = Path(__file__).resolve().parents[1] / "edugpt" / "assets" / "corpus"
# Modules with less documentation than this are mostly one-liners ("Common operations on Posix pathnames.").
MIN_CHARS = 400
SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "encodings", "pydoc_data", "__pycache__", "__phello__"}
PYTHON_VERSION = ".".join(map(str, sys.version_info[:3]))
# FineWeb's `date` is the crawl time; ours is when this interpreter (and so its documentation) was built.
BUILD_DATE = datetime.strptime(" ".join(platform.python_build()[1].split()), "%b %d %Y %H:%M:%S").strftime(
    "%Y-%m-%dT%H:%M:%SZ")
# FineWeb-Edu's columns and types; `language_score`, `score`, `int_score` come from classifiers we do not run, so null.
SCHEMA = pa.schema([
    ("text", pa.string()), ("id", pa.string()), ("dump", pa.string()), ("url", pa.string()), ("date", pa.string()),
    ("file_path", pa.string()), ("language", pa.string()), ("language_score", pa.float64()),
    ("token_count", pa.int64()), ("score", pa.float64()), ("int_score", pa.int64()),
])


def pydoc_topic_documents():
    import pydoc_data.topics

    for key in sorted(pydoc_data.topics.topics):
        yield f"pydoc://topics/{key}", "Lib/pydoc_data/topics.py", pydoc_data.topics.topics[key].strip()


def _definition_docs(body, prefix: str = ""):
    """Docstrings of public classes/functions in `body` (recursing into classes), as "name(args)\\n\\ndocstring"."""
    for node in body:
        if not isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        if isinstance(node, ast.ClassDef):
            bases = ", ".join(ast.unparse(b) for b in node.bases)
            header = f"class {prefix}{node.name}" + (f"({bases})" if bases else "")
        else:
            header = f"{prefix}{node.name}({ast.unparse(node.args)})"
        if doc:
            yield f"{header}\n\n{inspect.cleandoc(doc)}"
        if isinstance(node, ast.ClassDef):
            yield from _definition_docs(node.body, prefix=f"{prefix}{node.name}.")


def stdlib_module_documents():
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if SKIP_PARTS.intersection(rel.parts) or rel.name.startswith("test_"):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):  # lib2to3 grammar fixtures and the like
            continue
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        parts = [ast.get_docstring(tree) or "", *_definition_docs(tree.body)]
        body = "\n\n".join(p.strip() for p in parts if p.strip())
        if len(body) >= MIN_CHARS:
            yield f"pydoc://module/{module}", f"Lib/{rel.as_posix()}", f"{module}\n\n{body}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    enc = gpt2_tiktoken()
    rows = {name: [] for name in SCHEMA.names}
    for url, file_path, text in [*pydoc_topic_documents(), *stdlib_module_documents()]:
        rows["text"].append(text)
        rows["id"].append(f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, url)}>")
        rows["dump"].append(f"python-{PYTHON_VERSION}-docs")
        rows["url"].append(url)
        rows["date"].append(BUILD_DATE)
        rows["file_path"].append(file_path)
        rows["language"].append("en")
        rows["token_count"].append(len(enc.encode_ordinary(text)))
        for column in ("language_score", "score", "int_score"):
            rows[column].append(None)
    table = pa.table(rows, schema=SCHEMA)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    out = args.output_dir / "python-docs.parquet"
    pq.write_table(table, out, compression="zstd", compression_level=19)
    shutil.copyfile(Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt", args.output_dir / "LICENSE.txt")
    tokens = sum(rows["token_count"])
    print(f"wrote {out}: {table.num_rows} documents, {tokens:,} GPT-2 tokens, {out.stat().st_size / 1e6:.2f} MB "
          f"(Python {PYTHON_VERSION})")


if __name__ == "__main__":
    main()

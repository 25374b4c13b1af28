"""Numbers as the model card prints them, and the lookups in metrics.jsonl records its rows share.

The card (edugpt.report.card), its facts (edugpt.report.facts) and rows (edugpt.report.rows), and the page's Run tab
(edugpt.app.runs) format counts, losses and arguments here, so a number reads the same wherever it is shown. Records
are metrics.jsonl lines as edugpt.run.rundir reads them; they are not strictly ordered (samples at step 0 may come last).
"""

from __future__ import annotations

import json
from typing import Any

# Rows kept in by-step tables; longer histories are thinned evenly (first and last always kept), all are in metrics.jsonl.
MAX_TABLE_ROWS = 12


def human(n: float | None) -> str:
    """1234567 -> '1.23M' (token and parameter counts)."""
    if not isinstance(n, (int, float)) or isinstance(n, bool):
        return "—" if n is None else str(n)
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:g}"


def number_text(value: Any, digits: int = 4) -> str:
    """A logged value as the card's tables print it: 12,345 for counts, 0.1234 or 1.234e-05 for the rest."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, float) and value.is_integer() and abs(value) >= 100:
        value = int(value)  # counts logged as floats (TRL's num_tokens)
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 or abs(value) >= 1e4 else f"{value:.{digits}f}"


def argument_text(value: Any) -> str:
    """An argument as a recipe would spell it: 0.003 not 0.0030, 1337 not 1,337, dicts/lists as JSON."""
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    if isinstance(value, float) and not isinstance(value, bool):
        return f"{value:.6g}"
    return str(value)


def thin_rows(rows: list, limit: int = MAX_TABLE_ROWS) -> tuple[list, bool]:
    """At most `limit` rows, evenly spaced with the first and last kept, and whether any were dropped."""
    if len(rows) <= limit:
        return rows, False
    picks = sorted({round(i * (len(rows) - 1) / (limit - 1)) for i in range(limit)})
    return [rows[i] for i in picks], True


def last_record(records: list[dict], key: str) -> dict | None:
    """The last record that logged a number under `key`, None when none did."""
    for record in reversed(records):
        if isinstance(record.get(key), (int, float)):
            return record
    return None


def median_value(records: list[dict], key: str) -> float | None:
    """The median of the numbers logged under `key` (the upper one of an even count), None when none were."""
    values = sorted(r[key] for r in records if isinstance(r.get(key), (int, float)))
    return values[len(values) // 2] if values else None


def final_tokens(records: list[dict]) -> dict | None:
    """The record with the most tokens seen (records are not strictly ordered: samples at step 0 may come last)."""
    with_tokens = [r for r in records if isinstance(r.get("tokens"), (int, float)) and r["tokens"] > 0]
    return max(with_tokens, key=lambda r: (r["tokens"], r["step"])) if with_tokens else None

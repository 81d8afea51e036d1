"""Query results as plain data: what `--json` prints and what the web UI downloads.

One function per result (`match_json`, `nearest_json`, `hits_json`) gives the JSON-ready
dictionary; `records_csv` writes its list of rows (matches, neighbours, hits) as CSV with
the same columns, a list (a match's per-token counts) as its numbers joined by spaces.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any


def match_json(result: Any, span_text: str) -> dict:
    """A `MatchResult` as plain data: the pattern and the ranked matches."""
    p = result.pattern

    def one(m) -> dict:
        return {"doc": m.document, "start": m.start, "end": m.end, "text": m.text,
                "left": m.left, "right": m.right, "overlap": m.overlap, "extra": m.extra,
                "counts": list(m.counts), "is_query": m.is_query}

    return {
        "pattern": {"state": p.state, "layer": p.layer, "kind": p.kind, "units": list(p.units),
                    "threshold": p.threshold, "sign": p.sign, "span": [p.start, p.end],
                    "doc": p.document, "text": span_text, "pad_left": p.pad_left,
                    "pad_right": p.pad_right, "how": p.how},
        "matches": [one(m) for m in result.matches],
        "query": one(result.query),
        "min_length": result.min_length,
        "max_length": result.max_length,
        "n_candidates": result.n_candidates,
        "length_histogram": {str(k): v for k, v in result.length_histogram.items()},
    }


def nearest_json(neighbors: Sequence[Any], span: tuple[int, int], span_text: str, layer: int,
                 kind: str, exact: bool) -> dict:
    """Nearest stored states (`Index.nearest`) as plain data, with the span they are near."""
    return {"query": {"span": [span[0], span[1]], "text": span_text, "layer": layer,
                      "kind": kind, "exact": exact},
            "neighbors": [asdict(n) for n in neighbors]}


def hits_json(result: Any, n_tokens: int) -> dict:
    """A unit's threshold hits or top activations (`NeuronHits`) as plain data."""
    data = asdict(result)
    data["n_tokens"] = n_tokens
    return data


def records_csv(records: Sequence[dict]) -> str:
    """Rows of plain data as CSV: a header of the first row's keys, then one line per row."""
    if not records:
        return ""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: " ".join(map(str, v)) if isinstance(v, (list, tuple)) else v
                         for k, v in record.items()})
    return out.getvalue()

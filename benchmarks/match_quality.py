"""What the top matches look like: one-token spans, spans at a document edge, and agreement
with LSTMVis's own algorithm (`benchmarks/lstmvis_port.py`, precise mode).

For a few selections (3-token spans inside a document, away from its edges, whose pattern has
5 to 40 units), the top 50 of `Index.match` by the default rule (at least 2 tokens for a
span of 2 or more) and by `min_length=1` are counted: how many are one token long, how many
start or end at a document's first or last token, and how many spans they share with the
top 50 of LSTMVis's precise mode on the same states (and how many of those get the same
|A ∩ S|).

    python benchmarks/match_quality.py --index parens-index --state layers.0.c --threshold 0.2
    python benchmarks/match_quality.py --synthetic 1000000
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic  # noqa: E402
from lstmvis_port import query_similar_activations  # noqa: E402

from lstmsearch.index import Index, open_index  # noqa: E402

SPAN = 3
TOP = 50


def selections(index: Index, state: str, threshold: float, count: int, seed: int) -> list:
    """Patterns of 5..40 units on 3-token spans inside a document, away from its edges."""
    rng = np.random.default_rng(seed)
    starts, found = index.doc_starts, []
    for _ in range(20_000):
        start = int(rng.integers(1, index.n_tokens - SPAN))
        d = int(np.searchsorted(starts, start, side="right") - 1)
        if start - 1 <= starts[d] or start + SPAN + 1 > starts[d + 1]:
            continue
        pattern = index.select(start, start + SPAN, threshold, state=state)
        if 5 <= len(pattern.units) <= 40:
            found.append(pattern)
            if len(found) == count:
                break
    return found


def describe(index: Index, matches) -> tuple[int, int]:
    """(one-token spans, spans at a document edge) among matches."""
    starts = index.doc_starts
    one = sum(m.end - m.start == 1 for m in matches)
    edge = sum(m.start == starts[m.document] or m.end == starts[m.document + 1]
               for m in matches)
    return one, edge


def report(index: Index, state: str, threshold: float, count: int, seed: int) -> None:
    store = index.store(state)
    patterns = selections(index, state, threshold, count, seed)
    print(f"{index.path.name}: {index.n_tokens:,} tokens, {index.n_docs:,} documents, "
          f"{state}, threshold {threshold:g}, {len(patterns)} selections "
          f"(load average {os.getloadavg()[0]:.1f})")
    print(f"  {'span':>18s} {'|S|':>4s}  {'min_length=1: 1-token/edge/shared':>34s}"
          f"  {'default (>=2): 1-token/edge/shared (same |A∩S|)':>48s}")
    totals = np.zeros(7, np.int64)
    for p in patterns:
        lstmvis = query_similar_activations(store, list(p.units), p.threshold, p.sign,
                                            mode="precise", n_results=TOP)
        theirs = {(r.start, r.end): r.intersection for r in lstmvis}
        row = []
        for min_length in (1, None):
            result = index.match(p, TOP, min_length=min_length, histogram=False)
            one, edge = describe(index, result.matches)
            shared = [m for m in result.matches if (m.start, m.end) in theirs]
            same = sum(theirs[(m.start, m.end)] == m.overlap for m in shared)
            row += [one, edge, len(shared), same]
        totals += np.array([1, *row[:3], *row[4:7]])
        print(f"  [{p.start:>7d}, {p.end:>7d}) {len(p.units):4d}  {row[0]:>14d}/{row[1]}/{row[2]:<17d}"
              f"  {row[4]:>22d}/{row[5]}/{row[6]} ({row[7]})")
    if len(patterns):
        n = totals[0]
        print(f"  mean of {n}: min_length=1 {totals[1] / n:.1f} one-token, {totals[2] / n:.1f} "
              f"at an edge, {totals[3] / n:.1f} shared with LSTMVis precise; default "
              f"{totals[4] / n:.1f} one-token, {totals[5] / n:.1f} at an edge, "
              f"{totals[6] / n:.1f} shared (of {TOP})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=None)
    parser.add_argument("--state", default=None, help="default: the first stored state")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--synthetic", type=int, default=None, metavar="TOKENS",
                        help="a synthetic index of this many tokens x 512 units instead")
    parser.add_argument("--selections", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.synthetic:
        tmp = Path(tempfile.mkdtemp(prefix="lstmsearch-quality-"))
        try:
            path = synthetic.build_index(tmp, args.synthetic, 512, args.seed, faiss=False)
            with open_index(path) as index:
                report(index, args.state or synthetic.STATE_NAME, args.threshold,
                       args.selections, args.seed)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    if args.index is not None:
        with open_index(args.index) as index:
            report(index, args.state or index.state_names[0], args.threshold,
                   args.selections, args.seed)


if __name__ == "__main__":
    main()

"""Nearest stored states to a span: ``Index.nearest(start, end, layer, kind, k)``.

The query is the mean of the span's stored states (one token: its own state). FAISS
proposes candidates; they are re-ranked by their exact Euclidean distance to the query on the
stored float16 values, ties by position, and the span's own positions are left out.

- Compressed FAISS indexes (the default, see indexer.nearest): each segment's `shortlist`
  nearest codes are re-ranked. The recall@10 of exactly this search against brute force is
  measured on every segment at build time and shown by `lstmsearch info`; a neighbour found
  is always at its exact distance, only a miss is possible.
- Exact FAISS indexes (`--exact-nearest`): an exhaustive search of the stored values, equal
  to brute force.
- `exact=True`, or an index built without FAISS: a scan of every stored state (brute force).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.kernels import candidate_distances, float16_table, run_tasks
from lstmsearch.limits import MAX_RESULTS
from lstmsearch.spans import DEFAULT_CONTEXT, check_count, check_span, contexts

if TYPE_CHECKING:
    from lstmsearch.reader import IndexReader
    from lstmsearch.store import StateStore

__all__ = ["Neighbor", "exact_distances", "nearest", "neighbor_key"]

OVERSAMPLE = 2
"""FAISS candidates fetched per neighbour wanted (plus `SPARE`), re-ranked exactly."""
SPARE = 32
RERANK_VALUES = 1 << 19
"""Stored values (candidates x units) re-ranked per segment of a compressed index: 1,024
candidates of 512 units, 8,192 of 64 (a narrow state's codes are coarser, its candidates
cheaper to measure)."""
SCAN_BLOCK = 1 << 15
"""Tokens per block of the exact scan used when there is no FAISS index."""


@dataclass(frozen=True)
class Neighbor:
    """A stored state near the query: its token, Euclidean distance and the text around it."""

    document: int
    start: int
    end: int  # start + 1: a neighbour is one token
    distance: float
    text: str
    left: str
    right: str


def neighbor_key(neighbor: Neighbor) -> tuple[float, int]:
    """Sort key of neighbours: nearest first, ties by position."""
    return (neighbor.distance, neighbor.start)


def mean_state(store: StateStore, start: int, end: int) -> np.ndarray:
    """The mean of the stored states of tokens ``[start, end)``, float64 (dim,)."""
    return np.asarray(store.block(slice(None), start, end), dtype=np.float64).mean(axis=1)


def exact_distances(store: StateStore, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Euclidean distances (float64) from ``query`` to the stored states at ``positions``,
    read in place segment by segment by a compiled loop, the segments on every core."""
    positions = np.asarray(positions, dtype=np.int64).reshape(-1)
    if positions.size and (positions.min() < 0 or positions.max() >= store.n_tokens):
        bad = positions[(positions < 0) | (positions >= store.n_tokens)][0]
        raise ValueError(f"position {bad} out of range: the index has tokens "
                         f"0..{store.n_tokens - 1}")
    order = np.argsort(positions, kind="stable")
    ordered = positions[order]
    query = np.ascontiguousarray(query, dtype=np.float64)
    squared = np.empty(len(ordered))
    tasks = []
    for first, view in store.parts(slice(None), ordered):
        a, b = np.searchsorted(ordered, [first, first + view.shape[1]])
        if a < b:
            tasks.append((view.view(np.uint16), ordered[a:b] - first, query, float16_values(),
                          squared[a:b]))
    run_tasks(candidate_distances, tasks)
    out = np.empty(len(positions))
    out[order] = np.sqrt(squared)
    return out


@cache
def float16_values() -> np.ndarray:
    """The float32 value of every float16 bit pattern (what the compiled loops read)."""
    return float16_table()


def shortlist(wanted: int, dim: int) -> int:
    """Codes re-ranked per segment of a compressed index of `dim` units when `wanted`
    candidates are wanted (the build measures recall@10 with `shortlist(10, dim)`)."""
    return max(16 * wanted, RERANK_VALUES // max(1, dim))


def has_faiss(index: IndexReader, store: StateStore) -> bool:
    """Whether the index holds a FAISS index for this state."""
    found = index.sql("SELECT count(*) AS n FROM faiss_indexes WHERE name = ?", [store.name])
    return bool(found.rows[0][0])


def faiss_candidates(index: IndexReader, store: StateStore, query: np.ndarray,
                     n: int) -> np.ndarray:
    """Positions FAISS proposes for `query`: the `n` nearest of exact indexes, the
    `shortlist(n, dim)` nearest codes of each segment's compressed one."""
    found = index.faiss(store.layer, store.kind)
    q = query[None, :].astype(np.float32)
    if found.joined is not None:
        searches = [(0, found.joined, min(n, int(found.joined.ntotal)))]
    else:
        searches = [(start, part, min(shortlist(n, store.dim) if compressed else n,
                                      int(part.ntotal)))
                    for start, part, compressed in
                    zip(found.starts, found.parts, found.compressed, strict=True)]

    def search(start: int, part, wanted: int) -> np.ndarray:
        _, ids = part.search(q, wanted)
        return ids[0][ids[0] >= 0].astype(np.int64) + start

    out = run_tasks(search, [s for s in searches if s[2] > 0])  # FAISS frees the GIL
    if not out:
        return np.zeros(0, dtype=np.int64)
    ids = np.concatenate(out)
    return ids[ids < store.n_tokens]


def scan_candidates(store: StateStore, query: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` positions nearest to ``query`` by a float32 scan of every stored state."""
    q = query.astype(np.float32)
    best_pos = np.zeros(0, dtype=np.int64)
    best_d = np.zeros(0, dtype=np.float32)
    for a in range(0, store.n_tokens, SCAN_BLOCK):
        b = min(store.n_tokens, a + SCAN_BLOCK)
        block = np.asarray(store.block(slice(None), a, b), dtype=np.float32)
        d = ((block - q[:, None]) ** 2).sum(axis=0)
        pos = np.concatenate([best_pos, np.arange(a, b)])
        d = np.concatenate([best_d, d])
        keep = np.argsort(d, kind="stable")[:n]
        best_pos, best_d = pos[keep], d[keep]
    return best_pos


def nearest(
    index: IndexReader,
    start: int,
    end: int,
    layer: int | str,
    kind: str | None = None,
    k: int = 20,
    context: int = DEFAULT_CONTEXT,
    exact: bool = False,
) -> list[Neighbor]:
    """The ``k`` stored states nearest to the mean state of ``[start, end)`` (outside the
    span), nearest first, with ``context`` tokens of text either side; ``exact`` scans every
    stored state instead of asking FAISS (brute force)."""
    store = index.store(layer, kind)
    start, end, _ = check_span(index.doc_starts, start, end)
    k = check_count("k", k, maximum=MAX_RESULTS)
    query = mean_state(store, start, end)
    wanted = OVERSAMPLE * (k + end - start) + SPARE
    if not exact and has_faiss(index, store):
        candidates = faiss_candidates(index, store, query, wanted)
    else:
        candidates = scan_candidates(store, query, wanted)
    candidates = np.unique(candidates[(candidates < start) | (candidates >= end)])
    distances = exact_distances(store, query, candidates)
    order = np.lexsort((candidates, distances))[:k]
    chosen, chosen_d = candidates[order], distances[order]
    docs = np.searchsorted(index.doc_starts, chosen, side="right") - 1
    texts = contexts(index, chosen, chosen + 1, context)
    return [
        Neighbor(int(d), int(p), int(p) + 1, float(dist), c.text, c.left, c.right)
        for p, d, dist, c in zip(chosen, docs, chosen_d, texts)
    ]

"""LSTMVis's match, ported: the baseline of the match benchmarks.

A port, written for this project, of the algorithm of LSTMVis's published
`LSTMDataHandler.query_similar_activations` (lstmdata/data_handler.py, Strobelt et al.),
run on the same stored states as lstmsearch. Step by step, as LSTMVis does it:

1. Threshold the columns of the selected cells over the first 500,000 tokens ("fast" mode)
   or all tokens ("precise"), a few cells at a time (5 per batch in fast mode; in precise
   mode as many as fit 5,000,000 values, at least 1), and sum them: the number of selected
   cells on at each token.
2. For k = |cells| down to 1, while fewer than 1,000 (fast) or 10,000 (precise) candidates
   are collected: clip the sums to k (in place, so they stay clipped), run-length encode
   them, and collect every run of value k that is at least 2 tokens long (or exactly
   `phrase_length`) as a candidate (length, position), keeping the first time a candidate is
   seen. With a left (right) constraint a candidate's score is k minus the value of the run
   before (after) it.
3. Sort the candidates by score (stable), keep the first 1,000 / 10,000.
4. For each: threshold all cells on the candidate and one token either side; a cell is
   active when it is on throughout the candidate and, where constrained, off on the token
   before (after) it. Its intersection and union with the selected cells are counted.
5. Rank by intersection descending, union ascending, length descending; return the first
   `n_results`.

What this port fixes or decides where LSTMVis's code is undefined: a candidate at the first
or last token has no neighbour there (LSTMVis's slice wraps or runs short); the missing
neighbour counts as off. LSTMVis collects each level's runs through a Python set, whose
order only matters for the ties cut by the candidate limit; here they are taken in position
order. "On" is lstmsearch's exact float16 test (`x >= threshold`), so both sides see the same
on/off matrix; LSTMVis knows no documents, so its runs and padding cross them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lstmsearch.query import is_on

FAST_TOKENS = 500_000
FAST_CELLS_PER_BATCH = 5
PRECISE_VALUES_PER_BATCH = 5_000_000
CANDIDATES = {"fast": 1_000, "precise": 10_000}
MIN_LENGTH = 2  # LSTMVis's cut_off


@dataclass(frozen=True)
class PortMatch:
    """One result of the port: tokens [start, end) and its counts against the cells."""

    start: int
    end: int
    intersection: int
    union: int


def run_lengths(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lengths, start positions, values) of the runs of equal values."""
    ends = np.append(np.flatnonzero(values[1:] != values[:-1]), values.size - 1)
    lengths = np.diff(np.append(-1, ends))
    return lengths, ends - lengths + 1, values[ends]


def summed_cells(store, cells: list[int], threshold: float, sign: int, mode: str) -> np.ndarray:
    """Step 1: how many of the cells are on at each of the scanned tokens."""
    stop = min(store.n_tokens, FAST_TOKENS) if mode == "fast" else store.n_tokens
    per_batch = (FAST_CELLS_PER_BATCH if mode == "fast"
                 else max(1, PRECISE_VALUES_PER_BATCH // stop))
    total = np.zeros(stop, np.int64)
    for a in range(0, len(cells), per_batch):
        batch = cells[a : a + per_batch]
        total += is_on(store.block(batch, 0, stop), threshold, sign).sum(axis=0)
    return total


def collect_candidates(sums: np.ndarray, n_cells: int, phrase_length: int,
                       constrain_left: bool, constrain_right: bool, limit: int
                       ) -> list[tuple[int, int, int]]:
    """Steps 2 and 3: candidates as (length, position, score), best scores first."""
    clipped = sums.copy()
    found: dict[tuple[int, int], tuple[int, int, int]] = {}
    level = n_cells
    while level > 0 and len(found) < limit:
        if level != n_cells:
            clipped[clipped > level] = level
        lengths, positions, values = run_lengths(clipped)
        if phrase_length > 0:
            chosen = np.flatnonzero((values == level) & (lengths == phrase_length))
        else:
            chosen = np.flatnonzero((values == level) & (lengths >= MIN_LENGTH))
        # the run before (after) each one; numpy wraps index -1 as LSTMVis's code does
        before = values[chosen - 1]
        after = values[(chosen + 1) % values.size]
        if constrain_left and constrain_right:
            scores = level - after - before
        elif constrain_left:
            scores = level - before
        elif constrain_right:
            scores = level - after
        else:
            scores = np.zeros(chosen.size, np.int64)
        for i, score in zip(chosen.tolist(), scores.tolist()):
            key = (int(lengths[i]), int(positions[i]))
            found.setdefault(key, (key[0], key[1], int(score)))
        level -= 1
    ranked = sorted(found.values(), key=lambda c: c[2], reverse=True)
    return ranked[:limit]


def query_similar_activations(store, cells: list[int], threshold: float, sign: int = 1, *,
                              mode: str = "fast", phrase_length: int = 0,
                              constrain_left: bool = True, constrain_right: bool = False,
                              n_results: int = 50) -> list[PortMatch]:
    """LSTMVis's ranked matches of `cells` on `store` (a StateStore: unit-major columns)."""
    sums = summed_cells(store, cells, threshold, sign, mode)
    candidates = collect_candidates(sums, len(cells), phrase_length, constrain_left,
                                    constrain_right, CANDIDATES[mode])
    selected = np.zeros(store.dim, bool)
    selected[cells] = True
    results = []
    for length, pos, _ in candidates:
        low, high = max(0, pos - 1), min(store.n_tokens, pos + length + 1)
        on = is_on(store.block(slice(None), low, high), threshold, sign)
        inside = on[:, pos - low : pos - low + length]
        active = inside.all(axis=1)
        if constrain_left and pos > 0:
            active &= ~on[:, 0]
        if constrain_right and pos + length < store.n_tokens:
            active &= ~on[:, -1]
        intersection = int((active & selected).sum())
        union = int((active | selected).sum())
        results.append(PortMatch(pos, pos + length, intersection, union))
    if phrase_length > 1:
        results = [r for r in results if r.end - r.start == phrase_length]
    results.sort(key=lambda r: (-r.intersection, r.union, -(r.end - r.start)))
    return results[:n_results]

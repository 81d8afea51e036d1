"""Neuron queries: where one unit is on, its strongest activations, its statistics, and
which units follow an annotation track (``Index.neurons``).

- ``where(unit, layer, kind, above=T)``: the positions where the unit's stored value is
  ``x ≥ T``; ``below=T``: ``x ≤ T``; both: ``above ≤ x ≤ below``. The test is the exact
  float16 threshold test of select and match (:func:`lstmsearch.query.on_bit_ranges`), so
  every query agrees on what "on" means. One compiled scan of the unit's column, segment by
  segment, counts every position; positions come in ascending order and only the first
  ``limit`` get their text.
- ``top(unit, layer, kind, k)``: the ``k`` highest (``lowest=True``: lowest) stored values,
  ties broken by the lowest position. Read from the index's precomputed top-K table when
  ``k`` is within it (K = 100 per unit); a larger ``k`` is answered by a scan of the column
  with the same order, and the result says which was used.
- ``stats(unit, layer, kind)``: the unit's precomputed statistics.
- ``correlate(track, layer, kind)``: every unit ranked by |Pearson r| with a numeric
  annotation track (e.g. parens depth), over the tokens where the track has a value: one
  blocked pass over all the columns (:func:`correlate_columns`).

The state is named by a layer and a kind (``1, "c"``) or by its name (``"layers.1.c"``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.analysis.units import UnitCorrelation
from lstmsearch.kernels import (
    column_moments,
    count_where,
    first_where,
    float16_table,
    ranges_array,
    run_tasks,
)
from lstmsearch.limits import MAX_RESULTS
from lstmsearch.query import on_bit_ranges
from lstmsearch.spans import DEFAULT_CONTEXT, check_count, contexts

if TYPE_CHECKING:
    from lstmsearch.reader import IndexReader
    from lstmsearch.store import StateStore

__all__ = [
    "Hit",
    "NeuronHits",
    "NeuronStats",
    "Neurons",
    "activation_key",
    "correlation_key",
    "position_key",
    "scan",
    "scan_top",
]


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    """One token position of a unit: its stored value and the text around it."""

    pos: int
    document: int
    value: float
    token: str
    left: str
    right: str


def position_key(hit: Hit) -> int:
    """Sort key of threshold hits: corpus order."""
    return hit.pos


def activation_key(hit: Hit, lowest: bool = False) -> tuple[float, int]:
    """Sort key of top activations: strongest first (highest, or lowest with ``lowest``),
    ties by position."""
    return (hit.value if lowest else -hit.value, hit.pos)


def correlation_key(item: UnitCorrelation) -> tuple[float, int]:
    """Sort key of units ranked by correlation: |r| descending, then unit."""
    return (-abs(item.r), item.unit)


@dataclass(frozen=True)
class NeuronHits:
    """Positions of one unit: threshold hits (``where``) or top activations (``top``)."""

    state: str
    layer: int
    kind: str
    unit: int
    how: str  # e.g. "x ≥ 0.8", "0.2 ≤ x ≤ 0.5", "top 20 highest"
    count: int  # where: positions passing the test in the whole index; top: len(hits)
    hits: tuple[Hit, ...]
    source: str  # "scan" or "top-k table"

    @property
    def positions(self) -> np.ndarray:
        """Positions of the hits, in result order (int64)."""
        return np.array([h.pos for h in self.hits], dtype=np.int64)

    @property
    def values(self) -> np.ndarray:
        """Stored values of the hits, in result order (float64)."""
        return np.array([h.value for h in self.hits], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.hits)


@dataclass(frozen=True)
class NeuronStats:
    """Precomputed statistics of one unit over every token of the index (exact, from the
    stored values; ``on_fraction`` maps a threshold to the fraction of tokens ``x ≥ it``)."""

    state: str
    layer: int
    kind: str
    unit: int
    n_tokens: int
    mean: float
    std: float
    min: float
    max: float
    q01: float
    q05: float
    q25: float
    q50: float
    q75: float
    q95: float
    q99: float
    on_fraction: dict[float, float]


# --- scans over one column -------------------------------------------------------------------


def check_bound(name: str, value: object) -> float | None:
    """A bound of ``where``: None, or a finite number (an error naming it otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def describe_test(above: float | None, below: float | None) -> str:
    """The test of ``where`` in words, e.g. ``x ≥ 0.8``."""
    if above is not None and below is not None:
        return f"{above:g} ≤ x ≤ {below:g}"
    return f"x ≥ {above:g}" if above is not None else f"x ≤ {below:g}"


def bound_test(above: float | None, below: float | None) -> np.ndarray:
    """``x ≥ above`` and/or ``x ≤ below`` as the bit-range tests of the compiled scans: the
    exact float16 threshold test of select and match (:func:`lstmsearch.query.on_bit_ranges`)."""
    tests = []
    if above is not None:
        tests.append(on_bit_ranges(above, 1))
    if below is not None:
        tests.append(on_bit_ranges(-below, -1))  # sign -1 tests x ≤ -threshold
    if not tests:
        raise ValueError("give a bound: above=, below= or both")
    return ranges_array(tests[0], tests[-1])


def scan_pieces(
    pieces: Sequence[tuple[int, np.ndarray]], above: float | None = None,
    below: float | None = None, limit: int = 50,
) -> tuple[int, np.ndarray]:
    """(number of positions passing the test, the first ``limit`` of them ascending) in a
    column given as ``(first position, float16 values)`` pieces, one compiled pass each."""
    above, below = check_bound("above", above), check_bound("below", below)
    limit = check_count("limit", limit, minimum=0, maximum=MAX_RESULTS)
    test = bound_test(above, below)
    count, found = 0, []
    for first, values in pieces:
        bits = np.asarray(values).view(np.uint16)
        count += count_where(bits, test)
        wanted = limit - sum(len(f) for f in found)
        if wanted > 0:
            out = np.empty(wanted, np.int64)
            found.append(out[: first_where(bits, test, out)] + first)
    return count, np.concatenate(found) if found else np.zeros(0, np.int64)


def scan(
    column: np.ndarray, above: float | None = None, below: float | None = None, limit: int = 50
) -> tuple[int, np.ndarray]:
    """(number of positions passing the test, the first ``limit`` of them ascending) in one
    stored float16 column."""
    column = np.asarray(column)
    if column.dtype != np.float16:
        raise ValueError(f"stored values must be float16, got {column.dtype}")
    return scan_pieces([(0, np.ascontiguousarray(column))], above, below, limit)


def scan_top(column: np.ndarray, k: int, lowest: bool = False) -> np.ndarray:
    """Positions of the ``k`` highest (or lowest) values of a float16 column, strongest
    first, ties by the lowest position; NaN never counts. The order of the top-K table."""
    values = np.asarray(column, dtype=np.float32)
    key = values if lowest else -values
    valid = np.flatnonzero(~np.isnan(key)) if np.isnan(key).any() else None
    pool = key if valid is None else key[valid]
    k = min(k, len(pool))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    kth = np.partition(pool, k - 1)[k - 1]
    chosen = np.flatnonzero(pool <= kth)
    if valid is not None:
        chosen = valid[chosen]
    order = np.lexsort((chosen, key[chosen]))[:k]
    return chosen[order].astype(np.int64)


# --- correlation with a track -------------------------------------------------------------------

CORRELATE_UNITS = 16
"""Units per task of the correlation pass (tasks run on every core)."""
_FLOAT16_VALUES = float16_table()


def correlate_columns(store: StateStore, track: np.ndarray) -> tuple[np.ndarray, int]:
    """Pearson r of every unit with ``track`` over the tokens where the track is finite,
    and the number of such tokens; a constant unit or track gives r = 0.

    One blocked pass over the stored columns, segment by segment: float16 values are summed
    in float32 over blocks of a few thousand tokens, the blocks in float64, each unit
    shifted by its mean over the first block and the track centred on its exact mean, so
    that the sums of squares do not cancel. The blocks are fixed global positions, so an
    index of many segments gives exactly the answer of one.
    """
    y = np.asarray(track, dtype=np.float64)
    if y.shape != (store.n_tokens,):
        raise ValueError(f"track has {y.size} values, the state {store.n_tokens} tokens")
    valid = np.isfinite(y)
    n = int(valid.sum())
    if n < 2:
        return np.zeros(store.dim), n
    centred = np.where(valid, y - y[valid].mean(), 0.0)
    vy = float((centred * centred).sum())
    first = np.asarray(store.block(slice(None), 0, min(store.n_tokens, 4096)), np.float64)
    with np.errstate(invalid="ignore"):
        shift = np.nan_to_num(np.nanmean(np.where(np.isfinite(first), first, np.nan), axis=1)
                              if first.size else np.zeros(store.dim))
    weight = valid.astype(np.float32)
    centred32 = centred.astype(np.float32)
    sums = np.zeros((store.dim, 4))
    carry = np.zeros((store.dim, 3), np.float32)  # a block's float32 sums across segments
    parts = [(a, np.asarray(v).view(np.uint16)) for a, v in store.parts(slice(None))]

    def units(u0: int, u1: int) -> None:
        for a, bits in parts:
            b = a + bits.shape[1]
            column_moments(bits, a, u0, u1, _FLOAT16_VALUES, centred32[a:b], weight[a:b],
                           shift, sums, carry)
        sums[u0:u1, :3] += carry[u0:u1]

    run_tasks(units, [(u, min(store.dim, u + CORRELATE_UNITS))
                      for u in range(0, store.dim, CORRELATE_UNITS)])
    sx, sxx, sxy = sums[:, 0], sums[:, 1], sums[:, 2]
    vx = sxx - sx * sx / n
    r = np.zeros(store.dim)
    ok = (vx > 1e-6 * np.maximum(sxx, 1e-30)) & (vy > 0)  # below: float32 rounding, constant
    r[ok] = sxy[ok] / np.sqrt(vx[ok] * vy)
    return np.clip(r, -1.0, 1.0), n


# --- the queries -------------------------------------------------------------------------------


class Neurons:
    """Neuron queries over an open index (``Index.neurons``); see the module docstring.

    Precomputed tables (top-K, statistics) are read once per state and kept; safe to share
    between threads.
    """

    def __init__(self, index: IndexReader) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._tops: dict[tuple[str, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._stats: dict[str, dict[int, dict]] = {}

    def __repr__(self) -> str:
        return f"Neurons({self.index!r})"

    def _unit(self, unit: int, layer: int | str, kind: str | None) -> tuple[StateStore, int]:
        """The store of the state and the checked unit (errors name the bad value)."""
        store = self.index.store(layer, kind)
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
            raise ValueError(f"unit must be an integer, got {unit!r}")
        return store, store.check_unit(unit)

    def _hits(self, store: StateStore, unit: int, positions: np.ndarray, context: int
              ) -> tuple[Hit, ...]:
        """Hits at ``positions`` with their values and text."""
        positions = np.asarray(positions, dtype=np.int64)
        values = np.asarray(store.column(unit)[positions], dtype=np.float64)
        docs = np.searchsorted(self.index.doc_starts, positions, side="right") - 1
        texts = contexts(self.index, positions, positions + 1, context)
        return tuple(
            Hit(int(p), int(d), float(v), c.text, c.left, c.right)
            for p, d, v, c in zip(positions, docs, values, texts)
        )

    def where(
        self,
        unit: int,
        layer: int | str,
        kind: str | None = None,
        *,
        above: float | None = None,
        below: float | None = None,
        limit: int = 50,
        context: int = DEFAULT_CONTEXT,
    ) -> NeuronHits:
        """Positions where ``unit`` is ``≥ above`` and/or ``≤ below``: the total count and
        the first ``limit`` hits (ascending, with ``context`` tokens of text either side)."""
        store, unit = self._unit(unit, layer, kind)
        above, below = check_bound("above", above), check_bound("below", below)
        if above is None and below is None:
            raise ValueError("give a bound: above=T (x ≥ T), below=T (x ≤ T) or both")
        count, positions = scan_pieces(store.pieces(unit), above, below, limit)
        return NeuronHits(
            state=store.name, layer=store.layer, kind=store.kind, unit=unit,
            how=describe_test(above, below), count=count,
            hits=self._hits(store, unit, positions, context), source="scan",
        )

    def _top_table(self, store: StateStore, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
        """The precomputed top-K positions of every unit of a state: (dim, K) positions and
        values (K is 0 when the index has no table, e.g. a partial one)."""
        key = (store.name, lowest)
        with self._lock:
            if key not in self._tops:
                rows = self.index.sql(
                    "SELECT unit, pos, value FROM unit_top WHERE layer = ? AND kind = ? "
                    "AND lowest = ? ORDER BY unit, rank",
                    [store.layer, store.kind, lowest],
                ).rows
                units = np.array([r[0] for r in rows], dtype=np.int64)
                counts = np.bincount(units, minlength=store.dim)
                k = int(counts.min()) if len(rows) and (counts == counts[0]).all() else 0
                pos = np.array([r[1] for r in rows], dtype=np.int64)
                values = np.array([r[2] for r in rows], dtype=np.float64)
                self._tops[key] = (pos.reshape(store.dim, k), values.reshape(store.dim, k)) \
                    if k else (np.zeros((store.dim, 0), np.int64), np.zeros((store.dim, 0)))
            return self._tops[key]

    def top(
        self,
        unit: int,
        layer: int | str,
        kind: str | None = None,
        k: int = 20,
        *,
        lowest: bool = False,
        context: int = DEFAULT_CONTEXT,
    ) -> NeuronHits:
        """The ``k`` highest (``lowest``: lowest) stored values of ``unit``, strongest first,
        ties by position, with text. From the precomputed top-K table when ``k`` fits in it,
        else by a scan of the column (same order; ``source`` says which)."""
        store, unit = self._unit(unit, layer, kind)
        k = check_count("k", k, maximum=MAX_RESULTS)
        positions, _ = self._top_table(store, lowest)
        stored_k = positions.shape[1]
        if k <= stored_k or stored_k == store.n_tokens > 0:
            chosen, source = positions[unit, :k], "top-k table"
        else:
            chosen, source = scan_top(store.column(unit), k, lowest), "scan"
        return NeuronHits(
            state=store.name, layer=store.layer, kind=store.kind, unit=unit,
            how=f"top {k} {'lowest' if lowest else 'highest'}", count=len(chosen),
            hits=self._hits(store, unit, chosen, context), source=source,
        )

    def stats(self, unit: int, layer: int | str, kind: str | None = None) -> NeuronStats:
        """The precomputed statistics of ``unit`` (an error when the index has none yet)."""
        store, unit = self._unit(unit, layer, kind)
        with self._lock:
            if store.name not in self._stats:
                self._stats[store.name] = self._read_stats(store)
            table = self._stats[store.name]
        if unit not in table:
            raise ValueError(
                f"index {self.index.path} has no statistics for {store.name} unit {unit}: "
                "its build's final step has not run (finish it with `lstmsearch index --resume`)"
            )
        return NeuronStats(state=store.name, layer=store.layer, kind=store.kind, unit=unit,
                           n_tokens=store.n_tokens, **table[unit])

    def _read_stats(self, store: StateStore) -> dict[int, dict]:
        """Statistics of every unit of a state, from the unit_stats and unit_on tables."""
        quantiles = ("q01", "q05", "q25", "q50", "q75", "q95", "q99")
        rows = self.index.sql(
            "SELECT unit, mean, std, min, max, " + ", ".join(quantiles) + " FROM unit_stats "
            "WHERE layer = ? AND kind = ? ORDER BY unit",
            [store.layer, store.kind],
        ).rows
        names = ("mean", "std", "min", "max", *quantiles)
        table = {
            int(row[0]): {
                name: float("nan") if v is None else float(v)
                for name, v in zip(names, row[1:], strict=True)
            }
            for row in rows
        }
        for entry in table.values():
            entry["on_fraction"] = {}
        for unit, threshold, fraction in self.index.sql(
            "SELECT unit, threshold, fraction FROM unit_on WHERE layer = ? AND kind = ? "
            "ORDER BY unit, threshold",
            [store.layer, store.kind],
        ).rows:
            if int(unit) in table:
                table[int(unit)]["on_fraction"][float(threshold)] = float(fraction)
        return table

    def correlate(
        self, track: str, layer: int | str, kind: str | None = None, *, top: int | None = None
    ) -> tuple[UnitCorrelation, ...]:
        """Units of the state ranked by |Pearson r| with annotation ``track`` (strongest first,
        ``top`` of them); ``n`` is the number of tokens where the track has a value."""
        store = self.index.store(layer, kind)
        if top is not None:
            top = check_count("top", top, maximum=MAX_RESULTS)
        if not isinstance(track, str):
            raise ValueError(f"track must be a track name, got {track!r}")
        values = self.index.track(track)
        if not np.isfinite(values).any():
            raise ValueError(f"track {track!r} has no numeric values to correlate with")
        r, n = correlate_columns(store, values)
        ranked = sorted(
            (UnitCorrelation(u, float(r[u]), n) for u in range(store.dim)), key=correlation_key
        )
        return tuple(ranked[:top] if top is not None else ranked)

"""Thresholds that fit the data: the spread of a state's values, and the threshold that
would turn on a span's strongest units.

A state's values can run from about -1 to 1 (hidden states) or far beyond (cell states of
a trained model reach tens): a threshold picked on a fixed linear scale is then either
coarse or off the data. `state_scale` gives the quantiles of a state's magnitudes, so a
threshold can be chosen as "the top 1% of |x|", and the range most values lie in, so that
plots of different windows share one y axis.

When a selection turns on no unit, `suggest_threshold` says which threshold would: the
highest one (at the precision a user types) at which some unit is on over the whole span and
off on its padding, for one sign. `query.select` decides what is on; this module only picks
the threshold it is asked with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lstmsearch.query import OUTSIDE_ON, StateColumns, _check_sign, _check_span, _Documents, select

SCALE_VALUES = 1 << 21
"""Values read to estimate a state's quantiles: evenly spaced positions, every unit (0.2 s
for 512 units once their files are checked, which the first read of a state does anyway)."""
SCALE_STEPS = 1000
"""Quantiles of |x| kept per state: 0, 1/1000, ..., 1."""
AXIS_QUANTILES = (0.001, 0.999)
"""The quantiles of the values (not of their magnitudes) a fixed y axis spans."""


@dataclass(frozen=True)
class StateScale:
    """Where a state's values lie, from evenly spaced positions.

    `levels[i]` is the i/SCALE_STEPS quantile of |x|; `low`, `high` the AXIS_QUANTILES of x;
    `positions` the number of positions read (all of them for a small index).
    """

    state: str
    levels: np.ndarray
    low: float
    high: float
    positions: int

    def threshold_at(self, quantile: float) -> float:
        """The threshold at `quantile` (0..1) of |x|: a unit is on at about 1 - quantile of
        the positions (rounded to 3 decimals, as thresholds are typed)."""
        q = min(max(float(quantile), 0.0), 1.0)
        return round(float(np.interp(q, np.linspace(0, 1, len(self.levels)), self.levels)), 3)

    def quantile_of(self, threshold: float) -> float:
        """The quantile of |x| a threshold sits at (the inverse of `threshold_at`)."""
        levels = self.levels
        grid = np.linspace(0, 1, len(levels))
        t = abs(float(threshold))
        if t <= levels[0]:
            return 0.0
        if t >= levels[-1]:
            return 1.0
        # levels may repeat (a state with many equal values): the first quantile reaching t
        at = int(np.searchsorted(levels, t, side="left"))
        a, b = levels[at - 1], levels[at]
        return float(grid[at - 1] + (grid[at] - grid[at - 1]) * (t - a) / (b - a)) if b > a \
            else float(grid[at])


def state_scale(store: StateColumns, max_values: int = SCALE_VALUES) -> StateScale:
    """The quantiles of a state's values over evenly spaced positions (every position when
    the state holds at most `max_values` values)."""
    n = int(store.n_tokens)
    if n == 0:
        return StateScale(store.name, np.zeros(SCALE_STEPS + 1), -1.0, 1.0, 0)
    count = min(n, max(1, max_values // max(1, store.dim)))
    positions = np.unique(np.linspace(0, n - 1, count).round().astype(np.int64))
    values = np.asarray(store.gather(positions), dtype=np.float32).ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return StateScale(store.name, np.zeros(SCALE_STEPS + 1), -1.0, 1.0, int(positions.size))
    magnitudes = np.sort(np.abs(values))
    levels = sorted_quantiles(magnitudes, np.linspace(0, 1, SCALE_STEPS + 1))
    low, high = np.quantile(values, AXIS_QUANTILES)
    return StateScale(store.name, levels, float(low), float(high), int(positions.size))


def sorted_quantiles(ordered: np.ndarray, quantiles: np.ndarray) -> np.ndarray:
    """Quantiles of sorted values, interpolated linearly between the two nearest ranks (as
    `np.quantile` does, without sorting again for each)."""
    at = np.asarray(quantiles, dtype=np.float64) * (ordered.size - 1)
    below = np.floor(at).astype(np.int64)
    above = np.minimum(below + 1, ordered.size - 1)
    low, high = ordered[below].astype(np.float64), ordered[above].astype(np.float64)
    return low + (at - below) * (high - low)


@dataclass(frozen=True)
class Suggestion:
    """A threshold and sign at which a span's selection is not empty, and the units it turns
    on there (`query.select` with them gives exactly `units`)."""

    threshold: float
    sign: int
    units: tuple[int, ...]


def suggest_threshold(
    store: StateColumns,
    doc_starts: np.ndarray,
    start: int,
    end: int,
    pad_left: int = 1,
    pad_right: int = 0,
    sign: int = 1,
    decimals: int = 3,
) -> Suggestion | None:
    """The highest threshold with `decimals` decimals (above 0) at which some unit is on over
    the whole span [start, end) and off on its padding, for `sign`; None when there is none
    (no unit stands out from its padding by that much, or the padding leaves the span's
    document, where every unit counts as on).

    A unit u is on throughout at θ when min over the span of sign·x_u ≥ θ, and off on the
    padding when max there of sign·x_u < θ; the strongest unit is the one whose span minimum
    is highest among those whose padding stays below it.
    """
    docs = _Documents(doc_starts, store.n_tokens)
    start, end, document = _check_span(docs, start, end)
    sign = _check_sign(sign)
    first, stop = docs.bounds(document)
    if OUTSIDE_ON and (start - pad_left < first or end + pad_right > stop):
        return None
    low, high = max(first, start - pad_left), min(stop, end + pad_right)
    values = np.asarray(store.block(slice(None), low, high), dtype=np.float64) * sign
    inside = np.zeros(high - low, bool)
    inside[start - low : end - low] = True
    span_min = values[:, inside].min(axis=1)
    pad_max = values[:, ~inside].max(axis=1) if (~inside).any() else np.full(store.dim, -np.inf)
    scale = 10 ** decimals
    best = None
    for unit in np.argsort(-span_min, kind="stable"):
        floor = math.floor(span_min[unit] * scale) / scale
        if best is not None and floor <= best:
            break  # units come strongest first: no later one gives a higher threshold
        if floor > 0 and floor > pad_max[unit]:
            best = floor
    if best is None:
        return None
    pattern = select(store, doc_starts, start, end, best, pad_left=pad_left,
                     pad_right=pad_right, sign=sign)
    return Suggestion(threshold=best, sign=sign, units=pattern.units)


def unit_threshold(q01: float, q99: float, sign: int = 1) -> float:
    """A unit's own default threshold: its 99th percentile (x ≥ θ is then on at about 1% of
    the tokens), or for a negative test (x ≤ −θ) minus its 1st percentile; 3 decimals, and
    0 when that quantile lies on the other side of zero (the unit is then never on)."""
    value = float(q99) if _check_sign(sign) > 0 else -float(q01)
    if not math.isfinite(value) or value <= 0:
        return 0.0
    return math.floor(value * 1000) / 1000

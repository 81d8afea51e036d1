"""Select and match: LSTMVis-style pattern queries over stored hidden states.

Positions and spans
-------------------
Positions are global token indices over the whole index. Every span is half-open like a
Python slice: ``[start, end)`` holds the tokens ``start .. end - 1``. Document ``d`` occupies
``[doc_starts[d], doc_starts[d + 1])``. Padding positions outside a span's document do not
exist and constrain nothing.

Threshold space
---------------
A unit is *on* at a position when its stored float16 value, read as an exact real number,
satisfies ``x >= threshold`` (``sign=+1``) or ``x <= -threshold`` (``sign=-1``). NaN is never
on; infinities compare as infinities. The threshold is never rounded: it is turned once into
the ranges of float16 bit patterns whose values satisfy the inequality
(:func:`on_bit_ranges`), and every code path tests the stored bits against those ranges.

select
------
``select(store, doc_starts, start, end, threshold, pad_left, pad_right, sign)`` returns the
:class:`Pattern` ``S``: the units that are on at every position of ``[start, end)`` and off at
every position of ``[start - pad_left, start) ∪ [end, end + pad_right)`` that lies inside the
span's document. An empty ``S`` is a valid pattern; matching it is an error.

match
-----
``count(t)`` is the number of units of ``S`` on at ``t``.

* Candidates: for ``k = |S|`` down to 1 (``fuzzy=True``) or only ``k = |S|``
  (``fuzzy=False``), every maximal run of positions with ``count(t) >= k`` inside one
  document (runs never cross a document boundary; one-token runs count). A span that is a
  maximal run for several ``k`` is one candidate. The pattern's own span is always a
  candidate; it is added when it is not already a maximal run.
* For a candidate ``[a, b)``: ``A`` is the set of units, among all units of the store, that are
  on at every position of ``[a, b)`` and off at every position of the padding
  ``[a - pad_left, a) ∪ [b, b + pad_right)`` inside the document (the pattern's padding).
  ``overlap = |A ∩ S|`` and ``extra = |A \\ S|``. Candidates with ``overlap == 0`` are not
  matches.
* Ranking (:func:`match_sort_key`): overlap descending, then extra ascending (that is
  ``|A ∪ S|`` ascending), then ``|length - pattern length|`` ascending, then start ascending,
  then end ascending (the last key only makes the order total).
* The result holds the top ``limit`` matches, the pattern's own span evaluated the same way
  (:attr:`MatchResult.query`), the number of candidates and the length histogram of all
  candidates (length -> number of candidates).

The fast path
-------------
``match`` reads only the columns of ``S`` over the whole index, thresholds them and packs
their on-bits 8 units to a byte per position; ``count`` is a popcount. A span is a candidate
exactly when the minimum count inside it exceeds the counts just outside it in its document
(and ``|S| - 1`` without fuzzy matching), so candidates of up to ``_SHORT`` tokens are counted
for every length at once with running minima over the whole index, and longer ones are listed
by pairing their first and last positions level by level; no Python loop runs over positions.
Every candidate has a cheap upper bound on its overlap (the units of ``S`` on at its first and
last position and off on the adjacent padding); candidates are evaluated exactly in
descending bound order until ``limit`` matches are settled, and only those read the other
units (for ``extra``), at their own positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from lstmsearch.limits import MAX_CONTEXT, MAX_PADDING, MAX_RESULTS

__all__ = [
    "Match",
    "MatchResult",
    "Pattern",
    "StateColumns",
    "is_on",
    "match",
    "match_sort_key",
    "on_bit_ranges",
    "select",
]

_POS_INF_BITS = 0x7C00  # float16 +inf; larger positive bit patterns are NaN
_NEG_ZERO_BITS = 0x8000  # float16 -0.0; negative values grow in magnitude with the bits
_NEG_INF_BITS = 0xFC00  # float16 -inf; larger bit patterns are NaN
_SELECT_CHUNK = 8192  # positions per block read by select
_BATCH_POSITIONS = 1 << 14  # positions of all units read at once when evaluating candidates
_DEFAULT_CONTEXT = 5  # tokens of context on each side of a match

BitRanges = tuple[tuple[int, int], ...]  # inclusive ranges of uint16 float16 bit patterns


class StateColumns(Protocol):
    """What the queries need from a state store: one (layer, kind), unit-major float16."""

    name: str
    layer: int
    kind: str
    dim: int
    n_tokens: int

    def column(self, unit: int) -> np.ndarray:
        """Values of one unit over all positions (float16, shape ``(n_tokens,)``)."""
        ...

    def block(self, units: Sequence[int] | slice, start: int, end: int) -> np.ndarray:
        """Values of some units over ``[start, end)`` (float16, ``(len(units), end - start)``)."""
        ...

    def gather(self, positions: np.ndarray) -> np.ndarray:
        """Values of all units at sorted ``positions`` (float16, ``(dim, len(positions))``)."""
        ...


# ---------------------------------------------------------------------------------------
# Threshold space
# ---------------------------------------------------------------------------------------


def _check_threshold(threshold: float) -> float:
    """Return the threshold as a float; reject values that are not finite real numbers."""
    if isinstance(threshold, bool) or not isinstance(
        threshold, (int, float, np.integer, np.floating)
    ):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    value = float(threshold)
    if not math.isfinite(value):
        raise ValueError(f"threshold must be finite, got {threshold!r}")
    return value


def _check_sign(sign: int) -> int:
    """Return the sign (+1 or -1); reject anything else."""
    if isinstance(sign, bool) or sign not in (1, -1):
        raise ValueError(f"sign must be +1 or -1, got {sign!r}")
    return int(sign)


def _bits(value: np.float16) -> int:
    """The float16 bit pattern of ``value`` as an unsigned int."""
    return int(np.float16(value).view(np.uint16))


def _smallest_float16_at_least(x: float) -> np.float16:
    """The smallest float16 value ``c`` with ``c >= x`` (``+inf`` when ``x`` exceeds all)."""
    with np.errstate(over="ignore"):
        c = np.float16(x)
        if float(c) < x:
            c = np.nextafter(c, np.float16(np.inf))
    return c


def _largest_float16_at_most(x: float) -> np.float16:
    """The largest float16 value ``c`` with ``c <= x`` (``-inf`` when ``x`` is below all)."""
    with np.errstate(over="ignore"):
        c = np.float16(x)
        if float(c) > x:
            c = np.nextafter(c, np.float16(-np.inf))
    return c


def on_bit_ranges(threshold: float, sign: int = 1) -> BitRanges:
    """The float16 bit patterns that are on, as inclusive ``(low, high)`` uint16 ranges.

    Non-negative float16 values have bit patterns ``0x0000..0x7C00`` (``+0`` .. ``+inf``) in
    increasing order; negative ones ``0x8000..0xFC00`` (``-0`` .. ``-inf``) in increasing
    magnitude; the rest are NaN. ``x >= θ`` holds for exactly the float16 values ``x >= c``
    where ``c`` is the smallest float16 not below ``θ`` (and ``x <= -θ`` likewise), so the
    on-set is one or two contiguous ranges of bit patterns, computed here without rounding.
    """
    value = _check_threshold(threshold)
    if _check_sign(sign) > 0:
        c = _smallest_float16_at_least(value)
        if c > 0:
            return ((_bits(c), _POS_INF_BITS),)
        # c <= 0: every non-negative value, and the negatives no further below zero than c
        return ((0, _POS_INF_BITS), (_NEG_ZERO_BITS, _bits(c) | _NEG_ZERO_BITS))
    c = _largest_float16_at_most(-value)
    if c < 0:
        return ((_bits(c), _NEG_INF_BITS),)
    # c >= 0: every non-positive value, and the positives no larger than c
    return ((_NEG_ZERO_BITS, _NEG_INF_BITS), (0, _bits(c) & 0x7FFF))


def _on_into(
    bits: np.ndarray, ranges: BitRanges, out: np.ndarray, scratch: np.ndarray
) -> np.ndarray:
    """Write into the bool array ``out`` whether each uint16 bit pattern lies in ``ranges``.

    One range costs a wrapping subtraction and one unsigned comparison; ``scratch`` is a
    uint16 buffer of the same shape.
    """
    for i, (low, high) in enumerate(ranges):
        np.subtract(bits, np.uint16(low), out=scratch)
        if i == 0:
            np.less_equal(scratch, np.uint16(high - low), out=out)
        else:
            out |= scratch <= np.uint16(high - low)
    return out


def is_on(values: np.ndarray, threshold: float, sign: int = 1) -> np.ndarray:
    """Whether each stored float16 value is on for ``threshold``/``sign`` (bool, same shape)."""
    values = np.asarray(values)
    if values.dtype != np.float16:
        raise ValueError(f"stored values must be float16, got {values.dtype}")
    bits = np.ascontiguousarray(values).view(np.uint16)
    return _on_into(
        bits, on_bit_ranges(threshold, sign), np.empty(bits.shape, bool), np.empty_like(bits)
    )


# ---------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------


class _Documents:
    """Validated document boundaries: document ``d`` is ``[starts[d], starts[d + 1])``."""

    def __init__(self, doc_starts: np.ndarray, n_tokens: int) -> None:
        starts = np.asarray(doc_starts)
        if starts.ndim != 1 or starts.size < 2:
            raise ValueError(
                f"doc_starts must be a 1-D array of n_docs + 1 positions, got shape {starts.shape}"
            )
        if not np.issubdtype(starts.dtype, np.integer):
            raise ValueError(f"doc_starts must hold integers, got dtype {starts.dtype}")
        starts = starts.astype(np.int64)
        if starts[0] != 0 or starts[-1] != n_tokens:
            raise ValueError(
                f"doc_starts must run from 0 to n_tokens={n_tokens}, "
                f"got {int(starts[0])} .. {int(starts[-1])}"
            )
        steps = np.diff(starts)
        if (steps < 0).any():
            bad = int(np.flatnonzero(steps < 0)[0])
            raise ValueError(
                f"doc_starts must not decrease: doc_starts[{bad}]={int(starts[bad])} > "
                f"doc_starts[{bad + 1}]={int(starts[bad + 1])}"
            )
        self.starts = starts
        self.n_tokens = int(n_tokens)
        nonempty = steps > 0
        self.firsts = starts[:-1][nonempty]  # first position of every non-empty document
        self.lasts = starts[1:][nonempty] - 1  # last position of every non-empty document

    def of(self, positions: np.ndarray | int) -> np.ndarray | int:
        """The document holding each position."""
        found = np.searchsorted(self.starts, positions, side="right") - 1
        return int(found) if np.ndim(found) == 0 else found

    def bounds(self, document: int) -> tuple[int, int]:
        """The span ``[first, end)`` of one document."""
        return int(self.starts[document]), int(self.starts[document + 1])


def _check_int(name: str, value: object) -> int:
    """Return ``value`` as an int; reject bools, floats and other non-integers."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    return int(value)


def _check_span(docs: _Documents, start: object, end: object) -> tuple[int, int, int]:
    """Validate a span against the index and return ``(start, end, document)``."""
    start, end = _check_int("start", start), _check_int("end", end)
    if not 0 <= start < docs.n_tokens:
        raise ValueError(f"start={start} is outside the index [0, {docs.n_tokens})")
    if not 0 < end <= docs.n_tokens:
        raise ValueError(f"end={end} is outside the index (0, {docs.n_tokens}]")
    if start >= end:
        raise ValueError(f"empty span: start={start} must be below end={end}")
    document = docs.of(start)
    if docs.of(end - 1) != document:
        _, stop = docs.bounds(document)
        raise ValueError(f"span [{start}, {end}) crosses the end of document {document} at {stop}")
    return start, end, document


def _check_padding(name: str, value: object, maximum: int = MAX_PADDING) -> int:
    """Return a padding (or context) width; reject negative, too large or non-integer values."""
    value = _check_int(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}")
    return value


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pattern:
    """A set of units selected on a span, and how it was selected."""

    state: str  # the store's name, e.g. "layers.1.c"
    layer: int
    kind: str
    units: tuple[int, ...]  # sorted
    start: int
    end: int
    document: int
    threshold: float
    pad_left: int
    pad_right: int
    sign: int
    how: str

    @property
    def length(self) -> int:
        """Number of tokens in the selected span."""
        return self.end - self.start


@dataclass(frozen=True)
class Match:
    """One candidate span, evaluated against a pattern."""

    document: int
    start: int
    end: int
    overlap: int  # |A ∩ S|
    extra: int  # |A \ S|
    counts: tuple[int, ...]  # count(t) for t in [start, end)
    text: str
    left: str  # context before the span, inside the document
    right: str  # context after the span, inside the document
    is_query: bool  # the pattern's own span

    @property
    def length(self) -> int:
        """Number of tokens in the span."""
        return self.end - self.start


@dataclass(frozen=True)
class MatchResult:
    """The ranked matches of a pattern and the shape of the whole candidate set."""

    pattern: Pattern
    matches: tuple[Match, ...]  # best first, at most `limit`
    query: Match  # the pattern's own span, evaluated like every candidate
    length_histogram: dict[int, int]  # candidate length -> number of candidates
    n_candidates: int


class _Ranked(Protocol):
    """Anything with the fields that the ranking reads."""

    overlap: int
    extra: int
    start: int
    end: int


def match_sort_key(candidate: _Ranked, pattern_length: int) -> tuple[int, int, int, int, int]:
    """Sort key of a candidate: best first when sorted ascending.

    Overlap descending, extra ascending, distance of the length to the pattern's length
    ascending, start ascending, end ascending.
    """
    length = candidate.end - candidate.start
    return (
        -candidate.overlap,
        candidate.extra,
        abs(length - pattern_length),
        candidate.start,
        candidate.end,
    )


@dataclass(frozen=True)
class _Scored:
    """An evaluated candidate before it becomes a Match."""

    start: int
    end: int
    overlap: int
    extra: int


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------


def _padding_window(
    docs: _Documents, document: int, start: int, end: int, pad_left: int, pad_right: int
) -> tuple[int, int]:
    """The positions ``[low, high)`` of a span plus its padding, clipped to its document."""
    first, stop = docs.bounds(document)
    return max(first, start - pad_left), min(stop, end + pad_right)


def _describe(
    name: str, start: int, end: int, threshold: float, sign: int, pad_left: int, pad_right: int
) -> str:
    """A one-line description of a selection."""
    test = f"x ≥ {threshold:g}" if sign > 0 else f"x ≤ {-threshold:g}"
    return f"select [{start}, {end}) {test} on {name}, padding {pad_left}/{pad_right}"


def select(
    store: StateColumns,
    doc_starts: np.ndarray,
    start: int,
    end: int,
    threshold: float,
    pad_left: int = 1,
    pad_right: int = 0,
    sign: int = 1,
) -> Pattern:
    """Select the units that are on throughout ``[start, end)`` and off on its padding.

    ``threshold``/``sign`` define *on* (see the module docstring); ``pad_left``/``pad_right``
    are the numbers of tokens before/after the span where the units must be off (only those
    inside the span's document count). Raises ValueError, naming the value, for a span out of
    range, empty or crossing a document boundary, a negative padding, a threshold that is not
    finite or a sign other than +1/-1.
    """
    docs = _Documents(doc_starts, store.n_tokens)
    start, end, document = _check_span(docs, start, end)
    threshold = _check_threshold(threshold)
    sign = _check_sign(sign)
    pad_left = _check_padding("pad_left", pad_left)
    pad_right = _check_padding("pad_right", pad_right)
    ranges = on_bit_ranges(threshold, sign)

    low, high = _padding_window(docs, document, start, end, pad_left, pad_right)
    on_throughout = np.ones(store.dim, bool)
    on_in_padding = np.zeros(store.dim, bool)
    for chunk_start in range(low, high, _SELECT_CHUNK):
        chunk_end = min(high, chunk_start + _SELECT_CHUNK)
        values = np.ascontiguousarray(store.block(slice(None), chunk_start, chunk_end))
        on = _on_into(
            values.view(np.uint16),
            ranges,
            np.empty(values.shape, bool),
            np.empty(values.shape, np.uint16),
        )
        positions = np.arange(chunk_start, chunk_end)
        inside = (positions >= start) & (positions < end)
        on_throughout &= on[:, inside].all(axis=1)
        on_in_padding |= on[:, ~inside].any(axis=1)
    units = np.flatnonzero(on_throughout & ~on_in_padding)
    return Pattern(
        state=store.name,
        layer=store.layer,
        kind=store.kind,
        units=tuple(int(u) for u in units),
        start=start,
        end=end,
        document=document,
        threshold=threshold,
        pad_left=pad_left,
        pad_right=pad_right,
        sign=sign,
        how=_describe(store.name, start, end, threshold, sign, pad_left, pad_right),
    )


# ---------------------------------------------------------------------------------------
# match: dense pass over the pattern's columns
# ---------------------------------------------------------------------------------------


class _PatternBits:
    """The on-bits of the pattern's units at every position, packed 8 units per byte.

    ``rows[g][t]`` has bit ``j`` set when unit ``units[8 * g + j]`` is on at ``t``;
    ``counts[t]`` is the number of pattern units on at ``t``.
    """

    def __init__(self, store: StateColumns, units: tuple[int, ...], ranges: BitRanges) -> None:
        n = store.n_tokens
        self.rows = np.zeros((-(-len(units) // 8), n), np.uint8)
        on = np.empty(n, bool)
        scratch = np.empty(n, np.uint16)
        shifted = np.empty(n, np.uint8)
        for i, unit in enumerate(units):
            column = np.asarray(store.column(unit))
            _on_into(column.view(np.uint16), ranges, on, scratch)
            np.multiply(on.view(np.uint8), np.uint8(1 << (i % 8)), out=shifted)
            np.bitwise_or(self.rows[i // 8], shifted, out=self.rows[i // 8])
        self.counts = _popcount_rows(self.rows, np.uint8 if len(units) < 256 else np.uint16)

    def padding_or(
        self, docs: _Documents, positions: np.ndarray, width: int, side: int
    ) -> np.ndarray:
        """Pattern units on somewhere in the padding next to each of a few positions.

        The padding is the ``width`` positions before (``side=-1``) or after (``side=+1``)
        each position, inside its document. Returns packed bits, ``(groups, len(positions))``.
        """
        out = np.zeros((self.rows.shape[0], positions.size), np.uint8)
        if positions.size == 0 or width == 0:
            return out
        documents = docs.of(positions)
        first, stop = docs.starts[documents], docs.starts[documents + 1]
        for step in range(1, width + 1):
            other = positions + side * step
            inside = (other >= first) & (other < stop)
            out[:, inside] |= self.rows[:, other[inside]]
        return out

    def free_counts(self, docs: _Documents, width: int, side: int) -> np.ndarray:
        """Per position ``t``, the pattern units on at ``t`` and off on the padding next to it.

        This bounds the overlap of every candidate that starts (``side=-1``) or ends
        (``side=+1``) at ``t``. The shifted ORs run over the whole index at once; the positions
        within ``width`` of a document edge, whose padding is cut short, are redone exactly.
        """
        rows = self.rows
        n = rows.shape[1]
        width = min(width, n)
        if width == 0:
            return self.counts
        padding = np.zeros_like(rows)
        for step in range(1, width + 1):
            if side < 0:
                padding[:, step:] |= rows[:, :-step]
            else:
                padding[:, :-step] |= rows[:, step:]
        edges = docs.firsts if side < 0 else docs.lasts
        near = (edges[:, None] - side * np.arange(width)[None, :]).ravel()
        near = np.unique(near[(near >= 0) & (near < n)])
        padding[:, near] = self.padding_or(docs, near, width, side)
        np.invert(padding, out=padding)
        padding &= rows
        return _popcount_rows(padding, self.counts.dtype)


def _popcount_rows(rows: np.ndarray, dtype) -> np.ndarray:
    """Number of set bits per column of a (groups, n) uint8 array."""
    total = np.bitwise_count(rows[0]).astype(dtype)
    for row in rows[1:]:
        np.add(total, np.bitwise_count(row), out=total, casting="unsafe")
    return total


# ---------------------------------------------------------------------------------------
# match: candidate runs
# ---------------------------------------------------------------------------------------

_SHORT = 16  # candidates of up to this many tokens are counted densely; longer ones are listed


def _neighbour_counts(counts: np.ndarray, docs: _Documents) -> tuple[np.ndarray, np.ndarray]:
    """``before[t]``/``after[t]``: count at ``t - 1``/``t + 1`` in the same document, else 0."""
    before = np.empty_like(counts)
    before[0] = 0
    before[1:] = counts[:-1]
    before[docs.firsts] = 0
    after = np.empty_like(counts)
    after[-1] = 0
    after[:-1] = counts[1:]
    after[docs.lasts] = 0
    return before, after


def _expand_levels(
    positions: np.ndarray, low: np.ndarray, high: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A ``(position, level)`` pair for every level in ``(low[i], high[i]]``, in input order."""
    low = low.astype(np.int64)
    repeats = np.maximum(high.astype(np.int64) - low, 0)
    offsets = np.cumsum(repeats) - repeats
    where = np.repeat(positions, repeats)
    levels = np.repeat(low + 1 - offsets, repeats) + np.arange(where.size)
    return where, levels


def _add_histograms(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Sum of two bincount histograms of possibly different lengths."""
    if b.size > a.size:
        a, b = b, a
    a = a.astype(np.int64, copy=True)
    a[: b.size] += b
    return a


class _CandidateSet:
    """All distinct candidate spans of a match, with an upper bound on each one's overlap.

    ``[t, t + L)`` is a candidate iff ``min(count[t : t + L])`` exceeds ``before(t)``,
    ``after(t + L - 1)`` and ``min_level - 1``, the window lying inside one document
    (``before``/``after`` are the counts just outside the span in its document, 0 outside).

    * Short candidates (``L <= _SHORT``) are counted for every ``L`` with dense running minima
      over the whole index; the spans themselves are rebuilt only at the few positions the
      ranking asks for.
    * A run of level ``k`` is long iff its first ``_SHORT + 1`` counts are all ``>= k`` (and,
      read backwards, its last ``_SHORT + 1``), so the starts and last positions of long runs
      are found densely, expanded into (position, level) pairs and paired level by level.

    The bound of ``[a, b)`` is ``min(up[a], down[b - 1])``: the pattern units on at its first
    (last) position and off on the padding before (after) it. ``|A ∩ S|`` never exceeds it.
    """

    def __init__(
        self,
        counts: np.ndarray,
        docs: _Documents,
        min_level: int,
        up: np.ndarray,
        down: np.ndarray,
    ) -> None:
        self.counts, self.docs, self.up, self.down = counts, docs, up, down
        self.floor = min_level - 1  # a run's level must exceed this
        self.max_level = int(counts.max(initial=0))
        self.before, self.after = _neighbour_counts(counts, docs)
        self.histogram = np.zeros(_SHORT + 1, np.int64)
        window_min = self._count_short()
        self.long_starts, self.long_ends = self._list_long(window_min)
        self.long_bounds = np.minimum(up[self.long_starts], down[self.long_ends - 1])
        self.histogram = _add_histograms(
            self.histogram, np.bincount(self.long_ends - self.long_starts)
        )
        self.max_bound = int(max(up.max(initial=0), self.long_bounds.max(initial=0)))
        self._pool_low = self.max_bound + 1
        self._pool = np.zeros(0, np.int64)
        self._sample_short_bounds()

    def _count_short(self) -> np.ndarray:
        """Fill the histogram of short candidates; return the minima of long windows.

        ``window_min[t]`` is ``min(count[t : t + L])`` for the current ``L`` (0 when the window
        leaves the index or crosses into the next document); it is returned for
        ``L = _SHORT + 1``.
        """
        counts, before, after = self.counts, self.before, self.after
        n = counts.size
        window_min = counts.copy()
        limit = np.empty_like(counts)
        is_candidate = np.empty(n, bool)
        inner_firsts = self.docs.firsts[self.docs.firsts > 0]
        for length in range(1, _SHORT + 2):
            size = n - length + 1
            if size <= 0:
                window_min[:] = 0
                break
            if length > 1:
                np.minimum(window_min[:size], counts[length - 1 :], out=window_min[:size])
                window_min[size] = 0
                crossing = inner_firsts - (length - 1)
                window_min[crossing[crossing >= 0]] = 0
            if length <= _SHORT:
                np.maximum(before[:size], after[length - 1 :], out=limit[:size])
                if self.floor > 0:
                    np.maximum(limit[:size], self.floor, out=limit[:size])
                np.greater(window_min[:size], limit[:size], out=is_candidate[:size])
                self.histogram[length] = np.count_nonzero(is_candidate[:size])
        return window_min

    def _list_long(self, window_min: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distinct long candidates ``(starts, ends)``, each kept at its lowest level.

        ``window_min[t]`` is the minimum count over the ``_SHORT + 1`` positions from ``t``, so
        the level-``k`` run starting at ``t`` is long iff ``before(t) < k <= window_min[t]``,
        and the one whose last position is ``s`` iff ``after(s) < k <= window_min[s - _SHORT]``.
        """
        reach = _SHORT
        start_low, last_low = self.before, self.after
        if self.floor > 0:
            start_low = np.maximum(start_low, self.floor)
            last_low = np.maximum(last_low, self.floor)
        starts = np.flatnonzero(window_min > start_low)
        lasts = np.flatnonzero(window_min[: max(0, window_min.size - reach)] > last_low[reach:])
        start_at, start_level = _expand_levels(starts, start_low[starts], window_min[starts])
        last_at, last_level = _expand_levels(
            lasts + reach, last_low[lasts + reach], window_min[lasts]
        )
        # at each level, long runs start and end alternately: the i-th start pairs the i-th last
        level_type = np.uint8 if self.max_level < 256 else np.uint16  # radix-sorted
        start_order = np.argsort(start_level.astype(level_type), kind="stable")
        start_at, level = start_at[start_order], start_level[start_order]
        last_at = last_at[np.argsort(last_level.astype(level_type), kind="stable")]
        lowest = np.maximum(np.maximum(self.before[start_at], self.after[last_at]), self.floor)
        keep = level == lowest.astype(np.int64) + 1
        return start_at[keep], last_at[keep] + 1

    def _sample_short_bounds(self) -> None:
        """A strided sample of ``up`` where a run can start, for estimates only."""
        step = max(1, self.counts.size // 16384)
        can_start = self.counts[::step] > self.before[::step]
        self._sample_step = step
        self._sample_up = np.sort(self.up[::step][can_start])
        n_starts = max(1, int(can_start.sum()))
        self._per_start = int(self.histogram[1 : _SHORT + 1].sum()) / (n_starts * step)

    def estimate_between(self, low: int, high: int) -> float:
        """Roughly how many candidates have a bound in ``[low, high)`` (guides batch sizes)."""
        long = np.count_nonzero((self.long_bounds >= low) & (self.long_bounds < high))
        sample = np.searchsorted(self._sample_up, [low, high])
        return long + (sample[1] - sample[0]) * self._sample_step * self._per_start

    def between(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)`` of every candidate whose bound lies in ``[low, high)``."""
        chosen = (self.long_bounds >= low) & (self.long_bounds < high)
        short_starts, short_ends = self._short_between(low, high)
        return (
            np.concatenate([self.long_starts[chosen], short_starts]),
            np.concatenate([self.long_ends[chosen], short_ends]),
        )

    def _short_between(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """Short candidates with a bound in ``[low, high)``, rebuilt from their start positions.

        A short candidate's bound is at most ``up`` at its start, so only positions with
        ``up >= low`` are visited; they are kept in a pool so that a lower ``low`` rescans
        the index only when it goes below the pool.
        """
        if low < self._pool_low:
            self._pool_low = low
            self._pool = np.flatnonzero(self.up >= low)
        at = self._pool[self.up[self._pool] >= low]
        found = [
            self._short_at(part, low, high)
            for part in np.array_split(at, max(1, at.size // _BATCH_POSITIONS))
        ]
        return (
            np.concatenate([f[0] for f in found]),
            np.concatenate([f[1] for f in found]),
        )

    def _short_at(self, at: np.ndarray, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """Short candidates starting at positions ``at`` with a bound in ``[low, high)``."""
        if at.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        n = self.counts.size
        stop = self.docs.starts[self.docs.of(at) + 1]
        window = at[:, None] + np.arange(_SHORT)[None, :]
        inside = window < stop[:, None]
        window = np.minimum(window, n - 1)
        running = np.minimum.accumulate(np.where(inside, self.counts[window], 0), axis=1)
        limit = np.maximum(self.before[at][:, None], self.after[window])
        is_candidate = running > np.maximum(limit, self.floor)
        bound = np.minimum(self.up[at][:, None], self.down[window])
        rows, cols = np.nonzero(is_candidate & (bound >= low) & (bound < high))
        return at[rows], at[rows] + cols + 1


# ---------------------------------------------------------------------------------------
# match: exact evaluation
# ---------------------------------------------------------------------------------------


def _concatenated_ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions of all ranges ``[starts[i], ends[i])`` back to back, and each range's offset."""
    lengths = ends - starts
    offsets = np.zeros(lengths.size, np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    total = int(lengths.sum())
    positions = np.arange(total, dtype=np.int64) - np.repeat(offsets - starts, lengths)
    return positions, offsets


def _batches(sizes: np.ndarray, budget: int) -> list[slice]:
    """Consecutive slices of items whose sizes add up to at most ``budget`` (or one item)."""
    totals = np.cumsum(sizes)
    batches, start = [], 0
    while start < sizes.size:
        before = int(totals[start - 1]) if start else 0
        stop = max(start + 1, int(np.searchsorted(totals, before + budget, side="right")))
        batches.append(slice(start, stop))
        start = stop
    return batches


def _exact_overlaps(
    bits: _PatternBits, docs: _Documents, pattern: Pattern, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """``|A ∩ S|`` of each span: pattern units on throughout and off on the padding."""
    overlaps = np.zeros(starts.size, np.int64)
    for batch in _batches(ends - starts, _BATCH_POSITIONS * 32):
        a, b = starts[batch], ends[batch]
        positions, offsets = _concatenated_ranges(a, b)
        kept = np.bitwise_and.reduceat(bits.rows[:, positions], offsets, axis=1)
        kept &= ~bits.padding_or(docs, a, pattern.pad_left, side=-1)
        kept &= ~bits.padding_or(docs, b - 1, pattern.pad_right, side=+1)
        overlaps[batch] = _popcount_rows(kept, np.int64)
    return overlaps


def _gather(store: StateColumns, positions: np.ndarray) -> np.ndarray:
    """Values of all units at sorted unique ``positions`` (float16, ``(dim, len)``).

    Reads each contiguous window with ``block`` (one read per window touches every unit);
    when there are many more windows than units, one fancy-indexed read of the columns
    (``gather``) is cheaper.
    """
    if positions.size == 0:
        return np.zeros((store.dim, 0), np.float16)
    breaks = np.flatnonzero(np.diff(positions) > 1) + 1
    window_starts = np.concatenate([[0], breaks])
    window_ends = np.concatenate([breaks, [positions.size]])
    if window_starts.size <= 2 * store.dim:
        parts = [
            store.block(slice(None), int(positions[s]), int(positions[e - 1]) + 1)
            for s, e in zip(window_starts, window_ends)
        ]
        return np.concatenate(parts, axis=1)
    return store.gather(positions)


def _extras(
    store: StateColumns,
    docs: _Documents,
    pattern: Pattern,
    ranges: BitRanges,
    starts: np.ndarray,
    ends: np.ndarray,
) -> np.ndarray:
    """``|A \\ S|`` of each span: non-pattern units on throughout and off on the padding."""
    documents = docs.of(starts)
    lefts = np.maximum(docs.starts[documents], starts - pattern.pad_left)
    rights = np.minimum(docs.starts[documents + 1], ends + pattern.pad_right)
    others = np.ones(store.dim, bool)
    others[list(pattern.units)] = False
    extras = np.zeros(starts.size, np.int64)
    for batch in _batches(rights - lefts, _BATCH_POSITIONS):
        extras[batch] = _extras_of_batch(
            store, ranges, others, lefts[batch], starts[batch], ends[batch], rights[batch]
        )
    return extras


def _extras_of_batch(
    store: StateColumns,
    ranges: BitRanges,
    others: np.ndarray,
    lefts: np.ndarray,
    starts: np.ndarray,
    ends: np.ndarray,
    rights: np.ndarray,
) -> np.ndarray:
    """``extra`` of a few spans whose padded windows are ``[lefts, rights)``."""
    needed = np.unique(_concatenated_ranges(lefts, rights)[0])
    values = _gather(store, needed)
    on = _on_into(
        values.view(np.uint16),
        ranges,
        np.empty(values.shape, bool),
        np.empty(values.shape, np.uint16),
    )[others]

    def columns(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        positions, offsets = _concatenated_ranges(a, b)
        return np.searchsorted(needed, positions), offsets

    span_columns, span_offsets = columns(starts, ends)
    in_a = np.logical_and.reduceat(on[:, span_columns], span_offsets, axis=1)
    for pad_start, pad_end in ((lefts, starts), (ends, rights)):
        has_pad = pad_end > pad_start
        if has_pad.any():
            pad_columns, pad_offsets = columns(pad_start[has_pad], pad_end[has_pad])
            any_on = np.logical_or.reduceat(on[:, pad_columns], pad_offsets, axis=1)
            in_a[:, has_pad] &= ~any_on
    return in_a.sum(axis=0)


# ---------------------------------------------------------------------------------------
# match
# ---------------------------------------------------------------------------------------


def _is_run(
    counts: np.ndarray, docs: _Documents, start: int, end: int, document: int, min_level: int
) -> bool:
    """Whether ``[start, end)`` is a maximal run of ``count >= k`` for some ``k >= min_level``."""
    first, stop = docs.bounds(document)
    lowest = int(counts[start:end].min())
    before = int(counts[start - 1]) if start > first else 0
    after = int(counts[end]) if end < stop else 0
    return lowest > max(before, after, min_level - 1)


def _settle(
    candidates: _CandidateSet,
    evaluate: Callable[[np.ndarray, np.ndarray], np.ndarray],
    limit: int,
    query_overlap: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(starts, ends, overlaps)`` of the candidates that can be among the top ``limit``.

    Candidates are evaluated exactly in batches of descending bound. Once ``limit`` matches
    (the query's span included) have an overlap of at least ``level`` and every candidate with
    a bound of at least ``level`` has been evaluated, nothing left can rank above them.
    Returned: every evaluated candidate whose overlap is at least 1 and at least the overlap
    of the ``limit``-th best of them.
    """
    top = candidates.max_bound + 1
    good = np.zeros(top + 1, np.int64)  # good[k]: evaluated candidates with overlap k
    good[min(query_overlap, top)] += 1
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    level = top  # every candidate with bound >= level has been evaluated
    while level > 1 and good[level:].sum() < limit:
        new_level = level - 1
        while (
            new_level > 1
            and good[new_level:].sum() + candidates.estimate_between(new_level, level) < limit
        ):
            new_level -= 1
        starts, ends = candidates.between(new_level, level)
        if starts.size:
            overlaps = evaluate(starts, ends)
            batches.append((starts, ends, overlaps))
            np.add.at(good, np.minimum(overlaps, top), 1)
        level = new_level
    if not batches:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    starts, ends, overlaps = (np.concatenate(parts) for parts in zip(*batches))
    keep = overlaps >= 1
    if np.count_nonzero(keep) > limit:
        cutoff = np.sort(overlaps[keep])[::-1][limit - 1]
        keep &= overlaps >= cutoff
    return starts[keep], ends[keep], overlaps[keep]


def _check_match_arguments(
    store: StateColumns, docs: _Documents, pattern: Pattern, limit: object, context: object
) -> int:
    """Validate the arguments of :func:`match`; return the document of the pattern's span."""
    limit = _check_int("limit", limit)
    if limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    if limit > MAX_RESULTS:
        raise ValueError(f"limit must be at most {MAX_RESULTS:,} matches, got {limit:,} (the "
                         "histogram and n_candidates count every candidate)")
    _check_padding("context", context, MAX_CONTEXT)
    if pattern.state != store.name:
        raise ValueError(f"pattern was selected on {pattern.state!r}, not on {store.name!r}")
    if not pattern.units:
        raise ValueError(f"pattern selected no units ({pattern.how}); nothing to match")
    if pattern.units[0] < 0 or pattern.units[-1] >= store.dim:
        raise ValueError(f"pattern units {pattern.units} do not fit dim={store.dim}")
    _check_padding("pad_left", pattern.pad_left)
    _check_padding("pad_right", pattern.pad_right)
    return _check_span(docs, pattern.start, pattern.end)[2]


def match(
    store: StateColumns,
    doc_starts: np.ndarray,
    pattern: Pattern,
    limit: int = 50,
    fuzzy: bool = True,
    text_of: Callable[[int, int], str] | None = None,
    context: int = _DEFAULT_CONTEXT,
) -> MatchResult:
    """Find the spans whose units switch on like the pattern's, best first.

    Returns the top ``limit`` matches (by :func:`match_sort_key`), the pattern's own span
    evaluated the same way, and the length histogram of all candidates. ``fuzzy=False`` keeps
    only runs where every unit of the pattern is on. ``text_of(start, end)`` gives the text of
    tokens ``[start, end)``; matches carry ``context`` tokens of it on each side (inside the
    document). Raises ValueError for an empty pattern, a pattern selected on another state, or
    a ``limit`` below 1 or above ``MAX_RESULTS`` (100,000).
    """
    docs = _Documents(doc_starts, store.n_tokens)
    document = _check_match_arguments(store, docs, pattern, limit, context)
    ranges = on_bit_ranges(pattern.threshold, pattern.sign)
    min_level = 1 if fuzzy else len(pattern.units)

    bits = _PatternBits(store, pattern.units, ranges)
    up = bits.free_counts(docs, pattern.pad_left, side=-1)
    down = bits.free_counts(docs, pattern.pad_right, side=+1)
    candidates = _CandidateSet(bits.counts, docs, min_level, up, down)
    ranked, query = _rank(store, docs, pattern, ranges, bits, candidates, limit)

    histogram = candidates.histogram
    if not _is_run(bits.counts, docs, pattern.start, pattern.end, document, min_level):
        histogram = _add_histograms(histogram, np.bincount([pattern.length]))

    def as_match(s: _Scored) -> Match:
        return _as_match(s, bits.counts, docs, text_of, context, s is query)

    return MatchResult(
        pattern=pattern,
        matches=tuple(as_match(s) for s in ranked),
        query=as_match(query),
        length_histogram={int(k): int(histogram[k]) for k in np.flatnonzero(histogram)},
        n_candidates=int(histogram.sum()),
    )


def _rank(
    store: StateColumns,
    docs: _Documents,
    pattern: Pattern,
    ranges: BitRanges,
    bits: _PatternBits,
    candidates: _CandidateSet,
    limit: int,
) -> tuple[list[_Scored], _Scored]:
    """The top ``limit`` matches, best first, and the pattern's own span, evaluated."""
    query_span = (np.array([pattern.start]), np.array([pattern.end]))
    query_overlap = int(_exact_overlaps(bits, docs, pattern, *query_span)[0])

    def evaluate(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        overlaps = _exact_overlaps(bits, docs, pattern, starts, ends)
        # the query's span is evaluated once, on its own
        overlaps[(starts == pattern.start) & (ends == pattern.end)] = 0
        return overlaps

    starts, ends, overlaps = _settle(candidates, evaluate, limit, query_overlap)
    starts = np.concatenate([starts, query_span[0]])
    ends = np.concatenate([ends, query_span[1]])
    overlaps = np.concatenate([overlaps, [query_overlap]])
    extras = _extras(store, docs, pattern, ranges, starts, ends)
    scored = [
        _Scored(int(s), int(e), int(o), int(x))
        for s, e, o, x in zip(starts, ends, overlaps, extras)
    ]
    query = scored[-1]
    if query.overlap == 0:
        scored.pop()
    ranked = sorted(scored, key=partial(match_sort_key, pattern_length=pattern.length))
    return ranked[:limit], query


def _as_match(
    scored: _Scored,
    counts: np.ndarray,
    docs: _Documents,
    text_of: Callable[[int, int], str] | None,
    context: int,
    is_query: bool,
) -> Match:
    """Attach document, per-token counts and text to an evaluated candidate."""
    document = docs.of(scored.start)
    first, stop = docs.bounds(document)

    def text(a: int, b: int) -> str:
        return text_of(a, b) if text_of is not None and b > a else ""

    return Match(
        document=document,
        start=scored.start,
        end=scored.end,
        overlap=scored.overlap,
        extra=scored.extra,
        counts=tuple(int(c) for c in counts[scored.start : scored.end]),
        text=text(scored.start, scored.end),
        left=text(max(first, scored.start - context), scored.start),
        right=text(scored.end, min(stop, scored.end + context)),
        is_query=is_query,
    )

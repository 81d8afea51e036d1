"""Select and match: LSTMVis-style pattern queries over stored hidden states.

Positions and spans
-------------------
Positions are global token indices over the whole index. Every span is half-open like a
Python slice: ``[start, end)`` holds the tokens ``start .. end - 1``. Document ``d`` occupies
``[doc_starts[d], doc_starts[d + 1])``.

Document edges: no state is stored before a document's first token or after its last, so
nothing shows a unit off there. Padding positions outside a span's document count as on for
every unit (:data:`OUTSIDE_ON`): a span whose padding reaches outside its document keeps no
unit, neither in select nor among the matches (padding 0 finds spans at the edges). Treating
them as the model's initial state instead (zero: every unit off for a positive threshold)
let every unit that is on at a document's first token count as switching on there, and such
spans filled most of the top 50 on states that restart at each document.

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
every position of ``[start - pad_left, start) ∪ [end, end + pad_right)`` (outside the
document: every unit on). An empty ``S`` is a valid pattern; matching it is an error.

match
-----
``count(t)`` is the number of units of ``S`` on at ``t``.

* Candidates: for ``k = |S|`` down to 1 (``fuzzy=True``) or only ``k = |S|``
  (``fuzzy=False``), every maximal run of positions with ``count(t) >= k`` inside one
  document (runs never cross a document boundary; one-token runs count). A span that is a
  maximal run for several ``k`` is one candidate. The pattern's own span is always a
  candidate; it is added when it is not already a maximal run.
* Length: a candidate has at least ``min_length`` tokens (default 2 when the pattern's span
  has 2 or more tokens, as in LSTMVis, else 1) or, with ``length=N``, exactly ``N`` (LSTMVis's
  ``phrase_length``); shorter and longer runs are not candidates. The pattern's own span
  competes only when its length obeys the same rule (it is always evaluated).
* For a candidate ``[a, b)``: ``A`` is the set of units, among all units of the store, that are
  on at every position of ``[a, b)`` and off at every position of the padding
  ``[a - pad_left, a) ∪ [b, b + pad_right)`` (the pattern's padding; outside the document,
  every unit on). ``overlap = |A ∩ S|`` and ``extra = |A \\ S|``. Candidates with
  ``overlap == 0`` are not matches.
* Ranking (:func:`match_sort_key`): overlap descending, then extra ascending (that is
  ``|A ∪ S|`` ascending), then ``|length - pattern length|`` ascending, then start ascending,
  then end ascending (the last key only makes the order total).
* The result holds the top ``limit`` matches, the pattern's own span evaluated the same way
  (:attr:`MatchResult.query`), the number of candidates and the length histogram of all
  candidates (length -> number of candidates); ``histogram=False`` leaves out the last two,
  and the ranking then skips every stretch of the index where fewer units of ``S`` are on
  than the best candidates have.

The fast path
-------------
``match`` reads only the columns of ``S``, in place, segment by segment, in compiled loops
(:mod:`lstmsearch.kernels`) on every core: one pass counts, per position, the units of ``S``
that are on (``count``) and those also off on the padding before and after it (``up``,
``down``). A span is a candidate exactly when the minimum count inside it exceeds the counts
just outside it in its document, so one stack pass per document lists every candidate once,
with its length (for the histogram) and an upper bound on its overlap: the least of its
minimum count, ``up[a]`` and ``down[b - 1]``. Each task keeps only the candidates with the highest bounds; they are
evaluated exactly in descending bound order until ``limit`` matches are settled (when they
are not, the next band of bounds is listed again), and only those read the other units (for
``extra``), at their own positions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

import numpy as np

from lstmsearch.kernels import (
    HISTOGRAM_LENGTHS,
    count_pattern,
    exact_overlaps,
    list_runs,
    ranges_array,
    run_tasks,
    runs_from,
    threads,
)
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
_DEFAULT_CONTEXT = 5  # tokens of context on each side of a match
OUTSIDE_ON = True
"""Padding outside a span's document counts as on for every unit (see the module docstring)."""

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

    def parts(self, units: Sequence[int] | slice, positions: np.ndarray | None = None
              ) -> list[tuple[int, np.ndarray]]:
        """``(first position, float16 (dim, n) array)`` of each segment, in order, each
        holding whole documents; read in place by the compiled scans (``units``, in the
        segments holding ``positions`` or in all, are checked first)."""
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
    length_histogram: dict[int, int] | None  # candidate length -> number (None: not asked)
    n_candidates: int | None
    min_length: int = 1  # the shortest match allowed (tokens)
    max_length: int | None = None  # the longest (None: no limit)


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
    first, stop = docs.bounds(document)
    if OUTSIDE_ON and (start - pad_left < first or end + pad_right > stop):
        on_in_padding[:] = True  # the padding leaves the document: no unit is shown off
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
# match: the pattern's counts and its candidate runs (compiled: lstmsearch.kernels)
# ---------------------------------------------------------------------------------------

_TASK_TOKENS = 1 << 20  # positions per counting task (several tasks per core at 10^7)
_KEEP = 1024  # candidates a run-listing task keeps at most: those with the highest bounds
_SAMPLE = 1 << 16  # positions sampled to guess the lowest bound the ranking needs
_SPARE = 16  # candidate starts sought per match wanted, in that guess


def _parts(store: StateColumns, docs: _Documents, units: np.ndarray) -> list[tuple[int, np.ndarray]]:
    """The store's segments as ``(first position, uint16 (dim, n) bits)``, each holding whole
    documents (the padding of a document never reaches into another segment)."""
    parts = [(int(first), np.asarray(values).view(np.uint16))
             for first, values in store.parts(units)]
    firsts = np.array([first for first, _ in parts[1:]], np.int64)
    inside = firsts[~np.isin(firsts, docs.starts)]
    if inside.size:
        raise ValueError(f"{store.name}: a segment starts at {inside[0]}, inside a document")
    return parts


class _PatternScan:
    """The pattern's units at every position of the index: ``counts[t]`` units on,
    ``up[t]``/``down[t]`` of them also off on the padding before/after ``t`` (inside the
    document; outside it every unit is on). Counted segment by segment on all cores."""

    def __init__(self, store: StateColumns, docs: _Documents, pattern: Pattern,
                 ranges: BitRanges) -> None:
        self.docs, self.pattern = docs, pattern
        self.units = np.array(pattern.units, np.int64)
        self.bit_ranges = ranges
        self.ranges = ranges_array(ranges)
        self.parts = _parts(store, docs, self.units)
        n = store.n_tokens
        dtype = np.uint8 if self.units.size < 256 else np.uint16
        self.counts = np.empty(n, dtype)
        self.up = np.empty(n, dtype) if pattern.pad_left else self.counts
        self.down = np.empty(n, dtype) if pattern.pad_right else self.counts
        tasks = []
        step = min(_TASK_TOKENS, -(-n // (2 * threads())))  # at least two tasks per core
        for first, bits in self.parts:
            stop = first + bits.shape[1]
            for a in range(first, stop, step):
                b = min(stop, a + step)
                d0, d1 = docs.of(a), docs.of(b - 1)
                tasks.append((bits, first, self.units, docs.starts[d0 : d1 + 2], a, b,
                              self.ranges, pattern.pad_left, pattern.pad_right, OUTSIDE_ON,
                              self.counts[a:b], self.up[a:b], self.down[a:b]))
        run_tasks(count_pattern, tasks)

    def overlaps(self, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """``|A ∩ S|`` of each span: pattern units on throughout and off on the padding."""
        return _overlaps(self.parts, self.docs, self.pattern, self.bit_ranges, self.units,
                         starts, ends)


def _document_groups(docs: _Documents, n_groups: int) -> list[np.ndarray]:
    """The documents split into about ``n_groups`` ranges of similar token counts, each as
    its slice of ``docs.starts`` (starts, then the end of the last)."""
    n = docs.n_tokens
    cuts = np.searchsorted(docs.starts, np.linspace(0, n, n_groups + 1)[1:-1], side="left")
    cuts = np.unique(np.concatenate([[0], cuts, [docs.starts.size - 1]]))
    return [docs.starts[a : b + 1] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class _Candidates:
    """The candidate runs of a match: how many have each bound (exactly for the bounds from
    ``exact_from`` up), the spans of those with the highest bounds (from ``complete_from``
    up; lower bands are listed when the ranking needs them) and, when asked for, the length
    histogram of all of them.

    With the histogram, one stack pass over every position lists them all
    (:func:`lstmsearch.kernels.list_runs`); without it, candidates are found from the few
    positions where enough units switch on (:func:`lstmsearch.kernels.runs_from`)."""

    def __init__(self, scan: _PatternScan, min_level: int, min_length: int,
                 max_length: int, every: bool, limit: int) -> None:
        self.scan = scan
        self.rule = (min_level, min_length, max_length)
        self.n_levels = int(scan.units.size)
        self.bound_counts = np.zeros(self.n_levels + 1, np.int64)
        self.histogram: np.ndarray | None = None
        empty = np.zeros(0, np.int64)
        self.starts, self.ends, self.bounds = empty, empty, empty
        low = self._first_low(limit)
        self.complete_from = self.exact_from = self.n_levels + 1
        if every:
            self._list_every(low)
        else:
            self.between(low, self.n_levels + 1)

    def _first_low(self, limit: int) -> int:
        """A first guess of the lowest bound the ranking needs: the highest ``b`` such that,
        in a sample, ``_SPARE * limit`` positions have ``up >= b`` (a candidate's bound is
        at most ``up`` at its start). Lower bounds are listed later if needed."""
        up = self.scan.up
        step = max(1, up.size // _SAMPLE)
        above = np.cumsum(np.bincount(up[::step], minlength=self.n_levels + 1)[::-1])[::-1]
        enough = np.flatnonzero(above * step >= _SPARE * limit)
        return max(1, int(enough[-1]) if enough.size else 1)

    def _list_every(self, low: int) -> None:
        """One stack pass over every group of documents, on all cores: the histogram, the
        count of every bound, and the spans with the highest bounds (from ``low`` up, fewer
        when there are too many)."""
        s = self.scan
        groups = _document_groups(s.docs, 2 * threads())
        found = run_tasks(list_runs, [
            (s.counts, s.up, s.down, group, *self.rule, low, self.n_levels + 1, _KEEP,
             2 * _KEEP, self.n_levels, True) for group in groups])
        self.bound_counts = np.sum([f[4] for f in found], axis=0)
        self.exact_from = 1
        longest = max([0] + [int(f[6].max(initial=0)) for f in found])
        histogram = np.zeros(max(HISTOGRAM_LENGTHS, longest + 1), np.int64)
        for f in found:
            histogram[:HISTOGRAM_LENGTHS] += f[5]
            np.add.at(histogram, f[6], 1)
        self.histogram = histogram
        self.complete_from = max(int(f[3]) for f in found)  # every bound >= it is listed
        starts, ends, bounds = (np.concatenate([f[i] for f in found]) for i in range(3))
        keep = bounds >= self.complete_from
        self.starts, self.ends = starts[keep], ends[keep]
        self.bounds = bounds[keep].astype(np.int64)

    def _list_band(self, low: int, high: int) -> None:
        """Add every candidate with a bound in ``[low, high)``, found from its first
        position (``up >= low`` there), on all cores."""
        s = self.scan
        starts = np.flatnonzero(s.up >= low)
        documents = s.docs.of(starts)
        firsts, stops = s.docs.starts[documents], s.docs.starts[documents + 1]
        before = np.where(starts > firsts, s.counts[starts - 1], 0).astype(np.int64)
        floor = np.maximum(np.maximum(before + 1, low), self.rule[0])
        room = np.maximum(s.counts[starts].astype(np.int64) - floor + 1, 0)  # levels a start opens
        tasks = []
        for part in np.array_split(np.arange(starts.size), 2 * threads()):
            if part.size:
                tasks.append((s.counts, s.up, s.down, starts[part], firsts[part], stops[part],
                              *self.rule, low, high, int(room[part].sum()), self.n_levels))
        found = run_tasks(runs_from, tasks)
        if found:
            self.starts, self.ends, self.bounds = (
                np.concatenate([old, *(f[i] for f in found)]).astype(np.int64)
                for i, old in enumerate((self.starts, self.ends, self.bounds)))
            if low < self.exact_from:
                band = np.sum([f[3] for f in found], axis=0)
                self.bound_counts[low : self.exact_from] = band[low : self.exact_from]
        self.exact_from = min(self.exact_from, low)
        self.complete_from = low

    def count_between(self, low: int, high: int) -> int:
        """How many candidates have a bound in ``[low, high)`` (``low >= exact_from``)."""
        return int(self.bound_counts[max(low, 0) : max(high, 0)].sum())

    def between(self, low: int, high: int) -> tuple[np.ndarray, np.ndarray]:
        """``(starts, ends)`` of every candidate whose bound lies in ``[low, high)``."""
        if low < self.complete_from:
            self._list_band(low, self.complete_from)
        chosen = (self.bounds >= low) & (self.bounds < high)
        return self.starts[chosen], self.ends[chosen]


# ---------------------------------------------------------------------------------------
# match: exact evaluation
# ---------------------------------------------------------------------------------------


def _padding_leaves_document(
    docs: _Documents, pattern: Pattern, starts: np.ndarray, ends: np.ndarray
) -> np.ndarray:
    """Whether each span's padding reaches outside its document."""
    documents = docs.of(starts)
    return ((starts - pattern.pad_left < docs.starts[documents])
            | (ends + pattern.pad_right > docs.starts[documents + 1]))


def _extras(store: StateColumns, docs: _Documents, pattern: Pattern, ranges: BitRanges,
            starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """``|A \\ S|`` of each span: the other units on throughout it and off on its padding,
    read at the spans' own positions (the segments they are in are checked first)."""
    others = np.ones(store.dim, bool)
    others[list(pattern.units)] = False
    return _overlaps(store.parts(slice(None), starts), docs, pattern, ranges,
                     np.flatnonzero(others), starts, ends)


def _overlaps(parts: list[tuple[int, np.ndarray]], docs: _Documents, pattern: Pattern,
              ranges: BitRanges, units: np.ndarray, starts: np.ndarray, ends: np.ndarray
              ) -> np.ndarray:
    """How many of ``units`` are on throughout each span and off on its padding."""
    out = np.zeros(starts.size, np.int64)
    documents = docs.of(starts)
    firsts, stops = docs.starts[documents], docs.starts[documents + 1]
    bit_ranges = ranges_array(ranges)
    for first, values in parts:
        inside = np.flatnonzero((starts >= first) & (starts < first + values.shape[1]))
        if inside.size:
            out[inside] = exact_overlaps(
                np.asarray(values).view(np.uint16), first, units, starts[inside],
                ends[inside], firsts[inside], stops[inside], bit_ranges, pattern.pad_left,
                pattern.pad_right, OUTSIDE_ON)
    return out


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
    candidates: _Candidates,
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
    top = candidates.n_levels + 1
    good = np.zeros(top + 1, np.int64)  # good[k]: evaluated candidates with overlap k
    good[query_overlap] += 1
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    level = top  # every candidate with bound >= level has been evaluated
    step = 1  # below the counted bounds, bands widen each time
    while level > 1 and good[level:].sum() < limit:
        new_level = level - 1
        if new_level >= candidates.exact_from:
            while (
                new_level > max(1, candidates.exact_from)
                and good[new_level:].sum() + candidates.count_between(new_level, level) < limit
            ):
                new_level -= 1
        else:
            new_level = max(1, level - step)
            step *= 2
        starts, ends = candidates.between(new_level, level)
        if starts.size:
            overlaps = evaluate(starts, ends)
            batches.append((starts, ends, overlaps))
            np.add.at(good, overlaps, 1)
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
        first, stop = docs.bounds(_check_span(docs, pattern.start, pattern.end)[2])
        outside = (pattern.start - pattern.pad_left < first
                   or pattern.end + pattern.pad_right > stop)
        hint = ("; its padding reaches outside its document, where no unit counts as off: "
                "use padding 0 on that side to select at a document's edge") if outside else ""
        raise ValueError(f"pattern selected no units ({pattern.how}); nothing to match{hint}")
    if pattern.units[0] < 0 or pattern.units[-1] >= store.dim:
        raise ValueError(f"pattern units {pattern.units} do not fit dim={store.dim}")
    _check_padding("pad_left", pattern.pad_left)
    _check_padding("pad_right", pattern.pad_right)
    _check_threshold(pattern.threshold)
    return _check_span(docs, pattern.start, pattern.end)[2]


def length_rule(
    pattern: Pattern, docs: _Documents, min_length: object = None, length: object = None
) -> tuple[int, int]:
    """The lengths ``(shortest, longest)`` a match may have.

    ``length=N``: exactly N tokens (LSTMVis's ``phrase_length``). Otherwise at least
    ``min_length`` tokens; by default 2 when the pattern's span has 2 or more tokens (as in
    LSTMVis), else 1. Neither may exceed the longest document.
    """
    longest = int(np.diff(docs.starts).max())
    for name, value in (("min_length", min_length), ("length", length)):
        if value is None:
            continue
        value = _check_int(name, value)
        if value < 1:
            raise ValueError(f"{name} must be at least 1 token, got {value}")
        if value > longest:
            raise ValueError(f"{name}={value:,} is longer than the longest document "
                             f"({longest:,} tokens): nothing could match")
    if length is not None:
        if min_length is not None:
            raise ValueError(f"give min_length or length, not both (got {min_length} and "
                             f"{length})")
        return int(length), int(length)
    if min_length is None:
        min_length = 2 if pattern.length >= 2 else 1
    return int(min_length), longest


def match(
    store: StateColumns,
    doc_starts: np.ndarray,
    pattern: Pattern,
    limit: int = 50,
    fuzzy: bool = True,
    text_of: Callable[[int, int], str] | None = None,
    context: int = _DEFAULT_CONTEXT,
    *,
    min_length: int | None = None,
    length: int | None = None,
    histogram: bool = True,
) -> MatchResult:
    """Find the spans whose units switch on like the pattern's, best first.

    Returns the top ``limit`` matches (by :func:`match_sort_key`), the pattern's own span
    evaluated the same way, and the length histogram of all candidates. ``fuzzy=False`` keeps
    only runs where every unit of the pattern is on. Matches have at least ``min_length``
    tokens (default: 2 when the pattern's span has 2 or more, else 1), or exactly ``length``
    (see :func:`length_rule`). ``text_of(start, end)`` gives the text of tokens
    ``[start, end)``; matches carry ``context`` tokens of it on each side (inside the
    document). Raises ValueError for an empty pattern, a pattern selected on another state,
    a ``limit`` below 1 or above ``MAX_RESULTS`` (100,000), or a bad length.
    ``histogram=False`` leaves out the length histogram and the number of candidates
    (``None``): the ranking alone skips every stretch where too few units are on.
    """
    docs = _Documents(doc_starts, store.n_tokens)
    document = _check_match_arguments(store, docs, pattern, limit, context)
    shortest, longest = length_rule(pattern, docs, min_length, length)
    ranges = on_bit_ranges(pattern.threshold, pattern.sign)
    min_level = 1 if fuzzy else len(pattern.units)

    scan = _PatternScan(store, docs, pattern, ranges)
    candidates = _Candidates(scan, min_level, shortest, longest, histogram, limit)
    query_fits = shortest <= pattern.length <= longest
    ranked, query = _rank(store, docs, pattern, ranges, scan, candidates, limit, query_fits)

    lengths = candidates.histogram
    if lengths is not None and query_fits and not _is_run(
            scan.counts, docs, pattern.start, pattern.end, document, min_level):
        lengths = np.concatenate([lengths, np.zeros(pattern.length + 1, np.int64)])
        lengths[pattern.length] += 1

    def as_match(s: _Scored) -> Match:
        return _as_match(s, scan.counts, docs, text_of, context, s is query)

    return MatchResult(
        pattern=pattern,
        matches=tuple(as_match(s) for s in ranked),
        query=as_match(query),
        length_histogram=None if lengths is None else
        {int(k): int(lengths[k]) for k in np.flatnonzero(lengths)},
        n_candidates=None if lengths is None else int(lengths.sum()),
        min_length=shortest,
        max_length=longest,
    )


def _rank(
    store: StateColumns,
    docs: _Documents,
    pattern: Pattern,
    ranges: BitRanges,
    scan: _PatternScan,
    candidates: _Candidates,
    limit: int,
    query_fits: bool,
) -> tuple[list[_Scored], _Scored]:
    """The top ``limit`` matches, best first, and the pattern's own span, evaluated (it
    competes only when its length fits the length rule)."""
    query_span = (np.array([pattern.start]), np.array([pattern.end]))
    query_overlap = int(scan.overlaps(*query_span)[0])

    def evaluate(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        overlaps = scan.overlaps(starts, ends)
        # the query's span is evaluated once, on its own
        overlaps[(starts == pattern.start) & (ends == pattern.end)] = 0
        return overlaps

    starts, ends, overlaps = _settle(candidates, evaluate, limit,
                                     query_overlap if query_fits else 0)
    starts = np.concatenate([starts, query_span[0]])
    ends = np.concatenate([ends, query_span[1]])
    overlaps = np.concatenate([overlaps, [query_overlap]])
    extras = _extras(store, docs, pattern, ranges, starts, ends)
    scored = [
        _Scored(int(s), int(e), int(o), int(x))
        for s, e, o, x in zip(starts, ends, overlaps, extras)
    ]
    query = scored[-1]
    if query.overlap == 0 or not query_fits:
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


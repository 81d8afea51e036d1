"""Compiled inner loops of the queries (numba), and the thread pool that runs them.

The loops here are plain Python over NumPy arrays; numba compiles them to machine code the
first time they run and keeps the machine code in its cache, so later processes load it in
a fraction of a second. They release the GIL, so the queries split their work into tasks
and run them on every core (:func:`run_tasks`).

Numba's cache sits beside this file (``__pycache__``) or, where that is read-only, in
``NUMBA_CACHE_DIR`` or the user's cache directory; when none of them can be written the
kernels are compiled in every process instead, with the same results. Without numba the
same functions run as plain Python: correct, but far too slow for a large index.

:func:`warm_up` compiles (or loads) every kernel on a tiny input; the server calls it at
start so that the first query of a session does not wait for the compiler.
"""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

try:
    import numba
except ImportError:  # pragma: no cover - numba is a declared dependency
    numba = None

__all__ = [
    "COMPILED",
    "candidate_distances",
    "column_moments",
    "count_pattern",
    "count_where",
    "exact_overlaps",
    "first_where",
    "list_runs",
    "ranges_array",
    "run_tasks",
    "runs_from",
    "threads",
    "warm_up",
]

COMPILED = numba is not None
"""Whether the kernels are compiled (numba is installed)."""

HISTOGRAM_LENGTHS = 1024
"""Candidate lengths below this are counted in an array; longer ones are listed."""


def _jit(function: Callable) -> Callable:
    """``function`` compiled by numba (nogil, cached when a cache directory is writable)."""
    if numba is None:
        return function
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", numba.NumbaWarning)
            return numba.njit(nogil=True, cache=True)(function)
    except RuntimeError:  # no writable cache directory: compile in every process
        return numba.njit(nogil=True, cache=False)(function)


# ---------------------------------------------------------------------------------------
# Threads
# ---------------------------------------------------------------------------------------

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def threads() -> int:
    """Worker threads the kernels use: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def run_tasks(function: Callable[..., Any], tasks: Sequence[tuple]) -> list[Any]:
    """``function(*task)`` for every task, on all cores, results in task order."""
    global _pool
    if len(tasks) <= 1 or threads() == 1:
        return [function(*task) for task in tasks]
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=threads(), thread_name_prefix="kernel")
    futures = [_pool.submit(function, *task) for task in tasks]
    return [f.result() for f in futures]


# ---------------------------------------------------------------------------------------
# match: pattern counts
# ---------------------------------------------------------------------------------------

_SUB_BLOCK = 8192  # positions per unit loop: the block's counts stay in the CPU cache


@_jit
def _on(bits, lo0, w0, lo1, w1):
    """Whether a float16 bit pattern lies in one of two inclusive ranges (``lo``, width);
    all five are uint16, and the subtractions wrap."""
    return (np.uint16(bits - lo0) <= w0) | (np.uint16(bits - lo1) <= w1)


@_jit
def _edges(doc_starts, x, y, pad_left, pad_right, near, near_first, near_stop):
    """The positions of ``[x, y)`` whose padding is cut by the edge of their document, with
    that document's bounds; returns how many."""
    n = 0
    d = 0
    while d + 1 < doc_starts.size - 1 and doc_starts[d + 1] <= x:
        d += 1
    while d < doc_starts.size - 1 and doc_starts[d] < y:
        first, stop = doc_starts[d], doc_starts[d + 1]
        cut = min(stop, first + pad_left)
        for t in range(max(x, first), min(y, cut)):
            near[n], near_first[n], near_stop[n] = t, first, stop
            n += 1
        for t in range(max(x, cut, stop - pad_right), min(y, stop)):
            near[n], near_first[n], near_stop[n] = t, first, stop
            n += 1
        d += 1
    return n


@_jit
def _free(onbuf, k, width, side, first, stop, origin, outside_on):
    """Whether no position of the ``width`` before (``side`` -1) or after (+1) buffer index
    ``k`` is on, inside the document ``[first, stop)``; outside it, every unit is on when
    ``outside_on`` (else off)."""
    t = k + origin
    for j in range(1, width + 1):
        u = t + side * j
        if u < first or u >= stop:
            if outside_on:
                return False
            break
        if onbuf[k + side * j]:
            return False
    return True


@_jit
def count_pattern(part, first, units, doc_starts, start, end, ranges, pad_left, pad_right,
                  outside_on, counts, up, down):
    """Per position ``t`` in ``[start, end)``, the pattern units that are on (``counts``), on
    and off on the ``pad_left`` positions before ``t`` (``up``) and on and off on the
    ``pad_right`` positions after it (``down``), written at ``t - start``.

    ``part`` holds the stored bits (uint16, units x positions) of the positions from
    ``first``, whole documents; ``doc_starts`` are the starts of the documents that overlap
    the range, then the end of the last. Padding outside a document holds every unit on
    (``outside_on``: no unit can be shown off there) or off. ``up``/``down`` are not written
    when their padding is 0 (they equal ``counts``).

    Per block of positions and unit: the on-bits go to a buffer, the padding tests are
    straight loops over it (as if the documents went on), and the few positions whose
    padding an edge of their document cuts are then corrected.
    """
    lo0, w0 = np.uint16(ranges[0]), np.uint16(ranges[1])
    lo1, w1 = np.uint16(ranges[2]), np.uint16(ranges[3])
    stop_all = first + part.shape[1]
    onbuf = np.zeros(_SUB_BLOCK + pad_left + pad_right, np.uint8)
    near = np.empty(_SUB_BLOCK, np.int64)
    near_first = np.empty(_SUB_BLOCK, np.int64)
    near_stop = np.empty(_SUB_BLOCK, np.int64)
    for x in range(start, end, _SUB_BLOCK):
        y = min(end, x + _SUB_BLOCK)
        m = y - x
        c = counts[x - start : y - start]
        c[:] = 0
        if pad_left:
            u_ = up[x - start : y - start]
            u_[:] = 0
        if pad_right:
            d_ = down[x - start : y - start]
            d_[:] = 0
        n_near = _edges(doc_starts, x, y, pad_left, pad_right, near, near_first, near_stop)
        origin = x - pad_left  # position of onbuf[0]
        lo = max(origin, first)
        hi = min(y + pad_right, stop_all)
        onbuf[:] = 0
        # zero-based loops over slices: no index can be negative, so the loops vectorize
        dst = onbuf[lo - origin : hi - origin]
        on = onbuf[pad_left : pad_left + m]
        before = onbuf[:m]
        after = onbuf[pad_left + 1 : pad_left + 1 + m]
        for i in range(units.size):
            src = part[units[i]][lo - first : hi - first]
            for k in range(src.size):
                dst[k] = _on(src[k], lo0, w0, lo1, w1)
            if pad_left == 1:  # the usual padding: counts and up in one pass
                for k in range(m):
                    c[k] += on[k]
                    u_[k] += on[k] & (before[k] ^ 1)
            else:
                for k in range(m):
                    c[k] += on[k]
            if pad_left > 1:
                window = 0
                for j in range(pad_left):
                    window += onbuf[j]
                for k in range(m):
                    u_[k] += on[k] & (window == 0)
                    window += on[k] - onbuf[k]
            if pad_right == 1:
                for k in range(m):
                    d_[k] += on[k] & (after[k] ^ 1)
            elif pad_right > 1:
                window = 0
                for j in range(pad_left + 1, pad_left + 1 + pad_right):
                    window += onbuf[j]
                for k in range(m):
                    d_[k] += on[k] & (window == 0)
                    window += onbuf[pad_left + k + 1 + pad_right] - onbuf[pad_left + k + 1]
            for e in range(n_near):  # padding cut by a document edge: test it again
                t = near[e]
                k = t - origin
                if not onbuf[k]:
                    continue
                if pad_left and near[e] - pad_left < near_first[e]:
                    was = _free(onbuf, k, pad_left, -1, -(1 << 40), 1 << 40, origin, False)
                    now = _free(onbuf, k, pad_left, -1, near_first[e], near_stop[e], origin,
                                outside_on)
                    u_[t - x] += np.int64(now) - np.int64(was)
                if pad_right and near[e] + pad_right >= near_stop[e]:
                    was = _free(onbuf, k, pad_right, 1, -(1 << 40), 1 << 40, origin, False)
                    now = _free(onbuf, k, pad_right, 1, near_first[e], near_stop[e], origin,
                                outside_on)
                    d_[t - x] += np.int64(now) - np.int64(was)


# ---------------------------------------------------------------------------------------
# match: candidate runs
# ---------------------------------------------------------------------------------------


@_jit
def _keep(starts, ends, bounds, kept, low, cap):
    """Drop stored candidates until at most ``cap`` remain: the lowest bounds go first.

    Returns the new number kept and the new lowest bound kept (every candidate with a bound
    at least that high is kept)."""
    top = 0
    for j in range(kept):
        top = max(top, bounds[j])
    above = np.zeros(top + 2, np.int64)
    for j in range(kept):
        above[bounds[j]] += 1
    for b in range(top - 1, -1, -1):
        above[b] += above[b + 1]
    new_low = low
    while new_low <= top and above[new_low] > cap:
        new_low += 1
    n = 0
    for j in range(kept):
        if bounds[j] >= new_low:
            starts[n] = starts[j]
            ends[n] = ends[j]
            bounds[n] = bounds[j]
            n += 1
    return n, new_low


@_jit
def list_runs(counts, up, down, doc_starts, min_level, min_length, max_length, low, high,
              cap, size, n_levels, every):
    """The candidates of one range of whole documents: every distinct maximal run of
    ``count >= k`` (for some ``k >= min_level``) inside one document whose length lies in
    ``[min_length, max_length]``.

    ``doc_starts`` are the range's documents (then the end of the last). A run ``[a, b)`` is
    a candidate iff its minimum count (its level) exceeds the counts just outside it in its
    document (0 outside); one stack pass lists them all. Its bound, the least of its level,
    ``up[a]`` and ``down[b - 1]``, caps its overlap.

    Returns ``(starts, ends, bounds, low, bound_counts, lengths, long_lengths)``: the
    candidates with a bound in ``[low, high)`` (``size`` of them at most), where ``low``
    starts at the given one and, when ``cap`` is above 0, rises so that at most ``cap`` are
    kept; ``bound_counts[b]``: candidates with bound ``b``; ``lengths[L]``: candidates of
    length ``L`` below ``HISTOGRAM_LENGTHS``; and the lengths of longer ones. With ``every``
    the counts cover every candidate; without, only those with a level of at least the final
    ``low`` (the positions where the count is lower are skipped).
    """
    starts = np.empty(size, np.int64)
    ends = np.empty(size, np.int64)
    bounds = np.empty(size, np.int32)
    kept = 0
    bound_counts = np.zeros(n_levels + 1, np.int64)
    lengths = np.zeros(HISTOGRAM_LENGTHS, np.int64)
    # runs of one level are disjoint and levels nest: at most n_levels * tokens / L are long
    tokens = doc_starts[-1] - doc_starts[0]
    long_lengths = np.empty(n_levels * (tokens // HISTOGRAM_LENGTHS) + 1, np.int64)
    n_long = 0
    stack_start = np.empty(n_levels + 1, np.int64)
    stack_level = np.empty(n_levels + 1, np.int64)
    stack_up = np.empty(n_levels + 1, np.int64)
    floor = min_level if every else max(min_level, low)  # the lowest level listed
    for d in range(doc_starts.size - 1):
        a, b = doc_starts[d], doc_starts[d + 1]
        sp = 0
        prev_down = 0
        t = a
        while t <= b:
            if sp == 0:  # skip the positions where no run of interest can start
                while t < b and counts[t] < floor:
                    t += 1
                if t == b:
                    break
            v = np.int64(counts[t]) if t < b else 0
            if v < floor:
                v = 0
            run_start = t
            run_up = np.int64(up[t]) if t < b else 0
            while sp > 0 and stack_level[sp - 1] > v:
                sp -= 1
                s = stack_start[sp]
                run_start = s
                run_up = stack_up[sp]
                length = t - s
                if stack_level[sp] < floor or length < min_length or length > max_length:
                    continue
                bound = min(stack_level[sp], run_up, prev_down)
                bound_counts[bound] += 1
                if length < HISTOGRAM_LENGTHS:
                    lengths[length] += 1
                else:
                    long_lengths[n_long] = length
                    n_long += 1
                if bound < low or bound >= high:
                    continue
                if kept == size:
                    if cap == 0:  # no room: counting only
                        continue
                    kept, low = _keep(starts, ends, bounds, kept, low, cap)
                    if not every:
                        floor = max(floor, low)
                    if bound < low:
                        continue
                starts[kept] = s
                ends[kept] = t
                bounds[kept] = bound
                kept += 1
            if t < b:
                if v > 0 and (sp == 0 or stack_level[sp - 1] < v):
                    stack_start[sp] = run_start
                    stack_level[sp] = v
                    stack_up[sp] = run_up
                    sp += 1
                prev_down = np.int64(down[t])
            t += 1
    if cap > 0 and kept > cap:
        kept, low = _keep(starts, ends, bounds, kept, low, cap)
    return (starts[:kept], ends[:kept], bounds[:kept], low, bound_counts, lengths,
            long_lengths[:n_long])


@_jit
def runs_from(counts, up, down, starts, firsts, stops, min_level, min_length, max_length,
              low, high, size, n_levels):
    """The candidates (as in :func:`list_runs`) with a bound in ``[low, high)``, found from
    their first positions: ``starts`` are positions with ``up >= low`` in documents
    ``[firsts, stops)``, in any order; ``size`` is room for the candidates.

    A candidate ``[t, b)`` of level ``L`` starts where the count rises above ``L - 1`` and
    ends where it falls below ``L``, so from each start one walk to the right, keeping the
    running minimum, meets every candidate that starts there. Returns ``(starts, ends,
    bounds, bound_counts)``.
    """
    out_starts = np.empty(size, np.int64)
    out_ends = np.empty(size, np.int64)
    out_bounds = np.empty(size, np.int32)
    bound_counts = np.zeros(n_levels + 1, np.int64)
    kept = 0
    for j in range(starts.size):
        t, first, stop = starts[j], firsts[j], stops[j]
        before = np.int64(counts[t - 1]) if t > first else 0
        floor = max(low, min_level, before + 1)
        level = np.int64(counts[t])
        b = t + 1
        while level >= floor:
            c = np.int64(counts[b]) if b < stop else 0
            if c < level:  # [t, b) is a maximal run of count >= level
                length = b - t
                if min_length <= length <= max_length:
                    bound = min(level, np.int64(up[t]), np.int64(down[b - 1]))
                    if low <= bound < high:
                        bound_counts[bound] += 1
                        out_starts[kept] = t
                        out_ends[kept] = b
                        out_bounds[kept] = bound
                        kept += 1
                level = c
            b += 1
    return out_starts[:kept], out_ends[:kept], out_bounds[:kept], bound_counts


@_jit
def exact_overlaps(part, first, units, starts, ends, doc_firsts, doc_ends, ranges, pad_left,
                   pad_right, outside_on):
    """How many of ``units`` are on throughout each span ``[starts[j], ends[j])`` of documents
    ``[doc_firsts[j], doc_ends[j])`` and off on its padding (outside the document every unit
    is on when ``outside_on``, else off): ``|A ∩ S|`` for the pattern's units, ``|A \\ S|``
    for the others.

    Each unit is a row of its own, far from the others: the first position of a span is read
    for every unit at once (independent reads the processor overlaps), and only the units on
    there are followed further.
    """
    lo0, w0 = np.uint16(ranges[0]), np.uint16(ranges[1])
    lo1, w1 = np.uint16(ranges[2]), np.uint16(ranges[3])
    out = np.zeros(starts.size, np.int64)
    on_first = np.zeros(units.size, np.bool_)
    for j in range(starts.size):
        a, b = starts[j], ends[j]
        left, right = a - pad_left, b + pad_right
        if outside_on and (left < doc_firsts[j] or right > doc_ends[j]):
            continue
        left = max(left, doc_firsts[j])
        right = min(right, doc_ends[j])
        column = a - first
        for i in range(units.size):
            on_first[i] = _on(part[units[i], column], lo0, w0, lo1, w1)
        n = 0
        for i in range(units.size):
            if not on_first[i]:
                continue
            row = part[units[i]]
            ok = True
            for t in range(a + 1, b):
                if not _on(row[t - first], lo0, w0, lo1, w1):
                    ok = False
                    break
            if ok:
                for t in range(left, a):
                    if _on(row[t - first], lo0, w0, lo1, w1):
                        ok = False
                        break
            if ok:
                for t in range(b, right):
                    if _on(row[t - first], lo0, w0, lo1, w1):
                        ok = False
                        break
            if ok:
                n += 1
        out[j] = n
    return out


# ---------------------------------------------------------------------------------------
# neurons: threshold scans of one column
# ---------------------------------------------------------------------------------------


def ranges_array(*tests: tuple[tuple[int, int], ...]) -> np.ndarray:
    """Bit-range tests as the kernels take them: per test ``[low0, width0, low1, width1]``
    (one range is given twice), int64; a value passes when it passes every test."""
    out = []
    for ranges in tests:
        (low0, high0), (low1, high1) = ranges[0], ranges[-1]
        out += [low0, high0 - low0, low1, high1 - low1]
    return np.array(out, np.int64)


@_jit
def count_where(values, ranges):
    """How many float16 bit patterns of ``values`` pass both tests of ``ranges`` (eight
    numbers: two tests as ``ranges_array`` gives them)."""
    a0, aw0 = np.uint16(ranges[0]), np.uint16(ranges[1])
    a1, aw1 = np.uint16(ranges[2]), np.uint16(ranges[3])
    b0, bw0 = np.uint16(ranges[4]), np.uint16(ranges[5])
    b1, bw1 = np.uint16(ranges[6]), np.uint16(ranges[7])
    n = 0
    for k in range(values.size):
        v = values[k]
        n += _on(v, a0, aw0, a1, aw1) & _on(v, b0, bw0, b1, bw1)
    return n


@_jit
def first_where(values, ranges, out):
    """The first ``out.size`` positions of ``values`` that pass both tests, written into
    ``out``; returns how many were found (reads no further than needed)."""
    a0, aw0 = np.uint16(ranges[0]), np.uint16(ranges[1])
    a1, aw1 = np.uint16(ranges[2]), np.uint16(ranges[3])
    b0, bw0 = np.uint16(ranges[4]), np.uint16(ranges[5])
    b1, bw1 = np.uint16(ranges[6]), np.uint16(ranges[7])
    n = 0
    for k in range(values.size):
        if n == out.size:
            break
        v = values[k]
        if _on(v, a0, aw0, a1, aw1) & _on(v, b0, bw0, b1, bw1):
            out[n] = k
            n += 1
    return n


# ---------------------------------------------------------------------------------------
# neurons: moments of every unit against a track
# ---------------------------------------------------------------------------------------

_MOMENT_BLOCK = 4096  # values summed in float32 before they are added in float64


@_jit
def column_moments(part, first, unit_start, unit_end, table, y, weight, shift, out, carry):
    """Sums over the positions of ``part`` (uint16 float16 bits, units x positions, the
    first at global position ``first``) for units ``[unit_start, unit_end)``: ``Σw·x'``,
    ``Σw·x'²`` and ``Σx'·y`` with ``x' = x - shift[u]`` (``table`` maps bits to float32
    values), added to ``out[u]``.

    ``weight`` is 1 where the track has a value and 0 elsewhere (``y`` is 0 there). Each
    block of ``_MOMENT_BLOCK`` global positions is summed in float32 and added in float64;
    ``carry[u]`` holds the float32 sums of a block a segment left unfinished, so the result
    does not depend on where segments start (add what is left in ``carry`` at the end).
    """
    n = part.shape[1]
    for u in range(unit_start, unit_end):
        row = part[u]
        c = np.float32(shift[u])
        b1 = np.float32(carry[u, 0])
        b2 = np.float32(carry[u, 1])
        b3 = np.float32(carry[u, 2])
        a = 0
        while a < n:
            stop = min(n, a + _MOMENT_BLOCK - (first + a) % _MOMENT_BLOCK)
            for t in range(a, stop):
                x = table[row[t]] - c
                w = weight[t]
                wx = w * x
                b1 += wx
                b2 += wx * x
                b3 += x * y[t]
            if (first + stop) % _MOMENT_BLOCK == 0:  # a block is complete
                out[u, 0] += b1
                out[u, 1] += b2
                out[u, 2] += b3
                b1 = np.float32(0.0)
                b2 = np.float32(0.0)
                b3 = np.float32(0.0)
            a = stop
        carry[u, 0] = b1
        carry[u, 1] = b2
        carry[u, 2] = b3


# ---------------------------------------------------------------------------------------
# nearest: exact distances of candidates
# ---------------------------------------------------------------------------------------


@_jit
def candidate_distances(part, ids, query, table, out):
    """Squared Euclidean distances (float64) from ``query`` (float64, one per unit) to the
    stored states of the tokens ``ids`` (sorted) of ``part`` (uint16 float16 bits, units x
    positions; ``table`` maps bits to float32 values), into ``out``: a unit at a time, so
    every read stays in one column."""
    for i in range(ids.shape[0]):
        out[i] = 0.0
    for u in range(part.shape[0]):
        row = part[u]
        q = query[u]
        for i in range(ids.shape[0]):
            d = np.float64(table[row[ids[i]]]) - q
            out[i] += d * d


# ---------------------------------------------------------------------------------------
# Warm-up
# ---------------------------------------------------------------------------------------

_warm = threading.Event()


def warm_up() -> float:
    """Compile (or load from the cache) every kernel on a tiny input; seconds it took."""
    began = time.perf_counter()
    if _warm.is_set():
        return 0.0
    part = np.zeros((3, 8), np.uint16)
    part.setflags(write=False)  # as the stored states are mapped
    units = np.arange(2, dtype=np.int64)
    docs = np.array([0, 5, 8], np.int64)
    ranges = np.array([0x3C00, 0x400, 0x3C00, 0x400], np.int64)
    counts = np.zeros(8, np.uint8)  # patterns of fewer than 256 units (uint16: compiled later)
    up = np.zeros(8, np.uint8)
    down = np.zeros(8, np.uint8)
    count_pattern(part, 0, units, docs, 0, 8, ranges, 1, 1, True, counts, up, down)
    list_runs(counts, up, down, docs, 1, 1, 8, 1, 3, 4, 8, 2, True)
    runs_from(counts, up, down, docs[:1], docs[:1], docs[1:2], 1, 1, 8, 1, 3, 4, 2)
    exact_overlaps(part, 0, units, docs[:1], docs[1:2], docs[:1], docs[1:2], ranges, 1, 1, True)
    test = ranges_array(((0x3C00, 0x7C00),), ((0, 0x7C00), (0x8000, 0xFC00)))
    count_where(part[0], test)
    first_where(part[0], test, np.zeros(2, np.int64))
    table = np.zeros(1 << 16, np.float32)
    moments = np.zeros((3, 4))
    column_moments(part, 0, 0, 3, table, np.zeros(8, np.float32), np.ones(8, np.float32),
                   np.zeros(3), moments, np.zeros((3, 3), np.float32))
    candidate_distances(part, units, np.zeros(3), table, np.zeros(2))
    _warm.set()
    return time.perf_counter() - began


def float16_table() -> np.ndarray:
    """The float32 value of every float16 bit pattern (exact), indexed by the bits."""
    return np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16).astype(
        np.float32)


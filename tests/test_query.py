"""Tests of select/match against a slow, obviously correct reference implementation."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from unittest import mock

import numpy as np
import pytest
from conftest import ArrayStore
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmsearch import query
from lstmsearch.query import (
    Match,
    MatchResult,
    Pattern,
    is_on,
    match,
    match_sort_key,
    on_bit_ranges,
    select,
)

# ---------------------------------------------------------------------------------------
# An in-memory store with the StateStore protocol
# ---------------------------------------------------------------------------------------


class SegmentedStore(ArrayStore):
    """The same values held as several segments, each starting at a document start."""

    def __init__(self, values: np.ndarray, cuts, name: str = "layers.0.c") -> None:
        super().__init__(values, name)
        self.cuts = [0, *cuts, self.n_tokens]

    def parts(self, units, positions=None) -> list[tuple[int, np.ndarray]]:
        return [(a, np.array(self.values[:, a:b])) for a, b in zip(self.cuts, self.cuts[1:])
                if b > a]


def words(n: int) -> list[str]:
    return [f"w{t}" for t in range(n)]


def text_of_words(tokens: list[str], start: int, end: int) -> str:
    return " ".join(tokens[start:end])


def made_pattern(
    doc_starts,
    units,
    start,
    end,
    threshold=0.5,
    pad_left=1,
    pad_right=0,
    sign=1,
    state="layers.0.c",
):
    """A pattern built by hand (not by select): any units, any span."""
    _, layer, kind = state.split(".")
    return Pattern(
        state=state,
        layer=int(layer),
        kind=kind,
        units=tuple(sorted(units)),
        start=start,
        end=end,
        document=ref_document(list(doc_starts), start),
        threshold=threshold,
        pad_left=pad_left,
        pad_right=pad_right,
        sign=sign,
        how="made by hand",
    )


# ---------------------------------------------------------------------------------------
# The reference: dense booleans, Python loops, sets
# ---------------------------------------------------------------------------------------


def ref_on(value: np.float16, threshold: float, sign: int) -> bool:
    """On-test on the exact real value of a float16 (float() of a float16 is exact)."""
    x = float(value)
    if math.isnan(x):
        return False
    return x >= threshold if sign > 0 else x <= -threshold


def ref_on_matrix(values: np.ndarray, threshold: float, sign: int) -> list[list[bool]]:
    dim, n = values.shape
    return [[ref_on(values[u, t], threshold, sign) for t in range(n)] for u in range(dim)]


def ref_document(doc_starts: list[int], t: int) -> int:
    for d in range(len(doc_starts) - 1):
        if doc_starts[d] <= t < doc_starts[d + 1]:
            return d
    raise AssertionError(t)


def ref_padding(doc_starts, a: int, b: int, pad_left: int, pad_right: int
                ) -> tuple[list[int], int]:
    """The padding positions inside the document, and how many lie outside it."""
    d = ref_document(doc_starts, a)
    first, stop = doc_starts[d], doc_starts[d + 1]
    padding = [*range(a - pad_left, a), *range(b, b + pad_right)]
    inside = [t for t in padding if first <= t < stop]
    return inside, len(padding) - len(inside)


def ref_active(on, doc_starts, a: int, b: int, pad_left: int, pad_right: int) -> set[int]:
    """Units on at every position of [a, b) and off on the padding; padding outside the
    document counts as on for every unit, so a span whose padding leaves it keeps none."""
    padding, outside = ref_padding(doc_starts, a, b, pad_left, pad_right)
    return {
        u
        for u in range(len(on))
        if all(on[u][t] for t in range(a, b)) and not any(on[u][t] for t in padding)
        and not outside
    }


def ref_select(values, doc_starts, start, end, threshold, pad_left=1, pad_right=0, sign=1):
    on = ref_on_matrix(values, threshold, sign)
    return tuple(sorted(ref_active(on, list(doc_starts), start, end, pad_left, pad_right)))


def ref_lengths(doc_starts, pattern: Pattern, min_length=None, length=None) -> tuple[int, int]:
    """The length rule: exactly `length`, else at least `min_length` (default 2 for a span
    of 2 or more tokens, else 1)."""
    if length is not None:
        return length, length
    if min_length is None:
        min_length = 2 if pattern.end - pattern.start >= 2 else 1
    return min_length, max(b - a for a, b in zip(doc_starts, doc_starts[1:]))


def ref_match(values, doc_starts, pattern: Pattern, limit, fuzzy, text_of, context,
              min_length=None, length=None):
    doc_starts = [int(x) for x in doc_starts]
    shortest, longest = ref_lengths(doc_starts, pattern, min_length, length)
    on = ref_on_matrix(values, pattern.threshold, pattern.sign)
    dim, n = values.shape
    units = set(pattern.units)
    count = [sum(on[u][t] for u in units) for t in range(n)]

    spans: set[tuple[int, int]] = set()
    levels = range(len(units), 0, -1) if fuzzy else [len(units)]
    for k in levels:
        for d in range(len(doc_starts) - 1):
            t = doc_starts[d]
            while t < doc_starts[d + 1]:
                if count[t] >= k:
                    a = t
                    while t < doc_starts[d + 1] and count[t] >= k:
                        t += 1
                    if shortest <= t - a <= longest:
                        spans.add((a, t))
                else:
                    t += 1
    query_fits = shortest <= pattern.end - pattern.start <= longest
    if query_fits:
        spans.add((pattern.start, pattern.end))

    histogram: dict[int, int] = {}
    for a, b in spans:
        histogram[b - a] = histogram.get(b - a, 0) + 1

    def evaluate(a: int, b: int) -> Match:
        active = ref_active(on, doc_starts, a, b, pattern.pad_left, pattern.pad_right)
        d = ref_document(doc_starts, a)
        first, stop = doc_starts[d], doc_starts[d + 1]

        def text(x, y):
            return text_of(x, y) if text_of is not None and y > x else ""

        return Match(
            document=d,
            start=a,
            end=b,
            overlap=len(active & units),
            extra=len(active - units),
            counts=tuple(count[a:b]),
            text=text(a, b),
            left=text(max(first, a - context), a),
            right=text(b, min(stop, b + context)),
            is_query=(a, b) == (pattern.start, pattern.end),
        )

    evaluated = [evaluate(a, b) for a, b in spans]
    query = evaluate(pattern.start, pattern.end)
    matches = sorted(
        (m for m in evaluated if m.overlap > 0),
        key=partial(match_sort_key, pattern_length=pattern.end - pattern.start),
    )
    return MatchResult(
        pattern=pattern,
        matches=tuple(matches[:limit]),
        query=query,
        length_histogram=dict(sorted(histogram.items())),
        n_candidates=len(spans),
        min_length=shortest,
        max_length=longest,
    )


# ---------------------------------------------------------------------------------------
# Threshold space
# ---------------------------------------------------------------------------------------

ALL_FLOAT16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.float16)


def exact_on(values: np.ndarray, threshold: float, sign: int) -> np.ndarray:
    """Reference on-test, vectorised in float64 (which holds every float16 exactly)."""
    x = values.astype(np.float64)
    with np.errstate(invalid="ignore"):
        return x >= threshold if sign > 0 else x <= -threshold


BOUNDARY_THRESHOLDS = [
    0.5,  # exactly a float16 value
    0.5 + 2.0**-12,  # between two float16 values
    0.1,  # float16(0.1) lies below 0.1
    0.3,
    0.0,
    -0.0,
    -0.25,
    -1e-10,
    1e-10,
    6e-8,  # around the smallest subnormal
    65504.0,  # largest finite float16
    65505.0,  # above it: only +inf is on
    1e9,
    -1e9,
]


@pytest.mark.parametrize("threshold", BOUNDARY_THRESHOLDS)
@pytest.mark.parametrize("sign", [1, -1])
def test_is_on_matches_exact_comparison_on_every_float16(threshold, sign):
    expected = exact_on(ALL_FLOAT16, threshold, sign)
    assert np.array_equal(is_on(ALL_FLOAT16, threshold, sign), expected)


@given(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1, -1]))
@settings(max_examples=60, deadline=None)
def test_is_on_exact_for_any_threshold(threshold, sign):
    assert np.array_equal(
        is_on(ALL_FLOAT16, threshold, sign), exact_on(ALL_FLOAT16, threshold, sign)
    )


def test_threshold_is_not_rounded_to_float16():
    below = np.float16(0.1)  # 0.0999755859375
    above = np.nextafter(below, np.float16(1))
    assert float(below) < 0.1 < float(above)
    values = np.array([below, above], np.float16)
    assert is_on(values, 0.1).tolist() == [False, True]
    assert is_on(-values, 0.1, sign=-1).tolist() == [False, True]
    assert on_bit_ranges(0.5) == ((int(np.float16(0.5).view(np.uint16)), 0x7C00),)


def test_nan_is_never_on_and_infinities_compare():
    values = np.array([np.nan, np.inf, -np.inf, -np.nan], np.float16)
    assert is_on(values, 0.0).tolist() == [False, True, False, False]
    assert is_on(values, 1e9, sign=-1).tolist() == [False, False, True, False]
    assert is_on(values, -1e9).tolist() == [False, True, False, False]
    assert is_on(values, -65504.0).tolist() == [False, True, False, False]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, "0.3", None, True])
def test_bad_threshold_is_refused(bad):
    with pytest.raises(ValueError, match="threshold"):
        on_bit_ranges(bad)


def test_bad_sign_is_refused():
    with pytest.raises(ValueError, match="sign"):
        on_bit_ranges(0.3, sign=0)


# ---------------------------------------------------------------------------------------
# select
# ---------------------------------------------------------------------------------------


def small_store():
    # dim 4, 10 tokens, documents [0, 4), [4, 10)
    v = np.zeros((4, 10), np.float16)
    v[0, 1:4] = 1.0  # on at 1..3, off at 0
    v[1, 0:4] = 1.0  # on at 0..3
    v[2, 2:3] = 1.0  # on only at 2
    v[3, 3:8] = 1.0  # crosses the document boundary
    return ArrayStore(v, "layers.1.c"), np.array([0, 4, 10])


def test_select_padding_stays_in_the_document():
    store, docs = small_store()
    p = select(store, docs, 1, 3, 0.5)
    assert p.units == (0,)  # unit 1 is on at the left padding, unit 2 is off at 1
    assert (p.start, p.end, p.document, p.layer, p.kind) == (1, 3, 0, 1, "c")
    assert p.how == "select [1, 3) x ≥ 0.5 on layers.1.c, padding 1/0"
    # at the document start the padding would lie outside it: no unit is shown off there
    assert select(store, docs, 0, 2, 0.5).units == ()
    assert select(store, docs, 0, 2, 0.5, pad_left=0).units == (1,)
    # right padding past the document's last token: position 4 is another document
    assert select(store, docs, 3, 4, 0.5, pad_left=0, pad_right=2).units == ()
    assert select(store, docs, 2, 3, 0.5, pad_left=0, pad_right=1).units == (2,)
    # unit 3 is on across the boundary, but 4 is the next document's first token
    assert select(store, docs, 4, 6, 0.5).units == ()
    assert select(store, docs, 4, 6, 0.5, pad_left=0).units == (3,)
    assert select(store, docs, 8, 10, 0.5).units == ()


def test_select_negative_sign():
    store, docs = small_store()
    values = -store.values
    neg = ArrayStore(values, "layers.1.c")
    assert select(neg, docs, 1, 3, 0.5, sign=-1).units == (0,)
    assert "x ≤ -0.5" in select(neg, docs, 1, 3, 0.5, sign=-1).how


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (-1, 2, "start=-1"),
        (10, 11, "start=10"),
        (2, 11, "end=11"),
        (3, 3, "empty span"),
        (5, 2, "empty span"),
        (3, 5, "crosses the end of document 0"),
        (1.0, 3, "start must be an integer"),
    ],
)
def test_select_refuses_bad_spans(start, end, message):
    store, docs = small_store()
    with pytest.raises(ValueError, match=message):
        select(store, docs, start, end, 0.5)


def test_select_refuses_bad_arguments():
    store, docs = small_store()
    with pytest.raises(ValueError, match="pad_left must be >= 0, got -1"):
        select(store, docs, 1, 3, 0.5, pad_left=-1)
    with pytest.raises(ValueError, match="pad_right"):
        select(store, docs, 1, 3, 0.5, pad_right=-2)
    with pytest.raises(ValueError, match="threshold must be finite"):
        select(store, docs, 1, 3, math.nan)
    with pytest.raises(ValueError, match="sign"):
        select(store, docs, 1, 3, 0.5, sign=2)
    with pytest.raises(ValueError, match="doc_starts must run from 0 to n_tokens=10"):
        select(store, np.array([0, 4, 9]), 1, 3, 0.5)
    with pytest.raises(ValueError, match="must not decrease"):
        select(store, np.array([0, 6, 4, 10]), 1, 3, 0.5)


# ---------------------------------------------------------------------------------------
# match: fixed cases
# ---------------------------------------------------------------------------------------


def run_both(values, doc_starts, pattern, limit=50, fuzzy=True, context=2, *,
             min_length=None, length=None, store=None):
    """Match with the fast path and with the reference; they must agree exactly."""
    store = store if store is not None else ArrayStore(values, pattern.state)
    tokens = words(store.n_tokens)
    text_of = partial(text_of_words, tokens)
    fast = match(
        store, doc_starts, pattern, limit=limit, fuzzy=fuzzy, text_of=text_of, context=context,
        min_length=min_length, length=length,
    )
    slow = ref_match(values, doc_starts, pattern, limit, fuzzy, text_of, context,
                     min_length, length)
    assert fast == slow
    # without the histogram the ranking skips stretches of low counts: the same matches
    quick = match(
        store, doc_starts, pattern, limit=limit, fuzzy=fuzzy, text_of=text_of, context=context,
        min_length=min_length, length=length, histogram=False,
    )
    assert quick == dataclasses.replace(slow, length_histogram=None, n_candidates=None)
    return fast


def test_match_small_example():
    store, docs = small_store()
    p = select(store, docs, 1, 3, 0.5)
    result = run_both(store.values, docs, p)
    assert result.query.is_query and result.query.overlap == 1
    assert result.query.text == "w1 w2" and result.query.left == "w0" and result.query.right == "w3"
    assert result.matches[0].overlap == 1
    # unit 0's run [1, 4) is a candidate; the query span [1, 3) is added
    spans = {(m.start, m.end) for m in result.matches}
    assert (1, 4) in spans and (1, 3) in spans
    assert sum(result.length_histogram.values()) == result.n_candidates


def test_match_finds_repeated_pattern_in_other_documents():
    rng = np.random.default_rng(3)
    values = (rng.random((8, 40)) < 0.15).astype(np.float16) * np.float16(0.5)
    pattern_units = [1, 4, 6]
    for start in (5, 17, 31):
        values[pattern_units, start : start + 3] = 1
        values[pattern_units, start - 1] = 0
    docs = np.array([0, 12, 25, 40])
    p = select(ArrayStore(values), docs, 5, 8, 0.75)
    assert set(pattern_units) <= set(p.units)
    result = run_both(values, docs, p)
    top = {(m.start, m.end) for m in result.matches[:3]}
    assert {(17, 20), (31, 34)} <= top | {(m.start, m.end) for m in result.matches}


def test_match_refuses_empty_and_foreign_patterns():
    store, docs = small_store()
    empty = select(store, docs, 8, 10, 0.5)
    with pytest.raises(ValueError, match="selected no units"):
        match(store, docs, empty)
    p = select(store, docs, 1, 3, 0.5)
    with pytest.raises(ValueError, match="layers.1.c"):
        match(ArrayStore(store.values, "layers.0.h"), docs, p)
    with pytest.raises(ValueError, match="limit must be >= 1, got 0"):
        match(store, docs, p, limit=0)
    with pytest.raises(ValueError, match="context must be >= 0, got -1"):
        match(store, docs, p, context=-1)
    too_wide = made_pattern(docs, (0, 7), 1, 3, state=p.state)
    with pytest.raises(ValueError, match="do not fit dim=4"):
        match(store, docs, too_wide)
    moved = made_pattern([0, 10], p.units, 3, 6, state=p.state)
    with pytest.raises(ValueError, match="crosses the end of document 0"):
        match(store, docs, moved)
    with pytest.raises(ValueError, match="limit must be at most 100,000 matches"):
        match(store, docs, p, limit=10**9)
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="threshold must be finite"):
            match(store, docs, made_pattern(docs, p.units, 1, 3, threshold=bad, state=p.state))
    outside = made_pattern([0, 10], p.units, 1, 3, state=p.state)
    with pytest.raises(ValueError, match="end=12 is outside the index"):
        match(store, docs, dataclasses.replace(outside, start=8, end=12))


def test_match_all_units_on_everywhere():
    values = np.ones((5, 30), np.float16)
    docs = np.array([0, 1, 10, 11, 30])  # includes one-token documents
    p = select(ArrayStore(values), docs, 12, 15, 0.5, pad_left=0)
    assert p.units == (0, 1, 2, 3, 4)
    result = run_both(values, docs, p, min_length=1)
    assert result.length_histogram == {1: 2, 3: 1, 9: 1, 19: 1}
    # by default a 3-token span matches spans of 2 tokens or more: not the one-token documents
    assert run_both(values, docs, p).length_histogram == {3: 1, 9: 1, 19: 1}
    assert run_both(values, docs, p, length=9).length_histogram == {9: 1}
    # padding 1 with every unit on: only spans at document starts can match
    p1 = made_pattern(docs, p.units, 12, 15, pad_left=1, pad_right=1)
    run_both(values, docs, p1)


def test_match_pattern_equal_to_all_units_and_at_the_edges():
    rng = np.random.default_rng(7)
    values = rng.choice(np.array([-1, 0, 0.5, 1], np.float16), size=(3, 25))
    docs = np.array([0, 8, 25])
    for start, end in [(0, 1), (0, 3), (24, 25), (22, 25), (7, 8), (8, 9)]:
        p = made_pattern(docs, (0, 1, 2), start, end, pad_left=1, pad_right=1)
        for fuzzy in (True, False):
            run_both(values, docs, p, fuzzy=fuzzy, limit=5)


def test_match_nothing_on_except_the_query():
    values = np.zeros((4, 20), np.float16)
    values[2, 10:12] = 1
    docs = np.array([0, 20])
    p = select(ArrayStore(values), docs, 10, 12, 0.5)
    result = run_both(values, docs, p)
    assert [(m.start, m.end) for m in result.matches] == [(10, 12)]
    assert result.matches[0].is_query


def test_match_pattern_that_does_not_hold_on_its_own_span():
    values = np.zeros((3, 12), np.float16)
    values[0, 3:6] = 1
    docs = np.array([0, 12])
    p = made_pattern(docs, (0, 1), 8, 10)
    result = run_both(values, docs, p)
    assert result.query.overlap == 0 and result.query.is_query
    assert all(not m.is_query for m in result.matches)


# ---------------------------------------------------------------------------------------
# match: property tests against the reference
# ---------------------------------------------------------------------------------------

LEVELS = np.array([-1.0, -0.5, -0.1, 0.0, 0.1, 0.3, 0.5, 0.75, 1.0], np.float16)
SPECIALS = np.array([np.nan, np.inf, -np.inf, -0.0], np.float16)


@st.composite
def problems(draw):
    dim = draw(st.integers(1, 12))
    n = draw(st.integers(1, 60))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    on_rate = draw(st.sampled_from([0.1, 0.4, 0.8, 1.0]))
    base = rng.choice(LEVELS, size=(dim, n))
    high = rng.random((dim, n)) < on_rate
    values = np.where(high, np.abs(base) + np.float16(0.3), base).astype(np.float16)
    if draw(st.booleans()):
        values = np.where(rng.random((dim, n)) < 0.03, rng.choice(SPECIALS, (dim, n)), values)
    if draw(st.booleans()):  # smooth runs, like recurrent states
        values = np.repeat(values[:, : (n + 2) // 3], 3, axis=1)[:, :n]
    n_boundaries = draw(st.integers(0, min(n - 1, 8)))
    inner = rng.choice(np.arange(1, n), size=n_boundaries, replace=False).tolist() if n > 1 else []
    if inner and draw(st.booleans()):  # empty documents: repeated boundaries
        inner += inner[: draw(st.integers(1, len(inner)))]
    doc_starts = np.array([0, *sorted(inner), n], np.int64)
    nonempty = np.flatnonzero(np.diff(doc_starts) > 0)
    d = int(draw(st.sampled_from(nonempty.tolist())))
    first, stop = int(doc_starts[d]), int(doc_starts[d + 1])
    start = draw(st.integers(first, stop - 1))
    end = draw(st.integers(start + 1, min(stop, start + 4)))
    sign = draw(st.sampled_from([1, -1]))
    exact = float(values[rng.integers(dim), rng.integers(n)])
    threshold = draw(
        st.sampled_from([0.1, 0.3, 0.5, 0.0, -0.1])
        | st.just(abs(exact) if math.isfinite(exact) else 0.5)
        | st.floats(-1.2, 1.2)
    )
    pad_left = draw(st.integers(0, 3))
    pad_right = draw(st.integers(0, 3))
    return values, doc_starts, start, end, threshold, pad_left, pad_right, sign


# how the fast path splits its work: positions per counting task, groups of documents per
# run listing (threads x 2), candidates each listing task keeps, and the first guess of the
# lowest bound needed (_SPARE 0: as high as it can be, so lower bands are listed again)
SPLITS = st.tuples(
    st.sampled_from([1, 3, 7, query._TASK_TOKENS]), st.sampled_from([1, 2, 5]),
    st.sampled_from([1, 2, 5, query._KEEP]), st.sampled_from([0, 1, query._SPARE]),
)


def split_work(splits):
    task, threads, keep, spare = splits
    return mock.patch.multiple(query, _TASK_TOKENS=task, threads=lambda: threads, _KEEP=keep,
                               _SPARE=spare)


@given(problems(), st.booleans(), st.sampled_from([1, 2, 5, 50]), SPLITS)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_select_then_match_equals_reference(problem, fuzzy, limit, splits):
    values, doc_starts, start, end, threshold, pad_left, pad_right, sign = problem
    store = ArrayStore(values)
    p = select(store, doc_starts, start, end, threshold, pad_left, pad_right, sign)
    assert p.units == ref_select(
        values, doc_starts, start, end, threshold, pad_left, pad_right, sign
    )
    if not p.units:
        with pytest.raises(ValueError, match="selected no units"):
            match(store, doc_starts, p)
        return
    with split_work(splits):
        run_both(values, doc_starts, p, limit=limit, fuzzy=fuzzy)


@given(problems(), st.booleans(), st.sampled_from([1, 3, 50]), SPLITS, st.data())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_match_of_any_unit_set_equals_reference(problem, fuzzy, limit, splits, data):
    values, doc_starts, start, end, threshold, pad_left, pad_right, sign = problem
    dim = values.shape[0]
    units = data.draw(st.sets(st.integers(0, dim - 1), min_size=1))
    p = made_pattern(doc_starts, units, start, end, threshold, pad_left, pad_right, sign)
    longest = int(np.diff(doc_starts).max())
    rule = data.draw(st.sampled_from(["default", "min", "exact"]))
    lengths = {}
    if rule != "default":
        lengths["min_length" if rule == "min" else "length"] = data.draw(st.integers(1, longest))
    # segments cut at some document starts
    cuts = data.draw(st.sets(st.sampled_from(doc_starts[1:-1].tolist() or [0])))
    store = SegmentedStore(values, sorted(cuts))
    with split_work(splits):
        run_both(values, doc_starts, p, limit=limit, fuzzy=fuzzy, store=store, **lengths)


def test_match_ties_are_broken_by_position():
    # the same 3-token pattern in 40 places: every one ties on overlap, extra and length
    values = np.zeros((6, 400), np.float16)
    for a in range(5, 400, 10):
        values[[1, 3, 4], a : a + 3] = 1
    docs = np.array([0, 100, 200, 400])
    p = select(ArrayStore(values), docs, 205, 208, 0.5)
    assert p.units == (1, 3, 4)
    for keep, limit in [(1, 5), (3, 7), (query._KEEP, 50)]:
        with mock.patch.object(query, "_KEEP", keep):
            result = run_both(values, docs, p, limit=limit)
        assert [m.start for m in result.matches] == list(range(5, 400, 10))[:limit]


def test_match_runs_at_segment_and_document_edges():
    rng = np.random.default_rng(21)
    values = np.where(rng.random((9, 120)) < 0.5, np.float16(1), np.float16(0))
    docs = np.array([0, 1, 30, 31, 60, 90, 120])
    values[:, 28:33] = 1  # a run that would cross two document boundaries
    values[:, 58:62] = 1
    for cuts in ([], [30], [31, 60], [1, 30, 31, 60, 90]):
        store = SegmentedStore(values, cuts)
        for start, end in [(0, 1), (28, 30), (30, 31), (31, 33), (58, 60), (60, 62), (118, 120)]:
            for pl, pr in [(0, 0), (1, 0), (2, 3)]:
                p = made_pattern(docs, range(9), start, end, 0.5, pl, pr)
                for rule in ({}, {"min_length": 1}, {"length": 2}):
                    run_both(values, docs, p, store=store, limit=10, **rule)


def test_match_nothing_on_anywhere():
    values = np.zeros((4, 30), np.float16)
    docs = np.array([0, 10, 30])
    p = made_pattern(docs, (0, 2), 12, 14)
    result = run_both(values, docs, p)
    assert result.matches == () and result.query.overlap == 0
    assert result.length_histogram == {2: 1} and result.n_candidates == 1  # the query's span


@pytest.mark.parametrize("size", [1, 2, 64, 65, 300])
def test_match_pattern_sizes(size):
    rng = np.random.default_rng(size)
    dim, n = max(size, 70), 160
    # sticky units: runs of on and off like recurrent states
    state = np.cumsum(rng.random((dim, n)) < 0.2, axis=1) % 2
    values = np.where(state == 1, np.float16(0.9), np.float16(-0.3)).astype(np.float16)
    docs = np.array([0, 40, 41, 100, 160])
    units = rng.choice(dim, size, replace=False)
    for start, end in [(50, 53), (40, 41), (100, 102)]:
        p = made_pattern(docs, units, start, end, 0.5)
        for fuzzy in (True, False):
            run_both(values, docs, p, fuzzy=fuzzy, limit=20)


@pytest.mark.parametrize("threshold,sign", [(0.5, 1), (0.0, 1), (-0.3, 1), (0.2, -1)])
def test_padding_outside_a_document_shows_no_unit_off(threshold, sign):
    rng = np.random.default_rng(4)
    values = rng.choice(np.array([-1, -0.5, 0.25, 1], np.float16), size=(5, 40))
    values[:, 10:12] = 1 if sign > 0 else -1  # every unit on at a document's start
    docs = np.array([0, 10, 25, 40])
    store = ArrayStore(values)
    assert select(store, docs, 10, 12, threshold, pad_left=1, sign=sign).units == ()
    assert select(store, docs, 23, 25, threshold, pad_left=0, pad_right=1, sign=sign).units == ()
    assert select(store, docs, 10, 12, threshold, pad_left=0, sign=sign).units == (0, 1, 2, 3, 4)
    for start, end in [(10, 12), (12, 14), (23, 25), (1, 3)]:
        for pad_left, pad_right in [(1, 1), (2, 0), (0, 0)]:
            p = made_pattern(docs, range(5), start, end, threshold, pad_left, pad_right, sign)
            result = run_both(values, docs, p, min_length=1)
            assert all(m.start - pad_left >= docs[m.document]
                       and m.end + pad_right <= docs[m.document + 1] for m in result.matches)


def test_length_rule_is_checked():
    store, docs = small_store()
    p = select(store, docs, 1, 3, 0.5)
    for kwargs, message in [({"min_length": 0}, "min_length must be at least 1 token, got 0"),
                            ({"length": -2}, "length must be at least 1 token, got -2"),
                            ({"length": 2.5}, "length must be an integer, got 2.5"),
                            ({"min_length": 99}, "min_length=99 is longer than the longest"),
                            ({"min_length": 2, "length": 3}, "not both")]:
        with pytest.raises(ValueError, match=message):
            match(store, docs, p, **kwargs)


def test_larger_random_index_equals_reference():
    rng = np.random.default_rng(11)
    dim, n = 10, 3000
    # sticky on/off units, some rarely on
    flips = rng.random((dim, n)) < rng.uniform(0.05, 0.4, (dim, 1))
    state = np.cumsum(flips, axis=1) % 2
    values = np.where(state == 1, np.float16(0.8), np.float16(-0.2)).astype(np.float16)
    doc_starts = np.array([0, *sorted(rng.choice(np.arange(1, n), 40, replace=False)), n])
    store = ArrayStore(values)
    for start, end, pl, pr in [(100, 103, 1, 0), (1500, 1501, 2, 1), (2990, 2993, 0, 2)]:
        d = ref_document(list(doc_starts), start)
        end = min(end, int(doc_starts[d + 1]))
        p = select(store, doc_starts, start, end, 0.5, pl, pr)
        if p.units:
            for limit in (20, 400):  # few and many windows of stored values to read
                run_both(values, doc_starts, p, limit=limit)


def test_real_state_store_gives_the_same_results(tmp_path):
    store_module = pytest.importorskip("lstmsearch.store")
    rng = np.random.default_rng(5)
    values = np.where(rng.random((16, 500)) < 0.3, np.float16(0.9), np.float16(-0.4))
    values[[2, 5, 9], 200:203] = 1
    values[[2, 5, 9], 199] = 0
    doc_starts = np.array([0, 120, 121, 300, 500])
    path = tmp_path / "layers.1.c.f16"
    writer = store_module.StateWriter.create(path, 16, 500)
    writer.write(0, values)
    writer.close()
    real = store_module.StateStore(path, "layers.1.c", 1, "c", 16, 500)
    memory = ArrayStore(values, "layers.1.c")
    p = select(real, doc_starts, 200, 203, 0.95)
    assert p == select(memory, doc_starts, 200, 203, 0.95)
    assert {2, 5, 9} <= set(p.units)
    for fuzzy in (True, False):
        expected = match(memory, doc_starts, p, limit=10, fuzzy=fuzzy)
        assert match(real, doc_starts, p, limit=10, fuzzy=fuzzy) == expected
        assert expected == ref_match(values, doc_starts, p, 10, fuzzy, None, 5)

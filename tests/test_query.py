"""Tests of select/match against a slow, obviously correct reference implementation."""

from __future__ import annotations

import math
from functools import partial
from unittest import mock

import numpy as np
import pytest
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


class ArrayStore:
    """States of one (layer, kind) held in memory, unit-major: ``values[unit, position]``."""

    def __init__(self, values: np.ndarray, name: str = "layers.0.c") -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float16)
        if self.values.ndim != 2:
            raise ValueError(f"values must be (dim, n_tokens), got shape {self.values.shape}")
        self.name = name
        _, layer, kind = name.split(".")
        self.layer, self.kind = int(layer), kind
        self.dim, self.n_tokens = self.values.shape

    def column(self, unit: int) -> np.ndarray:
        return self.values[unit]

    def block(self, units, start: int, end: int) -> np.ndarray:
        return np.array(self.values[units, start:end])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.values[:, positions]


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


def ref_padding(doc_starts, a: int, b: int, pad_left: int, pad_right: int) -> list[int]:
    d = ref_document(doc_starts, a)
    first, stop = doc_starts[d], doc_starts[d + 1]
    before = [t for t in range(a - pad_left, a) if first <= t]
    after = [t for t in range(b, b + pad_right) if t < stop]
    return before + after


def ref_active(on, doc_starts, a: int, b: int, pad_left: int, pad_right: int) -> set[int]:
    """Units on at every position of [a, b) and off on the padding inside the document."""
    padding = ref_padding(doc_starts, a, b, pad_left, pad_right)
    return {
        u
        for u in range(len(on))
        if all(on[u][t] for t in range(a, b)) and not any(on[u][t] for t in padding)
    }


def ref_select(values, doc_starts, start, end, threshold, pad_left=1, pad_right=0, sign=1):
    on = ref_on_matrix(values, threshold, sign)
    return tuple(sorted(ref_active(on, list(doc_starts), start, end, pad_left, pad_right)))


def ref_match(values, doc_starts, pattern: Pattern, limit, fuzzy, text_of, context):
    doc_starts = [int(x) for x in doc_starts]
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
                    spans.add((a, t))
                else:
                    t += 1
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
    query = next(m for m in evaluated if m.is_query)
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


def test_select_uses_padding_inside_the_document_only():
    store, docs = small_store()
    p = select(store, docs, 1, 3, 0.5)
    assert p.units == (0,)  # unit 1 is on at the left padding, unit 2 is off at 1
    assert (p.start, p.end, p.document, p.layer, p.kind) == (1, 3, 0, 1, "c")
    assert p.how == "select [1, 3) x ≥ 0.5 on layers.1.c, padding 1/0"
    # at the document start there is no left padding: unit 1 qualifies
    assert select(store, docs, 0, 2, 0.5).units == (1,)
    # right padding at the document's last token: position 4 is another document
    assert select(store, docs, 3, 4, 0.5, pad_left=0, pad_right=2).units == (0, 1, 3)
    # unit 3 starts at the next document's first token
    assert select(store, docs, 4, 6, 0.5).units == (3,)
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


def run_both(values, doc_starts, pattern, limit=50, fuzzy=True, context=2):
    """Match with the fast path and with the reference; they must agree exactly."""
    store = ArrayStore(values, pattern.state)
    tokens = words(store.n_tokens)
    text_of = partial(text_of_words, tokens)
    fast = match(
        store, doc_starts, pattern, limit=limit, fuzzy=fuzzy, text_of=text_of, context=context
    )
    slow = ref_match(values, doc_starts, pattern, limit, fuzzy, text_of, context)
    assert fast == slow
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


def test_match_all_units_on_everywhere():
    values = np.ones((5, 30), np.float16)
    docs = np.array([0, 1, 10, 11, 30])  # includes one-token documents
    p = select(ArrayStore(values), docs, 12, 15, 0.5, pad_left=0)
    assert p.units == (0, 1, 2, 3, 4)
    result = run_both(values, docs, p)
    assert result.length_histogram == {1: 2, 3: 1, 9: 1, 19: 1}
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


# how the fast path splits its work: candidates up to `short` tokens take the dense path and
# longer ones the listed path; candidates are evaluated `batch` positions at a time
SPLITS = st.tuples(
    st.sampled_from([1, 2, 3, query._SHORT]), st.sampled_from([1, 2, 7, query._BATCH_POSITIONS])
)


def split_work(splits):
    short, batch = splits
    return mock.patch.multiple(query, _SHORT=short, _BATCH_POSITIONS=batch)


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
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_match_of_any_unit_set_equals_reference(problem, fuzzy, limit, splits, data):
    values, doc_starts, start, end, threshold, pad_left, pad_right, sign = problem
    dim = values.shape[0]
    units = data.draw(st.sets(st.integers(0, dim - 1), min_size=1))
    p = made_pattern(doc_starts, units, start, end, threshold, pad_left, pad_right, sign)
    with split_work(splits):
        run_both(values, doc_starts, p, limit=limit, fuzzy=fuzzy)


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

"""Thresholds that fit the data: the suggested threshold against a scan of every threshold
with `query.select`, and a state's quantiles against numpy over all its values."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ArrayStore

from lstmsearch import query
from lstmsearch.thresholds import state_scale, suggest_threshold


def highest_nonempty(store, starts, span, pad, sign) -> float | None:
    """The reference: thresholds 2.000, 1.999, ..., 0.001 tried with query.select, the first
    (highest) that selects some unit."""
    for k in range(2000, 0, -1):
        theta = k / 1000
        pattern = query.select(store, starts, *span, theta, pad_left=pad[0], pad_right=pad[1],
                               sign=sign)
        if pattern.units:
            return theta
    return None


@pytest.mark.parametrize("seed", range(6))
def test_suggestion_is_the_highest_threshold_that_selects(seed: int) -> None:
    rng = np.random.default_rng(seed)
    dim, n = 12, 60
    values = rng.normal(0, 0.6, (dim, n))
    if seed % 2:  # adversarial: a saturated unit, ties, and units equal on span and padding
        values[0] = 1.0
        values[1, :] = values[2, :]
        values[3] = np.round(values[3], 1)
    store = ArrayStore(np.clip(values, -1.9, 1.9))
    starts = np.array([0, 25, n])
    for span, pad in [((5, 8), (1, 0)), ((10, 12), (2, 1)), ((30, 31), (0, 0)),
                      ((26, 29), (1, 1)), ((40, 45), (3, 2))]:
        for sign in (1, -1):
            expected = highest_nonempty(store, starts, span, pad, sign)
            got = suggest_threshold(store, starts, *span, *pad, sign=sign)
            if expected is None:
                assert got is None
                continue
            assert got is not None and got.threshold == pytest.approx(expected)
            assert got.sign == sign
            again = query.select(store, starts, *span, got.threshold, pad_left=pad[0],
                                 pad_right=pad[1], sign=sign)
            assert got.units == again.units and got.units


def test_no_suggestion_when_the_padding_leaves_the_document() -> None:
    store = ArrayStore(np.ones((3, 20)))
    starts = np.array([0, 10, 20])
    assert suggest_threshold(store, starts, 10, 12, pad_left=1) is None
    found = suggest_threshold(store, starts, 11, 12, pad_left=1)
    assert found is None  # on in the padding as well: nothing stands out
    store.values[1, 11] = 1.5
    store.values[1, 10] = 0.25
    found = suggest_threshold(store, starts, 11, 12, pad_left=1)
    assert found is not None and found.units == (1,) and found.threshold == 1.5


def test_bad_spans_are_refused() -> None:
    store = ArrayStore(np.zeros((2, 10)))
    starts = np.array([0, 5, 10])
    with pytest.raises(ValueError, match="crosses"):
        suggest_threshold(store, starts, 4, 6)
    with pytest.raises(ValueError, match="sign"):
        suggest_threshold(store, starts, 1, 2, sign=0)


def test_state_scale_quantiles_match_numpy() -> None:
    rng = np.random.default_rng(3)
    values = rng.standard_t(3, (8, 500)) * 4
    store = ArrayStore(np.clip(values, -60000, 60000))
    scale = state_scale(store)
    assert scale.positions == 500  # small: every position
    x = store.values.astype(np.float64).ravel()
    np.testing.assert_allclose(scale.levels[[0, 500, 990, 1000]],
                               np.quantile(np.abs(x), [0, 0.5, 0.99, 1]))
    assert scale.low == pytest.approx(np.quantile(x, 0.001))
    assert scale.high == pytest.approx(np.quantile(x, 0.999))
    # threshold_at and quantile_of are inverse (up to the 3 decimals of a threshold)
    for q in (0.1, 0.5, 0.9, 0.99):
        theta = scale.threshold_at(q)
        assert theta == round(float(np.quantile(np.abs(x), q)), 3)
        assert scale.quantile_of(theta) == pytest.approx(q, abs=2e-3)
    assert scale.quantile_of(0) == 0 and scale.quantile_of(1e9) == 1
    # evenly spaced positions when the state is large: their values exactly
    sampled = state_scale(store, max_values=8 * 100)
    assert sampled.positions == 100
    read = store.values[:, np.linspace(0, 499, 100).round().astype(int)]
    np.testing.assert_allclose(sampled.levels[[0, 500, 1000]],
                               np.quantile(np.abs(read.astype(np.float64)), [0, 0.5, 1]),
                               rtol=1e-6)


def test_a_units_own_threshold_is_its_q99_or_minus_its_q01() -> None:
    from lstmsearch.thresholds import unit_threshold

    assert unit_threshold(-0.8, 0.4567, 1) == 0.456
    assert unit_threshold(-0.8123, 0.4567, -1) == 0.812
    assert unit_threshold(0.1, 0.9, -1) == 0.0  # never below zero: never on for x ≤ −θ
    assert unit_threshold(-0.9, -0.1, 1) == 0.0
    assert unit_threshold(float("nan"), float("nan"), 1) == 0.0
    rng = np.random.default_rng(0)
    column = rng.normal(0, 1, 10_000).astype(np.float16)
    theta = unit_threshold(*np.quantile(column.astype(np.float64), [0.01, 0.99]), 1)
    assert abs(query.is_on(column, theta).mean() - 0.01) < 0.002

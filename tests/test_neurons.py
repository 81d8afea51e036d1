"""Neuron queries: threshold hits against a brute-force scan, top-K against a sort, stats
against numpy, correlation against the analysis ranking, and clear errors."""

from __future__ import annotations

import numpy as np
import pytest

from lstmsearch.analysis.units import rank_units
from lstmsearch.neurons import activation_key, correlate_columns, scan, scan_pieces, scan_top
from lstmsearch.store import StateStore, StateWriter

STATE = "layers.1.c"


def brute_force(column: np.ndarray, above: float | None, below: float | None) -> np.ndarray:
    """Positions passing the test, comparing each stored value as an exact real number."""
    keep = []
    for pos, value in enumerate(column.tolist()):
        ok = value == value  # NaN is never on
        if above is not None:
            ok = ok and value >= above
        if below is not None:
            ok = ok and value <= below
        if ok:
            keep.append(pos)
    return np.array(keep, dtype=np.int64)


def random_column(rng: np.random.Generator, n: int) -> np.ndarray:
    """Float16 values with ties, signed zeros, infinities and NaN."""
    column = (rng.standard_normal(n) * rng.choice([0.1, 1.0, 5.0])).astype(np.float16)
    special = rng.integers(0, n, 12)
    column[special] = np.array(
        [np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0, -1.0, 0.5, 0.5, -0.5, 65504, -65504],
        dtype=np.float16,
    )
    return column


def random_bound(rng: np.random.Generator, column: np.ndarray) -> float:
    """A threshold: a stored value, a value between float16 neighbours, or any number."""
    finite = column[np.isfinite(column)]
    choice = rng.integers(3)
    if choice == 0:
        return float(rng.choice(finite))
    if choice == 1:
        v = rng.choice(finite)
        return (float(v) + float(np.nextafter(v, np.float16(np.inf)))) / 2
    return float(rng.normal(0, 2))


def test_scan_equals_brute_force_on_random_data() -> None:
    rng = np.random.default_rng(7)
    for trial in range(60):
        column = random_column(rng, int(rng.integers(1, 3000)))
        above = random_bound(rng, column) if trial % 3 != 1 else None
        below = random_bound(rng, column) if trial % 3 != 0 else None
        limit = int(rng.choice([0, 1, 5, 50, 10_000]))
        expected = brute_force(column, above, below)
        count, positions = scan(column, above, below, limit)
        assert count == len(expected), (trial, above, below)
        np.testing.assert_array_equal(positions, expected[:limit])


def test_scan_of_pieces_equals_one_column() -> None:
    rng = np.random.default_rng(9)
    column = random_column(rng, 5000)
    cuts = [0, 1, 1700, 1701, 4000, 5000]
    pieces = [(a, column[a:b]) for a, b in zip(cuts, cuts[1:])]
    for above, below, limit in [(0.5, None, 10), (None, -0.2, 3000), (-1.0, 1.0, 0),
                                (100.0, None, 5), (-0.0, 0.0, 50)]:
        expected = brute_force(column, above, below)
        count, positions = scan_pieces(pieces, above, below, limit)
        assert count == len(expected)
        np.testing.assert_array_equal(positions, expected[:limit])


def segmented_store(tmp_path, values: np.ndarray, cuts: list[int]) -> StateStore:
    """A real state store over several segment files, cut at `cuts`."""
    files = []
    bounds = [0, *cuts, values.shape[1]]
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        path = tmp_path / f"seg{i}.f16"
        writer = StateWriter.create(path, values.shape[0], b - a)
        writer.write(0, values[:, a:b])
        writer.close()
        files.append((path, b - a, None))
    return StateStore.of_segments("layers.0.c", 0, "c", values.shape[0], files)


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """The float64 oracle: Pearson r over the finite track values (0 when constant)."""
    ok = np.isfinite(y)
    x, y = x[ok].astype(np.float64), y[ok]
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx * dx).sum() * (dy * dy).sum())
    return float((dx * dy).sum() / denom) if denom > 0 else 0.0


def test_correlate_columns_equals_float64_pearson(tmp_path) -> None:
    rng = np.random.default_rng(13)
    dim, n = 40, 20_000
    track = np.cumsum(rng.standard_normal(n))
    track[rng.random(n) < 0.2] = np.nan  # tokens without a value
    values = rng.standard_normal((dim, n)) * rng.uniform(0.01, 30, (dim, 1))
    values += rng.normal(0, 100, (dim, 1))  # large offsets: sums of squares would cancel
    values[:10] += np.nan_to_num(track) * rng.uniform(-0.05, 0.05, (10, 1))
    values[10] = 3.0  # a constant unit
    values[11] = 5.0
    values[11, 7] = 5.00390625  # constant but for one value
    values = values.astype(np.float16)
    store = segmented_store(tmp_path, values, [1, 9000, 9001])
    r, count = correlate_columns(store, track)
    assert count == int(np.isfinite(track).sum())
    expected = np.array([pearson(values[u], track) for u in range(dim)])
    np.testing.assert_allclose(r, expected, atol=2e-5)
    assert r[10] == 0.0
    constant_track = np.where(np.isfinite(track), 2.0, np.nan)
    assert (correlate_columns(store, constant_track)[0] == 0).all()
    assert correlate_columns(store, np.full(n, np.nan))[1] == 0


def test_scan_finds_first_hits_across_blocks() -> None:
    column = np.zeros(300_000, dtype=np.float16)
    hits = np.array([5, 70_000, 140_000, 299_999])
    column[hits] = 1
    count, positions = scan(column, above=0.5, limit=3)
    assert count == 4
    np.testing.assert_array_equal(positions, hits[:3])


def test_scan_top_sorts_by_value_then_position() -> None:
    rng = np.random.default_rng(3)
    column = rng.integers(-5, 6, 500).astype(np.float16)  # many ties
    column[[10, 20]] = np.nan
    values = column.astype(np.float64)
    valid = np.flatnonzero(~np.isnan(values))
    for lowest in (False, True):
        key = values[valid] if lowest else -values[valid]
        expected = valid[np.lexsort((valid, key))]
        for k in (1, 7, 100, 498, 600):
            np.testing.assert_array_equal(scan_top(column, k, lowest), expected[:k])


def test_where_through_the_index(tiny_index) -> None:
    store = tiny_index.store(STATE)
    column = np.asarray(store.column(3))
    threshold = float(np.quantile(column.astype(np.float64), 0.8))
    result = tiny_index.neurons.where(3, 1, "c", above=threshold, limit=7)
    expected = brute_force(column, threshold, None)
    assert result.count == len(expected) and result.how == f"x ≥ {threshold:g}"
    np.testing.assert_array_equal(result.positions, expected[:7])
    assert [h.pos for h in result.hits] == sorted(h.pos for h in result.hits)
    for hit in result.hits:
        assert hit.value == float(column[hit.pos])
        assert hit.token == tiny_index.text(hit.pos, hit.pos + 1)
        assert hit.document == tiny_index.doc_of(hit.pos)
        first = int(tiny_index.doc_starts[hit.document])
        assert (hit.left + hit.token).endswith(
            tiny_index.text(max(first, hit.pos - 5), hit.pos + 1)
        )
    below = tiny_index.neurons.where(3, "layers.1.c", below=-threshold, limit=0)
    assert below.count == len(brute_force(column, None, -threshold)) and not below.hits
    band = tiny_index.neurons.where(3, 1, "c", above=-0.5, below=0.5, limit=3)
    assert band.count == len(brute_force(column, -0.5, 0.5)) and band.how == "-0.5 ≤ x ≤ 0.5"


def test_top_from_the_table_and_by_scan(tiny_index) -> None:
    column = np.asarray(tiny_index.store(STATE).column(5))
    values = column.astype(np.float64)
    positions = np.arange(len(values))
    for lowest in (False, True):
        expected = positions[np.lexsort((positions, values if lowest else -values))]
        result = tiny_index.neurons.top(5, 1, "c", 10, lowest=lowest)
        assert result.source == "top-k table"
        np.testing.assert_array_equal(result.positions, expected[:10])
        assert list(result.hits) == sorted(result.hits, key=lambda h: activation_key(h, lowest))
        stored_k = tiny_index.unit_top(STATE, unit=5, lowest=lowest)[0].size
        beyond = tiny_index.neurons.top(5, 1, "c", stored_k + 25, lowest=lowest, context=0)
        assert beyond.source == "scan" and beyond.hits[0].left == ""
        np.testing.assert_array_equal(beyond.positions, expected[: stored_k + 25])


def test_stats_match_numpy(tiny_index) -> None:
    values = np.asarray(tiny_index.store(STATE).column(2), dtype=np.float64)
    stats = tiny_index.neurons.stats(2, 1, "c")
    assert stats.n_tokens == tiny_index.n_tokens and stats.unit == 2
    assert stats.min == values.min() and stats.max == values.max()
    assert stats.mean == pytest.approx(values.mean(), rel=1e-9, abs=1e-12)
    assert stats.std == pytest.approx(values.std(), rel=1e-6, abs=1e-9)
    assert stats.q50 == pytest.approx(np.quantile(values, 0.5), abs=1e-3)
    assert stats.on_fraction[0.5] == pytest.approx(np.mean(values >= 0.5))


def test_correlate_ranks_like_the_analysis(tiny_index) -> None:
    expected = rank_units(tiny_index.states(STATE), tiny_index.track("depth"))
    ranked = tiny_index.neurons.correlate("depth", 1, "c")
    assert [c.unit for c in ranked] == [c.unit for c in expected]
    assert ranked[0].r == pytest.approx(expected[0].r, abs=1e-5)  # float32 blocks
    assert ranked[0].n == tiny_index.n_tokens
    assert len(tiny_index.neurons.correlate("depth", "layers.0.h", top=3)) == 3


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda n: n.where(0, 7, "c", above=0.5), "layers.7.c is not in this index"),
        (lambda n: n.where(0, 1, "q", above=0.5), "layers.1.q is not in this index"),
        (lambda n: n.where(99, 1, "c", above=0.5), "unit 99 out of range"),
        (lambda n: n.where(-1, 1, "c", above=0.5), "unit -1 out of range"),
        (lambda n: n.where("3", 1, "c", above=0.5), "unit must be an integer, got '3'"),
        (lambda n: n.where(0, 1, "c", above="high"), "above must be a number, got 'high'"),
        (lambda n: n.where(0, 1, "c", below=float("nan")), "below must be finite, got nan"),
        (lambda n: n.where(0, 1, "c"), "give a bound"),
        (lambda n: n.where(0, 1, "c", above=0.5, limit=-1), "limit must be at least 0, got -1"),
        (lambda n: n.top(0, 1, "c", 0), "k must be at least 1, got 0"),
        (lambda n: n.top(12, 1, "c", 5), "unit 12 out of range"),
        (lambda n: n.stats(0, 2, "h"), "layers.2.h is not in this index"),
        (lambda n: n.correlate("colour", 1, "c"), "no track 'colour'"),
        (lambda n: n.correlate("depth", 1, "c", top=0), "top must be at least 1, got 0"),
    ],
)
def test_bad_arguments_name_the_value(tiny_index, call, message) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(tiny_index.neurons)

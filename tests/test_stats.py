"""The compiled partial statistics of a segment equal the plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.stats import PARTIAL_FIELDS, partial_stats, segment_partials
from lstmsearch.store import to_stored


def columns_of(values: np.ndarray) -> np.ndarray:
    """Stored float16 columns (dim, tokens) of token-major float32 values."""
    return to_stored(values.astype(np.float32)).numpy()


def assert_same(got, want):
    for field in PARTIAL_FIELDS:
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("n", [1, 7, 99, 100, 101, 2500])
def test_segment_partials_equal_the_reference(seed, n):
    rng = np.random.default_rng(seed)
    values = np.stack([
        rng.choice([-1.0, -0.0, 0.0, 0.5, 1.0], size=n),  # heavy ties
        rng.standard_normal(n) * 3,
        np.where(rng.random(n) < 0.5, -0.0, 0.0),  # only signed zeros
        rng.standard_normal(n) * 1e5,  # clipped to +-65504
        np.linspace(-2, 2, n),
        np.full(n, 0.25),  # constant
        rng.standard_normal(n) * 1e-6,  # subnormal float16 values
    ], axis=1)
    columns = columns_of(values)
    first = int(rng.integers(0, 10**6))
    assert_same(segment_partials(columns, first), partial_stats(columns, first))
    assert_same(segment_partials(columns, first, k=3), partial_stats(columns, first, k=3))


def test_many_distinct_values_and_a_long_column():
    """Every finite float16 value at least once: the histogram's key order is the value order."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    every = every[np.isfinite(every)].astype(np.float32)
    rng = np.random.default_rng(5)
    values = np.stack([rng.permutation(every), np.sort(every)[::-1]], axis=1)
    columns = columns_of(values)
    got, want = segment_partials(columns, 0), partial_stats(columns, 0)
    assert_same(got, want)
    assert got.ptr[1] == len(np.unique(every.astype(np.float16) + 0.0))  # -0 merged into +0


@pytest.mark.parametrize("compress", [True, False])
def test_saved_partials_read_back_the_same(tmp_path, compress):
    from indexer.stats import load_partials, save_arrays, save_partials

    rng = np.random.default_rng(7)
    values = np.stack([rng.standard_normal(3000) * 2, np.full(3000, 0.5),
                       rng.choice([-1.0, 0.0, 1.0], 3000)], axis=1)
    parts = {"layers.0.c": segment_partials(columns_of(values), 10),
             "layers.1.h": segment_partials(columns_of(values[:7]), 0)}
    save_partials(tmp_path / "p.npz", parts, compress=compress)
    for name, got in load_partials(tmp_path / "p.npz").items():
        assert_same(got, parts[name])
    # a file written before keys were saved as steps reads the same
    save_arrays(tmp_path / "old.npz", {f"{name}/{field}": getattr(p, field)
                                       for name, p in parts.items() for field in PARTIAL_FIELDS})
    for name, got in load_partials(tmp_path / "old.npz").items():
        assert_same(got, parts[name])


@pytest.mark.parametrize("seed", range(3))
def test_row_statistics_equal_the_dense_histogram_ones(seed):
    """The statistics of sparse histogram rows, all units at once, against the dense
    65,536-bin computation (the same order statistics; sums in another order)."""
    from indexer.stats import histogram_stats, key_histograms, row_stats, sparse_rows

    rng = np.random.default_rng(seed)
    n = 5000
    values = np.stack([rng.standard_normal(n) * 3, rng.choice([-1.0, -0.0, 0.0, 2.0], n),
                       np.full(n, 0.25), rng.standard_normal(n) * 1e5, np.linspace(-2, 2, n)],
                      axis=1)
    bits = columns_of(values).view(np.uint16)
    dense = key_histograms(bits)
    want = histogram_stats(dense, 100)
    lengths, keys, counts = sparse_rows(dense)
    got = row_stats(np.concatenate([[0], np.cumsum(lengths)]), keys, counts, 100)
    for field in ("min", "max", "quantiles", "on", "kth_high", "kth_low"):
        np.testing.assert_array_equal(got[field], want[field], err_msg=field)
    for field in ("mean", "std"):
        np.testing.assert_allclose(got[field], want[field], rtol=1e-12, atol=1e-12)

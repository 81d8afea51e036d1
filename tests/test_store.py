"""State columns: unit-major float16 files, zero-copy columns, writing, growing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lstmsearch.store import (
    FLOAT16_MAX,
    CorruptStoreError,
    StateStore,
    StateWriter,
    to_stored,
)


def write_states(path, values: np.ndarray, capacity: int | None = None, splits=()) -> StateWriter:
    """Write token-major float32 `values` (T, dim) in blocks cut at `splits`."""
    n, dim = values.shape
    writer = StateWriter.create(path, dim, capacity or n)
    cuts = [0, *sorted(splits), n]
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        writer.write(a, to_stored(values[a:b]))
    writer.flush()
    return writer


@pytest.fixture()
def values() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)


def test_column_is_a_contiguous_zero_copy_view(tmp_path, values):
    write_states(tmp_path / "s.f16", values)
    store = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", 6, 50)
    col = store.column(3)
    assert col.dtype == np.float16 and col.shape == (50,)
    assert col.flags.c_contiguous
    base = col
    while base.base is not None and not isinstance(base, np.memmap):
        base = base.base
    assert isinstance(base, np.memmap)  # a view of the mapped file, not a copy
    np.testing.assert_array_equal(col, values[:, 3].astype(np.float16))
    assert not col.flags.writeable


def test_block_is_a_copy_of_units_by_tokens(tmp_path, values):
    write_states(tmp_path / "s.f16", values)
    store = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", 6, 50)
    expected = values.astype(np.float16).T
    np.testing.assert_array_equal(store.block([4, 1], 10, 20), expected[[4, 1], 10:20])
    np.testing.assert_array_equal(store.block(slice(2, 5), 0, 50), expected[2:5])
    block = store.block([0], 0, 5)
    block[0, 0] = 7  # a copy: writing it does not touch the store
    assert store.column(0)[0] == expected[0, 0]
    np.testing.assert_array_equal(store.tokens_by_units(), values.astype(np.float16))
    np.testing.assert_array_equal(store.vectors([3, 7]), values[[3, 7]].astype(np.float16))


def test_only_committed_tokens_are_visible(tmp_path, values):
    write_states(tmp_path / "s.f16", values, capacity=80)
    store = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", 6, 30)
    assert store.column(0).shape == (30,)
    assert store.shape == (6, 30)
    with pytest.raises(ValueError, match=r"\[25, 31\)"):
        store.block([0], 25, 31)


@pytest.mark.parametrize("unit", [-1, 6, 100])
def test_bad_unit_is_named(tmp_path, values, unit):
    write_states(tmp_path / "s.f16", values)
    store = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", 6, 50)
    with pytest.raises(ValueError, match=f"unit {unit} out of range"):
        store.column(unit)
    with pytest.raises(ValueError, match=f"unit {unit} out of range"):
        store.block([0, unit], 0, 5)


def test_truncated_or_missing_file_is_refused(tmp_path, values):
    path = tmp_path / "s.f16"
    write_states(path, values)
    with pytest.raises(CorruptStoreError, match="truncated"):
        StateStore(path, "layers.0.h", 0, "h", 6, 51)
    with open(path, "r+b") as f:
        f.truncate(11)
    with pytest.raises(CorruptStoreError, match="not a whole number"):
        StateStore(path, "layers.0.h", 0, "h", 6, 1)
    with pytest.raises(CorruptStoreError, match="missing"):
        StateStore(tmp_path / "nope.f16", "layers.0.h", 0, "h", 6, 1)


def test_grow_keeps_committed_tokens(tmp_path, values):
    path = tmp_path / "s.f16"
    write_states(path, values[:20], capacity=20)
    writer = StateWriter.ensure(path, 6, capacity=50, keep=20)
    assert writer.capacity == 50
    writer.write(20, to_stored(values[20:]))
    writer.close()
    store = StateStore(path, "layers.0.h", 0, "h", 6, 50)
    np.testing.assert_array_equal(store.tokens_by_units(), values.astype(np.float16))
    assert path.stat().st_size == 50 * 6 * 2
    assert not list(tmp_path.glob("*.grow"))


def test_stored_values_are_float16_rounding_clipped_to_range():
    x = np.array([[1e-3, 70000.0, -1e9, 0.1234567]], dtype=np.float32)
    stored = to_stored(x).numpy()
    assert stored.dtype == np.float16 and stored.shape == (4, 1)
    np.testing.assert_array_equal(
        stored[:, 0], np.array([1e-3, FLOAT16_MAX, -FLOAT16_MAX, 0.1234567], dtype=np.float16)
    )


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 40),
    dim=st.integers(1, 5),
    cuts=st.lists(st.integers(1, 39), max_size=4),
    seed=st.integers(0, 2**16),
)
def test_any_split_into_blocks_stores_the_same_bytes(tmp_path_factory, n, dim, cuts, seed):
    values = (np.random.default_rng(seed).standard_normal((n, dim)) * 3).astype(np.float32)
    folder = tmp_path_factory.mktemp("split")
    write_states(folder / "whole.f16", values)
    write_states(folder / "parts.f16", values, splits={c for c in cuts if c < n})
    assert (folder / "whole.f16").read_bytes() == (folder / "parts.f16").read_bytes()
    expected = values.T.astype(np.float16).tobytes()
    assert (folder / "whole.f16").read_bytes() == expected


def test_block_writes_equal_the_stored_definition(tmp_path):
    from lstmsearch.store import clip

    rng = np.random.default_rng(1)
    values = (rng.standard_normal((30, 8)) * 40000).astype(np.float32)
    values[2, 3] = np.nan
    writer = StateWriter.create(tmp_path / "blocks.f16", 8, 30)
    clipped = clip(values.copy()).numpy()
    writer.write_block(0, clipped[:10, :5])  # first units of some tokens ...
    writer.write_block(0, clipped[:10, 5:], unit_offset=5)  # ... the other units
    writer.write_block(10, clipped[10:])
    writer.close()
    expected = to_stored(values).numpy()
    assert (tmp_path / "blocks.f16").read_bytes() == expected.tobytes()
    with pytest.raises(ValueError, match="cannot write"):
        StateWriter(tmp_path / "blocks.f16", 8).write_block(25, clipped[:10])

"""Per-unit statistics and top-K activations, computed exactly from the stored float16 values.

A float16 column takes at most 65,536 distinct values, so one histogram over the bit
patterns per unit (a single counting pass) gives every order statistic exactly: min, max,
quantiles (numpy's default linear interpolation), mean, standard deviation (population),
the fraction of tokens at or above each threshold, and the K-th highest and lowest values.
The top-K positions then come from one comparison against those K-th values. Ties at the
K-th value are broken by the lowest position, so the result depends only on the stored
values, not on how the build was split into shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from lstmsearch.index import ON_THRESHOLDS, QUANTILES, TOP_K
from lstmsearch.store import StateStore

UNITS_PER_BLOCK = 16

_ALL_VALUES = np.arange(1 << 16, dtype=np.uint16).view(np.float16).astype(np.float64)
_FINITE = ~np.isnan(_ALL_VALUES)
_ORDER = np.flatnonzero(_FINITE)[np.argsort(_ALL_VALUES[_FINITE], kind="stable")]
_SORTED_VALUES = _ALL_VALUES[_ORDER]
"""Bit patterns ordered by value (NaNs left out), and the value of each."""


@dataclass(frozen=True)
class UnitStats:
    """Statistics of the units of one state, one entry per unit (arrays of length dim)."""

    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    quantiles: np.ndarray  # (dim, len(QUANTILES))
    on_fraction: np.ndarray  # (dim, len(ON_THRESHOLDS)): fraction of tokens >= threshold
    top_pos: np.ndarray  # (dim, k) highest values first, ties by lowest position
    top_value: np.ndarray
    bottom_pos: np.ndarray  # (dim, k) lowest values first, ties by lowest position
    bottom_value: np.ndarray


def order_statistic(cum: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Value of the k-th smallest stored value (0-based) from cumulative sorted counts."""
    return _SORTED_VALUES[np.searchsorted(cum, k, side="right")]


def histogram_stats(counts: np.ndarray) -> dict[str, np.ndarray | float]:
    """Every distribution statistic of one unit from its bit-pattern histogram."""
    c = counts[_ORDER]
    cum = np.cumsum(c)
    n = int(cum[-1])
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "min": nan, "max": nan,
                "quantiles": np.full(len(QUANTILES), nan), "on": np.full(len(ON_THRESHOLDS), nan),
                "kth_high": nan, "kth_low": nan}
    mean = float(np.dot(c, _SORTED_VALUES) / n)
    var = float(np.dot(c, (_SORTED_VALUES - mean) ** 2) / n)
    p = np.asarray(QUANTILES) * (n - 1)
    lo, hi = np.floor(p).astype(np.int64), np.ceil(p).astype(np.int64)
    v_lo, v_hi = order_statistic(cum, lo), order_statistic(cum, hi)
    below = np.searchsorted(_SORTED_VALUES, np.asarray(ON_THRESHOLDS), side="left")
    n_below = np.where(below > 0, cum[np.maximum(below - 1, 0)], 0)
    k = min(TOP_K, n)
    return {
        "mean": mean,
        "std": var**0.5,
        "min": float(order_statistic(cum, np.array([0]))[0]),
        "max": float(order_statistic(cum, np.array([n - 1]))[0]),
        "quantiles": v_lo + (v_hi - v_lo) * (p - lo),
        "on": (n - n_below) / n,
        "kth_high": float(order_statistic(cum, np.array([n - k]))[0]),
        "kth_low": float(order_statistic(cum, np.array([k - 1]))[0]),
    }


def top_positions(values: torch.Tensor, kth: float, k: int, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k highest (or lowest) positions of one unit, given the k-th value; ties by position."""
    beyond = torch.nonzero(values < kth if lowest else values > kth).flatten()
    need = k - len(beyond)
    ties = torch.nonzero(values == kth).flatten()[:need]
    pos = torch.cat([beyond, ties]).numpy()
    vals = values[pos].numpy()
    order = np.lexsort((pos, vals if lowest else -vals))
    return pos[order].astype(np.int64), vals[order].astype(np.float32)


def unit_stats(store: StateStore, k: int = TOP_K) -> UnitStats:
    """Statistics and top/bottom-k of every unit of `store`, by column scans."""
    dim, n = store.dim, store.n_tokens
    k = min(k, n)
    out = {
        "mean": np.empty(dim), "std": np.empty(dim),
        "min": np.empty(dim, np.float32), "max": np.empty(dim, np.float32),
        "quantiles": np.empty((dim, len(QUANTILES)), np.float32),
        "on_fraction": np.empty((dim, len(ON_THRESHOLDS))),
        "top_pos": np.empty((dim, k), np.int64), "top_value": np.empty((dim, k), np.float32),
        "bottom_pos": np.empty((dim, k), np.int64), "bottom_value": np.empty((dim, k), np.float32),
    }
    columns = store.columns
    buffer = np.empty((min(UNITS_PER_BLOCK, dim), n), dtype=np.float16)
    for first in range(0, dim, UNITS_PER_BLOCK):
        last = min(first + UNITS_PER_BLOCK, dim)
        block = buffer[: last - first]
        block[:] = columns[first:last]
        as_float = torch.from_numpy(block).float()
        for j, unit in enumerate(range(first, last)):
            s = histogram_stats(np.bincount(block[j].view(np.uint16), minlength=1 << 16))
            out["mean"][unit], out["std"][unit] = s["mean"], s["std"]
            out["min"][unit], out["max"][unit] = s["min"], s["max"]
            out["quantiles"][unit] = s["quantiles"]
            out["on_fraction"][unit] = s["on"]
            if k:
                pos, val = top_positions(as_float[j], s["kth_high"], k, lowest=False)
                out["top_pos"][unit], out["top_value"][unit] = pos, val
                pos, val = top_positions(as_float[j], s["kth_low"], k, lowest=True)
                out["bottom_pos"][unit], out["bottom_value"][unit] = pos, val
    return UnitStats(**out)

"""Per-unit statistics and top-K activations, computed exactly from the stored float16 values.

A float16 column takes at most 65,536 distinct values, so one histogram of its bit patterns
per unit (a single counting pass) gives every order statistic exactly once the bins are put
in value order ("keys": negative values reversed below positive ones, -0.0 merged into
+0.0): min, max, quantiles (numpy's default linear interpolation), mean and standard
deviation (population), the fraction of tokens at or above each threshold, and the K-th
highest and lowest values. The top-K positions then come from integer comparisons of the
bit patterns against those K-th values. Ties at the K-th value are broken by the lowest
position, so the result depends only on the stored values, not on how the build was split
into shards.

Everything works on the raw bits: no float conversion of the columns, no thread pools. A
segment's partial statistics are computed by `segment_partials`, one compiled (numba) pass per
unit column while the column is still in the page cache; `partial_stats` is the same in plain
numpy, kept as the tests' reference.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numba
import numpy as np

from lstmsearch.index import ON_THRESHOLDS, QUANTILES, TOP_K
from lstmsearch.store import StateStore

UNITS_PER_BLOCK = 16
N_KEYS = 1 << 16

SIGN = 0x8000
NEGATIVE_ZERO_KEY = 0x7FFF
_BITS = np.arange(N_KEYS, dtype=np.int64)
_KEY_OF_BITS = np.where(_BITS & SIGN, 0xFFFF - _BITS, _BITS | SIGN)
BITS_OF_KEY = np.argsort(_KEY_OF_BITS)
"""Bit pattern of each key: keys sort like values; -0.0 has key 0x7FFF, merged into +0.0."""
VALUE_OF_KEY = _BITS[BITS_OF_KEY].astype(np.uint16).view(np.float16).astype(np.float64)
VALUE_OF_KEY[NEGATIVE_ZERO_KEY] = 0.0
FINITE_KEYS = slice(0x0400, 0xFC00)
"""Keys of finite values; below are -inf and NaNs, above +inf and NaNs (never counted)."""
_COUNTED = np.zeros(N_KEYS, dtype=bool)
_COUNTED[FINITE_KEYS] = True
_SUM_VALUES = np.where(_COUNTED, VALUE_OF_KEY, 0.0)


def key_histograms(bits: np.ndarray) -> np.ndarray:
    """Counts per key (units, N_KEYS) of the float16 bit patterns `bits` (units, tokens)."""
    counts = np.stack([np.bincount(row, minlength=N_KEYS) for row in bits])[:, BITS_OF_KEY]
    counts[:, SIGN] += counts[:, NEGATIVE_ZERO_KEY]
    counts[:, NEGATIVE_ZERO_KEY] = 0
    return counts


def bits_of(value: float) -> int:
    """Bit pattern of a float16 value (+0.0 for zero)."""
    return int(np.array(value + 0.0, dtype=np.float16).view(np.uint16))


def compare(bits: np.ndarray, value: float, op: str) -> np.ndarray:
    """Positions where the float16 values with these bit patterns are >, < or == `value`.

    Integer comparisons only: positive values sort like their bits, negative values
    (sign bit set) in reverse, and +0.0 equals -0.0.
    """
    b = bits_of(value)
    if op == "==":
        mask = (bits == 0) | (bits == SIGN) if value == 0 else bits == b
    elif op == ">":
        mask = bits < b if value < 0 else (bits > b) & (bits < SIGN)
    elif value > 0:  # "<"
        mask = (bits < b) | (bits >= SIGN)
    else:
        mask = bits > (SIGN if value == 0 else b)
    return np.flatnonzero(mask)


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


def histogram_stats(counts: np.ndarray, k: int) -> dict[str, np.ndarray]:
    """Distribution statistics of a block of units from their key histograms (units, N_KEYS).

    Returns arrays per unit; `kth_high`/`kth_low` are the k-th highest/lowest values.
    """
    counts = np.where(_COUNTED, counts, 0)
    weights = counts.astype(np.float64)
    cum = np.cumsum(counts, axis=1)
    n = cum[:, -1]
    units = len(counts)

    def order_statistic(rank: np.ndarray) -> np.ndarray:
        """Key of the rank-th smallest value (0-based) of each unit; rank is (units, r)."""
        return np.stack([np.searchsorted(cum[u], rank[u], side="right") for u in range(units)])

    valid = n > 0
    safe_n = np.maximum(n, 1)
    mean = weights @ _SUM_VALUES / safe_n
    var = (weights * (_SUM_VALUES[None, :] - mean[:, None]) ** 2).sum(axis=1) / safe_n
    p = np.asarray(QUANTILES)[None, :] * (safe_n[:, None] - 1)
    lo, hi = np.floor(p).astype(np.int64), np.ceil(p).astype(np.int64)
    v_lo, v_hi = VALUE_OF_KEY[order_statistic(lo)], VALUE_OF_KEY[order_statistic(hi)]
    key_at = FINITE_KEYS.start + np.searchsorted(
        VALUE_OF_KEY[FINITE_KEYS], np.asarray(ON_THRESHOLDS), side="left"
    )  # the first key whose value is >= each threshold
    n_below = cum[:, key_at - 1]
    ends = np.stack([np.zeros(units, np.int64), safe_n - 1], axis=1)
    extremes = VALUE_OF_KEY[order_statistic(ends)]
    kk = np.minimum(k, safe_n)
    kth = order_statistic(np.stack([safe_n - kk, kk - 1], axis=1))
    nan = np.where(valid, 1.0, np.nan)
    return {
        "mean": mean * nan,
        "std": np.sqrt(var) * nan,
        "min": extremes[:, 0] * nan,
        "max": extremes[:, 1] * nan,
        "quantiles": (v_lo + (v_hi - v_lo) * (p - lo)) * nan[:, None],
        "on": (n[:, None] - n_below) / safe_n[:, None] * nan[:, None],
        "kth_high": VALUE_OF_KEY[kth[:, 0]],
        "kth_low": VALUE_OF_KEY[kth[:, 1]],
    }


def row_stats(ptr: np.ndarray, keys: np.ndarray, counts: np.ndarray, k: int
              ) -> dict[str, np.ndarray]:
    """`histogram_stats` of sparse key histograms (unit u's keys are `keys[ptr[u]:ptr[u + 1]]`,
    ascending), all units at once: the cost of the keys present, not of 65,536 bins a unit."""
    units = len(ptr) - 1
    rows = np.repeat(np.arange(units), np.diff(ptr))
    finite = (keys >= FINITE_KEYS.start) & (keys < FINITE_KEYS.stop)
    c = np.where(finite, counts, 0).astype(np.int64)
    v = np.where(finite, VALUE_OF_KEY[keys], 0.0)
    cum = np.cumsum(c)
    base = np.concatenate([[0], cum])[ptr[:-1]]  # counted before each unit's row
    n = np.concatenate([[0], cum])[ptr[1:]] - base
    valid = n > 0
    safe_n = np.maximum(n, 1)
    mean = np.bincount(rows, c * v, minlength=units) / safe_n
    var = np.bincount(rows, c * (v - mean[rows]) ** 2, minlength=units) / safe_n

    def order_statistic(rank: np.ndarray) -> np.ndarray:
        """Key of the rank-th smallest value (0-based) of each unit; rank is (units, r)."""
        at = np.searchsorted(cum, base[:, None] + rank, side="right")
        return keys[np.minimum(at, len(keys) - 1)] if len(keys) else np.zeros_like(rank)

    p = np.asarray(QUANTILES)[None, :] * (safe_n[:, None] - 1)
    lo, hi = np.floor(p).astype(np.int64), np.ceil(p).astype(np.int64)
    v_lo, v_hi = VALUE_OF_KEY[order_statistic(lo)], VALUE_OF_KEY[order_statistic(hi)]
    key_at = FINITE_KEYS.start + np.searchsorted(
        VALUE_OF_KEY[FINITE_KEYS], np.asarray(ON_THRESHOLDS), side="left"
    )  # the first key whose value is >= each threshold
    # counted below each threshold: keys sorted within rows, so search row * 2^16 + key
    code = rows.astype(np.int64) * N_KEYS + keys
    below = np.searchsorted(code, np.arange(units)[:, None] * N_KEYS + key_at[None, :])
    n_below = np.concatenate([[0], cum])[below] - base[:, None]
    ends = np.stack([np.zeros(units, np.int64), safe_n - 1], axis=1)
    extremes = VALUE_OF_KEY[order_statistic(ends)]
    kk = np.minimum(k, safe_n)
    kth = order_statistic(np.stack([safe_n - kk, kk - 1], axis=1))
    nan = np.where(valid, 1.0, np.nan)
    return {
        "mean": mean * nan,
        "std": np.sqrt(var) * nan,
        "min": extremes[:, 0] * nan,
        "max": extremes[:, 1] * nan,
        "quantiles": (v_lo + (v_hi - v_lo) * (p - lo)) * nan[:, None],
        "on": (n[:, None] - n_below) / safe_n[:, None] * nan[:, None],
        "kth_high": VALUE_OF_KEY[kth[:, 0]],
        "kth_low": VALUE_OF_KEY[kth[:, 1]],
    }


def top_positions(bits: np.ndarray, kth: float, k: int, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """The k highest (or lowest) positions of one unit, given the k-th value; ties by position."""
    beyond = compare(bits, kth, "<" if lowest else ">")
    ties = compare(bits, kth, "==")[: k - len(beyond)]
    pos = np.concatenate([beyond, ties])
    vals = bits[pos].view(np.float16).astype(np.float64)
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
    for first in range(0, dim, UNITS_PER_BLOCK):
        last = min(first + UNITS_PER_BLOCK, dim)
        bits = columns[first:last].view(np.uint16)
        lengths, keys, counts = sparse_rows(key_histograms(bits))
        s = row_stats(np.concatenate([[0], np.cumsum(lengths)]), keys, counts, k)
        block = slice(first, last)
        out["mean"][block], out["std"][block] = s["mean"], s["std"]
        out["min"][block], out["max"][block] = s["min"], s["max"]
        out["quantiles"][block] = s["quantiles"]
        out["on_fraction"][block] = s["on"]
        if k:
            for j, unit in enumerate(range(first, last)):
                pos, val = top_positions(bits[j], s["kth_high"][j], k, lowest=False)
                out["top_pos"][unit], out["top_value"][unit] = pos, val
                pos, val = top_positions(bits[j], s["kth_low"][j], k, lowest=True)
                out["bottom_pos"][unit], out["bottom_value"][unit] = pos, val
    return UnitStats(**out)


# --- partial statistics of a segment, and their exact merge ---------------------------------


@dataclass(frozen=True)
class PartialStats:
    """What one segment adds to the statistics of one state's units, exactly and additively.

    `ptr`/`keys`/`counts` are each unit's key histogram as a sparse row (unit `u`'s keys are
    `keys[ptr[u]:ptr[u + 1]]`, ascending); the top/bottom arrays are the segment's own top-k
    with global positions (highest or lowest first, ties by lowest position). Histograms add
    and top-k lists merge, so the statistics of any set of segments follow from their parts,
    identical to a scan of all their tokens.
    """

    ptr: np.ndarray  # (dim + 1,) int64
    keys: np.ndarray  # (nnz,) uint16
    counts: np.ndarray  # (nnz,) int64
    top_pos: np.ndarray  # (dim, k') int64, k' = min(k, tokens)
    top_value: np.ndarray  # (dim, k') float32
    bottom_pos: np.ndarray
    bottom_value: np.ndarray

    @property
    def dim(self) -> int:
        return len(self.ptr) - 1

    def dense(self, first: int, last: int) -> np.ndarray:
        """Key histograms of units [first, last) as a dense (units, N_KEYS) int64 array."""
        out = np.zeros((last - first, N_KEYS), dtype=np.int64)
        for j, unit in enumerate(range(first, last)):
            a, b = self.ptr[unit], self.ptr[unit + 1]
            out[j, self.keys[a:b]] = self.counts[a:b]
        return out


CHECKSUM_FIELD = "column_crc32"
"""Entry of a segment's checksums.npz holding the CRC-32 of each unit's column of a state."""
PARTIAL_FIELDS = ("ptr", "keys", "counts", "top_pos", "top_value", "bottom_pos", "bottom_value")


def sparse_rows(dense: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row lengths, keys, counts) of the nonzero entries of dense histograms, row by row."""
    rows, keys = np.nonzero(dense)
    lengths = np.bincount(rows, minlength=len(dense))
    return lengths, keys.astype(np.uint16), dense[rows, keys].astype(np.int64)


def from_blocks(dim: int, lengths: list, keys: list, counts: list,
                tops: dict[str, np.ndarray]) -> PartialStats:
    """A `PartialStats` from per-block sparse rows and full top-k arrays."""
    ptr = np.zeros(dim + 1, dtype=np.int64)
    if lengths:
        np.cumsum(np.concatenate(lengths), out=ptr[1:])
    return PartialStats(
        ptr=ptr,
        keys=np.concatenate(keys) if keys else np.zeros(0, np.uint16),
        counts=np.concatenate(counts) if counts else np.zeros(0, np.int64),
        **tops,
    )


def partial_stats(columns: np.ndarray, first_position: int, k: int = TOP_K) -> PartialStats:
    """The partial statistics of one segment's float16 columns (dim, tokens) of one state,
    whose first token is at global position `first_position`."""
    dim, n = columns.shape
    k = min(k, n)
    tops = {"top_pos": np.empty((dim, k), np.int64), "top_value": np.empty((dim, k), np.float32),
            "bottom_pos": np.empty((dim, k), np.int64),
            "bottom_value": np.empty((dim, k), np.float32)}
    lengths, keys, counts = [], [], []
    for first in range(0, dim, UNITS_PER_BLOCK):
        last = min(first + UNITS_PER_BLOCK, dim)
        bits = np.ascontiguousarray(columns[first:last]).view(np.uint16)
        hist = key_histograms(bits)
        s = histogram_stats(hist, k)
        for part, piece in zip((lengths, keys, counts), sparse_rows(hist), strict=True):
            part.append(piece)
        if k:
            for j, unit in enumerate(range(first, last)):
                pos, val = top_positions(bits[j], s["kth_high"][j], k, lowest=False)
                tops["top_pos"][unit], tops["top_value"][unit] = pos + first_position, val
                pos, val = top_positions(bits[j], s["kth_low"][j], k, lowest=True)
                tops["bottom_pos"][unit], tops["bottom_value"][unit] = pos + first_position, val
    return from_blocks(dim, lengths, keys, counts, tops)


KEY_OF_BITS = np.where(_BITS == SIGN, SIGN, _KEY_OF_BITS).astype(np.uint16)
"""Key of each float16 bit pattern, -0.0 merged into +0.0 (the key of 0x0000)."""


@numba.njit(cache=True, nogil=True)
def unit_partial(bits, key_of_bits, k, first_key, end_key, keys_of_tokens):
    """One unit's sparse key histogram and its top/bottom-k over finite keys
    [first_key, end_key), ties by lowest position: `partial_stats` for one column.

    One pass counts (into a dense array whose touched blocks of 64 keys are marked in a
    bitmap, so it is read back in key order without visiting all 65,536 bins) and keeps each
    token's key in `keys_of_tokens`; a second pass takes the positions beyond the k-th
    highest and lowest keys, and ties at them are taken from the start until k are found.
    """
    n = bits.shape[0]
    counts = np.zeros(65536, np.uint32)  # a segment holds fewer than 2^32 tokens
    touched = np.zeros(1024, np.uint64)
    distinct = 0
    for t in range(n):
        key = key_of_bits[bits[t]]
        keys_of_tokens[t] = key
        if counts[key] == 0:
            touched[key >> 6] |= np.uint64(1) << np.uint64(key & 63)
            distinct += 1
        counts[key] += 1
    keys = np.empty(distinct, np.uint16)
    out_counts = np.empty(distinct, np.int64)
    m = 0
    for word in range(1024):
        if touched[word]:
            for key in range(word * 64, word * 64 + 64):
                if counts[key]:
                    keys[m] = key
                    out_counts[m] = counts[key]
                    m += 1
    kk = min(k, n)
    # the k-th highest and lowest finite keys
    high, seen = end_key - 1, 0
    for j in range(distinct - 1, -1, -1):
        if first_key <= keys[j] < end_key:
            seen += out_counts[j]
            high = keys[j]
            if seen >= kk:
                break
    low_key, seen = first_key, 0
    for j in range(distinct):
        if first_key <= keys[j] < end_key:
            seen += out_counts[j]
            low_key = keys[j]
            if seen >= kk:
                break
    top = np.empty(kk, np.int64)
    bottom = np.empty(kk, np.int64)
    n_top = n_bottom = 0
    for t in range(n):  # fewer than k tokens lie beyond each k-th key
        key = keys_of_tokens[t]
        if key > high and key < end_key:
            top[n_top] = t
            n_top += 1
        if key < low_key and key >= first_key:
            bottom[n_bottom] = t
            n_bottom += 1
    fill_ties(keys_of_tokens, high, top, n_top, first_key, end_key)
    fill_ties(keys_of_tokens, low_key, bottom, n_bottom, first_key, end_key)
    sort_extremes(keys_of_tokens, top, True)
    sort_extremes(keys_of_tokens, bottom, False)
    return keys, out_counts, top, bottom


@numba.njit(cache=True, nogil=True)
def fill_ties(keys_of_tokens, kth, out, m, first_key, end_key):
    """Fill `out` from index m with the first positions whose key is `kth`; when the column
    has fewer finite values than that, with its non-finite ones (NaN), first first."""
    k = out.shape[0]
    for t in range(keys_of_tokens.shape[0]):
        if m >= k:
            return
        if keys_of_tokens[t] == kth:
            out[m] = t
            m += 1
    for t in range(keys_of_tokens.shape[0]):
        if m >= k:
            return
        key = keys_of_tokens[t]
        if key < first_key or key >= end_key:
            out[m] = t
            m += 1


@numba.njit(cache=True, nogil=True)
def sort_extremes(keys_of_tokens, out, highest):
    """Order positions highest (or lowest) key first, ties by position (k is small)."""
    for i in range(1, out.shape[0]):
        t = out[i]
        key = keys_of_tokens[t]
        j = i - 1
        while j >= 0:
            other = keys_of_tokens[out[j]]
            before = (other > key) if highest else (other < key)
            if before or (other == key and out[j] < t):
                break
            out[j + 1] = out[j]
            j -= 1
        out[j + 1] = t


def segment_partials(columns: np.ndarray, first_position: int, k: int = TOP_K) -> PartialStats:
    """`partial_stats` of one segment's float16 columns (dim, tokens), one compiled pass
    per unit (what a segment writer runs; `partial_stats` is the reference)."""
    dim, n = columns.shape
    k = min(k, n)
    bits = columns.view(np.uint16)
    lengths, keys, counts = [], [], []
    tops = {"top_pos": np.empty((dim, k), np.int64), "top_value": np.empty((dim, k), np.float32),
            "bottom_pos": np.empty((dim, k), np.int64),
            "bottom_value": np.empty((dim, k), np.float32)}
    keys_of_tokens = np.empty(n, np.uint16)
    for unit in range(dim):
        row = np.ascontiguousarray(bits[unit])
        unit_keys, unit_counts, top, bottom = unit_partial(
            row, KEY_OF_BITS, k, FINITE_KEYS.start, FINITE_KEYS.stop, keys_of_tokens)
        lengths.append(np.array([len(unit_keys)]))
        keys.append(unit_keys)
        counts.append(unit_counts)
        for pos, pos_name, value_name in ((top, "top_pos", "top_value"),
                                          (bottom, "bottom_pos", "bottom_value")):
            tops[pos_name][unit] = pos + first_position
            tops[value_name][unit] = row[pos].view(np.float16)
    return from_blocks(dim, lengths, keys, counts, tops)


def merge_top(lists: list[tuple[np.ndarray, np.ndarray]], k: int, lowest: bool
              ) -> tuple[np.ndarray, np.ndarray]:
    """The top-k of one unit from several top-k lists (positions, values): highest (or
    lowest) values first, ties by lowest position — what one scan of all tokens gives."""
    pos = np.concatenate([p for p, _ in lists]) if lists else np.zeros(0, np.int64)
    val = np.concatenate([v for _, v in lists]) if lists else np.zeros(0, np.float32)
    order = np.lexsort((pos, val if lowest else -val.astype(np.float64)))[:k]
    return pos[order].astype(np.int64), val[order].astype(np.float32)


def merge_partials(parts: list[PartialStats], k: int = TOP_K) -> PartialStats:
    """One `PartialStats` for the union of the segments of `parts` (e.g. a compaction)."""
    dim = parts[0].dim
    kk = min(k, sum(p.top_pos.shape[1] for p in parts))  # min(k, tokens), as one scan gives
    tops = {"top_pos": np.empty((dim, kk), np.int64), "top_value": np.empty((dim, kk), np.float32),
            "bottom_pos": np.empty((dim, kk), np.int64),
            "bottom_value": np.empty((dim, kk), np.float32)}
    lengths, keys, counts = [], [], []
    for first in range(0, dim, UNITS_PER_BLOCK):
        last = min(first + UNITS_PER_BLOCK, dim)
        dense = sum(p.dense(first, last) for p in parts)
        for part, piece in zip((lengths, keys, counts), sparse_rows(dense), strict=True):
            part.append(piece)
    for unit in range(dim):
        for lowest, pos_name, val_name in ((False, "top_pos", "top_value"),
                                           (True, "bottom_pos", "bottom_value")):
            lists = [(getattr(p, pos_name)[unit], getattr(p, val_name)[unit]) for p in parts]
            tops[pos_name][unit], tops[val_name][unit] = merge_top(lists, kk, lowest)
    return from_blocks(dim, lengths, keys, counts, tops)


def stats_of(part: PartialStats, k: int = TOP_K) -> UnitStats:
    """The unit statistics of everything a (merged) `PartialStats` covers."""
    s = row_stats(part.ptr, part.keys, part.counts, k)
    kk = min(k, part.top_pos.shape[1])
    return UnitStats(mean=s["mean"], std=s["std"], min=s["min"].astype(np.float32),
                     max=s["max"].astype(np.float32),
                     quantiles=s["quantiles"].astype(np.float32), on_fraction=s["on"],
                     top_pos=part.top_pos[:, :kk], top_value=part.top_value[:, :kk],
                     bottom_pos=part.bottom_pos[:, :kk], bottom_value=part.bottom_value[:, :kk])


def save_partials(path, parts: dict[str, PartialStats], compress: bool = True) -> None:
    """Write the partial statistics of every state to one `.npz` file (deflated at the
    fastest level, or stored as they are for a file that lives only until it is merged).

    Each unit's histogram keys are stored as steps from the key before (`key_steps`: mostly
    1, so they deflate to a sixth). Written entry by entry with a fixed timestamp, so equal
    statistics give equal bytes (and equal checksums) whenever and wherever they are written.
    """
    save_arrays(path, {f"{name}/{STORED_FIELD.get(field, field)}": stored_form(field, p)
                       for name, p in sorted(parts.items()) for field in PARTIAL_FIELDS},
                compress)


STORED_FIELD = {"keys": "key_steps"}
"""Fields saved in another form than they are held (read back by `load_partials`)."""


def stored_form(field: str, part: PartialStats) -> np.ndarray:
    """One field of `part` as it is saved: keys as steps within each unit's row, counts and
    positions in their narrowest type."""
    if field != "keys":
        return compact_dtype(field, getattr(part, field))
    steps = part.keys.astype(np.int64)
    steps[1:] -= part.keys[:-1]
    firsts = part.ptr[:-1][np.diff(part.ptr) > 0]
    steps[firsts] = part.keys[firsts]  # each unit's first key as it is
    return steps.astype(np.uint16)


def held_keys(steps: np.ndarray, ptr: np.ndarray) -> np.ndarray:
    """The keys back from their steps (each unit's row a running sum)."""
    keys = np.cumsum(steps.astype(np.int64))
    firsts = ptr[:-1][np.diff(ptr) > 0]
    if len(firsts):  # subtract, within each row, what the rows before it summed to
        before = np.concatenate([[0], keys[firsts[1:] - 1]])
        keys -= np.repeat(before, np.diff(np.append(firsts, len(keys))))
    return keys.astype(np.uint16)


def save_checksums(path, checksums: dict[str, np.ndarray]) -> None:
    """Write each state's per-unit column CRC-32s (see `store.column_checksums`)."""
    save_arrays(path, {f"{name}/{CHECKSUM_FIELD}": np.asarray(values, np.uint32)
                       for name, values in sorted(checksums.items())})


def save_arrays(path, arrays: dict[str, np.ndarray], compress: bool = True) -> None:
    """An `.npz` of plain arrays (deflated at level 1 or stored), in the given order, with
    fixed timestamps."""
    import zipfile

    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", compression=method, allowZip64=True) as archive:
        for key, values in arrays.items():
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(values), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # writestr takes the level (ZipFile.open of a ZipInfo deflated at level 6)
            archive.writestr(info, data.getbuffer(), compress_type=method, compresslevel=1)


def compact_dtype(field: str, values: np.ndarray) -> np.ndarray:
    """Counts and positions in the narrowest unsigned type that holds them (most histogram
    counts of a segment are small), everything else as it is."""
    values = np.ascontiguousarray(values)
    if field in ("counts", "ptr", "top_pos", "bottom_pos") and values.size:
        if values.min() >= 0:
            for dtype in (np.uint8, np.uint16, np.uint32):
                if values.max() <= np.iinfo(dtype).max:
                    return values.astype(dtype)
    return values


WIDE = {"ptr": np.int64, "keys": np.uint16, "counts": np.int64, "top_pos": np.int64,
        "top_value": np.float32, "bottom_pos": np.int64, "bottom_value": np.float32}


def load_partials(path) -> dict[str, PartialStats]:
    """Read partial statistics (plain arrays only: no pickle); keys saved as steps or, by
    older versions, as they are."""
    out = {}
    with np.load(path, allow_pickle=False) as data:
        names = sorted({key.rsplit("/", 1)[0] for key in data.files
                        if not key.endswith(CHECKSUM_FIELD)})
        for name in names:
            fields = {f: data[f"{name}/{f}"].astype(WIDE[f]) for f in PARTIAL_FIELDS
                      if f"{name}/{f}" in data.files}
            if "keys" not in fields:
                fields["keys"] = held_keys(data[f"{name}/key_steps"], fields["ptr"])
            out[name] = PartialStats(**fields)
    return out

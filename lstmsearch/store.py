"""State columns: one unit-major float16 file per (layer, kind).

A state file `states/layers.1.c.f16` holds a raw little-endian float16 array of shape
(dim, capacity): row `u` is unit `u`'s values at every token position, one contiguous column
per unit, so a query reads only the units it needs. The number of committed tokens lives in
the index database; positions at or beyond it are never read (they may hold a half-written
shard). The capacity is the file size divided by `2 * dim`.

The stored float16 values are the truth for every query: values are rounded to float16 once,
here, and values beyond float16's range are clipped to +-65504 rather than becoming inf.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DTYPE = np.dtype("<f2")
ITEMSIZE = DTYPE.itemsize
FLOAT16_MAX = float(np.finfo(np.float16).max)
STATE_SUFFIX = ".f16"


class CorruptStoreError(ValueError):
    """A state file that is missing, truncated or the wrong shape for its index."""


class DamagedColumnError(CorruptStoreError):
    """A unit column whose bytes do not match the checksum recorded when it was written."""


def column_checksums(columns: np.ndarray) -> np.ndarray:
    """CRC-32 of each unit's column of a (dim, tokens) float16 array: uint32 (dim,)."""
    return np.array([zlib.crc32(np.ascontiguousarray(row)) for row in columns], dtype=np.uint32)


def state_file_name(name: str) -> str:
    """File name of the state columns of `name` (e.g. `layers.1.c.f16`)."""
    return f"{name}{STATE_SUFFIX}"


def file_capacity(path: Path, dim: int) -> int:
    """Token capacity of a state file of `dim` units; a clear error when its size is wrong."""
    if not path.is_file():
        raise CorruptStoreError(f"state file {path} is missing")
    size = path.stat().st_size
    if size % (dim * ITEMSIZE):
        raise CorruptStoreError(
            f"state file {path} has {size} bytes, not a whole number of {dim}-unit float16 rows"
        )
    return size // (dim * ITEMSIZE)


class StateStore:
    """Read-only view of the stored states of one (layer, kind): `dim` units x `n_tokens`.

    The tokens are stored in one or more segment files, each holding the columns of a
    contiguous range of positions (see `lstmsearch.index`). `pieces(u)` gives unit `u` as
    zero-copy memory-mapped views, one per segment, for scans that go segment by segment;
    `column(u)` is a single view when there is one segment and a concatenated copy
    otherwise. Nothing is loaded until read.
    """

    def __init__(self, path: str | Path, name: str, layer: int, kind: str, dim: int, n_tokens: int):
        self.name = name
        self.layer = layer
        self.kind = kind
        self.dim = dim
        self.path = Path(path)
        self._parts: list[tuple[int, np.ndarray]] = []  # (first position, (dim, n) view)
        self._checks: list[tuple[Path, np.ndarray, np.ndarray] | None] = []
        self.n_tokens = 0
        self._add(self.path, n_tokens)

    @classmethod
    def of_segments(cls, name: str, layer: int, kind: str, dim: int,
                    files: Sequence[tuple[str | Path, int, np.ndarray | None]]) -> StateStore:
        """The store of one state over segment files, given in position order as
        (path, tokens, checksums); the first file starts at position 0.

        `checksums` (uint32 per unit, see `column_checksums`) are what the columns held when
        written: each unit's column of each file is checked once, when a read first touches
        it, so a damaged file gives `DamagedColumnError` naming it instead of an answer.
        """
        store = cls.__new__(cls)
        store.name, store.layer, store.kind, store.dim = name, layer, kind, dim
        store.path = Path(files[0][0]) if files else Path()
        store._parts, store._checks, store.n_tokens = [], [], 0
        for path, n, checksums in files:
            store._add(Path(path), int(n), checksums)
        return store

    def _add(self, path: Path, n_tokens: int, checksums: np.ndarray | None = None) -> None:
        """Map the first `n_tokens` tokens of one state file as the next positions."""
        capacity = file_capacity(path, self.dim)
        if capacity < n_tokens:
            raise CorruptStoreError(
                f"state file {path} holds {capacity} tokens but the index has committed "
                f"{n_tokens}: the file is truncated"
            )
        if n_tokens == 0:
            return
        data = np.memmap(path, dtype=DTYPE, mode="r", shape=(self.dim, capacity))
        # a plain ndarray view of the mapping: no memmap bookkeeping on every slice
        self._parts.append((self.n_tokens, np.asarray(data)[:, :n_tokens]))
        if checksums is not None and len(checksums) != self.dim:
            raise CorruptStoreError(f"{len(checksums)} checksums recorded for the {self.dim} "
                                    f"units of {path}")
        self._checks.append(None if checksums is None else
                            (path, np.asarray(checksums, np.uint32), np.zeros(self.dim, bool)))
        self.n_tokens += n_tokens

    def _verify(self, part: int, units: np.ndarray | slice | int) -> None:
        """Check the columns `units` of one segment file against their checksums, once."""
        check = self._checks[part]
        if check is None:
            return
        path, expected, done = check
        if isinstance(units, int):
            if done[units]:
                return
            todo = np.array([units])
        else:
            todo = np.atleast_1d(np.arange(self.dim)[units])
            todo = todo[~done[todo]]
        if not todo.size:
            return
        view = self._parts[part][1]
        for unit in todo.tolist():
            if zlib.crc32(view[unit]) != int(expected[unit]):
                raise DamagedColumnError(
                    f"state file {path} is damaged: unit {unit} does not match the checksum "
                    "recorded when it was written; run `lstmsearch verify` and rebuild the index"
                )
            done[unit] = True
        if done.all():
            self._checks[part] = None  # every column checked: nothing more to do here

    def verify_all(self) -> None:
        """Check every column of every segment file now."""
        for part in range(len(self._parts)):
            self._verify(part, slice(None))

    def __repr__(self) -> str:
        return (f"StateStore({self.name!r}, dim={self.dim}, n_tokens={self.n_tokens}, "
                f"segments={len(self._parts)})")

    @property
    def shape(self) -> tuple[int, int]:
        """(units, tokens) of the unit-major columns."""
        return (self.dim, self.n_tokens)

    @property
    def segments(self) -> list[tuple[int, int]]:
        """[start, end) positions of each stored segment, in order."""
        return [(start, start + part.shape[1]) for start, part in self._parts]

    @property
    def columns(self) -> np.ndarray:
        """All columns as (dim, n_tokens) float16: a memory-mapped view for one segment, a
        copy of every state otherwise (prefer `block` or `pieces` on large indexes)."""
        if len(self._parts) == 1:
            self._verify(0, slice(None))
            return self._parts[0][1]
        return self.block(slice(None), 0, self.n_tokens)

    def tokens_by_units(self) -> np.ndarray:
        """The states as a (n_tokens, dim) float16 array (a transposed view of `columns`)."""
        return self.columns.T

    def check_unit(self, unit: int) -> int:
        """`unit` as an int, or a clear error when it is not a unit of this state."""
        if isinstance(unit, bool) or not isinstance(unit, (int, np.integer)):
            raise TypeError(f"unit must be an integer, got {unit!r}")
        if not 0 <= unit < self.dim:
            raise ValueError(f"unit {unit} out of range: {self.name} has units 0..{self.dim - 1}")
        return int(unit)

    def check_span(self, start: int, end: int) -> tuple[int, int]:
        """(start, end) as ints, or a clear error when it is not a span of stored tokens."""
        start, end = int(start), int(end)
        if not 0 <= start <= end <= self.n_tokens:
            raise ValueError(
                f"token span [{start}, {end}) out of range: the index has tokens 0..{self.n_tokens}"
            )
        return start, end

    def pieces(self, unit: int) -> list[tuple[int, np.ndarray]]:
        """Unit `unit` as (first position, contiguous float16 view) per segment, in order."""
        unit = self.check_unit(unit)
        for part in range(len(self._parts)):
            self._verify(part, unit)
        return [(start, part[unit]) for start, part in self._parts]

    def parts(self, units: Sequence[int] | slice = slice(None),
              positions: Sequence[int] | None = None) -> list[tuple[int, np.ndarray]]:
        """(first position, float16 (dim, n) view) of every segment, zero-copy, in order; the
        columns `units` are checked first in every segment, or only in the segments holding
        one of `positions`. Compiled scans read them in place."""
        if not isinstance(units, slice):
            units = np.asarray(units, dtype=np.int64).reshape(-1)
            if units.size and (units.min() < 0 or units.max() >= self.dim):
                bad = units[(units < 0) | (units >= self.dim)][0]
                raise ValueError(f"unit {bad} out of range: {self.name} has units 0..{self.dim - 1}")
        touched = None if positions is None else np.asarray(positions, dtype=np.int64)
        for part, (first, view) in enumerate(self._parts):
            if touched is None or ((touched >= first) & (touched < first + view.shape[1])).any():
                self._verify(part, units)
        return list(self._parts)

    def column(self, unit: int) -> np.ndarray:
        """Unit `unit` at every token: float16 (n_tokens,), a memory-mapped view when the
        index has one segment, else a copy."""
        parts = self.pieces(unit)
        if len(parts) == 1:
            return parts[0][1]
        if not parts:
            return np.zeros(0, dtype=DTYPE)
        return np.concatenate([view for _, view in parts])

    def _overlapping(self, start: int, end: int, units: np.ndarray | slice
                     ) -> list[tuple[int, int, np.ndarray]]:
        """(a, b, part) for each segment overlapping [start, end): local positions [a, b);
        the columns `units` of those segments are checked first."""
        out = []
        for i, (first, part) in enumerate(self._parts):
            a, b = max(start - first, 0), min(end - first, part.shape[1])
            if a < b:
                self._verify(i, units)
                out.append((a, b, part))
        return out

    def block(self, units: Sequence[int] | slice, start: int, end: int) -> np.ndarray:
        """Units x tokens [start, end): a float16 (len(units), end - start) copy."""
        start, end = self.check_span(start, end)
        if not isinstance(units, slice):
            rows = np.asarray(units, dtype=np.int64).reshape(-1)
            if rows.size and (rows.min() < 0 or rows.max() >= self.dim):
                bad = rows[(rows < 0) | (rows >= self.dim)][0]
                raise ValueError(f"unit {bad} out of range: {self.name} has units 0..{self.dim - 1}")
            units = rows
        pieces = [np.array(part[units, a:b]) for a, b, part in
                  self._overlapping(start, end, units)]
        if len(pieces) == 1:
            return pieces[0]
        if not pieces:
            n_units = len(range(self.dim)[units]) if isinstance(units, slice) else len(units)
            return np.zeros((n_units, 0), dtype=DTYPE)
        return np.concatenate(pieces, axis=1)

    def gather(self, positions: Sequence[int]) -> np.ndarray:
        """All units at sorted token `positions`: float16 (dim, len(positions)), read segment
        by segment with one fancy-indexed read."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos[0] < 0 or pos[-1] >= self.n_tokens):
            bad = pos[(pos < 0) | (pos >= self.n_tokens)][0]
            raise ValueError(f"position {bad} out of range: the index has tokens 0..{self.n_tokens - 1}")
        out = np.empty((self.dim, pos.size), dtype=DTYPE)
        for i, (first, part) in enumerate(self._parts):
            a, b = np.searchsorted(pos, [first, first + part.shape[1]])
            if a < b:
                self._verify(i, slice(None))
                out[:, a:b] = part[:, pos[a:b] - first]
        return out

    def vectors(self, positions: Sequence[int]) -> np.ndarray:
        """Full state vectors at token `positions`: float16 (len(positions), dim)."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if pos.size and (pos.min() < 0 or pos.max() >= self.n_tokens):
            bad = pos[(pos < 0) | (pos >= self.n_tokens)][0]
            raise ValueError(f"position {bad} out of range: the index has tokens 0..{self.n_tokens - 1}")
        out = np.empty((pos.size, self.dim), dtype=DTYPE)
        for i, (first, part) in enumerate(self._parts):
            inside = np.flatnonzero((pos >= first) & (pos < first + part.shape[1]))
            if inside.size:
                self._verify(i, slice(None))
                out[inside] = part[:, pos[inside] - first].T
        return out


# --- writing -----------------------------------------------------------------------------


def clip(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Float32 states clipped, in place, to float16's finite range (NaN stays NaN)."""
    return torch.as_tensor(values).clamp_(-FLOAT16_MAX, FLOAT16_MAX)


def to_stored(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Token-major float32 states (T, dim) -> unit-major float16 (dim, T), clipped to range.

    The definition of the stored values; `StateWriter.write_block` of clipped values gives
    the same bits.
    """
    t = torch.as_tensor(values).clamp(-FLOAT16_MAX, FLOAT16_MAX).to(torch.float16)
    return t.t().contiguous()


class StateWriter:
    """Writable state file of one (layer, kind): fill token blocks, flush, grow.

    Writes go to positions the database has not committed yet, so a crash mid-write leaves
    only bytes that nobody reads.
    """

    def __init__(self, path: str | Path, dim: int):
        self.path = Path(path)
        self.dim = dim
        self.capacity = file_capacity(self.path, dim)
        self._data = self._map()

    def _map(self) -> np.memmap | None:
        if self.capacity == 0:
            return None
        return np.memmap(self.path, dtype=DTYPE, mode="r+", shape=(self.dim, self.capacity))

    @classmethod
    def create(cls, path: str | Path, dim: int, capacity: int) -> StateWriter:
        """A new zero-filled (sparse) state file with room for `capacity` tokens."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "wb") as f:
            f.truncate(dim * capacity * ITEMSIZE)
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return cls(path, dim)

    @classmethod
    def ensure(cls, path: str | Path, dim: int, capacity: int, keep: int) -> StateWriter:
        """The state file at `path` with room for at least `capacity` tokens.

        Creates it when missing; when it is too small, grows it to exactly `capacity`, keeping
        the first `keep` (committed) tokens of every unit.
        """
        path = Path(path)
        if not path.exists():
            if keep:
                raise CorruptStoreError(
                    f"state file {path} is missing but the index has {keep} committed tokens"
                )
            return cls.create(path, dim, capacity)
        writer = cls(path, dim)
        if writer.capacity < keep:
            raise CorruptStoreError(
                f"state file {path} holds {writer.capacity} tokens but the index has committed {keep}"
            )
        if writer.capacity < capacity:
            writer.grow(capacity, keep)
        return writer

    def grow(self, capacity: int, keep: int) -> None:
        """Rewrite the file with room for `capacity` tokens, atomically (temp file, rename)."""
        tmp = self.path.with_name(self.path.name + ".grow")
        with open(tmp, "wb") as f:
            f.truncate(self.dim * capacity * ITEMSIZE)
        if keep:
            new = np.memmap(tmp, dtype=DTYPE, mode="r+", shape=(self.dim, capacity))
            for unit in range(self.dim):
                new[unit, :keep] = self._data[unit, :keep]
            new.flush()
            del new
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        self._data = None
        os.replace(tmp, self.path)
        self.capacity = capacity
        self._data = self._map()

    def write(self, start: int, columns: torch.Tensor | np.ndarray) -> None:
        """Store unit-major float16 `columns` (dim, T) at token positions [start, start + T)."""
        columns = np.asarray(columns)
        end = start + columns.shape[1]
        if columns.shape[0] != self.dim or end > self.capacity or start < 0:
            raise ValueError(
                f"cannot write {columns.shape} states at [{start}, {end}) into {self.path} "
                f"of {self.dim} units x {self.capacity} tokens"
            )
        if columns.shape[1]:
            self._data[:, start:end] = columns

    def write_block(self, start: int, values: np.ndarray | torch.Tensor, unit_offset: int = 0) -> None:
        """Store token-major values (T, units) at positions [start, start + T), units from
        `unit_offset`, transposed straight into the mapped file: float16 values as they are
        (a numpy copy, on the calling thread alone), others rounded to float16 on the way.

        Values beyond float16's range must have been clipped (see `clip`), as `to_stored` does.
        """
        length, units = values.shape
        end = start + length
        if start < 0 or end > self.capacity or unit_offset < 0 or unit_offset + units > self.dim:
            raise ValueError(
                f"cannot write {tuple(values.shape)} states at tokens [{start}, {end}), units "
                f"from {unit_offset}, into {self.path} of {self.dim} units x {self.capacity} tokens"
            )
        if not length:
            return
        if isinstance(values, np.ndarray) and values.dtype == DTYPE:
            self._data[unit_offset : unit_offset + units, start:end] = values.T
        else:
            target = torch.from_numpy(self._data)
            target[unit_offset : unit_offset + units, start:end].copy_(
                torch.as_tensor(values).to(torch.float16).T)

    def flush(self) -> None:
        """Make written blocks durable before the database commits them."""
        if self._data is not None:
            self._data.flush()

    def close(self) -> None:
        """Flush and release the mapping."""
        self.flush()
        self._data = None

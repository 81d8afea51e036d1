"""Streaming an index out, block by block: what every export format shares.

A staged output directory (renamed into place at the end, removed on an error), blocks of
tokens of a bounded size, stored states of a block, and a track as per-token columns.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmsearch.index import Index, open_index

BLOCK_BYTES = 1 << 25
"""Bytes of float32 states handled at once (32 MiB)."""
TOKEN_BLOCK = 1 << 20
"""Tokens per block of token rows."""


class ExportError(ValueError):
    """An export that cannot be done, and why."""


@dataclass(frozen=True)
class ExportResult:
    """What an export wrote."""

    path: Path
    format: str
    files: tuple[str, ...]  # relative to `path`
    n_docs: int
    n_tokens: int
    states: tuple[str, ...]
    seconds: float
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line (plus notes)."""
        lines = [f"exported {self.n_docs:,} documents, {self.n_tokens:,} tokens, "
                 f"{len(self.states)} states ({', '.join(self.states)}) as {self.format} to "
                 f"{self.path} in {self.seconds:.1f} s ({len(self.files)} files)"]
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)


@contextmanager
def opened(index: Index | str | os.PathLike) -> Iterator[Index]:
    """An open index: the one given, or one opened from a path and closed afterwards."""
    if isinstance(index, Index):
        yield index
        return
    idx = open_index(index)
    try:
        yield idx
    finally:
        idx.close()


def chosen_states(index: Index, states: Sequence[str] | None) -> list[str]:
    """The state names to export, checked against the index."""
    if states is None:
        return list(index.state_names)
    for name in states:
        index.store(name)  # a clear error for a state the index does not have
    return list(states)


@contextmanager
def staged_directory(out: str | os.PathLike) -> Iterator[Path]:
    """A temporary directory next to `out`, renamed to `out` when the block succeeds and
    removed when it fails. `out` must not exist, or be an empty directory."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty: choose a new directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def files_below(path: Path) -> tuple[str, ...]:
    """Relative paths of the files below `path`, sorted."""
    return tuple(sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()))


def token_blocks(n_tokens: int, units: int, itemsize: int = 4) -> Iterator[tuple[int, int]]:
    """[start, end) token ranges holding about BLOCK_BYTES of states each."""
    step = max(1, BLOCK_BYTES // max(1, units * itemsize))
    for start in range(0, n_tokens, step):
        yield start, min(n_tokens, start + step)


def state_block(index: Index, name: str, start: int, end: int, dtype: str) -> np.ndarray:
    """Stored values of tokens [start, end), all units: a C-ordered tokens x units array."""
    block = index.store(name).block(slice(None), start, end)
    return np.ascontiguousarray(block.T, dtype=np.dtype(dtype))


def track_columns(index: Index, name: str, n_tokens: int) -> tuple[np.ndarray, list[str] | None]:
    """A track as per-token float64 values (NaN where none) and labels (None where none),
    read a block of positions at a time; labels is None for a numbers-only track."""
    values = np.full(n_tokens, np.nan)
    labels: list | None = None
    for start in range(0, n_tokens, TOKEN_BLOCK):
        rows = index.sql("SELECT pos, value, label FROM tracks WHERE name = ? AND pos >= ? "
                         "AND pos < ? ORDER BY pos", [name, start, start + TOKEN_BLOCK],
                         max_rows=None).rows
        for pos, value, label in rows:
            if value is not None:
                values[pos] = value
            if label is not None:
                if labels is None:
                    labels = [None] * n_tokens
                labels[pos] = label
    return values, labels

"""Add an annotation track to a complete index (`lstmsearch annotate INDEX --track NAME FILE`).

A track gives tokens a number (`value`, e.g. nesting depth) or a label (`label`, e.g. a part
of speech). Accepted files:

- `.npy`: a 1-D array, one entry per token (numbers or strings);
- a CSV whose first line is the header `pos,value`: one `position,value` row per annotated
  token (positions not listed have no value);
- any other text file: one value per line, one line per token.

Values that all parse as numbers are stored as numbers, otherwise as labels. The file is
checked completely before anything is written, so a bad file leaves the index unchanged.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np

from indexer.segment import insert_track
from indexer.writer import BuildError, IndexWriter
from lstmsearch.index import ANNOTATIONS_DIR, DB_FILE, STATUS_COMPLETE


@dataclass(frozen=True)
class Track:
    """Parsed track rows: positions and either numeric values or labels."""

    pos: np.ndarray
    values: np.ndarray | None
    labels: list[str] | None


def as_track(entries: list[str] | np.ndarray, pos: np.ndarray) -> Track:
    """Numbers when every entry parses as one, labels otherwise."""
    array = np.asarray(entries)
    if array.dtype.kind in "biuf":
        return Track(pos, array.astype(np.float64), None)
    try:
        return Track(pos, np.array([float(e) for e in array.tolist()], dtype=np.float64), None)
    except ValueError:
        return Track(pos, None, [str(e) for e in array.tolist()])


def read_track_file(path: Path, n_tokens: int) -> Track:
    """Parse a track file (see module docstring) and check it against the token count."""
    if not path.is_file():
        raise BuildError(f"track file {path} does not exist")
    if path.suffix.lower() == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise BuildError(f"{path} is not a readable .npy array: {exc}") from exc
        if array.ndim != 1:
            raise BuildError(f"{path} holds an array of shape {array.shape}; expected 1-D")
        return check_dense(as_track(array, np.arange(len(array))), path, n_tokens)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BuildError(f"cannot read track file {path}: {exc}") from exc
    while lines and not lines[-1].strip():
        lines.pop()
    if lines and lines[0].replace(" ", "").lower() == "pos,value":
        return read_sparse(lines[1:], path, n_tokens)
    return check_dense(as_track(lines, np.arange(len(lines))), path, n_tokens)


def check_dense(track: Track, path: Path, n_tokens: int) -> Track:
    """A one-value-per-token track must have exactly one value per token."""
    n = len(track.pos)
    if n != n_tokens:
        raise BuildError(
            f"{path} has {n} values but the index has {n_tokens} tokens: give one value per "
            "token, or a CSV with header pos,value"
        )
    return track


def read_sparse(rows: list[str], path: Path, n_tokens: int) -> Track:
    """`pos,value` rows: positions must be distinct token positions."""
    pos, entries = [], []
    for lineno, row in enumerate(rows, start=2):
        first, sep, rest = row.partition(",")
        try:
            p = int(first)
        except ValueError:
            raise BuildError(f"{path}:{lineno}: {first!r} is not a token position") from None
        if not sep:
            raise BuildError(f"{path}:{lineno}: expected pos,value, got {row!r}")
        if not 0 <= p < n_tokens:
            raise BuildError(
                f"{path}:{lineno}: position {p} out of range: the index has tokens 0..{n_tokens - 1}"
            )
        pos.append(p)
        entries.append(rest.strip())
    positions = np.asarray(pos, dtype=np.int64)
    if len(np.unique(positions)) != len(positions):
        raise BuildError(f"{path} lists some positions more than once")
    order = np.argsort(positions, kind="stable")
    track = as_track(entries, positions)
    labels = None if track.labels is None else [track.labels[i] for i in order]
    values = None if track.values is None else track.values[order]
    return Track(positions[order], values, labels)


def annotate_index(
    path: str | os.PathLike, name: str, source: str | os.PathLike, *, replace: bool = False
) -> int:
    """Add track `name` from file `source` to the index at `path`; returns the rows written.

    The track is written as a file of its own (`annotations/`), listed in the manifest with
    its checksum in one transaction; a replaced track's old file is removed afterwards.
    Segments are not touched.
    """
    from lstmsearch.index import open_index

    path = Path(path)
    if not name or not name.strip():
        raise BuildError("a track needs a non-empty name")
    if not (path / DB_FILE).is_file():
        raise BuildError(f"no index at {path} (no {DB_FILE})")
    with IndexWriter.connect(path) as writer:
        meta = writer.meta()
        if meta.get("status") != STATUS_COMPLETE:
            raise BuildError(
                f"index {path} is incomplete: finish it with `lstmsearch index --resume {path}` "
                "before annotating"
            )
        with open_index(path) as index:
            n_tokens = index.n_tokens
            in_segments = {n for (n,) in index.sql(
                "SELECT DISTINCT name FROM tracks WHERE name NOT IN "
                "(SELECT name FROM annotation_files)").rows}
            exists = name in set(index.track_names())
        if name in in_segments:
            raise BuildError(f"index {path} already has a track {name!r} from its build; "
                             "choose another name")
        if exists and not replace:
            raise BuildError(f"index {path} already has a track {name!r}; choose another name "
                             "or replace it")
        track = read_track_file(Path(source), n_tokens)
        version = int(meta.get("manifest_version", 0)) + 1
        (path / ANNOTATIONS_DIR).mkdir(exist_ok=True)
        rel = f"{ANNOTATIONS_DIR}/track-{version:06d}.duckdb"
        target = path / rel
        target.unlink(missing_ok=True)
        con = duckdb.connect(str(target))
        try:
            con.execute("CREATE TABLE tracks (name VARCHAR, pos BIGINT, value DOUBLE, "
                        "label VARCHAR)")
            insert_track(con, name, track.pos, track.values, track.labels)
            con.execute("CHECKPOINT")
        finally:
            con.close()
        with open(target, "rb+") as f:
            os.fsync(f.fileno())
        writer.add_annotation(name, target)
        writer.remove_unlisted()
    return len(track.pos)

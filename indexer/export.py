"""Export an index as plain files: LSTMVis projects, NumPy `.npz`, Parquet tables.

    export_index("idx", "out", format="lstmvis")   # lstm.yml + HDF5, opens in LSTMVis
    export_index("idx", "out", format="npz")       # states.npz, tokens.npz, documents.jsonl
    export_index("idx", "out", format="parquet")   # tables and state columns, via DuckDB

Every format streams: states are copied a block of tokens at a time (all units of a few
hundred thousand tokens at most), never the whole matrix. The output is written into a
temporary directory next to `out` and renamed to `out` at the end; on an error nothing is
left behind.

npz: `states.npz` holds one array per state, named like `layers.0.h`, tokens x units in the
stored float16 (the exact values every query thresholds; `dtype="float32"` widens them
exactly). `tokens.npz` holds `token_id`, `doc`, `pos_in_doc`, `char_start`, `char_end` per
token, `doc_starts` (documents as [doc_starts[d], doc_starts[d + 1])), `vocab`, and per
annotation track `track.NAME` (float64, NaN where a token has no value) and, for label
tracks, `track.NAME.labels`. `documents.jsonl` holds each document's name and text.

parquet: `documents.parquet`, `vocab.parquet`, `tracks.parquet`, `unit_stats.parquet`,
`tokens/part-*.parquet` and, per state, `states/NAME/part-*.parquet` with columns `pos`, `u0`,
`u1`, ... (REAL): read a folder with `read_parquet('out/tokens/*.parquet')`.
"""

from __future__ import annotations

import json
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from indexer.blocks import (
    TOKEN_BLOCK,
    ExportError,
    ExportResult,
    chosen_states,
    files_below,
    opened,
    staged_directory,
    state_block,
    token_blocks,
    track_columns,
)
from indexer.lstmvis import export_lstmvis
from lstmsearch.index import Index
from lstmsearch.progress import progress_bar

FORMATS = ("lstmvis", "npz", "parquet")


def export_index(index: Index | str | os.PathLike, out: str | os.PathLike, *,
                 format: str = "lstmvis", states: Sequence[str] | None = None,
                 dtype: str | None = None, progress: bool | None = None) -> ExportResult:
    """Export `index` (an open `Index` or its directory) to the new directory `out`.

    `states` picks the states to write (default: all); `dtype` is float16 or float32 (default:
    float32 for LSTMVis and Parquet, float16, the stored values, for npz).
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}: choose one of {', '.join(FORMATS)}")
    with opened(index) as idx:
        names = chosen_states(idx, states)
        if format == "lstmvis":
            return export_lstmvis(idx, out, states=names, progress=progress)
        if format == "npz":
            return export_npz(idx, out, states=names, dtype=dtype or "float16", progress=progress)
        return export_parquet(idx, out, states=names, progress=progress)


# --- npz -----------------------------------------------------------------------------------


def write_npy_member(archive: zipfile.ZipFile, name: str, shape: tuple[int, ...],
                     dtype: np.dtype, blocks: Iterator[np.ndarray]) -> None:
    """Stream one C-ordered array into a `.npz` archive, block by block."""
    with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)),
                  "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_2_0(f, header)
        for block in blocks:
            f.write(np.ascontiguousarray(block, dtype=dtype).tobytes())


def export_npz(index: Index, out: str | os.PathLike, *, states: Sequence[str],
               dtype: str = "float16", progress: bool | None = None) -> ExportResult:
    """`states.npz`, `tokens.npz` and `documents.jsonl` (see the module docstring)."""
    if dtype not in ("float16", "float32"):
        raise ExportError(f"npz dtype must be float16 or float32, got {dtype!r}")
    t0 = time.perf_counter()
    n = index.n_tokens
    with staged_directory(out) as tmp:
        bar = progress_bar(n * len(states), progress, "export npz")
        with bar, zipfile.ZipFile(tmp / "states.npz", "w", allowZip64=True) as archive:
            for name in states:
                dim = index.store(name).dim

                def blocks(name=name, dim=dim):
                    for a, b in token_blocks(n, dim):
                        yield state_block(index, name, a, b, dtype)
                        bar.update(b - a)

                write_npy_member(archive, name, (n, dim), np.dtype(dtype), blocks())
        arrays = {"doc_starts": np.asarray(index.doc_starts, dtype=np.int64),
                  "vocab": np.array(index.vocab() or [""], dtype=str)}
        columns = {"token_id": np.int32, "doc": np.int32, "pos_in_doc": np.int32,
                   "char_start": np.int64, "char_end": np.int64}
        with zipfile.ZipFile(tmp / "tokens.npz", "w", allowZip64=True) as archive:
            for column, kind in columns.items():
                def blocks(column=column):
                    for a in range(0, n, TOKEN_BLOCK):
                        yield getattr(index.tokens(a, min(n, a + TOKEN_BLOCK)), column)
                write_npy_member(archive, column, (n,), np.dtype(kind), blocks())
            for name in index.track_names():
                values, labels = track_columns(index, name, n)
                arrays[f"track.{name}"] = values
                if labels is not None:
                    arrays[f"track.{name}.labels"] = np.array(
                        ["" if v is None else v for v in labels], dtype=str)
            for key, array in arrays.items():
                write_npy_member(archive, key, array.shape, array.dtype, iter([array]))
        with open(tmp / "documents.jsonl", "w", encoding="utf-8") as f:
            for doc in index.documents():
                f.write(json.dumps({"doc": doc.doc, "name": doc.name,
                                    "text": index.document_text(doc.doc)},
                                   ensure_ascii=False) + "\n")
        files = files_below(tmp)
    return ExportResult(Path(out), "npz", files, index.n_docs, n, tuple(states),
                        time.perf_counter() - t0)


# --- parquet -------------------------------------------------------------------------------


TRACK_COLUMNS = ("SELECT CAST(name AS VARCHAR) AS name, CAST(pos AS BIGINT) AS pos, "
                 "CAST(value AS DOUBLE) AS value, CAST(label AS VARCHAR) AS label FROM columns")
"""Track rows keep their SQL types (NULL where a track has no value or no label)."""


def write_parquet(columns: dict[str, np.ndarray], path: Path,
                  select: str = "SELECT * FROM columns") -> None:
    """Write numpy columns as one Parquet file through an in-memory DuckDB; `select` (a
    constant query over the registered `columns`) may cast or order them."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register("columns", columns)
        con.sql(select).write_parquet(str(path))
    finally:
        con.close()


def export_parquet(index: Index, out: str | os.PathLike, *, states: Sequence[str],
                   progress: bool | None = None) -> ExportResult:
    """Tables and per-state wide column files as Parquet (see the module docstring)."""
    t0 = time.perf_counter()
    n = index.n_tokens
    with staged_directory(out) as tmp:
        docs = index.documents()
        write_parquet({
            "doc": np.array([d.doc for d in docs], dtype=np.int32),
            "name": np.array([d.name for d in docs], dtype=object),
            "tok_start": np.array([d.start for d in docs], dtype=np.int64),
            "tok_end": np.array([d.end for d in docs], dtype=np.int64),
            "text": np.array([index.document_text(d.doc) for d in docs], dtype=object),
        }, tmp / "documents.parquet")
        vocab = index.vocab()
        write_parquet({"token_id": np.arange(len(vocab), dtype=np.int32),
                       "text": np.array(vocab, dtype=object)}, tmp / "vocab.parquet")
        (tmp / "tokens").mkdir()
        for part, a in enumerate(range(0, n, TOKEN_BLOCK)):
            t = index.tokens(a, min(n, a + TOKEN_BLOCK))
            write_parquet({"pos": t.pos, "doc": t.doc, "pos_in_doc": t.pos_in_doc,
                           "token_id": t.token_id, "text": np.array(t.text, dtype=object),
                           "char_start": t.char_start, "char_end": t.char_end},
                          tmp / "tokens" / f"part-{part:05d}.parquet")
        tracks = index.sql("SELECT name, pos, value, label FROM tracks ORDER BY name, pos",
                           max_rows=None)
        write_parquet({c: np.array(tracks.column(c), dtype=object) for c in tracks.columns},
                      tmp / "tracks.parquet", TRACK_COLUMNS)
        stats = index.sql("SELECT * FROM unit_stats ORDER BY layer, kind, unit", max_rows=None)
        write_parquet({c: np.array(stats.column(c), dtype=object if c == "kind" else None)
                       for c in stats.columns}, tmp / "unit_stats.parquet")
        bar = progress_bar(n * len(states), progress, "export parquet")
        with bar:
            for name in states:
                folder = tmp / "states" / name
                folder.mkdir(parents=True)
                for part, (a, b) in enumerate(token_blocks(n, index.store(name).dim)):
                    block = state_block(index, name, a, b, "float32")
                    cols = {"pos": np.arange(a, b, dtype=np.int64)}
                    cols.update({f"u{u}": block[:, u] for u in range(block.shape[1])})
                    write_parquet(cols, folder / f"part-{part:05d}.parquet")
                    bar.update(b - a)
        files = files_below(tmp)
    return ExportResult(Path(out), "parquet", files, index.n_docs, n, tuple(states),
                        time.perf_counter() - t0)

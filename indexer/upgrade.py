"""Convert an index of format version 1 (one monolithic store) to the segment layout:
`lstmsearch upgrade INDEX`.

Version 1 kept every table in `index.duckdb` and one state file per (layer, kind) in
`states/`. The upgrade writes a complete new index beside it (`INDEX.upgrading`) as a single
segment — the same documents, tokens, tracks and stored float16 states, statistics merged
from that segment, FAISS rebuilt over the same values — and then swaps the directories, so
the index is at every moment either the old one or the new one. Only a complete version 1
index is upgraded; nothing of the old files is run or unpickled (the model file is copied as
bytes).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import duckdb
import numpy as np

from indexer.build import merge_pending_stats, write_stats_and_publish
from indexer.segment import SegmentPlan, SegmentWriter
from indexer.writer import BuildError, IndexWriter, copy_atomic
from lstmsearch.index import DB_FILE, FORMAT_VERSION, MODEL_FILE
from lstmsearch.store import DTYPE, file_capacity

COPY_BLOCK = 1 << 16
MANIFEST_META = {"status", "n_tokens", "format_version", "shard_tokens", "shard_docs"}


def upgrade_index(path: str | os.PathLike, *, progress: bool | None = None) -> Path:
    """Rewrite the version 1 index at `path` in the current format; returns `path`."""
    path = Path(path)
    db = path / DB_FILE
    if not db.is_file():
        raise BuildError(f"no index at {path} (no {DB_FILE})")
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error as exc:
        raise BuildError(f"cannot read the database of {path}: {exc}") from exc
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        found = meta.get("format_version")
        if found == str(FORMAT_VERSION):
            raise BuildError(f"index {path} already has format version {FORMAT_VERSION}")
        if found != "1":
            raise BuildError(f"index {path} has format version {found}; only version 1 "
                             "indexes can be upgraded")
        if meta.get("status") != "complete":
            raise BuildError(f"index {path} is an incomplete version 1 build; rebuild it "
                             "with `lstmsearch index`")
        layers = con.execute("SELECT name, layer, kind, dim, file FROM layers ORDER BY seq"
                             ).fetchall()
        vocab = [t for (t,) in con.execute("SELECT text FROM vocab ORDER BY token_id").fetchall()]
        ((n_docs, n_tokens),) = con.execute(
            "SELECT count(*), coalesce(max(tok_end), 0) FROM documents").fetchall()
        faiss = bool(con.execute("SELECT count(*) FROM faiss_indexes").fetchone()[0])
    finally:
        con.close()
    if not n_docs:
        raise BuildError(f"index {path} has no documents to upgrade")
    started = time.perf_counter()
    tmp = path.with_name(path.name + ".upgrading")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if (path / MODEL_FILE).is_file():
            copy_atomic(path / MODEL_FILE, tmp / MODEL_FILE)
        states = [(n, int(lay), k, int(d)) for n, lay, k, d, _ in layers]
        new_meta = {k: v for k, v in meta.items() if k not in MANIFEST_META}
        new_meta["format_version"] = str(FORMAT_VERSION)
        writer = IndexWriter(tmp)
        try:
            writer.create(new_meta, states, vocab)
            plan = SegmentPlan(0, 0, int(n_docs), 0, int(n_tokens))
            with writer.transaction() as tx:
                tx.execute("INSERT INTO segments VALUES (0, ?, 0, ?, 0, ?, 'planned', NULL, "
                           "NULL, NULL)", [plan.name, plan.doc_end, plan.tok_end])
                tx.execute("UPDATE meta SET value = '1' WHERE key = 'next_segment'")
            segment = SegmentWriter(tmp, plan, states)
            try:
                for (name, _, _, dim), (*_, file) in zip(states, layers, strict=True):
                    source = path / file
                    capacity = file_capacity(source, dim)
                    if capacity < n_tokens:
                        raise BuildError(f"state file {source} holds {capacity} tokens, the "
                                         f"index {n_tokens}: it is damaged")
                    columns = np.memmap(source, dtype=DTYPE, mode="r", shape=(dim, capacity))
                    for a in range(0, n_tokens, COPY_BLOCK):
                        b = min(n_tokens, a + COPY_BLOCK)
                        segment.write_columns(name, a, np.ascontiguousarray(columns[:, a:b]))
                    del columns
                written = segment.finish_copied([db], partials=True, faiss=faiss)
            except BaseException:
                segment.abort()
                raise
            writer.add_segment(written, float(meta.get("build_seconds", 0.0)))
            merged = merge_pending_stats(writer, progress)
            write_stats_and_publish(writer, merged, float(meta.get("build_seconds", 0.0))
                                    + time.perf_counter() - started)
        finally:
            writer.close()
        old = path.with_name(path.name + ".v1")
        if old.exists():
            shutil.rmtree(old)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


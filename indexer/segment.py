"""Writing one segment: the immutable unit an index is made of.

A segment holds whole documents [doc_start, doc_end) and their tokens [tok_start, tok_end)
(global positions). Its directory `segments/seg-NNNNNN/` holds:

    rows.duckdb        documents, tokens and tracks of the segment (global positions)
    layers.1.c.f16     unit-major float16 columns of each state (dim x tokens), see store.py
    layers.1.c.faiss   FAISS index over the segment's states (ids: positions in the segment)
    checksums.npz      CRC-32 of every unit's column of every state (checked when first read)
    partial.npz        partial unit statistics of every state (histograms, top-k; stats.py),
                       until the build publishes them: merged into the index's statistics,
                       then removed (they would cost as much disk as a tenth of the states)

Everything but the rows comes from one pass over each state's columns right after its last
block was written, while they are in the page cache: statistics, checksums, FAISS codes.
It is written in `seg-NNNNNN.tmp/` and renamed when complete; only the index's manifest,
updated afterwards by the driver (`indexer.writer.IndexWriter.add_segment`), makes it part of
the index. A segment directory that no manifest lists is a leftover of a killed build and is
removed by the next writer. Nothing here touches the index database, so any worker that can
reach the index directory can write a segment (`indexer.ray_engine`).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import torch

from indexer.nearest import RECALL_EVERY, build_faiss
from indexer.stats import save_checksums, save_partials, segment_partials
from lstmsearch.index import (
    SEGMENT_CHECKSUMS,
    SEGMENT_PARTIAL,
    SEGMENT_ROWS,
    SEGMENTS_DIR,
    segment_file,
    sql_path,
)
from lstmsearch.models import file_sha256
from lstmsearch.store import StateStore, StateWriter, column_checksums

ROWS_FILE = SEGMENT_ROWS
CHECKSUMS_FILE = SEGMENT_CHECKSUMS
PARTIAL_FILE = SEGMENT_PARTIAL

SEGMENT_SCHEMA = [
    """CREATE TABLE documents (
        doc INTEGER, name VARCHAR, tok_start BIGINT, tok_end BIGINT, n_chars INTEGER,
        text VARCHAR)""",
    """CREATE TABLE tokens (
        pos BIGINT, doc INTEGER, pos_in_doc INTEGER, token_id INTEGER, text VARCHAR,
        char_start INTEGER, char_end INTEGER)""",
    """CREATE TABLE tracks (name VARCHAR, pos BIGINT, value DOUBLE, label VARCHAR)""",
]


@dataclass(frozen=True)
class PlannedDoc:
    """A document ready to index: text, token ids and spans, token-level tracks."""

    name: str
    text: str
    ids: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    tracks: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class SegmentPlan:
    """Whole documents [doc_start, doc_end) holding tokens [tok_start, tok_end)."""

    number: int
    doc_start: int
    doc_end: int
    tok_start: int
    tok_end: int

    @property
    def name(self) -> str:
        return segment_name(self.number)

    @property
    def n_tokens(self) -> int:
        return self.tok_end - self.tok_start

    @property
    def n_docs(self) -> int:
        return self.doc_end - self.doc_start


@dataclass(frozen=True)
class SegmentFile:
    """One file of a committed segment: path relative to the index, size and sha256."""

    path: str
    kind: str  # "rows", "states", "faiss", "checksums" or "partial"
    state: str | None
    bytes: int
    sha256: str


@dataclass(frozen=True)
class FaissInfo:
    """The FAISS index of one state in one segment."""

    state: str
    file: str
    description: str
    n_tokens: int
    recall_at_10: float | None  # None: not measured on this segment
    seconds: float


@dataclass(frozen=True)
class WrittenSegment:
    """A complete segment directory, ready to be listed by the manifest."""

    plan: SegmentPlan
    files: tuple[SegmentFile, ...]
    faiss: tuple[FaissInfo, ...]
    seconds: float


def segment_name(number: int) -> str:
    """`seg-000012`: segment directories sort in the order they were numbered."""
    return f"seg-{number:06d}"


def plan_segments(lengths: Sequence[int], min_tokens: int, min_docs: int, first_number: int,
                  first_doc: int, first_token: int) -> list[SegmentPlan]:
    """Group consecutive whole documents into segments of at least `min_tokens` tokens and
    `min_docs` documents (the last segment takes what is left). Depends only on the document
    lengths, so every engine and any number of workers plans the same segments."""
    plans: list[SegmentPlan] = []
    doc, tok = first_doc, first_token
    start_doc, start_tok = doc, tok
    for length in lengths:
        doc, tok = doc + 1, tok + int(length)
        if tok - start_tok >= min_tokens and doc - start_doc >= min_docs:
            plans.append(SegmentPlan(first_number + len(plans), start_doc, doc, start_tok, tok))
            start_doc, start_tok = doc, tok
    if doc > start_doc:
        plans.append(SegmentPlan(first_number + len(plans), start_doc, doc, start_tok, tok))
    return plans


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class SegmentWriter:
    """Writes the directory of one segment; `finish` completes and renames it.

    `write_block` takes token-major values at global positions, as the extraction yields them;
    they are rounded to float16 once, straight into the segment's mapped state files.
    `codebooks` (state name -> trained codebook, see indexer.nearest) make the FAISS indexes
    compressed; a state without one gets the exact index.
    """

    def __init__(self, out: Path, plan: SegmentPlan, states: Sequence[tuple[str, int, str, int]],
                 codebooks: Mapping[str, object] | None = None):
        self.out = Path(out)
        self.plan = plan
        self.states = list(states)
        self.codebooks = dict(codebooks or {})
        self.measure_recall = plan.number % RECALL_EVERY == 0  # see indexer.nearest
        self.final = self.out / SEGMENTS_DIR / plan.name
        self.tmp = self.final.with_name(plan.name + ".tmp")
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self.started = time.perf_counter()
        self.writers = {
            name: StateWriter.create(self.tmp / segment_file(name, "states"), dim, plan.n_tokens)
            for name, _, _, dim in self.states
        }

    def write_block(self, state: str, position: int, values: np.ndarray | torch.Tensor,
                    unit_offset: int = 0) -> None:
        """Store clipped token-major values (T, units) at global positions from `position`."""
        local = position - self.plan.tok_start
        if local < 0 or local + len(values) > self.plan.n_tokens:
            raise ValueError(
                f"positions [{position}, {position + len(values)}) are outside segment "
                f"{self.plan.name} [{self.plan.tok_start}, {self.plan.tok_end})"
            )
        self.writers[state].write_block(local, values, unit_offset)

    def write_columns(self, state: str, position: int, columns: np.ndarray) -> None:
        """Store stored-precision unit-major columns (dim, T) at global positions from
        `position` (a copy of states already in an index: no rounding happens)."""
        local = position - self.plan.tok_start
        if local < 0 or local + columns.shape[1] > self.plan.n_tokens:
            raise ValueError(
                f"positions [{position}, {position + columns.shape[1]}) are outside segment "
                f"{self.plan.name} [{self.plan.tok_start}, {self.plan.tok_end})"
            )
        self.writers[state].write(local, columns)

    def finish(self, docs: Sequence[PlannedDoc], tracks: Mapping[str, np.ndarray] | None = None,
               labelled: Sequence[tuple[str, np.ndarray, np.ndarray | None, list | None]] = (),
               *, faiss: bool = True) -> WrittenSegment:
        """Write rows, statistics and FAISS, hash every file and rename the directory.

        `tracks` are computed per token of the segment (NaN for none, e.g. the surprisal);
        `labelled` are imported tracks as (name, positions, values or None, labels or None).
        """
        plan = self.plan
        n = sum(len(d) for d in docs)
        if n != plan.n_tokens or len(docs) != plan.n_docs:
            raise ValueError(
                f"segment {plan.name} was planned with {plan.n_docs} documents and "
                f"{plan.n_tokens} tokens but got {len(docs)} and {n}: the tokenizer or the "
                "corpus changed; rebuild the index"
            )
        self.close_states()
        write_rows(self.tmp / ROWS_FILE, plan, docs, tracks or {}, labelled)
        return self.seal(faiss, partials=True)

    def finish_copied(self, sources: Sequence[Path], *, partials: bool = False,
                      faiss: bool = True) -> WrittenSegment:
        """Complete a segment whose rows are copied from other row databases (a compaction,
        an upgrade): their documents, tokens and tracks inside this segment's ranges.
        `partials`: write its partial statistics too (an upgrade publishes them; a
        compaction changes no statistic of the index)."""
        self.close_states()
        copy_rows(self.tmp / ROWS_FILE, self.plan, sources)
        return self.seal(faiss, partials)

    def close_states(self) -> None:
        """Flush and unmap the state files."""
        for w in self.writers.values():
            w.close()

    def seal(self, faiss: bool, partials: bool) -> WrittenSegment:
        """Statistics, checksums, FAISS, file hashes; then rename the directory into place."""
        plan = self.plan
        stores = {
            name: StateStore(self.tmp / segment_file(name, "states"), name, layer, kind, dim,
                             plan.n_tokens)
            for name, layer, kind, dim in self.states
        }
        if partials:
            save_partials(self.tmp / PARTIAL_FILE, {
                name: segment_partials(s.columns, plan.tok_start) for name, s in stores.items()
            }, compress=False)  # read once, when the build publishes, then removed
        save_checksums(self.tmp / CHECKSUMS_FILE,
                       {name: column_checksums(s.columns) for name, s in stores.items()})
        faiss_rows = []
        if faiss:
            for name, store in stores.items():
                file = segment_file(name, "faiss")
                built = build_faiss(store, self.tmp / file, self.codebooks.get(name),
                                    measure=self.measure_recall)
                faiss_rows.append(FaissInfo(name, f"{SEGMENTS_DIR}/{plan.name}/{file}",
                                            built.description, plan.n_tokens,
                                            built.recall_at_10, built.seconds))
        del stores
        files = describe_files(self.tmp, f"{SEGMENTS_DIR}/{plan.name}", self.states)
        for child in self.tmp.iterdir():
            with open(child, "rb+") as f:
                os.fsync(f.fileno())
        if self.final.exists():  # an unlisted leftover of an earlier try
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        fsync_dir(self.final.parent)
        return WrittenSegment(plan, files, tuple(faiss_rows), time.perf_counter() - self.started)

    def abort(self) -> None:
        """Remove the half-written directory."""
        for w in self.writers.values():
            w.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def describe_files(directory: Path, prefix: str,
                   states: Sequence[tuple[str, int, str, int]]) -> tuple[SegmentFile, ...]:
    """Size and sha256 of every file of a segment directory."""
    kinds = {ROWS_FILE: ("rows", None), CHECKSUMS_FILE: ("checksums", None),
             PARTIAL_FILE: ("partial", None)}
    for name, *_ in states:
        kinds[segment_file(name, "states")] = ("states", name)
        kinds[segment_file(name, "faiss")] = ("faiss", name)
    out = []
    for child in sorted(directory.iterdir()):
        kind, state = kinds.get(child.name, ("other", None))
        out.append(SegmentFile(f"{prefix}/{child.name}", kind, state, child.stat().st_size,
                               file_sha256(child)))
    return tuple(out)


def write_rows(path: Path, plan: SegmentPlan, docs: Sequence[PlannedDoc],
               tracks: Mapping[str, np.ndarray],
               labelled: Sequence[tuple[str, np.ndarray, np.ndarray | None, list | None]]) -> None:
    """The segment's documents, tokens and tracks as a DuckDB file."""
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    n = int(lengths.sum())
    first = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")  # the build reports its own progress
    try:
        for statement in SEGMENT_SCHEMA:
            con.execute(statement)
        con.register("new_docs", {
            "doc": np.arange(plan.doc_start, plan.doc_end, dtype=np.int32),
            "name": np.array([d.name for d in docs], dtype=object),
            "tok_start": plan.tok_start + first,
            "tok_end": plan.tok_start + first + lengths,
            "n_chars": np.array([len(d.text) for d in docs], dtype=np.int32),
            "text": np.array([d.text for d in docs], dtype=object),
        })
        con.execute("INSERT INTO documents SELECT * FROM new_docs ORDER BY doc")
        con.register("new_tokens", {
            "pos": np.arange(plan.tok_start, plan.tok_end, dtype=np.int64),
            "doc": np.repeat(np.arange(plan.doc_start, plan.doc_end, dtype=np.int32), lengths),
            "pos_in_doc": (np.arange(n) - np.repeat(first, lengths)).astype(np.int32),
            "token_id": np.concatenate([d.ids for d in docs]).astype(np.int32),
            "char_start": np.concatenate([d.starts for d in docs]).astype(np.int32),
            "char_end": np.concatenate([d.ends for d in docs]).astype(np.int32),
        })
        con.execute(
            "INSERT INTO tokens SELECT t.pos, t.doc, t.pos_in_doc, t.token_id, "
            "substr(d.text, t.char_start + 1, t.char_end - t.char_start), t.char_start, "
            "t.char_end FROM new_tokens t JOIN new_docs d USING (doc) ORDER BY t.pos"
        )
        for name in sorted({t for d in docs for t in d.tracks}):
            pos = [plan.tok_start + f + np.arange(len(d))
                   for d, f in zip(docs, first, strict=True) if name in d.tracks]
            val = [d.tracks[name] for d in docs if name in d.tracks]
            insert_track(con, name, np.concatenate(pos), np.concatenate(val), None)
        for name, values in sorted(tracks.items()):
            values = np.asarray(values, dtype=np.float64)
            keep = np.flatnonzero(np.isfinite(values))
            insert_track(con, name, plan.tok_start + keep, values[keep], None)
        for name, pos, values, labels in labelled:
            pos = np.asarray(pos, dtype=np.int64)
            inside = np.flatnonzero((pos >= plan.tok_start) & (pos < plan.tok_end))
            insert_track(con, name, pos[inside],
                         None if values is None else np.asarray(values)[inside],
                         None if labels is None else [labels[i] for i in inside])
        con.execute("CHECKPOINT")
    finally:
        con.close()


def copy_rows(path: Path, plan: SegmentPlan, sources: Sequence[Path]) -> None:
    """A row database for `plan` from the rows of other ones (each attached read-only)."""
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")  # the build reports its own progress
    try:
        for statement in SEGMENT_SCHEMA:
            con.execute(statement)
        for i, source in enumerate(sources):
            name = f"source_{i}"
            con.execute(f"ATTACH '{sql_path(source)}' AS {name} (READ_ONLY)")
            con.execute(f"INSERT INTO documents SELECT * FROM {name}.documents "
                        "WHERE doc >= ? AND doc < ? ORDER BY doc", [plan.doc_start, plan.doc_end])
            con.execute(f"INSERT INTO tokens SELECT * FROM {name}.tokens "
                        "WHERE pos >= ? AND pos < ? ORDER BY pos", [plan.tok_start, plan.tok_end])
            con.execute(f"INSERT INTO tracks SELECT * FROM {name}.tracks "
                        "WHERE pos >= ? AND pos < ? ORDER BY name, pos",
                        [plan.tok_start, plan.tok_end])
            con.execute(f"DETACH {name}")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def insert_track(con: duckdb.DuckDBPyConnection, name: str, pos: np.ndarray,
                 values: np.ndarray | None, labels: list | None) -> None:
    """Rows of one track (numbers, labels or both per position), in position order."""
    n = len(pos)
    order = np.argsort(pos, kind="stable")
    con.register("new_track", {
        "pos": np.asarray(pos, dtype=np.int64)[order],
        "value": (np.full(n, np.nan) if values is None
                  else np.asarray(values, dtype=np.float64)[order]),
        "label": np.array([""] * n if labels is None else [labels[i] for i in order],
                          dtype=object),
    })
    value = "NULL" if values is None else "value"
    label = "NULL" if labels is None else "label"
    con.execute(f"INSERT INTO tracks SELECT ?, pos, {value}, {label} FROM new_track ORDER BY pos",
                [name])  # only the constants NULL/value/label are formatted in
    con.unregister("new_track")

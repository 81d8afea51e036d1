"""Writing an index directory: the manifest in the database, and the commit protocol.

One writer at a time holds `write.lock` (an advisory file lock) for the whole job; readers
never take it. The database is opened only for each short transaction, so readers can open
snapshots while a long build or append runs.

A build is planned first: the documents and their tracks are staged in `build/plan.duckdb`
(private to the writer) and the segments are listed in the manifest as `planned`. Each
segment directory is written completely (`indexer.segment`), then one transaction lists its
files with their sizes and checksums and marks it `pending`. The final transaction merges
the pending segments' partial statistics into the index's, marks them `live` and raises the
manifest version: readers see the new documents all at once, or not at all. Compaction
replaces live segments by a merged one in one transaction (`retired` rows keep the history)
and removes the old files only afterwards.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from indexer.segment import PlannedDoc, SegmentPlan, WrittenSegment, plan_segments
from lstmsearch.index import (
    ANNOTATIONS_DIR,
    CODEBOOKS_DIR,
    DB_FILE,
    FORMAT_VERSION,
    MODEL_FILE,
    ON_THRESHOLDS,
    QUANTILE_COLUMNS,
    SCHEMA,
    SEGMENTS_DIR,
    STATS_DIR,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    IndexOpenError,
    check_format,
)
from lstmsearch.models import file_sha256

__all__ = ["BuildError", "IndexWriter", "PlannedDoc", "SegmentPlan", "plan_segments", "now"]

LOCK_FILE = "write.lock"
BUILD_DIR = "build"
PLAN_FILE = "plan.duckdb"
CONNECT_WAIT = 30.0
"""Seconds to wait for a reader that is reading the manifest at the same moment."""

PLAN_SCHEMA = [
    """CREATE TABLE plan_documents (
        doc INTEGER, segment INTEGER, name VARCHAR, tok_start BIGINT, tok_end BIGINT,
        n_chars INTEGER, text VARCHAR)""",
    """CREATE TABLE plan_tracks (name VARCHAR, pos BIGINT, value DOUBLE)""",
]


class BuildError(ValueError):
    """A build that cannot start or go on, with what to do about it."""


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a file so that `target` is either absent or complete."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    tmp.replace(target)


def connect_writable(path: Path, wait: float = CONNECT_WAIT) -> duckdb.DuckDBPyConnection:
    """A read-write connection to `path`, waiting while a reader briefly holds the file."""
    deadline = time.monotonic() + wait
    while True:
        try:
            # no DuckDB progress bar: a build reports its own progress (tqdm or plain lines)
            con = duckdb.connect(str(path))
            con.execute("SET enable_progress_bar = false")
            return con
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise BuildError(
                    f"index database {path} is damaged ({exc}); rebuild the index, or finish "
                    f"an interrupted build with `lstmsearch index --resume {path.parent}`"
                ) from exc
            if time.monotonic() > deadline:
                raise BuildError(
                    f"index {path.parent} is held by another process for {wait:.0f} s; try "
                    "again when it has finished"
                ) from exc
            time.sleep(0.05)
        except duckdb.ConnectionException as exc:
            raise BuildError(
                f"index {path.parent} is open in this process; close it (Index.close()) before "
                "writing to it"
            ) from exc
        except duckdb.Error as exc:
            raise BuildError(f"index database {path} is damaged: {exc}") from exc


class IndexWriter:
    """The one writer of an index directory (holds its write lock until `close`)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = open(self.path / LOCK_FILE, "a+")  # noqa: SIM115 - held until close
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            self._lock.close()
            raise BuildError(
                f"index {self.path} is being written by another process (an indexer, append, "
                "annotate or compact still running); wait for it to finish"
            ) from exc

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def connect(cls, path: Path) -> IndexWriter:
        """Write access to an existing index directory."""
        if not (Path(path) / DB_FILE).is_file():
            raise BuildError(f"no index at {path} (no {DB_FILE})")
        return cls(path)

    def create(self, meta: dict[str, str], states: Sequence[tuple[str, int, str, int]],
               vocab: Sequence[str]) -> None:
        """Create the schema, meta, layers and vocab of a new index in one transaction."""
        (self.path / SEGMENTS_DIR).mkdir(parents=True, exist_ok=True)
        with self.transaction() as con:
            for statement in SCHEMA:
                con.execute(statement)
            set_meta(con, {"manifest_version": "0", "next_segment": "0", **meta})
            for seq, (name, layer, kind, dim) in enumerate(states):
                con.execute("INSERT INTO layers VALUES (?, ?, ?, ?, ?, 'float16')",
                            [name, seq, layer, kind, dim])
            con.register("new_vocab", {
                "token_id": np.arange(len(vocab), dtype=np.int32),
                "text": np.array(list(vocab), dtype=object),
            })
            con.execute("INSERT INTO vocab SELECT token_id, text FROM new_vocab ORDER BY 1")
            con.unregister("new_vocab")
            if (self.path / MODEL_FILE).is_file():
                add_file(con, None, MODEL_FILE, "model", None, self.path / MODEL_FILE)

    def close(self) -> None:
        """Release the write lock."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    abort = close

    def __enter__(self) -> IndexWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- the database ------------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction on a fresh connection, closed (and checkpointed) afterwards."""
        con = connect_writable(self.path / DB_FILE)
        try:
            con.execute("BEGIN TRANSACTION")
            yield con
            con.execute("COMMIT")
        except BaseException:
            con.close()
            raise
        con.execute("CHECKPOINT")
        con.close()

    def read(self, sql: str, params: Sequence | None = None) -> list[tuple]:
        """Rows of one query (constants in `sql`, values in `params`)."""
        con = connect_writable(self.path / DB_FILE)
        try:
            return con.execute(sql, params or []).fetchall()
        finally:
            con.close()

    def has_schema(self) -> bool:
        """Whether the schema transaction committed (it did not when killed before)."""
        ((n,),) = self.read("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta'")
        return bool(n)

    def meta(self) -> dict[str, str]:
        """The meta table, after checking the format version."""
        meta = dict(self.read("SELECT key, value FROM meta"))
        try:
            check_format(meta, self.path)
        except IndexOpenError as exc:
            raise BuildError(str(exc)) from exc
        return meta

    def update_meta(self, values: dict[str, str]) -> None:
        """Set meta entries in a transaction of their own."""
        with self.transaction() as con:
            set_meta(con, values)

    def states(self) -> list[tuple[str, int, str, int]]:
        """(name, layer, kind, dim) of every stored state, in layer order."""
        return [(n, int(lay), k, int(d)) for n, lay, k, d in
                self.read("SELECT name, layer, kind, dim FROM layers ORDER BY seq")]

    def segments(self, *states: str) -> list[tuple[SegmentPlan, str]]:
        """Segments (all, or those in the given manifest states) in position order."""
        rows = self.read(
            "SELECT segment, doc_start, doc_end, tok_start, tok_end, state FROM segments "
            "WHERE state <> 'retired' ORDER BY tok_start, segment"
        )
        out = [(SegmentPlan(*map(int, row[:5])), row[5]) for row in rows]
        return [(p, s) for p, s in out if not states or s in states]

    def extent(self) -> tuple[int, int]:
        """(documents, tokens) of the live and pending segments."""
        ((docs, toks),) = self.read(
            "SELECT coalesce(max(doc_end), 0), coalesce(max(tok_end), 0) FROM segments "
            "WHERE state IN ('live', 'pending')"
        )
        return int(docs), int(toks)

    def live_files(self, kind: str | None = None) -> list[tuple[int | None, str, str, int, str]]:
        """(segment, path, kind, bytes, sha256) of the files the manifest lists as live."""
        rows = self.read(
            "SELECT f.segment, f.path, f.kind, f.bytes, f.sha256 FROM files f "
            "LEFT JOIN segments s USING (segment) "
            "WHERE (f.segment IS NULL OR s.state IN ('live', 'pending')) "
            "AND (? IS NULL OR f.kind = ?) ORDER BY f.path",
            [kind, kind],
        )
        return [(None if s is None else int(s), p, k, int(b), h) for s, p, k, b, h in rows]

    # --- planning --------------------------------------------------------------------------

    def plan(self, docs: Sequence[PlannedDoc], plans: Sequence[SegmentPlan],
             meta: dict[str, str], codebooks: dict[str, Path] | None = None) -> None:
        """Stage the documents and their tracks, list the planned segments (and the new
        index's FAISS codebooks, state -> file), mark building."""
        build = self.path / BUILD_DIR
        if build.exists():
            shutil.rmtree(build)
        build.mkdir()
        stage_plan(build / PLAN_FILE, docs, plans)
        with self.transaction() as con:
            for p in plans:
                con.execute(
                    "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, 'planned', NULL, NULL, NULL)",
                    [p.number, p.name, p.doc_start, p.doc_end, p.tok_start, p.tok_end],
                )
            ((live,),) = con.execute(
                "SELECT count(*) FROM segments WHERE state = 'live'").fetchall()
            status = {} if live else {"status": STATUS_BUILDING}  # an append stays complete
            list_codebooks(con, self.path, codebooks or {})
            set_meta(con, {**meta, **status, "updated_at": now(),
                           "next_segment": str(plans[-1].number + 1)})

    def add_codebooks(self, codebooks: dict[str, Path]) -> None:
        """List FAISS codebooks (state -> file) in a transaction of their own."""
        with self.transaction() as con:
            list_codebooks(con, self.path, codebooks)

    def planned_documents(self, doc_start: int, doc_end: int
                          ) -> list[tuple[str, str, dict[str, np.ndarray]]]:
        """(name, text, token tracks) of staged documents [doc_start, doc_end), in order."""
        path = self.path / BUILD_DIR / PLAN_FILE
        if not path.is_file():
            raise BuildError(f"the staged plan of {self.path} ({path}) is missing; rebuild "
                             "the index from its corpus")
        con = duckdb.connect(str(path), read_only=True)
        try:
            rows = con.execute(
                "SELECT name, text, tok_start, tok_end FROM plan_documents "
                "WHERE doc >= ? AND doc < ? ORDER BY doc", [doc_start, doc_end]).fetchall()
            if not rows:
                return []
            tracks = con.execute(
                "SELECT name, pos, value FROM plan_tracks WHERE pos >= ? AND pos < ? "
                "ORDER BY name, pos", [rows[0][2], rows[-1][3]]).fetchnumpy()
        finally:
            con.close()
        out = []
        names, pos, values = tracks["name"], tracks["pos"], tracks["value"]
        for name, text, a, b in rows:
            inside = (pos >= a) & (pos < b)
            doc_tracks = {}
            for track in sorted(set(names[inside])):
                sel = inside & (names == track)
                doc_tracks[str(track)] = np.asarray(values[sel], dtype=np.float64)
            out.append((name, text, doc_tracks))
        return out

    # --- committing ------------------------------------------------------------------------

    def add_segment(self, written: WrittenSegment, build_seconds: float) -> None:
        """List a written segment's files and FAISS indexes; mark it pending (one transaction)."""
        plan = written.plan
        with self.transaction() as con:
            ((state,),) = con.execute("SELECT state FROM segments WHERE segment = ?",
                                      [plan.number]).fetchall() or [("none",)]
            if state != "planned":
                raise BuildError(f"segment {plan.name} of {self.path} is {state}, not planned")
            list_files(con, written)
            con.execute("UPDATE segments SET state = 'pending', seconds = ? WHERE segment = ?",
                        [written.seconds, plan.number])
            set_meta(con, {"updated_at": now(), "build_seconds": f"{build_seconds:.3f}"})

    def publish(self, stats_file: Path | None, stats: dict[str, tuple[int, str, object]],
                build_seconds: float) -> int:
        """Make the pending segments live with the merged statistics; returns the new
        manifest version. The previous statistics file and the pending segments' partial
        statistics (merged into the new file) are removed after the commit."""
        old = [path for seg, path, *_ in self.live_files("stats") if seg is None]
        old += [path for _, path, *_ in self.live_files("partial")]
        with self.transaction() as con:
            ((version,),) = con.execute(
                "SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'manifest_version'"
            ).fetchall()
            for table in ("unit_stats", "unit_on", "unit_top"):
                con.execute(f"DELETE FROM {table}")  # table names are constants
            for layer, kind, s in stats.values():
                insert_unit_stats(con, layer, kind, s)
            con.execute("DELETE FROM files WHERE segment IS NULL AND kind = 'stats'")
            con.execute("DELETE FROM files WHERE kind = 'partial'")
            if stats_file is not None:
                add_file(con, None, str(stats_file.relative_to(self.path)), "stats", None,
                         stats_file)
            con.execute("UPDATE segments SET state = 'live', added_version = ? "
                        "WHERE state = 'pending'", [version])
            (n_tokens,) = con.execute("SELECT coalesce(max(tok_end), 0) FROM segments "
                                      "WHERE state = 'live'").fetchone()
            set_meta(con, {"status": STATUS_COMPLETE, "manifest_version": str(version),
                           "updated_at": now(), "build_seconds": f"{build_seconds:.3f}",
                           "n_tokens": str(n_tokens)})
        for rel in old:
            if stats_file is None or rel != str(stats_file.relative_to(self.path)):
                (self.path / rel).unlink(missing_ok=True)
        shutil.rmtree(self.path / BUILD_DIR, ignore_errors=True)
        return version

    def replace_segments(self, old: Sequence[int], written: WrittenSegment) -> int:
        """Retire live segments `old` and make `written` (their merge) live, atomically;
        returns the new manifest version."""
        plan = written.plan
        with self.transaction() as con:
            ((version,),) = con.execute(
                "SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'manifest_version'"
            ).fetchall()
            con.execute(
                "INSERT INTO segments VALUES (?, ?, ?, ?, ?, ?, 'live', ?, NULL, ?)",
                [plan.number, plan.name, plan.doc_start, plan.doc_end, plan.tok_start,
                 plan.tok_end, version, written.seconds])
            list_files(con, written)
            for number in old:
                con.execute("UPDATE segments SET state = 'retired', retired_version = ? "
                            "WHERE segment = ?", [version, number])
                con.execute("DELETE FROM files WHERE segment = ?", [number])
                con.execute("DELETE FROM faiss_indexes WHERE segment = ?", [number])
            set_meta(con, {"manifest_version": str(version), "updated_at": now(),
                           "next_segment": str(plan.number + 1)})
        return version

    def add_annotation(self, name: str, file: Path) -> int:
        """List an annotation track file (replacing the track's previous file) and raise the
        manifest version, in one transaction; returns the new version."""
        rel = str(file.relative_to(self.path))
        with self.transaction() as con:
            ((version,),) = con.execute(
                "SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'manifest_version'"
            ).fetchall()
            con.execute("DELETE FROM files WHERE kind = 'annotations' AND state = ?", [name])
            add_file(con, None, rel, "annotations", name, file)
            set_meta(con, {"manifest_version": str(version), "updated_at": now()})
        return version

    def remove_unlisted(self) -> list[str]:
        """Delete segment directories and files that no manifest row lists (left by a killed
        writer, retired by a compaction, or merged partial statistics whose removal a kill
        interrupted); returns what was removed."""
        listed = {name for (name,) in self.read(
            "SELECT name FROM segments WHERE state IN ('planned', 'pending', 'live')")}
        listed_files = {p for _, p, *_ in self.live_files()}
        removed = []
        segments = self.path / SEGMENTS_DIR
        if segments.is_dir():
            for child in sorted(segments.iterdir()):
                prefix = f"{SEGMENTS_DIR}/{child.name}/"
                if child.name not in listed or child.name.endswith(".tmp"):
                    shutil.rmtree(child, ignore_errors=True)
                    removed.append(str(child.relative_to(self.path)))
                elif not any(p.startswith(prefix) for p in listed_files):
                    shutil.rmtree(child, ignore_errors=True)  # written, never listed
                    removed.append(str(child.relative_to(self.path)))
                else:
                    for file in sorted(child.iterdir()):
                        if prefix + file.name not in listed_files:
                            file.unlink()
                            removed.append(prefix + file.name)
        for directory in (self.path / STATS_DIR, self.path / ANNOTATIONS_DIR,
                          self.path / CODEBOOKS_DIR):
            if not directory.is_dir():
                continue
            for child in sorted(directory.iterdir()):
                if str(child.relative_to(self.path)) not in listed_files:
                    child.unlink()
                    removed.append(str(child.relative_to(self.path)))
        return removed


def list_files(con: duckdb.DuckDBPyConnection, written: WrittenSegment) -> None:
    """The rows of a written segment's files and FAISS indexes (inside the caller's
    transaction)."""
    number = written.plan.number
    for f in written.files:
        con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                    [number, f.path, f.kind, f.state, f.bytes, f.sha256])
    for f in written.faiss:
        con.execute("INSERT INTO faiss_indexes VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [number, f.state, f.file, f.description, f.n_tokens, f.recall_at_10,
                     f.seconds])


def list_codebooks(con: duckdb.DuckDBPyConnection, root: Path, codebooks: dict[str, Path]) -> None:
    """List FAISS codebooks, state -> file (inside the caller's transaction)."""
    for state, file in sorted(codebooks.items()):
        add_file(con, None, str(Path(file).relative_to(root)), "codebook", state, Path(file))


def set_meta(con: duckdb.DuckDBPyConnection, values: dict[str, str]) -> None:
    """Insert or replace meta entries (inside the caller's transaction)."""
    for key, value in values.items():
        con.execute("DELETE FROM meta WHERE key = ?", [key])
        con.execute("INSERT INTO meta VALUES (?, ?)", [key, str(value)])


def add_file(con: duckdb.DuckDBPyConnection, segment: int | None, rel: str, kind: str,
             state: str | None, path: Path) -> None:
    """List one file with its size and checksum."""
    con.execute("DELETE FROM files WHERE path = ?", [rel])
    con.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?, ?)",
                [segment, rel, kind, state, path.stat().st_size, file_sha256(path)])


def stage_plan(path: Path, docs: Sequence[PlannedDoc], plans: Sequence[SegmentPlan]) -> None:
    """Write the planned documents and their token tracks to the private plan database."""
    first_doc, first_tok = plans[0].doc_start, plans[0].tok_start
    lengths = np.array([len(d) for d in docs], dtype=np.int64)
    tok_start = first_tok + np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    segment_of = np.empty(len(docs), dtype=np.int32)
    for p in plans:
        segment_of[p.doc_start - first_doc : p.doc_end - first_doc] = p.number
    con = duckdb.connect(str(path))
    con.execute("SET enable_progress_bar = false")  # the build reports its own progress
    try:
        for statement in PLAN_SCHEMA:
            con.execute(statement)
        con.register("new_docs", {
            "doc": np.arange(first_doc, first_doc + len(docs), dtype=np.int32),
            "segment": segment_of,
            "name": np.array([d.name for d in docs], dtype=object),
            "tok_start": tok_start,
            "tok_end": tok_start + lengths,
            "n_chars": np.array([len(d.text) for d in docs], dtype=np.int32),
            "text": np.array([d.text for d in docs], dtype=object),
        })
        con.execute("INSERT INTO plan_documents SELECT * FROM new_docs ORDER BY doc")
        for name in sorted({t for d in docs for t in d.tracks}):
            pos = [ts + np.arange(len(d)) for d, ts in zip(docs, tok_start, strict=True)
                   if name in d.tracks]
            val = [d.tracks[name] for d in docs if name in d.tracks]
            con.register("new_track", {"pos": np.concatenate(pos).astype(np.int64),
                                       "value": np.concatenate(val).astype(np.float64)})
            con.execute("INSERT INTO plan_tracks SELECT ?, pos, value FROM new_track ORDER BY pos",
                        [name])
            con.unregister("new_track")
        con.execute("CHECKPOINT")
    finally:
        con.close()


def insert_unit_stats(con: duckdb.DuckDBPyConnection, layer: int, kind: str, s) -> None:
    """Rows of unit_stats, unit_on and unit_top for one state (`s` is a `UnitStats`)."""
    dim = len(s.mean)
    units = np.arange(dim, dtype=np.int32)
    cols = {"unit": units, "mean": s.mean, "std": s.std, "min": s.min, "max": s.max}
    cols.update({c: s.quantiles[:, i] for i, c in enumerate(QUANTILE_COLUMNS)})
    con.register("new_stats", cols)
    con.execute(
        f"INSERT INTO unit_stats SELECT ?, ?, unit, mean, std, min, max, "
        f"{', '.join(QUANTILE_COLUMNS)} FROM new_stats ORDER BY unit",
        [layer, kind],
    )
    con.unregister("new_stats")
    n_thr = len(ON_THRESHOLDS)
    con.register("new_on", {
        "unit": np.repeat(units, n_thr),
        "threshold": np.tile(np.asarray(ON_THRESHOLDS, dtype=np.float64), dim),
        "fraction": s.on_fraction.reshape(-1),
    })
    con.execute("INSERT INTO unit_on SELECT ?, ?, unit, threshold, fraction FROM new_on "
                "ORDER BY unit, threshold", [layer, kind])
    con.unregister("new_on")
    k = s.top_pos.shape[1]
    for lowest, pos, value in ((False, s.top_pos, s.top_value), (True, s.bottom_pos, s.bottom_value)):
        con.register("new_top", {
            "unit": np.repeat(units, k),
            "rank": np.tile(np.arange(k, dtype=np.int32), dim),
            "pos": pos.reshape(-1),
            "value": value.reshape(-1),
        })
        con.execute("INSERT INTO unit_top SELECT ?, ?, unit, ?, rank, pos, value FROM new_top "
                    "ORDER BY unit, rank", [layer, kind, lowest])
        con.unregister("new_top")


def meta_for_model(model_file: Path, source: str, sha256: str, config: object,
                   tokenizer_json: str, tokenizer_kind: str) -> dict[str, str]:
    """Meta entries describing the model and tokenizer an index was built with."""
    import hashlib
    from dataclasses import asdict

    return {
        "format_version": str(FORMAT_VERSION),
        "model_file": MODEL_FILE,
        "model_source": source,
        "model_sha256": sha256,
        "model_config": json.dumps(asdict(config)),
        "tokenizer_kind": tokenizer_kind,
        "tokenizer_sha256": hashlib.sha256(tokenizer_json.encode()).hexdigest(),
        "model_bytes": str(model_file.stat().st_size),
        "created_at": now(),
        "build_seconds": "0",
        "updated_at": now(),
    }

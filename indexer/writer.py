"""Writing an index directory: the database side and the commit protocol.

A build is planned first (documents, their token-level tracks and the shard list go into
staging tables in one transaction), then committed shard by shard: the shard's states are
written into the state files and flushed, then one database transaction inserts the shard's
token, document and track rows and marks the shard committed. The committed token count in
the database is the only thing readers trust, so a kill at any moment leaves either the
previous shard boundary or the new one. The final step (statistics, top-K, FAISS) commits
last and marks the index complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import numpy as np

from lstmsearch.index import (
    DB_FILE,
    FAISS_DIR,
    MODEL_FILE,
    ON_THRESHOLDS,
    QUANTILE_COLUMNS,
    SCHEMA,
    STATES_DIR,
    STATUS_BUILDING,
    STATUS_COMPLETE,
    IndexOpenError,
    check_format,
)
from lstmsearch.store import StateStore, StateWriter, state_file_name


class BuildError(ValueError):
    """A build that cannot start or go on, with what to do about it."""


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
class Shard:
    """Whole documents [doc_start, doc_end) holding tokens [tok_start, tok_end)."""

    shard: int
    doc_start: int
    doc_end: int
    tok_start: int
    tok_end: int

    @property
    def n_tokens(self) -> int:
        return self.tok_end - self.tok_start


def now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def plan_shards(lengths: Sequence[int], shard_tokens: int, shard_docs: int, first_shard: int,
                first_doc: int, first_token: int) -> list[Shard]:
    """Group consecutive whole documents into shards of at least `shard_tokens` tokens and
    `shard_docs` documents (the last shard takes what is left)."""
    shards: list[Shard] = []
    doc, tok = first_doc, first_token
    start_doc, start_tok = doc, tok
    for length in lengths:
        doc, tok = doc + 1, tok + int(length)
        if tok - start_tok >= shard_tokens and doc - start_doc >= shard_docs:
            shards.append(Shard(first_shard + len(shards), start_doc, doc, start_tok, tok))
            start_doc, start_tok = doc, tok
    if doc > start_doc:
        shards.append(Shard(first_shard + len(shards), start_doc, doc, start_tok, tok))
    return shards


def copy_atomic(source: Path, target: Path) -> None:
    """Copy a file so that `target` is either absent or complete."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(target)


class IndexWriter:
    """Read-write access to an index directory while it is built or appended to."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection):
        self.path = path
        self.con = con

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def connect(cls, path: Path) -> IndexWriter:
        """Open the database of an existing index directory for writing."""
        try:
            con = duckdb.connect(str(path / DB_FILE))
        except duckdb.IOException as exc:
            if "lock" in str(exc).lower():
                raise BuildError(
                    f"index {path} is in use by another process; close it (or wait for the "
                    "other indexer to finish) and try again"
                ) from exc
            raise BuildError(f"cannot open index {path}: {exc}") from exc
        except duckdb.ConnectionException as exc:
            raise BuildError(
                f"index {path} is open for reading in this process; close it (Index.close()) "
                "before writing to it"
            ) from exc
        except duckdb.Error as exc:
            raise BuildError(f"index {path} has a corrupted database: {exc}") from exc
        return cls(path, con)

    @classmethod
    def create(cls, path: Path, meta: dict[str, str], states: Sequence[tuple[str, int, str, int]],
               vocab: Sequence[str]) -> IndexWriter:
        """Create the directory, schema, meta, layers and vocab in one transaction."""
        (path / STATES_DIR).mkdir(parents=True, exist_ok=True)
        (path / FAISS_DIR).mkdir(exist_ok=True)
        writer = cls.connect(path)
        con = writer.con
        con.execute("BEGIN TRANSACTION")
        for statement in SCHEMA:
            con.execute(statement)
        writer.set_meta(meta)
        for seq, (name, layer, kind, dim) in enumerate(states):
            con.execute(
                "INSERT INTO layers VALUES (?, ?, ?, ?, ?, 'float16', ?)",
                [name, seq, layer, kind, dim, f"{STATES_DIR}/{state_file_name(name)}"],
            )
        con.register("new_vocab", {
            "token_id": np.arange(len(vocab), dtype=np.int32),
            "text": np.array(list(vocab), dtype=object),
        })
        con.execute("INSERT INTO vocab SELECT token_id, text FROM new_vocab ORDER BY token_id")
        con.unregister("new_vocab")
        con.execute("COMMIT")
        return writer

    def close(self) -> None:
        """Fold the write-ahead log into the database file and close it."""
        if self.con is not None:
            self.con.execute("CHECKPOINT")
            self.con.close()
            self.con = None

    def abort(self) -> None:
        """Close without checkpointing (after an error)."""
        if self.con is not None:
            self.con.close()
            self.con = None

    # --- reading back ----------------------------------------------------------------------

    def has_schema(self) -> bool:
        """Whether the schema transaction committed (it did not when killed before)."""
        (n,) = self.con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'meta'"
        ).fetchone()
        return bool(n)

    def meta(self) -> dict[str, str]:
        """The meta table, after checking the format version."""
        meta = dict(self.con.execute("SELECT key, value FROM meta").fetchall())
        try:
            check_format(meta, self.path)
        except IndexOpenError as exc:
            raise BuildError(str(exc)) from exc
        return meta

    def set_meta(self, values: dict[str, str]) -> None:
        """Insert or replace meta entries (inside the caller's transaction)."""
        for key, value in values.items():
            self.con.execute("DELETE FROM meta WHERE key = ?", [key])
            self.con.execute("INSERT INTO meta VALUES (?, ?)", [key, str(value)])

    def states(self) -> list[tuple[str, int, str, int]]:
        """(name, layer, kind, dim) of every stored state, in layer order."""
        return [
            (n, int(lay), k, int(d))
            for n, lay, k, d in self.con.execute(
                "SELECT name, layer, kind, dim FROM layers ORDER BY seq"
            ).fetchall()
        ]

    def shards(self) -> list[tuple[Shard, bool]]:
        """Every planned shard and whether it is committed."""
        rows = self.con.execute(
            "SELECT shard, doc_start, doc_end, tok_start, tok_end, committed FROM shards "
            "ORDER BY shard"
        ).fetchall()
        return [(Shard(*map(int, row[:5])), bool(row[5])) for row in rows]

    def committed_tokens(self) -> int:
        """Tokens of the committed shards."""
        (n,) = self.con.execute(
            "SELECT coalesce(max(tok_end), 0) FROM shards WHERE committed"
        ).fetchone()
        return int(n)

    def committed_docs(self) -> int:
        """Documents of the committed shards."""
        (n,) = self.con.execute(
            "SELECT coalesce(max(doc_end), 0) FROM shards WHERE committed"
        ).fetchone()
        return int(n)

    def planned_documents(self, doc_start: int, doc_end: int) -> list[tuple[str, str]]:
        """(name, text) of planned documents [doc_start, doc_end), in order."""
        return self.con.execute(
            "SELECT name, text FROM plan_documents WHERE doc >= ? AND doc < ? ORDER BY doc",
            [doc_start, doc_end],
        ).fetchall()

    # --- planning --------------------------------------------------------------------------

    def plan(self, docs: Sequence[PlannedDoc], shards: Sequence[Shard], meta: dict[str, str]) -> None:
        """Stage the documents, their tracks and the shard list; mark the index building."""
        con = self.con
        first_doc, first_tok = shards[0].doc_start, shards[0].tok_start
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        tok_start = first_tok + np.concatenate([[0], np.cumsum(lengths)[:-1]])
        shard_of = np.empty(len(docs), dtype=np.int32)
        for s in shards:
            shard_of[s.doc_start - first_doc : s.doc_end - first_doc] = s.shard
        con.execute("BEGIN TRANSACTION")
        con.register("new_docs", {
            "doc": np.arange(first_doc, first_doc + len(docs), dtype=np.int32),
            "shard": shard_of,
            "name": np.array([d.name for d in docs], dtype=object),
            "tok_start": tok_start,
            "tok_end": tok_start + lengths,
            "n_chars": np.array([len(d.text) for d in docs], dtype=np.int32),
            "text": np.array([d.text for d in docs], dtype=object),
        })
        con.execute("INSERT INTO plan_documents SELECT doc, shard, name, tok_start, tok_end, "
                    "n_chars, text FROM new_docs ORDER BY doc")
        con.unregister("new_docs")
        for name in sorted({t for d in docs for t in d.tracks}):
            pos = [ts + np.arange(len(d)) for d, ts in zip(docs, tok_start, strict=True)
                   if name in d.tracks]
            val = [d.tracks[name] for d in docs if name in d.tracks]
            con.register("new_track", {
                "pos": np.concatenate(pos).astype(np.int64),
                "value": np.concatenate(val).astype(np.float64),
            })
            con.execute("INSERT INTO plan_tracks SELECT ?, pos, value FROM new_track ORDER BY pos",
                        [name])
            con.unregister("new_track")
        for s in shards:
            con.execute("INSERT INTO shards VALUES (?, ?, ?, ?, ?, false, NULL)",
                        [s.shard, s.doc_start, s.doc_end, s.tok_start, s.tok_end])
        self.set_meta({**meta, "status": STATUS_BUILDING, "updated_at": now()})
        con.execute("COMMIT")

    # --- state files -----------------------------------------------------------------------

    def state_writers(self, capacity: int) -> dict[str, StateWriter]:
        """A writer per state file with room for `capacity` tokens (created or grown)."""
        keep = self.committed_tokens()
        return {
            name: StateWriter.ensure(self.path / STATES_DIR / state_file_name(name), dim,
                                     capacity, keep)
            for name, _, _, dim in self.states()
        }

    def state_stores(self) -> dict[str, StateStore]:
        """Read views of the committed states."""
        n = self.committed_tokens()
        return {
            name: StateStore(self.path / STATES_DIR / state_file_name(name), name, layer, kind,
                             dim, n)
            for name, layer, kind, dim in self.states()
        }

    # --- committing ------------------------------------------------------------------------

    def commit_shard(self, shard: Shard, docs: Sequence[PlannedDoc], seconds: float,
                     build_seconds: float, tracks: dict[str, np.ndarray] | None = None) -> None:
        """Insert the shard's tokens, documents and tracks and mark it committed, atomically.

        The caller has written and flushed the shard's states before. `tracks` are computed
        ones (the model's surprisal): one value per token of the shard, NaN for none.
        """
        con = self.con
        lengths = np.array([len(d) for d in docs], dtype=np.int64)
        n = int(lengths.sum())
        if n != shard.n_tokens:
            raise BuildError(
                f"shard {shard.shard} of {self.path} was planned with {shard.n_tokens} tokens but "
                f"its documents tokenize to {n}: the tokenizer changed; rebuild the index"
            )
        doc_ids = np.repeat(np.arange(shard.doc_start, shard.doc_end, dtype=np.int32), lengths)
        doc_first = np.repeat(np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
        cols = {
            "pos": np.arange(shard.tok_start, shard.tok_end, dtype=np.int64),
            "doc": doc_ids,
            "pos_in_doc": (np.arange(n) - doc_first).astype(np.int32),
            "token_id": np.concatenate([d.ids for d in docs]).astype(np.int32),
            "char_start": np.concatenate([d.starts for d in docs]).astype(np.int32),
            "char_end": np.concatenate([d.ends for d in docs]).astype(np.int32),
        }
        con.execute("BEGIN TRANSACTION")
        con.register("shard_tokens", cols)
        con.execute(
            "INSERT INTO tokens SELECT s.pos, s.doc, s.pos_in_doc, s.token_id, "
            "substr(d.text, s.char_start + 1, s.char_end - s.char_start), s.char_start, s.char_end "
            "FROM shard_tokens s JOIN plan_documents d ON d.doc = s.doc ORDER BY s.pos"
        )
        con.unregister("shard_tokens")
        con.execute(
            "INSERT INTO documents SELECT doc, name, tok_start, tok_end, n_chars, text "
            "FROM plan_documents WHERE doc >= ? AND doc < ? ORDER BY doc",
            [shard.doc_start, shard.doc_end],
        )
        con.execute(
            "INSERT INTO tracks SELECT name, pos, value, NULL FROM plan_tracks "
            "WHERE pos >= ? AND pos < ? ORDER BY name, pos",
            [shard.tok_start, shard.tok_end],
        )
        for name, values in (tracks or {}).items():
            values = np.asarray(values, dtype=np.float64)
            if len(values) != n:
                raise BuildError(f"track {name!r} of shard {shard.shard} has {len(values)} "
                                 f"values for {n} tokens")
            keep = np.flatnonzero(np.isfinite(values))
            con.register("new_track", {"pos": shard.tok_start + keep, "value": values[keep]})
            con.execute("INSERT INTO tracks SELECT ?, pos, value, NULL FROM new_track ORDER BY pos",
                        [name])
            con.unregister("new_track")
        con.execute("UPDATE shards SET committed = true, seconds = ? WHERE shard = ?",
                    [seconds, shard.shard])
        self.set_meta({"updated_at": now(), "build_seconds": f"{build_seconds:.3f}"})
        con.execute("COMMIT")

    def finalize(self, stats: dict[str, tuple[int, str, object]],
                 faiss_rows: Sequence[tuple], build_seconds: float) -> None:
        """Replace statistics, top-K and FAISS rows, drop the staging rows, mark complete."""
        con = self.con
        con.execute("BEGIN TRANSACTION")
        for table in ("unit_stats", "unit_on", "unit_top", "faiss_indexes",
                      "plan_documents", "plan_tracks"):
            con.execute(f"DELETE FROM {table}")  # table names are constants, not user input
        for layer, kind, s in stats.values():
            insert_unit_stats(con, layer, kind, s)
        for row in faiss_rows:
            con.execute("INSERT INTO faiss_indexes VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(row))
        self.set_meta({"status": STATUS_COMPLETE, "updated_at": now(),
                       "build_seconds": f"{build_seconds:.3f}",
                       "n_tokens": str(self.committed_tokens())})
        con.execute("COMMIT")


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

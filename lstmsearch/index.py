"""An index directory, read side: `open_index(path) -> Index`.

Layout of an index directory (format version 2):

    index.duckdb            meta, layers, vocab, the manifest (segments, files with sizes and
                            sha256), merged unit statistics, top-K, FAISS descriptions
    segments/seg-000003/    one immutable segment: whole documents and their tokens
        rows.duckdb         documents, tokens and tracks (global positions)
        layers.1.c.f16      unit-major float16 columns of one (layer, kind), see store.py
        layers.1.c.faiss    FAISS index over the segment's states of one (layer, kind):
                            compressed codes (re-ranked on the states) or exact fp16
        checksums.npz       CRC-32 of every unit's column (stats.npz in older indexes)
        partial.npz         the segment's partial unit statistics, until they are merged
    stats/stats-v7.npz      the index-wide statistics merged from the segments' partials
    codebooks/layers.1.c.faiss  the trained product quantiser every segment's codes use
    annotations/track-000009.duckdb   a track added after the build (`lstmsearch annotate`)
    model.pt                copy of the model checkpoint the states came from
    write.lock              held by the one writer (build, append, annotate, compact)

Writers add segments beside the old ones and publish them by one transaction that raises
the manifest version (`indexer.writer`). An `Index` is a snapshot: it reads the manifest
once, copies the small tables into an in-memory database, attaches the listed segments'
row files read-only and maps their state files, so a concurrent append or compaction never
changes what it answers (files it holds stay readable after a compaction removes them).

An index is complete once its build's final step committed. `open_index` refuses an
incomplete index with a message pointing at `--resume`, unless `allow_partial=True`, which
serves the segments written so far (statistics then describe the last completed build).

Everything here is read-only: the snapshot database has file access from SQL switched off,
and `Index.sql` accepts only a single SELECT (or EXPLAIN of one).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from lstmsearch.kernels import run_tasks
from lstmsearch.limits import MAX_SQL_ROWS, SQL_BATCH_ROWS
from lstmsearch.models import file_sha256
from lstmsearch.spans import check_count
from lstmsearch.store import CorruptStoreError, StateStore

if TYPE_CHECKING:
    from lstmsearch.nearest import Neighbor
    from lstmsearch.neurons import Neurons
    from lstmsearch.query import MatchResult, Pattern
    from lstmsearch.spans import Span

FORMAT_VERSION = 2
DB_FILE = "index.duckdb"
SEGMENTS_DIR = "segments"
STATS_DIR = "stats"
ANNOTATIONS_DIR = "annotations"
MODEL_FILE = "model.pt"
SEGMENT_ROWS = "rows.duckdb"
SEGMENT_CHECKSUMS = "checksums.npz"
SEGMENT_PARTIAL = "partial.npz"
SEGMENT_STATS = "stats.npz"
"""What older format-2 segments hold instead of checksums.npz and partial.npz."""
CODEBOOKS_DIR = "codebooks"
CHECKSUM_SUFFIX = "/column_crc32"
SURPRISAL_TRACK = "surprisal"
"""The track in which an index stores each token's surprisal under its model (nats)."""

STATUS_BUILDING = "building"
STATUS_COMPLETE = "complete"
OPEN_WAIT = 30.0
"""Seconds to wait for a writer that holds the database for one short commit."""

TOP_K = 100
ON_THRESHOLDS = tuple(round(t / 10, 1) for t in range(-9, 10))
"""Thresholds of the `unit_on` table: fraction of tokens with value >= threshold."""
QUANTILES = (0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99)
QUANTILE_COLUMNS = tuple(f"q{round(q * 100):02d}" for q in QUANTILES)

SCHEMA = [
    """CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)""",
    """CREATE TABLE layers (
        name VARCHAR PRIMARY KEY, seq INTEGER, layer INTEGER, kind VARCHAR, dim INTEGER,
        dtype VARCHAR)""",
    """CREATE TABLE vocab (token_id INTEGER, text VARCHAR)""",
    # the manifest: every segment ever planned (state planned, pending, live or retired) and
    # the files of the live and pending ones (segment NULL: files of the whole index)
    """CREATE TABLE segments (
        segment INTEGER, name VARCHAR, doc_start INTEGER, doc_end INTEGER,
        tok_start BIGINT, tok_end BIGINT, state VARCHAR, added_version INTEGER,
        retired_version INTEGER, seconds DOUBLE)""",
    """CREATE TABLE files (
        segment INTEGER, path VARCHAR, kind VARCHAR, state VARCHAR, bytes BIGINT,
        sha256 VARCHAR)""",
    """CREATE TABLE faiss_indexes (
        segment INTEGER, name VARCHAR, file VARCHAR, description VARCHAR, n_tokens BIGINT,
        recall_at_10 DOUBLE, seconds DOUBLE)""",
    f"""CREATE TABLE unit_stats (
        layer INTEGER, kind VARCHAR, unit INTEGER, mean DOUBLE, std DOUBLE,
        min REAL, max REAL, {", ".join(f"{c} REAL" for c in QUANTILE_COLUMNS)})""",
    """CREATE TABLE unit_on (
        layer INTEGER, kind VARCHAR, unit INTEGER, threshold DOUBLE, fraction DOUBLE)""",
    """CREATE TABLE unit_top (
        layer INTEGER, kind VARCHAR, unit INTEGER, lowest BOOLEAN, rank INTEGER,
        pos BIGINT, value REAL)""",
]
SNAPSHOT_TABLES = ("meta", "layers", "vocab", "segments", "files", "faiss_indexes",
                   "unit_stats", "unit_on", "unit_top")
"""Tables an `Index` copies from the database when it opens (all small)."""
ROW_TABLES = {
    "documents": "doc, name, tok_start, tok_end, n_chars, text",
    "tokens": "pos, doc, pos_in_doc, token_id, text, char_start, char_end",
    "tracks": "name, pos, value, label",
}
"""Tables of a segment's row file, and their columns (views over all segments)."""
TOP_TOKENS_VIEW = """CREATE VIEW unit_top_tokens AS
    SELECT u.layer, u.kind, u.unit, u.lowest, u.rank, u.pos, u.value,
           t.doc, t.pos_in_doc, t.text AS token,
           substr(d.text, greatest(t.char_start - 40, 0) + 1,
                  t.char_start - greatest(t.char_start - 40, 0)) AS before,
           substr(d.text, t.char_end + 1, 40) AS after
    FROM unit_top u JOIN tokens t USING (pos) JOIN documents d ON d.doc = t.doc"""
"""A top activation with its token, document and 40 characters of context either side."""


EMPTY_ROWS = {
    "documents": "SELECT 0::INTEGER AS doc, ''::VARCHAR AS name, 0::BIGINT AS tok_start, "
                 "0::BIGINT AS tok_end, 0::INTEGER AS n_chars, ''::VARCHAR AS text",
    "tokens": "SELECT 0::BIGINT AS pos, 0::INTEGER AS doc, 0::INTEGER AS pos_in_doc, "
              "0::INTEGER AS token_id, ''::VARCHAR AS text, 0::INTEGER AS char_start, "
              "0::INTEGER AS char_end",
    "tracks": "SELECT ''::VARCHAR AS name, 0::BIGINT AS pos, 0::DOUBLE AS value, "
              "''::VARCHAR AS label",
}
"""Typed empty rows, for the views of an index without segments."""
SMALL_FILE_KINDS = ("stats", "checksums", "codebook", "model")
SMALL_FILE_BYTES = 1 << 22
"""Files checked against their sha256 at every open: these kinds, and any file this small."""
HASH_BLOCK = 1 << 22


@dataclass(frozen=True)
class IndexFile:
    """A file the manifest lists: path relative to the index, recorded size and sha256."""

    segment: int | None
    path: str
    kind: str
    state: str | None
    bytes: int
    sha256: str

    def check_size(self, root: Path) -> None:
        """Refuse a missing or resized file, naming it."""
        path = root / self.path
        if not path.is_file():
            raise DamagedFileError(f"index {root} is damaged: {self.path} is missing")
        size = path.stat().st_size
        if size != self.bytes:
            raise DamagedFileError(
                f"index {root} is damaged: {self.path} has {size:,} bytes, the manifest "
                f"records {self.bytes:,} (truncated or overwritten); rebuild the index"
            )

    def check_sum(self, root: Path) -> None:
        """Refuse a file whose content is not what was committed, naming it."""
        self.check_size(root)
        if file_sha256(root / self.path) != self.sha256:
            raise DamagedFileError(
                f"index {root} is damaged: {self.path} does not match its recorded sha256 "
                "(changed on disk); rebuild the index"
            )


@dataclass(frozen=True)
class FaissIndexes:
    """The FAISS indexes of one state, loaded and checked: one per segment, in position
    order, each with the global position of its segment's first token. When every part is
    exact (fp16 codes, an exhaustive search) they are also `joined` into one index whose ids
    are global positions, so a search costs what one segment's does."""

    starts: tuple[int, ...]
    parts: tuple[Any, ...]
    joined: Any | None

    @property
    def compressed(self) -> tuple[bool, ...]:
        """Per part: compressed codes (to be re-ranked on the stored states) or exact."""
        import faiss

        return tuple(isinstance(p, faiss.IndexPQFastScan) for p in self.parts)


def join_exact(parts: Sequence[Any]) -> Any | None:
    """Exhaustive fp16 indexes joined into one (their codes concatenated in position order),
    or None when any part is of another kind."""
    import faiss

    if not parts or not all(
            isinstance(p, faiss.IndexScalarQuantizer)
            and p.sq.qtype == faiss.ScalarQuantizer.QT_fp16
            and p.metric_type == faiss.METRIC_L2 for p in parts):
        return None
    if len(parts) == 1:
        return parts[0]
    joined = faiss.IndexScalarQuantizer(parts[0].d, faiss.ScalarQuantizer.QT_fp16,
                                        faiss.METRIC_L2)
    codes = np.concatenate([faiss.vector_to_array(p.codes) for p in parts])
    faiss.copy_array_to_vector(codes, joined.codes)
    joined.ntotal = sum(p.ntotal for p in parts)
    return joined


def sql_path(path: Path) -> str:
    """A path as the body of a SQL string literal (quotes doubled); our own paths only."""
    return str(path).replace("'", "''")


def segment_file(state: str, kind: str) -> str:
    """File name of a state's columns (`layers.1.c.f16`) or FAISS index in a segment."""
    return f"{state}.f16" if kind == "states" else f"{state}.faiss"


@dataclass(frozen=True)
class SegmentInfo:
    """One live segment of a snapshot: its documents and tokens, and its files' bytes."""

    segment: int
    name: str
    doc_start: int
    doc_end: int
    tok_start: int
    tok_end: int
    bytes: int

    @property
    def n_tokens(self) -> int:
        return self.tok_end - self.tok_start


class IndexOpenError(ValueError):
    """An index that cannot be served: missing, corrupted, unknown version or incomplete."""


class FormatVersionError(IndexOpenError):
    """An index written in a format this version of lstmsearch does not read."""


class IncompleteIndexError(IndexOpenError):
    """An index whose build was interrupted (or is still running)."""


class DamagedFileError(IndexOpenError):
    """A file of an index that is missing, or whose size or checksum is not the recorded one."""


class SqlRefusedError(ValueError):
    """SQL that is not a single read-only query."""


@dataclass(frozen=True)
class StateInfo:
    """One stored (layer, kind): its name, and number of units."""

    name: str
    layer: int
    kind: str
    dim: int


@dataclass(frozen=True)
class DocumentInfo:
    """One document: tokens [start, end) in global positions, and its length in characters."""

    doc: int
    name: str
    start: int
    end: int
    n_chars: int


@dataclass(frozen=True)
class Tokens:
    """The tokens of a span, column by column (arrays of equal length)."""

    pos: np.ndarray
    doc: np.ndarray
    pos_in_doc: np.ndarray
    token_id: np.ndarray
    char_start: np.ndarray
    char_end: np.ndarray
    text: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.pos)


@dataclass(frozen=True)
class SqlResult:
    """Rows of a read-only query, with the column names; `truncated` when the query had more
    rows than were asked for (see `Index.sql`)."""

    columns: tuple[str, ...]
    rows: list[tuple]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.rows)

    def column(self, name: str) -> list:
        """All values of one column."""
        if name not in self.columns:
            raise KeyError(f"no column {name!r} in the result; columns: {', '.join(self.columns)}")
        i = self.columns.index(name)
        return [row[i] for row in self.rows]

    def to_dicts(self) -> list[dict[str, Any]]:
        """One dict per row (for JSON output)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


@dataclass(frozen=True)
class IndexInfo:
    """What `lstmsearch info` reports about an index."""

    path: str
    format_version: int
    status: str
    n_docs: int
    n_tokens: int
    manifest_version: int
    segments: tuple[dict[str, Any], ...]  # name, documents, tokens, bytes of each live segment
    states: tuple[StateInfo, ...]
    sizes: dict[str, int]
    model: dict[str, Any]
    tokenizer: str
    corpus: str
    created_at: str
    updated_at: str
    build_seconds: float
    faiss: tuple[dict[str, Any], ...]
    tracks: tuple[dict[str, Any], ...] = ()  # name, values, labels, mean (NaN: label track)

    @property
    def bytes_per_token_unit(self) -> float:
        """State-file bytes per token per unit per stored kind (2: float16)."""
        units = sum(s.dim for s in self.states)
        return self.sizes["states"] / max(1, units * self.n_tokens)

    @property
    def total_bytes_per_token_unit(self) -> float:
        """Bytes of every file of the index per token per unit per stored kind (target
        <= 2.25: the float16 states and everything else)."""
        units = sum(s.dim for s in self.states)
        return self.sizes["total"] / max(1, units * self.n_tokens)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data = asdict(self)
        data["bytes_per_token_unit"] = self.bytes_per_token_unit
        data["total_bytes_per_token_unit"] = self.total_bytes_per_token_unit
        return data

    def summary(self) -> str:
        """Human-readable report, one fact per line."""
        model = self.model
        lines = [
            f"index        {self.path}",
            f"status       {self.status}"
            + ("" if self.status == STATUS_COMPLETE else " (build interrupted or running: "
               "the segments written so far are shown)"),
            f"format       version {self.format_version}, manifest version "
            f"{self.manifest_version}",
            f"segments     {len(self.segments)}"
            + (f" ({segment_summary(self.segments)})" if self.segments else ""),
            f"corpus       {self.corpus}",
            f"documents    {self.n_docs:,}",
            f"tokens       {self.n_tokens:,}",
            f"model        {model.get('arch')} {model.get('layers')}x{model.get('hidden')}"
            f"{' bidirectional' if model.get('bidirectional') else ''}, "
            f"vocab {model.get('vocab_size')}, tokenizer {self.tokenizer}",
            f"model file   {model.get('file')} (sha256 {str(model.get('sha256'))[:16]}..., "
            f"from {model.get('source')})",
            "states       "
            + ", ".join(f"{s.name} ({s.dim})" for s in self.states)
            + f"; float16, {self.bytes_per_token_unit:.2f} bytes/token/unit",
        ]
        for f in self.faiss:
            measured = (f" (lowest of the {f['measured']} segments measured)"
                        if f["segments"] > 1 and f["measured"] else "")
            lines.append(f"faiss        {f['name']}: {f['description']}, recall@10 "
                         f"{f['recall_at_10']:.3f}{measured}")
        for t in self.tracks:
            lines.append(f"track        {track_summary(t)}")
        lines.append(
            "disk         "
            + ", ".join(f"{k} {human_bytes(v)}" for k, v in self.sizes.items() if k != "total")
            + f"; total {human_bytes(self.sizes['total'])}, "
            f"{self.total_bytes_per_token_unit:.2f} bytes/token/unit with every file"
        )
        lines.append(
            f"built        {self.created_at} (last change {self.updated_at}), "
            f"{self.build_seconds:.1f} s"
        )
        return "\n".join(lines)


def segment_summary(segments: Sequence[dict[str, Any]]) -> str:
    """Tokens per segment (smallest, largest) and their bytes on disk."""
    sizes = [s["tokens"] for s in segments]
    return (f"{min(sizes):,} to {max(sizes):,} tokens each, "
            f"{human_bytes(sum(s['bytes'] for s in segments))}")


def track_summary(track: dict[str, Any]) -> str:
    """One line about a track: how many tokens it covers and its mean (the perplexity for
    the model's stored surprisal)."""
    name = track["name"]
    if track["labels"]:
        return f"{name}: {track['labels']:,} labelled tokens"
    text = f"{name}: {track['values']:,} tokens, mean {track['mean']:.4g}"
    if name == SURPRISAL_TRACK and track["values"]:
        text += f" nats (perplexity {math.exp(track['mean']):.4g}; none at document starts)"
    return text


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def dir_size(path: Path) -> int:
    """Bytes on disk of the regular files below `path` (allocated blocks, so sparse is small)."""
    if not path.exists():
        return 0
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(min(p.stat().st_size, p.stat().st_blocks * 512) for p in files)


def check_format(meta: dict[str, str], where: Path) -> None:
    """Refuse an index of an unknown format version; name the command that converts an
    index of the previous format."""
    found = meta.get("format_version")
    if found is None:
        raise IndexOpenError(f"{where} is not an lstmsearch index: it has no format version")
    if found == "1":
        raise FormatVersionError(
            f"index {where} has format version 1 (one monolithic store); this lstmsearch reads "
            f"version {FORMAT_VERSION} (segments): convert it with `lstmsearch upgrade {where}`"
        )
    if found != str(FORMAT_VERSION):
        raise FormatVersionError(
            f"index {where} has format version {found}, but this lstmsearch reads version "
            f"{FORMAT_VERSION}: rebuild it with `lstmsearch index` (or use a matching lstmsearch)"
        )


def damaged(path: Path, exc: BaseException) -> IndexOpenError:
    """The error for a database file that DuckDB cannot read."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return IndexOpenError(
        f"index {path.parent} is damaged: its database {path.name} cannot be read ({first}); "
        f"rebuild the index, or finish an interrupted build with "
        f"`lstmsearch index --resume {path.parent}`"
    )


def read_snapshot(db_path: Path, wait: float = OPEN_WAIT) -> dict[str, dict[str, np.ndarray]]:
    """The small tables of the index database, read in one transaction (a snapshot).

    The file is held only for this read; while a writer holds it for a commit, wait.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            con = duckdb.connect(str(db_path), read_only=True)
            break
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise damaged(db_path, exc) from exc
            if time.monotonic() > deadline:
                raise IndexOpenError(
                    f"index {db_path.parent} is held by a writer for more than {wait:.0f} s; "
                    "try again when it has finished"
                ) from exc
            time.sleep(0.05)
        except duckdb.ConnectionException as exc:
            raise IndexOpenError(
                f"index {db_path.parent} is being written by this process; open it when the "
                "writing has finished"
            ) from exc
        except duckdb.Error as exc:
            raise damaged(db_path, exc) from exc
    try:
        tables = {n for (n,) in con.execute(
            "SELECT table_name FROM duckdb_tables()").fetchall()}
        if "meta" not in tables:
            raise IndexOpenError(
                f"{db_path.parent} is not an lstmsearch index, or its database is half-written "
                "(no meta table)"
            )
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        check_format(meta, db_path.parent)
        con.execute("BEGIN TRANSACTION")
        out = {name: con.execute(f"SELECT * FROM {name}").fetchnumpy()  # constant names
               for name in SNAPSHOT_TABLES}
        con.execute("COMMIT")
        return out
    except IndexOpenError:
        raise
    except duckdb.Error as exc:
        raise damaged(db_path, exc) from exc
    finally:
        con.close()


def parse_state(layer: int | str, kind: str | None) -> tuple[int, str]:
    """(layer, kind) from either (1, "c") or ("layers.1.c", None)."""
    if isinstance(layer, str):
        parts = layer.split(".")
        if kind is not None or len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit():
            raise ValueError(
                f"bad state {layer!r}{'' if kind is None else f', {kind!r}'}: "
                "give a name like 'layers.1.c' or a layer number and a kind"
            )
        return int(parts[1]), parts[2]
    if kind is None:
        raise ValueError(f"layer {layer} given without a kind: say which state, e.g. (1, 'c')")
    return int(layer), kind


def open_index(path: str | Path, *, allow_partial: bool = False, check_files: bool = True
               ) -> Index:
    """Open an index directory for reading; refuse a corrupted, unknown or incomplete one.

    `check_files=False` skips the size and checksum checks of the listed files (for
    `Index.verify`, which reports every damaged file instead of refusing the first).
    """
    return Index(path, allow_partial=allow_partial, check_files=check_files)


class Index:
    """A read-only index: documents, tokens, stored states, statistics, FAISS, SQL.

    Safe to share between threads: database access is serialised by a lock, state columns
    are read-only memory maps.
    """

    def __init__(self, path: str | Path, *, allow_partial: bool = False,
                 check_files: bool = True):
        self.path = Path(path)
        db_path = self.path / DB_FILE
        if not self.path.is_dir():
            raise IndexOpenError(f"no index at {self.path}: not a directory")
        if not db_path.is_file():
            raise IndexOpenError(
                f"{self.path} is not an lstmsearch index (no {DB_FILE}); "
                "build one with `lstmsearch index CORPUS --model MODEL.pt --out DIR`"
            )
        self._lock = threading.RLock()
        self._con = None
        self._load(allow_partial, check_files)
        self._offsets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._texts: OrderedDict[int, str] = OrderedDict()
        self._faiss: dict[str, FaissIndexes] = {}
        self._register_functions()

    # --- opening ---------------------------------------------------------------------------

    def _load(self, allow_partial: bool, check_files: bool = True) -> None:
        """Read the manifest snapshot; check and map the files it lists."""
        tables = read_snapshot(self.path / DB_FILE)
        meta = tables["meta"]
        self.meta: dict[str, str] = dict(zip(meta["key"], meta["value"], strict=True))
        self.status = self.meta.get("status", STATUS_BUILDING)
        self.manifest_version = int(self.meta.get("manifest_version", 0))
        if self.status != STATUS_COMPLETE and not allow_partial:
            raise IncompleteIndexError(
                f"index {self.path} is incomplete: its build was interrupted or is still "
                f"running. Finish it with `lstmsearch index --resume {self.path}`, or open it "
                "with allow_partial=True to use the segments written so far"
            )
        shown = ("live", "pending") if allow_partial else ("live",)
        seg = tables["segments"]
        keep = np.isin(seg["state"].astype(str), shown)
        order = np.argsort(seg["tok_start"][keep], kind="stable")
        files = tables["files"]
        file_rows = list(zip(files["segment"].tolist(), files["path"].tolist(),
                             files["kind"].tolist(), files["state"].tolist(),
                             files["bytes"].tolist(), files["sha256"].tolist(), strict=True))
        bytes_of: dict[int, int] = {}
        for segment, _, _, _, size, _ in file_rows:
            if segment is not None:
                bytes_of[int(segment)] = bytes_of.get(int(segment), 0) + int(size)
        self.segments = tuple(
            SegmentInfo(int(seg["segment"][keep][i]), str(seg["name"][keep][i]),
                        int(seg["doc_start"][keep][i]), int(seg["doc_end"][keep][i]),
                        int(seg["tok_start"][keep][i]), int(seg["tok_end"][keep][i]),
                        bytes_of.get(int(seg["segment"][keep][i]), 0))
            for i in order
        )
        live = {s.segment for s in self.segments}
        self.files = tuple(
            IndexFile(segment, path, kind, state, int(size), sha)
            for segment, path, kind, state, size, sha in file_rows
            if segment is None or int(segment) in live
        )
        expected_doc, expected_tok = 0, 0
        for s in self.segments:
            if (s.doc_start, s.tok_start) != (expected_doc, expected_tok):
                raise IndexOpenError(
                    f"index {self.path} is damaged: segment {s.name} starts at document "
                    f"{s.doc_start}, token {s.tok_start}, but the segments before it end at "
                    f"document {expected_doc}, token {expected_tok}"
                )
            expected_doc, expected_tok = s.doc_end, s.tok_end
        self.n_tokens = expected_tok
        for f in self.files if check_files else ():
            if f.kind == "model" and not (self.path / f.path).exists():
                continue  # queries need no model; what runs it says that it is missing
            f.check_size(self.path)
            if f.kind in SMALL_FILE_KINDS or f.bytes <= SMALL_FILE_BYTES:
                f.check_sum(self.path)
        layers = tables["layers"]
        order = np.argsort(layers["seq"], kind="stable")
        self.state_infos = tuple(
            StateInfo(str(layers["name"][i]), int(layers["layer"][i]), str(layers["kind"][i]),
                      int(layers["dim"][i]))
            for i in order
        )
        by_path = {f.path: f for f in self.files}
        checksums = {s.segment: self._column_checksums(s) for s in self.segments}
        self._stores: dict[str, StateStore] = {}
        for info in self.state_infos:
            parts = []
            for s in self.segments:
                rel = f"{SEGMENTS_DIR}/{s.name}/{segment_file(info.name, 'states')}"
                if rel not in by_path:
                    raise IndexOpenError(
                        f"index {self.path} is damaged: the manifest lists no {rel}"
                    )
                parts.append((self.path / rel, s.n_tokens, checksums[s.segment].get(info.name)))
            try:
                self._stores[info.name] = StateStore.of_segments(
                    info.name, info.layer, info.kind, info.dim, parts)
            except CorruptStoreError as exc:
                raise IndexOpenError(f"index {self.path} is damaged: {exc}") from exc
        self._con = self._snapshot_database(tables)
        starts = self._fetchnumpy("SELECT tok_start, tok_end FROM documents ORDER BY doc")
        self.doc_starts = np.concatenate(
            [starts["tok_start"].astype(np.int64), starts["tok_end"][-1:].astype(np.int64)]
        ) if len(starts["tok_start"]) else np.zeros(1, dtype=np.int64)
        if int(self.doc_starts[-1]) != self.n_tokens or len(self.doc_starts) - 1 != (
                self.segments[-1].doc_end if self.segments else 0):
            raise IndexOpenError(
                f"index {self.path} is damaged: its documents end at token "
                f"{self.doc_starts[-1]} but its segments at {self.n_tokens}"
            )
        self.doc_starts.setflags(write=False)

    def _column_checksums(self, segment: SegmentInfo) -> dict[str, np.ndarray]:
        """The per-unit column checksums a segment recorded in its checksums.npz (or, in
        older indexes, its stats.npz): plain arrays, no pickle, by state name."""
        listed = {f.path for f in self.files if f.segment == segment.segment}
        rel = f"{SEGMENTS_DIR}/{segment.name}/{SEGMENT_CHECKSUMS}"
        if rel not in listed and f"{SEGMENTS_DIR}/{segment.name}/{SEGMENT_STATS}" in listed:
            rel = f"{SEGMENTS_DIR}/{segment.name}/{SEGMENT_STATS}"
        path = self.path / rel
        if not path.is_file():
            raise DamagedFileError(f"index {self.path} is damaged: {rel} is missing")
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key[: -len(CHECKSUM_SUFFIX)]: data[key].astype(np.uint32)
                        for key in data.files if key.endswith(CHECKSUM_SUFFIX)}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as exc:
            raise DamagedFileError(f"index {self.path} is damaged: {rel} cannot be read "
                                   f"({exc})") from exc

    def _snapshot_database(self, tables: dict[str, dict[str, np.ndarray]]
                           ) -> duckdb.DuckDBPyConnection:
        """An in-memory database holding the snapshot's small tables, with views over the
        row files of its segments (attached read-only); file access then switched off."""
        con = duckdb.connect(":memory:")
        try:
            for name in SNAPSHOT_TABLES:
                con.register("snapshot_rows", tables[name])
                con.execute(f"CREATE TABLE {name} AS SELECT * FROM snapshot_rows")  # constant
                con.unregister("snapshot_rows")
            con.execute("DELETE FROM segments WHERE segment NOT IN (SELECT unnest(?))",
                        [[s.segment for s in self.segments] or [-1]])
            con.execute("DELETE FROM faiss_indexes WHERE segment NOT IN (SELECT unnest(?))",
                        [[s.segment for s in self.segments] or [-1]])
            con.execute("DELETE FROM files WHERE segment IS NOT NULL AND "
                        "segment NOT IN (SELECT unnest(?))",
                        [[s.segment for s in self.segments] or [-1]])
            for s in self.segments:
                path = self.path / SEGMENTS_DIR / s.name / SEGMENT_ROWS
                try:
                    con.execute(f"ATTACH '{sql_path(path)}' AS seg_{s.segment} (READ_ONLY)")
                except duckdb.Error as exc:
                    raise damaged(path, exc) from exc
            annotations = [f for f in self.files if f.kind == "annotations"]
            con.execute("CREATE TABLE annotation_files AS SELECT unnest(?) AS name, "
                        "unnest(?) AS file", [[f.state for f in annotations] or [""],
                                              [f.path for f in annotations] or [""]])
            con.execute("DELETE FROM annotation_files WHERE file = ''")
            for i, f in enumerate(annotations):
                try:
                    con.execute(f"ATTACH '{sql_path(self.path / f.path)}' AS track_{i} "
                                "(READ_ONLY)")
                except duckdb.Error as exc:
                    raise damaged(self.path / f.path, exc) from exc
            for table, columns in ROW_TABLES.items():
                parts = [f"SELECT {columns} FROM seg_{s.segment}.{table}" for s in self.segments]
                if table == "tracks":  # a track added later replaces one of the same name
                    names = [f.state for f in annotations]
                    if names:
                        parts = [f"SELECT * FROM ({' UNION ALL '.join(parts)}) WHERE name NOT IN "
                                 "(SELECT name FROM annotation_files)"] if parts else []
                    parts += [f"SELECT {columns} FROM track_{i}.tracks"
                              for i in range(len(annotations))]
                empty = f"SELECT {columns} FROM ({EMPTY_ROWS[table]}) WHERE false"
                con.execute(f"CREATE VIEW {table} AS " + " UNION ALL ".join(parts or [empty]))
            con.execute(TOP_TOKENS_VIEW)
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
        except BaseException:
            con.close()
            raise
        return con

    def _register_functions(self) -> None:
        """SQL access to stored values: `unit_value(layer, kind, unit, pos) -> DOUBLE`.

        The stored float16 value, widened exactly, so comparing it with any threshold gives
        the same answer as comparing the stored value in float64. DuckDB shares one database
        per file within a process, so a second `Index` on the same files finds the function
        already there (reading the same files) and keeps it.
        """
        from duckdb import sqltypes

        stores = self._stores

        def unit_value(layer: int, kind: str, unit: int, pos: int) -> float:
            name = f"layers.{layer}.{kind}"
            if name not in stores:
                raise ValueError(f"state {name} is not in this index; stored: {', '.join(stores)}")
            store = stores[name]
            if not 0 <= pos < store.n_tokens:
                raise ValueError(f"position {pos} out of range 0..{store.n_tokens - 1}")
            return float(store.column(unit)[pos])

        try:
            self._con.create_function(
                "unit_value",
                unit_value,
                [sqltypes.INTEGER, sqltypes.VARCHAR, sqltypes.INTEGER, sqltypes.BIGINT],
                sqltypes.DOUBLE,
            )
        except duckdb.CatalogException as exc:
            if "already exists" not in str(exc):
                raise

    def close(self) -> None:
        """Release the database connection (the index object is unusable afterwards)."""
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Index({str(self.path)!r}, docs={self.n_docs}, tokens={self.n_tokens})"

    # --- internals -------------------------------------------------------------------------

    def _query(self, sql: str, params: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            raise RuntimeError(f"index {self.path} is closed")
        return self._con.execute(sql, params or [])

    def _fetchall(self, sql: str, params: Sequence[Any] | None = None) -> list[tuple]:
        with self._lock, self._reading():
            return self._query(sql, params).fetchall()

    def _fetchnumpy(self, sql: str, params: Sequence[Any] | None = None) -> dict[str, np.ndarray]:
        with self._lock, self._reading():
            return self._query(sql, params).fetchnumpy()

    @contextmanager
    def _reading(self) -> Iterator[None]:
        """Turn DuckDB's errors about unreadable storage into a one-line error that says the
        index is damaged (what DuckDB found is kept as the cause)."""
        try:
            yield
        except (duckdb.CatalogException, duckdb.BinderException, duckdb.ParserException,
                duckdb.InvalidInputException, duckdb.ConversionException):
            raise  # a query or value of ours, not the storage
        except duckdb.Error as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise DamagedFileError(
                f"index {self.path} is damaged: a row file cannot be read ({first}); run "
                f"`lstmsearch verify {self.path}` to name it, and rebuild the index"
            ) from exc

    def _check_span(self, start: int, end: int) -> tuple[int, int]:
        start, end = int(start), int(end)
        if not 0 <= start <= end <= self.n_tokens:
            raise ValueError(
                f"token span [{start}, {end}) out of range: the index has tokens 0..{self.n_tokens}"
            )
        return start, end

    def token_offsets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(doc, char_start, char_end) of every token, loaded once."""
        if self._offsets is None:
            cols = self._fetchnumpy(
                "SELECT doc, char_start, char_end FROM tokens WHERE pos < ? ORDER BY pos",
                [self.n_tokens],
            )
            self._offsets = (
                np.asarray(cols["doc"], dtype=np.int32),
                np.asarray(cols["char_start"], dtype=np.int64),
                np.asarray(cols["char_end"], dtype=np.int64),
            )
        return self._offsets

    # --- documents and tokens --------------------------------------------------------------

    @property
    def n_docs(self) -> int:
        return len(self.doc_starts) - 1

    def documents(self) -> list[DocumentInfo]:
        """Every committed document, in order."""
        rows = self._fetchall(
            "SELECT doc, name, tok_start, tok_end, n_chars FROM documents ORDER BY doc"
        )
        return [DocumentInfo(int(d), n, int(s), int(e), int(c)) for d, n, s, e, c in rows]

    def doc_of(self, pos: int) -> int:
        """The document holding token position `pos`."""
        pos = int(pos)
        if not 0 <= pos < self.n_tokens:
            raise ValueError(f"position {pos} out of range: the index has tokens 0..{self.n_tokens - 1}")
        return int(np.searchsorted(self.doc_starts, pos, side="right") - 1)

    def document_text(self, doc: int) -> str:
        """The full text of document `doc` (recently used texts are cached)."""
        return self.document_texts([doc])[int(doc)]

    def document_texts(self, docs: Sequence[int]) -> dict[int, str]:
        """The full texts of some documents, each read from its own segment's rows (one
        query per segment touched; recently used texts are cached)."""
        wanted = sorted({int(d) for d in docs})
        for doc in wanted:
            if not 0 <= doc < self.n_docs:
                raise ValueError(f"document {doc} out of range: the index has documents "
                                 f"0..{self.n_docs - 1}")
        out: dict[int, str] = {}
        with self._lock:
            missing = []
            for doc in wanted:
                if doc in self._texts:
                    self._texts.move_to_end(doc)
                    out[doc] = self._texts[doc]
                else:
                    missing.append(doc)
            if missing:
                firsts = np.array([s.doc_start for s in self.segments])
                where = np.searchsorted(firsts, missing, side="right") - 1
                for i in np.unique(where).tolist():
                    docs_here = [d for d, w in zip(missing, where, strict=True) if w == i]
                    with self._reading():
                        rows = self._query(
                            f"SELECT doc, text FROM seg_{self.segments[i].segment}.documents "
                            "WHERE doc IN (SELECT unnest(?::INTEGER[]))", [docs_here]
                        ).fetchall()  # the segment number is ours, not a user's
                    for doc, text in rows:
                        out[int(doc)] = self._texts[int(doc)] = text
                while len(self._texts) > 256:
                    self._texts.popitem(last=False)
        return out

    def tokens(self, start: int, end: int) -> Tokens:
        """The tokens at positions [start, end)."""
        start, end = self._check_span(start, end)
        cols = self._fetchnumpy(
            "SELECT pos, doc, pos_in_doc, token_id, char_start, char_end, text FROM tokens "
            "WHERE pos >= ? AND pos < ? ORDER BY pos",
            [start, end],
        )
        return Tokens(
            pos=np.asarray(cols["pos"], dtype=np.int64),
            doc=np.asarray(cols["doc"], dtype=np.int32),
            pos_in_doc=np.asarray(cols["pos_in_doc"], dtype=np.int32),
            token_id=np.asarray(cols["token_id"], dtype=np.int32),
            char_start=np.asarray(cols["char_start"], dtype=np.int64),
            char_end=np.asarray(cols["char_end"], dtype=np.int64),
            text=tuple(str(t) for t in cols["text"]),
        )

    def text(self, start: int, end: int) -> str:
        """Document text covering tokens [start, end), whitespace between tokens included.

        A span across documents gives each document's part, joined by a newline.
        """
        start, end = self._check_span(start, end)
        if start == end:
            return ""
        doc_ids, char_start, char_end = self.token_offsets()
        parts = []
        first, last = int(doc_ids[start]), int(doc_ids[end - 1])
        for doc in range(first, last + 1):
            a = max(start, int(self.doc_starts[doc]))
            b = min(end, int(self.doc_starts[doc + 1]))
            parts.append(self.document_text(doc)[char_start[a] : char_end[b - 1]])
        return "\n".join(parts)

    def vocab(self) -> list[str]:
        """The tokenizer's vocabulary; the list index is the token id."""
        return [t for (t,) in self._fetchall("SELECT text FROM vocab ORDER BY token_id")]

    # --- states ----------------------------------------------------------------------------

    @property
    def state_names(self) -> list[str]:
        """Stored states, e.g. ['layers.0.h', 'layers.0.c', ...]."""
        return [s.name for s in self.state_infos]

    def store(self, layer: int | str, kind: str | None = None) -> StateStore:
        """The stored columns of one state: `store(1, "c")` or `store("layers.1.c")`."""
        layer, kind = parse_state(layer, kind)
        name = f"layers.{layer}.{kind}"
        if name not in self._stores:
            raise ValueError(
                f"state {name} is not in this index; stored: {', '.join(self.state_names)}"
            )
        return self._stores[name]

    def states(self, layer: int | str, kind: str | None = None) -> np.ndarray:
        """Stored values of one state as a tokens x units float16 memory-mapped view."""
        return self.store(layer, kind).tokens_by_units()

    def track(self, name: str) -> np.ndarray:
        """Values of annotation track `name` per token (NaN where it has no value, and
        everywhere for a label track: see `track_labels`)."""
        (count,) = self._fetchall("SELECT count(*) FROM tracks WHERE name = ?", [name])[0]
        if not count:
            names = [n for (n,) in self._fetchall("SELECT DISTINCT name FROM tracks ORDER BY 1")]
            raise ValueError(f"no track {name!r} in this index; tracks: {', '.join(names) or 'none'}")
        cols = self._fetchnumpy(
            "SELECT pos, value FROM tracks WHERE name = ? AND pos < ? AND value IS NOT NULL",
            [name, self.n_tokens],
        )
        out = np.full(self.n_tokens, np.nan)
        values = np.asarray(cols["value"], dtype=np.float64)
        out[np.asarray(cols["pos"], dtype=np.int64)] = values
        return out

    def track_labels(self, name: str) -> list[str | None]:
        """Labels of a label track (e.g. parts of speech) per token; None where absent."""
        self.track(name)  # a clear error for an unknown track
        rows = self._fetchall(
            "SELECT pos, label FROM tracks WHERE name = ? AND pos < ? AND label IS NOT NULL",
            [name, self.n_tokens],
        )
        out: list[str | None] = [None] * self.n_tokens
        for pos, label in rows:
            out[pos] = label
        return out

    def track_names(self) -> list[str]:
        """Names of the annotation tracks."""
        return [n for (n,) in self._fetchall("SELECT DISTINCT name FROM tracks ORDER BY 1")]

    def unit_top(
        self, layer: int | str, kind: str | None = None, unit: int = 0, *, lowest: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """Precomputed top-K positions and values of one unit (highest first, or lowest first)."""
        store = self.store(layer, kind)
        unit = store.check_unit(unit)
        cols = self._fetchnumpy(
            "SELECT pos, value FROM unit_top WHERE layer = ? AND kind = ? AND unit = ? "
            "AND lowest = ? ORDER BY rank",
            [store.layer, store.kind, unit, lowest],
        )
        return np.asarray(cols["pos"], dtype=np.int64), np.asarray(cols["value"], dtype=np.float32)

    def faiss(self, layer: int | str, kind: str | None = None) -> FaissIndexes:
        """The FAISS indexes of one state's segments (`FaissIndexes`), loaded on first use
        and kept. Each file is checked against its recorded sha256 when first read."""
        import faiss

        store = self.store(layer, kind)
        with self._lock:
            if store.name not in self._faiss:
                rows = self._query(
                    "SELECT segment, file FROM faiss_indexes WHERE name = ?", [store.name]
                ).fetchall()
                if not rows:
                    raise ValueError(f"index {self.path} has no FAISS index for {store.name}")
                by_segment = dict(rows)
                if set(by_segment) != {s.segment for s in self.segments}:
                    raise IndexOpenError(f"index {self.path} is damaged: FAISS indexes of "
                                         f"{store.name} are missing for some segments")
                files = {f.path: f for f in self.files}

                def load(s: SegmentInfo) -> Any:
                    rel = by_segment[s.segment]
                    if rel not in files:
                        raise DamagedFileError(f"index {self.path} is damaged: the manifest "
                                               f"lists no {rel}")
                    files[rel].check_sum(self.path)
                    try:
                        part = faiss.read_index(str(self.path / rel))
                    except RuntimeError as exc:
                        raise DamagedFileError(
                            f"index {self.path} is damaged: {rel} is not a FAISS index"
                        ) from exc
                    if part.ntotal != s.n_tokens or part.d != store.dim:
                        raise DamagedFileError(
                            f"index {self.path} is damaged: {rel} holds {part.ntotal} vectors "
                            f"of {part.d} units, the segment {s.n_tokens} of {store.dim}")
                    return part

                # hashing and reading free the GIL: the segments' files on every core
                parts = run_tasks(load, [(s,) for s in self.segments])
                self._faiss[store.name] = FaissIndexes(
                    tuple(s.tok_start for s in self.segments), tuple(parts), join_exact(parts))
            return self._faiss[store.name]

    # --- queries (see lstmsearch.query, lstmsearch.nearest, lstmsearch.neurons) --------------

    def select(
        self,
        start: int,
        end: int,
        threshold: float,
        layer: int | str | None = None,
        kind: str | None = None,
        *,
        pad_left: int = 1,
        pad_right: int = 0,
        sign: int = 1,
        state: str | None = None,
    ) -> Pattern:
        """The pattern S of span [start, end) on a state (`layer, kind` or `state="layers.1.c"`):
        units on (x >= threshold; sign=-1: x <= -threshold) throughout it, off on its padding."""
        from lstmsearch.query import select

        if state is None and layer is None:
            raise ValueError("say which state: a layer and a kind, or state='layers.1.c'")
        store = self.store(state if state is not None else layer, kind)
        return select(store, self.doc_starts, start, end, threshold, pad_left, pad_right, sign)

    def select_phrase(
        self,
        phrase: str,
        threshold: float,
        layer: int | str,
        kind: str | None = None,
        *,
        doc: int | None = None,
        occurrence: int = 0,
        pad_left: int = 1,
        pad_right: int = 0,
        sign: int = 1,
    ) -> Pattern:
        """Select on the tokens of a phrase: its `occurrence`-th place in document `doc` (or
        in the whole corpus), found in the text and mapped to the tokens it touches."""
        from lstmsearch.spans import find_span

        span = find_span(self, phrase, doc=doc, occurrence=occurrence)
        return self.select(span.start, span.end, threshold, layer, kind, pad_left=pad_left,
                           pad_right=pad_right, sign=sign)

    def find(self, phrase: str, limit: int = 100, *, doc: int | None = None) -> list[Span]:
        """Token spans where `phrase` occurs (exact text), in corpus order, at most `limit`."""
        from lstmsearch.spans import find_phrase

        return find_phrase(self, phrase, limit, document=doc)

    def match(
        self, pattern: Pattern, limit: int = 50, fuzzy: bool = True, *, context: int = 5,
        min_length: int | None = None, length: int | None = None, histogram: bool = True,
    ) -> MatchResult:
        """The spans whose units switch on like `pattern`'s, best first, with their text:
        at least `min_length` tokens (default 2 for a span of 2 or more, else 1) or exactly
        `length`; `histogram=False` skips the length histogram (faster)."""
        from lstmsearch.query import match

        return match(self.store(pattern.state), self.doc_starts, pattern, limit=limit,
                     fuzzy=fuzzy, text_of=self.text, context=context, min_length=min_length,
                     length=length, histogram=histogram)

    def nearest(
        self, start: int, end: int, layer: int | str, kind: str | None = None, k: int = 20,
        *, context: int = 5, exact: bool = False,
    ) -> list[Neighbor]:
        """The k stored states nearest to the span's mean state (outside the span); `exact`
        scans every stored state (brute force) instead of asking FAISS."""
        from lstmsearch.nearest import nearest

        return nearest(self, start, end, layer, kind, k, context, exact)

    @property
    def neurons(self) -> Neurons:
        """Neuron queries: `where`, `top`, `stats`, `correlate` (see `lstmsearch.neurons`)."""
        from lstmsearch.neurons import Neurons

        with self._lock:
            if "_neurons" not in vars(self):
                self._neurons = Neurons(self)
            return self._neurons

    # --- SQL -------------------------------------------------------------------------------

    def sql(self, query: str, params: Sequence[Any] | None = None, *,
            max_rows: int | None = MAX_SQL_ROWS) -> SqlResult:
        """Run one read-only query (SELECT/WITH/DESCRIBE/SHOW/SUMMARIZE, or EXPLAIN of one).

        Values go in `params` (`?` placeholders), never into the query text. At most
        `max_rows` rows come back (None: all of them; a table of the index can have one row
        per token): `truncated` says that there were more. Page through them with LIMIT and
        OFFSET, or read them all a batch at a time with `sql_batches`.
        """
        check_read_only(query)
        if max_rows is not None:
            check_count("max_rows", max_rows, minimum=0)
        with self._lock:
            try:
                cursor = self._query(query, params)
                columns = tuple(d[0] for d in cursor.description or ())
                if not columns:
                    rows = []
                elif max_rows is None:
                    rows = cursor.fetchall()
                else:
                    rows = cursor.fetchmany(max_rows + 1)
            except duckdb.Error as exc:
                raise ValueError(f"SQL error: {exc}") from exc
        if max_rows is not None and len(rows) > max_rows:
            return SqlResult(columns, rows[:max_rows], truncated=True)
        return SqlResult(columns, rows)

    def sql_batches(self, query: str, params: Sequence[Any] | None = None, *,
                    batch_rows: int = SQL_BATCH_ROWS) -> Iterator[SqlResult]:
        """All rows of one read-only query, `batch_rows` at a time, for results too large to
        hold at once (`lstmsearch sql --json` writes them so). The query runs on a cursor of
        its own, so other queries of the index go on meanwhile."""
        check_read_only(query)
        check_count("batch_rows", batch_rows, minimum=1)
        if self._con is None:
            raise RuntimeError(f"index {self.path} is closed")
        with self._lock:
            cursor = self._con.cursor()
        try:
            try:
                cursor.execute(query, params or [])
                columns = tuple(d[0] for d in cursor.description or ())
            except duckdb.Error as exc:
                raise ValueError(f"SQL error: {exc}") from exc
            while columns:
                try:
                    rows = cursor.fetchmany(batch_rows)
                except duckdb.Error as exc:
                    raise ValueError(f"SQL error: {exc}") from exc
                if not rows:
                    break
                yield SqlResult(columns, rows)
        finally:
            cursor.close()

    # --- info ------------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        """Documents, tokens, segments, states, sizes on disk, model and build time."""
        faiss_rows = self._fetchall(
            "SELECT name, any_value(description), min(recall_at_10), count(recall_at_10), "
            "sum(seconds), count(*) "
            "FROM faiss_indexes GROUP BY name ORDER BY name")
        tracks = self._fetchall("SELECT name, count(value), count(label), avg(value) "
                                "FROM tracks GROUP BY name ORDER BY name")
        sizes = {"database": dir_size(self.path / DB_FILE) + dir_size(self.path / (DB_FILE + ".wal")),
                 "states": 0, "faiss": 0, "rows": 0, "statistics": 0, "model": 0}
        key = {"states": "states", "faiss": "faiss", "codebook": "faiss", "rows": "rows",
               "annotations": "rows", "stats": "statistics", "checksums": "statistics",
               "partial": "statistics", "model": "model"}
        for f in self.files:
            sizes[key.get(f.kind, "rows")] += f.bytes
        sizes["total"] = sum(sizes.values())
        config = json.loads(self.meta.get("model_config", "{}"))
        meta = self.meta
        return IndexInfo(
            path=str(self.path),
            format_version=int(meta["format_version"]),
            status=self.status,
            n_docs=self.n_docs,
            n_tokens=self.n_tokens,
            manifest_version=self.manifest_version,
            segments=tuple({"name": s.name, "documents": s.doc_end - s.doc_start,
                            "tokens": s.n_tokens, "bytes": s.bytes} for s in self.segments),
            states=self.state_infos,
            sizes=sizes,
            model={**config, "file": MODEL_FILE, "sha256": meta.get("model_sha256", ""),
                   "source": meta.get("model_source", "")},
            tokenizer=meta.get("tokenizer_kind", ""),
            corpus=meta.get("corpus", ""),
            created_at=meta.get("created_at", ""),
            updated_at=meta.get("updated_at", ""),
            build_seconds=float(meta.get("build_seconds", 0.0)),
            faiss=tuple(
                {"name": n, "description": d + (f", {c} segments" if c > 1 else ""),
                 "recall_at_10": r if r is not None else float("nan"), "measured": int(m),
                 "segments": int(c), "seconds": sec}
                for n, d, r, m, sec, c in faiss_rows
            ),
            tracks=tuple(
                {"name": n, "values": int(v), "labels": int(lab),
                 "mean": float(m) if m is not None else float("nan")}
                for n, v, lab, m in tracks
            ),
        )

    def verify(self, progress: Any = None) -> list[str]:
        """Check every listed file against its recorded size and sha256; the problems found
        (an empty list when the index is intact). `progress(bytes)` is called as it reads."""
        problems = []
        for f in self.files:
            try:
                f.check_size(self.path)
                digest = hashlib.sha256()
                with open(self.path / f.path, "rb") as handle:
                    while block := handle.read(HASH_BLOCK):
                        digest.update(block)
                        if progress is not None:
                            progress(len(block))
                if digest.hexdigest() != f.sha256:
                    raise DamagedFileError(f"{f.path} does not match its recorded sha256")
            except (DamagedFileError, OSError) as exc:
                problems.append(str(exc).replace(f"index {self.path} is damaged: ", ""))
        return problems


READ_ONLY_HINT = (
    "only a single read-only query is allowed (SELECT, WITH, FROM, DESCRIBE, SHOW, SUMMARIZE, "
    "or EXPLAIN of one)"
)


EXPLAIN_PREFIX = re.compile(r"\s*EXPLAIN(\s+ANALYZE)?\s+", re.IGNORECASE)


def check_read_only(query: str) -> None:
    """Refuse anything but one SELECT-like statement (or EXPLAIN of one), before running it."""
    if not isinstance(query, str) or not query.strip():
        raise SqlRefusedError(f"empty SQL: {READ_ONLY_HINT}")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise ValueError(f"SQL error: {exc}") from exc
    if len(statements) != 1:
        raise SqlRefusedError(f"{len(statements)} statements given: {READ_ONLY_HINT}")
    kind = statements[0].type
    if kind == duckdb.StatementType.EXPLAIN:
        match = EXPLAIN_PREFIX.match(query)
        if match is None:
            raise SqlRefusedError(f"EXPLAIN must start the query: {READ_ONLY_HINT}")
        check_read_only(query[match.end() :])
        return
    if kind != duckdb.StatementType.SELECT:
        raise SqlRefusedError(f"{kind.name} statement refused: {READ_ONLY_HINT}")

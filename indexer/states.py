"""Index states computed elsewhere: arrays from files, LSTMVis projects, a user's own model.

    index_states("tokens.txt", {"layers.0.h": "h0.npy"}, "idx", tracks={"label": "y.txt"})

Every importer here writes through `write_index`: given the documents and their tokens
(`TokenTable`), the vocabulary and the states to store, it creates the index in a temporary
directory next to the target, lets the caller write the states block by block (token-major
values at global positions, rounded to the stored float16 once, like the indexer does), commits
the tokens, adds the tracks, computes statistics, top-K and FAISS, and only then renames the
directory to the target. On any error the temporary directory is removed: the target is either
a complete index or absent, never half-written.

Tokens file of `index_states` (`lstmsearch index-states --tokens FILE`), by extension:

- `.jsonl` / `.ndjson`: one JSON object per token, `{"token": "the", "doc": "a.txt"}`; `doc`
  is optional (default: one document); consecutive tokens with the same `doc` form a document.
- `.csv` / `.tsv`: a header row with a `token` column and optionally a `doc` column; one row
  per token, documents as for JSONL.
- anything else: plain text, one token per line; an empty line ends a document.

The document text is the tokens joined by single spaces (character offsets follow from it).
States files: `.npy` arrays of shape tokens x units (float16, float32 or float64), opened
memory-mapped, so they are read block by block and never loaded whole.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from indexer.annotate import Track, read_track_file
from indexer.build import (
    BuildResult,
    default_segment_tokens,
    merge_pending_stats,
    read_corpus,
    write_stats_and_publish,
)
from indexer.nearest import CODEBOOK_TOKENS, load_codebooks, train_codebooks
from indexer.segment import PlannedDoc, SegmentWriter, plan_segments
from indexer.writer import BuildError, IndexWriter, now
from lstmsearch.extract import parse_state_name
from lstmsearch.index import DB_FILE, FORMAT_VERSION, segment_file
from lstmsearch.progress import progress_bar
from lstmsearch.store import clip

SEGMENT_TOKENS = 262_144
"""Least tokens per segment (whole documents; one long document is one segment)."""
BLOCK_BYTES = 1 << 25
"""Bytes of source values read at once when copying states (32 MiB)."""
FLOAT_DTYPES = ("float16", "float32", "float64")

Writer = Callable[[str, int, np.ndarray], None]
"""`write(name, start, values)`: store token-major values (T, units) at positions start.."""


# --- documents and tokens ----------------------------------------------------------------


@dataclass(frozen=True)
class TokenTable:
    """Documents and their tokens: everything an index holds besides states and tracks.

    `doc_starts[d] .. doc_starts[d + 1]` are the global positions of document `d`; `starts`
    and `ends` are each token's character span in its own document's text.
    """

    names: tuple[str, ...]
    texts: tuple[str, ...]
    doc_starts: np.ndarray  # int64 (n_docs + 1,)
    ids: np.ndarray  # int32 (n_tokens,)
    starts: np.ndarray  # int64 (n_tokens,)
    ends: np.ndarray  # int64 (n_tokens,)

    @property
    def n_docs(self) -> int:
        return len(self.names)

    @property
    def n_tokens(self) -> int:
        return len(self.ids)

    def planned(self) -> list[PlannedDoc]:
        """One `PlannedDoc` per document (array views, no copies)."""
        docs = []
        for d, (name, text) in enumerate(zip(self.names, self.texts, strict=True)):
            a, b = int(self.doc_starts[d]), int(self.doc_starts[d + 1])
            docs.append(PlannedDoc(name, text, self.ids[a:b], self.starts[a:b], self.ends[a:b], {}))
        return docs


def joined_words(
    names: Sequence[str], doc_starts: np.ndarray, ids: np.ndarray, words: Sequence[str]
) -> TokenTable:
    """Documents whose text is their words (`words[id]`) joined by single spaces.

    Works on id arrays, so a stream of 10^7 words costs a few arrays, not 10^7 strings.
    """
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    ids = np.asarray(ids, dtype=np.int64)
    vocab = np.empty(len(words), dtype=object)
    vocab[:] = list(words)
    lengths = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))[ids]
    ends = np.cumsum(lengths + 1) - 1  # one space after every word
    starts = ends - lengths
    first = np.repeat(starts[doc_starts[:-1]] if len(ids) else np.zeros(0, np.int64),
                      np.diff(doc_starts))
    texts = tuple(
        " ".join(vocab[ids[a:b]]) for a, b in zip(doc_starts[:-1], doc_starts[1:], strict=True)
    )
    return TokenTable(tuple(names), texts, doc_starts, ids.astype(np.int32), starts - first,
                      ends - first)


def token_words(docs: Sequence[tuple[str, list[str]]]) -> tuple[TokenTable, list[str]]:
    """A token table from (name, tokens) documents, and its vocabulary (first seen first)."""
    index: dict[str, int] = {}
    ids = []
    for _, tokens in docs:
        ids.extend(index.setdefault(t, len(index)) for t in tokens)
    lengths = [len(tokens) for _, tokens in docs]
    doc_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    vocab = list(index)
    table = joined_words([n for n, _ in docs], doc_starts, np.asarray(ids, dtype=np.int64), vocab)
    return table, vocab


def read_tokens_file(path: str | os.PathLike) -> list[tuple[str, list[str]]]:
    """(document name, tokens) of each document of a tokens file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"tokens file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        with open(path, encoding="utf-8", newline="") as f:
            if suffix in (".jsonl", ".ndjson"):
                docs = read_jsonl_tokens(f, path)
            elif suffix in (".csv", ".tsv"):
                docs = read_csv_tokens(f, path, "\t" if suffix == ".tsv" else ",")
            else:
                docs = read_text_tokens(f, path)
    except UnicodeDecodeError as exc:
        raise BuildError(f"tokens file {path} is not UTF-8 text: {exc}") from exc
    if not any(tokens for _, tokens in docs):
        raise BuildError(f"tokens file {path} holds no tokens")
    return [(name, tokens) for name, tokens in docs if tokens]


def read_text_tokens(lines: Iterable[str], path: Path) -> list[tuple[str, list[str]]]:
    """One token per line; an empty line ends a document."""
    docs: list[tuple[str, list[str]]] = [(f"{path.name}#0", [])]
    for line in lines:
        token = line[:-1] if line.endswith("\n") else line
        token = token[:-1] if token.endswith("\r") else token
        if token == "":
            if docs[-1][1]:
                docs.append((f"{path.name}#{len(docs)}", []))
            continue
        docs[-1][1].append(token)
    return docs


def group_by_doc(rows: Iterable[tuple[int, str, str | None]], path: Path
                 ) -> list[tuple[str, list[str]]]:
    """Consecutive (line, token, doc) rows with the same doc form one document."""
    docs: list[tuple[str, list[str]]] = []
    seen: set[str] = set()
    current: str | None = None
    for lineno, token, doc in rows:
        name = path.name if doc is None else doc
        if not docs or name != current:
            if name in seen:
                raise BuildError(
                    f"{path}:{lineno}: document {name!r} appears again after other documents: "
                    "keep the tokens of a document together"
                )
            seen.add(name)
            docs.append((name, []))
            current = name
        docs[-1][1].append(token)
    return docs


def read_jsonl_tokens(lines: Iterable[str], path: Path) -> list[tuple[str, list[str]]]:
    """`{"token": ..., "doc": ...}` per line."""

    def rows():
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BuildError(f"{path}:{lineno}: not a JSON object: {exc}") from None
            if not isinstance(record, dict) or not isinstance(record.get("token"), str):
                raise BuildError(f'{path}:{lineno}: expected {{"token": "...", "doc": ...}}, '
                                 f"got {line.strip()[:80]!r}")
            doc = record.get("doc")
            yield lineno, record["token"], None if doc is None else str(doc)

    return group_by_doc(rows(), path)


def read_csv_tokens(lines: Iterable[str], path: Path, delimiter: str
                    ) -> list[tuple[str, list[str]]]:
    """A header with a `token` column (and optionally `doc`), one row per token."""
    reader = csv.DictReader(lines, delimiter=delimiter)
    if reader.fieldnames is None or "token" not in reader.fieldnames:
        raise BuildError(f"{path}: the first row must be a header with a 'token' column "
                         f"(found {reader.fieldnames})")
    has_doc = "doc" in reader.fieldnames

    def rows():
        for row in reader:
            if row["token"] is None:
                raise BuildError(f"{path}:{reader.line_num}: the row has no token")
            yield reader.line_num, row["token"], row["doc"] if has_doc else None

    return group_by_doc(rows(), path)


# --- state sources -----------------------------------------------------------------------


@dataclass(frozen=True)
class ArraySource:
    """States of one (layer, kind) in a tokens x units array (memory map or HDF5 dataset)."""

    name: str
    array: Any  # anything with .shape, .dtype and [start:end] row slicing
    where: str  # the file (and dataset) for messages

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    def read(self, start: int, end: int) -> np.ndarray:
        """Rows [start, end) as an in-memory, writable copy in the source's dtype."""
        return np.array(self.array[start:end], order="C")


def check_state_name(name: str, where: str) -> tuple[int, str]:
    """(layer, kind) of a state name like `layers.0.h`, or an error naming `where`."""
    try:
        return parse_state_name(name)
    except ValueError as exc:
        raise BuildError(f"{where}: {exc}") from None


def check_source(source: ArraySource, n_tokens: int) -> None:
    """A tokens x units float array with one row per token, or an error naming the file."""
    check_state_name(source.name, source.where)
    shape, dtype = tuple(source.array.shape), np.dtype(source.array.dtype)
    if len(shape) != 2 or shape[1] < 1:
        raise BuildError(f"{source.where} holds an array of shape {shape}: expected "
                         "tokens x units (2-D, at least one unit)")
    if dtype.name not in FLOAT_DTYPES:
        raise BuildError(f"{source.where} holds {dtype} values: expected one of "
                         f"{', '.join(FLOAT_DTYPES)}")
    if shape[0] != n_tokens:
        raise BuildError(f"{source.where} has states for {shape[0]:,} tokens but there are "
                         f"{n_tokens:,} tokens: give one row per token")


def open_npy(path: str | os.PathLike) -> np.ndarray:
    """A `.npy` file memory-mapped read-only; a clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise BuildError(f"states file {path} does not exist")
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise BuildError(f"{path} is not a readable .npy array: {exc}") from exc


def copy_sources(sources: Sequence[ArraySource]) -> Callable[[Writer, tqdm], None]:
    """A `fill` for `write_index` that copies each source block by block."""

    def fill(write: Writer, bar: tqdm) -> None:
        for source in sources:
            n = int(source.array.shape[0])
            rows = max(1, BLOCK_BYTES // (source.dim * np.dtype(source.array.dtype).itemsize))
            for start in range(0, n, rows):
                try:
                    values = source.read(start, min(n, start + rows))
                except (OSError, ValueError) as exc:
                    raise BuildError(f"cannot read {source.where} at rows {start:,}..: {exc}"
                                     ) from exc
                write(source.name, start, values)
                bar.update(len(values))

    return fill


# --- writing an index --------------------------------------------------------------------


def check_target(out: Path) -> None:
    """The target must not exist, or be an empty directory."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        hint = "it is an index already" if (out / DB_FILE).exists() else "choose a new directory"
        raise BuildError(f"{out} already exists and is not empty: {hint}")


def write_index(
    out: str | os.PathLike,
    tokens: TokenTable,
    vocab: Sequence[str],
    states: Sequence[tuple[str, int]],
    fill: Callable[[Writer, tqdm], None],
    *,
    meta: Mapping[str, str],
    tracks: Mapping[str, Track] | None = None,
    faiss: bool = True,
    exact_nearest: bool = False,
    progress: bool | None = None,
    mode: str = "build",
    skipped: Mapping[str, int] | None = None,
) -> BuildResult:
    """Write a complete index at `out` from tokens and states; all or nothing.

    `states` lists (name, units); `fill(write, bar)` must write every token of every state
    with `write(name, start, values)` and advance `bar` (total: tokens x states). `meta`
    describes where the states came from (model_config, model_source, tokenizer_kind, corpus).
    """
    out = Path(out)
    check_target(out)
    if tokens.n_tokens == 0:
        raise BuildError(f"nothing to index into {out}: there are no tokens")
    names = [name for name, _ in states]
    if len(set(names)) != len(names):
        raise BuildError(f"a state is given twice: {', '.join(names)}")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        seconds = fill_index(tmp, tokens, vocab, states, fill, meta, tracks or {}, faiss,
                             exact_nearest, progress, started)
        tmp.chmod(0o755)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    total = time.perf_counter() - started
    return BuildResult(
        path=out, mode=mode, n_docs=tokens.n_docs, n_tokens=tokens.n_tokens,
        new_docs=tokens.n_docs, new_tokens=tokens.n_tokens,
        n_segments=seconds["segments"], states=tuple(names), seconds=total,
        extract_seconds=seconds["fill"], store_seconds=seconds["commit"],
        finalize_seconds=seconds["finalize"], skipped=dict(skipped or {}),
    )


def fill_index(tmp: Path, tokens: TokenTable, vocab: Sequence[str],
               states: Sequence[tuple[str, int]], fill: Callable[[Writer, tqdm], None],
               meta: Mapping[str, str], tracks: Mapping[str, Track], faiss: bool,
               exact_nearest: bool, progress: bool | None, started: float) -> dict[str, Any]:
    """Create, fill, commit and finalize the index in directory `tmp`; seconds per step."""
    full_meta = {"format_version": str(FORMAT_VERSION), "model_sha256": "", "model_source": "",
                 "model_config": "{}", "tokenizer_kind": "", "corpus": "", "created_at": now(),
                 "updated_at": now(), "build_seconds": "0", **meta}
    layer_rows = [(name, *parse_state_name(name), int(dim)) for name, dim in states]
    writer = IndexWriter(tmp)
    segments: list[SegmentWriter] = []
    try:
        writer.create(full_meta, layer_rows, list(vocab))
        docs = tokens.planned()
        segment_tokens = default_segment_tokens(tokens.n_tokens, least=SEGMENT_TOKENS)
        plans = plan_segments([len(d) for d in docs], segment_tokens, 1, 0, 0, 0)
        writer.plan(docs, plans, {"segment_tokens": str(segment_tokens), "segment_docs": "1"})
        segments = [SegmentWriter(tmp, plan, layer_rows) for plan in plans]
        ends = np.array([plan.tok_end for plan in plans], dtype=np.int64)
        dims = dict(states)

        def write(name: str, start: int, values: np.ndarray) -> None:
            array = np.asarray(values)
            if not (array.flags.writeable and array.flags.c_contiguous):
                array = np.array(array, order="C")  # clipped in place below
            values = clip(torch.from_numpy(array))
            if values.ndim != 2 or values.shape[1] != dims[name]:
                raise BuildError(f"states of {name} have shape {tuple(values.shape)}; "
                                 f"expected (tokens, {dims[name]})")
            end = start + len(values)
            while start < end:  # a block may run across segments
                segment = segments[int(np.searchsorted(ends, start, side="right"))]
                stop = min(end, segment.plan.tok_end)
                segment.write_block(name, start, values[: stop - start])
                values, start = values[stop - start :], stop

        t0 = time.perf_counter()
        bar = progress_bar(tokens.n_tokens * len(states), progress, "states", unit="tok")
        with bar:
            fill(write, bar)
        t1 = time.perf_counter()
        if faiss and not exact_nearest:
            for segment in segments:
                segment.close_states()
            sample = {name: stored_sample(segments, name, dim) for name, dim in dims.items()}
            codebooks = train_codebooks(sample, tmp)
            writer.add_codebooks(codebooks)
            loaded = load_codebooks(tmp, writer.live_files("codebook"))
            for segment in segments:
                segment.codebooks = loaded
        labelled = [(name, t.pos, t.values, t.labels) for name, t in tracks.items()]
        for plan, segment in zip(plans, segments, strict=True):
            written = segment.finish(docs[plan.doc_start : plan.doc_end], labelled=labelled,
                                     faiss=faiss)
            writer.add_segment(written, time.perf_counter() - started)
        segments = []
        t2 = time.perf_counter()
        merged = merge_pending_stats(writer, progress)
        write_stats_and_publish(writer, merged, time.perf_counter() - started)
        t3 = time.perf_counter()
    finally:
        for segment in segments:
            segment.abort()
        writer.close()
    return {"fill": t1 - t0, "commit": t2 - t1, "finalize": t3 - t2, "segments": len(plans)}


# --- precomputed states ------------------------------------------------------------------


def parse_assignments(items: Iterable[str], what: str) -> dict[str, str]:
    """`["layers.0.h=h0.npy", ...]` -> {"layers.0.h": "h0.npy"}; a clear error otherwise."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise BuildError(f"bad {what} {item!r}: write NAME=FILE")
        if name in out:
            raise BuildError(f"{what} {name!r} is given twice")
        out[name] = value
    return out


def stored_sample(segments: Sequence[SegmentWriter], name: str, dim: int,
                  tokens: int = CODEBOOK_TOKENS) -> np.ndarray:
    """The stored values of state `name` at the first `tokens` positions, float32
    (tokens, dim): what its codebook is trained on."""
    parts, total = [], 0
    for segment in segments:
        if total >= tokens:
            break
        take = min(segment.plan.n_tokens, tokens - total)
        columns = np.memmap(segment.tmp / segment_file(name, "states"), dtype="<f2", mode="r",
                            shape=(dim, segment.plan.n_tokens))
        parts.append(np.array(columns[:, :take]).T.astype(np.float32))
        total += take
    return np.concatenate(parts)


def index_states(
    tokens_file: str | os.PathLike,
    states: Mapping[str, str | os.PathLike],
    out: str | os.PathLike,
    *,
    tracks: Mapping[str, str | os.PathLike] | None = None,
    faiss: bool = True,
    exact_nearest: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Index states computed elsewhere: `states` maps names like `layers.0.h` to `.npy`
    files (tokens x units); `tracks` maps track names to files `lstmsearch annotate` reads.

    Everything is checked before anything is written; the index appears at `out` only when
    complete.
    """
    if not states:
        raise BuildError("give at least one state file (NAME=FILE.npy)")
    check_target(Path(out))
    docs = read_tokens_file(tokens_file)
    table, vocab = token_words(docs)
    sources = []
    for name, path in states.items():
        check_state_name(name, f"state {name!r}")
        source = ArraySource(name, open_npy(path), str(path))
        check_source(source, table.n_tokens)
        sources.append(source)
    parsed = {name: read_track_file(Path(path), table.n_tokens)
              for name, path in (tracks or {}).items()}
    layers = sorted({parse_state_name(s.name)[0] for s in sources})
    config = {"arch": "precomputed", "layers": len(layers),
              "hidden": max(s.dim for s in sources), "vocab_size": len(vocab)}
    meta = {
        "model_config": json.dumps(config),
        "model_source": "precomputed: " + ", ".join(f"{s.name}={s.where}" for s in sources),
        "tokenizer_kind": "tokens-file",
        "corpus": str(tokens_file),
    }
    return write_index(out, table, vocab, [(s.name, s.dim) for s in sources],
                       copy_sources(sources), meta=meta, tracks=parsed, faiss=faiss,
                       exact_nearest=exact_nearest, progress=progress)


# --- a user's own model ------------------------------------------------------------------


def index_with_model(
    corpus: Any,
    adapter: Any,
    out: str | os.PathLike,
    *,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
    corpus_options: dict | None = None,
    faiss: bool = True,
    exact_nearest: bool = False,
    progress: bool | None = None,
) -> BuildResult:
    """Index `corpus` with the states of a user model (`lstmsearch.adapters.ModelAdapter`).

    Tokenizes with the adapter's tokenizer, extracts every chosen layer's states exactly,
    document by document, and writes them like any other index. Character tracks of the
    corpus (e.g. parens depth) become token tracks by their value at each token's first
    character. Such an index has no `model.pt`: it can be queried and served, but resume,
    append and the analyses that rerun the model need an lstmsearch checkpoint.
    """
    check_target(Path(out))
    names = adapter.state_names(kinds=kinds, layers=layers)
    dims = adapter.state_dims()
    corpus = read_corpus(corpus, limit, corpus_options)
    planned, skipped = [], 0
    for doc in corpus.documents:
        enc = adapter.encode(doc.text)
        if len(enc) == 0:
            skipped += 1
            continue
        first = np.minimum(enc.starts, max(0, len(doc.text) - 1))
        doc_tracks = {k: np.asarray(v, dtype=np.float64)[first] for k, v in doc.char_tracks.items()}
        planned.append((doc.name, doc.text, enc, doc_tracks))
    if not planned:
        raise BuildError(f"corpus {corpus.name!r} has no documents with tokens to index")
    lengths = [len(enc) for _, _, enc, _ in planned]
    doc_starts = np.concatenate([[0], np.cumsum(lengths, dtype=np.int64)])
    table = TokenTable(
        names=tuple(n for n, _, _, _ in planned),
        texts=tuple(t for _, t, _, _ in planned),
        doc_starts=doc_starts,
        ids=np.concatenate([enc.ids for _, _, enc, _ in planned]).astype(np.int32),
        starts=np.concatenate([enc.starts for _, _, enc, _ in planned]).astype(np.int64),
        ends=np.concatenate([enc.ends for _, _, enc, _ in planned]).astype(np.int64),
    )
    vocab = adapter.vocab() or observed_vocab(table)
    if int(table.ids.max()) >= len(vocab):
        raise BuildError(f"the tokenizer of {adapter.source} gave token id {int(table.ids.max())}"
                         f" but its vocabulary has {len(vocab)} entries")
    tracks = {}
    for name in sorted({k for *_, t in planned for k in t}):
        pos = [np.arange(doc_starts[i], doc_starts[i + 1]) for i, p in enumerate(planned)
               if name in p[3]]
        values = [p[3][name] for p in planned if name in p[3]]
        tracks[name] = Track(np.concatenate(pos), np.concatenate(values), None)

    def fill(write: Writer, bar: tqdm) -> None:
        for d, (_, _, enc, _) in enumerate(planned):
            for name, values in adapter.extract(enc.ids, names).items():
                write(name, int(doc_starts[d]), values)
            bar.update(len(enc) * len(names))

    meta = {
        "model_config": json.dumps(adapter.config(len(vocab))),
        "model_source": adapter.source,
        "model_sha256": adapter.sha256(),
        "tokenizer_kind": adapter.tokenizer_kind,
        "corpus": corpus.name,
    }
    return write_index(out, table, vocab, [(n, dims[n]) for n in names], fill, meta=meta,
                       tracks=tracks, faiss=faiss, exact_nearest=exact_nearest,
                       progress=progress, skipped={"no tokens": skipped} if skipped else {})


def observed_vocab(table: TokenTable) -> list[str]:
    """A vocabulary from the tokens themselves, for tokenizers that do not list theirs."""
    vocab = [""] * (int(table.ids.max()) + 1)
    seen = np.zeros(len(vocab), dtype=bool)
    for d, text in enumerate(table.texts):
        a, b = int(table.doc_starts[d]), int(table.doc_starts[d + 1])
        for i, s, e in zip(table.ids[a:b].tolist(), table.starts[a:b].tolist(),
                           table.ends[a:b].tolist(), strict=True):
            if not seen[i]:
                vocab[i], seen[i] = text[s:e], True
    return vocab

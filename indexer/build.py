"""The indexing job: (corpus, model) -> index directory, sharded, resumable, appendable.

    build_index("parens", "model.pt", "idx")                  # a new index
    build_index(None, None, "idx", resume=True)               # finish an interrupted build
    build_index("more.jsonl", None, "idx", append=True)       # add documents

Steps: load the model; read and tokenize every document (cheap, and it fixes the token count
so state files are allocated once); stage the plan; then per shard of whole documents:
extract the exact states (`lstmsearch.extract`), store them as float16 columns, flush, and
commit the shard's rows in one transaction (`indexer.writer`); finally compute per-unit
statistics, top-K and FAISS indexes over all stored tokens and mark the index complete.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from indexer.nearest import EXACT_LIMIT, build_faiss
from indexer.stats import unit_stats
from indexer.writer import (
    BuildError,
    IndexWriter,
    PlannedDoc,
    Shard,
    copy_atomic,
    meta_for_model,
    plan_shards,
)
from lstmsearch.corpus import Corpus, load_corpus
from lstmsearch.extract import iter_states, state_names
from lstmsearch.index import (
    DB_FILE,
    FAISS_DIR,
    FORMAT_VERSION,
    MODEL_FILE,
    STATUS_COMPLETE,
    SURPRISAL_TRACK,
)
from lstmsearch.models import LoadedModel, file_sha256, load_model
from lstmsearch.store import clip
from lstmsearch.tokenize import Tokenizer

SHARD_TOKENS = 65_536
"""Default least number of tokens in a shard (the unit of commit, and of work lost to a kill)."""
SHARD_LANES = 4
"""A shard also holds at least this many documents per lane, so that the model's lanes stay
full: documents run side by side only within a shard."""


@dataclass(frozen=True)
class BuildResult:
    """What a build, resume or append did."""

    path: Path
    mode: str  # "build", "resume", "append" or "complete" (nothing left to do)
    n_docs: int
    n_tokens: int
    new_docs: int
    new_tokens: int
    n_shards: int
    states: tuple[str, ...]
    seconds: float
    extract_seconds: float  # running the model (on the main thread)
    store_seconds: float  # converting, writing, flushing, committing (alongside the model)
    finalize_seconds: float  # statistics, top-K, FAISS
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def tokens_per_second(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        """The final summary line."""
        if self.mode == "complete":
            return f"{self.path}: already complete ({self.n_docs:,} documents, {self.n_tokens:,} tokens)"
        skipped = sum(self.skipped.values())
        return (
            f"{self.mode}: {self.new_docs:,} documents, {self.new_tokens:,} tokens "
            f"({len(self.states)} states: {', '.join(self.states)}) in {self.seconds:.1f} s, "
            f"{self.tokens_per_second:,.0f} tokens/s; index {self.path} now has "
            f"{self.n_docs:,} documents, {self.n_tokens:,} tokens"
            + (f"; {skipped} documents without tokens skipped" if skipped else "")
        )


def choose_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the given one, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_lanes(device: torch.device) -> int:
    """Documents run side by side: 64 keeps CPU matrix products efficient; a GPU needs more."""
    return 512 if device.type == "cuda" else 64


def tokenize_documents(
    documents: Sequence[tuple[str, str, dict[str, np.ndarray]]], tokenizer: Tokenizer
) -> tuple[list[PlannedDoc], int]:
    """Tokenize (name, text, char_tracks) documents; drop those without tokens (counted).

    A character track becomes a token track by its value at each token's first character.
    """
    encodings = tokenizer.encode_batch([text for _, text, _ in documents])
    docs, skipped = [], 0
    for (name, text, char_tracks), enc in zip(documents, encodings, strict=True):
        if len(enc) == 0:
            skipped += 1
            continue
        first = np.minimum(enc.starts, max(0, len(text) - 1))
        tracks = {k: np.asarray(v, dtype=np.float64)[first] for k, v in char_tracks.items()}
        docs.append(PlannedDoc(name, text, enc.ids, enc.starts, enc.ends, tracks))
    return docs, skipped


def progress_bar(total: int, enabled: bool | None, desc: str, unit: str = "tok") -> tqdm:
    """A tqdm bar on stderr; by default only when stderr is a terminal."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, dynamic_ncols=True,
                file=sys.stderr, disable=not enabled, smoothing=0.1)


# --- entry point -------------------------------------------------------------------------


def build_index(
    corpus: str | os.PathLike | Corpus | None,
    model: str | os.PathLike | None,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    append: bool = False,
    layers: Sequence[int] | None = None,
    kinds: Sequence[str] | None = None,
    limit: int | None = None,
    corpus_options: dict | None = None,
    shard_tokens: int | None = None,
    shard_docs: int | None = None,
    device: str | torch.device | None = None,
    lanes: int | None = None,
    chunk: int = 256,
    faiss: bool = True,
    exact_faiss_limit: int = EXACT_LIMIT,
    progress: bool | None = None,
    on_shard: Callable[[int], None] | None = None,
    surprisal: bool = True,
) -> BuildResult:
    """Index `corpus` with the states of `model` into directory `out`.

    - new build: `out` must not exist (or be empty).
    - `resume=True`: finish an interrupted build or append; corpus and model are read back
      from the index (pass them only to start over when nothing was committed yet).
    - `append=True`: add the documents of `corpus` to a complete index, with the index's own
      model (a `model` given must be the same checkpoint).

    `layers`/`kinds` choose the stored states (default: every layer's h and, for an LSTM, c).
    A shard is whole documents, at least `shard_tokens` tokens (default 65,536) and
    `shard_docs` documents (default 4 per lane); `on_shard(shard)` is called after each
    shard commits. With `surprisal` (the default) each token's surprisal under the model,
    -ln p(token | the tokens before it) in nats, is stored as the track "surprisal" (a
    resume or an append keeps what the build chose).
    """
    out = Path(out)
    if resume and append:
        raise BuildError("choose one of resume and append, not both")
    device = choose_device(device)
    lanes = lanes or default_lanes(device)
    job = Job(out, device, lanes, chunk, faiss, exact_faiss_limit, progress, on_shard,
              surprisal)
    sizes = (shard_tokens, shard_docs)
    if resume:
        return job.resume(corpus, model, layers, kinds, limit, corpus_options, sizes)
    if append:
        return job.append(corpus, model, limit, corpus_options, sizes)
    return job.build(corpus, model, layers, kinds, limit, corpus_options, sizes)


@dataclass
class Job:
    """One run of the indexer over one index directory."""

    out: Path
    device: torch.device
    lanes: int
    chunk: int
    faiss: bool
    exact_faiss_limit: int
    progress: bool | None
    on_shard: Callable[[int], None] | None
    surprisal: bool = True  # store each token's surprisal as the track SURPRISAL_TRACK
    started: float = field(default_factory=time.perf_counter)
    extract_seconds: float = 0.0
    store_seconds: float = 0.0
    finalize_seconds: float = 0.0

    # --- the three modes -------------------------------------------------------------------

    def build(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        """A new index from scratch."""
        if corpus is None or model is None:
            raise BuildError("a new index needs a corpus and a model (--model MODEL.pt)")
        if self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir())):
            hint = (
                "use --resume to finish its build or --append to add documents"
                if (self.out / DB_FILE).exists()
                else "choose a new directory"
            )
            raise BuildError(f"{self.out} already exists and is not empty: {hint}")
        loaded = load_model(model, device=self.device)
        names = state_names(loaded.config, kinds=kinds, layers=layers)
        corpus = read_corpus(corpus, limit, corpus_options)
        docs, skipped = tokenize_documents(corpus_docs(corpus), loaded.tokenizer)
        if not docs:
            raise BuildError(f"corpus {corpus.name!r} has no documents with tokens to index")
        self.check_tracks(docs)
        self.out.mkdir(parents=True, exist_ok=True)
        copy_atomic(Path(model), self.out / MODEL_FILE)
        sha = file_sha256(self.out / MODEL_FILE)
        meta = {
            "format_version": str(FORMAT_VERSION),
            **meta_for_model(self.out / MODEL_FILE, str(Path(model).resolve()), sha,
                             loaded.config, loaded.tokenizer.to_json(), loaded.tokenizer.kind),
            "corpus": corpus.name,
            "surprisal": "true" if self.surprisal else "false",
        }
        dims = {name: loaded.config.state_dim for name in names}
        states = [(n, *split_name(n), dims[n]) for n in names]
        writer = IndexWriter.create(self.out, meta, states, loaded.tokenizer.vocab())
        shard_tokens = sizes[0] or SHARD_TOKENS
        shard_docs = sizes[1] or SHARD_LANES * self.lanes
        shards = plan_shards([len(d) for d in docs], shard_tokens, shard_docs, 0, 0, 0)
        try:
            writer.plan(docs, shards, {"shard_tokens": str(shard_tokens),
                                       "shard_docs": str(shard_docs)})
        except BaseException:
            writer.abort()
            raise
        return self.run(writer, loaded, shards, docs, "build", {"no tokens": skipped} if skipped else {})

    def resume(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        """Finish the interrupted build or append at `out`."""
        if not (self.out / DB_FILE).exists():
            if self.out.is_dir() and is_leftover(self.out) and corpus is not None and model:
                start_over(self.out)
                return self.build(corpus, model, layers, kinds, limit, corpus_options, sizes)
            raise BuildError(
                f"no index to resume at {self.out} (no {DB_FILE}); run the full command "
                "(with the corpus and --model) without --resume"
            )
        writer = IndexWriter.connect(self.out)
        if not writer.has_schema() or not writer.shards():
            writer.abort()
            if corpus is None or model is None:
                raise BuildError(
                    f"the build at {self.out} was interrupted before it saved its plan: run the "
                    "full command again (with the corpus and --model) to start it over"
                )
            if not is_leftover(self.out):
                raise BuildError(f"{self.out} holds files that are not part of an index; "
                                 "choose a new directory")
            start_over(self.out)
            return self.build(corpus, model, layers, kinds, limit, corpus_options, sizes)
        try:
            meta = writer.meta()
            if meta.get("status") == STATUS_COMPLETE:
                writer.abort()
                return self.nothing_to_do()
            self.surprisal = meta.get("surprisal") == "true"
            loaded = self.index_model(writer, meta, model)
            pending = [s for s, committed in writer.shards() if not committed]
            docs: list[PlannedDoc] = []
            if pending:
                rows = writer.planned_documents(pending[0].doc_start, pending[-1].doc_end)
                docs, _ = tokenize_documents([(n, t, {}) for n, t in rows], loaded.tokenizer)
                if len(docs) != len(rows):
                    raise BuildError(
                        f"the planned documents of {self.out} no longer tokenize; rebuild it"
                    )
        except BaseException:
            writer.abort()
            raise
        return self.run(writer, loaded, pending, docs, "resume", {})

    def append(self, corpus, model, limit, corpus_options, sizes) -> BuildResult:
        """Add the documents of `corpus` to the complete index at `out`."""
        if corpus is None:
            raise BuildError("append needs a corpus of documents to add")
        if not (self.out / DB_FILE).exists():
            raise BuildError(f"no index to append to at {self.out}; build one first")
        writer = IndexWriter.connect(self.out)
        try:
            if not writer.has_schema():
                raise BuildError(f"the index at {self.out} was never completed; use --resume")
            meta = writer.meta()
            if meta.get("status") != STATUS_COMPLETE:
                raise BuildError(
                    f"the index at {self.out} is incomplete: finish it with "
                    f"`lstmsearch index --resume {self.out}` before appending"
                )
            self.surprisal = meta.get("surprisal") == "true"
            loaded = self.index_model(writer, meta, model)
            corpus = read_corpus(corpus, limit, corpus_options)
            docs, skipped = tokenize_documents(corpus_docs(corpus), loaded.tokenizer)
            if not docs:
                raise BuildError(f"corpus {corpus.name!r} has no documents with tokens to add")
            self.check_tracks(docs)
            shard_list = writer.shards()
            shard_tokens = sizes[0] or int(meta.get("shard_tokens", SHARD_TOKENS))
            shard_docs = sizes[1] or int(meta.get("shard_docs", SHARD_LANES * self.lanes))
            shards = plan_shards([len(d) for d in docs], shard_tokens, shard_docs,
                                 len(shard_list), writer.committed_docs(),
                                 writer.committed_tokens())
            writer.plan(docs, shards, {"corpus": f"{meta.get('corpus', '')} + {corpus.name}"})
        except BaseException:
            writer.abort()
            raise
        return self.run(writer, loaded, shards, docs, "append",
                        {"no tokens": skipped} if skipped else {})

    # --- shared steps ----------------------------------------------------------------------

    def index_model(self, writer: IndexWriter, meta: dict[str, str], model) -> LoadedModel:
        """The index's own model copy, checked against its recorded sha256 (and `model`)."""
        path = self.out / MODEL_FILE
        if not path.is_file():
            raise BuildError(f"index {self.out} is missing its model copy {MODEL_FILE}")
        sha = file_sha256(path)
        if sha != meta.get("model_sha256"):
            raise BuildError(f"{path} does not match the model the index was built with (sha256)")
        if model is not None and file_sha256(model) != sha:
            raise BuildError(
                f"model {model} is not the model of index {self.out}: an index holds the states "
                "of one model; build a new index for a different model"
            )
        return load_model(path, device=self.device)

    def check_tracks(self, docs: Sequence[PlannedDoc]) -> None:
        """A corpus track may not take the name of the stored surprisal."""
        if self.surprisal and any(SURPRISAL_TRACK in d.tracks for d in docs):
            raise BuildError(
                f"the corpus has a track named {SURPRISAL_TRACK!r}, the name of the model's "
                "stored surprisal: rename the corpus track or build without surprisal"
            )

    def nothing_to_do(self) -> BuildResult:
        """Result for a resume of a complete index."""
        from lstmsearch.index import open_index

        with open_index(self.out) as index:
            return BuildResult(self.out, "complete", index.n_docs, index.n_tokens, 0, 0,
                               index.n_shards, tuple(index.state_names), 0.0, 0.0, 0.0, 0.0)

    def run(self, writer: IndexWriter, loaded: LoadedModel, shards: Sequence[Shard],
            docs: Sequence[PlannedDoc], mode: str, skipped: dict[str, int]) -> BuildResult:
        """Commit the pending shards, then finalize; close the database whatever happens."""
        try:
            meta = writer.meta()
            base_seconds = float(meta.get("build_seconds", 0.0))
            all_shards = writer.shards()
            capacity = all_shards[-1][0].tok_end if all_shards else 0
            new_tokens = sum(s.n_tokens for s in shards)
            self.commit_shards(writer, loaded, shards, docs, capacity, base_seconds)
            self.finalize(writer, base_seconds)
            n_docs, n_tokens = writer.committed_docs(), writer.committed_tokens()
            states = tuple(name for name, *_ in writer.states())
            n_shards = len(all_shards)
        except BaseException:
            writer.abort()
            raise
        writer.close()
        return BuildResult(
            path=self.out, mode=mode, n_docs=n_docs, n_tokens=n_tokens,
            new_docs=sum(s.doc_end - s.doc_start for s in shards), new_tokens=new_tokens,
            n_shards=n_shards, states=states, seconds=time.perf_counter() - self.started,
            extract_seconds=self.extract_seconds, store_seconds=self.store_seconds,
            finalize_seconds=self.finalize_seconds, skipped=skipped,
        )

    def commit_shards(self, writer: IndexWriter, loaded: LoadedModel, shards: Sequence[Shard],
                      docs: Sequence[PlannedDoc], capacity: int, base_seconds: float) -> None:
        """Run the model over each pending shard here; store and commit on a second thread.

        The model's blocks of states (`iter_states`: lanes x chunk steps) go straight into the
        state files, so memory holds a few blocks, not a shard. After a shard's last block
        the files are flushed and the shard committed, while the model already runs on the
        next shard: disk and database time hide behind the model. The tokens' surprisal
        (one float each) is gathered per shard and committed with it.
        """
        if not shards:
            return
        state_writers = writer.state_writers(capacity)
        names = list(state_writers)
        first_doc = shards[0].doc_start
        bar = progress_bar(sum(s.n_tokens for s in shards), self.progress, "indexing")

        surprisal: dict[int, np.ndarray] = {}  # shard -> its tokens' surprisal

        def store(step: str, shard: Shard, *item) -> None:
            t0 = time.perf_counter()
            if step == "block":
                doc_starts, block = item
                if block.surprisal is not None:
                    values = surprisal.setdefault(
                        shard.shard, np.full(shard.n_tokens, np.nan, dtype=np.float32))
                    for j, doc in enumerate(block.docs):
                        at = int(doc_starts[doc] + block.starts[j]) - shard.tok_start
                        values[at : at + int(block.lengths[j])] = block.surprisal[j, : block.lengths[j]]
                for name, values in block.states.items():
                    clip(values)
                    w = state_writers[name]
                    for j, doc in enumerate(block.docs):
                        n = int(block.lengths[j])
                        w.write_block(int(doc_starts[doc] + block.starts[j]), values[j, :n],
                                      block.unit_offset)
            else:
                shard_docs, started = item
                for w in state_writers.values():
                    w.flush()
                tracks = {}
                if self.surprisal:
                    tracks[SURPRISAL_TRACK] = surprisal.pop(
                        shard.shard, np.full(shard.n_tokens, np.nan, dtype=np.float32))
                writer.commit_shard(shard, shard_docs, time.perf_counter() - started,
                                    base_seconds + time.perf_counter() - self.started, tracks)
            self.store_seconds += time.perf_counter() - t0
            if step == "commit":
                bar.update(shard.n_tokens)
                if self.on_shard is not None:
                    self.on_shard(shard.shard)

        with bar, Committer(store) as committer:
            for shard in shards:
                t0 = time.perf_counter()
                shard_docs = docs[shard.doc_start - first_doc : shard.doc_end - first_doc]
                lengths = np.array([len(d) for d in shard_docs], dtype=np.int64)
                doc_starts = shard.tok_start + np.concatenate([[0], np.cumsum(lengths)[:-1]])
                blocks = iter_states(loaded.model, [d.ids for d in shard_docs], names,
                                     chunk=self.chunk, lanes=self.lanes,
                                     surprisal=self.surprisal)
                for block in blocks:
                    committer.submit("block", shard, doc_starts, block)
                committer.submit("commit", shard, shard_docs, t0)
                self.extract_seconds += time.perf_counter() - t0
        self.extract_seconds -= committer.waited
        for w in state_writers.values():
            w.close()

    def finalize(self, writer: IndexWriter, base_seconds: float) -> None:
        """Statistics, top-K and FAISS over every stored token; then mark the index complete."""
        t0 = time.perf_counter()
        stores = writer.state_stores()
        stats, faiss_rows = {}, []
        bar = progress_bar(len(stores), self.progress, "statistics", unit="state")
        with bar:
            for name, store in stores.items():
                stats[name] = (store.layer, store.kind, unit_stats(store))
                if self.faiss and store.n_tokens:
                    rel = f"{FAISS_DIR}/{name}.index"
                    built = build_faiss(store, self.out / rel, exact_limit=self.exact_faiss_limit)
                    faiss_rows.append((name, store.layer, store.kind, rel, built.description,
                                       store.n_tokens, built.recall_at_10, built.seconds))
                bar.update(1)
        self.finalize_seconds += time.perf_counter() - t0
        writer.finalize(stats, faiss_rows, base_seconds + time.perf_counter() - self.started)


# --- helpers -----------------------------------------------------------------------------


class Committer:
    """Runs `work(*item)` for submitted items in order on one background thread.

    A few items wait while another is worked on. An error on the thread stops it and is
    raised in the submitting thread at the next `submit` or at exit; leaving the `with` block
    (normally or by an exception) waits for the item in progress, so nothing is half-done
    behind the caller's back.
    """

    def __init__(self, work: Callable[..., None]):
        self.work = work
        self.items: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.waited = 0.0  # seconds the submitting thread spent waiting for room
        self.thread = threading.Thread(target=self.loop, name="lstmsearch-commit", daemon=True)

    def __enter__(self) -> Committer:
        self.thread.start()
        return self

    def loop(self) -> None:
        while (item := self.items.get()) is not None:
            if self.error is None:
                try:
                    self.work(*item)
                except BaseException as exc:  # handed to the submitting thread
                    self.error = exc

    def raise_error(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, *item: object) -> None:
        """Queue one item; raise the thread's error, if any."""
        self.raise_error()
        t0 = time.perf_counter()
        try:
            while self.thread.is_alive():
                try:
                    self.items.put(item, timeout=0.1)
                    return
                except queue.Full:
                    self.raise_error()
            self.raise_error()
        finally:
            self.waited += time.perf_counter() - t0

    def __exit__(self, *exc: object) -> None:
        self.items.put(None)
        self.thread.join()
        if exc[0] is None:
            self.raise_error()


def split_name(name: str) -> tuple[int, str]:
    """`layers.1.c` -> (1, 'c')."""
    _, layer, kind = name.split(".")
    return int(layer), kind


def read_corpus(corpus, limit: int | None, options: dict | None) -> Corpus:
    """A `Corpus` from a corpus object or a source accepted by `load_corpus`."""
    if isinstance(corpus, Corpus):
        return corpus
    return load_corpus(corpus, limit=limit, **(options or {}))


def corpus_docs(corpus: Corpus) -> list[tuple[str, str, dict[str, np.ndarray]]]:
    """(name, text, char_tracks) of each document."""
    return [(d.name, d.text, d.char_tracks) for d in corpus.documents]


LEFTOVERS = {DB_FILE, DB_FILE + ".wal", MODEL_FILE, MODEL_FILE + ".tmp", "states", FAISS_DIR}


def is_leftover(out: Path) -> bool:
    """Whether `out` holds nothing but what an interrupted build writes."""
    return all(child.name in LEFTOVERS for child in out.iterdir())


def start_over(out: Path) -> None:
    """Remove what a build that never committed its plan left behind."""
    for child in out.iterdir():
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()

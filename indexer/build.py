"""The indexing job: (corpus, model) -> index directory of segments, resumable, appendable.

    build_index("parens", "model.pt", "idx")                  # a new index
    build_index(None, None, "idx", resume=True)               # finish an interrupted build
    build_index("more.jsonl", None, "idx", append=True)       # add documents as new segments

The data flows through five stages, each a function the local engine here and the Ray
engine (`indexer.ray_engine`) both run:

1. read documents (`read_corpus`, `corpus_docs`),
2. tokenize them (`tokenize_documents`), which fixes every document's token count and
   computes the tracks of the corpus's kind (`lstmsearch.tracks`: code, text or parens), so
3. `plan_segments` assigns global positions and groups whole documents into segments,
4. extract the exact states of a segment and write it (`iter_states` into a
   `SegmentWriter`: states, rows, partial statistics, FAISS, checksums),
5. commit: list each written segment in the manifest (`IndexWriter.add_segment`), then merge
   the new segments' partial statistics into the index's and publish them in one manifest
   transaction (`merge_pending_stats`, `write_stats_and_publish`).

An append writes only new segments and a new merged statistics file: no existing segment
file is rewritten, and its cost grows with what is added, not with the index.
"""

from __future__ import annotations

import math
import os
import queue
import shutil
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from indexer.nearest import CODEBOOK_TOKENS, load_codebooks, train_codebooks
from indexer.segment import PlannedDoc, SegmentPlan, SegmentWriter, plan_segments
from indexer.stats import PartialStats, load_partials, merge_partials, save_partials, stats_of
from indexer.writer import (
    BUILD_DIR,
    LOCK_FILE,
    BuildError,
    IndexWriter,
    copy_atomic,
    meta_for_model,
)
from lstmsearch.attention import attention_tracks
from lstmsearch.corpus import Corpus, load_corpus
from lstmsearch.extract import StateBlock, extract, iter_states, state_names
from lstmsearch.index import (
    CODEBOOKS_DIR,
    DB_FILE,
    MODEL_FILE,
    SEGMENTS_DIR,
    STATS_DIR,
    STATUS_COMPLETE,
    SURPRISAL_TRACK,
    human_bytes,
)
from lstmsearch.models import LoadedModel, file_sha256, load_model
from lstmsearch.progress import progress_bar
from lstmsearch.store import to_stored
from lstmsearch.tokenize import Tokenizer
from lstmsearch.tracks import KINDS as TRACK_KINDS
from lstmsearch.tracks import char_tracks, detect_kind, token_level_tracks

SEGMENT_TOKENS = 65_536
"""Least number of tokens in a segment by default (the unit of commit, and of work lost to a
kill; `lstmsearch compact` merges small segments later)."""
SEGMENTS_PER_BUILD = 16
"""A large build takes segments of about 1/16 of its tokens (up to `MAX_SEGMENT_TOKENS`):
a query reads every segment, so their number, not only their size, sets its cost."""
MAX_SEGMENT_TOKENS = 1 << 20


def default_segment_tokens(n_tokens: int, least: int = SEGMENT_TOKENS) -> int:
    """Least tokens per segment for a build of `n_tokens`: `least`, or for a large build
    the power of two near n / `SEGMENTS_PER_BUILD`, at most `MAX_SEGMENT_TOKENS`."""
    share = 2 ** round(math.log2(max(1, n_tokens // SEGMENTS_PER_BUILD)))
    return int(max(least, min(MAX_SEGMENT_TOKENS, share)))
SEGMENT_LANES = 4
"""A segment also holds at least this many documents per lane, so that the model's lanes
stay full: documents run side by side only within a segment."""


@dataclass(frozen=True)
class BuildResult:
    """What a build, resume or append did."""

    path: Path
    mode: str  # "build", "resume", "append" or "complete" (nothing left to do)
    n_docs: int
    n_tokens: int
    new_docs: int
    new_tokens: int
    n_segments: int
    states: tuple[str, ...]
    seconds: float
    extract_seconds: float  # running the model (on the main thread)
    store_seconds: float  # converting, writing, flushing, committing (alongside the model)
    finalize_seconds: float  # statistics, top-K, FAISS
    skipped: dict[str, int] = field(default_factory=dict)
    tracks: str = "none"  # the computed track set (lstmsearch.tracks.KINDS)
    untokenized: int = 0  # code files that do not tokenize: no in_string, in_comment, bracket_depth

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
            + (f"; {self.untokenized} files do not tokenize as Python (no in_string, "
               "in_comment or bracket_depth for them)" if self.untokenized else "")
        )


def choose_device(device: str | torch.device | None) -> torch.device:
    """The device to run on: the given one, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def default_lanes(device: torch.device, hidden: int = 512) -> int:
    """Documents run side by side. On a CPU about 32k lanes x units per step, 64 to 512
    lanes: a step's product must be large enough that the per-step call around it is small
    (a 64-unit model takes 512 lanes, a 512-unit one 64); a GPU takes 512."""
    if device.type == "cuda":
        return 512
    return int(min(512, max(64, 2 ** round(math.log2(32768 / max(1, hidden))))))


def tokenize_documents(
    documents: Sequence[tuple[str, str, dict[str, np.ndarray]]], tokenizer: Tokenizer,
    tracks: str = "none",
) -> tuple[list[PlannedDoc], int, int]:
    """Tokenize (name, text, char_tracks) documents; drop those without tokens (counted).

    The track set `tracks` (`lstmsearch.tracks.KINDS`) is computed for each document, the
    corpus's own character tracks taking precedence by name (`add_computed_tracks`).
    Returns the documents, the number dropped, and the number whose code does not tokenize.
    """
    encodings = tokenizer.encode_batch([text for _, text, _ in documents])
    docs, skipped = [], 0
    for (name, text, own_tracks), enc in zip(documents, encodings, strict=True):
        if len(enc) == 0:
            skipped += 1
            continue
        docs.append(PlannedDoc(name, text, enc.ids, enc.starts, enc.ends,
                               at_tokens(text, enc.starts, own_tracks)))
    docs, untokenized = add_computed_tracks(docs, tracks, tokenizer.kind)
    return docs, skipped, untokenized


def at_tokens(text: str, starts: np.ndarray,
              char_values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Character tracks as token tracks: a token takes the value at its first character."""
    first = np.minimum(starts, max(0, len(text) - 1))
    return {k: np.asarray(v, dtype=np.float64)[first] for k, v in char_values.items()}


def add_computed_tracks(docs: Sequence[PlannedDoc], tracks: str,
                        tokenizer_kind: str) -> tuple[list[PlannedDoc], int]:
    """The documents with the track set `tracks` computed from their text (a document's own
    tracks keep their names), and how many hold code that does not tokenize. Both engines
    call it, so a Ray build stores the tracks a local one does."""
    out, untokenized = [], 0
    for doc in docs:
        computed = char_tracks(tracks, doc.text)
        untokenized += computed.skipped
        values = at_tokens(doc.text, doc.starts, token_level_tracks(computed, tokenizer_kind))
        out.append(replace(doc, tracks={**values, **doc.tracks}))
    return out, untokenized


def gather_block_tracks(block: StateBlock, doc_starts: np.ndarray, plan: SegmentPlan,
                        into: dict[str, np.ndarray]) -> None:
    """A block's per-token values (the surprisal; an attention model's attention tracks)
    into its segment's track columns `into`, each made (all NaN) on first use."""
    for j, doc in enumerate(block.docs):
        at, n = int(doc_starts[doc] + block.starts[j]) - plan.tok_start, int(block.lengths[j])
        found = {}
        if block.surprisal is not None:
            found[SURPRISAL_TRACK] = block.surprisal[j, :n]
        if block.attention is not None:
            found.update(attention_tracks(block.attention[j, :n]))
        for name, values in found.items():
            column = into.setdefault(name, np.full(plan.n_tokens, np.nan, dtype=np.float32))
            column[at : at + n] = values


def choose_tracks(tracks: str, names: Sequence[str], texts: Sequence[str]) -> str:
    """The track set to compute: `tracks`, or with "auto" the kind detected from the
    documents' names and texts."""
    if tracks == "auto":
        return detect_kind(names, texts)
    if tracks not in TRACK_KINDS:
        raise BuildError(f"unknown track set {tracks!r}: choose auto or one of "
                         f"{', '.join(TRACK_KINDS)}")
    return tracks


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
    segment_tokens: int | None = None,
    segment_docs: int | None = None,
    device: str | torch.device | None = None,
    lanes: int | None = None,
    chunk: int = 256,
    faiss: bool = True,
    exact_nearest: bool = False,
    space_check: bool = True,
    progress: bool | None = None,
    on_segment: Callable[[int], None] | None = None,
    surprisal: bool = True,
    tracks: str = "auto",
) -> BuildResult:
    """Index `corpus` with the states of `model` into directory `out`.

    - new build: `out` must not exist (or be empty, or hold only what a build killed before
      its plan was saved left behind).
    - `resume=True`: finish an interrupted build or append; corpus and model are read back
      from the index (pass them only to start over when nothing was planned yet).
    - `append=True`: add the documents of `corpus` to a complete index as new segments, with
      the index's own model (a `model` given must be the same checkpoint).

    `layers`/`kinds` choose the stored states (default: every layer's h and, for an LSTM, c).
    A segment is whole documents, at least `segment_tokens` tokens (default 65,536, or about
    a sixteenth of a larger build, up to 2^20) and
    `segment_docs` documents (default 4 per lane); `on_segment(number)` is called after each
    segment is written and listed. With `surprisal` (the default) each token's surprisal
    under the model, -ln p(token | the tokens before it) in nats, is stored as the track
    "surprisal" (a resume or an append keeps what the build chose). `faiss` builds the
    nearest-state indexes: compressed codes re-ranked on the stored states, or with
    `exact_nearest` exact ones that hold a second copy of the states. Before anything is
    written the estimated size is printed, and the build refused when the output file system
    has less free space (`space_check=False` tries anyway). `tracks` names the annotation
    tracks computed from the text (`lstmsearch.tracks`: code, text, parens or none; "auto"
    detects the corpus's kind); an append computes the set its index was built with.
    """
    out = Path(out)
    if resume and append:
        raise BuildError("choose one of resume and append, not both")
    for name, value in (("segment_tokens", segment_tokens), ("segment_docs", segment_docs),
                        ("lanes", lanes), ("chunk", chunk), ("limit", limit)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < 1):
            raise BuildError(f"{name} must be a positive integer, got {value!r}")
    device = choose_device(device)
    job = Job(out, device, lanes, chunk, faiss, exact_nearest, progress, on_segment,
              surprisal, space_check, tracks)
    sizes = (segment_tokens, segment_docs)
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
    lanes: int | None  # None: `default_lanes` for the model, once it is loaded
    chunk: int
    faiss: bool
    exact_nearest: bool  # exact FAISS indexes (a second copy of the states), no codebooks
    progress: bool | None
    on_segment: Callable[[int], None] | None
    surprisal: bool = True  # store each token's surprisal as the track SURPRISAL_TRACK
    space_check: bool = True  # refuse to start without the free space the estimate needs
    tracks: str = "auto"  # computed tracks (lstmsearch.tracks.KINDS), "auto": detected
    untokenized: int = 0  # code files of this run that do not tokenize
    started: float = field(default_factory=time.perf_counter)
    extract_seconds: float = 0.0
    store_seconds: float = 0.0
    finalize_seconds: float = 0.0

    # --- the three modes -------------------------------------------------------------------

    def build(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        """A new index from scratch."""
        if corpus is None or model is None:
            raise BuildError("a new index needs a corpus and a model (--model MODEL.pt)")
        loaded = load_model(model, device=self.device)
        names = state_names(loaded.config, kinds=kinds, layers=layers)
        corpus = read_corpus(corpus, limit, corpus_options)
        self.tracks = choose_tracks(self.tracks, [d.name for d in corpus.documents],
                                    [d.text for d in corpus.documents])
        docs, skipped, self.untokenized = tokenize_documents(corpus_docs(corpus),
                                                             loaded.tokenizer, self.tracks)
        if not docs:
            raise BuildError(f"corpus {corpus.name!r} has no documents with tokens to index")
        self.check_tracks(docs)
        self.check_space(sum(len(d) for d in docs), [loaded.config.state_dim] * len(names),
                         compressed=self.faiss and not self.exact_nearest)
        writer = claim_new(self.out)
        return self.build_into(writer, model, loaded, names, corpus, docs, skipped, sizes)

    def build_into(self, writer: IndexWriter, model, loaded: LoadedModel, names: list[str],
                   corpus: Corpus, docs: list[PlannedDoc], skipped: int, sizes) -> BuildResult:
        """The new index in the empty directory whose write lock `writer` holds."""
        self.pick_lanes(loaded)
        copy_atomic(Path(model), self.out / MODEL_FILE)
        sha = file_sha256(self.out / MODEL_FILE)
        meta = {
            **meta_for_model(self.out / MODEL_FILE, str(Path(model).resolve()), sha,
                             loaded.config, loaded.tokenizer.to_json(), loaded.tokenizer.kind),
            "corpus": corpus.name,
            "surprisal": "true" if self.surprisal else "false",
            "tracks": self.tracks,
        }
        dims = {name: loaded.config.state_dim for name in names}
        states = [(n, *split_name(n), dims[n]) for n in names]
        try:
            writer.create(meta, states, loaded.tokenizer.vocab())
            segment_tokens = sizes[0] or default_segment_tokens(sum(len(d) for d in docs))
            segment_docs = sizes[1] or SEGMENT_LANES * self.lanes
            plans = plan_segments([len(d) for d in docs], segment_tokens, segment_docs, 0, 0, 0)
            codebooks = self.codebooks_for(loaded, names, docs)
            writer.plan(docs, plans, {"segment_tokens": str(segment_tokens),
                                      "segment_docs": str(segment_docs)}, codebooks)
        except BaseException:
            writer.close()
            raise
        return self.run(writer, loaded, plans, docs, "build",
                        {"no tokens": skipped} if skipped else {})

    def resume(self, corpus, model, layers, kinds, limit, corpus_options, sizes) -> BuildResult:
        """Finish the interrupted build or append at `out`."""
        if not (self.out / DB_FILE).exists() or not has_plan(self.out):
            if self.out.is_dir() and not is_leftover(self.out):
                raise BuildError(f"{self.out} holds files that are not part of an index; "
                                 "choose a new directory")
            if corpus is None or model is None:
                raise BuildError(
                    f"the build at {self.out} was interrupted before it saved its plan: run "
                    "the full command again (with the corpus and --model) to start it over"
                )
            return self.build(corpus, model, layers, kinds, limit, corpus_options, sizes)
        writer = IndexWriter.connect(self.out)
        try:
            meta = writer.meta()
            writer.remove_unlisted()
            planned = [p for p, _ in writer.segments("planned")]
            if meta.get("status") == STATUS_COMPLETE and not writer.segments("planned", "pending"):
                shutil.rmtree(self.out / BUILD_DIR, ignore_errors=True)  # a kill after publishing
                writer.close()
                return self.nothing_to_do()
            self.surprisal = meta.get("surprisal") == "true"
            loaded = self.index_model(meta, model)
            docs: list[PlannedDoc] = []
            if planned:
                rows = writer.planned_documents(planned[0].doc_start, planned[-1].doc_end)
                docs, _, _ = tokenize_documents([(n, t, {}) for n, t, _ in rows],
                                                loaded.tokenizer)
                if len(docs) == len(rows):  # the staged tracks are per token already
                    docs = [replace(d, tracks=tracks) for d, (_, _, tracks) in
                            zip(docs, rows, strict=True)]
                if len(docs) != len(rows):
                    raise BuildError(
                        f"the planned documents of {self.out} no longer tokenize; rebuild it"
                    )
        except BaseException:
            writer.close()
            raise
        return self.run(writer, loaded, planned, docs, "resume", {})

    def append(self, corpus, model, limit, corpus_options, sizes) -> BuildResult:
        """Add the documents of `corpus` to the complete index at `out` as new segments."""
        if corpus is None:
            raise BuildError("append needs a corpus of documents to add")
        writer, meta = open_complete(self.out)
        try:
            writer.remove_unlisted()
            self.surprisal = meta.get("surprisal") == "true"
            loaded = self.index_model(meta, model)
            corpus = read_corpus(corpus, limit, corpus_options)
            self.tracks = meta.get("tracks", "none")
            docs, skipped, self.untokenized = tokenize_documents(corpus_docs(corpus),
                                                                 loaded.tokenizer, self.tracks)
            if not docs:
                raise BuildError(f"corpus {corpus.name!r} has no documents with tokens to add")
            self.check_tracks(docs)
            self.check_append_space(writer, docs)
            plans = self.plan_append(writer, meta, docs, sizes, corpus.name)
        except BaseException:
            writer.close()
            raise
        return self.run(writer, loaded, plans, docs, "append",
                        {"no tokens": skipped} if skipped else {})

    # --- shared steps ----------------------------------------------------------------------

    def check_space(self, n_tokens: int, dims: Sequence[int], compressed: bool) -> None:
        """Say how large the new states will be on disk, and refuse to start when the output
        file system has less free space than that (unless `space_check` is off)."""
        need = estimate_bytes(n_tokens, dims, self.faiss, compressed, self.surprisal)
        free = free_bytes(self.out)
        units = sum(dims)
        line = (f"estimate: {n_tokens:,} tokens x {units:,} units ({len(dims)} states) x 2 "
                f"bytes = {human_bytes(n_tokens * units * 2)} of states, about "
                f"{human_bytes(need)} on disk in all; {human_bytes(free)} free at {self.out}")
        if self.progress is not False:
            print(line, file=sys.stderr, flush=True)
        if self.space_check and free < need:
            raise BuildError(
                f"not enough free space for the index at {self.out}: it needs about "
                f"{human_bytes(need)} ({n_tokens:,} tokens x {units:,} units x 2 bytes of states, "
                f"plus FAISS, rows and statistics) but {human_bytes(free)} is free; free some space, "
                "choose another --out, or pass --no-space-check to try anyway"
            )

    def check_append_space(self, writer: IndexWriter, docs: Sequence[PlannedDoc]) -> None:
        """`check_space` for the documents an append adds, with the index's own states."""
        dims = [dim for *_, dim in writer.states()]
        compressed = bool(writer.live_files("codebook"))
        self.faiss = bool(writer.read("SELECT count(*) FROM faiss_indexes")[0][0]) or compressed
        self.check_space(sum(len(d) for d in docs), dims, compressed)

    def plan_append(self, writer: IndexWriter, meta: dict[str, str],
                    docs: Sequence[PlannedDoc], sizes, corpus_name: str) -> list[SegmentPlan]:
        """Plan and stage the new segments of an append, after the index's last ones."""
        segment_tokens = sizes[0] or int(meta.get("segment_tokens", SEGMENT_TOKENS))
        segment_docs = sizes[1] or int(meta.get("segment_docs", SEGMENT_LANES * self.lanes))
        n_docs, n_tokens = writer.extent()
        plans = plan_segments([len(d) for d in docs], segment_tokens, segment_docs,
                              int(meta.get("next_segment", 0)), n_docs, n_tokens)
        writer.plan(docs, plans, {"corpus": f"{meta.get('corpus', '')} + {corpus_name}"})
        return plans

    def pick_lanes(self, loaded: LoadedModel) -> None:
        """The lanes of the model's runs, when not given: `default_lanes` on the device
        that runs the model."""
        if self.lanes is None:
            self.lanes = default_lanes(self.model_device(), loaded.config.hidden)

    def model_device(self) -> torch.device:
        """The device the model runs on while segments are written."""
        return self.device

    def index_model(self, meta: dict[str, str], model) -> LoadedModel:
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
        loaded = load_model(path, device=self.device)
        self.pick_lanes(loaded)
        return loaded

    def check_tracks(self, docs: Sequence[PlannedDoc]) -> None:
        """A corpus track may not take the name of the stored surprisal."""
        if self.surprisal and any(SURPRISAL_TRACK in d.tracks for d in docs):
            raise BuildError(
                f"the corpus has a track named {SURPRISAL_TRACK!r}, the name of the model's "
                "stored surprisal: rename the corpus track or build without surprisal"
            )

    def codebooks_for(self, loaded: LoadedModel, names: Sequence[str],
                      docs: Sequence[PlannedDoc]) -> dict[str, Path]:
        """Train the FAISS codebook of each state on the states of the first documents and
        save them in the index directory (none with `exact_nearest` or without FAISS)."""
        if not self.faiss or self.exact_nearest:
            return {}
        t0 = time.perf_counter()
        sample = codebook_sample(loaded.model, [d.ids for d in docs], names, lanes=self.lanes)
        t1 = time.perf_counter()
        files = train_codebooks(sample, self.out)
        self.finalize_seconds += time.perf_counter() - t0
        n_sample = len(next(iter(sample.values()))) if sample else 0
        total = sum(len(d) for d in docs)
        if n_sample and self.progress is not False:
            rate = n_sample / max(t1 - t0, 1e-9)
            print(f"estimate: {rate:,.0f} tokens/s on the first {n_sample:,} tokens, so about "
                  f"{total / rate:,.0f} s for {total:,} tokens", file=sys.stderr, flush=True)
        return files

    def nothing_to_do(self) -> BuildResult:
        """Result for a resume of a complete index."""
        from lstmsearch.index import open_index

        with open_index(self.out) as index:
            return BuildResult(self.out, "complete", index.n_docs, index.n_tokens, 0, 0,
                               len(index.segments), tuple(index.state_names), 0.0, 0.0, 0.0,
                               0.0)

    def run(self, writer: IndexWriter, loaded: LoadedModel, plans: Sequence[SegmentPlan],
            docs: Sequence[PlannedDoc], mode: str, skipped: dict[str, int]) -> BuildResult:
        """Write and list the planned segments, then publish; release the lock whatever
        happens."""
        try:
            meta = writer.meta()
            base_seconds = float(meta.get("build_seconds", 0.0)) if mode == "resume" else (
                float(meta.get("build_seconds", 0.0)) if mode == "append" else 0.0)
            new_tokens = sum(p.n_tokens for p in plans)
            self.write_segments(writer, loaded, plans, docs, base_seconds)
            self.publish(writer, base_seconds)
            n_docs, n_tokens = writer.extent()
            states = tuple(name for name, *_ in writer.states())
            n_segments = len(writer.segments("live"))
        finally:
            writer.close()
        return BuildResult(
            path=self.out, mode=mode, n_docs=n_docs, n_tokens=n_tokens,
            new_docs=sum(p.n_docs for p in plans), new_tokens=new_tokens,
            n_segments=n_segments, states=states, seconds=time.perf_counter() - self.started,
            extract_seconds=self.extract_seconds, store_seconds=self.store_seconds,
            finalize_seconds=self.finalize_seconds, skipped=skipped,
            tracks=self.tracks, untokenized=self.untokenized,
        )

    def write_segments(self, writer: IndexWriter, loaded: LoadedModel,
                       plans: Sequence[SegmentPlan], docs: Sequence[PlannedDoc],
                       base_seconds: float) -> None:
        """Run the model over each planned segment here; store and list it on a second thread.

        The model's blocks of states (`iter_states`: lanes x chunk steps) go straight into the
        segment's state files, so memory holds a few blocks, not a segment. After a segment's
        last block its rows, partial statistics and FAISS index are written and it is listed
        in the manifest, while the model already runs on the next segment: disk and database
        time hide behind the model. The tokens' surprisal (one float each) is gathered per
        segment and stored with it.
        """
        if not plans:
            return
        states = writer.states()
        names = [name for name, *_ in states]
        codebooks = load_codebooks(writer.path, writer.live_files("codebook"))
        first_doc = plans[0].doc_start
        bar = progress_bar(sum(p.n_tokens for p in plans), self.progress, "indexing")
        open_segments: dict[int, SegmentWriter] = {}
        # segment -> track -> its tokens' values: the surprisal, an attention model's attention
        gathered: dict[int, dict[str, np.ndarray]] = {}

        def store(step: str, plan: SegmentPlan, *item) -> None:
            t0 = time.perf_counter()
            if plan.number not in open_segments:
                open_segments[plan.number] = SegmentWriter(self.out, plan, states, codebooks)
            segment = open_segments[plan.number]
            if step == "block":
                doc_starts, block = item
                gather_block_tracks(block, doc_starts, plan,
                                    gathered.setdefault(plan.number, {}))
                for name, values in block.states.items():
                    for j, doc in enumerate(block.docs):
                        n = int(block.lengths[j])
                        segment.write_block(name, int(doc_starts[doc] + block.starts[j]),
                                            values[j, :n], block.unit_offset)
            else:
                (segment_docs,) = item
                tracks = gathered.pop(plan.number, {})
                if self.surprisal:
                    tracks.setdefault(SURPRISAL_TRACK,
                                      np.full(plan.n_tokens, np.nan, dtype=np.float32))
                written = segment.finish(segment_docs, tracks, faiss=self.faiss)
                del open_segments[plan.number]
                writer.add_segment(written, base_seconds + time.perf_counter() - self.started)
            self.store_seconds += time.perf_counter() - t0
            if step == "commit":
                bar.update(plan.n_tokens)
                if self.on_segment is not None:
                    self.on_segment(plan.number)

        try:
            with bar, Committer(store) as committer:
                for plan in plans:
                    t0 = time.perf_counter()
                    segment_docs = docs[plan.doc_start - first_doc : plan.doc_end - first_doc]
                    lengths = np.array([len(d) for d in segment_docs], dtype=np.int64)
                    doc_starts = plan.tok_start + np.concatenate([[0], np.cumsum(lengths)[:-1]])
                    blocks = iter_states(loaded.model, [d.ids for d in segment_docs], names,
                                         chunk=self.chunk, lanes=self.lanes,
                                         surprisal=self.surprisal, stored=True)
                    for block in blocks:
                        committer.submit("block", plan, doc_starts, block)
                    committer.submit("commit", plan, segment_docs)
                    self.extract_seconds += time.perf_counter() - t0
        finally:
            for segment in open_segments.values():
                segment.abort()
        self.extract_seconds -= committer.waited

    def publish(self, writer: IndexWriter, base_seconds: float) -> None:
        """Merge the pending segments' partial statistics into the index's and make them
        live, in one manifest transaction."""
        t0 = time.perf_counter()
        merged = merge_pending_stats(writer, self.progress)
        self.finalize_seconds += time.perf_counter() - t0
        write_stats_and_publish(writer, merged, base_seconds + time.perf_counter() - self.started)


def merge_pending_stats(writer: IndexWriter, progress: bool | None = None
                        ) -> dict[str, PartialStats]:
    """The index-wide partial statistics after adding the pending segments: the previous
    merged file plus each pending segment's `partial.npz` (histograms add, top-K merge; a
    segment written by an older version keeps them in its `stats.npz`)."""
    root = writer.path
    previous = [p for seg, p, *_ in writer.live_files("stats") if seg is None]
    pending = {p.number for p, _ in writer.segments("pending")}
    parts_files = [root / p for seg, p, *_ in writer.live_files("partial") + writer.live_files("stats")
                   if seg is not None and seg in pending]
    loaded = [load_partials(root / previous[0])] if previous else []
    merged: dict[str, PartialStats] = {}
    names = [name for name, *_ in writer.states()]
    bar = progress_bar(len(names), progress, "statistics", unit="state")
    with bar:
        new = [load_partials(path) for path in parts_files]
        for name in names:
            parts = [p[name] for p in loaded + new if name in p]
            if parts:
                merged[name] = parts[0] if len(parts) == 1 else merge_partials(parts)
            bar.update(1)
    return merged


def write_stats_and_publish(writer: IndexWriter, merged: dict[str, PartialStats],
                            build_seconds: float) -> int:
    """Save the merged statistics as a new file, then publish the pending segments."""
    root = writer.path
    version = int(writer.meta().get("manifest_version", 0)) + 1
    stats_file = None
    stats = {}
    if merged:
        (root / STATS_DIR).mkdir(exist_ok=True)
        stats_file = root / STATS_DIR / f"stats-v{version}.npz"
        save_partials(stats_file, merged)
        with open(stats_file, "rb+") as f:
            os.fsync(f.fileno())
        layer_kind = {name: (layer, kind) for name, layer, kind, _ in writer.states()}
        stats = {name: (*layer_kind[name], stats_of(part)) for name, part in merged.items()}
    return writer.publish(stats_file, stats, build_seconds)


# --- helpers -----------------------------------------------------------------------------


def claim_new(out: Path) -> IndexWriter:
    """The write lock of the directory of a new index, taken before anything in it is
    touched; what a build killed before saving its plan left there is removed."""
    if out.exists() and not out.is_dir():
        raise BuildError(f"{out} already exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    writer = IndexWriter(out)
    try:
        if any(child.name != LOCK_FILE for child in out.iterdir()):
            if is_leftover(out) and not has_plan(out):
                start_over(out)
            else:
                hint = ("use --resume to finish its build or --append to add documents"
                        if (out / DB_FILE).exists() else "choose a new directory")
                raise BuildError(f"{out} already exists and is not empty: {hint}")
    except BaseException:
        writer.close()
        raise
    return writer


def open_complete(out: Path) -> tuple[IndexWriter, dict[str, str]]:
    """The write lock and meta of a complete index, to append to it."""
    if not (out / DB_FILE).exists():
        raise BuildError(f"no index to append to at {out}; build one first")
    writer = IndexWriter.connect(out)
    try:
        if not writer.has_schema():
            raise BuildError(f"the index at {out} was never completed; use --resume")
        meta = writer.meta()
        if meta.get("status") != STATUS_COMPLETE or writer.segments("planned", "pending"):
            raise BuildError(f"the index at {out} is incomplete: finish it with "
                             f"`lstmsearch index --resume {out}` before appending")
    except BaseException:
        writer.close()
        raise
    return writer, meta


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


ROW_BYTES = 24
"""About what a token's row (position, document, offsets, id, text) takes in rows.duckdb."""
TRACK_BYTES = 16
"""About what one track value (the surprisal) takes per token."""


def estimate_bytes(n_tokens: int, dims: Sequence[int], faiss: bool, compressed: bool,
                   surprisal: bool) -> int:
    """About how many bytes `n_tokens` new tokens take on disk: float16 states, FAISS codes
    (dim / 8 bytes each compressed, 2 x dim exact), rows and the surprisal track. The
    statistics, model and database add a few percent more."""
    per_token = sum(2 * d for d in dims) + ROW_BYTES + (TRACK_BYTES if surprisal else 0)
    if faiss:
        per_token += sum(max(1, d // 8) if compressed else 2 * d for d in dims)
    return n_tokens * per_token


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def codebook_sample(model: torch.nn.Module, docs: Sequence[np.ndarray], names: Sequence[str],
                    tokens: int = CODEBOOK_TOKENS, lanes: int = 64) -> dict[str, np.ndarray]:
    """The stored values (clipped, rounded to float16) of every state over about `tokens`
    tokens, as float32 (tokens, dim): what the codebooks are trained on. They are the
    prefixes of the first documents, `tokens / lanes` tokens of each (all of a shorter one),
    run side by side: one block of the model rather than a few long documents in a few
    lanes. The first documents make the sample the same for every engine and every resume."""
    per_doc = -(-tokens // max(1, min(lanes, len(docs))))
    prefix, total = [], 0
    for ids in docs:
        if total >= tokens:
            break
        prefix.append(np.asarray(ids[:per_doc]))
        total += len(prefix[-1])
    states = extract(model, prefix, names, lanes=max(1, len(prefix)))
    return {name: to_stored(np.concatenate([s[name] for s in states])).T.float().numpy()
            for name in names}


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


LEFTOVERS = {DB_FILE, DB_FILE + ".wal", MODEL_FILE, MODEL_FILE + ".tmp", SEGMENTS_DIR,
             STATS_DIR, BUILD_DIR, LOCK_FILE, CODEBOOKS_DIR}


def is_leftover(out: Path) -> bool:
    """Whether `out` holds nothing but what an interrupted build writes."""
    return all(child.name in LEFTOVERS for child in out.iterdir())


def has_plan(out: Path) -> bool:
    """Whether the index at `out` got as far as listing its planned segments."""
    import duckdb

    if not (out / DB_FILE).is_file():
        return False
    try:
        con = duckdb.connect(str(out / DB_FILE), read_only=True)
    except duckdb.Error as exc:
        if "lock" in str(exc).lower():
            raise BuildError(f"index {out} is in use by another process; try again when it "
                             "has finished") from exc
        written = [c for c in (out / SEGMENTS_DIR).glob("seg-*") if not c.name.endswith(".tmp")]
        if written:
            raise BuildError(f"the database of {out} is damaged but segments were written: "
                             "remove the directory to rebuild, or choose a new one") from exc
        return False  # a database the kill left unreadable before any segment was written
    try:
        tables = {n for (n,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if "segments" not in tables:
            return False
        ((n,),) = con.execute("SELECT count(*) FROM segments").fetchall()
        return bool(n)
    finally:
        con.close()


def start_over(out: Path) -> None:
    """Remove what a build that never committed its plan left behind (not the lock)."""
    for child in out.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir():
            shutil.rmtree(child)
        else:
            child.unlink()

"""The calls the views make into the Python API, as pure functions of their parameters.

Each function takes the shared `Index` and plain values, calls `lstmsearch` (the index and
`lstmsearch.query`), and returns plain data the views draw. They run in the server's thread
pool, never touch Bokeh models, and hold no query logic of their own: selection, matching,
nearest states and neuron queries are the API's.
"""

from __future__ import annotations

import json
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmsearch import query
from lstmsearch.attention import offset_track, weight_track
from lstmsearch.index import Index
from lstmsearch.thresholds import (
    StateScale,
    Suggestion,
    state_scale,
    suggest_threshold,
    unit_threshold,
)

MATCH_CONTEXT = 5
"""Tokens of context shown before each match (and after it, up to the row's width)."""
RECENT_RESULTS = 64
"""Query results a server keeps for its sessions (`Shared.recent`), latest first."""


class Shared:
    """What every session of one server shares: the open index and per-index caches.

    Annotation tracks are read once (they are small: one float per token) and kept.
    """

    def __init__(self, index: Index, other: Index | None = None) -> None:
        self.index = index
        self.other = other  # the index `serve --compare` compares this one with
        self._tracks: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()
        self.char_level = index.meta.get("tokenizer_kind", "char") == "char"
        self.track_names: list[str] = list(index.track_names())
        names = index.state_names
        self.state_names: list[str] = list(names() if callable(names) else names)
        self.value_range: dict[str, tuple[float, float]] = {}
        self.cache: dict[Any, Any] = {}
        self._recent: OrderedDict[Any, Any] = OrderedDict()
        self.open_sessions = 0
        self.apps: weakref.WeakSet[Any] = weakref.WeakSet()  # the sessions' apps, while alive
        try:
            self.model_config: dict[str, Any] = json.loads(index.meta.get("model_config", "{}"))
        except ValueError:
            self.model_config = {}

    def model(self):
        """The index's model (`model.pt` beside the index files), loaded once per server.

        Its weights are frozen: the analyses take gradients with respect to inputs and
        states only, so sessions can share one model. Torch runs on one thread from then on. A ValueError when the index has no
        model (an index of stored states).
        """
        from lstmsearch.analysis import MODEL_FILE

        with self._lock:
            if "model" not in self.cache:
                path = self.index.path / MODEL_FILE
                if not path.is_file():
                    raise ValueError(
                        f"index {self.index.path.name} has no {MODEL_FILE} (it was built from "
                        "stored states), so analyses that run the model are not available"
                    )
                import torch

                from lstmsearch.models import load_model

                # queries of many sessions run side by side in the pool: one torch thread
                # each, or they wait on each other (40x slower measured on 2 busy cores)
                torch.set_num_threads(1)
                loaded = load_model(path)
                loaded.model.eval()
                loaded.model.requires_grad_(False)
                self.cache["model"] = loaded
            return self.cache["model"]

    def remember(self, key: Any, compute: Callable[[], Any]) -> tuple[Any, bool]:
        """`compute()` once per server for `key` (kept in `cache`), and whether it came from
        there. The work runs outside the lock, so other sessions are not held up by it."""
        with self._lock:
            if key in self.cache:
                return self.cache[key], True
        value = compute()
        with self._lock:
            return self.cache.setdefault(key, value), False

    def session_opened(self) -> int:
        """Count a new browser session; the number now open."""
        with self._lock:
            self.open_sessions += 1
            return self.open_sessions

    def session_closed(self) -> int:
        """Count a session the server discarded; the number still open."""
        with self._lock:
            self.open_sessions = max(0, self.open_sessions - 1)
            return self.open_sessions

    def recent(self, key: Any, compute: Callable[[], Any]) -> Any:
        """`compute()` for `key`, kept among the RECENT_RESULTS latest such results of the
        server (a query that several sessions run at once, or again, is computed once;
        the index is a snapshot, so a kept result stays right)."""
        with self._lock:
            if key in self._recent:
                self._recent.move_to_end(key)
                return self._recent[key]
        value = compute()
        with self._lock:
            self._recent[key] = value
            while len(self._recent) > RECENT_RESULTS:
                self._recent.popitem(last=False)
        return value

    def recall(self, key: Any) -> Any:
        """What `remember` kept for `key`, or None (never computes)."""
        with self._lock:
            return self.cache.get(key)

    def place(self, start: int) -> dict[str, Any]:
        """Where token `start` is: its document, the document's name, and the position in
        it (MatchRow's fields)."""
        doc = int(self.index.doc_of(start))
        return {"document": doc, "doc_name": self.doc_name(doc),
                "offset": int(start - self.index.doc_starts[doc])}

    def doc_name(self, doc: int) -> str:
        """The name of document `doc` (all names are read once)."""
        with self._lock:
            if "doc_names" not in self.cache:
                self.cache["doc_names"] = [d.name for d in self.index.documents()]
            names = self.cache["doc_names"]
        return names[doc] if 0 <= doc < len(names) else f"document {doc}"

    def track(self, name: str | None) -> np.ndarray | None:
        """Values of annotation track `name` per token (None for no track)."""
        if not name:
            return None
        with self._lock:
            if name not in self._tracks:
                self._tracks[name] = np.asarray(self.index.track(name), dtype=np.float64)
            return self._tracks[name]

    def track_range(self, name: str | None) -> tuple[float, float] | None:
        """(min, max) of a track, for its colour scale."""
        values = self.track(name)
        if values is None or not np.isfinite(values).any():
            return None
        return float(np.nanmin(values)), float(np.nanmax(values))

    def scale(self, state: str) -> StateScale:
        """Where the values of `state` lie (quantiles of |x|, the y axis range), computed once
        per server and state."""
        scale, _ = self.remember(("scale", state), lambda: state_scale(self.index.store(state)))
        return scale

    def values_range(self, state: str) -> tuple[float, float]:
        """A typical value range of `state`, for the threshold slider and histograms.

        From the stored per-unit statistics: the 10th percentile over units of their 1st
        percentiles to the 90th percentile of their 99th, widened to include [-1, 1] (the
        range of tanh-bounded states), so a few extreme units do not squash the scale.
        """
        with self._lock:
            if state not in self.value_range:
                store = self.index.store(state)
                result = self.index.sql(
                    "SELECT quantile_cont(q01, 0.1), quantile_cont(q99, 0.9) FROM unit_stats "
                    "WHERE layer = ? AND kind = ?",
                    [store.layer, store.kind],
                )
                low, high = result.rows[0] if result.rows else (None, None)
                if low is None or high is None or not np.isfinite([low, high]).all():
                    low, high = -1.0, 1.0
                self.value_range[state] = (
                    round(min(-1.0, float(low)), 2), round(max(1.0, float(high)), 2)
                )
            return self.value_range[state]


# --- surprisal of each token (the select view's strip, the surprisal view) ------------------

SURPRISAL_SCALE_QUANTILE = 0.99
"""The colour scale of surprisal runs from 0 to this quantile of the index's values, so that
a few extreme tokens do not wash out the rest."""
SURPRISAL_VALUES = ("surprisal-values",)
"""Key in `shared.cache` of (surprisal of every token, "stored" or "computed", seconds)."""


def has_stored_surprisal(shared: Shared) -> bool:
    """Whether the index stores each token's surprisal (the indexer writes it for every
    index built from a language model)."""
    from lstmsearch.analysis.surprisal import SURPRISAL_TRACK

    return SURPRISAL_TRACK in shared.track_names


def surprisal_values(shared: Shared) -> tuple[np.ndarray, str, float]:
    """(surprisal of every token, "stored" or "computed", seconds it took).

    The index's stored track when it has one; else computed once per server with the
    index's model (a pass of the model over every token) and kept in `shared.cache`.
    """
    from lstmsearch.analysis.surprisal import SURPRISAL_TRACK, index_surprisal

    def compute() -> tuple[np.ndarray, str, float]:
        t0 = time.perf_counter()
        if has_stored_surprisal(shared):
            values, source = shared.track(SURPRISAL_TRACK), "stored"
        else:
            values, source = index_surprisal(shared.index, shared.model()), "computed"
        return values, source, time.perf_counter() - t0

    found, _ = shared.remember(SURPRISAL_VALUES, compute)
    return found


def surprisal_scale(shared: Shared, values: np.ndarray) -> tuple[float, float]:
    """The colour scale of surprisal, (0, a high quantile of `values`), kept per server."""

    def compute() -> tuple[float, float]:
        finite = values[np.isfinite(values)]
        high = float(np.quantile(finite, SURPRISAL_SCALE_QUANTILE)) if finite.size else 1.0
        return 0.0, max(high, 1e-6)

    scale, _ = shared.remember(("surprisal-scale",), compute)
    return scale


def window_surprisal(
    shared: Shared, start: int, end: int
) -> tuple[np.ndarray, tuple[float, float]] | None:
    """Surprisal of tokens [start, end) and its colour scale, for the select view's strip.

    Only when it costs nothing: the index's stored track, or values this server already
    computed for the surprisal view; None otherwise (a window never waits for the model).
    """
    if has_stored_surprisal(shared):
        values, _, _ = surprisal_values(shared)
    else:
        found = shared.recall(SURPRISAL_VALUES)
        if found is None:
            return None
        values = found[0]
    return values[start:end], surprisal_scale(shared, values)


# --- select view ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """Tokens [start, end) with the values of every unit of one state over them."""

    state: str
    start: int
    end: int
    texts: tuple[str, ...]
    docs: np.ndarray
    values: np.ndarray  # (dim, end - start) float32
    track: np.ndarray | None
    doc_bounds: tuple[tuple[int, int, str], ...]  # (position, document, name) of each doc start
    surprisal: np.ndarray | None = None  # nats per token (NaN at a document's first token)
    surprisal_range: tuple[float, float] | None = None  # its colour scale
    # an attention model's strongest look of each token: offset back and weight (NaN: none)
    attention: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def positions(self) -> np.ndarray:
        return np.arange(self.start, self.end)


def load_window(shared: Shared, state: str, start: int, end: int, track: str | None) -> Window:
    """The tokens and state values of [start, end) (clipped to the index), with their
    surprisal when it is at hand (`window_surprisal`)."""
    index = shared.index
    start = int(np.clip(start, 0, max(0, index.n_tokens - 1)))
    end = int(np.clip(end, start + 1, index.n_tokens))
    tokens = index.tokens(start, end)
    values = np.asarray(index.store(state).block(slice(None), start, end), dtype=np.float32)
    track_values = shared.track(track)
    docs = np.asarray(tokens.doc, dtype=np.int64)
    first_doc, last_doc = int(docs[0]), int(docs[-1])
    bounds = []
    for doc in range(first_doc, min(last_doc, first_doc + 64) + 1):
        pos = int(index.doc_starts[doc])
        bounds.append((max(pos, start), doc, shared.doc_name(doc)))
    found = window_surprisal(shared, start, end)
    attention = None
    if has_attention(shared):
        attention = (shared.track(offset_track(1))[start:end],
                     shared.track(weight_track(1))[start:end])
    return Window(
        state=state, start=start, end=end, texts=tokens.text, docs=docs, values=values,
        track=None if track_values is None else track_values[start:end],
        doc_bounds=tuple(bounds),
        surprisal=None if found is None else found[0],
        surprisal_range=None if found is None else found[1],
        attention=attention,
    )


def attention_stored(shared: Shared) -> Any:
    """The index's stored attention (`attention.stored_attention`), read once per server."""
    from lstmsearch.attention import stored_attention

    return shared.remember(("attention-stored",), lambda: stored_attention(shared.index))[0]


def has_attention(shared: Shared) -> bool:
    """Whether the index stores an attention model's attention (its tracks)."""
    return offset_track(1) in shared.track_names and weight_track(1) in shared.track_names


def document_window(shared: Shared, doc: int, width: int) -> tuple[int, int]:
    """The first window of document `doc`."""
    index = shared.index
    if not 0 <= doc < index.n_docs:
        raise ValueError(f"document {doc} out of range: the index has documents 0..{index.n_docs - 1}")
    start = int(index.doc_starts[doc])
    return start, min(index.n_tokens, start + width)


def find_phrase(shared: Shared, phrase: str, limit: int = 100) -> list[tuple[int, int]]:
    """Token spans [start, end) where `phrase` occurs, in corpus order (the API's search)."""
    index = shared.index
    finder = getattr(index, "find", None)
    if finder is None:
        raise ValueError("phrase search is not available in this version of lstmsearch")
    hits = finder(phrase, limit=limit)
    return [(int(h.start), int(h.end)) if hasattr(h, "start") else (int(h[0]), int(h[1]))
            for h in hits]


# --- patterns and matches ------------------------------------------------------------------


@dataclass(frozen=True)
class PatternQuery:
    """What the select view asks: a span, a state, a threshold, padding and a sign."""

    state: str
    start: int
    end: int
    threshold: float
    pad_left: int = 1
    pad_right: int = 0
    sign: int = 1
    limit: int = 50
    min_length: int | None = None
    length: int | None = None


@dataclass(frozen=True)
class MatchRow:
    """One ranked result with the tokens around it, ready to draw as a strip."""

    rank: int
    document: int
    start: int
    end: int
    anchor: int
    positions: np.ndarray
    texts: tuple[str, ...]
    values: np.ndarray  # per token: match count (NaN outside the match) or a score
    emphasis: np.ndarray  # per token: inside the match
    track: np.ndarray | None
    overlap: int | None = None
    extra: int | None = None
    score: float | None = None  # nearest: distance; neuron: the unit's value at the anchor
    is_query: bool = False
    doc_name: str = ""  # the document's name (its file name or id)
    offset: int = 0  # the row's first token, counted from its document's start


@dataclass(frozen=True)
class PatternResult:
    """The pattern S of a selection and its ranked matches (None when S is empty); when S
    is empty, the thresholds that would select something (the query's sign first)."""

    pattern: Any
    result: Any
    rows: tuple[MatchRow, ...]
    seconds: float
    suggestions: tuple[Suggestion, ...] = ()


def select(shared: Shared, q: PatternQuery) -> Any:
    """The pattern S of a span (`Index.select` when the index has it, else `query.select`)."""
    index = shared.index
    method = getattr(index, "select", None)
    if method is not None:
        return method(q.start, q.end, threshold=q.threshold, state=q.state,
                      pad_left=q.pad_left, pad_right=q.pad_right, sign=q.sign)
    return query.select(index.store(q.state), index.doc_starts, q.start, q.end, q.threshold,
                        pad_left=q.pad_left, pad_right=q.pad_right, sign=q.sign)


def suggestions(shared: Shared, q: PatternQuery) -> tuple[Suggestion, ...]:
    """The thresholds at which the query's span would select some unit: for its sign, then
    for the other (`lstmsearch.thresholds.suggest_threshold`)."""
    index = shared.index
    found = (suggest_threshold(index.store(q.state), index.doc_starts, q.start, q.end,
                               q.pad_left, q.pad_right, sign) for sign in (q.sign, -q.sign))
    return tuple(s for s in found if s is not None)


def match(shared: Shared, pattern: Any, limit: int, min_length: int | None = None,
          length: int | None = None, histogram: bool = True) -> Any:
    """The ranked matches of a pattern (`Index.match` when present, else `query.match`);
    `histogram=False` leaves the candidates' lengths out (`candidate_lengths`)."""
    index = shared.index
    method = getattr(index, "match", None)
    if method is not None:
        return method(pattern, limit=limit, min_length=min_length, length=length,
                      histogram=histogram)
    return query.match(index.store(pattern.state), index.doc_starts, pattern, limit=limit,
                       fuzzy=True, min_length=min_length, length=length, histogram=histogram)


def candidate_lengths(shared: Shared, pattern: Any, q: PatternQuery) -> tuple[dict[int, int], int]:
    """The length histogram of all candidates of a pattern and their number, asked for after
    the ranked rows are out."""
    result = match(shared, pattern, 1, q.min_length, q.length, histogram=True)
    return result.length_histogram, result.n_candidates


def token_texts(shared: Shared, spans: Sequence[tuple[int, int]]) -> list[tuple[str, ...]]:
    """The token texts of several spans [a, b), read in one go.

    `Index.tokens_at(positions)` when the index has it; else one read-only, parameterised
    query over the index's `tokens` table (one scan instead of a query per span: at 10^6
    tokens, about 5 ms for 50 rows against about 100 ms).
    """
    index = shared.index
    if not spans:
        return []
    positions = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in spans])
    unique = np.unique(positions)
    reader = getattr(index, "tokens_at", None)
    if reader is not None:
        found = reader(unique)
        texts = dict(zip((int(p) for p in found.pos), found.text))
    else:
        result = index.sql(
            "SELECT t.pos, t.text FROM tokens t "
            "SEMI JOIN (SELECT unnest(?::BIGINT[]) AS pos) p ON t.pos = p.pos",
            [unique.tolist()], max_rows=None,
        )
        texts = {int(p): t for p, t in result.rows}
    return [tuple(texts.get(int(p), "") for p in range(a, b)) for a, b in spans]


def rows_around(
    shared: Shared,
    spans: Sequence[tuple[int, int]],
    *,
    before: int,
    after: int,
    track: str | None,
) -> list[tuple[np.ndarray, tuple[str, ...], np.ndarray | None]]:
    """(positions, token texts, track values) of each span widened by context, per document."""
    index = shared.index
    track_values = shared.track(track)
    widened = []
    for start, end in spans:
        doc = index.doc_of(start)
        first, stop = int(index.doc_starts[doc]), int(index.doc_starts[doc + 1])
        widened.append((max(first, start - before), min(stop, end + after)))
    texts = token_texts(shared, widened)
    return [
        (np.arange(a, b), t, None if track_values is None else track_values[a:b])
        for (a, b), t in zip(widened, texts)
    ]


def run_pattern(shared: Shared, q: PatternQuery, track: str | None, width: int) -> PatternResult:
    """Select S on the span, then match it; the matches come with their tokens to draw.
    Kept among the server's recent results (sessions often brush the same spans)."""
    return shared.recent(("pattern", q, track, width),
                         lambda: _run_pattern(shared, q, track, width))


def _run_pattern(shared: Shared, q: PatternQuery, track: str | None, width: int) -> PatternResult:
    t0 = time.perf_counter()
    pattern = select(shared, q)
    if not pattern.units:
        return PatternResult(pattern, None, (), time.perf_counter() - t0,
                             suggestions(shared, q))
    result = match(shared, pattern, q.limit, q.min_length, q.length, histogram=False)
    spans = [(m.start, m.end) for m in result.matches]
    contexts = rows_around(shared, spans, before=MATCH_CONTEXT,
                           after=max(MATCH_CONTEXT, width), track=track)
    rows = []
    for rank, (m, (positions, texts, track_values)) in enumerate(
        zip(result.matches, contexts), start=1
    ):
        inside = (positions >= m.start) & (positions < m.end)
        values = np.full(len(positions), np.nan)
        values[inside] = np.asarray(m.counts, dtype=np.float64)
        rows.append(MatchRow(
            rank=rank, start=int(m.start), end=int(m.end),
            anchor=int(m.start), positions=positions, texts=texts, values=values,
            emphasis=inside, track=track_values, overlap=int(m.overlap), extra=int(m.extra),
            is_query=bool(m.is_query), **shared.place(int(m.start)),
        ))
    return PatternResult(pattern, result, tuple(rows), time.perf_counter() - t0)


def span_rows(shared: Shared, spans: list[tuple[int, int]], scores: list[float],
              query: tuple[int, int], track: str | None, width: int) -> list[MatchRow]:
    """Rows of ranked spans with no pattern (nearest states, spans that attend alike): each
    span marked inside its context, its score beside it."""
    contexts = rows_around(shared, spans, before=MATCH_CONTEXT,
                           after=max(MATCH_CONTEXT, width), track=track)
    rows = []
    for rank, ((s, e), score, (positions, texts, track_values)) in enumerate(
        zip(spans, scores, contexts, strict=True), start=1
    ):
        inside = (positions >= s) & (positions < e)
        rows.append(MatchRow(
            rank=rank, start=s, end=e, anchor=s, positions=positions, texts=texts,
            values=np.where(inside, 1.0, np.nan), emphasis=inside, track=track_values,
            score=score, is_query=(s, e) == tuple(query), **shared.place(s),
        ))
    return rows


def run_attends_like(
    shared: Shared, start: int, end: int, k: int, track: str | None, width: int
) -> PatternResult:
    """The k spans whose tokens attend most like the span's (`attention.attends_like`), the
    offset vectors built once per server."""
    from lstmsearch.attention import attends_like, offset_vectors

    t0 = time.perf_counter()
    vectors, _ = shared.remember(("attention-offset-vectors",),
                                 lambda: offset_vectors(shared.index, attention_stored(shared)))
    found = attends_like(shared.index, start, end, limit=k, vectors=vectors)
    rows = span_rows(shared, [(m.start, m.end) for m in found], [m.score for m in found],
                     (start, end), track, width)
    return PatternResult(None, found, tuple(rows), time.perf_counter() - t0)


def run_nearest(
    shared: Shared, state: str, start: int, end: int, k: int, track: str | None, width: int
) -> PatternResult:
    """The k nearest stored states to the span's mean state (`Index.nearest`, FAISS)."""
    t0 = time.perf_counter()
    index = shared.index
    method = getattr(index, "nearest", None)
    if method is None:
        raise ValueError("nearest-state search is not available in this version of lstmsearch")
    store = index.store(state)
    result = method(start, end, store.layer, store.kind, k)
    hits = list(getattr(result, "hits", getattr(result, "matches", result)))
    spans = [(int(h.start), int(getattr(h, "end", h.start + 1))) for h in hits]
    scores = [float(getattr(h, "distance", getattr(h, "score", np.nan))) for h in hits]
    rows = span_rows(shared, spans, scores, (start, end), track, width)
    return PatternResult(None, result, tuple(rows), time.perf_counter() - t0)


# --- neurons -------------------------------------------------------------------------------

NEURON_CONTEXT = 8
"""Tokens of context on each side of a top activation or threshold hit."""
HIST_BINS = 60
HIT_POSITIONS = 1000
"""Threshold hits read to group into runs for display (the total count is always exact)."""
CORPUS_BINS = 240
"""Bins of the plot of where a unit is on over the corpus."""


@dataclass(frozen=True)
class NeuronQuery:
    """What the neuron view asks about one unit: on where x ≥ threshold (sign 1) or
    x ≤ −threshold (sign −1); threshold None: the unit's own default (`unit_threshold`)."""

    state: str
    unit: int
    threshold: float | None
    sign: int = 1
    top: int = 20
    hits: int = 20


@dataclass(frozen=True)
class NeuronData:
    """One unit: its statistics, value histogram, top contexts, threshold hits and how many
    hits fall into each stretch of the corpus (`corpus_edges`: token positions)."""

    query: NeuronQuery
    threshold: float
    stats: dict[str, float]
    hist_edges: np.ndarray
    hist_counts: np.ndarray
    top_rows: tuple[MatchRow, ...]
    n_hits: int
    hit_rows: tuple[MatchRow, ...]
    value_range: tuple[float, float]
    seconds: float
    corpus_edges: np.ndarray
    corpus_counts: np.ndarray


def unit_stats(shared: Shared, state: str, unit: int) -> dict[str, float]:
    """Stored statistics of one unit (mean, std, min, max, quantiles)."""
    index = shared.index
    neurons = getattr(index, "neurons", None)
    store = index.store(state)
    unit = store.check_unit(unit)
    if neurons is not None and hasattr(neurons, "stats"):
        stats = neurons.stats(unit, store.layer, store.kind)
        if isinstance(stats, dict):
            return {k: float(v) for k, v in stats.items() if isinstance(v, (int, float))}
        return {k: float(v) for k, v in vars(stats).items() if isinstance(v, (int, float))}
    result = index.sql(
        "SELECT * FROM unit_stats WHERE layer = ? AND kind = ? AND unit = ?",
        [store.layer, store.kind, unit],
    )
    row = result.to_dicts()[0] if result.rows else {}
    return {k: float(v) for k, v in row.items() if k not in ("layer", "kind", "unit")}


def unit_top(shared: Shared, state: str, unit: int, k: int, lowest: bool) -> tuple[np.ndarray, np.ndarray]:
    """Positions and values of the unit's k highest (or lowest) stored values."""
    index = shared.index
    store = index.store(state)
    neurons = getattr(index, "neurons", None)
    if neurons is not None and hasattr(neurons, "top"):
        result = neurons.top(unit, store.layer, store.kind, k, lowest=lowest, context=0)
        positions = getattr(result, "positions", None)
        if positions is None:
            positions = [h.pos if hasattr(h, "pos") else h.position for h in result]
            values = [h.value for h in result]
        else:
            values = result.values
        return np.asarray(positions, np.int64)[:k], np.asarray(values, np.float64)[:k]
    positions, values = index.unit_top(state, unit=unit, lowest=lowest)
    return positions[:k], values[:k].astype(np.float64)


def unit_hits(shared: Shared, state: str, unit: int, threshold: float, sign: int,
              limit: int) -> tuple[int, np.ndarray]:
    """(number of positions where the unit is on, the first `limit` of them)."""
    index = shared.index
    store = index.store(state)
    neurons = getattr(index, "neurons", None)
    if neurons is not None and hasattr(neurons, "where"):
        kwargs = {"above": threshold} if sign > 0 else {"below": -threshold}
        result = neurons.where(unit, store.layer, store.kind, limit=limit, context=0, **kwargs)
        positions = getattr(result, "positions", None)
        if positions is None:
            positions = [h.pos if hasattr(h, "pos") else h.position for h in result]
        total = int(getattr(result, "count", getattr(result, "total", len(positions))))
        return total, np.asarray(positions, np.int64)[:limit]
    on = query.is_on(store.column(unit), threshold, sign)
    positions = np.flatnonzero(on)
    return int(positions.size), positions[:limit]


def distinct_contexts(positions: np.ndarray, width: int, k: int) -> np.ndarray:
    """Indices of the first `k` positions whose context windows (± width) do not overlap an
    earlier one: a unit's top values often sit next to each other, one row each is enough."""
    chosen: list[int] = []
    taken: list[int] = []
    for i, p in enumerate(positions):
        if all(abs(int(p) - t) > width for t in taken):
            chosen.append(i)
            taken.append(int(p))
            if len(chosen) == k:
                break
    return np.asarray(chosen, dtype=np.int64)


def runs_of(positions: np.ndarray) -> list[tuple[int, int]]:
    """Sorted positions grouped into runs of consecutive tokens, as spans [start, end)."""
    if positions.size == 0:
        return []
    breaks = np.flatnonzero(np.diff(positions) != 1) + 1
    starts = np.concatenate([[0], breaks])
    ends = np.concatenate([breaks, [positions.size]])
    return [(int(positions[a]), int(positions[b - 1]) + 1) for a, b in zip(starts, ends)]


def _context_rows(shared: Shared, state: str, unit: int, spans: Sequence[tuple[int, int]],
                  scores: Sequence[float], on_test: tuple[float, int] | None,
                  track: str | None) -> tuple[MatchRow, ...]:
    """Rows of tokens around each span, cells valued by the unit, anchored at the span start.

    Emphasis: the span itself (`on_test` None), or the cells where the unit is on.
    """
    index = shared.index
    column = index.store(state).column(unit)
    contexts = rows_around(shared, spans, before=NEURON_CONTEXT, after=NEURON_CONTEXT,
                           track=track)
    rows = []
    for rank, ((a, b), score, (pos, texts, track_values)) in enumerate(
        zip(spans, scores, contexts), start=1
    ):
        stored = np.asarray(column[pos[0] : pos[-1] + 1])
        if on_test is None:
            emphasis = (pos >= a) & (pos < b)
        else:
            emphasis = query.is_on(stored, *on_test)
        rows.append(MatchRow(
            rank=rank, start=a, end=b, anchor=a,
            positions=pos, texts=texts, values=stored.astype(np.float64),
            emphasis=np.asarray(emphasis, bool), track=track_values, score=float(score),
            **shared.place(a),
        ))
    return tuple(rows)


def neuron(shared: Shared, q: NeuronQuery, track: str | None) -> NeuronData:
    """Everything the neuron view shows about one unit."""
    t0 = time.perf_counter()
    index = shared.index
    store = index.store(q.state)
    unit = store.check_unit(q.unit)
    stats = unit_stats(shared, q.state, unit)
    threshold = q.threshold
    if threshold is None:
        threshold = unit_threshold(stats.get("q01", np.nan), stats.get("q99", np.nan), q.sign)
    low, high = stats.get("min", np.nan), stats.get("max", np.nan)
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        low, high = shared.values_range(q.state)
    edge = threshold if q.sign > 0 else -threshold
    low, high = min(low, edge), max(high, edge)
    column = np.asarray(store.column(unit), dtype=np.float32)
    counts, edges = np.histogram(column, bins=HIST_BINS, range=(low, high))
    top_pos, top_values = unit_top(shared, q.state, unit, 10 * q.top, lowest=q.sign < 0)
    pick = distinct_contexts(top_pos, NEURON_CONTEXT, q.top)
    top_rows = _context_rows(shared, q.state, unit,
                             [(int(p), int(p) + 1) for p in top_pos[pick]],
                             top_values[pick].tolist(), None, track)
    n_hits, hit_pos = unit_hits(shared, q.state, unit, threshold, q.sign, HIT_POSITIONS)
    on = np.flatnonzero(query.is_on(store.column(unit), threshold, q.sign))
    corpus_counts, corpus_edges = np.histogram(
        on, bins=max(1, min(CORPUS_BINS, index.n_tokens)), range=(0, max(1, index.n_tokens)))
    runs = runs_of(hit_pos)[: q.hits]
    hit_rows = _context_rows(shared, q.state, unit, runs,
                             [float(column[a:b].max() if q.sign > 0 else column[a:b].min())
                              for a, b in runs],
                             (threshold, q.sign), track)
    return NeuronData(
        query=q, threshold=threshold, stats=stats, hist_edges=edges, hist_counts=counts,
        top_rows=top_rows, n_hits=n_hits, hit_rows=hit_rows, value_range=(low, high),
        seconds=time.perf_counter() - t0, corpus_edges=corpus_edges,
        corpus_counts=corpus_counts,
    )


def correlations(shared: Shared, state: str, track: str, limit: int = 20) -> list[tuple[int, float]]:
    """Units of `state` ranked by |Pearson r| with annotation track `track`, strongest first
    (`Index.neurons.correlate`); computed once per (state, track) and kept."""
    store = shared.index.store(state)

    def compute() -> list[tuple[int, float]]:
        ranked = shared.index.neurons.correlate(track, store.layer, store.kind, top=100)
        return [(int(c.unit), float(c.r)) for c in ranked]

    pairs, _ = shared.remember(("correlate", state, track), compute)
    return pairs[:limit]


_SHARED: dict[str, tuple[Shared, Any]] = {}
_SHARED_LOCK = threading.Lock()


def shared_for(path: str) -> tuple[Shared, Any]:
    """The process-wide `Shared` index and query thread pool for an index path (opened once)."""
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path

    from lstmsearch.index import open_index

    key = str(Path(path).resolve())
    with _SHARED_LOCK:
        if key not in _SHARED:
            executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lstmsearch-query")
            _SHARED[key] = (Shared(open_index(key)), executor)
        return _SHARED[key]

"""Unit structure: what do units respond to, which units and words go together, and which
units track an annotation?

- Expected response (RNNVis, Ming et al. 2017): for a word w and unit u, the mean change of
  the unit when w is read, E[h_t(u) - h_{t-1}(u) | token_t = w], over the corpus (the state
  before a document's first token is zero, as in the model).
- Co-clustering of units and words: spectral co-clustering (Dhillon 2001) of the |response|
  matrix: scale it to D_w^{-1/2} |R| D_u^{-1/2}, take singular vectors 2 .. l+1
  (l = ceil(log2 k)) of both sides, and run seeded k-means on words and units together.
  Words and units in one cluster respond strongly to each other.
- Correlation ranking (NeuroX style): Pearson r of each unit with a per-token track (e.g.
  parens depth), NaN track values left out; streaming, so it runs on an index's memory-mapped
  float16 states.
- Over an index (`index_units`): the expected response over the first whole documents (at
  most `MAX_TOKENS` tokens), its co-clustering, and the ranking over every token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from lstmsearch.reader import IndexReader

CHUNK = 1 << 18  # tokens per block when streaming over states, at most
BLOCK_VALUES = 1 << 23
"""State values per block when streaming: a wide state gets fewer tokens per block, so a
pass needs tens of MB whatever the width (see `block_tokens`)."""


@dataclass(frozen=True)
class WordResponse:
    """Expected response of every unit to chosen words.

    `response[j, u]` is the mean change of unit u when `token_ids[j]` is read, over its
    `counts[j]` occurrences; `words[j]` its text.
    """

    token_ids: np.ndarray
    words: tuple[str, ...]
    counts: np.ndarray
    response: np.ndarray


@dataclass(frozen=True)
class Cluster:
    """One co-cluster: words and units that respond to each other."""

    index: int
    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    units: tuple[int, ...]


@dataclass(frozen=True)
class CoClustering:
    """Cluster labels of the rows (words) and columns (units) of a response matrix.

    `word_order` and `unit_order` list rows and columns grouped by cluster, ready to draw the
    matrix as a block heatmap.
    """

    n_clusters: int
    word_labels: np.ndarray
    unit_labels: np.ndarray
    word_order: np.ndarray
    unit_order: np.ndarray
    clusters: tuple[Cluster, ...]


@dataclass(frozen=True)
class UnitCorrelation:
    """Pearson correlation of one unit with a track, over `n` tokens with a track value."""

    unit: int
    r: float
    n: int


# --- expected response -----------------------------------------------------------------------


def block_tokens(width: int) -> int:
    """Tokens per block when streaming over states of `width` units."""
    return max(1, min(CHUNK, BLOCK_VALUES // max(1, int(width))))


def check_states(states: np.ndarray, token_ids: np.ndarray, doc_starts: np.ndarray | None):
    """Shapes agree; doc_starts defaults to one document."""
    token_ids = np.asarray(token_ids, dtype=np.int64)
    if states.ndim != 2 or states.shape[0] != len(token_ids):
        raise ValueError(
            f"states {states.shape} must be (tokens, units) for {len(token_ids)} tokens"
        )
    if doc_starts is None:
        doc_starts = np.array([0, len(token_ids)])
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    if doc_starts[0] != 0 or doc_starts[-1] != len(token_ids) or np.any(np.diff(doc_starts) < 0):
        raise ValueError(f"doc_starts must rise from 0 to {len(token_ids)}")
    return token_ids, doc_starts


def state_changes(states: np.ndarray, doc_starts: np.ndarray, start: int, end: int) -> np.ndarray:
    """h_t - h_{t-1} for t in [start, end), float32, with h_{-1} = 0 at document starts."""
    block = np.asarray(states[start:end], dtype=np.float32)
    prev = np.empty_like(block)
    prev[1:] = block[:-1]
    prev[0] = states[start - 1] if start > 0 else 0.0
    firsts = doc_starts[(doc_starts >= start) & (doc_starts < end)] - start
    prev[firsts] = 0.0
    return block - prev


def frequent_tokens(token_ids: np.ndarray, top: int, min_count: int = 1) -> np.ndarray:
    """The `top` most frequent token ids seen at least `min_count` times (ties by id)."""
    counts = np.bincount(token_ids) if len(token_ids) else np.zeros(0, dtype=np.int64)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return np.array([t for t in order[:top] if counts[t] >= max(min_count, 1)], dtype=np.int64)


def expected_response(
    states: np.ndarray,
    token_ids: np.ndarray,
    doc_starts: np.ndarray | None = None,
    *,
    words: Sequence[int] | None = None,
    top: int = 50,
    min_count: int = 1,
    vocab: Sequence[str] | None = None,
) -> WordResponse:
    """Mean Δh of every unit when each word is read (see the module docstring).

    `words` are token ids (default: the `top` most frequent ones); `vocab` maps ids to text.
    Streams over the states, so memory-mapped index states work.
    """
    token_ids, doc_starts = check_states(states, token_ids, doc_starts)
    if words is None:
        chosen = frequent_tokens(token_ids, top, min_count)
    else:
        chosen = np.asarray(words, dtype=np.int64)
    size = 1 + max(int(token_ids.max(initial=-1)), int(chosen.max(initial=-1)))
    row_of = np.full(size, -1, dtype=np.int64)
    row_of[chosen] = np.arange(len(chosen))
    sums = np.zeros((len(chosen), states.shape[1]), dtype=np.float64)
    counts = np.zeros(len(chosen), dtype=np.int64)
    step = block_tokens(states.shape[1])
    for a in range(0, len(token_ids), step):
        b = min(a + step, len(token_ids))
        rows = row_of[token_ids[a:b]]
        keep = np.flatnonzero(rows >= 0)
        if not len(keep):
            continue
        delta = state_changes(states, doc_starts, a, b)[keep]
        kept = rows[keep]
        # one weighted bincount per unit: float64 sums without a float64 copy of the block
        # (several times faster than sorting the block by word and reducing it)
        for u in range(delta.shape[1]):
            sums[:, u] += np.bincount(kept, weights=delta[:, u], minlength=len(chosen))
        counts += np.bincount(kept, minlength=len(chosen))
    with np.errstate(invalid="ignore", divide="ignore"):
        response = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], np.nan)
    texts = tuple(vocab[t] if vocab is not None and t < len(vocab) else str(t) for t in chosen)
    return WordResponse(chosen, texts, counts, response)


# --- co-clustering ----------------------------------------------------------------------------


def kmeans(x: np.ndarray, k: int, seed: int = 0, n_init: int = 10, iters: int = 100) -> np.ndarray:
    """Labels of the rows of x from k-means (k-means++ starts, best of `n_init`), seeded."""
    x = np.asarray(x, dtype=np.float64)
    if not 1 <= k <= len(x):
        raise ValueError(f"k must be in 1..{len(x)} (the number of points), got {k}")
    rng = np.random.default_rng(seed)
    best, best_inertia = None, np.inf
    for _ in range(n_init):
        centres = [x[rng.integers(len(x))]]
        for _ in range(1, k):  # k-means++: pick far points with probability ~ distance^2
            d2 = ((x[:, None] - np.array(centres)[None]) ** 2).sum(-1).min(1)
            p = d2 / d2.sum() if d2.sum() > 0 else np.full(len(x), 1 / len(x))
            centres.append(x[rng.choice(len(x), p=p)])
        c = np.array(centres)
        labels = np.zeros(len(x), dtype=np.int64)
        for it in range(iters):
            d2 = ((x[:, None] - c[None]) ** 2).sum(-1)
            new = d2.argmin(1)
            if it and np.array_equal(new, labels):
                break
            labels = new
            for j in range(k):
                if (labels == j).any():
                    c[j] = x[labels == j].mean(0)
        inertia = ((x - c[labels]) ** 2).sum()
        if inertia < best_inertia:
            best, best_inertia = labels.copy(), inertia
    return best


def co_cluster(
    matrix: np.ndarray,
    n_clusters: int,
    *,
    seed: int = 0,
    words: Sequence[str] | None = None,
    token_ids: Sequence[int] | None = None,
) -> CoClustering:
    """Spectral co-clustering of rows (words) and columns (units) of |matrix|.

    NaN entries count as 0. A row or column that is all zero is clustered with the others
    by a tiny uniform offset (it would otherwise divide by zero).
    """
    a = np.abs(np.nan_to_num(np.asarray(matrix, dtype=np.float64)))
    if a.ndim != 2 or min(a.shape) < 1:
        raise ValueError(f"need a (words, units) matrix, got shape {a.shape}")
    if not 2 <= n_clusters <= min(a.shape):
        raise ValueError(
            f"n_clusters must be in 2..{min(a.shape)} for a {a.shape} matrix, got {n_clusters}"
        )
    a = a + 1e-12 * max(a.max(), 1.0)
    d1, d2 = a.sum(1), a.sum(0)
    an = a / np.sqrt(d1)[:, None] / np.sqrt(d2)[None, :]
    u, _, vt = np.linalg.svd(an, full_matrices=False)
    n_vec = max(1, math.ceil(math.log2(n_clusters)))
    n_vec = min(n_vec, u.shape[1] - 1) if u.shape[1] > 1 else 1
    z = np.vstack([
        u[:, 1 : 1 + n_vec] / np.sqrt(d1)[:, None],
        vt[1 : 1 + n_vec].T / np.sqrt(d2)[:, None],
    ])
    labels = kmeans(z, n_clusters, seed=seed)
    word_labels, unit_labels = labels[: a.shape[0]], labels[a.shape[0] :]
    words = tuple(words) if words is not None else tuple(str(i) for i in range(a.shape[0]))
    ids = tuple(int(t) for t in token_ids) if token_ids is not None else tuple(range(a.shape[0]))
    clusters = tuple(
        Cluster(
            j,
            tuple(words[i] for i in np.flatnonzero(word_labels == j)),
            tuple(ids[i] for i in np.flatnonzero(word_labels == j)),
            tuple(int(u) for u in np.flatnonzero(unit_labels == j)),
        )
        for j in range(n_clusters)
    )
    return CoClustering(
        n_clusters, word_labels, unit_labels,
        np.argsort(word_labels, kind="stable"), np.argsort(unit_labels, kind="stable"), clusters,
    )


# --- correlation with a track -------------------------------------------------------------------


def correlate_units(states: np.ndarray, track: np.ndarray) -> tuple[np.ndarray, int]:
    """Pearson r of every unit (column of states) with `track` over tokens where the track
    is finite, and the number of such tokens. A constant unit or track gives r = 0."""
    track = np.asarray(track, dtype=np.float64)
    if states.ndim != 2 or states.shape[0] != len(track):
        raise ValueError(f"states {states.shape} and track ({len(track)},) do not line up")
    width = states.shape[1]
    n = 0
    sx, sxx, sxy = np.zeros(width), np.zeros(width), np.zeros(width)
    sy = syy = 0.0
    step = block_tokens(width)
    for a in range(0, len(track), step):
        y = track[a : a + step]
        ok = np.isfinite(y)
        if not ok.any():
            continue
        x = np.asarray(states[a : a + step], dtype=np.float64)[ok]
        y = y[ok]
        n += len(y)
        sx += x.sum(0)
        sxx += (x * x).sum(0)
        sxy += x.T @ y
        sy += y.sum()
        syy += (y * y).sum()
    if n < 2:
        return np.zeros(width), n
    cov = sxy - sx * sy / n
    vx = np.maximum(sxx - sx * sx / n, 0.0)
    vy = max(syy - sy * sy / n, 0.0)
    denom = np.sqrt(vx * vy)
    scale = max(float(np.abs(sxx).max()) if width else 0.0, abs(syy), 1.0)
    ok = denom > 1e-12 * scale
    r = np.zeros(width)
    r[ok] = cov[ok] / denom[ok]
    return np.clip(r, -1.0, 1.0), n


def rank_units(
    states: np.ndarray, track: np.ndarray, top: int | None = None
) -> tuple[UnitCorrelation, ...]:
    """Units ordered by |Pearson r| with the track, strongest first (`top` of them)."""
    r, n = correlate_units(states, track)
    order = np.argsort(-np.abs(r), kind="stable")[: top if top is not None else len(r)]
    return tuple(UnitCorrelation(int(u), float(r[u]), n) for u in order)


# --- over an index ------------------------------------------------------------------------------

MAX_TOKENS = 200_000
"""Tokens an index-level expected response reads at most (whole documents from the first):
enough for stable means of frequent words, a fraction of a second per state."""


@dataclass(frozen=True)
class IndexResponse:
    """The expected response of one stored state, read over the index's first `n_docs`
    whole documents (`n_tokens` of its `total_tokens` tokens)."""

    state: str
    response: WordResponse
    n_tokens: int
    n_docs: int
    total_tokens: int

    @property
    def sampled(self) -> bool:
        """Whether only part of the index was read."""
        return self.n_tokens < self.total_tokens


@dataclass(frozen=True)
class UnitStructure:
    """What `index_units` finds: the expected response, its co-clustering (None when the
    matrix has fewer than two words or units) and, when a track was given, the units ranked
    by |Pearson r| with it over the whole index."""

    response: IndexResponse
    co_clustering: CoClustering | None
    track: str | None
    ranking: tuple[UnitCorrelation, ...] | None


def sample_end(doc_starts: np.ndarray, max_tokens: int) -> tuple[int, int]:
    """(tokens, documents) of the longest run of whole documents from the first that holds
    at most `max_tokens` tokens; when even the first document is longer, its first
    `max_tokens` tokens (0 documents whole)."""
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    n_docs = int(np.searchsorted(doc_starts, max_tokens, side="right")) - 1
    if n_docs >= 1:
        return int(doc_starts[n_docs]), n_docs
    return min(int(max_tokens), int(doc_starts[-1])), 0


def index_response(
    index: IndexReader,
    state: str,
    words: int | None = None,
    min_count: int = 1,
    max_tokens: int = MAX_TOKENS,
) -> IndexResponse:
    """`expected_response` of a stored state over the index's first whole documents (at
    most `max_tokens` tokens, see `sample_end`), for its `words` most frequent token types
    there seen at least `min_count` times (None: all such types)."""
    if words is not None and words < 1:
        raise ValueError(f"words must be >= 1, got {words}")
    states = index.states(state)
    end, n_docs = sample_end(index.doc_starts, max_tokens)
    starts = index.doc_starts[: n_docs + 1] if n_docs else np.array([0, end], dtype=np.int64)
    token_ids = index.tokens(0, end).token_id.astype(np.int64) if end else np.zeros(0, np.int64)
    vocab = index.vocab()
    top = len(vocab) if words is None else int(words)
    response = expected_response(
        states[:end], token_ids, starts, top=top, min_count=min_count, vocab=vocab
    )
    return IndexResponse(state, response, end, n_docs, int(index.n_tokens))


def cluster_response(
    response: WordResponse, n_clusters: int, seed: int = 0
) -> CoClustering | None:
    """`co_cluster` of a response matrix with at most `n_clusters` clusters (no more than it
    has words or units); None when fewer than two are possible."""
    if n_clusters < 2:
        raise ValueError(f"n_clusters must be >= 2, got {n_clusters}")
    n = min(int(n_clusters), *response.response.shape)
    if n < 2:
        return None
    return co_cluster(response.response, n, seed=seed, words=response.words,
                      token_ids=response.token_ids)


def index_units(
    index: IndexReader,
    state: str,
    words: int | None = None,
    min_count: int = 1,
    n_clusters: int = 4,
    track: str | None = None,
    max_tokens: int = MAX_TOKENS,
    seed: int = 0,
    top: int | None = 20,
) -> UnitStructure:
    """Unit structure of a stored state: expected response (`index_response`), its
    co-clustering (`cluster_response`) and, for a `track`, the `top` units by |Pearson r|
    with it over every token of the index (`Index.neurons.correlate`)."""
    response = index_response(index, state, words, min_count, max_tokens)
    ranking = None
    if track:
        ranking = index.neurons.correlate(track, state, top=top)
    return UnitStructure(response, cluster_response(response.response, n_clusters, seed),
                         track or None, ranking)

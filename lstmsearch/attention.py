"""Where an attention model looks: per-token attention stored as tracks, and what they show.

An attention model (`ModelConfig.attention = W`, `lstmsearch train --attention W`) predicts
each next token from the top layer's state and a weighted sum of that layer's outputs at
the W positions before it (`LanguageModel.attend`). An index of such a model stores, with
the surprisal, each token's attention as tracks: its entropy (`attention_entropy`, nats; a
spread-out look is high, a single position 0) and its `TOP_K` (at most W) strongest positions as
offsets back from the token and their weights (`attention_1_offset`, `attention_1_weight`,
...). A document's first token looks nowhere: NaN in all of them.

`heatmap` gives a span's attention as rows (the span's tokens) over the positions they look
at; `worst_tokens` the attention of the tokens the model predicted worst.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

TOP_K = 4
"""Strongest attended positions stored per token."""
ENTROPY_TRACK = "attention_entropy"
SURPRISAL_TRACK = "surprisal"


def offset_track(rank: int) -> str:
    """Name of the track holding each token's `rank`-th strongest offset (from 1)."""
    return f"attention_{rank}_offset"


def weight_track(rank: int) -> str:
    """Name of the track holding the weight of that offset."""
    return f"attention_{rank}_weight"


def track_names(k: int = TOP_K) -> list[str]:
    """Every attention track an index of an attention model stores."""
    return [ENTROPY_TRACK] + [n for r in range(1, k + 1) for n in (offset_track(r),
                                                                    weight_track(r))]


def attention_tracks(weights: np.ndarray, k: int = TOP_K) -> dict[str, np.ndarray]:
    """The stored tracks of tokens whose attention is `weights` (tokens x W, row t's entry
    j the weight on the output j + 1 steps back; an all-zero row: a document's first token):
    the entropy and the min(k, W) strongest positions. Ties keep the nearer position first."""
    w = np.asarray(weights, dtype=np.float64)
    n, window = w.shape
    k = min(k, window)
    looks = w.sum(axis=1) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(w > 0, w * np.log(w), 0.0).sum(axis=1)
    out = {ENTROPY_TRACK: np.where(looks, entropy, np.nan)}
    order = np.argsort(-w, axis=1, kind="stable")[:, :k]
    for r in range(1, k + 1):
        slot = order[:, r - 1]
        weight = w[np.arange(n), slot]
        keep = looks & (weight > 0)
        out[offset_track(r)] = np.where(keep, slot + 1, np.nan)
        out[weight_track(r)] = np.where(keep, weight, np.nan)
    return out


class NoAttentionError(ValueError):
    """An index without stored attention (not an attention model's)."""


def check_attention(index: Any) -> int:
    """The number of attended positions stored per token; a clear error without any."""
    names = set(index.track_names())
    if ENTROPY_TRACK not in names:
        raise NoAttentionError(
            f"index {index.path.name} stores no attention: build it with an attention model "
            "(lstmsearch train --attention W) and its surprisal")
    k = 0
    while offset_track(k + 1) in names:
        k += 1
    return k


@dataclass(frozen=True)
class Heatmap:
    """A span's attention: `weights[i, j]` is how much token `rows[i]` attends to position
    `columns[j]` (its strongest positions only, as stored; 0 elsewhere)."""

    rows: tuple[int, ...]
    columns: tuple[int, ...]
    row_text: tuple[str, ...]
    column_text: tuple[str, ...]
    weights: np.ndarray
    entropy: tuple[float, ...]


@dataclass(frozen=True)
class StoredAttention:
    """Every token's stored attention: its k strongest offsets and their weights (tokens x
    k, NaN: none) and its entropy. A pass over all the attention tracks reads it, so a
    caller that asks again (the server) keeps it."""

    offsets: np.ndarray
    weights: np.ndarray
    entropy: np.ndarray

    @property
    def k(self) -> int:
        return self.offsets.shape[1]


def stored_attention(index: Any) -> StoredAttention:
    """The index's stored attention; a clear error for an index without any."""
    k = check_attention(index)
    offsets = np.stack([index.track(offset_track(r)) for r in range(1, k + 1)], axis=1)
    weights = np.stack([index.track(weight_track(r)) for r in range(1, k + 1)], axis=1)
    return StoredAttention(offsets, weights, index.track(ENTROPY_TRACK))


def heatmap(index: Any, start: int, end: int,
            stored: StoredAttention | None = None) -> Heatmap:
    """The attention of tokens [start, end) over the positions they look at (`stored`:
    `stored_attention(index)`, when the caller keeps it)."""
    stored = stored_attention(index) if stored is None else stored
    k = stored.k
    if not 0 <= start < end <= index.n_tokens:
        raise ValueError(f"span [{start}, {end}) out of range: the index has tokens "
                         f"0..{index.n_tokens - 1}")
    offsets, weights = stored.offsets[start:end], stored.weights[start:end]
    rows = np.arange(start, end)
    targets = rows[:, None] - offsets
    cols = sorted({int(p) for p in targets[np.isfinite(targets)]})
    where = {p: j for j, p in enumerate(cols)}
    grid = np.zeros((end - start, len(cols)))
    for i in range(end - start):
        for r in range(k):
            if np.isfinite(offsets[i, r]):
                grid[i, where[int(targets[i, r])]] += weights[i, r]
    entropy = stored.entropy[start:end]
    return Heatmap(tuple(int(p) for p in rows), tuple(cols),
                   tuple(index.text(int(p), int(p) + 1) for p in rows),
                   tuple(index.text(p, p + 1) for p in cols), grid,
                   tuple(float(e) for e in entropy))


@dataclass(frozen=True)
class LookedAt:
    """One token the model predicted badly, and where it looked when predicting it."""

    pos: int
    document: int
    text: str
    surprisal: float
    entropy: float
    positions: tuple[int, ...]  # strongest first
    weights: tuple[float, ...]
    texts: tuple[str, ...]


def worst_tokens(index: Any, k: int = 20,
                 stored: StoredAttention | None = None) -> tuple[LookedAt, ...]:
    """The `k` tokens of highest surprisal and the attention of the prediction of each (made
    at the token before it, which is where its attention is stored)."""
    stored = stored_attention(index) if stored is None else stored
    if SURPRISAL_TRACK not in index.track_names():
        raise NoAttentionError(f"index {index.path.name} stores no surprisal")
    surprisal = index.track(SURPRISAL_TRACK)
    finite = np.flatnonzero(np.isfinite(surprisal))
    worst = finite[np.argsort(-surprisal[finite], kind="stable")[:k]]
    offsets, weights, entropy = stored.offsets, stored.weights, stored.entropy
    out = []
    for pos in worst:
        at = int(pos) - 1  # the prediction of token pos was made at pos - 1
        keep = np.isfinite(offsets[at])
        looked = tuple(int(at - o) for o in offsets[at][keep])
        out.append(LookedAt(int(pos), int(index.doc_of(int(pos))), index.text(int(pos), int(pos) + 1),
                            float(surprisal[pos]), float(entropy[at]), looked,
                            tuple(float(w) for w in weights[at][keep]),
                            tuple(index.text(p, p + 1) for p in looked)))
    return tuple(out)


@dataclass(frozen=True)
class AttentionMatch:
    """A span that attends like the query span: the mean cosine, token by token, of their
    attention over relative offsets."""

    document: int
    start: int
    end: int
    score: float
    text: str

    @property
    def sort_key(self) -> tuple[float, int]:
        """Most alike first, then corpus order."""
        return (-self.score, self.start)


def offset_vectors(index: Any, stored: StoredAttention | None = None) -> np.ndarray:
    """Every token's attention over offsets 1..W as stored (its strongest positions; 0
    elsewhere), rows scaled to unit length (a token that looks nowhere stays 0)."""
    stored = stored_attention(index) if stored is None else stored
    offsets, weights = stored.offsets, stored.weights
    width = int(np.nanmax(offsets)) if np.isfinite(offsets).any() else 1
    dense = np.zeros((index.n_tokens, width), dtype=np.float32)
    rows, ranks = np.nonzero(np.isfinite(offsets))
    dense[rows, offsets[rows, ranks].astype(np.int64) - 1] = weights[rows, ranks]
    norm = np.linalg.norm(dense, axis=1, keepdims=True)
    return dense / np.where(norm > 0, norm, 1.0)


def attends_like(index: Any, start: int, end: int, *, limit: int = 20,
                 vectors: np.ndarray | None = None) -> tuple[AttentionMatch, ...]:
    """The spans of the query's length, inside one document, whose tokens attend most like
    the tokens of [start, end) (the query span itself left out), best first. `vectors`:
    `offset_vectors(index)`, when the caller keeps them."""
    if not 0 <= start < end <= index.n_tokens:
        raise ValueError(f"span [{start}, {end}) out of range: the index has tokens "
                         f"0..{index.n_tokens - 1}")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive whole number, got {limit!r}")
    v = offset_vectors(index) if vectors is None else vectors
    length, n = end - start, index.n_tokens
    if length > n:
        return ()
    score = np.zeros(n - length + 1)
    for i in range(length):
        score += v[i : n - length + 1 + i] @ v[start + i]
    score /= length
    doc_of, _, _ = index.token_offsets()
    crosses = doc_of[: n - length + 1] != doc_of[length - 1 :]
    score[crosses] = -np.inf
    score[max(0, start - length + 1) : start + length] = -np.inf  # the query and its overlaps
    order = np.argsort(-score, kind="stable")
    picks = [int(p) for p in order[: limit] if np.isfinite(score[p])]
    return tuple(AttentionMatch(int(doc_of[p]), p, p + length, float(score[p]),
                                index.text(p, p + length)) for p in picks)

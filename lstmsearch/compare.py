"""Two models over one corpus, side by side: where one predicts better, which of their units
correspond, how alike their layers are, and one pattern's matches in both.

Both indexes must hold the same documents cut into the same tokens (two checkpoints of one
run, an LSTM against a GRU with the same tokenizer): `check_comparable` refuses anything
else, naming the first difference, so that token t means the same text in both.

Unit correspondence follows the convergent-learning analyses of Li et al. (2016): for each
unit of A the unit of B with the largest |Pearson r| over the tokens. Layer similarity is
linear CKA (Kornblith et al., 2019), which is invariant to rotations and scalings of either
layer's units, so two layers that hold the same information in different units still score
near 1. Both are computed on evenly spaced tokens (`sample`), every token of a small index.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lstmsearch.query import MatchResult, Pattern

SURPRISAL = "surprisal"
TEXT_BATCH = 1024
"""Documents whose texts are compared at once."""
SAMPLE = 1 << 16
"""Tokens the unit correspondence and CKA are computed on (evenly spaced over the corpus)."""


class CompareError(ValueError):
    """Two indexes that cannot be compared token for token, or a bad comparison request."""


@dataclass(frozen=True)
class UnitCorrespondence:
    """A unit of A's state and B's unit best correlated with it."""

    unit: int
    best: int
    r: float  # Pearson r between the two over the sampled tokens

    @property
    def sort_key(self) -> tuple[float, int]:
        """Strongest correspondence first."""
        return (-abs(self.r), self.unit)


@dataclass(frozen=True)
class StateComparison:
    """One state of A against one state of B."""

    state_a: str
    state_b: str
    tokens: int  # tokens the statistics were computed on
    mean_best_r: float  # mean over A's units of |r| with their best unit of B
    cka: float  # linear CKA of the two layers' states, 0..1
    units: tuple[UnitCorrespondence, ...]  # one per unit of A, in unit order


@dataclass(frozen=True)
class TokenDifference:
    """One token's surprisal under both models."""

    pos: int
    document: int
    text: str
    surprisal_a: float
    surprisal_b: float

    @property
    def difference(self) -> float:
        """B's surprisal minus A's: negative where B predicts the token better."""
        return self.surprisal_b - self.surprisal_a


@dataclass(frozen=True)
class SurprisalComparison:
    """Where B beats A (and the other way round), from both indexes' stored surprisal."""

    tokens: int  # tokens with a surprisal in both
    mean_a: float
    mean_b: float
    b_better: float  # share of those tokens where B's surprisal is lower
    b_wins: tuple[TokenDifference, ...]  # the tokens where B gains most, largest gain first
    a_wins: tuple[TokenDifference, ...]  # the tokens where A gains most


@dataclass(frozen=True)
class Comparison:
    """Everything `compare` found about two indexes of one corpus."""

    a: str
    b: str
    documents: int
    tokens: int
    surprisal: SurprisalComparison | None  # None unless both store surprisal
    states: tuple[StateComparison, ...]


@dataclass(frozen=True)
class SideBySide:
    """A pattern's matches in A next to the matches of its corresponding units in B."""

    pattern_a: Pattern
    pattern_b: Pattern  # B's units best correlated (r > 0) with the units of pattern_a
    left_out: tuple[int, ...]  # units of pattern_a whose best unit of B is anti-correlated
    matches_a: MatchResult
    matches_b: MatchResult


# --- checks ---------------------------------------------------------------------------------


def check_comparable(a: Any, b: Any) -> None:
    """Refuse two indexes whose documents or tokens differ, naming the first difference."""
    if a.n_docs != b.n_docs:
        raise CompareError(f"the indexes hold different corpora: {a.n_docs:,} documents "
                           f"against {b.n_docs:,}")
    docs_a, docs_b = a.documents(), b.documents()
    for first in range(0, len(docs_a), TEXT_BATCH):  # texts read a batch at a time
        batch = range(first, min(len(docs_a), first + TEXT_BATCH))
        texts_a, texts_b = a.document_texts(batch), b.document_texts(batch)
        for d in batch:
            da, db = docs_a[d], docs_b[d]
            if da.n_chars != db.n_chars or texts_a[d] != texts_b[d]:
                raise CompareError(f"the indexes hold different corpora: document {d} is "
                                   f"{da.name!r} ({da.n_chars:,} characters) in one and "
                                   f"{db.name!r} ({db.n_chars:,}) in the other")
    kind_a, kind_b = a.meta.get("tokenizer_kind"), b.meta.get("tokenizer_kind")
    if a.n_tokens != b.n_tokens or kind_a != kind_b:
        raise CompareError(f"the indexes cut the text into different tokens ({kind_a} "
                           f"tokenizer, {a.n_tokens:,} tokens against {kind_b}, "
                           f"{b.n_tokens:,}): compare models that share a tokenizer")
    _, start_a, end_a = a.token_offsets()
    _, start_b, end_b = b.token_offsets()
    differ = np.flatnonzero((start_a != start_b) | (end_a != end_b))
    if differ.size:
        pos = int(differ[0])
        raise CompareError(f"the indexes cut the text into different tokens: token {pos} "
                           f"is {a.text(pos, pos + 1)!r} in one and {b.text(pos, pos + 1)!r} "
                           "in the other; compare models that share a tokenizer")


def check_sample(sample: object) -> int:
    """A positive number of tokens to sample."""
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 2:
        raise CompareError(f"sample must be a whole number of tokens, at least 2; got {sample!r}")
    return sample


# --- the statistics ------------------------------------------------------------------------


def sample_positions(n_tokens: int, sample: int) -> np.ndarray:
    """Evenly spaced token positions, all of them when there are at most `sample`."""
    if n_tokens <= sample:
        return np.arange(n_tokens, dtype=np.int64)
    return np.unique(np.linspace(0, n_tokens - 1, sample).round().astype(np.int64))


def standardized(x: np.ndarray) -> np.ndarray:
    """Columns centred and scaled to unit norm (a constant column stays 0)."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0)
    norm = np.linalg.norm(x, axis=0)
    return x / np.where(norm > 0, norm, 1.0)


def unit_correlations(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of every column of `x` (tokens x units of A) with every column of `y`
    (tokens x units of B): units_A x units_B; 0 where a unit is constant."""
    return standardized(x).T @ standardized(y)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same tokens (tokens x units each):
    ‖Yᵀ X‖²_F / (‖Xᵀ X‖_F ‖Yᵀ Y‖_F) on centred columns, in [0, 1]."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    scale = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / scale) if scale > 0 else 0.0


def compare_states(a: Any, b: Any, state_a: str, state_b: str,
                   positions: np.ndarray) -> StateComparison:
    """Unit correspondence and CKA of one state of A and one of B on `positions`."""
    x = a.store(state_a).vectors(positions).astype(np.float64)
    y = b.store(state_b).vectors(positions).astype(np.float64)
    r = unit_correlations(x, y)
    best = np.abs(r).argmax(axis=1)
    units = tuple(UnitCorrespondence(u, int(best[u]), float(r[u, best[u]]))
                  for u in range(r.shape[0]))
    mean_best = float(np.mean([abs(c.r) for c in units])) if units else 0.0
    return StateComparison(state_a, state_b, int(positions.size), mean_best,
                           linear_cka(x, y), units)


def compare_surprisal(a: Any, b: Any, k: int = 20) -> SurprisalComparison | None:
    """Per-token surprisal of B minus A, from both indexes' stored track (None without)."""
    if SURPRISAL not in a.track_names() or SURPRISAL not in b.track_names():
        return None
    sa, sb = a.track(SURPRISAL), b.track(SURPRISAL)
    both = np.flatnonzero(np.isfinite(sa) & np.isfinite(sb))
    if both.size == 0:
        return None
    diff = sb[both] - sa[both]
    order = np.argsort(diff, kind="stable")
    doc_of, _, _ = a.token_offsets()

    def rows(picks: np.ndarray) -> tuple[TokenDifference, ...]:
        return tuple(TokenDifference(int(p), int(doc_of[p]), a.text(int(p), int(p) + 1),
                                     float(sa[p]), float(sb[p])) for p in both[picks])

    b_gains = order[: min(k, order.size)]
    a_gains = order[::-1][: min(k, order.size)]
    return SurprisalComparison(
        tokens=int(both.size), mean_a=float(sa[both].mean()), mean_b=float(sb[both].mean()),
        b_better=float((diff < 0).mean()),
        b_wins=rows(b_gains[diff[b_gains] < 0]), a_wins=rows(a_gains[diff[a_gains] > 0]),
    )


def state_pairs(a: Any, b: Any, state: str | None) -> list[tuple[str, str]]:
    """The states to compare: `state` in both, else every state name the two share."""
    names_a, names_b = list(a.state_names), list(b.state_names)
    if state is not None:
        for names, which in ((names_a, "A"), (names_b, "B")):
            if state not in names:
                raise CompareError(f"state {state} is not in index {which}; it stores "
                                   f"{', '.join(names)}")
        return [(state, state)]
    shared = [n for n in names_a if n in names_b]
    if not shared:
        raise CompareError(f"the indexes share no state (A: {', '.join(names_a)}; B: "
                           f"{', '.join(names_b)}): name one with --state")
    return [(n, n) for n in shared]


def compare(a: Any, b: Any, *, state: str | None = None, sample: int = SAMPLE,
            k: int = 20) -> Comparison:
    """Compare two indexes of one corpus (see the module docstring)."""
    sample = check_sample(sample)
    check_comparable(a, b)
    positions = sample_positions(a.n_tokens, sample)
    states = tuple(compare_states(a, b, sa, sb, positions) for sa, sb in state_pairs(a, b, state))
    return Comparison(str(a.path), str(b.path), a.n_docs, a.n_tokens,
                      compare_surprisal(a, b, k), states)


def side_by_side(a: Any, b: Any, pattern: Pattern, correspondence: StateComparison, *,
                 limit: int = 20) -> SideBySide:
    """The matches of `pattern` (selected in A) next to those of B's corresponding units:
    each unit of S replaced by its best unit of B, kept when they rise together (r > 0)."""
    if correspondence.state_a != pattern.state:
        raise CompareError(f"the correspondence is of {correspondence.state_a}, the pattern "
                           f"of {pattern.state}")
    if not pattern.units:
        raise CompareError(f"the pattern selected no units ({pattern.how}): lower the "
                           "threshold or pick another span")
    best = {c.unit: c for c in correspondence.units}
    kept = sorted({best[u].best for u in pattern.units if best[u].r > 0})
    left_out = tuple(u for u in pattern.units if best[u].r <= 0)
    store_b = b.store(correspondence.state_b)
    if not kept:
        raise CompareError(f"no unit of {pattern.state} {list(pattern.units)} has a unit of "
                           f"{store_b.name} that rises with it (every best r <= 0)")
    pattern_b = Pattern(
        state=store_b.name, layer=store_b.layer, kind=store_b.kind, units=tuple(kept),
        start=pattern.start, end=pattern.end, document=pattern.document,
        threshold=pattern.threshold, pad_left=pattern.pad_left, pad_right=pattern.pad_right,
        sign=pattern.sign, how=f"units of {correspondence.state_b} best correlated with "
        f"{pattern.state} {list(pattern.units)}",
    )
    return SideBySide(pattern, pattern_b, left_out, a.match(pattern, limit=limit),
                      b.match(pattern_b, limit=limit))

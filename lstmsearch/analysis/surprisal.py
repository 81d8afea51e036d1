"""Surprisal and error analysis: where does the language model fail?

Surprisal of token t is -ln p(token_t | tokens before it) in nats; a document's first token
has no prediction and is NaN. Everything here works from two aligned arrays, the token ids
and their surprisal over all documents concatenated, plus the document boundaries
(`doc_starts`, n_docs + 1 values like `Index.doc_starts`), so the same functions serve a
stored surprisal column and a fresh extraction (`compute_surprisal`). `index_report` runs
the whole analysis over an index, from its stored `surprisal` track or with its model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.extract import iter_states, state_name
from lstmsearch.index import SURPRISAL_TRACK
from lstmsearch.models import LanguageModel, LoadedModel

if TYPE_CHECKING:
    from lstmsearch.index import Index



@dataclass(frozen=True)
class TokenLoss:
    """One badly predicted token."""

    pos: int
    doc: int
    pos_in_doc: int
    token_id: int
    text: str
    surprisal: float


@dataclass(frozen=True)
class SpanLoss:
    """A window of tokens [start, end) with a high mean surprisal."""

    start: int
    end: int
    doc: int
    mean_surprisal: float
    tokens: tuple[str, ...]


@dataclass(frozen=True)
class DocumentLoss:
    """Loss of one document: `n_scored` tokens have a prediction (all but the first)."""

    doc: int
    start: int
    end: int
    n_scored: int
    mean_surprisal: float
    perplexity: float


@dataclass(frozen=True)
class TypeLoss:
    """One vocabulary item: how hard it is on average, and its share of the total loss."""

    token_id: int
    text: str
    count: int
    mean_surprisal: float
    loss_share: float


@dataclass(frozen=True)
class SurprisalReport:
    """The error analysis of a set of documents (see `analyze_surprisal`).

    `histogram_counts` has one count per bin between consecutive `histogram_edges` (nats).
    """

    n_tokens: int
    n_scored: int
    mean_surprisal: float
    perplexity: float
    worst_tokens: tuple[TokenLoss, ...]
    worst_spans: tuple[SpanLoss, ...]
    documents: tuple[DocumentLoss, ...]
    hardest_types: tuple[TypeLoss, ...]
    histogram_counts: np.ndarray
    histogram_edges: np.ndarray


def check_arrays(
    token_ids: np.ndarray, surprisal: np.ndarray, doc_starts: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The three arrays as int64/float64/int64, checked to agree; one document when no
    boundaries are given."""
    token_ids = np.asarray(token_ids, dtype=np.int64)
    surprisal = np.asarray(surprisal, dtype=np.float64)
    if token_ids.shape != surprisal.shape or token_ids.ndim != 1:
        raise ValueError(
            f"token_ids {token_ids.shape} and surprisal {surprisal.shape} must be equal 1-D shapes"
        )
    if doc_starts is None:
        doc_starts = np.array([0, len(token_ids)], dtype=np.int64)
    doc_starts = np.asarray(doc_starts, dtype=np.int64)
    if (
        doc_starts.ndim != 1 or len(doc_starts) < 1 or doc_starts[0] != 0
        or doc_starts[-1] != len(token_ids) or np.any(np.diff(doc_starts) < 0)
    ):
        raise ValueError(
            f"doc_starts must rise from 0 to the number of tokens ({len(token_ids)}), "
            f"got {doc_starts[:3].tolist()}...{doc_starts[-2:].tolist()}"
        )
    return token_ids, surprisal, doc_starts


def doc_index(doc_starts: np.ndarray, n_tokens: int) -> np.ndarray:
    """The document of every token position."""
    return np.repeat(np.arange(len(doc_starts) - 1), np.diff(doc_starts))[:n_tokens]


def type_text(vocab: Sequence[str] | None, token_id: int) -> str:
    """A vocabulary item's text, or its id as text when no vocabulary is given."""
    if vocab is not None and 0 <= token_id < len(vocab):
        return vocab[token_id]
    return str(token_id)


def worst_tokens(
    token_ids: np.ndarray,
    surprisal: np.ndarray,
    doc_starts: np.ndarray | None = None,
    k: int = 20,
    token_texts: Sequence[str] | None = None,
    vocab: Sequence[str] | None = None,
) -> tuple[TokenLoss, ...]:
    """The k tokens with the highest surprisal, worst first (NaN positions never count)."""
    token_ids, surprisal, doc_starts = check_arrays(token_ids, surprisal, doc_starts)
    scored = np.flatnonzero(np.isfinite(surprisal))
    if k < 1 or not len(scored):
        return ()
    k = min(k, len(scored))
    top = scored[np.argpartition(-surprisal[scored], k - 1)[:k]]
    top = top[np.argsort(-surprisal[top], kind="stable")]
    docs = doc_index(doc_starts, len(token_ids))
    return tuple(
        TokenLoss(
            pos=int(p), doc=int(docs[p]), pos_in_doc=int(p - doc_starts[docs[p]]),
            token_id=int(token_ids[p]),
            text=token_texts[p] if token_texts is not None else type_text(vocab, int(token_ids[p])),
            surprisal=float(surprisal[p]),
        )
        for p in top
    )


def window_means(surprisal: np.ndarray, start: int, end: int, width: int) -> np.ndarray:
    """Mean surprisal (NaN ignored) of every window [s, s + width) inside [start, end)."""
    values = surprisal[start:end]
    finite = np.isfinite(values)
    sums = np.concatenate([[0.0], np.cumsum(np.where(finite, values, 0.0))])
    counts = np.concatenate([[0], np.cumsum(finite)])
    total = sums[width:] - sums[:-width]
    n = counts[width:] - counts[:-width]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def worst_spans(
    surprisal: np.ndarray,
    doc_starts: np.ndarray | None = None,
    width: int = 8,
    k: int = 10,
    token_texts: Sequence[str] | None = None,
) -> tuple[SpanLoss, ...]:
    """The k non-overlapping windows of `width` tokens with the highest mean surprisal.

    Windows never cross a document boundary; a document shorter than `width` is one window.
    Overlapping windows would all be shifts of the same bad stretch, so windows are taken
    greedily, best first, skipping any that overlaps one already taken.
    """
    if width < 1:
        raise ValueError(f"span width must be >= 1, got {width}")
    surprisal = np.asarray(surprisal, dtype=np.float64)
    _, surprisal, doc_starts = check_arrays(np.zeros(len(surprisal)), surprisal, doc_starts)
    starts, means, ends = [], [], []
    for d in range(len(doc_starts) - 1):
        a, b = int(doc_starts[d]), int(doc_starts[d + 1])
        w = min(width, b - a)
        if w < 1:
            continue
        m = window_means(surprisal, a, b, w)
        starts.append(np.arange(a, b - w + 1))
        ends.append(np.arange(a, b - w + 1) + w)
        means.append(m)
    if not means or k < 1:
        return ()
    starts_a, ends_a, means_a = np.concatenate(starts), np.concatenate(ends), np.concatenate(means)
    order = np.argsort(-np.nan_to_num(means_a, nan=-np.inf), kind="stable")
    taken = np.zeros(len(surprisal), dtype=bool)
    docs = doc_index(doc_starts, len(surprisal))
    spans = []
    for i in order:
        if len(spans) == k or not np.isfinite(means_a[i]):
            break
        s, e = int(starts_a[i]), int(ends_a[i])
        if taken[s:e].any():
            continue
        taken[s:e] = True
        texts = tuple(token_texts[s:e]) if token_texts is not None else ()
        spans.append(SpanLoss(s, e, int(docs[s]), float(means_a[i]), texts))
    return tuple(spans)


def document_losses(
    surprisal: np.ndarray, doc_starts: np.ndarray | None = None
) -> tuple[DocumentLoss, ...]:
    """Mean surprisal and perplexity exp(mean) of every document (NaN when nothing is scored)."""
    _, surprisal, doc_starts = check_arrays(np.zeros(len(surprisal)), surprisal, doc_starts)
    out = []
    for d in range(len(doc_starts) - 1):
        a, b = int(doc_starts[d]), int(doc_starts[d + 1])
        values = surprisal[a:b][np.isfinite(surprisal[a:b])]
        mean = float(values.mean()) if len(values) else float("nan")
        out.append(DocumentLoss(d, a, b, len(values), mean, float(np.exp(mean))))
    return tuple(out)


def type_losses(
    token_ids: np.ndarray,
    surprisal: np.ndarray,
    vocab: Sequence[str] | None = None,
    min_count: int = 5,
) -> tuple[TypeLoss, ...]:
    """Mean surprisal of every vocabulary item seen at least `min_count` times, hardest first.

    `loss_share` is the item's part of the summed surprisal: frequent, moderately hard items
    can cost more in total than rare, very hard ones.
    """
    token_ids, surprisal, _ = check_arrays(token_ids, surprisal, None)
    scored = np.isfinite(surprisal)
    ids, values = token_ids[scored], surprisal[scored]
    if not len(ids):
        return ()
    size = int(ids.max()) + 1
    counts = np.bincount(ids, minlength=size)
    totals = np.bincount(ids, weights=values, minlength=size)
    grand = float(values.sum()) or 1.0
    keep = np.flatnonzero(counts >= max(min_count, 1))
    means = totals[keep] / counts[keep]
    order = keep[np.argsort(-means, kind="stable")]
    return tuple(
        TypeLoss(int(t), type_text(vocab, int(t)), int(counts[t]), float(totals[t] / counts[t]),
                 float(totals[t] / grand))
        for t in order
    )


def analyze_surprisal(
    token_ids: np.ndarray,
    surprisal: np.ndarray,
    doc_starts: np.ndarray | None = None,
    *,
    vocab: Sequence[str] | None = None,
    token_texts: Sequence[str] | None = None,
    k: int = 20,
    width: int = 8,
    min_count: int = 5,
    bins: int = 40,
) -> SurprisalReport:
    """The whole error analysis: overall perplexity, worst tokens and spans, every document's
    perplexity, the hardest vocabulary items (`k` of each list) and a surprisal histogram."""
    token_ids, surprisal, doc_starts = check_arrays(token_ids, surprisal, doc_starts)
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    finite = surprisal[np.isfinite(surprisal)]
    mean = float(finite.mean()) if len(finite) else float("nan")
    top = float(finite.max()) if len(finite) else 1.0
    counts, edges = np.histogram(finite, bins=bins, range=(0.0, max(top, 1e-9)))
    return SurprisalReport(
        n_tokens=len(token_ids),
        n_scored=len(finite),
        mean_surprisal=mean,
        perplexity=float(np.exp(mean)),
        worst_tokens=worst_tokens(token_ids, surprisal, doc_starts, k, token_texts, vocab),
        worst_spans=worst_spans(surprisal, doc_starts, width, k, token_texts),
        documents=document_losses(surprisal, doc_starts),
        hardest_types=type_losses(token_ids, surprisal, vocab, min_count)[:k],
        histogram_counts=counts,
        histogram_edges=edges,
    )


def compute_surprisal(model: LanguageModel, docs: Sequence[np.ndarray]) -> np.ndarray:
    """Surprisal of every token of `docs` (token id arrays), concatenated; NaN at each
    document's first token. Uses the exact, chunked extraction, streamed: only the surprisal
    of each block is kept (not its states), so memory grows with the tokens, not the units."""
    offsets = np.concatenate([[0], np.cumsum([len(d) for d in docs])]).astype(np.int64)
    out = np.full(int(offsets[-1]), np.nan)
    for block in iter_states(model, docs, [state_name(0, "h")], surprisal=True):
        if block.surprisal is None:
            continue  # the backward stack of a bidirectional model predicts nothing here
        for j, d in enumerate(block.docs):
            s, n = int(block.starts[j]), int(block.lengths[j])
            at = int(offsets[d]) + s
            out[at : at + n] = block.surprisal[j, :n]
    return out


def index_surprisal(index: Index, model: LanguageModel | LoadedModel | None = None) -> np.ndarray:
    """Surprisal of every token of an index: its stored `surprisal` track when it has one,
    otherwise computed with `model` (e.g. the index's own `model.pt`)."""
    if SURPRISAL_TRACK in index.track_names():
        return np.asarray(index.track(SURPRISAL_TRACK), dtype=np.float64)
    if model is None:
        raise ValueError(
            f"index {index.path} stores no surprisal track; pass the model to compute it"
        )
    if isinstance(model, LoadedModel):
        model = model.model
    ids = index_token_ids(index)
    starts = index.doc_starts
    return compute_surprisal(model, [ids[a:b] for a, b in zip(starts[:-1], starts[1:])])


def index_token_ids(index: Index, chunk: int = 1 << 20) -> np.ndarray:
    """Every token id of an index, in position order, read `chunk` tokens at a time."""
    parts = [
        np.asarray(index.tokens(a, min(a + chunk, index.n_tokens)).token_id, dtype=np.int64)
        for a in range(0, index.n_tokens, chunk)
    ]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def index_token_texts(index: Index, positions: Sequence[int]) -> dict[int, str]:
    """The texts of the tokens at some positions of an index, read in one query."""
    unique = sorted({int(p) for p in positions})
    if not unique:
        return {}
    result = index.sql(
        "SELECT t.pos, t.text FROM tokens t "
        "SEMI JOIN (SELECT unnest(?::BIGINT[]) AS pos) p ON t.pos = p.pos",
        [unique], max_rows=None,
    )
    return {int(p): str(t) for p, t in result.rows}


def with_index_texts(index: Index, report: SurprisalReport) -> SurprisalReport:
    """The report with its worst tokens and spans spelled as the index's token texts.

    A report over a whole index is computed from token ids and the vocabulary (reading every
    token's text would cost more than the analysis); only the few tokens it lists need their
    text, and a token's text in its document can differ from its vocabulary entry (a word
    tokenizer's unknown word, a byte-level BPE entry).
    """
    positions = [t.pos for t in report.worst_tokens]
    for span in report.worst_spans:
        positions.extend(range(span.start, span.end))
    texts = index_token_texts(index, positions)
    return replace(
        report,
        worst_tokens=tuple(replace(t, text=texts.get(t.pos, t.text)) for t in report.worst_tokens),
        worst_spans=tuple(
            replace(s, tokens=tuple(texts.get(p, "") for p in range(s.start, s.end)))
            for s in report.worst_spans
        ),
    )


def index_report(
    index: Index,
    model: LanguageModel | LoadedModel | None = None,
    *,
    surprisal: np.ndarray | None = None,
    token_ids: np.ndarray | None = None,
    k: int = 20,
    width: int = 8,
    min_count: int = 5,
    bins: int = 40,
) -> SurprisalReport:
    """The error analysis (`analyze_surprisal`) of every document of an index.

    The surprisal comes from `surprisal` when given (one value per token of the index),
    else from the index's stored `surprisal` track, else it is computed with `model`; the
    token ids from `token_ids` when given (`index_token_ids`, which a caller running several
    reports reads once), else from the index. Types are named by the index's vocabulary,
    worst tokens and spans by their texts in the index.
    """
    values = index_surprisal(index, model) if surprisal is None else surprisal
    values = np.asarray(values, dtype=np.float64)
    if values.shape != (index.n_tokens,):
        raise ValueError(
            f"surprisal has shape {values.shape} but the index has {index.n_tokens} tokens"
        )
    ids = index_token_ids(index) if token_ids is None else token_ids
    report = analyze_surprisal(
        ids, values, index.doc_starts, vocab=index.vocab(), k=k,
        width=width, min_count=min_count, bins=bins,
    )
    return with_index_texts(index, report)


def worst_documents(documents: Sequence[DocumentLoss], k: int = 20) -> tuple[DocumentLoss, ...]:
    """The k documents with the highest mean surprisal, worst first (unscored ones never)."""
    scored = [d for d in documents if d.n_scored > 0 and np.isfinite(d.mean_surprisal)]
    return tuple(sorted(scored, key=lambda d: -d.mean_surprisal)[: max(k, 0)])

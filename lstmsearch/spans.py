"""Spans of tokens: checking them, finding a phrase's tokens, and the text around positions.

A span is half-open like a Python slice: ``[start, end)`` holds the tokens ``start .. end - 1``
(global positions over the whole index). A phrase is found in the documents' own text and
mapped to the tokens its characters touch, so a phrase that starts or ends inside a token
gives the whole token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.limits import MAX_CONTEXT, MAX_RESULTS

if TYPE_CHECKING:
    from lstmsearch.reader import IndexReader

DEFAULT_CONTEXT = 5
"""Tokens of context on each side of a hit, a neighbour or a phrase."""


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of one document (a place where a phrase occurs)."""

    document: int
    start: int
    end: int

    @property
    def length(self) -> int:
        """Number of tokens in the span."""
        return self.end - self.start


def span_key(span: Span) -> tuple[int, int]:
    """Sort key of spans: corpus order (start, then end)."""
    return (span.start, span.end)


@dataclass(frozen=True)
class Context:
    """The text of a span and up to ``context`` tokens either side, inside its document."""

    left: str
    text: str
    right: str


def check_count(name: str, value: object, minimum: int = 1, maximum: int | None = None) -> int:
    """``value`` as an int of at least ``minimum`` (and at most ``maximum``), or an error
    naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}")
    return int(value)


def check_span(doc_starts: np.ndarray, start: object, end: object) -> tuple[int, int, int]:
    """(start, end, document) of a non-empty span inside one document, or an error naming it."""
    n_tokens = int(doc_starts[-1])
    for name, value in (("start", start), ("end", end)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    start, end = int(start), int(end)
    if not 0 <= start < n_tokens:
        raise ValueError(f"start={start} is outside the index [0, {n_tokens})")
    if not 0 < end <= n_tokens:
        raise ValueError(f"end={end} is outside the index (0, {n_tokens}]")
    if start >= end:
        raise ValueError(f"empty span: start={start} must be below end={end}")
    document = int(np.searchsorted(doc_starts, start, side="right") - 1)
    stop = int(doc_starts[document + 1])
    if end > stop:
        raise ValueError(f"span [{start}, {end}) crosses the end of document {document} at {stop}")
    return start, end, document


def check_phrase(phrase: object) -> str:
    """A phrase to search for: a string with something besides whitespace."""
    if not isinstance(phrase, str) or not phrase.strip():
        raise ValueError(f"phrase must be a non-blank string, got {phrase!r}")
    return phrase


def phrase_tokens(index: IndexReader, document: int, char_start: int, char_end: int) -> Span | None:
    """The tokens of ``document`` that characters ``[char_start, char_end)`` touch (None when
    the characters fall between tokens, e.g. only whitespace)."""
    first, stop = int(index.doc_starts[document]), int(index.doc_starts[document + 1])
    _, starts, ends = index.token_offsets()
    start = first + int(np.searchsorted(ends[first:stop], char_start, side="right"))
    end = first + int(np.searchsorted(starts[first:stop], char_end, side="left"))
    if start >= end:
        return None
    return Span(document, start, end)


def find_phrase(
    index: IndexReader, phrase: str, limit: int = 100, document: int | None = None
) -> list[Span]:
    """Token spans where ``phrase`` occurs (exact, case-sensitive), in corpus order.

    Searches every document, or only ``document``; returns at most ``limit`` spans.
    Overlapping occurrences are all found.
    """
    return _find_phrase(index, phrase, check_count("limit", limit, maximum=MAX_RESULTS), document)


def _find_phrase(index: IndexReader, phrase: str, limit: int, document: int | None) -> list[Span]:
    """`find_phrase` without the cap on `limit` (which the corpus itself bounds)."""
    phrase = check_phrase(phrase)
    if document is not None:
        document = check_count("doc", document, minimum=0)
        if document >= index.n_docs:
            raise ValueError(
                f"doc {document} out of range: the index has documents 0..{index.n_docs - 1}"
            )
        candidates = [document] if phrase in index.document_text(document) else []
    else:
        found = index.sql(
            "SELECT doc FROM documents WHERE contains(text, ?) AND tok_end <= ? ORDER BY doc",
            [phrase, index.n_tokens], max_rows=None,
        )
        candidates = [int(d) for d in found.column("doc")]
    spans: list[Span] = []
    for doc in candidates:
        text = index.document_text(doc)
        at = text.find(phrase)
        while at >= 0 and len(spans) < limit:
            span = phrase_tokens(index, doc, at, at + len(phrase))
            if span is not None and (not spans or spans[-1] != span):
                spans.append(span)
            at = text.find(phrase, at + 1)
        if len(spans) >= limit:
            break
    return spans


def find_span(
    index: IndexReader, phrase: str, doc: int | None = None, occurrence: int = 0
) -> Span:
    """The tokens of the ``occurrence``-th place (from 0) where ``phrase`` occurs in document
    ``doc`` (or in the whole corpus); an error naming the phrase when there is none."""
    occurrence = check_count("occurrence", occurrence, minimum=0, maximum=MAX_RESULTS - 1)
    spans = _find_phrase(index, phrase, occurrence + 1, doc)
    if len(spans) <= occurrence:
        where = "the index" if doc is None else f"document {doc}"
        if not spans:
            raise ValueError(f"phrase {phrase!r} does not occur in {where}")
        raise ValueError(
            f"occurrence {occurrence} of phrase {phrase!r} asked for, but it occurs only "
            f"{len(spans)} time(s) in {where}"
        )
    return spans[occurrence]


def document_texts(index: IndexReader, documents: Sequence[int]) -> dict[int, str]:
    """The texts of some documents (one database round trip per segment they are in)."""
    return index.document_texts(documents)


def contexts(
    index: IndexReader, starts: Sequence[int], ends: Sequence[int], context: int = DEFAULT_CONTEXT
) -> list[Context]:
    """The text of each span ``[starts[i], ends[i])`` with ``context`` tokens either side,
    clipped to the span's document; whitespace next to the span stays in the context."""
    context = check_count("context", context, minimum=0, maximum=MAX_CONTEXT)
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    if len(starts) != len(ends):
        raise ValueError(f"{len(starts)} span starts but {len(ends)} ends")
    doc_starts = index.doc_starts
    _, char_start, char_end = index.token_offsets()
    documents = np.searchsorted(doc_starts, starts, side="right") - 1
    texts = document_texts(index, documents)
    out = []
    for start, end, document in zip(starts.tolist(), ends.tolist(), documents.tolist()):
        first, stop = int(doc_starts[document]), int(doc_starts[document + 1])
        left, right = max(first, start - context), min(stop, end + context)
        text = texts[document]
        a, b = int(char_start[start]), int(char_end[end - 1])
        out.append(Context(
            left=text[int(char_start[left]) : a],
            text=text[a:b],
            right=text[b : int(char_end[right - 1])],
        ))
    return out

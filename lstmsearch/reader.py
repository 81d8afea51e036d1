"""What the query modules read from an open index: the `IndexReader` protocol.

`lstmsearch.index.Index` provides it. The modules that answer queries over an index
(spans, nearest, neurons, analysis.units) take an `IndexReader`, so imports run one way:
the index composes them and none of them imports the index back.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from lstmsearch.store import StateStore


class IndexReader(Protocol):
    """An open index, read-only: documents, tokens, stored states, tracks and SQL."""

    path: Path
    doc_starts: np.ndarray  # document d holds tokens [doc_starts[d], doc_starts[d + 1])

    @property
    def n_tokens(self) -> int: ...

    @property
    def n_docs(self) -> int: ...

    def store(self, layer: int | str, kind: str | None = None) -> StateStore:
        """The stored columns of one state (`1, "c"` or `"layers.1.c"`)."""
        ...

    def states(self, layer: int | str, kind: str | None = None) -> np.ndarray:
        """One state as a tokens x units float16 array."""
        ...

    def track(self, name: str) -> np.ndarray:
        """An annotation track's value per token (NaN where it has none)."""
        ...

    def token_offsets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(document, first character, end character) of every token."""
        ...

    def document_text(self, doc: int) -> str: ...

    def document_texts(self, docs: Sequence[int]) -> dict[int, str]: ...

    def tokens(self, start: int, end: int) -> Any:
        """The tokens of a span, column by column (`lstmsearch.index.Tokens`)."""
        ...

    def vocab(self) -> list[str]: ...

    def sql(self, query: str, params: Sequence[Any] | None = None) -> Any:
        """Rows of one read-only query (`lstmsearch.index.SqlResult`)."""
        ...

    def faiss(self, layer: int | str, kind: str | None = None) -> Any:
        """The FAISS indexes of one state's segments (`lstmsearch.index.FaissIndexes`)."""
        ...

    @property
    def neurons(self) -> Any:
        """Neuron queries (`lstmsearch.neurons.Neurons`)."""
        ...

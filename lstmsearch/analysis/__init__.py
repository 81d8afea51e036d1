"""Analyses of a recurrent language model and its states (SPEC 3.7), one module each:

- `surprisal`: per-token loss, worst tokens and spans, per-document perplexity, hardest types.
- `gradients`: gradient flow through time, ||d loss_t / d h_{t-k}|| against k, per layer.
- `saliency`: gradient x input (or integrated gradients) per input token of one prediction.
- `trajectories`: PCA, t-SNE or UMAP of states as a 2-D path (t-SNE and UMAP maps fitted
  once per index and state).
- `gates`: LSTM input/forget/output and GRU reset/update activations, saturation per unit.
- `weights`: histograms, singular values and spectral radius of every weight block.
- `units`: per-word expected response of units, co-clustering of units and words, and
  units ranked by correlation with an annotation track.
- `probe`: linear probes of a track from a state, against the majority or mean and against
  the same probe on a random-weight model's states; units ranked by probe weight.
- `ablation`: the model re-run with one unit clamped, the change in surprisal per track
  value (does the model use the unit?).

The analyses take plain arrays and tensors, so they serve a fresh extraction and an index
alike. This file holds what they share: tokenized documents with their per-token texts and
tracks (`Tokenized`), loading a model from a checkpoint or an index directory, and turning
results into JSON.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lstmsearch.corpus import Document
    from lstmsearch.index import Index
    from lstmsearch.models import LoadedModel
    from lstmsearch.tokenize import Tokenizer

MODEL_FILE = "model.pt"


@dataclass(frozen=True)
class Tokenized:
    """Documents as token ids, with each token's text and per-token annotation tracks.

    `ids[d]` holds document d's token ids; `texts[d][j]` is the visible text of its token j;
    `tracks[name][d]` one float per token (NaN where the track has no value). Global
    positions run over the documents in order; `doc_starts` has n_docs + 1 boundaries, like
    `Index.doc_starts`. `first_pos` is the global position of this set's first token (not 0
    when the documents are a slice of an index).
    """

    names: tuple[str, ...]
    ids: tuple[np.ndarray, ...]
    texts: tuple[tuple[str, ...], ...]
    tracks: dict[str, tuple[np.ndarray, ...]] = field(default_factory=dict)
    first_pos: int = 0

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.ids) == len(self.texts):
            raise ValueError(
                f"names, ids and texts disagree on the number of documents: "
                f"{len(self.names)}, {len(self.ids)}, {len(self.texts)}"
            )
        for d, (ids, texts) in enumerate(zip(self.ids, self.texts)):
            if len(ids) != len(texts):
                raise ValueError(f"document {d} has {len(ids)} token ids but {len(texts)} texts")

    @property
    def n_docs(self) -> int:
        return len(self.ids)

    @property
    def doc_starts(self) -> np.ndarray:
        """Token boundaries of the documents: document d is [doc_starts[d], doc_starts[d+1])."""
        return np.concatenate([[0], np.cumsum([len(x) for x in self.ids])]).astype(np.int64)

    @property
    def token_ids(self) -> np.ndarray:
        """All token ids, documents concatenated."""
        if not self.ids:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate(self.ids).astype(np.int64)

    @property
    def token_texts(self) -> tuple[str, ...]:
        """All token texts, documents concatenated."""
        return tuple(t for doc in self.texts for t in doc)

    def track(self, name: str) -> np.ndarray:
        """One track over all tokens (float64, NaN where missing)."""
        if name not in self.tracks:
            raise ValueError(f"no track {name!r}; tracks: {', '.join(self.tracks) or 'none'}")
        parts = self.tracks[name]
        return np.concatenate(parts).astype(np.float64) if parts else np.zeros(0)


def check_doc(tokenized: Tokenized, doc: int) -> int:
    """`doc` as an int, or an error naming it when it is not one of the documents."""
    if not 0 <= int(doc) < tokenized.n_docs:
        raise ValueError(
            f"document {doc} out of range: there are documents 0..{tokenized.n_docs - 1}"
        )
    return int(doc)


def tokenize_documents(tokenizer: Tokenizer, documents: Sequence[Document]) -> Tokenized:
    """Encode documents; a character track becomes a token track (value at the token's first
    character), so e.g. the parens depth follows the tokens. Empty encodings are dropped."""
    encodings = tokenizer.encode_batch([d.text for d in documents])
    names, ids, texts = [], [], []
    tracks: dict[str, list[np.ndarray]] = {}
    for doc, enc in zip(documents, encodings):
        if len(enc) == 0:
            continue
        names.append(doc.name)
        ids.append(enc.ids.astype(np.int64))
        texts.append(tuple(doc.text[s:e] for s, e in zip(enc.starts, enc.ends)))
        for name, values in doc.char_tracks.items():
            at = np.clip(enc.starts, 0, len(values) - 1)
            tracks.setdefault(name, []).append(values[at].astype(np.float64))
    complete = {k: tuple(v) for k, v in tracks.items() if len(v) == len(ids)}
    return Tokenized(tuple(names), tuple(ids), tuple(texts), complete)


def tokenize_texts(tokenizer: Tokenizer, texts: Sequence[str]) -> Tokenized:
    """Encode plain strings, one document each."""
    from lstmsearch.corpus import Document

    return tokenize_documents(tokenizer, [Document(f"text-{i}", t) for i, t in enumerate(texts)])


def index_documents(index: Index, docs: Sequence[int] | None = None) -> Tokenized:
    """Documents of an index as `Tokenized` (all tracks included). `docs` must be a
    contiguous run (default: all), so that global positions stay those of the index."""
    docs = list(range(index.n_docs)) if docs is None else [int(d) for d in docs]
    if not docs:
        return Tokenized((), (), ())
    for d in docs:
        if not 0 <= d < index.n_docs:
            raise ValueError(
                f"document {d} out of range: the index has documents 0..{index.n_docs - 1}"
            )
    if docs != list(range(docs[0], docs[0] + len(docs))):
        raise ValueError(f"documents must be a contiguous run, got {docs[:5]}...")
    infos = index.documents()
    start, end = int(index.doc_starts[docs[0]]), int(index.doc_starts[docs[-1] + 1])
    toks = index.tokens(start, end)
    bounds = [int(index.doc_starts[d]) - start for d in docs] + [end - start]
    ids = tuple(toks.token_id[a:b].astype(np.int64) for a, b in zip(bounds, bounds[1:]))
    texts = tuple(tuple(toks.text[a:b]) for a, b in zip(bounds, bounds[1:]))
    tracks = {}
    for name in index.track_names():
        values = index.track(name)[start:end]
        tracks[name] = tuple(values[a:b] for a, b in zip(bounds, bounds[1:]))
    names = tuple(infos[d].name for d in docs)
    return Tokenized(names, ids, texts, tracks, first_pos=start)


def is_index(source: str | Path) -> bool:
    """Whether `source` is an index directory rather than a checkpoint file."""
    return Path(source).is_dir()


def load_source_model(source: str | Path) -> LoadedModel:
    """The model of a checkpoint file, or of an index directory (its `model.pt`)."""
    from lstmsearch.models import load_model

    path = Path(source)
    if path.is_dir():
        model_path = path / MODEL_FILE
        if not model_path.is_file():
            raise FileNotFoundError(f"index {path} has no {MODEL_FILE}: cannot run its model")
        return load_model(model_path)
    return load_model(path)


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one thread for a while (then as before). A model over a small batch
    spends each step waiting on a second thread: on 2 busy cores the parens model ran 5 to
    9 times faster on one (measured for the probe's control and the ablation)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def to_jsonable(value: Any) -> Any:
    """A result as plain JSON values: dataclasses become dicts, arrays lists, NaN/inf None."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


__all__ = [
    "Tokenized",
    "check_doc",
    "index_documents",
    "is_index",
    "load_source_model",
    "one_torch_thread",
    "to_jsonable",
    "tokenize_documents",
    "tokenize_texts",
]

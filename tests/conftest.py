"""Shared fixtures: a tiny real model and index, built once per test session in seconds.

- `tiny_corpus`: 40 short documents of the bundled `parens` language (with a depth track).
- `tiny_model_path`: a 2-layer LSTM (embed 8, hidden 12, char tokenizer) with hand-seeded
  random weights, scaled up so that units saturate and thresholds mean something.
- `tiny_index_path` / `tiny_index`: that model's h and c states of every layer over the corpus,
  written in several segments.
- `shared`: the web app's per-server `Shared` over the tiny index (one per test module);
  `named`, `analysis_view`: find a Bokeh model by name, show an analysis tab.
- `states_only_index`: an index of stored states, which has no model.
- `ArrayStore`: states held in memory with the StateStore protocol, for the query kernels.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from lstmsearch.corpus import Corpus, load_corpus
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint
from lstmsearch.tokenize import train_tokenizer

TINY_DOCS = 40
TINY_SHARD_TOKENS = 600
TINY_SHARD = {"segment_tokens": TINY_SHARD_TOKENS, "segment_docs": 1}
"""Small segments, so that the tiny index has several."""


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run torch on `n` threads for a while: tiny models on a busy machine are many times
    faster on one thread than on several that wait for each other at every step."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Every test runs torch on one thread: the models here are tiny (see `torch_threads`)."""
    with torch_threads(1):
        yield


def make_tiny_model(
    path: Path, corpus: Corpus, arch: str = "lstm", hidden: int = 12, layers: int = 2,
    seed: int = 0, scale: float = 2.5, bidirectional: bool = False,
) -> Path:
    """Save a small language model with seeded uniform(-scale/sqrt(hidden), ...) weights."""
    tokenizer = train_tokenizer("char", [d.text for d in corpus.documents])
    config = ModelConfig(arch, tokenizer.vocab_size, embed_dim=8, hidden=hidden, layers=layers,
                         bidirectional=bidirectional)
    model = LanguageModel(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=generator) * 2 - 1) * scale / hidden**0.5)
    save_checkpoint(path, model.eval(), tokenizer)
    return path


def tiny_parens(n_docs: int = TINY_DOCS, seed: int = 0) -> Corpus:
    """A small parens corpus of short documents."""
    return load_corpus("parens", limit=n_docs, min_len=20, max_len=120, seed=seed)


@pytest.fixture(scope="session")
def tiny_corpus() -> Corpus:
    return tiny_parens()


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Corpus) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("tiny-model") / "model.pt", tiny_corpus)


@pytest.fixture(scope="session")
def tiny_index_path(
    tmp_path_factory: pytest.TempPathFactory, tiny_corpus: Corpus, tiny_model_path: Path
) -> Path:
    from indexer.build import build_index

    out = tmp_path_factory.mktemp("tiny-index") / "index"
    with torch_threads(1):
        build_index(tiny_corpus, tiny_model_path, out, **TINY_SHARD, progress=False)
    return out


@pytest.fixture(scope="session")
def tiny_index(tiny_index_path: Path):
    from lstmsearch.index import open_index

    index = open_index(tiny_index_path)
    yield index
    index.close()


@pytest.fixture(scope="module")
def shared(tiny_index):
    """What a server shares between sessions, over the tiny index."""
    from server.fetch import Shared

    return Shared(tiny_index)


def named(doc, name: str):
    """The Bokeh model called `name` in document `doc` (a test failure when there is none)."""
    model = doc.select_one({"name": name})
    assert model is not None, f"no model named {name!r}"
    return model


def analysis_view(app, view_class):
    """Show the tab of the app's analysis view of `view_class` (which computes it); the view."""
    from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB

    app.tabs.active = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(view_class)
    view = app.active_analysis()
    assert isinstance(view, view_class)
    return view


def attention_model_index(folder: Path, texts: list[str], window: int, seed: int,
                          **build_options) -> tuple[Path, LanguageModel, list]:
    """An untrained, seeded char LSTM with attention over `window` positions, its index of
    `texts` in `folder`: (index path, the model in eval mode, each text's token ids)."""
    from indexer.build import build_index
    from lstmsearch.corpus import Document

    folder.mkdir(parents=True, exist_ok=True)
    corpus = Corpus("brackets", [Document(f"d{i}", t) for i, t in enumerate(texts)])
    tokenizer = train_tokenizer("char", texts)
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=6,
                                      layers=1, attention=window))
    save_checkpoint(folder / "m.pt", model, tokenizer)
    build_index(corpus, folder / "m.pt", folder / "index", progress=False, **build_options)
    return folder / "index", model.eval(), [tokenizer.encode(t).ids for t in texts]


@pytest.fixture(scope="module")
def server_url(tiny_index_path: Path) -> Iterator[str]:
    """`lstmsearch serve` on the tiny index, for the whole module (browser tests)."""
    from browser import start_server, stop_server

    proc, url = start_server(tiny_index_path)
    yield url
    stop_server(proc)


@pytest.fixture(scope="module")
def driver() -> Iterator:
    """One headless Chromium for the whole module (browser tests)."""
    from browser import make_driver, quit_driver

    d = make_driver()
    yield d
    quit_driver(d)


def browser_test(test):
    """Mark a test that drives headless Chromium: `browser`, skipped without Chromium."""
    skip = pytest.mark.skipif(
        not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
        reason="headless Chromium not installed (`bash scripts/setup.sh --test` installs it)",
    )
    return pytest.mark.browser(skip(test))


def states_only_index(folder: Path):
    """An index of stored states (`index-states` from .npy files): it has no model."""
    import numpy as np

    from indexer.states import index_states
    from lstmsearch.index import open_index

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.txt").write_text("a\nb\na\n\nb\nc\n", encoding="utf-8")
    np.save(folder / "h.npy", np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
    index_states(folder / "tokens.txt", {"layers.0.h": folder / "h.npy"}, folder / "index",
                 progress=False)
    return open_index(folder / "index")


def edit_segment_rows(index_path: Path, sql: str, params: list | None = None) -> None:
    """Run `sql` on the row database of every segment of an index and record the changed
    files' new sizes and checksums, as if the index had been built that way."""
    import duckdb

    from lstmsearch.models import file_sha256

    con = duckdb.connect(str(index_path / "index.duckdb"))
    try:
        rows = con.execute("SELECT path FROM files WHERE kind = 'rows'").fetchall()
        for (rel,) in rows:
            seg = duckdb.connect(str(index_path / rel))
            seg.execute(sql, params or [])
            seg.execute("CHECKPOINT")
            seg.close()
            target = index_path / rel
            con.execute("UPDATE files SET bytes = ?, sha256 = ? WHERE path = ?",
                        [target.stat().st_size, file_sha256(target), rel])
    finally:
        con.close()


class ArrayStore:
    """States of one (layer, kind) held in memory, unit-major: ``values[unit, position]``."""

    def __init__(self, values: np.ndarray, name: str = "layers.0.c") -> None:
        self.values = np.ascontiguousarray(values, dtype=np.float16)
        if self.values.ndim != 2:
            raise ValueError(f"values must be (dim, n_tokens), got shape {self.values.shape}")
        self.name = name
        _, layer, kind = name.split(".")
        self.layer, self.kind = int(layer), kind
        self.dim, self.n_tokens = self.values.shape

    def column(self, unit: int) -> np.ndarray:
        return self.values[unit]

    def block(self, units, start: int, end: int) -> np.ndarray:
        return np.array(self.values[units, start:end])

    def gather(self, positions: np.ndarray) -> np.ndarray:
        return self.values[:, positions]

    def parts(self, units, positions=None) -> list[tuple[int, np.ndarray]]:
        return [(0, self.values)]

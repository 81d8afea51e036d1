"""The surprisal view of the web app without a browser: what it lists is the API's error
analysis, clicking a row shows it in the select view, and the select view draws each token's
surprisal under the tokens when the index stores it. Indexes with and without the stored
surprisal track (copies of the tiny index), and one of the shipped stdlib character model.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from test_analysis_surprisal import fresh_surprisal, index_copy

from lstmsearch.analysis.surprisal import (
    index_report,
    worst_documents,
)
from lstmsearch.index import open_index
from lstmsearch.models import load_model
from server import analyses, fetch
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, SELECT_TAB, App, build
from server.fetch import Shared
from server.surprisal_view import SurprisalView

SURPRISAL_TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(SurprisalView)
REPO = Path(__file__).resolve().parents[1]
STDLIB_MODEL = REPO / "data" / "models" / "stdlib-char-lstm.pt"


@pytest.fixture(scope="module")
def fresh(tiny_index, tiny_model_path) -> np.ndarray:
    return fresh_surprisal(tiny_index, tiny_model_path)


@pytest.fixture(scope="module")
def plain_index(tiny_index_path, tmp_path_factory):
    """The tiny index without a stored surprisal track: the view computes it with the model."""
    path = index_copy(tiny_index_path, tmp_path_factory.mktemp("plain") / "index", None)
    with open_index(path) as index:
        yield index


@pytest.fixture(scope="module")
def stored_index(tiny_index_path, tmp_path_factory, fresh):
    """The tiny index storing the model's surprisal as its track."""
    path = index_copy(tiny_index_path, tmp_path_factory.mktemp("stored") / "index", fresh)
    with open_index(path) as index:
        yield index


@pytest.fixture(scope="module")
def plain_shared(plain_index) -> Shared:
    return Shared(plain_index)


def show_surprisal(app: App) -> SurprisalView:
    """Open the surprisal tab (its analysis runs at once: no executor) and return the view."""
    app.tabs.active = SURPRISAL_TAB
    view = app.active_analysis()
    assert isinstance(view, SurprisalView)
    return view


def row_cells(view_cells: dict, row: int) -> list[tuple[int, float]]:
    """(position, value) of every cell of one row of a strip list."""
    return [(int(p), float(v)) for p, v, r in zip(view_cells["pos"], view_cells["value"],
                                                  view_cells["row"]) if r == row]


def test_the_view_lists_the_api_error_analysis(plain_shared: Shared, plain_index, fresh,
                                               tiny_model_path) -> None:
    app = build(Document(), plain_shared)
    view = show_surprisal(app)
    data = view.data
    assert data is not None and data.source == "computed"
    params = data.params
    want = index_report(plain_index, load_model(tiny_model_path), k=params.k,
                        width=params.width, min_count=params.min_count)
    # the worst tokens, worst first, each a row anchored at its token
    rows = view.tokens.rows
    assert [r.info["row"].start for r in rows] == [t.pos for t in want.worst_tokens]
    assert [r.info["row"].score for r in rows] == pytest.approx(
        [t.surprisal for t in want.worst_tokens], rel=1e-6)
    cells = view.tokens.cells.data
    marks = view.tokens.marks.data
    assert sum(1 for x in marks["x"] if x == 0) == len(want.worst_tokens)
    for i, token in enumerate(want.worst_tokens):
        values = dict(row_cells(cells, i))
        assert values[token.pos] == pytest.approx(token.surprisal, rel=1e-6)
        # every cell of the row holds that token's surprisal
        for pos, value in values.items():
            np.testing.assert_allclose(value, fresh[pos], rtol=1e-6, equal_nan=True)
    # the worst spans
    assert [(r.info["row"].start, r.info["row"].end) for r in view.spans.rows] == [
        (s.start, s.end) for s in want.worst_spans
    ]
    assert all(s.end - s.start == params.width for s in want.worst_spans)
    # the hardest types and the worst documents
    types = view.types_source.data
    assert list(types["count"]) == [t.count for t in want.hardest_types]
    assert list(types["mean"]) == pytest.approx([t.mean_surprisal for t in want.hardest_types])
    docs = view.docs_source.data
    worst = worst_documents(want.documents, params.k)
    assert list(docs["doc"]) == [d.doc for d in worst]
    assert list(docs["perplexity"]) == pytest.approx([d.perplexity for d in worst])
    # the summary and the histogram of every scored token
    assert f"{want.n_scored:,} of {plain_index.n_tokens:,}" in view.summary.text
    assert f"{want.perplexity:.4g}" in view.summary.text
    assert "computed with the index's model" in view.summary.text
    assert int(np.sum(view.hist_source.data["count"])) == want.n_scored
    assert view.mean_span.location == pytest.approx(np.nanmean(fresh), rel=1e-6)


def test_clicking_a_worst_token_shows_it_in_the_select_view(plain_shared: Shared) -> None:
    app = build(Document(), plain_shared)
    view = show_surprisal(app)
    target = view.data.report.worst_tokens[3]
    cells = view.tokens.cells.data
    cell = next(i for i, r in enumerate(cells["row"]) if r == 3)
    view.tokens.cells.selected.indices = [cell]
    s = app.session
    assert app.tabs.active == SELECT_TAB
    assert s.focus == (target.pos, target.pos + 1)
    assert s.window[0] <= target.pos < s.window[1]
    assert app.select_view.focus_box.visible
    assert app.select_view.focus_box.left == target.pos - 0.5
    assert app.select_view.tokens.data["x"][0] == s.window[0]
    # a worst span, then a worst document
    app.tabs.active = SURPRISAL_TAB
    span = view.data.report.worst_spans[1]
    cell = next(i for i, r in enumerate(view.spans.cells.data["row"]) if r == 1)
    view.spans.cells.selected.indices = [cell]
    assert s.focus == (span.start, span.end) and app.tabs.active == SELECT_TAB
    assert s.window[0] <= span.start < s.window[1]
    app.tabs.active = SURPRISAL_TAB
    doc = view.data.documents[0]
    view.docs_source.selected.indices = [0]
    assert s.focus == (doc.start, doc.end) and app.doc_input.value == doc.doc


def test_controls_recompute_the_lists(plain_shared: Shared, plain_index) -> None:
    app = build(Document(), plain_shared)
    view = show_surprisal(app)
    view.k.value = 5
    view.width.value = 3
    assert view.data.params.k == 5 and view.data.params.width == 3
    assert len(view.tokens.rows) == 5 and len(view.spans.rows) == 5
    assert all(r.info["row"].end - r.info["row"].start == 3 for r in view.spans.rows)
    assert len(view.docs_source.data["doc"]) == 5
    assert view.tokens.fig.height == view.tokens.height_for(5)
    # whole-index reports are kept per parameters for every session of the server
    assert ("surprisal-report", view.data.params) in plain_shared.cache
    view.k.value = None
    assert "Top K must be a whole number" in view.summary.text


def test_the_select_view_draws_stored_surprisal(stored_index, fresh) -> None:
    shared = Shared(stored_index)
    app = build(Document(), shared)
    sv = app.select_view
    assert sv.has_surprisal
    assert "surprisal" in sv.tok_fig.yaxis.major_label_overrides.values()
    start, end = app.session.window
    np.testing.assert_allclose(sv.tokens.data["surprisal"], fresh[start:end], rtol=1e-6)
    assert sv.tokens.data["surprisal_fill"][0] == "#ffffff"  # a document's first token
    assert len(set(sv.tokens.data["surprisal_fill"])) > 2
    app.pos_input.value = 1000
    start, end = app.session.window
    np.testing.assert_allclose(sv.tokens.data["surprisal"], fresh[start:end], rtol=1e-6,
                               equal_nan=True)
    # the surprisal view reads the stored track: the model is never loaded
    view = show_surprisal(app)
    assert view.data.source == "stored" and "model" not in shared.cache
    assert view.data.report.worst_tokens[0].pos == int(np.nanargmax(fresh))
    assert "stored surprisal track" in view.summary.text


def test_without_stored_surprisal_the_window_never_waits_for_the_model(plain_index) -> None:
    shared = Shared(plain_index)
    app = build(Document(), shared)
    assert not app.select_view.has_surprisal
    assert fetch.window_surprisal(shared, 0, 10) is None
    assert np.isnan(app.select_view.tokens.data["surprisal"]).all()
    assert "model" not in shared.cache
    show_surprisal(app)
    values, scale = fetch.window_surprisal(shared, 0, 10)  # computed once: now at hand
    assert len(values) == 10 and scale[0] == 0.0 and scale[1] > 0


def test_no_model_and_no_stored_surprisal_is_explained(tiny_index_path, tmp_path) -> None:
    path = index_copy(tiny_index_path, tmp_path / "states-only", None)
    (path / "model.pt").unlink()
    with open_index(path) as index:
        app = build(Document(), Shared(index))
        view = show_surprisal(app)
        assert view.data is None
        assert "has no model.pt" in view.summary.text
        assert len(view.tokens.cells.data["x"]) == 0
        assert "ready" in app.busy.text


def test_stdlib_char_model_finds_its_hardest_tokens(tmp_path) -> None:
    from indexer.build import build_index
    from lstmsearch.corpus import load_corpus

    corpus = load_corpus("python-stdlib", limit=12, max_bytes=8000)
    build_index(corpus, STDLIB_MODEL, tmp_path / "index", layers=[0], kinds=["h"],
                faiss=False, progress=False, tracks="none")
    with open_index(tmp_path / "index") as index:
        app = build(Document(), Shared(index))
        # surprisal is the only track: its own strip, no empty track row, no default track
        assert app.select_view.has_surprisal and not app.select_view.has_track
        assert app.session.track is None
        view = show_surprisal(app)
        values = analyses.surprisal_values(app.shared)[0]
        finite = values[np.isfinite(values)]
        worst = view.data.report.worst_tokens
        shown = [r.info["row"].start for r in view.tokens.rows]
        top = np.argsort(-np.nan_to_num(values, nan=-np.inf), kind="stable")[: len(worst)]
        assert shown == [t.pos for t in worst]
        assert sorted(shown) == sorted(top.tolist())
        median = float(np.median(finite))
        examples = [(t.text, index.text(max(t.pos - 12, index.doc_starts[t.doc]), t.pos + 1),
                     round(t.surprisal, 2)) for t in worst[:5]]
        assert worst[-1].surprisal > median + 5.0, (median, examples)
        assert worst[-1].surprisal > math.log(len(index.vocab())), examples  # worse than a guess
        assert view.data.report.perplexity < 10.0, (view.data.report.perplexity, examples)

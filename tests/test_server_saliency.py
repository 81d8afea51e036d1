"""The saliency view without a browser: its strip and top predictions hold the numbers of
`index_saliency` on the index's model; the position follows the window and the focus (and
the "Position" input); method and target recompute; a clicked token shows in the select
view; an index without a model says so."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, named, states_only_index

from lstmsearch.analysis.saliency import index_saliency
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, SELECT_TAB, App, build
from server.fetch import Shared
from server.saliency_view import SaliencyView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(SaliencyView)
WINDOW = analyses.SALIENCY_WINDOW_CHARS  # the tiny index is character-level





@pytest.fixture()
def app(shared: Shared) -> App:
    app = build(Document(), shared)
    app.tabs.active = TAB
    return app


def view_of(app: App) -> SaliencyView:
    return analysis_view(app, SaliencyView)


def api_saliency(shared: Shared, position: int, **kwargs):
    return index_saliency(shared.index, shared.model().model, position, window=WINDOW,
                          **kwargs)


def assert_shows(view: SaliencyView, want) -> None:
    """The strip holds the scores of `want` per token (and the next token, uncoloured);
    the table its top predictions."""
    cells = view.strip.cells.data
    positions = list(want.positions)
    if want.next_token is not None:
        positions.append(want.position + 1)
    assert list(cells["pos"]) == positions
    values = np.asarray(cells["value"], dtype=float)
    np.testing.assert_allclose(values[: len(want.scores)], want.scores, rtol=1e-6, atol=1e-9)
    assert np.isnan(values[len(want.scores):]).all()
    assert list(cells["full"][: len(want.texts)]) == [repr(t)[1:-1] for t in want.texts]
    marks = view.strip.marks.data
    assert len(marks["x"]) == 1  # the last input token is outlined
    top = view.top_source.data
    assert list(top["probability"]) == pytest.approx([p for _, _, p in want.top])
    assert list(top["token"]) == [repr(t)[1:-1] for _, t, _ in want.top]
    assert view.data.result.saliency.target == want.saliency.target
    assert f"{want.saliency.probability:.4f}" in view.summary.text
    assert not view.message.visible and view.strip.fig.visible


def test_strip_and_table_hold_the_saliency_of_the_default_prediction(
    app: App, shared: Shared
) -> None:
    view = view_of(app)
    start, end = app.session.window
    assert view.position.value == end - 2  # the window's second-to-last token
    want = api_saliency(shared, end - 2)
    first = int(shared.index.doc_starts[shared.index.doc_of(end - 2)])
    assert len(want.positions) == min(WINDOW, end - 1 - first)
    assert_shows(view, want)
    assert view.data.params.method == "grad_x_input" and view.data.params.target == "next"
    for name in ("saliency-position", "saliency-method", "saliency-target", "saliency-summary",
                 "saliency-top", "saliency-top-data", "saliency-plot", "saliency-cells",
                 "saliency-marks", "saliency-legend", "saliency-message", "saliency-view"):
        named(app.doc, name)


def test_method_target_and_position_recompute(app: App, shared: Shared) -> None:
    view = view_of(app)
    p = int(view.position.value)
    view.method.value = "integrated_gradients"
    want = api_saliency(shared, p, method="integrated_gradients")
    assert_shows(view, want)
    assert "embeddings zeroed" in view.summary.text
    view.target.value = "top"
    want = api_saliency(shared, p, method="integrated_gradients", target="top")
    assert want.saliency.target == want.top[0][0]
    assert_shows(view, want)
    view.method.value = "grad_x_input"
    view.position.value = p - 17
    assert_shows(view, api_saliency(shared, p - 17, target="top"))


def test_position_follows_the_window_while_visible(app: App, shared: Shared) -> None:
    view = view_of(app)
    view.position.value = 5  # typed: kept until the window moves
    app.step_window(1)
    start, end = app.session.window
    assert view.position.value == end - 2
    assert view.data.params.position == end - 2
    assert_shows(view, api_saliency(shared, end - 2))
    # a found or clicked token (the focus) is the prediction explained
    app.tabs.active = SELECT_TAB
    app.go_to_position(start + 7)
    assert view.data.params.position == end - 2  # hidden: not recomputed yet
    app.tabs.active = TAB
    assert view.position.value == start + 7
    assert_shows(view, api_saliency(shared, start + 7))


def test_clicking_a_token_shows_it_in_the_select_view(app: App) -> None:
    view = view_of(app)
    cells = view.strip.cells.data
    i = 3
    pos = int(cells["pos"][i])
    view.strip.cells.selected.indices = [i]
    assert app.session.focus == (pos, pos + 1)
    start, end = app.session.window
    assert start <= pos < end
    assert app.tabs.active == SELECT_TAB


def test_the_end_of_a_document_predicts_the_models_top_choice(app: App, shared: Shared) -> None:
    view = view_of(app)
    last = int(shared.index.doc_starts[2]) - 1
    view.position.value = last
    want = api_saliency(shared, last)
    assert want.next_token is None
    assert_shows(view, want)
    assert "document ends" in view.summary.text


def test_a_bad_position_says_so_and_the_next_one_shows_again(app: App) -> None:
    view = view_of(app)
    n = app.shared.index.n_tokens
    view.position.value = n + 5
    assert view.message.visible and f"position {n + 5} out of range" in view.message.text
    assert not view.strip.fig.visible and view.position.visible
    view.position.value = 30
    assert not view.message.visible and view.data.params.position == 30


def test_an_index_without_a_model_says_so(tmp_path) -> None:
    with states_only_index(tmp_path) as index:
        app = build(Document(), Shared(index))
        app.tabs.active = TAB
        view = view_of(app)
        assert view.message.visible and "no model.pt" in view.message.text
        assert not view.strip.fig.visible and not view.top_table.visible
        assert list(view.strip.cells.data["pos"]) == []

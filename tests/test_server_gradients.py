"""The gradients view without a browser: its lines, quantile bands and table hold the numbers
of `index_gradient_flow` on the index's model; its widgets recompute; "this document"
follows the window; an index without a model says so."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, named, states_only_index

from lstmsearch.analysis.gradients import index_gradient_flow
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, SELECT_TAB, App, build
from server.fetch import Shared
from server.gradient_view import BANDS, GradientView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(GradientView)





@pytest.fixture()
def app(shared: Shared) -> App:
    app = build(Document(), shared)
    app.tabs.active = TAB
    return app


def view_of(app: App) -> GradientView:
    return analysis_view(app, GradientView)


def api_flow(shared: Shared, docs=None, max_lag=None, n_positions=analyses.GRADIENT_POSITIONS):
    max_lag = analyses.default_max_lag(shared.char_level) if max_lag is None else max_lag
    return index_gradient_flow(shared.index, shared.model().model, docs, max_lag=max_lag,
                               n_positions=n_positions, n_docs=analyses.GRADIENT_DOCS, seed=0)


def assert_shows(view: GradientView, flow) -> None:
    """Lines, bands and table hold the flow's medians, quantiles and factors."""
    lines, bands, table = view.lines.data, view.bands.data, view.table_source.data
    names = [p.name for p in flow.profiles]
    assert list(lines["name"]) == names == list(table["name"])
    for i, p in enumerate(flow.profiles):
        assert np.isfinite(p.median).all() and (p.median > 0).all()  # every lag is drawn
        np.testing.assert_array_equal(lines["xs"][i], p.lags)
        np.testing.assert_array_equal(lines["ys"][i], p.median)
        levels = p.quantile_levels
        for low, high, _ in BANDS:
            j = next(j for j, (n, lo, hi) in enumerate(zip(bands["name"], bands["low"],
                                                          bands["high"]))
                     if n == p.name and (lo, hi) == (low, high))
            upper, lower = p.quantiles[levels.index(high)], p.quantiles[levels.index(low)]
            np.testing.assert_array_equal(bands["ys"][j], np.concatenate([upper, lower[::-1]]))
            np.testing.assert_array_equal(bands["xs"][j], np.concatenate([p.lags, p.lags[::-1]]))
            assert bands["color"][j] == lines["color"][i]
        assert table["factor"][i] == p.factor
        assert table["reading"][i] == ("vanishing" if p.factor < 0.99 else "exploding"
                                       if p.factor > 1.01 else "steady")
        assert table["k0"][i] == p.median[0] and table["k10"][i] == p.median[10]
        assert table["kmax"][i] == p.median[flow.max_lag]
    assert not view.message.visible and view.plot.visible
    assert len(set(lines["color"])) == len(names)
    low, high = view.plot.y_range.start, view.plot.y_range.end
    assert low < min(float(np.min(y)) for y in bands["ys"])
    assert high > max(float(np.max(y)) for y in bands["ys"])


def test_plot_and_table_hold_the_gradient_flow_of_a_sample(app: App, shared: Shared) -> None:
    view = view_of(app)
    assert view.scope.value == "sample" and view.max_lag.value == 60  # a character model
    flow = api_flow(shared)
    assert view.data.n_positions == len(flow.positions) == analyses.GRADIENT_POSITIONS
    assert view.data.documents == tuple(sorted(set(flow.docs.tolist())))
    assert_shows(view, flow)
    assert view.plot.x_range.end == 60
    assert f"{len(flow.positions)} positions" in view.plot.title.text
    # every state's bands are drawn: 10-90 % and 25-75 %
    assert len(view.bands.data["name"]) == len(BANDS) * len(flow.profiles)
    for name in ("gradients-plot", "gradients-lines", "gradients-bands", "gradients-table",
                 "gradients-table-data", "gradients-scope", "gradients-positions",
                 "gradients-max-lag", "gradients-summary", "gradients-message",
                 "gradients-view"):
        named(app.doc, name)


def test_widgets_recompute(app: App, shared: Shared) -> None:
    view = view_of(app)
    view.max_lag.value = 15
    view.positions.value = 12
    flow = api_flow(shared, max_lag=15, n_positions=12)
    assert view.data.params.max_lag == 15 and view.data.n_positions == 12
    assert_shows(view, flow)
    assert view.plot.x_range.end == 15


def test_this_document_follows_the_window(app: App, shared: Shared) -> None:
    view = view_of(app)
    view.max_lag.value = 12
    view.scope.value = "document"
    doc = app.context().document
    assert view.data.params.document == doc and view.data.documents == (doc,)
    assert_shows(view, api_flow(shared, [doc], max_lag=12))
    # the window moves to another document: recomputed there (the tab is visible)
    other = doc + 3
    app.go_to_document(other)
    assert app.context().document == other
    assert view.data.params.document == other
    assert_shows(view, api_flow(shared, [other], max_lag=12))
    # a sample does not depend on the window: moving it does not recompute
    view.scope.value = "sample"
    shown = view.data
    app.step_window(1)
    assert view.data is shown


def test_hidden_view_recomputes_when_shown(app: App, shared: Shared) -> None:
    view = view_of(app)
    view.scope.value = "document"
    app.tabs.active = SELECT_TAB
    app.go_to_document(5)
    assert view.data.params.document != 5  # hidden: nothing computed
    app.tabs.active = TAB
    assert view.data.params.document == 5


def test_an_index_without_a_model_says_so(tmp_path) -> None:
    with states_only_index(tmp_path) as index:
        app = build(Document(), Shared(index))
        app.tabs.active = TAB
        view = view_of(app)
        assert view.message.visible and "no model.pt" in view.message.text
        assert not view.plot.visible and not view.table.visible
        assert view.lines.data["name"] == []

"""The trajectory view without a browser: what it plots over the tiny index equals
`index_trajectory` of the session's state, window and track; it follows the window and the
state while its tab is shown; a clicked point shows its token in the select view."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view

from lstmsearch.analysis.trajectories import index_trajectory
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, SELECT_TAB, App, build
from server.display import ACCENT, TRACK_PALETTE, colours_of
from server.fetch import Shared
from server.trajectory_view import LABEL_POINTS, POSITION_PALETTE, TrajectoryView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(TrajectoryView)



@pytest.fixture()
def app(shared: Shared) -> App:
    return build(Document(), shared)


def shown(app: App) -> TrajectoryView:
    """Show the trajectory tab (which computes it) and return its view."""
    return analysis_view(app, TrajectoryView)


def plotted(view: TrajectoryView) -> np.ndarray:
    return np.column_stack([view.points.data["x"], view.points.data["y"]])


def test_the_window_path_is_the_api_trajectory_coloured_by_track(app: App, tiny_index) -> None:
    assert app.doc.select_one({"name": "trajectory-view"}) is None  # built when first shown
    shown(app)
    app.tabs.active = SELECT_TAB
    for name in ("trajectory-plot", "trajectory-points", "trajectory-segments",
                 "trajectory-span", "trajectory-fit", "trajectory-method",
                 "trajectory-summary", "trajectory-legend", "trajectory-view"):
        assert app.doc.select_one({"name": name}) is not None, name
    first_end = int(tiny_index.doc_starts[1])
    app.go_to_position(first_end)  # a window across the end of document 0
    view = shown(app)
    s = app.session
    assert s.track == "depth" and s.window[0] < first_end < s.window[1]
    start, end = s.window
    expected = index_trajectory(tiny_index, s.state, start, end, track="depth")
    np.testing.assert_allclose(plotted(view), expected.points)
    data = view.points.data
    np.testing.assert_array_equal(data["pos"], np.arange(start, end))
    np.testing.assert_array_equal(data["value"], expected.values)
    depth = tiny_index.track("depth")
    low, high = float(np.nanmin(depth)), float(np.nanmax(depth))
    assert list(data["fill"]) == colours_of(expected.values, low, high, TRACK_PALETTE)
    assert list(data["token"]) == [repr(t)[1:-1] for t in tiny_index.tokens(start, end).text]
    # the explained variance in the axis labels, first and last points marked
    ratios = expected.explained_variance_ratio
    assert view.fig.xaxis.axis_label == f"PC1 ({100 * ratios[0]:.0f}% of variance)"
    assert view.fig.yaxis.axis_label == f"PC2 ({100 * ratios[1]:.0f}% of variance)"
    assert list(view.ends.data["x"]) == [expected.points[0, 0], expected.points[-1, 0]]
    assert view.ends.data["text"] == ["start", "end"]
    assert "depth" in view.legend.text
    # the tiny index's documents are short: the window crosses boundaries, which are marked
    # (the step into a new document is dotted, not a segment of the path)
    docs = np.searchsorted(tiny_index.doc_starts, np.arange(start, end), side="right") - 1
    n_bounds = int((np.diff(docs) != 0).sum())
    assert n_bounds >= 1
    assert len(view.jumps.data["x0"]) == len(view.doc_marks.data["x"]) == n_bounds
    assert len(view.segments.data["x0"]) == end - start - 1 - n_bounds
    changes = np.flatnonzero(np.diff(docs))
    assert view.doc_marks.data["text"] == [f"doc {docs[i + 1]}" for i in changes]
    # short paths carry their tokens as labels
    assert end - start <= LABEL_POINTS and len(view.labels.data["text"]) == end - start


def test_the_view_follows_window_and_state_while_shown(app: App, tiny_index) -> None:
    view = shown(app)
    first = plotted(view).copy()
    app.step_window(1)
    start, end = app.session.window
    assert start > 0
    expected = index_trajectory(tiny_index, app.session.state, start, end, track="depth")
    np.testing.assert_allclose(plotted(view), expected.points)
    app.set_state("layers.0.h")
    expected = index_trajectory(tiny_index, "layers.0.h", start, end, track="depth")
    np.testing.assert_allclose(plotted(view), expected.points)
    assert view.fig.title.text.startswith("layers.0.h")
    # another tab shown: nothing is computed until the trajectory tab is shown again
    app.tabs.active = SELECT_TAB
    app.step_window(-1)
    np.testing.assert_allclose(plotted(view), expected.points)
    app.tabs.active = TAB
    assert app.session.window[0] == 0
    back = index_trajectory(tiny_index, "layers.0.h", *app.session.window, track="depth")
    np.testing.assert_allclose(plotted(view), back.points)
    assert not np.allclose(back.points, first)  # another state than at first


def test_no_track_colours_by_position(app: App, tiny_index) -> None:
    app.track_select.value = "(none)"
    view = shown(app)
    n = app.session.window[1] - app.session.window[0]
    assert list(view.points.data["fill"]) == colours_of(np.arange(n), 0, n - 1, POSITION_PALETTE)
    assert np.isnan(view.points.data["value"]).all()
    assert "order along the path" in view.legend.text


def test_document_span_and_document_axes(app: App, tiny_index) -> None:
    view = shown(app)
    app.go_to_document(7)  # 112 tokens: longer than the window
    start, end = app.session.window
    view.span_select.value = "document"
    a, b = int(tiny_index.doc_starts[7]), int(tiny_index.doc_starts[8])
    assert end < b
    expected = index_trajectory(tiny_index, app.session.state, a, b, track="depth")
    np.testing.assert_allclose(plotted(view), expected.points)
    # the window's points are larger and outlined in the accent colour
    data = view.points.data
    inside = (data["pos"] >= start) & (data["pos"] < end)
    assert inside.sum() == end - start
    assert data["size"][inside].min() > data["size"][~inside].max()
    assert set(data["outline"][inside]) == {ACCENT}
    # a window path projected on axes fitted on its documents
    view.span_select.value = "window"
    view.fit_select.value = "document"
    fitted = index_trajectory(tiny_index, app.session.state, start, end, fit="document")
    np.testing.assert_allclose(plotted(view), fitted.points)
    assert "documents' variance" in view.fig.xaxis.axis_label


def test_a_long_document_is_cut_around_the_window(shared: Shared, tiny_index,
                                                  monkeypatch) -> None:
    monkeypatch.setattr(analyses, "TRAJECTORY_MAX_POINTS", 20)
    a, b = int(tiny_index.doc_starts[7]), int(tiny_index.doc_starts[8])
    assert b - a > 40
    params = analyses.TrajectoryParams(state="layers.1.c", window=(a + 25, a + 30), document=7,
                                       span="document")
    data = analyses.trajectory(shared, params)
    assert (data.start, data.end) == (a + 20, a + 40) and data.cut
    assert data.doc_span == (a, b)


def test_tapping_a_point_shows_its_token_in_the_select_view(app: App) -> None:
    view = shown(app)
    pos = int(view.points.data["pos"][5])
    view.points.selected.indices = [5]
    assert app.tabs.active == SELECT_TAB
    assert app.session.focus == (pos, pos + 1)
    assert app.session.window[0] <= pos < app.session.window[1]
    assert view.points.selected.indices == []


def test_a_bad_choice_is_shown_as_a_message(app: App) -> None:
    view = shown(app)
    view.method_select.options = [("pca", "PCA"), ("spectral", "spectral")]
    view.method_select.value = "spectral"
    assert view.message.visible and "'spectral'" in view.message.text
    assert not view.fig.visible
    view.method_select.value = "pca"
    assert not view.message.visible and view.fig.visible

"""The trajectory view's t-SNE and UMAP: offered (the set-up installs them), drawn from one
map per index and state that every session shares (fitted once), windows placed into it."""

from __future__ import annotations

import numpy as np
from bokeh.document import Document
from conftest import analysis_view

from lstmsearch.analysis.trajectories import PROJECTIONS, fitted_projection
from server.app import build
from server.fetch import Shared
from server.trajectory_view import TrajectoryView


def test_tsne_windows_of_two_sessions_share_one_map(tiny_index) -> None:
    shared = Shared(tiny_index)
    first, second = build(Document(), shared), build(Document(), shared)
    view = analysis_view(first, TrajectoryView)
    assert [m for m, _ in view.method_select.options] == ["pca", "umap", "tsne"]
    state = first.session.state
    fits = PROJECTIONS.fits
    view.method_select.value = "tsne"
    projection = fitted_projection(tiny_index, state, "tsne")  # from the cache now
    assert PROJECTIONS.fits <= fits + 1
    start, end = first.session.window
    states = tiny_index.store(state).block(slice(None), start, end).T
    drawn = np.column_stack([view.points.data["x"], view.points.data["y"]])
    np.testing.assert_allclose(drawn, projection.transform(states))
    assert view.fit_select.disabled and "t-SNE" in view.fig.xaxis.axis_label
    assert "fitted once" in view.summary.text
    other = analysis_view(second, TrajectoryView)
    second.go_to_position(end + 20)
    other.method_select.value = "tsne"
    assert PROJECTIONS.fits <= fits + 1  # the second session's window: the same map
    a, b = second.session.window
    states = tiny_index.store(state).block(slice(None), a, b).T
    np.testing.assert_allclose(np.column_stack([other.points.data["x"],
                                                other.points.data["y"]]),
                               projection.transform(states))

"""The weights view without a browser: its table, histogram and singular values hold the
numbers of `weight_report` on the index's model; picking a block redraws it; an index
without a model says so."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, named, states_only_index

from lstmsearch.analysis.weights import weight_report
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, App, build
from server.fetch import Shared
from server.weight_view import WeightView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(WeightView)




@pytest.fixture()
def app(shared: Shared) -> App:
    app = build(Document(), shared)
    app.tabs.active = TAB
    return app


def view_of(app: App) -> WeightView:
    return analysis_view(app, WeightView)


def report(shared: Shared):
    return {m.name: m for m in weight_report(shared.model().model, analyses.WEIGHT_BINS)}


def assert_shows(view: WeightView, block) -> None:
    hist = view.hist_source.data
    np.testing.assert_array_equal(hist["count"], block.histogram_counts)
    np.testing.assert_allclose(hist["left"], block.histogram_edges[:-1])
    np.testing.assert_allclose(hist["right"], block.histogram_edges[1:])
    sv = view.sv_source.data
    np.testing.assert_allclose(sv["sigma"], block.singular_values)
    assert list(sv["index"]) == list(range(1, len(block.singular_values) + 1))
    assert view.select.value == block.name
    rows = view.table_source.data["name"]
    assert view.table_source.selected.indices == [rows.index(block.name)]


def test_table_lists_every_block_with_the_report_numbers(app: App, shared: Shared) -> None:
    view = view_of(app)
    want = report(shared)
    table = named(app.doc, "weights-table").source.data
    assert list(table["name"]) == list(want)
    assert len(want) == 3 + 2 * 2 * 4 * 2  # embed, head; 2 layers x (W, b) x (i, h) x 4 gates
    for i, name in enumerate(table["name"]):
        m = want[name]
        assert table["shape"][i] == "×".join(str(d) for d in m.shape)
        assert table["mean"][i] == pytest.approx(m.mean)
        assert table["std"][i] == pytest.approx(m.std)
        if m.spectral_norm is None:
            assert np.isnan(table["spectral_norm"][i])
        else:
            assert table["spectral_norm"][i] == pytest.approx(m.spectral_norm)
        if m.spectral_radius is None:
            assert np.isnan(table["spectral_radius"][i])
        else:
            assert table["spectral_radius"][i] == pytest.approx(m.spectral_radius)
    assert not view.message.visible


def test_first_recurrent_block_is_shown_with_its_radius(app: App, shared: Shared) -> None:
    view = view_of(app)
    block = report(shared)["layers.0.W_hi"]
    assert_shows(view, block)
    radius = named(app.doc, "weights-radius")
    assert radius.visible and radius.location == pytest.approx(block.spectral_radius)
    assert named(app.doc, "weights-sigma-one").visible
    fig = named(app.doc, "weights-singular")
    assert fig.y_range.start < min(block.spectral_radius, 1.0, block.singular_values.min())
    assert fig.y_range.end > max(block.spectral_radius, 1.0, block.singular_values.max())
    assert "spectral radius" in fig.title.text


def test_picking_another_block_redraws(app: App, shared: Shared) -> None:
    view = view_of(app)
    want = report(shared)
    named(app.doc, "weights-select").value = "layers.1.W_if"  # an input block: no radius
    assert_shows(view, want["layers.1.W_if"])
    assert not named(app.doc, "weights-radius").visible
    rows = list(view.table_source.data["name"])
    view.table_source.selected.indices = [rows.index("embed")]  # a click on a table row
    assert_shows(view, want["embed"])
    view.select.value = "layers.0.b_hf"  # a vector
    assert_shows(view, want["layers.0.b_hf"])
    assert "no singular values" in named(app.doc, "weights-singular").title.text
    view.select.value = "layers.1.W_ho"
    assert_shows(view, want["layers.1.W_ho"])
    assert named(app.doc, "weights-radius").location == pytest.approx(
        want["layers.1.W_ho"].spectral_radius)


def test_report_is_computed_once_per_server(shared: Shared) -> None:
    first = build(Document(), shared)
    first.tabs.active = TAB
    second = build(Document(), shared)
    second.tabs.active = TAB
    data = [view_of(a).data for a in (first, second)]
    assert data[0] is not None and data[0] is data[1]
    assert shared.cache[("weights", analyses.WeightParams())] is data[0]


def test_a_state_change_keeps_the_chosen_block(app: App) -> None:
    view = view_of(app)
    view.select.value = "head.weight"
    app.set_state("layers.0.h")
    assert view.select.value == "head.weight" and not view.message.visible


def test_an_index_without_a_model_says_so(tmp_path) -> None:
    with states_only_index(tmp_path) as index:
        app = build(Document(), Shared(index))
        app.tabs.active = TAB
        view = view_of(app)
        assert view.message.visible and "no model.pt" in view.message.text
        assert not view.table.visible and not view.hist.visible
        assert view.hist_source.data["count"] == []

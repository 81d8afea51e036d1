"""The gates view without a browser: what it plots over the tiny index equals `index_gates`
with the index's model for the session's layer, window and units; it follows window, state
and units; an index without a model gets a clear message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view

from lstmsearch.analysis.gates import index_gates
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, NEURON_TAB, SELECT_TAB, App, build
from server.display import colours_of
from server.fetch import Shared
from server.gate_view import GATE_PALETTE, MAX_UNIT_PLOTS, GateView, parse_units
from server.trajectory_view import TrajectoryView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(GateView)



@pytest.fixture(scope="module")
def model(shared: Shared):
    return shared.model().model


@pytest.fixture()
def app(shared: Shared) -> App:
    return build(Document(), shared)


def shown(app: App) -> GateView:
    """Show the gates tab (which computes it) and return its view."""
    return analysis_view(app, GateView)


def lines_of(view: GateView, k: int) -> dict[str, np.ndarray]:
    """Gate letter -> the values plotted in unit plot `k`."""
    data = view.line_sources[k].data
    return {g: np.asarray(y) for g, y in zip(data["gate"], data["ys"])}


def test_the_window_gates_are_the_api_gates(app: App, tiny_index, model) -> None:
    assert app.doc.select_one({"name": "gates-view"}) is None  # built when first shown
    shown(app)
    app.tabs.active = SELECT_TAB
    for name in ("gates-units", "gates-choice", "gates-heat-gate", "gates-info",
                 "gates-unit-0", "gates-lines-0", "gates-token-plot", "gates-heatmap",
                 "gates-heat-data", "gates-stats", "gates-saturation", "gates-view"):
        assert app.doc.select_one({"name": name}) is not None, name
    app.go_to_position(int(tiny_index.doc_starts[3]) + 30)  # a window across documents
    view = shown(app)
    s = app.session
    assert s.state == "layers.1.c" and s.unit == 0
    start, end = s.window
    expected = index_gates(tiny_index, model, 1, start, end, candidate=True)
    # the neuron view's unit, one line per sigmoid gate
    assert [f.visible for f in view.unit_figs] == [True] + [False] * (MAX_UNIT_PLOTS - 1)
    lines = lines_of(view, 0)
    assert list(lines) == ["i", "f", "o"]
    for g, values in lines.items():
        np.testing.assert_allclose(values, expected.series[g][:, 0])
    np.testing.assert_array_equal(view.line_sources[0].data["xs"][0], np.arange(start, end))
    assert view.unit_figs[0].title.text.startswith("unit 0:")
    # tokens along x, document boundaries marked
    assert list(view.tokens.data["full"]) == [repr(t)[1:-1] for t in
                                              tiny_index.tokens(start, end).text]
    docs = np.searchsorted(tiny_index.doc_starts, np.arange(start, end), side="right") - 1
    bounds = [start + i + 1 - 0.5 for i in np.flatnonzero(np.diff(docs))]
    assert bounds and view.bounds.data["x"] == bounds
    # heatmap: the forget gate of every unit, unit-major
    heat = view.heat.data
    f = expected.series["f"]
    np.testing.assert_allclose(heat["value"], f.T.reshape(-1))
    assert list(heat["fill"]) == colours_of(f.T.reshape(-1), 0.0, 1.0, GATE_PALETTE)
    assert list(view.heat_marks.data["top"] + 0.5) == [0]
    assert "f forget" in view.key.text
    # statistics over the window: the layer's saturation and the unit's table
    for low, high in expected.layer_saturation.values():
        assert f"{100 * low:.0f}% &lt; 0.1" in view.saturation.text
        assert f"{100 * high:.0f}% &gt; 0.9" in view.saturation.text
    table = view.stats_source.data
    assert table["gate"] == ["i input", "f forget", "o output"]
    assert table["mean"] == pytest.approx([expected.unit_stats(0, g).mean for g in "ifo"])
    assert table["high"] == [expected.unit_stats(0, g).high_fraction for g in "ifo"]
    assert "document's start" in view.info.text and not view.message.visible


def test_units_gates_and_heatmap_choices(app: App, tiny_index, model) -> None:
    view = shown(app)
    start, end = app.session.window
    expected = index_gates(tiny_index, model, 1, start, end, candidate=True)
    view.units_input.value = "7, 3"
    assert [f.visible for f in view.unit_figs[:3]] == [True, True, False]
    for k, unit in enumerate((7, 3)):
        np.testing.assert_allclose(lines_of(view, k)["f"], expected.series["f"][:, unit])
    assert view.stats_source.data["unit"] == [7, 7, 7, 3, 3, 3]
    assert list(view.heat_marks.data["top"] + 0.5) == [7, 3]
    # the candidate g, dashed, on [-1, 1]; the forget gate left out
    view.gates_choice.active = [0, 2, 3]
    assert list(lines_of(view, 0)) == ["i", "o"]
    np.testing.assert_allclose(view.candidate_sources[0].data["y"], expected.candidate[:, 7])
    assert (view.unit_figs[0].y_range.start, view.unit_figs[0].y_range.end) == (-1.05, 1.05)
    # the heatmap of the candidate
    view.heat_select.value = "g"
    np.testing.assert_allclose(view.heat.data["value"], expected.candidate.T.reshape(-1))
    # a click on a heatmap row shows that unit
    row = 5 * (end - start) + 2  # unit 5, third token
    view.heat.selected.indices = [row]
    assert view.units_input.value == "5"
    np.testing.assert_allclose(lines_of(view, 0)["i"], expected.series["i"][:, 5])


def test_bad_units_and_no_gate_are_explained(app: App) -> None:
    view = shown(app)
    view.units_input.value = "12"
    assert view.message.visible and "unit 12 out of range" in view.message.text
    assert "0..11" in view.message.text
    view.units_input.value = "3;4"
    assert "'3;4' is not one" in view.message.text
    view.units_input.value = "2"
    assert not view.message.visible
    view.gates_choice.active = []
    assert view.message.visible and "at least one gate" in view.message.text
    assert parse_units("61, 12,61") == (61, 12)


def test_the_view_follows_window_state_and_neuron_unit(app: App, tiny_index, model) -> None:
    view = shown(app)
    app.step_window(1)
    start, end = app.session.window
    expected = index_gates(tiny_index, model, 1, start, end, units=[0])
    np.testing.assert_allclose(lines_of(view, 0)["i"], expected.series["i"][:, 0])
    app.set_state("layers.0.h")
    expected = index_gates(tiny_index, model, 0, start, end, units=[0])
    np.testing.assert_allclose(lines_of(view, 0)["i"], expected.series["i"][:, 0])
    assert "layer 0" in view.info.text
    # the neuron view's unit is the default unit
    app.open_unit(9)
    assert app.tabs.active == NEURON_TAB
    app.step_window(1)  # not shown: nothing computed
    assert view.data.params.window == (start, end)
    app.tabs.active = TAB
    start, end = app.session.window
    expected = index_gates(tiny_index, model, 0, start, end, units=[9])
    assert view.data.params.units == (9,) and view.data.params.window == (start, end)
    np.testing.assert_allclose(lines_of(view, 0)["f"], expected.series["f"][:, 0])


def test_tapping_a_token_shows_it_in_the_select_view(app: App) -> None:
    view = shown(app)
    pos = int(view.tokens.data["x"][4])
    view.tokens.selected.indices = [4]
    assert app.tabs.active == SELECT_TAB and app.session.focus == (pos, pos + 1)


def test_a_long_prefix_is_cut_and_said(shared: Shared, tiny_index, monkeypatch) -> None:
    monkeypatch.setattr(analyses, "GATES_MAX_PREFIX", 10)
    a = int(tiny_index.doc_starts[7])
    params = analyses.GatesParams(state="layers.0.c", window=(a + 40, a + 60), units=(1,),
                                  shown=("i",), heat="f")
    data = analyses.gates(shared, params)
    assert not data.exact and data.run_start == a + 30 and data.max_prefix == 10
    cut = index_gates(tiny_index, shared.model().model, 0, a + 40, a + 60, max_prefix=10)
    np.testing.assert_allclose(data.activity.series["i"], cut.series["i"])
    view = GateView(shared)
    view.show(data)
    assert "approximate" in view.info.text and "position " + str(a + 30) in view.info.text


# --- an index without a model ------------------------------------------------------------------


@pytest.fixture()
def states_index(tmp_path: Path):
    """An index of states computed elsewhere (.npy): no model to run."""
    from indexer.states import index_states
    from lstmsearch.index import open_index

    docs = [["the", "cat", "sat", "."], ["a", "dog", "ran", "to", "the", "cat"]]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n\n".join("\n".join(d) for d in docs) + "\n", encoding="utf-8")
    n = sum(len(d) for d in docs)
    states = tmp_path / "h.npy"
    np.save(states, np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32))
    out = tmp_path / "idx"
    index_states(tokens, {"layers.0.h": states}, out, progress=False)
    index = open_index(out)
    yield index
    index.close()


def test_an_index_without_a_model_says_so(states_index) -> None:
    app = build(Document(), Shared(states_index))
    view = shown(app)
    assert view.message.visible and "model.pt" in view.message.text
    assert "stored states" in view.message.text
    # the trajectory needs no model
    app.tabs.active = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(TrajectoryView)
    trajectory = app.active_analysis()
    assert not trajectory.message.visible
    assert len(trajectory.points.data["x"]) == states_index.n_tokens


def test_a_gru_index_shows_reset_update_and_candidate(tmp_path: Path) -> None:
    from conftest import make_tiny_model, tiny_parens

    from indexer.build import build_index
    from lstmsearch.index import open_index

    corpus = tiny_parens(6)
    model_path = make_tiny_model(tmp_path / "gru.pt", corpus, arch="gru", layers=1)
    build_index(corpus, model_path, tmp_path / "idx", progress=False)
    with open_index(tmp_path / "idx") as index:
        shared = Shared(index)
        app = build(Document(), shared)
        view = shown(app)
        assert view.letters == ("r", "z", "n") and view.heat_select.value == "z"
        assert view.gates_choice.labels == ["r reset", "z update", "n candidate"]
        view.gates_choice.active = [0, 1, 2]
        start, end = app.session.window
        expected = index_gates(index, shared.model().model, 0, start, end, candidate=True)
        lines = lines_of(view, 0)
        assert list(lines) == ["r", "z"]
        np.testing.assert_allclose(lines["z"], expected.series["z"][:, 0])
        np.testing.assert_allclose(view.candidate_sources[0].data["y"], expected.candidate[:, 0])
        assert "r reset" in view.saturation.text and not view.message.visible

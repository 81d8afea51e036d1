"""The neuron view's ablation and probe panels: nothing runs until a button is pressed;
then the ablation panel has one bar per value of the session's track with the change in
surprisal `index_ablation` gives, and the probe panel the scores and top units of
`index_probe`, a click on one opening it; another unit (ablation) or state (probe) hides
the result; an index without a model says why in the panel."""

from __future__ import annotations

import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick

from lstmsearch.analysis.ablation import index_ablation
from lstmsearch.analysis.probe import index_probe
from server import analyses
from server.app import NEURON_TAB, App, build
from server.fetch import Shared


@pytest.fixture()
def app(shared: Shared) -> App:
    return build(Document(), shared)


def press(panel) -> None:
    panel.button._trigger_event(ButtonClick(panel.button))


def test_the_panel_runs_only_when_asked_and_draws_the_result(app: App, tiny_index) -> None:
    app.tabs.active = NEURON_TAB
    app.neuron_view.unit.value = 4
    panel = app.neuron_view.ablation
    assert not panel.fig.visible and panel.source.data["value"] == []
    app.session.track = "depth"
    panel.value.value = "mean"
    press(panel)
    want = index_ablation(tiny_index, *_state(app), 4, value="mean",
                          span=(0, min(tiny_index.n_tokens, analyses.ABLATION_TOKENS)))
    depth = [g for g in want.groups if g.track == "depth"]
    assert panel.fig.visible and not panel.button.disabled
    assert panel.source.data["value"] == [g.value for g in depth]
    assert panel.source.data["change"] == pytest.approx([g.change for g in depth])
    assert panel.overall.location == pytest.approx(want.change)
    assert "unit 4 clamped to its mean" in panel.text.text
    app.neuron_view.unit.value = 5  # another unit: the last result goes
    assert not panel.fig.visible


def _state(app: App) -> tuple[int, str]:
    layer, kind = app.session.state.split(".")[1:]
    return int(layer), kind


def test_an_index_without_a_model_says_why(tmp_path) -> None:
    from tests.conftest import states_only_index

    app = build(Document(), Shared(states_only_index(tmp_path / "plain")))
    app.tabs.active = NEURON_TAB
    panel = app.neuron_view.ablation
    press(panel)
    assert "has no model.pt" in panel.text.text and not panel.fig.visible


def test_the_probe_panel_lists_the_units_and_opens_them(app: App, tiny_index) -> None:
    app.tabs.active = NEURON_TAB
    panel = app.neuron_view.probe
    assert app.session.track == "depth" and not panel.table.visible
    press(panel)
    want = index_probe(tiny_index, "depth", *_state(app))
    assert panel.table.visible and not panel.button.disabled
    assert panel.source.data["unit"] == [u.unit for u in want.units[:10]]
    assert f"<b>{want.score:.3f}</b>" in panel.text.text
    assert f"random weights {want.control:.3f}" in panel.text.text
    unit = panel.source.data["unit"][2]
    panel.source.selected.indices = [2]
    assert app.session.unit == unit and app.neuron_view.unit.value == unit
    assert panel.table.visible  # same state and track: the probe stays
    other = next(n for n in tiny_index.state_names if n != app.session.state)
    app.state_select.value = other
    assert not panel.table.visible

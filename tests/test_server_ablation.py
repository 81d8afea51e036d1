"""The neuron view's ablation panel: nothing runs until its button is pressed; then one bar
per value of the session's track shows the change in surprisal, as `index_ablation` says;
another unit hides it; an index without a model says why in the panel."""

from __future__ import annotations

import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick

from lstmsearch.analysis.ablation import index_ablation
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

"""The units view without a browser: the heatmap holds the expected response in the
co-clustered order, the clusters and the ranking are the API's; spinners, state and track
changes update the view while it is shown; clicking a unit opens it in the neuron view. On
the shipped parens model the depth unit comes first and answers "(" and ")" in opposite
directions."""

from __future__ import annotations

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, named

from lstmsearch.analysis.units import index_units, rank_units
from lstmsearch.corpus import load_corpus
from server import analyses
from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB, NEURON_TAB, NO_TRACK, App, build
from server.display import token_label
from server.fetch import Shared, correlations
from server.unit_view import UnitView

TAB = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(UnitView)
PARENS_MODEL = "data/models/parens-lstm.pt"
DEPTH_UNIT = 51




@pytest.fixture()
def app(shared: Shared) -> App:
    app = build(Document(), shared)
    app.tabs.active = TAB
    return app


def view_of(app: App) -> UnitView:
    return analysis_view(app, UnitView)


def api_units(app: App, view: UnitView, track: str | None):
    """What the view should show, straight from the API with the view's settings."""
    return index_units(app.shared.index, app.session.state, words=int(view.words.value),
                       min_count=int(view.min_count.value), n_clusters=int(view.clusters.value),
                       track=track, max_tokens=view.max_tokens, top=analyses.UNIT_RANKING)


def assert_heatmap(view: UnitView, want) -> None:
    """Cells hold response[word, unit] with words and units in the co-clustering's order."""
    response = want.response.response.response
    cc = want.co_clustering
    cells = view.cells.data
    n_words, n_units = response.shape
    assert len(cells["value"]) == n_words * n_units
    x, y = np.asarray(cells["x"]), np.asarray(cells["y"])
    units, values = np.asarray(cells["unit"]), np.asarray(cells["value"])
    np.testing.assert_array_equal(units, cc.unit_order[x])
    np.testing.assert_allclose(values, response[cc.word_order[y], cc.unit_order[x]])
    np.testing.assert_array_equal(cells["word_cluster"], cc.word_labels[cc.word_order[y]])
    np.testing.assert_array_equal(cells["unit_cluster"], cc.unit_labels[units])
    words = want.response.response.words
    assert view.heatmap.yaxis.major_label_overrides == {
        i: token_label(words[cc.word_order[i]], 10, char_level=True) for i in range(n_words)
    }


def test_heatmap_clusters_and_ranking_are_the_apis(app: App) -> None:
    view = view_of(app)
    assert app.session.track == "depth"
    want = api_units(app, view, "depth")
    assert view.words.value == len(app.shared.index.vocab())  # char index: every type
    assert len(want.response.response.words) > 5
    assert_heatmap(view, want)
    cc = want.co_clustering
    clusters = named(app.doc, "units-clusters").source.data
    assert list(clusters["n_words"]) == [len(c.words) for c in cc.clusters]
    assert list(clusters["n_units"]) == [len(c.units) for c in cc.clusters]
    assert list(clusters["units"]) == [" ".join(str(u) for u in c.units) for c in cc.clusters]
    # the co-clusters are outlined: one block per cluster with words and units
    blocks = named(app.doc, "units-blocks").data
    assert len(blocks["x"]) == sum(1 for c in cc.clusters if c.words and c.units)
    assert sum(w * h for w, h in zip(blocks["w"], blocks["h"])) == sum(
        len(c.words) * len(c.units) for c in cc.clusters)
    ranking = named(app.doc, "units-ranking")
    assert ranking.visible
    data = ranking.source.data
    assert list(data["unit"]) == [c.unit for c in want.ranking]
    np.testing.assert_allclose(data["r"], [c.r for c in want.ranking])
    # the same ranking as the neuron view's (fetch.correlations) and as rank_units
    assert [u for u, _ in correlations(app.shared, app.session.state, "depth")] == list(
        data["unit"])
    index = app.shared.index
    direct = rank_units(index.states(app.session.state), index.track("depth"), top=20)
    assert [c.unit for c in direct] == list(data["unit"])
    summary = named(app.doc, "units-summary").text
    assert f"all {index.n_tokens:,} tokens" in summary and "4 co-clusters" in summary


def test_spinners_state_and_track_update_the_view(app: App) -> None:
    view = view_of(app)
    view.clusters.value = 2
    want = api_units(app, view, "depth")
    assert want.co_clustering.n_clusters == 2
    assert_heatmap(view, want)
    assert len(view.cluster_source.data["cluster"]) == 2
    view.words.value = 5
    assert len(view.cells.data["value"]) == 5 * app.shared.index.store(app.session.state).dim
    assert_heatmap(view, api_units(app, view, "depth"))
    app.set_state("layers.0.h")
    assert_heatmap(view, api_units(app, view, "depth"))
    assert "layers.0.h" in view.summary.text
    app.set_track(NO_TRACK)
    assert not named(app.doc, "units-ranking").visible
    assert_heatmap(view, api_units(app, view, None))
    app.set_track("depth")
    assert named(app.doc, "units-ranking").visible
    assert list(view.ranking_source.data["unit"]) == [
        c.unit for c in api_units(app, view, "depth").ranking]


def test_the_response_is_cached_per_state_words_and_min_count(app: App, shared: Shared) -> None:
    view = view_of(app)
    assert view.data is not None
    key = ("units-response", app.session.state, int(view.words.value),
           int(view.min_count.value), view.max_tokens)
    assert shared.cache[key][0] is view.data.response
    view.clusters.value = 3  # a new co-clustering of the same response
    assert view.data.cached and view.data.response is shared.cache[key][0]
    assert "cached" in view.summary.text


def test_a_sample_is_said_to_be_one(app: App) -> None:
    view = view_of(app)
    index = app.shared.index
    view.max_tokens = int(index.doc_starts[5]) + 1  # inside document 5: it is left out
    view.min_count.value = 1
    summary = view.summary.text
    assert "first 5 documents" in summary and "a sample" in summary
    assert view.data.response.n_tokens == int(index.doc_starts[5])
    view.min_count.value = 10**6
    assert view.message.visible and "min count" in view.message.text
    view.min_count.value = 1
    assert not view.message.visible


def test_clicking_a_cell_or_a_ranked_unit_opens_the_neuron_view(app: App) -> None:
    view = view_of(app)
    cells = view.cells.data
    i = len(cells["unit"]) // 2 + 1
    unit = int(cells["unit"][i])
    view.cells.selected.indices = [i]
    assert app.tabs.active == NEURON_TAB and app.session.unit == unit
    assert app.neuron_view.unit.value == unit
    app.tabs.active = TAB
    ranked = int(view.ranking_source.data["unit"][1])
    view.ranking_source.selected.indices = [1]
    assert app.tabs.active == NEURON_TAB and app.session.unit == ranked
    app.tabs.active = TAB  # back again: the same cell opens its unit again
    view.cells.selected.indices = [i]
    assert app.tabs.active == NEURON_TAB and app.session.unit == unit


# --- the shipped parens model ------------------------------------------------------------------


@pytest.fixture(scope="module")
def parens_shared(tmp_path_factory) -> Shared:
    from indexer.build import build_index
    from lstmsearch.index import open_index

    out = tmp_path_factory.mktemp("parens-units") / "index"
    build_index(load_corpus("parens", limit=60), PARENS_MODEL, out, progress=False)
    index = open_index(out)
    yield Shared(index)
    index.close()


def test_parens_depth_unit_ranks_first_and_answers_brackets_oppositely(parens_shared) -> None:
    app = build(Document(), parens_shared)
    assert app.session.state == "layers.0.c" and app.session.track == "depth"
    app.tabs.active = TAB
    view = view_of(app)
    ranking = view.ranking_source.data
    assert ranking["unit"][0] == DEPTH_UNIT and ranking["r"][0] < -0.75
    cells = view.cells.data
    response = view.data.response.response
    assert {"(", ")"} <= set(response.words)
    at = {}
    for k, unit in enumerate(cells["unit"]):
        if unit == DEPTH_UNIT:
            at[cells["word"][k]] = cells["value"][k]
    assert at["("] * at[")"] < 0
    opening = response.response[response.words.index("("), DEPTH_UNIT]
    assert np.sign(at["("]) == np.sign(opening) and at["("] == pytest.approx(opening)


def test_word_labels_thin_out_when_rows_are_short() -> None:
    from server.unit_view import label_step

    assert label_step(18) == 1 and label_step(12) == 1
    assert label_step(10) == 2 and label_step(4) == 3

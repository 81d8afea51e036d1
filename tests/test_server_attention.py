"""The Attention tab: without a browser its heatmap and worst tokens hold
`lstmsearch.attention`'s numbers; in headless Chromium it draws them; an index of a model
without attention says so."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, attention_model_index, browser_test

from lstmsearch.attention import heatmap, worst_tokens
from lstmsearch.index import open_index
from server.app import SELECT_TAB, build
from server.attention_view import AttentionView
from server.fetch import Shared


@pytest.fixture(scope="module")
def attention_index_path(tmp_path_factory) -> Path:
    return attention_model_index(
        tmp_path_factory.mktemp("attention-view"),
        ["(()(1))((2)())", "((2)())(()", "()(((3)))()", "(1)(2)(3)"], window=4, seed=4)[0]


def test_the_tab_draws_the_windows_heatmap_and_the_worst_tokens(attention_index_path):
    with open_index(attention_index_path) as index:
        app = build(Document(), Shared(index))
        view = analysis_view(app, AttentionView)
        assert view.data is not None
        start, end = app.session.window
        want = heatmap(index, start, min(end, start + 48))
        assert view.data.heatmap.rows == want.rows
        cells = view.cells.data
        assert len(cells["x"]) == int((want.weights > 0).sum())
        np.testing.assert_allclose(sorted(cells["weight"]), sorted(want.weights[want.weights > 0]))
        worst = worst_tokens(index, 15)
        assert list(view.worst_source.data["pos"]) == [w.pos for w in worst]
        # a brushed span's tokens are the rows
        app.session.span = (5, 9)
        app.refresh_analysis(view)
        assert view.data.heatmap.rows == (5, 6, 7, 8) == heatmap(index, 5, 9).rows
        # a worst token opens in the select view
        view.worst_source.selected.indices = [0]
        assert app.tabs.active == SELECT_TAB
        assert app.session.focus == (worst[0].pos, worst[0].pos + 1)


def test_an_index_without_attention_says_so(shared):
    view = analysis_view(build(Document(), shared), AttentionView)
    assert view.data is None and "stores no attention" in view.summary.text


@browser_test
def test_the_attention_tab_in_the_browser(attention_index_path):
    pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    from browser import (
        assert_no_errors,
        load,
        make_driver,
        model_value,
        quit_driver,
        rows_in,
        screenshot,
        start_server,
        stop_server,
    )
    from test_browser_analyses import show

    with open_index(attention_index_path) as index:
        want = heatmap(index, 0, min(index.n_tokens, 48))
    proc, url = start_server(attention_index_path)
    d = make_driver()
    try:
        load(d, url)
        show(d, "Attention", "attention-cells")
        assert rows_in(d, "attention-cells") == int((want.weights > 0).sum())
        assert rows_in(d, "attention-worst-data", "pos") == 15
        assert rows_in(d, "select-attention-arcs", "x0") > 0  # the select view's arcs
        assert "Attention of tokens" in model_value(d, "attention-summary", "m.text")
        screenshot(d, "attention-view.png")
        assert_no_errors(d, "the attention tab")
    finally:
        quit_driver(d)
        stop_server(proc)


def test_a_session_starts_on_a_label_of_the_text_rather_than_the_attention():
    from server.app import default_track

    assert default_track(["attention_1_offset", "attention_entropy", "depth",
                          "surprisal"]) == "depth"
    assert default_track(["attention_entropy", "surprisal"]) == "attention_entropy"
    assert default_track(["surprisal"]) is None


def test_the_select_view_draws_an_arc_to_where_each_token_looks_most(attention_index_path,
                                                                     shared):
    from lstmsearch.attention import offset_track, weight_track

    with open_index(attention_index_path) as index:
        app = build(Document(), Shared(index))
        start, end = app.session.window
        offsets = index.track(offset_track(1))
        weights = index.track(weight_track(1))
        want = sorted((float(p - offsets[p]), float(p)) for p in range(start, end)
                      if np.isfinite(offsets[p]) and weights[p] >= 0.25
                      and p - offsets[p] >= start)
        arcs = app.select_view.arcs.data
        assert want and sorted(zip(arcs["x0"], arcs["x1"], strict=True)) == want
        assert (np.asarray(arcs["cy"]) > 1.0).all()
    # an index without attention draws none
    plain = build(Document(), shared)
    assert len(plain.select_view.arcs.data["x0"]) == 0


def test_the_match_view_lists_spans_that_attend_like_the_brushed_one(attention_index_path,
                                                                      shared):
    from lstmsearch.attention import attends_like
    from server.match_view import ATTENTION_TITLE

    with open_index(attention_index_path) as index:
        app = build(Document(), Shared(index))
        mv = app.match_view
        assert len(mv.mode.labels) == 3
        mv.mode.active = 2
        app.select_view.tokens.selected.indices = [4, 5, 6]  # brush tokens 4..6
        start, end = app.session.span
        rows = mv.rows
        want = attends_like(index, start, end, limit=50)
        assert [(r.start, r.end) for r in rows] == [(m.start, m.end) for m in want]
        assert [r.score for r in rows] == pytest.approx([m.score for m in want])
        assert mv.strips.fig.title.text == ATTENTION_TITLE
        assert "attend like" in mv.summary.text
        assert "mode=attention" in app.url.text
    # an index without attention has two modes, and a URL asking for it is told so
    plain = build(Document(), shared)
    assert len(plain.match_view.mode.labels) == 2
    plain.restore({"mode": [b"attention"]})
    assert plain.session.mode == "match" and "stores no attention" in plain.status.text

"""The web app without a browser: build its document over the tiny index, drive the
callbacks (selections, widget values, UI events) and check what the views then hold against
the Python API. Also: the embedded server with two sessions at once, and the CLI commands.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from bokeh.events import ButtonClick
from conftest import named

from lstmsearch import query
from lstmsearch.cli import build_parser
from server.app import NEURON_TAB, SELECT_TAB, App, build
from server.display import place_label
from server.fetch import Shared, distinct_contexts, runs_of


@pytest.fixture()
def app(shared: Shared) -> App:
    return build(Document(), shared)


def brush(app: App, first: int, last: int) -> None:
    """Select window tokens first..last (inclusive, window-relative) as the box select does."""
    app.select_view.tokens.selected.indices = list(range(first, last + 1))


def brush_pattern(app: App) -> tuple[int, int]:
    """Brush two-token spans until one gives a non-empty S; the span."""
    start = app.session.window[0]
    for i in range(3, app.session.window[1] - start - 2):
        brush(app, i, i + 1)
        if app.session.pattern is not None and app.session.pattern.units:
            return start + i, start + i + 2
    raise AssertionError("no two-token span of the first window gives a pattern")


def api_pattern(index, state: str, span: tuple[int, int], threshold: float, pad_left: int = 1,
                pad_right: int = 0, sign: int = 1):
    return query.select(index.store(state), index.doc_starts, span[0], span[1], threshold,
                        pad_left=pad_left, pad_right=pad_right, sign=sign)


# --- the document ---------------------------------------------------------------------------


def test_build_lays_out_every_view(app: App, tiny_index) -> None:
    doc = app.doc
    for name in ("select-plot", "token-plot", "pattern-list", "match-plot", "match-summary",
                 "state-select", "threshold-slider", "threshold-input", "pad-left",
                 "pad-right", "busy", "tabs", "doc-input", "pos-input", "phrase-input",
                 "threshold-span"):
        named(doc, name)
    # the other tabs are built when first shown, so that a new page is small
    assert doc.select_one({"name": "neuron-hist"}) is None
    app.tabs.active = NEURON_TAB
    for name in ("neuron-hist", "neuron-top-plot", "neuron-hits-plot"):
        named(doc, name)
    app.tabs.active = SELECT_TAB
    assert doc.title.startswith("lstmsearch")
    assert named(doc, "state-select").options == tiny_index.state_names
    # the first window: tokens as text, one line per unit of the default state
    tokens = app.select_view.tokens.data
    width = app.session.window[1] - app.session.window[0]
    assert len(tokens["x"]) == width
    assert list(tokens["x"]) == list(range(width))
    assert "".join(tokens["full"]) == tiny_index.text(0, width).replace("\n", "\\n")
    store = tiny_index.store(app.session.state)
    assert len(app.select_view.lines.data["ys"]) == store.dim
    np.testing.assert_allclose(app.select_view.lines.data["ys"][3],
                               store.column(3)[:width].astype(np.float32))
    assert app.select_view.set_lines.data["unit"] == []
    assert "ready" in app.busy.text
    # state names are spelled layers.{L}.{kind} in the UI
    assert all(re.fullmatch(r"layers\.\d+\.[a-z]+", s) for s in app.state_select.options)


def test_brush_selects_pattern_and_lists_matches(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    s = app.session
    expected = api_pattern(tiny_index, s.state, span, s.threshold)
    assert s.pattern.units == expected.units
    assert (s.pattern.start, s.pattern.end) == span
    # S highlighted in the line plot, listed beside it, the span and padding marked
    assert list(app.select_view.set_lines.data["unit"]) == list(expected.units)
    listing = app.select_view.pattern_div.text
    assert f"Pattern S: {len(expected.units)} unit" in listing
    assert all(f">{u}</span>" in listing for u in expected.units)
    assert app.select_view.span_box.visible
    assert app.select_view.span_box.left == span[0] - 0.5
    assert app.select_view.span_box.right == span[1] - 0.5
    # the match list holds the API's ranked matches, aligned on their start
    result = query.match(tiny_index.store(s.state), tiny_index.doc_starts, expected, limit=50)
    rows = app.match_view.rows
    assert [(r.start, r.end, r.overlap, r.extra) for r in rows] == [
        (m.start, m.end, m.overlap, m.extra) for m in result.matches
    ]
    cells = app.match_view.strips.cells.data
    assert len(cells["x"]) > 0
    first = [i for i, r in enumerate(cells["row"]) if r == 0]
    xs = [int(cells["x"][i]) for i in first]
    assert 0 in xs and min(xs) <= 0
    # heat values inside the match are the per-token counts
    inside = [float(cells["value"][i]) for i in first if 0 <= cells["x"][i] < rows[0].end - rows[0].start]
    assert inside == [float(c) for c in result.matches[0].counts]
    assert f"{len(rows)}</b> best of" in app.match_view.summary.text
    hist = app.match_view.hist_source.data
    assert dict(zip(hist["length"], hist["count"])) == result.length_histogram


def test_threshold_widgets_stay_in_step(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    s = app.session
    scale = app.shared.scale(s.state)
    theta = scale.threshold_at(0.9)
    app.threshold_slider.value = 0.9  # dragging a quantile of |x|: only the lines follow
    assert app.select_view.threshold_span.location == theta
    assert app.threshold_input.value == theta  # the threshold shown beside the slider
    assert s.pattern.threshold == 0.3
    app.threshold_slider.trigger("value_throttled", 0.5, 0.9)  # released: the query runs
    assert s.threshold == theta and s.pattern.threshold == theta
    assert app.select_view.threshold_span.location == theta
    assert s.pattern.units == api_pattern(tiny_index, s.state, span, theta).units
    x = np.abs(tiny_index.store(s.state).columns.astype(np.float64))
    assert abs(np.mean(x >= theta) - 0.1) < 0.02  # about 10% of |x| are at least θ
    # dragging the threshold line in the plot moves the slider to its quantile
    app.select_view.threshold_span.location = 0.2
    assert s.pattern.threshold == 0.2
    assert app.threshold_slider.value == round(scale.quantile_of(0.2), 3)
    # an exact threshold typed into the number box
    app.threshold_input.value = 0.357
    assert s.pattern.threshold == 0.357 and app.threshold_input.value == 0.357
    assert app.threshold_slider.value == round(scale.quantile_of(0.357), 3)


def test_fixed_y_axis_spans_the_state(app: App) -> None:
    scale = app.shared.scale(app.session.state)
    app.fixed_y.active = True
    first = (app.select_view.y_range.start, app.select_view.y_range.end)
    assert first[0] <= min(scale.low, -app.session.threshold) and first[1] >= scale.high
    app.step_window(+1)
    app.step_window(+1)
    assert (app.select_view.y_range.start, app.select_view.y_range.end) == first
    app.fixed_y.active = False
    app.threshold_input.value = scale.high + 3  # the threshold always shows
    assert app.select_view.y_range.end > scale.high + 3


def test_empty_pattern_suggests_a_threshold(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    s = app.session
    app.threshold_input.value = 50.0  # nothing is that high
    assert s.pattern.units == () and s.result.result is None
    first = s.result.suggestions[0]
    assert first.sign == 1
    again = api_pattern(tiny_index, s.state, span, first.threshold, sign=first.sign)
    assert again.units == first.units and first.units
    summary = app.match_view.summary.text
    assert f"θ = {first.threshold:g} with x ≥ θ" in summary
    assert app.match_view.suggest.visible
    app.match_view.suggest._trigger_event(ButtonClick(app.match_view.suggest))
    assert (s.threshold, s.sign) == (first.threshold, first.sign)
    assert s.pattern.units == first.units and s.result.rows
    assert not app.match_view.suggest.visible
    assert app.threshold_input.value == first.threshold
    # a negative suggestion switches the sign toggle
    app.threshold_input.value = 50.0
    negative = [g for g in s.result.suggestions if g.sign < 0]
    if negative:
        app.use_suggestion(negative[0].threshold, -1)
        assert app.sign_toggle.active == 1 and s.pattern.sign == -1
        assert s.pattern.units == negative[0].units


def test_padding_and_negative_patterns(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    app.pad_left.value = 0
    app.pad_right.value = 2
    s = app.session
    assert (s.pattern.pad_left, s.pattern.pad_right) == (0, 2)
    assert s.pattern.units == api_pattern(tiny_index, s.state, span, s.threshold, 0, 2).units
    if s.pattern.units:
        assert app.select_view.pad_right_box.visible
        assert not app.select_view.pad_left_box.visible
    app.sign_toggle.active = 1
    assert s.pattern.sign == -1
    app.sign_toggle.active = 7  # no such button: the sign in use is shown again
    assert app.sign_toggle.active == 1 and s.sign == -1
    assert s.pattern.units == api_pattern(tiny_index, s.state, span, s.threshold, 0, 2, -1).units
    assert app.select_view.threshold_span.location == -s.threshold


def test_match_length_controls(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    s, mv = app.session, app.match_view
    pattern = api_pattern(tiny_index, s.state, span, s.threshold)

    def shown() -> list[tuple[int, int]]:
        return [(r.start, r.end) for r in mv.rows]

    def api(**lengths) -> list[tuple[int, int]]:
        result = query.match(tiny_index.store(s.state), tiny_index.doc_starts, pattern,
                             limit=50, **lengths)
        return [(m.start, m.end) for m in result.matches]

    assert shown() == api() and all(e - b >= 2 for b, e in shown())  # a 2-token span: >= 2
    mv.min_length.value = 1
    assert s.min_length == 1 and shown() == api(min_length=1)
    best = shown()[0]
    mv.length.value = best[1] - best[0]  # exact length: the minimum goes back to auto
    assert (s.min_length, s.length) == (None, best[1] - best[0])
    assert mv.min_length.value == 0 and shown() == api(length=best[1] - best[0])
    assert best in shown()
    mv.length.value = 10**9  # a page can send anything: clamped, then refused in one line
    assert "longer than the longest document" in app.status.text
    assert len(app.status.text.splitlines()) == 1
    mv.length.value = None  # emptied
    assert s.length is None and mv.length.value == 0 and shown() == api()
    assert app.status.text == ""


def test_empty_pattern_explains_itself(app: App) -> None:
    brush(app, 5, 7)
    app.threshold_input.value = 50.0
    assert app.session.pattern.units == ()
    assert "S is empty" in app.match_view.summary.text
    assert len(app.match_view.strips.cells.data["x"]) == 0
    assert "No unit is on" in app.select_view.pattern_div.text


def test_brush_across_documents_shows_an_error(app: App, tiny_index) -> None:
    boundary = int(tiny_index.doc_starts[1])
    app.pos_input.value = boundary
    start = app.session.window[0]
    assert start < boundary < app.session.window[1]
    brush(app, boundary - start - 2, boundary - start + 1)
    assert "crosses the end of document" in app.status.text
    assert app.session.pattern is None
    # the page goes on working
    app.doc_input.value = 2
    assert app.status.text == ""
    assert app.session.window[0] == int(tiny_index.doc_starts[2])


def test_clicking_a_match_moves_the_select_view(app: App) -> None:
    brush_pattern(app)
    rows = app.match_view.rows
    assert len(rows) >= 2
    target = rows[-1]
    cells = app.match_view.strips.cells.data
    cell = next(i for i, r in enumerate(cells["row"]) if r == len(rows) - 1)
    app.tabs.active = NEURON_TAB
    app.match_view.strips.cells.selected.indices = [cell]
    s = app.session
    assert s.window[0] <= target.start < s.window[1]
    assert min(target.end, target.start + app.width // 2) <= s.window[1]
    assert s.focus == (target.start, target.end)
    assert app.select_view.focus_box.visible
    assert app.select_view.focus_box.left == target.start - 0.5
    assert app.tabs.active == SELECT_TAB
    tokens = app.select_view.tokens.data
    assert tokens["x"][0] == s.window[0]
    # the pattern's units stay highlighted over the new window
    assert list(app.select_view.set_lines.data["unit"]) == list(s.pattern.units)
    assert app.doc_input.value == target.document


def test_clicking_a_line_opens_the_neuron_view(app: App, tiny_index) -> None:
    brush_pattern(app)
    unit = int(app.select_view.set_lines.data["unit"][0])
    app.select_view.set_lines.selected.indices = [0]
    assert app.tabs.active == NEURON_TAB
    nv = app.neuron_view
    assert nv.unit.value == unit
    assert f"unit {unit}" in nv.stats.text
    data = nv.data
    column = tiny_index.store(app.session.state).column(unit)
    # histogram of every stored value
    assert int(sum(nv.hist_source.data["count"])) == tiny_index.n_tokens
    # threshold hits at the unit's own threshold (its q99): the exact count, and runs where
    # the unit is on; where they are over the corpus
    q99 = float(np.quantile(column.astype(np.float64), 0.99))
    assert data.threshold == pytest.approx(q99, abs=0.02) and data.threshold <= q99 + 1e-9
    assert nv.threshold.value == data.threshold
    on = query.is_on(column, data.threshold)
    assert data.n_hits == int(on.sum())
    assert int(sum(nv.corpus_source.data["count"])) == data.n_hits
    first_bin = np.searchsorted(nv.corpus_source.data["right"], np.flatnonzero(on)[0],
                                side="right")
    assert nv.corpus_source.data["count"][first_bin] > 0
    assert f"<b>{data.n_hits:,}</b> tokens" in nv.stats.text
    for r in data.hit_rows:
        assert on[r.start:r.end].all()
    # top contexts: the API's top positions, best first
    top_pos, top_values = tiny_index.unit_top(app.session.state, unit=unit)
    assert data.top_rows[0].start == int(top_pos[0])
    assert data.top_rows[0].score == pytest.approx(float(top_values[0]))
    assert len(nv.top.cells.data["x"]) > 0
    assert len(nv.hits.cells.data["x"]) > 0
    # a line of a unit outside S opens too
    app.tabs.active = SELECT_TAB
    app.select_view.lines.selected.indices = [2]
    assert app.tabs.active == NEURON_TAB and nv.unit.value == 2


def test_neuron_picker_and_rows(app: App, tiny_index) -> None:
    app.tabs.active = NEURON_TAB
    app.neuron_view.unit.value = 5
    assert app.session.unit == 5 and app.neuron_view.data.query.unit == 5
    # tapping a top context shows it in the select view
    row = app.neuron_view.data.top_rows[0]
    cell = next(i for i, r in enumerate(app.neuron_view.top.cells.data["row"]) if r == 0)
    app.neuron_view.top.cells.selected.indices = [cell]
    assert app.tabs.active == SELECT_TAB
    assert app.session.focus == (row.start, row.end)
    # the neuron view has a threshold of its own: the select view's leaves it alone
    app.tabs.active = NEURON_TAB
    own = app.neuron_view.data.threshold
    app.threshold_input.value = 0.6
    assert app.neuron_view.data.threshold == own
    app.neuron_view.threshold.value = 0.6
    assert app.neuron_view.data.threshold == 0.6 and app.session.threshold == 0.6
    column = tiny_index.store(app.session.state).column(5)
    assert app.neuron_view.data.n_hits == int(query.is_on(column, 0.6).sum())
    app.neuron_view.hist_threshold.location = 0.25  # the histogram's line dragged
    assert app.neuron_view.data.threshold == 0.25 and app.neuron_view.threshold.value == 0.25
    assert app.select_view.threshold_span.location == 0.6
    app.neuron_view.threshold.value = float("nan")  # not a number: the one in use again
    assert app.neuron_view.threshold.value == 0.25
    # another unit starts at its own default again
    app.neuron_view.unit.value = 6
    assert app.neuron_view.data.query.threshold is None


def test_state_switch_reloads_everything(app: App, tiny_index) -> None:
    brush_pattern(app)
    other = next(n for n in tiny_index.state_names if n != app.session.state)
    app.state_select.value = other
    s = app.session
    assert s.state == other
    store = tiny_index.store(other)
    width = s.window[1] - s.window[0]
    np.testing.assert_allclose(app.select_view.lines.data["ys"][0],
                               store.column(0)[s.window[0]:s.window[0] + width].astype(np.float32))
    assert s.pattern.state == other
    assert other in app.select_view.fig.title.text


def test_navigation(app: App, tiny_index) -> None:
    app.doc_input.value = 3
    start = int(tiny_index.doc_starts[3])
    assert app.session.window[0] == min(start, tiny_index.n_tokens - app.width)
    assert app.select_view.tokens.data["x"][0] == app.session.window[0]
    app.next_button._trigger_event(ButtonClick(app.next_button))
    assert app.session.window[0] == start + (3 * app.width) // 4
    app.prev_button._trigger_event(ButtonClick(app.prev_button))
    assert app.session.window[0] == start
    app.window_size.value = 32
    assert app.session.window[1] - app.session.window[0] == 32
    assert len(app.select_view.tokens.data["x"]) == 32
    app.pos_input.value = 1000
    assert app.session.window[0] <= 1000 < app.session.window[1]
    assert app.session.focus == (1000, 1001)
    app.pos_input.value = tiny_index.n_tokens + 5
    assert "out of range" in app.status.text


def test_track_strip_and_choice(app: App, tiny_index) -> None:
    assert app.session.track == "depth"
    depth = tiny_index.track("depth")
    width = app.session.window[1]
    np.testing.assert_allclose(app.select_view.tokens.data["track"], depth[:width])
    brush_pattern(app)
    assert app.match_view.rows[0].track is not None
    assert "depth" in app.match_view.legend.text
    app.track_select.value = "(none)"
    assert app.session.track is None
    assert app.match_view.rows[0].track is None
    assert np.isnan(app.select_view.tokens.data["track"]).all()


def test_track_correlation_table(app: App, tiny_index) -> None:
    from lstmsearch.analysis.units import rank_units

    assert len(app.neuron_view.corr_source.data["unit"]) == 0  # computed when first shown
    app.tabs.active = NEURON_TAB
    table = app.neuron_view.corr_source.data
    assert len(table["unit"]) > 0 and app.neuron_view.corr_table.visible
    expected = rank_units(tiny_index.states(app.session.state), tiny_index.track("depth"))
    assert list(table["unit"]) == [c.unit for c in expected][: len(table["unit"])]
    app.neuron_view.corr_source.selected.indices = [1]
    assert app.neuron_view.unit.value == expected[1].unit
    assert app.neuron_view.data.query.unit == expected[1].unit
    # without a track the histogram takes the table's room: the view fills its width
    nv = app.neuron_view
    with_table = nv.hist.width
    app.track_select.value = "(none)"
    assert not nv.corr_table.visible and nv.hist.width == with_table + 320


def test_nearest_mode(app: App, tiny_index) -> None:
    span = brush_pattern(app)
    app.match_view.mode.active = 1
    if not hasattr(tiny_index, "nearest"):
        assert "not available" in app.status.text
        return
    rows = app.match_view.rows
    store = tiny_index.store(app.session.state)
    expected = tiny_index.nearest(span[0], span[1], store.layer, store.kind, 50)
    assert [(r.start, r.end) for r in rows] == [(n.start, n.end) for n in expected]
    assert [r.score for r in rows] == pytest.approx([n.distance for n in expected])
    assert rows[0].score <= rows[-1].score
    assert "nearest" in app.match_view.summary.text
    assert app.match_view.strips.fig.title.text.startswith("Nearest")
    # only what applies: no counts of S, match lengths or candidate histogram
    mv = app.match_view
    assert not any(m.visible for m in (mv.legend, mv.hist, mv.min_length, mv.length))
    app.match_view.mode.active = 0
    assert all(m.visible for m in (mv.legend, mv.hist, mv.min_length, mv.length))


def test_match_rows_name_their_document_and_place(app: App, tiny_index) -> None:
    brush_pattern(app)
    names = [d.name for d in tiny_index.documents()]
    labels = [strip.label for strip in app.match_view.strips.rows]
    for r, label in zip(app.match_view.rows, labels):
        doc = tiny_index.doc_of(r.start)
        offset = r.start - int(tiny_index.doc_starts[doc])
        assert (r.document, r.doc_name, r.offset) == (doc, names[doc], offset)
        where = label.removesuffix(" (query)").split()[-1]
        assert where == place_label(names[doc], offset)
        assert names[doc].endswith(where.rsplit(":", 1)[0].lstrip("…"))
    assert labels and len(labels) == len(app.match_view.rows)


def test_phrase_search(app: App, tiny_index) -> None:
    if not hasattr(tiny_index, "find"):
        app.phrase_input.value = "(("
        assert "not available" in app.status.text
        return
    text = tiny_index.text(40, 44)
    app.phrase_input.value = text
    hits = tiny_index.find(text, limit=100)
    assert app.session.focus == (hits[0].start, hits[0].end)
    assert tiny_index.text(*app.session.focus) == text
    assert app.session.window[0] <= hits[0].start < app.session.window[1]
    assert f"1 of {len(hits)}" in app.phrase_status.text
    # finding selects: S and its matches as the CLI's `match --phrase` gives them
    s = app.session
    store = tiny_index.store(s.state)
    cli = tiny_index.select_phrase(text, s.threshold, store.layer, store.kind,
                                   pad_left=s.pad_left, pad_right=s.pad_right)
    assert s.span == (hits[0].start, hits[0].end)
    assert (s.pattern.start, s.pattern.end, s.pattern.units) == (cli.start, cli.end, cli.units)
    if cli.units:
        expected = tiny_index.match(cli, limit=50)
        assert [(r.start, r.end) for r in s.result.rows] == [
            (m.start, m.end) for m in expected.matches]
    assert app.select_view.tokens.selected.indices == list(
        range(hits[0].start - s.window[0], hits[0].end - s.window[0]))
    if len(hits) > 1:
        app.phrase_next._trigger_event(ButtonClick(app.phrase_next))
        assert app.session.focus == (hits[1].start, hits[1].end)
        assert app.session.pattern.start == hits[1].start
    app.phrase_input.value = "no such phrase ((((("
    assert "not found" in app.phrase_status.text


# --- helpers --------------------------------------------------------------------------------


def test_recent_results_are_shared_by_sessions_and_bounded(tiny_index, monkeypatch) -> None:
    from server import fetch

    shared = Shared(tiny_index)
    computed = []
    run = fetch._run_pattern

    def counted(*args):
        computed.append(args[1])
        return run(*args)

    monkeypatch.setattr(fetch, "_run_pattern", counted)
    first, second = build(Document(), shared), build(Document(), shared)
    span = brush_pattern(first)
    first_result = first.session.result
    second.select_view.tokens.selected.indices = list(range(span[0] - first.session.window[0],
                                                            span[1] - first.session.window[0]))
    assert second.session.span == span
    # the same query, computed once (each session then adds the candidates' lengths)
    assert second.session.result.rows is first_result.rows
    assert len(computed) == len({q for q in computed})
    # the server keeps only the latest RECENT_RESULTS queries
    q = computed[-1]
    for k in range(fetch.RECENT_RESULTS + 1):
        fetch.run_pattern(shared, replace(q, threshold=0.01 * k + 0.001), None, 10)
    assert len(shared._recent) == fetch.RECENT_RESULTS
    again = len(computed)
    fetch.run_pattern(shared, replace(q, threshold=0.01 * fetch.RECENT_RESULTS + 0.001), None, 10)
    assert len(computed) == again  # kept
    fetch.run_pattern(shared, replace(q, threshold=0.001), None, 10)
    assert len(computed) == again + 1  # the oldest was dropped


def test_analyses_are_computed_once_per_server(tiny_index) -> None:
    from server.app import ANALYSIS_VIEWS, FIRST_ANALYSIS_TAB
    from server.gate_view import GateView

    shared = Shared(tiny_index)
    first, second = build(Document(), shared), build(Document(), shared)
    tab = FIRST_ANALYSIS_TAB + ANALYSIS_VIEWS.index(GateView)
    calls = []
    for app in (first, second):
        view = app.analysis_view(tab - FIRST_ANALYSIS_TAB)
        compute = view.fetch
        view.fetch = lambda shared, params, compute=compute: calls.append(params) or compute(
            shared, params)
        app.tabs.active = tab
    assert len(calls) == 1  # the second session got the first one's result
    views = [app.analysis_views[tab - FIRST_ANALYSIS_TAB] for app in (first, second)]
    assert views[1].data is views[0].data is not None


def test_display_grouping_helpers() -> None:
    assert runs_of(np.array([3, 4, 5, 9, 11, 12])) == [(3, 6), (9, 10), (11, 13)]
    assert runs_of(np.array([], dtype=np.int64)) == []
    assert distinct_contexts(np.array([10, 11, 30, 12, 50]), 5, 3).tolist() == [0, 2, 4]


# --- the embedded server: two sessions at once, work off the event loop ------------------------


def test_server_runs_two_independent_sessions(tiny_index, monkeypatch) -> None:
    from bokeh.client import pull_session

    from lstmsearch.serve import make_server, url_of
    from server import fetch
    from server.session import BUSY_DELAY_MS

    slow = 2 * BUSY_DELAY_MS / 1000
    run_pattern = fetch.run_pattern

    def slow_run_pattern(*args, **kwargs):  # a query slower than the busy indicator's delay
        time.sleep(slow)
        return run_pattern(*args, **kwargs)

    monkeypatch.setattr(fetch, "run_pattern", slow_run_pattern)

    server = make_server(tiny_index, port=0)
    loop = server.io_loop
    server.start()
    try:
        url = url_of(server)
        assert url.startswith("http://127.0.0.1:")
        first = pull_session(url=url, io_loop=loop)
        second = pull_session(url=url, io_loop=loop)
        assert first.id != second.id
        sessions = {s.id: s for s in server.get_sessions("/")}
        assert len(sessions) == 2
        doc_a, doc_b = sessions[first.id].document, sessions[second.id].document
        assert named(doc_a, "select-tokens") is not named(doc_b, "select-tokens")

        server_a = sessions[first.id]

        async def brush_and_wait() -> None:
            tokens = named(doc_a, "select-tokens")
            busy = named(doc_a, "busy")

            def brush(i: int) -> None:
                tokens.selected.indices = [i, i + 1]

            listing = named(doc_a, "pattern-list")
            for i in range(3, len(tokens.data["x"]) - 2):
                before = listing.text
                await server_a.with_document_locked(brush, i)
                # the query runs in the pool, the loop stays free; slow work shows "working…"
                assert "ready" in busy.text
                deadline = time.monotonic() + 20
                while "working" not in busy.text and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert "working" in busy.text and "match" in busy.text
                while "working" in busy.text and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)
                assert "ready" in busy.text
                while listing.text == before and time.monotonic() < deadline:
                    await asyncio.sleep(0.01)  # S is drawn just after the matches
                if len(named(doc_a, "select-set-lines").data["unit"]):
                    return
            raise AssertionError("no pattern found")

        loop.run_sync(brush_and_wait, timeout=60)
        assert len(named(doc_a, "match-cells").data["x"]) > 0
        # the other session saw none of it
        assert len(named(doc_b, "select-set-lines").data["unit"]) == 0
        assert len(named(doc_b, "match-cells").data["x"]) == 0
        assert named(doc_b, "select-tokens").selected.indices == []
        first.close()
        second.close()
    finally:
        server.stop()
        server.lstmsearch_executor.shutdown(wait=False)


# --- the CLI -------------------------------------------------------------------------------


def test_cli_parses_serve_and_demo() -> None:
    args = build_parser().parse_args(["serve", "some-index"])
    assert (args.index, args.port, args.host, args.open) == ("some-index", 5006, "127.0.0.1", False)
    args = build_parser().parse_args(["serve", "x", "--port", "0", "--host", "0.0.0.0"])
    assert (args.port, args.host) == (0, "0.0.0.0")
    args = build_parser().parse_args(["demo"])
    assert args.name == "parens" and args.host == "127.0.0.1"
    args = build_parser().parse_args(["demo", "english", "--port", "7000"])
    assert (args.name, args.port) == ("english", 7000)


def test_cli_serve_prints_url_and_serves(tiny_index_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmsearch.cli", "serve", str(tiny_index_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"at (http://127\.0\.0\.1:\d+/)", proc.stdout.readline())
            url = found.group(1) if found else None
        assert url, "serve printed no URL"
        with urllib.request.urlopen(url, timeout=30) as response:
            page = response.read().decode()
        assert response.status == 200 and "lstmsearch" in page
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_cli_serve_refuses_a_missing_index(tmp_path: Path) -> None:
    from lstmsearch.cli import main

    assert main(["serve", str(tmp_path / "nope"), "--port", "0"]) == 2


def test_demo_index_is_built_once_and_cached(tmp_path: Path, monkeypatch) -> None:
    from lstmsearch import serve

    monkeypatch.setenv("LSTMSEARCH_CACHE", str(tmp_path / "cache"))
    assert serve.cache_dir() == tmp_path / "cache"
    path = serve.demo_index("parens", limit=3, progress=False)
    assert path.parent == tmp_path / "cache"
    stamp = (path / "index.duckdb").stat().st_mtime_ns
    again = serve.demo_index("parens", limit=3, progress=False)
    assert again == path and (path / "index.duckdb").stat().st_mtime_ns == stamp
    from lstmsearch.index import open_index

    with open_index(path) as index:
        assert index.n_docs == 3 and index.meta["corpus"].startswith("parens")
    with pytest.raises(ValueError, match="unknown demo"):
        serve.demo_index("klingon")


def test_brushing_the_line_plot_selects_tokens(app: App, tiny_index) -> None:
    """The plot has its own brush quads: a brush there selects the same tokens."""
    app.select_view.plot_quads.selected.indices = [4, 5]
    start = app.session.window[0]
    assert app.session.span == (start + 4, start + 6)
    assert app.select_view.tokens.selected.indices == [4, 5]
    assert app.select_view.plot_quads.selected.indices == []
    expected = api_pattern(tiny_index, app.session.state, (start + 4, start + 6), 0.3)
    assert app.session.pattern.units == expected.units


def test_widgets_refuse_values_outside_their_bounds(app: App) -> None:
    """A page can send any value, whatever the widget's bounds: the server clamps it or keeps
    the setting in use, and the session goes on."""
    from server.app import MAX_PAD, WINDOW_RANGE

    app.pad_left.value = 10**9
    app.pad_right.value = -5
    assert (app.session.pad_left, app.session.pad_right) == (MAX_PAD, 0)
    assert app.pad_left.value == MAX_PAD
    before = app.session.threshold
    for bad in (float("nan"), float("inf")):
        app.threshold_input.value = bad
        assert app.session.threshold == before
    app.window_size.value = 10**6
    assert app.width == WINDOW_RANGE[1] and app.window_size.value == WINDOW_RANGE[1]
    app.doc_input.value = float("nan")
    app.pos_input.value = 10**12
    assert "out of range" in app.status.text
    app.pad_left.value = 1  # 50 tokens that must be off: hardly any span has a pattern
    brush_pattern(app)  # still answers

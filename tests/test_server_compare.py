"""The Compare tab (`serve INDEX_A --compare INDEX_B`): without a browser its table and strips
hold `lstmsearch.compare`'s numbers; in headless Chromium the tab draws them; a server is
refused an index it cannot compare with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from bokeh.document import Document
from conftest import analysis_view, browser_test, states_only_index

from lstmsearch.compare import CompareError, compare
from lstmsearch.index import open_index
from server.app import NEURON_TAB, build
from server.compare_view import CompareView
from server.fetch import Shared


@pytest.fixture(scope="module")
def copy_path(tiny_index_path: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("other") / "index"
    shutil.copytree(tiny_index_path, out)
    return out


@pytest.fixture(scope="module")
def compared(tiny_index, copy_path) -> Shared:
    with open_index(copy_path) as other:
        yield Shared(tiny_index, other)


def test_the_tab_shows_the_units_and_surprisal_of_both_models(compared: Shared) -> None:
    app = build(Document(), compared)
    view = analysis_view(app, CompareView)
    data = view.data
    assert data is not None and data.state is not None
    state = app.session.state
    want = compare(compared.index, compared.other, state=state).states[0]
    assert data.state == want
    table = view.units_source.data
    assert sorted(table["unit"]) == list(range(len(want.units)))
    by_unit = {c.unit: c for c in want.units}
    assert all(by_unit[u].best == b for u, b in zip(table["unit"], table["best"], strict=True))
    assert "linear CKA <b>1.000</b>" in view.summary.text
    start, end = app.session.window
    cells = view.both.cells.data
    assert len(cells["x"]) == 2 * (end - start)  # A's row and B's, a cell per token
    stored = compared.index.track("surprisal")[start:end]
    np.testing.assert_array_equal(data.surprisal_a, stored)
    assert np.nanmax(np.abs(view.difference.cells.data["value"].astype(float))) == 0.0
    # nothing brushed: no pattern to match; a brushed span: its matches in both (a copy: the
    # same units and the same matches)
    assert "Brush a span" in view.side_title.text
    s = app.session
    start = next(t for t in range(200) if compared.index.select(
        t, t + 2, s.threshold, state=state, pad_left=s.pad_left, pad_right=s.pad_right,
        sign=s.sign).units)
    s.span = (start, start + 2)
    app.refresh_analysis(view)
    pair = view.data.side_by_side
    assert pair is not None and pair.pattern_b.units == pair.pattern_a.units
    a_rows, b_rows = view.matches_a.data, view.matches_b.data
    assert list(a_rows["start"]) == list(b_rows["start"]) == [
        m.start for m in pair.matches_a.matches]
    assert "The brushed pattern" in view.side_title.text
    view.matches_b.selected.indices = [0]
    assert s.focus == (b_rows["start"][0], b_rows["end"][0])
    s.span = None
    # a unit of the table opens in the neuron view
    view.units_source.selected.indices = [0]
    assert app.session.unit == table["unit"][0] and app.tabs.active == NEURON_TAB


def test_without_a_second_index_the_tab_says_how_to_get_one(shared: Shared) -> None:
    view = analysis_view(build(Document(), shared), CompareView)
    assert view.data is None
    assert "--compare INDEX_B" in view.summary.text


def test_a_server_is_refused_an_index_of_another_corpus(tiny_index_path, tmp_path) -> None:
    from lstmsearch.serve import make_server

    with states_only_index(tmp_path / "other") as other:
        with pytest.raises(CompareError, match="different corpora"):
            make_server(tiny_index_path, port=0, compare=other)


@browser_test
def test_the_compare_tab_in_the_browser(tiny_index_path, copy_path) -> None:
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
        wait_for,
    )
    from test_browser_analyses import show

    proc, url = start_server(tiny_index_path, "--compare", str(copy_path))
    d = make_driver()
    try:
        load(d, url)
        show(d, "Compare", "compare-units-data", "unit")
        wait_for(d, lambda d: rows_in(d, "compare-surprisal-cells") > 0, "both models' rows")
        summary = model_value(d, "compare-summary", "m.text")
        assert "linear CKA <b>1.000</b>" in summary and str(copy_path) in summary
        # a row per model over the window, and their difference
        both, diff = rows_in(d, "compare-surprisal-cells"), rows_in(d, "compare-difference-cells")
        assert both == 2 * diff > 0
        screenshot(d, "compare-view.png")
        assert_no_errors(d, "the compare tab")
    finally:
        quit_driver(d)
        stop_server(proc)

"""End-to-end: the analysis tabs in headless Chromium against `lstmsearch serve` on 127.0.0.1.

Each tab is opened by a click on its header, as a user does; its numbers are compared with
the Python API on the same index, tables are checked as rendered (what the page shows, not
only the data sent to it), and clicks inside a view must reach the select or neuron view.
Screenshots of each tab are saved under `test-artifacts/`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (Path("/usr/bin/chromium").exists() and Path("/usr/bin/chromedriver").exists()),
        reason="headless Chromium not installed (/usr/bin/chromium and /usr/bin/chromedriver; "
        "`bash scripts/setup.sh --test` installs them)",
    ),
]

pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from browser import (  # noqa: E402
    assert_no_errors,
    click,
    load,
    make_driver,
    model_value,
    open_tab,
    press,
    quit_driver,
    rows_in,
    screenshot,
    set_value,
    start_server,
    stop_server,
    table_rows,
    wait_for,
    wait_idle,
)

from lstmsearch.analysis.weights import weight_report  # noqa: E402
from lstmsearch.index import open_index  # noqa: E402
from lstmsearch.models import load_model  # noqa: E402

SELECT_TAB, NEURON_TAB = 0, 1


@pytest.fixture(scope="module")
def page(tiny_index_path: Path) -> Iterator[tuple[Any, str]]:
    """One server on the tiny index and one browser for the module."""
    proc, url = start_server(tiny_index_path)
    d = make_driver()
    try:
        yield d, url
    finally:
        quit_driver(d)
        stop_server(proc)


def show(d: Any, tab: str, source: str, column: str = "x") -> None:
    """Click a tab's header and wait until its view has drawn its data."""
    open_tab(d, tab)
    wait_for(d, lambda d: rows_in(d, source, column), f"the {tab} view", timeout=60)
    wait_idle(d)


def tab_shown(d: Any, tab: int) -> bool:
    return model_value(d, "tabs", "m.active") == tab


def focus_at(d: Any) -> float | None:
    """Left edge of the outlined span in the select view (None when nothing is outlined)."""
    return model_value(d, "focus-box", "m.visible ? m.left : null")


def test_surprisal_tab_and_strip(page, tiny_index_path: Path) -> None:
    d, url = page
    load(d, url)
    with open_index(tiny_index_path) as index:
        surprisal = index.track("surprisal")
    # the select view's strip holds the stored surprisal of the window's tokens
    xs = model_value(d, "select-tokens", "Array.from(m.data.x)")
    strip = model_value(d, "select-tokens", "Array.from(m.data.surprisal)")
    expected = surprisal[xs[0] : xs[-1] + 1]
    np.testing.assert_allclose(np.array(strip, dtype=float), expected, rtol=1e-6)

    show(d, "Surprisal", "surprisal-tokens-cells")
    assert_no_errors(d, "opening the surprisal tab")
    worst = int(np.nanargmax(surprisal))
    summary = model_value(d, "surprisal-summary", "m.text")
    assert f"{np.nanmean(surprisal):.3f}" in summary
    shown = table_rows(d, "surprisal-docs")
    assert shown and len(shown[0]) >= 3, "the worst documents are listed"
    screenshot(d, "analysis-surprisal.png")
    # the worst token's row: click its emphasised cell, the select view outlines the token
    cell = model_value(d, "surprisal-tokens-cells",
                       "(() => { const i = m.data.pos.indexOf(arguments[1]);"
                       " return i < 0 ? null : [m.data.x[i], m.data.y[i]]; })()".replace(
                           "arguments[1]", str(worst)))
    assert cell is not None, f"position {worst}, the worst token, is in the list"
    click(d, "surprisal-tokens-plot", *cell)
    wait_for(d, lambda d: tab_shown(d, SELECT_TAB) and focus_at(d) == worst - 0.5,
             "the jump to the worst token")
    assert_no_errors(d, "clicking the worst token")


def test_gradients_tab_redraws_for_a_new_max_lag(page) -> None:
    d, url = page
    load(d, url)
    show(d, "Gradients", "gradients-table-data", "name")
    names = model_value(d, "gradients-table-data", "Array.from(m.data.name)")
    assert sorted(names) == ["layers.0.c", "layers.0.h", "layers.1.c", "layers.1.h"]
    before = table_rows(d, "gradients-table")
    assert [r[0] for r in before] == names
    lags = model_value(d, "gradients-lines", "m.data.xs[0].length")
    set_value(d, "gradients-max-lag", 12)
    wait_for(d, lambda d: model_value(d, "gradients-lines", "m.data.xs[0].length") == 13,
             "lines over lags 0..12")
    wait_idle(d)
    assert lags != 13
    # the table as rendered follows its data (same number of rows, new values)
    kmax = model_value(d, "gradients-table-data", "Array.from(m.data.kmax)")
    rendered = table_rows(d, "gradients-table")
    assert [r[0] for r in rendered] == names
    assert rendered != before
    assert all(float(k) > 0 for k in kmax)
    screenshot(d, "analysis-gradients.png")
    assert_no_errors(d, "changing the max lag")


def test_saliency_tab_click_shows_the_token(page) -> None:
    d, url = page
    load(d, url)
    show(d, "Saliency", "saliency-cells")
    assert "Prediction after token" in model_value(d, "saliency-summary", "m.text")
    top = table_rows(d, "saliency-top")
    probabilities = [float(r[2]) for r in top]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0001
    screenshot(d, "analysis-saliency.png")
    x, y, pos = model_value(d, "saliency-cells",
                            "(() => { const i = m.data.x.length - 3;"
                            " return [m.data.x[i], m.data.y[i], m.data.pos[i]]; })()")
    click(d, "saliency-plot", x, y)
    wait_for(d, lambda d: tab_shown(d, SELECT_TAB) and focus_at(d) == pos - 0.5,
             "the jump to the clicked token")
    assert_no_errors(d, "clicking a saliency cell")


def test_trajectory_tab_follows_the_window_and_jumps(page) -> None:
    d, url = page
    load(d, url)
    show(d, "Trajectory", "trajectory-points")
    first = model_value(d, "trajectory-points", "Array.from(m.data.pos)")
    window = model_value(d, "select-tokens", "[m.data.x[0], m.data.x[m.data.x.length - 1]]")
    assert first == list(range(window[0], window[1] + 1))
    screenshot(d, "analysis-trajectory.png")
    # the header's ▶ moves the window: the path follows while the tab is shown
    press(d, "next-window")
    wait_for(d, lambda d: model_value(d, "trajectory-points", "m.data.pos[0]") != first[0],
             "the path of the next window")
    wait_idle(d)
    x, y, pos = model_value(d, "trajectory-points",
                            "[m.data.x[5], m.data.y[5], m.data.pos[5]]")
    click(d, "trajectory-plot", x, y)
    wait_for(d, lambda d: tab_shown(d, SELECT_TAB) and focus_at(d) == pos - 0.5,
             "the jump to the clicked point")
    assert_no_errors(d, "the trajectory")


def test_gates_tab_draws_chosen_units(page) -> None:
    d, url = page
    load(d, url)
    show(d, "Gates", "gates-stats-data", "unit")
    set_value(d, "gates-units", "3,5")
    wait_for(d, lambda d: sorted(set(model_value(d, "gates-stats-data",
                                                 "Array.from(m.data.unit)"))) == [3, 5],
             "the gates of units 3 and 5")
    wait_idle(d)
    assert {r[0] for r in table_rows(d, "gates-stats")} == {"3", "5"}
    # as many rows again, for other units: the table as rendered must follow
    set_value(d, "gates-units", "4,6")
    wait_for(d, lambda d: sorted(set(model_value(d, "gates-stats-data",
                                                 "Array.from(m.data.unit)"))) == [4, 6],
             "the gates of units 4 and 6")
    wait_idle(d)
    rendered = table_rows(d, "gates-stats")
    assert {r[0] for r in rendered} == {"4", "6"}, rendered
    assert len(rendered) == 6  # three gates (i, f, o) of each unit
    for k in (0, 1):
        assert model_value(d, f"gates-unit-{k}", "m.visible")
    assert not model_value(d, "gates-unit-2", "m.visible")
    screenshot(d, "analysis-gates.png")
    assert_no_errors(d, "the gates")


def test_weights_tab_lists_every_block(page, tiny_model_path: Path) -> None:
    d, url = page
    load(d, url)
    show(d, "Weights", "weights-table-data", "name")
    report = weight_report(load_model(tiny_model_path).model)
    names = model_value(d, "weights-table-data", "Array.from(m.data.name)")
    assert names == [m.name for m in report]
    chosen = model_value(d, "weights-select", "m.value")
    block = next(m for m in report if m.name == chosen)
    singular = model_value(d, "weights-singular-data", "Array.from(m.data.sigma)")
    np.testing.assert_allclose(singular, block.singular_values, rtol=1e-5)
    rendered = table_rows(d, "weights-table")
    assert rendered[0][0] == report[0].name
    screenshot(d, "analysis-weights.png")
    assert_no_errors(d, "the weights")


def test_units_tab_click_opens_the_neuron(page) -> None:
    d, url = page
    load(d, url)
    show(d, "Units", "units-heatmap-data")
    ranked = table_rows(d, "units-ranking")
    assert ranked, "the tiny index has a depth track: units are ranked against it"
    r = [abs(float(row[1])) for row in ranked]
    assert r == sorted(r, reverse=True)
    screenshot(d, "analysis-units.png")
    x, y, unit = model_value(d, "units-heatmap-data", "[m.data.x[7], m.data.y[7], m.data.unit[7]]")
    click(d, "units-heatmap", x, y)
    wait_for(d, lambda d: tab_shown(d, NEURON_TAB), "the neuron tab")
    wait_for(d, lambda d: model_value(d, "neuron-unit", "m.value") == unit, "the clicked unit")
    assert_no_errors(d, "clicking a unit")

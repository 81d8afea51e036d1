"""End-to-end: the web UI in headless Chromium against `lstmsearch serve` on 127.0.0.1.

One server (the CLI, in a subprocess) and one browser serve the whole module. Gestures are
real mouse actions on the plot canvases; waits poll the page's Bokeh document, never sleep
for a fixed time. Screenshots of each view are saved under `test-artifacts/`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

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
    drag,
    load,
    model_value,
    plot_point,
    pointer,
    screenshot,
    wait_for,
)


def brush_until_pattern(d: Any) -> list[int]:
    """Brush short spans in the token row until one gives a non-empty S; its units."""
    xs = model_value(d, "select-tokens", "Array.from(m.data.x)")
    for i in range(4, len(xs) - 4, 3):
        drag(d, "token-plot", xs[i] - 0.3, xs[i + 1] + 0.3, 0.5)
        # S is listed last, after the matches: its span says the brush's result is complete
        span = f"span [{xs[i]}, {xs[i + 1] + 1})"
        wait_for(d, lambda d, span=span: span in model_value(d, "pattern-list", "m.text")
                 and "ready" in model_value(d, "busy", "m.text"), "the brush's result")
        units = model_value(d, "select-set-lines", "Array.from(m.data.unit)")
        if units:
            return units
    raise AssertionError("no brushed span gave a non-empty pattern")


def test_select_match_neuron_end_to_end(driver: Any, server_url: str) -> None:
    d = driver
    t0 = time.monotonic()
    load(d, server_url)
    assert_no_errors(d, "loading the page")

    # brush a span with a real drag on the token row: S and the matches appear
    units = brush_until_pattern(d)
    selected = model_value(d, "select-tokens", "Array.from(m.selected.indices)")
    assert len(selected) == 2
    assert "Pattern S" in model_value(d, "pattern-list", "m.text")
    assert all(f">{u}</span>" in model_value(d, "pattern-list", "m.text") for u in units)
    wait_for(d, lambda d: model_value(d, "match-cells", "m.data.x.length") or 0, "match rows")
    assert model_value(d, "span-box", "m.visible")
    assert_no_errors(d, "the brush")
    screenshot(d, "select-view.png")

    # drag the threshold line: the slider follows and S is selected again
    x_mid = model_value(d, "select-tokens", "m.data.x[Math.floor(m.data.x.length * 0.8)]")
    old = model_value(d, "threshold-input", "m.value")
    old_quantile = model_value(d, "threshold-slider", "m.value")
    dragged = model_value(d, "pattern-list", "m.text")
    sx, sy = plot_point(d, "select-plot", x_mid, old)
    _, sy_new = plot_point(d, "select-plot", x_mid, old + 0.25)
    chain, mouse = pointer(d)
    mouse.move_to_location(int(sx), int(sy)).pointer_down()
    mouse.move_to_location(int(sx), int((sy + sy_new) / 2)).move_to_location(int(sx), int(sy_new))
    mouse.pointer_up()
    chain.perform()
    wait_for(d, lambda d: abs(model_value(d, "threshold-input", "m.value") - old) > 0.05
             and model_value(d, "threshold-slider", "m.value") > old_quantile,
             "the θ box and the quantile slider to follow the dragged threshold line")
    wait_for(d, lambda d: model_value(d, "pattern-list", "m.text") != dragged,
             "S selected again at the new threshold")
    # put it back by typing into the numeric field's model
    model_value(d, "threshold-input", f"(m.value = {old}, true)")
    wait_for(d, lambda d: abs(model_value(d, "threshold-slider", "m.value") - old_quantile)
             < 1e-6, "the threshold to return")
    # S is listed last, after the matches: its threshold says the new result is complete
    wait_for(d, lambda d: f"x ≥ {old:g}," in model_value(d, "pattern-list", "m.text"),
             "the pattern at the old threshold")
    wait_for(d, lambda d: "ready" in model_value(d, "busy", "m.text"), "idle page")
    wait_for(d, lambda d: model_value(d, "match-cells", "m.data.x.length") or 0, "match rows")
    assert_no_errors(d, "the threshold drag")

    # click the second match: the select view moves there and outlines it
    row = model_value(d, "match-cells", "(() => { const i = m.data.row.indexOf(1);"
                      " return [m.data.x[i], m.data.y[i], m.data.pos[i] - m.data.x[i]]; })()")
    assert row is not None and row[2] is not None
    x, y, start = row
    screenshot(d, "match-view.png")
    click(d, "match-plot", x, y)
    wait_for(d, lambda d: model_value(d, "focus-box", "m.visible")
             and model_value(d, "focus-box", "m.left") == start - 0.5, "the jump to the match")
    window = model_value(d, "select-tokens", "[m.data.x[0], m.data.x[m.data.x.length - 1]]")
    assert window[0] <= start <= window[1]
    assert_no_errors(d, "the click on a match")

    # click a unit's line: the neuron view opens with its contexts
    units = model_value(d, "select-set-lines", "Array.from(m.data.unit)")
    assert units, "S is drawn after the jump"
    xs = model_value(d, "select-set-lines", "Array.from(m.data.xs[0])")
    ys = model_value(d, "select-set-lines", "Array.from(m.data.ys[0])")
    k = len(xs) // 2
    click(d, "select-plot", xs[k], ys[k])
    wait_for(d, lambda d: model_value(d, "tabs", "m.active") == 1, "the neuron tab")
    wait_for(d, lambda d: model_value(d, "neuron-top-cells", "m.data.x.length") or 0,
             "the neuron's top contexts")
    assert model_value(d, "neuron-unit", "m.value") == units[0]
    assert f"unit {units[0]}" in model_value(d, "neuron-stats", "m.text")
    wait_for(d, lambda d: "ready" in model_value(d, "busy", "m.text"), "idle page")
    screenshot(d, "neuron-view.png")
    assert_no_errors(d, "opening a neuron")
    assert time.monotonic() - t0 < 90


def test_two_sessions_are_independent(driver: Any, server_url: str) -> None:
    """Two pages at once: each has its own selection and results."""
    d = driver
    load(d, server_url)
    first = d.current_window_handle
    d.switch_to.new_window("tab")
    try:
        load(d, server_url)
        assert model_value(d, "select-set-lines", "m.data.unit.length") == 0
        brush_until_pattern(d)
        second_units = model_value(d, "select-set-lines", "Array.from(m.data.unit)")
        d.switch_to.window(first)
        # the first page still has no pattern: nothing leaked from the other session
        assert model_value(d, "select-set-lines", "m.data.unit.length") == 0
        assert model_value(d, "match-cells", "m.data.x.length") == 0
        # brush in the line plot this time: the same tokens get selected
        drag(d, "select-plot", 9.7, 11.3, 0.0)
        wait_for(d, lambda d: model_value(d, "span-box", "m.visible"), "the first page's pattern")
        assert model_value(d, "select-tokens", "Array.from(m.selected.indices)") == [10, 11]
        assert "span [10, 12)" in model_value(d, "pattern-list", "m.text")
        d.switch_to.window(d.window_handles[-1])
        assert model_value(d, "select-set-lines", "Array.from(m.data.unit)") == second_units
        assert_no_errors(d, "two sessions")
    finally:
        d.close()
        d.switch_to.window(first)

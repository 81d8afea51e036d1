"""End-to-end: the web UI in headless Chromium against `lstmsearch serve` on 127.0.0.1.

One server (the CLI, in a subprocess) and one browser serve the whole module. Gestures are
real mouse actions on the plot canvases; waits poll the page's Bokeh document, never sleep
for a fixed time. Screenshots of each view are saved under `test-artifacts/`.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDTH, HEIGHT = 1500, 1250

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
        reason="headless Chromium not installed (/usr/bin/chromium and /usr/bin/chromedriver; "
        "`bash scripts/setup.sh --test` installs them)",
    ),
]

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

MODEL = "Bokeh.documents[0].get_model_by_name(arguments[0])"
BLUR = """let e = document.activeElement;
while (e && e.shadowRoot && e.shadowRoot.activeElement) e = e.shadowRoot.activeElement;
if (e && e.blur) e.blur();"""
"""Drop the keyboard focus (a clicked plot draws a dotted focus ring around itself)."""


@pytest.fixture(scope="module")
def server_url(tiny_index_path: Path) -> Iterator[str]:
    """`lstmsearch serve INDEX --port 0` in a subprocess; its printed URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmsearch.cli", "serve", str(tiny_index_path), "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    url = None
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        lines.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            url = found.group(1)
            break
    if url is None:
        proc.kill()
        pytest.fail("the server did not print its URL:\n" + "".join(lines))
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def make_driver() -> Any:
    """Headless Chromium with a fresh profile (removed again by `quit_driver`)."""
    profile = tempfile.mkdtemp(prefix="lstmsearch-chromium-")
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", f"--window-size={WIDTH},{HEIGHT}",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.lstmsearch_profile = profile
    return driver


def quit_driver(driver: Any) -> None:
    """Close the browser and remove its profile."""
    driver.quit()
    shutil.rmtree(driver.lstmsearch_profile, ignore_errors=True)


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    d = make_driver()
    yield d
    quit_driver(d)


def wait_for(d: Any, condition: Callable[[Any], Any], what: str, timeout: float = 30) -> Any:
    """Poll `condition(d)` until truthy; fail with `what` on timeout."""
    try:
        return WebDriverWait(d, timeout, poll_frequency=0.05).until(condition)
    except Exception as exc:
        raise AssertionError(f"timed out waiting for {what}") from exc


def js(d: Any, script: str, *args: Any) -> Any:
    return d.execute_script(script, *args)


def model_value(d: Any, name: str, expression: str) -> Any:
    """Evaluate `expression` with `m` bound to the named model of the page's document."""
    return js(d, f"const m = Bokeh.documents.length ? {MODEL} : null;"
                 f" return m ? ({expression}) : null;", name)


def load(d: Any, url: str) -> None:
    d.get(url)
    wait_for(d, lambda d: model_value(d, "select-tokens", "m.data.x.length") or 0,
             "the select view's tokens")
    wait_for(d, lambda d: "ready" in (model_value(d, "busy", "m.text") or ""), "idle page")


def severe_logs(d: Any) -> list[str]:
    return [e["message"] for e in d.get_log("browser") if e["level"] == "SEVERE"]


def assert_no_errors(d: Any, step: str) -> None:
    """No error in the browser console since the last check (the log is read and cleared)."""
    errors = severe_logs(d)
    assert errors == [], f"console errors after {step}: {errors[:3]}"


def plot_point(d: Any, plot: str, x: float, y: float) -> tuple[float, float]:
    """Viewport coordinates of data point (x, y) of a plot, after scrolling the page so that
    the point is in the middle of the window."""
    return tuple(js(d, f"""
        const v = Bokeh.index.find_one({MODEL});
        const px = v.frame.x_scale.compute(arguments[1]), py = v.frame.y_scale.compute(arguments[2]);
        let r = v.el.getBoundingClientRect();
        window.scrollBy(r.left + px - window.innerWidth / 2, r.top + py - window.innerHeight / 2);
        r = v.el.getBoundingClientRect();
        return [r.left + px, r.top + py];""", plot, x, y))


def pointer(d: Any) -> tuple[ActionChains, Any]:
    """An action chain and its mouse, moved by viewport coordinates (a plot can be taller than
    the window, and WebDriver offsets from an element count from its visible part)."""
    chain = ActionChains(d)
    return chain, chain.w3c_actions.pointer_action


def drag(d: Any, plot: str, x0: float, x1: float, y: float) -> None:
    """Press at (x0, y), move to (x1, y), release: a box-select gesture in data units."""
    sx0, sy = plot_point(d, plot, x0, y)
    sx1, _ = plot_point(d, plot, x1, y)
    chain, mouse = pointer(d)
    mouse.move_to_location(int(sx0), int(sy)).pointer_down()
    mouse.move_to_location(int((sx0 + sx1) / 2), int(sy)).move_to_location(int(sx1), int(sy))
    mouse.pointer_up()
    chain.perform()


def click(d: Any, plot: str, x: float, y: float) -> None:
    sx, sy = plot_point(d, plot, x, y)
    chain, mouse = pointer(d)
    mouse.move_to_location(int(sx), int(sy)).click()
    chain.perform()


def screenshot(d: Any, name: str) -> Path:
    """Save the page under test-artifacts/ (mouse parked on the title: no tooltips)."""
    title = js(d, f"return Bokeh.index.find_one({MODEL}).el", "title")
    ActionChains(d).move_to_element(title).perform()
    js(d, BLUR)
    js(d, "window.scrollTo(0, 0)")
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    d.save_screenshot(str(path))
    return path


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
    old = model_value(d, "threshold-slider", "m.value")
    dragged = model_value(d, "pattern-list", "m.text")
    sx, sy = plot_point(d, "select-plot", x_mid, old)
    _, sy_new = plot_point(d, "select-plot", x_mid, old + 0.25)
    chain, mouse = pointer(d)
    mouse.move_to_location(int(sx), int(sy)).pointer_down()
    mouse.move_to_location(int(sx), int((sy + sy_new) / 2)).move_to_location(int(sx), int(sy_new))
    mouse.pointer_up()
    chain.perform()
    wait_for(d, lambda d: abs(model_value(d, "threshold-slider", "m.value") - old) > 0.05,
             "the slider to follow the dragged threshold line")
    wait_for(d, lambda d: model_value(d, "pattern-list", "m.text") != dragged,
             "S selected again at the new threshold")
    # put it back by typing into the numeric field's model
    model_value(d, "threshold-input", f"(m.value = {old}, true)")
    wait_for(d, lambda d: abs(model_value(d, "threshold-slider", "m.value") - old) < 1e-6,
             "the threshold to return")
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

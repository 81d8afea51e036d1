"""Helpers for driving the web UI in headless Chromium: the server subprocess, the browser,
waits on the page's Bokeh document, real mouse gestures on plots, screenshots.

Used by the browser tests and by `scripts/screenshots.py`. Needs selenium and Debian's
`chromium` + `chromium-driver` (`bash scripts/setup.sh --test` installs them).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
WIDTH, HEIGHT = 1500, 1250

MODEL = "Bokeh.documents[0].get_model_by_name(arguments[0])"
BLUR = """let e = document.activeElement;
while (e && e.shadowRoot && e.shadowRoot.activeElement) e = e.shadowRoot.activeElement;
if (e && e.blur) e.blur();"""
"""Drop the keyboard focus (a clicked plot draws a dotted focus ring around itself)."""


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


def screenshot(d: Any, name: str, top: bool = True) -> Path:
    """Save the page under test-artifacts/ (mouse parked on the title: no tooltips), scrolled
    to the top unless `top` is False."""
    title = js(d, f"return Bokeh.index.find_one({MODEL}).el", "title")
    scrolled = js(d, "return window.scrollY")
    ActionChains(d).move_to_element(title).perform()
    js(d, BLUR)
    js(d, "window.scrollTo(0, arguments[0])", 0 if top else scrolled)
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    d.save_screenshot(str(path))
    return path


def start_server(index_path: Path | str, *options: str) -> tuple[subprocess.Popen, str]:
    """`lstmsearch serve INDEX --port 0 [OPTIONS]` in a subprocess; the process and its
    printed URL."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lstmsearch.cli", "serve", str(index_path), "--port", "0",
         *options],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    lines = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        line = proc.stdout.readline()
        lines.append(line)
        found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
        if found:
            return proc, found.group(1)
    proc.kill()
    raise RuntimeError("the server did not print its URL:\n" + "".join(lines))


def stop_server(proc: subprocess.Popen) -> None:
    """End the server subprocess."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def open_tab(d: Any, title: str) -> None:
    """Click the header of the tab called `title`, as a user does."""
    header = js(d, f"""
        const v = Bokeh.index.find_one({MODEL});
        const root = v.shadow_el || v.el.shadowRoot || v.el;
        return Array.from(root.querySelectorAll('.bk-tab'))
            .find(e => e.textContent.trim() === arguments[1]) || null;""", "tabs", title)
    if header is None:
        raise AssertionError(f"no tab titled {title!r}")
    ActionChains(d).move_to_element(header).click().perform()


def wait_idle(d: Any, what: str = "idle page", timeout: float = 60) -> None:
    """Wait until the page says "ready" (no query running)."""
    wait_for(d, lambda d: "ready" in (model_value(d, "busy", "m.text") or ""), what, timeout)


def table_rows(d: Any, name: str) -> list[list[str]]:
    """The text of the rows a DataTable shows on the page (what a user reads, not its data)."""
    return js(d, f"""
        const v = Bokeh.index.find_one({MODEL});
        const root = v.shadow_el || v.el.shadowRoot || v.el;
        return Array.from(root.querySelectorAll('.slick-row'))
            .sort((a, b) => a.offsetTop - b.offsetTop)
            .map(r => Array.from(r.querySelectorAll('.slick-cell')).map(c => c.textContent));""",
              name)


def set_value(d: Any, name: str, value: object) -> None:
    """Set a widget's value in the page, as typing into it or picking from it does."""
    import json

    model_value(d, name, f"(m.value = {json.dumps(value)}, true)")


def rows_in(d: Any, source: str, column: str = "x") -> int:
    """Rows in a data source of the page (0 before it is filled)."""
    return model_value(d, source, f"m.data['{column}'] ? m.data['{column}'].length : 0") or 0


def press(d: Any, name: str) -> None:
    """Click the named button, as a user does."""
    button = js(d, f"""
        const v = Bokeh.index.find_one({MODEL});
        return (v.shadow_el || v.el.shadowRoot || v.el).querySelector('button');""", name)
    if button is None:
        raise AssertionError(f"no button named {name!r}")
    ActionChains(d).move_to_element(button).click().perform()


def press_button(d: Any, name: str, label: str) -> None:
    """Click the button labelled `label` of the named widget (a radio or toggle group)."""
    button = js(d, f"""
        const v = Bokeh.index.find_one({MODEL});
        const root = v.shadow_el || v.el.shadowRoot || v.el;
        return Array.from(root.querySelectorAll('button'))
            .find(b => b.textContent.trim() === arguments[1]) || null;""", name, label)
    if button is None:
        raise AssertionError(f"no button {label!r} in {name!r}")
    ActionChains(d).move_to_element(button).click().perform()


def location(d: Any) -> str:
    """The page's query string, as the address bar shows it (without "?")."""
    return js(d, "return window.location.search.replace(/^\\?/, '')")

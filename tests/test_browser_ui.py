"""The UI as people use it, in headless Chromium against `lstmsearch serve`: find selects,
the exact threshold box and the sign toggle, back and forward, nearest mode without the match
legends, keys, downloads equal to the CLI's `--json`, the neuron view's own threshold, a URL
that restores the query in a fresh browser, and a URL with bad values.

One server and one page session walk through all of it (a browser page is the costly part);
a second browser opens the copied URL.
"""

from __future__ import annotations

import json
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
    BLUR,
    assert_no_errors,
    js,
    load,
    location,
    make_driver,
    model_value,
    open_tab,
    press_button,
    quit_driver,
    set_value,
    wait_for,
    wait_idle,
)
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from test_cli_query import run as run_cli  # noqa: E402


def a_phrase(index) -> tuple[str, Any]:
    """A phrase whose first occurrence selects a pattern of a few units at θ = 0.3 on the
    page's default state (layers.1.c), and that pattern (what `match --phrase` selects)."""
    for start in range(30, 400, 7):
        text = index.text(start, start + 3)
        if "\n" in text:
            continue
        pattern = index.select_phrase(text, 0.3, 1, "c")
        if pattern.units and index.match(pattern, limit=3).matches:
            return text, pattern
    raise AssertionError("no phrase with a pattern")


def match_starts(d: Any) -> list[int]:
    """Token positions of the listed matches' starts, in rank order."""
    return model_value(d, "match-cells", """(() => {
        const starts = {};
        for (let i = 0; i < m.data.row.length; i++)
            if (m.data.x[i] === 0) starts[m.data.row[i]] = m.data.pos[i];
        return Object.keys(starts).map(Number).sort((a, b) => a - b).map(r => starts[r]);
    })()""") or []


def pattern_text(d: Any) -> str:
    return model_value(d, "pattern-list", "m.text") or ""


def key(d: Any, keys: str) -> None:
    """Type keys on the page (outside any text field), as a user does."""
    js(d, BLUR)
    ActionChains(d).send_keys(keys).perform()


def test_find_threshold_history_keys_downloads_and_urls(
        driver: Any, server_url: str, tiny_index, tiny_index_path: Path, capsys) -> None:
    d = driver
    load(d, server_url)
    phrase, expected = a_phrase(tiny_index)
    span = (expected.start, expected.end)

    # find selects: S and its matches, as `match --phrase` gives them
    set_value(d, "phrase-input", phrase)
    wait_for(d, lambda d: f"span [{span[0]}, {span[1]})" in pattern_text(d), "the found span")
    wait_idle(d)
    assert model_value(d, "select-set-lines", "Array.from(m.data.unit)") == list(expected.units)
    window = model_value(d, "select-tokens", "m.data.x[0]")
    assert model_value(d, "select-tokens", "Array.from(m.selected.indices)") == [
        p - window for p in range(*span)]
    matches = tiny_index.match(expected, limit=50).matches
    wait_for(d, lambda d: match_starts(d) == [m.start for m in matches[:len(match_starts(d))]]
             and match_starts(d), "the phrase's matches")
    wait_for(d, lambda d: f"span={span[0]}-{span[1]}" in location(d), "the query in the URL")
    found_url = d.current_url
    assert_no_errors(d, "find")

    # an exact threshold in the number box, then the sign toggle
    set_value(d, "threshold-input", 0.2)
    wait_for(d, lambda d: "x ≥ 0.2," in pattern_text(d), "S at θ = 0.2")
    assert "threshold=0.2" in location(d)
    press_button(d, "sign-toggle", "x ≤ −θ")
    wait_for(d, lambda d: "x ≤ −0.2," in pattern_text(d), "S of the negative sign")
    wait_for(d, lambda d: "sign=-1" in location(d), "the sign in the URL")
    assert model_value(d, "threshold-span", "m.location") == -0.2
    # back and forward step through the queries
    d.back()
    wait_for(d, lambda d: "x ≥ 0.2," in pattern_text(d), "back: the positive pattern")
    assert model_value(d, "sign-toggle", "m.active") == 0
    d.back()
    wait_for(d, lambda d: "x ≥ 0.3," in pattern_text(d), "back: the found phrase at θ = 0.3")
    assert model_value(d, "threshold-input", "m.value") == 0.3
    d.forward()
    wait_for(d, lambda d: "x ≥ 0.2," in pattern_text(d), "forward: θ = 0.2 again")
    d.forward()
    wait_for(d, lambda d: "x ≤ −0.2," in pattern_text(d), "forward: the negative pattern")
    press_button(d, "sign-toggle", "x ≥ θ")
    set_value(d, "threshold-input", 0.3)
    wait_for(d, lambda d: "x ≥ 0.3," in pattern_text(d), "S at θ = 0.3 again")
    wait_idle(d)
    assert_no_errors(d, "threshold, sign, back and forward")

    # nearest states show only what applies to them
    press_button(d, "match-mode", "Nearest states (FAISS)")
    wait_for(d, lambda d: "nearest" in model_value(d, "match-summary", "m.text"),
             "nearest states")
    for name in ("match-legend", "length-hist", "match-min-length", "match-length"):
        assert model_value(d, name, "m.visible") is False, name
        assert js(d, f"return Bokeh.index.find_one({'Bokeh.documents[0].get_model_by_name'}"
                     "(arguments[0])).el.offsetParent", name) is None, name
    press_button(d, "match-mode", "Pattern match")
    wait_for(d, lambda d: "candidate spans" in model_value(d, "match-summary", "m.text"),
             "the matches again")
    wait_idle(d)

    # keys: next and previous match, the help box
    starts = match_starts(d)
    key(d, "j")
    wait_for(d, lambda d: model_value(d, "focus-box", "m.left") == starts[0] - 0.5,
             "j: the first match")
    key(d, "j")
    wait_for(d, lambda d: model_value(d, "focus-box", "m.left") == starts[1] - 0.5,
             "j: the second match")
    key(d, "k")
    wait_for(d, lambda d: model_value(d, "focus-box", "m.left") == starts[0] - 0.5,
             "k: the first match again")
    key(d, "?")
    wait_for(d, lambda d: model_value(d, "key-help", "m.visible"), "the help box")
    key(d, "?")
    assert_no_errors(d, "keys")

    # downloads: the links the page shows give what the CLI's --json prints
    links = js(d, """const v = Bokeh.index.find_one(Bokeh.documents[0]
        .get_model_by_name('downloads'));
        const root = v.shadow_el || v.el.shadowRoot || v.el;
        return Array.from(root.querySelectorAll('a')).map(a => a.href);""")
    by_name = {(link.split("what=")[1].split("&")[0], link.split("format=")[1]): link
               for link in links}
    assert set(by_name) == {(w, f) for w in ("matches", "neuron") for f in ("csv", "json")}
    fetched = {k: js(d, "return fetch(arguments[0]).then(r => r.text())", url)
               for k, url in by_name.items()}
    code, out, _ = run_cli(capsys, "match", tiny_index_path, "--phrase", phrase,
                           "--threshold", "0.3", "--layer", "1", "--kind", "c", "--limit", "50",
                           "--json")
    assert code == 0
    got = json.loads(fetched["matches", "json"])
    assert got.pop("request")["span"] == list(span)
    assert got == json.loads(out)
    lines = fetched["matches", "csv"].splitlines()
    assert lines[0].split(",")[:3] == ["doc", "start", "end"]
    assert len(lines) == 1 + len(got["matches"])
    assert json.loads(fetched["neuron", "json"])["hits"]

    # the neuron view: a threshold of its own (the unit's q99 at first)
    open_tab(d, "Neuron")
    wait_for(d, lambda d: model_value(d, "neuron-threshold", "m.value") is not None,
             "the unit's own threshold")
    wait_idle(d)
    unit = model_value(d, "neuron-unit", "m.value")
    q99 = tiny_index.neurons.stats(unit, 1, "c").q99
    assert abs(model_value(d, "neuron-threshold", "m.value") - q99) < 1e-3
    set_value(d, "neuron-threshold", 0.1)
    wait_for(d, lambda d: "x ≥ 0.1)" in model_value(d, "neuron-stats", "m.text"),
             "the neuron at its own θ = 0.1")
    assert model_value(d, "threshold-input", "m.value") == 0.3
    assert model_value(d, "neuron-corpus-data", "m.data.count.length") > 0
    assert "view=neuron" in location(d)
    assert_no_errors(d, "the neuron view's threshold")

    # the copied URL restores the same query in a fresh browser
    other = make_driver()
    try:
        load(other, found_url)
        wait_for(other, lambda o: f"span [{span[0]}, {span[1]})" in pattern_text(o),
                 "the restored span")
        wait_idle(other)
        assert model_value(other, "threshold-input", "m.value") == 0.3
        assert model_value(other, "select-set-lines", "Array.from(m.data.unit)") == list(
            expected.units)
        wait_for(other, lambda o: match_starts(o)[:1] == [matches[0].start],
                 "the same first match")
        assert model_value(other, "status", "m.text") == ""
        assert_no_errors(other, "opening a copied URL")
    finally:
        quit_driver(other)

    # bad values in a URL: the page opens with its defaults and says what it left out
    load(d, server_url + "?index=index&span=99999-100000&threshold=nan&unit=5000")
    wait_for(d, lambda d: "threshold 'nan'" in (model_value(d, "status", "m.text") or ""),
             "the message")
    status = model_value(d, "status", "m.text")
    assert "span '99999-100000'" in status and "unit '5000'" in status
    assert model_value(d, "threshold-input", "m.value") == 0.3
    assert model_value(d, "select-tokens", "m.data.x.length") > 0
    load(d, server_url + "?index=nosuch")
    wait_for(d, lambda d: "unknown index 'nosuch'" in (model_value(d, "status", "m.text") or ""),
             "the unknown index named")
    assert_no_errors(d, "bad URLs")

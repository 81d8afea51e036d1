"""The query as a URL: encoded and decoded, restored into a new session (the same span, θ,
S and matches), bad values named and left at their defaults; keys; downloads equal to the
CLI's `--json` for the same query, from a running server."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from bokeh.document import Document
from test_cli_query import run as run_cli

from server import url_state
from server.app import App, build, default_state, view_names


def decode(tiny_index, text: str) -> url_state.Decoded:
    names = tiny_index.state_names
    return url_state.decode(
        url_state.arguments(text), index_name=tiny_index.path.name, state_names=names,
        dim_of=lambda n: tiny_index.store(n).dim, doc_starts=tiny_index.doc_starts,
        views=view_names(), default_state=default_state(names))


def a_span(app: App) -> tuple[int, int]:
    start = app.session.window[0]
    for i in range(3, 20):
        app.select_view.tokens.selected.indices = [i, i + 1]
        if app.session.pattern is not None and app.session.pattern.units:
            return start + i, start + i + 2
    raise AssertionError("no span with a pattern")


def test_encode_and_decode_round_trip(tiny_index) -> None:
    q = url_state.Query(index=tiny_index.path.name, view="neuron", state="layers.0.h",
                        span=(40, 44), threshold=0.125, sign=-1, padding=(2, 3), unit=7,
                        mode="nearest")
    text = url_state.encode(q)
    assert text.startswith(f"index={tiny_index.path.name}&view=neuron&layer=0&kind=h&span=40-44")
    assert decode(tiny_index, text) == url_state.Decoded(q, ())
    assert decode(tiny_index, "?" + text).query == q


@pytest.mark.parametrize("text, problem", [
    ("index=other&span=1-3", "unknown index 'other'"),
    ("span=2630-2700", "span '2630-2700'"),
    ("span=banana", "is not START-END"),
    ("threshold=nan", "threshold 'nan' is not a number"),
    ("threshold=inf", "threshold 'inf' is not a number"),
    ("threshold=-1", "threshold '-1' is not a number"),
    ("unit=99999", "unit '99999' is out of range"),
    ("unit=-3", "unit '-3' is out of range"),
    ("layer=9&kind=c", "no state layer=9 kind=c"),
    ("sign=2", "sign '2' is neither"),
    ("padding=1-999", "padding '1-999'"),
    ("view=nowhere", "unknown view 'nowhere'"),
    ("mode=fast", "mode 'fast'"),
])
def test_bad_values_are_named_and_left_out(tiny_index, text: str, problem: str) -> None:
    decoded = decode(tiny_index, f"index={tiny_index.path.name}&{text}"
                     if not text.startswith("index") else text)
    assert len(decoded.problems) == 1 and problem in decoded.problems[0]
    q = decoded.query
    assert q.span is None and q.threshold is None and q.unit is None and q.sign is None


def test_a_url_restores_the_query_in_a_new_session(shared, tiny_index) -> None:
    first = build(Document(), shared)
    span = a_span(first)
    first.threshold_input.value = 0.25
    first.pad_right.value = 1
    first.sign_toggle.active = 0
    first.neuron_view.unit.value = 4
    first.tabs.active = 0
    query = first.url.text
    assert f"span={span[0]}-{span[1]}" in query and "threshold=0.25" in query
    assert "padding=1-1" in query and "unit=4" in query and "view=select" in query
    second = build(Document(), shared)
    second.restore(url_state.arguments(query))
    a, b = first.session, second.session
    assert (b.span, b.threshold, b.sign, b.pad_left, b.pad_right, b.unit, b.state) == (
        a.span, a.threshold, a.sign, a.pad_left, a.pad_right, a.unit, a.state)
    assert b.pattern.units == a.pattern.units
    assert [(r.start, r.end) for r in second.match_view.rows] == [
        (r.start, r.end) for r in first.match_view.rows]
    assert second.threshold_input.value == 0.25 and second.pad_right.value == 1
    assert b.window[0] <= span[0] < b.window[1]
    assert second.url.text == query
    assert second.status.text == ""
    # the address the browser went back to: the same path in the other direction
    first.url_input.value = "span=1-3&threshold=0.5#1"
    assert first.session.span == (1, 3) and first.session.threshold == 0.5
    assert first.session.pad_left == 1 and first.session.unit == 4


def test_a_bad_url_opens_a_page_with_a_message(shared, tiny_index) -> None:
    app = build(Document(), shared)
    app.restore(url_state.arguments(
        f"index={tiny_index.path.name}&span=99999-100000&threshold=nan&unit=5000&view=neuron"))
    s = app.session
    assert s.span is None and s.threshold == 0.3 and s.unit == 0
    assert app.tabs.active == 1
    for problem in ("span '99999-100000'", "threshold 'nan'", "unit '5000'"):
        assert problem in app.status.text
    assert app.neuron_view.data is not None  # the view opened, with its defaults
    other = build(Document(), shared)
    other.restore(url_state.arguments("index=elsewhere&span=1-3"))
    assert "unknown index 'elsewhere'" in other.status.text and other.session.span is None


def test_keys_step_through_matches_span_and_threshold(shared, tiny_index) -> None:
    app = build(Document(), shared)
    span = a_span(app)
    rows = app.match_view.rows
    app.key_input.value = "j 1"
    assert app.session.focus == (rows[0].start, rows[0].end)
    app.key_input.value = "j 2"
    assert app.session.focus == (rows[1].start, rows[1].end)
    app.key_input.value = "k 3"
    assert app.session.focus == (rows[0].start, rows[0].end)
    app.key_input.value = "] 4"
    assert app.session.span == (span[0], span[1] + 1)
    assert app.session.pattern.end == span[1] + 1
    app.key_input.value = "[ 5"
    assert app.session.span == span
    scale = app.shared.scale(app.session.state)
    before = app.session.threshold
    app.key_input.value = "+ 6"
    assert app.session.threshold > before
    assert app.session.threshold == scale.threshold_at(scale.quantile_of(before) + 0.01)
    app.key_input.value = "- 7"
    assert app.session.threshold < scale.threshold_at(scale.quantile_of(before) + 0.01)
    assert not app.help.visible
    app.key_input.value = "? 8"
    assert app.help.visible and "next match" in app.help.text


# --- downloads from a running server -----------------------------------------------------------


@pytest.fixture(scope="module")
def server_url(tiny_index) -> Iterator[str]:
    """`make_server` on the tiny index, its loop in a thread of its own."""
    from lstmsearch.serve import make_server, url_of

    box: dict = {}
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(asyncio.new_event_loop())
        server = make_server(tiny_index, port=0)
        server.start()
        box["server"] = server
        ready.set()
        server.io_loop.start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(60)
    server = box["server"]
    yield url_of(server)
    server.io_loop.add_callback(server.io_loop.stop)
    thread.join(10)


def fetch(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def test_downloads_equal_the_clis_json(server_url: str, shared, tiny_index, tiny_index_path,
                                       capsys) -> None:
    app = build(Document(), shared)
    app.pad_left.value = 0
    span = a_span(app)
    s = app.session
    store = tiny_index.store(s.state)
    query = app.url.text
    assert f"download?{query.replace('&', '&amp;')}&amp;what=matches&amp;format=csv" \
        in app.downloads.text
    state = ["--layer", store.layer, "--kind", store.kind]
    cli = {
        "matches": ["match", tiny_index_path, "--start", span[0], "--end", span[1],
                    "--threshold", s.threshold, "--pad-left", 0, "--pad-right", 0,
                    "--limit", 50, *state],
        "nearest": ["nearest", tiny_index_path, "--start", span[0], "--end", span[1],
                    "--k", 50, *state],
        "neuron": ["neurons", tiny_index_path, "--unit", s.unit, "--top", 20, *state],
    }
    rows_key = {"matches": "matches", "nearest": "neighbors", "neuron": "hits"}
    for what, argv in cli.items():
        code, out, _ = run_cli(capsys, *argv, "--json")
        assert code == 0
        expected = json.loads(out)
        status, kind, body = fetch(f"{server_url}download?{query}&what={what}&format=json")
        assert status == 200 and kind.startswith("application/json")
        got = json.loads(body)
        request = got.pop("request")
        assert got == expected
        assert request["url"] == "?" + query and tuple(request["span"]) == span
        status, kind, body = fetch(f"{server_url}download?{query}&what={what}&format=csv")
        assert status == 200 and kind.startswith("text/csv")
        table = list(csv.DictReader(io.StringIO(body)))
        rows = expected[rows_key[what]]
        assert len(table) == len(rows) and list(table[0]) == list(rows[0])
        for line, row in zip(table, rows):
            for key, value in row.items():
                shown = " ".join(map(str, value)) if isinstance(value, list) else str(value)
                assert line[key] == shown
    # a query the server cannot answer: one line naming the bad value
    status, kind, body = fetch(f"{server_url}download?span=1-99999&what=matches&format=json")
    assert status == 400 and "span '1-99999'" in body and body.count("\n") == 1
    status, _, body = fetch(f"{server_url}download?{query}&what=everything")
    assert status == 400 and "what='everything'" in body

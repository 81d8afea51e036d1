"""Many sessions on one server: a slow job of one session never holds up another session,
and a closed session's objects are freed (benchmarks/load.py measures the same at scale)."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import weakref

import pytest
from conftest import named

from lstmsearch.serve import make_server, url_of
from server import fetch
from server.app import DEFAULT_THRESHOLD

SESSIONS = 5
DEADLINE_S = 60


def pattern_spans(index, state: str, width: int, count: int) -> list[tuple[int, int]]:
    """`count` different two-token spans of the first window whose pattern S is not empty."""
    spans = [(i, i + 2) for i in range(1, width - 2)
             if index.select(i, i + 2, DEFAULT_THRESHOLD, state=state).units]
    assert len(spans) >= count, "the tiny index's first window has too few patterns"
    return spans[:count]


@pytest.fixture
def server(tiny_index):
    server = make_server(tiny_index, port=0, threads=3, session_linger_ms=200)
    server.start()
    yield server
    server.stop()
    server.lstmsearch_executor.shutdown(wait=False, cancel_futures=True)


def test_a_blocked_session_does_not_hold_up_the_others(server, tiny_index, monkeypatch) -> None:
    from bokeh.client import pull_session

    loop = server.io_loop
    clients = [pull_session(url=url_of(server), io_loop=loop) for _ in range(SESSIONS)]
    by_id = {s.id: s for s in server.get_sessions("/")}
    sessions = [by_id[c.id] for c in clients]
    state = named(sessions[0].document, "state-select").value
    width = len(named(sessions[0].document, "select-tokens").data["x"])
    spans = pattern_spans(tiny_index, state, width, SESSIONS)
    blocked_start = spans[0][0]

    gate = threading.Event()
    entered = threading.Event()
    run_pattern = fetch.run_pattern

    def gated_run_pattern(shared, q, *args, **kwargs):
        if q.start == blocked_start:  # the first session's match waits in its worker
            entered.set()
            assert gate.wait(DEADLINE_S), "never released"
        return run_pattern(shared, q, *args, **kwargs)

    monkeypatch.setattr(fetch, "run_pattern", gated_run_pattern)

    def brush(session, span):
        tokens = named(session.document, "select-tokens")
        return session.with_document_locked(
            lambda: setattr(tokens.selected, "indices", list(range(span[0], span[1]))))

    def matched(session) -> bool:
        return len(named(session.document, "match-cells").data["x"]) > 0

    async def scenario() -> None:
        deadline = time.monotonic() + DEADLINE_S
        await brush(sessions[0], spans[0])
        while not entered.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert entered.is_set()
        for session, span in zip(sessions[1:], spans[1:]):
            await brush(session, span)
        while not all(matched(s) for s in sessions[1:]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        # every other session got its matches while the first one's job is still blocked
        assert all(matched(s) for s in sessions[1:])
        assert not gate.is_set() and not matched(sessions[0])
        busy = named(sessions[0].document, "busy")
        while "working" not in busy.text and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert "working" in busy.text  # the blocked page says so, and stays usable
        gate.set()
        while not matched(sessions[0]) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert matched(sessions[0])

    try:
        loop.run_sync(scenario, timeout=DEADLINE_S + 10)
    finally:
        gate.set()
        for c in clients:
            c.close()


def test_a_closed_session_is_freed(server) -> None:
    from bokeh.client import pull_session

    loop = server.io_loop
    shared: fetch.Shared = server.lstmsearch_shared
    clients = [pull_session(url=url_of(server), io_loop=loop) for _ in range(3)]
    sessions = server.get_sessions("/")
    assert len(sessions) == 3 and shared.open_sessions == 3
    apps = [weakref.ref(app) for app in shared.apps]
    docs = [weakref.ref(s.document) for s in sessions]
    sources = [weakref.ref(named(s.document, "select-tokens")) for s in sessions]
    assert len(apps) == 3
    del sessions
    for c in clients:
        c.close()

    async def wait_discarded() -> None:
        deadline = time.monotonic() + DEADLINE_S
        while server.get_sessions("/") and time.monotonic() < deadline:
            await asyncio.sleep(0.05)

    loop.run_sync(wait_discarded, timeout=DEADLINE_S + 10)
    assert server.get_sessions("/") == []
    assert shared.open_sessions == 0
    gc.collect()
    assert [r() for r in apps] == [None] * 3
    assert [r() for r in docs] == [None] * 3
    assert [r() for r in sources] == [None] * 3

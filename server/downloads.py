"""Downloads: the results of a query as CSV or JSON, at `/download?QUERY&what=W&format=F`.

QUERY is the page's URL query (`server.url_state`), so a download link carries everything
that produced its results and can be shared like the page's address. `what` is "matches"
(the pattern S of the span and its ranked matches, as many as the page lists), "nearest"
(the span's nearest stored states) or "neuron" (the unit's top contexts, lowest first for
the sign x ≤ −θ). The JSON is exactly what the CLI's `--json` prints for the same query
(`lstmsearch match`, `nearest`, `neurons --top`) plus "request": the query itself; the CSV
has one line per row with the same columns (`lstmsearch.export`).
"""

from __future__ import annotations

import json
from concurrent.futures import Executor
from dataclasses import asdict
from typing import Any

from tornado.ioloop import IOLoop
from tornado.web import RequestHandler

from lstmsearch.export import hits_json, match_json, nearest_json, records_csv
from server import url_state
from server.app import view_names
from server.fetch import Shared

WHAT = ("matches", "nearest", "neuron")
FORMATS = ("csv", "json")
MATCH_LIMIT = 50
"""Matches and neighbours listed (as many as the page shows)."""
NEURON_TOP = 20
"""Top contexts of a unit (as many as the neuron view shows)."""
ROWS = {"matches": "matches", "nearest": "neighbors", "neuron": "hits"}
"""The list of rows in each result's JSON: the CSV's lines."""


def results(shared: Shared, q: url_state.Query, what: str) -> dict:
    """The JSON of `what` for query `q`, as the CLI's `--json` gives it (through the API)."""
    index = shared.index
    store = index.store(q.state)
    sign = q.sign or 1
    if what == "neuron":
        top = index.neurons.top(q.unit or 0, store.layer, store.kind, NEURON_TOP,
                                lowest=sign < 0)
        return hits_json(top, index.n_tokens)
    if q.span is None:
        raise ValueError("no span in the query: brush one (span=START-END)")
    start, end = q.span
    text = index.text(start, end)
    if what == "nearest":
        neighbors = index.nearest(start, end, store.layer, store.kind, MATCH_LIMIT)
        return nearest_json(neighbors, q.span, text, store.layer, store.kind, False)
    pad_left, pad_right = q.padding or (1, 0)
    threshold = q.threshold if q.threshold is not None else 0.3
    pattern = index.select(start, end, threshold, store.layer, store.kind,
                           pad_left=pad_left, pad_right=pad_right, sign=sign)
    if not pattern.units:
        raise ValueError(f"S is empty at threshold {threshold:g}: no unit is on over the "
                         "whole span and off on its padding, so there are no matches")
    return match_json(index.match(pattern, limit=MATCH_LIMIT), text)


class DownloadHandler(RequestHandler):
    """GET /download: a query's results as a file (see the module)."""

    def initialize(self, shared: Shared, executor: Executor | None, default_state: str) -> None:
        self.shared = shared
        self.executor = executor
        self.default_state = default_state

    def _refuse(self, message: str) -> None:
        self.set_status(400)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        self.finish(message + "\n")

    async def get(self) -> None:
        args: dict[str, Any] = self.request.arguments
        what = self.get_argument("what", "matches")
        form = self.get_argument("format", "json")
        if what not in WHAT or form not in FORMATS:
            self._refuse(f"what={what!r} format={form!r}: what is one of {', '.join(WHAT)}, "
                         f"format csv or json")
            return
        shared, index = self.shared, self.shared.index
        decoded = url_state.decode(
            args, index_name=index.path.name, state_names=shared.state_names,
            dim_of=lambda name: index.store(name).dim, doc_starts=index.doc_starts,
            views=view_names(), default_state=self.default_state)
        if decoded.problems:
            self._refuse("; ".join(decoded.problems))
            return
        q = decoded.query
        if q.state is None:
            q = url_state.Query(**{**asdict(q), "state": self.default_state})
        try:
            data = await IOLoop.current().run_in_executor(self.executor, results, shared, q,
                                                          what)
        except ValueError as exc:
            self._refuse(str(exc))
            return
        name = f"lstmsearch-{what}.{form}"
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        if form == "csv":
            self.set_header("Content-Type", "text/csv; charset=utf-8")
            self.finish(records_csv(data[ROWS[what]]))
            return
        request = {"url": "?" + url_state.encode(q), **asdict(q)}
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps({**data, "request": request}, indent=2, ensure_ascii=False))

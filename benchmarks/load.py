"""Many browser sessions at once (SPEC 4: 50 concurrent sessions, p95 page ready ≤ 5 s,
0 errors; server memory back within 10 % of its start after they close).

    python benchmarks/load.py                    # 50 sessions on a small parens index
    python benchmarks/load.py INDEX --sessions 30

1. The index: the one given, else a small demo-like one built once in a temporary folder
   (60 documents of the bundled parens corpus through the shipped parens model).
2. `lstmsearch serve INDEX --port P` on 127.0.0.1 in a subprocess, as a user would start it.
3. N clients at once, on one event loop in this process (`PageClient`: Bokeh's websocket
   protocol without building the document in Python, so that the clients, which share the
   server's cores, cost little). Each GETs the page, opens its session's websocket and pulls
   the document, waits for its first window of tokens to arrive (page ready), brushes a span
   whose pattern S is not empty (the patch a page sends when the box select changes the token
   source's selection; the sessions take the first window's two-token spans in turn, as
   different users would), and waits for the match rows to arrive.
4. The clients close; once the server has discarded their sessions (it logs each one) and
   given their memory back, its memory is read again.

Prints errors, page-ready and match times (p50, p95, max), the total time, the CPU time the
server and the clients used meanwhile, the server's resident memory (all of it and its
anonymous part; at start, after one session, with the N sessions open, after they closed)
and the machine's load average; writes `benchmarks/out/load.json`. Every wait has a
deadline, so the script always ends by itself. The server's memory after close depends on
Python's allocator: run with `PYTHONMALLOC=malloc` to measure the server with the system
allocator, which gives freed memory back (see README, Reliability).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "benchmarks" / "out"
PARENS_MODEL = ROOT / "data" / "models" / "parens-lstm.pt"
CLOSED = re.compile(r"session closed \((\d+) open\)")


def build_demo_index(folder: Path, docs: int) -> Path:
    """A parens index like a user's small one: `docs` documents, the shipped parens model."""
    from indexer.build import build_index
    from lstmsearch.corpus import load_corpus

    out = folder / "index"
    build_index(load_corpus("parens", limit=docs), PARENS_MODEL, out, progress=False)
    return out


def choose_spans(index_path: Path) -> list[tuple[int, int]]:
    """Every two-token span of the first page's window with a non-empty pattern (first and
    last window-relative token index), found with the Python API the way the page selects
    it: the sessions brush different ones, as different users would."""
    from lstmsearch.index import open_index
    from server.app import DEFAULT_THRESHOLD, default_state, default_window

    with open_index(index_path) as index:
        state = default_state(list(index.state_names))
        width = min(index.n_tokens, default_window(
            index.meta.get("tokenizer_kind", "char") == "char"))
        spans = [(i, i + 1) for i in range(1, width - 1)
                 if index.select(i, i + 2, DEFAULT_THRESHOLD, state=state).units]
    if spans:
        return spans
    raise SystemExit(f"no two-token span of the first window of {index_path} selects units")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def memory_mb(pid: int) -> dict[str, float]:
    """A process's resident memory in MB (Linux /proc): all of it (`rss`), and its own
    anonymous memory (`anon`: the heap, without the shared libraries' pages, which come and
    go with the machine's page cache)."""
    found = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon"):
                found["rss" if key == "VmRSS" else "anon"] = int(rest.split()[0]) / 1024
    return found


class Server:
    """`lstmsearch serve` in a subprocess; its log lines are read in a thread."""

    def __init__(self, index: Path, port: int) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lstmsearch.cli", "serve", str(index), "--port", str(port)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        )
        self.lines: list[str] = []
        self.ready = threading.Event()
        self.times_all_closed = 0  # how often the server logged that no session is open
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "serving" in line:
                self.ready.set()
            found = CLOSED.search(line)
            if found and int(found.group(1)) == 0:
                self.times_all_closed += 1

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            raise SystemExit("the server did not start:\n" + "\n".join(self.lines[-20:]))

    def wait_closed(self, since: int, timeout: float) -> bool:
        """Wait until the server has discarded every session again (it had `since` times
        before the sessions in question closed); whether it did in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.times_all_closed > since:
                return True
            time.sleep(0.5)
        return False

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class PageClient:
    """One browser page, as cheap as a client can be: it speaks Bokeh's own websocket protocol
    (`bokeh.protocol`) but never builds the document's models in Python, so that the clients'
    CPU (they share the server's cores) stays small next to the server's.

    Like a browser it GETs the page (the server creates the session and puts its token in the
    HTML), opens the websocket with that token, pulls the document, and then reads the
    server's patches; a brush is the patch a page sends when a box select changes the token
    source's selection.
    """

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.ws: Any = None
        self.receiver: Any = None
        self.doc: dict = {}

    async def open(self) -> None:
        """GET the page, connect its session's websocket and pull the document."""
        from bokeh.client.websocket import WebSocketClientConnectionWrapper
        from bokeh.protocol import Protocol
        from bokeh.protocol.receiver import Receiver
        from tornado.httpclient import AsyncHTTPClient
        from tornado.websocket import websocket_connect

        page = await AsyncHTTPClient().fetch(self.base_url, request_timeout=3600)
        found = TOKEN.search(page.body.decode())
        if found is None:
            raise RuntimeError("the page carries no session token")
        ws_url = self.base_url.replace("http://", "ws://") + "ws"
        socket = await websocket_connect(ws_url, subprotocols=["bokeh", found.group(1)],
                                         max_message_size=1 << 30)
        self.ws = WebSocketClientConnectionWrapper(socket)
        self.protocol = Protocol()
        self.receiver = Receiver(self.protocol)
        ack = await self.next_message()
        if ack.msgtype != "ACK":
            raise RuntimeError(f"expected ACK, got {ack.msgtype}")
        await self.protocol.create("PULL-DOC-REQ").send(self.ws)
        while True:
            reply = await self.next_message()
            if reply.msgtype == "PULL-DOC-REPLY":
                self.doc = reply.content["doc"]
                return

    async def next_message(self) -> Any:
        """The next complete protocol message from the server."""
        while True:
            fragment = await self.ws.read_message()
            if fragment is None:
                raise ConnectionError("the server closed the websocket")
            message = await self.receiver.consume(fragment)
            if message is not None:
                return message

    async def wait_data(self, model_id: str, longer_than: int) -> None:
        """Read patches until one sets the `data` of source `model_id` with more than
        `longer_than` rows."""
        while True:
            message = await self.next_message()
            if message.msgtype != "PATCH-DOC":
                continue
            for event in message.content.get("events", []):
                # a whole new `data` comes as ColumnDataChanged (or as ModelChanged)
                new = event.get("data", event.get("new"))
                if (event.get("attr") == "data" and event.get("model", {}).get("id") == model_id
                        and rows_of(new) > longer_than):
                    return

    async def brush(self, selection_id: str, indices: list[int]) -> None:
        """Send what a page sends when a box select picks `indices` of a source."""
        from bokeh.protocol.messages.patch_doc import patch_doc

        event = {"kind": "ModelChanged", "model": {"id": selection_id}, "attr": "indices",
                 "new": indices}
        message = patch_doc(patch_doc.create_header(), {}, {"events": [event]})
        await message.send(self.ws)

    async def close(self) -> None:
        """Close the websocket and wait for the server to close its end."""
        if self.ws is None:
            return
        self.ws.close()
        try:
            while await asyncio.wait_for(self.ws.read_message(), 10) is not None:
                pass
        except (asyncio.TimeoutError, OSError):
            pass


TOKEN = re.compile(r'"token"\s*:\s*"([^"]+)"')


def models_by_name(doc: dict) -> dict[str, dict]:
    """Every named model of a pulled document's JSON (each model is written in full once,
    then referred to by id)."""
    found: dict[str, dict] = {}

    def visit(value: Any) -> None:
        if isinstance(value, dict):
            attributes = value.get("attributes")
            if value.get("type") == "object" and isinstance(attributes, dict):
                name = attributes.get("name")
                if isinstance(name, str):
                    found.setdefault(name, value)
            for item in value.values():
                visit(item)
        elif isinstance(value, list):
            for item in value:
                visit(item)

    visit(doc)
    return found


def rows_of(columns: Any) -> int:
    """Rows of a serialized `ColumnDataSource.data` (the length of its `x` column)."""
    if not isinstance(columns, dict) or columns.get("type") != "map":
        return 0
    for key, value in columns.get("entries", []):
        if key != "x":
            continue
        if isinstance(value, list):
            return len(value)
        if isinstance(value, dict):
            if "shape" in value:
                return int(value["shape"][0])
            if isinstance(value.get("array"), list):
                return len(value["array"])
    return 0


async def one_client(url: str, span: tuple[int, int], timeout: float,
                     clients: list[PageClient]) -> dict[str, Any]:
    """Open the page, wait for the first window, brush `span`, wait for the matches."""
    t0 = time.perf_counter()
    record: dict[str, Any] = {"error": None}
    client = PageClient(url)
    clients.append(client)
    try:
        await asyncio.wait_for(client.open(), timeout)
        models = models_by_name(client.doc)
        tokens, cells = models["select-tokens"], models["match-cells"]
        if rows_of(tokens["attributes"].get("data")) <= span[1]:  # not in the pulled document
            await asyncio.wait_for(client.wait_data(tokens["id"], span[1]), timeout)
        record["page_ready_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        selection = tokens["attributes"]["selected"]["id"]
        await client.brush(selection, list(range(span[0], span[1] + 1)))
        await asyncio.wait_for(client.wait_data(cells["id"], 0), timeout)
        record["match_s"] = time.perf_counter() - t1
    except Exception as exc:  # counted and shown, the other clients go on
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["total_s"] = time.perf_counter() - t0
    return record


async def run_clients(url: str, spans: list[tuple[int, int]], n: int, timeout: float,
                      clients: list[PageClient]) -> list[dict]:
    """`n` pages at once, all on this thread's event loop; page k brushes span k (cycling)."""
    return list(await asyncio.gather(*(one_client(url, spans[k % len(spans)], timeout, clients)
                                       for k in range(n))))


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


async def close_all(clients: list[PageClient]) -> None:
    """Close every page (as when its browser tab closes)."""
    await asyncio.gather(*(c.close() for c in clients))


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU time this process (the clients) has used so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run(index: Path, n: int, timeout: float, linger: float) -> dict[str, Any]:
    spans = choose_spans(index)
    port = free_port()
    server = Server(index, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        server.wait_ready(120)
        time.sleep(1.0)
        pid = server.proc.pid
        mem_start = memory_mb(pid)
        # one session first: what the server keeps for all sessions (per-index caches) is
        # filled once, then it is closed; the figures below are for the N sessions
        loop = asyncio.new_event_loop()
        warm_clients: list[PageClient] = []
        warm = loop.run_until_complete(run_clients(url, spans[-1:], 1, timeout, warm_clients))
        closed = server.times_all_closed
        loop.run_until_complete(close_all(warm_clients))
        server.wait_closed(closed, linger)
        time.sleep(3.0)  # the server gives memory back a second after the last close
        mem_warm = memory_mb(pid)

        clients: list[PageClient] = []
        server_cpu, client_cpu = cpu_seconds(pid), own_cpu_seconds()
        t0 = time.perf_counter()
        results = loop.run_until_complete(run_clients(url, spans, n, timeout, clients))
        total = time.perf_counter() - t0
        server_cpu, client_cpu = cpu_seconds(pid) - server_cpu, own_cpu_seconds() - client_cpu
        mem_open = memory_mb(pid)
        closed = server.times_all_closed
        loop.run_until_complete(close_all(clients))
        loop.close()
        discarded = server.wait_closed(closed, linger)
        time.sleep(3.0)  # the server gives memory back a second after the last close
        mem_closed = memory_mb(pid)
    finally:
        server.stop()
    errors = [r["error"] for r in results if r["error"]]
    ready = [r["page_ready_s"] for r in results if "page_ready_s" in r]
    match = [r["match_s"] for r in results if "match_s" in r]
    return {
        "index": str(index), "sessions": n, "distinct_spans": min(n, len(spans)),
        "errors": len(errors), "error_samples": errors[:5],
        "page_ready_s": {"p50": percentile(ready, 50), "p95": percentile(ready, 95),
                         "max": max(ready, default=float("nan"))},
        "match_s": {"p50": percentile(match, 50), "p95": percentile(match, 95),
                    "max": max(match, default=float("nan"))},
        "warm_session": warm[0] if warm else None,
        "total_s": total,
        "cpu_s": {"server": server_cpu, "clients": client_cpu},
        "memory_mb": {kind: {"start": mem_start[kind], "after_one_session": mem_warm[kind],
                             "open": mem_open[kind], "after_close": mem_closed[kind],
                             "after_close_vs_start": mem_closed[kind] / mem_warm[kind] - 1}
                      for kind in ("rss", "anon")},
        "all_sessions_discarded": discarded,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("index", nargs="?", help="index directory (default: build a small one)")
    parser.add_argument("--sessions", type=int, default=50, help="concurrent sessions (50)")
    parser.add_argument("--docs", type=int, default=60, help="documents of the built index")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds a client waits for each step (120)")
    parser.add_argument("--linger", type=float, default=90,
                        help="seconds to wait for the server to discard closed sessions (90)")
    args = parser.parse_args()
    if not 1 <= args.sessions <= 1000:
        parser.error(f"--sessions must be from 1 to 1000, got {args.sessions}")
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs)", flush=True)
    with tempfile.TemporaryDirectory(prefix="lstmsearch-load-") as tmp:
        index = Path(args.index) if args.index else build_demo_index(Path(tmp), args.docs)
        result = run(index, args.sessions, args.timeout, args.linger)
    ready, match = result["page_ready_s"], result["match_s"]
    print(f"sessions {result['sessions']} ({result['distinct_spans']} different spans brushed): "
          f"errors {result['errors']}"
          + (f" (e.g. {result['error_samples'][0]})" if result["errors"] else ""))
    print(f"page ready  p50 {ready['p50']:.2f} s  p95 {ready['p95']:.2f} s  "
          f"max {ready['max']:.2f} s")
    print(f"match       p50 {match['p50']:.2f} s  p95 {match['p95']:.2f} s  "
          f"max {match['max']:.2f} s")
    print(f"total       {result['total_s']:.1f} s for all sessions; CPU: server "
          f"{result['cpu_s']['server']:.1f} s, clients {result['cpu_s']['clients']:.1f} s")
    for kind, label in (("rss", "server RSS "), ("anon", "  anonymous")):
        r = result["memory_mb"][kind]
        print(f"{label} start {r['start']:.0f} MB, after one session "
              f"{r['after_one_session']:.0f} MB, {result['sessions']} open {r['open']:.0f} MB, "
              f"after close {r['after_close']:.0f} MB ({100 * r['after_close_vs_start']:+.1f} % "
              "vs after one session)")
    print(f"sessions all discarded: {result['all_sessions_discarded']}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in result['loadavg'])} "
          f"({result['cpus']} CPUs)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

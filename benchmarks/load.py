"""Many browser sessions at once (SPEC 4: 50 concurrent sessions, p95 page ready ≤ 5 s,
0 errors; server memory back within 10 % of its start after they close).

    python benchmarks/load.py                    # 50 sessions on a small parens index
    python benchmarks/load.py INDEX --sessions 30

1. The index: the one given, else a small demo-like one built once in a temporary folder
   (60 documents of the bundled parens corpus through the shipped parens model).
2. `lstmsearch serve INDEX --port P` on 127.0.0.1 in a subprocess, as a user would start it.
3. N clients at once (`bokeh.client.pull_session`, one thread and event loop each, all on
   127.0.0.1). Each opens the page, waits for its first window of tokens to arrive (page
   ready), brushes a span whose pattern S is not empty (it sets the token source's selection
   in its document, as the box select does), and waits for the match rows to arrive.
4. The clients close; the server discards their sessions (it logs each one) and its memory
   is read again.

Prints errors, page-ready and match times (p50, p95, max), the total time, the server's
resident memory (start, with the sessions open, after they closed) and the machine's load
average; writes `benchmarks/out/load.json`. Every wait has a deadline, so the script always
ends by itself.
"""

from __future__ import annotations

import argparse
import json
import os
import re
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


def choose_span(index_path: Path) -> tuple[int, int]:
    """A two-token span of the first page's window with a non-empty pattern (window-relative
    token indices), chosen with the Python API the way the page will select it."""
    from lstmsearch.index import open_index
    from server.app import DEFAULT_THRESHOLD, default_state, default_window

    with open_index(index_path) as index:
        state = default_state(list(index.state_names))
        width = min(index.n_tokens, default_window(
            index.meta.get("tokenizer_kind", "char") == "char"))
        for i in range(1, width - 1):
            if index.select(i, i + 2, DEFAULT_THRESHOLD, state=state).units:
                return i, i + 1
    raise SystemExit(f"no two-token span of the first window of {index_path} selects units")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MB (Linux /proc)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


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
        self.open_sessions: int | None = None
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if "serving" in line:
                self.ready.set()
            found = CLOSED.search(line)
            if found:
                self.open_sessions = int(found.group(1))

    def wait_ready(self, timeout: float) -> None:
        if not self.ready.wait(timeout):
            self.stop()
            raise SystemExit("the server did not start:\n" + "\n".join(self.lines[-20:]))

    def wait_closed(self, timeout: float) -> bool:
        """Wait until the server has discarded every session; whether it did in time."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.open_sessions == 0:
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


def loop_until(session: Any, predicate, timeout: float) -> bool:
    """Run the client session's event loop (receiving the server's document patches) until
    `predicate()` holds or `timeout` passes; whether it held."""
    connection = session._connection
    loop = connection.io_loop
    expired = []

    def expire() -> None:
        expired.append(True)
        loop.add_callback(connection._next)  # wake the loop so that the predicate is checked

    handle = loop.call_later(timeout, expire)
    try:
        connection._loop_until(lambda: bool(expired) or predicate()
                               or not connection.connected)
    finally:
        loop.remove_timeout(handle)
    return predicate()


def one_client(url: str, span: tuple[int, int], timeout: float, start: threading.Event,
               results: list[dict], sessions: list[Any]) -> None:
    from bokeh.client import pull_session

    start.wait()
    t0 = time.perf_counter()
    record: dict[str, Any] = {"error": None}
    try:
        session = pull_session(url=url)
        sessions.append(session)
        doc = session.document
        tokens = doc.select_one({"name": "select-tokens"})
        cells = doc.select_one({"name": "match-cells"})
        if not loop_until(session, lambda: len(tokens.data.get("x", [])) > span[1], timeout):
            raise TimeoutError("the first window never arrived")
        record["page_ready_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        tokens.selected.indices = list(range(span[0], span[1] + 1))
        if not loop_until(session, lambda: len(cells.data.get("x", [])) > 0, timeout):
            raise TimeoutError("the matches never arrived")
        record["match_s"] = time.perf_counter() - t1
    except Exception as exc:  # counted and shown, the other clients go on
        record["error"] = f"{type(exc).__name__}: {exc}"
    record["total_s"] = time.perf_counter() - t0
    results.append(record)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def run(index: Path, n: int, timeout: float, linger: float) -> dict[str, Any]:
    span = choose_span(index)
    port = free_port()
    server = Server(index, port)
    url = f"http://127.0.0.1:{port}/"
    try:
        server.wait_ready(120)
        time.sleep(1.0)
        rss_start = rss_mb(server.proc.pid)
        # one session first: what the server keeps for all sessions (per-index caches) is
        # filled once, then it is closed; the figures below are for the N sessions
        warm: list[dict] = []
        warm_sessions: list[Any] = []
        go = threading.Event()
        go.set()
        one_client(url, span, timeout, go, warm, warm_sessions)
        for s in warm_sessions:
            s.close()
        server.wait_closed(linger)
        rss_warm = rss_mb(server.proc.pid)

        results: list[dict] = []
        sessions: list[Any] = []
        go = threading.Event()
        threads = [threading.Thread(target=one_client, args=(url, span, timeout, go, results,
                                                             sessions), daemon=True)
                   for _ in range(n)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        go.set()
        for t in threads:
            t.join(timeout * 2 + 30)
        total = time.perf_counter() - t0
        rss_open = rss_mb(server.proc.pid)
        for s in sessions:
            try:
                s.close()
            except Exception:  # a broken connection is closed already
                pass
        discarded = server.wait_closed(linger)
        time.sleep(1.0)
        rss_closed = rss_mb(server.proc.pid)
    finally:
        server.stop()
    errors = [r["error"] for r in results if r["error"]] + (
        [f"{n - len(results)} clients did not finish"] if len(results) < n else [])
    ready = [r["page_ready_s"] for r in results if "page_ready_s" in r]
    match = [r["match_s"] for r in results if "match_s" in r]
    return {
        "index": str(index), "sessions": n, "errors": len(errors), "error_samples": errors[:5],
        "page_ready_s": {"p50": percentile(ready, 50), "p95": percentile(ready, 95),
                         "max": max(ready, default=float("nan"))},
        "match_s": {"p50": percentile(match, 50), "p95": percentile(match, 95),
                    "max": max(match, default=float("nan"))},
        "warm_session": warm[0] if warm else None,
        "total_s": total,
        "rss_mb": {"start": rss_start, "after_one_session": rss_warm, "open": rss_open,
                   "after_close": rss_closed,
                   "after_close_vs_start": rss_closed / rss_warm - 1},
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
    r, ready, match = result["rss_mb"], result["page_ready_s"], result["match_s"]
    print(f"sessions {result['sessions']}: errors {result['errors']}"
          + (f" (e.g. {result['error_samples'][0]})" if result["errors"] else ""))
    print(f"page ready  p50 {ready['p50']:.2f} s  p95 {ready['p95']:.2f} s  "
          f"max {ready['max']:.2f} s")
    print(f"match       p50 {match['p50']:.2f} s  p95 {match['p95']:.2f} s  "
          f"max {match['max']:.2f} s")
    print(f"total       {result['total_s']:.1f} s for all sessions")
    print(f"server RSS  start {r['start']:.0f} MB, after one session {r['after_one_session']:.0f}"
          f" MB, {result['sessions']} open {r['open']:.0f} MB, after close "
          f"{r['after_close']:.0f} MB ({100 * r['after_close_vs_start']:+.1f} % vs after one "
          f"session; sessions all discarded: {result['all_sessions_discarded']})")
    print(f"load average: {' '.join(f'{x:.2f}' for x in result['loadavg'])} "
          f"({result['cpus']} CPUs)")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "load.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

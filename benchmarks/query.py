"""Benchmark of pattern matching (SPEC 4): lstmsearch's match against plain numpy LSTMVis.

Builds synthetic recurrent-looking states (tanh of AR(1) noise per unit with mixed memory
lengths, gains and offsets, plus some sparse units) in a real state store on disk, selects a
pattern of about 20 units on a 3-token span, and times

* ``lstmsearch.query.match``, and
* a plain numpy implementation of the LSTMVis match algorithm on the same stored values:
  threshold the pattern's columns as a boolean matrix, sum them, find the runs of every level
  with ``np.diff``, then compute the active set ``A`` from all units for every candidate.

Both must return the same matches and length histogram. Usage::

    python benchmarks/query.py [--tokens 1000000] [--units 512] [--repeat 20]
    python benchmarks/query.py --tokens 10000000 --baseline-repeat 0   # 10 GB of states
    python benchmarks/query.py --only neurons --units 64 --index INDEX_DIR   # neuron queries

The neuron-query section times ``lstmsearch.neurons.scan`` (the threshold scan behind
``Index.neurons.where``) against a plain numpy scan and a DuckDB wide table on the same
stored columns (same answers checked), and with ``--index`` the whole ``Index.neurons.where``
(count + first 50 hits with their text) and ``Index.neurons.top`` (k = 20, precomputed).

Timings are wall-clock; the CPU time of the timing thread is printed too, since on a shared
machine the wall clock also counts time spent waiting for a core.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import duckdb
import numpy as np

from lstmsearch.neurons import scan as neuron_scan
from lstmsearch.query import Pattern, is_on, match, match_sort_key, select
from lstmsearch.store import StateStore, StateWriter, state_file_name

STATE_NAME, LAYER, KIND = "layers.1.h", 1, "h"
SPAN = 3
TIME_CHUNK = 8192  # positions generated and written at a time


# ---------------------------------------------------------------------------------------
# Synthetic states
# ---------------------------------------------------------------------------------------


def document_starts(n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Document boundaries with log-normal lengths (median about 1000 tokens, some tiny)."""
    lengths = np.maximum(1, rng.lognormal(np.log(1000), 1.0, n_tokens // 100 + 10)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    starts = starts[starts < n_tokens]
    return np.append(starts, n_tokens).astype(np.int64)


class StateGenerator:
    """Unit-major float16 states that look like recurrent ones, produced chunk by chunk.

    Every unit is ``tanh(gain * x + offset)`` of a unit-variance AR(1) process ``x`` with its
    own memory (coefficient 0.8 .. 0.995); one unit in eight is sparse (zero unless above 0.8).
    """

    def __init__(self, dim: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.phi = rng.uniform(0.8, 0.995, dim).astype(np.float32)
        self.noise = np.sqrt(1 - self.phi**2).astype(np.float32)
        self.gain = rng.uniform(0.5, 2.5, dim).astype(np.float32)
        self.offset = rng.normal(0, 0.5, dim).astype(np.float32)
        self.sparse = rng.random(dim) < 1 / 8
        self.x = rng.standard_normal(dim).astype(np.float32)

    def chunk(self, length: int) -> np.ndarray:
        """The next ``length`` positions as a (dim, length) float16 array."""
        shocks = self.rng.standard_normal((length, self.phi.size), dtype=np.float32)
        shocks *= self.noise
        x = np.empty_like(shocks)
        state = self.x
        for t in range(length):
            state = self.phi * state + shocks[t]
            x[t] = state
        self.x = state
        values = np.tanh(self.gain * x + self.offset)
        values[:, self.sparse] = np.where(values[:, self.sparse] > 0.8, values[:, self.sparse], 0)
        return values.T.astype(np.float16)


def write_states(directory: Path, n_tokens: int, dim: int, seed: int) -> StateStore:
    """Generate the synthetic states into a state file and open it as a store."""
    rng = np.random.default_rng(seed)
    path = directory / state_file_name(STATE_NAME)
    writer = StateWriter.create(path, dim, n_tokens)
    generator = StateGenerator(dim, rng)
    for start in range(0, n_tokens, TIME_CHUNK):
        writer.write(start, generator.chunk(min(TIME_CHUNK, n_tokens - start)))
    writer.close()
    return StateStore(path, STATE_NAME, LAYER, KIND, dim, n_tokens)


def choose_pattern(
    store: StateStore, doc_starts: np.ndarray, size: int, rng: np.random.Generator
) -> Pattern:
    """A pattern of about ``size`` units, selected on a random 3-token span."""
    thresholds = np.round(np.arange(0.05, 1.0, 0.05), 2)
    best: Pattern | None = None
    for _ in range(1000):
        start = int(rng.integers(1, store.n_tokens - SPAN))
        document = np.searchsorted(doc_starts, start, side="right") - 1
        if start == doc_starts[document] or start + SPAN > doc_starts[document + 1]:
            continue
        for threshold in thresholds:
            pattern = select(store, doc_starts, start, start + SPAN, float(threshold))
            if best is None or abs(len(pattern.units) - size) < abs(len(best.units) - size):
                best = pattern
        if best is not None and abs(len(best.units) - size) <= 1:
            break
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------
# Plain numpy LSTMVis
# ---------------------------------------------------------------------------------------


def lstmvis_numpy(
    store: StateStore, doc_starts: np.ndarray, pattern: Pattern, limit: int
) -> tuple[list[tuple[int, int, int, int]], dict[int, int]]:
    """The LSTMVis match algorithm written the straightforward vectorised numpy way.

    Returns the top ``limit`` matches as ``(start, end, overlap, extra)`` and the length
    histogram of all candidates.
    """
    n = store.n_tokens
    on = is_on(store.block(list(pattern.units), 0, n), pattern.threshold, pattern.sign)
    counts = on.sum(axis=0)
    first = np.zeros(n, bool)
    first[doc_starts[:-1][doc_starts[:-1] < n]] = True
    spans: set[tuple[int, int]] = set()
    for level in range(len(pattern.units), 0, -1):
        above = (counts >= level).astype(np.int8)
        change = np.diff(above, prepend=0, append=0)
        # a run that goes on across a document boundary is cut there
        cut = first & (above == 1) & (np.roll(above, 1) == 1)
        cut[0] = False
        starts = np.flatnonzero((change[:-1] == 1) | cut)
        ends = np.flatnonzero((change[1:] == -1) | np.append(cut[1:], False)) + 1
        spans.update(zip(starts.tolist(), ends.tolist()))
    spans.add((pattern.start, pattern.end))

    histogram: dict[int, int] = {}
    units = np.zeros(store.dim, bool)
    units[list(pattern.units)] = True
    scored = []
    for start, end in spans:
        document = np.searchsorted(doc_starts, start, side="right") - 1
        low = max(int(doc_starts[document]), start - pattern.pad_left)
        high = min(int(doc_starts[document + 1]), end + pattern.pad_right)
        window = is_on(store.block(slice(None), low, high), pattern.threshold, pattern.sign)
        inside = window[:, start - low : end - low]
        active = inside.all(axis=1) & ~window[:, : start - low].any(axis=1)
        active &= ~window[:, end - low :].any(axis=1)
        overlap = int((active & units).sum())
        histogram[end - start] = histogram.get(end - start, 0) + 1
        if overlap:
            scored.append(_Row(start, end, overlap, int((active & ~units).sum())))
    scored.sort(key=partial(match_sort_key, pattern_length=pattern.length))
    top = [(r.start, r.end, r.overlap, r.extra) for r in scored[:limit]]
    return top, dict(sorted(histogram.items()))


@dataclass(frozen=True, slots=True)
class _Row:
    """One evaluated candidate of the baseline."""

    start: int
    end: int
    overlap: int
    extra: int


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def timed(
    function: Callable[[], object], repeat: int, warm_up: bool = True
) -> tuple[object, list[float], list[float]]:
    """Run ``function`` (once more first to warm up): (last result, wall s, cpu s per run)."""
    result = function() if warm_up else None
    walls, cpus = [], []
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.thread_time()
        result = function()
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return result, walls, cpus


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile of some timings, in milliseconds."""
    return float(np.percentile(values, q)) * 1e3


# ---------------------------------------------------------------------------------------
# Neuron queries (SPEC 4: threshold query p50 <= 5 ms at 10^6 tokens, top-K <= 2 ms)
# ---------------------------------------------------------------------------------------

NEURON_THRESHOLDS = (0.25, 0.5, 0.75)
"""Thresholds exact in float16, so that the plain scans below give the same answers."""
NEURON_LIMIT = 50
DUCKDB_UNITS = 16


def numpy_where(column: np.ndarray, threshold: float, limit: int) -> tuple[int, np.ndarray]:
    """The plain numpy threshold query: compare the whole column, list every hit."""
    hits = np.flatnonzero(column >= np.float16(threshold))
    return len(hits), hits[:limit]


def duckdb_table(store: StateStore, units: list[int]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB wide table (pos, u0, u1, ...) of some units, as REAL columns."""
    con = duckdb.connect()
    columns = {"pos": np.arange(store.n_tokens, dtype=np.int64)}
    columns.update({f"u{u}": np.asarray(store.column(u), dtype=np.float32) for u in units})
    con.execute("CREATE TABLE states AS SELECT * FROM columns")
    return con


def duckdb_where(
    con: duckdb.DuckDBPyConnection, unit: int, threshold: float, limit: int
) -> tuple[int, np.ndarray]:
    """The threshold query in SQL: a count and the first positions (column names are ours)."""
    (count,) = con.execute(f"SELECT count(*) FROM states WHERE u{unit} >= ?", [threshold]).fetchone()
    first = con.execute(
        f"SELECT pos FROM states WHERE u{unit} >= ? ORDER BY pos LIMIT ?", [threshold, limit]
    ).fetchnumpy()["pos"]
    return int(count), np.asarray(first, dtype=np.int64)


def time_calls(function: Callable[[int], object], arguments: list, repeat: int
               ) -> tuple[list, list[float], list[float]]:
    """Call ``function`` on each argument in turn ``repeat`` times: results, wall s, cpu s."""
    results, walls, cpus = [], [], []
    for i in range(repeat):
        argument = arguments[i % len(arguments)]
        wall, cpu = time.perf_counter(), time.thread_time()
        results.append(function(argument))
        cpus.append(time.thread_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return results, walls, cpus


def neuron_rows(store: StateStore, repeat: int, rng: np.random.Generator) -> tuple[list, str]:
    """Time the threshold scan of ``lstmsearch.neurons`` against plain numpy and DuckDB on
    the same stored columns; check that all three give the same answers."""
    units = [int(u) for u in rng.choice(store.dim, min(DUCKDB_UNITS, store.dim), replace=False)]
    queries = [(u, NEURON_THRESHOLDS[i % len(NEURON_THRESHOLDS)]) for i, u in enumerate(units)]
    con = duckdb_table(store, units)

    def ours(q: tuple[int, float]) -> tuple[int, np.ndarray]:
        return neuron_scan(store.column(q[0]), above=q[1], limit=NEURON_LIMIT)

    def plain(q: tuple[int, float]) -> tuple[int, np.ndarray]:
        return numpy_where(store.column(q[0]), q[1], NEURON_LIMIT)

    def sql(q: tuple[int, float]) -> tuple[int, np.ndarray]:
        return duckdb_where(con, q[0], q[1], NEURON_LIMIT)

    rows, answers = [], []
    for name, function in (("neurons.where scan", ours), ("numpy scan", plain),
                           ("DuckDB wide table", sql)):
        time_calls(function, queries, len(queries))  # warm up: every column read once
        results, walls, cpus = time_calls(function, queries, repeat)
        rows.append((name, walls, cpus))
        answers.append([(c, p.tolist()) for c, p in results])
    same = "yes" if answers[0] == answers[1] == answers[2] else "NO"
    return rows, same


def index_neuron_rows(path: Path, repeat: int, rng: np.random.Generator) -> list:
    """Time ``Index.neurons.where`` (count + first 50 hits with their text) and
    ``Index.neurons.top`` (k = 20 from the top-K table, with text) on a real index."""
    from lstmsearch.index import open_index

    index = open_index(path)
    store = index.store(index.state_names[0])
    units = [int(u) for u in rng.integers(0, store.dim, repeat)]
    neurons = index.neurons
    neurons.top(0, store.layer, store.kind, 20)  # loads the top-K table once
    index.text(0, 1)  # loads the token offsets once

    def where(i: int) -> object:
        threshold = NEURON_THRESHOLDS[i % len(NEURON_THRESHOLDS)]
        return neurons.where(units[i], store.layer, store.kind, above=threshold,
                             limit=NEURON_LIMIT)

    def top(i: int) -> object:
        return neurons.top(units[i], store.layer, store.kind, 20)

    rows = []
    for name, function in ((f"Index.neurons.where ({store.name})", where),
                           (f"Index.neurons.top k=20 ({store.name})", top)):
        time_calls(function, list(range(repeat)), repeat)  # warm up: columns read once
        _, walls, cpus = time_calls(function, list(range(repeat)), repeat)
        rows.append((name, walls, cpus))
    print(f"index: {path} ({index.n_tokens:,} tokens, {store.dim} units)")
    index.close()
    return rows


def print_neuron_report(rows: list, same: str | None) -> None:
    """The neuron timings as a table, with the ratio of the plain scans to ours."""
    print()
    print(f"{'neuron queries':40s}{'p50 ms':>10s}{'p90 ms':>10s}{'cpu p50 ms':>12s}{'runs':>6s}")
    for name, w, c in rows:
        print(f"{name:40s}{percentile(w, 50):10.2f}{percentile(w, 90):10.2f}"
              f"{statistics.median(c) * 1e3:12.2f}{len(w):6d}")
    ours = {name: percentile(w, 50) for name, w, _ in rows}
    if "neurons.where scan" in ours:
        for other in ("numpy scan", "DuckDB wide table"):
            print(f"{other + ' / ours (p50)':40s}{ours[other] / ours['neurons.where scan']:10.1f}x")
    if same is not None:
        print(f"same counts and first {NEURON_LIMIT} positions: {same}")


def neuron_report(args: argparse.Namespace, store: StateStore, rng: np.random.Generator) -> None:
    """Time the neuron queries on the synthetic states (and on ``--index`` when given)."""
    rows, same = neuron_rows(store, args.neuron_repeat, rng)
    if args.index is not None:
        rows += index_neuron_rows(args.index, args.neuron_repeat, rng)
    print_neuron_report(rows, same)
    print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--pattern-size", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=20, help="timed runs of match")
    parser.add_argument(
        "--baseline-repeat",
        type=int,
        default=1,
        help="timed runs of the numpy baseline (0: skip it)",
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write the states (default: a temporary directory)",
    )
    parser.add_argument("--only", choices=["all", "match", "neurons"], default="all",
                        help="run only the match or only the neuron-query benchmark")
    parser.add_argument("--neuron-repeat", type=int, default=60,
                        help="timed runs of each neuron query")
    parser.add_argument("--index", type=Path, default=None,
                        help="also time Index.neurons.where/top on this index directory")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        began = time.perf_counter()
        rng = np.random.default_rng(args.seed)
        doc_starts = document_starts(args.tokens, rng)
        store = write_states(Path(tmp), args.tokens, args.units, args.seed)
        print(
            f"states: {args.tokens:,} tokens x {args.units} units, {len(doc_starts) - 1:,} "
            f"documents, written in {time.perf_counter() - began:.1f} s"
        )
        if args.only == "neurons":
            neuron_report(args, store, rng)
            return
        pattern = choose_pattern(store, doc_starts, args.pattern_size, rng)
        print(f"pattern: {len(pattern.units)} units, {pattern.how}")

        run = partial(match, store, doc_starts, pattern, limit=args.limit)
        result, walls, cpus = timed(run, args.repeat)
        rows = [("lstmsearch match", walls, cpus)]
        print(
            f"candidates: {result.n_candidates:,}, best overlap "
            f"{result.matches[0].overlap if result.matches else 0}"
        )

        same = "not checked"
        if args.baseline_repeat > 0:
            baseline = partial(lstmvis_numpy, store, doc_starts, pattern, args.limit)
            (top, histogram), base_walls, base_cpus = timed(
                baseline, args.baseline_repeat, warm_up=False
            )
            rows.append(("numpy LSTMVis", base_walls, base_cpus))
            ours = [(m.start, m.end, m.overlap, m.extra) for m in result.matches]
            same = "yes" if ours == top and histogram == result.length_histogram else "NO"

        print()
        print(f"{'':22s}{'p50 ms':>10s}{'p90 ms':>10s}{'cpu p50 ms':>12s}{'runs':>6s}")
        for name, w, c in rows:
            print(
                f"{name:22s}{percentile(w, 50):10.1f}{percentile(w, 90):10.1f}"
                f"{statistics.median(c) * 1e3:12.1f}{len(w):6d}"
            )
        if len(rows) == 2:
            ratio = percentile(rows[1][1], 50) / percentile(rows[0][1], 50)
            print(f"{'speed-up (p50)':22s}{ratio:10.0f}x")
        print(f"same matches and histogram: {same}")
        print(f"load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
        if args.only == "all":
            neuron_report(args, store, rng)


if __name__ == "__main__":
    main()

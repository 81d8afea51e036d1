"""Benchmark of the queries (SPEC 4) at 10^5, 10^6 and 10^7 tokens x 512 units.

For each size, a synthetic index (`benchmarks/synthetic.py`: recurrent-looking states that
restart at every document, a depth track, FAISS) is built with `lstmsearch index-states`
into a temporary directory and removed afterwards (`--keep DIR` builds it there once and
reuses it). Then, on the same open index, it times

* match (`Index.match`, limit 50) for three patterns: |S| about 20 on a 3-token span, |S| =
  64, and |S| about 20 at a threshold that turns each unit on 30 % of the time; each as the
  ranking alone (`histogram=False`) and with the length histogram (the default);
* neurons: `where` (count + first 50 hits with text), `top` (k = 20), `correlate` (the depth
  track against all units);
* nearest (`Index.nearest`, k = 10: each segment's compressed FAISS codes, re-ranked exactly
  on the stored states), the first call after opening apart, and its recall@10 against the
  brute-force scan (`exact=True`, timed too, up to `--exact-limit` tokens) on the same
  spans, beside the recall the build recorded; SQL `count(*)`;
* LSTMVis's own match algorithm (`benchmarks/lstmvis_port.py`), fast and precise modes, on
  the same states and selections: the ratio of its time to lstmsearch's, and how many of
  the top 50 the two share (and, of those, how many get the same |A ∩ S|).

Every row gives p50/p95 of wall and CPU time (the process's CPU time, all threads) and the
load average when it was measured. The first query after process start (compiling or
loading the compiled kernels) is timed on its own. Usage::

    python benchmarks/query.py                          # 10^5, 10^6, 10^7 (10^7: ~10 GB)
    python benchmarks/query.py --sizes 100000 1000000 --repeat 10
    python benchmarks/query.py --sizes 10000000 --keep /tmp/bench   # keep the index
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import synthetic  # noqa: E402
from lstmvis_port import query_similar_activations  # noqa: E402

from lstmsearch import kernels  # noqa: E402
from lstmsearch.index import Index, open_index  # noqa: E402
from lstmsearch.query import Pattern  # noqa: E402

SPAN = 3
LIMIT = 50


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


@dataclass
class Row:
    """Timings of one query: wall and CPU seconds per run, and the load average."""

    name: str
    walls: list[float]
    cpus: list[float]
    load: float
    note: str = ""


def timed(name: str, calls: list[Callable[[], object]], repeat: int, note: str = "",
          warm_up: bool = True) -> tuple[Row, list]:
    """Run the calls in turn `repeat` times (after one warm-up round): the row, results."""
    if warm_up:
        for call in calls:
            call()
    walls, cpus, results = [], [], []
    for i in range(repeat):
        call = calls[i % len(calls)]
        wall, cpu = time.perf_counter(), time.process_time()
        results.append(call())
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return Row(name, walls, cpus, os.getloadavg()[0], note), results


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1e3


def print_header() -> None:
    print(f"  {'query':46s}{'p50 ms':>9s}{'p95 ms':>9s}{'cpu p50':>9s}{'cpu p95':>9s}"
          f"{'runs':>5s}{'load':>6s}  note", flush=True)


def print_row(r: Row) -> Row:
    print(f"  {r.name:46s}{ms(r.walls, 50):9.1f}{ms(r.walls, 95):9.1f}"
          f"{ms(r.cpus, 50):9.1f}{ms(r.cpus, 95):9.1f}{len(r.walls):5d}{r.load:6.1f}"
          f"  {r.note}", flush=True)
    return r


# ---------------------------------------------------------------------------------------
# Patterns
# ---------------------------------------------------------------------------------------


def choose_pattern(index: Index, size: int, thresholds: list[float],
                   rng: np.random.Generator, exact: bool = False, pad_left: int = 1) -> Pattern:
    """A pattern of about `size` units (exactly, with `exact`: `size` of the units selected)
    on a random 3-token span inside a document, away from its edges, at one of
    `thresholds`."""
    store = index.store(synthetic.STATE_NAME)
    starts = index.doc_starts
    best: Pattern | None = None
    for _ in range(2000):
        start = int(rng.integers(1, store.n_tokens - SPAN))
        document = np.searchsorted(starts, start, side="right") - 1
        if start - 1 <= starts[document] or start + SPAN + 1 > starts[document + 1]:
            continue
        for threshold in thresholds:
            pattern = index.select(start, start + SPAN, float(threshold),
                                   state=synthetic.STATE_NAME, pad_left=pad_left)
            if exact and len(pattern.units) > size:
                pattern = Pattern(**{**pattern.__dict__,
                                     "units": tuple(sorted(rng.choice(pattern.units, size,
                                                                      replace=False).tolist())),
                                     "how": pattern.how + f", {size} of its units"})
            if best is None or abs(len(pattern.units) - size) < abs(len(best.units) - size):
                best = pattern
        if best is not None and abs(len(best.units) - size) <= (0 if exact else 1):
            return best
    assert best is not None
    return best


def threshold_on(index: Index, fraction: float, rng: np.random.Generator) -> float:
    """The threshold at which each unit is on `fraction` of the time, over a sample."""
    store = index.store(synthetic.STATE_NAME)
    positions = np.sort(rng.choice(store.n_tokens, min(store.n_tokens, 20_000), replace=False))
    values = store.gather(positions).astype(np.float64)
    return float(np.round(np.quantile(values, 1 - fraction), 2))


# ---------------------------------------------------------------------------------------
# One size
# ---------------------------------------------------------------------------------------


def agreement(ours, theirs) -> tuple[int, int]:
    """(spans in both top lists, of those with the same |A ∩ S|)."""
    mine = {(m.start, m.end): m.overlap for m in ours.matches}
    shared = [r for r in theirs if (r.start, r.end) in mine]
    return len(shared), sum(mine[(r.start, r.end)] == r.intersection for r in shared)


def bench_size(index: Index, args: argparse.Namespace, rng: np.random.Generator) -> None:
    store = index.store(synthetic.STATE_NAME)
    print(f"\n== {index.n_tokens:,} tokens x {store.dim} units, {index.n_docs:,} documents, "
          f"{len(index.segments)} segments ==")
    grid = [round(t, 2) for t in np.arange(0.05, 1.0, 0.05)]
    thirty = threshold_on(index, 0.30, rng)
    patterns = {
        "|S|~20": [choose_pattern(index, args.pattern_size, grid, rng)
                   for _ in range(args.selections)],
        # 64 units seldom switch on together: no left padding for this one
        "|S|=64": [choose_pattern(index, 64, [round(t, 2) for t in np.arange(0.0, 0.5, 0.05)],
                                  rng, exact=True, pad_left=0)],
        f"|S|~20, on 30% (x>={thirty:g})": [choose_pattern(index, args.pattern_size,
                                                          [thirty], rng)],
    }
    rows: list[Row] = []
    ours_by_pattern = {}
    print_header()
    for label, chosen in patterns.items():
        sizes = "/".join(str(len(p.units)) for p in chosen)
        for histogram in (False, True):
            name = f"match {label} {'+ histogram' if histogram else 'ranking'}"
            row, results = timed(name, [
                (lambda p=p, h=histogram: index.match(p, LIMIT, histogram=h)) for p in chosen
            ], args.repeat, note=f"|S| = {sizes}")
            rows.append(print_row(row))
            if label == "|S|~20" and histogram:
                ours_by_pattern = {p: r for p, r in zip(chosen * args.repeat, results)}
    neurons = index.neurons
    units = [int(u) for u in rng.integers(0, store.dim, 16)]
    print_row(timed("neurons.where (count + 50 hits, text)", [
        (lambda u=u: neurons.where(u, store.layer, store.kind, above=0.5, limit=50))
        for u in units], args.repeat * 2)[0])
    print_row(timed("neurons.top k=20 (text)", [
        (lambda u=u: neurons.top(u, store.layer, store.kind, 20)) for u in units],
        args.repeat * 2)[0])
    print_row(timed("neurons.correlate depth, all units", [
        lambda: neurons.correlate("depth", store.layer, store.kind)], 3)[0])
    spans = [(p.start, p.end) for p in patterns["|S|~20"]]
    print_row(timed("nearest k=10, first call", [
        lambda: index.nearest(*spans[0], store.layer, store.kind, 10)], 1,
        warm_up=False)[0])
    row, found = timed("nearest k=10", [
        (lambda s=s: index.nearest(*s, store.layer, store.kind, 10)) for s in spans],
        max(len(spans), args.repeat // 2))
    print_row(row)
    recorded = index.info().faiss[0]
    if index.n_tokens <= args.exact_limit:
        row, exact = timed("nearest k=10, brute force (exact=True)", [
            (lambda s=s: index.nearest(*s, store.layer, store.kind, 10, exact=True))
            for s in spans], len(spans), warm_up=False)
        print_row(row)
        hits = [np.mean([n.distance <= want[-1].distance * (1 + 1e-9) for n in got])
                for got, want in zip(found[: len(spans)], exact)]
        print(f"    recall@10 against brute force on these {len(spans)} spans: "
              f"{np.mean(hits):.3f}; recorded by the build: {recorded['recall_at_10']:.3f} "
              f"(lowest of {recorded['measured']} segments measured)")
    else:
        print(f"    recall@10 recorded by the build: {recorded['recall_at_10']:.3f} (lowest of "
              f"{recorded['measured']} segments measured); brute force skipped above "
              f"{args.exact_limit:,} tokens (--exact-limit)")
    print_row(timed("sql count(*) FROM tokens", [
        lambda: index.sql("SELECT count(*) FROM tokens")], args.repeat)[0])

    # LSTMVis's algorithm on the same states and selections
    print(f"\n  LSTMVis port ({args.selections} selections of |S|~20, span {SPAN}, constrain "
          "left, as the patterns' padding 1/0):")
    ours_rows = {r.name: r for r in rows}
    ranking = ours_rows["match |S|~20 ranking"]
    full = ours_rows["match |S|~20 + histogram"]
    for mode in ("fast", "precise"):
        if mode == "precise" and index.n_tokens > args.precise_limit:
            print(f"  {mode}: skipped above {args.precise_limit:,} tokens (--precise-limit)")
            continue
        chosen = patterns["|S|~20"]
        row, results = timed(f"LSTMVis {mode}", [
            (lambda p=p, m=mode: query_similar_activations(
                store, list(p.units), p.threshold, p.sign, mode=m)) for p in chosen],
            max(len(chosen), args.baseline_repeat), warm_up=False)
        print_header()
        print_row(row)
        shared = [agreement(ours_by_pattern[p], r) for p, r in zip(chosen * 99, results)]
        print(f"    time / lstmsearch match (p50 wall, CPU): ranking "
              f"{ms(row.walls, 50) / ms(ranking.walls, 50):.0f}x, "
              f"{ms(row.cpus, 50) / ms(ranking.cpus, 50):.0f}x; with histogram "
              f"{ms(row.walls, 50) / ms(full.walls, 50):.0f}x, "
              f"{ms(row.cpus, 50) / ms(full.cpus, 50):.0f}x")
        print(f"    top {LIMIT} shared per selection: "
              + ", ".join(f"{n} ({same} same |A∩S|)" for n, same in shared[: len(chosen)]))


def first_query(index: Index) -> None:
    """The first match after process start: compiling (or loading) the kernels included."""
    store = index.store(synthetic.STATE_NAME)
    began = time.perf_counter()
    warm = kernels.warm_up()
    start = int(index.doc_starts[1]) + 5 if index.n_docs > 1 else 5
    pattern = index.select(start, start + SPAN, 0.3, state=store.name)
    wall = time.perf_counter()
    if pattern.units:
        index.match(pattern, LIMIT)
    print(f"first query after process start: kernels ready in {warm:.2f} s (compiled, or "
          f"loaded from numba's cache), then the first match {time.perf_counter() - wall:.2f} s"
          f"; {time.perf_counter() - began:.2f} s in all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+",
                        default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--units", type=int, default=512)
    parser.add_argument("--pattern-size", type=int, default=20)
    parser.add_argument("--selections", type=int, default=5,
                        help="patterns of |S|~20 (and selections for the LSTMVis port)")
    parser.add_argument("--repeat", type=int, default=20, help="timed runs per query")
    parser.add_argument("--baseline-repeat", type=int, default=5,
                        help="timed runs of each LSTMVis mode")
    parser.add_argument("--precise-limit", type=int, default=10_000_000,
                        help="skip LSTMVis's precise mode above this many tokens")
    parser.add_argument("--exact-limit", type=int, default=2_000_000,
                        help="skip the brute-force nearest above this many tokens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", type=Path, default=None,
                        help="build the indexes here (once) and keep them")
    args = parser.parse_args()
    print(f"lstmsearch query benchmark: {os.cpu_count()} cores, kernels compiled: "
          f"{kernels.COMPILED}, load average {os.getloadavg()[0]:.1f}")
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        where = args.keep or Path(tempfile.mkdtemp(prefix="lstmsearch-bench-"))
        directory = where / f"{n}x{args.units}"
        try:
            if not (directory / "index").is_dir():
                directory.mkdir(parents=True, exist_ok=True)
                synthetic.build_index(directory, n, args.units, args.seed,
                                      log=lambda m: print("  " + m))
            with open_index(directory / "index") as index:
                if n == args.sizes[0]:
                    first_query(index)
                bench_size(index, args, rng)
        finally:
            if args.keep is None:
                shutil.rmtree(where, ignore_errors=True)
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()

"""Scale-out benchmark (SPEC 4): the build engines, append, and queries over many segments.

    python benchmarks/scale.py [--docs 1000] [--model data/models/parens-lstm.pt] [--repeat 3]

On the same corpus (the bundled `parens`, first DOCS documents) and model, it times

* a build with the local engine, and with Ray Data on 1 and 2 local workers (one Ray runtime
  started beforehand, its start-up printed apart: a cluster is started once, not per build);
* an append of 10% more documents to an index of the rest, against building those
  documents alone as a new index (goal: append <= 1.5x);
* match and nearest over the same tokens held in 1 segment and in 64 segments (goal: the
  64-segment time <= 1.5x the one-segment time).

Every figure is the quietest (fastest) of REPEAT runs, printed with the load average.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from indexer.build import build_index
from lstmsearch.corpus import Corpus, load_corpus
from lstmsearch.index import open_index

ROOT = Path(__file__).resolve().parent.parent


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def quietest(function: Callable[[], object], repeat: int, before: Callable[[], None] | None = None
             ) -> float:
    """The fastest of `repeat` timed calls (`before` runs untimed ahead of each)."""
    best = float("inf")
    for _ in range(repeat):
        if before is not None:
            before()
        t0 = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - t0)
    return best


def p50(function: Callable[[], object], repeat: int) -> float:
    function()  # the first query reads the columns and FAISS files
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        function()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def fresh(path: Path) -> Callable[[], None]:
    return lambda: shutil.rmtree(path, ignore_errors=True)


def engines(corpus: Corpus, model: Path, work: Path, repeat: int) -> None:
    import ray

    from indexer.ray_engine import build_with_ray, quiet_ray

    n_tokens = None
    out = work / "engine"
    local = quietest(lambda: build_index(corpus, model, out, progress=False), repeat,
                     fresh(out))
    with open_index(out) as index:
        n_tokens = index.n_tokens
    cores = os.cpu_count() or 1
    quiet_ray()
    t0 = time.perf_counter()
    ray.init(num_cpus=cores, object_store_memory=500 * 1024**2, include_dashboard=False,
             log_to_driver=False, logging_level="ERROR")
    start = time.perf_counter() - t0
    times = {}
    try:
        for workers in (1, 2):
            times[workers] = quietest(
                lambda w=workers: build_with_ray(corpus, model, out, workers=w,
                                                 cpus_per_worker=max(1, cores // w),
                                                 progress=False),
                repeat, fresh(out))
    finally:
        ray.shutdown()
    print(f"\nbuild, {len(corpus.documents):,} documents, {n_tokens:,} tokens "
          f"({cores} cores; load average {load()})")
    print(f"  local engine          {local:7.2f} s  {n_tokens / local:9,.0f} tokens/s  1.00x")
    for w, t in times.items():
        print(f"  ray, {w} worker{'s' if w > 1 else ' '}        {t:7.2f} s  "
              f"{n_tokens / t:9,.0f} tokens/s  {local / t:.2f}x of local")
    print(f"  (ray runtime start-up, once: {start:.1f} s)")


def append(corpus: Corpus, model: Path, work: Path, repeat: int) -> None:
    docs = corpus.documents
    cut = len(docs) * 9 // 10
    first = Corpus(corpus.name, docs[:cut])
    more = Corpus(corpus.name + "-more", docs[cut:])
    base, target, alone = work / "base", work / "append", work / "alone"
    build_index(first, model, base, progress=False)

    def copy() -> None:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(base, target)

    appended = quietest(lambda: build_index(more, None, target, append=True, progress=False),
                        repeat, copy)
    separate = quietest(lambda: build_index(more, model, alone, progress=False), repeat,
                        fresh(alone))
    full = quietest(lambda: build_index(corpus, model, work / "full", progress=False), 1,
                    fresh(work / "full"))
    print(f"\nappend {len(more.documents)} documents to an index of {cut} (load average {load()})")
    print(f"  append                {appended:7.2f} s")
    print(f"  those documents alone {separate:7.2f} s  append/alone = "
          f"{appended / separate:.2f}x (goal <= 1.5x)")
    print(f"  the full build        {full:7.2f} s  append/full = {appended / full:.2f}x")


def queries(corpus: Corpus, model: Path, work: Path, segments: int, repeat: int) -> None:
    one, many = work / "one", work / "many"
    build_index(corpus, model, one, segment_tokens=1 << 40, progress=False)
    with open_index(one) as index:
        n_tokens = index.n_tokens
        assert len(index.segments) == 1
    per = max(1, n_tokens // (segments + 1))  # the last segment takes the rest
    build_index(corpus, model, many, segment_tokens=per, segment_docs=1, progress=False)
    with open_index(one) as a, open_index(many) as b:
        state = a.state_names[-1]
        span = pick_span(a, state)
        rows = []
        for name, run in (
            ("match", lambda ix: ix.match(ix.select(*span, state=state), limit=50)),
            ("nearest", lambda ix: ix.nearest(span[0], span[1], state, k=10)),
        ):
            assert answers(run(a)) == answers(run(b)), f"{name}: the answers differ"
            rows.append((name, p50(lambda r=run: r(a), repeat), p50(lambda r=run: r(b), repeat)))
        print(f"\nqueries over {n_tokens:,} tokens of {state}, span {span[:2]}, threshold "
              f"{span[2]}: 1 vs {len(b.segments)} segments, p50 of {repeat} "
              f"(load average {load()})")
        for name, t1, tn in rows:
            print(f"  {name:8s} 1 segment {t1 * 1e3:8.2f} ms   {len(b.segments)} segments "
                  f"{tn * 1e3:8.2f} ms   ratio {tn / t1:.2f}x (goal <= 1.5x)")


def pick_span(index, state: str) -> tuple[int, int, float]:
    """A 3-token span inside a document whose pattern has a few units."""
    starts = index.doc_starts
    for threshold in (0.5, 0.3, 0.1):
        for doc in range(0, min(len(starts) - 1, 50)):
            s = int(starts[doc]) + 10
            if s + 3 <= int(starts[doc + 1]):
                pattern = index.select(s, s + 3, threshold, state=state)
                if 3 <= len(pattern.units) <= 20:
                    return s, s + 3, threshold
    return int(starts[0]) + 10, int(starts[0]) + 13, 0.1


def answers(result) -> object:
    """What a query answered, comparable across indexes."""
    if hasattr(result, "matches"):
        return [(m.start, m.end, m.document) for m in result.matches]
    return [(n.document, n.start, round(n.distance, 4)) for n in result]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=1000, help="parens documents")
    parser.add_argument("--model", default=str(ROOT / "data/models/parens-lstm.pt"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--segments", type=int, default=64)
    parser.add_argument("--query-repeat", type=int, default=30)
    parser.add_argument("--only", choices=["build", "append", "query"], default=None)
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(os.cpu_count() or 1)
    corpus = load_corpus("parens", limit=args.docs)
    model = Path(args.model)
    print(f"scale benchmark: parens, {len(corpus.documents)} documents, model {model.name}; "
          f"load average at start {load()}")
    with tempfile.TemporaryDirectory(prefix="lstmsearch-scale-") as tmp:
        work = Path(tmp)
        if args.only in (None, "build"):
            engines(corpus, model, work, args.repeat)
        if args.only in (None, "append"):
            append(corpus, model, work, args.repeat)
        if args.only in (None, "query"):
            queries(corpus, model, work, args.segments, args.query_repeat)


if __name__ == "__main__":
    main()

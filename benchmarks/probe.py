"""Benchmark of `lstmsearch probe` at 10^6 tokens x 512 units (target: <= 30 s).

A synthetic index (`benchmarks/synthetic.py`: recurrent-looking states) is built with
`index-states` into a temporary directory (`--keep DIR` builds it there once and reuses
it), with two tracks planted in its stored states: `planted` = unit 7 - 0.5 x unit 300 +
noise, and `planted_class`, its quintile (5 classes). Then, on the same open index, each
repeated and the quietest run reported:

* the numeric probe of `planted` (ridge regression on the sample);
* the categorical probe of `planted_class` (logistic regression over 5 classes);
* the control: a random-weight 2 x 512 LSTM run over the sample's documents, and the
  logistic fit on its states (an index built from states has no architecture, so this
  times what `index_probe` runs for an index built from a checkpoint of that shape);
* the baselines a user would otherwise run: ranking the units by correlation with the
  track over every token (`neurons --correlate`), and the same ridge probe fitted on every
  token of the train documents (no sample): its held-out R² says what the sample costs.

Every row prints the load average when it was measured. Usage::

    python benchmarks/probe.py                    # 10^6 x 512
    python benchmarks/probe.py --tokens 200000 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from synthetic import KIND, LAYER, STATE_NAME, build_index  # noqa: E402

from lstmsearch.analysis.probe import (  # noqa: E402
    draw_sample,
    fit_probe,
    index_probe,
    random_model,
)
from lstmsearch.index import open_index  # noqa: E402


def load() -> str:
    """The 1-minute load average, as the benchmarks print it beside each figure."""
    return f"load {os.getloadavg()[0]:.2f}"


def quietest(name: str, call, repeat: int) -> tuple[float, object]:
    """Run `call` `repeat` times; print and return the fastest time and its result (the
    benchmarks of the analyses share this)."""
    best, result, at = float("inf"), None, ""
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = call()
        seconds = time.perf_counter() - t0
        if seconds < best:
            best, result, at = seconds, out, load()
    print(f"{name:58s} {best:8.2f} s   ({at})", flush=True)
    return best, result


PLANTED = (7, 300)


def add_planted_tracks(path: Path) -> None:
    """`planted` (unit 7 - 0.5 x unit 300 + noise) and `planted_class` (its quintile)."""
    from indexer.annotate import annotate_index

    with open_index(path) as index:
        if "planted_class" in index.track_names():
            return
        store = index.store(STATE_NAME)
        a, b = (store.column(u).astype(np.float64) for u in PLANTED)
    rng = np.random.default_rng(1)
    planted = a - 0.5 * b + 0.05 * rng.normal(size=len(a))
    classes = np.digitize(planted, np.quantile(planted, [0.2, 0.4, 0.6, 0.8])).astype(float)
    for name, values in (("planted", planted), ("planted_class", classes)):
        file = path.parent / f"{name}.npy"
        np.save(file, values)
        annotate_index(path, name, file)
        file.unlink()


def full_ridge(index, sample_seed: int) -> float:
    """Held-out R² of ridge fitted on every token of the train documents (the test
    documents: those of the sample's held-out split), by normal equations in blocks."""
    store = index.store(STATE_NAME)
    target = index.track("planted")
    sample = draw_sample(index.doc_starts, index.n_tokens, seed=sample_seed)
    dim = store.dim
    gram = np.zeros((dim + 1, dim + 1))
    rhs = np.zeros(dim + 1)
    test_x, test_y = [], []
    for (a, b), train in zip(sample.runs, sample.train):
        x = store.block(slice(None), a, b).T.astype(np.float64)
        x = np.column_stack([x, np.ones(len(x))])
        if train:
            gram += x.T @ x
            rhs += x.T @ target[a:b]
        else:
            test_x.append(x)
            test_y.append(target[a:b])
    gram[np.arange(dim), np.arange(dim)] += 1.0
    w = np.linalg.solve(gram, rhs)
    x, y = np.concatenate(test_x), np.concatenate(test_y)
    return 1 - float(np.sum((y - x @ w) ** 2) / np.sum((y - y.mean()) ** 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build the index here once and reuse it")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)  # on 2 busy cores: see lstmsearch/analysis/probe.py
    root = args.keep or Path(tempfile.mkdtemp(prefix="probe-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        path = root / "index"
        if not path.exists():
            build_index(root, args.tokens, args.dim)
        add_planted_tracks(path)
        with open_index(path) as index:
            print(f"index: {index.n_tokens:,} tokens x {index.store(STATE_NAME).dim} units, "
                  f"{index.n_docs:,} documents; {os.cpu_count()} cores")
            t_num, num = quietest(
                "probe planted, numeric (ridge)",
                lambda: index_probe(index, "planted", LAYER, KIND, control=False), args.repeat)
            t_cat, cat = quietest(
                "probe planted_class, categorical (logistic, 5 classes)",
                lambda: index_probe(index, "planted_class", LAYER, KIND, control=False),
                args.repeat)
            from lstmsearch.extract import extract
            from lstmsearch.models import ModelConfig

            sample = draw_sample(index.doc_starts)
            ids = [np.asarray(index.tokens(a, b).token_id, np.int64) % 5000
                   for a, b in sample.runs]
            config = ModelConfig("lstm", 5000, embed_dim=64, hidden=args.dim, layers=2)
            model = random_model(config, 0)
            t_ctrl, _ = quietest(
                f"control: random 2 x {args.dim} LSTM over the sample's "
                f"{len(sample.positions):,} tokens", lambda: extract(model, ids, [STATE_NAME]),
                args.repeat)
            states = np.concatenate([index.store(STATE_NAME).block(slice(None), a, b).T
                                     for a, b in sample.runs]).astype(np.float32)
            y = index.track("planted_class")[sample.positions].astype(np.int64)
            t_fit, _ = quietest("control's logistic fit (same tokens and classes)",
                                lambda: fit_probe(states[sample.is_train], y[sample.is_train],
                                                  states[~sample.is_train],
                                                  y[~sample.is_train], True), args.repeat)
            t_corr, _ = quietest("baseline: neurons --correlate planted, every token",
                                 lambda: index.neurons.correlate("planted", LAYER, KIND),
                                 args.repeat)
            t_full, full = quietest("baseline: ridge on every token of the train documents",
                                    lambda: full_ridge(index, 0), 1)
        total = t_cat + t_ctrl + t_fit
        print()
        print(f"numeric probe:      held-out R² {num.score:.3f} (mean {num.baseline:+.3f}) on "
              f"{num.n_train:,} + {num.n_test:,} tokens; ridge on every train token: "
              f"R² {full:.3f}")
        print(f"categorical probe:  held-out accuracy {cat.score:.3f} (majority "
              f"{cat.baseline:.3f}); top units {[u.unit for u in cat.units[:2]]}, planted "
              f"{list(PLANTED)}")
        print(f"categorical probe with its control: {total:.1f} s (target <= 30 s); "
              f"{total / t_corr:.1f} x neurons --correlate, {t_full / t_num:.1f} x faster "
              f"than ridge on every token ({load()})")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()

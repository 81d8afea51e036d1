"""Benchmark of the trajectory view's projections on this machine: which t-SNE, and what a
map and a window cost.

On the states of an index (default: the parens demo's layers.0.c; `--index DIR --state
NAME` for another), sampled as the view samples them (`PROJECTION_SAMPLE` evenly spaced
tokens), it times, each repeated and the quietest run reported:

* PCA of the sample (the baseline: what the view did before, and still does for PCA);
* a UMAP map (umap-learn; the first fit also compiles UMAP's numba code, timed apart);
* a t-SNE map with openTSNE and with scikit-learn's TSNE (Barnes-Hut, PCA start), the
  candidates for t-SNE;
* placing a 400-token window into a fitted map (`FittedMap.place`).

Every row prints the load average. Usage::

    python benchmarks/projection.py
    python benchmarks/projection.py --index /path/to/index --state layers.1.h --sample 2000
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe import load, quietest  # noqa: E402

from lstmsearch.analysis.trajectories import (  # noqa: E402
    PROJECTION_SAMPLE,
    fit_map,
    fit_pca,
    sample_positions,
)
from lstmsearch.index import open_index  # noqa: E402


def sklearn_tsne(x: np.ndarray, seed: int = 0) -> np.ndarray:
    from sklearn.manifold import TSNE

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return TSNE(random_state=seed, init="pca", perplexity=30.0).fit_transform(x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=Path, help="index directory (default: parens demo)")
    parser.add_argument("--state", default="layers.0.c")
    parser.add_argument("--sample", type=int, default=PROJECTION_SAMPLE)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn's TSNE")
    args = parser.parse_args()
    if args.index is None:
        from lstmsearch.serve import demo_index

        args.index = demo_index("parens")
    with open_index(args.index) as index:
        store = index.store(args.state)
        positions = sample_positions(index.n_tokens, args.sample)
        x = store.gather(positions).T.astype(np.float32)
        window = store.block(slice(None), 1000, 1400).T.astype(np.float32)
    print(f"{args.state} of {args.index.name}: {len(x):,} sampled states x {x.shape[1]} units; "
          f"{os.cpu_count()} cores")
    t_pca, _ = quietest("PCA of the sample (baseline)", lambda: fit_pca(x), args.repeat)
    quietest("UMAP, first fit (compiles UMAP's numba code)", lambda: fit_map(x, "umap"), 1)
    t_umap, umap_map = quietest("UMAP map", lambda: fit_map(x, "umap"), args.repeat)
    t_open, open_map = quietest("t-SNE map, openTSNE", lambda: fit_map(x, "tsne"), args.repeat)
    t_sk = None
    if not args.no_sklearn:
        t_sk, _ = quietest("t-SNE, scikit-learn TSNE", lambda: sklearn_tsne(x), args.repeat)
    t_place, _ = quietest("place a 400-token window into the t-SNE map",
                          lambda: open_map.place(window), args.repeat)
    quietest("place a 400-token window into the UMAP map", lambda: umap_map.place(window),
             args.repeat)
    print()
    print(f"UMAP {t_umap / t_pca:.0f} x PCA; openTSNE {t_open / t_pca:.0f} x PCA"
          + ("" if t_sk is None else f"; scikit-learn's TSNE / openTSNE: {t_sk / t_open:.1f} x")
          + f"; a window {1000 * t_place:.0f} ms ({load()})")


if __name__ == "__main__":
    main()

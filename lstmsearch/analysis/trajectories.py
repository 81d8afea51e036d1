"""State-space trajectories: the hidden states of a document or window as a path in 2-D.

PCA is computed with numpy's SVD of the centred states; component signs are fixed so that
each component's largest loading is positive, which makes the picture reproducible. PCA may
be fitted on more states than it draws (e.g. a whole document or corpus) so that windows
share one set of axes.

t-SNE (openTSNE) and UMAP (umap-learn) are non-linear and slow to fit, so over an index they
are fitted once per index and state on an even sample of its tokens (`fitted_projection`,
kept in a per-process cache that every session of a server shares), and a window's states
are placed into that map by their nearest fitted states (`FittedMap.place`). Windows then
share one map, and a window costs a nearest-neighbour search, not a fit. openTSNE rather
than scikit-learn's TSNE: 8.6x faster on 2 cores (benchmarks/projection.py). Both are
seeded: the same seed gives the same map.

`index_trajectory` reads the stored states of a span of an index (no model needed).
"""

from __future__ import annotations

import importlib.util
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from lstmsearch.index import Index

METHODS = ("pca", "umap", "tsne")
FITS = ("span", "document")
"""What PCA axes are fitted on over an index: the span drawn, or its whole documents."""
MAX_FIT = 5000
"""At most this many states (evenly thinned) fit the axes of a document: the axes of a
thinned long document are much the same, and the SVD of 12,000 states of 256 units takes
0.4 s against 0.1 s for 4,000."""
PROJECTION_SAMPLE = 3000
"""Tokens of an index (evenly spaced) that a t-SNE or UMAP map is fitted on."""
PROJECTIONS_KEPT = 16
"""Fitted maps kept per process (the latest used)."""


@dataclass(frozen=True)
class PCA:
    """A fitted PCA: `components` (n, D) orthonormal rows, `mean` (D,), the variance along
    each component and its share of the total (`explained_variance_ratio`)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance: np.ndarray
    explained_variance_ratio: np.ndarray

    def transform(self, x: np.ndarray) -> np.ndarray:
        """Coordinates (T, n) of states x (T, D) on the components."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"states must be (T, {self.mean.shape[0]}), got {x.shape}")
        return (x - self.mean) @ self.components.T


@dataclass(frozen=True)
class Trajectory:
    """A path through state space, one point per token, in token order.

    `points` (T, n_components); `tokens` the token texts; `values` an optional annotation
    per token (e.g. depth) to colour by; `positions` the tokens' positions (global, or in
    the document). `explained_variance_ratio` is set for PCA only.
    """

    name: str
    method: str
    positions: np.ndarray
    tokens: tuple[str, ...]
    points: np.ndarray
    values: np.ndarray | None
    explained_variance_ratio: np.ndarray | None

    @property
    def explained(self) -> float | None:
        """Share of the variance the drawn components explain (PCA only)."""
        r = self.explained_variance_ratio
        return None if r is None else float(r.sum())


def available_methods() -> tuple[str, ...]:
    """The projection methods usable here: PCA always, UMAP and t-SNE when their packages
    are installed (the set-up installs both)."""
    have = ["pca"]
    if importlib.util.find_spec("umap") is not None:
        have.append("umap")
    if importlib.util.find_spec("openTSNE") is not None:
        have.append("tsne")
    return tuple(have)


def fit_pca(x: np.ndarray, n_components: int = 2) -> PCA:
    """PCA of the rows of x (T, D) by SVD; at most min(T, D) components."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"need states as a (tokens, units) array with tokens, got shape {x.shape}")
    if n_components < 1:
        raise ValueError(f"n_components must be >= 1, got {n_components}")
    n = min(n_components, *x.shape)
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:n]
    # the sign of a singular vector is arbitrary: make each one's largest loading positive
    flip = np.sign(comps[np.arange(n), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(flip == 0, 1.0, flip)[:, None]
    var = s**2 / max(x.shape[0] - 1, 1)
    total = var.sum()
    ratio = var[:n] / total if total > 0 else np.zeros(n)
    return PCA(mean, comps, var[:n], ratio)


def project(
    x: np.ndarray, method: str = "pca", n_components: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Points (T, n_components) for states x, and the explained variance ratio (PCA only)."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: choose one of {', '.join(METHODS)}")
    check_method(method)
    x = np.asarray(x, dtype=np.float64)
    if method == "pca":
        pca = fit_pca(x, n_components)
        return pca.transform(x), pca.explained_variance_ratio
    return np.asarray(fit_map(x, method, n_components, seed).embedding), None


def check_method(method: str) -> None:
    """A one-line error for a method that is unknown or whose package is missing."""
    if method not in METHODS:
        raise ValueError(f"unknown projection {method!r}: choose one of {', '.join(METHODS)}")
    if method not in available_methods():
        package = "umap-learn" if method == "umap" else "openTSNE"
        raise ValueError(f"projection {method!r} needs the package {package}, not installed "
                         "(bash scripts/setup.sh installs it)")


PLACE_NEIGHBOURS = 10
"""A new state is placed at the inverse-distance weighted mean of the points of its nearest
this many fitted states."""


@dataclass(frozen=True)
class FittedMap:
    """A t-SNE or UMAP map fitted on `states` (N, D): their points `embedding` (N, n).

    New states are placed by their nearest fitted states (`place`), the way openTSNE starts
    new points before optimising them: 0.2-0.4 s for 400 states on 2 busy cores, where the
    packages' own transforms took 3 s (UMAP) and 10 s (openTSNE); a fitted state is placed
    exactly on its own point.
    """

    embedding: np.ndarray
    states: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "states", np.asarray(self.states, dtype=np.float64))
        object.__setattr__(self, "embedding", np.asarray(self.embedding, dtype=np.float64))

    def place(self, x: np.ndarray, k: int = PLACE_NEIGHBOURS) -> np.ndarray:
        """Points (T, n) of states x (T, D) in the map (distances in float64: a fitted
        state is recognised as itself, and the weights are exact)."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.states.shape[1]:
            raise ValueError(f"states must be (T, {self.states.shape[1]}), got {x.shape}")
        k = min(k, len(self.states))
        out = np.empty((len(x), self.embedding.shape[1]))
        norms = np.einsum("ij,ij->i", self.states, self.states)
        for a in range(0, len(x), 1024):
            block = x[a : a + 1024]
            d2 = (np.einsum("ij,ij->i", block, block)[:, None] + norms[None, :]
                  - 2.0 * block @ self.states.T)
            near = np.argpartition(d2, k - 1, axis=1)[:, :k]
            d = np.sqrt(np.maximum(np.take_along_axis(d2, near, axis=1), 0.0))
            w = 1.0 / np.maximum(d, 1e-12)
            exact = d <= 1e-6 * (1.0 + np.sqrt(norms[near]))  # a fitted state itself
            w = np.where(exact.any(axis=1, keepdims=True), exact.astype(np.float64), w)
            out[a : a + len(block)] = np.einsum("tk,tkn->tn", w, self.embedding[near]) / w.sum(
                axis=1, keepdims=True)
        return out


def fit_map(x: np.ndarray, method: str, n_components: int = 2, seed: int = 0) -> FittedMap:
    """A seeded t-SNE (openTSNE) or UMAP map of the rows of x; perplexity and neighbours
    shrink for a handful of rows."""
    import warnings

    x = np.asarray(x, dtype=np.float32)
    if len(x) < 4:
        raise ValueError(f"{method} needs at least 4 states to fit a map, got {len(x)}")
    with warnings.catch_warnings():  # e.g. numba's and UMAP's notes on threads and seeds
        warnings.simplefilter("ignore")
        if method == "umap":
            import umap

            reducer = umap.UMAP(n_components=n_components, random_state=seed,
                                n_neighbors=int(min(15, len(x) - 1)), n_jobs=1)
            embedding = reducer.fit_transform(x)
        else:
            from openTSNE import TSNE

            perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
            embedding = TSNE(n_components=n_components, perplexity=perplexity,
                             random_state=seed, n_jobs=1, verbose=False).fit(x)
    return FittedMap(embedding, x)


@dataclass(frozen=True)
class Projection:
    """A t-SNE or UMAP map of the index's `state`, fitted once on `positions` (an even
    sample of its tokens) with `seed`, in `seconds`; `map` places any states into it."""

    state: str
    method: str
    seed: int
    positions: np.ndarray
    seconds: float
    map: FittedMap = field(repr=False)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.map.place(x)


class ProjectionCache:
    """Fitted maps by (index directory, manifest version, state, method, seed, sample
    size): the first caller fits, callers asking for the same map meanwhile wait for it,
    the latest `PROJECTIONS_KEPT` are kept."""

    def __init__(self, kept: int = PROJECTIONS_KEPT) -> None:
        self.kept = kept
        self._maps: OrderedDict[tuple, Projection] = OrderedDict()
        self._fitting: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()
        self.fits = 0  # maps fitted so far (the tests read it)

    def get(self, key: tuple, fit: Any) -> Projection:
        """The map of `key`, from the cache or `fit()` (once, whoever asks)."""
        with self._lock:
            if key in self._maps:
                self._maps.move_to_end(key)
                return self._maps[key]
            lock = self._fitting.setdefault(key, threading.Lock())
        with lock:
            with self._lock:
                if key in self._maps:
                    return self._maps[key]
            projection = fit()
            with self._lock:
                self.fits += 1
                self._maps[key] = projection
                while len(self._maps) > self.kept:
                    self._maps.popitem(last=False)
                self._fitting.pop(key, None)
            return projection

    def clear(self) -> None:
        with self._lock:
            self._maps.clear()


PROJECTIONS = ProjectionCache()


def sample_positions(n_tokens: int, sample: int) -> np.ndarray:
    """At most `sample` evenly spaced token positions of [0, n_tokens)."""
    if n_tokens <= sample:
        return np.arange(n_tokens, dtype=np.int64)
    return np.unique(np.linspace(0, n_tokens - 1, sample).round().astype(np.int64))


def fitted_projection(index: Index, state: str, method: str, *, seed: int = 0,
                      sample: int = PROJECTION_SAMPLE, n_components: int = 2,
                      cache: ProjectionCache | None = None) -> Projection:
    """The t-SNE or UMAP map of `state` over `index`, fitted on `sample` evenly spaced
    tokens once per process (see `ProjectionCache`) and reused for every window."""
    check_method(method)
    if method == "pca":
        raise ValueError("PCA is fitted on the states drawn or their documents, not cached")
    if sample < 4:
        raise ValueError(f"the sample must hold at least 4 tokens, got {sample}")
    store = index.store(state)
    key = (str(index.path.resolve()), getattr(index, "manifest_version", 0), store.name,
           method, int(seed), int(sample), int(n_components))

    def fit() -> Projection:
        t0 = time.perf_counter()
        positions = sample_positions(index.n_tokens, sample)
        states = store.gather(positions).T
        fitted = fit_map(states, method, n_components, seed)
        return Projection(store.name, method, int(seed), positions, time.perf_counter() - t0,
                          fitted)

    return (PROJECTIONS if cache is None else cache).get(key, fit)


def trajectory(
    states: np.ndarray,
    tokens: Sequence[str],
    *,
    name: str = "",
    values: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    method: str = "pca",
    n_components: int = 2,
    fit_states: np.ndarray | None = None,
    seed: int = 0,
) -> Trajectory:
    """The path of `states` (T, D) in 2-D (or `n_components`-D), one point per token.

    With `fit_states`, PCA axes are fitted on those states and `states` projected onto
    them (the explained variance then refers to `fit_states`).
    """
    states = np.asarray(states, dtype=np.float64)
    if states.ndim != 2 or len(tokens) != states.shape[0]:
        raise ValueError(f"states {states.shape} and {len(tokens)} tokens do not line up")
    if values is not None:
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (states.shape[0],):
            raise ValueError(
                f"values must have one value per token ({states.shape[0]}), got {values.shape}"
            )
    if fit_states is not None:
        if method != "pca":
            raise ValueError(f"fit_states works with PCA only, not {method!r}")
        pca = fit_pca(fit_states, n_components)
        points, ratio = pca.transform(states), pca.explained_variance_ratio
    else:
        points, ratio = project(states, method, n_components, seed)
    positions = np.arange(states.shape[0]) if positions is None else np.asarray(positions)
    return Trajectory(name, method, positions, tuple(tokens), points, values, ratio)


def index_trajectory(
    index: Index,
    state: str,
    start: int,
    end: int,
    *,
    track: str | np.ndarray | None = None,
    method: str = "pca",
    fit: str = "span",
    n_components: int = 2,
    max_fit: int = MAX_FIT,
    seed: int = 0,
) -> Trajectory:
    """The path of the stored states `state` (e.g. "layers.0.c") over the index's tokens
    [start, end), with global positions.

    `track` gives the points' values: an annotation track's name, or its values for every
    token of the index (as `Index.track` returns them, e.g. read once and kept).
    `fit="span"` fits PCA on the span; `fit="document"` fits PCA axes on every token of the
    documents the span touches (thinned evenly to at most `max_fit`), so that the windows of
    one document share axes. t-SNE and UMAP place the span into the index's map of the state
    (`fitted_projection`), whatever `fit` says.
    """
    if fit not in FITS:
        raise ValueError(f"unknown fit {fit!r}: choose one of {', '.join(FITS)}")
    store = index.store(state)
    start, end = store.check_span(start, end)
    if start == end:
        raise ValueError(f"token span [{start}, {end}) is empty: nothing to draw")
    states = store.block(slice(None), start, end).T
    values = None
    if track is not None:
        values = index.track(track) if isinstance(track, str) else np.asarray(track)
        if values.shape != (index.n_tokens,):
            raise ValueError(
                f"track values must have one value per token of the index ({index.n_tokens}), "
                f"got shape {values.shape}"
            )
        values = values[start:end]
    if method != "pca":
        projection = fitted_projection(index, state, method, seed=seed,
                                       n_components=n_components)
        return Trajectory(state, method, np.arange(start, end),
                          tuple(index.tokens(start, end).text), projection.transform(states),
                          values, None)
    fit_states = None
    if fit == "document":
        if max_fit < 1:
            raise ValueError(f"max_fit must be >= 1, got {max_fit}")
        first = int(index.doc_starts[index.doc_of(start)])
        last = int(index.doc_starts[index.doc_of(end - 1) + 1])
        step = -(-(last - first) // max_fit)
        fit_states = store.columns[:, first:last:step].T
    return trajectory(
        states, index.tokens(start, end).text, name=state, values=values,
        positions=np.arange(start, end), method=method, n_components=n_components,
        fit_states=fit_states, seed=seed,
    )

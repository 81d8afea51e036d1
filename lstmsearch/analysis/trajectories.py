"""State-space trajectories: the hidden states of a document or window as a path in 2-D.

PCA is computed with numpy's SVD of the centred states; component signs are fixed so that
each component's largest loading is positive, which makes the picture reproducible. UMAP
(`umap-learn`) and t-SNE (`scikit-learn`) are used only when such a package is importable;
`available_methods()` says which. PCA may be fitted on more states than it draws (e.g. a
whole document or corpus) so that windows share one set of axes.

`index_trajectory` reads the stored states of a span of an index (no model needed).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

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
    """The projection methods usable here: PCA always, UMAP/t-SNE when installed."""
    have = ["pca"]
    if importlib.util.find_spec("umap") is not None:
        have.append("umap")
    if importlib.util.find_spec("sklearn") is not None:
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
    if method not in available_methods():
        package = "umap-learn" if method == "umap" else "scikit-learn"
        raise ValueError(
            f"projection {method!r} needs the optional package {package}, not installed"
        )
    x = np.asarray(x, dtype=np.float64)
    if method == "pca":
        pca = fit_pca(x, n_components)
        return pca.transform(x), pca.explained_variance_ratio
    if method == "umap":
        import umap

        reducer = umap.UMAP(n_components=n_components, random_state=seed)
        return np.asarray(reducer.fit_transform(x)), None
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (len(x) - 1) / 3)))
    tsne = TSNE(n_components=n_components, random_state=seed, perplexity=perplexity, init="pca")
    return np.asarray(tsne.fit_transform(x)), None


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
    `fit="span"` fits the projection on the span; `fit="document"` fits PCA axes on every
    token of the documents the span touches (thinned evenly to at most `max_fit`), so that
    the windows of one document share axes.
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

"""PCA trajectories: states on a known plane are recovered exactly; over an index, the stored
states of a span; on the shipped parens model, the first component follows nesting depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lstmsearch.analysis.trajectories import available_methods, fit_pca, project, trajectory


def plane_states(seed: int = 0, dim: int = 16, steps: int = 60):
    """A spiral drawn on a random 2-D plane in `dim` dimensions, offset from the origin."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.normal(size=(dim, 2)))  # orthonormal columns
    t = np.linspace(0, 4 * np.pi, steps)
    coords = np.stack([t * np.cos(t), 0.5 * t * np.sin(t)], axis=1)
    return coords @ basis.T + rng.normal(size=dim), coords, basis


def procrustes_residual(a: np.ndarray, b: np.ndarray) -> float:
    """Smallest ||a R - b|| over orthogonal R (rotation or reflection), both centred."""
    a, b = a - a.mean(0), b - b.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return float(np.linalg.norm(a @ (u @ vt) - b))


def test_pca_of_a_plane_explains_everything_and_recovers_the_path():
    states, coords, basis = plane_states()
    pca = fit_pca(states, 2)
    assert pca.explained_variance_ratio.sum() == pytest.approx(1.0, abs=1e-10)
    # the components span the plane
    np.testing.assert_allclose(np.abs(np.linalg.svd(pca.components @ basis)[1]), [1, 1], atol=1e-10)
    assert procrustes_residual(pca.transform(states), coords) < 1e-8
    # a third component finds no variance
    assert fit_pca(states, 3).explained_variance_ratio[2] < 1e-20


def test_component_signs_are_fixed_so_results_repeat():
    states, _, _ = plane_states(seed=3)
    a, b = fit_pca(states), fit_pca(states[::-1].copy())
    np.testing.assert_allclose(a.components, b.components, atol=1e-10)
    for comp in a.components:
        assert comp[np.abs(comp).argmax()] > 0


def test_trajectory_carries_tokens_values_and_positions():
    states, coords, _ = plane_states(steps=10)
    tokens = [str(i) for i in range(10)]
    traj = trajectory(states, tokens, name="layers.0.h", values=np.arange(10.0), positions=np.arange(100, 110))
    assert traj.points.shape == (10, 2) and traj.tokens == tuple(tokens)
    assert traj.explained == pytest.approx(1.0)
    assert traj.positions[0] == 100 and traj.values[3] == 3.0
    # axes fitted on other states: the window is projected onto them
    more, _, _ = plane_states(steps=50)
    fitted = trajectory(states[:4], tokens[:4], fit_states=more)
    np.testing.assert_allclose(fitted.points, fit_pca(more).transform(states[:4]))


def test_bad_input_is_named():
    states, _, _ = plane_states(steps=5)
    with pytest.raises(ValueError, match="do not line up"):
        trajectory(states, ["a"] * 4)
    with pytest.raises(ValueError, match="'spectral'"):
        project(states, "spectral")
    assert "pca" in available_methods()


# --- over an index --------------------------------------------------------------------------

PARENS = Path(__file__).resolve().parents[1] / "data" / "models" / "parens-lstm.pt"


def test_index_trajectory_is_the_trajectory_of_the_stored_states(tiny_index):
    """Over an index: the stored states of the span, its tokens and track values, global
    positions; axes fitted on the span or on the documents it touches."""
    from lstmsearch.analysis.trajectories import index_trajectory

    state = "layers.1.c"
    starts = tiny_index.doc_starts
    start, end = int(starts[2]) + 5, int(starts[3]) + 9  # across a document boundary
    stored = np.asarray(tiny_index.states(state)[start:end], dtype=np.float64)
    tokens = tiny_index.tokens(start, end).text
    depth = tiny_index.track("depth")
    traj = index_trajectory(tiny_index, state, start, end, track="depth")
    expected = trajectory(stored, tokens, values=depth[start:end])
    np.testing.assert_allclose(traj.points, expected.points)
    np.testing.assert_allclose(traj.explained_variance_ratio, expected.explained_variance_ratio)
    np.testing.assert_array_equal(traj.positions, np.arange(start, end))
    np.testing.assert_array_equal(traj.values, depth[start:end])
    assert traj.tokens == tokens and traj.name == state and traj.method == "pca"
    # track values given as an array (read once) are the same as the track's name
    same = index_trajectory(tiny_index, state, start, end, track=depth)
    np.testing.assert_array_equal(same.values, traj.values)
    # axes of the documents the span touches (documents 2 and 3)
    docs = np.asarray(tiny_index.states(state)[int(starts[2]) : int(starts[4])], dtype=np.float64)
    fitted = index_trajectory(tiny_index, state, start, end, fit="document")
    np.testing.assert_allclose(fitted.points, fit_pca(docs).transform(stored))
    assert fitted.values is None
    # thinned to at most max_fit states: every other one here
    n_docs = len(docs)
    thin = index_trajectory(tiny_index, state, start, end, fit="document",
                            max_fit=(n_docs + 1) // 2)
    np.testing.assert_allclose(thin.points, fit_pca(docs[::2]).transform(stored))


def test_index_trajectory_names_bad_input(tiny_index):
    from lstmsearch.analysis.trajectories import index_trajectory

    n = tiny_index.n_tokens
    with pytest.raises(ValueError, match="'corpus'"):
        index_trajectory(tiny_index, "layers.0.h", 0, 10, fit="corpus")
    with pytest.raises(ValueError, match="empty"):
        index_trajectory(tiny_index, "layers.0.h", 4, 4)
    with pytest.raises(ValueError, match=rf"\[0, {n + 1}\)"):
        index_trajectory(tiny_index, "layers.0.h", 0, n + 1)
    with pytest.raises(ValueError, match="layers.5.h"):
        index_trajectory(tiny_index, "layers.5.h", 0, 10)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        index_trajectory(tiny_index, "layers.0.h", 0, 10, track=np.zeros(3))
    with pytest.raises(ValueError, match="no track 'colour'"):
        index_trajectory(tiny_index, "layers.0.h", 0, 10, track="colour")


@pytest.mark.skipif(not PARENS.exists(), reason="shipped parens model not present")
def test_parens_first_component_follows_depth(tmp_path):
    """The shipped parens model's cell states spread mostly along nesting depth: the first
    principal component of layers.0.c follows the depth track, over the whole index
    (measured r = -0.80; -0.62 to -0.87 over six corpus seeds) and within documents
    (median |r| 0.83 over twelve documents; 0.68 to 0.91 over six seeds)."""
    from indexer.build import build_index
    from lstmsearch.analysis.trajectories import index_trajectory
    from lstmsearch.corpus import load_corpus
    from lstmsearch.index import open_index

    out = tmp_path / "parens"
    build_index(load_corpus("parens", limit=12), PARENS, out, progress=False)
    with open_index(out) as index:
        depth = index.track("depth")
        whole = index_trajectory(index, "layers.0.c", 0, index.n_tokens, track="depth")
        assert abs(np.corrcoef(whole.points[:, 0], depth)[0, 1]) > 0.7
        assert whole.explained_variance_ratio[0] > 0.3
        per_doc = []
        for doc in range(index.n_docs):
            a, b = int(index.doc_starts[doc]), int(index.doc_starts[doc + 1])
            traj = index_trajectory(index, "layers.0.c", a, b)
            per_doc.append(abs(np.corrcoef(traj.points[:, 0], depth[a:b])[0, 1]))
        assert np.median(per_doc) > 0.7
        assert np.mean(np.array(per_doc) > 0.5) >= 0.75


# --- t-SNE and UMAP maps, fitted once per index and state ----------------------------------


@pytest.mark.parametrize("method", ["tsne", "umap"])
def test_maps_are_installed_and_seeded(method):
    from lstmsearch.analysis.trajectories import fit_map

    assert method in available_methods()
    rng = np.random.default_rng(0)
    states = np.concatenate([rng.normal(0, 0.1, (60, 8)), rng.normal(3, 0.1, (60, 8))])
    a, b = fit_map(states, method, seed=5), fit_map(states, method, seed=5)
    np.testing.assert_array_equal(a.embedding, b.embedding)
    assert a.embedding.shape == (120, 2) and np.isfinite(a.embedding).all()
    # the two clusters stay apart: every point is nearer its own cluster's centre
    centres = a.embedding[:60].mean(0), a.embedding[60:].mean(0)
    own = np.linalg.norm(a.embedding[:60] - centres[0], axis=1)
    other = np.linalg.norm(a.embedding[:60] - centres[1], axis=1)
    assert (own < other).all()
    np.testing.assert_array_equal(a.place(states[:5]), b.place(states[:5]))
    with pytest.raises(ValueError, match="at least 4 states"):
        fit_map(states[:3], method)


def test_index_projection_is_fitted_once_and_reused(tiny_index):
    from lstmsearch.analysis.trajectories import (
        PROJECTIONS,
        ProjectionCache,
        fitted_projection,
        index_trajectory,
    )

    cache = ProjectionCache()
    first = fitted_projection(tiny_index, "layers.1.h", "tsne", seed=1, sample=300, cache=cache)
    again = fitted_projection(tiny_index, "layers.1.h", "tsne", seed=1, sample=300, cache=cache)
    assert again is first and cache.fits == 1
    assert len(first.positions) == 300 and first.positions[0] == 0
    assert first.positions[-1] == tiny_index.n_tokens - 1
    other = fitted_projection(tiny_index, "layers.1.h", "tsne", seed=2, sample=300, cache=cache)
    assert other is not first and cache.fits == 2
    fresh = fitted_projection(tiny_index, "layers.1.h", "tsne", seed=1, sample=300,
                              cache=ProjectionCache())
    np.testing.assert_array_equal(fresh.map.embedding, first.map.embedding)

    fits = PROJECTIONS.fits
    a = index_trajectory(tiny_index, "layers.1.h", 10, 40, method="tsne", track="depth")
    b = index_trajectory(tiny_index, "layers.1.h", 200, 230, method="tsne")
    assert PROJECTIONS.fits == fits + 1  # one map for both windows
    assert a.points.shape == (30, 2) and a.method == "tsne" and a.values is not None
    again = index_trajectory(tiny_index, "layers.1.h", 10, 40, method="tsne")
    np.testing.assert_array_equal(again.points, a.points)
    assert not np.array_equal(a.points, b.points)
    with pytest.raises(ValueError, match="not cached"):
        fitted_projection(tiny_index, "layers.1.h", "pca")
    with pytest.raises(ValueError, match="'spectral'"):
        fitted_projection(tiny_index, "layers.1.h", "spectral")


def test_placing_states_in_a_map_against_a_direct_computation():
    from lstmsearch.analysis.trajectories import FittedMap

    rng = np.random.default_rng(7)
    fitted = rng.normal(size=(50, 6)).astype(np.float32)
    embedding = rng.normal(size=(50, 2))
    m = FittedMap(embedding, fitted)
    new = rng.normal(size=(30, 6)).astype(np.float32)
    got = m.place(new, k=4)
    for t, x in enumerate(new):
        d = np.linalg.norm(fitted.astype(np.float64) - x, axis=1)
        near = np.argsort(d)[:4]
        w = 1 / d[near]
        np.testing.assert_allclose(got[t], (w[:, None] * embedding[near]).sum(0) / w.sum(),
                                   rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(m.place(fitted[[3, 17]]), embedding[[3, 17]])
    with pytest.raises(ValueError, match=r"\(T, 6\)"):
        m.place(np.zeros((2, 5)))

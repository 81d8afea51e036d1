"""PCA trajectories: states on a known plane are recovered exactly."""

from __future__ import annotations

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
    if "umap" not in available_methods():
        with pytest.raises(ValueError, match="umap-learn"):
            project(states, "umap")
    assert "pca" in available_methods()

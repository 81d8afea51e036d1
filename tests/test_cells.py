"""The pointwise cell updates: numba loop and torch ops against float64 formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmsearch.cells import BACKENDS, gru_update, lstm_update, numba_kernels
from lstmsearch.cells_numba import TANH_LIMIT, lambert_tanh
from lstmsearch.store import FLOAT16_MAX


def sig(x):
    return 1.0 / (1.0 + np.exp(-x))


def lstm_want(pre: np.ndarray, c: np.ndarray):
    """The LSTMCell update in float64."""
    pre, c = pre.astype(np.float64), c.astype(np.float64)
    hidden = c.shape[1]
    i, f = sig(pre[:, :hidden]), sig(pre[:, hidden : 2 * hidden])
    g, o = np.tanh(pre[:, 2 * hidden : 3 * hidden]), sig(pre[:, 3 * hidden :])
    c_new = f * c + i * g
    return c_new, o * np.tanh(c_new), np.stack([i, f, g, o])


def gru_want(gi: np.ndarray, gh: np.ndarray, h: np.ndarray):
    """The GRUCell update in float64."""
    gi, gh, h = gi.astype(np.float64), gh.astype(np.float64), h.astype(np.float64)
    hidden = h.shape[1]
    r = sig(gi[:, :hidden] + gh[:, :hidden])
    z = sig(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = np.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    return (1 - z) * n + z * h, np.stack([r, z, n])


def test_numba_is_there():
    """The dependency is installed, so the fast update is what a build uses on a CPU."""
    assert numba_kernels() is not None


def test_lambert_coefficients_are_the_continued_fraction():
    # depth 1: tanh x ~ x / (1 + x^2 / 3) = 3x / (3 + x^2)
    assert lambert_tanh(1) == ((1.0,), (1.0, 1 / 3))
    # depth 2: x (15 + x^2) / (15 + 6 x^2)
    p, q = lambert_tanh(2)
    assert p == pytest.approx((1.0, 1 / 15)) and q == pytest.approx((1.0, 6 / 15))


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_update_on_a_dense_grid(backend):
    """Every float32 pre-activation in [-30, 30] (and beyond the clamp) to float32 tolerance."""
    hidden = 4001  # odd: vector loops and their remainder both run
    x = np.linspace(-30, 30, 4 * hidden, dtype=np.float32).reshape(1, 4 * hidden)
    x = np.concatenate([x, np.random.default_rng(0).normal(0, 6, (2, 4 * hidden))]).astype(np.float32)
    c0 = np.random.default_rng(1).normal(0, 3, (3, hidden)).astype(np.float32)
    pre, c = torch.from_numpy(x), torch.from_numpy(c0.copy())
    c_out, h_out = torch.empty_like(c), torch.empty_like(c)
    gates = torch.empty(4, 3, hidden)
    lstm_update(backend, pre, c, c_out, h_out, gates)
    c_want, h_want, gates_want = lstm_want(x, c0)
    np.testing.assert_allclose(c.numpy(), c_want, atol=2e-6, rtol=0)
    np.testing.assert_allclose(c_out.numpy(), c_want, atol=2e-6, rtol=0)
    np.testing.assert_allclose(h_out.numpy(), h_want, atol=1e-6, rtol=0)
    np.testing.assert_allclose(gates.numpy(), gates_want, atol=5e-7, rtol=0)
    assert (np.abs(h_out.numpy()) <= 1).all() and (gates.numpy()[[0, 1, 3]] >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_update_literal_values(backend):
    """Zero pre-activations: every gate 0.5 and g = 0, so c halves and h = tanh(c) / 2."""
    pre = torch.zeros(2, 12)
    c = torch.tensor([[2.0, -1.0, 0.0], [8.0, 0.5, -40.0]])
    c_out, h_out = torch.empty_like(c), torch.empty_like(c)
    lstm_update(backend, pre, c, c_out, h_out)
    want_c = np.array([[1.0, -0.5, 0.0], [4.0, 0.25, -20.0]])
    np.testing.assert_allclose(c.numpy(), want_c, atol=1e-7)
    np.testing.assert_allclose(h_out.numpy(), np.tanh(want_c) / 2, atol=3e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_stored_cell_is_clipped_but_the_running_one_is_not(backend):
    """c beyond float16's range is stored as +-65504; the recurrence keeps the real value."""
    pre = torch.full((1, 8), 40.0)  # i = f = o = 1, g = 1: c grows by one
    c = torch.tensor([[70_000.0, -90_000.0]])
    c_out, h_out = torch.empty_like(c), torch.empty_like(c)
    lstm_update(backend, pre, c, c_out, h_out)
    assert c.tolist() == [[70_001.0, -89_999.0]]
    assert c_out.tolist() == [[FLOAT16_MAX, -FLOAT16_MAX]]
    assert h_out.tolist() == [[1.0, -1.0]]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gru_update_on_random_values(backend):
    rng = np.random.default_rng(2)
    hidden = 333
    gi = rng.normal(0, 5, (5, 3 * hidden)).astype(np.float32)
    gh = rng.normal(0, 5, (5, 3 * hidden)).astype(np.float32)
    h = np.tanh(rng.normal(0, 1, (5, hidden))).astype(np.float32)
    h_out = torch.empty(5, hidden)
    gates = torch.empty(3, 5, hidden)
    gru_update(backend, torch.from_numpy(gi), torch.from_numpy(gh), torch.from_numpy(h), h_out, gates)
    h_want, gates_want = gru_want(gi, gh, h)
    # n's argument gi + r * gh is itself rounded to float32 (values up to ~30 here)
    np.testing.assert_allclose(h_out.numpy(), h_want, atol=2e-6, rtol=0)
    np.testing.assert_allclose(gates.numpy(), gates_want, atol=2e-6, rtol=0)


def test_tanh_saturates_at_the_limit():
    """Beyond |x| = TANH_LIMIT the update sees tanh = +-1 to float32 precision."""
    pre = torch.zeros(1, 8)
    pre[0, 4:6] = torch.tensor([TANH_LIMIT * 3, -1e30])  # g of the two units
    pre[0, 0:2] = 1e30  # i = 1
    c = torch.zeros(1, 2)
    lstm_update("numba", pre, c, torch.empty_like(c), torch.empty_like(c))
    # f = 0.5 and c0 = 0: c = i * g
    np.testing.assert_allclose(c.numpy(), [[1.0, -1.0]], atol=1e-7)

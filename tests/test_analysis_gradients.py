"""Gradient flow through time: analytic values for a linear RNN, finite differences for an
LSTM language model, the same numbers over an index's documents, and a sanity check on the
shipped parens model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lstmsearch.analysis import index_documents
from lstmsearch.analysis.gradients import (
    gradient_flow,
    gradient_norms,
    growth_factor,
    index_gradient_flow,
    lag_profile,
    sample_documents,
    sample_positions,
)
from lstmsearch.models import LanguageModel, ModelConfig

PARENS = Path(__file__).resolve().parents[1] / "data" / "models" / "parens-lstm.pt"


def linear_rnn(w: torch.Tensor, u: torch.Tensor):
    """h_t = W h_{t-1} + U x_t, loss = sum of h_T (per row)."""

    def step(x, states):
        return {"layers.0.h": states["layers.0.h"] @ w.T + x @ u.T}

    def loss(states):
        return states["layers.0.h"].sum(-1)

    return step, loss


@pytest.mark.parametrize("a", [0.5, 0.9, 1.0, 1.5])
def test_linear_rnn_scaled_identity_gives_a_to_the_k(a):
    hidden, steps = 3, 12
    step, loss_sum = linear_rnn(a * torch.eye(hidden, dtype=torch.float64), torch.ones(hidden, 2, dtype=torch.float64))
    unit = torch.ones(hidden, dtype=torch.float64) / hidden**0.5  # a unit-norm read-out

    def loss(states):
        return states["layers.0.h"] @ unit

    x = torch.randn(4, steps, 2, dtype=torch.float64)
    h0 = {"layers.0.h": torch.randn(4, hidden, dtype=torch.float64)}
    norms = gradient_norms(step, loss, x, h0)["layers.0.h"]
    expected = a ** np.arange(steps)
    np.testing.assert_allclose(norms, np.broadcast_to(expected, norms.shape), rtol=1e-12)
    profile = lag_profile("layers.0.h", norms)
    assert profile.factor == pytest.approx(a, rel=1e-9)
    np.testing.assert_allclose(profile.median, expected, rtol=1e-12)
    assert loss_sum is not None


def test_linear_rnn_general_matrix_matches_powers_of_w_transpose():
    torch.manual_seed(0)
    hidden, steps = 4, 8
    w = torch.randn(hidden, hidden, dtype=torch.float64) * 0.6
    step, loss = linear_rnn(w, torch.randn(hidden, 3, dtype=torch.float64))
    x = torch.randn(2, steps, 3, dtype=torch.float64)
    norms = gradient_norms(step, loss, x, {"layers.0.h": torch.zeros(2, hidden, dtype=torch.float64)})
    ones = np.ones(hidden)
    expected = [np.linalg.norm(np.linalg.matrix_power(w.numpy().T, k) @ ones) for k in range(steps)]
    np.testing.assert_allclose(norms["layers.0.h"][0], expected, rtol=1e-10)
    np.testing.assert_allclose(norms["layers.0.h"][1], expected, rtol=1e-10)


def test_offsets_reset_the_state_and_hide_lags_before_the_start():
    step, loss = linear_rnn(2.0 * torch.eye(2, dtype=torch.float64), torch.eye(2, dtype=torch.float64))
    x = torch.randn(3, 6, 2, dtype=torch.float64)
    h0 = {"layers.0.h": torch.zeros(3, 2, dtype=torch.float64)}
    norms = gradient_norms(step, loss, x, h0, offsets=[0, 2, 5])["layers.0.h"]
    full = np.sqrt(2) * 2.0 ** np.arange(6)
    np.testing.assert_allclose(norms[0], full)
    np.testing.assert_allclose(norms[1, :4], full[:4])
    assert np.isnan(norms[1, 4:]).all()
    np.testing.assert_allclose(norms[2, :1], full[:1])
    assert np.isnan(norms[2, 1:]).all()
    with pytest.raises(ValueError, match="offsets"):
        gradient_norms(step, loss, x, h0, offsets=[0, 0, 6])


def tiny_lm(arch: str = "lstm", layers: int = 2, seed: int = 0) -> LanguageModel:
    torch.manual_seed(seed)
    model = LanguageModel(ModelConfig(arch=arch, vocab_size=7, embed_dim=3, hidden=4, layers=layers)).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    return model


def fd_reference(model: LanguageModel, ids: np.ndarray, t: int, k: int, layer: int, kind: str, eps: float = 1e-6):
    """||d loss_t / d state_{t-k}|| by central differences, unrolling nn.LSTMCell/GRUCell
    cells step by step and perturbing the state right after layer `layer` computes it at
    step t - k (before the next layer and the next step read it). Perturbing an LSTM's c
    also changes that step's h = o * tanh(c)."""
    cfg = model.config
    cells = []
    for rnn in model.forward_layers:
        cell = (torch.nn.LSTMCell if cfg.arch == "lstm" else torch.nn.GRUCell)(rnn.input_size, cfg.hidden).double()
        cell.load_state_dict({"weight_ih": rnn.weight_ih_l0, "weight_hh": rnn.weight_hh_l0,
                              "bias_ih": rnn.bias_ih_l0, "bias_hh": rnn.bias_hh_l0})
        cells.append(cell)

    def run(delta: torch.Tensor) -> float:
        h = [torch.zeros(1, cfg.hidden, dtype=torch.float64) for _ in cells]
        c = [torch.zeros(1, cfg.hidden, dtype=torch.float64) for _ in cells]
        with torch.no_grad():
            for s in range(t + 1):
                x = model.embed(torch.tensor([int(ids[s])]))
                for j, cell in enumerate(cells):
                    if cfg.arch == "lstm":
                        h_prev = h[j]
                        h[j], c[j] = cell(x, (h[j], c[j]))
                        if s == t - k and j == layer:
                            if kind == "c":
                                rnn = model.forward_layers[j]
                                hid = cfg.hidden
                                o = torch.sigmoid(x @ rnn.weight_ih_l0[3 * hid:].T + rnn.bias_ih_l0[3 * hid:]
                                                  + h_prev @ rnn.weight_hh_l0[3 * hid:].T + rnn.bias_hh_l0[3 * hid:])
                                c[j] = c[j] + delta
                                h[j] = o * torch.tanh(c[j])
                            else:
                                h[j] = h[j] + delta
                    else:
                        h[j] = cell(x, h[j])
                        if s == t - k and j == layer:
                            h[j] = h[j] + delta
                    x = h[j]
            logits = model.head(h[-1])
            return float(torch.nn.functional.cross_entropy(logits, torch.tensor([int(ids[t + 1])])))

    grad = np.zeros(cfg.hidden)
    for i in range(cfg.hidden):
        e = torch.zeros(1, cfg.hidden, dtype=torch.float64)
        e[0, i] = eps
        grad[i] = (run(e) - run(-e)) / (2 * eps)
    return float(np.linalg.norm(grad))


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_language_model_gradients_match_finite_differences(arch):
    model = tiny_lm(arch)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 7, size=12)
    t, max_lag = 9, 4  # the window starts inside the document: initial state from extraction
    flow = gradient_flow(model, [ids], max_lag=max_lag, positions=[(0, t)])
    kinds = ("h", "c") if arch == "lstm" else ("h",)
    for layer in range(2):
        for kind in kinds:
            name = f"layers.{layer}.{kind}"
            got = flow.norms[name][0]
            want = [fd_reference(model, ids, t, k, layer, kind) for k in range(max_lag + 1)]
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-8, err_msg=name)
    # the same-step path: layer 0's h at t reaches the loss through layer 1 at t
    assert flow.norms["layers.0.h"][0, 0] > 0


def test_positions_near_the_start_have_nan_lags_and_counts():
    model = tiny_lm()
    ids = np.arange(10) % 7
    flow = gradient_flow(model, [ids], max_lag=5, positions=[(0, 2), (0, 8)])
    n = flow.norms["layers.1.c"]
    assert np.isfinite(n[0, :3]).all() and np.isnan(n[0, 3:]).all()
    assert np.isfinite(n[1]).all()
    np.testing.assert_array_equal(flow.profile("layers.1.c").count, [2, 2, 2, 1, 1, 1])
    np.testing.assert_array_equal(flow.positions, [2, 8])
    with pytest.raises(ValueError, match="next token"):
        gradient_flow(model, [ids], max_lag=2, positions=[(0, 9)])
    with pytest.raises(ValueError, match="layers.5.h"):
        gradient_flow(model, [ids], names=["layers.5.h"])


def test_sample_positions_is_seeded_and_respects_min_step():
    a = sample_positions([5, 30, 40], 10, min_step=20, seed=3)
    b = sample_positions([5, 30, 40], 10, min_step=20, seed=3)
    np.testing.assert_array_equal(a[0], b[0])
    assert (a[1] >= 20).all() and set(a[0]) <= {1, 2}
    docs, steps = sample_positions([3], 10, min_step=20)  # falls back to any predicting step
    assert sorted(steps.tolist()) == [0, 1]


def test_growth_factor_of_a_geometric_series():
    assert growth_factor(0.8 ** np.arange(10)) == pytest.approx(0.8)
    assert np.isnan(growth_factor(np.array([1.0, np.nan, 0.0])))


@pytest.mark.skipif(not PARENS.exists(), reason="shipped parens model not present")
def test_parens_model_gradient_flow_is_finite_and_decays():
    from lstmsearch.analysis import tokenize_documents
    from lstmsearch.corpus import load_corpus
    from lstmsearch.models import load_model

    lm = load_model(PARENS)
    tok = tokenize_documents(lm.tokenizer, load_corpus("parens", limit=8).documents)
    flow = gradient_flow(lm.model, tok.ids, max_lag=30, n_positions=24)
    for profile in flow.profiles:
        med = profile.median
        assert np.isfinite(med).all(), profile.name
        assert med[30] < med[1], profile.name  # the gradient shrinks going back in time
        assert 0 < profile.factor < 1, profile.name
    assert [p.name for p in flow.profiles] == [
        f"layers.{layer}.{kind}" for layer in range(lm.config.layers) for kind in ("h", "c")
    ]
    # the cell state is the long-range path: its gradient fades more slowly than h's
    assert flow.profile("layers.0.c").factor >= flow.profile("layers.0.h").factor


# --- an index's documents --------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_lm(tiny_model_path):
    from lstmsearch.models import load_model

    return load_model(tiny_model_path).model.eval()


def assert_same_flow(got, want) -> None:
    """Equal norms and profiles, state by state."""
    assert list(got.norms) == list(want.norms)
    for name in want.norms:
        np.testing.assert_array_equal(got.norms[name], want.norms[name], err_msg=name)
    for a, b in zip(got.profiles, want.profiles, strict=True):
        assert a.name == b.name and a.factor == b.factor
        np.testing.assert_array_equal(a.quantiles, b.quantiles)
        np.testing.assert_array_equal(a.count, b.count)


def test_index_gradient_flow_equals_gradient_flow_on_the_documents_token_ids(tiny_index, index_lm):
    docs = [3, 7, 8]
    got = index_gradient_flow(tiny_index, index_lm, docs, max_lag=6, n_positions=12, seed=2)
    ids = [index_documents(tiny_index, [d]).ids[0] for d in docs]
    want = gradient_flow(index_lm, ids, max_lag=6, n_positions=12, seed=2)
    assert_same_flow(got, want)
    np.testing.assert_array_equal(got.steps, want.steps)
    # documents and positions are the index's
    np.testing.assert_array_equal(got.docs, np.asarray(docs)[want.docs])
    np.testing.assert_array_equal(got.positions, tiny_index.doc_starts[got.docs] + got.steps)
    assert set(got.docs.tolist()) <= set(docs)


def test_index_gradient_flow_samples_documents_and_reads_at_most_max_tokens(tiny_index, index_lm):
    picked = sample_documents(tiny_index, 5, min_tokens=30, seed=4)
    assert picked == sample_documents(tiny_index, 5, min_tokens=30, seed=4)
    assert len(picked) == 5 and picked == sorted(set(picked))
    lengths = np.diff(tiny_index.doc_starts)
    assert (lengths[picked] >= 30).all()
    assert sample_documents(tiny_index, 3, min_tokens=10**6) == sample_documents(
        tiny_index, 3, min_tokens=2)  # none that long: any document with a prediction
    got = index_gradient_flow(tiny_index, index_lm, max_lag=8, n_positions=10, n_docs=5, seed=4)
    assert set(got.docs.tolist()) <= set(sample_documents(tiny_index, 5, min_tokens=10, seed=4))
    short = index_gradient_flow(tiny_index, index_lm, picked, max_lag=3, n_positions=40,
                                max_tokens=12)
    assert (short.steps <= 10).all()  # a next token inside the first 12 tokens
    ids = [index_documents(tiny_index, [d]).ids[0][:12] for d in picked]
    assert_same_flow(short, gradient_flow(index_lm, ids, max_lag=3, n_positions=40))


def test_index_gradient_flow_names_bad_values(tiny_index, index_lm):
    with pytest.raises(ValueError, match=f"document {tiny_index.n_docs} out of range"):
        index_gradient_flow(tiny_index, index_lm, [0, tiny_index.n_docs])
    with pytest.raises(ValueError, match="got 0"):
        sample_documents(tiny_index, 0)
    with pytest.raises(ValueError, match="max_tokens must be >= 2, got 1"):
        index_gradient_flow(tiny_index, index_lm, [0], max_tokens=1)


@pytest.fixture(scope="module")
def parens_index(tmp_path_factory):
    from indexer.build import build_index
    from lstmsearch.corpus import load_corpus
    from lstmsearch.index import open_index

    out = tmp_path_factory.mktemp("parens-index") / "index"
    build_index(load_corpus("parens", limit=24, min_len=100, max_len=400, seed=3), PARENS, out,
                progress=False, faiss=False)
    with open_index(out) as index:
        yield index


@pytest.mark.skipif(not PARENS.exists(), reason="shipped parens model not present")
def test_parens_index_gradient_flow_cell_state_carries_the_gradient_furthest(parens_index):
    from lstmsearch.models import load_model

    model = load_model(PARENS).model.eval()
    k = 60
    flow = index_gradient_flow(parens_index, model, max_lag=k, n_positions=48, n_docs=12)
    h, c = flow.profile("layers.0.h"), flow.profile("layers.0.c")
    for p in (h, c):
        assert np.isfinite(p.quantiles).all() and (p.quantiles > 0).all(), p.name
        assert (p.count == len(flow.positions)).all()  # every position reaches back K steps
        assert 0.5 < p.factor < 1, p.name  # vanishing, not exploding
        assert p.median[k] < 1e-2 * p.median[1], p.name
    # h at t feeds the loss directly, so it starts higher; further back the cell state, the
    # long-range path, holds more of the gradient than h and keeps more of it over the lags
    assert h.median[0] > c.median[0]
    assert (c.median[2:] > h.median[2:]).mean() > 0.8
    assert c.median[k] / c.median[1] > h.median[k] / h.median[1]

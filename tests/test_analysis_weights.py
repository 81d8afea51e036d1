"""Weight statistics: known singular values, gate blocks split the PyTorch way."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import states_only_index

from lstmsearch.analysis.weights import matrix_stats, weight_report
from lstmsearch.models import LanguageModel, ModelConfig


def test_singular_values_of_a_hand_set_matrix():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    v, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    w = u[:, :3] @ np.diag([3.0, 2.0, 0.5]) @ v.T
    stats = matrix_stats("m", w, bins=10)
    np.testing.assert_allclose(stats.singular_values, [3.0, 2.0, 0.5], atol=1e-12)
    assert stats.spectral_norm == pytest.approx(3.0)
    assert stats.spectral_radius is None  # not square
    assert stats.frobenius == pytest.approx(np.sqrt(9 + 4 + 0.25))
    assert stats.histogram_counts.sum() == 12 and len(stats.histogram_edges) == 11


def test_spectral_radius_differs_from_the_spectral_norm():
    w = np.array([[0.5, 10.0], [0.0, 0.5]])  # eigenvalues 0.5, 0.5; largest singular value ~10
    stats = matrix_stats("w", w, recurrent=True)
    assert stats.spectral_radius == pytest.approx(0.5)
    assert stats.spectral_norm > 10


def test_constant_vector_and_bad_input():
    stats = matrix_stats("b", np.full(5, 2.0), bins=4)
    assert stats.singular_values.size == 0 and stats.histogram_counts.sum() == 5
    with pytest.raises(ValueError, match="'x'"):
        matrix_stats("x", np.zeros((2, 2, 2)))


@pytest.mark.parametrize("arch,gates", [("lstm", "ifgo"), ("gru", "rzn")])
def test_model_blocks_are_named_and_split_by_gate(arch, gates):
    hidden = 3
    model = LanguageModel(ModelConfig(arch=arch, vocab_size=5, embed_dim=2, hidden=hidden, layers=2))
    rnn = model.forward_layers[1]
    with torch.no_grad():
        for j in range(len(gates)):  # block j of the recurrent matrix = (j + 1) * I
            rnn.weight_hh_l0[j * hidden : (j + 1) * hidden] = (j + 1) * torch.eye(hidden)
    report = {s.name: s for s in weight_report(model)}
    for j, g in enumerate(gates):
        block = report[f"layers.1.W_h{g}"]
        assert block.recurrent and block.shape == (hidden, hidden)
        assert block.spectral_radius == pytest.approx(j + 1)
        np.testing.assert_allclose(block.singular_values, [j + 1] * hidden, rtol=1e-6)
        assert report[f"layers.1.W_i{g}"].shape == (hidden, hidden)  # layer 1 reads layer 0
        assert report[f"layers.0.W_i{g}"].shape == (hidden, 2)
        assert report[f"layers.0.b_h{g}"].shape == (hidden,)
    assert {"embed", "head.weight", "head.bias"} <= set(report)
    assert len(report) == 3 + 2 * 4 * len(gates)


def test_bidirectional_model_reports_both_stacks():
    model = LanguageModel(ModelConfig(arch="gru", vocab_size=5, embed_dim=2, hidden=3, layers=1, bidirectional=True))
    names = {s.name for s in weight_report(model)}
    assert "layers.0.backward.W_hz" in names and "backward_head.weight" in names


# --- over an index -----------------------------------------------------------------------------



def test_index_weights_is_the_report_of_the_index_model(tiny_index, tiny_model_path):
    from lstmsearch.analysis.weights import index_weights
    from lstmsearch.models import load_model

    got = index_weights(tiny_index, bins=20)
    want = weight_report(load_model(tiny_model_path).model, bins=20)
    assert [m.name for m in got] == [m.name for m in want]
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.recurrent == w.recurrent
        np.testing.assert_array_equal(g.histogram_counts, w.histogram_counts)
        np.testing.assert_allclose(g.singular_values, w.singular_values)
        assert g.spectral_radius == (None if w.spectral_radius is None
                                     else pytest.approx(w.spectral_radius))


def test_index_weights_without_a_model_says_so(tmp_path):
    from lstmsearch.analysis.weights import index_weights

    with states_only_index(tmp_path) as index:
        with pytest.raises(ValueError, match="has no model.pt"):
            index_weights(index)

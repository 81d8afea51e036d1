"""Gate statistics by hand, and the depth unit of the shipped parens model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from lstmsearch.analysis.gates import gate_activity, gate_stats, model_gates
from lstmsearch.models import LanguageModel, ModelConfig

PARENS = Path(__file__).resolve().parents[1] / "data" / "models" / "parens-lstm.pt"


def test_gate_stats_by_hand():
    values = np.array([[0.05, 0.5], [0.95, 0.5], [0.99, 0.5], [0.5, 0.5]])
    first, second = gate_stats(values, "f")
    assert first.mean == pytest.approx(2.49 / 4)
    assert (first.low_fraction, first.high_fraction) == (0.25, 0.5)
    assert (second.mean, second.std, second.low_fraction, second.high_fraction) == (0.5, 0.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="low=0.9"):
        gate_stats(values, "f", low=0.9, high=0.1)


def test_gate_activity_series_and_layer_saturation():
    f = np.array([[0.0, 1.0, 0.5], [0.0, 1.0, 0.5]])
    act = gate_activity({"f": f, "i": 1 - f}, layer=0, arch="lstm", units=[2, 0], tokens=["a", "b"])
    np.testing.assert_array_equal(act.series["f"], [[0.5, 0.0], [0.5, 0.0]])
    assert act.layer_saturation["f"] == (pytest.approx(1 / 3), pytest.approx(1 / 3))
    assert act.unit_stats(1, "i").low_fraction == 1.0
    with pytest.raises(ValueError, match="unit 3"):
        gate_activity({"f": f}, layer=0, arch="lstm", units=[3])


def test_model_gates_match_extraction_and_refuse_tanh_gates():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch="gru", vocab_size=5, embed_dim=3, hidden=4, layers=2)).eval()
    docs = [np.array([1, 2, 3]), np.array([4, 0])]
    act = model_gates(model, docs, layer=1)
    assert act.gates == ("r", "z") and act.series["z"].shape == (5, 4)
    assert all(0 <= s.mean <= 1 for s in act.stats)
    with pytest.raises(ValueError, match="'n'"):
        model_gates(model, docs, layer=1, gates=["n"])
    with pytest.raises(ValueError, match="layer 2"):
        model_gates(model, docs, layer=2)


@pytest.mark.skipif(not PARENS.exists(), reason="shipped parens model not present")
def test_parens_depth_unit_counts_brackets():
    """The cell unit that tracks nesting depth best acts as a counter: reading "(" moves it
    one way and ")" the other (with the sign of its correlation), and its forget gate keeps
    most of its value from step to step."""
    from lstmsearch.analysis import tokenize_documents
    from lstmsearch.analysis.units import rank_units
    from lstmsearch.corpus import load_corpus
    from lstmsearch.extract import extract
    from lstmsearch.models import load_model

    lm = load_model(PARENS)
    tok = tokenize_documents(lm.tokenizer, load_corpus("parens", limit=20).documents)
    cells = extract(lm.model, tok.ids, ["layers.0.c"])
    best = rank_units(np.concatenate([r["layers.0.c"] for r in cells]), tok.track("depth"), top=1)[0]
    assert abs(best.r) > 0.6
    steps = {"(": [], ")": []}
    for ids, states in zip(tok.ids, cells):
        c = states["layers.0.c"][:, best.unit]
        delta = np.diff(np.concatenate([[0.0], c]))
        for t, i in enumerate(ids):
            text = lm.tokenizer.id_to_token(int(i))
            if text in steps:
                steps[text].append(delta[t])
    opening, closing = np.mean(steps["("]), np.mean(steps[")"])
    assert np.sign(opening) == np.sign(best.r) == -np.sign(closing)
    act = model_gates(lm.model, tok.ids, layer=0, units=[best.unit])
    assert act.unit_stats(best.unit, "f").mean > 0.5

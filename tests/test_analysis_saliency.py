"""Input saliency: a model that only sees the last token puts all saliency there; the
integrated gradients add up to the score difference from the baseline."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmsearch.analysis.saliency import saliency
from lstmsearch.models import LanguageModel, ModelConfig


def last_token_model() -> LanguageModel:
    """A one-layer LSTM with no recurrent weights and a forget gate shut (sigmoid(-1000) is
    exactly 0 in float64): h_t and c_t depend on token t alone."""
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch="lstm", vocab_size=6, embed_dim=4, hidden=5, layers=1)).double().eval()
    rnn = model.forward_layers[0]
    with torch.no_grad():
        rnn.weight_hh_l0.zero_()
        rnn.weight_ih_l0[5:10].zero_()  # rows of the forget gate
        rnn.bias_ih_l0[5:10] = -1000.0
        model.embed.weight.mul_(2.0)
    return model


def random_model(arch: str = "gru") -> LanguageModel:
    torch.manual_seed(1)
    return LanguageModel(ModelConfig(arch=arch, vocab_size=6, embed_dim=4, hidden=5, layers=2)).double().eval()


IDS = np.array([1, 3, 2, 5, 4, 2])


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_a_model_that_sees_only_the_last_token_is_salient_only_there(method):
    model = last_token_model()
    sal = saliency(model, IDS, position=4, method=method, steps=16)
    assert sal.scores.shape == (5,) and sal.gradient_norms.shape == (5,)
    assert sal.target == IDS[5]
    np.testing.assert_array_equal(sal.scores[:4], 0.0)
    np.testing.assert_array_equal(sal.gradient_norms[:4], 0.0)
    assert abs(sal.scores[4]) > 1e-3 and sal.gradient_norms[4] > 1e-3


def test_grad_x_input_equals_a_direct_autograd_computation():
    model = random_model("lstm")
    sal = saliency(model, IDS, position=3, target=2, objective="logit")
    emb = model.embed(torch.from_numpy(IDS[:4])).detach().unsqueeze(0).requires_grad_(True)
    x = emb
    for rnn in model.forward_layers:
        x, _ = rnn(x)
    score = model.head(x[0, -1])[2]
    score.backward()
    want = (emb.grad[0] * emb[0]).sum(-1).detach().numpy()
    np.testing.assert_allclose(sal.scores, want, rtol=1e-10)
    assert sal.score == pytest.approx(float(score.detach()))


def test_integrated_gradients_are_complete():
    model = random_model("gru")
    sal = saliency(model, IDS, position=5, method="integrated_gradients", steps=200)
    assert sal.target == int(np.argmax(
        model(torch.from_numpy(IDS).unsqueeze(0))[0][0, -1].detach().numpy()
    ))  # no next token: the model's own top choice
    assert sal.baseline_score is not None
    total = sal.score - sal.baseline_score
    assert abs(sal.completeness_gap) < 1e-3 * max(1.0, abs(total))
    assert sal.scores.sum() == pytest.approx(total, abs=1e-3)


def test_bad_arguments_name_the_value():
    model = random_model()
    with pytest.raises(ValueError, match="position 6"):
        saliency(model, IDS, position=6)
    with pytest.raises(ValueError, match="'bogus'"):
        saliency(model, IDS, position=1, method="bogus")
    with pytest.raises(ValueError, match="target token 9"):
        saliency(model, IDS, position=1, target=9)

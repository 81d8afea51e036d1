"""Input saliency: a model that only sees the last token puts all saliency there; the
integrated gradients add up to the score difference from the baseline; attributing only the
last tokens keeps the others' context; an index's prediction equals the same computation
on its token ids."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lstmsearch.analysis import index_documents
from lstmsearch.analysis.saliency import index_saliency, saliency
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


# --- context tokens, named targets, top predictions -----------------------------------------


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_attributing_the_last_tokens_keeps_gradient_x_input_of_those_tokens(arch):
    model = random_model(arch)
    full = saliency(model, IDS, position=4, target=3)
    part = saliency(model, IDS, position=4, target=3, start=2)
    assert part.start == 2 and part.scores.shape == (5,)
    assert np.isnan(part.scores[:2]).all() and np.isnan(part.gradient_norms[:2]).all()
    np.testing.assert_allclose(part.scores[2:], full.scores[2:], rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(part.gradient_norms[2:], full.gradient_norms[2:], rtol=1e-10)
    assert part.score == pytest.approx(full.score, rel=1e-12)
    assert part.probability == pytest.approx(full.probability, rel=1e-12)


def test_integrated_gradients_of_the_last_tokens_are_complete_with_the_context_kept():
    model = random_model("lstm")
    sal = saliency(model, IDS, position=5, method="integrated_gradients", steps=200, start=3)
    with torch.no_grad():
        emb = model.embed(torch.from_numpy(IDS[:6])).unsqueeze(0)
        emb[:, 3:] = 0.0  # the baseline: the attributed tokens' embeddings only
        x = emb
        for rnn in model.forward_layers:
            x, _ = rnn(x)
        want = float(torch.log_softmax(model.head(x[0, -1]), -1)[sal.target])
    assert sal.baseline_score == pytest.approx(want, rel=1e-9)
    assert np.nansum(sal.scores) == pytest.approx(sal.score - sal.baseline_score, abs=1e-3)


def test_named_targets_and_the_top_predictions():
    model = random_model("lstm")
    with torch.no_grad():
        logits = model(torch.from_numpy(IDS[:4]).unsqueeze(0))[0][0, -1]
    probs = torch.softmax(logits, -1).numpy()
    order = np.argsort(-probs)
    top = saliency(model, IDS, position=3, target="top", top=3)
    assert top.target == order[0]
    assert [t for t, _ in top.top] == order[:3].tolist()
    np.testing.assert_allclose([p for _, p in top.top], probs[order[:3]], rtol=1e-9)
    assert saliency(model, IDS, position=3, target="next").target == IDS[4]
    assert saliency(model, IDS, position=3).target == IDS[4]
    with pytest.raises(ValueError, match="'best'"):
        saliency(model, IDS, position=3, target="best")
    with pytest.raises(ValueError, match="start 4"):
        saliency(model, IDS, position=3, start=4)


# --- an index's model ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_path):
    from lstmsearch.models import load_model

    return load_model(tiny_model_path).model.eval()


def doc_with_tokens(index, n: int) -> int:
    """A document of the index with at least `n` tokens."""
    lengths = np.diff(index.doc_starts)
    return int(np.flatnonzero(lengths >= n)[0])


@pytest.mark.parametrize("method", ["grad_x_input", "integrated_gradients"])
def test_index_saliency_equals_saliency_on_the_documents_token_ids(tiny_index, tiny_lm, method):
    doc = doc_with_tokens(tiny_index, 40)
    tok = index_documents(tiny_index, [doc])
    ids, texts = tok.ids[0], tok.texts[0]
    start = int(tiny_index.doc_starts[doc])
    local = 30
    got = index_saliency(tiny_index, tiny_lm, start + local, method=method, steps=8)
    want = saliency(tiny_lm, ids, local, method=method, steps=8)
    np.testing.assert_allclose(got.saliency.scores, want.scores, rtol=1e-6, atol=1e-9)
    assert got.saliency.target == want.target == ids[local + 1]
    assert got.document == doc and got.first == got.document_start == start
    assert not got.truncated
    np.testing.assert_array_equal(got.positions, np.arange(start, start + local + 1))
    assert got.texts == texts[: local + 1]
    np.testing.assert_array_equal(got.scores, want.scores)
    assert got.next_token == ids[local + 1] and got.next_text == texts[local + 1]
    vocab = tiny_index.vocab()
    assert got.target_text == vocab[want.target]
    assert [(t, p) for t, _, p in got.top] == list(want.top)
    assert [text for _, text, _ in got.top] == [vocab[t] for t, _ in want.top]

    # the last `window` tokens only: the same as `start` on the same ids
    part = index_saliency(tiny_index, tiny_lm, start + local, method=method,
                          window=7, steps=8)
    ref = saliency(tiny_lm, ids, local, method=method, steps=8, start=local + 1 - 7)
    np.testing.assert_array_equal(part.positions, np.arange(start + local - 6, start + local + 1))
    np.testing.assert_allclose(part.scores, ref.scores[local - 6 :], rtol=1e-6, atol=1e-9)
    assert part.texts == texts[local - 6 : local + 1]


def test_index_saliency_at_a_document_end_and_of_a_long_document(tiny_index, tiny_lm):
    doc = doc_with_tokens(tiny_index, 40)
    ids = index_documents(tiny_index, [doc]).ids[0]
    start, end = int(tiny_index.doc_starts[doc]), int(tiny_index.doc_starts[doc + 1])
    last = index_saliency(tiny_index, tiny_lm, end - 1)
    assert last.next_token is None and last.next_text is None
    assert last.saliency.target == last.top[0][0]  # nothing follows: the model's top choice
    # the model reads at most max_context tokens before the position
    got = index_saliency(tiny_index, tiny_lm, start + 35, max_context=10, window=4)
    assert got.truncated and got.first == start + 25
    want = saliency(tiny_lm, ids[25:37], 10, start=7)
    np.testing.assert_allclose(got.scores, want.scores[7:], rtol=1e-6, atol=1e-9)
    assert got.saliency.probability == pytest.approx(want.probability)


def test_index_saliency_names_bad_values(tiny_index, tiny_lm):
    with pytest.raises(ValueError, match=str(tiny_index.n_tokens)):
        index_saliency(tiny_index, tiny_lm, tiny_index.n_tokens)
    with pytest.raises(ValueError, match="window must be >= 1 tokens, got 0"):
        index_saliency(tiny_index, tiny_lm, 5, window=0)
    with pytest.raises(ValueError, match="'sideways'"):
        index_saliency(tiny_index, tiny_lm, 5, method="sideways")

"""Ablation: a hand-set model changes exactly what its weights say; random LSTMs and GRUs
agree with a step-by-step loop that clamps the unit explicitly; the index's report groups
tokens by track value; bad input gets one line that says what would work."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from lstmsearch.analysis.ablation import ablated_surprisal, index_ablation, track_groups
from lstmsearch.cli import main
from lstmsearch.models import LanguageModel, ModelConfig

BIG = 50.0


def hand_set_model() -> LanguageModel:
    """One LSTM layer, two units. Token 0 embeds to -1, token 1 to +1. Unit 0: input gate
    1, forget gate 0, output gate 1, g = tanh(BIG * x) = +-1, so c_t = +-1 and
    h_t = +-tanh(1) follows the current token. Unit 1 is dead (no way in or out). The head's
    logits are (0, 2 h_0): p(next = 1) = sigmoid(2 h_0)."""
    model = LanguageModel(ModelConfig("lstm", 2, embed_dim=1, hidden=2, layers=1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.weight[:, 0] = torch.tensor([-1.0, 1.0])
        rnn = model.forward_layers[0]
        # gate rows: i 0-1, f 2-3, g 4-5, o 6-7
        rnn.bias_ih_l0[0] = BIG  # i of unit 0
        rnn.bias_ih_l0[2] = -BIG  # f of unit 0
        rnn.weight_ih_l0[4, 0] = BIG  # g of unit 0
        rnn.bias_ih_l0[6] = BIG  # o of unit 0
        rnn.weight_hh_l0[:, 1] = 0.0
        model.head.weight[1, 0] = 2.0
    return model.eval()


def nats(logit_of_target_minus_other: float) -> float:
    """Surprisal of the target with a two-way softmax."""
    return math.log1p(math.exp(-logit_of_target_minus_other))


def expected(tokens: list[int], h: list[float]) -> np.ndarray:
    """Surprisal of tokens[t+1] when the head sees h_0 = h[t]."""
    out = [math.nan]
    for t in range(1, len(tokens)):
        margin = 2 * h[t - 1] if tokens[t] == 1 else -2 * h[t - 1]
        out.append(nats(margin))
    return np.array(out)


DOC = [0, 0, 1, 1, 0, 1]


def test_hand_set_model_clean_run() -> None:
    model = hand_set_model()
    clean, _ = ablated_surprisal(model, [np.array(DOC)], 0, "c", 1, 0.0)
    t1 = math.tanh(1.0)
    h = [t1 if x == 1 else -t1 for x in DOC]
    np.testing.assert_allclose(clean[0], expected(DOC, h), rtol=1e-6)
    assert clean[0][1] == pytest.approx(math.log1p(math.exp(-2 * t1)))  # 0 after 0


def test_hand_set_model_clamps() -> None:
    model = hand_set_model()
    docs = [np.array(DOC), np.array([1, 0])]
    ln2 = math.log(2.0)
    # c of unit 0 clamped to 0: h_0 = tanh(0) = 0, every prediction is a coin toss
    clean, ablated = ablated_surprisal(model, docs, 0, "c", 0, 0.0)
    np.testing.assert_allclose(ablated[0][1:], ln2, rtol=1e-6)
    np.testing.assert_allclose(ablated[1][1:], ln2, rtol=1e-6)
    # c clamped to 2: h_0 = tanh(2) at every step, whatever the token
    _, ablated = ablated_surprisal(model, docs, 0, "c", 0, 2.0)
    np.testing.assert_allclose(ablated[0], expected(DOC, [math.tanh(2.0)] * 6), rtol=1e-6)
    # h clamped to 0.5: logits (0, 1) at every step
    _, ablated = ablated_surprisal(model, docs, 0, "h", 0, 0.5)
    want = [math.nan] + [math.log1p(math.exp(-1.0)) if x == 1 else math.log1p(math.e)
                         for x in DOC[1:]]
    np.testing.assert_allclose(ablated[0], want, rtol=1e-6)
    # without the clean run, the clamped one is the same
    none, alone = ablated_surprisal(model, docs, 0, "c", 0, 2.0, clean=False)
    assert none is None
    np.testing.assert_array_equal(alone[0], ablated_surprisal(model, docs, 0, "c", 0, 2.0)[1][0])
    # the dead unit: nothing changes, to the bit
    for kind, value in (("c", 0.0), ("c", 3.0), ("h", 0.0), ("h", -0.7)):
        clean, ablated = ablated_surprisal(model, docs, 0, kind, 1, value)
        for c, a in zip(clean, ablated):
            assert np.array_equal(c, a, equal_nan=True)


def reference(model: LanguageModel, doc: np.ndarray, layer: int, kind: str, unit: int,
              value: float) -> np.ndarray:
    """Step by step from PyTorch's equations, the unit clamped after every step (and in
    the zero state before the first)."""
    config = model.config
    x_all = model.embed.weight[torch.as_tensor(doc)].double()
    hs = [torch.zeros(config.hidden, dtype=torch.float64) for _ in range(config.layers)]
    cs = [torch.zeros(config.hidden, dtype=torch.float64) for _ in range(config.layers)]
    if 0 <= layer and kind == "h":
        hs[layer][unit] = value  # the state before the first step is clamped too
    out = [math.nan]
    for t in range(len(doc)):
        x = x_all[t]
        for i, rnn in enumerate(model.forward_layers):
            w_ih, w_hh = rnn.weight_ih_l0.double(), rnn.weight_hh_l0.double()
            b_ih, b_hh = rnn.bias_ih_l0.double(), rnn.bias_hh_l0.double()
            H = config.hidden
            if config.arch == "lstm":
                pre = w_ih @ x + b_ih + w_hh @ hs[i] + b_hh
                ig, fg = torch.sigmoid(pre[:H]), torch.sigmoid(pre[H : 2 * H])
                g, og = torch.tanh(pre[2 * H : 3 * H]), torch.sigmoid(pre[3 * H :])
                c = fg * cs[i] + ig * g
                if i == layer and kind == "c":
                    c[unit] = value
                h = og * torch.tanh(c)
                cs[i] = c
            else:
                gi, gh = w_ih @ x + b_ih, w_hh @ hs[i] + b_hh
                r = torch.sigmoid(gi[:H] + gh[:H])
                z = torch.sigmoid(gi[H : 2 * H] + gh[H : 2 * H])
                n = torch.tanh(gi[2 * H :] + r * gh[2 * H :])
                h = (1 - z) * n + z * hs[i]
            if i == layer and kind == "h":
                h = h.clone()
                h[unit] = value
            hs[i] = h
            x = h
        if t + 1 < len(doc):
            logits = model.head.weight.double() @ x + model.head.bias.double()
            out.append(-torch.log_softmax(logits, 0)[int(doc[t + 1])].item())
    return np.array(out)


@pytest.mark.parametrize("arch,layer,kind", [
    ("lstm", 0, "c"), ("lstm", 1, "c"), ("lstm", 0, "h"), ("lstm", 1, "h"),
    ("gru", 0, "h"), ("gru", 1, "h"),
])
def test_random_models_against_a_step_by_step_loop(arch: str, layer: int, kind: str) -> None:
    torch.manual_seed(3)
    model = LanguageModel(ModelConfig(arch, 7, embed_dim=5, hidden=6, layers=2)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)  # saturating units: the clamp matters
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 7, size=n) for n in (23, 5, 1, 40)]
    clean, ablated = ablated_surprisal(model, docs, layer, kind, 4, 0.8, lanes=3, chunk=7)
    for d, doc in enumerate(docs):
        with torch.no_grad():
            want = reference(model, doc, layer, kind, 4, 0.8)
            want_clean = reference(model, doc, -1, kind, 4, 0.8)  # no layer -1: no clamp
        np.testing.assert_allclose(ablated[d], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(clean[d], want_clean, rtol=1e-4, atol=1e-5)
        if len(doc) > 1:
            assert not np.allclose(ablated[d][1:], clean[d][1:])


def test_track_groups_by_value_and_by_bins() -> None:
    clean = np.array([1.0, 2.0, 3.0, 4.0])
    ablated = np.array([1.5, 2.0, 5.0, 4.0])
    depth = np.array([0.0, 1.0, 1.0, np.nan])
    groups = track_groups("depth", depth, clean, ablated)
    assert [(g.value, g.n, g.clean, g.ablated) for g in groups] == [
        ("0", 1, 1.0, 1.5), ("1", 2, 2.5, 3.5)]
    assert groups[1].change == 1.0
    labels = np.array(["a", None, "b", "a"], dtype=object)
    assert [(g.value, g.n) for g in track_groups("pos", labels, clean, ablated)] == [
        ("a", 2), ("b", 1)]
    many = np.arange(100.0)
    binned = track_groups("x", many, np.zeros(100), np.ones(100))
    assert len(binned) == 5 and sum(g.n for g in binned) == 100


def test_index_ablation_over_the_tiny_index(tiny_index) -> None:
    result = index_ablation(tiny_index, 0, "c", 3, value="mean")
    mean = tiny_index.neurons.stats(3, 0, "c").mean
    assert result.value == pytest.approx(mean) and result.value_kind == "mean"
    assert result.n_scored == tiny_index.n_tokens - tiny_index.n_docs
    stored = tiny_index.track("surprisal")
    assert result.clean == pytest.approx(np.nanmean(stored), rel=1e-12)  # the stored track
    computed = index_ablation(tiny_index, 0, "c", 3, value="mean", clean_from="computed")
    assert computed.ablated == result.ablated
    assert computed.clean == pytest.approx(result.clean, abs=1e-5)
    for g, h in zip(result.groups, computed.groups):
        assert (g.track, g.value, g.n) == (h.track, h.value, h.n)
        assert g.change == pytest.approx(h.change, abs=1e-5)
    depth = [g for g in result.groups if g.track == "depth"]
    assert depth and sum(g.n for g in depth) == result.n_scored
    a, b = int(tiny_index.doc_starts[3]) + 2, int(tiny_index.doc_starts[5]) - 1
    part = index_ablation(tiny_index, 1, "h", 0, span=(a, b))
    assert (part.start, part.end) == (a, b) and part.n_scored == (b - a) - 1  # doc 4 starts


def test_index_ablation_bad_input(tiny_index, tmp_path) -> None:
    from tests.conftest import states_only_index

    with pytest.raises(ValueError, match=r"unit 12 out of range: layers.0.c has units 0..11"):
        index_ablation(tiny_index, 0, "c", 12)
    with pytest.raises(ValueError, match="layer 2 out of range"):
        index_ablation(tiny_index, 2, "c", 0)
    with pytest.raises(ValueError, match="kind 'i' cannot be clamped.*ablate h or c"):
        index_ablation(tiny_index, 0, "i", 0)
    with pytest.raises(ValueError, match=r"span \[5, 2\) out of range"):
        index_ablation(tiny_index, 0, "c", 0, span=(5, 2))
    plain = states_only_index(tmp_path / "plain")
    with pytest.raises(ValueError, match="has no model.pt.*index-states.*--model"):
        index_ablation(plain, 0, "h", 0)


def test_cli_ablate(tiny_index_path, tmp_path, capsys) -> None:
    from tests.conftest import states_only_index

    code = main(["analyze", "ablate", str(tiny_index_path), "--layer", "0", "--unit", "3",
                 "--json"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0 and out["state"] == "layers.0.c" and out["value_kind"] == "zero"
    assert out["groups"] and {"track", "value", "n", "clean", "ablated"} <= set(out["groups"][0])
    code = main(["analyze", "ablate", str(tiny_index_path), "--layer", "1", "--kind", "h",
                 "--unit", "0", "--value", "mean", "--span", "10", "60"])
    text = capsys.readouterr().out
    assert code == 0 and "layers.1.h unit 0 clamped to its mean" in text and "depth" in text
    plain = states_only_index(tmp_path / "plain")
    for args, message in (
        ([str(tiny_index_path), "--layer", "0", "--unit", "99"], "unit 99 out of range"),
        ([str(plain.path), "--layer", "0", "--unit", "0"], "has no model.pt"),
        ([str(tiny_index_path), "--layer", "0", "--unit", "0", "--span", "9", "3"],
         "span [9, 3) out of range"),
    ):
        assert main(["analyze", "ablate", *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1

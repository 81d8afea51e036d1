"""Extraction equals a step-by-step LSTMCell / GRUCell reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import lstmsearch.extract as extract_module
from lstmsearch.extract import (
    HEAD_VALUES,
    extract,
    iter_states,
    parse_state_name,
    state_dims,
    state_names,
)
from lstmsearch.models import LanguageModel, ModelConfig

TOL = 1e-5


def random_model(arch: str, layers: int = 2, hidden: int = 7, bidirectional: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(
        arch=arch, vocab_size=11, embed_dim=5, hidden=hidden, layers=layers,
        bidirectional=bidirectional,
    )
    model = LanguageModel(config).eval()
    with torch.no_grad():  # larger weights than the default init, so gates saturate sometimes
        for p in model.parameters():
            p.mul_(2.0)
    return model


def cell_reference(rnn: nn.Module, xs: torch.Tensor, arch: str) -> dict[str, torch.Tensor]:
    """Step one LSTMCell/GRUCell with the layer's weights over xs (T, in), recording everything."""
    hidden = rnn.hidden_size
    cell = nn.LSTMCell(rnn.input_size, hidden) if arch == "lstm" else nn.GRUCell(rnn.input_size, hidden)
    cell.load_state_dict({
        "weight_ih": rnn.weight_ih_l0, "weight_hh": rnn.weight_hh_l0,
        "bias_ih": rnn.bias_ih_l0, "bias_hh": rnn.bias_hh_l0,
    })
    h = torch.zeros(1, hidden)
    c = torch.zeros(1, hidden)
    rec: dict[str, list[torch.Tensor]] = {}
    for x in xs:
        x = x.unsqueeze(0)
        gi = x @ rnn.weight_ih_l0.T + rnn.bias_ih_l0
        gh = h @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
        if arch == "lstm":
            pre = gi + gh
            gates = {
                "i": torch.sigmoid(pre[:, :hidden]), "f": torch.sigmoid(pre[:, hidden:2 * hidden]),
                "g": torch.tanh(pre[:, 2 * hidden:3 * hidden]), "o": torch.sigmoid(pre[:, 3 * hidden:]),
            }
            h, c = cell(x, (h, c))
            rec.setdefault("c", []).append(c[0])
        else:
            r = torch.sigmoid(gi[:, :hidden] + gh[:, :hidden])
            z = torch.sigmoid(gi[:, hidden:2 * hidden] + gh[:, hidden:2 * hidden])
            n = torch.tanh(gi[:, 2 * hidden:] + r * gh[:, 2 * hidden:])
            gates = {"r": r, "z": z, "n": n}
            h = cell(x, h)
        rec.setdefault("h", []).append(h[0])
        for k, v in gates.items():
            rec.setdefault(k, []).append(v[0])
    return {k: torch.stack(v) for k, v in rec.items()}


@torch.no_grad()
def reference(model: LanguageModel, ids: np.ndarray) -> dict[str, np.ndarray]:
    """All states of one document, the slow and obvious way."""
    config = model.config
    out: dict[str, list[np.ndarray]] = {}
    for direction, stack in enumerate(model.stacks()):
        seq = ids[::-1].copy() if direction == 1 else ids
        x = model.embed(torch.from_numpy(seq).long())
        for layer, rnn in enumerate(stack):
            rec = cell_reference(rnn, x, config.arch)
            x = rec["h"]
            for kind, v in rec.items():
                v = v.numpy()
                out.setdefault(f"layers.{layer}.{kind}", []).append(v[::-1] if direction == 1 else v)
    return {k: np.concatenate(v, axis=1) for k, v in out.items()}


PASSES = {
    # the default: fused pass, numba update, oneDNN-packed step product, first-layer table
    "fused": {},
    "fused-torch-update": {"backend": "torch"},
    "fused-plain-products": {"packed": False, "table_bytes": 0},
    "reference": {"kernel": "reference"},
}


def use_pass(monkeypatch, name: str) -> dict:
    """Extract keyword arguments for one way of computing the states (see PASSES)."""
    options = dict(PASSES[name])
    if not options.pop("packed", True):
        monkeypatch.setattr(extract_module, "pack_for_steps", lambda w, lanes: None)
    if "table_bytes" in options:
        monkeypatch.setattr(extract_module, "TABLE_BYTES", options.pop("table_bytes"))
    return options


@pytest.mark.parametrize("way", list(PASSES))
@pytest.mark.parametrize("arch", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 3])
@pytest.mark.parametrize("chunk", [1, 4, 64])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_extract_equals_cell_reference(monkeypatch, way, arch, layers, chunk, bidirectional):
    options = use_pass(monkeypatch, way)
    model = random_model(arch, layers=layers, bidirectional=bidirectional, seed=layers * 10 + chunk)
    rng = np.random.default_rng(chunk)
    lengths = [1, 2, 5, 17, 70, 3, 9]  # includes one token and longer than several chunks
    docs = [rng.integers(0, 11, size=n) for n in lengths]
    names = state_names(model.config, gates=True)
    got = extract(model, docs, names, chunk=chunk, lanes=3, **options)
    for doc, states in zip(docs, got):
        want = reference(model, doc)
        for name in names:
            assert states[name].shape == (len(doc), model.config.state_dim)
            np.testing.assert_allclose(states[name], want[name], atol=TOL, rtol=0, err_msg=name)


def test_chunked_equals_one_pass():
    model = random_model("lstm", layers=2, hidden=16)
    doc = np.random.default_rng(1).integers(0, 11, size=500)
    one = extract(model, [doc], chunk=10_000)[0]
    for chunk in (1, 7, 128):
        got = extract(model, [doc], chunk=chunk)[0]
        for name in one:
            np.testing.assert_allclose(got[name], one[name], atol=TOL, rtol=0)


def test_lanes_do_not_change_results():
    model = random_model("gru", layers=2)
    rng = np.random.default_rng(2)
    docs = [rng.integers(0, 11, size=n) for n in rng.integers(1, 50, size=20)]
    a = extract(model, docs, lanes=1, chunk=8)
    b = extract(model, docs, lanes=16, chunk=8)
    for x, y in zip(a, b):
        for name in x:
            np.testing.assert_allclose(x[name], y[name], atol=TOL, rtol=0)


def test_only_some_layers_and_kinds():
    model = random_model("lstm", layers=3)
    doc = np.arange(11)
    got = extract(model, [doc], ["layers.1.c", "layers.0.f"])[0]
    want = reference(model, doc)
    assert set(got) == {"layers.1.c", "layers.0.f"}
    for name in got:
        np.testing.assert_allclose(got[name], want[name], atol=TOL, rtol=0)


def test_empty_document_gives_empty_states():
    model = random_model("lstm")
    got = extract(model, [np.array([], dtype=np.int64), np.array([3])])
    assert got[0]["layers.0.h"].shape == (0, 7)
    assert got[1]["layers.1.c"].shape == (1, 7)


@pytest.mark.parametrize("head_values", [HEAD_VALUES, 1, 2 * 11 * 3])
def test_surprisal_is_next_token_loss(monkeypatch, head_values):
    """Also when the head's logits are computed a step (or three) at a time."""
    monkeypatch.setattr(extract_module, "HEAD_VALUES", head_values)
    model = random_model("lstm", layers=2)
    rng = np.random.default_rng(3)
    docs = [rng.integers(0, 11, size=n) for n in (1, 9, 40, 7, 13)]
    got = extract(model, docs, chunk=4, lanes=2, surprisal=True)
    for doc, states in zip(docs, got):
        with torch.no_grad():
            logits, _ = model(torch.from_numpy(doc).long().unsqueeze(0))
            logp = torch.log_softmax(logits[0], dim=-1).numpy()
        want = np.full(len(doc), np.nan)
        want[1:] = -logp[np.arange(len(doc) - 1), doc[1:]]
        np.testing.assert_allclose(states["surprisal"], want, atol=1e-4, rtol=0)
        assert np.isnan(states["surprisal"][0])


def test_blocks_cover_every_position_once():
    model = random_model("lstm", layers=1, bidirectional=True)
    docs = [np.arange(n) % 11 for n in (3, 30, 12)]
    seen = {d: np.zeros((len(doc), 2), dtype=int) for d, doc in enumerate(docs)}
    for block in iter_states(model, docs, ["layers.0.h"], chunk=5, lanes=2):
        for j, d in enumerate(block.docs):
            s, n = block.starts[j], block.lengths[j]
            seen[d][s : s + n, block.unit_offset // 7] += 1
    assert all((v == 1).all() for v in seen.values())


def test_names_and_errors():
    config = random_model("lstm", layers=2).config
    assert state_names(config) == ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"]
    assert state_names(random_model("gru").config) == ["layers.0.h", "layers.1.h"]
    assert state_dims(random_model("lstm", bidirectional=True).config)["layers.1.o"] == 14
    assert parse_state_name("layers.12.c") == (12, "c")
    with pytest.raises(ValueError, match="layers.x.c"):
        parse_state_name("layers.x.c")
    with pytest.raises(ValueError, match="'c'"):
        state_names(random_model("gru").config, kinds=["c"])
    with pytest.raises(ValueError, match="layer 5"):
        state_names(config, layers=[5])


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_stored_blocks_are_the_float32_states_rounded(arch):
    """Blocks in the stored float16 (what a build writes; the pass reuses its arrays from
    block to block) hold exactly the float32 states rounded once."""
    model = random_model(arch, layers=2, hidden=9, bidirectional=True)
    rng = np.random.default_rng(4)
    docs = [rng.integers(0, 11, size=n) for n in (1, 30, 7, 64, 13, 2, 41)]
    names = state_names(model.config, gates=True)
    want = extract(model, docs, names, chunk=5, lanes=3)
    seen = {d: {name: np.zeros((len(doc), 18), np.float16) for name in names}
            for d, doc in enumerate(docs)}
    for block in iter_states(model, docs, names, chunk=5, lanes=3, stored=True):
        for name, values in block.states.items():
            assert values.dtype == np.float16
            lo = block.unit_offset
            for j, d in enumerate(block.docs):
                s, n = int(block.starts[j]), int(block.lengths[j])
                seen[d][name][s : s + n, lo : lo + 9] = values[j, :n]
    for d in range(len(docs)):
        for name in names:
            np.testing.assert_array_equal(seen[d][name], want[d][name].astype(np.float16),
                                          err_msg=name)

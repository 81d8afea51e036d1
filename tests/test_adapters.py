"""User models through the adapter: exact states against a step-by-step cell reference, the
shipped example indexed from the CLI, TorchScript, tokenizers, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import torch_threads
from torch import nn

from lstmsearch.adapters import AdapterError, ModelAdapter, TokenizerAdapter, load_adapter
from lstmsearch.cli import main
from lstmsearch.index import open_index
from lstmsearch.store import to_stored

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
EXAMPLE = f"{EXAMPLES / 'my_model.py'}:factory"
SENTENCES = EXAMPLES / "sentences.jsonl"
TEXT = "The old cat sees a dog near the river, because the rain was very quiet."


@pytest.fixture(scope="module")
def example() -> ModelAdapter:
    return load_adapter(EXAMPLE)


# --- a reference that shares no code with the adapter --------------------------------------


def cell_reference(module: nn.Module, x: torch.Tensor, hx=None) -> list[dict[str, torch.Tensor]]:
    """Every layer of an nn.LSTM/nn.GRU over x (T, in), one LSTMCell/GRUCell step at a time:
    per layer {"h": (T, dim), "c": (T, dim)} with directions side by side."""
    is_lstm = isinstance(module, nn.LSTM)
    dirs = 2 if module.bidirectional else 1
    steps = x.shape[0]
    layers = []
    for k in range(module.num_layers):
        outs = []
        for d in range(dirs):
            sfx = f"_l{k}" + ("_reverse" if d else "")
            w_ih = getattr(module, "weight_ih" + sfx)
            cell = (nn.LSTMCell if is_lstm else nn.GRUCell)(w_ih.shape[1], module.hidden_size)
            with torch.no_grad():
                cell.weight_ih.copy_(w_ih)
                cell.weight_hh.copy_(getattr(module, "weight_hh" + sfx))
                for b in ("bias_ih", "bias_hh"):
                    src = getattr(module, b + sfx, None)
                    getattr(cell, b).copy_(src) if src is not None else getattr(cell, b).zero_()
            row = k * dirs + d
            zero = torch.zeros(1, module.hidden_size)
            if hx is None:
                h, c = zero, zero
            elif is_lstm:
                h, c = hx[0][row : row + 1, 0], hx[1][row : row + 1, 0]
            else:
                h, c = hx[row : row + 1, 0], zero
            hs, cs = [None] * steps, [None] * steps
            order = range(steps) if d == 0 else reversed(range(steps))
            for t in order:
                if is_lstm:
                    h, c = cell(x[t : t + 1], (h, c))
                else:
                    h = cell(x[t : t + 1], h)
                hs[t], cs[t] = h[0], c[0]
            outs.append({"h": torch.stack(hs), "c": torch.stack(cs)})
        layer = {kind: torch.cat([o[kind] for o in outs], dim=-1) for kind in ("h", "c")}
        layers.append(layer)
        x = layer["h"]
    return layers


def example_reference(adapter: ModelAdapter, ids: np.ndarray) -> dict[str, np.ndarray]:
    """The example model's states, following its forward with cells."""
    model = adapter.model
    with torch.no_grad():
        x = model.embed(torch.as_tensor(ids, dtype=torch.long))
        lstm = cell_reference(model.lstm, x)
        gru = cell_reference(model.gru, lstm[-1]["h"])
    return {
        "layers.0.h": lstm[0]["h"], "layers.0.c": lstm[0]["c"],
        "layers.1.h": lstm[1]["h"], "layers.1.c": lstm[1]["c"],
        "layers.2.h": gru[0]["h"],
    }


# --- exactness -----------------------------------------------------------------------------


def test_example_layers(example):
    assert [(lay.index, lay.module, lay.layer, lay.arch, lay.dim) for lay in example.layers] == [
        (0, "lstm", 0, "lstm", 24), (1, "lstm", 1, "lstm", 24), (2, "gru", 0, "gru", 24)]
    assert example.state_names() == ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c",
                                     "layers.2.h"]
    assert example.state_names(kinds=["c"]) == ["layers.0.c", "layers.1.c"]
    assert example.state_names(layers=[2], kinds=["h", "z"]) == ["layers.2.h", "layers.2.z"]
    with pytest.raises(AdapterError, match="layer 3 out of range"):
        example.state_names(layers=[3])
    with pytest.raises(AdapterError, match="kind 'c'"):
        example.state_names(layers=[2], kinds=["c"])


def test_example_equals_step_by_step_cells(example):
    enc = example.encode(TEXT)
    states = example.extract(enc.ids)
    reference = example_reference(example, enc.ids)
    assert set(states) == set(reference)
    for name, values in states.items():
        assert values.shape == (len(enc), 24)
        np.testing.assert_allclose(values, reference[name].numpy(), atol=2e-6, err_msg=name)


class Wired(nn.Module):
    """A bidirectional 2-layer bias-free LSTM with a learned initial state, then a projection
    with a residual-free nonlinearity, then a time-major GRU."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(20, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bias=False, batch_first=True, bidirectional=True)
        self.h0 = nn.Parameter(torch.randn(4, 1, 5) * 0.5)
        self.c0 = nn.Parameter(torch.randn(4, 1, 5) * 0.5)
        self.proj = nn.Linear(10, 7)
        self.gru = nn.GRU(7, 4)

    def forward(self, ids):
        x, _ = self.lstm(self.embed(ids), (self.h0, self.c0))
        x = torch.tanh(self.proj(x)) * 2
        y, _ = self.gru(x.transpose(0, 1))
        return y


def test_any_wiring_between_modules_is_taken_as_it_is():
    torch.manual_seed(3)
    model = Wired().eval()
    adapter = ModelAdapter(model, lambda text: ([int(c) for c in text], [(i, i + 1) for i in
                                                range(len(text))]))
    enc = adapter.encode("0123456789876543210")
    names = adapter.state_names()
    states = adapter.extract(enc.ids, names)
    with torch.no_grad():
        x = model.embed(torch.as_tensor(enc.ids, dtype=torch.long))
        lstm = cell_reference(model.lstm, x, (model.h0, model.c0))
        gru = cell_reference(model.gru, torch.tanh(model.proj(lstm[-1]["h"])) * 2)
    expected = {"layers.0.h": lstm[0]["h"], "layers.0.c": lstm[0]["c"],
                "layers.1.h": lstm[1]["h"], "layers.1.c": lstm[1]["c"], "layers.2.h": gru[0]["h"]}
    assert names == list(expected)
    for name in names:
        assert states[name].shape == expected[name].shape
        np.testing.assert_allclose(states[name], expected[name].numpy(), atol=2e-6, err_msg=name)


def test_gates_come_from_the_same_recomputation(example):
    enc = example.encode(TEXT)
    states = example.extract(enc.ids, ["layers.0.c", "layers.0.f", "layers.0.i", "layers.2.z"])
    f, i = states["layers.0.f"], states["layers.0.i"]
    assert f.shape == i.shape == (len(enc), 24)
    assert 0 <= f.min() and f.max() <= 1 and 0 <= states["layers.2.z"].min()


# --- indexing from the CLI -----------------------------------------------------------------


@pytest.fixture(scope="module")
def example_index(tmp_path_factory, example) -> Path:
    out = tmp_path_factory.mktemp("adapter") / "idx"
    with torch_threads(1):
        assert main(["index", str(SENTENCES), "--model", EXAMPLE, "--out", str(out)]) == 0
    return out


def test_example_indexed_by_the_cli_equals_direct_extraction(example_index, example):
    with open_index(example_index) as index:
        assert index.state_names == example.state_names()
        assert index.n_docs == 6
        info = index.info()
        assert info.model["arch"] == "gru+lstm" and info.model["layers"] == 3
        assert index.vocab() == example.vocab()
        for doc in index.documents():
            text = index.document_text(doc.doc)
            enc = example.encode(text)
            tokens = index.tokens(doc.start, doc.end)
            assert list(tokens.token_id) == list(enc.ids)
            assert list(tokens.text) == [text[s:e] for s, e in zip(enc.starts, enc.ends)]
            reference = example_reference(example, enc.ids)
            for name in index.state_names:
                stored = np.asarray(index.states(name)[doc.start : doc.end])
                expected = to_stored(reference[name]).numpy().T
                # the same values up to float rounding, then one float16 rounding
                np.testing.assert_allclose(stored.astype(np.float32), expected.astype(np.float32),
                                           atol=1e-3, err_msg=name)


def test_torchscript_model_with_separate_tokenizer(tmp_path, example, example_index, capsys):
    path = tmp_path / "tagger.ts"
    torch.jit.script(example.model).save(str(path))
    out = tmp_path / "idx"
    assert main(["index", str(SENTENCES), "--model", str(path), "--out", str(out)]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert not out.exists()
    code = main(["index", str(SENTENCES), "--model", str(path), "--tokenizer",
                 f"{EXAMPLES / 'my_model.py'}:tokenizer", "--out", str(out), "--no-faiss"])
    assert code == 0
    with open_index(out) as scripted, open_index(example_index) as eager:
        assert scripted.state_names == eager.state_names
        for name in eager.state_names:
            a = np.asarray(scripted.states(name), dtype=np.float32)
            b = np.asarray(eager.states(name), dtype=np.float32)
            np.testing.assert_allclose(a, b, atol=1e-3, err_msg=name)


def test_torchscript_that_is_not_a_chain_is_refused(tmp_path):
    path = tmp_path / "wired.ts"
    torch.jit.script(Wired().eval()).save(str(path))
    with pytest.raises(AdapterError, match="not a chain"):
        load_adapter(path, tokenizer=lambda text: [0])


# --- refusals ------------------------------------------------------------------------------


class Looped(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)

    def forward(self, ids):
        state, outs = None, []
        for t in range(ids.shape[1]):
            y, state = self.lstm(self.embed(ids[:, t : t + 1]), state)
            outs.append(y)
        return torch.cat(outs, 1)


class Cells(nn.Module):
    def __init__(self):
        super().__init__()
        self.cell = nn.LSTMCell(3, 4)


def chars(text):
    return [1] * len(text), [(i, i + 1) for i in range(len(text))]


@pytest.mark.parametrize("model, message", [
    (nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 3)), "no nn.LSTM or nn.GRU"),
    (nn.LSTM(3, 4, proj_size=2), "proj_size"),
    (nn.RNN(3, 4), "nn.RNN: not supported"),
    (Cells(), "nn.LSTMCell: not supported"),
])
def test_unsupported_models_are_refused(model, message):
    with pytest.raises(AdapterError, match=message):
        ModelAdapter(model, chars)


def test_a_module_run_step_by_step_is_refused():
    adapter = ModelAdapter(Looped().eval(), chars)
    with pytest.raises(AdapterError, match="ran 3 times"):
        adapter.extract([1, 2, 3])


def test_a_batched_run_is_refused():
    class Batched(Looped):
        def forward(self, ids):
            return self.lstm(self.embed(ids.repeat(2, 1)))[0]

    with pytest.raises(AdapterError, match="batch of 2"):
        ModelAdapter(Batched().eval(), chars).extract([1, 2])


def test_bad_specs_name_the_problem(tmp_path):
    with pytest.raises(AdapterError, match="does not exist"):
        load_adapter(f"{tmp_path / 'missing.py'}:factory")
    with pytest.raises(AdapterError, match="has no attribute 'nothing'"):
        load_adapter(f"{EXAMPLES / 'my_model.py'}:nothing")
    bad = tmp_path / "bad.py"
    bad.write_text("def factory():\n    return 42\n")
    with pytest.raises(AdapterError, match="returned int"):
        load_adapter(f"{bad}:factory")
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(AdapterError, match="boom"):
        load_adapter(f"{bad}:factory")


def test_cli_refuses_resume_with_a_user_model(tmp_path, capsys):
    code = main(["index", str(SENTENCES), "--model", EXAMPLE, "--out", str(tmp_path / "i"),
                 "--append"])
    assert code == 2 and "need an lstmsearch checkpoint" in capsys.readouterr().err


# --- tokenizers ----------------------------------------------------------------------------


class IdsOnly:
    words = ["<unk>", "hello", "world", "!"]

    def encode(self, text):
        return [self.words.index(w) if w in self.words else 0
                for w in text.replace("!", " !").split()]

    def id_to_token(self, i):
        return self.words[i]


def test_tokenizer_giving_ids_only_is_aligned_to_the_text():
    tok = TokenizerAdapter(IdsOnly())
    enc = tok.encode("hello  world!")
    assert list(enc.ids) == [1, 2, 3]
    assert list(zip(enc.starts, enc.ends)) == [(0, 5), (7, 12), (12, 13)]
    assert tok.vocab() is None or tok.vocab() == IdsOnly.words


def test_tokenizers_library_and_lstmsearch_tokenizers():
    from lstmsearch.tokenize import train_tokenizer

    ours = train_tokenizer("word", ["a b c", "b c d"])
    tok = TokenizerAdapter(ours)
    assert tok.vocab() == ours.vocab()
    assert list(tok.encode("b d").ids) == list(ours.encode("b d").ids)
    import tokenizers
    from tokenizers import models, pre_tokenizers

    library = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "b": 1, "d": 2}, unk_token="[UNK]"))
    library.pre_tokenizer = pre_tokenizers.Whitespace()
    hf = TokenizerAdapter(library)
    enc = hf.encode("b  d x")
    assert list(enc.ids) == [1, 2, 0]
    assert list(zip(enc.starts, enc.ends)) == [(0, 1), (3, 4), (5, 6)]
    assert hf.vocab() == ["[UNK]", "b", "d"]


def test_bad_tokenizer_output_is_refused():
    with pytest.raises(AdapterError, match="span"):
        TokenizerAdapter(lambda text: ([1], [(0, 99)])).encode("abc")
    with pytest.raises(AdapterError, match="cannot find token"):
        TokenizerAdapter(IdsOnly()).encode("bye")  # id 0 '<unk>' is not in the text

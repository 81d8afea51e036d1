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


# --- over an index --------------------------------------------------------------------------


def test_index_gates_equal_a_run_over_the_whole_document(tiny_index):
    """Gates of a span in the middle of a document are those of a run over the document
    (the prefix is run again), with the span's global positions and tokens; the run's cell
    state is the stored one."""
    from lstmsearch.analysis.gates import index_gates
    from lstmsearch.extract import extract
    from lstmsearch.models import load_model

    lm = load_model(tiny_index.path / "model.pt")
    doc = 3
    a, b = int(tiny_index.doc_starts[doc]), int(tiny_index.doc_starts[doc + 1])
    start, end = a + 7, b - 3
    ids = tiny_index.tokens(a, b).token_id.astype(np.int64)
    full = model_gates(lm.model, [ids], layer=1, candidate=True)
    act = index_gates(tiny_index, lm.model, 1, start, end, candidate=True)
    assert act.gates == ("i", "f", "o") and act.units == tuple(range(12))
    np.testing.assert_array_equal(act.positions, np.arange(start, end))
    assert act.tokens == tiny_index.tokens(start, end).text
    for g in act.gates:
        np.testing.assert_allclose(act.series[g], full.series[g][start - a : end - a], atol=1e-6)
    np.testing.assert_allclose(act.candidate, full.candidate[start - a : end - a], atol=1e-6)
    # statistics cover the span only
    window = {g: full.series[g][start - a : end - a] for g in act.gates}
    expected = gate_activity(window, layer=1, arch="lstm")
    assert len(act.stats) == len(expected.stats) == 3 * 12
    for mine, theirs in zip(act.stats, expected.stats):
        assert (mine.gate, mine.unit) == (theirs.gate, theirs.unit)
        assert mine.mean == pytest.approx(theirs.mean, abs=1e-6)
        assert mine.high_fraction == theirs.high_fraction
    assert act.layer_saturation.keys() == expected.layer_saturation.keys()
    # the run is the indexer's: its cell state is the stored one (to float16 precision)
    c = extract(lm.model, [ids], ["layers.1.c"])[0]["layers.1.c"]
    stored = np.asarray(tiny_index.states("layers.1.c")[a:b], dtype=np.float32)
    np.testing.assert_allclose(c, stored, atol=2e-3, rtol=2e-3)


def test_index_gates_across_documents_and_a_cut_prefix(tiny_index):
    """A span over a document boundary runs each document from a zero state; with a short
    `max_prefix` the run starts that many tokens before the span."""
    from lstmsearch.analysis.gates import gate_run_start, index_gates
    from lstmsearch.models import load_model

    lm = load_model(tiny_index.path / "model.pt")
    starts = tiny_index.doc_starts
    a, mid, b = int(starts[4]), int(starts[5]), int(starts[6])
    start, end = mid - 5, mid + 6
    docs = [tiny_index.tokens(x, y).token_id.astype(np.int64) for x, y in ((a, mid), (mid, b))]
    full = model_gates(lm.model, docs, layer=0, units=[2, 7], gates=["f"])
    act = index_gates(tiny_index, lm.model, 0, start, end, units=[2, 7], gates=["f"])
    np.testing.assert_allclose(act.series["f"], full.series["f"][start - a : end - a], atol=1e-6)
    assert act.candidate is None and act.candidate_name == "g"

    assert gate_run_start(tiny_index, start) == a
    assert gate_run_start(tiny_index, start, max_prefix=4) == start - 4
    cut = index_gates(tiny_index, lm.model, 0, start, end, units=[2], max_prefix=4)
    ids = tiny_index.tokens(start - 4, end).token_id.astype(np.int64)
    from_cut = model_gates(lm.model, [ids[: mid - start + 4], ids[mid - start + 4 :]], layer=0,
                           units=[2])
    np.testing.assert_allclose(cut.series["i"], from_cut.series["i"][4:], atol=1e-6)


def test_index_gates_name_bad_input(tiny_index):
    from lstmsearch.analysis.gates import index_gates
    from lstmsearch.models import load_model

    lm = load_model(tiny_index.path / "model.pt")
    n = tiny_index.n_tokens
    with pytest.raises(ValueError, match=rf"\[{n}, {n + 2}\)"):
        index_gates(tiny_index, lm.model, 0, n, n + 2)
    with pytest.raises(ValueError, match="unit 12"):
        index_gates(tiny_index, lm.model, 0, 0, 5, units=[12])
    with pytest.raises(ValueError, match="'g' is not a sigmoid gate"):
        index_gates(tiny_index, lm.model, 0, 0, 5, gates=["g"])


@pytest.mark.skipif(not PARENS.exists(), reason="shipped parens model not present")
def test_parens_depth_unit_gates_write_on_opening_brackets(tmp_path):
    """How the depth cell (layers.0.c unit 51, r = -0.95 with depth) counts, read from its
    gates over an index: at "(" the write i·g is strongly negative, with the sign of r
    (deeper: lower); at ")" the input gate is wide open and the write is on average near
    zero, and the forget gate is lower than at "(", so the cell relaxes back up towards
    zero. Measured on twelve documents (corpus seeds 0 and 3): i·g -0.78 at "(" against
    -0.03 at ")"; i 0.97 at ")" (never below 0.86); f 0.72 at "(" against 0.59 at ")"."""
    from indexer.build import build_index
    from lstmsearch.analysis.gates import index_gates
    from lstmsearch.corpus import load_corpus
    from lstmsearch.index import open_index
    from lstmsearch.models import load_model

    out = tmp_path / "parens"
    build_index(load_corpus("parens", limit=12), PARENS, out, progress=False)
    unit = 51
    with open_index(out) as index:
        model = load_model(index.path / "model.pt").model
        cells = np.asarray(index.states("layers.0.c")[:, unit], dtype=np.float64)
        r = np.corrcoef(cells, index.track("depth"))[0, 1]
        assert r < -0.9
        texts = np.array(index.tokens(0, index.n_tokens).text)
        act = index_gates(index, model, 0, 0, index.n_tokens, units=[unit], candidate=True)
    i, f = act.series["i"][:, 0], act.series["f"][:, 0]
    write = i * act.candidate[:, 0]
    opening, closing = texts == "(", texts == ")"
    assert opening.sum() > 100 and closing.sum() > 100
    assert np.sign(write[opening].mean()) == np.sign(r)
    assert write[opening].mean() < -0.7
    assert write[closing].mean() > write[opening].mean() + 0.5
    assert i[closing].min() > 0.8 and i[closing].mean() > 0.9
    assert f[opening].mean() > f[closing].mean() + 0.07


def test_index_gates_of_a_bidirectional_model_read_the_whole_document(tmp_path):
    """The backward direction reads a document from its end: the gates of a span in the
    middle are those of a run over the whole document, in both halves of the units."""
    from conftest import make_tiny_model, tiny_parens

    from indexer.build import build_index
    from lstmsearch.analysis.gates import gate_run_end, index_gates
    from lstmsearch.index import open_index
    from lstmsearch.models import load_model

    corpus = tiny_parens(4)
    path = make_tiny_model(tmp_path / "bi.pt", corpus, layers=1, hidden=5, bidirectional=True)
    build_index(corpus, path, tmp_path / "index", progress=False)
    lm = load_model(path)
    with open_index(tmp_path / "index") as index:
        doc = 2
        a, b = int(index.doc_starts[doc]), int(index.doc_starts[doc + 1])
        start, end = a + 5, b - 6
        assert gate_run_end(index, end, True) == b
        assert gate_run_end(index, end, True, max_prefix=2) == end + 2
        assert gate_run_end(index, end, False) == end
        ids = index.tokens(a, b).token_id.astype(np.int64)
        full = model_gates(lm.model, [ids], layer=0)
        act = index_gates(index, lm.model, 0, start, end)
        assert act.units == tuple(range(10))
        for g in act.gates:
            np.testing.assert_allclose(act.series[g], full.series[g][start - a : end - a],
                                       atol=1e-6)

"""Attention models: hand-set weights give the hand-computed attention, the attention carried
across windows equals one pass, the indexer stores exactly the attention of a step-by-step
reference as tracks, and the heatmap and worst-token views read them back."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import attention_model_index

from lstmsearch.attention import (
    ENTROPY_TRACK,
    NoAttentionError,
    attends_like,
    attention_tracks,
    heatmap,
    offset_track,
    track_names,
    weight_track,
    worst_tokens,
)
from lstmsearch.cli import main
from lstmsearch.extract import iter_states
from lstmsearch.index import open_index
from lstmsearch.models import LanguageModel, ModelConfig
from lstmsearch.train import TrainConfig


def hand_model(window: int = 2) -> LanguageModel:
    """An attention LSTM of 2 units whose query and key are the identity."""
    model = LanguageModel(ModelConfig("lstm", vocab_size=5, embed_dim=3, hidden=2, layers=1,
                                      attention=window))
    with torch.no_grad():
        model.query.weight.copy_(torch.eye(2))
        model.key.weight.copy_(torch.eye(2))
    return model.eval()


def test_hand_set_attention_equals_a_hand_computation():
    top = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 1.0]]])
    context, weights, memory = hand_model(2).attend(top)
    # t=0 looks nowhere; t=1 can only look 1 back; t=2: scores (top_2 . top_1, top_2 . top_0)
    # / sqrt(2) = (1, 2) / sqrt(2)
    near = 1 / (1 + math.exp(1 / math.sqrt(2)))
    want = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [near, 1 - near]]])
    torch.testing.assert_close(weights, want)
    torch.testing.assert_close(context[0, 0], torch.zeros(2))
    torch.testing.assert_close(context[0, 1], top[0, 0])
    torch.testing.assert_close(context[0, 2], near * top[0, 1] + (1 - near) * top[0, 0])
    past, n_past = memory
    torch.testing.assert_close(past[:, 0], top[0, 1:])  # the last W outputs, (W, B, H)
    assert n_past.flatten().tolist() == [2.0]


@pytest.mark.parametrize("split", [1, 2, 5, 7])
def test_attention_carried_across_windows_equals_one_pass(split):
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig("gru", vocab_size=7, embed_dim=4, hidden=5, layers=2,
                                      attention=3)).eval()
    ids = torch.randint(0, 7, (2, 11))
    with torch.no_grad():
        whole, _ = model(ids)
        logits, state = model(ids[:, :split])
        rest, _ = model(ids[:, split:], state)
    torch.testing.assert_close(torch.cat([logits, rest], dim=1), whole)


def reference_attention(model: LanguageModel, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Attention weights (T, W) and surprisal (T,) of one document, step by step: the top
    layer's outputs of the whole document, then each step's softmax over the dot products
    with the W outputs before it, written out."""
    with torch.no_grad():
        top, _ = model.run_stack(model.forward_layers, torch.as_tensor(ids)[None])
        top = top[0]
        window, h = model.config.attention, top.shape[1]
        weights = np.zeros((len(ids), window))
        surprisal = np.full(len(ids), np.nan)
        for t in range(len(ids)):
            back = list(range(1, min(window, t) + 1))
            context = torch.zeros(h)
            if back:
                q = model.query(top[t])
                scores = torch.stack([q @ model.key(top[t - k]) for k in back]) / math.sqrt(h)
                a = torch.softmax(scores, dim=0)
                weights[t, : len(back)] = a.numpy()
                context = sum(a[i] * top[t - k] for i, k in enumerate(back))
            logp = torch.log_softmax(model.head(torch.cat([top[t], context])), dim=-1)
            if t + 1 < len(ids):
                surprisal[t + 1] = -float(logp[ids[t + 1]])
    return weights, surprisal


@pytest.mark.parametrize("arch", ["lstm", "gru"])
def test_extraction_gives_the_step_by_step_attention_and_surprisal(arch):
    torch.manual_seed(1)
    model = LanguageModel(ModelConfig(arch, vocab_size=9, embed_dim=4, hidden=6, layers=2,
                                      attention=4)).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 9, n) for n in (13, 1, 6, 9, 3)]  # ragged, one of one token
    got_w = {d: np.zeros((len(docs[d]), 4)) for d in range(len(docs))}
    got_s = {d: np.full(len(docs[d]), np.nan) for d in range(len(docs))}
    for block in iter_states(model, docs, ["layers.1.h"], chunk=3, lanes=2, surprisal=True):
        for j, d in enumerate(block.docs):
            a, n = int(block.starts[j]), int(block.lengths[j])
            got_w[d][a : a + n] = block.attention[j, :n]
            got_s[d][a : a + n] = block.surprisal[j, :n]
    for d, ids in enumerate(docs):
        want_w, want_s = reference_attention(model, ids)
        np.testing.assert_allclose(got_w[d], want_w, atol=1e-6)
        np.testing.assert_allclose(got_s[d], want_s, atol=1e-5)


def test_stored_tracks_equal_a_brute_force_ranking():
    rng = np.random.default_rng(3)
    w = rng.dirichlet(np.ones(6), size=20)
    w[0] = 0  # a document's first token
    w[1] = [0.5, 0.5, 0, 0, 0, 0]  # a tie: the nearer position first
    tracks = attention_tracks(w, k=3)
    assert sorted(tracks) == sorted(track_names(3))
    assert sorted(attention_tracks(w[:, :2], k=3)) == sorted(track_names(2))  # W = 2
    assert np.isnan([tracks[n][0] for n in tracks]).all()
    assert (tracks[offset_track(1)][1], tracks[offset_track(2)][1]) == (1, 2)
    assert np.isnan(tracks[offset_track(3)][1])  # a zero weight is not a place looked at
    for t in range(2, 20):
        ranked = sorted(range(6), key=lambda j: (-w[t, j], j))[:3]
        for r, j in enumerate(ranked, start=1):
            assert tracks[offset_track(r)][t] == j + 1
            assert tracks[weight_track(r)][t] == pytest.approx(w[t, j])
        assert tracks[ENTROPY_TRACK][t] == pytest.approx(-(w[t] * np.log(w[t])).sum())


@pytest.fixture(scope="module")
def attention_index(tmp_path_factory):
    """A char attention LSTM (untrained, seeded) and its index over a few documents."""
    return attention_model_index(tmp_path_factory.mktemp("attention"),
                                 ["(()(1))", "((2)())(", "()", "(((3)))()"], window=3, seed=2,
                                 segment_docs=2)


def test_an_index_stores_each_tokens_attention(attention_index):
    path, model, ids = attention_index
    weights = np.concatenate([reference_attention(model, np.asarray(d))[0] for d in ids])
    want = attention_tracks(weights)
    with open_index(path) as index:
        assert set(track_names(3)) <= set(index.track_names())  # a window of 3: 3 ranks
        for name, values in want.items():
            np.testing.assert_allclose(index.track(name), values, atol=1e-5, err_msg=name)


def test_heatmap_rows_are_the_span_and_columns_where_it_looks(attention_index):
    path, model, ids = attention_index
    weights = reference_attention(model, np.asarray(ids[0]))[0]
    with open_index(path) as index:
        got = heatmap(index, 2, 6)
        assert got.rows == (2, 3, 4, 5)
        assert got.weights.shape == (4, len(got.columns))
        for i, t in enumerate(got.rows):
            for k in range(1, 4):  # every weight of a window of 3 is among the top 4
                if t - k >= 0:
                    j = got.columns.index(t - k)
                    assert got.weights[i, j] == pytest.approx(weights[t, k - 1], abs=1e-6)
        np.testing.assert_allclose(got.weights.sum(axis=1), 1.0, atol=1e-5)
        assert got.row_text == tuple(index.text(p, p + 1) for p in got.rows)
        with pytest.raises(ValueError, match="out of range"):
            heatmap(index, 5, 500)


def test_worst_tokens_show_where_their_prediction_looked(attention_index):
    path, _, _ = attention_index
    with open_index(path) as index:
        rows = worst_tokens(index, 3)
        surprisal = index.track("surprisal")
        assert [r.pos for r in rows] == list(np.argsort(-np.nan_to_num(surprisal, nan=-1),
                                                        kind="stable")[:3])
        starts = {d.start for d in index.documents()}
        for r in rows:
            at = r.pos - 1  # the prediction was made at the token before
            if at in starts:  # a document's first token looks nowhere
                assert r.positions == () and np.isnan(r.entropy)
                continue
            assert r.positions[0] == at - index.track(offset_track(1))[at]
            assert r.weights[0] == pytest.approx(index.track(weight_track(1))[at])
        assert any(r.positions for r in worst_tokens(index, 20))


def test_cli_attention_json_and_errors(attention_index, tiny_index_path, capsys):
    path, _, _ = attention_index
    assert main(["analyze", "attention", str(path), "--start", "1", "--end", "4",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rows"] == [1, 2, 3]
    assert main(["analyze", "attention", str(path), "--worst", "2"]) == 0
    assert "looked at" in capsys.readouterr().out
    assert main(["analyze", "attention", str(path)]) == 2
    assert "--worst K" in capsys.readouterr().err
    assert main(["analyze", "attention", str(tiny_index_path), "--worst", "2"]) == 2
    assert "stores no attention" in capsys.readouterr().err
    with open_index(tiny_index_path) as plain, pytest.raises(NoAttentionError):
        heatmap(plain, 0, 3)


def test_bad_attention_settings_are_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match="larger than the training context"):
        TrainConfig(corpus="parens", attention=200, seq_len=128)
    with pytest.raises(ValueError, match="forward-only"):
        TrainConfig(corpus="parens", attention=8, bidirectional=True)
    with pytest.raises(ValueError, match="attention must be a window"):
        ModelConfig("lstm", vocab_size=5, attention=-1)
    assert main(["train", "parens", "--attention", "0", "--out", str(tmp_path / "m.pt")]) == 2
    assert "--attention: must be" in capsys.readouterr().err
    assert not (tmp_path / "m.pt").exists()


def test_analyses_that_read_the_head_alone_refuse_an_attention_model():
    from lstmsearch.analysis.ablation import check_clamp
    from lstmsearch.analysis.gradients import gradient_flow
    from lstmsearch.analysis.saliency import saliency

    model = hand_model()
    for run in (lambda: saliency(model, [1, 2, 3], 1),
                lambda: gradient_flow(model, [np.array([1, 2, 3, 4])]),
                lambda: check_clamp(model, 0, "c", 0)):
        with pytest.raises(ValueError, match="not available for an attention model"):
            run()


def test_an_attention_model_trains_resumes_and_loads(tmp_path):
    from lstmsearch.models import load_model, read_checkpoint
    from lstmsearch.train import train

    folder = tmp_path / "corpus"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):  # "ab" repeated with noise: the token 2 back predicts the next
        (folder / f"d{i}.txt").write_text("".join("ab"[j % 2] if rng.random() > 0.05 else "c"
                                                  for j in range(200)))
    config = dict(corpus=str(folder), hidden=12, layers=1, embed_dim=6, seq_len=16, batch=4,
                  lr=0.02, val_fraction=0.2, checkpoint_every=10, attention=4, epochs=5)
    short = train(TrainConfig(**config, steps=2), tmp_path / "short.pt")
    train(TrainConfig(**config, steps=10), tmp_path / "m.pt")
    result = train(TrainConfig(**config, steps=40), tmp_path / "m.pt", resume=True)
    assert result.steps == 40 and result.val_perplexity < short.val_perplexity
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config.attention == 4
    assert read_checkpoint(tmp_path / "m.pt")["config"]["attention"] == 4


def test_attends_like_equals_a_brute_force_cosine_over_every_span(attention_index):
    path, _, _ = attention_index
    with open_index(path) as index:
        n = index.n_tokens
        offsets = np.stack([index.track(offset_track(r)) for r in (1, 2, 3)], axis=1)
        weights = np.stack([index.track(weight_track(r)) for r in (1, 2, 3)], axis=1)

        def vector(t: int) -> np.ndarray:
            v = np.zeros(3)
            for o, w in zip(offsets[t], weights[t], strict=True):
                if np.isfinite(o):
                    v[int(o) - 1] = w
            return v

        def cosine(a: np.ndarray, b: np.ndarray) -> float:
            na, nb = np.linalg.norm(a), np.linalg.norm(b)
            return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0

        doc = [index.doc_of(t) for t in range(n)]
        for start, end in ((2, 4), (9, 12), (20, 21)):
            length = end - start
            want = []
            for p in range(n - length + 1):
                if doc[p] != doc[p + length - 1] or p + length > start and p < end:
                    continue
                score = np.mean([cosine(vector(p + i), vector(start + i)) for i in range(length)])
                want.append((-score, p))
            want.sort()
            got = attends_like(index, start, end, limit=8)
            assert [m.start for m in got] == [p for _, p in want[:8]]
            np.testing.assert_allclose([m.score for m in got], [-s for s, _ in want[:8]],
                                       atol=1e-6)
            assert all(m.end - m.start == length and doc[m.start] == m.document for m in got)
        with pytest.raises(ValueError, match="out of range"):
            attends_like(index, 3, n + 1)


def test_cli_match_by_attention(attention_index, capsys):
    path, _, _ = attention_index
    assert main(["match", str(path), "--start", "2", "--end", "4", "--attention", "--limit",
                 "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["query"] == {"start": 2, "end": 4, "text": out["query"]["text"]}
    assert len(out["matches"]) == 3 and {"document", "start", "end", "score",
                                         "text"} <= set(out["matches"][0])
    assert main(["match", str(path), "--start", "2", "--end", "4"]) == 2
    assert "needs --threshold" in capsys.readouterr().err

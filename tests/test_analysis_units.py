"""Unit structure: expected responses by hand, co-clustering of a block matrix,
correlation with a track."""

from __future__ import annotations

import numpy as np
import pytest

from lstmsearch.analysis import units as units_mod
from lstmsearch.analysis.units import (
    co_cluster,
    correlate_units,
    expected_response,
    kmeans,
    rank_units,
)


def hand_sequence():
    """Two documents of tokens with 2-unit states; h before each document is 0."""
    ids = np.array([1, 2, 1, 3, 2, 1])
    states = np.array([
        [1.0, 0.0],   # doc 0: reads 1, delta (1, 0)
        [1.0, 2.0],   # reads 2, delta (0, 2)
        [3.0, 2.0],   # reads 1, delta (2, 0)
        [0.0, 1.0],   # doc 1: reads 3, delta (0, 1) from zero
        [0.0, 4.0],   # reads 2, delta (0, 3)
        [-1.0, 4.0],  # reads 1, delta (-1, 0)
    ])
    return ids, states, np.array([0, 3, 6])


def test_expected_response_equals_the_hand_computed_means():
    ids, states, starts = hand_sequence()
    resp = expected_response(states, ids, starts, top=3, vocab=["[UNK]", "a", "b", "c"])
    assert resp.token_ids.tolist() == [1, 2, 3]  # by frequency, ties by id
    assert resp.words == ("a", "b", "c")
    assert resp.counts.tolist() == [3, 2, 1]
    np.testing.assert_allclose(resp.response, [
        [(1 + 2 - 1) / 3, 0.0],
        [0.0, (2 + 3) / 2],
        [0.0, 1.0],
    ])


def test_expected_response_streams_in_chunks(monkeypatch):
    ids, states, starts = hand_sequence()
    whole = expected_response(states, ids, starts, words=[3, 1])
    monkeypatch.setattr(units_mod, "CHUNK", 2)  # chunk borders inside documents and at them
    chunked = expected_response(states, ids, starts, words=[3, 1])
    np.testing.assert_allclose(chunked.response, whole.response)
    np.testing.assert_allclose(whole.response, [[0.0, 1.0], [2 / 3, 0.0]])
    # a word never seen has NaN response
    assert np.isnan(expected_response(states, ids, starts, words=[7]).response).all()


def test_co_clustering_finds_the_blocks():
    rng = np.random.default_rng(0)
    m = np.zeros((6, 5))
    m[:3, :2] = 1 + rng.random((3, 2))  # words 0-2 with units 0-1
    m[3:, 2:] = -(1 + rng.random((3, 3)))  # words 3-5 with units 2-4, negative responses
    m += 0.01 * rng.random(m.shape)
    cc = co_cluster(m, 2, words=list("abcdef"))
    w, u = cc.word_labels, cc.unit_labels
    assert len(set(w[:3])) == 1 and len(set(w[3:])) == 1 and w[0] != w[3]
    assert u[0] == u[1] == w[0] and u[2] == u[3] == u[4] == w[3]
    by_words = {c.words: c.units for c in cc.clusters}
    assert by_words[("a", "b", "c")] == (0, 1) and by_words[("d", "e", "f")] == (2, 3, 4)
    assert sorted(cc.word_order.tolist()) == list(range(6))
    with pytest.raises(ValueError, match="n_clusters"):
        co_cluster(m, 7)


def test_kmeans_is_seeded():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 0.1, (10, 2)), rng.normal(5, 0.1, (10, 2))])
    a, b = kmeans(x, 2, seed=4), kmeans(x, 2, seed=4)
    np.testing.assert_array_equal(a, b)
    assert len(set(a[:10])) == 1 and len(set(a[10:])) == 1 and a[0] != a[10]


def test_correlation_with_a_track():
    track = np.array([0.0, 1.0, 2.0, 3.0, np.nan, 1.0])
    states = np.stack([track * 2 + 1, -track, np.ones(6), [5, 1, 0, 2, 9, 1]], axis=1)
    states = np.nan_to_num(states, nan=100.0)  # the NaN step must be ignored
    r, n = correlate_units(states.astype(np.float16), track)
    assert n == 5
    np.testing.assert_allclose(r[:3], [1.0, -1.0, 0.0], atol=1e-6)
    ranked = rank_units(states, track, top=2)
    assert [c.unit for c in ranked] == [0, 1]
    assert ranked[1].r == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="do not line up"):
        correlate_units(states, track[:3])


# --- over an index -----------------------------------------------------------------------------


def test_sample_end_keeps_whole_documents():
    starts = np.array([0, 10, 25, 40])
    assert units_mod.sample_end(starts, 30) == (25, 2)
    assert units_mod.sample_end(starts, 25) == (25, 2)
    assert units_mod.sample_end(starts, 1000) == (40, 3)
    assert units_mod.sample_end(starts, 7) == (7, 0)  # the first document alone is longer
    with pytest.raises(ValueError, match="max_tokens"):
        units_mod.sample_end(starts, 0)


def api_response(index, state, end, n_docs, top, min_count):
    """`expected_response` called directly on the index's first `end` tokens."""
    ids = index.tokens(0, end).token_id
    starts = index.doc_starts[: n_docs + 1] if n_docs else np.array([0, end])
    return expected_response(np.asarray(index.states(state))[:end], ids, starts, top=top,
                             min_count=min_count, vocab=index.vocab())


def test_index_response_reads_whole_documents_up_to_the_cap(tiny_index):
    starts = tiny_index.doc_starts
    cap = int(starts[7]) + 3  # inside document 7: it is left out whole
    found = units_mod.index_response(tiny_index, "layers.1.c", words=6, min_count=2,
                                     max_tokens=cap)
    assert (found.n_tokens, found.n_docs) == (int(starts[7]), 7)
    assert found.sampled and found.total_tokens == tiny_index.n_tokens
    want = api_response(tiny_index, "layers.1.c", int(starts[7]), 7, 6, 2)
    assert found.response.words == want.words and len(want.words) == 6
    np.testing.assert_array_equal(found.response.token_ids, want.token_ids)
    np.testing.assert_array_equal(found.response.counts, want.counts)
    np.testing.assert_allclose(found.response.response, want.response)
    # uncapped: every token, every type seen at least min_count times
    whole = units_mod.index_response(tiny_index, "layers.0.h", words=None, min_count=1)
    assert not whole.sampled and whole.n_docs == tiny_index.n_docs
    assert whole.response.counts.sum() == tiny_index.n_tokens
    with pytest.raises(ValueError, match="words"):
        units_mod.index_response(tiny_index, "layers.0.h", words=0)


def test_index_units_equals_the_analyses_called_directly(tiny_index):
    result = units_mod.index_units(tiny_index, "layers.1.c", words=8, min_count=1,
                                   n_clusters=3, track="depth", seed=2, top=5)
    end = tiny_index.n_tokens
    want = api_response(tiny_index, "layers.1.c", end, tiny_index.n_docs, 8, 1)
    np.testing.assert_allclose(result.response.response.response, want.response)
    cc = co_cluster(want.response, 3, seed=2, words=want.words, token_ids=want.token_ids)
    np.testing.assert_array_equal(result.co_clustering.word_order, cc.word_order)
    np.testing.assert_array_equal(result.co_clustering.unit_order, cc.unit_order)
    assert result.co_clustering.clusters == cc.clusters
    ranked = rank_units(tiny_index.states("layers.1.c"), tiny_index.track("depth"), top=5)
    assert [c.unit for c in result.ranking] == [c.unit for c in ranked]
    # the index's ranking sums float16 columns in float32 blocks (Index.neurons.correlate)
    np.testing.assert_allclose([c.r for c in result.ranking], [c.r for c in ranked], atol=1e-5)
    assert result.track == "depth"
    plain = units_mod.index_units(tiny_index, "layers.1.c", words=8)
    assert plain.ranking is None and plain.track is None


def test_cluster_response_clamps_the_cluster_count():
    ids, states, starts = hand_sequence()
    resp = expected_response(states, ids, starts, top=3)  # 3 words x 2 units
    cc = units_mod.cluster_response(resp, 5)
    assert cc.n_clusters == 2
    one = expected_response(states, ids, starts, top=1)
    assert units_mod.cluster_response(one, 4) is None  # one word: nothing to co-cluster
    with pytest.raises(ValueError, match="n_clusters"):
        units_mod.cluster_response(resp, 1)

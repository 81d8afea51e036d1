"""Surprisal / error analysis from arrays, checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lstmsearch.analysis.surprisal import (
    analyze_surprisal,
    compute_surprisal,
    document_losses,
    type_losses,
    worst_spans,
    worst_tokens,
)
from lstmsearch.models import LanguageModel, ModelConfig

NAN = float("nan")
# two documents: [0, 4) and [4, 7); the first token of each has no prediction
IDS = np.array([1, 2, 3, 2, 1, 3, 3])
SURPRISAL = np.array([NAN, 1.0, 5.0, 2.0, NAN, 4.0, 0.5])
STARTS = np.array([0, 4, 7])
VOCAB = ["[UNK]", "a", "b", "c"]


def test_worst_tokens_skip_nan_and_name_the_document():
    worst = worst_tokens(IDS, SURPRISAL, STARTS, k=3, vocab=VOCAB)
    assert [w.pos for w in worst] == [2, 5, 3]
    assert [w.doc for w in worst] == [0, 1, 0]
    assert [w.pos_in_doc for w in worst] == [2, 1, 3]
    assert [w.text for w in worst] == ["c", "c", "b"]
    assert worst[0].surprisal == 5.0
    assert len(worst_tokens(IDS, SURPRISAL, STARTS, k=100)) == 5


def test_worst_spans_are_non_overlapping_and_stay_in_a_document():
    spans = worst_spans(SURPRISAL, STARTS, width=2, k=5, token_texts=list("xyzwuvt"))
    # window means: doc 0: [0,2)=1, [1,3)=3, [2,4)=3.5; doc 1: [4,6)=4, [5,7)=2.25
    assert [(s.start, s.end) for s in spans] == [(4, 6), (2, 4), (0, 2)]
    assert [s.mean_surprisal for s in spans] == [4.0, 3.5, 1.0]
    assert spans[0].doc == 1 and spans[0].tokens == ("u", "v")
    # a document shorter than the width is one window
    (only,) = worst_spans(np.array([NAN, 2.0]), None, width=5, k=3)
    assert (only.start, only.end, only.mean_surprisal) == (0, 2, 2.0)
    with pytest.raises(ValueError, match="width"):
        worst_spans(SURPRISAL, STARTS, width=0)


def test_document_perplexity():
    docs = document_losses(SURPRISAL, STARTS)
    assert docs[0].n_scored == 3 and docs[0].mean_surprisal == pytest.approx(8 / 3)
    assert docs[0].perplexity == pytest.approx(math.exp(8 / 3))
    assert (docs[1].start, docs[1].end, docs[1].mean_surprisal) == (4, 7, 2.25)


def test_type_losses_hardest_first_with_loss_share():
    types = type_losses(IDS, SURPRISAL, VOCAB, min_count=1)
    # scored: b -> 1.0, 2.0 ; c -> 5.0, 4.0, 0.5 ; a never scored
    assert [t.text for t in types] == ["c", "b"]
    assert types[0].count == 3 and types[0].mean_surprisal == pytest.approx(9.5 / 3)
    assert types[0].loss_share == pytest.approx(9.5 / 12.5)
    assert [t.text for t in type_losses(IDS, SURPRISAL, VOCAB, min_count=3)] == ["c"]


def test_report_totals_and_histogram():
    rep = analyze_surprisal(IDS, SURPRISAL, STARTS, vocab=VOCAB, k=2, width=2, min_count=1, bins=5)
    assert rep.n_tokens == 7 and rep.n_scored == 5
    assert rep.mean_surprisal == pytest.approx(12.5 / 5)
    assert rep.perplexity == pytest.approx(math.exp(2.5))
    assert rep.histogram_counts.sum() == 5 and rep.histogram_edges[-1] == 5.0
    assert len(rep.worst_tokens) == 2 and len(rep.hardest_types) == 2


def test_bad_arrays_are_refused_by_name():
    with pytest.raises(ValueError, match="doc_starts"):
        worst_tokens(IDS, SURPRISAL, np.array([0, 3]))
    with pytest.raises(ValueError, match="shapes"):
        worst_tokens(IDS[:3], SURPRISAL)


def test_compute_surprisal_equals_the_model_cross_entropy():
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch="gru", vocab_size=5, embed_dim=3, hidden=4, layers=2)).eval()
    docs = [np.array([1, 2, 3, 4, 0]), np.array([2, 2])]
    got = compute_surprisal(model, docs)
    assert np.isnan(got[0]) and np.isnan(got[5])
    with torch.no_grad():
        logits, _ = model(torch.from_numpy(docs[0]).unsqueeze(0))
        want = torch.nn.functional.cross_entropy(logits[0, :-1], torch.from_numpy(docs[0][1:]), reduction="none")
    np.testing.assert_allclose(got[1:5], want.numpy(), rtol=1e-5)

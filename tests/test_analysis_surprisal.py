"""Surprisal / error analysis from arrays, checked by hand; over a whole index, checked
against the analysis of freshly computed surprisal."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import edit_segment_rows

from indexer.annotate import annotate_index
from lstmsearch.analysis.surprisal import (
    SURPRISAL_TRACK,
    SurprisalReport,
    analyze_surprisal,
    compute_surprisal,
    document_losses,
    index_report,
    index_surprisal,
    type_losses,
    worst_documents,
    worst_spans,
    worst_tokens,
)
from lstmsearch.index import open_index
from lstmsearch.models import LanguageModel, ModelConfig, load_model

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


# --- over an index --------------------------------------------------------------------------


def index_copy(source: Path, out: Path, surprisal: np.ndarray | None) -> Path:
    """A copy of an index whose surprisal track holds `surprisal` (None: it has none)."""
    shutil.copytree(source, out)
    edit_segment_rows(out, "DELETE FROM tracks WHERE name = ?", [SURPRISAL_TRACK])
    if surprisal is not None:
        values = out.parent / f"{out.name}-surprisal.npy"
        np.save(values, surprisal)
        annotate_index(out, SURPRISAL_TRACK, values)
    return out


def fresh_surprisal(index, model_path: Path) -> np.ndarray:
    """The surprisal of every token of an index, computed now with the model."""
    ids = index.tokens(0, index.n_tokens).token_id.astype(np.int64)
    starts = index.doc_starts
    model = load_model(model_path).model
    return compute_surprisal(model, [ids[a:b] for a, b in zip(starts[:-1], starts[1:])])


def assert_same_report(got: SurprisalReport, want: SurprisalReport) -> None:
    assert (got.n_tokens, got.n_scored) == (want.n_tokens, want.n_scored)
    assert got.mean_surprisal == pytest.approx(want.mean_surprisal, rel=1e-6)
    assert [(t.pos, t.doc, t.pos_in_doc, t.token_id, t.text) for t in got.worst_tokens] == [
        (t.pos, t.doc, t.pos_in_doc, t.token_id, t.text) for t in want.worst_tokens
    ]
    assert [t.surprisal for t in got.worst_tokens] == pytest.approx(
        [t.surprisal for t in want.worst_tokens], rel=1e-5)
    assert [(s.start, s.end, s.doc, s.tokens) for s in got.worst_spans] == [
        (s.start, s.end, s.doc, s.tokens) for s in want.worst_spans
    ]
    assert [(d.doc, d.start, d.end, d.n_scored) for d in got.documents] == [
        (d.doc, d.start, d.end, d.n_scored) for d in want.documents
    ]
    assert [d.perplexity for d in got.documents] == pytest.approx(
        [d.perplexity for d in want.documents], rel=1e-5)
    assert [(t.token_id, t.text, t.count) for t in got.hardest_types] == [
        (t.token_id, t.text, t.count) for t in want.hardest_types
    ]
    np.testing.assert_array_equal(got.histogram_counts, want.histogram_counts)
    np.testing.assert_allclose(got.histogram_edges, want.histogram_edges, rtol=1e-6)


def test_index_report_equals_the_analysis_of_fresh_surprisal(tiny_index, tiny_model_path):
    fresh = fresh_surprisal(tiny_index, tiny_model_path)
    tokens = tiny_index.tokens(0, tiny_index.n_tokens)
    want = analyze_surprisal(tokens.token_id, fresh, tiny_index.doc_starts,
                             vocab=tiny_index.vocab(), token_texts=tokens.text, k=7, width=5,
                             min_count=3)
    model = load_model(tiny_model_path)
    got = index_report(tiny_index, model, k=7, width=5, min_count=3)
    assert_same_report(got, want)
    assert len(got.worst_tokens) == 7 and len(got.worst_spans) == 7
    assert all(len(s.tokens) == 5 for s in got.worst_spans)
    assert got.worst_tokens[0].surprisal == pytest.approx(np.nanmax(fresh), rel=1e-5)
    # the texts are the index's: the span's tokens spell the text there
    span = got.worst_spans[0]
    assert "".join(span.tokens) == tiny_index.text(span.start, span.end)


def test_index_report_computes_with_the_model_when_nothing_is_stored(
    tiny_index, tiny_index_path, tiny_model_path, tmp_path
):
    fresh = fresh_surprisal(tiny_index, tiny_model_path)
    with open_index(index_copy(tiny_index_path, tmp_path / "plain", None)) as plain:
        assert SURPRISAL_TRACK not in plain.track_names()
        with pytest.raises(ValueError, match="stores no surprisal track"):
            index_surprisal(plain)
        computed = index_surprisal(plain, load_model(tiny_model_path))
        np.testing.assert_allclose(computed, fresh, rtol=1e-6)
        assert np.isnan(computed[plain.doc_starts[:-1]]).all()
        with pytest.raises(ValueError, match="tokens"):
            index_report(plain, surprisal=fresh[:-1])


def test_index_report_prefers_the_stored_track(tiny_index, tiny_index_path, tmp_path):
    n = tiny_index.n_tokens
    stored = np.linspace(0.0, 1.0, n)
    stored[tiny_index.doc_starts[:-1]] = np.nan
    stored[[17, 900, 1500]] = [9.0, 8.0, 7.0]
    with open_index(index_copy(tiny_index_path, tmp_path / "stored", stored)) as index:
        np.testing.assert_allclose(index_surprisal(index), stored)
        report = index_report(index, k=3, width=4)  # no model needed
    assert [t.pos for t in report.worst_tokens] == [17, 900, 1500]
    assert [t.surprisal for t in report.worst_tokens] == [9.0, 8.0, 7.0]
    assert report.n_scored == n - tiny_index.n_docs


def test_worst_documents_rank_by_mean_surprisal():
    docs = document_losses(np.array([NAN, 1.0, NAN, 3.0, 2.0, NAN]), np.array([0, 2, 5, 6]))
    assert [d.doc for d in worst_documents(docs, 5)] == [1, 0]  # document 2 has no score
    assert [d.doc for d in worst_documents(docs, 1)] == [1]

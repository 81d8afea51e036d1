"""Queries through `Index`: select and match on a real tiny index (equal to the query kernel,
with text), phrase search, and, on the shipped parens model, that matching a deep span finds
spans of similar depth and that a unit tracks depth."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import torch_threads

from lstmsearch import query

PARENS_MODEL = Path(__file__).resolve().parents[1] / "data" / "models" / "parens-lstm.pt"
PARENS_DOCS = 60


def some_pattern(index, state: str = "layers.1.c"):
    """The first pattern with units on a two-token span of the tiny index."""
    for start in range(1, 400):
        pattern = index.select(start, start + 2, 0.3, state=state)
        if pattern.units:
            return pattern
    raise AssertionError("no span with a pattern")


def test_select_equals_the_query_kernel(tiny_index) -> None:
    store = tiny_index.store(1, "c")
    for start, end, threshold, pads, sign in [(30, 33, 0.3, (1, 0), 1), (100, 101, 0.1, (0, 2), -1)]:
        expected = query.select(store, tiny_index.doc_starts, start, end, threshold, *pads, sign)
        assert tiny_index.select(start, end, threshold, 1, "c", pad_left=pads[0],
                                 pad_right=pads[1], sign=sign) == expected
        assert tiny_index.select(start, end, threshold, "layers.1.c", pad_left=pads[0],
                                 pad_right=pads[1], sign=sign) == expected


def test_match_equals_the_query_kernel_with_text(tiny_index) -> None:
    pattern = some_pattern(tiny_index)
    expected = query.match(tiny_index.store(pattern.state), tiny_index.doc_starts, pattern,
                           limit=10, text_of=tiny_index.text)
    result = tiny_index.match(pattern, limit=10)
    assert result == expected
    for m in result.matches:
        assert m.text == tiny_index.text(m.start, m.end)
    strict = query.match(tiny_index.store(pattern.state), tiny_index.doc_starts, pattern,
                         limit=10, fuzzy=False, text_of=tiny_index.text)
    assert tiny_index.match(pattern, limit=10, fuzzy=False) == strict


def test_find_and_select_a_phrase(tiny_index) -> None:
    phrase = tiny_index.text(40, 44)
    spans = tiny_index.find(phrase, limit=1000)
    assert spans and all(tiny_index.text(s.start, s.end) == phrase for s in spans)
    assert [s.start for s in spans] == sorted(s.start for s in spans)
    assert any(s.start == 40 for s in spans)
    assert len(tiny_index.find(phrase, limit=1)) == 1
    doc = tiny_index.doc_of(40)
    in_doc = tiny_index.find(phrase, doc=doc)
    assert {s.document for s in in_doc} == {doc}
    occurrence = [s.start for s in in_doc].index(40)
    pattern = tiny_index.select_phrase(phrase, 0.3, 1, "c", doc=doc, occurrence=occurrence)
    assert (pattern.start, pattern.end) == (40, 44)
    assert pattern == tiny_index.select(40, 44, 0.3, 1, "c")


@pytest.fixture(scope="module")
def word_index(tmp_path_factory: pytest.TempPathFactory):
    """Three short documents of words (tokens of several characters), random states."""
    from indexer.states import index_states
    from lstmsearch.index import open_index

    tmp = tmp_path_factory.mktemp("words")
    docs = [["the", "cat", "sat", "."], ["a", "dog", "ran", "to", "the", "cat"], ["end"]]
    (tmp / "tokens.txt").write_text("\n\n".join("\n".join(d) for d in docs) + "\n")
    states = np.random.default_rng(0).standard_normal((11, 4)).astype(np.float32)
    np.save(tmp / "h.npy", states)
    index_states(tmp / "tokens.txt", {"layers.0.h": tmp / "h.npy"}, tmp / "index",
                 faiss=False, progress=False)
    index = open_index(tmp / "index")
    yield index
    index.close()


def test_a_phrase_is_mapped_to_the_tokens_it_touches(word_index) -> None:
    assert [(s.document, s.start, s.end) for s in word_index.find("he ca")] == [
        (0, 0, 2), (1, 8, 10)]
    assert [(s.start, s.end) for s in word_index.find("at s")] == [(1, 3)]
    assert [(s.start, s.end) for s in word_index.find("cat", doc=1)] == [(9, 10)]
    assert word_index.find("cow") == []
    pattern = word_index.select_phrase("cat", -10.0, 0, "h", occurrence=1, pad_left=0)
    assert (pattern.start, pattern.end, pattern.document) == (9, 10, 1)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.select(5, 5, 0.3, 1, "c"), "empty span: start=5 must be below end=5"),
        (lambda ix: ix.select(0, 10**7, 0.3, 1, "c"), "end=10000000 is outside the index"),
        (lambda ix: ix.select(-3, 2, 0.3, 1, "c"), "start=-3 is outside the index"),
        (lambda ix: ix.select(0, 3, 0.3, 4, "c"), "layers.4.c is not in this index"),
        (lambda ix: ix.select(0, 3, 0.3, 1, "x"), "layers.1.x is not in this index"),
        (lambda ix: ix.select(0, 3, "high", 1, "c"), "threshold must be a finite number"),
        (lambda ix: ix.select(0, 3, float("inf"), 1, "c"), "threshold must be finite"),
        (lambda ix: ix.select(0, 3, 0.3), "say which state"),
        (lambda ix: ix.match(ix.select(1, 3, 1e4, 1, "c")), "pattern selected no units"),
        (lambda ix: ix.match(ix.select(0, 3, 0.01, 1, "c")),
         "reaches outside its document, where no unit counts as off: use padding 0"),
        (lambda ix: ix.find("   "), "phrase must be a non-blank string"),
        (lambda ix: ix.find("(", limit=0), "limit must be at least 1, got 0"),
        (lambda ix: ix.find("(", doc=10**6), "doc 1000000 out of range"),
        (lambda ix: ix.select_phrase("no such text", 0.3, 1, "c"), "does not occur in the index"),
        (lambda ix: ix.select_phrase("(", 0.3, 1, "c", doc=0, occurrence=10**5 - 1),
         "occurrence 99999 of phrase '\\(' asked for"),
        (lambda ix: ix.select_phrase("(", 0.3, 1, "c", doc=0, occurrence=10**5),
         "occurrence must be at most 99,999, got 100,000"),
    ],
)
def test_bad_arguments_name_the_value(tiny_index, call, message) -> None:
    with pytest.raises(ValueError, match=message):
        call(tiny_index)


def test_a_span_across_documents_is_refused(tiny_index) -> None:
    boundary = int(tiny_index.doc_starts[1])
    with pytest.raises(ValueError, match=f"crosses the end of document 0 at {boundary}"):
        tiny_index.select(boundary - 1, boundary + 1, 0.3, 1, "c")


# --- the shipped parens model ---------------------------------------------------------------


@pytest.fixture(scope="module")
def parens_index(tmp_path_factory: pytest.TempPathFactory):
    """The shipped parens model over the first documents of the bundled corpus."""
    from indexer.build import build_index
    from lstmsearch.index import open_index

    if not PARENS_MODEL.is_file():
        pytest.skip(f"{PARENS_MODEL} is not there")
    out = tmp_path_factory.mktemp("parens") / "index"
    with torch_threads(1):
        build_index("parens", PARENS_MODEL, out, limit=PARENS_DOCS, device="cpu", progress=False)
    index = open_index(out)
    yield index
    index.close()


def depth_state(index) -> tuple[str, float]:
    """The stored state holding the unit most correlated with depth, and that |r|."""
    best = {s: abs(index.neurons.correlate("depth", s, top=1)[0].r) for s in index.state_names}
    state = max(best, key=best.get)
    return state, best[state]


def test_a_unit_tracks_depth(parens_index) -> None:
    state, r = depth_state(parens_index)
    ranked = parens_index.neurons.correlate("depth", state)
    assert abs(ranked[0].r) == r and abs(ranked[0].r) >= abs(ranked[1].r)
    assert r >= 0.8, f"best depth unit of the shipped model: {state} unit {ranked[0].unit}, r={r}"


def test_matches_of_a_deep_span_have_similar_depth(parens_index) -> None:
    index = parens_index
    state, _ = depth_state(index)
    depth = index.track("depth")
    starts = index.doc_starts
    rng = np.random.default_rng(1)
    deep = np.flatnonzero(depth >= 7)
    matched, random = [], []
    for start in rng.choice(deep, 400):
        start = int(start)
        doc = index.doc_of(start)
        if start + 3 > starts[doc + 1]:
            continue
        pattern = index.select(start, start + 3, 0.1, state=state, pad_left=0)
        if len(pattern.units) < 3:
            continue
        own = depth[start : start + 3].mean()
        found = [m for m in index.match(pattern, limit=10).matches if not m.is_query]
        matched.append(np.mean([abs(depth[m.start : m.end].mean() - own) for m in found]))
        others = rng.integers(0, index.n_tokens - 3, 300)
        random.append(np.mean([abs(depth[a : a + 3].mean() - own) for a in others]))
        if len(matched) == 10:
            break
    assert len(matched) == 10, "too few deep spans with a pattern of 3 units or more"
    assert np.mean(matched) < 0.5 * np.mean(random), (np.mean(matched), np.mean(random))

"""Nearest stored states: equal to a brute-force search on the stored values when the FAISS
index is exact (and without FAISS), the query span left out, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from indexer.states import index_states
from lstmsearch.index import open_index
from lstmsearch.nearest import neighbor_key

LENGTHS = (120, 1, 75, 200, 4, 160)
DIM = 12


@pytest.fixture(scope="module")
def random_states(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tokens file of a few documents and random states with near-duplicates."""
    tmp = tmp_path_factory.mktemp("nearest-data")
    rng = np.random.default_rng(11)
    words = [[f"w{rng.integers(50)}" for _ in range(n)] for n in LENGTHS]
    tokens = tmp / "tokens.txt"
    tokens.write_text("\n\n".join("\n".join(d) for d in words) + "\n", encoding="utf-8")
    n = sum(LENGTHS)
    states = rng.standard_normal((n, DIM)).astype(np.float32)
    states[rng.integers(0, n, 40)] = states[rng.integers(0, n, 40)]  # exact ties
    path = tmp / "h.npy"
    np.save(path, states)
    return {"tokens": tokens, "states": path, "tmp": tmp}


def build(data: dict, name: str, faiss: bool) -> Path:
    out = data["tmp"] / name
    index_states(data["tokens"], {"layers.0.h": data["states"]}, out, faiss=faiss,
                 progress=False)
    return out


@pytest.fixture(scope="module")
def exact_index(random_states: dict):
    index = open_index(build(random_states, "exact", faiss=True))
    yield index
    index.close()


@pytest.fixture(scope="module")
def scan_index(random_states: dict):
    index = open_index(build(random_states, "scan", faiss=False))
    yield index
    index.close()


def brute_force(index, start: int, end: int, k: int) -> list[tuple[int, float]]:
    """(position, distance) of the k nearest stored states to the span's mean, outside it."""
    stored = np.asarray(index.states(0, "h"), dtype=np.float64)
    query = stored[start:end].mean(axis=0)
    distances = np.sqrt(((stored - query) ** 2).sum(axis=1))
    positions = np.array([p for p in range(len(stored)) if not start <= p < end])
    order = np.lexsort((positions, distances[positions]))[:k]
    return [(int(positions[i]), float(distances[positions[i]])) for i in order]


def compressed_build(tmp: Path, name: str, lengths, dim: int, segment_tokens: int,
                     seed: int = 3) -> Path:
    """An index of clustered random states (wide enough to compress) in small segments."""
    import indexer.states

    rng = np.random.default_rng(seed)
    words = [[f"w{rng.integers(50)}" for _ in range(n)] for n in lengths]
    tokens = tmp / f"{name}.txt"
    tokens.write_text("\n\n".join("\n".join(d) for d in words) + "\n", encoding="utf-8")
    n = sum(lengths)
    centres = rng.standard_normal((20, dim)) * 3
    states = (centres[rng.integers(0, 20, n)] + rng.standard_normal((n, dim))).astype(np.float32)
    states[rng.integers(0, n, 40)] = states[rng.integers(0, n, 40)]  # exact ties
    np.save(tmp / f"{name}.npy", states)
    out = tmp / name
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(indexer.states, "SEGMENT_TOKENS", segment_tokens)
        index_states(tokens, {"layers.0.h": tmp / f"{name}.npy"}, out, progress=False)
    return out


@pytest.fixture(scope="module")
def compressed_index(tmp_path_factory: pytest.TempPathFactory):
    """Compressed FAISS indexes over segments no larger than the shortlist."""
    tmp = tmp_path_factory.mktemp("nearest-compressed")
    lengths = (300, 1, 250, 400, 4, 160, 350, 500, 90, 200)
    index = open_index(compressed_build(tmp, "small-segments", lengths, 16, 300))
    yield index
    index.close()


def test_compressed_index_is_used_and_listed(compressed_index) -> None:
    rows = compressed_index.sql("SELECT description, recall_at_10 FROM faiss_indexes").rows
    assert len(rows) == len(compressed_index.segments) > 3
    assert all(d.startswith("PQ4x4fs (2 bytes a token)") for d, _ in rows)
    # every segment is within one shortlist; recall is measured on segments 0, 8, ...
    recalls = [r for _, r in compressed_index.sql(
        "SELECT segment, recall_at_10 FROM faiss_indexes ORDER BY segment").rows]
    assert recalls[0] == 1.0 and all(r is None for r in recalls[1:8])
    faiss_info = compressed_index.info().faiss[0]
    assert faiss_info["measured"] == len(recalls[::8]) and faiss_info["recall_at_10"] == 1.0
    (codebook,) = [f for f in compressed_index.files if f.kind == "codebook"]
    assert codebook.path == "codebooks/layers.0.h.faiss" and codebook.segment is None
    assert compressed_index.verify() == []


def test_compressed_nearest_equals_brute_force_when_the_shortlist_covers_it(
        compressed_index) -> None:
    rng = np.random.default_rng(6)
    starts = compressed_index.doc_starts
    for _ in range(25):
        doc = int(rng.integers(len(starts) - 1))
        first, stop = int(starts[doc]), int(starts[doc + 1])
        start = int(rng.integers(first, stop))
        end = int(rng.integers(start + 1, min(stop, start + 4) + 1))
        k = int(rng.choice([1, 5, 20, 60]))
        expected = brute_force(compressed_index, start, end, k)
        for exact in (False, True):
            found = compressed_index.nearest(start, end, 0, "h", k=k, exact=exact)
            assert [(n.start, n.end) for n in found] == [(p, p + 1) for p, _ in expected]
            np.testing.assert_allclose([n.distance for n in found], [d for _, d in expected])


def test_compressed_nearest_in_a_large_segment_is_exact_where_it_finds(tmp_path) -> None:
    """A segment larger than the shortlist: every neighbour found is at its exact distance
    and in order; the recall measured at build time is what a query gets."""
    out = compressed_build(tmp_path, "large", (3000, 2500), 32, 10_000, seed=4)
    with open_index(out) as index:
        ((recall,),) = index.sql("SELECT min(recall_at_10) FROM faiss_indexes").rows
        assert 0.8 <= recall <= 1.0
        stored = np.asarray(index.states(0, "h"), dtype=np.float64)
        hits = []
        for start in np.random.default_rng(7).choice(index.n_tokens, 40, replace=False):
            start = int(start)
            found = index.nearest(start, start + 1, 0, "h", k=10)
            want = brute_force(index, start, start + 1, 10)
            got = np.sqrt(((stored[[n.start for n in found]] - stored[start]) ** 2).sum(1))
            np.testing.assert_allclose([n.distance for n in found], got)
            assert found == sorted(found, key=neighbor_key)
            kth = want[-1][1]
            hits.append(np.mean(np.array([n.distance for n in found]) <= kth + 1e-9))
        assert np.mean(hits) >= recall - 0.1


def test_exact_faiss_index_is_used(exact_index) -> None:
    (row,) = exact_index.sql("SELECT description FROM faiss_indexes").rows
    assert "exact" in row[0]


def test_nearest_equals_brute_force(exact_index, scan_index) -> None:
    rng = np.random.default_rng(5)
    starts = exact_index.doc_starts
    for _ in range(25):
        doc = int(rng.integers(len(LENGTHS)))
        first, stop = int(starts[doc]), int(starts[doc + 1])
        start = int(rng.integers(first, stop))
        end = int(rng.integers(start + 1, min(stop, start + 4) + 1))
        k = int(rng.choice([1, 5, 20, 60]))
        expected = brute_force(exact_index, start, end, k)
        for index in (exact_index, scan_index):
            found = index.nearest(start, end, 0, "h", k=k)
            assert [(n.start, n.end) for n in found] == [(p, p + 1) for p, _ in expected]
            np.testing.assert_allclose([n.distance for n in found], [d for _, d in expected])
            assert found == sorted(found, key=neighbor_key)


def test_neighbours_carry_their_text(exact_index) -> None:
    found = exact_index.nearest(10, 12, "layers.0.h", k=5, context=2)
    for n in found:
        assert not 10 <= n.start < 12
        assert n.text == exact_index.text(n.start, n.end)
        assert n.document == exact_index.doc_of(n.start)
        first = int(exact_index.doc_starts[n.document])
        left = exact_index.text(max(first, n.start - 2), n.start) if n.start > first else ""
        assert n.left.split() == left.split()


def test_an_equal_state_outside_the_span_comes_first(exact_index) -> None:
    stored = np.asarray(exact_index.states(0, "h"))
    _, first_of, counts = np.unique(stored, axis=0, return_index=True, return_counts=True)
    a = int(first_of[np.flatnonzero(counts > 1)[0]])
    twins = np.flatnonzero((stored == stored[a]).all(axis=1))
    (found,) = exact_index.nearest(a, a + 1, 0, "h", k=1)
    assert found.distance == 0.0 and found.start == int(twins[twins != a][0])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((110, 125, 0, "h"), "crosses the end of document 0 at 120"),
        ((5, 5, 0, "h"), "empty span"),
        ((-1, 2, 0, "h"), "start=-1 is outside the index"),
        ((0, 10_000, 0, "h"), "end=10000 is outside the index"),
        ((0, 2, 0, "c"), "layers.0.c is not in this index"),
        ((0, 2, 3, "h"), "layers.3.h is not in this index"),
        ((0, 2.5, 0, "h"), "end must be an integer, got 2.5"),
    ],
)
def test_bad_spans_and_states(exact_index, args, message) -> None:
    with pytest.raises(ValueError, match=message):
        exact_index.nearest(*args)


def test_bad_k(exact_index) -> None:
    with pytest.raises(ValueError, match="k must be at least 1, got 0"):
        exact_index.nearest(0, 2, 0, "h", k=0)

"""Comparing two indexes of one corpus: surprisal difference, unit correspondence, CKA, a
pattern's matches side by side, and refusals of indexes that cannot be compared."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer.build import build_index
from indexer.states import index_states
from lstmsearch.cli import main
from lstmsearch.compare import (
    CompareError,
    compare,
    linear_cka,
    side_by_side,
    unit_correlations,
)
from lstmsearch.corpus import Corpus, Document
from lstmsearch.index import open_index
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint
from lstmsearch.tokenize import train_tokenizer

UNITS = 6
PERM = np.array([3, 0, 5, 1, 4, 2])  # unit u of A is unit PERM[u] of B
SIGN = np.array([1, -1, 1, 1, 1, -1])  # and comes negated for these


def cka_reference(x: np.ndarray, y: np.ndarray) -> float:
    """CKA from its definition: HSIC of the linear kernels with an explicit centring matrix."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = x @ x.T, y @ y.T
    hsic = np.trace(k @ h @ l_ @ h)
    return float(hsic / np.sqrt(np.trace(k @ h @ k @ h) * np.trace(l_ @ h @ l_ @ h)))


@pytest.mark.parametrize("seed", range(4))
def test_linear_cka_equals_its_definition_and_ignores_rotation_and_scale(seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(40, 5)) + rng.normal(size=5)
    y = x @ rng.normal(size=(5, 7)) + 0.3 * rng.normal(size=(40, 7))
    assert linear_cka(x, y) == pytest.approx(cka_reference(x, y), rel=1e-9)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    assert linear_cka(x, 3.5 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-12)
    assert 0.0 <= linear_cka(x, rng.normal(size=(40, 3))) < 0.5


def test_unit_correlations_equal_corrcoef_and_a_constant_unit_gives_zero():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 4))
    y = np.c_[rng.normal(size=(50, 3)), np.full(50, 2.5)]
    r = unit_correlations(x, y)
    want = np.corrcoef(x.T, y[:, :3].T)[:4, 4:]
    np.testing.assert_allclose(r[:, :3], want, atol=1e-12)
    assert (r[:, 3] == 0).all()


def states_index(folder: Path, tokens: str, states: np.ndarray,
                 surprisal: np.ndarray | None = None) -> Path:
    """An index of given states (and surprisal track) over a tokens file's text."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokens.txt").write_text(tokens, encoding="utf-8")
    np.save(folder / "c.npy", states.astype(np.float32))
    tracks = None
    if surprisal is not None:
        np.save(folder / "s.npy", surprisal)
        tracks = {"surprisal": folder / "s.npy"}
    index_states(folder / "tokens.txt", {"layers.0.c": folder / "c.npy"}, folder / "index",
                 tracks=tracks, progress=False)
    return folder / "index"


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> tuple[Path, Path, np.ndarray]:
    """A: random states on three documents; B: the same states with units permuted and
    some negated, and a lower surprisal at three known tokens (a higher one at one)."""
    rng = np.random.default_rng(1)
    docs = [[rng.choice(list("abcd")) for _ in range(n)] for n in (30, 25, 35)]
    tokens = "\n\n".join("\n".join(d) for d in docs) + "\n"
    n = sum(len(d) for d in docs)
    a_states = rng.normal(size=(n, UNITS)).astype(np.float16).astype(np.float32)
    a_states[:, 2] *= 4  # units on different scales
    for start in (10, 50, 71):  # units 0, 2 and 3 (none negated in B) on together, others off
        a_states[start : start + 2] = -1.0
        a_states[start : start + 2, [0, 2, 3]] = 3.0
    b_states = np.empty_like(a_states)
    b_states[:, PERM] = a_states * SIGN
    surprisal = rng.uniform(1, 2, size=n)
    better = surprisal.copy()
    better[[5, 40, 77]] -= [0.5, 0.9, 0.7]
    better[12] += 0.4
    root = tmp_path_factory.mktemp("compare")
    return (states_index(root / "a", tokens, a_states, surprisal),
            states_index(root / "b", tokens, b_states, better), a_states)


def test_units_correspond_through_the_permutation_with_their_sign(pair):
    a_path, b_path, _ = pair
    with open_index(a_path) as a, open_index(b_path) as b:
        result = compare(a, b)
    (state,) = result.states
    assert (state.state_a, state.state_b) == ("layers.0.c", "layers.0.c")
    assert [c.best for c in state.units] == PERM.tolist()
    np.testing.assert_allclose([c.r for c in state.units], SIGN, atol=1e-6)
    assert state.mean_best_r == pytest.approx(1.0, abs=1e-6)
    assert state.cka == pytest.approx(1.0, abs=1e-9)  # a permutation and flips: a rotation
    assert state.tokens == result.tokens == 90 and result.documents == 3


def test_surprisal_difference_names_where_each_model_wins(pair):
    a_path, b_path, _ = pair
    with open_index(a_path) as a, open_index(b_path) as b:
        s = compare(a, b, k=5).surprisal
        assert s is not None and s.tokens == 90
        assert [t.pos for t in s.b_wins] == [40, 77, 5]  # largest gain first
        assert [t.pos for t in s.a_wins] == [12]
        assert s.b_wins[0].difference == pytest.approx(-0.9)
        assert s.b_better == pytest.approx(3 / 90)
        assert s.mean_b - s.mean_a == pytest.approx((-0.5 - 0.9 - 0.7 + 0.4) / 90)
        assert s.b_wins[0].text == a.text(40, 41) and s.b_wins[0].document == a.doc_of(40)


def test_copies_of_one_index_agree_everywhere(tiny_index_path, tmp_path):
    shutil.copytree(tiny_index_path, tmp_path / "copy")
    with open_index(tiny_index_path) as a, open_index(tmp_path / "copy") as b:
        result = compare(a, b)
        assert [s.state_a for s in result.states] == list(a.state_names)
        for state in result.states:
            moving = np.asarray(a.store(state.state_a).vectors(np.arange(a.n_tokens)),
                                np.float64).std(axis=0) > 0
            for c in state.units:
                if moving[c.unit]:
                    assert c.best == c.unit and c.r == pytest.approx(1.0, abs=1e-9)
            assert state.cka == pytest.approx(1.0, abs=1e-9)
        s = result.surprisal
        assert s is not None and s.mean_a == s.mean_b and s.b_better == 0.0
        assert s.b_wins == () and s.a_wins == ()


def test_side_by_side_matches_follow_the_corresponding_units(pair):
    a_path, b_path, _ = pair
    with open_index(a_path) as a, open_index(b_path) as b:
        state = compare(a, b).states[0]
        pattern = a.select(10, 12, 0.3, state="layers.0.c", pad_left=0)
        assert pattern.units == (0, 2, 3)
        got = side_by_side(a, b, pattern, state, limit=30)
        assert got.pattern_b.units == tuple(sorted(PERM[[0, 2, 3]])) and got.left_out == ()
        # B's corresponding units hold A's values: the same spans have all of S on (the
        # extra units differ: B's negated units are on where A's are off)
        want = a.match(pattern, limit=30)
        assert got.matches_a.matches == want.matches

        def full(result):
            return {(m.start, m.end) for m in result.matches if m.overlap == 3}

        assert full(got.matches_b) == full(want) >= {(10, 12), (50, 52), (71, 73)}
        # a unit that B holds negated has no unit rising with it: left out, named
        mixed = side_by_side(a, b, replace(pattern, units=(0, 1, 2)), state)
        assert mixed.pattern_b.units == tuple(sorted(PERM[[0, 2]])) and mixed.left_out == (1,)


def test_a_pattern_of_only_anti_correlated_units_is_refused(pair):
    a_path, b_path, states = pair
    with open_index(a_path) as a, open_index(b_path) as b:
        state = compare(a, b).states[0]
        negated = [int(u) for u in np.flatnonzero(SIGN < 0)]
        base = a.select(10, 12, 0.3, state="layers.0.c", pad_left=0)
        with pytest.raises(CompareError, match="rises with it"):
            side_by_side(a, b, replace(base, units=tuple(negated)), state)
        with pytest.raises(CompareError, match="selected no units"):
            side_by_side(a, b, replace(base, units=()), state)


def test_different_corpora_and_tokenizers_are_refused(pair, tmp_path):
    a_path, _, states = pair
    other = states_index(tmp_path / "o", "x\ny\n\nz\n", np.zeros((3, UNITS)))
    with open_index(a_path) as a, open_index(other) as o:
        with pytest.raises(CompareError, match="different corpora: 3 documents against 2"):
            compare(a, o)
    # one character changed in the last document
    with open_index(a_path) as a:
        texts = [a.document_text(d) for d in range(a.n_docs)]
        tokens = "\n\n".join("\n".join(t.split()) for t in texts)
    changed = tokens[:-1] + ("a" if tokens[-1] != "a" else "b") + "\n"
    edited = states_index(tmp_path / "e", changed, states)
    with open_index(a_path) as a, open_index(edited) as e:
        with pytest.raises(CompareError, match="document 2 is"):
            compare(a, e)
    # the same text cut by a char and by a word tokenizer
    texts = ["one two three two one", "three one two"]
    corpus = Corpus("words", [Document(f"d{i}", t) for i, t in enumerate(texts)])
    for kind in ("char", "word"):
        tokenizer = train_tokenizer(kind, texts)
        model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=5,
                                          layers=1))
        save_checkpoint(tmp_path / f"{kind}.pt", model, tokenizer)
        build_index(corpus, tmp_path / f"{kind}.pt", tmp_path / kind, progress=False)
    with open_index(tmp_path / "char") as c, open_index(tmp_path / "word") as w:
        with pytest.raises(CompareError, match="different tokens .*char tokenizer"):
            compare(c, w)


def test_bad_requests_are_refused(pair):
    a_path, b_path, _ = pair
    with open_index(a_path) as a, open_index(b_path) as b:
        with pytest.raises(CompareError, match="state layers.0.h is not in index A"):
            compare(a, b, state="layers.0.h")
        for bad in (0, 1, True, 2.5, "9"):
            with pytest.raises(CompareError, match="sample must be"):
                compare(a, b, sample=bad)


def test_cli_compare_json_and_one_line_errors(pair, tmp_path, capsys):
    a_path, b_path, _ = pair
    assert main(["compare", str(a_path), str(b_path), "--json", "--state", "layers.0.c",
                 "--start", "10", "--end", "12", "--threshold", "0.3", "--limit", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [u["best"] for u in out["states"][0]["units"]] == PERM.tolist()
    assert out["surprisal"]["b_wins"][0]["pos"] == 40
    assert set(out["side_by_side"]) == {"a", "b", "left_out"}
    assert main(["compare", str(a_path), str(b_path)]) == 0
    text = capsys.readouterr().out
    assert "linear CKA 1.000" in text and "where B gains most" in text
    assert main(["compare", str(a_path), str(b_path), "--start", "1", "--end", "3"]) == 2
    assert "goes with --threshold" in capsys.readouterr().err
    other = states_index(tmp_path / "o", "x\n", np.zeros((1, UNITS)))
    assert main(["compare", str(a_path), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lstmsearch compare: error: the indexes hold different corpora")
    assert err.count("\n") == 1

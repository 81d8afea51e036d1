"""Probing classifiers: a planted linear signal is found (score near 1, the planted units
first), noise stays at the baseline, the index sample splits by document, the control runs
random weights over the same tokens, and bad input gets one line that says what works."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstmsearch.analysis.probe import (
    MAX_CLASSES,
    draw_sample,
    index_probe,
    probe_states,
    r2,
    random_model,
)
from lstmsearch.cli import main
from lstmsearch.extract import extract
from lstmsearch.models import ModelConfig


def split(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random(n) < 0.8


def test_planted_categorical_signal_is_found_and_ranked_first() -> None:
    rng = np.random.default_rng(1)
    states = rng.normal(size=(4000, 64)).astype(np.float32)
    states[:, 17] *= 3.0  # scale must not matter: units are standardised
    labels = (states[:, 5] + states[:, 17] / 3.0 > 0).astype(float)
    result = probe_states(states, labels, split(4000), categorical=True, state="layers.0.h",
                          track="planted")
    assert result.metric == "accuracy" and result.classes == ("0", "1")
    assert result.score > 0.97
    assert 0.4 < result.baseline < 0.6
    assert {u.unit for u in result.units[:2]} == {5, 17}
    assert result.units[2].importance < 0.2 * result.units[1].importance
    assert all(u.weight > 0 for u in result.units[:2])  # larger values: class "1"
    assert [u.importance for u in result.units] == sorted(
        (u.importance for u in result.units), reverse=True)


def test_planted_multiclass_signal_uses_the_planted_units() -> None:
    rng = np.random.default_rng(2)
    states = rng.normal(size=(6000, 48)).astype(np.float32)
    depth = np.digitize(states[:, 30], [-0.8, 0.0, 0.8])  # four classes from one unit
    result = probe_states(states, depth, split(6000), categorical=True)
    assert result.classes == ("0", "1", "2", "3")
    assert result.score > 0.9
    assert result.units[0].unit == 30


def test_planted_numeric_signal_is_found() -> None:
    rng = np.random.default_rng(3)
    states = rng.normal(size=(3000, 40)).astype(np.float32)
    y = 2.0 * states[:, 9] - states[:, 33] + 0.05 * rng.normal(size=3000)
    result = probe_states(states, y, split(3000), categorical=False)
    assert result.metric == "r2" and result.score > 0.99
    assert abs(result.baseline) < 0.01
    assert [u.unit for u in result.units[:2]] == [9, 33]
    assert result.units[0].weight > 0 > result.units[1].weight


def test_noise_stays_at_the_baseline() -> None:
    rng = np.random.default_rng(4)
    states = rng.normal(size=(4000, 64)).astype(np.float32)
    labels = (rng.random(4000) < 0.7).astype(float)  # majority class 70%
    cat = probe_states(states, labels, split(4000), categorical=True)
    assert abs(cat.score - cat.baseline) < 0.03
    num = probe_states(states, rng.normal(size=4000), split(4000), categorical=False)
    assert num.score < 0.02 and abs(num.baseline) < 0.01


def test_control_states_are_probed_the_same_way() -> None:
    rng = np.random.default_rng(5)
    states = rng.normal(size=(2000, 16)).astype(np.float32)
    labels = (states[:, 3] > 0).astype(float)
    noise = rng.normal(size=(2000, 16)).astype(np.float32)
    result = probe_states(states, labels, split(2000), categorical=True, control_states=noise)
    assert result.score > 0.95 and abs(result.control - result.baseline) < 0.05
    assert result.over_control > 0.4


def test_r2_against_a_direct_computation() -> None:
    y = np.array([1.0, 2.0, 4.0, 7.0])
    p = np.array([1.5, 2.0, 3.0, 7.5])
    assert r2(y, p) == pytest.approx(1 - (0.25 + 0 + 1 + 0.25) / 21.0)
    assert r2(y, np.full(4, y.mean())) == pytest.approx(0.0)


def test_sample_splits_by_document_within_the_budget() -> None:
    starts = np.array([0, 10, 30, 31, 60, 100])
    s = draw_sample(starts, max_tokens=1000, test_fraction=0.25, seed=0)
    assert sorted(s.docs) == [0, 1, 2, 3, 4] and len(s.positions) == 100
    held = sum(b - a for (a, b), t in zip(s.runs, s.train) if not t)
    assert 25 <= held < 100 and any(s.train)
    for (a, b), d in zip(s.runs, s.docs):
        assert (a, b) == (starts[d], starts[d + 1])
    cut = draw_sample(starts, max_tokens=35, seed=1)
    assert len(cut.positions) == 35
    one = draw_sample(np.array([0, 50]), max_tokens=40, test_fraction=0.25)
    assert one.runs == ((0, 30), (30, 40)) and one.train == (True, False)
    assert draw_sample(starts, seed=3) == draw_sample(starts, seed=3)


def test_random_model_is_seeded() -> None:
    config = ModelConfig("lstm", 10, embed_dim=4, hidden=6, layers=1)
    a, b, c = random_model(config, 7), random_model(config, 7), random_model(config, 8)
    docs = [np.array([1, 2, 3, 4])]
    sa, sb, sc = (extract(m, docs, ["layers.0.c"])[0]["layers.0.c"] for m in (a, b, c))
    assert np.array_equal(sa, sb) and not np.allclose(sa, sc)


def test_index_probe_of_depth(tiny_index) -> None:
    result = index_probe(tiny_index, "depth", 0, "c", seed=0)
    assert result.state == "layers.0.c" and result.target == "categorical"
    assert result.n_train + result.n_test == tiny_index.n_tokens  # the tiny index fits
    assert result.train_docs + result.test_docs == tiny_index.n_docs
    assert result.control is not None and result.control_note.startswith("random weights")
    assert len(result.units) == tiny_index.store("layers.0.c").dim
    assert 0.0 <= result.score <= 1.0
    again = index_probe(tiny_index, "depth", 0, "c", seed=0)
    assert (again.score, again.control) == (result.score, result.control)
    numeric = index_probe(tiny_index, "depth", 1, "h", target="numeric", control=False)
    assert numeric.metric == "r2" and numeric.control is None


def test_index_probe_bad_input(tiny_index, tmp_path) -> None:
    from tests.conftest import states_only_index

    with pytest.raises(ValueError, match="no track 'nope'.*tracks: depth"):
        index_probe(tiny_index, "nope", 0, "c")
    with pytest.raises(ValueError, match="state layers.5.c is not in this index"):
        index_probe(tiny_index, "depth", 5, "c")
    plain = states_only_index(tmp_path / "plain")
    with pytest.raises(ValueError, match="no track"):
        index_probe(plain, "depth", 0, "h")


def test_categorical_probe_of_a_track_with_thousands_of_values(tmp_path) -> None:
    from indexer.states import index_states
    from lstmsearch.index import open_index

    rng = np.random.default_rng(0)
    n = 3000
    (tmp_path / "tokens.txt").write_text(
        "".join("a\n" if i % 50 else "a\n\n" for i in range(n)), encoding="utf-8")
    states = rng.normal(size=(n, 8)).astype(np.float32)
    np.save(tmp_path / "h.npy", states)
    np.save(tmp_path / "x.npy", (3.0 * states[:, 2] + 0.01 * rng.normal(size=n)))
    index_states(tmp_path / "tokens.txt", {"layers.0.h": tmp_path / "h.npy"},
                 tmp_path / "index", tracks={"x": tmp_path / "x.npy"}, progress=False)
    with open_index(tmp_path / "index") as index:
        with pytest.raises(ValueError, match=rf"distinct values.*at most {MAX_CLASSES}; "
                           "probe it as numeric"):
            index_probe(index, "x", 0, "h", target="categorical")
        auto = index_probe(index, "x", 0, "h")  # many values: numeric
        assert auto.target == "numeric" and auto.score > 0.99 and auto.units[0].unit == 2
        assert auto.control is None and "architecture" in auto.control_note


def test_cli_categorical_probe_of_a_numeric_track(tmp_path, capsys) -> None:
    test_categorical_probe_of_a_track_with_thousands_of_values(tmp_path)
    args = ["probe", str(tmp_path / "index"), "--track", "x", "--layer", "0", "--kind", "h"]
    assert main([*args, "--target", "categorical"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "distinct values" in err and "--target numeric" in err
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == "numeric" and out["control"] is None


def test_cli_probe_json_and_errors(tiny_index_path, capsys) -> None:
    code = main(["probe", str(tiny_index_path), "--track", "depth", "--layer", "0",
                 "--kind", "c", "--json", "--top", "3"])
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["state"] == "layers.0.c" and out["metric"] == "accuracy"
    assert len(out["units"]) == 3 and out["units"][0]["state"] == "layers.0.c"
    assert set(out) >= {"score", "baseline", "control", "classes", "n_train", "n_test"}
    code = main(["probe", str(tiny_index_path), "--track", "depth", "--layer", "0",
                 "--kind", "c", "--no-control"])
    text = capsys.readouterr().out
    assert code == 0 and "held-out accuracy" in text and "layers.0.c unit" in text
    for args, message in (
        (["--track", "nope", "--layer", "0", "--kind", "c"], "no track 'nope'"),
        (["--track", "depth", "--layer", "9", "--kind", "c"], "layers.9.c is not in"),
    ):
        assert main(["probe", str(tiny_index_path), *args]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert "Traceback" not in err

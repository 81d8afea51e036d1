"""Indexing precomputed states: tokens files, .npy states of any float type, tracks, time
series, clear errors, and no half index left behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from indexer import states as states_module
from indexer.states import index_states, read_tokens_file
from indexer.writer import BuildError
from lstmsearch.cli import main
from lstmsearch.index import open_index
from lstmsearch.query import match, select
from lstmsearch.store import to_stored

DOCS = [["the", "cat", "sat", "."], ["a", "dog", "ran", "to", "the", "cat"], ["end"]]
N = sum(len(d) for d in DOCS)


def write_tokens_txt(path: Path) -> Path:
    path.write_text("\n\n".join("\n".join(d) for d in DOCS) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def data(tmp_path: Path) -> dict:
    """A tokens file, states of three float types (one beyond float16's range), two tracks."""
    rng = np.random.default_rng(0)
    h = rng.normal(size=(N, 5)).astype(np.float32)
    h[2, 1] = 1e6  # clipped to float16's largest finite value when stored
    c = rng.normal(size=(N, 5)) * 3  # float64
    g = rng.uniform(-1, 1, size=(N, 3)).astype(np.float16)
    files = {"layers.0.h": h, "layers.0.c": c, "layers.1.h": g}
    paths = {}
    for name, array in files.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], array)
    depth = tmp_path / "depth.npy"
    np.save(depth, np.arange(N, dtype=np.float64))
    labels = tmp_path / "pos.txt"
    labels.write_text("\n".join("NOUN" if i % 2 else "DET" for i in range(N)) + "\n")
    return {"tokens": write_tokens_txt(tmp_path / "tokens.txt"), "arrays": files,
            "states": paths, "tracks": {"depth": depth, "pos": labels}, "dir": tmp_path}


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def test_index_states_stores_exactly_the_given_values(data):
    out = data["dir"] / "idx"
    result = index_states(data["tokens"], data["states"], out, tracks=data["tracks"],
                          progress=False)
    assert result.n_docs == 3 and result.n_tokens == N
    with open_index(out) as index:
        assert [d.name for d in index.documents()] == ["tokens.txt#0", "tokens.txt#1",
                                                       "tokens.txt#2"]
        assert index.document_text(1) == "a dog ran to the cat"
        tokens = index.tokens(0, N)
        assert list(tokens.text) == [t for d in DOCS for t in d]
        assert list(tokens.doc) == [0] * 4 + [1] * 6 + [2]
        assert list(tokens.char_start[4:7]) == [0, 2, 6]
        vocab = index.vocab()
        assert [vocab[i] for i in tokens.token_id] == list(tokens.text)
        assert index.text(5, 8) == "dog ran to"
        for name, array in data["arrays"].items():
            stored = np.asarray(index.states(name))
            expected = to_stored(array).numpy().T
            assert stored.view(np.uint16).tolist() == expected.view(np.uint16).tolist(), name
        assert index.states("layers.0.h")[2, 1] == np.float16(65504)
        assert [s.dim for s in index.state_infos] == [5, 5, 3]
        np.testing.assert_array_equal(index.track("depth"), np.arange(N))
        labels = index.sql("SELECT label FROM tracks WHERE name = 'pos' ORDER BY pos").column("label")
        assert labels[:3] == ["DET", "NOUN", "DET"]
        assert index.info().model["arch"] == "precomputed"
        assert len(index.unit_top("layers.0.c", unit=0)[0]) > 0
    assert leftovers(data["dir"]) == []


def test_jsonl_and_csv_tokens_give_the_same_documents(tmp_path):
    rows = [(t, f"d{i}") for i, d in enumerate(DOCS) for t in d]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("".join(json.dumps({"token": t, "doc": d}) + "\n" for t, d in rows))
    csv_file = tmp_path / "t.csv"
    csv_file.write_text("doc,token\n" + "".join(f'{d},"{t}"\n' for t, d in rows))
    expected = [(f"d{i}", d) for i, d in enumerate(DOCS)]
    assert read_tokens_file(jsonl) == expected
    assert read_tokens_file(csv_file) == expected
    one_doc = tmp_path / "one.jsonl"
    one_doc.write_text('{"token": "x"}\n{"token": "y z"}\n')
    assert read_tokens_file(one_doc) == [("one.jsonl", ["x", "y z"])]


def test_time_series_with_a_label_per_step(tmp_path):
    """A "token" is a time step: label up/down, states from a toy recurrent filter."""
    rng = np.random.default_rng(1)
    steps = rng.normal(size=300).cumsum()
    labels = np.where(np.diff(steps, prepend=0) > 0, "up", "down")
    (tmp_path / "steps.txt").write_text("\n".join(labels) + "\n")
    decay = np.array([0.5, 0.9, 0.99])
    state, states = np.zeros(3), []
    for x in np.diff(steps, prepend=0):
        state = np.tanh(decay * state + x)
        states.append(state.copy())
    np.save(tmp_path / "h.npy", np.array(states, dtype=np.float32))
    np.save(tmp_path / "level.npy", steps)
    out = tmp_path / "idx"
    code = main(["index-states", "--tokens", str(tmp_path / "steps.txt"), "--states",
                 f"layers.0.h={tmp_path / 'h.npy'}", "--track",
                 f"level={tmp_path / 'level.npy'}", "--out", str(out)])
    assert code == 0
    with open_index(out) as index:
        assert index.n_tokens == 300 and index.n_docs == 1
        store = index.store("layers.0.h")
        # a step up after another move, inside the series (its padding then lies in it)
        first_up = next(t for t in np.flatnonzero(labels == "up") if t > 0
                        and labels[t - 1] != "up")
        pattern = select(store, index.doc_starts, first_up, first_up + 1, 0.3)
        assert 0 in pattern.units  # the fast unit follows every step up
        result = match(store, index.doc_starts, pattern, limit=5)
        assert all(index.tokens(m.start, m.end).text[0] == "up" for m in result.matches)


@pytest.mark.parametrize("change, message", [
    (lambda d: np.save(d["states"]["layers.0.h"], d["arrays"]["layers.0.h"][:-1]),
     r"layers\.0\.h\.npy has states for 10 tokens but there are 11 tokens"),
    (lambda d: np.save(d["states"]["layers.0.c"], np.ones((N, 2), dtype=np.int32)),
     r"layers\.0\.c\.npy holds int32 values"),
    (lambda d: np.save(d["states"]["layers.1.h"], np.ones(N, dtype=np.float32)),
     r"layers\.1\.h\.npy holds an array of shape \(11,\)"),
    (lambda d: d["states"]["layers.1.h"].write_text("not an array"),
     r"layers\.1\.h\.npy is not a readable \.npy array"),
    (lambda d: d["states"].update({"layer0.h": d["states"]["layers.0.h"]}),
     "bad state name 'layer0.h'"),
    (lambda d: d["states"]["layers.0.c"].unlink(), r"states file .*layers\.0\.c\.npy does not exist"),
    (lambda d: np.save(d["tracks"]["depth"], np.arange(N + 1)), "has 12 values but the index has 11"),
])
def test_bad_files_are_named_and_nothing_is_written(data, change, message):
    change(data)
    out = data["dir"] / "idx"
    with pytest.raises(BuildError, match=message):
        index_states(data["tokens"], data["states"], out, tracks=data["tracks"], progress=False)
    assert not out.exists()
    assert leftovers(data["dir"]) == []


def test_bad_tokens_files(tmp_path):
    bad = tmp_path / "t.jsonl"
    bad.write_text('{"token": "a"}\n{"tok": "b"}\n')
    with pytest.raises(BuildError, match=r"t\.jsonl:2: expected"):
        read_tokens_file(bad)
    bad = tmp_path / "t.csv"
    bad.write_text("word\na\n")
    with pytest.raises(BuildError, match="'token' column"):
        read_tokens_file(bad)
    bad.write_text("token,doc\na,1\nb,2\nc,1\n")
    with pytest.raises(BuildError, match=r"t\.csv:4: document '1' appears again"):
        read_tokens_file(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(BuildError, match="holds no tokens"):
        read_tokens_file(empty)


def test_a_failure_midway_leaves_no_half_index(data, monkeypatch):
    def broken(writer, merged, seconds):
        raise OSError("disk full")

    monkeypatch.setattr(states_module, "write_stats_and_publish", broken)
    out = data["dir"] / "idx"
    with pytest.raises(OSError, match="disk full"):
        index_states(data["tokens"], data["states"], out, progress=False)
    assert not out.exists()
    assert leftovers(data["dir"]) == []


def test_an_existing_target_is_refused_and_kept(data):
    out = data["dir"] / "idx"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(BuildError, match="already exists and is not empty"):
        index_states(data["tokens"], data["states"], out, progress=False)
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_reports_errors_in_one_line(data, capsys):
    out = data["dir"] / "idx"
    code = main(["index-states", "--tokens", str(data["tokens"]), "--states", "layers.0.h",
                 "--out", str(out)])
    assert code == 2
    assert "write NAME=FILE" in capsys.readouterr().err
    code = main(["index-states", "--tokens", str(data["tokens"]), "--states",
                 *(f"{k}={v}" for k, v in data["states"].items()), "--out", str(out), "--json",
                 "--no-faiss"])
    assert code == 0
    assert json.loads(capsys.readouterr().out)["tokens"] == N

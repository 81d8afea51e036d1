"""LSTMVis projects: export and import round trips, a project in LSTMVis's own layout answering
the same match as the native index, bad files, no half index; npz and Parquet exports."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from conftest import torch_threads

h5py = pytest.importorskip("h5py")
yaml = pytest.importorskip("yaml")

from indexer import states as states_module  # noqa: E402
from indexer.build import build_index  # noqa: E402
from indexer.export import ExportError, export_index  # noqa: E402
from indexer.lstmvis import ProjectError, import_lstmvis, read_dict  # noqa: E402
from indexer.writer import BuildError  # noqa: E402
from lstmsearch.cli import main  # noqa: E402
from lstmsearch.corpus import Corpus, Document  # noqa: E402
from lstmsearch.index import open_index  # noqa: E402
from lstmsearch.models import LanguageModel, ModelConfig, save_checkpoint  # noqa: E402
from lstmsearch.query import match, select  # noqa: E402
from lstmsearch.tokenize import train_tokenizer  # noqa: E402

WORDS = "the a cat dog bird sees likes runs sleeps big small red and but near".split()
BOUNDARY = "EOS"


def leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".partial")]


def same_index(a, b) -> None:
    """Same documents, tokens, vocabulary, states (bit for bit) and tracks."""
    assert a.state_names == b.state_names
    assert [(d.name, d.start, d.end) for d in a.documents()] == \
        [(d.name, d.start, d.end) for d in b.documents()]
    assert all(a.document_text(d) == b.document_text(d) for d in range(a.n_docs))
    ta, tb = a.tokens(0, a.n_tokens), b.tokens(0, b.n_tokens)
    for field in ("pos", "doc", "pos_in_doc", "token_id", "char_start", "char_end", "text"):
        assert np.array_equal(np.asarray(getattr(ta, field)), np.asarray(getattr(tb, field))), field
    assert a.vocab() == b.vocab()
    for name in a.state_names:
        assert np.array_equal(np.asarray(a.states(name)).view(np.uint16),
                              np.asarray(b.states(name)).view(np.uint16)), name
    assert a.track_names() == b.track_names()
    for name in a.track_names():
        np.testing.assert_array_equal(a.track(name), b.track(name))
    rows = "SELECT name, pos, label FROM tracks ORDER BY name, pos"
    assert a.sql(rows).rows == b.sql(rows).rows


# --- export, then import -------------------------------------------------------------------


def test_export_writes_the_lstmvis_layout(tiny_index, tmp_path):
    out = tmp_path / "project"
    result = export_index(tiny_index, out, format="lstmvis", progress=False)
    assert set(result.files) >= {"lstm.yml", "states.hdf5", "train.hdf5", "words.dict",
                                 "meta.hdf5"}
    config = yaml.safe_load((out / "lstm.yml").read_text())
    assert config["word_sequence"] == {"file": "train", "path": "word_ids", "dict_file": "words"}
    assert config["states"]["types"][:2] == [
        {"type": "output", "layer": 1, "path": "output1", "transform": "none"},
        {"type": "state", "layer": 1, "path": "states1", "transform": "none"}]
    assert config["meta"]["depth"]["vis"]["type"] == "scalar"
    with h5py.File(out / "states.hdf5") as f:
        assert sorted(f) == ["output1", "output2", "states1", "states2"]
        states1 = f["states1"]
        assert states1.shape == (tiny_index.n_tokens, 12) and states1.dtype == np.float32
        np.testing.assert_array_equal(states1[:], np.asarray(tiny_index.states(0, "c"),
                                                             dtype=np.float32))
    with h5py.File(out / "train.hdf5") as f:
        tokens = tiny_index.tokens(0, tiny_index.n_tokens)
        np.testing.assert_array_equal(f["word_ids"][:], tokens.token_id)
        np.testing.assert_array_equal(f["lstmsearch/char_start"][:], tokens.char_start)
    words = read_dict(out / "words.dict")
    assert len(words) == len(tiny_index.vocab())
    assert all(len(line.split()) == 2 for line in (out / "words.dict").read_text().splitlines())


def test_export_then_import_gives_the_same_index(tiny_index, tmp_path):
    export_index(tiny_index, tmp_path / "project", format="lstmvis", progress=False)
    result = import_lstmvis(tmp_path / "project", tmp_path / "back", progress=False)
    assert result.n_tokens == tiny_index.n_tokens and result.n_docs == tiny_index.n_docs
    with open_index(tmp_path / "back") as back:
        same_index(tiny_index, back)
        assert back.meta["tokenizer_kind"] == tiny_index.meta["tokenizer_kind"]
        assert back.info().model["hidden"] == 12


def test_label_tracks_survive_the_round_trip(tiny_index_path, tmp_path):
    """A label-only track (from `annotate`) and an imported discrete one keep their labels."""
    from indexer.annotate import annotate_index
    from indexer.states import index_states

    n = 30
    (tmp_path / "tokens.txt").write_text("\n".join(f"w{i % 7} x" if i % 5 == 0 else f"w{i % 7}"
                                                   for i in range(n)) + "\n")
    np.save(tmp_path / "h.npy", np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32))
    (tmp_path / "tags.txt").write_text("\n".join("N" if i % 3 else "V x" for i in range(n)))
    index_states(tmp_path / "tokens.txt", {"layers.0.h": tmp_path / "h.npy"}, tmp_path / "idx",
                 progress=False, faiss=False)
    sparse = tmp_path / "sparse.csv"
    sparse.write_text("pos,value\n3,B-PER\n4,I-PER\n20,B-LOC\n")
    annotate_index(tmp_path / "idx", "ner", sparse)
    annotate_index(tmp_path / "idx", "tag", tmp_path / "tags.txt")
    with open_index(tmp_path / "idx") as index:
        export_index(index, tmp_path / "project", format="lstmvis", progress=False)
    import_lstmvis(tmp_path / "project", tmp_path / "back", progress=False)
    with open_index(tmp_path / "idx") as a, open_index(tmp_path / "back") as b:
        same_index(a, b)
        assert b.sql("SELECT count(*) FROM tracks WHERE name = 'ner'").rows == [(3,)]
    # the exported dictionaries are valid for LSTMVis: two fields per line
    for line in (tmp_path / "project" / "tag.dict").read_text().splitlines():
        assert len(line.split()) == 2


# --- a project in LSTMVis's own layout -----------------------------------------------------


@pytest.fixture(scope="module")
def word_index(tmp_path_factory) -> Path:
    """A native index of a word-level 2-layer LSTM; every document ends with EOS."""
    rng = np.random.default_rng(7)
    docs = [Document(f"d{i}", " ".join([*rng.choice(WORDS, size=rng.integers(4, 14)), BOUNDARY]))
            for i in range(30)]
    tokenizer = train_tokenizer("word", [d.text for d in docs])
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=8, hidden=10,
                                      layers=2))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * 2.5 / 10**0.5)
    folder = tmp_path_factory.mktemp("word-index")
    save_checkpoint(folder / "model.pt", model.eval(), tokenizer)
    with torch_threads(1):
        build_index(Corpus("words", docs), folder / "model.pt", folder / "idx", progress=False)
    return folder / "idx"


LSTM_YML = """\
name: words  # project name
description: a word-level LSTM
files: # assign files to reference name
  states: states.hdf5 # HDF5 files have to end with .h5 or .hdf5 !!!
  train: train.hdf5 # word ids of training set
  words: words.dict # dict files have to end with .dict !!
  pos: pos.h5
  pos_dict: pos.dict
  score: score.hdf5

word_sequence: # defines the word sequence
  file: train # HDF5 file
  path: word_ids # path to table in HDF5
  dict_file: words # dictionary to map IDs from HDF5 to words

states: # section to define which states of your model you want to look at
  file: states # HDF5 files containing the state for each position
  types: [
        {type: state, layer: 1, path: states1}, # type={state, output}, layer=[1..x], path = HDF5 path
        {type: state, layer: 2, path: states2},
        {type: output, layer: 1, path: output1},
        {type: output, layer: 2, path: output2}
  ]

meta:
  part_of_speech:
    file: pos
    path: pos
    dict: pos_dict
    vis:
      type: discrete
      range: dict
  score:
    file: score
    path: score
    vis:
      type: scalar
      range: [0, 1]
  embedding_neighbours:
    type: wordvec
    file: score
    path: score
    vis: {type: discrete}
"""


def write_project(index, folder: Path) -> Path:
    """The native index's states and words in exactly LSTMVis's layout, ids from 1."""
    folder.mkdir()
    (folder / "lstm.yml").write_text(LSTM_YML)
    n = index.n_tokens
    with h5py.File(folder / "states.hdf5", "w") as f:
        for layer in (0, 1):
            for kind, prefix in (("c", "states"), ("h", "output")):
                f[f"{prefix}{layer + 1}"] = np.asarray(index.states(layer, kind), dtype=np.float32)
    tokens = index.tokens(0, n)
    with h5py.File(folder / "train.hdf5", "w") as f:
        f["word_ids"] = tokens.token_id.astype(np.int64) + 1
    vocab = index.vocab()
    (folder / "words.dict").write_text("".join(f"{w} {i + 1}\n" for i, w in enumerate(vocab)))
    pos_ids = np.array([1 if t in ("cat", "dog", "bird") else 2 if t.endswith("s") else 3
                        for t in tokens.text])
    with h5py.File(folder / "pos.h5", "w") as f:
        f["pos"] = pos_ids
    (folder / "pos.dict").write_text("NOUN 1\nVERB 2\nOTHER 3\n")
    with h5py.File(folder / "score.hdf5", "w") as f:
        f["score"] = np.linspace(0, 1, n)
    return folder


def first_pattern(index, name: str):
    """A non-empty pattern on a two-token span inside a document."""
    store = index.store(name)
    for pad_left in (1, 0):
        for doc in index.documents():
            for start in range(doc.start + 1, doc.end - 2):
                pattern = select(store, index.doc_starts, start, start + 2, 0.3, pad_left)
                if len(pattern.units) >= 2:
                    return pattern
    raise AssertionError("no pattern found")


def test_lstmvis_project_answers_the_same_match(word_index, tmp_path):
    project = write_project(open_index(word_index), tmp_path / "project")
    out = tmp_path / "imported"
    result = import_lstmvis(project, out, doc_boundary=BOUNDARY, progress=False)
    assert result.skipped == {"meta embedding_neighbours": 1}
    with open_index(word_index) as native, open_index(out) as imported:
        assert imported.n_docs == native.n_docs == 30
        assert [imported.document_text(d) for d in range(30)] == \
            [native.document_text(d) for d in range(30)]
        assert np.array_equal(imported.doc_starts, native.doc_starts)
        assert list(imported.tokens(0, 40).token_id) == list(native.tokens(0, 40).token_id + 1)
        for name in native.state_names:
            assert np.array_equal(np.asarray(imported.states(name)), np.asarray(native.states(name)))
        for name in ("layers.1.c", "layers.0.h"):
            pattern = first_pattern(native, name)
            a = match(native.store(name), native.doc_starts, pattern, text_of=native.text)
            b = match(imported.store(name), imported.doc_starts, pattern, text_of=imported.text)
            assert len(a.matches) > 1
            assert a.matches == b.matches
            assert a.length_histogram == b.length_histogram
        pos = imported.sql("SELECT value, label FROM tracks WHERE name = 'part_of_speech' "
                           "ORDER BY pos LIMIT 50").rows
        tokens = imported.tokens(0, 50).text
        assert all((label == "NOUN") == (t in ("cat", "dog", "bird")) for (_, label), t in
                   zip(pos, tokens))
        assert {value for value, _ in pos} <= {1.0, 2.0, 3.0}
        np.testing.assert_allclose(imported.track("score"), np.linspace(0, 1, imported.n_tokens))


def test_without_a_boundary_the_stream_is_one_document(word_index, tmp_path):
    project = write_project(open_index(word_index), tmp_path / "project")
    code = main(["import-lstmvis", str(project), str(tmp_path / "one"), "--no-faiss", "--json"])
    assert code == 0
    with open_index(tmp_path / "one") as index:
        assert index.n_docs == 1
        text = index.document_text(0)
        tokens = index.tokens(0, index.n_tokens)
        assert text == " ".join(tokens.text)
        assert all(text[s:e] == t for s, e, t in zip(tokens.char_start, tokens.char_end,
                                                       tokens.text))


# --- bad files -----------------------------------------------------------------------------


def edit_yml(project: Path, old: str, new: str) -> None:
    text = (project / "lstm.yml").read_text()
    assert old in text
    (project / "lstm.yml").write_text(text.replace(old, new))


def replace_dataset(path: Path, name: str, data: np.ndarray) -> None:
    with h5py.File(path, "a") as f:
        del f[name]
        f[name] = data


BAD = {
    "missing dataset": (
        lambda p, n: edit_yml(p, "path: states2}", "path: states3}"),
        r"states\.hdf5 has no dataset 'states3' \(layers\.1\.c\); it has output1, output2, "
        r"states1, states2"),
    "shape mismatch": (
        lambda p, n: replace_dataset(p / "states.hdf5", "output2", np.zeros((n - 1, 10), np.float32)),
        r"states\.hdf5:output2 .* has states for {n1:,} tokens but there are {n:,} tokens"),
    "integer states": (
        lambda p, n: replace_dataset(p / "states.hdf5", "states1", np.zeros((n, 10), np.int32)),
        r"states\.hdf5:states1 .*holds int32 values: expected one of float16, float32, float64"),
    "1-D states": (
        lambda p, n: replace_dataset(p / "states.hdf5", "states1", np.zeros(n, np.float32)),
        r"states\.hdf5:states1 .*holds an array of shape"),
    "float word ids": (
        lambda p, n: replace_dataset(p / "train.hdf5", "word_ids", np.zeros(n, np.float32)),
        r"train\.hdf5:word_ids holds float32 values: word ids must be integers"),
    "word id not in dict": (
        lambda p, n: (p / "words.dict").write_text("the 1\n"),
        r"train\.hdf5:word_ids has word id \d+, which words\.dict does not list"),
    "meta length": (
        lambda p, n: replace_dataset(p / "pos.h5", "pos", np.ones(n + 3, np.int64)),
        r"pos\.h5:pos \(meta part_of_speech\) has {n3:,} values but there are {n:,}"),
    "missing file": (
        lambda p, n: (p / "score.hdf5").unlink(),
        r"file score\.hdf5 \(meta\.score\.file\) does not exist"),
    "bad type": (
        lambda p, n: edit_yml(p, "{type: state, layer: 1", "{type: memory, layer: 1"),
        r"lstm\.yml: states\.types\[0\] has type 'memory'"),
    "layer 0": (
        lambda p, n: edit_yml(p, "{type: state, layer: 1", "{type: state, layer: 0"),
        r"states\.types\[0\] has layer 0; LSTMVis layers are numbered from 1"),
    "not hdf5": (
        lambda p, n: (p / "states.hdf5").write_text("nope"),
        r"states\.hdf5 is not a readable HDF5 file"),
    "bad dict line": (
        lambda p, n: (p / "pos.dict").write_text("NOUN 1\nVERB\n"),
        r"pos\.dict:2: expected 'word id'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_projects_name_the_file_and_dataset(word_index, tmp_path, case):
    with open_index(word_index) as index:
        n = index.n_tokens
        project = write_project(index, tmp_path / "project")
    change, message = BAD[case]
    change(project, n)
    out = tmp_path / "idx"
    with pytest.raises(BuildError, match=message.format(n=n, n1=n - 1, n3=n + 3)):
        import_lstmvis(project, out, doc_boundary=BOUNDARY, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_no_project_and_unknown_boundary(tmp_path, word_index):
    with pytest.raises(ProjectError, match="has no lstm.yml"):
        import_lstmvis(tmp_path, tmp_path / "idx")
    with open_index(word_index) as index:
        project = write_project(index, tmp_path / "project")
    with pytest.raises(ProjectError, match="boundary '</s>' is not a word"):
        import_lstmvis(project, tmp_path / "idx", doc_boundary="</s>")


def test_a_failure_while_copying_states_leaves_nothing(word_index, tmp_path, monkeypatch):
    with open_index(word_index) as index:
        project = write_project(index, tmp_path / "project")
    calls = []

    def failing_read(self, start, end):
        calls.append(start)
        if len(calls) > 2:
            raise OSError("HDF5 read error")
        return np.array(self.array[start:end])

    monkeypatch.setattr(states_module.ArraySource, "read", failing_read)
    out = tmp_path / "idx"
    with pytest.raises(BuildError, match=r"cannot read states\.hdf5:output1 .*HDF5 read error"):
        import_lstmvis(project, out, progress=False)
    assert not out.exists() and leftovers(tmp_path) == []


def test_cli_import_error_is_one_line(tmp_path, capsys):
    assert main(["import-lstmvis", str(tmp_path), str(tmp_path / "idx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no lstm.yml" in err


# --- npz and parquet -----------------------------------------------------------------------


def test_npz_export(tiny_index, tmp_path):
    assert main(["export", str(tiny_index.path), "--format", "npz", str(tmp_path / "npz")]) == 0
    n = tiny_index.n_tokens
    with np.load(tmp_path / "npz" / "states.npz") as states:
        assert sorted(states.files) == sorted(tiny_index.state_names)
        for name in tiny_index.state_names:
            assert states[name].dtype == np.float16 and states[name].shape == (n, 12)
            assert np.array_equal(states[name], np.asarray(tiny_index.states(name)))
    with np.load(tmp_path / "npz" / "tokens.npz") as tokens:
        expected = tiny_index.tokens(0, n)
        for column in ("token_id", "doc", "pos_in_doc", "char_start", "char_end"):
            assert np.array_equal(tokens[column], getattr(expected, column)), column
        assert np.array_equal(tokens["doc_starts"], tiny_index.doc_starts)
        assert list(tokens["vocab"]) == tiny_index.vocab()
        np.testing.assert_array_equal(tokens["track.depth"], tiny_index.track("depth"))
    docs = [json.loads(line) for line in (tmp_path / "npz" / "documents.jsonl").open()]
    assert docs[3]["text"] == tiny_index.document_text(3)
    export_index(tiny_index, tmp_path / "f32", format="npz", dtype="float32",
                 states=["layers.1.c"])
    with np.load(tmp_path / "f32" / "states.npz") as states:
        assert states.files == ["layers.1.c"] and states["layers.1.c"].dtype == np.float32


def test_parquet_export(tiny_index, tmp_path):
    out = tmp_path / "pq"
    result = export_index(tiny_index, out, format="parquet", progress=False)
    assert "documents.parquet" in result.files
    con = duckdb.connect()
    path = str(out / "states" / "layers.1.c" / "*.parquet")
    values = con.execute("SELECT * EXCLUDE (pos) FROM read_parquet(?) ORDER BY pos",
                         [path]).fetchnumpy()
    stored = np.asarray(tiny_index.states("layers.1.c"), dtype=np.float32)
    for u in range(12):
        assert np.array_equal(values[f"u{u}"], stored[:, u])
    tokens = con.execute("SELECT text FROM read_parquet(?) ORDER BY pos",
                         [str(out / "tokens" / "*.parquet")]).fetchall()
    assert [t for (t,) in tokens] == list(tiny_index.tokens(0, tiny_index.n_tokens).text)
    depth = con.execute("SELECT value FROM read_parquet(?) WHERE name = 'depth' ORDER BY pos",
                        [str(out / "tracks.parquet")]).fetchnumpy()["value"]
    np.testing.assert_array_equal(depth, tiny_index.track("depth"))


def test_export_refuses_a_non_empty_target(tiny_index, tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("keep")
    with pytest.raises(ExportError, match="not empty"):
        export_index(tiny_index, tmp_path / "x", format="npz")
    with pytest.raises(ValueError, match="layers.7.h is not in this index"):
        export_index(tiny_index, tmp_path / "y", format="npz", states=["layers.7.h"])
    assert leftovers(tmp_path) == [] and not (tmp_path / "y").exists()


def test_missing_h5py_says_how_to_install_it(monkeypatch, tmp_path):
    import sys

    from indexer.lstmvis import require_h5py

    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ProjectError, match=r"pip install 'lstmsearch\[hdf5\]'"):
        require_h5py()

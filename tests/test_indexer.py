"""The indexing job: shards, kills and resumes, appends, options, annotations, CLI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import duckdb
import numpy as np
import pytest
import torch
from conftest import TINY_SHARD, TINY_SHARD_TOKENS, make_tiny_model, tiny_parens, torch_threads

from indexer.annotate import annotate_index
from indexer.build import build_index
from indexer.segment import plan_segments
from indexer.writer import BuildError
from lstmsearch.cli import main
from lstmsearch.corpus import Corpus, Document
from lstmsearch.extract import extract
from lstmsearch.index import IncompleteIndexError, open_index
from lstmsearch.models import LanguageModel, ModelConfig, load_model, save_checkpoint
from lstmsearch.tokenize import train_tokenizer
from lstmsearch.tracks import CODE_TRACKS, TEXT_TRACKS, text_tracks

SNAPSHOT_TABLES = {
    "documents": "doc", "tokens": "pos", "vocab": "token_id", "layers": "seq",
    "tracks": "name, pos", "unit_stats": "layer, kind, unit",
    "unit_on": "layer, kind, unit, threshold", "unit_top": "layer, kind, unit, lowest, rank",
    "faiss_indexes": "name, segment",
}
"""What an index answers from: its tables as a reader sees them."""
MANIFEST_TABLES = {
    "segments": "segment",
    "files": "path",
}
VOLATILE_META = {"created_at", "updated_at", "build_seconds", "model_source", "corpus"}
VOLATILE_COLUMNS = {"faiss_indexes": "seconds", "segments": "seconds",
                    "files": "sha256"}  # rows.duckdb files differ in bytes, not in rows


class Interrupted(Exception):
    pass


def snapshot(path: Path, layout: bool = True) -> dict:
    """Everything an index holds that must not depend on how the build was run: every row a
    reader sees and, with `layout`, the manifest and the bytes of every file but the row
    databases (whose rows are compared instead). Without `layout`, only what queries answer
    from: the rows, the merged statistics and the stored states."""
    out = {}
    with open_index(path) as index:
        for table, order in SNAPSHOT_TABLES.items():
            if table == "faiss_indexes" and not layout:
                continue
            exclude = " EXCLUDE (seconds)" if table == "faiss_indexes" else ""
            out[table] = index.sql(f"SELECT *{exclude} FROM {table} ORDER BY {order}").rows
        for name in index.state_names:
            out[f"states {name}"] = np.asarray(index.states(name)).tobytes()
    con = duckdb.connect(str(path / "index.duckdb"), read_only=True)
    out["meta"] = sorted(r for r in con.execute("SELECT * FROM meta").fetchall()
                         if r[0] not in VOLATILE_META | ({"manifest_version", "next_segment"}
                                                         if not layout else set()))
    if layout:
        for table, order in MANIFEST_TABLES.items():
            rows = con.execute(f"SELECT * EXCLUDE ({VOLATILE_COLUMNS[table]}) FROM {table} "
                               f"WHERE {'true' if table != 'files' else 'kind <> ?'} "
                               f"ORDER BY {order}", [] if table != "files" else ["rows"])
            out[table] = rows.fetchall()
    con.close()
    if layout:
        for f in sorted(path.rglob("*")):
            if f.is_file() and f.name not in ("rows.duckdb", "index.duckdb", "write.lock"):
                out[str(f.relative_to(path))] = f.read_bytes()
    out["model.pt"] = (path / "model.pt").read_bytes()
    return out


def assert_same_index(a: Path, b: Path, layout: bool = True) -> None:
    left, right = snapshot(a, layout), snapshot(b, layout)
    assert left.keys() == right.keys()
    for key in left:
        assert left[key] == right[key], f"{key} differs"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_corpus, tiny_model_path) -> Path:
    """An uninterrupted build to compare against."""
    out = tmp_path_factory.mktemp("reference") / "index"
    with torch_threads(1):
        build_index(tiny_corpus, tiny_model_path, out, **TINY_SHARD, progress=False)
    return out


@pytest.fixture()
def annotated(tmp_path, tiny_index_path):
    """A copy of the tiny index that a test may change."""
    import shutil

    path = tmp_path / "annotated"
    shutil.copytree(tiny_index_path, path)
    return path


def test_plan_segments_groups_whole_documents():
    plans = plan_segments([5, 5, 5, 20, 1, 1], 10, 1, first_number=3, first_doc=7,
                          first_token=100)
    assert [(s.number, s.doc_start, s.doc_end, s.tok_start, s.tok_end) for s in plans] == [
        (3, 7, 9, 100, 110), (4, 9, 11, 110, 135), (5, 11, 13, 135, 137)]
    assert plans[0].name == "seg-000003"
    plans = plan_segments([5, 5, 5, 20, 1, 1], 10, 3, first_number=0, first_doc=0,
                          first_token=0)
    assert [(s.doc_start, s.doc_end) for s in plans] == [(0, 3), (3, 6)]


def test_build_is_deterministic(reference, tmp_path, tiny_corpus, tiny_model_path):
    build_index(tiny_corpus, tiny_model_path, tmp_path / "again", **TINY_SHARD, progress=False)
    assert_same_index(reference, tmp_path / "again")


def test_interrupted_build_resumes_to_the_same_index(tmp_path, tiny_corpus, tiny_model_path,
                                                     reference):
    out = tmp_path / "index"

    def stop_after_two(segment: int) -> None:
        if segment == 1:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_index(tiny_corpus, tiny_model_path, out, **TINY_SHARD, progress=False,
                    on_segment=stop_after_two)
    with pytest.raises(IncompleteIndexError, match="--resume"):
        open_index(out)
    with open_index(out, allow_partial=True) as partial, open_index(reference) as full:
        assert len(partial.segments) == 2
        assert 0 < partial.n_tokens < full.n_tokens
        assert partial.n_docs == len(partial.documents()) < full.n_docs
        for name in full.state_names:
            np.testing.assert_array_equal(partial.states(name),
                                          full.states(name)[: partial.n_tokens])
        assert partial.text(0, partial.n_tokens).split("\n") == [
            d.text for d in tiny_corpus.documents[: partial.n_docs]]
    result = build_index(None, None, out, resume=True, progress=False)
    assert result.mode == "resume" and result.n_tokens == open_index(reference).n_tokens
    assert_same_index(out, reference)
    again = build_index(None, None, out, resume=True, progress=False)
    assert again.mode == "complete" and "already complete" in again.summary()


KILL_SCRIPT = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r} + "/tests")
import torch
import indexer.build as build
import lstmsearch.store as store
torch.set_num_threads(1)
from conftest import tiny_parens
where = {where!r}
calls = {{"n": 0}}
def kill_on(n):
    calls["n"] += 1
    if calls["n"] == n:
        os.kill(os.getpid(), signal.SIGKILL)
import indexer.segment as segment
if where == "mid-segment":    # states of segment 2 written, its FAISS half done, not listed
    real_faiss = segment.build_faiss
    def faiss(*a, **k):
        result = real_faiss(*a, **k)
        kill_on(4 * 2 + 2)
        return result
    segment.build_faiss = faiss
elif where == "renamed":      # segment 1 complete on disk, not listed in the manifest
    real_add = build.IndexWriter.add_segment
    def add(self, *a, **k):
        kill_on(2)
        return real_add(self, *a, **k)
    build.IndexWriter.add_segment = add
elif where == "finalize":     # merged statistics written, not published
    real_publish = build.IndexWriter.publish
    def publish(self, *a, **k):
        kill_on(1)
    build.IndexWriter.publish = publish
elif where == "plan":         # schema committed, plan not
    def plan(self, *a, **k):
        kill_on(1)
    build.IndexWriter.plan = plan
elif where == "codebooks":    # FAISS codebooks trained and saved, plan not committed
    real_train = build.train_codebooks
    def train(*a, **k):
        result = real_train(*a, **k)
        kill_on(1)
        return result
    build.train_codebooks = train
elif where == "partials":     # published, the merged partial statistics not yet removed
    real_unlink = Path.unlink
    def unlink(self, *a, **k):
        if self.name == "partial.npz":
            kill_on(1)
        return real_unlink(self, *a, **k)
    Path.unlink = unlink
build.build_index(tiny_parens(), {model!r}, {out!r}, segment_tokens={shard_tokens},
                  segment_docs=1, progress=False)
"""


@pytest.mark.parametrize("where", ["mid-segment", "renamed", "finalize", "plan", "codebooks",
                                   "partials"])
def test_killed_build_resumes_to_the_same_index(tmp_path, tiny_model_path, reference, where):
    out = tmp_path / "index"
    root = str(Path(__file__).resolve().parents[1])
    script = KILL_SCRIPT.format(root=root, where=where, model=str(tiny_model_path), out=str(out),
                                shard_tokens=TINY_SHARD_TOKENS)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr
    if where == "partials":  # complete: it answers, with merged statistics left to remove
        open_index(out).close()
        assert list(out.glob("segments/*/partial.npz"))
    else:
        with pytest.raises(IncompleteIndexError if where not in ("plan", "codebooks")
                           else Exception):
            open_index(out)
    if where in ("plan", "codebooks"):
        with pytest.raises(BuildError, match="before it saved its plan"):
            build_index(None, None, out, resume=True, progress=False)
    build_index(tiny_parens(), tiny_model_path, out, resume=True, **TINY_SHARD,
                progress=False)
    assert_same_index(out, reference)


def test_append_equals_building_once(tmp_path, tiny_corpus, tiny_model_path, reference):
    out = tmp_path / "index"
    docs = tiny_corpus.documents
    first = Corpus("parens", docs[:15])
    rest = Corpus("parens", docs[15:])
    build_index(first, tiny_model_path, out, **TINY_SHARD, progress=False)
    result = build_index(rest, None, out, append=True, progress=False)
    assert result.mode == "append" and result.new_docs == len(docs) - 15
    assert result.n_docs == len(docs)
    assert_same_index(out, reference, layout=False)
    with open_index(out) as index:
        assert "parens + parens" in index.info().corpus


def next_token_loss(model: LanguageModel, ids: np.ndarray) -> np.ndarray:
    """-ln p(token | tokens before) from the model's plain forward pass; NaN at position 0."""
    with torch.no_grad():
        logits, _ = model(torch.as_tensor(ids, dtype=torch.long).unsqueeze(0))
        logp = torch.log_softmax(logits[0], dim=-1).numpy()
    want = np.full(len(ids), np.nan)
    want[1:] = -logp[np.arange(len(ids) - 1), ids[1:]]
    return want


def assert_stored_surprisal(path: Path, model: LanguageModel) -> None:
    """The index's surprisal track is every document's next-token loss under `model`."""
    with open_index(path) as index:
        stored = index.track("surprisal")
        tokens = index.tokens(0, index.n_tokens)
        starts = index.doc_starts
        for d in range(index.n_docs):
            a, b = int(starts[d]), int(starts[d + 1])
            np.testing.assert_allclose(stored[a:b], next_token_loss(model, tokens.token_id[a:b]),
                                       atol=1e-4, rtol=0)
        assert np.isnan(stored[starts[:-1]]).all()
        assert np.isfinite(np.delete(stored, starts[:-1])).all()


def test_stored_surprisal_is_the_models_next_token_loss(reference, tiny_model_path):
    assert_stored_surprisal(reference, load_model(tiny_model_path).model)
    with open_index(reference) as index:
        assert index.meta["surprisal"] == "true"
        assert len(index.segments) > 3  # the track was written segment by segment


def test_surprisal_can_be_left_out_and_append_keeps_the_choice(tmp_path, tiny_corpus,
                                                              tiny_model_path):
    out = tmp_path / "index"
    docs = tiny_corpus.documents
    build_index(Corpus("parens", docs[:10]), tiny_model_path, out, surprisal=False,
                progress=False)
    build_index(Corpus("parens", docs[10:14]), None, out, append=True, progress=False)
    with open_index(out) as index:
        assert index.track_names() == ["depth"]
        assert index.n_docs == 14
    kept = tmp_path / "kept"
    build_index(Corpus("parens", docs[:10]), tiny_model_path, kept, progress=False)
    build_index(Corpus("parens", docs[10:14]), None, kept, append=True, progress=False)
    assert_stored_surprisal(kept, load_model(tiny_model_path).model)


def test_a_corpus_track_may_not_be_called_surprisal(tmp_path, tiny_model_path):
    depth = np.zeros(6)
    corpus = Corpus("mine", [Document("a", "(()())", {"surprisal": depth})])
    with pytest.raises(BuildError, match="track named 'surprisal'"):
        build_index(corpus, tiny_model_path, tmp_path / "index", progress=False)
    assert not (tmp_path / "index").exists()
    build_index(corpus, tiny_model_path, tmp_path / "index", surprisal=False, progress=False)


def test_append_refuses_another_model_and_incomplete_index(tmp_path, tiny_corpus,
                                                           tiny_model_path, annotated):
    other = make_tiny_model(tmp_path / "other.pt", tiny_corpus, seed=7)
    with pytest.raises(BuildError, match="not the model of index"):
        build_index(tiny_corpus, other, annotated, append=True, progress=False)
    wider = make_tiny_model(tmp_path / "wider.pt", tiny_corpus, hidden=16)  # other state sizes
    with pytest.raises(BuildError, match=f"model {wider} is not the model of index"):
        build_index(tiny_corpus, wider, annotated, append=True, progress=False)
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        build_index(tiny_corpus, tiny_model_path, out, **TINY_SHARD, progress=False,
                    on_segment=lambda s: (_ for _ in ()).throw(Interrupted()))
    with pytest.raises(BuildError, match="--resume"):
        build_index(tiny_corpus, None, out, append=True, progress=False)


def test_new_build_refuses_an_existing_directory(tiny_corpus, tiny_model_path, annotated):
    with pytest.raises(BuildError, match="--resume .* --append"):
        build_index(tiny_corpus, tiny_model_path, annotated, progress=False)


def test_chosen_layers_and_kinds_of_a_gru(tmp_path, tiny_corpus):
    model = make_tiny_model(tmp_path / "gru.pt", tiny_corpus, arch="gru", layers=3, hidden=6)
    out = tmp_path / "index"
    result = build_index(Corpus("parens", tiny_corpus.documents[:8]), model, out, layers=[0, 2],
                         progress=False)
    assert result.states == ("layers.0.h", "layers.2.h")
    with open_index(out) as index:
        assert index.state_names == ["layers.0.h", "layers.2.h"]
        loaded = load_model(model)
        ids = [loaded.tokenizer.encode(d.text).ids for d in tiny_corpus.documents[:8]]
        fresh = np.concatenate([s["layers.2.h"] for s in extract(loaded.model, ids)])
        np.testing.assert_array_equal(index.states(2, "h"), fresh.astype(np.float16))
    with pytest.raises(ValueError, match="unknown kind 'c'"):
        build_index(tiny_corpus, model, tmp_path / "bad", kinds=["c"], progress=False)


def test_bidirectional_states_hold_both_directions(tmp_path, tiny_corpus):
    model = make_tiny_model(tmp_path / "bi.pt", tiny_corpus, layers=1, hidden=5,
                            bidirectional=True)
    docs = tiny_corpus.documents[:6]
    build_index(Corpus("parens", docs), model, tmp_path / "index", progress=False)
    loaded = load_model(model)
    fresh = extract(loaded.model, [loaded.tokenizer.encode(d.text).ids for d in docs])
    with open_index(tmp_path / "index") as index:
        for name in ("layers.0.h", "layers.0.c"):
            assert index.store(name).dim == 10
            expected = np.concatenate([f[name] for f in fresh]).astype(np.float16)
            np.testing.assert_array_equal(index.states(name), expected)
    assert_stored_surprisal(tmp_path / "index", loaded.model)  # the forward direction's


def test_word_tokens_keep_unicode_offsets_and_whitespace(tmp_path):
    texts = ["Grüße,  wörld! 😀 naïve\tcafé", "a  b\n\nc — ünïcode ok", "   ", "x"]
    corpus = Corpus("words", [Document(f"d{i}", t) for i, t in enumerate(texts)])
    tokenizer = train_tokenizer("word", texts)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=5,
                                      layers=1))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    result = build_index(corpus, tmp_path / "m.pt", tmp_path / "index", progress=False)
    assert result.skipped == {"no tokens": 1} and "skipped" in result.summary()
    with open_index(tmp_path / "index") as index:
        kept = [t for t in texts if t.strip()]
        assert index.n_docs == 3
        for d, text in zip(index.documents(), kept, strict=True):
            tokens = index.tokens(d.start, d.end)
            assert tokens.text == tuple(text[a:b] for a, b in zip(tokens.char_start,
                                                                   tokens.char_end, strict=True))
            assert index.text(d.start, d.end) == text.strip()
        assert index.text(0, 2) == "Grüße,"
        assert index.text(1, 3) == ",  wörld"


# --- computed tracks ---------------------------------------------------------------------


def char_model(tmp_path: Path, texts: list[str]) -> Path:
    """A small untrained char LSTM whose vocabulary covers `texts`."""
    tokenizer = train_tokenizer("char", texts)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=6,
                                      layers=1))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    return tmp_path / "m.pt"


def stored_track(index, name: str, doc: int) -> np.ndarray:
    d = index.documents()[doc]
    return index.track(name)[d.start : d.end]


def test_code_corpus_gets_code_tracks_and_counts_files_that_do_not_tokenize(tmp_path):
    files = {
        "a.py": 'def f(x):\n    return (x, "s)")  # (\n',
        "b.py": "s = '''open\n",  # does not tokenize
        "c.py": "y = [1,\n     2]\n",
    }
    folder = tmp_path / "code"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    model = char_model(tmp_path, [*files.values(), "z{}:"])
    result = build_index(str(folder), model, tmp_path / "index", progress=False)
    assert (result.tracks, result.untokenized) == ("code", 1)
    assert "1 files do not tokenize" in result.summary()
    with open_index(tmp_path / "index") as index:
        assert index.track_names() == sorted((*CODE_TRACKS, "surprisal"))
        # a char model: one token per character, so the stored values are the characters'
        a = files["a.py"]
        quoted = a.index('"s)"')
        assert stored_track(index, "in_string", 0).tolist() == [
            float(quoted <= i < quoted + 4) for i in range(len(a))]
        assert stored_track(index, "bracket_depth", 0).tolist() == (
            [0] * 5 + [1] * 3 + [0] * 2 + [0] * 11 + [1] * 9 + [0] * 6)
        assert stored_track(index, "indent", 2).tolist() == [0] * 8 + [5] * 8
        # the file that does not tokenize keeps its line tracks, and no others
        assert np.isnan(stored_track(index, "in_string", 1)).all()
        assert stored_track(index, "column", 1).tolist() == list(range(len(files["b.py"])))
        assert len(index.neurons.correlate("bracket_depth", 0, "c", top=2)) == 2
    # an append computes the index's own track set (and merges top lists shorter than TOP_K)
    (tmp_path / "more.py").write_text("z = {1: (2)}\n")
    build_index(str(tmp_path / "more.py"), None, tmp_path / "index", append=True, progress=False)
    with open_index(tmp_path / "index") as index:
        assert stored_track(index, "bracket_depth", 3).tolist() == (
            [0] * 4 + [1] * 4 + [2] * 3 + [1, 0])
    main(["index", str(folder), "--model", str(model), "--out", str(tmp_path / "t"),
          "--tracks", "text"])
    with open_index(tmp_path / "t") as index:
        assert index.track_names() == sorted((*TEXT_TRACKS, "surprisal"))


def test_text_corpus_gets_text_tracks_and_none_leaves_them_out(tmp_path):
    texts = ['Say "hi." Then go.', "one two\nthree"]
    corpus = Corpus("prose", [Document(f"d{i}", t) for i, t in enumerate(texts)])
    model = char_model(tmp_path, texts)
    build_index(corpus, model, tmp_path / "index", progress=False)
    with open_index(tmp_path / "index") as index:
        for name, values in text_tracks(texts[0]).items():
            np.testing.assert_array_equal(stored_track(index, name, 0), values)
    build_index(corpus, model, tmp_path / "bare", progress=False, tracks="none")
    with open_index(tmp_path / "bare") as index:
        assert index.track_names() == ["surprisal"]
    with pytest.raises(BuildError, match="unknown track set 'prose'"):
        build_index(corpus, model, tmp_path / "bad", progress=False, tracks="prose")


def test_a_word_tokenizer_index_has_no_position_inside_a_word(tmp_path):
    texts = ['Say "hi." Then go now.', "one two\nthree four. Five"]
    corpus = Corpus("prose", [Document(f"d{i}", t) for i, t in enumerate(texts)])
    tokenizer = train_tokenizer("word", texts)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=5,
                                      layers=1))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    build_index(corpus, tmp_path / "m.pt", tmp_path / "index", progress=False)
    with open_index(tmp_path / "index") as index:
        # every token is a whole word: its position in the word would be 0 everywhere
        assert index.track_names() == sorted((*set(TEXT_TRACKS) - {"word_position"},
                                              "surprisal"))
        starts = index.tokens(0, index.n_tokens).char_start
        d = index.documents()[1]
        want = text_tracks(texts[1])["sentence_position"][starts[d.start : d.end]]
        np.testing.assert_array_equal(stored_track(index, "sentence_position", 1), want)


# --- annotations -------------------------------------------------------------------------


def test_annotate_dense_sparse_npy_and_labels(annotated, tmp_path):
    with open_index(annotated) as index:
        n = index.n_tokens
    (tmp_path / "dense.txt").write_text("\n".join(str(i % 3) for i in range(n)) + "\n")
    assert annotate_index(annotated, "mod3", tmp_path / "dense.txt") == n
    (tmp_path / "sparse.csv").write_text("pos,value\n5,1.5\n2,-1\n")
    annotate_index(annotated, "few", tmp_path / "sparse.csv")
    np.save(tmp_path / "v.npy", np.arange(n, dtype=np.float32) / n)
    annotate_index(annotated, "ramp", tmp_path / "v.npy")
    (tmp_path / "labels.txt").write_text("\n".join("open" if i % 2 else "shut" for i in range(n)))
    annotate_index(annotated, "tag", tmp_path / "labels.txt")
    with open_index(annotated) as index:
        assert index.track_names() == ["depth", "few", "mod3", "ramp", "surprisal", "tag"]
        np.testing.assert_array_equal(index.track("mod3"), np.arange(n) % 3)
        few = index.track("few")
        assert few[5] == 1.5 and few[2] == -1 and np.isnan(few[0])
        np.testing.assert_allclose(index.track("ramp"), np.arange(n, dtype=np.float32) / n)
        labels = index.sql("SELECT label FROM tracks WHERE name = 'tag' ORDER BY pos LIMIT 2")
        assert labels.column("label") == ["shut", "open"]
        assert index.track_labels("tag")[:3] == ["shut", "open", "shut"]
        assert np.isnan(index.track("tag")).all()


@pytest.mark.parametrize(
    "content, message",
    [("1\n2\n3\n", "has 3 values but the index has"),
     ("pos,value\n1,2\n999999,3\n", "position 999999 out of range"),
     ("pos,value\n1,2\n1,3\n", "more than once"),
     ("pos,value\nx,2\n", "not a token position")],
)
def test_bad_track_file_leaves_the_index_unchanged(annotated, tmp_path, content, message):
    before = snapshot(annotated)
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(BuildError, match=message):
        annotate_index(annotated, "bad", tmp_path / "bad.csv")
    with pytest.raises(BuildError, match="already has a track 'depth'"):
        annotate_index(annotated, "depth", tmp_path / "bad.csv")
    assert snapshot(annotated) == before


# --- command line ------------------------------------------------------------------------


def test_cli_index_info_annotate(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "index"
    assert main(["index", "parens", "--model", str(tiny_model_path), "--out", str(out),
                 "--limit", "6", "--kinds", "h", "--no-faiss"]) == 0
    assert "build: 6 documents" in capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "layers.0.h (12), layers.1.h (12)" in info and "tokens" in info
    with open_index(out) as index:
        n = index.n_tokens
    (tmp_path / "t.txt").write_text("1\n" * (n - 1))
    assert main(["annotate", str(out), "--track", "x", str(tmp_path / "t.txt")]) == 2
    assert f"has {n - 1} values" in capsys.readouterr().err
    assert main(["index", "--out", str(out), "--resume"]) == 0
    assert "already complete" in capsys.readouterr().out


# --- statistics on stored values ---------------------------------------------------------


def test_bit_comparisons_match_float_comparisons():
    from indexer.stats import compare

    every = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    values = every.view(np.float16).astype(np.float64)
    finite = np.isfinite(values)
    for v in [0.0, -0.0, 1.0, -1.0, 2.0**-24, -(2.0**-24), 65504.0, -65504.0, 0.333251953125]:
        for op, expected in ((">", values > v), ("<", values < v), ("==", values == v)):
            got = np.zeros(len(values), dtype=bool)
            got[compare(every, v, op)] = True
            np.testing.assert_array_equal(got[finite], expected[finite], err_msg=f"{op} {v}")


def test_stats_with_ties_and_negative_zeros(tmp_path):
    from indexer.stats import unit_stats
    from lstmsearch.store import StateStore, StateWriter, to_stored

    rng = np.random.default_rng(3)
    n = 1000
    values = np.stack([
        rng.choice([-1.0, -0.0, 0.0, 0.5, 1.0], size=n),  # heavy ties
        rng.standard_normal(n),
        np.where(rng.random(n) < 0.5, -0.0, 0.0),  # only zeros of both signs
    ], axis=1).astype(np.float32)
    writer = StateWriter.create(tmp_path / "s.f16", 3, n)
    writer.write(0, to_stored(values))
    writer.close()
    store = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", 3, n)
    s = unit_stats(store, k=100)
    stored = store.tokens_by_units().astype(np.float64)
    for unit in range(3):
        x = stored[:, unit]
        assert s.mean[unit] == pytest.approx(x.mean(), abs=1e-12)
        assert s.std[unit] == pytest.approx(x.std(), abs=1e-12)
        np.testing.assert_array_equal(s.quantiles[unit],
                                      np.quantile(x, [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99])
                                      .astype(np.float32))
        top = np.lexsort((np.arange(n), -x))[:100]
        bottom = np.lexsort((np.arange(n), x))[:100]
        np.testing.assert_array_equal(s.top_pos[unit], top)
        np.testing.assert_array_equal(s.bottom_pos[unit], bottom)
        np.testing.assert_array_equal(s.top_value[unit], x[top])
        assert s.on_fraction[unit, 9] == pytest.approx(np.mean(x >= 0.0))  # threshold 0.0


def test_segments_share_one_codebook_and_record_their_recall(tmp_path, tiny_corpus,
                                                            tiny_model_path):
    import faiss

    out = tmp_path / "index"
    build_index(tiny_corpus, tiny_model_path, out, kinds=["h"], layers=[1],
                segment_tokens=500, segment_docs=1, progress=False)
    with open_index(out) as index:
        rows = index.sql("SELECT segment, description, recall_at_10 FROM faiss_indexes").rows
        assert len(rows) == len(index.segments) > 2
        assert all(d.startswith("PQ") for _, d, _ in rows)
        for segment, _, recall in rows:  # measured on every 8th segment
            assert (0.5 <= recall <= 1.0) if segment % 8 == 0 else recall is None
        (codebook,) = [f for f in index.files if f.kind == "codebook"]
        trained = faiss.read_index(str(out / codebook.path))
        for part in index.faiss(1, "h").parts:  # every segment encodes with the codebook
            np.testing.assert_array_equal(faiss.vector_to_array(part.pq.centroids),
                                          faiss.vector_to_array(trained.pq.centroids))
        # the partial statistics were merged into the index's, then removed
        assert not [f for f in index.files if f.kind == "partial"]
        assert not list(out.glob("segments/*/partial.npz"))
        assert "PQ" in index.info().summary() and "recall@10" in index.info().summary()


def test_exact_nearest_keeps_exact_indexes(tmp_path, tiny_corpus, tiny_model_path):
    out = tmp_path / "index"
    build_index(tiny_corpus, tiny_model_path, out, kinds=["h"], layers=[1],
                exact_nearest=True, progress=False)
    with open_index(out) as index:
        (description, recall), = index.sql(
            "SELECT description, recall_at_10 FROM faiss_indexes").rows
        assert description.startswith("exact") and recall == 1.0
        assert not [f for f in index.files if f.kind == "codebook"]
        assert index.faiss(1, "h").joined is not None


def test_a_build_says_its_size_and_refuses_without_the_space(tmp_path, tiny_corpus,
                                                            tiny_model_path, monkeypatch, capsys):
    import indexer.build as build

    monkeypatch.setattr(build, "free_bytes", lambda path: 1000)
    build_index(tiny_corpus, tiny_model_path, tmp_path / "tried", space_check=False,
                progress=None)
    err = capsys.readouterr().err
    with open_index(tmp_path / "tried") as index:
        n = index.n_tokens
    assert f"estimate: {n:,} tokens x 48 units (4 states) x 2 bytes = " in err
    assert "1000 B free at" in err and "tokens/s on the first" in err
    out = tmp_path / "index"
    with pytest.raises(BuildError, match="not enough free space .* --no-space-check"):
        build_index(tiny_corpus, tiny_model_path, out, progress=None)
    assert not out.exists()  # refused before anything was written


def test_resume_keeps_token_tracks_of_a_word_tokenizer(tmp_path):
    texts = [f"alpha beta {i} gamma delta epsilon {i % 3}" for i in range(12)]
    docs = [Document(f"d{i}", t, {"where": np.arange(len(t), dtype=np.float32)})
            for i, t in enumerate(texts)]
    corpus = Corpus("words", docs)
    tokenizer = train_tokenizer("word", texts)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=4, hidden=5,
                                      layers=1))
    save_checkpoint(tmp_path / "m.pt", model, tokenizer)
    small = {"segment_tokens": 10, "segment_docs": 1}
    build_index(corpus, tmp_path / "m.pt", tmp_path / "whole", **small, progress=False)

    def stop(segment: int) -> None:
        if segment == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        build_index(corpus, tmp_path / "m.pt", tmp_path / "index", **small, progress=False,
                    on_segment=stop)
    build_index(None, None, tmp_path / "index", resume=True, progress=False)
    with open_index(tmp_path / "index") as got, open_index(tmp_path / "whole") as want:
        np.testing.assert_array_equal(got.track("where"), want.track("where"))
        starts = got.tokens(0, got.n_tokens).char_start
        np.testing.assert_array_equal(got.track("where"), starts)  # the first character's


def test_cli_tracks_only_with_an_lstmsearch_checkpoint(tmp_path, capsys):
    """A model of the user's own indexes the tracks its corpus brings: --tracks is refused."""
    example = Path(__file__).resolve().parents[1] / "data" / "examples" / "my_model.py"
    assert main(["index", "parens", "--model", f"{example}:factory", "--tokenizer", "char",
                 "--out", str(tmp_path / "x"), "--tracks", "code"]) == 2
    assert "--tracks goes with an lstmsearch checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()

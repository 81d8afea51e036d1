"""An index of immutable segments: queries over many segments answer exactly as over one;
append writes only new files; compact, snapshots, verify and upgrade from version 1."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import duckdb
import numpy as np
import pytest
from conftest import torch_threads

from indexer import writer as writer_module
from indexer.build import build_index
from indexer.compact import compact_index, group_segments
from indexer.upgrade import upgrade_index
from lstmsearch.cli import main
from lstmsearch.corpus import Corpus
from lstmsearch.index import FormatVersionError, IndexOpenError, open_index

SMALL = {"segment_tokens": 300, "segment_docs": 1}


@pytest.fixture(scope="module")
def one_segment(tmp_path_factory, tiny_corpus, tiny_model_path) -> Path:
    """The tiny corpus as a single segment."""
    out = tmp_path_factory.mktemp("one") / "index"
    with torch_threads(1):
        build_index(tiny_corpus, tiny_model_path, out, segment_tokens=10**9, progress=False)
    return out


@pytest.fixture(scope="module")
def appended(tmp_path_factory, tiny_corpus, tiny_model_path) -> Path:
    """The same corpus in many small segments, built by a build and three appends."""
    out = tmp_path_factory.mktemp("appended") / "index"
    docs = tiny_corpus.documents
    with torch_threads(1):
        build_index(Corpus("parens", docs[:10]), tiny_model_path, out, **SMALL, progress=False)
        for a, b in ((10, 17), (17, 31), (31, len(docs))):
            build_index(Corpus("parens", docs[a:b]), None, out, append=True, **SMALL,
                        progress=False)
    return out


def files_of(path: Path) -> dict[str, str]:
    """sha256 of every file under an index directory."""
    return {str(f.relative_to(path)): hashlib.sha256(f.read_bytes()).hexdigest()
            for f in sorted(path.rglob("*")) if f.is_file()}


def answers(path: Path) -> dict:
    """Full results of every kind of query, on a few spans, units and thresholds."""
    out = {}
    with open_index(path) as index:
        out["n"] = (index.n_docs, index.n_tokens, index.doc_starts.tolist())
        for state in ("layers.0.c", "layers.1.h"):
            for start, end, theta in ((3, 6, 0.3), (400, 402, 0.2), (1500, 1503, 0.1)):
                for sign in (1, -1):
                    pattern = index.select(start, end, theta, state=state, sign=sign)
                    out[state, start, theta, sign, "select"] = pattern
                    if pattern.units:
                        result = index.match(pattern, limit=40)
                        out[state, start, theta, sign, "match"] = (result.matches,
                                                                  result.n_candidates)
                out[state, start, "nearest"] = index.nearest(start, end, state, k=12)
            for unit in (0, 5, 11):
                out[state, unit, "where"] = index.neurons.where(unit, state, above=0.25, limit=50)
                out[state, unit, "top"] = index.neurons.top(unit, state, k=30)
                out[state, unit, "bottom"] = index.neurons.top(unit, state, k=30, lowest=True)
                out[state, unit, "stats"] = index.neurons.stats(unit, state)
            out[state, "correlate"] = [(c.unit, round(c.r, 12), c.n)
                                       for c in index.neurons.correlate("depth", state)]
            out[state, "values"] = np.asarray(index.states(state)).tobytes()
        out["sql"] = index.sql("SELECT * FROM unit_stats ORDER BY layer, kind, unit").rows
        out["top"] = index.sql("SELECT * FROM unit_top_tokens ORDER BY layer, kind, unit, "
                               "lowest, rank").rows
        out["tracks"] = index.sql("SELECT * FROM tracks WHERE name <> 'surprisal' "
                                  "ORDER BY name, pos").rows
        # the model's loss is float32 arithmetic whose last bits depend on which documents
        # ran side by side: compared to float32 precision, not bit for bit
        out["surprisal"] = index.track("surprisal")
        out["text"] = index.text(0, index.n_tokens)
    return out


def assert_same_answers(a: Path, b: Path) -> None:
    left, right = answers(a), answers(b)
    assert left.keys() == right.keys()
    np.testing.assert_allclose(left.pop("surprisal"), right.pop("surprisal"), rtol=1e-5)
    for key in left:
        assert left[key] == right[key], f"{key} differs"


def test_many_segments_answer_exactly_like_one(one_segment, appended):
    with open_index(one_segment) as one, open_index(appended) as many:
        assert len(one.segments) == 1 and len(many.segments) > 6
        assert many.manifest_version == 4
    assert_same_answers(appended, one_segment)


def test_append_writes_no_byte_of_an_existing_segment(tmp_path, tiny_corpus, tiny_model_path):
    out = tmp_path / "index"
    docs = tiny_corpus.documents
    build_index(Corpus("parens", docs[:20]), tiny_model_path, out, **SMALL, progress=False)
    before = files_of(out)
    with open_index(out) as index:
        old_segments = {s.name for s in index.segments}
    build_index(Corpus("parens", docs[20:24]), None, out, append=True, **SMALL, progress=False)
    after = files_of(out)
    for name, digest in before.items():
        if name.startswith("segments/"):
            assert after[name] == digest, f"{name} was rewritten"
    written = {n for n in after if n not in before or after[n] != before[n]}
    new_segments = {n.split("/")[1] for n in written if n.startswith("segments/")}
    assert new_segments and not new_segments & old_segments
    # besides the new segments: the manifest database and one new merged statistics file
    assert {n for n in written if not n.startswith("segments/")} == {
        "index.duckdb", "stats/stats-v2.npz"}
    assert "stats/stats-v1.npz" not in after  # the previous one, removed after the commit


def test_compact_keeps_every_answer_and_removes_old_files_after_the_commit(
        tmp_path, appended, one_segment, monkeypatch):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    with open_index(path) as index:
        old = [s.name for s in index.segments]
    seen = []
    real = writer_module.IndexWriter.replace_segments

    def replace(self, numbers, written):
        seen.append(all((path / "segments" / f"seg-{n:06d}").is_dir() for n in numbers))
        return real(self, numbers, written)

    monkeypatch.setattr(writer_module.IndexWriter, "replace_segments", replace)
    result = compact_index(path, 2, progress=False)
    assert seen and all(seen)
    assert result.after == 2 and result.merged == len(old)
    assert sorted(p.name for p in (path / "segments").iterdir()) == sorted(
        {s.name for s in open_index(path).segments})
    assert not any((path / "segments" / n).exists() for n in old)
    assert_same_answers(path, one_segment)
    assert compact_index(path, 2, progress=False).merged == 0


def test_group_segments_is_balanced_and_adjacent():
    assert group_segments([10, 10, 10, 10], 2) == [[0, 1], [2, 3]]
    assert group_segments([100, 1, 1, 1], 2) == [[0], [1, 2, 3]]
    assert group_segments([5] * 7, 1) == [list(range(7))]
    groups = group_segments(list(range(1, 30)), 5)
    assert len(groups) <= 5 and sum(groups, []) == list(range(29))


def test_a_killed_compaction_leaves_the_index_as_it_was(tmp_path, appended, monkeypatch):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    before = answers(path)
    before.pop("surprisal")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_module.IndexWriter, "replace_segments", boom)
    with pytest.raises(KeyboardInterrupt):
        compact_index(path, 1, progress=False)
    monkeypatch.undo()
    after = answers(path)
    after.pop("surprisal")
    assert after == before
    compact_index(path, 1, progress=False)  # the leftover segment is cleaned up
    assert len(open_index(path).segments) == 1
    after = answers(path)
    after.pop("surprisal")
    assert after == before


def test_a_snapshot_keeps_answering_during_append_and_compact(tmp_path, tiny_corpus,
                                                             tiny_model_path):
    out = tmp_path / "index"
    docs = tiny_corpus.documents
    build_index(Corpus("parens", docs[:25]), tiny_model_path, out, **SMALL, progress=False)
    reader = open_index(out)
    pattern = next(p for p in (reader.select(s, s + 2, 0.2, state="layers.0.c")
                               for s in range(1, 400)) if p.units)

    def ask() -> tuple:
        return (reader.n_tokens, reader.match(pattern, limit=20).matches,
                reader.nearest(3, 6, "layers.0.c", k=5),
                reader.sql("SELECT count(*), max(pos) FROM tokens").rows,
                reader.neurons.where(2, "layers.0.c", above=0.2, limit=10))

    first = ask()
    build_index(Corpus("parens", docs[25:]), None, out, append=True, **SMALL, progress=False)
    assert ask() == first
    compact_index(out, 1, progress=False)
    assert ask() == first
    with open_index(out) as fresh:
        assert fresh.n_tokens > reader.n_tokens and len(fresh.segments) == 1
    reader.close()


def test_verify_names_every_damaged_file(tmp_path, appended, capsys):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    assert main(["verify", str(path)]) == 0
    assert "all intact" in capsys.readouterr().out
    state = path / "segments" / "seg-000003" / "layers.0.c.f16"
    data = bytearray(state.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 8] = b"\xff" * 8
    state.write_bytes(bytes(data))
    faiss = path / "segments" / "seg-000001" / "layers.1.h.faiss"
    faiss.write_bytes(faiss.read_bytes()[:-100])
    with pytest.raises(SystemExit) as stop:
        main(["verify", str(path)])
    assert stop.value.code == 1
    out = capsys.readouterr().out
    assert "seg-000003/layers.0.c.f16 does not match its recorded sha256" in out
    assert "seg-000001/layers.1.h.faiss has" in out and "2 damaged" in out


def test_a_damaged_faiss_file_is_named_not_answered(tmp_path, appended, capsys):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    faiss = path / "segments" / "seg-000002" / "layers.0.c.faiss"
    data = bytearray(faiss.read_bytes())
    data[-40:-32] = b"\x00" * 8
    faiss.write_bytes(bytes(data))
    with pytest.raises(IndexOpenError, match="seg-000002/layers.0.c.faiss"):
        with open_index(path) as index:  # small files are checked when the index opens
            index.nearest(3, 6, "layers.0.c", k=5)
    assert main(["nearest", str(path), "--start", "3", "--end", "6", "--layer", "0",
                 "--kind", "c"]) == 2
    err = capsys.readouterr().err
    assert "seg-000002/layers.0.c.faiss" in err and "Traceback" not in err


def test_info_shows_the_segments(appended, capsys):
    assert main(["info", str(appended)]) == 0
    out = capsys.readouterr().out
    with open_index(appended) as index:
        n = len(index.segments)
    assert f"segments     {n} (" in out and "manifest version 4" in out


# --- the previous format ---------------------------------------------------------------------

V1_SCHEMA = [
    "CREATE TABLE meta (key VARCHAR, value VARCHAR)",
    "CREATE TABLE layers (name VARCHAR, seq INTEGER, layer INTEGER, kind VARCHAR, dim INTEGER, "
    "dtype VARCHAR, file VARCHAR)",
    "CREATE TABLE vocab (token_id INTEGER, text VARCHAR)",
    "CREATE TABLE documents (doc INTEGER, name VARCHAR, tok_start BIGINT, tok_end BIGINT, "
    "n_chars INTEGER, text VARCHAR)",
    "CREATE TABLE tokens (pos BIGINT, doc INTEGER, pos_in_doc INTEGER, token_id INTEGER, "
    "text VARCHAR, char_start INTEGER, char_end INTEGER)",
    "CREATE TABLE tracks (name VARCHAR, pos BIGINT, value DOUBLE, label VARCHAR)",
    "CREATE TABLE faiss_indexes (name VARCHAR, layer INTEGER, kind VARCHAR, file VARCHAR, "
    "description VARCHAR, n_tokens BIGINT, recall_at_10 DOUBLE, seconds DOUBLE)",
]


def write_version_1(source: Path, out: Path, capacity_extra: int = 7) -> None:
    """The index at `source` as the previous format wrote it: every table in index.duckdb,
    one over-allocated state file per state in states/."""
    out.mkdir()
    (out / "states").mkdir()
    shutil.copyfile(source / "model.pt", out / "model.pt")
    with open_index(source) as index:
        con = duckdb.connect(str(out / "index.duckdb"))
        for statement in V1_SCHEMA:
            con.execute(statement)
        meta = {k: v for k, v in index.meta.items() if k not in ("manifest_version",
                                                               "next_segment")}
        meta.update(format_version="1", status="complete")
        for k, v in meta.items():
            con.execute("INSERT INTO meta VALUES (?, ?)", [k, v])
        for seq, info in enumerate(index.state_infos):
            con.execute("INSERT INTO layers VALUES (?, ?, ?, ?, ?, 'float16', ?)",
                        [info.name, seq, info.layer, info.kind, info.dim,
                         f"states/{info.name}.f16"])
            columns = np.zeros((info.dim, index.n_tokens + capacity_extra), np.float16)
            columns[:, : index.n_tokens] = index.store(info.name).columns
            columns.tofile(out / "states" / f"{info.name}.f16")
            con.execute("INSERT INTO faiss_indexes VALUES (?, ?, ?, ?, 'exact', ?, 1, 0)",
                        [info.name, info.layer, info.kind, f"faiss/{info.name}.index",
                         index.n_tokens])
        for table in ("vocab", "documents", "tokens", "tracks"):
            rows = index.sql(f"SELECT * FROM {table}").rows
            if rows:
                marks = ", ".join("?" * len(rows[0]))
                con.executemany(f"INSERT INTO {table} VALUES ({marks})", rows)
        con.close()


def test_version_1_is_refused_with_the_upgrade_command_and_upgraded(tmp_path, one_segment,
                                                                    capsys):
    old = tmp_path / "old"
    write_version_1(one_segment, old)
    with pytest.raises(FormatVersionError, match=f"lstmsearch upgrade {old}"):
        open_index(old)
    assert main(["match", str(old), "--start", "3", "--end", "6", "--layer", "0", "--kind",
                 "c", "--threshold", "0.3"]) == 2
    err = capsys.readouterr().err
    assert "lstmsearch upgrade" in err and "Traceback" not in err
    assert main(["upgrade", str(old)]) == 0
    assert "format version 2" in capsys.readouterr().out
    assert_same_answers(old, one_segment)
    assert not old.with_name("old.v1").exists() and not old.with_name("old.upgrading").exists()
    with pytest.raises(ValueError, match="already has format version 2"):
        upgrade_index(old)


def test_compact_cli(tmp_path, appended, capsys):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    assert main(["compact", str(path), "--max-segments", "0"]) == 2
    assert "at least 1" in capsys.readouterr().err
    assert main(["compact", str(path), "--max-segments", "3"]) == 0
    assert "-> 3" in capsys.readouterr().out



@pytest.mark.parametrize("seed", [0, 1, 2])
def test_merged_partial_statistics_equal_one_scan(tmp_path, seed):
    from indexer.stats import merge_partials, partial_stats, stats_of, unit_stats
    from lstmsearch.store import StateStore, StateWriter, to_stored

    rng = np.random.default_rng(seed)
    n, dim = 3000, 5
    values = np.stack([
        rng.choice([-1.0, -0.0, 0.0, 0.5, 1.0], size=n),  # heavy ties across segments
        rng.standard_normal(n) * 3,
        np.where(rng.random(n) < 0.5, -0.0, 0.0),
        rng.standard_normal(n) * 1e5,  # clipped to float16's range
        np.linspace(-2, 2, n),
    ], axis=1).astype(np.float32)
    writer = StateWriter.create(tmp_path / "s.f16", dim, n)
    writer.write(0, to_stored(values))
    writer.close()
    whole = unit_stats(StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", dim, n), k=100)
    cuts = np.sort(rng.choice(np.arange(1, n), size=6, replace=False))
    bounds = [0, *cuts.tolist(), n]
    columns = StateStore(tmp_path / "s.f16", "layers.0.h", 0, "h", dim, n).columns
    parts = [partial_stats(np.array(columns[:, a:b]), a, k=100)
             for a, b in zip(bounds[:-1], bounds[1:])]
    merged = stats_of(merge_partials(parts[:3] + [merge_partials(parts[3:])]), k=100)
    for field in ("mean", "std", "min", "max", "quantiles", "on_fraction", "top_pos",
                  "top_value", "bottom_pos", "bottom_value"):
        np.testing.assert_array_equal(getattr(merged, field), getattr(whole, field),
                                      err_msg=field)


def test_a_column_damaged_after_opening_is_named_not_answered(tmp_path, appended, capsys):
    path = tmp_path / "index"
    shutil.copytree(appended, path)
    with open_index(path) as index:
        store = index.store("layers.0.c")
        first, last = store.segments[2]
        state = path / "segments" / index.segments[2].name / "layers.0.c.f16"
        n = last - first
        with open(state, "r+b") as f:  # unit 4, a token in the middle of the segment
            f.seek((4 * n + n // 2) * 2)
            f.write(b"\x00\x7c")  # +inf
        np.testing.assert_array_equal(store.column(3)[first:last],
                                      np.asarray(store.pieces(3)[2][1]))  # other units fine
        for read in (lambda: store.column(4), lambda: store.block([4], first, last),
                     lambda: store.vectors([first + n // 2]),
                     lambda: index.neurons.where(4, "layers.0.c", above=0.1)):
            with pytest.raises(ValueError, match=f"{state}.*unit 4 does not match"):
                read()
    with pytest.raises(IndexOpenError, match="layers.0.c.f16"):
        open_index(path)  # small files are also checked when an index opens


READER = """
import sys
from lstmsearch.index import open_index
index = open_index(sys.argv[1])
def answer():
    rows = index.sql("SELECT count(*), sum(token_id) FROM tokens").rows
    return f"{index.n_tokens} {rows[0]} {len(index.neurons.where(2, 'layers.0.c', above=0.1).hits)}"
print(answer(), flush=True)
sys.stdin.readline()
print(answer(), flush=True)
"""


def test_append_and_compact_while_another_process_serves_the_index(tmp_path, tiny_corpus,
                                                                   tiny_model_path):
    import subprocess
    import sys

    out = tmp_path / "index"
    docs = tiny_corpus.documents
    build_index(Corpus("parens", docs[:20]), tiny_model_path, out, **SMALL, progress=False)
    reader = subprocess.Popen([sys.executable, "-c", READER, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    try:
        before = reader.stdout.readline()
        build_index(Corpus("parens", docs[20:]), None, out, append=True, **SMALL,
                    progress=False)
        compact_index(out, 1, progress=False)
        reader.stdin.write("\n")
        reader.stdin.flush()
        assert reader.stdout.readline() == before  # its snapshot is unchanged
    finally:
        reader.kill()
        reader.wait()
    with open_index(out) as index:
        assert index.n_tokens > int(before.split()[0]) and len(index.segments) == 1

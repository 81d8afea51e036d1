"""Bad input at the command line: every numeric argument is checked where it comes in, and
whatever a user types, a query command ends in success or in one line of error with status
2, never in a traceback (a property-based fuzz with hypothesis, deterministic)."""

from __future__ import annotations

import contextlib
import io

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lstmsearch.cli import main
from lstmsearch.limits import MAX_RESULTS


def run(argv: list[str]) -> tuple[int, str, str]:
    """`lstmsearch ARGV` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str, argv: list[str]) -> None:
    assert "Traceback" not in err, (argv, err)
    if code == 0:
        return
    assert code == 2, (argv, code, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lstmsearch"), (argv, err)


@pytest.mark.parametrize(("argv", "message"), [
    (["serve", "{index}", "--port", "99999"],
     "argument --port: must be a whole number from 0 to 65,535, got '99999'"),
    (["serve", "{index}", "--port", "-1"], "--port: must be a whole number from 0 to 65,535"),
    (["demo", "--port", "http"], "--port: must be a whole number, got 'http'"),
    (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", "--layer", "1",
      "--kind", "c", "--limit", "1000000000"],
     "--limit: must be a whole number from 1 to 100,000, got '1000000000'"),
    (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "0.3", "--layer", "1",
      "--kind", "c", "--pad-left", "99999999"], "--pad-left: must be a whole number from 0"),
    (["nearest", "{index}", "--start", "1", "--end", "3", "--layer", "1", "--kind", "c",
      "--k", "0"], "--k: must be a whole number from 1 to 100,000, got '0'"),
    (["neurons", "{index}", "--unit", "1", "--layer", "1", "--kind", "c", "--top",
      "123456789"], "--top: must be a whole number of at most 100,000"),
    (["neurons", "{index}", "--unit", "-3", "--layer", "1", "--kind", "c", "--stats"],
     "--unit: must be a whole number of at least 0, got '-3'"),
    (["train", "parens", "--out", "x.pt", "--lr", "inf"], "--lr: must be a finite number"),
    (["train", "parens", "--out", "x.pt", "--hidden", "0"], "--hidden: must be a whole number"),
    (["index", "parens", "--out", "x", "--limit", "-1"], "--limit: must be a whole number"),
    (["analyze", "gates", "{index}", "--high", "nan"], "--high: must be a finite number"),
    (["analyze", "surprisal", "{index}", "--top", "10000000"], "--top: must be a whole number"),
    (["index", "parens", "--out", "x", "--segment-tokens", "0"],
     "--segment-tokens: must be a whole number of at least 1, got '0'"),
    (["index", "parens", "--out", "x", "--segment-tokens", "1e9"],
     "--segment-tokens: must be a whole number, got '1e9'"),
    (["index", "parens", "--out", "x", "--engine", "ray", "--workers", "0"],
     "--workers: must be a whole number from 1 to 10,000, got '0'"),
    (["index", "parens", "--out", "x", "--engine", "ray", "--gpus-per-worker", "nan"],
     "--gpus-per-worker: must be a finite number, got 'nan'"),
    (["index", "parens", "--out", "x", "--engine", "ray", "--gpus-per-worker=-1"],
     "--gpus-per-worker: must be at least 0 and at most 1024, got '-1'"),
    (["compact", "{index}", "--max-segments", "0"],
     "--max-segments: must be a whole number of at least 1, got '0'"),
    (["compact", "{index}", "--max-segments", "many"],
     "--max-segments: must be a whole number, got 'many'"),
    (["match", "{index}", "--start", "1", "--end", "3", "--threshold", "inf", "--layer", "1",
      "--kind", "c"], "--threshold must be a finite number, got 'inf'"),
    (["index", "parens", "--out", "x", "--device", "bogus"],
     "argument --device: must be cpu, cuda, cuda:N or mps, got 'bogus'"),
    (["index", "parens", "--out", "x", "--device", "cuda:99"], "argument --device: 'cuda:99'"),
    (["serve", "{index}", "--host", "999.1.1.1", "--port", "0"], "999.1.1.1"),
])
def test_bad_numbers_are_refused_at_the_boundary(tiny_index_path, argv, message) -> None:
    argv = [a.replace("{index}", str(tiny_index_path)) for a in argv]
    code, out, err = run(argv)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and message in err, err


def test_the_api_caps_the_same_limits(tiny_index) -> None:
    start = next(i for i in range(1, 400) if tiny_index.select(i, i + 2, 0.3, 1, "c").units)
    pattern = tiny_index.select(start, start + 2, 0.3, 1, "c")
    with pytest.raises(ValueError, match="limit must be at most 100,000"):
        tiny_index.match(pattern, limit=MAX_RESULTS + 1)
    assert len(tiny_index.match(pattern, limit=MAX_RESULTS).matches) >= 1
    with pytest.raises(ValueError, match="k must be at most 100,000"):
        tiny_index.nearest(start, start + 2, 1, "c", k=10**9)
    with pytest.raises(ValueError, match="limit must be at most 100,000"):
        tiny_index.neurons.where(0, 1, "c", above=0.5, limit=10**9)
    with pytest.raises(ValueError, match="pad_left must be at most 10,000"):
        tiny_index.select(start, start + 2, 0.3, 1, "c", pad_left=10**9)


def test_a_port_in_use_is_one_line(tiny_index_path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code, _, err = run(["serve", str(tiny_index_path), "--port", str(port)])
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "in use" in err


# --- the fuzz ------------------------------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.integers(-3, 70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", " ", "0x10", "1e3", "1_000", "nan", "-inf", "½", "١٢", "9" * 40,
                     "--json", "-", "0.5.1", "\x00"]),
)
TEXT = st.one_of(st.text(max_size=12), st.sampled_from(["(()", "()", "depth", "layers.1.c"]))
KINDS = st.sampled_from(["c", "h", "z", "", "C", "layers.1.c"])


def option(flag: str, values: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(st.just(flag), values).map(list)


STATE = st.tuples(option("--layer", NUMBERS), option("--kind", KINDS)).map(lambda t: t[0] + t[1])
MATCH = st.tuples(
    st.just(["match"]),
    st.lists(st.one_of(option("--start", NUMBERS), option("--end", NUMBERS),
                       option("--phrase", TEXT), option("--doc", NUMBERS),
                       option("--occurrence", NUMBERS), option("--threshold", NUMBERS),
                       option("--pad-left", NUMBERS), option("--pad-right", NUMBERS),
                       option("--limit", NUMBERS), st.just(["--negative"]),
                       st.just(["--no-fuzzy"]), st.just(["--json"]), STATE), max_size=7),
)
NEURONS = st.tuples(
    st.just(["neurons"]),
    st.lists(st.one_of(option("--unit", NUMBERS), option("--above", NUMBERS),
                       option("--below", NUMBERS), option("--top", NUMBERS),
                       option("--limit", NUMBERS), option("--correlate", TEXT),
                       st.just(["--stats"]), st.just(["--lowest"]), st.just(["--json"]), STATE),
             max_size=6),
)
NEAREST = st.tuples(
    st.just(["nearest"]),
    st.lists(st.one_of(option("--start", NUMBERS), option("--end", NUMBERS),
                       option("--k", NUMBERS), st.just(["--json"]), STATE), max_size=5),
)
SQL = st.tuples(
    st.just(["sql"]),
    st.one_of(TEXT, st.sampled_from([
        "SELECT count(*) FROM tokens", "SELECT * FROM unit_stats LIMIT 3", "DROP TABLE tokens",
        "SELECT unit_value(1, 'c', 0, 5)", "SELECT unit_value(9, 'c', 0, 5)",
        "SELECT unit_value(1, 'c', 0, -1)", "SELECT 1; SELECT 2", "ATTACH 'x.db'",
        "SELECT * FROM read_csv('/etc/passwd')", "SELECT 1/0", "SELECT",
        "SELECT a.pos, b.pos FROM tokens a, tokens b",  # millions of rows: the first shown
    ])).map(lambda q: [q]),
)
INFO = st.tuples(st.just(["info"]), st.lists(st.sampled_from(["--json", "--bogus", "x"]),
                                            max_size=2))
COMMANDS = st.one_of(MATCH, NEURONS, NEAREST, SQL, INFO)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(COMMANDS)
def test_query_commands_never_print_a_traceback(tiny_index_path, command) -> None:
    name, parts = command
    args = [a for part in parts for a in (part if isinstance(part, list) else [part])]
    argv = [*name, str(tiny_index_path), *args]
    try:
        code, _, err = run(argv)
    except SystemExit as exc:  # main returns its status, it never exits
        raise AssertionError(f"{argv} exited with {exc.code}") from None
    assert_clean(code, err, argv)

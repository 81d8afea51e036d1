"""Faults: every kind of file of an index truncated, flipped or deleted gives a one-line error
(or, where the damage touches nothing a command reads, the same answer) — never a traceback
and never a different answer; a full disk during a build stops it with a clear error and
keeps what was committed. (Longer runs with random kills: benchmarks/faults.py.)"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import pytest
from conftest import torch_threads

from indexer import segment as segment_module
from indexer.build import build_index
from lstmsearch.cli import main
from lstmsearch.corpus import Corpus
from lstmsearch.index import open_index

SMALL = {"segment_tokens": 300, "segment_docs": 1}
COMMANDS = [
    ["info", "{index}"],
    ["match", "{index}", "--start", "20", "--end", "22", "--threshold", "0.1", "--layer", "0",
     "--kind", "c", "--json"],
    ["nearest", "{index}", "--start", "20", "--end", "22", "--layer", "1", "--kind", "h",
     "--k", "5", "--json"],
    ["neurons", "{index}", "--unit", "3", "--layer", "0", "--kind", "c", "--above", "0.2",
     "--limit", "20", "--json"],
    ["neurons", "{index}", "--layer", "1", "--kind", "h", "--correlate", "depth", "--json"],
    ["sql", "{index}", "SELECT count(*), sum(token_id) FROM tokens", "--json"],
]
FILE_KINDS = {
    "database": "index.duckdb",
    "rows": "segments/seg-000002/rows.duckdb",
    "states": "segments/seg-000002/layers.0.c.f16",
    "faiss": "segments/seg-000001/layers.1.h.faiss",
    "segment checksums": "segments/seg-000003/checksums.npz",
    "index statistics": "stats/stats-v2.npz",
    "codebook": "codebooks/layers.1.h.faiss",
    "model": "model.pt",
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory, tiny_corpus, tiny_model_path) -> Path:
    out = tmp_path_factory.mktemp("pristine") / "index"
    docs = tiny_corpus.documents
    with torch_threads(1):
        build_index(Corpus("parens", docs[:20]), tiny_model_path, out, **SMALL, progress=False)
        build_index(Corpus("parens", docs[20:]), None, out, append=True, **SMALL,
                    progress=False)
    return out


def run_all(index: Path, capsys) -> list[tuple[int, str, str]]:
    """Exit code, stdout and stderr of every command (in this process: an uncaught
    exception fails the test, as a traceback would)."""
    out = []
    for command in COMMANDS:
        code = main([part.format(index=index) for part in command])
        captured = capsys.readouterr()
        out.append((code, captured.out, captured.err))
    return out


def damage(path: Path, how: str) -> None:
    if how == "delete":
        path.unlink()
    elif how == "truncate":
        with open(path, "r+b") as f:
            f.truncate(path.stat().st_size // 2)
    else:  # flip 8 bytes in the middle
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 8] = bytes(b ^ 0xA5 for b in data[middle : middle + 8])
        path.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncate", "flip", "delete"])
@pytest.mark.parametrize("kind", list(FILE_KINDS))
def test_a_damaged_file_never_gives_a_traceback_or_a_silent_answer(pristine, tmp_path, capsys,
                                                                   kind, how):
    expected = run_all(pristine, capsys)
    assert all(code == 0 for code, _, _ in expected)
    path = tmp_path / "index"
    shutil.copytree(pristine, path)
    damage(path / FILE_KINDS[kind], how)
    for command, (code, out, err), (_, want, _) in zip(COMMANDS, run_all(path, capsys),
                                                        expected, strict=True):
        if code == 0:
            assert out.replace(str(path), str(pristine)) == want, (
                f"{command[0]} answered differently after {how} of {kind}")
        else:
            assert code == 2 and "Traceback" not in err and err.count("\n") == 1, err
            assert "damaged" in err or "model" in err or "cannot" in err, err
    if kind != "model" and (kind, how) != ("database", "flip"):
        # the model is not needed to answer queries; a flip may land in a free block of the
        # database, which no command reads (the answers were the same: checked above)
        assert any(code == 2 for code, _, _ in run_all(path, capsys)), (
            f"no command noticed the {how} of {kind}")
    try:
        code = main(["verify", str(path)])
    except SystemExit as stop:  # the index opened, and verify named the damaged files
        code = stop.code
    err = capsys.readouterr().err
    assert code in (1, 2) or (kind, how) == ("database", "flip"), "verify found nothing"
    assert "Traceback" not in err


def test_a_full_disk_stops_the_build_and_keeps_what_was_committed(tmp_path, tiny_corpus,
                                                                   tiny_model_path, monkeypatch,
                                                                   capsys):
    out = tmp_path / "index"
    real = segment_module.write_rows
    calls = {"n": 0}

    def full(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(segment_module, "write_rows", full)
    code = main(["index", "parens", "--model", str(tiny_model_path), "--out", str(out),
                 "--limit", "40", "--segment-tokens", "300", "--segment-docs", "1"])
    err = capsys.readouterr().err.splitlines()
    assert code == 2 and "No space left on device" in err[-1] and "Traceback" not in err
    # before it, only what a build says as it goes: its estimate and progress lines
    assert all(line.split(":")[0] in ("estimate", "indexing") for line in err[:-1]), err
    with open_index(out, allow_partial=True) as partial:
        assert len(partial.segments) == 2 and partial.n_tokens > 0
    monkeypatch.undo()
    assert main(["index", "--out", str(out), "--resume"]) == 0
    reference = tmp_path / "reference"
    assert main(["index", "parens", "--model", str(tiny_model_path), "--out", str(reference),
                 "--limit", "40", "--segment-tokens", "300", "--segment-docs", "1"]) == 0
    capsys.readouterr()
    assert run_all(out, capsys)[1:] == run_all(reference, capsys)[1:]  # the queries

"""Progress on stderr: a bar on a terminal, plain lines in a log or a pipe."""

from __future__ import annotations

import io

from tqdm import tqdm

import lstmsearch.progress as progress_module
from lstmsearch.progress import LineProgress, progress_bar


def test_lines_say_done_total_rate_and_time_left(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 3.5, 6.0, 6.0, 6.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    with LineProgress(1000, "indexing", every=2.0, file=out) as bar:  # starts at 0.0
        bar.update(100)  # 1.0 s: too soon for a line
        bar.update(200)  # 3.0 s
        bar.update(100)  # 3.5 s: too soon
        bar.update(600)  # 6.0 s: the end, always a line
    lines = out.getvalue().splitlines()
    assert lines == [
        "indexing: 300/1,000 tok (30.0%), 100 tok/s, 7 s left",
        "indexing: 1,000/1,000 tok (100.0%), 167 tok/s, done in 6.0 s",
    ]


def test_an_unfinished_count_gets_a_last_line(monkeypatch):
    clock = iter([0.0, 0.5, 1.0, 1.0])
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: next(clock))
    out = io.StringIO()
    with LineProgress(0, "verifying", unit="B", file=out) as bar:
        bar.update(4096)
    assert out.getvalue().splitlines() == ["verifying: 4,096 B, 4,096 B/s"]


def test_a_pipe_gets_lines_a_terminal_a_bar(monkeypatch):
    class Pipe(io.StringIO):
        def isatty(self):
            return False

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(progress_module.sys, "stderr", Pipe())
    assert isinstance(progress_bar(10, None, "x"), LineProgress)
    monkeypatch.setattr(progress_module.sys, "stderr", Terminal())
    bar = progress_bar(10, None, "x")
    assert isinstance(bar, tqdm) and not bar.disable
    assert progress_bar(10, False, "x").disable

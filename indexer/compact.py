"""Merge small segments into larger ones: `lstmsearch compact INDEX [--max-segments N]`.

Adjacent live segments are grouped into at most N runs of about equal tokens; each run of
more than one segment is copied into one new segment (state columns byte for byte, rows as
they are, partial statistics merged exactly, FAISS rebuilt over the same stored values), then
one manifest transaction retires the old segments and makes the new one live. Only after
that commit are the old files removed, so a reader holding an older snapshot keeps answering
(its files stay open) and a kill at any moment leaves a valid index. The index-wide
statistics do not change: the tokens are the same.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from indexer.nearest import load_codebooks
from indexer.segment import ROWS_FILE, SegmentPlan, SegmentWriter
from indexer.writer import BuildError, IndexWriter
from lstmsearch.index import SEGMENTS_DIR, STATUS_COMPLETE, segment_file
from lstmsearch.progress import progress_bar
from lstmsearch.store import StateStore

DEFAULT_SEGMENT_TOKENS = 1 << 20
"""Without --max-segments, compact aims at segments of about this many tokens."""
COPY_BLOCK = 1 << 16


@dataclass(frozen=True)
class CompactResult:
    """What a compaction did."""

    path: Path
    before: int
    after: int
    merged: int  # old segments replaced
    manifest_version: int
    removed: tuple[str, ...]
    seconds: float

    def summary(self) -> str:
        if self.merged == 0:
            return f"{self.path}: {self.before} segments, nothing to merge"
        return (f"compact: {self.before} segments -> {self.after} ({self.merged} merged) in "
                f"{self.seconds:.1f} s; manifest version {self.manifest_version}")


def group_segments(sizes: list[int], max_segments: int) -> list[list[int]]:
    """Indices of adjacent segments grouped into at most `max_segments` runs of about equal
    tokens: each segment joins the run its middle token falls in."""
    total = max(1, sum(sizes))
    groups: dict[int, list[int]] = {}
    done = 0
    for i, size in enumerate(sizes):
        run = min(max_segments - 1, int((done + size / 2) * max_segments // total))
        groups.setdefault(run, []).append(i)
        done += size
    return [groups[k] for k in sorted(groups)]


def compact_index(path: str | os.PathLike, max_segments: int | None = None, *,
                  progress: bool | None = None) -> CompactResult:
    """Merge the live segments of the index at `path` into at most `max_segments`."""
    path = Path(path)
    started = time.perf_counter()
    if max_segments is not None and (isinstance(max_segments, bool) or
                                     not isinstance(max_segments, int) or max_segments < 1):
        raise BuildError(f"--max-segments must be a positive integer, got {max_segments!r}")
    with IndexWriter.connect(path) as writer:
        meta = writer.meta()
        if meta.get("status") != STATUS_COMPLETE or writer.segments("planned", "pending"):
            raise BuildError(f"index {path} is incomplete: finish it with "
                             f"`lstmsearch index --resume {path}` before compacting")
        writer.remove_unlisted()
        live = [p for p, _ in writer.segments("live")]
        n_tokens = sum(p.n_tokens for p in live)
        if max_segments is None:
            max_segments = max(1, math.ceil(n_tokens / DEFAULT_SEGMENT_TOKENS))
        groups = [g for g in group_segments([p.n_tokens for p in live], max_segments)
                  if len(g) > 1]
        states = writer.states()
        faiss = bool(writer.read("SELECT count(*) FROM faiss_indexes")[0][0])
        codebooks = load_codebooks(path, writer.live_files("codebook"))
        version = int(meta.get("manifest_version", 0))
        number = int(meta.get("next_segment", 0))
        removed: list[str] = []
        bar = progress_bar(sum(live[i].n_tokens for g in groups for i in g), progress,
                           "compacting")
        with bar:
            for group in groups:
                old = [live[i] for i in group]
                plan = SegmentPlan(number, old[0].doc_start, old[-1].doc_end, old[0].tok_start,
                                   old[-1].tok_end)
                written = merge_segments(path, plan, old, states, faiss, codebooks)
                version = writer.replace_segments([p.number for p in old], written)
                removed += writer.remove_unlisted()
                number += 1
                bar.update(plan.n_tokens)
    merged = sum(len(g) for g in groups)
    return CompactResult(path, len(live), len(live) - merged + len(groups), merged, version,
                         tuple(removed), time.perf_counter() - started)


def merge_segments(root: Path, plan: SegmentPlan, old: list[SegmentPlan],
                   states: list[tuple[str, int, str, int]], faiss: bool,
                   codebooks: dict) -> object:
    """Write one new segment holding exactly the tokens, states and rows of `old` (no
    partial statistics: the index's do not change)."""
    segment = SegmentWriter(root, plan, states, codebooks)
    segment.measure_recall = True  # a merged segment is larger: its recall is measured
    try:
        for name, layer, kind, dim in states:
            for p in old:
                store = StateStore(root / SEGMENTS_DIR / p.name / segment_file(name, "states"),
                                   name, layer, kind, dim, p.n_tokens)
                for a in range(0, p.n_tokens, COPY_BLOCK):
                    b = min(p.n_tokens, a + COPY_BLOCK)
                    segment.write_columns(name, p.tok_start + a,
                                          np.ascontiguousarray(store.block(slice(None), a, b)))
        return segment.finish_copied([root / SEGMENTS_DIR / p.name / ROWS_FILE for p in old],
                                     faiss=faiss)
    except BaseException:
        segment.abort()
        raise

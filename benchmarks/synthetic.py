"""Synthetic recurrent-looking states for the benchmarks, as a state store or a whole index.

Every unit is ``tanh(gain * x + offset)`` of a unit-variance AR(1) process ``x`` with its own
memory (coefficient 0.8 .. 0.995); one unit in eight is sparse (zero unless above 0.8). Like
a recurrent model's, the process starts from zero at every document (the model's initial
state). Documents have log-normal lengths (median about 1000 tokens, some tiny); tokens are
words of a Zipf-distributed vocabulary.

    write_states(directory, n_tokens, dim, seed)      # one state file, opened as a StateStore
    build_index(directory, n_tokens, dim, seed)       # a real index, with `index-states`

Nothing here is shipped: the benchmarks build what they need into a temporary directory.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from lstmsearch.store import StateStore, StateWriter, state_file_name

STATE_NAME, LAYER, KIND = "layers.1.h", 1, "h"
TIME_CHUNK = 8192  # positions generated and written at a time
VOCABULARY = 5000


def document_starts(n_tokens: int, rng: np.random.Generator) -> np.ndarray:
    """Document boundaries with log-normal lengths (median about 1000 tokens, some tiny)."""
    lengths = np.maximum(1, rng.lognormal(np.log(1000), 1.0, n_tokens // 100 + 10)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    starts = starts[starts < n_tokens]
    return np.append(starts, n_tokens).astype(np.int64)


class StateGenerator:
    """Unit-major float16 states that look like recurrent ones, produced chunk by chunk."""

    def __init__(self, dim: int, rng: np.random.Generator) -> None:
        self.rng = rng
        self.phi = rng.uniform(0.8, 0.995, dim).astype(np.float32)
        self.noise = np.sqrt(1 - self.phi**2).astype(np.float32)
        self.gain = rng.uniform(0.5, 2.5, dim).astype(np.float32)
        self.offset = rng.normal(0, 0.5, dim).astype(np.float32)
        self.sparse = rng.random(dim) < 1 / 8
        self.x = np.zeros(dim, np.float32)

    def chunk(self, start: int, length: int, doc_starts: np.ndarray) -> np.ndarray:
        """Positions ``[start, start + length)`` as a (dim, length) float16 array; the process
        restarts from zero at every document start."""
        shocks = self.rng.standard_normal((length, self.phi.size), dtype=np.float32)
        shocks *= self.noise
        restart = np.zeros(length, bool)
        inside = doc_starts[(doc_starts >= start) & (doc_starts < start + length)]
        restart[inside - start] = True
        x = np.empty_like(shocks)
        state = self.x
        for t in range(length):
            state = shocks[t] if restart[t] else self.phi * state + shocks[t]
            x[t] = state
        self.x = state
        values = np.tanh(self.gain * x + self.offset)
        values[:, self.sparse] = np.where(values[:, self.sparse] > 0.8, values[:, self.sparse], 0)
        return values.T.astype(np.float16)


def write_states(directory: Path, n_tokens: int, dim: int, seed: int,
                 doc_starts: np.ndarray) -> StateStore:
    """Generate the synthetic states into one state file and open it as a store."""
    rng = np.random.default_rng(seed)
    path = directory / state_file_name(STATE_NAME)
    writer = StateWriter.create(path, dim, n_tokens)
    generator = StateGenerator(dim, rng)
    for start in range(0, n_tokens, TIME_CHUNK):
        writer.write(start, generator.chunk(start, min(TIME_CHUNK, n_tokens - start), doc_starts))
    writer.close()
    return StateStore(path, STATE_NAME, LAYER, KIND, dim, n_tokens)


def words(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` word indices drawn from a Zipf law over the vocabulary."""
    ranks = np.arange(1, VOCABULARY + 1)
    p = 1 / ranks
    return rng.choice(VOCABULARY, n, p=p / p.sum())


def depth_track(doc_starts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A nesting-depth-like annotation: a random walk from 0 in each document, kept >= 0."""
    steps = rng.choice(np.array([-1.0, 1.0], np.float32), int(doc_starts[-1]))
    walk = np.cumsum(steps)
    lengths = np.diff(doc_starts)
    walk -= np.repeat(np.concatenate([[0.0], walk])[doc_starts[:-1]], lengths)
    return np.abs(walk).astype(np.float32)


def build_index(directory: Path, n_tokens: int, dim: int, seed: int = 0, *,
                faiss: bool = True, log=print) -> Path:
    """A real index of ``n_tokens`` synthetic tokens and one state of ``dim`` units, built by
    ``lstmsearch index-states`` from a tokens file and a .npy file written here; returns its
    directory (``directory/index``). The inputs are removed once the index is written."""
    from indexer.states import index_states

    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    doc_starts = document_starts(n_tokens, rng)
    tokens_path = directory / "tokens.txt"
    vocabulary = np.array([f"w{i}" for i in range(VOCABULARY)])
    with open(tokens_path, "w", encoding="utf-8") as f:
        for a, b in zip(doc_starts[:-1], doc_starts[1:]):
            f.write("\n".join(vocabulary[words(rng, int(b - a))]))
            f.write("\n\n")
    states_path = directory / "states.npy"
    out = np.lib.format.open_memmap(states_path, mode="w+", dtype=np.float16,
                                    shape=(n_tokens, dim))
    generator = StateGenerator(dim, rng)
    for start in range(0, n_tokens, TIME_CHUNK):
        length = min(TIME_CHUNK, n_tokens - start)
        out[start : start + length] = generator.chunk(start, length, doc_starts).T
    out.flush()
    del out
    track_path = directory / "depth.npy"
    np.save(track_path, depth_track(doc_starts, rng))
    log(f"synthetic inputs: {n_tokens:,} tokens x {dim} units, {len(doc_starts) - 1:,} "
        f"documents, {time.perf_counter() - began:.0f} s")
    index_states(tokens_path, {STATE_NAME: states_path}, directory / "index",
                 tracks={"depth": track_path}, faiss=faiss, progress=False)
    for path in (tokens_path, states_path, track_path):
        path.unlink()
    log(f"index built in {time.perf_counter() - began:.0f} s")
    return directory / "index"

"""FAISS indexes over token states, one per (layer, kind) and segment, for nearest-state search.

Vectors are the stored float16 states; ids are positions in the segment. Two kinds:

- Compressed (the default): product quantisation with 4-bit codes, read by FAISS's fast-scan
  kernels (`IndexPQFastScan`): M = dim / 4 sub-quantisers of 4 units each, so a token costs
  dim / 8 bytes, a sixteenth of its float16 state, and the index never duplicates the states.
  A query (`lstmsearch.nearest`) takes each segment's `shortlist(k, dim)` nearest codes and
  re-ranks them by their exact distance on the stored states; the recall@10 of exactly that
  procedure against brute force is measured at build time on every `RECALL_EVERY`-th segment
  (50 sample queries each) and recorded. The codebook of each state is trained once per index, before its
  first segment, on the states of the first documents (`train_codebooks`, a fixed sample and
  seed), and saved in `codebooks/`: every segment, engine and append encodes with it, so an
  index does not depend on how its build was split. Encoding reads the segment's unit-major
  columns directly (`nearest_centroids`, a compiled loop over tokens per centroid): no
  transposed copy of the states is made.
- Exact (`--exact-nearest`, and states too few or too narrow to train a codebook on): an
  `IndexScalarQuantizer` with fp16 codes and L2, whose codes are the stored values
  themselves: an exhaustive search that is exact on them, at the price of a second copy.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numba
import numpy as np
import torch

from lstmsearch.index import CODEBOOKS_DIR
from lstmsearch.kernels import float16_table
from lstmsearch.models import file_sha256
from lstmsearch.nearest import shortlist
from lstmsearch.store import StateStore

ADD_BLOCK = 65_536
"""Tokens copied (or scanned) at once."""
ENCODE_BLOCK = 4_096
"""Tokens encoded at once (their float32 columns stay in the cache)."""
RECALL_EVERY = 8
"""A build measures recall@10 on segments 0, 8, 16, ... (the same ones whatever the engine)
and on every segment a compaction writes."""
RECALL_QUERIES = 50
"""Sample queries per segment and state whose recall@10 the build measures."""
RECALL_SPARE = 16
"""Candidates beyond the 10th that the float32 ranking keeps for the exact comparison."""
CODEBOOK_TOKENS = 16_384
"""Tokens of the first documents whose states train the codebooks."""
CODEBOOK_MIN_TOKENS = 1_024
"""Fewer training tokens than this (a tiny index) and the exact index is built instead."""
CODEBOOK_ITERATIONS = 10
CODEBOOK_SEED = 1234
BITS = 4
"""Bits per sub-quantiser code: 16 centroids, what FAISS's fast-scan kernels read."""
SUB_UNITS = 4
"""Units per sub-quantiser: a token's code is dim / 8 bytes (`nearest_centroids` knows 4)."""


@dataclass(frozen=True)
class FaissBuild:
    """What was built: the factory description, its measured recall@10 and build time."""

    description: str
    recall_at_10: float | None  # None: not measured
    seconds: float


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """FAISS on one thread: k-means in the same order every time (equal bytes however many
    cores), and no OpenMP spinning against the model's own threads."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


def subquantizers(dim: int) -> int | None:
    """Number of sub-quantisers of a `dim`-unit codebook (`SUB_UNITS` units each), or None
    when `dim` is too small or not a multiple of 4 for a useful one."""
    return dim // SUB_UNITS if dim >= 2 * SUB_UNITS and dim % SUB_UNITS == 0 else None


def can_compress(dim: int, n_sample: int) -> bool:
    """Whether a state of `dim` units gets a codebook from `n_sample` training tokens."""
    return subquantizers(dim) is not None and n_sample >= CODEBOOK_MIN_TOKENS


def train_codebook(vectors: np.ndarray) -> faiss.IndexPQFastScan:
    """A trained, empty 4-bit product quantiser for float32 `vectors` (n, dim)."""
    dim = vectors.shape[1]
    index = faiss.IndexPQFastScan(dim, subquantizers(dim), BITS, faiss.METRIC_L2)
    index.pq.cp.niter = CODEBOOK_ITERATIONS
    index.pq.cp.seed = CODEBOOK_SEED
    with one_faiss_thread():
        index.train(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def save_index(index: faiss.Index, path: Path) -> None:
    """Write a FAISS index atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)


def read_codebook(path: Path) -> faiss.IndexPQFastScan:
    """A codebook saved by `train_codebooks` (an empty trained fast-scan PQ index)."""
    index = faiss.read_index(str(path))
    if not isinstance(index, faiss.IndexPQFastScan) or not index.is_trained or index.ntotal:
        raise ValueError(f"{path} is not a codebook (an empty trained IndexPQFastScan)")
    return index


def train_codebooks(samples: dict[str, np.ndarray], root: Path) -> dict[str, Path]:
    """Train a codebook for each state whose sample (float32 (tokens, dim)) allows one and
    save it as `codebooks/STATE.faiss` under `root`; returns state -> file."""
    files = {}
    for name, vectors in samples.items():
        if not can_compress(vectors.shape[1], len(vectors)):
            continue
        (Path(root) / CODEBOOKS_DIR).mkdir(exist_ok=True)
        files[name] = Path(root) / CODEBOOKS_DIR / f"{name}.faiss"
        save_index(train_codebook(vectors), files[name])
    return files


def load_codebooks(root: Path, listed: Sequence[tuple]) -> dict[str, faiss.IndexPQFastScan]:
    """The codebooks an index lists (manifest rows (segment, path, kind, bytes, sha256)),
    by state name (the file's stem), each checked against its recorded sha256."""
    out = {}
    for _, rel, _, _, sha in listed:
        path = Path(root) / rel
        if not path.is_file() or file_sha256(path) != sha:
            raise ValueError(f"codebook {path} is missing or damaged (sha256); rebuild the index")
        out[path.name[: -len(".faiss")]] = read_codebook(path)
    return out


def centroids_of(codebook: faiss.IndexPQFastScan) -> torch.Tensor:
    """The codebook's centroids as (M, 16, dim / M) float32."""
    pq = codebook.pq
    return torch.from_numpy(faiss.vector_to_array(pq.centroids).reshape(pq.M, pq.ksub, pq.dsub))


@numba.njit(fastmath=True, error_model="numpy", nogil=True, cache=True)
def nearest_centroids(bits, table, centroids, codes):
    """For every token (column of `bits`, the float16 bit patterns (dim, tokens); `table`
    maps them to float32 values) and sub-quantiser m, the index of the centroid (M, 16, 4)
    nearest to its units 4m .. 4m + 3 into `codes` (M, tokens): a loop over tokens per
    centroid, which vectorises (ties: the first centroid)."""
    m_count, k_count, _ = centroids.shape
    n = bits.shape[1]
    best = np.empty(n, np.float32)
    x = np.empty((4, n), np.float32)
    for m in range(m_count):
        for s in range(4):
            row = bits[4 * m + s]
            for t in range(n):
                x[s, t] = table[row[t]]
        x0, x1, x2, x3 = x[0], x[1], x[2], x[3]
        code = codes[m]
        for t in range(n):
            best[t] = np.inf
        for k in range(k_count):
            c0, c1, c2, c3 = (centroids[m, k, 0], centroids[m, k, 1], centroids[m, k, 2],
                              centroids[m, k, 3])
            for t in range(n):
                d0, d1, d2, d3 = x0[t] - c0, x1[t] - c1, x2[t] - c2, x3[t] - c3
                d = d0 * d0 + d1 * d1 + d2 * d2 + d3 * d3
                if d < best[t]:
                    best[t] = d
                    code[t] = k


def encode_columns(codebook: faiss.IndexPQFastScan, columns: np.ndarray) -> np.ndarray:
    """PQ codes (tokens, M) uint8 of unit-major float16 columns (dim, tokens): for each
    sub-quantiser, the centroid nearest to each token's slice of units (ties: the first)."""
    centroids = centroids_of(codebook).numpy()
    n = columns.shape[1]
    codes = np.empty((centroids.shape[0], n), dtype=np.uint8)
    table = float16_table()
    for start in range(0, n, ENCODE_BLOCK):
        end = min(n, start + ENCODE_BLOCK)
        bits = np.ascontiguousarray(columns[:, start:end]).view(np.uint16)
        nearest_centroids(bits, table, centroids, codes[:, start:end])
    return np.ascontiguousarray(codes.T)


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """4-bit codes (tokens, M) packed two per byte, the first in the low nibble: FAISS's
    `sa_encode` layout of a 4-bit product quantiser."""
    n, m = codes.shape
    if m % 2:
        codes = np.concatenate([codes, np.zeros((n, 1), np.uint8)], axis=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def build_compressed(store: StateStore, codebook: faiss.IndexPQFastScan) -> faiss.Index:
    """The segment's fast-scan PQ index: the codebook with every token's codes, handed to
    FAISS as a plain PQ index (whose codes are a flat array) and converted to the fast-scan
    block layout by FAISS itself."""
    codes = pack_codes(encode_columns(codebook, store.columns))
    flat = faiss.IndexPQ(codebook.d, codebook.pq.M, BITS, faiss.METRIC_L2)
    flat.pq = codebook.pq
    flat.is_trained = True
    faiss.copy_array_to_vector(codes.reshape(-1), flat.codes)
    flat.ntotal = len(codes)
    with one_faiss_thread():
        return faiss.IndexPQFastScan(flat)


def build_exact(store: StateStore) -> faiss.IndexScalarQuantizer:
    """An exhaustive fp16 index whose codes are the stored values, copied token-major."""
    index = faiss.IndexScalarQuantizer(store.dim, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
    n = store.n_tokens
    codes = np.empty((n, store.dim), dtype=np.float16)
    for start in range(0, n, ADD_BLOCK):
        end = min(n, start + ADD_BLOCK)
        columns = torch.from_numpy(np.array(store.columns[:, start:end]))
        torch.from_numpy(codes[start:end]).copy_(columns.T)
    faiss.copy_array_to_vector(codes.view(np.uint8).reshape(-1), index.codes)
    index.ntotal = n
    return index


def sample_positions(n: int, size: int, seed: int = 0) -> np.ndarray:
    """A fixed, sorted random sample of `size` positions out of n (all when n <= size)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size, replace=False))


def recall_at_10(index: faiss.Index, store: StateStore, seed: int = 1) -> float:
    """recall@10 of the search a query runs (the index's shortlist, re-ranked exactly on the
    stored values) against brute force, on sample queries from the segment's own tokens.

    One float32 pass over the columns ranks every token for every query (|x|^2 - 2 q.x); the
    few nearest of all and of the shortlisted are then measured exactly (float64). A hit is
    counted by distance, not by id: ties make the exact top 10 ambiguous.
    """
    n = store.n_tokens
    if n == 0:
        return float("nan")
    queries = store.vectors(sample_positions(n, RECALL_QUERIES, seed)).astype(np.float32)
    k = min(10, n)
    wanted = (min(n, shortlist(k, store.dim)) if isinstance(index, faiss.IndexPQFastScan)
              else k)
    with one_faiss_thread():
        _, found = index.search(queries, wanted)
    q = torch.from_numpy(queries)
    keep = min(n, k + RECALL_SPARE)
    rows = torch.arange(len(q))[:, None].expand(-1, found.shape[1])
    found = torch.from_numpy(found)
    found_d = torch.full(found.shape, float("inf"))
    best_d = torch.zeros((len(q), 0))
    best_i = torch.zeros((len(q), 0), dtype=torch.long)
    for start in range(0, n, ADD_BLOCK):
        x = torch.from_numpy(np.array(store.columns[:, start : start + ADD_BLOCK])).float()
        d = (x * x).sum(0)[None, :] - 2 * (q @ x)  # the query's own |q|^2 is left out
        inside = (found >= start) & (found < start + x.shape[1])
        found_d[inside] = d[rows[inside], found[inside] - start]
        top = torch.cat([best_d, d], dim=1).topk(min(keep, best_d.shape[1] + d.shape[1]),
                                                 dim=1, largest=False)
        ids = torch.cat([best_i, torch.arange(start, start + x.shape[1]).expand(len(q), -1)],
                        dim=1)
        best_d, best_i = top.values, ids.gather(1, top.indices)
    near_found = found.gather(1, found_d.topk(min(keep, found.shape[1]), dim=1,
                                              largest=False).indices)
    hits = []
    for row in range(len(q)):
        kth = np.sort(exact_squared(store, queries[row], best_i[row].numpy()))[k - 1]
        ids = near_found[row].numpy()
        got = np.sort(exact_squared(store, queries[row], ids[ids >= 0]))[:k]
        hits.append(np.mean(got <= kth * (1 + 1e-9) + 1e-12))
    return float(np.mean(hits))


def exact_squared(store: StateStore, query: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances (float64) from `query` to the stored states at positions."""
    vectors = store.vectors(np.sort(positions)).astype(np.float64)
    return ((vectors - query.astype(np.float64)) ** 2).sum(1)


def describe(index: faiss.Index) -> str:
    """A line saying what kind of FAISS index this is, for `info`."""
    if isinstance(index, faiss.IndexPQFastScan):
        return (f"PQ{index.pq.M}x{BITS}fs ({index.pq.M // 2} bytes a token), the nearest "
                "codes re-ranked exactly on the stored states")
    return "exact L2 (SQfp16, exhaustive)"


def build_faiss(store: StateStore, path: str | Path,
                codebook: faiss.IndexPQFastScan | None = None,
                measure: bool = True) -> FaissBuild:
    """Build and save (atomically) the FAISS index of one state of a segment: compressed with
    `codebook`, else exact (recall 1). The recall@10 of a compressed one is measured when
    `measure` (None otherwise: a brute-force pass over the segment costs a tenth of its
    extraction, so a build measures every `RECALL_EVERY`-th segment)."""
    t0 = time.perf_counter()
    index = build_exact(store) if codebook is None else build_compressed(store, codebook)
    recall = 1.0 if codebook is None else (recall_at_10(index, store) if measure else None)
    save_index(index, Path(path))
    return FaissBuild(describe(index), recall, time.perf_counter() - t0)

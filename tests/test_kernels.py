"""The compiled kernels: the same answers compiled or as plain Python, and without a cache
directory that can be written."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np
from conftest import ArrayStore

from lstmsearch import kernels, query
from lstmsearch.query import match, select

ROOT = Path(__file__).resolve().parents[1]


def test_plain_python_kernels_give_the_same_matches() -> None:
    rng = np.random.default_rng(2)
    state = np.cumsum(rng.random((12, 300)) < 0.15, axis=1) % 2
    values = np.where(state == 1, np.float16(0.9), np.float16(-0.1)).astype(np.float16)
    docs = np.array([0, 50, 51, 200, 300])
    store = ArrayStore(values, "layers.0.h")
    plain = {name: getattr(kernels, name).py_func
             for name in ("count_pattern", "list_runs", "runs_from", "exact_overlaps")}
    for start, end, pad_left, pad_right in [(60, 63, 1, 0), (200, 202, 2, 1), (10, 11, 0, 3)]:
        pattern = select(store, docs, start, end, 0.5, pad_left, pad_right)
        if not pattern.units:
            continue
        for histogram in (True, False):
            compiled = match(store, docs, pattern, limit=20, histogram=histogram)
            with mock.patch.multiple(query, **plain), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # uint16 wrap-around
                assert match(store, docs, pattern, limit=20, histogram=histogram) == compiled


def test_kernels_work_without_a_writable_cache_directory() -> None:
    """Numba's cache is only a speed-up: with nowhere to write it, kernels still answer."""
    code = (
        "import numpy as np\n"
        "from lstmsearch import kernels\n"
        "values = np.arange(100, dtype=np.uint16)\n"
        "test = kernels.ranges_array(((10, 40),), ((20, 90),))\n"
        "out = np.zeros(3, np.int64)\n"
        "print(kernels.count_where(values, test), kernels.first_where(values, test, out), "
        "out.tolist())\n"
    )
    env = {**os.environ, "NUMBA_CACHE_DIR": "/proc/lstmsearch-no-cache-here"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["21", "3", "[20,", "21,", "22]"]

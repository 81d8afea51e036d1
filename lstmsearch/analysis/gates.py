"""Gate activations over time: LSTM input/forget/output, GRU reset/update.

A gate value near 0 or 1 is saturated: a forget gate pinned near 1 keeps its cell's memory
(a counter such as a nesting depth), an input gate near 0 ignores the input. Per unit the
summary is the mean, standard deviation and the share of steps below `low` (0.1) and above
`high` (0.9). The gate values come from the exact extraction (`layers.{L}.{gate}`).

The candidate (LSTM `g`, GRU `n`) is a tanh in [-1, 1], not a gate: it is what a step writes
(LSTM: c_t = f c_{t-1} + i g). It can be read alongside the gates but has no part in the
saturation statistics.

Over an index (`index_gates`) the gates are not stored: the model runs again from the start
of the document up to the end of the span, since the gates at a step depend on the prefix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lstmsearch.extract import extract, state_name
from lstmsearch.models import LanguageModel

if TYPE_CHECKING:
    from lstmsearch.index import Index

SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z")}
CANDIDATES = {"lstm": "g", "gru": "n"}
"""The tanh candidate of each architecture (not a gate: its values lie in [-1, 1])."""
GATE_NAMES = {"i": "input", "f": "forget", "o": "output", "r": "reset", "z": "update",
              "g": "candidate", "n": "candidate"}
MAX_PREFIX = 2000
"""Tokens of a document's prefix that `index_gates` runs at most before a span. A longer
prefix is cut: the run then starts from a zero state MAX_PREFIX tokens before the span. The
cost of a run is its length (on one CPU thread a 2 x 256 LSTM runs about 10,000 tokens a
second); what a zero start changes fades as the run goes on: in the three longest documents
of the shipped English word model, a 2,000-token run gave the gates of the full prefix to
within 1e-6 (1,000 tokens: 5e-5; 250: 5e-3)."""


@dataclass(frozen=True)
class GateStats:
    """One gate of one unit over all the steps read."""

    gate: str
    unit: int
    mean: float
    std: float
    low_fraction: float
    high_fraction: float


@dataclass(frozen=True)
class GateActivity:
    """Gate values over time for chosen units, and per-unit statistics.

    `series[gate]` is (T, len(units)): column j belongs to `units[j]`; `tokens` and
    `positions` label the T steps. `stats` covers every unit of the layer (all gates),
    `layer_saturation[gate]` = (share of all values < low, share > high). `candidate`, when
    asked for, holds the tanh candidate (LSTM g, GRU n) of the same units, (T, len(units)).
    """

    layer: int
    arch: str
    gates: tuple[str, ...]
    units: tuple[int, ...]
    positions: np.ndarray
    tokens: tuple[str, ...]
    series: dict[str, np.ndarray]
    stats: tuple[GateStats, ...]
    layer_saturation: dict[str, tuple[float, float]]
    low: float
    high: float
    candidate: np.ndarray | None = None

    @property
    def candidate_name(self) -> str:
        """The candidate's letter in this architecture: g (LSTM) or n (GRU)."""
        return CANDIDATES[self.arch]

    def unit_stats(self, unit: int, gate: str) -> GateStats:
        """The statistics of one unit's gate."""
        for s in self.stats:
            if s.unit == unit and s.gate == gate:
                return s
        raise ValueError(f"no statistics for unit {unit}, gate {gate!r}")


def gate_stats(
    values: np.ndarray, gate: str, low: float = 0.1, high: float = 0.9
) -> tuple[GateStats, ...]:
    """Mean, std and saturation shares of every unit (column) of gate values (T, H)."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"gate values must be (steps, units) with steps, got {values.shape}")
    if not 0.0 <= low < high <= 1.0:
        raise ValueError(f"need 0 <= low < high <= 1, got low={low}, high={high}")
    mean, std = values.mean(axis=0), values.std(axis=0)
    below, above = (values < low).mean(axis=0), (values > high).mean(axis=0)
    return tuple(
        GateStats(gate, u, float(mean[u]), float(std[u]), float(below[u]), float(above[u]))
        for u in range(values.shape[1])
    )


def gate_activity(
    gate_values: dict[str, np.ndarray],
    *,
    layer: int,
    arch: str,
    units: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    positions: np.ndarray | None = None,
    low: float = 0.1,
    high: float = 0.9,
    candidate: np.ndarray | None = None,
) -> GateActivity:
    """Series for `units` (default: all) and statistics for every unit, from gate arrays
    (T, H) keyed by gate letter, plus the candidate's values (T, H) when given."""
    if not gate_values:
        raise ValueError("no gate values given")
    gates = tuple(gate_values)
    steps, width = next(iter(gate_values.values())).shape
    for g, v in gate_values.items():
        if v.shape != (steps, width):
            raise ValueError(f"gate {g!r} has shape {v.shape}, expected {(steps, width)}")
    units = tuple(range(width)) if units is None else tuple(int(u) for u in units)
    for u in units:
        if not 0 <= u < width:
            raise ValueError(f"unit {u} out of range: the layer has units 0..{width - 1}")
    tokens = tuple(tokens) if tokens is not None else tuple(str(t) for t in range(steps))
    if len(tokens) != steps:
        raise ValueError(f"{len(tokens)} tokens for {steps} steps")
    stats = tuple(s for g in gates for s in gate_stats(gate_values[g], g, low, high))
    saturation = {
        g: (float((gate_values[g] < low).mean()), float((gate_values[g] > high).mean()))
        for g in gates
    }
    positions = np.arange(steps) if positions is None else np.asarray(positions)
    series = {g: np.asarray(gate_values[g][:, list(units)], dtype=np.float32) for g in gates}
    if candidate is not None:
        if candidate.shape != (steps, width):
            raise ValueError(f"candidate has shape {candidate.shape}, expected {(steps, width)}")
        candidate = np.asarray(candidate[:, list(units)], dtype=np.float32)
    return GateActivity(
        layer, arch, gates, units, positions, tokens, series, stats, saturation, low, high,
        candidate,
    )


def model_gates(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    layer: int,
    *,
    gates: Sequence[str] | None = None,
    units: Sequence[int] | None = None,
    tokens: Sequence[str] | None = None,
    low: float = 0.1,
    high: float = 0.9,
    candidate: bool = False,
) -> GateActivity:
    """Extract the gates of `layer` over `docs` (concatenated in time) and summarise them.

    `gates` defaults to the sigmoid gates of the architecture (i, f, o or r, z); with
    `candidate=True` the result also holds the candidate (g or n) of the same units.
    """
    arch = model.config.arch
    gates = check_gates(arch, gates)
    values, cand = run_gates(model, docs, layer, gates, candidate)
    return gate_activity(
        values, layer=layer, arch=arch, units=units, tokens=tokens, low=low, high=high,
        candidate=cand,
    )


def check_gates(arch: str, gates: Sequence[str] | None) -> tuple[str, ...]:
    """The sigmoid gates asked for (default: every one of the architecture), or a clear
    error naming the one that is not."""
    if arch not in SIGMOID_GATES:
        raise ValueError(f"a {arch!r} model has no gates: only lstm and gru models have")
    gates = tuple(SIGMOID_GATES[arch] if gates is None else gates)
    for g in gates:
        if g not in SIGMOID_GATES[arch]:
            raise ValueError(
                f"gate {g!r} is not a sigmoid gate of a {arch}: "
                f"choose from {', '.join(SIGMOID_GATES[arch])}"
            )
    return gates


def run_gates(
    model: LanguageModel, docs: Sequence[np.ndarray], layer: int, gates: Sequence[str],
    candidate: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Gate values (T, H) of `layer` over `docs` concatenated in time, and the candidate's
    values (None unless asked for): one extraction for all of them."""
    kinds = list(gates) + ([CANDIDATES[model.config.arch]] if candidate else [])
    names = [state_name(layer, k) for k in kinds]
    out = extract(model, docs, names)
    values = {k: np.concatenate([r[n] for r in out]) for k, n in zip(kinds, names)}
    cand = values.pop(CANDIDATES[model.config.arch]) if candidate else None
    return values, cand


def gate_run_start(index: Index, start: int, max_prefix: int = MAX_PREFIX) -> int:
    """Where a run must start to give the gates at `start`: the start of its document, or
    `max_prefix` tokens before `start` when the document's prefix is longer (the run then
    starts from a zero state there, and the gates are an approximation)."""
    if max_prefix < 0:
        raise ValueError(f"max_prefix must be >= 0, got {max_prefix}")
    doc_start = int(index.doc_starts[index.doc_of(start)])
    return max(doc_start, int(start) - int(max_prefix))


def gate_run_end(index: Index, end: int, bidirectional: bool,
                 max_prefix: int = MAX_PREFIX) -> int:
    """Where a run must end to give the gates before `end`: `end` itself for a model that
    reads forward only; for a bidirectional one, whose backward direction reads each
    document from its end, the end of the document of token end - 1, or `max_prefix`
    tokens after `end` when that is further (the backward gates are then approximate)."""
    if not bidirectional:
        return int(end)
    doc_end = int(index.doc_starts[index.doc_of(int(end) - 1) + 1])
    return min(doc_end, int(end) + int(max_prefix))


def index_gates(
    index: Index,
    model: LanguageModel,
    layer: int,
    start: int,
    end: int,
    *,
    units: Sequence[int] | None = None,
    gates: Sequence[str] | None = None,
    candidate: bool = False,
    max_prefix: int = MAX_PREFIX,
    low: float = 0.1,
    high: float = 0.9,
) -> GateActivity:
    """The gates of `layer` at the index's tokens [start, end), with global positions.

    `model` is the index's own. It runs from the start of the span's document (see
    `gate_run_start` for a long prefix) to the span's end (for a bidirectional model to
    the end of that document, see `gate_run_end`); a span across documents starts each
    document from a zero state, as when the index was built. Statistics and saturation
    cover the span only.
    """
    start, end = int(start), int(end)
    if not 0 <= start < end <= index.n_tokens:
        raise ValueError(
            f"token span [{start}, {end}) out of range: the index has tokens 0..{index.n_tokens}"
        )
    arch = model.config.arch
    gates = check_gates(arch, gates)
    first = gate_run_start(index, start, max_prefix)
    last = gate_run_end(index, end, model.config.bidirectional, max_prefix)
    toks = index.tokens(first, last)
    ids = np.asarray(toks.token_id, dtype=np.int64)
    starts = np.asarray(index.doc_starts, dtype=np.int64)
    bounds = [first, *starts[(starts > first) & (starts < last)].tolist(), last]
    docs = [ids[a - first : b - first] for a, b in zip(bounds, bounds[1:])]
    values, cand = run_gates(model, docs, layer, gates, candidate)
    keep = slice(start - first, end - first)
    return gate_activity(
        {g: v[keep] for g, v in values.items()}, layer=layer, arch=arch, units=units,
        tokens=toks.text[keep], positions=np.arange(start, end), low=low,
        high=high, candidate=None if cand is None else cand[keep],
    )

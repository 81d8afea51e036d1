"""Gate activations over time: LSTM input/forget/output, GRU reset/update.

A gate value near 0 or 1 is saturated: a forget gate pinned near 1 keeps its cell's memory
(a counter such as a nesting depth), an input gate near 0 ignores the input. Per unit the
summary is the mean, standard deviation and the share of steps below `low` (0.1) and above
`high` (0.9). The gate values come from the exact extraction (`layers.{L}.{gate}`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lstmsearch.extract import extract, state_name
from lstmsearch.models import LanguageModel

SIGMOID_GATES = {"lstm": ("i", "f", "o"), "gru": ("r", "z")}
GATE_NAMES = {"i": "input", "f": "forget", "o": "output", "r": "reset", "z": "update"}


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
    `layer_saturation[gate]` = (share of all values < low, share > high).
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
) -> GateActivity:
    """Series for `units` (default: all) and statistics for every unit, from gate arrays
    (T, H) keyed by gate letter."""
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
    return GateActivity(
        layer, arch, gates, units, positions, tokens, series, stats, saturation, low, high
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
) -> GateActivity:
    """Extract the gates of `layer` over `docs` (concatenated in time) and summarise them.

    `gates` defaults to the sigmoid gates of the architecture (i, f, o or r, z).
    """
    arch = model.config.arch
    gates = tuple(SIGMOID_GATES[arch] if gates is None else gates)
    for g in gates:
        if g not in SIGMOID_GATES[arch]:
            raise ValueError(
                f"gate {g!r} is not a sigmoid gate of a {arch}: "
                f"choose from {', '.join(SIGMOID_GATES[arch])}"
            )
    names = [state_name(layer, g) for g in gates]
    out = extract(model, docs, names)
    values = {g: np.concatenate([r[n] for r in out]) for g, n in zip(gates, names)}
    return gate_activity(
        values, layer=layer, arch=arch, units=units, tokens=tokens, low=low, high=high
    )

"""Weights: a histogram and the singular values of every matrix, per gate block.

PyTorch stores an LSTM layer's four gates stacked in one matrix (rows i, f, g, o) and a
GRU's three (r, z, n). They are split here into the blocks of the textbook equations, named
after the PyTorch documentation: `W_ii, W_if, W_ig, W_io` (input to gate), `W_hi, W_hf,
W_hg, W_ho` (hidden to gate, the recurrent blocks) and the biases `b_ii ... b_ho`; for a
GRU `W_ir, W_iz, W_in, W_hr, W_hz, W_hn`. Full names are `layers.{L}.W_hf` (the backward
stack of a bidirectional model: `layers.{L}.backward.W_hf`), plus `embed`, `head.weight`,
`head.bias` (and `backward_head.*`).

A square recurrent block's spectral radius (largest |eigenvalue|) says whether repeated
multiplication by it shrinks (< 1) or grows (> 1) a state: the linear part of gradient
vanishing or explosion through that gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from lstmsearch.models import LanguageModel

if TYPE_CHECKING:
    from lstmsearch.index import Index

GATE_ORDER = {"lstm": ("i", "f", "g", "o"), "gru": ("r", "z", "n")}


@dataclass(frozen=True)
class MatrixStats:
    """One weight block (or bias vector): summary numbers, a histogram of its entries
    (`histogram_counts` per bin between consecutive `histogram_edges`), its singular values
    (descending; empty for a vector) and, for a square recurrent block, its spectral radius
    (None for other blocks)."""

    name: str
    shape: tuple[int, ...]
    mean: float
    std: float
    min: float
    max: float
    frobenius: float
    histogram_counts: np.ndarray
    histogram_edges: np.ndarray
    singular_values: np.ndarray
    spectral_norm: float | None
    spectral_radius: float | None
    recurrent: bool


def matrix_stats(
    name: str, weight: np.ndarray | torch.Tensor, bins: int = 50, recurrent: bool = False
) -> MatrixStats:
    """The statistics of one weight matrix or bias vector."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    if isinstance(weight, torch.Tensor):
        weight = weight.detach().cpu().double().numpy()
    w = np.asarray(weight, dtype=np.float64)
    if w.ndim not in (1, 2) or w.size == 0:
        raise ValueError(
            f"weight {name!r}: expected a non-empty vector or matrix, got shape {w.shape}"
        )
    lo, hi = float(w.min()), float(w.max())
    counts, edges = np.histogram(w, bins=bins, range=(lo, hi) if hi > lo else (lo - 0.5, hi + 0.5))
    singular = np.linalg.svd(w, compute_uv=False) if w.ndim == 2 else np.zeros(0)
    radius = None
    if recurrent and w.ndim == 2 and w.shape[0] == w.shape[1]:
        radius = float(np.abs(np.linalg.eigvals(w)).max())
    return MatrixStats(
        name=name, shape=tuple(w.shape), mean=float(w.mean()), std=float(w.std()), min=lo, max=hi,
        frobenius=float(np.linalg.norm(w)), histogram_counts=counts, histogram_edges=edges,
        singular_values=singular, spectral_norm=float(singular[0]) if len(singular) else None,
        spectral_radius=radius, recurrent=recurrent,
    )


def gate_blocks(rnn: torch.nn.Module, arch: str) -> dict[str, tuple[torch.Tensor, bool]]:
    """The gate blocks of one single-layer LSTM/GRU: short name -> (tensor, recurrent)."""
    gates = GATE_ORDER[arch]
    out: dict[str, tuple[torch.Tensor, bool]] = {}
    for src, suffix in (("i", "ih"), ("h", "hh")):
        weight = getattr(rnn, f"weight_{suffix}_l0")
        bias = getattr(rnn, f"bias_{suffix}_l0", None)
        for g, block in zip(gates, weight.chunk(len(gates), dim=0)):
            out[f"W_{src}{g}"] = (block, src == "h")
        if bias is not None:
            for g, block in zip(gates, bias.chunk(len(gates), dim=0)):
                out[f"b_{src}{g}"] = (block, False)
    return out


def weight_report(model: LanguageModel, bins: int = 50) -> tuple[MatrixStats, ...]:
    """Statistics of every weight block of the model, embedding first, head last."""
    arch = model.config.arch
    out = [matrix_stats("embed", model.embed.weight, bins)]
    for direction, stack in enumerate(model.stacks()):
        prefix = "" if direction == 0 else "backward."
        for layer, rnn in enumerate(stack):
            for short, (block, recurrent) in gate_blocks(rnn, arch).items():
                out.append(matrix_stats(f"layers.{layer}.{prefix}{short}", block, bins, recurrent))
    heads = ["head"] + (["backward_head"] if model.config.bidirectional else [])
    for head in heads:
        module = getattr(model, head)
        out.append(matrix_stats(f"{head}.weight", module.weight, bins))
        out.append(matrix_stats(f"{head}.bias", module.bias, bins))
    return tuple(out)


def index_weights(index: Index, bins: int = 50) -> tuple[MatrixStats, ...]:
    """`weight_report` of the model an index was built with (its `model.pt`); a ValueError
    naming the index when it has none (an index of stored states)."""
    from lstmsearch.analysis import MODEL_FILE
    from lstmsearch.models import load_model

    path = index.path / MODEL_FILE
    if not path.is_file():
        raise ValueError(
            f"index {index.path.name} has no {MODEL_FILE} (it was built from stored states): "
            "there are no weights to show"
        )
    return weight_report(load_model(path).model, bins)

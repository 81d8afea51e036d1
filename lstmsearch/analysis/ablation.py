"""Ablation, the causal check: re-run the model with one unit clamped and see what its
predictions lose.

A unit that correlates with an annotation need not be one the model uses. Clamping it (to
zero or to its mean over the index) at every step of every document and comparing each
token's surprisal with the clean run shows whether the model needs it, overall and per value
of each annotation track (per depth level; inside or outside strings).

How, exactly and at the cost of the layers' own fused forward (no step-by-step loop):

- `h` of unit u clamped to v: the recurrence reads h_{t-1}[u] only through column u of
  W_hh, so that column becomes v times itself added to the hidden bias (a constant), and
  the layer's output column u is set to v before the next layer (or the head) reads it.
  Exact for LSTM and GRU (a GRU's reset gate multiplies W_hn h + b_hn together, so the
  constant goes with it). The state a document starts from has h[u] = v too: the unit
  reads v wherever it is read.
- `c` of unit u clamped to v (LSTM): the forget gate of unit u is made exactly 1 and its
  input gate exactly 0 (their weights zero, their biases +/- 10^4, where sigmoid rounds to
  1 and 0), and each document starts with c[u] = v; so c_t[u] = v at every step and
  h_t[u] = o_t[u] * tanh(v), as the clamp says.

The clean surprisal over an index is its stored `surprisal` track, so an ablation costs one
forward pass; without one (or when asked), the clean run is computed beside the clamped one
by the same code, the layers below the ablated one shared, so that a unit the model ignores
changes nothing at all.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from lstmsearch.analysis import one_torch_thread
from lstmsearch.index import SURPRISAL_TRACK
from lstmsearch.models import LanguageModel, check_no_attention

if TYPE_CHECKING:
    from lstmsearch.index import Index

VALUES = ("zero", "mean")
SATURATE = 1e4
"""Gate bias that makes sigmoid exactly 1 (or 0, negated) in float32."""
LANES = 64
CHUNK = 1024
"""Documents run side by side, and steps per call of a layer (state carried across)."""
MAX_LEVELS = 20
"""A track with at most this many distinct values is reported per value; one with more, in
`BINS` bins of equal counts."""
BINS = 5


@dataclass(frozen=True)
class AblationGroup:
    """Tokens of one value (or bin) of a track: their number and mean surprisal (nats)
    in the clean and the ablated run; `change` = ablated - clean, the sort key of a
    ranking of groups by harm."""

    track: str
    value: str
    n: int
    clean: float
    ablated: float

    @property
    def change(self) -> float:
        return self.ablated - self.clean


@dataclass(frozen=True)
class AblationResult:
    """The effect of clamping `unit` of `state` to `value` (`value_kind` "zero" or
    "mean") on the surprisal of the tokens [start, end) (those with a prediction:
    `n_scored`); `groups` per track value, tracks in name order and values ascending."""

    state: str
    unit: int
    value_kind: str
    value: float
    start: int
    end: int
    n_scored: int
    clean: float
    ablated: float
    groups: tuple[AblationGroup, ...]
    seconds: float

    @property
    def change(self) -> float:
        return self.ablated - self.clean


# --- the clamped model ---------------------------------------------------------------------


def check_clamp(model: LanguageModel, layer: int, kind: str, unit: int) -> None:
    """A one-line error unless `layers.{layer}.{kind}` unit `unit` can be clamped."""
    check_no_attention(model, "ablation")
    config = model.config
    if not 0 <= layer < config.layers:
        raise ValueError(f"layer {layer} out of range: the model has layers "
                         f"0..{config.layers - 1}")
    kinds = ("h", "c") if config.arch == "lstm" else ("h",)
    if kind not in kinds:
        raise ValueError(f"kind {kind!r} cannot be clamped in a {config.arch} model: "
                         f"ablate {' or '.join(kinds)}")
    if not 0 <= unit < config.state_dim:
        raise ValueError(f"unit {unit} out of range: layers.{layer}.{kind} has units "
                         f"0..{config.state_dim - 1}")
    if unit >= config.hidden:
        raise ValueError(
            f"unit {unit} is in the backward direction (units {config.hidden}.."
            f"{config.state_dim - 1}): ablation measures next-token surprisal, which only "
            f"the forward units 0..{config.hidden - 1} affect"
        )


@torch.no_grad()
def clamped_layer(rnn: nn.Module, kind: str, unit: int, value: float) -> nn.Module:
    """A copy of a single-layer `nn.LSTM`/`nn.GRU` whose state `kind` of `unit` behaves as
    clamped to `value` (see the module docstring; for `h` the caller also sets the output
    column)."""
    out = copy.deepcopy(rnn)
    hidden = out.hidden_size
    if kind == "h":
        column = out.weight_hh_l0[:, unit].clone()
        out.bias_hh_l0 += column * value
        out.weight_hh_l0[:, unit] = 0.0
        return out
    forget, gate_in = hidden + unit, unit  # PyTorch's gate order: i, f, g, o
    for w in (out.weight_ih_l0, out.weight_hh_l0):
        w[[gate_in, forget]] = 0.0
    out.bias_hh_l0[[gate_in, forget]] = 0.0
    out.bias_ih_l0[gate_in] = -SATURATE
    out.bias_ih_l0[forget] = SATURATE
    return out


HEAD_VALUES = 1 << 22
"""Most logits (lanes x steps x vocabulary) computed at once: 16 MB of float32."""


def surprisal_of(head: nn.Module, top: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """-ln p(ids[:, t+1] | ...) from the top layer's outputs `top` (B, T, H): (B, T-1),
    a few steps at a time so that the logits stay small for a large vocabulary."""
    batch, steps = ids.shape
    out = torch.empty(batch, max(0, steps - 1), dtype=torch.float64)
    every = max(1, HEAD_VALUES // max(1, batch * head.out_features))
    for a in range(0, steps - 1, every):
        b = min(steps - 1, a + every)
        logp = torch.log_softmax(head(top[:, a:b]), dim=-1)
        out[:, a:b] = -logp.gather(2, ids[:, a + 1 : b + 1, None])[..., 0].double().cpu()
    return out


def ablated_surprisal(
    model: LanguageModel, docs: Sequence[np.ndarray], layer: int, kind: str, unit: int,
    value: float, *, clean: bool = True, lanes: int = LANES, chunk: int = CHUNK,
) -> tuple[list[np.ndarray] | None, list[np.ndarray]]:
    """Surprisal of every token of `docs` (token id arrays) in the clean model (None unless
    `clean`) and with `layers.{layer}.{kind}` unit `unit` clamped to `value` at every step:
    lists of float64 arrays, one per document, NaN at each document's first token."""
    check_clamp(model, layer, kind, unit)
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"the clamp value must be a finite number, got {value}")
    clean_layers = list(model.forward_layers)
    ablated_layers = list(clean_layers)
    ablated_layers[layer] = clamped_layer(clean_layers[layer], kind, unit, value)
    lstm = model.config.arch == "lstm"
    device = next(model.parameters()).device
    n_runs = 2 if clean else 1
    out = [[np.full(len(d), np.nan) for d in docs] for _ in range(n_runs)]
    order = sorted((d for d in range(len(docs)) if len(docs[d]) > 0),
                   key=lambda d: -len(docs[d]))
    with torch.inference_mode():
        for a in range(0, len(order), lanes):
            batch = order[a : a + lanes]
            longest = len(docs[batch[0]])
            ids = np.zeros((len(batch), longest), dtype=np.int64)
            for j, d in enumerate(batch):
                ids[j, : len(docs[d])] = docs[d]
            ids_t = torch.from_numpy(ids).to(device)
            zeros = torch.zeros(1, len(batch), model.config.hidden, device=device)
            clamped_c = zeros.clone()
            clamped_c[0, :, unit] = value  # a clamped c starts each document at the value
            # per layer, each run's carried state: the layers below the clamp share theirs
            clean_state = [(zeros, zeros) if lstm else zeros for _ in clean_layers]
            ablated_state = [(zeros, clamped_c if kind == "c" and i == layer else zeros)
                             if lstm else zeros for i in range(len(clean_layers))]
            runs = ((clean_layers, clean_state, False), (ablated_layers, ablated_state, True))
            runs = runs[2 - n_runs :]
            previous: list[torch.Tensor | None] = [None] * n_runs  # each run's last output
            for t0 in range(0, longest, chunk):
                x = model.embed(ids_t[:, t0 : t0 + chunk])
                for i in range(layer):
                    x, clean_state[i] = clean_layers[i](x, clean_state[i])
                first = max(0, t0 - 1)  # the step whose output predicts the chunk's first
                tops = []
                for r, (modules, state, clamped) in enumerate(runs):
                    y = x
                    for i in range(layer, len(modules)):
                        y, state[i] = modules[i](y, state[i])
                        if clamped and i == layer and kind == "h":
                            y = y.clone()
                            y[..., unit] = value
                    tops.append(y if previous[r] is None else torch.cat([previous[r], y], 1))
                    previous[r] = y[:, -1:]
                # both runs through the head at once (one product, half the calls)
                targets = ids_t[:, first : t0 + chunk]
                values = surprisal_of(model.head, torch.cat(tops),
                                      torch.cat([targets] * n_runs)).numpy()
                for r in range(n_runs):
                    for j, d in enumerate(batch):
                        n = min(len(docs[d]), t0 + chunk) - (first + 1)
                        if n > 0:
                            out[r][d][first + 1 : first + 1 + n] = values[r * len(batch) + j, :n]
    return (out[0] if clean else None), out[-1]


# --- over an index -------------------------------------------------------------------------


def track_groups(name: str, values: np.ndarray, clean: np.ndarray, ablated: np.ndarray
                 ) -> list[AblationGroup]:
    """Groups of tokens by `values` (numbers, NaN where absent, or labels, None where
    absent): one per value when there are at most `MAX_LEVELS`, else `BINS` bins."""
    if values.dtype == object:
        present = np.array([v is not None for v in values])
        keys = values[present].astype(str)
        c, a = clean[present], ablated[present]
        distinct, counts = np.unique(keys, return_counts=True)
        kept = distinct[np.argsort(-counts, kind="stable")[:MAX_LEVELS]]
        return [AblationGroup(name, str(k), int((keys == k).sum()),
                              float(c[keys == k].mean()), float(a[keys == k].mean()))
                for k in sorted(kept)]
    present = np.isfinite(values)
    v, c, a = values[present], clean[present], ablated[present]
    if not len(v):
        return []
    distinct = np.unique(v)
    if len(distinct) <= MAX_LEVELS:
        return [AblationGroup(name, f"{x:g}", int((v == x).sum()),
                              float(c[v == x].mean()), float(a[v == x].mean()))
                for x in distinct]
    edges = np.unique(np.quantile(v, np.linspace(0, 1, BINS + 1)))
    bins = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    groups = []
    for b in range(len(edges) - 1):
        inside = bins == b
        if inside.any():
            close = "]" if b == len(edges) - 2 else ")"
            groups.append(AblationGroup(
                name, f"[{edges[b]:.3g}, {edges[b + 1]:.3g}{close}", int(inside.sum()),
                float(c[inside].mean()), float(a[inside].mean())))
    return groups


def unit_mean(index: Index, layer: int, kind: str, unit: int) -> float:
    """The unit's mean over the index's stored states."""
    return float(index.neurons.stats(unit, layer, kind).mean)


def index_model(index: Index) -> LanguageModel:
    """The index's own model (`model.pt`), or a one-line error saying what would work."""
    from lstmsearch.analysis import MODEL_FILE
    from lstmsearch.models import load_model

    path = index.path / MODEL_FILE
    if not path.is_file():
        raise ValueError(
            f"index {index.path} has no {MODEL_FILE} (its states were imported, e.g. with "
            "index-states), so its model cannot be re-run: ablate on an index built from a "
            "checkpoint (lstmsearch index CORPUS --model MODEL.pt --out DIR)"
        )
    return load_model(path).model


def index_ablation(
    index: Index, layer: int, kind: str, unit: int, *, value: str | float = "zero",
    span: tuple[int, int] | None = None, tracks: Sequence[str] | None = None,
    model: LanguageModel | None = None, clean_from: str = "stored",
) -> AblationResult:
    """Clamp `layers.{layer}.{kind}` unit `unit` of the index's model to zero, its mean
    over the index, or a number (`value`), and compare the surprisal of the tokens
    [start, end) of `span` (default: all) with the clean run, overall and per value of each
    track (default: all but the stored surprisal). The documents the span touches run from
    their start, clamped at every step.

    The clean surprisal is the index's stored `surprisal` track (what the same model gave
    when the index was built: the ablation then costs one forward pass) unless `clean_from`
    is "computed" or the index stores none; then the clean run is computed beside the
    clamped one. The two agree to float32 rounding (about 1e-6 nats per token)."""
    if clean_from not in ("stored", "computed"):
        raise ValueError(f"clean_from must be 'stored' or 'computed', got {clean_from!r}")
    t0 = time.perf_counter()
    model = index_model(index) if model is None else model
    check_clamp(model, layer, kind, unit)
    if isinstance(value, str):
        if value not in VALUES:
            raise ValueError(f"unknown clamp value {value!r}: choose {' or '.join(VALUES)}, "
                             "or give a number")
        if value == "mean" and f"layers.{layer}.{kind}" not in index.state_names:
            raise ValueError(f"the index stores no layers.{layer}.{kind}, so its mean is "
                             "unknown: clamp to zero or to a number")
        number = unit_mean(index, layer, kind, unit) if value == "mean" else 0.0
        value_kind = value
    else:
        number, value_kind = float(value), "number"
    n = index.n_tokens
    start, end = (0, n) if span is None else (int(span[0]), int(span[1]))
    if not 0 <= start < end <= n:
        raise ValueError(f"span [{start}, {end}) out of range: the index has tokens "
                         f"[0, {n}) (give START < END)")
    first, last = index.doc_of(start), index.doc_of(end - 1)
    a, b = int(index.doc_starts[first]), int(index.doc_starts[last + 1])
    ids = np.asarray(index.tokens(a, b).token_id, np.int64)
    bounds = index.doc_starts[first : last + 2] - a
    docs = [ids[x:y] for x, y in zip(bounds[:-1], bounds[1:])]
    stored = SURPRISAL_TRACK in index.track_names() and clean_from == "stored"
    with one_torch_thread():  # 5x faster than two on busy cores (benchmarks/ablation.py)
        clean_docs, ablated_docs = ablated_surprisal(model, docs, layer, kind, unit, number,
                                                     clean=not stored)
    ablated = np.concatenate(ablated_docs)[start - a : end - a]
    if stored:
        clean = index.track(SURPRISAL_TRACK)[start:end]
    else:
        clean = np.concatenate(clean_docs)[start - a : end - a]
    scored = np.isfinite(clean)
    names = [t for t in index.track_names() if t != SURPRISAL_TRACK] if tracks is None \
        else list(tracks)
    groups: list[AblationGroup] = []
    for name in sorted(names):
        values = index.track(name)[start:end]
        if not np.isfinite(values).any():
            labels = index.track_labels(name)[start:end]
            if any(v is not None for v in labels):
                values = np.array(labels, dtype=object)
        groups += track_groups(name, values[scored], clean[scored], ablated[scored])
    return AblationResult(
        state=f"layers.{layer}.{kind}", unit=int(unit), value_kind=value_kind, value=number,
        start=start, end=end, n_scored=int(scored.sum()),
        clean=float(clean[scored].mean()) if scored.any() else float("nan"),
        ablated=float(ablated[scored].mean()) if scored.any() else float("nan"),
        groups=tuple(groups), seconds=time.perf_counter() - t0,
    )

"""Gradient flow through time: how strongly does the loss at step t reach back k steps?

For a position t, the loss is the model's cross-entropy for the token after t (the
prediction made from the states at t), and the quantity is ||d loss_t / d s_{t-k}|| for
every state s (`layers.{L}.h`, and `layers.{L}.c` for an LSTM) and lag k = 0..K. Norms that
fall geometrically with k are vanishing gradients, norms that grow are exploding ones.

The gradients are exact: the recurrence is unrolled step by step over a window of K + 1
steps with the layer's own weights, starting from the true state before the window, and
autograd gives the gradient of loss_t with respect to every state in the window at once.
Many positions run side by side as a batch; each row's loss only depends on its own row, so
one backward pass of the summed loss gives every row's gradients.

`gradient_norms` takes any recurrence (a step function over a dict of named states and a
loss on the final state), which is how it is tested against hand-computable cases;
`gradient_flow` applies it to a `LanguageModel` and summarises over many positions;
`index_gradient_flow` does so over documents of an index.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lstmsearch.extract import state_name, state_names
from lstmsearch.models import LanguageModel, check_no_attention

if TYPE_CHECKING:
    from lstmsearch.index import Index

States = dict[str, torch.Tensor]
Step = Callable[[torch.Tensor, States], States]
Loss = Callable[[States], torch.Tensor]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


@dataclass(frozen=True)
class LagProfile:
    """The gradient norms of one state against the lag, summarised over positions.

    `quantiles[j]` (one per `QUANTILES` level, so row 2 is the median) holds a value per lag;
    `count[k]` is the number of positions at least k steps into their document. `factor` is
    the typical change per step back: exp of the slope of log(median) against the lag (< 1
    vanishing, > 1 exploding).
    """

    name: str
    lags: np.ndarray
    quantile_levels: tuple[float, ...]
    quantiles: np.ndarray
    count: np.ndarray
    factor: float

    @property
    def median(self) -> np.ndarray:
        return self.quantiles[self.quantile_levels.index(0.5)]


@dataclass(frozen=True)
class GradientFlow:
    """Gradient norms of many positions and their summary per state.

    `norms[name][i, k]` = ||d loss_t / d name_{t-k}|| for the i-th position (document
    `docs[i]`, step `steps[i]` in it, global position `positions[i]`); NaN where t - k < 0.
    """

    max_lag: int
    docs: np.ndarray
    steps: np.ndarray
    positions: np.ndarray
    norms: dict[str, np.ndarray]
    profiles: tuple[LagProfile, ...]

    def profile(self, name: str) -> LagProfile:
        """The summary of one state, e.g. `profile("layers.0.c")`."""
        for p in self.profiles:
            if p.name == name:
                return p
        raise ValueError(f"no state {name!r}; have {', '.join(p.name for p in self.profiles)}")


# --- any recurrence ------------------------------------------------------------------------


def gradient_norms(
    step: Step,
    loss: Loss,
    inputs: torch.Tensor,
    initial: States,
    offsets: Sequence[int] | np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """||d loss_b / d state_{T-1-k}|| of every row b and lag k = 0..T-1, per named state.

    `inputs` is (B, T, ...): row b's window of T inputs, its loss taken after the last one.
    `initial` holds each state (B, ...) before the window. `step(x_t, states)` returns the
    next states; `loss(states)` returns one loss per row (B,). Row b starts reading at
    window step `offsets[b]` (its document begins inside the window: its state is reset to
    `initial` there, the steps before are ignored) and has NaN for lags that reach before
    its start. The gradient of a state is its total derivative: through later steps and
    through the states computed from it in the same step (an LSTM's h from its c).
    """
    batch, steps = inputs.shape[0], inputs.shape[1]
    offsets_t = torch.zeros(batch, dtype=torch.long) if offsets is None else torch.as_tensor(
        np.asarray(offsets), dtype=torch.long
    )
    if offsets_t.shape != (batch,) or (offsets_t < 0).any() or (offsets_t >= steps).any():
        raise ValueError(f"offsets must be {batch} values in 0..{steps - 1}, got {offsets}")
    # a leaf that requires grad puts every later state in the graph, whatever the weights
    initial = {k: v.detach().requires_grad_(True) for k, v in initial.items()}
    states = initial
    history: list[States] = []
    with torch.enable_grad():
        for t in range(steps):
            starting = (offsets_t == t).to(inputs.device)
            if t > 0 and starting.any():  # rows whose document begins here start afresh
                states = {
                    k: torch.where(starting.view(-1, *[1] * (v.dim() - 1)), initial[k], v)
                    for k, v in states.items()
                }
            # record the step's own outputs: within a step later states are computed from
            # them (h from c, the next layer from h), so their gradients are total ones
            states = step(inputs[:, t], states)
            history.append(states)
        total = loss(states).sum()
        names = list(states)
        flat = [history[t][n] for t in range(steps) for n in names]
        grads = torch.autograd.grad(total, flat, allow_unused=True)
    out = {n: np.empty((batch, steps)) for n in names}
    for t in range(steps):
        for j, n in enumerate(names):
            g = grads[t * len(names) + j]
            norm = torch.zeros(batch) if g is None else g.detach().flatten(1).norm(dim=1).cpu()
            out[n][:, steps - 1 - t] = norm.double().numpy()
    lags = np.arange(steps)
    reach = (steps - 1 - offsets_t.numpy())[:, None]  # how far back each row's window goes
    for n in names:
        out[n][lags[None, :] > reach] = np.nan
    return out


def lag_profile(name: str, norms: np.ndarray, levels: Sequence[float] = QUANTILES) -> LagProfile:
    """Quantiles over positions of one state's norms (positions x lags), NaN ignored."""
    levels = tuple(float(q) for q in levels)
    if 0.5 not in levels:
        levels = tuple(sorted(levels + (0.5,)))
    lags = np.arange(norms.shape[1])
    count = np.isfinite(norms).sum(axis=0)
    quantiles = np.full((len(levels), len(lags)), np.nan)
    has = count > 0
    if has.any():
        quantiles[:, has] = np.nanquantile(norms[:, has], levels, axis=0)
    factor = growth_factor(quantiles[levels.index(0.5)])
    return LagProfile(name, lags, levels, quantiles, count, factor)


def growth_factor(median: np.ndarray) -> float:
    """exp(slope) of a least-squares line through log(median) against the lag, over lags
    with a positive median; NaN when fewer than two such lags."""
    lags = np.arange(len(median))
    ok = np.isfinite(median) & (median > 0)
    if ok.sum() < 2:
        return float("nan")
    slope = np.polyfit(lags[ok], np.log(median[ok]), 1)[0]
    return float(np.exp(slope))


# --- language models -----------------------------------------------------------------------


def lstm_step(rnn: nn.LSTM, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
    """One LSTM step with the layer's weights: (h, c) after reading x (B, in)."""
    gates = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
    gates = gates + F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
    i, f, g, o = gates.chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_step(rnn: nn.GRU, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """One GRU step with the layer's weights: h after reading x (B, in)."""
    gi = F.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
    gh = F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
    ir, iz, i_n = gi.chunk(3, dim=-1)
    hr, hz, hn = gh.chunk(3, dim=-1)
    r, z = torch.sigmoid(ir + hr), torch.sigmoid(iz + hz)
    n = torch.tanh(i_n + r * hn)
    return (1 - z) * n + z * h


def model_step(model: LanguageModel) -> Step:
    """The forward stack of `model` as one step over token embeddings (B, embed_dim)."""
    lstm = model.config.arch == "lstm"

    def step(x: torch.Tensor, states: States) -> States:
        out = {}
        for layer, rnn in enumerate(model.forward_layers):
            h = state_name(layer, "h")
            if lstm:
                c = state_name(layer, "c")
                out[h], out[c] = lstm_step(rnn, x, states[h], states[c])
            else:
                out[h] = gru_step(rnn, x, states[h])
            x = out[h]
        return out

    return step


def model_loss(model: LanguageModel, targets: torch.Tensor) -> Loss:
    """Cross-entropy (nats) of each row's target token from the top layer's h."""
    top = state_name(model.config.layers - 1, "h")

    def loss(states: States) -> torch.Tensor:
        logits = model.head(states[top])
        return F.cross_entropy(logits, targets, reduction="none")

    return loss


@torch.no_grad()
def states_before(
    model: LanguageModel, doc: np.ndarray, lengths: Sequence[int]
) -> dict[int, dict[str, torch.Tensor]]:
    """The forward stack's states after reading the first n tokens of `doc`, for every n
    in `lengths`, by name, each (hidden,). One pass over the document, carrying the state
    from one requested length to the next."""
    device = next(model.parameters()).device
    ids = torch.from_numpy(np.asarray(doc, dtype=np.int64)).to(device)
    out: dict[int, dict[str, torch.Tensor]] = {}
    state, done = None, 0
    for n in sorted(set(int(v) for v in lengths)):
        if n > done:
            _, state = model.run_stack(model.forward_layers, ids[done:n].unsqueeze(0), state)
            done = n
        named = {}
        for layer, s in enumerate(state):
            if model.config.arch == "lstm":
                named[state_name(layer, "h")] = s[0][0, 0]
                named[state_name(layer, "c")] = s[1][0, 0]
            else:
                named[state_name(layer, "h")] = s[0, 0]
        out[n] = named
    return out


def sample_positions(
    lengths: Sequence[int], n: int, min_step: int = 0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Up to `n` distinct (doc, step) pairs, drawn uniformly (seeded) among steps that have a
    next token to predict and are at least `min_step` into their document; when that
    leaves none, any step with a next token."""
    rng = np.random.default_rng(seed)
    pairs = [(d, t) for d, n_tok in enumerate(lengths) for t in range(min_step, n_tok - 1)]
    if not pairs:
        pairs = [(d, t) for d, n_tok in enumerate(lengths) for t in range(n_tok - 1)]
    if not pairs:
        raise ValueError("no position has a next token: every document is shorter than 2 tokens")
    pick = rng.choice(len(pairs), size=min(n, len(pairs)), replace=False)
    pick.sort()
    arr = np.array([pairs[i] for i in pick], dtype=np.int64)
    return arr[:, 0], arr[:, 1]


def gradient_flow(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    *,
    max_lag: int = 50,
    n_positions: int = 64,
    positions: Sequence[tuple[int, int]] | None = None,
    names: Sequence[str] | None = None,
    seed: int = 0,
    batch: int = 64,
) -> GradientFlow:
    """Gradient norms ||d loss_t / d s_{t-k}|| (k = 0..max_lag) of the forward stack over
    many positions t, and their per-state summary.

    `positions` are (doc, step) pairs; by default `n_positions` are drawn (seeded) among
    steps at least `max_lag` into their document when there are such. `names` picks the
    states to report (default: h and c of every layer).
    """
    check_no_attention(model, "gradient flow")
    if max_lag < 0:
        raise ValueError(f"max_lag must be >= 0, got {max_lag}")
    config = model.config
    all_names = state_names(config, kinds=("h", "c") if config.arch == "lstm" else ("h",))
    names = list(all_names if names is None else names)
    for n in names:
        if n not in all_names:
            raise ValueError(f"no state {n!r} to differentiate; choose from {', '.join(all_names)}")
    docs = [np.asarray(d, dtype=np.int64) for d in docs]
    if positions is None:
        doc_ids, steps = sample_positions([len(d) for d in docs], n_positions, max_lag, seed)
    else:
        pairs = np.asarray(positions, dtype=np.int64).reshape(-1, 2)
        doc_ids, steps = pairs[:, 0], pairs[:, 1]
        for d, t in zip(doc_ids, steps):
            if not 0 <= d < len(docs) or not 0 <= t < len(docs[d]) - 1:
                raise ValueError(f"position (doc {d}, step {t}) has no next token to predict")
    window = max_lag + 1
    before: dict[int, dict[int, dict[str, torch.Tensor]]] = {}
    for d in sorted(set(doc_ids.tolist())):
        prefixes = [int(t) - max_lag for t in steps[doc_ids == d] if t - max_lag > 0]
        before[d] = states_before(model, docs[d], prefixes) if prefixes else {}
    norms = {n: [] for n in names}
    param = next(model.parameters())
    for lo in range(0, len(doc_ids), batch):
        rows = range(lo, min(lo + batch, len(doc_ids)))
        ids = np.zeros((len(rows), window), dtype=np.int64)
        offsets = np.zeros(len(rows), dtype=np.int64)
        initial = {
            n: torch.zeros(len(rows), config.hidden, dtype=param.dtype, device=param.device)
            for n in all_names
        }
        targets = np.zeros(len(rows), dtype=np.int64)
        for j, i in enumerate(rows):
            d, t = int(doc_ids[i]), int(steps[i])
            first = t - max_lag
            offsets[j] = max(0, -first)
            ids[j, offsets[j]:] = docs[d][max(first, 0) : t + 1]
            targets[j] = docs[d][t + 1]
            if first > 0:
                for n, v in before[d][first].items():
                    initial[n][j] = v
        with torch.no_grad():
            x = model.embed(torch.from_numpy(ids).to(param.device))
        got = gradient_norms(
            model_step(model), model_loss(model, torch.from_numpy(targets).to(param.device)),
            x, initial, offsets,
        )
        for n in names:
            norms[n].append(got[n])
    stacked = {n: np.concatenate(v) for n, v in norms.items()}
    doc_starts = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    return GradientFlow(
        max_lag=max_lag,
        docs=doc_ids,
        steps=steps,
        positions=doc_starts[doc_ids] + steps,
        norms=stacked,
        profiles=tuple(lag_profile(n, stacked[n]) for n in names),
    )


# --- an index's documents ------------------------------------------------------------------

MAX_DOC_TOKENS = 1000
"""Tokens of each document that `index_gradient_flow` reads (see there)."""


def sample_documents(index: Index, n: int, *, min_tokens: int = 2, seed: int = 0) -> list[int]:
    """Up to `n` distinct documents of `index`, drawn uniformly (seeded), in index order:
    among documents of at least `min_tokens` tokens, else among those of at least 2 (one
    prediction), so short documents do not crowd out the ones long enough for the lags."""
    if n < 1:
        raise ValueError(f"the number of documents must be >= 1, got {n}")
    lengths = np.diff(np.asarray(index.doc_starts, dtype=np.int64))
    pool = np.flatnonzero(lengths >= max(2, min_tokens))
    if not len(pool):
        pool = np.flatnonzero(lengths >= 2)
    if not len(pool):
        raise ValueError("no document of the index has 2 tokens: there is nothing to predict")
    rng = np.random.default_rng(seed)
    return sorted(int(d) for d in rng.choice(pool, size=min(n, len(pool)), replace=False))


def document_ids(index: Index, doc: int, max_tokens: int | None = None) -> np.ndarray:
    """The token ids of document `doc` of `index` (its first `max_tokens` when given)."""
    if not 0 <= int(doc) < index.n_docs:
        raise ValueError(
            f"document {doc} out of range: the index has documents 0..{index.n_docs - 1}"
        )
    start, end = int(index.doc_starts[doc]), int(index.doc_starts[doc + 1])
    if max_tokens is not None:
        end = min(end, start + max_tokens)
    if end <= start:
        return np.zeros(0, dtype=np.int64)
    return np.asarray(index.tokens(start, end).token_id, dtype=np.int64)


def index_gradient_flow(
    index: Index,
    model: LanguageModel,
    docs: Sequence[int] | None = None,
    *,
    max_lag: int = 40,
    n_positions: int = 32,
    n_docs: int = 8,
    max_tokens: int = MAX_DOC_TOKENS,
    names: Sequence[str] | None = None,
    seed: int = 0,
) -> GradientFlow:
    """`gradient_flow` of the index's `model` over documents `docs` of the index (default: a
    seeded sample of `n_docs` documents, `sample_documents`), read from the index.

    Positions are drawn from each document's first `max_tokens` tokens: the model runs over
    every token before a position, so this bounds the time on long documents. In the result
    `docs` are the index's document numbers and `positions` its global token positions.
    """
    if max_tokens < 2:
        raise ValueError(f"max_tokens must be >= 2, got {max_tokens}")
    if docs is None:
        docs = sample_documents(index, n_docs, min_tokens=max_lag + 2, seed=seed)
    docs = [int(d) for d in docs]
    if not docs:
        raise ValueError("no documents given")
    ids = [document_ids(index, d, max_tokens) for d in docs]
    flow = gradient_flow(model, ids, max_lag=max_lag, n_positions=n_positions, names=names,
                         seed=seed)
    index_docs = np.asarray(docs, dtype=np.int64)[flow.docs]
    return dataclasses.replace(
        flow, docs=index_docs,
        positions=np.asarray(index.doc_starts, dtype=np.int64)[index_docs] + flow.steps,
    )

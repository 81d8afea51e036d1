"""Exact per-token states of every layer: h, c and (optionally) the gates.

States are named `layers.{L}.{kind}` everywhere (cache, store, API, UI): kind is `h`, `c`
(LSTM only) or a gate: `i`, `f`, `g`, `o` for an LSTM, `r`, `z`, `n` for a GRU.

How (SPEC 3.3): `nn.LSTM` never returns per-step cell states, so each layer runs once through
the fused kernel for `h` (the slow, sequential part), then the gate pre-activations of all
steps are recomputed in one batched matrix product from the layer's input and `h_{t-1}`, and
`c_t = f_t * c_{t-1} + i_t * g_t` is an element-wise scan. A GRU's only state is `h`.

Documents are read in lanes: up to `lanes` documents side by side, a stretch of time
(`chunk` steps) at a time, with each lane's state carried from one stretch to the next, so a
long document costs no more memory than a short one and equals one pass over it. When a
document ends its lane takes the next document with a zero state.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lstmsearch.models import LanguageModel, ModelConfig

LSTM_GATES = ("i", "f", "g", "o")
GRU_GATES = ("r", "z", "n")


def state_kinds(config: ModelConfig, gates: bool = False) -> tuple[str, ...]:
    """The kinds of state a model of this config has: h (and c), then gates if asked."""
    base = ("h", "c") if config.arch == "lstm" else ("h",)
    if not gates:
        return base
    return base + (LSTM_GATES if config.arch == "lstm" else GRU_GATES)


def state_name(layer: int, kind: str) -> str:
    """The one spelling of a state's origin, e.g. `layers.1.c`."""
    return f"layers.{layer}.{kind}"


def parse_state_name(name: str) -> tuple[int, str]:
    """`layers.1.c` -> (1, "c"); a clear error for anything else."""
    parts = name.split(".")
    if len(parts) != 3 or parts[0] != "layers" or not parts[1].isdigit() or not parts[2]:
        raise ValueError(f"bad state name {name!r}: expected layers.<layer>.<kind>, e.g. layers.1.c")
    return int(parts[1]), parts[2]


def state_names(
    config: ModelConfig,
    kinds: Sequence[str] | None = None,
    layers: Sequence[int] | None = None,
    gates: bool = False,
) -> list[str]:
    """Names of the states to extract, layer by layer; checks layers and kinds exist."""
    available = state_kinds(config, gates=True)
    kinds = tuple(kinds) if kinds is not None else state_kinds(config, gates)
    for kind in kinds:
        if kind not in available:
            raise ValueError(
                f"unknown kind {kind!r} for a {config.arch} model: choose from {', '.join(available)}"
            )
    layers = range(config.layers) if layers is None else layers
    for layer in layers:
        if not 0 <= layer < config.layers:
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{config.layers - 1}")
    return [state_name(layer, kind) for layer in layers for kind in kinds]


def state_dims(config: ModelConfig, gates: bool = True) -> dict[str, int]:
    """Every extractable state name -> its number of units."""
    return {name: config.state_dim for name in state_names(config, gates=gates)}


# --- one layer ---------------------------------------------------------------------------


def lstm_layer(
    rnn: nn.LSTM, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], kinds: set[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """One LSTM layer over x (B, T, in): output h, the asked kinds (B, T, H), final state."""
    h_all, final = rnn(x, state)
    out = {"h": h_all}
    wanted_gates = kinds & {"c", *LSTM_GATES}
    if not wanted_gates:
        return h_all, out, final
    hidden = rnn.hidden_size
    # gates i, f, g are needed for c; o only when asked for
    rows = 4 * hidden if "o" in kinds else 3 * hidden
    h_prev = torch.cat([state[0].transpose(0, 1), h_all[:, :-1]], dim=1)
    pre = torch.nn.functional.linear(x, rnn.weight_ih_l0[:rows], rnn.bias_ih_l0[:rows])
    pre = pre + torch.nn.functional.linear(h_prev, rnn.weight_hh_l0[:rows], rnn.bias_hh_l0[:rows])
    i = torch.sigmoid(pre[..., :hidden])
    f = torch.sigmoid(pre[..., hidden : 2 * hidden])
    g = torch.tanh(pre[..., 2 * hidden : 3 * hidden])
    if "c" in kinds:
        out["c"] = cell_scan(f, i * g, state[1][0])
    gates = {"i": i, "f": f, "g": g}
    if "o" in kinds:
        gates["o"] = torch.sigmoid(pre[..., 3 * hidden :])
    out.update({k: v for k, v in gates.items() if k in kinds})
    return h_all, out, final


def cell_scan(f: torch.Tensor, u: torch.Tensor, c0: torch.Tensor) -> torch.Tensor:
    """c_t = f_t * c_{t-1} + u_t for all t: a cheap element-wise loop over time."""
    c = torch.empty_like(u)
    prev = c0
    for t in range(u.shape[1]):
        prev = torch.addcmul(u[:, t], f[:, t], prev)
        c[:, t] = prev
    return c


def gru_layer(
    rnn: nn.GRU, x: torch.Tensor, state: torch.Tensor, kinds: set[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One GRU layer over x (B, T, in): output h, the asked kinds (B, T, H), final state."""
    h_all, final = rnn(x, state)
    out = {"h": h_all}
    if not kinds & set(GRU_GATES):
        return h_all, out, final
    hidden = rnn.hidden_size
    h_prev = torch.cat([state.transpose(0, 1), h_all[:, :-1]], dim=1)
    gi = torch.nn.functional.linear(x, rnn.weight_ih_l0, rnn.bias_ih_l0)
    gh = torch.nn.functional.linear(h_prev, rnn.weight_hh_l0, rnn.bias_hh_l0)
    r = torch.sigmoid(gi[..., :hidden] + gh[..., :hidden])
    z = torch.sigmoid(gi[..., hidden : 2 * hidden] + gh[..., hidden : 2 * hidden])
    n = torch.tanh(gi[..., 2 * hidden :] + r * gh[..., 2 * hidden :])
    out.update({k: v for k, v in {"r": r, "z": z, "n": n}.items() if k in kinds})
    return h_all, out, final


# --- lanes over many documents -----------------------------------------------------------


@dataclass(frozen=True)
class StateBlock:
    """States of some documents over one stretch of time, from one direction.

    Row j holds document `docs[j]`, positions `starts[j] .. starts[j] + lengths[j]` in document
    order; `states[name][j, :lengths[j]]` are its valid steps. The units are
    `unit_offset .. unit_offset + H` of the stored state (the backward direction of a
    bidirectional model fills the second half).
    """

    docs: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    unit_offset: int
    states: dict[str, np.ndarray]
    surprisal: np.ndarray | None = None  # (B, T): -ln p(token | the tokens before it), NaN at 0


def iter_states(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    chunk: int = 256,
    lanes: int = 64,
    surprisal: bool = False,
) -> Iterator[StateBlock]:
    """Stream exact states of `docs` (token id arrays) in blocks of lanes x chunk steps."""
    config = model.config
    names = list(names) if names is not None else state_names(config)
    wanted: dict[int, set[str]] = {}
    for name in names:
        layer, kind = parse_state_name(name)
        state_names(config, kinds=[kind], layers=[layer], gates=True)  # validates
        wanted.setdefault(layer, set()).add(kind)
    if chunk < 1 or lanes < 1:
        raise ValueError(f"chunk and lanes must be positive, got chunk={chunk}, lanes={lanes}")
    # longest first: lanes that run together finish together, so little time is padding
    order = sorted(range(len(docs)), key=lambda d: -len(docs[d]))
    order = [d for d in order if len(docs[d]) > 0]
    for direction, layers in enumerate(model.stacks()):
        heads = None
        if surprisal and direction == 0:
            heads = model.head
        yield from run_lanes(
            model, layers, docs, order, wanted, chunk, lanes,
            backward=direction == 1, unit_offset=direction * config.hidden, head=heads,
        )


@torch.inference_mode()
def run_lanes(
    model: LanguageModel,
    layers: nn.ModuleList,
    docs: Sequence[np.ndarray],
    order: list[int],
    wanted: dict[int, set[str]],
    chunk: int,
    lanes: int,
    backward: bool,
    unit_offset: int,
    head: nn.Module | None,
) -> Iterator[StateBlock]:
    """One direction's stack over all documents, lane by lane (see module docstring)."""
    device = next(model.parameters()).device
    hidden, n_layers = model.config.hidden, len(layers)
    is_lstm = model.config.arch == "lstm"
    top_needed = max(wanted) if head is None else n_layers - 1
    queue = deque(order)
    lane_doc: list[int] = []
    lane_pos: list[int] = []
    lane_state: list[list] = []  # per lane, per layer: state tensors (1, 1, H)
    lane_logp: list[torch.Tensor | None] = []

    def zero_state():
        z = torch.zeros(1, 1, hidden, device=device)
        return (z, z.clone()) if is_lstm else z

    while queue or lane_doc:
        while queue and len(lane_doc) < lanes:
            lane_doc.append(queue.popleft())
            lane_pos.append(0)
            lane_state.append([zero_state() for _ in range(n_layers)])
            lane_logp.append(None)
        remaining = [len(docs[d]) - p for d, p in zip(lane_doc, lane_pos)]
        steps = min(chunk, max(remaining))
        lengths = np.minimum(remaining, steps)
        ids = np.zeros((len(lane_doc), steps), dtype=np.int64)
        for j, (d, p) in enumerate(zip(lane_doc, lane_pos)):
            seq = docs[d][::-1] if backward else docs[d]
            ids[j, : lengths[j]] = seq[p : p + lengths[j]]
        x = model.embed(torch.from_numpy(ids).to(device))
        states: dict[str, np.ndarray] = {}
        new_states = []
        for layer in range(top_needed + 1):
            kinds = wanted.get(layer, set())
            if is_lstm:
                h0 = torch.cat([s[layer][0] for s in lane_state], dim=1)
                c0 = torch.cat([s[layer][1] for s in lane_state], dim=1)
                x, out, final = lstm_layer(layers[layer], x, (h0, c0), kinds)
            else:
                h0 = torch.cat([s[layer] for s in lane_state], dim=1)
                x, out, final = gru_layer(layers[layer], x, h0, kinds)
            # a row shorter than the block ends its document here, so the kernel's final
            # state is exact for every row that goes on
            new_states.append(final)
            for kind in kinds:
                states[state_name(layer, kind)] = out[kind]
        block_surprisal = None
        if head is not None:
            block_surprisal = next_token_surprisal(head, x, ids, lengths, lane_logp)
        if backward:
            states = {k: flip_rows(v, lengths) for k, v in states.items()}
        starts = np.array(
            [len(docs[d]) - p - n if backward else p for d, p, n in zip(lane_doc, lane_pos, lengths)]
        )
        yield StateBlock(
            docs=np.array(lane_doc),
            starts=starts,
            lengths=lengths.copy(),
            unit_offset=unit_offset,
            states={k: v.float().cpu().numpy() for k, v in states.items()},
            surprisal=block_surprisal,
        )
        # carry each lane's state to its next stretch; finished lanes make room
        keep = []
        for j in range(len(lane_doc)):
            lane_pos[j] += int(lengths[j])
            for layer in range(top_needed + 1):
                if is_lstm:
                    lane_state[j][layer] = (
                        new_states[layer][0][:, j : j + 1],
                        new_states[layer][1][:, j : j + 1],
                    )
                else:
                    lane_state[j][layer] = new_states[layer][:, j : j + 1]
            if lane_pos[j] < len(docs[lane_doc[j]]):
                keep.append(j)
        lane_doc = [lane_doc[j] for j in keep]
        lane_pos = [lane_pos[j] for j in keep]
        lane_state = [lane_state[j] for j in keep]
        lane_logp = [lane_logp[j] for j in keep]


def flip_rows(x: torch.Tensor, lengths: np.ndarray) -> torch.Tensor:
    """Reverse each row's first lengths[j] steps (B, T, H), leaving the padding in place."""
    steps = x.shape[1]
    t = torch.arange(steps, device=x.device)
    n = torch.as_tensor(lengths, device=x.device).unsqueeze(1)
    idx = torch.where(t < n, n - 1 - t, t)
    return torch.gather(x, 1, idx.unsqueeze(-1).expand_as(x))


HEAD_VALUES = 1 << 23
"""Most logits (lanes x steps x vocabulary) the surprisal computes at once: 32 MB of float32."""


def next_token_surprisal(
    head: nn.Module,
    top: torch.Tensor,
    ids: np.ndarray,
    lengths: np.ndarray,
    lane_logp: list[torch.Tensor | None],
) -> np.ndarray:
    """Surprisal (nats) of each token given the tokens before it, for a block of lanes.

    The prediction for a block's first token comes from the lane's previous block (carried in
    `lane_logp`); a document's first token has no prediction and gets NaN.
    """
    batch, steps = ids.shape
    target = torch.from_numpy(ids).to(top.device)
    out = torch.full(ids.shape, float("nan"))
    # the logits are B x T x V: a few steps at a time keeps them small for a large vocabulary
    every = max(1, HEAD_VALUES // max(1, batch * head.out_features))
    for a in range(0, steps, every):
        b = min(steps, a + every)
        logp = torch.log_softmax(head(top[:, a:b]).float(), dim=-1)  # predicts token t + 1
        n = min(b, steps - 1) - a
        if n > 0:
            nxt = target[:, a + 1 : a + 1 + n].unsqueeze(-1)
            out[:, a + 1 : a + 1 + n] = -logp[:, :n].gather(2, nxt).squeeze(-1).cpu()
        for j in range(batch):
            if a <= lengths[j] - 1 < b:
                lane_logp[j], first = logp[j, lengths[j] - 1 - a], lane_logp[j]
                if first is not None:
                    out[j, 0] = -first[ids[j, 0]].item()
    return out.numpy()


# --- whole documents ---------------------------------------------------------------------


def extract(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    chunk: int = 256,
    lanes: int = 64,
    surprisal: bool = False,
) -> list[dict[str, np.ndarray]]:
    """Exact states of each document: one dict per doc, name -> float32 (len(doc), units).

    With `surprisal=True` each dict also has "surprisal" (len(doc),), NaN at position 0.
    """
    config = model.config
    names = list(names) if names is not None else state_names(config)
    result = [
        {name: np.zeros((len(d), config.state_dim), dtype=np.float32) for name in names}
        for d in docs
    ]
    if surprisal:
        for r, d in zip(result, docs):
            r["surprisal"] = np.full(len(d), np.nan, dtype=np.float32)
    for block in iter_states(model, docs, names, chunk=chunk, lanes=lanes, surprisal=surprisal):
        lo, hi = block.unit_offset, block.unit_offset + config.hidden
        for j, d in enumerate(block.docs):
            s, n = int(block.starts[j]), int(block.lengths[j])
            for name, values in block.states.items():
                result[d][name][s : s + n, lo:hi] = values[j, :n]
            if block.surprisal is not None:
                result[d]["surprisal"][s : s + n] = block.surprisal[j, :n]
    return result

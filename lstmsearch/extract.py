"""Exact per-token states of every layer: h, c and (optionally) the gates.

States are named `layers.{L}.{kind}` everywhere (cache, store, API, UI): kind is `h`, `c`
(LSTM only) or a gate: `i`, `f`, `g`, `o` for an LSTM, `r`, `z`, `n` for a GRU.

How: `nn.LSTM` never returns per-step cell states, so this module runs each layer itself, in
one pass that costs what the layer's own forward costs (`fused` kernel, the default):

- the input projection of a stretch of steps is one matrix product for all of them (for the
  first layer, a row of a precomputed `embedding @ W_ih^T + b` table per token, when the
  vocabulary is small enough);
- each step is one matrix product `h_{t-1} @ W_hh^T` (oneDNN with the weights packed once,
  the input projection added in the same call, where torch offers it) and one fused
  pointwise update (`lstmsearch.cells`: gates, c, h and the asked gates in one loop), which
  writes the step's states straight into the block's time-major output arrays.

The `reference` kernel is the plain way, kept as the tests' second opinion: the layer through
`nn.LSTM` for `h`, then the gate pre-activations of all steps recomputed in one batched
product and `c_t = f_t * c_{t-1} + i_t * g_t` as an element-wise scan.

Documents are read in lanes: up to `lanes` documents side by side, a stretch of time
(`chunk` steps) at a time, with each lane's state carried from one stretch to the next, so a
long document costs no more memory than a short one and equals one pass over it. When a
document ends its lane takes the next document with a zero state.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lstmsearch.cells import BACKENDS, default_backend, gru_update, lstm_update
from lstmsearch.models import LanguageModel, ModelConfig
from lstmsearch.store import FLOAT16_MAX

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


# --- the fused pass ----------------------------------------------------------------------

KERNELS = ("fused", "reference")
PROJECTION_ROWS = 4096
"""Lanes x steps whose input projection is one matrix product."""
TABLE_BYTES = 1 << 26
"""Largest first-layer table `embedding @ W_ih^T + b` (64 MiB) looked up per token."""


@dataclass(frozen=True)
class StepWeights:
    """One layer's weights arranged for the fused pass.

    The input projection is `x @ w_ih_t + b_in` (an LSTM folds both biases into `b_in`; a GRU
    keeps `b_hh` apart, inside the reset gate's product). `w_hh` is what `step_product`
    multiplies `h_{t-1}` with: W_hh packed once for oneDNN when `packed`, else W_hh^T.
    `table` is the first layer's input projection of every token id, when it is small.
    """

    arch: str
    hidden: int
    w_ih_t: torch.Tensor
    b_in: torch.Tensor
    b_hh: torch.Tensor | None
    w_hh: torch.Tensor
    packed: bool
    table: torch.Tensor | None = None


def pack_for_steps(w_hh: torch.Tensor, lanes: int) -> torch.Tensor | None:
    """W_hh in oneDNN's packed layout for products with `lanes` rows, or None where torch
    offers no packed product (not a CPU, not float32, no oneDNN)."""
    if w_hh.device.type != "cpu" or w_hh.dtype != torch.float32:
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(w_hh, lanes)
        probe = torch.ones(1, w_hh.shape[1])
        got = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    if not torch.allclose(got[0], w_hh.sum(1), rtol=1e-4, atol=1e-4):
        return None
    return packed


def step_weights(rnn: nn.Module, lanes: int, embed: nn.Embedding | None = None) -> StepWeights:
    """The fused pass's view of one single-layer `nn.LSTM`/`nn.GRU` (see `StepWeights`);
    `embed` is the model's embedding when this is the first layer."""
    arch = "lstm" if isinstance(rnn, nn.LSTM) else "gru"
    w_ih, w_hh = rnn.weight_ih_l0.detach(), rnn.weight_hh_l0.detach()
    b_ih, b_hh = rnn.bias_ih_l0.detach(), rnn.bias_hh_l0.detach()
    b_in = b_ih + b_hh if arch == "lstm" else b_ih
    w_packed = pack_for_steps(w_hh, lanes)
    table = None
    if embed is not None and embed.num_embeddings * w_ih.shape[0] * 4 <= TABLE_BYTES:
        table = torch.addmm(b_in, embed.weight.detach(), w_ih.t())
    return StepWeights(
        arch=arch, hidden=rnn.hidden_size, w_ih_t=w_ih.t(), b_in=b_in,
        b_hh=None if arch == "lstm" else b_hh,
        w_hh=w_hh.t() if w_packed is None else w_packed, packed=w_packed is not None,
        table=table,
    )


class Workspace:
    """Arrays the fused pass reuses from block to block. A fresh array of tens of MB is
    fresh pages from the system every time (the allocator maps them anew), and faulting
    them in cost about a tenth of the pass; `None` instead of a workspace allocates anew."""

    def __init__(self) -> None:
        self.buffers: dict[tuple, torch.Tensor] = {}

    def take(self, key: tuple, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """An uninitialised array of `shape` (the dtype and device of `like`) for `key`."""
        numel = math.prod(shape)
        buffer = self.buffers.get(key)
        if (buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = self.buffers[key] = torch.empty(numel, dtype=like.dtype,
                                                     device=like.device)
        return buffer[:numel].view(shape)


def empty(workspace: Workspace | None, key: tuple, shape: tuple[int, ...],
          like: torch.Tensor) -> torch.Tensor:
    """`workspace.take(...)`, or a new array without a workspace."""
    if workspace is None:
        return torch.empty(shape, dtype=like.dtype, device=like.device)
    return workspace.take(key, shape, like)


def input_projection(w: StepWeights, inputs: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """`x @ W_ih^T + b` for a stretch of steps into `out` (S, B, gates x H): inputs are token
    ids (S, B) when the layer has a table, else x (S, B, in)."""
    flat = out.view(-1, out.shape[-1])
    if w.table is not None:
        torch.index_select(w.table, 0, inputs.reshape(-1), out=flat)
    else:
        torch.addmm(w.b_in, inputs.reshape(-1, inputs.shape[-1]), w.w_ih_t, out=flat)
    return out


def step_product(w: StepWeights, h: torch.Tensor, add: torch.Tensor | None) -> torch.Tensor:
    """`h @ W_hh^T` (B, gates x H), plus `add` (an LSTM's input projection of the step) or,
    for a GRU, its hidden bias."""
    if add is None:
        if w.packed:
            return torch.ops.mkldnn._linear_pointwise(h, w.w_hh, w.b_hh, "none", [], "")
        return torch.addmm(w.b_hh, h, w.w_hh)
    if w.packed:
        return torch.ops.mkldnn._linear_pointwise.binary(h, add, w.w_hh, None, "add")
    return torch.addmm(add, h, w.w_hh)


def fused_layer(w: StepWeights, inputs: torch.Tensor, state: tuple[torch.Tensor, ...],
                kinds: set[str], backend: str, workspace: Workspace | None = None,
                layer: int = 0
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """One layer over a block, time-major: `inputs` are token ids (T, B) for a layer with a
    table, else x (T, B, in); `state` is (h, c) or (h,), each (B, H). Returns h (T, B, H),
    the asked kinds (T, B, H) and the final state. With a `workspace` the outputs are its
    arrays for `layer`, valid until the next block."""
    steps, batch = inputs.shape[:2]
    hidden = w.hidden
    lstm = w.arch == "lstm"
    like = w.b_in
    h_all = empty(workspace, ("h", layer), (steps, batch, hidden), like)
    c_all = empty(workspace, ("c", layer), (steps, batch, hidden), like) if (
        lstm and "c" in kinds) else None
    gate_kinds = LSTM_GATES if lstm else GRU_GATES
    gates = None
    if kinds & set(gate_kinds):
        gates = empty(workspace, ("gates", layer), (steps, len(gate_kinds), batch, hidden), like)
    h = state[0]
    c = state[1].clone() if lstm else None  # the running cell state, updated in place
    c_spare = torch.empty_like(h) if lstm and c_all is None else None
    every = max(1, PROJECTION_ROWS // max(1, batch))
    width = (4 if lstm else 3) * hidden
    for a in range(0, steps, every):
        stretch = min(steps, a + every) - a
        projected = input_projection(w, inputs[a : a + every], empty(
            workspace, ("projected", layer), (stretch, batch, width), like))
        for t in range(a, min(steps, a + every)):
            gates_t = None if gates is None else gates[t]
            if lstm:
                pre = step_product(w, h, projected[t - a])
                lstm_update(backend, pre, c, c_spare if c_all is None else c_all[t], h_all[t],
                            gates_t)
            else:
                gru_update(backend, projected[t - a], step_product(w, h, None), h, h_all[t],
                           gates_t)
            h = h_all[t]
    out = {"h": h_all}
    if c_all is not None:
        out["c"] = c_all
    if gates is not None:
        out.update({k: gates[:, j] for j, k in enumerate(gate_kinds) if k in kinds})
    if workspace is not None:
        h = h.clone()  # the next block reuses h_all
    return h_all, out, ((h, c) if lstm else (h,))


def reference_layer(rnn: nn.Module, x: torch.Tensor, state: tuple[torch.Tensor, ...],
                    kinds: set[str]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]:
    """`fused_layer`'s contract (x is (T, B, in)) by `lstm_layer` / `gru_layer`."""
    x = x.transpose(0, 1)
    if isinstance(rnn, nn.LSTM):
        h_all, out, (h, c) = lstm_layer(rnn, x, (state[0][None], state[1][None]), kinds)
        final = (h[0], c[0])
    else:
        h_all, out, h = gru_layer(rnn, x, state[0][None], kinds)
        final = (h[0],)
    if "c" in out:
        out["c"] = out["c"].clamp(-FLOAT16_MAX, FLOAT16_MAX)
    return h_all.transpose(0, 1), {k: v.transpose(0, 1) for k, v in out.items()}, final


# --- lanes over many documents -----------------------------------------------------------


@dataclass(frozen=True)
class StateBlock:
    """States of some documents over one stretch of time, from one direction.

    Row j holds document `docs[j]`, positions `starts[j] .. starts[j] + lengths[j]` in document
    order; `states[name][j, :lengths[j]]` are its valid steps, float32 (or the stored float16)
    within float16's finite range (h and the gates are bounded, c is clipped). The units are
    `unit_offset .. unit_offset + H` of the stored state (the backward direction of a
    bidirectional model fills the second half).
    """

    docs: np.ndarray
    starts: np.ndarray
    lengths: np.ndarray
    unit_offset: int
    states: dict[str, np.ndarray]
    surprisal: np.ndarray | None = None  # (B, T): -ln p(token | the tokens before it), NaN at 0
    attention: np.ndarray | None = None  # (B, T, W) of an attention model, with the surprisal


def iter_states(
    model: LanguageModel,
    docs: Sequence[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    chunk: int = 256,
    lanes: int = 64,
    surprisal: bool = False,
    kernel: str = "fused",
    backend: str | None = None,
    stored: bool = False,
) -> Iterator[StateBlock]:
    """Stream exact states of `docs` (token id arrays) in blocks of lanes x chunk steps.

    `kernel` is "fused" (one pass per layer at the cost of its forward) or "reference" (the
    layer's `nn.LSTM`/`nn.GRU` plus a recomputation of the gates); `backend` chooses the
    fused pass's pointwise update ("numba" or "torch", default: `cells.default_backend`).
    With `stored` the blocks hold float16 values, rounded once where the model runs (what an
    index stores; half the bytes to move); else float32.
    """
    config = model.config
    names = list(names) if names is not None else state_names(config)
    wanted: dict[int, set[str]] = {}
    for name in names:
        layer, kind = parse_state_name(name)
        state_names(config, kinds=[kind], layers=[layer], gates=True)  # validates
        wanted.setdefault(layer, set()).add(kind)
    if chunk < 1 or lanes < 1:
        raise ValueError(f"chunk and lanes must be positive, got chunk={chunk}, lanes={lanes}")
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    parameter = next(model.parameters())
    backend = backend or default_backend(parameter.device, parameter.dtype)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    # longest first: lanes that run together finish together, so little time is padding
    order = sorted(range(len(docs)), key=lambda d: -len(docs[d]))
    order = [d for d in order if len(docs[d]) > 0]
    for direction, layers in enumerate(model.stacks()):
        head = model.head if surprisal and direction == 0 else None
        top = len(layers) - 1 if head is not None else max(wanted)
        if kernel == "fused":
            prepared = [step_weights(layers[i], min(lanes, len(order)) or 1,
                                     model.embed if i == 0 else None) for i in range(top + 1)]
            # stored blocks are copies, so the float32 arrays can be reused for the next
            workspace = Workspace() if stored else None

            def run(i, inputs, state, kinds, prepared=prepared, workspace=workspace):
                return fused_layer(prepared[i], inputs, state, kinds, backend, workspace, i)
        else:
            def run(i, inputs, state, kinds, layers=layers):
                return reference_layer(layers[i], inputs, state, kinds)

        first_table = kernel == "fused" and prepared[0].table is not None
        yield from run_lanes(
            model, run, top + 1, first_table, docs, order, wanted, chunk, lanes,
            backward=direction == 1, unit_offset=direction * config.hidden, head=head,
            dtype=torch.float16 if stored else torch.float32,
        )


LayerRun = Callable[[int, torch.Tensor, tuple[torch.Tensor, ...], set[str]],
                    tuple[torch.Tensor, dict[str, torch.Tensor], tuple[torch.Tensor, ...]]]
"""`run(layer, inputs, state, kinds)`: one layer over a block, time-major (`fused_layer`)."""


@torch.inference_mode()
def run_lanes(
    model: LanguageModel,
    run: LayerRun,
    n_layers: int,
    ids_in: bool,
    docs: Sequence[np.ndarray],
    order: list[int],
    wanted: dict[int, set[str]],
    chunk: int,
    lanes: int,
    backward: bool,
    unit_offset: int,
    head: nn.Module | None,
    dtype: torch.dtype = torch.float32,
) -> Iterator[StateBlock]:
    """One direction's first `n_layers` layers over all documents, lane by lane (see the
    module docstring); `ids_in`: the first layer takes token ids, not embeddings; the
    blocks' states come in `dtype`."""
    parameter = next(model.parameters())
    device = parameter.device
    hidden = model.config.hidden
    parts = 2 if model.config.arch == "lstm" else 1  # (h, c) or (h,)
    queue = deque(order)
    lane_doc: list[int] = []
    lane_pos: list[int] = []
    lane_logp: list[torch.Tensor | None] = []
    # per layer, the carried state of every lane: (h, c) or (h,), each (lanes, H)
    state = [tuple(torch.zeros(0, hidden, device=device, dtype=parameter.dtype)
                   for _ in range(parts))
             for _ in range(n_layers)]
    window = model.config.attention if head is not None else 0
    # an attention model's memory of every lane: its last W top outputs and how many count
    memory = (torch.zeros(window, 0, hidden, device=device, dtype=parameter.dtype),
              torch.zeros(1, 0, 1, device=device, dtype=parameter.dtype))

    while queue or lane_doc:
        joined = 0
        while queue and len(lane_doc) < lanes:
            lane_doc.append(queue.popleft())
            lane_pos.append(0)
            lane_logp.append(None)
            joined += 1
        if joined:  # new documents start from a zero state
            zeros = torch.zeros(joined, hidden, device=device, dtype=parameter.dtype)
            state = [tuple(torch.cat([part, zeros]) for part in layer) for layer in state]
            memory = (torch.cat([memory[0], memory[0].new_zeros(window, joined, hidden)], 1),
                      torch.cat([memory[1], memory[1].new_zeros(1, joined, 1)], 1))
        remaining = [len(docs[d]) - p for d, p in zip(lane_doc, lane_pos)]
        steps = min(chunk, max(remaining))
        lengths = np.minimum(remaining, steps)
        ids = np.zeros((len(lane_doc), steps), dtype=np.int64)
        for j, (d, p) in enumerate(zip(lane_doc, lane_pos)):
            seq = docs[d][::-1] if backward else docs[d]
            ids[j, : lengths[j]] = seq[p : p + lengths[j]]
        x = torch.from_numpy(ids.T.copy()).to(device)  # time-major (T, B)
        if not ids_in:
            x = model.embed(x)
        states: dict[str, torch.Tensor] = {}
        for layer in range(n_layers):
            kinds = wanted.get(layer, set())
            # a row shorter than the block ends its document here, so the final state is
            # exact for every row that goes on
            x, out, state[layer] = run(layer, x, state[layer], kinds)
            for kind in kinds:
                states[state_name(layer, kind)] = out[kind].transpose(0, 1)
        block_surprisal = block_attention = None
        if head is not None:
            top = x.transpose(0, 1)
            if window:  # the prediction reads the attention's context too
                context, weights, memory = model.attend(top, memory)
                top = torch.cat([top, context], dim=-1)
                block_attention = weights.float().cpu().numpy()
            block_surprisal = next_token_surprisal(head, top, ids, lengths, lane_logp)
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
            states={k: as_block(v, dtype) for k, v in states.items()},
            surprisal=block_surprisal,
            attention=block_attention,
        )
        # carry each lane's state to its next stretch; finished lanes make room
        for j in range(len(lane_doc)):
            lane_pos[j] += int(lengths[j])
        keep = [j for j in range(len(lane_doc)) if lane_pos[j] < len(docs[lane_doc[j]])]
        if len(keep) < len(lane_doc):
            rows = torch.tensor(keep, dtype=torch.long, device=device)
            state = [tuple(part.index_select(0, rows) for part in layer) for layer in state]
            memory = tuple(part.index_select(1, rows) for part in memory)
            lane_doc = [lane_doc[j] for j in keep]
            lane_pos = [lane_pos[j] for j in keep]
            lane_logp = [lane_logp[j] for j in keep]


def as_block(values: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A block's states (lanes, steps, units) as a host array of `dtype`. Stored blocks
    (float16) are laid out lane by unit by step, so that each lane's stretch of a unit is
    contiguous, as a segment's columns are: the writer copies rows, not scattered values."""
    if dtype == torch.float32:
        return values.to(dtype).cpu().numpy()
    lane_major = values.permute(0, 2, 1).to(dtype).contiguous()  # (lanes, units, steps)
    return lane_major.cpu().numpy().transpose(0, 2, 1)


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
    kernel: str = "fused",
    backend: str | None = None,
) -> list[dict[str, np.ndarray]]:
    """Exact states of each document: one dict per doc, name -> float32 (len(doc), units).

    With `surprisal=True` each dict also has "surprisal" (len(doc),), NaN at position 0.
    `kernel` and `backend` choose how the states are computed (see `iter_states`).
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
    for block in iter_states(model, docs, names, chunk=chunk, lanes=lanes, surprisal=surprisal,
                             kernel=kernel, backend=backend):
        lo, hi = block.unit_offset, block.unit_offset + config.hidden
        for j, d in enumerate(block.docs):
            s, n = int(block.starts[j]), int(block.lengths[j])
            for name, values in block.states.items():
                result[d][name][s : s + n, lo:hi] = values[j, :n]
            if block.surprisal is not None:
                result[d]["surprisal"][s : s + n] = block.surprisal[j, :n]
    return result

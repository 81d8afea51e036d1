"""One time step of an LSTM or GRU cell after its matrix products: the pointwise update.

An exact pass over a layer costs, per step, one matrix product (`h_{t-1} @ W_hh^T`, see
`lstmsearch.extract`) and this update: the gate nonlinearities, the new cell state and the new
hidden state. Run as a chain of small torch ops the update costs a third of the matrix product
on a CPU (each op is a pass over memory and a call); here it is one loop per step:

- `numba` (CPU, float32): a compiled loop over lanes x units that reads the gate
  pre-activations once and writes c, h (and the gates when asked) once. Its tanh is Lambert's
  continued fraction for tanh, truncated at depth 12 and clamped at |x| <= 9, where float32
  tanh is 1 to within 1e-7 (`cells_numba`): pure multiply-adds and one division, so the loop
  vectorises; sigmoid(x) = (1 + tanh(x / 2)) / 2. Largest error against float64 tanh: 3e-7.
- `torch`: the same update as torch ops, for every other device and dtype (the GPU path) and
  as the plain reference of the numba loop.

Both follow `nn.LSTMCell` / `nn.GRUCell`:

    LSTM  i, f, g, o = sig(a_i), sig(a_f), tanh(a_g), sig(a_o)   (a: gate pre-activations)
          c = f * c_prev + i * g;  h = o * tanh(c)
    GRU   r = sig(gi_r + gh_r);  z = sig(gi_z + gh_z);  n = tanh(gi_n + r * gh_n)
          h = (1 - z) * n + z * h_prev

The LSTM update keeps the running cell state in `c` (updated in place, exact) and writes the
stored copy to `c_out` clipped to float16's finite range, the stored precision (store.py).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch

from lstmsearch.store import FLOAT16_MAX

BACKENDS = ("numba", "torch")


@cache
def numba_kernels():
    """The compiled (lstm, gru) updates of `lstmsearch.cells_numba`, or None without numba."""
    try:
        from lstmsearch import cells_numba
    except ImportError:  # pragma: no cover - numba is a dependency; a broken install falls back
        return None
    return cells_numba.lstm, cells_numba.gru


def default_backend(device: torch.device, dtype: torch.dtype) -> str:
    """numba for float32 on a CPU (when it imports), torch ops otherwise."""
    if device.type == "cpu" and dtype == torch.float32 and numba_kernels() is not None:
        return "numba"
    return "torch"


NO_GATES = np.zeros((0, 0, 0), dtype=np.float32)


def lstm_update(backend: str, pre: torch.Tensor, c: torch.Tensor, c_out: torch.Tensor,
                h_out: torch.Tensor, gates_out: torch.Tensor | None = None) -> None:
    """One LSTM step from the gate pre-activations `pre` (B, 4H): update the running cell
    state `c` (B, H) in place, write the stored (clipped) c to `c_out`, h to `h_out` and, when
    given, i, f, g, o to `gates_out` (4, B, H)."""
    if backend == "numba":
        lstm, _ = numba_kernels()
        lstm(pre.numpy(), c.numpy(), c_out.numpy(), h_out.numpy(),
             NO_GATES if gates_out is None else gates_out.numpy())
        return
    hidden = c.shape[1]
    i = torch.sigmoid(pre[:, :hidden])
    f = torch.sigmoid(pre[:, hidden : 2 * hidden])
    g = torch.tanh(pre[:, 2 * hidden : 3 * hidden])
    o = torch.sigmoid(pre[:, 3 * hidden :])
    c.mul_(f).addcmul_(i, g)
    torch.clamp(c, -FLOAT16_MAX, FLOAT16_MAX, out=c_out)
    torch.mul(o, torch.tanh(c), out=h_out)
    if gates_out is not None:
        for k, gate in enumerate((i, f, g, o)):
            gates_out[k].copy_(gate)


def gru_update(backend: str, gi: torch.Tensor, gh: torch.Tensor, h_prev: torch.Tensor,
               h_out: torch.Tensor, gates_out: torch.Tensor | None = None) -> None:
    """One GRU step from the input and hidden products `gi`, `gh` (B, 3H), biases included:
    write h to `h_out` and, when given, r, z, n to `gates_out` (3, B, H)."""
    if backend == "numba":
        _, gru = numba_kernels()
        gru(gi.numpy(), gh.numpy(), h_prev.numpy(), h_out.numpy(),
            NO_GATES if gates_out is None else gates_out.numpy())
        return
    hidden = h_prev.shape[1]
    r = torch.sigmoid(gi[:, :hidden] + gh[:, :hidden])
    z = torch.sigmoid(gi[:, hidden : 2 * hidden] + gh[:, hidden : 2 * hidden])
    n = torch.tanh(gi[:, 2 * hidden :] + r * gh[:, 2 * hidden :])
    torch.add(n, torch.mul(h_prev - n, z), out=h_out)  # (1 - z) n + z h_prev
    if gates_out is not None:
        for k, gate in enumerate((r, z, n)):
            gates_out[k].copy_(gate)

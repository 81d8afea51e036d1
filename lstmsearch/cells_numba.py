"""The numba loops of `lstmsearch.cells`: one fused, vectorised LSTM or GRU update per step.

Imported on first use (numba takes a moment to import); compiled once and cached on disk.
`fastmath` lets the loops vectorise and `error_model="numpy"` drops Python's check for a
division by zero; the constants are float32 so that all arithmetic stays float32.
"""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np

from lstmsearch.store import FLOAT16_MAX

TANH_DEPTH = 12
"""Depth of the continued fraction tanh x = x / (1 + x^2 / (3 + x^2 / (5 + ...)))."""
TANH_LIMIT = 9.0
"""|x| beyond which tanh(x) is taken as tanh(+-9): 1 to within 3e-8."""


def lambert_tanh(depth: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Coefficients (in x^2, lowest first) of P and Q with tanh x ~ x P(x^2) / Q(x^2): the
    continued fraction of tanh truncated at `depth`, expanded exactly, scaled so Q(0) = 1."""
    num, den = [Fraction(2 * depth + 1)], [Fraction(1)]  # the tail, as num / den
    for k in range(depth - 1, -1, -1):  # tail_k = (2k + 1) + x^2 / tail_{k+1}
        shifted = [Fraction(0), *den]
        width = max(len(num), len(shifted))
        num, den = [
            (2 * k + 1) * (num[i] if i < len(num) else 0) + (shifted[i] if i < len(shifted) else 0)
            for i in range(width)
        ], num
    scale = num[0]  # tanh = x / tail_0 = x den / num
    return tuple(float(c / scale) for c in den), tuple(float(c / scale) for c in num)


_P, _Q = lambert_tanh(TANH_DEPTH)
P0, P1, P2, P3, P4, P5, P6, P7 = (np.float32(c) for c in (*_P, *[0.0] * (8 - len(_P))))
Q0, Q1, Q2, Q3, Q4, Q5, Q6, Q7 = (np.float32(c) for c in (*_Q, *[0.0] * (8 - len(_Q))))
LIMIT = np.float32(TANH_LIMIT)
ONE = np.float32(1)
HALF = np.float32(0.5)
BIG = np.float32(FLOAT16_MAX)

jit = numba.njit(fastmath=True, error_model="numpy", nogil=True, cache=True)
inline = numba.njit(fastmath=True, error_model="numpy", inline="always", cache=True)


@inline
def tanh32(x):
    """tanh by Lambert's continued fraction (see lstmsearch.cells), float32."""
    x = LIMIT if x > LIMIT else (-LIMIT if x < -LIMIT else x)
    t = x * x
    num = ((((((P7 * t + P6) * t + P5) * t + P4) * t + P3) * t + P2) * t + P1) * t + P0
    den = ((((((Q7 * t + Q6) * t + Q5) * t + Q4) * t + Q3) * t + Q2) * t + Q1) * t + Q0
    y = x * num / den
    return ONE if y > ONE else (-ONE if y < -ONE else y)


@inline
def sigmoid32(x):
    return HALF + HALF * tanh32(HALF * x)


# Each row is its own 1-D loop (a loop over 2-D indexes with the gates' stores inside did not
# vectorise), and the gates, when kept, are a second loop over the row.


@jit
def lstm(pre, c, c_out, h_out, gates_out):
    """See `lstmsearch.cells.lstm_update`; `gates_out` of shape (0, 0, 0) keeps no gates."""
    batch, hidden = c.shape
    for b in range(batch):
        p, c_row, c_stored, h_row = pre[b], c[b], c_out[b], h_out[b]
        for u in range(hidden):
            i = sigmoid32(p[u])
            f = sigmoid32(p[hidden + u])
            g = tanh32(p[2 * hidden + u])
            o = sigmoid32(p[3 * hidden + u])
            cell = f * c_row[u] + i * g
            c_row[u] = cell
            c_stored[u] = BIG if cell > BIG else (-BIG if cell < -BIG else cell)
            h_row[u] = o * tanh32(cell)
        if gates_out.shape[0] > 0:
            i_row, f_row, g_row, o_row = gates_out[0, b], gates_out[1, b], gates_out[2, b], gates_out[3, b]
            for u in range(hidden):
                i_row[u] = sigmoid32(p[u])
                f_row[u] = sigmoid32(p[hidden + u])
                g_row[u] = tanh32(p[2 * hidden + u])
                o_row[u] = sigmoid32(p[3 * hidden + u])


@jit
def gru(gi, gh, h_prev, h_out, gates_out):
    """See `lstmsearch.cells.gru_update`; `gates_out` of shape (0, 0, 0) keeps no gates."""
    batch, hidden = h_prev.shape
    for b in range(batch):
        x, y, h_row, out = gi[b], gh[b], h_prev[b], h_out[b]
        for u in range(hidden):
            r = sigmoid32(x[u] + y[u])
            z = sigmoid32(x[hidden + u] + y[hidden + u])
            n = tanh32(x[2 * hidden + u] + r * y[2 * hidden + u])
            out[u] = (ONE - z) * n + z * h_row[u]
        if gates_out.shape[0] > 0:
            r_row, z_row, n_row = gates_out[0, b], gates_out[1, b], gates_out[2, b]
            for u in range(hidden):
                r = sigmoid32(x[u] + y[u])
                r_row[u] = r
                z_row[u] = sigmoid32(x[hidden + u] + y[hidden + u])
                n_row[u] = tanh32(x[2 * hidden + u] + r * y[2 * hidden + u])

"""Extraction throughput: every layer's h and c against the bare forward pass, in one run.

    python benchmarks/extract.py [--hidden 512] [--layers 2] [--tokens 262144] [--lanes 64]

The baseline is one `nn.LSTM(num_layers=L)` (or `nn.GRU`) holding the same weights, run over
the same tokens in the same batch shape, returning only the top layer's outputs: what a plain
forward pass gives, and what a user would otherwise run. Each way of extracting is timed
against it, the runs interleaved (baseline, way 1, way 2, ...) `--repeat` times and the fastest
of each kept, so a busy machine slows all of them alike; the load average is printed beside.

Ways (lstmsearch.extract / lstmsearch.cells):
- fused: the default, one pass per layer: first-layer table, oneDNN-packed step product,
  numba update (gates, c and h in one loop);
- fused, torch update: the same with the pointwise update as torch ops (the GPU path);
- fused, plain products: `addmm` for every product, no table, numba update;
- reference: the layer's `nn.LSTM` for h, then the gates recomputed for c.
Targets (SPEC 4): extraction of h and c >= 0.9x the bare forward.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import lstmsearch.extract as extract_module  # noqa: E402
from lstmsearch.extract import iter_states, state_names  # noqa: E402
from lstmsearch.models import LanguageModel, ModelConfig  # noqa: E402


def fused_copy(model: LanguageModel) -> nn.Module:
    """One multi-layer module with the per-layer modules' weights: the bare forward pass."""
    c = model.config
    cls = nn.LSTM if c.arch == "lstm" else nn.GRU
    fused = cls(c.embed_dim, c.hidden, num_layers=c.layers, batch_first=True)
    with torch.no_grad():
        for i, rnn in enumerate(model.forward_layers):
            for w in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(fused, f"{w}_l{i}").copy_(getattr(rnn, f"{w}_l0"))
    return fused.to(next(model.parameters()).device).eval()


@torch.inference_mode()
def bare_forward(model: LanguageModel, fused: nn.Module, docs: list[np.ndarray], lanes: int,
                 chunk: int) -> float:
    """Seconds for embedding + fused recurrent stack over the same tokens, state carried."""
    device = next(model.parameters()).device
    ids = torch.from_numpy(np.stack(docs)).to(device)
    start = time.perf_counter()
    for b in range(0, len(docs), lanes):
        state = None
        for t in range(0, ids.shape[1], chunk):
            x = model.embed(ids[b : b + lanes, t : t + chunk])
            out, state = fused(x, state)
    sync(device)
    return time.perf_counter() - start


def extraction(model: LanguageModel, docs: list[np.ndarray], names: list[str], lanes: int,
               chunk: int, **options) -> float:
    """Seconds to stream every asked state of every token to host memory, as the stored
    float16 (what a build asks for)."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    n = 0
    for block in iter_states(model, docs, names, chunk=chunk, lanes=lanes, stored=True,
                             **options):
        n += int(block.lengths.sum())
    sync(device)
    assert n == sum(len(d) for d in docs)
    return time.perf_counter() - start


def plain_products(run):
    """Run `run()` with the fused pass using `addmm` for every product (no packing, no table)."""
    pack, table = extract_module.pack_for_steps, extract_module.TABLE_BYTES
    extract_module.pack_for_steps = lambda w, lanes: None
    extract_module.TABLE_BYTES = 0
    try:
        return run()
    finally:
        extract_module.pack_for_steps, extract_module.TABLE_BYTES = pack, table


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="lstm", choices=["lstm", "gru"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--vocab", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=1 << 18)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ModelConfig(arch=args.arch, vocab_size=args.vocab, embed_dim=args.embed,
                         hidden=args.hidden, layers=args.layers)
    model = LanguageModel(config).to(args.device).eval()
    fused = fused_copy(model)
    doc_len = max(args.chunk, args.tokens // args.lanes)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, args.vocab, size=doc_len) for _ in range(args.lanes)]
    tokens = doc_len * args.lanes
    names = state_names(config)  # all layers, h (and c)
    h_only = [n for n in names if n.endswith(".h")]
    run = {
        f"bare forward (fused nn.{args.arch.upper()})":
            lambda: bare_forward(model, fused, docs, args.lanes, args.chunk),
        "fused: all layers, h only": lambda: extraction(model, docs, h_only, args.lanes, args.chunk),
        "fused: all layers, all states": lambda: extraction(model, docs, names, args.lanes, args.chunk),
        "fused, torch update": lambda: extraction(model, docs, names, args.lanes, args.chunk,
                                                  backend="torch"),
        "fused, plain products": lambda: plain_products(
            lambda: extraction(model, docs, names, args.lanes, args.chunk)),
        "reference (nn.LSTM + recompute)": lambda: extraction(
            model, docs, names, args.lanes, args.chunk, kernel="reference"),
    }
    small = docs[: max(1, args.lanes // 4)]
    bare_forward(model, fused, small, args.lanes, args.chunk)  # warm up, compile
    extraction(model, [d[: args.chunk] for d in small], names, args.lanes, args.chunk)
    best = {k: float("inf") for k in run}
    loads = []
    for _ in range(args.repeat):
        for k, f in run.items():
            best[k] = min(best[k], f())
        loads.append(os.getloadavg()[0])
    base = best[next(iter(run))]
    print(f"device={args.device} threads={torch.get_num_threads()} model={args.arch} "
          f"{args.layers}x{args.hidden} tokens={tokens:,} lanes={args.lanes} chunk={args.chunk} "
          f"states={','.join(names)}; load average (1 min) during the runs: "
          f"{min(loads):.2f}-{max(loads):.2f}")
    print(f"{'run':<36}{'tokens/s':>12}{'ratio':>8}")
    for k in run:
        print(f"{k:<36}{tokens / best[k]:>12,.0f}{base / best[k]:>8.2f}")


if __name__ == "__main__":
    main()

"""Extraction throughput: every layer's h and c against the bare forward pass, in one run.

    python benchmarks/extract.py [--hidden 512] [--layers 2] [--tokens 262144] [--lanes 64]

The baseline is one `nn.LSTM(num_layers=L)` holding the same weights, run over the same
tokens in the same batch shape, returning only the top layer's outputs (what a plain forward
pass gives). The ratio is extraction tokens/s over baseline tokens/s (target >= 0.8).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from torch import nn

from lstmsearch.extract import iter_states, state_names
from lstmsearch.models import LanguageModel, ModelConfig


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
def bare_forward(model: LanguageModel, fused: nn.Module, docs: list[np.ndarray], lanes: int, chunk: int) -> float:
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


def extraction(model: LanguageModel, docs: list[np.ndarray], names: list[str], lanes: int, chunk: int) -> float:
    """Seconds to stream every asked state of every token to host memory."""
    device = next(model.parameters()).device
    start = time.perf_counter()
    n = 0
    for block in iter_states(model, docs, names, chunk=chunk, lanes=lanes):
        n += int(block.lengths.sum())
    sync(device)
    assert n == sum(len(d) for d in docs)
    return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="lstm", choices=["lstm", "gru"])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--tokens", type=int, default=1 << 18)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = ModelConfig(arch=args.arch, vocab_size=200, embed_dim=args.embed, hidden=args.hidden, layers=args.layers)
    model = LanguageModel(config).to(args.device).eval()
    fused = fused_copy(model)
    doc_len = max(args.chunk, args.tokens // args.lanes)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 200, size=doc_len) for _ in range(args.lanes)]
    tokens = doc_len * args.lanes
    names = state_names(config)  # all layers, h and c

    bare_forward(model, fused, docs[: args.lanes], args.lanes, args.chunk)  # warm up
    base = min(bare_forward(model, fused, docs, args.lanes, args.chunk) for _ in range(args.repeat))
    ours = min(extraction(model, docs, names, args.lanes, args.chunk) for _ in range(args.repeat))
    h_only = [n for n in names if n.endswith(".h")]
    ours_h = min(extraction(model, docs, h_only, args.lanes, args.chunk) for _ in range(args.repeat))

    print(f"device={args.device} threads={torch.get_num_threads()} model={args.arch} "
          f"{args.layers}x{args.hidden} tokens={tokens} lanes={args.lanes} chunk={args.chunk}")
    print(f"{'run':<34}{'tokens/s':>12}{'ratio':>8}")
    print(f"{'bare forward (fused nn.LSTM)':<34}{tokens / base:>12,.0f}{1.0:>8.2f}")
    print(f"{'extract all layers, h only':<34}{tokens / ours_h:>12,.0f}{base / ours_h:>8.2f}")
    print(f"{'extract all layers, h and c':<34}{tokens / ours:>12,.0f}{base / ours:>8.2f}")


if __name__ == "__main__":
    main()

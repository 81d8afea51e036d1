"""Extraction of an attention model: states, surprisal and attention against its forward pass.

    python benchmarks/attention.py [--hidden 512] [--layers 2] [--window 32] [--tokens 131072]

The baseline is the model's own forward pass (`LanguageModel.__call__`: the recurrent stack,
the windowed attention and the logits) over the same tokens in the same lanes: what a user
would otherwise run to get the predictions. Timed against it, interleaved `--repeat` times
(the fastest of each kept): the indexer's pass (`iter_states` with the surprisal, which
computes the attention too: h and c of every layer, float16 as stored), and the same pass of
the model without attention (same recurrent weights), to show what the attention adds.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lstmsearch.extract import iter_states, state_names  # noqa: E402
from lstmsearch.models import LanguageModel, ModelConfig  # noqa: E402


def forward(model: LanguageModel, docs: list[np.ndarray], lanes: int, chunk: int) -> None:
    """The model's forward pass over the documents, `lanes` at a time, window by window."""
    with torch.inference_mode():
        for a in range(0, len(docs), lanes):
            ids = torch.as_tensor(np.stack(docs[a : a + lanes]))
            state = None
            for t in range(0, ids.shape[1], chunk):
                _, state = model(ids[:, t : t + chunk], state)


def extraction(model: LanguageModel, docs: list[np.ndarray], lanes: int, chunk: int) -> None:
    """The indexer's pass: h and c of every layer (float16), the surprisal and attention."""
    for block in iter_states(model, docs, state_names(model.config), chunk=chunk, lanes=lanes,
                             surprisal=True, stored=True):
        assert block.surprisal is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=200)
    parser.add_argument("--tokens", type=int, default=1 << 17)
    parser.add_argument("--doc-len", type=int, default=2048)
    parser.add_argument("--lanes", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = ModelConfig("lstm", args.vocab, embed_dim=64, hidden=args.hidden,
                         layers=args.layers, attention=args.window)
    model = LanguageModel(config).eval()
    plain = LanguageModel(ModelConfig("lstm", args.vocab, embed_dim=64, hidden=args.hidden,
                                      layers=args.layers)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items()
                           if not k.startswith(("query", "key", "head"))}, strict=False)
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, args.vocab, args.doc_len) for _ in range(args.tokens // args.doc_len)]
    n = sum(len(d) for d in docs)
    ways = {
        "forward (baseline)": lambda: forward(model, docs, args.lanes, args.chunk),
        "index pass: states + surprisal + attention": lambda: extraction(model, docs, args.lanes,
                                                                         args.chunk),
        "index pass of the model without attention": lambda: extraction(plain, docs, args.lanes,
                                                                        args.chunk),
    }
    best = {k: float("inf") for k in ways}
    load = [os.getloadavg()[0]]
    for _ in range(args.repeat):
        for name, run in ways.items():
            t0 = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - t0)
    load.append(os.getloadavg()[0])
    base = best["forward (baseline)"]
    print(f"{n:,} tokens, LSTM {args.layers}x{args.hidden}, attention window {args.window}, "
          f"{torch.get_num_threads()} threads; load average {load[0]:.2f} -> {load[1]:.2f}")
    for name, seconds in best.items():
        print(f"  {name:45s} {seconds:7.2f} s  {n / seconds:10,.0f} tokens/s  "
              f"{base / seconds:5.2f}x the forward")


if __name__ == "__main__":
    main()

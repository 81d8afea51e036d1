"""Benchmark of `lstmsearch analyze ablate` over a demo corpus (target: <= 2 x a forward pass).

The demo index (`lstmsearch demo`'s, built on first use into the demo cache) is read once;
then, on the same documents and torch threads, each repeated and the quietest run reported:

* the forward pass a user would otherwise run: the model (`LanguageModel.forward`: the
  layers' fused `nn.LSTM` and the head) over every document, 64 side by side, and the
  surprisal from its logits;
* the project's own surprisal pass (`compute_surprisal`: the exact extraction with the head);
* the ablation as `lstmsearch analyze ablate` runs it (`index_ablation`: the clamped run,
  the stored clean surprisal, the report per track value), for c and h of the first layer
  and, when there is one, of the top layer; and with the clean run computed beside the
  clamped one (`clean_from="computed"`, for an index that stores no surprisal).

Every row prints the load average when it was measured. Usage::

    python benchmarks/ablation.py                        # the parens demo, one torch thread
    python benchmarks/ablation.py --demo python-stdlib --threads 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from probe import load, quietest  # noqa: E402

from lstmsearch.analysis.ablation import LANES, index_ablation, index_model  # noqa: E402
from lstmsearch.analysis.surprisal import compute_surprisal  # noqa: E402
from lstmsearch.index import open_index  # noqa: E402
from lstmsearch.serve import demo_index  # noqa: E402


@torch.inference_mode()
def forward_pass(model, docs: list[np.ndarray]) -> None:
    """The model over every document, LANES side by side (longest first), and the surprisal
    of each next token from its logits."""
    order = sorted(range(len(docs)), key=lambda d: -len(docs[d]))
    for a in range(0, len(order), LANES):
        batch = [docs[d] for d in order[a : a + LANES]]
        ids = np.zeros((len(batch), len(batch[0])), dtype=np.int64)
        for j, d in enumerate(batch):
            ids[j, : len(d)] = d
        x = torch.from_numpy(ids)
        logits, _ = model(x)
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        logp.gather(2, x[:, 1:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", default="parens")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads of the forward passes (default 1; the "
                        "ablation runs on one, as the command does)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="first N documents only")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = demo_index(args.demo, limit=args.limit)
    index = open_index(path)
    model = index_model(index)
    ids = np.asarray(index.tokens(0, index.n_tokens).token_id, np.int64)
    starts = index.doc_starts
    docs = [ids[a:b] for a, b in zip(starts[:-1], starts[1:])]
    config = model.config
    print(f"{args.demo}: {index.n_tokens:,} tokens in {index.n_docs:,} documents; "
          f"{config.arch} {config.layers} x {config.hidden}; torch threads {args.threads}")
    forward, _ = quietest("forward pass (model + log-softmax)",
                          lambda: forward_pass(model, docs), args.repeat)
    quietest("the project's surprisal pass (compute_surprisal)",
             lambda: compute_surprisal(model, docs), args.repeat)
    layers = sorted({0, config.layers - 1})
    kinds = ("c", "h") if config.arch == "lstm" else ("h",)
    worst = {"stored": 0.0, "computed": 0.0}
    for clean_from in ("stored", "computed"):
        for layer in layers:
            for kind in kinds:
                t, _ = quietest(
                    f"ablate layers.{layer}.{kind} unit 0, clean {clean_from}",
                    lambda layer=layer, kind=kind, c=clean_from: index_ablation(
                        index, layer, kind, 0, model=model, clean_from=c), args.repeat)
                worst[clean_from] = max(worst[clean_from], t / forward)
    index.close()
    print(f"\nablation / forward pass: at most {worst['stored']:.2f} x with the stored clean "
          f"surprisal (target <= 2 x), {worst['computed']:.2f} x computing it ({load()})")


if __name__ == "__main__":
    main()

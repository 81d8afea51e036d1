"""Indexing throughput against the bare forward pass of the same model, and bytes on disk.

    python benchmarks/index.py                          # 2x512 LSTM on 10^6 tokens + shipped
    python benchmarks/index.py --cases synthetic --tokens 200000 --repeat 2
    python benchmarks/index.py --cases parens stdlib english

For each case (the same tokens, device and lane layout for every run):

- bare forward: the model's embedding and one multi-layer `nn.LSTM` holding its weights
  (oneDNN's fused kernel on a CPU) over all the tokens as one stream in `lanes` rows, `chunk`
  steps at a time with the state carried, top layer's output only: the least these tokens
  can cost the model (no padding, no documents), what a user would otherwise run;
- extraction: `iter_states` of every layer's h and c (no storing);
- index: `build_index` end to end (tokenize, extract, write float16 columns, statistics,
  checksums, compressed FAISS with its codebooks, the surprisal track, commit).

The three are run in turn `--repeat` times and the fastest of each kept, so a busy machine
slows all of them alike; the 1-minute load average is printed beside every figure. Disk use is
given per file kind in bytes per token per unit per stored kind (targets, SPEC 4: extraction
>= 0.9x and index >= 0.8x the bare forward; <= 2.25 bytes per token per unit in all). The
cases:

- synthetic: a 2-layer x 512 LSTM (seeded random weights: throughput does not depend on
  training) over `--tokens` characters of Python standard-library source in documents of
  `--doc-chars` characters;
- parens, stdlib, english: the shipped models over their bundled corpora (`--limit`
  documents).

`--markdown` also prints the rows of the README's performance table. Results also go to
`benchmarks/out/index.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from extract import fused_copy  # noqa: E402  (benchmarks/extract.py: the bare forward's module)

from indexer.build import build_index, choose_device, default_lanes  # noqa: E402
from lstmsearch.corpus import Corpus, Document, load_corpus  # noqa: E402
from lstmsearch.extract import iter_states, state_names  # noqa: E402
from lstmsearch.index import open_index  # noqa: E402
from lstmsearch.models import (  # noqa: E402
    LanguageModel,
    ModelConfig,
    load_model,
    save_checkpoint,
)
from lstmsearch.tokenize import train_tokenizer  # noqa: E402

SHIPPED = {
    "parens": ("parens", ROOT / "data/models/parens-lstm.pt"),
    "stdlib": ("python-stdlib", ROOT / "data/models/stdlib-char-lstm.pt"),
    "english": ("english", ROOT / "data/models/english-word-lstm.pt"),
}


def stdlib_corpus(n_tokens: int, doc_chars: int) -> Corpus:
    """`n_tokens` characters of Python standard-library source in documents of `doc_chars`.

    Equal-length documents keep the comparison about the cost of indexing: documents run side
    by side in lanes, and a few very long files would leave lanes idle (exact states need each
    document from its start) while the bare forward pass, which ignores documents, would not.
    """
    text = "".join(d.text for d in load_corpus("python-stdlib").documents)
    while len(text) < n_tokens:
        text += text
    return Corpus("python-stdlib", [
        Document(f"stdlib-{i:06d}", text[start : min(start + doc_chars, n_tokens)])
        for i, start in enumerate(range(0, n_tokens, doc_chars))
    ])


def synthetic_case(work: Path, tokens: int, doc_chars: int, hidden: int, layers: int,
                   embed: int) -> tuple[Corpus, Path, str]:
    """The 2 x 512 char LSTM with seeded random weights, saved as a checkpoint."""
    corpus = stdlib_corpus(tokens, doc_chars)
    tokenizer = train_tokenizer("char", (d.text for d in corpus.documents[:200]))
    torch.manual_seed(0)
    model = LanguageModel(ModelConfig("lstm", tokenizer.vocab_size, embed_dim=embed,
                                      hidden=hidden, layers=layers)).eval()
    path = work / "model.pt"
    save_checkpoint(path, model, tokenizer)
    return corpus, path, f"lstm {layers}x{hidden} (random weights), char"


@torch.inference_mode()
def bare_forward(model: LanguageModel, docs: list[np.ndarray], lanes: int, chunk: int) -> float:
    """Seconds for embedding + fused recurrent stack over all the tokens, as one stream cut
    into `lanes` rows, `chunk` steps at a time with the state carried: no padding and no
    document boundaries, the least work these tokens can cost this model."""
    fused = fused_copy(model)
    device = next(model.parameters()).device
    stream = np.concatenate(docs)
    steps = -(-len(stream) // lanes)
    grid = np.zeros(lanes * steps, dtype=np.int64)
    grid[: len(stream)] = stream
    grid = torch.from_numpy(grid.reshape(lanes, steps)).to(device)
    t0 = time.perf_counter()
    state = None
    for start in range(0, steps, chunk):
        _, state = fused(model.embed(grid[:, start : start + chunk]), state)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def extraction(model: LanguageModel, docs: list[np.ndarray], lanes: int, chunk: int) -> float:
    """Seconds to stream every layer's h and c of every token to host memory, as the stored
    float16 (what a build asks for)."""
    names = state_names(model.config)
    t0 = time.perf_counter()
    n = sum(int(b.lengths.sum()) for b in iter_states(model, docs, names, chunk=chunk,
                                                        lanes=lanes, stored=True))
    if next(model.parameters()).device.type == "cuda":
        torch.cuda.synchronize()
    assert n == sum(len(d) for d in docs) * model.config.directions
    return time.perf_counter() - t0


def disk_report(out: Path) -> dict:
    """Bytes per token per unit per stored kind of each file kind and of everything."""
    with open_index(out) as index:
        info = index.info()
    units = sum(s.dim for s in info.states)
    per = {k: v / (units * info.n_tokens) for k, v in info.sizes.items()}
    return {"bytes": info.sizes, "bytes_per_token_unit_kind": per,
            "faiss": [dict(f) for f in info.faiss]}


def run_case(name: str, corpus: Corpus, model_path: Path, label: str, args,
             device: torch.device, work: Path) -> dict:
    """The three runs of one case, `args.repeat` times; the fastest of each."""
    loaded = load_model(model_path, device=device)
    model = loaded.model.eval()
    docs = [np.asarray(e.ids, dtype=np.int64)
            for e in loaded.tokenizer.encode_batch([d.text for d in corpus.documents])]
    docs = [d for d in docs if len(d)]
    n = sum(len(d) for d in docs)
    lanes = args.lanes or default_lanes(device, loaded.config.hidden)
    bare_forward(model, docs[:lanes], lanes, args.chunk)  # warm up: threads, compilation
    extraction(model, [d[: args.chunk] for d in docs[:lanes]], lanes, args.chunk)
    best = {"forward": float("inf"), "extract": float("inf"), "index": float("inf")}
    loads = {k: [] for k in best}
    result = None
    for _ in range(args.repeat):
        for key in best:
            out = work / f"{name}-index"
            shutil.rmtree(out, ignore_errors=True)
            if key == "forward":
                seconds = bare_forward(model, docs, lanes, args.chunk)
            elif key == "extract":
                seconds = extraction(model, docs, lanes, args.chunk)
            else:
                result = build_index(corpus, model_path, out, device=device, lanes=lanes,
                                     chunk=args.chunk, progress=False)
                seconds = result.seconds
            loads[key].append(round(os.getloadavg()[0], 2))
            if seconds < best[key]:
                best[key] = seconds
                if key == "index":
                    disk = disk_report(out)
    shutil.rmtree(work / f"{name}-index", ignore_errors=True)
    rate = {k: n / v for k, v in best.items()}
    return {
        "case": name, "model": label, "tokens": n, "documents": len(docs), "lanes": lanes,
        "states": list(result.states) if result else [],
        "tokens_per_s": rate, "seconds": best,
        "ratio": {"extract": rate["extract"] / rate["forward"],
                  "index": rate["index"] / rate["forward"]},
        "load_average": loads, "disk": disk,
    }


def print_case(r: dict) -> None:
    load = r["load_average"]
    print(f"\n{r['case']}: {r['model']}, {r['tokens']:,} tokens in {r['documents']:,} "
          f"documents, {r['lanes']} lanes, states {', '.join(r['states'])}")
    for key, what in (("forward", "bare forward"), ("extract", "extraction, h and c"),
                      ("index", "index, end to end")):
        ratio = 1.0 if key == "forward" else r["ratio"][key]
        print(f"  {what:<22}{r['tokens_per_s'][key]:>12,.0f} tokens/s  {ratio:>5.2f}x   "
              f"[load {', '.join(f'{x:.2f}' for x in load[key])}]")
    per = r["disk"]["bytes_per_token_unit_kind"]
    print("  disk, bytes/token/unit/kind: "
          + ", ".join(f"{k} {v:.3f}" for k, v in per.items() if k != "total")
          + f"; total {per['total']:.3f}")
    for f in r["disk"]["faiss"]:
        print(f"  faiss {f['name']}: {f['description']}, recall@10 {f['recall_at_10']:.3f}")


def markdown_rows(results: list[dict]) -> list[str]:
    """Rows of the README's performance table."""
    rows = []
    for r in results:
        load = max(max(v) for v in r["load_average"].values())
        rows.append(
            f"| {r['case']}: {r['model']}, {r['tokens']:,} tokens | "
            f"bare forward {r['tokens_per_s']['forward']:,.0f} tok/s; extraction h and c "
            f"{r['ratio']['extract']:.2f}x; index end to end {r['ratio']['index']:.2f}x "
            f"({r['tokens_per_s']['index']:,.0f} tok/s); disk "
            f"{r['disk']['bytes_per_token_unit_kind']['total']:.2f} bytes/token/unit "
            f"(states {r['disk']['bytes_per_token_unit_kind']['states']:.2f}, FAISS "
            f"{r['disk']['bytes_per_token_unit_kind']['faiss']:.3f}) [load <= {load:.2f}] |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["synthetic", *SHIPPED],
                        choices=["synthetic", *SHIPPED])
    parser.add_argument("--tokens", type=int, default=1_000_000, help="synthetic case")
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--embed", type=int, default=64)
    parser.add_argument("--doc-chars", type=int, default=2048)
    parser.add_argument("--limit", type=int, default=None,
                        help="documents of each shipped corpus (default: all)")
    parser.add_argument("--lanes", type=int, default=None,
                        help="default: what a build picks for the model and device")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--markdown", action="store_true")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "out" / "index.json"))
    args = parser.parse_args()

    device = choose_device(args.device)
    work = Path(tempfile.mkdtemp(prefix="lstmsearch-bench-"))
    results = []
    try:
        print(f"device {device}, {torch.get_num_threads()} torch threads, "
              f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs")
        for case in args.cases:
            if case == "synthetic":
                corpus, model_path, label = synthetic_case(work, args.tokens, args.doc_chars,
                                                           args.hidden, args.layers, args.embed)
            else:
                source, model_path = SHIPPED[case]
                corpus = load_corpus(source, limit=args.limit)
                label = f"shipped {model_path.name}"
            results.append(run_case(case, corpus, model_path, label, args, device, work))
            print_case(results[-1])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.markdown:
        print()
        print("\n".join(markdown_rows(results)))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"device": str(device), "results": results},
                                          indent=2))


if __name__ == "__main__":
    main()

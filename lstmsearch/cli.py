"""The `lstmsearch` command: sub-commands that read like a sentence, each a thin layer over
the Python API (`lstmsearch train parens --out parens.pt`, `lstmsearch match INDEX ...`).

Every sub-command is `add_<name>(subparsers)` registering `run_<name>(args)`; errors a user
can fix (bad values, missing files) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from lstmsearch import limits as L
from lstmsearch.export import hits_json, match_json, nearest_json


class UsageError(Exception):
    """A problem with what the user asked for, reported without a traceback."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (`lstmsearch match: error: argument
    --limit: must be ...`) with a pointer to --help, instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(message: object) -> str:
    """A message on one line: line breaks and runs of spaces become single spaces."""
    return " ".join(str(message).split())


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train an LSTM/GRU language model on a corpus",
        description="Train a language model. CORPUS is a bundled name (parens, python-stdlib, "
        "english) or a path (text file, folder, .jsonl, .parquet).",
    )
    p.add_argument("corpus")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    p.add_argument("--arch", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--layers", type=L.int_arg(1, 64), default=2)
    p.add_argument("--hidden", type=L.int_arg(1, 65_536), default=256)
    p.add_argument("--embed", type=L.int_arg(1, 65_536), default=64, help="embedding size")
    p.add_argument("--dropout", type=L.float_arg(0.0, 1.0, below_maximum=True), default=0.0)
    p.add_argument("--bidirectional", action="store_true", help="add a backward stack (ELMo style)")
    p.add_argument("--attention", type=L.int_arg(1, 1024), default=None, metavar="W",
                   help="the prediction also attends over the top layer's outputs at the W "
                   "positions before it (dot-product attention; W from 1 to --seq-len)")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="char")
    p.add_argument("--vocab-size", type=L.int_arg(2, 10_000_000), default=None)
    p.add_argument("--epochs", type=L.int_arg(1, 1_000_000), default=1)
    p.add_argument("--steps", type=L.COUNT, default=None,
                   help="stop after this many optimizer steps")
    p.add_argument("--seq-len", type=L.int_arg(1, 1_000_000), default=128,
                   help="tokens per backpropagation window")
    p.add_argument("--batch", type=L.int_arg(1, 100_000), default=32)
    p.add_argument("--lr", type=L.float_arg(0.0, 100.0), default=None,
                   help="learning rate (default 0.003); with --resume, the rate to go on at "
                   "(default: the saved run's)")
    p.add_argument("--limit", type=L.COUNT, default=None, help="use only the first N documents")
    p.add_argument("--seed", type=L.int_arg(0, 2**63 - 1), default=0)
    p.add_argument("--checkpoint-every", type=L.COUNT, default=500)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--slim", action="store_true",
                   help="the finished checkpoint keeps no optimizer state (about a third of "
                   "the size, for shipping; a --resume from it restarts the optimizer)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from lstmsearch.train import TrainConfig, train

    config = TrainConfig(
        corpus=args.corpus, arch=args.arch, layers=args.layers, hidden=args.hidden,
        embed_dim=args.embed, dropout=args.dropout, bidirectional=args.bidirectional,
        attention=args.attention or 0,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, epochs=args.epochs,
        steps=args.steps, seq_len=args.seq_len, batch=args.batch,
        lr=TrainConfig.lr if args.lr is None else args.lr,
        limit=args.limit, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    result = train(config, args.out, resume=args.resume, slim=args.slim,
                   resume_lr=args.lr if args.resume else None)
    if args.json:
        print(json.dumps({
            "checkpoint": str(result.path), "steps": result.steps, "epochs": result.epochs_done,
            "val_perplexity": result.val_perplexity, "history": result.history,
            "seconds": round(result.seconds, 2),
        }, indent=2))
    else:
        print(f"wrote {result.path}: {result.steps} steps, validation perplexity "
              f"{result.val_perplexity:.3f} ({result.seconds:.0f} s)")


def add_index(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index", help="index a corpus: store every token's hidden states",
        description="Run MODEL over CORPUS and write an index directory (DuckDB tables, "
        "float16 state columns, FAISS) of immutable segments: an interrupted build is "
        "finished with --resume; --append adds documents as new segments; `lstmsearch "
        "compact` merges small segments.",
    )
    p.add_argument("corpus", nargs="?", help="bundled name or path (not needed with --resume)")
    p.add_argument("--model", help="checkpoint (.pt); with --resume/--append the index's own; "
                   "or your own model: module.path:factory, file.py:factory or a TorchScript "
                   "file (see docs/own-data.md)")
    p.add_argument("--tokenizer", help="for your own model: a tokenizer JSON file or "
                   "module:name (required for TorchScript)")
    p.add_argument("--out", required=True, help="index directory")
    p.add_argument("--resume", action="store_true", help="finish an interrupted build")
    p.add_argument("--append", action="store_true", help="add CORPUS to an existing index")
    p.add_argument("--layers", type=L.INDEX, nargs="+", help="layers to store (default: all)")
    p.add_argument("--kinds", nargs="+", help="state kinds to store (default: h c; gates: i f g o)")
    p.add_argument("--limit", type=L.COUNT, default=None, help="index only the first N documents")
    p.add_argument("--segment-tokens", type=L.COUNT, default=None,
                   help="least tokens per segment (default 65536, or about a sixteenth of a "
                   "larger build up to 1048576; whole documents)")
    p.add_argument("--segment-docs", type=L.COUNT, default=None,
                   help="least documents per segment (default: 4 per lane of the model)")
    p.add_argument("--device", type=torch_device, default=None,
                   help="cpu, cuda, cuda:N or mps (default: cuda if available)")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS indexes")
    p.add_argument("--exact-nearest", action="store_true",
                   help="exact FAISS indexes (a second copy of the states on disk) instead of "
                   "compressed codes re-ranked on the stored states")
    p.add_argument("--no-space-check", action="store_true",
                   help="start even when the output file system has less free space than the "
                   "estimated index size")
    p.add_argument("--no-surprisal", action="store_true",
                   help="do not store each token's surprisal (the track 'surprisal')")
    p.add_argument("--tracks", choices=["auto", "code", "text", "parens", "none"],
                   default=None,
                   help="annotation tracks computed from the text: code (in_string, "
                   "in_comment, bracket_depth, indent, column), text (word_position, "
                   "sentence_position, in_quotes, line_position), parens (depth); auto "
                   "(default) detects the corpus's kind; an append keeps the index's")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray Data actors, on this machine "
                   "or a cluster (pip install 'lstmsearch[ray]')")
    p.add_argument("--address", help="with --engine ray: the cluster to join (HOST:PORT of "
                   "its head, or auto); default: start Ray on this machine")
    p.add_argument("--workers", type=L.int_arg(1, L.MAX_WORKERS), default=None,
                   help="with --engine ray: actors that "
                   "write segments (default: one per CPU, or per GPU with --gpus-per-worker)")
    p.add_argument("--gpus-per-worker", type=L.float_arg(0.0, L.MAX_GPUS_PER_WORKER), default=0,
                   help="with --engine ray: GPUs "
                   "each actor runs the model on (default 0: CPU)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_index)


def run_index(args: argparse.Namespace) -> None:
    from indexer.build import build_index

    if not args.resume and args.corpus is None:
        raise UsageError("give a CORPUS to index (or --resume to finish an interrupted build)")
    ray_only = [flag for flag, given in (("--address", args.address is not None),
                                         ("--workers", args.workers is not None),
                                         ("--gpus-per-worker", bool(args.gpus_per_worker)))
                if given]
    if args.engine != "ray" and ray_only:
        raise UsageError(f"{ray_only[0]} goes with --engine ray")
    if args.tracks is not None and user_model(args):
        raise UsageError("--tracks goes with an lstmsearch checkpoint (a model of your own "
                         "indexes the tracks its corpus brings)")
    if args.engine == "ray":
        if user_model(args):
            raise UsageError("--engine ray indexes with lstmsearch checkpoints; index your own "
                             "model with --engine local")
        if args.device is not None:
            raise UsageError("--device is for --engine local; with --engine ray the actors "
                             "use a GPU with --gpus-per-worker")
        from indexer.ray_engine import build_with_ray

        result = build_with_ray(
            args.corpus, args.model, args.out, resume=args.resume, append=args.append,
            layers=args.layers, kinds=args.kinds, limit=args.limit,
            segment_tokens=args.segment_tokens, segment_docs=args.segment_docs,
            faiss=not args.no_faiss, exact_nearest=args.exact_nearest,
            space_check=not args.no_space_check,
            surprisal=not args.no_surprisal, tracks=args.tracks or "auto",
            address=args.address, workers=args.workers, gpus_per_worker=args.gpus_per_worker,
        )
    elif user_model(args):
        result = index_user_model(args)
    else:
        result = build_index(
            args.corpus, args.model, args.out, resume=args.resume, append=args.append,
            layers=args.layers, kinds=args.kinds, limit=args.limit,
            segment_tokens=args.segment_tokens, segment_docs=args.segment_docs,
            device=args.device, faiss=not args.no_faiss, exact_nearest=args.exact_nearest,
            space_check=not args.no_space_check, surprisal=not args.no_surprisal,
            tracks=args.tracks or "auto",
        )
    if args.json:
        print(json.dumps({
            "index": str(result.path), "mode": result.mode, "documents": result.n_docs,
            "tokens": result.n_tokens, "new_documents": result.new_docs,
            "new_tokens": result.new_tokens, "states": list(result.states),
            "seconds": round(result.seconds, 3), "tokens_per_second": result.tokens_per_second,
            "skipped": result.skipped, "tracks": result.tracks,
            "untokenized": result.untokenized,
        }, indent=2))
    else:
        print(result.summary())


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "info", help="describe an index: documents, tokens, states, sizes, model",
        description="Documents, tokens, layers/kinds/dims, sizes on disk, model and build time.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run_info)


def run_info(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index

    with open_index(args.index, allow_partial=True) as index:
        info = index.info()
    print(json.dumps(info.to_dict(), indent=2) if args.json else info.summary())


def add_compact(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compact", help="merge small segments of an index into larger ones",
        description="Merge adjacent segments into at most N of about equal size (default: "
        "about one per million tokens). Same states, same answers; the old files are removed "
        "after the new manifest is committed, and readers holding a snapshot keep working.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--max-segments", type=L.COUNT, default=None,
                   help="at most N segments after")
    p.set_defaults(run=run_compact)


def run_compact(args: argparse.Namespace) -> None:
    from indexer.compact import compact_index

    print(compact_index(args.index, args.max_segments).summary())


def add_upgrade(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "upgrade", help="convert an index of the previous format (version 1) to segments",
        description="Rewrite a complete version 1 index as one segment of the current format "
        "(same documents, tokens, tracks and stored states), then swap it into place.",
    )
    p.add_argument("index", help="index directory")
    p.set_defaults(run=run_upgrade)


def run_upgrade(args: argparse.Namespace) -> None:
    from indexer.upgrade import upgrade_index
    from lstmsearch.index import open_index

    upgrade_index(args.index)
    with open_index(args.index) as index:
        print(f"upgrade: {index.path} now has format version "
              f"{index.meta['format_version']}, {index.n_docs:,} documents, "
              f"{index.n_tokens:,} tokens in {len(index.segments)} segment")


def add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "verify", help="check every file of an index against its recorded checksum",
        description="Read every file the manifest lists and compare its size and sha256 with "
        "the recorded ones; name each damaged file. Exit code 1 when any is damaged.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_verify)


def run_verify(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index
    from lstmsearch.progress import progress_bar

    with open_index(args.index, allow_partial=True, check_files=False) as index:
        total = sum(f.bytes for f in index.files)
        with progress_bar(total, None, "verifying", unit="B") as bar:
            problems = index.verify(bar.update)
        n_files = len(index.files)
    if args.json:
        print(json.dumps({"index": str(args.index), "files": n_files, "bytes": total,
                          "damaged": problems}, indent=2))
    else:
        for problem in problems:
            print(f"damaged: {problem}")
        print(f"verify: {n_files} files, {total:,} bytes, "
              + (f"{len(problems)} damaged" if problems else "all intact"))
    if problems:
        raise SystemExit(1)


def add_annotate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "annotate", help="add an annotation track (one value per token) to an index",
        description="FILE: .npy (one value per token), a CSV with header pos,value, or a "
        "text file with one value per line. Numbers are stored as values, anything else as "
        "labels. A file of the wrong length is refused and the index left unchanged.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("file", help="track file")
    p.add_argument("--track", required=True, help="track name")
    p.add_argument("--replace", action="store_true", help="replace a track of that name")
    p.set_defaults(run=run_annotate)


def run_annotate(args: argparse.Namespace) -> None:
    from indexer.annotate import annotate_index

    n = annotate_index(args.index, args.track, args.file, replace=args.replace)
    print(f"added track {args.track!r} to {args.index}: {n:,} tokens")


def add_analyze(sub: argparse._SubParsersAction) -> None:
    """`analyze {surprisal,gradients,saliency,trajectory,gates,weights,units}`: each
    sub-command registers its own `run` (see `lstmsearch.analysis.commands`)."""
    from lstmsearch.analysis.commands import add_analyze_commands

    add_analyze_commands(sub)


def add_probe(sub: argparse._SubParsersAction) -> None:
    """`lstmsearch probe`: defined with the analyses it belongs to."""
    from lstmsearch.analysis.commands import add_probe_command

    add_probe_command(sub)


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve the web UI for an index (select, match, neurons)",
        description="Start the web UI (an embedded Bokeh server) for INDEX and print its URL. "
        "Binds 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("index", help="index directory")
    add_server_options(p)
    p.add_argument("--compare", metavar="INDEX_B", default=None,
                   help="a second index of the same corpus and tokens (another model) to "
                   "compare with in the Compare tab")
    p.set_defaults(run=run_serve)


def add_server_options(p: argparse.ArgumentParser) -> None:
    """--port, --host, --allow-origin, --open: shared by serve and demo."""
    p.add_argument("--port", type=L.PORT, default=5006,
                   help="TCP port 0..65535 (default 5006; 0: any free)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--allow-origin", action="append", default=None, metavar="HOST[:PORT]",
                   help="also accept pages served through this host name (e.g. a proxy)")
    p.add_argument("--open", action="store_true", help="open the page in a browser")


def run_serve(args: argparse.Namespace) -> None:
    from lstmsearch.serve import serve

    serve(args.index, port=args.port, host=args.host, open_browser=args.open,
          allow_origin=args.allow_origin, compare=args.compare)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="build the bundled demo index once, then serve the web UI",
        description="Index a bundled corpus with its shipped model (first run only, with a "
        "progress bar; cached in $LSTMSEARCH_CACHE or ~/.cache/lstmsearch) and serve it.",
    )
    p.add_argument("name", nargs="?", default="parens",
                   help="parens (default), parens-attention, english or python-stdlib")
    add_server_options(p)
    p.add_argument("--rebuild", action="store_true", help="build the demo index again")
    p.add_argument("--limit", type=L.COUNT, default=None,
                   help="index only the first N documents (default: the demo's own)")
    p.add_argument("--cache", default=None, help="where demo indexes are kept")
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> None:
    from lstmsearch.serve import DEMOS, demo_index, serve

    if args.name not in DEMOS:
        raise UsageError(f"unknown demo {args.name!r}; choose one of {', '.join(DEMOS)}")
    path = demo_index(args.name, cache=args.cache, rebuild=args.rebuild, limit=args.limit)
    print(f"lstmsearch: demo {args.name}: {DEMOS[args.name].about}", flush=True)
    serve(path, port=args.port, host=args.host, open_browser=args.open,
          allow_origin=args.allow_origin)


# --- your own data: user models, LSTMVis projects, precomputed states, export ---------------


def user_model(args: argparse.Namespace) -> bool:
    """Whether `index --model` names a user model (module:factory or TorchScript)."""
    from lstmsearch.adapters import is_adapter_spec

    if is_adapter_spec(args.model):
        return True
    if args.tokenizer is not None:
        raise UsageError("--tokenizer is for your own model (--model module:factory or a "
                         "TorchScript file); an lstmsearch checkpoint holds its tokenizer")
    return False


def index_user_model(args: argparse.Namespace):
    """`index CORPUS --model module:factory`: index with the model adapter."""
    from indexer.states import index_with_model
    from lstmsearch.adapters import load_adapter

    if args.resume or args.append:
        raise UsageError("--resume and --append need an lstmsearch checkpoint; an index of "
                         "your own model is built in one go (build a new one to add documents)")
    adapter = load_adapter(args.model, tokenizer=args.tokenizer, device=args.device)
    return index_with_model(args.corpus, adapter, args.out, layers=args.layers,
                            kinds=args.kinds, limit=args.limit, faiss=not args.no_faiss)


def print_build(result, as_json: bool) -> None:
    """A `BuildResult` as the final summary line, or as JSON."""
    if as_json:
        print(json.dumps({
            "index": str(result.path), "mode": result.mode, "documents": result.n_docs,
            "tokens": result.n_tokens, "states": list(result.states),
            "seconds": round(result.seconds, 3), "skipped": result.skipped,
        }, indent=2))
    else:
        print(result.summary())


def add_import_lstmvis(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-lstmvis", help="import an LSTMVis project (lstm.yml + HDF5) as an index",
        description="Read PROJECT_DIR/lstm.yml with its word ids, .dict word list, states "
        "(type state -> c, output -> h; LSTMVis layer 1 -> layers.0) and meta annotations, "
        "and write a new index at INDEX_DIR. States are copied block by block; the index "
        "appears only when complete. Needs h5py: pip install 'lstmsearch[hdf5]'.",
    )
    p.add_argument("project", help="LSTMVis project folder (holding lstm.yml)")
    p.add_argument("out", help="new index directory")
    p.add_argument("--doc-boundary", metavar="WORD",
                   help="end a document after each occurrence of WORD (e.g. '</s>'); "
                   "default: the word stream is one document")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS indexes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_import_lstmvis)


def run_import_lstmvis(args: argparse.Namespace) -> None:
    from indexer.lstmvis import import_lstmvis

    result = import_lstmvis(args.project, args.out, doc_boundary=args.doc_boundary,
                            faiss=not args.no_faiss)
    print_build(result, args.json)


def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="export an index as an LSTMVis project, .npz arrays or Parquet tables",
        description="Write INDEX to the new directory OUT_DIR: --format lstmvis (lstm.yml, "
        "states.hdf5, train.hdf5, words.dict, meta.hdf5: LSTMVis opens it), npz (states.npz, "
        "tokens.npz, documents.jsonl) or parquet (tables and state columns). Streams a "
        "block of tokens at a time.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("out", help="new output directory")
    p.add_argument("--format", choices=["lstmvis", "npz", "parquet"], default="lstmvis")
    p.add_argument("--states", nargs="+", metavar="NAME", help="states to export (default: all)")
    p.add_argument("--dtype", choices=["float16", "float32"],
                   help="npz value type (default float16: the stored values)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from indexer.export import export_index

    result = export_index(args.index, args.out, format=args.format, states=args.states,
                          dtype=args.dtype)
    if args.json:
        print(json.dumps({"path": str(result.path), "format": result.format,
                          "files": list(result.files), "documents": result.n_docs,
                          "tokens": result.n_tokens, "states": list(result.states),
                          "seconds": round(result.seconds, 3)}, indent=2))
    else:
        print(result.summary())


def add_index_states(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "index-states", help="index states computed elsewhere (.npy per layer and kind)",
        description="Index precomputed states of any recurrent model (or time series). "
        "TOKENS: one token per line with an empty line between documents, or .jsonl "
        '({"token": ..., "doc": ...} per line), or .csv/.tsv with a token column (and doc). '
        "Each --states NAME=FILE.npy is a tokens x units float16/32/64 array, NAME like "
        "layers.0.h. Each --track NAME=FILE is read like `lstmsearch annotate` reads it.",
    )
    p.add_argument("--tokens", required=True, help="tokens file")
    p.add_argument("--states", required=True, nargs="+", action="extend",
                   metavar="NAME=FILE.npy", help="states, e.g. layers.0.h=h0.npy")
    p.add_argument("--track", nargs="+", action="extend", default=[], metavar="NAME=FILE",
                   help="annotation tracks, e.g. label=labels.txt")
    p.add_argument("--out", required=True, help="new index directory")
    p.add_argument("--no-faiss", action="store_true", help="skip the FAISS indexes")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_index_states)


def run_index_states(args: argparse.Namespace) -> None:
    from indexer.states import index_states, parse_assignments

    result = index_states(args.tokens, parse_assignments(args.states, "--states"), args.out,
                          tracks=parse_assignments(args.track, "--track"),
                          faiss=not args.no_faiss)
    print_build(result, args.json)


# --- queries: match, nearest, neurons, sql ---------------------------------------------------

CONTEXT_WIDTH = 24
"""Characters of context shown on each side of a match in the terminal."""
STYLES = {"match": ("\033[1m", "\033[0m"), "context": ("\033[2m", "\033[0m")}


def torch_device(text: str) -> str:
    """An argparse type: a torch device this machine has (cpu, cuda, cuda:N, mps)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has no CUDA device")
        if device.index is not None and device.index >= count:
            raise argparse.ArgumentTypeError(f"{text!r}: this machine has CUDA devices "
                                             f"0..{count - 1}")
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has no MPS device")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise argparse.ArgumentTypeError(f"must be cpu, cuda, cuda:N or mps, got {text!r}")
    return text


def number(text: str, flag: str) -> float:
    """A command-line number, or a one-line error naming the flag and the value."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag} must be a number, got {text!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag} must be a finite number, got {text!r}")
    return value


def visible(text: str) -> str:
    """Text on one terminal line: line breaks and tabs shown as symbols."""
    return text.replace("\r", "").replace("\n", "↵").replace("\t", "→")


def marked(left: str, text: str, right: str, width: int = CONTEXT_WIDTH) -> str:
    """Context and span on one line, aligned on the span's start: the span in bold with dim
    context on a terminal, in [brackets] otherwise."""
    left = visible(left)[-width:].rjust(width) if width else ""
    right = visible(right)[:CONTEXT_WIDTH]
    text = visible(text)
    if sys.stdout.isatty():
        (b, e), (db, de) = STYLES["match"], STYLES["context"]
        return f"{db}{left}{de}{b}{text}{e}{db}{right}{de}"
    return f"{left}[{text}]{right}"


def marked_lines(spans: Sequence[tuple[str, str, str]]) -> list[str]:
    """`marked` (left, text, right) triples, aligned on the span starts."""
    width = min(CONTEXT_WIDTH, max((len(visible(left)) for left, _, _ in spans), default=0))
    return [marked(left, text, right, width) for left, text, right in spans]


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Rows under a header, columns right-aligned except the last (free text)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header[:-1])]
    for row in [list(header), *cells]:
        print("  ".join([c.rjust(w) for c, w in zip(row, widths)] + [row[-1]]))


def add_state_options(p: argparse.ArgumentParser) -> None:
    """--layer and --kind: the stored state a query reads."""
    p.add_argument("--layer", type=L.INDEX, required=True, help="layer number (from 0)")
    p.add_argument("--kind", required=True, help="state kind: c or h (or a stored gate)")


def add_match(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "match", help="select the units on over a span, and find spans where they switch on",
        description="Select the pattern S: units of LAYER/KIND that are >= THRESHOLD over the "
        "span [START, END) (half-open token positions) or over a PHRASE found in the text, "
        "and off on the padding; then rank every span of the index by how many units of S "
        "switch on there (overlap), fewest extra units first.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--start", type=L.INDEX, help="first token of the span")
    p.add_argument("--end", type=L.INDEX, help="one past the last token of the span")
    p.add_argument("--phrase", help="select on this text instead of --start/--end")
    p.add_argument("--doc", type=L.INDEX, default=None, help="look for --phrase in this document")
    p.add_argument("--occurrence", type=L.int_arg(0, L.MAX_RESULTS - 1), default=0,
                   help="which occurrence of --phrase (from 0; default the first)")
    p.add_argument("--threshold", help="a unit is on where its value >= this")
    p.add_argument("--attention", action="store_true",
                   help="instead of units: the spans that attend like the span (an attention "
                   "model's index; mean cosine of the tokens' attention over offsets)")
    p.add_argument("--layer", type=L.INDEX, help="layer number (from 0)")
    p.add_argument("--kind", help="state kind: c or h (or a stored gate)")
    p.add_argument("--pad-left", type=L.PADDING, default=1, help="tokens before the span where "
                   f"units must be off (default 1, at most {L.MAX_PADDING:,})")
    p.add_argument("--pad-right", type=L.PADDING, default=0, help="tokens after the span where "
                   f"units must be off (default 0, at most {L.MAX_PADDING:,})")
    p.add_argument("--limit", type=L.RESULTS, default=20,
                   help=f"matches to show (default 20, at most {L.MAX_RESULTS:,})")
    p.add_argument("--no-fuzzy", action="store_true",
                   help="only spans where every unit of S is on")
    p.add_argument("--min-length", type=L.COUNT, default=None, metavar="N",
                   help="matches of at least N tokens (default 2 when the span has 2 or "
                   "more, else 1; 1 also lists one-token matches)")
    p.add_argument("--length", type=L.COUNT, default=None, metavar="N",
                   help="matches of exactly N tokens (LSTMVis's phrase length)")
    p.add_argument("--negative", action="store_true",
                   help="select units <= -THRESHOLD instead of >= THRESHOLD")
    p.add_argument("--json", action="store_true", help="print the pattern and matches as JSON")
    p.set_defaults(run=run_match)


def run_match(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index

    by_span = args.start is not None or args.end is not None
    if by_span == (args.phrase is not None) or (by_span and None in (args.start, args.end)):
        raise UsageError("give either --start and --end, or --phrase")
    if args.attention:
        run_attention_match(args, by_span)
        return
    if args.threshold is None or args.layer is None or args.kind is None:
        raise UsageError("match needs --threshold, --layer and --kind (or --attention)")
    threshold = number(args.threshold, "--threshold")
    if args.min_length is not None and args.length is not None:
        raise UsageError("give --min-length or --length, not both")
    options = {"pad_left": args.pad_left, "pad_right": args.pad_right,
               "sign": -1 if args.negative else 1}
    with open_index(args.index) as index:
        if by_span:
            pattern = index.select(args.start, args.end, threshold, args.layer, args.kind,
                                   **options)
        else:
            pattern = index.select_phrase(args.phrase, threshold, args.layer, args.kind,
                                          doc=args.doc, occurrence=args.occurrence, **options)
        result = index.match(pattern, limit=args.limit, fuzzy=not args.no_fuzzy,
                             min_length=args.min_length, length=args.length)
        span_text = index.text(pattern.start, pattern.end)
    if args.json:
        print(json.dumps(match_json(result, span_text), indent=2, ensure_ascii=False))
        return
    print(f"pattern  {len(pattern.units)} units of {pattern.state}: "
          f"{' '.join(map(str, pattern.units))}")
    print(f"         {pattern.how}, document {pattern.document}, text {visible(span_text)!r}")
    lengths = (f"exactly {result.min_length}" if result.min_length == result.max_length
               else f"at least {result.min_length}")
    print(f"matches  {len(result.matches)} shown of {result.n_candidates:,} candidates "
          f"({lengths} tokens)")
    print()
    print_table(
        ("rank", "doc", "start", "end", "overlap", "extra", "text"),
        [(rank, m.document, m.start, m.end, m.overlap, m.extra,
          line + ("   (the query)" if m.is_query else ""))
         for rank, (m, line) in enumerate(zip(result.matches, marked_lines(
             [(m.left, m.text, m.right) for m in result.matches])), start=1)],
    )


def add_nearest(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "nearest", help="the stored states nearest to a span's mean state (FAISS)",
        description="The K token states of LAYER/KIND nearest (Euclidean, on the stored "
        "values) to the mean state of the span [START, END), outside the span.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--start", type=L.INDEX, required=True, help="first token of the span")
    p.add_argument("--end", type=L.INDEX, required=True, help="one past the last token")
    add_state_options(p)
    p.add_argument("--k", type=L.RESULTS, default=20,
                   help=f"neighbours to show (default 20, at most {L.MAX_RESULTS:,})")
    p.add_argument("--exact", action="store_true",
                   help="scan every stored state (brute force) instead of asking FAISS")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run_nearest)


def run_nearest(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index

    with open_index(args.index) as index:
        neighbors = index.nearest(args.start, args.end, args.layer, args.kind, args.k,
                                  exact=args.exact)
        span_text = index.text(args.start, args.end) if args.end > args.start else ""
    if args.json:
        print(json.dumps(nearest_json(neighbors, (args.start, args.end), span_text, args.layer,
                                      args.kind, args.exact), indent=2, ensure_ascii=False))
        return
    print(f"nearest to the mean layers.{args.layer}.{args.kind} state of "
          f"[{args.start}, {args.end}) {visible(span_text)!r}")
    print()
    print_table(("rank", "doc", "pos", "distance", "text"),
                [(rank, n.document, n.start, f"{n.distance:.4f}", line)
                 for rank, (n, line) in enumerate(zip(neighbors, marked_lines(
                     [(n.left, n.text, n.right) for n in neighbors])), start=1)])


def add_neurons(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "neurons", help="where a unit is above/below a threshold, its top contexts, "
        "its statistics; or units ranked by correlation with a track",
        description="Ask about UNIT of LAYER/KIND: --above T (positions where x >= T), "
        "--below T (x <= T; both: a band), --top K (strongest values, --lowest for the most "
        "negative), --stats; or rank every unit by |Pearson r| with --correlate TRACK.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("--unit", type=L.INDEX, help="unit number (from 0)")
    add_state_options(p)
    p.add_argument("--above", help="positions where the unit is >= this")
    p.add_argument("--below", help="positions where the unit is <= this")
    p.add_argument("--top", type=L.int_arg(maximum=L.MAX_RESULTS), metavar="K",
                   help=f"the K strongest values of the unit (at most {L.MAX_RESULTS:,})")
    p.add_argument("--lowest", action="store_true", help="with --top: the K lowest values")
    p.add_argument("--stats", action="store_true", help="the unit's statistics")
    p.add_argument("--correlate", metavar="TRACK",
                   help="rank units by |Pearson r| with an annotation track (e.g. depth)")
    p.add_argument("--limit", type=L.RESULTS_OR_NONE, default=20,
                   help=f"hits or units to show (default 20, at most {L.MAX_RESULTS:,})")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(run=run_neurons)


def run_neurons(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index

    bound = args.above is not None or args.below is not None
    asked = [bound, args.top is not None, args.stats, args.correlate is not None]
    if sum(asked) != 1:
        raise UsageError("ask one thing: --above/--below, --top K, --stats or --correlate TRACK")
    if args.lowest and args.top is None:
        raise UsageError("--lowest goes with --top K")
    if args.correlate is None and args.unit is None:
        raise UsageError("give the unit: --unit U")
    above = None if args.above is None else number(args.above, "--above")
    below = None if args.below is None else number(args.below, "--below")
    with open_index(args.index) as index:
        neurons = index.neurons
        if args.correlate is not None:
            ranked = neurons.correlate(args.correlate, args.layer, args.kind, top=args.limit)
            print_correlations(ranked, args)
        elif args.stats:
            print_stats(neurons.stats(args.unit, args.layer, args.kind), args.json)
        elif args.top is not None:
            print_hits(neurons.top(args.unit, args.layer, args.kind, args.top,
                                   lowest=args.lowest), index.n_tokens, args.json)
        else:
            print_hits(neurons.where(args.unit, args.layer, args.kind, above=above, below=below,
                                     limit=args.limit), index.n_tokens, args.json)


def print_hits(result, n_tokens: int, as_json: bool) -> None:
    """Threshold hits or top activations of a unit, as a table or JSON."""
    if as_json:
        print(json.dumps(hits_json(result, n_tokens), indent=2, ensure_ascii=False))
        return
    head = f"{result.state} unit {result.unit}: {result.how}"
    if result.source == "scan" and not result.how.startswith("top"):
        print(f"{head} at {result.count:,} of {n_tokens:,} tokens"
              f"{f'; the first {len(result.hits)}' if len(result.hits) < result.count else ''}")
    else:
        print(f"{head} (from the {result.source})")
    print()
    print_table(("rank", "doc", "pos", "value", "text"),
                [(rank, h.document, h.pos, f"{h.value:.4g}", line)
                 for rank, (h, line) in enumerate(zip(result.hits, marked_lines(
                     [(h.left, h.token, h.right) for h in result.hits])), start=1)])


def print_stats(stats, as_json: bool) -> None:
    """A unit's statistics, one per line, or as JSON."""
    from dataclasses import asdict

    data = asdict(stats)
    if as_json:
        data["on_fraction"] = {str(k): v for k, v in data["on_fraction"].items()}
        print(json.dumps(data, indent=2))
        return
    on = data.pop("on_fraction")
    print(f"{data.pop('state')} unit {data.pop('unit')}")
    del data["layer"], data["kind"]
    for key, value in data.items():
        print(f"  {key:9s} {value:.6g}" if isinstance(value, float) else f"  {key:9s} {value:,}")
    print("  on (fraction of tokens x >= threshold): "
          + ", ".join(f"{t:g}: {f:.3f}" for t, f in on.items()))


def print_correlations(ranked, args: argparse.Namespace) -> None:
    """Units ranked by correlation with a track, as a table or JSON."""
    if args.json:
        print(json.dumps({"track": args.correlate, "layer": args.layer, "kind": args.kind,
                          "units": [{"unit": c.unit, "r": c.r, "n": c.n} for c in ranked]},
                         indent=2))
        return
    print(f"units of layers.{args.layer}.{args.kind} by |Pearson r| with track "
          f"{args.correlate!r}" + (f" over {ranked[0].n:,} tokens" if ranked else ""))
    print()
    print_table(("rank", "unit", "r"),
                [(rank, c.unit, f"{c.r:+.4f}") for rank, c in enumerate(ranked, start=1)])


def add_sql(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sql", help="run one read-only SQL query over the index tables",
        description="Run one SELECT (or WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN) over the "
        "index's tables: documents, tokens, vocab, layers, unit_stats, unit_on, unit_top, "
        "unit_top_tokens, tracks, faiss_indexes; unit_value(layer, kind, unit, pos) reads a "
        f"stored state value. Anything that writes is refused. The table shows at most "
        f"{L.MAX_SQL_ROWS:,} rows (page with LIMIT and OFFSET); --json writes every row, a "
        "batch at a time.",
    )
    p.add_argument("index", help="index directory")
    p.add_argument("query", help='e.g. "SELECT unit, mean FROM unit_stats ORDER BY mean LIMIT 5"')
    p.add_argument("--json", action="store_true",
                   help="print every row as a JSON object (to a file: > rows.json)")
    p.set_defaults(run=run_sql)


def run_sql(args: argparse.Namespace) -> None:
    from lstmsearch.index import open_index

    with open_index(args.index, allow_partial=True) as index:
        if args.json:
            write_json_rows(index.sql_batches(args.query, batch_rows=L.SQL_BATCH_ROWS))
            return
        result = index.sql(args.query)
    rows = [[visible(str(v))[:60] for v in row] for row in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(result.columns)]
    for row in [list(result.columns), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    if result.truncated:
        print(f"(the first {len(result.rows):,} rows: the query has more; page with LIMIT and "
              "OFFSET, or write them all with --json > FILE)")
    else:
        print(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})")


def run_attention_match(args: argparse.Namespace, by_span: bool) -> None:
    """`match --attention`: the spans whose tokens attend like the span's."""
    from dataclasses import asdict

    from lstmsearch.attention import attends_like
    from lstmsearch.index import open_index
    from lstmsearch.spans import find_span

    with open_index(args.index) as index:
        if by_span:
            start, end = args.start, args.end
        else:
            span = find_span(index, args.phrase, doc=args.doc, occurrence=args.occurrence)
            start, end = span.start, span.end
        matches = attends_like(index, start, end, limit=args.limit)
        text = index.text(start, end)
    if args.json:
        print(json.dumps({"query": {"start": start, "end": end, "text": text},
                          "matches": [asdict(m) for m in matches]}, indent=2,
                         ensure_ascii=False))
        return
    print(f"spans attending like [{start:,}, {end:,}) {visible(text)!r} (mean cosine of the "
          "tokens' attention over offsets)")
    for rank, m in enumerate(matches, start=1):
        print(f"{rank:>4}  {m.score:.3f}  doc {m.document:>5} [{m.start:,}, {m.end:,})  "
              f"{visible(m.text)!r}")


def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="compare two models over one corpus: surprisal, units, layers",
        description="Compare two indexes of the same corpus cut into the same tokens (two "
        "checkpoints, an LSTM and a GRU): where B predicts better than A (stored surprisal), "
        "for each unit of A the best-correlated unit of B, each shared state's linear CKA; "
        "with a span or phrase and --threshold, the pattern's matches in A next to the "
        "matches of its corresponding units in B.",
    )
    p.add_argument("index_a", help="index directory A")
    p.add_argument("index_b", help="index directory B (the same documents and tokens)")
    p.add_argument("--state", default=None,
                   help="compare this state only, e.g. layers.0.c (default: every shared one)")
    p.add_argument("--sample", type=L.int_arg(2, 1 << 24), default=1 << 16,
                   help="tokens the unit correlations and CKA use (evenly spaced; default "
                   "65,536)")
    p.add_argument("--top", type=L.RESULTS, default=10,
                   help="tokens and units to list (default 10)")
    p.add_argument("--start", type=L.INDEX, help="first token of a span to select in A")
    p.add_argument("--end", type=L.INDEX, help="one past the span's last token")
    p.add_argument("--phrase", help="select in A on this text instead of --start/--end")
    p.add_argument("--threshold", default=None, help="with a span: a unit is on where >= this")
    p.add_argument("--negative", action="store_true", help="select units <= -THRESHOLD")
    p.add_argument("--limit", type=L.RESULTS, default=10,
                   help="matches to show on each side (default 10)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from lstmsearch.compare import compare, side_by_side
    from lstmsearch.index import open_index

    by_span = args.start is not None or args.end is not None
    if by_span and None in (args.start, args.end):
        raise UsageError("give both --start and --end")
    if by_span and args.phrase is not None:
        raise UsageError("give either --start and --end, or --phrase")
    selects = by_span or args.phrase is not None
    if selects != (args.threshold is not None):
        raise UsageError("a span (--start/--end or --phrase) goes with --threshold")
    if selects and args.state is None:
        raise UsageError("a span goes with --state, the state to select on (e.g. layers.0.c)")
    with open_index(args.index_a) as a, open_index(args.index_b) as b:
        result = compare(a, b, state=args.state, sample=args.sample, k=args.top)
        pair = None
        if selects:
            threshold = number(args.threshold, "--threshold")
            sign = -1 if args.negative else 1
            if by_span:
                pattern = a.select(args.start, args.end, threshold, state=args.state,
                                   sign=sign)
            else:
                pattern = a.select_phrase(args.phrase, threshold, args.state, sign=sign)
            pair = side_by_side(a, b, pattern, result.states[0], limit=args.limit)
            span_text = a.text(pattern.start, pattern.end)
    if args.json:
        out = asdict(result)
        if pair is not None:
            out["side_by_side"] = {"a": match_json(pair.matches_a, span_text),
                                   "b": match_json(pair.matches_b, span_text),
                                   "left_out": list(pair.left_out)}
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    print(f"A  {result.a}\nB  {result.b}\n   {result.documents:,} documents, "
          f"{result.tokens:,} tokens in both")
    s = result.surprisal
    if s is None:
        print("\nsurprisal: not stored in both (build with surprisal to compare predictions)")
    else:
        print(f"\nsurprisal: A {s.mean_a:.3f} nats, B {s.mean_b:.3f}; B predicts "
              f"{100 * s.b_better:.1f}% of {s.tokens:,} tokens better")
        for title, rows in (("where B gains most", s.b_wins), ("where A gains most", s.a_wins)):
            if rows:
                print(f"  {title}:  pos  doc  token  A  B")
                for t in rows:
                    print(f"    {t.pos:>9,} {t.document:>5} {visible(t.text)!r:>8} "
                          f"{t.surprisal_a:6.2f} {t.surprisal_b:6.2f}")
    for st in result.states:
        print(f"\n{st.state_a} (A) against {st.state_b} (B) over {st.tokens:,} tokens: "
              f"linear CKA {st.cka:.3f}, mean best |r| {st.mean_best_r:.3f}")
        strongest = sorted(st.units, key=lambda c: c.sort_key)[: args.top]
        print("  unit of A -> best unit of B  r")
        for c in strongest:
            print(f"    {c.unit:>5} -> {c.best:<5} {c.r:+.3f}")
    if pair is not None:
        print(f"\npattern in A: {len(pair.pattern_a.units)} units of {pair.pattern_a.state} "
              f"on {visible(span_text)!r}; in B: {len(pair.pattern_b.units)} corresponding "
              f"units {list(pair.pattern_b.units)}"
              + (f" (left out, anti-correlated: {list(pair.left_out)})" if pair.left_out else ""))
        for side, res in (("A", pair.matches_a), ("B", pair.matches_b)):
            print(f"  matches in {side}:")
            for m in res.matches:
                print(f"    doc {m.document:>5} [{m.start:,}, {m.end:,}) "
                      f"{m.overlap}/{len(res.pattern.units)} extra {m.extra}  {visible(m.text)!r}")


def write_json_rows(batches: Iterator[Any]) -> None:
    """A JSON array of row objects, written a batch at a time (any number of rows, in the
    memory of one batch)."""
    out = sys.stdout
    first = True
    out.write("[")
    for batch in batches:
        for row in batch.to_dicts():
            out.write(("\n  " if first else ",\n  ")
                      + json.dumps(row, default=str, ensure_ascii=False))
            first = False
    out.write("]\n" if first else "\n]\n")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    add_train, add_index, add_info, add_compact, add_upgrade, add_verify, add_annotate, add_analyze, add_serve, add_demo,
    add_import_lstmvis, add_export, add_index_states, add_match, add_nearest, add_neurons,
    add_probe, add_compare, add_sql,
]


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="lstmsearch",
        description="Search the hidden states of recurrent language models, LSTMVis style.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 2 (and one line on stderr) for an error the user can
    fix: a bad value, a missing or unreadable file, a port in use."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or a bad argument (one line printed already)
        return exc.code if isinstance(exc.code, int) else 2
    try:
        args.run(args)
    except BrokenPipeError:
        return 0
    except (UsageError, ValueError, TypeError, LookupError, OSError, OverflowError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        if isinstance(exc, OSError) and not isinstance(exc, FileNotFoundError) and exc.strerror:
            message = f"{exc.strerror}{f': {exc.filename}' if exc.filename else ''}"
        print(f"lstmsearch {args.command}: error: {one_line(message)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

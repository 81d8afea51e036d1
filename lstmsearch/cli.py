"""The `lstmsearch` command: sub-commands that read like a sentence, each a thin layer over
the Python API (`lstmsearch train parens --out parens.pt`, `lstmsearch match INDEX ...`).

Every sub-command is `add_<name>(subparsers)` registering `run_<name>(args)`; errors a user
can fix (bad values, missing files) are printed as one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


class UsageError(Exception):
    """A problem with what the user asked for, reported without a traceback."""


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train an LSTM/GRU language model on a corpus",
        description="Train a language model. CORPUS is a bundled name (parens, python-stdlib, "
        "english) or a path (text file, folder, .jsonl, .parquet).",
    )
    p.add_argument("corpus")
    p.add_argument("--out", required=True, help="checkpoint file to write (e.g. model.pt)")
    p.add_argument("--arch", choices=["lstm", "gru"], default="lstm")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--embed", type=int, default=64, help="embedding size")
    p.add_argument("--dropout", type=float, default=0.0)
    p.add_argument("--bidirectional", action="store_true", help="add a backward stack (ELMo style)")
    p.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="char")
    p.add_argument("--vocab-size", type=int, default=None)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=None, help="stop after this many optimizer steps")
    p.add_argument("--seq-len", type=int, default=128, help="tokens per backpropagation window")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--limit", type=int, default=None, help="use only the first N documents")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> None:
    from lstmsearch.train import TrainConfig, train

    config = TrainConfig(
        corpus=args.corpus, arch=args.arch, layers=args.layers, hidden=args.hidden,
        embed_dim=args.embed, dropout=args.dropout, bidirectional=args.bidirectional,
        tokenizer=args.tokenizer, vocab_size=args.vocab_size, epochs=args.epochs,
        steps=args.steps, seq_len=args.seq_len, batch=args.batch, lr=args.lr,
        limit=args.limit, seed=args.seed, checkpoint_every=args.checkpoint_every,
    )
    result = train(config, args.out, resume=args.resume)
    if args.json:
        print(json.dumps({
            "checkpoint": str(result.path), "steps": result.steps, "epochs": result.epochs_done,
            "val_perplexity": result.val_perplexity, "history": result.history,
            "seconds": round(result.seconds, 2),
        }, indent=2))
    else:
        print(f"wrote {result.path}: {result.steps} steps, validation perplexity "
              f"{result.val_perplexity:.3f} ({result.seconds:.0f} s)")


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_train]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lstmsearch",
        description="Search the hidden states of recurrent language models, LSTMVis style.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (UsageError, ValueError, FileNotFoundError, KeyError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"lstmsearch {args.command}: error: {message}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The largest values lstmsearch accepts, and the checks that refuse anything else.

One place for the documented maximums, so that the Python API, the CLI and the web UI refuse
the same values with the same words:

- MAX_RESULTS (100,000): matches of `match`, neighbours of `nearest`, hits and top values of
  `neurons`, units of a correlation ranking, occurrences of a phrase. A larger request would
  print or send hundreds of thousands of rows that nobody reads; page through the corpus with
  a narrower query instead (or use `sql` for counts).
- MAX_CONTEXT (1,000): tokens of context either side of a result.
- MAX_PADDING (10,000): off-padding tokens of a pattern.
- MAX_SQL_ROWS (100,000): rows of a `sql` query, printed or returned (`Index.sql`): a
  table of an index has a row per token; page with LIMIT/OFFSET, or write every row with
  `lstmsearch sql --json` (`Index.sql_batches`, SQL_BATCH_ROWS at a time).
- MAX_WORKERS (10,000) and MAX_GPUS_PER_WORKER (1,024): the Ray engine's actors.

The `*_arg` functions are argparse types: `--limit 1000000000` stops at the command line with
a one-line message naming the flag and the value.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_RESULTS = 100_000
MAX_CONTEXT = 1_000
MAX_PADDING = 10_000
MAX_PORT = 65_535
MAX_SQL_ROWS = 100_000
SQL_BATCH_ROWS = 10_000
MAX_WORKERS = 10_000
MAX_GPUS_PER_WORKER = 1_024.0


def int_arg(minimum: int | None = None, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: a whole number in [minimum, maximum] (either bound optional)."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"must be {describe_range(minimum, maximum)}, "
                                             f"got {text!r}")
        return value

    parse.__name__ = "whole number"
    return parse


def float_arg(minimum: float | None = None, maximum: float | None = None,
              below_maximum: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [minimum, maximum] (or [minimum, maximum) when
    `below_maximum`)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        too_high = maximum is not None and (value >= maximum if below_maximum else value > maximum)
        if (minimum is not None and value < minimum) or too_high:
            bounds = [] if minimum is None else [f"at least {minimum:g}"]
            if maximum is not None:
                bounds.append(f"{'below' if below_maximum else 'at most'} {maximum:g}")
            raise argparse.ArgumentTypeError(f"must be {' and '.join(bounds)}, got {text!r}")
        return value

    parse.__name__ = "number"
    return parse


def describe_range(minimum: int | None, maximum: int | None) -> str:
    if minimum is not None and maximum is not None:
        return f"a whole number from {minimum:,} to {maximum:,}"
    if minimum is not None:
        return f"a whole number of at least {minimum:,}"
    if maximum is not None:
        return f"a whole number of at most {maximum:,}"
    return "a whole number"


def check_at_most(name: str, value: int, maximum: int, why: str = "") -> int:
    """`value` unless it is above `maximum`: then a ValueError naming it."""
    if value > maximum:
        raise ValueError(f"{name} must be at most {maximum:,}, got {value:,}{why}")
    return value


PORT = int_arg(0, MAX_PORT)
COUNT = int_arg(1)
INDEX = int_arg(0)
RESULTS = int_arg(1, MAX_RESULTS)
RESULTS_OR_NONE = int_arg(0, MAX_RESULTS)
CONTEXT = int_arg(0, MAX_CONTEXT)
PADDING = int_arg(0, MAX_PADDING)

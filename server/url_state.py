"""A query as the page's address: what a copied URL restores, what back and forward step
through, what a download link asks for.

    ?index=parens&view=select&layer=1&kind=c&span=40-44&threshold=0.3&sign=1&padding=1-0&unit=5

`encode` writes a `Query`; `decode` reads one from the request's arguments, checking every
value against the index: a value that cannot hold (an index this server does not serve, a
span past the end, a threshold that is not a number, a unit out of range) is left at its
default, with one line naming it in `problems`. Nothing here raises for what a URL holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlencode

from lstmsearch.spans import check_span

MAX_THRESHOLD = 65504.0
"""The largest float16: the stored values never reach a larger threshold, so none selects
differently (and a larger one would overflow the float16 and float32 comparisons)."""
MAX_PAD = 50
"""The most padding tokens a page asks for (its spinners' bound)."""
MODES = ("match", "nearest", "attention")


@dataclass(frozen=True)
class Query:
    """What a URL holds; None: not given (the page's default)."""

    index: str
    view: str = "select"
    state: str | None = None  # layers.{layer}.{kind}
    span: tuple[int, int] | None = None
    threshold: float | None = None
    sign: int | None = None
    padding: tuple[int, int] | None = None
    unit: int | None = None
    mode: str = "match"


@dataclass(frozen=True)
class Decoded:
    """A URL's query and the lines saying what in it was left out and why."""

    query: Query
    problems: tuple[str, ...] = field(default=())


def encode(q: Query) -> str:
    """The query string of `q` (without "?"), its fields in a fixed order."""
    pairs: list[tuple[str, object]] = [("index", q.index), ("view", q.view)]
    if q.state is not None:
        _, layer, kind = q.state.split(".", 2)
        pairs += [("layer", layer), ("kind", kind)]
    if q.span is not None:
        pairs.append(("span", f"{q.span[0]}-{q.span[1]}"))
    if q.threshold is not None:
        pairs.append(("threshold", f"{q.threshold:g}"))
    if q.sign is not None:
        pairs.append(("sign", q.sign))
    if q.padding is not None:
        pairs.append(("padding", f"{q.padding[0]}-{q.padding[1]}"))
    if q.unit is not None:
        pairs.append(("unit", q.unit))
    if q.mode != "match":
        pairs.append(("mode", q.mode))
    return urlencode(pairs)


def arguments(text: str) -> dict[str, list[str]]:
    """A query string (with or without "?") as request arguments."""
    return parse_qs(text.lstrip("?"), keep_blank_values=True)


def _one(args: Mapping[str, Sequence[str | bytes]], name: str) -> str | None:
    values = args.get(name)
    if not values:
        return None
    value = values[-1]
    value = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return value[:200]


def _integers(text: str, count: int) -> tuple[int, ...] | None:
    parts = text.split("-")
    if len(parts) != count or not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def decode(
    args: Mapping[str, Sequence[str | bytes]],
    *,
    index_name: str,
    state_names: Sequence[str],
    dim_of: Callable[[str], int],
    doc_starts: Sequence[int],
    views: Sequence[str],
    default_state: str,
) -> Decoded:
    """The query a page's URL asks for, checked against the index (see the module)."""
    problems: list[str] = []
    given = _one(args, "index")
    if given is not None and given != index_name:
        problems.append(f"unknown index {given!r}: this server serves {index_name!r}; "
                        "showing it from the start")
        return Decoded(Query(index=index_name), tuple(problems))
    view = _one(args, "view") or "select"
    if view not in views:
        problems.append(f"unknown view {view!r}: the views are {', '.join(views)}")
        view = "select"
    state = None
    layer, kind = _one(args, "layer"), _one(args, "kind")
    if layer is not None or kind is not None:
        default_layer, default_kind = default_state.split(".")[1:]
        name = f"layers.{layer if layer is not None else default_layer}." \
               f"{kind if kind is not None else default_kind}"
        if name in state_names:
            state = name
        else:
            problems.append(f"no state layer={layer} kind={kind} in this index: the states "
                            f"are {', '.join(state_names)}")
    span = None
    text = _one(args, "span")
    if text is not None:
        found = _integers(text, 2)
        if found is None:
            problems.append(f"span {text!r} is not START-END (two token positions)")
        else:
            try:
                start, end, _ = check_span(doc_starts, *found)
                span = (start, end)
            except ValueError as exc:
                problems.append(f"span {text!r}: {exc}")
    threshold = None
    text = _one(args, "threshold")
    if text is not None:
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not math.isfinite(number) or not 0 <= number <= MAX_THRESHOLD:
            problems.append(f"threshold {text!r} is not a number from 0 to {MAX_THRESHOLD:g}")
        else:
            threshold = round(number, 3)
    sign = None
    text = _one(args, "sign")
    if text is not None:
        if text in ("1", "+1", "-1"):
            sign = int(text)
        else:
            problems.append(f"sign {text!r} is neither 1 (x ≥ θ) nor -1 (x ≤ −θ)")
    padding = None
    text = _one(args, "padding")
    if text is not None:
        found = _integers(text, 2)
        if found is None or max(found) > MAX_PAD:
            problems.append(f"padding {text!r} is not LEFT-RIGHT (each 0..{MAX_PAD})")
        else:
            padding = (found[0], found[1])
    unit = None
    text = _one(args, "unit")
    if text is not None:
        dim = dim_of(state or default_state)
        if not text.isdigit() or int(text) >= dim:
            problems.append(f"unit {text!r} is out of range: {state or default_state} has "
                            f"units 0..{dim - 1}")
        else:
            unit = int(text)
    mode = _one(args, "mode") or "match"
    if mode not in MODES:
        problems.append(f"mode {mode!r} is none of match, nearest and attention")
        mode = "match"
    return Decoded(Query(index=index_name, view=view, state=state, span=span,
                         threshold=threshold, sign=sign, padding=padding, unit=unit,
                         mode=mode), tuple(problems))

"""What a page sends, checked on the server.

A widget's bounds and options hold in the browser only: a page (or anything speaking Bokeh's
websocket protocol) can send any value of the property's type: a number out of the widget's
range, NaN or infinity, a string that is none of a select's options, an index past the end of
a radio group or of a data source. The views read widgets through these functions, which
give a value the server can use or None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

MAX_TEXT = 1000
"""Characters of a text field the server reads (a phrase, a list of units)."""


def finite(value: object) -> float | None:
    """A widget's number as a float, or None when it is empty, not a number or not finite."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def clamped(value: object, low: float, high: float) -> int | None:
    """A widget's whole number clamped to [low, high], or None when it is not a number."""
    number = finite(value)
    return None if number is None else int(min(max(number, low), high))


def bounded(widget: Any) -> int | None:
    """A number widget's (Spinner, NumericInput) whole-number value clamped to its own
    `low`..`high`, and shown so in the widget when it was outside them; None when it holds
    no number."""
    low = -math.inf if widget.low is None else widget.low
    high = math.inf if widget.high is None else widget.high
    number = finite(widget.value)
    if number is None:
        return None
    value = int(min(max(number, low), high))
    if value != widget.value:
        widget.value = value
    return value


def chosen(widget: Any, default: str | None = None) -> str:
    """A select's value when it is one of its options, else `default` (the first option
    when not given), which the widget then shows."""
    options = [o[0] if isinstance(o, (tuple, list)) else o for o in widget.options]
    if widget.value in options:
        return widget.value
    value = default if default is not None else options[0]
    widget.value = value
    return value


def chosen_index(active: object, n: int) -> int:
    """A radio group's active index when it is one of its `n` buttons, else 0."""
    return active if isinstance(active, int) and 0 <= active < n else 0


def chosen_indices(active: Sequence[object] | None, n: int) -> list[int]:
    """A checkbox group's active indices that are among its `n` boxes, sorted, once each."""
    return sorted({i for i in active or () if isinstance(i, int) and 0 <= i < n})


def row_index(indices: Sequence[object] | None, n: int) -> int | None:
    """The first selected index of a data source of `n` rows when it is one of them."""
    if not indices:
        return None
    first = indices[0]
    return first if isinstance(first, int) and 0 <= first < n else None


def selected_range(indices: Sequence[object] | None, n: int) -> tuple[int, int] | None:
    """(first, last) of the selected indices of a data source of `n` rows that it has, or
    None when none of them is one of its rows (a brush sends the rows it covers)."""
    rows = [i for i in indices or () if isinstance(i, int) and 0 <= i < n]
    return (min(rows), max(rows)) if rows else None


def tapped(source: Any, column: str, indices: Sequence[object] | None) -> Any:
    """The `column` value of the first selected row of data source `source`, or None when
    nothing (or a row it does not have) is selected."""
    values = source.data.get(column, ())
    at = row_index(indices, len(values))
    return None if at is None else values[at]


def text(value: object) -> str:
    """A text field's value as a string of at most MAX_TEXT characters."""
    return str(value or "")[:MAX_TEXT]

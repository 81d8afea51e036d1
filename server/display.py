"""Presentation helpers shared by the views: token labels, colours and token heat strips.

Nothing here queries the index; these functions turn values the Python API returned into
what Bokeh draws (strings that fit a cell, colours, column data for rows of tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from bokeh.core.properties import value
from bokeh.models import (
    ColumnDataSource,
    FixedTicker,
    HoverTool,
    InlineStyleSheet,
    Range1d,
    TapTool,
)
from bokeh.palettes import Category10_10, Greys256, Viridis256
from bokeh.plotting import figure

from server.inputs import tapped

# --- colours -------------------------------------------------------------------------------

ACCENT = "#1f6fb2"
"""The product colour: selections, highlights, the brushed span."""
THRESHOLD_COLOR = "#d62728"
PAD_COLOR = "#f5a623"
MATCH_COLOR = "#2ca02c"
FADED_LINE = "#9aa5b1"
TEXT_COLOR = "#1b1f24"
MUTED_TEXT = "#8a94a0"
NO_COLOR = "rgba(0, 0, 0, 0)"
MONO = "ui-monospace, Menlo, Consolas, 'DejaVu Sans Mono', monospace"

SET_PALETTE: tuple[str, ...] = tuple(Category10_10[i] for i in (0, 1, 2, 4, 5, 6, 8, 9)) + (
    "#393b79", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#e6550d", "#31a354", "#756bb1",
)
"""Colours for the units of a pattern (one per unit, cycling); red is kept for the threshold."""

_BLUES = [
    "#f7fbff", "#deebf7", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5", "#08519c",
]
COUNT_PALETTE: tuple[str, ...] = tuple(_BLUES)
"""Match counts: white (no unit of S on) to dark blue (all of S on)."""

DIVERGING_PALETTE: tuple[str, ...] = (
    "#2166ac", "#4393c3", "#92c5de", "#d1e5f0", "#f7f7f7", "#fddbc7", "#f4a582", "#d6604d",
    "#b2182b",
)
"""Unit values: blue (negative) through white (zero) to red (positive)."""

TRACK_PALETTE: tuple[str, ...] = tuple(Viridis256[::-1][i] for i in range(0, 256, 32))
GREYS: tuple[str, ...] = tuple(Greys256)


def colour_of(value: float, low: float, high: float, palette: Sequence[str]) -> str:
    """The palette entry for `value` on a linear scale from `low` to `high` (clipped)."""
    if not np.isfinite(value):
        return "#ffffff"
    if high <= low:
        return palette[-1]
    frac = (float(value) - low) / (high - low)
    i = int(np.clip(np.floor(frac * len(palette)), 0, len(palette) - 1))
    return palette[i]


def colours_of(values: np.ndarray, low: float, high: float, palette: Sequence[str]) -> list[str]:
    """`colour_of` for an array (NaN gives white)."""
    values = np.asarray(values, dtype=np.float64)
    if high <= low:
        high = low + 1e-9
    frac = (values - low) / (high - low)
    idx = np.clip(np.floor(np.nan_to_num(frac, nan=0.0) * len(palette)), 0, len(palette) - 1)
    pal = np.asarray(palette, dtype=object)
    out = pal[idx.astype(np.int64)]
    out[~np.isfinite(values)] = "#ffffff"
    return out.tolist()


def is_dark(colour: str) -> bool:
    """Whether a "#rrggbb" colour is dark enough to need white text on it."""
    if not colour.startswith("#") or len(colour) != 7:
        return False
    r, g, b = (int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5))
    return 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45


def unit_colour(rank: int) -> str:
    """Colour of the `rank`-th unit of a pattern."""
    return SET_PALETTE[rank % len(SET_PALETTE)]


def gradient_legend(title: str, palette: Sequence[str], low: str, high: str) -> str:
    """HTML for a small colour-scale legend: title, a gradient bar, its two end labels."""
    stops = ", ".join(palette)
    return (
        f"<div class='legend'><div class='legend-title'>{title}</div>"
        f"<div class='legend-bar' style='background: linear-gradient(to right, {stops})'></div>"
        f"<div class='legend-ends'><span>{low}</span><span>{high}</span></div></div>"
    )


# --- token labels --------------------------------------------------------------------------

VISIBLE_WHITESPACE = {" ": "·", "\n": "↵", "\t": "⇥", "\r": "␍"}


def token_label(text: str, max_chars: int = 12, *, char_level: bool = False) -> str:
    """A token's text made visible and short enough for its cell.

    Whitespace is shown with symbols ("·" space, "↵" newline, "⇥" tab) where it is the
    token (character-level models) or inside it; a leading space of a word token is dropped;
    long tokens are cut with "…".
    """
    if not char_level and text.strip() and text[:1] == " ":
        text = text.lstrip(" ")
    shown = "".join(VISIBLE_WHITESPACE.get(ch, ch) for ch in text)
    if not shown:
        shown = "∅"
    if len(shown) > max_chars:
        shown = shown[: max(1, max_chars - 1)] + "…"
    return shown


def token_labels(texts: Sequence[str], max_chars: int, *, char_level: bool) -> list[str]:
    """`token_label` for each text."""
    return [token_label(t, max_chars, char_level=char_level) for t in texts]


def chars_per_cell(cell_px: float, font_px: float = 12.0) -> int:
    """How many characters of a monospace font fit in a cell `cell_px` wide."""
    return max(1, int((cell_px - 2) // (font_px * 0.62)))


def fmt(value: float, digits: int = 3) -> str:
    """A short number for labels."""
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:.{digits}g}"


def place_label(doc_name: str, offset: int, width: int = 24) -> str:
    """Where a row is, for its label: the document's name (its end, when long) and the
    token position inside the document, e.g. "json/decoder.py:1204"."""
    name = doc_name if len(doc_name) <= width else "…" + doc_name[-(width - 1):]
    return f"{name}:{offset}"


# --- tables --------------------------------------------------------------------------------


def set_rows(source: ColumnDataSource, data: dict[str, Sequence]) -> None:
    """Give a DataTable's source new rows.

    The browser redraws a DataTable when its number of rows changes, not when rows are
    replaced by as many new ones (the table would show the old values); so such rows are
    cleared first, in the same update.
    """
    old = len(next(iter(source.data.values()), []))
    new = len(next(iter(data.values()), []))
    if old and old == new:
        source.data = {key: [] for key in data}
    source.data = data


# --- token heat strips ---------------------------------------------------------------------


@dataclass
class StripRow:
    """One row of tokens in a strip list, aligned so that x = 0 is `anchor`.

    `values` colour the cells (NaN: white), `emphasis` marks the cells of the row's hit
    (drawn bold with an outline), `track` (optional) colours a thin strip under the tokens.
    """

    label: str
    anchor: int
    positions: np.ndarray
    texts: Sequence[str]
    values: np.ndarray
    emphasis: np.ndarray
    document: int
    track: np.ndarray | None = None
    info: dict[str, object] = field(default_factory=dict)


STRIP_COLUMNS = (
    "x", "y", "text", "full", "fill", "text_color", "pos", "doc", "row", "value", "track",
    "track_fill",
)
MARK_COLUMNS = ("x", "y", "text", "text_color")
"""Cells hold every token; marks the emphasised ones (outlined, in bold) on top."""


def as_columns(data: dict[str, list]) -> dict[str, np.ndarray]:
    """Lists as numpy arrays: Bokeh sends arrays without walking every value (much faster)."""
    out: dict[str, np.ndarray | list] = {}
    for key, values in data.items():
        if not len(values):
            out[key] = []  # an empty float array would not do for a colour column
        elif isinstance(values[0], str):
            out[key] = np.array(values, dtype=str)
        else:
            out[key] = np.asarray(values)
    return out


class StripList:
    """A plot of token rows with heat-coloured cells: match lists, top contexts, hits.

    One `ColumnDataSource` holds every cell (`cells`), so `show(rows)` is one assignment.
    Tapping a cell selects it; the owner reads `cells.selected.indices` to know which row.
    """

    def __init__(
        self,
        name: str,
        *,
        title: str,
        width: int = 1100,
        row_height: int = 26,
        max_rows: int = 50,
        left: int = -6,
        right: int = 30,
        label_width: int = 230,
        char_level: bool = True,
        value_name: str = "value",
    ) -> None:
        self.name = name
        self.row_height = row_height
        self.max_rows = max_rows
        self.char_level = char_level
        self.label_width = label_width
        self.width = width
        self.cells = ColumnDataSource({k: [] for k in STRIP_COLUMNS}, name=f"{name}-cells")
        self.fig = figure(
            name=f"{name}-plot", title=title, width=width, height=self.height_for(max_rows),
            x_range=Range1d(left - 0.5, right + 0.5),
            y_range=Range1d(-max_rows + 0.4, 0.6),
            tools="", toolbar_location=None, min_border_left=label_width,
            output_backend="canvas",
        )
        fig = self.fig
        fig.xaxis.visible = False
        fig.xgrid.visible = False
        fig.ygrid.visible = False
        fig.outline_line_color = None
        self.ticker = FixedTicker(ticks=[])
        fig.yaxis.ticker = self.ticker
        fig.yaxis.major_label_text_font = MONO
        fig.yaxis.major_label_text_font_size = "11px"
        fig.yaxis.major_label_text_color = TEXT_COLOR
        fig.yaxis.major_tick_line_color = None
        fig.yaxis.axis_line_color = None
        fig.title.text_font_size = "13px"
        self.rects = fig.rect(
            x="x", y="y", width=0.94, height=0.82, source=self.cells, fill_color="fill",
            line_color=None, nonselection_fill_alpha=1.0, selection_line_color=ACCENT,
            selection_line_width=2,
        )
        self.track_rects = fig.rect(
            x="x", y="track", width=0.94, height=0.16, source=self.cells,
            fill_color="track_fill", line_color=None, nonselection_fill_alpha=1.0,
        )
        # one font per renderer: a per-glyph font makes the canvas parse a font per token
        fig.text(
            x="x", y="y", text="text", source=self.cells, text_align="center",
            text_baseline="middle", text_font=value(MONO), text_font_size="12px",
            text_color="text_color", nonselection_text_alpha=1.0,
        )
        self.marks = ColumnDataSource({k: [] for k in MARK_COLUMNS}, name=f"{name}-marks")
        fig.rect(x="x", y="y", width=0.94, height=0.82, source=self.marks, fill_color=None,
                 line_color=TEXT_COLOR, line_width=1.2)
        fig.text(
            x="x", y="y", text="text", source=self.marks, text_align="center",
            text_baseline="middle", text_font=value(MONO), text_font_size="12px",
            text_font_style="bold", text_color="text_color",
        )
        fig.add_tools(TapTool(renderers=[self.rects]))
        fig.add_tools(HoverTool(renderers=[self.rects], tooltips=[
            ("token", "@full"), ("position", "@pos"), ("document", "@doc"),
            (value_name, "@value{0.000}"),
        ]))
        self.rows: list[StripRow] = []

    def height_for(self, n_rows: int) -> int:
        """Plot height in pixels for `n_rows` rows (title and borders included)."""
        return 40 + max(3, n_rows) * self.row_height

    def show(
        self,
        rows: Sequence[StripRow],
        *,
        low: float,
        high: float,
        palette: Sequence[str],
        track_range: tuple[float, float] | None = None,
        left: int | None = None,
        right: int | None = None,
    ) -> None:
        """Draw `rows` (top to bottom), cells coloured by value on [low, high]."""
        rows = list(rows)[: self.max_rows]
        self.rows = rows
        data: dict[str, list] = {k: [] for k in STRIP_COLUMNS}
        ticks, labels = [], {}
        lo_x = min((int(r.positions[0] - r.anchor) for r in rows if len(r.positions)), default=-3)
        hi_x = max((int(r.positions[-1] - r.anchor) for r in rows if len(r.positions)), default=20)
        left = lo_x if left is None else max(left, lo_x)
        right = hi_x if right is None else min(right, hi_x)
        n_cells = max(1, right - left + 1)
        cell_px = (self.width - self.label_width - 20) / n_cells
        max_chars = chars_per_cell(cell_px)
        marks: dict[str, list] = {k: [] for k in MARK_COLUMNS}
        for i, row in enumerate(rows):
            y = -i
            ticks.append(y)
            labels[y] = row.label
            keep = (row.positions - row.anchor >= left) & (row.positions - row.anchor <= right)
            idx = np.flatnonzero(keep)
            fills = colours_of(row.values[idx], low, high, palette)
            if row.track is not None and track_range is not None:
                track_fills = colours_of(row.track[idx], *track_range, TRACK_PALETTE)
            else:
                track_fills = ["#ffffff"] * len(idx)
            for j, k in enumerate(idx):
                x = int(row.positions[k] - row.anchor)
                label = token_label(row.texts[k], max_chars, char_level=self.char_level)
                if is_dark(fills[j]):
                    colour = "#ffffff"
                elif row.emphasis[k] or fills[j] != "#ffffff":
                    colour = TEXT_COLOR
                else:
                    colour = MUTED_TEXT
                if row.emphasis[k]:
                    marks["x"].append(x)
                    marks["y"].append(y)
                    marks["text"].append(label)
                    marks["text_color"].append(colour)
                    label = ""
                data["x"].append(x)
                data["y"].append(y)
                data["text"].append(label)
                data["full"].append(repr(row.texts[k])[1:-1])
                data["fill"].append(fills[j])
                data["text_color"].append(colour)
                data["pos"].append(int(row.positions[k]))
                data["doc"].append(row.document)
                data["row"].append(i)
                data["value"].append(float(row.values[k]))
                data["track"].append(y - 0.5 if row.track is not None else np.nan)
                data["track_fill"].append(track_fills[j])
        # the cells first: they are what the user waits for (the page draws them at once);
        # the plot keeps its size (room for max_rows): a new height would re-lay out the page
        self.cells.selected.indices = []
        self.cells.data = as_columns(data)
        self.marks.data = as_columns(marks)
        self.ticker.ticks = ticks
        self.fig.yaxis.major_label_overrides = labels
        self.fig.x_range.start = left - 0.5
        self.fig.x_range.end = right + 0.5

    def tapped_row(self) -> StripRow | None:
        """The row of the tapped cell, if any."""
        i = tapped(self.cells, "row", self.cells.selected.indices)
        return self.rows[i] if i is not None and 0 <= i < len(self.rows) else None


STYLE_CSS = """
:host { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
        font-size: 13px; color: #1b1f24; }
.brand { font-size: 20px; font-weight: 700; color: #1f6fb2; letter-spacing: 0.3px; }
.subtitle { color: #57606a; margin-top: 2px; }
.panel-title { font-weight: 600; font-size: 13px; margin: 2px 0 4px 0; }
.hint { color: #6e7781; font-size: 12px; margin: 3px 0; line-height: 1.35; }
.chips { margin: 6px 0; line-height: 2.0; }
.chip { display: inline-block; min-width: 26px; text-align: center; padding: 0 6px;
        margin: 0 4px 4px 0; border: 2px solid; border-radius: 10px; font-weight: 600;
        font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px;
        background: #ffffff; line-height: 20px; }
.ready { color: #2da44e; font-weight: 600; }
.busy { color: #9a6700; font-weight: 600; }
.spinner { display: inline-block; width: 11px; height: 11px; margin-right: 6px;
           border: 2px solid #d4a72c; border-top-color: transparent; border-radius: 50%;
           animation: spin 0.8s linear infinite; vertical-align: -1px; }
@keyframes spin { to { transform: rotate(360deg); } }
.error { color: #cf222e; font-weight: 600; }
.legend { margin: 2px 0 10px 0; width: 210px; }
.legend-title { font-size: 12px; color: #57606a; margin-bottom: 3px; }
.legend-bar { height: 12px; border: 1px solid #d0d7de; border-radius: 2px; }
.legend-ends { display: flex; justify-content: space-between; font-size: 11px;
               color: #57606a; font-variant-numeric: tabular-nums; }
table.stats { border-collapse: collapse; margin: 4px 0 6px 0; }
table.stats td { padding: 1px 10px 1px 0; font-variant-numeric: tabular-nums; }
table.stats td:nth-child(odd) { color: #6e7781; }
"""


def stylesheet() -> InlineStyleSheet:
    """The app's styles for HTML panels (widgets live in shadow DOM: styles go per model).

    A new sheet per document: a Bokeh model belongs to one document only.
    """
    return InlineStyleSheet(css=STYLE_CSS)

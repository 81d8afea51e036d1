"""Select view: a window of tokens, every unit of one state as a line over it, the threshold,
the brushed span with its padding, and the pattern S (LSTMVis's Select View). Under the
tokens, strips of the chosen annotation track and, when the index stores it, of each token's
surprisal under the model.

Brushing: Bokeh's box select does not hit text glyphs, so every token also has an invisible
quad (one in the line plot spanning its full height, one in the token row) on the same data
source; `BoxSelectTool(dimensions="width")` selects those quads and the text follows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np
from bokeh.core.properties import value
from bokeh.models import (
    BoxAnnotation,
    BoxSelectTool,
    ColumnDataSource,
    CustomJSTickFormatter,
    Div,
    FixedTicker,
    HoverTool,
    Range1d,
    Span,
    TapTool,
)
from bokeh.plotting import figure

from server.display import (
    ACCENT,
    FADED_LINE,
    MATCH_COLOR,
    MONO,
    MUTED_TEXT,
    PAD_COLOR,
    TEXT_COLOR,
    THRESHOLD_COLOR,
    TRACK_PALETTE,
    as_columns,
    chars_per_cell,
    colours_of,
    fmt,
    is_dark,
    token_labels,
    unit_colour,
)
from server.fetch import Window
from server.inputs import selected_range, tapped
from server.surprisal_view import SURPRISAL_PALETTE

PLOT_WIDTH = 1140
LINE_HEIGHT = 300
PLOT_BORDER_LEFT = 70
TOKEN_COLUMNS = (
    "x", "left", "right", "text", "full", "doc", "track", "track_fill", "track_text",
    "surprisal", "surprisal_fill", "surprisal_text", "surprisal_text_color",
)
STRIP_ROW = 1.0
"""Height of the token plot's strip rows below the tokens (track, surprisal), in y units."""
SURPRISAL_TEXT_PX = 26
"""Narrowest token cell (pixels) that shows its surprisal as a number (e.g. "12.3") in the
strip; narrower cells show it on hover only."""


ARC_COLUMNS = ("x0", "x1", "cx", "cy", "alpha", "weight")
ARC_HEIGHT = 0.9
"""Room above the token row for the attention arcs (in the row's height)."""
ARC_MIN_WEIGHT = 0.25
"""Weakest strongest-look drawn as an arc (a token that spreads its attention draws none)."""
ARC_COLOR = "#6f42c1"


def attention_arcs(window: Window) -> dict[str, np.ndarray]:
    """Arcs from each token of the window to the position it attends to most, inside the
    window, when that weight is at least ARC_MIN_WEIGHT; taller for farther looks."""
    if window.attention is None:
        return {k: np.zeros(0) for k in ARC_COLUMNS}
    offsets, weights = window.attention
    pos = np.arange(window.start, window.end)
    target = pos - offsets
    keep = (np.isfinite(offsets) & np.isfinite(weights) & (weights >= ARC_MIN_WEIGHT)
            & (target >= window.start))
    x1, x0, w = pos[keep].astype(float), target[keep].astype(float), weights[keep]
    span = np.maximum(1.0, x1 - x0)
    height = 1.0 + ARC_HEIGHT * np.minimum(1.0, 0.15 + span / 24)
    return {"x0": x0, "x1": x1, "cx": (x0 + x1) / 2, "cy": height,
            "alpha": 0.25 + 0.75 * w, "weight": w}


class SelectView:
    """The select plot, the token row and the list of S. `show_*` methods update them."""

    def __init__(self, *, char_level: bool, has_track: bool, has_surprisal: bool = False,
                 has_attention: bool = False) -> None:
        self.char_level = char_level
        self.window: Window | None = None
        self.units: tuple[int, ...] = ()
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.on_threshold: Callable[[float], None] | None = None
        self.fixed_y: tuple[float, float] | None = None
        """A y range kept for every window (the state's values), or None: fit each window."""
        self._quiet = False

        self.tokens = ColumnDataSource({k: [] for k in TOKEN_COLUMNS}, name="select-tokens")
        self.lines = ColumnDataSource({"xs": [], "ys": [], "unit": []}, name="select-lines")
        self.set_lines = ColumnDataSource(
            {"xs": [], "ys": [], "unit": [], "color": []}, name="select-set-lines"
        )
        self.bounds = ColumnDataSource({"x": [], "label": [], "y": []}, name="select-bounds")

        x_range = Range1d(-0.5, 59.5)
        self.y_range = Range1d(-1.05, 1.05)

        # --- line plot ---------------------------------------------------------------------
        fig = figure(
            name="select-plot", width=PLOT_WIDTH, height=LINE_HEIGHT, x_range=x_range,
            y_range=self.y_range, tools="", toolbar_location=None,
            min_border_left=PLOT_BORDER_LEFT, min_border_right=10, min_border_bottom=4,
            output_backend="canvas",
        )
        self.fig = fig
        fig.title.text = "units"
        fig.title.text_font_size = "13px"
        fig.xaxis.visible = False
        fig.xgrid.visible = False
        fig.ygrid.grid_line_alpha = 0.4
        fig.yaxis.axis_label = "value"
        fig.outline_line_color = "#d0d7de"
        self.pad_left_box = BoxAnnotation(
            fill_color=PAD_COLOR, fill_alpha=0.14, line_color=None, visible=False,
            name="pad-left-box", left=0.0, right=0.0,
        )
        self.pad_right_box = BoxAnnotation(
            fill_color=PAD_COLOR, fill_alpha=0.14, line_color=None, visible=False,
            name="pad-right-box", left=0.0, right=0.0,
        )
        self.span_box = BoxAnnotation(
            fill_color=ACCENT, fill_alpha=0.10, line_color=ACCENT, line_alpha=0.6,
            line_dash="dashed", visible=False, name="span-box", left=0.0, right=0.0,
        )
        self.focus_box = BoxAnnotation(
            fill_color=MATCH_COLOR, fill_alpha=0.14, line_color=MATCH_COLOR, line_alpha=0.8,
            visible=False, name="focus-box", left=0.0, right=0.0,
        )
        # (the boxes start at numbers, not at their default frame edges: replacing a model
        # value would make Bokeh walk the whole document's model graph on every update)
        for box in (self.pad_left_box, self.pad_right_box, self.span_box, self.focus_box):
            fig.add_layout(box)
        # the plot brushes its own invisible quads (not the token row's source): a brush in
        # the token row then repaints only the token row, not 512 lines, while the query runs
        self.plot_quads = ColumnDataSource({"left": [], "right": []}, name="select-plot-quads")
        self.line_quads = fig.quad(
            left="left", right="right", bottom=-1e4, top=1e4, source=self.plot_quads,
            fill_alpha=0.0, line_alpha=0.0, selection_fill_alpha=0.0, selection_line_alpha=0.0,
            nonselection_fill_alpha=0.0, nonselection_line_alpha=0.0,
        )
        fig.vspan(x="x", source=self.bounds, line_color="#57606a", line_dash="dotted",
                  line_width=1.2)
        fig.text(x="x", y="y", text="label", source=self.bounds, text_font_size="11px",
                 text_color="#57606a", x_offset=4, y_offset=2, text_baseline="top")
        self.all_renderer = fig.multi_line(
            xs="xs", ys="ys", source=self.lines, line_color=FADED_LINE, line_alpha=0.28,
            line_width=1, hover_line_color=TEXT_COLOR, hover_line_alpha=0.9,
            hover_line_width=2, selection_line_color=FADED_LINE, selection_line_alpha=0.28,
            nonselection_line_alpha=0.28, nonselection_line_color=FADED_LINE,
        )
        self.set_renderer = fig.multi_line(
            xs="xs", ys="ys", source=self.set_lines, line_color="color", line_alpha=0.95,
            line_width=2.4, hover_line_width=4, hover_line_color="color",
            selection_line_color="color", nonselection_line_alpha=0.95,
            nonselection_line_color="color",
        )
        self.threshold_span = Span(
            location=0.5, dimension="width", line_color=THRESHOLD_COLOR, line_width=2,
            line_dash="dashed", editable=True, name="threshold-span",
        )
        fig.add_layout(self.threshold_span)
        self.line_select = BoxSelectTool(
            renderers=[self.line_quads], dimensions="width", name="select-brush",
            description="Brush a span of tokens",
        )
        self.line_tap = TapTool(renderers=[self.set_renderer, self.all_renderer],
                                description="Open a unit in the neuron view")
        hover = HoverTool(renderers=[self.set_renderer, self.all_renderer],
                          tooltips=[("unit", "@unit"), ("value", "$y{0.000}")],
                          line_policy="nearest", description="Unit under the mouse")
        fig.add_tools(self.line_select, self.line_tap, hover)
        fig.toolbar.active_drag = self.line_select

        # --- token row ---------------------------------------------------------------------
        self.has_track = has_track
        self.has_surprisal = has_surprisal
        strips = int(has_track) + int(has_surprisal)
        track_y = -0.55
        self.surprisal_y = track_y - STRIP_ROW * int(has_track)
        height = 70 + 30 * strips + (0 if char_level else 100) + (50 if has_attention else 0)
        top = 1.05 + (ARC_HEIGHT if has_attention else 0.0)
        tok = figure(
            name="token-plot", width=PLOT_WIDTH, height=height, x_range=x_range,
            y_range=Range1d(-0.15 - 0.95 * strips, top), tools="",
            toolbar_location=None, min_border_left=PLOT_BORDER_LEFT, min_border_right=10,
            min_border_top=0, output_backend="canvas",
        )
        self.tok_fig = tok
        # an attention model: an arc from each token to where it looks most (above the row)
        self.arcs = ColumnDataSource({k: [] for k in ARC_COLUMNS}, name="select-attention-arcs")
        tok.quadratic(x0="x0", y0=1.0, x1="x1", y1=1.0, cx="cx", cy="cy", source=self.arcs,
                      line_color=ARC_COLOR, line_alpha="alpha", line_width=1.5)
        tok.ygrid.visible = False
        tok.xgrid.visible = False
        tok.outline_line_color = "#d0d7de"
        tok.xaxis.axis_label = "token position"
        tok.xaxis.major_label_text_font_size = "10px"
        tok.xaxis.formatter = CustomJSTickFormatter(code="return tick.toFixed(0)")
        labels = {0.5: "tokens"}
        if has_track:
            labels[track_y] = "track"
        if has_surprisal:
            labels[self.surprisal_y] = "surprisal"
        tok.yaxis.ticker = FixedTicker(ticks=list(labels))
        tok.yaxis.major_label_overrides = labels
        tok.yaxis.major_tick_line_color = None
        tok.yaxis.major_label_text_font_size = "11px"
        self.token_quads = tok.quad(
            left="left", right="right", bottom=0.02, top=0.98, source=self.tokens,
            fill_color="#ffffff", fill_alpha=1.0, line_color="#eaeef2", line_alpha=1.0,
            selection_fill_color=ACCENT, selection_fill_alpha=0.28, selection_line_color=ACCENT,
            nonselection_fill_alpha=1.0, nonselection_fill_color="#ffffff",
            nonselection_line_alpha=1.0, nonselection_line_color="#eaeef2",
        )
        angle = 0.0 if char_level else math.pi / 2
        self.token_text = tok.text(
            x="x", y=0.5 if char_level else 0.06, text="text", source=self.tokens,
            text_align="center" if char_level else "left", text_baseline="middle",
            text_font=value(MONO), text_font_size="13px", text_color=TEXT_COLOR, angle=angle,
            nonselection_text_alpha=1.0, selection_text_color=TEXT_COLOR,
        )
        if has_track:
            tok.rect(x="x", y=-0.55, width=0.96, height=0.9, source=self.tokens,
                     fill_color="track_fill", line_color=None, nonselection_fill_alpha=1.0)
            tok.text(x="x", y=-0.55, text="track_text", source=self.tokens,
                     text_align="center", text_baseline="middle", text_font_size="10px",
                     text_color="#ffffff", nonselection_text_alpha=1.0)
        if has_surprisal:
            tok.rect(x="x", y=self.surprisal_y, width=0.96, height=0.9, source=self.tokens,
                     fill_color="surprisal_fill", line_color=None, nonselection_fill_alpha=1.0,
                     name="surprisal-strip")
            tok.text(x="x", y=self.surprisal_y, text="surprisal_text", source=self.tokens,
                     text_align="center", text_baseline="middle", text_font_size="10px",
                     text_color="surprisal_text_color", nonselection_text_alpha=1.0)
        tooltips = [("token", "@full"), ("position", "@x"), ("document", "@doc")]
        if has_surprisal:
            tooltips.append(("surprisal", "@surprisal{0.00} nats"))
        self.token_select = BoxSelectTool(
            renderers=[self.token_quads], dimensions="width", name="token-brush",
            description="Brush a span of tokens",
        )
        self.token_tap = TapTool(renderers=[self.token_quads], description="Select one token")
        tok.add_tools(self.token_select, self.token_tap, HoverTool(
            renderers=[self.token_quads], tooltips=tooltips,
        ))
        tok.toolbar.active_drag = self.token_select

        self.pattern_div = Div(
            name="pattern-list", width=230, height=LINE_HEIGHT,
            text=self._pattern_html(None, ()), styles={"overflow-y": "auto"},
        )

    def wire(self) -> None:
        """Listen to the page: brushes, taps on lines, the dragged threshold line (once per
        copy of the view: a copy's models start without callbacks)."""
        self.tokens.selected.on_change("indices", self._on_selected)
        self.plot_quads.selected.on_change("indices", self._on_plot_brushed)
        self.set_lines.selected.on_change("indices", partial(self._on_line_tapped, self.set_lines))
        self.lines.selected.on_change("indices", partial(self._on_line_tapped, self.lines))
        self.threshold_span.on_change("location", self._on_span_dragged)

    # --- events ------------------------------------------------------------------------------

    def _on_plot_brushed(self, attr: str, old: Sequence[int], new: Sequence[int]) -> None:
        """A brush in the line plot: select those tokens in the token row (which queries)."""
        if self._quiet or not new:
            return
        self._quiet = True
        try:
            self.plot_quads.selected.indices = []
        finally:
            self._quiet = False
        span = selected_range(new, len(self.plot_quads.data["left"]))
        if span is not None:
            self.tokens.selected.indices = list(range(span[0], span[1] + 1))

    def _on_selected(self, attr: str, old: Sequence[int], new: Sequence[int]) -> None:
        if self._quiet or not new or self.window is None:
            return
        span = selected_range(new, self.window.end - self.window.start)
        if span is None:
            return
        first, last = span
        if self.on_span is not None:
            self.on_span(self.window.start + first, self.window.start + last + 1)

    def _on_line_tapped(self, source: ColumnDataSource, attr: str, old: Sequence[int],
                        new: Sequence[int]) -> None:
        if self._quiet or not new:
            return
        unit = tapped(source, "unit", new)
        self._quiet = True
        try:
            source.selected.indices = []
        finally:
            self._quiet = False
        if unit is not None and self.on_unit is not None:
            self.on_unit(int(unit))

    def _on_span_dragged(self, attr: str, old: float, new: float) -> None:
        if self._quiet or self.on_threshold is None or new is None:
            return
        self.on_threshold(round(float(new), 3))

    # --- updates -----------------------------------------------------------------------------

    def set_threshold(self, threshold: float, sign: int) -> None:
        """Move the threshold line (at -threshold for a negative pattern)."""
        self._quiet = True
        try:
            self.threshold_span.location = float(threshold) * (1 if sign > 0 else -1)
        finally:
            self._quiet = False
        self._fit_y()

    def set_fixed_y(self, span: tuple[float, float] | None) -> None:
        """Keep the y axis at `span` (with the threshold) for every window; None: fit each
        window to its own values."""
        self.fixed_y = span
        self._fit_y()

    def _fit_y(self) -> None:
        """Fit the y range to the window: most values, every unit of S, the threshold; or
        the fixed range with the threshold.

        The 5th to 95th percentile of all values keeps a few extreme units from squashing
        the rest (their lines run off the plot); S is always fully visible.
        """
        loc = float(self.threshold_span.location or 0.0)
        low, high = min(-1.0, loc), max(1.0, loc)
        window = self.window
        if self.fixed_y is not None:
            low, high = min(self.fixed_y[0], loc), max(self.fixed_y[1], loc)
        elif window is not None and window.values.size:
            values = window.values[np.isfinite(window.values)]
            if values.size:
                q_low, q_high = np.quantile(values, [0.05, 0.95])
                low, high = min(low, float(q_low)), max(high, float(q_high))
            units = [u for u in self.units if u < window.values.shape[0]]
            if units:
                chosen = window.values[units]
                low = min(low, float(np.nanmin(chosen)))
                high = max(high, float(np.nanmax(chosen)))
        pad = 0.06 * (high - low)
        self.y_range.start, self.y_range.end = low - pad, high + pad
        if self.window is not None and len(self.bounds.data["y"]):
            self.bounds.data["y"] = [self.y_range.end] * len(self.bounds.data["y"])

    def show_window(self, window: Window, track_range: tuple[float, float] | None) -> None:
        """Draw a window: tokens, lines of every unit, document boundaries."""
        self.window = window
        n = window.end - window.start
        xs = np.arange(window.start, window.end)
        cell_px = (PLOT_WIDTH - PLOT_BORDER_LEFT - 20) / max(1, n)
        # labels fit their cells: a smaller font for narrow cells, none below 5 px
        font = float(np.clip(cell_px * (0.8 if self.char_level else 0.75), 7, 13))
        self.token_text.glyph.text_font_size = f"{font:.0f}px"
        if self.char_level:
            max_chars = chars_per_cell(cell_px, font) if cell_px >= 5 else 0
        else:
            max_chars = int((self.tok_fig.height - 60) // (font * 0.62)) if cell_px >= 7 else 0
        track = window.track
        if track is not None and track_range is not None:
            track_fill = colours_of(track, *track_range, TRACK_PALETTE)
            track_text = [fmt(v, 3) if np.isfinite(v) else "" for v in track]
            if cell_px < 16:
                track_text = [""] * n
        else:
            track_fill, track_text = ["#ffffff"] * n, [""] * n
        surprisal = self._surprisal_columns(window, n, show_text=cell_px >= SURPRISAL_TEXT_PX)
        self._quiet = True
        try:
            self.tokens.selected.indices = []
            self.tokens.data = as_columns({
                "x": xs,
                "left": xs - 0.5,
                "right": xs + 0.5,
                "text": token_labels(window.texts, max_chars, char_level=self.char_level)
                if max_chars else [""] * n,
                "full": [repr(t)[1:-1] for t in window.texts],
                "doc": window.docs,
                "track": np.full(n, np.nan) if track is None else track,
                "track_fill": track_fill,
                "track_text": track_text,
                **surprisal,
            })
        finally:
            self._quiet = False
        self.arcs.data = attention_arcs(window)
        self.plot_quads.data = {"left": xs - 0.5, "right": xs + 0.5}
        self.lines.data = {
            "xs": [xs] * window.values.shape[0],
            "ys": list(window.values),
            "unit": np.arange(window.values.shape[0]),
        }
        self.fig.x_range.start, self.fig.x_range.end = window.start - 0.5, window.end - 0.5
        self.bounds.data = {
            "x": [b[0] - 0.5 for b in window.doc_bounds],
            "label": [b[2] for b in window.doc_bounds],
            "y": [self.y_range.end] * len(window.doc_bounds),
        }
        self.fig.title.text = (
            f"{window.state}: all {window.values.shape[0]} units over tokens "
            f"[{window.start}, {window.end})"
        )
        self._draw_set()

    @staticmethod
    def _surprisal_columns(window: Window, n: int, show_text: bool) -> dict[str, list | np.ndarray]:
        """The token row's surprisal columns: value, cell colour, label and its colour."""
        values = window.surprisal
        if values is None or window.surprisal_range is None:
            return {"surprisal": np.full(n, np.nan), "surprisal_fill": ["#ffffff"] * n,
                    "surprisal_text": [""] * n, "surprisal_text_color": [TEXT_COLOR] * n}
        fill = colours_of(values, *window.surprisal_range, SURPRISAL_PALETTE)
        text = [f"{v:.1f}" if show_text and np.isfinite(v) else "" for v in values]
        return {
            "surprisal": np.asarray(values, dtype=np.float64),
            "surprisal_fill": fill,
            "surprisal_text": text,
            "surprisal_text_color": ["#ffffff" if is_dark(c) else TEXT_COLOR for c in fill],
        }

    def show_pattern(self, pattern: object | None, span: tuple[int, int] | None,
                     pad: tuple[int, int], doc_bounds: tuple[int, int] | None) -> None:
        """Highlight the units of S (None: no pattern) and the span with its padding."""
        self.units = tuple(pattern.units) if pattern is not None else ()
        self._draw_set()
        if span is None:
            for box in (self.span_box, self.pad_left_box, self.pad_right_box):
                box.visible = False
        else:
            start, end = span
            first, stop = doc_bounds if doc_bounds is not None else (start - pad[0], end + pad[1])
            self.span_box.update(left=start - 0.5, right=end - 0.5, visible=True)
            left = max(first, start - pad[0])
            right = min(stop, end + pad[1])
            self.pad_left_box.update(left=left - 0.5, right=start - 0.5, visible=left < start)
            self.pad_right_box.update(left=end - 0.5, right=right - 0.5, visible=right > end)
        self.pattern_div.text = self._pattern_html(pattern, self.units)

    def show_focus(self, focus: tuple[int, int] | None) -> None:
        """Outline a span (a match the user jumped to)."""
        if focus is None:
            self.focus_box.visible = False
        else:
            self.focus_box.update(left=focus[0] - 0.5, right=focus[1] - 0.5, visible=True)

    def select_span(self, span: tuple[int, int] | None) -> None:
        """Mark the tokens of `span` selected (without firing a new query)."""
        if self.window is None:
            return
        indices: list[int] = []
        if span is not None:
            a = max(span[0], self.window.start) - self.window.start
            b = min(span[1], self.window.end) - self.window.start
            indices = list(range(a, b))
        self._quiet = True
        try:
            self.tokens.selected.indices = indices
        finally:
            self._quiet = False

    def _draw_set(self) -> None:
        window = self.window
        self._fit_y()
        if window is None or not self.units:
            self.set_lines.data = {"xs": [], "ys": [], "unit": [], "color": []}
            return
        xs = np.arange(window.start, window.end)
        units = [u for u in self.units if u < window.values.shape[0]]
        self.set_lines.data = {
            "xs": [xs] * len(units),
            "ys": [window.values[u] for u in units],
            "unit": np.asarray(units, dtype=np.int64),
            "color": np.array([unit_colour(i) for i in range(len(units))], dtype=str),
        }

    @staticmethod
    def _pattern_html(pattern: object | None, units: tuple[int, ...]) -> str:
        if pattern is None:
            return (
                "<div class='panel-title'>Pattern S</div>"
                f"<div class='hint' style='color:{MUTED_TEXT}'>Brush tokens below or in the "
                "plot to select a span: S is the set of units above the threshold on the "
                "whole span and below it on the padding.</div>"
            )
        chips = "".join(
            f"<span class='chip' style='border-color:{unit_colour(i)};"
            f"color:{unit_colour(i)}'>{u}</span>"
            for i, u in enumerate(units)
        )
        test = "≥ " + fmt(pattern.threshold) if pattern.sign > 0 else "≤ −" + fmt(pattern.threshold)
        body = chips if units else (
            "<div class='hint'>No unit is on over the whole span and off on its padding. "
            "Lower the threshold, shorten the span or reduce the padding.</div>"
        )
        return (
            f"<div class='panel-title'>Pattern S: {len(units)} unit{'s' if len(units) != 1 else ''}"
            f"</div><div class='hint'>{pattern.state}, x {test}, span [{pattern.start}, "
            f"{pattern.end}), padding {pattern.pad_left}/{pattern.pad_right}</div>"
            f"<div class='chips'>{body}</div>"
            "<div class='hint'>Click a line to open its unit.</div>"
        )

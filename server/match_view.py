"""Match view: the ranked matches of the pattern S aligned on their start, each a row of
tokens on a heat strip of match counts (how many units of S are on at each token), with the
annotation track under it; or, in "nearest states" mode, the FAISS nearest neighbours of the
span's mean state. Tapping a row moves the select view there.
"""

from __future__ import annotations

from collections.abc import Callable

from bokeh.layouts import column, row
from bokeh.models import Button, ColumnDataSource, Div, RadioButtonGroup, Range1d, Spinner
from bokeh.plotting import figure

from lstmsearch.thresholds import Suggestion
from server.display import (
    ACCENT,
    COUNT_PALETTE,
    MUTED_TEXT,
    TRACK_PALETTE,
    StripList,
    StripRow,
    fmt,
    gradient_legend,
    place_label,
)
from server.fetch import MatchRow, PatternResult
from server.inputs import chosen_index

MODES = ("match", "nearest", "attention")
RIGHT_CELLS, RIGHT_WORDS = 22, 10
"""Cells shown right of a match's start (character / word tokens): the rest is cut."""
MATCH_TITLE = ("Matches, best first, aligned on their start "
               "(row label: rank. |A∩S|/|S| +extra units, document:position)")
NEAREST_TITLE = ("Nearest stored states to the span's mean state "
                 "(row label: rank. distance, document:position)")
ATTENTION_TITLE = ("Spans whose tokens attend like the span's "
                   "(row label: rank. mean cosine of the attention, document:position)")
MODE_LABELS = ["Pattern match", "Nearest states (FAISS)", "Attends like (attention)"]
MAX_LENGTH = 1000
"""The largest match length the length controls offer."""


class MatchView:
    """The match list, its summary and the length histogram."""

    def __init__(self, *, char_level: bool, width: int = 1140,
                 has_attention: bool = False) -> None:
        self.char_level = char_level
        self.on_row: Callable[[MatchRow], None] | None = None
        self.on_mode: Callable[[str], None] | None = None
        self.on_suggestion: Callable[[float, int], None] | None = None
        self.rows: tuple[MatchRow, ...] = ()
        self.suggestions: tuple[Suggestion, ...] = ()
        right = RIGHT_CELLS if char_level else RIGHT_WORDS
        self.strips = StripList(
            "match", title=MATCH_TITLE, width=width - 250, max_rows=50, left=-5, right=right,
            char_level=char_level, value_name="units of S on", label_width=300,
        )
        self.summary = Div(name="match-summary", width=width - 260, text=self._idle_html())
        self.suggest = Button(label="use the suggested threshold", visible=False, width=240,
                              name="use-suggestion", button_type="success")
        # the attention mode only for an index of an attention model
        labels = MODE_LABELS if has_attention else MODE_LABELS[:2]
        self.mode = RadioButtonGroup(labels=labels, active=0, name="match-mode")
        # match lengths: 0 leaves the default (at least 2 tokens for a span of 2 or more)
        self.min_length = Spinner(title="Min tokens (0: auto)", low=0, high=MAX_LENGTH, step=1,
                                  value=0, width=140, name="match-min-length")
        self.length = Spinner(title="Exact tokens (0: any)", low=0, high=MAX_LENGTH, step=1,
                              value=0, width=140, name="match-length")
        self.hist_source = ColumnDataSource({"length": [], "count": []}, name="length-hist-data")
        hist = figure(
            name="length-hist", title="Candidate lengths", width=240, height=200,
            tools="", toolbar_location=None, x_range=Range1d(0.5, 10.5),
            y_range=Range1d(0, 1), output_backend="canvas",
        )
        hist.vbar(x="length", top="count", width=0.8, source=self.hist_source,
                  fill_color=ACCENT, line_color=None)
        hist.xaxis.axis_label = "tokens"
        hist.yaxis.axis_label = "candidates"
        hist.title.text_font_size = "12px"
        hist.xgrid.visible = False
        self.hist = hist
        self.legend = Div(name="match-legend", width=230, text="")
        self.layout = column(
            row(self.summary, self.suggest),
            row(self.mode, self.min_length, self.length),
            row(self.strips.fig, column(self.legend, self.hist)),
            name="match-view",
        )

    def wire(self) -> None:
        """Listen to the page: taps on rows, the mode (once per copy of the view)."""
        self.strips.cells.selected.on_change("indices", self._on_tap)
        self.mode.on_change("active", self._on_mode)
        self.suggest.on_click(self._on_suggest)

    @property
    def mode_name(self) -> str:
        return MODES[chosen_index(self.mode.active, len(self.mode.labels))]

    def _on_mode(self, attr: str, old: int, new: int) -> None:
        if self.on_mode is not None:
            self.on_mode(MODES[chosen_index(new, len(self.mode.labels))])

    def _on_suggest(self) -> None:
        if self.suggestions and self.on_suggestion is not None:
            first = self.suggestions[0]
            self.on_suggestion(first.threshold, first.sign)

    def _on_tap(self, attr: str, old: list[int], new: list[int]) -> None:
        if not new:
            return
        strip = self.strips.tapped_row()
        if strip is None or self.on_row is None:
            return
        match_row = strip.info.get("row")
        if isinstance(match_row, MatchRow):
            self.on_row(match_row)

    # --- updates -----------------------------------------------------------------------------

    def show_empty(self, suggestions: tuple[Suggestion, ...]) -> None:
        """S is empty: why, and the thresholds that would select something."""
        hints = [f"θ = {g.threshold:g} with {'x ≥ θ' if g.sign > 0 else 'x ≤ −θ'} turns on "
                 f"unit{'s' if len(g.units) > 1 else ''} {', '.join(map(str, g.units[:8]))}"
                 f"{' …' if len(g.units) > 8 else ''}" for g in suggestions]
        message = ("S is empty: no unit is on over the whole span and off on its padding. " + (
            "Try " + "; or ".join(hints) + "." if hints else
            "No threshold of either sign selects a unit here: brush a shorter span or reduce "
            "the padding."))
        self.show_idle(message)
        self.suggestions = suggestions
        if suggestions:
            first = suggestions[0]
            self.suggest.label = (f"use θ = {first.threshold:g}, "
                                  f"{'x ≥ θ' if first.sign > 0 else 'x ≤ −θ'}")
        self.suggest.visible = bool(suggestions)

    def show_idle(self, message: str | None = None) -> None:
        """No query yet (or S is empty): an explanation instead of rows."""
        self.rows = ()
        self.suggestions = ()
        if self.suggest.visible:
            self.suggest.visible = False
        self.summary.text = self._idle_html(message)
        self.strips.show([], low=0, high=1, palette=COUNT_PALETTE)
        self.hist_source.data = {"length": [], "count": []}

    def show(self, result: PatternResult, track_name: str | None,
             track_range: tuple[float, float] | None) -> None:
        """Draw the ranked rows of a pattern match or a nearest-state search, then the rest."""
        self.show_rows(result, track_range)
        self.show_summary(result, track_name, track_range)

    def show_rows(self, result: PatternResult, track_range: tuple[float, float] | None) -> None:
        """The ranked rows (what the user waits for)."""
        self.rows = result.rows
        self.suggestions = ()
        if self.suggest.visible:
            self.suggest.visible = False
        nearest = result.pattern is None
        size = 1 if nearest else len(result.pattern.units)
        strip_rows = []
        attention = nearest and self.mode_name == "attention"
        for r in result.rows:
            if attention:
                label = f"{r.rank:>2}. cos={fmt(r.score, 3)}  {place_label(r.doc_name, r.offset)}"
            elif nearest:
                label = f"{r.rank:>2}. d={fmt(r.score, 3)}  {place_label(r.doc_name, r.offset)}"
            else:
                tag = " (query)" if r.is_query else ""
                label = (f"{r.rank:>2}. {r.overlap}/{size} +{r.extra}  "
                         f"{place_label(r.doc_name, r.offset)}{tag}")
            strip_rows.append(StripRow(
                label=label, anchor=r.anchor, positions=r.positions, texts=r.texts,
                values=r.values, emphasis=r.emphasis, document=r.document, track=r.track,
                info={"row": r},
            ))
        self.strips.show(strip_rows, low=0, high=max(1, size), palette=COUNT_PALETTE,
                         track_range=track_range,
                         left=-5, right=RIGHT_CELLS if self.char_level else RIGHT_WORDS)
        title = ATTENTION_TITLE if attention else NEAREST_TITLE if nearest else MATCH_TITLE
        if self.strips.fig.title.text != title:
            self.strips.fig.title.text = title
        self.show_mode(nearest)

    def show_mode(self, nearest: bool) -> None:
        """Show only the controls and legends of the mode: nearest states have no pattern,
        so no counts of S, match lengths or candidate histogram."""
        for model in (self.legend, self.hist, self.min_length, self.length):
            if model.visible == nearest:
                model.visible = not nearest

    def show_summary(self, result: PatternResult, track_name: str | None,
                     track_range: tuple[float, float] | None) -> None:
        """The summary line, the legend and the length histogram of a result."""
        nearest = result.pattern is None
        size = 1 if nearest else len(result.pattern.units)
        legend = gradient_legend("cells: how many units of S are on", COUNT_PALETTE,
                                 "none", "all of S")
        if track_range is not None:
            legend += gradient_legend(f"strip under tokens: track “{track_name}”",
                                      TRACK_PALETTE, fmt(track_range[0]), fmt(track_range[1]))
        if legend != self.legend.text:  # unchanged text: no message, no re-layout
            self.legend.text = legend
        if nearest:
            what = ("spans whose tokens attend like the span's"
                    if self.mode_name == "attention"
                    else "nearest stored states to the span's mean state")
            self.summary.text = (
                f"<b>{len(result.rows)}</b> {what} "
                f"<span style='color:{MUTED_TEXT}'>({1000 * result.seconds:.0f} ms)</span>"
            )
            self.hist_source.data = {"length": [], "count": []}
            return
        mr = result.result
        hist = mr.length_histogram or {}  # None until the candidates are counted
        lengths = sorted(hist)
        counts = [hist[k] for k in lengths]
        self.hist_source.data = {"length": lengths, "count": counts}
        if lengths:
            self.hist.x_range.start = 0.5
            self.hist.x_range.end = min(max(lengths), 40) + 0.5
            self.hist.y_range.end = max(counts) * 1.05
        total = "…" if mr.n_candidates is None else f"{mr.n_candidates:,}"
        self.summary.text = (
            f"<b>{len(result.rows)}</b> best of <b>{total}</b> candidate spans "
            f"for |S| = <b>{size}</b> "
            f"<span style='color:{MUTED_TEXT}'>({1000 * result.seconds:.0f} ms)</span>. "
            f"<span style='color:{MUTED_TEXT}'>Click a row to show it in the select view.</span>"
        )

    @staticmethod
    def _idle_html(message: str | None = None) -> str:
        text = message or (
            "Brush a span of tokens in the select view: the units on over the whole span form "
            "the pattern S, and every span of the corpus where S switches on the same way is "
            "listed here, best first."
        )
        return f"<span style='color:{MUTED_TEXT}'>{text}</span>"

    def selected_rank(self) -> int | None:
        """Rank of the tapped row (for tests)."""
        strip = self.strips.tapped_row()
        return None if strip is None else strip.info["row"].rank


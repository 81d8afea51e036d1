"""Neuron view: one unit of one state. Its value histogram with the threshold, its statistics,
its top activating contexts and the places where it is above the threshold, each as rows of
tokens coloured by the unit's value; and, when the index has an annotation track, the units
that follow that track most closely.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    NumberFormatter,
    NumericInput,
    Range1d,
    Span,
    Spinner,
    TableColumn,
)
from bokeh.plotting import figure

from server.ablation_panel import AblationPanel
from server.display import (
    ACCENT,
    DIVERGING_PALETTE,
    MUTED_TEXT,
    THRESHOLD_COLOR,
    StripList,
    StripRow,
    fmt,
    gradient_legend,
    place_label,
    set_rows,
)
from server.fetch import MatchRow, NeuronData
from server.inputs import bounded, finite, tapped
from server.probe_panel import ProbePanel

CONTEXT_CHARS, CONTEXT_WORDS = 8, 4
"""Cells shown each side of a row's anchor, for character / word tokens (a hit run longer
than this is cut): word cells need room for a word."""


class NeuronView:
    """Unit picker, statistics, histogram, top contexts, threshold hits, track correlation."""

    def __init__(self, *, char_level: bool, dim: int, width: int = 1140) -> None:
        self.on_unit: Callable[[int], None] | None = None
        self.on_row: Callable[[MatchRow], None] | None = None
        self.on_threshold: Callable[[float], None] | None = None
        self._quiet = False
        self.data: NeuronData | None = None
        self.width = width
        self.unit = Spinner(title="Unit", low=0, high=max(0, dim - 1), step=1, value=0,
                            width=110, name="neuron-unit")
        self.threshold = NumericInput(title="θ of this unit (default: its 1% tail)", value=None,
                                      mode="float", width=200, name="neuron-threshold")
        self.stats = Div(name="neuron-stats", width=330, text="")
        self.hist_source = ColumnDataSource(
            {"left": [], "right": [], "count": [], "color": []}, name="neuron-hist-data"
        )
        hist = figure(
            name="neuron-hist", title="Distribution of the unit's values", width=width - 680,
            height=250, tools="", toolbar_location=None, x_range=Range1d(-1, 1),
            y_range=Range1d(0, 1), output_backend="canvas",
        )
        hist.quad(left="left", right="right", bottom=0, top="count", source=self.hist_source,
                  fill_color="color", line_color="#ffffff", line_width=0.5)
        hist.xaxis.axis_label = "value"
        hist.yaxis.axis_label = "tokens"
        hist.xgrid.visible = False
        hist.title.text_font_size = "12px"
        self.hist_threshold = Span(location=0.5, dimension="height", line_color=THRESHOLD_COLOR,
                                   line_dash="dashed", line_width=2, editable=True,
                                   name="neuron-threshold-span")
        hist.add_layout(self.hist_threshold)
        self.hist = hist
        self.corpus_source = ColumnDataSource({"left": [], "right": [], "count": []},
                                              name="neuron-corpus-data")
        corpus = figure(
            name="neuron-corpus", title="Where the unit is on over the corpus", width=width,
            height=130, tools="", toolbar_location=None, x_range=Range1d(0, 1),
            y_range=Range1d(0, 1), output_backend="canvas", min_border_left=60,
        )
        corpus.quad(left="left", right="right", bottom=0, top="count",
                    source=self.corpus_source, fill_color=ACCENT, line_color=None)
        corpus.xaxis.axis_label = "token position"
        corpus.yaxis.axis_label = "tokens on"
        corpus.xgrid.visible = False
        corpus.title.text_font_size = "12px"
        self.corpus = corpus
        self.context = context = CONTEXT_CHARS if char_level else CONTEXT_WORDS
        self.top = StripList(
            "neuron-top", title="Top activating contexts", width=width // 2 - 10,
            max_rows=20, left=-context, right=context, char_level=char_level,
            value_name="value", label_width=200,
        )
        self.hits = StripList(
            "neuron-hits", title="Threshold hits", width=width // 2 - 10, max_rows=20,
            left=-context, right=context, char_level=char_level, value_name="value",
            label_width=200,
        )
        self.legend = Div(name="neuron-legend", width=300, text="")
        self.corr_source = ColumnDataSource({"unit": [], "r": []}, name="neuron-correlation-data")
        self.corr_title = Div(text="", width=300)
        self.corr_table = DataTable(
            source=self.corr_source, name="neuron-correlation", width=300, height=230,
            columns=[TableColumn(field="unit", title="unit"),
                     TableColumn(field="r", title="correlation r",
                                 formatter=NumberFormatter(format="0.000"))],
            index_position=None, visible=False, reorderable=False,
        )
        self.corr_title.visible = False
        self.ablation = AblationPanel()
        self.probe = ProbePanel()
        self.probe.on_unit = self._open
        self.unit.on_change("value", self._on_unit)
        self.threshold.on_change("value", self._on_threshold)
        self.top.cells.selected.on_change("indices", self._on_tap(self.top))
        self.hits.cells.selected.on_change("indices", self._on_tap(self.hits))
        self.corr_source.selected.on_change("indices", self._on_corr)
        self.hist_threshold.on_change("location", self._on_span)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Pick a unit here or click a line "
                   "in the select view. Click a row to show it in the select view.</span>",
                   width=300)
        self.layout = column(
            row(column(row(self.unit, self.threshold), hint, self.stats, self.legend,
                       width=340),
                self.hist, column(self.corr_title, self.corr_table)),
            row(self.ablation.layout, self.probe.layout),  # is the unit used; who else reads
            self.corpus,
            row(self.top.fig, self.hits.fig),
            name="neuron-view",
        )

    # --- events ------------------------------------------------------------------------------

    def _on_unit(self, attr: str, old: int, new: int) -> None:
        unit = bounded(self.unit)
        if not self._quiet and unit is not None and self.on_unit is not None:
            self.on_unit(unit)

    def _open(self, unit: int) -> None:
        if self.on_unit is not None:
            self.on_unit(unit)

    def _on_span(self, attr: str, old: float, new: float) -> None:
        value = finite(new)
        if not self._quiet and value is not None and self.on_threshold is not None:
            self.on_threshold(round(abs(value), 3))

    def _on_threshold(self, attr: str, old: float, new: float) -> None:
        value = finite(new)
        if self._quiet or self.on_threshold is None:
            return
        if value is None:  # emptied or not a number: the threshold in use again
            self.set_threshold(self.data.threshold if self.data else None,
                               self.data.query.sign if self.data else 1)
            return
        self.on_threshold(round(abs(value), 3))

    def _on_tap(self, strips: StripList) -> Callable[[str, list[int], list[int]], None]:
        def handler(attr: str, old: list[int], new: list[int]) -> None:
            strip = strips.tapped_row()
            if new and strip is not None and self.on_row is not None:
                self.on_row(strip.info["row"])

        return handler

    def _on_corr(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.corr_source, "unit", new)
        if unit is not None and self.on_unit is not None:
            self.on_unit(int(unit))

    # --- updates -----------------------------------------------------------------------------

    def set_unit(self, unit: int, dim: int) -> None:
        """Show `unit` in the picker (no event)."""
        self._quiet = True
        try:
            self.unit.high = max(0, dim - 1)
            self.unit.value = unit
        finally:
            self._quiet = False

    def set_threshold(self, threshold: float | None, sign: int) -> None:
        """Show the unit's threshold: the number box and the histogram's line (no event)."""
        self._quiet = True
        try:
            self.threshold.value = threshold
            if threshold is not None:
                self.hist_threshold.location = threshold if sign > 0 else -threshold
        finally:
            self._quiet = False
        if self.data is not None and threshold is not None:
            self._colour_hist(self.data, threshold, sign)

    def show(self, data: NeuronData) -> None:
        """Draw one unit."""
        self.data = data
        q = data.query
        self.ablation.reset((q.state, q.unit))
        low, high = data.value_range
        bound = max(abs(low), abs(high))
        self.legend.text = gradient_legend("cells: the unit's value at the token",
                                           DIVERGING_PALETTE, fmt(-bound), fmt(bound))
        self.hist.y_range.end = max(1, int(data.hist_counts.max())) * 1.05
        self.hist.x_range.start, self.hist.x_range.end = low, high
        self.hist.title.text = f"{q.state} unit {q.unit}: distribution of its values"
        self._colour_hist(data, data.threshold, q.sign)
        self.set_threshold(data.threshold, q.sign)
        s = data.stats
        test = f"≥ {data.threshold:g}" if q.sign > 0 else f"≤ −{data.threshold:g}"
        self.stats.text = (
            f"<div class='panel-title'>{q.state} unit {q.unit}</div>"
            "<table class='stats'>"
            f"<tr><td>mean</td><td>{fmt(s.get('mean', np.nan))}</td>"
            f"<td>std</td><td>{fmt(s.get('std', np.nan))}</td></tr>"
            f"<tr><td>min</td><td>{fmt(s.get('min', np.nan))}</td>"
            f"<td>max</td><td>{fmt(s.get('max', np.nan))}</td></tr>"
            f"<tr><td>median</td><td>{fmt(s.get('q50', np.nan))}</td>"
            f"<td>q99</td><td>{fmt(s.get('q99', np.nan))}</td></tr>"
            "</table>"
            f"<div>on (x {test}) at <b>{data.n_hits:,}</b> tokens</div>"
            f"<div style='color:{MUTED_TEXT}'>{1000 * data.seconds:.0f} ms</div>"
        )
        edges = data.corpus_edges
        self.corpus_source.data = {"left": edges[:-1], "right": edges[1:],
                                   "count": data.corpus_counts}
        self.corpus.x_range.start, self.corpus.x_range.end = float(edges[0]), float(edges[-1])
        self.corpus.y_range.end = max(1, int(data.corpus_counts.max(initial=0))) * 1.05
        self.corpus.title.text = (f"Where x {test} over the corpus: {data.n_hits:,} tokens, "
                                  f"counted in stretches of {edges[1] - edges[0]:,.0f}")
        self.top.fig.title.text = (
            f"Top {len(data.top_rows)} {'lowest' if q.sign < 0 else 'activating'} contexts "
            "(row label: value, document)"
        )
        self.hits.fig.title.text = (
            f"Threshold hits: x {test} at {data.n_hits:,} tokens; the first "
            f"{len(data.hit_rows)} runs (label: run length, document)"
        )
        self.top.show(self._strips(data.top_rows, runs=False), low=-bound, high=bound,
                      palette=DIVERGING_PALETTE, left=-self.context, right=self.context)
        self.hits.show(self._strips(data.hit_rows, runs=True), low=-bound, high=bound,
                       palette=DIVERGING_PALETTE, left=-self.context, right=self.context)

    def show_correlations(self, track: str | None, pairs: list[tuple[int, float]] | None) -> None:
        """The units ranked by correlation with a track (hidden when there is none)."""
        visible = bool(track) and pairs is not None
        self.corr_table.visible = visible
        self.corr_title.visible = visible
        width = self.width - (680 if visible else 360)  # the histogram takes the table's room
        if self.hist.width != width:
            self.hist.width = width
        if visible:
            self.corr_title.text = (
                f"<div class='panel-title'>Units that track “{track}”</div>"
                f"<div class='hint'>by |correlation|; click to open</div>"
            )
            set_rows(self.corr_source, {"unit": [u for u, _ in pairs], "r": [r for _, r in pairs]})

    def _colour_hist(self, data: NeuronData, threshold: float, sign: int) -> None:
        edges, counts = data.hist_edges, data.hist_counts
        centres = (edges[:-1] + edges[1:]) / 2
        on = centres >= threshold if sign > 0 else centres <= -threshold
        self.hist_source.data = {
            "left": edges[:-1].tolist(), "right": edges[1:].tolist(),
            "count": counts.tolist(),
            "color": [ACCENT if o else "#b8c4d0" for o in on],
        }

    @staticmethod
    def _strips(rows: tuple[MatchRow, ...], runs: bool) -> list[StripRow]:
        def label(r: MatchRow) -> str:
            if runs:
                return f"{r.end - r.start:>3} tok  {place_label(r.doc_name, r.offset, 16)}"
            return f"{fmt(r.score, 3):>6}  {place_label(r.doc_name, r.offset, 16)}"

        return [
            StripRow(label=label(r), anchor=r.anchor,
                     positions=r.positions, texts=r.texts, values=r.values,
                     emphasis=r.emphasis, document=r.document, track=r.track,
                     info={"row": r})
            for r in rows
        ]

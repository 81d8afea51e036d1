"""Surprisal view: where does the language model fail? Over the whole index: tokens scored,
mean surprisal and perplexity, a histogram of surprisal, the worst tokens and the worst spans
as rows of tokens coloured by surprisal (click one to show it in the select view), the
hardest vocabulary items and the documents of highest perplexity.

The data is `server.analyses.surprisal`: the index's stored surprisal track, or the index's
model run once over every token when the index stores none.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    NumberFormatter,
    Range1d,
    Span,
    Spinner,
    TableColumn,
)
from bokeh.palettes import YlOrRd9
from bokeh.plotting import figure

from server import analyses
from server.display import (
    ACCENT,
    MUTED_TEXT,
    StripList,
    StripRow,
    colours_of,
    fmt,
    gradient_legend,
    set_rows,
    stylesheet,
    token_label,
)
from server.fetch import MatchRow, Shared
from server.inputs import bounded, tapped

SURPRISAL_PALETTE: tuple[str, ...] = tuple(reversed(YlOrRd9))
"""Surprisal: pale yellow (well predicted) to dark red (the model was surprised)."""
K_MAX = 50
"""Most rows of each list (worst tokens, spans, types, documents)."""
VIEW_WIDTH = 1370
LIST_WIDTH = VIEW_WIDTH // 2 - 10


def scored_label(value: float, doc: int) -> str:
    """A strip row's label: its surprisal (or mean surprisal) and its document."""
    return f"{fmt(value, 3):>6}  doc {doc}"


class SurprisalView:
    """Summary, histogram, worst tokens and spans, hardest types, worst documents."""

    name = "surprisal"
    title = "Surprisal"
    fetch = staticmethod(analyses.surprisal)

    def __init__(self, shared: Shared) -> None:
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.SurprisalData | None = None
        self.char_level = char_level = shared.char_level
        self.context = (analyses.SURPRISAL_CONTEXT_CHARS if char_level
                        else analyses.SURPRISAL_CONTEXT_WORDS)
        style = stylesheet()

        # --- controls and summary ----------------------------------------------------------
        self.k = Spinner(title="Top K", low=1, high=K_MAX, step=1, value=analyses.SURPRISAL_K,
                         width=90, name="surprisal-k")
        width = analyses.SURPRISAL_WIDTH_CHARS if char_level else analyses.SURPRISAL_WIDTH_WORDS
        self.width = Spinner(title="Span width", low=1, high=64, step=1, value=width, width=90,
                             name="surprisal-width")
        self.min_count = Spinner(title="Type seen ≥", low=1, high=100_000, step=1,
                                 value=analyses.SURPRISAL_MIN_COUNT, width=90,
                                 name="surprisal-min-count")
        self.summary = Div(text="", width=330, name="surprisal-summary", stylesheets=[style])
        self.legend = Div(text="", width=330, name="surprisal-legend", stylesheets=[style])

        # --- histogram ---------------------------------------------------------------------
        self.hist_source = ColumnDataSource(
            {"left": [], "right": [], "count": [], "color": []}, name="surprisal-hist-data"
        )
        hist = figure(
            name="surprisal-hist", title="Surprisal of every scored token", width=430,
            height=260, tools="", toolbar_location=None, x_range=Range1d(0, 1),
            y_range=Range1d(0, 1), output_backend="canvas",
        )
        hist.quad(left="left", right="right", bottom=0, top="count", source=self.hist_source,
                  fill_color="color", line_color="#ffffff", line_width=0.5)
        hist.xaxis.axis_label = "surprisal (nats)"
        hist.yaxis.axis_label = "tokens"
        hist.xgrid.visible = False
        hist.title.text_font_size = "12px"
        self.mean_span = Span(location=0.0, dimension="height", line_color=ACCENT,
                              line_dash="dashed", line_width=2, name="surprisal-mean-span")
        hist.add_layout(self.mean_span)
        self.hist = hist

        # --- tables ------------------------------------------------------------------------
        self.types_source = ColumnDataSource(
            {"token": [], "count": [], "mean": [], "share": []}, name="surprisal-types-data"
        )
        self.types_table = DataTable(
            source=self.types_source, name="surprisal-types", width=280, height=260,
            columns=[
                TableColumn(field="token", title="hardest types"),
                TableColumn(field="count", title="count", width=60),
                TableColumn(field="mean", title="mean", width=60,
                            formatter=NumberFormatter(format="0.00")),
                TableColumn(field="share", title="of loss", width=60,
                            formatter=NumberFormatter(format="0.0%")),
            ],
            index_position=None, reorderable=False,
        )
        self.docs_source = ColumnDataSource(
            {"doc": [], "name": [], "tokens": [], "mean": [], "perplexity": [], "start": [],
             "end": []},
            name="surprisal-docs-data",
        )
        self.docs_table = DataTable(
            source=self.docs_source, name="surprisal-docs", width=300, height=260,
            columns=[
                TableColumn(field="name", title="worst documents"),
                TableColumn(field="tokens", title="tokens", width=55),
                TableColumn(field="mean", title="mean", width=50,
                            formatter=NumberFormatter(format="0.00")),
                TableColumn(field="perplexity", title="ppl", width=55,
                            formatter=NumberFormatter(format="0.0")),
            ],
            index_position=None, reorderable=False,
        )

        # --- worst tokens and spans --------------------------------------------------------
        self.tokens = StripList(
            "surprisal-tokens", title="Worst tokens", width=LIST_WIDTH, max_rows=K_MAX,
            left=-self.context, right=self.context, char_level=char_level,
            value_name="surprisal", label_width=120,
        )
        self.spans = StripList(
            "surprisal-spans", title="Worst spans", width=LIST_WIDTH, max_rows=K_MAX,
            left=-self.context, right=width + self.context, char_level=char_level,
            value_name="surprisal", label_width=120,
        )
        for strips in (self.tokens, self.spans):
            self._fit_rows(strips, analyses.SURPRISAL_K)
            strips.cells.selected.on_change("indices", self._on_tap(strips))

        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Over every token of the index. "
                   "Click a row of tokens or a document to show it in the select view.</span>",
                   width=330, name="surprisal-hint")
        for spinner in (self.k, self.width, self.min_count):
            spinner.on_change("value", self._on_spinner)
        self.docs_source.selected.on_change("indices", self._on_doc)
        self.layout = column(
            row(column(row(self.k, self.width, self.min_count), hint, self.summary,
                       self.legend),
                self.hist, self.types_table, self.docs_table),
            row(self.tokens.fig, self.spans.fig),
            name="surprisal-view",
        )

    # --- protocol ----------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.SurprisalParams:
        """The view's settings (the analysis is over the whole index, whatever the window)."""
        spinners = {"k": self.k, "width": self.width, "min_count": self.min_count}
        values = {key: bounded(spinner) for key, spinner in spinners.items()}
        for key, spinner in spinners.items():
            if values[key] is None:
                raise ValueError(f"{spinner.title} must be a whole number from {spinner.low} "
                                 f"to {spinner.high}, got {spinner.value}")
        return analyses.SurprisalParams(context=self.context, **values)

    def show_message(self, text: str) -> None:
        """Explain why there is nothing to show (no model and no stored surprisal, ...)."""
        self.data = None
        self.summary.text = f"<div class='panel-title'>Surprisal</div><div class='error'>{text}</div>"
        self.legend.text = ""
        self.hist_source.data = {"left": [], "right": [], "count": [], "color": []}
        self.types_source.data = {k: [] for k in self.types_source.data}
        self.docs_source.data = {k: [] for k in self.docs_source.data}
        for strips in (self.tokens, self.spans):
            strips.show([], low=0.0, high=1.0, palette=SURPRISAL_PALETTE)

    def show(self, data: analyses.SurprisalData) -> None:
        """Draw the error analysis."""
        self.data = data
        report, (low, high) = data.report, data.scale
        self._show_summary(data)
        self.legend.text = gradient_legend("cells: surprisal of the token (nats)",
                                           SURPRISAL_PALETTE, fmt(low), f"≥ {fmt(high)}")
        edges, counts = report.histogram_edges, report.histogram_counts
        centres = (edges[:-1] + edges[1:]) / 2
        self.hist_source.data = {
            "left": edges[:-1], "right": edges[1:], "count": counts,
            "color": np.array(colours_of(centres, low, high, SURPRISAL_PALETTE), dtype=str),
        }
        self.hist.x_range.start, self.hist.x_range.end = 0.0, float(edges[-1])
        self.hist.y_range.end = max(1, int(counts.max(initial=0))) * 1.05
        if np.isfinite(report.mean_surprisal):
            self.mean_span.location = report.mean_surprisal
        self.hist.title.text = (
            f"Surprisal of {report.n_scored:,} tokens (dashed: mean {fmt(report.mean_surprisal)})"
        )
        types = report.hardest_types
        set_rows(self.types_source, {
            "token": [token_label(t.text, 16, char_level=self.char_level) for t in types],
            "count": [t.count for t in types],
            "mean": [t.mean_surprisal for t in types],
            "share": [t.loss_share for t in types],
        })
        docs = data.documents
        set_rows(self.docs_source, {
            "doc": [d.doc for d in docs], "name": list(data.doc_names),
            "tokens": [d.n_scored for d in docs], "mean": [d.mean_surprisal for d in docs],
            "perplexity": [d.perplexity for d in docs], "start": [d.start for d in docs],
            "end": [d.end for d in docs],
        })
        params = data.params
        self.tokens.fig.title.text = (
            f"Worst {len(data.token_rows)} tokens (label: surprisal in nats, document)"
        )
        self.spans.fig.title.text = (
            f"Worst {len(data.span_rows)} spans of {params.width} tokens "
            "(label: mean surprisal, document)"
        )
        self._fit_rows(self.tokens, len(data.token_rows))
        self._fit_rows(self.spans, len(data.span_rows))
        self.tokens.show(self._strips(data.token_rows), low=low, high=high,
                         palette=SURPRISAL_PALETTE, left=-params.context, right=params.context)
        self.spans.show(self._strips(data.span_rows), low=low, high=high,
                        palette=SURPRISAL_PALETTE, left=-params.context,
                        right=params.width - 1 + params.context)

    # --- events ------------------------------------------------------------------------------

    def _on_spinner(self, attr: str, old: object, new: object) -> None:
        if self.on_params is not None:
            self.on_params()

    def _on_tap(self, strips: StripList) -> Callable[[str, list[int], list[int]], None]:
        def handler(attr: str, old: list[int], new: list[int]) -> None:
            strip = strips.tapped_row()
            if new and strip is not None and self.on_span is not None:
                match_row: MatchRow = strip.info["row"]
                self.on_span(match_row.start, match_row.end)

        return handler

    def _on_doc(self, attr: str, old: list[int], new: list[int]) -> None:
        start, end = (tapped(self.docs_source, c, new) for c in ("start", "end"))
        if start is not None and end is not None and self.on_span is not None:
            self.on_span(int(start), int(end))

    # --- drawing -----------------------------------------------------------------------------

    def _show_summary(self, data: analyses.SurprisalData) -> None:
        report = data.report
        if data.source == "stored":
            source = "the index's stored surprisal track"
        else:
            source = (f"computed with the index's model in {data.values_seconds:.1f} s "
                      "(once per server)")
        bits = report.mean_surprisal / math.log(2) if np.isfinite(report.mean_surprisal) else np.nan
        self.summary.text = (
            "<div class='panel-title'>Surprisal of the language model</div>"
            "<table class='stats'>"
            f"<tr><td>tokens scored</td><td>{report.n_scored:,} of {report.n_tokens:,}</td></tr>"
            f"<tr><td>mean surprisal</td><td>{fmt(report.mean_surprisal, 4)} nats "
            f"({fmt(bits, 4)} bits)</td></tr>"
            f"<tr><td>perplexity</td><td>{fmt(report.perplexity, 4)}</td></tr>"
            f"<tr><td>documents</td><td>{len(report.documents):,}</td></tr>"
            "</table>"
            f"<div class='hint'>From {source}; −ln p(token | the tokens before it), none for "
            f"a document's first token. {1000 * data.seconds:.0f} ms.</div>"
        )

    @staticmethod
    def _fit_rows(strips: StripList, n_rows: int) -> None:
        """Size a strip list for `n_rows` rows (only when that changes: it re-lays out)."""
        height = strips.height_for(n_rows)
        if strips.fig.height != height:
            strips.fig.height = height
            strips.fig.y_range.start = -max(3, n_rows) + 0.4

    @staticmethod
    def _strips(rows: tuple[MatchRow, ...]) -> list[StripRow]:
        return [
            StripRow(label=scored_label(r.score, r.document), anchor=r.anchor,
                     positions=r.positions, texts=r.texts, values=r.values,
                     emphasis=r.emphasis, document=r.document, info={"row": r})
            for r in rows
        ]

"""Attention view, for an index of an attention model (`train --attention W`): the heatmap
of the window's tokens (rows) over the earlier positions they attend to (columns, with their
text), and the worst-predicted tokens of the corpus with where their prediction looked
(the seeds' "attention of wrong predictions"). Click a cell or a row to show it in the
select view.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FixedTicker,
    HoverTool,
    NumberFormatter,
    Range1d,
    TableColumn,
)
from bokeh.palettes import Blues9
from bokeh.plotting import figure

from server import analyses
from server.display import MUTED_TEXT, colours_of, gradient_legend, stylesheet, token_label
from server.fetch import Shared
from server.inputs import tapped

PALETTE: tuple[str, ...] = tuple(reversed(Blues9))
CELL_COLUMNS = ("x", "y", "weight", "fill", "row_pos", "col_pos", "row_text", "col_text")
WORST_COLUMNS = ("pos", "token", "surprisal", "entropy", "looked")


class AttentionView:
    """The heatmap on the left, the worst tokens' attention on the right."""

    name = "attention"
    title = "Attention"

    def __init__(self, shared: Shared) -> None:
        self.fetch = analyses.attention
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.AttentionData | None = None
        self.char_level = shared.char_level
        style = stylesheet()
        self.summary = Div(text="", width=700, name="attention-summary", stylesheets=[style])
        self.legend = Div(text="", width=300, name="attention-legend", stylesheets=[style])
        self.cells = ColumnDataSource({k: [] for k in CELL_COLUMNS}, name="attention-cells")
        fig = figure(name="attention-heatmap", title="Attention of the window's tokens",
                     width=720, height=620, tools="", toolbar_location=None,
                     x_range=Range1d(-0.5, 0.5), y_range=Range1d(-0.5, 0.5),
                     output_backend="canvas")
        fig.rect(x="x", y="y", width=0.95, height=0.95, source=self.cells,
                 fill_color="fill", line_color=None)
        fig.add_tools(HoverTool(tooltips=[("token", "@row_text (@row_pos)"),
                                          ("looks at", "@col_text (@col_pos)"),
                                          ("weight", "@weight{0.000}")]))
        fig.xaxis.axis_label = "attended position"
        fig.yaxis.axis_label = "token"
        fig.xaxis.major_label_orientation = 1.2
        fig.grid.visible = False
        fig.title.text_font_size = "12px"
        self.x_ticker, self.y_ticker = FixedTicker(ticks=[]), FixedTicker(ticks=[])
        fig.xaxis.ticker, fig.yaxis.ticker = self.x_ticker, self.y_ticker
        self.heatmap = fig
        self.worst_source = ColumnDataSource({k: [] for k in WORST_COLUMNS},
                                             name="attention-worst-data")
        self.worst = DataTable(
            source=self.worst_source, name="attention-worst", width=470, height=420,
            index_position=None, reorderable=False,
            columns=[
                TableColumn(field="token", title="worst token", width=70),
                TableColumn(field="surprisal", title="nats", width=50,
                            formatter=NumberFormatter(format="0.00")),
                TableColumn(field="entropy", title="entropy", width=60,
                            formatter=NumberFormatter(format="0.00")),
                TableColumn(field="looked", title="its prediction looked at", width=290),
            ],
        )
        self.cells.selected.on_change("indices", self._on_cell)
        self.worst_source.selected.on_change("indices", self._on_worst)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Rows: the span brushed in the "
                   "select view (else its window's first tokens); columns: the earlier "
                   "positions they attend to. Click a cell or a worst token to show it in the "
                   "select view.</span>", width=470)
        self.layout = column(
            self.summary,
            row(self.heatmap, column(hint, self.legend, self.worst)),
            name="attention-view",
        )

    # --- protocol ----------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.AttentionParams:
        """The brushed span, else the select view's window."""
        return analyses.AttentionParams(window=context.span or context.window)

    def show_message(self, text: str) -> None:
        """Explain why there is nothing to show (not an attention model's index)."""
        self.data = None
        self.summary.text = (f"<div class='panel-title'>Attention</div>"
                             f"<div class='error'>{text}</div>")
        self.legend.text = ""
        self.cells.data = {k: [] for k in CELL_COLUMNS}
        self.worst_source.data = {k: [] for k in WORST_COLUMNS}

    def show(self, data: analyses.AttentionData) -> None:
        """Draw the heatmap and the worst tokens."""
        self.data = data
        hm = data.heatmap
        n_rows, n_cols = hm.weights.shape
        ii, jj = np.nonzero(hm.weights > 0)
        weights = hm.weights[ii, jj]
        label = self._label
        self.cells.data = {
            "x": jj.astype(float), "y": (n_rows - 1 - ii).astype(float), "weight": weights,
            "fill": colours_of(weights, 0.0, 1.0, PALETTE),
            "row_pos": np.asarray(hm.rows)[ii], "col_pos": np.asarray(hm.columns)[jj],
            "row_text": [label(hm.row_text[i]) for i in ii],
            "col_text": [label(hm.column_text[j]) for j in jj],
        }
        self.heatmap.x_range.start, self.heatmap.x_range.end = -0.5, max(n_cols, 1) - 0.5
        self.heatmap.y_range.start, self.heatmap.y_range.end = -0.5, max(n_rows, 1) - 0.5
        self.x_ticker.ticks = list(range(n_cols))
        self.y_ticker.ticks = list(range(n_rows))
        self.heatmap.xaxis.major_label_overrides = {
            j: f"{label(t)} {p}" for j, (t, p) in enumerate(zip(hm.column_text, hm.columns,
                                                                strict=True))}
        self.heatmap.yaxis.major_label_overrides = {
            n_rows - 1 - i: f"{label(t)} {p}" for i, (t, p) in enumerate(zip(hm.row_text,
                                                                             hm.rows,
                                                                             strict=True))}
        self.worst_source.data = {
            "pos": [w.pos for w in data.worst], "token": [label(w.text) for w in data.worst],
            "surprisal": [w.surprisal for w in data.worst],
            "entropy": [w.entropy for w in data.worst],
            "looked": [", ".join(f"{label(t)}@{p} ({wt:.2f})" for p, wt, t in
                                 zip(w.positions, w.weights, w.texts, strict=True))
                       or "(a document's first token)" for w in data.worst],
        }
        entropy = np.asarray(hm.entropy, dtype=float)
        mean = float(np.nanmean(entropy)) if np.isfinite(entropy).any() else float("nan")
        self.summary.text = (
            f"<div class='panel-title'>Attention of tokens [{hm.rows[0]:,}, "
            f"{hm.rows[-1] + 1:,})</div><div>{n_cols} positions attended; mean entropy "
            f"{mean:.2f} nats (0: one position)</div>"
            f"<div class='hint'>{1000 * data.seconds:.0f} ms</div>")
        self.legend.text = gradient_legend("attention weight", PALETTE, "0", "1")

    def _label(self, text: str) -> str:
        return token_label(text, 8, char_level=self.char_level)

    # --- events ------------------------------------------------------------------------------

    def _on_cell(self, attr: str, old: list[int], new: list[int]) -> None:
        pos = tapped(self.cells, "col_pos", new)
        if pos is not None and self.on_span is not None:
            self.on_span(int(pos), int(pos) + 1)

    def _on_worst(self, attr: str, old: list[int], new: list[int]) -> None:
        pos = tapped(self.worst_source, "pos", new)
        if pos is not None and self.on_span is not None:
            self.on_span(int(pos), int(pos) + 1)

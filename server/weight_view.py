"""Weights view: every weight block of the server's model in a table (shape, mean, std,
largest singular value, and the spectral radius of the recurrent blocks); the chosen block's
histogram of entries and its singular values on a log scale, with σ = 1 and the spectral
radius marked for a recurrent block (where repeated multiplication shrinks or grows a state).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    HoverTool,
    NumberFormatter,
    Range1d,
    Select,
    Span,
    TableColumn,
)
from bokeh.plotting import figure

from lstmsearch.analysis.weights import MatrixStats
from server import analyses
from server.display import ACCENT, MUTED_TEXT, THRESHOLD_COLOR, fmt, set_rows, stylesheet
from server.fetch import Shared
from server.inputs import chosen, tapped

TABLE_COLUMNS = ("name", "shape", "mean", "std", "spectral_norm", "spectral_radius")


def shape_text(shape: tuple[int, ...]) -> str:
    """A block's shape as "rows×columns" (or the length of a vector)."""
    return "×".join(str(d) for d in shape)


def default_block(blocks: tuple[MatrixStats, ...]) -> str:
    """The block shown first: the first recurrent one (the most telling), else the first."""
    recurrent = [b.name for b in blocks if b.recurrent]
    return recurrent[0] if recurrent else blocks[0].name


def log_range(values: np.ndarray, marks: list[float]) -> tuple[float, float]:
    """A log-axis range around the positive `values` and the lines to mark."""
    shown = [float(v) for v in values if v > 0] + [m for m in marks if m > 0]
    if not shown:
        return 0.1, 10.0
    return min(shown) / 1.6, max(shown) * 1.6


class WeightView:
    """Block table (or picker) on top; the chosen block's histogram and singular values."""

    name = "weights"
    title = "Weights"

    def __init__(self, shared: Shared) -> None:
        self.fetch = analyses.weights
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.WeightsData | None = None
        self.blocks: dict[str, MatrixStats] = {}
        self.block_shown: str | None = None
        self._quiet = False
        style = stylesheet()
        self.select = Select(title="Weight block", options=[], value="", width=240,
                             name="weights-select")
        self.summary = Div(text="", width=240, name="weights-summary", stylesheets=[style])
        self.message = Div(text="", width=900, name="weights-message", stylesheets=[style],
                           visible=False)
        self.table_source = ColumnDataSource({k: [] for k in TABLE_COLUMNS},
                                             name="weights-table-data")
        number = NumberFormatter(format="0.0000", nan_format="")
        self.table = DataTable(
            source=self.table_source, name="weights-table", width=760, height=300,
            index_position=None, reorderable=False, sortable=False,
            columns=[
                TableColumn(field="name", title="block", width=190),
                TableColumn(field="shape", title="shape", width=80),
                TableColumn(field="mean", title="mean", formatter=number, width=90),
                TableColumn(field="std", title="std", formatter=number, width=90),
                TableColumn(field="spectral_norm", title="σ max (spectral norm)",
                            formatter=number, width=150),
                TableColumn(field="spectral_radius", title="spectral radius ρ",
                            formatter=number, width=140),
            ],
        )
        self.hist_source = ColumnDataSource({"left": [], "right": [], "count": []},
                                            name="weights-hist-data")
        hist = figure(name="weights-hist", title="Entries", width=560, height=300,
                      tools="", toolbar_location=None, x_range=Range1d(-1, 1),
                      y_range=Range1d(0, 1), output_backend="canvas")
        hist.quad(left="left", right="right", bottom=0, top="count", source=self.hist_source,
                  fill_color=ACCENT, fill_alpha=0.75, line_color="#ffffff", line_width=0.5)
        hist.add_tools(HoverTool(tooltips=[("from", "@left{0.0000}"), ("to", "@right{0.0000}"),
                                           ("entries", "@count")]))
        hist.xaxis.axis_label = "weight"
        hist.yaxis.axis_label = "entries"
        hist.xgrid.visible = False
        hist.title.text_font_size = "12px"
        self.hist = hist
        self.sv_source = ColumnDataSource({"index": [], "sigma": []}, name="weights-singular-data")
        sv = figure(name="weights-singular", title="Singular values", width=560, height=300,
                    tools="", toolbar_location=None, y_axis_type="log",
                    x_range=Range1d(0, 2), y_range=Range1d(0.1, 10), output_backend="canvas")
        sv.line(x="index", y="sigma", source=self.sv_source, line_color=ACCENT, line_width=1.5)
        sv.scatter(x="index", y="sigma", source=self.sv_source, size=4, color=ACCENT)
        sv.add_tools(HoverTool(tooltips=[("k", "@index"), ("σ", "@sigma{0.0000}")]))
        sv.xaxis.axis_label = "index k (descending)"
        sv.yaxis.axis_label = "singular value σ_k"
        sv.title.text_font_size = "12px"
        self.sigma_one = Span(location=1.0, dimension="width", line_color=MUTED_TEXT,
                              line_dash="dotted", line_width=1.5, name="weights-sigma-one")
        self.radius = Span(location=1.0, dimension="width", line_color=THRESHOLD_COLOR,
                           line_dash="dashed", line_width=2, visible=False,
                           name="weights-radius")
        sv.add_layout(self.sigma_one)
        sv.add_layout(self.radius)
        self.singular = sv
        self.select.on_change("value", lambda a, o, n: self.show_block(n))
        self.table_source.selected.on_change("indices", self._on_row)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Pick a block here or click a row. "
                   "Recurrent blocks W_h*: the dashed red line is the spectral radius ρ "
                   "(largest |eigenvalue|), the dotted one σ = 1.</span>", width=240)
        self.layout = column(
            self.message,
            row(column(self.select, self.summary, hint), self.table),
            row(self.hist, self.singular),
            name="weights-view",
        )

    # --- the app's side ------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.WeightParams:
        """The model is the server's: nothing of the context matters."""
        return analyses.WeightParams()

    def show(self, data: analyses.WeightsData) -> None:
        """Fill the table and show the chosen block (the first recurrent one at first)."""
        self.data = data
        self.blocks = {b.name: b for b in data.blocks}
        self._set_visible(True)
        set_rows(self.table_source, {
            "name": [b.name for b in data.blocks],
            "shape": [shape_text(b.shape) for b in data.blocks],
            "mean": [b.mean for b in data.blocks],
            "std": [b.std for b in data.blocks],
            "spectral_norm": [np.nan if b.spectral_norm is None else b.spectral_norm
                              for b in data.blocks],
            "spectral_radius": [np.nan if b.spectral_radius is None else b.spectral_radius
                                for b in data.blocks],
        })
        n_recurrent = sum(b.recurrent for b in data.blocks)
        self.summary.text = (
            f"<div class='panel-title'>{len(data.blocks)} blocks of the "
            f"{data.arch.upper()}</div><div class='hint'>{n_recurrent} recurrent; "
            f"report in {1000 * data.seconds:.0f} ms</div>"
        )
        names = list(self.blocks)
        current = self.select.value if self.select.value in self.blocks else default_block(
            data.blocks)
        self._quiet = True
        try:
            self.select.options = names
            self.select.value = current
        finally:
            self._quiet = False
        self.show_block(current)

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (no model, an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = f"<div class='error'>No weights to show</div><div>{text}</div>"

    # --- updates -------------------------------------------------------------------------------

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.table, self.hist, self.singular, self.select):
            model.visible = visible

    def _on_row(self, attr: str, old: list[int], new: list[int]) -> None:
        name = tapped(self.table_source, "name", new)
        if self._quiet or name is None:
            return
        if name != self.select.value:
            self.select.value = name  # fires show_block

    def show_block(self, name: str) -> None:
        """Draw one block's histogram and singular values; its table row selected."""
        if self._quiet or not self.blocks:
            return
        if name not in self.blocks:  # not a block of this model: back to the one shown
            self._quiet = True
            try:
                self.select.value = self.block_shown or chosen(self.select)
            finally:
                self._quiet = False
            return
        self.block_shown = name
        block = self.blocks[name]
        counts, edges = block.histogram_counts, block.histogram_edges
        self.hist_source.data = {"left": edges[:-1].tolist(), "right": edges[1:].tolist(),
                                 "count": counts.tolist()}
        self.hist.x_range.start, self.hist.x_range.end = float(edges[0]), float(edges[-1])
        self.hist.y_range.end = max(1, int(counts.max())) * 1.05
        self.hist.title.text = (
            f"{name} ({shape_text(block.shape)}): {int(counts.sum()):,} entries, "
            f"mean {fmt(block.mean)}, std {fmt(block.std)}"
        )
        sigma = block.singular_values
        self.sv_source.data = {"index": list(range(1, len(sigma) + 1)), "sigma": sigma.tolist()}
        marks = [1.0]
        radius = block.spectral_radius
        self.radius.visible = radius is not None
        if radius is not None:
            self.radius.location = radius
            marks.append(radius)
        self.sigma_one.visible = block.recurrent
        low, high = log_range(sigma, marks if block.recurrent else [])
        self.singular.y_range.start, self.singular.y_range.end = low, high
        self.singular.x_range.start, self.singular.x_range.end = 0.5, max(1, len(sigma)) + 0.5
        if not len(sigma):
            title = f"{name} is a vector: no singular values"
        elif radius is not None:
            title = (f"{name}: σ max {fmt(block.spectral_norm)}, spectral radius ρ "
                     f"{fmt(radius)} {'< 1' if radius < 1 else '≥ 1'}")
        else:
            title = f"{name}: σ max {fmt(block.spectral_norm)}"
        self.singular.title.text = title
        row_at = self.table_source.data["name"].index(name)
        self._quiet = True
        try:
            self.table_source.selected.indices = [row_at]
        finally:
            self._quiet = False

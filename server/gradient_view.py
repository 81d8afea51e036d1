"""Gradients view: gradient flow through time (BPTT). For every state (h and c of each layer)
the median over sampled positions t of ||d loss_t / d s_(t-k)|| against the lag k on a log
scale, with shaded bands between quantiles; a table of each state's growth factor per step
back (< 1 vanishing, > 1 exploding) and its median at a few lags.
"""

from __future__ import annotations

import html
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
    ScientificFormatter,
    Select,
    Spinner,
    TableColumn,
)
from bokeh.plotting import figure

from lstmsearch.analysis.gradients import MAX_DOC_TOKENS, LagProfile
from server import analyses
from server.display import MUTED_TEXT, fmt, set_rows, stylesheet, unit_colour
from server.inputs import bounded, chosen

SCOPE_OPTIONS = [("sample", "sample of documents"), ("document", "this document")]
BANDS = ((0.1, 0.9, 0.10), (0.25, 0.75, 0.20))
"""Quantile bands drawn around each median: (low level, high level, fill alpha)."""
TABLE_LAGS = (0, 10)
"""Lags whose median the table shows, besides the largest lag K."""
LINE_COLUMNS = ("xs", "ys", "name", "color")
BAND_COLUMNS = ("xs", "ys", "name", "color", "alpha", "low", "high")
TABLE_COLUMNS = ("name", "factor", "reading", "k0", "k10", "kmax")


def positive(lags: np.ndarray, *values: np.ndarray) -> np.ndarray:
    """Which lags have every one of `values` finite and > 0 (what a log axis can draw)."""
    ok = np.ones(len(lags), dtype=bool)
    for v in values:
        ok &= np.isfinite(v) & (v > 0)
    return ok


def reading(factor: float) -> str:
    """What a growth factor per step back says about the gradient."""
    if not np.isfinite(factor):
        return "–"
    if factor < 0.99:
        return "vanishing"
    if factor > 1.01:
        return "exploding"
    return "steady"


def state_colour(i: int) -> str:
    """Colour of the i-th state's line and bands."""
    return unit_colour(i)


def line_columns(profiles: tuple[LagProfile, ...]) -> dict[str, list]:
    """One median line per state, over the lags where it is positive."""
    data: dict[str, list] = {k: [] for k in LINE_COLUMNS}
    for i, p in enumerate(profiles):
        ok = positive(p.lags, p.median)
        data["xs"].append(p.lags[ok].astype(float))
        data["ys"].append(p.median[ok])
        data["name"].append(p.name)
        data["color"].append(state_colour(i))
    return data


def band_columns(profiles: tuple[LagProfile, ...]) -> dict[str, list]:
    """Per state, one polygon per quantile band of `BANDS` that its profile has: along the
    high quantile and back along the low one, over the lags where both are positive."""
    data: dict[str, list] = {k: [] for k in BAND_COLUMNS}
    for i, p in enumerate(profiles):
        levels = p.quantile_levels
        for low, high, alpha in BANDS:
            if low not in levels or high not in levels:
                continue
            lo, hi = p.quantiles[levels.index(low)], p.quantiles[levels.index(high)]
            ok = positive(p.lags, lo, hi)
            lags = p.lags[ok].astype(float)
            data["xs"].append(np.concatenate([lags, lags[::-1]]))
            data["ys"].append(np.concatenate([hi[ok], lo[ok][::-1]]))
            data["name"].append(p.name)
            data["color"].append(state_colour(i))
            data["alpha"].append(alpha)
            data["low"].append(low)
            data["high"].append(high)
    return data


def median_at(profile: LagProfile, lag: int) -> float:
    """The median at `lag` (NaN beyond the largest lag)."""
    return float(profile.median[lag]) if 0 <= lag < len(profile.median) else float("nan")


def log_range(values: list[np.ndarray]) -> tuple[float, float]:
    """A log-axis range around every positive value drawn."""
    shown = np.concatenate([np.asarray(v, dtype=float) for v in values] or [np.zeros(0)])
    shown = shown[np.isfinite(shown) & (shown > 0)]
    if not len(shown):
        return 1e-3, 10.0
    return float(shown.min()) / 1.6, float(shown.max()) * 1.6


class GradientView:
    """Scope and sampling controls, the log plot of gradient norm against lag, the table."""

    name = "gradients"
    title = "Gradients"

    def __init__(self, shared: object) -> None:
        self.fetch = analyses.gradients
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.GradientsData | None = None
        char_level = bool(getattr(shared, "char_level", True))
        style = stylesheet()
        self.scope = Select(title="Positions from", value="sample", options=SCOPE_OPTIONS,
                            width=180, name="gradients-scope")
        self.positions = Spinner(title="Positions t", low=4, high=256, step=4,
                                 value=analyses.GRADIENT_POSITIONS, width=100,
                                 name="gradients-positions")
        self.max_lag = Spinner(title="Max lag K", low=2, high=200, step=5,
                               value=analyses.default_max_lag(char_level), width=100,
                               name="gradients-max-lag")
        self.summary = Div(text="", width=330, name="gradients-summary", stylesheets=[style])
        self.message = Div(text="", width=900, name="gradients-message", stylesheets=[style],
                           visible=False)
        self.bands = ColumnDataSource({k: [] for k in BAND_COLUMNS}, name="gradients-bands")
        self.lines = ColumnDataSource({k: [] for k in LINE_COLUMNS}, name="gradients-lines")
        fig = figure(
            name="gradients-plot", title="Gradient norm against lag", width=820, height=420,
            y_axis_type="log", x_range=Range1d(0, 1), y_range=Range1d(1e-3, 10),
            tools="pan,wheel_zoom,box_zoom,reset,save", output_backend="canvas",
        )
        fig.patches(xs="xs", ys="ys", source=self.bands, fill_color="color",
                    fill_alpha="alpha", line_color=None)
        median = fig.multi_line(xs="xs", ys="ys", source=self.lines, line_color="color",
                                line_width=2, legend_field="name")
        fig.add_tools(HoverTool(renderers=[median], tooltips=[
            ("state", "@name"), ("lag k", "$data_x{0}"), ("median", "$data_y{0.000e}"),
        ]))
        fig.xaxis.axis_label = "lag k (steps back from t)"
        fig.yaxis.axis_label = "median ||∂ loss_t / ∂ s_(t−k)||"
        fig.title.text_font_size = "12px"
        fig.legend.location = "top_right"
        fig.legend.click_policy = "hide"
        self.plot = fig
        self.table_source = ColumnDataSource({k: [] for k in TABLE_COLUMNS},
                                             name="gradients-table-data")
        sci = ScientificFormatter(precision=3, nan_format="–")
        self.table = DataTable(
            source=self.table_source, name="gradients-table", width=560, height=200,
            index_position=None, reorderable=False, sortable=False,
            columns=[
                TableColumn(field="name", title="state", width=100),
                TableColumn(field="factor", title="factor", width=70,
                            formatter=NumberFormatter(format="0.0000", nan_format="–")),
                TableColumn(field="reading", title="gradient", width=90),
                TableColumn(field="k0", title="median k=0", width=100, formatter=sci),
                TableColumn(field="k10", title="median k=10", width=100, formatter=sci),
                TableColumn(field="kmax", title="median k=K", width=100, formatter=sci),
            ],
        )
        for widget in (self.scope, self.positions, self.max_lag):
            widget.on_change("value", self._changed)
        hint = Div(text=(
            f"<span style='color:{MUTED_TEXT}'>For each sampled position t, the loss of "
            "predicting token t+1 is differentiated with respect to every state k steps "
            "before t. Lines: the median over positions; bands: 25–75 % and 10–90 %. "
            "Factor: the median's change per step back (exp of the slope of log median "
            "against k); below 1 the gradient vanishes, above 1 it explodes.</span>"),
            width=330, stylesheets=[style])
        self.layout = column(
            self.message,
            row(column(row(self.scope, self.positions, self.max_lag), self.summary, hint,
                       self.table),
                self.plot),
            name="gradients-view",
        )

    # --- the app's side ------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.GradientParams:
        """The document of the window (or a sample), the positions and the largest lag."""
        document = context.document if chosen(self.scope) == "document" else None
        max_lag, positions = bounded(self.max_lag), bounded(self.positions)
        if max_lag is None or positions is None:
            raise ValueError("give the number of positions and the largest lag")
        return analyses.GradientParams(document=document, max_lag=max_lag,
                                       n_positions=positions)

    def show(self, data: analyses.GradientsData) -> None:
        """Draw the median lines, the quantile bands and the table."""
        self.data = data
        self._set_visible(True)
        profiles = data.profiles
        self.bands.data = band_columns(profiles)
        self.lines.data = line_columns(profiles)
        k = data.params.max_lag
        set_rows(self.table_source, {
            "name": [p.name for p in profiles],
            "factor": [p.factor for p in profiles],
            "reading": [reading(p.factor) for p in profiles],
            "k0": [median_at(p, 0) for p in profiles],
            "k10": [median_at(p, 10) for p in profiles],
            "kmax": [median_at(p, k) for p in profiles],
        })
        self.plot.x_range.start, self.plot.x_range.end = 0, max(1, k)
        low, high = log_range(self.bands.data["ys"] + self.lines.data["ys"])
        self.plot.y_range.start, self.plot.y_range.end = low, high
        docs = data.documents
        where = (f"document {docs[0]}" if data.params.document is not None and docs
                 else f"{len(docs)} sampled documents")
        self.plot.title.text = (
            f"Gradient flow through time: {data.n_positions} positions in {where}, "
            f"lags 0..{k}"
        )
        factors = ", ".join(f"{p.name} {fmt(p.factor, 3)}" for p in profiles)
        self.summary.text = (
            f"<div class='panel-title'>{data.n_positions} positions t, K = {k}</div>"
            f"<div class='hint'>factor per step back: {factors}. Positions from the first "
            f"{MAX_DOC_TOKENS:,} tokens of each document; computed in "
            f"{1000 * data.seconds:.0f} ms</div>"
        )

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (no model, an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = (f"<div class='error'>No gradient flow to show</div>"
                             f"<div>{html.escape(text)}</div>")

    # --- updates -------------------------------------------------------------------------------

    def _changed(self, attr: str, old: object, new: object) -> None:
        if new is not None and self.on_params is not None:
            self.on_params()

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.plot, self.table, self.summary):
            model.visible = visible

"""Trajectory view: the stored states of one state (layer and kind) over the select view's
window, or over its whole document, projected to 2-D (PCA; or t-SNE or UMAP, whose map of
the state is fitted once per index) and drawn as a path in token order.

Points are coloured by the annotation track when one is chosen (else by position), carry
their token as a label (for short paths) and in a tooltip; the first and last points are
marked, and so is the first point of each new document (the state starts afresh there, so
the step into it is drawn dotted). In document mode the window's stretch of the path is
drawn in the accent colour. Clicking a point shows its token in the select view.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from bokeh.core.properties import field, value
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, Div, HoverTool, Select, TapTool
from bokeh.palettes import Plasma256
from bokeh.plotting import figure

from lstmsearch.analysis.trajectories import PROJECTION_SAMPLE, available_methods
from server import analyses
from server.display import (
    ACCENT,
    FADED_LINE,
    MONO,
    MUTED_TEXT,
    TEXT_COLOR,
    TRACK_PALETTE,
    as_columns,
    colours_of,
    fmt,
    gradient_legend,
    stylesheet,
    token_label,
)
from server.inputs import chosen, tapped

PLOT_WIDTH, PLOT_HEIGHT = 900, 620
LABEL_POINTS = 80
"""Paths of at most this many points carry their tokens as labels."""
POSITION_PALETTE: tuple[str, ...] = tuple(Plasma256[:224:28])
"""Points without a track: early (dark blue) to late (yellow)."""
NAN_FILL = "#d0d7de"
METHOD_LABELS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}
POINT_COLUMNS = ("x", "y", "pos", "doc", "token", "value", "fill", "size", "outline")
SEGMENT_COLUMNS = ("x0", "y0", "x1", "y1", "color", "width")


def axis_label(method: str, k: int, ratios: np.ndarray | None, fit: str) -> str:
    """"PC1 (42% of variance)" for PCA (of the documents' variance when fitted on them),
    "UMAP 1" otherwise."""
    if method != "pca" or ratios is None or k >= len(ratios):
        return f"{METHOD_LABELS.get(method, method)} {k + 1}"
    whose = "the documents' variance" if fit == "document" else "variance"
    return f"PC{k + 1} ({100 * float(ratios[k]):.0f}% of {whose})"


def point_fills(values: np.ndarray | None, value_range: tuple[float, float] | None,
                n: int) -> tuple[list[str], Sequence[str], str, str]:
    """Fill colours of `n` points, their palette and the legend's end labels: by track
    value on its range (grey where a token has none), else by order along the path."""
    if values is not None and value_range is not None:
        fills = colours_of(values, *value_range, TRACK_PALETTE)
        fills = [NAN_FILL if not np.isfinite(v) else f for v, f in zip(values, fills)]
        return fills, TRACK_PALETTE, fmt(value_range[0]), fmt(value_range[1])
    fills = colours_of(np.arange(n), 0, max(1, n - 1), POSITION_PALETTE)
    return fills, POSITION_PALETTE, "first", "last"


class TrajectoryView:
    """Span, fit and projection pickers; the path plot; a legend and a short summary."""

    name = "trajectory"
    title = "Trajectory"

    def __init__(self, shared: object) -> None:
        self.fetch = analyses.trajectory
        self.char_level = bool(getattr(shared, "char_level", True))
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.TrajectoryData | None = None
        self._quiet = False
        style = stylesheet()
        self.span_select = Select(
            title="Points", value="window", width=210, name="trajectory-span",
            options=[("window", "the select view's window"), ("document", "its document")],
        )
        self.fit_select = Select(
            title="Axes fitted on", value="span", width=170, name="trajectory-fit",
            options=[("span", "the points drawn"), ("document", "their documents")],
        )
        methods = available_methods()
        self.method_select = Select(
            title="Projection", value="pca", width=120, name="trajectory-method",
            options=[(m, METHOD_LABELS.get(m, m)) for m in methods],
        )
        self.summary = Div(text="", width=300, name="trajectory-summary", stylesheets=[style])
        self.legend = Div(text="", width=300, name="trajectory-legend", stylesheets=[style])
        self.message = Div(text="", width=900, name="trajectory-message", stylesheets=[style],
                           visible=False)

        self.points = ColumnDataSource({k: [] for k in POINT_COLUMNS}, name="trajectory-points")
        self.segments = ColumnDataSource({k: [] for k in SEGMENT_COLUMNS},
                                         name="trajectory-segments")
        self.jumps = ColumnDataSource({k: [] for k in ("x0", "y0", "x1", "y1")},
                                      name="trajectory-jumps")
        self.labels = ColumnDataSource({"x": [], "y": [], "text": []}, name="trajectory-labels")
        self.ends = ColumnDataSource({"x": [], "y": [], "text": [], "marker": [], "color": []},
                                     name="trajectory-ends")
        self.doc_marks = ColumnDataSource({"x": [], "y": [], "text": []},
                                          name="trajectory-doc-starts")

        fig = figure(
            name="trajectory-plot", width=PLOT_WIDTH, height=PLOT_HEIGHT,
            tools="pan,wheel_zoom,box_zoom,reset", toolbar_location="above",
            output_backend="canvas",
        )
        fig.title.text_font_size = "13px"
        fig.outline_line_color = "#d0d7de"
        fig.grid.grid_line_alpha = 0.4
        fig.segment(x0="x0", y0="y0", x1="x1", y1="y1", source=self.jumps,
                    line_color=MUTED_TEXT, line_dash="dotted", line_width=1.2)
        fig.segment(x0="x0", y0="y0", x1="x1", y1="y1", source=self.segments,
                    line_color="color", line_width="width", line_alpha=0.75)
        self.point_renderer = fig.scatter(
            x="x", y="y", source=self.points, size="size", fill_color="fill",
            line_color="outline", line_width=1.0, hover_line_color=TEXT_COLOR,
            hover_line_width=2, nonselection_fill_alpha=1.0, nonselection_line_alpha=1.0,
            selection_fill_alpha=1.0,
        )
        fig.text(x="x", y="y", text="text", source=self.labels, text_font=value(MONO),
                 text_font_size="11px", text_color=TEXT_COLOR, x_offset=6, y_offset=-3,
                 text_baseline="middle")
        fig.scatter(x="x", y="y", source=self.doc_marks, marker="triangle", size=13,
                    fill_color="#ffffff", line_color=TEXT_COLOR, line_width=1.5)
        fig.text(x="x", y="y", text="text", source=self.doc_marks, text_font_size="11px",
                 text_color=MUTED_TEXT, x_offset=8, y_offset=10, text_baseline="middle")
        fig.scatter(x="x", y="y", source=self.ends, marker=field("marker"), size=17,
                    fill_color=None, line_color="color", line_width=2.5)
        fig.text(x="x", y="y", text="text", source=self.ends, text_font_size="12px",
                 text_font_style="bold", text_color="color", x_offset=10, y_offset=12,
                 text_baseline="middle")
        fig.add_tools(
            TapTool(renderers=[self.point_renderer],
                    description="Show the token in the select view"),
            HoverTool(renderers=[self.point_renderer], tooltips=[
                ("token", "@token"), ("position", "@pos"), ("document", "@doc"),
                ("value", "@value{0.000}"),
            ]),
        )
        self.fig = fig

        for widget in (self.span_select, self.fit_select, self.method_select):
            widget.on_change("value", self._on_choice)
        self.points.selected.on_change("indices", self._on_tap)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Each point is the state after "
                   "a token, joined in reading order. Click a point to show its token in "
                   "the select view; scroll to zoom.</span>", width=300)
        self.layout = column(
            self.message,
            row(self.span_select, self.fit_select, self.method_select),
            row(fig, column(self.summary, self.legend, hint)),
            name="trajectory-view",
        )

    # --- the app's side ----------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.TrajectoryParams:
        """The path of the session's state over its window or document, by its track."""
        method = chosen(self.method_select)
        return analyses.TrajectoryParams(
            state=context.state, window=context.window, document=context.document,
            span=chosen(self.span_select),
            fit=chosen(self.fit_select) if method == "pca" else "span",
            method=method, track=context.track,
        )

    def show(self, data: analyses.TrajectoryData) -> None:
        """Draw the path: segments, points, labels, ends, document starts."""
        self.data = data
        self._set_visible(True)
        traj, p = data.trajectory, data.params
        xy = np.asarray(traj.points, dtype=np.float64)
        if xy.shape[1] < 2:  # a single point or a one-dimensional state: draw along x
            xy = np.column_stack([xy[:, 0], np.zeros(len(xy))])
        x, y = xy[:, 0], xy[:, 1]
        n = len(x)
        positions = np.asarray(traj.positions, dtype=np.int64)
        docs = np.asarray(data.docs, dtype=np.int64)
        fills, palette, low, high = point_fills(traj.values, data.value_range, n)
        window = p.window if p.span == "document" else None
        in_window = (np.zeros(n, dtype=bool) if window is None
                     else (positions >= window[0]) & (positions < window[1]))
        size = 7.0 if n <= 400 else 5.0 if n <= 1500 else 4.0
        self._quiet = True
        try:
            self.points.selected.indices = []
            self.points.data = as_columns({
                "x": x, "y": y, "pos": positions, "doc": docs,
                "token": [repr(t)[1:-1] for t in traj.tokens],
                "value": (np.full(n, np.nan) if traj.values is None
                          else np.asarray(traj.values, dtype=np.float64)),
                "fill": fills, "size": np.where(in_window, size + 3, size),
                "outline": np.where(in_window, ACCENT, "#57606a").tolist(),
            })
        finally:
            self._quiet = False
        same_doc = docs[1:] == docs[:-1]
        inside = np.flatnonzero(same_doc)
        both = in_window[:-1] & in_window[1:]
        self.segments.data = as_columns({
            "x0": x[inside], "y0": y[inside], "x1": x[inside + 1], "y1": y[inside + 1],
            "color": np.where(both[inside], ACCENT, FADED_LINE).tolist(),
            "width": np.where(both[inside], 2.5, 1.2),
        })
        across = np.flatnonzero(~same_doc)
        self.jumps.data = {"x0": x[across], "y0": y[across], "x1": x[across + 1],
                           "y1": y[across + 1]}
        self.doc_marks.data = {"x": x[across + 1], "y": y[across + 1],
                               "text": [f"doc {docs[i + 1]}" for i in across]}
        if n <= LABEL_POINTS:
            self.labels.data = {"x": x, "y": y, "text": [
                token_label(t, 10, char_level=self.char_level) for t in traj.tokens]}
        else:
            self.labels.data = {"x": [], "y": [], "text": []}
        self.ends.data = {"x": [x[0], x[-1]], "y": [y[0], y[-1]], "text": ["start", "end"],
                          "marker": ["circle", "square"], "color": ["#2da44e", "#cf222e"]}
        ratios = traj.explained_variance_ratio
        self.fig.xaxis.axis_label = axis_label(traj.method, 0, ratios, p.fit)
        self.fig.yaxis.axis_label = axis_label(traj.method, 1, ratios, p.fit)
        self.fig.title.text = f"{traj.name}: {self._span_text(data)}"
        self.legend.text = gradient_legend(
            f"points: {p.track}" if traj.values is not None else "points: order along the path",
            palette, low, high,
        )
        self.summary.text = self._summary(data)
        self.fit_select.disabled = p.method != "pca"

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = f"<div class='error'>No trajectory to show</div><div>{text}</div>"

    # --- events ------------------------------------------------------------------------------

    def _on_choice(self, attr: str, old: str, new: str) -> None:
        self.fit_select.disabled = self.method_select.value != "pca"
        if not self._quiet and self.on_params is not None:
            self.on_params()

    def _on_tap(self, attr: str, old: list[int], new: list[int]) -> None:
        pos = tapped(self.points, "pos", new)
        if self._quiet or pos is None:
            return
        pos = int(pos)
        self._quiet = True
        try:
            self.points.selected.indices = []
        finally:
            self._quiet = False
        if self.on_span is not None:
            self.on_span(pos, pos + 1)

    # --- text --------------------------------------------------------------------------------

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.fig, self.summary, self.legend):
            model.visible = visible

    @staticmethod
    def _span_text(data: analyses.TrajectoryData) -> str:
        """"tokens [a, b) of document 3" (or of documents 3–4)."""
        first, last = int(data.docs[0]), int(data.docs[-1])
        docs = f"document {first}" if first == last else f"documents {first}–{last}"
        return f"{data.end - data.start} tokens [{data.start}, {data.end}) of {docs}"

    def _summary(self, data: analyses.TrajectoryData) -> str:
        traj, p = data.trajectory, data.params
        method = METHOD_LABELS.get(traj.method, traj.method)
        lines = [f"<div class='panel-title'>{method} of {traj.name}</div>"]
        if traj.explained is not None:
            whose = "their documents'" if p.fit == "document" else "the points'"
            lines.append(f"<div>the two axes hold <b>{100 * traj.explained:.0f}%</b> of "
                         f"{whose} variance</div>")
        else:
            lines.append(f"<div class='hint'>the points placed in one {method} map of "
                         f"{traj.name}, fitted once on {PROJECTION_SAMPLE:,} tokens of the "
                         "index</div>")
        names = ", ".join(f"{d}: {name}" for d, name in list(data.doc_names.items())[:4])
        lines.append(f"<div class='hint'>{self._span_text(data)} ({names})</div>")
        if data.cut:
            a, b = data.doc_span
            lines.append(
                f"<div class='hint'>the document has {b - a:,} tokens: the "
                f"{analyses.TRAJECTORY_MAX_POINTS:,} around the window are drawn</div>"
            )
        if p.span == "document":
            lines.append(f"<div class='hint'><span style='color:{ACCENT}'>■</span> the "
                         f"window [{p.window[0]}, {p.window[1]})</div>")
        if len(data.doc_names) > 1:
            lines.append("<div class='hint'>△ a new document starts (from a fresh state; "
                         "the step into it is dotted)</div>")
        lines.append(f"<div style='color:{MUTED_TEXT}'>{1000 * data.seconds:.0f} ms</div>")
        return "".join(lines)

"""Units view (RNNVis-style): the expected response of every unit of the state to the most
frequent words (the mean change of the unit when the word is read), as a heatmap of words ×
units ordered by their co-clustering, with the clusters outlined and listed; and, when an
annotation track is chosen, the units that follow it most closely. Clicking a cell or a
ranked unit opens that unit in the neuron view.
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
    LinearColorMapper,
    NumberFormatter,
    Range1d,
    Spinner,
    TableColumn,
    TapTool,
)
from bokeh.plotting import figure

from lstmsearch.analysis.units import MAX_TOKENS, CoClustering
from server import analyses
from server.display import (
    DIVERGING_PALETTE,
    MONO,
    MUTED_TEXT,
    TEXT_COLOR,
    fmt,
    gradient_legend,
    set_rows,
    stylesheet,
    token_label,
)
from server.fetch import Shared
from server.inputs import bounded, tapped

WORDS_HIGH = 200
CELL_COLUMNS = ("x", "y", "unit", "word", "value", "count", "word_cluster", "unit_cluster")
ROW_PX = 18
LABEL_PX = 12
"""Height of a word label on the heatmap's axis."""
LISTED = 24
"""Words and units written out per cluster in the cluster list."""


def ordered(n: int, order: np.ndarray | None) -> np.ndarray:
    """The order rows (or columns) are drawn in: the co-clustering's, else as they are."""
    return np.arange(n) if order is None else np.asarray(order, dtype=np.int64)


def label_step(row_px: float) -> int:
    """Label every n-th word row so that labels do not overlap (hover shows every word)."""
    return max(1, int(np.ceil(LABEL_PX / max(row_px, 1e-9))))


def boundaries(labels_in_order: np.ndarray) -> list[int]:
    """Positions where the cluster label changes along an ordered axis."""
    return [int(i) for i in np.flatnonzero(np.diff(labels_in_order)) + 1]


def colour_bound(values: np.ndarray) -> float:
    """Half-width of the colour scale: the 99th percentile of |value|, so that a few rare
    words with large responses do not wash out the rest."""
    finite = np.abs(values[np.isfinite(values)])
    if not finite.size:
        return 1.0
    bound = float(np.percentile(finite, 99))
    return bound if bound > 0 else float(finite.max()) or 1.0


def listed(items: list[str], limit: int = LISTED) -> str:
    """Items joined by spaces, cut after `limit` with a count of the rest."""
    more = f" … (+{len(items) - limit})" if len(items) > limit else ""
    return " ".join(items[:limit]) + more


class UnitView:
    """Word count, min count and cluster spinners; the co-clustered heatmap; the cluster
    list; the ranking of units by correlation with the track."""

    name = "units"
    title = "Units"

    def __init__(self, shared: Shared) -> None:
        self.fetch = analyses.units
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.char_level = shared.char_level
        self.data: analyses.UnitsData | None = None
        self.max_tokens = MAX_TOKENS
        style = stylesheet()
        self.words = Spinner(title="Words", low=2, high=WORDS_HIGH, step=1,
                             value=analyses.default_unit_words(shared, WORDS_HIGH), width=90,
                             name="units-words")
        self.min_count = Spinner(title="Min count", low=1, high=1_000_000, step=1,
                                 value=analyses.UNIT_MIN_COUNT, width=90,
                                 name="units-min-count")
        self.clusters = Spinner(title="Clusters", low=2, high=16, step=1,
                                value=analyses.UNIT_CLUSTERS, width=90, name="units-n-clusters")
        self.summary = Div(text="", width=280, name="units-summary", stylesheets=[style])
        self.legend = Div(text="", width=280, name="units-legend", stylesheets=[style])
        self.message = Div(text="", width=900, name="units-message", stylesheets=[style],
                           visible=False)
        self.cells = ColumnDataSource({k: [] for k in CELL_COLUMNS}, name="units-heatmap-data")
        self.bounds = ColumnDataSource({"x0": [], "y0": [], "x1": [], "y1": []},
                                       name="units-bounds")
        self.blocks = ColumnDataSource({"x": [], "y": [], "w": [], "h": []},
                                       name="units-blocks")
        self.mapper = LinearColorMapper(palette=list(DIVERGING_PALETTE), low=-1, high=1,
                                        nan_color="#ffffff")
        heat = figure(
            name="units-heatmap", title="Expected response", width=900, height=400,
            tools="", toolbar_location=None, x_range=Range1d(-0.5, 1.5),
            y_range=Range1d(1.5, -0.5), output_backend="canvas", min_border_left=90,
        )
        self.rects = heat.rect(
            x="x", y="y", width=1, height=1, source=self.cells,
            fill_color={"field": "value", "transform": self.mapper}, line_color=None,
            nonselection_fill_alpha=1.0, selection_line_color=TEXT_COLOR,
            selection_line_width=1.5,
        )
        heat.segment(x0="x0", y0="y0", x1="x1", y1="y1", source=self.bounds,
                     line_color="#57606a", line_width=0.8, line_alpha=0.7)
        heat.rect(x="x", y="y", width="w", height="h", source=self.blocks, fill_color=None,
                  line_color=TEXT_COLOR, line_width=1.8)
        heat.add_tools(TapTool(renderers=[self.rects]))
        heat.add_tools(HoverTool(renderers=[self.rects], tooltips=[
            ("word", "@word"), ("unit", "@unit"), ("response", "@value{0.0000}"),
            ("occurrences", "@count"), ("clusters (word, unit)", "@word_cluster, @unit_cluster"),
        ]))
        self.word_ticker = FixedTicker(ticks=[])
        heat.yaxis.ticker = self.word_ticker
        heat.yaxis.major_label_text_font = MONO
        heat.yaxis.major_label_text_font_size = "11px"
        heat.yaxis.major_tick_line_color = None
        self.cluster_ticker = FixedTicker(ticks=[])
        heat.xaxis.ticker = self.cluster_ticker
        heat.xaxis.axis_label = "units, grouped by cluster (hover for the unit, click to open it)"
        heat.xgrid.visible = False
        heat.ygrid.visible = False
        heat.outline_line_color = None
        heat.title.text_font_size = "12px"
        self.heatmap = heat
        self.cluster_source = ColumnDataSource(
            {"cluster": [], "n_words": [], "words": [], "n_units": [], "units": []},
            name="units-clusters-data",
        )
        self.cluster_table = DataTable(
            source=self.cluster_source, name="units-clusters", width=860, height=170,
            index_position=None, reorderable=False, sortable=False,
            columns=[
                TableColumn(field="cluster", title="cluster", width=50),
                TableColumn(field="n_words", title="words", width=50),
                TableColumn(field="words", title="its words", width=260),
                TableColumn(field="n_units", title="units", width=50),
                TableColumn(field="units", title="its units", width=450),
            ],
        )
        self.ranking_source = ColumnDataSource({"unit": [], "r": []}, name="units-ranking-data")
        self.ranking_title = Div(text="", width=260, name="units-ranking-title",
                                 stylesheets=[style])
        self.ranking = DataTable(
            source=self.ranking_source, name="units-ranking", width=260, height=170,
            index_position=None, reorderable=False, sortable=False, visible=False,
            columns=[TableColumn(field="unit", title="unit"),
                     TableColumn(field="r", title="Pearson r",
                                 formatter=NumberFormatter(format="0.000"))],
        )
        for spinner in (self.words, self.min_count, self.clusters):
            spinner.on_change("value", self._on_spinner)
        self.cells.selected.on_change("indices", self._on_cell)
        self.ranking_source.selected.on_change("indices", self._on_ranked)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Cell: the mean change of the unit "
                   "when the word is read. Words and units are co-clustered (spectral "
                   "co-clustering of |response|); outlined blocks are the clusters.</span>",
                   width=280)
        self.layout = column(
            self.message,
            row(column(row(self.words, self.min_count, self.clusters), self.summary,
                       self.legend, hint),
                self.heatmap),
            row(self.cluster_table, column(self.ranking_title, self.ranking)),
            name="units-view",
        )

    # --- the app's side ------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.UnitParams:
        """The state and track of the session with this view's word, count and cluster
        settings."""
        spinners = {"words": self.words, "min count": self.min_count, "clusters": self.clusters}
        values = {label: bounded(spinner) for label, spinner in spinners.items()}
        for label, value in values.items():
            if value is None:
                raise ValueError(f"{label}: give a number")
        return analyses.UnitParams(
            state=context.state, words=values["words"], min_count=values["min count"],
            n_clusters=values["clusters"], track=context.track, max_tokens=self.max_tokens,
        )

    def show(self, data: analyses.UnitsData) -> None:
        """Draw the heatmap, the cluster list and the ranking."""
        response = data.response.response
        if not len(response.words):
            self.show_message(
                f"no token type occurs at least {data.params.min_count} times in the "
                f"{data.response.n_tokens:,} tokens read: lower the min count"
            )
            return
        self.data = data
        self._set_visible(True)
        self._show_summary(data)
        self._show_heatmap(response.response, response.words, response.counts,
                           data.co_clustering, data.params.state)
        self._show_clusters(data.co_clustering)
        self._show_ranking(data)

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = f"<div class='error'>No unit structure to show</div><div>{text}</div>"

    # --- events --------------------------------------------------------------------------------

    def _on_spinner(self, attr: str, old: object, new: object) -> None:
        if new is not None and self.on_params is not None:
            self.on_params()

    def _on_cell(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.cells, "unit", new)
        if unit is not None and self.on_unit is not None:
            self.cells.selected.indices = []  # so that the same cell opens again later
            self.on_unit(int(unit))

    def _on_ranked(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.ranking_source, "unit", new)
        if unit is not None and self.on_unit is not None:
            self.ranking_source.selected.indices = []
            self.on_unit(int(unit))

    # --- updates -------------------------------------------------------------------------------

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.heatmap, self.cluster_table, self.summary, self.legend):
            model.visible = visible
        if not visible:
            self.ranking.visible = self.ranking_title.visible = False

    def _show_summary(self, data: analyses.UnitsData) -> None:
        p, found = data.params, data.response
        response = found.response
        dim = response.response.shape[1]
        where = (f"the first {found.n_docs:,} documents ({found.n_tokens:,} of "
                 f"{found.total_tokens:,} tokens: a sample, documents whole)"
                 if found.sampled else f"all {found.total_tokens:,} tokens")
        if found.sampled and found.n_docs == 0:
            where = (f"the first {found.n_tokens:,} of {found.total_tokens:,} tokens "
                     "(a sample: the first document is longer)")
        clusters = (f"{data.co_clustering.n_clusters} co-clusters"
                    if data.co_clustering is not None else "too few words to co-cluster")
        timing = ("cached" if data.cached
                  else f"computed in {1000 * data.response_seconds:.0f} ms")
        self.summary.text = (
            f"<div class='panel-title'>{p.state}: {dim} units × {len(response.words)} "
            f"words</div><div class='hint'>the {len(response.words)} most frequent token "
            f"types seen ≥ {p.min_count} times, over {where}; {clusters}. Response "
            f"{timing}.</div>"
        )

    def _show_heatmap(self, matrix: np.ndarray, words: tuple[str, ...], counts: np.ndarray,
                      clusters: CoClustering | None, state: str) -> None:
        n_words, n_units = matrix.shape
        word_order = ordered(n_words, None if clusters is None else clusters.word_order)
        unit_order = ordered(n_units, None if clusters is None else clusters.unit_order)
        shown = matrix[word_order][:, unit_order]
        ys, xs = np.meshgrid(np.arange(n_words), np.arange(n_units), indexing="ij")
        labels = [token_label(w, 10, char_level=self.char_level) for w in words]
        word_labels = np.array([labels[i] for i in word_order], dtype=object)
        if clusters is not None:
            word_cluster = clusters.word_labels[word_order]
            unit_cluster = clusters.unit_labels[unit_order]
        else:
            word_cluster = np.zeros(n_words, dtype=np.int64)
            unit_cluster = np.zeros(n_units, dtype=np.int64)
        self.cells.selected.indices = []
        self.cells.data = {
            "x": xs.ravel(), "y": ys.ravel(),
            "unit": unit_order[xs.ravel()],
            "word": np.asarray(word_labels[ys.ravel()], dtype=str),
            "value": shown.ravel().astype(np.float64),
            "count": counts[word_order][ys.ravel()],
            "word_cluster": word_cluster[ys.ravel()],
            "unit_cluster": unit_cluster[xs.ravel()],
        }
        bound = colour_bound(shown)
        self.mapper.low, self.mapper.high = -bound, bound
        self.legend.text = gradient_legend("expected response Δ (mean change when read)",
                                           DIVERGING_PALETTE, fmt(-bound), fmt(bound))
        self._show_bounds(word_cluster, unit_cluster, n_words, n_units)
        height = int(np.clip(90 + ROW_PX * n_words, 320, 1000))
        self.heatmap.height = height
        every = label_step((height - 90) / max(1, n_words))
        self.word_ticker.ticks = list(range(0, n_words, every))
        self.heatmap.yaxis.major_label_overrides = {
            i: str(word_labels[i]) for i in range(0, n_words, every)
        }
        self.heatmap.x_range.start, self.heatmap.x_range.end = -0.5, n_units - 0.5
        self.heatmap.y_range.start, self.heatmap.y_range.end = n_words - 0.5, -0.5
        self.heatmap.title.text = (
            f"{state}: expected response of {n_units} units (x) to {n_words} words (y), "
            "ordered by co-cluster"
        )

    def _show_bounds(self, word_cluster: np.ndarray, unit_cluster: np.ndarray,
                     n_words: int, n_units: int) -> None:
        """Lines between clusters along both axes, and an outline around each co-cluster."""
        x0, y0, x1, y1 = [], [], [], []
        for b in boundaries(word_cluster):
            x0 += [-0.5]
            x1 += [n_units - 0.5]
            y0 += [b - 0.5]
            y1 += [b - 0.5]
        for b in boundaries(unit_cluster):
            y0 += [-0.5]
            y1 += [n_words - 0.5]
            x0 += [b - 0.5]
            x1 += [b - 0.5]
        self.bounds.data = {"x0": x0, "y0": y0, "x1": x1, "y1": y1}
        blocks: dict[str, list[float]] = {"x": [], "y": [], "w": [], "h": []}
        ticks, tick_labels = [], {}
        for j in np.unique(np.concatenate([word_cluster, unit_cluster])):
            rows, cols = np.flatnonzero(word_cluster == j), np.flatnonzero(unit_cluster == j)
            if len(cols):
                centre = float((cols[0] + cols[-1]) / 2)
                ticks.append(centre)
                tick_labels[centre] = f"C{int(j)}"
            if not len(rows) or not len(cols):
                continue
            blocks["x"].append(float((cols[0] + cols[-1]) / 2))
            blocks["y"].append(float((rows[0] + rows[-1]) / 2))
            blocks["w"].append(float(len(cols)))
            blocks["h"].append(float(len(rows)))
        self.blocks.data = blocks
        self.cluster_ticker.ticks = ticks
        self.heatmap.xaxis.major_label_overrides = tick_labels

    def _show_clusters(self, clusters: CoClustering | None) -> None:
        if clusters is None:
            self.cluster_source.data = {k: [] for k in self.cluster_source.data}
            return
        set_rows(self.cluster_source, {
            "cluster": [f"C{c.index}" for c in clusters.clusters],
            "n_words": [len(c.words) for c in clusters.clusters],
            "words": [listed([token_label(w, 10, char_level=self.char_level) for w in c.words])
                      for c in clusters.clusters],
            "n_units": [len(c.units) for c in clusters.clusters],
            "units": [listed([str(u) for u in c.units]) for c in clusters.clusters],
        })

    def _show_ranking(self, data: analyses.UnitsData) -> None:
        track = data.params.track
        self.ranking_source.selected.indices = []
        if not track:
            self.ranking.visible = self.ranking_title.visible = False
            self.ranking_source.data = {"unit": [], "r": []}
            return
        self.ranking_title.visible = True
        if data.ranking is None:
            self.ranking.visible = False
            self.ranking_title.text = (f"<div class='panel-title'>Units that track “{track}”"
                                       f"</div><div class='hint'>{data.ranking_error}</div>")
            self.ranking_source.data = {"unit": [], "r": []}
            return
        self.ranking.visible = True
        self.ranking_title.text = (
            f"<div class='panel-title'>Units that track “{track}”</div>"
            f"<div class='hint'>by |Pearson r| over every token; "
            "click to open</div>"
        )
        set_rows(self.ranking_source, {"unit": [u for u, _ in data.ranking],
                                    "r": [r for _, r in data.ranking]})

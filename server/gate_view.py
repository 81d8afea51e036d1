"""Gates view: the gate activations of chosen units of the session's layer over the select
view's window (LSTM input/forget/output and the candidate g; GRU reset/update and the
candidate n).

Gates are not stored: the index's model runs again from the start of the window's document
(or, in a very long document, `lstmsearch.analysis.gates.MAX_PREFIX` tokens before the
window, which the view then says) to the end of the window. Per unit, one line plot with a
line per gate on [0, 1] (the candidate, in [-1, 1], dashed); below them the window's tokens,
then a heatmap of one gate for every unit of the layer (click a row to show that unit). On
the right the layer's saturation over the window (share of values < 0.1 and > 0.9 per gate)
and the chosen units' gate statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from bokeh.core.properties import value
from bokeh.layouts import column, row
from bokeh.models import (
    CheckboxButtonGroup,
    ColumnDataSource,
    DataTable,
    Div,
    FixedTicker,
    HoverTool,
    NumberFormatter,
    Range1d,
    Select,
    TableColumn,
    TapTool,
    TextInput,
)
from bokeh.palettes import Category10_10, Viridis256
from bokeh.plotting import figure

from lstmsearch.analysis.gates import CANDIDATES, GATE_NAMES, SIGMOID_GATES, GateActivity
from server import analyses
from server.display import (
    DIVERGING_PALETTE,
    MONO,
    MUTED_TEXT,
    TEXT_COLOR,
    as_columns,
    chars_per_cell,
    colours_of,
    fmt,
    gradient_legend,
    set_rows,
    stylesheet,
    token_labels,
)
from server.inputs import chosen, chosen_indices, tapped, text

MAX_UNIT_PLOTS = 6
"""Units drawn as line plots at most (the statistics table lists every chosen unit)."""
MAX_UNITS = 256
"""Units one request may list."""
PLOT_WIDTH, UNIT_HEIGHT, BORDER_LEFT = 940, 150, 60
GATE_COLOURS = {"i": Category10_10[0], "f": Category10_10[2], "o": Category10_10[1],
                "g": Category10_10[4], "r": Category10_10[0], "z": Category10_10[2],
                "n": Category10_10[4]}
DEFAULT_HEAT = {"lstm": "f", "gru": "z"}
GATE_PALETTE: tuple[str, ...] = tuple(Viridis256[::16])
"""Gate values on [0, 1]: dark (shut) to yellow (open)."""
CHOSEN_OUTLINE = "#ff4f9a"
"""Outline of the drawn units' heatmap rows (stands out on viridis and on blue-red)."""
STATS_COLUMNS = ("unit", "gate", "mean", "std", "low", "high")


def gate_letters(arch: str) -> tuple[str, ...]:
    """The sigmoid gates of `arch` and then its candidate (an LSTM's layout for other
    architectures, whose index has no model anyway)."""
    arch = arch if arch in SIGMOID_GATES else "lstm"
    return (*SIGMOID_GATES[arch], CANDIDATES[arch])


def parse_units(text: str) -> tuple[int, ...]:
    """"61, 12" -> (61, 12) (repeats dropped); a ValueError naming a bad entry."""
    units: list[int] = []
    for part in text.replace(" ", ",").split(","):
        if not part:
            continue
        if not part.isdigit():
            raise ValueError(f"units must be unit numbers separated by commas, like 61,12: "
                             f"{part!r} is not one")
        if int(part) not in units:
            units.append(int(part))
    return tuple(units)


class GateView:
    """Units, gates and heatmap pickers; per-unit gate lines; tokens; heatmap; statistics."""

    name = "gates"
    title = "Gates"

    def __init__(self, shared: object) -> None:
        self.fetch = analyses.gates
        self.char_level = bool(getattr(shared, "char_level", True))
        config = getattr(shared, "model_config", {}) or {}
        self.arch = config.get("arch", "lstm") if config.get("arch") in SIGMOID_GATES else "lstm"
        self.letters = gate_letters(self.arch)
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.GatesData | None = None
        self._quiet = False
        style = stylesheet()

        self.units_input = TextInput(title="Units", value="", width=170, name="gates-units",
                                     placeholder="e.g. 61,12 (default: neuron view's)")
        self.gates_choice = CheckboxButtonGroup(
            labels=[f"{g} {GATE_NAMES[g]}" for g in self.letters],
            active=list(range(len(SIGMOID_GATES[self.arch]))), name="gates-choice",
            align="end",
        )
        self.heat_select = Select(
            title="Heatmap", value=DEFAULT_HEAT[self.arch], width=140, name="gates-heat-gate",
            options=[(g, f"{g} {GATE_NAMES[g]}") for g in self.letters],
        )
        self.info = Div(text="", width=560, name="gates-info", stylesheets=[style],
                        align="end")
        self.key = Div(text="", width=PLOT_WIDTH, name="gates-key", stylesheets=[style])
        self.message = Div(text="", width=900, name="gates-message", stylesheets=[style],
                           visible=False)
        self.saturation = Div(text="", width=330, name="gates-saturation", stylesheets=[style])
        self.legend = Div(text="", width=330, name="gates-legend", stylesheets=[style])
        self.stats_source = ColumnDataSource({k: [] for k in STATS_COLUMNS},
                                             name="gates-stats-data")
        number = NumberFormatter(format="0.000")
        share = NumberFormatter(format="0%")
        self.stats = DataTable(
            source=self.stats_source, name="gates-stats", width=330, height=260,
            index_position=None, reorderable=False, sortable=False,
            columns=[TableColumn(field="unit", title="unit", width=45),
                     TableColumn(field="gate", title="gate", width=70),
                     TableColumn(field="mean", title="mean", formatter=number, width=55),
                     TableColumn(field="std", title="std", formatter=number, width=55),
                     TableColumn(field="low", title="< 0.1", formatter=share, width=50),
                     TableColumn(field="high", title="> 0.9", formatter=share, width=50)],
        )

        self.x_range = Range1d(-0.5, 63.5)
        self.bounds = ColumnDataSource({"x": []}, name="gates-doc-bounds")
        self.unit_figs = []
        self.line_sources = []
        self.candidate_sources = []
        self.point_sources = []
        for k in range(MAX_UNIT_PLOTS):
            self._add_unit_plot(k)

        self.tokens = ColumnDataSource({k: [] for k in ("x", "left", "right", "text", "full",
                                                        "doc")}, name="gates-tokens")
        tok_height = 50 if self.char_level else 120
        tok = figure(name="gates-token-plot", width=PLOT_WIDTH, height=tok_height,
                     x_range=self.x_range, y_range=Range1d(0, 1), tools="",
                     toolbar_location=None, min_border_left=BORDER_LEFT, min_border_top=0,
                     min_border_bottom=2, output_backend="canvas")
        tok.axis.visible = False
        tok.grid.visible = False
        tok.outline_line_color = "#d0d7de"
        quads = tok.quad(left="left", right="right", bottom=0.02, top=0.98, source=self.tokens,
                         fill_color="#ffffff", line_color="#eaeef2",
                         nonselection_fill_alpha=1.0, nonselection_line_alpha=1.0,
                         selection_fill_color="#ffffff", selection_line_color="#eaeef2")
        self.token_text = tok.text(
            x="x", y=0.5 if self.char_level else 0.05, text="text", source=self.tokens,
            text_align="center" if self.char_level else "left", text_baseline="middle",
            text_font=value(MONO), text_font_size="12px", text_color=TEXT_COLOR,
            angle=0.0 if self.char_level else math.pi / 2,
        )
        tok.vspan(x="x", source=self.bounds, line_color="#57606a", line_dash="dotted")
        tok.add_tools(TapTool(renderers=[quads], description="Show the token in the select view"),
                      HoverTool(renderers=[quads], tooltips=[("token", "@full"),
                                                             ("position", "@x")]))
        self.tokens.selected.on_change("indices", self._on_token)
        self.tok_fig = tok

        self.heat = ColumnDataSource({k: [] for k in ("x", "y", "fill", "value", "token")},
                                     name="gates-heat-data")
        self.heat_marks = ColumnDataSource({"left": [], "right": [], "top": [], "bottom": []},
                                           name="gates-heat-chosen")
        heat = figure(name="gates-heatmap", width=PLOT_WIDTH, height=260, x_range=self.x_range,
                      y_range=Range1d(63.5, -0.5), tools="", toolbar_location=None,
                      min_border_left=BORDER_LEFT, output_backend="canvas")
        cells = heat.rect(x="x", y="y", width=1, height=1, source=self.heat, fill_color="fill",
                          line_color=None, nonselection_fill_alpha=1.0)
        heat.quad(left="left", right="right", top="top", bottom="bottom",
                  source=self.heat_marks, fill_color=None, line_color=CHOSEN_OUTLINE,
                  line_width=2)
        heat.vspan(x="x", source=self.bounds, line_color="#ffffff", line_dash="dotted")
        heat.add_tools(TapTool(renderers=[cells], description="Show this unit's gates"),
                       HoverTool(renderers=[cells], tooltips=[
                           ("unit", "@y"), ("token", "@token"), ("position", "@x"),
                           ("value", "@value{0.000}")]))
        heat.xaxis.visible = False
        heat.grid.visible = False
        heat.yaxis.axis_label = "unit"
        heat.title.text_font_size = "12px"
        self.heat.selected.on_change("indices", self._on_heat)
        self.heat_fig = heat

        self.units_input.on_change("value", self._on_choice)
        self.gates_choice.on_change("active", self._on_choice)
        self.heat_select.on_change("value", self._on_choice)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>Gates are recomputed with the "
                   "index's model from the start of the window's document. Click a heatmap "
                   "row to show that unit, a token to show it in the select view.</span>",
                   width=330)
        self.plots = column(self.key, *self.unit_figs, tok, heat)
        self.layout = column(
            self.message,
            row(self.units_input, self.gates_choice, self.heat_select, self.info),
            row(self.plots, column(self.saturation, self.stats, self.legend, hint)),
            name="gates-view",
        )

    def _add_unit_plot(self, k: int) -> None:
        """Line plot `k` (hidden until a unit is drawn in it) with its three sources."""
        lines = ColumnDataSource({"xs": [], "ys": [], "gate": [], "color": []},
                                 name=f"gates-lines-{k}")
        cand = ColumnDataSource({"x": [], "y": []}, name=f"gates-candidate-{k}")
        points = ColumnDataSource({k: [] for k in ("x", "y", "gate", "token", "color")},
                                  name=f"gates-points-{k}")
        fig = figure(name=f"gates-unit-{k}", width=PLOT_WIDTH, height=UNIT_HEIGHT,
                     x_range=self.x_range, y_range=Range1d(-0.03, 1.03), tools="",
                     toolbar_location=None, min_border_left=BORDER_LEFT, min_border_bottom=2,
                     output_backend="canvas", visible=False)
        fig.title.text_font_size = "12px"
        fig.outline_line_color = "#d0d7de"
        fig.xaxis.visible = False
        fig.xaxis.ticker = FixedTicker(ticks=[])
        fig.xgrid.grid_line_alpha = 0.35
        fig.yaxis.ticker = FixedTicker(ticks=[0.0, 0.5, 1.0])
        fig.vspan(x="x", source=self.bounds, line_color="#57606a", line_dash="dotted")
        fig.multi_line(xs="xs", ys="ys", source=lines, line_color="color", line_width=2)
        fig.line(x="x", y="y", source=cand, line_color=GATE_COLOURS["g"], line_width=1.6,
                 line_dash="dashed")
        dots = fig.scatter(x="x", y="y", source=points, size=4, color="color")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[
            ("gate", "@gate"), ("token", "@token"), ("position", "@x"),
            ("value", "@y{0.000}")]))
        self.unit_figs.append(fig)
        self.line_sources.append(lines)
        self.candidate_sources.append(cand)
        self.point_sources.append(points)

    # --- the app's side ----------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.GatesParams:
        """The gates of the window; the typed units, else the neuron view's unit."""
        units = parse_units(text(self.units_input.value)) or (int(context.unit),)
        if len(units) > MAX_UNITS:
            raise ValueError(f"at most {MAX_UNITS} units at a time, got {len(units)}")
        active = chosen_indices(self.gates_choice.active, len(self.letters))
        shown = tuple(self.letters[i] for i in active)
        if not shown:
            raise ValueError("choose at least one gate to draw")
        return analyses.GatesParams(state=context.state, window=context.window, units=units,
                                    shown=shown, heat=chosen(self.heat_select))

    def show(self, data: analyses.GatesData) -> None:
        """Draw the chosen units' gates, the tokens, the heatmap and the statistics."""
        self.data = data
        self._set_visible(True)
        act, p = data.activity, data.params
        positions = np.asarray(act.positions, dtype=np.int64)
        self.x_range.start, self.x_range.end = positions[0] - 0.5, positions[-1] + 0.5
        doc_starts = positions[1:][np.diff(self._docs(data)) != 0]
        self.bounds.data = {"x": (doc_starts - 0.5).tolist()}
        self._draw_units(data, positions)
        self._draw_tokens(data, positions)
        self._draw_heat(data, positions)
        self._draw_stats(data)
        self.key.text = self._key(act, p.shown)
        shown_units = p.units[:MAX_UNIT_PLOTS]
        more = (f" (the first {MAX_UNIT_PLOTS} of {len(p.units)} drawn)"
                if len(p.units) > MAX_UNIT_PLOTS else "")
        if data.exact:
            run = f"model run from the document's start (position {data.run_start})"
        else:
            run = (f"<span class='error'>approximate</span>: the document's prefix is longer "
                   f"than {data.max_prefix:,} tokens, so the model ran from a zero state at "
                   f"position {data.run_start}")
        self.info.text = (
            f"<div>layer {act.layer} {act.arch.upper()}, units "
            f"{', '.join(map(str, shown_units))}{more}, tokens [{positions[0]}, "
            f"{positions[-1] + 1})</div><div class='hint'>{run}; "
            f"{1000 * data.seconds:.0f} ms</div>"
        )

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (no model, a bad unit, an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = f"<div class='error'>No gates to show</div><div>{text}</div>"

    # --- drawing -----------------------------------------------------------------------------

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.plots, self.saturation, self.stats, self.legend, self.info):
            model.visible = visible

    @staticmethod
    def _docs(data: analyses.GatesData) -> np.ndarray:
        """The document of each token of the window."""
        return np.asarray(data.docs, dtype=np.int64)

    def _draw_units(self, data: analyses.GatesData, positions: np.ndarray) -> None:
        act, p = data.activity, data.params
        candidate = act.candidate_name
        sigmoid = [g for g in p.shown if g != candidate]
        with_candidate = candidate in p.shown and act.candidate is not None
        texts = [repr(t)[1:-1] for t in act.tokens]
        for k, fig in enumerate(self.unit_figs):
            if k >= min(len(p.units), MAX_UNIT_PLOTS):
                fig.visible = False
                continue
            unit = p.units[k]
            col = act.units.index(unit)
            ys = [act.series[g][:, col] for g in sigmoid]
            self.line_sources[k].data = {
                "xs": [positions] * len(sigmoid), "ys": ys, "gate": list(sigmoid),
                "color": [GATE_COLOURS[g] for g in sigmoid],
            }
            cand = act.candidate[:, col] if with_candidate else np.zeros(0)
            self.candidate_sources[k].data = {
                "x": positions if with_candidate else np.zeros(0, dtype=np.int64), "y": cand,
            }
            point_gates = sigmoid + ([candidate] if with_candidate else [])
            values = ys + ([cand] if with_candidate else [])
            self.point_sources[k].data = as_columns({
                "x": np.tile(positions, len(point_gates)),
                "y": np.concatenate(values) if values else np.zeros(0),
                "gate": [f"{g} {GATE_NAMES[g]}" for g in point_gates for _ in positions],
                "token": texts * len(point_gates),
                "color": [GATE_COLOURS[g] for g in point_gates for _ in positions],
            })
            fig.y_range.start, fig.y_range.end = (-1.05, 1.05) if with_candidate else (-0.03,
                                                                                      1.03)
            fig.yaxis.ticker.ticks = [-1.0, 0.0, 1.0] if with_candidate else [0.0, 0.5, 1.0]
            fig.xaxis.ticker.ticks = positions.tolist()
            fig.title.text = f"unit {unit}: {', '.join(point_gates)}" + (
                f" ({candidate} dashed)" if with_candidate else "")
            fig.visible = True

    def _draw_tokens(self, data: analyses.GatesData, positions: np.ndarray) -> None:
        act = data.activity
        n = len(positions)
        cell_px = (PLOT_WIDTH - BORDER_LEFT - 20) / max(1, n)
        font = float(np.clip(cell_px * (0.8 if self.char_level else 0.75), 7, 13))
        self.token_text.glyph.text_font_size = f"{font:.0f}px"
        if self.char_level:
            max_chars = chars_per_cell(cell_px, font) if cell_px >= 5 else 0
        else:
            max_chars = int((self.tok_fig.height - 20) // (font * 0.62)) if cell_px >= 7 else 0
        self._quiet = True
        try:
            self.tokens.selected.indices = []
            self.tokens.data = as_columns({
                "x": positions, "left": positions - 0.5, "right": positions + 0.5,
                "text": token_labels(act.tokens, max_chars, char_level=self.char_level)
                if max_chars else [""] * n,
                "full": [repr(t)[1:-1] for t in act.tokens],
                "doc": self._docs(data),
            })
        finally:
            self._quiet = False

    def _draw_heat(self, data: analyses.GatesData, positions: np.ndarray) -> None:
        act, p = data.activity, data.params
        gate = p.heat
        if gate == act.candidate_name:
            values, low, high, palette = act.candidate, -1.0, 1.0, DIVERGING_PALETTE
        else:
            values, low, high, palette = act.series[gate], 0.0, 1.0, GATE_PALETTE
        n, width = values.shape
        flat = values.T.reshape(-1)  # unit-major: row u holds unit u over the window
        self._quiet = True
        try:
            self.heat.selected.indices = []
            self.heat.data = as_columns({
                "x": np.tile(positions, width), "y": np.repeat(np.asarray(act.units), n),
                "fill": colours_of(flat, low, high, palette), "value": flat,
                "token": [repr(t)[1:-1] for t in act.tokens] * width,
            })
        finally:
            self._quiet = False
        chosen = np.asarray([u for u in p.units if u in act.units], dtype=np.float64)
        self.heat_marks.data = {
            "left": np.full(len(chosen), positions[0] - 0.5),
            "right": np.full(len(chosen), positions[-1] + 0.5),
            "top": chosen - 0.5, "bottom": chosen + 0.5,
        }
        self.heat_fig.y_range.start, self.heat_fig.y_range.end = width - 0.5, -0.5
        self.heat_fig.height = int(np.clip(3 * width + 60, 160, 420))
        self.heat_fig.title.text = (f"{gate} {GATE_NAMES[gate]} of all {width} units of layer "
                                    f"{act.layer} (outlined: the units drawn above)")
        self.legend.text = gradient_legend(f"heatmap: {gate} {GATE_NAMES[gate]}", palette,
                                           fmt(low), fmt(high))

    def _draw_stats(self, data: analyses.GatesData) -> None:
        act, p = data.activity, data.params
        rows: dict[str, list] = {k: [] for k in STATS_COLUMNS}
        for unit in p.units:
            for gate in act.gates:
                if gate not in p.shown:
                    continue
                s = act.unit_stats(unit, gate)
                for key, val in zip(STATS_COLUMNS, (unit, f"{gate} {GATE_NAMES[gate]}", s.mean,
                                                    s.std, s.low_fraction, s.high_fraction)):
                    rows[key].append(val)
        set_rows(self.stats_source, rows)
        self.stats.height = int(min(300, 30 + 26 * max(1, len(rows["unit"]))))
        body = "".join(
            f"<tr><td>{g} {GATE_NAMES[g]}</td>"
            f"<td>{self._bar(lo, hi)}</td>"
            f"<td>{100 * lo:.0f}% &lt; {fmt(act.low)}</td><td>{100 * hi:.0f}% &gt; "
            f"{fmt(act.high)}</td></tr>"
            for g, (lo, hi) in act.layer_saturation.items()
        )
        self.saturation.text = (
            f"<div class='panel-title'>Saturation of layer {act.layer}</div>"
            f"<div class='hint'>all {len(act.units)} units over the window's "
            f"{len(act.tokens)} tokens</div><table class='stats'>{body}</table>"
            "<div class='panel-title'>Chosen units</div>"
        )

    @staticmethod
    def _key(act: GateActivity, shown: tuple[str, ...]) -> str:
        """The colour of each gate drawn (the candidate's line dashed)."""
        parts = []
        for g in shown:
            style = "dashed" if g == act.candidate_name else "solid"
            parts.append(
                f"<span style='display:inline-block;width:22px;border-top:3px {style} "
                f"{GATE_COLOURS[g]};vertical-align:middle;margin:0 4px 0 12px'></span>"
                f"{g} {GATE_NAMES[g]}"
            )
        return f"<div class='hint'>{''.join(parts)}</div>"

    @staticmethod
    def _bar(low: float, high: float) -> str:
        """A small bar: the share of shut values (dark) and of open ones (yellow)."""
        return (
            "<div style='display:flex;width:90px;height:10px;border:1px solid #d0d7de'>"
            f"<div style='width:{100 * low:.0f}%;background:{GATE_PALETTE[0]}'></div>"
            f"<div style='flex:1;background:#f6f8fa'></div>"
            f"<div style='width:{100 * high:.0f}%;background:{GATE_PALETTE[-1]}'></div></div>"
        )

    # --- events ------------------------------------------------------------------------------

    def _on_choice(self, attr: str, old: object, new: object) -> None:
        if not self._quiet and self.on_params is not None:
            self.on_params()

    def _on_token(self, attr: str, old: list[int], new: list[int]) -> None:
        pos = tapped(self.tokens, "x", new)
        if self._quiet or pos is None:
            return
        self._quiet = True
        try:
            self.tokens.selected.indices = []
        finally:
            self._quiet = False
        if self.on_span is not None:
            self.on_span(int(pos), int(pos) + 1)

    def _on_heat(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.heat, "y", new)
        if self._quiet or unit is None:
            return
        self._quiet = True
        try:
            self.heat.selected.indices = []
        finally:
            self._quiet = False
        self.units_input.value = str(int(unit))  # fires _on_choice: the unit is drawn

"""The neuron view's ablation panel: a button that clamps the shown unit and a small bar
plot of what the model's predictions lose, overall and per value of the chosen track.

Lazy: nothing runs until the button is pressed; the app runs `analyses.ablation` off the
event loop (cached per server) and calls `show`. The panel holds no analysis of its own.
"""

from __future__ import annotations

from collections.abc import Callable

from bokeh.layouts import column, row
from bokeh.models import Button, ColumnDataSource, Div, FactorRange, Select, Span
from bokeh.plotting import figure

from lstmsearch.analysis.ablation import AblationResult
from server.display import ACCENT, MUTED_TEXT, fmt
from server.inputs import chosen

HARM, HELP = "#cf222e", "#2da44e"
"""Bars where clamping raises the surprisal (the model used the unit) or lowers it."""


class AblationPanel:
    """"Ablate" button, zero/mean choice, a bar per track value of the change in surprisal."""

    def __init__(self) -> None:
        self.on_ablate: Callable[[str], None] | None = None
        self.shown: tuple[str, int] | None = None
        self.hint = (f"<span style='color:{MUTED_TEXT}'>Clamp the unit at every step and see "
                     "how much worse the model predicts.</span>")
        self.button = Button(label="Ablate this unit", width=140, name="ablation-run",
                             button_type="default")
        self.value = Select(value="zero", width=90, name="ablation-value",
                            options=[("zero", "to zero"), ("mean", "to its mean")])
        self.text = Div(text=self.hint, width=330, name="ablation-text")
        self.source = ColumnDataSource({"value": [], "change": [], "n": [], "color": []},
                                       name="ablation-data")
        fig = figure(name="ablation-plot", width=330, height=170, tools="hover",
                     toolbar_location=None, x_range=FactorRange(), output_backend="canvas",
                     tooltips=[("value", "@value"), ("tokens", "@n"),
                               ("change", "@change{+0.0000} nats")])
        fig.vbar(x="value", top="change", width=0.8, source=self.source, fill_color="color",
                 line_color=None)
        self.overall = Span(location=0, dimension="width", line_color=ACCENT,
                            line_dash="dashed", line_width=1.5)
        fig.add_layout(self.overall)
        fig.yaxis.axis_label = "Δ surprisal (nats)"
        fig.title.text_font_size = "11px"
        fig.xgrid.visible = False
        fig.visible = False
        self.fig = fig
        self.button.on_click(self._on_click)
        self.layout = column(row(self.button, self.value), self.text, fig,
                             name="ablation-panel")

    def _on_click(self) -> None:
        if self.on_ablate is not None:
            self.button.disabled = True
            self.text.text = "<span class='hint'>running the model with the unit clamped…</span>"
            self.on_ablate(chosen(self.value))

    def reset(self, unit: tuple[str, int]) -> None:
        """The neuron view shows `unit` (state, unit): hide a result of another unit."""
        if unit != self.shown:
            self.shown = unit
            self.button.disabled = False
            self.fig.visible = False
            self.text.text = self.hint

    def show(self, result: AblationResult, track: str | None) -> None:
        """The change per value of `track` (the first track when None), and overall."""
        self.button.disabled = False
        groups = [g for g in result.groups if g.track == (track or (
            result.groups[0].track if result.groups else None))]
        self.source.data = {
            "value": [g.value for g in groups], "change": [g.change for g in groups],
            "n": [g.n for g in groups],
            "color": [HARM if g.change > 0 else HELP for g in groups],
        }
        self.fig.x_range.factors = [g.value for g in groups]
        self.overall.location = result.change
        self.fig.title.text = (f"by {groups[0].track}; dashed: overall" if groups
                               else "no track: overall only (dashed)")
        self.fig.visible = True
        clamp = "zero" if result.value_kind == "zero" else f"its mean {fmt(result.value)}"
        self.text.text = (
            f"<div>{result.state} unit {result.unit} clamped to {clamp}: mean surprisal "
            f"{result.clean:.3f} → {result.ablated:.3f} nats (<b>{result.change:+.4f}</b>) "
            f"over {result.n_scored:,} tokens [{result.start:,}, {result.end:,})</div>"
        )

    def show_message(self, text: str) -> None:
        """Why there is no ablation (an index without a model, a GRU's c)."""
        self.button.disabled = False
        self.fig.visible = False
        self.text.text = f"<div class='error'>{text}</div>"

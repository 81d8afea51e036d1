"""The neuron view's probe panel: a button that fits a linear probe of the chosen track on
the shown state (`lstmsearch probe`), its held-out score beside the majority/mean baseline
and the random-weight control, and the units it leans on most; click one to open it.

Lazy: nothing runs until the button is pressed; the app runs `analyses.probe` off the event
loop (cached per server) and calls `show`.
"""

from __future__ import annotations

from collections.abc import Callable

from bokeh.layouts import column
from bokeh.models import Button, ColumnDataSource, DataTable, Div, NumberFormatter, TableColumn

from lstmsearch.analysis.probe import ProbeResult
from server.display import MUTED_TEXT
from server.inputs import tapped

UNITS_SHOWN = 10


class ProbePanel:
    """"Probe" button, the scores, and the top units by probe weight (click to open)."""

    def __init__(self) -> None:
        self.on_probe: Callable[[], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.shown: tuple[str, str | None] | None = None
        self.hint = (f"<span style='color:{MUTED_TEXT}'>Fit a linear probe of the track on "
                     "this state, against a random-weight model's states.</span>")
        self.button = Button(label="Probe the track", width=140, name="probe-run")
        self.text = Div(text=self.hint, width=330, name="probe-text")
        self.source = ColumnDataSource({"unit": [], "weight": []}, name="probe-units")
        self.table = DataTable(
            source=self.source, name="probe-table", width=300, height=150, visible=False,
            columns=[TableColumn(field="unit", title="unit"),
                     TableColumn(field="weight", title="probe weight",
                                 formatter=NumberFormatter(format="+0.000"))],
            index_position=None, reorderable=False,
        )
        self.button.on_click(self._on_click)
        self.source.selected.on_change("indices", self._on_tap)
        self.layout = column(self.button, self.text, self.table, name="probe-panel")

    def _on_click(self) -> None:
        if self.on_probe is not None:
            self.button.disabled = True
            self.text.text = "<span class='hint'>fitting the probe and its control…</span>"
            self.on_probe()

    def _on_tap(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.source, "unit", new)
        if unit is not None and self.on_unit is not None:
            self.on_unit(int(unit))

    def reset(self, key: tuple[str, str | None]) -> None:
        """The view shows (state, track) `key`: hide a probe of another state or track."""
        if key != self.shown:
            self.shown = key
            self.button.disabled = not key[1]
            self.table.visible = False
            self.text.text = self.hint if key[1] else (
                f"<span style='color:{MUTED_TEXT}'>Choose a track to probe it.</span>")

    def show(self, result: ProbeResult) -> None:
        """The scores and the top units."""
        self.button.disabled = False
        metric = "accuracy" if result.metric == "accuracy" else "R²"
        baseline = "majority class" if result.target == "categorical" else "mean"
        control = ("—" if result.control is None else f"{result.control:.3f}")
        self.text.text = (
            f"<div>{result.track} from {result.state}: held-out {metric} "
            f"<b>{result.score:.3f}</b>; {baseline} {result.baseline:.3f}; random weights "
            f"{control}</div><div class='hint'>{result.n_train:,} train / {result.n_test:,} "
            "held-out tokens; click a unit to open it</div>"
        )
        units = result.units[:UNITS_SHOWN]
        self.source.selected.indices = []
        self.source.data = {"unit": [u.unit for u in units], "weight": [u.weight for u in units]}
        self.table.visible = True

    def show_message(self, text: str) -> None:
        """Why there is no probe (e.g. a track with one value)."""
        self.button.disabled = False
        self.table.visible = False
        self.text.text = f"<div class='error'>{text}</div>"

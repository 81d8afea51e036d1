"""Compare view (`lstmsearch serve INDEX_A --compare INDEX_B`): the second model beside the
server's over the same tokens. For the select view's state: linear CKA, the mean best |r|
and every unit's best-correlated unit in B (click one to open it in the neuron view); for
the select view's window: the text with A's and B's surprisal and their difference
(blue: B predicts the token better, red: worse).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from bokeh.layouts import column, row
from bokeh.models import ColumnDataSource, DataTable, Div, NumberFormatter, TableColumn

from server import analyses
from server.display import (
    DIVERGING_PALETTE,
    MUTED_TEXT,
    StripList,
    StripRow,
    fmt,
    gradient_legend,
    stylesheet,
)
from server.fetch import Shared
from server.inputs import tapped
from server.surprisal_view import SURPRISAL_PALETTE

UNIT_COLUMNS = ("unit", "best", "r", "abs_r")
MATCH_COLUMNS = ("document", "start", "end", "overlap", "extra", "text")


def match_table(name: str, title: str, source: ColumnDataSource) -> DataTable:
    """A list of matches: where, how many units of the pattern on, extra units, text."""
    return DataTable(
        source=source, name=name, width=540, height=280, index_position=None,
        reorderable=False,
        columns=[
            TableColumn(field="document", title=title, width=60),
            TableColumn(field="start", title="start", width=70),
            TableColumn(field="overlap", title="of S", width=45),
            TableColumn(field="extra", title="extra", width=45),
            TableColumn(field="text", title="text", width=300),
        ],
    )


class CompareView:
    """Summary and unit table on top; the window's tokens under both models below."""

    name = "compare"
    title = "Compare"

    def __init__(self, shared: Shared) -> None:
        self.fetch = analyses.compare
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.CompareData | None = None
        style = stylesheet()
        self.summary = Div(text="", width=420, name="compare-summary", stylesheets=[style])
        self.legend = Div(text="", width=420, name="compare-legend", stylesheets=[style])
        self.units_source = ColumnDataSource({k: [] for k in UNIT_COLUMNS},
                                             name="compare-units-data")
        self.units_table = DataTable(
            source=self.units_source, name="compare-units", width=330, height=300,
            index_position=None, reorderable=False,
            columns=[
                TableColumn(field="unit", title="unit of A", width=80),
                TableColumn(field="best", title="best unit of B", width=110),
                TableColumn(field="r", title="r", width=80,
                            formatter=NumberFormatter(format="+0.000")),
            ],
        )
        char_level = shared.char_level
        self.both = StripList("compare-surprisal", title="Surprisal of each model (nats)",
                              width=1100, max_rows=2, left=0, right=80, label_width=120,
                              char_level=char_level, value_name="surprisal")
        self.difference = StripList("compare-difference", title="B − A (blue: B predicts "
                                    "the token better)", width=1100, max_rows=1, left=0,
                                    right=80, label_width=120, char_level=char_level,
                                    value_name="B − A")
        self.matches_a = ColumnDataSource({k: [] for k in MATCH_COLUMNS},
                                          name="compare-matches-a-data")
        self.matches_b = ColumnDataSource({k: [] for k in MATCH_COLUMNS},
                                          name="compare-matches-b-data")
        self.side_title = Div(text="", width=1100, name="compare-side-title",
                              stylesheets=[style])
        tables = row(match_table("compare-matches-a", "doc (A)", self.matches_a),
                     match_table("compare-matches-b", "doc (B)", self.matches_b))
        for source in (self.matches_a, self.matches_b):
            source.selected.on_change("indices", self._on_match(source))
        self.units_source.selected.on_change("indices", self._on_unit_row)
        hint = Div(text=f"<span style='color:{MUTED_TEXT}'>For the select view's state and "
                   "window. Click a unit to open it in the neuron view.</span>", width=420)
        self.layout = column(
            row(column(self.summary, hint, self.legend), self.units_table),
            self.both.fig, self.difference.fig, self.side_title, tables,
            name="compare-view",
        )

    # --- protocol ----------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.CompareParams:
        """The select view's state, window and brushed pattern."""
        return analyses.CompareParams(state=context.state, window=context.window,
                                      span=context.span, threshold=context.threshold,
                                      sign=context.sign, padding=context.padding)

    def show_message(self, text: str) -> None:
        """Explain why there is nothing to compare (no second index)."""
        self.data = None
        self.summary.text = (f"<div class='panel-title'>Compare</div>"
                             f"<div class='error'>{text}</div>")
        self.legend.text = ""
        self.units_source.data = {k: [] for k in UNIT_COLUMNS}
        self.side_title.text = ""
        for source in (self.matches_a, self.matches_b):
            source.data = {k: [] for k in MATCH_COLUMNS}
        self.both.show([], low=0.0, high=1.0, palette=SURPRISAL_PALETTE)
        self.difference.show([], low=-1.0, high=1.0, palette=DIVERGING_PALETTE)

    def show(self, data: analyses.CompareData) -> None:
        """Draw the comparison."""
        self.data = data
        self.summary.text = summary_html(data)
        st = data.state
        if st is None:
            self.units_source.data = {k: [] for k in UNIT_COLUMNS}
        else:
            ranked = sorted(st.units, key=lambda c: c.sort_key)
            self.units_source.data = {
                "unit": [c.unit for c in ranked], "best": [c.best for c in ranked],
                "r": [c.r for c in ranked], "abs_r": [abs(c.r) for c in ranked],
            }
        both = np.concatenate([data.surprisal_a, data.surprisal_b])
        finite = both[np.isfinite(both)]
        high = float(np.quantile(finite, 0.98)) if finite.size else 1.0
        diff = data.surprisal_b - data.surprisal_a
        spread = float(np.nanmax(np.abs(diff))) if np.isfinite(diff).any() else 1.0
        spread = max(spread, 1e-6)
        start = int(data.positions[0]) if data.positions.size else 0
        right = max(0, data.positions.size - 1)

        def strip(label: str, values: np.ndarray) -> StripRow:
            return StripRow(label=label, anchor=start, positions=data.positions,
                            texts=data.texts, values=values,
                            emphasis=np.zeros(data.positions.size, dtype=bool), document=0)

        self.both.show([strip("A", data.surprisal_a), strip("B", data.surprisal_b)],
                       low=0.0, high=max(high, 1e-6), palette=SURPRISAL_PALETTE, left=0,
                       right=right)
        self.difference.show([strip("B − A", diff)], low=-spread, high=spread,
                             palette=DIVERGING_PALETTE, left=0, right=right)
        self.legend.text = (
            gradient_legend("surprisal (nats)", SURPRISAL_PALETTE, "0", f"≥ {fmt(high)}")
            + gradient_legend("B − A (nats)", DIVERGING_PALETTE, fmt(-spread), fmt(spread))
        )
        self._show_side_by_side(data)

    def _show_side_by_side(self, data: analyses.CompareData) -> None:
        pair = data.side_by_side
        if pair is None:
            why = data.side_note or ("Brush a span in the select view to match its pattern "
                                     "in both models.")
            self.side_title.text = f"<div class='hint'>{why}</div>"
            for source in (self.matches_a, self.matches_b):
                source.data = {k: [] for k in MATCH_COLUMNS}
            return
        left = (f"; left out, anti-correlated in B: {list(pair.left_out)}"
                if pair.left_out else "")
        self.side_title.text = (
            f"<div class='panel-title'>The brushed pattern: {len(pair.pattern_a.units)} units "
            f"of {pair.pattern_a.state} in A {list(pair.pattern_a.units)}; their best "
            f"units in B {list(pair.pattern_b.units)}{left}</div>")
        for source, result in ((self.matches_a, pair.matches_a),
                               (self.matches_b, pair.matches_b)):
            ms = result.matches
            source.data = {
                "document": [m.document for m in ms], "start": [m.start for m in ms],
                "end": [m.end for m in ms],
                "overlap": [f"{m.overlap}/{len(result.pattern.units)}" for m in ms],
                "extra": [m.extra for m in ms], "text": [m.text for m in ms],
            }

    # --- events ------------------------------------------------------------------------------

    def _on_match(self, source: ColumnDataSource) -> Callable[[str, list[int], list[int]], None]:
        def handler(attr: str, old: list[int], new: list[int]) -> None:
            start, end = (tapped(source, c, new) for c in ("start", "end"))
            if start is not None and end is not None and self.on_span is not None:
                self.on_span(int(start), int(end))  # the same tokens in both indexes

        return handler

    def _on_unit_row(self, attr: str, old: list[int], new: list[int]) -> None:
        unit = tapped(self.units_source, "unit", new)
        if unit is not None and self.on_unit is not None:
            self.on_unit(int(unit))


def summary_html(data: analyses.CompareData) -> str:
    """The comparison in a few lines: the two indexes, the state's CKA, the surprisal."""
    lines = [f"<div class='panel-title'>A: this index · B: {data.other}</div>"]
    st = data.state
    if st is None:
        lines.append(f"<div class='hint'>{data.state_note}</div>")
    else:
        lines.append(f"<div>{st.state_a}: linear CKA <b>{st.cka:.3f}</b>, mean best |r| "
                     f"<b>{st.mean_best_r:.3f}</b> over {st.tokens:,} tokens</div>")
    s = data.totals
    if s is None:
        lines.append("<div class='hint'>no surprisal stored in both indexes</div>")
    else:
        lines.append(f"<div>surprisal: A {s.mean_a:.3f} nats, B {s.mean_b:.3f}; B predicts "
                     f"<b>{100 * s.b_better:.1f}%</b> of {s.tokens:,} tokens better</div>")
    lines.append(f"<div class='hint'>{1000 * data.seconds:.0f} ms</div>")
    return "".join(lines)

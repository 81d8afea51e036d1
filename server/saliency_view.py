"""Saliency view: which input tokens made the model predict what it did after one position?

The prediction after token p (by default the focus's first token, else the window's
second-to-last one; a "Position" input sets it) is explained for a target (the token that
really follows, or the model's top choice) by gradient × input or integrated gradients:
a heat strip of the last input tokens coloured by their signed score, with the model's top
predictions beside it. Clicking a token shows it in the select view.
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
    NumberFormatter,
    NumericInput,
    Select,
    TableColumn,
)

from lstmsearch.analysis.saliency import IndexSaliency
from server import analyses
from server.display import (
    DIVERGING_PALETTE,
    MUTED_TEXT,
    StripList,
    StripRow,
    fmt,
    gradient_legend,
    set_rows,
    stylesheet,
    token_label,
)
from server.inputs import chosen, finite, tapped

METHOD_OPTIONS = [("grad_x_input", "gradient × input"),
                  ("integrated_gradients", "integrated gradients")]
TARGET_OPTIONS = [("next", "the actual next token"), ("top", "the model's top prediction")]
CELLS_CHARS, CELLS_WORDS = 64, 9
"""Tokens per strip row: one line of characters, or a few words (each needs room)."""
STRIP_WIDTH = 1000
TOP_COLUMNS = ("rank", "token", "probability", "note")


def strip_rows(result: IndexSaliency, per_row: int) -> list[StripRow]:
    """The attributed tokens (and the token that follows, uncoloured) as rows of `per_row`
    cells, the prediction's last input token emphasised."""
    positions = result.positions
    texts = list(result.texts)
    values = np.asarray(result.scores, dtype=float)
    if result.next_token is not None and result.next_text is not None:
        positions = np.append(positions, result.position + 1)
        texts.append(result.next_text)
        values = np.append(values, np.nan)
    rows = []
    for lo in range(0, len(positions), per_row):
        pos = positions[lo : lo + per_row]
        rows.append(StripRow(
            label=f"pos {int(pos[0])}", anchor=int(pos[0]), positions=pos,
            texts=texts[lo : lo + per_row], values=values[lo : lo + per_row],
            emphasis=pos == result.position, document=result.document,
        ))
    return rows


def score_scale(scores: np.ndarray) -> float:
    """Half-width of the symmetric colour scale: the largest |score| (1 when all are 0)."""
    finite = np.abs(scores[np.isfinite(scores)])
    top = float(finite.max()) if len(finite) else 0.0
    return top if top > 0 else 1.0


class SaliencyView:
    """Position, method and target controls; the prediction; top predictions; the strip."""

    name = "saliency"
    title = "Saliency"

    def __init__(self, shared: object) -> None:
        self.fetch = analyses.saliency
        self.on_params: Callable[[], None] | None = None
        self.on_span: Callable[[int, int], None] | None = None
        self.on_unit: Callable[[int], None] | None = None
        self.data: analyses.SaliencyData | None = None
        self._quiet = False
        self._anchor: object = None  # the context the position was last taken from
        self.char_level = char_level = bool(getattr(shared, "char_level", True))
        index = getattr(shared, "index", None)
        n_tokens = int(index.n_tokens) if index is not None else 1
        self.window = analyses.default_saliency_window(char_level)
        self.per_row = CELLS_CHARS if char_level else CELLS_WORDS
        style = stylesheet()
        self.position = NumericInput(title="Position", value=0, low=0,
                                     high=max(0, n_tokens - 1), width=110,
                                     name="saliency-position")
        self.method = Select(title="Method", value="grad_x_input", options=METHOD_OPTIONS,
                             width=170, name="saliency-method")
        self.target = Select(title="Target", value="next", options=TARGET_OPTIONS, width=200,
                             name="saliency-target")
        self.summary = Div(text="", width=500, name="saliency-summary", stylesheets=[style])
        self.legend = Div(text="", width=240, name="saliency-legend", stylesheets=[style])
        self.message = Div(text="", width=900, name="saliency-message", stylesheets=[style],
                           visible=False)
        self.top_source = ColumnDataSource({k: [] for k in TOP_COLUMNS},
                                           name="saliency-top-data")
        self.top_table = DataTable(
            source=self.top_source, name="saliency-top", width=420, height=170,
            index_position=None, reorderable=False, sortable=False,
            columns=[
                TableColumn(field="rank", title="#", width=30),
                TableColumn(field="token", title="predicted token", width=140),
                TableColumn(field="probability", title="probability", width=90,
                            formatter=NumberFormatter(format="0.0000")),
                TableColumn(field="note", title="", width=160),
            ],
        )
        max_rows = -(-(self.window + 1) // self.per_row)
        self.strip = StripList(
            "saliency", title="Saliency of each input token", width=STRIP_WIDTH,
            max_rows=max_rows, left=0, right=self.per_row - 1, char_level=char_level,
            value_name="saliency", label_width=70, row_height=30,
        )
        self.position.on_change("value", self._on_position)
        for widget in (self.method, self.target):
            widget.on_change("value", self._changed)
        self.strip.cells.selected.on_change("indices", self._on_tap)
        hint = Div(text=(
            f"<span style='color:{MUTED_TEXT}'>Red tokens raise the target's log-probability, "
            "blue ones lower it; the outlined token is the last one read, the grey one after "
            "it the token that really follows. Click a token to show it in the select view."
            "</span>"), width=420, stylesheets=[style])
        self.layout = column(
            row(self.position, self.method, self.target),
            self.message,
            row(column(self.summary, self.legend), column(self.top_table, hint)),
            self.strip.fig,
            name="saliency-view",
        )

    # --- the app's side ------------------------------------------------------------------------

    def params(self, context: analyses.Context) -> analyses.SaliencyParams:
        """The prediction to explain: the position follows the session's window and focus
        (`analyses.saliency_position`) until the user types another."""
        anchor = (context.window, context.focus)
        if anchor != self._anchor:
            self._anchor = anchor
            self._quiet = True
            try:
                self.position.value = analyses.saliency_position(context)
            finally:
                self._quiet = False
        position = finite(self.position.value)  # out of range: the analysis says so
        if position is None:
            raise ValueError("enter the position of the token whose prediction to explain")
        return analyses.SaliencyParams(
            position=int(position), method=chosen(self.method), target=chosen(self.target),
            window=self.window,
        )

    def show(self, data: analyses.SaliencyData) -> None:
        """Draw the prediction, the top predictions and the saliency strip."""
        self.data = data
        result = data.result
        sal = result.saliency
        self._set_visible(True)
        scale = score_scale(result.scores)
        self.strip.show(strip_rows(result, self.per_row), low=-scale, high=scale,
                        palette=DIVERGING_PALETTE, left=0, right=self.per_row - 1)
        method = dict(METHOD_OPTIONS)[sal.method]
        self.strip.fig.title.text = (
            f"Saliency ({method}) of the last {len(result.positions)} input tokens of "
            f"document {result.document}"
        )
        self.legend.text = gradient_legend(f"saliency ({method})", DIVERGING_PALETTE,
                                           f"−{fmt(scale)}", f"+{fmt(scale)}")
        set_rows(self.top_source, {
            "rank": list(range(1, len(result.top) + 1)),
            "token": [repr(text)[1:-1] for _, text, _ in result.top],
            "probability": [p for _, _, p in result.top],
            "note": [self._note(token, result) for token, _, _ in result.top],
        })
        self.summary.text = self._summary(data)

    def show_message(self, text: str) -> None:
        """Why there is nothing to show (no model, an error)."""
        self.data = None
        self._set_visible(False)
        self.message.text = (f"<div class='error'>No saliency to show</div>"
                             f"<div>{html.escape(text)}</div>")

    # --- updates -------------------------------------------------------------------------------

    @staticmethod
    def _note(token: int, result: IndexSaliency) -> str:
        notes = []
        if token == result.saliency.target:
            notes.append("target")
        if token == result.next_token:
            notes.append("actual next")
        return ", ".join(notes)

    def _summary(self, data: analyses.SaliencyData) -> str:
        result = data.result
        sal = result.saliency

        def shown(text: str | None) -> str:
            return html.escape(token_label(text or "", 24, char_level=self.char_level))

        if data.params.target == "top":
            why = "the model's top prediction"
        elif result.next_token is None:
            why = "the model's top prediction (the document ends here)"
        else:
            why = "the actual next token"
        last = shown(result.texts[-1]) if result.texts else ""
        lines = [
            f"<div class='panel-title'>Prediction after token {result.position} "
            f"(“{last}”, document {result.document})</div>",
            f"<div>target <b>“{shown(result.target_text)}”</b>, {why}: probability "
            f"<b>{sal.probability:.4f}</b>, {sal.objective} {fmt(sal.score, 4)}</div>",
        ]
        if result.next_token is not None and result.next_token != sal.target:
            lines.append(f"<div class='hint'>actually next: “{shown(result.next_text)}”</div>")
        if sal.completeness_gap is not None:
            rough = abs(sal.completeness_gap) > 0.1 * max(1.0, abs(sal.score - sal.baseline_score))
            lines.append(
                f"<div class='hint'>the scores add up to the {sal.objective} minus its "
                f"value with these tokens' embeddings zeroed ({fmt(sal.baseline_score, 4)}), "
                f"off by {fmt(sal.completeness_gap, 2)}"
                + (": the score changes abruptly along the path from zero, so these scores "
                   "are rough" if rough else "") + "</div>"
            )
        if result.truncated:
            lines.append(
                f"<div class='hint'>a long document: the model read from token "
                f"{result.first} on</div>"
            )
        lines.append(f"<div class='hint'>computed in {1000 * data.seconds:.0f} ms</div>")
        return "".join(lines)

    def _on_position(self, attr: str, old: object, new: object) -> None:
        if not self._quiet and new is not None and self.on_params is not None:
            self.on_params()

    def _changed(self, attr: str, old: object, new: object) -> None:
        if new is not None and self.on_params is not None:
            self.on_params()

    def _on_tap(self, attr: str, old: list[int], new: list[int]) -> None:
        pos = tapped(self.strip.cells, "pos", new)
        if pos is not None and self.on_span is not None:
            self.on_span(int(pos), int(pos) + 1)

    def _set_visible(self, visible: bool) -> None:
        self.message.visible = not visible
        for model in (self.summary, self.legend, self.top_table, self.strip.fig):
            model.visible = visible

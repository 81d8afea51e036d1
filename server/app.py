"""The lstmsearch web app: `build(doc, index)` puts every view into a Bokeh document.

The header holds what all views share (state, threshold, padding, sign, annotation track,
navigation, phrase search, a busy indicator); below it the tabs: "Select & match" (select
plot, token row, pattern S, match list), "Neuron" (one unit in depth), and one tab per
analysis (`ANALYSIS_VIEWS`, see `server.analyses`), each computed when it is shown.

All data comes from `server.fetch`, pure functions over the Python API, run off the event
loop by a `Runner` (or at once when no executor is given, as in tests). Each view has one
update method per result that assigns its sources' data.
"""

from __future__ import annotations

import logging
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from functools import lru_cache, partial
from html import escape
from pathlib import Path
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column, row
from bokeh.models import (
    Button,
    Checkbox,
    CustomJS,
    Div,
    NumericInput,
    RadioButtonGroup,
    Select,
    Slider,
    Spinner,
    TabPanel,
    Tabs,
    TextInput,
)
from bokeh.themes import Theme

from lstmsearch.index import SURPRISAL_TRACK, Index
from server import analyses, fetch, url_state
from server.attention_view import AttentionView
from server.compare_view import CompareView
from server.display import stylesheet
from server.gate_view import GateView
from server.gradient_view import GradientView
from server.inputs import chosen_index, clamped, finite, text
from server.match_view import MAX_LENGTH, RIGHT_CELLS, RIGHT_WORDS, MatchView
from server.neuron_view import NeuronView
from server.prototype import Prototype, answer_first_pull
from server.saliency_view import SaliencyView
from server.select_view import PLOT_WIDTH, SelectView
from server.session import Runner, Session, release_memory_soon
from server.surprisal_view import SurprisalView
from server.trajectory_view import TrajectoryView
from server.unit_view import UnitView
from server.url_state import MAX_PAD, MAX_THRESHOLD
from server.weight_view import WeightView

log = logging.getLogger("lstmsearch.server")

HERE = Path(__file__).resolve().parent
THEME_FILE = HERE / "theme.yaml"
TEMPLATE_DIR = HERE / "templates"

DEFAULT_THRESHOLD = 0.3
PAGE_WIDTH = 1400
WINDOW_RANGE = (8, 200)
"""Bounds of the padding and window widgets, enforced again on the server."""
SECONDARY_DELAY_MS = 100
"""Delay of the updates that follow the match list (S, summary): the page paints first."""
SIGN_LABELS = ["x ≥ θ", "x ≤ −θ"]
SIGNS = (1, -1)
"""The sign toggle's buttons: positive patterns, negative ones."""
NO_TRACK = "(none)"
SELECT_TAB, NEURON_TAB = 0, 1
FIRST_ANALYSIS_TAB = 2
KEYS = (
    ("j", "next match"), ("k", "previous match"),
    ("]", "widen the span by a token"), ("[", "narrow the span by a token"),
    ("+", "raise θ (one hundredth of |x| up)"), ("-", "lower θ"),
    ("?", "show or hide this help"),
)
"""The keyboard's keys (the page's script sends them, `templates/index.html`)."""
THRESHOLD_STEP = 0.01
"""Quantiles of |x| the + and - keys move θ by."""
PUSH_URL = """
const query = cb_obj.text;
if (query && '?' + query !== window.location.search)
    window.history.pushState(null, '', '?' + query);
"""
"""A new query puts its URL into the address bar and the browser's history."""

ANALYSIS_VIEWS: list[type] = [
    SurprisalView,
    GradientView,
    SaliencyView,
    TrajectoryView,
    GateView,
    WeightView,
    UnitView,
    AttentionView,
    CompareView,
]
"""The analysis views, in tab order; each is built with `View(shared)`."""


@lru_cache(maxsize=1)
def page_theme() -> Theme:
    """The plots' light theme (`theme.yaml`), read once."""
    return Theme(filename=str(THEME_FILE))


@lru_cache(maxsize=1)
def page_template() -> Any:
    """The page around the app (`templates/index.html`), read once."""
    from jinja2 import Environment, FileSystemLoader

    return Environment(loader=FileSystemLoader(str(TEMPLATE_DIR))).get_template("index.html")


def default_state(names: list[str]) -> str:
    """The state a session starts on: the top layer's cell state, else its hidden state."""
    cells = [n for n in names if n.endswith(".c")]
    return (cells or names)[-1]


def default_track(names: list[str]) -> str | None:
    """The annotation track a session starts with: the first one other than the model's
    surprisal (it has a strip of its own), a label of the text before the attention model's
    own tracks (`attention_...`)."""
    others = [n for n in names if n != SURPRISAL_TRACK]
    return next((n for n in others if not n.startswith("attention_")), others[0] if others
                else None)


def default_window(char_level: bool) -> int:
    """Tokens per window: enough to see structure, few enough for readable labels."""
    return 64 if char_level else 28


@dataclass
class Page:
    """The models a page opens with: the header's widgets, the select and match views
    showing the first window of the default state, and the tabs (all but the first are
    placeholders until shown). Built once per server and copied for each session
    (`open_page`); `App` wires a page's widgets to one session."""

    title: Div
    busy: Div
    status: Div
    state_select: Select
    threshold_slider: Slider
    threshold_input: NumericInput
    sign_toggle: RadioButtonGroup
    fixed_y: Checkbox
    pad_left: Spinner
    pad_right: Spinner
    track_select: Select
    doc_input: NumericInput
    pos_input: NumericInput
    window_size: Spinner
    prev_button: Button
    next_button: Button
    phrase_input: TextInput
    phrase_button: Button
    phrase_next: Button
    phrase_status: Div
    url: Div
    url_input: TextInput
    key_input: TextInput
    help_button: Button
    help: Div
    downloads: Div
    select_view: SelectView
    match_view: MatchView
    tab_panels: list[TabPanel]
    tabs: Tabs
    root: Any
    window: fetch.Window
    """The window shown (its arrays are shared by every copy of the page)."""


def build_page(shared: fetch.Shared) -> Page:
    """A new page over `shared`'s index, in the state a session starts in."""
    index = shared.index
    char_level = shared.char_level
    state = default_state(shared.state_names)
    track = default_track(shared.track_names)
    width = min(index.n_tokens, default_window(char_level))
    style = stylesheet()
    # --- header ------------------------------------------------------------------------------
    model = shared.model_config
    title = (
        f"<div class='brand'>lstmsearch</div><div class='subtitle'>"
        f"{index.path.name} · {index.meta.get('corpus', '')} · "
        f"{index.n_docs:,} documents · {index.n_tokens:,} tokens · "
        f"{model.get('arch', '')} {model.get('layers', '')}×{model.get('hidden', '')}</div>"
    )
    scale = shared.scale(state)
    window = fetch.load_window(shared, state, 0, width, track)
    # --- views -------------------------------------------------------------------------------
    # the stored surprisal has a strip of its own: the track row is for the other tracks
    has_surprisal = fetch.has_stored_surprisal(shared)
    has_track = any(n != SURPRISAL_TRACK or not has_surprisal for n in shared.track_names)
    select_view = SelectView(char_level=char_level, has_track=has_track,
                             has_surprisal=has_surprisal,
                             has_attention=fetch.has_attention(shared))
    select_view.set_threshold(DEFAULT_THRESHOLD, 1)
    select_view.pattern_div.stylesheets = [style]
    select_view.show_window(window, shared.track_range(track))
    select_view.show_pattern(None, None, (0, 0), None)
    match_view = MatchView(char_level=char_level, width=PLOT_WIDTH + 240,
                           has_attention=fetch.has_attention(shared))
    match_view.summary.stylesheets = [style]
    match_view.legend.stylesheets = [style]
    plots = column(select_view.fig, select_view.tok_fig, name="select-plots")
    downloads = Div(text="", name="downloads", stylesheets=[style], width=PLOT_WIDTH)
    select_tab = column(row(plots, select_view.pattern_div), match_view.layout, downloads,
                        name="select-tab")
    # the other tabs are built when first shown: a page starts with the models of the
    # first tab only, which keeps opening a session (and its memory) small
    tab_panels = [TabPanel(title="Select & match", child=select_tab),
                  TabPanel(title="Neuron", child=placeholder())]
    tab_panels += [TabPanel(title=v.title, child=placeholder()) for v in ANALYSIS_VIEWS]
    page = Page(
        title=Div(text=title, name="title", stylesheets=[style], width=860),
        busy=Div(text=busy_html(()), name="busy", stylesheets=[style], width=500,
                 styles={"text-align": "right"}),
        status=Div(text="", name="status", stylesheets=[style], width=500,
                   styles={"text-align": "right"}),
        state_select=Select(title="State", value=state, options=shared.state_names,
                            width=120, name="state-select"),
        threshold_slider=Slider(title="θ as quantile of |x|", start=0.0, end=1.0,
                                step=0.001, format="0.000", width=200,
                                value=round(scale.quantile_of(DEFAULT_THRESHOLD), 3),
                                name="threshold-slider"),
        threshold_input=NumericInput(title="θ", value=DEFAULT_THRESHOLD, mode="float",
                                     width=80, name="threshold-input"),
        sign_toggle=RadioButtonGroup(labels=SIGN_LABELS, active=0, width=140,
                                     align="end", name="sign-toggle"),
        fixed_y=Checkbox(label="fixed y axis", active=False, align="end",
                         name="fixed-y"),
        pad_left=Spinner(title="Pad left", low=0, high=MAX_PAD, step=1, value=1, width=80,
                         name="pad-left"),
        pad_right=Spinner(title="Pad right", low=0, high=MAX_PAD, step=1, value=0,
                          width=80, name="pad-right"),
        track_select=Select(title="Track", value=track or NO_TRACK,
                            options=[NO_TRACK, *shared.track_names], width=110,
                            name="track-select"),
        doc_input=NumericInput(title="Document", value=int(window.docs[0]), low=0,
                               high=max(0, index.n_docs - 1), width=90, name="doc-input"),
        pos_input=NumericInput(title="Position", value=window.start, low=0,
                               high=max(0, index.n_tokens - 1), width=110,
                               name="pos-input"),
        window_size=Spinner(title="Window", low=WINDOW_RANGE[0], high=WINDOW_RANGE[1],
                            step=4, value=default_window(char_level), width=80,
                            name="window-size"),
        prev_button=Button(label="◀", width=40, name="prev-window", align="end"),
        next_button=Button(label="▶", width=40, name="next-window", align="end"),
        phrase_input=TextInput(title="Find a phrase", placeholder="text to find…",
                               width=200, name="phrase-input"),
        phrase_button=Button(label="Find", width=60, name="phrase-find", align="end",
                             button_type="primary"),
        phrase_next=Button(label="Next", width=60, name="phrase-next", align="end",
                           disabled=True),
        phrase_status=Div(text="", width=140, name="phrase-status", align="end",
                          stylesheets=[style]),
        url=Div(text="", visible=False, name="url-state"),
        url_input=TextInput(value="", visible=False, name="url-input"),
        key_input=TextInput(value="", visible=False, name="key-input"),
        help_button=Button(label="? keys", width=60, name="help-button", align="end"),
        help=Div(text=help_html(), visible=False, name="key-help", stylesheets=[style],
                 width=360),
        downloads=downloads,
        select_view=select_view,
        match_view=match_view,
        tab_panels=tab_panels,
        tabs=Tabs(tabs=tab_panels, name="tabs", width=PAGE_WIDTH,
                  styles={"background": "#ffffff", "border": "1px solid #d0d7de",
                          "border-radius": "6px", "padding": "4px 10px 10px 10px"}),
        root=None,
        window=window,
    )
    header = column(
        row(page.title, column(page.busy, page.status)),
        row(page.state_select, page.threshold_slider, page.threshold_input,
            page.sign_toggle, page.pad_left, page.pad_right, page.track_select,
            page.fixed_y),
        row(page.doc_input, page.pos_input, page.window_size, page.prev_button,
            page.next_button, Div(width=30), page.phrase_input, page.phrase_button,
            page.phrase_next, page.phrase_status, page.help_button, page.url,
            page.url_input, page.key_input),
        page.help,
        name="header", width=PAGE_WIDTH,
        styles={"background": "#ffffff", "border": "1px solid #d0d7de",
                "border-radius": "6px", "padding": "6px 12px 8px 12px",
                "margin-bottom": "8px"},
    )
    page.url.js_on_change("text", CustomJS(code=PUSH_URL))
    page.root = column(header, page.tabs, name="root")
    return page


def help_html() -> str:
    """The keyboard help box."""
    rows = "".join(f"<tr><td><kbd>{key}</kbd></td><td>{what}</td></tr>" for key, what in KEYS)
    return (f"<div class='panel-title'>Keys</div><table class='stats'>{rows}</table>"
            "<div class='hint'>(not while typing in a field)</div>")


def view_names() -> list[str]:
    """The tabs' names in URLs, in tab order."""
    return ["select", "neuron", *[v.name for v in ANALYSIS_VIEWS]]


def placeholder() -> Any:
    """A tab's holder until its view is built: a column whose only child is swapped for the
    view (a page redraws a changed column; a tab panel's own child is not watched)."""
    return column(Div(text="<span class='hint'>loading…</span>", width=300))


def busy_html(labels: tuple[str, ...]) -> str:
    """The busy indicator: ready, or the labels of the work running."""
    if not labels:
        return "<span class='ready'>● ready</span>"
    return f"<span class='busy'><span class='spinner'></span>working… {', '.join(sorted(set(labels)))}</span>"


def prepare_document(doc: Document, shared: fetch.Shared) -> None:
    """What a session's document has besides the page: title, theme, page template."""
    doc.title = f"lstmsearch · {shared.index.path.name}"
    doc.theme = page_theme()
    doc.template = page_template()


def page_prototype(shared: fetch.Shared) -> Prototype[Page] | None:
    """The server's page, built once; None when copies of it cannot stand for new pages (see
    `server.prototype`), and every session builds its own."""

    def make() -> Prototype[Page] | None:
        page = build_page(shared)
        prototype = Prototype(page, page.root, shared=[page.window])
        try:
            first, reference = Document(), Document()
            App(first, shared, None, prototype.copy())
            prototype.serialize(first)
            App(reference, shared, None, build_page(shared))
            why = prototype.check(reference)
        except Exception as exc:  # see Prototype.check
            why = f"copying a page failed ({type(exc).__name__}: {exc})"
        if why is not None:
            log.warning("lstmsearch: pages are built for each session: %s", why)
            return None
        return prototype

    prototype, _ = shared.remember("page-prototype", make)
    return prototype


class App:
    """One browser session's app: views, header widgets and how they talk to each other."""

    def __init__(self, doc: Document, shared: fetch.Shared, executor: Executor | None,
                 page: Page) -> None:
        self.doc = doc
        self.shared = shared
        self.page = page
        self.session = Session(state=page.state_select.value, threshold=DEFAULT_THRESHOLD,
                               track=default_track(shared.track_names))
        self.width = int(page.window_size.value)
        self.session.window = (page.window.start, page.window.end)
        self._quiet = 0
        self.neuron_stale = True
        self.correlations_shown: tuple[str, str | None] | None = None
        self.phrase_hits: list[tuple[int, int]] = []
        self.phrase_at = -1

        self.title, self.busy, self.status = page.title, page.busy, page.status
        self.state_select, self.sign_toggle = page.state_select, page.sign_toggle
        self.fixed_y = page.fixed_y
        self.threshold_slider, self.threshold_input = page.threshold_slider, page.threshold_input
        self.pad_left, self.pad_right = page.pad_left, page.pad_right
        self.track_select = page.track_select
        self.doc_input, self.pos_input = page.doc_input, page.pos_input
        self.window_size = page.window_size
        self.prev_button, self.next_button = page.prev_button, page.next_button
        self.phrase_input, self.phrase_button = page.phrase_input, page.phrase_button
        self.phrase_next, self.phrase_status = page.phrase_next, page.phrase_status
        self.select_view, self.match_view = page.select_view, page.match_view
        self.tab_panels, self.tabs, self.root = page.tab_panels, page.tabs, page.root
        self.url, self.url_input, self.key_input = page.url, page.url_input, page.key_input
        self.help_button, self.help, self.downloads = page.help_button, page.help, page.downloads
        self.match_at = -1  # the match the keyboard last showed
        self._neuron_view: NeuronView | None = None
        self.analysis_views: list[Any] = [None] * len(ANALYSIS_VIEWS)
        self.analysis_shown: dict[str, object] = {}  # view name -> parameters last fetched

        self.runner = Runner(doc, executor, self._show_busy, self._show_error)
        self._wire()

        prepare_document(doc, shared)
        doc.add_root(self.root)
        doc.on_session_destroyed(self._on_session_destroyed)

    def _on_session_destroyed(self, session_context: object) -> None:
        """The server discarded this session (its page closed): let go of everything."""
        self.close()
        log.info("lstmsearch: session closed (%d open)", self.shared.session_closed())
        release_memory_soon()

    def close(self) -> None:
        """Drop this session's jobs, results and views, so that its memory is freed now."""
        self.runner.close()
        self.session.pattern = self.session.result = None
        self.phrase_hits = []
        self.analysis_shown.clear()

    # --- tabs built when first shown -----------------------------------------------------------

    @property
    def neuron_view(self) -> NeuronView:
        """The neuron tab's view, built (and put into its tab) on first use."""
        if self._neuron_view is None:
            s = self.session
            dim = self.shared.index.store(s.state).dim
            nv = NeuronView(char_level=self.shared.char_level, dim=dim, width=PLOT_WIDTH + 240)
            style = stylesheet()
            for div in (nv.stats, nv.corr_title, nv.legend):
                div.stylesheets = [style]
            nv.on_unit = self.open_unit
            nv.on_row = self.jump_to
            nv.on_threshold = self.set_neuron_threshold
            nv.ablation.on_ablate = self.ablate_unit
            nv.probe.on_probe = self.probe_track
            nv.set_unit(min(s.unit, dim - 1), dim)
            self._neuron_view = nv
            self.tab_panels[NEURON_TAB].child.children = [nv.layout]
        return self._neuron_view

    def analysis_view(self, at: int) -> Any:
        """Analysis view `at` (in `ANALYSIS_VIEWS` order), built on first use."""
        view = self.analysis_views[at]
        if view is None:
            view = ANALYSIS_VIEWS[at](self.shared)
            view.on_params = partial(self.refresh_analysis, view)
            view.on_span = self.show_span
            view.on_unit = self.open_unit
            self.analysis_views[at] = view
            self.tab_panels[FIRST_ANALYSIS_TAB + at].child.children = [view.layout]
        return view

    # --- wiring ------------------------------------------------------------------------------

    def _wire(self) -> None:
        sv, mv = self.select_view, self.match_view
        sv.wire()
        mv.wire()
        sv.on_span = self.set_span
        sv.on_unit = self.open_unit
        sv.on_threshold = self.set_threshold
        mv.on_row = self.jump_to
        mv.on_mode = self.set_mode
        mv.on_suggestion = self.use_suggestion
        # an emptied spinner sends None: back to the default rule
        mv.min_length.on_change("value", lambda a, o, n: self.set_lengths(min_length=n or 0))
        mv.length.on_change("value", lambda a, o, n: self.set_lengths(length=n or 0))
        self.state_select.on_change("value", lambda a, o, n: self.set_state(n))
        # while the slider is dragged only the lines move; the query runs on release
        self.threshold_slider.on_change("value", lambda a, o, n: self.preview_threshold(n))
        self.threshold_slider.on_change("value_throttled",
                                        lambda a, o, n: self.set_threshold_quantile(n))
        self.threshold_input.on_change("value", lambda a, o, n: self.set_threshold(n))
        self.sign_toggle.on_change("active", lambda a, o, n: self._on_sign(n))
        self.fixed_y.on_change("active", lambda a, o, n: self.set_fixed_y(n is True))
        self.pad_left.on_change("value", lambda a, o, n: self.set_padding(left=n))
        self.pad_right.on_change("value", lambda a, o, n: self.set_padding(right=n))
        self.track_select.on_change("value", lambda a, o, n: self.set_track(n))
        self.doc_input.on_change("value", lambda a, o, n: self.go_to_document(n))
        self.pos_input.on_change("value", lambda a, o, n: self.go_to_position(n))
        self.window_size.on_change("value", lambda a, o, n: self.set_window_size(n))
        self.prev_button.on_click(lambda: self.step_window(-1))
        self.next_button.on_click(lambda: self.step_window(+1))
        self.phrase_button.on_click(self.find_phrase)
        self.phrase_input.on_change("value", lambda a, o, n: self.find_phrase())
        self.phrase_next.on_click(self.next_phrase)
        self.tabs.on_change("active", lambda a, o, n: self._on_tab(n))
        self.url_input.on_change("value", lambda a, o, n: self.restore_url(n))
        self.key_input.on_change("value", lambda a, o, n: self.on_key(n))
        self.help_button.on_click(self.toggle_help)

    def _quietly(self, model: object, **values: object) -> None:
        """Set widget values without running their callbacks' effects."""
        self._quiet += 1
        try:
            for key, value in values.items():
                setattr(model, key, value)
        finally:
            self._quiet -= 1

    # --- busy indicator and errors -------------------------------------------------------------

    def _show_busy(self, labels: tuple[str, ...]) -> None:
        self.busy.text = busy_html(labels)

    def _show_error(self, message: str) -> None:
        self.status.text = f"<span class='error'>{message}</span>"

    def _clear_error(self) -> None:
        if self.status.text:
            self.status.text = ""

    # --- user actions ------------------------------------------------------------------------

    def set_state(self, state: str) -> None:
        """Switch the layer/kind every view shows; the pattern is selected again on it."""
        if self._quiet or state == self.session.state:
            return
        if state not in self.shared.state_names:
            self._show_error(f"no state {text(state)!r} in this index")
            self._quietly(self.state_select, value=self.session.state)
            return
        store = self.shared.index.store(state)
        self.session.state = state
        self._sync_threshold_widgets()
        self._show_axis()
        self.session.unit = min(self.session.unit, store.dim - 1)
        self.session.neuron_threshold = None
        if self._neuron_view is not None:
            self._neuron_view.set_unit(self.session.unit, store.dim)
        self.neuron_stale = True
        self.refresh_window()
        self.run_pattern()
        self._refresh_neuron_if_visible()

    def set_threshold(self, value: float | None) -> None:
        """A new threshold from the slider, the number field or a dragged threshold line."""
        if self._quiet:
            return
        value = finite(value)
        if value is None:
            self._sync_threshold_widgets()  # back to the threshold in use
            return
        value = min(round(abs(value), 3), MAX_THRESHOLD)
        if value == self.session.threshold:
            self._sync_threshold_widgets()
            return
        self.session.threshold = value
        self._threshold_changed(neuron=False)

    def _threshold_changed(self, neuron: bool = True) -> None:
        """The threshold or sign changed: widgets, lines, S and its matches follow (and the
        neuron view, which has a threshold of its own but the same sign, for a new sign)."""
        self._sync_threshold_widgets()
        self.run_pattern()
        if neuron:
            self.neuron_stale = True
            self._refresh_neuron_if_visible()

    def set_neuron_threshold(self, value: float | None) -> None:
        """The neuron view's own threshold (from its number box or its histogram's line)."""
        value = finite(value)
        if self._quiet or value is None:
            return
        self.session.neuron_threshold = min(round(abs(value), 3), MAX_THRESHOLD)
        self.neuron_stale = True
        self._refresh_neuron_if_visible()

    def set_threshold_quantile(self, quantile: float | None) -> None:
        """The slider released at a quantile of |x|: its threshold."""
        quantile = finite(quantile)
        if self._quiet or quantile is None:
            return
        self.set_threshold(self.shared.scale(self.session.state).threshold_at(quantile))

    def preview_threshold(self, quantile: float | None) -> None:
        """Move the threshold lines while the slider is being dragged (no query yet)."""
        quantile = finite(quantile)
        if self._quiet or quantile is None:
            return
        value = self.shared.scale(self.session.state).threshold_at(quantile)
        self.select_view.set_threshold(value, self.session.sign)
        self._quietly(self.threshold_input, value=value)

    def _sync_threshold_widgets(self) -> None:
        value, sign = self.session.threshold, self.session.sign
        quantile = round(self.shared.scale(self.session.state).quantile_of(value), 3)
        self._quietly(self.threshold_slider, value=quantile)
        self._quietly(self.threshold_input, value=value)
        self._quietly(self.sign_toggle, active=SIGNS.index(sign))
        self.select_view.set_threshold(value, sign)

    def _on_sign(self, active: object) -> None:
        """The sign toggle: its button's sign, or (an index it has no button for) the sign
        in use shown again."""
        if self._quiet:
            return
        if chosen_index(active, len(SIGNS)) != active:
            self._quietly(self.sign_toggle, active=SIGNS.index(self.session.sign))
            return
        self.set_sign(SIGNS[active])

    def set_sign(self, sign: int | None) -> None:
        """Positive patterns (x ≥ θ) or negative ones (x ≤ −θ); None: not a sign the page
        offers (the widget shows the sign in use again)."""
        if self._quiet or sign == self.session.sign:
            return
        if sign not in SIGNS:
            self._sync_threshold_widgets()
            return
        self.session.sign = sign
        self._threshold_changed()

    def set_fixed_y(self, fixed: bool) -> None:
        """One y axis for every window (the state's values from its 0.1% to 99.9% quantile),
        so that windows compare; or each window's own."""
        if self._quiet:
            return
        self.session.fixed_y = bool(fixed)
        self._show_axis()

    def _show_axis(self) -> None:
        s = self.session
        scale = self.shared.scale(s.state)
        self.select_view.set_fixed_y((scale.low, scale.high) if s.fixed_y else None)

    def use_suggestion(self, threshold: float, sign: int) -> None:
        """Take a suggested threshold and sign (S was empty at the ones in use)."""
        value = finite(threshold)
        if value is None or sign not in SIGNS:
            return
        neuron = sign != self.session.sign
        self.session.sign = sign
        self.session.threshold = min(round(abs(value), 3), MAX_THRESHOLD)
        self._threshold_changed(neuron)

    def set_padding(self, left: int | None = None, right: int | None = None) -> None:
        """Padding tokens that must be off before (left) and after (right) the span."""
        if self._quiet:
            return
        left, right = clamped(left, 0, MAX_PAD), clamped(right, 0, MAX_PAD)
        if left is not None:
            self.session.pad_left = left
        if right is not None:
            self.session.pad_right = right
        self._quietly(self.pad_left, value=self.session.pad_left)
        self._quietly(self.pad_right, value=self.session.pad_right)
        self.run_pattern()

    def set_lengths(self, min_length: object = None, length: object = None) -> None:
        """The lengths a match may have: at least `min_length`, or exactly `length` tokens
        (0: the default rule, any length)."""
        if self._quiet:
            return
        mv, s = self.match_view, self.session
        if min_length is not None:
            value = clamped(min_length, 0, MAX_LENGTH)
            s.min_length = value or None
            if value:
                s.length = None  # one rule at a time
        if length is not None:
            value = clamped(length, 0, MAX_LENGTH)
            s.length = value or None
            if value:
                s.min_length = None
        self._quietly(mv.min_length, value=s.min_length or 0)
        self._quietly(mv.length, value=s.length or 0)
        self.run_pattern()

    def set_track(self, name: str) -> None:
        """The annotation track drawn under tokens and match rows."""
        if self._quiet:
            return
        if name != NO_TRACK and name not in self.shared.track_names:
            self._show_error(f"no track {text(name)!r} in this index")
            self._quietly(self.track_select, value=self.session.track or NO_TRACK)
            return
        self.session.track = None if name == NO_TRACK else name
        self.neuron_stale = True
        self.refresh_window()
        self.run_pattern()
        self._refresh_neuron_if_visible()

    def set_span(self, start: int, end: int) -> None:
        """The brushed span [start, end): select S there and match it."""
        self.session.span = (int(start), int(end))
        self.session.focus = None
        self.select_view.show_focus(None)
        self.run_pattern()

    def set_mode(self, mode: str) -> None:
        """"match" (pattern matches) or "nearest" (FAISS nearest states)."""
        if self._quiet:
            return
        self.session.mode = mode
        self.run_pattern()

    def set_window_size(self, width: int | None) -> None:
        """Tokens per window."""
        width = clamped(width, *WINDOW_RANGE)
        if self._quiet or width is None:
            return
        self._quietly(self.window_size, value=width)
        self.width = width
        start = self.session.window[0]
        self._set_window(start)

    def step_window(self, direction: int) -> None:
        """Move the window by three quarters of its width."""
        start = self.session.window[0] + direction * max(1, (3 * self.width) // 4)
        self._set_window(start)

    def go_to_document(self, doc: int | None) -> None:
        """Show the start of document `doc`."""
        number = finite(doc)
        if self._quiet:
            return
        if number is None:
            self._show_place()
            return
        try:
            start, _ = fetch.document_window(self.shared, int(number), self.width)
        except ValueError as exc:
            self._show_error(str(exc))
            self._show_place()
            return
        self._set_window(start)

    def go_to_position(self, pos: int | None) -> None:
        """Show token position `pos` (a third into the window)."""
        number = finite(pos)
        if self._quiet:
            return
        if number is None or not 0 <= number < self.shared.index.n_tokens:
            if number is not None:
                self._show_error(f"position {number:.0f} out of range "
                                 f"0..{self.shared.index.n_tokens - 1}")
            self._show_place()
            return
        pos = int(number)
        self._set_window(pos - self.width // 3, focus=(pos, pos + 1))

    def _show_place(self) -> None:
        """The document and position fields show where the window is (again)."""
        s = self.session
        shown = s.focus[0] if s.focus is not None else s.window[0]
        self._quietly(self.doc_input, value=int(self.shared.index.doc_of(shown)))
        self._quietly(self.pos_input, value=int(s.window[0]))

    def show_span(self, start: int, end: int) -> None:
        """Show tokens [start, end) outlined in the select view (from an analysis view)."""
        self._set_window(start - max(2, self.width // 4), focus=(int(start), int(end)))
        self.tabs.active = SELECT_TAB

    def jump_to(self, match_row: fetch.MatchRow) -> None:
        """Show a match (or a neuron context) in the select view, outlined."""
        self._set_window(match_row.start - max(2, self.width // 4),
                         focus=(match_row.start, match_row.end))
        self.tabs.active = SELECT_TAB

    def open_unit(self, unit: int) -> None:
        """Show one unit in the neuron view."""
        dim = self.shared.index.store(self.session.state).dim
        unit = int(min(max(0, unit), dim - 1))
        if unit != self.session.unit:
            self.session.neuron_threshold = None  # the new unit's own default
        self.session.unit = unit
        self.neuron_view.set_unit(unit, dim)
        self.show_url()
        self.neuron_stale = True
        if self.tabs.active != NEURON_TAB:
            self.tabs.active = NEURON_TAB  # fires _on_tab, which refreshes
        else:
            self.refresh_neuron()

    def find_phrase(self) -> None:
        """Search the corpus for the phrase and show the first occurrence."""
        phrase = text(self.phrase_input.value)
        if not phrase.strip():
            return
        self.runner.submit("find", lambda: fetch.find_phrase(self.shared, phrase),
                           self._apply_phrase, label="search")

    def _apply_phrase(self, hits: list[tuple[int, int]]) -> None:
        self.phrase_hits = hits
        self.phrase_at = -1
        self.phrase_next.disabled = len(hits) < 2
        if not hits:
            self.phrase_status.text = "<span class='hint'>not found</span>"
            return
        self.next_phrase()

    def next_phrase(self) -> None:
        """Show the next occurrence of the searched phrase."""
        if not self.phrase_hits:
            return
        self.phrase_at = (self.phrase_at + 1) % len(self.phrase_hits)
        start, end = self.phrase_hits[self.phrase_at]
        more = "+" if len(self.phrase_hits) >= 100 else ""
        self.phrase_status.text = (
            f"<span class='hint'>{self.phrase_at + 1} of {len(self.phrase_hits)}{more}</span>"
        )
        self.select_phrase(start, end)

    def select_phrase(self, start: int, end: int) -> None:
        """Show a found phrase and select it as the span, as the CLI's `match --phrase`
        does: S with the current threshold, and its matches."""
        self.session.span = (int(start), int(end))
        self._set_window(start - max(2, self.width // 4), focus=(start, end))
        self.run_pattern()

    def _on_tab(self, active: int) -> None:
        self.show_url()
        if active == NEURON_TAB and self.neuron_stale:
            self.refresh_neuron()
        view = self.active_analysis()
        if view is not None:
            self.refresh_analysis(view)

    # --- data flow ---------------------------------------------------------------------------

    def _set_window(self, start: int, focus: tuple[int, int] | None = None) -> None:
        n = self.shared.index.n_tokens
        start = int(max(0, min(start, n - self.width)))
        self.session.window = (start, min(n, start + self.width))
        self.session.focus = focus
        self._clear_error()
        self.refresh_window()

    def refresh_window(self) -> None:
        """Load the current window (tokens and every unit's values) and draw it."""
        s = self.session
        state, (start, end), track = s.state, s.window, s.track
        self.runner.submit(
            "window", lambda: fetch.load_window(self.shared, state, start, end, track),
            self._apply_window, label="window",
        )
        self._refresh_analysis_if_visible()

    def _apply_window(self, window: fetch.Window) -> None:
        s = self.session
        self.select_view.show_window(window, self.shared.track_range(s.track))
        self._show_pattern_marks()
        self.select_view.show_focus(s.focus)
        shown = s.focus[0] if s.focus is not None else window.start
        self._quietly(self.doc_input, value=int(window.docs[shown - window.start])
                      if window.start <= shown < window.end else int(window.docs[0]))
        self._quietly(self.pos_input, value=int(window.start))

    def _show_pattern_marks(self) -> None:
        s = self.session
        pattern = s.pattern
        span = (pattern.start, pattern.end) if pattern is not None else None
        bounds = None
        if pattern is not None:
            index = self.shared.index
            bounds = (int(index.doc_starts[pattern.document]),
                      int(index.doc_starts[pattern.document + 1]))
        pad = (pattern.pad_left, pattern.pad_right) if pattern is not None else (0, 0)
        self.select_view.show_pattern(pattern, span, pad, bounds)
        self.select_view.select_span(span)

    def run_pattern(self) -> None:
        """Select S on the brushed span and match it (or search nearest states)."""
        s = self.session
        self.show_url()
        if s.span is None:
            return
        self.match_at = -1
        q = fetch.PatternQuery(state=s.state, start=s.span[0], end=s.span[1],
                               threshold=s.threshold, pad_left=s.pad_left,
                               pad_right=s.pad_right, sign=s.sign,
                               min_length=s.min_length, length=s.length)
        track = s.track
        width = RIGHT_CELLS if self.shared.char_level else RIGHT_WORDS
        self._clear_error()
        if s.mode == "attention":
            def attends() -> tuple[object, fetch.PatternResult]:
                return None, fetch.run_attends_like(self.shared, q.start, q.end, 50, track,
                                                    width)

            self.runner.submit("pattern", attends, self._apply_nearest, label="attends like")
            return
        if s.mode == "nearest":
            def work() -> tuple[object, fetch.PatternResult]:
                pattern = fetch.select(self.shared, q)
                return pattern, fetch.run_nearest(self.shared, q.state, q.start, q.end, 50,
                                                  track, width)

            self.runner.submit("pattern", work, self._apply_nearest, label="nearest")
            return
        self.runner.submit("pattern", lambda: fetch.run_pattern(self.shared, q, track, width),
                           partial(self._apply_pattern, q=q), label="match")

    def _apply_pattern(self, result: fetch.PatternResult, q: fetch.PatternQuery) -> None:
        s = self.session
        s.pattern, s.result = result.pattern, result
        s.generation += 1
        if result.result is None:
            self.match_view.show_empty(result.suggestions)
            self._show_pattern_marks()
            self._show_downloads()
            return
        # the matches first: the page draws them before it works through the rest, and the
        # candidates' lengths are counted after them
        self.match_view.show_rows(result, self.shared.track_range(s.track))
        self.runner.later(partial(self._show_details, s.generation), SECONDARY_DELAY_MS)
        generation = s.generation
        self.runner.submit(
            "lengths", lambda: fetch.candidate_lengths(self.shared, result.pattern, q),
            partial(self._apply_lengths, generation), label="candidates")

    def _apply_lengths(self, generation: int, lengths: tuple[dict[int, int], int]) -> None:
        """The length histogram of the candidates, once counted: into the summary."""
        s = self.session
        if generation != s.generation or s.result is None or s.result.result is None:
            return
        histogram, n = lengths
        s.result = replace(s.result, result=replace(s.result.result,
                                                    length_histogram=histogram, n_candidates=n))
        self.match_view.show_summary(s.result, s.track, self.shared.track_range(s.track))

    def _show_details(self, generation: int) -> None:
        """What follows the matches: S in the select view, the summary, the histogram."""
        s = self.session
        if generation != s.generation:
            return  # a newer result came meanwhile and shows its own
        self.match_view.show_summary(s.result, s.track, self.shared.track_range(s.track))
        self._show_pattern_marks()
        self._show_downloads()

    def _apply_nearest(self, value: tuple[object, fetch.PatternResult]) -> None:
        s = self.session
        pattern, result = value
        s.pattern, s.result = pattern, result
        s.generation += 1
        self.match_view.show_rows(result, self.shared.track_range(s.track))
        self.runner.later(partial(self._show_details, s.generation), SECONDARY_DELAY_MS)

    # --- the query as a URL, back and forward, keys ----------------------------------------------

    def query(self) -> url_state.Query:
        """What the session shows, as a URL holds it."""
        s = self.session
        at = self.tabs.active if 0 <= self.tabs.active < len(view_names()) else SELECT_TAB
        return url_state.Query(
            index=self.shared.index.path.name, view=view_names()[at], state=s.state,
            span=s.span, threshold=s.threshold, sign=s.sign, padding=(s.pad_left, s.pad_right),
            unit=s.unit, mode=s.mode)

    def show_url(self) -> None:
        """Put the query into the address bar (a new entry of the browser's history)."""
        query = url_state.encode(self.query())
        if self.url.text != query:
            self.url.text = query

    def _show_downloads(self) -> None:
        """The download links of the query shown (after its rows: the page draws those
        first)."""
        links = self._download_links(self.url.text)
        if self.downloads.text != links:
            self.downloads.text = links

    def _download_links(self, query: str) -> str:
        s = self.session
        if s.span is None:
            return ""
        what = {"nearest": ("nearest", "neuron"), "attention": ("neuron",)}.get(
            s.mode, ("matches", "neuron"))
        links = [f"<a href='{escape(f'download?{query}&what={w}&format={f}')}' download "
                 f"class='download' target='_blank'>{w} ({f.upper()})</a>"
                 for w in what for f in ("csv", "json")]
        return ("<span class='hint'>Download, with the query that gave them: </span>"
                + " · ".join(links))

    def restore_url(self, value: object) -> None:
        """Show the query of a URL (the page's address when it opened, or one the browser's
        back and forward buttons went to): what in it cannot hold is named in the status
        line and left at its default."""
        if self._quiet:
            return
        search = text(value).split("#", 1)[0]
        self.restore(url_state.arguments(search))

    def restore(self, args: dict) -> None:
        """Show the query that request arguments `args` hold (see `server.url_state`)."""
        shared, s = self.shared, self.session
        index = shared.index
        decoded = url_state.decode(
            args, index_name=index.path.name, state_names=shared.state_names,
            dim_of=lambda name: index.store(name).dim, doc_starts=index.doc_starts,
            views=view_names(), default_state=default_state(shared.state_names))
        q = decoded.query
        state = q.state or default_state(shared.state_names)
        if state != s.state:
            s.state = state
            s.neuron_threshold = None
            self._quietly(self.state_select, value=state)
            self.neuron_stale = True
        s.threshold = q.threshold if q.threshold is not None else DEFAULT_THRESHOLD
        s.sign = q.sign if q.sign is not None else 1
        s.pad_left, s.pad_right = q.padding if q.padding is not None else (1, 0)
        self._quietly(self.pad_left, value=s.pad_left)
        self._quietly(self.pad_right, value=s.pad_right)
        dim = index.store(s.state).dim
        unit = q.unit if q.unit is not None else min(s.unit, dim - 1)
        if unit != s.unit:
            s.neuron_threshold = None
            s.unit = unit
            self.neuron_stale = True
        if self._neuron_view is not None:
            self._neuron_view.set_unit(s.unit, dim)
        mode, problems = q.mode, list(decoded.problems)
        if url_state.MODES.index(mode) >= len(self.match_view.mode.labels):
            problems.append(f"mode {mode!r}: this index stores no attention")
            mode = "match"
        s.mode = mode
        self._quietly(self.match_view.mode, active=url_state.MODES.index(mode))
        self._sync_threshold_widgets()
        self._show_axis()
        s.span = q.span
        if q.span is not None:
            self._set_window(q.span[0] - max(2, self.width // 4))
        else:
            s.pattern = s.result = None
            self.match_view.show_idle()
            self._set_window(s.window[0])
        self.run_pattern()
        active = view_names().index(q.view)
        if self.tabs.active != active:
            self.tabs.active = active  # fires _on_tab
        else:
            self._on_tab(active)
        self._show_downloads()
        if problems:
            self._show_error("; ".join(problems))

    def on_key(self, value: object) -> None:
        """A key pressed on the page (outside text fields): see KEYS."""
        key = text(value).split(" ", 1)[0]
        s = self.session
        if key in ("j", "k"):
            rows = self.match_view.rows
            if rows:
                step = 1 if key == "j" else -1
                self.match_at = (self.match_at + step) % len(rows)
                self.jump_to(rows[self.match_at])
        elif key in ("]", "[") and s.span is not None:
            start, end = s.span
            if key == "]":
                doc = int(self.shared.index.doc_of(start))
                end = min(end + 1, int(self.shared.index.doc_starts[doc + 1]))
            else:
                end = max(start + 1, end - 1)
            if (start, end) != s.span:
                s.span = (start, end)
                s.focus = None
                self.select_view.show_focus(None)
                self._show_pattern_marks()
                self.run_pattern()
        elif key in ("+", "=", "-"):
            scale = self.shared.scale(s.state)
            step = THRESHOLD_STEP if key != "-" else -THRESHOLD_STEP
            self.set_threshold(scale.threshold_at(scale.quantile_of(s.threshold) + step))
        elif key == "?":
            self.toggle_help()

    def toggle_help(self) -> None:
        """Show or hide the keyboard help box."""
        self.help.visible = not self.help.visible

    def context(self) -> analyses.Context:
        """What the session looks at, for the analysis views."""
        s = self.session
        start, end = s.window
        doc = int(self.shared.index.doc_of(start)) if self.shared.index.n_tokens else 0
        return analyses.Context(state=s.state, window=(start, end), document=doc,
                                focus=s.focus, unit=s.unit, track=s.track,
                                char_level=self.shared.char_level, span=s.span,
                                threshold=s.threshold, sign=s.sign,
                                padding=(s.pad_left, s.pad_right))

    def active_analysis(self) -> object | None:
        """The analysis view whose tab is shown, if any."""
        at = self.tabs.active - FIRST_ANALYSIS_TAB
        return self.analysis_view(at) if 0 <= at < len(self.analysis_views) else None

    def refresh_analysis(self, view) -> None:
        """Compute the view's analysis for the current context, unless it already shows it."""
        try:
            params = view.params(self.context())
        except ValueError as exc:
            view.show_message(str(exc))
            return
        if self.analysis_shown.get(view.name) == params:
            return
        self.analysis_shown[view.name] = params

        def failed(message: str) -> None:
            self.analysis_shown.pop(view.name, None)
            view.show_message(message)

        # kept among the server's recent results: another session (or this one, back at
        # the same window) gets the same analysis without computing it again
        work = partial(self.shared.recent, ("analysis", view.name, params),
                       partial(view.fetch, self.shared, params))
        self.runner.submit(f"analysis:{view.name}", work, view.show,
                           label=view.title.lower(), on_error=failed)

    def _refresh_analysis_if_visible(self) -> None:
        view = self.active_analysis()
        if view is not None:
            self.refresh_analysis(view)

    def refresh_neuron(self) -> None:
        """Load the neuron view's unit."""
        s = self.session
        q = fetch.NeuronQuery(state=s.state, unit=s.unit, threshold=s.neuron_threshold,
                              sign=s.sign)
        track = s.track
        self.neuron_stale = False
        self.neuron_view.probe.reset((s.state, track))
        self.runner.submit("neuron", lambda: fetch.neuron(self.shared, q, track),
                           self.neuron_view.show, label="neuron")
        self.refresh_correlations()

    def ablate_unit(self, value: str) -> None:
        """Clamp the neuron view's unit (to zero or its mean) and show what the model loses."""
        s = self.session
        state, unit, track = s.state, s.unit, s.track
        panel = self.neuron_view.ablation
        self.runner.submit("ablation", lambda: analyses.ablation(self.shared, state, unit, value),
                           lambda result: panel.show(result, track), label="ablation",
                           on_error=panel.show_message)

    def probe_track(self) -> None:
        """Fit a linear probe of the session's track on its state (and the control)."""
        state, track = self.session.state, self.session.track
        panel = self.neuron_view.probe
        if not track:
            return
        self.runner.submit("probe", lambda: analyses.probe(self.shared, state, track),
                           panel.show, label="probe", on_error=panel.show_message)

    def _refresh_neuron_if_visible(self) -> None:
        if self.tabs.active == NEURON_TAB:
            self.refresh_neuron()

    def refresh_correlations(self) -> None:
        """Units ranked by correlation with the chosen track, for the neuron view.

        Computed when the neuron view is shown (a pass over every stored value of the state,
        once per state and track for the whole server) and only when state or track changed.
        """
        s = self.session
        state, track = s.state, s.track
        if (state, track) == self.correlations_shown:
            return
        self.correlations_shown = (state, track)
        if not track:
            self.neuron_view.show_correlations(None, None)
            return

        def work() -> list[tuple[int, float]] | None:
            try:
                return fetch.correlations(self.shared, state, track)
            except ValueError:
                return None

        self.runner.submit("correlate", work,
                           lambda pairs: self.neuron_view.show_correlations(track, pairs),
                           label="correlation")


def build(doc: Document, index: Index | fetch.Shared, executor: Executor | None = None) -> App:
    """Put the app for `index` into `doc`; returns the `App` (its views hold the models).

    Pass the server's shared thread pool as `executor` so that queries run off the event
    loop; without one, every query runs at once (what tests do).
    """
    shared = index if isinstance(index, fetch.Shared) else fetch.Shared(index)
    prototype = page_prototype(shared)
    page = prototype.copy() if prototype is not None else build_page(shared)
    app = App(doc, shared, executor, page)
    if prototype is not None:
        answer_first_pull(doc, prototype)
    request = getattr(doc.session_context, "request", None)
    arguments = getattr(request, "arguments", None) or {}
    if any(k in arguments for k in ("index", "view", "layer", "kind", "span", "threshold",
                                    "sign", "padding", "unit", "mode")):
        app.restore(arguments)
    shared.apps.add(app)
    log.info("lstmsearch: session opened (%d open)", shared.session_opened())
    return app


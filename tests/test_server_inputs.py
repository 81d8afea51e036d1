"""What a page sends is checked on the server (server/inputs.py): every widget, selection and
tab of every view is sent values a browser's widget would not send (numbers out of range,
NaN, infinities, options that do not exist, rows a source does not have) and the app raises
nothing, uses only values within the widgets' bounds, and keeps answering."""

from __future__ import annotations

import math

import pytest
from bokeh.document import Document
from bokeh.models import (
    CheckboxButtonGroup,
    CheckboxGroup,
    ColumnDataSource,
    NumericInput,
    RadioButtonGroup,
    Select,
    Slider,
    Span,
    Spinner,
    Tabs,
    TextInput,
)
from conftest import analysis_view

from server import inputs
from server.app import ANALYSIS_VIEWS, DEFAULT_THRESHOLD, NEURON_TAB, SELECT_TAB, App, build
from server.fetch import Shared

NUMBERS = [math.nan, math.inf, -math.inf, -1e12, 1e12, 2**62, None]
INDICES = [[10**9], [-1], [-5, 3, 10**12], [0, 10**7]]


def within(widget) -> bool:
    """A number widget holds no usable number, or one within its bounds."""
    number = inputs.finite(widget.value)
    if number is None:
        return True
    low = -math.inf if widget.low is None else widget.low
    high = math.inf if widget.high is None else widget.high
    return low <= number <= high


def options_of(select: Select) -> list[str]:
    return [o[0] if isinstance(o, (tuple, list)) else o for o in select.options]


def hostile(app: App, models, explained=lambda: False) -> None:
    """Send every model of `models` the values a page could send; nothing may raise, and a
    number outside a widget's bounds is either brought within them or `explained()` (an
    error shown that names it)."""
    for model in models:
        if isinstance(model, (Spinner, NumericInput)):
            for value in NUMBERS:
                model.value = value
                assert within(model) or explained(), (model.name, model.value)
        elif isinstance(model, Slider):
            for value in (math.nan, 1e12, -1e12):
                model.value = value
                model.set_from_json("value_throttled", value)  # as a page's drag sends it
        elif isinstance(model, Select) and model.options:
            model.value = "no such option"
        elif isinstance(model, TextInput):
            model.value = "x" * 100_000
            model.value = "1, 99999999999999999999"
            model.value = ""
        elif isinstance(model, RadioButtonGroup):
            model.active = 99
            model.active = -1
        elif isinstance(model, (CheckboxButtonGroup, CheckboxGroup)):
            model.active = [99, -1]
            model.active = []
        elif isinstance(model, ColumnDataSource):
            for indices in INDICES:
                model.selected.indices = indices
            model.selected.indices = []
        elif isinstance(model, Span):
            model.location = math.nan
            model.location = 1e300
        elif isinstance(model, Tabs):
            model.active = 99
            model.active = -1
            model.active = SELECT_TAB


@pytest.fixture()
def app(shared: Shared) -> App:
    return build(Document(), shared)


def brushes_a_pattern(app: App) -> bool:
    """Whether, back at the start with the default threshold and padding (a huge threshold
    is a valid one that no unit reaches), brushing two-token spans still finds a pattern
    with matches."""
    app.set_threshold(DEFAULT_THRESHOLD)
    app.set_padding(left=1, right=0)
    app.go_to_position(0)
    for i in range(1, 20):
        app.select_view.tokens.selected.indices = [i, i + 1]
        s = app.session
        if s.pattern is not None and s.pattern.units and s.result is not None:
            return bool(s.result.rows)
    return False


def test_the_header_select_and_match_views_refuse_what_a_page_cannot_send(app: App) -> None:
    state, track, sign = app.session.state, app.session.track, app.session.sign
    hostile(app, app.root.references())
    s = app.session
    assert (s.state, s.track, s.sign) == (state, track, sign)
    assert app.state_select.value == state
    assert app.sign_toggle.active == (0 if sign > 0 else 1)
    assert app.track_select.value in options_of(app.track_select)
    assert 0 <= s.pad_left <= 50 and 0 <= s.pad_right <= 50
    assert math.isfinite(s.threshold)
    start, end = s.window
    assert 0 <= start < end <= app.shared.index.n_tokens
    assert app.match_view.mode_name == "match"
    assert brushes_a_pattern(app)


@pytest.mark.parametrize("view_class", ANALYSIS_VIEWS, ids=lambda v: v.name)
def test_every_analysis_view_refuses_what_a_page_cannot_send(app: App, view_class) -> None:
    view = analysis_view(app, view_class)

    def explained() -> bool:
        message = getattr(view, "message", None)
        return message is not None and message.visible and "out of range" in message.text

    hostile(app, view.layout.references(), explained)
    view = analysis_view(app, view_class)
    for model in view.layout.references():
        if isinstance(model, (Spinner, NumericInput)):
            assert within(model) or explained(), model.name
    # the parameters the view asks for are within its widgets' bounds and options
    for model in view.layout.references():
        if isinstance(model, (Spinner, NumericInput)) and model.value is None:
            model.value = model.low if model.low is not None else 0
    try:
        params = view.params(app.context())
    except ValueError as exc:  # a one-line reason, shown in the view
        assert "\n" not in str(exc)
    else:
        for model in view.layout.references():
            if isinstance(model, Select) and model.options and model.visible:
                assert model.value in options_of(model), model.name
        assert params is not None
    app.tabs.active = SELECT_TAB
    assert brushes_a_pattern(app)


def test_the_neuron_view_refuses_what_a_page_cannot_send(app: App) -> None:
    app.tabs.active = NEURON_TAB
    hostile(app, app.neuron_view.layout.references())
    dim = app.shared.index.store(app.session.state).dim
    assert 0 <= app.session.unit < dim
    assert within(app.neuron_view.unit)
    app.tabs.active = SELECT_TAB
    assert brushes_a_pattern(app)


def test_the_helpers() -> None:
    assert inputs.finite("3.5") == 3.5 and inputs.finite("x") is None
    assert inputs.finite(math.inf) is None and inputs.finite(None) is None
    assert inputs.clamped(1e12, 0, 50) == 50 and inputs.clamped(-3, 0, 50) == 0
    spinner = Spinner(low=2, high=10, value=1e9)
    assert inputs.bounded(spinner) == 10 and spinner.value == 10
    spinner.value = math.nan
    assert inputs.bounded(spinner) is None
    select = Select(options=[("a", "A"), ("b", "B")], value="zz")
    assert inputs.chosen(select) == "a" and select.value == "a"
    assert inputs.chosen(Select(options=["a", "b"], value="b")) == "b"
    assert inputs.chosen_index(7, 2) == 0 and inputs.chosen_index(1, 2) == 1
    assert inputs.chosen_indices([3, 1, 1, -2, 0], 2) == [0, 1]
    assert inputs.selected_range([5, -1, 10**9, 2], 8) == (2, 5)
    assert inputs.selected_range([10**9], 8) is None
    source = ColumnDataSource({"unit": [4, 7]})
    assert inputs.tapped(source, "unit", [1]) == 7
    assert inputs.tapped(source, "unit", [2]) is None and inputs.tapped(source, "unit", [-1]) is None
    assert len(inputs.text("y" * 10**6)) == inputs.MAX_TEXT

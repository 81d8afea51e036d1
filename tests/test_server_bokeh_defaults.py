"""Bokeh's property defaults kept per class (server/bokeh_defaults.py): every view of the app,
after the same actions, serializes exactly as with Bokeh's own default machinery."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator

import numpy as np
import pytest
from bokeh.core.json_encoder import serialize_json
from bokeh.document import Document
from bokeh.model import Model
from bokeh.models import Range1d
from bokeh.plotting import figure
from conftest import analysis_view

from server.app import ANALYSIS_VIEWS, NEURON_TAB, App, build_page
from server.bokeh_defaults import cache_defaults, uncache_defaults
from server.fetch import Shared
from server.prototype import renumbered


@pytest.fixture()
def cached() -> Iterator[None]:
    cache_defaults()
    try:
        yield
    finally:
        uncache_defaults()


def every_view(index) -> Document:
    """A new server's first session over `index` (nothing cached yet): a page built anew, a
    pattern matched, and every tab shown."""
    shared = Shared(index)
    doc = Document()
    app = App(doc, shared, None, build_page(shared))
    for i in range(1, 20):  # brush until a span has a pattern
        app.select_view.tokens.selected.indices = [i, i + 1]
        if app.session.pattern is not None and app.session.pattern.units:
            break
    assert app.session.result is not None and app.session.result.rows
    app.tabs.active = NEURON_TAB
    for view_class in ANALYSIS_VIEWS:
        analysis_view(app, view_class)
    app.set_threshold(0.45)
    return doc


def serialized(doc: Document) -> str:
    """`doc` serialized, model ids renumbered and the queries' timings left out."""
    return re.sub(r"\d+ ms\b", "… ms", renumbered(doc))


def every_value(doc: Document) -> list:
    """Every property of every model of `doc`, defaults included (which serializing leaves
    out), models in the order serializing meets them and referred to by that order."""
    order: dict[str, int] = {}
    for found in re.finditer(r'"id":"([^"]+)"', serialize_json(doc.to_json(deferred=False))):
        order.setdefault(found.group(1), len(order))

    def plain(value: object) -> object:
        if isinstance(value, Model):
            return ("model", order[value.id])
        if isinstance(value, dict):
            return sorted((repr(k), plain(v)) for k, v in value.items())
        if isinstance(value, (list, tuple, set)):
            items = [plain(v) for v in value]
            return sorted(map(repr, items)) if isinstance(value, set) else items
        if isinstance(value, np.ndarray):
            return repr(value.tolist())  # as text: NaN equals NaN
        if dataclasses.is_dataclass(value):  # bokeh's Value, Field, ...: may refer to models
            return (type(value).__name__,
                    [plain(getattr(value, f.name)) for f in dataclasses.fields(value)])
        return re.sub(r"\d+ ms\b", "… ms", repr(value))

    models = sorted((m for m in doc.models if m.id in order), key=lambda m: order[m.id])
    assert len(models) == len(doc.models)
    return [(type(m).__name__, plain(m.properties_with_values(include_defaults=True)))
            for m in models]


def test_every_view_serializes_as_with_bokehs_own_defaults(tiny_index) -> None:
    doc = every_view(tiny_index)
    expected, values = serialized(doc), every_value(doc)
    assert "match-plot" in expected and "(… ms)" in expected and len(values) > 1000
    cache_defaults()
    try:
        first, again = every_view(tiny_index), every_view(tiny_index)  # again: from the cache
        assert serialized(first) == serialized(again) == expected
        assert every_value(first) == every_value(again) == values
    finally:
        uncache_defaults()
    assert serialized(every_view(tiny_index)) == expected  # Bokeh's own functions are back


def test_defaults_that_are_containers_models_or_themed_are_not_shared(cached) -> None:
    first, second = figure(), figure()
    assert first.renderers is not second.renderers  # a container default per model
    assert first.toolbar is not second.toolbar  # a model default per model
    first.renderers.append(first.scatter(x=[1], y=[1]))
    assert second.renderers == []
    # a theme's value wins over the class default, and the class default stays for others
    from bokeh.themes import Theme

    doc = Document()
    doc.theme = Theme(json={"attrs": {"Range1d": {"start": 5}}})
    themed = Range1d(end=10)
    doc.add_root(figure(x_range=themed))
    plain = Range1d(end=10)
    assert themed.start == 5 and plain.start == 0

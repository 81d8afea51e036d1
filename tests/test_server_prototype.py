"""A page built once per server and copied per session (server/prototype.py): a copy is the
page a session would have built (same serialized form, names renumbered), independent of
the prototype and of other copies, wired to its own session; the first pull is answered from
the prototype while nothing changed; a copy that does not serialize like the page it copies
makes every session build its own page."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from bokeh.core.json_encoder import serialize_json
from bokeh.core.properties import value
from bokeh.core.serialization import Buffer
from bokeh.document import Document
from bokeh.events import ButtonClick
from bokeh.layouts import column
from bokeh.models import ColumnDataSource, Div
from bokeh.plotting import figure
from conftest import named, states_only_index

from server import app as app_module
from server import prototype as prototype_module
from server.app import App, build, build_page, page_prototype, prepare_document
from server.fetch import Shared
from server.prototype import all_models, copy_models, renumbered


def plain(content) -> object:
    """A serialized document with its binary buffers written out (as `deferred=False` does),
    so that two serializations compare equal whatever ids their buffers got."""
    if isinstance(content, Buffer):
        return content.to_bytes().hex()
    if isinstance(content, dict):
        return {k: plain(v) for k, v in content.items()}
    if isinstance(content, (list, tuple)):
        return [plain(v) for v in content]
    return content


def objects(content) -> list[dict]:
    """Every model written out in a serialized document."""
    found = []
    if isinstance(content, dict):
        if content.get("type") == "object" and "attributes" in content:
            found.append(content)
        for v in content.values():
            found += objects(v)
    elif isinstance(content, list):
        for v in content:
            found += objects(v)
    return found


def fresh_session_doc(shared: Shared) -> Document:
    """A session's document with a page built the slow way (what every session did before
    pages were copied)."""
    doc = Document()
    App(doc, shared, None, build_page(shared))
    return doc


@pytest.fixture()
def fresh_shared(tiny_index) -> Shared:
    """A server's shared state with no page built yet."""
    return Shared(tiny_index)


def test_a_copied_page_is_the_page_a_session_would_build(shared: Shared, tmp_path) -> None:
    for server in (shared, Shared(states_only_index(tmp_path / "states"))):
        copied = build(Document(), server).doc
        assert page_prototype(server) is not None
        expected = renumbered(fresh_session_doc(server))
        assert renumbered(copied) == expected
        assert len(copied.models) > 100


def test_copies_are_independent_of_the_prototype_and_of_each_other(shared: Shared) -> None:
    first, second = build(Document(), shared), build(Document(), shared)
    prototype = page_prototype(shared)
    originals = set(map(id, prototype.models.values()))
    assert not originals & set(map(id, first.doc.models))
    assert not set(map(id, first.doc.models)) & set(map(id, second.doc.models))
    untouched = renumbered(second.doc)
    # change the first copy every way a session does: data, properties, containers, children
    tokens = named(first.doc, "select-tokens")
    tokens.data = {k: [] for k in tokens.data}
    named(first.doc, "pattern-list").text = "changed"
    named(first.doc, "select-plot").renderers[0].visible = False
    first.tab_panels[1].child.children.append(Div(text="more"))
    first.go_to_position(int(shared.index.n_tokens) - 1)
    assert len(named(second.doc, "select-tokens").data["x"]) > 0
    assert renumbered(second.doc) == untouched
    third = build(Document(), shared)
    assert renumbered(third.doc) == untouched


def test_each_copy_is_wired_to_its_own_session(shared: Shared) -> None:
    first, second = build(Document(), shared), build(Document(), shared)
    for app in (first, second):
        start = app.session.window[0]
        for i in range(1, 10):  # brush until a span has a pattern
            app.select_view.tokens.selected.indices = [i, i + 1]
            if app.session.pattern is not None and app.session.pattern.units:
                break
        assert app.session.span == (start + i, start + i + 2)
    first.set_threshold(0.55)
    assert first.session.threshold == 0.55 and second.session.threshold != 0.55
    assert second.threshold_slider.value != 0.55
    first.next_button._trigger_event(ButtonClick(first.next_button))
    assert first.session.window[0] > 0 and second.session.window[0] == 0


def test_the_first_pull_is_the_documents_own_until_it_changes(shared: Shared) -> None:
    app = build(Document(), shared)
    doc = app.doc
    own = Document.to_json(doc)  # what the document itself serializes (the slow path)
    pulled = doc.to_json()
    assert pulled is not own
    assert plain(pulled.content) == plain(own.content)
    # after a change the document serializes itself again
    app.set_threshold(0.61)
    after = doc.to_json()
    assert after.content["roots"] != pulled.content["roots"]
    assert plain(after.content) == plain(Document.to_json(doc).content)
    # the events the app listens to are subscribed in what the browser gets
    buttons = [m for m in objects(plain(pulled.content)) if m["name"] == "Button"]
    assert len(buttons) == 6  # windows back and forth, find, next, keys, use the suggestion
    for button in buttons:
        assert button["attributes"]["subscribed_events"]["entries"] == ["button_click"]


def test_a_copy_that_serializes_differently_makes_sessions_build_pages(
        fresh_shared: Shared, monkeypatch, caplog) -> None:
    copy = prototype_module.copy_models

    def forgetful(originals):  # a Bokeh whose models keep something this copy misses
        copies = copy(originals)
        for model in copies.values():
            if isinstance(model, Div):
                model._property_values.pop("text", None)
        return copies

    monkeypatch.setattr(prototype_module, "copy_models", forgetful)
    with caplog.at_level(logging.WARNING, logger="lstmsearch.server"):
        app = build(Document(), fresh_shared)
    assert page_prototype(fresh_shared) is None
    assert "pages are built for each session" in caplog.text
    assert "serializes differently" in caplog.text
    # the session got a page of its own, which serializes itself
    assert "to_json" not in vars(app.doc)
    assert named(app.doc, "title").text.startswith("<div class='brand'>")
    expected = renumbered(fresh_session_doc(fresh_shared))
    assert renumbered(app.doc) == expected


def test_copy_models_copies_values_references_and_owners() -> None:
    source = ColumnDataSource({"x": np.arange(4.0), "label": list("abcd")})
    fig = figure(width=300, height=200, tools="tap", name="plot")
    fig.scatter(x="x", y="x", source=source, size=value(7))
    fig.title.text = "t"
    root = column(fig, Div(text="hello", styles={"color": "red"}), name="root")
    doc = Document()
    doc.add_root(root)
    originals = all_models([root])
    copies = copy_models(originals)
    assert set(copies) == set(originals)
    for key, model in copies.items():
        assert type(model) is type(originals[key]) and model is not originals[key]
        assert model.id == originals[key].id and model.document is None
    other = Document()
    other.add_root(copies[id(root)])
    assert serialize_json(plain(other.to_json(deferred=False)["roots"])) == serialize_json(
        plain(doc.to_json(deferred=False)["roots"]))
    copied_source = next(m for m in other.models if isinstance(m, ColumnDataSource))
    assert copied_source.data["x"] is not source.data["x"]
    # a copied container knows its owner: changing it in place is a change of its model
    events = []
    other.on_change(lambda event: events.append(event))
    copied_source.data["label"] = ["w", "x", "y", "z"]
    copied_div = next(m for m in other.models if isinstance(m, Div))
    copied_div.styles["color"] = "blue"
    assert len(events) == 2
    assert list(source.data["label"]) == list("abcd")
    assert dict(root.children[1].styles) == {"color": "red"}


def test_prepare_document_and_page_prototype_are_per_server(fresh_shared: Shared) -> None:
    doc = Document()
    prepare_document(doc, fresh_shared)
    assert doc.title.endswith(fresh_shared.index.path.name)
    first = page_prototype(fresh_shared)
    assert first is page_prototype(fresh_shared)  # built once per server
    assert app_module.page_prototype(Shared(fresh_shared.index)) is not first

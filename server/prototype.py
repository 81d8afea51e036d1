"""A page built once per server and copied for each session that opens it.

Every session opens the same page (the first window of the default state, an empty match
list), and Bokeh makes each session pay for it in Python: building its ~300 models took
about 0.3 s, validating them 0.1 s and serializing them for the browser's first pull 0.15 s,
so 50 pages opened at once on 2 cores took half a minute. Here the server builds the page
once (`Prototype`), serializes it once, and each session gets `Prototype.copy()`: new model
objects holding copies of the prototype's property values (made without Bokeh's
per-property machinery, about 0.04 s) with the prototype's ids, which need only be unique
within a document; and `answer_first_pull` lets the session's document answer the
browser's first pull with the prototype's serialized form while nothing has changed.

Bokeh has no public way to copy models: `copy_models` relies on how `HasProps` keeps its
values (`_property_values`, `_unstable_default_values`, `_unstable_themed_values`) and on
property containers knowing their owners. So the fast path checks itself once per server
(`Prototype.check`): a copy must serialize exactly as the prototype does. When it does not
(a Bokeh version that keeps its values differently), every session builds its page the
slow way, with a warning in the log.
"""

from __future__ import annotations

import copy
import re
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import numpy as np
from bokeh.core.has_props import HasProps
from bokeh.core.json_encoder import serialize_json
from bokeh.core.property.wrappers import (
    PropertyValueColumnData,
    PropertyValueContainer,
)
from bokeh.core.serialization import Serialized, Serializer
from bokeh.document import Document
from bokeh.model import Model

P = TypeVar("P")

SET_VALUES = "_property_values"
"""Where a Bokeh model keeps the values set on it (a container changed in place moves here)."""
MADE_DEFAULTS = ("_unstable_default_values", "_unstable_themed_values")
"""Where it keeps the defaults it made for itself, once each: model instances (which are
serialized with it) and empty or default containers (which are not, and which Bokeh makes
again when first read)."""


def all_models(roots: Iterable[Model]) -> dict[int, Model]:
    """Every model reachable from `roots`, by `id()`."""
    found: dict[int, Model] = {}
    for root in roots:
        for model in root.references():
            found[id(model)] = model
    return found


def copy_models(originals: dict[int, Model]) -> dict[int, Model]:
    """A copy of each model of `originals` (by `id()` of the original), referring to the
    copies of the models it referred to; same types, ids and property values, no document
    and no Python callbacks. Default containers a model made for itself are left for the
    copy to make when it first reads them (most never are: they are a third of a page's
    memory)."""
    copies: dict[int, Model] = {key: object.__new__(type(m)) for key, m in originals.items()}

    def value(v: Any) -> Any:
        kind = type(v)
        if kind in _ATOMS:
            return v
        if isinstance(v, Model):
            return copies[id(v)]
        if kind is list:
            return [value(x) for x in v]
        if kind is tuple:
            return tuple(value(x) for x in v)
        if kind is dict:
            return {value(k): value(x) for k, x in v.items()}
        if isinstance(v, PropertyValueContainer):
            return container(v)
        if isinstance(v, np.ndarray):
            return v.copy()
        if isinstance(v, HasProps):
            raise TypeError(f"cannot copy {type(v).__name__}, a property value that is not a model")
        return copy.copy(v)  # small value objects (bokeh's Value, Field, ...)

    def container(v: PropertyValueContainer) -> PropertyValueContainer:
        if isinstance(v, (dict, PropertyValueColumnData)):
            return type(v)({value(k): value(x) for k, x in v.items()})
        return type(v)([value(x) for x in v])

    for key, original in originals.items():
        state = dict(original.__dict__)
        for name, v in state.items():
            if isinstance(v, Model):  # e.g. a figure's glyph API points at its figure
                state[name] = copies[id(v)]
        state["_document"] = None
        state["_temp_document"] = None
        state["_callbacks"] = {}
        state["_event_callbacks"] = defaultdict(list)
        target = copies[key]
        values = {}
        for name, v in original.__dict__[SET_VALUES].items():
            new = value(v)
            if isinstance(new, PropertyValueContainer):
                new._register_owner(target, original.lookup(name))
            values[name] = new
        state[SET_VALUES] = values
        for slot in MADE_DEFAULTS:
            state[slot] = {name: value(v) for name, v in original.__dict__[slot].items()
                           if not isinstance(v, PropertyValueContainer)}
        target.__dict__.update(state)
    return copies


_ATOMS = frozenset({str, int, float, bool, type(None)})


class Prototype(Generic[P]):
    """A page object (views and widgets holding Bokeh models, `root` its layout) built once
    and copied for each session; serialized once, from a copy set up as a session's.

    The prototype itself is never put in a document nor wired to an app. The objects in
    `shared` are not copied: every copy refers to them (immutable data such as the arrays of
    a window the page shows).
    """

    def __init__(self, page: P, root: Model, shared: Iterable[object] = ()) -> None:
        self.page = page
        self.shared = list(shared)
        self.models = all_models([root])
        self.doc: Document | None = None
        self.serialized: Serialized | None = None

    def serialize(self, doc: Document) -> None:
        """Take `doc`, a session's document made from a copy (wired to its app, so that the
        events the app listens to are subscribed in it), as every copy's first pull."""
        doc.validate()  # once here; the sessions' copies are not validated again
        self.doc = doc
        self.serialized = doc.to_json()

    def copy(self) -> P:
        """A new page object with copies of every model, for one session."""
        copies = copy_models(self.models)
        memo: dict[int, Any] = {id(obj): obj for obj in self.shared}
        for key, model in copies.items():
            memo[key] = model
        return copy.deepcopy(self.page, memo)

    def first_pull(self, doc: Document) -> Serialized:
        """What `doc.to_json()` gives for a session's document holding an unchanged copy:
        the serialized form (see `serialize`) with the document's own config model."""
        assert self.serialized is not None, "serialize() a copy first"
        content = dict(self.serialized.content)
        content["config"] = Serializer().encode(doc.config)
        return Serialized(content, buffers=self.serialized.buffers)

    def check(self, reference: Document) -> str | None:
        """Why copies cannot stand for newly built pages, or None when they can. `reference`
        is a session's document with a page built anew: the copy `serialize` took must
        serialize as it does (model ids aside), share no model with the prototype, and
        answer the first pull as it would itself."""
        assert self.doc is not None, "serialize() a copy first"
        try:
            if renumbered(self.doc) != renumbered(reference):
                return "a copied page serializes differently from a page built anew"
            if any(id(m) in self.models for m in self.doc.models):
                return "a copied page shares models with the page it copies"
            first, own = self.first_pull(self.doc).content, self.doc.to_json(deferred=False)
            if (set(first) != set(own)
                    or serialize_json(first["config"]) != serialize_json(own["config"])):
                return "the first pull of a copied page differs from its document's own"
        except Exception as exc:  # any surprise in Bokeh's internals: build pages instead
            return f"copying a page failed ({type(exc).__name__}: {exc})"
        return None


def renumbered(doc: Document) -> str:
    """`doc` serialized (without its config), each model id replaced by its order of first
    appearance: the same page built twice gives the same string."""
    ids = {m.id for m in doc.models}
    content = {k: v for k, v in doc.to_json(deferred=False).items() if k != "config"}
    order: dict[str, str] = {}

    def rename(found: re.Match) -> str:
        name = found.group(1)
        if name not in ids:
            return found.group(0)
        return f'"#{order.setdefault(name, str(len(order)))}"'

    return re.sub(r'"((?:[^"\\]|\\.)*)"', rename, serialize_json(content))


def answer_first_pull(doc: Document, prototype: Prototype) -> None:
    """Let `doc` (holding a fresh copy of `prototype`'s page) answer the browser's first
    pull from the prototype's serialized form, until anything in it changes; from then on
    it serializes itself as usual."""
    changed = False
    serialize = doc.to_json

    def on_change(event: object) -> None:
        nonlocal changed
        changed = True
        doc.remove_on_change(on_change)

    def to_json(*, deferred: bool = True) -> Any:
        if changed or not deferred:
            return serialize(deferred=deferred)
        serialized = prototype.first_pull(doc)
        doc.models.flush_synced()  # the browser now holds every model: patches refer to them
        return serialized

    doc.on_change(on_change)
    doc.to_json = to_json  # type: ignore[method-assign]

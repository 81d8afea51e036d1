"""Bokeh's property defaults, worked out once per model class instead of on every read.

A Bokeh model works out the default of a property it holds no value for each time the
property is read: the class's overrides merged over its MRO, the theme, validation. Building
a page, adding it to a document and serializing it read every property of every model, so a
page of 300 models paid for about 3,000 such reads (about 0.1 s of the 0.3 s a session's
page cost). The default of a property that no theme sets depends on the model's class alone,
so `cache_defaults()` keeps, per (class, property), the ones that are immutable values
(numbers, strings, None); containers, models and themed defaults are worked out as before.

It replaces three functions of Bokeh's property machinery with memoized versions of the same
(`tests/test_server_bokeh_defaults.py` checks that every view of the app serializes the same
with and without the cache); `uncache_defaults()` puts Bokeh's own back.
"""

from __future__ import annotations

from typing import Any

from bokeh.core.has_props import HasProps
from bokeh.core.property.descriptors import PropertyDescriptor

IMMUTABLE = frozenset({type(None), bool, int, float, str})

_originals: dict[str, Any] = {}
_defaults: dict[tuple[type, str], Any] = {}
_unstable: dict[tuple[type, str], bool] = {}
_overrides: dict[type, dict[str, Any]] = {}


def cache_defaults() -> None:
    """Work out immutable property defaults once per class, from now on (idempotent)."""
    if _originals:
        return
    _originals.update(
        instance_default=PropertyDescriptor.instance_default,
        has_unstable_default=PropertyDescriptor.has_unstable_default,
        overridden_defaults=HasProps.__dict__["_overridden_defaults"],
    )
    instance_default = _originals["instance_default"]
    has_unstable_default = _originals["has_unstable_default"]
    overridden_defaults = _originals["overridden_defaults"].__func__

    def cached_overridden_defaults(cls: type) -> dict[str, Any]:
        found = _overrides.get(cls)
        if found is None:
            found = _overrides[cls] = overridden_defaults(cls)
        return found

    def cached_has_unstable_default(self: PropertyDescriptor, obj: HasProps) -> bool:
        key = (type(obj), self.name)
        found = _unstable.get(key)
        if found is None:
            found = _unstable[key] = has_unstable_default(self, obj)
        return found

    def cached_instance_default(self: PropertyDescriptor, obj: HasProps) -> Any:
        themed = obj.themed_values()
        if themed is not None and self.name in themed:
            return instance_default(self, obj)
        key = (type(obj), self.name)
        try:
            return _defaults[key]
        except KeyError:
            pass
        value = instance_default(self, obj)
        if type(value) in IMMUTABLE and not cached_has_unstable_default(self, obj):
            _defaults[key] = value
        return value

    HasProps._overridden_defaults = classmethod(cached_overridden_defaults)  # type: ignore[method-assign]
    PropertyDescriptor.has_unstable_default = cached_has_unstable_default  # type: ignore[method-assign]
    PropertyDescriptor.instance_default = cached_instance_default  # type: ignore[method-assign]


def uncache_defaults() -> None:
    """Put Bokeh's own functions back and forget what was kept."""
    if not _originals:
        return
    HasProps._overridden_defaults = _originals["overridden_defaults"]  # type: ignore[method-assign]
    PropertyDescriptor.has_unstable_default = _originals["has_unstable_default"]  # type: ignore[method-assign]
    PropertyDescriptor.instance_default = _originals["instance_default"]  # type: ignore[method-assign]
    for kept in (_originals, _defaults, _unstable, _overrides):
        kept.clear()

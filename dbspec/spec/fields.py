"""`option()`: the one way to declare a spec option, so schema, docs and `explain` read the same facts."""

from __future__ import annotations

from typing import Any

import attrs

NO_DEFAULT = attrs.NOTHING


def option(
    default: Any = NO_DEFAULT,
    *,
    doc: str,
    example: Any = None,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: float | None = None,
    factory: Any = None,
    derived: str = "",
) -> Any:
    """An attrs field carrying its documentation.

    `derived` documents a default computed from another option (given as an attrs Factory with takes_self),
    e.g. "same as `lr`"; the plan records such values with origin "derived".
    """
    metadata = {
        "doc": doc,
        "example": example,
        "minimum": minimum,
        "maximum": maximum,
        "exclusive_minimum": exclusive_minimum,
        "derived": derived,
    }
    if factory is not None:
        return attrs.field(factory=factory, metadata=metadata)
    return attrs.field(default=default, metadata=metadata)


def doc_of(field: attrs.Attribute) -> str:
    return field.metadata["doc"]


def has_default(field: attrs.Attribute) -> bool:
    return field.default is not attrs.NOTHING


def static_default(field: attrs.Attribute) -> Any:
    """The default value as data (factories called), or NO_DEFAULT; None for defaults derived
    from other fields."""
    d = field.default
    if d is attrs.NOTHING:
        return NO_DEFAULT
    if isinstance(d, attrs.Factory):  # type: ignore[arg-type]
        return None if d.takes_self else d.factory()
    return d


def spec_leaves(obj: Any, path: tuple = ()):
    """(key path, value, field) for every option of a structured spec; arrays of tables by index."""
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        here = (*path, field.name)
        if attrs.has(type(value)):
            yield from spec_leaves(value, here)
        elif isinstance(value, list) and value and attrs.has(type(value[0])):
            for i, item in enumerate(value):
                yield from spec_leaves(item, (*here, i))
        else:
            yield here, value, field

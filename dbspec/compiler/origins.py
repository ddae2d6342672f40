"""Where every value came from: the spec file, a --set override, a converted legacy key, a default, or
derived from other values."""

from __future__ import annotations

import re

import attrs

from dbspec.plan.model import Origin
from dbspec.spec.fields import spec_leaves
from dbspec.spec.load import RawSpec
from dbspec.spec.model import Spec
from dbspec.spec.paths import KeyPath, dotted


def spec_origins(spec: Spec, raw: RawSpec) -> dict[str, Origin]:
    out: dict[str, Origin] = {}
    for path, _value, field in spec_leaves(spec):
        out[dotted(path)] = _origin(raw, path, field)
    return out


def _origin(raw: RawSpec, path: KeyPath, field: attrs.Attribute) -> Origin:
    if path in raw.override_spans:
        return Origin(kind="--set", where=raw.override_spans[path].at())
    if raw.given(path):
        span = raw.spans.key(path)
        where = span.at() if span else raw.file
        legacy = _converted_from(raw, span.line) if span else ""
        return (
            Origin(kind="converted", where=where, note=legacy) if legacy else Origin(kind="spec", where=where)
        )
    if field.metadata["derived"]:
        return Origin(kind="derived", note=field.metadata["derived"])
    return Origin(kind="default")


# `dbspec convert` ends each value's line with a comment naming the legacy key
# (dbspec/convert/common/core.py).
_CONVERTED = re.compile(r"#\s*((?:kohya|diffusers|SimpleTuner) .+?)\s*$")


def _converted_from(raw: RawSpec, line: int) -> str:
    lines = raw.sources[raw.file].split("\n")
    match = _CONVERTED.search(lines[line - 1]) if 0 < line <= len(lines) else None
    return match.group(1) if match else ""


def derived(note: str) -> Origin:
    return Origin(kind="derived", note=note)

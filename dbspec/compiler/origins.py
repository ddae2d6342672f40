"""Where every value came from: the spec file, a --set override, a default, or derived from other values."""

from __future__ import annotations

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
        return Origin(kind="spec", where=span.at() if span else raw.file)
    if field.metadata["derived"]:
        return Origin(kind="derived", note=field.metadata["derived"])
    return Origin(kind="default")


def derived(note: str) -> Origin:
    return Origin(kind="derived", note=note)

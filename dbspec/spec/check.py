"""The spec front end: load, structure, check ranges; every problem becomes a positioned Diagnostic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs

from dbspec.diagnostics import Diagnostic, error
from dbspec.spec.load import RawSpec, load_spec_file
from dbspec.spec.model import SPEC_VERSION, Spec, table_classes
from dbspec.spec.paths import KeyPath, dotted, table_label
from dbspec.spec.structure import Located, structure_spec, toml_type
from dbspec.spec.suggest import suggest

_TABLE_FIELDS = {name: {f.name for c in classes for f in attrs.fields(c)} for name, classes in table_classes().items()}


@attrs.frozen(kw_only=True)
class Checked:
    raw: RawSpec | None
    spec: Spec | None
    diagnostics: tuple[Diagnostic, ...]


def load_and_structure(path: Path, label: str, overrides: list[str]) -> Checked:
    raw, diags = load_spec_file(path, label, overrides)
    if raw is None:
        return Checked(raw=None, spec=None, diagnostics=tuple(diags))
    version = _check_version(raw)
    if version:
        return Checked(raw=raw, spec=None, diagnostics=(*diags, *version))
    spec, problems = structure_spec(raw.data)
    diags += [_diagnose(raw, p) for p in problems]
    if spec is not None:
        diags += check_ranges(raw, spec)
    return Checked(raw=raw, spec=spec, diagnostics=tuple(diags))


def _check_version(raw: RawSpec) -> list[Diagnostic]:
    if "spec_version" not in raw.data:
        return []  # reported as a missing key by structuring
    version = raw.data["spec_version"]
    if type(version) is int and version == SPEC_VERSION:
        return []
    return [error("DBS106", f"unsupported spec_version {version!r}", path="spec_version",
                  span=raw.value_span(("spec_version",)),
                  help=f"this dbspec reads spec_version = {SPEC_VERSION}")]


def _diagnose(raw: RawSpec, located: Located) -> Diagnostic:
    p, path = located.problem, located.path
    key = dotted(path)
    if p.kind == "unknown":
        table = path[0] if len(path) > 1 else ""
        own = _TABLE_FIELDS[table] if table else set(_TABLE_FIELDS) | {"spec_version"}
        return error("DBS102", f"unknown key `{p.keys[0]}` in {table_label(path[:-1])}", path=key,
                     span=raw.key_span(path), help=suggest(p.keys[0], table, own))
    if p.kind == "missing":
        return error("DBS103", f"missing required key `{path[-1]}` in {table_label(path[:-1])}", path=key,
                     span=raw.key_span(path), help=_missing_help(path))
    if p.kind == "enum":
        allowed = ", ".join(f'"{a}"' for a in p.allowed)
        return error("DBS104", f"`{key}` must be one of {allowed}; found {_show(p.actual)}", path=key,
                     span=raw.value_span(path), help=_enum_help(p.actual, p.allowed))
    if p.kind == "variant":
        return error("DBS203", f"`{path[-1]}` is a {p.variant} adapter option, but adapter.kind is \"{p.actual}\"",
                     path=key, span=raw.key_span(path),
                     help=f"set adapter.kind = \"{p.variant}\", or remove `{path[-1]}`")
    expected = p.expected + (f" (one of {', '.join(repr(a) for a in p.allowed)})" if p.allowed else "")
    return error("DBS101", f"`{key}` must be a{'n' if expected[0] in 'aeiou' else ''} {expected}; "
                 f"found {toml_type(p.actual)} {_show(p.actual)}", path=key, span=raw.value_span(path),
                 help=_type_help(p.expected, p.actual))


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        text = repr(value)
        return text if len(text) < 40 else text[:37] + "..."
    return str(value)


def _missing_help(path: KeyPath) -> str:
    if path == ("datasets",):
        return "add a [[datasets]] table with name, path and prompt"
    return f"add `{path[-1]} = ...` to {table_label(path[:-1])}"


def _enum_help(actual: Any, allowed: tuple) -> str:
    import difflib

    close = difflib.get_close_matches(str(actual), [str(a) for a in allowed], n=1, cutoff=0.5)
    return f"did you mean \"{close[0]}\"?" if close else ""


def _type_help(expected: str, actual: Any) -> str:
    if expected in ("integer", "number") and isinstance(actual, str):
        return f"remove the quotes: {actual}" if _numeric(actual) else ""
    if expected == "integer" and isinstance(actual, float):
        return f"use a whole number, e.g. {round(actual)}"
    if expected == "boolean" and isinstance(actual, str) and actual.lower() in ("true", "false"):
        return f"write {actual.lower()} without quotes"
    if expected == "array" and isinstance(actual, str):
        return f"wrap it in brackets: [\"{actual}\"]"
    return ""


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_ranges(raw: RawSpec, spec: Spec) -> list[Diagnostic]:
    """Bounds from each option's metadata (minimum, maximum, exclusive_minimum), for every table."""
    found: list[Diagnostic] = []
    for path, value, field in _leaves(spec, ()):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        bound = _violated(value, field.metadata)
        if bound:
            key = dotted(path)
            found.append(error("DBS105", f"`{key}` must be {bound}; found {_show(value)}", path=key,
                               span=raw.value_span(path)))
    return found


def _leaves(obj: Any, path: KeyPath):
    for field in attrs.fields(type(obj)):
        value = getattr(obj, field.name)
        here = (*path, field.name)
        if attrs.has(type(value)):
            yield from _leaves(value, here)
        elif isinstance(value, list) and value and attrs.has(type(value[0])):
            for i, item in enumerate(value):
                yield from _leaves(item, (*here, i))
        else:
            yield here, value, field


def _violated(value: float, meta: dict) -> str:
    lo, hi, xlo = meta["minimum"], meta["maximum"], meta["exclusive_minimum"]
    if lo is not None and value < lo:
        return f">= {lo}" + (f" and <= {hi}" if hi is not None else "")
    if hi is not None and value > hi:
        return f"<= {hi}" + (f" and >= {lo}" if lo is not None else "")
    if xlo is not None and value <= xlo:
        return f"> {xlo}"
    return ""

"""Schema checks of a spec file: load, structure, check ranges (DBS0xx, DBS1xx); every problem becomes a
positioned Diagnostic. The cross-field rules are dbspec/compiler/rules.py; frontend.py runs both."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from dbspec.diagnostics import Diagnostic, Span, error, has_errors
from dbspec.spec.fields import spec_leaves
from dbspec.spec.load import RawSpec, load_spec_file
from dbspec.spec.migrate import OLDEST, migrate
from dbspec.spec.model import BLOCK_RANK_MAX, LOKR_BLOCK_RANK_MAX, SPEC_VERSION, Spec, table_classes
from dbspec.spec.paths import KeyPath, dotted, table_label
from dbspec.spec.structure import Located, structure_spec, toml_type
from dbspec.spec.suggest import suggest

_TABLE_FIELDS = {
    name: {f.name for c in classes for f in attrs.fields(c)} for name, classes in table_classes().items()
}


@attrs.frozen(kw_only=True)
class Checked:
    raw: RawSpec | None
    spec: Spec | None
    diagnostics: tuple[Diagnostic, ...]


def load_and_structure(path: Path, label: str, overrides: list[str]) -> Checked:
    raw, diags = load_spec_file(path, label, overrides)
    if raw is None or not raw.parsed:
        return Checked(raw=raw, spec=None, diagnostics=tuple(diags))
    raw, migrated = migrate(raw)
    diags += migrated
    if has_errors(migrated):
        return Checked(raw=raw, spec=None, diagnostics=tuple(diags))
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
    if type(version) is not int:
        help_text = f"write spec_version = {SPEC_VERSION} (a whole number, without quotes)"
    elif version > SPEC_VERSION:
        help_text = f"this dbspec reads spec_version = {SPEC_VERSION}; version {version} needs a newer dbspec"
    else:
        help_text = (
            f"this dbspec reads spec_version = {SPEC_VERSION} (and upgrades {OLDEST} when it reads it)"
        )
    return [
        error(
            "DBS106",
            f"unsupported spec_version {_show(version)}",
            path="spec_version",
            span=raw.value_span(("spec_version",)),
            help=help_text,
        )
    ]


def _diagnose(raw: RawSpec, located: Located) -> Diagnostic:
    p, path = located.problem, located.path
    key = dotted(path)
    if p.kind == "unknown":
        table = path[0] if len(path) > 1 else ""
        own = _TABLE_FIELDS[table] if table else set(_TABLE_FIELDS) | {"spec_version"}
        what = f"table `[{key}]`" if isinstance(raw_value(raw.data, path), dict) else f"key `{p.keys[0]}` in"
        where = "" if what.startswith("table") else f" {table_label(path[:-1])}"
        return error(
            "DBS102",
            f"unknown {what}{where}",
            path=key,
            span=anchor(raw, raw.key_span(path)),
            help=suggest(p.keys[0], table, own),
        )
    if p.kind == "missing":
        return error(
            "DBS103",
            _missing_message(path, p.cls),
            path=key,
            span=anchor(raw, raw.key_span(path)),
            help=_missing_help(path, p.cls),
        )
    if p.kind == "enum":
        allowed = ", ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in p.allowed)
        return error(
            "DBS104",
            f"`{key}` must be one of {allowed}; found {_show(p.actual)}",
            path=key,
            span=raw.value_span(path),
            help=_enum_help(p.actual, p.allowed),
        )
    if p.kind == "variant":
        return error(
            "DBS203",
            f'`{path[-1]}` is a {p.variant} adapter option, but adapter.kind is "{p.actual}"',
            path=key,
            span=raw.key_span(path),
            help=f'set adapter.kind = "{p.variant}", or remove `{path[-1]}`',
        )
    expected = p.expected + (f" (one of {', '.join(_show(a) for a in p.allowed)})" if p.allowed else "")
    return error(
        "DBS101",
        f"`{key}` must be a{'n' if expected[0] in 'aeiou' else ''} {expected}; found {_found(p.actual)}",
        path=key,
        span=anchor(raw, raw.value_span(path)),
        help=_type_help(path, p.expected, p.actual),
    )


def anchor(raw: RawSpec, span: Span | None) -> Span:
    """`span`, or the start of the file for keys with no place in it (a missing top-level table)."""
    return span or Span(file=raw.file, line=1, col=1, end_line=1, end_col=2)


def raw_value(data: Any, path: KeyPath) -> Any:
    """The value at `path` in the TOML data as written, or None."""
    for part in path:
        if (
            isinstance(part, int)
            and isinstance(data, list)
            and part < len(data)
            or isinstance(part, str)
            and isinstance(data, dict)
            and part in data
        ):
            data = data[part]
        else:
            return None
    return data


def _show(value: Any) -> str:
    """A value as TOML would write it, cut short."""
    if isinstance(value, str):
        text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, list):
        text = "[" + ", ".join(_show(v) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{ " + ", ".join(f"{dotted((k,))} = {_show(v)}" for k, v in value.items()) + " }"
    else:
        text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _found(value: Any) -> str:
    return "a table" if isinstance(value, dict) else f"{toml_type(value)} {_show(value)}"


def _missing_message(path: KeyPath, cls: type | None) -> str:
    if path == ("datasets",):
        return "the spec has no [[datasets]]"
    field = _field(cls, path[-1])
    if field is not None and attrs.has(field.type):
        return f"missing required table [{dotted(path)}]"
    return f"missing required key `{path[-1]}` in {table_label(path[:-1])}"


def _field(cls: type | None, name: Any) -> attrs.Attribute | None:
    fields = attrs.fields_dict(cls) if cls is not None and attrs.has(cls) else {}
    return fields[name] if name in fields else None


def _missing_help(path: KeyPath, cls: type | None) -> str:
    name = path[-1]
    if path == ("datasets",):
        return "add a [[datasets]] table with name, path and prompt"
    field = _field(cls, name)
    if field is not None and attrs.has(field.type):
        required = [f for f in attrs.fields(field.type) if f.default is attrs.NOTHING]
        keys = ", ".join(f"{f.name} = {_show(f.metadata['example'])}" for f in required)
        return f"add a [{name}] table" + (f" with {keys}" if keys else "")
    example = (
        _show(field.metadata["example"])
        if field is not None and field.metadata["example"] is not None
        else "..."
    )
    where = f"to {table_label(path[:-1])}" if len(path) > 1 else "at the top of the file"
    return f"add `{name} = {example}` {where}"


def _enum_help(actual: Any, allowed: tuple) -> str:
    import difflib

    same_letters = [a for a in allowed if str(a).lower() == str(actual).lower()]
    close = same_letters or difflib.get_close_matches(str(actual), [str(a) for a in allowed], n=1, cutoff=0.5)
    if not close:
        return ""
    return f'did you mean "{close[0]}"?' if isinstance(allowed[0], str) else f"did you mean {close[0]}?"


def _type_help(path: KeyPath, expected: str, actual: Any) -> str:
    if expected in ("integer", "number") and isinstance(actual, str):
        return f"remove the quotes: {actual}" if _numeric(actual) else ""
    if expected == "integer" and isinstance(actual, float):
        return f"use a whole number, e.g. {round(actual)}" if math.isfinite(actual) else "use a whole number"
    if expected == "boolean" and isinstance(actual, str) and actual.lower() in ("true", "false"):
        return f"write {actual.lower()} without quotes"
    if expected == "array" and isinstance(actual, dict) and path == ("datasets",):
        return "write [[datasets]] (two brackets): each [[datasets]] table adds one dataset"
    if expected == "array" and not isinstance(actual, (list, dict)):
        return f"wrap it in brackets: [{_show(actual)}]"
    if expected == "table":
        return _table_help(path, actual)
    return ""


# The key a table given as a single value most likely meant (`model = "x"` -> model.base = "x").
_MAIN_KEY = {"model": "base", "adapter": "kind", "datasets": "path"}


def _table_help(path: KeyPath, actual: Any) -> str:
    table = path[0]
    if table == "datasets":
        return "each dataset is a [[datasets]] table with name, path and prompt"
    if isinstance(actual, str) and table in _MAIN_KEY and len(path) == 1:
        return f"`{table}` is a table; did you mean `{table}.{_MAIN_KEY[table]} = {_show(actual)}`?"
    return f"write [{dotted(path)}] on its own line, with its keys on the lines below"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_ranges(raw: RawSpec, spec: Spec) -> list[Diagnostic]:
    """Bounds from each option's metadata (minimum, maximum, exclusive_minimum), for every table."""
    found: list[Diagnostic] = []
    for path, value, field in _numbers(spec):
        if not raw.given(path):
            continue  # defaults are in range; a default derived from a bad value is reported as that value
        bound = _violated(value, field.metadata) or block_rank_bound(spec, path, value, field.metadata)
        if bound:
            key = dotted(path)
            found.append(
                error(
                    "DBS105",
                    f"`{key}` must be {bound}; found {_show(raw_value(raw.data, path))}",
                    path=key,
                    span=raw.value_span(path),
                )
            )
    return found


def block_rank_bound(spec: Spec, path: KeyPath, value: float, meta: dict) -> str:
    """The bound a block's rank / conv_rank breaks, or "": LOKR_BLOCK_RANK_MAX is the option's (a LoKr layer's
    factors stop at its width, the rank then only LyCORIS's rs_lora scale), BLOCK_RANK_MAX a block's of any
    other kind (its `kind`, or the adapter's for `adapter`: a pair, or more, at the rank itself)."""
    if meta["maximum"] != LOKR_BLOCK_RANK_MAX or value <= BLOCK_RANK_MAX or len(path) != 4:
        return ""
    adapter = getattr(spec, path[0])
    block = getattr(adapter, path[1])[path[2]]
    kind = adapter.kind if block.kind == "adapter" else block.kind
    return "" if kind == "lokr" else _violated(value, {**meta, "maximum": BLOCK_RANK_MAX})


def _numbers(spec: Spec):
    """(path, number, field) for every numeric option; a per-group table's (schedule.base_lr) entries each
    under its own key, bounded by the option's bounds."""
    for path, value, field in spec_leaves(spec):
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(item, (int, float)) and not isinstance(item, bool):
                    yield (*path, key), item, field
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield path, value, field


def _violated(value: float, meta: dict) -> str:
    lo, hi, xlo = meta["minimum"], meta["maximum"], meta["exclusive_minimum"]
    if isinstance(value, float) and not math.isfinite(value):  # an int is finite, and may not fit a float
        return "a finite number"  # nan passes every comparison; inf is no setting
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        return " and ".join(
            text for text in (lo is not None and f">= {lo}", hi is not None and f"<= {hi}") if text
        )
    if xlo is not None and value <= xlo:
        return f"> {xlo}"
    return ""

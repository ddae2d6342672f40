"""JSON Schema and the spec reference, both generated from the attrs model (dbspec/spec/model.py)."""

from __future__ import annotations

import json
import typing
from typing import Any, Literal

import attrs

from dbspec.spec.fields import NO_DEFAULT, static_default
from dbspec.spec.model import ADAPTER_VARIANTS, SPEC_VERSION, Spec

SCHEMA_ID = "https://dbspec.dev/schemas/dbspec.schema.json"
_PRIMITIVES = {bool: "boolean", int: "integer", float: "number", str: "string"}


def type_schema(tp: Any) -> dict:
    if tp in _PRIMITIVES:
        return {"type": _PRIMITIVES[tp]}
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        return {"type": "string" if isinstance(choices[0], str) else "integer", "enum": list(choices)}
    if origin is list:
        return {"type": "array", "items": type_schema(typing.get_args(tp)[0])}
    if origin is dict:  # a table of values under free keys (schedule.base_lr's per-group form)
        return {"type": "object", "additionalProperties": type_schema(typing.get_args(tp)[1])}
    if origin is typing.Union:
        return {"oneOf": [type_schema(a) for a in typing.get_args(tp)]}
    if attrs.has(tp):
        return class_schema(tp)
    raise TypeError(f"no schema for {tp!r}")


def field_schema(field: attrs.Attribute) -> dict:
    schema = type_schema(field.type)
    meta = field.metadata
    description = meta["doc"] + (f" Default: {meta['derived']}." if meta["derived"] else "")
    out = {"description": description, **schema}
    default = static_default(field)
    if default is not NO_DEFAULT and default is not None and not attrs.has(type(default)):
        out["default"] = default
    for key, name in (
        ("minimum", "minimum"),
        ("maximum", "maximum"),
        ("exclusive_minimum", "exclusiveMinimum"),
    ):
        if meta[key] is not None:
            out[name] = meta[key]
            for variant in schema.get("oneOf", ()):  # a per-group table's values have the same bounds
                if "additionalProperties" in variant:
                    variant["additionalProperties"][name] = meta[key]
    if meta["example"] is not None:
        out["examples"] = [meta["example"]]
    return out


def class_schema(cls: type) -> dict:
    fields = attrs.fields(cls)
    schema: dict = {
        "type": "object",
        "description": (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else cls.__name__,
        "properties": {f.name: field_schema(f) for f in fields},
        "additionalProperties": False,
    }
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    if required:
        schema["required"] = required
    return schema


def spec_schema() -> dict:
    schema = class_schema(Spec)
    schema["description"] = f"dbspec DreamBooth training spec (spec_version {SPEC_VERSION})."
    schema["properties"]["spec_version"]["const"] = SPEC_VERSION
    adapter = schema["properties"]["adapter"]
    for variant, name in zip(adapter["oneOf"], ADAPTER_VARIANTS):
        variant["description"] = f'adapter kind "{name}"'
    adapter["oneOf"][0]["properties"]["kind"]["enum"] = ["none"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "dbspec spec",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(spec_schema(), indent=2, ensure_ascii=False) + "\n"

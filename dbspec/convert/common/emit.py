"""Write a Conversion as spec TOML: schema line, spec_version, tables in the spec model's order, one trailing
comment per value naming the legacy key it came from."""

from __future__ import annotations

import json
import math
from typing import Any

import attrs

from dbspec.convert.common.core import Conversion
from dbspec.spec.model import (
    ADAPTER_VARIANTS,
    MergeAdapter,
    SPEC_VERSION,
    AdapterBlock,
    DyloraBlock,
    TloraBlock,
    OftBlock,
    TextEncoderBlock,
    OptimizerBlock,
    Dataset,
    Group,
    LoraAdapter,
    Spec,
)

SCHEMA_LINE = "#:schema ../schemas/dbspec.schema.json"
_COMMENT_COLUMN = 40


def table_order() -> list[tuple[str, type]]:
    """(table, class) in the order of the Spec model; adapter is written as its lora variant (render_spec
    picks the variant the conversion chose)."""
    out = []
    for field in attrs.fields(Spec):
        if field.name == "spec_version":
            continue
        cls = {"adapter": LoraAdapter, "datasets": Dataset, "groups": Group}.get(field.name, field.type)
        out.append((field.name, cls))
    return out


def render_spec(conv: Conversion, header: list[str]) -> str:
    lines = [SCHEMA_LINE, *[f"# {h}" if h else "#" for h in header], f"spec_version = {SPEC_VERSION}"]
    for table, cls in table_order():
        if table in ("datasets", "groups"):  # arrays of tables
            for index in sorted({p[1] for p in conv.values if p[0] == table}):
                lines += ["", f"[[{table}]]", *_rows(conv, cls, (table, index))]
            continue
        if table == "adapter" and ("adapter", "kind") in conv.values:
            cls = ADAPTER_VARIANTS[conv.values[("adapter", "kind")][0]]
        rows = _rows(conv, cls, (table,))
        if rows:
            lines += ["", f"[{table}]", *rows]
        if table == "model":  # [[model.merge_adapters]] (kohya --base_weights) after the model's own keys
            for index in sorted(
                {p[2] for p in conv.values if p[:2] == ("model", "merge_adapters") and len(p) == 4}
            ):
                lines += ["", "[[model.merge_adapters]]"]
                lines += _rows(conv, MergeAdapter, ("model", "merge_adapters", index))
        block_cls = {"adapter": AdapterBlock, "optimizer": OptimizerBlock}.get(table)
        kind = conv.values.get(("adapter", "kind"), ("", ""))[0]
        oft = kind in ("diag-oft", "boft")  # block sizes (OftBlock)
        block_cls = OftBlock if oft and table == "adapter" else block_cls
        if kind == "dylora" and table == "adapter":  # DyLoRA's blocks: their own unit too
            block_cls = DyloraBlock
        if kind == "tlora" and table == "adapter":  # T-LoRA's blocks: their own SVD start too
            block_cls = TloraBlock
        if block_cls is not None:  # [[adapter.blocks]] / [[optimizer.blocks]] after the table's own keys
            for index in sorted({p[2] for p in conv.values if p[:2] == (table, "blocks") and len(p) == 4}):
                lines += ["", f"[[{table}.blocks]]", *_rows(conv, block_cls, (table, "blocks", index))]
        if table == "adapter":  # [[adapter.text_encoder_blocks]] (kohya --dim_from_weights) after the blocks
            key = ("adapter", "text_encoder_blocks")
            for index in sorted({p[2] for p in conv.values if p[:2] == key and len(p) == 4}):
                lines += [
                    "",
                    "[[adapter.text_encoder_blocks]]",
                    *_rows(
                        conv,
                        OftBlock if oft else TloraBlock if kind == "tlora" else TextEncoderBlock,
                        (*key, index),
                    ),
                ]
    return "\n".join(lines) + "\n"


def _rows(conv: Conversion, cls: type, prefix: tuple) -> list[str]:
    names = [f.name for f in attrs.fields(cls)]
    depth = len(prefix)
    mine = {p[depth]: v for p, v in conv.values.items() if p[:depth] == prefix and len(p) == depth + 1}
    unknown = set(mine) - set(names)
    if unknown:  # a converter bug: say which key, not a broken spec
        raise ValueError(f"converter wrote unknown key(s) {sorted(unknown)} into {prefix}")
    pairs = [(f"{name} = {toml_value(mine[name][0])}", mine[name][1]) for name in names if name in mine]
    width = min(_COMMENT_COLUMN, max((len(text) for text, _ in pairs), default=0))
    return [f"{text.ljust(width)}  # {note}" if note else text for text, note in pairs]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value} to TOML")
        text = repr(value)
        return text if any(c in text for c in ".eE") else text + ".0"
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):  # an inline table (schedule.base_lr per optimizer group)
        items = (f"{_toml_key(str(k))} = {toml_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_string(text: str) -> str:
    """A literal string for Windows paths (backslashes stay readable), else a basic string."""
    literal_ok = "\\" in text and "'" not in text and not any(ord(c) < 32 or c == "\x7f" for c in text)
    if literal_ok:
        return f"'{text}'"
    return json.dumps(text, ensure_ascii=False)


def _toml_key(key: str) -> str:
    """A bare TOML key where it may be one, else a quoted one."""
    return key if key and all(c.isascii() and (c.isalnum() or c in "_-") for c in key) else toml_string(key)

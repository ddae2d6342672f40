"""Strict structuring of the TOML dict into `Spec` with cattrs, gathering every problem.

cattrs coerces by default (`"5"` -> 5, `2.7` -> 2); here every primitive hook checks the TOML type
instead. Problems are raised as `SpecProblem`s inside cattrs' exception groups and collected by
`collect_problems`, which follows cattrs' notes to rebuild each problem's key path.
"""

from __future__ import annotations

import sys
import typing
from typing import Any, Literal

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError
from cattrs.gen import make_dict_structure_fn

from dbspec.spec.model import ADAPTER_VARIANTS, Adapter, GroupRates, Spec
from dbspec.spec.paths import KeyPath


@attrs.frozen(kw_only=True)
class SpecProblem(Exception):
    """One structuring problem. `kind`: type | unknown | missing | enum | variant."""

    kind: str
    expected: str = ""
    actual: Any = None
    allowed: tuple = ()
    keys: tuple[str, ...] = ()  # unknown keys
    cls: type | None = None  # the class whose table holds the problem
    variant: str = ""  # for kind "variant": the adapter kind the key belongs to


TOML_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    list: "array",
    dict: "table",
}


def toml_type(value: Any) -> str:
    for py, name in TOML_TYPE_NAMES.items():
        if type(value) is py:
            return name
    return type(value).__name__  # dates and times


def _strict(expected_type: type, name: str):
    def hook(value, _):
        if type(value) is expected_type:
            return value
        if expected_type is float and type(value) is int:
            if abs(value) > sys.float_info.max:  # float() would raise OverflowError
                raise SpecProblem(
                    kind="type", expected=f"{name} (at most {sys.float_info.max:.3g})", actual=value
                )
            return float(value)  # TOML writes 1 for 1.0; an int is a valid number
        raise SpecProblem(kind="type", expected=name, actual=value)

    return hook


def _literal_hook(tp, _converter):
    allowed = typing.get_args(tp)
    kind = type(allowed[0])  # str, or int for a choice of numbers (model.max_tokens)

    def hook(value, _):
        if type(value) is not kind:
            expected = "string" if kind is str else "integer"
            raise SpecProblem(kind="type", expected=expected, actual=value, allowed=allowed)
        if value not in allowed:
            raise SpecProblem(kind="enum", actual=value, allowed=allowed)
        return value

    return hook


def _list_hook(tp, converter):
    (item_type,) = typing.get_args(tp) or (Any,)
    inner = converter.get_structure_hook(item_type)

    def hook(value, _):
        if type(value) is not list:
            raise SpecProblem(kind="type", expected="array", actual=value)
        out, errors = [], []
        for i, item in enumerate(value):
            try:
                out.append(inner(item, item_type))
            except Exception as exc:  # noqa: BLE001 - gathered and re-raised as a group
                exc.__notes__ = [*getattr(exc, "__notes__", []), _IndexNote(i)]
                errors.append(exc)
        if errors:
            raise IterableValidationError("list", errors, tp)
        return out

    return hook


class _IndexNote(str):
    def __new__(cls, index: int):
        obj = super().__new__(cls, f"index {index}")
        obj.index = index
        return obj


def _class_hook(cls, converter):
    generated = make_dict_structure_fn(cls, converter, _cattrs_forbid_extra_keys=True)

    def hook(value, _):
        if type(value) is not dict:
            raise SpecProblem(kind="type", expected="table", actual=value, cls=cls)
        return generated(value, cls)

    return hook


def _adapter_hook(value, _):
    """Tagged union on `kind`: pick the variant, and name keys that belong to another variant."""
    if type(value) is not dict:
        raise SpecProblem(kind="type", expected="table", actual=value)
    kind = value["kind"] if "kind" in value else "none"  # absent means the default variant
    if type(kind) is not str or kind not in ADAPTER_VARIANTS:  # a list or table is not hashable
        problem = SpecProblem(
            kind="enum" if type(kind) is str else "type",
            expected="string",
            actual=kind,
            allowed=tuple(ADAPTER_VARIANTS),
        )
        problem.__notes__ = [_AttrNote("kind")]
        raise ClassValidationError("adapter", [problem], dict)
    cls = ADAPTER_VARIANTS[kind]
    own = {f.name for f in attrs.fields(cls)}
    foreign = [k for k in value if k not in own and _variant_of(k)]
    errors: list[Exception] = []
    for key in foreign:
        problem = SpecProblem(kind="variant", actual=kind, keys=(key,), variant=_variant_of(key), cls=cls)
        problem.__notes__ = [_AttrNote(key)]
        errors.append(problem)
    rest = {k: v for k, v in value.items() if k not in foreign}
    try:
        result = CONVERTER.structure(rest, cls)
    except ClassValidationError as exc:
        errors.extend(exc.exceptions)
    if errors:
        raise ClassValidationError("adapter", errors, cls)
    return result


def _variant_of(key: str) -> str:
    for name, cls in ADAPTER_VARIANTS.items():
        if key in {f.name for f in attrs.fields(cls)}:
            return name
    return ""


def _group_rates_hook(value, _):
    """A number for every optimizer group, or a table of numbers keyed by group name (schedule.base_lr,
    max_lr); which names are right is the compiler's question (DBS416)."""
    if type(value) in (int, float):
        return _strict(float, "number")(value, float)
    if type(value) is not dict:
        raise SpecProblem(kind="type", expected="number or table of numbers", actual=value)
    out, errors = {}, []
    for key, item in value.items():
        try:
            out[key] = _strict(float, "number")(item, float)
        except SpecProblem as problem:
            problem.__notes__ = [_AttrNote(key)]
            errors.append(problem)
    if errors:
        raise ClassValidationError("table", errors, dict)
    return out


class _AttrNote(str):
    def __new__(cls, name: str):
        obj = super().__new__(cls, f"attribute {name}")
        obj.name = name
        return obj


def make_converter() -> cattrs.Converter:
    conv = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for tp, name in ((int, "integer"), (float, "number"), (str, "string"), (bool, "boolean")):
        conv.register_structure_hook(tp, _strict(tp, name))
    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is Literal, _literal_hook)
    conv.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, _list_hook)
    conv.register_structure_hook(Adapter, _adapter_hook)
    conv.register_structure_hook(GroupRates, _group_rates_hook)
    conv.register_structure_hook_factory(attrs.has, _class_hook)
    return conv


CONVERTER = make_converter()


@attrs.frozen(kw_only=True)
class Located:
    """A problem and the key path it concerns (for unknown keys, the path of the unknown key itself)."""

    path: KeyPath
    problem: SpecProblem


def structure_spec(data: dict) -> tuple[Spec | None, list[Located]]:
    try:
        return CONVERTER.structure(data, Spec), []
    except Exception as exc:  # noqa: BLE001 - every failure becomes positioned problems
        return None, collect_problems(exc, (), Spec)


def collect_problems(exc: BaseException, path: KeyPath, cls: type | None) -> list[Located]:
    """Walk cattrs' exception tree; notes on each child say which attribute or index it concerns."""
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        found: list[Located] = []
        for child in exc.exceptions:
            child_path, child_cls = _step(child, path, exc)
            found += collect_problems(child, child_path, child_cls)
        return found
    if isinstance(exc, ForbiddenExtraKeysError):
        return [
            Located(path=(*path, key), problem=SpecProblem(kind="unknown", keys=(key,), cls=exc.cl))
            for key in sorted(exc.extra_fields)
        ]
    if isinstance(exc, KeyError):
        return [Located(path=path, problem=SpecProblem(kind="missing", cls=cls))]
    if isinstance(exc, SpecProblem):
        if exc.kind in ("variant",):
            return [Located(path=path, problem=exc)]
        return [Located(path=path, problem=exc)]
    raise exc  # a bug, not a spec problem


def _step(child: BaseException, path: KeyPath, parent: BaseException) -> tuple[KeyPath, type | None]:
    for note in getattr(child, "__notes__", ()):
        if hasattr(note, "name"):
            return (*path, note.name), getattr(parent, "cl", None)
        if hasattr(note, "index"):
            return (*path, note.index), None
    return path, getattr(parent, "cl", None)

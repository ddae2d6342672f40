"""Reading spec text: tomli for values, the span index for positions, `--set` overrides on top."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import attrs
import tomli

from dbspec.diagnostics import Diagnostic, Span, error
from dbspec.spec.limits import depth_error, text_problem, too_deep_path, value_problem
from dbspec.spec.paths import KeyPath, dotted, has_path
from dbspec.spec.spans import SpanIndex, build_span_index
from dbspec.spec.syntax import decode_problem, syntax_error

OVERRIDES_FILE = "<--set>"


@attrs.frozen(kw_only=True)
class RawSpec:
    """The TOML data as written, with where each key came from."""

    file: str  # the spec path as the user gave it (used in messages)
    path: Path  # absolute path of the spec file
    data: dict
    spans: SpanIndex
    override_spans: dict  # KeyPath -> Span of the `--set` that wrote it
    sources: dict  # file label -> text, for rendering source lines
    override_key_spans: dict = attrs.field(factory=dict)  # KeyPath -> Span of the key of its `--set`
    parsed: bool = True  # False: the text is not UTF-8 or not TOML; data is empty
    renamed: tuple = ()  # migrate.Renamed: keys of an older spec_version read under their new names

    def key_span(self, path: KeyPath) -> Span | None:
        return _written(self.override_key_spans, path) or self.spans.key(path) or self.spans.nearest(path)

    def value_span(self, path: KeyPath) -> Span | None:
        return _written(self.override_spans, path) or self.spans.value(path) or self.key_span(path)

    def given(self, path: KeyPath) -> bool:
        """Did the user write this key (in the file or with --set)?"""
        return has_path(self.data, path)


def _written(override_spans: dict, path: KeyPath) -> Span | None:
    """The span of the `--set` that wrote `path` or a table/array holding it (`--set 'x.list=[1, "a"]'`
    wrote `x.list[1]` too): the override replaced what the file had there."""
    for length in range(len(path), 0, -1):
        span = override_spans.get(path[:length])
        if span is not None:
            return span
    return None


def read_text(path: Path, label: str) -> tuple[str | None, str, list[Diagnostic]]:
    """(text, text to show in messages, diagnostics); text is None when the file cannot be read or decoded."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, "", [error("DBS002", f"spec file `{label}` does not exist", help="check the path")]
    except (IsADirectoryError, PermissionError, OSError) as exc:
        return None, "", [error("DBS002", f"cannot read spec file `{label}`: {exc.strerror or exc}")]
    problem = decode_problem(raw, label)
    if problem is not None:
        return None, problem[1], [problem[0]]
    text = raw.decode("utf-8")
    return text, text, []


def parse_toml(text: str, label: str) -> tuple[dict | None, list[Diagnostic]]:
    too_deep = text_problem(text, label)  # before tomli, whose recursion these limits bound
    if too_deep is not None:
        return None, [too_deep]
    try:
        return tomli.loads(text), []
    except tomli.TOMLDecodeError as exc:
        return None, [syntax_error(text, label, exc)]
    except RecursionError:  # text_problem missed a nesting it could not follow; never an internal error
        span = Span(file=label, line=1, col=1, end_line=1, end_col=2)
        return None, [error("DBS005", "the spec nests values too deeply to read", span=span)]
    except (
        ValueError
    ) as exc:  # int()'s digit limit, which tomli lets escape; text_problem should catch it first
        span = Span(file=label, line=1, col=1, end_line=1, end_col=2)
        return None, [error("DBS006", f"the spec holds a number too long to read: {exc}", span=span)]


def load_spec_file(path: Path, label: str, overrides: list[str]) -> tuple[RawSpec | None, list[Diagnostic]]:
    """The spec as written, with overrides applied.

    None when the file cannot be read; a RawSpec with `parsed` False (no data, only `sources` for showing
    source lines) when it is not UTF-8 or not TOML.
    """
    text, shown, diags = read_text(path, label)
    if text is not None:
        data, diags = parse_toml(text, label)
    if text is None or data is None:
        if not shown:
            return None, diags
        return RawSpec(
            file=label,
            path=path.resolve(),
            data={},
            spans=SpanIndex({}),
            override_spans={},
            sources={label: shown},
            parsed=False,
        ), diags
    sources = {label: text}
    key_spans, value_spans, diags = apply_overrides(data, overrides)
    if overrides:
        sources[OVERRIDES_FILE] = "\n".join(overrides)
    raw = RawSpec(
        file=label,
        path=path.resolve(),
        data=data,
        spans=build_span_index(text, label),
        override_spans=value_spans,
        override_key_spans=key_spans,
        sources=sources,
    )
    too_deep = too_deep_path(data)
    if too_deep is not None:  # later stages recurse through values: stop before they can overflow
        return attrs.evolve(raw, data={}, parsed=False), [
            *diags,
            depth_error(too_deep, _deepest_span(raw, too_deep)),
        ]
    return raw, diags


def _deepest_span(raw: RawSpec, path: KeyPath) -> Span:
    """The `--set` that wrote into `path`, else the key span of the longest prefix of `path` in the file."""
    for written, span in raw.override_key_spans.items():
        if written[: len(path)] == path[: len(written)]:
            return span
    for length in range(len(path), 0, -1):
        span = raw.spans.key(path[:length])
        if span is not None:
            return span
    return Span(file=raw.file, line=1, col=1, end_line=1, end_col=2)


_SEGMENT = re.compile(r"([A-Za-z0-9_-]+)((?:\[\d+\])*)")


def parse_override_key(key: str) -> KeyPath | None:
    """ "datasets[0].repeats" or "datasets.0.repeats" -> ("datasets", 0, "repeats")."""
    path: list = []
    for segment in key.split("."):
        if segment.isdigit():
            path.append(int(segment))
            continue
        m = _SEGMENT.fullmatch(segment)
        if not m:
            return None
        path.append(m.group(1))
        path += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(path) if path and isinstance(path[0], str) else None


def parse_override_value(text: str) -> tuple[Any, bool]:
    """Parse as a TOML value; a bare word that is not TOML (a path, a hub id) is taken as a string."""
    try:
        return tomli.loads(f"v = {text}")["v"], True
    except (
        tomli.TOMLDecodeError,
        RecursionError,
        ValueError,
    ):  # the last two: past limits value_problem checks
        bare = bool(text) and not re.search(r"[\"'\[\]{}=,\s]", text) and not text[0].isdigit()
        return (text, True) if bare else (None, False)


def apply_overrides(data: dict, overrides: list[str]) -> tuple[dict, dict, list[Diagnostic]]:
    """Write each `--set key=value` into `data`: (key spans, value spans, problems), spans by KeyPath."""
    key_spans: dict = {}
    spans: dict = {}
    diags: list[Diagnostic] = []
    for line, item in enumerate(overrides, start=1):
        key, eq, value_text = item.partition("=")
        key = key.strip()
        whole = Span(
            file=OVERRIDES_FILE, line=line, col=1, end_line=line, end_col=len(item) + 1, origin="--set"
        )
        path = parse_override_key(key) if eq else None
        if path is None:
            diags.append(
                error(
                    "DBS004",
                    f"cannot read override `{item}`",
                    span=whole,
                    help="write --set table.key=value, e.g. --set optimizer.lr=2e-6",
                )
            )
            continue
        too_big = value_problem(value_text, key, whole)
        if too_big is not None:
            diags.append(too_big)
            continue
        value, ok = parse_override_value(value_text.strip())
        if not ok:
            example = '["..."]' if value_text.strip().startswith("[") else '"..."'
            diags.append(
                error(
                    "DBS004",
                    f"the value of override `{key}` is not a TOML value",
                    span=whole,
                    help=f"quote strings: --set '{key}={example}'",
                )
            )
            continue
        problem = _assign(data, path, value)
        if problem:
            diags.append(error("DBS004", f"cannot apply override `{key}`: {problem}", span=whole))
            continue
        value_col = item.index("=") + 2 + len(value_text) - len(value_text.lstrip())
        key_col = len(item) - len(item.lstrip()) + 1
        key_spans[path] = attrs.evolve(whole, col=key_col, end_col=key_col + len(key))
        spans[path] = attrs.evolve(whole, col=value_col if value_col <= len(item) else 1)
    return key_spans, spans, diags


def _assign(data: dict, path: KeyPath, value: Any) -> str:
    node: Any = data
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(part, int):
            if not isinstance(node, list) or part >= len(node):
                return f"{dotted(path[: i + 1])} does not exist"
            node = node[part]
            continue
        if not isinstance(node, dict):
            return f"{dotted(path[:i])} is not a table"
        if part not in node:
            if isinstance(nxt, int):
                return f"{dotted(path[: i + 1])} does not exist"
            node[part] = {}
        node = node[part]
    last = path[-1]
    if isinstance(last, int):
        if not isinstance(node, list) or last >= len(node):
            return f"{dotted(path)} does not exist"
    elif not isinstance(node, dict):
        return f"{dotted(path[:-1])} is not a table"
    node[last] = value
    return ""

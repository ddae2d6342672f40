"""`dbspec upgrade`: rewrite a spec file to the current spec_version, changing only what must change.

The renames of spec/migrate.py are applied to the text itself: each renamed key is replaced where the span
index found it (a `[train]` table, a dotted key `train.unet`, an inline table `train = { unet = true }`,
quoted or bare), and the `spec_version` value is replaced by the current version. Every other byte stays:
comments, blank lines, key order, quoting, line endings. The result is read back and must equal the migrated
data of the original, so a file whose text the scanner could not follow is refused instead of half rewritten.
"""

from __future__ import annotations

import difflib
import re

import attrs
import tomli

from dbspec.diagnostics import Diagnostic, Span, error
from dbspec.spec.load import parse_toml
from dbspec.spec.migrate import OLDEST, migratable, migrate_data, name_problems
from dbspec.spec.model import SPEC_VERSION
from dbspec.spec.paths import dotted
from dbspec.spec.spans import SpanIndex, build_span_index

_BARE = re.compile(r"[A-Za-z0-9_-]+")


@attrs.frozen(kw_only=True)
class Upgrade:
    """An upgrade of one spec text; `text == original` when the file was already current."""

    original: str
    text: str
    version: int  # the file's spec_version before
    renamed: tuple[tuple[str, str, int], ...] = ()  # (old key, new key, line)

    @property
    def changed(self) -> bool:
        return self.text != self.original

    def diff(self, label: str) -> str:
        """A unified diff of the rewrite, `label` naming the file on both sides."""
        lines = difflib.unified_diff(
            self.original.splitlines(keepends=True),
            self.text.splitlines(keepends=True),
            f"{label} (spec_version {self.version})",
            f"{label} (spec_version {SPEC_VERSION})",
        )
        return "".join(
            line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in lines
        )


def upgrade_text(text: str, label: str) -> tuple[Upgrade | None, list[Diagnostic]]:
    """The upgrade of spec `text` (`label` names the file in messages), or None and what stops it."""
    data, problems = parse_toml(text, label)
    if data is None:
        return None, problems
    spans = build_span_index(text, label)
    version_problem = _version_problem(data, spans, label)
    if version_problem is not None:
        return None, [version_problem]
    version = data["spec_version"]
    names = name_problems(data, version, label, spans.key)
    if names:
        return None, names
    if version == SPEC_VERSION:
        return Upgrade(original=text, text=text, version=version), []
    expected, done = migrate_data(data, version)
    edits = [_version_edit(spans)]
    renamed = []
    for rename, in_file in done:
        span = spans.key(in_file)
        edits.append((span, _key_text(text, span, rename.new)))
        renamed.append((dotted(in_file), dotted(rename.new_path), span.line if span else 0))
    new_text = _apply(text, edits)
    if new_text is None or _read(new_text) != expected:
        return None, [_cannot(label, "the rewritten text would not hold the same values")]
    return Upgrade(
        original=text, text=new_text, version=version, renamed=tuple(sorted(renamed, key=lambda r: r[2]))
    ), []


def _version_problem(data: dict, spans: SpanIndex, label: str) -> Diagnostic | None:
    if "spec_version" not in data:
        return error(
            "DBS103",
            f"{label} has no `spec_version`: cannot tell which version to upgrade from",
            path="spec_version",
            span=Span(file=label, line=1, col=1, end_line=1, end_col=2),
            help=f"add `spec_version = {OLDEST}` at the top if the file was written for "
            "dbspec's first spec language",
        )
    version = data["spec_version"]
    if type(version) is int and (version == SPEC_VERSION or migratable(version)):
        return None
    return error(
        "DBS106",
        f"{label} has spec_version {version!r}; `dbspec upgrade` reads versions {OLDEST} to {SPEC_VERSION}",
        path="spec_version",
        span=spans.value(("spec_version",)),
        help=(
            f"version {version} needs a newer dbspec"
            if type(version) is int and version > SPEC_VERSION
            else f"write spec_version = {OLDEST} or {SPEC_VERSION} (a whole number)"
        ),
    )


def _cannot(label: str, why: str) -> Diagnostic:
    return error(
        "DBS106",
        f"cannot upgrade {label} automatically: {why}",
        path="spec_version",
        help="rename the keys `dbspec check` lists by hand (see docs/spec-reference.md, Upgrading specs)",
    )


def _version_edit(spans: SpanIndex) -> tuple[Span | None, str]:
    return spans.value(("spec_version",)), str(SPEC_VERSION)


def _key_text(text: str, span: Span | None, name: str) -> str:
    """`name` written as the key at `span` was: bare, or in the same quotes."""
    quote = _slice(text, span)[:1] if span else ""
    if quote in ('"', "'") or not _BARE.fullmatch(name):
        quote = quote if quote in ('"', "'") else '"'
        return f"{quote}{name}{quote}"
    return name


def _offsets(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _offset(starts: list[int], line: int, col: int) -> int:
    return starts[line - 1] + col - 1


def _slice(text: str, span: Span) -> str:
    starts = _offsets(text)
    return text[_offset(starts, span.line, span.col) : _offset(starts, span.end_line, span.end_col)]


def _apply(text: str, edits: list[tuple[Span | None, str]]) -> str | None:
    """`text` with each span replaced, or None when a span is missing or two overlap."""
    starts = _offsets(text)
    places = []
    for span, new in edits:
        if span is None:
            return None
        places.append(
            (_offset(starts, span.line, span.col), _offset(starts, span.end_line, span.end_col), new)
        )
    places.sort()
    if any(a[1] > b[0] for a, b in zip(places, places[1:])):
        return None
    for start, end, new in reversed(places):
        text = text[:start] + new + text[end:]
    return text


def _read(text: str) -> dict | None:
    try:
        return tomli.loads(text)
    except (tomli.TOMLDecodeError, RecursionError, ValueError):
        return None

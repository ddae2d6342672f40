"""Diagnostics: positioned, coded messages gathered by every stage and reported once.

A `Diagnostic` names a code (DBS0xx syntax, 1xx schema, 2xx cross-field rules, 3xx environment and
data, 4xx conversion), the user's key path, and where in which file it points. `render_text` prints
them the way a compiler does; `render_json` emits the same records for tools.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import Literal

import attrs

Severity = Literal["error", "warning"]


@attrs.frozen(kw_only=True)
class Span:
    """A region of a source file: 1-based line and column, end exclusive, on one or more lines."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    origin: str = ""  # "" for a file; "--set" for a command-line override

    def at(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@attrs.frozen(kw_only=True)
class Diagnostic:
    code: str
    severity: Severity
    message: str
    path: str = ""  # key path in the user's spelling, e.g. "datasets[0].repeats"
    span: Span | None = None
    help: str = ""
    notes: tuple[str, ...] = ()

    def sort_key(self) -> tuple:
        s = self.span
        pos = (0, s.origin == "--set", s.file, s.line, s.col) if s else (1, False, "", 0, 0)
        return (*pos, self.code, self.message)


class DiagnosticError(Exception):
    """Raised once by a stage with every diagnostic it gathered (errors, and warnings alongside)."""

    def __init__(self, diagnostics: Sequence[Diagnostic]):
        self.diagnostics = tuple(sorted(diagnostics, key=Diagnostic.sort_key))
        super().__init__(summary_line(self.diagnostics))

    @property
    def errors(self) -> tuple[Diagnostic, ...]:
        return tuple(d for d in self.diagnostics if d.severity == "error")


def error(code: str, message: str, **kw) -> Diagnostic:
    return Diagnostic(code=code, severity="error", message=message, **kw)


def warning(code: str, message: str, **kw) -> Diagnostic:
    return Diagnostic(code=code, severity="warning", message=message, **kw)


def has_errors(diagnostics: Iterable[Diagnostic]) -> bool:
    return any(d.severity == "error" for d in diagnostics)


def raise_if_errors(diagnostics: Sequence[Diagnostic]) -> None:
    if has_errors(diagnostics):
        raise DiagnosticError(diagnostics)


def summary_line(diagnostics: Sequence[Diagnostic]) -> str:
    n_err = sum(d.severity == "error" for d in diagnostics)
    n_warn = len(diagnostics) - n_err
    parts = []
    if n_err:
        parts.append(f"{n_err} error{'s' if n_err != 1 else ''}")
    if n_warn:
        parts.append(f"{n_warn} warning{'s' if n_warn != 1 else ''}")
    return ", ".join(parts) if parts else "no problems"


def render_text(diagnostic: Diagnostic, sources: dict[str, str]) -> str:
    """Render one diagnostic, with the source line and carets when its file text is known."""
    d = diagnostic
    lines = [f"{d.severity}[{d.code}]: {d.message}"]
    s = d.span
    if s is not None:
        where = f"{s.at()} (from --set)" if s.origin == "--set" else s.at()
        lines.append(f"  --> {where}")
        # Lines end at "\n" only, as in TOML and in spans: str.splitlines() also splits at U+2028, \x0c...
        source_lines = sources[s.file].split("\n") if s.file in sources else []
        if 1 <= s.line <= len(source_lines):
            text = source_lines[s.line - 1].rstrip("\r").expandtabs(1)
            gutter = " " * len(str(s.line))
            end = s.end_col if s.end_line == s.line else len(text) + 1
            width = max(1, end - s.col)
            lines += [
                f"{gutter} |",
                f"{s.line} | {text}",
                f"{gutter} | {' ' * (s.col - 1)}{'^' * width}",
            ]
    pad = " " * (len(str(s.line)) + 1) if s is not None else ""
    for note in d.notes:
        lines.append(f"{pad}= note: {note}")
    if d.help:
        lines.append(f"{pad}= help: {d.help}")
    return "\n".join(lines)


def render_all_text(diagnostics: Sequence[Diagnostic], sources: dict[str, str]) -> str:
    blocks = [render_text(d, sources) for d in diagnostics]
    return "\n\n".join([*blocks, summary_line(diagnostics)]) if blocks else summary_line(diagnostics)


def to_record(d: Diagnostic) -> dict:
    return attrs.asdict(d, recurse=True)


def render_json(diagnostics: Sequence[Diagnostic]) -> str:
    n_err = sum(x.severity == "error" for x in diagnostics)
    payload = {
        "diagnostics": [to_record(d) for d in diagnostics],
        "errors": n_err,
        "warnings": len(diagnostics) - n_err,
    }
    return json.dumps(payload, indent=2)

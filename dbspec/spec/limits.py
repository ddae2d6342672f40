"""Input limits of the spec language: how deep a key path may go (DBS005), how long a number may be (DBS006).

tomli recurses once per nesting level, and later stages (structuring, messages, salvage, the span index)
walk values recursively. Real specs are 4 levels deep at most; a limit far below Python's stack keeps
every stage safe. The text is checked before tomli reads it (brackets and key parts, without recursion),
then the parsed data (tables, dotted keys and arrays together). Python refuses to convert integers of more
than 4300 digits (tomli lets that ValueError escape), so long numbers are refused on the text as well.
"""

from __future__ import annotations

import re

from dbspec import codes
from dbspec.diagnostics import Diagnostic, Span, error
from dbspec.spec.paths import KeyPath, dotted
from dbspec.spec.spans import _BASIC_BODY, _LITERAL_BODY, _ML_BASIC_BODY, _ML_LITERAL_BODY

MAX_DEPTH = 32  # levels of a key path: table names, dotted key parts and array indices together
MAX_DIGITS = 100  # digits of a number; seeds, the longest numbers a spec holds, have 20

_BODIES = {'"""': _ML_BASIC_BODY, "'''": _ML_LITERAL_BODY, '"': _BASIC_BODY, "'": _LITERAL_BODY}
# Strings, comments, brackets and separators; and a digit run longer than MAX_DIGITS (keys and strings are
# consumed whole, so a run found here is a number).
_NEXT = re.compile(r"\"\"\"|'''|[\"'#\[\]{},\n]|[0-9][0-9_]{%d,}" % MAX_DIGITS)
_KEY_PART = re.compile(r"""[ \t]*([A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')[ \t]*""")
_LINE_SPACE = re.compile(r"[ \t]*")
_INLINE_SPACE = re.compile(r"(?:[ \t\r\n]|#[^\n]*)*")  # TOML 1.1 inline tables may span lines


def text_problem(text: str, label: str) -> Diagnostic | None:
    """DBS005 for brackets or a dotted key past MAX_DEPTH, DBS006 for a number past MAX_DIGITS; no parsing."""
    found = _Lexer(text).scan(expect_key=True)
    if found is None:
        return None
    offset, code, message, key = found
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    span = Span(file=label, line=line, col=col, end_line=line, end_col=col + 1)
    return error(code, message, path=key, span=span, help=codes.help(code))


def value_problem(text: str, key: str, span: Span) -> Diagnostic | None:
    """The limit the TOML value `text` of `key` (a `--set` value, at `span`) crosses, if any."""
    lexer = _Lexer(text)
    lexer.label = key
    found = lexer.scan(expect_key=False)
    if found is None:
        return None
    _, code, message, _ = found
    return error(code, message, path=key, span=span, help=codes.help(code))


def too_deep_path(data: dict) -> KeyPath | None:
    """The first key path longer than MAX_DEPTH in parsed data (walked with a stack, not recursion)."""
    pending: list[tuple[KeyPath, object]] = [((), data)]
    while pending:
        path, value = pending.pop()
        if len(path) > MAX_DEPTH:
            return path
        if isinstance(value, dict):
            pending += [((*path, key), item) for key, item in reversed(list(value.items()))]
        elif isinstance(value, list):
            pending += [((*path, index), item) for index, item in reversed(list(enumerate(value)))]
    return None


def depth_error(path: KeyPath, span: Span) -> Diagnostic:
    key = short(dotted(path[: MAX_DEPTH + 1]))
    return error(
        "DBS005",
        f"`{key}` is more than {MAX_DEPTH} levels deep; key paths may have at most {MAX_DEPTH} "
        "levels (tables, dotted key parts and array elements together)",
        path=key,
        span=span,
        help=codes.help("DBS005"),
    )


def short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Lexer:
    """Walks TOML text far enough to count open brackets and key parts; strings and comments are skipped."""

    def __init__(self, text: str):
        self.text = text
        self.pos = 0
        self.open: list[str] = []  # "[" or "{" of the arrays and inline tables the cursor is inside
        self.table: list[str] = []  # the current [table] header, for naming keys in messages
        self.key: list[str] = []  # the key whose value the cursor is in
        self.label = ""  # the key's name when the text is one value (of a --set)

    def name(self) -> str:
        return self.label or short(dotted((*self.table, *self.key)))

    def scan(self, *, expect_key: bool) -> tuple[int, str, str, str] | None:
        """(offset, code, message, key path) of the first limit crossed, or None."""
        while True:
            if expect_key:
                problem = self.read_key()
                if problem:
                    return problem
            found = _NEXT.search(self.text, self.pos)
            if found is None:
                return None
            token, self.pos = found.group(), found.end()
            expect_key = False
            if token in _BODIES:
                body = _BODIES[token].match(self.text, self.pos)
                if body is None:
                    return None  # unterminated string: tomli reports the syntax error
                self.pos = body.end()
            elif token[0].isdigit():
                key = self.name()
                digits = sum(c.isdigit() for c in token)
                return (
                    found.start(),
                    "DBS006",
                    (f"`{key}` holds a number of {digits} digits; numbers may have at most {MAX_DIGITS}"),
                    key,
                )
            elif token == "#":
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif token == "\n":
                expect_key = not self.open
            elif token in "[{":
                self.open.append(token)
                if len(self.open) > MAX_DEPTH:
                    key = self.name()
                    return (
                        found.start(),
                        "DBS005",
                        (
                            f"the value of `{key}` nests arrays and inline tables more "
                            f"than {MAX_DEPTH} levels deep; at most {MAX_DEPTH} are "
                            "allowed"
                        ),
                        key,
                    )
                expect_key = token == "{"
            elif token in "]}":
                if self.open:
                    self.open.pop()
            elif token == ",":
                expect_key = bool(self.open) and self.open[-1] == "{"

    def read_key(self) -> tuple[int, str, str, str] | None:
        """Read the key at the cursor (of a key/value line, an inline table or a [header])
        and count its parts."""
        space = _INLINE_SPACE if self.open else _LINE_SPACE
        self.pos = space.match(self.text, self.pos).end()
        header = not self.open and self.text.startswith("[", self.pos)
        if header:
            self.pos += 2 if self.text.startswith("[[", self.pos) else 1
        start, parts = self.pos, []
        while True:
            part = _KEY_PART.match(self.text, self.pos)
            if part is None:
                break
            parts.append(part.group(1).strip("\"'"))
            self.pos = part.end()
            if not self.text.startswith(".", self.pos):
                break
            self.pos += 1
        if len(parts) > MAX_DEPTH:
            key = short(dotted((*(self.table if not header else ()), *parts)))
            return (
                start,
                "DBS005",
                f"key `{key}` has {len(parts)} parts; keys may have at most {MAX_DEPTH}",
                key,
            )
        if header:
            self.table, self.key = parts, []
        elif not self.open:
            self.key = parts
        return None

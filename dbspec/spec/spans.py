"""Key path -> source position index for TOML text.

tomli parses specs but keeps no positions, so diagnostics ask this index where a key path was written.
The scanner below follows TOML 1.0/1.1 syntax only far enough to know where keys and values begin and
end; it trusts tomli to have validated the text. It never raises: on text it cannot follow it keeps
what it indexed so far and stops.

Paths have the shape of tomli's output: str keys for tables, int indices for array elements (the i-th
`[[datasets]]` header is ("datasets", i)). Columns are 1-based code points (a tab is one column), ends
are exclusive.
"""

from __future__ import annotations

import contextlib

import bisect
import re
from collections import Counter

import attrs

from dbspec.diagnostics import Span

Path = tuple[str | int, ...]

# Inline tables and arrays nested deeper than this are not indexed: each level costs Python stack
# frames. It is above the spec language's limit (limits.MAX_DEPTH, checked before this index is built),
# so every spec that is read at all is indexed whole and its diagnostics keep their positions.
_MAX_NESTING = 100

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
# Bodies after the opening quote(s), through the closing quote(s). Alternatives start with distinct
# characters, so a failed match backtracks in linear time.
_BASIC_BODY = re.compile(r'(?:[^"\\\n]|\\.)*"')
_LITERAL_BODY = re.compile(r"[^'\n]*'")
# A multi-line string may end with one or two quotes of content right before its closing delimiter.
_ML_BASIC_BODY = re.compile(r'(?:[^"\\]|\\[\s\S]|"(?!""))*"""(?:"{0,2})')
_ML_LITERAL_BODY = re.compile(r"(?:[^']|'(?!''))*'''(?:'{0,2})")
# Numbers, booleans, dates and times: everything up to whitespace or a delimiter.
_SCALAR = re.compile(r"[A-Za-z0-9_+\-.:]+")
# A date-time may separate its date and time with a space: "1979-05-27 07:32:00Z".
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_SPACE_THEN_TIME = re.compile(r" [0-9]{2}:")
_ESCAPE = re.compile(r"\\(?:u([0-9A-Fa-f]{4})|U([0-9A-Fa-f]{8})|x([0-9A-Fa-f]{2})|(.))", re.DOTALL)
_SHORT_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", "e": "\x1b", '"': '"', "\\": "\\"}


@attrs.frozen(kw_only=True)
class Entry:
    key: Span  # the key's own text (last segment of a dotted key); an array element's own span
    value: Span | None  # the whole value text; None for table headers and implicitly created tables


class SpanIndex:
    """Positions of every key path of one TOML text."""

    __slots__ = ("_entries",)

    def __init__(self, entries: dict[Path, Entry]):
        self._entries = dict(entries)

    def entry(self, path: Path) -> Entry | None:
        return self._entries.get(tuple(path))

    def key(self, path: Path) -> Span | None:
        found = self.entry(path)
        return found.key if found else None

    def value(self, path: Path) -> Span | None:
        found = self.entry(path)
        return found.value if found else None

    def nearest(self, path: Path) -> Span | None:
        """Key span of the longest prefix of `path` that exists: where a missing key's table is."""
        path = tuple(path)
        for length in range(len(path), 0, -1):
            found = self._entries.get(path[:length])
            if found:
                return found.key
        return None

    def aliased(self, aliases: dict[Path, Path]) -> SpanIndex:
        """This index with each `new` path of `aliases` (and every path below it) found at its `old` path's
        positions too: a key an older spec_version named differently (spec/migrate.py)."""
        entries = dict(self._entries)
        for new, old in aliases.items():
            entries.update(
                {
                    new + path[len(old) :]: entry
                    for path, entry in self._entries.items()
                    if path[: len(old)] == old
                }
            )
        return SpanIndex(entries)

    def paths(self) -> list[Path]:
        """Every indexed path, in source order of its key."""
        return sorted(self._entries, key=lambda p: (self._entries[p].key.line, self._entries[p].key.col))


def build_span_index(text: str, file: str, *, origin: str = "") -> SpanIndex:
    """Index the key paths of TOML `text`; spans name `file` (and `origin`, e.g. "--set")."""
    scanner = _Scanner(text, file, origin)
    with contextlib.suppress(_Stop):  # text it cannot follow: keep what was indexed
        scanner.document()
    return SpanIndex(scanner.entries)


class _Stop(Exception):
    """The text stopped looking like TOML."""


@attrs.frozen(kw_only=True)
class _KeyPart:
    name: str
    start: int
    end: int


class _Scanner:
    def __init__(self, text: str, file: str, origin: str):
        self.text = text
        self.file = file
        self.origin = origin
        self.pos = 0
        self.line_starts = [0] + [m.end() for m in re.finditer("\n", text)]
        self.entries: dict[Path, Entry] = {}
        self.implicit: set[Path] = set()  # tables only mentioned on the way to a deeper key
        self.array_table_sizes: Counter[Path] = Counter()  # [[x]] headers seen, per resolved path
        self.table: Path = ()  # the table that key/value lines currently belong to

    def span(self, start: int, end: int) -> Span:
        line, col = self.line_col(start)
        end_line, end_col = self.line_col(end)
        return Span(
            file=self.file, line=line, col=col, end_line=end_line, end_col=end_col, origin=self.origin
        )

    def line_col(self, offset: int) -> tuple[int, int]:
        index = bisect.bisect_right(self.line_starts, offset) - 1
        return index + 1, offset - self.line_starts[index] + 1

    def define(self, path: Path, key: Span, value: Span | None, *, explicit: bool) -> None:
        """Record `path`; an explicit definition replaces an earlier implicit mention, never the reverse."""
        if path in self.entries and not (explicit and path in self.implicit):
            return
        self.entries[path] = Entry(key=key, value=value)
        if explicit:
            self.implicit.discard(path)
        else:
            self.implicit.add(path)

    def peek(self, length: int = 1) -> str:
        return self.text[self.pos : self.pos + length]

    def expect(self, token: str) -> None:
        if not self.text.startswith(token, self.pos):
            raise _Stop
        self.pos += len(token)

    def skip_spaces(self) -> None:
        while self.peek() in (" ", "\t"):
            self.pos += 1

    def skip_comment(self) -> None:
        if self.peek() == "#":
            newline = self.text.find("\n", self.pos)
            self.pos = len(self.text) if newline < 0 else newline

    def skip_blank(self) -> None:
        """Skip whitespace, newlines and comments (between statements and array elements)."""
        while self.pos < len(self.text):
            char = self.peek()
            if char in (" ", "\t", "\n") or self.peek(2) == "\r\n":
                self.pos += 1
            elif char == "#":
                self.skip_comment()
            else:
                return

    def match(self, pattern: re.Pattern[str], pos: int) -> int:
        found = pattern.match(self.text, pos)
        if found is None:
            raise _Stop
        return found.end()

    def document(self) -> None:
        while True:
            self.skip_blank()
            if self.pos >= len(self.text):
                return
            if self.peek() == "[":
                self.header()
            else:
                self.key_value(self.table, depth=0)
            self.skip_spaces()
            self.skip_comment()
            if self.pos < len(self.text) and self.peek() != "\n" and self.peek(2) != "\r\n":
                raise _Stop

    def header(self) -> None:
        """`[a.b]` or `[[a.b]]`: make it the current table."""
        is_array = self.peek(2) == "[["
        self.pos += 2 if is_array else 1
        parts = self.dotted_key()
        self.expect("]]" if is_array else "]")
        path: Path = ()
        for part in parts[:-1]:
            path = self.enter_table(path, part)
        last = parts[-1]
        path += (last.name,)
        key = self.span(last.start, last.end)
        if is_array:
            self.define(path, key, None, explicit=False)
            index = self.array_table_sizes[path]
            self.array_table_sizes[path] += 1
            path += (index,)
        self.define(path, key, None, explicit=True)
        self.table = path

    def enter_table(self, parent: Path, part: _KeyPart) -> Path:
        """Step into `part` on a header's way down; an array of tables resolves to its last element."""
        path = (*parent, part.name)
        self.define(path, self.span(part.start, part.end), None, explicit=False)
        size = self.array_table_sizes[path]
        return (*path, size - 1) if size else path

    def key_value(self, table: Path, depth: int) -> None:
        """`a.b = value` inside `table` (the current table, or an inline table)."""
        parts = self.dotted_key()
        self.skip_spaces()
        self.expect("=")
        self.skip_spaces()
        path = table
        for part in parts[:-1]:
            path += (part.name,)
            self.define(path, self.span(part.start, part.end), None, explicit=False)
        last = parts[-1]
        path += (last.name,)
        start = self.pos
        self.value(path, depth)
        self.define(path, self.span(last.start, last.end), self.span(start, self.pos), explicit=True)

    def dotted_key(self) -> list[_KeyPart]:
        self.skip_spaces()
        parts = [self.key_part()]
        self.skip_spaces()
        while self.peek() == ".":
            self.pos += 1
            self.skip_spaces()
            parts.append(self.key_part())
            self.skip_spaces()
        return parts

    def key_part(self) -> _KeyPart:
        start = self.pos
        quote = self.peek()
        if quote == '"':
            end = self.match(_BASIC_BODY, start + 1)
            name = _decode_basic(self.text[start + 1 : end - 1])
        elif quote == "'":
            end = self.match(_LITERAL_BODY, start + 1)
            name = self.text[start + 1 : end - 1]
        else:
            end = self.match(_BARE_KEY, start)
            name = self.text[start:end]
        self.pos = end
        return _KeyPart(name=name, start=start, end=end)

    def value(self, path: Path, depth: int) -> None:
        """Move past the value at the cursor, indexing what is inside it."""
        if depth > _MAX_NESTING:
            raise _Stop
        char = self.peek()
        if char == "[":
            self.array(path, depth)
        elif char == "{":
            self.inline_table(path, depth)
        elif char in ('"', "'"):
            self.pos = self.string_end()
        else:
            self.pos = self.scalar_end()

    def string_end(self) -> int:
        if self.peek(3) == '"""':
            return self.match(_ML_BASIC_BODY, self.pos + 3)
        if self.peek(3) == "'''":
            return self.match(_ML_LITERAL_BODY, self.pos + 3)
        body = _BASIC_BODY if self.peek() == '"' else _LITERAL_BODY
        return self.match(body, self.pos + 1)

    def scalar_end(self) -> int:
        end = self.match(_SCALAR, self.pos)
        if _DATE.fullmatch(self.text, self.pos, end) and _SPACE_THEN_TIME.match(self.text, end):
            end = self.match(_SCALAR, end + 1)
        return end

    def array(self, path: Path, depth: int) -> None:
        self.pos += 1
        index = 0
        while True:
            self.skip_blank()
            if self.peek() == "]":
                self.pos += 1
                return
            start = self.pos
            element = (*path, index)
            self.value(element, depth + 1)
            element_span = self.span(start, self.pos)
            self.define(element, element_span, element_span, explicit=True)
            index += 1
            self.skip_blank()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "]":
                raise _Stop

    def inline_table(self, path: Path, depth: int) -> None:
        # Newlines, comments and a trailing comma are TOML 1.1 (tomli 2.3+ accepts them).
        self.pos += 1
        while True:
            self.skip_blank()
            if self.peek() == "}":
                self.pos += 1
                return
            self.key_value(path, depth + 1)
            self.skip_blank()
            if self.peek() == ",":
                self.pos += 1
            elif self.peek() != "}":
                raise _Stop


def _decode_basic(raw: str) -> str:
    """The text of a basic-string key between its quotes, escapes resolved."""

    def replace(found: re.Match[str]) -> str:
        code = found.group(1) or found.group(2) or found.group(3)
        if code:
            try:
                return chr(int(code, 16))
            except (ValueError, OverflowError):
                raise _Stop from None
        if found.group(4) not in _SHORT_ESCAPES:
            raise _Stop
        return _SHORT_ESCAPES[found.group(4)]

    return _ESCAPE.sub(replace, raw)

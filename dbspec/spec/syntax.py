"""Diagnostics for spec text that is not UTF-8 (DBS003) or not TOML (DBS001).

tomli's messages are terse ("Cannot overwrite a value", "Unclosed array") and point where parsing
stopped, which can be lines after the mistake. Here the common mistakes get a specific message, a span
on the text to fix, and a help line that shows the fix.
"""

from __future__ import annotations

import codecs
import re

import tomli

from dbspec.diagnostics import Diagnostic, Span, error

_KEY_PART = r'(?:[A-Za-z0-9_-]+|"[^"\n]*"|\'[^\'\n]*\')'
_KEY_VALUE = re.compile(rf"^\s*({_KEY_PART}(?:\s*\.\s*{_KEY_PART})*)\s*=\s*")
# The name ends on a non-space: a lazy name before `\s*` took quadratic time on a line of trailing spaces.
_HEADER = re.compile(r"^\s*(\[\[?)\s*((?:[^\]#]*[^\]#\s])?)\s*(\]\]?)?\s*(#.*)?$")
_TOKEN = re.compile(r"[^\s,\]}#]+")
_BOOLEAN_CASES = re.compile(r"(?i:true|false)")


def decode_problem(raw: bytes, label: str) -> tuple[Diagnostic, str] | None:
    """DBS003 for bytes that are not BOM-less UTF-8, with the text to show beside it; None when fine."""
    if raw.startswith(codecs.BOM_UTF8):
        span = Span(file=label, line=1, col=1, end_line=1, end_col=2)
        shown = raw[len(codecs.BOM_UTF8) :].decode("utf-8", errors="replace")
        return error(
            "DBS003",
            "spec file starts with a UTF-8 byte-order mark (BOM)",
            span=span,
            help="save it as UTF-8 without a BOM; TOML readers reject the mark",
        ), shown
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _not_utf8(raw, exc, label)
    return None


def _not_utf8(raw: bytes, exc: UnicodeDecodeError, label: str) -> tuple[Diagnostic, str]:
    line_start = raw.rfind(b"\n", 0, exc.start) + 1
    line = raw[: exc.start].count(b"\n") + 1
    col = len(raw[line_start : exc.start].decode("utf-8")) + 1
    span = Span(file=label, line=line, col=col, end_line=line, end_col=col + 1)
    shown = raw.decode("utf-8", errors="replace")
    if raw[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) or "\x00" in shown:
        return error(
            "DBS003",
            "spec file is UTF-16, not UTF-8",
            span=span,
            help="save it as UTF-8 (TOML files must be UTF-8)",
        ), ""
    byte = raw[exc.start]
    guess = bytes([byte]).decode("cp1252", errors="replace")
    looks_like = (
        f"; it looks like Latin-1 / Windows-1252, where 0x{byte:02x} is {guess}"
        if guess.isprintable() and guess != "\ufffd"
        else ""
    )
    return error(
        "DBS003",
        f"spec file is not valid UTF-8 (byte 0x{byte:02x})",
        span=span,
        help=f"save the file as UTF-8 (TOML files must be UTF-8){looks_like}",
    ), shown


def syntax_error(text: str, label: str, exc: tomli.TOMLDecodeError) -> Diagnostic:
    """DBS001 for text tomli rejects."""
    lines = [line.rstrip("\r") for line in text.split("\n")]  # TOML lines end at "\n" only
    if len(lines) > 1 and not lines[-1]:
        lines.pop()  # not a line: the text ends with a newline
    line, col = _clamp(lines, getattr(exc, "lineno", 1) or 1, getattr(exc, "colno", 1) or 1)
    tomli_message = getattr(exc, "msg", str(exc))
    found = _specific(lines, line, col, tomli_message)
    message, help_text = found[0], found[1]
    line, col, end_col = found[2] if len(found) > 2 else (line, col, col + 1)
    span = Span(file=label, line=line, col=col, end_line=line, end_col=end_col)
    return error("DBS001", f"TOML syntax error: {message}", span=span, help=help_text)


def _clamp(lines: list[str], line: int, col: int) -> tuple[int, int]:
    """tomli reports errors at the end of the text one line past the last; point at the last line's end."""
    if not lines:
        return 1, 1
    if line > len(lines):
        return len(lines), len(lines[-1]) + 1
    return line, min(col, len(lines[line - 1]) + 1)


def _specific(lines: list[str], line: int, col: int, message: str) -> tuple:
    """(message, help) or (message, help, (line, col, end_col)) for a tomli error message."""
    src = lines[line - 1] if lines else ""
    generic = (message[:1].lower() + message[1:], "see https://toml.io for the syntax")
    if message == "Cannot overwrite a value" or message.startswith("Cannot declare"):
        return _duplicate(lines, line) or generic
    if message in ("Unclosed array", "Unclosed inline table"):
        return _unclosed(lines, line, col, "[" if message == "Unclosed array" else "{")
    if message in ("Illegal character '\\n'", "Unterminated string", 'Expected "\'"'):
        return _unclosed_string(src, line, col)
    if message == "Invalid value":
        return _invalid_value(src, line, col)
    if message.startswith("Expected '=' after a key"):
        return _missing_equals(src, line) or generic
    if message.startswith("Expected ']"):
        closer = "]]" if "]]" in message else "]"
        header = _HEADER.match(src)
        name = header.group(2) if header else "name"
        return f"table header is not closed with `{closer}`", f"write {'[' * len(closer)}{name}{closer}"
    return generic


def _duplicate(lines: list[str], line: int) -> tuple | None:
    header = _HEADER.match(lines[line - 1])
    if header and header.group(3):
        return _duplicate_header(lines, line, header)
    start = _statement_start(lines, line)
    if start is None:
        return None
    stated = _KEY_VALUE.match(lines[start - 1])
    key = _key_of(lines[start - 1])
    section = _section_start(lines, start)
    for number in range(section, start):
        if _key_of(lines[number - 1]) == key:
            where = (start, stated.start(1) + 1, stated.end(1) + 1)
            return (
                f"`{key}` is set twice in {_section_name(lines, section)}",
                f"remove one of them; the first is on line {number}",
                where,
            )
    return None


def _duplicate_header(lines: list[str], line: int, header: re.Match[str]) -> tuple | None:
    name = header.group(2)
    where = (line, header.start(2) + 1, header.end(2) + 1)
    for number in range(1, line):
        earlier = _HEADER.match(lines[number - 1])
        if earlier and earlier.group(2) == name and earlier.group(1) == header.group(1):
            return f"table [{name}] is declared twice", f"merge it into the [{name}] on line {number}", where
        if _key_of(lines[number - 1]) == name and _section_start(lines, number) == 1:
            return (
                f"[{name}] redefines `{name}`, already set on line {number}",
                f"remove one of them; `{name}` is a table: [{name}] and its keys below it",
                where,
            )
    return None


def _statement_start(lines: list[str], line: int) -> int | None:
    """The line where the key/value pair that ends on `line` begins."""
    for number in range(line, 0, -1):
        if _KEY_VALUE.match(lines[number - 1]):
            return number
        if _is_header(lines[number - 1]):
            return None
    return None


def _is_header(src: str) -> bool:
    found = _HEADER.match(src)
    return bool(found and found.group(3))


def _key_of(src: str) -> str:
    found = _KEY_VALUE.match(src)
    return re.sub(r"\s*\.\s*", ".", found.group(1)) if found else ""


def _section_start(lines: list[str], line: int) -> int:
    """First line of the table section holding `line` (its header line, or 1 for the top level)."""
    for number in range(line, 0, -1):
        if _is_header(lines[number - 1]):
            return number
    return 1


def _section_name(lines: list[str], section: int) -> str:
    header = _HEADER.match(lines[section - 1])
    if header and header.group(3):
        return f"{header.group(1)}{header.group(2)}{header.group(3)}"
    return "the top level"


def _unclosed(lines: list[str], line: int, col: int, opener: str) -> tuple:
    """An array (or inline table) still open when the next statement starts: point at its opening."""
    closer = "]" if opener == "[" else "}"
    what = "array" if opener == "[" else "inline table"
    rest = lines[line - 1][col - 1 :] if lines else ""
    if not rest.strip() or _KEY_VALUE.match(rest) or _is_header(rest):
        opening = _opening(lines, line if not rest.strip() else line - 1, opener)
        if opening:
            return f"{what} is not closed", f"add `{closer}` after its last item", (*opening, opening[1] + 1)
    return f"expected `,` or `{closer}` in the {what}", f"separate the {what}'s items with commas"


def _opening(lines: list[str], last: int, opener: str) -> tuple[int, int] | None:
    """(line, col) of the `opener` that starts the value of the nearest key/value at or above `last`."""
    for number in range(last, 0, -1):
        found = _KEY_VALUE.match(lines[number - 1])
        if found:
            return (number, found.end() + 1) if lines[number - 1][found.end() :].startswith(opener) else None
        if _is_header(lines[number - 1]):
            return None
    return None


def _unclosed_string(src: str, line: int, col: int) -> tuple:
    key_value = _KEY_VALUE.match(src)
    if key_value and src[key_value.end() : key_value.end() + 1] in ('"', "'"):
        opening = key_value.end()  # a value that is a string: its first quote (a ' inside is content)
    else:
        opening = max(src.rfind('"', 0, col - 1), src.rfind("'", 0, col - 1))
        while opening > 0 and src[opening - 1] == src[opening]:
            opening -= 1  # the first quote of a multi-line string's three
    if opening < 0:
        return "string is not closed", "add the missing quote"
    quote = src[opening : opening + 3] if src[opening : opening + 3] in ('"""', "'''") else src[opening]
    return (
        "string is not closed",
        f"add the closing {quote} at the end of the string",
        (line, opening + 1, max(opening + 2, len(src.rstrip()) + 1)),
    )


def _invalid_value(src: str, line: int, col: int) -> tuple:
    token = _TOKEN.match(src, col - 1)
    if token is None:
        return "a value is missing after `=`", "write key = value, e.g. repeats = 10"
    word = token.group(0)
    if _BOOLEAN_CASES.fullmatch(word):
        return (
            f"`{word}` is not a TOML value",
            f"TOML booleans are lowercase: {word.lower()}",
            (line, col, token.end() + 1),
        )
    key_value = _KEY_VALUE.match(src)
    text = src[col - 1 :].split(" #")[0].strip()
    if key_value and re.fullmatch(r"[A-Za-z_][^\"'=\[\]{}]*", text):
        return (
            f"`{text}` is not a TOML value",
            f'strings need quotes: {key_value.group(1)} = "{text}"',
            (line, col, col + len(text)),
        )
    return f"`{word}` is not a TOML value", "see https://toml.io for the syntax", (line, col, token.end() + 1)


def _missing_equals(src: str, line: int) -> tuple | None:
    key, colon, value = src.partition(":")
    if colon and re.fullmatch(r"\s*[A-Za-z0-9_.-]+\s*", key):
        return "expected `=` after the key", f"TOML assigns with `=`: {key.strip()} = {value.strip()}"
    words = src.split("=")[0].strip()
    if "=" in src and " " in words:
        col = src.index(words) + 1
        return (
            "a key cannot hold spaces",
            f"keys use snake_case: {words.replace(' ', '_')}",
            (line, col, col + len(words)),
        )
    return None

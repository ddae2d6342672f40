"""Parse a legacy script's argv the way its argparse parser would, from a table of its arguments.

argparse rules kept: `--flag value` and `--flag=value`; a unique prefix of an option name is accepted
(allow_abbrev); a repeated option keeps its last value; store_true flags take no value; `nargs="*"` lists take
the tokens up to the next option; types and `choices` are enforced; anything else is an error, as argparse
exits on it. Values are returned with their key, in the order they appear.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import attrs

Kind = Literal["flag", "str", "int", "float", "int_or_float", "list"]
_NUMBER = re.compile(r"^-\d|^-\.\d")
# The `why` of a word that is no option: the scripts take no positional arguments, so argparse exits with
# `error: unrecognized arguments: ...` (an unquoted multi-word `$VAR` is the usual cause).
POSITIONAL = "an extra positional argument"


@attrs.frozen(kw_only=True)
class Arg:
    name: str
    kind: Kind = "str"
    default: Any = None
    choices: tuple = ()
    dest: str = ""  # stored under another name (legacy spellings); "" = name
    item: Kind = "str"  # the type= of each element of a nargs list


@attrs.frozen(kw_only=True)
class Parsed:
    values: dict[str, Any]  # dest -> value, in order of first appearance
    problems: tuple[tuple[str, str, str], ...]  # (option, value text, why) for what argparse rejects


def parse_argv(tokens: tuple[str, ...] | list[str], table: dict[str, Arg]) -> Parsed:
    values: dict[str, Any] = {}
    problems: list[tuple[str, str, str]] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if not token.startswith("--") or token == "--":
            problems.append(
                (token, token, f"{POSITIONAL}: the script takes none (argparse: unrecognized arguments)")
            )
            continue
        name, eq, text = token[2:].partition("=")
        arg, why = _lookup(name, table)
        if arg is None:  # its value as written: the words up to the next option
            start, i = i, _skip_values(tokens, i)
            problems.append(("--" + name, text if eq else " ".join(tokens[start:i]), why))
            continue
        value, i, problem = _read_value(arg, eq, text, tokens, i)
        if problem:
            problems.append(("--" + arg.name, text if eq else "", problem))
        else:
            key = arg.dest or arg.name
            values.pop(key, None)  # last one wins, and takes its place in the order
            values[key] = value
    return Parsed(values=values, problems=tuple(problems))


def _lookup(name: str, table: dict[str, Arg]) -> tuple[Arg | None, str]:
    if name in table:
        return table[name], ""
    matches = [n for n in table if n.startswith(name)]
    if len(matches) == 1:
        return table[matches[0]], ""
    if matches:
        return None, f"ambiguous option: could match {', '.join('--' + m for m in sorted(matches))}"
    return None, "unrecognized argument"


def _read_value(arg: Arg, eq: str, text: str, tokens, i: int) -> tuple[Any, int, str]:
    if arg.kind == "flag":
        return True, i, ("ignored explicit argument: it is a flag without a value" if eq else "")
    if arg.kind == "list":
        items = [text] if eq else []
        if not eq:
            while i < len(tokens) and not _is_option(tokens[i]):
                items.append(tokens[i])
                i += 1
        try:
            return [convert_text(arg.item, text) for text in items], i, ""
        except ValueError as exc:
            return None, i, str(exc)
    if not eq:
        if i >= len(tokens) or _is_option(tokens[i]):
            return None, i, "expected one argument"
        text, i = tokens[i], i + 1
    try:
        value = convert_text(arg.kind, text)
    except ValueError as exc:
        return None, i, str(exc)
    if arg.choices and value not in arg.choices:
        allowed = ", ".join(repr(c) for c in arg.choices if c is not None)
        return None, i, f"invalid choice {value!r} (choose from {allowed})"
    return value, i, ""


def convert_text(kind: Kind, text: str) -> Any:
    """argparse `type=` conversion of one command-line string."""
    if kind == "int":
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"invalid int value: {text!r}") from None
    if kind == "float":
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"invalid float value: {text!r}") from None
    if kind == "int_or_float":
        return int_or_float(text)
    return text


def int_or_float(text: str) -> int | float:
    """kohya's warm-up/decay type: "10%" and floats below 1 are ratios (float); others are
    step counts (int)."""
    text = text.strip()
    try:
        if text.endswith("%"):
            return float(text[:-1]) / 100.0
        number = float(text)
    except ValueError:
        raise ValueError(f"invalid int or float value: {text!r}") from None
    if number < 1:
        return number
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text!r}: a step count must be a whole number (ratios are below 1)") from None


def _is_option(token: str) -> bool:
    return token.startswith("-") and not _NUMBER.match(token)


def _skip_values(tokens, i: int) -> int:
    """After an unknown option, skip what looks like its values, so one mistake is reported once."""
    while i < len(tokens) and not _is_option(tokens[i]):
        i += 1
    return i

"""dbspec.spec.spans: exact positions for each TOML construct, a round-trip property over generated
documents (checked against tomli), and inputs that must never make the scanner raise."""

from __future__ import annotations

import datetime as dt
import math
import random
import re

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbspec.diagnostics import Span
from dbspec.spec.spans import Entry, build_span_index


def source_text(text: str, span: Span) -> str:
    """The source text a span covers, sliced from the lines the way an editor counts them."""
    starts = [0] + [m.end() for m in re.finditer("\n", text)]
    return text[starts[span.line - 1] + span.col - 1 : starts[span.end_line - 1] + span.end_col - 1]


def where(text: str, path: tuple) -> tuple:
    """(line, col, key text, value text or None) of `path`, for compact assertions."""
    entry = build_span_index(text, "spec.toml").entry(path)
    assert entry is not None, path
    value = source_text(text, entry.value) if entry.value else None
    return entry.key.line, entry.key.col, source_text(text, entry.key), value


# -- hand-written cases --------------------------------------------------------------------------


def test_span_fields_and_origin():
    index = build_span_index("lr = 2e-6", "<--set>", origin="--set")
    assert index.entry(("lr",)) == Entry(
        key=Span(file="<--set>", line=1, col=1, end_line=1, end_col=3, origin="--set"),
        value=Span(file="<--set>", line=1, col=6, end_line=1, end_col=10, origin="--set"),
    )
    assert index.paths() == [("lr",)]


def test_tables_and_headers():
    text = "title = 'x'\n\n[model]\nbase = \"runwayml/sd\"\n  [ optimizer . adam ]  # c\n\tlr = 1e-4\n"
    assert where(text, ("model",)) == (3, 2, "model", None)
    assert where(text, ("model", "base")) == (4, 1, "base", '"runwayml/sd"')
    assert where(text, ("optimizer",)) == (5, 5, "optimizer", None)  # implicitly created
    assert where(text, ("optimizer", "adam")) == (5, 17, "adam", None)
    assert where(text, ("optimizer", "adam", "lr")) == (6, 2, "lr", "1e-4")


def test_super_table_defined_after_sub_table_points_at_its_own_header():
    text = "[a.b]\nx = 1\n[a]\ny = 2\n"
    assert where(text, ("a",)) == (3, 2, "a", None)
    assert build_span_index(text, "f").paths() == [("a", "b"), ("a", "b", "x"), ("a",), ("a", "y")]


def test_arrays_of_tables():
    text = (
        "[[datasets]]\npath = 'a'\n[[datasets.subsets]]\nk = 1\n[[datasets.subsets]]\nk = 2\n"
        "[[datasets]]\npath = 'b'\n[datasets.extra]\nv = 3\n[[datasets.subsets]]\nk = 4\n"
    )
    assert where(text, ("datasets",)) == (1, 3, "datasets", None)
    assert where(text, ("datasets", 1)) == (7, 3, "datasets", None)
    assert where(text, ("datasets", 1, "path")) == (8, 1, "path", "'b'")
    assert where(text, ("datasets", 0, "subsets", 1, "k")) == (6, 1, "k", "2")
    assert where(text, ("datasets", 1, "extra", "v")) == (10, 1, "v", "3")  # [a.b] after [[a]]
    assert where(text, ("datasets", 1, "subsets", 0, "k")) == (12, 1, "k", "4")  # fresh count per parent
    assert build_span_index(text, "f").entry(("datasets", 1, "subsets", 1)) is None


def test_dotted_and_quoted_keys():
    text = 'a . b.\tc = 1\n"weird key" = 2\n\'lit\' = 3\n"a.b" = 4\n1-2_x = 5\n"\\u00e9\\t" = 6\n"" = 7\n'
    assert where(text, ("a", "b", "c")) == (1, 8, "c", "1")
    assert where(text, ("a",)) == (1, 1, "a", None)
    assert where(text, ("a", "b")) == (1, 5, "b", None)
    assert where(text, ("weird key",)) == (2, 1, '"weird key"', "2")
    assert where(text, ("lit",)) == (3, 1, "'lit'", "3")
    assert where(text, ("a.b",)) == (4, 1, '"a.b"', "4")  # one key, not a dotted path
    assert where(text, ("1-2_x",)) == (5, 1, "1-2_x", "5")
    assert where(text, ("é\t",)) == (6, 1, '"\\u00e9\\t"', "6")
    assert where(text, ("",)) == (7, 1, '""', "7")


def test_inline_tables_and_arrays():
    text = "t = { a = 1, b = { c = [1, 2] }, d.e = 'x' }\nx = [{ k = 1 }, { k = 2 }]\n"
    assert where(text, ("t",)) == (1, 1, "t", "{ a = 1, b = { c = [1, 2] }, d.e = 'x' }")
    assert where(text, ("t", "b", "c", 1)) == (1, 28, "2", "2")
    assert where(text, ("t", "d", "e")) == (1, 36, "e", "'x'")
    assert where(text, ("x", 1)) == (2, 17, "{ k = 2 }", "{ k = 2 }")
    assert where(text, ("x", 1, "k")) == (2, 19, "k", "2")


def test_multi_line_inline_table():  # TOML 1.1
    text = "t = {  # c\r\n  a = 1,  # one\r\n\r\n  b.c = [\r\n 2 ],\r\n}\r\nu = 3"
    assert where(text, ("t", "a")) == (2, 3, "a", "1")
    assert where(text, ("t", "b", "c")) == (4, 5, "c", "[\r\n 2 ]")
    assert where(text, ("u",)) == (7, 1, "u", "3")


def test_multi_line_array_with_comments_and_trailing_comma():
    text = '[validation]\nprompts = [  # first\n  "a, b", # c ]\n\n  # ]\n  "d",\n]\nafter = 1\n'
    array = text[text.index("[  #") : text.index("]\nafter") + 1]
    assert where(text, ("validation", "prompts")) == (2, 1, "prompts", array)
    assert where(text, ("validation", "prompts", 0)) == (3, 3, '"a, b"', '"a, b"')
    assert where(text, ("validation", "prompts", 1)) == (6, 3, '"d"', '"d"')
    assert where(text, ("validation", "after")) == (8, 1, "after", "1")


@pytest.mark.parametrize(
    "value",
    [
        '"""\na # = [ \'\'\' "" \\""" ]\n"""',
        '"""x\\\n   y"""',
        '"""ends in quotes"""""',
        "'''it's [ # = ]\n'''",
        "'''ends in quotes'''''",
        '"tab\\t \\"q\\" \\\\"',
        "'C:\\path'",
        "0xdead_BEEF",
        "0o755",
        "0b1010",
        "-1_000",
        "+inf",
        "-nan",
        "6.626e-34",
        "1E+5",
        "true",
        "1979-05-27T07:32:00.999999-07:00",
        "1979-05-27 07:32:00Z",
        "1979-05-27",
        "07:32:00",
        "07:32",
        "[]",
        "{}",
    ],
)
def test_value_kinds(value: str):
    text = f"v = {value}  # trailing\nnext = 1\n"
    assert tomli.loads(text)["next"] == 1
    assert where(text, ("v",))[3] == value
    assert where(text, ("next",))[:2] == (value.count("\n") + 2, 1)


def test_crlf_and_tabs():
    text = "[a]\r\n\tx\t=\t'1'\r\ny = [\r\n 1,\r\n]\r\n"
    assert where(text, ("a", "x")) == (2, 2, "x", "'1'")
    assert where(text, ("a", "y")) == (3, 1, "y", "[\r\n 1,\r\n]")
    span = build_span_index(text, "f").value(("a", "y"))
    assert (span.end_line, span.end_col) == (5, 2)


def test_nearest_points_at_the_deepest_existing_prefix():
    index = build_span_index("[model]\nbase = 'x'\n[[datasets]]\n", "f")
    assert index.nearest(("model", "family")) == index.key(("model",))
    assert index.nearest(("datasets", 0, "path")) == index.key(("datasets", 0))
    assert index.nearest(("model", "base")) == index.key(("model", "base"))
    assert index.nearest(("optimizer", "lr")) is None
    assert index.nearest(()) is None
    assert index.key(("nope",)) is None and index.value(("nope",)) is None


def test_stops_quietly_and_keeps_what_it_indexed():
    index = build_span_index("a = 1\nb = [1, 2\nc = 3\n", "f")
    assert index.key(("a",)) is not None and index.key(("b", 0)) is not None
    assert index.key(("c",)) is None
    assert build_span_index("x = " + "[" * 5000, "f").paths() == []  # too deep: no RecursionError
    assert build_span_index("x = " + "{a=" * 5000, "f").paths() == []
    assert build_span_index("", "f").paths() == []


# -- round trip over generated documents ---------------------------------------------------------

BARE = re.compile(r"[A-Za-z0-9_-]+")
CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
COMMENTS = st.text(st.characters(blacklist_categories=("Cc", "Cs")), max_size=8)
OFFSETS = st.integers(-1439, 1439).map(lambda minutes: dt.timezone(dt.timedelta(minutes=minutes)))
TIMEZONES = st.none() | st.just(dt.timezone.utc) | OFFSETS

BARE_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"
KEYS = st.text(BARE_CHARS, min_size=1, max_size=6) | st.text(max_size=4)
SCALARS = (
    st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.text("\"'\\\n #=[]{}x", max_size=12)
    | st.text("'\"x\n", max_size=5)  # quotes next to the closing delimiter
    | st.sampled_from([math.inf, -math.inf, -0.0, 1e300])
    | st.datetimes(dt.datetime(1000, 1, 1), timezones=TIMEZONES)
    | st.dates(dt.date(1000, 1, 1))
    | st.times()
)


def _extend(inner):
    tables = st.dictionaries(KEYS, inner, max_size=3)
    return st.lists(inner, max_size=3) | tables | st.lists(tables, min_size=1, max_size=3)


VALUES = st.recursive(SCALARS, _extend, max_leaves=16)
SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large]
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=5)


class Renderer:
    """Writes data as TOML in randomly chosen styles, noting the text written for each path.

    Styles come from a seeded `random.Random`, not from hypothesis draws: thousands of draws per
    document made generation the bulk of the test's time. The data itself still shrinks.
    """

    def __init__(self, rng: random.Random, newline: str, comments: list[str]):
        self.rng = rng
        self.comments = comments
        self.nl = newline
        self.keys: dict[tuple, str] = {}  # path -> key text as written (array-of-tables elements too)
        self.values: dict[tuple, object] = {}  # path -> value, for paths written as a value

    def choose(self, *options):
        return self.rng.choice(options)

    def coin(self) -> bool:
        return self.rng.random() < 0.5

    def key(self, path: tuple) -> str:
        if path not in self.keys:
            name = path[-1]
            styles = ["basic"] + (["bare"] if BARE.fullmatch(name) else [])
            styles += [] if "'" in name or CONTROL.search(name) else ["literal"]
            style = self.choose(*styles)
            quoted = {"bare": name, "literal": f"'{name}'", "basic": f'"{self.escape(name)}"'}
            self.keys[path] = quoted[style]
        return self.keys[path]

    def escape(self, text: str, multi_line: bool = False) -> str:
        out = []
        for i, char in enumerate(text):
            if multi_line and char == "\n" and i > 0:
                out.append(self.nl)  # raw, but not first: a newline right after `"""` is trimmed
            elif multi_line and char == '"' and out[-2:] != ['"', '"']:
                out.append(char)  # runs of up to two raw quotes are content
            elif char in SHORT_ESCAPES or CONTROL.match(char):
                out.append(SHORT_ESCAPES[char] if char in SHORT_ESCAPES else f"\\u{ord(char):04x}")
            elif multi_line and not char.isspace() and self.rng.random() < 0.125:
                out.append("\\" + self.nl + "  " + char)  # line-ending backslash trims what follows
            else:
                out.append(char)
        return "".join(out)

    def string(self, text: str) -> str:
        styles = ["basic", "multi_basic"]
        if "'" not in text and not CONTROL.search(text):
            styles.append("literal")
        if "'''" not in text and not CONTROL.search(text.replace("\n", "")):
            styles.append("multi_literal")
        style = self.choose(*styles)
        if style == "basic":
            return f'"{self.escape(text)}"'
        if style == "literal":
            return f"'{text}'"
        if style == "multi_basic":
            return f'"""{self.escape(text, multi_line=True)}"""'
        return "'''" + self.nl + text.replace("\n", self.nl) + "'''"

    def scalar(self, value) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, int):
            forms = [str(value), re.sub(r"(\d)(?=\d)", r"\1_", str(value))]
            prefixed = [hex(value), oct(value), bin(value)] if value >= 0 else []
            return self.choose(*forms, *prefixed)
        if isinstance(value, float):
            return self.choose(repr(value), repr(value).replace("e", "E"))
        if isinstance(value, str):
            return self.string(value)
        text = value.isoformat()
        if isinstance(value, dt.datetime):
            text = self.choose(text, text.replace("T", " ")).replace("+00:00", self.choose("+00:00", "Z"))
        return text

    def value(self, path: tuple, value) -> str:
        self.values[path] = value
        if isinstance(value, dict):
            items = self.items(path, value)
            # Newlines and a trailing comma in inline tables are TOML 1.1 (tomli >= 2.3).
            separator = self.choose(", ", ",", "," + self.nl + "  ")
            body = self.choose(" ", "", self.nl) + separator.join(items) + self.choose(" ", ",", "", self.nl)
            return "{" + body + "}" if items else "{}"
        if not isinstance(value, list):
            return self.scalar(value)
        elements = [self.value((*path, i), element) for i, element in enumerate(value)]
        if not elements or self.coin():
            return "[" + self.choose(", ", ",", " , ").join(elements) + "]"
        lines = ["["] + [f"  {e},{self.comment()}" for e in elements]
        if self.coin():
            lines[-1] = "  " + elements[-1] + self.comment()
        return self.nl.join([*lines, "]"])

    def comment(self) -> str:
        return self.choose("", "  #" + self.choose(*self.comments))

    def items(self, path: tuple, table: dict) -> list[str]:
        """`key = value` items of `table`, some as dotted keys into sub-tables."""
        out = []
        for name, value in table.items():
            child = (*path, name)
            if isinstance(value, dict) and value and self.coin():
                dot = self.choose(".", " . ", "\t.")
                out += [self.key(child) + dot + item for item in self.items(child, value)]
            else:
                out.append(self.key(child) + self.choose(" = ", "=", "\t=  ") + self.value(child, value))
        return out

    def section(self, path: tuple, header: str | None, table: dict, *, implicit_ok=False) -> list[str]:
        """A table's header (left out when `implicit_ok` and nothing needs it), its key/value lines,
        then its sub-tables and arrays of tables."""
        inline, nested = {}, []
        for name, value in table.items():
            is_tables = isinstance(value, list) and value and all(isinstance(v, dict) for v in value)
            if isinstance(value, dict) and self.coin():
                nested.append((name, value, False))
            elif is_tables and self.coin():
                nested.append((name, value, True))
            else:
                inline[name] = value
        omit_header = implicit_ok and not inline and nested and self.coin()
        lines = [] if header is None or omit_header else [header]
        for item in self.items(path, inline):
            lines += [self.choose("", " ", "\t") + item + self.comment()] + self.choose([], [""], ["# note"])
        for name, value, is_array in nested:
            child = (*path, name)
            named = [child[:end] for end in range(1, len(child) + 1) if isinstance(child[end - 1], str)]
            names = ".".join(self.key(prefix) for prefix in named)
            if is_array:
                for i, element in enumerate(value):
                    self.keys[(*child, i)] = self.key(child)
                    lines += self.section((*child, i), f"[[{names}]]{self.comment()}", element)
            else:
                header = self.choose(f"[{names}]", f"[ {names} ]") + self.comment()
                lines += self.section(child, header, value, implicit_ok=True)
        return lines


@st.composite
def documents(draw):
    data = draw(DOCUMENTS)
    rng = random.Random(draw(st.integers(0, 2**32 - 1)))
    comments = draw(st.lists(COMMENTS, min_size=1, max_size=3))
    renderer = Renderer(rng, newline=draw(st.sampled_from(["\n", "\r\n"])), comments=comments)
    text = renderer.nl.join(renderer.section((), None, data)) + renderer.choose("", renderer.nl)
    return text, data, renderer


def all_paths(value, path: tuple = ()):
    if path:
        yield path
    children = (
        value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else []
    )
    for name, child in children:
        yield from all_paths(child, (*path, name))


@settings(max_examples=200, deadline=None, suppress_health_check=SLOW_DATA)
@given(documents())
def test_every_path_of_a_generated_document_points_at_its_text(document):
    text, data, renderer = document
    assert tomli.loads(text) == data, text
    index = build_span_index(text, "gen.toml")
    assert set(index.paths()) == set(all_paths(data))
    for path in all_paths(data):
        entry = index.entry(path)
        if path in renderer.keys:
            assert source_text(text, entry.key) == renderer.keys[path], (path, text)
        else:
            assert entry.key == entry.value, (path, text)  # an array element is its own key
        if path in renderer.values:
            reparsed = tomli.loads("v = " + source_text(text, entry.value))["v"]
            assert reparsed == renderer.values[path], (path, text)
        else:
            assert entry.value is None, (path, text)


# -- never raises ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.text() | st.text("[]{}\"'=#.,\n\r\t abc1-:"))
def test_random_text_never_raises(text):
    build_span_index(text, "fuzz.toml")


@settings(max_examples=50, deadline=None, suppress_health_check=SLOW_DATA)
@given(documents(), st.data())
def test_damaged_documents_never_raise(document, data):
    text = document[0]
    cut = data.draw(st.integers(0, len(text)))
    build_span_index(text[:cut], "cut.toml")
    build_span_index(text[:cut] + data.draw(st.text(max_size=3)) + text[cut:], "poked.toml")

"""Mutated versions of the shipped specs: `check_spec` never raises, and every error points at real text.

Mutations are the ones people make: a deleted or duplicated line, a value of another type, a key one edit
away from its name, stray text or bytes. Each example writes the mutated bytes to a file and checks it
with a few random `--set` overrides.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import pytest
import tomli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbspec.frontend import check_spec
from dbspec.spec.load import OVERRIDES_FILE

ROOT = Path(__file__).resolve().parents[2]
SPECS = {path.name: path.read_bytes() for path in sorted((ROOT / "specs").glob("*.toml"))}
KEY_VALUE = re.compile(rb"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)(.*)$")
OTHER_TYPES = [
    b"1",
    b"-3",
    b"2.5",
    b"1e-4",
    b'"5"',
    b'"true"',
    b"true",
    b"false",
    b"[]",
    b'["a"]',
    b"[1, 2]",
    b"{}",
    b'{ base = "x" }',
    b'"a photo"',
    b"inf",
    b"1979-05-27",
]
OVERRIDES = [
    "schedule.steps=0",
    "optimizer.lr=fast",
    "datasets[0].repeats=5",
    "datasets[7].repeats=1",
    "model.base=some/hub-id",
    "adapter.kind=lora",
    "optimizer",
    "=1",
    "train.text_encoder=true",
    "validation.prompts=[a b]",
    "buckets.step=12",
    'model="x"',
    "datasets.0.name.x=1",
]
KEY_CHARS = "abcdeilnoprst_"
# 300 keeps the suite fast; hunt with more: DBSPEC_FUZZ_EXAMPLES=5000 pytest tests/unit/test_check_fuzz.py
EXAMPLES = int(os.environ.get("DBSPEC_FUZZ_EXAMPLES", "300"))


@st.composite
def mutation(draw, lines: list[bytes]):
    """One mutation of a spec's lines."""
    kind = draw(st.sampled_from(["delete", "duplicate", "retype", "misspell", "insert_text", "insert_bytes"]))
    index = draw(st.integers(0, max(0, len(lines) - 1)))
    line = lines[index] if lines else b""
    out = list(lines)
    if kind == "delete" and out:
        del out[index]
    elif kind == "duplicate" and out:
        out.insert(draw(st.integers(0, len(out))), line)
    elif kind == "retype" and KEY_VALUE.match(line):
        m = KEY_VALUE.match(line)
        out[index] = m.group(1) + m.group(2) + m.group(3) + draw(st.sampled_from(OTHER_TYPES))
    elif kind == "misspell" and KEY_VALUE.match(line):
        m = KEY_VALUE.match(line)
        out[index] = m.group(1) + _one_edit(draw, m.group(2)) + m.group(3) + m.group(4)
    elif kind == "insert_text":
        text = draw(st.text(alphabet=st.characters(codec="utf-8"), max_size=12)).encode("utf-8")
        at = draw(st.integers(0, len(line)))
        out[index : index + 1] = [line[:at] + text + line[at:]] if out else [text]
    elif kind == "insert_bytes":
        junk = draw(st.binary(min_size=1, max_size=4))
        at = draw(st.integers(0, len(line)))
        out[index : index + 1] = [line[:at] + junk + line[at:]] if out else [junk]
    return out


def _one_edit(draw, key: bytes) -> bytes:
    at = draw(st.integers(0, len(key) - 1))
    char = draw(st.sampled_from(KEY_CHARS)).encode()
    edit = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
    if edit == "insert":
        return key[:at] + char + key[at:]
    if edit == "delete" and len(key) > 1:
        return key[:at] + key[at + 1 :]
    if edit == "swap" and at + 1 < len(key):
        return key[:at] + key[at + 1 : at + 2] + key[at : at + 1] + key[at + 2 :]
    return key[:at] + char + key[at + 1 :]


@st.composite
def mutated_spec(draw):
    name = draw(st.sampled_from(sorted(SPECS)))
    lines = SPECS[name].split(b"\n")
    for _ in range(draw(st.integers(1, 3))):
        lines = draw(mutation(lines))
    overrides = draw(st.lists(st.sampled_from(OVERRIDES), max_size=2))
    return name, b"\n".join(lines), overrides


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory() as path:
        yield Path(path)


def _line_count(text: str) -> int:
    return text.count("\n") + 1  # TOML lines end at "\n" only; an empty text still has line 1


def _assert_spans_point_at_text(checked, label: str, data: bytes, overrides: list[str]) -> None:
    texts = {label: data.decode("utf-8", errors="replace"), OVERRIDES_FILE: "\n".join(overrides)}
    for d in checked.diagnostics:
        if d.severity != "error":
            continue
        assert d.span is not None, d
        assert d.span.file in texts, d
        lines = texts[d.span.file].split("\n")
        assert 1 <= d.span.line <= _line_count(texts[d.span.file]), d
        assert 1 <= d.span.col <= len(lines[d.span.line - 1]) + 1, d
        assert (d.span.origin == "--set") == (d.span.file == OVERRIDES_FILE), d


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_spec())
def test_mutated_specs_are_checked_without_crashing(folder, case):
    name, data, overrides = case
    path = folder / name
    path.write_bytes(data)
    checked = check_spec(path, name, overrides)  # must not raise
    _assert_spans_point_at_text(checked, name, data, overrides)
    errors = [d for d in checked.diagnostics if d.severity == "error"]
    if checked.spec is None:
        assert errors, "no spec and no error"
    if _parses(data) and not overrides and tomli.loads(data.decode()) != tomli.loads(SPECS[name].decode()):
        assert checked.diagnostics or checked.spec is not None


def _parses(data: bytes) -> bool:
    try:
        tomli.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomli.TOMLDecodeError):
        return False
    return True


def test_the_unmutated_specs_are_clean(folder):
    for name, data in SPECS.items():
        path = folder / name
        path.write_bytes(data)
        assert check_spec(path, name).diagnostics == ()

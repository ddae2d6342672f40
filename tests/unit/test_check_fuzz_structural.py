"""Structural mutations of the shipped specs: `check_spec` never raises and every diagnostic has a position.

The sibling test_check_fuzz.py makes the mistakes people make; this one makes the inputs nobody writes by
hand: deep nesting, long strings and keys, huge integers, odd Unicode, and values of the wrong type at key
paths taken from the spec model. A seeded `random.Random` keeps it fast (thousands of cases in seconds) and
each failure reproducible: the message names the seed and the case. Hunt with more:
    DBSPEC_FUZZ_CASES=50000 pytest tests/unit/test_check_fuzz_structural.py
"""

from __future__ import annotations

import json
import os
import random
import re
import tempfile
from pathlib import Path

import attrs
import pytest

from dbspec.diagnostics import render_all_text, render_json
from dbspec.frontend import check_spec
from dbspec.spec.load import OVERRIDES_FILE
from dbspec.spec.model import table_classes

ROOT = Path(__file__).resolve().parents[2]
SPECS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "specs").glob("*.toml"))}
CASES = int(os.environ.get("DBSPEC_FUZZ_CASES", "3000"))
SEEDS = (1, 2)  # two seeded runs of CASES // 2 each
KEY_VALUE = re.compile(r"^(\s*)([A-Za-z0-9_.-]+)(\s*=\s*)(.*)$")
# Every key path of the model, as --set spells it: "schedule.steps", "datasets[0].repeats".
KEY_PATHS = sorted(
    {
        f"{table}[0].{f.name}" if table == "datasets" else f"{table}.{f.name}"
        for table, classes in table_classes().items()
        for cls in classes
        for f in attrs.fields(cls)
    }
)
ODD_TEXT = [
    "\u202e\u202dx",
    "e\u0301\u0301\u0301",
    "\u200b",
    "\ufeff",
    "😀" * 50,
    "\\u0000",
    "\\uD800",
    "\\U0010FFFF",
    "\\x41",
    "a\tb",
    "\u0085",
    "\u2028",
    "ǅ",
    "ﬃ",
    "\u00a0",
    "'",
    '\\"',
    "\\\\",
    "${HOME}",
    "~/x",
    "../../etc",
]


def huge_int(rng: random.Random) -> str:
    digits = rng.choice([9, 18, 19, 20, 40, 100, 101, 300, 4000, 5000])
    sign = rng.choice(["", "-", "+"])
    return sign + rng.choice([f"1{'0' * digits}", f"0x{'f' * min(digits, 200)}", f"1_{'0' * digits}"])


def nested_value(rng: random.Random) -> str:
    depth = rng.choice([2, 8, 31, 32, 33, 40, 120, 350, 500, 2000])
    inner = rng.choice(["", "1", '"x"', "{}"])
    if rng.random() < 0.5:
        return "[" * depth + inner + "]" * depth
    return "{ a = " * depth + (inner or "1") + " }" * depth


def long_string(rng: random.Random) -> str:
    body = rng.choice(["x", "ab/", "é", "😀", " ", "[", "{", "#"]) * rng.choice([300, 5000, 100_000])
    return json.dumps(body, ensure_ascii=False)


def odd_string(rng: random.Random) -> str:
    return '"' + "".join(rng.choice(ODD_TEXT) for _ in range(rng.randint(1, 6))) + '"'


def long_key(rng: random.Random) -> str:
    parts = rng.choice([2, 16, 31, 32, 33, 60, 1001])
    return ".".join(rng.choice(["a", "model", '"q.t"', "'l'", "datasets"]) for _ in range(parts))


def any_value(rng: random.Random) -> str:
    simple = [
        "0",
        "-1",
        "1.5",
        "nan",
        "-inf",
        "true",
        '""',
        "[]",
        "{}",
        '["a", 1]',
        "1979-05-27T07:32:00Z",
        "07:32:00",
        "[[1], [2]]",
        '{ kind = "lora" }',
        '"builtin:tiny-sd1"',
    ]
    makers = [huge_int, nested_value, long_string, odd_string, lambda r: r.choice(simple)]
    return rng.choice(makers)(rng)


def mutate(rng: random.Random, text: str) -> tuple[str, list[str]]:
    """One structural mutation of a spec's text; a few --set overrides half the time."""
    lines = text.split("\n")
    index = rng.randrange(len(lines))
    kind = rng.choice(["revalue", "revalue", "insert_key", "header", "rekey", "odd_key", "insert_value"])
    m = KEY_VALUE.match(lines[index])
    if kind == "revalue" and m:
        lines[index] = m.group(1) + m.group(2) + m.group(3) + any_value(rng)
    elif kind == "insert_key":
        lines.insert(index, f"{rng.choice([long_key(rng), *KEY_PATHS])} = {any_value(rng)}")
    elif kind == "header":
        lines.insert(
            index, rng.choice([f"[{long_key(rng)}]", f"[[{long_key(rng)}]]", "[datasets]", "[[model]]"])
        )
    elif kind == "rekey" and m:
        lines[index] = m.group(1) + long_key(rng) + m.group(3) + m.group(4)
    elif kind == "odd_key" and m:
        lines[index] = m.group(1) + odd_string(rng) + m.group(3) + m.group(4)
    else:
        at = rng.randint(0, len(lines[index]))
        lines[index] = lines[index][:at] + any_value(rng) + lines[index][at:]
    overrides = [f"{rng.choice(KEY_PATHS)}={any_value(rng)}" for _ in range(rng.choice([0, 0, 1, 2]))]
    return "\n".join(lines), overrides


def assert_positioned(checked, label: str, text: str, overrides: list[str]) -> None:
    """Every diagnostic, error or warning, points inside the text it names."""
    texts = {label: text, OVERRIDES_FILE: "\n".join(overrides)}
    for d in checked.diagnostics:
        assert d.span is not None, d
        assert d.span.file in texts, d
        lines = texts[d.span.file].split("\n")
        assert 1 <= d.span.line <= len(lines), d
        assert 1 <= d.span.col <= len(lines[d.span.line - 1]) + 1, d


@pytest.fixture
def folder(tmp_path):
    """A folder in memory where there is one: thousands of small writes to a busy disk cost
    more than checking."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm) as path:
        yield Path(path)


@pytest.mark.parametrize("seed", SEEDS)
def test_structural_mutations_are_diagnosed_with_positions(folder, seed):
    rng = random.Random(seed)
    names = sorted(SPECS)
    for case in range(CASES // len(SEEDS)):
        name = rng.choice(names)
        text = SPECS[name]
        for _ in range(rng.choice([1, 1, 2, 3])):
            text, overrides = mutate(rng, text)
        path = folder / name
        path.write_text(text, encoding="utf-8", newline="")
        try:
            checked = check_spec(path, name, overrides)
            assert_positioned(checked, name, text, overrides)
            render_all_text(checked.diagnostics, checked.raw.sources if checked.raw else {})
            render_json(checked.diagnostics)
        except BaseException as exc:
            raise AssertionError(f"seed {seed} case {case} ({name}, overrides {overrides}): {exc!r}") from exc
        if checked.spec is None:
            assert any(d.severity == "error" for d in checked.diagnostics), (
                f"seed {seed} case {case}: no spec, no error"
            )

"""Snapshot tests of `dbspec check` on broken specs: the exact text it prints and its exit code.

Each case is `check/NAME.toml` (the spec; a case with only an .expected file checks a missing spec file),
an optional `check/NAME.args` (extra CLI arguments, one per line; lines starting with `#` are comments), an
optional `check/NAME.unimportable` (packages the case runs without, e.g. an optional extra; same format)
and `check/NAME.expected`: `exit: N` on the first line, then the output. The CLI runs in-process from this
folder with the spec path `check/NAME.toml`, so the output names no temporary paths.

After an intended change of the output, rewrite the snapshots and read the diff:
    DBSPEC_UPDATE_GOLDEN=1 pytest tests/golden
"""

from __future__ import annotations

import inspect
import os
import re
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dbspec.cli import app
from dbspec.compiler.rules import rules_of

HERE = Path(__file__).parent
CASES = HERE / "check"
UPDATE_COMMAND = "DBSPEC_UPDATE_GOLDEN=1 pytest tests/golden"
UPDATING = os.environ.get("DBSPEC_UPDATE_GOLDEN") == "1"
CASE_NAMES = sorted({p.stem for p in CASES.glob("*.toml")} | {p.stem for p in CASES.glob("*.expected")})
# Codes of the check stage that are not DBS2xx rules (those are read from rules.py below).
FRONT_END_CODES = {
    "DBS001",
    "DBS002",
    "DBS003",
    "DBS004",
    "DBS101",
    "DBS102",
    "DBS103",
    "DBS104",
    "DBS105",
    "DBS106",
    "DBS107",
    "DBS108",
    "DBS203",
}


def case_args(name: str, suffix: str = "args") -> list[str]:
    args_file = CASES / f"{name}.{suffix}"
    if not args_file.exists():
        return []
    lines = args_file.read_text(encoding="utf-8").splitlines()
    return [line for line in lines if line and not line.startswith("#")]


def run_check(name: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What `dbspec check check/NAME.toml ARGS...` prints, run from this folder, after an `exit: N` line."""
    monkeypatch.chdir(HERE)
    for package in case_args(name, "unimportable"):
        monkeypatch.setitem(sys.modules, package, None)  # Python's own way to make a package unimportable
    result = CliRunner().invoke(app, ["check", f"check/{name}.toml", *case_args(name)])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return f"exit: {result.exit_code}\n{result.stdout}"


@pytest.mark.parametrize("name", CASE_NAMES)
def test_check_output(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    actual = run_check(name, monkeypatch)
    expected_file = CASES / f"{name}.expected"
    if UPDATING:
        expected_file.write_text(actual, encoding="utf-8", newline="\n")
        return
    assert expected_file.exists(), f"no snapshot for case {name}: run `{UPDATE_COMMAND}`"
    expected = expected_file.read_text(encoding="utf-8")
    assert actual == expected, (
        f"`dbspec check check/{name}.toml` output changed; if the change is intended, run `{UPDATE_COMMAND}` "
        "and review the diff of tests/golden/check"
    )


def test_there_are_enough_cases() -> None:
    assert len(CASE_NAMES) >= 35


def _codes_in(text: str) -> set[str]:
    return set(re.findall(r"DBS\d{3}", text))


def test_every_code_and_rule_has_a_case() -> None:
    """Every front-end code and every code each rule can emit appears in some snapshot."""
    shown = set()
    for path in CASES.glob("*.expected"):
        shown |= set(re.findall(r"^(?:error|warning)\[(DBS\d{3})\]", path.read_text(encoding="utf-8"), re.M))
    check_time = rules_of("spec", "plan", "paths")  # the "environment" rules need a target: plan snapshots
    rule_codes = {rule.__name__: _codes_in(inspect.getsource(rule)) for rule in check_time}
    missing_rules = {name: codes - shown for name, codes in rule_codes.items() if codes - shown}
    assert not missing_rules, f"rules without a golden case: {missing_rules}"
    assert shown >= FRONT_END_CODES, f"codes without a golden case: {sorted(FRONT_END_CODES - shown)}"


def test_every_case_has_a_spec_or_is_the_missing_file_case() -> None:
    specless = [n for n in CASE_NAMES if not (CASES / f"{n}.toml").exists()]
    assert specless == ["missing_file"]

"""The code table (dbspec/codes.py) against the code: every `DBSnnn` literal in dbspec/ and runtime/ is a row,
every row is used (or marked reserved), and every call site whose severity can be read uses the row's."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import attrs
import pytest

from dbspec import codes

ROOT = Path(__file__).resolve().parents[2]
CODE = re.compile(r"DBS\d{3}")
# Call sites: error(code, ...), warning(code, ...), rules' _err/_warn, Conversion.warn, ctx.report(code,
# severity, ...), Diagnostic(code=..., severity=...). A code given by name resolves through module-level
# constants (INVALID = "DBS402").
ERROR_CALLS = {"error", "_err"}
WARNING_CALLS = {"warning", "_warn", "warn"}


@attrs.frozen
class Site:
    code: str
    severity: str | None  # None where the call does not say (a variable, or no severity at all)
    where: str


@functools.cache
def _sources() -> dict[Path, ast.Module]:
    files = [*sorted((ROOT / "dbspec").rglob("*.py")), *sorted((ROOT / "runtime").rglob("*.py"))]
    files.remove(ROOT / "dbspec" / "codes.py")  # the table itself names every code
    return {path: ast.parse(path.read_text(encoding="utf-8"), str(path)) for path in files}


def _is_code(node: ast.AST | None) -> bool:
    return (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and CODE.fullmatch(node.value) is not None
    )


@functools.cache
def _constants() -> dict[str, str]:
    found = {}
    for tree in _sources().values():
        for node in tree.body:
            if isinstance(node, ast.Assign) and _is_code(node.value):
                found.update({t.id: node.value.value for t in node.targets if isinstance(t, ast.Name)})
    return found


def _site(node: ast.Call, where: str) -> Site | None:
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    keywords = {k.arg: k.value for k in node.keywords}
    arg = node.args[0] if node.args else keywords.get("code")
    code = arg.value if _is_code(arg) else _constants().get(arg.id) if isinstance(arg, ast.Name) else None
    if code is None:
        return None
    severity = "error" if name in ERROR_CALLS else "warning" if name in WARNING_CALLS else None
    stated = keywords.get("severity") or (node.args[1] if name == "report" and len(node.args) > 1 else None)
    if isinstance(stated, ast.Constant):
        severity = stated.value
    return Site(code=code, severity=severity, where=where)


@functools.cache
def _scan() -> tuple[set[str], list[Site]]:
    used, sites = set(), []
    for path, tree in _sources().items():
        rel = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if _is_code(node):
                used.add(node.value)
            elif isinstance(node, ast.Call) and (site := _site(node, f"{rel}:{node.lineno}")):
                sites.append(site)
    return used, sites


# the sources are parsed once, by the first test that reads them (not at import: every xdist worker
# collects this module)


def test_the_scan_finds_the_call_sites():
    used, sites = _scan()
    assert len(used) >= 70
    assert sum(s.severity is not None for s in sites) >= 80
    assert {"INVALID", "UNSUPPORTED", "CHECK_FAILED"} <= _constants().keys()


def test_every_code_used_is_in_the_table():
    used, _ = _scan()
    missing = sorted(used - codes.BY_CODE.keys())
    assert not missing, f"codes used in dbspec/ or runtime/ without a row in dbspec/codes.py: {missing}"


def test_every_code_in_the_table_is_used_or_reserved():
    used, _ = _scan()
    unused = sorted(c.code for c in codes.CODES if c.code not in used and not c.reserved)
    assert not unused, f"rows of dbspec/codes.py no code uses (remove them or mark them reserved): {unused}"


def test_call_sites_use_the_tables_severity():
    _, sites = _scan()
    wrong = [
        f"{s.where}: {s.code} as {s.severity}, the table says {codes.get(s.code).severity}"
        for s in sites
        if s.code in codes.BY_CODE
        and s.severity is not None
        and codes.get(s.code).severity not in (s.severity, "either")
    ]
    assert not wrong, (
        "severities that disagree with dbspec/codes.py (fix the call or the row):\n" + "\n".join(wrong)
    )


def test_either_is_only_for_codes_used_both_ways():
    """A row says "either" only when some call can make each: a fixed-severity code must say which."""
    _, sites = _scan()
    fixed = {}
    for s in sites:
        fixed.setdefault(s.code, set()).add(s.severity)
    # The image-problem codes are made by one call with a variable severity (on_bad_image), hence None.
    too_loose = sorted(
        c.code
        for c in codes.CODES
        if c.severity == "either" and not c.reserved and fixed.get(c.code, {None}) in ({"error"}, {"warning"})
    )
    assert not too_loose, f"rows marked either but only used with one severity: {too_loose}"


def test_rows_are_well_formed():
    seen = [c.code for c in codes.CODES]
    assert len(seen) == len(set(seen)), "a code has two rows"
    assert seen == sorted(seen), "keep the rows in code order"
    digits = {g.digit for g in codes.GROUPS}
    for c in codes.CODES:
        assert CODE.fullmatch(c.code) and c.code[3] in digits, c.code
        assert c.severity in ("error", "warning", "either"), c.code
        assert c.title and "\n" not in c.title and not c.title.endswith("."), c.code
        assert c.explanation.strip() == c.explanation and c.explanation, c.code
        assert "\n" not in c.help, c.code


def test_help_comes_from_the_table():
    assert codes.help("DBS005") == codes.get("DBS005").help != ""
    with pytest.raises(KeyError):
        codes.help("DBS001")  # no help line in its row: a caller relying on one must get an error, not ""
    with pytest.raises(KeyError):
        codes.get("DBS999")

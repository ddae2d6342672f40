"""The check and plan pipeline the CLI drives: `check_spec` (load, structure, ranges, then the check-time
rules, on a salvaged spec when some keys were bad) and `plan_spec` (check, then compile for a target).

It sits above the spec and the compiler and imports both; nothing in dbspec/spec, compiler or plan imports it.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING
from pathlib import Path

import attrs

from dbspec.compiler.rules import check_rules, hit_to_diagnostic
from dbspec.diagnostics import Diagnostic
from dbspec.spec.check import Checked, check_ranges, load_and_structure
from dbspec.spec.load import parse_override_key
from dbspec.spec.migrate import user_spelling
from dbspec.spec.model import Spec
from dbspec.spec.structure import structure_spec

if TYPE_CHECKING:
    from dbspec.plan.model import Plan, TargetEnv
from dbspec.spec.paths import dotted


def check_spec(path: Path, label: str | None = None, overrides: list[str] | None = None) -> Checked:
    """Load, structure, range-check and rule-check a spec; all diagnostics gathered."""
    checked = load_and_structure(path, label or str(path), list(overrides or []))
    if checked.raw is None or not checked.raw.parsed:
        return checked
    raw, found = checked.raw, checked.diagnostics
    spec = checked.spec or salvage(raw.data, tuple(d for d in found if d.severity == "error"))
    # Keys whose value was replaced by a default (salvage) or is not known at all.
    errors = [d for d in found if d.severity == "error"]
    replaced = [parse_override_key(d.path) or () for d in errors if d.path] if checked.spec is None else []
    if spec is not None and checked.spec is None:
        found += tuple(check_ranges(raw, spec))
    extra: tuple[Diagnostic, ...] = ()
    if spec is not None:
        flagged = {d.path for d in found}
        hits = check_rules(spec, raw.given, raw.path)
        extra = tuple(
            hit_to_diagnostic(raw, h)
            for h in hits
            if dotted(h.path) not in flagged and not _near_replaced(h.path, replaced)
        )
    diagnostics = tuple(sorted(found + extra, key=Diagnostic.sort_key))
    return attrs.evolve(checked, diagnostics=tuple(user_spelling(d, raw.renamed) for d in diagnostics))


def _near_replaced(path: tuple, replaced: list[tuple]) -> bool:
    """Is `path` in the table (or dataset) of a key that salvage replaced by its default?

    Rules there read the default standing in for the user's bad value, and would report a mistake the
    user did not make (a mistyped `prompts` is not "no prompts"; a misspelt `promt` is not "no prompt").
    """
    scope = _scope(path)
    return any(scope[: len(s)] == s for s in map(_scope, replaced))


def _scope(path: tuple) -> tuple:
    return path[:2] if len(path) > 1 and isinstance(path[1], int) else path[:1]


def salvage(data: dict, diagnostics: tuple[Diagnostic, ...]) -> Spec | None:
    """A Spec with every flagged key removed (defaults in its place), so rules still run on the rest.

    Returns None when a removed key was required: rules would then judge a spec the user did not write.
    """
    cleaned = copy.deepcopy(data)
    for d in diagnostics:
        path = parse_override_key(d.path) if d.path else None
        if path is None or not _delete(cleaned, path):
            return None
    spec, problems = structure_spec(cleaned)
    return spec if not problems else None


def _delete(data: dict, path: tuple) -> bool:
    node = data
    for part in path[:-1]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    if isinstance(node, dict) and path[-1] in node:
        del node[path[-1]]
        return True
    return False


@attrs.frozen(kw_only=True)
class Planned:
    plan: "Plan | None"
    diagnostics: tuple[Diagnostic, ...]
    sources: dict


def plan_spec(
    path: Path, env: "TargetEnv", label: str | None = None, overrides: list[str] | None = None
) -> Planned:
    """Check and compile a spec for `env`; diagnostics hold every error and warning either way."""
    from dbspec.compiler.compile import compile_plan
    from dbspec.diagnostics import DiagnosticError

    checked = check_spec(path, label, overrides)
    sources = checked.raw.sources if checked.raw else {}
    renamed = checked.raw.renamed if checked.raw else ()
    try:
        plan, warnings = compile_plan(checked, env)
    except DiagnosticError as exc:
        return Planned(plan=None, diagnostics=_spelled(exc.diagnostics, renamed), sources=sources)
    return Planned(plan=plan, diagnostics=_spelled(warnings, renamed), sources=sources)


def _spelled(diagnostics: tuple[Diagnostic, ...], renamed: tuple) -> tuple[Diagnostic, ...]:
    return tuple(user_spelling(d, renamed) for d in diagnostics)

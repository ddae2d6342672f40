"""Check a spec file end to end without touching the file system beyond the spec itself."""

from __future__ import annotations

import copy
from pathlib import Path

import attrs

from dbspec.compiler.rules import Hit, run_rules
from dbspec.diagnostics import Diagnostic
from dbspec.spec.check import Checked, load_and_structure
from dbspec.spec.load import RawSpec, parse_override_key
from dbspec.spec.model import Spec
from dbspec.spec.structure import structure_spec
from dbspec.spec.paths import dotted


def check_spec(path: Path, label: str | None = None, overrides: list[str] | None = None) -> Checked:
    """Load, structure, range-check and rule-check a spec; all diagnostics gathered."""
    checked = load_and_structure(path, label or str(path), list(overrides or []))
    if checked.raw is None:
        return checked
    spec = checked.spec or salvage(checked.raw.data, checked.diagnostics)
    extra: tuple[Diagnostic, ...] = ()
    if spec is not None:
        flagged = {d.path for d in checked.diagnostics}
        hits = run_rules(spec, checked.raw.given, spec.schedule.steps or None)
        extra = tuple(hit_to_diagnostic(checked.raw, h) for h in hits if dotted(h.path) not in flagged)
    diagnostics = tuple(sorted(checked.diagnostics + extra, key=Diagnostic.sort_key))
    return attrs.evolve(checked, diagnostics=diagnostics)


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


def hit_to_diagnostic(raw: RawSpec, hit: Hit) -> Diagnostic:
    span = raw.value_span(hit.path) if raw.given(hit.path) else raw.key_span(hit.path)
    return Diagnostic(code=hit.code, severity=hit.severity, message=hit.message, path=dotted(hit.path),
                      span=span, help=hit.help)

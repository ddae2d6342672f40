"""Convert legacy DreamBooth configs (kohya-ss sd-scripts, diffusers example scripts,
SimpleTuner) into a spec.

Torch-free. Each converter returns a `Conversion` (values with the legacy key they came from, one report row
per legacy key, DBS4xx diagnostics); `execute` writes the spec when nothing is in error, checks it as
`dbspec check` does (`frontend.check_spec`), and prints diagnostics and (with `report`) the table
of every legacy key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs

from dbspec.convert.common.core import Conversion
from dbspec.convert.common.launcher import InputError
from dbspec.convert.common.run import Outcome, apply_sets, finish, unreadable

Converter = Callable[[], tuple[Conversion, list[str]]]


def convert(converter: Converter, out: Path, overrides: Sequence[str] = ()) -> Outcome:
    """Run a converter, apply `--set key=value` overrides, and write its spec to `out` (when
    it has no errors)."""
    try:
        conv, header = converter()
    except InputError as exc:
        return unreadable(str(exc))
    apply_sets(conv, overrides)
    if overrides:
        header = [*header, f"Values given with dbspec convert --set: {', '.join(overrides)}."]
    return finish(conv, header, out)


def execute(converter: Converter, out: Path, *, report: bool, fmt: str, overrides: Sequence[str] = ()) -> int:
    """The CLI: convert, print, return the exit code (0 converted, 1 invalid or inexpressible input)."""
    import typer
    from rich.console import Console

    from dbspec.convert.common.report import render_report
    from dbspec.diagnostics import render_all_text, render_json

    outcome = convert(converter, out, overrides)
    if fmt == "json":
        payload = json.loads(render_json(outcome.diagnostics))
        payload["written"] = str(out) if outcome.written else None
        payload["keys"] = [attrs.asdict(row) for row in outcome.conversion.reports.values()] if report else []
        typer.echo(json.dumps(payload, indent=2))
        return outcome.exit_code
    if report and outcome.conversion.reports:
        render_report(outcome.conversion, Console(highlight=False, soft_wrap=False, width=160))
    if outcome.diagnostics:
        typer.echo(render_all_text(outcome.diagnostics, {}))
    typer.echo(f"wrote {out}" if outcome.written else f"not written: {out} (fix the errors above)")
    return outcome.exit_code

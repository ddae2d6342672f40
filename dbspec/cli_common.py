"""Options and output helpers shared by the `dbspec` commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from dbspec.diagnostics import Diagnostic, render_all_text, render_json

SetOption = Annotated[
    Optional[list[str]], typer.Option("--set", help="Override a value: --set optimizer.lr=2e-6")
]
FormatOption = Annotated[str, typer.Option("--format", help="text or json")]
StrictOption = Annotated[bool, typer.Option("--strict", help="Warnings fail too (exit 1).")]


def emit(diagnostics: tuple[Diagnostic, ...], sources: dict, fmt: str) -> None:
    if fmt == "json":
        typer.echo(render_json(diagnostics))
    elif diagnostics:
        typer.echo(render_all_text(diagnostics, sources))


def exit_code(diagnostics: tuple[Diagnostic, ...], strict: bool) -> int:
    if any(d.severity == "error" for d in diagnostics):
        return 1
    return 1 if strict and diagnostics else 0


def check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"--format must be text or json, not {fmt!r}")

"""The `dbspec` command line. Exit codes: 0 ok, 1 the input has errors, 2 usage or internal error."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from dbspec.diagnostics import Diagnostic, render_all_text, render_json

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="DreamBooth fine-tuning from one declarative, compiler-checked TOML spec.")

SetOption = Annotated[Optional[list[str]], typer.Option("--set", help="Override a value: --set optimizer.lr=2e-6")]
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


def _check_format(fmt: str) -> None:
    if fmt not in ("text", "json"):
        raise typer.BadParameter(f"--format must be text or json, not {fmt!r}")


@app.command()
def check(
    spec: Annotated[Path, typer.Argument(help="The spec file.")],
    set_: SetOption = None,
    fmt: FormatOption = "text",
    strict: StrictOption = False,
) -> None:
    """Validate a spec: every error at once, with positions and suggestions."""
    from dbspec.frontend import check_spec

    _check_format(fmt)
    checked = check_spec(spec, str(spec), set_ or [])
    sources = checked.raw.sources if checked.raw else {}
    emit(checked.diagnostics, sources, fmt)
    code = exit_code(checked.diagnostics, strict)
    if code == 0 and fmt == "text":
        typer.echo(f"{spec}: ok")
    raise typer.Exit(code)


@app.command()
def schema(
    output: Annotated[Path, typer.Option("--output", "-o", help="Where to write the JSON Schema.")] = Path(
        "schemas/dbspec.schema.json"),
    docs: Annotated[Optional[Path], typer.Option("--docs", help="Also write the Markdown spec reference here.")] = None,
) -> None:
    """Write the JSON Schema (and the spec reference) generated from the spec model."""
    from dbspec.spec.reference import reference_markdown
    from dbspec.spec.schema import schema_text
    from dbspec.util.atomic import write_text_atomic

    write_text_atomic(output, schema_text())
    typer.echo(f"wrote {output}")
    if docs is not None:
        write_text_atomic(docs, reference_markdown())
        typer.echo(f"wrote {docs}")


@app.command()
def explain(key: Annotated[str, typer.Argument(help="A key such as optimizer.lr or datasets.repeats")]) -> None:
    """Show a key's type, default, meaning and an example."""
    from dbspec.spec.reference import explain as explain_key

    text, found = explain_key(key)
    typer.echo(text)
    raise typer.Exit(0 if found else 1)


def main() -> None:
    """Console entry point: no traceback for bad input; internal errors exit 2 with a short report."""
    try:
        app()
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if os.environ.get("DBSPEC_DEBUG"):
            raise
        typer.echo(f"internal error: {type(exc).__name__}: {exc}\n"
                   "this is a dbspec bug; rerun with DBSPEC_DEBUG=1 for a traceback and report it", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()

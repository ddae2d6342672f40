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


TargetOption = Annotated[Optional[str], typer.Option(
    "--target", help="Compile for another machine: cpu, cuda:24GB, cuda:16GB:7.5, mps:32GB (default: this one).")]


def resolve_target(target: str | None, output_hint: Path | None = None):
    from dbspec.compiler.target import parse_target, probe_target

    if target is None:
        return probe_target(output_hint)
    try:
        return parse_target(target)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--target") from None


@app.command()
def plan(
    spec: Annotated[Path, typer.Argument(help="The spec file.")],
    set_: SetOption = None,
    target: TargetOption = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the plan as JSON to this path.")] = None,
    explain_origins: Annotated[bool, typer.Option("--explain", help="Show where every value came from.")] = False,
    fmt: FormatOption = "text",
    strict: StrictOption = False,
) -> None:
    """Compile a spec into a resolved execution plan and show it; no model is loaded."""
    from rich.console import Console

    from dbspec.frontend import plan_spec
    from dbspec.plan.io import write_plan
    from dbspec.plan.summary import render_summary

    _check_format(fmt)
    planned = plan_spec(spec, resolve_target(target), str(spec), set_ or [])
    if planned.plan is None or fmt == "json":
        emit(planned.diagnostics, planned.sources, fmt)
    else:
        render_summary(planned.plan, Console(highlight=False, soft_wrap=True), explain=explain_origins)
    if planned.plan is not None and json_out is not None:
        write_plan(planned.plan, json_out)
        if fmt == "text":
            typer.echo(f"wrote {json_out}")
    raise typer.Exit(exit_code(planned.diagnostics, strict))


@app.command()
def run(
    source: Annotated[Path, typer.Argument(help="A spec (.toml) or a plan written by `dbspec plan --json` (.json).")],
    set_: SetOption = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the latest checkpoint.")] = False,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Move an output folder holding another run aside and start afresh.")] = False,
    strict: StrictOption = False,
) -> None:
    """Train: compile the spec (or read the plan), show the plan, then run it."""
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    console = Console(highlight=False, soft_wrap=True)
    the_plan = _plan_for_run(source, set_ or [], strict)
    render_summary(the_plan, console)
    from dbspec.runtime.execute import RunError, execute

    try:
        result = execute(the_plan, overwrite=overwrite, resume=resume, console=console)
    except RunError as exc:
        where = f"\n  --> {exc.where}" if exc.where else ""
        hint = f"\n  = help: {exc.hint}" if exc.hint else ""
        typer.echo(f"error: {exc.message}{where}{hint}", err=True)
        raise typer.Exit(1) from None
    if result.status == "interrupted":
        typer.echo(f"interrupted at step {result.steps}; checkpoint {result.last_checkpoint}\n"
                   f"resume with: dbspec run {source} --resume", err=True)
        raise typer.Exit(130)
    typer.echo(f"finished {result.steps} steps in {result.seconds:.1f} s ({result.steps_per_second:.2f} steps/s)\n"
               f"weights: {result.final}\noutputs: {result.output}")


def _plan_for_run(source: Path, overrides: list[str], strict: bool):
    from dbspec.frontend import plan_spec

    if source.suffix == ".json":
        from dbspec.plan.io import PlanFileError, read_plan

        if overrides:
            raise typer.BadParameter("--set applies to specs; compile the spec again instead", param_hint="--set")
        try:
            return read_plan(source)
        except PlanFileError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
    planned = plan_spec(source, resolve_target(None, None), str(source), overrides)
    if planned.plan is None or exit_code(planned.diagnostics, strict):
        emit(planned.diagnostics, planned.sources, "text")
        raise typer.Exit(1)
    return planned.plan


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

"""`dbspec upgrade SPEC`: the spec rewritten to the current spec_version (dbspec/spec/upgrade.py), written
atomically in place, or only shown (`--dry-run`) or tested (`--check`)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from dbspec.diagnostics import render_all_text
from dbspec.spec.load import read_text
from dbspec.spec.model import SPEC_VERSION
from dbspec.spec.upgrade import upgrade_text
from dbspec.util.atomic import write_bytes_atomic


def upgrade_file(spec: Path, *, dry_run: bool, check_only: bool) -> int:
    """Exit code: 0 current or upgraded (or shown with --dry-run), 1 bad input or (--check)
    an upgrade needed."""
    label = str(spec)
    text, shown, problems = read_text(spec, label)
    if text is not None:
        upgrade, problems = upgrade_text(text, label)
    if text is None or upgrade is None:
        typer.echo(render_all_text(tuple(problems), {label: shown} if shown else {}), err=True)
        return 1
    if not upgrade.changed:
        typer.echo(f"{label}: already spec_version {SPEC_VERSION}; nothing to upgrade")
        return 0
    typer.echo(upgrade.diff(label), nl=False)
    renamed = ", ".join(f"{old} -> {new} (line {line})" for old, new, line in upgrade.renamed) or "no keys"
    if check_only:
        typer.echo(
            f"{label}: spec_version {upgrade.version} needs an upgrade ({renamed}); run "
            f"`dbspec upgrade {label}`"
        )
        return 1
    if dry_run:
        typer.echo(f"{label}: not changed (--dry-run); renamed would be: {renamed}")
        return 0
    target = spec.resolve()  # a symlinked spec: rewrite the file it points to, keep the link
    write_bytes_atomic(target, upgrade.text.encode("utf-8"), mode=os.stat(target).st_mode & 0o7777)
    typer.echo(f"{label}: upgraded from spec_version {upgrade.version} to {SPEC_VERSION}; renamed: {renamed}")
    return 0

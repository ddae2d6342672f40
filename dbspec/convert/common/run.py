"""Finish a conversion: check the spec as `dbspec check` does (`frontend.check_spec`) before it replaces `-o`,
so only specs that pass `dbspec check` are ever written. A value dbspec rejects (a legacy repeats of -1, an
epsilon of 0) is reported against the legacy key its comment names (DBS403); an error no value explains is a
converter bug (DBS408)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import attrs

from dbspec.convert.common.core import UNSUPPORTED, Conversion
from dbspec.convert.common.emit import render_spec
from dbspec.diagnostics import Diagnostic, error
from dbspec.spec.load import parse_override_key, parse_override_value
from dbspec.util.atomic import write_text_atomic

CHECK_FAILED = "DBS408"
UNREADABLE = "DBS401"


@attrs.frozen(kw_only=True)
class Outcome:
    conversion: Conversion
    written: bool
    text: str  # the spec text ("" when not written)
    diagnostics: tuple[Diagnostic, ...]  # the conversion's, then any from checking the spec

    @property
    def exit_code(self) -> int:
        return 1 if any(d.severity == "error" for d in self.diagnostics) else 0


def finish(conv: Conversion, header: list[str], out: Path) -> Outcome:
    if conv.has_errors():
        return Outcome(conversion=conv, written=False, text="", diagnostics=tuple(conv.diagnostics))
    notes = [f"  {n}" for n in dict.fromkeys(conv.notes)]
    text = render_spec(conv, [*header, *(["Notes (see --report for every key):", *notes] if notes else [])])
    # Checked where it will live: relative paths in it resolve against that folder.
    draft = out.with_name(f".{out.name}.converting")
    write_text_atomic(draft, text)
    try:
        found = _check(draft, out)
    except BaseException:
        draft.unlink(missing_ok=True)
        raise
    rejected = [d for d in found if d.severity == "error"]
    if rejected:
        draft.unlink(missing_ok=True)
        return Outcome(
            conversion=conv,
            written=False,
            text="",
            diagnostics=(*conv.diagnostics, *(_explain(conv, d) for d in rejected)),
        )
    os.replace(draft, out)
    return Outcome(conversion=conv, written=True, text=text, diagnostics=(*conv.diagnostics, *found))


def apply_sets(conv: Conversion, overrides: Sequence[str]) -> None:
    """`dbspec convert --set key=value`: each value replaces (or adds) that spec value, as
    `dbspec check --set` would; then every value the legacy inputs lack and no --set gave is reported."""
    for item in overrides:
        key, eq, text = item.partition("=")
        path = parse_override_key(key.strip()) if eq else None
        value, ok = parse_override_value(text.strip()) if path is not None else (None, False)
        if path is None or not ok:
            conv.diagnostics.append(
                error(
                    "DBS004",
                    f"cannot read override `{item}`",
                    path=key.strip(),
                    help="write --set table.key=value, e.g. --set model.base=runwayml/stable-diffusion-v1-5",
                )
            )
            continue
        conv.put(path, value, f"dbspec convert --set {key.strip()}")
    for path, problem in conv.required.items():
        if path not in conv.values:
            conv.diagnostics.append(problem)
    given = {parse_override_key(item.partition("=")[0].strip()) for item in overrides}
    for path, advice in conv.unless_set.items():
        if path not in given:
            conv.diagnostics.append(advice)


def _check(draft: Path, out: Path) -> tuple[Diagnostic, ...]:
    from dbspec.frontend import check_spec

    checked = check_spec(draft, str(out))
    # no spans: the draft file is gone afterwards
    return tuple(_installable(attrs.evolve(d, span=None)) for d in checked.diagnostics)


# Errors about this machine's packages, not the spec: the converted spec is written, and they are warnings
NEEDS_INSTALL = ("DBS379",)  # logging.wandb without the wandb package


def _installable(d: Diagnostic) -> Diagnostic:
    if d.code not in NEEDS_INSTALL or d.severity != "error":
        return d
    return attrs.evolve(
        d, severity="warning", message=d.message + " (the spec is written; install it to run)"
    )


def _explain(conv: Conversion, d: Diagnostic) -> Diagnostic:
    path = parse_override_key(d.path) if d.path else None
    if path is not None and path in conv.values:
        value, comment = conv.values[path]
        return error(
            UNSUPPORTED,
            f"{comment}: converts to `{d.path} = {value!r}`, which dbspec rejects: {d.message}",
            path=d.path,
            help="fix the legacy value (the legacy tool most likely rejects it too)",
        )
    return error(
        CHECK_FAILED,
        f"the converted spec does not pass `dbspec check`: {d.code} {d.path}: {d.message}",
        path=d.path,
        help="this is a converter bug; please report it with the legacy input",
    )


def unreadable(message: str) -> Outcome:
    return Outcome(
        conversion=Conversion(tool=""),
        written=False,
        text="",
        diagnostics=(
            error(
                UNREADABLE,
                message,
                help="check the path (relative paths resolve against --cwd, default the current folder)",
            ),
        ),
    )

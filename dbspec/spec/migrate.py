"""Older spec versions, read forward.

Each step from one spec_version to the next is a list of key renames (`RENAMES`). `migrate` applies them to a
RawSpec in memory, so a version-1 file keeps working: its data and span index take the new names (errors still
point at the user's lines), and one DBS107 warning says which keys were renamed and to run `dbspec upgrade`.
`dbspec upgrade` (dbspec/spec/upgrade.py) rewrites the same renames into the file's text. Old and new names
mixed in one file, or a name of another version, are a DBS108 error.
"""

from __future__ import annotations

import copy

import attrs

from dbspec.diagnostics import Diagnostic, Span, error, warning
from dbspec.spec.load import RawSpec
from dbspec.spec.model import SPEC_VERSION
from dbspec.spec.paths import KeyPath, dotted


@attrs.frozen
class Rename:
    table: KeyPath  # the table holding the key, e.g. ("train",)
    old: str
    new: str

    @property
    def old_path(self) -> KeyPath:
        return (*self.table, self.old)

    @property
    def new_path(self) -> KeyPath:
        return (*self.table, self.new)


# RENAMES[v]: what changed from spec_version v to v + 1.
RENAMES: dict[int, tuple[Rename, ...]] = {
    # 2: the trained network is the denoiser (a UNet, or a transformer in the families to come).
    1: (
        Rename(("adapter",), "unet_targets", "denoiser_targets"),
        Rename(("train",), "unet", "denoiser"),
        Rename(("precision",), "quantize_unet", "quantize_denoiser"),
    ),
}
OLDEST = min(RENAMES)


@attrs.frozen(kw_only=True)
class Renamed:
    """One key a migration renamed: where the user wrote it and what it is called now."""

    old: KeyPath
    new: KeyPath
    span: Span | None  # the user's key


def migratable(version: object) -> bool:
    """Is `version` an older spec_version this dbspec reads forward?"""
    return type(version) is int and OLDEST <= version < SPEC_VERSION


def _table(data: dict, table: KeyPath) -> dict | None:
    node = data
    for part in table:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if isinstance(node, dict) else None


def renames_in(data: dict, version: int) -> list[tuple[Rename, KeyPath]]:
    """The renames a file of `version` needs, each with the key path it has in that file (a key renamed twice
    keeps its first name)."""
    found: list[tuple[Rename, KeyPath]] = []
    current = {}  # path after the steps so far -> path in the file
    for step in range(version, SPEC_VERSION):
        for rename in RENAMES.get(step, ()):
            in_file = current.pop(rename.old_path, rename.old_path)
            table = _table(data, rename.table)
            if table is not None and in_file[-1] in table:
                found.append((rename, in_file))
                current[rename.new_path] = in_file
    return found


def _renamed_after(version: int) -> dict[KeyPath, tuple[Rename, int]]:
    """Key paths that versions after `version` introduced: the new path -> its rename and the version."""
    return {r.new_path: (r, step + 1) for step in range(version, SPEC_VERSION) for r in RENAMES.get(step, ())}


def _renamed_by(version: int) -> dict[KeyPath, tuple[Rename, int]]:
    """Key paths that `version` or an earlier one renamed away: the old path -> its rename and the version."""
    return {r.old_path: (r, step + 1) for step in range(OLDEST, version) for r in RENAMES.get(step, ())}


def name_problems(data: dict, version: int, file: str, key_span) -> list[Diagnostic]:
    """DBS108 for names of another version: a new name in an old file (also when the old name is there
    too), or an old name in a file of the version that renamed it. `key_span(path)` places a key."""

    def written(path: KeyPath) -> bool:
        table = _table(data, path[:-1])
        return table is not None and path[-1] in table

    found = [
        _new_name_in_old_file(r, since, version, file, key_span, both=written(r.old_path))
        for path, (r, since) in _renamed_after(version).items()
        if written(path)
    ]
    return found + [
        error(
            "DBS108",
            f"`{dotted(path)}` was renamed to `{dotted(r.new_path)}` in spec_version {since}; {file} says "
            f"spec_version = {version}",
            path=dotted(path),
            span=key_span(path),
            help=f"write `{r.new}` instead of `{r.old}`",
        )
        for path, (r, since) in _renamed_by(version).items()
        if written(path)
    ]


def _new_name_in_old_file(
    r: Rename, since: int, version: int, file: str, key_span, *, both: bool
) -> Diagnostic:
    old, new = dotted(r.old_path), dotted(r.new_path)
    also = f" and also sets `{old}`" if both else ""
    return error(
        "DBS108",
        f"`{new}` is the spec_version {since} name of `{old}`, but {file} says "
        f"spec_version = {version}{also}",
        path=new,
        span=key_span(r.new_path),
        help=f"keep only `{r.old}` (then `dbspec upgrade {file}` renames it)"
        if both
        else f"write `{r.old}` (the spec_version {version} name), or set spec_version = {SPEC_VERSION} and "
        "use its names throughout",
    )


def migrate_data(data: dict, version: int) -> tuple[dict, list[tuple[Rename, KeyPath]]]:
    """A copy of `data` in the current spec_version (keys renamed in place, order kept) and
    what was renamed."""
    out = copy.deepcopy(data)
    done = renames_in(data, version)
    for rename, in_file in done:
        table = _table(out, rename.table)
        assert table is not None  # renames_in found the key there
        items = [(rename.new if key == in_file[-1] else key, value) for key, value in table.items()]
        table.clear()
        table.update(items)
    out["spec_version"] = SPEC_VERSION
    return out, done


def migration_warning(file: str, version: int, renamed: list[Renamed], span: Span | None) -> Diagnostic:
    """The one DBS107 warning of a file read forward."""

    def where(r: Renamed) -> str:
        if r.span is None:
            return ""
        return " (--set)" if r.span.origin else f" (line {r.span.line})"

    keys = ", ".join(f"`{dotted(r.old)}` -> `{dotted(r.new)}`{where(r)}" for r in renamed)
    what = f"keys renamed: {keys}" if keys else "no key needed renaming"
    return warning(
        "DBS107",
        f"{file} is spec_version {version}, read as spec_version {SPEC_VERSION}; {what}",
        path="spec_version",
        span=span,
        help=f"run `dbspec upgrade {file}` to rewrite the file as spec_version {SPEC_VERSION} "
        "(comments and layout stay)",
    )


def user_spelling(diagnostic: Diagnostic, renamed: tuple[Renamed, ...]) -> Diagnostic:
    """`diagnostic` with the keys a migration renamed written as the user wrote them (its span
    is already theirs)."""
    if not renamed or diagnostic.code == "DBS107":  # the warning that names both spellings
        return diagnostic
    message, help_text, path = diagnostic.message, diagnostic.help, diagnostic.path
    for r in renamed:
        new, old = dotted(r.new), dotted(r.old)
        message, help_text = message.replace(new, old), help_text.replace(new, old)
        if path == new or path.startswith((new + ".", new + "[")):
            path = old + path[len(new) :]
    return attrs.evolve(diagnostic, message=message, help=help_text, path=path)


def migrate(raw: RawSpec) -> tuple[RawSpec, list[Diagnostic]]:
    """`raw` read forward to the current spec_version, with the DBS107 warning; or `raw` as it is with the
    DBS108 errors of names from another version. Versions this dbspec cannot read are left to
    the version check."""
    if "spec_version" not in raw.data:
        return raw, []
    version = raw.data["spec_version"]
    current = type(version) is int and version == SPEC_VERSION
    if not current and not migratable(version):
        return raw, []
    problems = name_problems(raw.data, version, raw.file, raw.key_span)
    if current or problems:
        return raw, problems
    data, done = migrate_data(raw.data, version)
    renamed = tuple(
        sorted(
            (Renamed(old=in_file, new=r.new_path, span=raw.key_span(in_file)) for r, in_file in done),
            key=lambda r: (r.span is None, r.span.origin if r.span else "", r.span.line if r.span else 0),
        )
    )
    aliases = {r.new: r.old for r in renamed}
    migrated = attrs.evolve(
        raw,
        data=data,
        spans=raw.spans.aliased(aliases),
        override_spans=_aliased(raw.override_spans, aliases),
        override_key_spans=_aliased(raw.override_key_spans, aliases),
        renamed=renamed,
    )
    return migrated, [migration_warning(raw.file, version, list(renamed), raw.value_span(("spec_version",)))]


def _aliased(spans: dict, aliases: dict[KeyPath, KeyPath]) -> dict:
    """`spans` (KeyPath -> Span) with each new path also at its old path's span."""
    out = dict(spans)
    for new, old in aliases.items():
        out.update({new + path[len(old) :]: span for path, span in spans.items() if path[: len(old)] == old})
    return out

"""The conversion record: spec values with the legacy key each came from, and the fate of every legacy key.

A converter reads legacy settings (`Legacy`), writes dbspec values with `put`, and records for every legacy
key one fate: mapped (exactly expressed), defaulted (the legacy tool's default, written so dbspec keeps it),
differs (closest dbspec setting; the difference is stated), unsupported (changes training and has no dbspec
equivalent), inert (changes nothing that trains: GUI or logging keys, or ignored by the legacy tool too),
unreadable (an input the conversion needs is not on this machine) or invalid (the legacy tool itself rejects
it). Several uses of one key (a CLI fallback used by many subsets)
merge into one report row whose fate is the worst of them.
"""

from __future__ import annotations

from typing import Any, Literal

import attrs

from dbspec.diagnostics import Diagnostic, error, warning
from dbspec.spec.paths import KeyPath, dotted

Fate = Literal["mapped", "defaulted", "differs", "unsupported", "inert", "unreadable", "invalid"]
# Merge order: a key used twice reports its worst fate.
_RANK = {
    "inert": 0,
    "defaulted": 1,
    "mapped": 2,
    "differs": 3,
    "unsupported": 4,
    "unreadable": 5,
    "invalid": 6,
}

UNREADABLE = "DBS401"  # a legacy input (a file, an image folder) cannot be read on this machine
INVALID = "DBS402"  # the legacy tool itself rejects the input
UNSUPPORTED = "DBS403"  # changes training, no dbspec equivalent
DIFFERS = "DBS404"  # closest dbspec setting, meaning differs as stated
IGNORED = "DBS405"  # the legacy tool ignores this key too (a likely mistake in the legacy config)
DEPENDS = "DBS406"  # the value depends on image folders that could not be read here


@attrs.frozen(kw_only=True)
class Legacy:
    """One legacy setting as the legacy tool sees it after its own precedence rules."""

    key: str
    value: Any
    source: str  # "command line", "config_file", "dataset_config", "folder name", "default", ...

    @property
    def given(self) -> bool:
        return self.source != "default"


@attrs.frozen(kw_only=True)
class KeyReport:
    key: str
    value: str
    source: str
    fate: Fate
    target: str = ""  # the dbspec key(s) it became
    note: str = ""  # why, or what differs


@attrs.define
class Conversion:
    """Everything one conversion produced; `put` and the fate methods are the only writers."""

    tool: str  # "kohya", "diffusers", "SimpleTuner": the prefix of every comment
    allow_unsupported: bool = False
    values: dict[KeyPath, tuple[Any, str]] = attrs.field(factory=dict)
    reports: dict[str, KeyReport] = attrs.field(factory=dict)
    diagnostics: list[Diagnostic] = attrs.field(factory=list)
    notes: list[str] = attrs.field(factory=list)  # header comments of the written spec
    # spec values the legacy inputs lack: each diagnostic is reported unless
    # `dbspec convert --set` gives the value
    required: dict[KeyPath, Diagnostic] = attrs.field(factory=dict)
    # warnings about a converter-chosen value, reported unless `dbspec convert --set` gives that value
    unless_set: dict[KeyPath, Diagnostic] = attrs.field(factory=dict)
    # what one mapping step learnt of the legacy run for a later one (not spec values), e.g. kohya's
    # network_reg_lrs groups for its per-group scheduler lists
    facts: dict[str, Any] = attrs.field(factory=dict)
    _said: set = attrs.field(factory=set)

    # --- values ----------------------------------------------------------------------------------------
    def put(self, path: KeyPath, value: Any, comment: str) -> None:
        self.values[tuple(path)] = (value, comment)

    def comment(self, legacy: Legacy, extra: str = "") -> str:
        where = f"default {legacy.key}" if not legacy.given else f"{legacy.key} ({legacy.source})"
        return f"{self.tool} {where}{'; ' + extra if extra else ''}"

    # --- fates -----------------------------------------------------------------------------------------
    def mapped(self, legacy: Legacy, path: KeyPath, value: Any, note: str = "", comment: str = "") -> None:
        self.put(path, value, comment or self.comment(legacy))
        self._fate(legacy, "mapped", path, note)

    def record(self, legacy: Legacy, fate: Fate, target: str = "", note: str = "") -> None:
        """A fate without a value of its own (e.g. a key that only shaped another value)."""
        self._fate(legacy, fate, target, note)

    def differs(
        self, legacy: Legacy, why: str, path: KeyPath | None = None, value: Any = None, comment: str = ""
    ) -> None:
        if path is not None:
            self.put(path, value, comment or self.comment(legacy))
        self._fate(legacy, "differs", path or "", why)
        self._say(warning(DIFFERS, f"{self.tool} `{legacy.key}`: {why}", path=legacy.key), legacy.key)
        self.notes.append(f"differs: {legacy.key}: {why}")

    def unsupported(self, legacy: Legacy, why: str, help: str = "") -> None:
        self._fate(legacy, "unsupported", "", why)
        message = f"{self.tool} `{legacy.key}` = {show(legacy.value)} cannot be expressed in dbspec: {why}"
        if self.allow_unsupported:
            self._say(warning(UNSUPPORTED, message, path=legacy.key, help=help), legacy.key)
            self.notes.append(f"unsupported (left out): {legacy.key} = {show(legacy.value)}: {why}")
        else:
            help = (
                help
                or "remove the setting from the legacy config, or pass --allow-unsupported to convert "
                "without it"
            )
            self._say(error(UNSUPPORTED, message, path=legacy.key, help=help), legacy.key)

    def inert(self, legacy: Legacy, why: str) -> None:
        self._fate(legacy, "inert", "", why)

    def ignored(self, legacy: Legacy, why: str) -> None:
        """The legacy tool ignores this given key too: probably a mistake in the legacy config."""
        self._fate(legacy, "inert", "", why)
        self._say(warning(IGNORED, f"{self.tool} ignores `{legacy.key}`: {why}", path=legacy.key), legacy.key)

    def invalid(self, key: str, value: Any, source: str, why: str, help: str = "") -> None:
        self._fate(Legacy(key=key, value=value, source=source), "invalid", "", why)
        self._say(
            error(INVALID, f"{self.tool} rejects `{key}` = {show(value)}: {why}", path=key, help=help),
            key + why,
        )

    def unreadable(self, legacy: Legacy, why: str, help: str = "") -> None:
        """A legacy input the conversion needs cannot be read on this machine (not the legacy tool's rule)."""
        self._fate(legacy, "unreadable", "", why)
        self._say(
            error(
                UNREADABLE,
                f"{self.tool} `{legacy.key}` = {show(legacy.value)} cannot be read here: {why}",
                path=legacy.key,
                help=help or "convert on the machine that holds it, or pass --cwd",
            ),
            legacy.key + why,
        )

    def depends(self, key: str, why: str) -> None:
        """A value computed from image counts that could not be read: said once per key."""
        self._say(
            warning(
                DEPENDS,
                f"{self.tool} `{key}`: {why}",
                path=key,
                help="convert on the machine that holds the images (or pass --cwd)",
            ),
            key + "?",
        )

    def warn(self, code: str, message: str, key: str = "", help: str = "") -> None:
        self._say(warning(code, message, path=key, help=help), code + message)

    def require(self, path: KeyPath, problem: Diagnostic) -> None:
        """`path` must get a value; `problem` is reported when neither the legacy inputs
        nor --set give one."""
        self.required[tuple(path)] = problem

    def warn_unless_set(self, path: KeyPath, code: str, message: str, key: str = "", help: str = "") -> None:
        """A warning about the value the converter chose for `path`, left out when --set gives it."""
        self.unless_set[tuple(path)] = warning(code, message, path=key, help=help)

    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def _fate(self, legacy: Legacy, fate: Fate, target: KeyPath | str, note: str) -> None:
        fate = "defaulted" if fate == "mapped" and not legacy.given else fate
        target_text = dotted(target) if isinstance(target, tuple) else target
        old = self.reports[legacy.key] if legacy.key in self.reports else None
        value, source = show(legacy.value), legacy.source
        if old is not None:
            value, source = old.value, old.source  # the first use shows the value as written
            if _RANK[old.fate] > _RANK[fate]:
                fate, note = old.fate, old.note
            targets = [t for t in (old.target, target_text) if t]
            target_text = ", ".join(dict.fromkeys(", ".join(targets).split(", "))) if targets else ""
            note = note or old.note
        self.reports[legacy.key] = KeyReport(
            key=legacy.key, value=value, source=source, fate=fate, target=target_text, note=note
        )

    def _say(self, diagnostic: Diagnostic, dedupe: str) -> None:
        if dedupe in self._said:
            return
        self._said.add(dedupe)
        self.diagnostics.append(diagnostic)


def require_minimums(args: dict[str, Legacy], minimum: dict[str, float], conv: Conversion) -> bool:
    """Numbers the legacy tool divides by or loops over must reach their minimum (it crashes otherwise)."""
    ok = True
    for key, least in minimum.items():
        value = args[key].value if key in args else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < least:
            conv.invalid(
                key,
                value,
                args[key].source,
                f"must be at least {least}: the legacy script cannot train with {value}",
            )
            ok = False
    return ok


def show(value: Any) -> str:
    """A legacy value the way its user wrote it (short)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "None"
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def map_schedule_name(conv: Conversion, name: Legacy, names: tuple[str, ...] = ()) -> bool:
    """A legacy LR scheduler name: mapped when dbspec has it ("constant" is dbspec's default, so only
    recorded), else reported unsupported. Returns whether it mapped. `names`: the tool's names dbspec has
    (default: diffusers' get_scheduler ones)."""
    from dbspec.compiler.schedule import DIFFUSERS_SCHEDULES

    names = names or DIFFUSERS_SCHEDULES
    if name.value not in names:
        conv.unsupported(name, f"dbspec's schedules for {conv.tool} are {', '.join(names)}")
        return False
    if name.value != "constant":
        conv.mapped(name, ("schedule", "lr_schedule"), name.value)
    else:
        conv.record(name, "mapped", "schedule.lr_schedule")
    return True

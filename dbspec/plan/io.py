"""Plan <-> JSON. The file carries `plan_version` and a content hash that loading verifies."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cattrs

from dbspec.plan.model import PLAN_VERSION, Plan
from dbspec.util.atomic import write_text_atomic

_CONVERTER = cattrs.Converter(forbid_extra_keys=True)


class PlanFileError(Exception):
    """A plan file that cannot be used: unreadable, another version, or edited/corrupted."""


def plan_to_data(plan: Plan) -> dict:
    return _CONVERTER.unstructure(plan)


def _canonical(data: dict) -> str:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def plan_hash(plan: Plan) -> str:
    return "sha256:" + hashlib.sha256(_canonical(plan_to_data(plan)).encode()).hexdigest()


# Parts of a plan that describe the machine or the disk at compile time, not the training run: two plans
# that differ only here train identically, so a run may resume under either.
_VOLATILE = {
    "target": ("free_disk_bytes", "memory_bytes", "description"),
    "cache": ("latent_hits", "latent_misses", "text_hits", "text_misses", "notes"),
}
_VOLATILE_TOP = ("memory", "warnings", "origins", "dbspec_version")


def run_hash(plan: Plan) -> str:
    """Identity of what a plan trains (for resume and output-folder checks); see _VOLATILE."""
    data = plan_to_data(plan)
    for key in _VOLATILE_TOP:
        data.pop(key)
    for table, keys in _VOLATILE.items():
        for key in keys:
            data[table].pop(key)
    return "sha256:" + hashlib.sha256(_canonical(data).encode()).hexdigest()


def plan_to_json(plan: Plan) -> str:
    data = plan_to_data(plan)
    digest = "sha256:" + hashlib.sha256(_canonical(data).encode()).hexdigest()
    return json.dumps({**data, "plan_hash": digest}, indent=1, ensure_ascii=False) + "\n"


def write_plan(plan: Plan, path: Path) -> None:
    write_text_atomic(path, plan_to_json(plan))


def plan_from_json(text: str, source: str = "plan") -> Plan:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanFileError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("plan_version") != PLAN_VERSION:  # noqa: SIM401 - file data, not config
        version = data.get("plan_version") if isinstance(data, dict) else None
        raise PlanFileError(f"{source} has plan_version {version!r}; this dbspec reads {PLAN_VERSION}: "
                            "compile the spec again with `dbspec plan`")
    stated = data.pop("plan_hash", None)
    actual = "sha256:" + hashlib.sha256(_canonical(data).encode()).hexdigest()
    if stated != actual:
        raise PlanFileError(f"{source} was edited or corrupted (hash mismatch): compile the spec again")
    try:
        return _CONVERTER.structure(data, Plan)
    except Exception as exc:  # noqa: BLE001 - any structuring failure means an unusable file
        raise PlanFileError(f"{source} does not match the plan format: {exc}") from None


def read_plan(path: Path) -> Plan:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise PlanFileError(f"cannot read {path}: {exc.strerror or exc}") from None
    return plan_from_json(text, str(path))

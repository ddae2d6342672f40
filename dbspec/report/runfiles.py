"""What a report reads from a run folder: plan.json, metrics.jsonl, checkpoints/best.json and the
validation samples."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import attrs

from dbspec.plan.io import PlanFileError, read_plan
from dbspec.plan.model import Plan


class ReportError(Exception):
    """The folder is not a run dbspec can report on; the message names the folder and why."""


@attrs.frozen
class Best:
    step: int
    metric: str
    value: float


@attrs.frozen
class Run:
    out: Path
    plan: Plan
    rows: tuple[dict, ...]  # metrics.jsonl rows, in file order (each has an int "step")
    best: Best | None
    samples: tuple[tuple[int, Path], ...]  # (training step, its validation folder), by step
    notes: tuple[str, ...]  # what could not be read (shown in the report)


def read_run(out: Path) -> Run:
    out = out.expanduser()
    if not out.is_dir():
        raise ReportError(f"{out} is not a folder: give the output folder of a run (its output.dir)")
    plan_file = out / "plan.json"
    if not plan_file.is_file():
        raise ReportError(
            f"{out} has no plan.json, so it is not a dbspec run folder (or the run has not started)"
        )
    try:
        plan = read_plan(plan_file)
    except PlanFileError as exc:
        raise ReportError(f"{out}: {exc}") from None
    notes: list[str] = []
    rows = _metric_rows(out / "metrics.jsonl", notes)
    return Run(
        out=out.resolve(),
        plan=plan,
        rows=rows,
        best=_best(out / "checkpoints" / "best.json", notes),
        samples=_samples(out / "samples"),
        notes=tuple(notes),
    )


def _metric_rows(path: Path, notes: list[str]) -> tuple[dict, ...]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        notes.append(f"{path.name} is missing: no metrics yet")
        return ()
    except (OSError, UnicodeDecodeError) as exc:
        notes.append(f"{path.name} cannot be read: {exc}")
        return ()
    rows, bad = [], 0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and type(row.get("step")) is int:  # noqa: SIM401 - file data, not config
            rows.append(row)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} line(s) skipped (not a JSON row with an integer step)")
    return tuple(rows)


def _best(path: Path, notes: list[str]) -> Best | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        best = Best(step=int(data["step"]), metric=str(data["metric"]), value=float(data["value"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        notes.append(
            f"checkpoints/best.json cannot be read ({type(exc).__name__}: {exc}); no best step marked"
        )
        return None
    return best if math.isfinite(best.value) else attrs.evolve(best, value=float("nan"))


def _samples(folder: Path) -> tuple[tuple[int, Path], ...]:
    found = []
    for path in folder.glob("step-*") if folder.is_dir() else ():
        match = re.fullmatch(r"step-(\d+)", path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return tuple(sorted(found))


def numeric_series(rows: tuple[dict, ...]) -> dict[str, list[tuple[int, float]]]:
    """Every numeric key over steps: scalars under their key, lists of numbers as `key[i]` per position.
    Rows with only some keys add points to those keys only."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        for key, value in row.items():
            if key == "step":
                continue
            for name, number in _numbers(key, value):
                series.setdefault(name, []).append((row["step"], number))
    return series


def _numbers(key: str, value) -> list[tuple[str, float]]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [(key, float(value))] if math.isfinite(value) else []
    if isinstance(value, list):
        return [
            (f"{key}[{i}]", float(item))
            for i, item in enumerate(value)
            if isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item)
        ]
    return []

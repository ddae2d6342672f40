"""Plans of an older plan_version, kept as they were written (tests/golden/legacy/NAME.plan-vN.json,
normalised like the snapshots in plan/): reading one is refused with "compile the spec again", and a run saved
under it still resumes, because `legacy_run_data` of today's plan of the same spec equals its run data.

If a later change of the plans makes `test_old_runs_keep_their_run_identity` fail, runs saved under that
version can no longer resume anyway: drop its LEGACY_RUN_NAMES entry (dbspec/plan/io.py) and its fixture here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dbspec.plan.io import (
    LEGACY_RUN_NAMES,
    PlanFileError,
    _run_data,
    legacy_run_data,
    plan_from_json,
    plan_to_data,
)
from dbspec.plan.model import PLAN_VERSION
from tests.golden.test_plan_golden import Compiled, normalised

LEGACY = Path(__file__).parent / "legacy"
FIXTURES = sorted(LEGACY.glob("*.plan-v*.json"))


def _case(path: Path) -> tuple[str, int]:
    name, _, version = path.name.removesuffix(".json").rpartition(".plan-v")
    return name, int(version)


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Compiled:
    return Compiled(tmp_path_factory)


def test_there_is_a_fixture_per_legacy_version() -> None:
    assert {_case(p)[1] for p in FIXTURES} == set(LEGACY_RUN_NAMES)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_an_old_plan_file_is_refused_with_what_to_do(path: Path) -> None:
    _, version = _case(path)
    with pytest.raises(
        PlanFileError, match=f"plan_version {version}; this dbspec reads {PLAN_VERSION}.*dbspec plan"
    ):
        plan_from_json(path.read_text(encoding="utf-8"), path.name)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_old_runs_keep_their_run_identity(path: Path, compiled: Compiled) -> None:
    name, version = _case(path)
    plan, tmp = compiled(name)
    today = json.loads(normalised(json.dumps(plan_to_data(plan), ensure_ascii=False), tmp))
    then = json.loads(path.read_text(encoding="utf-8"))
    assert _run_data(today) != _run_data(then)  # the names differ...
    assert legacy_run_data(today, version) == _run_data(then)  # ...and map back exactly

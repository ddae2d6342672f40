"""LoHa / LoKr rank dropout's rescale (LyCORIS `rank_dropout_scale`): what the compiler settles, what the
summary shows, what a plan file may hold, and the run hash a run saved before the option had."""

from __future__ import annotations

import attrs
import pytest

from dbspec.plan.io import legacy_run_data, plan_from_json, plan_to_data, plan_to_json
from dbspec.plan.summary import adapter_rows
from dbspec.plan.validate import plan_problems
from tests.unit.hubspecs import SD15, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture


def _plan(tmp_path, adapter: str):
    planned = plan_hub_spec(tmp_path, f"[adapter]\n{adapter}\n[optimizer]\nlr = 1e-4\n", SD15)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


@pytest.mark.parametrize(
    ("adapter", "scale", "shown"),
    [
        ('kind = "loha"\nrank_dropout = 0.2', False, "rank 0.2, module 0"),
        (
            'kind = "loha"\nrank_dropout = 0.2\nrank_dropout_scale = true',
            True,
            "rank 0.2, kept rows rescaled",
        ),
        (
            'kind = "lokr"\nrank_dropout = 0.1\nrank_dropout_scale = true',
            True,
            "rank 0.1, kept rows rescaled",
        ),
        ('kind = "lokr"\nrank_dropout_scale = true', False, None),  # no rank dropout: nothing to rescale
    ],
)
def test_plan_settles_the_rescale_and_shows_it(tmp_path, adapter, scale, shown):
    plan = _plan(tmp_path, adapter)
    assert plan.adapter.rank_dropout_scale is scale
    rows = dict(adapter_rows(plan.adapter))
    if shown:
        assert shown in rows["  dropout"]
    else:
        assert "  dropout" not in rows
    assert plan_from_json(plan_to_json(plan)).adapter == plan.adapter
    assert not plan_problems(plan)


def test_a_plan_file_rescaling_what_has_no_rank_dropout_is_refused(tmp_path):
    plan = _plan(tmp_path, 'kind = "lora"')
    broken = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, rank_dropout_scale=True))
    assert any("rank_dropout_scale" in p for p in plan_problems(broken))
    loha = _plan(tmp_path, 'kind = "loha"\nrank_dropout = 0.5\nrank_dropout_scale = true')
    assert not plan_problems(loha)
    everything = attrs.evolve(loha, adapter=attrs.evolve(loha.adapter, rank_dropout=1.0))
    assert any("below 1" in p for p in plan_problems(everything))


@pytest.mark.parametrize(
    ("adapter", "old_scale"),
    [
        ('kind = "loha"\nrank_dropout = 0.2', True),  # peft's LoHa rescaled the kept rows
        ('kind = "lokr"\nrank_dropout = 0.2', False),  # peft's LoKr did not
        ('kind = "loha"', False),  # no rank dropout: the flag never acted
    ],
)
def test_runs_saved_before_keep_their_hash_only_with_the_old_rule(tmp_path, adapter, old_scale):
    """A plan with the rule the run trained by before the option hashes as that run (no field then); the
    other rule is another run, whose old checkpoint is refused."""
    plan = _plan(tmp_path, adapter)
    for scale in (False, True):
        if scale and not plan.adapter.rank_dropout:
            continue
        evolved = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, rank_dropout_scale=scale))
        legacy = legacy_run_data(plan_to_data(evolved), 3)
        assert ("rank_dropout_scale" not in legacy["adapter"]) == (scale == old_scale)

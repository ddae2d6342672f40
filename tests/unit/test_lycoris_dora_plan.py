"""The plan of LyCORIS's weight decomposition (DoRA on LoHa/LoKr, per input column, with LoCon's Tucker
form or `dora_form = "lycoris"`): what the compiler settles, what the summary shows and what a plan file may
hold."""

from __future__ import annotations

import attrs
import pytest

from dbspec.plan.io import plan_from_json, plan_to_json
from dbspec.plan.summary import adapter_rows
from dbspec.plan.validate import plan_problems
from tests.unit.hubspecs import SD15, empty_hub_cache, plan_hub_spec  # noqa: F401 - the fixture


def _plan(tmp_path, adapter: str):
    planned = plan_hub_spec(tmp_path, f"[adapter]\n{adapter}\n[optimizer]\nlr = 1e-4\n", SD15)
    assert planned.plan is not None, [d.message for d in planned.diagnostics]
    return planned.plan


@pytest.mark.parametrize(
    ("adapter", "form", "axis", "shown"),
    [
        ('kind = "lora"\ndora = true', "peft", "output", "lora + DoRA rank"),
        ('kind = "lora"\ndora = true\ndora_form = "lycoris"', "lycoris", "output", "output row"),
        ('kind = "lora"\ndora = true\ndora_axis = "input"', "lycoris", "input", "input column"),
        ('kind = "lora"\ndora = true\nconv_rank = 4\ntucker = true', "lycoris", "output", "output row"),
        ('kind = "loha"\ndora = true', "lycoris", "output", "loha + DoRA (LyCORIS's"),
        ('kind = "lokr"\ndora = true\ndora_axis = "input"', "lycoris", "input", "input column"),
        ('kind = "lokr"', "peft", "output", "lokr (factor"),
    ],
)
def test_plan_settles_whose_dora_trains_and_shows_it(tmp_path, adapter, form, axis, shown):
    plan = _plan(tmp_path, adapter)
    a = plan.adapter
    assert (a.dora_form, a.dora_axis) == (form, axis)
    assert shown in adapter_rows(a)[0][1]
    assert plan_from_json(plan_to_json(plan)).adapter == a
    assert not plan_problems(plan)


def test_a_plan_file_asking_peft_for_what_it_cannot_train_is_refused(tmp_path):
    plan = _plan(tmp_path, 'kind = "loha"\ndora = true')
    broken = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, dora_form="peft"))
    assert any("dora_form" in p for p in plan_problems(broken))

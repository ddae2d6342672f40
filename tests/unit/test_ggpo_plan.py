"""adapter.ggpo in the compiler (no torch): the plan's GGPO shares on Flux, none when off, the summary line,
the plan round trip, and DBS396 on a family kohya's LoRA-GGPO does not cover (resolved at plan time)."""

from __future__ import annotations

from pathlib import Path

import attrs
import pytest
from test_compile import codes, compile_in, image, planned_ok, write_spec

from dbspec.families import family_spec
from dbspec.plan.io import plan_from_json, plan_to_json
import io

from rich.console import Console

from dbspec.plan.summary import render_summary
from dbspec.plan.validate import plan_problems

FLUX = {"base": "builtin:tiny-flux"}
KOHYA = list(family_spec("flux").kohya_lora_targets)


def summarize(plan) -> str:
    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    return console.file.getvalue()


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def test_ggpo_plans_both_shares_on_flux(toy: Path):
    adapter = {"kind": "lora", "fused_projections": True, "denoiser_targets": KOHYA, "ggpo": True}
    write_spec(toy, model=FLUX, adapter={**adapter, "ggpo_beta": 0.02})
    plan = planned_ok(toy)
    assert (plan.adapter.ggpo_sigma, plan.adapter.ggpo_beta) == (0.03, 0.02)
    assert plan_from_json(plan_to_json(plan)).adapter == plan.adapter
    assert "sigma 0.03, beta 0.02: a normal weight perturbation per fused layer" in summarize(plan)
    assert not plan_problems(plan)
    half = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, ggpo_beta=None))  # a hand-edited plan file
    assert any("set together" in p for p in plan_problems(half))
    dora = attrs.evolve(plan, adapter=attrs.evolve(plan.adapter, dora=True))
    assert any("plain-LoRA GGPO" in p for p in plan_problems(dora))
    write_spec(toy, model=FLUX, adapter={**adapter, "ggpo": False})
    off = planned_ok(toy)
    assert (off.adapter.ggpo_sigma, off.adapter.ggpo_beta) == (None, None)
    assert "GGPO" not in summarize(off)


def test_ggpo_on_another_family_is_refused_at_plan_time(toy: Path):
    write_spec(toy, model={"base": "builtin:tiny-sd1"}, adapter={"kind": "lora", "ggpo": True})
    planned = compile_in(toy)
    assert "DBS396" in codes(planned, "error")
    assert "'sd1'" in next(d.message for d in planned.diagnostics if d.code == "DBS396")

"""loss.flow_draw and flow_prediction "preconditioned" (kohya's Flux and SD3 draws and SD3 loss) in the
compiler (no torch): settled in the plan, shown in its summary and formula, refused where they contradict, and
hashed as before where they keep the old behaviour (LEGACY_ADDED_FIELDS)."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_compile import codes, compile_in, image, planned_ok, write_spec
from test_flux_kohya_plan import _summary

from dbspec.plan.io import legacy_run_data, plan_to_data

FLUX = {"base": "builtin:tiny-flux"}
SD3 = {"base": "builtin:tiny-sd3"}


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def test_the_draw_is_settled_and_shown(toy: Path):
    write_spec(toy, model=FLUX, loss={"flow_draw": "continuous", "flow_shift": 3.1582})
    plan = planned_ok(toy)
    assert (plan.loss.flow.draw, plan.loss.flow.shift) == ("continuous", 3.1582)
    assert "shift 3.1582, continuous σ = shift(1 − u)" in _summary(plan)
    write_spec(toy, model=FLUX, loss={"flow_dynamic_shift": True})  # Flux's time shift draws continuously
    assert planned_ok(toy).loss.flow.draw == "continuous"
    write_spec(toy, model=FLUX)
    assert planned_ok(toy).loss.flow.draw == "table"


def test_the_floored_draw_reads_the_timestep_bounds_and_the_preconditioned_loss_is_shown(toy: Path):
    loss = {
        "flow_draw": "floored",
        "flow_shift": 3.0,
        "flow_prediction": "preconditioned",
        "flow_weighting": "cosmap",
        "min_timestep": 100,
        "max_timestep": 900,
    }
    write_spec(toy, model=SD3, loss=loss)
    plan = planned_ok(toy)
    assert (plan.loss.flow.draw, plan.loss.flow.prediction) == ("floored", "preconditioned")
    assert (plan.loss.noise.min_timestep, plan.loss.noise.max_timestep) == (100, 900)
    assert "mean_inst[ cosmap(σ)·mse(x_t − σ·u\u0302, x₀) ]" in plan.loss.formula
    assert "t = floor(shift(u)·(900 − 100) + 100), σ = t/1000 rising with u" in _summary(plan)


def test_contradicting_draws_are_refused(toy: Path):
    write_spec(toy, model=FLUX, loss={"flow_dynamic_shift": True, "flow_draw": "floored"})
    assert "DBS239" in codes(compile_in(toy), "error")
    write_spec(toy, model=SD3, loss={"flow_draw": "floored", "flow_weighting": "sigma_sqrt"})
    assert "DBS236" in codes(compile_in(toy), "error")  # σ = 0 at timestep 0: an infinite weight
    write_spec(toy, model=SD3, loss={"flow_draw": "continuous", "min_timestep": 100})
    assert "DBS230" in codes(compile_in(toy), "error")  # only the floored draw has timestep bounds


def test_plans_that_draw_as_before_hash_as_before(toy: Path):
    """A plan whose draw is what older versions did (table, or continuous with Flux's time shift) has the old
    run data without the field; the new draws keep it (an old checkpoint is refused)."""
    for model, loss, kept in (
        (FLUX, {}, False),
        (FLUX, {"flow_dynamic_shift": True}, False),
        (FLUX, {"flow_draw": "continuous"}, True),
        (SD3, {"flow_draw": "floored"}, True),
    ):
        write_spec(toy, model=model, loss=loss)
        old = legacy_run_data(plan_to_data(planned_ok(toy)), 3)
        assert ("draw" in old["loss"]["flow"]) == kept, loss

"""The plan's loss and noise decisions (compiler/losses.py): settled values, the prediction checks that need
the detected model, and what `dbspec plan`'s summary shows."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console
import pytest
from test_compile import (
    codes,
    compile_in,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    image,
    planned_ok,
    write_spec,
)

from dbspec.plan.summary import training_table


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    image(tmp_path / "inst" / "a.png", (64, 64))
    return tmp_path


def _summary(plan) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(training_table(plan))
    return out.getvalue()


def test_switched_off_options_are_settled_off_in_the_plan(toy: Path):
    write_spec(
        toy,
        loss={
            "noise_offset_random_strength": True,
            "multires_noise_discount": 0.5,
            "ip_noise_gamma_random_strength": True,
            "huber_c": 0.3,
        },
    )
    loss = planned_ok(toy).loss
    n = loss.noise
    assert (n.offset, n.offset_random_strength, n.multires_iterations, n.multires_discount) == (
        0.0,
        False,
        0,
        0.0,
    )
    assert (n.ip_gamma, n.ip_random_strength) == (0.0, False)
    assert loss.huber is None and loss.prior_reduction == "separate"


def test_every_option_reaches_the_plan_and_its_summary(toy: Path):
    write_spec(
        toy,
        loss={
            "kind": "pseudo_huber",
            "huber_schedule": "exponential",
            "huber_c": 0.2,
            "huber_scale": 1.5,
            "noise_offset": 0.05,
            "noise_offset_random_strength": True,
            "adaptive_noise_scale": 0.3,
            "multires_noise_iterations": 6,
            "ip_noise_gamma": 0.1,
            "ip_noise_gamma_random_strength": True,
            "min_timestep": 100,
            "max_timestep": 900,
            "debiased_estimation": True,
            "v_pred_like_loss": 0.2,
            "min_snr_gamma": 5.0,
        },
    )
    plan = planned_ok(toy)
    loss = plan.loss
    assert (loss.huber.schedule, loss.huber.c, loss.huber.scale) == ("exponential", 0.2, 1.5)
    assert (loss.noise.adaptive_scale, loss.noise.multires_discount) == (0.3, 0.3)
    assert loss.debiased_estimation and loss.v_pred_like_loss == 0.2
    text = _summary(plan)
    assert "minsnr5(t)·(1+0.2(snr+1)/snr)·debiased(t)·pseudo_huber{exponential c=0.2×1.5}(ε̂, ε)" in text
    assert (
        "N(0,1) + 0.05 offset (random strength, adaptive 0.3), multires 6×0.3; input perturbation 0.1 "
        "(random strength); t in [100, 900)" in text
    )


def test_a_detected_prediction_is_checked_at_plan_time(toy: Path):
    write_spec(toy, loss={"scale_v_pred_loss_like_noise_pred": True})  # builtin:tiny-sd1 predicts epsilon
    planned = compile_in(toy)
    assert planned.plan is None and "DBS235" in codes(planned, "error")
    write_spec(toy, model={"base": "builtin:tiny-sd2"}, loss={"v_pred_like_loss": 0.1})  # v_prediction
    planned = compile_in(toy)
    assert planned.plan is None and "DBS235" in codes(planned, "error")
    write_spec(toy, model={"base": "builtin:tiny-sd2"}, loss={"scale_v_pred_loss_like_noise_pred": True})
    assert planned_ok(toy).loss.scale_v_like_epsilon


def test_one_timestep_when_min_equals_max(toy: Path):
    write_spec(toy, loss={"min_timestep": 500, "max_timestep": 500})
    plan = planned_ok(toy)
    assert "t = 500" in _summary(plan)


# --- scheduled sampling (rollout) ---------------------------------------------------------------------------
def test_scheduled_sampling_is_settled_in_the_plan_with_its_ramp_and_cost(toy: Path):
    write_spec(toy, scheduled_sampling={"max_step_offset": 8, "probability": 0.5, "ramp_steps": 4})
    r = planned_ok(toy).loss.rollout
    assert r is not None and (r.max_step_offset, r.probability, r.ramp_steps, r.sampler) == (
        8,
        0.5,
        4,
        "unipc",
    )
    assert r.extra_forwards == 0.5 * 8 / 2  # uniform offsets 0..8 average 4, half the samples
    assert [r.probability_at(step) for step in (0, 2, 4, 9)] == [0.0, 0.25, 0.5, 0.5]
    shown = _summary(planned_ok(toy))
    assert (
        "scheduled sampling: unipc, up to 8 timesteps back, probability ramps 0 -> 0.5 over steps 0-4"
        in shown
    )
    assert "~2 extra no-grad denoiser forwards per sample" in shown


@pytest.mark.parametrize("off", [{"max_step_offset": 0}, {"max_step_offset": 5, "probability": 0.0}])
def test_scheduled_sampling_off_is_no_rollout(toy: Path, off):
    write_spec(toy, scheduled_sampling=off)
    plan = planned_ok(toy)
    assert plan.loss.rollout is None and "rollout" not in _summary(plan)


def test_mask_mean_is_settled_and_shown_in_the_formula(toy: Path):
    """kohya's masked loss (loss.mask_mean = "image") writes the image mean in the loss formula, per-sample
    prior form included; without masks the option settles to the default and DBS243 says it does nothing."""
    image(toy / "inst" / "a.png", (64, 64), mode="RGBA")
    image(toy / "cls" / "b.png", (64, 64))
    instance = {"path": "inst", "mask_from_alpha": True}
    klass = {"name": "cls", "path": "cls", "role": "class", "prompt": "a photo of a toy"}
    write_spec(toy, instance, klass, loss={"mask_mean": "image", "prior_reduction": "per_sample"})
    plan = planned_ok(toy)
    assert plan.loss.masked and plan.loss.mask_mean == "image"
    assert plan.loss.formula.startswith("L = mean_batch[ w_i·mse(ε̂, ε)·mask (image mean) ], w_i = ")
    assert "mask (image mean)" in _summary(plan)
    write_spec(toy, instance, klass, loss={"mask_mean": "mask"})
    assert planned_ok(toy).loss.formula.count("·mask/area") == 2
    write_spec(toy, loss={"mask_mean": "image"})
    planned = compile_in(toy)
    assert planned.plan.loss.mask_mean == "mask" and "mask" not in planned.plan.loss.formula
    assert codes(planned) == ["DBS243"]

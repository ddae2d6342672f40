"""kohya's noise and loss options: dbspec's functions against kohya-ss sd-scripts' own functions.

The expected tensors were made by running kohya's code (commit and functions: kohya_reference/README.md) on
the fixed inputs stored next to them; nothing here restates kohya's formulas. The random draws (offset
strength, multi-resolution levels, timesteps, input perturbation) were routed to a torch.Generator in kohya's
call order, so dbspec's draw order is checked too.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler
from safetensors import safe_open
from safetensors.torch import load_file

from dbspec.plan.model import NoisePlan
from dbspec.runtime import losses
from dbspec.runtime.step import draw_noise

REFERENCE = Path(__file__).parent / "kohya_reference" / "kohya_noise_loss.safetensors"
KOHYA = load_file(REFERENCE)
PRIOR_WEIGHT = 0.3
TOL = {"atol": 1e-6, "rtol": 1e-5}


def sd_scheduler() -> DDPMScheduler:
    return DDPMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
    )


def noise_plan(**kw) -> NoisePlan:
    off = dict(
        offset=0.0,
        offset_random_strength=False,
        adaptive_scale=0.0,
        multires_iterations=0,
        multires_discount=0.0,
        ip_gamma=0.0,
        ip_random_strength=False,
        min_timestep=0,
        max_timestep=1000,
    )
    return NoisePlan(**{**off, **kw})


# case name -> (seed index, dbspec's plan of kohya's arguments in make_reference.py)
NOISE_CASES = {
    "all": (
        0,
        noise_plan(
            offset=0.1,
            offset_random_strength=True,
            adaptive_scale=0.5,
            multires_iterations=6,
            multires_discount=0.3,
            min_timestep=100,
            max_timestep=900,
            ip_gamma=0.1,
            ip_random_strength=True,
        ),
    ),
    "fixed": (
        1,
        noise_plan(offset=0.05, adaptive_scale=-0.2, ip_gamma=0.1, min_timestep=500, max_timestep=500),
    ),
    "multires": (2, noise_plan(multires_iterations=10, multires_discount=0.8, max_timestep=300)),
    "off": (3, noise_plan()),
}


def test_reference_names_its_kohya_commit():
    with safe_open(REFERENCE, "pt") as f:
        assert f.metadata()["source"] == "kohya-ss/sd-scripts 48d368fa557731ad0488c07304dfeba8c07910eb"
        assert float(f.metadata()["prior_loss_weight"]) == PRIOR_WEIGHT


@pytest.mark.parametrize("case", NOISE_CASES)
def test_noise_and_timesteps_equal_kohyas_draws(case):
    index, plan = NOISE_CASES[case]
    latents = KOHYA["latents"]
    generator = torch.Generator().manual_seed(100 + index)
    noise, noised_with, timesteps = draw_noise(plan, latents, generator, 1000)
    assert torch.equal(timesteps, KOHYA[f"noise.{case}.timesteps"])
    torch.testing.assert_close(noise, KOHYA[f"noise.{case}.noise"], **TOL)
    noisy = sd_scheduler().add_noise(latents, noised_with, timesteps)
    torch.testing.assert_close(noisy, KOHYA[f"noise.{case}.noisy"], **TOL)


def test_input_perturbation_noises_the_latents_but_not_the_target():
    latents = KOHYA["latents"]
    noise, noised_with, _ = draw_noise(
        noise_plan(ip_gamma=0.1), latents, torch.Generator().manual_seed(0), 1000
    )
    plain, same, _ = draw_noise(noise_plan(), latents, torch.Generator().manual_seed(0), 1000)
    assert torch.equal(noise, plain) and torch.equal(same, plain)  # the target's noise is the plain draw
    assert not torch.equal(noised_with, noise)
    assert 0.05 < (noised_with - noise).std() < 0.15


def test_a_timestep_beyond_the_schedule_is_refused():
    with pytest.raises(ValueError, match="max_timestep 1000 is beyond the scheduler's 500 timesteps"):
        draw_noise(noise_plan(), KOHYA["latents"], torch.Generator(), 500)


# case name -> (dbspec loss kind, huber (schedule, c, scale) or None, prediction, timestep weight options)
LOSS_CASES = {
    "l2.eps.minsnr": ("mse", None, "epsilon", dict(min_snr_gamma=5.0)),
    "l1.eps.debiased": ("l1", None, "epsilon", dict(debiased_estimation=True)),
    "huber_snr.eps.vlike": (
        "pseudo_huber",
        ("snr", 0.1, 1.0),
        "epsilon",
        dict(v_pred_like_loss=0.2, debiased_estimation=True),
    ),
    "huber_exp.v.scale": (
        "pseudo_huber",
        ("exponential", 0.2, 1.5),
        "v_prediction",
        dict(scale_v_like_epsilon=True, min_snr_gamma=5.0),
    ),
    "smooth_const.v.debiased": (
        "smooth_l1",
        ("constant", 0.3, 2.0),
        "v_prediction",
        dict(debiased_estimation=True),
    ),
    "smooth_snr.eps.all": (
        "smooth_l1",
        ("snr", 0.05, 1.0),
        "epsilon",
        dict(min_snr_gamma=1.0, v_pred_like_loss=0.5, debiased_estimation=True),
    ),
}


@pytest.mark.parametrize("case", LOSS_CASES)
def test_loss_kind_huber_schedule_weights_and_prior_reduction_equal_kohyas(case):
    kind, huber, prediction, weight_options = LOSS_CASES[case]
    timesteps, alphas = KOHYA["timesteps"], sd_scheduler().alphas_cumprod
    huber_c = losses.huber_threshold(*huber, timesteps, alphas) if huber else None
    if huber:
        torch.testing.assert_close(huber_c, KOHYA[f"loss.{case}.huber_c"], **TOL)
    elementwise = losses.elementwise_loss(KOHYA["pred"], KOHYA["target"], kind, 0.1, huber_c)
    per_sample = losses.per_sample_loss(elementwise, None)
    weights = losses.timestep_weights(alphas, timesteps, prediction, **weight_options)
    is_prior = KOHYA["is_reg"] > 0
    total, terms = losses.combine_per_sample(per_sample, is_prior, weights, PRIOR_WEIGHT)
    prior_weights = torch.where(is_prior, PRIOR_WEIGHT, 1.0)
    torch.testing.assert_close(per_sample * weights * prior_weights, KOHYA[f"loss.{case}.per_sample"], **TOL)
    torch.testing.assert_close(total.reshape(1), KOHYA[f"loss.{case}.total"], **TOL)
    assert set(terms) == {"instance", "prior"}


def test_separate_reduction_keeps_the_instance_and_class_means_apart():
    per_sample = torch.tensor([1.0, 2.0, 3.0, 4.0])
    is_prior = torch.tensor([False, True, False, True])
    weights = torch.tensor([0.5, 0.5, 1.0, 1.0])
    separate, _ = losses.combine_terms(per_sample, is_prior, weights, 0.3)
    per_sample_total, _ = losses.combine_per_sample(per_sample, is_prior, weights, 0.3)
    assert separate.item() == pytest.approx((0.5 * 1 + 3) / 2 + 0.3 * (2 + 4) / 2)
    assert per_sample_total.item() == pytest.approx((0.5 * 1 + 0.3 * 0.5 * 2 + 3 + 0.3 * 4) / 4)


def test_every_option_off_draws_and_weighs_like_before():
    """Off means off: no extra draws (a plain run's generator stream) and weights of exactly one."""
    latents = KOHYA["latents"]
    noise, noised_with, t = draw_noise(noise_plan(), latents, torch.Generator().manual_seed(5), 1000)
    gen = torch.Generator().manual_seed(5)
    assert torch.equal(noise, torch.randn(latents.shape, generator=gen)) and noised_with is noise
    assert torch.equal(t, torch.randint(0, 1000, (len(latents),), generator=gen))
    ones = losses.timestep_weights(sd_scheduler().alphas_cumprod, t, "epsilon")
    assert torch.equal(ones, torch.ones(len(latents)))

"""kohya's flow-matching draws and SD3 loss (loss.flow_draw continuous / floored, loss.flow_prediction
preconditioned) against kohya's formulas, restated here from library/flux_train_utils.py and
library/sd3_train_utils.py get_noisy_model_input_and_timesteps and sd3_train_network.py's loss; and tiny Flux
and SD3 runs with them that resume bit-exact."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dbspec.plan.model import FlowPlan
from dbspec.runtime import losses
from dbspec.runtime.execute import execute
from dbspec.runtime.families.flow import FlowMatchingObjective
from tests.runtime.runspec import final_weights, make_plan
from tests.runtime.test_kohya_noise_loss import noise_plan

SD3_CONFIG = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
FLUX_CONFIG = dict(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config)
OBJECTIVE = FlowMatchingObjective()


def _loss(draw: str, *, low: int = 0, high: int = 1000, **fields) -> SimpleNamespace:
    base = dict(timesteps="uniform", logit_mean=0.0, logit_std=0.0, mode_scale=0.0, weighting="none")
    flow = FlowPlan(**{"shift": 0.0, **base, **fields, "draw": draw})
    noise = noise_plan(min_timestep=low, max_timestep=high)
    return SimpleNamespace(flow=flow, noise=noise)


def _scheduler(loss, config=SD3_CONFIG):
    return OBJECTIVE.noise_scheduler(
        config, prediction="flow_matching", zero_terminal_snr=False, flow=loss.flow
    )


# --- kohya's formulas, restated -----------------------------------------------------------------------------
def kohya_density(scheme: str, batch: int, logit_mean: float, logit_std: float, mode_scale: float):
    """compute_density_for_timestep_sampling, on torch's global generator as kohya draws."""
    if scheme == "logit_normal":
        return torch.nn.functional.sigmoid(torch.normal(mean=logit_mean, std=logit_std, size=(batch,)))
    if scheme == "mode":
        v = torch.rand(size=(batch,))
        return 1 - v - mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    return torch.rand(size=(batch,))


def kohya_sd3_draw(u: torch.Tensor, shift: float, t_min, t_max, latents, noise):
    """sd3_train_utils: u shifted by training_shift, integer timesteps in [t_min, t_max), sigma = t / 1000."""
    t_min = t_min if t_min is not None else 0
    t_max = t_max if t_max is not None else 1000
    u = (u * shift) / (1 + (shift - 1) * u)
    timesteps = (u * (t_max - t_min) + t_min).long().to(dtype=torch.float32)
    sigmas = (timesteps / 1000).view(-1, 1, 1, 1)
    return sigmas * noise + (1.0 - sigmas) * latents, timesteps, sigmas


def kohya_flux_sigmas(sampling: str, r: torch.Tensor, sigmoid_scale: float, shift: float) -> torch.Tensor:
    """flux_train_utils' uniform / sigmoid / shift sigmas from kohya's random numbers `r` (rand or randn)."""
    if sampling == "uniform":
        return r
    sigmas = torch.sigmoid(sigmoid_scale * r)
    if sampling == "shift":
        sigmas = (sigmas * shift) / (1 + (shift - 1) * sigmas)
    return sigmas


def kohya_sd3_loss(model_pred, noisy, sigmas, latents, weighting_scheme: str) -> torch.Tensor:
    """sd3_train_network.py: x_t - sigma v compared with the latents (l2), times
    compute_loss_weighting_for_sd3, mean over all but the batch (train_network.py)."""
    model_pred = model_pred * (-sigmas) + noisy
    if weighting_scheme == "sigma_sqrt":
        weighting = (sigmas**-2.0).float()
    elif weighting_scheme == "cosmap":
        weighting = 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    else:
        weighting = torch.ones_like(sigmas)
    loss = torch.nn.functional.mse_loss(model_pred.float(), latents.float(), reduction="none") * weighting
    return loss.mean(dim=list(range(1, loss.ndim)))


# --- the draws ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("scheme", "params", "shift", "bounds"),
    [
        ("uniform", {}, 1.0, (None, None)),
        ("logit_normal", {"logit_mean": 0.4, "logit_std": 1.3}, 3.0, (None, None)),
        ("mode", {"mode_scale": 1.29}, 3.0, (100, 900)),
        ("uniform", {}, 0.5, (250, 250)),
        # min above max: kohya's expression draws from 800 down toward 200 (the bounds as given)
        ("logit_normal", {"logit_mean": 0.4, "logit_std": 1.3}, 3.0, (800, 200)),
    ],
)
def test_floored_draw_is_kohyas_sd3_draw(scheme, params, shift, bounds):
    """The same random numbers (the run's generator; kohya's global one, seeded alike) give kohya's integer
    timesteps, sigmas and noisy input bit for bit."""
    low, high = (0 if bounds[0] is None else bounds[0]), (1000 if bounds[1] is None else bounds[1])
    fields = {"logit_mean": 0.0, "logit_std": 0.0, "mode_scale": 0.0, **params}
    loss = _loss("floored", low=low, high=high, timesteps=scheme, shift=shift, **fields)
    scheduler = _scheduler(loss)
    timesteps = OBJECTIVE.sample_timesteps(loss, 256, torch.Generator().manual_seed(7), scheduler, (8, 8))
    torch.manual_seed(7)
    u = kohya_density(
        scheme, 256, params.get("logit_mean"), params.get("logit_std"), params.get("mode_scale")
    )
    latents = torch.randn(256, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(256, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    k_noisy, k_timesteps, k_sigmas = kohya_sd3_draw(u, shift, *bounds, latents, noise)
    assert torch.equal(timesteps, k_timesteps)
    assert torch.equal(OBJECTIVE.sigmas(scheduler, timesteps), k_sigmas.flatten())
    assert torch.equal(OBJECTIVE.add_noise(scheduler, latents, noise, timesteps), k_noisy)
    if bounds[0] == bounds[1] == 250:
        assert bool((timesteps == 250).all())
    elif low > high:  # (200, 800]: falling with u
        assert timesteps.min() > high and timesteps.max() <= low and len(timesteps.unique()) > 50
    else:
        assert timesteps.min() >= low and timesteps.max() < high and len(timesteps.unique()) > 50


def test_floored_draw_rises_with_u_and_the_model_shift_applies_at_0():
    """σ rises with u (kohya's direction); flow_shift 0 takes the model's shift (SD3: 3.0)."""
    loss = _loss("floored", shift=0.0)
    timesteps = OBJECTIVE.sample_timesteps(
        loss, 64, torch.Generator().manual_seed(3), _scheduler(loss), (8, 8)
    )
    u = torch.rand(64, generator=torch.Generator().manual_seed(3))
    assert torch.equal(timesteps, (3.0 * u / (1 + 2.0 * u) * 1000).long().float())


@pytest.mark.parametrize(("sampling", "shift"), [("uniform", 1.0), ("sigmoid", 1.0), ("shift", 3.1582)])
def test_continuous_draw_is_kohyas_flux_draw_at_the_mirrored_random_number(sampling, shift):
    """dbspec's σ is shift(1 − u) of its density: kohya's σ at the mirrored random number (1 − r for rand,
    −z for randn; kohya's sigmoid draw has no mean), so the same law; timesteps 1000 σ, continuous."""
    scale = 1.0 if sampling == "uniform" else 1.4
    scheme = "uniform" if sampling == "uniform" else "logit_normal"
    loss = _loss(
        "continuous", timesteps=scheme, logit_std=scale if scheme == "logit_normal" else 0.0, shift=shift
    )
    scheduler = _scheduler(loss, FLUX_CONFIG)
    timesteps = OBJECTIVE.sample_timesteps(loss, 128, torch.Generator().manual_seed(5), scheduler, (8, 8))
    generator = torch.Generator().manual_seed(5)
    if sampling == "uniform":
        r = 1 - torch.rand(128, generator=generator)
    else:
        r = -torch.normal(0.0, scale, size=(128,), generator=generator) / scale
    expected = kohya_flux_sigmas(sampling, r, scale, shift)
    sigmas = OBJECTIVE.sigmas(scheduler, timesteps)
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(
        timesteps, expected * 1000, rtol=1e-6, atol=1e-4
    )  # 1 − sigmoid(x) vs sigmoid(−x)
    assert len(timesteps.unique()) == 128  # continuous, not on a 1000-step table
    latents = torch.randn(128, 16, 8, 8, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(128, 16, 8, 8, generator=torch.Generator().manual_seed(2))
    s = sigmas.view(-1, 1, 1, 1)
    assert torch.equal(
        OBJECTIVE.add_noise(scheduler, latents, noise, timesteps), (1.0 - s) * latents + s * noise
    )


@pytest.mark.parametrize(("sampling", "shift"), [("uniform", 1.0), ("sigmoid", 1.0), ("shift", 3.1582)])
def test_continuous_draw_has_the_law_of_kohyas(sampling, shift):
    """Quantiles of 100k draws from dbspec's generator and from kohya's (its own random numbers) agree."""
    scale = 1.0 if sampling == "uniform" else 0.8
    scheme = "uniform" if sampling == "uniform" else "logit_normal"
    loss = _loss(
        "continuous", timesteps=scheme, logit_std=scale if scheme == "logit_normal" else 0.0, shift=shift
    )
    scheduler = _scheduler(loss, FLUX_CONFIG)
    ours = OBJECTIVE.sample_timesteps(loss, 100_000, torch.Generator().manual_seed(11), scheduler) / 1000
    torch.manual_seed(12)
    r = torch.rand(100_000) if sampling == "uniform" else torch.randn(100_000)
    theirs = kohya_flux_sigmas(sampling, r, scale, shift)
    q = torch.linspace(0.01, 0.99, 99)
    assert (torch.quantile(ours, q) - torch.quantile(theirs, q)).abs().max() < 0.01


# --- the SD3 loss -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("weighting", ["none", "cosmap", "sigma_sqrt"])
def test_preconditioned_loss_is_kohyas_sd3_loss(weighting):
    """x_t − σ v̂ against the latents, times the scheme's weight: kohya's loss per sample; which is
    σ² |v̂ − (ε − x₀)|² times that weight."""
    loss = _loss(
        "floored",
        low=1,
        timesteps="logit_normal",
        logit_std=1.0,
        shift=3.0,
        weighting=weighting,
        prediction="preconditioned",
    )
    scheduler = _scheduler(loss)
    generator = torch.Generator().manual_seed(21)
    latents, noise = (
        torch.randn(8, 16, 8, 8, generator=generator),
        torch.randn(8, 16, 8, 8, generator=generator),
    )
    pred = torch.randn(8, 16, 8, 8, generator=generator)
    timesteps = OBJECTIVE.sample_timesteps(loss, 8, generator, scheduler, (8, 8))
    noisy = OBJECTIVE.add_noise(scheduler, latents, noise, timesteps)
    output = OBJECTIVE.output(loss, scheduler, pred, noisy, timesteps)
    target = OBJECTIVE.target(scheduler, latents, noise, timesteps, "flow_matching", loss)
    per_sample = losses.per_sample_loss(
        losses.elementwise_loss(output, target, "mse", 0.0, None), None, "mask"
    )
    ours = per_sample * OBJECTIVE.weights(loss, scheduler, timesteps)
    sigmas = (timesteps / 1000).view(-1, 1, 1, 1)
    theirs = kohya_sd3_loss(pred, sigmas * noise + (1.0 - sigmas) * latents, sigmas, latents, weighting)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=0)
    velocity = ((pred - (noise - latents)) ** 2).mean(dim=(1, 2, 3))
    weight = OBJECTIVE.weights(loss, scheduler, timesteps)
    torch.testing.assert_close(ours, sigmas.flatten() ** 2 * velocity * weight, rtol=1e-4, atol=0)
    # the other predictions keep the velocity target
    raw = _loss("floored")
    assert torch.equal(
        OBJECTIVE.target(scheduler, latents, noise, timesteps, "flow_matching", raw), noise - latents
    )


# --- tiny runs ----------------------------------------------------------------------------------------------
def _trains_and_resumes(tmp_path: Path, base: str, extra: str):
    whole_plan = make_plan(tmp_path / "whole", base=base, steps=4, extra=extra)
    whole = execute(whole_plan)
    plan = make_plan(tmp_path / "parts", base=base, steps=4, extra=extra)
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    assert all(math.isfinite(x) for x in whole.losses)
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    return whole_plan, whole


def test_tiny_flux_trains_kohyas_continuous_shift_draw_and_resumes_bit_exact(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\n\n[loss]\nflow_draw = "continuous"\nflow_shift = 3.1582\n'
        'flow_prediction = "sigma_scaled"\n\n[checkpoints]\nevery = 2\n'
    )
    plan, whole = _trains_and_resumes(tmp_path, "builtin:tiny-flux", extra)
    assert (plan.loss.flow.draw, plan.loss.flow.shift, plan.loss.flow.max_shift) == (
        "continuous",
        3.1582,
        0.0,
    )
    table = execute(make_plan(tmp_path / "table", base="builtin:tiny-flux", steps=1,
                              extra=extra.replace('flow_draw = "continuous"\n', "")))  # fmt: skip
    assert table.losses[0] != whole.losses[0]  # the option reaches the draw


def test_tiny_sd3_trains_kohyas_floored_draw_and_preconditioned_loss_and_resumes_bit_exact(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\n\n[loss]\nflow_draw = "floored"\nflow_shift = 3.0\n'
        'flow_timesteps = "mode"\nflow_prediction = "preconditioned"\nflow_weighting = "cosmap"\n'
        "min_timestep = 100\nmax_timestep = 900\n\n[checkpoints]\nevery = 2\n"
    )
    plan, whole = _trains_and_resumes(tmp_path, "builtin:tiny-sd3", extra)
    flow = plan.loss.flow
    assert (flow.draw, flow.prediction, flow.weighting, flow.timesteps) == (
        "floored",
        "preconditioned",
        "cosmap",
        "mode",
    )
    assert (plan.loss.noise.min_timestep, plan.loss.noise.max_timestep) == (100, 900)
    assert "x_t − σ·u\u0302, x₀" in plan.loss.formula
    raw = execute(make_plan(tmp_path / "raw", base="builtin:tiny-sd3", steps=1,
                            extra=extra.replace('"preconditioned"', '"raw"')))  # fmt: skip
    assert raw.losses[0] != whole.losses[0]  # the option reaches the loss

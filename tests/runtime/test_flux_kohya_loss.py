"""kohya's Flux loss options (loss.flow_prediction, loss.flow_dynamic_shift) against kohya's formulas
(library/flux_train_utils.py apply_model_prediction_type, get_noisy_model_input_and_timesteps' flux_shift
branch with time_shift and get_lin_function), restated here from their definitions; and a tiny Flux run
with both that resumes bit-exact."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from safetensors.torch import load_file

from dbspec.plan.model import FlowPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.families.flow import FlowMatchingObjective
from tests.runtime.runspec import make_plan

FLUX_CONFIG = dict(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config)


def _loss(**fields) -> SimpleNamespace:
    base = dict(timesteps="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=0.0, weighting="none")
    base.update({"shift": 0.0, "base_shift": 0.5, "max_shift": 1.15, **fields})
    return SimpleNamespace(flow=FlowPlan(**base))


def _kohya_time_shift(sigmas: torch.Tensor, latent_h: int, latent_w: int) -> torch.Tensor:
    """kohya: mu = m x + b through (256, 0.5) and (4096, 1.15), x = (h // 2)(w // 2) packed tokens;
    sigma -> e^mu / (e^mu + (1 / sigma - 1) ** 1)."""
    m = (1.15 - 0.5) / (4096 - 256)
    mu = m * ((latent_h // 2) * (latent_w // 2)) + (0.5 - m * 256)
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1) ** 1.0)


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (16, 16)])
def test_dynamic_shift_draw_is_kohyas_flux_shift(size):
    """The draw: u = sigmoid(N(0, std)) from the run's generator, sigma = kohya's time shift of 1 - u at the
    batch's size (1 - u = sigmoid(-N): kohya's sigmoid(sigmoid_scale N(0, 1)) density), continuous."""
    objective = FlowMatchingObjective()
    loss = _loss(logit_std=1.3)
    scheduler = objective.noise_scheduler(FLUX_CONFIG, prediction="flow_matching", zero_terminal_snr=False,
                                          flow=loss.flow)  # fmt: skip
    timesteps = objective.sample_timesteps(loss, 64, torch.Generator().manual_seed(4), scheduler, size)
    u = torch.sigmoid(torch.normal(0.0, 1.3, size=(64,), generator=torch.Generator().manual_seed(4)))
    expected = _kohya_time_shift(1 - u, *size)
    sigmas = objective.sigmas(scheduler, timesteps)
    torch.testing.assert_close(sigmas, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(timesteps, expected * 1000, rtol=0, atol=1e-4)  # kohya: timesteps = 1000 sigma
    latents = torch.randn(64, 16, *size, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(64, 16, *size, generator=torch.Generator().manual_seed(2))
    s = expected.view(-1, 1, 1, 1)
    noisy = objective.add_noise(scheduler, latents, noise, timesteps)
    torch.testing.assert_close(noisy, (1.0 - s) * latents + s * noise, rtol=0, atol=1e-5)


def test_dynamic_shift_grows_with_the_image():
    objective = FlowMatchingObjective()
    loss = _loss()
    scheduler = objective.noise_scheduler(FLUX_CONFIG, prediction="flow_matching", zero_terminal_snr=False,
                                          flow=loss.flow)  # fmt: skip
    small = objective.sample_timesteps(loss, 32, torch.Generator().manual_seed(0), scheduler, (32, 32))
    large = objective.sample_timesteps(loss, 32, torch.Generator().manual_seed(0), scheduler, (128, 128))
    assert bool((large > small).all())  # the same u, a larger mu: noisier sigmas for larger images
    assert torch.allclose(scheduler.sigmas, torch.linspace(1, 1000, 1000).flip(0) / 1000)  # a plain table


@pytest.mark.parametrize("kind", ["raw", "sigma_scaled", "additive"])
def test_output_is_kohyas_model_prediction_type(kind):
    """raw: v; additive: v + x_t; sigma_scaled: v (-sigma) + x_t, sigma the step's."""
    objective = FlowMatchingObjective()
    loss = _loss(prediction=kind)
    scheduler = objective.noise_scheduler(FLUX_CONFIG, prediction="flow_matching", zero_terminal_snr=False,
                                          flow=loss.flow)  # fmt: skip
    generator = torch.Generator().manual_seed(9)
    pred, noisy = torch.randn(4, 16, 8, 8, generator=generator), torch.randn(4, 16, 8, 8, generator=generator)
    timesteps = objective.sample_timesteps(loss, 4, generator, scheduler, (8, 8))
    sigmas = objective.sigmas(scheduler, timesteps).view(-1, 1, 1, 1)
    expected = {"raw": pred, "additive": pred + noisy, "sigma_scaled": pred * (-sigmas) + noisy}[kind]
    assert torch.equal(objective.output(loss, scheduler, pred, noisy, timesteps), expected)


def test_tiny_flux_trains_with_kohyas_defaults_and_resumes_bit_exact(tmp_path):
    extra = (
        '[adapter]\nkind = "lora"\nrank = 4\n\n[loss]\nflow_prediction = "sigma_scaled"\n'
        'flow_dynamic_shift = true\nflow_weighting = "cosmap"\n\n[checkpoints]\nevery = 2\n'
    )
    whole_plan = make_plan(tmp_path / "whole", base="builtin:tiny-flux", steps=4, extra=extra)
    flow = whole_plan.loss.flow
    assert (flow.prediction, flow.base_shift, flow.max_shift, flow.shift) == ("sigma_scaled", 0.5, 1.15, 0.0)
    whole = execute(whole_plan)
    plan = make_plan(tmp_path / "parts", base="builtin:tiny-flux", steps=4, extra=extra)
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    b = load_file(str(Path(second.final) / "pytorch_lora_weights.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    raw = execute(make_plan(tmp_path / "raw", base="builtin:tiny-flux", steps=1, extra=extra.replace(
        'flow_prediction = "sigma_scaled"', 'flow_prediction = "raw"')))  # fmt: skip
    assert raw.losses[0] != whole.losses[0]  # the option reaches the loss

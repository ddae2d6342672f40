"""The flow-matching objective (runtime/families/flow.py) against diffusers' own reference functions:
training_utils.compute_density_for_timestep_sampling and compute_loss_weighting_for_sd3, the
FlowMatchEulerDiscreteScheduler's shifted sigma table and time shift, Flux's calculate_shift, and the
noisy input / target / sigma lookup of examples/dreambooth/train_dreambooth_lora_sd3.py."""

from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.flux.pipeline_flux import calculate_shift
from diffusers.training_utils import compute_density_for_timestep_sampling, compute_loss_weighting_for_sd3

from dbspec.plan.model import FlowPlan
from dbspec.runtime.families import flow
from dbspec.runtime.families.flow import FlowMatchingObjective

SCHEMES = [
    ("uniform", {}),
    ("logit_normal", {"logit_mean": 0.0, "logit_std": 1.0}),
    ("logit_normal", {"logit_mean": -0.5, "logit_std": 1.3}),
    ("mode", {"mode_scale": 1.29}),
    ("mode", {"mode_scale": 0.5}),
]


@pytest.mark.parametrize(("scheme", "params"), SCHEMES)
def test_density_is_diffusers(scheme, params):
    ours = flow.density(scheme, 64, torch.Generator().manual_seed(7), **params)
    theirs = compute_density_for_timestep_sampling(
        scheme, 64, device="cpu", generator=torch.Generator().manual_seed(7), **params
    )
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert ours.min() >= 0 and ours.max() < 1


@pytest.mark.parametrize("scheme", ["none", "sigma_sqrt", "cosmap"])
def test_loss_weighting_is_diffusers(scheme):
    sigmas = torch.linspace(0.02, 1.0, 50)
    theirs = compute_loss_weighting_for_sd3(scheme, sigmas[:, None, None, None]).flatten()
    assert torch.allclose(flow.loss_weighting(scheme, sigmas), theirs, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_fixed_shift_is_the_schedulers_table(shift):
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    plain = torch.linspace(1, 1000, 1000).flip(0) / 1000
    assert torch.allclose(flow.shifted(plain, shift), scheduler.sigmas, atol=1e-6)


@pytest.mark.parametrize("seq_len", [256, 1024, 4096, 9000])
def test_flux_shift_is_diffusers(seq_len):
    sigmas = torch.linspace(0.01, 1.0, 40)
    mu = calculate_shift(seq_len, 256, 4096, 0.5, 1.15)
    scheduler = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    assert flow.flux_mu(seq_len) == pytest.approx(mu, abs=1e-12)
    assert torch.allclose(flow.flux_shift(sigmas, seq_len), scheduler.time_shift(mu, 1.0, sigmas), atol=1e-6)


def _loss_plan(**flow_fields):
    from types import SimpleNamespace

    fields = dict(timesteps="logit_normal", logit_mean=0.0, logit_std=1.0, mode_scale=0.0, weighting="none")
    fields.update({"shift": 0.0, **flow_fields})
    return SimpleNamespace(flow=FlowPlan(**fields))


@pytest.mark.parametrize(
    ("scheme", "weighting"), [("logit_normal", "none"), ("mode", "cosmap"), ("uniform", "sigma_sqrt")]
)
def test_a_step_is_the_sd3_scripts(scheme, weighting):
    """Timesteps, sigmas, noisy input, target and weights as train_dreambooth_lora_sd3.py computes them."""
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    objective = FlowMatchingObjective()
    scheduler = objective.noise_scheduler(config, prediction="flow_matching", zero_terminal_snr=False)
    loss = _loss_plan(timesteps=scheme, weighting=weighting, mode_scale=1.29 if scheme == "mode" else 0.0)
    latents = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(6, 16, 4, 4, generator=torch.Generator().manual_seed(2))

    timesteps = objective.sample_timesteps(loss, 6, torch.Generator().manual_seed(3), scheduler)
    noisy = objective.add_noise(scheduler, latents, noise, timesteps)
    target = objective.target(scheduler, latents, noise, timesteps, "flow_matching")
    weights = objective.weights(loss, scheduler, timesteps)

    # the script's own lines, on diffusers' functions
    reference = FlowMatchEulerDiscreteScheduler.from_config(config)
    u = compute_density_for_timestep_sampling(
        scheme, 6, logit_mean=0.0, logit_std=1.0, mode_scale=1.29, generator=torch.Generator().manual_seed(3)
    )
    indices = (u * reference.config.num_train_timesteps).long()
    expected_t = reference.timesteps[indices]
    step_indices = [(reference.timesteps == t).nonzero().item() for t in expected_t]
    sigmas = reference.sigmas[step_indices].flatten()[:, None, None, None]
    assert torch.equal(timesteps, expected_t)
    assert torch.allclose(noisy, (1.0 - sigmas) * latents + sigmas * noise, atol=1e-6)
    assert torch.allclose(target, noise - latents, atol=1e-6)
    scheme_of_weights = {"none": "logit_normal"}.get(weighting, weighting)  # the script's shared argument
    expected_w = compute_loss_weighting_for_sd3(scheme_of_weights, sigmas).flatten()
    assert torch.allclose(weights, expected_w, atol=1e-6, rtol=1e-6)


def test_plan_shift_replaces_the_configs():
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config)
    objective = FlowMatchingObjective()
    flow_plan = _loss_plan(shift=1.0).flow
    scheduler = objective.noise_scheduler(
        config, prediction="flow_matching", zero_terminal_snr=False, flow=flow_plan
    )
    assert scheduler.config.shift == 1.0
    assert torch.allclose(scheduler.sigmas, torch.linspace(1, 1000, 1000).flip(0) / 1000, atol=1e-6)


def test_flux_config_trains_unshifted_unless_a_shift_is_given():
    config = dict(FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True).config)
    objective = FlowMatchingObjective()
    plain = torch.linspace(1, 1000, 1000).flip(0) / 1000
    scheduler = objective.noise_scheduler(config, prediction="flow_matching", zero_terminal_snr=False)
    assert torch.allclose(scheduler.sigmas, plain, atol=1e-6)  # what train_dreambooth_lora_flux.py trains on
    shifted = objective.noise_scheduler(
        config, prediction="flow_matching", zero_terminal_snr=False, flow=_loss_plan(shift=2.0).flow
    )
    assert torch.allclose(shifted.sigmas, flow.shifted(plain, 2.0), atol=1e-6)


def test_draws_come_from_the_runs_generator():
    """Same generator state, same timesteps: a resumed run (its generator state restored) draws the same."""
    objective = FlowMatchingObjective()
    scheduler = objective.noise_scheduler(
        dict(FlowMatchEulerDiscreteScheduler(shift=3.0).config),
        prediction="flow_matching",
        zero_terminal_snr=False,
    )
    generator = torch.Generator().manual_seed(11)
    state = generator.get_state()
    first = objective.sample_timesteps(_loss_plan(), 8, generator, scheduler)
    generator.set_state(state)
    again = objective.sample_timesteps(_loss_plan(), 8, generator, scheduler)
    assert torch.equal(first, again)

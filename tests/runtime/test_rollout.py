"""Scheduled sampling (runtime/rollout.py): the samplers against each other and diffusers, the derived loss
target against a hand computation, and real tiny runs (SD1 epsilon, SD2 v-prediction) that train, differ
from a plain run, and resume bit-identical."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, EulerDiscreteScheduler
from safetensors.torch import load_file

from dbspec.builtin import BUILTIN_MODELS
from dbspec.plan.model import RolloutPlan
from dbspec.runtime import rollout
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec


def ddpm(prediction: str) -> DDPMScheduler:
    config = dict(BUILTIN_MODELS["builtin:tiny-sd1"].scheduler)
    config.pop("_class_name")
    return DDPMScheduler.from_config(config, prediction_type=prediction)


def plan(sampler="ddim", k=4, probability=1.0, ramp=0) -> RolloutPlan:
    return RolloutPlan(
        max_step_offset=k, probability=probability, ramp_steps=ramp, sampler=sampler, extra_forwards=k / 2
    )


def fake_model(seed: int = 0):
    """A fixed smooth function of (x, t) standing in for the denoiser: the samplers only need its outputs."""
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed)) * 0.3

    def predict(i, x, t):
        return torch.einsum("oc,bchw->bohw", w, x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)

    return predict


def test_the_ramp_is_linear_from_zero():
    r = plan(probability=0.8, ramp=10)
    assert [r.probability_at(s) for s in (0, 5, 10, 20)] == [0.0, 0.4, 0.8, 0.8]
    assert plan(probability=0.5).probability_at(0) == 0.5


def test_offsets_are_drawn_from_the_generator_and_masked():
    g = torch.Generator().manual_seed(3)
    offsets = rollout.draw_offsets(plan(k=5, probability=1.0), 0, 64, g)
    assert offsets.min() >= 0 and offsets.max() <= 5 and len(set(offsets.tolist())) > 2
    none = rollout.draw_offsets(plan(k=5, probability=0.8, ramp=10), 0, 64, torch.Generator().manual_seed(3))
    assert none.eq(0).all()  # step 0 of a ramp: probability 0, yet the same draws were made
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    rollout.draw_offsets(plan(probability=0.1), 0, 8, g1)
    rollout.draw_offsets(plan(probability=0.9), 0, 8, g2)
    assert torch.equal(g1.get_state(), g2.get_state())


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_equals_euler_and_euler_equals_diffusers(prediction):
    sched = ddpm(prediction)
    path = [507, 506, 505, 504, 503]
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model = fake_model()
    out = {}
    for name in ("ddim", "euler"):
        sampler, y = rollout.SAMPLERS[name](sched, path), x.clone()
        for t, t_next in zip(path, path[1:]):
            y = sampler.step(model(0, y, torch.tensor([t])), t, t_next, y)
        out[name] = y
    assert torch.allclose(out["ddim"], out["euler"], atol=1e-5)
    # diffusers' Euler on the same timesteps: its sample is x / sqrt(abar); its last step (to 0) is not taken
    euler = EulerDiscreteScheduler.from_config(sched.config)
    euler.set_timesteps(timesteps=path)
    abar = sched.alphas_cumprod
    z = x / abar[path[0]].sqrt()
    for t in euler.timesteps[:-1]:
        pred = model(0, z * abar[int(t)].sqrt(), torch.tensor([int(t)]))
        z = euler.step(pred, t, z).prev_sample
    assert torch.allclose(z * abar[path[-1]].sqrt(), out["euler"], atol=1e-5)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_unipc_takes_ddims_first_step_and_differs_after(prediction):
    sched = ddpm(prediction)
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    model = fake_model()

    def run(name, path):
        sampler, y = rollout.SAMPLERS[name](sched, path), x.clone()
        for t, t_next in zip(path, path[1:]):
            y = sampler.step(model(0, y, torch.tensor([t])), t, t_next, y)
        return y

    one = [600, 599]
    assert torch.allclose(run("unipc", one), run("ddim", one), atol=1e-5)  # first order: DDIM exactly
    many = list(range(640, 599, -10))  # coarse steps, so the second-order terms show
    assert not torch.allclose(run("unipc", many), run("ddim", many), atol=1e-4)
    assert torch.isfinite(run("unipc", many)).all()


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_the_rollout_target_leads_back_to_the_clean_latents(kind):
    """By hand: eps~ = (x~ - sqrt(abar) x0) / sqrt(1 - abar), v~ = sqrt(abar) eps~ - sqrt(1 - abar) x0; and
    the x0 the model's prediction implies, when it predicts the target, is exactly x0."""
    sched = ddpm(kind)
    g = torch.Generator().manual_seed(0)
    x0, drifted = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([120, 730])
    target = rollout.rollout_target(x0, drifted, t, sched.alphas_cumprod, kind)
    for i in range(2):
        a = float(sched.alphas_cumprod[t[i]])
        eps = (drifted[i] - math.sqrt(a) * x0[i]) / math.sqrt(1 - a)
        expected = eps if kind == "epsilon" else math.sqrt(a) * eps - math.sqrt(1 - a) * x0[i]
        assert torch.allclose(target[i], expected, atol=1e-5)
        implied = (
            (drifted[i] - math.sqrt(1 - a) * target[i]) / math.sqrt(a)
            if kind == "epsilon"
            else math.sqrt(a) * drifted[i] - math.sqrt(1 - a) * target[i]
        )
        assert torch.allclose(implied, x0[i], atol=1e-4)
    # Without drift (x~ = the usual noisy latents) it is the usual target: the noise, or v.
    noise = torch.randn(2, 4, 8, 8, generator=g)
    noisy = sched.add_noise(x0, noise, t)
    plain = noise if kind == "epsilon" else sched.get_velocity(x0, noise, t)
    assert torch.allclose(rollout.rollout_target(x0, noisy, t, sched.alphas_cumprod, kind), plain, atol=1e-4)


def test_roll_out_replaces_only_rolled_samples_and_lands_on_the_target_timestep():
    sched = ddpm("epsilon")
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    t = torch.tensor([100, 200, 999])
    noisy = sched.add_noise(latents, noise, t)
    calls = []
    model = fake_model()

    def denoise_one(i, x, ts):
        calls.append((i, int(ts)))
        return model(i, x, ts)

    out, rolled = rollout.roll_out(
        plan("ddim"), sched, denoise_one, latents, noise, t, noisy, torch.tensor([0, 3, 2])
    )
    assert rolled.tolist() == [False, True, False]  # 999 + 2 is clamped to 999: nothing to roll
    assert (
        torch.equal(out[0], noisy[0]) and torch.equal(out[2], noisy[2]) and not torch.equal(out[1], noisy[1])
    )
    assert calls == [(1, 203), (1, 202), (1, 201)]
    by_hand = sched.add_noise(latents[1:2], noise[1:2], torch.tensor([203]))
    sampler = rollout.DDIM(sched, [203, 202, 201, 200])
    for step_t in (203, 202, 201):
        by_hand = sampler.step(model(1, by_hand, torch.tensor([step_t])), step_t, step_t - 1, by_hand)
    assert torch.equal(out[1:2], by_hand)


ROLLOUT = """
[scheduled_sampling]
max_step_offset = 3
probability = 0.9
ramp_steps = 2
sampler = "{sampler}"
"""


def _unet(final: str) -> dict:
    return load_file(str(next((Path(final) / "unet").glob("*.safetensors"))))


@pytest.mark.parametrize(("base", "sampler"), [("builtin:tiny-sd1", "unipc"), ("builtin:tiny-sd2", "ddim")])
def test_a_rollout_run_trains_and_resumes_bit_identical(tmp_path, base, sampler):
    """A rollout run trains on each sampler; [builtin:tiny-sd1-unipc]'s also resumes bit-identically (the
    rollout's draws from the run's generator streams and its optimizer state). tiny-sd2 with DDIM saves the
    same kinds of state: its run trains and differs from the plain run without a resume."""
    spec = write_spec(tmp_path, base=base, steps=5, with_class=True, extra=ROLLOUT.format(sampler=sampler))
    planned = compile_spec(spec, ["output.dir=parts"])
    assert planned.loss.rollout == RolloutPlan(
        max_step_offset=3, probability=0.9, ramp_steps=2, sampler=sampler, extra_forwards=1.35
    )
    whole = execute(compile_spec(spec, ["output.dir=whole"]))
    assert whole.status == "finished" and all(math.isfinite(x) for x in whole.losses)
    if sampler == "unipc":
        first = execute(planned, stop_after=3)
        second = execute(planned, resume=True)
        assert first.steps == 3 and second.status == "finished"
        assert first.losses + second.losses == whole.losses
        a, b = _unet(whole.final), _unet(second.final)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    plain = execute(compile_spec(write_spec(tmp_path / "plain", base=base, steps=5, with_class=True)))
    assert plain.losses[0] == whole.losses[0]  # step 0: the ramp's probability is 0, nothing rolled out
    assert plain.losses != whole.losses


def test_sdxl_rolls_out_with_each_samples_own_conditioning(tmp_path):
    extra = '[scheduled_sampling]\nmax_step_offset = 3\nsampler = "euler"\n'
    rolled = execute(compile_spec(write_spec(tmp_path, base="builtin:tiny-sdxl", steps=2, extra=extra)))
    plain = execute(compile_spec(write_spec(tmp_path / "plain", base="builtin:tiny-sdxl", steps=2)))
    assert rolled.status == "finished" and all(math.isfinite(x) for x in rolled.losses)
    assert rolled.losses != plain.losses

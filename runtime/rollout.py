"""Scheduled sampling (rollout, `plan.loss.rollout`): the training step runs on the model's own samples.

Per sample, with probability `rollout.probability_at(step)`, an offset k is drawn uniformly from
0..max_step_offset (both draws from the training generator, every step while rollout is planned, so the stream
never depends on the probability and resume is bit-exact). The latents are noised at s = min(t + k, T - 1)
with the sample's own noise, and the model (no gradients, current weights) denoises them one training
timestep a step, s -> s - 1 -> ... -> t, with the planned sampler. The training step then sees x~_t, which
carries the model's own errors, and regresses to the target that leads back to the clean latents x0:

    eps~ = (x~_t - sqrt(abar_t) x0) / sqrt(1 - abar_t),   v~ = sqrt(abar_t) eps~ - sqrt(1 - abar_t) x0

(docs/techniques.md derives it; with k = 0 it is the usual target, and those samples keep theirs bit for bit).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import UniPCMultistepScheduler

from dbspec.plan.model import RolloutPlan
from dbspec.runtime import losses


def draw_offsets(r: RolloutPlan, step: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Each sample's rollout length (0 = not rolled out), on the CPU: a Bernoulli draw with the ramped
    probability, then a uniform offset in 0..max_step_offset."""
    chosen = torch.rand(size, generator=generator) < r.probability_at(step)
    offsets = torch.randint(0, r.max_step_offset + 1, (size,), generator=generator)
    return offsets * chosen


def roll_out(
    r: RolloutPlan,
    scheduler,
    denoise_one,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    noisy: torch.Tensor,
    offsets: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(the noisy input with rolled-out samples replaced, which samples were rolled out).

    `denoise_one(i, x, t)` is the denoiser's prediction for sample i of the batch at latents x (1, C, H, W)
    and timestep t (1,), with that sample's conditioning. `noise` is the noise the latents were given.
    """
    last = scheduler.config.num_train_timesteps - 1
    sources = torch.clamp(timesteps.cpu() + offsets, max=last)
    rolled = sources > timesteps.cpu()
    out = noisy.clone()
    with torch.no_grad():
        for i in torch.nonzero(rolled).flatten().tolist():
            path = list(range(int(sources[i]), int(timesteps[i]) - 1, -1))  # s, s - 1, ..., t
            x = scheduler.add_noise(
                latents[i : i + 1], noise[i : i + 1], torch.tensor(path[:1]).to(noise.device)
            )
            sampler = SAMPLERS[r.sampler](scheduler, path)
            for t, t_next in zip(path, path[1:]):
                pred = denoise_one(i, x, torch.tensor([t], device=x.device)).float()
                x = sampler.step(pred, t, t_next, x.float()).to(noisy.dtype)
            out[i : i + 1] = x
    return out, rolled.to(noisy.device)


def rollout_target(
    latents: torch.Tensor, noisy: torch.Tensor, timesteps: torch.Tensor, alphas: torch.Tensor, kind: str
) -> torch.Tensor:
    """The epsilon or v target that maps the rolled-out `noisy` back to the clean `latents` at `timesteps`."""
    abar = alphas[timesteps].float().view(-1, 1, 1, 1)
    eps = (noisy.float() - abar.sqrt() * latents.float()) / (1 - abar).sqrt()
    return losses.prediction_target(latents.float(), eps, timesteps, alphas, kind)


# --- samplers: one training timestep a step, on the DDPM scheduler's alphas ---------------------------------
def _x0_eps(pred: torch.Tensor, x: torch.Tensor, abar: torch.Tensor, kind: str):
    """(predicted clean latents, predicted noise) from an epsilon or v prediction at x."""
    a, s = abar.sqrt(), (1 - abar).sqrt()
    if kind == "v_prediction":
        return a * x - s * pred, a * pred + s * x
    return (x - s * pred) / a, pred


class DDIM:
    """Deterministic DDIM (eta 0): x' = sqrt(abar') x0^ + sqrt(1 - abar') eps^."""

    def __init__(self, scheduler, path: Sequence[int]):
        self.alphas = scheduler.alphas_cumprod.float()
        self.kind = scheduler.config.prediction_type

    def step(self, pred, t: int, t_next: int, x):
        abar, abar_next = self.alphas[t].to(x.device), self.alphas[t_next].to(x.device)
        x0, eps = _x0_eps(pred, x, abar, self.kind)
        return abar_next.sqrt() * x0 + (1 - abar_next).sqrt() * eps


class Euler:
    """Euler on the probability-flow ODE in Karras' variables (diffusers' EulerDiscreteScheduler): z = x /
    sqrt(abar), sigma = sqrt((1 - abar) / abar), z' = z + (sigma' - sigma) eps^. Equal to DDIM in exact
    arithmetic (Karras et al. 2022, section 3); it rounds differently."""

    def __init__(self, scheduler, path: Sequence[int]):
        self.alphas = scheduler.alphas_cumprod.float()
        self.kind = scheduler.config.prediction_type

    def step(self, pred, t: int, t_next: int, x):
        abar, abar_next = self.alphas[t].to(x.device), self.alphas[t_next].to(x.device)
        sigma, sigma_next = ((1 - abar) / abar).sqrt(), ((1 - abar_next) / abar_next).sqrt()
        _, eps = _x0_eps(pred, x, abar, self.kind)
        z = x / abar.sqrt() + (sigma_next - sigma) * eps
        return z * abar_next.sqrt()


class UniPC:
    """diffusers' UniPCMultistepScheduler (bh2, order 2, lower order at the last step) on the path's own
    sigmas: its timesteps are set to the path instead of an inference schedule."""

    def __init__(self, scheduler, path: Sequence[int]):
        self.unipc = UniPCMultistepScheduler.from_config(scheduler.config)
        self.unipc.set_timesteps(max(len(path) - 1, 1))  # resets the multistep state
        abar = scheduler.alphas_cumprod.float()[list(path)]
        self.unipc.timesteps = torch.tensor(path[:-1])
        self.unipc.sigmas = ((1 - abar) / abar).sqrt()  # last entry: the target timestep's
        self.unipc.num_inference_steps = len(path) - 1

    def step(self, pred, t: int, t_next: int, x):
        return self.unipc.step(pred, t, x).prev_sample


SAMPLERS = {"ddim": DDIM, "euler": Euler, "unipc": UniPC}

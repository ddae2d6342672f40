"""The flow-matching (rectified-flow) objective of SD3 and Flux, as diffusers' training scripts train it.

x_t = (1 - σ) x + σ ε and the model regresses the velocity ε - x (train_dreambooth_lora_sd3.py without
`precondition_outputs`). σ comes from a density u in [0, 1) (uniform, logit-normal or the SD3 paper's "mode"
density, diffusers' `compute_density_for_timestep_sampling`), looked up in the scheduler's shifted sigma table
(SD3: the fixed `shift` of its scheduler config) or shifted by the image size (Flux's resolution-dependent
shift, `flux_shift`). Per-sample loss weights: none, sigma_sqrt (σ^-2) or cosmap (diffusers'
`compute_loss_weighting_for_sd3`). Every draw comes from the run's CPU generator, so a resumed run draws the
same timesteps.
"""

from __future__ import annotations

import math

import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from dbspec.plan.model import FlowPlan, LossPlan


def density(scheme: str, batch: int, generator: torch.Generator | None, *, logit_mean: float = 0.0,
            logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:  # fmt: skip
    """u in [0, 1) per sample: uniform, sigmoid(N(logit_mean, logit_std)), or the mode density
    1 - u - s (cos²(πu/2) - 1 + u) of a uniform u (SD3 paper, section 3.1)."""
    if scheme == "logit_normal":
        return torch.sigmoid(torch.normal(logit_mean, logit_std, size=(batch,), generator=generator))
    u = torch.rand((batch,), generator=generator)
    if scheme == "mode":
        return 1 - u - mode_scale * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
    if scheme != "uniform":
        raise ValueError(f"unknown flow timestep sampling {scheme!r}")
    return u


def loss_weighting(scheme: str, sigmas: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights of σ: none (ones), sigma_sqrt (σ^-2), cosmap (2 / (π (1 - 2σ + 2σ²)))."""
    if scheme == "sigma_sqrt":
        return (sigmas**-2.0).float()
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * sigmas + 2 * sigmas**2))
    if scheme != "none":
        raise ValueError(f"unknown flow loss weighting {scheme!r}")
    return torch.ones_like(sigmas)


def shifted(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3's fixed shift: shift σ / (1 + (shift - 1) σ) (FlowMatchEulerDiscreteScheduler's table)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flux_mu(image_seq_len: int, *, base_seq_len: int = 256, max_seq_len: int = 4096,
            base_shift: float = 0.5, max_shift: float = 1.15) -> float:  # fmt: skip
    """Flux's shift exponent, linear in the number of latent patches (diffusers' `calculate_shift`)."""
    slope = (max_shift - base_shift) / (max_seq_len - base_seq_len)
    return image_seq_len * slope + (base_shift - slope * base_seq_len)  # diffusers' and kohya's association


def flux_shift(sigmas: torch.Tensor, image_seq_len: int, **kwargs: float) -> torch.Tensor:
    """Flux's resolution-dependent shift: e^mu / (e^mu + (1/σ - 1)), mu = `flux_mu(image_seq_len)`."""
    mu = flux_mu(image_seq_len, **kwargs)
    return math.exp(mu) / (math.exp(mu) + (1 / sigmas - 1))


def table_shift(config) -> float:
    """The fixed shift of a scheduler config's table: its `shift`, 1 for a dynamic-shifting config (Flux's
    table is unshifted until set_timesteps is given the image's mu)."""
    return 1.0 if config.get("use_dynamic_shifting") else float(config.get("shift", 1.0))


def continuous_timesteps(u: torch.Tensor, shift: float, steps: int) -> torch.Tensor:
    """loss.flow_draw continuous: σ = shift(1 − u), timesteps N σ (kohya's Flux uniform / sigmoid / shift
    draws, whose σ is kohya's u: 1 − u has the same law for uniform u and a mean-0 logit-normal)."""
    return shifted(1 - u, shift) * steps


def floored_timesteps(u: torch.Tensor, shift: float, low: int, high: int) -> torch.Tensor:
    """loss.flow_draw floored (kohya's sd3_train_network.py): t = floor(shift(u) (high − low) + low),
    σ = t / N rising with u; float timesteps holding integers."""
    return (shifted(u, shift) * (high - low) + low).long().float()


class FlowMatchingObjective:
    """The Objective of flow-matching families (runtime/families/__init__.py)."""

    def noise_scheduler(
        self, config: dict, *, prediction: str, zero_terminal_snr: bool, flow: FlowPlan | None = None
    ):
        """The model's scheduler; a plan shift other than 0 replaces the config's, as a fixed shift (a
        dynamic-shifting config, Flux's, trains unshifted as diffusers' script does unless one is given)."""
        overrides = (
            {"shift": flow.shift, "use_dynamic_shifting": False} if flow is not None and flow.shift else {}
        )
        if flow is not None and (flow.max_shift or flow.draw != "table"):
            # σ = t / N: the draw shifts, the table stays plain; the draw's fixed shift rides in the config
            plain = FlowMatchEulerDiscreteScheduler.from_config(config, shift=1.0, use_dynamic_shifting=False)
            plain.register_to_config(draw_shift=flow.shift or table_shift(config))
            return plain
        return FlowMatchEulerDiscreteScheduler.from_config(config, **overrides)

    def sample_timesteps(
        self, loss: LossPlan, batch: int, generator, scheduler, latent_size: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """The scheduler's timesteps at u * num_train_timesteps (u from `density`), as diffusers' scripts;
        with Flux's time shift (loss.flow_dynamic_shift) continuous timesteps N σ, σ = flux_shift(1 - u) at
        the batch's (h/2)(w/2) latent patches (kohya's flux_shift draw); loss.flow_draw continuous and floored
        as `continuous_timesteps` and `floored_timesteps` (kohya's other Flux draws, its SD3 draw)."""
        flow = loss.flow
        u = density(
            flow.timesteps,
            batch,
            generator,
            logit_mean=flow.logit_mean,
            logit_std=flow.logit_std,
            mode_scale=flow.mode_scale,
        )
        steps = scheduler.config.num_train_timesteps
        if flow.max_shift:
            h, w = latent_size
            sigmas = flux_shift(
                1 - u, (h // 2) * (w // 2), base_shift=flow.base_shift, max_shift=flow.max_shift
            )
            return sigmas * steps
        if flow.draw == "continuous":
            return continuous_timesteps(u, scheduler.config.draw_shift, steps)
        if flow.draw == "floored":
            low, high = loss.noise.min_timestep, loss.noise.max_timestep
            return floored_timesteps(u, scheduler.config.draw_shift, low, high)
        indices = (u * steps).long()
        return scheduler.timesteps[indices]

    def sigmas(self, scheduler, timesteps: torch.Tensor) -> torch.Tensor:
        """σ of each timestep from the scheduler's table (diffusers' `get_sigmas`), shape (B,); a timestep off
        the table (the continuous draw of Flux's time shift, on a plain table) is t / num_train_timesteps."""
        table = scheduler.timesteps.to(timesteps.device)
        found = [(table == t).nonzero() for t in timesteps]
        if all(len(hit) for hit in found):
            return scheduler.sigmas.to(timesteps.device, torch.float32)[[int(hit[0]) for hit in found]]
        return timesteps.float() / scheduler.config.num_train_timesteps

    def output(self, loss: LossPlan, scheduler, pred, noisy, timesteps) -> torch.Tensor:
        """kohya's Flux model_prediction_type (flux_train_utils.apply_model_prediction_type): raw v̂,
        sigma_scaled x_t - σ v̂, additive v̂ + x_t; compared with the same target ε - x₀."""
        kind = loss.flow.prediction
        if kind == "raw":
            return pred
        if kind == "additive":
            return pred + noisy.float()
        # sigma_scaled (kohya's Flux) and preconditioned (kohya's SD3): x_t − σ v̂
        sigma = self.sigmas(scheduler, timesteps).view(-1, *[1] * (pred.ndim - 1))
        return pred * (-sigma) + noisy.float()

    def add_noise(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        sigma = self.sigmas(scheduler, timesteps).view(-1, *[1] * (latents.ndim - 1)).to(latents.dtype)
        return (1.0 - sigma) * latents + sigma * noise

    def target(self, scheduler, latents, noise, timesteps, kind: str, loss: LossPlan | None = None):
        """The velocity ε − x₀; the latents x₀ for flow_prediction preconditioned (kohya's SD3 loss)."""
        if loss is not None and loss.flow is not None and loss.flow.prediction == "preconditioned":
            return latents.float()
        return noise.float() - latents.float()

    def weights(self, loss: LossPlan, scheduler, timesteps: torch.Tensor) -> torch.Tensor:
        return loss_weighting(loss.flow.weighting, self.sigmas(scheduler, timesteps))

    def huber_threshold(self, loss: LossPlan, scheduler, timesteps):
        return None  # pseudo-Huber schedules read DDPM alphas: refused for flow matching (DBS230)

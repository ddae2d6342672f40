"""The DDPM objective (SD1, SD2, SDXL): noise added by the scheduler's alphas, an epsilon or v target."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from dbspec.runtime import losses


class DDPMObjective:
    def noise_scheduler(self, config: dict, *, prediction: str, zero_terminal_snr: bool) -> DDPMScheduler:
        """The model's betas, the plan's prediction type and terminal-SNR choice."""
        return DDPMScheduler.from_config(
            config, prediction_type=prediction, rescale_betas_zero_snr=zero_terminal_snr
        )

    def add_noise(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        return scheduler.add_noise(latents, noise, timesteps)

    def target(self, scheduler, latents, noise, timesteps, kind: str) -> torch.Tensor:
        alphas = scheduler.alphas_cumprod.to(latents.device)
        return losses.prediction_target(latents.float(), noise.float(), timesteps, alphas, kind)

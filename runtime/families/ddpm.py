"""The DDPM objective (SD1, SD2, SDXL): noise added by the scheduler's alphas, an epsilon or v target."""

from __future__ import annotations

import torch
from diffusers import DDPMScheduler

from dbspec.plan.model import LossPlan
from dbspec.runtime import losses


class DDPMObjective:
    def noise_scheduler(
        self, config: dict, *, prediction: str, zero_terminal_snr: bool, flow=None
    ) -> DDPMScheduler:
        """The model's betas, the plan's prediction type and terminal-SNR choice."""
        return DDPMScheduler.from_config(
            config, prediction_type=prediction, rescale_betas_zero_snr=zero_terminal_snr
        )

    def sample_timesteps(
        self, loss: LossPlan, batch: int, generator, scheduler, latent_size: tuple[int, int] = (0, 0)
    ) -> torch.Tensor:
        """Uniform integers in [min_timestep, max_timestep) (kohya's get_timesteps)."""
        n = loss.noise
        if n.max_timestep > scheduler.config.num_train_timesteps:
            raise ValueError(
                f"loss.noise.max_timestep {n.max_timestep} is beyond the scheduler's "
                f"{scheduler.config.num_train_timesteps} timesteps"
            )
        return losses.sample_timesteps(batch, n.min_timestep, n.max_timestep, generator)

    def add_noise(self, scheduler, latents, noise, timesteps) -> torch.Tensor:
        return scheduler.add_noise(latents, noise, timesteps)

    def target(self, scheduler, latents, noise, timesteps, kind: str, loss=None) -> torch.Tensor:
        alphas = scheduler.alphas_cumprod.to(latents.device)
        return losses.prediction_target(latents.float(), noise.float(), timesteps, alphas, kind)

    def weights(self, loss: LossPlan, scheduler, timesteps: torch.Tensor) -> torch.Tensor:
        """kohya's per-sample timestep weights (Min-SNR, debiased, ...); ones when all are off."""
        return losses.timestep_weights(
            scheduler.alphas_cumprod.to(timesteps.device),
            timesteps,
            loss.target,
            min_snr_gamma=loss.min_snr_gamma,
            scale_v_like_epsilon=loss.scale_v_like_epsilon,
            v_pred_like_loss=loss.v_pred_like_loss,
            debiased_estimation=loss.debiased_estimation,
        )

    def output(self, loss: LossPlan, scheduler, pred, noisy, timesteps) -> torch.Tensor:
        return pred  # the loss compares the prediction itself

    def huber_threshold(self, loss: LossPlan, scheduler, timesteps):
        huber = loss.huber
        if not huber:
            return None
        return losses.huber_threshold(
            huber.schedule, huber.c, huber.scale, timesteps, scheduler.alphas_cumprod
        )

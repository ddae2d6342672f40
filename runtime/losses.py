"""DreamBooth loss maths: targets, Min-SNR weights, element-wise losses, masks, instance/prior split.

Pure torch. The training loop calls these with values the Plan settled; nothing here reads a spec.
Each function is checked against its reference (diffusers schedulers, `compute_snr`, the
`examples/dreambooth/train_dreambooth.py` loss code) in tests/runtime/test_losses.py.

Shapes: latents/noise/pred are (B, C, H, W); timesteps are (B,) integer indices into `alphas_cumprod`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Prediction = Literal["epsilon", "v_prediction"]
LossKind = Literal["mse", "huber", "l1"]


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """Reshape a (B,) tensor so it broadcasts over the trailing dims of `like`."""
    return values.reshape(values.shape[0], *([1] * (like.ndim - 1)))


def _check_prediction(prediction: str) -> None:
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"unknown prediction type {prediction!r}; expected 'epsilon' or 'v_prediction'")


def prediction_target(
    latents: Tensor, noise: Tensor, timesteps: Tensor, alphas_cumprod: Tensor, prediction: Prediction
) -> Tensor:
    """What the model must predict: the noise (epsilon) or the velocity sqrt(ac)*noise - sqrt(1-ac)*x0.

    The velocity is computed with the same dtype and operation order as diffusers'
    `DDPMScheduler.get_velocity`, so the two agree bit for bit.
    """
    _check_prediction(prediction)
    if prediction == "epsilon":
        return noise
    alphas_at_t = alphas_cumprod.to(device=latents.device, dtype=latents.dtype)[timesteps.to(latents.device)]
    sqrt_alpha = _per_sample(alphas_at_t**0.5, latents)
    sqrt_one_minus_alpha = _per_sample((1 - alphas_at_t) ** 0.5, latents)
    return sqrt_alpha * noise - sqrt_one_minus_alpha * latents


def snr(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """Signal-to-noise ratio ac_t / (1 - ac_t) per sample, float32, shape (B,).

    Zero-terminal-SNR schedules give exactly 0 at the last timestep.
    """
    # float64 where the device has it (precision near ac_t = 1); MPS has no float64, float32 is close enough there.
    wide = torch.float32 if timesteps.device.type == "mps" else torch.float64
    alphas_at_t = alphas_cumprod.to(timesteps.device)[timesteps].to(wide)
    return (alphas_at_t / (1.0 - alphas_at_t)).float()


def min_snr_weights(
    alphas_cumprod: Tensor, timesteps: Tensor, gamma: float, prediction: Prediction
) -> Tensor:
    """Min-SNR-gamma per-sample loss weights (Hang et al. 2023, arXiv 2303.09556), shape (B,).

    epsilon: min(snr, gamma) / snr; v_prediction: min(snr, gamma) / (snr + 1). This is the corrected
    v form of diffusers PR #6307 (`train_text_to_image.py`); diffusers' `train_dreambooth.py` still uses
    `min(snr, gamma) / snr + 1`, which we deliberately do not copy. gamma <= 0 disables weighting (ones).
    At snr == 0 (zero terminal SNR) the epsilon weight takes its limit 1 instead of 0/0 = NaN.
    """
    _check_prediction(prediction)
    signal_to_noise = snr(alphas_cumprod, timesteps)
    if gamma <= 0:
        return torch.ones_like(signal_to_noise)
    clipped = torch.clamp(signal_to_noise, max=gamma)
    if prediction == "v_prediction":
        return clipped / (signal_to_noise + 1)
    safe_snr = torch.where(signal_to_noise > 0, signal_to_noise, torch.ones_like(signal_to_noise))
    return torch.where(signal_to_noise > 0, clipped / safe_snr, torch.ones_like(signal_to_noise))


def offset_noise(noise: Tensor, strength: float, generator: torch.Generator | None) -> Tensor:
    """noise + strength * N(0, 1) drawn per (sample, channel) and broadcast over H, W.

    Same form as diffusers' `--offset_noise` (which fixes strength at 0.1). strength == 0 returns
    `noise` untouched and draws nothing, so the generator stream is the same as with offset noise off.
    """
    if strength == 0:
        return noise
    batch, channels = noise.shape[0], noise.shape[1]
    shape = (batch, channels) + (1,) * (noise.ndim - 2)
    offset = torch.randn(shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * offset


def elementwise_loss(pred: Tensor, target: Tensor, kind: LossKind, huber_delta: float) -> Tensor:
    """Unreduced loss in float32 (as diffusers does, whatever the model dtype).

    mse:   (p - t)^2
    l1:    |p - t|
    huber: torch's Huber loss, 0.5 * x^2 if |x| <= delta else delta * (|x| - 0.5 * delta), x = p - t.
           (Not kohya's pseudo-Huber 2c(sqrt(x^2 + c^2) - c).) `huber_delta` is ignored for mse/l1.
    """
    pred32, target32 = pred.float(), target.float()
    if kind == "mse":
        return F.mse_loss(pred32, target32, reduction="none")
    if kind == "l1":
        return F.l1_loss(pred32, target32, reduction="none")
    if kind == "huber":
        if huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
        return F.huber_loss(pred32, target32, reduction="none", delta=huber_delta)
    raise ValueError(f"unknown loss kind {kind!r}; expected 'mse', 'huber' or 'l1'")


def per_sample_loss(elementwise: Tensor, mask: Tensor | None) -> Tensor:
    """Reduce a (B, C, H, W) loss to (B,).

    No mask: mean over C, H, W. With a mask (B, 1, H, W) in [0, 1] at latent size:
    sum(loss * mask) / (sum(mask) * C), i.e. normalised by mask area so a small subject mask does not
    shrink the loss (unlike kohya/SimpleTuner, which only multiply). An all-zero mask gives 0, not NaN,
    and no gradient flows where mask == 0.
    """
    reduce_dims = list(range(1, elementwise.ndim))
    if mask is None:
        return elementwise.mean(dim=reduce_dims)
    _check_mask_shape(mask, elementwise)
    weights = mask.to(elementwise.dtype).expand_as(elementwise)
    masked_sum = (elementwise * weights).sum(dim=reduce_dims)
    area = weights.sum(dim=reduce_dims)
    has_area = area > 0
    # The where() guards both the value and the gradient: 0/clamped keeps the empty-mask sample finite.
    return torch.where(
        has_area, masked_sum / area.clamp_min(torch.finfo(area.dtype).tiny), torch.zeros_like(area)
    )


def _check_mask_shape(mask: Tensor, elementwise: Tensor) -> None:
    expected = (elementwise.shape[0], 1, *elementwise.shape[2:])
    if tuple(mask.shape) != expected:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match loss shape; expected {expected}")


def resize_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Pixel mask (B, 1, H, W) -> latent size with area averaging (partial cover -> fractional weight)."""
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"mask must be (B, 1, H, W), got {tuple(mask.shape)}")
    resized = F.interpolate(mask.float(), size=size, mode="area")
    return resized.clamp(0.0, 1.0)


def combine_terms(
    per_sample: Tensor, is_prior: Tensor, weights: Tensor, prior_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """Total loss = mean(w_i * l_i over instance samples) + prior_weight * mean(l_i over prior samples).

    `weights` (B,) (Min-SNR or ones) apply to the instance term only, as in diffusers' DreamBooth script.
    A term with no samples contributes 0. Uses masked sums instead of boolean indexing so no
    device-host sync is needed. Returns the total and the detached, unscaled terms for logging.
    """
    prior_mask = is_prior.to(device=per_sample.device, dtype=per_sample.dtype)
    instance_mask = 1.0 - prior_mask
    instance_count = instance_mask.sum().clamp_min(1.0)
    prior_count = prior_mask.sum().clamp_min(1.0)
    instance_term = (weights.to(per_sample.dtype) * per_sample * instance_mask).sum() / instance_count
    prior_term = (per_sample * prior_mask).sum() / prior_count
    total = instance_term + prior_weight * prior_term
    return total, {"instance": instance_term.detach(), "prior": prior_term.detach()}


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so the final timestep has SNR exactly 0 (Lin et al. 2023, arXiv 2305.08891, Alg. 1).

    Same operations as `diffusers.schedulers.scheduling_ddpm.rescale_zero_terminal_snr`.
    """
    alphas_bar_sqrt = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = alphas_bar_sqrt[0].clone(), alphas_bar_sqrt[-1].clone()
    # Shift so the last step is 0, then scale so the first step keeps its value.
    alphas_bar_sqrt = (alphas_bar_sqrt - last) * (first / (first - last))
    alphas_bar = alphas_bar_sqrt**2
    alphas = torch.cat([alphas_bar[0:1], alphas_bar[1:] / alphas_bar[:-1]])
    return 1 - alphas

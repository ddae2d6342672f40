"""DreamBooth loss maths: targets, Min-SNR weights, element-wise losses, masks, instance/prior split.

Pure torch. The training loop calls these with values the Plan settled; nothing here reads a spec.
Each function is checked against its reference (diffusers schedulers, `compute_snr`, the
`examples/dreambooth/train_dreambooth.py` loss code) in tests/runtime/test_losses.py.

Shapes: latents/noise/pred are (B, C, H, W); timesteps are (B,) integer indices into `alphas_cumprod`.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

Prediction = Literal["epsilon", "v_prediction"]
LossKind = Literal["mse", "huber", "l1", "pseudo_huber", "smooth_l1"]
HuberSchedule = Literal["constant", "exponential", "snr"]


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
    # float64 where the device has it (precision near ac_t = 1); MPS has no float64, float32
    # is close enough there.
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


def offset_noise(
    noise: Tensor,
    strength: float,
    generator: torch.Generator | None,
    *,
    random_strength: bool = False,
    adaptive_scale: float = 0.0,
    latents: Tensor | None = None,
) -> Tensor:
    """noise + offset * N(0, 1) drawn per (sample, channel) and broadcast over H, W.

    Same form as diffusers' `--offset_noise` (which fixes strength at 0.1) and kohya's `apply_noise_offset`:
    `random_strength` first draws the strength uniformly in [0, strength) (one draw per batch);
    `adaptive_scale` adds adaptive_scale * |channel mean of `latents`| per (sample, channel), clamped at 0.
    strength == 0 returns `noise` untouched and draws nothing, so the generator stream is the same as with
    offset noise off.
    """
    if strength == 0:
        return noise
    offset: float | Tensor = strength
    if random_strength:
        offset = torch.rand(1, generator=generator, device=noise.device, dtype=noise.dtype) * strength
    if adaptive_scale:
        if latents is None:
            raise ValueError("an adaptive noise offset needs the latents")
        channel_mean = latents.mean(dim=tuple(range(2, latents.ndim)), keepdim=True).abs()
        offset = torch.clamp(offset + adaptive_scale * channel_mean, min=0.0)
    batch, channels = noise.shape[0], noise.shape[1]
    shape = (batch, channels) + (1,) * (noise.ndim - 2)
    draw = torch.randn(shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + offset * draw


def multires_noise(
    noise: Tensor, iterations: int, discount: float, generator: torch.Generator | None
) -> Tensor:
    """Multi-resolution (pyramid) noise, kohya's `pyramid_noise_like`: level i adds N(0, 1) drawn at
    (H, W) / r^i (r uniform in [2, 4), drawn per level), bilinearly upsampled and weighted discount^i; the sum
    is divided by its standard deviation over the whole batch. Stops after a level of side 1.
    iterations == 0 returns `noise` and draws nothing. Draw order per level: r, then the level's noise.
    """
    if iterations == 0:
        return noise
    batch, channels, height, width = noise.shape
    total = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2
        level_h, level_w = max(1, int(height / (r**i))), max(1, int(width / (r**i)))
        level = torch.randn((batch, channels, level_h, level_w), generator=generator).to(
            noise.device, noise.dtype
        )
        total = total + F.interpolate(level, size=(height, width), mode="bilinear") * discount**i
        if level_h == 1 or level_w == 1:
            break
    return total / total.std()


def sample_timesteps(batch: int, low: int, high: int, generator: torch.Generator | None) -> Tensor:
    """Training timesteps, kohya's `get_timesteps`: uniform integers in [low, high), or all `high` when
    low == high (one timestep trains). (0, num_train_timesteps) is the usual full range."""
    if low < high:
        return torch.randint(low, high, (batch,), generator=generator)
    return torch.full((batch,), high, dtype=torch.long)


def perturbed_noise(
    noise: Tensor, gamma: float, random_strength: bool, generator: torch.Generator | None
) -> Tensor:
    """Input-perturbation noise (Ning et al. 2023, arXiv 2301.11706), as kohya draws it: the noise the latents
    are noised with is noise + strength * N(0, 1), strength = gamma, or uniform in [0, gamma) per batch with
    `random_strength`; the target keeps `noise`. gamma == 0 returns `noise` and draws nothing."""
    if gamma == 0:
        return noise
    strength: float | Tensor = gamma
    if random_strength:
        strength = torch.rand(1, generator=generator, device=noise.device, dtype=noise.dtype) * gamma
    draw = torch.randn(noise.shape, generator=generator, device=noise.device, dtype=noise.dtype)
    return noise + strength * draw


def elementwise_loss(
    pred: Tensor, target: Tensor, kind: LossKind, huber_delta: float, huber_c: Tensor | None = None
) -> Tensor:
    """Unreduced loss in float32 (as diffusers does, whatever the model dtype).

    mse:   (p - t)^2
    l1:    |p - t|
    huber: torch's Huber loss, 0.5 * x^2 if |x| <= delta else delta * (|x| - 0.5 * delta), x = p - t.
           `huber_delta` is ignored for the other kinds.
    pseudo_huber: kohya's loss_type "huber", 2c(sqrt(x^2 + c^2) - c), c = `huber_c` (B,) per sample.
    smooth_l1:    kohya's loss_type "smooth_l1", 2(sqrt(x^2 + c^2) - c) (not torch's SmoothL1Loss).
    """
    pred32, target32 = pred.float(), target.float()
    if kind in ("pseudo_huber", "smooth_l1"):
        if huber_c is None:
            raise ValueError(f"loss kind {kind!r} needs huber_c, one threshold per sample")
        c = _per_sample(huber_c.to(pred32.device, torch.float32), pred32)
        root = 2 * (torch.sqrt((pred32 - target32) ** 2 + c**2) - c)
        return c * root if kind == "pseudo_huber" else root
    if kind == "mse":
        return F.mse_loss(pred32, target32, reduction="none")
    if kind == "l1":
        return F.l1_loss(pred32, target32, reduction="none")
    if kind == "huber":
        if huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {huber_delta}")
        return F.huber_loss(pred32, target32, reduction="none", delta=huber_delta)
    raise ValueError(f"unknown loss kind {kind!r}; expected one of mse, huber, l1, pseudo_huber, smooth_l1")


def huber_threshold(
    schedule: HuberSchedule, c: float, scale: float, timesteps: Tensor, alphas_cumprod: Tensor
) -> Tensor:
    """kohya's `get_huber_threshold_if_needed`: the pseudo-Huber c per sample, shape (B,), float32.

    constant:    c * scale
    exponential: scale * exp(t * ln(c) / T), T = len(alphas_cumprod) (c at t = T, scale at t = 0)
    snr:         (1 - c) / (1 + sigma_t)^2 + c, sigma_t = sqrt((1 - ac_t) / ac_t) (scale unused, as in kohya)
    """
    t = timesteps.to(alphas_cumprod.device)
    if schedule == "constant":
        return torch.full(t.shape, c * scale, dtype=torch.float32)
    if schedule == "exponential":
        alpha = -math.log(c) / alphas_cumprod.shape[0]
        return (torch.exp(-alpha * t) * scale).float()
    if schedule == "snr":
        ac = alphas_cumprod[t]
        sigmas = ((1.0 - ac) / ac) ** 0.5
        return ((1 - c) / (1 + sigmas) ** 2 + c).float()
    raise ValueError(f"unknown huber schedule {schedule!r}; expected constant, exponential or snr")


def _capped_snr(alphas_cumprod: Tensor, timesteps: Tensor) -> Tensor:
    """kohya's snr for its timestep weights: capped at 1000 (near t = 0 it grows without bound)."""
    return torch.clamp(snr(alphas_cumprod, timesteps), max=1000.0)


def timestep_weights(
    alphas_cumprod: Tensor,
    timesteps: Tensor,
    prediction: Prediction,
    *,
    min_snr_gamma: float = 0.0,
    scale_v_like_epsilon: bool = False,
    v_pred_like_loss: float = 0.0,
    debiased_estimation: bool = False,
) -> Tensor:
    """Per-sample loss weights (B,), the product of kohya's post-processing steps in its order:

    Min-SNR (`min_snr_weights`); scale_v_like_epsilon: snr/(snr + 1) (`scale_v_prediction_loss_like_noise_
    prediction`); v_pred_like_loss v: 1 + v/(snr/(snr + 1)) (`add_v_prediction_like_loss`: loss + loss/scale *
    v); debiased: 1/sqrt(snr) for epsilon, 1/(snr + 1) for v (`apply_debiased_estimation`); snr capped at 1000
    in the last three, as kohya does. Every option off gives ones.
    """
    weights = min_snr_weights(alphas_cumprod, timesteps, min_snr_gamma, prediction)
    if not (scale_v_like_epsilon or v_pred_like_loss or debiased_estimation):
        return weights
    capped = _capped_snr(alphas_cumprod, timesteps)
    v_scale = capped / (capped + 1)
    if scale_v_like_epsilon:
        weights = weights * v_scale
    if v_pred_like_loss:
        weights = weights + weights / v_scale * v_pred_like_loss
    if debiased_estimation:
        weights = weights * (1 / (capped + 1) if prediction == "v_prediction" else 1 / torch.sqrt(capped))
    return weights


def per_sample_loss(
    elementwise: Tensor, mask: Tensor | None, mask_mean: Literal["mask", "image"] = "mask"
) -> Tensor:
    """Reduce a (B, C, H, W) loss to (B,).

    No mask: mean over C, H, W. With a mask (B, 1, H, W) in [0, 1] at latent size (`plan.loss.mask_mean`):
    "mask": sum(loss * mask) / (sum(mask) * C), i.e. normalised by mask area so a small subject mask does
    not shrink the loss (unlike kohya/SimpleTuner, which only multiply); an all-zero mask gives 0, not NaN.
    "image": mean over C, H, W of loss * mask (kohya's apply_masked_loss and then its mean). No gradient
    flows where mask == 0.
    """
    reduce_dims = list(range(1, elementwise.ndim))
    if mask is None:
        return elementwise.mean(dim=reduce_dims)
    _check_mask_shape(mask, elementwise)
    if mask_mean == "image":
        return (elementwise * mask.to(elementwise.dtype)).mean(dim=reduce_dims)
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


def combine_per_sample(
    per_sample: Tensor, is_prior: Tensor, weights: Tensor, prior_weight: float
) -> tuple[Tensor, dict[str, Tensor]]:
    """kohya's reduction: total = mean over the batch of w_i * l_i * (prior_weight if prior else 1).

    `weights` (B,) (the timestep weights) apply to every sample, instance and prior alike. The logged terms
    are the instance and prior means of w_i * l_i (unscaled by prior_weight), 0 for a kind with no samples.
    """
    prior_mask = is_prior.to(device=per_sample.device, dtype=per_sample.dtype)
    weighted = weights.to(per_sample.dtype) * per_sample
    sample_weights = torch.where(prior_mask > 0, prior_weight, 1.0).to(per_sample.dtype)
    total = (weighted * sample_weights).mean()
    instance_mask = 1.0 - prior_mask
    terms = {
        "instance": ((weighted * instance_mask).sum() / instance_mask.sum().clamp_min(1.0)).detach(),
        "prior": ((weighted * prior_mask).sum() / prior_mask.sum().clamp_min(1.0)).detach(),
    }
    return total, terms


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

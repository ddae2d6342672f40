"""dbspec.runtime.losses against diffusers and against the formulas, on fixed seeded tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale
from diffusers.training_utils import compute_snr

from dbspec.runtime import losses

TOL = {"atol": 1e-6, "rtol": 1e-6}


def sd_scheduler(prediction: str = "epsilon", zero_snr: bool = False) -> DDPMScheduler:
    """Stable Diffusion's training schedule (scaled_linear 0.00085..0.012, 1000 steps)."""
    return DDPMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction,
        rescale_betas_zero_snr=zero_snr,
    )


def seeded_batch(batch: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (batch, 4, 8, 8)
    return {
        "latents": torch.randn(shape, generator=generator),
        "noise": torch.randn(shape, generator=generator),
        "pred": torch.randn(shape, generator=generator),
        # Include both ends of the schedule on purpose.
        "timesteps": torch.cat(
            [torch.tensor([0, 999]), torch.randint(0, 1000, (batch - 2,), generator=generator)]
        ),
    }


# --- targets and SNR -------------------------------------------------------------------------------


def test_epsilon_target_is_the_noise() -> None:
    data = seeded_batch()
    scheduler = sd_scheduler()
    target = losses.prediction_target(
        data["latents"], data["noise"], data["timesteps"], scheduler.alphas_cumprod, "epsilon"
    )
    assert torch.equal(target, data["noise"])


def test_velocity_target_equals_diffusers_get_velocity() -> None:
    data = seeded_batch()
    scheduler = sd_scheduler("v_prediction")
    ours = losses.prediction_target(
        data["latents"], data["noise"], data["timesteps"], scheduler.alphas_cumprod, "v_prediction"
    )
    reference = scheduler.get_velocity(data["latents"], data["noise"], data["timesteps"])
    torch.testing.assert_close(ours, reference, **TOL)


def test_unknown_prediction_is_rejected() -> None:
    data = seeded_batch()
    with pytest.raises(ValueError, match="sample"):
        losses.prediction_target(
            data["latents"], data["noise"], data["timesteps"], torch.ones(1000), "sample"
        )


def test_snr_equals_diffusers_compute_snr() -> None:
    scheduler = sd_scheduler()
    timesteps = torch.arange(0, 1000, 7)
    ours = losses.snr(scheduler.alphas_cumprod, timesteps)
    torch.testing.assert_close(ours, compute_snr(scheduler, timesteps), **TOL)


# --- Min-SNR weights ------------------------------------------------------------------------------


def test_min_snr_weights_formulas() -> None:
    scheduler = sd_scheduler()
    timesteps = torch.arange(0, 1000, 11)
    snr = compute_snr(scheduler, timesteps)
    eps = losses.min_snr_weights(scheduler.alphas_cumprod, timesteps, 5.0, "epsilon")
    vel = losses.min_snr_weights(scheduler.alphas_cumprod, timesteps, 5.0, "v_prediction")
    torch.testing.assert_close(eps, torch.clamp(snr, max=5.0) / snr, **TOL)
    # Corrected v form (diffusers PR #6307), not train_dreambooth.py's `min(snr, gamma) / snr + 1`.
    torch.testing.assert_close(vel, torch.clamp(snr, max=5.0) / (snr + 1), **TOL)
    assert not torch.allclose(vel, torch.clamp(snr, max=5.0) / snr + 1)


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_min_snr_disabled_gives_ones(gamma: float) -> None:
    scheduler = sd_scheduler()
    weights = losses.min_snr_weights(scheduler.alphas_cumprod, torch.tensor([0, 500, 999]), gamma, "epsilon")
    assert torch.equal(weights, torch.ones(3))


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_min_snr_is_finite_at_zero_terminal_snr(prediction: str) -> None:
    scheduler = sd_scheduler(prediction, zero_snr=True)
    timesteps = torch.tensor([0, 500, 999])
    assert losses.snr(scheduler.alphas_cumprod, timesteps)[-1] == 0
    weights = losses.min_snr_weights(scheduler.alphas_cumprod, timesteps, 5.0, prediction)
    assert torch.isfinite(weights).all()
    assert weights[-1] == (1.0 if prediction == "epsilon" else 0.0)


# --- the whole DreamBooth loss vs diffusers train_dreambooth.py -----------------------------------


def diffusers_dreambooth_loss(model_pred, target, timesteps, noise_scheduler, snr_gamma, prior_loss_weight):
    """Transcription of the loss block of diffusers examples/dreambooth/train_dreambooth.py
    (with_prior_preservation=True), with two upstream fixes applied:
    - timesteps chunked to the instance half before compute_snr (PR #6356; as written the script
      fails with a shape mismatch when --snr_gamma and --with_prior_preservation are combined);
    - v_prediction weight min(snr, gamma) / (snr + 1) (PR #6307; train_dreambooth.py still
      has `base_weight + 1`).
    """
    model_pred, model_pred_prior = torch.chunk(model_pred, 2, dim=0)
    target, target_prior = torch.chunk(target, 2, dim=0)
    prior_loss = F.mse_loss(model_pred_prior.float(), target_prior.float(), reduction="mean")
    if snr_gamma is None:
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
    else:
        snr_timesteps, _ = torch.chunk(timesteps, 2, dim=0)
        snr = compute_snr(noise_scheduler, snr_timesteps)
        mse_loss_weights = torch.stack([snr, snr_gamma * torch.ones_like(snr_timesteps)], dim=1).min(dim=1)[0]
        if noise_scheduler.config.prediction_type == "epsilon":
            mse_loss_weights = mse_loss_weights / snr
        elif noise_scheduler.config.prediction_type == "v_prediction":
            mse_loss_weights = mse_loss_weights / (snr + 1)
        loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
        loss = loss.mean(dim=list(range(1, len(loss.shape)))) * mse_loss_weights
        loss = loss.mean()
    return loss + prior_loss_weight * prior_loss, loss, prior_loss


def dbspec_loss(data, scheduler, prediction, gamma, prior_loss_weight):
    ac = scheduler.alphas_cumprod
    target = losses.prediction_target(data["latents"], data["noise"], data["timesteps"], ac, prediction)
    per_sample = losses.per_sample_loss(losses.elementwise_loss(data["pred"], target, "mse", 1.0), None)
    weights = losses.min_snr_weights(ac, data["timesteps"], gamma, prediction)
    batch = per_sample.shape[0]
    is_prior = torch.arange(batch) >= batch // 2
    return losses.combine_terms(per_sample, is_prior, weights, prior_loss_weight)


@pytest.mark.parametrize("gamma", [None, 5.0, 1.0])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_dreambooth_loss_matches_diffusers(prediction: str, gamma: float | None) -> None:
    data = seeded_batch(batch=8, seed=3)
    scheduler = sd_scheduler(prediction)
    if prediction == "epsilon":
        target = data["noise"]
    else:
        target = scheduler.get_velocity(data["latents"], data["noise"], data["timesteps"])
    ref_total, ref_instance, ref_prior = diffusers_dreambooth_loss(
        data["pred"], target, data["timesteps"], scheduler, gamma, prior_loss_weight=0.7
    )
    total, terms = dbspec_loss(data, scheduler, prediction, 0.0 if gamma is None else gamma, 0.7)
    torch.testing.assert_close(total, ref_total, **TOL)
    torch.testing.assert_close(terms["instance"], ref_instance, **TOL)
    torch.testing.assert_close(terms["prior"], ref_prior, **TOL)


def test_all_instance_batch_matches_plain_mse() -> None:
    data = seeded_batch(batch=4, seed=5)
    per_sample = losses.per_sample_loss(
        losses.elementwise_loss(data["pred"], data["noise"], "mse", 1.0), None
    )
    total, terms = losses.combine_terms(per_sample, torch.zeros(4, dtype=torch.bool), torch.ones(4), 1.0)
    torch.testing.assert_close(total, F.mse_loss(data["pred"], data["noise"]), **TOL)
    assert terms["prior"] == 0


def test_combine_terms_weights_instance_only_and_detaches_logs() -> None:
    per_sample = torch.tensor([1.0, 2.0, 3.0, 5.0], requires_grad=True)
    is_prior = torch.tensor([False, False, True, True])
    total, terms = losses.combine_terms(per_sample, is_prior, torch.tensor([2.0, 0.5, 9.0, 9.0]), 0.5)
    assert total.item() == pytest.approx((2.0 * 1 + 0.5 * 2) / 2 + 0.5 * (3 + 5) / 2)
    assert not terms["instance"].requires_grad and not terms["prior"].requires_grad
    only_prior, terms = losses.combine_terms(per_sample, torch.ones(4, dtype=torch.bool), torch.ones(4), 1.0)
    assert terms["instance"] == 0 and only_prior.item() == pytest.approx(2.75)


# --- element-wise losses --------------------------------------------------------------------------


def test_huber_and_l1_follow_their_formulas() -> None:
    generator = torch.Generator().manual_seed(7)
    pred, target = (
        torch.randn(2, 4, 8, 8, generator=generator) * 3,
        torch.randn(2, 4, 8, 8, generator=generator),
    )
    diff = pred - target
    delta = 0.8
    expected_huber = torch.where(diff.abs() <= delta, 0.5 * diff**2, delta * (diff.abs() - 0.5 * delta))
    assert (diff.abs() > delta).any() and (diff.abs() <= delta).any()
    torch.testing.assert_close(losses.elementwise_loss(pred, target, "huber", delta), expected_huber, **TOL)
    torch.testing.assert_close(losses.elementwise_loss(pred, target, "l1", delta), diff.abs(), **TOL)
    torch.testing.assert_close(losses.elementwise_loss(pred, target, "mse", delta), diff**2, **TOL)
    known = losses.elementwise_loss(torch.tensor([-3.0, -0.5, 0.0, 0.5, 3.0]), torch.zeros(5), "huber", 1.0)
    assert known.tolist() == [2.5, 0.125, 0.0, 0.125, 2.5]


def test_elementwise_loss_rejects_bad_kind_and_delta() -> None:
    x = torch.zeros(1, 1, 2, 2)
    with pytest.raises(ValueError, match="huber_delta"):
        losses.elementwise_loss(x, x, "huber", 0.0)
    with pytest.raises(ValueError, match="smooth"):
        losses.elementwise_loss(x, x, "smooth", 1.0)


def test_elementwise_loss_is_float32_for_half_inputs() -> None:
    x = torch.ones(1, 1, 2, 2, dtype=torch.bfloat16)
    assert losses.elementwise_loss(x, x * 0, "mse", 1.0).dtype == torch.float32


# --- masks ----------------------------------------------------------------------------------------


def test_masked_loss_has_zero_gradient_where_mask_is_zero() -> None:
    generator = torch.Generator().manual_seed(11)
    pred = torch.randn(3, 4, 8, 8, generator=generator, requires_grad=True)
    target = torch.randn(3, 4, 8, 8, generator=generator)
    mask = (torch.rand(3, 1, 8, 8, generator=generator) > 0.5).float()
    mask[2] = 0.0  # one sample with an empty mask
    for kind in ("mse", "huber", "l1"):
        pred.grad = None
        per_sample = losses.per_sample_loss(losses.elementwise_loss(pred, target, kind, 0.5), mask)
        per_sample.sum().backward()
        outside = (mask == 0).expand_as(pred)
        assert torch.isfinite(per_sample).all() and per_sample[2] == 0
        assert torch.count_nonzero(pred.grad[outside]) == 0
        assert torch.count_nonzero(pred.grad[~outside]) > 0


def test_half_area_mask_with_constant_error_equals_unmasked_loss() -> None:
    target = torch.zeros(2, 4, 8, 8)
    pred = target + 0.5
    mask = torch.zeros(2, 1, 8, 8)
    mask[..., :4] = 1.0
    elementwise = losses.elementwise_loss(pred, target, "mse", 1.0)
    unmasked = losses.per_sample_loss(elementwise, None)
    torch.testing.assert_close(losses.per_sample_loss(elementwise, mask), unmasked, **TOL)
    torch.testing.assert_close(losses.per_sample_loss(elementwise, mask * 0.25), unmasked, **TOL)


def test_masked_loss_is_area_weighted_mean() -> None:
    elementwise = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    mask = torch.tensor([[[[1.0, 0.5], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    expected = (elementwise * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * 3)
    torch.testing.assert_close(losses.per_sample_loss(elementwise, mask), expected, **TOL)
    with pytest.raises(ValueError, match="mask shape"):
        losses.per_sample_loss(elementwise, mask[:, :, :1])


def test_resize_mask_uses_area_averaging_and_clamps() -> None:
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :, :8] = 1.0
    mask[..., :4, 8:12] = 1.0  # a quarter of the top-right 8x8 cell
    resized = losses.resize_mask(mask, (2, 2))
    torch.testing.assert_close(resized, torch.tensor([[[[1.0, 0.25], [1.0, 0.0]]]]), **TOL)
    assert losses.resize_mask(mask * 3.0, (2, 2)).max() == 1.0
    with pytest.raises(ValueError, match="B, 1, H, W"):
        losses.resize_mask(torch.zeros(1, 3, 4, 4), (2, 2))


# --- offset noise and zero terminal SNR -----------------------------------------------------------


def test_offset_noise_is_per_channel_constant_with_expected_statistics() -> None:
    noise = torch.randn(2048, 4, 3, 3, generator=torch.Generator().manual_seed(1))
    shifted = losses.offset_noise(noise, 0.1, torch.Generator().manual_seed(2))
    again = losses.offset_noise(noise, 0.1, torch.Generator().manual_seed(2))
    assert shifted.shape == noise.shape and torch.equal(shifted, again)
    offset = shifted - noise
    torch.testing.assert_close(offset, offset[..., :1, :1].expand_as(offset), atol=1e-6, rtol=0)
    per_channel = offset[:, :, 0, 0] / 0.1
    assert abs(per_channel.mean().item()) < 0.05
    assert abs(per_channel.std().item() - 1.0) < 0.05
    assert losses.offset_noise(noise, 0.0, None) is noise


def test_rescale_zero_terminal_snr_equals_diffusers() -> None:
    sd_betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float32) ** 2
    betas_before = sd_betas.clone()
    ours = losses.rescale_zero_terminal_snr(sd_betas)
    torch.testing.assert_close(ours, diffusers_rescale(sd_betas.clone()), **TOL)
    torch.testing.assert_close(ours, sd_scheduler(zero_snr=True).betas, **TOL)
    assert torch.equal(sd_betas, betas_before)  # input untouched
    assert torch.cumprod(1 - ours, dim=0)[-1] == 0

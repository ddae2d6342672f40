"""One micro-batch: inputs from caches or encoders, the noisy forward pass, and the loss terms."""

from __future__ import annotations

from collections.abc import Sequence

import attrs
import torch

from dbspec.plan.model import Plan
from dbspec.runtime import losses
from dbspec.runtime.adapters import has_lora
from dbspec.runtime.cache import TensorCache
from dbspec.runtime.data import Sample, load_example, sample_rng
from dbspec.runtime.text import encode, sdxl_time_ids


@attrs.define
class Parts:
    """What a step reads: models, caches, and the generator that draws all training noise."""

    plan: Plan
    unet: torch.nn.Module
    vae: torch.nn.Module
    text_encoders: list
    tokenizers: list
    noise_scheduler: object
    latent_cache: TensorCache | None
    text_cache: TensorCache | None
    device: torch.device
    generator: torch.Generator  # CPU generator: the same draws on every device; its state is checkpointed
    text_trains: bool = False  # switched off at the text encoder's stop step


@attrs.frozen
class StepResult:
    loss: torch.Tensor
    terms: dict
    files: tuple[str, ...]


def latents_for(parts: Parts, batch: Sequence[Sample], pixels: list) -> torch.Tensor:
    """Scaled latents: a fresh sample of each image's VAE posterior (cached mean/std, or encoded now)."""
    means, stds = [], []
    for sample, px in zip(batch, pixels):
        entry = parts.latent_cache.get(sample.latent_key) if parts.latent_cache and sample.latent_key else None
        if entry is None:
            with torch.no_grad():
                dist = parts.vae.encode(px[None].to(parts.device, parts.vae.dtype)).latent_dist
            entry = {"mean": dist.mean[0].float().cpu(), "std": dist.std[0].float().cpu()}
        means.append(entry["mean"])
        stds.append(entry["std"])
    mean, std = torch.stack(means), torch.stack(stds)
    noise = torch.randn(mean.shape, generator=parts.generator)
    return ((mean + std * noise) * parts.vae.config.scaling_factor).to(parts.device)


def text_for(parts: Parts, batch: Sequence[Sample]) -> dict[str, torch.Tensor]:
    plan = parts.plan
    if parts.text_cache is not None and not parts.text_trains and all(s.img.text_key for s in batch):
        entries = [parts.text_cache.get(s.img.text_key) for s in batch]
        if all(e is not None for e in entries):
            return {k: torch.stack([e[k] for e in entries]).to(parts.device) for k in entries[0]}
    with torch.set_grad_enabled(parts.text_trains):
        return encode(parts.text_encoders, parts.tokenizers, [s.img.caption for s in batch],
                      family=plan.model.family, clip_skip=plan.model.clip_skip, device=parts.device)


def unet_forward(parts: Parts, noisy, timesteps, text: dict, batch: Sequence[Sample]) -> torch.Tensor:
    kwargs = {}
    if parts.plan.model.family == "sdxl":
        ids = torch.stack([sdxl_time_ids(s.img.size, s.img.crop, s.img.bucket) for s in batch]).to(parts.device)
        kwargs["added_cond_kwargs"] = {"text_embeds": text["pooled"], "time_ids": ids}
    return parts.unet(noisy, timesteps, text["prompt_embeds"], **kwargs).sample


def run_batch(parts: Parts, batch: Sequence[Sample]) -> StepResult:
    """Forward one micro-batch and return its loss (instance term + prior term) and the terms for logging."""
    plan, loss_plan = parts.plan, parts.plan.loss
    crop_of = {d: plan.datasets[d].crop for d in {s.dataset for s in batch}}
    examples = [load_example(s.img, crop_mode=crop_of[s.dataset], flip=s.flip, rng=sample_rng(s)) for s in batch]
    latents = latents_for(parts, batch, [px for px, _ in examples])
    text = text_for(parts, batch)
    gen = parts.generator
    noise = losses.offset_noise(torch.randn(latents.shape, generator=gen), loss_plan.noise_offset, gen)
    noise = noise.to(parts.device)
    sched = parts.noise_scheduler
    timesteps = torch.randint(0, sched.config.num_train_timesteps, (len(batch),), generator=gen).to(parts.device)
    noisy = sched.add_noise(latents, noise, timesteps)
    pred = unet_forward(parts, noisy, timesteps, text, batch).float()
    alphas = sched.alphas_cumprod.to(parts.device)
    target = losses.prediction_target(latents.float(), noise.float(), timesteps, alphas, loss_plan.target)
    is_prior = torch.tensor([s.role == "class" for s in batch], device=parts.device)
    if loss_plan.prior == "base_model" and bool(is_prior.any()):
        target = torch.where(is_prior[:, None, None, None], base_prediction(parts, noisy, timesteps, text, batch),
                             target)
    elementwise = losses.elementwise_loss(pred, target, loss_plan.kind, loss_plan.huber_delta)
    per_sample = losses.per_sample_loss(elementwise, _masks(examples, latents, parts.device))
    weights = losses.min_snr_weights(alphas, timesteps, loss_plan.min_snr_gamma, loss_plan.target)
    total, terms = losses.combine_terms(per_sample, is_prior, weights, loss_plan.prior_weight)
    return StepResult(loss=total, terms=terms, files=tuple(s.img.path for s in batch))


def _masks(examples, latents: torch.Tensor, device) -> torch.Tensor | None:
    masks = [m for _, m in examples]
    if all(m is None for m in masks):
        return None
    full = [m if m is not None else torch.ones_like(next(x for x in masks if x is not None)) for m in masks]
    return losses.resize_mask(torch.stack(full), tuple(latents.shape[-2:])).to(device)


def base_prediction(parts: Parts, noisy, timesteps, text, batch) -> torch.Tensor:
    """The frozen base model's prediction: the LoRA adapter switched off, no gradient."""
    unet = parts.unet
    if not has_lora(unet):
        raise RuntimeError("a base-model prior needs a LoRA run or a frozen teacher copy")
    with torch.no_grad():
        unet.disable_adapters()
        try:
            return unet_forward(parts, noisy, timesteps, {k: v.detach() for k, v in text.items()}, batch).float()
        finally:
            unet.enable_adapters()

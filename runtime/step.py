"""One micro-batch: inputs from caches or encoders, the noisy forward pass, and the loss terms."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
import torch

from dbspec.plan.model import NoisePlan, Plan
from dbspec.runtime import losses, rollout, text_masks, weighted_prompts
from dbspec.runtime.adapters import adapters_disabled
from dbspec.runtime.cache import TensorCache
from dbspec.runtime.captions import step_captions
from dbspec.runtime.data import Sample, face_crop_of, load_example, load_mask, sample_rng
from dbspec.runtime.families import family_runtime
from dbspec.runtime.pos_crop import training_windows
from dbspec.runtime.text_dropout import drop_text


MEMO_ENTRIES = 4096  # cached posteriors kept in RAM (a 1024 px SDXL latent pair is ~0.5 MB)


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
    memo: dict = attrs.field(factory=dict)  # latent key -> posterior, read once from the cache
    teacher: torch.nn.Module | None = None  # frozen base UNet for a base-model prior in full fine-tunes
    tokens: object = None  # pivotal tuning's TokenTrainer (runtime/tokens_ti.py), None without it


@attrs.frozen
class StepResult:
    loss: torch.Tensor
    terms: dict
    files: tuple[str, ...]


def posteriors(parts: Parts, batch: Sequence[Sample]) -> list[tuple[dict, torch.Tensor | None]]:
    """Each sample's VAE posterior {"mean", "std"} and its mask (None without one).

    A cached latent needs no image decode; entries are kept in memory after their first read (the cache
    file is verified once, then reused every epoch). The samples without one are encoded together, in one
    VAE call (a batch is one bucket, so one shape).
    """
    out: list = [None] * len(batch)
    pending: list[tuple[int, torch.Tensor]] = []
    for i, sample in enumerate(batch):
        dataset = parts.plan.datasets[sample.dataset]
        crop_mode, rng = dataset.crop, sample_rng(sample)
        entry = _cached_posterior(parts, sample.latent_key)
        if entry is None:
            pixels, mask = load_example(
                sample.img,
                crop_mode=crop_mode,
                flip=sample.flip,
                rng=rng,
                color_aug=dataset.color_aug,
                face=face_crop_of(dataset, sample.img),
                upright=dataset.exif_orientation == "apply",
                mask_channel=dataset.mask_channel,
            )
            pending.append((i, pixels))
        else:
            mask = (
                load_mask(
                    sample.img,
                    crop_mode=crop_mode,
                    flip=sample.flip,
                    rng=rng,
                    upright=dataset.exif_orientation == "apply",
                    channel=dataset.mask_channel,
                )
                if sample.img.mask
                else None
            )
        out[i] = (entry, mask)
    if pending:
        pixels = torch.stack([p for _, p in pending]).to(parts.device, parts.vae.dtype)
        with torch.no_grad():
            dist = parts.vae.encode(pixels).latent_dist
        mean, std = dist.mean.float().cpu(), dist.std.float().cpu()
        for row, (i, _) in enumerate(pending):
            out[i] = ({"mean": mean[row], "std": std[row]}, out[i][1])
    return out


def _cached_posterior(parts: Parts, key: str | None) -> dict | None:
    entry = parts.memo.get(key) if key else None
    if entry is None and key and parts.latent_cache is not None:
        entry = parts.latent_cache.get(key)
        if entry is not None and len(parts.memo) < MEMO_ENTRIES:
            parts.memo[key] = entry
    return entry


def sample_latents(parts: Parts, entries: list[dict]) -> torch.Tensor:
    """Scaled latents: a fresh draw from each image's posterior, from the training generator, less the VAE's
    shift_factor where it has one (SD3, Flux), times its scaling_factor."""
    mean = torch.stack([e["mean"] for e in entries])
    std = torch.stack([e["std"] for e in entries])
    noise = torch.randn(mean.shape, generator=parts.generator)
    drawn, shift = mean + std * noise, parts.vae.config.get("shift_factor")
    if shift:
        drawn = drawn - shift
    return (drawn * parts.vae.config.scaling_factor).to(parts.device)


def _text_entry(parts: Parts, key: str) -> dict | None:
    """A cached text embedding, read from disk once per run (captions repeat every step)."""
    if key not in parts.memo:
        entry = parts.text_cache.get(key)
        if entry is None:
            return None
        parts.memo[key] = entry
    return parts.memo[key]


def text_for(
    parts: Parts, batch: Sequence[Sample], *, step: int = 0, epoch: int = 1
) -> dict[str, torch.Tensor]:
    """Prompt embeddings of the batch's captions at this step (plan.datasets[].caption_processing): cached
    entries when every caption has one, else the text encoders run now."""
    plan = parts.plan
    captions = step_captions(plan, batch, step=step, epoch=epoch)
    if parts.text_cache is not None and not parts.text_trains and all(key for _, key in captions):
        entries = [_text_entry(parts, key) for _, key in captions]
        if all(e is not None for e in entries):
            return {k: torch.stack([e[k] for e in entries]).to(parts.device) for k in entries[0]}
    texts = [text for text, _ in captions]
    trains = parts.text_trains or (parts.tokens is not None and parts.tokens.active)
    if parts.tokens is not None:
        texts = parts.tokens.expand(texts)
    with torch.set_grad_enabled(trains):
        return family_runtime(plan.model.family).encode_prompts(
            parts.text_encoders,
            parts.tokenizers,
            texts,
            clip_skip=plan.model.clip_skip,
            max_tokens=plan.model.max_tokens,
            device=parts.device,
            **weighted_prompts.encode_options(plan.model),
            **text_masks.encode_options(plan.model),
        )


def denoise(parts: Parts, noisy, timesteps, text: dict, batch: Sequence[Sample]) -> torch.Tensor:
    """The denoiser's prediction, with the family's extra conditioning for this batch."""
    family = family_runtime(parts.plan.model.family)
    extra = family.conditioning(text, batch, parts.device)
    return family.predict(parts.unet, noisy, timesteps, text, extra)


def run_batch(parts: Parts, batch: Sequence[Sample], *, step: int = 0, epoch: int = 1) -> StepResult:
    """Forward one micro-batch at optimizer step `step` (0-based) of epoch `epoch` (1-based, as kohya counts
    for caption dropout) and return its loss (instance term + prior term) and the terms for logging. Its
    denoiser forwards take random position-embedding windows where the plan says (runtime/pos_crop.py)."""
    with training_windows(parts.plan, [parts.unet, parts.teacher], parts.generator):
        return _batch_loss(parts, batch, step=step, epoch=epoch)


def _batch_loss(parts: Parts, batch: Sequence[Sample], *, step: int, epoch: int) -> StepResult:
    plan, loss_plan = parts.plan, parts.plan.loss
    loaded = posteriors(parts, batch)
    latents = sample_latents(parts, [entry for entry, _ in loaded])
    text = drop_text(
        parts, batch, text_for(parts, batch, step=step, epoch=epoch)
    )  # loss.text_encoder_dropout
    sched = parts.noise_scheduler
    objective = family_runtime(plan.model.family).objective
    drawn = draw_noise(
        loss_plan.noise,
        latents,
        parts.generator,
        sched.config.num_train_timesteps,
        timesteps=lambda batch, generator: objective.sample_timesteps(
            loss_plan, batch, generator, sched, tuple(latents.shape[-2:])
        ),
    )
    noise, noised_with, timesteps = (x.to(parts.device) for x in drawn)
    noisy = objective.add_noise(sched, latents, noised_with, timesteps)
    target = objective.target(
        sched, latents, noise, timesteps, loss_plan.target, loss_plan
    )  # unperturbed noise
    if loss_plan.rollout is not None:  # scheduled sampling: some samples start from the model's own latents
        alphas = sched.alphas_cumprod.to(parts.device)
        noisy, rolled = rolled_out(
            parts, loss_plan.rollout, latents, noised_with, timesteps, noisy, text, batch, step
        )
        own = rollout.rollout_target(latents, noisy, timesteps, alphas, loss_plan.target)
        target = torch.where(rolled[:, None, None, None], own, target)
    # what the loss compares: the prediction, or kohya's Flux transforms of it (loss.flow_prediction)
    pred = objective.output(
        loss_plan, sched, denoise(parts, noisy, timesteps, text, batch).float(), noisy, timesteps
    )
    is_prior = torch.tensor([s.role == "class" for s in batch], device=parts.device)
    if loss_plan.prior == "base_model" and bool(is_prior.any()):
        base = objective.output(
            loss_plan, sched, base_prediction(parts, noisy, timesteps, text, batch), noisy, timesteps
        )
        target = torch.where(is_prior[:, None, None, None], base, target)
    target = preserved_target(parts, batch, target, noisy, timesteps, text)
    huber_c = objective.huber_threshold(loss_plan, sched, timesteps)
    elementwise = losses.elementwise_loss(pred, target, loss_plan.kind, loss_plan.huber_delta, huber_c)
    masks = _masks([m for _, m in loaded], latents, parts.device)
    per_sample = losses.per_sample_loss(elementwise, masks, loss_plan.mask_mean)
    weights = objective.weights(loss_plan, sched, timesteps)
    combine = losses.combine_per_sample if loss_plan.prior_reduction == "per_sample" else losses.combine_terms
    total, terms = combine(per_sample, is_prior, weights, loss_plan.prior_weight)
    return StepResult(loss=total, terms=terms, files=tuple(s.img.path for s in batch))


def preserved_target(parts: Parts, batch: Sequence[Sample], target, noisy, timesteps, text) -> torch.Tensor:
    """Output preservation (plan.datasets[].preserve_output, kohya's diff_output_preservation): the rows of
    such datasets take the base model's prediction (adapter off, no gradient) on their own noisy input,
    timestep and text as target, in the form the loss compares (the objective's output). One extra denoiser
    forward over those rows only; a batch without them costs nothing."""
    rows = [i for i, s in enumerate(batch) if parts.plan.datasets[s.dataset].preserve_output]
    if not rows:
        return target
    plan, index = parts.plan, torch.tensor(rows, device=target.device)
    noisy, timesteps = noisy[index], timesteps[index]
    text = {k: v[index] for k, v in text.items()}
    kept = [batch[i] for i in rows]
    if plan.train_denoiser or parts.teacher is not None:
        base = base_prediction(parts, noisy, timesteps, text, kept)
    else:  # the adapter on the text encoder only (DBS609): the denoiser has none to switch off, and the text
        # was encoded with the adapter on, as kohya's set_multiplier(0) leaves the encoded captions
        with torch.no_grad():
            base = denoise(parts, noisy, timesteps, {k: v.detach() for k, v in text.items()}, kept).float()
    base = family_runtime(plan.model.family).objective.output(
        plan.loss, parts.noise_scheduler, base, noisy, timesteps
    )
    return target.index_put((index,), base.to(target.dtype))


def rolled_out(parts: Parts, r, latents, noise, timesteps, noisy, text, batch, step: int):
    """Scheduled sampling's input: the rollout lengths drawn from the training generator (after the noise),
    then the rolled-out samples denoised by the current model without gradients."""
    offsets = rollout.draw_offsets(r, step, len(batch), parts.generator)
    detached = {k: v.detach() for k, v in text.items()}

    def denoise_one(i: int, x, t):
        return denoise(parts, x, t, {k: v[i : i + 1] for k, v in detached.items()}, batch[i : i + 1])

    return rollout.roll_out(r, parts.noise_scheduler, denoise_one, latents, noise, timesteps, noisy, offsets)


def draw_noise(
    n: NoisePlan,
    latents: torch.Tensor,
    generator: torch.Generator,
    num_train_timesteps: int,
    timesteps: Callable[[int, torch.Generator], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(noise, the noise the latents get, timesteps) on the CPU, all from the training generator, in kohya's
    order (train_util.get_noise_noisy_latents_and_timesteps): noise, offset, multi-resolution levels,
    timesteps (`timesteps(batch, generator)` when given), input perturbation. Options that are off draw
    nothing, so their stream is a plain run's."""
    if n.max_timestep > num_train_timesteps:
        raise ValueError(
            f"loss.noise.max_timestep {n.max_timestep} is beyond the scheduler's "
            f"{num_train_timesteps} timesteps"
        )
    # The adaptive offset reads the latents' channel means: a device-host copy, only when it is on.
    means_of = latents.float().cpu() if n.adaptive_scale else None
    noise = torch.randn(latents.shape, generator=generator)
    noise = losses.offset_noise(
        noise,
        n.offset,
        generator,
        random_strength=n.offset_random_strength,
        adaptive_scale=n.adaptive_scale,
        latents=means_of,
    )
    noise = losses.multires_noise(noise, n.multires_iterations, n.multires_discount, generator)
    if timesteps is None:  # the DDPM draw; `timesteps` is the family objective's own (flow matching)
        drawn = losses.sample_timesteps(len(latents), n.min_timestep, n.max_timestep, generator)
    else:
        drawn = timesteps(len(latents), generator)
    return noise, losses.perturbed_noise(noise, n.ip_gamma, n.ip_random_strength, generator), drawn


def _masks(masks: list, latents: torch.Tensor, device) -> torch.Tensor | None:
    if all(m is None for m in masks):
        return None
    full = [m if m is not None else torch.ones_like(next(x for x in masks if x is not None)) for m in masks]
    return losses.resize_mask(torch.stack(full), tuple(latents.shape[-2:])).to(device)


def base_prediction(parts: Parts, noisy, timesteps, text, batch) -> torch.Tensor:
    """The frozen base model's prediction, no gradient: the LoRA adapter switched off, or the teacher copy."""
    text = {k: v.detach() for k, v in text.items()}
    with torch.no_grad():
        if parts.teacher is not None:
            return denoise(attrs.evolve(parts, unet=parts.teacher), noisy, timesteps, text, batch).float()
        unet = getattr(parts.unet, "module", parts.unet)  # DDP-wrapped under several processes
        with adapters_disabled(unet):
            return denoise(parts, noisy, timesteps, text, batch).float()

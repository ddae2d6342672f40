"""Evaluation at validation steps (plan.evaluation; docs/evaluation.md): the stable evaluation loss on
held-out images, CLIP-T, CLIP-I and DINO on the validation images.

Nothing here touches the training RNG streams: the evaluation noise has its own generator, re-seeded at every
evaluation (the same noise every time, so the numbers compare across steps and runs), the models run in eval
mode (no dropout draws) under a forked global RNG, and no gradient is taken. With validation.text_encoder_mode
"training" the text encoders draw their dropout from the global RNG seeded with the evaluation seed at every
evaluation, forked as well (runtime/text_mode.py).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
import torch.nn.functional as F
from PIL import Image

from dbspec.plan.model import EvaluationPlan, MetricModelPlan, Plan
from dbspec.runtime import losses, text_masks, weighted_prompts
from dbspec.runtime.cache import TensorCache
from dbspec.runtime.data import Sample, load_example
from dbspec.runtime.families import family_runtime
from dbspec.runtime.step import Parts, denoise
from dbspec.runtime.text_mode import seeded_global_rng


# --- the metric maths (pure; checked against hand computations in tests/runtime/test_evaluate.py) -----------
def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of `a` (N, D) with every row of `b` (M, D): (N, M)."""
    return F.normalize(a.double(), dim=-1) @ F.normalize(b.double(), dim=-1).T


def mean_pairwise_similarity(generated: torch.Tensor, real: torch.Tensor) -> float:
    """CLIP-I / DINO: the mean cosine similarity over all (generated, real) pairs."""
    return float(cosine_matrix(generated, real).mean())


def paired_similarity(images: torch.Tensor, texts: torch.Tensor) -> float:
    """CLIP-T: the mean cosine similarity of each image with its own prompt (row i with row i)."""
    return float(torch.diagonal(cosine_matrix(images, texts)).mean())


def band_means(per_timestep: Sequence[float], starts: Sequence[int]) -> list[float]:
    """The mean loss of each band of timesteps; `starts` holds each band's first index."""
    ends = [*starts[1:], len(per_timestep)]
    return [sum(per_timestep[s:e]) / (e - s) for s, e in zip(starts, ends)]


@attrs.define
class RunningMean:
    """kohya's validation loss recorder (evaluation.log = "kohya_running_mean"): one entry per scored loss. In
    the first epoch (0) each loss is appended, so the mean runs on over every evaluation of that epoch; later
    each overwrites the entry at its position in the evaluation (the list padded with zeros when it is
    short). The total is kept as kohya keeps it, a Python float updated in place, so the rounding is its."""

    losses: list[float] = attrs.field(factory=list)
    total: float = 0.0

    def add(self, epoch: int, position: int, loss: float) -> None:
        if epoch == 0:
            self.losses.append(loss)
        else:
            self.losses.extend([0.0] * (position + 1 - len(self.losses)))
            self.total -= self.losses[position]
            self.losses[position] = loss
        self.total += loss

    @property
    def mean(self) -> float:
        return self.total / len(self.losses) if self.losses else 0.0

    def state(self) -> dict | None:
        """What a checkpoint keeps (None: nothing recorded yet)."""
        return {"losses": list(self.losses), "total": self.total} if self.losses else None

    def restore(self, state: dict | None) -> None:
        self.losses, self.total = list(state["losses"]) if state else [], state["total"] if state else 0.0


def kohya_running_mean(record: RunningMean, losses: Sequence[float], epoch: int) -> float:
    """Feed one evaluation's losses (kohya's order: batch by batch, each at every fixed timestep) in data
    epoch `epoch` (0-based, the epoch of the step just taken), positions counted from 0 in each evaluation;
    the recorder's mean after them, what kohya logs."""
    for position, loss in enumerate(losses):
        record.add(epoch, position, loss)
    return record.mean


# --- the stable evaluation loss -----------------------------------------------------------------------------
@attrs.define
class EvalLoss:
    """Held-out latents, encoded once per run (the VAE never trains): the posterior mean, no sampling."""

    latents: dict[int, torch.Tensor] = attrs.field(factory=dict)  # by held-out image index
    masks: dict[int, torch.Tensor | None] = attrs.field(factory=dict)

    def compute(self, parts: Parts, ev: EvaluationPlan) -> tuple[float, list[float], list[float]]:
        """(mean, per-band means, every loss) of the training loss formula over held-out images x fixed
        timesteps; every loss in scoring order, image by image, each at every timestep (float32 values)."""
        plan = parts.plan
        total = parts.noise_scheduler.config.num_train_timesteps
        if any(not 0 <= t < total for t in ev.timesteps):
            raise ValueError(
                f"evaluation timesteps {ev.timesteps} reach beyond the scheduler's {total} timesteps"
            )
        if not self.latents:
            self._encode(parts, ev)
        generator = torch.Generator().manual_seed(ev.seed)  # the same noise at every evaluation
        per_image = [
            self._image_loss(parts, plan, ev, i, generator).cpu() for i in scored_images(ev)
        ]  # one CPU-GPU sync per held-out image
        per_timestep = torch.stack(per_image).double().mean(dim=0).tolist()
        every = [loss for image in per_image for loss in image.float().tolist()]
        return sum(per_timestep) / len(per_timestep), band_means(per_timestep, ev.bands), every

    def _encode(self, parts: Parts, ev: EvaluationPlan) -> None:
        for i in dict.fromkeys(scored_images(ev)):
            img = ev.holdout[i]
            index = _image_dataset(ev, i)
            crop = parts.plan.datasets[index].crop if index >= 0 else "center"
            upright = index < 0 or parts.plan.datasets[index].exif_orientation == "apply"
            channel = parts.plan.datasets[index].mask_channel if index >= 0 else "luminance"
            pixels, mask = load_example(
                img,
                crop_mode="center" if crop == "random" else crop,
                upright=upright,
                mask_channel=channel,
            )
            with torch.no_grad():
                dist = parts.vae.encode(pixels[None].to(parts.device, parts.vae.dtype)).latent_dist
            self.latents[i] = scaled_latents(parts.vae.config, dist.mean.float())
            self.masks[i] = mask

    def _image_loss(self, parts: Parts, plan: Plan, ev: EvaluationPlan, i: int, generator) -> torch.Tensor:
        """Held-out image `i` at every fixed timestep, one batch: the weighted per-timestep losses (T,)."""
        loss_plan, sched, img = plan.loss, parts.noise_scheduler, ev.holdout[i]
        family = family_runtime(plan.model.family)
        count = len(ev.timesteps)
        latents = self.latents[i].to(parts.device).expand(count, -1, -1, -1)
        noise = torch.randn(latents.shape, generator=generator).to(parts.device)
        timesteps = torch.tensor(ev.timesteps, dtype=torch.long, device=parts.device)
        sample = Sample(
            dataset=max(_image_dataset(ev, i), 0), image=i, role="instance", flip=False, aug_seed=0, img=img
        )
        with torch.no_grad():
            text = family.encode_prompts(
                parts.text_encoders,
                parts.tokenizers,
                [img.caption],
                clip_skip=plan.model.clip_skip,
                max_tokens=plan.model.max_tokens,
                device=parts.device,
                **weighted_prompts.encode_options(plan.model),
                **text_masks.encode_options(plan.model),
            )
            text = {k: v.expand(count, *v.shape[1:]) for k, v in text.items()}
            noisy = family.objective.add_noise(sched, latents, noise, timesteps)
            pred = denoise(parts, noisy, timesteps, text, [sample] * count).float()
            pred = family.objective.output(loss_plan, sched, pred, noisy, timesteps)
            target = family.objective.target(sched, latents, noise, timesteps, loss_plan.target, loss_plan)
        huber_c = family.objective.huber_threshold(loss_plan, sched, timesteps)
        elementwise = losses.elementwise_loss(
            pred, target.float(), loss_plan.kind, loss_plan.huber_delta, huber_c
        )
        mask = self.masks[i]
        if mask is not None:
            mask = losses.resize_mask(mask[None].expand(count, *mask.shape), tuple(latents.shape[-2:]))
            mask = mask.to(parts.device)
        weights = family.objective.weights(loss_plan, sched, timesteps)  # Min-SNR, ...; flow weighting
        return losses.per_sample_loss(elementwise, mask, loss_plan.mask_mean) * weights


def scaled_latents(vae_config, mean: torch.Tensor) -> torch.Tensor:
    """The posterior mean as the denoiser sees latents: less the VAE's shift_factor where it has one (SD3,
    Flux), times its scaling_factor (as runtime/step.py's sample_latents, without the draw)."""
    shift = vae_config.get("shift_factor")
    return ((mean - shift) if shift else mean) * vae_config.scaling_factor


def scored_images(ev: EvaluationPlan) -> list[int]:
    """The held-out images each evaluation scores, in order: kohya's validation loader's first batches
    (`order = "kohya_loader"`, an image once per repeat), else the first `max_images` (kohya's
    max_validation_steps at batch size 1), else all."""
    if ev.order == "kohya_loader":
        return list(ev.scored_order)
    return list(range(ev.max_images or len(ev.holdout)))


def _image_dataset(ev: EvaluationPlan, i: int) -> int:
    """The dataset held-out image `i` came from (kohya's split spans datasets; a seeded sample has one)."""
    return ev.holdout_datasets[i] if ev.holdout_datasets else ev.dataset


# --- CLIP and DINO ------------------------------------------------------------------------------------------
def load_metric_model(model: MetricModelPlan, kind: str, device: torch.device):
    """(model, processor) in eval mode on `device`: a built-in tiny model, or transformers' from a local
    folder (a hub snapshot the plan found in the cache; nothing is downloaded here)."""
    if model.source == "builtin":
        from dbspec.runtime.tiny import build_metric_model

        net, processor = build_metric_model(model.id)
    elif kind == "clip":
        from transformers import CLIPModel, CLIPProcessor

        net = CLIPModel.from_pretrained(model.path, local_files_only=True)
        processor = CLIPProcessor.from_pretrained(model.path, local_files_only=True)
    else:
        from transformers import AutoImageProcessor, AutoModel

        net = AutoModel.from_pretrained(model.path, local_files_only=True, add_pooling_layer=False)
        processor = AutoImageProcessor.from_pretrained(model.path, local_files_only=True)
    return net.to(device).eval().requires_grad_(False), processor


def _features(out) -> torch.Tensor:
    """transformers 4 returns the projected features, 5 an output whose pooler_output holds them."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def clip_image_embeddings(net, processor, images: list[Image.Image], device) -> torch.Tensor:
    inputs = processor(images=images, return_tensors="pt").to(device)
    with torch.no_grad():
        return _features(net.get_image_features(pixel_values=inputs["pixel_values"])).float().cpu()


def clip_text_embeddings(net, processor, prompts: Sequence[str], device) -> torch.Tensor:
    tokens = processor.tokenizer(
        list(prompts),
        padding="max_length",
        truncation=True,
        max_length=net.config.text_config.max_position_embeddings,
        return_tensors="pt",
    ).to(device)
    with torch.no_grad():
        out = net.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
    return _features(out).float().cpu()


def dino_embeddings(net, processor, images: list[Image.Image], device) -> torch.Tensor:
    """The CLS token of the last layer, as the DreamBooth paper's DINO metric uses."""
    inputs = processor(images=images, return_tensors="pt").to(device)
    with torch.no_grad():
        return net(pixel_values=inputs["pixel_values"]).last_hidden_state[:, 0].float().cpu()


def model_identity(model: MetricModelPlan) -> str:
    """What a reference embedding's cache key names the model by: a built-in's id, a folder's path and its
    files' sizes and times (a hub snapshot folder names its commit)."""
    if model.source == "builtin":
        return model.id
    folder = Path(model.path)
    files = sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file())
    return f"{folder}:{files}"


def reference_embeddings(
    ev: EvaluationPlan, model: MetricModelPlan, kind: str, embed, cache: TensorCache | None
) -> torch.Tensor:
    """Embeddings of the real instance images, once per run: cached by content (image hash, model identity,
    kind) like latents, so a resumed or repeated run reads them back."""
    identity = model_identity(model)
    rows = []
    for path, sha in zip(ev.references, ev.reference_shas):
        key = hashlib.sha256(f"embed-v1|{kind}|{identity}|{sha}".encode()).hexdigest()
        entry = cache.get(key) if cache is not None else None
        if entry is None:
            with Image.open(path) as image:
                entry = {"embeddings": embed([image.convert("RGB")])[0]}
            if cache is not None:
                cache.put(key, entry)
        rows.append(entry["embeddings"])
    return torch.stack(rows)


def validation_images(out: Path, step: int, prompts: Sequence[int], per_prompt: int) -> list[Image.Image]:
    folder = out / "samples" / f"step-{step:06d}"
    return [
        Image.open(folder / f"p{p:02d}-i{i:02d}.png").convert("RGB")
        for p in prompts
        for i in range(per_prompt)
    ]


@attrs.define
class Evaluator:
    """Every metric of plan.evaluation at one step; state kept across steps: held-out latents and reference
    embeddings (computed once per run)."""

    plan: Plan
    out: Path
    device: torch.device
    eval_loss: EvalLoss = attrs.field(factory=EvalLoss)
    references: dict[str, torch.Tensor] = attrs.field(factory=dict)
    record: RunningMean = attrs.field(factory=RunningMean)  # evaluation.log = "kohya_running_mean"

    def evaluate(self, parts: Parts, step: int, epoch: int = 0) -> dict:
        """The metrics row for `step` (in data epoch `epoch`, 0-based): only the keys of metrics that ran
        (the metrics.jsonl contract)."""
        ev, row = self.plan.evaluation, {}
        seeded = self.plan.validation.text_encoder_mode == "training"  # T5's dropout draws, as kohya's
        with seeded_global_rng(self.device, ev.seed) if seeded else _rng_untouched(self.device):
            if "eval_loss" in ev.metrics:
                mean, bands, every = self.eval_loss.compute(parts, ev)
                if ev.log == "kohya_running_mean":
                    mean = kohya_running_mean(self.record, every, epoch)
                row["eval_loss"], row["eval_loss_bands"] = mean, bands
            if {"clip_t", "clip_i"} & set(ev.metrics) and ev.clip_model is not None:
                row.update(self._clip(step))
            if "dino" in ev.metrics and ev.dino_model is not None:
                row.update(self._dino(step))
        return row

    def _cache(self) -> TensorCache | None:
        return TensorCache(self.plan.cache.dir, "embeddings") if self.plan.cache.dir else None

    def _clip(self, step: int) -> dict[str, float]:
        ev, v = self.plan.evaluation, self.plan.validation
        net, processor = load_metric_model(ev.clip_model, "clip", self.device)
        row = {}
        if "clip_t" in ev.metrics:
            images = validation_images(self.out, step, range(len(v.prompts)), v.images_per_prompt)
            prompts = [p for p in ev.clip_t_prompts for _ in range(v.images_per_prompt)]
            row["clip_t"] = paired_similarity(
                clip_image_embeddings(net, processor, images, self.device),
                clip_text_embeddings(net, processor, prompts, self.device),
            )
        if "clip_i" in ev.metrics and ev.subject_prompts:
            embed = lambda images: clip_image_embeddings(net, processor, images, self.device)  # noqa: E731
            if "clip" not in self.references:
                self.references["clip"] = reference_embeddings(
                    ev, ev.clip_model, "clip", embed, self._cache()
                )
            images = validation_images(self.out, step, ev.subject_prompts, v.images_per_prompt)
            row["clip_i"] = mean_pairwise_similarity(embed(images), self.references["clip"])
        return row

    def _dino(self, step: int) -> dict[str, float]:
        ev, v = self.plan.evaluation, self.plan.validation
        if not ev.subject_prompts:
            return {}
        net, processor = load_metric_model(ev.dino_model, "dino", self.device)
        embed = lambda images: dino_embeddings(net, processor, images, self.device)  # noqa: E731
        if "dino" not in self.references:
            self.references["dino"] = reference_embeddings(ev, ev.dino_model, "dino", embed, self._cache())
        images = validation_images(self.out, step, ev.subject_prompts, v.images_per_prompt)
        return {"dino": mean_pairwise_similarity(embed(images), self.references["dino"])}


@contextlib.contextmanager
def _rng_untouched(device: torch.device):
    """The global CPU (and this CUDA device's) RNG state as it was before: the evaluation draws nothing from
    the training streams, even through a library that would."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield

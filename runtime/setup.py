"""Setting up a run from the plan: device, trainable parameters, caches, pipelines for sampling."""

from __future__ import annotations

import copy

import torch

from dbspec.plan.model import Plan
from dbspec.runtime import adapters
from dbspec.runtime.cache import TensorCache, ensure_latents, ensure_text
from dbspec.runtime.data import verify_sources
from dbspec.runtime.models import Components, set_attention, to_dtype
from dbspec.runtime.quantize import quantize_frozen
from dbspec.runtime.text import encode


class DeviceError(Exception):
    """The plan was compiled for a device this machine lacks."""


def make_accelerator(plan: Plan):
    """accelerate owns devices, mixed precision (autocast, fp16 grad scaling) and multi-process wrapping."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    # accelerate keeps one global state per process; a process may run several plans (notebooks, tests,
    # `dbspec sample` after a run), so each run starts from a fresh one. The distributed state stays.
    AcceleratorState._reset_state()
    GradientState._reset_state()
    want = plan.target.device
    accelerator = Accelerator(mixed_precision=plan.precision.mixed, cpu=want == "cpu")
    got = accelerator.device.type
    if got != want:
        raise DeviceError(f"the plan was compiled for {plan.target.description or want}, but this machine runs "
                          f"on {got}: compile it here with `dbspec plan` (or `dbspec run spec.toml`)")
    if accelerator.num_processes != plan.schedule.processes:
        raise DeviceError(f"the plan was compiled for {plan.schedule.processes} process(es), but "
                          f"{accelerator.num_processes} are running: compile it with the same launcher")
    return accelerator


def component_dtype(plan: Plan, name: str) -> torch.dtype:
    return to_dtype(next(c.dtype for c in plan.precision.components if c.name == name))


def configure_models(plan: Plan, comps: Components, device: torch.device) -> tuple[list, list]:
    """Freeze, quantise, attach adapters, set dtypes and checkpointing as each ComponentPlan says;
    return (unet params, text params) that train."""
    for module in (comps.unet, comps.vae, *comps.text_encoders):
        adapters.freeze(module)
    comps.vae.to(device, dtype=component_dtype(plan, "vae"))
    set_attention(comps.unet, plan.precision.attention)
    unet_params = _prepare(comps.unet, "unet", plan, device, plan.adapter.unet_targets, plan.schedule.seed)
    text_params: list = []
    for i, (name, enc) in enumerate(zip(TEXT_NAMES, comps.text_encoders)):
        text_params += _prepare(enc, name, plan, device, plan.adapter.text_encoder_targets, plan.schedule.seed + 1 + i)
    return unet_params, text_params


TEXT_NAMES = ("text_encoder", "text_encoder_2")


def _prepare(module: torch.nn.Module, name: str, plan: Plan, device: torch.device, targets: tuple[str, ...],
             seed: int) -> list:
    comp = next(c for c in plan.precision.components if c.name == name)
    # The dtype is settled before quantising: quantised weights cannot change dtype afterwards.
    module.to(device, dtype=to_dtype(comp.dtype))
    if comp.quantized != "none":
        quantize_frozen(module, comp.quantized)
    if comp.trainable == "lora":
        adapters.add_lora(module, plan.adapter, targets, seed)
        for p in adapters.trainable_parameters(module):
            p.data = p.data.float()  # adapter weights train in fp32 beside a half-precision or quantised base
    elif comp.trainable == "full":
        module.requires_grad_(True)
    if comp.gradient_checkpointing:
        if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
            module.enable_gradient_checkpointing()
        else:  # transformers 5 renamed it; older releases only have the second name
            getattr(module, "activation_checkpointing_enable", module.gradient_checkpointing_enable)()
    return adapters.trainable_parameters(module) if comp.trainable != "frozen" else []


def set_train_mode(comps: Components, plan: Plan) -> None:
    comps.unet.train(plan.train_unet)
    for enc in comps.text_encoders:
        enc.train(plan.train_text_encoder)


def fill_caches(plan: Plan, comps: Components, device: torch.device, progress) -> tuple:
    """Encode what the caches miss; returns (latent cache, text cache, counts)."""
    latent_cache = text_cache = None
    counts = {}
    verify_sources(plan.datasets)  # before any cache hit is trusted
    if plan.cache.latents and any(img.latent_keys for d in plan.datasets for img in d.images):
        latent_cache = TensorCache(plan.cache.dir, "latents")
        vae_dtype = component_dtype(plan, "vae")

        def encode_pixels(pixels):
            dist = comps.vae.encode(pixels.to(device, vae_dtype)).latent_dist
            return dist.mean.float().cpu(), dist.std.float().cpu()

        counts["latents"] = ensure_latents(latent_cache, plan.datasets, encode_pixels,
                                           progress=progress)
    if plan.cache.text_embeddings:
        required = ("prompt_embeds", "pooled") if plan.model.family == "sdxl" else ("prompt_embeds",)
        text_cache = TensorCache(plan.cache.dir, "text", required=required)

        def encode_text(captions):
            out = encode(comps.text_encoders, comps.tokenizers, captions, family=plan.model.family,
                         clip_skip=plan.model.clip_skip, device=device)
            return {k: v.float().cpu() for k, v in out.items()}

        counts["text"] = ensure_text(text_cache, plan.datasets, encode_text, progress=progress)
    return latent_cache, text_cache, counts


def pipeline_for(plan: Plan, comps: Components):
    """A diffusers pipeline over the live (training) components, for validation and class images (both set
    the sampling scheduler their plan names; DDPM is only the placeholder)."""
    import diffusers

    from dbspec.runtime.models import PIPELINES

    cls = getattr(diffusers, PIPELINES[plan.model.family])
    scheduler = diffusers.DDPMScheduler.from_config(comps.scheduler_config)
    kwargs = {"unet": comps.unet, "vae": comps.vae, "text_encoder": comps.text_encoders[0],
              "tokenizer": comps.tokenizers[0], "scheduler": scheduler}
    if plan.model.family == "sdxl":
        kwargs.update(text_encoder_2=comps.text_encoders[1], tokenizer_2=comps.tokenizers[1])
        return cls(**kwargs, add_watermarker=False)
    return cls(**kwargs, safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def make_teacher(plan: Plan, comps: Components, device: torch.device) -> torch.nn.Module | None:
    """The frozen base UNet copy the plan asks for (`loss.teacher`; its memory is in the plan's estimate)."""
    if "unet" not in plan.loss.teacher:
        return None
    teacher = copy.deepcopy(comps.unet).requires_grad_(False).eval()
    dtype = torch.float32 if plan.precision.mixed == "no" else to_dtype(plan.precision.mixed)
    return teacher.to(device, dtype=dtype)

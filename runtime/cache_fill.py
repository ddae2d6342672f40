"""Filling the run's caches: latents through the VAE and prompt embeddings through the text encoders, for
every entry `cache.py`'s content-addressed stores miss."""

from __future__ import annotations

import torch

from dbspec.families import family_spec
from dbspec.plan.model import Plan
from dbspec.runtime import text_masks, weighted_prompts
from dbspec.runtime.cache import TensorCache, ensure_latents, ensure_text
from dbspec.runtime.data import Share, verify_sources
from dbspec.runtime.models import Components
from dbspec.runtime.prepare import component_dtype
from dbspec.runtime.families import family_runtime


def fill_caches(
    plan: Plan, comps: Components, device: torch.device, progress, share: Share = (0, 1)
) -> tuple:
    """Encode what the caches miss; returns (latent cache, text cache, counts). With several processes each
    verifies and fills its `share` (rank, processes) of the sources and keys (data.own_share); the caller
    waits for all of them before any process reads the caches."""
    latent_cache = text_cache = None
    counts = {}
    verify_sources(plan.datasets, share)  # before any cache hit is trusted
    if plan.cache.latents and any(img.latent_keys for d in plan.datasets for img in d.images):
        latent_cache = TensorCache(plan.cache.dir, "latents")
        vae_dtype = component_dtype(plan, "vae")

        def encode_pixels(pixels):
            dist = comps.vae.encode(pixels.to(device, vae_dtype)).latent_dist
            return dist.mean.float().cpu(), dist.std.float().cpu()

        counts["latents"] = ensure_latents(
            latent_cache, plan.datasets, encode_pixels, progress=progress, share=share
        )
    if plan.cache.text_embeddings:
        pooled = family_spec(plan.model.family).pooled_embeddings
        required = ("prompt_embeds", "pooled") if pooled else ("prompt_embeds",)
        if plan.model.t5_attention_mask and getattr(
            family_runtime(plan.model.family), "caches_t5_mask", False
        ):
            required += ("t5_mask",)  # Flux's transformer masks by it: an entry without it is damaged
        text_cache = TensorCache(plan.cache.dir, "text", required=required)

        def encode_text(captions):
            out = family_runtime(plan.model.family).encode_prompts(
                comps.text_encoders,
                comps.tokenizers,
                captions,
                clip_skip=plan.model.clip_skip,
                max_tokens=plan.model.max_tokens,
                device=device,
                **weighted_prompts.encode_options(plan.model),
                **text_masks.encode_options(plan.model),
            )
            return {k: v.float().cpu() for k, v in out.items()}

        counts["text"] = ensure_text(text_cache, plan.datasets, encode_text, progress=progress, share=share)
    return latent_cache, text_cache, counts

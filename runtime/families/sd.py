"""Stable Diffusion 1.x and 2.x: one CLIP text encoder, a UNet conditioned on its hidden states only."""

from __future__ import annotations

import diffusers
import torch

from dbspec.families import FamilySpec
from dbspec.runtime import exports, weighted_prompts
from dbspec.runtime.families.ddpm import DDPMObjective
from dbspec.runtime.text import flatten, join_windows, tokenize


class OriginalLayoutExports:
    """Single files in the original Stable Diffusion layout and kohya LoRA files (runtime/exports.py),
    keyed by the registry's prefixes and kohya facts."""

    def __init__(self, spec: FamilySpec):
        self.spec = spec

    def single_file_state(self, *, denoiser, vae, text_encoders, prediction, zero_terminal_snr) -> dict:
        return exports.single_file_state(
            unet=denoiser,
            vae=vae,
            text_encoders=text_encoders,
            family=self.spec.name,
            prediction=prediction,
            zero_terminal_snr=zero_terminal_snr,
        )

    def kohya_lora_state(self, *, denoiser, text_encoders, dtype) -> tuple[dict, dict[str, str]]:
        return exports.kohya_lora_state(
            unet=denoiser, text_encoders=text_encoders, family=self.spec.name, dtype=dtype
        )

    def kohya_metadata(self, prediction: str) -> dict[str, str]:
        return exports.kohya_family_metadata(self.spec.name, prediction)


class UNetFamily:
    """What the UNet families share: the DDPM objective, original-layout exports, loading by the registry's
    component names, the UNet call and the diffusers pipeline. SD and SDXL add their text conditioning."""

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        self.objective = DDPMObjective()
        self.exports = OriginalLayoutExports(spec)

    def load(self, plan):
        from dbspec.runtime.models import load_components

        return load_components(plan)

    def predict(self, denoiser, noisy, timesteps, text, extra) -> torch.Tensor:
        return denoiser(noisy, timesteps, text["prompt_embeds"], **extra).sample

    def pipeline_class(self) -> type:
        return getattr(diffusers, self.spec.pipeline_class)


class StableDiffusion(UNetFamily):
    def encode_prompts(
        self, text_encoders, tokenizers, prompts, *, clip_skip, max_tokens, device, weighted=False
    ) -> dict:
        """{"prompt_embeds": (B, 77, D)}, or (B, 2 + max_tokens, D) for several windows (runtime/text.py).
        clip_skip n takes the n-th layer from the end (1 = last), through the final layer norm as diffusers
        does. `weighted` reads attention syntax in the prompts (runtime/weighted_prompts.py)."""
        if weighted:
            ids, weights = weighted_prompts.tokenize(tokenizers[0], prompts, max_tokens)
        else:
            ids, weights = tokenize(tokenizers[0], prompts, max_tokens), None
        ids, windows = flatten(ids)
        ids, encoder = ids.to(device), text_encoders[0]
        if clip_skip <= 1:
            hidden = encoder(ids)[0]
        else:
            hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
            # transformers >= 5.6 drops CLIPTextModel's `text_model` level; earlier versions have it
            hidden = getattr(encoder, "text_model", encoder).final_layer_norm(hidden)
        hidden = join_windows(hidden, windows)
        return {"prompt_embeds": hidden if weights is None else weighted_prompts.apply(hidden, weights)}

    def conditioning(self, text, samples, device) -> dict:
        return {}

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        return {"prompt_embeds": text["prompt_embeds"], "negative_prompt_embeds": negative["prompt_embeds"]}


def runtime(spec: FamilySpec) -> StableDiffusion:
    return StableDiffusion(spec)

"""The SDXL refiner: OpenCLIP bigG alone (its penultimate hidden states and pooled projection, as SDXL's
second encoder) and micro-conditioning on the original size, the crop and an aesthetic score instead of the
target size (diffusers' `requires_aesthetics_score`). Sampling is img2img: validation refines dataset
images."""

from __future__ import annotations

import torch

from dbspec.runtime.families.sdxl import StableDiffusionXL


def aesthetic_time_ids(original: tuple[int, int], crop: tuple[int, int], score: float) -> torch.Tensor:
    """(orig_h, orig_w, crop_top, crop_left, aesthetic_score); sizes are given as (W, H), as diffusers'
    StableDiffusionXLImg2ImgPipeline._get_add_time_ids builds them with requires_aesthetics_score."""
    return torch.tensor([original[1], original[0], crop[1], crop[0], score], dtype=torch.float32)


class StableDiffusionXLRefiner(StableDiffusionXL):
    """encode_prompts is SDXL's over the one encoder (the loop runs once: bigG's states and its pooled
    output); the conditioning carries the plan's aesthetic score (model.aesthetic_score)."""

    aesthetic_score: float = 6.0  # the plan's, set by `load` (one plan per process trains at a time)

    def load(self, plan):
        self.aesthetic_score = plan.model.aesthetic_score
        return super().load(plan)

    def conditioning(self, text, samples, device) -> dict:
        score = self.aesthetic_score
        ids = torch.stack([aesthetic_time_ids(s.img.size, s.img.crop, score) for s in samples]).to(device)
        return {"added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": ids}}


def runtime(spec) -> StableDiffusionXLRefiner:
    return StableDiffusionXLRefiner(spec)

"""SDXL: two CLIP text encoders (penultimate hidden states, concatenated; pooled output of the second) and
micro-conditioning on image sizes and crop."""

from __future__ import annotations

import torch

from dbspec.families import FamilySpec
from dbspec.runtime import weighted_prompts
from dbspec.runtime.families.sd import UNetFamily
from dbspec.runtime.text import flatten, join_windows, tokenize


def time_ids(original: tuple[int, int], crop: tuple[int, int], bucket: tuple[int, int]) -> torch.Tensor:
    """(orig_h, orig_w, crop_top, crop_left, target_h, target_w); sizes are given as (W, H)."""
    return torch.tensor(
        [original[1], original[0], crop[1], crop[0], bucket[1], bucket[0]], dtype=torch.float32
    )


class StableDiffusionXL(UNetFamily):
    def encode_prompts(
        self, text_encoders, tokenizers, prompts, *, clip_skip, max_tokens, device, weighted=False
    ) -> dict:
        """{"prompt_embeds": (B, 77, D1 + D2), "pooled": (B, D2)}; several windows give (B, 2 + max_tokens,
        D1 + D2) and the first window's pooled output (runtime/text.py). SDXL takes the penultimate layer
        (clip_skip 1 -> hidden_states[-2]) without the final layer norm. `weighted` scales both encoders'
        hidden states by the prompts' attention syntax, not the pooled one (runtime/weighted_prompts.py)."""
        embeds, pooled = [], None
        for encoder, tokenizer in zip(text_encoders, tokenizers):
            if weighted:
                ids, weights = weighted_prompts.tokenize(tokenizer, prompts, max_tokens)
            else:
                ids, weights = tokenize(tokenizer, prompts, max_tokens), None
            ids, windows = flatten(ids)
            out = encoder(ids.to(device), output_hidden_states=True)
            hidden = join_windows(out.hidden_states[-(clip_skip + 1)], windows)
            embeds.append(hidden if weights is None else weighted_prompts.apply(hidden, weights))
            pooled = out[0][::windows]  # the projection model's text_embeds (the last encoder's)
        return {"prompt_embeds": torch.cat(embeds, dim=-1), "pooled": pooled}

    def conditioning(self, text, samples, device) -> dict:
        ids = torch.stack([time_ids(s.img.size, s.img.crop, s.img.bucket) for s in samples]).to(device)
        return {"added_cond_kwargs": {"text_embeds": text["pooled"], "time_ids": ids}}

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        if not negative_prompt and pipeline.config.get("force_zeros_for_empty_prompt", False):
            negative = {k: torch.zeros_like(v) for k, v in negative.items()}  # as the pipeline does itself
        return {
            "prompt_embeds": text["prompt_embeds"],
            "pooled_prompt_embeds": text["pooled"],
            "negative_prompt_embeds": negative["prompt_embeds"],
            "negative_pooled_prompt_embeds": negative["pooled"],
        }


def runtime(spec: FamilySpec) -> StableDiffusionXL:
    return StableDiffusionXL(spec)

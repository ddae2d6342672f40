"""Prompt encoding for SD1/SD2 (one CLIP encoder) and SDXL (two, pooled output from the second)."""

from __future__ import annotations

import torch


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids


def encode(
    text_encoders: list,
    tokenizers: list,
    prompts: list[str],
    *,
    family: str,
    clip_skip: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """{"prompt_embeds": (B, 77, D)} and, for SDXL, {"pooled": (B, D2)}.

    clip_skip n uses the n-th layer from the end (1 = last). SD1/2 apply the final layer norm to a skipped
    layer as diffusers does; SDXL always uses the penultimate layer (n = 1 -> hidden_states[-2]) without it.
    """
    if family != "sdxl":
        ids = tokenize(tokenizers[0], prompts).to(device)
        enc = text_encoders[0]
        if clip_skip <= 1:
            return {"prompt_embeds": enc(ids)[0]}
        hidden = enc(ids, output_hidden_states=True).hidden_states[-clip_skip]
        return {"prompt_embeds": enc.text_model.final_layer_norm(hidden)}
    embeds, pooled = [], None
    for enc, tok in zip(text_encoders, tokenizers):
        out = enc(tokenize(tok, prompts).to(device), output_hidden_states=True)
        embeds.append(out.hidden_states[-(clip_skip + 1)])
        pooled = out[0]  # the projection model's text_embeds (last encoder wins)
    return {"prompt_embeds": torch.cat(embeds, dim=-1), "pooled": pooled}


def sdxl_time_ids(original: tuple[int, int], crop: tuple[int, int], bucket: tuple[int, int]) -> torch.Tensor:
    """SDXL micro-conditioning: (orig_h, orig_w, crop_top, crop_left, target_h, target_w); sizes are (W, H)."""
    return torch.tensor(
        [original[1], original[0], crop[1], crop[0], bucket[1], bucket[0]], dtype=torch.float32
    )

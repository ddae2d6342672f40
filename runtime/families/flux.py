"""Flux.1 (dev): an MM-DiT (FluxTransformer2DModel) over 2x2-packed latents, trained by flow matching as
diffusers' train_dreambooth_lora_flux.py trains it:

- text: T5-XXL's last hidden state over `model.t5_max_length` tokens (prompt_embeds) and CLIP-L's pooled
  output (pooled_projections), as FluxPipeline.encode_prompt; text ids are zeros, image ids the latent grid.
- the noisy latents (B, 16, H, W) are packed into (B, H/2 * W/2, 64) tokens, the timestep is sigma (t / 1000),
  the guidance embedding gets the plan's training guidance (3.5), and the output is unpacked to (B, 16, H, W).
- model.t5_attention_mask (kohya's --apply_t5_attn_mask): T5 runs with its padding mask, and the transformer
  gets a boolean key mask over [text, image] tokens that drops the padded text keys in every block
  (runtime/text_masks.py); the text entry carries the mask as "t5_mask".
"""

from __future__ import annotations

import diffusers
import torch
from diffusers import FluxPipeline

from dbspec.families import FamilySpec
from dbspec.runtime.families.flow import FlowMatchingObjective
from dbspec.runtime.families.sd3 import _t5, t5_inputs
from dbspec.runtime.flux_kohya import FluxExports
from dbspec.runtime.text_masks import TEXT_KEY_MASK, joint_key_mask, widen_text_key_masks


class Flux:
    own_prompt_encoding = True  # validation prompts go through encode_prompts (the plan's T5 length)
    caches_t5_mask = True  # with model.t5_attention_mask its text entries hold "t5_mask"

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        self.objective = FlowMatchingObjective()
        self.exports = FluxExports(spec)  # kohya's Flux LoRA layout (runtime/flux_kohya.py)
        self.guidance = spec.train_guidance  # the plan's loss.flow.guidance is this family fact

    def load(self, plan):
        from dbspec.runtime.models import load_components

        comps = load_components(plan)
        # one object serves every run in the process: set from each plan (loss.flow_guidance, or the family's)
        flow = plan.loss.flow
        self.guidance = flow.guidance if flow is not None and flow.guidance else self.spec.train_guidance
        comps.tokenizers[1].model_max_length = plan.model.t5_max_length  # read by encode_prompts
        return comps

    def encode_prompts(
        self, text_encoders, tokenizers, prompts, *, clip_skip, max_tokens, device, t5_mask: bool = False
    ) -> dict:
        """{"prompt_embeds": (B, T5 length, D_t5), "pooled": (B, D_clip)} (CLIP's pooled output; clip_skip
        does not apply: Flux reads no CLIP hidden state). `t5_mask` (model.t5_attention_mask): T5 runs with
        its padding mask, returned as "t5_mask" (B, T5 length), 1 for the prompt's tokens, which `predict`
        turns into the transformer's key mask (kohya's apply_t5_attn_mask)."""
        clip, tokenizer = text_encoders[0], tokenizers[0]
        ids = tokenizer(
            prompts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids
        pooled = clip(ids.to(device), output_hidden_states=False).pooler_output
        length = tokenizers[1].model_max_length
        t5 = _t5(text_encoders[1], tokenizers[1], prompts, length, device, t5_mask)
        if not t5_mask:
            return {"prompt_embeds": t5, "pooled": pooled}
        mask = t5_inputs(tokenizers[1], prompts, length).attention_mask.to(device, torch.float32)
        return {"prompt_embeds": t5, "pooled": pooled, "t5_mask": mask}

    def conditioning(self, text, samples, device) -> dict:
        return {"pooled_projections": text["pooled"]}

    def predict(self, denoiser, noisy, timesteps, text, extra) -> torch.Tensor:
        b, c, h, w = noisy.shape
        embeds = text["prompt_embeds"]
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        guidance = (
            torch.full((b,), self.guidance, device=noisy.device)
            if getattr(
                getattr(denoiser, "module", denoiser).config, "guidance_embeds", False
            )  # DDP-wrapped too
            else None
        )
        tokens = FluxPipeline._pack_latents(noisy, b, c, h, w)
        if "t5_mask" in text:  # model.t5_attention_mask: no query attends to the padded text keys
            mask = joint_key_mask(text["t5_mask"], tokens.shape[1])
            joint = {**(extra.get("joint_attention_kwargs") or {}), "attention_mask": mask}
            extra = {**extra, "joint_attention_kwargs": joint}
        packed = denoiser(
            hidden_states=tokens,
            timestep=timesteps / 1000,
            guidance=guidance,
            encoder_hidden_states=embeds,
            txt_ids=text_ids,
            img_ids=image_ids,
            **extra,
        ).sample
        return FluxPipeline._unpack_latents(packed, h, w, 1)  # (h, w) latent sides at scale 1: (B, C, h, w)

    def pipeline_class(self) -> type:
        return getattr(diffusers, self.spec.pipeline_class)

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        # Flux dev is guidance-distilled: no negative prompt unless true CFG is asked for (it is not here).
        inputs = {"prompt_embeds": text["prompt_embeds"], "pooled_prompt_embeds": text["pooled"]}
        if "t5_mask" in text:  # widened to the sample's image tokens inside each transformer call
            widen_text_key_masks(pipeline.transformer)
            inputs["joint_attention_kwargs"] = {TEXT_KEY_MASK: text["t5_mask"]}
        return inputs


def runtime(spec: FamilySpec) -> Flux:
    return Flux(spec)

"""Stable Diffusion 3 / 3.5: an MM-DiT (SD3Transformer2DModel) trained by flow matching, conditioned on three
text encoders the way StableDiffusion3Pipeline.encode_prompt joins them:

- CLIP-L and CLIP-G (CLIPTextModelWithProjection): the penultimate hidden states (clip_skip 1 -> -2, as the
  pipeline's clip_skip=None), concatenated on the feature axis and zero-padded to T5's width; their pooled
  projections concatenated -> `pooled_projections`.
- T5-XXL (T5EncoderModel): its last hidden state over `model.t5_max_length` tokens (padded to that length).
- prompt_embeds = [CLIP (77 tokens) ; T5 (t5_max_length tokens)] on the token axis.
- model.t5_attention_mask / clip_attention_mask (kohya's --apply_t5_attn_mask / --apply_lg_attn_mask): T5 /
  CLIP-L and CLIP-G run with their tokenizers' padding masks; the outputs are used as they come (not zeroed)
  and the transformer takes no mask, as kohya's sd3_train_network.py.
"""

from __future__ import annotations

import diffusers
import torch

from dbspec.families import FamilySpec
from dbspec.runtime.families.flow import FlowMatchingObjective


class DiffusersOnlyExports:
    """SD3 writes the diffusers layouts only (the folder, or pytorch_lora_weights.safetensors, which
    StableDiffusion3Pipeline.load_lora_weights loads); the compiler refuses other formats (DBS381)."""

    def __init__(self, spec: FamilySpec):
        self.spec = spec

    def _refuse(self, what: str):
        raise NotImplementedError(f"{self.spec.title} models have no {what} export (DBS381)")

    def single_file_state(self, *, denoiser, vae, text_encoders, prediction, zero_terminal_snr) -> dict:
        self._refuse("single_file")

    def kohya_lora_state(self, *, denoiser, text_encoders, dtype) -> tuple[dict, dict[str, str]]:
        self._refuse("kohya_lora")

    def kohya_metadata(self, prediction: str) -> dict[str, str]:
        self._refuse("kohya_lora")


def _clip(
    encoder, tokenizer, prompts: list[str], clip_skip: int, device, masked: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden states at clip_skip, pooled output); `masked`: with the tokenizer's padding mask
    (model.clip_attention_mask, kohya's apply_lg_attn_mask)."""
    inputs = tokenizer(
        prompts,
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    )
    mask = inputs.attention_mask.to(device) if masked else None
    out = encoder(inputs.input_ids.to(device), attention_mask=mask, output_hidden_states=True)
    return out.hidden_states[-(clip_skip + 1)], out[0]


def t5_inputs(tokenizer, prompts: list[str], max_length: int):
    """T5's token ids and padding mask (1 for the prompt's tokens and its end token), padded to max_length."""
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_tensors="pt",
    )


def _t5(
    encoder, tokenizer, prompts: list[str], max_length: int, device, masked: bool = False
) -> torch.Tensor:
    """T5's last hidden state; `masked`: with the padding mask (model.t5_attention_mask), so no token attends
    to the padding (kohya's apply_t5_attn_mask)."""
    inputs = t5_inputs(tokenizer, prompts, max_length)
    mask = inputs.attention_mask.to(device) if masked else None
    return encoder(inputs.input_ids.to(device), attention_mask=mask)[0]


class StableDiffusion3:
    own_prompt_encoding = True  # validation prompts go through encode_prompts (T5 length, clip_skip)

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        self.objective = FlowMatchingObjective()
        from dbspec.runtime.sd3_kohya import SD3Exports

        self.exports = SD3Exports(spec)  # kohya's SD3 LoRA layout (runtime/sd3_kohya.py)

    def load(self, plan):
        from dbspec.runtime.models import load_components

        comps = load_components(plan)
        # T5's sequence length is the plan's (model.t5_max_length); encode_prompts reads the tokenizer's.
        comps.tokenizers[2].model_max_length = plan.model.t5_max_length
        return comps

    def encode_prompts(
        self,
        text_encoders,
        tokenizers,
        prompts,
        *,
        clip_skip,
        max_tokens,
        device,
        t5_mask: bool = False,
        clip_mask: bool = False,
    ) -> dict:
        """{"prompt_embeds": (B, 77 + T5 length, D_t5), "pooled": (B, D_l + D_g)}; one CLIP window
        (the compiler refuses model.max_tokens beyond 75 for SD3). `t5_mask`, `clip_mask`: the encoders run
        with their padding masks (kohya's cached SD3 outputs); the transformer takes no mask."""
        clip_l, pooled_l = _clip(text_encoders[0], tokenizers[0], prompts, clip_skip, device, clip_mask)
        clip_g, pooled_g = _clip(text_encoders[1], tokenizers[1], prompts, clip_skip, device, clip_mask)
        t5 = _t5(text_encoders[2], tokenizers[2], prompts, tokenizers[2].model_max_length, device, t5_mask)
        clip = torch.cat([clip_l, clip_g], dim=-1)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return {
            "prompt_embeds": torch.cat([clip.to(t5.dtype), t5], dim=-2),
            "pooled": torch.cat([pooled_l, pooled_g], dim=-1),
        }

    def drop_text_encoders(self, text: dict, dropped, text_encoders, tokenizers) -> dict:
        """loss.text_encoder_dropout: zeros where a sample's encoder output was dropped (`dropped`: per
        sample, [CLIP-L, CLIP-G, T5]), as kohya's Sd3TextEncodingStrategy does: CLIP-L's features of the CLIP
        tokens and its part of the pooled embedding, CLIP-G's likewise, T5's tokens. Out of place (a trained
        encoder gets no gradient through a zeroed row)."""
        embeds, pooled = text["prompt_embeds"], text["pooled"]
        device = embeds.device
        drop = torch.tensor(dropped, dtype=torch.bool, device=device)  # (B, 3)
        l_width = text_encoders[0].config.hidden_size
        g_width = text_encoders[1].config.hidden_size
        clip_tokens = embeds.shape[1] - tokenizers[2].model_max_length  # [CLIP ; T5] on the token axis
        feature = torch.arange(embeds.shape[2], device=device)
        is_clip = (torch.arange(embeds.shape[1], device=device) < clip_tokens)[None, :, None]
        in_l = (feature < l_width)[None, None, :]
        in_g = ((feature >= l_width) & (feature < l_width + g_width))[None, None, :]
        zero = (
            (drop[:, 0, None, None] & is_clip & in_l)
            | (drop[:, 1, None, None] & is_clip & in_g)
            | (drop[:, 2, None, None] & ~is_clip)
        )
        l_pooled = (torch.arange(pooled.shape[1], device=device) < text_encoders[0].config.projection_dim)[
            None
        ]
        zero_pooled = (drop[:, 0, None] & l_pooled) | (drop[:, 1, None] & ~l_pooled)
        return {
            **text,
            "prompt_embeds": embeds.masked_fill(zero, 0),
            "pooled": pooled.masked_fill(zero_pooled, 0),
        }

    def conditioning(self, text, samples, device) -> dict:
        return {"pooled_projections": text["pooled"]}

    def predict(self, denoiser, noisy, timesteps, text, extra) -> torch.Tensor:
        return denoiser(
            hidden_states=noisy, timestep=timesteps, encoder_hidden_states=text["prompt_embeds"], **extra
        ).sample

    def pipeline_class(self) -> type:
        return getattr(diffusers, self.spec.pipeline_class)

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        return {
            "prompt_embeds": text["prompt_embeds"],
            "pooled_prompt_embeds": text["pooled"],
            "negative_prompt_embeds": negative["prompt_embeds"],
            "negative_pooled_prompt_embeds": negative["pooled"],
        }


def runtime(spec: FamilySpec) -> StableDiffusion3:
    return StableDiffusion3(spec)

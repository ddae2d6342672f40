"""Chroma: Flux's MM-DiT (ChromaTransformer2DModel) without CLIP-L and the guidance embedding, trained by flow
matching as kohya sd-scripts' flux_train_network.py trains it with `--model_type chroma`:

- text: T5-XXL's last hidden state over `model.t5_max_length` tokens, always encoded with T5's padding mask
  (kohya requires --apply_t5_attn_mask; diffusers' ChromaPipeline does the same); the entry carries the mask
  as "t5_mask". No pooled CLIP output: the approximator (distilled_guidance_layer) computes every block's
  modulation from the timestep, a guidance value and the modulation index.
- attention: the transformer attends to the prompt's tokens plus one padding token, as keys, in every double
  and single block (kohya's chroma_models.py: txt_seq_len = mask.sum() + attn_padding 1, the rest trimmed;
  ChromaPipeline's `mask_indices <= seq_lengths`). diffusers' own mask is the outer product of a token mask,
  which SDPA reads as an additive float bias and which its gradient-checkpointed single blocks drop, so the
  runtime passes a boolean key mask to each attention itself (`_KeyMasks`).
- guidance: kohya feeds --guidance_scale (Chroma: 0.0, its docs require it) to the approximator as
  timestep_embedding(guidance) (x1000); diffusers' embedding fixes guidance 0. A nonzero loss.flow_guidance
  replaces that part of the approximator's input with kohya's embedding of the value.
- the noisy latents are packed into 2x2 tokens and unpacked as for Flux; timestep = sigma (t / 1000).
"""

from __future__ import annotations

import diffusers
import torch
from diffusers import FluxPipeline
from diffusers.models.embeddings import get_timestep_embedding
from torch.utils.weak import WeakIdKeyDictionary

from dbspec.families import FamilySpec
from dbspec.runtime.families.flow import FlowMatchingObjective
from dbspec.runtime.families.sd3 import t5_inputs
from dbspec.runtime.flux_kohya import FluxExports
from dbspec.runtime.text_masks import joint_key_mask

TEXT_KEYS = "chroma_text_keys"  # (B, T) text keys in joint_attention_kwargs, taken out by _KeyMasks


def text_keys(t5_mask: torch.Tensor, padding: int) -> torch.Tensor:
    """T5's (B, T) padding mask -> the text keys Chroma attends: the prompt's tokens (its end token included)
    and the first `padding` padding tokens (the registry's t5_mask_padding: kohya's attn_padding 1),
    booleans."""
    lengths = t5_mask.sum(dim=1, keepdim=True) + padding
    return torch.arange(t5_mask.shape[1], device=t5_mask.device)[None, :] < lengths


class _KeyMasks:
    """A boolean key mask for every attention of a ChromaTransformer2DModel call.

    The call's (B, T) text keys (joint_attention_kwargs[TEXT_KEYS]) are bound to the rotary embedding that
    call computes (its pos_embed output), which every block hands to its attention, recomputations under
    gradient checkpointing included; each attention looks its mask up there. A call without text keys
    (diffusers' pipeline) gets its own (B, 1, L, L) token-mask product reduced to the key mask of its last
    row (an image token's: every image key and the kept text keys), as booleans."""

    def __init__(self):
        self.pending: tuple[torch.Tensor, int] | None = None
        self.bound = WeakIdKeyDictionary()  # rotary cos tensor -> (B, 1, 1, L) key mask

    def install(self, transformer: torch.nn.Module) -> None:
        if getattr(transformer, "_dbspec_key_masks", None) is not None:
            return
        transformer.register_forward_pre_hook(self._take, with_kwargs=True)
        transformer.pos_embed.register_forward_hook(self._bind)
        for module in transformer.modules():
            if isinstance(module, diffusers.models.transformers.transformer_flux.FluxAttention):
                module.register_forward_pre_hook(self._apply, with_kwargs=True)
        transformer._dbspec_key_masks = self

    def _take(self, module, args, kwargs):
        extra = kwargs.get("joint_attention_kwargs")
        if not extra or TEXT_KEYS not in extra:
            self.pending = None
            return None
        extra = dict(extra)
        self.pending = (extra.pop(TEXT_KEYS), kwargs["hidden_states"].shape[0])
        return args, {**kwargs, "joint_attention_kwargs": extra or None}

    def _bind(self, module, args, output):
        if self.pending is not None:
            keys, batch = self.pending
            cos = output[0]
            self.bound[cos] = joint_key_mask(keys.to(cos.device), cos.shape[0] - keys.shape[1], batch)
            self.pending = None

    def _apply(self, module, args, kwargs):
        rope = kwargs.get("image_rotary_emb")
        mask = self.bound.get(rope[0]) if rope is not None else None
        given = kwargs.get("attention_mask")
        if mask is None and given is not None and given.dim() == 4 and given.shape[-2] > 1:
            mask = given[:, :, -1:, :].bool()  # the pipeline's product mask: its last (image) query's row
        if mask is None:
            return None
        return args, {**kwargs, "attention_mask": mask}


class Chroma:
    own_prompt_encoding = True  # validation prompts go through encode_prompts (the plan's T5 length)
    caches_t5_mask = True  # its text entries hold "t5_mask"

    def __init__(self, spec: FamilySpec):
        self.spec = spec
        self.objective = FlowMatchingObjective()
        self.exports = FluxExports(spec)  # kohya's lora_flux layout (runtime/flux_kohya.py)
        self.guidance = spec.train_guidance
        self.masks = _KeyMasks()

    def load(self, plan):
        from dbspec.runtime.models import load_components

        comps = load_components(plan)
        flow = plan.loss.flow  # one object serves every run in the process: set from each plan
        self.guidance = flow.guidance if flow is not None and flow.guidance else self.spec.train_guidance
        comps.tokenizers[0].model_max_length = plan.model.t5_max_length  # read by encode_prompts
        self.masks.install(comps.unet)
        return comps

    def encode_prompts(
        self, text_encoders, tokenizers, prompts, *, clip_skip, max_tokens, device, t5_mask: bool = True
    ) -> dict:
        """{"prompt_embeds": (B, T5 length, D_t5), "t5_mask": (B, T5 length)}: T5 always encodes with its
        padding mask (Chroma's definition; model.t5_attention_mask is implied), 1 for the prompt's tokens."""
        tokenizer = tokenizers[0]
        inputs = t5_inputs(tokenizer, prompts, tokenizer.model_max_length)
        mask = inputs.attention_mask.to(device)
        embeds = text_encoders[0](inputs.input_ids.to(device), attention_mask=mask)[0]
        return {"prompt_embeds": embeds, "t5_mask": mask.to(torch.float32)}

    def conditioning(self, text, samples, device) -> dict:
        return {}

    def predict(self, denoiser, noisy, timesteps, text, extra) -> torch.Tensor:
        b, c, h, w = noisy.shape
        embeds = text["prompt_embeds"]
        inner = getattr(denoiser, "module", denoiser)  # DDP-wrapped too
        self.masks.install(inner)
        image_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, noisy.device, noisy.dtype)
        text_ids = torch.zeros(embeds.shape[1], 3, device=noisy.device, dtype=noisy.dtype)
        keys = text_keys(text["t5_mask"], self.spec.t5_mask_padding)
        joint = {**(extra.get("joint_attention_kwargs") or {}), TEXT_KEYS: keys}
        with _guided(inner, self.guidance):
            packed = denoiser(
                hidden_states=FluxPipeline._pack_latents(noisy, b, c, h, w),
                timestep=timesteps / 1000,
                encoder_hidden_states=embeds,
                txt_ids=text_ids,
                img_ids=image_ids,
                **{**extra, "joint_attention_kwargs": joint},
            ).sample
        return FluxPipeline._unpack_latents(packed, h, w, 1)  # (h, w) latent sides at scale 1: (B, C, h, w)

    def pipeline_class(self) -> type:
        return getattr(diffusers, self.spec.pipeline_class)

    def pipeline_prompt_inputs(self, pipeline, text: dict, negative: dict, negative_prompt: str) -> dict:
        # ChromaPipeline's masks: the kept text keys (prompt + one padding token), as its encode_prompt makes
        self.masks.install(pipeline.transformer)
        dtype, padding = text["prompt_embeds"].dtype, self.spec.t5_mask_padding
        inputs = {
            "prompt_embeds": text["prompt_embeds"],
            "prompt_attention_mask": text_keys(text["t5_mask"], padding).to(dtype),
        }
        if negative:
            inputs["negative_prompt_embeds"] = negative["prompt_embeds"]
            inputs["negative_prompt_attention_mask"] = text_keys(negative["t5_mask"], padding).to(dtype)
        return inputs


class _guided:
    """kohya's guidance input to Chroma's approximator (get_mod_vectors: timestep_embedding(guidance), x1000)
    in place of diffusers' fixed 0, for a nonzero value; nothing otherwise."""

    def __init__(self, transformer, guidance: float):
        self.embed, self.guidance, self.handle = transformer.time_text_embed, float(guidance), None

    def _hook(self, module, args, output):
        channels = module.time_proj.num_channels
        value = torch.full((output.shape[0],), self.guidance * 1000, device=output.device)
        guidance = get_timestep_embedding(value, channels, flip_sin_to_cos=True, downscale_freq_shift=0)
        output = output.clone()
        output[..., channels : 2 * channels] = guidance.to(output.dtype)[:, None, :]
        return output

    def __enter__(self):
        if self.guidance:
            self.handle = self.embed.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        if self.handle is not None:
            self.handle.remove()


def runtime(spec: FamilySpec) -> Chroma:
    return Chroma(spec)

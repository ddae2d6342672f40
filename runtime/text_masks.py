"""Text attention masks (model.t5_attention_mask, model.clip_attention_mask; kohya's `--apply_t5_attn_mask`,
`--apply_lg_attn_mask`): the keywords the families' encode_prompts take for them, and Flux's key mask over
its joint [text, image] token sequence.

Flux (kohya's flux_models.py): the padded text tokens are masked as keys in every joint and single block;
every query (text and image alike) attends to the prompt's tokens and every image token. diffusers'
FluxTransformer2DModel hands `joint_attention_kwargs["attention_mask"]` to each block's attention processor,
which gives it to SDPA: a boolean (B, 1, 1, T + I) mask, True where a key is attended.
"""

from __future__ import annotations

import torch

TEXT_KEY_MASK = "text_key_mask"  # a (B, T) text mask in joint_attention_kwargs, widened by the hook below


def encode_options(model) -> dict:
    """encode_prompts' keywords for the plan's model: {"t5_mask": True} and {"clip_mask": True} for the masks
    it turns on, else nothing (families without the encoder take no such keyword; the compiler refuses them,
    DBS530, DBS531)."""
    options = {}
    if model.t5_attention_mask:
        options["t5_mask"] = True
    if model.clip_attention_mask:
        options["clip_mask"] = True
    return options


def joint_key_mask(text_mask: torch.Tensor, image_tokens: int, batch: int | None = None) -> torch.Tensor:
    """A (B, T) text mask (nonzero: a prompt token) -> (B, 1, 1, T + image_tokens) booleans: the text keys it
    keeps and every image key. `batch`: the denoiser's batch, when prompts were repeated per image."""
    keep = text_mask.bool()
    if batch is not None and batch != keep.shape[0]:
        keep = keep.repeat_interleave(batch // keep.shape[0], dim=0)
    images = torch.ones(keep.shape[0], image_tokens, dtype=torch.bool, device=keep.device)
    return torch.cat([keep, images], dim=1)[:, None, None, :]


def _widen_text_key_mask(module, args, kwargs):
    """Forward pre-hook: joint_attention_kwargs' `text_key_mask` -> `attention_mask` over text and image
    tokens (the image count is the call's, which a pipeline decides from the sample size)."""
    extra = kwargs.get("joint_attention_kwargs")
    if not extra or TEXT_KEY_MASK not in extra:
        return None
    extra = dict(extra)
    hidden = kwargs["hidden_states"]
    text = extra.pop(TEXT_KEY_MASK).to(hidden.device)
    extra["attention_mask"] = joint_key_mask(text, hidden.shape[1], batch=hidden.shape[0])
    return args, {**kwargs, "joint_attention_kwargs": extra}


def widen_text_key_masks(transformer: torch.nn.Module) -> None:
    """Let `transformer` take a text key mask in joint_attention_kwargs (pipelines pass those through; the
    image token count is known only inside the call). Installed once per module."""
    if not getattr(transformer, "_dbspec_text_key_mask", False):
        transformer.register_forward_pre_hook(_widen_text_key_mask, with_kwargs=True)
        transformer._dbspec_text_key_mask = True

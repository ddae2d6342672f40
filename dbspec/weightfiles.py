"""Per-component weight files (model.denoiser_file, model.text_encoder_files, a model.vae file): where each
component's tensors sit in a file, from its tensor names alone. Torch-free: the plan checks files with it
(from the safetensors header) and the runtime loads them with it, so both read a file the same way.

Layouts read:
- a denoiser alone (Black Forest Labs' Flux file, SD3's MMDiT, a U-Net), original or diffusers keys, with or
  without `model.diffusion_model.`; a full single-file checkpoint holds one too;
- a text encoder in transformers' layout (CLIP, T5), with or without CLIP's `text_model.` level and under any
  container prefix: `text_encoders.clip_l.transformer.` (SD3 single files), `cond_stage_model.transformer.`;
- an autoencoder in the original (LDM) or diffusers layout, with or without `first_stage_model.` / `vae.`.
"""

from __future__ import annotations

from collections.abc import Iterable

from dbspec.families import FamilySpec, TextEncoderSpec

DENOISER_PREFIX = "model.diffusion_model."
CLIP_MARKER = "embeddings.token_embedding.weight"
T5_MARKER = "encoder.block.0.layer.0.SelfAttention.k.weight"
OPENCLIP_MARKER = "transformer.resblocks.0.attn.in_proj_weight"
CLIP_LEVEL = "text_model."  # CLIP's inner level: kept by some transformers versions and files, not by others
VAE_PREFIXES = ("first_stage_model.", "vae.", "")
# tensors a text-encoder file may hold that the model does not need: buffers, CLIP's contrastive scale
HARMLESS = ("embeddings.position_ids", "logit_scale")


def marker(encoder: TextEncoderSpec) -> str:
    """The tensor (relative to the encoder's root) every file of this encoder holds."""
    return T5_MARKER if encoder.model_class.startswith("T5") else CLIP_MARKER


def canonical(key: str) -> str:
    """A text-encoder key without CLIP's `text_model.` level (files and models differ on it)."""
    return key[len(CLIP_LEVEL) :] if key.startswith(CLIP_LEVEL) else key


def encoder_prefixes(keys: Iterable[str], encoder: TextEncoderSpec) -> list[str]:
    """The container prefixes under which `keys` hold an encoder of this kind (`text_model.` left out; CLIP
    in OpenCLIP's layout too)."""
    keys = list(keys)
    mark = marker(encoder)
    found = []
    for key in keys:
        if key.endswith(mark) and (key == mark or key[: -len(mark)].endswith(".")):
            prefix = key[: -len(mark)]
            prefix = prefix[: -len(CLIP_LEVEL)] if prefix.endswith(CLIP_LEVEL) else prefix
            found.append(prefix)
    if mark == CLIP_MARKER:
        found += openclip_prefixes(keys)
    return sorted(set(found))


def openclip_prefixes(keys: Iterable[str]) -> list[str]:
    """The prefixes of CLIP text encoders in OpenCLIP's original layout (SD2's, SDXL's second encoder in
    single files: `transformer.resblocks.*`, `token_embedding.weight`, `text_projection`)."""
    found = {k[: -len(OPENCLIP_MARKER)] for k in keys if k.endswith(OPENCLIP_MARKER)}
    return sorted(p for p in found if p == "" or p.endswith("."))


def is_openclip(keys: Iterable[str], prefix: str) -> bool:
    return f"{prefix}{OPENCLIP_MARKER}" in set(keys)


def encoder_prefix(keys: Iterable[str], encoder: TextEncoderSpec) -> str | None:
    """The one container prefix of this encoder in `keys`: the only one found, or the family's single-file
    prefix where a checkpoint holds several (SD3: CLIP-L and CLIP-G); None when there is none or no way to
    choose. A CLIP encoder may be in OpenCLIP's layout (is_openclip tells)."""
    keys = list(keys)
    found = encoder_prefixes(keys, encoder)
    if encoder.single_file_prefix in found:
        return encoder.single_file_prefix
    return found[0] if len(found) == 1 else None


def encoder_tensors(keys: Iterable[str], prefix: str) -> dict[str, str]:
    """canonical key -> file key of the tensors under `prefix`."""
    return {canonical(k[len(prefix) :]): k for k in keys if k.startswith(prefix)}


def what_it_holds(keys: Iterable[str]) -> str:
    """A few words on what a file seems to hold, for messages."""
    keys = list(keys)
    kinds = []
    if any(k.endswith(T5_MARKER) for k in keys):
        kinds.append("a T5 encoder")
    if any(k.endswith(CLIP_MARKER) for k in keys):
        kinds.append("a CLIP text encoder")
    if any(k.endswith(OPENCLIP_MARKER) for k in keys):
        kinds.append("an OpenCLIP text encoder (original layout)")
    stripped = [k[len(DENOISER_PREFIX) :] if k.startswith(DENOISER_PREFIX) else k for k in keys]
    for name, prefixes in (
        ("a Flux transformer", ("double_blocks.", "single_transformer_blocks.")),
        ("an SD3 transformer", ("joint_blocks.", "pos_embed.proj.weight")),
        ("a U-Net", ("input_blocks.", "down_blocks.")),
    ):
        if any(k.startswith(prefixes) for k in stripped):
            kinds.append(name)
    if vae_prefix(keys) is not None:
        kinds.append("an autoencoder")
    return (
        ", ".join(kinds)
        or f"none of dbspec's components ({len(keys)} tensors, e.g. `{min(keys, default='')}`)"
    )


def holds_denoiser(keys: Iterable[str], family: FamilySpec) -> bool:
    prefixes = family.denoiser_file_keys
    return any(
        (k[len(DENOISER_PREFIX) :] if k.startswith(DENOISER_PREFIX) else k).startswith(prefixes) for k in keys
    )


def vae_prefix(keys: Iterable[str]) -> str | None:
    """The prefix of an autoencoder's tensors (original `encoder.down.`, diffusers `encoder.down_blocks.`)."""
    keys = set(keys)
    for prefix in VAE_PREFIXES:
        if any(k.startswith((f"{prefix}encoder.down.", f"{prefix}encoder.down_blocks.")) for k in keys):
            return prefix
    return None


def vae_latent_channels(shapes: dict[str, tuple[int, ...]], prefix: str) -> int | None:
    """The latent channels of an autoencoder file (its decoder's first convolution's input), if it says."""
    shape = shapes.get(f"{prefix}decoder.conv_in.weight")
    return shape[1] if shape is not None and len(shape) == 4 else None

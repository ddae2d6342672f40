"""A tiny model's components as separate files in the layouts kohya's Flux/SD3 scripts read: the Flux
transformer in Black Forest Labs' original layout, the autoencoder in the original (LDM) layout, CLIP and T5
in transformers' layout, and SD3's text encoders inside a checkpoint under its single-file prefixes."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from dbspec.families import family_spec
from dbspec.runtime import flux_original
from dbspec.runtime.exports import _VAE_CONV_ATTENTION, clip_path, rename, vae_table


def flux_to_original(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers' FluxTransformer2DModel keys -> Black Forest Labs' (the inverse of runtime/flux_original.py's
    tables; its round trip is checked against the model, its forward direction against diffusers')."""
    top = {v: k for k, v in flux_original._TOP.items()}
    double = {v: k for k, v in flux_original._DOUBLE.items()}
    single = {v: k for k, v in flux_original._SINGLE.items()}
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if module == "norm_out.linear":
            out[f"final_layer.adaLN_modulation.1.{param}"] = flux_original.swap_halves(value)
            continue
        if module in top:
            out[f"{top[module]}.{param}"] = value
            continue
        kind, i, child = module.split(".", 2)
        if kind == "transformer_blocks":
            for original, parts in flux_original._DOUBLE_QKV.items():
                if child in parts:
                    fused.setdefault(f"double_blocks.{i}.{original}.{param}", [None] * 3)[
                        parts.index(child)
                    ] = value
                    break
            else:
                name = double[child]
                out[f"double_blocks.{i}.{name}.{'scale' if name.endswith('_norm') else param}"] = value
        elif child in flux_original._SINGLE_FUSED:
            fused.setdefault(f"single_blocks.{i}.linear1.{param}", [None] * 4)[
                flux_original._SINGLE_FUSED.index(child)
            ] = value
        else:
            name = single[child]
            out[f"single_blocks.{i}.{name}.{'scale' if name.endswith('_norm') else param}"] = value
    for key, parts in fused.items():
        out[key] = torch.cat(parts, dim=0)
    return out


_SD3_TOP = {
    "pos_embed.proj": "x_embedder.proj",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
    "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
    "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
    "context_embedder": "context_embedder",
    "proj_out": "final_layer.linear",
}
_SD3_BLOCK = {
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}
_SD3_QKV = {
    "x_block.attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "context_block.attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
    "x_block.attn2.qkv": ("attn2.to_q", "attn2.to_k", "attn2.to_v"),
}


def sd3_to_original(state: dict[str, torch.Tensor], prefix: str = "model.diffusion_model.") -> dict:
    """diffusers' SD3Transformer2DModel keys -> Stability's MMDiT layout (the inverse of diffusers'
    convert_sd3_transformer_checkpoint_to_diffusers, written from its names; the last block's context
    modulation and the final layer's hold (shift, scale) where diffusers holds (scale, shift))."""
    last = max(int(k.split(".")[1]) for k in state if k.startswith("transformer_blocks."))
    out: dict[str, torch.Tensor] = {}
    fused: dict[str, list] = {}
    for key, value in state.items():
        module, param = key.rsplit(".", 1)
        if key == "pos_embed.pos_embed":
            out[prefix + "pos_embed"] = value
        elif module == "norm_out.linear":
            out[f"{prefix}final_layer.adaLN_modulation.1.{param}"] = flux_original.swap_halves(value)
        elif module in _SD3_TOP:
            out[f"{prefix}{_SD3_TOP[module]}.{param}"] = value
        else:
            _, i, child = module.split(".", 2)
            block = f"{prefix}joint_blocks.{i}."
            qkv = next(((o, parts) for o, parts in _SD3_QKV.items() if child in parts), None)
            if qkv is not None:
                fused.setdefault(f"{block}{qkv[0]}.{param}", [None] * 3)[qkv[1].index(child)] = value
            elif child == "norm1_context.linear" and int(i) == last:
                out[f"{block}{_SD3_BLOCK[child]}.{param}"] = flux_original.swap_halves(value)
            else:
                out[f"{block}{_SD3_BLOCK[child]}.{param}"] = value
    for key, parts in fused.items():
        out[key] = torch.cat(parts, dim=0)
    return out


def vae_to_original(vae: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """An AutoencoderKL's weights in the original (LDM) layout, as Flux's ae.safetensors (no prefix)."""
    table = vae_table(vae.config)
    out = {}
    for key, value in vae.state_dict().items():
        original = rename(key, table)
        conv = _VAE_CONV_ATTENTION.search(original) and value.ndim == 2
        out[prefix + original] = (value[:, :, None, None] if conv else value).contiguous()
    return out


def clip_file_state(encoder: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """A CLIP text encoder as its published files hold it (`text_model.` level, no buffers)."""
    return {
        prefix + clip_path(k): v.contiguous()
        for k, v in encoder.state_dict().items()
        if not k.endswith("position_ids")
    }


def t5_file_state(encoder: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """T5's encoder as t5xxl_fp16.safetensors holds it: the tied input embedding once, as `shared.weight`."""
    return {
        prefix + k: v.contiguous()
        for k, v in encoder.state_dict().items()
        if k != "encoder.embed_tokens.weight"
    }


def write_flux_files(pipe, folder: Path, *, denoiser_prefix: str = "") -> dict[str, Path]:
    """kohya's four Flux files: flux1 (BFL layout), clip_l, t5xxl, ae."""
    folder.mkdir(parents=True, exist_ok=True)
    states = {
        "flux1.safetensors": {
            denoiser_prefix + k: v.contiguous()
            for k, v in flux_to_original(pipe.transformer.state_dict()).items()
        },
        "clip_l.safetensors": clip_file_state(pipe.text_encoder),
        "t5xxl.safetensors": t5_file_state(pipe.text_encoder_2),
        "ae.safetensors": vae_to_original(pipe.vae),
    }
    out = {}
    for name, state in states.items():
        save_file(state, str(folder / name))
        out[name.split(".")[0]] = folder / name
    return out


def write_sd3_files(pipe, folder: Path) -> dict[str, Path]:
    """SD3 as kohya reads it: the transformer (Stability's layout) with the three text encoders and the
    autoencoder in one checkpoint under the single-file prefixes, CLIP-L without its projection (as
    sd3_utils.load_clip_l allows); plus separate clip_g / t5xxl files."""
    folder.mkdir(parents=True, exist_ok=True)
    prefixes = [e.single_file_prefix for e in family_spec("sd3").text_encoders]
    checkpoint = {k: v.contiguous() for k, v in sd3_to_original(pipe.transformer.state_dict()).items()}
    clip_l = clip_file_state(pipe.text_encoder, prefixes[0])
    checkpoint.update({k: v for k, v in clip_l.items() if not k.endswith("text_projection.weight")})
    checkpoint.update(clip_file_state(pipe.text_encoder_2, prefixes[1]))
    checkpoint.update(t5_file_state(pipe.text_encoder_3, prefixes[2]))
    checkpoint.update(vae_to_original(pipe.vae, "first_stage_model."))
    files = {
        "sd3.safetensors": checkpoint,
        "clip_g.safetensors": clip_file_state(pipe.text_encoder_2),
        "t5xxl.safetensors": t5_file_state(pipe.text_encoder_3),
    }
    out = {}
    for name, state in files.items():
        save_file(state, str(folder / name))
        out[name.split(".")[0]] = folder / name
    return out

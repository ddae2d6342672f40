"""SD3 LoRAs in the key layout kohya sd-scripts' networks/lora_sd3.py saves: module names of Stability's
original MMDiT (`lora_unet_joint_blocks_{i}_{x_block|context_block}_...`), CLIP-L `lora_te1_*`, CLIP-G
`lora_te2_*`.

diffusers' SD3Transformer2DModel splits each attention's fused q/k/v Linear:

- joint block i: `x_block.attn.qkv` <- attn.to_q, to_k, to_v; `context_block.attn.qkv` <- attn.add_q_proj,
  add_k_proj, add_v_proj; SD3.5 medium's `x_block.attn2.qkv` <- attn2.to_q, to_k, to_v;
- `attn.proj` <- attn.to_out.0 / attn.to_add_out, `mlp.fc1` / `mlp.fc2` <- ff(.context).net.0.proj / net.2,
  `adaLN_modulation.1` <- norm1.linear / norm1_context.linear.

The fused layers are written as for Flux (runtime/flux_kohya.py): parts that share one down-projection
(adapter.fused_projections) as the shared down once and the ups stacked by rows, alpha unchanged (kohya's
own LoRA on the fused layer); separate parts block-diagonally, alpha times the number of parts. The
adaLN Linears whose diffusers form holds (scale, shift) where the original holds (shift, scale) (the last
block's context modulation and the final layer, AdaLayerNormContinuous) have their up rows swapped.
kohya's loader scales by alpha / (rows of lora_down), as its LoRAModule does. A LoCon with LyCORIS's weight
decomposition (lycoris.kohya's dora_wd) adds each module's `dora_scale`, one magnitude per output row of
the original Linear, as the Flux writer does. LoCon's Tucker form on the patch convolution (LyCORIS's
use_tucker, locon_tucker.py) adds its `lora_mid.weight` (rank, rank, 2, 2) beside the 1x1 `lora_down` /
`lora_up`: LyCORIS's LoConModule layout, which lycoris.kohya's network loads."""

from __future__ import annotations

import torch
from torch import nn

from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.exports import _kohya_lora_layers, checked_layers, clip_path
from dbspec.runtime.flux_kohya import _entry, _fuse, _widths, dora_scales, fused_parts, stacked_dora_scales

# diffusers child path inside transformer_blocks.{i} -> (original name inside joint_blocks_{i}, part index)
_BLOCK = {
    "attn.to_q": ("x_block_attn_qkv", 0),
    "attn.to_k": ("x_block_attn_qkv", 1),
    "attn.to_v": ("x_block_attn_qkv", 2),
    "attn.to_out.0": ("x_block_attn_proj", None),
    "attn.add_q_proj": ("context_block_attn_qkv", 0),
    "attn.add_k_proj": ("context_block_attn_qkv", 1),
    "attn.add_v_proj": ("context_block_attn_qkv", 2),
    "attn.to_add_out": ("context_block_attn_proj", None),
    "attn2.to_q": ("x_block_attn2_qkv", 0),
    "attn2.to_k": ("x_block_attn2_qkv", 1),
    "attn2.to_v": ("x_block_attn2_qkv", 2),
    "attn2.to_out.0": ("x_block_attn2_proj", None),
    "ff.net.0.proj": ("x_block_mlp_fc1", None),
    "ff.net.2": ("x_block_mlp_fc2", None),
    "ff_context.net.0.proj": ("context_block_mlp_fc1", None),
    "ff_context.net.2": ("context_block_mlp_fc2", None),
    "norm1.linear": ("x_block_adaLN_modulation_1", None),
    "norm1_context.linear": ("context_block_adaLN_modulation_1", None),
}
_TOP = {
    "pos_embed.proj": "x_embedder_proj",  # the patch convolution (LyCORIS's full preset: LoCon)
    "context_embedder": "context_embedder",
    "time_text_embed.timestep_embedder.linear_1": "t_embedder_mlp_0",
    "time_text_embed.timestep_embedder.linear_2": "t_embedder_mlp_2",
    "time_text_embed.text_embedder.linear_1": "y_embedder_mlp_0",
    "time_text_embed.text_embedder.linear_2": "y_embedder_mlp_2",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
    "proj_out": "final_layer_linear",
}
TEXT_PREFIXES = (
    "lora_te1",
    "lora_te2",
    "lora_te3",
)  # networks/lora_sd3.py: CLIP-L, CLIP-G, T5-XXL (train.t5)


def original_name(path: str) -> tuple[str, int | None]:
    """(kohya module name without lora_unet_, part index in a fused layer or None) of a diffusers
    SD3Transformer2DModel module path; ValueError for a module the original model has no place for."""
    parts = path.split(".")
    if len(parts) > 2 and parts[0] == "transformer_blocks":
        hit = _BLOCK.get(".".join(parts[2:]))
        if hit is not None:
            return f"joint_blocks_{parts[1]}_{hit[0]}", hit[1]
    elif path in _TOP:
        return _TOP[path], None
    raise ValueError(f"`{path}` has no place in kohya's SD3 LoRA layout (networks/lora_sd3.py)")


def swapped(path: str, denoiser: nn.Module) -> bool:
    """The Linear feeds an AdaLayerNormContinuous, which reads (scale, shift) where the original reads
    (shift, scale) (`denoiser`: without peft's wrapper; the LoRA and LyCORIS writers share it)."""
    parent = denoiser.get_submodule(path.rsplit(".", 1)[0])
    return type(parent).__name__ == "AdaLayerNormContinuous"


def kohya_sd3_tensors(denoiser: nn.Module, dtype: torch.dtype, parts) -> dict[str, torch.Tensor]:
    """kohya tensors (`lora_unet_<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`) of the
    transformer's LoRA; up/down in `dtype`, alpha fp32; `parts`: the family's fused layers (fused_parts)."""
    layers = {name: (down, up, r, a) for name, down, up, r, a in _kohya_lora_layers(denoiser, folded=True)}
    found = lora_adapter(denoiser)
    plain = found[0] if found else denoiser
    widths = _widths(plain)
    fused: dict[tuple[str, str], dict[int, str]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for path, (down, up, _rank, alpha) in layers.items():
        name, part = original_name(path)
        if part is not None:
            fused.setdefault((".".join(path.split(".")[:2]), name), {})[part] = path
            continue
        down, up = down.detach().float(), up.detach().float()
        if swapped(path, plain):
            scale, shift = up.chunk(2, dim=0)
            up = torch.cat([shift, scale], dim=0)
        tensors.update(_entry(name, down, up, alpha, dtype))
        mid = _tucker_core(denoiser, path)
        if mid is not None:  # LoCon's Tucker form (LyCORIS's LoConModule with use_tucker)
            tensors[f"lora_unet_{name}.lora_mid.weight"] = mid.detach().to("cpu", dtype).contiguous()
    for (block, name), present in fused.items():
        tensors.update(_fuse(block, name, present, layers, widths, dtype, parts))
    tensors.update(_sd3_dora_scales(plain, denoiser, dtype, parts))
    return tensors


def _tucker_core(denoiser: nn.Module, path: str) -> torch.Tensor | None:
    """The `lora_mid` weight of the LoCon Tucker layer at `path` (locon_tucker.TuckerConv2d), else None."""
    found = lora_adapter(denoiser)
    if found is None:
        return None
    module, adapter = found
    mids = getattr(module.get_submodule(path), "lora_mid", None)
    return mids[adapter].weight if mids is not None and adapter in mids else None


def _sd3_dora_scales(plain: nn.Module, denoiser: nn.Module, dtype, parts) -> dict[str, torch.Tensor]:
    """LyCORIS's `dora_scale` of each kohya module on kohya's MMDiT (flux_kohya.stacked_dora_scales), the
    last block's context modulation's halves back in kohya's (shift, scale) order."""
    return stacked_dora_scales(denoiser, dtype, parts, original_name, lambda path, name: swapped(path, plain))


def model_type(denoiser: nn.Module) -> str:
    """kohya's SD3 model type (its ss_base_model_version), as library/sd3_utils.py reads it from the weights:
    RMS q/k norms with a second image attention "5-medium", without "5-large", no q/k norms "medium"."""
    config = getattr(denoiser, "config", {})
    if not config.get("qk_norm"):
        return "medium"
    return "5-medium" if config.get("dual_attention_layers") else "5-large"


class SD3Exports:
    """SD3's export layouts: kohya's SD3 LoRA (`kohya_lora`); no single file (DBS381)."""

    def __init__(self, spec):
        from dbspec.runtime.families.sd3 import DiffusersOnlyExports

        self.spec = spec
        self._refused = DiffusersOnlyExports(spec)

    def single_file_state(self, *, denoiser, vae, text_encoders, prediction, zero_terminal_snr) -> dict:
        return self._refused.single_file_state(
            denoiser=denoiser,
            vae=vae,
            text_encoders=text_encoders,
            prediction=prediction,
            zero_terminal_snr=zero_terminal_snr,
        )

    def kohya_lora_state(self, *, denoiser, text_encoders, dtype) -> tuple[dict, dict[str, str]]:
        """The run's LoRAs in kohya's SD3 layout and the ss_* keys about them (network dim and alpha as
        trained; ss_base_model_version: the model type kohya reads from the weights)."""
        cast = to_dtype(dtype)
        tensors: dict[str, torch.Tensor] = {}
        ranks: set[int] = set()
        alphas: set[float] = set()
        version = {}
        found = lora_adapter(denoiser) if denoiser is not None else None
        if found is not None:
            tensors.update(kohya_sd3_tensors(denoiser, cast, fused_parts(self.spec)))
            for _, _, _, rank, alpha in _kohya_lora_layers(denoiser):
                ranks.add(rank)
                alphas.add(alpha)
            version = {"ss_base_model_version": model_type(found[0])}
        for prefix, encoder in zip(TEXT_PREFIXES, text_encoders):
            for name, down, up, rank, alpha in _kohya_lora_layers(encoder, folded=True):
                # T5-XXL's modules keep transformers' paths (kohya's lora_te3_encoder_block_...)
                path = name if prefix == "lora_te3" else clip_path(name)
                key = f"{prefix}_{path.replace('.', '_')}"
                tensors.update(_entry_te(key, down, up, alpha, cast))
                ranks.add(rank)
                alphas.add(alpha)
            for name, scale in dora_scales(encoder).items():
                path = name if prefix == "lora_te3" else clip_path(name)
                tensors[f"{prefix}_{path.replace('.', '_')}.dora_scale"] = (
                    scale.detach().to("cpu", cast).contiguous()
                )
        out, dims = checked_layers(tensors, ranks, alphas)
        return out, {**dims, **version}

    def kohya_metadata(self, prediction: str) -> dict[str, str]:
        """What sd3_train_network.py writes about the model (its network module; no v-prediction)."""
        return {"ss_network_module": "networks.lora_sd3", "ss_v2": "False", "ss_v_parameterization": "False"}


def _entry_te(key: str, down, up, alpha: float, cast) -> dict[str, torch.Tensor]:
    return {
        f"{key}.lora_down.weight": down.detach().to("cpu", cast, copy=True).contiguous(),
        f"{key}.lora_up.weight": up.detach().to("cpu", cast, copy=True).contiguous(),
        f"{key}.alpha": torch.tensor(alpha, dtype=torch.float32),
    }

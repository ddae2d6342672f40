"""Flux LoRAs in the key layout kohya sd-scripts' networks/lora_flux.py saves (and ComfyUI, Forge and
diffusers' `FluxPipeline.load_lora_weights` load): module names of Black Forest Labs' original Flux model.

dbspec trains peft LoRAs on diffusers' FluxTransformer2DModel, whose attention has separate q, k and v
projections; the original model has one fused Linear per group:

- double block i: `img_attn.qkv` <- attn.to_q, to_k, to_v; `txt_attn.qkv` <- attn.add_q_proj, add_k_proj,
  add_v_proj (in that order);
- single block i: `linear1` <- attn.to_q, to_k, to_v and proj_mlp (q, k, v, then the MLP input).

Parts trained with one shared down-projection (adapter.fused_projections, runtime/fused.py) are written as
kohya's own LoRA on the fused layer: that down once (rank r) and the parts' ups stacked by rows, alpha
unchanged. Otherwise a fused layer's LoRA stacks the parts' down weights (rank R = the sum of the parts'
ranks) and places each part's up weight on the block diagonal, so up @ down is the parts' updates, each on its
own rows; this is the file kohya writes when it trains with `split_qkv` (networks/lora_flux.py state_dict). A
part the run did not adapt (single blocks: proj_mlp with the default targets) is a zero block of the first
part's rank, so every block has one rank and loaders that split the layer again (diffusers) see kohya's shape.
Loaders scale by alpha / (rows of lora_down), so the fused alpha is the parts' scale times R: alpha / rank is
kept exactly (parts with different scales have the ratio folded into their up blocks). kohya's own `split_qkv`
writer stacks the same tensors but keeps the part's alpha, so its fused layers load at 1/3 (1/4) of the
trained scale; the down/up tensors here are bit-identical to its (checked in a scratch run of its code).

The last layer: diffusers' norm_out.linear holds (scale, shift) where the original
final_layer.adaLN_modulation.1 holds (shift, scale), so its up rows are swapped; diffusers' converter
ignores the final layer's alpha, so its scale is folded into lora_up and alpha is the rank (scale 1 for
every loader).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn

from dbspec.flow_layout import CHROMA_TOP
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.exports import _kohya_lora_layers, checked_layers, clip_path

Layer = tuple[torch.Tensor, torch.Tensor, int, float]  # (lora_down, lora_up, rank, alpha)

# diffusers child path -> (original module name, part index in the fused layer or None)
_DOUBLE = {
    "attn.to_q": ("img_attn_qkv", 0),
    "attn.to_k": ("img_attn_qkv", 1),
    "attn.to_v": ("img_attn_qkv", 2),
    "attn.to_out.0": ("img_attn_proj", None),
    "attn.add_q_proj": ("txt_attn_qkv", 0),
    "attn.add_k_proj": ("txt_attn_qkv", 1),
    "attn.add_v_proj": ("txt_attn_qkv", 2),
    "attn.to_add_out": ("txt_attn_proj", None),
    "ff.net.0.proj": ("img_mlp_0", None),
    "ff.net.2": ("img_mlp_2", None),
    "ff_context.net.0.proj": ("txt_mlp_0", None),
    "ff_context.net.2": ("txt_mlp_2", None),
    "norm1.linear": ("img_mod_lin", None),
    "norm1_context.linear": ("txt_mod_lin", None),
}
_SINGLE = {
    "attn.to_q": ("linear1", 0),
    "attn.to_k": ("linear1", 1),
    "attn.to_v": ("linear1", 2),
    "proj_mlp": ("linear1", 3),
    "proj_out": ("linear2", None),
    "norm.linear": ("modulation_lin", None),
}
_TOP = {
    "x_embedder": "img_in",
    "context_embedder": "txt_in",
    "time_text_embed.timestep_embedder.linear_1": "time_in_in_layer",
    "time_text_embed.timestep_embedder.linear_2": "time_in_out_layer",
    "time_text_embed.text_embedder.linear_1": "vector_in_in_layer",
    "time_text_embed.text_embedder.linear_2": "vector_in_out_layer",
    "time_text_embed.guidance_embedder.linear_1": "guidance_in_in_layer",
    "time_text_embed.guidance_embedder.linear_2": "guidance_in_out_layer",
    "norm_out.linear": "final_layer_adaLN_modulation_1",
    "proj_out": "final_layer_linear",
    # Chroma's approximator (LyCORIS builds its Linears from a preset file or a --dim_from_weights file)
    **{
        ours: kohya.replace(".", "_")
        for kohya, ours in CHROMA_TOP.items()
        if kohya.startswith("distilled_guidance_layer.")
    },
}
_FINAL = ("final_layer_adaLN_modulation_1", "final_layer_linear")  # diffusers' converter drops their alpha
_SWAPPED = "final_layer_adaLN_modulation_1"
# kohya's networks/lora_flux.py prefixes: CLIP-L, T5-XXL (Chroma: T5-XXL alone, still lora_te3)
TEXT_PREFIXES = ("lora_te1", "lora_te3")


def original_name(path: str) -> tuple[str, int | None]:
    """(kohya module name without the lora_unet_ prefix, part index in a fused layer or None) of a diffusers
    FluxTransformer2DModel module path; ValueError for a module the original model has no place for."""
    parts = path.split(".")
    if len(parts) > 2 and parts[0] in ("transformer_blocks", "single_transformer_blocks"):
        table, kind = (_DOUBLE, "double") if parts[0] == "transformer_blocks" else (_SINGLE, "single")
        hit = table.get(".".join(parts[2:]))
        if hit is not None:
            return f"{kind}_blocks_{parts[1]}_{hit[0]}", hit[1]
    elif path in _TOP:
        return _TOP[path], None
    raise ValueError(f"`{path}` has no place in kohya's Flux LoRA layout (networks/lora_flux.py)")


def kohya_flux_tensors(
    layers: Mapping[str, Layer], out_features: Mapping[str, int], dtype: torch.dtype, parts: Mapping
) -> dict[str, torch.Tensor]:
    """kohya tensors (`lora_unet_<name>.lora_down.weight`, `.lora_up.weight`, `.alpha`) of the transformer's
    LoRA `layers` (diffusers module path -> (down, up, rank, alpha)); `out_features`: each Linear's output
    width by path (what an unadapted part of a fused layer spans). Up/down in `dtype`, alpha fp32."""
    fused: dict[tuple[str, str], dict[int, str]] = {}  # (block prefix, name) -> part index -> path
    tensors: dict[str, torch.Tensor] = {}
    for path, (down, up, rank, alpha) in layers.items():
        name, part = original_name(path)
        if part is not None:  # a block's fused layer: transformer_blocks.{i} / single_transformer_blocks.{i}
            fused.setdefault((".".join(path.split(".")[:2]), name), {})[part] = path
            continue
        down, up = down.detach().float(), up.detach().float()
        if name in _FINAL:  # scale folded into up, alpha = rank: scale 1 wherever alpha is read or not
            up, alpha = up * (alpha / rank), float(rank)
        if name == _SWAPPED:
            shift, scale = up.chunk(2, dim=0)
            up = torch.cat([scale, shift], dim=0)
        tensors.update(_entry(name, down, up, alpha, dtype))
    for (block, name), present in fused.items():
        tensors.update(_fuse(block, name, present, layers, out_features, dtype, parts))
    return tensors


def fused_parts(spec) -> dict[str, tuple[str, ...]]:
    """The family registry's fused layers: kohya name inside a block -> the diffusers children, in the
    original layer's row order."""
    return {g.kohya_name: g.parts for g in spec.fused_projections}


def _fuse(block, name, present, layers, out_features, dtype, parts) -> dict[str, torch.Tensor]:
    """The fused layer `name` of `block` from its parts' LoRAs (`present`: part index -> diffusers path);
    `parts`: the family's fused layers (fused_parts)."""
    children = parts[name.split("_", 3)[-1]]  # double_blocks_{i}_img_attn_qkv -> img_attn_qkv
    first = layers[present[min(present)]]
    if len(present) > 1 and all(layers[path][0] is first[0] for path in present.values()):
        return _shared(block, name, children, present, layers, out_features, dtype)
    rank, scale = first[2], first[3] / first[2]
    downs, ups = [], []
    for index, child in enumerate(children):
        path = f"{block}.{child}"
        if index in present:
            down, up, r, alpha = layers[path]
            downs.append(down.detach().float())
            ups.append(up.detach().float() * ((alpha / r) / scale))  # 1 when the scales agree
        else:
            downs.append(torch.zeros(rank, first[0].shape[1]))
            ups.append(torch.zeros(out_features[path], rank))
    return _entry(
        name, torch.cat(downs), torch.block_diag(*ups), scale * sum(d.shape[0] for d in downs), dtype
    )


def _shared(block, name, children, present, layers, out_features, dtype) -> dict[str, torch.Tensor]:
    """A fused layer whose parts share one down-projection (adapter.fused_projections, runtime/fused.py): the
    shared down once (rank r), the parts' ups stacked by rows (zero rows for a part without a LoRA), alpha
    unchanged; exactly kohya's LoRA on the fused Linear (networks.lora_flux without split_qkv)."""
    down, _, rank, alpha = layers[present[min(present)]]
    ups = []
    for index, child in enumerate(children):
        path = f"{block}.{child}"
        ups.append(
            layers[path][1].detach().float() if index in present else torch.zeros(out_features[path], rank)
        )
    return _entry(name, down.detach().float(), torch.cat(ups), alpha, dtype)


def _entry(name: str, down, up, alpha: float, dtype) -> dict[str, torch.Tensor]:
    key = f"lora_unet_{name}"
    return {
        f"{key}.lora_down.weight": down.to("cpu", dtype).contiguous(),
        f"{key}.lora_up.weight": up.to("cpu", dtype).contiguous(),
        f"{key}.alpha": torch.tensor(alpha, dtype=torch.float32),
    }


def flux_kohya_lora_state(
    *,
    denoiser: nn.Module | None,
    text_encoders: list,
    dtype: str,
    parts: Mapping,
    prefixes: tuple[str, ...] = TEXT_PREFIXES,
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The run's LoRAs in kohya's Flux layout (transformer `lora_unet_*`, CLIP-L `lora_te1_*`, T5-XXL
    `lora_te3_*` with train.t5; `prefixes`: the family's encoders' in its order) and the ss_network_dim /
    ss_network_alpha kohya writes (the trained rank and alpha, not the fused layers')."""
    cast = to_dtype(dtype)
    tensors: dict[str, torch.Tensor] = {}
    ranks: set[int] = set()
    alphas: set[float] = set()
    if denoiser is not None:
        layers = {
            name: (down, up, r, a) for name, down, up, r, a in _kohya_lora_layers(denoiser, folded=True)
        }
        found = lora_adapter(denoiser)
        widths = _widths(found[0]) if found else {}
        tensors.update(kohya_flux_tensors(layers, widths, cast, parts))
        tensors.update(_flux_dora_scales(denoiser, cast, parts))
        ranks.update(layer[2] for layer in layers.values())
        alphas.update(layer[3] for layer in layers.values())
    for prefix, encoder in zip(prefixes, text_encoders):
        for name, down, up, rank, alpha in _kohya_lora_layers(encoder, folded=True):
            # T5-XXL's modules keep transformers' paths (kohya's lora_te3_encoder_block_...)
            path = name if prefix == "lora_te3" else clip_path(name)
            key = f"{prefix}_{path.replace('.', '_')}"
            tensors.update(
                {
                    f"{key}.lora_down.weight": down.detach().to("cpu", cast, copy=True).contiguous(),
                    f"{key}.lora_up.weight": up.detach().to("cpu", cast, copy=True).contiguous(),
                    f"{key}.alpha": torch.tensor(alpha, dtype=torch.float32),
                }
            )
            ranks.add(rank)
            alphas.add(alpha)
        for name, scale in dora_scales(encoder).items():
            path = name if prefix == "lora_te3" else clip_path(name)
            tensors[f"{prefix}_{path.replace('.', '_')}.dora_scale"] = (
                scale.detach().to("cpu", cast).contiguous()
            )
    return checked_layers(tensors, ranks, alphas)


def dora_scales(module: nn.Module | None) -> dict[str, torch.Tensor]:
    """Each adapted layer's LyCORIS `dora_scale` (runtime/lycoris_dora.py) by module path; {} without."""
    from dbspec.runtime.lycoris_dora import dora_scale_of

    found = lora_adapter(module)
    if found is None:
        return {}
    module, adapter = found
    scales = {name: dora_scale_of(layer, adapter) for name, layer in module.named_modules()}
    return {name: scale for name, scale in scales.items() if scale is not None}


def _flux_dora_scales(denoiser: nn.Module, dtype: torch.dtype, parts: Mapping) -> dict[str, torch.Tensor]:
    """LyCORIS's `dora_scale` of each kohya module on kohya's Flux (stacked_dora_scales)."""
    return stacked_dora_scales(denoiser, dtype, parts, original_name, lambda path, name: name == _SWAPPED)


def stacked_dora_scales(
    denoiser: nn.Module,
    dtype: torch.dtype,
    parts: Mapping,
    kohya_name: Callable[[str], tuple[str, int | None]],
    swapped: Callable[[str, str], bool],
) -> dict[str, torch.Tensor]:
    """LyCORIS's `dora_scale` of each kohya module (lycoris.kohya's dora_wd on kohya's Flux / MMDiT: one
    magnitude per output row of the fused Linear, the parts' rows stacked in the fused layer's order, or per
    input column the one (1, in) magnitude the parts share (lycoris_dora.tie_fused_doras), a
    swapped layer's (scale, shift) halves back in kohya's (shift, scale) order); `parts`: the family's fused
    layers (fused_parts), `kohya_name`: a diffusers path's (kohya name, part index or None), `swapped`:
    whether (path, kohya name) holds its halves the other way round."""
    from dbspec.runtime.lycoris_dora import axis_of

    fused: dict[str, dict[int, torch.Tensor]] = {}
    tensors: dict[str, torch.Tensor] = {}
    for path, scale in dora_scales(denoiser).items():
        name, part = kohya_name(path)
        scale = scale.detach().float()
        if part is not None:
            fused.setdefault(name, {})[part] = scale
            continue
        if swapped(path, name) and axis_of(scale.shape) == "output":  # a column's norm spans both halves
            first, second = scale.chunk(2, dim=0)
            scale = torch.cat([second, first], dim=0)
        tensors[f"lora_unet_{name}.dora_scale"] = scale.to("cpu", dtype).contiguous()
    for name, found in fused.items():
        if len(found) != len(parts[name.split("_", 3)[-1]]):  # the compiler refuses it (DBS509)
            raise ValueError(f"`{name}`: a weight decomposition of a fused layer needs every part (DBS509)")
        if axis_of(found[min(found)].shape) == "input":  # one (1, in) magnitude the parts share (tied)
            stacked = found[min(found)]
        else:
            stacked = torch.cat([found[index] for index in sorted(found)])
        tensors[f"lora_unet_{name}.dora_scale"] = stacked.to("cpu", dtype).contiguous()
    return tensors


def _widths(module: nn.Module) -> dict[str, int]:
    """Output width of every Linear by module path (a peft-wrapped one under its own path too; quantised
    Linears of any backend carry `out_features` as well)."""
    return {
        name.removesuffix(".base_layer"): int(layer.out_features)
        for name, layer in module.named_modules()
        if isinstance(getattr(layer, "out_features", None), int)
    }


class FluxExports:
    """Flux's export layouts: kohya's Flux LoRA (`kohya_lora`); no single file (the compiler refuses it,
    DBS381)."""

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
        from dbspec.families import flow_text_prefixes

        return flux_kohya_lora_state(
            denoiser=denoiser,
            text_encoders=text_encoders,
            dtype=dtype,
            parts=fused_parts(self.spec),
            prefixes=tuple(p.rstrip("_") for p in flow_text_prefixes(self.spec.name)),
        )

    def kohya_metadata(self, prediction: str) -> dict[str, str]:
        """What flux_train_network.py writes about the model (ss_network_module: its network module)."""
        return {
            "ss_network_module": "networks.lora_flux",
            "ss_base_model_version": self.spec.kohya.base_version,
            "ss_v2": "False",
            "ss_v_parameterization": "False",
        }

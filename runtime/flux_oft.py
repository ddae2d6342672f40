"""kohya's networks.oft_flux file (sd-scripts networks/oft_flux.py, OFTNetwork.save_weights: its state
dict) of Diag-OFT's kohya form on diffusers' Flux (plan.adapter.kind "diag-oft", oft_form "kohya").

kohya's Flux OFTModule holds a ParameterList of blocks, one entry per part of the layer's rows (its
`split_dims`): three on the double blocks' fused `img_attn.qkv` / `txt_attn.qkv` (q, k, v), four on the single
blocks' `linear1` (q, k, v, the MLP input), one on every other Linear. Part p has `dim` blocks of width / dim
rows, its own constraint alpha x its width, its own norm clamp, and runs F.linear on its R^T W (fp32, cast to
the input's dtype) with its own bias: exactly what KohyaOftLayer (runtime/lycoris_oft.py) computes on
diffusers' separate part (attn.to_q, to_k, to_v, proj_mlp). So each kohya module's file entry is the parts'
blocks in the original layer's row order, `oft_unet_<kohya Flux name>.oft_blocks.<p>` (dim, size, size), and
one `.alpha` (kohya's alpha, the constraint per row), named as runtime/flux_kohya.py names the layers. A
part the run does not adapt is written as zero blocks: the identity rotation, its rows unchanged as here."""

from __future__ import annotations

import torch
from torch import nn

from dbspec.families import family_spec
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.flux_kohya import fused_parts, original_name

PREFIX = "oft_unet_"  # OFTNetwork.OFT_PREFIX_UNET, `.` as `_`


def flux_oft_state(unet: nn.Module, family: str, dtype: str) -> dict[str, torch.Tensor]:
    """Every OFT module's tensors under kohya's Flux name: the blocks cast to `dtype`, alphas in fp32."""
    from dbspec.runtime.lycoris_oft import KohyaOftLayer

    found = lora_adapter(unet)
    if found is None:
        raise ValueError("no adapter layers to export: the transformer carries no peft adapter")
    module, adapter = found
    cast = to_dtype(dtype)
    groups: dict[str, tuple[str, dict[int, KohyaOftLayer]]] = {}  # kohya name -> (block path, part -> layer)
    for path, layer in module.named_modules():
        if isinstance(layer, KohyaOftLayer) and adapter in layer.lora_oft_blocks:
            name, part = original_name(path)
            block = ".".join(path.split(".")[:2])
            groups.setdefault(name, (block, {}))[1][part or 0] = layer
    if not groups:
        raise ValueError('no kohya OFT layers to export (adapter.form = "kohya")')
    parts = fused_parts(family_spec(family))
    tensors: dict[str, torch.Tensor] = {}
    for name, (block, layers) in sorted(groups.items()):
        alphas = {float(layer.lora_alpha[adapter]) for layer in layers.values()}
        if len(alphas) > 1:
            raise ValueError(f"{name}: its parts have constraints {sorted(alphas)}; kohya's module has one")
        children = parts.get(name.split("_", 3)[-1], ("",))  # the fused layer's parts, else the layer alone
        count = next(iter(layers.values())).r[adapter]
        for index, child in enumerate(children):
            layer = layers.get(index)
            if layer is not None:
                blocks = layer.lora_oft_blocks[adapter].detach()
            else:  # an unadapted part of a fused layer: zero blocks, R = I
                width = _out_features(module.get_submodule(f"{block}.{child}"))
                blocks = torch.zeros(count, width // count, width // count)
            key = f"{PREFIX}{name}.oft_blocks.{index}"
            tensors[key] = blocks.to("cpu", cast, copy=True).contiguous()
        tensors[f"{PREFIX}{name}.alpha"] = torch.tensor(alphas.pop(), dtype=torch.float32)
    return tensors


def _out_features(layer: nn.Module) -> int:
    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    return int(base.weight.shape[0])


def all_linear(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the file holds a module beyond kohya's SelfAttention (the double blocks' img_attn / txt_attn):
    what networks.oft_flux builds with enable_all_linear."""
    return any("_attn_" not in key.split(".")[0] for key in tensors)

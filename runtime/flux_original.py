"""Flux transformer weights in Black Forest Labs' original layout (flux1-dev.safetensors, kohya's
`--pretrained_model_name_or_path`) -> diffusers' FluxTransformer2DModel keys, sized by the model's config.

diffusers' own converter (single_file_utils.convert_flux_transformer_checkpoint_to_diffusers) splits each
single block's fused `linear1` at Flux.1's width (3072, MLP 12288) whatever the file holds, so it loads
Flux.1 only; this one takes the width from the config (heads x head dim) and the MLP rows from the tensor,
and otherwise maps the same names (tests/runtime/test_component_files.py compares the two on a Flux.1-wide
state dict).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

PREFIX = "model.diffusion_model."
# original module -> diffusers module (their `weight`/`bias`; RMS norms' `scale` -> `weight`)
_TOP = {
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {
    "img_mod.lin": "norm1.linear",
    "txt_mod.lin": "norm1_context.linear",
    "img_attn.norm.query_norm": "attn.norm_q",
    "img_attn.norm.key_norm": "attn.norm_k",
    "txt_attn.norm.query_norm": "attn.norm_added_q",
    "txt_attn.norm.key_norm": "attn.norm_added_k",
    "img_mlp.0": "ff.net.0.proj",
    "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj",
    "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0",
    "txt_attn.proj": "attn.to_add_out",
}
_DOUBLE_QKV = {
    "img_attn.qkv": ("attn.to_q", "attn.to_k", "attn.to_v"),
    "txt_attn.qkv": ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"),
}
_SINGLE = {
    "modulation.lin": "norm.linear",
    "norm.query_norm": "attn.norm_q",
    "norm.key_norm": "attn.norm_k",
    "linear2": "proj_out",
}
_SINGLE_FUSED = ("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp")  # linear1: q, k, v, then the MLP input
_BLOCK = re.compile(r"(double_blocks|single_blocks)\.(\d+)\.(.+)\.(weight|bias|scale)$")
_TOP_KEY = re.compile(r"(.+)\.(weight|bias)$")


def is_original(keys) -> bool:
    return any(k.removeprefix(PREFIX).startswith(("double_blocks.", "single_blocks.")) for k in keys)


def block_counts(keys) -> dict[str, int]:
    """The file's own depth as config overrides (kohya's flux_utils builds its model with the file's numbers
    of double and single blocks, so pruned Flux models such as Flex.1 load): num_layers, num_single_layers."""
    out = {}
    for kind, name in (("double_blocks", "num_layers"), ("single_blocks", "num_single_layers")):
        found = {
            k.removeprefix(PREFIX).split(".")[1]
            for k in keys
            if k.removeprefix(PREFIX).startswith(f"{kind}.")
        }
        if found:
            out[name] = len(found)
    return out


def swap_halves(t: torch.Tensor) -> torch.Tensor:
    """(shift, scale) <-> (scale, shift): the final layer's modulation rows, ordered differently."""
    first, second = t.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def to_diffusers(state: Mapping[str, torch.Tensor], config: Mapping) -> dict[str, torch.Tensor]:
    """The original-layout `state` under diffusers' names; `config` is the transformer's (its width)."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    out: dict[str, torch.Tensor] = {}
    if any(k.startswith(PREFIX) for k in state):  # a full checkpoint: its transformer alone
        state = {k: v for k, v in state.items() if k.startswith(PREFIX)}
    for key, value in state.items():
        name = key.removeprefix(PREFIX)
        param = "weight" if name.endswith(".scale") else name.rsplit(".", 1)[-1]
        if name.startswith("final_layer.adaLN_modulation.1."):
            out[f"norm_out.linear.{param}"] = swap_halves(value)
        elif match := _BLOCK.match(name):
            kind, i, module = match.group(1), match.group(2), match.group(3)
            out.update(_block(kind, i, module, param, value, inner, key))
        elif (match := _TOP_KEY.match(name)) and match.group(1) in _TOP:
            out[f"{_TOP[match.group(1)]}.{param}"] = value
        else:
            raise ValueError(f"`{key}` is not a tensor of Black Forest Labs' Flux transformer")
    return out


def _block(kind: str, i: str, module: str, param: str, value, inner: int, key: str) -> dict:
    if kind == "double_blocks":
        prefix = f"transformer_blocks.{i}."
        if module in _DOUBLE_QKV:
            return {
                f"{prefix}{n}.{param}": part for n, part in zip(_DOUBLE_QKV[module], value.chunk(3, dim=0))
            }
        table = _DOUBLE
    else:
        prefix = f"single_transformer_blocks.{i}."
        if module == "linear1":
            sizes = (inner, inner, inner, value.shape[0] - 3 * inner)
            return {f"{prefix}{n}.{param}": part for n, part in zip(_SINGLE_FUSED, value.split(sizes, dim=0))}
        table = _SINGLE
    if module not in table:
        raise ValueError(f"`{key}` is not a tensor of Black Forest Labs' Flux transformer")
    return {f"{prefix}{table[module]}.{param}": value}

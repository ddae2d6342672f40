"""The original Stable Diffusion U-Net layout (`input_blocks` / `middle_block` / `output_blocks`) against
diffusers' (`down_blocks` / `mid_block` / `up_blocks`): kohya names SDXL's LoRA modules in the original
layout, one-file checkpoints keep it. Pure Python (no torch), so the converter and the runtime share one
table: the runtime renames a diffusers model's paths for its exports (`runtime/exports.py`), the converter
reads a kohya SDXL file's module names back onto diffusers' paths (`diffusers_name`)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Table = dict[str, tuple[str, dict[str, str]]]  # diffusers module path -> (original path, child renames)

# --- UNet -----------------------------------------------------------------------------------------------
_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
}


def unet_table(config: Mapping[str, Any]) -> Table:
    """Each UNet block's original path. Per down block: `layers_per_block` (resnet, attention) pairs in
    input_blocks, then the downsampler; per up block one more pair, the upsampler after the last attention."""
    per_block = config["layers_per_block"]
    if not isinstance(per_block, int):
        raise ValueError(
            f"layers_per_block {per_block!r} varies per block; the original layout cannot hold it"
        )
    span = per_block + 1
    table: Table = {name: (original, {}) for name, original in _UNET_TOP.items()}
    for i in range(len(config["down_block_types"])):
        for j in range(per_block):
            table[f"down_blocks.{i}.resnets.{j}"] = (f"input_blocks.{1 + i * span + j}.0", _RESNET)
            table[f"down_blocks.{i}.attentions.{j}"] = (f"input_blocks.{1 + i * span + j}.1", {})
        table[f"down_blocks.{i}.downsamplers.0.conv"] = (f"input_blocks.{1 + i * span + per_block}.0.op", {})
    table["mid_block.resnets.0"] = ("middle_block.0", _RESNET)
    table["mid_block.attentions.0"] = ("middle_block.1", {})
    table["mid_block.resnets.1"] = ("middle_block.2", _RESNET)
    for i, kind in enumerate(config["up_block_types"]):
        for j in range(span):
            table[f"up_blocks.{i}.resnets.{j}"] = (f"output_blocks.{i * span + j}.0", _RESNET)
            table[f"up_blocks.{i}.attentions.{j}"] = (f"output_blocks.{i * span + j}.1", {})
        slot = 2 if "CrossAttn" in kind else 1  # after the attention when the block has one
        table[f"up_blocks.{i}.upsamplers.0"] = (f"output_blocks.{i * span + per_block}.{slot}", {})
    return table


def rename(name: str, table: Table) -> str:
    """`name` (a parameter or module path) under the longest table prefix it starts with, children renamed."""
    parts = name.split(".")
    for cut in range(len(parts), 0, -1):
        hit = table.get(".".join(parts[:cut]))
        if hit is None:
            continue
        target, children = hit
        rest = ".".join(parts[cut:])
        for child, original in children.items():
            if rest == child or rest.startswith(child + "."):
                rest = original + rest[len(child) :]
                break
        return f"{target}.{rest}" if rest else target
    raise ValueError(
        f"`{name}` has no place in the original Stable Diffusion layout (a module this exporter "
        "does not know, or LoRA layers: LoRA runs export kohya_lora)"
    )


# The U-Net layout kohya's SDXL networks are named in (sdxl_original_unet.py: SDXL base's, two (resnet,
# attention) pairs per level); its inverse reads the tiny built-in's names too (a prefix of the layout).
SDXL_UNET: dict[str, Any] = {
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
}


def diffusers_name(name: str, config: Mapping[str, Any] = SDXL_UNET, sep: str = "_") -> str:
    """The diffusers path (parts joined by `sep`) of an original-layout module path whose parts are joined by
    `sep` (kohya's `input_blocks_4_1_transformer_blocks_0_attn1_to_q` after `lora_unet_`): the inverse of
    `rename(path, unet_table(config))`; ValueError for a name outside the layout."""
    best: tuple[str, str, dict[str, str]] | None = None
    for path, (original, children) in unet_table(config).items():
        key = original.replace(".", sep)
        if (name == key or name.startswith(key + sep)) and (best is None or len(key) > len(best[1])):
            best = (path, key, children)
    if best is None:
        raise ValueError(f"`{name}` has no place in the original U-Net layout")
    path, key, children = best
    rest = name[len(key) + len(sep) :]
    for child, original in children.items():
        theirs = original.replace(".", sep)
        if rest == theirs or rest.startswith(theirs + sep):
            rest = child.replace(".", sep) + rest[len(theirs) :]
            break
    return sep.join(part for part in (path.replace(".", sep), rest) if part)

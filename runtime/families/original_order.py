"""The order in which a UNet of the original (SAI/LDM) layout registers its parameters, for diffusers' UNet.

kohya's sdxl_train.py trains its own SDXL UNet (library/sdxl_original_unet.py), whose `parameters()` run in
the original layout's order: time_embed, label_emb, input_blocks, middle_block, output_blocks, out; inside a
block its numbered children in numeric order and its named sub-modules in the order the original classes
register them. diffusers' UNet2DConditionModel registers the same tensors in another order (conv_in first,
each block's resnets before its attentions, ...). Optimizers that see the tensors in sequence (kohya's
--fused_optimizer_groups cuts that sequence into chunks) need the original order: `original_order` sorts
diffusers' parameters by their original key (`exports.unet_table` / `rename`) with that structural rule.
The rule was checked against kohya's SdxlUNet2DConditionModel (all 1,680 names in sequence) and the tiny
SDXL model's table covers every tensor (tests/runtime/test_optimizer_split.py).
"""

from __future__ import annotations

from torch import nn

# Each named sub-module in the position the original classes register it among its siblings (no two
# siblings conflict, so one table serves every level): the UNet's top level; ResBlock; SpatialTransformer;
# BasicTransformerBlock; CrossAttention; FeedForward (net), GEGLU (proj), Downsample (op), Upsample (conv);
# a module's own weight before its bias.
_RANK = {
    name: rank
    for rank, name in enumerate(
        (
            "time_embed",
            "label_emb",
            "input_blocks",
            "middle_block",
            "output_blocks",
            "out",
            "in_layers",
            "emb_layers",
            "out_layers",
            "skip_connection",
            "norm",
            "proj_in",
            "transformer_blocks",
            "proj_out",
            "attn1",
            "ff",
            "attn2",
            "norm1",
            "norm2",
            "norm3",
            "to_q",
            "to_k",
            "to_v",
            "to_out",
            "net",
            "proj",
            "op",
            "conv",
            "weight",
            "bias",
        )
    )
}


def original_key_order(name: str) -> tuple:
    """The sort key of an original-layout parameter name: numbers numerically, names by `_RANK`."""
    key = []
    for part in name.split("."):
        if part.isdigit():
            key.append((0, int(part)))
        elif part in _RANK:
            key.append((1, _RANK[part]))
        else:
            raise ValueError(f"`{name}`: `{part}` has no place in the original UNet's registration order")
    return tuple(key)


def original_order(unet: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """diffusers `unet`'s parameters as (original name, parameter), in the original layout's registration
    order (kohya's SdxlUNet2DConditionModel's `named_parameters()`)."""
    from dbspec.unet_layout import rename, unet_table

    table = unet_table(unet.config)
    named = [(rename(name, table), param) for name, param in unet.named_parameters()]
    return sorted(named, key=lambda item: original_key_order(item[0]))

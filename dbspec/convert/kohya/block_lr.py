"""sdxl_train.py's `--block_lr` (23 comma-separated learning rates, one per U-Net block of kohya's own SDXL
UNet, library/sdxl_original_unet.py) to `[[optimizer.blocks]]`.

sdxl_train.py `get_block_params_to_optimize` puts each parameter of its UNet in a block by its original name:
`time_embed.` and `label_emb.` -> 0, `input_blocks.N.` -> 1 + N, `middle_block.N.` -> 10 + N,
`output_blocks.N.` -> 13 + N, `out.` -> 22; every block whose rate is not 0 becomes one optimizer group at its
rate, in block order (a block at 0 is left out of the optimizer). Each index becomes a pattern over the
diffusers parameter paths of the same tensors: time_embedding and add_embedding (0), conv_in (1,
input_blocks.0), the down blocks' resnet/attention pairs and downsamplers (2-9, `blocks.block_pattern`),
the mid block's resnet, attention, resnet (10-12), the up blocks' pairs with the upsampler in the third
(13-21), conv_norm_out and conv_out (22, out.0 and out.2). The rates take the U-Net's place:
`learning_rate` stays the text encoders' default and decides only whether the U-Net trains (kohya:
`learning_rate != 0`).
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.blocks import SDXL_BLOCKS, block_pattern
from dbspec.convert.kohya.rate_zero import adafactor_relative_step

Args = dict[str, Legacy]


def full_block_pattern(index: int) -> str:
    """The diffusers parameter-path regex of sdxl_train.py's block `index` (0-22)."""
    if index == 0:
        return r"^(time_embedding|add_embedding)\."
    if index == 1:
        return r"^conv_in\."
    if index == SDXL_BLOCKS - 1:
        return r"^(conv_norm_out|conv_out)\."
    pattern = block_pattern(index, original_names=True)
    if pattern is None:
        raise ValueError(f"no SDXL U-Net block {index}")
    return pattern


def map_block_lr(a: Args, script: str, conv: Conversion) -> None:
    if script != "sdxl_train" or "block_lr" not in a or not a["block_lr"].value:
        return  # kohya: an empty block_lr is none
    legacy = a["block_lr"]
    try:
        rates = [float(item) for item in str(legacy.value).split(",")]
    except ValueError as exc:
        conv.invalid(legacy.key, legacy.value, legacy.source, f"kohya reads each item with float(): {exc}")
        return
    if len(rates) != SDXL_BLOCKS:
        conv.invalid(
            legacy.key,
            legacy.value,
            legacy.source,
            f"block_lr must have {SDXL_BLOCKS} values (kohya asserts), got {len(rates)}",
        )
        return
    if not a["learning_rate"].value:
        conv.inert(legacy, "the U-Net does not train (learning_rate 0), so kohya reads no block rate")
        return
    why = _inexpressible(a)
    if why:
        conv.unsupported(legacy, why)
        return
    if any(rate < 0 for rate in rates):
        conv.unsupported(legacy, "a negative block learning rate")
        return
    for index, rate in enumerate(rates):
        where = f"kohya block_lr[{index}] ({legacy.source})"
        conv.put(("optimizer", "blocks", index, "pattern"), full_block_pattern(index), where)
        conv.put(
            ("optimizer", "blocks", index, "lr"), rate, where + ("; 0: not trained" if rate == 0 else "")
        )
    conv.record(legacy, "mapped", "optimizer.blocks")


def _inexpressible(a: Args) -> str:
    if a["fused_optimizer_groups"].value:
        return "with fused_optimizer_groups kohya cuts the block groups into its own chunks (optimizer.split)"
    if a["fused_backward_pass"].value:
        return "with fused_backward_pass kohya steps each tensor in its gradient hook"
    if adafactor_relative_step(a):
        return "Adafactor's relative step ignores the groups' rates (kohya removes them)"
    return ""

"""dbspec.unet_layout: kohya's SDXL module names (the original U-Net layout, `_`-joined) read back onto
diffusers' paths are the inverse of the exports' renaming, for SDXL base's layout and the tiny built-in's."""

from __future__ import annotations

import pytest

from dbspec.builtin import builtin_model
from dbspec.unet_layout import SDXL_UNET, diffusers_name, rename, unet_table

# every kind of module a kohya SDXL LoRA adapts: attention linears, ResNet convolutions and linears,
# downsamplers, upsamplers
PATHS = [
    "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.1.attentions.1.proj_in",
    "down_blocks.0.resnets.1.conv1",
    "down_blocks.0.resnets.0.time_emb_proj",
    "down_blocks.0.downsamplers.0.conv",
    "mid_block.attentions.0.transformer_blocks.1.ff.net.0.proj",
    "mid_block.resnets.1.conv2",
    "up_blocks.0.attentions.2.transformer_blocks.1.attn2.to_out.0",
    "up_blocks.0.resnets.2.conv_shortcut",
    "up_blocks.0.upsamplers.0.conv",
    "up_blocks.1.resnets.0.conv1",
]


@pytest.mark.parametrize("config", [SDXL_UNET, builtin_model("builtin:tiny-sdxl").unet], ids=["sdxl", "tiny"])
def test_kohya_names_read_back_onto_diffusers_paths(config):
    table = unet_table(config)
    for path in PATHS:
        kohya = rename(path, table).replace(".", "_")
        assert kohya != path.replace(".", "_")  # the original layout's name differs
        assert diffusers_name(kohya) == path.replace(".", "_"), kohya


def test_a_name_outside_the_layout_is_a_value_error():
    with pytest.raises(ValueError, match="original U-Net layout"):
        diffusers_name("down_blocks_0_resnets_0_conv1")

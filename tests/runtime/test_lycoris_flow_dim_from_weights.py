"""lycoris.kohya --dim_from_weights on Flux (issue 12): lycoris-lora 4.1.3's create_network_from_weights
over kohya's Flux tree (rebuilt on the meta device from lycoris_flow_file.flux_model's rows, as
test_lycoris_preset_file_flow.py does) builds a LoConModule for each module of the file the tree has, the
final layer and the embedders too, at the file's rank and alpha; the converter's blocks
(file_ranks.flow_blocks with `lycoris`) give every diffusers part of those the same rank and scale, and every
other Linear rank 0."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from dbspec.compiler.lora_file import read_lora_file
from dbspec.convert.kohya.file_ranks import flow_blocks
from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from tests.runtime.test_lycoris_preset_file_sdxl import _rebuilt

lycoris_kohya = pytest.importorskip("lycoris.kohya")

# kohya name (dots) -> (rank, alpha); the rebuilt tree's Linears are 8 x 8
FILE = {
    "double_blocks.0.img_attn.qkv": (4, 2.0),
    "double_blocks.1.txt_mlp.2": (2, 2.0),
    "single_blocks.1.linear1": (4, 2.0),
    "single_blocks.0.modulation.lin": (3, 1.0),
    "final_layer.linear": (2, 1.0),
    "final_layer.adaLN_modulation.1": (2, 4.0),
    "img_in": (3, 3.0),
    "guidance_in.out_layer": (1, 1.0),
}


def test_flux_file_builds_what_the_plan_blocks_say(tmp_path):
    path = tmp_path / "locon.safetensors"
    tensors = {}
    for name, (rank, alpha) in FILE.items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = torch.zeros(rank, 8)
        tensors[f"{key}.lora_up.weight"] = torch.zeros(8, rank)
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(path))
    rows = flux_model(double=2, single=2)
    network, _ = lycoris_kohya.create_network_from_weights(1, str(path), None, None, _rebuilt(rows))
    built = {m.lora_name: (type(m).__name__, m.lora_dim, float(m.scale)) for m in network.unet_loras}
    assert built == {
        "lora_unet_" + n.replace(".", "_"): ("LoConModule", r, a / r) for n, (r, a) in FILE.items()
    }
    blocks, extra = flow_blocks(read_lora_file(path), "flux", lycoris=True)
    assert set(extra) == {
        "proj_out",
        "norm_out.linear",
        "x_embedder",
        "time_text_embed.guidance_embedder.linear_2",
    }
    for kohya, _, kind in rows:
        if kind != "linear":
            continue
        want = FILE.get(kohya, (0, 1.0))
        for part in diffusers_parts(kohya):
            block = next(b for b in blocks if re.search(b["pattern"], part))
            assert (block["rank"], block["alpha"]) == want, (kohya, part)

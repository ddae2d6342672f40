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


def test_text_encoder_modules_in_lycoris_numbering(tmp_path):
    """create_network_from_weights numbers the encoder list flux_train_network.py hands it ([CLIP-L, T5-XXL]):
    lora_te1 builds on CLIP-L (a LoConModule at the file's rank and alpha, lora_flux's CLIP module, which the
    converter's text blocks give that rank), lora_te2 on T5-XXL (train.t5, its text blocks at that rank), and
    lora_flux's own T5 name lora_te3 builds nothing."""
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from dbspec.convert.kohya.file_ranks import per_module_text_blocks
    from tests.runtime.test_lycoris_preset_file_sdxl import _pinned_clip

    with torch.device("meta"):
        clip = _pinned_clip(
            CLIPTextModel(CLIPTextConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64))
        )
        t5 = T5EncoderModel(T5Config(d_model=32, d_kv=8, d_ff=64, num_layers=1, num_heads=4))
    shapes = {
        "lora_te1_text_model_encoder_layers_1_mlp_fc1": (64, 32, 4, 2.0),
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": (32, 32, 2, 2.0),
        "lora_te3_encoder_block_0_layer_0_SelfAttention_k": (32, 32, 2, 2.0),
        "lora_unet_img_in": (8, 8, 2, 1.0),
    }
    tensors = {}
    for key, (out, inp, rank, alpha) in shapes.items():
        tensors[f"{key}.lora_down.weight"] = torch.zeros(rank, inp)
        tensors[f"{key}.lora_up.weight"] = torch.zeros(out, rank)
        tensors[f"{key}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "locon.safetensors"
    save_file(tensors, str(path))
    rows = flux_model(double=1, single=1)
    network, _ = lycoris_kohya.create_network_from_weights(1, str(path), None, [clip, t5], _rebuilt(rows))
    built = {m.lora_name: (m.lora_dim, float(m.scale)) for m in network.text_encoder_loras}
    assert built == {
        "lora_te1_text_model_encoder_layers_1_mlp_fc1": (4, 0.5),
        "lora_te2_encoder_block_0_layer_0_SelfAttention_q": (2, 1.0),
    }
    # the converter's components: LyCORIS's numbering, T5-XXL (train.t5) under lora_te2_
    components = {"lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}
    blocks = per_module_text_blocks(read_lora_file(path), components)
    for name, want in (
        ("text_encoder.text_model.encoder.layers.1.mlp.fc1", (4, 2.0)),
        ("text_encoder.text_model.encoder.layers.0.mlp.fc1", (0, 1.0)),
        ("text_encoder_2.encoder.block.0.layer.0.SelfAttention.q", (2, 2.0)),  # LyCORIS's: rank 2, scale 1
        ("text_encoder_2.encoder.block.0.layer.0.SelfAttention.k", (0, 1.0)),  # lora_te3_: none built
    ):
        block = next(b for b in blocks if re.search(b["pattern"], name))
        assert (block["rank"], block["alpha"]) == want, name

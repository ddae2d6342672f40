"""lycoris.kohya algo=dylora with `--network_weights` on kohya's Flux (issue 12): LycorisNetworkKohya's
load_weights is load_state_dict(strict=False) and DyLoraModule keeps its weights in up_list / down_list,
so of a kohya LoRA file only each module's `alpha` buffer loads; on kohya's Flux one module per fused
Linear. The converter (convert/kohya/lycoris_flow_dylora.py flow_dylora_alphas) gives the file's alpha to
every diffusers part of that Linear at the network's rank. Checked against lycoris-lora 4.1.3: its
create_network from the same preset file on kohya's layers, the file loaded as load_weights loads it, holds
for every DyLoRA module exactly the alpha (and scale alpha / rank) the trained parts have, which the run's
kohya export saves (T5-XXL's modules too, a preset reaching T5Attention; was DBS403); the run trains from a
fresh init and resumes bit-exact."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.dylora import DyloraLayer
from tests.runtime.test_lycoris_mixed_flow_dylora import _their_network
from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree, _run
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

pytest.importorskip("lycoris.kohya")

# the double block's q/k/v and projections, the single block's linear1 / linear2, CLIP-L's attention
PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.qkv", "double_blocks.*_attn.proj", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention", "T5Attention"]
"""
# kohya's names on tiny-flux (network_alpha 1): the alphas LyCORIS's DyLoraModules take from the file
ALPHAS = {
    "lora_unet_double_blocks_0_img_attn_qkv": 0.5,
    "lora_unet_double_blocks_0_txt_attn_proj": 1.0,  # the network's
    "lora_unet_single_blocks_0_linear1": 3.0,
    "lora_unet_final_layer_linear": 2.0,  # no module of the network: loads nowhere
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": 0.25,
    # T5-XXL's (LyCORIS's lora_te2_; train.t5, its gated MLP left out at rank 0 first; was DBS403)
    "lora_te2_encoder_block_0_layer_0_SelfAttention_q": 0.75,
}


def _convert(tmp_path):
    from tests.unit.convert_kit import errors, fate, flux_lycoris

    (tmp_path / "p.toml").write_text(PRESET, encoding="utf-8")
    tensors = {}
    for name, alpha in ALPHAS.items():  # the lora_down / lora_up load nowhere: any shape
        tensors[f"{name}.lora_down.weight"] = torch.ones(2, 3)
        tensors[f"{name}.lora_up.weight"] = torch.ones(5, 2)
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = flux_lycoris(
        tmp_path, '"algo=dylora" "block_size=2" "preset=p.toml"', "--network_weights=prev.safetensors"
    )
    assert not errors(outcome) and fate(outcome, "network_weights") == "mapped", errors(outcome)
    return tensors


def test_dylora_network_weights_alphas_equal_lycoris_load_weights(tmp_path, monkeypatch):
    file = _convert(tmp_path)
    planned, whole, export = _run(tmp_path, set(), ["model.base=builtin:tiny-flux", *_BASE])
    assert planned.adapter.kind == "dylora" and planned.adapter.init_weights == ""
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip_trained, t5_trained = whole.components.text_encoders
    clip = _kohya_clip(_unwrapped(clip_trained))
    theirs, made = _their_network(
        monkeypatch, "dylora", tmp_path / "p.toml", [clip, _unwrapped(t5_trained)], _kohya_tree(layers)
    )
    made.load_state_dict(file, strict=False)  # LycorisNetworkKohya.load_weights
    clip_layers = dict(clip_trained.named_modules())
    t5_layers = dict(t5_trained.named_modules())
    t5_paths = {"lora_te2_" + p.replace(".", "_"): p for p in t5_layers}
    assert not any(isinstance(m, DyloraLayer) for p, m in t5_layers.items() if "DenseReluDense" in p)
    kohya_paths = {"lora_unet_" + p.replace(".", "_"): p for p in layers}
    seen = set()
    for name, module in theirs.items():
        assert type(module).__name__ == "DyLoraModule", name
        if name.startswith("lora_unet_"):
            parts = layers[kohya_paths[name]][0]
        elif name.startswith("lora_te2_"):  # T5-XXL's attention
            parts = [t5_layers[t5_paths[name]]]
        else:
            path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
            parts = [clip_layers[path.replace("self.attn", "self_attn").replace(".proj", "_proj")]]
        alpha = float(module.alpha)
        for part in parts:
            assert isinstance(part, DyloraLayer), name
            assert (part.r["default"], part.lora_alpha["default"]) == (4, alpha), name
            assert part.scaling["default"] == pytest.approx(alpha / 4), name
        assert float(export[f"{name}.alpha"]) == alpha, name  # what LyCORIS saves: its buffer
        seen.add(alpha)
        for block in (*parts[0].lora_dylora_down["default"], *parts[0].lora_dylora_up["default"]):
            assert not torch.equal(block, torch.ones_like(block))  # the file's tensors loaded nowhere
    assert seen == {0.5, 1.0, 3.0, 0.25, 0.75}  # the file's alphas, the network's where the file has it
    assert sum(name.startswith("lora_te2_") for name in theirs) == 8  # tiny T5: 2 blocks x q, k, v, o

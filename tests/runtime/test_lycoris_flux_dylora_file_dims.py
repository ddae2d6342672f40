"""lycoris.kohya algo=dylora with `--network_weights` on kohya's Flux, as on SD (issue 12): a preset file
whose map entries give fused Linears their own dim / alpha (was DBS403), each DyLoraModule's alpha buffer
`torch.tensor(alpha)` (int64 for an entry's TOML integer, so the file's 3.5 loads as 3), and a file alpha of
0 beside module_dropout (was DBS403): LyCORIS's module scales its update by 0 and still draws its
torch.rand(1) in every training forward, dbspec's fused parts built scaled by 0 (zero_scale) and sharing
the one draw. Checked against lycoris-lora 4.1.3: create_network from the same preset file on kohya's
layers, the file loaded as load_weights loads it: every module's dim and alpha are the trained parts' (and
the export's alpha), and the zeroed linear1's parts give its outputs from the same generator state, leaving
the generator where it leaves it, their gradients 0."""

from __future__ import annotations

import random

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

RATE = 0.5
PRESET = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.qkv", "double_blocks.*_attn.proj", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]

[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "dylora"
dim = 2
alpha = 2

[name_algo_map."single_blocks.*.linear1"]
algo = "dylora"
dim = 6
alpha = 1.5
"""
# kohya's names on tiny-flux (network_dim 4, alpha 1): the alphas LyCORIS's DyLoraModules take from the file
ALPHAS = {
    "lora_unet_double_blocks_0_img_attn_qkv": 0.5,  # the network's dim 4, a float buffer
    "lora_unet_double_blocks_0_txt_attn_qkv": 3.5,  # the entry's dim 2, its int64 buffer: 3
    "lora_unet_double_blocks_0_img_attn_proj": 2.0,
    "lora_unet_single_blocks_0_linear1": 0.0,  # the entry's dim 6, scaled by 0, module_dropout drawn
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": 0.25,
}
LOADED = {0.5, 3.0, 2.0, 0.0, 0.25, 1.0}  # the file's as loaded and the network's (tiny: one single block)


def _convert(tmp_path):
    from tests.unit.convert_kit import errors, fate, flux_lycoris

    (tmp_path / "p.toml").write_text(PRESET, encoding="utf-8")
    tensors = {}
    for name, alpha in ALPHAS.items():  # the lora_down / lora_up load nowhere: any shape
        tensors[f"{name}.lora_down.weight"] = torch.ones(2, 3)
        tensors[f"{name}.lora_up.weight"] = torch.ones(5, 2)
        tensors[f"{name}.alpha"] = torch.tensor(alpha)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    args = f'"algo=dylora" "block_size=2" "preset=p.toml" "module_dropout={RATE}"'
    outcome = flux_lycoris(tmp_path, args, "--network_weights=prev.safetensors")
    assert not errors(outcome) and fate(outcome, "network_weights") == "mapped", errors(outcome)
    return tensors


def test_file_alphas_onto_entry_dims_and_a_zero_with_module_dropout_equal_lycoris(tmp_path, monkeypatch):
    file = _convert(tmp_path)
    planned, whole, export = _run(tmp_path, set(), ["model.base=builtin:tiny-flux", *_BASE], resume=False)
    assert planned.adapter.module_dropout == RATE and any(b.zero_scale for b in planned.adapter.blocks)
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip_trained, t5 = whole.components.text_encoders
    clip = _kohya_clip(_unwrapped(clip_trained))
    theirs, made = _their_network(
        monkeypatch,
        "dylora",
        tmp_path / "p.toml",
        [clip, _unwrapped(t5)],
        _kohya_tree(layers),
        module_dropout=str(RATE),
    )
    made.load_state_dict(file, strict=False)  # LycorisNetworkKohya.load_weights
    assert made.unet_loras[0].alpha.dtype == torch.float32
    assert theirs["lora_unet_double_blocks_0_txt_attn_qkv"].alpha.dtype == torch.int64  # the entry's 2
    clip_layers = dict(clip_trained.named_modules())
    kohya_paths = {"lora_unet_" + p.replace(".", "_"): p for p in layers}
    seen = set()
    for name, module in theirs.items():
        assert type(module).__name__ == "DyLoraModule", name
        if name.startswith("lora_unet_"):
            parts = layers[kohya_paths[name]][0]
        else:
            path = name.removeprefix("lora_te1_text_model_").replace("_", ".")
            parts = [clip_layers[path.replace("self.attn", "self_attn").replace(".proj", "_proj")]]
        alpha = float(module.alpha)
        for part in parts:
            assert isinstance(part, DyloraLayer), name
            assert (part.r["default"], part.lora_alpha["default"]) == (module.lora_dim, alpha), name
            assert part.scaling["default"] == pytest.approx(alpha / module.lora_dim), name
            assert part.dylora_zero_scale == (alpha == 0), name
        assert float(export[f"{name}.alpha"]) == alpha, name  # what LyCORIS saves: its buffer
        seen.add(alpha)
    assert seen == LOADED

    # the zeroed single block's linear1: one DyLoraModule, its alpha buffer 0, module_dropout drawn
    module = theirs["lora_unet_single_blocks_0_linear1"].train()
    parts, order = layers["single_blocks.0.linear1"]
    assert order is None and float(module.alpha) == 0.0
    x = torch.randn(3, parts[0].base_layer.in_features)
    plain = torch.cat([p.base_layer(x) for p in parts], dim=-1)
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's block draw: the last
    torch.manual_seed(7)
    with torch.no_grad():
        expected = [module(x) for _ in range(8)]
    after_theirs = torch.get_rng_state()
    calls = sorted(parts, key=lambda p: p is not parts[-1])  # diffusers calls proj_mlp first
    for part in parts:
        part.train()
        part.drawn["default"] = part.blocks("default") - 1
    torch.manual_seed(7)
    ours = [[p(x) for p in calls] for _ in range(8)]
    assert torch.equal(after_theirs, torch.get_rng_state())  # 8 draws, one per fused module's forward
    assert all(torch.equal(want, plain) for want in expected)
    assert all(torch.equal(torch.cat([o[calls.index(p)] for p in parts], -1), plain) for o in ours)
    sum(o.square().sum() for outs in ours for o in outs).backward()
    grads = [p.grad for part in parts for n, p in part.named_parameters() if "dylora" in n]
    assert any(g is not None for g in grads)
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)

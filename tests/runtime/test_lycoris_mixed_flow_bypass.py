"""lycoris.kohya `bypass_mode` on a Flux LoCon network whose preset file gives the double blocks' image q/k/v
Diag-OFT, their text q/k/v BOFT, the single blocks' linear1 DyLoRA (one block) and img_in IA^3 (issue 12): on
kohya's fused Linear LyCORIS's bypass forward rotates (DiagOFTModule, ButterflyOFTModule) the whole stacked
output, its bias included, or adds up(down(x)) unscaled (DyLoraModule); each diffusers part computing its own
rows of that is the same (a Diag-OFT block never spans two parts; BOFT's butterfly, whose 12-row blocks do
span them, runs over every part's output, runtime/lycoris_boft.py; DyLoRA's parts share the down), which the
converted adapter's `bypass` gives those blocks (was DBS578). A tiny run trains and resumes bit-exact, and its
export, loaded into lycoris-lora 4.1.3's create_network(bypass_mode=True) from the same file on kohya's
layers rebuilt from the trained parts, computes the trained parts' stacked outputs, which the same modules'
default forward does not (IA^3 on fused Linears in bypass: tests/runtime/test_lycoris_flux_ia3.py). The text
stream's out-projections' Diag-OFT entry has its own bypass_mode off (was DBS403 / a spec's DBS582): its
block's `bypass`, set_block_bypass giving the image q/k/v's fused parts theirs. The same file on a DyLoRA
network in bypass_mode (one block per layer; was DBS403 / a spec's DBS578) alike; the adapter folders load
back as `dbspec sample` loads them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _run,
    _trained,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

lycoris_kohya = pytest.importorskip("lycoris.kohya")

BYPASS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "boft"
dim = 18
[name_algo_map."single_blocks.*.linear1"]
algo = "dylora"
dim = 4
alpha = 2
block_size = 4
[name_algo_map."double_blocks.*.img_attn.proj"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "ia3"
[name_algo_map."double_blocks.*.txt_attn.proj"]
algo = "diag-oft"
bypass_mode = false
"""


# a GLoRA network without bypass_mode: its Diag-OFT (image q/k/v), BOFT, DyLoRA and IA^3 entries turn it on
_ENTRIES_ON = ('algo = "diag-oft"\n', 'algo = "boft"\n', "block_size = 4\n", 'algo = "ia3"\n')


@pytest.mark.parametrize("algo", ["locon", "dylora", "glora"])
def test_bypass_blocks_on_flux_fused_layers_match_lycoris(tmp_path, monkeypatch, algo):
    """A LoCon network, a DyLoRA network of one block per layer (was DBS403 / a spec's DBS578: its own
    layers and its Diag-OFT, BOFT and IA^3 entries' in its `bypass`, the DyLoRA entry a block of its own
    kind), and a GLoRA network without bypass_mode whose entries turn theirs on (was DBS403)."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    text = BYPASS_FILE
    if algo == "glora":
        for entry in _ENTRIES_ON:
            text = text.replace(entry, entry + "bypass_mode = true\n", 1)
    file.write_text(text, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "optimizer.lr=5e-2"]
    network_bypass = algo != "glora"
    args = f'"algo={algo}" "preset={file.name}"' + (' "bypass_mode=True"' if network_bypass else "")
    args += ' "block_size=4"' if algo == "dylora" else ""
    outcome = flux_lycoris(tmp_path, args)
    plan = plan_of(outcome, tmp_path, base)
    a = plan.adapter
    assert (a.kind, a.bypass) == ({"locon": "lora"}.get(algo, algo), network_bypass) and a.fused
    dylora = "adapter" if algo == "dylora" else "dylora"  # the DyLoRA entry: a DyLoRA network's own kind
    assert {b.kind for b in a.blocks} == {"diag-oft", "boft", dylora, "ia3", "loha"}
    # the text proj's Diag-OFT entry's own bypass_mode (was DBS403 / a spec's DBS582): its Diag-OFT layers are
    # built in the default forward, set_block_bypass turning the image q/k/v's fused parts to the bypass one
    assert sorted((b.kind, b.bypass) for b in a.blocks if b.kind == "diag-oft") == [
        ("diag-oft", False),
        ("diag-oft", True),
    ]
    planned, whole, tensors = _run(tmp_path, {"diag-oft", "boft", dylora, "ia3"}, base)
    assert planned.adapter.bypass is network_bypass
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    network = lycoris_kohya_network(monkeypatch, file, clip, tree, tensors, algo, network_bypass)
    kinds = {type(m).__name__ for m in network.values()}
    modules = {"DiagOFTModule", "ButterflyOFTModule", "DyLoraModule", "IA3Module", "LohaModule"}
    own = {"locon": "LoConModule", "dylora": "DyLoraModule", "glora": "GLoRAModule"}[algo]
    assert {*modules, own} == kinds
    # BOFT's butterfly over the 48 stacked q/k/v rows: 3 stages of 4 blocks of 12 rows, spanning the parts
    assert network["lora_unet_double_blocks_0_txt_attn_qkv"].oft_blocks.shape == (3, 4, 12, 12)
    off = "lora_unet_double_blocks_0_txt_attn_proj"
    assert type(network[off]).__name__ == "DiagOFTModule" and not network[off].bypass_mode  # its own
    on = {"DiagOFTModule", "ButterflyOFTModule", "DyLoraModule", "IA3Module"}  # a GLoRA network's entries'
    assert all(
        m.bypass_mode is (network_bypass or type(m).__name__ in on) for n, m in network.items() if n != off
    )
    _check_kohya_outputs(tree, layers, names)
    _folders_load_back(whole, planned, layers)
    # each module in the other forward: the fused biases neither rotated nor scaled, DyLoRA's update at
    # alpha / (b + 1) = 2 where its bypass forward leaves it unscaled (the text proj's bias rotated): another
    # output
    differs = []
    with torch.no_grad():
        for path in (
            "double_blocks.0.img_attn.qkv",
            "double_blocks.0.txt_attn.qkv",
            "single_blocks.0.linear1",
            "img_in",
            "double_blocks.0.txt_attn.proj",
        ):
            module = network["lora_unet_" + path.replace(".", "_")]
            module.bypass_mode = not module.bypass_mode
            parts, order = layers[path]
            x = torch.randn(3, parts[0].base_layer.in_features)
            differs.append((tree.get_submodule(path)(x) - _trained(parts, order, x)[0]).abs().max() > 1e-4)
    assert all(differs)


def _folders_load_back(whole, planned, layers) -> None:
    """The adapter folders (`unet/` and `unet/<kind>/`) on the plain transformer, as `dbspec sample` loads
    them (the adapter's bypass, each block's own: runtime/weights.py load_peft_adapters): every layer
    computes the trained parts' outputs."""
    from pathlib import Path

    from dbspec.runtime.mixed_kinds import own_bypass
    from dbspec.runtime.weights import load_peft_adapters
    from tests.runtime.test_lycoris_mixed_flow import _path_in
    from tests.runtime.test_lycoris_mixed_flow_full import _base

    unet = whole.components.unet
    again = _unwrapped(unet)
    a = planned.adapter
    blocks = a if own_bypass(a) else None
    loaded = load_peft_adapters(
        Path(whole.final), {"unet": again}, a.lokr_unit_scale, a.bypass, fused_lokr=a, blocks=blocks
    )
    assert loaded == ["unet"]
    again.eval()
    with torch.no_grad():
        for parts, _ in layers.values():
            reloaded = [again.get_submodule(_path_in(unet, p)) for p in parts]
            x = torch.randn(3, _base(parts[0]).in_features)
            torch.testing.assert_close(
                torch.cat([p(x) for p in reloaded], dim=-1),
                torch.cat([p(x) for p in parts], dim=-1),
                rtol=0,
                atol=1e-5,
            )


def lycoris_kohya_network(
    monkeypatch, file, clip, tree, tensors, algo: str = "locon", bypass: bool = True
) -> dict[str, nn.Module]:
    """lycoris-lora's create_network from the preset file on kohya's layers (in bypass_mode with `bypass`:
    create_network hands every module its str_bool; an `algo` network, network_dim 4, alpha 1, block_size
    4, as converted), applied, the export loaded: every key a module's, every module's key in it, but
    DyLoraModule's, whose network state names its blocks (`down_list.0` / `up_list.0`) where its saved file
    holds the LoRA layout (`lora_down` / `lora_up`): those copied into its one block."""
    kept_lycoris_presets(monkeypatch)
    encoders = [clip, nn.Module()]
    made = lycoris_kohya.create_network(
        1.0,
        4,
        1.0,
        None,
        encoders,
        tree,
        algo=algo,
        preset=str(file),
        bypass_mode=str(bypass),
        block_size="4",
    )
    made.apply_to(encoders, tree, apply_text_encoder=True, apply_unet=True)
    result = made.load_state_dict(tensors, strict=False)
    modules = {m.lora_name: m for m in [*made.unet_loras, *made.text_encoder_loras]}
    dylora = {n for n, m in modules.items() if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in [*result.missing_keys, *result.unexpected_keys]} <= dylora, result
    for name in dylora:
        module = modules[name]
        assert module.block_count == 1  # bypass_mode: one block per layer
        with torch.no_grad():
            module.down_list[0].copy_(tensors[f"{name}.lora_down.weight"])
            module.up_list[0].copy_(tensors[f"{name}.lora_up.weight"])
    return modules

"""lycoris.kohya `bypass_mode` on a Flux LoCon network whose preset file gives the double blocks' image q/k/v
Diag-OFT and the single blocks' linear1 and img_in IA^3 (issue 12): on kohya's fused Linear LyCORIS's bypass
forward rotates (DiagOFTModule) or scales (IA3Module) the whole stacked output, its bias included; each
diffusers part rotating / scaling its own rows is the same (a Diag-OFT block never spans two parts), which the
converted adapter's `bypass` gives those blocks (was DBS578). A tiny run trains and resumes bit-exact, and its
export, loaded into lycoris-lora 4.1.3's create_network(bypass_mode=True) from the same file on kohya's
layers rebuilt from the trained parts, computes the trained parts' stacked outputs, which the same modules'
default forward does not."""

from __future__ import annotations

import torch
from torch import nn

from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _check_kohya_outputs,
    _kohya_layers,
    _kohya_tree,
    _lycoris_network,
    _run,
    _trained,
)
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

BYPASS_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*", "img_in"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "diag-oft"
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
[name_algo_map."double_blocks.*.txt_attn.qkv"]
algo = "loha"
dim = 2
alpha = 1
[name_algo_map.img_in]
algo = "ia3"
"""


def test_bypass_blocks_on_flux_fused_layers_match_lycoris(tmp_path, monkeypatch):
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(BYPASS_FILE, encoding="utf-8")
    base = ["model.base=builtin:tiny-flux", *_BASE, "optimizer.lr=5e-2"]
    outcome = flux_lycoris(tmp_path, f'"algo=locon" "preset={file.name}" "bypass_mode=True"')
    plan = plan_of(outcome, tmp_path, base)
    a = plan.adapter
    assert (a.kind, a.bypass) == ("lora", True) and a.fused
    assert {b.kind for b in a.blocks} == {"diag-oft", "ia3", "loha"}
    planned, whole, tensors = _run(tmp_path, {"diag-oft", "ia3"}, base)
    assert planned.adapter.bypass
    unet = whole.components.unet.eval()
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    names = {k.split(".")[0] for k in tensors if k.startswith("lora_unet_")}
    tree = _kohya_tree(layers)
    clip = _kohya_clip(_unwrapped(whole.components.text_encoders[0]))
    network = lycoris_kohya_network(monkeypatch, file, clip, tree, tensors)
    kinds = {type(m).__name__ for m in network.values()}
    assert {"DiagOFTModule", "IA3Module", "LohaModule", "LoConModule"} <= kinds
    assert all(m.bypass_mode for m in network.values())
    _check_kohya_outputs(tree, layers, names)
    # the same modules' default forward: the fused biases neither rotated nor scaled, another output
    for m in network.values():
        m.bypass_mode = False
    differs = []
    with torch.no_grad():
        for path in ("double_blocks.0.img_attn.qkv", "single_blocks.0.linear1", "img_in"):
            parts, order = layers[path]
            x = torch.randn(3, parts[0].base_layer.in_features)
            differs.append((tree.get_submodule(path)(x) - _trained(parts, order, x)[0]).abs().max() > 1e-4)
    assert all(differs)


def lycoris_kohya_network(monkeypatch, file, clip, tree, tensors) -> dict[str, nn.Module]:
    """_lycoris_network with the network in bypass_mode (create_network hands every module its str_bool)."""
    import lycoris.kohya as lycoris_kohya

    real = lycoris_kohya.create_network

    def bypassed(*args, **kwargs):
        return real(*args, **kwargs, bypass_mode="True")

    monkeypatch.setattr(lycoris_kohya, "create_network", bypassed)
    return _lycoris_network(monkeypatch, "locon", file, [clip, nn.Module()], tree, tensors)

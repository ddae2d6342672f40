"""A GLoRA network's `bypass_mode` beside a preset file's LoCon / LoHa / LoKr entries (issue 12; was DBS403, a
spec's DBS578): LyCORIS hands the network's bypass_mode to every module, the GLoRA layers keeping their bypass
forward and LoConModule / LohaModule / LokrModule computing theirs, which without a dropout, rank_dropout or
weight decomposition is their default one after the same module_dropout draw; the converted glora adapter's
`bypass` reaches those blocks (runtime/mixed_kinds.py kind_adapter). Checked against lycoris-lora 4.1.3's
network built with bypass_mode from the same file on tiny SD 1.x, module_dropout on: training outputs, the
generator state after each of three training forwards, and every trained tensor's gradient; on tiny Flux's
fused Linears each kohya layer's LyCORIS module against the plan's parts (no tiny run)."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.prepare import _prepare
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

pytest.importorskip("lycoris.kohya")

MODULE = 0.3
# LoCon on the ResNets, LoHa on the MLPs' output Linear, LoKr on conv_in, the network's GLoRA on the rest of
# the attention blocks
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
[module_algo_map.FeedForward]
algo = "loha"
dim = 2
[name_algo_map.conv_in]
algo = "lokr"
"""
_HELD = ("a1.weight", "lora_up", "hada_w1_a", "lokr_w1")  # GLoRA's, LoCon's, LoHa's, LoKr's tensors


def test_glora_network_bypass_beside_locon_loha_lokr_entries_is_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    args = {"bypass_mode": "True", "module_dropout": str(MODULE)}
    PRESETS["glora_bypass"] = PRESET
    try:
        path, plan = _converted_plan(
            tmp_path, "glora_bypass", "glora", " ".join(f'"{k}={v}"' for k, v in args.items())
        )
    finally:
        del PRESETS["glora_bypass"]
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout, a.rank_dropout, a.bypass_dropout) == (
        "glora",
        True,
        MODULE,
        0.0,
        0.0,
    )
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora", "loha", "lokr"}
    assert all(b.bypass for b in a.blocks)  # settled: the adapter's
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, "glora", path, **args)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"GLoRAModule", "LoConModule", "LohaModule", "LokrModule"}
    assert all(m.bypass_mode and m.module_dropout == MODULE for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads_as_lycoris(ours, made, _HELD)


# LoCon on the image stream's q/k/v, LoHa on the single blocks' linear1, LoKr on CLIP-L's attention, the
# network's GLoRA on the text stream's q/k/v and the out projections
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "locon"
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[module_algo_map.CLIPAttention]
algo = "lokr"
"""


def test_flux_glora_network_bypass_beside_fused_entries_is_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: the LoCon q/k/v one LoConModule, the LoHa linear1 one LohaModule, the GLoRA
    layers one GLoRAModule each (their parts one module_dropout draw), CLIP-L's LoKr layers, all in
    bypass_mode; every kohya layer's module against the plan's parts from the same generator state
    (outputs, generator state, input and trained tensors' gradients)."""
    plan, made = flux_bypass_entries_alike(
        tmp_path, monkeypatch, {"bypass_mode": "True", "module_dropout": "0.5"}
    )
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout, bool(a.fused)) == ("glora", True, 0.5, True)
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora", "loha"}
    assert {b.kind for b in a.text_encoder_blocks} - {"adapter"} == {"lokr"}
    names = {"lora_unet_double_blocks_0_img_attn_qkv": "LoConModule"}
    names["lora_unet_single_blocks_0_linear1"] = "LohaModule"
    names["lora_unet_double_blocks_0_txt_attn_qkv"] = "GLoRAModule"
    assert all(type(made[n]).__name__ == cls for n, cls in names.items())
    assert all(type(made[n]).__name__ == "LokrModule" for n in made if n.startswith("lora_te1_"))


def flux_bypass_entries_alike(tmp_path, monkeypatch, args: dict[str, str]):
    """FLUX_FILE (LoCon q/k/v, LoHa linear1, CLIP-L's LoKr beside the
    GLoRA network's layers) converted with network_args `args` (bypass_mode among them) on tiny Flux: every
    kohya layer's lycoris-lora 4.1.3 module, built from the same args and loaded from our export, against the
    plan's parts from the same generator state (outputs, generator state, input and trained tensors'
    gradients); returns the plan and LyCORIS's modules by name."""
    from torch import nn

    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import (
        modules_alike,
        _grads_as_lycoris,
    )
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree
    from tests.runtime.test_lycoris_mixed_flow_full import _lycoris_network
    from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
    from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE, encoding="utf-8")
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = flux_lycoris(tmp_path, f'"algo=glora" "preset={file.name}" {given}')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    dropout = float(args.get("dropout", 0.0))
    assert (a.kind, a.bypass, a.bypass_dropout, a.output_dropout) == ("glora", True, dropout, dropout)
    comps = moved_components(plan, text_encoder=True)
    unet, encoders = comps.unet.train(), comps.text_encoders
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for model in (unet, *encoders):
            for p in model.parameters():
                if p.requires_grad:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    tensors = lycoris_state(unet=unet, text_encoders=encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(encoders[0]))
    made = _lycoris_network(
        monkeypatch, "glora", file, [clip, nn.Module()], _kohya_tree(layers), tensors, **args
    )
    assert all(m.bypass_mode for m in made.values())
    assert {type(m).__name__ for m in made.values()} == {
        "GLoRAModule",
        "LoConModule",
        "LohaModule",
        "LokrModule",
    }
    modules_alike(made, layers, unet, encoders, least=1)
    assert _grads_as_lycoris(unet, encoders, made, "flux") >= len(made)
    return plan, made

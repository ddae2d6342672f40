"""A LoCon / LoKr network's `rank_dropout` in bypass_mode WITHOUT a `dropout` beside a preset file's entries
of other algorithms on SD 1.x (issue 12; was DBS403: "bypass_mode with its rank_dropout (bypass_mode alone
converts)", a spec's DBS629). lycoris-lora 4.1.3's LoConModule.bypass_forward_diff masks its down's ranks
(`torch.rand(rank)`) whether or not a Dropout follows, LohaModule's rebuilds its update through get_weight's
row mask (`torch.rand(out)`), LokrModule and IA3Module draw none; with `dropout` 0 their Dropout is
nn.Identity (drawing nothing; torch's Dropout(p=0) would not draw either). dbspec: the adapter's rank_dropout
in rank_dropout_form "lycoris_bypass" with output_dropout 0 (runtime/prepare.py wraps the LoHa / LoKr layers
with add_lycoris_layer_dropout for it, the LoKr layers drawing no rows; the LoRA layers through
lora_dropout.py, a lokr adapter's LoRA blocks through mixed_kinds.add_module_dropout). Checked against
lycoris-lora's network from the same file on tiny SD 1.x holding the same weights (no tiny run): training
outputs, the generator state after each forward and every trained tensor's gradient over three forwards; on
tiny Flux every kohya layer's module (CLIP-L's too) against the plan's fused parts (outputs, generator state,
input and trained tensors' gradients)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.prepare import _prepare
from tests.runtime.shared import moved_components
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import (
    FLUX_FILE,
    _call_order,
    _drawn_alike,
    _grads_as_lycoris,
)
from tests.runtime.test_lycoris_mixed_flow_full import (
    _BASE,
    _base,
    _kohya_layers,
    _kohya_tree,
    _lycoris_network,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

pytest.importorskip("lycoris.kohya")

RANKS, MODULE = 0.25, 0.2
# RESNET on the ResNets, FF on the MLPs, ATTN on conv_in, the network's algorithm on the attention and
# proj_in / proj_out
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "RESNET"
[module_algo_map.FeedForward]
algo = "FF"
dim = 2
[name_algo_map.conv_in]
algo = "ATTN"
"""
_CLASS = {"locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule", "ia3": "IA3Module"}
_HELD = {"locon": "lora_up", "loha": "hada_w1_a", "lokr": "lokr_w1", "ia3": "ff_net_2"}


@pytest.mark.parametrize(
    ("algo", "resnet", "ff", "attn"), [("locon", "loha", "ia3", "lokr"), ("lokr", "locon", "loha", "lokr")]
)
def test_bypass_rank_dropout_without_dropout_is_lycoris(pipe, tmp_path, monkeypatch, algo, resnet, ff, attn):  # noqa: F811
    drops = {"bypass_mode": "True", "rank_dropout": str(RANKS), "module_dropout": str(MODULE)}
    PRESETS["bypass_ranks_alone"] = PRESET.replace("RESNET", resnet).replace("FF", ff).replace("ATTN", attn)
    try:
        path, plan = _converted_plan(
            tmp_path, "bypass_ranks_alone", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["bypass_ranks_alone"]
    a = plan.adapter
    kind = {"locon": "lora"}
    assert (a.kind, a.output_dropout, a.rank_dropout, a.rank_dropout_form) == (
        kind.get(algo, algo),
        0.0,
        RANKS,
        "lycoris_bypass",
    )
    assert a.module_dropout == MODULE and not a.rank_dropout_scale
    kinds = {kind.get(x, x) for x in (resnet, ff, attn)} - {a.kind}
    assert {b.kind for b in a.blocks} - {"adapter"} == kinds
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0, IA^3's scales off 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    assert {type(m).__name__ for m in made.unet_loras} == {_CLASS[x] for x in (algo, resnet, ff, attn)}
    assert all(m.bypass_mode and m.rank_dropout == RANKS for m in made.unet_loras)
    # no Dropout after the rank mask: LoConModule's `dropout`, LohaModule's / LokrModule's `drop` nn.Identity
    after = [m.dropout if type(m).__name__ == "LoConModule" else m.drop for m in made.unet_loras]
    assert all(isinstance(d, torch.nn.Identity) for d in after)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    held = {_HELD[x] for x in (algo, resnet, ff, attn)}  # each kind's layers compared
    grads_as_lycoris(ours, made, held)


@pytest.mark.parametrize(("algo", "qkv", "linear1"), [("locon", "lokr", "loha"), ("lokr", "locon", "loha")])
def test_flux_bypass_rank_dropout_without_dropout_is_lycoris(tmp_path, monkeypatch, algo, qkv, linear1):
    """On Flux's fused Linears: the LoCon q/k/v's one bypass rank mask over its shared down, the LoHa
    linear1's one row mask over its stacked rows, CLIP-L's LoHa layers theirs, the LoKr layers none, no
    Dropout after them (test_lycoris_mixed_flow_bypass_dropout.py's check with `dropout` 0)."""
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("QKV", qkv).replace("LINEAR1", linear1), encoding="utf-8")
    drops = {"bypass_mode": "True", "rank_dropout": str(RANKS), "module_dropout": str(MODULE)}
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    plan = plan_of(
        flux_lycoris(tmp_path, f'"algo={algo}" "preset={file.name}" {given}'),
        tmp_path,
        ["model.base=builtin:tiny-flux", *_BASE],
    )
    a = plan.adapter
    assert (a.output_dropout, a.module_dropout, a.rank_dropout, a.rank_dropout_form) == (
        0.0,
        MODULE,
        RANKS,
        "lycoris_bypass",
    )
    assert a.fused and {b.kind for b in a.text_encoder_blocks} == {linear1}
    comps = moved_components(plan, text_encoder=True)
    unet, clip_ours = comps.unet, comps.text_encoders[0]
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(clip_ours))
    made = _lycoris_network(
        monkeypatch, algo, file, [clip, nn.Module()], _kohya_tree(layers), tensors, **drops
    )
    assert all(m.bypass_mode and m.rank_dropout == RANKS for m in made.values())
    after = [m.dropout if type(m).__name__ == "LoConModule" else m.drop for m in made.values()]
    assert all(isinstance(d, nn.Identity) for d in after)
    assert {type(m).__name__ for m in made.values()} == {_CLASS[algo], _CLASS[qkv], _CLASS[linear1]}
    # every kohya layer's module against the plan's parts (test_lycoris_mixed_flow_bypass_dropout.py's
    # _layers_as_lycoris, a LoKr layer's outputs two: its module dropout draw alone, no rows, no Dropout)
    unet, encoders = comps.unet.train(), comps.text_encoders
    compared = fused = 0
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name in made:
            x = torch.randn(3, _base(parts[0]).in_features)
            seen = _drawn_alike(made[name].train(), parts, _call_order(parts, unet), x)
            assert seen == 2 if type(made[name]).__name__ == "LokrModule" else seen > 2, name
            compared, fused = compared + 1, fused + (len(parts) > 1)
    for path, layer in encoders[0].named_modules():
        name = ("lora_te1_" + ("" if path.startswith("text_model.") else "text_model.") + path).replace(
            ".", "_"
        )
        if name in made:
            x = torch.randn(3, _base(layer).in_features)
            assert _drawn_alike(made[name].train(), [layer.train()], [layer], x) > 2, name
            compared += 1
    assert compared == len(made) and fused == 3
    assert _grads_as_lycoris(unet, encoders, made, "flux") >= 2 * len(made)

"""A LoCon / LoKr network's `dropout` (with its `rank_dropout` and `module_dropout`) in bypass_mode beside a
preset file's IA^3 entries, and LoHa / LoCon ones, on SD 1.x (issue 12; was DBS403, a spec's DBS578):
lycoris-lora 4.1.3's IA3Module reads neither `dropout` nor `rank_dropout` in either forward (its forward draws
module_dropout's `torch.rand(1)`, then its bypass forward scales the layer's output, bias included), while
LoConModule's, LohaModule's and LokrModule's bypass_forward_diff draw theirs (LoCon's rank mask, LoHa's row
mask, LoKr's none, then the Dropout of their update). dbspec: the adapter's `bypass` (the IA^3 blocks'
bypass forward, runtime/lycoris_ia3.py), its `output_dropout` and `rank_dropout` (rank_dropout_form
"lycoris_bypass") on the LoRA / LoHa / LoKr layers alone (compiler rules.mixed_output_dropout admits IA^3
blocks), IA^3 layers drawing their module dropout alone (runtime/mixed_kinds.py add_own_module_dropout).
Checked against lycoris-lora's network from the same file on tiny SD 1.x holding the same weights (no tiny
run): training outputs, the generator state after each forward and every trained tensor's gradient (IA^3's
scales too) over three forwards equal."""

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
from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _call_order, _drawn_alike, _grads_as_lycoris
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

DROPOUT, RANKS, MODULE = 0.3, 0.25, 0.2
# IA^3 on the MLPs' output Linear, ENTRY on the ResNets, the network's algorithm on the attention and conv_in
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "ENTRY"
[module_algo_map.FeedForward]
algo = "ia3"
"""
_CLASS = {"locon": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}
_HELD = {"locon": "lora_up", "loha": "hada_w1_a", "lokr": "lokr_w1"}


@pytest.mark.parametrize(("algo", "entry"), [("locon", "loha"), ("lokr", "locon")])
def test_bypass_dropouts_beside_ia3_entries_are_lycoris(pipe, tmp_path, monkeypatch, algo, entry):  # noqa: F811
    drops = {
        "bypass_mode": "True",
        "dropout": str(DROPOUT),
        "rank_dropout": str(RANKS),
        "module_dropout": str(MODULE),
    }
    PRESETS["ia3_bypass_dropout"] = PRESET.replace("ENTRY", entry)
    try:
        path, plan = _converted_plan(
            tmp_path, "ia3_bypass_dropout", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["ia3_bypass_dropout"]
    a = plan.adapter
    kind = {"locon": "lora"}
    assert (a.kind, a.bypass, a.output_dropout, a.rank_dropout, a.rank_dropout_form) == (
        kind.get(algo, algo),
        True,
        DROPOUT,
        RANKS,
        "lycoris_bypass",
    )
    assert a.module_dropout == MODULE and not a.rank_dropout_scale
    assert {b.kind for b in a.blocks} - {"adapter"} == {kind.get(entry, entry), "ia3"}
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0, IA^3's scales off 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {_CLASS[algo], _CLASS[entry], "IA3Module"}
    assert all(m.bypass_mode and m.rank_dropout == RANKS for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    held = (_HELD[algo], _HELD[entry])  # each kind's layers compared
    mine = grads_as_lycoris(ours, made, held)
    ia3 = [k for k in mine if "ff_net_2" in k and k.endswith(".weight")]
    assert ia3, sorted(mine)


# IA^3 on the image stream's q/k/v and CLIP-L's attention, LoHa on the single blocks' linear1, the network's
# LoKr on the text stream's q/k/v and the out projections
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = ["CLIPAttention"]
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "ia3"
[name_algo_map."single_blocks.*.linear1"]
algo = "loha"
dim = 2
alpha = 1
[module_algo_map.CLIPAttention]
algo = "ia3"
"""


def test_flux_lokr_bypass_dropouts_beside_ia3_entries_are_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: the IA^3 q/k/v one IA3Module (its parts one module dropout draw, the output
    scaled, no other draw), the LoHa linear1 one LohaModule (one row mask and one Dropout mask over its
    stacked rows), the LoKr layers their Dropout alone, CLIP-L's IA^3 layers; every kohya layer's module
    against the plan's parts from the same generator state (outputs, generator state, input and trained
    tensors' gradients)."""
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE, encoding="utf-8")
    drops = {
        "bypass_mode": "True",
        "dropout": str(DROPOUT),
        "rank_dropout": str(RANKS),
        "module_dropout": str(MODULE),
    }
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    outcome = flux_lycoris(tmp_path, f'"algo=lokr" "preset={file.name}" {given}')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    assert (a.kind, a.bypass, a.output_dropout, a.rank_dropout, a.rank_dropout_form) == (
        "lokr",
        True,
        DROPOUT,
        RANKS,
        "lycoris_bypass",
    )
    assert a.fused and {b.kind for b in a.blocks} == {"ia3", "loha"}
    assert {b.kind for b in a.text_encoder_blocks} == {"ia3"}
    comps = moved_components(plan, text_encoder=True)
    unet, encoders = comps.unet.train(), comps.text_encoders
    tensors = lycoris_state(unet=unet, text_encoders=encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(encoders[0]))
    made = _lycoris_network(
        monkeypatch, "lokr", file, [clip, nn.Module()], _kohya_tree(layers), tensors, **drops
    )
    assert all(m.bypass_mode for m in made.values())
    names = {"lora_unet_double_blocks_0_img_attn_qkv": "IA3Module"}
    names["lora_unet_single_blocks_0_linear1"] = "LohaModule"
    names["lora_unet_double_blocks_0_txt_attn_qkv"] = "LokrModule"
    assert all(type(made[n]).__name__ == cls for n, cls in names.items())
    compared = 0
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name in made:
            x = torch.randn(3, _base(parts[0]).in_features)
            # IA^3's outputs: scaled or its module dropout's base one; the others' every draw new
            least = 1 if type(made[name]).__name__ == "IA3Module" else 2
            assert _drawn_alike(made[name].train(), parts, _call_order(parts, unet), x) > least, name
            compared += 1
    for path, layer in encoders[0].named_modules():
        name = "lora_te1_" + ("" if path.startswith("text_model.") else "text_model.") + path
        name = name.replace(".", "_")
        if name in made:
            x = torch.randn(3, _base(layer).in_features)
            assert type(made[name]).__name__ == "IA3Module"
            assert _drawn_alike(made[name].train(), [layer.train()], [layer], x) > 1, name
            compared += 1
    assert compared == len(made)
    assert _grads_as_lycoris(unet, encoders, made, "flux") >= len(made)

"""A GLoRA network's `bypass_mode` beside a preset file's IA^3 entries (issue 12; was DBS403, a spec's
DBS578), with and without its `dropout` / `rank_dropout` / `module_dropout`: LyCORIS hands every module the
network's bypass_mode and dropouts. In lycoris-lora 4.1.3 IA3Module's bypass forward scales the layer's
output, bias included (with an entry's own `train_on_input = true` its input), after its module_dropout draw;
it reads neither `dropout` nor `rank_dropout`. The converted glora adapter's blocks of kind ia3 take its
settled `bypass` (runtime/mixed_kinds.py kind_adapter), the GLoRA layers their own bypass dropouts, the LoCon
entries beside them their bypass forward's (rank_dropout_form "lycoris_bypass", output_dropout). Checked
against lycoris-lora 4.1.3's network built from the same file and args on tiny SD 1.x: eval outputs,
training outputs and the generator state after each of three training forwards, and every trained tensor's
gradient; on tiny Flux's fused Linears each kohya layer's module against the plan's parts (no tiny run)."""

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
# LoCon on the ResNets, IA^3 on the feed-forwards (a scale per output channel) and on conv_in (its own
# train_on_input: a scale per input channel), the network's GLoRA on the rest of the attention blocks
PRESET = """\
enable_conv = true
unet_target_module = ["Transformer2DModel", "ResnetBlock2D"]
unet_target_name = ["conv_in"]
text_encoder_target_module = []

[module_algo_map.ResnetBlock2D]
algo = "locon"
[module_algo_map.FeedForward]
algo = "ia3"
[name_algo_map.conv_in]
algo = "ia3"
train_on_input = true
"""
_HELD = ("a1.weight", "lora_up", "ff_net_2.weight", "conv_in.weight")  # GLoRA's, LoCon's, IA^3's tensors


@pytest.mark.parametrize(
    ("extra", "own"),
    [
        ({}, True),
        ({"dropout": "0.2"}, True),
        ({"rank_dropout": "0.25"}, True),
        ({"dropout": "0.2", "rank_dropout": "0.25"}, True),
        ({"dropout": "0.2", "rank_dropout": "0.25"}, False),
    ],
    ids=["bypass", "dropout", "rank_dropout", "both", "feed_forward_own_bypass_off"],
)
def test_glora_network_bypass_beside_ia3_entries_is_lycoris(pipe, tmp_path, monkeypatch, extra, own):  # noqa: F811
    """`own` False: the feed-forwards' IA^3 entry turns bypass_mode off for its layers (its own
    `bypass_mode = false`, which create_single_module hands its IA3Modules over the network's; the block's
    `bypass` off, runtime/mixed_kinds.py set_block_bypass), conv_in's keeping the network's."""
    args = {"bypass_mode": "True", "module_dropout": str(MODULE), **extra}
    given = (
        PRESET if own else PRESET.replace('algo = "ia3"\n[name', 'algo = "ia3"\nbypass_mode = false\n[name')
    )
    assert own or given != PRESET
    PRESETS["glora_bypass_ia3"] = given
    try:
        path, plan = _converted_plan(
            tmp_path, "glora_bypass_ia3", "glora", " ".join(f'"{k}={v}"' for k, v in args.items())
        )
    finally:
        del PRESETS["glora_bypass_ia3"]
    a = plan.adapter
    dropout, ranks = float(extra.get("dropout", 0.0)), float(extra.get("rank_dropout", 0.0))
    assert (a.kind, a.bypass, a.module_dropout, a.bypass_dropout, a.output_dropout, a.rank_dropout) == (
        "glora",
        True,
        MODULE,
        dropout,
        dropout,
        ranks,
    )
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora", "ia3"}
    # settled: the adapter's, or the feed-forwards' entry's own
    assert {b.on_input: b.bypass for b in a.blocks if b.kind == "ia3"} == {True: True, False: own}
    assert all(b.bypass for b in a.blocks if b.kind != "ia3")
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0, no IA^3 scale 1)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, "glora", path, **args)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert classes == {"GLoRAModule", "LoConModule", "IA3Module"}
    assert all(m.module_dropout == MODULE for m in made.unet_loras)
    ia3 = {m.lora_name: m.train_input for m in made.unet_loras if type(m).__name__ == "IA3Module"}
    assert all(
        bool(m.bypass_mode) is (own or m.lora_name not in ia3 or ia3[m.lora_name]) for m in made.unet_loras
    )
    assert ia3.pop("lora_unet_conv_in") and not any(ia3.values())
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads_as_lycoris(ours, made, _HELD)


# IA^3 on the image stream's q/k/v (a scale per output row, bias included in bypass_mode) and on the single
# blocks' linear1 (its own train_on_input: one scale over the input the fused parts share), the network's
# GLoRA on the text stream's q/k/v and the out projections
FLUX_FILE = """\
use_fnmatch = true
unet_target_module = []
unet_target_name = ["double_blocks.*_attn.*", "single_blocks.*.linear*"]
text_encoder_target_module = []
exclude_name = ["*.norm*"]

[name_algo_map."double_blocks.*.img_attn.qkv"]
algo = "ia3"
[name_algo_map."single_blocks.*.linear1"]
algo = "ia3"
train_on_input = true
"""


@pytest.mark.parametrize(
    "extra",
    [{}, {"dropout": "0.2", "rank_dropout": "0.25"}, {"dropout": "0.2", "dora_wd": "True"}],
    ids=["bypass", "dropouts", "dora_wd"],
)
def test_flux_glora_network_bypass_beside_ia3_entries_is_lycoris(tmp_path, monkeypatch, extra):
    """On Flux's fused Linears: the IA^3 q/k/v and linear1 one IA3Module each in bypass_mode (the fused
    biases at random: bypass_mode scales them), the GLoRA layers one GLoRAModule each, their parts one
    module_dropout draw; every kohya layer's module against the plan's parts from the same generator state
    (outputs, generator state, input and trained tensors' gradients). With the network's dora_wd, which
    GLoRAModule and IA3Module take and never read: inert (DBS405), no layer decomposed."""
    from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_mixed_flow_bypass_dropout import _grads_as_lycoris, modules_alike
    from tests.runtime.test_lycoris_mixed_flow_full import _BASE, _kohya_layers, _kohya_tree, _lycoris_network
    from tests.unit.convert_kit import flux_lycoris, plan_of

    args = {"bypass_mode": "True", "module_dropout": "0.5", **extra}
    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE, encoding="utf-8")
    given = " ".join(f'"{k}={v}"' for k, v in args.items())
    outcome = flux_lycoris(tmp_path, f'"algo=glora" "preset={file.name}" {given}')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    dropout = float(args.get("dropout", 0.0))
    assert (a.kind, a.bypass, a.module_dropout, bool(a.fused), a.dora) == ("glora", True, 0.5, True, False)
    assert (a.bypass_dropout, a.output_dropout, a.rank_dropout) == (
        dropout,
        0.0,
        float(extra.get("rank_dropout", 0)),
    )
    assert {b.kind for b in a.blocks} - {"adapter"} == {"ia3"} and all(b.bypass for b in a.blocks)
    assert {b.on_input for b in a.blocks if b.kind == "ia3"} == {True, False}
    comps = moved_components(plan, text_encoder=True)
    unet = comps.unet.train()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0), the base biases at random
        for name, p in unet.named_parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    tensors = lycoris_state(unet=unet, text_encoders=[], family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    made = _lycoris_network(
        monkeypatch,
        "glora",
        file,
        [torch.nn.Module(), torch.nn.Module()],
        _kohya_tree(layers),
        tensors,
        **args,
    )
    assert all(m.bypass_mode for m in made.values())
    assert {type(m).__name__ for m in made.values()} == {"GLoRAModule", "IA3Module"}
    ia3 = {n: m.train_input for n, m in made.items() if type(m).__name__ == "IA3Module"}
    assert ia3 == {"lora_unet_double_blocks_0_img_attn_qkv": False, "lora_unet_single_blocks_0_linear1": True}
    assert modules_alike(made, layers, unet, [], least=1) >= 2  # the fused q/k/v and linear1 among them
    assert _grads_as_lycoris(unet, [], made, "flux") >= len(made)

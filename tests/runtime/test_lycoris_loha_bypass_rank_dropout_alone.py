"""A LoHa network's `rank_dropout` in bypass_mode WITHOUT a `dropout` beside a preset file's LoCon (IA^3,
LoKr) entries (issue 12; was DBS403: its adapter's LoCon blocks took the bypass form from its output_dropout
alone). lycoris-lora 4.1.3's LohaModule rebuilds its bypass update through get_weight's row mask
(`torch.rand(out)`), LoConModule's bypass_forward_diff masks its down's ranks (`torch.rand(rank)`),
LokrModule and IA3Module draw none, with no Dropout after them (`dropout` 0: nn.Identity). dbspec: the loha
adapter's rank_dropout in rank_dropout_form "lycoris_bypass" (new on LohaAdapter) with output_dropout 0.
test_lycoris_bypass_rank_dropout_alone.py's checks on a LoHa network: on tiny SD 1.x against lycoris-lora's
network from the same file (outputs, generator state after each forward, every trained tensor's gradient
over three training forwards; with the old form "lycoris" the LoCon layers would draw their output rows
instead, the generator streams differing), on tiny Flux every kohya layer's module (CLIP-L's too) against
the plan's fused parts. No tiny run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dbspec.convert.kohya.lycoris_flow_file import diffusers_parts, flux_model
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.shared import moved_components

from tests.runtime.test_lycoris_algo_maps import pipe  # noqa: F401 (a fixture)
from tests.runtime.test_lycoris_bypass_rank_dropout_alone import (
    test_bypass_rank_dropout_without_dropout_is_lycoris as _sd_check,
)
from tests.runtime.test_lycoris_bypass_rank_dropout_alone import MODULE, RANKS
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
from tests.runtime.test_lycoris_preset_file_flow import _unwrapped
from tests.runtime.test_lycoris_preset_file_sdxl import _kohya_clip

pytest.importorskip("lycoris.kohya")


def test_loha_bypass_rank_dropout_without_dropout_is_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    """LoHa attention layers, LoCon ResNets, IA^3 MLPs, a LoKr conv_in."""
    _sd_check(pipe, tmp_path, monkeypatch, "loha", "locon", "ia3", "lokr")


def test_flux_loha_bypass_rank_dropout_without_dropout_is_lycoris(tmp_path, monkeypatch):
    """A LoHa network's fused Linears (the text stream's q/k/v) beside LoCon image q/k/v and LoKr linear1 /
    CLIP-L entries: one row mask per LoHa module, one rank mask over the LoCon q/k/v's shared down, the
    LoKr layers none."""
    from tests.unit.convert_kit import flux_lycoris, plan_of

    file = tmp_path / "mixed.toml"
    file.write_text(FLUX_FILE.replace("QKV", "locon").replace("LINEAR1", "lokr"), encoding="utf-8")
    drops = {"bypass_mode": "True", "rank_dropout": str(RANKS), "module_dropout": str(MODULE)}
    given = " ".join(f'"{k}={v}"' for k, v in drops.items())
    outcome = flux_lycoris(tmp_path, f'"algo=loha" "preset={file.name}" {given}')
    plan = plan_of(outcome, tmp_path, ["model.base=builtin:tiny-flux", *_BASE])
    a = plan.adapter
    assert (a.kind, a.output_dropout, a.module_dropout, a.rank_dropout, a.rank_dropout_form) == (
        "loha",
        0.0,
        MODULE,
        RANKS,
        "lycoris_bypass",
    )
    assert a.fused and {b.kind for b in a.blocks} == {"lora", "lokr"}
    assert {b.kind for b in a.text_encoder_blocks} == {"lokr"}
    comps = moved_components(plan, text_encoder=True)
    unet, clip_ours = comps.unet, comps.text_encoders[0]
    tensors = lycoris_state(unet=unet, text_encoders=comps.text_encoders, family="flux", dtype="fp32")
    layers = _kohya_layers(unet, flux_model(1, 1), diffusers_parts)
    clip = _kohya_clip(_unwrapped(clip_ours))
    made = _lycoris_network(
        monkeypatch, "loha", file, [clip, nn.Module()], _kohya_tree(layers), tensors, **drops
    )
    assert all(m.bypass_mode and m.rank_dropout == RANKS for m in made.values())
    after = [m.dropout if type(m).__name__ == "LoConModule" else m.drop for m in made.values()]
    assert all(isinstance(d, nn.Identity) for d in after)
    assert {type(m).__name__ for m in made.values()} == {"LohaModule", "LoConModule", "LokrModule"}
    # each module's outputs and generator state over its draws (a LoKr module's two: its module dropout
    # draw alone, no rows, no Dropout)
    unet, encoders = comps.unet.train(), comps.text_encoders
    compared, fused = 0, set()
    for path, (parts, _) in layers.items():
        name = "lora_unet_" + path.replace(".", "_")
        if name in made:
            x = torch.randn(3, _base(parts[0]).in_features)
            seen = _drawn_alike(made[name].train(), parts, _call_order(parts, unet), x)
            assert seen == 2 if type(made[name]).__name__ == "LokrModule" else seen > 2, name
            compared += 1
            if len(parts) > 1:
                fused.add(type(made[name]).__name__)
    for path, layer in encoders[0].named_modules():
        name = ("lora_te1_" + ("" if path.startswith("text_model.") else "text_model.") + path).replace(
            ".", "_"
        )
        if name in made:
            x = torch.randn(3, _base(layer).in_features)
            assert _drawn_alike(made[name].train(), [layer.train()], [layer], x) == 2, name
            compared += 1
    assert compared == len(made) and fused == {"LohaModule", "LoConModule", "LokrModule"}
    assert _grads_as_lycoris(unet, encoders, made, "flux") >= 2 * len(made)

"""The network's `rank_dropout` on a LoCon network whose preset file's entries give layers LoHa (issue 12; was
DBS403, a spec's DBS578 / DBS583): LyCORIS hands rank_dropout to every module and each draws in its own
forward from torch's global generator, after its module_dropout `torch.rand(1)`: LoConModule's row mask over
its update (drawn on the layer's device), LohaModule's over its make_weight ΔW (on the CPU, unscaled
without rank_dropout_scale), each renormalised with the base weight where it is decomposed (an entry's
weight_decompose, or the network's dora_wd). dbspec's LoCon layers draw in runtime/lora_dropout.py's lycoris
form, its LoHa ones in peft's LoHa forward (runtime/loha_weight.py), decomposed ones in
runtime/lycoris_dora.py. Checked against lycoris-lora 4.1.3's network built from the same file on tiny SD
1.x holding the same weights: training-mode outputs, the generator state after each forward and the
decomposed modules' gradients equal."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lora_dropout import add_lora_dropout
from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.mixed_kinds import add_module_dropout
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    MIXED_DORA,
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, lycoris_unet

lycoris_kohya = pytest.importorskip("lycoris.kohya")

RANK, MODULE = 0.3, 0.2


def _ours(pipe, adapter):  # noqa: F811
    """The plan's U-Net layers, every trainable tensor moved at random (no update 0), with the run's module
    and rank dropout as runtime/prepare.py adds them to a mixed lora adapter."""
    unet = copy.deepcopy(pipe.unet)
    add_lora(unet, adapter, adapter.denoiser_targets, seed=0, conv=True)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (p if p.abs().sum() else 0))
    a = adapter
    add_module_dropout(unet, a)
    add_lora_dropout(
        unet, a.rank_dropout, a.module_dropout, a.multiplier, a.down_dropout, a.rank_dropout_form
    )
    return unet


@pytest.mark.parametrize("case", ["plain", "entries", "dora_wd"])
def test_rank_dropout_beside_loha_entries_is_lycoris(pipe, tmp_path, monkeypatch, case):  # noqa: F811
    PRESETS["mixed_rank"] = MIXED_DORA if case == "entries" else MIXED
    extra = {"dora_wd": "True"} if case == "dora_wd" else {}
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE), **extra}
    try:
        path, plan = _converted_plan(
            tmp_path, "mixed_rank", "locon", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["mixed_rank"]
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (
        "lora",
        RANK,
        "lycoris",
        MODULE,
    )
    assert {b.kind for b in a.blocks} >= {"loha"}
    ours = _ours(pipe, a)
    decomposed_ours = {n for n, m in ours.named_modules() if dora_scale_of(m, "default") is not None}
    made, theirs = lycoris_unet(pipe, monkeypatch, "locon", path, **drops)
    assert {type(m).__name__ for m in made.unet_loras} == {"LoConModule", "LohaModule"}
    wd = {m.lora_name: m for m in made.unet_loras if getattr(m, "wd", False)}
    assert {"lora_unet_" + n.replace(".", "_") for n in decomposed_ours} == set(wd)
    if case == "plain":
        assert not wd
    else:
        assert {type(m).__name__ for m in wd.values()} == {"LoConModule", "LohaModule"}
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {
        (RANK, MODULE)
    }
    calm_then_dropped(ours, theirs, made, pipe.unet)
    for path in decomposed_ours:  # the magnitudes' gradients over the three masked forwards
        layer, module = ours.get_submodule(path), wd["lora_unet_" + path.replace(".", "_")]
        torch.testing.assert_close(
            dora_scale_of(layer, "default").grad, module.dora_scale.grad, rtol=1e-3, atol=1e-6, msg=path
        )
    # every LoHa layer's factors' gradients, decomposed or not
    mods = {m.lora_name: m for m in made.unet_loras if type(m).__name__ == "LohaModule"}
    for name, layer in ours.named_modules():
        key = "lora_unet_" + name.replace(".", "_")
        if key in mods and hasattr(layer, "hada_w1_a"):
            torch.testing.assert_close(
                layer.hada_w1_a["default"].grad, mods[key].hada_w1_a.grad, rtol=1e-3, atol=1e-6, msg=name
            )

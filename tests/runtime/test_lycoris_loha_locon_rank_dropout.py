"""The network's `rank_dropout` on a LoHa network whose preset file's entries give layers LoCon (issue 12; was
DBS403, a spec's DBS578): the mirror of test_lycoris_mixed_rank_dropout.py. LyCORIS hands rank_dropout to
every module, each drawing in its own forward after its module_dropout `torch.rand(1)`: LohaModule's row mask
over its ΔW (peft's LoHa, runtime/loha_weight.py), LoConModule's over its update's output rows (the plan's
rank_dropout_form "lycoris" on the LoHa adapter: runtime/mixed_kinds.py add_module_dropout, lora_dropout.py's
lycoris form), decomposed layers in runtime/lycoris_dora.py. The entries' own weight_decompose decomposes the
LoCon ResNets and LoHa MLPs, the network's other LoHa layers and conv_in's LoRA stay plain: one run covers
both forms of both kinds. The plan's U-Net built by runtime/prepare.py (as a run builds it) and lycoris-lora
4.1.3's network built from the same file on tiny SD 1.x, holding the same weights: training-mode outputs, the
generator state after each forward, the magnitudes' and LoHa / LoCon factors' gradients equal. With the
network's module_dropout only: without it (no `torch.rand(1)` drawn) a LoHa network's LoHa, LoCon and
decomposed LoCon layers draw their row masks alike in test_lycoris_rank_dropout_kinds.py's [loha-0.0]
case, and the decomposed layers' skip draw reads a rate of 0 there as it reads 0.2 here
(runtime/lycoris_dora.py)."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED_DORA,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, lycoris_unet
from tests.runtime.test_lycoris_mixed_rank_dropout import MODULE, RANK

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def _ours(pipe, plan):  # noqa: F811
    """The plan's U-Net as runtime/prepare.py builds it for the run (its dropouts wrapped), every trainable
    tensor then moved at random (no update 0)."""
    from dbspec.runtime.prepare import _prepare

    unet = copy.deepcopy(pipe.unet)
    _prepare(unet, "unet", plan, torch.device("cpu"), plan.adapter.denoiser_targets, 0)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in unet.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (p if p.abs().sum() else 0))
    return unet


def assert_magnitude_grads(ours, wd: dict, names) -> None:
    """Our decomposed layers `names`' magnitudes' gradients equal those of LyCORIS's modules `wd` (by lora
    name) with weight_decompose."""
    for name in names:
        layer, module = ours.get_submodule(name), wd["lora_unet_" + name.replace(".", "_")]
        torch.testing.assert_close(
            dora_scale_of(layer, "default").grad, module.dora_scale.grad, rtol=1e-3, atol=1e-6, msg=name
        )


def test_rank_dropout_on_a_loha_network_with_locon_entries_is_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    rate = MODULE
    drops = {"rank_dropout": str(RANK), "module_dropout": str(rate)}
    args = " ".join(f'"{k}={v}"' for k, v in drops.items())
    path, plan = _converted_plan(tmp_path, "loha_rank", "loha", args, text=MIXED_DORA)
    a = plan.adapter
    # the LoCon entries' masks: LoConModule's, the plan says so on the LoHa adapter
    assert (a.kind, a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (
        "loha",
        RANK,
        "lycoris",
        rate,
    )
    assert not a.rank_dropout_scale and {b.kind for b in a.blocks} >= {"lora"}
    ours = _ours(pipe, plan)
    decomposed_ours = {n for n, m in ours.named_modules() if dora_scale_of(m, "default") is not None}
    made, theirs = lycoris_unet(pipe, monkeypatch, "loha", path, **drops)
    assert {type(m).__name__ for m in made.unet_loras} == {"LoConModule", "LohaModule"}
    wd = {m.lora_name: m for m in made.unet_loras if getattr(m, "wd", False)}
    assert {"lora_unet_" + n.replace(".", "_") for n in decomposed_ours} == set(wd)
    assert {type(m).__name__ for m in wd.values()} == {"LoConModule", "LohaModule"}
    plain = {type(m).__name__ for m in made.unet_loras if not getattr(m, "wd", False)}
    assert plain == {"LoConModule", "LohaModule"}  # conv_in's LoRA, the network's own LoHa layers
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    assert {(round(m.rank_dropout, 6), round(m.module_dropout, 6)) for m in made.unet_loras} == {(RANK, rate)}
    calm_then_dropped(ours, theirs, made, pipe.unet)
    assert_magnitude_grads(ours, wd, decomposed_ours)  # over the three masked forwards
    # every LoHa and LoCon layer's factors' gradients, decomposed or not
    mods = {m.lora_name: m for m in made.unet_loras}
    checked = set()
    for name, layer in ours.named_modules():
        module = mods.get("lora_unet_" + name.replace(".", "_"))
        if module is None:
            continue
        if hasattr(layer, "hada_w1_a") and "default" in layer.hada_w1_a:
            mine, other = layer.hada_w1_a["default"].grad, module.hada_w1_a.grad
        elif hasattr(layer, "lora_B") and "default" in layer.lora_B:
            mine, other = layer.lora_B["default"].weight.grad, module.lora_up.weight.grad
        else:
            continue
        torch.testing.assert_close(mine.reshape(other.shape), other, rtol=1e-3, atol=1e-6, msg=name)
        checked.add(type(module).__name__)
    assert checked == {"LoConModule", "LohaModule"}

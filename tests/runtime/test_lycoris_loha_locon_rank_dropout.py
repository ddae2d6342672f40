"""The network's `rank_dropout` on a LoHa network whose preset file's entries give layers LoCon (issue 12; was
DBS403, a spec's DBS578): the mirror of test_lycoris_mixed_rank_dropout.py. LyCORIS hands rank_dropout to
every module, each drawing in its own forward after its module_dropout `torch.rand(1)`: LohaModule's row mask
over its ΔW (peft's LoHa, runtime/loha_weight.py), LoConModule's over its update's output rows (the plan's
rank_dropout_form "lycoris" on the LoHa adapter: runtime/mixed_kinds.py add_module_dropout, lora_dropout.py's
lycoris form), decomposed layers in runtime/lycoris_dora.py. The entries' own weight_decompose decomposes the
LoCon ResNets and LoHa MLPs, the network's other LoHa layers and conv_in's LoRA stay plain: one run covers
both forms of both kinds. The plan's U-Net built by runtime/prepare.py (as a run builds it) and lycoris-lora
4.1.3's network built from the same file on tiny SD 1.x, holding the same weights: training-mode outputs, the
generator state after each forward, the magnitudes' and LoHa / LoCon factors' gradients equal."""

from __future__ import annotations

import copy

import pytest
import torch

from dbspec.runtime.lycoris_dora import dora_scale_of
from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED_DORA,
    NETWORK_ATTRS,
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet
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


@pytest.mark.parametrize("rate", [MODULE, 0.0])
def test_rank_dropout_on_a_loha_network_with_locon_entries_is_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    rate,
):
    """With module_dropout, and without it: LyCORIS's modules then draw no `torch.rand(1)`, nor do the LoCon
    layers, nor peft's LoHa forward (runtime/loha_weight.py)."""
    PRESETS["loha_rank"] = MIXED_DORA
    drops = {"rank_dropout": str(RANK), **({"module_dropout": str(rate)} if rate else {})}
    try:
        path, plan = _converted_plan(
            tmp_path, "loha_rank", "loha", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["loha_rank"]
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
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.eval(), theirs.eval(), made.eval()
    with torch.no_grad():
        calm = ours(latents, t, context).sample
        torch.testing.assert_close(theirs(latents, t, context).sample, calm, rtol=1e-4, atol=1e-4)
    ours.train(), theirs.train(), made.train()
    torch.manual_seed(11)
    outputs = []
    for _ in range(3):
        before = torch.get_rng_state()
        mine = ours(latents, t, context).sample
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        other = theirs(latents, t, context).sample
        assert torch.equal(torch.get_rng_state(), after)
        torch.testing.assert_close(other, mine, rtol=1e-4, atol=1e-4)
        mine.square().mean().backward()
        other.square().mean().backward()
        outputs.append(mine.detach())
    assert not torch.allclose(outputs[0], calm, atol=1e-4)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    for name in decomposed_ours:  # the magnitudes' gradients over the three masked forwards
        layer, module = ours.get_submodule(name), wd["lora_unet_" + name.replace(".", "_")]
        torch.testing.assert_close(
            dora_scale_of(layer, "default").grad, module.dora_scale.grad, rtol=1e-3, atol=1e-6, msg=name
        )
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

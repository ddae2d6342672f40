"""The network's `rank_dropout` on an algo=dylora network with `train_norm` whose preset file gives other
layers LyCORIS's other algorithms (issue 12; was DBS403): DyLoraModule never reads it, the entries' modules
draw it as their classes do (test_lycoris_rank_dropout_kinds.py) and every NormModule too
(`torch.rand(dim) < rate`, keeping the offsets it marks): the DyLoRA adapter's `rank_dropout` (its blocks')
and `norm_rank_dropout` (the offsets'), the same rate. The plan's U-Net built by runtime/prepare.py and
lycoris-lora 4.1.3's network from the same file on tiny SD 1.x, holding the same weights (the norm offsets
among them, moved off 0): training outputs, the generator state after each forward and the norm offsets'
and the entries' gradients equal."""

from __future__ import annotations

import random

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_loha_locon_rank_dropout import _ours
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws
from tests.runtime.test_lycoris_mixed_rank_dropout import MODULE, RANK
from tests.runtime.test_lycoris_rank_dropout_kinds import GRADS, KINDS, _layer_of, _same_dylora_blocks

lycoris_kohya = pytest.importorskip("lycoris.kohya")


def test_dylora_network_with_norms_rank_dropout_beside_other_kinds_is_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    drops = {"rank_dropout": str(RANK), "module_dropout": str(MODULE), "train_norm": "True"}
    PRESETS["rank_norms"] = KINDS
    try:
        path, plan = _converted_plan(
            tmp_path, "rank_norms", "dylora", " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["rank_norms"]
    a = plan.adapter
    assert (a.kind, a.rank_dropout, a.norm_rank_dropout, a.module_dropout) == ("dylora", RANK, RANK, MODULE)
    assert a.rank_dropout_form == "lycoris" and a.denoiser_norms  # LoConModule's masks; U-Net norm offsets
    ours = _ours(pipe, plan)
    made, theirs = lycoris_unet(pipe, monkeypatch, "dylora", path, **drops)
    norms = [m for m in made.unet_loras if type(m).__name__ == "NormModule"]
    assert norms and all(m.rank_dropout == RANK for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    dylora = {m.lora_name for m in made.unet_loras if type(m).__name__ == "DyLoraModule"}
    assert {k.split(".")[0] for k in result.unexpected_keys} <= dylora
    # the norm offsets are copied in below (lycoris_state holds the adapter layers' tensors alone)
    named = dylora | {m.lora_name for m in norms}
    assert {k.split(".")[0] for k in result.missing_keys if not k.startswith("lora_te_")} <= named
    assert _same_dylora_blocks(ours, made) == len(dylora) > 0
    with torch.no_grad():  # the offsets (moved off 0 by _ours) into LyCORIS's NormModules
        for module in norms:
            layer = _layer_of(ours, module.lora_name)
            module.w_norm.copy_(layer.lora_w_norm)
            module.b_norm.copy_(layer.lora_b_norm)
    assert any(bool(m.w_norm.abs().max() > 0) for m in norms)
    monkeypatch.setattr(random, "randint", lambda lo, hi: hi)  # DyLoraModule's draw: the last block
    latents, context = _inputs(1, pipe.unet)
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, torch.tensor([10, 700]), context), 3, backward=True)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)  # the draws move on
    checked = set()
    for module in made.unet_loras:
        kind = type(module).__name__
        pairs = {**GRADS, "NormModule": ("lora_w_norm", "w_norm")}
        if kind not in pairs:
            continue
        mine, other = pairs[kind]
        grad = getattr(_layer_of(ours, module.lora_name), mine)
        grad = (grad["default"] if kind != "NormModule" else grad).grad
        expected = getattr(module, other).grad
        if expected is None:  # a norm whose offsets get no gradient in LyCORIS's network: none in ours
            assert grad is None, module.lora_name
            continue
        torch.testing.assert_close(grad.reshape(expected.shape), expected, rtol=1e-3, atol=1e-6)
        checked.add(kind)
    assert checked == {*GRADS, "NormModule"}

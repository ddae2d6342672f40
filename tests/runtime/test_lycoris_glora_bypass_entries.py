"""A GLoRA network's `bypass_mode` beside a preset file's LoCon / LoHa / LoKr entries (issue 12; was DBS403, a
spec's DBS578): LyCORIS hands the network's bypass_mode to every module, the GLoRA layers keeping their bypass
forward and LoConModule / LohaModule / LokrModule computing theirs, which without a dropout, rank_dropout or
weight decomposition is their default one after the same module_dropout draw; the converted glora adapter's
`bypass` reaches those blocks (runtime/mixed_kinds.py kind_adapter). Checked against lycoris-lora 4.1.3's
network built with bypass_mode from the same file on tiny SD 1.x, module_dropout on: training outputs, the
generator state after each of three training forwards, and every trained tensor's gradient (no tiny run)."""

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
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, lycoris_unet

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
    grads = {k: v.grad for k, v in made.named_parameters() if v.grad is not None}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    mine = {k: v for k, v in moved.items() if k in grads and not k.endswith(".alpha")}
    assert len(mine) > 20 and all(any(h in key for key in mine) for h in _HELD), sorted(mine)
    for key, value in mine.items():
        torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-3, atol=1e-6, msg=key)

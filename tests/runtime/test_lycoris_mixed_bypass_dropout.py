"""The network's `dropout` (or --network_dropout) in bypass_mode on a LoRA/LoCon, LoHa or LoKr network whose
preset file's entries give layers another of those algorithms (issue 12; was DBS403, a spec's DBS578):
lycoris-lora 4.1.3's LoConModule, LohaModule and LokrModule each end their bypass_forward_diff in torch's
Dropout of their own update x scalar, drawn after their module_dropout `torch.rand(1)`, each layer in
forward order from torch's global generator. dbspec gives every such layer the adapter's `output_dropout`
(runtime/prepare.py: LoRA layers through lora_dropout.py, LoHa / LoKr ones through fused_lycoris_dropout.py
add_lycoris_layer_dropout, whatever the adapter's kind). Checked against lycoris-lora's network built from
the same file on tiny SD 1.x holding the same weights: training-mode outputs, the generator state after each
forward and every trained tensor's gradient over a few forwards equal."""

from __future__ import annotations

import pytest
import torch

from dbspec.runtime.lycoris_export import lycoris_state
from dbspec.runtime.prepare import _prepare
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import _inputs, lycoris_unet, same_draws

pytest.importorskip("lycoris.kohya")

DROPOUT, MODULE = 0.3, 0.2
CLASSES = {"lokr": "LokrModule", "locon": "LoConModule", "loha": "LohaModule"}


@pytest.mark.parametrize("algo", ["lokr", "locon", "loha"])
def test_bypass_dropout_beside_other_algorithms_is_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """`lokr`: LoKr attention, LoCon ResNets and conv_in, LoHa MLPs; `locon`: LoCon with LoHa MLPs; `loha`:
    LoHa with LoCon ResNets and conv_in (MIXED's entries on each network)."""
    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    PRESETS["mixed_bypass"] = MIXED
    try:
        path, plan = _converted_plan(
            tmp_path, "mixed_bypass", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["mixed_bypass"]
    a = plan.adapter
    assert (a.output_dropout, a.module_dropout, a.rank_dropout, a.dora) == (DROPOUT, MODULE, 0.0, False)
    assert len({b.kind for b in a.blocks} - {"adapter"}) >= 1
    ours = pipe.unet.__class__.from_config(pipe.unet.config)
    ours.load_state_dict(pipe.unet.state_dict())
    params = _prepare(ours, "unet", plan, torch.device("cpu"), a.denoiser_targets, plan.schedule.seed)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # every trained tensor moved (no update 0)
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    made, theirs = lycoris_unet(pipe, monkeypatch, algo, path, **drops)
    classes = {type(m).__name__ for m in made.unet_loras}
    assert len(classes) >= 2 and CLASSES[algo] in classes
    assert all(m.bypass_mode for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    latents, context = _inputs(1, pipe.unet)
    t = torch.tensor([10, 700])
    ours.eval(), theirs.eval(), made.eval()
    with torch.no_grad():
        calm = ours(latents, t, context).sample
        torch.testing.assert_close(theirs(latents, t, context).sample, calm, rtol=1e-4, atol=1e-4)
    ours.train(), theirs.train(), made.train()
    outputs = same_draws(ours, theirs, (latents, t, context), 3, backward=True)
    assert not torch.allclose(outputs[0], calm, atol=1e-4)
    assert not torch.allclose(outputs[0], outputs[1], atol=1e-4)
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads = {k: v.grad for k, v in made.named_parameters() if v.grad is not None}
    mine = {}
    for p in ours.parameters():
        if p.requires_grad:
            p.data = p.grad if p.grad is not None else torch.zeros_like(p)
    moved = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    for key, value in moved.items():
        if key in grads and not key.endswith(".alpha"):
            mine[key] = value
    assert len(mine) > 20
    held = {"lokr": "lokr_w1", "lora": "lora_up", "loha": "hada_w1_a"}  # each kind's layers compared
    kinds = {a.kind} | {b.kind for b in a.blocks} - {"adapter"}
    assert len(kinds) >= 2 and all(any(held[k] in key for key in mine) for k in kinds), sorted(mine)
    for key, value in mine.items():
        torch.testing.assert_close(value, grads[key].reshape(value.shape), rtol=1e-3, atol=1e-6, msg=key)

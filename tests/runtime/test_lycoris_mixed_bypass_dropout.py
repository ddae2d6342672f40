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
from tests.runtime.shared import kept_lycoris_presets
from tests.runtime.test_lycoris_algo_maps import (  # noqa: F401 (pipe: a fixture)
    MIXED,
    PRESETS,
    _converted_plan,
    pipe,
)
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

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
    calm_then_dropped(ours, theirs, made, pipe.unet)
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    held = {"lokr": "lokr_w1", "lora": "lora_up", "loha": "hada_w1_a"}  # each kind's layers compared
    kinds = {a.kind} | {b.kind for b in a.blocks} - {"adapter"}
    assert len(kinds) >= 2
    grads_as_lycoris(ours, made, [held[k] for k in kinds])


@pytest.mark.parametrize("algo", ["lokr", "locon"])
def test_clip_bypass_dropout_beside_other_algorithms_is_lycoris(pipe, tmp_path, monkeypatch, algo):  # noqa: F811
    """The text encoder's layers alike (CLIP's attention of the network's algorithm, its MLPs LoHa): training
    outputs and generator state over three forwards equal lycoris-lora's network's from the file."""
    import lycoris.kohya as lycoris_kohya
    from torch import nn

    from dbspec.runtime.prepare import text_targets

    drops = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    PRESETS["mixed_bypass"] = MIXED
    try:
        path, plan = _converted_plan(
            tmp_path, "mixed_bypass", algo, " ".join(f'"{k}={v}"' for k, v in drops.items())
        )
    finally:
        del PRESETS["mixed_bypass"]
    ours = pipe.text_encoder.__class__(pipe.text_encoder.config)
    ours.load_state_dict(pipe.text_encoder.state_dict())
    targets = text_targets(plan.adapter, "text_encoder")
    params = _prepare(ours, "text_encoder", plan, torch.device("cpu"), targets, 1)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in params:
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + p)
    kept_lycoris_presets(monkeypatch)
    named = nn.Module()
    named.text_model = ours.__class__(ours.config)
    named.text_model.load_state_dict(pipe.text_encoder.state_dict())
    made = lycoris_kohya.create_network(
        1.0, 4, 1.0, None, named, pipe.unet, algo=algo, conv_dim="4", preset=str(path), **drops
    )
    made.apply_to(named, None, apply_text_encoder=True, apply_unet=False)
    assert {type(m).__name__ for m in made.text_encoder_loras} == {CLASSES[algo], "LohaModule"}
    state = lycoris_state(unet=None, text_encoders=[ours], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_unet_") for k in result.missing_keys)
    ids = torch.randint(0, 100, (2, 77), generator=g)
    ours.eval()
    with torch.no_grad():
        calm = ours(ids)[0]
    ours.train(), named.train(), made.train()
    torch.manual_seed(11)
    for _ in range(3):
        before = torch.get_rng_state()
        mine = ours(ids)[0]
        after = torch.get_rng_state()
        torch.set_rng_state(before)
        torch.testing.assert_close(named.text_model(ids)[0], mine, rtol=1e-4, atol=1e-4)
        assert torch.equal(torch.get_rng_state(), after)
        assert not torch.allclose(mine, calm, atol=1e-4)

"""A GLoRA network's `bypass_mode` with its `dropout` beside a preset file's LoCon / LoHa / LoKr entries
(issue 12; was DBS403): LyCORIS hands the network's bypass_mode and dropout to every module, GLoRAModule's
bypass forward dropping each pair's output (its Dropout of `ax`, then of `bx`), LoConModule's, LohaModule's
and LokrModule's their update x scalar, each after its module_dropout draw, in forward order. The converted
glora adapter's `dropout` is GLoRA's (the plan's bypass_dropout) and its LoCon / LoHa / LoKr blocks' bypass
Dropout (the plan's output_dropout: runtime/prepare.py, lora_dropout.py and fused_lycoris_dropout.py as for a
LoCon network's in bypass_mode). Checked against lycoris-lora 4.1.3's network built with bypass_mode, dropout
and module_dropout from the same file on tiny SD 1.x: training outputs, the generator state after each of
three training forwards, and every trained tensor's gradient (no tiny run)."""

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
from tests.runtime.test_lycoris_glora_bypass_entries import _HELD, MODULE, PRESET, flux_bypass_entries_alike
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

pytest.importorskip("lycoris.kohya")

DROPOUT = 0.2


def test_glora_network_bypass_dropout_beside_locon_loha_lokr_entries_is_lycoris(pipe, tmp_path, monkeypatch):  # noqa: F811
    args = {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": str(MODULE)}
    PRESETS["glora_bypass_dropout"] = PRESET
    try:
        path, plan = _converted_plan(
            tmp_path, "glora_bypass_dropout", "glora", " ".join(f'"{k}={v}"' for k, v in args.items())
        )
    finally:
        del PRESETS["glora_bypass_dropout"]
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout, a.rank_dropout) == ("glora", True, MODULE, 0.0)
    assert (a.bypass_dropout, a.output_dropout) == (DROPOUT, DROPOUT)
    assert {b.kind for b in a.blocks} - {"adapter"} == {"lora", "loha", "lokr"}
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
    grads_as_lycoris(ours, made, _HELD)


def test_flux_glora_network_bypass_dropout_beside_fused_entries_is_lycoris(tmp_path, monkeypatch):
    """On Flux's fused Linears: each fused GLoRAModule's Dropout masks of `ax` and of `bx` over its stacked
    rows, the fused LoConModule's / LohaModule's one Dropout mask over their stacked update, CLIP-L's
    LokrModules' own, after their module_dropout draws, as lycoris-lora's."""
    flux_bypass_entries_alike(
        tmp_path, monkeypatch, {"bypass_mode": "True", "dropout": str(DROPOUT), "module_dropout": "0.5"}
    )

"""A GLoRA network's `bypass_mode` with its `rank_dropout` beside a preset file's LoCon / LoHa / LoKr entries
(issue 12; was DBS403): LyCORIS hands the network's bypass_mode and rank_dropout to every module, and each
class draws its own mask form in its bypass forward after its module_dropout draw, in forward order:
GLoRAModule keeps the ranks of a2 x and of b2 x whose `torch.rand(rank)` draw is BELOW the rate (two draws),
LoConModule those of its down's output whose draw is ABOVE it, LohaModule rebuilds its update with
get_weight's row mask (`torch.rand(out) > rate`, the CPU's), LokrModule draws none. The converted glora
adapter's rank_dropout with its blocks' form settled in the plan (rank_dropout_form "lycoris_bypass":
compiler/adapters.py _lycoris_rank_dropout_form), the GLoRA layers keeping theirs (runtime/lycoris_glora.py).
Checked against lycoris-lora 4.1.3's network built with bypass_mode, rank_dropout and module_dropout (and
with the network's dropout too) from the same file on tiny SD 1.x: eval outputs, training outputs, the
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
from tests.runtime.test_lycoris_glora_bypass_entries import _HELD, PRESET, flux_bypass_entries_alike
from tests.runtime.test_lycoris_mixed_module_dropout import calm_then_dropped, grads_as_lycoris, lycoris_unet

pytest.importorskip("lycoris.kohya")

RANKS = 0.3  # GLoRA keeps about 30% of its ranks, LoCon about 70% of its: the two forms differ
# (at test_lycoris_glora_bypass_entries.py's 0.3 LoKr's one layer, conv_in, skips all three forwards here)
MODULE = 0.1


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_glora_network_bypass_rank_dropout_beside_locon_loha_lokr_entries_is_lycoris(
    pipe,  # noqa: F811
    tmp_path,
    monkeypatch,
    dropout,
):
    args = {"bypass_mode": "True", "rank_dropout": str(RANKS), "module_dropout": str(MODULE)}
    if dropout:
        args["dropout"] = str(dropout)
    PRESETS["glora_bypass_ranks"] = PRESET
    try:
        path, plan = _converted_plan(
            tmp_path, "glora_bypass_ranks", "glora", " ".join(f'"{k}={v}"' for k, v in args.items())
        )
    finally:
        del PRESETS["glora_bypass_ranks"]
    a = plan.adapter
    assert (a.kind, a.bypass, a.module_dropout, a.rank_dropout) == ("glora", True, MODULE, RANKS)
    assert (a.rank_dropout_form, a.bypass_dropout, a.output_dropout) == ("lycoris_bypass", dropout, dropout)
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
    assert all(m.rank_dropout == RANKS and not m.rank_dropout_scale for m in made.unet_loras)
    state = lycoris_state(unet=ours, text_encoders=[], family="sd1", dtype="fp32")
    result = made.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and all(k.startswith("lora_te_") for k in result.missing_keys)
    calm_then_dropped(ours, theirs, made, pipe.unet)  # eval equal, three dropped training forwards
    # every trained tensor's gradient over the three dropped forwards, by the name LyCORIS saves it under
    grads_as_lycoris(ours, made, _HELD)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_flux_glora_network_bypass_rank_dropout_beside_fused_entries_is_lycoris(
    tmp_path, monkeypatch, dropout
):
    """On Flux's fused Linears: each fused GLoRAModule's two rank masks (kept below the rate) over its shared
    a2 / b2 ranks, the fused LoConModule's one rank mask (kept above it) over its shared down's ranks, the
    fused LohaModule's one row mask over its stacked rows, CLIP-L's LokrModules none, after their
    module_dropout draws (and with the network's dropout its Dropout masks), as lycoris-lora's: every kohya
    layer's module against the plan's parts from the same generator state."""
    args = {"bypass_mode": "True", "rank_dropout": str(RANKS), "module_dropout": "0.5"}
    if dropout:
        args["dropout"] = str(dropout)
    plan, made = flux_bypass_entries_alike(tmp_path, monkeypatch, args)
    a = plan.adapter
    assert (a.rank_dropout, a.rank_dropout_form, bool(a.fused)) == (RANKS, "lycoris_bypass", True)
    assert all(m.rank_dropout == RANKS for m in made.values())

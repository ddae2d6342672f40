"""lycoris.kohya algo=lokr / loha with dora_wd, wd_on_output=False and the dropouts on kohya's fused Flux
Linears (issue 12; was DBS403, a spec's DBS575): LokrModule / LohaModule(weight_decompose=True,
wd_on_out=False) on the fused Linear draw `torch.rand(1) < module_dropout` once per training forward, then
(LoHa) one row mask `torch.rand(out) > rank_dropout` over every row of the fused update, and decompose
W + masked ΔW by its column norms over every row. dbspec's parts share that draw
(runtime/fused_lycoris_dropout.py) and the one (1, in) magnitude, each part's rows renormalised by the
column norms of every part's masked merged rows (runtime/lycoris_dora.py _fused_column_delta). After a
1-step tiny-flux run (the factors and magnitude moved), the trained double-block q/k/v in training equal
lycoris-lora 4.1.3's module holding the same values on the stacked Linear from the same generator state:
outputs, the generator left alike, the magnitude's and factors' gradients; skipped and drawn forwards both
met. (LoKr's rank_dropout stops kohya on a GPU, DBS402: module_dropout alone there.)"""

from __future__ import annotations

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

from dbspec.runtime.execute import execute
from dbspec.runtime.lycoris_dora import dora_scale_of
from tests.runtime.runspec import make_plan
from tests.runtime.test_lycoris_flux import BASE, LOKR, _fused_linear

DROPS = {"lokr": {"module_dropout": 0.3}, "loha": {"rank_dropout": 0.4, "module_dropout": 0.3}}


def _theirs(cls, parts, drops):
    """lycoris-lora's module (weight_decompose per input column, the dropouts) on the fused Linear of
    `parts`, holding the parts' trained values."""
    fused = _fused_linear([p.base_layer for p in parts])
    theirs = cls("qkv", fused, 1.0, 2, 1.5, weight_decompose=True, wd_on_out=False, **drops)
    first = parts[0]
    with torch.no_grad():
        if cls is LokrModule:
            for key in ("lokr_w1", "lokr_w2_a", "lokr_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
        else:
            for key in ("hada_w1_b", "hada_w2_b"):
                getattr(theirs, key).copy_(getattr(first, key)["default"])
            for key in ("hada_w1_a", "hada_w2_a"):
                getattr(theirs, key).copy_(torch.cat([getattr(p, key)["default"] for p in parts]))
        theirs.dora_scale.copy_(dora_scale_of(first, "default"))
    theirs.apply_to()
    return theirs.train()


@pytest.mark.parametrize("kind", ["lokr", "loha"])
def test_fused_columns_with_dropouts_draw_once_as_lycoris_module(tmp_path, kind):
    cls = LokrModule if kind == "lokr" else LohaModule
    drops = DROPS[kind]
    extra = LOKR.replace('kind = "lokr"', f'kind = "{kind}"')
    extra = extra.replace(
        "fused_projections = true\n",
        'fused_projections = true\ndora = true\ndora_axis = "input"\n'
        + "".join(f"{k} = {v}\n" for k, v in drops.items()),
    )
    plan = make_plan(tmp_path, base=BASE, steps=1, extra=extra)
    a = plan.adapter
    assert (a.dora, a.dora_axis, a.module_dropout, a.rank_dropout) == (
        True,
        "input",
        0.3,
        drops.get("rank_dropout", 0.0),
    )
    whole = execute(plan, keep_models=True)
    assert whole.status == "finished"
    transformer = whole.components.unet.float().train()
    attn = transformer.transformer_blocks[0].attn
    qkv = (attn.to_q, attn.to_k, attn.to_v)
    scale = dora_scale_of(qkv[0], "default")
    assert all(dora_scale_of(p, "default") is scale for p in qkv) and scale.shape == (1, 16)
    theirs = _theirs(cls, qkv, drops)
    x, target = torch.randn(3, 16), torch.randn(3, 48)
    plain = torch.cat([p.base_layer(x) for p in qkv], dim=-1)
    skipped = 0
    for seed in range(8):
        transformer.zero_grad()
        theirs.zero_grad()
        torch.manual_seed(seed)
        ours = torch.cat([p(x) for p in qkv], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        expected = theirs(x)
        assert torch.equal(torch.get_rng_state(), after)  # one draw (and one mask) per fused forward
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)
        if torch.equal(expected, plain):
            skipped += 1
            continue
        torch.nn.functional.mse_loss(ours, target).backward()
        torch.nn.functional.mse_loss(expected, target).backward()
        torch.testing.assert_close(scale.grad, theirs.dora_scale.grad, rtol=1e-4, atol=1e-7)
        if kind == "lokr":
            torch.testing.assert_close(
                qkv[0].lokr_w1["default"].grad, theirs.lokr_w1.grad, rtol=1e-4, atol=1e-7
            )
        else:
            rows_grad = torch.cat([p.hada_w2_a["default"].grad for p in qkv])
            torch.testing.assert_close(rows_grad, theirs.hada_w2_a.grad, rtol=1e-4, atol=1e-7)
    assert 0 < skipped < 8

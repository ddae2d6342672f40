"""LyCORIS's LoKr / LoHa `dropout` in bypass_mode on layers of their own (adapter.output_dropout without
fused_projections: kohya's lycoris.kohya on the SD / SDXL U-Net and the text encoders, and a Flux / SD3
network's other layers; runtime/fused_lycoris_dropout.py add_lycoris_layer_dropout): per training forward
module_dropout's torch.rand(1), LoHa's row mask, then torch's Dropout of the update, as lycoris-lora 4.1.3's
LohaModule / LokrModule in bypass_mode draw them on a Linear and a 3x3 convolution from the same seed; the
outputs and gradients equal. (The draws resume bit-exact: test_lycoris_flux_fused_opts.py's LoHa run.)"""

from __future__ import annotations

import copy

import pytest
import torch
from lycoris.modules.loha import LohaModule
from lycoris.modules.lokr import LokrModule

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.fused_lycoris_dropout import add_lycoris_layer_dropout
from tests.runtime.test_lycoris_dora import LOHA, LOKR, Net

DROPS = {"lokr": {"module_dropout": 0.3}, "loha": {"module_dropout": 0.3, "rank_dropout": 0.3}}


@pytest.mark.parametrize("layer", ["lin", "conv"])
@pytest.mark.parametrize("kind", ["lokr", "loha", "loha-rescaled"])
def test_bypass_dropout_on_a_layer_of_its_own_is_lycoris(kind, layer):
    """`loha-rescaled`: a block's own rank_dropout_scale on the Linear (a LyCORIS map entry's, issue 12):
    its row mask divided by its mean as LohaModule's with rank_dropout_scale, the convolution's not."""
    kind, rescaled = kind.split("-")[0], kind.endswith("rescaled")
    drops = DROPS[kind]
    own = BlockPlan(pattern="^lin$", rank=2, alpha=1.5, rank_dropout_scale="on")
    net = Net()
    base = copy.deepcopy(getattr(net, layer))
    plan = AdapterPlan(
        kind=kind,
        rank=2,
        alpha=1.5,
        denoiser_targets=("lin",),
        conv_rank=2,
        conv_alpha=1.5,
        conv_targets=("conv",),
        output_dropout=0.4,
        lokr_factorization="lycoris",
        blocks=(own,) if rescaled else (),
        **drops,
    )
    add_lora(net, plan, ("lin",), seed=3, conv=True)
    rates = (drops["module_dropout"], drops.get("rank_dropout", 0.0), False, 0.4)
    assert add_lycoris_layer_dropout(net, *rates) == 2  # the Linear and the convolution
    cls, names = (LokrModule, LOKR) if kind == "lokr" else (LohaModule, LOHA)
    scale = rescaled and layer == "lin"
    theirs = cls("m", base, 1.0, 2, 1.5, bypass_mode=True, dropout=0.4, rank_dropout_scale=scale, **drops)
    ours = getattr(net, layer)
    params = dict(theirs.named_parameters())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name in names:
            table = getattr(ours, name, None)
            if table is not None and "default" in table:
                value = torch.randn(table["default"].shape, generator=g) * 0.3
                table["default"].copy_(value)
                params[name].copy_(value.reshape(params[name].shape))
    theirs.apply_to()
    net.train()
    theirs.train()
    x = torch.randn(2, 64) if layer == "lin" else torch.randn(2, 32, 5, 5)
    skipped = 0
    for seed in range(6):
        net.zero_grad()
        theirs.zero_grad()
        torch.manual_seed(seed)
        out = ours(x)
        torch.manual_seed(seed)
        expected = theirs(x)
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        if torch.equal(expected, theirs.org_forward(x)):
            skipped += 1
            continue
        out.square().mean().backward()
        expected.square().mean().backward()
        for name in names:
            table = getattr(ours, name, None)
            if table is not None and "default" in table:
                grad = table["default"].grad.reshape(params[name].shape)
                torch.testing.assert_close(grad, params[name].grad, rtol=1e-4, atol=1e-6)
    assert 0 < skipped < 6

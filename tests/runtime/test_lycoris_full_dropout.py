"""lycoris.kohya algo=full with `module_dropout` and `rank_dropout` on SD 1.x/2.x / SDXL (issue 12; was
DBS403): FullModule.forward draws `torch.rand(1) < module_dropout` from torch's global generator once per
training forward, first, and answers with the original layer below the rate (runtime/mixed_kinds.py
add_own_module_dropout); otherwise make_weight masks the update's output rows, W' - W and b' - b alike, with
`torch.rand(out, device=x.device) > rank_dropout`, unscaled (runtime/lycoris_full.py add_full_rank_dropout).
Checked against lycoris-lora 4.1.3's FullModule after apply_to (as kohya trains it) on tiny Linear and Conv2d
layers with and without bias: training outputs and gradients equal from the same generator state, the
generator left where FullModule leaves it, no draw outside training."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.lycoris_full import add_full_rank_dropout
from dbspec.runtime.mixed_kinds import add_own_module_dropout

full = pytest.importorskip("lycoris.modules.full")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.nobias = nn.Linear(8, 12, bias=False)


INPUTS = {"proj": (5, 8), "conv": (2, 4, 5, 5), "nobias": (3, 8)}


@pytest.mark.parametrize(("module", "rank"), [(0.5, 0.0), (0.0, 0.4), (0.4, 0.5)])
def test_full_layers_draw_as_lycoris_full_module(module, rank):
    torch.manual_seed(0)
    net = Net()
    base = copy.deepcopy(net)
    add_lora(net, AdapterPlan(kind="full", conv_targets=("conv",)), ("proj", "nobias"), seed=3, conv=True)
    if module:
        assert add_own_module_dropout(net, module) == 3
    assert add_full_rank_dropout(net, rank) == 3
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for p in net.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    for name, shape in INPUTS.items():
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        theirs = full.FullModule(name, reference, 1.0, module_dropout=module, rank_dropout=rank)
        theirs.apply_to()  # kohya's network: self.weight becomes the layer's whole weight
        with torch.no_grad():
            theirs.weight.copy_(layer.lora_full["default"])
            if theirs.bias is not None:
                theirs.bias.copy_(layer.lora_full_bias["default"])
        x = torch.randn(shape, generator=g)
        net.eval(), theirs.eval()
        with torch.no_grad():
            plain, whole = layer.base_layer(x), reference(x)  # the undropped update: no draw in eval
        net.train(), theirs.train()
        _same_draws(layer, theirs, reference, x, plain, whole, module, rank)
        net.eval(), theirs.eval()
        state = torch.get_rng_state()
        with torch.no_grad():
            torch.testing.assert_close(layer(x), reference(x), rtol=1e-5, atol=1e-5)  # no draw
        assert torch.equal(state, torch.get_rng_state())


def _same_draws(layer, theirs, reference, x, plain, whole, module: float, rank: float) -> None:
    """Eight training forwards and backwards of each from one generator state: the same outputs, the
    generator left alike, the same gradients of the trained copy (none through a skipped forward, none for
    a dropped row); skipped, masked and (rank 0) whole forwards all met."""
    seen = set()
    for seed in range(8):
        torch.manual_seed(seed)
        want = reference(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        mine = layer(x)
        assert torch.equal(after, torch.get_rng_state())
        torch.testing.assert_close(mine, want, rtol=1e-5, atol=1e-5)
        skipped = torch.equal(want, plain)
        seen.add("skipped" if skipped else "whole" if torch.allclose(want, whole, atol=1e-6) else "masked")
        if want.requires_grad:
            want.square().sum().backward()
            mine.square().sum().backward()
        else:
            assert skipped and not mine.requires_grad
    assert ("skipped" in seen) == bool(module) and ("masked" in seen) == bool(rank)
    assert layer.lora_full["default"].grad is not None and layer.lora_full["default"].grad.abs().sum() > 0
    torch.testing.assert_close(layer.lora_full["default"].grad, theirs.weight.grad, rtol=1e-4, atol=1e-5)
    if theirs.bias is not None:
        torch.testing.assert_close(
            layer.lora_full_bias["default"].grad, theirs.bias.grad, rtol=1e-4, atol=1e-5
        )

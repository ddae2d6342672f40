"""LyCORIS's bypass_mode on IA^3 (plan.adapter.bypass; runtime/lycoris_ia3.py, issue 12) against lycoris-lora
4.1.3's IA3Module built with bypass_mode=True: on the output side the layer's output, its bias included,
times (1 + w); on the input side the layer on x times (1 + w). On fixed random scales, linear (token) and
convolution layers with biases, both sides: the same output and gradients; not the default forward's output
where the bias shows; the merged layer giving that output and unmerging back to the base; the export
IA3Module's state dict."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora

modules = pytest.importorskip("lycoris.modules")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(12, 20)
        self.fc2 = nn.Linear(20, 12)
        self.conv = nn.Conv2d(6, 10, 3, padding=1)
        self.conv_in = nn.Conv2d(6, 10, 3, padding=1)


def _inputs(generator):
    return {
        "proj": torch.randn(2, 5, 12, generator=generator),
        "fc2": torch.randn(2, 5, 20, generator=generator),
        "conv": torch.randn(2, 6, 5, 4, generator=generator),
        "conv_in": torch.randn(2, 6, 5, 4, generator=generator),
    }


def test_ia3_bypass_equals_lycoris_bypass_forward():
    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for layer in net.children():
            layer.bias.normal_()  # a bias well away from 0: the scaling of it shows
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="ia3", conv_targets=("conv", "conv_in"), input_targets=("fc2", "conv_in"), bypass=True
    )
    add_lora(net, adapter, ("proj", "fc2"), seed=3, conv=True)
    x = _inputs(torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(2)
    for name in x:  # untrained: every scale 0, the base model
        layer = getattr(net, name)
        assert layer.ia3_bypass
        with torch.no_grad():
            torch.testing.assert_close(layer(x[name]), getattr(base, name)(x[name]))
            scale = layer.lora_ia3["default"]
            scale.copy_(torch.randn(scale.shape, generator=g) * 0.3)
    exported = {name: weights for name, weights, _ in _layers(net)}
    for name in x:
        layer = getattr(net, name)
        on_input = name in ("fc2", "conv_in")
        reference = copy.deepcopy(getattr(base, name))
        lyco = modules.IA3Module(name, reference, 1.0, bypass_mode=True, train_on_input=on_input)
        assert lyco.bypass_mode
        with torch.no_grad():
            lyco.weight.copy_(layer.lora_ia3["default"])
        lyco.apply_to()
        ours, theirs = layer(x[name]), reference(x[name])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        with torch.no_grad():  # the default forward (the weight alone scaled)
            weight_only = layer.base_layer(x[name]) + layer._op(x[name], layer.get_delta_weight("default"))
        if on_input:  # the same update there
            torch.testing.assert_close(ours, weight_only, rtol=1e-5, atol=1e-5)
        else:  # the bias scaled too
            assert not torch.allclose(ours, weight_only, atol=1e-3)
        weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(4))
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(layer.lora_ia3["default"].grad, lyco.weight.grad, rtol=1e-4, atol=1e-5)
        saved = lyco.state_dict()
        assert exported[name].keys() == {"weight", "on_input"}
        for key, value in exported[name].items():
            assert torch.equal(value, saved[key]), key
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(merged(x[name]), theirs, rtol=1e-5, atol=1e-5)
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)
        torch.testing.assert_close(merged.base_layer.bias, getattr(base, name).bias)

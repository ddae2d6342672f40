"""LyCORIS's bypass_mode on Diag-OFT and BOFT (plan.adapter.bypass; runtime/lycoris_oft.py,
lycoris_boft.py) against lycoris-lora's DiagOFTModule and ButterflyOFTModule built with bypass_mode=True: the
layer's output channels rotated (and rescaled), its bias too. On fixed random blocks, linear (token) and
convolution layers with biases: the same output and gradients; the merged layer (weight and bias rotated)
giving that output; the export LyCORIS's state dict. Then a tiny SD model trains with BOFT's bypass, resumes
bit-exact and, loaded by LyCORIS's kohya loader with its modules in bypass mode (as kohya's bypass_mode
network runs them), gives the same model."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from tests.runtime import test_lycoris as lycoris_runs
from tests.runtime import test_lycoris_boft as boft_runs
from tests.runtime.test_lycoris import loader  # noqa: F401 (the fixture)

modules = pytest.importorskip("lycoris.modules")


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(40, 64)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)


def _inputs(generator):
    return {
        "proj": torch.randn(2, 5, 40, generator=generator),
        "conv": torch.randn(2, 16, 6, 5, generator=generator),
    }


@pytest.mark.parametrize("kind", ["diag-oft", "boft"])
@pytest.mark.parametrize(("block", "constraint", "rescaled"), [(4, 0.0, False), (8, 1e-3, True)])
def test_bypass_equals_lycoris_bypass_forward(kind, block, constraint, rescaled):
    from dbspec.runtime.lycoris_export import _layers

    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for layer in (net.proj, net.conv):
            layer.bias.normal_()  # a bias well away from 0: the rotation of it shows
    base = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind=kind,
        conv_targets=("conv",),
        oft_block_size=block,
        oft_constraint=constraint,
        oft_rescaled=rescaled,
        bypass=True,
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    x = _inputs(torch.Generator().manual_seed(1))
    for name in x:  # untrained: every R = I, the base model
        with torch.no_grad():
            torch.testing.assert_close(getattr(net, name)(x[name]), getattr(base, name)(x[name]))
    boft_runs._randomise(net, torch.Generator().manual_seed(2))
    exported = {name: weights for name, weights, _ in _layers(net)}
    cls = modules.ButterflyOFTModule if kind == "boft" else modules.DiagOFTModule
    for name in x:
        layer = getattr(net, name)
        reference = copy.deepcopy(getattr(base, name))
        lyco = cls(
            name, reference, 1.0, lora_dim=block, constraint=constraint, rescaled=rescaled, bypass_mode=True
        )
        assert lyco.bypass_mode
        with torch.no_grad():
            lyco.oft_blocks.copy_(layer.lora_oft_blocks["default"])
            if rescaled:
                lyco.rescale.copy_(layer.lora_oft_rescale["default"])
        lyco.apply_to()
        ours, theirs = layer(x[name]), reference(x[name])
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        # not the default forward: the bias is rotated too
        with torch.no_grad():
            weight_only = layer.base_layer(x[name]) + layer._op(x[name], layer.get_delta_weight("default"))
        assert not torch.allclose(ours, weight_only, atol=1e-3)
        weights = torch.randn(ours.shape, generator=torch.Generator().manual_seed(4))
        (ours * weights).sum().backward()
        (theirs * weights).sum().backward()
        torch.testing.assert_close(
            layer.lora_oft_blocks["default"].grad, lyco.oft_blocks.grad, rtol=1e-4, atol=1e-5
        )
        if rescaled:
            torch.testing.assert_close(
                layer.lora_oft_rescale["default"].grad, lyco.rescale.grad, rtol=1e-4, atol=1e-5
            )
        saved = lyco.state_dict()
        for key, value in exported[name].items():
            assert torch.equal(value, saved[key]), key
        merged = copy.deepcopy(layer)
        merged.merge()
        with torch.no_grad():
            torch.testing.assert_close(merged(x[name]), theirs, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(
                merged.base_layer.weight, lyco.get_merged_weight()[0], rtol=1e-5, atol=1e-5
            )
        merged.unmerge()
        torch.testing.assert_close(merged.base_layer.weight, getattr(base, name).weight)
        torch.testing.assert_close(merged.base_layer.bias, getattr(base, name).bias)


BYPASS_KINDS = {
    "boft_bypass": (
        'kind = "boft"\nblock_size = 4\nrescaled = true\nbypass = true\nconv_targets = ["conv1", "conv2"]\n',
        {"algo": "boft", "conv_dim": "1", "constraint": "0", "rescaled": "True", "bypass_mode": "True"},
        {"oft_blocks", "rescale", "alpha"},
    ),
    "diag_oft_bypass": (
        'kind = "diag-oft"\nblock_size = 4\nconstraint = 0.5\nbypass = true\nconv_targets = ["conv1"]\n',
        {
            "algo": "diag-oft",
            "conv_dim": "1",
            "constraint": "0.5",
            "rescaled": "False",
            "bypass_mode": "True",
        },
        {"oft_blocks", "alpha"},
    ),
}


@pytest.mark.parametrize("kind", list(BYPASS_KINDS))
def test_bypass_trains_resumes_bit_exact_and_loads_back_in_lycoris(tmp_path, kind, loader, monkeypatch):  # noqa: F811
    others = lycoris_runs._lycoris_weight

    def oft_weight(lyco) -> torch.Tensor:
        if type(lyco).__name__ in ("ButterflyOFTModule", "DiagOFTModule"):
            with torch.no_grad():
                return lyco.get_merged_weight()[0]
        return others(lyco)

    def bypass_loader(*args, **kwargs):  # kohya's bypass_mode network: its modules run the bypass forward
        network, weights = loader(*args, **kwargs)
        for module in [*network.unet_loras, *network.text_encoder_loras]:
            module.bypass_mode = True
        return network, weights

    monkeypatch.setitem(lycoris_runs.KINDS, kind, BYPASS_KINDS[kind])
    monkeypatch.setattr(lycoris_runs, "_lycoris_weight", oft_weight)
    lycoris_runs.trains_resumes_and_loads_back_in_lycoris(tmp_path, kind, bypass_loader, steps=2)

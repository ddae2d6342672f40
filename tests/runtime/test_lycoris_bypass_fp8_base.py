"""LyCORIS's IA^3, Diag-OFT and BOFT in bypass_mode over kohya's --fp8_base (issue 12; was DBS403 / DBS522):
their bypass forward reads the layer's output, not its weight, so it runs on kohya's float8 U-Net under
autocast (the default forward does arithmetic on the float8 weight and stops kohya: DBS402). dbspec's layers
over the cast backend (runtime/quantize_cast.py: the weight stored as float8_e4m3fn, upcast at each use)
against lycoris-lora 4.1.3's modules applied to float layers that are then cast to float8_e4m3fn, as
train_network.py casts the U-Net after apply_to, both under bf16 autocast on the CPU (as kohya runs):
outputs and the trained tensors' gradients agree to bf16's precision (LyCORIS's IA3Module returns its
output-side product in float32, scale x bf16 output; dbspec's layer keeps the output's bf16)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.quantize import quantize_frozen

modules = pytest.importorskip("lycoris.modules")

FP8 = torch.float8_e4m3fn
BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)


def _inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "proj": torch.randn(2, 5, 32, generator=generator),
        "fc2": torch.randn(2, 5, 64, generator=generator),
        "conv": torch.randn(2, 16, 6, 5, generator=generator),
    }


ADAPTERS = {
    "ia3": AdapterPlan(kind="ia3", conv_targets=("conv",), input_targets=("fc2",), bypass=True),
    "diag-oft": AdapterPlan(
        kind="diag-oft", conv_targets=("conv",), oft_block_size=8, oft_constraint=1e-3, bypass=True
    ),
    "boft": AdapterPlan(
        kind="boft", conv_targets=("conv",), oft_block_size=4, oft_rescaled=True, bypass=True
    ),
}


def _theirs(kind: str, name: str, layer: nn.Module) -> nn.Module:
    if kind == "ia3":
        return modules.IA3Module(name, layer, 1.0, bypass_mode=True, train_on_input=name == "fc2")
    a = ADAPTERS[kind]
    cls = modules.ButterflyOFTModule if kind == "boft" else modules.DiagOFTModule
    return cls(
        name,
        layer,
        1.0,
        lora_dim=a.oft_block_size,
        constraint=a.oft_constraint,
        rescaled=a.oft_rescaled,
        bypass_mode=True,
    )


def _trained(kind: str, layer: nn.Module, module: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ours, theirs) of each trained tensor."""
    if kind == "ia3":
        return [(layer.lora_ia3["default"], module.weight)]
    pairs = [(layer.lora_oft_blocks["default"], module.oft_blocks)]
    if "default" in layer.lora_oft_rescale:
        pairs.append((layer.lora_oft_rescale["default"], module.rescale))
    return pairs


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_bypass_forward_over_the_cast_base_equals_lycoris_over_kohyas_float8_base(kind):
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for layer in net.children():
            layer.bias.normal_()
    kohya = copy.deepcopy(net)
    theirs = {name: _theirs(kind, name, getattr(kohya, name)) for name in ("proj", "fc2", "conv")}
    for module in theirs.values():
        module.apply_to()
    kohya.to(FP8)  # train_network.py's unet.to(dtype=torch.float8_e4m3fn), after apply_to
    assert all(p.dtype == FP8 for n, p in kohya.named_parameters() if not n.startswith("_"))

    quantize_frozen(net, "fp8", backend="cast")  # the plan's cast backend: float8 storage, upcast per use
    add_lora(net, ADAPTERS[kind], ("proj", "fc2"), seed=3, conv=True)
    g = torch.Generator().manual_seed(2)
    x = _inputs(torch.Generator().manual_seed(1))
    for name, inputs in x.items():
        layer, module = getattr(net, name), theirs[name]
        base = layer.get_base_layer()
        assert parametrize.is_parametrized(base, "weight") and base.weight.dtype == torch.float32
        assert base.parametrizations.weight.original.dtype == FP8  # stored as kohya's, read upcast
        with torch.no_grad():  # the same trained tensors in both (rotations near the identity)
            for mine, their in _trained(kind, layer, module):
                offset = 1.0 if mine.dim() > 1 and mine.shape[1] == 1 else 0.0  # BOFT's rescale: near 1
                mine.copy_(torch.randn(mine.shape, generator=g) * 0.3 + offset)
                their.copy_(mine)
        with torch.autocast(**BF16):
            out, ref = layer(inputs), module(inputs)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), ref.float(), rtol=1.6e-2, atol=2e-2)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
        (out.float() * weights).sum().backward()
        (ref.float() * weights).sum().backward()
        for mine, their in _trained(kind, layer, module):
            assert mine.grad is not None and their.grad is not None
            scale = their.grad.abs().max().item()
            torch.testing.assert_close(mine.grad, their.grad, rtol=2e-2, atol=2e-2 * scale)

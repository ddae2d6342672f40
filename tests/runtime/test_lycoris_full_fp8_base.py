"""A LyCORIS preset file's `full` entries with kohya's --fp8_base on SD 1.x/2.x / SDXL (issue 12; was
DBS403), beside a network in bypass_mode (its default forward would stop kohya on the float8 weights,
DBS402): train_network.py casts the U-Net to float8_e4m3fn after the network's apply_to, which took each
FullModule layer's weight and bias off the layer into the module's trained copy, so the cast passes those
layers by and FullModule computes with its float copy, while the other layers (the LoCon ones) hold float8
weights. The cast backend leaves the full blocks' layers out likewise (runtime/blocks.py full_layer_paths,
runtime/prepare.py). Checked against lycoris-lora 4.1.3's FullModule applied then cast as kohya does, on a
Linear with bias and a 3x3 convolution: outputs, the trained copy's gradients and the saved `diff` equal,
the LoCon layer's base reading kohya's float8 weight; and the converted plan's U-Net as its run builds it."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from dbspec.plan.model import AdapterPlan, BlockPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.blocks import full_layer_paths
from dbspec.runtime.lycoris_full import FullLayer
from dbspec.runtime.quantize import quantize_frozen

full = pytest.importorskip("lycoris.modules.full")

FP8 = torch.float8_e4m3fn


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.Linear(8, 16)
        self.ff = nn.Linear(8, 12)
        self.conv = nn.Conv2d(4, 6, 3, padding=1)


INPUTS = {"ff": (5, 8), "conv": (2, 4, 5, 5)}
ADAPTER = AdapterPlan(
    kind="lora",
    rank=2,
    alpha=2.0,
    conv_targets=("conv",),
    blocks=(BlockPlan(pattern=r"(?:^|\.)(?:ff|conv)$", kind="full", rank=1, alpha=1.0, conv_rank=1),),
)


def test_full_layers_stay_float_under_the_cast_as_after_kohyas_apply_to():
    torch.manual_seed(0)
    net = Net()
    kohya = copy.deepcopy(net)
    theirs = {name: full.FullModule(name, getattr(kohya, name), 1.0) for name in INPUTS}
    for module in theirs.values():
        module.apply_to()  # the layer's weight and bias move into the module's copy
    kohya.to(FP8)  # train_network.py's unet.to(dtype=torch.float8_e4m3fn), after apply_to

    assert full_layer_paths(net, ("attn", "ff"), ADAPTER) == ["ff", "conv"]
    quantize_frozen(net, "fp8", backend="cast", exclude=full_layer_paths(net, ("attn", "ff"), ADAPTER))
    add_lora(net, ADAPTER, ("attn", "ff"), seed=3, conv=True)
    assert isinstance(net.ff, FullLayer) and isinstance(net.conv, FullLayer)
    assert not isinstance(net.attn, FullLayer)
    for name in INPUTS:  # float, not cast: as the layers kohya's cast found without a weight
        base = getattr(net, name).get_base_layer()
        assert not parametrize.is_parametrized(base) and base.weight.dtype == torch.float32
        assert not hasattr(getattr(kohya, name), "weight")
    # the LoCon layer's base reads kohya's float8 weight
    assert parametrize.is_parametrized(net.attn.base_layer)
    x = torch.randn(3, 8)
    want = nn.functional.linear(x, kohya.attn.weight.float(), kohya.attn.bias.float())
    assert torch.equal(net.attn.base_layer(x), want)

    g = torch.Generator().manual_seed(2)
    for name, shape in INPUTS.items():
        layer, module = getattr(net, name), theirs[name]
        with torch.no_grad():  # a trained copy: the same W', b' in both
            for mine, their in ((layer.lora_full, module.weight), (layer.lora_full_bias, module.bias)):
                mine["default"].add_(torch.randn(mine["default"].shape, generator=g) * 0.3)
                their.copy_(mine["default"])
        x = torch.randn(shape, generator=g)
        out, ref = layer(x), module(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
        (out * out).sum().backward()
        (ref * ref).sum().backward()
        torch.testing.assert_close(layer.lora_full["default"].grad, module.weight.grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            layer.lora_full_bias["default"].grad, module.bias.grad, rtol=1e-4, atol=1e-5
        )
        saved = module.custom_state_dict()  # FullModule's diff against the float weight it took
        torch.testing.assert_close(layer.get_delta_weight("default"), saved["diff"], rtol=0, atol=1e-6)
        torch.testing.assert_close(layer.get_delta_bias("default"), saved["diff_b"], rtol=0, atol=1e-6)


def test_the_converted_plans_unet_keeps_its_full_layers_float(tmp_path):
    """kohya's command with the preset's FeedForward entries full (their own bypass_mode false, FullModule's
    one forward) beside a LoCon network in bypass_mode (its default forward stops kohya on float8 weights)
    and --fp8_base: the plan's cast backend, and its U-Net as the run builds it: the FeedForward Linears
    FullLayers over float bases, every other adapted layer over float8 storage."""
    from tests.runtime.shared import moved_components
    from tests.runtime.test_lycoris_algo_maps import _converted_plan

    preset = (
        'unet_target_module = ["Transformer2DModel"]\ntext_encoder_target_module = []\n'
        '[module_algo_map.FeedForward]\nalgo = "full"\nbypass_mode = false\n'
    )
    args = '"bypass_mode=True" --fp8_base --mixed_precision bf16'
    _, plan = _converted_plan(tmp_path, "ff", text=preset, args=args)
    p = plan.precision
    assert (p.quantize_backend, {c.name: c.quantized for c in p.components}["unet"]) == ("cast", "fp8")
    unet = moved_components(plan).unet
    layers = {name: layer for name, layer in unet.named_modules() if hasattr(layer, "get_base_layer")}
    whole = {name for name, layer in layers.items() if isinstance(layer, FullLayer) and layer.lora_full}
    assert whole and all(name.split(".ff.")[-1] in ("net.0.proj", "net.2") for name in whole)
    for name, layer in layers.items():
        base = layer.get_base_layer()
        assert parametrize.is_parametrized(base) == (name not in whole), name
    assert any(p.dtype == FP8 for p in unet.parameters())

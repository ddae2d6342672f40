"""LyCORIS's IA^3 over kohya's bf16 U-Net (issue 12, runtime/lycoris_ia3.py): train_network.py casts the
frozen U-Net to bf16 under `--mixed_precision bf16` and keeps the network's scales float32, all under bf16
autocast. lycoris-lora 4.1.3's IA3Module.forward then adds op(x, round(W (1 + s)) - W) (its merged weight cast
to W's dtype, minus W), so dbspec's layer computes its update the same way: bit for bit the same output and
scale gradients, and a scale below half of W's bf16 step leaves the output where it was while its gradient
flows. In bypass_mode the output side returns LyCORIS's float32 product (bf16 output x float32 scale);
dbspec's layer returns it rounded to bf16, bit for bit LyCORIS's product so rounded (docs/converting.md,
the IA^3 paragraph, says why dbspec keeps bf16). A converted kohya run from an IA^3 `--network_weights`
file under bf16 starts each layer as LyCORIS's loaded module (outputs bit for bit) and trains 2 steps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime import lycoris_sd_file_kit as kit
from tests.runtime.test_flow_init import _loaded
from tests.runtime.runspec import compile_spec
from tests.runtime.test_lycoris_sd_full_file import _lycoris_modules
from tests.unit.convert_kit import out_path

modules = pytest.importorskip("lycoris.modules")

BF16 = {"device_type": "cpu", "dtype": torch.bfloat16}
# the output side on "proj" / "conv", the input side on "fc2" / "conv_in"
INPUT_SIDE = ("fc2", "conv_in")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 32)
        self.conv = nn.Conv2d(16, 32, 3, padding=1)
        self.conv_in = nn.Conv2d(16, 32, 3, padding=1)


def _inputs() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return {
        "proj": torch.randn(2, 5, 32, generator=g),
        "fc2": torch.randn(2, 5, 64, generator=g),
        "conv": torch.randn(2, 16, 6, 5, generator=g),
        "conv_in": torch.randn(2, 16, 6, 5, generator=g),
    }


def _pair(bypass: bool, spread: float):
    """dbspec's layers and lycoris-lora's IA3Modules on copies of one Net, the bases cast to bf16 after
    apply_to as kohya casts its U-Net (the scales stay float32), every scale the same randn x `spread`."""
    torch.manual_seed(0)
    net = Net()
    with torch.no_grad():
        for layer in net.children():
            layer.bias.normal_()
    kohya = copy.deepcopy(net)
    adapter = AdapterPlan(
        kind="ia3", conv_targets=("conv", "conv_in"), input_targets=INPUT_SIDE, bypass=bypass
    )
    add_lora(net, adapter, ("proj", "fc2"), seed=3, conv=True)
    theirs = {}
    g = torch.Generator().manual_seed(2)
    for name in _inputs():
        lyco = modules.IA3Module(
            name, getattr(kohya, name), 1.0, bypass_mode=bypass, train_on_input=name in INPUT_SIDE
        )
        lyco.apply_to()
        scale = getattr(net, name).lora_ia3["default"]
        with torch.no_grad():
            scale.copy_(torch.randn(scale.shape, generator=g) * spread)
            lyco.weight.copy_(scale)
        theirs[name] = lyco
        getattr(net, name).base_layer.to(torch.bfloat16)
    kohya.to(torch.bfloat16)  # the frozen base; the IA3Modules (not its children) keep float32 scales
    return net, kohya, theirs


def _forward_backward(layer, x):
    """The output under bf16 autocast and the scale's gradient of a fixed weighting of it."""
    with torch.autocast(**BF16):
        out = layer(x)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    (out.float() * weights).sum().backward()
    return out


def test_default_forward_over_a_bf16_base_equals_lycoris_bit_for_bit():
    net, kohya, theirs = _pair(bypass=False, spread=0.3)
    for name, x in _inputs().items():
        layer = getattr(net, name)
        mine = layer.lora_ia3["default"]
        assert mine.dtype == theirs[name].weight.dtype == torch.float32
        out, ref = _forward_backward(layer, x), _forward_backward(getattr(kohya, name), x)
        assert out.dtype == ref.dtype == torch.bfloat16
        assert torch.equal(out, ref), name
        assert torch.equal(mine.grad, theirs[name].weight.grad), name
        with torch.no_grad(), torch.autocast(**BF16):  # W x s rounded alone: another output
            w = layer.get_base_layer().weight.float()
            delta = w * mine if name in INPUT_SIDE else (w.transpose(0, 1) * mine).transpose(0, 1)
            plain = layer.base_layer(x) + layer._op(x, delta)
        assert not torch.equal(plain, ref), name


def test_a_scale_below_the_bf16_step_leaves_the_output_and_trains():
    net, kohya, theirs = _pair(bypass=False, spread=1e-4)
    for name, x in _inputs().items():
        layer = getattr(net, name)
        out, ref = _forward_backward(layer, x), _forward_backward(getattr(kohya, name), x)
        with torch.no_grad(), torch.autocast(**BF16):
            base = layer.base_layer(x)
        assert torch.equal(out, base) and torch.equal(ref, base), name
        grad = layer.lora_ia3["default"].grad
        assert torch.count_nonzero(grad) and torch.equal(grad, theirs[name].weight.grad), name


def test_bypass_output_side_is_lycoris_float32_product_rounded_to_bf16():
    net, kohya, theirs = _pair(bypass=True, spread=0.3)
    for name, x in _inputs().items():
        layer = getattr(net, name)
        out, ref = _forward_backward(layer, x), _forward_backward(getattr(kohya, name), x)
        assert out.dtype == torch.bfloat16
        if name in INPUT_SIDE:  # LyCORIS's float32 input product, cast by autocast at the layer: equal
            assert ref.dtype == torch.bfloat16 and torch.equal(out, ref), name
        else:  # float32 scale x bf16 output: float32 in LyCORIS
            assert ref.dtype == torch.float32 and not torch.equal(out.float(), ref), name
            assert torch.equal(out, ref.to(torch.bfloat16)), name
        # the gradient reaches the scale through dbspec's bf16 output: the weighting rounded to bf16
        mine, their = layer.lora_ia3["default"].grad, theirs[name].weight.grad
        torch.testing.assert_close(mine, their, rtol=1e-2, atol=1e-2 * their.abs().max().item())


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("builtin:tiny-sd1")


def test_bf16_run_from_an_ia3_file_starts_as_lycoris_loads_it_and_trains(pipe, tmp_path, monkeypatch):
    """kohya --network_weights with algo=ia3 under --mixed_precision bf16: LyCORIS's network loaded from the
    file over the U-Net and CLIP cast to bf16, and dbspec's converted run's layers (the plan's bf16
    components), give the same outputs under bf16 autocast; the run trains 2 steps."""
    made = kit.network(pipe, tmp_path, monkeypatch, algo="ia3")
    path = kit.saved_file(made, tmp_path, seed=5, scale=0.1, drop=6)
    made = kit.network(pipe, tmp_path, monkeypatch, algo="ia3")
    made.load_weights(str(path))
    theirs = _lycoris_modules(made)
    for module in theirs.values():
        module.org_module[0].to(torch.bfloat16)  # train_network.py's unet.to(weight_dtype), CLIP's likewise
    plan = kit.converted_plan(
        tmp_path, '--network_args "algo=ia3" "preset=preset.toml" --mixed_precision bf16'
    )
    assert plan.precision.mixed == "bf16" and plan.adapter.kind == "ia3"
    comps, _count = _loaded(plan)
    from dbspec.runtime.lycoris_ia3 import Ia3Layer

    ours = kit.kohya_layers(comps, Ia3Layer)
    assert sorted(ours) == sorted(theirs)
    for name, lyco in theirs.items():
        layer = ours[name]
        assert layer.get_base_layer().weight.dtype == torch.bfloat16, name
        x = kit.sample_input(layer.get_base_layer())
        with torch.no_grad(), torch.autocast(**BF16):
            assert torch.equal(layer(x), lyco(x)), name
    whole = execute(compile_spec(out_path(tmp_path), [*kit.OVERRIDES, "schedule.steps=2"]))
    assert whole.status == "finished"
    (export,) = Path(whole.final).glob("*.kohya.safetensors")
    saved = load_file(str(export))
    assert kit.trained(saved, load_file(str(path)), lambda k: k.endswith(".weight"))

"""kohya's own OFT (networks.oft, oft_flux; adapter.kind "diag-oft", form "kohya") over kohya's --fp8_base
(the cast backend, runtime/quantize_cast.py; was DBS403 through DBS522): kohya's OFTModule rotates
`org_module.weight.to(torch.float32)`, the float8 weight upcast exactly, and runs the layer with that rotated
weight and the layer's (float8) bias under autocast. KohyaOftLayer reads the cast base's weight through its
upcast, so it computes the same. Checked on a Linear and a 3x3 convolution against kohya's formula in float64
on the float8-rounded weights, and, bit for bit under bf16 autocast, against the same layer on a float base
holding those rounded weights (kohya's float8 module as torch computes it); then a tiny SD run with the U-Net
cast trains only the blocks and resumes bit-exact."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from dbspec.plan.model import AdapterPlan
from dbspec.runtime.adapters import add_lora
from dbspec.runtime.quantize import is_quantized, quantize_frozen
from tests.runtime.test_kohya_oft import SPEC, Net, kohya_forward, kohya_weight

FP8 = torch.float8_e4m3fn
ALPHA = 1e-3  # binding: the random blocks' norm is far above alpha x out


def _adapted(net: nn.Module) -> nn.Module:
    adapter = AdapterPlan(
        kind="diag-oft", conv_targets=("conv",), oft_form="kohya", oft_blocks=4, oft_constraint=ALPHA
    )
    add_lora(net, adapter, ("proj",), seed=3, conv=True)
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name in ("proj", "conv"):
            blocks = getattr(net, name).lora_oft_blocks["default"]
            blocks.copy_(torch.randn(blocks.shape, generator=g) * 0.3)
    return net


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kohya_oft_on_a_cast_base_rotates_the_float8_weight(dtype):
    torch.manual_seed(0)
    plain = Net()
    rounded = copy.deepcopy(plain)  # kohya's module: its parameters cast to float8, read back
    with torch.no_grad():
        for p in rounded.parameters():
            p.copy_(p.to(FP8).to(torch.float32))
    cast = copy.deepcopy(plain)
    quantize_frozen(cast, "fp8", backend="cast", dtype=dtype)
    assert is_quantized(cast)
    ours, theirs = _adapted(cast), _adapted(copy.deepcopy(rounded).to(dtype))
    x = {"proj": torch.randn(3, 40), "conv": torch.randn(2, 16, 6, 5)}
    for name in x:
        layer = getattr(ours, name)
        assert layer.get_base_layer().parametrizations.weight.original.dtype == FP8
        blocks = layer.lora_oft_blocks["default"]
        if dtype == torch.float32:  # kohya's formula in float64 on the float8-rounded weight and bias
            base = getattr(rounded, name)
            reference = blocks.detach().double().requires_grad_(True)
            want = kohya_forward(base, kohya_weight(reference, base.weight, ALPHA), x[name])
            got = layer(x[name])
            torch.testing.assert_close(got.double(), want.detach(), rtol=1e-5, atol=1e-6)
            unrounded = kohya_forward(
                getattr(plain, name), kohya_weight(blocks, getattr(plain, name).weight, ALPHA), x[name]
            )
            assert not torch.allclose(got.double(), unrounded, atol=1e-5)  # the float8 rounding shows
            g = torch.randn(got.shape)
            (got * g).sum().backward()
            (want * g.double()).sum().backward()
            torch.testing.assert_close(blocks.grad.double(), reference.grad, rtol=1e-4, atol=1e-5)
        else:  # kohya's run: bf16 autocast over the float8 module; bit for bit the rounded float base's
            other = getattr(theirs, name)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                got, want = layer(x[name]), other(x[name])
            assert torch.equal(got, want), name
            got.float().sum().backward()
            want.float().sum().backward()
            assert torch.equal(blocks.grad, other.lora_oft_blocks["default"].grad), name


CAST = """
[precision]
quantize_denoiser = "fp8"
quantize_backend = "cast"
"""


def test_a_kohya_oft_run_on_a_cast_unet_trains_the_blocks_and_resumes_bit_exact(tmp_path):
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, final_weights, write_spec

    spec = write_spec(tmp_path, steps=2, extra=SPEC.replace("every = 2", "every = 1") + CAST)
    lr = ["optimizer.lr=1e-2"]
    whole = execute(compile_spec(spec, [*lr, "output.dir=whole"]), keep_models=True)
    unet = whole.components.unet
    assert whole.status == "finished" and is_quantized(unet)
    trained = {n for n, p in unet.named_parameters() if p.requires_grad}
    assert trained and all("lora_oft_blocks" in n for n in trained), sorted(trained)[:5]
    plan = compile_spec(spec, [*lr, "output.dir=parts"])
    first = execute(plan, stop_after=1)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

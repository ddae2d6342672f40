"""The cast backend (kohya's --fp8_base): frozen weights stored as float8_e4m3fn by a plain cast, upcast
at each use.

The expected outputs are computed here independently: each weight cast to float8_e4m3fn and back with
`torch.Tensor.to`, then the functional op, as kohya's fp8 U-Net computes under autocast.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dbspec.compiler.memory import CAST_BYTES
from dbspec.runtime.quantize import is_quantized, quantize_frozen, quantized_bytes
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.test_quantize_backends import plain_lora  # noqa: F401 (a pytest fixture)
from tests.runtime.test_quantize_backends import (
    test_a_quantised_lora_run_resumes_bit_exact_and_exports_plain_lora_keys as _resumes_bit_exact,
)
from tests.runtime.test_quantize_backends import (
    test_lora_on_a_quantised_base_trains_and_only_the_adapter_moves as _trains,
)

FP8 = torch.float8_e4m3fn


def _through_fp8(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.detach().clone().to(FP8).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_each_layer_computes_with_its_weights_cast_to_float8_and_back(dtype):
    """fp32 weights (as loaded) cast straight to float8, read in `dtype` (the planned compute dtype)."""
    torch.manual_seed(0)
    linear, conv, norm = torch.nn.Linear(16, 8), torch.nn.Conv2d(4, 4, 3, padding=1), torch.nn.GroupNorm(2, 4)
    model = torch.nn.ModuleDict({"linear": linear, "conv": conv, "norm": norm})
    originals = {k: v.detach().clone() for k, v in model.state_dict().items()}
    report = quantize_frozen(model, "fp8", backend="cast", dtype=dtype)
    assert report.layers == 3 and is_quantized(model)
    stored = [p for p in model.parameters()]
    assert stored and all(p.dtype == FP8 and not p.requires_grad for p in stored)
    assert report.bytes_after * 4 == report.bytes_before
    assert linear.weight.dtype == dtype
    x = torch.randn(3, 16, dtype=dtype)
    img = torch.randn(2, 4, 6, 6, dtype=dtype)
    w = {k: _through_fp8(v, dtype) for k, v in originals.items()}
    assert torch.equal(linear(x), F.linear(x, w["linear.weight"], w["linear.bias"]))
    assert torch.equal(conv(img), F.conv2d(img, w["conv.weight"], w["conv.bias"], padding=1))
    assert torch.equal(norm(img), F.group_norm(img, 2, w["norm.weight"], w["norm.bias"], norm.eps))
    # the cast really rounds: the float weights give other outputs
    unrounded = {k: v.to(dtype) for k, v in originals.items()}
    assert not torch.equal(linear(x), F.linear(x, unrounded["linear.weight"], unrounded["linear.bias"]))


def test_fp32_weights_are_rounded_once_straight_to_float8_as_kohya_casts_them():
    """kohya casts the fp32 U-Net it loaded with `.to(float8_e4m3fn)`; rounding through bf16 first would
    change about 3% of the weights (double rounding)."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(256, 256)
    weight = layer.weight.detach().clone()
    quantize_frozen(torch.nn.Sequential(layer), "fp8", backend="cast", dtype=torch.bfloat16)
    assert torch.equal(layer.weight, weight.to(FP8).to(torch.bfloat16))
    assert not torch.equal(layer.weight, weight.to(torch.bfloat16).to(FP8).to(torch.bfloat16))


def test_equals_kohyas_fp8_module_under_autocast():
    """kohya's own form, a module whose parameters are `.to(float8_e4m3fn)`, run under bf16 autocast (which
    upcasts the fp8 weight inside the op), gives the cast backend's output under the same autocast."""
    import copy

    torch.manual_seed(0)
    layer = torch.nn.Linear(32, 16)
    kohya = copy.deepcopy(layer).to(FP8)
    quantize_frozen(torch.nn.Sequential(layer), "fp8", backend="cast", dtype=torch.bfloat16)
    x = torch.randn(4, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(layer(x), kohya(x))


def test_every_unet_layer_is_cast_and_text_encoder_embeddings_stay_float():
    pipe = build_pipeline("builtin:tiny-sd1")
    unet, text = pipe.unet, pipe.text_encoder
    for module in (unet, text):
        module.requires_grad_(False)
        quantize_frozen(module, "fp8", backend="cast", dtype=torch.bfloat16)
    assert all(p.dtype == FP8 for p in unet.parameters())  # conv_in and conv_out too (kohya casts them)
    kept = {n: p.dtype for n, p in text.named_parameters() if p.dtype != FP8}
    assert kept and all("embeddings." in n and d == torch.bfloat16 for n, d in kept.items()), kept
    assert quantized_bytes(unet) == sum(p.numel() for p in unet.parameters()) * CAST_BYTES


def test_a_lora_on_the_cast_base_trains_and_only_the_adapter_moves():
    _trains("cast", "fp8")


def test_a_cast_lora_run_resumes_bit_exact_and_exports_plain_lora_keys(tmp_path, plain_lora):  # noqa: F811
    _resumes_bit_exact(tmp_path, "cast", "fp8", plain_lora)


CAST_LOCON = """
[adapter]
kind = "lora"
rank = 2
conv_rank = 2
conv_alpha = 1.0

[precision]
quantize_denoiser = "fp8"
quantize_backend = "cast"
"""


def test_lora_on_the_convolutions_of_a_cast_unet_trains_and_resumes_bit_exact(tmp_path):
    """kohya's LoCon (networks.lora with conv_dim) over --fp8_base: peft LoRA convolutions on cast layers."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, final_weights, write_spec

    spec = write_spec(tmp_path, steps=4, extra=CAST_LOCON)
    whole_plan = compile_spec(spec, ["output.dir=whole"])
    assert whole_plan.adapter.conv_rank == 2
    whole = execute(whole_plan, keep_models=True)
    assert whole.status == "finished" and is_quantized(whole.components.unet)
    trained = [n for n, p in whole.components.unet.named_parameters() if p.requires_grad]
    assert any("conv" in n and "lora_A" in n for n in trained), trained
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _stored(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The float8 tensors a cast module stores, under the plain module's parameter names."""
    out = {}
    for name, p in module.named_parameters():
        if p.dtype == FP8:
            plain = (
                name.replace(".base_layer", "").replace(".parametrizations.", ".").replace(".original", "")
            )
            out[plain] = p.detach()
    return out


def test_a_bf16_run_casts_the_unet_from_fp32_and_the_text_encoder_from_bf16_as_kohya_does(tmp_path):
    """kohya's fp8_base: `unet.to(float8)` on the U-Net as loaded (fp32), the text encoders after they were
    moved to the device in the mixed dtype (bf16 here), so their weights are rounded twice."""
    from dbspec.runtime.execute import execute
    from tests.runtime.runspec import compile_spec, write_spec

    extra = (
        '[adapter]\nkind = "lora"\nrank = 2\n[precision]\nquantize_denoiser = "fp8"\n'
        'quantize_text_encoder = "fp8"\nquantize_backend = "cast"\n'
    )
    plan = compile_spec(write_spec(tmp_path, steps=1, extra=extra), ["precision.mixed=bf16"])
    assert {c.name: (c.dtype, c.quantized) for c in plan.precision.components if c.name != "vae"} == {
        "unet": ("bf16", "fp8"),
        "text_encoder": ("bf16", "fp8"),
    }
    result = execute(plan, keep_models=True)
    assert result.status == "finished"
    fresh = build_pipeline("builtin:tiny-sd1")
    unet, text = _stored(result.components.unet), _stored(result.components.text_encoders[0])
    plain_unet = dict(fresh.unet.named_parameters())
    assert unet.keys() == plain_unet.keys()
    assert all(torch.equal(unet[k].float(), plain_unet[k].detach().to(FP8).float()) for k in unet)
    plain_text = dict(fresh.text_encoder.named_parameters())
    assert text and all(
        torch.equal(text[k].float(), plain_text[k].detach().to(torch.bfloat16).to(FP8).float()) for k in text
    )
    # after a step the frozen base is still the cast of the fresh weights (above), read in bf16
    assert result.components.unet.conv_in.weight.dtype == torch.bfloat16

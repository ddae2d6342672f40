"""Quantisation backends (quanto, torchao, bitsandbytes) and bitsandbytes' 8-bit optimizer on CPU (issue 16).

Each backend that runs on this CPU quantises the built-in tiny SD1 model's frozen base, a LoRA trains on it
through the real loop, resumes bit-exact and exports; the memory estimate's bytes per weight are
measured here.
GPU-only paths (torchao fp8 kernels, bitsandbytes' CUDA kernels, paged optimizer state) are not proven on the
CPU: docs/memory.md says so.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig

from dbspec.compiler.memory import CAST_BYTES, QUANTIZED_BYTES
from dbspec.runtime.adapters import inject_lora
from dbspec.runtime.execute import execute
from dbspec.runtime.quantize import FORMATS, is_quantized, quantize_frozen, quantized_bytes
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, write_spec
from tests.runtime.shared import once_per_session

# (backend, format) pairs that run on the CPU; quanto's int8 is covered by tests/runtime/test_quantize.py too.
ON_CPU = [("torchao", "int8"), ("bitsandbytes", "nf4"), ("bitsandbytes", "int8"), ("quanto", "int8")]
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def _tiny_unet() -> torch.nn.Module:
    unet = build_pipeline("builtin:tiny-sd1").unet
    unet.requires_grad_(False)
    return unet


@pytest.mark.parametrize(("backend", "kind"), ON_CPU, ids=[f"{b}-{k}" for b, k in ON_CPU])
def test_lora_on_a_quantised_base_trains_and_only_the_adapter_moves(backend, kind):
    unet = _tiny_unet()
    report = quantize_frozen(unet, kind, backend=backend)
    assert report.layers > 0 and is_quantized(unet), report
    assert report.bytes_after < report.bytes_before, report
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        inject_lora(
            unet, LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=LORA_TARGETS)
        )
    params = [p for p in unet.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in unet.named_parameters() if p.requires_grad)
    gen = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(2, 1, 4, 8, 8, generator=gen)
    text = torch.randn(1, 77, 32, generator=gen)
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.mse_loss(unet(latents, torch.tensor([300]), text).sample.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.99 * losses[0], losses


# That importing dbspec.runtime.quantize imports no backend library: tests/runtime/test_startup_imports.py.


QUANTISED_LORA = """
[adapter]
kind = "lora"
rank = 2

[precision]
quantize_denoiser = "{kind}"
quantize_text_encoder = "{kind}"
quantize_backend = "{backend}"
"""


def _plain_lora(folder: Path) -> None:
    result = execute(
        compile_spec(
            write_spec(folder, steps=1, extra="[adapter]\nkind = 'lora'\nrank = 2\n"), ["output.dir=plain"]
        )
    )
    (folder / "final.txt").write_text(str(Path(result.final).relative_to(folder)))


@pytest.fixture(scope="module")
def plain_lora(tmp_path_factory) -> dict:
    """The keys, shapes and dtypes of a 1-step LoRA run's export on the float base: the same run for every
    backend here and for test_quantize_cast.py's cast backend, so run once per session (was once per test,
    four identical runs)."""
    folder = once_per_session(tmp_path_factory, "quantize-plain-lora", _plain_lora)
    final = folder / (folder / "final.txt").read_text()
    return {k: (v.shape, v.dtype) for k, v in final_weights(final).items()}


@pytest.mark.parametrize(("backend", "kind"), ON_CPU[:3], ids=[f"{b}-{k}" for b, k in ON_CPU[:3]])
def test_a_quantised_lora_run_resumes_bit_exact_and_exports_plain_lora_keys(
    tmp_path, backend, kind, plain_lora
):
    spec = write_spec(tmp_path, steps=4, extra=QUANTISED_LORA.format(kind=kind, backend=backend))
    whole_plan = compile_spec(spec, ["output.dir=whole"])
    assert whole_plan.precision.quantize_backend == backend
    assert {c.name: c.quantized for c in whole_plan.precision.components if c.name != "vae"} == {
        "unet": kind,
        "text_encoder": kind,
    }
    whole = execute(whole_plan, keep_models=True)
    assert whole.status == "finished" and len(whole.losses) == 4
    assert is_quantized(whole.components.unet) and is_quantized(whole.components.text_encoders[0])
    plan = compile_spec(spec, ["output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # The export is a plain LoRA: the same keys, shapes and dtypes as a run on a float base.
    assert {k: (v.shape, v.dtype) for k, v in a.items()} == plain_lora


# --- the memory estimate's bytes per weight, measured ------------------------------------------------------
MEASURABLE = [(b, k) for b, kinds in FORMATS.items() for k in kinds if (b, k) != ("quanto", "int4")]


@pytest.mark.parametrize(("backend", "kind"), MEASURABLE, ids=[f"{b}-{k}" for b, k in MEASURABLE])
def test_bytes_per_weight_of_the_memory_estimate_match_what_the_backend_holds(backend, kind):
    """A 1024 x 1024 Linear (no bias) quantised for real: its bytes per weight (data plus scales) are at most
    the memory table's, and within 0.03 of it (the table rounds up)."""
    layer = torch.nn.Sequential(torch.nn.Linear(1024, 1024, bias=False))
    layer.requires_grad_(False)
    quantize_frozen(layer, kind, backend=backend)
    measured = quantized_bytes(layer) / (1024 * 1024)
    table = CAST_BYTES if backend == "cast" else QUANTIZED_BYTES[kind]  # cast: a plain float8, no scale
    assert measured <= table < measured + 0.03, (backend, kind, measured)


# --- bitsandbytes' 8-bit optimizer on the CPU --------------------------------------------------------------


def test_adamw8bit_trains_on_the_cpu_with_8bit_state_and_resumes_bit_exact(tmp_path):
    import bitsandbytes as bnb

    from dbspec.runtime.models import load_components
    from dbspec.runtime.optim import make_optimizer, param_groups
    from dbspec.runtime.prepare import configure_models

    spec = write_spec(tmp_path, steps=4)  # a full fine-tune: the tiny UNet has tensors of >= 4096 elements
    kind = ['optimizer.kind="adamw8bit"', "optimizer.lr=1e-4"]
    plan = compile_spec(spec, [*kind, "output.dir=whole"])
    assert plan.optimizer.kind == "adamw8bit"
    comps = load_components(plan)
    unet_params, text_params = configure_models(plan, comps, torch.device("cpu"))
    optimizer = make_optimizer(param_groups(unet_params, text_params, plan.optimizer), plan.optimizer)
    assert isinstance(optimizer, bnb.optim.AdamW8bit)
    for p in unet_params:
        p.grad = torch.ones_like(p)
    optimizer.step()
    states = [optimizer.state[p] for p in unet_params]
    assert any(s["state1"].dtype == torch.uint8 for s in states)  # blockwise 8-bit moments, on the CPU

    whole = execute(plan)
    assert whole.status == "finished" and len(whole.losses) == 4
    parts = compile_spec(spec, [*kind, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

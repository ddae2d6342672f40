"""kohya lora_flux's LoRA-GGPO (adapter.ggpo, runtime/ggpo.py).

The differential tests write kohya's LoRAModule GGPO out by hand from networks/lora_flux.py's formulas (the
base rows' mean norm over a `torch.randperm` sample, the approximate gradient scale * (up @ down.grad +
up.grad @ down) under CPU autocast, the combined norms sqrt(mean² + Σ (up @ down)²) unscaled, and one
`torch.randn` of the fused weight's shape per forward scaled per row by (sigma * sqrt(c²) + beta * g²) /
sqrt(rows)) from the same generator states, and check the tied parts' outputs equal it: one draw per fused
layer (a draw per part uses the generator differently and fails it). A tiny Flux run with GGPO resumes
bit-exact and differs from one without it from its second step on."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dbspec.plan.model import AdapterPlan, FusedPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.fused import tie_fused_projections
from dbspec.runtime.fused_dropout import add_fused_dropout
from dbspec.runtime.ggpo import _float_weight, add_ggpo, update_norms
from dbspec.runtime.lora_dropout import add_lora_dropout
from tests.runtime.runspec import compile_spec, summary_text, write_spec
from tests.runtime.test_flux_fused import KOHYA, _double_block_lora

PARTS = ("attn.to_q", "attn.to_k", "attn.to_v")
SIGMA, BETA = 0.3, 0.2  # larger than kohya's usual 0.03 / 0.01, so the perturbation shows
GGPO = AdapterPlan(kind="lora", rank=4, alpha=2.0, ggpo_sigma=SIGMA, ggpo_beta=BETA)


def _ggpo_block(module_dropout: float = 0.0):
    block = _double_block_lora()
    wrapper = torch.nn.Module()
    wrapper.blocks = torch.nn.ModuleList([block])
    group = FusedPlan(name="img_attn_qkv", blocks="blocks", parts=PARTS)
    tie_fused_projections(wrapper, (group,))
    if module_dropout:
        add_fused_dropout(wrapper, (group,), 0.0, module_dropout, 1.0, 0.0)
    torch.manual_seed(5)
    assert add_ggpo(wrapper, GGPO, (group,)) == 1  # one kohya module: the fused q/k/v
    wrapper.train()
    return wrapper, block


def _tensors(block):
    parts = [block.get_submodule(p) for p in PARTS]
    weight = torch.cat([p.base_layer.weight for p in parts]).detach()
    bias = torch.cat([p.base_layer.bias for p in parts]).detach()
    down = parts[0].lora_A["default"].weight
    up = torch.cat([p.lora_B["default"].weight for p in parts])
    return parts, weight, bias, down, up


def _kohya_norms(weight, down, up, down_grad, up_grad, scale):
    """kohya's initialize_norm_cache (generator seeded 5), update_grad_norms and update_norms, written out."""
    torch.manual_seed(5)
    rows = weight.shape[0]
    picked = weight.float()[torch.randperm(rows)[: min(1000, rows)]]
    mean = torch.norm(picked, dim=1, keepdim=True).mean()
    with torch.autocast("cpu"):
        grads = torch.norm(scale * (up @ down_grad + up_grad @ down), dim=1, keepdim=True)
    combined = torch.sqrt(mean**2 + torch.sum((up @ down) ** 2, dim=1, keepdim=True))
    return combined, grads


def _backward(parts, x):
    out = torch.cat([p(x) for p in parts], dim=-1)
    out.square().mean().backward()


def test_fused_perturbation_is_kohyas_one_draw_per_fused_layer():
    wrapper, block = _ggpo_block()
    parts, weight, bias, down, up = _tensors(block)
    x = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(7))
    plain = (x @ weight.T + bias + (x @ down.T @ up.T) * 0.5).detach()
    up = up.detach()
    state = torch.get_rng_state()
    with torch.no_grad():  # no norms yet (kohya's first step): no perturbation, no draw
        torch.testing.assert_close(torch.cat([p(x) for p in parts], dim=-1), plain, rtol=0, atol=1e-6)
    assert torch.equal(state, torch.get_rng_state())
    _backward(parts, x)
    update_norms([wrapper])
    up_grad = torch.cat([p.lora_B["default"].weight.grad for p in parts])
    combined, grads = _kohya_norms(weight, down.detach(), up.detach(), down.grad, up_grad, 0.5)
    factor = (SIGMA * torch.sqrt(combined**2) + BETA * grads**2) / math.sqrt(weight.shape[0])
    for seed in range(3):
        torch.manual_seed(seed)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        noise = torch.randn(weight.shape) * factor
        theirs = plain + x @ noise.T
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
        assert torch.equal(after, torch.get_rng_state())  # one draw of the fused weight's shape
        assert (ours - plain).abs().max() > 1e-3  # the perturbation shows
    wrapper.eval()  # validation: never perturbed, nothing drawn
    state = torch.get_rng_state()
    with torch.no_grad():
        torch.testing.assert_close(torch.cat([p(x) for p in parts], dim=-1), plain, rtol=0, atol=1e-6)
    assert torch.equal(state, torch.get_rng_state())


def test_a_skipped_layer_draws_no_perturbation():
    wrapper, block = _ggpo_block(module_dropout=0.5)
    parts, weight, bias, down, up = _tensors(block)
    x = torch.randn(2, 5, weight.shape[1], generator=torch.Generator().manual_seed(7))
    _backward(parts, x)
    update_norms([wrapper])
    base = (x @ weight.T + bias).detach()
    outcomes = set()
    for seed in range(8):
        torch.manual_seed(seed)
        skip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        with torch.no_grad():
            ours = torch.cat([p(x) for p in parts], dim=-1)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        torch.rand(1)
        if not skip:
            torch.randn(weight.shape)
        assert torch.equal(after, torch.get_rng_state())
        assert torch.equal(ours, base) == skip
        outcomes.add(skip)
    assert outcomes == {True, False}


def test_a_plain_layer_with_module_dropout():
    """An unfused LoRA Linear (lora_dropout's wrapper, then GGPO's): kohya's order of draws."""
    block = _double_block_lora()
    add_lora_dropout(block, 0.0, 0.5, 1.0, 0.0)
    torch.manual_seed(5)
    assert add_ggpo(block, GGPO) == 3  # q, k, v each its own module
    layer = block.attn.to_k
    x = torch.randn(2, 5, layer.in_features)
    block.eval()  # gradients without a module-dropout draw
    layer(x).square().mean().backward()
    block.train()
    update_norms([block])
    kept = 0
    for seed in range(8):
        torch.manual_seed(seed)
        skip = bool(torch.rand(1) < 0.5)
        torch.manual_seed(seed)
        with torch.no_grad():
            layer(x)
        after = torch.get_rng_state()
        torch.manual_seed(seed)
        torch.rand(1)
        if not skip:
            torch.randn(layer.base_layer.weight.shape)
        assert torch.equal(after, torch.get_rng_state())
        kept += not skip
    assert 0 < kept < 8


def test_a_flux_run_with_ggpo_resumes_bit_exact(tmp_path):
    extra = (
        KOHYA.replace("fused_projections = true", "fused_projections = true\nggpo = true\nggpo_sigma = 0.3")
        + "\n[precision]\ngradient_checkpointing = true\n\n[checkpoints]\nevery = 2\n"
        + "\n[train]\ntext_encoder = true\n"  # kohya perturbs the text encoder's LoRA modules too
    )
    spec = write_spec(tmp_path, base="builtin:tiny-flux", steps=4, extra=extra)
    whole = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=whole"]))
    plain = execute(compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=plain", "adapter.ggpo=false"]))
    parts = compile_spec(spec, ["optimizer.lr=1e-2", "output.dir=parts"])
    assert (parts.adapter.ggpo_sigma, parts.adapter.ggpo_beta) == (0.3, 0.01)
    assert "GGPO" in summary_text(parts) and "sigma 0.3, beta 0.01" in summary_text(parts)
    assert whole.losses[0] == plain.losses[0]  # kohya's first step: no norms yet, no perturbation
    assert whole.losses[1:] != plain.losses[1:]
    first = execute(parts, stop_after=2)
    saved = torch.load(next((tmp_path / "parts").rglob("training_state.pt")), weights_only=True)["ggpo"]
    rows = sorted({entry["combined"].shape[0] for entry in saved})
    assert all(entry["combined"] is not None and entry["grads"] is not None for entry in saved)
    assert len(rows) > 1 and len(saved) > 3  # the norms of every module, the text encoder's among them
    resumed = execute(parts, resume=True)
    assert resumed.status == "finished" and first.losses + resumed.losses == whole.losses
    ours = load_file(str(Path(whole.final) / "pytorch_lora_weights.safetensors"))
    theirs = load_file(str(Path(resumed.final) / "pytorch_lora_weights.safetensors"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize(("backend", "kind"), [("quanto", "int8"), ("bitsandbytes", "nf4"), ("cast", "fp8")])
def test_the_base_norm_reads_a_quantised_weight_dequantised(backend, kind):
    """kohya reads the base weight in float32 (an fp8 base's values); a quantised backend's weight is read
    dequantised, at the Linear's shape (bitsandbytes packs it otherwise)."""
    from dbspec.runtime.quantize import quantize_frozen

    model = torch.nn.Sequential(torch.nn.Linear(64, 48))
    weight = model[0].weight.detach().clone()
    quantize_frozen(model, kind, backend=backend)
    read = _float_weight(model[0])
    assert read.dtype == torch.float32 and read.shape == weight.shape
    torch.testing.assert_close(read, weight, rtol=0, atol=0.05)  # the quantisation's error, no more

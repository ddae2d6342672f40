"""The plan's Prodigy state count (dbspec/compiler/memory.py) against prodigyopt 1.1 stepped here: its state
tensors' bytes per parameter, exp_avg absent at betas[0] = 0, s and p0 over every slice_p-th element."""

from __future__ import annotations

import pytest
import torch

from dbspec.compiler.memory import estimate_memory
from dbspec.plan.model import ComponentPlan

prodigyopt = pytest.importorskip("prodigyopt")


@pytest.mark.parametrize(("beta1", "slice_p"), [(0.9, 1), (0.0, 1), (0.0, 11), (0.9, 11)])
def test_prodigy_state_bytes_match_the_estimate(beta1, slice_p):
    n = 11 * 1000
    param = torch.nn.Parameter(torch.linspace(-1.0, 1.0, n).reshape(110, 100))  # no zero tensor: p0 kept
    optimizer = prodigyopt.Prodigy([param], lr=1.0, betas=(beta1, 0.999), slice_p=slice_p)
    param.grad = torch.ones_like(param)
    optimizer.step()
    state = optimizer.state[param]
    held = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.dim())
    assert ("exp_avg" in state) == (beta1 > 0)
    plan = estimate_memory(
        components=(ComponentPlan(name="unet", dtype="fp32", trainable="full", quantized="none", params=n),),
        trainable_params={"unet": n},
        optimizer="prodigy",
        momentum=beta1,
        batch_size=1,
        max_bucket=(64, 64),
        family="sd1",
        gradient_checkpointing=False,
        mixed="no",
        ema=False,
        ema_offload=False,
        teacher=(),
        available=0,
        slice_p=slice_p,
    )
    assert plan.optimizer == held


@pytest.mark.parametrize("slice_p", [1, 11])
def test_prodigy_keeps_a_scalar_p0_for_fresh_lora_ups(slice_p):
    """A fresh LoRA's up matrices are all zero at Prodigy's first step: prodigyopt 1.1 stores a scalar p0 for
    each (`if p.any()` ... else `torch.tensor(0)`), not a copy. The plan counts no p0 bytes for them
    (memory.prodigy_zero_start: half of a LoRA's parameters on square layers), so its state count is the
    bytes the real optimizer holds after one step on peft's LoRA layers."""
    from peft import LoraConfig, inject_adapter_in_model

    from dbspec.compiler.memory import prodigy_zero_start
    from dbspec.spec.model import LoraAdapter

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(44, 44), torch.nn.Linear(44, 44))  # square: ups are half
    model = inject_adapter_in_model(LoraConfig(r=4, target_modules=["0", "1"]), model)
    params = [p for name, p in model.named_parameters() if "lora_" in name]
    ups = [p for name, p in model.named_parameters() if "lora_B" in name]
    n = sum(p.numel() for p in params)  # each 176 elements: slice_p 11 keeps 16 of each
    optimizer = prodigyopt.Prodigy(params, lr=1.0, slice_p=slice_p)
    model(torch.randn(3, 44)).square().sum().backward()
    assert all(not p.any() for p in ups)
    optimizer.step()
    assert all(optimizer.state[p]["p0"].dim() == 0 for p in ups)
    held = sum(
        t.numel() * t.element_size()
        for p in params
        for t in optimizer.state[p].values()
        if torch.is_tensor(t) and t.dim()
    )
    zero = prodigy_zero_start(LoraAdapter(kind="lora", rank=4), n)
    assert zero == sum(p.numel() for p in ups)
    plan = estimate_memory(
        components=(ComponentPlan(name="unet", dtype="fp32", trainable="lora", quantized="none", params=n),),
        trainable_params={"lora": n},
        optimizer="prodigy",
        momentum=0.9,
        batch_size=1,
        max_bucket=(64, 64),
        family="sd1",
        gradient_checkpointing=False,
        mixed="no",
        ema=False,
        ema_offload=False,
        teacher=(),
        available=0,
        slice_p=slice_p,
        zero_start=zero,
    )
    assert plan.optimizer == held

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

"""torch AdamW's fused kernel, settled in the plan (`optimizer.implementation`), against torch's loop."""

from __future__ import annotations

import attrs
import torch

from dbspec.runtime.optim import make_optimizer
from tests.runtime.runspec import compile_spec, write_spec


def _train(opt_plan, steps: int = 5) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), torch.nn.SiLU(), torch.nn.Conv2d(8, 4, 3))
    x = torch.randn(2, 4, 12, 12)
    optimizer = make_optimizer([{"params": list(model.parameters()), "lr": opt_plan.lr}], opt_plan)
    for _ in range(steps):
        model(x).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    return [p.detach().clone() for p in model.parameters()]


def test_the_fused_kernel_is_planned_and_updates_like_torchs_loop(tmp_path):
    spec = write_spec(tmp_path, steps=1)
    loop = compile_spec(spec).optimizer
    fused = compile_spec(spec, ['optimizer.implementation="fused"']).optimizer
    assert loop.kind == "adamw" and loop.implementation == "default"  # torch's default unless asked
    assert fused.implementation == "fused" and _optimizer_defaults(fused)["fused"] is True
    assert not _optimizer_defaults(loop)["fused"]
    sgd = attrs.evolve(fused, kind="sgd", momentum=0.9)
    assert _optimizer_defaults(sgd)["fused"] is True
    # One kernel computes the same update formula in another order: equal to float rounding, not bitwise.
    for a, b in zip(_train(fused), _train(loop), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _optimizer_defaults(opt_plan) -> dict:
    return make_optimizer([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 1e-3}], opt_plan).defaults

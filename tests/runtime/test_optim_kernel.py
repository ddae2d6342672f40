"""torch AdamW's fused kernel, settled in the plan (`optimizer.implementation`), against torch's loop; the
constructor settings the plan gives Prodigy, AdamW and SGD, read back from the built optimizers."""

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


def test_the_built_optimizers_hold_the_plans_settings(tmp_path):
    """kohya's common Prodigy optimizer_args, as the plan settles them, reach prodigyopt's param_groups
    (decouple and beta3 at their effective values: prodigyopt's defaults unless given); AdamW's amsgrad
    and SGD's dampening reach torch's."""
    spec = write_spec(tmp_path, steps=1)
    prodigy = [
        'optimizer.kind="prodigy"',
        "optimizer.lr=1.0",
        "optimizer.weight_decay=0.01",
        "optimizer.d_coef=2.0",
        "optimizer.use_bias_correction=true",
        "optimizer.safeguard_warmup=true",
        "optimizer.betas=[0.9, 0.99]",
    ]
    group = _optimizer_defaults(compile_spec(spec, prodigy).optimizer)
    assert group["betas"] == (0.9, 0.99) and group["beta3"] == 0.99**0.5 and group["eps"] == 1e-8
    assert (group["d_coef"], group["use_bias_correction"], group["safeguard_warmup"]) == (2.0, True, True)
    assert (group["decouple"], group["weight_decay"], group["d0"], group["slice_p"]) == (True, 0.01, 1e-6, 1)
    assert group["growth_rate"] == float("inf")
    more = [
        "optimizer.decouple=false",
        "optimizer.growth_rate=1.02",
        "optimizer.beta3=0.9",
        "optimizer.eps=1e-6",
    ]
    group = _optimizer_defaults(compile_spec(spec, [*prodigy, *more, "optimizer.slice_p=11"]).optimizer)
    assert (group["decouple"], group["growth_rate"], group["beta3"], group["eps"]) == (False, 1.02, 0.9, 1e-6)
    assert group["slice_p"] == 11
    adamw = compile_spec(spec, ["optimizer.amsgrad=true"]).optimizer
    assert _optimizer_defaults(adamw)["amsgrad"] is True
    sgd = compile_spec(spec, ['optimizer.kind="sgd"', "optimizer.momentum=0.9", "optimizer.dampening=0.1"])
    assert _optimizer_defaults(sgd.optimizer)["dampening"] == 0.1

"""precision.weights = "bf16" (kohya's full_bf16): a tiny full fine-tune trains with bf16 weights, stays bf16,
resumes bit-identical (the rounding generator is checkpointed), and the stochastic rounding is unbiased."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.rounding import StochasticRoundingOptimizer, stochastic_round_to_bf16
from tests.runtime.runspec import compile_spec, write_spec
from tests.runtime.optim_kit import flat_tensors

BF16_WEIGHTS = """
[precision]
mixed = "bf16"
weights = "bf16"

[train]
text_encoder = true
"""


def _trained_state(out: Path) -> dict:
    files = sorted(out.rglob("training_state.pt"), key=lambda p: p.stat().st_mtime)
    assert files, f"no checkpoint under {out}"
    return torch.load(files[-1], weights_only=True)


def test_a_bf16_full_fine_tune_trains_stays_bf16_and_resumes_bit_identical(tmp_path):
    spec = write_spec(tmp_path, steps=4, extra=BF16_WEIGHTS + "\n[checkpoints]\nevery = 2\n")
    plan = compile_spec(spec, ["output.dir=parts"])
    assert plan.precision.weights == "bf16" and plan.precision.stochastic_rounding
    trained = {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"}
    assert trained == {"unet": "bf16", "text_encoder": "bf16"}
    whole_plan = compile_spec(spec, ["output.dir=whole"])
    whole = execute(whole_plan)
    assert whole.status == "finished" and all(math.isfinite(x) for x in whole.losses)
    state = _trained_state(Path(whole_plan.checkpoints.dir))
    weights = state["trainable"]
    tensors = [v for v in (weights.values() if isinstance(weights, dict) else []) if torch.is_tensor(v)]
    nested = [t for v in weights.values() if isinstance(v, dict) for t in v.values() if torch.is_tensor(t)]
    held = tensors + nested
    assert held and all(t.dtype == torch.bfloat16 for t in held if t.is_floating_point())
    moments = [s["exp_avg"] for s in state["optimizer"]["state"].values()]
    assert moments and all(m.dtype == torch.float32 for m in moments)  # the AdamW state stays fp32
    assert "stochastic_rounding_generator" in state["optimizer"]

    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and second.steps == 4
    assert first.losses + second.losses == whole.losses
    a = _trained_state(Path(whole_plan.checkpoints.dir))["trainable"]
    b = _trained_state(Path(plan.checkpoints.dir))["trainable"]
    flat_a, flat_b = flat_tensors(a), flat_tensors(b)
    assert flat_a.keys() == flat_b.keys() and all(torch.equal(flat_a[k], flat_b[k]) for k in flat_a)


def test_stochastic_rounding_is_unbiased_where_nearest_rounding_is_not():
    generator = torch.Generator().manual_seed(0)
    low = torch.tensor(1.0, dtype=torch.bfloat16)
    ulp = 2.0**-7  # bf16 spacing in [1, 2)
    n = 200_000
    for fraction in (0.01, 0.25, 0.5, 0.9):
        for sign in (1.0, -1.0):
            value = sign * (1.0 + fraction * ulp)
            x = torch.full((n,), value, dtype=torch.float32)
            rounded = stochastic_round_to_bf16(x, generator)
            assert set(rounded.float().abs().unique().tolist()) <= {1.0, 1.0 + ulp}
            mean = rounded.double().mean().item()
            # the count of round-ups is binomial(n, fraction): 6 standard deviations of the mean
            sd = ulp * math.sqrt(fraction * (1 - fraction) / n)
            assert abs(mean - value) <= 6 * sd + 1e-12, (value, mean)
    # nearest rounding of a small update loses it every time; stochastic rounding keeps it on average
    x = torch.full((n,), 1.0 + 0.01 * ulp)
    assert x.to(torch.bfloat16).double().mean().item() == float(low)
    assert stochastic_round_to_bf16(x, generator).double().mean().item() > 1.0


def test_small_updates_accumulate_in_bf16_weights_with_stochastic_rounding():
    """1000 SGD steps of lr*grad = 1e-5 on weights of 1.0: nearest rounding stays at 1.0, SR moves ~1e-2."""
    steps, update = 1000, 1e-5
    weight = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    plain = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    rounding = StochasticRoundingOptimizer(
        torch.optim.SGD([weight], lr=update), torch.Generator().manual_seed(1)
    )
    nearest = torch.optim.SGD([plain], lr=update)
    for _ in range(steps):
        weight.grad = torch.full_like(weight, -1.0)
        plain.grad = torch.full_like(plain, -1.0)
        rounding.step()
        nearest.step()
    assert weight.dtype == torch.bfloat16 and plain.dtype == torch.bfloat16
    assert torch.equal(plain.detach(), torch.ones_like(plain))  # every update lost
    assert math.isclose(weight.double().mean().item(), 1.0 + steps * update, rel_tol=2e-3)

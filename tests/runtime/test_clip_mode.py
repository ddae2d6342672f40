"""optimizer.clip_mode: "value" clamps each gradient element to +-max_grad_norm (torch clip_grad_value_,
SimpleTuner's default), "norm" bounds the total norm (clip_grad_norm_), "norm_per_tensor" bounds each
parameter's norm on its own (kohya's fused backward pass). A one-step SGD run (lr 1, no momentum or decay)
moves each trained weight by exactly minus its clipped gradient, so the step shows the clipping."""

from __future__ import annotations

import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, write_spec

CLIP = 1e-3
TOL = 1e-3  # relative: fp32 weights round each applied update (the difference is taken in fp64)


def _step(tmp_path, mode: str) -> torch.Tensor:
    settings = {"kind": '"sgd"', "lr": 1.0, "momentum": 0.0, "weight_decay": 0.0, "max_grad_norm": CLIP}
    overrides = [f"optimizer.{k}={v}" for k, v in settings.items()] + [f'optimizer.clip_mode="{mode}"']
    plan = compile_spec(write_spec(tmp_path / mode, base="builtin:tiny-sd1", steps=1), overrides)
    assert plan.optimizer.clip_mode == mode
    result = execute(plan, keep_models=True)
    before = torch.cat(
        [p.detach().double().flatten() for p in build_pipeline("builtin:tiny-sd1").unet.parameters()]
    )
    after = torch.cat([p.detach().double().flatten() for p in result.components.unet.parameters()])
    return after - before


def test_value_clipping_bounds_every_element_and_norm_clipping_the_total(tmp_path):
    by_value, by_norm = _step(tmp_path, "value"), _step(tmp_path, "norm")
    # each element moved at most CLIP, and the clamp binds: many elements moved by exactly CLIP
    assert by_value.abs().max() <= CLIP * (1 + TOL)
    assert (by_value.abs() > CLIP * (1 - TOL)).sum() > 10
    # norm clipping: the whole step has norm CLIP, so its elements are far smaller than CLIP
    assert torch.linalg.vector_norm(by_norm) <= CLIP * (1 + TOL)
    assert by_norm.abs().max() < CLIP / 2


def test_per_tensor_clipping_bounds_each_parameters_step_on_its_own(tmp_path):
    """kohya's fused backward pass: every parameter's gradient is clipped to norm CLIP by itself, so each
    parameter moves by at most CLIP while the whole step is far longer than CLIP."""
    step = _step(tmp_path, "norm_per_tensor")
    sizes = [p.numel() for p in build_pipeline("builtin:tiny-sd1").unet.parameters()]
    norms = torch.stack([torch.linalg.vector_norm(part) for part in step.split(sizes)])
    assert norms.max() <= CLIP * (1 + TOL)
    assert (norms > CLIP * (1 - TOL)).sum() > 10  # the clip binds for many parameters
    assert torch.linalg.vector_norm(step) > 3 * CLIP

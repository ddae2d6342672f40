"""torch's StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR, OneCycleLR, CyclicLR and PolynomialLR
(kohya's lr_scheduler_type,
issue 12): the plan's torch-free curve equals torch's class stepped on a real optimizer, float for float, and
a tiny run with each resumes bit-exact."""

from __future__ import annotations

import io

import attrs
import pytest
import torch
from rich.console import Console

from dbspec.compiler.schedule import Curve, compute_schedule, lr_curve
from dbspec.plan.model import TorchSchedulePlan
from dbspec.plan.summary import render_summary
from dbspec.runtime.execute import execute
from dbspec.runtime.optim import make_lr_scheduler
from tests.runtime.runspec import compile_spec, final_weights, write_spec

DEFAULTS = TorchSchedulePlan(
    step_size=1,
    gamma=0.1,
    milestones=(),
    start_factor=1 / 3,
    end_factor=1.0,
    total_iters=5,
    factor=1 / 3,
    max_lr=0.0,
    pct_start=0.3,
    anneal_strategy="cos",
    div_factor=25.0,
    final_div_factor=1e4,
    three_phase=False,
    cycle_momentum=True,
    base_momentum=0.85,
    max_momentum=0.95,
)


def _walk(optimizer, scheduler, steps: int) -> tuple[list[float], list[float]]:
    """The LR and the momentum (beta1 for AdamW) after 0 ... steps - 1 scheduler steps."""
    lrs, momenta = [], []
    for index in range(steps):
        group = optimizer.param_groups[0]
        lrs.append(group["lr"])
        momenta.append(group["betas"][0] if "betas" in group else group["momentum"])
        if index < steps - 1:  # OneCycleLR refuses a step past its total_steps
            optimizer.step()
            scheduler.step()
    return lrs, momenta


def _adamw(lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=lr)


TORCH = {
    "step": lambda o, a, total: torch.optim.lr_scheduler.StepLR(o, step_size=a.step_size, gamma=a.gamma),
    "multi_step": lambda o, a, total: torch.optim.lr_scheduler.MultiStepLR(
        o, milestones=list(a.milestones), gamma=a.gamma
    ),
    "exponential": lambda o, a, total: torch.optim.lr_scheduler.ExponentialLR(o, gamma=a.gamma),
    "linear_lr": lambda o, a, total: torch.optim.lr_scheduler.LinearLR(
        o, start_factor=a.start_factor, end_factor=a.end_factor, total_iters=a.total_iters
    ),
    "constant_lr": lambda o, a, total: torch.optim.lr_scheduler.ConstantLR(
        o, factor=a.factor, total_iters=a.total_iters
    ),
    "one_cycle": lambda o, a, total: torch.optim.lr_scheduler.OneCycleLR(
        o,
        max_lr=a.max_lr or o.param_groups[0]["lr"],
        total_steps=total,
        pct_start=a.pct_start,
        anneal_strategy=a.anneal_strategy,
        cycle_momentum=a.cycle_momentum,
        base_momentum=a.base_momentum,
        max_momentum=a.max_momentum,
        div_factor=a.div_factor,
        final_div_factor=a.final_div_factor,
        three_phase=a.three_phase,
    ),
    "cyclic": lambda o, a, total: torch.optim.lr_scheduler.CyclicLR(
        o,
        base_lr=a.base_lr,
        max_lr=a.max_lr or o.param_groups[0]["lr"],
        step_size_up=a.step_size_up,
        step_size_down=a.step_size_down or None,
        mode=a.cyclic_mode,
        gamma=a.gamma,
        cycle_momentum=a.cycle_momentum,
        base_momentum=a.base_momentum,
        max_momentum=a.max_momentum,
    ),
    "polynomial_lr": lambda o, a, total: torch.optim.lr_scheduler.PolynomialLR(o, total_iters=a.total_iters),
}
CYCLIC = {"base_lr": 1e-5, "gamma": 1.0, "base_momentum": 0.8, "max_momentum": 0.9}
CASES = [
    ("step", {"step_size": 7, "gamma": 0.5}),
    ("step", {"step_size": 1, "gamma": 0.97}),
    ("multi_step", {"milestones": (5, 12, 12, 30), "gamma": 0.3}),
    ("exponential", {"gamma": 0.93}),
    ("linear_lr", {"start_factor": 0.25, "end_factor": 1.0, "total_iters": 10}),
    ("linear_lr", {"start_factor": 1.0, "end_factor": 0.1, "total_iters": 33}),
    ("constant_lr", {"factor": 0.5, "total_iters": 8}),
    ("one_cycle", {}),
    ("one_cycle", {"max_lr": 3e-3, "pct_start": 0.25, "anneal_strategy": "linear"}),
    ("one_cycle", {"three_phase": True, "div_factor": 10.0, "final_div_factor": 100.0}),
    ("one_cycle", {"cycle_momentum": False}),
    ("cyclic", {**CYCLIC, "step_size_up": 6}),
    (
        "cyclic",
        {**CYCLIC, "max_lr": 4e-3, "step_size_up": 5, "step_size_down": 9, "cyclic_mode": "triangular2"},
    ),
    (
        "cyclic",
        {**CYCLIC, "step_size_up": 4, "cyclic_mode": "exp_range", "gamma": 0.97, "cycle_momentum": False},
    ),
    ("cyclic", {**CYCLIC, "base_lr": 0.0, "step_size_up": 3, "step_size_down": 1, "max_momentum": 0.95}),
    # fractions, as torch takes them (kohya's step_size_up=2.5): total_size and step_ratio in floats
    ("cyclic", {**CYCLIC, "step_size_up": 2.5, "step_size_down": 3.75}),
    ("cyclic", {**CYCLIC, "step_size_up": 1.25, "cyclic_mode": "triangular2", "cycle_momentum": False}),
    ("polynomial_lr", {"total_iters": 25}),
    ("polynomial_lr", {"total_iters": 40}),
]


@pytest.mark.parametrize(("name", "args"), CASES)
def test_the_plans_curve_is_torchs_float_for_float(name: str, args: dict) -> None:
    total = 40
    a = attrs.evolve(DEFAULTS, **args)
    optimizer = _adamw(1e-3)
    lrs, momenta = _walk(optimizer, TORCH[name](optimizer, a, total), total + 1)
    curve = Curve(1e-3, name, 0, total, torch=a)
    assert lr_curve(list(range(total + 1)), curve) == lrs
    assert lr_curve([0, 9, total], curve) == [lrs[0], lrs[9], lrs[total]]
    assert len(set(lrs)) > 1  # the curve moves
    plan = compute_schedule(
        batches_per_epoch=5, instance_samples=5, class_samples=0, batch_size=1, accumulation=1, processes=1,
        steps=total, epochs=0, lr=1e-3, lr_schedule=name, warmup_steps=0, cycles=1, text_encoder_stop_step=0,
        checkpoint_every=7, validate_every=0, validate=False, seed=0, torch=a,
    )  # fmt: skip
    assert all(lrs[step] == value for step, value in plan.lr_points)
    if name in ("one_cycle", "cyclic") and a.cycle_momentum:
        # OneCycleLR and CyclicLR cycle AdamW's beta1: the plan shows the same values
        assert plan.momentum_points and all(momenta[step] == m for step, m in plan.momentum_points)
        assert min(momenta) == pytest.approx(a.base_momentum) and momenta[0] == a.max_momentum
    else:
        assert plan.momentum_points == ()
    # the runtime's scheduler from the plan is the same class with the same arguments
    ours = _adamw(1e-3)
    assert _walk(ours, make_lr_scheduler(ours, plan), total + 1) == (lrs, momenta)


@pytest.mark.parametrize("power", [2.0, 0.5, 1.7])
def test_polynomial_lr_with_a_power_is_torchs_float_for_float(power: float) -> None:
    total, a = 30, attrs.evolve(DEFAULTS, total_iters=24)
    optimizer = _adamw(2e-4)
    scheduler = torch.optim.lr_scheduler.PolynomialLR(optimizer, total_iters=24, power=power)
    lrs, _ = _walk(optimizer, scheduler, total + 1)
    assert (
        lr_curve(list(range(total + 1)), Curve(2e-4, "polynomial_lr", 0, total, power=power, torch=a)) == lrs
    )
    assert lrs[24] == 0.0 and lrs[30] == 0.0 and lrs[1] < lrs[0]
    plan = compute_schedule(
        batches_per_epoch=5, instance_samples=5, class_samples=0, batch_size=1, accumulation=1, processes=1,
        steps=total, epochs=0, lr=2e-4, lr_schedule="polynomial_lr", warmup_steps=0, cycles=1, power=power,
        text_encoder_stop_step=0, checkpoint_every=5, validate_every=0, validate=False, seed=0, torch=a,
    )  # fmt: skip
    assert all(lrs[step] == value for step, value in plan.lr_points)
    ours = _adamw(2e-4)
    assert _walk(ours, make_lr_scheduler(ours, plan), total + 1)[0] == lrs


@pytest.mark.parametrize(
    "overrides",
    [
        ['schedule.lr_schedule="one_cycle"', "schedule.pct_start=0.5"],
        ['schedule.lr_schedule="multi_step"', "schedule.milestones=[1, 3]", "schedule.gamma=0.5"],
        ['schedule.lr_schedule="cyclic"', "schedule.base_lr=1e-5", "schedule.step_size_up=2"],
        ['schedule.lr_schedule="polynomial_lr"', "schedule.total_iters=3", "schedule.power=2.0"],
    ],
)
def test_a_torch_schedule_run_trains_and_resumes_bit_exact(tmp_path, overrides):
    spec = write_spec(tmp_path, steps=4)
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*overrides, "output.dir=parts"])
    console = Console(file=io.StringIO(), width=300)
    render_summary(plan, console)
    text = console.file.getvalue()
    if "one_cycle" in overrides[0]:
        assert "torch OneCycleLR), total_steps 4" in text and "momentum at" in text
    elif "cyclic" in overrides[0]:
        assert (
            "torch CyclicLR), base_lr 1e-05 (every group's), max_lr = each group's lr, triangular, "
            "up 2 / down 2" in text
        )
        assert "momentum at" in text
    elif "polynomial_lr" in overrides[0]:
        assert "torch PolynomialLR), total_iters 3, power 2" in text
    else:
        assert "torch MultiStepLR), milestones [1, 3], gamma 0.5" in text
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- kohya's lr_scheduler_args passed to its named schedules (transformers' functions) ----------------------


def _transformers(name: str, optimizer, total: int, kwargs: dict):
    """What kohya's get_scheduler_fix builds for `name` with lr_scheduler_args `kwargs` (num_cycles 1, power
    1, min_lr_ratio 0.1 from its own options, warm-up 6, decay 10)."""
    from transformers.optimization import (
        get_cosine_schedule_with_warmup,
        get_polynomial_decay_schedule_with_warmup,
        get_wsd_schedule,
    )

    if name == "cosine":
        return get_cosine_schedule_with_warmup(
            optimizer, num_warmup_steps=6, num_training_steps=total, **kwargs
        )
    if name == "polynomial":
        return get_polynomial_decay_schedule_with_warmup(
            optimizer, num_warmup_steps=6, num_training_steps=total, power=1.0, **kwargs
        )
    return get_wsd_schedule(
        optimizer,
        num_warmup_steps=6,
        num_stable_steps=total - 6 - 10,
        num_decay_steps=10,
        num_cycles=1 / 2,
        min_lr_ratio=0.1,
        **kwargs,
    )


@pytest.mark.parametrize(
    ("name", "kwargs", "fields"),
    [
        ("cosine", {"num_cycles": 1.5}, {"cosine_cycles": 1.5}),
        ("polynomial", {"lr_end": 1e-5}, {"lr_end": 1e-5}),
        ("warmup_stable_decay", {"warmup_type": "cosine", "decay_type": "1-sqrt"}, {}),
        ("warmup_stable_decay", {"warmup_type": "1-sqrt", "decay_type": "linear"}, {}),
    ],
)
def test_scheduler_args_to_named_schedules_follow_transformers(name: str, kwargs: dict, fields: dict) -> None:
    total = 40
    optimizer = _adamw(1e-3)
    lrs, _ = _walk(optimizer, _transformers(name, optimizer, total, kwargs), total + 1)
    shape = {**fields, **{k: v for k, v in kwargs.items() if k in ("warmup_type", "decay_type")}}
    plan = compute_schedule(
        batches_per_epoch=5, instance_samples=5, class_samples=0, batch_size=1, accumulation=1, processes=1,
        steps=total, epochs=0, lr=1e-3, lr_schedule=name, warmup_steps=6, cycles=1, min_lr_ratio=0.1,
        decay_steps=10, text_encoder_stop_step=0, checkpoint_every=3, validate_every=0, validate=False,
        seed=0, **shape,
    )  # fmt: skip
    assert all(lrs[step] == value for step, value in plan.lr_points) and len(plan.lr_points) > 10
    ours = _adamw(1e-3)
    assert _walk(ours, make_lr_scheduler(ours, plan), total + 1)[0] == lrs
    default = compute_schedule(
        batches_per_epoch=5, instance_samples=5, class_samples=0, batch_size=1, accumulation=1, processes=1,
        steps=total, epochs=0, lr=1e-3, lr_schedule=name, warmup_steps=6, cycles=1, min_lr_ratio=0.1,
        decay_steps=10, text_encoder_stop_step=0, checkpoint_every=3, validate_every=0, validate=False,
        seed=0,
    )  # fmt: skip
    assert default.lr_points != plan.lr_points  # the arguments change the curve


# lr_scheduler_args as kohya's get_scheduler_fix parses them: `key=<Python literal>` each (ast.literal_eval)
_LITERAL_ARGS = [
    {},
    {"milestones": [10]},
    {"schedulers": [], "milestones": []},
    {"schedulers": ["LinearLR", "CosineAnnealingLR"], "milestones": [10]},
    {"schedulers": [{"optimizer": 0}], "milestones": []},
    {"schedulers": None, "milestones": []},
    {"optimizer": None},
]


@pytest.mark.parametrize("cls", ["SequentialLR", "ChainedScheduler"])
@pytest.mark.parametrize("kwargs", _LITERAL_ARGS)
def test_kohya_cannot_build_sequential_or_chained_schedulers(cls: str, kwargs: dict) -> None:
    """kohya builds `cls(optimizer, **lr_scheduler_args)`: SequentialLR needs scheduler objects (no literal
    has their `optimizer` attribute), ChainedScheduler takes the scheduler list first and so gets the
    optimizer as the list. Every such build fails, which is why the conversion refuses both (DBS402)."""
    optimizer = _adamw(1e-3)
    with pytest.raises((TypeError, ValueError)):
        getattr(torch.optim.lr_scheduler, cls)(optimizer, **kwargs)

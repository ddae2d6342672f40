"""torch's StepLR, MultiStepLR, ExponentialLR, LinearLR, ConstantLR, PolynomialLR, OneCycleLR and CyclicLR
curves, torch-free.

Each is evaluated with the float operations torch's `get_lr` performs, in its order: the first six update the
LR recursively from the previous one (so the recursion is run step by step), OneCycleLR and CyclicLR compute
each step in closed form from the group's rates. A test steps torch's classes on a real optimizer
and compares bit for bit.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable

from dbspec.plan.model import TORCH_CLASS_SCHEDULES, TorchSchedulePlan
from dbspec.spec.model import Schedule

NEW_TORCH_SCHEDULES = TORCH_CLASS_SCHEDULES
MOMENTUM_SCHEDULES = ("one_cycle", "cyclic")  # with cycle_momentum they drive momentum / beta1


def _step(lr: float, epoch: int, a: TorchSchedulePlan, milestones: Counter) -> float:
    return lr * a.gamma if epoch % a.step_size == 0 else lr


def _multi_step(lr: float, epoch: int, a: TorchSchedulePlan, milestones: Counter) -> float:
    return lr * a.gamma ** milestones[epoch] if epoch in milestones else lr


def _exponential(lr: float, epoch: int, a: TorchSchedulePlan, milestones: Counter) -> float:
    return lr * a.gamma


def _linear_lr(lr: float, epoch: int, a: TorchSchedulePlan, milestones: Counter) -> float:
    if epoch > a.total_iters:
        return lr
    delta = a.end_factor - a.start_factor
    return lr * (1.0 + delta / (a.total_iters * a.start_factor + (epoch - 1) * delta))


def _constant_lr(lr: float, epoch: int, a: TorchSchedulePlan, milestones: Counter) -> float:
    return lr * (1.0 / a.factor) if epoch == a.total_iters else lr


def _polynomial_lr(lr: float, epoch: int, a: TorchSchedulePlan, power: float) -> float:
    if epoch > a.total_iters:
        return lr
    return lr * ((1.0 - epoch / a.total_iters) / (1.0 - (epoch - 1) / a.total_iters)) ** power


_RECURSIONS: dict[str, Callable[[float, int, TorchSchedulePlan, Counter], float]] = {
    "step": _step,
    "multi_step": _multi_step,
    "exponential": _exponential,
    "linear_lr": _linear_lr,
    "constant_lr": _constant_lr,
}
_FIRST_FACTOR = {"linear_lr": "start_factor", "constant_lr": "factor"}  # applied by the constructor


def recursive_curve(
    schedule: str, steps: list[int], lr: float, a: TorchSchedulePlan, power: float = 1.0
) -> list[float]:
    """The LR after each of `steps` (sorted) scheduler steps of the recursive torch schedulers (`power`:
    PolynomialLR's, the plan's schedule power)."""
    first = _FIRST_FACTOR.get(schedule)
    current = lr * getattr(a, first) if first else lr
    milestones = Counter(a.milestones)
    if schedule == "polynomial_lr":
        update = lambda lr, epoch, a, milestones: _polynomial_lr(lr, epoch, a, power)  # noqa: E731
    else:
        update = _RECURSIONS[schedule]
    out, epoch = [], 0
    for target in steps:
        while epoch < target:
            epoch += 1
            current = update(current, epoch, a, milestones)
        out.append(current)
    return out


def _phases(a: TorchSchedulePlan, total: int) -> list[tuple[float, str, str, str, str]]:
    """OneCycleLR's phases: (end step, start lr, end lr, start momentum, end momentum)."""
    if a.three_phase:
        return [
            (float(a.pct_start * total) - 1, "initial", "max", "max_m", "base_m"),
            (float(2 * a.pct_start * total) - 2, "max", "initial", "base_m", "max_m"),
            (total - 1, "initial", "min", "max_m", "max_m"),
        ]
    return [
        (float(a.pct_start * total) - 1, "initial", "max", "max_m", "base_m"),
        (total - 1, "max", "min", "base_m", "max_m"),
    ]


def _anneal(strategy: str, start: float, end: float, pct: float) -> float:
    if strategy == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def one_cycle(step: int, lr: float, total: int, a: TorchSchedulePlan) -> tuple[float, float]:
    """OneCycleLR's (lr, momentum) after `step` scheduler steps, for a group whose rate is `lr` (used when
    max_lr is 0) and total_steps `total`."""
    peak = a.peak(a.max_lr, lr)
    initial = peak / a.div_factor
    values = {
        "initial": initial,
        "max": peak,
        "min": initial / a.final_div_factor,
        "max_m": a.max_momentum,
        "base_m": a.base_momentum,
    }
    phases = _phases(a, total)
    start = 0.0
    for i, (end, lr_from, lr_to, m_from, m_to) in enumerate(phases):
        if step <= end or i == len(phases) - 1:
            pct = (step - start) / (end - start)
            return (
                _anneal(a.anneal_strategy, values[lr_from], values[lr_to], pct),
                _anneal(a.anneal_strategy, values[m_from], values[m_to], pct),
            )
        start = end
    raise AssertionError("unreachable: the last phase always answers")


def cyclic(step: int, lr: float, a: TorchSchedulePlan) -> tuple[float, float]:
    """CyclicLR's (lr, momentum) after `step` scheduler steps, for a group whose rate is `lr` (the peak when
    max_lr is 0), as its get_lr computes them (its scale_fn by mode, scale_mode the mode's own)."""
    up = float(a.step_size_up)
    total_size = up + (float(a.step_size_down) if a.step_size_down else up)
    step_ratio = up / total_size
    cycle = math.floor(1 + step / total_size)
    x = 1.0 + step / total_size - cycle
    scale_factor = x / step_ratio if x <= step_ratio else (x - 1) / (step_ratio - 1)
    if a.cyclic_mode == "triangular":
        scale = 1.0
    elif a.cyclic_mode == "triangular2":
        scale = 1 / (2.0 ** (cycle - 1))
    else:  # exp_range: scale_mode "iterations"
        scale = a.gamma**step
    peak = a.peak(a.max_lr, lr)
    rate = a.base_lr + (peak - a.base_lr) * scale_factor * scale
    momentum = a.max_momentum - (a.max_momentum - a.base_momentum) * scale_factor * scale
    return rate, momentum


def momentum_at(schedule: str, step: int, lr: float, total: int, a: TorchSchedulePlan) -> float:
    """The momentum (or beta1) OneCycleLR or CyclicLR sets after `step` scheduler steps."""
    if schedule == "cyclic":
        return cyclic(step, lr, a)[1]
    return one_cycle(step, lr, total, a)[1]


def torch_schedule_plan(s: Schedule) -> TorchSchedulePlan | None:
    """The torch arguments of the plan, for the schedules that take them."""
    if s.lr_schedule not in NEW_TORCH_SCHEDULES:
        return None
    return TorchSchedulePlan(
        step_size=s.step_size,
        gamma=s.gamma,
        milestones=tuple(s.milestones),
        start_factor=s.start_factor,
        end_factor=s.end_factor,
        total_iters=s.total_iters,
        factor=s.factor,
        max_lr=_number(s.max_lr),
        pct_start=s.pct_start,
        anneal_strategy=s.anneal_strategy,
        div_factor=s.div_factor,
        final_div_factor=s.final_div_factor,
        three_phase=s.three_phase,
        cycle_momentum=s.cycle_momentum,
        base_momentum=_number(s.base_momentum),
        max_momentum=_number(s.max_momentum),
        base_lr=_number(s.base_lr),
        step_size_up=_steps(s.step_size_up),
        step_size_down=_steps(s.step_size_down),
        cyclic_mode=s.cyclic_mode,
        max_lr_zero=s.max_lr_zero,
    )


def _steps(value: float) -> float:
    """CyclicLR's step size as the plan holds it: a whole number as the int it was before fractions were
    taken (the plan's JSON and so a run's hash unchanged: such a run resumes across the upgrade), a fraction
    as it is; torch takes float() of either."""
    return int(value) if value == int(value) else value


def _number(value: float | dict) -> float:
    """A bound's number form; 0.0 for a per-group table, whose values the plan's torch.groups hold
    (compiler/group_bounds.py)."""
    return 0.0 if isinstance(value, dict) else value

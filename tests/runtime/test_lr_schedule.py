"""lr_at against diffusers' get_scheduler driving a real torch optimizer, step by step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.optimization import get_scheduler

from dbspec.compiler.schedule import DIFFUSERS_SCHEDULES, Curve, lr_at, lr_curve

COMBOS = [  # (warmup, total, cycles)
    (0, 1, 1),
    (0, 100, 1),
    (10, 100, 3),
    (7, 50, 2),
    (3, 4, 1),
    (25, 37, 5),
]


@pytest.mark.parametrize("base_lr", [1e-4, 3.7e-6])
@pytest.mark.parametrize(("warmup", "total", "cycles"), COMBOS)
@pytest.mark.parametrize("name", DIFFUSERS_SCHEDULES)
def test_lr_at_matches_diffusers(name: str, warmup: int, total: int, cycles: int, base_lr: float) -> None:
    weight = torch.nn.Parameter(torch.zeros(2))
    optimizer = torch.optim.SGD([weight], lr=base_lr)
    scheduler = get_scheduler(
        name, optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles
    )
    for step in range(total + 5):  # past the end too: polynomial holds lr_end, linear holds 0
        expected = optimizer.param_groups[0]["lr"]
        got = lr_at(step, lr=base_lr, schedule=name, warmup=warmup, total=total, cycles=cycles)
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=0.0), (step, got, expected)
        optimizer.step()
        scheduler.step()


# --- kohya's scheduler options: lr_at against the library objects kohya's get_scheduler_fix builds ----------
def _walk(optimizer, scheduler, steps: int) -> list[float]:
    lrs = []
    for _ in range(steps):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def _sgd(base_lr: float) -> torch.optim.Optimizer:
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=base_lr)


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0, 3.3])
@pytest.mark.parametrize(("warmup", "total"), [(0, 40), (10, 100), (3, 4)])
def test_polynomial_power_matches_diffusers(power: float, warmup: int, total: int) -> None:
    optimizer = _sgd(1e-4)
    scheduler = get_scheduler(
        "polynomial", optimizer, num_warmup_steps=warmup, num_training_steps=total, power=power
    )
    for step, expected in enumerate(_walk(optimizer, scheduler, total + 3)):
        got = lr_at(step, lr=1e-4, schedule="polynomial", warmup=warmup, total=total, cycles=1, power=power)
        assert math.isclose(got, expected, rel_tol=1e-12), (step, got, expected)


@pytest.mark.parametrize("ratio", [0.0, 0.1, 0.5])
@pytest.mark.parametrize(("warmup", "total", "cycles"), [(0, 50, 1), (10, 100, 1), (5, 60, 3), (3, 4, 2)])
def test_cosine_with_min_lr_matches_kohyas_call(ratio: float, warmup: int, total: int, cycles: int) -> None:
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    optimizer = _sgd(3e-5)
    # kohya: num_cycles=args.lr_scheduler_num_cycles / 2, min_lr_rate=args.lr_scheduler_min_lr_ratio
    scheduler = get_cosine_with_min_lr_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=total, num_cycles=cycles / 2, min_lr_rate=ratio
    )
    for step, expected in enumerate(_walk(optimizer, scheduler, total + 3)):
        got = lr_at(
            step, lr=3e-5, schedule="cosine_with_min_lr", warmup=warmup, total=total, cycles=cycles,
            min_lr_ratio=ratio,
        )  # fmt: skip
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-300), (step, got, expected)


@pytest.mark.parametrize("ratio", [0.0, 0.2])
@pytest.mark.parametrize(
    ("warmup", "decay", "total", "cycles"), [(0, 10, 50, 1), (10, 30, 100, 1), (5, 55, 60, 2)]
)
def test_warmup_stable_decay_matches_kohyas_call(ratio, warmup, decay, total, cycles) -> None:
    from transformers.optimization import get_wsd_schedule

    optimizer = _sgd(1e-4)
    # kohya: num_stable_steps = num_training_steps - num_warmup_steps - num_decay_steps, num_cycles / 2
    scheduler = get_wsd_schedule(
        optimizer,
        num_warmup_steps=warmup,
        num_stable_steps=total - warmup - decay,
        num_decay_steps=decay,
        num_cycles=cycles / 2,
        min_lr_ratio=ratio,
    )
    for step, expected in enumerate(_walk(optimizer, scheduler, total + 3)):
        got = lr_at(
            step, lr=1e-4, schedule="warmup_stable_decay", warmup=warmup, total=total, cycles=cycles,
            min_lr_ratio=ratio, decay_steps=decay,
        )  # fmt: skip
        assert math.isclose(got, expected, rel_tol=1e-12, abs_tol=1e-300), (step, got, expected)


@pytest.mark.parametrize(
    ("t_max", "eta_min", "total"), [(50, 0.0, 50), (10, 1e-6, 47), (7, 0.0, 60), (1, 0.0, 5)]
)
def test_cosine_annealing_is_torchs_float_for_float(t_max: int, eta_min: float, total: int) -> None:
    optimizer = _sgd(2e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
    expected = _walk(optimizer, scheduler, total + 1)
    curve = Curve(2e-4, "cosine_annealing", 0, total, t_max=t_max, eta_min=eta_min)
    assert lr_curve(list(range(total + 1)), curve) == expected  # torch's recursion, bit for bit
    for step in (0, total // 3, total):
        assert lr_at(step, lr=2e-4, schedule="cosine_annealing", warmup=0, total=total, cycles=1, t_max=t_max,
                     eta_min=eta_min) == expected[step]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("polynomial", {"power": 2.0, "warmup_steps": 3}),
        ("cosine_with_min_lr", {"min_lr_ratio": 0.1, "warmup_steps": 4, "cycles": 1}),
        ("warmup_stable_decay", {"decay_steps": 8, "warmup_steps": 2, "min_lr_ratio": 0.05}),
        ("cosine_annealing", {"t_max": 9, "eta_min": 1e-7}),
        ("cosine_annealing", {}),
        ("cosine_annealing_warm_restarts", {"t_max": 4, "t_mult": 2, "eta_min": 1e-6}),
        ("cosine_with_restarts", {"cycles": 3}),
        ("polynomial", {"power": 0.8, "lr_end": 4e-7, "warmup_steps": 5}),  # SimpleTuner's defaults
        ("simpletuner_cosine", {"t_max": 7, "eta_min": 4e-7}),
        ("simpletuner_cosine", {}),
        ("simpletuner_sine", {"t_max": 9, "eta_min": 1e-6}),
    ],
)
def test_the_runtimes_scheduler_follows_the_plans_curve(name: str, extra: dict) -> None:
    from dbspec.compiler.schedule import compute_schedule
    from dbspec.runtime.optim import make_lr_scheduler

    args = {"warmup_steps": 0, "cycles": 1, **extra}
    plan = compute_schedule(
        batches_per_epoch=5, instance_samples=5, class_samples=0, batch_size=1, accumulation=1, processes=1,
        steps=30, epochs=0, lr=1e-4, lr_schedule=name, text_encoder_stop_step=0, checkpoint_every=7,
        validate_every=0, validate=False, seed=0, **args,
    )  # fmt: skip
    optimizer = _sgd(1e-4)
    lrs = _walk(optimizer, make_lr_scheduler(optimizer, plan), plan.total_steps + 1)
    curve = Curve(1e-4, name, plan.warmup_steps, plan.total_steps, plan.cycles, plan.power, plan.min_lr_ratio,
                  plan.decay_steps, plan.t_max, plan.eta_min, plan.t_mult, lr_end=plan.lr_end)  # fmt: skip
    got = lr_curve(list(range(plan.total_steps + 1)), curve)
    assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) for a, b in zip(got, lrs, strict=True))
    assert all(lrs[step] == pytest.approx(value, rel=1e-12) for step, value in plan.lr_points)
    assert len({round(x, 15) for x in lrs}) > 3  # the curve moves


@pytest.mark.parametrize(
    ("t_0", "t_mult", "eta_min", "total"), [(10, 1, 0.0, 45), (7, 2, 1e-6, 80), (50, 1, 0.0, 50)]
)
def test_cosine_annealing_warm_restarts_is_torchs_float_for_float(t_0, t_mult, eta_min, total) -> None:
    optimizer = _sgd(2e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        optimizer, T_0=t_0, T_mult=t_mult, eta_min=eta_min
    )
    expected = _walk(optimizer, scheduler, total + 1)
    curve = Curve(2e-4, "cosine_annealing_warm_restarts", 0, total, t_max=t_0, eta_min=eta_min, t_mult=t_mult)
    assert lr_curve(list(range(total + 1)), curve) == expected
    assert lr_curve([0, total // 2, total], curve) == [expected[0], expected[total // 2], expected[total]]


# --- SimpleTuner's schedules (its helpers/training/custom_schedule.py, as its trainer calls them) ---
@pytest.mark.parametrize(
    ("lr", "lr_end", "power", "warmup", "total"), [(1e-4, 4e-7, 0.8, 10, 100), (5e-5, 4e-7, 0.8, 0, 40)]
)
def test_polynomial_with_lr_end_matches_diffusers_function(lr, lr_end, power, warmup, total) -> None:
    """SimpleTuner calls get_polynomial_decay_schedule_with_warmup(lr_end=lr_end, power=lr_power) directly."""
    from diffusers.optimization import get_polynomial_decay_schedule_with_warmup

    optimizer = _sgd(lr)
    scheduler = get_polynomial_decay_schedule_with_warmup(
        optimizer, num_warmup_steps=warmup, num_training_steps=total, lr_end=lr_end, power=power
    )
    expected = _walk(optimizer, scheduler, total + 3)
    curve = Curve(lr, "polynomial", warmup, total, power=power, lr_end=lr_end)
    assert lr_curve(list(range(total + 3)), curve) == expected
    assert expected[-1] == pytest.approx(
        lr_end, rel=1e-12
    )  # past the end it holds lr_end, not diffusers' default 1e-7


@pytest.mark.parametrize(("t_0", "lr", "eta_min"), [(10, 1e-4, 4e-7), (37, 3e-5, 0.0)])
def test_simpletuner_cosine_is_a_wave_from_step_0(t_0, lr, eta_min) -> None:
    """No warm-up; T_cur = -step (steps_per_epoch -1), so the LR falls to eta_min at t_0 and climbs back to lr
    at 2 t_0; every value floored to 1e-9. Checked against the runtime's torch scheduler, step by step."""
    from dbspec.runtime.optim import SimpleTunerCosine

    optimizer = _sgd(lr)
    expected = _walk(optimizer, SimpleTunerCosine(optimizer, t_0=t_0, eta_min=eta_min), 3 * t_0 + 1)
    curve = Curve(lr, "simpletuner_cosine", 0, 10 * t_0, t_max=t_0, eta_min=eta_min)
    got = lr_curve(list(range(3 * t_0 + 1)), curve)
    assert got == expected
    assert got[0] == math.floor(lr * 1e9) / 1e9 and got[2 * t_0] == got[0]
    assert got[t_0] == math.floor(eta_min * 1e9) / 1e9 and got[3 * t_0] == got[t_0]


@pytest.mark.parametrize(("t_0", "lr", "eta_min"), [(10, 1e-4, 4e-7), (37, 3e-5, 0.0)])
def test_simpletuner_sine_starts_half_way(t_0, lr, eta_min) -> None:
    from dbspec.runtime.optim import SimpleTunerSine

    optimizer = _sgd(lr)
    expected = _walk(optimizer, SimpleTunerSine(optimizer, t_0=t_0, eta_min=eta_min), 4 * t_0 + 1)
    curve = Curve(lr, "simpletuner_sine", 0, 10 * t_0, t_max=t_0, eta_min=eta_min)
    got = lr_curve(list(range(4 * t_0 + 1)), curve)
    assert got == expected
    assert got[0] == math.floor((eta_min + (lr - eta_min) / 2) * 1e9) / 1e9
    assert abs(got[2 * t_0] - got[0]) <= 1.01e-9  # sin(2 pi) is -2e-16: the floor can drop one 1e-9 step

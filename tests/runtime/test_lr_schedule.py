"""lr_at against diffusers' get_scheduler driving a real torch optimizer, step by step."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers.optimization import get_scheduler

from dbspec.compiler.schedule import LR_SCHEDULES, lr_at

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
@pytest.mark.parametrize("name", LR_SCHEDULES)
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

"""dbspec.compiler.schedule: kohya's class balancing, the bucket table, step arithmetic and the LR curve."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbspec.compiler.schedule import (
    LR_SCHEDULES,
    balance_class_repeats,
    bucket_table,
    compute_schedule,
    interval_steps,
    lr_at,
)
from dbspec.plan.model import BucketPlan


class _RegInfo:  # kohya's ImageInfo, reduced to what balancing touches
    def __init__(self, num_repeats: int) -> None:
        self.num_repeats = num_repeats


def kohya_balance(own_repeats: list[int], num_train_images: int) -> list[int]:
    """DreamBoothDataset.__init__'s loop, transcribed as kohya writes it (mutating registered infos)."""
    reg_infos = [_RegInfo(r) for r in own_repeats]
    registered: list[_RegInfo] = []
    if sum(own_repeats) == 0:  # kohya: `if num_reg_images == 0: warning` and no loop
        return [0] * len(own_repeats)
    n = 0
    first_loop = True
    while n < num_train_images:
        for info in reg_infos:
            if first_loop:
                registered.append(info)
                n += info.num_repeats
            else:
                info.num_repeats += 1
                n += 1
            if n >= num_train_images:
                break
        first_loop = False
    return [info.num_repeats if any(info is r for r in registered) else 0 for info in reg_infos]


@pytest.mark.parametrize(("own", "target", "expected"), [
    ([1, 1, 1], 10, [4, 3, 3]),  # fewer reg than train: loops adding +1 per image in order
    ([1, 1, 1, 1, 1], 3, [1, 1, 1, 0, 0]),  # more reg than train: the rest are unused
    ([2, 2, 2], 5, [2, 2, 2]),  # reg repeats 2: the first loop may overshoot
    ([2, 2, 2], 3, [2, 2, 0]),
    ([2, 2], 7, [4, 3]),
    ([1, 3], 0, [0, 0]),  # target 0: nothing to balance
    ([1, 1, 1, 1], 4, [1, 1, 1, 1]),  # exact fit
    ([1, 1], 4, [2, 2]),  # exact fit after a second loop
    ([], 5, []),
])  # fmt: skip
def test_balance_class_repeats_cases(own: list[int], target: int, expected: list[int]) -> None:
    assert balance_class_repeats(own, target) == expected
    assert kohya_balance(own, target) == expected


@given(st.lists(st.integers(1, 5), max_size=12), st.integers(0, 200))
def test_balance_class_repeats_matches_kohya(own: list[int], target: int) -> None:
    result = balance_class_repeats(own, target)
    assert result == kohya_balance(own, target)
    if own:
        assert sum(result) >= target


def test_balance_class_repeats_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="repeats"):
        balance_class_repeats([1, 0], 3)
    with pytest.raises(ValueError, match="target"):
        balance_class_repeats([1], -1)


def test_bucket_table_partial_and_short_buckets() -> None:
    samples = {
        (512, 512): (5, 5),
        (640, 384): (1, 0),
        (384, 640): (0, 0),
        (448, 576): (2, 1),
        (576, 448): (4, 0),
    }
    assert bucket_table(samples, 4) == (
        BucketPlan(size=(448, 576), instance_samples=2, class_samples=1, batches_per_epoch=1, short=True),
        BucketPlan(size=(512, 512), instance_samples=5, class_samples=5, batches_per_epoch=3, short=False),
        BucketPlan(size=(576, 448), instance_samples=4, class_samples=0, batches_per_epoch=1, short=False),
        BucketPlan(size=(640, 384), instance_samples=1, class_samples=0, batches_per_epoch=1, short=True),
    )  # (384, 640) holds nothing and makes no batches


def test_bucket_table_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        bucket_table({(512, 512): (1, 0)}, 0)
    with pytest.raises(ValueError, match="sample counts"):
        bucket_table({(512, 512): (-1, 0)}, 1)


def schedule(**overrides: object):
    args = dict(
        batches_per_epoch=25,
        instance_samples=50,
        class_samples=0,
        batch_size=2,
        accumulation=1,
        processes=1,
        steps=0,
        epochs=4,
        lr=1e-4,
        lr_schedule="constant",
        warmup_steps=0,
        cycles=1,
        text_encoder_stop_step=0,
        checkpoint_every=0,
        validate_every=0,
        validate=True,
        seed=7,
    )
    args.update(overrides)
    return compute_schedule(**args)


def test_repeats_make_the_epoch() -> None:  # 5 images x repeats 10, batch 2 -> 25 batches
    plan = schedule()
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps, plan.epochs) == (25, 25, 100, 4)
    assert (plan.instance_samples_per_epoch, plan.class_samples_per_epoch, plan.seed) == (50, 0, 7)


def test_class_balance_doubles_the_epoch() -> None:  # kohya.md §5: 50 instance + 50 class samples
    plan = schedule(batches_per_epoch=50, class_samples=50, steps=800, epochs=0)
    assert (plan.steps_per_epoch, plan.total_steps, plan.epochs) == (50, 800, 16)
    assert plan.class_samples_per_epoch == 50


def test_accumulation_counts_the_trailing_partial_step() -> None:
    plan = schedule(accumulation=4, epochs=3)
    assert (plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (25, 7, 21)
    assert schedule(accumulation=5).steps_per_epoch == 5  # exact division: no extra step


def test_steps_round_epochs_up() -> None:
    plan = schedule(accumulation=4, steps=10, epochs=0)
    assert (plan.total_steps, plan.epochs) == (10, 2)
    assert schedule(steps=25, epochs=0).epochs == 1


def test_processes_split_the_batches() -> None:
    plan = schedule(processes=2, accumulation=2, epochs=2)
    assert (plan.processes, plan.batches_per_epoch, plan.steps_per_epoch, plan.total_steps) == (2, 13, 7, 14)
    assert schedule(processes=25).steps_per_epoch == 1


def test_checkpoint_and_validation_steps() -> None:
    plan = schedule(checkpoint_every=30, validate_every=25)
    assert tuple(plan.checkpoint_steps) == (30, 60, 90, 100)
    assert tuple(plan.validation_steps) == (25, 50, 75, 100)
    assert tuple(schedule(checkpoint_every=30, validate_every=25, validate=False).validation_steps) == ()
    assert tuple(schedule().checkpoint_steps) == (100,)


def test_interval_steps() -> None:
    assert tuple(interval_steps(0, 100)) == (100,)
    assert tuple(interval_steps(100, 100)) == (100,)
    assert tuple(interval_steps(150, 100)) == (100,)
    assert tuple(interval_steps(50, 100)) == (50, 100)
    assert tuple(interval_steps(1, 3)) == (1, 2, 3)
    with pytest.raises(ValueError):
        interval_steps(-1, 10)
    with pytest.raises(ValueError):
        interval_steps(1, 0)


def test_lr_points() -> None:
    plan = schedule(lr_schedule="linear", warmup_steps=10, checkpoint_every=50)
    assert [step for step, _ in plan.lr_points] == [0, 10, 50, 100]
    assert [lr for _, lr in plan.lr_points] == pytest.approx([0.0, 1e-4, 1e-4 * 50 / 90, 0.0], rel=1e-12)
    assert schedule(checkpoint_every=50).lr_points == ((0, 1e-4), (50, 1e-4), (100, 1e-4))
    constant = schedule(warmup_steps=10)  # "constant" has no warm-up, so no warm-up point
    assert [step for step, _ in constant.lr_points] == [0, 100]


@pytest.mark.parametrize("warmup", [100, 150])
def test_a_warmup_as_long_as_the_run_climbs_the_whole_run(warmup) -> None:
    """kohya and diffusers run it (DBS238 warns): step / warmup for every step; the last step is a point."""
    plan = schedule(lr_schedule="cosine", warmup_steps=warmup, checkpoint_every=50)
    assert [step for step, _ in plan.lr_points] == [0, 50, 99, 100]
    expected = [1e-4 * step / warmup for step in (0, 50, 99)]
    end = 1e-4 * (100 / warmup if warmup > 100 else 1.0)  # diffusers' cosine at progress 0 after the warm-up
    assert [lr for _, lr in plan.lr_points] == pytest.approx([*expected, end], rel=1e-12)


@pytest.mark.parametrize(("overrides", "message"), [
    ({"batches_per_epoch": 0}, "no batches"),
    ({"instance_samples": 0}, "no batches"),
    ({"batches_per_epoch": 51}, "cannot hold"),
    ({"batches_per_epoch": 24}, "cannot hold"),
    ({"batch_size": 0}, "batch_size"),
    ({"accumulation": 0}, "accumulation"),
    ({"processes": 0}, "processes"),
    ({"epochs": 0}, "run length"),
    ({"lr_schedule": "piecewise_constant"}, "unknown lr schedule"),
    ({"lr_schedule": "polynomial", "warmup_steps": 100}, "after the warm-up"),  # diffusers divides by 0
    ({"lr_schedule": "polynomial", "lr": 1e-7}, "polynomial"),
    ({"lr": -1.0}, "learning rate"),  # 0 holds the denoiser (DBS229)
    ({"lr": math.nan}, "learning rate"),
    ({"lr_schedule": "cosine_with_restarts", "cycles": 0}, "cycles"),
    ({"checkpoint_every": -1}, "checkpoint"),
])  # fmt: skip
def test_compute_schedule_rejects_impossible_input(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        schedule(**overrides)


def lr(
    step: int, schedule: str, *, warmup: int = 0, total: int = 100, cycles: int = 1, base: float = 1e-4
) -> float:
    return lr_at(step, lr=base, schedule=schedule, warmup=warmup, total=total, cycles=cycles)


def test_lr_constant_schedules() -> None:
    assert lr(5, "constant", warmup=10) == 1e-4  # diffusers' constant ignores warm-up
    assert lr(0, "constant_with_warmup", warmup=10) == 0.0
    assert lr(5, "constant_with_warmup", warmup=10) == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(10, "constant_with_warmup", warmup=10) == 1e-4


def test_lr_linear() -> None:
    assert lr(5, "linear", warmup=10, total=110) == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(10, "linear", warmup=10, total=110) == 1e-4
    assert lr(60, "linear", warmup=10, total=110) == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(110, "linear", warmup=10, total=110) == 0.0
    assert lr(200, "linear", warmup=10, total=110) == 0.0


def test_lr_cosine_is_a_half_cosine_whatever_the_cycles() -> None:
    assert lr(0, "cosine") == 1e-4
    assert lr(25, "cosine") == pytest.approx(1e-4 * (0.5 + math.sqrt(2) / 4), rel=1e-12)
    assert lr(50, "cosine") == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(100, "cosine") == 0.0
    assert lr(25, "cosine", cycles=3) == lr(25, "cosine")  # get_scheduler never passes num_cycles to cosine


def test_lr_cosine_with_restarts() -> None:
    assert lr(25, "cosine_with_restarts", cycles=2) == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(50, "cosine_with_restarts", cycles=2) == 1e-4  # the restart
    assert lr(75, "cosine_with_restarts", cycles=2) == pytest.approx(0.5e-4, rel=1e-12)
    assert lr(100, "cosine_with_restarts", cycles=2) == 0.0
    assert lr(5, "cosine_with_restarts", warmup=10, cycles=2) == pytest.approx(0.5e-4, rel=1e-12)


def test_lr_polynomial() -> None:
    end = 1e-7
    assert lr(0, "polynomial", base=1e-3) == pytest.approx(1e-3, rel=1e-12)
    assert lr(50, "polynomial", base=1e-3) == pytest.approx((1e-3 - end) * 0.5 + end, rel=1e-12)
    assert lr(100, "polynomial", base=1e-3) == pytest.approx(end, rel=1e-12)
    assert lr(150, "polynomial", base=1e-3) == pytest.approx(end, rel=1e-12)
    with pytest.raises(ValueError, match="after the warm-up"):
        lr(10, "polynomial", warmup=10, total=10)


def test_lr_at_rejects_unknown_schedule_and_negative_step() -> None:
    with pytest.raises(ValueError, match="unknown lr schedule"):
        lr(0, "stepwise")
    with pytest.raises(ValueError, match="needs its torch arguments"):
        lr(0, "step")  # torch's StepLR: the plan passes its arguments
    with pytest.raises(ValueError, match="step"):
        lr(-1, "linear")
    assert len(LR_SCHEDULES) == 20  # CyclicLR and PolynomialLR added since


def test_lr_at_passes_the_polynomial_end_lr():
    # diffusers' polynomial decay: (lr - lr_end) * (1 - step / total) ** power + lr_end
    got = lr_at(50, lr=1e-3, schedule="polynomial", warmup=0, total=100, cycles=1, lr_end=4e-4)
    assert math.isclose(got, (1e-3 - 4e-4) * 0.5 + 4e-4, rel_tol=1e-12)

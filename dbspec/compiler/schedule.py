"""Integer schedule arithmetic: class balancing, the bucket table, step counts and the LR curve.

Pure and torch-free. Two behaviours are transcribed exactly, so a plan says what a run will do:
- kohya-ss sd-scripts' reg-image balancing (`library/train_util.py: DreamBoothDataset.__init__`);
- diffusers' `optimization.get_scheduler` LR lambdas, multiplied by the base LR the way torch's
  `LambdaLR.get_lr` does (`base_lr * lambda(step)`), so `lr_at` equals the optimizer's LR bit for bit.

Impossible input raises ValueError; the compiler turns it into a diagnostic.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from dbspec.plan.model import BucketPlan, SchedulePlan, Size, StepRange

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")
POLYNOMIAL_LR_END = (
    1e-7  # diffusers get_polynomial_decay_schedule_with_warmup default (get_scheduler keeps it)
)
POLYNOMIAL_POWER = 1.0  # get_scheduler's default `power`
COSINE_CYCLES = 0.5  # get_scheduler never passes num_cycles to "cosine": it is always a half cosine
LR_POINTS_AT_CHECKPOINTS = (
    16  # the plan shows the LR at this many checkpoints at most: its size never grows with steps
)


def balance_class_repeats(own_repeats: list[int], target: int) -> list[int]:
    """Per-image class repeats per epoch after kohya's balancing towards `target` instance samples.

    Class images, in order, are registered with their own repeats until the running count reaches
    `target`; if all are registered and it is still short, each image in turn gets +1 repeat until it
    does. Images never reached get 0 (kohya warns that some reg images are unused).
    """
    if target < 0:
        raise ValueError(f"class balancing target must be >= 0, got {target}")
    for repeats in own_repeats:
        if repeats < 1:
            raise ValueError(f"class image repeats must be >= 1, got {repeats}")
    effective = [0] * len(own_repeats)
    if not own_repeats:  # kohya skips balancing without reg images (its loop would never end)
        return effective
    count = 0
    first_loop = True
    while count < target:
        for index, repeats in enumerate(own_repeats):
            if first_loop:
                effective[index] = repeats
                count += repeats
            else:
                effective[index] += 1
                count += 1
            if count >= target:
                break
        first_loop = False
    return effective


def bucket_table(samples: dict[Size, tuple[int, int]], batch_size: int) -> tuple[BucketPlan, ...]:
    """One row per bucket holding samples, sorted by size: batches never mix buckets, the last may be partial.

    `samples` maps bucket size -> (instance samples, class samples) per epoch. Buckets with no samples
    (e.g. holding only unused class images) are left out: they make no batches.
    """
    _require_at_least("batch_size", batch_size, 1)
    rows = []
    for size in sorted(samples):
        instance_samples, class_samples = samples[size]
        if instance_samples < 0 or class_samples < 0:
            raise ValueError(
                f"bucket {size}: sample counts must be >= 0, got {instance_samples}, {class_samples}"
            )
        total = instance_samples + class_samples
        if total == 0:
            continue
        rows.append(
            BucketPlan(
                size=size,
                instance_samples=instance_samples,
                class_samples=class_samples,
                batches_per_epoch=-(-total // batch_size),
                short=total < batch_size,
            )
        )
    return tuple(rows)


def _warmup_factor(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _linear(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = float(total - step) / float(max(1, total - warmup))
    return max(0.0, progress)  # diffusers' f_min + (f_max - f_min) * max(0, progress) with f_min=0, f_max=1


def _cosine(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(COSINE_CYCLES) * 2.0 * progress)))


def _cosine_with_restarts(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(cycles) * progress) % 1.0))))


def _polynomial(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    if not lr > POLYNOMIAL_LR_END:
        raise ValueError(f"the polynomial schedule decays to {POLYNOMIAL_LR_END}: lr ({lr}) must be larger")
    if step < warmup:
        return _warmup_factor(step, warmup)
    if step > total:
        return POLYNOMIAL_LR_END / lr
    decay_steps = total - warmup
    if decay_steps == 0:  # diffusers would raise ZeroDivisionError here
        raise ValueError(f"the polynomial schedule needs steps after the warm-up ({warmup} of {total} steps)")
    pct_remaining = 1 - (step - warmup) / decay_steps
    decay = (lr - POLYNOMIAL_LR_END) * pct_remaining**POLYNOMIAL_POWER + POLYNOMIAL_LR_END
    return decay / lr


def _constant(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    return 1


def _constant_with_warmup(step: int, warmup: int, total: int, cycles: int, lr: float) -> float:
    if step < warmup:
        return float(step) / float(max(1.0, warmup))
    return 1.0


_FACTORS: dict[str, Callable[[int, int, int, int, float], float]] = {
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
}


def lr_at(step: int, *, lr: float, schedule: str, warmup: int, total: int, cycles: int) -> float:
    """The LR after `step` scheduler steps, i.e. the LR used by the optimizer step with index `step`.

    Exactly diffusers' get_scheduler(schedule, ..., num_warmup_steps=warmup, num_training_steps=total,
    num_cycles=cycles): `cycles` only affects cosine_with_restarts, and "constant" ignores `warmup`.
    """
    if schedule not in _FACTORS:
        raise ValueError(f"unknown lr schedule {schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    return lr * _FACTORS[schedule](step, warmup, total, cycles, lr)


def interval_steps(every: int, total: int) -> StepRange:
    """Steps N, 2N, ... below `total`, then `total` itself; every = 0 gives only the end."""
    _require_at_least("total steps", total, 1)
    _require_at_least("interval", every, 0)
    return StepRange(every=every, end=total)


def compute_schedule(
    *,
    batches_per_epoch: int,
    instance_samples: int,
    class_samples: int,
    batch_size: int,
    accumulation: int,
    processes: int,
    steps: int,
    largest_batch_size: int = 0,
    epochs: int,
    lr: float,
    lr_schedule: str,
    warmup_steps: int,
    cycles: int,
    text_encoder_stop_step: int,
    checkpoint_every: int,
    validate_every: int,
    validate: bool,
    seed: int,
) -> SchedulePlan:
    """Optimizer-step counts, checkpoint/validation steps and LR points for a run.

    `batches_per_epoch` is the total over buckets and processes; each process takes every
    `processes`-th batch, and an epoch's trailing partial accumulation still makes one optimizer step.
    With dataset groups, `batches_per_epoch` sums every group's batches (kohya concatenates the groups'
    datasets, each item one batch of its group's size), `batch_size` is the default group's and
    `largest_batch_size` the largest of any group (0 = `batch_size`).
    """
    _check_counts(batches_per_epoch, instance_samples + class_samples, max(batch_size, largest_batch_size))
    for name, value, least in (
        ("instance samples", instance_samples, 0),
        ("class samples", class_samples, 0),
        ("accumulation", accumulation, 1),
        ("processes", processes, 1),
        ("steps", steps, 0),
        ("epochs", epochs, 0),
        ("warmup_steps", warmup_steps, 0),
        ("text_encoder_stop_step", text_encoder_stop_step, 0),
        ("checkpoint interval", checkpoint_every, 0),
        ("validation interval", validate_every, 0),
    ):
        _require_at_least(name, value, least)
    _check_lr(lr, lr_schedule, cycles)
    batches_per_process = -(-batches_per_epoch // processes)
    steps_per_epoch = -(-batches_per_process // accumulation)
    if steps > 0:
        total_steps, epochs = steps, -(-steps // steps_per_epoch)
    elif epochs > 0:
        total_steps = epochs * steps_per_epoch
    else:
        raise ValueError("the run length is not set: give steps or epochs")
    if warmup_steps and lr_schedule != "constant" and warmup_steps >= total_steps:
        raise ValueError(f"warmup_steps ({warmup_steps}) must be below the run's {total_steps} steps")
    checkpoint_steps = interval_steps(checkpoint_every, total_steps)
    warmup_end = (warmup_steps,) if warmup_steps and lr_schedule != "constant" else ()
    lr_points = tuple(
        (
            step,
            lr_at(step, lr=lr, schedule=lr_schedule, warmup=warmup_steps, total=total_steps, cycles=cycles),
        )
        for step in sorted({0, *warmup_end, *checkpoint_steps.spread(LR_POINTS_AT_CHECKPOINTS)})
    )
    return SchedulePlan(
        total_steps=total_steps,
        epochs=epochs,
        batch_size=batch_size,
        accumulation=accumulation,
        processes=processes,
        batches_per_epoch=batches_per_process,
        steps_per_epoch=steps_per_epoch,
        instance_samples_per_epoch=instance_samples,
        class_samples_per_epoch=class_samples,
        lr_schedule=lr_schedule,
        warmup_steps=warmup_steps,
        cycles=cycles,
        text_encoder_stop_step=text_encoder_stop_step,
        checkpoint_steps=checkpoint_steps,
        validation_steps=interval_steps(validate_every, total_steps)
        if validate
        else StepRange(every=0, end=0),
        lr_points=lr_points,
        seed=seed,
    )


def _check_counts(batches_per_epoch: int, samples: int, batch_size: int) -> None:
    _require_at_least("batch_size", batch_size, 1)
    if batches_per_epoch < 1 or samples < 1:
        raise ValueError(
            f"an epoch has no batches ({samples} samples, {batches_per_epoch} batches): "
            "the datasets hold no usable images"
        )
    # per bucket ceil(n_b / B): the sum lies between ceil(sum n_b / B) and sum n_b
    if not -(-samples // batch_size) <= batches_per_epoch <= samples:
        raise ValueError(
            f"{batches_per_epoch} batches per epoch cannot hold {samples} samples in batches of {batch_size}"
        )


def _check_lr(lr: float, lr_schedule: str, cycles: int) -> None:
    if lr_schedule not in _FACTORS:
        raise ValueError(f"unknown lr schedule {lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"the learning rate must be a positive number, got {lr}")
    if lr_schedule == "cosine_with_restarts":
        _require_at_least("cycles", cycles, 1)


def _require_at_least(name: str, value: int, least: int) -> None:
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")

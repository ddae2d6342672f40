"""Integer schedule arithmetic: class balancing, the bucket table, step counts and the LR curve.

Pure and torch-free. Two behaviours are transcribed exactly, so a plan says what a run will do:
- kohya-ss sd-scripts' reg-image balancing (`library/train_util.py: DreamBoothDataset.__init__`);
- diffusers' `optimization.get_scheduler` LR lambdas, multiplied by the base LR the way torch's
  `LambdaLR.get_lr` does (`base_lr * lambda(step)`), so `lr_at` equals the optimizer's LR bit for bit.

Impossible input raises ValueError; the compiler turns it into a diagnostic.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable

from dbspec.compiler.torch_schedules import (
    MOMENTUM_SCHEDULES,
    NEW_TORCH_SCHEDULES,
    cyclic,
    momentum_at,
    one_cycle,
    recursive_curve,
)
from dbspec.plan.model import BucketPlan, SchedulePlan, Size, StepRange, TorchSchedulePlan
from dbspec.spec.model import LrSchedule

LR_SCHEDULES: tuple[str, ...] = typing.get_args(LrSchedule)  # the spec's names, in its order
DIFFUSERS_SCHEDULES = LR_SCHEDULES[:6]  # diffusers' get_scheduler names
KOHYA_SCHEDULES = LR_SCHEDULES[:8]  # kohya's --lr_scheduler names: diffusers' and two of transformers'
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


@dataclasses.dataclass(frozen=True)
class Curve:
    """Everything an LR curve depends on (the plan's schedule fields)."""

    lr: float
    schedule: str
    warmup: int
    total: int
    cycles: int = 1
    power: float = POLYNOMIAL_POWER
    min_lr_ratio: float = 0.0
    decay_steps: int = 0
    t_max: int = 0  # cosine_annealing's T_max, cosine_annealing_warm_restarts' T_0; 0 = total
    eta_min: float = 0.0
    t_mult: int = 1  # cosine_annealing_warm_restarts
    warmup_init: bool = False  # adafactor (relative steps)
    torch: TorchSchedulePlan | None = None  # one_cycle ... constant_lr, cyclic, polynomial_lr
    cosine_cycles: float = COSINE_CYCLES  # cosine
    lr_end: float = POLYNOMIAL_LR_END  # polynomial
    warmup_type: str = "linear"  # warmup_stable_decay
    decay_type: str = "cosine"


def _warmup_factor(step: int, warmup: int) -> float:
    return float(step) / float(max(1, warmup))


def _linear(step: int, c: Curve) -> float:
    if step < c.warmup:
        return _warmup_factor(step, c.warmup)
    progress = float(c.total - step) / float(max(1, c.total - c.warmup))
    return max(0.0, progress)  # diffusers' f_min + (f_max - f_min) * max(0, progress) with f_min=0, f_max=1


def _cosine(step: int, c: Curve) -> float:
    return _cosine_min(step, c.warmup, c.total, c.cosine_cycles, 0.0)


def _cosine_min(step: int, warmup: int, total: int, waves: float, floor: float) -> float:
    """transformers' cosine lambda with min_lr_rate (0 gives diffusers' cosine, the same operations)."""
    if step < warmup:
        return _warmup_factor(step, warmup)
    progress = float(step - warmup) / float(max(1, total - warmup))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(waves) * 2.0 * progress))
    if floor:
        factor = factor * (1 - floor) + floor
    return max(0.0, factor)


def _cosine_with_min_lr(step: int, c: Curve) -> float:
    # kohya passes num_cycles / 2: its lr_scheduler_num_cycles counts half-waves
    return _cosine_min(step, c.warmup, c.total, c.cycles / 2, c.min_lr_ratio)


def _cosine_with_restarts(step: int, c: Curve) -> float:
    if step < c.warmup:
        return _warmup_factor(step, c.warmup)
    progress = float(step - c.warmup) / float(max(1, c.total - c.warmup))
    if progress >= 1.0:
        return 0.0
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((float(c.cycles) * progress) % 1.0))))


def _polynomial(step: int, c: Curve) -> float:
    lr, lr_end = c.lr, c.lr_end
    if not lr > lr_end:
        raise ValueError(f"the polynomial schedule decays to {lr_end}: lr ({lr}) must be larger")
    if step < c.warmup:
        return _warmup_factor(step, c.warmup)
    if step > c.total:
        return lr_end / lr
    decay_steps = c.total - c.warmup
    if decay_steps == 0:  # diffusers would raise ZeroDivisionError here
        raise ValueError(
            f"the polynomial schedule needs steps after the warm-up ({c.warmup} of {c.total} steps)"
        )
    pct_remaining = 1 - (step - c.warmup) / decay_steps
    decay = (lr - lr_end) * pct_remaining**c.power + lr_end
    return decay / lr


def wsd_stable_steps(c: Curve) -> int:
    """kohya's num_stable_steps: what the warm-up and the decay leave of the run."""
    return c.total - c.warmup - c.decay_steps


def _warmup_stable_decay(step: int, c: Curve) -> float:
    """transformers' get_wsd_schedule with linear warm-up and cosine decay (get_scheduler's defaults)."""
    floor, stable = c.min_lr_ratio, wsd_stable_steps(c)
    # The plan rule DBS256 refuses a decay longer than the run leaves; transformers' formula is kept as is.
    if step < c.warmup:
        progress = float(step) / float(max(1, c.warmup))
        if c.warmup_type == "cosine":
            factor = 0.5 * (1.0 - math.cos(math.pi * progress))
        elif c.warmup_type == "1-sqrt":
            factor = 1.0 - math.sqrt(1.0 - progress)
        else:
            factor = progress
        return max(0.0, factor * (1.0 - floor) + floor)
    if step < c.warmup + stable:
        return 1.0
    if step < c.warmup + stable + c.decay_steps:
        progress = float(step - c.warmup - stable) / float(max(1, c.decay_steps))
        if c.decay_type == "linear":
            factor = 1.0 - progress
        elif c.decay_type == "1-sqrt":
            factor = 1.0 - math.sqrt(progress)
        else:
            factor = 0.5 * (1.0 + math.cos(math.pi * float(c.cycles / 2) * 2.0 * progress))
        return max(0.0, factor * (1.0 - floor) + floor)
    return floor


def _constant(step: int, c: Curve) -> float:
    return 1


def _constant_with_warmup(step: int, c: Curve) -> float:
    if step < c.warmup:
        return float(step) / float(max(1.0, c.warmup))
    return 1.0


_FACTORS: dict[str, Callable[[int, Curve], float]] = {
    "constant": _constant,
    "constant_with_warmup": _constant_with_warmup,
    "linear": _linear,
    "cosine": _cosine,
    "cosine_with_restarts": _cosine_with_restarts,
    "polynomial": _polynomial,
    "cosine_with_min_lr": _cosine_with_min_lr,
    "warmup_stable_decay": _warmup_stable_decay,
}
WARMUP_SCHEDULES = tuple(name for name in _FACTORS if name != "constant")  # they ramp up over warmup_steps
# torch schedulers (kohya's lr_scheduler_type), evaluated torch-free by the same float operations torch uses.
TORCH_SCHEDULES = ("cosine_annealing", "cosine_annealing_warm_restarts", *NEW_TORCH_SCHEDULES)
PERIOD_SCHEDULES = ("cosine_annealing", "cosine_annealing_warm_restarts", "one_cycle")  # use t_max
SIMPLETUNER_LR_QUANTUM = 1e9  # SimpleTuner's Cosine floors each LR to a multiple of 1e-9


def _simpletuner_cosine(step: int, c: Curve) -> float:
    """SimpleTuner's `Cosine` (helpers/training/custom_schedule.py), as its trainer builds it.

    Its steps_per_epoch stays -1, so its T_cur is -step and never reaches T_0: the closed-form cosine runs on
    past T_0 and the LR rises again (a wave of period 2 T_0). It writes floor(lr * 1e9) / 1e9.
    """
    t_i = c.t_max or c.total
    t_cur = (step // -1) + (step % -1) / -1  # its T_cur with steps_per_epoch = -1, the same float operations
    lr = c.eta_min + (c.lr - c.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    return math.floor(lr * SIMPLETUNER_LR_QUANTUM) / SIMPLETUNER_LR_QUANTUM


def _cosine_annealing(steps: list[int], c: Curve) -> list[float]:
    """torch.optim.lr_scheduler.CosineAnnealingLR's LR after each of `steps` (sorted) scheduler steps.

    torch updates the LR recursively from the previous one (its get_lr, not the closed form), so the same
    recursion is run here, once up to the largest step, to get torch's floats bit for bit.
    """
    t_max, eta_min, lr = c.t_max or c.total, c.eta_min, c.lr
    base, out, want = lr, [], iter(steps)
    target = next(want, None)
    epoch = 0
    while target is not None:
        while target == epoch:
            out.append(lr)
            target = next(want, None)
        if target is None:
            break
        epoch += 1
        if (epoch - 1 - t_max) % (2 * t_max) == 0:
            lr = lr + (base - eta_min) * (1 - math.cos(math.pi / t_max)) / 2
        else:
            lr = (1 + math.cos(math.pi * epoch / t_max)) / (1 + math.cos(math.pi * (epoch - 1) / t_max)) * (
                lr - eta_min
            ) + eta_min
    return out


def _warm_restarts(steps: list[int], c: Curve) -> list[float]:
    """torch.optim.lr_scheduler.CosineAnnealingWarmRestarts' LR after each of `steps` (sorted) scheduler
    steps:
    its T_cur / T_i bookkeeping step by step, then its get_lr formula."""
    t_i, t_cur, out, last = c.t_max or c.total, 0, [], 0
    for target in steps:
        for _ in range(target - last):
            t_cur += 1
            if t_cur >= t_i:
                t_cur, t_i = t_cur % t_i, t_i * c.t_mult
        last = target
        out.append(c.eta_min + (c.lr - c.eta_min) * (1 + math.cos(math.pi * t_cur / t_i)) / 2)
    return out


ADAFACTOR_SCHEDULE = "adafactor"  # Adafactor with relative steps computes the LR itself


def adafactor_relative_lr(step: int, warmup_init: bool) -> float:
    """transformers' Adafactor._get_lr with relative_step, before parameter scaling, for the optimizer step
    with index `step` (Adafactor's own count is then step + 1): min(1e-2, 1/sqrt(t)), or with warmup_init
    min(1e-6 t, 1/sqrt(t))."""
    t = step + 1
    min_step = 1e-6 * t if warmup_init else 1e-2
    return min(min_step, 1.0 / math.sqrt(t))


def _simpletuner_sine(step: int, c: Curve) -> float:
    """SimpleTuner's `Sine`: eta_min + (lr - eta_min) x 0.5 (1 + sin(pi step / T_0)) from step 0, floored to
    1e-9 (it starts half-way between eta_min and lr)."""
    t_0 = c.t_max or c.total
    lr = c.eta_min + (c.lr - c.eta_min) * (0.5 * (1 + math.sin(math.pi * step / t_0)))
    return math.floor(lr * SIMPLETUNER_LR_QUANTUM) / SIMPLETUNER_LR_QUANTUM


SIMPLETUNER_SCHEDULES = {"simpletuner_cosine": _simpletuner_cosine, "simpletuner_sine": _simpletuner_sine}


def _checked(steps: list[int]) -> list[int]:
    if any(step < 0 for step in steps):
        raise ValueError(f"steps must be >= 0, got {min(steps)}")
    return list(steps)


def lr_curve(steps: list[int], curve: Curve) -> list[float]:
    """The LR at each of `steps` (sorted, >= 0); see `lr_at`."""
    if curve.schedule == ADAFACTOR_SCHEDULE:
        return [adafactor_relative_lr(step, curve.warmup_init) for step in steps]
    if curve.schedule in SIMPLETUNER_SCHEDULES:
        wave = SIMPLETUNER_SCHEDULES[curve.schedule]
        return [wave(step, curve) for step in _checked(steps)]
    if curve.schedule not in _FACTORS and curve.schedule not in TORCH_SCHEDULES:
        raise ValueError(f"unknown lr schedule {curve.schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if any(step < 0 for step in steps):
        raise ValueError(f"steps must be >= 0, got {min(steps)}")
    if list(steps) != sorted(steps):
        raise ValueError("steps must be sorted")
    if curve.schedule == "cosine_annealing":
        return _cosine_annealing(list(steps), curve)
    if curve.schedule == "cosine_annealing_warm_restarts":
        return _warm_restarts(list(steps), curve)
    if curve.schedule in NEW_TORCH_SCHEDULES:
        if curve.torch is None:
            raise ValueError(f"the {curve.schedule} schedule needs its torch arguments")
        if curve.schedule == "one_cycle":
            return [one_cycle(step, curve.lr, curve.t_max or curve.total, curve.torch)[0] for step in steps]
        if curve.schedule == "cyclic":
            return [cyclic(step, curve.lr, curve.torch)[0] for step in steps]
        return recursive_curve(curve.schedule, list(steps), curve.lr, curve.torch, curve.power)
    factor = _FACTORS[curve.schedule]
    return [curve.lr * factor(step, curve) for step in steps]


def lr_at(
    step: int,
    *,
    lr: float,
    schedule: str,
    warmup: int,
    total: int,
    cycles: int,
    power: float = POLYNOMIAL_POWER,
    min_lr_ratio: float = 0.0,
    decay_steps: int = 0,
    t_max: int = 0,
    eta_min: float = 0.0,
    t_mult: int = 1,
    lr_end: float = POLYNOMIAL_LR_END,
) -> float:
    """The LR after `step` scheduler steps, i.e. the LR used by the optimizer step with index `step`.

    Exactly diffusers' get_scheduler(schedule, ..., num_warmup_steps=warmup, num_training_steps=total,
    num_cycles=cycles, power=power) for its six schedules ("constant" ignores `warmup`); kohya's calls of
    transformers' cosine_with_min_lr and warmup_stable_decay; torch's CosineAnnealingLR(T_max=t_max or total).
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    curve = Curve(
        lr, schedule, warmup, total, cycles, power, min_lr_ratio, decay_steps, t_max, eta_min, t_mult,
        lr_end=lr_end,
    )  # fmt: skip
    return lr_curve([step], curve)[0]


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
    power: float = POLYNOMIAL_POWER,
    min_lr_ratio: float = 0.0,
    decay_steps: int = 0,
    t_max: int = 0,
    eta_min: float = 0.0,
    t_mult: int = 1,
    warmup_init: bool = False,
    torch: TorchSchedulePlan | None = None,
    cosine_cycles: float = COSINE_CYCLES,
    lr_end: float = POLYNOMIAL_LR_END,
    warmup_type: str = "linear",
    decay_type: str = "cosine",
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
    checkpoint_steps = interval_steps(checkpoint_every, total_steps)
    # The warm-up's end; a warm-up at least as long as the run (kohya allows it, DBS238 warns) never ends:
    # its last optimizer step, the highest LR the run reaches, is shown instead.
    warmup_end = (min(warmup_steps, total_steps - 1),) if warmup_steps and lr_schedule != "constant" else ()
    points = sorted({0, *warmup_end, *checkpoint_steps.spread(LR_POINTS_AT_CHECKPOINTS)})
    curve = Curve(
        lr,
        lr_schedule,
        warmup_steps,
        total_steps,
        cycles,
        power,
        min_lr_ratio,
        decay_steps,
        t_max,
        eta_min,
        t_mult,
        warmup_init,
        torch if lr_schedule in NEW_TORCH_SCHEDULES else None,
        cosine_cycles,
        lr_end,
        warmup_type,
        decay_type,
    )
    lr_points = tuple(zip(points, lr_curve(points, curve), strict=True))
    if lr_schedule in MOMENTUM_SCHEDULES and torch is not None and torch.cycle_momentum:
        period = t_max or total_steps
        momentum_points = tuple((step, momentum_at(lr_schedule, step, lr, period, torch)) for step in points)
    else:
        momentum_points = ()
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
        power=power,
        min_lr_ratio=min_lr_ratio,
        decay_steps=decay_steps,
        t_max=(t_max or total_steps) if lr_schedule in (*PERIOD_SCHEDULES, *SIMPLETUNER_SCHEDULES) else t_max,
        eta_min=eta_min,
        t_mult=t_mult,
        text_encoder_stop_step=text_encoder_stop_step,
        checkpoint_steps=checkpoint_steps,
        validation_steps=interval_steps(validate_every, total_steps)
        if validate
        else StepRange(every=0, end=0),
        lr_points=lr_points,
        seed=seed,
        torch=curve.torch,
        momentum_points=momentum_points,
        cosine_cycles=cosine_cycles,
        lr_end=lr_end,
        warmup_type=warmup_type,
        decay_type=decay_type,
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
    if lr_schedule not in LR_SCHEDULES and lr_schedule != ADAFACTOR_SCHEDULE:
        raise ValueError(f"unknown lr schedule {lr_schedule!r}; expected one of {', '.join(LR_SCHEDULES)}")
    if not (lr >= 0 and math.isfinite(lr)):  # 0: the denoiser held at rate 0 (DBS229)
        raise ValueError(f"the learning rate must be a number >= 0, got {lr}")
    if lr_schedule in ("cosine_with_restarts", "cosine_with_min_lr", "warmup_stable_decay"):
        _require_at_least("cycles", cycles, 1)


def _require_at_least(name: str, value: int, least: int) -> None:
    if value < least:
        raise ValueError(f"{name} must be >= {least}, got {value}")

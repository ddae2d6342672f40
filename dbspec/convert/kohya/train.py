"""kohya's run length, LR schedule, text-encoder training, learning rates and optimizer -> [schedule],
[train] and [optimizer]."""

from __future__ import annotations

import ast

import attrs

from dbspec.compiler.schedule import KOHYA_SCHEDULES
from dbspec.convert.common.core import Conversion, Legacy, map_schedule_name
from dbspec.convert.kohya.idle_text import IDLE_NOTE, clipped_idle_text, idle_kohya
from dbspec.convert.kohya.block_lr import fused_optimizer_count
from dbspec.convert.kohya.held_unet import held_matters, hold_unet, holds_unet, unheld_difference
from dbspec.convert.kohya.rate_zero import (
    adafactor_relative_step,
    relative_step_first_rate,
    lora_fa_holds,
    lora_fa_kept,
    lora_fa_not_held,
    lora_fa_order,
    lora_fa_trains_nothing,
    kept_group_moves,
    train_db_text_lifted,
    train_db_unet_lifted,
)
from dbspec.convert.kohya.group_lists import group_table, split_needed, write_block_groups
from dbspec.convert.common.optimizers import (
    adamw_variant,
    ademamix_variant,
    bnb_ignored,
    kohya_constructor_problems,
    kohya_optimizer,
    lion_decoupled_decay,
    lion_variant,
    optimizer_settings,
    parse_kohya_args,
    print_only,
    unread_arguments,
)
from dbspec.spec.model import DADAPT_KINDS, Optimizer

Args = dict[str, Legacy]
_OPTIMIZER_DEFAULTS = {
    f.name: f.default for f in attrs.fields(Optimizer) if not isinstance(f.default, attrs.Factory)
}
_OPTIMIZER_DEFAULTS["betas"] = [0.9, 0.999]


@attrs.frozen(kw_only=True)
class Length:
    total_steps: int | None  # kohya's max_train_steps after the epoch override; None when not countable here
    steps_per_epoch: int | None  # kohya's


def map_length(a: Args, kohya_batches: int | None, dbspec_batches: int | None, conv: Conversion) -> Length:
    accum = a["gradient_accumulation_steps"]
    if accum.value != 1:
        conv.mapped(accum, ("schedule", "accumulation"), accum.value)
    else:
        conv.record(accum, "mapped", "schedule.accumulation")
    per_epoch = -(-kohya_batches // accum.value) if kohya_batches else None
    epochs, steps = a["max_train_epochs"], a["max_train_steps"]
    if epochs.value is None:
        conv.mapped(steps, ("schedule", "steps"), steps.value)
        return Length(total_steps=steps.value, steps_per_epoch=per_epoch)
    if steps.given:
        conv.inert(steps, "max_train_epochs overrides it")
    if per_epoch is None:
        conv.mapped(epochs, ("schedule", "epochs"), epochs.value)
        conv.depends(
            epochs.key,
            "the image folders could not be read here, so the epoch length was not checked against kohya's",
        )
        return Length(total_steps=None, steps_per_epoch=None)
    total = epochs.value * per_epoch
    if dbspec_batches == kohya_batches:
        conv.mapped(
            epochs,
            ("schedule", "epochs"),
            epochs.value,
            note=f"{per_epoch} steps per epoch in both, {total} steps",
        )
    else:
        theirs = (
            f"the converted spec's {dbspec_batches}"
            if dbspec_batches is not None
            else "the converted spec's epoch could not be counted here"
        )
        conv.differs(
            epochs,
            f"kohya's epoch has {kohya_batches} batches, {theirs}: the run keeps kohya's {total} steps",
            ("schedule", "steps"),
            total,
            comment=conv.comment(epochs, f"{epochs.value} x {per_epoch} kohya steps per epoch"),
        )
    return Length(total_steps=total, steps_per_epoch=per_epoch)


# kohya's --lr_scheduler_type classes dbspec can plan (a torch-free curve) -> dbspec schedule and its
# arguments
_ONE_CYCLE = {
    "max_lr": "max_lr",
    "total_steps": "t_max",
    "pct_start": "pct_start",
    "anneal_strategy": "anneal_strategy",
    "cycle_momentum": "cycle_momentum",
    "base_momentum": "base_momentum",
    "max_momentum": "max_momentum",
    "div_factor": "div_factor",
    "final_div_factor": "final_div_factor",
    "three_phase": "three_phase",
    "epochs": "",  # with steps_per_epoch: total_steps = epochs x steps_per_epoch (torch's rule)
    "steps_per_epoch": "",
}
# torch's other scheduler classes, which kohya's loop cannot run: a callable or scheduler objects cannot come
# from lr_scheduler_args (ast.literal_eval), and kohya steps every scheduler with no argument
_NEEDS_CALLABLE = (
    "it needs lr_lambda, a Python function, which lr_scheduler_args (ast.literal_eval) cannot give"
)
# kohya builds `cls(optimizer, **lr_scheduler_args)`: no literal has the `optimizer` attribute torch checks on
# each of SequentialLR's schedulers, and ChainedScheduler's first parameter is the scheduler list, so it gets
# the optimizer itself (torch 2.13, tests/runtime/test_torch_schedules.py builds both as kohya does)
_SEQUENTIAL = (
    "kohya cannot build it: SequentialLR(optimizer, schedulers, milestones) takes scheduler objects, which "
    "lr_scheduler_args (ast.literal_eval) cannot give: torch raises TypeError (`schedulers` or `milestones` "
    "missing, or a literal at index 0 without an `optimizer` attribute) or ValueError (an empty list)"
)
_CHAINED = (
    "kohya cannot build it: ChainedScheduler(schedulers, optimizer=None) takes the scheduler list first, so "
    "kohya's ChainedScheduler(optimizer, **lr_scheduler_args) passes the optimizer as the list (TypeError "
    "`object of type '...' has no len()`), and schedulers=... from lr_scheduler_args is a second value for "
    "it (TypeError)"
)
_CRASHING_SCHEDULERS = {
    "LambdaLR": _NEEDS_CALLABLE,
    "MultiplicativeLR": _NEEDS_CALLABLE,
    "SequentialLR": _SEQUENTIAL,
    "ChainedScheduler": _CHAINED,
    "ReduceLROnPlateau": "kohya calls lr_scheduler.step() without the metric ReduceLROnPlateau.step needs "
    "(TypeError at the first step)",
}
# torch class -> (dbspec schedule, {torch argument: [schedule] key}, the arguments torch requires)
TORCH_SCHEDULERS = {
    "CosineAnnealingLR": ("cosine_annealing", {"T_max": "t_max", "eta_min": "eta_min"}, ("T_max",)),
    "CosineAnnealingWarmRestarts": (
        "cosine_annealing_warm_restarts",
        {"T_0": "t_max", "T_mult": "t_mult", "eta_min": "eta_min"},
        ("T_0",),
    ),
    "OneCycleLR": ("one_cycle", _ONE_CYCLE, ("max_lr",)),
    "StepLR": ("step", {"step_size": "step_size", "gamma": "gamma"}, ("step_size",)),
    "MultiStepLR": ("multi_step", {"milestones": "milestones", "gamma": "gamma"}, ("milestones",)),
    "ExponentialLR": ("exponential", {"gamma": "gamma"}, ("gamma",)),
    "LinearLR": (
        "linear_lr",
        {"start_factor": "start_factor", "end_factor": "end_factor", "total_iters": "total_iters"},
        (),
    ),
    "ConstantLR": ("constant_lr", {"factor": "factor", "total_iters": "total_iters"}, ()),
    "PolynomialLR": ("polynomial_lr", {"total_iters": "total_iters", "power": "power"}, ()),
    "CyclicLR": (
        "cyclic",
        {
            "base_lr": "base_lr",
            "max_lr": "max_lr",
            "step_size_up": "step_size_up",
            "step_size_down": "step_size_down",
            "mode": "cyclic_mode",
            "gamma": "gamma",
            "cycle_momentum": "cycle_momentum",
            "base_momentum": "base_momentum",
            "max_momentum": "max_momentum",
            "scale_mode": "",  # torch uses the mode's own unless a scale_fn (a callable) is given
            "scale_fn": "",  # only None is a Python literal
        },
        ("base_lr", "max_lr"),
    ),
}
# torch's error when a scheduler is built with last_epoch != -1 on groups without 'initial_lr' (kohya's)
_LAST_EPOCH_WHY = (
    "torch raises KeyError `param 'initial_lr' is not specified in param_groups[0]`: a scheduler starts "
    "part-way only when resuming one, and kohya's fresh optimizer groups have no initial_lr"
)
_FLOAT_KEYS = {
    "base_lr",
    "power",
    "eta_min",
    "gamma",
    "start_factor",
    "end_factor",
    "factor",
    "max_lr",
    "pct_start",
    "div_factor",
    "final_div_factor",
    "base_momentum",
    "max_momentum",
}


def _optimizer_is_adafactor(a: Args) -> bool:
    return kohya_optimizer(str(a["optimizer_type"].value or "")).kind == "adafactor"


def _map_adafactor_schedule(a: Args, conv: Conversion) -> None:
    """Adafactor with relative steps: dbspec's schedule stays constant (the plan shows Adafactor's own LR)."""
    name, warm, kind = a["lr_scheduler"], a["lr_warmup_steps"], a["lr_scheduler_type"]
    why = "kohya replaces the schedule by its adafactor scheduler (Adafactor with relative_step)"
    if kind.value and not _torch_scheduler_over_relative_step(a, conv):
        return
    if warm.value:
        conv.invalid(
            warm.key, warm.value, warm.source, "kohya raises `adafactor does not require num_warmup_steps`"
        )
        return
    conv.record(warm, "mapped", "schedule.warmup_steps")
    if name.given:
        conv.inert(name, why)
    else:
        conv.record(name, "mapped", "schedule.lr_schedule")
    for key in (
        "lr_scheduler_args",
        "lr_scheduler_num_cycles",
        "lr_scheduler_power",
        "lr_scheduler_min_lr_ratio",
        "lr_decay_steps",
        "lr_scheduler_timescale",
    ):
        if a[key].given:
            conv.inert(a[key], why)


def _rate_untouched(cls: str, kwargs: dict, total: int | None) -> bool | None:
    """Whether torch's `cls` never computes with the groups' rates within a `total`-step run (None: unknown
    here). kohya's relative-step Adafactor groups have no rate (lr None): CyclicLR and OneCycleLR set their
    own; the others multiply it at construction or at a step and raise TypeError."""
    if cls in ("CyclicLR", "OneCycleLR"):
        return True
    if cls in ("StepLR", "MultiStepLR"):
        first = kwargs.get("step_size") if cls == "StepLR" else min(kwargs.get("milestones") or [2**62])
        return None if total is None or not isinstance(first, int) else first > total
    if cls == "PolynomialLR":
        return kwargs.get("total_iters", 5) == 0
    return False


def _torch_scheduler_over_relative_step(a: Args, conv: Conversion) -> bool:
    """kohya's --lr_scheduler_type with a relative-step Adafactor: get_scheduler_fix builds the torch class
    over groups whose lr kohya removed. Returns whether the run goes on (the scheduler then changes nothing:
    Adafactor computes its LR itself)."""
    kind, args = a["lr_scheduler_type"], a["lr_scheduler_args"]
    cls = kind.value.removeprefix("torch.optim.lr_scheduler.")
    kwargs = _scheduler_kwargs(args, conv)
    if kwargs is None:
        return False
    total = a["max_train_steps"].value if a["max_train_epochs"].value is None else None
    untouched = _rate_untouched(cls, kwargs, total) if cls in TORCH_SCHEDULERS else None
    why = (
        f"kohya removes the groups' lr for Adafactor's relative step, so torch's {cls} computes with lr None "
        "(TypeError)"
    )
    if untouched is False:
        conv.invalid(
            kind.key, kind.value, kind.source, why, help="pass relative_step=False in optimizer_args"
        )
        return False
    if untouched is None:
        conv.unsupported(
            kind,
            f"{cls} over Adafactor's relative step: whether torch computes with the removed lr (and raises) "
            "is not known here",
            help="pass relative_step=False in optimizer_args to schedule a fixed Adafactor LR",
        )
        return False
    if cls in ("CyclicLR", "OneCycleLR") and kwargs.get("cycle_momentum", True):
        _momentum_cycle_on_adafactor(cls, args, conv)
        return False
    if kwargs.get("last_epoch", -1) != -1:
        conv.invalid(
            args.key, args.value, args.source, f"last_epoch={kwargs['last_epoch']!r}: {_LAST_EPOCH_WHY}"
        )
        return False
    conv.inert(kind, f"{cls} sets rates that Adafactor's relative step ignores (it computes the LR itself)")
    conv.inert(args, f"the arguments of {cls}, which changes nothing here")
    return True


def _schedulefree(a: Args) -> bool:
    """kohya's is_schedulefree_optimizer: optimizer_type ends with "schedulefree" (any case)."""
    return str(a["optimizer_type"].value or "").lower().endswith("schedulefree")


def _map_schedulefree_schedule(a: Args, conv: Conversion) -> None:
    """kohya's get_scheduler_fix returns a dummy scheduler for schedule-free optimizers: no schedule, no
    warm-up, whatever the scheduler options say (the optimizer's own warmup_steps is an optimizer_args)."""
    why = "kohya gives schedule-free optimizers a dummy scheduler that never changes the LR"
    warm_up = (
        " (use_bias_correction=True in optimizer_args gives ProdigyPlusScheduleFree RAdam's warm-up)"
        if kohya_optimizer(str(a["optimizer_type"].value or "")).kind == "prodigy_plus_schedulefree"
        else " (use warmup_steps in optimizer_args for a warm-up)"
    )
    for key in (
        "lr_scheduler",
        "lr_warmup_steps",
        "lr_scheduler_type",
        "lr_scheduler_args",
        "lr_scheduler_num_cycles",
        "lr_scheduler_power",
        "lr_scheduler_min_lr_ratio",
        "lr_decay_steps",
        "lr_scheduler_timescale",
    ):
        legacy = a[key]
        if (
            key in ("lr_scheduler", "lr_warmup_steps")
            and legacy.given
            and legacy.value not in ("constant", 0)
        ):
            conv.ignored(legacy, why + warm_up)
        elif legacy.given:
            conv.inert(legacy, why)
        else:
            conv.record(legacy, "mapped", "schedule")


def map_lr_schedule(a: Args, total: int | None, conv: Conversion, script: str = "") -> None:
    name, warm = a["lr_scheduler"], a["lr_warmup_steps"]
    if _schedulefree(a):
        _map_schedulefree_schedule(a, conv)
        return
    if adafactor_relative_step(a):
        _map_adafactor_schedule(a, conv)
        return
    if a["lr_scheduler_type"].value:
        _map_torch_scheduler(a, total, conv, script)
        return
    if not map_schedule_name(conv, name, KOHYA_SCHEDULES):
        return
    if not _map_schedule_args(a, name.value, conv):
        return
    if warm.value and name.value == "constant":
        conv.invalid(
            warm.key,
            warm.value,
            warm.source,
            "kohya raises `constant does not require num_warmup_steps`",
            help="use lr_scheduler constant_with_warmup, or drop the warm-up",
        )
    else:
        _map_warmup(warm, total, conv, name.value)
    _schedule_shape(a, name.value, total, conv)


# transformers' schedule functions kohya calls with **lr_scheduler_args: the keywords each takes beyond
# what kohya passes itself (a second one is a TypeError), and the [schedule] key each becomes ("": none, the
# value changes nothing)
_SCHEDULE_FUNCTION_ARGS = {
    "constant": {},
    "constant_with_warmup": {},
    "linear": {},
    "cosine": {"num_cycles": "cosine_cycles"},
    "cosine_with_restarts": {},
    "polynomial": {"lr_end": "lr_end"},
    "cosine_with_min_lr": {"min_lr": "min_lr_ratio"},
    "warmup_stable_decay": {
        "warmup_type": "warmup_type",
        "decay_type": "decay_type",
        "num_training_steps": "",
    },
}


def _has_min_lr(a: Args) -> bool:
    kwargs = _quiet_kwargs(a["lr_scheduler_args"])
    return kwargs is not None and "min_lr" in kwargs


def _quiet_kwargs(args: Legacy) -> dict | None:
    kwargs = {}
    for item in args.value or []:
        key, sep, text = str(item).partition("=")
        try:
            kwargs[key.strip()] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return None
    return kwargs


def _map_schedule_args(a: Args, name: str, conv: Conversion) -> bool:
    """kohya's lr_scheduler_args forwarded to the named schedule's transformers function."""
    args = a["lr_scheduler_args"]
    kwargs = _scheduler_kwargs(args, conv)
    if kwargs is None:
        return False
    accepted = _SCHEDULE_FUNCTION_ARGS[name]
    unknown = sorted(set(kwargs) - set(accepted) - {"last_epoch"})
    if unknown:
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"transformers' {name} schedule takes no {', '.join(unknown)} from lr_scheduler_args (kohya "
            "passes its own arguments; TypeError)",
        )
        return False
    if kwargs.get("last_epoch", -1) != -1:
        conv.invalid(
            args.key, args.value, args.source, f"last_epoch={kwargs['last_epoch']!r}: {_LAST_EPOCH_WHY}"
        )
        return False
    ratio = a["lr_scheduler_min_lr_ratio"]
    if "min_lr" in kwargs and ratio.value is not None:
        conv.invalid(
            args.key,
            args.value,
            args.source,
            "transformers raises `Only one of min_lr or min_lr_rate should be set`",
        )
        return False
    for key, value in kwargs.items():
        target = accepted.get(key, "")
        if not target:
            continue
        if key == "min_lr":  # transformers: min_lr_rate = min_lr / the optimizer's lr (kohya's learning_rate)
            lr = float(a["learning_rate"].value)
            if lr == 0:
                conv.invalid(
                    args.key,
                    args.value,
                    args.source,
                    "transformers divides min_lr by the optimizer's lr, kohya's learning_rate 0: "
                    "ZeroDivisionError before training (use lr_scheduler_min_lr_ratio)",
                )
                return False
            value = float(value) / lr  # noqa: PLW2901
            note = f"min_lr={kwargs[key]!r} / learning_rate {lr!r}"
        else:
            value = float(value) if target in ("cosine_cycles", "lr_end") else value  # noqa: PLW2901
            note = f"{key}={kwargs[key]!r}"
        conv.put(("schedule", target), value, conv.comment(args, note))
    conv.record(args, "mapped", "schedule")
    return True


def _map_warmup(warm: Legacy, total: int | None, conv: Conversion, name: str = "") -> None:
    if isinstance(warm.value, float) and warm.value:
        steps = _ratio_steps(warm, total, conv)
        fits = None if steps is None else _warmup_fits(warm, steps, total, conv, name)
        if steps is not None and fits is not None:
            note = f"ratio {warm.value} x {total} steps" + (f"; {fits}" if fits else "")
            conv.mapped(
                warm, ("schedule", "warmup_steps"), steps, note=fits, comment=conv.comment(warm, note)
            )
    elif warm.value:
        fits = _warmup_fits(warm, warm.value, total, conv, name)
        if fits is not None:
            conv.mapped(warm, ("schedule", "warmup_steps"), warm.value, note=fits)
    else:
        conv.record(warm, "mapped", "schedule.warmup_steps")


def _ratio_steps(legacy: Legacy, total: int | None, conv: Conversion) -> int | None:
    """kohya get_scheduler_fix: a float is a ratio of the run, int(ratio * max_train_steps)."""
    if total is None:
        conv.unsupported(
            legacy,
            "a ratio of an epoch-based run: the images could not be counted here, so the step count it is a "
            "ratio of is unknown",
            help="convert where the images are",
        )
        return None
    return int(legacy.value * total)


def _momentum_cycle_on_adafactor(cls: str, args: Legacy, conv: Conversion) -> None:
    """torch's OneCycleLR/CyclicLR cycle momentum by default, which Adafactor lacks: kohya crashes."""
    conv.invalid(
        args.key,
        args.value,
        args.source,
        f"torch's {cls} cycles momentum by default and raises `optimizer must support momentum or beta1 "
        "with `cycle_momentum` option enabled` on Adafactor",
        help="add cycle_momentum=False to lr_scheduler_args",
    )


def _map_torch_scheduler(a: Args, total: int | None, conv: Conversion, script: str = "") -> None:
    """kohya's --lr_scheduler_type with --lr_scheduler_args: a torch scheduler class built with those
    kwargs."""
    kind, args, warm = a["lr_scheduler_type"], a["lr_scheduler_args"], a["lr_warmup_steps"]
    cls = kind.value.removeprefix("torch.optim.lr_scheduler.")
    if cls in _CRASHING_SCHEDULERS:
        combined = cls in ("SequentialLR", "ChainedScheduler")
        conv.invalid(
            kind.key,
            kind.value,
            kind.source,
            _CRASHING_SCHEDULERS[cls],
            help="a warm-up then a decay is a named lr_scheduler with lr_warmup_steps (e.g. cosine), or "
            "OneCycleLR"
            if combined
            else "",
        )
        return
    if cls not in TORCH_SCHEDULERS:
        conv.unsupported(
            kind,
            f"dbspec plans the torch schedulers {', '.join(TORCH_SCHEDULERS)} only (their curve is computed "
            "without torch for the plan)",
        )
        return
    schedule, names, required = TORCH_SCHEDULERS[cls]
    kwargs = _scheduler_kwargs(args, conv)
    if kwargs is None:
        return
    if warm.value:
        conv.invalid(
            warm.key, warm.value, warm.source, f"kohya raises `{cls} does not require num_warmup_steps`"
        )
        return
    conv.record(warm, "mapped", "schedule.warmup_steps")
    unknown = sorted(set(kwargs) - set(names) - {"last_epoch"})
    if unknown:
        conv.unsupported(args, f"{cls} arguments dbspec has not: {', '.join(unknown)}")
        return
    if kwargs.get("last_epoch", -1) != -1:
        conv.invalid(
            args.key, args.value, args.source, f"last_epoch={kwargs['last_epoch']!r}: {_LAST_EPOCH_WHY}"
        )
        return
    missing = [key for key in required if key not in kwargs]
    if missing:
        conv.invalid(args.key, args.value, args.source, f"torch's {cls} needs {', '.join(missing)}")
        return
    if (
        cls in ("OneCycleLR", "CyclicLR")
        and kwargs.get("cycle_momentum", True)
        and _optimizer_is_adafactor(a)
    ):
        _momentum_cycle_on_adafactor(cls, args, conv)
        return
    values = _torch_values(cls, kwargs, total, args, conv, (a, script))
    if values is None:
        return
    conv.mapped(kind, ("schedule", "lr_schedule"), schedule)
    for key, (value, note) in values.items():
        conv.put(("schedule", key), value, conv.comment(args, note))
    conv.record(args, "mapped", "schedule")
    conv.inert(a["lr_scheduler"], f"kohya ignores it when lr_scheduler_type is set ({cls})")
    for key in (
        "lr_scheduler_num_cycles",
        "lr_scheduler_power",
        "lr_scheduler_min_lr_ratio",
        "lr_decay_steps",
    ):
        if a[key].given:
            conv.inert(a[key], f"{cls} does not use it")


def _torch_values(
    cls: str, kwargs: dict, total: int | None, args: Legacy, conv: Conversion, run: tuple[Args, str]
) -> dict | None:
    """[schedule] key -> (value, comment) for a torch scheduler's arguments; None after reporting one dbspec
    cannot take. `run`: the kohya arguments and script, whose optimizer groups a per-group list follows."""
    names = TORCH_SCHEDULERS[cls][1]
    values = {}
    # the per-group lists torch reads (the momenta only with cycle_momentum): all map one way (split_needed)
    read = ("max_lr", "base_lr") + (
        ("base_momentum", "max_momentum") if kwargs.get("cycle_momentum", True) else ()
    )
    lists = [
        list(v) for k, v in kwargs.items() if k in read and names.get(k) and isinstance(v, (list, tuple))
    ]
    split = split_needed(*run, lists, conv)
    for key, value in kwargs.items():
        if key not in names or not names[key]:
            continue
        # without cycle_momentum torch reads neither the momenta nor their length
        momenta = key in ("base_momentum", "max_momentum") and isinstance(value, (list, tuple))
        if momenta and not kwargs.get("cycle_momentum", True):
            conv.notes.append(f"kohya lr_scheduler_args {key} has no effect without cycle_momentum")
            continue
        if isinstance(value, (list, tuple)) and key in ("max_lr", "base_lr", "base_momentum", "max_momentum"):
            value = group_table(*run, cls, key, list(value), args, conv, split)  # noqa: PLW2901 - per group
            if value is None:
                return None
            values[names[key]] = (value, f"{key}={kwargs[key]!r}")
            if key == "max_lr" and 0.0 in (value.values() if isinstance(value, dict) else [value]):
                values["max_lr_zero"] = ("literal", "a max_lr of 0 is torch's peak of 0")
            continue
        if key == "max_lr" and not value:  # torch's peak of 0 (dbspec's 0 alone: each group's own rate)
            values["max_lr_zero"] = ("literal", "max_lr=0 is torch's peak of 0")
        if key in ("step_size_up", "step_size_down"):
            if value is None:  # CyclicLR: step_size_down None = step_size_up
                continue
            refused = _cyclic_step_refused(key, value)
            if refused:
                conv.unsupported(args, refused)
                return None
            value = float(value)  # noqa: PLW2901 - torch's float(step_size_*): a fraction is exact
        if key == "mode" and value not in ("triangular", "triangular2", "exp_range"):
            conv.invalid(
                args.key,
                args.value,
                args.source,
                "torch's CyclicLR raises `mode is invalid and scale_fn is None`",
            )
            return None
        if key == "scale_mode" and cls == "CyclicLR":
            conv.notes.append(
                f"kohya lr_scheduler_args scale_mode={value!r} has no effect: torch's CyclicLR uses its "
                "mode's own scale mode unless a scale_fn is given"
            )
            continue
        if key == "milestones":
            value = sorted(int(m) for m in value)  # noqa: PLW2901 - torch counts them, in any order
        elif names[key] in _FLOAT_KEYS:
            value = float(value)  # noqa: PLW2901 - TOML floats stay floats
        values[names[key]] = (value, f"{key}={kwargs[key]!r}")
    if split:  # each kohya block its own group: the blocks name it
        write_block_groups(*run, conv, conv.comment(args, "kohya's optimizer group of this block"))
    if cls == "OneCycleLR":
        if "total_steps" not in kwargs:
            if "epochs" not in kwargs or "steps_per_epoch" not in kwargs:
                conv.invalid(
                    args.key,
                    args.value,
                    args.source,
                    "torch's OneCycleLR needs total_steps or epochs and steps_per_epoch",
                )
                return None
            steps = int(kwargs["epochs"]) * int(kwargs["steps_per_epoch"])
            values["t_max"] = (steps, f"epochs x steps_per_epoch = {steps}")
        if total is not None and values["t_max"][0] < total:
            conv.invalid(
                args.key,
                args.value,
                args.source,
                f"OneCycleLR's {values['t_max'][0]} total steps are fewer than the run's {total}: torch "
                "raises when stepped past them",
            )
            return None
    return values


def _cyclic_step_refused(key: str, value) -> str:
    """Why dbspec cannot take CyclicLR's `step_size_up` / `step_size_down` as kohya passes it, or "". torch
    takes any number (float(value)): a fraction is dbspec's fraction. step_size_down=0 is torch's saw-tooth
    (total_size = step_size_up, step_ratio 1: up over step_size_up steps, then straight back to base_lr),
    where dbspec's 0 is torch's None (down as long as up)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{key}={value!r} is not a number"
    if key == "step_size_up" and value <= 0:
        return (
            f"step_size_up={value!r}: dbspec needs a rise above 0 (torch divides by it, step_ratio = up / "
            "(up + down))"
        )
    if key == "step_size_down" and value < 0:
        return f"step_size_down={value!r}: dbspec needs a fall of at least 0"
    if key == "step_size_down" and value == 0:
        return (
            "step_size_down=0: torch's CyclicLR then rises over step_size_up steps and drops straight "
            "back to base_lr (a saw-tooth), while dbspec's schedule.step_size_down = 0 is torch's None "
            "(falling as long as it rose); give step_size_down a positive value, or drop it for the "
            "symmetric cycle"
        )
    return ""


def _scheduler_kwargs(args: Legacy, conv: Conversion) -> dict | None:
    """kohya's parse of --lr_scheduler_args: `key=value`, the value a Python literal."""
    kwargs, bad = {}, object()
    for item in args.value or []:
        key, sep, text = str(item).partition("=")
        try:
            value = ast.literal_eval(text) if sep else bad
        except (ValueError, SyntaxError):
            value = bad
        if value is bad or "=" in text:
            conv.invalid(args.key, args.value, args.source, f"`{item}` is not key=<Python literal>")
            return None
        kwargs[key.strip()] = value
    return kwargs


def _warmup_fits(warm: Legacy, steps: int, total: int | None, conv: Conversion, name: str) -> str | None:
    """A warm-up at least as long as the run: kohya runs it (its LR never reaches learning_rate; the plan
    warns, DBS238) and the note says so, except where kohya crashes: transformers' polynomial schedule divides
    by the steps after the warm-up, 0 when the warm-up equals the run, at the scheduler step after the last
    optimizer step (before the model is saved). None: refused; "": fits."""
    if total is None or steps < total:
        return ""
    if name == "polynomial" and steps == total:
        conv.invalid(
            warm.key,
            warm.value,
            warm.source,
            f"a {steps}-step warm-up in a {total}-step run leaves the polynomial schedule 0 decay steps: "
            "transformers' lr_lambda divides by them after the last step (ZeroDivisionError before kohya "
            "saves the model)",
            help="shorten the warm-up by one step or more (or lengthen the run)",
        )
        return None
    return (
        f"not shorter than the {total}-step run: the LR climbs the whole run and never reaches "
        "learning_rate, as in kohya (the plan warns, DBS238)"
    )


def _schedule_shape(a: Args, name: str, total: int | None, conv: Conversion) -> None:
    """kohya's num_cycles, power, min_lr_ratio and lr_decay_steps, where get_scheduler_fix passes them."""
    keys = ("lr_scheduler_num_cycles", "lr_scheduler_power", "lr_scheduler_min_lr_ratio", "lr_decay_steps")
    cycles, power, ratio, decay = (a[key] for key in keys)
    if name in ("cosine_with_restarts", "cosine_with_min_lr", "warmup_stable_decay"):
        conv.mapped(cycles, ("schedule", "cycles"), cycles.value)
    elif cycles.given:
        conv.inert(cycles, f"{name} does not use it")
    if name == "polynomial":
        conv.mapped(power, ("schedule", "power"), power.value)
    elif power.given:
        conv.inert(power, f"{name} does not use it")
    if name in ("cosine_with_min_lr", "warmup_stable_decay") and ratio.value is not None:
        conv.mapped(ratio, ("schedule", "min_lr_ratio"), ratio.value)
    elif name == "cosine_with_min_lr" and not _has_min_lr(a):
        conv.invalid(
            ratio.key, None, ratio.source, "transformers raises `One of min_lr or min_lr_rate should be set`"
        )
    elif ratio.given:
        conv.inert(ratio, f"{name} does not use it")
    if name == "warmup_stable_decay":
        steps = _ratio_steps(decay, total, conv) if isinstance(decay.value, float) else decay.value
        if steps is not None:
            conv.mapped(decay, ("schedule", "decay_steps"), steps)
    elif decay.given:
        conv.inert(decay, f"{name} does not use it")
    if a["lr_scheduler_timescale"].given:
        conv.inert(a["lr_scheduler_timescale"], f"only inverse_sqrt uses it; {name} does not")


# The LoRA scripts that assert --network_train_unet_only with cached text-encoder outputs.
# flux_train_network.py and sd3_train_network.py do not: with a CLIP LoRA they cache partially (is_partial)
# and their training step encodes CLIP anew each step over the cached outputs, so only T5-XXL's (never
# trained) come from the cache: dbspec's train.text_encoder (CLIP trains, T5-XXL frozen) with its own text
# cache. train_network.py has no --cache_text_encoder_outputs at all.
_CACHE_NEEDS_UNET_ONLY = ("sdxl_train_network",)


def text_outputs_cached(a: Args) -> Legacy | None:
    """The flag that turns kohya's text-encoder output cache on, or None: every script that has the flags
    turns `--cache_text_encoder_outputs` on when `--cache_text_encoder_outputs_to_disk` is given alone."""
    for key in ("cache_text_encoder_outputs", "cache_text_encoder_outputs_to_disk"):
        if key in a and a[key].value:
            return a[key]
    return None


def map_text_encoder(
    a: Args,
    script: str,
    total: int | None,
    conv: Conversion,
    text_modules: bool = True,
    first_modules: bool = True,
    idle_file: bool = False,
    second_modules: bool = True,
    clip_modules: bool = True,
    held_file: bool = False,
) -> bool:
    """[train] text_encoder and its stop step; returns whether the text encoder trains. `text_modules` /
    `first_modules` / `second_modules`: whether kohya's network holds text-encoder modules at all / of the
    first encoder / of the second CLIP encoder (False for a --dim_from_weights file without them);
    `idle_file`: a --network_weights file's text-encoder modules at rate 0 that train.text_encoder_idle keeps
    (file_idle); `clip_modules`: whether it holds CLIP modules (False for a Flux / SD3 --dim_from_weights
    file with T5-XXL's alone: nothing of CLIP's is idle); `held_file`: networks.lora_fa's, held in the
    optimizer at rate 0 (file_held)."""
    if script == "train_db":
        return _train_db_text_encoder(a, total, conv)
    cached = text_outputs_cached(a)
    if script == "sdxl_train":
        flag = a["train_text_encoder"]
        if flag.value and cached is not None:
            conv.invalid(
                cached.key,
                True,
                cached.source,
                "sdxl_train.py asserts that text-encoder outputs are not "
                "cached while the text encoders train",
            )
        lr = a["learning_rate"].value
        rates = [
            x.value if x.value is not None else lr for x in (a["learning_rate_te1"], a["learning_rate_te2"])
        ]
        if flag.value and rates == [0, 0]:
            conv.mapped(
                flag, ("train", "text_encoder"), False, note="sdxl_train.py trains no text encoder at rate 0"
            )
            return False
        _write_flag(conv, flag, bool(flag.value))
        return bool(flag.value)
    unet_only, te_only = a["network_train_unet_only"], a["network_train_text_encoder_only"]
    if cached is not None and not unet_only.value and script in _CACHE_NEEDS_UNET_ONLY:
        conv.invalid(
            cached.key,
            True,
            cached.source,
            f"{script}.py asserts network_train_unet_only when text-encoder "
            "outputs are cached (a text-encoder LoRA cannot train on cached outputs)",
        )
    if script == "flux_train_network" and _t5_only(a, script):
        # --model_type chroma: use_clip_l is False, so kohya trains no CLIP LoRA whatever
        # network_train_unet_only says; T5-XXL's LoRA (train_t5xxl=True: train.t5, mapped with the network)
        # is the only text-encoder training, at optimizer.text_encoder_lr
        conv.record(unet_only, "mapped", "train.t5")
        return bool(conv.values.get(("train", "t5"), (False, ""))[0])
    te_lr = lora_text_encoder_lr(a)
    clip_g = _sd3_clip_g_rate(a, script)
    if clip_g is not None and text_modules and second_modules and not first_modules:
        # lora_sd3 --dim_from_weights with CLIP-G's modules and not CLIP-L's: CLIP-G's rate alone decides
        # (text_encoder_lr's second value; at 0 nothing trains and the file's CLIP-G modules stay idle)
        te_lr = attrs.evolve(te_lr, value=clip_g)
    if not unet_only.value and te_lr.value == 0 and clip_g and text_modules and second_modules:
        return _sd3_clip_g_alone(a, te_lr, conv, first_modules, idle_file)
    if not unet_only.value and te_lr.value == 0 and "lora_te1_" in conv.facts.get(REG_LIFTED, ()):
        # lora_flux's network_reg_lrs trains some of CLIP-L's modules at their own rates (reg_dims.py
        # lifted_encoders): CLIP-L trains, its other modules held in blocks at lr_scale 0
        why = (
            "network_reg_lrs gives some of CLIP-L's modules their own rates at CLIP-L's text_encoder_lr 0: "
            "they train, the others are held (lr_scale 0, out of the optimizer, their gradients clipped)"
        )
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.put(("train", "text_encoder"), True, conv.comment(te_lr, why))
        if te_only.value:
            conv.mapped(te_only, ("train", "denoiser"), False)
        return True
    if not unet_only.value and te_lr.value == 0:
        clip = text_modules and clip_modules  # T5-XXL's modules alone: train.t5_idle's (idle_text.py)
        if not te_only.value and _builds_text_modules(a, conv, clip) and not _file_refused(a, conv):
            # the modules at rate 0 still count in max_grad_norm's clip (idle_text.py; exact at 0)
            first = (
                "CLIP-L's" if script in ("flux_train_network", "sd3_train_network") else "the text encoders'"
            )
            if clip_g == 0 and second_modules:  # lora_sd3's CLIP-G at 0 too (its second value, or the one)
                first = "CLIP-L's and CLIP-G's" if first_modules else "CLIP-G's"
            if idle_kohya(a, script, file=idle_file):  # exact: train.text_encoder_idle keeps them
                conv.put(("train", "text_encoder_idle"), "kohya", conv.comment(te_lr, IDLE_NOTE))
            elif _lora_fa_text_held(a, te_lr, conv, held_file):  # exact: optimizer.text_encoder_lr = 0
                return True
            else:
                clipped_idle_text(a, te_lr, first, conv, lora_fa_not_held(a))
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.mapped(
            te_lr,
            ("train", "text_encoder"),
            False,
            comment=conv.comment(te_lr, "networks.lora skips parameters whose learning rate is 0"),
        )
        return False
    if not unet_only.value and not text_modules:  # --dim_from_weights with a file of no text-encoder module
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.put(
            ("train", "text_encoder"),
            False,
            "kohya --dim_from_weights: the file has no text-encoder module, so create_network_from_weights "
            "builds no text-encoder LoRA",
        )
        return False
    oft = a["network_module"].value if "network_module" in a else None
    if not unet_only.value and oft in ("networks.oft", "networks.oft_flux"):
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.put(
            ("train", "text_encoder"),
            False,
            f"kohya {oft}: OFTNetwork adapts the {'transformer' if oft.endswith('_flux') else 'U-Net'} alone "
            "(the text encoders run, nothing of theirs trains)",
        )
        return False
    empty, empty_2, own = _text_layers_empty(conv)
    if not unet_only.value and empty != empty_2 and own:
        # a LyCORIS preset file adapting layers of one of SDXL's two encoders alone
        conv.record(unet_only, "mapped", "train.text_encoder")
        note = (
            "kohya lycoris.kohya: the LyCORIS preset matches no layer of the {} text encoder, so the network "
            "has no module there"
        )
        if empty:
            conv.put(("train", "text_encoder"), False, note.format("first"))
            conv.put(
                ("train", "text_encoder_2"),
                True,
                "kohya lycoris.kohya: the preset's layers of the second text encoder",
            )
            if te_only.value:
                conv.mapped(te_only, ("train", "denoiser"), False)
            return True
        conv.put(("train", "text_encoder_2"), False, note.format("second"))
    if not unet_only.value and empty and empty_2:
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.put(
            ("train", "text_encoder"),
            False,
            "kohya lycoris.kohya: the LyCORIS preset matches no text-encoder layer, so the network "
            "has no text-encoder module",
        )
        return False
    trains = not unet_only.value
    _write_flag(conv, unet_only, trains, note="kohya trains text-encoder LoRA unless network_train_unet_only")
    if te_only.value:
        conv.mapped(te_only, ("train", "denoiser"), False)
    return trains


# the kohya prefixes of the text encoders at rate 0 that network_reg_lrs still trains (lora_flux._reg_blocks)
REG_LIFTED = "kohya_flux_reg_text_lifted"


def _lora_fa_text_held(a: Args, te_lr: Legacy, conv: Conversion, held_file: bool = False) -> bool:
    """networks.lora_fa at text_encoder_lr 0 under a clip: its prepare_optimizer_params keeps the text
    encoders' group in the optimizer at rate 0 (networks/lora_fa.py: no rate-0 skip for it), so kohya's run
    is a text encoder trained at rate 0, its gradients computed, cleared by zero_grad each step and counted
    in max_grad_norm's clip: dbspec's train.text_encoder = true with optimizer.text_encoder_lr = 0 (DBS229;
    map_learning_rates writes the 0), where the optimizer and schedule hold a group at 0 (lora_fa_not_held)
    and the U-Net trains at a positive rate (rate_zero.lora_fa_holds); a --network_weights file's
    text-encoder modules (`held_file`) so whatever the clip (adapter.init_weights loads them). Where the
    optimizer or schedule moves the group (rate_zero.lora_fa_kept), the same with
    optimizer.text_encoder_at_zero = "keep", clip or not; where kohya's group order makes the run train
    nothing (rate_zero.lora_fa_trains_nothing), DBS403. True when mapped so. Without a clip fresh modules
    leave nothing to read those gradients: train.text_encoder = false is the same run, cheaper (the
    caller's mapping)."""
    nothing = lora_fa_trains_nothing(a)
    if nothing:
        conv.unsupported(te_lr, nothing, help="give text_encoder_lr a rate above 0, or another optimizer")
        return False
    kept = lora_fa_kept(a)  # optimizer.text_encoder_at_zero = "keep"; a group that moves, clip or not
    if not (lora_fa_holds(a) or kept) or not (a["max_grad_norm"].value or held_file or kept_group_moves(a)):
        return False
    conv.record(a["network_train_unet_only"], "mapped", "train.text_encoder")
    if kept_group_moves(a):  # not OneCycleLR / CyclicLR holding it at 0: the held text encoder (DBS229)
        why = f"networks.lora_fa keeps the text encoders' group in the optimizer at rate 0, where {kept}"
        conv.put(("optimizer", "text_encoder_at_zero"), "keep", conv.comment(te_lr, why))
        conv.notes.append(f'kohya {why}: the text encoder trains (optimizer.text_encoder_at_zero = "keep")')
    if kept and lora_fa_order(a):
        why = "networks.lora_fa's order: the text encoders' group first, which DAdaptLion sums into d first"
        conv.put(("optimizer", "group_order"), "text_encoders_first", conv.comment(te_lr, why))
    why = (
        "networks.lora_fa keeps the text encoders' group in the optimizer at rate 0: they train at rate 0, "
        f"their gradients counted in max_grad_norm {a['max_grad_norm'].value:g}'s clip"
        if a["max_grad_norm"].value
        else "networks.lora_fa keeps the text encoders' group, with the file's modules, in the optimizer at "
        "rate 0: they train at rate 0"
    )
    conv.put(("train", "text_encoder"), True, conv.comment(te_lr, why))
    return True


def _sd3_clip_g_rate(a: Args, script: str) -> float | None:
    """CLIP-G's rate in a networks.lora_sd3 run (prepare_optimizer_params_with_multiple_te_lrs pads
    text_encoder_lr to [CLIP-L, CLIP-G, T5-XXL]: one value gives all three, two [a, b, b]; none:
    learning_rate), or None for another script or network (lycoris.kohya: one text group at the first
    value)."""
    if script != "sd3_train_network" or a["network_module"].value == "lycoris.kohya":
        return None
    te = a["text_encoder_lr"].value
    values = te if isinstance(te, list) else [te] if te is not None else []
    return float(values[1] if len(values) > 1 else values[0]) if values else float(a["learning_rate"].value)


def _sd3_clip_g_alone(
    a: Args, te_lr: Legacy, conv: Conversion, clip_l_modules: bool, idle_file: bool = False
) -> bool:
    """lora_sd3 with text_encoder_lr's first value 0 and its second above: kohya leaves CLIP-L's group out
    ("NO LR skipping!") and trains CLIP-G at the second value, as sdxl_train.py's learning_rate_te1 0 trains
    the second encoder alone: train.text_encoder = false, train.text_encoder_2 = true, CLIP-G's rate
    optimizer.text_encoder_lr (_sd3_clip_g_lr). CLIP-L's modules (none from a --dim_from_weights file
    without them) still count in max_grad_norm's clip: train.text_encoder_idle = "kohya" keeps them
    (idle_kohya)."""
    unet_only, te_only = a["network_train_unet_only"], a["network_train_text_encoder_only"]
    if clip_l_modules and not _file_refused(a, conv):
        if idle_kohya(a, "sd3_train_network", file=idle_file):
            conv.put(("train", "text_encoder_idle"), "kohya", conv.comment(te_lr, IDLE_NOTE))
        else:
            clipped_idle_text(a, te_lr, "CLIP-L's", conv)
    conv.record(unet_only, "mapped", "train.text_encoder")
    why = "lora_sd3 leaves CLIP-L's group out at its rate 0 (text_encoder_lr's first value)"
    conv.mapped(te_lr, ("train", "text_encoder"), False, comment=conv.comment(te_lr, why))
    conv.put(
        ("train", "text_encoder_2"),
        True,
        conv.comment(te_lr, "CLIP-G trains alone, at text_encoder_lr's second value"),
    )
    if te_only.value:
        conv.mapped(te_only, ("train", "denoiser"), False)
    return True


def _builds_text_modules(a: Args, conv: Conversion, text_modules: bool) -> bool:
    """Whether kohya's network holds text-encoder modules when network_train_unet_only is off: not for a
    --dim_from_weights file without any, networks.oft / oft_flux (the U-Net or transformer alone), or a
    LyCORIS preset matching no text-encoder layer (as map_text_encoder reads them below)."""
    module = a["network_module"].value if "network_module" in a else None
    if not text_modules or module in ("networks.oft", "networks.oft_flux"):
        return False
    empty, empty_2, _ = _text_layers_empty(conv)
    return not (empty and empty_2)


def _text_layers_empty(conv: Conversion) -> tuple[bool, bool, bool]:
    """Whether a LyCORIS preset's walk left the first and the second text encoder without a layer (targets
    written as [] and no train_norm NormModules, which make an encoder train too), and whether the second
    encoder's targets or norms were written apart (the second reads the first's otherwise)."""
    first = conv.values.get(("adapter", "text_encoder_targets"), (None, ""))[0]
    second = conv.values.get(("adapter", "text_encoder_2_targets"), (None, ""))[0]
    norms = conv.values.get(("adapter", "text_encoder_norms"), (None, ""))[0]
    norms_2 = conv.values.get(("adapter", "text_encoder_2_norms"), (None, ""))[0]
    empty = first == [] and not norms
    empty_2 = (first if second is None else second) == [] and not (norms if norms_2 is None else norms_2)
    return empty, empty_2, second is not None or norms_2 is not None


def _file_refused(a: Args, conv: Conversion) -> bool:
    """A --network_weights file whose text-encoder modules idle_text_modules refused already."""
    keys = ("network_weights", "dim_from_weights")
    return any(k in conv.reports and conv.reports[k].fate == "unsupported" for k in keys)


def _train_db_text_encoder(a: Args, total: int | None, conv: Conversion) -> bool:
    stop = a["stop_text_encoder_training"]
    if stop.value is None:
        conv.mapped(
            stop,
            ("train", "text_encoder"),
            True,
            comment=conv.comment(stop, "train_db trains the text encoder unless told otherwise"),
        )
        return True
    if stop.value <= 0:  # -1: never; 0: kohya stops before the first step
        conv.mapped(stop, ("train", "text_encoder"), False, note="kohya never updates the text encoder")
        return False
    conv.mapped(stop, ("train", "text_encoder"), True)
    if total is not None and stop.value >= total:
        conv.record(
            stop, "mapped", "train.text_encoder", f"not below the {total} steps: trains the whole run"
        )
    else:
        conv.mapped(stop, ("train", "text_encoder_stop_step"), stop.value)
    return True


def _write_flag(conv: Conversion, legacy: Legacy, trains: bool, note: str = "") -> None:
    if trains:
        conv.put(("train", "text_encoder"), True, conv.comment(legacy, note))
        conv.record(legacy, "mapped", "train.text_encoder")
    else:
        conv.record(legacy, "mapped", "train.text_encoder")


def lora_text_encoder_lr(a: Args) -> Legacy:
    """The text encoders' learning rate in a networks.lora run: the first `text_encoder_lr` value
    (networks.lora has no per-encoder rates, so train_network.py passes it the first), else learning_rate."""
    te = a["text_encoder_lr"]
    values = te.value if isinstance(te.value, list) else [te.value] if te.value is not None else []
    return attrs.evolve(te, value=float(values[0])) if values else a["learning_rate"]


def map_learning_rates(
    a: Args,
    script: str,
    text_encoder: bool,
    conv: Conversion,
    idle_file: bool = False,
    clip_g_modules: bool = True,
    unet_file: bool = False,
) -> None:
    """[optimizer] lr / text_encoder_lr (text_encoder: whether a text encoder trains, map_text_encoder;
    `clip_g_modules`: False for a --dim_from_weights file without SD3 CLIP-G modules, whose rate then
    reads nothing; `unet_file`: the --network_weights file holds U-Net modules, held_unet.py)."""
    lr = a["learning_rate"]
    unet_lr = a["unet_lr"] if "unet_lr" in a and a["unet_lr"].value is not None else lr
    if not unet_lr.value and conv.facts.get("kohya_flux_reg_trains"):
        if not _reg_rates_train(a, unet_lr, lr, text_encoder, conv):
            return
    elif not unet_lr.value and holds_unet(a, script, text_encoder, unet_file, conv):
        hold_unet(unet_lr, conv)  # optimizer.lr reads no denoiser module: the text encoder's rate below
    elif not unet_lr.value and script != "train_db":
        # sdxl_train.py trains the U-Net only when learning_rate != 0; networks.lora skips groups with lr 0
        why = "sdxl_train.py trains the U-Net only when learning_rate != 0"
        if script != "sdxl_train":
            why = "networks.lora skips parameters whose learning rate is 0"
        if held_matters(a, script, text_encoder, unet_file):
            unheld_difference(unet_lr, unet_file, conv)
        else:
            conv.mapped(unet_lr, ("train", "denoiser"), False, comment=conv.comment(unet_lr, why))
        te_only = "network_train_text_encoder_only" in a and a["network_train_text_encoder_only"].value
        if not te_only:  # its modules built and held untrained (subsets.py); te_only builds none
            conv.facts["denoiser_held_at_rate_zero"] = True
    elif not unet_lr.value:
        held = _train_db_unet_at_rate_zero(a, unet_lr, text_encoder, conv)
        if held is None:
            return
        if held:
            te = a["learning_rate_te"]
            if text_encoder and ("optimizer", "text_encoder_lr") not in conv.values:
                conv.mapped(te, ("optimizer", "text_encoder_lr"), float(te.value))
            elif te.given and te.key not in conv.reports:
                conv.inert(
                    te,
                    "the text encoder does not train"
                    if not text_encoder
                    else "Adafactor's relative step ignores the rates (kohya removes them)",
                )
            return
    else:
        conv.mapped(unet_lr, ("optimizer", "lr"), float(unet_lr.value))
    te = _text_encoder_lr(a, script, lr, text_encoder, conv, idle_file, clip_g_modules)
    if te is not None and text_encoder and not te.value and conv.facts.get(REG_LIFTED):
        _lifted_text_rate(te, unet_lr, lr, conv)
        te = None  # optimizer.text_encoder_lr follows lr (it reads no module)
    if te is not None and text_encoder:
        if not unet_lr.value:
            conv.mapped(te, ("optimizer", "lr"), float(te.value), note="dbspec needs a positive lr")
            conv.put(("optimizer", "text_encoder_lr"), float(te.value), conv.comment(te))
        elif float(te.value) != float(unet_lr.value):
            conv.mapped(te, ("optimizer", "text_encoder_lr"), float(te.value))
        else:
            conv.record(te, "mapped", "optimizer.text_encoder_lr")
    elif te is not None and te.given and te is not lr and te.key not in conv.reports:
        conv.inert(te, "the text encoder does not train")
    if lr.given and lr.key not in conv.reports:
        conv.inert(lr, "unet_lr and text_encoder_lr take its place")


def _lifted_text_rate(te: Legacy, unet_lr: Legacy, lr: Legacy, conv: Conversion) -> None:
    """The text encoders' rate 0 where network_reg_lrs lifts an encoder at it (reg_dims.lifted_encoders:
    CLIP-L's, or T5-XXL's, which joins that group, or Chroma's): its modules no regex trains are held at
    lr_scale 0 and the other encoder at 0 is idle, so the rate reads no module (optimizer.text_encoder_lr
    is not written). At unet_lr 0 (_reg_rates_train) optimizer.lr reads no module either:
    kohya's learning_rate, the optimizer's own `lr`, where it is positive."""
    why = "the text encoders' modules no regex trains are held at lr_scale 0: its rate reads no module"
    conv.record(te, "mapped", "adapter.text_encoder_blocks", why)
    if not unet_lr.value and lr.value and ("optimizer", "lr") not in conv.values:
        why = "reads no module: network_reg_lrs' blocks cover every module kohya trains"
        conv.mapped(lr, ("optimizer", "lr"), float(lr.value), comment=conv.comment(lr, why))


def _reg_rates_train(a: Args, unet_lr: Legacy, lr: Legacy, text_encoder: bool, conv: Conversion) -> bool:
    """lora_flux at unet_lr 0 with network_reg_lrs training some denoiser modules at their own rates
    (lora_flux.py _reg_blocks): every module kohya builds is in a block, at its own rate or held at
    lr_scale 0, so optimizer.lr reads no denoiser module; it is kohya's learning_rate (the optimizer's own
    `lr`), or the text encoder's rate (map_learning_rates). learning_rate 0 with no text encoder: kohya's
    optimizer default, which no group reads; dbspec's positive optimizer.lr reads no group either, so it is
    the first regex block's rate (was DBS403). False where kohya stops: transformers' polynomial schedule
    reads that default 0 and raises."""
    conv.record(unet_lr, "mapped", "adapter.blocks", "the modules no regex trains are held at lr_scale 0")
    if text_encoder or lr.value:
        if not text_encoder:
            why = "reads no denoiser module: network_reg_lrs' blocks cover every module kohya builds"
            conv.put(("optimizer", "lr"), float(lr.value), conv.comment(lr, why))
        return True
    if not _polynomial_takes_lr_zero(a, conv):
        return False
    rate = float(conv.facts["kohya_flux_reg_trains"])
    why = (
        "no group reads it: network_reg_lrs' blocks carry their own rates and hold every other module kohya "
        f"builds; dbspec needs a positive optimizer.lr, so the first regex block's rate ({rate:g})"
    )
    conv.mapped(lr, ("optimizer", "lr"), rate, note=why, comment=conv.comment(lr, why))
    return True


def _train_db_unet_at_rate_zero(
    a: Args, unet_lr: Legacy, text_encoder: bool, conv: Conversion
) -> bool | None:
    """train_db.py with learning_rate 0: the U-Net is one optimizer group at rate 0, the text encoder a group
    at learning_rate_te, and kohya's gradient clip counts the U-Net's gradients too. Where the optimizer holds
    a group at rate 0 (its step and decoupled weight decay scale by the group's rate; the schedulefree classes
    give it an averaging weight of 0) and the scheduler keeps it there, with max_grad_norm > 0 that is
    dbspec's `optimizer.lr = 0` with the denoiser training (True: its gradients are computed and clipped with
    the text encoder's, DBS229); with max_grad_norm = 0 the U-Net's gradients change nothing, so
    `train.denoiser = false` is the same run, cheaper (False). DAdaptLion and Adafactor's relative step move
    the U-Net anyway: both train (True). A torch scheduler that lifts the U-Net's group off 0 (an eta_min
    above 0; OneCycleLR / CyclicLR with a bound above 0 for it: rate_zero.train_db_unet_lifted) moves it on
    that schedule: `optimizer.lr = 0` with `optimizer.denoiser_at_zero = "keep"` (True; dbspec's groups are
    train_db.py's, U-Net first). None: not expressible, or kohya stops (map_optimizer says so)."""
    clip = a["max_grad_norm"]
    kind = kohya_optimizer(str(a["optimizer_type"].value or "")).kind
    te = a["learning_rate_te"]
    if kind in LR_ZERO_STOPS:
        return None  # the constructor refuses lr=learning_rate=0: map_optimizer reports it (DBS402)
    if adafactor_relative_step(a) or kind == "dadapt_lion":
        return _train_db_unet_trains_anyway(a, unet_lr, text_encoder, kind, conv)
    if not _polynomial_takes_lr_zero(a, conv):
        return None
    moves = train_db_unet_lifted(a)
    if text_encoder and not te.value and (moves or train_db_text_lifted(a)):
        return _train_db_groups_at_rate_zero(a, unet_lr, moves, conv)
    if moves:  # the U-Net's group kept at rate 0 and moved by the schedule (alone without a text encoder)
        why = f"train_db.py keeps the U-Net in the optimizer at learning rate 0, where {moves}"
        conv.mapped(unet_lr, ("optimizer", "lr"), 0.0, note=why, comment=conv.comment(unet_lr, why))
        conv.put(("optimizer", "denoiser_at_zero"), "keep", conv.comment(unet_lr, why))
        conv.notes.append(f'kohya {why}: the U-Net trains (optimizer.denoiser_at_zero = "keep")')
        return True
    if clip.value and text_encoder and te.value:
        why = (
            "train_db.py steps the U-Net at learning rate 0: its weights never change, but its gradients "
            f"count in the clip norm (max_grad_norm {clip.value})"
        )
        conv.mapped(unet_lr, ("optimizer", "lr"), 0.0, comment=conv.comment(unet_lr, why))
        return True
    return _train_db_frozen_unet(a, unet_lr, text_encoder, conv)


def _train_db_groups_at_rate_zero(a: Args, unet_lr: Legacy, moves: str, conv: Conversion) -> bool:
    """train_db.py at learning_rate 0 with the text encoder at rate 0 too (learning_rate_te 0: a group of its
    own after the U-Net's; none: in the U-Net's group), under a torch schedule that lifts a group off 0
    (`moves`: the U-Net's; rate_zero.train_db_text_lifted the text encoder's): each lifted group trains on
    the schedule, a group the schedule holds at 0 stays put with its gradients in the clip norm. dbspec's
    `optimizer.lr = 0` and `text_encoder_lr = 0`, its groups [denoiser, text encoder] at rate 0 in kohya's
    order, with `denoiser_at_zero` / `text_encoder_at_zero = "keep"` for each lifted part (True). One kohya
    group is two of dbspec's at the same rate and bounds: the optimizer steps each tensor alike."""
    te, text_moves = a["learning_rate_te"], train_db_text_lifted(a)
    group = "in the U-Net's group (no learning_rate_te)" if te.value is None else "at learning_rate_te 0"
    why = f"train_db.py keeps the U-Net at learning rate 0 and the text encoder {group} in the optimizer"
    conv.mapped(unet_lr, ("optimizer", "lr"), 0.0, note=why, comment=conv.comment(unet_lr, why))
    if te.value is None:  # dbspec's text_encoder_lr would default to lr (0) too; said for the reader
        conv.put(("optimizer", "text_encoder_lr"), 0.0, conv.comment(unet_lr, "the U-Net's group's rate"))
    for part, option, lifted in (
        ("the U-Net", "denoiser_at_zero", moves),
        ("the text encoder", "text_encoder_at_zero", text_moves),
    ):
        if lifted:
            conv.put(("optimizer", option), "keep", conv.comment(unet_lr, f"{why}, where {lifted}"))
            conv.notes.append(f'kohya {why}, where {lifted}: {part} trains (optimizer.{option} = "keep")')
    return True


# kohya optimizer kinds whose constructor refuses the lr=learning_rate get_optimizer passes when it is 0:
# dadaptation's classes but DAdaptLion and prodigyopt's Prodigy raise ValueError, came_pytorch's CAME and
# lion_pytorch's Lion assert lr > 0
LR_ZERO_STOPS = (
    *(k for k in DADAPT_KINDS if k != "dadapt_lion"),
    "prodigy",
    "came",
    "lion",
    "prodigy_plus_schedulefree",
)


def _polynomial_takes_lr_zero(a: Args, conv: Conversion) -> bool:
    """transformers' polynomial schedule reads the optimizer's default rate (kohya's lr=learning_rate, 0 here)
    and raises unless it is above lr_end (1e-7 unless lr_scheduler_args say otherwise): kohya stops."""
    name = a["lr_scheduler"]
    if (
        name.value != "polynomial"
        or _schedulefree(a)
        or ("lr_scheduler_type" in a and a["lr_scheduler_type"].value)
    ):
        return True
    kwargs, problems = parse_kohya_args(a["lr_scheduler_args"].value or [])
    lr_end = kwargs.get("lr_end", 1e-7) if not problems else 1e-7
    if isinstance(lr_end, int | float) and lr_end < 0:
        return True
    conv.invalid(
        name.key,
        name.value,
        name.source,
        f"transformers' polynomial schedule raises `lr_end ({lr_end}) must be smaller than initial lr (0)`: "
        "it reads the optimizer's default rate, the learning_rate 0 kohya passes",
        help="use another lr_scheduler (linear, cosine, constant, ...)",
    )
    return False


def _train_db_unet_trains_anyway(
    a: Args, unet_lr: Legacy, text_encoder: bool, kind: str, conv: Conversion
) -> bool | None:
    """train_db.py's learning_rate 0 where the optimizer does not take the U-Net group's rate: dadaptation's
    DAdaptLion steps every group by d x the largest group rate (the text encoder's), and Adafactor's relative
    step ignores the rates (kohya removes them). The U-Net trains as the text encoder does: dbspec's run with
    optimizer.lr = learning_rate_te, the denoiser and text encoder training (True).

    Without a positive learning_rate_te Adafactor's relative step still trains every tensor in the optimizer
    (the U-Net; the text encoder while it trains) at its own step: optimizer.lr (and text_encoder_lr) =
    the relative step's first rate, only the logged initial one (True). DAdaptLion's largest rate is then
    the text-encoder group's, which exists when the encoder is built into the optimizer
    (stop_text_encoder_training None or >= 0) with learning_rate_te given: with stop_text_encoder_training 0
    that group never gets a gradient, yet its rate steps the U-Net (optimizer.lr = learning_rate_te, the
    text encoder untrained, True); else the largest rate is 0 and nothing moves (None, DBS403)."""
    te = a["learning_rate_te"]
    if kind == "adafactor" and not (text_encoder and te.value):
        rate = relative_step_first_rate(a)
        why = (
            "Adafactor's relative step ignores the groups' rates (kohya removes them): every tensor in "
            f"the optimizer trains at its own step; {rate:g} is the relative step's first rate, only the "
            "logged initial one"
        )
        conv.mapped(unet_lr, ("optimizer", "lr"), rate, comment=conv.comment(unet_lr, why), note=why)
        if text_encoder:
            conv.put(("optimizer", "text_encoder_lr"), rate, conv.comment(unet_lr, why))
        return True
    stop = a["stop_text_encoder_training"].value
    te_group = te.value is not None and (stop is None or int(stop) >= 0)
    if not te_group or not te.value:
        conv.unsupported(
            unet_lr,
            "train_db.py steps every group at learning rate 0 and DAdaptLion steps each by d x the largest "
            "group rate, 0 here: nothing trains",
            help="give learning_rate the rate the U-Net should have",
        )
        return None
    why = (
        "Adafactor's relative step ignores the groups' rates (kohya removes them): the U-Net trains as the "
        "text encoder does, at its own relative step"
        if kind == "adafactor"
        else "dadaptation's DAdaptLion steps every group by d x the largest group's rate, the text "
        "encoder's: the U-Net trains at it"
        + ("" if text_encoder else " (the text encoder's group, never given a gradient, trains nothing)")
    )
    conv.mapped(unet_lr, ("optimizer", "lr"), float(te.value), comment=conv.comment(unet_lr, why), note=why)
    if not text_encoder:
        conv.record(te, "mapped", "optimizer.lr")
    return True


def _train_db_frozen_unet(a: Args, unet_lr: Legacy, text_encoder: bool, conv: Conversion) -> bool | None:
    """train_db.py with learning_rate 0 and max_grad_norm 0 as `train.denoiser = false` (False): the U-Net's
    gradients change nothing, the same run, cheaper. None: nothing trains."""
    te = a["learning_rate_te"]
    if not text_encoder or not te.value:
        conv.unsupported(
            unet_lr,
            "train_db.py would train the U-Net and text encoder at a learning rate of 0 (without "
            "learning_rate_te they share it, and a stopped text encoder leaves only the U-Net): a run that "
            "changes nothing",
        )
        return None
    why = "train_db.py steps the U-Net at learning rate 0: its weights never change"
    conv.mapped(unet_lr, ("train", "denoiser"), False, comment=conv.comment(unet_lr, why))
    return False


def _text_encoder_lr(
    a: Args,
    script: str,
    lr: Legacy,
    trains: bool,
    conv: Conversion,
    idle_file: bool = False,
    clip_g_modules: bool = True,
) -> Legacy | None:
    if script == "train_db":
        te = a["learning_rate_te"]
        return te if te.value is not None else lr
    if script == "sdxl_train":
        te1, te2 = a["learning_rate_te1"], a["learning_rate_te2"]
        values = [x.value if x.value is not None else lr.value for x in (te1, te2)]
        if values[0] != values[1] and not trains:
            for x in (te1, te2):
                if x.given:
                    conv.inert(x, "the text encoders do not train (no --train_text_encoder)")
        elif values[0] != values[1] and values[1] == 0:
            conv.mapped(
                te2,
                ("train", "text_encoder_2"),
                False,
                comment=conv.comment(te2, "sdxl_train.py trains a text encoder only when its rate is not 0"),
            )
        elif values[0] != values[1] and 0 in values:  # the first at rate 0: the second trains alone
            why = "sdxl_train.py trains a text encoder only when its rate is not 0"
            conv.mapped(te1, ("train", "text_encoder"), False, comment=conv.comment(te1, why))
            conv.put(
                ("train", "text_encoder_2"), True, conv.comment(te1, "the second text encoder trains alone")
            )
            # its rate becomes text_encoder_lr (text_encoder_2_lr derives from it)
            return te2 if te2.value is not None else lr
        elif values[0] != values[1] and te2.given:
            conv.mapped(te2, ("optimizer", "text_encoder_2_lr"), float(values[1]))
        elif values[0] != values[1]:  # te1 given, te2 falls back to learning_rate
            conv.put(
                ("optimizer", "text_encoder_2_lr"), float(values[1]), conv.comment(lr, "learning_rate_te2")
            )
        return te1 if te1.value is not None else te2 if te2.value is not None else lr
    module = a["network_module"].value
    if script == "flux_train_network" and _t5_only(a, script) and module != "lycoris.kohya":
        return _t5_rate(a, lr)  # LyCORIS has one text group, at the first value (lora_text_encoder_lr)
    te = lora_text_encoder_lr(a)
    if script == "sd3_train_network" and trains and module != "lycoris.kohya" and clip_g_modules:
        return _sd3_clip_g_lr(a, te, conv, idle_file)
    if script == "sd3_train_network" and trains and module != "lycoris.kohya":
        return te  # a --dim_from_weights file without CLIP-G modules: kohya reads CLIP-L's rate alone
    elif module == "networks.lora_flux" and conv.values.get(("train", "t5"), (False, ""))[0]:
        return te  # T5-XXL trains at the second value (lora_flux.t5_trains; CLIP-L's rate is `te`)
    elif isinstance(a["text_encoder_lr"].value, list) and len(a["text_encoder_lr"].value) > 1 and trains:
        # LyCORIS's network has no prepare_optimizer_params_with_multiple_te_lrs either
        conv.notes.append(
            f"kohya {module} trains every text encoder at the first text_encoder_lr ({te.value}); "
            "the other values are not used"
        )
    return te


def _sd3_clip_g_lr(a: Args, te: Legacy, conv: Conversion, idle_file: bool = False) -> Legacy:
    """lora_sd3's prepare_optimizer_params_with_multiple_te_lrs: CLIP-L at text_encoder_lr's first value,
    CLIP-G at its second (one value: both), T5-XXL at the third with train_t5xxl (lora_flux.train_t5); a rate
    of 0 leaves that encoder's LoRA out of the optimizer (train.text_encoder_2 = false for CLIP-G). Returns
    the rate of dbspec's text_encoder_lr: CLIP-L's (`te`), or CLIP-G's where it trains alone
    (_sd3_clip_g_alone: CLIP-L at 0)."""
    given = a["text_encoder_lr"]
    if not (isinstance(given.value, list) and len(given.value) > 1):
        return te
    first, second = float(given.value[0]), float(given.value[1])
    if second == first:
        return te
    if first == 0:  # CLIP-G trains alone: its rate is text_encoder_lr (text_encoder_2_lr derives from it)
        return attrs.evolve(given, value=second)
    if second == 0 and not _file_refused(a, conv):
        # its modules still count in the clip: kept idle. create_network's fresh modules, or a file's loaded
        # into them (idle_text_modules let them through); --dim_from_weights: the file's alone (file_idle)
        weights = bool(a["network_weights"].value)
        if idle_file if a["dim_from_weights"].value else idle_kohya(a, "sd3_train_network", weights):
            conv.put(("train", "text_encoder_idle"), "kohya", conv.comment(given, IDLE_NOTE))
        else:
            clipped_idle_text(a, given, "CLIP-G's", conv)
    if second == 0:
        conv.put(
            ("train", "text_encoder_2"), False, conv.comment(given, "CLIP-G's rate 0: kohya skips its group")
        )
    else:
        conv.put(
            ("optimizer", "text_encoder_2_lr"), second, conv.comment(given, "CLIP-G's rate: the second value")
        )
    return te


def _rates(conv: Conversion) -> set[float]:
    """The learning rates the converted spec gives the denoiser and the text encoders, as written so far."""
    written = {path: value for path, (value, _) in conv.values.items()}
    lr = written[("optimizer", "lr")] if ("optimizer", "lr") in written else _OPTIMIZER_DEFAULTS["lr"]
    rates = {lr}
    trains_text = any(written.get(("train", k), False) for k in ("text_encoder", "text_encoder_2"))
    if trains_text and ("optimizer", "text_encoder_lr") in written:
        rates.add(written[("optimizer", "text_encoder_lr")])
    return rates


def _one_rate_fits(kind: str, kind_arg: Legacy, conv: Conversion) -> bool:
    """dadaptation's Adam, AdamPreprint, Lion and SGD raise on parameter groups with different rates, a group
    at rate 0 aside (`group_lr not in [lr, 0.0]`: networks.lora_fa's text encoder kept at 0)."""
    rates = {rate for rate in _rates(conv) if rate}
    if kind not in ("dadapt_adam", "dadapt_adam_preprint", "dadapt_lion", "dadapt_sgd") or len(rates) < 2:
        return True
    conv.invalid(
        kind_arg.key,
        kind_arg.value,
        kind_arg.source,
        f"dadaptation's {kind_arg.value} raises on parameter groups with different learning rates; the U-Net "
        f"and text encoder train at {', '.join(f'{r:g}' for r in sorted(rates))}",
        help="give unet_lr and text_encoder_lr the same value",
    )
    return False


def _positive_lr_fits(a: Args, kind: str, kind_arg: Legacy, conv: Conversion) -> bool:
    """kohya passes lr=learning_rate to the optimizer's constructor whatever unet_lr, text_encoder_lr or
    learning_rate_te say, and some constructors refuse 0: came_pytorch's CAME and lion_pytorch's Lion assert
    lr > 0, dadaptation's classes (but DAdaptLion) and prodigyopt's Prodigy raise ValueError. A learning_rate
    of 0 (a frozen U-Net, or rates given per part only) stops kohya with those."""
    lr = a["learning_rate"]
    if kind not in LR_ZERO_STOPS or float(lr.value) > 0:
        return True
    raises = "asserts lr > 0" if kind in ("came", "lion") else "raises ValueError for lr <= 0"
    error = "AssertionError" if kind in ("came", "lion") else "ValueError"
    conv.invalid(
        lr.key,
        lr.value,
        lr.source,
        f"{kind_arg.value} {raises} and kohya's get_optimizer passes it lr=learning_rate ({lr.value}) "
        f"({error})",
        help="give learning_rate a positive value (the parts' own rates still apply to their groups; "
        "train_db.py's U-Net then trains at it), or pick an optimizer that takes lr 0",
    )
    return False


def _full_path_help(name: str) -> str:
    """The class path kohya's help asks for, for a bare AdEMAMix (or CAME) name."""
    if name.lower() == "came":
        return 'optimizer_type = "came_pytorch.CAME"'
    if name.lower() in ("pagedlion", "pagedlion32bit"):
        return 'optimizer_type = "bitsandbytes.optim.PagedLion"'
    for path in ("AdEMAMix8bit", "PagedAdEMAMix8bit", "PagedAdEMAMix32bit", "AdEMAMix32bit", "PagedAdEMAMix"):
        if name.lower() == path.lower():
            return f'optimizer_type = "bitsandbytes.optim.{path}"'
    return 'optimizer_type = "bitsandbytes.optim.AdEMAMix"' if "ademamix" in name.lower() else ""


def map_optimizer(a: Args, conv: Conversion) -> None:
    kind_arg = a["optimizer_type"]
    legacy_flags = [a[k] for k in ("use_8bit_adam", "use_lion_optimizer") if a[k].value]
    if legacy_flags and kind_arg.value:
        conv.invalid(
            legacy_flags[0].key,
            True,
            legacy_flags[0].source,
            "kohya asserts optimizer_type and use_8bit_adam/use_lion_optimizer are not used together",
        )
        return
    if legacy_flags:
        name = "AdamW8bit" if legacy_flags[0].key == "use_8bit_adam" else "Lion"
        kind_arg = attrs.evolve(legacy_flags[0], value=name)
    name = kohya_optimizer(kind_arg.value)
    if name.kind is None and name.crashes:
        conv.invalid(
            kind_arg.key, kind_arg.value, kind_arg.source, name.why, help=_full_path_help(kind_arg.value)
        )
        return
    if name.kind is None:
        conv.unsupported(kind_arg, name.why)
        return
    if name.why:
        conv.differs(kind_arg, name.why, ("optimizer", "kind"), name.kind)
    else:
        conv.mapped(kind_arg, ("optimizer", "kind"), name.kind)
    args = a["optimizer_args"]
    kwargs, problems = parse_kohya_args(args.value or [])
    problems += kohya_constructor_problems(kind_arg.value, kwargs)
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    if problems:
        return
    if name.nesterov and "momentum" in kwargs and not kwargs["momentum"]:
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"`momentum={kwargs['momentum']}`: {kind_arg.value} is torch SGD with nesterov=True, which "
            "refuses momentum 0 (ValueError)",
        )
        return
    if name.nesterov and "dampening" in kwargs and kwargs["dampening"]:
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"`dampening={kwargs['dampening']}`: {kind_arg.value} is torch SGD with nesterov=True, which "
            "refuses dampening (ValueError: Nesterov momentum requires a momentum and zero dampening)",
        )
        return
    if not _one_rate_fits(name.kind, kind_arg, conv):
        return
    if not _positive_lr_fits(a, name.kind, kind_arg, conv):
        return
    if name.dotted and name.kind == "adafactor" and kwargs.get("warmup_init", False):
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"{kind_arg.value} is built as given, and transformers raises `warmup_init=True requires "
            "relative_step=True`, which refuses the lr kohya passes (kohya's fix-up applies to "
            "optimizer_type Adafactor only)",
            help='use optimizer_type = "Adafactor"',
        )
        return
    if name.dotted and name.kind == "adafactor" and kwargs.get("relative_step", True):
        conv.invalid(
            args.key,
            args.value,
            args.source,
            f"{kind_arg.value} is built as given (kohya's Adafactor fix-ups apply to optimizer_type "
            "Adafactor only) with lr=learning_rate, and transformers raises `Cannot combine manual lr and "
            "relative_step=True options` unless optimizer_args give relative_step=False",
            help='use optimizer_type = "Adafactor", or add relative_step=False to optimizer_args',
        )
        return
    kind = adamw_variant(kind_arg.value, lion_variant(ademamix_variant(name.kind, kwargs), kwargs), kwargs)
    if kind != name.kind:  # bitsandbytes' is_paged / optim_bits pick the paged or 8-bit class's update
        conv.put(("optimizer", "kind"), kind, conv.comment(args, f"{kind_arg.value} with {args.value}"))
    ignored = {
        **bnb_ignored(kind_arg.value, kind, kwargs),
        **print_only(kind, kwargs),
        **unread_arguments(kind_arg.value, kwargs),
    }
    if ignored:
        conv.ignored(args, "; ".join(f"`{k}={kwargs[k]!r}`: {why}" for k, why in ignored.items()))
        kwargs = {k: v for k, v in kwargs.items() if k not in ignored}
    decoupled = lion_decoupled_decay(kwargs, float(a["learning_rate"].value)) if kind == "lion" else None
    settings = optimizer_settings(kind, decoupled or kwargs, nesterov=name.nesterov)
    defaults = Optimizer(kind=kind)
    for key, value in settings.values.items():
        if value == getattr(defaults, key):
            continue
        given = key in settings.given
        conv.put(
            ("optimizer", key),
            value,
            conv.comment(
                args if given else kind_arg, "" if given else f"{kind_arg.value or 'AdamW'} default"
            ),
        )
    if decoupled and decoupled["weight_decay"]:
        conv.put(
            ("optimizer", "weight_decay"),
            decoupled["weight_decay"],
            conv.comment(args, "lion_pytorch's decoupled_weight_decay: weight_decay / learning_rate"),
        )
    if settings.unsupported:
        rest = ", ".join(
            f"{k}={v}" + (f" ({settings.why[k]})" if k in settings.why else "")
            for k, v in settings.unsupported.items()
        )
        conv.unsupported(args, f"optimizer arguments dbspec does not set: {rest}")
    elif args.given:
        conv.record(args, "mapped", "optimizer")
    norm = a["max_grad_norm"]
    if norm.value != 1.0:
        conv.mapped(norm, ("optimizer", "max_grad_norm"), float(norm.value))
    else:
        conv.record(norm, "mapped", "optimizer.max_grad_norm")
    _fused_clipping(a, conv)


def _fused_clipping(a: Args, conv: Conversion) -> None:
    """sdxl_train.py's --fused_backward_pass / --fused_optimizer_groups step from each parameter's gradient
    hook and clip that gradient there, on its own (accelerator.clip_grad_norm_(parameter, max_grad_norm))."""
    for key in ("fused_backward_pass", "fused_optimizer_groups"):
        if key in a and a[key].value:
            if key == "fused_backward_pass" and not _fused_backward_pass_runs(a, conv):
                return
            if not _fused_clip_runs(a, key, conv):
                return
            if a["max_grad_norm"].value:
                conv.mapped(
                    a[key],
                    ("optimizer", "clip_mode"),
                    "norm_per_tensor",
                    note="kohya clips each parameter's gradient by its own norm in the backward hook",
                )
            if key == "fused_optimizer_groups":
                if not _fused_schedules_run(a, conv):
                    return
                _optimizer_groups(a, conv)
            elif "fused_optimizer_groups" in a and a["fused_optimizer_groups"].value:
                _first_group_only(a, conv)
            return


def _fused_schedules_run(a: Args, conv: Conversion) -> bool:
    """--fused_optimizer_groups calls get_optimizer once per chunk. Under Adafactor's relative step the first
    call sets learning_rate to None and lr_scheduler to `adafactor:<learning_rate>`, the second writes
    `adafactor:None`, and get_scheduler_fix's float() rejects it: with two optimizers or more kohya stops
    (unless lr_scheduler_type, which get_scheduler_fix reads first). With --block_lr, block_lr.py says so."""
    if not adafactor_relative_step(a) or a["lr_scheduler_type"].value:
        return True
    if "block_lr" in a and a["block_lr"].value:
        return True  # block_lr.py counts the chunks over the block groups' rates
    lr = float(a["learning_rate"].value or 0)
    if fused_optimizer_count(a, [lr]) < 2:
        return True
    groups = a["fused_optimizer_groups"]
    conv.invalid(
        groups.key,
        groups.value,
        groups.source,
        "with Adafactor's relative step kohya builds one optimizer per chunk; get_optimizer sets "
        'learning_rate to None at the first, so the second writes lr_scheduler "adafactor:None" and '
        "get_scheduler_fix raises (ValueError: could not convert string to float: 'None')",
        help="pass relative_step=False in optimizer_args, or remove fused_optimizer_groups",
    )
    return False


def _fused_backward_pass_runs(a: Args, conv: Conversion) -> bool:
    """kohya asserts (train_util.get_optimizer) that --fused_backward_pass comes with optimizer_type
    Adafactor and gradient_accumulation_steps 1."""
    fused = a["fused_backward_pass"]
    kind = str(a["optimizer_type"].value or "AdamW")
    if kind.lower() != "adafactor" or a["use_8bit_adam"].value or a["use_lion_optimizer"].value:
        conv.invalid(
            fused.key,
            fused.value,
            fused.source,
            f"kohya asserts that fused_backward_pass runs with optimizer_type Adafactor only (it is {kind})",
            help='use optimizer_type = "Adafactor", or remove fused_backward_pass',
        )
        return False
    accumulation = a["gradient_accumulation_steps"].value
    if accumulation and int(accumulation) > 1:
        conv.invalid(
            fused.key,
            fused.value,
            fused.source,
            "kohya asserts that fused_backward_pass runs with gradient_accumulation_steps 1 (it is "
            f"{accumulation})",
            help="use gradient_accumulation_steps = 1 (a larger train_batch_size), or remove "
            "fused_backward_pass",
        )
        return False
    return True


def _fused_clip_runs(a: Args, key: str, conv: Conversion) -> bool:
    """Under mixed_precision fp16 the hooks' clip (accelerator.clip_grad_norm_, on the last micro-batch)
    unscales every optimizer's gradients through accelerate's grad scaler at each parameter: torch's
    GradScaler refuses a second unscale_ before update(), so kohya raises at the second hooked parameter.
    (full_fp16 with --fused_backward_pass says so itself, model.py.)

    Without clipping the hooks step from still-scaled gradients (accelerator.backward scales the loss by the
    scaler's scale first). --fused_backward_pass: the patched Adafactor's step_param on the fp32 (or, with
    full_fp16, fp16) gradients of loss x 65536, and nothing steps accelerate's optimizer, so scaler.update()
    never runs and the scale never changes: precision.fp16_gradients = "scaled" (full_fp16: model.py).
    --fused_optimizer_groups: `optimizers[0]` is the bare optimizer (only the name `optimizer` was rebound to
    accelerate's wrapper) and steps from the scaled gradients, the later ones were prepared one by one and
    step through accelerate's AcceleratedOptimizer.step (scaler.step: unscale by the current scale, skip on
    inf; scaler.update) as their chunks complete, their LR schedules skipping with them:
    fp16_gradients = "scaled_first", each chunk its own optimizer (optimizer.split, _optimizer_groups)."""
    norm, mixed = a["max_grad_norm"], a["mixed_precision"]
    if str(mixed.value) != "fp16":
        return True
    full_fp16 = "full_fp16" in a and a["full_fp16"].value
    fused = a[key]
    if not norm.value:
        if key == "fused_backward_pass" and not full_fp16:  # full_fp16: model.py puts it with fp16 weights
            conv.mapped(
                fused,
                ("precision", "fp16_gradients"),
                "scaled",
                note="under mixed_precision fp16 kohya's hooks step Adafactor from the fp32 gradients of "
                "loss x 65536, never unscaled; nothing calls scaler.update(), so the scale never changes "
                "and no step is skipped",
            )
        elif key == "fused_optimizer_groups":
            conv.mapped(
                fused,
                ("precision", "fp16_gradients"),
                "scaled_first",
                note="under mixed_precision fp16 kohya's first optimizer (bare) steps from the scaled "
                "gradients, the others through accelerate's grad scaler one by one",
            )
        return True
    if key == "fused_backward_pass" and full_fp16:
        return False  # refused there, with full_fp16 (model.py _map_full_fp16)
    conv.invalid(
        fused.key,
        fused.value,
        fused.source,
        f"with mixed_precision fp16 and max_grad_norm {norm.value:g} kohya's gradient hooks clip each "
        "parameter through accelerate's grad scaler, whose unscale_ raises at the second parameter "
        "(RuntimeError: unscale_() has already been called on this optimizer since the last update())",
        help="use mixed_precision bf16, or max_grad_norm = 0",
    )
    return False


def _first_group_only(a: Args, conv: Conversion) -> None:
    """--fused_backward_pass with --fused_optimizer_groups N: kohya builds the N optimizers (and schedules)
    but patches and hooks only its first (`optimizer`, accelerate's wrapper of optimizers[0]) with the fused
    Adafactor step; the other optimizers are never stepped, so only the first chunk's tensors train:
    optimizer.split = N with split_train = "first"."""
    groups = a["fused_optimizer_groups"]
    conv.mapped(
        groups,
        ("optimizer", "split"),
        int(groups.value),
        note=f"with --fused_backward_pass kohya builds {groups.value} optimizers but hooks only the first: "
        'split_train = "first", the later chunks\' tensors keep their weights',
    )
    conv.put(
        ("optimizer", "split_train"),
        "first",
        conv.comment(groups, "with fused_backward_pass only the first optimizer's tensors step"),
    )


def _optimizer_groups(a: Args, conv: Conversion) -> None:
    """--fused_optimizer_groups N: one optimizer (and LR scheduler) per chunk of ceil(tensors / N) of the
    U-Net's (kohya's original-layout order) then the text encoders' tensors, a new chunk where the rate
    changes. Prodigy and D-Adaptation estimate d over their own chunk: optimizer.split = N reproduces them.
    Every other optimizer updates each tensor on its own, so one optimizer steps alike; the split is left
    out (one optimizer state, and the spec runs under FSDP and DeepSpeed too).

    With gradient_accumulation_steps > 1 the chunks differ in when they step: kohya's hooks call every
    optimizer's step and zero_grad after each micro-batch, but those of optimizers[1:] are accelerate's
    wrappers (prepared one by one), which do nothing until the last micro-batch (sync_gradients), so they
    accumulate; optimizers[0] in the list is the bare optimizer (only the `optimizer` name was rebound to its
    wrapper), which steps from each micro-batch's gradient (loss / accumulation, accelerate's backward) and
    clears it. The LR schedules step once per optimizer step (accelerate's wrapper again) and the hooks clip
    on the last micro-batch only: optimizer.split = N with split_first_step = "micro_batch", for every
    kind."""
    groups = a["fused_optimizer_groups"]
    kind = str(conv.values[("optimizer", "kind")][0]) if ("optimizer", "kind") in conv.values else "adamw"
    accumulation = a["gradient_accumulation_steps"].value
    if accumulation and int(accumulation) > 1:
        conv.mapped(
            groups,
            ("optimizer", "split"),
            int(groups.value),
            note=f"one {kind} per chunk; with gradient_accumulation_steps {accumulation} kohya's first "
            "optimizer steps after every micro-batch, the others once per step: "
            'split_first_step = "micro_batch"',
        )
        conv.put(
            ("optimizer", "split_first_step"),
            "micro_batch",
            conv.comment(
                groups,
                f"gradient_accumulation_steps {accumulation}: the first optimizer is not accelerate's "
                "wrapper and steps every micro-batch",
            ),
        )
    elif kind.startswith(("prodigy", "dadapt")):
        conv.mapped(
            groups,
            ("optimizer", "split"),
            int(groups.value),
            note=f"one {kind} optimizer per chunk of the tensors in kohya's order, each estimating its own d",
        )
    elif conv.values.get(("precision", "fp16_gradients"), (None,))[0] == "scaled_first":  # _fused_clip_runs
        conv.mapped(
            groups,
            ("optimizer", "split"),
            int(groups.value),
            note=f"one {kind} per chunk: under mixed_precision fp16 kohya's first optimizer steps from the "
            "still-scaled gradients and each other through the grad scaler on its own: "
            'precision.fp16_gradients = "scaled_first"',
        )
    else:
        conv.record(
            groups,
            "mapped",
            "optimizer",
            note=f"{kind} updates each tensor on its own: kohya's {groups.value} optimizers step as one does",
        )


def _t5_only(a: Args, script: str) -> bool:
    """The script trains a family whose one text encoder is T5-XXL (flux_train_network.py --model_type
    chroma): no CLIP-L (kohya's dummy stands in)."""
    from dbspec.convert.kohya.flow import flow_family
    from dbspec.families import family_spec

    return not family_spec(flow_family(a, script)).clip_text_encoders


def _t5_rate(a: Args, lr: Legacy) -> Legacy:
    """lora_flux's prepare_optimizer_params_with_multiple_te_lrs: T5-XXL (lora_te3) at text_encoder_lr's
    second value (one value: both; none: learning_rate); on Chroma it is dbspec's text_encoder_lr."""
    te = a["text_encoder_lr"]
    values = te.value if isinstance(te.value, list) else [te.value] if te.value is not None else []
    return attrs.evolve(te, value=float(values[1] if len(values) > 1 else values[0])) if values else lr

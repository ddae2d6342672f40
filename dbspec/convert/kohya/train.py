"""kohya's run length, LR schedule, text-encoder training, learning rates and optimizer -> [schedule],
[train] and [optimizer]."""

from __future__ import annotations

import ast

import attrs

from dbspec.compiler.schedule import KOHYA_SCHEDULES
from dbspec.convert.common.core import Conversion, Legacy, map_schedule_name
from dbspec.convert.common.optimizers import (
    kohya_constructor_problems,
    kohya_optimizer,
    optimizer_settings,
    parse_kohya_args,
)
from dbspec.spec.model import Optimizer

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
            f"the converted spec's {dbspec_batches} (kohya ignores EXIF rotation when it places images in "
            "buckets)"
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
TORCH_SCHEDULERS = {
    "CosineAnnealingLR": ("cosine_annealing", {"T_max": "t_max", "eta_min": "eta_min"}),
    "CosineAnnealingWarmRestarts": (
        "cosine_annealing_warm_restarts",
        {"T_0": "t_max", "T_mult": "t_mult", "eta_min": "eta_min"},
    ),
}


def map_lr_schedule(a: Args, total: int | None, conv: Conversion) -> None:
    name, warm = a["lr_scheduler"], a["lr_warmup_steps"]
    if a["lr_scheduler_type"].value:
        _map_torch_scheduler(a, conv)
        return
    if a["lr_scheduler_args"].value:
        conv.unsupported(
            a["lr_scheduler_args"],
            f"arguments passed to the {name.value} function (dbspec's schedule settings are power, "
            "min_lr_ratio, decay_steps and cycles)",
        )
    else:
        conv.record(a["lr_scheduler_args"], "mapped", "schedule")
    if not map_schedule_name(conv, name, KOHYA_SCHEDULES):
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
        _map_warmup(warm, total, conv)
    _schedule_shape(a, name.value, total, conv)


def _map_warmup(warm: Legacy, total: int | None, conv: Conversion) -> None:
    if isinstance(warm.value, float) and warm.value:
        steps = _ratio_steps(warm, total, conv)
        if steps is not None and _warmup_fits(warm, steps, total, conv):
            conv.mapped(
                warm,
                ("schedule", "warmup_steps"),
                steps,
                comment=conv.comment(warm, f"ratio {warm.value} x {total} steps"),
            )
    elif warm.value and _warmup_fits(warm, warm.value, total, conv):
        conv.mapped(warm, ("schedule", "warmup_steps"), warm.value)
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


def _map_torch_scheduler(a: Args, conv: Conversion) -> None:
    """kohya's --lr_scheduler_type with --lr_scheduler_args: a torch scheduler class built with those
    kwargs."""
    kind, args, warm = a["lr_scheduler_type"], a["lr_scheduler_args"], a["lr_warmup_steps"]
    cls = kind.value.removeprefix("torch.optim.lr_scheduler.")
    if cls not in TORCH_SCHEDULERS:
        conv.unsupported(
            kind,
            f"dbspec plans the torch schedulers {', '.join(TORCH_SCHEDULERS)} only (their curve is computed "
            "without torch for the plan)",
        )
        return
    schedule, names = TORCH_SCHEDULERS[cls]
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
    if unknown or kwargs.get("last_epoch", -1) != -1:
        conv.unsupported(args, f"{cls} arguments dbspec has not: {', '.join(unknown) or 'last_epoch'}")
        return
    first = next(iter(names))  # the required period argument: T_max, T_0
    if first not in kwargs:
        conv.invalid(args.key, args.value, args.source, f"torch's {cls} needs {first}")
        return
    conv.mapped(kind, ("schedule", "lr_schedule"), schedule)
    for key, value in kwargs.items():
        if key in names:
            value = float(value) if names[key] == "eta_min" else value  # noqa: PLW2901 - TOML floats stay floats
            conv.put(("schedule", names[key]), value, conv.comment(args, f"{key}={value!r}"))
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


def _scheduler_kwargs(args: Legacy, conv: Conversion) -> dict | None:
    """kohya's parse of --lr_scheduler_args: `key=value`, the value a Python literal."""
    kwargs = {}
    for item in args.value or []:
        key, sep, text = str(item).partition("=")
        try:
            value = ast.literal_eval(text) if sep else None
        except (ValueError, SyntaxError):
            value = None
        if not sep or value is None or "=" in text:
            conv.invalid(args.key, args.value, args.source, f"`{item}` is not key=<Python literal>")
            return None
        kwargs[key.strip()] = value
    return kwargs


def _warmup_fits(warm: Legacy, steps: int, total: int | None, conv: Conversion) -> bool:
    """kohya runs a warm-up as long as the run (the LR never reaches learning_rate);
    dbspec plans refuse it."""
    if total is None or steps < total:
        return True
    conv.unsupported(
        warm,
        f"a warm-up of {steps} steps is not shorter than the {total}-step run (kohya's LR never reaches "
        "learning_rate); dbspec needs warmup_steps < steps",
        help="shorten the warm-up (or lengthen the run) in the legacy config",
    )
    return False


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
    elif name == "cosine_with_min_lr":
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


def map_text_encoder(a: Args, script: str, total: int | None, conv: Conversion) -> bool:
    """[train] text_encoder and its stop step; returns whether the text encoder trains."""
    if script == "train_db":
        return _train_db_text_encoder(a, total, conv)
    cached = "cache_text_encoder_outputs" in a and a["cache_text_encoder_outputs"]
    if script == "sdxl_train":
        flag = a["train_text_encoder"]
        if flag.value and cached.value:
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
    if cached and cached.value and not unet_only.value:
        conv.invalid(
            cached.key,
            True,
            cached.source,
            "kohya asserts network_train_unet_only when text-encoder "
            "outputs are cached (a text-encoder LoRA cannot train on cached outputs)",
        )
    te_lr = lora_text_encoder_lr(a)
    if not unet_only.value and te_lr.value == 0:
        conv.record(unet_only, "mapped", "train.text_encoder")
        conv.mapped(
            te_lr,
            ("train", "text_encoder"),
            False,
            comment=conv.comment(te_lr, "networks.lora skips parameters whose learning rate is 0"),
        )
        return False
    trains = not unet_only.value
    _write_flag(conv, unet_only, trains, note="kohya trains text-encoder LoRA unless network_train_unet_only")
    if te_only.value:
        conv.mapped(te_only, ("train", "denoiser"), False)
    return trains


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


def map_learning_rates(a: Args, script: str, text_encoder: bool, conv: Conversion) -> None:
    lr = a["learning_rate"]
    unet_lr = a["unet_lr"] if "unet_lr" in a and a["unet_lr"].value is not None else lr
    if not unet_lr.value and script in ("sdxl_train", "train_network", "sdxl_train_network"):
        # sdxl_train.py trains the U-Net only when learning_rate != 0; networks.lora skips groups with lr 0
        why = "sdxl_train.py trains the U-Net only when learning_rate != 0"
        if script != "sdxl_train":
            why = "networks.lora skips parameters whose learning rate is 0"
        conv.mapped(unet_lr, ("train", "denoiser"), False, comment=conv.comment(unet_lr, why))
    elif not unet_lr.value:
        conv.unsupported(
            unet_lr, "train_db.py would train the U-Net at a learning rate of 0 (a run that changes nothing)"
        )
        return
    else:
        conv.mapped(unet_lr, ("optimizer", "lr"), float(unet_lr.value))
    te = _text_encoder_lr(a, script, lr, text_encoder, conv)
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


def _text_encoder_lr(a: Args, script: str, lr: Legacy, trains: bool, conv: Conversion) -> Legacy | None:
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
    te = lora_text_encoder_lr(a)
    if isinstance(a["text_encoder_lr"].value, list) and len(a["text_encoder_lr"].value) > 1 and trains:
        conv.notes.append(
            f"kohya networks.lora trains every text encoder at the first text_encoder_lr ({te.value}); "
            "the other values are not used"
        )
    return te


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
    settings = optimizer_settings(name.kind, kwargs, nesterov=name.nesterov)
    for key, value in settings.values.items():
        if value == _OPTIMIZER_DEFAULTS[key]:
            continue
        source = args if key in kwargs else kind_arg
        conv.put(
            ("optimizer", key),
            value,
            conv.comment(source, "" if key in kwargs else f"{kind_arg.value or 'AdamW'} default"),
        )
    if settings.unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in settings.unsupported.items())
        conv.unsupported(args, f"optimizer arguments dbspec does not set: {rest}")
    elif args.given:
        conv.record(args, "mapped", "optimizer")
    norm = a["max_grad_norm"]
    if norm.value != 1.0:
        conv.mapped(norm, ("optimizer", "max_grad_norm"), float(norm.value))
    else:
        conv.record(norm, "mapped", "optimizer.max_grad_norm")

"""Whether a step-size-estimating optimizer holds a parameter group at rate 0 (issue 12).

kohya's networks.lora_fa keeps its text-encoder group in the optimizer at `text_encoder_lr` 0, ahead of the
U-Net's group; dbspec's text encoder at `optimizer.text_encoder_lr = 0` is the same group, after the
denoiser's. Each class below is run on both orders in tests/runtime/test_optim_zero_group.py: where this
says "", the group at rate 0 keeps its weights to the bit and the other group's steps are the same in both
orders (the group at rate 0 adds nothing to the estimate of d), so dbspec's held text encoder is kohya's run.
As read in dadaptation 3.2 and prodigyopt 1.1.2."""

from __future__ import annotations

from collections.abc import Sequence

# the classes that read the first group's rate as everyone's (dadaptation's DAdaptAdaGrad, DAdaptAdan and
# experimental DAdaptAdanIP: `lr = self.param_groups[0]["lr"]`)
_FIRST_GROUP_RATE = {
    "dadapt_adagrad": "DAdaptAdaGrad",
    "dadapt_adan": "DAdaptAdan",
    "dadapt_adan_ip": "DAdaptAdanIP",
}

# where the groups' order changes the run (the first group's rate read as everyone's; DAdaptLion's group at
# rate 0 feeding the estimate of d, summed in the groups' order): a group kept at rate 0 is not kohya's in
# dbspec's own order (DAdaptLion's is in kohya's, optimizer.group_order = "text_encoders_first")
ORDER_DEPENDENT = (*_FIRST_GROUP_RATE, "dadapt_lion")


def zero_group_moves(
    kind: str, weight_decay: float, betas: Sequence[float], decouple: bool, momentum: float
) -> str:
    """Why optimizer `kind` (a dadapt_* kind or prodigy) moves a group kept at rate 0 beside a group at a
    positive rate, or lets the group order change the run; "" where it holds that group still. `decouple`:
    the class's decoupled weight decay (optimizer.decouple: dadapt_adam's, dadapt_adam_preprint's and
    prodigy's, whose default is true); `momentum`: dadapt_sgd's."""
    if kind in _FIRST_GROUP_RATE:
        return (
            f"dadaptation's {_FIRST_GROUP_RATE[kind]} steps every group by d x the first group's rate "
            "(kohya's networks.lora_fa puts its text-encoder group first, so at rate 0 nothing trains; "
            "dbspec's denoiser group comes first, so the text encoder would train at its rate)"
        )
    if kind == "dadapt_lion":
        return (
            "dadaptation's DAdaptLion steps every group by d x the largest group's rate whatever its own, so "
            "the group at rate 0 trains and feeds the estimate of d"
        )
    if kind == "dadapt_adam" and decouple and weight_decay:
        return (
            "dadaptation's DAdaptAdam with decouple = true shrinks every group by its decoupled weight decay "
            f"({weight_decay:g}) at d x the largest group's rate, a group at rate 0 too"
        )
    # (Prodigy's coupled decay is added to the gradient, which a group at rate 0 never folds into exp_avg)
    if kind == "prodigy" and decouple and weight_decay:
        return (
            "prodigyopt's Prodigy (decoupled weight decay) shrinks every group by its weight decay "
            f"({weight_decay:g}) at d x the largest group's rate, a group at rate 0 too"
        )
    if kind == "prodigy" and not betas[0]:
        return (
            "prodigyopt's Prodigy with betas[0] = 0 steps every group by its raw gradient at d x the largest "
            "group's rate, a group at rate 0 too"
        )
    if kind == "dadapt_sgd" and momentum:
        return (
            "dadaptation's DAdaptSGD with momentum moves every group to p x momentum + start x (1 - "
            "momentum), which rounding moves off a group at rate 0's weights"
        )
    return ""


# the LR schedules that replace every group's rate with their own bounds (torch's OneCycleLR, CyclicLR), and
# the bounds each reads (spec [schedule] keys; a table gives each optimizer group its own)
_BOUND_SCHEDULES = {"one_cycle": ("max_lr",), "cyclic": ("base_lr", "max_lr")}


def schedule_lifts_zero(s, groups: Sequence[str]) -> str:
    """Why the LR schedule (spec [schedule] `s`) moves the optimizer groups `groups` (their runtime names:
    denoiser, text_encoder, ...) off rate 0, or "": OneCycleLR and CyclicLR set each group's rate from its
    bounds, so they lift it only where a bound above 0 is its (a max_lr of 0 is the group's own rate, 0, or
    a peak of 0: either way they hold it at 0); a positive eta_min lifts every group toward it. A group's
    LoRA+ up and lr_scale groups (`<name>_lora_up`, `<name>_x<s>`) are at rate 0 with it."""
    if not groups:
        return ""
    if s.lr_schedule in _BOUND_SCHEDULES:
        bounds = [
            f"{key} {value:g}"
            for key in _BOUND_SCHEDULES[s.lr_schedule]
            if (value := _largest_bound(getattr(s, key), groups))
        ]
        if not bounds:
            return ""
        return f"schedule.lr_schedule = {s.lr_schedule!r} sets its rate from its bounds ({', '.join(bounds)})"
    if s.eta_min > 0:
        return f"schedule.lr_schedule = {s.lr_schedule!r} lifts the LR to eta_min {s.eta_min:g}"
    return ""


def _largest_bound(value: float | dict[str, float], groups: Sequence[str]) -> float:
    """The largest of a bound's values for `groups` (the number every group takes, or a table's)."""
    if not isinstance(value, dict):
        return value
    mine = (
        rate
        for name, rate in value.items()
        for group in groups
        if name == group or name.startswith((f"{group}_lora_up", f"{group}_x"))
    )
    return max(mine, default=0.0)

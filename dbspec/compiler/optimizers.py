"""The optimizer settings beyond the common ones: D-Adaptation's, Prodigy's, Adafactor's, AdEMAMix's, the
schedule-free optimizers' and CAME's (kohya's optimizer_args)."""

from __future__ import annotations

from dbspec.plan.model import (
    BNB_MIN_8BIT_SIZE,
    AdafactorPlan,
    AdEMAMixPlan,
    CAMEPlan,
    DAdaptPlan,
    ProdigyPlan,
    ProdigyPlusPlan,
    ScheduleFreePlan,
)
from dbspec.spec.model import (
    ADEMAMIX_KINDS,
    BNB_8BIT_KINDS,
    CAME_KINDS,
    DADAPT_KINDS,
    PRODIGY_PLUS_KIND,
    SCHEDULEFREE_KINDS,
    Optimizer,
)

# dadaptation's per-kind constructor arguments beyond lr, betas, eps, weight_decay, momentum.
DADAPT_ARGS = {
    "dadapt_adam": ("d0", "growth_rate", "decouple", "use_bias_correction"),
    "dadapt_adam_preprint": ("d0", "growth_rate", "decouple"),
    "dadapt_adagrad": ("d0", "growth_rate"),
    "dadapt_adan": ("d0", "growth_rate", "no_prox"),
    "dadapt_adan_ip": ("d0", "growth_rate", "no_prox"),
    "dadapt_lion": ("d0",),
    "dadapt_sgd": ("d0", "growth_rate"),
}
# prodigyopt's Prodigy arguments beyond lr, betas, eps, weight_decay (fsdp_in_use: detected from the
# parameters, never set; dbspec's FSDP runs flatten them as torch's FSDP does)
PRODIGY_ARGS = (
    "d0",
    "d_coef",
    "growth_rate",
    "decouple",
    "use_bias_correction",
    "safeguard_warmup",
    "beta3",
    "slice_p",
)
# ProdigyPlusScheduleFree's arguments beyond lr, betas, eps, weight_decay
PRODIGY_PLUS_ARGS = ("d0", "d_coef", "beta3", "use_bias_correction")
ADAFACTOR_ARGS = (
    "relative_step",
    "scale_parameter",
    "warmup_init",
    "beta1",
    "clip_threshold",
    "decay_rate",
    "adafactor_eps",
)
ADEMAMIX_ARGS = ("alpha", "t_alpha", "t_beta3")
# schedulefree's per-class arguments beyond lr, betas, eps, weight_decay, momentum
SCHEDULEFREE_ARGS = {
    "adamw_schedulefree": ("schedulefree_warmup_steps", "schedulefree_r", "weight_lr_power"),
    "sgd_schedulefree": ("schedulefree_warmup_steps", "schedulefree_r", "weight_lr_power"),
    "radam_schedulefree": ("schedulefree_r", "weight_lr_power", "silent_sgd_phase"),
}
# came_pytorch's CAME arguments beyond lr, betas, weight_decay (clip_threshold is Adafactor's too)
CAME_ARGS = ("clip_threshold", "came_eps")
_KIND_ARGS = (
    "d0",
    "growth_rate",
    "decouple",
    "use_bias_correction",
    "no_prox",
    "d_coef",
    "safeguard_warmup",
    "beta3",
    "slice_p",
    *ADAFACTOR_ARGS,
    *ADEMAMIX_ARGS,
    "schedulefree_warmup_steps",
    "schedulefree_r",
    "weight_lr_power",
    "silent_sgd_phase",
    "came_eps",
    "decoupled_weight_decay",
    "min_8bit_size",
    "amsgrad",
    "dampening",
)
# kinds that use optimizer.momentum / three betas
MOMENTUM_KINDS = ("sgd", "dadapt_sgd", "dadapt_adagrad", "sgd_schedulefree")
NO_BETAS_KINDS = ("sgd", "adafactor", "dadapt_sgd", "dadapt_adagrad", "sgd_schedulefree")
THREE_BETAS_KINDS = ("dadapt_adan", "dadapt_adan_ip", *ADEMAMIX_KINDS, *CAME_KINDS)


def dadapt_plan(o: Optimizer) -> DAdaptPlan | None:
    if o.kind not in DADAPT_KINDS:
        return None
    return DAdaptPlan(
        d0=o.d0,
        growth_rate=o.growth_rate or None,
        decouple=o.decouple,
        use_bias_correction=o.use_bias_correction,
        no_prox=o.no_prox,
    )


def prodigy_plan(o: Optimizer) -> ProdigyPlan | None:
    """Prodigy's settings as the run passes them, each its effective value (decouple's and beta3's
    defaults are prodigyopt's: true, the square root of betas[1])."""
    if o.kind != "prodigy":
        return None
    return ProdigyPlan(
        d0=o.d0,
        d_coef=o.d_coef,
        growth_rate=o.growth_rate or None,
        decouple=o.decouple,
        use_bias_correction=o.use_bias_correction,
        safeguard_warmup=o.safeguard_warmup,
        beta3=o.beta3,
        slice_p=o.slice_p,
    )


def prodigy_plus_plan(o: Optimizer) -> ProdigyPlusPlan | None:
    if o.kind != PRODIGY_PLUS_KIND:
        return None
    return ProdigyPlusPlan(d0=o.d0, d_coef=o.d_coef, beta3=o.beta3, use_bias_correction=o.use_bias_correction)


def adafactor_plan(o: Optimizer) -> AdafactorPlan | None:
    if o.kind != "adafactor":
        return None
    return AdafactorPlan(
        relative_step=o.relative_step,
        scale_parameter=o.scale_parameter,
        warmup_init=o.warmup_init,
        beta1=o.beta1 or None,  # transformers' None: no first moment
        clip_threshold=o.clip_threshold,
        decay_rate=o.decay_rate,
        eps=(o.adafactor_eps[0], o.adafactor_eps[1]),
    )


def ademamix_plan(o: Optimizer) -> AdEMAMixPlan | None:
    if o.kind not in ADEMAMIX_KINDS:
        return None
    return AdEMAMixPlan(
        alpha=o.alpha,
        t_alpha=o.t_alpha or None,
        t_beta3=o.t_beta3 or None,
        eight_bit=o.kind.endswith("8bit"),
        paged=o.kind.startswith("paged_"),
    )


def schedulefree_plan(o: Optimizer) -> ScheduleFreePlan | None:
    if o.kind not in SCHEDULEFREE_KINDS:
        return None
    return ScheduleFreePlan(
        warmup_steps=o.schedulefree_warmup_steps if o.kind != "radam_schedulefree" else 0,
        r=o.schedulefree_r,
        weight_lr_power=o.weight_lr_power,
        silent_sgd_phase=o.silent_sgd_phase if o.kind == "radam_schedulefree" else False,
    )


def came_plan(o: Optimizer) -> CAMEPlan | None:
    if o.kind not in CAME_KINDS:
        return None
    return CAMEPlan(clip_threshold=o.clip_threshold, eps=(o.came_eps[0], o.came_eps[1]))


def min_8bit_size(o: Optimizer) -> int:
    """bitsandbytes' min_8bit_size for the 8-bit kinds; the other kinds keep no 8-bit state (the default)."""
    return o.min_8bit_size if o.kind in BNB_8BIT_KINDS else BNB_MIN_8BIT_SIZE


def relative_step(o: Optimizer) -> bool:
    return o.kind == "adafactor" and o.relative_step


def unused_args(kind: str) -> list[str]:
    """The D-Adaptation, Prodigy, Adafactor, AdEMAMix, schedule-free, CAME, RAdam, AdamW, SGD and
    bitsandbytes 8-bit options `kind` does not use."""
    used = (
        *DADAPT_ARGS.get(kind, ()),
        *(PRODIGY_ARGS if kind == "prodigy" else ()),
        *(("amsgrad",) if kind == "adamw" else ()),
        *(("dampening",) if kind == "sgd" else ()),
        *(ADAFACTOR_ARGS if kind == "adafactor" else ()),
        *(ADEMAMIX_ARGS if kind in ADEMAMIX_KINDS else ()),
        *SCHEDULEFREE_ARGS.get(kind, ()),
        *(CAME_ARGS if kind in CAME_KINDS else ()),
        *(PRODIGY_PLUS_ARGS if kind == PRODIGY_PLUS_KIND else ()),
        *(("decoupled_weight_decay",) if kind == "radam" else ()),
        *(("min_8bit_size",) if kind in BNB_8BIT_KINDS else ()),
    )
    return [name for name in _KIND_ARGS if name not in used]

"""The optimizer settings beyond the common ones: D-Adaptation's and Adafactor's (kohya's optimizer_args)."""

from __future__ import annotations

from dbspec.plan.model import AdafactorPlan, DAdaptPlan
from dbspec.spec.model import DADAPT_KINDS, Optimizer

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
ADAFACTOR_ARGS = ("relative_step", "scale_parameter", "warmup_init")
# kinds that use optimizer.momentum / three betas
MOMENTUM_KINDS = ("sgd", "dadapt_sgd", "dadapt_adagrad")
NO_BETAS_KINDS = ("sgd", "adafactor", "dadapt_sgd", "dadapt_adagrad")
THREE_BETAS_KINDS = ("dadapt_adan", "dadapt_adan_ip")


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


def adafactor_plan(o: Optimizer) -> AdafactorPlan | None:
    if o.kind != "adafactor":
        return None
    return AdafactorPlan(
        relative_step=o.relative_step, scale_parameter=o.scale_parameter, warmup_init=o.warmup_init
    )


def relative_step(o: Optimizer) -> bool:
    return o.kind == "adafactor" and o.relative_step


def unused_args(kind: str) -> list[str]:
    """The D-Adaptation and Adafactor options `kind` does not use."""
    used = (*DADAPT_ARGS.get(kind, ()), *(ADAFACTOR_ARGS if kind == "adafactor" else ()))
    return [
        name
        for name in ("d0", "growth_rate", "decouple", "use_bias_correction", "no_prox", *ADAFACTOR_ARGS)
        if name not in used
    ]

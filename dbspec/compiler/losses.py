"""Loss pass: the explicit loss graph and its one-line formula."""

from __future__ import annotations

from typing import Literal

import attrs

from dbspec.compiler.context import Context
from dbspec.plan.model import DatasetPlan, LossPlan, ModelPlan
from dbspec.spec.model import LoraAdapter


def plan_loss(ctx: Context, model: ModelPlan | None, datasets: tuple[DatasetPlan, ...]) -> LossPlan:
    spec = ctx.spec.loss
    has_class = any(d.role == "class" and d.images for d in datasets)
    prior = spec.prior if has_class else "none"
    masked = any(d.mask_source != "none" for d in datasets)
    target = model.prediction if model else "epsilon"
    plan = LossPlan(
        kind=spec.kind,
        huber_delta=spec.huber_delta,
        target=target,
        min_snr_gamma=spec.min_snr_gamma,
        noise_offset=spec.noise_offset,
        zero_terminal_snr=spec.zero_terminal_snr,
        masked=masked,
        prior=prior,
        prior_weight=spec.prior_weight if prior != "none" else 0.0,
        formula="",
        teacher=teacher_components(ctx, prior),
    )
    return attrs.evolve(plan, formula=formula(plan))


def teacher_components(ctx: Context, prior: str) -> tuple[Literal["unet"], ...]:
    """What a base-model prior keeps a frozen copy of. LoRA runs switch their adapters off instead; a full
    fine-tune copies the UNet it trains. A frozen UNet needs no copy (DBS226 refuses that case: the base text
    encoder would be needed, and the runtime does not keep one)."""
    if prior != "base_model" or isinstance(ctx.spec.adapter, LoraAdapter) or not ctx.spec.train.denoiser:
        return ()
    return ("unet",)


def formula(p: LossPlan) -> str:
    """E.g. `L = mean_inst[ minsnr5(t) * mse(v̂, v) * mask/area ] + 1 * mean_class[ mse(v̂, base(x_t)) ]`."""
    y = "ε" if p.target == "epsilon" else "v"
    elem = {"mse": "mse", "huber": f"huber{p.huber_delta:g}", "l1": "l1"}[p.kind]
    weight = f"minsnr{p.min_snr_gamma:g}(t)·" if p.min_snr_gamma > 0 else ""
    mask = "·mask/area" if p.masked else ""
    inst = f"mean_inst[ {weight}{elem}({y}̂, {y}){mask} ]"
    if p.prior == "none":
        return f"L = {inst}"
    prior_target = f"{y}_base(x_t)" if p.prior == "base_model" else y
    return f"L = {inst} + {p.prior_weight:g}·mean_class[ {elem}({y}̂, {prior_target}){mask} ]"

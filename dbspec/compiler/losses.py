"""Loss pass: the explicit loss graph and its one-line formula."""

from __future__ import annotations

from typing import Literal

import attrs

from dbspec.compiler.context import Context
from dbspec.families import family_spec
from dbspec.compiler.rules import (
    hit_to_diagnostic,
    loss_fits_objective,
    loss_weights_fit_prediction,
    pos_embed_crop_fits,
    text_encoder_dropout_fits,
)
from dbspec.plan.model import DatasetPlan, FlowPlan, HuberPlan, LossPlan, ModelPlan, NoisePlan, RolloutPlan
from dbspec.spec.model import LowRankAdapter, Loss

PSEUDO_HUBER = ("pseudo_huber", "smooth_l1")
# Flux's time shift μ at 256 and at 4096 latent patches (diffusers' Flux scheduler config, kohya flux_shift)
FLUX_BASE_SHIFT, FLUX_MAX_SHIFT = 0.5, 1.15


def plan_loss(ctx: Context, model: ModelPlan | None, datasets: tuple[DatasetPlan, ...]) -> LossPlan:
    spec = ctx.spec.loss
    has_class = any(d.role == "class" and d.images for d in datasets)
    prior = spec.prior if has_class else "none"
    masked = any(d.mask_source != "none" for d in datasets)
    target = model.prediction if model else "epsilon"
    if model and ctx.spec.model.prediction == "auto":  # an explicit prediction was checked by `dbspec check`
        detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, prediction=target))
        for check in (loss_weights_fit_prediction, loss_fits_objective):
            ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in check(detected, ctx.raw.given)]
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
        huber=HuberPlan(schedule=spec.huber_schedule, c=spec.huber_c, scale=spec.huber_scale)
        if spec.kind in PSEUDO_HUBER
        else None,
        noise=noise_plan(spec),
        debiased_estimation=spec.debiased_estimation,
        scale_v_like_epsilon=spec.scale_v_pred_loss_like_noise_pred,
        v_pred_like_loss=spec.v_pred_like_loss,
        prior_reduction=spec.prior_reduction,
        formula="",
        teacher=teacher_components(ctx, prior),
        rollout=rollout_plan(ctx),
        flow=flow_plan(spec, model.family) if model and target == "flow_matching" else None,
        mask_mean=spec.mask_mean if masked else "mask",
        text_encoder_dropout=text_encoder_dropout(ctx, model),
        pos_embed_random_crop_rate=pos_embed_crop(ctx, model),
    )
    own = not ctx.spec.train.denoiser  # the adapter on the text encoder only (DBS609)
    return attrs.evolve(plan, formula=formula(plan) + preserved_target(plan, datasets, own))


def text_encoder_dropout(ctx: Context, model: ModelPlan | None) -> tuple[float, ...]:
    """loss.text_encoder_dropout settled: () when off (empty, or every rate 0: no draw at all). A family
    detected from the model is checked here (`dbspec check` checked a spelled-out one)."""
    rates = tuple(float(r) for r in ctx.spec.loss.text_encoder_dropout)
    if model and rates and ctx.spec.model.family == "auto":
        detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
        hits = [h for h in text_encoder_dropout_fits(detected, ctx.raw.given) if h.code != "DBS541"]
        ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in hits]
    return rates if any(rates) else ()


def pos_embed_crop(ctx: Context, model: ModelPlan | None) -> float:
    """loss.pos_embed_random_crop_rate, a detected family checked here (`dbspec check` checked a spelled-out
    one)."""
    rate = float(ctx.spec.loss.pos_embed_random_crop_rate)
    if model and rate and ctx.spec.model.family == "auto":
        detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
        hits = [h for h in pos_embed_crop_fits(detected, ctx.raw.given) if h.code == "DBS543"]
        ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in hits]
    return rate


def rollout_plan(ctx: Context) -> RolloutPlan | None:
    """`[scheduled_sampling]` settled: None when off (max_step_offset 0 or probability 0)."""
    s = ctx.spec.scheduled_sampling
    if s.max_step_offset == 0 or s.probability == 0:
        return None
    return RolloutPlan(
        max_step_offset=s.max_step_offset,
        probability=s.probability,
        ramp_steps=s.ramp_steps,
        sampler=s.sampler,
        extra_forwards=s.probability * s.max_step_offset / 2,
    )


def flow_plan(spec: Loss, family: str) -> FlowPlan:
    """The flow-matching draw and weighting; the density parameters its density does not read settle to 0.
    The training guidance is loss.flow_guidance, or the family's when 0 (Flux.1 dev's guidance embedding)."""
    return FlowPlan(
        timesteps=spec.flow_timesteps,
        logit_mean=spec.flow_logit_mean if spec.flow_timesteps == "logit_normal" else 0.0,
        logit_std=spec.flow_logit_std if spec.flow_timesteps == "logit_normal" else 0.0,
        mode_scale=spec.flow_mode_scale if spec.flow_timesteps == "mode" else 0.0,
        weighting=spec.flow_weighting,
        shift=spec.flow_shift,
        # a model without a guidance embedding reads none (DBS232); Chroma's approximator reads it as given
        guidance=_guidance(spec, family),
        prediction=spec.flow_prediction,
        base_shift=FLUX_BASE_SHIFT if spec.flow_dynamic_shift else 0.0,
        max_shift=FLUX_MAX_SHIFT if spec.flow_dynamic_shift else 0.0,
        # Flux's time shift draws continuously (flow_draw floored beside it is refused, DBS239)
        draw="continuous" if spec.flow_dynamic_shift else spec.flow_draw,
    )


def noise_plan(spec: Loss) -> NoisePlan:
    """The noise settings, with the ones their switch turns off settled to off."""
    offset = spec.noise_offset
    return NoisePlan(
        offset=offset,
        offset_random_strength=spec.noise_offset_random_strength and offset > 0,
        adaptive_scale=spec.adaptive_noise_scale if offset > 0 else 0.0,
        multires_iterations=spec.multires_noise_iterations,
        multires_discount=spec.multires_noise_discount if spec.multires_noise_iterations else 0.0,
        ip_gamma=spec.ip_noise_gamma,
        ip_random_strength=spec.ip_noise_gamma_random_strength and spec.ip_noise_gamma > 0,
        min_timestep=spec.min_timestep,
        max_timestep=spec.max_timestep,
    )


def teacher_components(ctx: Context, prior: str) -> tuple[Literal["unet"], ...]:
    """What a base-model prior keeps a frozen copy of. LoRA runs switch their adapters off instead; a full
    fine-tune copies the UNet it trains. A frozen UNet needs no copy (DBS226 refuses that case: the base text
    encoder would be needed, and the runtime does not keep one)."""
    if prior != "base_model" or isinstance(ctx.spec.adapter, LowRankAdapter) or not ctx.spec.train.denoiser:
        return ()
    return ("unet",)


def _element(p: LossPlan) -> str:
    if p.huber is not None:
        c = f"c={p.huber.c:g}" + (
            f"×{p.huber.scale:g}" if p.huber.scale != 1 and p.huber.schedule != "snr" else ""
        )
        return f"{p.kind}{{{p.huber.schedule} {c}}}"  # no [ ]: rich reads them as markup
    return {"mse": "mse", "huber": f"huber{p.huber_delta:g}", "l1": "l1"}[p.kind]


def timestep_weight(p: LossPlan) -> str:
    """The per-sample timestep weights, in kohya's order, e.g. `minsnr5(t)·debiased(t)·`."""
    if p.flow is not None:
        return {"none": "", "sigma_sqrt": "σ⁻²·", "cosmap": "cosmap(σ)·"}[p.flow.weighting]
    parts = [f"minsnr{p.min_snr_gamma:g}(t)" if p.min_snr_gamma > 0 else ""]
    parts.append("snr/(snr+1)" if p.scale_v_like_epsilon else "")
    parts.append(f"(1+{p.v_pred_like_loss:g}(snr+1)/snr)" if p.v_pred_like_loss > 0 else "")
    parts.append("debiased(t)" if p.debiased_estimation else "")
    return "".join(f"{part}·" for part in parts if part)


def formula(p: LossPlan) -> str:
    """E.g. `L = mean_inst[ minsnr5(t) * mse(v̂, v) * mask/area ] + 1 * mean_class[ mse(v̂, base(x_t)) ]`;
    flow matching adds its target and sigma draw."""
    return _weighted(p) + _flow(p)


_FLOW_PREDICTIONS = {"sigma_scaled": "x_t − σ·{y}̂", "additive": "{y}̂ + x_t", "preconditioned": "x_t − σ·{y}̂"}


def _weighted(p: LossPlan) -> str:
    y = {"epsilon": "ε", "v_prediction": "v", "flow_matching": "u"}[p.target]
    if p.flow is not None and p.flow.prediction != "raw":  # kohya's Flux model_prediction_type, SD3's loss
        pred = _FLOW_PREDICTIONS[p.flow.prediction].format(y=y)
        return _weighted_with(p, y, pred, "x₀" if p.flow.prediction == "preconditioned" else y)
    return _weighted_with(p, y, f"{y}̂")


def _weighted_with(p: LossPlan, y: str, pred: str, target: str = "") -> str:
    """`target` is what the prediction is compared with (y unless given; a base-model prior's target is then
    the base model's `pred`)."""
    base = f"{pred}_base" if target else f"{y}_base(x_t)"
    y = target or y
    elem = _element(p)
    weight = timestep_weight(p)
    mask = ("·mask/area" if p.mask_mean == "mask" else "·mask (image mean)") if p.masked else ""
    inst = f"mean_inst[ {weight}{elem}({pred}, {y}){mask} ]"
    if p.prior == "none":
        return f"L = {inst}"
    prior_target = base if p.prior == "base_model" else y
    if p.prior_reduction == "per_sample":
        return (
            f"L = mean_batch[ w_i·{weight}{elem}({pred}, "
            f"{y if p.prior == 'images' else f'{y} | class: {prior_target}'}){mask} ], w_i = "
            f"{p.prior_weight:g} for class samples, 1 for instance"
        )
    return f"L = {inst} + {p.prior_weight:g}·mean_class[ {elem}({pred}, {prior_target}){mask} ]"


def preserved_target(p: LossPlan, datasets: tuple[DatasetPlan, ...], own: bool = False) -> str:
    """The target of datasets with preserve_output: the prediction the loss compares, made by the base model
    (adapter off) on the same input, or with the adapter on the text encoder only (`own`) by the denoiser
    itself, no gradient; "" when none has it."""
    names = ", ".join(d.name for d in datasets if d.preserve_output)
    if not names:
        return ""
    y = {"epsilon": "ε", "v_prediction": "v", "flow_matching": "u"}[p.target]
    pred = f"{y}̂"
    if p.flow is not None and p.flow.prediction != "raw":
        pred = _FLOW_PREDICTIONS[p.flow.prediction].format(y=y)
    if own:
        return f"; target of {names}: {pred} itself, no gradient (no adapter on the denoiser: zero loss)"
    return f"; target of {names}: {pred} of the base model (adapter off)"


def _flow(p: LossPlan) -> str:
    """Flow matching's target (the noise row of the summary shows how σ is drawn)."""
    return "" if p.flow is None else ", u = ε − x₀ at x_t = (1−σ)x₀ + σε"


def _guidance(spec: Loss, family: str) -> float:
    """The guidance the denoiser is given in training: loss.flow_guidance, or the family's (Flux.1 dev's 3.5)
    for a guidance embedding; as given for an approximator's guidance input (Chroma); else none."""
    fs = family_spec(family)
    if fs.train_guidance:
        return spec.flow_guidance or fs.train_guidance
    return spec.flow_guidance if fs.approximator_guidance else 0.0

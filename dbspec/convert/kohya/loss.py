"""kohya's loss and noise options -> [loss].

kohya (train_db.py, train_network.py, sdxl_train.py): loss_i = elementwise(pred, target) [* mask] averaged per
sample, times `prior_loss_weight` for reg samples (sdxl_train.py: no weight), times the timestep weights
(Min-SNR, v-loss scaling, v-pred-like term, debiased estimation), then the mean over the batch. That is
dbspec's `loss.prior_reduction = "per_sample"`, which converted specs with reg images use. The noise options
map one to one (train_util.get_noise_noisy_latents_and_timesteps); dbspec draws in kohya's order from its
own seeded generator.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

Args = dict[str, Legacy]
_LOSS_KIND = {"l2": "mse", "l1": "l1", "huber": "pseudo_huber", "smooth_l1": "smooth_l1"}
# scripts that apply add_v_prediction_like_loss (train_db.py accepts --v_pred_like_loss and never uses it)
_V_PRED_LIKE = ("sdxl_train", "train_network", "sdxl_train_network")


def map_loss(a: Args, script: str, has_class: bool, conv: Conversion) -> None:
    _loss_kind(a, conv)
    _prior(a, script, has_class, conv)
    snr = a["min_snr_gamma"]
    if snr.value:
        conv.mapped(snr, ("loss", "min_snr_gamma"), float(snr.value))
    zero = a["zero_terminal_snr"]
    if zero.value:
        conv.mapped(zero, ("loss", "zero_terminal_snr"), True)
    _noise(a, conv)
    _timestep_weights(a, script, conv)
    weighted = a["weighted_captions"]
    if weighted.value:
        conv.mapped(weighted, ("model", "weighted_captions"), True)
    elif weighted.given:
        conv.inert(weighted, "the value that turns it off")
    _timesteps(a, script, conv)


def _loss_kind(a: Args, conv: Conversion) -> None:
    kind = a["loss_type"]
    pseudo = kind.value in ("huber", "smooth_l1")
    if kind.value == "l2":
        conv.record(kind, "mapped", "loss.kind")
    else:
        conv.mapped(kind, ("loss", "kind"), _LOSS_KIND[kind.value])
    schedule, c, scale = a["huber_schedule"], a["huber_c"], a["huber_scale"]
    if not pseudo:
        for legacy in (schedule, c, scale):
            if legacy.given:
                conv.inert(legacy, f"loss_type is {kind.value}")
        return
    # kohya's defaults are dbspec's (snr, 0.1, 1.0); written anyway, so the spec says what trains
    conv.mapped(schedule, ("loss", "huber_schedule"), schedule.value)
    conv.mapped(c, ("loss", "huber_c"), float(c.value))
    if schedule.value != "snr":
        conv.mapped(scale, ("loss", "huber_scale"), float(scale.value))
    elif scale.given:
        conv.inert(scale, "huber_schedule snr does not use huber_scale")


def _prior(a: Args, script: str, has_class: bool, conv: Conversion) -> None:
    weight = a["prior_loss_weight"] if "prior_loss_weight" in a else None
    if not has_class:
        if weight is not None and weight.given:
            conv.inert(weight, "there are no reg images")
        return
    conv.put(
        ("loss", "prior_reduction"),
        "per_sample",
        "kohya: the batch mean of each sample's loss, reg samples times prior_loss_weight",
    )
    if weight is None:
        conv.notes.append(f"{script}.py does not weight reg images (prior_weight 1)")
    elif weight.value != 1.0:
        conv.mapped(weight, ("loss", "prior_weight"), float(weight.value))
    else:
        conv.record(weight, "mapped", "loss.prior_weight")


def _noise(a: Args, conv: Conversion) -> None:
    offset, random_strength, adaptive = (
        a["noise_offset"],
        a["noise_offset_random_strength"],
        a["adaptive_noise_scale"],
    )
    if adaptive.value is not None and offset.value is None:  # train_util.verify_training_args
        conv.invalid(
            adaptive.key, adaptive.value, adaptive.source, "adaptive_noise_scale requires noise_offset"
        )
    if offset.value:
        conv.mapped(offset, ("loss", "noise_offset"), float(offset.value))
        _flag(random_strength, ("loss", "noise_offset_random_strength"), conv)
        if adaptive.value:
            conv.mapped(adaptive, ("loss", "adaptive_noise_scale"), float(adaptive.value))
        elif adaptive.given:
            conv.inert(adaptive, "the value that turns it off")
    else:
        for legacy in (offset, random_strength, adaptive):
            if legacy.given:
                conv.inert(legacy, "noise_offset is off")
    iterations, discount = a["multires_noise_iterations"], a["multires_noise_discount"]
    if iterations.value:
        conv.mapped(iterations, ("loss", "multires_noise_iterations"), int(iterations.value))
        conv.mapped(discount, ("loss", "multires_noise_discount"), float(discount.value))
    else:
        for legacy in (iterations, discount):
            if legacy.given:
                conv.inert(legacy, "multi-resolution noise is off")
    gamma, gamma_random = a["ip_noise_gamma"], a["ip_noise_gamma_random_strength"]
    if gamma.value:
        conv.mapped(gamma, ("loss", "ip_noise_gamma"), float(gamma.value))
        _flag(gamma_random, ("loss", "ip_noise_gamma_random_strength"), conv)
    else:
        for legacy in (gamma, gamma_random):
            if legacy.given:
                conv.inert(legacy, "input-perturbation noise is off")


def _flag(legacy: Legacy, path: tuple[str, str], conv: Conversion) -> None:
    if legacy.value:
        conv.mapped(legacy, path, True)
    elif legacy.given:
        conv.inert(legacy, "the value that turns it off")


def _timestep_weights(a: Args, script: str, conv: Conversion) -> None:
    vparam = bool(a["v_parameterization"].value)
    scale_v, v_like, debiased = (
        a["scale_v_pred_loss_like_noise_pred"],
        a["v_pred_like_loss"],
        a["debiased_estimation_loss"],
    )
    if scale_v.value and not vparam:  # train_util.verify_training_args
        conv.invalid(
            scale_v.key, scale_v.value, scale_v.source, "it can be enabled only with v_parameterization"
        )
    else:
        _flag(scale_v, ("loss", "scale_v_pred_loss_like_noise_pred"), conv)
    if v_like.value and vparam:
        conv.invalid(
            v_like.key,
            v_like.value,
            v_like.source,
            "v_pred_like_loss cannot be enabled with v_parameterization",
        )
    elif v_like.value and script not in _V_PRED_LIKE:
        conv.ignored(v_like, f"{script}.py never adds the v-prediction-like loss")
    elif v_like.value:
        conv.mapped(v_like, ("loss", "v_pred_like_loss"), float(v_like.value))
    elif v_like.given:
        conv.inert(v_like, "the value that turns it off")
    _flag(debiased, ("loss", "debiased_estimation"), conv)


def _timesteps(a: Args, script: str, conv: Conversion) -> None:
    low, high = a["min_timestep"], a["max_timestep"]
    # kohya: min None -> 0, max None -> num_train_timesteps (1000 for every SD family)
    low_value = 0 if low.value is None else int(low.value)
    high_value = 1000 if high.value is None else int(high.value)
    if low_value > high_value and script == "sd3_train_network":
        # t = (shift(u) (t_max - t_min) + t_min).long(): from min_timestep down toward max_timestep, which
        # loss.flow_draw "floored" computes with the bounds as given
        why = "sd3_train_network.py draws t from min_timestep down toward max_timestep (reversed bounds)"
        conv.mapped(low, ("loss", "min_timestep"), low_value, note=why)
        conv.mapped(high, ("loss", "max_timestep"), high_value, note=why)
        return
    if low_value > high_value:  # kohya's get_timesteps then trains max_timestep only
        conv.mapped(
            low,
            ("loss", "min_timestep"),
            high_value,
            note=f"kohya trains only max_timestep {high_value} when min_timestep is above it",
        )
    elif low_value:
        conv.mapped(low, ("loss", "min_timestep"), low_value)
    elif low.given:
        conv.inert(low, "the full range, as dbspec samples")
    if high_value != 1000:
        conv.mapped(high, ("loss", "max_timestep"), high_value)
    elif high.given:
        conv.inert(high, "the full range, as dbspec samples")

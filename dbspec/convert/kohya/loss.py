"""kohya's loss and noise options -> [loss], with the places where dbspec's loss differs from kohya's.

kohya (train_db.py): loss_i = elementwise(pred, target) [* mask] averaged per sample, times `prior_loss_weight`
for reg samples, times the Min-SNR weight, then the mean over the batch. dbspec: L = mean over instance samples of
minsnr_i * loss_i + prior_weight * mean over class samples of loss_i (the diffusers form). The two agree when
every batch holds one kind of sample (batch size 1), apart from Min-SNR, which kohya also applies to reg samples.
"""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy

Args = dict[str, Legacy]
# option -> (value meaning "off", why dbspec cannot express another value)
_UNSUPPORTED = {
    "noise_offset_random_strength": (False, "dbspec's noise offset has a fixed strength"),
    "adaptive_noise_scale": (None, "dbspec has no adaptive noise offset"),
    "multires_noise_iterations": (None, "dbspec has no multi-resolution (pyramid) noise"),
    "ip_noise_gamma": (None, "dbspec has no input-perturbation noise"),
    "ip_noise_gamma_random_strength": (False, "dbspec has no input-perturbation noise"),
    "scale_v_pred_loss_like_noise_pred": (False, "dbspec does not rescale the v-prediction loss"),
    "v_pred_like_loss": (None, "dbspec has no v-prediction-like loss term"),
    "debiased_estimation_loss": (False, "dbspec has no debiased-estimation weighting"),
    "weighted_captions": (False, "dbspec reads captions literally ((word:1.2) weights are kohya's)"),
}


def map_loss(a: Args, script: str, has_class: bool, batch_size: Legacy, conv: Conversion) -> None:
    _loss_kind(a, conv)
    _prior(a, script, has_class, batch_size, conv)
    snr = a["min_snr_gamma"]
    if snr.value:
        conv.mapped(snr, ("loss", "min_snr_gamma"), float(snr.value))
        if has_class:
            conv.differs(
                snr,
                "kohya weights reg samples by Min-SNR too; dbspec weights only the instance term",
                ("loss", "min_snr_gamma"),
                float(snr.value),
            )
    offset = a["noise_offset"]
    if offset.value:
        conv.mapped(offset, ("loss", "noise_offset"), float(offset.value))
    zero = a["zero_terminal_snr"]
    if zero.value:
        conv.mapped(zero, ("loss", "zero_terminal_snr"), True)
    for key, (off, why) in _UNSUPPORTED.items():
        if a[key].value not in (off, 0):
            conv.unsupported(a[key], why)
        elif a[key].given:
            conv.inert(a[key], "the value that turns it off")
    if a["multires_noise_discount"].given and not a["multires_noise_iterations"].value:
        conv.inert(a["multires_noise_discount"], "multi-resolution noise is off")
    _timesteps(a, conv)


def _loss_kind(a: Args, conv: Conversion) -> None:
    kind = a["loss_type"]
    if kind.value in ("huber", "smooth_l1"):
        conv.unsupported(
            kind,
            "kohya's huber/smooth_l1 are pseudo-Huber losses whose threshold follows "
            "huber_schedule over timesteps; dbspec's huber is torch's Huber with a fixed delta",
        )
    elif kind.value == "l1":
        conv.mapped(kind, ("loss", "kind"), "l1")
    else:
        conv.record(kind, "mapped", "loss.kind")
    for key in ("huber_schedule", "huber_c", "huber_scale"):
        if a[key].given and kind.value not in ("huber", "smooth_l1"):
            conv.inert(a[key], f"loss_type is {kind.value}")


def _prior(a: Args, script: str, has_class: bool, batch_size: Legacy, conv: Conversion) -> None:
    weight = a["prior_loss_weight"] if "prior_loss_weight" in a else None
    if not has_class:
        if weight is not None and weight.given:
            conv.inert(weight, "there are no reg images")
        return
    if weight is None:
        conv.notes.append(f"{script}.py does not weight reg images (prior_weight 1)")
    elif weight.value != 1.0:
        conv.mapped(weight, ("loss", "prior_weight"), float(weight.value))
    else:
        conv.record(weight, "mapped", "loss.prior_weight")
    if batch_size.value > 1:
        conv.differs(
            batch_size,
            "reg and training images share batches: kohya averages per-sample weighted losses "
            "over each mixed batch, dbspec adds the instance mean and prior_weight x the class mean, so a "
            "batch's terms are scaled differently (identical with batch size 1)",
        )


def _timesteps(a: Args, conv: Conversion) -> None:
    low, high = a["min_timestep"], a["max_timestep"]
    for legacy, full in ((low, 0), (high, 1000)):
        if legacy.value not in (None, full):
            conv.unsupported(legacy, "dbspec samples timesteps over the whole schedule (0-1000)")
        elif legacy.given:
            conv.inert(legacy, "the full range, as dbspec samples")

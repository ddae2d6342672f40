"""fp16 trained weights (precision.weights = "fp16", kohya's full_fp16): the grad scaler that unscales them.

Under fp16 mixed precision accelerate scales the loss with torch's `GradScaler`, whose `unscale_` refuses
fp16 gradients ("Attempting to unscale FP16 gradients"): it expects fp32 master weights. kohya's full_fp16
holds the trained weights themselves in fp16 and patches accelerate's scaler to unscale them anyway
(`patch_accelerator_for_fp16_training`: `_unscale_grads_` with `allow_fp16=True`). `Fp16WeightsGradScaler` is
that scaler as a subclass: the same unscaling kernel (gradients multiplied by 1/scale in place, inf/NaN
found), the same skipped step and dynamic scale. Its state is accelerate's scaler's, saved with the run
(state.py `scaler`).

On the CPU accelerate turns fp16 autocast and loss scaling off altogether (it scales on accelerators only);
torch 2.13 runs both there, so `use_fp16_weights_scaler` switches them on for fp16 weights on every device.
"""

from __future__ import annotations

import torch

from dbspec.plan.model import FP16_GRAD_SCALER


class Fp16WeightsGradScaler(torch.amp.GradScaler):
    """torch's GradScaler that also unscales fp16 gradients (the trained weights are fp16)."""

    def _unscale_grads_(
        self, optimizer, inv_scale, found_inf, allow_fp16
    ):  # torch's private hook, as kohya's
        return super()._unscale_grads_(optimizer, inv_scale, found_inf, True)


class ScaledFp16GradScaler(Fp16WeightsGradScaler):
    """precision.fp16_gradients = "scaled": the loss multiplied by the initial scale, which never changes, and
    the optimizer stepped from the still-scaled fp16 gradients, never skipped: kohya's --full_fp16
    --fused_backward_pass, whose gradient hooks step Adafactor inside backward, before accelerate's scaler
    could unscale, skip or update (max_grad_norm 0: with clipping kohya's hooks raise, DBS555)."""

    def unscale_(self, optimizer) -> None:  # nothing clips (DBS555): the gradients stay scaled
        return None

    def step(self, optimizer, *args, **kwargs):
        return optimizer.step(*args, **kwargs)  # no inf/NaN check: an overflowed gradient is stepped

    def update(self, new_scale=None) -> None:  # the scale stays the initial one
        return None


def use_fp16_weights_scaler(accelerator, gradients: str = "unscaled") -> Fp16WeightsGradScaler:
    """Give `accelerator` (fp16 mixed precision, before `prepare`) the fp16-gradient scaler: `prepare` hands
    it to the optimizer (which steps through it, skipping overflowed steps), `backward` scales the loss and
    `unscale_gradients` unscales before clipping. `gradients` = "scaled" (precision.fp16_gradients): the
    fixed-scale one that neither unscales nor skips."""
    kind = ScaledFp16GradScaler if gradients == "scaled" else Fp16WeightsGradScaler
    scaler = kind(accelerator.device.type, **FP16_GRAD_SCALER)
    accelerator.scaler = scaler
    accelerator.native_amp = True  # the CPU: fp16 autocast and unscale_gradients, which accelerate leaves off
    return scaler

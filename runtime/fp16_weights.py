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


def use_fp16_weights_scaler(accelerator) -> Fp16WeightsGradScaler:
    """Give `accelerator` (fp16 mixed precision, before `prepare`) the fp16-gradient scaler: `prepare` hands
    it to the optimizer (which steps through it, skipping overflowed steps), `backward` scales the loss and
    `unscale_gradients` unscales before clipping."""
    scaler = Fp16WeightsGradScaler(accelerator.device.type, **FP16_GRAD_SCALER)
    accelerator.scaler = scaler
    accelerator.native_amp = True  # the CPU: fp16 autocast and unscale_gradients, which accelerate leaves off
    return scaler

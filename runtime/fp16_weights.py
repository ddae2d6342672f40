"""fp16 trained weights (precision.weights = "fp16", kohya's full_fp16): the grad scaler that unscales them.

Under fp16 mixed precision accelerate scales the loss with torch's `GradScaler`, whose `unscale_` refuses
fp16 gradients ("Attempting to unscale FP16 gradients"): it expects fp32 master weights. kohya's full_fp16
holds the trained weights themselves in fp16 and patches accelerate's scaler to unscale them anyway
(`patch_accelerator_for_fp16_training`: `_unscale_grads_` with `allow_fp16=True`). `Fp16WeightsGradScaler` is
that scaler as a subclass: the same unscaling kernel (gradients multiplied by 1/scale in place, inf/NaN
found), the same skipped step and dynamic scale. Its state is accelerate's scaler's, saved with the run
(state.py `scaler`).

precision.fp16_gradients = "scaled" / "scaled_first" (kohya's sdxl_train.py fused hooks, which step inside
backward, before accelerate's scaler could unscale) use it for fp32 weights too: `ScaledFp16GradScaler` and
`ScaledFirstGradScaler` below.

On the CPU accelerate turns fp16 autocast and loss scaling off altogether (it scales on accelerators only);
torch 2.13 runs both there, so `use_fp16_weights_scaler` switches them on for fp16 weights (and still-scaled
gradients) on every device.
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
    the optimizer stepped from the still-scaled gradients (fp16 or fp32), never skipped: kohya's
    --fused_backward_pass (with --full_fp16 or without), whose gradient hooks step Adafactor inside backward,
    before accelerate's scaler could unscale, skip or update; nothing in kohya's loop steps accelerate's
    optimizer, so scaler.update() is never called (max_grad_norm 0: with clipping kohya's hooks raise,
    DBS555)."""

    def unscale_(self, optimizer) -> None:  # nothing clips (DBS555): the gradients stay scaled
        return None

    def step(self, optimizer, *args, **kwargs):
        return optimizer.step(*args, **kwargs)  # no inf/NaN check: an overflowed gradient is stepped

    def update(self, new_scale=None) -> None:  # the scale stays the initial one
        return None


class ScaledFirstGradScaler(Fp16WeightsGradScaler):
    """precision.fp16_gradients = "scaled_first" (optimizer.split, kohya's --fused_optimizer_groups with
    max_grad_norm 0). kohya's hooks step `optimizers[0]`, the bare optimizer (only the name `optimizer` was
    rebound to accelerate's wrapper), from the still-scaled gradients, and each later chunk's optimizer,
    which accelerate prepared one by one, through its wrapper: `scaler.step(chunk)` (unscale_ by the scale
    at that moment, the step skipped when that chunk's gradients hold inf/NaN) then `scaler.update()` (the
    scale halved on an overflow, doubled after growth_interval finite updates), as each chunk's last
    gradient arrives.

    The split optimizer does that (optim_split.SplitOptimizer.step, with `chunk_step` for the later
    chunks); accelerate's own calls here (`step` on the whole split optimizer, `update`, `unscale_`) pass
    it through."""

    def unscale_(self, optimizer) -> None:  # nothing clips (DBS555)
        return None

    def step(self, optimizer, *args, **kwargs):
        return optimizer.step(*args, **kwargs)  # the split optimizer steps each chunk its way

    def update(self, new_scale=None) -> None:  # each later chunk updated the scale already
        return None

    def chunk_step(self, optimizer) -> bool:
        """accelerate's AcceleratedOptimizer.step for one chunk optimizer: torch's GradScaler.step (unscale by
        the current scale, skip on inf/NaN) then update. Returns whether the chunk stepped."""
        torch.amp.GradScaler.unscale_(self, optimizer)  # this class's unscale_ is a no-op
        super().step(optimizer)
        found = sum(v.item() for v in self._found_inf_per_device(optimizer).values())
        super().update()
        return not found


def use_fp16_weights_scaler(accelerator, gradients: str = "unscaled") -> Fp16WeightsGradScaler:
    """Give `accelerator` (fp16 mixed precision, before `prepare`) the fp16-gradient scaler: `prepare` hands
    it to the optimizer (which steps through it, skipping overflowed steps), `backward` scales the loss and
    `unscale_gradients` unscales before clipping. `gradients` = "scaled" (precision.fp16_gradients): the
    fixed-scale one that neither unscales nor skips; "scaled_first" the one whose later chunks step through
    it one by one."""
    kind = {"scaled": ScaledFp16GradScaler, "scaled_first": ScaledFirstGradScaler}.get(
        gradients, Fp16WeightsGradScaler
    )
    scaler = kind(accelerator.device.type, **FP16_GRAD_SCALER)
    accelerator.scaler = scaler
    accelerator.native_amp = True  # the CPU: fp16 autocast and unscale_gradients, which accelerate leaves off
    return scaler

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
# rate 0 feeding the estimate of d, summed in the groups' order): a group kept at rate 0 is not kohya's
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

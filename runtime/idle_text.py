"""The idle text encoders (`plan.idle_text_encoders`: train.text_encoder_idle = "kohya"'s CLIP encoders,
train.t5_idle = "kohya"'s T5-XXL, in the family's order, kohya's network order): kohya's LoRA
scripts build the text encoders' modules whatever their rate (train_network.py's apply_to reads none) and
leave a group at rate 0 out of the optimizer (networks.lora skips it; LyCORIS: "NO LR skipping!"). Those
encoders run as trained ones (under grad, in training mode), their modules never move, and as
optimizer.zero_grad clears only the optimizer's parameters their gradients add up step after step, counted
(and scaled in place) by `clip_grad_norm_(network.get_trainable_params(), max_grad_norm)`. Here: the encoders
carry the adapter as trained ones do (runtime/prepare.py), their adapter weights are kept out of the
optimizer's groups but are in the clip's list, and their accumulated gradients are in every checkpoint, so a
resumed run clips as the uninterrupted one."""

from __future__ import annotations

import torch

from dbspec.families import family_spec


def split_idle(plan, per_encoder: list[list]) -> tuple[list[list], dict[str, list]]:
    """(`per_encoder` with the idle encoders' parameter lists emptied, those lists by component name)."""
    names = family_spec(plan.model.family).text_encoder_names
    idle = set(plan.idle_text_encoders)
    held = {n: params for n, params in zip(names, per_encoder) if n in idle}
    return [[] if n in idle else params for n, params in zip(names, per_encoder)], held


def named_idle(comps, plan) -> dict[str, torch.nn.Parameter]:
    """The idle encoders' parameters that take a gradient, by `<component>.<parameter name>`."""
    names = family_spec(plan.model.family).text_encoder_names
    idle = set(plan.idle_text_encoders)
    return {
        f"{n}.{key}": p
        for n, enc in zip(names, comps.text_encoders)
        if n in idle
        for key, p in enc.named_parameters()
        if p.requires_grad
    }

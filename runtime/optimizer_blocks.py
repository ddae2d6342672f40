"""Per-block learning rates of a fully trained denoiser (`plan.optimizer.blocks`; kohya sdxl_train.py
`--block_lr`, get_block_params_to_optimize).

Each denoiser parameter takes the first block whose pattern `re.search`es its path (diffusers names) and
trains in that block's optimizer group at its rate; the groups follow the blocks' order (kohya: block index
order), parameters no block matches stay in the `denoiser` group ahead of them. A block at rate 0 gets no
group, as kohya leaves those parameters out of the optimizer: they still require gradients, so their
gradients are computed, count in the clip norm and, since the optimizer clears only its own, add up over
the steps, as in kohya's run."""

from __future__ import annotations

import re

import torch

from dbspec.families import family_spec
from dbspec.plan.model import OptimizerBlockPlan


def block_rate_of(blocks: tuple[OptimizerBlockPlan, ...], path: str) -> OptimizerBlockPlan | None:
    return next((b for b in blocks if re.search(b.pattern, path)), None)


def optimizer_block_groups(
    groups: list[dict], denoiser: torch.nn.Module, blocks: tuple[OptimizerBlockPlan, ...]
) -> list[dict]:
    """`groups` with the `denoiser` group replaced by its per-block groups."""
    names = {id(p): name for name, p in denoiser.named_parameters()}
    out: list[dict] = []
    for group in groups:
        if group["name"] != "denoiser":
            out.append(group)
            continue
        by_block: dict[str, list] = {b.name: [] for b in blocks}
        rest = []
        for param in group["params"]:
            block = block_rate_of(blocks, names[id(param)])
            (by_block[block.name] if block is not None else rest).append(param)
        if rest:
            out.append({**group, "params": rest})
        out += [
            {**group, "params": by_block[b.name], "lr": b.lr, "name": b.name}
            for b in blocks
            if b.lr > 0 and by_block[b.name]
        ]
    return out


def held_gradients(run) -> dict[str, torch.Tensor] | None:
    """The gradients the blocks at rate 0 (optimizer.blocks, or adapter blocks and text-encoder blocks at
    lr_scale 0) have added up so far, by parameter name (a text encoder's `<component>.<name>`), for the
    checkpoint (a resumed run goes on adding to them, so the clip norm stays the uninterrupted run's); None
    without such blocks."""
    a = run.plan.adapter
    held_adapters = any(not b.lr and not b.lr_scale for b in (*a.blocks, *a.text_encoder_blocks))
    held_ups = bool(run.plan.optimizer.loraplus_held)  # LoRA+ up matrices at ratio 0 (runtime/optim.py)
    if not held_adapters and not held_ups and not any(b.lr == 0 for b in run.plan.optimizer.blocks):
        return None
    stepped = {id(p) for group in run.optimizer.param_groups for p in group["params"]}
    stepped |= {id(p) for p in (run.idle or {}).values()}  # the idle encoders' own (TrainState.idle_grads)
    return {
        name: param.grad.detach().clone()
        for name, param in _named_trainable(run)
        if param.requires_grad and id(param) not in stepped and param.grad is not None
    }


def restore_held_gradients(run, grads: dict[str, torch.Tensor]) -> None:
    params = dict(_named_trainable(run))
    for name, grad in grads.items():
        params[name].grad = grad.to(params[name].device).clone()


def _named_trainable(run):
    """(name, parameter) of the denoiser (its own names: older checkpoints' keys) and the text encoders
    (`<component>.<name>`)."""
    yield from run.comps.unet.named_parameters()
    names = family_spec(run.plan.model.family).text_encoder_names
    for component, module in zip(names, run.comps.text_encoders):
        if module is not None:
            for name, param in module.named_parameters():
                yield f"{component}.{name}", param

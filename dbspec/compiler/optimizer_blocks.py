"""optimizer.blocks (kohya sdxl_train.py `--block_lr`): the denoiser's per-block learning rates in a full
fine-tune, as the plan records them (rules.py `optimizer_blocks_apply` checks them: DBS563)."""

from __future__ import annotations

from dbspec.plan.model import OptimizerBlockPlan
from dbspec.spec.model import Spec


def optimizer_blocks(spec: Spec) -> tuple[OptimizerBlockPlan, ...]:
    """The plan's blocks: each entry named after its position (the runtime's optimizer group names)."""
    if spec.adapter.kind != "none" or not spec.train.denoiser:
        return ()
    return tuple(
        OptimizerBlockPlan(name=f"denoiser_block{i}", pattern=b.pattern, lr=b.lr)
        for i, b in enumerate(spec.optimizer.blocks)
    )

"""`[distributed]` -> DistributedPlan, and what sharding across processes does to the memory estimate.

The plan records the strategy's settings only for the strategy chosen (an FSDP setting under DDP is inert and
the rules warn about it). The memory split follows what each strategy keeps per process:

- ddp: everything whole on every process.
- fsdp shard_grad_op / ZeRO-2: optimizer state and gradients of the trained parameters 1/N per process; the
  weights whole (FSDP's shard_grad_op keeps them gathered from forward to backward, ZeRO-2 never shards them).
- fsdp full_shard / ZeRO-3: the weights of the sharded models (the trained ones, frozen base included) 1/N
  too, plus a gathered working set: the blocks gathered at once (the one running and the one prefetched).
- CPU offload: fsdp_cpu_offload moves the shards of weights, gradients and optimizer state to host memory;
  zero_offload_optimizer the optimizer state (and its gradient partition), zero_offload_params the weights.
"""

from __future__ import annotations

import attrs

from dbspec.plan.model import DeepSpeedPlan, DistributedPlan, FsdpPlan
from dbspec.spec.model import Distributed

GIB = 2**30
# The blocks FSDP (full_shard) or ZeRO-3 hold gathered at a time, as a share of a sharded model's weights: the
# block running and the one prefetched. The largest wrapped blocks of the SD1.5 and SDXL UNets (a
# transformer block of the mid or up path) hold a few percent of the weights each; 0.15 is a rounded-up
# heuristic, not a measurement (docs/memory.md).
GATHERED_SHARE = 0.15


def plan_distributed(d: Distributed) -> DistributedPlan:
    """The plan of `[distributed]`: the chosen strategy's settings, None for the others."""
    return DistributedPlan(
        strategy=d.strategy,
        timeout_s=d.timeout_s,
        fsdp=FsdpPlan(sharding=d.fsdp_sharding, cpu_offload=d.fsdp_cpu_offload)
        if d.strategy == "fsdp"
        else None,
        deepspeed=(
            DeepSpeedPlan(
                zero_stage=d.zero_stage,
                offload_optimizer=d.zero_offload_optimizer,
                offload_params=d.zero_stage == 3 and d.zero_offload_params,
            )
            if d.strategy == "deepspeed"
            else None
        ),
    )


@attrs.frozen(kw_only=True)
class Sharding:
    """What one process holds of the trained models' state, as fractions of the whole (1.0 = all of it)."""

    processes: int = 1
    label: str = "ddp"  # how the notes name the strategy
    optimizer: float = 1.0  # of the optimizer state, on the device
    gradients: float = 1.0
    weights: float = 1.0  # of the sharded models' weights
    gathered: float = 0.0  # plus this share of them gathered at a time
    host_optimizer: bool = False  # the optimizer state's shard lives in host memory (offload)
    host_gradients: bool = False
    host_weights: bool = False

    @property
    def sharded(self) -> bool:
        return self.optimizer < 1.0 or self.weights < 1.0 or self.host_optimizer or self.host_weights


def sharding(plan: DistributedPlan, processes: int) -> Sharding:
    """The memory split of `plan` over `processes` processes (one process shards nothing, but offload still
    moves state to host memory)."""
    n = max(processes, 1)
    part = 1.0 / n
    if plan.fsdp is not None:
        full = plan.fsdp.sharding == "full_shard"
        offload = plan.fsdp.cpu_offload
        return Sharding(
            processes=n,
            label=f"FSDP {plan.fsdp.sharding}",
            optimizer=part,
            gradients=part,
            weights=part if full or offload else 1.0,
            gathered=GATHERED_SHARE if full or offload else 0.0,
            host_optimizer=offload,
            host_gradients=offload,
            host_weights=offload,
        )
    if plan.deepspeed is not None:
        z = plan.deepspeed
        stage3 = z.zero_stage == 3
        return Sharding(
            processes=n,
            label=f"ZeRO-{z.zero_stage}",
            optimizer=part,
            gradients=part,
            weights=part if stage3 else 1.0,
            gathered=GATHERED_SHARE if stage3 else 0.0,
            host_optimizer=z.offload_optimizer,
            host_gradients=z.offload_optimizer,  # ZeRO-Offload reduces gradients into host memory
            host_weights=z.offload_params,
        )
    return Sharding(processes=n)

"""`[distributed]` at run time: accelerate's plugins built from the plan, the bound on waits between
processes, and the gathered (full) view of sharded models and optimizer state that checkpoints hold.

DDP keeps a whole copy of every weight and optimizer state on each process, so checkpoints and the final
weights read them as they are. FSDP2 (torch's `fully_shard`, through accelerate) turns the prepared models'
parameters into DTensors, each process holding 1/N of each. `gathered` swaps them for whole tensors on every
process (a collective: all processes enter it), so the writers of checkpoints, final weights and exports read
the same format as under DDP and the first process writes it; `full_optimizer_state` / `load_optimizer_state`
do the same for the optimizer (a checkpoint's state is DDP's: whole tensors, keyed by parameter index).
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from datetime import timedelta

import torch

from dbspec.plan.model import Plan
from dbspec.runtime.device import DeviceError

DEEPSPEED_INSTALL = (
    "pip install wheel && DS_BUILD_OPS=0 pip install deepspeed --no-build-isolation (it builds against the "
    "torch already installed; DS_BUILD_OPS=0 compiles its CUDA ops on first use)"
)


class StrategyError(DeviceError):
    """The plan's distributed strategy cannot run here (e.g. DeepSpeed is not installed)."""


def accelerator_kwargs(plan: Plan) -> dict:
    """The Accelerator's keyword arguments for the plan's `[distributed]`: the process-group timeout, and
    the FSDP or DeepSpeed plugin (none for DDP)."""
    from accelerate.utils import InitProcessGroupKwargs

    d = plan.distributed
    kwargs: dict = {"kwargs_handlers": [InitProcessGroupKwargs(timeout=timedelta(seconds=d.timeout_s))]}
    if d.fsdp is not None:
        kwargs["fsdp_plugin"] = fsdp_plugin(plan)
    if d.deepspeed is not None:
        kwargs["deepspeed_plugin"] = deepspeed_plugin(plan)
    return kwargs


def fsdp_plugin(plan: Plan):
    """FSDP2: one shard unit per block the model names in `_no_split_modules` (accelerate's
    transformer_based_wrap), resharded after forward (full_shard) or not (shard_grad_op); checkpoints
    gathered by `gathered`, not by accelerate's state-dict settings."""
    from accelerate import FullyShardedDataParallelPlugin

    f = plan.distributed.fsdp
    assert f is not None
    return FullyShardedDataParallelPlugin(
        fsdp_version=2,
        reshard_after_forward=f.sharding == "full_shard",
        # offload pins host memory (CUDA only); on a CPU target it is inert (the plan warns, DBS329)
        cpu_offload=f.cpu_offload and plan.target.device != "cpu",
        auto_wrap_policy=f.wrap,
        state_dict_type="FULL_STATE_DICT",
        cpu_ram_efficient_loading=False,  # every process loaded the whole model (setup.py)
    )


def deepspeed_plugin(plan: Plan):
    """DeepSpeed ZeRO; refused at once (StrategyError) when deepspeed is not importable."""
    if importlib.util.find_spec("deepspeed") is None:
        raise StrategyError(
            'distributed.strategy = "deepspeed" needs the deepspeed package, which dbspec does not install '
            f"(its build needs the installed torch): {DEEPSPEED_INSTALL}"
        )
    from accelerate import DeepSpeedPlugin

    z = plan.distributed.deepspeed
    assert z is not None
    plugin = DeepSpeedPlugin(
        zero_stage=z.zero_stage,
        offload_optimizer_device="cpu" if z.offload_optimizer else "none",
        offload_param_device="cpu" if z.offload_params else "none",
        gradient_accumulation_steps=1,  # accumulation is refused (DBS268): DeepSpeed would count it again
        gradient_clipping=plan.optimizer.max_grad_norm if plan.optimizer.max_grad_norm > 0 else None,
        zero3_save_16bit_model=False,
    )
    # dbspec's loop makes its own batches (no prepared DataLoader for accelerate to read them from)
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = plan.schedule.batch_size
    return plugin


def enable_fsdp_on_cpu(accelerator, plan: Plan) -> None:
    """accelerate (1.x) switches FSDP on for GPU processes only; its CPU state (gloo) ignores the plugin.
    FSDP2 itself runs on the CPU with gloo, so a CPU plan with strategy fsdp turns it on here (what the
    tests run)."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    if plan.distributed.fsdp is not None and state.distributed_type == DistributedType.MULTI_CPU:
        state.distributed_type = DistributedType.FSDP
        state.fsdp_plugin = fsdp_plugin(plan)


def _is_dtensor(value) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(value, DTensor)


def sharded_models(modules) -> list[torch.nn.Module]:
    """The modules among `modules` whose parameters FSDP sharded (DTensors) or ZeRO-3 partitioned."""
    return [m for m in modules if any(_is_dtensor(p) or hasattr(p, "ds_id") for p in m.parameters())]


@contextlib.contextmanager
def gathered(modules) -> Iterator[None]:
    """Inside: the FSDP-sharded `modules` hold whole (plain) parameters, on every process. Every process must
    enter (the gathers are collectives, in the same order everywhere). On exit the whole values, changed or
    not (a resume loads into them), are copied back into each process's shard and the DTensors put back.
    Costs a whole copy of the sharded weights per process while inside: checkpoints and the final weights."""
    from torch.distributed.tensor import distribute_tensor

    from torch.distributed.fsdp import FSDPModule

    zero3 = [p for m in modules for p in m.parameters() if hasattr(p, "ds_id")]
    if zero3:  # DeepSpeed ZeRO-3: its own gather; the first process's values are partitioned back on exit
        import deepspeed

        with deepspeed.zero.GatheredParameters(zero3, modifier_rank=0):
            yield
        return
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Parameter]] = []
    classes: list[tuple[torch.nn.Module, type]] = []
    try:
        for model in sharded_models(modules):
            for module in model.modules():
                if isinstance(module, FSDPModule):  # fully_shard's class FSDP<Name>(FSDPModule, <Name>)
                    classes.append((module, type(module)))
                    module.__class__ = type(module).__bases__[1]  # save_pretrained writes the class name
                for name, param in list(module._parameters.items()):
                    if param is not None and _is_dtensor(param):
                        whole = torch.nn.Parameter(
                            param.full_tensor().detach(), requires_grad=param.requires_grad
                        )
                        module._parameters[name] = whole
                        swapped.append((module, name, param))
        yield
    finally:
        with torch.no_grad():
            for module, name, param in swapped:
                whole = module._parameters[name]
                # this process's shard of the (possibly restored) whole value; no communication
                local = distribute_tensor(
                    whole.detach(), param.device_mesh, param.placements, src_data_rank=None
                )
                param.to_local().copy_(local.to_local())
                module._parameters[name] = param
            for module, cls in classes:
                module.__class__ = cls


def full_optimizer_state(optimizer) -> dict:
    """`optimizer.state_dict()` with every sharded (DTensor) state tensor gathered whole: DDP's format. A
    collective: every process calls it, in step."""
    state = optimizer.state_dict()  # its per-parameter dicts are the live state: copied before changing
    state["state"] = {
        index: {key: value.full_tensor() if _is_dtensor(value) else value for key, value in per_param.items()}
        for index, per_param in state["state"].items()
    }
    return state


def load_optimizer_state(optimizer, state: dict) -> None:
    """Load a whole (DDP-format) optimizer state into an optimizer over FSDP-sharded parameters: each state
    tensor shaped like its parameter becomes this process's shard of it (no communication)."""
    from torch.distributed.tensor import distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, per_param in state["state"].items():
        param = params[int(index)]
        if not _is_dtensor(param):
            continue
        for key, value in list(per_param.items()):
            if isinstance(value, torch.Tensor) and tuple(value.shape) == tuple(param.shape):
                per_param[key] = distribute_tensor(
                    value.to(param.device), param.device_mesh, param.placements, src_data_rank=None
                )
    optimizer.load_state_dict(state)

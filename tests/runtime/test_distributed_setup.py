"""The Accelerator's settings built from `[distributed]`, in one process (the launches are test_fsdp.py's)."""

from __future__ import annotations

import importlib.util
from datetime import timedelta

import attrs
import pytest
from torch.distributed.fsdp import CPUOffloadPolicy

from dbspec.plan.model import DeepSpeedPlan, DistributedPlan, FsdpPlan
from dbspec.runtime.distributed import StrategyError, accelerator_kwargs
from dbspec.runtime.execute import RunError, execute
from tests.runtime.runspec import make_plan


def _with(plan, **distributed):
    return attrs.evolve(plan, distributed=DistributedPlan(**distributed))


def test_the_process_group_timeout_is_the_plans(tmp_path):
    plan = _with(make_plan(tmp_path), timeout_s=42)
    (handler,) = accelerator_kwargs(plan)["kwargs_handlers"]
    assert handler.timeout == timedelta(seconds=42)
    assert "fsdp_plugin" not in accelerator_kwargs(plan) and "deepspeed_plugin" not in accelerator_kwargs(
        plan
    )


@pytest.mark.parametrize(("sharding", "offload"), [("full_shard", False), ("shard_grad_op", True)])
def test_the_fsdp_plugin_is_fsdp2_with_the_plans_settings(tmp_path, sharding, offload):
    plan = _with(make_plan(tmp_path), strategy="fsdp", fsdp=FsdpPlan(sharding=sharding, cpu_offload=offload))
    gpu = attrs.evolve(plan, target=attrs.evolve(plan.target, device="cuda"))
    plugin = accelerator_kwargs(gpu)["fsdp_plugin"]
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is (sharding == "full_shard")
    assert isinstance(plugin.cpu_offload, CPUOffloadPolicy) is offload  # OffloadPolicy(): none
    # on a CPU target offload is inert (DBS329 warns): it would pin host memory, which needs CUDA
    assert not isinstance(accelerator_kwargs(plan)["fsdp_plugin"].cpu_offload, CPUOffloadPolicy)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_missing_fails_before_anything_runs_naming_the_install(tmp_path):
    """The plan may choose DeepSpeed (for the GPU machine); without the package the run stops at once, before
    the output folder is touched, saying how to install it."""
    plan = _with(
        make_plan(tmp_path),
        strategy="deepspeed",
        deepspeed=DeepSpeedPlan(zero_stage=2, offload_optimizer=False, offload_params=False),
    )
    with pytest.raises(StrategyError, match="pip install deepspeed --no-build-isolation"):
        accelerator_kwargs(plan)
    with pytest.raises(RunError, match="needs the deepspeed package"):
        execute(plan)
    assert not (tmp_path / "out").exists()

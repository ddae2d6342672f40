"""`[distributed]` compiled: the plan records the chosen strategy's settings, `dbspec plan` shows them, and
the memory estimate shards across the target's processes."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from dbspec.compiler.target import parse_target
from dbspec.plan.io import run_hash
from dbspec.plan.model import DeepSpeedPlan, FsdpPlan
from dbspec.plan.summary import render_summary
from tests.unit.test_compile import codes, compile_in, image, planned_ok, write_spec


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """Two instance images in inst/ (test_compile's spec reads that folder)."""
    image(tmp_path / "inst" / "a.png", (64, 64))
    image(tmp_path / "inst" / "b.png", (96, 64))
    return tmp_path


def _summary(plan) -> str:
    out = io.StringIO()
    render_summary(plan, Console(file=out, width=200, color_system=None))
    return out.getvalue()


def test_the_plan_records_the_strategy_and_the_summary_shows_it(toy: Path):
    write_spec(toy, distributed={"strategy": "deepspeed", "zero_stage": 3, "zero_offload_optimizer": True})
    plan = planned_ok(toy, parse_target("cuda:80GB:9.0:x8"))
    d = plan.distributed
    assert (d.strategy, d.timeout_s, d.fsdp) == ("deepspeed", 1800, None)
    assert d.deepspeed == DeepSpeedPlan(zero_stage=3, offload_optimizer=True, offload_params=False)
    text = _summary(plan)
    assert (
        "8 x deepspeed (ZeRO-3, optimizer offloaded to CPU); waits between processes bounded by 1800 s"
        in text
    )
    assert "note: ZeRO-3 over 8 process(es)" in text and "note: CPU offload:" in text


def test_fsdp_shrinks_the_estimate_and_changes_the_run(toy: Path):
    write_spec(toy, distributed={"strategy": "fsdp", "timeout_s": 600})
    fsdp = planned_ok(toy, parse_target("cuda:24GB:8.6:x4"))
    assert fsdp.distributed.fsdp == FsdpPlan(sharding="full_shard", cpu_offload=False)
    assert fsdp.distributed.timeout_s == 600
    write_spec(toy)
    ddp = planned_ok(toy, parse_target("cuda:24GB:8.6:x4"))
    assert (ddp.distributed.strategy, ddp.distributed.fsdp, ddp.distributed.deepspeed) == ("ddp", None, None)
    assert fsdp.memory.optimizer * 4 == ddp.memory.optimizer and fsdp.memory.total < ddp.memory.total
    assert run_hash(fsdp) != run_hash(ddp)  # another strategy is another run (resume refuses to mix them)
    # the wait bound does not change what trains: a run may resume with another timeout
    write_spec(toy, distributed={"strategy": "fsdp", "timeout_s": 60})
    assert run_hash(planned_ok(toy, parse_target("cuda:24GB:8.6:x4"))) == run_hash(fsdp)


def test_one_process_fsdp_warns_and_deepspeed_on_the_cpu_is_refused(toy: Path):
    write_spec(toy, distributed={"strategy": "fsdp"})
    assert "DBS319" in codes(compile_in(toy, parse_target("cuda:24GB")), "warning")
    write_spec(toy, distributed={"strategy": "deepspeed"})
    planned = compile_in(toy, parse_target("cpu:x2"))
    assert planned.plan is None and "DBS328" in codes(planned, "error")

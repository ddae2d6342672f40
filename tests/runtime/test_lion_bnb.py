"""bitsandbytes' Lion optimizers (issue 12, kohya's Lion8bit / PagedLion8bit / bitsandbytes.optim.PagedLion):
`lion8bit`, `paged_lion`, `paged_lion8bit`. Each steps as the class kohya's get_optimizer builds,
`cls(params, lr=lr, **optimizer_args)`, bit for bit, on the CPU (bitsandbytes 0.50's CPU backend; the paged
ones run unpaged there, DBS314), the 8-bit state is what the memory estimate counts, the per-parameter step of
bf16 weights is exact for them, and a run of the tiny SD1 model trains and resumes bit-exact."""

from __future__ import annotations

import inspect
import io

import attrs
import pytest
import torch
from rich.console import Console

from dbspec.compiler.memory import OPTIMIZER_STATE_BYTES
from dbspec.plan.summary import render_summary
from dbspec.runtime.execute import execute
from dbspec.runtime.imports import unused_libraries
from dbspec.runtime.optim import make_optimizer, param_groups
from dbspec.runtime.rounding import with_stochastic_rounding
from tests.runtime.optim_kit import same, step_alike
from tests.runtime.runspec import compile_spec, final_weights, write_spec

bnb = pytest.importorskip("bitsandbytes")

KINDS = {
    "lion8bit": bnb.optim.Lion8bit,
    "paged_lion": bnb.optim.PagedLion,
    "paged_lion8bit": bnb.optim.PagedLion8bit,
}
# bitsandbytes' unpaged class of the same update (what the CPU runs for the paged ones)
UNPAGED = {"lion8bit": bnb.optim.Lion8bit, "paged_lion": bnb.optim.Lion, "paged_lion8bit": bnb.optim.Lion8bit}
ARGS = ["optimizer.lr=1e-3", "optimizer.betas=[0.95, 0.98]", "optimizer.weight_decay=0.1"]


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(64, 80, generator=g)),  # 5120 elements: 8-bit state in bitsandbytes
        torch.nn.Parameter(torch.randn(3, generator=g)),  # under min_8bit_size: 32-bit state
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_lion_kind_steps_as_the_bitsandbytes_class_kohya_builds(tmp_path, kind):
    plan = compile_spec(write_spec(tmp_path, steps=2), [f'optimizer.kind="{kind}"', *ARGS])
    o = plan.optimizer
    assert (o.kind, o.betas, o.weight_decay) == (kind, (0.95, 0.98), 0.1)
    paged_warning = any("DBS314" in w and "unpaged" in w for w in plan.warnings)
    assert paged_warning == kind.startswith("paged_"), plan.warnings
    assert "bitsandbytes" not in unused_libraries(plan)  # `dbspec run` leaves it visible
    console = Console(file=io.StringIO(), width=400)
    render_summary(plan, console)
    cls = KINDS[kind].__name__
    assert (
        f"{kind}, lr 0.001; bitsandbytes {cls}: betas 0.95, 0.98, weight decay 0.1" in console.file.getvalue()
    )
    ours, theirs, unpaged, pytorch_lion = _params(), _params(), _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is KINDS[kind]
    # kohya: bitsandbytes.optim.<class>(params, lr=learning_rate, betas=(0.95, 0.98), weight_decay=0.1)
    reference = KINDS[kind](theirs, lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1)
    plain = UNPAGED[kind](unpaged, lr=1e-3, betas=(0.95, 0.98), weight_decay=0.1)
    lion = make_optimizer(param_groups(pytorch_lion, [], o), attrs.evolve(o, kind="lion"))  # lion_pytorch
    step_alike([optimizer, reference, plain, lion], [ours, theirs, unpaged, pytorch_lion])
    assert same(ours, theirs) and not same(ours, _params())
    assert same(ours, unpaged)  # paging changes where the state lives, not the update
    state = optimizer.state[ours[0]]
    assert state["state1"].dtype == (torch.uint8 if kind.endswith("8bit") else torch.float32)
    assert optimizer.state[ours[1]]["state1"].dtype == torch.float32  # under 4096 elements
    if kind.endswith("8bit"):  # the 8-bit moment is not lion_pytorch's fp32 one (why it was a DBS404)
        assert not same(ours, pytorch_lion)


def test_the_memory_estimate_counts_the_8bit_state_bitsandbytes_keeps():
    """1 byte per element of the moment plus an fp32 absmax per block of 256 (and a 256-entry fp32 qmap per
    tensor); measured on the state bitsandbytes allocates, not taken from its code."""
    p = torch.nn.Parameter(torch.zeros(512, 1024))
    for cls, kind in ((bnb.optim.Lion8bit, "lion8bit"), (bnb.optim.PagedLion8bit, "paged_lion8bit")):
        optimizer = cls([p], lr=1e-4)
        p.grad = torch.ones_like(p)
        optimizer.step()
        state = optimizer.state[p]
        moment = sum(
            t.numel() * t.element_size() for k, t in state.items() if torch.is_tensor(t) and k != "qmap1"
        )
        assert moment / p.numel() == pytest.approx(OPTIMIZER_STATE_BYTES[kind])
        total = sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t))
        assert total - moment == 256 * 4  # the quantisation map, per tensor
    optimizer = bnb.optim.PagedLion([p], lr=1e-4)
    optimizer.step()
    assert optimizer.state[p]["state1"].numel() * 4 / p.numel() == OPTIMIZER_STATE_BYTES["paged_lion"]


@pytest.mark.parametrize("kind", ["lion8bit", "paged_lion8bit"])
def test_the_per_parameter_step_of_bf16_weights_equals_one_step_over_all(kind):
    """precision.weights = "bf16" steps the optimizer one parameter at a time (runtime/rounding.py); for
    bitsandbytes' Lion that is the same update as one step over all of them (fp32 parameters: no rounding)."""
    ours, theirs = _params(), _params()
    wrapped = with_stochastic_rounding(KINDS[kind](ours, lr=1e-3, betas=(0.95, 0.98)), 0, torch.device("cpu"))
    whole = KINDS[kind](theirs, lr=1e-3, betas=(0.95, 0.98))
    step_alike([wrapped, whole], [ours, theirs])
    assert same(ours, theirs) and not same(ours, _params())


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_lion_run_trains_and_resumes_bit_exact(tmp_path, kind):
    spec = write_spec(tmp_path, steps=4)  # a full fine-tune: the tiny UNet has tensors of >= 4096 elements
    options = [f'optimizer.kind="{kind}"', "optimizer.lr=1e-4", "optimizer.weight_decay=0.0"]
    whole = execute(compile_spec(spec, [*options, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    parts = compile_spec(spec, [*options, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    state = torch.load(next((tmp_path / "parts").rglob("training_state.pt")), weights_only=True)
    # bitsandbytes' state_dict nests its tensors under one key per parameter
    held = [s.get("__bnb_optimizer_quant_state__", s) for s in state["optimizer"]["state"].values()]
    dtypes = {s["state1"].dtype for s in held}
    assert (torch.uint8 in dtypes) == kind.endswith("8bit")  # the checkpoint holds the 8-bit moments


def test_a_bf16_weights_lion8bit_run_trains_and_resumes_bit_exact(tmp_path):
    extra = '[precision]\nmixed = "bf16"\nweights = "bf16"\n'
    spec = write_spec(tmp_path, steps=4, extra=extra)
    options = ['optimizer.kind="lion8bit"', "optimizer.lr=1e-4"]
    plan = compile_spec(spec, [*options, "output.dir=parts"])
    assert plan.precision.weights == "bf16" and plan.precision.stochastic_rounding
    whole = execute(compile_spec(spec, [*options, "output.dir=whole"]))
    assert whole.status == "finished"
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_default_betas_are_the_bitsandbytes_class_defaults(tmp_path, kind):
    plan = compile_spec(write_spec(tmp_path, steps=2), [f'optimizer.kind="{kind}"'])
    default = inspect.signature(KINDS[kind].__init__).parameters["betas"].default
    assert plan.optimizer.betas == tuple(default)

"""kohya's DAdapt* optimizers and Adafactor's relative step (issue 12) through the real optimizer and loop
on a tiny SD1 model."""

from __future__ import annotations

import json
import math

import dadaptation
import dadaptation.experimental
import pytest
import torch
from transformers.optimization import Adafactor, AdafactorSchedule

from dbspec.runtime.execute import execute
from dbspec.runtime.optim import make_lr_scheduler, make_optimizer, param_groups
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

# kohya's optimizer_type -> the class its get_optimizer builds, and dbspec's kind for it
KOHYA = {
    "dadapt_adam": dadaptation.DAdaptAdam,
    "dadapt_adam_preprint": dadaptation.experimental.DAdaptAdamPreprint,
    "dadapt_adagrad": dadaptation.DAdaptAdaGrad,
    "dadapt_adan": dadaptation.DAdaptAdan,
    "dadapt_adan_ip": dadaptation.experimental.DAdaptAdanIP,
    "dadapt_lion": dadaptation.DAdaptLion,
    "dadapt_sgd": dadaptation.DAdaptSGD,
}


def _params() -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.nn.Parameter(torch.randn(4, 3, generator=g)),
        torch.nn.Parameter(torch.randn(3, generator=g)),
    ]


def _steps(optimizer, params, n: int = 3) -> None:
    g = torch.Generator().manual_seed(1)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        optimizer.step()


@pytest.mark.parametrize("kind", list(KOHYA))
def test_each_dadapt_kind_steps_exactly_as_the_class_kohya_builds(tmp_path, kind):
    """dbspec's optimizer equals dadaptation's class built the way kohya's get_optimizer does
    (cls(params, lr=lr, **optimizer_args)) with the same arguments, step for step, d included."""
    plan = compile_spec(write_spec(tmp_path, steps=2), [f'optimizer.kind="{kind}"', "optimizer.lr=1.0"])
    o = plan.optimizer
    assert o.dadapt is not None and o.dadapt.d0 == 1e-6 and o.dadapt.growth_rate is None
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    assert type(optimizer) is KOHYA[kind]
    kwargs = {"weight_decay": o.weight_decay}
    if kind in ("dadapt_sgd", "dadapt_adagrad"):
        kwargs["momentum"] = o.momentum
    else:
        kwargs["betas"] = o.betas
    if kind in ("dadapt_adam", "dadapt_adam_preprint", "dadapt_adan", "dadapt_adan_ip", "dadapt_adagrad"):
        kwargs["eps"] = o.eps
    reference = KOHYA[kind](theirs, lr=1.0, **kwargs)
    _steps(optimizer, ours, 12)
    _steps(reference, theirs, 12)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    assert not torch.equal(ours[0], _params()[0])  # it stepped
    assert optimizer.param_groups[0]["d"] == reference.param_groups[0]["d"] >= 1e-6


def test_dadapt_settings_reach_the_optimizer_and_the_plan(tmp_path):
    plan = compile_spec(
        write_spec(tmp_path, steps=2),
        [
            'optimizer.kind="dadapt_adam"',
            "optimizer.lr=1.0",
            "optimizer.d0=1e-4",
            "optimizer.growth_rate=1.02",
            "optimizer.decouple=true",
            "optimizer.use_bias_correction=true",
        ],
    )
    group = make_optimizer(param_groups(_params(), [], plan.optimizer), plan.optimizer).param_groups[0]
    assert (group["d"], group["growth_rate"], group["decouple"], group["use_bias_correction"]) == (
        1e-4,
        1.02,
        True,
        True,
    )
    text = summary_text(plan)
    assert "dadapt_adam, lr 1" in text
    assert (
        "D-Adaptation: step = d x lr (logged as d*lr), d estimated from d0 0.0001 (at most x1.02 per step), "
        "lr ~1.0 expected" in text
    )
    assert "decouple, use_bias_correction" in text


def test_dadapt_adan_takes_three_betas(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=2), ['optimizer.kind="dadapt_adan"', "optimizer.lr=1.0"])
    assert plan.optimizer.betas == (0.98, 0.92, 0.99)  # dadaptation's Adan defaults
    optimizer = make_optimizer(param_groups(_params(), [], plan.optimizer), plan.optimizer)
    assert optimizer.param_groups[0]["betas"] == (0.98, 0.92, 0.99)


def test_a_dadapt_run_trains_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    kind = ['optimizer.kind="dadapt_adam"', "optimizer.lr=1.0"]
    whole = execute(compile_spec(spec, [*kind, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(row["d*lr"] > 0 for row in rows)  # the effective step size, as kohya logs it
    plan = compile_spec(spec, [*kind, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    assert first.status == "interrupted" and first.steps == 2
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- Adafactor ----------------------------------------------------------------------------------------------

RELATIVE = ['optimizer.kind="adafactor"', "optimizer.relative_step=true", "optimizer.scale_parameter=true"]


def test_adafactor_relative_step_is_kohyas_adafactor_with_its_schedule(tmp_path):
    """kohya: Adafactor(params, lr=None, relative_step=True, scale_parameter=True, ...) and
    AdafactorSchedule(optimizer, learning_rate); the same updates and the same reported LR."""
    plan = compile_spec(write_spec(tmp_path, steps=6), RELATIVE)
    o, s = plan.optimizer, plan.schedule
    assert o.adafactor is not None and o.adafactor.relative_step and o.adafactor.scale_parameter
    assert s.lr_schedule == "adafactor"
    # the plan's curve is Adafactor's relative step size before parameter scaling: min(1e-2, 1/sqrt(t))
    assert s.lr_points == tuple((step, min(1e-2, 1 / math.sqrt(step + 1))) for step, _ in s.lr_points)
    text = summary_text(plan)
    assert "Adafactor relative step: lr = min(1e-2, 1/sqrt(t)) x max(1e-3, RMS of the parameter)" in text
    assert "relative step at" in text
    ours, theirs = _params(), _params()
    optimizer = make_optimizer(param_groups(ours, [], o), o)
    scheduler = make_lr_scheduler(optimizer, s)
    reference = Adafactor(
        theirs, lr=None, relative_step=True, scale_parameter=True, weight_decay=o.weight_decay
    )
    ref_scheduler = AdafactorSchedule(reference, o.lr)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for p, q in zip(ours, theirs, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.clone()
        optimizer.step()
        reference.step()
        scheduler.step()
        ref_scheduler.step()
        assert scheduler.get_last_lr() == ref_scheduler.get_last_lr()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    # with 1e-2 < 1/sqrt(t) the reported LR is 1e-2 x RMS of the group's first parameter (after the step)
    state = optimizer.state[ours[0]]
    assert scheduler.get_last_lr()[0] == pytest.approx(1e-2 * max(1e-3, float(state["RMS"])))


def test_adafactor_warmup_init_curve(tmp_path):
    plan = compile_spec(write_spec(tmp_path, steps=6), [*RELATIVE, "optimizer.warmup_init=true"])
    assert plan.schedule.lr_points == tuple(
        (step, min(1e-6 * (step + 1), 1 / math.sqrt(step + 1))) for step, _ in plan.schedule.lr_points
    )


def test_an_adafactor_relative_step_run_trains_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, steps=4)
    whole = execute(compile_spec(spec, [*RELATIVE, "output.dir=whole"]))
    fixed = execute(compile_spec(spec, ['optimizer.kind="adafactor"', "output.dir=fixed"]))
    assert whole.status == "finished" and whole.losses[1:] != fixed.losses[1:]
    plan = compile_spec(spec, [*RELATIVE, "output.dir=parts"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

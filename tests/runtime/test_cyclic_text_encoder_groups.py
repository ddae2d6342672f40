"""Per-group CyclicLR bounds for text encoders that train at one rate (kohya's lists give each encoder's own
group its own bounds, issue 12): a schedule table naming `text_encoder_2` / `text_encoder_3` gives that
encoder an optimizer group of its own at the shared rate (the plan keeps optimizer.text_encoder_2_lr /
text_encoder_3_lr), the runtime builds it, each group's LR follows the plan's curve, and the run resumes
bit-exact. Without such a table the plan keeps one shared group."""

from __future__ import annotations

import torch

from dbspec.plan.io import plan_to_json
from dbspec.runtime.device import make_accelerator
from dbspec.runtime.execute import execute
from dbspec.runtime.setup import setup
from tests.runtime.runspec import compile_spec, final_weights, write_spec

BASE = "builtin:tiny-sd3"
EXTRA = """
[adapter]
kind = "lora"
rank = 2
alpha = 1.0

[train]
text_encoder = true
t5 = true
"""
# kohya lora_sd3 with one text_encoder_lr: [CLIP-L, CLIP-G, T5-XXL, MMDiT], one bound each
LOW = {"text_encoder": 1e-5, "text_encoder_2": 3e-5, "text_encoder_3": 2e-5, "denoiser": 1e-4}
RATES = ["optimizer.lr=1e-3", "optimizer.text_encoder_lr=3e-4", "model.t5_max_length=8"]


def _table(values: dict) -> str:
    return "{" + ", ".join(f"{k} = {v!r}" for k, v in values.items()) + "}"


CYCLIC = [
    *RATES,
    'schedule.lr_schedule="cyclic"',
    "schedule.step_size_up=2",
    "schedule.cycle_momentum=false",
    f"schedule.base_lr={_table(LOW)}",
    "schedule.max_lr=0",  # each group's own rate: 3e-4 for the encoders
]


def test_without_a_table_naming_them_the_encoders_share_one_group(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=2, extra=EXTRA)
    low = {"text_encoder": 1e-5, "denoiser": 1e-4}
    plan = compile_spec(spec, [*CYCLIC[:-2], f"schedule.base_lr={_table(low)}"])
    assert (plan.optimizer.text_encoder_2_lr, plan.optimizer.text_encoder_3_lr) == (None, None)
    assert [g.name for g in plan.schedule.torch.groups] == ["denoiser", "text_encoder"]


def test_each_encoder_named_gets_its_group_at_the_shared_rate_and_resumes_bit_exact(tmp_path):
    spec = write_spec(tmp_path, base=BASE, steps=4, extra=EXTRA)
    plan = compile_spec(spec, CYCLIC)
    o = plan.optimizer
    assert o.text_encoder_lr == o.text_encoder_2_lr == o.text_encoder_3_lr == 3e-4
    names = ["denoiser", "text_encoder", "text_encoder_2", "text_encoder_3"]
    assert [g.name for g in plan.schedule.torch.groups] == names
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    assert [g["name"] for g in run.optimizer.param_groups] == names
    assert all(g["params"] for g in run.optimizer.param_groups)
    seen: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(6):
        for group in run.optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        run.optimizer.step()
        run.lr_scheduler.step()
    for name, points in plan.schedule.group_lr_points:
        assert points and all(seen[name][step] == lr for step, lr in points), name
    # torch's CyclicLR over the groups, by hand: base from the table, peak each group's rate
    peaks = {"denoiser": 1e-3, "text_encoder": 3e-4, "text_encoder_2": 3e-4, "text_encoder_3": 3e-4}
    for name in names:
        up = [LOW[name] + (peaks[name] - LOW[name]) * min(s, 4 - s) / 2 for s in range(5)]
        assert all(abs(a - b) <= 1e-12 for a, b in zip(seen[name][:5], up, strict=True)), name
    del run

    whole = execute(compile_spec(spec, [*CYCLIC, "output.dir=whole"]))
    parts = compile_spec(spec, [*CYCLIC, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

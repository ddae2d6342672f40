"""Per-group CyclicLR / OneCycleLR bounds (schedule.base_lr / max_lr tables): the runtime's scheduler sets
each optimizer group's LR as torch's CyclicLR built by hand with per-group lists does, the plan's per-
group curves are those LRs, and a run with them resumes bit-exact."""

from __future__ import annotations

import io

import pytest
import torch
from rich.console import Console

from dbspec.plan.summary import render_summary
from dbspec.runtime.execute import execute
from dbspec.runtime.optim import make_lr_scheduler, make_optimizer, param_groups
from tests.runtime.runspec import TEXT_ENCODER_LORA, compile_spec, final_weights, write_spec

# every group's bounds, written out once: the expectation below is torch's own CyclicLR given these lists
BASE = {"denoiser": 1e-5, "denoiser_lora_up": 4e-5, "text_encoder": 2e-6, "text_encoder_lora_up": 8e-6}
PEAK = {"denoiser": 1e-3, "denoiser_lora_up": 0.0, "text_encoder": 3e-4, "text_encoder_lora_up": 1e-3}
LOW_M = {"denoiser": 0.8, "denoiser_lora_up": 0.7, "text_encoder": 0.85, "text_encoder_lora_up": 0.6}
TOP_M = {"denoiser": 0.9, "denoiser_lora_up": 0.95, "text_encoder": 0.9, "text_encoder_lora_up": 0.99}
RATES = {"denoiser": 1e-3, "denoiser_lora_up": 4e-3, "text_encoder": 5e-4, "text_encoder_lora_up": 2e-3}
LORAPLUS = TEXT_ENCODER_LORA.replace('kind = "lora"', 'kind = "lora"\nloraplus_ratio = 4')


def _table(values: dict) -> str:
    return "{" + ", ".join(f'"{k}" = {v!r}' for k, v in values.items()) + "}"  # quoted: `denoiser_x0.5`


def _overrides(names: list[str]) -> list[str]:
    return [
        'schedule.lr_schedule="cyclic"',
        "schedule.step_size_up=2",
        "schedule.step_size_down=3",
        'schedule.cyclic_mode="triangular2"',
        "optimizer.text_encoder_lr=5e-4",
        f"schedule.base_lr={_table({n: BASE[n] for n in names})}",
        f"schedule.max_lr={_table({n: PEAK[n] for n in names})}",
        f"schedule.base_momentum={_table({n: LOW_M[n] for n in names})}",
        f"schedule.max_momentum={_table({n: TOP_M[n] for n in names})}",
    ]


def _groups(names: list[str]) -> list[dict]:
    """One tiny parameter per group, named and at its rate as the runtime's param_groups makes them."""
    return [{"params": [torch.nn.Parameter(torch.zeros(3))], "lr": RATES[n], "name": n} for n in names]


def test_each_group_follows_torchs_cyclic_lr_with_per_group_lists(tmp_path):
    names = list(BASE)
    plan = compile_spec(write_spec(tmp_path, steps=12, extra=LORAPLUS), _overrides(names))
    assert [g.name for g in plan.schedule.torch.groups] == names
    # the runtime: its own param groups (LoRA+ up groups after their own) and its scheduler
    params = {n: torch.nn.Parameter(torch.zeros(3)) for n in names}
    up = frozenset({id(params["denoiser_lora_up"]), id(params["text_encoder_lora_up"])})
    groups = param_groups(
        [params["denoiser"], params["denoiser_lora_up"]],
        [[params["text_encoder"], params["text_encoder_lora_up"]]],
        plan.optimizer,
        up,
    )
    assert [g["name"] for g in groups] == names
    ours = make_optimizer(groups, plan.optimizer)
    scheduler = make_lr_scheduler(ours, plan.schedule)
    # by hand: AdamW over the same groups, CyclicLR with the lists in the groups' order
    theirs = torch.optim.AdamW(_groups(names), lr=1e-3)
    reference = torch.optim.lr_scheduler.CyclicLR(
        theirs,
        base_lr=[BASE[n] for n in names],
        max_lr=[PEAK[n] or RATES[n] for n in names],  # 0 = the group's own rate (dbspec's rule)
        step_size_up=2,
        step_size_down=3,
        mode="triangular2",
        base_momentum=[LOW_M[n] for n in names],
        max_momentum=[TOP_M[n] for n in names],
    )
    seen: dict[str, list[float]] = {n: [] for n in names}
    beta1: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(13):
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        assert [g["betas"][0] for g in ours.param_groups] == [g["betas"][0] for g in theirs.param_groups]
        for g in ours.param_groups:
            seen[g["name"]].append(g["lr"])
            beta1[g["name"]].append(g["betas"][0])
        for optimizer, sched in ((ours, scheduler), (theirs, reference)):
            optimizer.step()
            sched.step()
    # the plan's per-group curves are the LRs each group had
    for name, points in plan.schedule.group_lr_points:
        assert points and all(seen[name][step] == lr for step, lr in points)
    assert plan.schedule.lr_points == plan.schedule.group_lr_points[0][1]
    for name, points in plan.schedule.group_momentum_points:
        assert points and all(beta1[name][step] == m for step, m in points)
    assert len({tuple(beta1[n]) for n in names}) == len(names)  # each group cycles its own momentum


def test_one_cycle_takes_a_per_group_max_lr(tmp_path):
    names = ["denoiser", "text_encoder"]
    plan = compile_spec(
        write_spec(tmp_path, steps=6, extra=TEXT_ENCODER_LORA),
        [
            'schedule.lr_schedule="one_cycle"',
            "optimizer.text_encoder_lr=5e-4",
            "schedule.max_lr={denoiser = 2e-3, text_encoder = 0}",
        ],
    )
    ours = make_optimizer(_groups(names), plan.optimizer)
    scheduler = make_lr_scheduler(ours, plan.schedule)
    theirs = torch.optim.AdamW(_groups(names), lr=1e-3)
    reference = torch.optim.lr_scheduler.OneCycleLR(
        theirs, max_lr=[2e-3, RATES["text_encoder"]], total_steps=6
    )
    seen: dict[str, list[float]] = {n: [] for n in names}
    for index in range(7):  # the LR after 0 ... 6 (total_steps) scheduler steps
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        for g in ours.param_groups:
            seen[g["name"]].append(g["lr"])
        if index < 6:
            for optimizer, sched in ((ours, scheduler), (theirs, reference)):
                optimizer.step()
                sched.step()
    assert [name for name, _ in plan.schedule.group_lr_points] == names
    for name, points in plan.schedule.group_lr_points:
        assert all(seen[name][step] == lr for step, lr in points)


@pytest.mark.parametrize("loraplus", [False, True])
def test_a_per_group_cyclic_run_trains_and_resumes_bit_exact(tmp_path, loraplus):
    names = list(BASE) if loraplus else ["denoiser", "text_encoder"]
    spec = write_spec(tmp_path, steps=4, extra=LORAPLUS if loraplus else TEXT_ENCODER_LORA)
    overrides = _overrides(names)
    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    assert whole.status == "finished" and len(whole.losses) == 4
    plan = compile_spec(spec, [*overrides, "output.dir=parts"])
    console = Console(file=io.StringIO(), width=300)
    render_summary(plan, console)
    text = console.file.getvalue()
    assert "per group base_lr -> max_lr: denoiser 1e-05 -> 0.001 (momentum 0.9 -> 0.8), " in text
    assert all(f"lr at ({name})" in text and f"momentum at ({name})" in text for name in names)
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SCALED = """
[adapter]
kind = "lora"
rank = 4
alpha = 4.0
loraplus_ratio = 4

[[adapter.blocks]]
pattern = '^down_blocks\\.0\\.'
rank = 4
alpha = 4.0
lr_scale = 0.5

[[adapter.blocks]]
pattern = '^mid_block\\.'
rank = 4
alpha = 4.0
lr_scale = 2.0

[[adapter.blocks]]
pattern = '^up_blocks\\.1\\.'
rank = 4
alpha = 4.0
lr = 2e-3
"""
# kohya's block lr weights (networks.lora down/mid/up_lr_weight): one group per scale, and Flux's
# network_reg_lrs: one per own rate; LoRA+ up groups too
SCALE_BASE = {
    "denoiser": 1e-5,
    "denoiser_lora_up": 4e-5,
    "denoiser_x0.5": 2e-5,
    "denoiser_lora_up_x0.5": 8e-5,
    "denoiser_x2": 3e-5,
    "denoiser_lora_up_x2": 1.2e-4,
    "denoiser_lr0.002": 5e-5,
    "denoiser_lora_up_lr0.002": 2e-4,
}


def test_block_scale_groups_take_their_bounds_and_resume_bit_exact(tmp_path):
    """schedule tables keyed by the adapter blocks' groups (`denoiser_x<scale>`, `denoiser_lr<rate>`): the
    runtime's groups follow the plan's per-group curves, and a run resumes bit-exact. The tiny U-Net's
    attention layers all sit in the three blocks, so its `denoiser` groups stay empty: the runtime builds
    none, and the plan's bounds for them go unused."""
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.setup import setup

    overrides = [
        'schedule.lr_schedule="cyclic"',
        "schedule.step_size_up=2",
        f"schedule.base_lr={_table(SCALE_BASE)}",
        f"schedule.max_lr={_table({k: v * 50 for k, v in SCALE_BASE.items()})}",
    ]
    spec = write_spec(tmp_path, steps=4, extra=SCALED)
    plan = compile_spec(spec, overrides)
    assert sorted(g.name for g in plan.schedule.torch.groups) == sorted(SCALE_BASE)
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    built = {g["name"] for g in run.optimizer.param_groups}
    assert built == set(SCALE_BASE) - {"denoiser", "denoiser_lora_up"}
    seen: dict[str, list[float]] = {n: [] for n in SCALE_BASE}
    for _ in range(5):
        for group in run.optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        run.optimizer.step()
        run.lr_scheduler.step()
    for name, points in plan.schedule.group_lr_points:
        assert points and (name not in built or all(seen[name][step] == lr for step, lr in points))
    del run

    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    parts = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("schedule", ["cyclic", "one_cycle"])
def test_a_literal_max_lr_of_0_is_torchs_peak_of_0(tmp_path, schedule):
    """schedule.max_lr_zero = "literal" (kohya's max_lr=[..., 0, ...]): the runtime passes torch the 0, the
    group's LR follows torch's scheduler built by hand and the plan's curve; a run resumes bit-exact."""
    names = ["denoiser", "text_encoder"]
    overrides = [
        f'schedule.lr_schedule="{schedule}"',
        "schedule.step_size_up=2",
        "optimizer.text_encoder_lr=5e-4",
        'schedule.max_lr_zero="literal"',
        "schedule.max_lr={denoiser = 2e-3, text_encoder = 0}",
        "schedule.base_lr={denoiser = 1e-5, text_encoder = 2e-4}",
    ]
    spec = write_spec(tmp_path, steps=6, extra=TEXT_ENCODER_LORA)
    plan = compile_spec(spec, overrides)
    ours = make_optimizer(_groups(names), plan.optimizer)
    scheduler = make_lr_scheduler(ours, plan.schedule)
    theirs = torch.optim.AdamW(_groups(names), lr=1e-3)
    if schedule == "cyclic":
        reference = torch.optim.lr_scheduler.CyclicLR(
            theirs, base_lr=[1e-5, 2e-4], max_lr=[2e-3, 0.0], step_size_up=2
        )
    else:
        reference = torch.optim.lr_scheduler.OneCycleLR(theirs, max_lr=[2e-3, 0.0], total_steps=6)
    seen: dict[str, list[float]] = {n: [] for n in names}
    for index in range(7):
        assert [g["lr"] for g in ours.param_groups] == [g["lr"] for g in theirs.param_groups]
        for g in ours.param_groups:
            seen[g["name"]].append(g["lr"])
        if index < 6:
            for optimizer, sched in ((ours, scheduler), (theirs, reference)):
                optimizer.step()
                sched.step()
    for name, points in plan.schedule.group_lr_points:
        assert points and all(seen[name][step] == pytest.approx(lr, abs=1e-15) for step, lr in points)
    if schedule == "cyclic":  # from base_lr down towards its peak of 0
        assert seen["text_encoder"][0] == 2e-4 and seen["text_encoder"][2] == 0.0
    else:
        assert set(seen["text_encoder"]) == {0.0}

    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    parts = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(parts, stop_after=3)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


GROUPED = """
[adapter]
kind = "lora"
rank = 4
alpha = 4.0
loraplus_ratio = 4

[[adapter.blocks]]
pattern = '^down_blocks\\.0\\.'
rank = 4
alpha = 4.0
lr_scale = 0.5
group = "unet_block1"

[[adapter.blocks]]
pattern = '^mid_block\\.'
rank = 4
alpha = 4.0
lr_scale = 0.5
group = "unet_block12"

[[adapter.blocks]]
pattern = '^up_blocks\\.1\\.'
rank = 4
alpha = 4.0
group = "unet_block16"
"""
# kohya networks.lora's block groups: blocks of one lr weight (0.5) in groups of their own, with LoRA+
GROUP_BASE = {
    "denoiser_x0.5_unet_block1": 1e-5,
    "denoiser_lora_up_x0.5_unet_block1": 4e-5,
    "denoiser_x0.5_unet_block12": 2e-5,
    "denoiser_lora_up_x0.5_unet_block12": 8e-5,
    "denoiser_unet_block16": 3e-5,
    "denoiser_lora_up_unet_block16": 1.2e-4,
}


def test_blocks_with_groups_of_their_own_take_their_bounds_and_resume_bit_exact(tmp_path):
    """[[adapter.blocks]] `group`: blocks of one lr_scale in optimizer groups of their own, at the same rate
    (lr x scale, LoRA+ x ratio), named `denoiser[_x<scale>]_<group>`; each group's LR follows the plan's
    curve, and the changed group layout resumes bit-exact."""
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.setup import setup

    overrides = [
        'schedule.lr_schedule="cyclic"',
        "schedule.step_size_up=2",
        f"schedule.base_lr={_table(GROUP_BASE)}",
        "schedule.max_lr=0",  # each group's own rate
    ]
    spec = write_spec(tmp_path, steps=4, extra=GROUPED)
    plan = compile_spec(spec, overrides)
    rates = {g.name: g.rate for g in plan.schedule.torch.groups if g.name in GROUP_BASE}
    assert rates == {
        "denoiser_x0.5_unet_block1": 5e-4,
        "denoiser_lora_up_x0.5_unet_block1": 2e-3,
        "denoiser_x0.5_unet_block12": 5e-4,
        "denoiser_lora_up_x0.5_unet_block12": 2e-3,
        "denoiser_unet_block16": 1e-3,
        "denoiser_lora_up_unet_block16": 4e-3,
    }
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    built = {g["name"]: g for g in run.optimizer.param_groups}
    assert set(built) == set(GROUP_BASE)
    seen: dict[str, list[float]] = {n: [] for n in GROUP_BASE}
    for _ in range(5):
        for group in run.optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        run.optimizer.step()
        run.lr_scheduler.step()
    curves = dict(plan.schedule.group_lr_points)
    for name in GROUP_BASE:
        assert curves[name] and all(seen[name][step] == lr for step, lr in curves[name]), name
        # from base_lr up to the group's own rate (max_lr 0) after step_size_up steps
        assert seen[name][0] == GROUP_BASE[name] and seen[name][2] == pytest.approx(rates[name])
    del run

    whole = execute(compile_spec(spec, [*overrides, "output.dir=whole"]))
    parts = compile_spec(spec, [*overrides, "output.dir=parts"])
    first = execute(parts, stop_after=2)
    second = execute(parts, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


TEXT_GROUPED = (
    TEXT_ENCODER_LORA
    + """
[[adapter.text_encoder_blocks]]
pattern = '^text_encoder\\.text_model\\.encoder\\.layers\\.0\\.'
rank = 2
alpha = 2.0
lr = 2e-4
group = "reg_lr_0"

[[adapter.text_encoder_blocks]]
pattern = '^text_encoder\\.text_model\\.encoder\\.layers\\.1\\.'
rank = 2
alpha = 2.0
lr = 2e-4
group = "reg_lr_1"
"""
)
# kohya Flux network_reg_lrs: two regexes at one rate on the text encoder, each its own group (issue 12)
TEXT_PEAK = {"denoiser": 1e-3, "text_encoder": 3e-4, "text_encoder_lr0.0002_reg_lr_0": 5e-4}
TEXT_PEAK["text_encoder_lr0.0002_reg_lr_1"] = 7e-4


def test_text_encoder_blocks_with_groups_of_their_own_are_the_runtimes_groups(tmp_path):
    """[[adapter.text_encoder_blocks]] `group` (kohya Flux network_reg_lrs regexes at one rate): each block
    in a group of its own at its rate, named `text_encoder_lr<lr>_<group>` by the plan and the runtime alike,
    each following its own OneCycleLR peak."""
    from dbspec.plan.io import plan_to_json
    from dbspec.runtime.device import make_accelerator
    from dbspec.runtime.setup import setup

    overrides = [
        'schedule.lr_schedule="one_cycle"',
        "schedule.t_max=4",
        f"schedule.max_lr={_table(TEXT_PEAK)}",
    ]
    overrides += ["optimizer.text_encoder_lr=5e-4"]
    plan = compile_spec(write_spec(tmp_path, steps=4, extra=TEXT_GROUPED), overrides)
    assert {g.name: g.rate for g in plan.schedule.torch.groups} == {
        "denoiser": 1e-3,
        "text_encoder": 5e-4,
        "text_encoder_lr0.0002_reg_lr_0": 2e-4,
        "text_encoder_lr0.0002_reg_lr_1": 2e-4,
    }
    run = setup(plan, make_accelerator(plan), plan_to_json(plan), resume=False, console=None)
    built = {g["name"]: g for g in run.optimizer.param_groups}
    assert set(built) == set(TEXT_PEAK) and all(built[n]["params"] for n in built)
    seen: dict[str, list[float]] = {n: [] for n in TEXT_PEAK}
    for _ in range(4):
        for group in run.optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        run.optimizer.step()
        run.lr_scheduler.step()
    for name, points in plan.schedule.group_lr_points:
        assert points and all(seen[name][step] == lr for step, lr in points if step < 4), name
    assert max(seen["text_encoder_lr0.0002_reg_lr_1"]) > max(seen["text_encoder_lr0.0002_reg_lr_0"])

"""optimizer.blocks (kohya sdxl_train.py --block_lr) on the built-in tiny SDXL model.

Each diffusers parameter's original (SAI/LDM) name comes from dbspec's export table, checked here against
diffusers' own single-file converter (original -> diffusers must give every tensor back under its name);
kohya's rule (get_block_params_to_optimize, restated below) on that name is the block the parameter must
land in. Then a full fine-tune with block rates trains every block at its rate, leaves a block at 0
unchanged, and resumes bit-exactly (the gradients a block at 0 adds up are in the checkpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint

from dbspec.builtin import _sdxl_unet
from dbspec.convert.kohya.block_lr import full_block_pattern
from dbspec.plan.model import OptimizerBlockPlan
from dbspec.runtime.execute import execute
from dbspec.runtime.exports import rename, unet_table
from dbspec.runtime.optim import OptimizerError, make_lr_scheduler, make_optimizer
from dbspec.runtime.optimizer_blocks import optimizer_block_groups
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, summary_text, write_spec

RATES = [1e-3 * (1 + i) for i in range(23)]
RATES[4] = 0.0  # input_blocks.3: down_blocks.0's downsampler
RATES[22] = 0.0  # out: conv_norm_out, conv_out


def kohya_block(original: str) -> int:
    """sdxl_train.py get_block_params_to_optimize's index of an original parameter name."""
    if original.startswith(("time_embed.", "label_emb.")):
        return 0
    if original.startswith("input_blocks."):
        return 1 + int(original.split(".")[1])
    if original.startswith("middle_block."):
        return 10 + int(original.split(".")[1])
    if original.startswith("output_blocks."):
        return 13 + int(original.split(".")[1])
    if original.startswith("out."):
        return 22
    raise ValueError(f"unexpected parameter name: {original}")


def _blocks(rates) -> tuple[OptimizerBlockPlan, ...]:
    return tuple(
        OptimizerBlockPlan(name=f"denoiser_block{i}", pattern=full_block_pattern(i), lr=r)
        for i, r in enumerate(rates)
    )


def test_each_parameter_lands_in_kohyas_block():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_sdxl_unet())
    table = unet_table(unet.config)
    named = dict(unet.named_parameters())
    original = {name: rename(name, table) for name in named}
    # the original names are diffusers' own: its converter maps each tensor back to its diffusers name
    marked = {name: torch.full((1,), float(i)) for i, name in enumerate(named)}
    back = convert_ldm_unet_checkpoint(
        {"model.diffusion_model." + original[n]: t for n, t in marked.items()}, dict(unet.config)
    )
    assert back.keys() == marked.keys() and all(torch.equal(back[n], marked[n]) for n in marked)

    groups = optimizer_block_groups(
        [{"params": list(named.values()), "lr": 1.0, "name": "denoiser"}], unet, _blocks(RATES)
    )
    block_of = {id(p): kohya_block(original[n]) for n, p in named.items()}
    assert [g["name"] for g in groups] == [  # kohya: the blocks with parameters and a rate, in index order
        f"denoiser_block{i}" for i in range(23) if RATES[i] and any(b == i for b in block_of.values())
    ]
    seen = set()
    for group in groups:
        index = int(group["name"].removeprefix("denoiser_block"))
        assert {block_of[id(p)] for p in group["params"]} == {index} and group["lr"] == RATES[index]
        seen |= {id(p) for p in group["params"]}
    # every parameter is in its kohya block's group, but those of blocks at rate 0, which are in none
    assert seen == {i for i, b in block_of.items() if RATES[b]}
    assert {block_of[i] for i in block_of.keys() - seen} == {4, 22}


def _spec(tmp: Path) -> Path:
    blocks = "".join(
        f"\n[[optimizer.blocks]]\npattern = '{full_block_pattern(i)}'\nlr = {r!r}\n"
        for i, r in enumerate(RATES)
    )
    path = write_spec(tmp, base="builtin:tiny-sdxl", steps=4, extra=blocks)
    path.write_text(path.read_text().replace("lr = 1e-3\n", "lr = 1e-3\nweight_decay = 0.0\n", 1))
    return path


def test_block_rates_train_their_blocks(tmp_path):
    """Each block's rate reaches its group: lr 0's blocks stay as built, the others move. The same blocks'
    groups (their optimizer state, the lr-0 block frozen) resume bit-exactly in
    test_per_block_cyclic_bounds_follow_the_plan_and_resume_bit_exactly, whose spec is this one with a
    per-group CyclicLR on top."""
    plan = compile_spec(_spec(tmp_path / "a"))
    assert [(b.name, b.lr) for b in plan.optimizer.blocks] == [
        (f"denoiser_block{i}", r) for i, r in enumerate(RATES)
    ]
    summary = summary_text(plan)
    assert "denoiser_block4  │ `^down_blocks\\.0\\.downsamplers\\.`: lr 0: not trained" in summary
    whole = execute(plan, keep_models=True)
    base = dict(build_pipeline("builtin:tiny-sdxl").unet.named_parameters())
    trained = dict(whole.components.unet.named_parameters())
    frozen = [k for k in base if k.startswith(("down_blocks.0.downsamplers.", "conv_norm_out.", "conv_out."))]
    moved = [
        k for k in base if k.startswith(("conv_in.", "mid_block.", "up_blocks.0.")) and k.endswith("weight")
    ]
    assert frozen and all(torch.equal(trained[k], base[k]) for k in frozen)
    assert moved and all(not torch.equal(trained[k], base[k]) for k in moved)


def _cyclic(names: list[str]) -> list[str]:
    """A CyclicLR with one base_lr / max_lr per block group (kohya's lr_scheduler_args lists)."""
    index = {n: int(n.removeprefix("denoiser_block")) for n in names}
    base = ", ".join(f"{n} = {RATES[i] / 10!r}" for n, i in index.items())
    peak = ", ".join(f"{n} = {RATES[i] * (2 + i % 3)!r}" for n, i in index.items())
    return [
        'schedule.lr_schedule="cyclic"',
        "schedule.step_size_up=2",
        f"schedule.base_lr={{{base}}}",
        f"schedule.max_lr={{{peak}}}",
    ]


def test_per_block_cyclic_bounds_follow_the_plan_and_resume_bit_exactly(tmp_path):
    """schedule.base_lr / max_lr tables keyed by the blocks' groups (kohya sdxl_train.py --block_lr with
    CyclicLR's per-group lists): the runtime's groups take the plan's per-group curves, and a run resumes
    bit-exactly."""
    names = [f"denoiser_block{i}" for i, r in enumerate(RATES) if r]
    plan = compile_spec(_spec(tmp_path / "a"), _cyclic(names))
    assert [g.name for g in plan.schedule.torch.groups] == names
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**_sdxl_unet())
    groups = optimizer_block_groups(
        [{"params": list(unet.parameters()), "lr": 1e-3, "name": "denoiser"}], unet, plan.optimizer.blocks
    )
    optimizer = make_optimizer(groups, plan.optimizer)
    scheduler = make_lr_scheduler(optimizer, plan.schedule)
    seen: dict[str, list[float]] = {n: [] for n in names}
    for _ in range(5):
        for group in optimizer.param_groups:
            seen[group["name"]].append(group["lr"])
        optimizer.step()
        scheduler.step()
    # the tiny U-Net lacks some of SDXL's blocks: their groups stay empty, the runtime builds none
    built = [g["name"] for g in optimizer.param_groups]
    assert len(built) > 10 and set(built) <= set(names)
    for name, points in plan.schedule.group_lr_points:
        assert points and (name not in built or all(seen[name][step] == lr for step, lr in points))

    whole = execute(plan)
    again = compile_spec(_spec(tmp_path / "b"), _cyclic(names))
    first = execute(again, stop_after=2)
    second = execute(again, resume=True)
    assert whole.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_leftover_denoiser_group_the_tables_leave_out_is_refused(tmp_path):
    """Tables keyed by the blocks may leave `denoiser` out; a model whose parameters some pattern misses
    has that group, and the runtime refuses to guess its bounds."""
    names = [f"denoiser_block{i}" for i, r in enumerate(RATES) if r]
    plan = compile_spec(_spec(tmp_path), _cyclic(names))
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "lr": 1e-3, "name": n}
        for n in ["denoiser", names[0]]
    ]
    with pytest.raises(OptimizerError, match="leave parameters in the `denoiser` group"):
        make_lr_scheduler(make_optimizer(groups, plan.optimizer), plan.schedule)

"""Per-group bounds of torch's CyclicLR and OneCycleLR: `schedule.base_lr` / `schedule.max_lr` given as a
table keyed by optimizer group name (torch takes one value per parameter group, kohya's lr_scheduler_args
a list).

The optimizer's groups are named here as the runtime builds them (runtime/optim.py `param_groups`, then the
pivotal tokens' group), torch-free, from the plan's decisions; the tables must name each exactly once
(DBS416), and the plan shows every group's bounds and LR curve. A second or third text encoder that trains in
the first's (or second's) group at one rate gets a group of its own when a table names it (`text_encoder_2`,
`text_encoder_3`: kohya gives each encoder its own group, and its lists may give them different bounds).
Blocks that scale the rate (`lr_scale`, kohya's block lr weights) make one group per scale,
`denoiser_x<scale>` (`denoiser_lora_up_x<scale>` with LoRA+), blocks at a rate of their own (`lr`, kohya
Flux's network_reg_lrs) one per rate, `denoiser_lr<rate>`; a full fine-tune's `[[optimizer.blocks]]` one per
block at a rate above 0, `denoiser_block<i>`. `[[adapter.text_encoder_blocks]]`' scales and rates split each
text encoder's group alike (`text_encoder_lr<rate>`, `text_encoder_2_x<scale>`, kohya Flux's network_reg_lrs
on CLIP-L and T5-XXL). The `denoiser` group (a text encoder's) then holds only the parameters no block
matches, and a block group may match none: the tables may leave those out (kohya's lists have no value for
them), and the runtime refuses a run where a group they leave out holds parameters.
"""

from __future__ import annotations

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.precision import idle_text_encoders
from dbspec.compiler.schedule import Curve, lr_curve
from dbspec.compiler.torch_schedules import momentum_at
from dbspec.families import family_spec
from dbspec.plan.model import (
    GroupBoundsPlan,
    ModelPlan,
    OptimizerPlan,
    PivotalPlan,
    PrecisionPlan,
    SchedulePlan,
    denoiser_held,
)

# the schedules that take per-group bounds, and the bounds each uses (the momenta with cycle_momentum)
GROUP_BOUNDS = {"cyclic": ("base_lr", "max_lr"), "one_cycle": ("max_lr",)}
MOMENTUM_BOUNDS = ("base_momentum", "max_momentum")


def table_names(s) -> frozenset[str]:
    """The group names the spec's per-group tables (`[schedule]`, `s`) give, for the schedules that use them:
    a table naming `text_encoder_2` or `text_encoder_3` gives that encoder its own group, at its rate
    (compile.optimizer_plan keeps its rate in the plan, so the runtime builds the group)."""
    if s.lr_schedule not in GROUP_BOUNDS:
        return frozenset()
    keys = GROUP_BOUNDS[s.lr_schedule] + (MOMENTUM_BOUNDS if s.cycle_momentum else ())
    return frozenset(name for key in keys if isinstance(getattr(s, key), dict) for name in getattr(s, key))


@attrs.frozen
class BlockRates:
    """The learning-rate groups one table of adapter blocks adds to each group of its component: `scales`
    (lr_scale other than 1: `<name>_x<scale>`), `rates` (own lr: `<name>_lr<rate>`), `units` ((scale, own
    rate, group) of the blocks with a group of their own: `<name>[_x<scale> | _lr<rate>]_<group>`)."""

    scales: tuple[float, ...] = ()
    rates: tuple[float, ...] = ()
    units: tuple[tuple[float, float, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.scales or self.rates or self.units)


def block_rates(blocks) -> BlockRates:
    """The groups of a table of adapter blocks (spec's), as runtime/blocks.py names them; blocks at lr_scale 0
    (held at their init) have none (a DyLoRA's, GLoRA's blocks have no rates: getattr)."""
    blocks = [
        b
        for b in blocks
        if (getattr(b, "rank", 1) or getattr(b, "conv_rank", 0))
        and (getattr(b, "lr", 0) or getattr(b, "lr_scale", 1.0))
    ]
    plain = [b for b in blocks if not getattr(b, "group", "")]
    scales = tuple(
        dict.fromkeys(
            s for b in plain if (s := getattr(b, "lr_scale", 1.0)) != 1.0 and not getattr(b, "lr", 0)
        )
    )
    rates = tuple(dict.fromkeys(b.lr for b in plain if getattr(b, "lr", 0)))
    # blocks with a group of their own (kohya networks.lora's per-block groups)
    units = tuple(dict.fromkeys((b.lr_scale, b.lr, b.group) for b in blocks if getattr(b, "group", "")))
    return BlockRates(scales, rates, units)


def optimizer_groups(
    model: ModelPlan,
    precision: PrecisionPlan,
    o: OptimizerPlan,
    pivotal: PivotalPlan | None,
    blocks: BlockRates = BlockRates(),
    idle: tuple[str, ...] = (),
    text_blocks: BlockRates = BlockRates(),
    held: bool = False,
) -> tuple[tuple[str, float], ...]:
    """(name, rate) of every optimizer parameter group, in the runtime's order: the denoiser's, the text
    encoders' (the second its own only with its own rate), each followed by its LoRA+ up group and its
    blocks' groups (`blocks`: [[adapter.blocks]]', `text_blocks`: [[adapter.text_encoder_blocks]]', each
    group of a text encoder split by them alike: runtime/blocks.py), then the pivotal tokens'. A denoiser
    `held` whole at lr_scale 0 (kohya's U-Net modules at unet_lr 0) has none: runtime/blocks.py leaves
    every group of its out, as kohya's lists have no value for the U-Net."""
    # the idle text encoders (train.text_encoder_idle) carry the adapter out of the optimizer
    trains = {c.name: c.trainable != "frozen" and c.name not in idle for c in precision.components}
    groups: list[tuple[str, float]] = []

    def add(name: str, rate: float, ratio: float, split: BlockRates) -> None:
        groups.append((name, rate))
        if ratio:  # LoRA+ (LoRA adapters only): every LoRA module has an up matrix
            groups.append((f"{name}_lora_up", rate * ratio))
        for scale in split.scales:
            groups.append((f"{name}_x{scale:g}", rate * scale))
            if ratio:
                groups.append((f"{name}_lora_up_x{scale:g}", rate * ratio * scale))
        for own in split.rates:
            groups.append((f"{name}_lr{own:g}", own))
            if ratio:
                groups.append((f"{name}_lora_up_lr{own:g}", own * ratio))
        for scale, own, unit in split.units:
            tag = f"_lr{own:g}" if own else "" if scale == 1.0 else f"_x{scale:g}"
            lr = own or rate * scale
            groups.append((f"{name}{tag}_{unit}", lr))
            if ratio:
                groups.append((f"{name}_lora_up{tag}_{unit}", lr * ratio))

    if trains.get("unet") and not held:
        add("denoiser", o.lr, o.loraplus_denoiser_ratio, blocks)
        # [[optimizer.blocks]] (full fine-tune): each block at a rate above 0 in its own group after it
        groups += [(b.name, b.lr) for b in o.blocks if b.lr > 0]
    names = family_spec(model.family).text_encoder_names
    own = o.text_encoder_2_lr is not None and len(names) > 1 and trains.get(names[1], False)
    third_own = o.text_encoder_3_lr is not None and len(names) > 2 and trains.get(names[2], False)
    third = () if third_own else names[2:3]
    shared = names[:1] if own else (*names[:2], *third)
    ratio = o.loraplus_text_encoder_ratio
    if any(trains.get(n, False) for n in shared):
        add("text_encoder", o.text_encoder_lr, ratio, text_blocks)
    if own:
        add("text_encoder_2", o.text_encoder_2_lr, ratio, text_blocks)
    if third_own:
        add("text_encoder_3", o.text_encoder_3_lr, ratio, text_blocks)
    if pivotal is not None:
        groups.append(("pivotal", pivotal.lr))
    return tuple(groups)


def plan_group_bounds(
    ctx: Context,
    schedule: SchedulePlan,
    model: ModelPlan,
    precision: PrecisionPlan,
    optimizer: OptimizerPlan,
    pivotal: PivotalPlan | None,
) -> SchedulePlan:
    """The schedule with torch.groups and each group's LR curve when a used bound is a table; reports tables
    that do not name the optimizer's groups (DBS416) or that cannot apply (DBS417)."""
    s = ctx.spec.schedule
    if schedule.torch is None or schedule.lr_schedule not in GROUP_BOUNDS:
        return schedule
    keys = GROUP_BOUNDS[schedule.lr_schedule] + (MOMENTUM_BOUNDS if schedule.torch.cycle_momentum else ())
    tables = {key: getattr(s, key) for key in keys if isinstance(getattr(s, key), dict)}
    if not tables:
        return schedule
    # lr_scale blocks (kohya's block lr weights) and blocks at their own rate (network_reg_lrs): a group
    # per scale and per rate of each group of their component, as runtime/blocks.py names them
    blocks = block_rates(getattr(ctx.spec.adapter, "blocks", []))
    text_blocks = block_rates(getattr(ctx.spec.adapter, "text_encoder_blocks", []))
    idle = idle_text_encoders(ctx.spec, model.family)
    held = ctx.spec.adapter.kind != "none" and denoiser_held(getattr(ctx.spec.adapter, "blocks", ()))
    groups = optimizer_groups(model, precision, optimizer, pivotal, blocks, idle, text_blocks, held)
    if optimizer.blocks or blocks or text_blocks:
        # which of a component's groups hold parameters depends on the modules the patterns match: the
        # tables may leave out its own group and the scale groups (the runtime refuses a run where one the
        # tables leave out holds parameters)
        named = {name for table in tables.values() for name in table}
        optional = ("denoiser",) * bool(optimizer.blocks or blocks) + ("text_encoder",) * bool(text_blocks)
        groups = tuple(g for g in groups if not _optional(g[0], optional) or g[0] in named)
    names = [name for name, _ in groups]
    bad = False
    for key, table in tables.items():
        unknown = [k for k in table if k not in names]
        missing = [n for n in names if n not in table]
        if not unknown and not missing:
            continue
        bad = True
        problems = []
        if unknown:
            problems.append(f"it names {_listed(unknown)}, which the optimizer does not have")
        if missing:
            problems.append(f"it lacks {_listed(missing)}")
        ctx.report(
            "DBS416",
            "error",
            f"schedule.{key} must give each optimizer group one value: {'; '.join(problems)}. The groups "
            f"here: {', '.join(names)}",
            ("schedule", key, unknown[0]) if unknown and ctx.raw.given(("schedule", key, unknown[0])) else
            ("schedule", key),
            help=f"write schedule.{key} = {{ {', '.join(f'{n} = ...' for n in names)} }}, or one number",
        )  # fmt: skip
    if bad:
        return schedule
    a = schedule.torch
    bounds = tuple(
        GroupBoundsPlan(
            name=name,
            rate=rate,
            **{
                key: tables[key][name] if key in tables else getattr(a, key)
                for key in ("base_lr", "max_lr", *MOMENTUM_BOUNDS)
            },
        )
        for name, rate in groups
    )
    steps = [step for step, _ in schedule.lr_points]
    curves = tuple((b.name, group_lr_points(schedule, a, b, steps)) for b in bounds)
    momenta: tuple = ()
    if a.cycle_momentum:
        momenta = tuple((b.name, group_momentum_points(schedule, a, b, steps)) for b in bounds)
    return attrs.evolve(
        schedule,
        torch=attrs.evolve(a, groups=bounds),
        group_lr_points=curves,
        lr_points=curves[0][1] if curves else schedule.lr_points,
        group_momentum_points=momenta,
        momentum_points=momenta[0][1] if momenta else schedule.momentum_points,
    )


def _group_torch(a, bounds: GroupBoundsPlan):
    """The torch arguments with one group's bounds in place of every group's."""
    return attrs.evolve(
        a,
        base_lr=bounds.base_lr,
        max_lr=bounds.max_lr,
        base_momentum=bounds.base_momentum,
        max_momentum=bounds.max_momentum,
        groups=(),
    )


def group_lr_points(
    schedule: SchedulePlan, a, bounds: GroupBoundsPlan, steps: list[int]
) -> tuple[tuple[int, float], ...]:
    """One group's (step, lr) at `steps`: the schedule's curve with the group's rate and bounds."""
    curve = Curve(
        lr=bounds.rate,
        schedule=schedule.lr_schedule,
        warmup=schedule.warmup_steps,
        total=schedule.total_steps,
        t_max=schedule.t_max,
        torch=_group_torch(a, bounds),
    )
    return tuple(zip(steps, lr_curve(steps, curve), strict=True))


def group_momentum_points(
    schedule: SchedulePlan, a, bounds: GroupBoundsPlan, steps: list[int]
) -> tuple[tuple[int, float], ...]:
    """One group's (step, momentum or beta1) at `steps` with cycle_momentum."""
    period = schedule.t_max or schedule.total_steps
    g = _group_torch(a, bounds)
    return tuple((step, momentum_at(schedule.lr_schedule, step, bounds.rate, period, g)) for step in steps)


def _optional(name: str, components: tuple[str, ...]) -> bool:
    return name.startswith(components) and not name.startswith("denoiser_block")


def _listed(names: list[str]) -> str:
    return ", ".join(f"`{n}`" for n in names)

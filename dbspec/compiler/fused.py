"""Fused projections (adapter.fused_projections): the fused Linears of the family's original model (the
registry's `fused_projections`) whose diffusers parts share one LoRA down-projection, as kohya's LoRA on
the fused layer has (networks.lora_flux without split_qkv).

Adapter targets are module-name suffixes and per-block ranks regular expressions over module paths, so
which parts of a fused layer are adapted, and at which rank, is settled here over the block indices a model
can have (`_INDICES`), without the weights: DBS505 (a family without fused layers), DBS506 (a fused layer
with some parts adapted and others not: those rows get no update), DBS507 (parts of one fused layer at
different ranks, alphas or learning-rate scales: one down-projection has one of each; LoKr / LoHa, one
LyCORIS module per fused layer: parts matched by different [[adapter.blocks]] entries). Diag-OFT's, BOFT's and
GLoRA's fused layers (LyCORIS's module on the stacked rows, runtime/lycoris_oft.py, lycoris_boft.py,
lycoris_glora.py), IA^3's (one module_dropout draw per fused layer, runtime/fused.py FusedSkip) and full's
(that draw and one rank-dropout row mask, runtime/fused_lycoris_dropout.py LycorisDraw): DBS577."""

from __future__ import annotations

import re

from dbspec import codes
from dbspec.compiler.context import Context
from dbspec.util.targets import targeted
from dbspec.families import FamilySpec, FusedProjection, family_spec
from dbspec.plan.model import AdapterPlan, FusedPlan, ModelPlan
from dbspec.spec.model import (
    BoftAdapter,
    DiagOftAdapter,
    DyloraAdapter,
    FullAdapter,
    GloraAdapter,
    Ia3Adapter,
    LohaAdapter,
    LokrAdapter,
    LoraAdapter,
    TloraAdapter,
)

_INDICES = range(64)  # block indices checked (FLUX.1: 19 double and 38 single blocks)
_OPTION = ("adapter", "fused_projections")
_FUSED_KINDS = (
    LoraAdapter,
    LohaAdapter,
    LokrAdapter,
    DiagOftAdapter,
    BoftAdapter,
    GloraAdapter,
    DyloraAdapter,
    Ia3Adapter,
    FullAdapter,
    TloraAdapter,
)
# LyCORIS's module per fused Linear: DBS577
_MODULE_KINDS = (DiagOftAdapter, BoftAdapter, GloraAdapter, DyloraAdapter, Ia3Adapter, FullAdapter)
_MODULE_KINDS += (TloraAdapter,)


def _rank(path: str, adapter: AdapterPlan) -> tuple[int, float, float, str]:
    """(rank, alpha, learning-rate scale, optimizer group of its own) of a linear module at `path`: its
    block's (the first pattern that matches), else the adapter's; rank 0 when the targets do not name it."""
    if not targeted(path, adapter.denoiser_targets):
        return 0, 0.0, 1.0, ""
    if adapter.kind == "ia3":  # no rank: the side it scales (2: the input columns, input_targets)
        return (2 if targeted(path, adapter.input_targets) else 1), 0.0, 1.0, ""
    if adapter.kind == "full":  # no rank: a copy of the layer
        return 1, 0.0, 1.0, ""
    block = next((b for b in adapter.blocks if re.search(b.pattern, path)), None)
    if adapter.kind in (
        "diag-oft",
        "boft",
    ):  # its block-size hint, constraint and rescale (a block's: rank, alpha)
        if block is None:
            return adapter.oft_block_size, adapter.oft_constraint, 1.0, ""
        return (
            block.rank,
            block.alpha,
            block.lr_scale,
            "" if block.rescaled == "adapter" else f"rescaled {block.rescaled}",
        )
    if block is None:
        return adapter.rank, adapter.alpha, 1.0, ""
    if adapter.kind == "tlora" and block.kind in ("adapter", "tlora"):  # one SVD: one sig_type
        return block.rank, block.alpha, block.lr_scale, f"sig_type {block.sig_type}"
    return block.rank, block.alpha, block.lr_scale, block.group


def _adapted(
    group: FusedProjection, index: int, adapter: AdapterPlan
) -> dict[str, tuple[int, float, float, str]]:
    """The parts of block `index` of the group that get a LoRA: part -> (rank, alpha, learning-rate scale,
    optimizer group of its own)."""
    out = {}
    for part in group.parts:
        found = _rank(f"{group.blocks}.{index}.{part}", adapter)
        if found[0]:
            out[part] = found
    return out


def fused_plan(adapter, family: str, plan: AdapterPlan) -> tuple[FusedPlan, ...]:
    """The family's fused layers with at least one adapted part, when the spec asks for fused projections
    (LoRA: shared down-projections; LoKr: one Kronecker update per fused layer, runtime/fused_lokr.py;
    Diag-OFT: the fused layer's block split, runtime/lycoris_oft.py)."""
    if not isinstance(adapter, _FUSED_KINDS) or not adapter.fused_projections:
        return ()
    return tuple(
        FusedPlan(name=g.kohya_name, blocks=g.blocks, parts=g.parts)
        for g in family_spec(family).fused_projections
        if any(_adapted(g, i, plan) for i in _INDICES)
    )


def split_fused_plan(adapter, family: str, plan: AdapterPlan) -> tuple[FusedPlan, ...]:
    """adapter.fused_dropout: the family's fused layers with an adapted part whose separate LoRAs (kohya's
    split_qkv) draw their dropouts once per layer; () without dropouts to draw."""
    if not isinstance(adapter, LoraAdapter) or not adapter.fused_dropout or adapter.fused_projections:
        return ()
    if not (plan.module_dropout or plan.down_dropout or plan.rank_dropout):
        return ()
    return tuple(
        FusedPlan(name=g.kohya_name, blocks=g.blocks, parts=g.parts)
        for g in family_spec(family).fused_projections
        if any(_adapted(g, i, plan) for i in _INDICES)
    )


def check_fused_dropout(ctx: Context, family: str) -> None:
    """DBS552: adapter.fused_dropout asks for separate parts of fused layers (fused_projections false) in a
    family that has them."""
    adapter = ctx.spec.adapter
    if not isinstance(adapter, LoraAdapter) or not adapter.fused_dropout:
        return
    spec = family_spec(family)
    why = (
        "adapter.fused_projections = true already draws them once per fused layer (one shared down)"
        if adapter.fused_projections
        else f"{spec.title} models have no fused layers (its diffusers Linears are the original model's)"
        if not spec.fused_projections
        else ""
    )
    if why:
        ctx.report(
            "DBS552",
            "error",
            f"adapter.fused_dropout draws the dropouts of a fused layer's separate parts together, but {why}",
            ("adapter", "fused_dropout"),
            help="remove adapter.fused_dropout",
        )


def _no_fused_layers(ctx: Context, spec: FamilySpec) -> bool:
    """DBS505 when the family has no fused layers (reported); False when it has."""
    if spec.fused_projections:
        return False
    ctx.report(
        "DBS505",
        "error",
        f"adapter.fused_projections is true, but {spec.title} models have no fused layers (its "
        "diffusers Linears are the original model's)",
        _OPTION,
        help="remove adapter.fused_projections",
    )
    return True


def check_fused(ctx: Context, family: str, plan: AdapterPlan) -> None:
    adapter = ctx.spec.adapter
    if isinstance(adapter, (LohaAdapter, LokrAdapter)) and adapter.output_dropout:
        _check_lycoris_output_dropout(ctx, adapter)
    if not isinstance(adapter, _FUSED_KINDS) or not adapter.fused_projections:
        return
    lokr = isinstance(adapter, (LohaAdapter, LokrAdapter))  # LyCORIS's fused LoKr / LoHa
    if lokr:
        _check_fused_lokr(ctx, adapter, family)
    if isinstance(adapter, _MODULE_KINDS):
        _check_fused_module(ctx, adapter, family, plan)
        return
    spec = family_spec(family)
    if _no_fused_layers(ctx, spec):
        return
    # several kinds (blocks' `kind`, runtime/mixed_kinds.py): each fused layer one LyCORIS module of one
    # kind, so one block's and every part adapted, as for LoKr / LoHa
    whole = lokr or any(getattr(b, "kind", "adapter") not in ("adapter", plan.kind) for b in plan.blocks)
    partial = []
    for group in spec.fused_projections:
        for index in _INDICES:
            found = _adapted(group, index, plan)
            if whole and found and _split_by_blocks(ctx, group, index, plan):
                return
            if len(set(found.values())) > 1:
                shown = ", ".join(
                    f"{p} rank {r} alpha {a:g} lr x {lr:g}" + (f" group {g}" if g else "")
                    for p, (r, a, lr, g) in found.items()
                )
                ctx.report(
                    "DBS507",
                    "error",
                    f"adapter.fused_projections shares one down-projection among the parts of "
                    f"{group.blocks}.{index}'s fused {group.kohya_name}, but they get different ranks, "
                    f"alphas, learning-rate scales or optimizer groups: {shown}",
                    ("adapter", "blocks") if plan.blocks else _OPTION,
                    help="give the parts of a fused layer one rank, alpha, lr_scale and group "
                    "([[adapter.blocks]] patterns that match them all), or set "
                    "adapter.fused_projections = false",
                )
                return
            if not lokr and _split_scalar(ctx, group, index, found, plan):
                return
            if found and len(found) < len(group.parts):
                missing = [p for p in group.parts if p not in found]
                partial.append(f"{group.blocks}.{index}: {group.kohya_name} without {', '.join(missing)}")
                break
    if not lokr and (adapter.dora or block_dora(adapter)):  # the adapter's, or blocks' own
        _check_fused_dora(ctx, adapter, partial)
    if partial and whole:
        what = adapter.kind if lokr else "several kinds ([[adapter.blocks]] kind)"
        ctx.report(
            "DBS575",
            "error",
            f"adapter.fused_projections with {what}: LyCORIS's module spans every row of a fused "
            f"layer, so every part must be adapted: {'; '.join(partial)}",
            ("adapter", "denoiser_targets"),
            help="add the missing parts to adapter.denoiser_targets (or leave the whole fused layer out)",
        )
    elif partial:
        ctx.report(
            "DBS506",
            "warning",
            "adapter.fused_projections: some fused layers have only some of their parts adapted; the shared "
            "down-projection serves the adapted parts and the other parts' rows get no update (kohya's LoRA "
            f"on the fused layer would train them): {'; '.join(partial)}",
            ("adapter", "denoiser_targets"),
            help="add the missing parts to adapter.denoiser_targets (kohya's Flux set adds proj_mlp), or "
            "accept the zero rows",
        )


def _split_scalar(ctx: Context, group: FusedProjection, index: int, found: dict, plan: AdapterPlan) -> bool:
    """DBS507: LyCORIS's LoCon on a fused layer has one scalar (use_scalar), which the parts share
    (runtime/fused.py), and decomposes the whole fused weight or none of it (weight_decompose): a block's
    own scalar or dora must cover every adapted part alike. Whether it reported."""
    for key, what in (
        ("scalar", "LyCORIS scalar"),
        ("dora", "LyCORIS weight decomposition"),
        ("rank_dropout_scale", "LyCORIS rank-dropout rescale"),
    ):
        own = {}
        for part in found:
            path = f"{group.blocks}.{index}.{part}"
            block = next((b for b in plan.blocks if re.search(b.pattern, path)), None)
            given = "adapter" if block is None else getattr(block, key)
            own[part] = getattr(plan, key) if given == "adapter" else given == "on"
        if len(set(own.values())) < 2:
            continue
        shown = ", ".join(f"{part} {'with' if on else 'without'}" for part, on in own.items())
        ctx.report(
            "DBS507",
            "error",
            f"adapter.fused_projections shares one {what} among the parts of {group.blocks}.{index}'s "
            f"fused {group.kohya_name}, but its [[adapter.blocks]] give some parts one and others not: "
            f"{shown}",
            ("adapter", "blocks"),
            help=f"give the parts of a fused layer one `{key}` ([[adapter.blocks]] patterns that match them "
            "all), or set adapter.fused_projections = false",
        )
        return True
    return False


def _split_by_blocks(ctx: Context, group: FusedProjection, index: int, plan: AdapterPlan) -> bool:
    """DBS507: LyCORIS's LoKr / LoHa on a fused layer is one module, whose rank, alpha and LoKr factor and
    switches are one block's (runtime/fused_lokr.py reads its first part's): every part's first matching
    [[adapter.blocks]] entry must be the same one. Whether it reported."""
    paths = {part: f"{group.blocks}.{index}.{part}" for part in group.parts}
    found = {
        part: next((i for i, b in enumerate(plan.blocks) if re.search(b.pattern, path)), None)
        for part, path in paths.items()
    }
    if len(set(found.values())) < 2:
        return False
    shown = ", ".join(
        f"{part}: " + ("none" if i is None else f"adapter.blocks[{i}] ({plan.blocks[i].pattern})")
        for part, i in found.items()
    )
    ctx.report(
        "DBS507",
        "error",
        f"adapter.fused_projections with {plan.kind} trains one LyCORIS module on {group.blocks}.{index}'s "
        f"fused {group.kohya_name}, whose rank, alpha and factor are one block's, but its parts' first "
        f"matching [[adapter.blocks]] differ: {shown}",
        ("adapter", "blocks"),
        help="make each block's pattern match every part of the fused layers it covers (or none of them), "
        "or set adapter.fused_projections = false",
    )
    return True


def _check_fused_dora(ctx: Context, adapter: LoraAdapter, partial: list[str]) -> None:
    """DBS509: a fused LoRA's DoRA is LyCORIS's weight decomposition of the whole fused Linear (runtime/
    lycoris_dora.py on each part: per output row its rows' magnitudes; per input column one (1, in) magnitude
    the parts share, each part renormalised by the column norms of every part's merged rows, tie_fused_doras),
    over every part."""
    why = []
    if adapter.dora_form != "lycoris":
        why.append(f'dora_form = "{adapter.dora_form}" (peft\'s DoRA has no kohya layout)')
    # per input column: one (1, in) magnitude shared by the parts (lycoris_dora.tie_fused_doras), the
    # adapter's dora or blocks' own over whole fused layers (DBS507; the dropouts: DBS267)
    if partial:
        why.append(f"parts left out: {'; '.join(partial)}")
    if why:
        ctx.report(
            "DBS509",
            "error",
            "adapter.dora with fused_projections is LyCORIS's weight decomposition of each fused layer, over "
            f"every part: {', '.join(why)}",
            ("adapter", "dora"),
            help=codes.help("DBS509"),
        )


def fused_for(ctx: Context, model: ModelPlan | None, plan: AdapterPlan) -> AdapterPlan:
    """`plan` (its fused layers planned by adapter_plan) after the checks."""
    if model is not None:
        check_fused(ctx, model.family, plan)
        check_fused_dropout(ctx, model.family)
    return plan


def _check_lycoris_output_dropout(ctx: Context, adapter: LohaAdapter | LokrAdapter) -> None:
    """DBS575: a LoKr's / LoHa's output_dropout is LyCORIS's bypass dropout
    (runtime/fused_lycoris_dropout.py), and LyCORIS's bypass forward, where it acts, does not decompose;
    LokrModule's / LohaModule's decomposed forward never reads it (per output row and per input column:
    tests/runtime/test_lycoris_block_dora_max_norm.py), so no LyCORIS module has the pair."""
    if adapter.dora:
        ctx.report(
            "DBS575",
            "error",
            f"adapter.output_dropout with {adapter.kind} and adapter.dora: LyCORIS's bypass forward, where "
            "its dropout acts, does not decompose the weight, and its decomposed forward never reads it",
            ("adapter", "output_dropout"),
            help="remove adapter.output_dropout or adapter.dora",
        )


def _check_fused_lokr(ctx: Context, adapter: LohaAdapter | LokrAdapter, family: str) -> None:
    """DBS575: what a fused LoKr (runtime/fused_lokr.py) does not have: a family without a kohya network
    layout of its own (its file names the fused layers by runtime/flux_kohya.py's or sd3_kohya.py's original
    names; the registry's `kohya_lora_targets` marks those layouts)."""
    spec = family_spec(family)
    if spec.fused_projections and not spec.kohya_lora_targets:
        ctx.report(
            "DBS575",
            "error",
            f"adapter.fused_projections with {adapter.kind} is written in kohya's Flux / SD3 layouts, which "
            f"{spec.title} models have not",
            _OPTION,
            help="set adapter.fused_projections = false",
        )
    strategy = ctx.spec.distributed.strategy
    if strategy != "ddp":  # shards of the shared factors: untested (tied Parameters across wrapped modules)
        ctx.report(
            "DBS575",
            "error",
            f'adapter.fused_projections with {adapter.kind} under distributed.strategy = "{strategy}": the '
            "parts' shared factors are not sharded there",
            ("distributed", "strategy"),
            help='use distributed.strategy = "ddp", or set adapter.fused_projections = false',
        )
    # the weight decomposition per input column takes module_dropout / rank_dropout as per output row: the
    # fused module's one draw, its parts each decomposing its rows by the column norms of every part's
    # masked merged rows (runtime/lycoris_dora.py _fused_column_delta; output_dropout with dora:
    # _check_lycoris_output_dropout, a block's own dora: rules.block_dora_fits)


def _units(group: FusedProjection, index: int, plan: AdapterPlan, adapted: dict) -> set[int]:
    """The DyLoRA units of a fused layer's adapted parts: each part's first matching block's own, else the
    adapter's (LyCORIS's DyLoraModule on the fused Linear has one)."""
    units = set()
    for part in adapted:
        block = next((b for b in plan.blocks if re.search(b.pattern, f"{group.blocks}.{index}.{part}")), None)
        units.add(block.unit if block is not None and block.unit else plan.dylora_unit)
    return units


def _check_fused_module(
    ctx: Context,
    adapter: DiagOftAdapter | GloraAdapter | DyloraAdapter | Ia3Adapter | FullAdapter,
    family: str,
    plan: AdapterPlan,
) -> None:
    """DBS505: a family without fused layers. DBS577: what LyCORIS's Diag-OFT, BOFT, GLoRA or DyLoRA on a
    fused Linear has that the separate parts cannot share (Diag-OFT: kohya's form is networks.oft_flux's,
    per part already; its constraint's norm over every part's blocks is runtime/lycoris_oft.py
    link_fused_oft's, one constraint per fused layer, and max_norm's runtime/max_norm.py's, one module per
    fused layer; BOFT: its blocks are
    one module's, at one size per fused layer; GLoRA's and Diag-OFT's dropouts and DyLoRA's module_dropout
    are draws its parts share), a family without kohya's Flux / SD3 layout, and fused layers with parts left
    out or at other ranks (LyCORIS's module spans every row at one rank)."""
    spec = family_spec(family)
    if _no_fused_layers(ctx, spec):
        return
    if isinstance(adapter, DiagOftAdapter):
        switches = (
            ('form = "kohya" (kohya\'s networks.oft_flux splits each part already)', adapter.form == "kohya"),
        )
    else:  # BOFT: one module's blocks over all its parts (a block's size too); GLoRA's, DyLoRA's, IA^3's,
        switches = ()  # full's dropouts: draws the parts share (glora FusedDraws, fused.py FusedSkip)
    layout = ((f"{spec.title}'s kohya layout (it has none)", not spec.kohya_lora_targets),)
    found = [why for why, on in (*switches, *layout) if on]
    for group in spec.fused_projections:
        for index in _INDICES:
            adapted = _adapted(group, index, plan)
            if adapted and len(adapted) < len(group.parts):
                missing = ", ".join(p for p in group.parts if p not in adapted)
                found.append(f"{group.blocks}.{index}'s {group.kohya_name} without {missing}")
                break
            if isinstance(adapter, Ia3Adapter) and any(side == 2 for side, *_ in adapted.values()):
                found.append(
                    f"{group.blocks}.{index}'s {group.kohya_name} parts in input_targets (IA3Module on the "
                    "fused Linear scales its input columns once for every part)"
                )
                break
            if len(set(adapted.values())) > 1:
                what = (
                    "block sizes, constraints or rescales"
                    if isinstance(adapter, (DiagOftAdapter, BoftAdapter))
                    else ""
                )
                found.append(
                    f"{group.blocks}.{index}'s {group.kohya_name} parts at other {what or 'ranks or alphas'}"
                )
                break
            if isinstance(adapter, DyloraAdapter) and len(_units(group, index, plan, adapted)) > 1:
                found.append(f"{group.blocks}.{index}'s {group.kohya_name} parts in blocks of other units")
                break
    if found:
        ctx.report(
            "DBS577",
            "error",
            f"adapter.fused_projections with {adapter.kind} is LyCORIS's module on each whole fused layer, "
            f"which dbspec trains without: {'; '.join(found)}",
            _OPTION,
            help=codes.help("DBS577"),
        )


def block_dora(adapter) -> bool:
    """Some block (the spec's or the plan's) gives its layers LyCORIS's weight decomposition the adapter's
    `dora` does not (a LyCORIS map entry's own weight_decompose)."""
    blocks = (*getattr(adapter, "blocks", ()), *getattr(adapter, "text_encoder_blocks", ()))
    return not getattr(adapter, "dora", False) and any(getattr(b, "dora", "adapter") == "on" for b in blocks)

"""The adapter plan: which kind (LoRA, LoHa, LoKr; DoRA and convolution adapters on top), where it goes, and
how
many parameters it trains. The runtime builds its peft config from this plan alone."""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType

import attrs

from dbspec.compiler.fused import block_dora, fused_plan, split_fused_plan, targeted
from dbspec.denoiser_layout import block_linear_in_out, denoiser_paths
from dbspec.families import T5_LORA_TARGETS, family_spec, t5_text_encoders
from dbspec.plan.model import BYPASS_DROPOUT_KINDS, BYPASS_KINDS, AdapterPlan, BlockPlan, FusedPlan
from dbspec.spec.model import LoraAdapter, LowRankAdapter

# Parameters per (in + out) unit of rank, relative to LoRA's rank x (in + out): LoHa keeps two LoRA-shaped
# pairs. LoKr factors each weight into a Kronecker product whose low-rank factor spans about the square root
# of
# each side, so LoRA's count at the same rank bounds it from above; the estimate keeps that bound.
_PER_RANK_FACTOR = {
    "lora": 1.0,
    "loha": 2.0,
    "lokr": 1.0,
    "dylora": 1.0,
    "ia3": 1.0,
    "diag-oft": 1.0,
    "boft": 16.0,  # log2(width / block) + 1 stages of diag-oft's blocks: 16 bounds the stages
    "glora": 3.0,  # a1, a2 (in x rank each), b1, b2: three LoRAs bound it
    "tlora": 1.0,  # q (rank x in), p (out x rank) and rank singular values: LoRA's count bounds it
}  # ia3: a bound


def _t5_targets(family: str, components) -> tuple[str, ...]:
    """kohya's T5-XXL LoRA targets when a T5 encoder trains (train.t5), else ()."""
    t5 = set(t5_text_encoders(family))
    return T5_LORA_TARGETS if any(c.name in t5 and c.trainable == "lora" for c in components) else ()


def adapter_plan(
    adapter, family: str, components, *, targets_given: bool = True, layers: Mapping = MappingProxyType({})
) -> AdapterPlan:
    """`components`: the plan's component precisions (those with trainable "lora" carry adapters). Unset
    denoiser targets are the family's defaults (the spec's default names the UNet's attention projections;
    SD3's are those of diffusers' SD3 LoRA script). `layers`: per component, each layer's parameters by
    module path where the model's files tell them (modelinfo.layer_params): a full adapter's count leaves
    out the targeted layers its `exclude` leaves without a copy."""
    if not isinstance(adapter, LowRankAdapter):
        return AdapterPlan(kind="none", norm_rank_dropout=0.0)
    plan = _kind_plan(adapter, family, components, targets_given, layers)
    return attrs.evolve(_settle_bypass(plan), norm_rank_dropout=_norm_rank_dropout(adapter, plan))


def _norm_rank_dropout(adapter, plan: AdapterPlan) -> float:
    """The norm offsets' rank dropout (adapter.norm_rank_dropout, LyCORIS's NormModule draws it); 0.0
    where the plan has no norm offsets."""
    norms = plan.denoiser_norms or plan.text_encoder_norms or plan.text_encoder_2_norms
    return getattr(adapter, "norm_rank_dropout", 0.0) if norms else 0.0


def _settle_bypass(plan: AdapterPlan) -> AdapterPlan:
    """Each block's LyCORIS bypass_mode settled: its own `bypass` (a LyCORIS preset file's map entry's own
    bypass_mode), which the kind's plan set on the block it built from the spec's (own_bypass), else the
    plan's adapter's (runtime/mixed_kinds.py set_block_bypass gives a block's Diag-OFT / BOFT / DyLoRA /
    IA^3 layers their own). No pairing by position: a Diag-OFT / BOFT / IA^3 / full plan puts its rank-0
    `exclude` blocks before the spec's."""

    def settled(blocks) -> tuple[BlockPlan, ...]:
        return tuple(attrs.evolve(b, bypass=plan.bypass) if b.bypass is None else b for b in blocks)

    return attrs.evolve(
        plan, blocks=settled(plan.blocks), text_encoder_blocks=settled(plan.text_encoder_blocks)
    )


def own_bypass(block) -> bool | None:
    """A spec block's own `bypass` as its plan block carries it before _settle_bypass: True / False, or None
    for "adapter" (and blocks without the field)."""
    own = getattr(block, "bypass", "adapter")
    return None if own == "adapter" else own == "on"


def tlora_own_bypass(adapter) -> bool:
    """A tlora adapter's T-LoRA block (kind "adapter" / "tlora") sets its own `bypass` on (a LyCORIS map
    entry's own bypass_mode): its layers run TLoraModule's bypass forward, the only one that reads the
    adapter's `dropout` (runtime/lycoris_tlora.py: each layer drops in its own mode, set_tlora_bypass)."""
    return any(
        getattr(b, "bypass", "adapter") == "on" and b.kind in ("adapter", "tlora")
        for b in (*adapter.blocks, *adapter.text_encoder_blocks)
    )


def _kind_plan(adapter, family: str, components, targets_given: bool, layers: Mapping) -> AdapterPlan:
    """The plan of the adapter's kind, its blocks' bypass not yet settled."""
    if adapter.kind in ("full", "ia3", "diag-oft", "boft"):
        return _full_plan(adapter, family, components, targets_given, layers)
    if adapter.kind == "glora":
        return _glora_plan(adapter, family, components, targets_given)
    if adapter.kind == "dylora":
        return _dylora_plan(adapter, family, components, targets_given)
    if adapter.kind == "tlora":
        return _tlora_plan(adapter, family, components, targets_given)
    conv = adapter.conv_rank > 0
    extra = (
        {
            "dropout": adapter.dropout,
            "down_dropout": adapter.down_dropout,
            "output_dropout": adapter.output_dropout,
            "multiplier": adapter.multiplier,
            "kohya_names": adapter.kohya_names,
            "max_norm": adapter.max_norm,
            "max_norm_form": adapter.max_norm_form if adapter.max_norm else "kohya",
            "freeze_down": adapter.freeze_down,
            "frozen_down_grad": adapter.frozen_down_grad if adapter.freeze_down else "none",
            # kohya lora_flux's LoRA-GGPO (runtime/ggpo.py); rules DBS566 keep it to Flux's plain LoRA
            "ggpo_sigma": adapter.ggpo_sigma if adapter.ggpo else None,
            "ggpo_beta": adapter.ggpo_beta if adapter.ggpo else None,
        }
        if isinstance(adapter, LoraAdapter)
        else {}
    )
    extra.update(rank_dropout=adapter.rank_dropout, module_dropout=adapter.module_dropout)
    if isinstance(adapter, LoraAdapter) and adapter.rank_dropout:  # LyCORIS LoCon's masks (lora_dropout.py)
        extra["rank_dropout_form"] = adapter.rank_dropout_form
    elif adapter.kind == "loha" and adapter.rank_dropout and _lora_blocks(adapter):
        # a LoHa network's LoCon entries draw LoConModule's row mask (rules.lycoris_row_masks admits them),
        # in bypass_mode (its rank_dropout_form "lycoris_bypass", which its output_dropout implies) its rank
        # mask (rules.mixed_bypass_ranks)
        bypass = adapter.output_dropout or adapter.rank_dropout_form == "lycoris_bypass"
        extra["rank_dropout_form"] = "lycoris_bypass" if bypass else "lycoris"
    elif adapter.kind == "lokr" and adapter.rank_dropout and adapter.rank_dropout_form == "lycoris_bypass":
        # LokrModule's bypass forward: its LoKr layers draw none, its LoCon blocks LoConModule's bypass rank
        # mask, its LoHa blocks LohaModule's row mask (rules.mixed_bypass_ranks; runtime/prepare.py)
        extra["rank_dropout_form"] = "lycoris_bypass"
    if not isinstance(adapter, LoraAdapter) and adapter.max_norm:  # LoHa / LoKr: LyCORIS's max norm only
        extra.update(max_norm=adapter.max_norm, max_norm_form="lycoris")
    if not isinstance(adapter, LoraAdapter):  # LoHa / LoKr: the rescale acts only with rank dropout
        extra["rank_dropout_scale"] = adapter.rank_dropout_scale and adapter.rank_dropout > 0
        extra["output_dropout"] = adapter.output_dropout  # LyCORIS's bypass dropout (fused_lycoris_dropout)
    # DoRA (LyCORIS dora_wd) and its axis (wd_on_output); the axis is "output" whenever DoRA is off
    # (a block's own weight decomposition, LyCORIS map entries' weight_decompose: LyCORIS's form, the axis
    # the adapter's)
    decomposed = adapter.dora or block_dora(adapter)
    extra.update(dora=adapter.dora, dora_axis=adapter.dora_axis if decomposed else "output")
    extra.update(dora_form="lycoris" if lycoris_dora(adapter) or block_dora(adapter) else "peft")
    # LoRA's Tucker form acts on its convolution adapters only: without them the plan says false (DBS261)
    extra.update(tucker=adapter.tucker and (conv or not isinstance(adapter, LoraAdapter)))
    if adapter.kind == "lokr":
        extra.update(factor=adapter.factor, decompose_both=adapter.decompose_both)
        extra.update(lokr_factorization="lycoris", unbalanced_factorization=adapter.unbalanced_factorization)
    extra.update(_lycoris_switches(adapter))
    # LyCORIS bypass_mode for the blocks of kinds whose bypass forward differs (runtime/mixed_kinds.py
    # kind_adapter hands it on), and GLoRA / T-LoRA blocks', whose bypass forward takes the output_dropout
    # and rank_dropout (GLoRA's pairs' masks); elsewhere the same update (DBS216: no effect)
    blocks = (*adapter.blocks, *getattr(adapter, "text_encoder_blocks", ()))
    drops = getattr(adapter, "output_dropout", 0.0) or adapter.rank_dropout
    glora_tlora = drops and any(getattr(b, "kind", "adapter") in ("glora", "tlora") for b in blocks)
    extra["bypass"] = adapter.bypass and (bool(bypass_blocks(adapter)) or bool(glora_tlora))
    if getattr(adapter, "blocks", ()):  # LoRA, LoHa, LoKr
        extra["blocks"] = tuple(
            BlockPlan(
                pattern=b.pattern,
                # the adapter's own kind named again is the adapter's (LyCORIS's locon is lora)
                kind="adapter" if b.kind == adapter.kind else b.kind,
                rank=b.rank,
                alpha=b.alpha,
                conv_rank=b.conv_rank if conv else 0,
                conv_alpha=b.conv_alpha if conv else 1.0,
                lr_scale=b.lr_scale,
                lr=b.lr,
                group=b.group,
                factor=b.factor,
                **_block_switches(b, adapter),
                scalar=_block_scalar(b, adapter),
                dora=_block_dora(b, adapter),
                dora_axis=_block_dora_axis(b, adapter),
                rank_dropout_scale=_block_rank_dropout_scale(b, adapter),
                unit=b.unit if b.kind == "dylora" else 0,  # LyCORIS's DyLoraModule beside the others
                rescaled=b.rescaled if b.kind in ("diag-oft", "boft") else "adapter",  # DBS591 elsewhere
                sig_type=b.sig_type,  # a tlora block's own SVD start (DBS622 elsewhere)
                data_init=b.data_init,  # a tlora block's random start (DBS622 elsewhere)
                on_input=b.on_input,  # an ia3 block's input side (DBS618 elsewhere)
                bypass=own_bypass(b),
            )
            for b in adapter.blocks
        )
    if getattr(adapter, "text_encoder_blocks", ()):
        extra["text_encoder_blocks"] = tuple(
            BlockPlan(
                pattern=b.pattern,
                kind="adapter" if b.kind == adapter.kind else b.kind,
                rank=b.rank,
                alpha=b.alpha,
                lr_scale=b.lr_scale,
                lr=b.lr,
                group=b.group,
                factor=b.factor,
                **_block_switches(b, adapter),
                scalar=_block_scalar(b, adapter),
                dora=_block_dora(b, adapter),
                dora_axis=_block_dora_axis(b, adapter),
                rank_dropout_scale=_block_rank_dropout_scale(b, adapter),
                unit=b.unit if b.kind == "dylora" else 0,
                rescaled=b.rescaled if b.kind in ("diag-oft", "boft") else "adapter",
                sig_type=b.sig_type,
                data_init=b.data_init,
                on_input=b.on_input,
                bypass=own_bypass(b),
            )
            for b in adapter.text_encoder_blocks
        )
    plan = AdapterPlan(
        kind=adapter.kind,
        **_low_rank(adapter, family, targets_given),
        lokr_unit_scale=adapter.kind == "lokr",
        lokr_rank_stabilized=getattr(adapter, "rank_stabilized", False),
        t5_targets=_t5_targets(family, components),
        **extra,
    )
    fused = fused_plan(adapter, family, plan)  # adapter.fused_projections: shared down-projections
    params = adapter_params(adapter, family, components, plan.denoiser_targets, fused)
    split = split_fused_plan(adapter, family, plan)  # adapter.fused_dropout: split parts draw together
    return attrs.evolve(plan, fused=fused, split_fused=split, params=params)


def bypass_blocks(adapter) -> list[tuple[str, int]]:
    """(table, index) of the adapter's blocks (spec or plan) of a kind in BYPASS_KINDS that adapt layers."""
    return [
        (table, i)
        for table in ("blocks", "text_encoder_blocks")
        for i, b in enumerate(getattr(adapter, table, ()))
        if getattr(b, "kind", "adapter") in BYPASS_KINDS and (b.rank or getattr(b, "conv_rank", 0))
    ]


def lycoris_dora(adapter) -> bool:
    """Whether the adapter (the spec's or the plan's) trains LyCORIS's weight decomposition
    (runtime/lycoris_dora.py) rather than peft's DoRA: DoRA on LoHa and LoKr, and on LoRA with the magnitude
    per input column (LyCORIS wd_on_output = False), with LoCon's Tucker form on its convolutions or with
    dora_form "lycoris"."""
    if not getattr(adapter, "dora", False):
        return False
    if adapter.kind != "lora" or getattr(adapter, "dora_form", "peft") == "lycoris":
        return True
    return adapter.dora_axis == "input" or (adapter.tucker and adapter.conv_rank > 0)


def _glora_plan(adapter, family: str, components, targets_given: bool) -> AdapterPlan:
    """LyCORIS's GLoRA: a rank and alpha (and conv_rank / conv_alpha on the convolutions), its use_scalar,
    module dropout and bypass forward, whose rank dropout and dropout act only there."""
    plan = AdapterPlan(
        kind="glora",
        **_low_rank(adapter, family, targets_given),
        scalar=adapter.scalar,
        module_dropout=adapter.module_dropout,
        bypass=adapter.bypass,
        # LyCORIS applies these in bypass mode only (DBS556 warns when they are set without it); its blocks
        # of other kinds draw rank_dropout as their modules do (rules.lycoris_row_masks), LoCon's in the
        # "lycoris" form; in bypass_mode its LoCon / LoHa / LoKr blocks as their bypass forward does
        # (rules.glora_bypass_inert: the "lycoris_bypass" form), the GLoRA layers their own masks
        rank_dropout=adapter.rank_dropout if adapter.bypass or rank_dropout_blocks(adapter) else 0.0,
        rank_dropout_form=_lycoris_rank_dropout_form(adapter),
        bypass_dropout=adapter.dropout if adapter.bypass else 0.0,
        # LyCORIS's one `dropout`, which its LoCon / LoHa / LoKr blocks' modules apply to their update x
        # scalar in bypass_mode (rules.glora_bypass_inert; runtime/prepare.py: lora_dropout.py,
        # fused_lycoris_dropout.py)
        output_dropout=adapter.dropout if adapter.bypass and _bypass_dropout_blocks(adapter) else 0.0,
        **_blocks_max_norm(adapter),
        params=adapter_params(adapter, family, components),
        t5_targets=_t5_targets(family, components),  # LyCORIS's GLoRAModule on T5-XXL's Linears (train.t5)
        **_rank_blocks(adapter),  # a LyCORIS preset file's per-layer dims
        dora_form="lycoris" if block_dora(adapter) else "peft",  # its LoRA / LoHa / LoKr blocks' own
    )
    return attrs.evolve(plan, fused=fused_plan(adapter, family, plan))  # GLoRA on fused Linears


def _host_output_dropout(adapter) -> float:
    """An IA^3 / DyLoRA adapter's `dropout` (LyCORIS's network dropout, which IA3Module and DyLoraModule never
    read) as its LoCon / LoHa / LoKr blocks' bypass dropout: in bypass_mode beside such blocks (their
    modules' bypass forward drops their update), else none (DBS632)."""
    dropout = getattr(adapter, "dropout", 0.0)
    kinds = {getattr(b, "kind", "adapter") for b in (*adapter.blocks, *adapter.text_encoder_blocks)}
    # GLoRA / T-LoRA blocks drop in their bypass forward alike (runtime/mixed_kinds.py kind_adapter)
    readers = kinds & set(BYPASS_DROPOUT_KINDS)
    return dropout if getattr(adapter, "bypass", False) and readers else 0.0


def _lycoris_rank_dropout_form(adapter) -> str:
    """The rank-dropout form of a glora, tlora, ia3, full or dylora adapter's blocks of other kinds (its
    GLoRA layers keep GLoRAModule's own masks, runtime/lycoris_glora.py: a rank KEPT where its
    `torch.rand(rank)` draw is below the rate; TLoraModule, IA3Module and DyLoraModule read none).
    In bypass_mode beside LoCon / LoHa / LoKr blocks "lycoris_bypass": LyCORIS hands every module the
    network's bypass_mode, so LoConModule's bypass forward keeps the ranks whose `torch.rand(rank)` draw is
    above the rate, LohaModule's rebuilds its update with get_weight's row mask and LokrModule's draws none
    (runtime/prepare.py: lora_dropout.py, fused_lycoris_dropout.py add_lycoris_layer_dropout, LoKr rows
    off); outside it "lycoris" beside LoCon blocks (LoConModule's row mask), else "kohya" (unused)."""
    if not adapter.rank_dropout:
        return "kohya"
    if getattr(adapter, "bypass", False) and _bypass_dropout_blocks(adapter):
        return "lycoris_bypass"
    return "lycoris" if _lora_blocks(adapter) else "kohya"


def _tlora_patch(targets: tuple[str, ...], family: str) -> bool:
    """Whether the T-LoRA adapter's denoiser `targets` reach the family's patch convolution
    (families.reaches_patch_conv)."""
    from dbspec.families import reaches_patch_conv

    return reaches_patch_conv(family, targets)


def _tlora_plan(adapter, family: str, components, targets_given: bool) -> AdapterPlan:
    """LyCORIS's T-LoRA as kohya runs it (runtime/lycoris_tlora.py): a rank, alpha and its Linear / 1x1
    targets, no convolution rank; its module dropout, LyCORIS's max norm and bypass forward; on Flux / SD3 /
    Chroma one module per fused Linear (fused_projections: runtime/lycoris_tlora.py fit_fused_tlora)."""
    targets = tuple(adapter.denoiser_targets) if targets_given else family_spec(family).lora_targets
    bypass_reads_dropout = adapter.bypass or _tlora_patch(targets, family) or tlora_own_bypass(adapter)
    plan = AdapterPlan(
        kind="tlora",
        rank=adapter.rank,
        alpha=adapter.alpha,
        denoiser_targets=targets,
        # the k x k convolutions its blocks of other kinds adapt at their conv_rank (runtime/mixed_kinds.py
        # kind_adapter); no T-LoRA layer (conv_rank 0: its own pass never reaches them, DBS633)
        conv_targets=tuple(adapter.conv_targets),
        text_encoder_targets=tuple(adapter.text_encoder_targets),
        text_encoder_2_targets=tuple(adapter.text_encoder_2_targets),
        text_encoder_norms=tuple(adapter.text_encoder_norms),  # LyCORIS train_norm (runtime/norm_offsets.py)
        text_encoder_2_norms=tuple(adapter.text_encoder_2_norms),
        denoiser_norms=tuple(adapter.denoiser_norms),
        params=adapter_params(adapter, family, components),
        module_dropout=adapter.module_dropout,  # TLoraModule.forward's draw (runtime/mixed_kinds.py)
        # TLoraModule never reads it; its blocks of other kinds draw it (rules.lycoris_row_masks), LoCon's in
        # the "lycoris" form, in bypass_mode each class's bypass mask (rules.tlora_bypass_inert)
        rank_dropout=adapter.rank_dropout,
        rank_dropout_form=_lycoris_rank_dropout_form(adapter),
        max_norm=adapter.max_norm,  # TLoraModule.apply_max_norm (runtime/max_norm.py)
        max_norm_form="lycoris" if adapter.max_norm else "kohya",
        bypass=adapter.bypass,  # TLoraModule.bypass_forward (runtime/lycoris_tlora.py)
        # its dropout: in the bypass forward, which a patch convolution takes in either mode (SD3's), as do
        # the layers of a block whose own bypass is on (each TloraLayer drops in its own mode alone)
        bypass_dropout=adapter.dropout if bypass_reads_dropout else 0.0,
        # its LoCon / LoHa / LoKr blocks' modules theirs x scalar in bypass_mode (rules.tlora_bypass_inert)
        output_dropout=adapter.dropout if adapter.bypass and _bypass_dropout_blocks(adapter) else 0.0,
        # a LyCORIS preset file's per-layer dims: each matched layer's SVD start at its block's rank, or
        # another kind's layers (runtime/mixed_kinds.py)
        blocks=tuple(_tlora_block(b, adapter) for b in adapter.blocks),
        text_encoder_blocks=tuple(_tlora_block(b, adapter) for b in adapter.text_encoder_blocks),
        t5_targets=_t5_targets(family, components),  # LyCORIS's TLoraModule on T5-XXL's Linears (train.t5)
        dora_form="lycoris" if block_dora(adapter) else "peft",  # its LoRA / LoHa / LoKr blocks' own
    )
    return attrs.evolve(plan, fused=fused_plan(adapter, family, plan))  # one SVD per fused Linear


def _tlora_block(block, adapter) -> BlockPlan:
    kind = "adapter" if block.kind == "tlora" else block.kind  # a LyCORIS map entry's other algorithm
    return BlockPlan(
        pattern=block.pattern,
        kind=kind,
        rank=block.rank,
        alpha=block.alpha,  # a Diag-OFT / BOFT block's constraint
        # a block of another kind's k x k convolutions (the adapter's conv_targets; DBS633 on T-LoRA layers)
        conv_rank=getattr(block, "conv_rank", 0),
        conv_alpha=getattr(block, "conv_alpha", 1.0),
        unit=block.unit,  # a DyLoRA block's (LyCORIS's block_size)
        sig_type=block.sig_type,
        data_init=block.data_init,  # LyCORIS's use_data_init (runtime/lycoris_tlora.py random_start)
        on_input=block.on_input,  # a block of kind ia3's input side (DBS618 elsewhere)
        bypass=own_bypass(block),  # TLoraModule's bypass forward (runtime/lycoris_tlora.py set_tlora_bypass)
        # a block of kind lora / loha / lokr: its scalar, a LoKr one's split and switches (the adapter has
        # none: each kind's layers built alone, runtime/mixed_kinds.py kind_adapter); a Diag-OFT / BOFT
        # block's `rescaled`
        **_other_kind_options(block, adapter),
        # blocks of kind lora / loha / lokr: LyCORIS's weight decomposition (a network's dora_wd or an entry's
        # weight_decompose; TLoraModule never decomposes: DBS583 on the T-LoRA layers)
        dora=_block_dora(block, adapter),
        dora_axis=_block_dora_axis(block, adapter),
    )


def _dylora_plan(adapter, family: str, components, targets_given: bool) -> AdapterPlan:
    """DyLoRA (kohya networks.dylora, LyCORIS algo=dylora): a LoRA's rank, alpha, convolutions and per-module
    blocks, plus the block size, whose training forward and LyCORIS's module dropout and bypass forward; its
    parameters are LoRA's at the same ranks."""
    plan = AdapterPlan(
        kind="dylora",
        **_low_rank(adapter, family, targets_given),
        dylora_unit=adapter.unit,
        dylora_form=adapter.dylora_form,
        module_dropout=adapter.module_dropout,
        # DyLoraModule never reads it; its blocks of other kinds draw it (rules.lycoris_row_masks), LoCon's
        # in the "lycoris" form
        rank_dropout=adapter.rank_dropout,
        rank_dropout_form=_lycoris_rank_dropout_form(adapter),  # in bypass_mode: rules.host_bypass_inert
        output_dropout=_host_output_dropout(adapter),  # its LoCon / LoHa / LoKr blocks' bypass dropout
        bypass=adapter.bypass,
        **_blocks_max_norm(adapter),
        t5_targets=_t5_targets(family, components),  # LyCORIS's DyLoraModule on T5-XXL's Linears (train.t5)
        # per-module ranks and alphas (kohya --dim_from_weights, LyCORIS's alphas from --network_weights)
        **_rank_blocks(adapter),
        dora_form="lycoris" if block_dora(adapter) else "peft",  # its LoRA / LoHa / LoKr blocks' own
    )
    fused = fused_plan(adapter, family, plan)  # LyCORIS's DyLoRA on fused Linears (runtime/dylora.py)
    params = adapter_params(adapter, family, components, plan.denoiser_targets)
    return attrs.evolve(plan, params=params, fused=fused)


def _blocks_max_norm(adapter) -> dict:
    """A GLoRA / DyLoRA adapter's max_norm: LyCORIS's, on its blocks of other kinds (runtime/max_norm.py
    finds their LoCon / LoHa / LoKr / Diag-OFT / BOFT layers; the adapter's own layers are never scaled)."""
    norm = getattr(adapter, "max_norm", 0.0)
    return {"max_norm": norm, "max_norm_form": "lycoris" if norm else "kohya"}


def _rank_blocks(adapter) -> dict:
    """The per-module ranks, alphas and learning-rate scales of a DyLoRA or GLoRA (blocks with no factor; the
    text encoders' blocks no rate: DBS599), a DyLoRA block's own unit where it differs from the adapter's, and
    the LyCORIS weight decomposition of its blocks of kind lora / loha / lokr."""
    conv = adapter.conv_rank > 0

    def unit(b) -> int:
        own = getattr(b, "unit", 0)
        return own if own and own != getattr(adapter, "unit", 0) else 0

    def kind(b) -> str:  # LyCORIS map entries of another algorithm (runtime/mixed_kinds.py)
        own = getattr(b, "kind", "adapter")
        return "adapter" if own == adapter.kind else own

    return dict(
        blocks=tuple(
            BlockPlan(
                pattern=b.pattern,
                kind=kind(b),
                rank=b.rank,
                alpha=b.alpha,
                conv_rank=b.conv_rank if conv else 0,
                conv_alpha=b.conv_alpha if conv else 1.0,
                unit=unit(b),
                bypass=own_bypass(b),
                on_input=b.on_input,  # a block of kind ia3's input side (DBS618 elsewhere)
                # a tlora block's own start (a glora adapter's: its sig_type alone; DBS622)
                sig_type=getattr(b, "sig_type", "principal"),
                data_init=getattr(b, "data_init", True),
                **_other_kind_options(b, adapter),
                # blocks of kind lora / loha / lokr: LyCORIS's weight decomposition (a network's dora_wd
                # or an entry's weight_decompose; rules DBS583 keep it off GLoRA / DyLoRA layers)
                dora=_block_dora(b, adapter),
                dora_axis=_block_dora_axis(b, adapter),
                lr_scale=b.lr_scale,  # 0: held (kohya's U-Net modules at unet_lr 0, held_unet.py)
                zero_scale=getattr(b, "zero_scale", False),  # DyLoRA: its alpha buffer loaded as 0 (DBS617)
            )
            for b in adapter.blocks
        ),
        text_encoder_blocks=tuple(
            BlockPlan(
                pattern=b.pattern,
                kind=kind(b),
                rank=b.rank,
                alpha=b.alpha,
                unit=unit(b),
                bypass=own_bypass(b),
                on_input=b.on_input,  # a block of kind ia3's input side (DBS618 elsewhere)
                sig_type=getattr(b, "sig_type", "principal"),
                data_init=getattr(b, "data_init", True),
                **_other_kind_options(b, adapter),
                dora=_block_dora(b, adapter),
                dora_axis=_block_dora_axis(b, adapter),
                zero_scale=getattr(b, "zero_scale", False),
            )
            for b in adapter.text_encoder_blocks
        ),
    )


def _other_kind_options(block, adapter) -> dict:
    """A DyLoRA / GLoRA adapter's block of kind lokr: its own split, switches and rank_stabilized (a LyCORIS
    map entry's factor, decompose_both, full_matrix, unbalanced_factorization, rs_lora); of kind lora / loha
    / lokr: its own scalar (use_scalar) and Tucker form (use_tucker, on k x k convolutions), each kind's
    layers built alone (runtime/mixed_kinds.py kind_adapter); of kind diag-oft / boft: its own row rescale
    (rescaled; its constraint the block's alpha); of a GLoRA adapter's own or of kind glora: its own scalar
    (each GLoRA layer its block's, runtime/lycoris_glora.py); a text encoders' GloraBlock / DyloraBlock alike
    (spec TextEncoderBlock has them)."""
    kind = getattr(block, "kind", "adapter")
    if kind in ("diag-oft", "boft"):
        return {"rescaled": getattr(block, "rescaled", "adapter")}
    if kind == "glora" or (kind == "adapter" and adapter.kind == "glora"):  # its GLoRA layers' use_scalar
        return {"scalar": _block_scalar(block, adapter)}
    if kind not in ("lora", "loha", "lokr"):
        return {}
    own = {"scalar": _block_scalar(block, adapter), **_block_switches(block, adapter)}
    if kind == "lokr":
        own["factor"] = block.factor
    return own


def _low_rank(adapter, family: str, targets_given: bool) -> dict:
    """Rank, alpha and targets of the rank-based kinds (unset denoiser targets: the family's); the
    convolutions' rank, alpha and targets only when conv_rank is above 0."""
    conv = adapter.conv_rank > 0
    return {
        "rank": adapter.rank,
        "alpha": adapter.alpha,
        "denoiser_targets": tuple(adapter.denoiser_targets)
        if targets_given
        else family_spec(family).lora_targets,
        "text_encoder_targets": tuple(adapter.text_encoder_targets),
        "text_encoder_2_targets": tuple(adapter.text_encoder_2_targets),
        "text_encoder_norms": tuple(getattr(adapter, "text_encoder_norms", ())),
        "text_encoder_2_norms": tuple(getattr(adapter, "text_encoder_2_norms", ())),
        "denoiser_norms": tuple(getattr(adapter, "denoiser_norms", ())),
        "conv_rank": adapter.conv_rank,
        "conv_alpha": adapter.conv_alpha if conv else 0.0,
        "conv_targets": tuple(adapter.conv_targets) if conv else (),
    }


def _full_plan(adapter, family: str, components, targets_given: bool, layers: Mapping) -> AdapterPlan:
    """LyCORIS's full and IA^3 algos: no rank or alpha; the convolutions they train are `conv_targets`
    alone; IA^3's input-side targets. Diag-OFT's fused layers (fused_projections): their parts' blocks split
    the fused width (runtime/lycoris_oft.py fit_fused_oft)."""
    plan = AdapterPlan(
        kind=adapter.kind,
        input_targets=tuple(getattr(adapter, "input_targets", ())),
        oft_block_size=getattr(adapter, "block_size", 0),
        oft_constraint=getattr(adapter, "constraint", 0.0),
        oft_rescaled=getattr(adapter, "rescaled", False),
        oft_form=getattr(adapter, "form", "lycoris") if adapter.kind == "diag-oft" else "lycoris",
        oft_blocks=getattr(adapter, "block_count", 0) if adapter.kind == "diag-oft" else 0,
        bypass=getattr(adapter, "bypass", False),  # diag-oft, boft, ia3: LyCORIS bypass_mode
        module_dropout=getattr(adapter, "module_dropout", 0.0),  # boft: ButterflyOFTModule's
        rank_dropout=getattr(adapter, "rank_dropout", 0.0),  # diag-oft: DiagOFTModule's rotations' dropout
        # full / ia3 with blocks of kind lora: those LoCon layers draw LoConModule's row mask
        # (rules.lycoris_row_masks admits them, runtime/mixed_kinds.py add_module_dropout)
        # (in bypass_mode an IA^3 adapter's LoCon / LoHa / LoKr blocks their bypass forward's masks:
        # rules.host_bypass_inert)
        rank_dropout_form=_lycoris_rank_dropout_form(adapter) if adapter.kind in ("full", "ia3") else "kohya",
        output_dropout=_host_output_dropout(adapter),  # ia3: its LoCon / LoHa / LoKr blocks' bypass dropout
        # diag-oft, boft: LyCORIS's apply_max_norm scales the blocks (runtime/max_norm.py)
        max_norm=getattr(adapter, "max_norm", 0.0),
        max_norm_form="lycoris" if getattr(adapter, "max_norm", 0.0) else "kohya",
        dora_form="lycoris" if block_dora(adapter) else "peft",  # its LoRA / LoHa / LoKr blocks' own
        denoiser_targets=tuple(adapter.denoiser_targets)
        if targets_given
        else family_spec(family).lora_targets,
        text_encoder_targets=tuple(adapter.text_encoder_targets),
        text_encoder_2_targets=tuple(adapter.text_encoder_2_targets),
        text_encoder_norms=tuple(getattr(adapter, "text_encoder_norms", ())),  # LyCORIS train_norm
        text_encoder_2_norms=tuple(getattr(adapter, "text_encoder_2_norms", ())),
        denoiser_norms=tuple(getattr(adapter, "denoiser_norms", ())),
        conv_targets=tuple(adapter.conv_targets),
        params=adapter_params(adapter, family, components),
        # LyCORIS's FullModule / IA3Module / DiagOFTModule / ButterflyOFTModule on T5-XXL's Linears (train.t5;
        # rules.t5_adapter_fits); kohya's networks.oft (form "kohya") has none there
        t5_targets=_t5_targets(family, components)
        if getattr(adapter, "form", "lycoris") == "lycoris"
        else (),
        **_excluded_first(_full_excluded(adapter), _oft_blocks(adapter) or _scale_blocks(adapter)),
    )
    if adapter.kind == "full" and layers:
        copies = {
            name: count - _excluded_copies(plan, family, name, layers.get(name, {}))
            for name, count in plan.params.items()
        }
        plan = attrs.evolve(plan, params=copies)
    return attrs.evolve(plan, fused=fused_plan(adapter, family, plan))


def _full_excluded(adapter) -> dict:
    """Full's, IA^3's, Diag-OFT's and BOFT's `exclude` patterns as rank-0 blocks, the denoiser's and the text
    encoders' (runtime/blocks.py leaves a layer of a rank-0 block without an adapter: no trained copy, scale
    or rotation)."""
    patterns = getattr(adapter, "exclude", ())
    if not patterns:
        return {}
    blocks = tuple(BlockPlan(pattern=p, rank=0, alpha=1.0) for p in patterns)
    return dict(blocks=blocks, text_encoder_blocks=blocks)


def _excluded_first(excluded: dict, own: dict) -> dict:
    """The excluded layers' rank-0 blocks before the adapter's own blocks (Diag-OFT's / BOFT's sizes): the
    first block whose pattern matches a layer decides it."""
    return {
        key: (*excluded.get(key, ()), *own.get(key, ()))
        for key in ("blocks", "text_encoder_blocks")
        if key in excluded or key in own
    }


def _excluded_copies(plan: AdapterPlan, family: str, component: str, layers: Mapping[str, int]) -> int:
    """The parameters of `component`'s targeted layers a full adapter's `exclude` leaves without a trained
    copy (its rank-0 blocks, searched in the denoiser's paths and in a text encoder's `<component>.<path>`,
    as runtime/blocks.py searches them), among the layers the model's files list."""
    if component == "unet":
        targets, prefix = (*plan.denoiser_targets, *plan.conv_targets), ""
    elif component in t5_text_encoders(family):
        targets, prefix = plan.t5_targets, f"{component}."
    else:
        targets = plan.text_encoder_2_targets if component == "text_encoder_2" else plan.text_encoder_targets
        prefix = f"{component}."
    patterns = [b.pattern for b in (plan.blocks if component == "unet" else plan.text_encoder_blocks)]
    return sum(
        count
        for path, count in layers.items()
        if targeted(path, targets) and any(re.search(p, prefix + path) for p in patterns)
    )


def _scale_blocks(adapter) -> dict:
    """Full's and IA^3's learning-rate scales (ScaleBlock) as blocks that adapt their layers (rank and conv
    rank 1: no size, runtime/blocks.py builds each layer as the adapter builds it) at the block's lr_scale
    (0: held, kohya's U-Net modules at unet_lr 0, held_unet.py); blocks of another `kind` (a LyCORIS preset
    file's entries of another algorithm, runtime/mixed_kinds.py) at their own rank and alpha, as
    _rank_blocks plans a GLoRA adapter's, the text encoders' too."""
    if adapter.kind not in ("full", "ia3") or not (adapter.blocks or adapter.text_encoder_blocks):
        return {}

    def plan(b, text: bool) -> BlockPlan:
        if b.kind in ("adapter", adapter.kind):  # the adapter's own layers: no size
            return BlockPlan(
                pattern=b.pattern,
                rank=1,
                alpha=1.0,
                conv_rank=0 if text else 1,
                bypass=own_bypass(b),  # an IA^3 adapter's own (a map entry's bypass_mode; DBS592 on full)
                on_input=b.on_input,  # an IA^3 adapter's own input side (a map entry's; DBS618 on full)
                lr_scale=b.lr_scale,
            )
        return BlockPlan(
            pattern=b.pattern,
            kind=b.kind,
            rank=b.rank,
            alpha=b.alpha,
            conv_rank=0 if text else b.conv_rank,
            conv_alpha=1.0 if text else b.conv_alpha,
            unit=b.unit,
            # a LoCon / LoHa / LoKr block's own Tucker form (a map entry's use_tucker, the network's), a
            # LoKr block's own split and switches, a LoCon / LoHa / LoKr block's own scalar
            factor=b.factor,
            **_block_switches(b, adapter),
            scalar=_block_scalar(b, adapter),
            rescaled=b.rescaled if b.kind in ("diag-oft", "boft") else "adapter",  # DBS591 elsewhere
            on_input=b.on_input,  # a block of kind ia3's input side (DBS618 elsewhere)
            # a Diag-OFT / BOFT / DyLoRA / IA^3 block's own bypass_mode (a map entry's; DBS592 elsewhere)
            bypass=own_bypass(b),
            sig_type=b.sig_type,  # a tlora block's own start (DBS622 off U-Nets)
            data_init=b.data_init,
            dora=_block_dora(b, adapter),
            dora_axis=_block_dora_axis(b, adapter),
            lr_scale=b.lr_scale,
        )

    return dict(
        blocks=tuple(plan(b, False) for b in adapter.blocks),
        text_encoder_blocks=tuple(plan(b, True) for b in adapter.text_encoder_blocks),
    )


def _oft_blocks(adapter) -> dict:
    """Diag-OFT's and BOFT's per-module block sizes, constraints, rescales, bypass_mode (a LyCORIS preset
    file's entries) and learning-rate scales as blocks whose rank is the block-size hint, linear and
    convolution alike, whose alpha is the constraint (the block's, else the adapter's), whose `rescaled`
    differs from the adapter's or is "adapter" (runtime/blocks.py) and whose `bypass` is the block's own
    (settled in _settle_bypass)."""
    if adapter.kind not in ("diag-oft", "boft") or not (adapter.blocks or adapter.text_encoder_blocks):
        return {}

    def plan(b, conv: bool) -> BlockPlan:
        c = adapter.constraint if b.constraint < 0 else b.constraint
        own = adapter.rescaled if b.rescaled == "adapter" else b.rescaled == "on"
        rescaled = "adapter" if own == adapter.rescaled else "on" if own else "off"
        size = {"conv_rank": b.block_size, "conv_alpha": c} if conv else {}
        return BlockPlan(
            pattern=b.pattern,
            # the other OFT's layers (runtime/mixed_kinds.py builds each kind alone)
            kind="adapter" if b.kind in ("adapter", adapter.kind) else b.kind,  # (rules.mixed_block_kinds)
            rank=b.block_size,
            alpha=c,
            rescaled=rescaled,
            bypass=own_bypass(b),
            lr_scale=b.lr_scale if conv else 1.0,  # the denoiser's: 0 holds (held_unet.py); DBS599
            **size,
        )

    return dict(
        blocks=tuple(plan(b, True) for b in adapter.blocks),
        text_encoder_blocks=tuple(plan(b, False) for b in adapter.text_encoder_blocks),
    )


def _lycoris_switches(adapter) -> dict:
    """LyCORIS's use_scalar (every kind) and LoKr's full_matrix. With full_matrix every layer's factors are
    full: decompose_both and the Tucker core (both split a factor low-rank) are settled off in the plan."""
    switches = {"scalar": adapter.scalar}
    if adapter.kind == "lokr" and adapter.full_matrix:
        switches.update(full_matrix=True, decompose_both=False, tucker=False)
    return switches


BLOCK_SWITCHES = ("decompose_both", "full_matrix", "tucker", "unbalanced_factorization", "rank_stabilized")


def _block_switches(block, adapter) -> dict[str, str]:
    """A LoKr block's decompose_both / full_matrix / tucker / unbalanced_factorization / rank_stabilized as
    its layers train them: "on" / "off" where they differ from the plan's adapter (whose full_matrix settles
    decompose_both and tucker off, _lycoris_switches), else "adapter". A block's full_matrix settles its own
    two off alike (LokrModule never splits a full factor; its unbalanced output split still orders the full
    factors)."""
    kind = getattr(block, "kind", "adapter")
    kind = adapter.kind if kind == "adapter" else kind
    # the Tucker form alone on the block's k x k convolutions: a LoRA / LoHa adapter's (DBS579), or a block
    # of kind lora, loha or lokr beside another kind (runtime/mixed_kinds.py builds each kind's layers with
    # its blocks' own tucker; the adapter's is off there, DBS578)
    if kind == "lokr" != adapter.kind:  # a LoKr block beside another kind (a map entry's own options)
        return _other_lokr_switches(block, adapter)
    if adapter.kind in ("lora", "loha") or (kind != adapter.kind and kind in ("lora", "loha", "lokr")):
        tucker, network = getattr(block, "tucker", "adapter"), getattr(adapter, "tucker", False)
        own = network if tucker == "adapter" else tucker == "on"
        # a lokr adapter's full_matrix settles its plan's tucker off (_lycoris_switches): a LoCon / LoHa
        # block inheriting the adapter's Tucker form keeps it on
        planned = network and not (adapter.kind == "lokr" and getattr(adapter, "full_matrix", False))
        return {"tucker": "adapter" if own == planned else "on" if own else "off"}
    if adapter.kind != "lokr" or kind != "lokr":  # DBS576 refuses a block switch outside LoKr
        return {}
    given = {key: getattr(block, key, "adapter") for key in BLOCK_SWITCHES}
    planned = {
        "full_matrix": adapter.full_matrix,
        "decompose_both": adapter.decompose_both and not adapter.full_matrix,
        "tucker": adapter.tucker and not adapter.full_matrix,
        "unbalanced_factorization": adapter.unbalanced_factorization,
        "rank_stabilized": adapter.rank_stabilized,
    }
    own = {key: getattr(adapter, key) if given[key] == "adapter" else given[key] == "on" for key in given}
    if own["full_matrix"]:
        own.update(decompose_both=False, tucker=False)
    return {key: "adapter" if own[key] == planned[key] else "on" if own[key] else "off" for key in own}


def _other_lokr_switches(block, adapter) -> dict[str, str]:
    """A block of kind lokr on another kind's adapter: its own decompose_both / full_matrix / tucker /
    unbalanced_factorization / rank_stabilized as its layers train them (runtime/mixed_kinds.py kind_adapter
    builds them on the plan's adapter, whose LoKr switches are off: DBS578 keeps the network's off beside
    other kinds; its Tucker form against the adapter's `tucker`), a full_matrix settling decompose_both and
    tucker off as on a lokr adapter."""
    network = getattr(adapter, "tucker", False)
    given = {key: getattr(block, key, "adapter") for key in BLOCK_SWITCHES}
    planned = {key: network if key == "tucker" else False for key in BLOCK_SWITCHES}
    own = {key: planned[key] if given[key] == "adapter" else given[key] == "on" for key in given}
    if own["full_matrix"]:
        own.update(decompose_both=False, tucker=False)
    return {key: "adapter" if own[key] == planned[key] else "on" if own[key] else "off" for key in own}


def rank_dropout_blocks(a) -> bool:
    """Some block gives its layers a kind whose LyCORIS module draws the network's rank_dropout in its default
    forward (LoCon, LoHa, LoKr, full, Diag-OFT), beside an adapter whose own layers never read it (IA^3,
    GLoRA outside bypass)."""
    readers = ("lora", "loha", "lokr", "full", "diag-oft")
    blocks = (*a.blocks, *getattr(a, "text_encoder_blocks", ()))
    return any(getattr(b, "kind", "adapter") in readers for b in blocks)


def _bypass_dropout_blocks(adapter) -> bool:
    """Some block gives its layers LoRA / LoCon, LoHa or LoKr beside the adapter's kind (LyCORIS's modules
    whose bypass forward drops their update by the network's `dropout`)."""
    kinds = {getattr(b, "kind", "adapter") for b in (*adapter.blocks, *adapter.text_encoder_blocks)}
    return bool(kinds & {"lora", "loha", "lokr"})


def _lora_blocks(adapter) -> bool:
    """Some block (the denoiser's or a text encoder's) gives its layers LoRA / LoCon beside the adapter's
    kind."""
    return any(
        getattr(b, "kind", "adapter") == "lora" for b in (*adapter.blocks, *adapter.text_encoder_blocks)
    )


def _block_rank_dropout_scale(block, adapter) -> str:
    """A LoHa / LoKr block's rank-dropout rescale, or a LoRA's with LyCORIS's rank-dropout forms
    (LoConModule's masks, which kohya's network leaves unscaled), as its layers train it: "on" / "off" where
    it differs from the plan's adapter (on only with rank dropout), else "adapter" (DBS580 elsewhere)."""
    given = getattr(block, "rank_dropout_scale", "adapter")
    lycoris_lora = adapter.kind == "lora" and adapter.rank_dropout_form != "kohya"
    if (adapter.kind not in ("loha", "lokr") and not lycoris_lora) or given == "adapter":
        return "adapter"
    planned = getattr(adapter, "rank_dropout_scale", False) and adapter.rank_dropout > 0
    own = given == "on" and adapter.rank_dropout > 0
    return "adapter" if own == planned else "on" if own else "off"


def _block_scalar(block, adapter) -> str:
    """A block's LyCORIS scalar as its layers train it: "on" / "off" where it differs from the adapter's
    `scalar`, else "adapter"."""
    network = getattr(adapter, "scalar", False)  # a full / IA^3 adapter's: none (its blocks' own alone)
    own = network if block.scalar == "adapter" else block.scalar == "on"
    return "adapter" if own == network else "on" if own else "off"


def _block_dora(block, adapter) -> str:
    """A block's LyCORIS weight decomposition as its layers train it: "on" / "off" where it differs from the
    adapter's `dora`, else "adapter"."""
    given = getattr(block, "dora", "adapter")
    dora = getattr(adapter, "dora", False)
    own = dora if given == "adapter" else given == "on"
    return "adapter" if own == dora else "on" if own else "off"


def _block_dora_axis(block, adapter) -> str:
    """A block's LyCORIS weight-decomposition axis as its layers train it: "output" / "input" where they
    decompose (the adapter's `dora` or the block's own) on another axis than the adapter's `dora_axis`, else
    "adapter"."""
    given = getattr(block, "dora_axis", "adapter")
    dora = getattr(adapter, "dora", False)
    decomposed = dora if getattr(block, "dora", "adapter") == "adapter" else block.dora == "on"
    # GLoRA / DyLoRA adapters have no dora_axis: their blocks' layers decompose per output row by default
    if given == "adapter" or not decomposed or given == getattr(adapter, "dora_axis", "output"):
        return "adapter"
    return given


def _lokr_split(factor: int) -> int:
    """LoKr's larger Kronecker factor of an (out, in) weight holds at most (out / f) x (in / f) numbers, the
    smaller
    f x f: at most 1 / f^2 of the layer, whatever the rank (LyCORIS's huge-rank recipes train both in full).
    factor -1 splits near the square root of each width, 8 or more on layers 64 wide or wider."""
    return factor if factor > 0 else 8


def _lokr_smallest_split(adapter, blocks) -> int:
    """The smallest of _lokr_split over the adapter's factor and the blocks' own (a LyCORIS map entry's;
    0 is the adapter's): the component's layers hold at most 1 / split^2 of it whichever block splits them."""
    return min(_lokr_split(f) for f in [adapter.factor, *(b.factor for b in blocks if b.factor)])


def _largest_ranks(adapter) -> tuple[int, int]:
    """The denoiser's largest linear and convolution ranks: with per-block ranks (adapter.blocks) the family's
    per-rank facts (whole-model sums) give an upper bound, the count at the largest rank anywhere."""
    blocks = getattr(adapter, "blocks", ())
    blocks = [b for b in blocks if getattr(b, "kind", "adapter") != "full"]  # copies: counted apart
    rank = max([adapter.rank, *(b.rank for b in blocks)])
    conv_rank = max([adapter.conv_rank, *(b.conv_rank for b in blocks)]) if adapter.conv_rank else 0
    return rank, conv_rank


def adapter_params(
    adapter, family: str, components, targets: tuple[str, ...] = (), fused: tuple[FusedPlan, ...] = ()
) -> dict[str, int]:
    """Adapter parameters per adapted component: exact for LoRA and LoHa on the public models with the default
    targets (and, where the family lists each target's count, with any targets made of those: Flux's and
    SD3's kohya sets, fused layers' shared down-projections counted once), an upper bound for LoKr; scaled by
    component size for other models (the tiny ones too). DoRA's magnitudes (one number per output row) are
    not counted. With `tucker` the LoHa / LoKr convolutions' count
    is an upper bound: rank x (out + in) + rank^2 x k x k is below the flattened rank x (out + in x k x k) for
    any rank under 8/9 of the input channels; LoRA's Tucker form is counted exactly (lora_mid included)."""
    public = family_spec(family)
    if adapter.kind == "full":  # copies of the targeted layers: at most the adapted components themselves
        return {c.name: int(c.params) for c in components if c.trainable == "lora"}
    if adapter.kind == "glora":  # a1, a2 (in x rank each), b1, b2 (rank x (out + in)): 3 LoRAs bound it
        blocks = [*adapter.blocks, *adapter.text_encoder_blocks]  # per-module ranks: the largest bounds it
        ranks = [adapter.rank, adapter.conv_rank, *(max(b.rank, getattr(b, "conv_rank", 0)) for b in blocks)]
        return _at_rank(public, components, 3 * max(ranks))
    if adapter.kind == "boft":  # log2(width / block) + 1 stages of diag-oft's blocks: 16 bounds the stages
        blocks = [*adapter.blocks, *adapter.text_encoder_blocks]  # per-module sizes: the largest bounds it
        return _at_rank(
            public, components, 16 * max([adapter.block_size, *(b.block_size for b in blocks)]) + 1
        )
    if adapter.kind == "diag-oft" and getattr(adapter, "form", "lycoris") == "kohya":
        # kohya's networks.oft: out x (out / blocks) per layer, at most (in + out) x (widest / blocks); the
        # U-Nets' widest targeted linear is GEGLU's ff.net.0.proj (8 x 1280) or else 1280
        widest = 10240 if any(t.startswith("ff.net.0") for t in adapter.denoiser_targets) else 1280
        return _at_rank(public, components, max(1, widest // max(adapter.block_count, 1)))
    if adapter.kind == "diag-oft":  # a block_size x block_size block per block_size rows (+ a rescale)
        blocks = [*adapter.blocks, *adapter.text_encoder_blocks]  # per-module sizes: the largest bounds it
        return _at_rank(public, components, max([adapter.block_size, *(b.block_size for b in blocks)]) + 1)
    if adapter.kind == "tlora":  # q, p and the rank singular values: LoRA's count at rank + 1 bounds it
        blocks = [*adapter.blocks, *adapter.text_encoder_blocks]  # per-module ranks: the largest bounds it
        return _at_rank(public, components, max([adapter.rank, *(b.rank for b in blocks)]) + 1)
    if adapter.kind == "ia3":  # one scale per channel: LoRA's count at rank 1 bounds it
        return _at_rank(public, components, 1)
    out: dict[str, int] = {}
    for c in components:
        if c.trainable != "lora":
            continue
        size = c.params / public.public_params[c.name]
        rank, conv_rank = adapter.rank, adapter.conv_rank
        denoiser = c.name == "unet"  # the plan's name of every family's denoiser component
        per_rank = public.lora_params_per_rank[c.name]
        if not denoiser:  # per-module text-encoder ranks: the count at the largest bounds it
            rank = max([rank, *(b.rank for b in getattr(adapter, "text_encoder_blocks", ()))])
        if denoiser:
            rank, conv_rank = _largest_ranks(adapter)
            counted = _denoiser_per_rank(public, targets, fused)
            per_rank = per_rank if counted is None else counted
        # blocks of other kinds (LoHa's two pairs per rank bound them all)
        blocks = getattr(adapter, "blocks" if denoiser else "text_encoder_blocks", ())
        kinds = {adapter.kind, *(getattr(b, "kind", "adapter") for b in blocks)} - {"adapter"}
        copies = "full" in kinds  # full blocks' copies: at most the component itself, beside the others
        kinds -= {"full"}
        each = max(_PER_RANK_FACTOR[k] for k in kinds)
        total = per_rank * rank * each
        if denoiser and adapter.conv_rank:
            total += _conv_params(adapter, public, conv_rank) * each
        total *= size
        if kinds == {"lokr"}:
            full = c.params / _lokr_smallest_split(adapter, blocks) ** 2
            full_matrix = adapter.full_matrix or any(b.full_matrix == "on" for b in blocks)
            total = full if full_matrix else min(total, full)
        out[c.name] = int(total + (c.params if copies else 0))
    return out


def _denoiser_per_rank(public, targets: tuple[str, ...], fused: tuple[FusedPlan, ...]) -> int | None:
    """LoRA parameters per unit of rank of the public model's denoiser with `targets`, from the family's
    per-target counts; block-indexed targets (`transformer_blocks.12.attn.to_q`, diffusers' SD3
    `--lora_blocks`) per layer they name (_block_targets; one naming no layer adapts nothing: 0, DBS607);
    each fused layer's shared down counted once. None when a target has no count."""
    table = public.lora_params_per_target
    if not table or not targets:
        return None
    plain = tuple(t for t in set(targets) if t in table)
    indexed = _block_targets(public, tuple(t for t in set(targets) if t not in table), plain)
    if indexed is None:
        return None
    total = sum(table[t] for t in plain) + indexed
    facts = {f.kohya_name: f for f in public.fused_projections}
    for group in fused:
        parts = sum(1 for p in group.parts if targeted(p, targets))
        total -= max(parts - 1, 0) * facts[group.name].down_per_rank
    return total


def _block_targets(public, targets: tuple[str, ...], plain: tuple[str, ...]) -> int | None:
    """in + out of each block Linear of the counted public model (the family's first layout: the model
    `lora_params_per_target` counts) that `targets` name and the `plain` (per-suffix counted) targets do not,
    by peft's rule; None when one of the layers is not a block Linear (no count: the caller falls back)."""
    if not targets:
        return 0
    if not public.denoiser_layouts:
        return None
    shape = public.denoiser_layouts[0].shape
    layers = [p for p in denoiser_paths(shape) if targeted(p, targets) and not targeted(p, plain)]
    widths = [block_linear_in_out(shape, p) for p in layers]
    return None if None in widths else sum(widths)


def _conv_params(adapter, public, rank: int) -> int:
    """The convolution adapters' parameters at `rank`: rank x (in x 9 + out) per 3x3 convolution, or for
    LoCon's Tucker form rank x (in + out) (1x1 lora_down and lora_up) + rank^2 x 9 (lora_mid)."""
    flat = public.conv_params_per_rank * rank
    if adapter.kind != "lora" or not adapter.tucker:
        return flat
    inputs, count = public.conv_tucker_facts
    return flat - 8 * inputs * rank + 9 * count * rank * rank


def _at_rank(public, components, rank: float) -> dict[str, int]:
    """A LoRA's parameters at `rank` on each adapted component, scaled to the component's size (the bound the
    whole-layer and block kinds are counted by)."""
    return {
        c.name: int(public.lora_params_per_rank[c.name] * rank * c.params / public.public_params[c.name])
        for c in components
        if c.trainable == "lora"
    }

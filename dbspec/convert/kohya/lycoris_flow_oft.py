"""LyCORIS's lycoris.kohya `algo=diag-oft` with flux_train_network.py / sd3_train_network.py (lycoris-lora
4.1.3 lycoris/modules/diag_oft.py on kohya's Flux / SD3): [adapter] kind "diag-oft" with
`fused_projections = true`. lycoris_flux.py's map_lycoris_flow hands it the preset's layers.

DiagOFTModule on a Linear of out rows splits them into blocks of block_size = factorization(out, lora_dim)
(network_dim; the smaller of lora_dim and out / lora_dim when lora_dim divides out) and rotates each block of
the weight's rows by its own Cayley rotation; the forward adds op(x, W' - W), no bias. On kohya's fused
Linears (Flux's img_attn.qkv / txt_attn.qkv and the single blocks' linear1, SD3's attn.qkv) that is one
module over the stacked rows: its block size comes from the fused width (9216 or 21504 on FLUX.1), not from
a part's. A block touches the rows of one part alone when the block size divides every part's width (FLUX.1:
3072 and 12288), and then each part of diffusers' split layer rotating its own rows in those blocks is the
same update: `fused_projections = true` gives each part the fused module's block size (runtime/lycoris_oft.py
fit_fused_oft), and the kohya_lora export stacks the parts' blocks under kohya's name, the file lycoris-lora
loads back. Otherwise a block spans two parts (FLUX.1's 9216-row qkv at network_dim 9, 128 or 256: blocks of
9, 72, 36 rows; flux1_spans): the parts share the fused module's blocks, each computing its rows of the
rotated stacked weight (runtime/fused_oft.py), and the export writes them once under kohya's name.
`constraint` (DiagOFTModule scales all its blocks by one norm, bounded by constraint x the fused width): the
parts share that norm (runtime/lycoris_oft.py link_fused_oft). The dropouts span the parts too:
module_dropout's one draw per fused module (runtime/fused.py FusedSkip) and rank_dropout's one mask over its
blocks (runtime/lycoris_oft.py FusedRankDraw; never read in bypass_mode, DBS405) are shared by the parts.
`dropout` (--network_dropout) acts only in bypass_mode, where lycoris-lora 4.1.3 raises on it (DBS402, as
network.py's U-Net rule); bypass_mode alone rotates the output, its bias too (adapter.bypass), per block of
rows as well. DiagOFTModule takes and never reads network_alpha, use_scalar, dora_wd, rs_lora and Tucker's
switches. Convolutions (SD3's patch convolution with presets full / unet-only): at conv_dim, which must be
network_dim (dbspec has one block size)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lycoris_maps import NEGATIVE_CONSTRAINT, applied_constraint
from dbspec.convert.kohya.network_reads import constraint_key
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    popped,
    put_kind,
    oft_conv_dim,
    put_blocks,
    put_conv_dim,
    put_rest,
    put_targets,
    refuse_rest,
)
from dbspec.plan.lokr import factorization  # LyCORIS's (lycoris/functional/general.py)

# 3072-wide parts (q, k, v) and the MLP input (12288): every FLUX.1 part width is a multiple of 3072
FLUX1_PART = 3072
FLUX1_FUSED = (3 * FLUX1_PART, 7 * FLUX1_PART)  # img_attn.qkv / txt_attn.qkv, linear1
# network_args DiagOFTModule takes and never reads (LyCORIS passes them to every module)
_UNREAD = ("use_scalar", "dora_wd", "wd_on_output", "rs_lora", "use_tucker", "use_cp", "use_conv_cp")
_UNREAD += ("disable_conv_cp", "rank_dropout_scale", "factor", "decompose_both", "full_matrix")
_UNREAD += ("unbalanced_factorization", "block_size", "verbose", "conv_alpha")


def flux1_spans(lora_dim: int) -> list[int]:
    """The block sizes of LyCORIS's blocks on FLUX.1's fused Linears that span two of their parts at this
    lora_dim (the parts then share the fused module's blocks: runtime/fused_oft.py)."""
    sizes = [factorization(fused, lora_dim)[0] for fused in FLUX1_FUSED]
    return [size for size in sizes if FLUX1_PART % size]


def map_flow_diag_oft(
    kwargs: dict[str, str], a: dict[str, Legacy], conv: Conversion, layout, preset: str, text_blocks=()
) -> bool:
    """[adapter] for algo=diag-oft on kohya's Flux / SD3 (`layout`: lycoris_flux.py's LycorisLayout; a preset
    file's map entries' own block sizes: its [[adapter.blocks]] over whole fused layers and `text_blocks`);
    False when refused (reported)."""
    module, args, dim = a["network_module"], a["network_args"], a["network_dim"]
    layers, text = layout.presets[preset]
    lora_dim = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    legacy = lambda key: popped(args, kwargs, key)  # noqa: E731
    refused = []
    conv_targets: list[str] = []
    own_conv = False
    if layers in layout.convs:
        own_conv, conv_targets = oft_conv_dim(kwargs, layout, layers, lora_dim, refused)
    if refused:
        conv.unsupported(args, f"algo=diag-oft on {layout.title}'s fused Linears: {', '.join(refused)}")
        return False
    key = constraint_key(kwargs)  # its deprecated name `constrain` where given
    constraint = legacy(key) if float(kwargs.get(key) or 0) else None
    bypass = str(kwargs.pop("bypass_mode", "false")).lower() != "false"  # LyCORIS's str_bool
    # DiagOFTModule's draws, once per fused module (its parts share them: runtime/fused.py FusedSkip,
    # runtime/lycoris_oft.py FusedRankDraw); its bypass forward never reads rank_dropout
    drops = {k: legacy(k) for k in ("module_dropout", "rank_dropout") if float(kwargs.get(k) or 0)}
    norms = ("adapter", "text_encoder_norms") in conv.values  # train_norm's NormModules draw it too
    if bypass and "rank_dropout" in drops and not norms:
        conv.ignored(drops.pop("rank_dropout"), "DiagOFTModule draws it in its default forward only")
    for off in [k for k in (key, "rank_dropout", "module_dropout") if k in kwargs]:
        conv.inert(legacy(off), "0 is off")
    own_size = popped(args, kwargs, "conv_dim") if own_conv else None  # put_conv_dim maps it
    if "conv_dim" in kwargs:
        conv.inert(legacy("conv_dim"), "network_dim's block size" if conv_targets else "no convolution here")
    dropout = legacy("dropout") if "dropout" in kwargs else a["network_dropout"]
    if dropout.value and float(dropout.value) and bypass:
        conv.invalid(
            dropout.key,
            dropout.value,
            dropout.source,
            "with algo=diag-oft and bypass_mode LyCORIS's DiagOFTModule multiplies its (blocks, size, size) "
            "rotations by a dropout mask shaped like the layer's output in training mode: torch raises "
            "RuntimeError on the first forward",
            help="drop the dropout (or bypass_mode)",
        )
        return False
    if dropout.value and float(dropout.value):
        conv.ignored(dropout, "DiagOFTModule applies its dropout only in bypass_mode (off here)")
    rescaled = legacy("rescaled") if "rescaled" in kwargs else None
    unread = lambda k: k in _UNREAD or k.startswith("loraplus_")  # noqa: E731
    ignore_args(kwargs, args, conv, unread, "LyCORIS's DiagOFTModule takes it and never reads it")
    if refuse_rest(kwargs, args, conv, "diag-oft", layout.title):
        return False
    put_kind(conv, module, "diag-oft", preset, "DiagOFTModule", layout.title)
    spanning = flux1_spans(lora_dim) if layout.title == "Flux" else []  # FLUX.1's widths (Chroma's too)
    note = (
        f"on FLUX.1's fused qkv / linear1 its blocks of {spanning[0]} rows span the 3072-row parts, which "
        "share the fused module's blocks"
        if spanning
        else ""
    )
    conv.mapped(dim, ("adapter", "block_size"), lora_dim, note)
    if (
        constraint is not None
    ):  # one norm over each fused Linear's blocks (runtime/lycoris_oft.py link_fused_oft)
        value = applied_constraint(constraint.value)  # a negative one: 0 (was DBS403)
        note = "" if value else NEGATIVE_CONSTRAINT
        conv.mapped(constraint, ("adapter", "constraint"), value, note)
    for key, given in drops.items():
        conv.mapped(given, ("adapter", key), float(given.value))
    if rescaled is not None:  # LyCORIS's str_bool: a learned scale per output row, the parts' rows their own
        conv.mapped(rescaled, ("adapter", "rescaled"), str(rescaled.value).lower() != "false")
    if a["network_alpha"].given:
        conv.inert(
            a["network_alpha"], "DiagOFTModule takes alpha and never reads it (its constraint is its own)"
        )
    why = "one DiagOFTModule per fused Linear: its blocks split the stacked rows"
    put_targets(conv, module, layout, layers, why)
    put_blocks(conv, module, layout, layers, text_blocks)  # a preset file's entries' own block sizes
    if own_conv:  # the convolutions at conv_dim's block size, after the file's blocks
        put_conv_dim(conv, args, own_size, layout, layers, conv_targets)
    if conv_targets:
        note = conv.comment(
            args, f"DiagOFTModule on {', '.join(conv_targets)} too (the preset's enable_conv)"
        )
        conv.put(("adapter", "conv_targets"), conv_targets, note)
    extra: dict[str, Any] = {"bypass": True} if bypass else {}
    put_rest(conv, module, args, preset, text, extra, "LyCORIS's bypass_mode: the output rotated")
    return True

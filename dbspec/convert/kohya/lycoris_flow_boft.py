"""LyCORIS's lycoris.kohya `algo=boft` with flux_train_network.py / sd3_train_network.py (lycoris-lora 4.1.3
lycoris/modules/boft.py on kohya's Flux / SD3): [adapter] kind "boft" with `fused_projections = true`.
lycoris_flux.py's map_lycoris_flow hands it the preset's layers.

ButterflyOFTModule on a Linear of out rows splits them as power2factorization(out, lora_dim) (network_dim):
block_num blocks of block_size rows, block_num a power of two, popcount(block_num - 1) + 1 butterfly stages,
stage i regrouping the rows in strides of 2^i x block_size / 2 before its block-diagonal Cayley rotations; a
width it cannot split raises ValueError when create_network builds it. On kohya's fused Linears (Flux's
img_attn.qkv / txt_attn.qkv and the single blocks' linear1, SD3's attn.qkv) that is one module over the
stacked rows, whose strides reach across the parts: `fused_projections = true` shares its blocks among the
parts of diffusers' split layer, each computing its rows of the rotated stacked weight
(runtime/lycoris_boft.py tie_fused_boft), and the kohya_lora export writes the blocks once under kohya's name,
the rescale stacked, the file lycoris-lora loads back. Its `constraint` (COFT: one norm over all the
module's blocks, constraint x the stacked width) and `rescaled` (a row rescale after the stages) are the
adapter's, `bypass_mode` its bypass forward (`bypass`: the fused output rotated, each part its channels of
it), `module_dropout` its forward's one `torch.rand(1)` per training forward (one draw per fused module, its
parts skipping together: runtime/fused.py FusedSkip). ButterflyOFTModule never
reads `dropout` (or --network_dropout), `rank_dropout`, network_alpha, use_scalar, dora_wd, rs_lora or
Tucker's switches (DBS405 / inert). Convolutions (SD3's patch convolution with presets full / unet-only): at
conv_dim, which must be network_dim (dbspec has one block size)."""

from __future__ import annotations

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lycoris_maps import NEGATIVE_CONSTRAINT, applied_constraint
from dbspec.convert.kohya.network_reads import constraint_key
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    popped,
    put_kind,
    put_rest,
    oft_conv_dim,
    put_blocks,
    put_conv_dim,
    put_targets,
    refuse_rest,
)
from dbspec.plan.boft import power2_factorization  # LyCORIS's (lycoris/functional/general.py)

# FLUX.1's (and Chroma's) Linears the presets adapt, by kohya's names: (width, layers)
_FLUX1_ATTN = ((9216, "img_attn.qkv / txt_attn.qkv"), (3072, "img_attn.proj / txt_attn.proj"))
_FLUX1_ALL = (*_FLUX1_ATTN, (21504, "linear1 (q, k, v and the MLP input)"), (12288, "img_mlp.0 / txt_mlp.0"))
_FLUX1_MODULATIONS = ((18432, "img_mod.lin / txt_mod.lin"), (9216, "modulation.lin"))  # not Chroma's
# network_args ButterflyOFTModule takes and never reads (LyCORIS passes them to every module)
_UNREAD = ("use_scalar", "dora_wd", "wd_on_output", "rs_lora", "use_tucker", "use_cp", "use_conv_cp")
_UNREAD += ("disable_conv_cp", "rank_dropout_scale", "factor", "decompose_both", "full_matrix")
_UNREAD += ("unbalanced_factorization", "block_size", "verbose", "conv_alpha", "dropout", "rank_dropout")


def flux1_unsplit(lora_dim: int, layers: str, chroma: bool) -> str:
    """FLUX.1's Linears of the preset's `layers` ("all" / attention) that power2factorization cannot split
    at this lora_dim (ButterflyOFTModule raises when create_network builds them), "" if none."""
    widths = _FLUX1_ATTN if layers != "all" else _FLUX1_ALL
    if layers == "all" and not chroma:  # Chroma's blocks have no modulation Linears
        widths += _FLUX1_MODULATIONS
    return ", ".join(f"{names} ({width} rows)" for width, names in widths if not _splits(width, lora_dim))


def _splits(width: int, lora_dim: int) -> bool:
    return bool(power2_factorization(width, lora_dim)[1])


def map_flow_boft(
    kwargs: dict[str, str],
    a: dict[str, Legacy],
    conv: Conversion,
    layout,
    preset: str,
    chroma: bool = False,
    file: bool = False,
    text_blocks=(),
) -> bool:
    """[adapter] for algo=boft on kohya's Flux / SD3 (`layout`: lycoris_flux.py's LycorisLayout); False when
    refused or invalid (reported). `file`: a preset file's layers, whose FLUX.1 widths
    lycoris_flow_file._boft_widths checked already (layer by layer, the ones the file reaches, at their map
    entries' own block sizes: its [[adapter.blocks]] over whole fused layers and `text_blocks`)."""
    module, args, dim = a["network_module"], a["network_args"], a["network_dim"]
    layers, text = layout.presets[preset]
    lora_dim = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    whole = layout.title == "Flux" and layers != "none" and not file
    bad = flux1_unsplit(lora_dim, layers, chroma) if whole else ""
    if bad:
        fits = next(b for b in range(2, 21505, 2) if not flux1_unsplit(b, layers, chroma))
        conv.invalid(
            dim.key,
            dim.value,
            dim.source,
            f"with algo=boft LyCORIS's ButterflyOFTModule cannot split FLUX.1's {bad} with network_dim "
            f"{lora_dim} (power2factorization needs an even block size b <= network_dim with width / b a "
            "power of two): create_network raises ValueError before training",
            help=f"set network_dim to {fits} or more (the smallest that splits them)",
        )
        return False
    refused = []
    bypass = "bypass_mode" in kwargs and str(kwargs["bypass_mode"]).lower() != "false"  # LyCORIS's str_bool
    conv_targets: list[str] = []
    own_conv = False
    if layers in layout.convs:
        own_conv, conv_targets = oft_conv_dim(kwargs, layout, layers, lora_dim, refused)
    if refused:
        conv.unsupported(args, f"algo=boft on {layout.title}'s fused Linears: {', '.join(refused)}")
        return False
    if bypass:  # its bypass forward: the fused output rotated (every part's, bias included)
        conv.mapped(popped(args, kwargs, "bypass_mode"), ("adapter", "bypass"), True)
    if float(kwargs.get("module_dropout") or 0):  # one torch.rand(1) per fused module, its parts share it
        dropped = popped(args, kwargs, "module_dropout")
        conv.mapped(dropped, ("adapter", "module_dropout"), float(dropped.value))
    for key in [k for k in ("module_dropout", "bypass_mode") if k in kwargs]:
        conv.inert(popped(args, kwargs, key), "off")
    own_size = popped(args, kwargs, "conv_dim") if own_conv else None  # put_conv_dim maps it
    if "conv_dim" in kwargs:
        conv.inert(
            popped(args, kwargs, "conv_dim"),
            "network_dim's block size" if conv_targets else "no convolution here",
        )
    dropout = a["network_dropout"]
    if dropout.value and float(dropout.value):
        conv.ignored(dropout, "LyCORIS's ButterflyOFTModule never reads its dropout")
    key = constraint_key(kwargs)  # its deprecated name `constrain` where given
    constraint = popped(args, kwargs, key) if key in kwargs else None
    rescaled = popped(args, kwargs, "rescaled") if "rescaled" in kwargs else None
    unread = lambda k: k in _UNREAD or k.startswith("loraplus_")  # noqa: E731
    ignore_args(kwargs, args, conv, unread, "LyCORIS's ButterflyOFTModule takes it and never reads it")
    if refuse_rest(kwargs, args, conv, "boft", layout.title):
        return False
    put_kind(conv, module, "boft", preset, "ButterflyOFTModule", layout.title)
    conv.mapped(dim, ("adapter", "block_size"), lora_dim)
    if constraint is not None:  # create_network: float(kwargs.get("constraint", 0) or 0)
        value = float(constraint.value or 0)
        if value:  # a negative one: 0 (was DBS403)
            note = "" if value > 0 else NEGATIVE_CONSTRAINT
            conv.mapped(constraint, ("adapter", "constraint"), applied_constraint(value), note)
        else:
            conv.inert(constraint, "0 is off")
    if rescaled is not None:  # LyCORIS's str_bool: a learned scale per output row, the parts' rows their own
        conv.mapped(rescaled, ("adapter", "rescaled"), str(rescaled.value).lower() != "false")
    if a["network_alpha"].given:
        conv.inert(
            a["network_alpha"],
            "ButterflyOFTModule takes alpha and never reads it (its constraint is its own)",
        )
    why = "one ButterflyOFTModule per fused Linear: its butterfly stages rotate the stacked rows together"
    put_targets(conv, module, layout, layers, why)
    put_blocks(conv, module, layout, layers, text_blocks)  # a preset file's entries' own block sizes
    if own_conv:  # the convolutions at conv_dim's block size, after the file's blocks
        put_conv_dim(conv, args, own_size, layout, layers, conv_targets)
    if conv_targets:
        note = conv.comment(
            args, f"ButterflyOFTModule on {', '.join(conv_targets)} too (the preset's enable_conv)"
        )
        conv.put(("adapter", "conv_targets"), conv_targets, note)
    put_rest(conv, module, args, preset, text, {})
    return True

"""LyCORIS's lycoris.kohya `algo=glora` with flux_train_network.py / sd3_train_network.py (lycoris-lora
4.1.3 lycoris/modules/glora.py on kohya's Flux / SD3): [adapter] kind "glora" with `fused_projections = true`.
lycoris_flux.py's map_lycoris_flow hands it the preset's layers.

GLoRAModule on a Linear: ΔW = (W a1 a2 + b1 b2) x alpha / rank (alpha 0: the rank; rs_lora: alpha /
sqrt(rank)), a1 (in x rank) and b1 (out x rank) kaiming-uniform, a2 and b2 zero (use_scalar: a trained scalar
from 0, a2 and b2 kaiming too). On kohya's fused Linears (Flux's img_attn.qkv / txt_attn.qkv and the single
blocks' linear1, SD3's attn.qkv) one module spans the stacked rows: part p's rows of ΔW are (W_p a1 a2 + b1_p
b2) x scale, so diffusers' separate parts share a1, a2, b2 (and the scalar) and each keeps its rows of b1
(runtime/lycoris_glora.py tie_fused_glora; b1's kaiming bound is 1 / sqrt(rank) whatever its rows, so the
parts' own draws have the fused module's distribution). The kohya_lora export writes the shared tensors once
and b1 stacked under kohya's name, the file lycoris-lora loads back. Its draws, made once per fused module,
its parts share (runtime/lycoris_glora.py FusedDraws): `module_dropout`, and in bypass_mode `rank_dropout`
and `dropout` (--network_dropout); outside bypass_mode those two are never applied (DBS405). bypass_mode:
adapter.bypass (the pairs on activations, each part its rows). GLoRAModule never reads dora_wd or
Tucker's switches (DBS405; a preset file's LoCon / LoHa / LoKr entries decompose with dora_wd, each fused
Linear whole: their blocks' own `dora`); LoRA+ raises `lora_up` parameters, which it has not (DBS405).
Convolutions (SD3's patch convolution with presets full / unet-only): at conv_dim / conv_alpha."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    popped,
    put_blocks,
    put_convs,
    put_kind,
    put_rest,
    put_targets,
    refuse_rest,
    take_blocks_dora,
)
from dbspec.convert.kohya.network import _lycoris_rs_lora
from dbspec.convert.kohya.entry_args import entries_lokr_args
from dbspec.convert.kohya.oft_entries import entries_constraint

# network_args GLoRAModule takes and never reads
_UNREAD = ("dora_wd", "wd_on_output", "use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp")
_UNREAD += ("rank_dropout_scale", "factor", "decompose_both", "full_matrix", "unbalanced_factorization")
_UNREAD += ("block_size", "constraint", "constrain", "verbose")


def map_flow_glora(
    kwargs: dict[str, str], a: dict[str, Legacy], conv: Conversion, layout, preset: str, text_blocks=()
) -> bool:
    """[adapter] for algo=glora on kohya's Flux / SD3 (`layout`: lycoris_flux.py's LycorisLayout; a preset
    file's map entries' own dims and alphas: its [[adapter.blocks]] over whole fused layers and
    `text_blocks`); False when refused (reported)."""
    module, args, dim, alpha = a["network_module"], a["network_args"], a["network_dim"], a["network_alpha"]
    layers, text = layout.presets[preset]
    rank = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    scale_alpha = float(alpha.value)
    legacy = lambda key: popped(args, kwargs, key)  # noqa: E731
    bypass = str(kwargs.pop("bypass_mode", "false")).lower() != "false"  # LyCORIS's str_bool
    if "module_dropout" in kwargs:  # one draw per fused Linear its parts share
        given = legacy("module_dropout")
        if float(given.value or 0):
            conv.mapped(given, ("adapter", "module_dropout"), float(given.value))
        else:
            conv.inert(given, "0 is off")
    rates = {k: legacy(k) for k in ("rank_dropout", "dropout") if k in kwargs}
    if "dropout" not in rates and a["network_dropout"].value:  # train_network.py hands it on as `dropout`
        rates["dropout"] = a["network_dropout"]
    for key, given in rates.items():
        if not float(given.value or 0):
            conv.inert(given, "0 is off")
        elif bypass:  # drawn once per fused Linear: rank masks over the shared rank, masks over its rows
            conv.mapped(given, ("adapter", key), float(given.value))
        else:
            conv.ignored(given, "GLoRAModule applies it only in bypass_mode (off here)")
    put: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    put_convs(kwargs, args, conv, put, layout, layers, rank, scale_alpha)
    scalar = kwargs.pop("use_scalar", "false")
    if str(scalar).lower() != "false":  # LyCORIS's str_bool: one trained scalar per fused Linear
        put["scalar"] = True
    put["alpha"] = scale_alpha
    _lycoris_rs_lora(kwargs, "glora", rank, scale_alpha, put, unsupported)
    blocks = [] if layers == "none" else layout.targets(layers, True)[1]
    take_blocks_dora(kwargs, blocks, text_blocks)  # its LoCon / LoHa / LoKr blocks' own dora (read)
    entries_constraint(kwargs, [*blocks, *text_blocks], args, conv)  # its Diag-OFT / BOFT blocks' alpha
    entries_lokr_args(kwargs, [*blocks, *text_blocks], args, conv)  # its LoKr blocks' split
    ignore_args(kwargs, args, conv, lambda k: k in _UNREAD, "GLoRAModule takes it and never reads it")
    why = "LyCORIS's LoRA+ raises the `lora_up` parameters, which GLoRA has not"
    ignore_args(kwargs, args, conv, lambda k: k.startswith("loraplus_"), why)
    unsupported.update(kwargs)
    if refuse_rest(unsupported, args, conv, "glora", layout.title):
        return False
    put_kind(conv, module, "glora", preset, "GLoRAModule", layout.title)
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), put.pop("alpha"))
    why = "one GLoRAModule per fused Linear: a1, a2, b2 shared, b1 the parts' rows"
    put_targets(conv, module, layout, layers, why)
    put_blocks(conv, module, layout, layers, text_blocks)  # a preset file's entries' ranks and rank-0 blocks
    if bypass:
        put["bypass"] = True
    put_rest(conv, module, args, preset, text, put)
    return True

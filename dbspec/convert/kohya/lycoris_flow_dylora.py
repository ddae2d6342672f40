"""LyCORIS's lycoris.kohya `algo=dylora` with flux_train_network.py / sd3_train_network.py (lycoris-lora
4.1.3 lycoris/modules/dylora.py on kohya's Flux / SD3): [adapter] kind "dylora" (`dylora_form = "lycoris"`)
with `fused_projections = true`. lycoris_flux.py's map_lycoris_flow hands it the preset's layers.

DyLoraModule on a Linear holds `down_list` blocks (block_size x in) and `up_list` blocks (out x block_size);
each training forward draws one block b (Python's random, per module) and adds op(x, up[0..b] @ down[0..b] x
alpha / (b + 1)), the lower blocks detached, so block b alone trains. On kohya's fused Linears (Flux's
img_attn.qkv / txt_attn.qkv and the single blocks' linear1, SD3's attn.qkv) one module spans the stacked rows:
one draw and one down per fused Linear, the up blocks' rows the parts'. So diffusers' parts share the down
blocks and the draw and each keeps its rows of the up blocks (runtime/dylora.py tie_fused_dylora; dbspec
draws from the run's seeded generator, uniform as LyCORIS's, so a resume draws the same); the kohya_lora
export writes the down once and `lora_up` stacked under kohya's name, the LoRA layout LyCORIS saves, which
lycoris-lora loads back as LoConModules. The arguments as network.py's U-Net mapping (dylora.py
lycoris_dylora: `block_size` the unit, bypass_mode with one block per layer, the unread ones DBS405);
`module_dropout` DyLoraModule.forward's one `torch.rand(1)` per training forward of the fused module, which
its parts share (runtime/dylora.py FusedSkip: the first part called draws; DBS578 beside entries of other
algorithms, as on the U-Net). The SD3 patch convolution (presets full /
unet-only) at conv_dim / conv_alpha. A preset file (lycoris_flow_file.py): its DyLoRA entries' own dims,
alphas and block sizes are [[adapter.blocks]] / [[adapter.text_encoder_blocks]] of the adapter's kind, its
entries of other algorithms (LoCon, LoKr, LoHa, full, IA^3, Diag-OFT, GLoRA) blocks of their kind, each
fused Linear one module of its block's kind (runtime/prepare.py ties each kind's parts); LyCORIS's LoRA+
there raises the LoCon entries' `lora_up`, which dbspec's ratio would apply to DyLoRA's ups too (DBS403)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.dylora import lycoris_dylora
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    put_convs,
    put_kind,
    put_rest,
    put_targets,
    refuse_rest,
)


def map_flow_dylora(
    kwargs: dict[str, str],
    a: dict[str, Legacy],
    conv: Conversion,
    layout,
    preset: str,
    text_blocks: list[dict[str, Any]] = (),
) -> bool:
    """[adapter] for algo=dylora on kohya's Flux / SD3 (`layout`: lycoris_flux.py's LycorisLayout; a preset
    file's map entries: the layout's [[adapter.blocks]] and `text_blocks`, DyLoRA entries' own dims, alphas
    and block sizes, other algorithms' entries blocks of their kind); False when refused (reported)."""
    module, args, dim, alpha = a["network_module"], a["network_args"], a["network_dim"], a["network_alpha"]
    layers, text = layout.presets[preset]
    rank = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    network_dropout = a["network_dropout"]
    if network_dropout.value and float(network_dropout.value) and "dropout" not in kwargs:
        conv.ignored(network_dropout, "LyCORIS's DyLoraModule takes it (as `dropout`) and never reads it")
    put: dict[str, Any] = {}
    put_convs(kwargs, args, conv, put, layout, layers, rank, alpha.value)
    blocks = [] if layers == "none" else layout.targets(layers, True)[1]
    put["_blocks"], put["_text_blocks"] = list(blocks), list(text_blocks)  # lycoris_dylora checks their dims
    unsupported: dict[str, str] = {}
    lycoris_dylora(kwargs, put, unsupported, args, conv, rank)
    blocks, text_blocks = put.pop("_blocks"), put.pop("_text_blocks")
    if any(b.get("kind") == "lora" for b in (*blocks, *text_blocks)):  # LyCORIS raises their lora_up
        unsupported.update({k: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("loraplus_")]})
    why = "LyCORIS's LoRA+ raises the `lora_up` parameters, which DyLoraModule has not (its up_list)"
    ignore_args(kwargs, args, conv, lambda k: k.startswith("loraplus_"), why)
    unsupported.update(kwargs)
    if refuse_rest(unsupported, args, conv, "dylora", layout.title):
        return False
    put_kind(conv, module, "dylora", preset, "DyLoraModule", layout.title)
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))
    why = "one DyLoraModule per fused Linear: the down blocks and the draw shared, the up rows the parts'"
    put_targets(conv, module, layout, layers, why)  # a built-in preset's full paths: no rank-0 blocks
    for table, entries in (("blocks", blocks), ("text_encoder_blocks", text_blocks)):
        for index, block in enumerate(entries):
            note = conv.comment(module, block.pop("_why"))
            for key, value in block.items():
                conv.put(("adapter", table, index, key), value, note)
    put_rest(conv, module, args, preset, text, put)
    return True

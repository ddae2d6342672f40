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
`module_dropout` (one draw per fused module) is refused (DBS403). The SD3 patch convolution (presets full /
unet-only) at conv_dim / conv_alpha."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.dylora import lycoris_dylora


def map_flow_dylora(
    kwargs: dict[str, str], a: dict[str, Legacy], conv: Conversion, layout, preset: str
) -> bool:
    """[adapter] for algo=dylora on kohya's Flux / SD3 (`layout`: lycoris_flux.py's LycorisLayout); False
    when refused (reported)."""
    module, args, dim, alpha = a["network_module"], a["network_args"], a["network_dim"], a["network_alpha"]
    layers, text = layout.presets[preset]
    rank = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    if float(kwargs.get("module_dropout") or 0):
        conv.unsupported(
            args,
            f"module_dropout={kwargs['module_dropout']} with algo=dylora on {layout.title}'s fused Linears: "
            "one draw per fused module, which dbspec's parts would each draw",
        )
        return False
    network_dropout = a["network_dropout"]
    if network_dropout.value and float(network_dropout.value) and "dropout" not in kwargs:
        conv.ignored(network_dropout, "LyCORIS's DyLoraModule takes it (as `dropout`) and never reads it")
    put: dict[str, Any] = {}
    conv_targets = list(layout.convs.get(layers, ()))
    if conv_targets:  # the preset's convolutions (enable_conv): conv_dim / conv_alpha, LyCORIS's defaults
        put["conv_rank"] = int(float(kwargs.pop("conv_dim", "") or rank))
        put["conv_alpha"] = float(kwargs.pop("conv_alpha", "") or alpha.value)
        put["conv_targets"] = conv_targets
    for key in [k for k in ("conv_dim", "conv_alpha") if k in kwargs]:
        legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        conv.inert(legacy, "the blocks have no convolutions for it to adapt")
    unsupported: dict[str, str] = {}
    lycoris_dylora(kwargs, put, unsupported, args, conv, rank)
    put.pop("module_dropout", None)  # 0 (refused above otherwise)
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            "LyCORIS's LoRA+ raises the `lora_up` parameters, which DyLoraModule has not (its up_list)",
        )
    unsupported.update(kwargs)
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(
            args, f"network arguments dbspec does not express for algo=dylora on {layout.title}: {rest}"
        )
        return False
    why = conv.comment(
        module, f"algo=dylora, preset {preset}: LyCORIS's DyLoraModule on kohya's {layout.title}"
    )
    conv.put(("adapter", "kind"), "dylora", why)
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))
    targets, _blocks, note = layout.targets(layers, True)  # full paths: no rank-0 [[adapter.blocks]]
    if layers == "none":
        conv.put(("train", "denoiser"), False, conv.comment(module, note))
    else:
        conv.put(("adapter", "denoiser_targets"), targets, conv.comment(module, note))
        why = "one DyLoraModule per fused Linear: the down blocks and the draw shared, the up rows the parts'"
        conv.put(("adapter", "fused_projections"), True, conv.comment(module, why))
    conv.put(("adapter", "text_encoder_targets"), text, conv.comment(module, f"preset {preset} on CLIP"))
    for key, value in put.items():
        conv.put(("adapter", key), value, conv.comment(args))
    conv.record(module, "mapped", "adapter")
    if args.given:
        conv.record(args, "mapped", "adapter")
    return True

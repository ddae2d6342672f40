"""DyLoRA's network arguments into [adapter] kind = "dylora": kohya's `networks.dylora` (sd-scripts
networks/dylora.py: `unit`, `conv_dim` equal to network_dim, the convolutions at network_alpha) and LyCORIS's
`algo=dylora` (lycoris/modules/dylora.py: `block_size`, 4 unless given). kohya passes each "key=value" to the
network as a string."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.loraplus import loraplus

# networks/dylora.py DyLoRANetwork: every Linear and 1x1 Conv inside Transformer2DModel (U-Net) and
# CLIPAttention / CLIPMLP (text encoders); with conv_dim also every Linear and Conv2d inside ResnetBlock2D,
# Downsample2D and Upsample2D (3x3 convolutions, time_emb_proj, conv_shortcut), all at network_dim.
_UNET = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"]
_TEXT = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
_RESNET_LINEAR = ["time_emb_proj", "conv_shortcut"]
_CONVS = ["conv1", "conv2", "downsamplers.0.conv", "upsamplers.0.conv"]
# networks/dylora.py create_network reads these and nothing else (it ignores any other key).
_READS = (
    "conv_dim",
    "conv_alpha",
    "unit",
    "loraplus_lr_ratio",
    "loraplus_unet_lr_ratio",
    "loraplus_text_encoder_lr_ratio",
)


def kohya_dylora(args: Legacy, kwargs: dict[str, str], dim: int, alpha: float, conv: Conversion) -> bool:
    """networks.dylora into [adapter]: kind, targets, unit and convolutions; False when not expressible.
    Its forward (every rank, block b trained, x sqrt(rank / ((b + 1) unit))) is dylora_form "kohya";
    `kwargs`: the parsed network_args."""
    note = conv.comment(args)
    put: dict[str, Any] = {"kind": "dylora", "dylora_form": "kohya"}
    unit = int(kwargs.pop("unit", "") or 1)  # create_network: unit defaults to 1
    if dim % unit:
        conv.invalid(
            args.key, args.value, args.source, f"networks.dylora asserts network_dim ({dim}) % unit == 0"
        )
        return False
    put["unit"] = unit
    unet = list(_UNET)
    if "conv_dim" in kwargs:
        conv_dim = int(kwargs.pop("conv_dim"))
        if conv_dim != dim:
            conv.invalid(
                args.key,
                args.value,
                args.source,
                f"networks.dylora asserts conv_dim ({conv_dim}) == network_dim",
            )
            return False
        # DyLoRANetwork gives the ResNets' convolutions network_dim and network_alpha: conv_alpha is parsed
        # and never used
        put.update(conv_rank=dim, conv_alpha=alpha)
        unet += _RESNET_LINEAR
        if "conv_alpha" in kwargs:
            conv.ignored(
                Legacy(key=f"{args.key} conv_alpha", value=kwargs.pop("conv_alpha"), source=args.source),
                "networks.dylora scales its convolutions by network_alpha (conv_alpha parsed, never used)",
            )
    put["denoiser_targets"], put["text_encoder_targets"] = unet, list(_TEXT)
    # LoRA+ (DyLoRANetwork.prepare_optimizer_params): each lora_B block at lr x the ratio, networks.lora's
    # rule (the UNet's `loraplus_unet_lr_ratio or loraplus_lr_ratio`, the text encoders' likewise)
    unsupported: dict[str, str] = {}
    loraplus(kwargs, put, unsupported)
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        unsupported[key] = kwargs.pop(key)
    for key, value in kwargs.items():
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=value, source=args.source),
            "networks.dylora's create_network does not read it (it ignores arguments it does not know)",
        )
    for key, value in put.items():
        conv.put(("adapter", key), value, note if key != "kind" else conv.comment(args, "networks.dylora"))
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(args, f"network arguments dbspec does not express for DyLoRA: {rest}")
    elif args.given:
        conv.record(args, "mapped", "adapter")
    return True


def lycoris_dylora(
    kwargs: dict[str, str],
    put: dict[str, Any],
    unsupported: dict[str, str],
    args: Legacy,
    conv: Conversion,
    dim: int,
) -> None:
    """algo=dylora (lycoris/modules/dylora.py): network_dim / network_alpha and conv_dim / conv_alpha are its
    ranks and alphas (the generic mapping), `block_size` (4 unless given) its blocks; a rank that is not a
    multiple of it is DyLoraModule's AssertionError. DyLoraModule takes `dropout`, `rank_dropout`, `dora_wd`,
    `use_tucker`, `use_scalar` and `rs_lora` and never reads them (ignored). Its `module_dropout` skips the
    layer in a training forward; its bypass forward (`bypass_mode`) runs only with one block per layer (it
    views the drawn blocks as the whole rank), unscaled."""
    put["dylora_form"] = "lycoris"
    block = int(kwargs.pop("block_size", "") or 4)  # kohya.py: int(block_size or 4)
    conv_rank = put.get("conv_rank", 0)
    for key, rank in (("network_dim", dim), ("conv_dim", conv_rank)):
        if rank % block:
            conv.invalid(
                f"{args.key} block_size",
                block,
                args.source,
                f"LyCORIS's DyLoraModule asserts lora_dim % block_size == 0, and the {key} {rank} is not a "
                f"multiple of {block}",
            )
    put["unit"] = block
    for key in ("dropout", "rank_dropout", "dora_wd", "wd_on_output", "use_tucker", "use_scalar", "rs_lora"):
        if key in kwargs:
            conv.ignored(
                Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
                "LyCORIS's DyLoraModule takes it and never reads it",
            )
    module_dropout = float(kwargs.pop("module_dropout", "") or 0)  # kohya.py: float(... or 0.0)
    if module_dropout:
        put["module_dropout"] = module_dropout
    bypass = kwargs.pop("bypass_mode", "false")
    if str(bypass).lower() == "false":  # LyCORIS's str_bool
        return
    several = [
        f"{key} {rank}" for key, rank in (("network_dim", dim), ("conv_dim", conv_rank)) if rank > block
    ]
    if several:
        conv.invalid(
            f"{args.key} bypass_mode",
            bypass,
            args.source,
            f"LyCORIS's DyLoraModule crashes in training: with several blocks of block_size {block} "
            f"({', '.join(several)}) its bypass forward views the drawn blocks as the whole rank, which "
            "fails unless the last block is drawn",
        )
        return
    put["bypass"] = True

"""What lycoris_flow_dylora.py, lycoris_flow_glora.py and lycoris_flow_oft.py share: the leftover
network_args (unread ones, the unsupported rest), the preset's convolutions and the [adapter] puts of kind,
targets and fused_projections."""

from __future__ import annotations

import re

from collections.abc import Callable
from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.network_reads import unread_network_arg


def popped(args: Legacy, kwargs: dict[str, str], key: str) -> Legacy:
    """network_args' `key`, taken out of `kwargs`, as its own Legacy."""
    return Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)


def ignore_args(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, unread: Callable[[str], bool], why: str
) -> None:
    """Reports (DBS405) and takes out the network_args that `unread` picks."""
    for key in [k for k in kwargs if unread(k)]:
        conv.ignored(popped(args, kwargs, key), why)


def take_blocks_dora(kwargs: dict[str, str], blocks, text_blocks=()) -> None:
    """A GLoRA / DyLoRA network's dora_wd and wd_on_output, read (taken out of `kwargs`, no record, as
    network.py does on the U-Net) where a preset file's LoCon / LoHa / LoKr entries' blocks decompose:
    create_single_module hands them to every module, LoConModule, LohaModule and LokrModule decompose each
    fused Linear whole, GLoRAModule and DyLoraModule never read them (lycoris_maps._network_dora: the
    blocks' own `dora` / `dora_axis`). Elsewhere they stay for the caller's DBS405."""
    if any(b.get("dora") == "on" for b in (*blocks, *text_blocks)):
        kwargs.pop("dora_wd", None), kwargs.pop("wd_on_output", None)


def refuse_rest(rest: dict[str, str], args: Legacy, conv: Conversion, algo: str, title: str) -> bool:
    """Reports the network_args left over: those create_network never reads for `algo` ignored (DBS405,
    network_reads.py, as on SD; was DBS403), the others refused (DBS403); True when any was refused."""
    for key in list(rest):
        if unread := unread_network_arg(key, algo, algo, "lycoris.kohya"):
            conv.ignored(popped(args, rest, key), unread)
    if not rest:
        return False
    listed = ", ".join(f"{k}={v}" for k, v in rest.items())
    conv.unsupported(args, f"network arguments dbspec does not express for algo={algo} on {title}: {listed}")
    return True


def put_convs(
    kwargs: dict[str, str],
    args: Legacy,
    conv: Conversion,
    put: dict[str, Any],
    layout,
    layers: str,
    rank: int,
    alpha,
) -> None:
    """The preset's convolutions (enable_conv) at conv_dim / conv_alpha, LyCORIS's defaults network_dim /
    network_alpha, into `put`; conv_dim / conv_alpha without convolutions are inert."""
    conv_targets = list(layout.convs.get(layers, ()))
    if conv_targets:
        put["conv_rank"] = int(float(kwargs.pop("conv_dim", "") or rank))
        put["conv_alpha"] = float(kwargs.pop("conv_alpha", "") or alpha)
        put["conv_targets"] = conv_targets
    for key in [k for k in ("conv_dim", "conv_alpha") if k in kwargs]:
        conv.inert(popped(args, kwargs, key), "the blocks have no convolutions for it to adapt")


def put_kind(conv: Conversion, module: Legacy, algo: str, preset: str, cls: str, title: str) -> None:
    """[adapter] kind `algo` (LyCORIS's module class `cls` on kohya's `title`)."""
    why = conv.comment(module, f"algo={algo}, preset {preset}: LyCORIS's {cls} on kohya's {title}")
    conv.put(("adapter", "kind"), algo, why)


def put_targets(conv: Conversion, module: Legacy, layout, layers: str, fused_why: str) -> None:
    """The preset's denoiser targets as full paths (no [[adapter.blocks]]) with fused_projections (why:
    `fused_why`), or no denoiser training for layers "none"."""
    targets, _blocks, note = layout.targets(layers, True)
    if layers == "none":
        conv.put(("train", "denoiser"), False, conv.comment(module, note))
    else:
        conv.put(("adapter", "denoiser_targets"), targets, conv.comment(module, note))
        conv.put(("adapter", "fused_projections"), True, conv.comment(module, fused_why))


def put_blocks(conv: Conversion, module: Legacy, layout, layers: str, text_blocks=(), blocks=None) -> None:
    """A preset file's [[adapter.blocks]] (its map entries' own dims and the rank-0 blocks, layout.targets;
    `blocks`: the caller's form of them) and [[adapter.text_encoder_blocks]], each commented with why."""
    if blocks is None:
        blocks = layout.targets(layers, True)[1] if layers != "none" else []
    blocks = [dict(b) for b in blocks]
    for table, found in (("blocks", blocks), ("text_encoder_blocks", [dict(b) for b in text_blocks])):
        for index, block in enumerate(found):
            note = conv.comment(module, block.pop("_why"))
            for key, value in block.items():
                conv.put(("adapter", table, index, key), value, note)


def oft_conv_dim(
    kwargs: dict[str, str], layout, layers: str, lora_dim: int, refused: list[str]
) -> tuple[bool, list[str]]:
    """Diag-OFT / BOFT's conv_dim on the preset's convolutions: (a block at conv_dim's size is needed,
    put_conv_dim; the convolutions adapted: none at conv_dim 0, where LyCORIS builds none). A preset file's
    block reaching them first (was refused) is sized as create_single_module sizes the layer, its entry's
    dim or conv_dim (lycoris_maps._oft_blocks), so the conv_dim block after it changes nothing there;
    `refused` is kept for the callers' other reasons."""
    conv_dim = int(float(kwargs.get("conv_dim") or lora_dim))
    convs = list(layout.convs[layers])
    return conv_dim != lora_dim and conv_dim > 0, convs if conv_dim > 0 else []


def put_conv_dim(
    conv: Conversion, args: Legacy, size: Legacy, layout, layers: str, conv_targets: list[str]
) -> None:
    """conv_dim other than network_dim on the convolutions (SD3's 2x2 patch convolution): LyCORIS's
    create_single_module gives a Conv2d wider than 1x1 conv_lora_dim as its lora_dim, a block over them at
    that block size after put_blocks' (a preset file's block reaching them first sizes them alike)."""
    index = len(layout.targets(layers, True)[1]) if layers != "none" else 0
    note = conv.comment(args, "conv_dim: LyCORIS's block-size hint of the k x k convolutions")
    pattern = "^(?:" + "|".join(re.escape(t) for t in conv_targets) + ")$"
    conv.put(("adapter", "blocks", index, "pattern"), pattern, note)
    conv.put(("adapter", "blocks", index, "block_size"), int(float(size.value)), note)
    conv.record(size, "mapped", "adapter.blocks block_size")


def put_rest(
    conv: Conversion, module: Legacy, args: Legacy, preset: str, text, put: dict[str, Any], note: str = ""
) -> None:
    """The preset's CLIP targets, then `put`'s [adapter] values (commented with `note`), and the module and
    network_args mapped."""
    conv.put(("adapter", "text_encoder_targets"), text, conv.comment(module, f"preset {preset} on CLIP"))
    for key, value in put.items():
        conv.put(("adapter", key), value, conv.comment(args, note))
    record_mapped(conv, module, args)


def record_mapped(conv: Conversion, module: Legacy, args: Legacy) -> None:
    """network_module, and network_args where given, mapped into [adapter]."""
    conv.record(module, "mapped", "adapter")
    if args.given:
        conv.record(args, "mapped", "adapter")

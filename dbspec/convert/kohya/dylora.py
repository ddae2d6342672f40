"""DyLoRA's network arguments into [adapter] kind = "dylora": kohya's `networks.dylora` (sd-scripts
networks/dylora.py: `unit`, `conv_dim` equal to network_dim, the convolutions at network_alpha) and LyCORIS's
`algo=dylora` (lycoris/modules/dylora.py: `block_size`, 4 unless given). kohya passes each "key=value" to the
network as a string.

A file given with `--network_weights`: networks.dylora loads its `lora_down` / `lora_up` / `alpha` into every
layer (adapter.init_weights), and with `--dim_from_weights` builds its network from the file (each module at
its own rank and alpha, unit 1, network_args unread: `kohya_dylora_from_weights`); LyCORIS's DyLoraModule
names its weights up_list / down_list, so only each layer's `alpha` loads (`lycoris_dylora_alphas`)."""

from __future__ import annotations

import struct
from typing import Any

import attrs

from dbspec.compiler.lora_file import LoraFile, read_lora_file
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.alpha_zero import ZEROED
from dbspec.convert.kohya.entry_args import host_bypass_dropout
from dbspec.convert.kohya.dylora_preset_alphas import (
    PRESET_LAYERS,
    has_preset_ranks,
    loaded_alpha,
    preset_dylora_alphas,
    sd_layers,
)
from dbspec.convert.kohya.file_ranks import (
    TEXT_COMPONENTS,
    common_pair,
    per_module_text_blocks,
    sd_blocks,
    text_blocks,
)
from dbspec.convert.kohya.loraplus import loraplus
from dbspec.convert.kohya.targets import KOHYA_TEXT_TARGETS, KOHYA_UNET_TARGETS, RESNET_LINEAR
from dbspec.convert.kohya.weights_file import report_weights

# networks/dylora.py DyLoRANetwork: every Linear and 1x1 Conv inside Transformer2DModel (U-Net) and
# CLIPAttention / CLIPMLP (text encoders); with conv_dim also every Linear and Conv2d inside ResnetBlock2D,
# Downsample2D and Upsample2D (3x3 convolutions, time_emb_proj, conv_shortcut), all at network_dim.
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
    unet = list(KOHYA_UNET_TARGETS)
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
        unet += RESNET_LINEAR
        if "conv_alpha" in kwargs:
            conv.ignored(
                Legacy(key=f"{args.key} conv_alpha", value=kwargs.pop("conv_alpha"), source=args.source),
                "networks.dylora scales its convolutions by network_alpha (conv_alpha parsed, never used)",
            )
    put["denoiser_targets"], put["text_encoder_targets"] = unet, list(KOHYA_TEXT_TARGETS)
    # LoRA+ (DyLoRANetwork.prepare_optimizer_params): each lora_B block at lr x the ratio, networks.lora's
    # rule (the UNet's `loraplus_unet_lr_ratio or loraplus_lr_ratio`, the text encoders' likewise)
    unsupported: dict[str, str] = {}
    loraplus(kwargs, put, unsupported)  # its three keys; another loraplus_* is unread (was DBS403)
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
    network_dropout: Legacy | None = None,
) -> None:
    """algo=dylora (lycoris/modules/dylora.py): network_dim / network_alpha and conv_dim / conv_alpha are its
    ranks and alphas (the generic mapping), `block_size` (4 unless given) its blocks; a rank that is not a
    multiple of it is DyLoraModule's AssertionError. DyLoraModule takes `dropout`, `rank_dropout`, `dora_wd`,
    `use_tucker`, `use_scalar` and `rs_lora` and never reads them (ignored; in bypass_mode beside LoCon /
    LoHa / LoKr entries the `dropout`, else `network_dropout`, is theirs: entry_args.host_bypass_dropout).
    Its `module_dropout` skips the layer in a training forward; its bypass forward (`bypass_mode`) runs only
    with one block per layer (it views the drawn blocks as the whole rank), unscaled."""
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
    entries = [  # a preset file's map entries' dims (of DyLoRA layers: not another algorithm's, a `kind`)
        entry for entry in (*put.get("_blocks", ()), *put.get("_text_blocks", ())) if "kind" not in entry
    ]
    for entry in entries:  # each entry in its own block_size (`unit`), else the network's
        size = entry.get("unit", block)
        for key in ("rank", "conv_rank"):
            if entry.get(key, 0) % size:
                source = entry["_why"].split("`")[1]
                conv.invalid(
                    f"{args.key} preset {source}",
                    entry[key],
                    args.source,
                    f"LyCORIS's DyLoraModule asserts lora_dim % block_size == 0, and the preset file's "
                    f"`{source}` gives layers dim {entry[key]}, not a multiple of {size}",
                )
    # in bypass_mode beside LoCon / LoHa / LoKr entries its dropout is theirs (was DBS403)
    bypass = str(kwargs.get("bypass_mode", "false")).lower() != "false"  # (--network_dropout's too)
    host_bypass_dropout(kwargs, put, bypass, args, conv, network_dropout)
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
    network = str(bypass).lower() != "false"  # LyCORIS's str_bool
    # the layers that run the bypass forward: the network's (its own entries' bypass_mode off excepted) and
    # its own entries' with their own bypass_mode on (a block's `bypass`, lycoris_maps.own_bypass_switch)
    ranks = [("network_dim", dim, block, ""), ("conv_dim", conv_rank, block, "")] if network else []
    for entry in entries:  # a preset file's map entries: `<source>`'s dims, in its own block_size if given
        if entry.get("bypass", "on" if network else "off") == "off":
            continue
        size, source = entry.get("unit", block), entry["_why"].split("`")[1]
        ranks += [(f"the preset's `{source}` dim", entry.get("rank", 0), size, source)]
        ranks += [(f"the preset's `{source}` dim", entry.get("conv_rank", 0), size, source)]
    several = [(f"{key} {rank}", source) for key, rank, size, source in ranks if rank > size]
    if several:
        # the network's bypass_mode, else the entry whose own turns it on
        key, value = ("bypass_mode", bypass) if network else (f"preset {several[0][1]}.bypass_mode", True)
        several = [text for text, _ in several]
        conv.invalid(
            f"{args.key} {key}",
            value,
            args.source,
            f"LyCORIS's DyLoraModule crashes in training: with several blocks of block_size {block} "
            f"({', '.join(several)}) its bypass forward views the drawn blocks as the whole rank, which "
            "fails unless the last block is drawn",
        )
        return
    if network:
        put["bypass"] = True


def _read(weights: Legacy, paths, conv: Conversion, key: Legacy, what: str) -> LoraFile | None:
    """The --network_weights file, or None (`key` reported unsupported, naming why)."""
    local = paths.local(weights.value)
    try:
        if local is None:
            raise ValueError("a Windows path, not on this machine")
        return read_lora_file(local)
    except (ModelFileError, ValueError, OSError) as exc:
        if not report_weights(weights, local, exc, f"{what} come from this file", conv):
            conv.unsupported(key, f"{what} come from `{weights.value}`, which cannot be used: {exc}")
        return None


def kohya_dylora_from_weights(a: dict[str, Legacy], paths, conv: Conversion, original_names: bool) -> bool:
    """networks.dylora with --dim_from_weights (train_network.py calls create_network_from_weights instead of
    create_network): DyLoRANetwork(modules_dim=, modules_alpha=) builds one DyLoRAModule per module of the
    file at the module's rank (its lora_down's rows) and alpha (0: the rank), none elsewhere, scanning the
    U-Net's ResNet, Downsample2D and Upsample2D blocks too (their 3x3 convolutions where the file has them),
    always at unit 1 (the function passes none); network_args reach it as **kwargs it never reads (LoRA+
    included: only create_network calls set_loraplus_lr_ratio), and network_dim / network_alpha /
    network_dropout go to no network. The ranks and alphas are [[adapter.blocks]] /
    [[adapter.text_encoder_blocks]] (file_ranks.py). load_weights then loads the file: True when the caller
    should map it to adapter.init_weights, as without the flag."""
    module, weights, from_file = a["network_module"], a["network_weights"], a["dim_from_weights"]
    note = f"kohya --dim_from_weights: from {paths.name_of(weights.value)}"
    conv.put(("adapter", "kind"), "dylora", conv.comment(module, "networks.dylora"))
    conv.put(("adapter", "dylora_form"), "kohya", note)
    conv.put(("adapter", "unit"), 1, note + " (create_network_from_weights passes no unit: 1)")
    for key in ("network_dim", "network_alpha"):
        conv.reports.pop(key, None)  # mapped before, for create_network, which this flag skips
        if a[key].given:
            conv.inert(a[key], "--dim_from_weights takes the ranks and alphas from the file")
    args = a["network_args"]
    if args.value:
        conv.ignored(
            args,
            "with --dim_from_weights networks.dylora's create_network_from_weights takes network_args as "
            "**kwargs and reads none of them (unit, conv_dim, LoRA+ ratios included)",
        )
    if a["network_dropout"].value:
        conv.ignored(a["network_dropout"], "with --dim_from_weights train_network.py passes it to no network")
    file = _read(weights, paths, conv, from_file, "the ranks")
    if file is None:
        return False
    missing = [m.name for m in file.modules.values() if m.alpha is None]
    if missing:
        conv.invalid(
            from_file.key,
            True,
            from_file.source,
            f"`{weights.value}` has no alpha for `{missing[0]}`: networks.dylora's "
            "create_network_from_weights then replaces its alpha table by that module's rank "
            "(`modules_alpha = modules_dim[key]`) and fails at its next lookup in that int (TypeError)",
        )
        return False
    try:
        blocks = sd_blocks(file, original_names)
    except ValueError as exc:
        conv.unsupported(from_file, f"the ranks come from `{weights.value}`, which cannot be used: {exc}")
        return False
    linear = common_pair(file, prefixes=tuple(TEXT_COMPONENTS)) or common_pair(file)
    if linear is not None:
        conv.put(("adapter", "rank"), linear[0], note)
        conv.put(("adapter", "alpha"), float(linear[1]), note)
    convs = common_pair(file, conv=True)
    if convs is not None:
        conv.put(("adapter", "conv_rank"), convs[0], note)
        conv.put(("adapter", "conv_alpha"), float(convs[1]), note)
    # DyLoRANetwork scans Transformer2DModel and, built from weights, ResnetBlock2D / Downsample2D /
    # Upsample2D: their linears and 1x1 convolutions (time_emb_proj, conv_shortcut) by the file's names
    conv.put(("adapter", "denoiser_targets"), [*KOHYA_UNET_TARGETS, *RESNET_LINEAR], note)
    conv.put(("adapter", "text_encoder_targets"), list(KOHYA_TEXT_TARGETS), note)
    for index, block in enumerate(blocks):
        why = note + (": the modules it lacks get none" if block["pattern"] == "^" else ": its modules' rank")
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, why)
    for index, block in enumerate(per_module_text_blocks(file)):
        why = note + (": the modules it lacks get none" if block["pattern"] == "^" else ": its modules' rank")
        for key, value in block.items():
            conv.put(("adapter", "text_encoder_blocks", index, key), value, why)
    conv.record(from_file, "mapped", "adapter.rank, adapter.alpha, adapter.blocks")
    return True  # the caller maps the file to init_weights (load_weights)


def _f32(value: float) -> float:
    """The value as DyLoraModule's float32 alpha buffer holds it once the file's alpha is copied in."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def alpha_file(weights: Legacy, paths, conv: Conversion) -> LoraFile | None:
    """The --network_weights file whose alphas alone start a LyCORIS DyLoRA network, or None: unreadable, or
    refused where the preset file's map entries give layers their own dim / alpha (blocks of a rank already;
    rank-0 blocks, the layers a preset file's walk leaves out, such as T5-XXL's, stay first: the file's
    alpha blocks follow them, next_block)."""
    tables = (("adapter", "blocks"), ("adapter", "text_encoder_blocks"))
    if any(k[:2] in tables and k[-1] == "rank" and v != 0 for k, (v, _) in conv.values.items()):
        conv.unsupported(
            weights,
            "the preset file's map entries give layers their own dim / alpha, and LyCORIS then loads the "
            "file's alphas into them: dbspec takes per-layer ranks from one source",
        )
        return None
    return read_alphas(weights, paths, conv)


def read_alphas(weights: Legacy, paths, conv: Conversion) -> LoraFile | None:
    """The --network_weights file whose alphas alone load into a LyCORIS DyLoRA network, or None (reported:
    not a readable .safetensors file)."""
    return _read(weights, paths, conv, weights, "LyCORIS's DyLoRA alphas")


def file_alpha(alpha: float, rank: int, bypass: bool) -> float:
    """The float32 alpha a DyLoraModule trains at once LyCORIS loads the file's `alpha`: LyCORIS copies it
    into the buffer after the build (which alone reads 0 as the rank), so a 0 scales the layer's update by 0
    (output the base's, gradients exactly 0, saved ΔW 0): it stays 0 (the layer not built, or built scaled
    by 0 where its module_dropout still draws: unbuilt_at_zero) unless `bypass`, where its forward never
    reads it and it is the layer's `rank` (loaders read alpha 0 as the rank)."""
    own = _f32(alpha)
    return float(rank) if own == 0 and bypass else own


def unbuilt_at_zero(block: dict[str, Any], drawn: bool = False) -> dict[str, Any]:
    """A file-alpha block whose (conv_)alpha is 0 as one that builds no layer: rank (conv_rank) 0; with
    `drawn` (module_dropout outside bypass_mode: the zeroed layer still draws its torch.rand(1)) the layer
    built with its update scaled by 0 (`zero_scale`), at its rank."""
    out = dict(block)
    zero = out.get("alpha") == 0 or out.get("conv_alpha") == 0
    if zero and drawn:
        out["zero_scale"] = True
        return out
    if out.get("alpha") == 0:
        out.update(rank=0, alpha=1.0)
    if out.get("conv_alpha") == 0:
        out.update(conv_rank=0, conv_alpha=1.0)
    return out


def zero_drawn(conv: Conversion) -> bool:
    """Whether a layer LyCORIS scales by 0 still draws: the network's module_dropout outside bypass_mode
    (DyLoraModule.forward's torch.rand(1) before the update; its bypass forward never reads the alpha)."""
    value = lambda key, default: conv.values.get(("adapter", key), (default, ""))[0]  # noqa: E731
    return bool(value("module_dropout", 0.0)) and not value("bypass", False)


def zero_note(block: dict[str, Any], note: str, drawn: bool = False) -> str:
    if block.get("alpha") != 0 and block.get("conv_alpha") != 0:
        return note
    if drawn:
        return (
            f"{note}; alpha 0 there: LyCORIS scales the layer's update by 0 (output the base's, gradients 0) "
            "but its module_dropout still draws: built, scaled by 0"
        )
    return (
        f"{note}; alpha 0 there: LyCORIS scales the layer's update by 0 (output the base's, gradients 0), "
        "so dbspec builds none (kohya's saved file holds it with lora_up 0)"
    )


def next_block(conv: Conversion, table: str) -> int:
    """The index after the converted [[adapter.<table>]] entries (a preset file's rank-0 blocks)."""
    return 1 + max((k[2] for k in conv.values if k[:2] == ("adapter", table)), default=-1)


SAME_ALPHAS = (
    "LyCORIS's DyLoRA loads only the file's alphas (its weights are up_list / down_list, so "
    "load_state_dict(strict=False) takes none of the file's lora_down / lora_up), and they are the "
    "network's: the run starts from a fresh init"
)


def lycoris_dylora_alphas(weights: Legacy, paths, conv: Conversion, original_names: bool) -> None:
    """LyCORIS algo=dylora with --network_weights: LycorisNetworkKohya.load_weights is
    load_state_dict(strict=False), and DyLoraModule keeps its weights in up_list / down_list, so the file's
    lora_down / lora_up load nowhere and only each layer's `alpha` buffer takes the file's value (float32);
    get_weight scales by that buffer, so it is the alpha the layer trains and saves at. Layers the file lacks
    (or without its alpha) keep network_alpha / conv_alpha; the file's modules of layers the network does not
    adapt are ignored. The run starts from a fresh init; the layers whose alpha differs are named in
    [[adapter.blocks]] / [[adapter.text_encoder_blocks]] at the adapter's rank and the file's alpha."""
    found = conv.facts.get(PRESET_LAYERS)
    if found is not None and has_preset_ranks(conv):  # the entries' dims, the file's alphas
        file = read_alphas(weights, paths, conv)
        if file is None:  # an alpha of 0: scaled by 0 (zero_drawn) or not built
            return
        locate = sd_layers(found, original_names)
        if not preset_dylora_alphas(file, weights, conv, locate, file_alpha, zero_drawn(conv)):
            conv.inert(weights, SAME_ALPHAS)
        return
    file = alpha_file(weights, paths, conv)
    if file is None:
        return
    value = lambda key, default: conv.values.get(("adapter", key), (default, ""))[0]  # noqa: E731
    rank, alpha = value("rank", 4), float(value("alpha", 1.0))
    conv_rank, conv_alpha = value("conv_rank", 0), float(value("conv_alpha", 1.0))
    bypass = bool(value("bypass", False))
    # a network alpha of 0 builds DyLoraModule's buffer as the int lora_dim: the file's alpha truncated
    ints = {
        key: key in conv.facts.get(ZEROED, set()) for key in (("adapter", "alpha"), ("adapter", "conv_alpha"))
    }
    differ = {}
    for m in file.modules.values():
        if m.alpha is None or (m.conv and not conv_rank):  # no alpha; no 3x3 layer adapted there
            continue
        raw = loaded_alpha(m.alpha, ints[("adapter", "conv_alpha" if m.conv else "alpha")])
        own = file_alpha(raw, conv_rank if m.conv else rank, bypass)
        if own != (conv_alpha if m.conv else alpha):
            # grouped by alpha alone; rank 0 keeps alpha 0 (pair_of reads it as the rank)
            differ[m.name] = attrs.evolve(m, rank=int(own != 0), alpha=own)
    if not differ:
        conv.inert(weights, SAME_ALPHAS)
        return
    only = LoraFile(path=file.path, modules=differ)
    try:
        denoiser = sd_blocks(only, original_names)[:-1]  # no rank-0 block: the rest keep the network's
    except ValueError as exc:
        conv.unsupported(weights, f"LyCORIS's DyLoRA alphas come from `{weights.value}`: {exc}")
        return
    text = text_blocks(only)[:-1]
    note = (
        f"LyCORIS --network_weights: {paths.name_of(weights.value)}'s alpha (only its alphas load into "
        "DyLoraModule)"
    )
    drawn = zero_drawn(conv)
    for index, block in enumerate(denoiser, start=next_block(conv, "blocks")):
        out = {"pattern": block["pattern"], "rank": rank, "alpha": alpha}
        if "conv_rank" in block:  # a 3x3 convolution's block
            out.update(conv_rank=conv_rank, conv_alpha=block["conv_alpha"])
        else:
            out.update(alpha=block["alpha"], conv_rank=conv_rank, conv_alpha=conv_alpha)
        for key, item in unbuilt_at_zero(out, drawn).items():
            conv.put(("adapter", "blocks", index, key), item, zero_note(out, note, drawn))
    for index, block in enumerate(text, start=next_block(conv, "text_encoder_blocks")):
        out = {**block, "rank": rank}
        for key, item in unbuilt_at_zero(out, drawn).items():
            conv.put(("adapter", "text_encoder_blocks", index, key), item, zero_note(out, note, drawn))
    conv.record(
        weights,
        "mapped",
        "adapter.blocks, adapter.text_encoder_blocks",
        "LyCORIS's DyLoRA loads only the file's alphas (its weights are up_list / down_list): the run starts "
        "from a fresh init, the file's layers at its alphas",
    )

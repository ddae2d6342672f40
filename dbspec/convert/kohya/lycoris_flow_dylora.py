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
its parts share (runtime/fused.py FusedSkip: the first part called draws; DBS578 beside entries of other
algorithms, as on the U-Net). The SD3 patch convolution (presets full /
unet-only) at conv_dim / conv_alpha. A preset file (lycoris_flow_file.py): its DyLoRA entries' own dims,
alphas and block sizes are [[adapter.blocks]] / [[adapter.text_encoder_blocks]] of the adapter's kind, its
entries of other algorithms (LoCon, LoKr, LoHa, full, IA^3, Diag-OFT, GLoRA) blocks of their kind, each
fused Linear one module of its block's kind (runtime/prepare.py ties each kind's parts); LyCORIS's LoRA+
there raises the LoCon entries' `lora_up` only, as dbspec's ratio on a LyCORIS-form DyLoRA adapter raises
its LoCon blocks' `lora_B` alone (runtime/prepare.py raises_dylora_ups)."""

from __future__ import annotations

from typing import Any

import re

import attrs

from dbspec.compiler.lora_file import LoraFile
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.alpha_zero import ZEROED
from dbspec.convert.kohya.dylora import (
    SAME_ALPHAS,
    alpha_file,
    file_alpha,
    lycoris_dylora,
    next_block,
    read_alphas,
    unbuilt_at_zero,
    zero_drawn,
    zero_note,
)
from dbspec.convert.kohya.dylora_preset_alphas import (
    FLOW_PRESET_MODULES,
    has_preset_ranks,
    loaded_alpha,
    preset_dylora_alphas,
)
from dbspec.convert.kohya.file_ranks import flow_blocks, flow_paths, text_blocks
from dbspec.convert.kohya.loraplus import loraplus
from dbspec.util.targets import targeted
from dbspec.families import family_spec, lycoris_text_prefixes
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    put_convs,
    put_kind,
    put_rest,
    put_targets,
    refuse_rest,
    take_blocks_dora,
)
from dbspec.convert.kohya.entry_args import entries_lokr_args, entries_scalar_rs_lora
from dbspec.convert.kohya.oft_entries import entries_constraint


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
    put: dict[str, Any] = {}
    put_convs(kwargs, args, conv, put, layout, layers, rank, alpha.value)
    blocks = [] if layers == "none" else layout.targets(layers, True)[1]
    put["_blocks"], put["_text_blocks"] = list(blocks), list(text_blocks)  # lycoris_dylora checks their dims
    unsupported: dict[str, str] = {}
    take_blocks_dora(kwargs, blocks, text_blocks)  # its LoCon / LoHa / LoKr blocks' own dora (read)
    entries_constraint(kwargs, [*blocks, *text_blocks], args, conv)  # its Diag-OFT / BOFT blocks' alpha
    entries_lokr_args(kwargs, [*blocks, *text_blocks], args, conv)  # its LoKr blocks' split
    entries_scalar_rs_lora(kwargs, [*blocks, *text_blocks], args, conv)  # its LoCon / LoHa / LoKr blocks'
    lycoris_dylora(kwargs, put, unsupported, args, conv, rank, network_dropout)
    given = network_dropout.value and float(network_dropout.value) and "dropout" not in kwargs
    if given and "dropout" not in put:  # (else its LoCon / LoHa / LoKr entries': host_bypass_dropout)
        conv.ignored(network_dropout, "LyCORIS's DyLoraModule takes it (as `dropout`) and never reads it")
    blocks, text_blocks = put.pop("_blocks"), put.pop("_text_blocks")
    if any(b.get("kind") == "lora" for b in (*blocks, *text_blocks)):  # LyCORIS raises their lora_up only:
        loraplus(kwargs, put, unsupported)  # the LoCon blocks' lora_B (runtime/prepare.py lora_up_ids)
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


def flow_dylora_alphas(weights: Legacy, paths, conv: Conversion, family: str) -> None:
    """--network_weights with algo=dylora on kohya's Flux / Chroma / SD3: LycorisNetworkKohya.load_weights is
    load_state_dict(strict=False), DyLoraModule's weights are up_list / down_list, so of the file only each
    module's `alpha` buffer loads (float32; get_weight scales by it, the saved file holds it), as on the
    U-Net (dylora.py lycoris_dylora_alphas). A module is named as kohya's Flux / MMDiT names it, one per fused
    Linear: the file's alpha goes to every diffusers part of that Linear (file_ranks.flow_paths), so the
    parts stay one module at one alpha. The layers whose alpha differs from network_alpha (the patch
    convolution's from conv_alpha) are [[adapter.blocks]] / [[adapter.text_encoder_blocks]] at the network's
    rank and the file's alpha; the file's modules of layers the network does not adapt load nowhere (ignored);
    the run starts from a fresh init. As on the U-Net: a network_alpha / conv_alpha of 0 builds the buffer as
    the int lora_dim, so the file's alpha loads truncated toward zero; a file alpha of 0 leaves the layer
    unbuilt, or with module_dropout (its torch.rand(1) still drawn) built scaled by 0 (zero_scale: every
    part of a fused Linear, which share the one draw); a preset file whose entries give layers their own
    dim / alpha: each file layer at its entry's dim and the file's alpha (dylora_preset_alphas.py, the
    parts of a fused Linear one group)."""
    modules = conv.facts.get(FLOW_PRESET_MODULES)
    if modules is not None and has_preset_ranks(conv):  # the entries' dims, the file's alphas
        file = read_alphas(weights, paths, conv)
        if file is None:
            return
        locate = lambda name: modules.get(name, [])  # noqa: E731
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
    zeroed = conv.facts.get(ZEROED, set())  # alpha 0 to the rank: DyLoraModule's int64 buffer truncates
    ints = (("adapter", "alpha") in zeroed, ("adapter", "conv_alpha") in zeroed)
    unet, convs = _differing_unet(file, family, value, alpha, conv_alpha, bypass, ints)
    t5 = any(k in conv.values for k in (("train", "t5"), ("train", "t5_idle")))  # a preset's T5 modules
    text = _differing_text(file, family, value, alpha, t5, bypass, ints[0])
    if not (unet or convs or text):
        conv.inert(weights, SAME_ALPHAS)
        return
    blocks = flow_blocks(LoraFile(path=file.path, modules=unet), family, lycoris=True)[0][:-1]
    blocks = [{**b, "rank": rank, "conv_rank": conv_rank, "conv_alpha": conv_alpha} for b in blocks]
    for name, module in convs.items():  # SD3's patch convolution (presets full / unet-only)
        (path,) = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)[2]
        pattern = f"^{re.escape(path)}$"
        blocks.append({"pattern": pattern, "rank": rank, "alpha": alpha, "conv_rank": conv_rank})
        blocks[-1]["conv_alpha"] = module.alpha
    components = dict(zip(lycoris_text_prefixes(family), family_spec(family).text_encoder_names))
    text_tables = text_blocks(LoraFile(path=file.path, modules=text), components)[:-1]
    note = (
        f"LyCORIS --network_weights: {paths.name_of(weights.value)}'s alpha (only its alphas load into "
        "DyLoraModule; a fused Linear's alpha on all its parts)"
    )
    drawn = zero_drawn(conv)  # an alpha of 0 with module_dropout: built scaled by 0, as it still draws
    for table, entries in (("blocks", blocks), ("text_encoder_blocks", text_tables)):
        for index, block in enumerate(entries, start=next_block(conv, table)):  # after the rank-0 ones
            out = {**block, "rank": rank}
            for key, item in unbuilt_at_zero(out, drawn).items():
                conv.put(("adapter", table, index, key), item, zero_note(out, note, drawn))
    conv.record(
        weights,
        "mapped",
        "adapter.blocks, adapter.text_encoder_blocks",
        "LyCORIS's DyLoRA loads only the file's alphas (its weights are up_list / down_list): the run starts "
        "from a fresh init, the file's layers at its alphas",
    )


def _adapted(path: str, targets) -> bool:
    return targeted(path, targets or ())


def _differing_unet(
    file: LoraFile,
    family: str,
    value,
    alpha: float,
    conv_alpha: float,
    bypass: bool,
    ints: tuple[bool, bool] = (False, False),
):
    """The file's denoiser modules on layers the network adapts whose float32 alpha (dylora.file_alpha: 0,
    or in `bypass` the rank; truncated where `ints` says the Linears' / convolutions' buffer is int64) is
    not the network's: ({name: Linear module at rank 1 and that alpha}, {name: the patch convolution's})."""
    linears, convs = {}, {}
    targets, conv_targets = value("denoiser_targets", ()), value("conv_targets", ())
    for m in file.modules.values():
        if m.alpha is None or not m.name.startswith("lora_unet_"):
            continue
        found = flow_paths(family, m.name.removeprefix("lora_unet_"), lycoris=True)
        if found is None:  # no module of kohya's model dbspec places: the network has none either
            continue
        blocks, index, children = found
        full = [f"{blocks}.{index}.{c}" if blocks else c for c in children]
        if not all(_adapted(p, conv_targets if m.conv else targets) for p in full):
            continue  # a layer the network does not adapt: load_state_dict(strict=False) ignores it
        raw = loaded_alpha(m.alpha, ints[1] if m.conv else ints[0])
        own = file_alpha(raw, value("conv_rank", 0) if m.conv else value("rank", 4), bypass)
        if own != (conv_alpha if m.conv else alpha):
            # by alpha alone; rank 0 keeps alpha 0 (pair_of reads it as the rank)
            (convs if m.conv else linears)[m.name] = attrs.evolve(m, rank=int(own != 0), alpha=own)
    return linears, convs


def _differing_text(
    file: LoraFile,
    family: str,
    value,
    alpha: float,
    t5: bool = False,
    bypass: bool = False,
    truncated: bool = False,
):
    """The file's text-encoder modules (LyCORIS's lora_te<N>_ prefixes) of the encoders the network adapts
    (T5-XXL's where `t5`: a preset file's T5 modules, train.t5) whose float32 alpha (dylora.file_alpha;
    toward zero where `truncated`: an int64 buffer) is not the network's, at rank 1 and that alpha."""
    clip_keys = iter(("text_encoder_targets", "text_encoder_2_targets"))
    prefixes = []
    for prefix, encoder in zip(lycoris_text_prefixes(family), family_spec(family).text_encoders):
        key = "t5_targets" if encoder.tokenizer_class.startswith("T5") else next(clip_keys)
        # the second CLIP's targets default to the first's (spec/model.py); T5's are train.t5's default
        if (
            value(key, ())
            or (key == "text_encoder_2_targets" and value("text_encoder_targets", ()))
            or (key == "t5_targets" and t5)
        ):
            prefixes.append(prefix)
    prefixes = tuple(prefixes)
    if not prefixes:
        return {}
    out = {}
    for m in file.modules.values():
        if m.alpha is None or not m.name.startswith(prefixes):
            continue
        own = file_alpha(loaded_alpha(m.alpha, truncated), value("rank", 4), bypass)
        if own != alpha:
            out[m.name] = attrs.evolve(m, rank=int(own != 0), alpha=own)
    return out

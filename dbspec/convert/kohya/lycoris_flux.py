"""LyCORIS's lycoris.kohya network with flux_train_network.py (lycoris-lora 4.1.3 lycoris/kohya.py, on kohya's
library/flux_models.py Flux) into [adapter]: algo=lora / locon, lokr, loha, full (`_full`), ia3 (`_ia3`),
diag-oft (lycoris_flow_oft.py), boft (lycoris_flow_boft.py), glora (lycoris_flow_glora.py), dylora
(lycoris_flow_dylora.py), tlora (lycoris_flow_tlora.py); the other algos are refused (DBS403).

What LyCORIS builds on kohya's Flux (checked in a scratch run of lycoris-lora 4.1.3's create_network on
kohya's Flux with flux_train_network's text-encoder list [CLIP-L, T5-XXL]):

- presets full, full-lin, attn-mlp (lycoris/config.py: DoubleStreamBlock and SingleStreamBlock among the
  classes): every Linear of the double blocks (img_mod.lin, img_attn.qkv, img_attn.proj, img_mlp.0,
  img_mlp.2 and the txt_ ones) and of the single blocks (linear1, linear2, modulation.lin):
  networks.lora_flux's set. No embedder or final layer (their classes, MLPEmbedder and LastLayer, are in no
  list; the names conv_in, time_embedding.* match nothing). CLIP-L's CLIPAttention and CLIPMLP Linears.
- unet-only, unet-transformer-only: the same denoiser Linears, no text-encoder module.
- attn-only: its class SelfAttention is kohya's double-block attention, so the double blocks'
  img_attn.qkv / proj and txt_attn.qkv / proj only (the single blocks have no SelfAttention module); CLIP-L's
  CLIPAttention only.
- unet-convblock-only: no module at all; ia3: none on Flux either (its names are module-path prefixes).
- T5-XXL: never (its T5Block / T5Attention classes are in no list, MT5Block is), train_t5xxl or not.

The modules are named as kohya's own (`lora_unet_double_blocks_0_img_attn_qkv`, `lora_te1_...`), one module
on each fused Linear; LoConModule on a Linear is `org + (up @ down) x * alpha / rank` (kaiming-uniform down,
zero up), so algo=lora on Flux is networks.lora_flux's network with shared down-projections
(`adapter.fused_projections = true`) and its file the lora_down / lora_up / alpha layout kohya writes, which
lycoris-lora's loader loads back onto kohya's Flux (checked in the scratch run). LoKr and LoHa on a fused
Linear are one Kronecker / Hadamard delta of the whole fused weight, whose rows dbspec's diffusers Flux holds
in separate parts: `kind = "lokr"` / `"loha"` with `fused_projections = true` (runtime/fused_lokr.py: the
factors shared by the parts, each its rows of the Kronecker product; runtime/fused_loha.py: the parts' own
w1_a / w2_a rows, w1_b / w2_b shared), written in LyCORIS's layout under kohya's Flux names, which
lycoris-lora's create_network_from_weights loads back onto kohya's Flux with the trained outputs (scratch
run: 6e-8). LoKr / LoHa have no [[adapter.blocks]]: the final layer (and attn-only's single blocks) stay out
through full-path targets.

LoConModule's switches on a fused Linear: `rs_lora` (LoHa's and LoKr's too) scales by alpha / sqrt(rank), the
plain alpha x sqrt(rank) (LoKr's full factors: sqrt(rank), adapter.rank_stabilized); `use_scalar` is one
trained scalar for the whole fused weight (runtime/fused.py ties the parts'); `dora_wd` decomposes the fused
weight per output row (wd_on_output), so each part keeps its rows' magnitudes (the Flux / SD3 kohya writers
stack the parts' dora_scale). LokrModule's and LohaModule's alike:
use_scalar one scalar per fused layer, dora_wd per output row (runtime/fused_lokr.py: each part's class under
the switches'; the LyCORIS export stacks the parts' dora_scale), module_dropout (and LoHa's rank_dropout) one
draw per fused layer (runtime/fused_lycoris_dropout.py). --network_weights and --scale_weight_norms: model.py
`_map_lycoris_flow`.

What differs on SD3 (sd3_train_network.py) is one LycorisLayout (lycoris_sd3.py); the mapping below is
shared."""

from __future__ import annotations

import math
import re

from collections.abc import Callable
from typing import Any

import attrs

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.idle_text import put_lycoris_t5
from dbspec.convert.kohya.lora_flux import _FINAL, _SINGLE, NUM_DOUBLE, NUM_SINGLE
from dbspec.convert.kohya.lycoris_flow_file import flow_preset_file
from dbspec.convert.kohya.lycoris_flow_whole import (
    FUSED_WHY,
    entries_rank_dropout,
    map_entries_rank_dropout,
    put_kind_blocks,
    refuse_entries_rank_dropout,
)
from dbspec.convert.kohya.lycoris_maps import BYPASS_BLOCKS
from dbspec.convert.kohya.lycoris_flow_args import put_rest, record_mapped, take_blocks_dora
from dbspec.convert.kohya.dylora_preset_alphas import FLOW_PRESET_MODULES
from dbspec.convert.kohya.lycoris_flow_dylora import map_flow_dylora
from dbspec.convert.kohya.lycoris_flow_glora import map_flow_glora
from dbspec.convert.kohya.lycoris_flow_tlora import map_flow_tlora
from dbspec.convert.kohya.lycoris_flow_boft import map_flow_boft
from dbspec.convert.kohya.lycoris_flow_oft import map_flow_diag_oft
from dbspec.convert.kohya.loraplus import loraplus
from dbspec.convert.kohya.network_reads import shadowed_constraint, unread_network_arg
from dbspec.convert.kohya.network import (
    BYPASS_DORA,
    KOHYA_TEXT_TARGETS,
    _lycoris_full,
    _lokr_rank_dropout_on_gpu,
    _lycoris_rs_lora,
    _rank_dropout_scale_unread,
    _str_bool,
    entries_tucker,
    TUCKER_NAMES,
    lokr_entries_rank_dropout,
    lycoris_tucker,
    network_drops,
    parse_network_args,
    rank_dropout_readers,
)
from dbspec.convert.kohya.entry_args import entries_lokr_args, entries_scalar_rs_lora, host_bypass_dropout
from dbspec.convert.kohya.oft_entries import entries_constraint, entries_rescaled
from dbspec.families import family_spec

CLIP_ATTENTION = ["q_proj", "k_proj", "v_proj", "out_proj"]
# kohya's SelfAttention (double blocks' img_attn / txt_attn) in diffusers' names
_DOUBLE_ATTENTION = [
    *("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0"),
    *("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out"),
]
# Flux: preset -> (every block Linear or the double-block attention only, CLIP-L's targets)
_PRESETS: dict[str, tuple[str, list[str]]] = {
    "full": ("all", list(KOHYA_TEXT_TARGETS)),
    "full-lin": ("all", list(KOHYA_TEXT_TARGETS)),
    "attn-mlp": ("all", list(KOHYA_TEXT_TARGETS)),
    "unet-only": ("all", []),
    "unet-transformer-only": ("all", []),
    "attn-only": ("attention", CLIP_ATTENTION),
}
_NOTHING = {
    "unet-convblock-only": "its classes (ResnetBlock2D, Downsample2D, Upsample2D) and names (conv_in, "
    "conv_out) match nothing in kohya's Flux or CLIP-L",
    "ia3": "its names (to_k, to_v, ff.net.2; k_proj, v_proj, mlp.fc2) are patterns matched from the start of "
    "each module path, which match nothing in kohya's Flux or CLIP-L",
}


@attrs.frozen(kw_only=True)
class LycorisLayout:
    """What differs between the flow models LyCORIS's kohya network is converted on."""

    title: str  # the family's title in messages
    script: str  # kohya's training script
    presets: dict[str, tuple[str, list[str]]]  # preset -> (denoiser layers, CLIP targets)
    nothing: dict[str, str]  # presets that build no module: why (invalid for kohya)
    refused: dict[str, str]  # presets that build modules dbspec has no form for: why (DBS403)
    # (denoiser layers, LoKr / LoHa) -> (denoiser targets, [[adapter.blocks]], note); "none": no module
    targets: Callable[[str, bool], tuple[list[str], list[dict[str, Any]], str]]
    # denoiser layers -> the convolutions LyCORIS's LoCon adapts there (conv_dim, conv_alpha; diffusers names)
    convs: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    # denoiser layers -> the affine-less LayerNorms train_norm's NormModule fails on there (_switches)
    bare_norms: dict[str, str] = attrs.field(factory=dict)


# algos refused on Flux / SD3: why (none now: T-LoRA converts, one SVD per fused Linear)
_REFUSED_ALGOS: dict[str, str] = {}
# network_args LyCORIS reads that change nothing on the blocks' Linears
_INERT = {
    "conv_dim": "the blocks have no convolutions for it to adapt",
    "conv_alpha": "the blocks have no convolutions for it to adapt",
    "use_tucker": "it changes only k x k convolutions",
    "use_cp": "it changes only k x k convolutions",
    "use_conv_cp": "it changes only k x k convolutions",
    "disable_conv_cp": "it changes only k x k convolutions",
    "wd_on_output": "it acts only with dora_wd",
    "rank_dropout_scale": "it acts only with rank_dropout",
    "verbose": "it only logs the modules",
}


# algos a preset file converts for with its targets alone: the network's own dims on every layer it reaches
_WHOLE_ONLY = {
    "ia3": "IA3Module",
    "diag-oft": "DiagOFTModule",
    "boft": "ButterflyOFTModule",
    "glora": "GLoRAModule",
}


def _rotations_or_scales(kwargs, a, conv, layout, preset, algo, family, preset_file, text_blocks) -> bool:
    """[adapter] for algo=ia3, diag-oft or boft; False when refused (reported)."""
    if algo == "ia3":
        return _ia3(kwargs, a, conv, layout, preset, text_blocks)
    if algo == "diag-oft":
        return map_flow_diag_oft(kwargs, a, conv, layout, preset, text_blocks)
    return map_flow_boft(
        kwargs,
        a,
        conv,
        layout,
        preset,
        chroma=family == "chroma",
        file=preset_file,
        text_blocks=text_blocks,
    )


def _t5_of_kind(a: dict[str, Legacy], conv: Conversion, preset: str, algo: str, t5_file: bool) -> bool:
    """A preset file's T5-XXL modules of algo ia3, diag-oft, boft, glora, dylora or tlora, trained: dbspec's
    T5 adapter of that kind (train.t5; was DBS403), the T5 Linears the file leaves out at rank 0 (its
    text-encoder blocks); a --network_weights file's T5 modules load into them (init_weights, was DBS403;
    DyLoRA: only its alphas, lycoris_flow_dylora.flow_dylora_alphas). True (the mapping stands)."""
    if t5_file:
        module = {**_WHOLE_ONLY, "dylora": "DyLoraModule", "tlora": "TLoraModule"}[algo]
        why = conv.comment(a["network_module"], f"preset {preset}: LyCORIS's {module} on T5-XXL")
        put_lycoris_t5(a, conv, why)
    return True


def _off(value: str) -> bool:
    """LyCORIS's str_bool: only "false" (any case) is off; "" too is on."""
    return str(value).lower() == "false"


def map_lycoris_flow(
    a: dict[str, Legacy], conv: Conversion, layout: LycorisLayout, paths=None, family: str | None = None
) -> bool:
    """[adapter] for lycoris.kohya with the layout's script; False when dbspec cannot express it. `paths`
    reads a preset file (lycoris_flow_file.py)."""
    module, args = a["network_module"], a["network_args"]
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    algo = (kwargs.pop("algo", "lora") or "lora").lower()
    if algo not in (
        *("lora", "locon", "lokr", "loha", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora"),
    ):
        why = _REFUSED_ALGOS.get(algo, "")
        conv.unsupported(
            args,
            f"algo={algo}: with {layout.script} dbspec converts LyCORIS's algo=lora / locon, lokr, loha, "
            f"full, ia3, diag-oft, boft, glora, dylora and tlora only{why}",
        )
        return False
    shadowed_constraint(kwargs, args, conv)  # a `constraint` beside its deprecated `constrain`, which wins
    lokr = algo in ("lokr", "loha")  # LyCORIS's LoKr / LoHa on the fused layers (one module each)
    preset = kwargs.pop("preset", "full") or "full"
    if preset in layout.nothing:
        conv.invalid(
            f"{args.key} preset",
            preset,
            args.source,
            f"LyCORIS's preset {preset} builds no module on {layout.title}: {layout.nothing[preset]}",
        )
        return False
    if preset in layout.refused:
        conv.unsupported(args, f"preset={preset} on {layout.title}: {layout.refused[preset]}")
        return False
    if not _switches(kwargs, a, args, conv, layout, preset, algo):
        return False
    text_blocks: list[dict[str, Any]] = []  # a preset file's CLIP dims
    text_2: list[str] | None = None  # a preset file's CLIP-G layers where they are not CLIP-L's
    t5_file = False  # a preset file's T5-XXL modules train
    exclude: list[str] = []  # IA^3's, Diag-OFT's, BOFT's layers the targets take and the file leaves out
    why = ""
    hosted = ""  # a BOFT network converted as its entries' network: what the adapter's kind says
    if family == "chroma" and preset in layout.presets:  # the built-in presets' classes on kohya's Chroma:
        layout = attrs.evolve(  # its blocks' Linears, and no CLIP-L one (flux_utils' dummy has none)
            layout,
            presets={name: (layers, []) for name, (layers, _clip) in layout.presets.items()},
            targets=lambda layers, lokr: _flux_targets(layers, lokr, "chroma"),
        )
    preset_file = preset not in layout.presets
    if preset_file:  # a preset file: lycoris_flow_file.py
        file = flow_preset_file(preset, algo, a, paths, conv, family, layout.title)
        if file is not None and file.host:  # a Diag-OFT / BOFT network's LoCon / LoHa / LoKr entries'
            # network, its own layers `diag-oft` / `boft` blocks (oft_entries.oft_network_host; was DBS403)
            hosted = f"algo={algo}: its preset file's {file.host} entries' kind, its own layers {algo} blocks"
            algo = file.host
            lokr = algo in ("lokr", "loha")
            if _off(kwargs.get("rescaled", "")):  # the OFT blocks' rescaled off, as the network's (on: their
                # blocks' `rescaled`, _file_rescaled)
                legacy = Legacy(key=f"{args.key} rescaled", value=kwargs.pop("rescaled"), source=args.source)
                conv.inert(legacy, "off")
        if file is not None and algo not in ("diag-oft", "boft"):
            _file_rescaled(kwargs, file, args, conv)
        if file is None or (
            algo != "lokr"
            and lokr_entries_rank_dropout(kwargs, (*file.blocks, *file.text_blocks), args, conv)
        ):  # kohya stops first (DBS402, as on SD)
            return False
        if _entries_rank_dropout(kwargs, file, args, conv, algo):
            return False
        if entries_rank_dropout(kwargs, file, args, conv, algo):  # a full / IA^3 network's entries'
            return False
        if not _file_train_norm(kwargs, file, args, conv, layout, algo):
            return False
        text_blocks, text_2, t5_file = file.text_blocks, file.text_2, file.t5
        conv.facts[FLOW_PRESET_MODULES] = file.modules  # a DyLoRA alpha file: lycoris_flow_dylora.py
        if algo in ("ia3", "diag-oft", "boft"):  # their blocks have no rank 0: the leading ones `exclude`
            lead = next((i for i, b in enumerate(file.blocks) if b.get("rank", 1)), len(file.blocks))
            exclude, file = (
                [b["pattern"] for b in file.blocks[:lead]],
                file._replace(blocks=file.blocks[lead:]),
            )
            why = f"the targets' layers the preset file {preset} builds no {_WHOLE_ONLY[algo]} on"
            if t5_file:  # T5-XXL's Linears the file leaves out (lycoris_flow_file._t5_left): `exclude`d too
                lead = next((i for i, b in enumerate(text_blocks) if b.get("rank", 1)), len(text_blocks))
                exclude += _full_excluded([], text_blocks[:lead])
                text_blocks = text_blocks[lead:]
        layers = "blocks+patch" if file.convs else "all" if file.denoiser else "none"
        title = "Chroma" if family == "chroma" else layout.title
        note = f"the layers LyCORIS builds for the preset file on kohya's {title}"
        layout = attrs.evolve(
            layout,
            presets={preset: (layers, file.text)},
            targets=lambda _layers, _lokr: (file.denoiser, file.blocks, note),
            convs={"blocks+patch": tuple(file.convs)},
        )
    if algo in ("full", "ia3"):  # the network's use_tucker, which their modules never read: SD3's patch
        # entry's block's `tucker`, set with their blocks (lycoris_maps.network_tucker; on Flux / Chroma no
        # k x k layer: left to their own handling, DBS405)
        entries_tucker(kwargs, {"_blocks": layout.targets(layout.presets[preset][0], True)[1]}, args, conv)
    if algo in ("ia3", "diag-oft", "boft"):
        done = _rotations_or_scales(kwargs, a, conv, layout, preset, algo, family, preset_file, text_blocks)
        if done and exclude:  # lycoris_flow_file.py's rank-0 blocks: the final layer's proj_out target
            conv.put(("adapter", "exclude"), exclude, conv.comment(args, why))
        return done and _t5_of_kind(a, conv, preset, algo, t5_file)
    dim, alpha = a["network_dim"], a["network_alpha"]
    rank = dim.value if dim.value is not None else 4
    if algo == "full":
        return _full(kwargs, a, args, conv, layout, preset, text_blocks, t5_file)
    if algo in ("glora", "dylora"):  # the network's use_tucker, which their modules never read: the patch
        # convolution's LoCon / LoHa / LoKr entry's block's `tucker` on SD3 (on Flux / Chroma no k x k layer)
        layers = layout.presets[preset][0]
        _mixed_patch_tucker(kwargs, args, conv, layout.targets(layers, True)[1], layout.convs, layers, algo)
    if algo == "glora":
        done = map_flow_glora(kwargs, a, conv, layout, preset, text_blocks)
        return done and _t5_of_kind(a, conv, preset, algo, t5_file)
    if algo == "dylora":
        done = map_flow_dylora(kwargs, a, conv, layout, preset, text_blocks)
        return done and _t5_of_kind(a, conv, preset, algo, t5_file)
    if algo == "tlora":  # one SVD per fused Linear (lycoris_flow_tlora.py)
        done = map_flow_tlora(kwargs, a, conv, layout, preset, text_blocks)
        return done and _t5_of_kind(a, conv, preset, algo, t5_file)
    if not _dora_wd(kwargs, args, conv, algo):
        return False
    bypass_text = kwargs.get("bypass_mode", "false")
    entries = (*file.blocks, *file.text_blocks) if preset_file else ()
    drops = network_drops(kwargs, a["network_dropout"])  # (before _dropouts takes them)
    if lokr and not _lokr_dropouts(kwargs, a["network_dropout"], args, conv, algo, entries):
        return False
    if not lokr and not _dropouts(kwargs, a["network_dropout"], args, conv):
        return False
    if preset_file and str(bypass_text).lower() != "false":  # LyCORIS's str_bool
        _bypass_blocks(
            Legacy(key=f"{args.key} bypass_mode", value=bypass_text, source=args.source), file, conv, drops
        )
    layers, text = layout.presets[preset]
    patch_tucker = _patch_tucker(layout.targets(layers, lokr)[1], layout.convs.get(layers, ()))
    kind = algo if lokr else "lora"
    new = _mixed_patch_tucker(kwargs, args, conv, layout.targets(layers, lokr)[1], layout.convs, layers, kind)
    if layers in layout.convs and not _convs(kwargs, a, args, conv, layout, layers, algo, patch_tucker):
        return False
    if new is not None:  # the adapter's kind's patch module: its block at the adapter's conv values
        new.update({k: conv.values[("adapter", k)][0] for k in ("conv_rank", "conv_alpha")})
        new.update(rank=rank, alpha=float(alpha.value))
    if layers == "none" and a["network_train_unet_only"].value:
        conv.invalid(
            f"{args.key} preset",
            preset,
            args.source,
            f"with --network_train_unet_only LyCORIS's preset {preset} builds no module that trains on "
            f"{layout.title} (none on the denoiser): kohya's optimizer gets an empty parameter list",
        )
        return False
    form = {"lokr": "LoKr", "loha": "LoHa"}.get(algo, "LoCon")
    said = hosted or f"algo={algo}, preset {preset}"
    why = conv.comment(module, f"{said}: LyCORIS's {form} on kohya's {layout.title}")
    conv.put(("adapter", "kind"), algo if lokr else "lora", why)
    conv.mapped(dim, ("adapter", "rank"), rank)
    conv.mapped(alpha, ("adapter", "alpha"), float(alpha.value))
    targets, blocks, note = layout.targets(layers, lokr)
    if layers == "none":
        conv.put(("train", "denoiser"), False, conv.comment(module, note))
    else:
        conv.put(("adapter", "denoiser_targets"), targets, conv.comment(module, note))
    conv.put(("adapter", "text_encoder_targets"), text, conv.comment(module, f"preset {preset} on CLIP"))
    if t5_file:  # a preset file's T5-XXL modules, trained: T5's adapter (its ranks in text_encoder_blocks)
        put_lycoris_t5(a, conv, conv.comment(module, f"preset {preset}: LyCORIS's {form} on T5-XXL"))
        if not lokr and layout.title != "SD3":  # LoKr / LoHa exports are LyCORIS's whatever
            why = "LyCORIS names T5-XXL lora_te2_ (the second encoder kohya hands it; lora_flux: lora_te3_)"
            conv.put(("adapter", "kohya_names"), "lycoris", conv.comment(module, why))
    if text_2 is not None:  # a preset file adapting other layers in SD3's CLIP-G than in its CLIP-L
        conv.put(
            ("adapter", "text_encoder_2_targets"), text_2, conv.comment(module, f"preset {preset} on CLIP-G")
        )
    if layers != "none":
        conv.put(
            ("adapter", "fused_projections"),
            True,
            conv.comment(
                module,
                f"one {form} module (one {'Kronecker' if algo == 'lokr' else 'Hadamard'} update) per fused "
                "Linear"
                if lokr
                else "one LoCon module (one down-projection) per fused Linear",
            ),
        )
    if any(b.get("dora") == "on" for b in (*blocks, *text_blocks)):  # an entry's own weight_decompose
        # the network's wd_on_output=False: those modules' one magnitude per input column of the fused
        # weight, the parts sharing it (lycoris_dora.tie_fused_doras); with dora_wd _dora_wd maps it
        if _off(kwargs.get("wd_on_output", "true")) and _off(kwargs.get("dora_wd", "false")):
            legacy = Legacy(
                key=f"{args.key} wd_on_output", value=kwargs.pop("wd_on_output"), source=args.source
            )
            note = "a preset map entry's weight_decompose on fused Linears, per input column of each"
            conv.mapped(legacy, ("adapter", "dora_axis"), "input", note=note)
        if not lokr and ("adapter", "dora_form") not in conv.values:  # LoConModule's, per output row
            why = (
                "a preset map entry's own weight_decompose: LoConModule's decomposition of its fused Linears"
            )
            conv.put(("adapter", "dora_form"), "lycoris", conv.comment(module, why))
    _block_size(kwargs, args, conv, algo, [*blocks, *text_blocks])
    entries_constraint(kwargs, [*blocks, *text_blocks], args, conv)  # its Diag-OFT / BOFT blocks' alpha
    entries_lokr_args(kwargs, [*blocks, *text_blocks], args, conv)  # its LoKr blocks' split
    for index, block in enumerate(blocks):
        block_note = conv.comment(module, block.pop("_why"))
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, block_note)
    for index, block in enumerate(text_blocks):
        block_note = conv.comment(module, block.pop("_why"))
        for key, value in block.items():
            conv.put(("adapter", "text_encoder_blocks", index, key), value, block_note)
    put: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    if lokr:
        _lokr_args(kwargs, put, args, conv, algo)
    else:
        loraplus(kwargs, put, unsupported)  # LyCORIS's LoRA+: `lora_up` parameters at rate x ratio
    if "use_scalar" in kwargs:
        text = kwargs.pop("use_scalar")
        if _off(text):
            conv.inert(Legacy(key=f"{args.key} use_scalar", value=text, source=args.source), "off")
        else:  # LoConModule's / LokrModule's / LohaModule's trained scalar from 0 (the factor it would zero
            put["scalar"] = True  # random): one per fused Linear, the parts' tied (runtime/fused.py)
    # rs_lora: alpha / sqrt(rank), the plain alpha x sqrt(rank); LokrModule's full factors sqrt(rank)
    _lycoris_rs_lora(kwargs, algo if lokr else "lora", rank, float(alpha.value or 0), put, unsupported)
    for key, value in put.items():
        conv.put(("adapter", key), value, conv.comment(args))
    _inert_or_unsupported(kwargs, args, conv, unsupported, kind, algo)
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(
            args,
            f"network arguments dbspec does not express for LyCORIS on {layout.title}: {rest} (dbspec maps "
            "algo, preset, conv_dim, conv_alpha, rs_lora and the LoRA+ ratios there; dropouts and the other "
            "switches off)",
        )
        return False
    record_mapped(conv, module, args)
    return True


def _switches(
    kwargs: dict[str, str],
    a: dict[str, Legacy],
    args: Legacy,
    conv: Conversion,
    layout,
    preset: str,
    algo: str,
) -> bool:
    """LyCORIS's network-wide switches (str_bool: only "false" is off), the same for every algo, as
    lycoris-lora 4.1.3 builds them on kohya's models (scratch runs of create_network on kohya's
    library/flux_models.py double and single blocks and sd3_models.MMDiTBlock, transformers' CLIP-L and
    T5-XXL):

    - `rescaled`: only the OFT / BOFT modules read it (lycoris_flow_oft.py, lycoris_flow_boft.py); LoCon,
      LoKr, LoHa, Full, IA^3, GLoRA and DyLoRA take it and never do: inert (with a preset file left for its
      Diag-OFT / BOFT entries' blocks, _file_rescaled).
    - `train_norm`: a NormModule on each module with "Norm" in its class name inside the preset's classes.
      Flux's QKNorm / RMSNorm and SD3's RMS q/k norms (no `weight` with `_norm`) get one that is "not
      supported" (no parameter, the layer's own forward) and CLIP's CLIPAttention / CLIPMLP hold no norm, so
      attn-only (and SD3's attn-only, no MMDiT module) changes nothing: inert. Flux's img_norm1 / img_norm2 /
      txt_norm1 / txt_norm2 / pre_norm and SD3's norm1 / norm2 are LayerNorms without affine parameters:
      NormModule gives them w_norm / b_norm and its make_weight reads the LayerNorm's `weight`, None, so the
      first training forward raises AttributeError: invalid (DBS402). A preset file: the norms its walk
      reaches decide alike (_file_train_norm).
    - `train_t5xxl`: no T5 class is in LyCORIS's lists (MT5Block is), so no T5-XXL module is built (a preset
      file's T5 modules train whether it is set or not: lycoris_flow_file.py); kohya's
      script then flags T5-XXL as trained (its post_process_network reads network.train_t5xxl), which
      changes no value: none of T5's parameters is in the optimizer, train_network.py sets every text
      encoder's train / eval mode alike (train() for all with gradient checkpointing), and accelerate's
      prepare only wraps T5's forward in the autocast it already runs under: inert; but the script raises
      ValueError when text-encoder outputs are cached: invalid (DBS402).

    False when invalid or refused."""
    from dbspec.convert.kohya.train import text_outputs_cached

    built_in = preset in layout.presets
    layers = layout.presets[preset][0] if built_in else ""
    oft = algo in ("diag-oft", "boft")  # they read `rescaled` (lycoris_flow_oft.py, lycoris_flow_boft.py)
    read = ("train_norm", "train_t5xxl") if oft else ("rescaled", "train_norm", "train_t5xxl")
    for key in [k for k in read if k in kwargs]:
        value = kwargs.pop(key)
        legacy = Legacy(key=f"{args.key} {key}", value=value, source=args.source)
        if _off(value):
            conv.inert(legacy, "off")
        elif key == "rescaled" and not built_in:
            kwargs[key] = value  # the file's Diag-OFT / BOFT entries decide (_file_rescaled)
        elif key == "rescaled":
            conv.inert(legacy, _RESCALED_UNREAD)
        elif key == "train_norm" and not built_in:
            kwargs[key] = value  # the norms the file reaches decide (_file_train_norm)
        elif key == "train_norm" and layers in layout.bare_norms:
            conv.invalid(
                legacy.key,
                value,
                args.source,
                f"LyCORIS's NormModule on kohya's {layout.title} {layout.bare_norms[layers]} (LayerNorms "
                "without weight or bias) reads their weight, None: kohya's first training step raises "
                "AttributeError",
                help="drop train_norm, or use preset attn-only",
            )
            return False
        elif key == "train_norm":
            conv.inert(
                legacy,
                f"preset {preset}'s classes hold no norm NormModule supports on {layout.title} or CLIP "
                "(QKNorm / RMSNorm: no parameter, the layer's own forward)",
            )
        else:
            cached = text_outputs_cached(a)
            if cached is not None:
                conv.invalid(
                    cached.key,
                    True,
                    cached.source,
                    f"{layout.script} raises ValueError when T5-XXL is flagged as trained "
                    f"({legacy.key}): its text-encoder outputs cannot be cached",
                    help="drop cache_text_encoder_outputs (and _to_disk), or train_t5xxl",
                )
                return False
            conv.inert(
                legacy,
                "LyCORIS builds no T5-XXL module (no T5 class is in its lists); kohya's T5-XXL then only "
                "counts as trained, which changes no value"
                if built_in
                else "a preset file's T5-XXL modules train whether it is set or not (T5-XXL encodes every "
                "step); kohya's T5-XXL then only counts as trained, which changes no value",
            )
    return True


def _file_train_norm(kwargs: dict[str, str], file, args: Legacy, conv: Conversion, layout, algo: str) -> bool:
    """`train_norm` with a preset file: create_single_module gives each module with "Norm" in its class name
    that the file's walk reaches a NormModule (lycoris/modules/norms.py). QKNorm and RMSNorm (no `_norm`
    method) are "not supported": no parameter, the layer's own forward, and so is T5-XXL's T5LayerNorm (a
    weight, no `_norm`: lycoris-lora 4.1.3 warns "not supported in Norm algo"). The blocks' and the final
    layer's LayerNorms have no weight or bias (elementwise_affine=False): its make_weight reads None and
    kohya's first training step raises AttributeError (DBS402). CLIP's LayerNorms are affine: NormModule
    trains an offset of their weight and bias, at the network's multiplier, with the CLIP modules:
    `[adapter] text_encoder_norms` (runtime/norm_offsets.py), whatever the algo (lora / locon, lokr, loha,
    full, dylora, ia3, diag-oft, boft, glora; the adapter's module_dropout theirs too; a rank_dropout BOFT,
    DyLoRA and GLoRA outside bypass_mode never read the offsets' alone, `norm_rank_dropout`, was DBS403;
    Diag-OFT's, IA^3's and full's adapters carry it; T-LoRA's too, TLoraModule never reading it), SD3's
    CLIP-G its own list where it reaches other
    LayerNorms than CLIP-L (`text_encoder_2_norms`; CLIP Linears adapted or not: the offsets alone train
    CLIP), the network's dropouts drawn as NormModule draws them. False when refused."""
    if "train_norm" not in kwargs:
        return True
    legacy = Legacy(key=f"{args.key} train_norm", value=kwargs.pop("train_norm"), source=args.source)
    bare = [path for component, path, cls in file.norms if component == "denoiser" and cls == "LayerNorm"]
    clip = [path for c, path, cls in file.norms if c == "clip" and cls == "LayerNorm"]
    t5 = [path for _, path, cls in file.norms if cls == "T5LayerNorm"]
    t5_note = (
        f"; its NormModules on T5-XXL's {len(t5)} T5LayerNorm(s) (e.g. {t5[0]}) are not supported by "
        "LyCORIS (no `_norm` method: no parameter, the layer's own forward), so T5's norms stay as they are"
        if t5
        else ""
    )
    if bare:
        conv.invalid(
            legacy.key,
            legacy.value,
            legacy.source,
            f"the preset file reaches {len(bare)} LayerNorm(s) of kohya's {layout.title} without weight or "
            f"bias (e.g. {bare[0]}); LyCORIS's NormModule reads their weight, None: kohya's first training "
            "step raises AttributeError",
            help="drop train_norm, or keep the file's classes and names off the blocks' norms",
        )
        return False
    if not clip:
        conv.inert(
            legacy,
            "the preset file reaches no norm NormModule trains (QKNorm / RMSNorm: no parameter, the layer's "
            f"own forward){t5_note}"
            if file.norms
            else "the preset file reaches no norm",
        )
        return True
    # beside these kinds the offsets draw the adapter's module_dropout (the kind's modules' own draw); a
    # rank_dropout BOFT's, DyLoRA's or GLoRA's default forward never reads is the offsets' alone
    # (adapter.norm_rank_dropout; was DBS403; the file's entries of other kinds drawing it too:
    # _entries_rank_dropout made it GLoRA's adapter rank_dropout, which the offsets default to, or refused it)
    rate = float(kwargs.get("rank_dropout") or 0)
    alone = _unread_rank_dropout(kwargs, algo)
    note = f"LyCORIS's NormModule on the {len(clip)} CLIP LayerNorm(s) the file reaches{t5_note}"
    conv.mapped(legacy, ("adapter", "text_encoder_norms"), list(file.clip_norms[0]), note)
    if len(set(file.clip_norms)) > 1:  # SD3's CLIP-G reaches other LayerNorms than CLIP-L: its own list
        conv.put(("adapter", "text_encoder_2_norms"), list(file.clip_norms[1]), note + " (CLIP-G's)")
    entries = conv.values.get(("adapter", "rank_dropout"))
    if algo in ("dylora", "tlora") and entries and not rate:  # _entries_rank_dropout made it the
        # adapter's (its entries'): the NormModules draw it too, the DyLoRA / T-LoRA adapter's
        # norm_rank_dropout (its default 0), as on SD (network._block_rank_dropout; was DBS403)
        why = f"LyCORIS's NormModules draw it beside the preset file's entries; its {algo} modules never"
        conv.put(("adapter", "norm_rank_dropout"), entries[0], conv.comment(legacy, why))
    if rate and alone:
        dropped = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
        unread = "only in bypass_mode (off here)" if algo == "glora" else "never"
        why = f"LyCORIS's NormModules draw it; its {algo} modules read it {unread}"
        conv.mapped(dropped, ("adapter", "norm_rank_dropout"), rate, why)
    return True


def _unread_rank_dropout(kwargs: dict[str, str], algo: str) -> bool:
    """Whether `algo`'s own modules never read the network's rank_dropout: BOFT, DyLoRA, T-LoRA, GLoRA
    outside bypass_mode (LyCORIS's str_bool)."""
    return algo in ("boft", "dylora", "tlora") or (
        algo == "glora" and _off(kwargs.get("bypass_mode", "false"))
    )


def _entries_rank_dropout(kwargs: dict[str, str], file, args: Legacy, conv: Conversion, algo: str) -> bool:
    """The network's rank_dropout on a BOFT / DyLoRA / GLoRA / T-LoRA network (outside bypass_mode: their
    own modules never read it) whose preset file gives some layers LoCon, LoHa, LoKr, full or Diag-OFT
    modules (or an entry's own bypass_mode), which LyCORIS hands it too and which draw it: dbspec draws no
    rank dropout on blocks of another kind than the adapter's (DBS403; was DBS405, "never read"). A GLoRA
    network's, a DyLoRA one's and a T-LoRA one's without train_norm are the adapter's rank_dropout (was
    DBS403), its entries drawing it as their modules do, each fused Linear one module's mask
    (map_entries_rank_dropout, as on SD 1.x); a BOFT network's stays refused (its adapter has no
    rank_dropout). A DyLoRA one's with train_norm too (was DBS403): its NormModules draw it as well, the
    adapter's norm_rank_dropout (_file_train_norm), as on SD; a T-LoRA one's with train_norm alike.
    True when refused."""
    if not float(kwargs.get("rank_dropout") or 0) or not _unread_rank_dropout(kwargs, algo):
        return False
    if algo in ("glora", "dylora", "tlora"):
        return map_entries_rank_dropout(kwargs, file, args, conv, algo)
    return refuse_entries_rank_dropout(kwargs, file, args, conv, algo)


def _block_size(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, algo: str, blocks: list[dict]
) -> None:
    """create_network's `block_size`, which it hands every module and only DyLoraModule reads: the unit of a
    preset file's DyLoRA entries that give none (lycoris_maps._blocks wrote it into their blocks), else
    ignored (DBS405)."""
    if "block_size" not in kwargs:
        return
    if any(b.get("kind") == "dylora" for b in blocks):
        kwargs.pop("block_size")  # mapped with network_args (record_mapped)
        return
    legacy = Legacy(key=f"{args.key} block_size", value=kwargs.pop("block_size"), source=args.source)
    conv.ignored(legacy, unread_network_arg("block_size", algo, algo, "lycoris.kohya"))


_RESCALED_UNREAD = "only LyCORIS's OFT / BOFT modules read it, not this algo's"


def _file_rescaled(kwargs: dict[str, str], file, args: Legacy, conv: Conversion) -> None:
    """The network's `rescaled` (on; _switches left it) on a network of another algorithm than Diag-OFT /
    BOFT with a preset file: its Diag-OFT / BOFT entries' blocks' `rescaled` (oft_entries.entries_rescaled,
    lycoris_maps._blocks; was DBS403), inert where the file gives no such entry (no other module class reads
    it)."""
    entries_rescaled(kwargs, [*file.blocks, *file.text_blocks], args, conv)
    if "rescaled" in kwargs:
        legacy = Legacy(key=f"{args.key} rescaled", value=kwargs.pop("rescaled"), source=args.source)
        conv.inert(legacy, _RESCALED_UNREAD)


def _inert_or_unsupported(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, unsupported: dict, kind: str, algo: str
) -> None:
    """The network arguments left: those that change nothing on the blocks' Linears inert (_INERT), those
    create_network never reads for `kind` ignored (network_reads.py, as on SD: a typo, a network-level
    weight_decompose, constraint outside OFT; was DBS403), the others into `unsupported`."""
    for key, value in kwargs.items():
        legacy = Legacy(key=f"{args.key} {key}", value=value, source=args.source)
        unread = unread_network_arg(key, kind, algo, "lycoris.kohya")
        if key in _INERT:
            conv.inert(legacy, _INERT[key])
        elif unread:
            conv.ignored(legacy, unread)
        else:
            unsupported[key] = value


def _full(
    kwargs: dict[str, str],
    a: dict[str, Legacy],
    args: Legacy,
    conv: Conversion,
    layout,
    preset: str,
    text_blocks: list[dict[str, Any]] = (),
    t5_file: bool = False,
) -> bool:
    """algo=full (lycoris/modules/full.py): FullModule trains a copy of each fused Linear's weight and bias;
    its diff's rows are the parts' own, so a copy per diffusers part (`kind = "full"`, no sharing) trains the
    same and the kohya_lora export stacks the parts' diffs under kohya's name (runtime/lycoris_export.py).
    The LoCon targets by full paths (no [[adapter.blocks]]); network_dim / network_alpha and the switches
    FullModule never reads are inert; its module_dropout and rank_dropout are the adapter's, one draw and one
    row mask per fused Linear with `fused_projections` (_full_dropouts; was DBS403); bypass_mode is invalid
    (network.py's _lycoris_full). A preset file's layers the targets take but LyCORIS builds no module on
    (rank-0 blocks: the single blocks' linear2 beside Flux's final layer, T5-XXL's Linears it leaves out)
    are `exclude`d; its T5-XXL modules (`t5_file`) train.t5's full copies. False when refused."""
    layers, text = layout.presets[preset]
    module = a["network_module"]
    if layers in layout.convs:  # the preset's convolutions (enable_conv): FullModule's copy of each
        # create_network's int(conv_dim or network_dim): 0 builds no convolution module, else the rank is
        # never read
        dim = a["network_dim"].value if a["network_dim"].value is not None else 4
        where = ", ".join(layout.convs[layers])
        if int(kwargs.get("conv_dim", dim) or dim):
            note = conv.comment(args, f"LyCORIS's full algo on {where} too (the preset's enable_conv)")
            conv.put(("adapter", "conv_targets"), list(layout.convs[layers]), note)
        for key in [k for k in ("conv_dim", "conv_alpha") if k in kwargs]:
            legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
            conv.inert(legacy, f"FullModule has no rank or alpha (conv_dim 0 only leaves out {where})")
    put: dict[str, Any] = {}
    unsupported: dict[str, str] = {}
    drawn = _full_dropouts(kwargs, args, conv)
    blocks = layout.targets(layers, True)[1] if layers != "none" else []
    take_blocks_dora(kwargs, blocks, text_blocks)  # its LoCon / LoHa / LoKr entries' blocks' own dora (read)
    entries_constraint(kwargs, [*blocks, *text_blocks], args, conv)  # its Diag-OFT / BOFT blocks' alpha
    entries_lokr_args(kwargs, [*blocks, *text_blocks], args, conv)  # its LoKr blocks' split
    entries_scalar_rs_lora(kwargs, [*blocks, *text_blocks], args, conv)  # its LoCon / LoHa / LoKr blocks'
    _lycoris_full(kwargs, "full", False, put, unsupported, args, conv, a["network_dropout"], False)
    for key in [k for k in ("dropout", "factor", "decompose_both", "full_matrix") if k in kwargs]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            "LyCORIS's FullModule never reads it",
        )
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            "LyCORIS's LoRA+ raises the rate of the `lora_up` parameters, which algo=full has not",
        )
    dropout = a["network_dropout"]
    if dropout.value and float(dropout.value):
        conv.ignored(dropout, "LyCORIS's FullModule never applies its dropout")
    _inert_or_unsupported(kwargs, args, conv, unsupported, "full", "full")
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(
            args, f"network arguments dbspec does not express for algo=full on {layout.title}: {rest}"
        )
        return False
    why = conv.comment(module, f"algo=full, preset {preset}: LyCORIS's FullModule on kohya's {layout.title}")
    conv.put(("adapter", "kind"), "full", why)
    for legacy in (a["network_dim"], a["network_alpha"]):
        if legacy.given:
            conv.inert(legacy, "LyCORIS's full algo has no rank or alpha")
    targets, blocks, note = layout.targets(layers, True)  # LoKr's: full paths, rank-0 blocks
    exclude = _full_excluded(blocks, list(text_blocks))
    if isinstance(exclude, str):
        conv.unsupported(args, f"algo=full with the preset file on {layout.title}: {exclude}")
        return False
    if layers == "none":
        conv.put(("train", "denoiser"), False, conv.comment(module, note))
    else:
        conv.put(("adapter", "denoiser_targets"), targets, conv.comment(module, note))
    mixed = put_kind_blocks(conv, module, blocks, text_blocks)  # a preset file's entries of other algos
    if (drawn or mixed) and layers != "none":  # a fused Linear is one FullModule: one draw, one mask
        why = "one FullModule per fused Linear: its parts share the module_dropout draw and rank_dropout mask"
        conv.put(("adapter", "fused_projections"), True, conv.comment(module, FUSED_WHY if mixed else why))
    if t5_file:  # a preset file's T5-XXL modules, trained: T5's full copies
        put_lycoris_t5(a, conv, conv.comment(module, f"preset {preset}: LyCORIS's full on T5-XXL"))
    why = "the targets' layers the preset file builds no FullModule on (no trained copy)"
    put_rest(conv, module, args, preset, text, {"exclude": exclude} if exclude else {}, why)
    return True


def _full_dropouts(kwargs: dict[str, str], args: Legacy, conv: Conversion) -> bool:
    """FullModule's module_dropout (forward's one `torch.rand(1)` per module and training forward, first)
    and rank_dropout (make_weight's `torch.rand(out, device) > rank_dropout` over the module's output rows,
    weight and bias, unscaled): the adapter's (runtime/mixed_kinds.py add_own_module_dropout,
    runtime/lycoris_full.py add_full_rank_dropout). Whether either draws."""
    drawn = False
    for key in [k for k in ("module_dropout", "rank_dropout") if k in kwargs]:
        legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        rate = float(legacy.value or 0)
        if rate:
            conv.mapped(legacy, ("adapter", key), rate)
            drawn = True
        else:
            conv.inert(legacy, "0 is off")
    return drawn


def _full_excluded(blocks: list[dict[str, Any]], text_blocks: list[dict[str, Any]]) -> list[str] | str:
    """The `exclude` patterns of full: the leading rank-0 blocks (the first matching block decides a layer;
    a full copy has no rank, so the others' ranks change nothing), each kept to its model (the denoiser's
    paths, or a text encoder's `text_encoder*.` ones); a rank-0 block after another: why not."""
    out = []
    for table, scope in ((blocks, "(?!text_encoder)"), (text_blocks, "(?=text_encoder)")):
        ranks = [block["rank"] for block in table]
        lead = next((i for i, rank in enumerate(ranks) if rank), len(ranks))
        if any(rank == 0 for rank in ranks[lead:]):
            return f"a map entry's dim 0 after another entry (`{table[lead]['pattern']}`)"
        out += [
            pattern if pattern.startswith("^") and scope.startswith("(?!") else f"^{scope}.*{pattern}"
            for pattern in (block["pattern"] for block in table[:lead])
        ]
    return out


def _ia3(
    kwargs: dict[str, str], a: dict[str, Legacy], conv: Conversion, layout, preset: str, text_blocks=()
) -> bool:
    """algo=ia3 (lycoris/modules/ia3.py): IA3Module on every Linear of the preset, one scale per output row
    of its weight, from 0 (W x (1 + s), the bias unscaled). On a fused Linear (qkv, the single blocks'
    linear1) its rows are the parts' rows, so each diffusers part scaling its own rows is the same update
    (kind = "ia3" on the parts, no sharing; the kohya writer concatenates them). `train_on_input` in
    network_args is never read: create_network hands LycorisNetworkKohya a fixed list of arguments without
    it, so IA3Module keeps its default, the output rows (lycoris-lora 4.1.3 on kohya's Flux, any value:
    every module's `on_input` 0): ignored (DBS405); only a preset's module_algo_map sets it. Rank and alpha
    mean nothing to it; IA3Module never reads `dropout` (--network_dropout) or rank_dropout (DBS405; the
    NormModules of train_norm draw rank_dropout: adapter.rank_dropout). Its module_dropout is
    IA3Module.forward's one draw per module and training forward: `module_dropout` with
    `fused_projections` (the parts of a fused Linear share the draw, runtime/fused.py FusedSkip).
    `bypass_mode` (LyCORIS's str_bool) is IA3Module's bypass forward: the fused Linear's whole output, its
    bias included, times (1 + s), which is each part's output times its own rows' slice of s (no input side
    here): adapter.bypass (tests/runtime/test_lycoris_flux_ia3.py against lycoris-lora 4.1.3's IA3Module on
    the stacked Linear). False when refused."""
    module, args = a["network_module"], a["network_args"]
    layers, text = layout.presets[preset]
    if "train_on_input" in kwargs:
        conv.ignored(
            Legacy(key=f"{args.key} train_on_input", value=kwargs.pop("train_on_input"), source=args.source),
            "lycoris.kohya's create_network never hands it to IA3Module (only a preset file's "
            "module_algo_map does): each module scales its output rows",
        )
    if layers in layout.convs:  # the preset's convolutions (enable_conv; conv_dim only switches them on)
        where = ", ".join(layout.convs[layers])
        note = conv.comment(args, f"LyCORIS's IA^3 on {where} too (the preset's enable_conv)")
        conv.put(("adapter", "conv_targets"), list(layout.convs[layers]), note)
        for key in [k for k in ("conv_dim", "conv_alpha") if k in kwargs]:
            legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
            conv.inert(legacy, "IA3Module has no rank or alpha")
    network_dropout = a["network_dropout"]
    # in bypass_mode beside LoCon / LoHa / LoKr entries the dropout is theirs (entry_args.host_bypass_dropout)
    entries = {
        "_blocks": layout.targets(layers, True)[1] if layers != "none" else [],
        "_text_blocks": text_blocks,
    }
    bypass = not _off(kwargs.get("bypass_mode", "false"))
    taken = host_bypass_dropout(kwargs, entries, bypass, args, conv, network_dropout)
    if "dropout" in entries:
        conv.put(("adapter", "dropout"), entries["dropout"], conv.comment(args))
    own_dropout = (
        "dropout" in kwargs or taken
    )  # else train_network.py hands --network_dropout on as `dropout`
    norms = ("adapter", "text_encoder_norms") in conv.values  # train_norm's (_file_train_norm)
    skip = False  # IA3Module.forward's module_dropout draw: one per (fused) module
    for key in [k for k in ("dropout", "rank_dropout", "module_dropout") if k in kwargs]:
        legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        if key == "module_dropout" and float(legacy.value or 0):
            conv.mapped(legacy, ("adapter", "module_dropout"), float(legacy.value))
            skip = layers != "none"
        elif key == "module_dropout":
            conv.inert(legacy, "0 is off")
        elif float(legacy.value or 0) and key == "rank_dropout" and norms:  # NormModule draws it
            conv.mapped(legacy, ("adapter", "rank_dropout"), float(legacy.value))
        elif float(legacy.value or 0):
            conv.ignored(legacy, "IA3Module takes it and never reads it")
        else:
            conv.inert(legacy, "0 is off")
    if network_dropout.value and float(network_dropout.value) and not own_dropout:
        conv.ignored(network_dropout, "IA3Module takes it (as `dropout`) and never reads it")
    if "bypass_mode" in kwargs:
        legacy = Legacy(key=f"{args.key} bypass_mode", value=kwargs.pop("bypass_mode"), source=args.source)
        if _off(legacy.value):
            conv.inert(legacy, "false is off")
        else:  # IA3Module._bypass_forward: the output scaled, its bias too; each part its own rows
            conv.mapped(
                legacy,
                ("adapter", "bypass"),
                True,
                note="IA3Module's bypass forward: each fused Linear's output, bias included, times (1 + s)",
            )
    # its LoCon / LoHa / LoKr entries' blocks' own dora (read)
    blocks = layout.targets(layers, True)[1] if layers != "none" else []
    take_blocks_dora(kwargs, blocks, text_blocks)
    entries_constraint(kwargs, [*blocks, *text_blocks], args, conv)  # its Diag-OFT / BOFT blocks' alpha
    entries_lokr_args(kwargs, [*blocks, *text_blocks], args, conv)  # its LoKr blocks' split
    entries_scalar_rs_lora(kwargs, [*blocks, *text_blocks], args, conv)  # its LoCon / LoHa / LoKr blocks'
    for key in list(kwargs):
        if key in _INERT or key in ("use_scalar", "dora_wd", "rs_lora"):
            legacy = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
            conv.inert(legacy, "IA3Module takes it and never reads it")
        elif unread := unread_network_arg(key, "ia3", "ia3", "lycoris.kohya"):  # as on SD (was DBS403)
            conv.ignored(Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source), unread)
    if kwargs:
        rest = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        conv.unsupported(
            args,
            f"network arguments dbspec does not express for LyCORIS's IA^3 on {layout.title}: {rest} (dbspec "
            "maps algo and preset there; the dropouts off)",
        )
        return False
    why = conv.comment(module, f"algo=ia3, preset {preset}: LyCORIS's IA^3 on kohya's {layout.title}")
    conv.put(("adapter", "kind"), "ia3", why)
    for legacy in (a["network_dim"], a["network_alpha"]):
        if legacy.given:
            conv.inert(legacy, "IA3Module has no rank or alpha")
    targets, blocks, note = layout.targets(layers, True)  # full paths; blocks: a file's entries' kinds
    if layers == "none":
        conv.put(("train", "denoiser"), False, conv.comment(module, note))
    else:
        conv.put(("adapter", "denoiser_targets"), targets, conv.comment(module, note))
    mixed = put_kind_blocks(conv, module, blocks if layers != "none" else [], text_blocks)
    # its own entries' train_on_input (their blocks' on_input): one input-side scale per fused Linear
    inputs = any(b.get("on_input") for b in blocks) if layers != "none" else False
    if (skip or mixed or inputs) and layers != "none":  # the parts of a fused Linear are one IA3Module
        why = "one IA3Module per fused Linear: its parts share the module_dropout draw" + (
            " and an input-side scale (its own entries' train_on_input)" if inputs else ""
        )
        conv.put(("adapter", "fused_projections"), True, conv.comment(module, FUSED_WHY if mixed else why))
    put_rest(conv, module, args, preset, text, {})
    return True


def _patch_tucker(blocks: list[dict[str, Any]], convs) -> bool | None:
    """A preset file's map entry's own use_tucker on SD3's patch convolution (the first block matching it
    that sets `tucker`), or None. The patch convolution is the only k x k convolution LyCORIS adapts on
    kohya's MMDiT, and use_tucker changes only those (LoConModule, LohaModule, LokrModule), so the entry's
    setting is the adapter's `tucker`: the blocks' own are dropped (a block's own Tucker form beside
    fused_projections is DBS579). Beside entries of other algorithms (blocks with their own `kind`) the
    entry's stays its block's `tucker` (an adapter's `tucker` is one of one kind's layers, DBS578; was
    DBS596): the patch module's kind, LoCon's, LoHa's or LoKr's, built with use_tucker there alone."""
    if tuple(convs) != ("pos_embed.proj",) or any(b.get("kind") for b in blocks):
        return None
    own = [b["tucker"] for b in blocks if "tucker" in b and re.search(b["pattern"], "pos_embed.proj")]
    for block in blocks:
        block.pop("tucker", None)
    return own[0] == "on" if own else None


def _mixed_patch_tucker(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, blocks: list[dict], convs, layers: str, kind: str
) -> dict[str, Any] | None:
    """The network's use_tucker beside map entries of other algorithms (blocks with their own `kind`; was
    DBS403, a spec's DBS578): LyCORIS hands it to every module, and only LoConModule, LohaModule and
    LokrModule on a k x k convolution read it, which on kohya's MMDiT is SD3's patch convolution alone: its
    block (the first matching it) gets `tucker = "on"`, the adapter's stays off; a block of the adapter's
    kind there, first, where none matches (returned: _convs settles its conv_rank / conv_alpha). An entry's
    own use_tucker there, or a kind that never reads it, leaves the network's shaping nothing (DBS405).
    Pops the use_tucker keys it decides."""
    if (
        tuple(convs.get(layers, ())) != ("pos_embed.proj",)
        or not any(b.get("kind") for b in blocks)
        or not lycoris_tucker(kwargs)
    ):
        return None
    block = next((b for b in blocks if re.search(b["pattern"], "pos_embed.proj")), None)
    theirs = kind if block is None or block.get("kind", "adapter") == "adapter" else block["kind"]
    own = block is not None and "tucker" in block
    reads = theirs in ("lora", "loha", "lokr") and not own
    note = f"LyCORIS's Tucker form on the patch convolution alone ({theirs}'s module there, use_tucker)"
    for key in [k for k in kwargs if k in TUCKER_NAMES]:
        item = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        if reads:
            conv.record(item, "mapped", "adapter.blocks tucker (pos_embed.proj)", note)
        else:
            why = "its map entry's own use_tucker" if own else f"its {theirs} module, which never reads it"
            conv.ignored(item, f"the patch convolution, the one k x k convolution, takes {why}")
    if not reads:
        return None
    if block is not None:
        block["tucker"] = "on"
        return None
    new: dict[str, Any] = {"pattern": r"^(pos_embed\.proj)$", "tucker": "on", "_why": note}
    blocks.insert(0, new)
    return new


def _convs(
    kwargs: dict[str, str],
    a: dict[str, Legacy],
    args: Legacy,
    conv: Conversion,
    layout,
    layers: str,
    kind: str,
    own_tucker: bool | None = None,
) -> bool:
    """The preset's convolutions (LyCORIS's enable_conv): LoConModule on each, a k x k `lora_down` with the
    layer's stride and a 1x1 `lora_up`, peft's LoRA on a convolution: `conv_targets` at `conv_dim` /
    `conv_alpha` (LyCORIS's defaults: network_dim / network_alpha, 0 too); LoKr / LoHa: LokrModule /
    LohaModule on it, peft's LoKr / LoHa on the convolution (LyCORIS's split and init; exported under kohya's
    name, checked against lycoris-lora 4.1.3). LoKr's and LoHa's Tucker form (`use_tucker`: `lokr_t2`,
    `hada_t1` / `hada_t2`, peft's use_effective_conv2d) there is `tucker = true`, exported as LyCORIS saves
    it (tests/runtime/test_lycoris_sd3.py), and so is LoCon's (`lora_mid` beside the 1x1 `lora_down` /
    `lora_up`, runtime/locon_tucker.py; the lora_sd3 writer adds it: tests/runtime/test_lycoris_sd3_patch.py).
    `own_tucker`: a preset file's map entry's own use_tucker on the patch convolution (_patch_tucker), which
    decides over the network's. False when refused."""
    where = ", ".join(layout.convs[layers])
    form = "LoKr" if kind == "lokr" else "LoHa" if kind == "loha" else "LoCon"
    network = lycoris_tucker(kwargs)
    tucker = network if own_tucker is None else own_tucker
    cores = {"lokr": "lokr_t2", "loha": "hada_t1, hada_t2"}.get(kind, "lora_mid")
    note = f"LyCORIS's {form} Tucker form on {where} ({cores})"
    for key in [k for k in kwargs if k in TUCKER_NAMES]:
        item = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        if network and tucker:
            conv.mapped(item, ("adapter", "tucker"), True, note)
        elif network:
            conv.ignored(
                item,
                f"the preset file's map entry for {where} sets use_tucker off there, the one layer it shapes",
            )
        else:
            conv.inert(item, "off")
    if tucker and not network:  # the preset file's entry's own use_tucker
        conv.put(("adapter", "tucker"), True, conv.comment(args, note + ": the preset file's map entry's"))
    rank, alpha = a["network_dim"].value or 4, float(a["network_alpha"].value)
    conv_rank = int(kwargs.pop("conv_dim", rank) or rank)
    # LyCORIS's create_network: conv_alpha (a string: "0" is given, "" the network's) defaults to
    # network_alpha; its modules take an alpha of 0 as the dim, and with rs_lora scale by alpha / sqrt(dim):
    # the plain alpha x sqrt(dim) (as _lycoris_rs_lora)
    conv_alpha = float(kwargs.pop("conv_alpha", alpha) or alpha) or float(conv_rank)
    if _str_bool(kwargs.get("rs_lora", "false")):
        conv_alpha *= math.sqrt(conv_rank)
    note = conv.comment(args, f"LyCORIS's {form} on {where} (enable_conv: conv_dim, conv_alpha)")
    conv.put(("adapter", "conv_rank"), conv_rank, note)
    conv.put(("adapter", "conv_alpha"), conv_alpha, note)
    conv.put(("adapter", "conv_targets"), list(layout.convs[layers]), note)
    return True


def _flux_targets(
    layers: str, lokr: bool, family: str = "flux"
) -> tuple[list[str], list[dict[str, Any]], str]:
    """Flux's denoiser targets for the preset's layers: networks.lora_flux's set without the final layer, or
    the double blocks' attention (the single blocks at rank 0); LoKr's by full paths (_lokr_targets).
    `family` "chroma": kohya's Chroma, whose blocks have no modulation Linears (img_mod.lin, txt_mod.lin,
    modulation.lin: its approximator computes the modulations), so LyCORIS builds none there."""
    flux = family_spec(family)
    blocks: list[dict[str, Any]] = [
        {"pattern": p, "rank": 0, "alpha": 1.0, "_why": _FINAL.replace("networks/lora_flux.py", "LyCORIS")}
        for p in flux.kohya_lora_excluded
    ]
    if layers == "all":
        targets = list(flux.kohya_lora_targets)
        note = "every Linear of the double and single blocks (DoubleStreamBlock, SingleStreamBlock)"
        if family == "chroma":
            note += "; Chroma's have no modulation Linears"
    else:
        targets = list(_DOUBLE_ATTENTION)
        blocks.append({"pattern": _SINGLE, "rank": 0, "alpha": 1.0, "_why": "attn-only: no SelfAttention"})
        note = "kohya's SelfAttention: the double blocks' img_attn / txt_attn qkv and proj"
    if lokr:  # LoKr has no [[adapter.blocks]]: full paths keep the final layer (and attn-only's singles) out
        targets, blocks = _lokr_targets(targets, layers), []
    return targets, blocks, note


FLUX = LycorisLayout(
    title="Flux",
    script="flux_train_network.py",
    presets=_PRESETS,
    nothing=_NOTHING,
    refused={},
    targets=_flux_targets,
    bare_norms={
        "all": "double blocks' img_norm1 / img_norm2 / txt_norm1 / txt_norm2 and single blocks' pre_norm"
    },
)


def _dora_wd(kwargs: dict[str, str], args: Legacy, conv: Conversion, algo: str) -> bool:
    """LoConModule's, LokrModule's and LohaModule's weight_decompose (`dora_wd`, LyCORIS's str_bool) on a
    fused Linear: one magnitude per output row (wd_on_output, its default), so each part keeps its rows'
    (adapter.dora in LyCORIS's form, DBS509 / DBS575); LoKr's / LoHa's module_dropout and rank mask with it
    are their rebuild forward's (one draw per fused layer, the masked update decomposed:
    runtime/fused_lycoris_dropout.py); wd_on_output=False (LoKr, LoHa, LoCon): adapter.dora_axis "input",
    the parts sharing one magnitude per column of the fused weight and its norms (runtime/lycoris_dora.py
    tie_fused_doras; a --network_weights file's (1, in) dora_scale loads into it; LoKr's / LoHa's dropouts
    the fused module's one draw, each part decomposing its rows by every part's masked rows' column norms).
    LoCon's module_dropout and rank mask with it (was DBS403): its rebuild forward's one
    draw per fused layer, the masked update decomposed (runtime/fused_lycoris_dropout.py
    add_fused_locon_dora_dropout), per input column by the column norms of every part's masked rows (was
    DBS403). With bypass_mode invalid (BYPASS_DORA). False when invalid."""
    if "dora_wd" not in kwargs:
        return True
    text = kwargs.pop("dora_wd")
    legacy = Legacy(key=f"{args.key} dora_wd", value=text, source=args.source)
    if _off(text):
        conv.inert(legacy, "off")
        return True
    if not _off(kwargs.get("bypass_mode", "false")):
        conv.invalid(legacy.key, legacy.value, legacy.source, BYPASS_DORA, help="drop dora_wd or bypass_mode")
        return False
    columns = _off(kwargs.get("wd_on_output", "true"))
    axis_text = kwargs.pop("wd_on_output", None)  # on: LyCORIS's default, one magnitude per output row
    if algo in ("lokr", "loha"):  # their dora is LyCORIS's form only
        form = "LokrModule" if algo == "lokr" else "LohaModule"
        note = f"{form}'s weight decomposition of each fused Linear, per output row"
        if columns:  # one magnitude per input column of the fused weight, the parts sharing its norms
            note = f"{form}'s weight decomposition of each fused Linear, per input column"
            axis = Legacy(key=f"{args.key} wd_on_output", value=axis_text, source=args.source)
            conv.mapped(axis, ("adapter", "dora_axis"), "input", note=note)
        conv.mapped(legacy, ("adapter", "dora"), True, note=note)
        return True
    conv.mapped(legacy, ("adapter", "dora"), True)
    if columns:  # one magnitude per input column of the fused weight, the parts sharing its norms
        note = "LoConModule's weight decomposition of each fused Linear, per input column"
        axis = Legacy(key=f"{args.key} wd_on_output", value=axis_text, source=args.source)
        conv.mapped(axis, ("adapter", "dora_axis"), "input", note=note)
    row = "per input column" if columns else "per output row"
    conv.put(
        ("adapter", "dora_form"),
        "lycoris",
        conv.comment(args, f"LoConModule's weight decomposition of each fused Linear, {row}"),
    )
    return True


def _bypass_blocks(legacy: Legacy, file, conv: Conversion, drops: bool = False) -> None:
    """A LoCon / LoHa / LoKr network's bypass_mode beside a preset file's Diag-OFT / BOFT / IA^3 / DyLoRA
    entries (DyLoRA's of one block, else DBS402), or GLoRA / T-LoRA entries with the network's dropout or
    rank_dropout (`drops`: their bypass forward's, runtime/mixed_kinds.py kind_adapter): their modules'
    bypass forward on each fused Linear, the stacked output rotated or scaled, bias included (DyLoRA: its
    block unscaled), which each part computes for its own rows (a Diag-OFT's parts share its blocks where one
    spans two parts; a BOFT's parts rotate every part's output by the butterfly they share; a DyLoRA's share
    the down): the adapter's `bypass` (tests/runtime/test_lycoris_mixed_flow_bypass.py against lycoris-lora
    4.1.3's network on kohya's fused layers)."""
    # (a block whose entry's own bypass_mode is off keeps its layers from it)
    blocks = (*file.blocks, *file.text_blocks)
    if any(
        (b.get("kind") in BYPASS_BLOCKS and b.get("bypass") != "off")
        or (b.get("kind") in ("glora", "tlora") and drops)
        for b in blocks
    ):  # (GLoRA / T-LoRA entries: the network's `drops` there, runtime/mixed_kinds.py kind_adapter)
        conv.mapped(
            legacy,
            ("adapter", "bypass"),
            True,
            note="LyCORIS's bypass forward of the preset file's Diag-OFT / BOFT / IA^3 / DyLoRA / GLoRA / "
            "T-LoRA entries",
        )


def _dropouts(kwargs: dict[str, str], network_dropout: Legacy, args: Legacy, conv: Conversion) -> bool:
    """LoConModule.forward (lycoris/modules/locon.py): `module_dropout` is one `torch.rand(1)` per training
    forward, the module's base output alone below the rate: kohya's lora_flux rule, which dbspec draws once
    per fused layer for all its parts (runtime/fused_dropout.py): adapter.module_dropout. `dropout` (or
    --network_dropout, which train_network.py hands on as it) acts only in bypass_mode: torch's dropout on
    the fused module's output (bypass_forward_diff's self.dropout, after the rank mask),
    adapter.output_dropout, one draw over the fused layer's rows; outside bypass_mode ignored (DBS405), as
    LyCORIS rebuilds the weight, W + ΔW, without it; a rate outside [0, 1] invalid (torch's Dropout raises
    ValueError).
    `rank_dropout`: make_weight's one mask over the fused update's output rows (`rank_dropout_form =
    "lycoris"`), in bypass_mode bypass_forward_diff's one `torch.rand(rank)` over the down output, which the
    fused layer's parts share (`"lycoris_bypass"`), both unscaled (create_network never passes
    rank_dropout_scale). bypass_mode without those is the same update (x through down and up). False when
    refused."""
    bypass_text = kwargs.pop("bypass_mode", "false")
    bypass = str(bypass_text).lower() != "false"  # LyCORIS's str_bool
    if "dropout" in kwargs:
        text = kwargs.pop("dropout")
        legacy: Legacy = Legacy(key=f"{args.key} dropout", value=text, source=args.source)
        rate = float(text or 0.0)
    else:
        legacy, rate = network_dropout, float(network_dropout.value or 0.0)
    if not 0 <= rate <= 1:
        conv.invalid(
            legacy.key,
            legacy.value,
            legacy.source,
            "LoConModule builds torch's Dropout with it, which raises ValueError outside [0, 1]",
        )
        return False
    if rate and bypass:  # LoConModule.bypass_forward_diff: self.dropout(update x scale x scalar)
        conv.mapped(
            legacy,
            ("adapter", "output_dropout"),
            rate,
            note="LoConModule's bypass forward: torch's dropout over each fused layer's update, one draw",
        )
        conv.mapped(
            Legacy(key=f"{args.key} bypass_mode", value=bypass_text, source=args.source),
            ("adapter", "output_dropout"),
            rate,
        )
    elif rate:
        conv.ignored(
            legacy,
            "LyCORIS applies its `dropout` only in bypass_mode (off here: its modules rebuild the weight, "
            "W + ΔW, with no dropout)",
        )
    if bypass and not rate and not float(kwargs.get("rank_dropout", 0) or 0):
        conv.inert(
            Legacy(key=f"{args.key} bypass_mode", value=bypass_text, source=args.source),
            "without dropout, rank_dropout or dora_wd LoConModule's bypass forward is the same update",
        )
    rank = float(kwargs.pop("rank_dropout", 0) or 0)
    if rank:  # LoConModule.make_weight: one torch.rand over the fused update's output rows, kept unscaled;
        # bypass_forward_diff: one torch.rand(rank) over the shared down's output, kept unscaled
        legacy = Legacy(key=f"{args.key} rank_dropout", value=rank, source=args.source)
        conv.mapped(legacy, ("adapter", "rank_dropout"), rank)
        conv.put(
            ("adapter", "rank_dropout_form"),
            "lycoris_bypass" if bypass else "lycoris",
            conv.comment(
                args,
                "LoConModule's bypass forward: one rank mask over each fused layer's down output"
                if bypass
                else "LoConModule: one row mask over each fused layer's update",
            ),
        )
        if bypass:
            legacy = Legacy(key=f"{args.key} bypass_mode", value=bypass_text, source=args.source)
            conv.mapped(legacy, ("adapter", "rank_dropout_form"), "lycoris_bypass")
    if "module_dropout" in kwargs:
        value = float(kwargs.pop("module_dropout") or 0.0)
        legacy = Legacy(key=f"{args.key} module_dropout", value=value, source=args.source)
        if value:
            conv.mapped(
                legacy,
                ("adapter", "module_dropout"),
                value,
                note="LoConModule: one torch.rand(1) per fused module and training forward, as lora_flux's",
            )
        else:
            conv.inert(legacy, "0 is off")
    return True


def _lokr_targets(targets: list[str], layers: str) -> list[str]:
    """The preset's Flux targets as LoKr's (no rank-0 blocks): the single blocks' proj_out (linear2) by its
    full path in each of Flux.1's 38 single blocks (the final layer's Linear shares the name), attn-only's
    attention by its full path in each of the 19 double blocks (the single blocks' q/k/v share the names)."""
    if layers == "attention":
        return [f"transformer_blocks.{i}.{t}" for i in range(NUM_DOUBLE) for t in targets]
    singles = [f"single_transformer_blocks.{i}.proj_out" for i in range(NUM_SINGLE)]
    return [t for t in targets if t != "proj_out"] + singles


def _lokr_args(
    kwargs: dict[str, str], put: dict[str, Any], args: Legacy, conv: Conversion, algo: str
) -> None:
    """LokrModule's own arguments, as the U-Net converter maps them (network.py): `factor` (int),
    `decompose_both` (the raw string's truth: "False" too is on), `unbalanced_factorization` and `full_matrix`
    (LyCORIS's str_bool; full_matrix drops decompose_both); with algo=loha LyCORIS reads none of them
    (ignored). The LoRA+ ratios raise `lora_up` parameters, which LoKr and LoHa have not: ignored."""
    if algo == "loha":
        for key in [
            k for k in ("factor", "decompose_both", "unbalanced_factorization", "full_matrix") if k in kwargs
        ]:
            conv.ignored(
                Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
                "LyCORIS reads it for LoKr only, not algo=loha",
            )
    if "factor" in kwargs:
        put["factor"] = int(float(kwargs.pop("factor")))
    if "decompose_both" in kwargs:
        put["decompose_both"] = bool(kwargs.pop("decompose_both"))
    if "unbalanced_factorization" in kwargs:
        put["unbalanced_factorization"] = str(kwargs.pop("unbalanced_factorization")).lower() != "false"
    if str(kwargs.pop("full_matrix", "false")).lower() != "false":
        put["full_matrix"] = True
        put.pop("decompose_both", None)
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            f"LyCORIS's LoRA+ raises the rate of the `lora_up` parameters, which algo={algo} has not",
        )


def _lokr_dropouts(
    kwargs: dict[str, str],
    network_dropout: Legacy,
    args: Legacy,
    conv: Conversion,
    algo: str,
    entries: tuple[dict, ...] = (),
) -> bool:
    """LokrModule and LohaModule (lycoris/modules/lokr.py, loha.py) apply their `dropout` only in their
    bypass forward (they warn: not implemented; the rebuild forward never reads it), so outside bypass_mode it
    and --network_dropout are ignored (DBS405). `module_dropout`: one `torch.rand(1)` per fused module and
    training forward, the update skipped below the rate; LoHa's `rank_dropout`: one `torch.rand(out)` row
    mask over the fused update, kept rows unscaled (lycoris.kohya never hands `rank_dropout_scale` on:
    ignored): adapter.module_dropout / rank_dropout, drawn once per fused layer for all its parts
    (runtime/fused_lycoris_dropout.py). LoKr's rank_dropout is invalid (its mask stays on the CPU: kohya
    fails on a GPU, network.py's _lokr_rank_dropout_on_gpu). `bypass_mode` (lycoris-lora 4.1.3's
    bypass_forward_diff: scale x ΔW x x scalar, after the same module_dropout draw, LoHa's rank mask from the
    same get_weight) is the same update, and LoKr's rank_dropout, which its bypass forward never draws,
    ignored; there the `dropout` is torch's Dropout on the fused update (_lokr_bypass). Beside a preset file's
    LoCon / LoHa `entries` (lycoris_maps._mixed_kinds admitted them with the bypass `dropout`) a LoKr
    network's bypass rank_dropout is theirs: the adapter's rank_dropout in rank_dropout_form
    "lycoris_bypass" (was DBS403; LoConModule's rank mask, LohaModule's row mask, one per fused Linear its
    parts share, the LoKr layers none). False when refused or invalid."""
    bypass_text = kwargs.get("bypass_mode", "false")
    bypass = str(bypass_text).lower() != "false"  # LyCORIS's str_bool
    if bypass and not _lokr_bypass(kwargs, network_dropout, args, conv, algo):
        return False
    rank = float(kwargs.get("rank_dropout", 0) or 0)
    if rank and algo == "lokr" and bypass and rank_dropout_readers(entries, algo, bypass=True):
        legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
        note = "LokrModule's bypass forward never reads it; the LoCon / LoHa entries' modules draw it"
        conv.mapped(legacy, ("adapter", "rank_dropout"), rank, note=note)
        why = (
            "LyCORIS's bypass forward: the LoKr layers draw no rank dropout, the LoCon / LoHa entries theirs"
        )
        conv.put(("adapter", "rank_dropout_form"), "lycoris_bypass", conv.comment(args, why))
    elif rank and algo == "lokr":
        _lokr_rank_dropout_on_gpu(kwargs, args, conv)
        kwargs.pop("bypass_mode", None)
        if not bypass:
            return False
    kwargs.pop("bypass_mode", None)
    rank = float(kwargs.pop("rank_dropout", 0) or 0)
    if rank:
        legacy = Legacy(key=f"{args.key} rank_dropout", value=rank, source=args.source)
        conv.mapped(
            legacy, ("adapter", "rank_dropout"), rank, note="LohaModule: one row mask per fused layer"
        )
        if bypass and any(b.get("kind") == "lora" for b in entries):
            # the LoCon entries' LoConModules draw their bypass rank mask, with or without a `dropout`
            # (was DBS403 without it; network._loha_bypass_form)
            why = "LyCORIS's bypass forward: the LoCon entries draw LoConModule's bypass rank mask"
            conv.put(("adapter", "rank_dropout_form"), "lycoris_bypass", conv.comment(args, why))
        if "rank_dropout_scale" in kwargs:
            _rank_dropout_scale_unread(kwargs, args, conv)
    module_dropout = float(kwargs.pop("module_dropout", 0) or 0)
    if module_dropout:
        legacy = Legacy(key=f"{args.key} module_dropout", value=module_dropout, source=args.source)
        note = f"{'LokrModule' if algo == 'lokr' else 'LohaModule'}: one torch.rand(1) per fused module"
        conv.mapped(legacy, ("adapter", "module_dropout"), module_dropout, note=note)
    if bypass:
        return True
    legacy = (
        Legacy(key=f"{args.key} dropout", value=kwargs.pop("dropout"), source=args.source)
        if "dropout" in kwargs
        else network_dropout
    )
    if legacy.value and float(legacy.value):
        conv.ignored(
            legacy,
            "LyCORIS's LoKr and LoHa apply their dropout only in bypass_mode (off here: they rebuild the "
            "weight, W + ΔW, with no dropout)",
        )
    return True


def _lokr_bypass(
    kwargs: dict[str, str], network_dropout: Legacy, args: Legacy, conv: Conversion, algo: str
) -> bool:
    """LokrModule's / LohaModule's bypass_mode on a fused Linear: without a `dropout` the same update as their
    rebuilt-weight forward (inert); with one (network_args' or --network_dropout, which train_network.py
    hands on as it) bypass_forward_diff's `self.drop`, torch's Dropout on the fused update x scalar, after
    module_dropout's draw and LoHa's rank mask: adapter.output_dropout, one draw over the fused layer's
    output, each part its rows (runtime/fused_lycoris_dropout.py). A rate outside [0, 1] is torch's
    ValueError when LyCORIS builds the module (invalid, False)."""
    given = "dropout" in kwargs
    text = kwargs.pop("dropout") if given else network_dropout.value
    legacy = Legacy(key=f"{args.key} bypass_mode", value=kwargs["bypass_mode"], source=args.source)
    form = "LokrModule" if algo == "lokr" else "LohaModule"
    rate = float(text or 0.0)
    if not rate:
        conv.inert(
            legacy,
            "without a dropout LyCORIS's LoKr / LoHa bypass forward is the same update (scale, scalar, "
            "module_dropout and LoHa's rank mask alike)",
        )
        return True
    dropout = Legacy(key=f"{args.key} dropout", value=text, source=args.source) if given else network_dropout
    if not 0 <= rate <= 1:
        conv.invalid(
            dropout.key,
            dropout.value,
            dropout.source,
            f"{form} builds torch's Dropout with it, which raises ValueError outside [0, 1]",
        )
        return False
    note = f"{form}'s bypass forward: torch's dropout over each fused layer's update, one draw"
    conv.mapped(dropout, ("adapter", "output_dropout"), rate, note=note)
    conv.mapped(legacy, ("adapter", "output_dropout"), rate)
    return True

"""LyCORIS preset files (`--network_args preset=<file>.toml`, lycoris.kohya) with flux_train_network.py and
sd3_train_network.py.

lycoris_file.py reproduces LycorisNetworkKohya's walk (classes, names, fnmatch / regular expressions,
exclude_name, module_algo_map / name_algo_map) on a torch-free inventory of kohya's model; here that
inventory is kohya's Flux (library/flux_models.py Flux: FLUX.1 dev's 19 double and 38 single blocks, its
guidance embedder) with the text encoders flux_train_network.py hands LyCORIS, CLIP-L (`lora_te1_`) and
T5-XXL (`lora_te2_`), or kohya's MMDiT (library/sd3_models.py: SD3.5 large's 38 joint blocks, SD3.5 medium's
second image attention in blocks 0-12; a variant's missing layers match nothing there) with CLIP-L, CLIP-G
(both CLIPTextModelWithProjection) and T5-XXL (`lora_te3_`). A preset's keys the file does not set keep
lycoris-lora 4.1.3's class defaults (the `full` lists: DoubleStreamBlock, SingleStreamBlock, SingleDiTBlock,
PatchEmbed and TimestepEmbedding among the classes).

The layers built on kohya's paths are written as dbspec's diffusers targets: a fused Linear (Flux's
img_attn.qkv / txt_attn.qkv / linear1, SD3's attn.qkv / attn2.qkv) as all its diffusers parts
(fused_projections: one LyCORIS module per fused layer), the embedders and final layer as diffusers' names,
all as the shortest suffixes that pick exactly those layers among the diffusers model's (Flux's final
`proj_out` with a rank-0 block for the single blocks' `proj_out` left out); SD3's patch convolution as
conv_targets through the SD3 layout's LoCon mapping (lycoris_flux._convs). A map entry's dim / alpha are
[[adapter.blocks]] (LoKr's own factor, decompose_both and full_matrix too; GLoRA's rank / alpha, Diag-OFT's
and BOFT's block size; IA^3's inert: IA3Module never reads them; an entry names whole kohya layers,
so its block covers every diffusers part of a fused one; SD3's patch convolution: the block's conv_rank);
LoKr / LoHa layers outside the blocks (the embedders, the final layer) are plain Linears, LokrModule /
LohaModule on them peft's LoKr / LoHa, exported under kohya's names (runtime/lycoris_export.py).
CLIP dims of their own are [[adapter.text_encoder_blocks]] (LoConModule on a CLIP Linear is kohya's LoRA
there; LokrModule / LohaModule peft's LoKr / LoHa). SD3's CLIP-L is CLIP-G's first 12 layers by paths and
classes: a file reaching CLIP-G's later layers alone is text_encoder_2_targets.
T5-XXL layers (a file naming T5's classes or paths): LyCORIS's LoCon / LoKr / LoHa modules there train with
CLIP's while T5 encodes every step (train_t5xxl or not), dbspec's T5 adapter of that kind (train.t5) with the
layers left out at rank 0 and the entries' dims as text-encoder blocks (Chroma's T5 is its text_encoder);
cached text-encoder outputs or network_train_unet_only leave them untrained (ignored); the other algos' T5
modules (GLoRA, DyLoRA, Diag-OFT, BOFT, IA^3) are dbspec's T5 adapter of that kind too (lycoris_flux.py
_t5_of_kind; Diag-OFT's, BOFT's and IA^3's left-out T5 Linears `exclude`d).

With --model_type chroma the inventory is kohya's Chroma (chroma_rows.py: Flux's block classes without
modulation Linears, the approximator's MLPEmbedder layers, the final layer's linear) with the dummy CLIP-L
and T5-XXL flux_train_network.py hands LyCORIS; its Linears are diffusers' ChromaTransformer2DModel's,
the approximator's and the final layer's included (runtime/flux_kohya.py names them as LyCORIS does)."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, Callable, NamedTuple

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.chroma_rows import chroma_model, chroma_parts, dummy_clip_l
from dbspec.convert.kohya.flux_rows import block_parts, flux_blocks, mlp_embedder
from dbspec.convert.kohya.lycoris_file import (
    Layer,
    PresetError,
    Row,
    Targets,
    _add,
    _settings,
    _suffixes,
    _text_targets,
    _walk,
    clip_text,
)
from dbspec.convert.kohya.lycoris_fp8 import fp8_denoiser, full_on_fp8, given, t5_first_query_full
from dbspec.convert.kohya.lycoris_maps import MIXED_FLOW, UNSEEN, _pattern, map_blocks
from dbspec.convert.kohya.oft_entries import oft_network_host
from dbspec.families import family_spec
from dbspec.flow_layout import FLUX_TOP, SD3_BLOCK, SD3_TOP
from dbspec.convert.kohya.network import _module_options, _str_bool, load_preset_file, parse_network_args

NUM_DOUBLE, NUM_SINGLE = 19, 38  # FLUX.1's depth and depth_single_blocks
# lycoris-lora 4.1.3 LycorisNetworkKohya's class lists (the `full` preset), which a file's missing keys keep
FULL_UNET_MODULES = [
    *("Transformer2DModel", "ResnetBlock2D", "Downsample2D", "Upsample2D", "HunYuanDiTBlock"),
    *("DoubleStreamBlock", "SingleStreamBlock", "SingleDiTBlock", "MMDoubleStreamBlock"),
    *("MMSingleStreamBlock", "WanAttentionBlock", "HunyuanVideoTransformerBlock"),
    *(
        "HunyuanVideoSingleTransformerBlock",
        "JointTransformerBlock",
        "FinalLayer",
        "QwenImageTransformerBlock",
    ),
    *("LensTransformerBlock", "Ideogram4TransformerBlock", "ZImageTransformerBlock", "AceStepEncoderLayer"),
    *("AceStepDiTLayer", "TextFusionBlock", "Block", "PatchEmbed", "TimestepEmbedding"),
    "LLMAdapterTransformerBlock",
]
FULL_TEXT_MODULES = [
    *("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP", "MT5Block", "BertLayer", "Gemma2Attention"),
    *("Gemma2FlashAttention2", "Gemma2SdpaAttention", "Gemma2MLP", "Qwen3Attention", "Qwen3FlashAttention2"),
    *("Qwen3SdpaAttention", "Qwen3MLP"),
]


def flux_model(double: int = NUM_DOUBLE, single: int = NUM_SINGLE) -> list[Row]:
    """kohya's Flux (library/flux_models.py, guidance_embed on: FLUX.1 dev), its named_modules() in order."""
    rows: list[Row] = []
    _add(rows, "", "Flux")
    _add(rows, "pe_embedder", "EmbedND")
    _add(rows, "img_in", "Linear", "linear")
    for name in ("time_in", "vector_in", "guidance_in"):
        mlp_embedder(rows, name)
    _add(rows, "txt_in", "Linear", "linear")
    flux_blocks(rows, double, single, modulated=True)
    return rows


def t5_encoder(layers: int = 24) -> list[Row]:
    """transformers' T5EncoderModel (T5-XXL: 24 blocks, gated-GELU feed-forward), named_modules() in order."""
    rows: list[Row] = []
    _add(rows, "", "T5EncoderModel")
    _add(rows, "shared", "Embedding")
    _add(rows, "encoder", "T5Stack")
    _add(rows, "encoder.embed_tokens", "Embedding")
    _add(rows, "encoder.block", "ModuleList")
    for i in range(layers):
        p = f"encoder.block.{i}"
        _add(rows, p, "T5Block")
        _add(rows, f"{p}.layer", "ModuleList")
        _add(rows, f"{p}.layer.0", "T5LayerSelfAttention")
        _add(rows, f"{p}.layer.0.SelfAttention", "T5Attention")
        for name in ("q", "k", "v", "o"):
            _add(rows, f"{p}.layer.0.SelfAttention.{name}", "Linear", "linear")
        if i == 0:
            _add(rows, f"{p}.layer.0.SelfAttention.relative_attention_bias", "Embedding")
        _add(rows, f"{p}.layer.0.layer_norm", "T5LayerNorm")
        _add(rows, f"{p}.layer.0.dropout", "Dropout")
        _add(rows, f"{p}.layer.1", "T5LayerFF")
        _add(rows, f"{p}.layer.1.DenseReluDense", "T5DenseGatedActDense")
        for name in ("wi_0", "wi_1", "wo"):
            _add(rows, f"{p}.layer.1.DenseReluDense.{name}", "Linear", "linear")
        _add(rows, f"{p}.layer.1.DenseReluDense.dropout", "Dropout")
        _add(rows, f"{p}.layer.1.DenseReluDense.act", "NewGELUActivation")
        _add(rows, f"{p}.layer.1.layer_norm", "T5LayerNorm")
        _add(rows, f"{p}.layer.1.dropout", "Dropout")
    _add(rows, "encoder.final_layer_norm", "T5LayerNorm")
    _add(rows, "encoder.dropout", "Dropout")
    return rows


def _sd3_block(rows: list[Row], p: str, pre_only: bool, attn2: bool) -> None:
    _add(rows, p, "SingleDiTBlock")
    _add(rows, f"{p}.norm1", "LayerNorm")
    for name in ("attn", "attn2") if attn2 else ("attn",):
        _add(rows, f"{p}.{name}", "AttentionLinears")
        _add(rows, f"{p}.{name}.qkv", "Linear", "linear")
        if not (pre_only and name == "attn"):
            _add(rows, f"{p}.{name}.proj", "Linear", "linear")
        _add(rows, f"{p}.{name}.ln_q", "RMSNorm")
        _add(rows, f"{p}.{name}.ln_k", "RMSNorm")
    if not pre_only:
        _add(rows, f"{p}.norm2", "LayerNorm")
        _add(rows, f"{p}.mlp", "MLP")
        _add(rows, f"{p}.mlp.fc1", "Linear", "linear")
        _add(rows, f"{p}.mlp.fc2", "Linear", "linear")
        _add(rows, f"{p}.mlp.act", "GELU")
        _add(rows, f"{p}.mlp.norm", "Identity")
    _add(rows, f"{p}.adaLN_modulation", "Sequential")
    _add(rows, f"{p}.adaLN_modulation.0", "SiLU")
    _add(rows, f"{p}.adaLN_modulation.1", "Linear", "linear")


def mmdit(depth: int = 38, attn2: tuple[int, ...] = tuple(range(13))) -> list[Row]:
    """kohya's MMDiT (library/sd3_models.py; SD3.5 large's 38 joint blocks with RMS q/k norms, the blocks
    `attn2` lists with SD3.5 medium's second image attention: a union of the variants, whose paths a file's
    names match the same on each; layers a variant lacks match nothing there), named_modules() in order."""
    rows: list[Row] = []
    _add(rows, "", "MMDiT")
    _add(rows, "x_embedder", "PatchEmbed")
    _add(rows, "x_embedder.proj", "Conv2d", "conv")
    _add(rows, "x_embedder.norm", "Identity")
    for name, cls in (("t_embedder", "TimestepEmbedding"), ("y_embedder", "Embedder")):
        _add(rows, name, cls)
        _add(rows, f"{name}.mlp", "Sequential")
        _add(rows, f"{name}.mlp.0", "Linear", "linear")
        _add(rows, f"{name}.mlp.1", "SiLU")
        _add(rows, f"{name}.mlp.2", "Linear", "linear")
    _add(rows, "context_embedder", "Linear", "linear")
    _add(rows, "joint_blocks", "ModuleList")
    for i in range(depth):
        p = f"joint_blocks.{i}"
        _add(rows, p, "MMDiTBlock")
        _sd3_block(rows, f"{p}.context_block", i == depth - 1, False)
        _sd3_block(rows, f"{p}.x_block", False, i in attn2)
    _add(rows, "final_layer", "UnPatch")
    _add(rows, "final_layer.norm_final", "LayerNorm")
    _add(rows, "final_layer.linear", "Linear", "linear")
    _add(rows, "final_layer.adaLN_modulation", "Sequential")
    _add(rows, "final_layer.adaLN_modulation.0", "SiLU")
    _add(rows, "final_layer.adaLN_modulation.1", "Linear", "linear")
    return rows


def sd3_parts(path: str) -> tuple[str, ...]:
    """The diffusers SD3 layers that kohya's MMDiT layer `path` is (a fused q/k/v: its three parts)."""
    if path in SD3_TOP:
        return (SD3_TOP[path],)
    _, index, inner = path.split(".", 2)
    return tuple(f"transformer_blocks.{index}.{part}" for part in SD3_BLOCK[inner])


def diffusers_parts(path: str) -> tuple[str, ...]:
    """The diffusers Flux Linears that kohya's Flux Linear `path` is (a fused one: all its parts)."""
    return block_parts(path, FLUX_TOP)


class FlowFile(NamedTuple):
    """A preset file on kohya's Flux: the denoiser targets (diffusers' names; empty: no denoiser layer), the
    CLIP-L targets, the [[adapter.blocks]] of its map entries' dims, the inert entry keys (entry, why)."""

    denoiser: list[str]
    text: list[str]
    blocks: list[dict[str, Any]]
    inert: list[tuple[str, str]]
    convs: list[str] = []
    text_blocks: list[dict[str, Any]] = []  # the CLIP layers' map-entry dims (lora / locon)
    # the norms train_norm gives a NormModule, as (component, kohya path, class): "denoiser" or "clip"
    norms: list[tuple[str, str, str]] = []
    # per CLIP encoder, the suffixes picking exactly its LayerNorms among them that train_norm offsets
    clip_norms: tuple[tuple[str, ...], ...] = ()
    text_2: list[str] | None = None  # SD3's CLIP-G targets where they differ from CLIP-L's
    t5: bool = False  # T5-XXL's LyCORIS modules train (train.t5; text_blocks hold its ranks)
    # LyCORIS's module names (lora_unet_<kohya path>, lora_te<N>_<path>) -> the layers each is, as
    # ("unet" or "text", diffusers path (text: <component>.<path>), Layer): a fused Linear's parts all
    # (a DyLoRA --network_weights file's alphas onto the entries' dims: lycoris_flow_dylora.py)
    modules: dict[str, list[tuple[str, str, Layer]]] = {}
    # a Diag-OFT / BOFT network's LoCon / LoHa / LoKr / T-LoRA entries' algorithm: the network it converts as,
    # its own layers `diag-oft` / `boft` blocks (oft_entries.oft_network_host); "" otherwise
    host: str = ""


class FlowModel(NamedTuple):
    """What a preset file is walked over with one kohya script: kohya's denoiser rows and their diffusers
    parts, the CLIP encoders' rows (text_encoder, text_encoder_2), T5-XXL's prefix among LyCORIS's names."""

    title: str
    rows: Callable[[], list[Row]]
    parts: Callable[[str], tuple[str, ...]]
    clips: tuple[Callable[[], list[Row]], ...]
    t5_prefix: str
    t5_component: str = (
        ""  # T5-XXL's pipeline component (train.t5), "" where dbspec trains none beside LyCORIS
    )


def flux_preset_file(
    data: dict[str, Any],
    algo: str,
    dims,
    network: dict[str, Any],
    rs_lora: bool,
    model: FlowModel | None = None,
    applied: tuple[bool, bool] = (True, True),
    t5_idle: str = "",
    t5_wo_read: bool = True,
    fp8: str = "",
    t5_fp8: bool = False,
) -> FlowFile:
    """The preset file's table on kohya's Flux (or `model`'s; `dims`: the network's dim, alpha, conv_dim,
    conv_alpha; `network`: the module options create_network hands every module; `applied`: whether apply_to
    keeps the (text-encoder, denoiser) modules, lycoris_maps.map_blocks; `fp8`: when kohya's --fp8_base casts
    the denoiser, `t5_fp8`: whether it prepares T5-XXL for fp8 after apply_to, lycoris_fp8). PresetError
    where kohya stops or dbspec cannot express it."""
    model = model or FLUX_MODEL
    s = _settings(data, algo)
    for key, full in (
        ("unet_target_module", FULL_UNET_MODULES),
        ("text_encoder_target_module", FULL_TEXT_MODULES),
    ):
        if key not in data:
            s[key] = list(full)
    dim, alpha, conv_dim, conv_alpha = (*dims, dims[0], dims[1])[:4]
    unet = model.rows()
    conv_dims = (dim, alpha, conv_dim if s["enable_conv"] else 0, conv_alpha)
    built = _walk(unet, s["unet_target_module"], s["unet_target_name"], s, conv_dims)
    clips = [rows() for rows in model.clips]
    text_args = (s["text_encoder_target_module"], s["text_encoder_target_name"], s, (dim, alpha, 0, 0))
    built_texts = [_walk(rows, *text_args) for rows in clips]
    t5 = _walk(t5_encoder(), *text_args)
    for layers in (built, *built_texts, t5):
        paths = [layer.path for layer in layers]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise PresetError(
                f"it reaches {twice[0]} twice (a target class and a target name, or nested target classes): "
                "LyCORIS builds the layer twice and asserts on the duplicate name",
                True,
            )
    if model.title in ("Flux", "Chroma"):  # FLUX.1's widths (Chroma's blocks alike)
        _boft_widths(built)
    for layer in built if applied[1] else []:  # apply_to on the denoiser cast as loaded: before T5 runs
        full_on_fp8(
            layer.path, layer.algo, f"`{layer.source}`" if layer.source else f"the algo={algo} network", fp8
        )
    if applied[0] and t5_wo_read:  # T5 encodes after apply_to through its modules (t5_wo_weight_read)
        _t5_full_output(t5)
    if applied[0] and t5_fp8:  # prepare_text_encoder_fp8 reads T5's first query weight after apply_to
        t5_first_query_full([layer.path for layer in t5 if layer.algo == "full"])
    idle = t5_idle if applied[0] else "LycorisNetworkKohya.apply_to drops them with network_train_unet_only"
    if t5 and idle:
        t5 = []  # built, never trained
    _t5_trains(t5, algo, model)
    # the walk's layers and the inventory in diffusers' names (a fused layer: each part)
    layers = {part: replace(layer, path=part) for layer in built for part in model.parts(layer.path)}
    rows = [(part, "Linear", kind) for path, _, kind in unet if kind for part in model.parts(path)]
    components = ["text_encoder", "text_encoder_2"][: len(clips)]
    # SD3: CLIP-G's own list where the file adapts other layers there than in CLIP-L (text_encoder_2_targets)
    text, text_2 = _text_targets(clips, [[layer.path for layer in built] for built in built_texts])
    if len(built_texts) == 2 and text and not built_texts[0]:
        # SD3's CLIP-L is CLIP-G's first 12 layers by paths and classes, so a walk adapts CLIP-L's layers
        # among CLIP-G's; one reaching CLIP-G's later layers alone builds no CLIP-L module
        text, text_2 = [], text
    if text_2 is not None and algo not in ("lora", "locon", "lokr", "loha"):
        raise PresetError(
            f"it adapts other layers in CLIP-L than in CLIP-G: dbspec's algo={algo} on {model.title} has one "
            "target list for both encoders",
            False,
        )
    linear = {p: layer for p, layer in layers.items() if layer.kind != "conv"}
    # the text encoders' layers and rows, T5-XXL's under its component when its modules train (train.t5)
    encoders = [
        *zip(components, clips, built_texts),
        *([(model.t5_component, t5_encoder(), t5)] if t5 else []),
    ]
    text_rows = [(f"{c}.{p}", cls, kind) for c, crow, _ in encoders for p, cls, kind in crow if p]
    found = Targets(
        _suffixes(set(linear), rows),
        text,
        _suffixes({p for p, layer in layers.items() if layer.kind == "conv"}, rows),
        None,
        layers,
        {
            f"{c}.{layer.path}": replace(layer, path=f"{c}.{layer.path}")
            for c, _, built in encoders
            for layer in built
        },
        [*rows, *_unseen_parts(rows, model)],
        text_rows,
    )
    # a Diag-OFT / BOFT network's LoCon / LoHa / LoKr / T-LoRA entries' network (was DBS403)
    hosted = oft_network_host(algo, found)
    host, written = "", algo  # written: what the user's network_args say
    if hosted is not None:
        host, found = hosted
        algo = host
    # the blocks' form: Diag-OFT's / BOFT's a block size (lycoris_maps._oft_blocks), IA^3's none
    kind = algo if algo in ("lokr", "loha", "dylora", "diag-oft", "boft", "ia3", "full", "tlora") else "lora"
    kinds = MIXED_FLOW  # blocks' `kind`: one module of one kind per fused Linear (Flux, SD3, Chroma)
    # bypass_mode: the adapter's `bypass` gives a LoCon / LoHa / LoKr network's Diag-OFT, BOFT, IA^3 and
    # DyLoRA entries their bypass forward (each fused Linear's parts their own rows of the one module's
    # output: lycoris_flux.py; a dropout stays DBS403, DBS402 beside a
    # Diag-OFT entry: lycoris_maps._oft_bypass_dropout), and an entry's own bypass_mode their block's
    # `bypass` (runtime/mixed_kinds.py set_block_bypass gives every part of a fused Linear its block's)
    bypass = kind in ("lora", "loha", "lokr", "dylora", "ia3", "tlora")
    try:
        blocks, text_blocks, inert = map_blocks(
            found,
            algo,
            kind,
            conv_dims,
            rs_lora,
            network,
            applied,
            kinds,
            bypass=bypass,
            entry_bypass=True,
            fp8=fp8,
        )
    except PresetError as exc:
        if not host:
            raise
        # the user wrote algo=boft / diag-oft: say which network it converts as (as network.py on SD)
        raise PresetError(
            f"{exc} (algo={written} beside {host} entries converts as an algo={host} network whose own "
            f"layers are algo = '{written}' entries, which LyCORIS builds alike)",
            exc.crash,
        ) from exc
    if algo == "ia3":  # IA3Module takes lora_dim and alpha and never reads them: an entry's own are inert
        own = {
            layer.source
            for layer in [*built, *(layer for built in built_texts for layer in built)]
            if layer.source and layer.algo == "ia3" and (layer.dim, layer.alpha) != (dim, alpha)
        }
        why = "its dim / alpha: IA3Module takes them and never reads them (one scale per output row)"
        inert += [(source, why) for source in sorted(own)]
    if t5:
        text_blocks = [*_t5_left(model.t5_component, t5, text_rows), *text_blocks]
    elif idle and _walk(t5_encoder(), *text_args):
        inert.append(("T5-XXL", f"the file reaches T5-XXL layers, whose LyCORIS modules never train: {idle}"))
    targets = found.denoiser
    if "proj_out" in layers and "proj_out" not in targets:
        # Flux's final layer Linear is diffusers' top-level proj_out, a suffix of each single block's linear2:
        # the target with a rank-0 block for the single blocks' the file leaves out
        targets = [*targets, "proj_out"]
        left = [p for p, _, _ in rows if p.endswith(".proj_out") and p not in layers]
        if left:
            indices = "|".join(p.split(".")[1] for p in left)
            # first: a map entry's dim for final_layer.linear is a `proj_out` suffix pattern, which would
            # give the left-out single blocks' proj_out that dim (the first matching block decides)
            blocks = [
                {
                    "pattern": rf"^single_transformer_blocks\.({indices})\.proj_out$",
                    "rank": 0,
                    "alpha": 1.0,
                    "_why": "the final layer's proj_out target: the single blocks' linear2 left out",
                },
                *blocks,
            ]
    norms = _norms(unet, [*clips, *([t5_encoder()] if t5 else [])], s, conv_dims, applied)
    clip_norms = tuple(_clip_norms(rows, s, applied) for rows in clips)
    modules = {
        "lora_unet_" + layer.path.replace(".", "_"): [("unet", p, layers[p]) for p in model.parts(layer.path)]
        for layer in built
    }
    prefixes = [*(f"lora_te{i + 1}_" for i in range(len(clips))), model.t5_prefix]  # LyCORIS's, T5's last
    for (component, _, encoder), prefix in zip(encoders, prefixes):
        for layer in encoder:
            path = f"{component}.{layer.path}"
            modules[prefix + layer.path.replace(".", "_")] = [("text", path, found.text[path])]
    return FlowFile(
        targets,
        text,
        blocks,
        inert,
        found.convs,
        text_blocks,
        norms,
        clip_norms,
        text_2,
        bool(t5),
        modules,
        host,
    )


# FLUX.1's (and Chroma's) Linear widths by kohya's module path suffix (library/flux_models.py, 3072 wide)
_FLUX1_WIDTHS = {"qkv": 9216, "linear1": 21504, "proj": 3072, "mlp.0": 12288, "mlp.2": 3072, "linear2": 3072}
_FLUX1_WIDTHS |= {"mod.lin": 18432, "modulation.lin": 9216, "img_in": 3072, "txt_in": 3072}


def _boft_widths(built) -> None:
    """PresetError (kohya stops) where a `boft` layer's FLUX.1 width has no split by its dim: LyCORIS's
    power2factorization finds no even block size up to it leaving a power of two, and ButterflyOFTModule
    raises ValueError when create_network builds it (a fused Linear's width is the stacked one)."""
    from dbspec.convert.kohya.lycoris_maps import _algo
    from dbspec.plan.boft import power2_factorization

    for layer in built:
        if _algo(layer.algo) != "boft" or layer.kind != "linear":
            continue
        width = next((w for end, w in _FLUX1_WIDTHS.items() if layer.path.endswith(end)), 0)
        if width and not power2_factorization(width, int(layer.dim))[1]:
            fits = next(b for b in range(2, width + 1, 2) if power2_factorization(width, b)[1])
            raise PresetError(
                f"its boft layer {layer.path} ({width} rows on FLUX.1) has no split by its dim {layer.dim}: "
                "LyCORIS's power2factorization needs an even block size <= dim with width / block a power of "
                f"two (here {fits} or more), and ButterflyOFTModule raises ValueError",
                True,
            )


def _clip_norms(rows: list[Row], s: dict[str, Any], applied: tuple[bool, bool]) -> tuple[str, ...]:
    """The suffixes (past `text_model`) that pick exactly the LayerNorms of one CLIP encoder the walk gives a
    NormModule, among its LayerNorms; () without any."""
    if not applied[0]:
        return ()
    walked = _walk(
        rows, s["text_encoder_target_module"], s["text_encoder_target_name"], s, (0, 0, 0, 0), True
    )
    norms = [r for r in rows if r[1] == "LayerNorm"]
    chosen = {layer.path for layer in walked if layer.kind == "norm"} & {r[0] for r in norms}
    return tuple(_suffixes(chosen, norms, skip=1)) if chosen else ()


def _unseen_parts(rows: list[Row], model: FlowModel) -> list[Row]:
    """The parts of each fused Linear one block beyond the model's last (lycoris_maps.UNSEEN rows): a block
    pattern picking some fused layers' parts names them by their block index, so that no deeper model's fused
    layer has some parts in the block and others not (compiler/fused.py checks every index)."""
    family = {"Flux": "flux", "SD3": "sd3", "Chroma": "chroma"}[model.title]
    out: list[Row] = []
    for group in family_spec(family).fused_projections:
        indices = [int(m.group(1)) for p, _, _ in rows if (m := re.match(rf"{group.blocks}\.(\d+)\.", p))]
        if indices:
            out += [(f"{group.blocks}.{max(indices) + 1}.{part}", UNSEEN, "linear") for part in group.parts]
    return out


def _t5_trains(t5: list, algo: str, model: FlowModel) -> None:
    """PresetError where T5-XXL's LyCORIS modules train (`t5`: its layers the file reaches) and dbspec trains
    no T5 adapter beside LyCORIS (train.t5 takes every algo lycoris.kohya builds: rules.t5_adapter_fits)."""
    if not t5:
        return
    where = f"it adapts {len(t5)} T5-XXL layer(s) (e.g. {t5[0].path}, LyCORIS's {model.t5_prefix} modules)"
    if not model.t5_component:
        raise PresetError(f"{where}: dbspec trains no T5-XXL LoRA beside LyCORIS on {model.title}", False)


def _t5_full_output(t5: list) -> None:
    """PresetError (kohya stops) where a FullModule lands on T5-XXL's gated-MLP output Linear
    (`DenseReluDense.wo`, the network's algo=full or a map entry's): t5_full_output_why."""
    wo = [layer.path for layer in t5 if layer.algo == "full" and layer.path.endswith("DenseReluDense.wo")]
    if wo:
        raise PresetError(f"it gives T5-XXL's {wo[0]} {t5_full_output_why(len(wo))}", True)


def t5_wo_weight_read(a: dict[str, Legacy]) -> bool:
    """Whether kohya's T5-XXL encodes after apply_to with LyCORIS's T5 modules in place through transformers'
    T5DenseGatedActDense.forward, which reads `self.wo.weight` (t5_full_output_why): apply_to keeps T5's
    modules (no network_train_unet_only), T5 encodes while training (outputs not cached: they are cached
    before the network is built and T5 waits on the CPU), and --fp8_base does not cast T5 (with it and no
    --fp8_base_unet, flux_train_network.py's / sd3_train_network.py's prepare_text_encoder_fp8 gives every
    T5DenseGatedActDense a forward of its own that calls `wo` without reading its weight: no AttributeError,
    lycoris-lora 4.1.3 on the tiny T5, scratch run)."""
    from dbspec.convert.kohya.train import text_outputs_cached

    fp8_t5 = given(a, "fp8_base") and not given(a, "fp8_base_unet")
    return not given(a, "network_train_unet_only") and text_outputs_cached(a) is None and not fp8_t5


def t5_full_output_why(count: int) -> str:
    """Why a LyCORIS FullModule on T5-XXL's gated-MLP output Linear (`DenseReluDense.wo`; a preset file's or a
    --network_weights file's `diff`) stops kohya wherever apply_to keeps T5's modules: FullModule.apply_to
    deletes the Linear's `weight` (it holds the trained copy), and transformers' T5DenseGatedActDense.forward
    reads `self.wo.weight` before calling it, so T5's first encoding raises AttributeError (lycoris-lora 4.1.3
    on the tiny T5-XXL). The message's tail after the module's name."""
    return (
        f"({count} gated-MLP output Linear(s)) LyCORIS's FullModule, whose apply_to deletes the Linear's "
        "weight, which transformers' T5DenseGatedActDense reads (`self.wo.weight`) in every forward: kohya's "
        "first T5-XXL encoding raises AttributeError"
    )


def _t5_left(component: str, t5: list, text_rows: list[Row]) -> list[dict[str, Any]]:
    """A rank-0 text-encoder block for T5-XXL's Linears the file leaves out (train.t5 targets all of them:
    q, k, v, o, wi_0, wi_1, wo)."""
    built = {f"{component}.{layer.path}" for layer in t5}
    left = {p for p, _, kind in text_rows if kind and p.startswith(component + ".") and p not in built}
    if not left:
        return []
    why = "kohya lycoris.kohya: T5-XXL's Linears the preset file leaves out (train.t5 adapts every one)"
    return [{"pattern": _pattern(left, text_rows), "rank": 0, "alpha": 1.0, "_why": why}]


def _norms(
    unet: list[Row], clips: list[list[Row]], s: dict[str, Any], dims, applied: tuple[bool, bool]
) -> list[tuple[str, str, str]]:
    """The modules train_norm would give a NormModule that apply_to keeps: the walk's norms, with their
    component and class."""
    out = []
    for component, rows, classes, names, keep in (
        ("denoiser", unet, s["unet_target_module"], s["unet_target_name"], applied[1]),
        *(
            ("clip", rows, s["text_encoder_target_module"], s["text_encoder_target_name"], applied[0])
            for rows in clips
        ),
    ):
        if not keep:
            continue
        cls = {path: c for path, c, _ in rows}
        for layer in _walk(rows, classes, names, s, dims, norms=True):
            if layer.kind == "norm":
                out.append((component, layer.path, cls[layer.path]))
    return out


SD3_MODEL = FlowModel(
    "SD3",
    mmdit,
    sd3_parts,
    (lambda: clip_text(12, projection=True), lambda: clip_text(32, projection=True)),
    "lora_te3_",
    "text_encoder_3",
)
FLUX_MODEL = FlowModel(
    "Flux",
    flux_model,
    diffusers_parts,
    (lambda: clip_text(12),),
    "lora_te2_",
    "text_encoder_2",
)
# --model_type chroma: kohya's Chroma (chroma_rows.py) with the dummy CLIP-L (no Linear) and T5-XXL
CHROMA_MODEL = FlowModel(
    "Chroma",
    chroma_model,
    chroma_parts,
    (dummy_clip_l,),
    "lora_te2_",
    "text_encoder",  # dbspec's Chroma loads T5-XXL alone, its first text encoder
)


def _t5_idle(a: dict[str, Legacy], file: bool = False) -> str:
    """Why T5-XXL's LyCORIS modules are left out though apply_to keeps them, or "": with text-encoder
    outputs cached (train_t5xxl off; on, the script raises: lycoris_flux._switches) flux_train_network.py /
    sd3_train_network.py encode with CLIP alone over the cache, T5-XXL never runs and its modules get no
    gradient. At text_encoder_lr 0 LyCORIS's prepare_optimizer_params leaves the text group out while T5
    still encodes under grad: train.t5_idle keeps them (idle_text.put_lycoris_t5) under a clip or
    (`file`: a --network_weights file's, loaded into them) whatever the clip; fresh ones without a clip
    leave T5's output the base's and nothing reads their gradients, so T5 frozen is the same run."""
    from dbspec.convert.kohya.train import lora_text_encoder_lr, text_outputs_cached

    if text_outputs_cached(a) is not None:
        return "text-encoder outputs are cached, so T5-XXL never encodes while training (no gradient)"
    if lora_text_encoder_lr(a).value == 0 and not file and not a["max_grad_norm"].value:
        return (
            "text_encoder_lr is 0, so LyCORIS leaves the text encoders' group out of the optimizer, and with "
            "max_grad_norm 0 nothing reads their gradients (fresh, they leave T5's output the base's)"
        )
    return ""


def t5_fp8_prepared(a: dict[str, Legacy]) -> bool:
    """Whether train_network.py hands T5-XXL to prepare_text_encoder_fp8 after apply_to: --fp8_base without
    --fp8_base_unet, T5-XXL on the device (outputs not cached: cached, it waits on the CPU, which the cast
    skips)."""
    from dbspec.convert.kohya.train import text_outputs_cached

    fp8_t5 = given(a, "fp8_base") and not given(a, "fp8_base_unet")
    return fp8_t5 and text_outputs_cached(a) is None


def flow_preset_file(
    preset: str, algo: str, a: dict[str, Legacy], paths, conv: Conversion, family: str | None, title: str
) -> FlowFile | None:
    """The preset file `preset` on kohya's Flux (Chroma's with `family` "chroma") or SD3 (`title`) for
    map_lycoris_flow, or None (reported: DBS402 where kohya stops, DBS403 where dbspec cannot express it)."""
    args = a["network_args"]
    legacy = Legacy(key=f"{args.key} preset", value=preset, source=args.source)
    model = SD3_MODEL if title == "SD3" else CHROMA_MODEL if family == "chroma" else FLUX_MODEL
    data = load_preset_file(preset, paths, args, conv)
    if data is None:
        return None
    kwargs, _ = parse_network_args(args.value or [])
    dim = a["network_dim"].value if a["network_dim"].value is not None else 4
    alpha = float(a["network_alpha"].value)
    # LyCORIS's create_network: conv_dim / conv_alpha default to network_dim / network_alpha (0 too)
    conv_dim = int(kwargs.get("conv_dim", dim) or dim)
    conv_alpha = float(kwargs.get("conv_alpha", alpha) or alpha)
    rs_lora = _str_bool(kwargs.get("rs_lora", "false"))
    try:
        found = flux_preset_file(
            data,
            algo,
            (dim, alpha, conv_dim, conv_alpha),
            _module_options(kwargs, a["network_dropout"]),
            rs_lora,
            model,
            (not given(a, "network_train_unet_only"), not given(a, "network_train_text_encoder_only")),
            _t5_idle(a, file=bool(a["network_weights"].value)),
            t5_wo_weight_read(a),
            fp8_denoiser(a, flow=True),
            t5_fp8_prepared(a),
        )
    except PresetError as exc:
        why = f"the LyCORIS preset file: {exc}"
        if exc.crash:
            conv.invalid(legacy.key, preset, args.source, why)
        else:
            conv.unsupported(legacy, why)
        return None
    norms = _str_bool(kwargs.get("train_norm", "false")) and any(found.clip_norms)  # CLIP's NormModules
    if not (found.denoiser or found.text or found.convs or found.text_2 or found.t5 or norms):
        conv.invalid(
            legacy.key,
            preset,
            args.source,
            f"the LyCORIS preset file matches no layer of kohya's {model.title} or its CLIP encoders: the "
            "network has no module and kohya has nothing to train (its optimizer gets an empty parameter "
            "list)",
        )
        return None
    for key, why in found.inert:
        conv.ignored(Legacy(key=f"{args.key} preset {key}", value=preset, source=args.source), why)
    return found

"""kohya `--network_args` for networks.lora (conv_dim / conv_alpha: LoCon; loraplus_*_ratio: LoRA+) and
LyCORIS's lycoris.kohya network (algo = lora/locon, loha, lokr; conv_dim, conv_alpha, preset, dora_wd,
wd_on_output, factor, decompose_both, unbalanced_factorization, full_matrix, rank_dropout, module_dropout,
use_tucker, use_scalar; rank_dropout_scale, which it never reads, is ignored) into [adapter]. kohya passes
each "key=value" to the network as a string."""

from __future__ import annotations

import math
from typing import Any

from dbspec.convert.kohya.lycoris_flow_weights import locon_dora
from dbspec.convert.kohya.file_ranks import (
    TEXT_COMPONENTS,
    common_pair,
    denoiser_names,
    per_module_text_blocks,
    sd_blocks,
)
from dbspec.compiler.lora_file import read_lora_file
from dbspec.compiler.init_file import other_axis_doras
from dbspec.compiler.safetensors_header import ModelFileError
from dbspec.compiler.weight_file import read_weights_header
from dbspec.convert.common.core import DIFFERS, Conversion, Legacy
from dbspec.convert.kohya.blocks import block_lr_weights, kohya_blocks, kohya_conv
from dbspec.convert.kohya.lora_fa_blocks import NoUnetModules, lora_fa_blocks
from dbspec.convert.kohya.dylora import lycoris_dylora, lycoris_dylora_alphas
from dbspec.convert.kohya.dylora_preset_alphas import PRESET_LAYERS
from dbspec.convert.kohya.file_alpha import map_file_alphas
from dbspec.convert.kohya.lycoris_file_alpha import map_lycoris_file_alphas
from dbspec.convert.kohya.loraplus import loraplus as _loraplus
from dbspec.convert.kohya.lycoris_file import (
    BUILTIN_TABLES,
    NormTargets,
    PresetError,
    Targets,
    preset_norms,
    preset_targets,
    read_preset,
)
from dbspec.convert.kohya.lycoris_fp8 import forward_on_fp8, fp8_denoiser, full_on_fp8, given
from dbspec.convert.kohya.lycoris_maps import BYPASS_BLOCKS, MIXED_SD, applied_constraint, map_blocks
from dbspec.convert.kohya.network_reads import constraint_key, shadowed_constraint, unread_network_arg
from dbspec.convert.kohya.entry_args import entries_lokr_args, entries_scalar_rs_lora, host_bypass_dropout
from dbspec.convert.kohya.oft_entries import entries_constraint, entries_rescaled, oft_network_host
from dbspec.convert.kohya.targets import KOHYA_TEXT_TARGETS, KOHYA_UNET_TARGETS, RESNET_LINEAR
from dbspec.convert.kohya.weights_file import (
    lora_builds_nothing,
    lycoris_builds_nothing,
    not_safetensors,
    report_weights,
)
from dbspec.families import family_spec
from dbspec.spec.model import KOHYA_CONV_TARGETS

_ALGOS = {
    "lora": "lora",
    "locon": "lora",
    "loha": "loha",
    "lokr": "lokr",
    "full": "full",
    "ia3": "ia3",
    "diag-oft": "diag-oft",
    "boft": "boft",
    "glora": "glora",
    "dylora": "dylora",
    "tlora": "tlora",
}
# LyCORIS algos acting on each layer's weight as a whole (no low-rank factors, rank or alpha)
_WHOLE_LAYER_KINDS = ("full", "ia3", "diag-oft", "boft")

# LyCORIS presets dbspec can express (lycoris-lora 4.1.3 lycoris/config.py, on the U-Net kohya trains: its
# SD 1.x/2.x U-Net, library/original_unet.py, names its classes as diffusers does but for the attention,
# `CrossAttention`): (denoiser targets, text-encoder targets, adapts 3x3 convolutions). `full` and `full-lin`
# name the time embedding's linears, `attn-mlp` takes them through the `TimestepEmbedding` class; without
# conv_dim (`full-lin`) LyCORIS still adapts 1x1 convolutions (the ResNets' conv_shortcut) at the rank.
# Known gap: on kohya's SD 1.x / 2.x U-Net lycoris-lora 4.1.3's `full`, `full-lin` and `unet-only`
# (TimestepEmbedding class and time_embedding names both) build the time embedding's Linears twice and
# create_network asserts, so kohya stops (tests/runtime/test_lycoris_presets_kohya_sd.py); these are
# converted as older LyCORIS builds them.
_TIME_EMBEDDING = ["time_embedding.linear_1", "time_embedding.linear_2"]
# the U-Nets' convolutions wider than 1x1 (diffusers names; conv_shortcut and SD 1.x/2.x's proj_in / proj_out
# are 1x1): LyCORIS gives them conv_dim where a 1x1 takes network_dim
KXK_CONVS = r"(?:^|\.)(?:conv_in|conv_out|conv1|conv2|(?:down|up)samplers\.\d+\.conv)$"
_TWICE_ON_SD = ("full", "full-lin", "unet-only")  # the known gap above: a DBS404 warning names it
_PRESETS = {
    "full": (
        [*KOHYA_UNET_TARGETS, *RESNET_LINEAR, *_TIME_EMBEDDING],
        KOHYA_TEXT_TARGETS,
        [*KOHYA_CONV_TARGETS, "conv_in", "conv_out"],
    ),
    "full-lin": ([*KOHYA_UNET_TARGETS, *RESNET_LINEAR, *_TIME_EMBEDDING], KOHYA_TEXT_TARGETS, []),
    "attn-mlp": ([*KOHYA_UNET_TARGETS, *_TIME_EMBEDDING], KOHYA_TEXT_TARGETS, []),
    "attn-only": (["to_q", "to_k", "to_v", "to_out.0"], ["q_proj", "k_proj", "v_proj", "out_proj"], []),
    # the U-Net-only presets: `full` and `attn-mlp`'s U-Net lists with no text-encoder class (the network has
    # no text-encoder module); `unet-convblock-only` takes the ResNet, Downsample2D and Upsample2D classes
    # (their linears and 1x1 shortcuts, with convolutions on their 3x3 convolutions) and conv_in / conv_out
    "unet-only": (
        [*KOHYA_UNET_TARGETS, *RESNET_LINEAR, *_TIME_EMBEDDING],
        [],
        [*KOHYA_CONV_TARGETS, "conv_in", "conv_out"],
    ),
    "unet-transformer-only": ([*KOHYA_UNET_TARGETS, *_TIME_EMBEDDING], [], []),
    "unet-convblock-only": (list(RESNET_LINEAR), [], [*KOHYA_CONV_TARGETS, "conv_in", "conv_out"]),
}
# kohya's SDXL U-Net (library/sdxl_original_unet.py) has no TimestepEmbedding class (its time embedding is an
# nn.Sequential, `time_embed`) and names its first and last convolutions `input_blocks.0.0` / `out.2`: the
# presets' time-embedding and conv_in / conv_out names match nothing there.
_ORIGINAL_UNET_MISSES = {*_TIME_EMBEDDING, "conv_in", "conv_out"}


def lycoris_preset(preset: str, original_names: bool) -> tuple[list[str], list[str], list[str]]:
    """The dbspec targets of a LyCORIS preset: (denoiser, text encoder, 3x3 convolutions); `original_names`:
    the family's kohya U-Net is the original (SDXL) layout."""
    unet, text, convs = _PRESETS[preset]
    if original_names:
        unet = [t for t in unet if t not in _ORIGINAL_UNET_MISSES]
        convs = [t for t in convs if t not in _ORIGINAL_UNET_MISSES]
    return unet, text, convs


# lycoris-lora 4.1.3 lycoris/config.py: the names create_network takes as built-in presets (any other
# preset is read as a TOML file).
LYCORIS_BUILTIN_PRESETS = (
    "full",
    "full-lin",
    "attn-mlp",
    "attn-only",
    "unet-only",
    "unet-transformer-only",
    "unet-convblock-only",
    "ia3",
)
IA3_PRESET_BUILDS_NOTHING = (
    "lycoris-lora 4.1.3's ia3 preset names its layers (to_k, to_v, ff.net.2; k_proj, v_proj, mlp.fc2) as "
    "patterns re.match tests from the start of each full module path (down_blocks.0...., "
    "text_model.encoder....), so it matches no layer: the network has no module and kohya has nothing to "
    "train (its optimizer gets an empty parameter list)"
)


def load_preset_file(preset: str, paths, args: Legacy, conv: Conversion) -> dict[str, Any] | None:
    """The table of a LyCORIS preset file (`preset`, read as LyCORIS's read_preset reads it), or None
    (reported: not on this machine, unreadable, or a file LyCORIS refuses)."""
    legacy = Legacy(key=f"{args.key} preset", value=preset, source=args.source)
    local = paths.local(preset) if paths is not None else None
    if local is None:
        conv.unreadable(legacy, "a LyCORIS preset file that is not on this machine (a Windows path)")
        return None
    try:
        data = read_preset(local)
    except OSError as exc:
        conv.unreadable(
            legacy,
            f"LyCORIS reads a preset that is none of its names ({', '.join(LYCORIS_BUILTIN_PRESETS)}) as a "
            f"TOML file, and `{local}` cannot be read here: {exc.strerror or exc}",
        )
        return None
    except PresetError as exc:
        conv.invalid(legacy.key, preset, args.source, f"the LyCORIS preset file: {exc}")
        return None
    return data


def preset_file_targets(
    preset: str,
    algo: str,
    dims,
    family: str | None,
    paths,
    args: Legacy,
    conv: Conversion,
    train_norm: bool = False,
) -> Targets | None:
    """The targets and layers of a LyCORIS preset file, or None (reported); `dims`: the network's (dim,
    alpha, conv_dim, conv_alpha). `train_norm`: the norms the file reaches are modules too (Targets.norms)."""
    data = load_preset_file(preset, paths, args, conv)
    if data is None:
        return None
    legacy = Legacy(key=f"{args.key} preset", value=preset, source=args.source)
    facts = family_spec(family).kohya if family else None
    # kohya's SD 1.x / 2.x U-Net (library/original_unet.py) keeps diffusers' paths, its SDXL U-Net
    # (library/sdxl_original_unet.py, sdxl_train_network.py; kohya has no refiner script) the original
    # layout's; the flow models' networks differ in classes and paths
    if facts is None or facts.network != "networks.lora":
        conv.unsupported(
            legacy,
            "dbspec converts LyCORIS preset files for SD 1.x / 2.x and SDXL, whose kohya models it knows "
            f"layer by layer; {family or 'this model'}'s kohya model differs in its module classes and paths",
        )
        return None
    try:
        found = preset_targets(data, algo, facts.v2, dims, facts.original_unet_names)
        if train_norm:
            found = found._replace(norms=preset_norms(data, facts.v2, facts.original_unet_names))
    except PresetError as exc:
        if exc.crash:
            conv.invalid(legacy.key, preset, args.source, f"the LyCORIS preset file: {exc}")
        else:
            conv.unsupported(legacy, f"the LyCORIS preset file: {exc}")
        return None
    unet, text, convs = found.denoiser, found.text_encoder, found.convs
    norms = found.norms or NormTargets([], [], [], [])
    unet_norms, text_norms = bool(norms.unet_paths), any(norms.text_paths)
    if not (unet or text or convs or found.text_encoder_2 or unet_norms or text_norms):
        conv.invalid(
            legacy.key,
            preset,
            args.source,
            "the LyCORIS preset file matches no layer: the network has no module and kohya has nothing to "
            "train (its optimizer gets an empty parameter list)",
        )
        return None
    if not (unet or convs or unet_norms):  # a text-encoder-only network: the U-Net is not adapted
        conv.put(
            ("train", "denoiser"),
            False,
            "kohya lycoris.kohya: the LyCORIS preset file matches no U-Net layer, so the network has no "
            "U-Net module",
        )
    return found


def _module_options(kwargs: dict[str, str], network_dropout: Legacy | None = None) -> dict[str, Any]:
    """The module options lycoris-lora 4.1.3's create_network hands every module (LycorisNetworkKohya's
    root kwargs and use_tucker), as the modules read them; a preset map entry giving the same value changes
    nothing. Also the `dropout` (else --network_dropout, `network_dropout`) and `rank_dropout` rates, which
    decide whether an entry's bypass_mode or rank_dropout_scale changes anything."""
    out: dict[str, Any] = {"use_tucker": lycoris_tucker(kwargs), "rank_dropout_scale": False}
    given = network_dropout.value if network_dropout is not None else None
    out["dropout"] = _rate((kwargs["dropout"] if "dropout" in kwargs else given) or 0.0)
    out["rank_dropout"] = _rate(kwargs.get("rank_dropout") or 0.0)
    for key in ("use_scalar", "bypass_mode", "rs_lora", "full_matrix", "unbalanced_factorization"):
        out[key] = _str_bool(kwargs.get(key, "false"))
    out["weight_decompose"] = _str_bool(kwargs.get("dora_wd", "false"))
    out["wd_on_out"] = _str_bool(kwargs.get("wd_on_output", "true"))
    out["decompose_both"] = bool(kwargs.get("decompose_both", False))  # passed raw, tested for truth
    # Diag-OFT / BOFT (create_network's `float(kwargs.get("constraint", None) or 0)` and str_bool)
    out["constraint"] = _rate(kwargs.get(constraint_key(kwargs)) or 0.0)  # `constrain` too
    out["rescaled"] = _str_bool(kwargs.get("rescaled", "false"))
    # IA^3 (DyLoRA takes it and never uses it): create_network never hands it, so every module keeps its
    # default, the output side (an entry's own true: its block's `on_input`, lycoris_maps._input_side)
    out["train_on_input"] = False
    # T-LoRA: create_network hands TLoraModule neither, which starts from its defaults (the principal SVD)
    out["sig_type"], out["use_data_init"] = "principal", True
    try:  # DyLoRA (create_network's `int(kwargs.get("block_size", None) or 4)`)
        out["block_size"] = int(kwargs.get("block_size") or 4)
    except (TypeError, ValueError):
        out["block_size"] = 4
    factor = str(kwargs.get("factor", "-1")).strip()
    if factor.lstrip("-").isdigit():
        out["factor"] = int(factor)
    return out


def _rate(text) -> float:
    """A dropout rate; one float() rejects counts as set (its own row reports it)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return 1.0


def parse_network_args(items: list[str]) -> tuple[dict[str, str], list[str]]:
    """kohya's split: "key=value" pairs, values kept as strings (the network parses them)."""
    values: dict[str, str] = {}
    problems = []
    for item in items:
        key, eq, text = str(item).partition("=")
        if not eq:
            problems.append(f"`{item}` is not key=value")
            continue
        values[key.strip()] = text.strip()
    return values, problems


def map_network(
    module: Legacy,
    args: Legacy,
    dim: int,
    alpha: float,
    conv: Conversion,
    original_names: bool = False,
    dropout: Legacy | None = None,
    paths=None,
    family: str | None = None,
    applied: tuple[bool, bool] = (True, True),
    fp8: str = "",
) -> str | None:
    """Put [adapter] kind, targets and the network_args; the kind, or None when it has no dbspec
    equivalent. `original_names`: the family's kohya LoRA names follow the original UNet layout (SDXL), which
    numbers kohya's blocks differently. `dropout`: --network_dropout, which train_network.py hands LyCORIS as
    its `dropout` argument unless network_args has one. `paths` and `family` read a LyCORIS preset file;
    `applied`: whether the network's apply_to keeps its (text-encoder, U-Net) modules (train_network.py:
    not network_train_unet_only, not network_train_text_encoder_only); `fp8`: when kohya's --fp8_base casts
    the U-Net (lycoris_fp8.fp8_denoiser: a preset file's layers where that stops kohya)."""
    try:
        return _map_network(
            module, args, dim, alpha, conv, original_names, dropout, paths, family, applied, fp8
        )
    except ValueError as exc:
        conv.invalid(args.key, args.value, args.source, f"a network argument is not valid ({exc})")
        return None


def _map_network(
    module: Legacy,
    args: Legacy,
    dim: int,
    alpha: float,
    conv: Conversion,
    original_names: bool,
    dropout: Legacy | None,
    paths=None,
    family: str | None = None,
    applied: tuple[bool, bool] = (True, True),
    fp8: str = "",
) -> str | None:
    kwargs, problems = parse_network_args(args.value or [])
    for problem in problems:
        conv.invalid(args.key, args.value, args.source, problem)
    lycoris = module.value == "lycoris.kohya"
    algo = kwargs.pop("algo", "lora").lower() if lycoris else "lora"
    if algo not in _ALGOS:
        conv.unsupported(
            args,
            f"LyCORIS algo={algo} has no dbspec equivalent "
            "(lora, locon, loha, lokr, full, ia3, diag-oft, boft, glora, dylora, tlora do)",
        )
        return None
    kind = _ALGOS[algo]
    if lycoris:  # a `constraint` beside its deprecated name `constrain`, which replaces it
        shadowed_constraint(kwargs, args, conv)
    conv.put(("adapter", "kind"), kind, conv.comment(module, f"algo={algo}" if lycoris else ""))
    conv.record(module, "mapped", "adapter.kind")
    unsupported: dict[str, str] = {}
    put: dict[str, Any] = {}
    targets_note = ""
    file_convs = False  # a preset file's convolutions: with conv_dim 0 only those a map entry gives a dim
    own_convs = None  # a preset file's k x k convolutions of the network's own algorithm (None: every one)
    train_norm = None  # LyCORIS's train_norm, on (its str_bool)
    if lycoris and _str_bool(kwargs.get("train_norm", "false")):
        train_norm = Legacy(key=f"{args.key} train_norm", value=kwargs.pop("train_norm"), source=args.source)
    norm_table = None  # the preset's table that decides which norms train_norm reaches
    if lycoris:
        preset = kwargs.pop("preset", "full")
        # LyCORIS: conv_dim / conv_alpha default to network_dim / network_alpha.
        conv_dim = _int(kwargs.pop("conv_dim", "") or dim)
        conv_alpha = _float(kwargs.pop("conv_alpha", "") or alpha)
        if preset == "ia3":
            conv.invalid(f"{args.key} preset", preset, args.source, IA3_PRESET_BUILDS_NOTHING)
            return None
        if preset not in _PRESETS and preset not in LYCORIS_BUILTIN_PRESETS:
            dims = (dim, alpha, conv_dim, conv_alpha)
            found = preset_file_targets(preset, algo, dims, family, paths, args, conv, train_norm is not None)
            if found is None:
                return None
            # a Diag-OFT / BOFT network's LoCon / LoHa / LoKr / T-LoRA entries: theirs (was DBS403)
            written = algo
            hosted = oft_network_host(algo, found)
            if hosted is not None:
                host, found = hosted
                note = f"algo={algo}: its preset file's {host} entries' kind, its own layers {algo} blocks"
                algo, kind = host, _ALGOS[host]
                conv.put(("adapter", "kind"), kind, conv.comment(module, note))
            conv.facts[PRESET_LAYERS] = found  # which layers it builds (a DyLoRA alpha file: dylora.py)
            norm_table = found.norms
            unet, text, conv_targets = found.denoiser, found.text_encoder, found.convs
            file_convs = bool(conv_targets)
            # the k x k convolutions of the network's own algorithm (a T-LoRA network's: kohya stops, _tlora)
            own_convs = sorted(
                {p.rsplit(".", 1)[-1] for p, x in found.unet.items() if x.kind == "conv" and x.algo == algo}
            )
            if found.text_encoder_2 is not None:  # SDXL's two encoders adapt different layers
                put["text_encoder_2_targets"] = found.text_encoder_2
            targets_note = f"kohya lycoris.kohya: the layers LyCORIS builds for preset {preset}"
            try:  # the file's module_algo_map / name_algo_map: per-layer ranks
                rs_lora = _str_bool(kwargs.get("rs_lora", "false"))
                put["_blocks"], put["_text_blocks"], inert = map_blocks(
                    found,
                    algo,
                    _ALGOS[algo],
                    dims,
                    rs_lora,
                    _module_options(kwargs, dropout),
                    applied,
                    kinds=MIXED_SD,
                    bypass=True,  # the adapter's `bypass` for its Diag-OFT / BOFT / DyLoRA blocks
                    entry_bypass=True,  # and their entries' own bypass_mode (a block's `bypass`)
                    unet=True,  # SD 1.x/2.x, SDXL (_mixed_kinds: the network's use_tucker beside other kinds)
                    fp8=fp8,
                )
            except PresetError as exc:
                legacy = Legacy(key=f"{args.key} preset", value=preset, source=args.source)
                why = f"the LyCORIS preset file: {exc}"
                if hosted is not None:  # the user wrote algo=boft / diag-oft: which network it converts as
                    why += f" (algo={written} beside {algo} entries converts as an algo={algo} network whose "
                    why += f"own layers are algo = '{written}' entries, which LyCORIS builds alike)"
                if exc.crash:  # an entry LokrModule cannot read
                    conv.invalid(legacy.key, preset, args.source, why)
                else:
                    conv.unsupported(legacy, why)
                return None
            for key, why in inert:
                conv.ignored(Legacy(key=f"{args.key} preset {key}", value=preset, source=args.source), why)
        else:
            if preset not in _PRESETS:
                unsupported["preset"] = preset
                preset = "full"
            unet, text, conv_targets = lycoris_preset(preset, original_names)
            if preset in _TWICE_ON_SD and not original_names and applied[1]:
                conv.warn(
                    DIFFERS,
                    f"kohya lycoris.kohya preset {preset} on SD 1.x/2.x: lycoris-lora 4.x lists the time "
                    "embedding both by its TimestepEmbedding class and by name, builds its Linears twice and "
                    "stops (AssertionError: duplicated lora name); converted as lycoris-lora 3.2 and earlier "
                    "build it, each once",
                    key=f"{args.key} preset",
                    help="the dbspec run trains what the older LyCORIS trained; with lycoris-lora 4.x kohya "
                    "needs another preset (attn-mlp, or a preset file)",
                )
            if train_norm is not None:
                v2 = bool(family) and family_spec(family).kohya.v2
                norm_table = preset_norms(BUILTIN_TABLES[preset], v2, original_names)
    else:
        unet, text = KOHYA_UNET_TARGETS, KOHYA_TEXT_TARGETS
        # networks.lora: conv_alpha defaults to 1.0; any conv_dim, 0 too (was converted without the ResNet
        # linears), also adapts the ResNet linears and 1x1 shortcuts at network_dim
        alpha_text = kwargs.get("conv_alpha")
        given_conv_dim, given_conv_alpha = kohya_conv(kwargs)
        block_conv_alphas = "conv_block_alphas" in kwargs  # the blocks' own, in conv_alpha's place
        if module.value == "networks.lora_fa":  # its older block code (SD 1.x block numbers only)
            found = _lora_fa_blocks(
                kwargs, original_names, dim, alpha, given_conv_dim, given_conv_alpha, args, conv
            )
            if found is False:
                return None
        else:
            found = kohya_blocks(kwargs, original_names, dim, alpha, given_conv_dim, given_conv_alpha)
        resnets = given_conv_dim is not None
        conv_dim = given_conv_dim or 0
        conv_alpha = given_conv_alpha if resnets else 1.0
        if found is not None:
            blocks, block_conv_dim, block_conv_alpha = found
            if block_conv_dim is not None:  # conv_block_dims without conv_dim: kohya scans the ResNets too
                conv_dim, conv_alpha, resnets = block_conv_dim, block_conv_alpha or 1.0, True
            put["_blocks"] = blocks
        conv_targets = KOHYA_CONV_TARGETS if resnets else []
        if conv_targets:
            unet = [*unet, *RESNET_LINEAR]
        built = conv_dim > 0 or any(b.get("conv_rank") for b in put.get("_blocks", ()))
        if alpha_text is not None and not (built and (found is None or not block_conv_alphas)):
            _inert_conv_alpha(alpha_text, args, conv)
    put["denoiser_targets"], put["text_encoder_targets"] = list(unet), list(text)
    entries = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
    if lycoris and kind not in ("diag-oft", "boft"):  # the network's constraint and rescaled: its OFT
        entries_constraint(kwargs, entries, args, conv)  # entries' blocks' alpha and rescaled
        entries_rescaled(kwargs, entries, args, conv)
    if lycoris and kind != "lokr":  # the network's LoKr split and switches: its LoKr entries' blocks'
        entries_lokr_args(kwargs, entries, args, conv)
    if lycoris and kind in ("full", "ia3", "dylora", "tlora"):  # no scalar of their own: their entries'
        entries_scalar_rs_lora(kwargs, entries, args, conv)  # blocks'
    if lycoris and kind != "lokr" and lokr_entries_rank_dropout(kwargs, entries, args, conv):
        return None  # kohya stops first
    if _block_rank_dropout(kwargs, kind, put, args, conv, train_norm is not None):
        return None
    if train_norm is not None and norm_table is not None:
        alone = _norms_alone_draw(kwargs, kind)
        if _train_norm(train_norm, norm_table, kind, algo, applied, put, conv) and alone:
            _norm_rank_dropout(kwargs, algo, put, args, conv)
    if kind == "tlora":
        if _decomposing_blocks(put):  # its LoCon / LoHa / LoKr entries' blocks' own `dora` / `dora_axis`
            kwargs.pop("dora_wd", None), kwargs.pop("wd_on_output", None)  # (lycoris_maps._network_dora)
        convs = (list(conv_targets), list(conv_targets) if own_convs is None else own_convs)
        if not _tlora(kwargs, (preset, *convs), (dim, alpha), dropout, applied, put, args, conv):
            return None
    elif kind in _WHOLE_LAYER_KINDS:
        if kind in ("full", "ia3") and _decomposing_blocks(put):  # their LoCon / LoHa / LoKr entries' modules
            kwargs.pop("dora_wd", None), kwargs.pop("wd_on_output", None)  # read them: the blocks' `dora`
        # with conv_dim 0 the convolutions an entry of another algorithm gives a dim (its block's conv_rank)
        built = bool(conv_dim) or (file_convs and any("kind" in b for b in put.get("_blocks", ())))
        _lycoris_full(kwargs, kind, built and list(conv_targets), put, unsupported, args, conv, dropout)
        if kind in ("diag-oft", "boft"):
            _diag_oft(kwargs, dim, conv_dim if conv_targets else dim, put, unsupported)
    elif conv_targets and (conv_dim or file_convs):
        if not conv_dim:  # LyCORIS's create_single_module: each at its map entry's dim, its block's conv_rank
            conv_dim = max((b.get("conv_rank", 0) for b in put.get("_blocks", [])), default=0)
            # each convolution at its block's rank: the adapter's only turns them on, up to spec conv_rank's
            # bound (LoKr's 100000: its blocks' go past it with rs_lora, lycoris_maps._huge_block)
            conv_dim = min(conv_dim, 100_000 if kind == "lokr" else 1024)
        put.update(conv_rank=conv_dim, conv_alpha=conv_alpha)
        if list(conv_targets) != KOHYA_CONV_TARGETS:
            put["conv_targets"] = list(conv_targets)
    if kind in ("glora", "dylora", "full", "ia3") and _decomposing_blocks(
        put
    ):  # LyCORIS hands them to its LoCon / LoHa /
        # LoKr entries' modules: those blocks' own `dora` / `dora_axis` (lycoris_maps._network_dora)
        kwargs.pop("dora_wd", None), kwargs.pop("wd_on_output", None)
    if kind in ("glora", "dylora", "tlora"):  # LyCORIS hands use_tucker to its LoCon / LoHa / LoKr entries'
        entries_tucker(kwargs, put, args, conv)  # modules
    if kind == "glora":
        _glora(kwargs, dim, alpha, dropout, put, unsupported, args, conv)
    if kind == "dylora":
        lycoris_dylora(kwargs, put, unsupported, args, conv, dim, dropout)
    dora = _dora(kwargs, lycoris, args, conv) and kind not in (
        *_WHOLE_LAYER_KINDS,
        "glora",
        "dylora",
        "tlora",
    )
    if dora:  # LoRA/LoCon, LoHa and LoKr alike (LyCORIS's weight decomposition: runtime/lycoris_dora.py)
        put["dora"] = True
        if kind == "lora":  # the norm differentiated as LyCORIS's LoConModule does, not peft's detached one
            put["dora_form"] = "lycoris"
    # a preset map entry's own weight_decompose (a block's `dora`): LyCORIS's form, on the network's axis
    entry_dora = _decomposing_blocks(put)
    if entry_dora and not dora and kind == "lora":
        put["dora_form"] = "lycoris"
    wd_on_output = kwargs.pop("wd_on_output", "true")
    # LyCORIS's str_bool: one per input column (a GLoRA / DyLoRA adapter has no axis: its blocks carry it)
    if (
        (dora or entry_dora)
        and not _str_bool(wd_on_output)
        and kind not in ("glora", "dylora", "full", "ia3")
    ):
        put["dora_axis"] = "input"
    bypass_mode = _str_bool(kwargs.get("bypass_mode", "false"))  # LyCORIS's str_bool
    if lycoris and kind == "lora":
        _locon_dropouts(kwargs, bypass_mode, put)
    if lycoris and kind not in (*_WHOLE_LAYER_KINDS, "glora", "dylora", "tlora"):
        _tucker_and_scalar(kwargs, kind, bool(put.get("conv_rank")), put, unsupported)
        if kind == "lokr":
            _lokr_rank_dropout_on_gpu(kwargs, args, conv, put)
        _lycoris_bypass_and_dropout(kwargs, kind, dora, dropout, args, conv, put, unsupported)
        if kind not in _WHOLE_LAYER_KINDS:
            _lycoris_rs_lora(kwargs, kind, dim, alpha, put, unsupported)
    for key in ("rank_dropout", "module_dropout"):
        if (
            key in kwargs and kind not in _WHOLE_LAYER_KINDS and ((kind != "lora" and lycoris) or not lycoris)
        ):  # LyCORIS's, or networks.lora's
            put[key] = _float(kwargs.pop(key))
    if lycoris and kind == "loha" and bypass_mode and put.get("rank_dropout"):
        _loha_bypass_form(put)
    if lycoris and "rank_dropout_scale" in kwargs:
        _rank_dropout_scale_unread(kwargs, args, conv)
    if kind == "lokr":
        if "factor" in kwargs:
            put["factor"] = _int(kwargs.pop("factor"))
        if "decompose_both" in kwargs:
            # LyCORIS passes the raw string on and LoKr tests its truth: any text but "" is true, "False" too
            put["decompose_both"] = bool(kwargs.pop("decompose_both"))
        if "unbalanced_factorization" in kwargs:  # LyCORIS's str_bool; LokrModule swaps the output split
            put["unbalanced_factorization"] = _str_bool(kwargs.pop("unbalanced_factorization"))
        _lokr_full_matrix(kwargs, put)
    # DyLoRA entries beside another algorithm (blocks of kind "dylora"): create_network's block_size is their
    # unit where the entry gives none (lycoris_maps._blocks wrote it); LyCORIS's LoRA+ raises the `lora_up`
    # parameters only, never DyLoraModule's `up_list`, as dbspec's LoRA+ on a LoRA adapter leaves its
    # DyLoRA blocks' ups at the base rate (runtime/prepare.py lora_up_ids; LoHa / LoKr networks have no
    # lora_up, their LoRA+ ignored below)
    dylora = any(b.get("kind") == "dylora" for b in (*put.get("_blocks", ()), *put.get("_text_blocks", ())))
    if lycoris and dylora:
        kwargs.pop("block_size", None)
    if module.value == "networks.lora_fa":
        _lora_fa_loraplus(kwargs, args, conv)
    elif not lycoris or kind == "lora" or (kind == "dylora" and _locon_blocks(put)):
        # a LyCORIS DyLoRA network's: its LoCon entries' lora_up alone rise, as the adapter's LoCon blocks'
        # lora_B (runtime/prepare.py raises_dylora_ups: not a LyCORIS-form DyLoRA's own ups)
        _loraplus(kwargs, put, unsupported)
    elif any(b.get("kind") == "lora" for b in put.get("_blocks", ())):  # LyCORIS raises their lora_up
        unsupported.update({k: kwargs.pop(k) for k in [k for k in kwargs if k.startswith("loraplus_")]})
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            f"LyCORIS's LoRA+ raises the rate of the `lora_up` parameters, which algo={algo} has not",
        )
    for key, value in kwargs.items():
        if _switched_off(key, value, lycoris):
            continue
        unread = unread_network_arg(key, kind, algo, module.value)
        if unread:
            conv.ignored(Legacy(key=f"{args.key} {key}", value=value, source=args.source), unread)
        else:
            unsupported[key] = value
    for index, block in enumerate(put.pop("_blocks", [])):
        why = block.pop("_why", None)  # a LyCORIS preset file's map entry, else a kohya block
        if why is None:
            kohya_index = block.pop("index")
            # kohya block -> its [[adapter.blocks]] entry (group_lists.py gives blocks optimizer groups)
            conv.facts.setdefault("kohya_block_entries", {})[kohya_index] = index
        note = why or conv.comment(args, f"kohya block {kohya_index}")
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, note)
    for index, block in enumerate(put.pop("_text_blocks", [])):
        note = block.pop("_why")
        for key, value in block.items():
            conv.put(("adapter", "text_encoder_blocks", index, key), value, note)
    for key, value in put.items():
        note = targets_note or _why(module)
        conv.put(("adapter", key), value, note if key.endswith("targets") else conv.comment(args))
    if unsupported:
        rest = ", ".join(f"{k}={v}" for k, v in unsupported.items())
        conv.unsupported(args, f"network arguments dbspec does not express: {rest}")
    elif args.given:
        conv.record(args, "mapped", "adapter")
    return kind


def _block_rank_dropout(
    kwargs: dict[str, str], kind: str, put: dict[str, Any], args: Legacy, conv: Conversion, norms: bool
) -> bool:
    """The network's rank_dropout beside algo=boft, dylora, tlora or glora outside bypass_mode (whose own
    modules never read it) with a preset file's entries of other algorithms (LoCon, LoHa, LoKr, full,
    Diag-OFT outside an entry's own bypass_mode), whose modules LyCORIS hands it too and which draw it:
    dbspec draws no rank dropout on blocks of another kind than the adapter's (as on a LoCon network's,
    DBS403). True when refused (it was DBS405, "never read", though those entries read it). A GLoRA
    network's, a DyLoRA one's and a T-LoRA one's are the adapter's rank_dropout, its blocks drawing it (was
    DBS403), with train_norm (`norms`) a DyLoRA / T-LoRA one's NormModules too (its norm_rank_dropout, was
    DBS403); a
    BOFT network's stays refused (its adapter has no rank_dropout)."""
    # (IA^3's too: IA3Module never reads it, its entries of other algorithms do, each as its module draws
    # it: adapter.rank_dropout, _diag_oft_dropouts; compiler rules.lycoris_row_masks decides)
    if kind not in ("boft", "dylora", "glora", "tlora") or not _float(kwargs.get("rank_dropout") or 0.0):
        return False
    if kind == "glora" and _str_bool(kwargs.get("bypass_mode", "false")):
        return False  # the adapter carries it (GLoRA's bypass forward)
    bypass = _str_bool(kwargs.get("bypass_mode", "false"))  # (a GLoRA network's returned above)
    readers = rank_dropout_readers((*put.get("_blocks", ()), *put.get("_text_blocks", ())), kind, bypass)
    if not readers:
        return False
    if kind in ("glora", "dylora", "tlora"):  # the adapter's: its blocks' layers draw it as their modules
        # do, the GLoRA / DyLoRA / T-LoRA ones none (GLoRA's outside bypass; compiler
        # rules.lycoris_row_masks decides; a T-LoRA network's LoKr entries stop at lycoris_maps); a DyLoRA
        # network's NormModules draw it too: its norm_rank_dropout (which defaults to 0 there; GLoRA's to the
        # adapter's)
        put["rank_dropout"] = _float(kwargs.pop("rank_dropout"))
        if kind in ("dylora", "tlora") and norms:
            put["norm_rank_dropout"] = put["rank_dropout"]
        return False
    legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
    conv.unsupported(
        legacy,
        f"the preset file's {' / '.join(readers)} entries on an algo={kind} network draw it (LyCORIS hands "
        "every module the network's rank_dropout): dbspec draws no rank dropout on [[adapter.blocks]] of "
        "another kind than the adapter's",
    )
    return True


def rank_dropout_readers(blocks, kind: str, bypass: bool = False) -> list[str]:
    """The kinds of a preset file's [[adapter.blocks]] on a `kind` network (BOFT, DyLoRA, GLoRA outside
    bypass_mode) whose LyCORIS modules read the network's rank_dropout: another kind's than the adapter's
    but BOFT, DyLoRA and IA3 (which never read it). A block in its entry's own bypass_mode reads none: it is
    one of BYPASS_BLOCKS (Diag-OFT, BOFT, DyLoRA, IA^3), whose bypass forwards never draw a rank mask
    (lycoris-lora 4.1.3's DiagOFTModule draws it in make_weight alone; was counted a reader, DBS403). In the
    network's `bypass` LoCon, LoHa and GLoRA entries alone read it (their bypass forward's masks)."""
    never = (kind, "boft", "dylora", "ia3")
    if bypass:  # LoConModule's ranks, LohaModule's rows, GLoRAModule's pairs' (the others draw none)
        return sorted({b["kind"] for b in blocks if b.get("kind") in ("lora", "loha", "glora")})
    return sorted({b["kind"] for b in blocks if b.get("kind", kind) not in never and b.get("bypass") != "on"})


def _norms_alone_draw(kwargs: dict[str, str], kind: str) -> bool:
    """Whether the network's rank_dropout (which LyCORIS hands every NormModule) is drawn by the
    NormModules alone beside `kind`'s modules: BOFT, DyLoRA and T-LoRA never read it, GLoRA only in
    bypass_mode.
    The offsets then take it as adapter.norm_rank_dropout, the adapter's layers leaving it; every other
    kind's adapter carries it (Diag-OFT's bypass forward and IA3 leave it unread there too, for the
    offsets: norm_rank_dropout's default is the adapter's rank_dropout), as do every kind's module_dropout."""
    if not _float(kwargs.get("rank_dropout") or 0.0):
        return False
    if kind in ("boft", "dylora", "tlora"):
        return True
    return kind == "glora" and not _str_bool(kwargs.get("bypass_mode", "false"))


def _train_norm(
    legacy: Legacy,
    found: NormTargets,
    kind: str,
    algo: str,
    applied: tuple[bool, bool],
    put: dict[str, Any],
    conv: Conversion,
) -> bool:
    """LyCORIS's `train_norm` on kohya's SD 1.x / 2.x / SDXL models: create_single_module gives each module
    whose class name holds "Norm" that the preset's walk reaches a NormModule (lycoris/modules/norms.py),
    whatever the algo: an offset of the norm's weight and bias, zeros at the start, trained with the model's
    modules at its rate (prepare_optimizer_params puts NormModules among the U-Net's / text encoder's). The
    built-in presets reach the U-Net's GroupNorms and LayerNorms inside Transformer2DModel and ResnetBlock2D
    (none reaches CLIP's); a file may reach CLIP's LayerNorms (CLIPEncoderLayer, or by name). They map to
    `[adapter] denoiser_norms` / `text_encoder_norms` (runtime/norm_offsets.py), the network's module_dropout
    and rank_dropout drawn as NormModule draws them. apply_to drops a model's modules (norms too) kohya
    does not train (network_train_unet_only / network_train_text_encoder_only). Beside algo=diag-oft, boft,
    ia3 and glora the NormModules are the same offsets, the other modules' mapping their own; the network's
    dropouts, which NormModule draws between those modules' forwards, drawn in forward order beside BOFT's,
    GLoRA's, Diag-OFT's and IA3's own draws (module_dropout; GLoRA's rank_dropout in bypass_mode, Diag-OFT's
    outside it); a rank_dropout the kind's modules never read (BOFT's / DyLoRA's, GLoRA's outside
    bypass_mode) the offsets' alone (_norm_rank_dropout).
    Beside dylora the same offsets, DyloraModule's module_dropout drawn in forward order with theirs. Whether
    some norm offsets were put."""
    unet = found.unet_paths if applied[1] else []
    clip = [p for paths in found.text_paths for p in paths] if applied[0] else []
    if not (unet or clip):
        conv.inert(legacy, "the preset reaches no norm layer of the models kohya trains: no NormModule")
        return False
    if kind not in ("lora", "loha", "lokr", "full", "diag-oft", "boft", "ia3", "glora", "dylora", "tlora"):
        conv.unsupported(
            legacy,
            f"LyCORIS's NormModules beside algo={algo}: dbspec offsets norms beside lora / locon, loha, "
            "lokr, full, ia3, diag-oft, boft, glora, dylora and tlora",
        )
        return False
    where = []
    if unet:
        put["denoiser_norms"] = list(found.denoiser)
        where.append(f"{len(unet)} U-Net norm(s)")
    if clip:
        put["text_encoder_norms"] = list(found.text_encoder)
        if found.text_encoder_2 is not None:  # SDXL's two encoders reach other norms
            put["text_encoder_2_norms"] = list(found.text_encoder_2)
        where.append(f"{len(clip)} CLIP LayerNorm(s)")
    target = "adapter.denoiser_norms" if unet else "adapter.text_encoder_norms"
    conv.record(
        legacy, "mapped", target, f"LyCORIS's NormModule on the {' and '.join(where)} the preset reaches"
    )
    return True


def _norm_rank_dropout(
    kwargs: dict[str, str], algo: str, put: dict[str, Any], args: Legacy, conv: Conversion
) -> None:
    """The network's rank_dropout beside algo=boft, dylora or glora outside bypass_mode, whose modules never
    read it: LyCORIS's NormModules alone draw it (NormModule.make_weight's `torch.rand(dim) < rate`, the
    offsets it marks kept, unscaled, in forward order with the kind's own module_dropout draws), so it is
    `[adapter] norm_rank_dropout`, the adapter's layers leaving it (was DBS403)."""
    legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
    put["norm_rank_dropout"] = _float(legacy.value)
    unread = "only in bypass_mode (off here)" if algo == "glora" else "never"
    conv.record(
        legacy,
        "mapped",
        "adapter.norm_rank_dropout",
        f"LyCORIS's NormModules draw it; its {algo} modules read it {unread}",
    )


def _lora_fa_blocks(
    kwargs: dict[str, str],
    original_names: bool,
    dim: int,
    alpha: float,
    conv_dim: int | None,
    conv_alpha: float | str | None,
    args: Legacy,
    conv: Conversion,
):
    """networks.lora_fa's older copy of networks.lora's block code (lora_fa_blocks.py): networks.lora's
    blocks on SD 1.x/2.x, every U-Net module at the lists' last value on SDXL; False where refused."""
    try:
        found, ignored = lora_fa_blocks(kwargs, original_names, dim, alpha, conv_dim, conv_alpha)
    except NoUnetModules as exc:
        conv.unsupported(args, str(exc))
        return False
    for key, value, why in ignored:
        conv.ignored(Legacy(key=f"{args.key} {key}", value=value, source=args.source), why)
    return found


def _inert_conv_alpha(value: str, args: Legacy, conv: Conversion) -> None:
    """networks.lora / lora_fa: a conv_alpha no 3x3 convolution takes (no conv_dim, conv_dim 0, or the
    blocks' conv_block_alphas in its place); one a built convolution takes unparsed stops kohya
    (blocks.py)."""
    why = "no 3x3 convolution takes it (conv_dim absent or 0, or conv_block_alphas set each block's)"
    conv.ignored(Legacy(key=f"{args.key} conv_alpha", value=value, source=args.source), why)


def _decomposing_blocks(put: dict[str, Any]) -> bool:
    """Some block (a preset file's LoCon / LoHa / LoKr entry) trains LyCORIS's weight decomposition."""
    return any(b.get("dora") == "on" for b in (*put.get("_blocks", ()), *put.get("_text_blocks", ())))


def _locon_blocks(put: dict[str, Any]) -> bool:
    """Some [[adapter.blocks]] / [[adapter.text_encoder_blocks]] of kind lora (a preset file's LoCon
    entries)."""
    return any(b.get("kind") == "lora" for b in (*put.get("_blocks", ()), *put.get("_text_blocks", ())))


def _lora_fa_loraplus(kwargs: dict[str, str], args: Legacy, conv: Conversion) -> None:
    """networks.lora_fa's create_network reads no LoRA+ argument (networks.lora's LoRA+ came later)."""
    for key in [k for k in kwargs if k.startswith("loraplus_")]:
        conv.ignored(
            Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
            "networks.lora_fa's create_network does not read it (it has no LoRA+)",
        )


def _rank_dropout_scale_unread(kwargs: dict[str, str], args: Legacy, conv: Conversion) -> None:
    """`rank_dropout_scale`: LyCORIS's modules take it, but its kohya create_network never reads it or hands
    it on, so a kohya run's LoHa / LoKr rank dropout never rescales the kept rows (LyCORIS's default, and
    dbspec's `adapter.rank_dropout_scale = false`)."""
    value = kwargs.pop("rank_dropout_scale")
    conv.ignored(
        Legacy(key=f"{args.key} rank_dropout_scale", value=value, source=args.source),
        "lycoris.kohya's create_network does not pass it to its modules: kohya's LoHa/LoKr rank dropout "
        "never rescales the kept rows (adapter.rank_dropout_scale = false, the default)",
    )


def _dora(kwargs: dict[str, str], lycoris: bool, args: Legacy, conv: Conversion) -> bool:
    """`dora_wd`: LyCORIS's switch (its str_bool); kohya's networks.lora has no DoRA and never reads it."""
    if lycoris:
        return _str_bool(kwargs.pop("dora_wd", "false"))
    if "dora_wd" in kwargs:
        value = kwargs.pop("dora_wd")
        conv.ignored(
            Legacy(key=f"{args.key} dora_wd", value=value, source=args.source),
            "networks.lora has no weight decomposition (DoRA is LyCORIS's: network_module = lycoris.kohya)",
        )
    return False


# LyCORIS's kohya network reads these with str_bool: only "false" (any case) is off, "0" and "" are on.
_LYCORIS_SWITCHES = {
    "train_norm",
    "rescaled",
    "full_matrix",
    "bypass_mode",
    "rs_lora",
    "unbalanced_factorization",
    "train_t5xxl",
}


# lycoris-lora 4.1.3's LoConModule / LokrModule / LohaModule.forward take the bypass path before the weight
# decomposition: dora_scale never gets a gradient, yet custom_state_dict saves it and a loader (bypass_mode
# unset) decomposes with it (checked in a scratch run: the reloaded module's outputs differ by 0.1-0.4).
BYPASS_DORA = (
    "with bypass_mode LyCORIS's forward never applies the weight decomposition: dora_scale gets no gradient "
    "and stays at the base weight's norms, yet the saved file carries it and its loaders (lycoris-lora's "
    "create_network_from_weights, ComfyUI) decompose with it, so the file does not compute what kohya trained"
)


def _lycoris_bypass_and_dropout(
    kwargs: dict[str, str],
    kind: str,
    dora: bool,
    network_dropout: Legacy | None,
    args: Legacy,
    conv: Conversion,
    put: dict[str, Any],
    unsupported: dict[str, str],
) -> None:
    """LyCORIS's modules (3.x and later) rebuild the weight, W + ΔW, and apply their `dropout` only with
    bypass_mode, which adds ΔW x to W x as peft's adapters do and drops that output. train_network.py hands
    --network_dropout on as `dropout` unless network_args has one (both "or 0.0" when empty). LoCon's
    (LoConModule.bypass_forward_diff) is torch's dropout of the scaled update, after its rank mask:
    adapter.output_dropout (runtime/lora_dropout.py), and LoKr's / LoHa's likewise, after their module_dropout
    draw and LoHa's row mask (runtime/fused_lycoris_dropout.py); a rate outside [0, 1] is the module's
    ValueError (torch's Dropout)."""
    bypass_text = kwargs.pop("bypass_mode", "false")
    bypass = _str_bool(bypass_text)
    blocks = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
    # (a block whose entry's own bypass_mode is off keeps its layers from it)
    drops = network_drops(kwargs, network_dropout) or put.get("rank_dropout")
    if bypass and any(
        (b.get("kind") in BYPASS_BLOCKS and b.get("bypass") != "off")
        or (b.get("kind") in ("glora", "tlora") and drops)
        for b in blocks
    ):
        # a preset file's Diag-OFT / BOFT / DyLoRA / IA^3 entries: their modules' bypass forward (the output
        # rotated or scaled, bias included; DyLoRA's one block unscaled), which the adapter's `bypass` gives
        # those blocks; GLoRA / T-LoRA entries': their dropout and masks there (runtime/mixed_kinds.py)
        put["bypass"] = True
        conv.record(
            Legacy(key=f"{args.key} bypass_mode", value=bypass_text, source=args.source),
            "mapped",
            "adapter.bypass",
            "LyCORIS's bypass forward of the preset file's Diag-OFT / BOFT / DyLoRA / IA^3 / GLoRA / T-LoRA "
            "entries' layers",
        )
    if "dropout" in kwargs:
        text = kwargs.pop("dropout")
        legacy = Legacy(key=f"{args.key} dropout", value=text, source=args.source)
        rate = _float(text or 0.0)
    else:
        legacy = network_dropout
        rate = float(network_dropout.value or 0.0) if network_dropout is not None else 0.0
    if bypass and dora:
        conv.invalid(
            f"{args.key} dora_wd", "True", args.source, BYPASS_DORA, help="drop dora_wd or bypass_mode"
        )
    form = {"lora": "LoConModule", "loha": "LohaModule", "lokr": "LokrModule"}.get(kind, kind)
    if rate and bypass and not dora:
        if not 0 <= rate <= 1 and legacy is not None:
            conv.invalid(
                legacy.key,
                legacy.value,
                legacy.source,
                f"{form} builds torch's Dropout with it, which raises ValueError outside [0, 1]",
            )
            return
        # LoConModule's / LohaModule's / LokrModule's bypass_forward_diff: self.drop(update x scale x scalar)
        # (runtime/lora_dropout.py; LoKr / LoHa: fused_lycoris_dropout.py, a draw of its own per layer)
        put["output_dropout"] = rate
        if legacy is network_dropout and legacy is not None:
            conv.record(legacy, "mapped", "adapter.output_dropout", "LyCORIS's `dropout` in bypass_mode")
    elif rate and bypass:  # with dora_wd: invalid above
        pass
    elif rate and legacy is not None:
        conv.ignored(
            legacy,
            "LyCORIS applies its `dropout` only in bypass_mode (off here: its modules rebuild the weight, "
            "W + ΔW, with no dropout)" + ("; with dora_wd it ignores it anyway" if dora else ""),
        )


def _locon_dropouts(kwargs: dict[str, str], bypass: bool, put: dict[str, Any]) -> None:
    """algo=lora / locon (lycoris/modules/locon.py, LoConModule.forward): module_dropout is one torch.rand(1)
    per training forward, the layer's base output alone below the rate (kohya networks.lora's rule);
    rank_dropout masks the rebuilt ΔW's output rows, `torch.rand(out)` kept above the rate (in bypass_mode the
    down projection's ranks, `torch.rand(rank)`), unscaled (rank_dropout_form "lycoris" / "lycoris_bypass").
    With dora_wd (never with bypass_mode: DBS402) the same draws, the masked ΔW renormalised with W
    (runtime/lycoris_dora.py; was DBS403)."""
    for key in ("module_dropout", "rank_dropout"):
        if key not in kwargs:
            continue
        rate = _float(kwargs.pop(key) or 0.0)
        if not rate:
            continue
        put[key] = rate
        if key == "rank_dropout":
            put["rank_dropout_form"] = "lycoris_bypass" if bypass else "lycoris"


def _loha_bypass_form(put: dict[str, Any]) -> None:
    """A LoHa network's rank_dropout in bypass_mode beside LoCon entries (`put`'s blocks of kind lora): their
    LoConModules draw their bypass rank mask (`torch.rand(rank)`), whether or not a `dropout` follows
    (lycoris-lora 4.1.3; the LoHa layers LohaModule's row mask in either forward): the adapter's
    rank_dropout_form "lycoris_bypass" (was DBS403 without the `dropout`, whose output_dropout implies it;
    tests/runtime/test_lycoris_loha_bypass_rank_dropout_alone.py)."""
    blocks = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
    if any(b.get("kind") == "lora" for b in blocks):
        put["rank_dropout_form"] = "lycoris_bypass"


def _lokr_rank_dropout_on_gpu(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, put: dict[str, Any] | None = None
) -> None:
    """lycoris-lora's LokrModule (4.1.3, still in its main branch: LyCORIS issue #291) draws the rank-dropout
    mask on the CPU and multiplies the rebuilt weight by it in place, without moving it as LohaModule does: on
    a GPU kohya's first training forward raises (two devices). Its bypass forward draws no mask at all (its
    apply_max_norm does: map_scale_weight_norms): ignored, unless a preset file's LoCon / LoHa / GLoRA
    entries (`put`'s blocks of kind lora / loha / glora; lycoris_maps._mixed_kinds admitted them only with
    the network's bypass `dropout`, _bypass_rank_dropout) read it in their bypass forward: the adapter's
    rank_dropout in rank_dropout_form "lycoris_bypass" (the LoKr layers none, LoConModule's rank mask,
    LohaModule's row mask, GLoRAModule's pairs' masks; was DBS403)."""
    if not _float(kwargs.get("rank_dropout") or 0.0):
        return
    legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
    if _str_bool(kwargs.get("bypass_mode", "false")):
        blocks = (*(put or {}).get("_blocks", ()), *(put or {}).get("_text_blocks", ()))
        if put is not None and rank_dropout_readers(blocks, "lokr", bypass=True):
            put["rank_dropout"] = _float(legacy.value)
            put["rank_dropout_form"] = "lycoris_bypass"
            return
        conv.ignored(legacy, "LyCORIS's LoKr bypass forward never draws its rank-dropout mask")
        return
    conv.invalid(
        legacy.key,
        legacy.value,
        legacy.source,
        "LyCORIS's LoKr draws its rank-dropout mask on the CPU and multiplies the GPU weight by it: "
        "kohya stops at the first training step on a GPU (RuntimeError: tensors on two devices; "
        "LyCORIS issue #291). Remove rank_dropout (or use algo=loha, whose mask follows the weight)",
    )


def lokr_entries_rank_dropout(kwargs: dict[str, str], blocks, args: Legacy, conv: Conversion) -> bool:
    """The network's rank_dropout beside a preset file's LoKr entries (`blocks`: the file's [[adapter.blocks]]
    and [[adapter.text_encoder_blocks]] dicts) outside bypass_mode: LyCORIS hands it to their LokrModules,
    which draw the mask on the CPU and multiply the GPU weight by it in place (_lokr_rank_dropout_on_gpu):
    kohya stops at the first training step (DBS402), on SD 1.x/2.x / SDXL as on Flux / SD3 / Chroma
    (lycoris_flux.py). True when invalid."""
    if not _float(kwargs.get("rank_dropout") or 0.0) or _str_bool(kwargs.get("bypass_mode", "false")):
        return False
    if not any(b.get("kind") == "lokr" and b.get("bypass") != "on" for b in blocks):
        return False
    conv.invalid(
        f"{args.key} rank_dropout",
        kwargs["rank_dropout"],
        args.source,
        "the preset file's LoKr entries' LokrModules draw the network's rank-dropout mask on the CPU and "
        "multiply the GPU weight by it: kohya stops at the first training step on a GPU (RuntimeError: "
        "tensors on two devices; LyCORIS issue #291). Remove rank_dropout (or give those entries algo=loha, "
        "whose mask follows the weight)",
    )
    return True


def lokr_rank_dropout(network_args: list[str] | None) -> float:
    """The `rank_dropout` a LoKr's network_args give (0 when none)."""
    kwargs, _ = parse_network_args(network_args or [])
    return _float(kwargs.get("rank_dropout") or 0.0)


def _lycoris_rs_lora(
    kwargs: dict[str, str],
    kind: str,
    dim: int,
    alpha: float,
    put: dict[str, Any],
    unsupported: dict[str, str],
) -> None:
    """LyCORIS's rs_lora scales an update by alpha / sqrt(rank) and saves alpha x sqrt(rank) as the alpha, the
    plain alpha of the same scale (LoRA/LoCon, LoHa, and LoKr's low-rank layers). LokrModule's layers whose
    two Kronecker factors are full scale by rank / sqrt(rank) instead of 1: adapter.rank_stabilized. GLoRA
    scales the same way but saves the unscaled alpha (its file then loads at alpha / rank); dbspec's export
    saves alpha x sqrt(rank), the scale it trained."""
    text = kwargs.pop("rs_lora", "false")
    if not _str_bool(text):
        return
    if kind == "lokr":
        put["rank_stabilized"] = True
    put["alpha"] = (alpha or dim) * dim / math.sqrt(dim)
    if "conv_rank" in put:
        rank = put["conv_rank"]
        put["conv_alpha"] = (put["conv_alpha"] or rank) * rank / math.sqrt(rank)


# LyCORIS's older names of use_tucker (lycoris/wrapper.py deprecated_arg_dict).
_TUCKER_OLD_NAMES = ("disable_conv_cp", "use_cp", "use_conv_cp")
TUCKER_NAMES = (*_TUCKER_OLD_NAMES, "use_tucker")  # what lycoris_tucker reads


def lycoris_tucker(args: dict[str, str]) -> bool:
    """LyCORIS's (4.x) create_network: each old name's value is first copied into use_tucker (in the given
    order, so the last old name wins, over use_tucker too), then `str_bool(not disable_conv_cp or use_conv_cp
    or use_cp or use_tucker)` on the strings, the first truthy one deciding: `disable_conv_cp=True` turns it
    on (its value lands in use_tucker), `disable_conv_cp=False` alone leaves it off, and `disable_conv_cp=`
    (empty) turns it on."""
    values: dict[str, Any] = {k: v for k, v in args.items() if k in (*_TUCKER_OLD_NAMES, "use_tucker")}
    for key in list(values):
        if key in _TUCKER_OLD_NAMES:
            values["use_tucker"] = values[key]
    value = (
        (not values.get("disable_conv_cp", True))
        or values.get("use_conv_cp", False)
        or values.get("use_cp", False)
        or values.get("use_tucker", False)
    )
    return _str_bool(value)


def _switched_off(key: str, value: str, lycoris: bool) -> bool:
    """A network argument dbspec does not map that changes nothing as given."""
    if lycoris and key in _LYCORIS_SWITCHES:
        return not _str_bool(value)
    return value.lower() in ("", "false", "0", "none", "0.0")


def _str_bool(value: object) -> bool:
    """LyCORIS's str_bool: anything but "false" (any case) is true, "0" and "no" included."""
    return str(value).lower() != "false"


def _tucker_and_scalar(
    kwargs: dict[str, str], kind: str, convs: bool, put: dict[str, Any], unsupported: dict[str, str]
) -> None:
    """LyCORIS's use_tucker and use_scalar. For algo lora/locon use_tucker is LoCon's lora_mid, for LoHa/LoKr
    peft's effective conv2d: adapter.tucker either way."""
    given = [key for key in kwargs if key in (*_TUCKER_OLD_NAMES, "use_tucker")]
    if given and lycoris_tucker(kwargs) and convs:  # it changes only k x k convolutions (conv_dim)
        # LoHa/LoKr: peft's effective conv2d; LoRA/LoCon: dbspec's lora_mid layer (locon_tucker.py), with
        # dora_wd LyCORIS's weight decomposition on it (lycoris_dora.py)
        put["tucker"] = True
    for key in given:
        kwargs.pop(key)
    scalar = kwargs.pop("use_scalar", "false")
    if _str_bool(
        scalar
    ):  # a trained scalar from 0 on each update (runtime/lycoris_switches.py); with dora_wd
        put["scalar"] = (
            True  # LyCORIS's weight decomposition renormalises the scaled update (dora_form lycoris)
        )


# LyCORIS's FullModule and IA3Module take these from create_network and never read them (no rank, factor or
# weight decomposition): with algo=full or ia3 they change nothing.
_FULL_IGNORES = (
    "use_tucker",
    "use_cp",
    "use_conv_cp",
    "disable_conv_cp",
    "use_scalar",
    "dora_wd",
    "wd_on_output",
)


def _glora(
    kwargs: dict[str, str],
    dim: int,
    alpha: float,
    network_dropout: Legacy | None,
    put: dict[str, Any],
    unsupported: dict[str, str],
    args: Legacy,
    conv: Conversion,
) -> None:
    """algo=glora (lycoris/modules/glora.py): network_dim / network_alpha and conv_dim / conv_alpha are its
    ranks and alphas (the generic mapping). GLoRAModule takes `dora_wd` (weight_decompose) and never reads
    it, and builds its Tucker form only for a kernel both 1x1 and not 1x1 (never): both ignored. use_scalar
    (str_bool), module_dropout and bypass_mode (str_bool) are its own switches; rank_dropout and `dropout`
    (--network_dropout unless network_args has one) act only in its bypass forward; rs_lora scales by alpha /
    sqrt(rank), the plain alpha x sqrt(rank) (GLoRAModule saves the unscaled alpha: see _lycoris_rs_lora)."""
    for key, why in (
        ("dora_wd", "GLoRAModule takes weight_decompose and never reads it"),
        ("use_tucker", "GLoRAModule builds no Tucker form (it requires a 1x1 kernel that is not 1x1)"),
    ):
        if key in kwargs:
            conv.ignored(Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source), why)
    if _str_bool(kwargs.pop("use_scalar", "false")):
        put["scalar"] = True
    bypass = _str_bool(kwargs.pop("bypass_mode", "false"))
    if bypass:
        put["bypass"] = True
    if "module_dropout" in kwargs:
        put["module_dropout"] = _float(kwargs.pop("module_dropout") or 0)
    given = {
        key: (kwargs[key], Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source))
        for key in ("rank_dropout", "dropout")
        if key in kwargs
    }
    if "dropout" not in given and network_dropout is not None and network_dropout.value:
        # train_network.py hands --network_dropout on as LyCORIS's dropout
        given["dropout"] = (str(network_dropout.value), network_dropout)
    for key, (text, legacy) in given.items():
        rate = _float(text or 0)
        if bypass:
            put[key] = rate
            if legacy is network_dropout:
                conv.record(legacy, "mapped", "adapter.dropout")
        elif rate:
            conv.ignored(legacy, "GLoRAModule applies it only in bypass_mode (off here)")
    _lycoris_rs_lora(kwargs, "glora", dim, alpha, put, unsupported)


# LyCORIS arguments TLoraModule never reads (lycoris-lora 4.1.3 lycoris/modules/tlora.py): create_network
# hands them to every module and T-LoRA's **kwargs swallow them (use_tucker lands in rank_dropout_scale,
# which it never reads either)
_TLORA_UNREAD = {
    "rank_dropout": "TLoraModule takes rank_dropout and never reads it",
    "use_scalar": "TLoraModule takes use_scalar and never reads it",
    "dora_wd": "TLoraModule takes weight_decompose and never reads it",
    "wd_on_output": "TLoraModule never reads it",
    "rs_lora": "TLoraModule scales by alpha / rank whatever rs_lora says",
    "factor": "LyCORIS reads it for LoKr only, not algo=tlora",
    "decompose_both": "LyCORIS reads it for LoKr only, not algo=tlora",
}


def _tlora(
    kwargs: dict[str, str],
    reach: tuple[str, list[str]],
    dims: tuple[int, float],
    network_dropout: Legacy | None,
    applied: tuple[bool, bool],
    put: dict[str, Any],
    args: Legacy,
    conv: Conversion,
) -> bool:
    """algo=tlora (lycoris/modules/tlora.py; create_network passes no sig_type / use_data_init /
    mask_group_id, and kohya never sets a timestep mask): network_dim / network_alpha are its rank and alpha
    (the generic mapping; alpha 0 is the rank, a negative one keeps its sign: TLoraModule's scale alpha /
    rank). conv_dim (defaulting to network_dim, 0 too) gives every k x k
    convolution a preset reaches a TLoraModule whose 1x1 factors' output has another size: kohya stops at the
    first forward (False, reported), unless apply_to drops the U-Net's modules; a preset file's entries of
    other algorithms on them build their own modules there (the adapter's `conv_targets`, their blocks'
    conv_rank: lycoris_maps._beside_tlora). `dropout` acts only in its bypass forward (bypass_mode: the
    adapter's `bypass`, or a preset entry's own: its block's); module_dropout is the adapter's; the rest is
    never read. `reach`: the preset, its k x k convolutions and those of T-LoRA layers; `dims`: network_dim
    and network_alpha."""
    (preset, convs, tlora_convs), (dim, alpha) = reach, dims
    if tlora_convs and applied[1]:
        conv.invalid(
            f"{args.key} preset",
            preset,
            args.source,
            f"preset {preset} gives the U-Net's k x k convolutions ({', '.join(tlora_convs)}) a T-LoRA "
            "module at conv_dim (LyCORIS's default: network_dim; 0 is that default too): lycoris-lora "
            "4.1.3's TLoraModule projects them with 1x1 factors at the convolution's stride and padding "
            "and adds an output of another size, so kohya stops at the first step (RuntimeError: the "
            "size of tensor a must match the size of tensor b)",
            help="use preset=attn-mlp, attn-only, full-lin or unet-transformer-only (no k x k convolution)",
        )
        return False
    put.pop("conv_targets", None)
    if any(b.get("conv_rank") for b in put.get("_blocks", ())):  # its entries' of other algorithms
        put["conv_targets"] = convs
    for key, why in _TLORA_UNREAD.items():
        if key in kwargs:
            conv.ignored(Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source), why)
    bypass = _str_bool(kwargs.pop("bypass_mode", "false"))  # LyCORIS's str_bool
    if bypass:  # TLoraModule.bypass_forward: the update on activations (runtime/lycoris_tlora.py)
        put["bypass"] = True
    module_dropout = _float(kwargs.pop("module_dropout", "") or 0)
    if module_dropout:  # TLoraModule.forward's one torch.rand(1) per training forward, first
        put["module_dropout"] = module_dropout
    given = kwargs.pop("dropout", None)
    legacy = Legacy(key=f"{args.key} dropout", value=given, source=args.source)
    if given is None and network_dropout is not None and network_dropout.value:
        given, legacy = str(network_dropout.value), network_dropout  # train_network.py hands it on
    rate = _float(given or 0) if given is not None else 0.0
    blocks = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
    # a T-LoRA entry's own bypass_mode: its TLoraModules drop in their bypass forward (the block's `bypass`)
    own_bypass = any("kind" not in b and b.get("bypass") == "on" for b in blocks)
    if rate and not (bypass or own_bypass):
        conv.ignored(legacy, tlora_unread_dropout(blocks))
    elif rate and not 0 <= rate <= 1:  # TLoraModule builds nn.Dropout(dropout), which raises
        conv.invalid(legacy.key, legacy.value, legacy.source, f"torch's Dropout raises for p = {rate:g}")
        return False
    elif rate:  # bypass_forward_diff's torch dropout on the scaled update, after module_dropout's draw
        put["dropout"] = rate
        if legacy is network_dropout:
            conv.record(legacy, "mapped", "adapter.dropout")
    if alpha == 0:  # TLoraModule: alpha None or 0 is the rank (scale 1); a negative one keeps its sign
        put["alpha"] = float(dim)
    return True


def tlora_unread_dropout(blocks) -> str:
    """Why a T-LoRA network's `dropout` outside bypass_mode (no T-LoRA entry's own either) changes nothing,
    its preset file's `blocks` of other kinds too (lycoris_maps._beside_tlora): every LyCORIS module reads it
    in its bypass forward alone, or never."""
    why = "TLoraModule applies its dropout only in bypass_mode (off here)"
    if any(b.get("kind") for b in blocks):
        why += (
            "; its preset entries' LyCORIS modules read it in their bypass forward alone (LoCon, LoHa, LoKr, "
            "GLoRA, Diag-OFT) or never (full, IA^3, DyLoRA, BOFT)"
        )
    return why


def entries_tucker(kwargs: dict[str, str], put: dict[str, Any], args: Legacy, conv: Conversion) -> None:
    """The network's use_tucker (or its older names) on a full / IA^3 / DyLoRA / GLoRA network, whose own
    modules never read it, where its preset file's LoCon / LoHa / LoKr entries' blocks took it
    (lycoris_maps.network_tucker: `tucker = "on"` on their k x k convolutions): recorded as mapped there and
    popped; otherwise left to the algorithm's own handling (ignored, DBS405)."""
    tucker = [b for b in put.get("_blocks", ()) if b.get("tucker") == "on"]  # the entries' blocks took it
    if not (tucker and lycoris_tucker(kwargs)):
        return
    why = f"LyCORIS hands it to the preset file's LoCon / LoHa / LoKr entries too: {_source_of(tucker)}"
    for key in [k for k in kwargs if k in TUCKER_NAMES]:
        item = Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source)
        conv.record(item, "mapped", "adapter.blocks.tucker", why)


def _source_of(blocks: list[dict[str, Any]]) -> str:
    """The blocks' own `tucker` named for a note."""
    return ", ".join(f"{b['kind']} block `{b['pattern']}` tucker" for b in blocks[:3])


def _lycoris_full(
    kwargs: dict[str, str],
    kind: str,
    conv_targets: list[str] | bool,
    put: dict[str, Any],
    unsupported: dict[str, str],
    args: Legacy,
    conv: Conversion,
    network_dropout: Legacy | None = None,
    full_dropouts: bool = True,
) -> None:
    """algo=full (lycoris/modules/full.py: each targeted layer's weight and bias train as a copy) and ia3
    (lycoris/modules/ia3.py: a scale per output channel). LyCORIS builds their convolution modules when
    conv_dim is above 0 (the value is otherwise unused); rank and alpha mean nothing to them. FullModule's
    module_dropout (one torch.rand(1) per layer and training forward, the base layer alone below it) and
    rank_dropout (make_weight's mask over the update's output rows, weight and bias, unscaled) are the
    adapter's (runtime/lycoris_full.py; was DBS403), where `full_dropouts` (SD 1.x / 2.x / SDXL: no fused
    layer whose parts would draw apart); BOFT's, Diag-OFT's and IA3's module_dropout
    (ButterflyOFTModule.forward's, DiagOFTModule.forward's and IA3Module.forward's one draw per layer and
    training forward; BOFT never reads rank_dropout) and Diag-OFT's rank_dropout (_diag_oft_dropouts;
    IA3Module never reads it). bypass_mode: Diag-OFT's, BOFT's and IA3's bypass forward (adapter.bypass: the
    output rotated or scaled, its bias too); full raises on it (DBS402)."""
    if conv_targets:
        put["conv_targets"] = list(conv_targets)
    entries_tucker(kwargs, put, args, conv)
    for key in _FULL_IGNORES:
        if key in kwargs:
            conv.ignored(
                Legacy(key=f"{args.key} {key}", value=kwargs.pop(key), source=args.source),
                f"LyCORIS's {kind} algo takes it and never reads it",
            )
    kwargs.pop("rs_lora", None)  # scales alpha, which these algos have not
    if kind == "full" and "dropout" in kwargs:  # FullModule never reads it; a preset file's entries'
        # modules in their bypass forward alone, which a full network never runs (it raises on bypass_mode;
        # an entry's own: Diag-OFT's raises with it, DBS402, BOFT's / IA3's / DyLoRA's never read it)
        conv.ignored(
            Legacy(key=f"{args.key} dropout", value=kwargs.pop("dropout"), source=args.source),
            "LyCORIS's FullModule takes it and never reads it (a preset file's entries read it in their "
            "bypass forward alone)",
        )
    if _str_bool(kwargs.get("bypass_mode", "false")) and kind == "full":
        conv.invalid(
            f"{args.key} bypass_mode",
            kwargs.pop("bypass_mode"),
            args.source,
            "LyCORIS's full algo raises ValueError with bypass_mode (it has no bypass forward)",
        )
    elif _str_bool(kwargs.get("bypass_mode", "false")) and kind in ("diag-oft", "boft"):
        kwargs.pop(
            "bypass_mode"
        )  # the output rotated, its bias too (runtime/lycoris_oft.py, lycoris_boft.py)
        put["bypass"] = True
        if kind == "boft" and "dropout" in kwargs:
            conv.ignored(
                Legacy(key=f"{args.key} dropout", value=kwargs.pop("dropout"), source=args.source),
                "LyCORIS's ButterflyOFTModule never reads its dropout",
            )
        elif kind == "diag-oft":
            _diag_oft_bypass_dropout(kwargs, args, conv, network_dropout)
    elif _str_bool(kwargs.get("bypass_mode", "false")) and kind == "ia3":
        kwargs.pop("bypass_mode")  # the output scaled, its bias too (runtime/lycoris_ia3.py)
        put["bypass"] = True
    elif _str_bool(kwargs.get("bypass_mode", "false")):
        unsupported["bypass_mode"] = (
            f"{kwargs.pop('bypass_mode')} with algo={kind} (LyCORIS's bypass forward acts on the layer's "
            "output, its bias too; dbspec changes the weight, as LyCORIS's default forward)"
        )
    if kind in ("boft", "diag-oft", "ia3") and "module_dropout" in kwargs:  # their forward's torch.rand(1)
        put["module_dropout"] = _float(kwargs.pop("module_dropout") or 0)
    if kind == "full" and full_dropouts:  # FullModule's skip draw and its mask over the output rows
        for key in [k for k in ("module_dropout", "rank_dropout") if _float(kwargs.get(k, "0") or 0)]:
            put[key] = _float(kwargs.pop(key))
    if kind in ("diag-oft", "ia3"):
        _diag_oft_dropouts(kwargs, put, args, conv, network_dropout, kind)
    if kind == "boft" and "rank_dropout" in kwargs:
        conv.ignored(
            Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source),
            "LyCORIS's ButterflyOFTModule takes it and never reads it",
        )
    for key in ("rank_dropout", "module_dropout"):
        if _float(kwargs.get(key, "0") or 0):
            unsupported[key] = f"{kwargs.pop(key)} (LyCORIS's {kind} algo: dbspec expresses no dropout there)"
        kwargs.pop(key, None)


def _diag_oft_dropouts(
    kwargs: dict[str, str],
    put: dict[str, Any],
    args: Legacy,
    conv: Conversion,
    network_dropout: Legacy | None,
    kind: str = "diag-oft",
) -> None:
    """algo=diag-oft's and ia3's rank_dropout and (outside bypass_mode) `dropout` (network_args', else
    --network_dropout). DiagOFTModule.make_weight draws rank_dropout (nn.Dropout on its rotations) in the
    default forward only, adapter.rank_dropout (runtime/lycoris_oft.py add_oft_rank_dropout); its bypass
    forward never reads it, but NormModules beside it (train_norm: `put`'s norms) draw it. IA3Module never
    reads rank_dropout (DBS405), the NormModules beside it do (adapter.rank_dropout, for them), and a preset
    file's entries of algorithms that read it (their blocks draw it as their modules do). Neither's
    default forward reads `dropout` (DBS405; Diag-OFT's bypass_mode: _diag_oft_bypass_dropout's DBS402; IA3's
    bypass forward does not read it either)."""
    bypass = bool(put.get("bypass"))
    norms = any(key in put for key in ("denoiser_norms", "text_encoder_norms"))
    if "rank_dropout" in kwargs:
        legacy = Legacy(key=f"{args.key} rank_dropout", value=kwargs.pop("rank_dropout"), source=args.source)
        rate = _float(legacy.value or 0)
        blocks = (*put.get("_blocks", ()), *put.get("_text_blocks", ()))
        readers = rank_dropout_readers(blocks, kind, bypass and kind == "ia3")
        if rate and kind == "ia3" and not norms and not readers:
            conv.ignored(legacy, "LyCORIS's IA3Module takes it and never reads it")
        elif rate and bypass and not norms and kind == "diag-oft":
            conv.ignored(
                legacy, "LyCORIS's DiagOFTModule draws it in its default forward only, not bypass_mode"
            )
        elif rate:
            put["rank_dropout"] = rate
    if bypass and kind == "diag-oft":
        return
    if kind == "ia3" and host_bypass_dropout(kwargs, put, bypass, args, conv, network_dropout):
        return
    if "dropout" in kwargs:
        legacy = Legacy(key=f"{args.key} dropout", value=kwargs.pop("dropout"), source=args.source)
    elif network_dropout is not None and network_dropout.value:
        legacy = network_dropout
    else:
        return
    if _float(legacy.value or 0) and kind == "ia3":
        conv.ignored(legacy, "LyCORIS's IA3Module takes its dropout and never reads it")
    elif _float(legacy.value or 0):
        conv.ignored(legacy, "LyCORIS's DiagOFTModule applies its dropout only in bypass_mode (off here)")


def _diag_oft_bypass_dropout(
    kwargs: dict[str, str], args: Legacy, conv: Conversion, network_dropout: Legacy | None
) -> None:
    """algo=diag-oft with bypass_mode and a dropout (network_args' `dropout`, else --network_dropout, which
    train_network.py hands on as it): in training mode DiagOFTModule's bypass forward multiplies its (blocks,
    size, size) rotations by a dropout mask shaped like the layer's output, (..., blocks, size): that does not
    broadcast, or leaves einsum an operand with more dimensions than its subscripts, on any layer whose input
    has more than one leading dimension (attention, convolution and text-encoder layers), so lycoris-lora
    4.1.3 raises RuntimeError on the first training forward."""
    if "dropout" in kwargs:
        legacy = Legacy(key=f"{args.key} dropout", value=kwargs["dropout"], source=args.source)
    elif network_dropout is not None and network_dropout.value:
        legacy = network_dropout
    else:
        return
    if not _float(legacy.value or 0):
        return
    kwargs.pop("dropout", None)
    conv.invalid(
        legacy.key,
        legacy.value,
        legacy.source,
        "with algo=diag-oft and bypass_mode LyCORIS's DiagOFTModule multiplies its (blocks, size, size) "
        "rotations by a dropout mask shaped like the layer's output (..., blocks, size) in training mode: "
        "torch raises RuntimeError (the shapes do not broadcast, or einsum gets an operand with more "
        "dimensions than its subscripts) on the first forward",
        help="drop the dropout (or bypass_mode)",
    )


def _diag_oft(
    kwargs: dict[str, str], dim: int, conv_dim: int, put: dict[str, Any], unsupported: dict[str, str]
) -> None:
    """algo=diag-oft (lycoris/modules/diag_oft.py) and algo=boft (lycoris/modules/boft.py, the same
    arguments): network_dim is its lora_dim, the block-size hint; conv_dim the k x k convolutions' (LyCORIS's
    create_single_module: a Conv2d of kernel 1 at lora_dim, a wider one at conv_lora_dim), a block over their
    names at that size (was DBS403), after a preset file's own blocks (was DBS403 too): those name their
    entries' layers at the size create_single_module gives each (an entry's dim, else `lora_dim` or on a
    k x k convolution `conv_lora_dim`: lycoris_maps._oft_blocks), so the k x k convolutions no entry
    sizes otherwise fall to this block; `constraint` (float, "or 0") and `rescaled` (str_bool) as LyCORIS's
    create_network reads them."""
    put["block_size"] = dim
    if conv_dim != dim and put.get("conv_targets"):
        why = "kohya network_args conv_dim: LyCORIS's block-size hint of the k x k convolutions"
        put["_blocks"] = [
            *put.get("_blocks", ()),
            {"pattern": KXK_CONVS, "block_size": conv_dim, "_why": why},
        ]
    constraint = _float(kwargs.pop(constraint_key(kwargs), "") or 0)  # its deprecated `constrain` too
    if constraint:  # a negative one constrains nothing, as 0 (was DBS403)
        put["constraint"] = applied_constraint(constraint)
    if _str_bool(kwargs.pop("rescaled", "false")):
        put["rescaled"] = True


def _lokr_full_matrix(kwargs: dict[str, str], put: dict[str, Any]) -> None:
    """LyCORIS's full_matrix (its str_bool): both LoKr factors full on every layer, whatever the rank. The
    low-rank splits it overrides (decompose_both, use_tucker) stay out of the spec: they change nothing; but
    use_tucker beside a preset file's LoCon / LoHa entries, whose modules take it (the adapter's `tucker`
    there: compiler/adapters.py _block_switches)."""
    if _str_bool(kwargs.pop("full_matrix", "false")):
        put["full_matrix"] = True
        put.pop("decompose_both", None)
        if not any(b.get("kind") in ("lora", "loha") for b in put.get("_blocks", ())):
            put.pop("tucker", None)


def _why(module: Legacy) -> str:
    return f"kohya {module.value}: its default layers"


def _int(text) -> int:
    return int(float(text))


def _float(text) -> float:
    return float(text)


def network_drops(kwargs: dict[str, str], network_dropout: Legacy | None) -> bool:
    """The network drops something: its `dropout` (else --network_dropout, which train_network.py hands on)
    or `rank_dropout` is above 0 (GLoRA / T-LoRA entries' bypass forward reads them,
    runtime/mixed_kinds.py)."""
    given = kwargs.get("dropout") or (network_dropout.value if network_dropout is not None else 0)
    return bool(_float(given or 0) or _float(kwargs.get("rank_dropout") or 0))


def other_block_kinds(conv: Conversion) -> set[str]:
    """The kinds of the converted [[adapter.blocks]] / [[adapter.text_encoder_blocks]] other than the
    adapter's (a preset file's map entries of other algos: a run of several kinds)."""
    kind = conv.values.get(("adapter", "kind"), (None, ""))[0]
    kinds = {
        value
        for key, (value, _) in conv.values.items()
        if key[0] == "adapter" and key[1] in ("blocks", "text_encoder_blocks") and key[-1] == "kind"
    }
    return kinds - {kind, "adapter"}


def map_init_weights(weights: Legacy, paths, conv: Conversion) -> None:
    """`--network_weights` -> adapter.init_weights, loaded as kohya's network loads it: `load_weights` calls
    `load_state_dict(weights_sd, False)`, so a layer the file lacks keeps its fresh init and a file layer the
    network lacks is ignored (adapter.init_partial)."""
    conv.mapped(weights, ("adapter", "init_weights"), paths.for_spec(weights.value))
    conv.put(
        ("adapter", "init_partial"),
        True,
        conv.comment(weights, "kohya's load_weights: load_state_dict(strict=False)"),
    )


def _other_axis_dora(weights: Legacy, paths, conv: Conversion) -> None:
    """DBS402 when a lycoris.kohya `--network_weights` file's `dora_scale` has the other axis's shape than
    the network's decomposed modules (wd_on_output): LoConModule / LohaModule / LokrModule build their
    dora_scale in the network's axis shape, so LycorisNetworkKohya.load_weights' load_state_dict fails with
    a size mismatch. Preset entries with a wd_on_out of their own: per layer by the plan
    (compiler/dora_axes.py) where the base model's files list the layers, else when the run loads."""
    values = conv.values
    blocks = [k for k in values if k[:2] in (("adapter", "blocks"), ("adapter", "text_encoder_blocks"))]
    decomposed = values.get(("adapter", "dora"), (False,))[0] or any(
        k[-1] == "dora" and values[k][0] == "on" for k in blocks
    )
    if not decomposed or any(k[-1] == "dora_axis" for k in blocks):
        return
    axis = values.get(("adapter", "dora_axis"), ("output",))[0]
    local = paths.local(weights.value)
    try:
        if local is None:
            return  # a Windows path: the run checks it when it loads the file
        shapes = {k: tuple(t.shape) for k, t in read_weights_header(local).items()}
    except (ModelFileError, OSError):
        return  # the plan reports the file (DBS357)
    found = other_axis_doras(shapes, axis)
    if found:
        more = f"; {len(found) - 1} other module(s) likewise" if len(found) > 1 else ""
        conv.invalid(
            weights.key,
            weights.value,
            weights.source,
            f"{found[0]}{more}: LyCORIS builds each decomposed module's dora_scale in the network's "
            "wd_on_output shape, and load_weights' load_state_dict fails with a size mismatch",
            help=f"set wd_on_output={axis != 'output'} in network_args (the file's), or start from another "
            "file",
        )


def _from_weights_ranks(file) -> dict[str, tuple[int, float]]:
    """{"rank"|"conv_rank": (rank, alpha)}: the text encoders' (else the denoiser's) most frequent linear pair
    and the denoiser's most frequent convolution pair (the blocks give each module its own)."""
    linear = common_pair(file, prefixes=tuple(TEXT_COMPONENTS)) or common_pair(file)
    out = {} if linear is None else {"rank": linear}
    convs = common_pair(file, conv=True)
    if convs:
        out["conv_rank"] = convs
    return out


def _from_weights_block_lr(a: dict[str, Legacy], conv: Conversion, original_names: bool):
    """networks.lora's block learning-rate weights with --dim_from_weights (model.py _from_weights_args keeps
    them in conv.facts): create_network_from_weights reads them (parse_block_lr_kwargs) and sets them on the
    network built from the file, so each file module trains at the rate times its block's weight. [] without
    them; False after reporting a preset kohya does not know (it crashes)."""
    kwargs = conv.facts.get("from_weights_block_lr")
    if not kwargs or a["network_module"].value != "networks.lora":
        return []
    try:
        return block_lr_weights(dict(kwargs), original_names) or []
    except ValueError as exc:
        args = a["network_args"]
        conv.invalid(args.key, args.value, args.source, str(exc))
        return False


def map_network_weights(
    a: dict[str, Legacy], paths, conv: Conversion, original_names: bool = False, flow: bool = False
) -> None:
    """`--network_weights`: train_network.py loads the file into the network after `apply_to` (before
    training; a resumed state loads over it), dbspec's `adapter.init_weights`. `--dim_from_weights`: the
    network is built from the file instead (networks/lora.py create_network_from_weights): its ranks and
    alphas, a module without alpha taking its rank, and network_dim / network_alpha / conv_dim unused.
    `flow`: lycoris.kohya on kohya's Flux / SD3, whose LoCon Tucker layer (SD3's patch convolution) starts
    from the file's `lora_mid` too (runtime/flow_init.py)."""
    weights, from_file = a["network_weights"], a["dim_from_weights"]
    if not weights.value:
        if from_file.value:
            conv.invalid(
                from_file.key,
                True,
                from_file.source,
                "--dim_from_weights reads the ranks from --network_weights, which is not given",
            )
        return
    if not_safetensors(weights, paths, conv):  # kohya's load_file raises
        return
    kind = conv.values.get(("adapter", "kind"), (None, ""))[0]
    lycoris = a["network_module"].value == "lycoris.kohya"
    # lycoris.kohya with --dim_from_weights never gets here with another algo: create_network_from_weights
    # reads no network_args (model.py _lycoris_from_weights_args drops them; the file's keys decide)
    if kind == "glora" and lycoris:
        # GLoRAModule takes a1 / a2 / b1 / b2 as they are; its load hook sets every module's scalar to 1
        # (use_scalar: runtime/init_weights.py does too)
        map_init_weights(weights, paths, conv)
        map_lycoris_file_alphas(weights, paths, conv)  # other kinds' LoCon / LoHa / LoKr blocks
        return
    if kind == "tlora":
        # TLoraModule takes q_layer.weight / p_layer.weight / lambda_layer as they are; its frozen start (the
        # base model's SVD: base_q / base_p / base_lambda, never in a file) stays, and the file's alpha loads
        # into a buffer it never reads (runtime/lycoris_whole_init.py)
        map_init_weights(weights, paths, conv)
        return
    if kind in _WHOLE_LAYER_KINDS and lycoris:
        # the preset's FullModules (W after apply_to); the load hook adds each one's `diff` / `diff_b`
        # (W + diff, init_scale 1; lycoris-lora 4.1.3), ignores the file's other modules and raises KeyError
        # for a FullModule the file lacks (checked when the run loads it: runtime/lycoris_init.py);
        # IA3Modules take `weight` / `on_input` as they are (no hook: a module the file lacks keeps its 0),
        # DiagOFTModules / ButterflyOFTModules `oft_blocks` / `rescale` (their `alpha` buffer loads unread)
        map_init_weights(weights, paths, conv)
        map_lycoris_file_alphas(weights, paths, conv)  # other kinds' LoCon / LoHa / LoKr blocks
        return
    if kind in _WHOLE_LAYER_KINDS:
        conv.unsupported(weights, f"dbspec starts LoRA alone from a file, not LyCORIS's {kind} algo")
        return
    if kind == "dylora" and other_block_kinds(conv):
        # a DyLoRA network whose preset entries give layers other algos: a run of several kinds, each
        # LyCORIS module loading its tensors (load_state_dict(strict=False)), the DyLoraModules their alpha
        # alone, which must be their blocks' (runtime/mixed_init.py checks it when the run loads the file)
        map_init_weights(weights, paths, conv)
        map_lycoris_file_alphas(weights, paths, conv)  # the LoCon / LoHa / LoKr blocks' alone
        return
    if kind == "dylora":  # lycoris.kohya algo=dylora (networks.dylora maps it in model.py; with
        # --dim_from_weights model.py maps it as the LoCon LyCORIS builds from the file)
        lycoris_dylora_alphas(weights, paths, conv, original_names)  # only the file's alphas load
        return
    # a train_norm network's file: its NormModules' w_norm / b_norm load into the norm offsets too
    # (runtime/init_weights.py), as load_state_dict(strict=False) loads them into the NormModules
    map_init_weights(weights, paths, conv)
    if not from_file.value:
        if lycoris:
            _other_axis_dora(weights, paths, conv)
            map_lycoris_file_alphas(weights, paths, conv)  # LyCORIS's modules keep their scale too
        map_file_alphas(a, paths, conv)  # kohya's networks.lora: a file of other alphas trains at its own
        return
    if lycoris and lycoris_builds_nothing(weights, from_file, paths, conv):
        return
    if not lycoris and lora_builds_nothing(weights, from_file, paths, conv):
        return
    local = paths.local(weights.value)
    try:
        if local is None:
            raise ValueError("a Windows path, not on this machine")
        # LyCORIS's make_module_from_state_dict builds a LoCon's Tucker form where the file has lora_mid, and
        # its weight decomposition where it has dora_scale; its NormModules beside them (train_norm's w_norm /
        # b_norm): model.py maps them to the norms
        file = read_lora_file(local, lora_mid=lycoris, norms=lycoris, dora_scale=lycoris)
        dora = locon_dora(local) if lycoris else False
        if isinstance(dora, str):
            raise ValueError(dora)
        some = dora if isinstance(dora, frozenset) else frozenset()  # the blocks' own dora
        ranks = _from_weights_ranks(file)
        weights_by_block = _from_weights_block_lr(a, conv, original_names)
        if weights_by_block is False:
            return
        blocks = sd_blocks(file, original_names, some, weights_by_block or None)
    except (ModelFileError, ValueError, OSError) as exc:
        if not report_weights(weights, local, exc, "--dim_from_weights reads the ranks from this file", conv):
            conv.unsupported(from_file, f"the ranks come from `{weights.value}`, which cannot be used: {exc}")
        return
    flat = next((m.name for m in file.modules.values() if len(m.down) == 4 and len(m.up) == 2), None)
    if flat is not None and a["network_module"].value == "lycoris.kohya":
        conv.invalid(  # LyCORIS's DyLoraModule saves a convolution's lora_up so
            from_file.key,
            True,
            from_file.source,
            f"`{flat}` is a convolution whose lora_up is 2-D (as LyCORIS's algo=dylora saves them): "
            "create_network_from_weights copies it into the LoConModule's (out, rank, 1, 1) lora_up, and "
            "torch raises RuntimeError (it broadcasts the shapes)",
            help="reshape each convolution's lora_up to (out, rank, 1, 1) in the file, or train without "
            "--dim_from_weights",
        )
        return
    bare = next((m.name for m in file.modules.values() if m.alpha is None), None)
    if bare is not None and a["network_module"].value == "lycoris.kohya":
        conv.invalid(  # networks.lora gives such a module its rank; LyCORIS's LoConModule does not
            from_file.key,
            True,
            from_file.source,
            f"LyCORIS's create_network_from_weights builds each LoCon with float(alpha), and `{bare}` has no "
            "alpha in the file: TypeError",
            help="train from a file with an `.alpha` for every module (as kohya and LyCORIS save them)",
        )
        return
    note = f"kohya --dim_from_weights: from {paths.name_of(weights.value)}"
    if any(m.mid for m in file.modules.values()):
        plain = next((m.name for m in file.modules.values() if m.conv and not m.mid), None)
        if plain is not None:
            conv.unsupported(
                from_file,
                f"the file mixes LoCon's Tucker form (lora_mid) with `{plain}`, a k x k convolution without "
                "one: dbspec's Tucker form is the adapter's, on every k x k convolution",
            )
            return
        # LoConModule.make_module_from_state_dict with lora_mid: the 1x1 / k x k / 1x1 chain
        conv.put(("adapter", "tucker"), True, note + ": its convolutions' lora_mid (LoCon's Tucker form)")
    if dora:  # LyCORIS's weight decomposition, on every module (True) or on those holding dora_scale
        why = note + ": its dora_scale (LyCORIS's LoConModule with weight_decompose there)"
        if dora is True:
            conv.put(("adapter", "dora"), True, why)
        conv.put(("adapter", "dora_form"), "lycoris", why)
    for key in ("network_dim", "network_alpha"):
        conv.reports.pop(key, None)  # mapped just before, from kohya's create_network call this flag skips
        conv.inert(a[key], "--dim_from_weights takes the ranks and alphas from the file")
    if "rank" in ranks:
        conv.put(("adapter", "rank"), ranks["rank"][0], note)
        conv.put(("adapter", "alpha"), float(ranks["rank"][1]), note)
    targets = list(KOHYA_UNET_TARGETS)
    for key in ("conv_rank", "conv_alpha", "conv_targets"):
        conv.values.pop(("adapter", key), None)
    if "conv_rank" in ranks:
        conv.put(("adapter", "conv_rank"), ranks["conv_rank"][0], note)
        conv.put(("adapter", "conv_alpha"), float(ranks["conv_rank"][1]), note)
    resnet = any(name.endswith(tuple(RESNET_LINEAR)) for _, name in denoiser_names(file, original_names))
    if "conv_rank" in ranks or resnet:
        targets += RESNET_LINEAR
    # networks.lora scans the ResNet blocks when built from weights: their 3x3 convolutions and linears
    if a["network_module"].value == "lycoris.kohya":
        linears, convs = _lycoris_extras(file, original_names)
        targets += linears
        if convs:
            conv.put(("adapter", "conv_targets"), [*KOHYA_CONV_TARGETS, *convs], note)
    conv.put(("adapter", "denoiser_targets"), targets, note)
    # the file's modules at their ranks, none elsewhere (create_network_from_weights); with block lr
    # weights each kohya block's own entries (group_lists: kohya's group per block, in its order)
    for index, block in enumerate(blocks):
        why = note + (": the modules it lacks get none" if block["pattern"] == "^" else ": its modules' rank")
        kohya_index = block.pop("index", None)
        if kohya_index is not None:
            conv.facts.setdefault("kohya_file_block_entries", {}).setdefault(kohya_index, []).append(index)
            why += f" and kohya block {kohya_index}'s lr weight"
        for key, value in block.items():
            conv.put(("adapter", "blocks", index, key), value, why)
    # text-encoder modules at several ranks, or not every layer's: kohya builds none where the file has none
    put_text_blocks(per_module_text_blocks(file, dora=some), note, conv)
    conv.record(from_file, "mapped", "adapter.rank, adapter.alpha")


# U-Net layers outside networks.lora's scan that a LyCORIS file can hold (its presets'
# UNET_TARGET_REPLACE_NAME), by kohya's name read as diffusers' path: (target, a convolution)
_LYCORIS_NAMED = {
    "conv_in": ("conv_in", True),
    "conv_out": ("conv_out", True),
    "time_embedding_linear_1": ("time_embedding.linear_1", False),
    "time_embedding_linear_2": ("time_embedding.linear_2", False),
    "add_embedding_linear_1": ("add_embedding.linear_1", False),
    "add_embedding_linear_2": ("add_embedding.linear_2", False),
}


def _lycoris_extras(file, original_names: bool) -> tuple[list[str], list[str]]:
    """(linear targets, convolution targets) beyond networks.lora's scan for the file's modules: LyCORIS's
    create_network_from_weights matches the file's names against every module of the U-Net
    (unet.named_modules()), so it also builds conv_in / conv_out and the embeddings' linears."""
    linears, convs = [], []
    for _, name in denoiser_names(file, original_names):
        if name in _LYCORIS_NAMED:
            target, is_conv = _LYCORIS_NAMED[name]
            (convs if is_conv else linears).append(target)
    return sorted(set(linears)), sorted(set(convs))


def put_text_blocks(blocks: list[dict], note: str, conv: Conversion) -> None:
    """[[adapter.text_encoder_blocks]] from file_ranks.per_module_text_blocks (none when empty)."""
    for index, block in enumerate(blocks):
        why = note + (": the modules it lacks get none" if block["pattern"] == "^" else ": its modules' rank")
        for key, value in block.items():
            conv.put(("adapter", "text_encoder_blocks", index, key), value, why)


def builtin_network_on_fp8(a: dict[str, Legacy], flow: bool) -> str:
    """Why kohya stops on a lycoris.kohya network from a built-in preset (all its denoiser modules of the
    network's algorithm; network.LYCORIS_BUILTIN_PRESETS, "ia3" building none) with --fp8_base (`flow`: Flux
    / SD3 / Chroma's scripts): their default forward on the float8 weights (forward_on_fp8) or, where kohya
    casts as it loads, FullModule.apply_to (full_on_fp8); "" where it runs (bypass_mode, GLoRA, full on SD
    1.x/2.x and SDXL), for a preset file (lycoris_maps.check_layers), a --dim_from_weights file, and without
    denoiser modules (network_train_text_encoder_only)."""
    fp8 = "" if given(a, "network_train_text_encoder_only") else fp8_denoiser(a, flow)
    from_file = given(a, "dim_from_weights") and given(a, "network_weights")
    if not fp8 or a["network_module"].value != "lycoris.kohya" or from_file:
        return ""
    kwargs, _ = parse_network_args(a["network_args"].value or [])
    preset = kwargs.get("preset", "full") or "full"
    algo = (kwargs.get("algo", "lora") or "lora").lower()
    nothing = preset == "ia3" or (flow and preset == "unet-convblock-only")  # no module (reported elsewhere)
    if preset not in LYCORIS_BUILTIN_PRESETS or nothing or algo not in _ALGOS:
        return ""
    source = f"the algo={algo} network (preset {preset})"
    try:
        full_on_fp8("its layers", _ALGOS[algo], source, fp8)
        forward_on_fp8("its layers", _ALGOS[algo], source, _str_bool(kwargs.get("bypass_mode", "false")), fp8)
    except PresetError as exc:
        return str(exc)
    return ""

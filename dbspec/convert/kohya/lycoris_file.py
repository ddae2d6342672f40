"""LyCORIS preset files (`--network_args preset=<file>.toml` with network_module lycoris.kohya).

lycoris-lora 4.1.3's create_network reads a preset that is none of its built-in names as a TOML file
(utils/preset.py read_preset: an unknown key, or a file toml cannot read, gives None and create_network's
`assert preset is not None` stops kohya). LycorisNetworkKohya.apply_preset sets only the keys the file has;
the others keep the class's defaults (the `full` preset's lists, convolutions on). `target_module`,
`target_name` and `lora_prefix` are valid keys its kohya network never reads.

The network walks each model's `named_modules()`: a module whose class the target-module list holds (and
whose path no target name matches) has each of its Linear and Conv layers adapted; a module whose path a
target name matches (`re.match` from the path's start, or fnmatch with `use_fnmatch`) is adapted itself;
paths `exclude_name` matches are skipped. The same layer reached twice (a class and a name, or a class
nested in another) is built twice and its duplicate name asserts. `module_algo_map` / `name_algo_map` entries
pick each built layer's algorithm, dim, alpha and other module arguments (_walk resolves them as
create_modules / create_modules_ / create_single_module do; lycoris_maps.py writes them as blocks).

dbspec reproduces that walk on a torch-free inventory of kohya's SD 1.x / 2.x U-Net (library/original_unet.py:
diffusers' module paths, `CrossAttention` for the attention) and CLIP text encoder, then writes the adapted
layers as the shortest path suffixes that match exactly those layers there (peft's suffix match). On SDXL
(sdxl_train_network.py) the walk runs on kohya's own U-Net (library/sdxl_original_unet.py: the original
layout's paths and classes, which a file's names and patterns are written against) and both CLIP encoders;
the adapted U-Net layers are then translated to diffusers' paths (dbspec/unet_layout.py), the model dbspec
trains. The two encoders share one target list where it picks exactly each one's layers; a file that adapts
other layers in one (an encoder's own root class, CLIPTextModel or CLIPTextModelWithProjection) gives the
second its own (adapter.text_encoder_2_targets). LyCORIS names the layers under a matched root class with a
doubled underscore (`lora_te1__text_model_...`: the empty path joined with "_"); dbspec's export writes
kohya's usual names."""

from __future__ import annotations

import fnmatch
import re
import tomli
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Callable, NamedTuple

from dbspec.util.targets import targeted
from dbspec.unet_layout import SDXL_UNET, diffusers_name

# lycoris-lora 4.1.3 config_sdk.VALID_PRESET_KEYS
_VALID_KEYS = (
    "enable_conv",
    "target_module",
    "target_name",
    "module_algo_map",
    "name_algo_map",
    "lora_prefix",
    "use_fnmatch",
    "unet_target_module",
    "unet_target_name",
    "text_encoder_target_module",
    "text_encoder_target_name",
    "exclude_name",
)
_LIST_KEYS = (
    "unet_target_module",
    "unet_target_name",
    "text_encoder_target_module",
    "text_encoder_target_name",
    "exclude_name",
)
# The class attributes the file's keys replace (LycorisNetworkKohya's defaults, the `full` preset), restricted
# to the class names kohya's SD 1.x / 2.x models have (the other model families' classes match nothing there).
_DEFAULTS: dict[str, Any] = {
    "enable_conv": True,
    "unet_target_module": [
        "Transformer2DModel",
        "ResnetBlock2D",
        "Downsample2D",
        "Upsample2D",
        "TimestepEmbedding",
    ],
    "unet_target_name": ["conv_in", "conv_out", "time_embedding.linear_1", "time_embedding.linear_2"],
    "text_encoder_target_module": ["CLIPAttention", "CLIPSdpaAttention", "CLIPMLP"],
    "text_encoder_target_name": [],
    "module_algo_map": {},
    "name_algo_map": {},
    "use_fnmatch": False,
    "exclude_name": [],
}

# Targets as dbspec's kohya conversions spell them, preferred to a shorter suffix of theirs.
_USUAL = ("to_out.0", "ff.net.0.proj", "ff.net.2", "time_embedding.linear_1", "time_embedding.linear_2")

# An inventory row: (path, class name, layer kind: "linear", "conv1" (1x1), "conv" (k x k) or "" (none)).
Row = tuple[str, str, str]


class PresetError(ValueError):
    """The file stops kohya (`crash`) or is not expressed (`crash` False)."""

    def __init__(self, message: str, crash: bool) -> None:
        super().__init__(message)
        self.crash = crash


def _add(rows: list[Row], path: str, cls: str, kind: str = "") -> None:
    rows.append((path, cls, kind))


def _resnet(rows: list[Row], p: str, shortcut: bool) -> None:
    _add(rows, p, "ResnetBlock2D")
    _add(rows, f"{p}.norm1", "GroupNorm")
    _add(rows, f"{p}.conv1", "Conv2d", "conv")
    _add(rows, f"{p}.time_emb_proj", "Linear", "linear")
    _add(rows, f"{p}.norm2", "GroupNorm")
    _add(rows, f"{p}.conv2", "Conv2d", "conv")
    if shortcut:
        _add(rows, f"{p}.conv_shortcut", "Conv2d", "conv1")


def _attention(rows: list[Row], p: str) -> None:
    _add(rows, p, "CrossAttention")
    for name in ("to_q", "to_k", "to_v"):
        _add(rows, f"{p}.{name}", "Linear", "linear")
    _add(rows, f"{p}.to_out", "ModuleList")
    _add(rows, f"{p}.to_out.0", "Linear", "linear")


def _transformer(rows: list[Row], p: str, linear_proj: bool, depth: int = 1) -> None:
    proj = ("Linear", "linear") if linear_proj else ("Conv2d", "conv1")
    _add(rows, p, "Transformer2DModel")
    _add(rows, f"{p}.norm", "GroupNorm")
    _add(rows, f"{p}.proj_in", *proj)
    _add(rows, f"{p}.transformer_blocks", "ModuleList")
    for k in range(depth):
        b = f"{p}.transformer_blocks.{k}"
        _add(rows, b, "BasicTransformerBlock")
        _attention(rows, f"{b}.attn1")
        _add(rows, f"{b}.ff", "FeedForward")
        _add(rows, f"{b}.ff.net", "ModuleList")
        _add(rows, f"{b}.ff.net.0", "GEGLU")
        _add(rows, f"{b}.ff.net.0.proj", "Linear", "linear")
        _add(rows, f"{b}.ff.net.1", "Identity")
        _add(rows, f"{b}.ff.net.2", "Linear", "linear")
        _attention(rows, f"{b}.attn2")
        for name in ("norm1", "norm2", "norm3"):
            _add(rows, f"{b}.{name}", "LayerNorm")
    _add(rows, f"{p}.proj_out", *proj)


def sd_unet(v2: bool) -> list[Row]:
    """kohya's SD 1.x / 2.x U-Net (library/original_unet.py), its named_modules() in order."""
    rows: list[Row] = []
    _add(rows, "", "UNet2DConditionModel")
    _add(rows, "conv_in", "Conv2d", "conv")
    _add(rows, "time_proj", "Timesteps")
    _add(rows, "time_embedding", "TimestepEmbedding")
    _add(rows, "time_embedding.linear_1", "Linear", "linear")
    _add(rows, "time_embedding.act", "SiLU")
    _add(rows, "time_embedding.linear_2", "Linear", "linear")
    _add(rows, "down_blocks", "ModuleList")
    channels = [320, 640, 1280, 1280]
    for i in range(4):
        p = f"down_blocks.{i}"
        cross = i < 3
        _add(rows, p, "CrossAttnDownBlock2D" if cross else "DownBlock2D")
        if cross:
            _add(rows, f"{p}.attentions", "ModuleList")
            for j in range(2):
                _transformer(rows, f"{p}.attentions.{j}", v2)
        _add(rows, f"{p}.resnets", "ModuleList")
        for j in range(2):
            _resnet(rows, f"{p}.resnets.{j}", j == 0 and i > 0 and channels[i - 1] != channels[i])
        if i < 3:
            _add(rows, f"{p}.downsamplers", "ModuleList")
            _add(rows, f"{p}.downsamplers.0", "Downsample2D")
            _add(rows, f"{p}.downsamplers.0.conv", "Conv2d", "conv")
    _add(rows, "up_blocks", "ModuleList")
    for i in range(4):
        p = f"up_blocks.{i}"
        cross = i > 0
        _add(rows, p, "CrossAttnUpBlock2D" if cross else "UpBlock2D")
        if cross:
            _add(rows, f"{p}.attentions", "ModuleList")
            for j in range(3):
                _transformer(rows, f"{p}.attentions.{j}", v2)
        _add(rows, f"{p}.resnets", "ModuleList")
        for j in range(3):
            _resnet(rows, f"{p}.resnets.{j}", True)  # the skip connection widens every up ResNet's input
        if i < 3:
            _add(rows, f"{p}.upsamplers", "ModuleList")
            _add(rows, f"{p}.upsamplers.0", "Upsample2D")
            _add(rows, f"{p}.upsamplers.0.conv", "Conv2d", "conv")
    _add(rows, "mid_block", "UNetMidBlock2DCrossAttn")
    _add(rows, "mid_block.attentions", "ModuleList")
    _transformer(rows, "mid_block.attentions.0", v2)
    _add(rows, "mid_block.resnets", "ModuleList")
    for j in range(2):
        _resnet(rows, f"mid_block.resnets.{j}", False)
    _add(rows, "conv_norm_out", "GroupNorm")
    _add(rows, "conv_act", "SiLU")
    _add(rows, "conv_out", "Conv2d", "conv")
    return rows


def _sdxl_resnet(rows: list[Row], p: str, shortcut: bool) -> None:
    _add(rows, p, "ResnetBlock2D")
    _add(rows, f"{p}.in_layers", "Sequential")
    _add(rows, f"{p}.in_layers.0", "GroupNorm32")
    _add(rows, f"{p}.in_layers.1", "SiLU")
    _add(rows, f"{p}.in_layers.2", "Conv2d", "conv")
    _add(rows, f"{p}.emb_layers", "Sequential")
    _add(rows, f"{p}.emb_layers.0", "SiLU")
    _add(rows, f"{p}.emb_layers.1", "Linear", "linear")
    _add(rows, f"{p}.out_layers", "Sequential")
    _add(rows, f"{p}.out_layers.0", "GroupNorm32")
    _add(rows, f"{p}.out_layers.1", "SiLU")
    _add(rows, f"{p}.out_layers.2", "Identity")
    _add(rows, f"{p}.out_layers.3", "Conv2d", "conv")
    _add(rows, f"{p}.skip_connection", *(("Conv2d", "conv1") if shortcut else ("Identity",)))


def sdxl_unet() -> list[Row]:
    """kohya's SDXL U-Net (library/sdxl_original_unet.py SdxlUNet2DConditionModel), its named_modules() in
    order: the original layout's paths (input_blocks / middle_block / output_blocks), kohya's classes
    (`CrossAttention`; the time and label embeddings are nn.Sequential, the first and last convolutions
    `input_blocks.0.0` and `out.2`, the downsamplers' convolution `op`). Three levels (320, 640, 1280
    channels), their attentions 0, 2 and 10 transformer blocks deep."""
    rows: list[Row] = []
    _add(rows, "", "SdxlUNet2DConditionModel")
    for path in ("time_embed", "label_emb", "label_emb.0"):
        _add(rows, path, "Sequential")
        if path != "label_emb":
            _add(rows, f"{path}.0", "Linear", "linear")
            _add(rows, f"{path}.1", "SiLU")
            _add(rows, f"{path}.2", "Linear", "linear")
    _add(rows, "input_blocks", "ModuleList")
    _add(rows, "input_blocks.0", "Sequential")
    _add(rows, "input_blocks.0.0", "Conv2d", "conv")
    depths = (0, 2, 10)  # transformer blocks per attention, by level
    n = 1
    for level in range(3):
        for j in range(2):
            p = f"input_blocks.{n}"
            _add(rows, p, "ModuleList")
            _sdxl_resnet(rows, f"{p}.0", j == 0 and level > 0)
            if depths[level]:
                _transformer(rows, f"{p}.1", True, depths[level])
            n += 1
        if level < 2:
            _add(rows, f"input_blocks.{n}", "Sequential")
            _add(rows, f"input_blocks.{n}.0", "Downsample2D")
            _add(rows, f"input_blocks.{n}.0.op", "Conv2d", "conv")
            n += 1
    _add(rows, "middle_block", "ModuleList")
    _sdxl_resnet(rows, "middle_block.0", False)
    _transformer(rows, "middle_block.1", True, 10)
    _sdxl_resnet(rows, "middle_block.2", False)
    _add(rows, "output_blocks", "ModuleList")
    n = 0
    for level in (2, 1, 0):
        for j in range(3):
            p = f"output_blocks.{n}"
            _add(rows, p, "ModuleList")
            _sdxl_resnet(rows, f"{p}.0", True)  # the skip connection widens every up ResNet's input
            if depths[level]:
                _transformer(rows, f"{p}.1", True, depths[level])
            if j == 2 and level > 0:
                _add(rows, f"{p}.2", "Upsample2D")
                _add(rows, f"{p}.2.conv", "Conv2d", "conv")
            n += 1
    _add(rows, "out", "ModuleList")
    _add(rows, "out.0", "GroupNorm32")
    _add(rows, "out.1", "SiLU")
    _add(rows, "out.2", "Conv2d", "conv")
    return rows


def clip_text(layers: int, projection: bool = False) -> list[Row]:
    """transformers' CLIPTextModel as kohya builds it (SD 1.x and SDXL's first encoder: 12 layers; SD 2.x:
    23), or with `projection` SDXL's second, CLIPTextModelWithProjection (32 layers, then `text_projection`),
    named_modules(). The transformers kohya pins (4.54.1) has one attention class, CLIPAttention
    (CLIPSdpaAttention, which older releases built by default, matches nothing)."""
    rows: list[Row] = []
    _add(rows, "", "CLIPTextModelWithProjection" if projection else "CLIPTextModel")
    _add(rows, "text_model", "CLIPTextTransformer")
    _add(rows, "text_model.embeddings", "CLIPTextEmbeddings")
    _add(rows, "text_model.embeddings.token_embedding", "Embedding")
    _add(rows, "text_model.embeddings.position_embedding", "Embedding")
    _add(rows, "text_model.encoder", "CLIPEncoder")
    _add(rows, "text_model.encoder.layers", "ModuleList")
    for i in range(layers):
        p = f"text_model.encoder.layers.{i}"
        _add(rows, p, "CLIPEncoderLayer")
        _add(rows, f"{p}.self_attn", "CLIPAttention")
        for name in ("k_proj", "v_proj", "q_proj", "out_proj"):
            _add(rows, f"{p}.self_attn.{name}", "Linear", "linear")
        _add(rows, f"{p}.layer_norm1", "LayerNorm")
        _add(rows, f"{p}.mlp", "CLIPMLP")
        _add(rows, f"{p}.mlp.activation_fn", "QuickGELUActivation" if layers == 12 else "GELUActivation")
        _add(rows, f"{p}.mlp.fc1", "Linear", "linear")
        _add(rows, f"{p}.mlp.fc2", "Linear", "linear")
        _add(rows, f"{p}.layer_norm2", "LayerNorm")
    _add(rows, "text_model.final_layer_norm", "LayerNorm")
    if projection:
        _add(rows, "text_projection", "Linear", "linear")
    return rows


def read_preset(path) -> dict[str, Any]:
    """The file's table as LyCORIS reads it; PresetError (a crash) for what its read_preset refuses. OSError
    when the file cannot be read here."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as exc:
        raise PresetError(
            f"it is not TOML ({exc}): LyCORIS's read_preset returns None and asserts", True
        ) from None
    unknown = sorted(k for k in data if k not in _VALID_KEYS)
    if unknown:
        raise PresetError(
            f"unknown preset keys {', '.join(unknown)} (LyCORIS's read_preset refuses the file and "
            "create_network asserts)",
            True,
        )
    return data


def _settings(data: dict[str, Any], algo: str) -> dict[str, Any]:
    """LycorisNetworkKohya's attributes after apply_preset (and `algo`, the network's algorithm);
    PresetError for values dbspec cannot express."""
    out = dict(_DEFAULTS, algo=algo)
    for key in ("enable_conv", "use_fnmatch"):
        if key in data:
            if not isinstance(data[key], bool):
                raise PresetError(f"`{key}` = {data[key]!r} is no boolean (LyCORIS tests its truth)", False)
            out[key] = data[key]
    for key in _LIST_KEYS:
        if key in data:
            value = data[key]
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise PresetError(f"`{key}` is no list of strings", False)
            out[key] = value
    for key in ("module_algo_map", "name_algo_map"):
        table = data.get(key) or {}
        if not isinstance(table, dict):
            raise PresetError(f"`{key}` is no table", True)
        for name, override in table.items():
            if not isinstance(override, dict):
                raise PresetError(f"`{key}.{name}` is no table", True)
        out[key] = table
    return out


# LyCORIS's network_module_dict (lycoris/wrapper.py): the `algo` names a map entry may give (lora and locon
# are one class, LoConModule)
_MAP_ALGOS = ("lora", "locon", "loha", "lokr", "dylora", "glora", "full", "diag-oft", "boft", "ia3", "tlora")
# create_single_module hands these to the module class itself: an entry holding one gives the class the same
# argument twice (TypeError)
_MODULE_ARGS = (
    "lora_name",
    "org_module",
    "multiplier",
    "lora_dim",
    "dropout",
    "rank_dropout",
    "module_dropout",
)


@dataclass(frozen=True)
class Layer:
    """One layer LyCORIS's kohya network builds: its algorithm, dim and alpha as create_single_module
    resolves them (a map entry's `dim` / `alpha`, else the network's linear or convolution values), the
    entry's other keys (`options`, handed to the module class) and the entry (`source`, "" for none)."""

    path: str
    kind: str
    algo: str
    dim: Any
    alpha: Any
    options: tuple[tuple[str, Any], ...] = ()
    source: str = ""


def _matcher(use_fnmatch: bool) -> Callable[[str, str], bool]:
    def match(pattern: str, name: str) -> bool:
        if use_fnmatch:
            return fnmatch.fnmatch(name, pattern)
        try:
            return re.match(pattern, name) is not None
        except re.error as exc:
            raise PresetError(
                f"`{pattern}` is no regular expression ({exc}): re.match raises", True
            ) from None

    return match


def _walk(
    rows: list[Row], classes: list[str], names: list[str], s: dict[str, Any], dims, norms: bool = False
) -> list[Layer]:
    """The layers LycorisNetworkKohya's create_modules builds in one model, in its order (duplicates kept);
    with `norms` (train_norm) also, as kind "norm", each module whose class name holds "Norm" (its
    create_single_module gives those a NormModule before it looks at Linears and convolutions).
    `dims`: the network's (linear dim, alpha, convolution dim, alpha), the convolution dim 0 without
    enable_conv. A module of a target class takes its class's `module_algo_map` entry and, inside it
    (create_modules_), every sub-module whose class has an entry takes that entry for its own layers (the
    first entry to reach a layer keeps it); a module a target name picks takes the first `name_algo_map`
    entry whose key is its path or matches it, else its class's `module_algo_map` entry."""
    match = _matcher(s["use_fnmatch"])
    excludes = s["exclude_name"]
    modules, named = s["module_algo_map"], s["name_algo_map"]
    lora_dim, alpha, conv_dim, conv_alpha = dims

    def excluded(name: str) -> bool:
        return bool(name) and bool(excludes) and (name in excludes or any(match(t, name) for t in excludes))

    def single(path: str, kind: str, algo: str, config: dict, source: str) -> Layer | None:
        # create_single_module: a map entry's dim / alpha, else the network's (`or`: 0 falls back too)
        dim, a = config.get("dim"), config.get("alpha")
        if kind == "norm":
            return Layer(path, kind, algo, 0, 0.0, (), source)
        if kind in ("linear", "conv1") and lora_dim > 0:
            dim, a = dim or lora_dim, a or alpha
        elif kind == "conv" and (conv_dim > 0 or dim):
            dim, a = dim or conv_dim, a or conv_alpha
        else:
            return None
        options = tuple((k, v) for k, v in config.items() if k not in ("algo", "dim", "alpha"))
        return Layer(path, kind, algo, dim, a, options, source)

    def end(i: int) -> int:  # rows are named_modules() order: a module's sub-modules follow it
        path = rows[i][0]
        j = i + 1
        while j < len(rows) and (path == "" or rows[j][0].startswith(path + ".")):
            j += 1
        return j

    def inside(i: int, algo: str, config: dict, source: str) -> dict[str, Layer]:  # create_modules_
        built: dict[str, Layer] = {}
        for j in range(i, end(i)):
            sub, cls, kind = rows[j]
            if excluded(sub):
                continue
            if cls in modules and j != i:
                entry = modules[cls]
                for path, layer in inside(
                    j, entry.get("algo", algo), entry, f"module_algo_map.{cls}"
                ).items():
                    built.setdefault(path, layer)
                continue
            if sub in built:
                continue
            layer = single(sub, "norm" if norms and "Norm" in cls else kind, algo, config, source)
            if layer is not None:
                built[sub] = layer
        return built

    def by_name(name: str) -> tuple[dict, str] | None:  # find_conf_for_name
        if name in named:
            return named[name], f"name_algo_map.{name}"
        return next(((v, f"name_algo_map.{k}") for k, v in named.items() if match(k, name)), None)

    built: list[Layer] = []
    for i, (name, cls, kind) in enumerate(rows):
        if excluded(name):
            continue
        if cls in classes and not any(match(t, name) for t in names):
            config, source = (modules[cls], f"module_algo_map.{cls}") if cls in modules else ({}, "")
            built.extend(inside(i, config.get("algo", s["algo"]), config, source).values())
        elif name in names or any(match(t, name) for t in names):
            found = by_name(name)
            if found is None:
                found = (modules[cls], f"module_algo_map.{cls}") if cls in modules else ({}, "")
            config, source = found
            kind = "norm" if norms and "Norm" in cls else kind
            layer = single(name, kind, config.get("algo", s["algo"]), config, source)
            if layer is not None:
                built.append(layer)
    for layer in built:  # what the module class's call raises
        if layer.algo not in _MAP_ALGOS:
            raise PresetError(
                f"`{layer.source}` gives {layer.path} algo = {layer.algo!r}, which LyCORIS's "
                f"network_module_dict has not ({', '.join(_MAP_ALGOS)}): KeyError",
                True,
            )
        twice = [k for k, _ in layer.options if k in _MODULE_ARGS]
        if twice:
            raise PresetError(
                f"`{layer.source}` holds `{twice[0]}`, which create_single_module already hands the module "
                f"class ({layer.path}): TypeError, multiple values for an argument",
                True,
            )
    return built


def _suffixes(chosen: set[str], rows: list[Row], skip: int = 0) -> list[str]:
    """The shortest dotted suffixes that, matched as peft matches targets (`path == t` or
    `path.endswith("." + t)`), pick exactly `chosen` among `rows`' modules; `skip`: leading path parts never
    part of a suffix (CLIP's `text_model`, which newer transformers releases drop)."""
    paths = [p for p, _, _ in rows if p]
    order = {p: i for i, p in enumerate(paths)}
    picks = _picked_by(tuple(paths))
    out: list[str] = []
    for path in sorted(chosen, key=order.__getitem__):
        if targeted(path, out):
            continue
        parts = path.split(".")
        for n in range(1, len(parts) + 1 - skip):
            suffix = ".".join(parts[-n:])
            if parts[-n].isdigit() or any(
                t != suffix and t.endswith("." + suffix) and path.endswith("." + t) for t in _USUAL
            ):  # from a named part on; kohya's usual names (ff.net.2, not net.2)
                continue
            if picks[suffix] <= chosen:
                out.append(suffix)
                break
    return out


@lru_cache(maxsize=8)
def _picked_by(paths: tuple[str, ...]) -> dict[str, set[str]]:
    """{suffix: the paths it picks as peft matches a target} for every dotted suffix of `paths`: one pass
    over the model's modules instead of one per candidate suffix (SDXL's U-Net has ~2500); a conversion
    asks for the same model's several times. Read only."""
    picks: dict[str, set[str]] = {}
    for path in paths:
        parts = path.split(".")
        for n in range(1, len(parts) + 1):
            picks.setdefault(".".join(parts[-n:]), set()).add(path)
    return picks


class Targets(NamedTuple):
    """A preset file's layers on kohya's model: the targets dbspec writes (text_encoder_2: None where
    text_encoder's fit both encoders) and each built layer (`unet`: its
    diffusers path -> Layer; `text`: `<component>.<path>` -> Layer, the component text_encoder or SDXL's
    text_encoder_2, as LyCORIS resolves its algorithm, dim and alpha) with the rows of those paths."""

    denoiser: list[str]
    text_encoder: list[str]
    convs: list[str]
    text_encoder_2: list[str] | None  # SDXL's OpenCLIP bigG where its layers differ from CLIP-L's
    unet: dict[str, Layer]
    text: dict[str, Layer]
    unet_rows: list[Row]
    text_rows: list[Row]
    norms: "NormTargets | None" = None  # train_norm's (network.py preset_file_targets)


def preset_targets(data: dict[str, Any], algo: str, v2: bool, dims, sdxl: bool = False) -> Targets:
    """The targets and layers of a preset file's table on kohya's SD 1.x (`v2` False) or 2.x model, or with
    `sdxl` its SDXL model; `dims`: the network's (dim, alpha, conv_dim, conv_alpha). PresetError where kohya
    stops or dbspec cannot express the file."""
    s = _settings(data, algo)
    unet = sdxl_unet() if sdxl else sd_unet(v2)
    texts = [clip_text(12), clip_text(32, projection=True)] if sdxl else [clip_text(23 if v2 else 12)]
    dim, alpha, conv_dim, conv_alpha = dims
    conv_dims = (dim, alpha, conv_dim if s["enable_conv"] else 0, conv_alpha)
    built_texts = [
        _walk(text, s["text_encoder_target_module"], s["text_encoder_target_name"], s, (dim, alpha, 0, 0))
        for text in texts
    ]
    built_unet = _walk(unet, s["unet_target_module"], s["unet_target_name"], s, conv_dims)
    for built in (*built_texts, built_unet):
        paths = [layer.path for layer in built]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise PresetError(
                f"it reaches {twice[0]} twice (a target class and a target name, or nested target classes): "
                "LyCORIS builds the layer twice and asserts on the duplicate name",
                True,
            )
    if sdxl:  # the walk ran on kohya's original-layout paths; dbspec adapts diffusers' SDXL U-Net
        unet = [(diffusers_name(p, SDXL_UNET, "."), cls, kind) for p, cls, kind in unet if kind]
        built_unet = [replace(layer, path=diffusers_name(layer.path, SDXL_UNET, ".")) for layer in built_unet]
    pointwise = {layer.path for layer in built_unet if layer.kind != "conv"}
    spatial = {layer.path for layer in built_unet if layer.kind == "conv"}
    components = ["text_encoder", "text_encoder_2"][: len(texts)]
    text, text_2 = _text_targets(texts, [[layer.path for layer in built] for built in built_texts])
    return Targets(
        _suffixes(pointwise, unet),
        text,
        _suffixes(spatial, unet),
        text_2,
        {layer.path: layer for layer in built_unet},
        {
            f"{c}.{layer.path}": replace(layer, path=f"{c}.{layer.path}")
            for c, built in zip(components, built_texts)
            for layer in built
        },
        unet,
        [(f"{c}.{p}", cls, kind) for c, rows in zip(components, texts) for p, cls, kind in rows if p],
    )


def _text_targets(texts: list[list[Row]], built_texts: list[list[str]]) -> tuple[list[str], list[str] | None]:
    """(text_encoder_targets, text_encoder_2_targets or None): one list for every text encoder where one
    fits, the suffixes picking the last (widest) encoder's layers that pick exactly each other encoder's too
    (SDXL's CLIP-L has the paths and classes of OpenCLIP bigG's first 12 layers, so a file picks the same
    layers in both unless it names a path or class one encoder alone has); else, on SDXL, each encoder's own
    (adapter.text_encoder_2_targets for OpenCLIP bigG, kohya's lora_te2 modules)."""
    targets = _encoder_targets(texts[-1], built_texts[-1])
    if all(_picked(rows, targets) == set(built) for rows, built in zip(texts, built_texts)):
        return targets, None
    first, second = (_encoder_targets(rows, built) for rows, built in zip(texts, built_texts))
    for rows, built, found in zip(texts, built_texts, (first, second)):
        if _picked(rows, found) != set(built):  # a defensive check: _suffixes picks exactly what it is given
            odd = sorted(_picked(rows, found) ^ set(built))[0]
            raise PresetError(
                f"dbspec's text-encoder targets cannot pick exactly the layers it adapts ({odd})", False
            )
    return first, second


def _encoder_targets(rows: list[Row], built: list[str]) -> list[str]:
    """The suffixes picking exactly `built` among one encoder's `rows`."""
    chosen = set(built)
    top = sorted(p for p in chosen if not p.startswith("text_model."))  # text_projection: no level to skip
    return _suffixes(chosen - set(top), rows, skip=1) + top


def _picked(rows: list[Row], targets: list[str]) -> set[str]:
    names = frozenset(targets)
    return {p for p, _, k in rows if k and targeted(p, names)}


# lycoris-lora 4.1.3 config.py BUILTIN_PRESET_CONFIGS: the keys each built-in preset sets that reach kohya's
# SD 1.x / 2.x / SDXL models (their other classes are other models'; `full` is the class defaults, _DEFAULTS).
# Only which norms they reach is read from these (preset_norms): the targets are network.py's _PRESETS.
BUILTIN_TABLES: dict[str, dict[str, Any]] = {
    "full": {},
    "full-lin": {
        "enable_conv": False,
        "unet_target_module": ["Transformer2DModel", "ResnetBlock2D", "TimestepEmbedding"],
        "unet_target_name": ["time_embedding.linear_1", "time_embedding.linear_2"],
    },
    "attn-mlp": {
        "enable_conv": False,
        "unet_target_module": ["Transformer2DModel", "TimestepEmbedding"],
        "unet_target_name": [],
    },
    "attn-only": {
        "enable_conv": False,
        "unet_target_module": ["CrossAttention", "SelfAttention"],
        "unet_target_name": [],
        "text_encoder_target_module": ["CLIPAttention", "CLIPSdpaAttention"],
    },
    "unet-only": {"text_encoder_target_module": []},
    "unet-transformer-only": {
        "enable_conv": False,
        "unet_target_module": ["Transformer2DModel", "TimestepEmbedding"],
        "unet_target_name": [],
        "text_encoder_target_module": [],
    },
    "unet-convblock-only": {
        "unet_target_module": ["ResnetBlock2D", "Downsample2D", "Upsample2D"],
        "unet_target_name": ["conv_in", "conv_out"],
        "text_encoder_target_module": [],
    },
}


class NormTargets(NamedTuple):
    """The norms `train_norm` gives a NormModule (lycoris/modules/norms.py): the U-Net's (diffusers' paths,
    and the suffixes picking exactly them: adapter.denoiser_norms) and each CLIP encoder's (its paths, and the
    suffixes picking exactly each encoder's: adapter.text_encoder_norms; on SDXL, where one list cannot
    pick both encoders' (a file naming one encoder's root class), the second's own in `text_encoder_2`:
    adapter.text_encoder_2_norms)."""

    denoiser: list[str]
    text_encoder: list[str]
    unet_paths: list[str]
    text_paths: list[list[str]]
    text_encoder_2: list[str] | None = None


def preset_norms(data: dict[str, Any], v2: bool, sdxl: bool = False) -> NormTargets:
    """The norms LycorisNetworkKohya's walk gives a NormModule with `train_norm` (its create_single_module
    turns each module whose class name holds "Norm" and that the walk reaches into one, whatever the algo) on
    kohya's SD 1.x (`v2` False) / 2.x or (`sdxl`) SDXL model, for a preset table (a file's, or a built-in's
    BUILTIN_TABLES entry). PresetError (a crash) where a norm is reached twice, as preset_targets."""
    s = _settings(data, "lora")
    unet = sdxl_unet() if sdxl else sd_unet(v2)
    texts = [clip_text(12), clip_text(32, projection=True)] if sdxl else [clip_text(23 if v2 else 12)]

    def norms(rows: list[Row], classes: list[str], names: list[str]) -> list[str]:
        built = [layer.path for layer in _walk(rows, classes, names, s, (1, 1.0, 1, 1.0), True)]
        kinds = {p: cls for p, cls, _ in rows}
        built = [p for p in built if "Norm" in kinds[p]]  # the other layers: preset_targets
        twice = sorted({p for p in built if built.count(p) > 1})
        if twice:
            raise PresetError(
                f"it reaches {twice[0]} twice: LyCORIS builds the layer twice and asserts on the "
                "duplicate name",
                True,
            )
        return built

    unet_paths = norms(unet, s["unet_target_module"], s["unet_target_name"])
    text_paths = [norms(t, s["text_encoder_target_module"], s["text_encoder_target_name"]) for t in texts]
    return norm_targets(unet_paths, text_paths, v2, sdxl)


def norm_targets(unet_paths: list[str], text_paths: list[list[str]], v2: bool, sdxl: bool) -> NormTargets:
    """The NormTargets of these norms of kohya's SD 1.x (`v2` False) / 2.x or (`sdxl`) SDXL models (the
    U-Net's paths in kohya's layout, SDXL's original one; each CLIP encoder's): the suffixes picking exactly
    them."""
    unet = sdxl_unet() if sdxl else sd_unet(v2)
    texts = [clip_text(12), clip_text(32, projection=True)] if sdxl else [clip_text(23 if v2 else 12)]
    if sdxl:  # the walk ran on kohya's original-layout paths; dbspec offsets diffusers' SDXL U-Net
        unet = [
            (diffusers_name(p, SDXL_UNET, "."), cls, kind) for p, cls, kind in unet if kind or "Norm" in cls
        ]
        unet_paths = [diffusers_name(p, SDXL_UNET, ".") for p in unet_paths]
    wide = _suffixes(set(text_paths[-1]), texts[-1], skip=1)  # the widest encoder's, as _text_targets
    denoiser = _suffixes(set(unet_paths), unet)
    if all(_norms_picked(rows, wide) == set(paths) for rows, paths in zip(texts, text_paths)):
        return NormTargets(denoiser, wide, unet_paths, text_paths)
    first, second = (_suffixes(set(paths), rows, skip=1) for rows, paths in zip(texts, text_paths))
    for rows, paths, found in zip(texts, text_paths, (first, second)):
        if _norms_picked(rows, found) != set(paths):  # a defensive check: _suffixes picks exactly its paths
            raise PresetError(
                f"dbspec's norm suffixes cannot pick exactly the norms it reaches ({paths})", False
            )
    return NormTargets(denoiser, first, unet_paths, text_paths, second)


def _norms_picked(rows: list[Row], targets: list[str]) -> set[str]:
    names = frozenset(targets)
    return {p for p, cls, _ in rows if "Norm" in cls and targeted(p, names)}

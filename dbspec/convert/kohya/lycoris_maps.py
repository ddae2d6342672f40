"""A LyCORIS preset file's `module_algo_map` / `name_algo_map` as dbspec's per-layer ranks.

lycoris-lora 4.1.3's kohya network (lycoris/kohya.py, LycorisNetworkKohya.__init__) hands each layer's map
entry to create_single_module: the entry's `algo` picks the module class, its `dim` / `alpha` replace the
network's (`dim or lora_dim`, `alpha or self.alpha` on Linear and 1x1 layers; `dim or conv_lora_dim`, `alpha
or self.conv_alpha` on k x k convolutions, which an entry's `dim` adapts even with convolutions off), and its
other keys go to the module class as keyword arguments. lycoris_file._walk resolves which entry reaches each
layer; this module turns the result into `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (LoRA/LoCon,
LoHa, LoKr; a LoKr entry's own `factor`, `decompose_both`, `full_matrix` and `use_tucker` too), or
PresetError (`crash` False) for what dbspec does not express:
another algorithm on some layers, an entry's other options, per-layer dims on the other algorithms."""

from __future__ import annotations

import math
import re
from typing import Any

from dbspec.convert.kohya.lycoris_entry_opts import own_rs_lora, own_scalar, own_tucker, split_options
from dbspec.convert.kohya.lycoris_file import Layer, PresetError, Row, Targets, _suffixes
from dbspec.plan.lokr import factorization

# lycoris-lora's network_module_dict: lora and locon are one class (LoConModule)
_CLASS = {"locon": "lora"}
# algorithms whose modules never read dim / alpha (FullModule, IA3Module): a map's values change nothing
_NO_DIMS = ("full", "ia3")
# the adapter kinds whose spec has [[adapter.blocks]], and their ranks' bound (spec AdapterBlock.rank)
_BLOCK_KINDS = ("lora", "loha", "lokr")
_MAX_BLOCK_RANK = 1024


def _algo(name: str) -> str:
    return _CLASS.get(name, name)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The keyword arguments each lycoris-lora 4.1.3 module class reads besides those create_single_module sets
# itself (lora_name, module, multiplier, dim, alpha, the dropouts); a map entry's other keys land in the
# class's **kwargs, which it never reads.
_COMMON = ("use_tucker", "use_scalar", "rank_dropout_scale", "bypass_mode")
_READS = {
    "lora": (*_COMMON, "weight_decompose", "wd_on_out", "rs_lora"),
    "loha": (*_COMMON, "weight_decompose", "wd_on_out", "rs_lora"),
    "lokr": (
        *_COMMON,
        "weight_decompose",
        "wd_on_out",
        "rs_lora",
        "decompose_both",
        "factor",
        "full_matrix",
        "unbalanced_factorization",
    ),
    "full": _COMMON,
    "ia3": (*_COMMON, "weight_decompose", "rs_lora", "train_on_input"),
    "diag-oft": (*_COMMON, "constraint", "rescaled"),
    "boft": (*_COMMON, "constraint", "rescaled"),
    "glora": (*_COMMON, "weight_decompose", "rs_lora"),
    "dylora": (*_COMMON, "weight_decompose", "rs_lora", "block_size", "train_on_input"),
}


# The module options a map entry may give its layers that [[adapter.blocks]] express (a block's `factor`,
# and LokrModule's switches, which it tests for truth: `decompose_both`, `full_matrix`, `use_tucker`)
_SWITCHES = {
    "decompose_both": "decompose_both",
    "full_matrix": "full_matrix",
    "use_tucker": "tucker",
    "unbalanced_factorization": "unbalanced_factorization",
}
_PER_BLOCK = {"lokr": ("factor", *_SWITCHES)}
_MAX_FACTOR = 65536  # spec AdapterBlock.factor's bound; a larger factor splits as -1 on every width


def _own_factor(layer: Layer, network: dict[str, Any]) -> int:
    """The block `factor` of a LoKr layer whose entry gives its own (LokrModule's int(factor), 0 splitting as
    1 and every negative as -1); 0 where it splits as the network's."""
    value = dict(layer.options).get("factor")
    if value is None or _algo(layer.algo) != "lokr" or _same("factor", value, network):
        return 0
    factor = int(value)
    return 1 if factor == 0 else -1 if factor < 0 or factor > _MAX_FACTOR else factor


def _own_switches(layer: Layer, network: dict[str, Any], convs: bool) -> dict[str, str]:
    """A LoKr layer's block decompose_both / full_matrix / tucker ("on" / "off") where its entry gives a
    value other than the network's (LokrModule's truth test; `tucker` only on k x k convolutions, `convs`:
    whether the block has any)."""
    if _algo(layer.algo) != "lokr":
        return {}
    out = {}
    for key, value in layer.options:
        if key in _SWITCHES and not _same(key, value, network) and (key != "use_tucker" or convs):
            out[_SWITCHES[key]] = "on" if value else "off"
    return out


def _same(key: str, value: Any, network: dict[str, Any]) -> bool:
    """The entry's value is the one the network hands every module (`factor` through LokrModule's int(), the
    switches through the modules' truth tests)."""
    if key not in network:
        return False
    if key == "factor":
        try:
            return int(value) == network[key]
        except (TypeError, ValueError):
            return False
    return bool(value) == network[key]


def check_layers(found: Targets, algo: str, network: dict[str, Any]) -> list[tuple[str, str]]:
    """PresetError for built layers whose map entry changes the algorithm or hands the module class an option
    it reads with a value other than the network's (`network`: the value create_network hands every module
    for each option; dbspec trains one adapter kind with one set of options); the (`entry.key`, why) of entry
    keys the module class never reads (inert)."""
    layers = [*found.text.values(), *found.unet.values()]
    other = [layer for layer in layers if _algo(layer.algo) != _algo(algo)]
    if other:
        first = other[0]
        raise PresetError(
            f"`{first.source}` gives {len(other)} layer(s) (e.g. {first.path}) algo = {first.algo!r} on an "
            f"algo={algo} network: dbspec trains one adapter kind per run (one peft adapter per model, its "
            "exports and checkpoints in that kind's layout)",
            False,
        )
    inert: dict[str, str] = {}
    for layer in layers:
        reads = _READS.get(_algo(layer.algo), ())
        own = _PER_BLOCK.get(_algo(layer.algo), ())
        read = [(k, v) for k, v in layer.options if k in reads and k not in own and not _same(k, v, network)]
        read, quiet = split_options(_algo(layer.algo), layer.kind, layer.options, read, network)
        for key, why in quiet:
            inert[f"{layer.source}.{key}"] = why
        bad = [v for k, v in layer.options if k == "factor" and k in own and not _int(v)]
        if bad:
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) factor = {bad[0]!r}: LokrModule's "
                "int() raises on it",
                True,
            )
        if read:
            keys = ", ".join(f"`{k}` = {v!r}" for k, v in read)
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) {keys}: dbspec's adapter options "
                "apply to every layer ([[adapter.blocks]] carry a rank and an alpha, LoRA/LoCon's and LoHa's "
                "rs_lora in it, a scalar, and LoKr's a factor, decompose_both, full_matrix, tucker and "
                "unbalanced_factorization)",
                False,
            )
        for key in [k for k, _ in layer.options if k not in reads]:
            inert[f"{layer.source}.{key}"] = (
                f"LyCORIS hands it to {layer.algo}'s module class, whose **kwargs never read it"
            )
        if not (isinstance(layer.dim, int) and not isinstance(layer.dim, bool)) or not _number(layer.alpha):
            raise PresetError(
                f"`{layer.source}` gives {layer.path} dim = {layer.dim!r}, alpha = {layer.alpha!r}: dbspec "
                "expresses an integer dim and a numeric alpha",
                False,
            )
    return list(inert.items())


def _int(value: Any) -> bool:
    """int(value) succeeds (a TOML integer or float, a string of an integer; a bool is 0 or 1)."""
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


def _pattern(chosen: set[str], rows: list[Row]) -> str:
    """A regular expression `re.search` matches in exactly `chosen` among `rows`' paths: their shortest
    distinguishing suffixes (a text encoder's paths carry their component, `text_encoder.text_model....`, as
    runtime/blocks.py searches them)."""
    suffixes = _suffixes(chosen, rows)
    return r"(?:^|\.)(?:" + "|".join(re.escape(s) for s in suffixes) + ")$"


def _alpha(alpha: float, dim: int, rs_lora: bool) -> float:
    """LoConModule's alpha: 0 is the dim; with rs_lora it scales by alpha / sqrt(dim), the plain alpha of
    the same scale alpha x sqrt(dim) (what network.py writes for the network's own alpha)."""
    alpha = float(alpha or dim)
    return alpha * math.sqrt(dim) if rs_lora else alpha


def _blocks(
    layers: dict[str, Layer], rows: list[Row], dims, rs_lora: bool, network: dict[str, Any]
) -> list[dict[str, Any]]:
    dim, alpha, conv_dim, conv_alpha = dims
    defaults = {"linear": (dim, alpha), "conv1": (dim, alpha), "conv": (conv_dim, conv_alpha)}
    built = [row for row in rows if row[0] in layers]  # suffixes unique among the adapted layers
    groups: dict[str, list[Layer]] = {}
    for layer in layers.values():
        groups.setdefault(layer.source, []).append(layer)
    out = []
    for source, group in groups.items():
        factor = _own_factor(group[0], network)  # one entry: one factor and set of switches
        switches = _own_switches(group[0], network, any(layer.kind == "conv" for layer in group))
        same = all((layer.dim, layer.alpha) == defaults[layer.kind] for layer in group)
        rs = own_rs_lora(_algo(group[0].algo), group[0].options, rs_lora)  # the entry's own rs_lora
        switches.update(own_scalar(_algo(group[0].algo), group[0].options, network["use_scalar"]))
        convs = any(layer.kind == "conv" for layer in group)
        switches.update(own_tucker(_algo(group[0].algo), group[0].options, network["use_tucker"], convs))
        if not factor and not switches and same and rs == rs_lora:
            continue
        linear = next((layer for layer in group if layer.kind != "conv"), None)
        conv = next((layer for layer in group if layer.kind == "conv"), None)
        rank, a = (linear.dim, linear.alpha) if linear else (dim, alpha)  # a block of convolutions only
        block: dict[str, Any] = {
            "pattern": _pattern({layer.path for layer in group}, built),
            "rank": rank,
            "alpha": _alpha(a, rank, rs),
        }
        if conv is not None:
            block.update(conv_rank=conv.dim, conv_alpha=_alpha(conv.alpha, conv.dim, rs))
        if factor:
            block["factor"] = factor
        block.update(switches)
        own = ["factor"] if factor else []
        what = ", ".join(["dim / alpha", *own, *switches, *(["rs_lora"] if rs != rs_lora else [])])
        block["_why"] = f"kohya lycoris.kohya: the preset file's `{source}` {what}"
        out.append(block)
    return out


def map_blocks(
    found: Targets,
    algo: str,
    kind: str,
    dims,
    rs_lora: bool,
    network: dict[str, Any],
    applied: tuple[bool, bool] = (True, True),
) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """([[adapter.blocks]], [[adapter.text_encoder_blocks]], inert entry keys) for the map entries whose
    layers' dim or alpha differ from the network's `dims` (dim, alpha, conv_dim, conv_alpha); `network`: the
    module options create_network hands every module; `applied`: whether LycorisNetworkKohya.apply_to keeps
    the (text-encoder, U-Net) modules it built (it empties a list the script does not train: an entry's
    algorithm, options and dims there change nothing). PresetError where they cannot be written."""
    kept = found._replace(text=found.text if applied[0] else {}, unet=found.unet if applied[1] else {})
    inert = [*check_layers(kept, algo, network), *_dropped(found, kept)]
    found = kept
    if kind in _NO_DIMS:
        return [], [], inert
    unet = _blocks(found.unet, found.unet_rows, dims, rs_lora, network)
    text = _blocks(found.text, found.text_rows, (dims[0], dims[1], 0, 0), rs_lora, network)
    if (unet or text) and kind not in _BLOCK_KINDS:
        raise PresetError(
            f"`{_source(unet or text)}` gives some layers their own dim / alpha on algo={algo}: dbspec's "
            "per-layer ranks ([[adapter.blocks]], [[adapter.text_encoder_blocks]]) apply to LoRA/LoCon, LoHa "
            "and LoKr",
            False,
        )
    for block in [*unet, *text]:
        high = max(block["rank"], block.get("conv_rank", 0))
        if high > _MAX_BLOCK_RANK:
            _full_lokr_block(block, high, kind, rs_lora, network)
    for block in text:
        block.pop("conv_rank", None), block.pop("conv_alpha", None), block.pop("tucker", None)
    return unet, text, inert


# The widths of the layers LyCORIS's kohya network can adapt on SD 1.x / 2.x and SDXL (preset files are read
# for these only): the U-Nets' linears and convolutions (4 to 1280 channels, skip concatenations up to 2560,
# SDXL's added embedding 2816, GEGLU's 8 x 1280) and the CLIP encoders' (768 / 3072, 1024 / 4096, 1280 /
# 5120).
_WIDTHS = (4, 320, 640, 768, 960, 1024, 1280, 1920, 2048, 2560, 2816, 3072, 4096, 5120, 10240)


def _full_from(factor: int) -> tuple[int, int]:
    """(dim, width): the LoKr dim from which LokrModule makes both Kronecker factors full matrices on every
    layer of those models, and the width that needs it. A factor is full unless dim < half the larger of its
    two parts (the second factor's test; the first's under decompose_both compares the smaller parts), so
    half the larger part of each width's split bounds both."""
    return max((-(-max(factorization(w, factor)) // 2), w) for w in _WIDTHS)


def _full_lokr_block(block: dict[str, Any], high: int, kind: str, rs_lora: bool, network: dict) -> None:
    """A block's dim above [[adapter.blocks]]' bound: on LoKr (the `dim = 100000` idiom) every layer it
    reaches trains both Kronecker factors in full at scale 1 (LokrModule sets alpha to the dim), which a block
    at the bound builds alike where each layer is full from the bound on: the block at the bound. Else
    PresetError."""
    source = _source([block])
    where = f"`{source}` gives some layers dim = {high}, above [[adapter.blocks]]' {_MAX_BLOCK_RANK}"
    if kind != "lokr":
        raise PresetError(f"{where}: a {kind} layer trains at that rank (only LoKr's factors cap)", False)
    if rs_lora:
        raise PresetError(
            f"{where}: with rs_lora LokrModule scales a full layer by dim / sqrt(dim), which depends on it",
            False,
        )
    factor = block.get("factor") or network.get("factor", -1)  # the entry's own factor, else the network's
    full_matrix = block["full_matrix"] == "on" if "full_matrix" in block else network.get("full_matrix")
    need, width = _full_from(factor)
    if not full_matrix and need > _MAX_BLOCK_RANK:
        raise PresetError(
            f"{where}: LyCORIS trains those layers' Kronecker factors in full; with factor {factor} a "
            f"{width}-wide layer is full only from dim {need}, so a block at {_MAX_BLOCK_RANK} is not the "
            "same module (network_args full_matrix=True, or a factor that splits the widths more evenly, is)",
            False,
        )
    for rank, alpha in (("rank", "alpha"), ("conv_rank", "conv_alpha")):
        if block.get(rank, 0) > _MAX_BLOCK_RANK:
            block[rank], block[alpha] = _MAX_BLOCK_RANK, float(_MAX_BLOCK_RANK)
    block["_why"] += (
        f" (dim {high}: both Kronecker factors full at scale 1, as at rank {_MAX_BLOCK_RANK} on every layer)"
    )


def _dropped(found: Targets, kept: Targets) -> list[tuple[str, str]]:
    """(entry, why) for the map entries that reach only layers apply_to drops."""
    reached = {layer.source for layer in [*kept.text.values(), *kept.unet.values()]}
    dropped = {
        layer.source: "text-encoder" if path in found.text else "U-Net"
        for part in (found.text, found.unet)
        for path, layer in part.items()
        if layer.source and layer.source not in reached
    }
    flags = {"text-encoder": "network_train_unet_only", "U-Net": "network_train_text_encoder_only"}
    return [
        (
            source,
            f"it reaches only {where} layers, whose modules LycorisNetworkKohya.apply_to drops with kohya's "
            f"{flags[where]} (built, never applied or trained)",
        )
        for source, where in dropped.items()
    ]


def _source(blocks: list[dict]) -> str:
    return blocks[0]["_why"].split("`")[1]

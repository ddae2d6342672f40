"""LyCORIS algo=dylora with a preset file whose map entries give layers their own dim / alpha, started from a
--network_weights file (issue 12; was DBS403, "dbspec takes per-layer ranks from one source").

LycorisNetworkKohya builds each DyLoraModule at its entry's dim and alpha (lycoris_maps.py, the layers the
preset walk reaches: lycoris_file.Targets), then load_weights' `load_state_dict(strict=False)` copies the
file's `alpha` into each module's buffer (its lora_down / lora_up load nowhere: DyLoraModule's weights are
up_list / down_list), and get_weight scales by that buffer. So a layer keeps its entry's rank and trains at
the file's alpha: a block per group of such layers (their entry's block's other fields kept, the file's alpha
in place of its alpha or conv_alpha) ahead of the preset's blocks, each naming its layers' exact paths. The
file's modules of layers the preset does not build are ignored, as load_state_dict(strict=False) ignores
them; a layer the file has no alpha for keeps its entry's."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Callable

import attrs

from dbspec.compiler.lora_file import LoraFile
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.file_ranks import TEXT_COMPONENTS
from dbspec.convert.kohya.lycoris_file import Layer, Targets
from dbspec.spec.model import DyloraAdapter, DyloraBlock
from dbspec.unet_layout import diffusers_name

# conv.facts key: the preset file's Targets (network.py), which layers it builds and their paths
PRESET_LAYERS = "lycoris_preset_layers"
# conv.facts key: on Flux / SD3 / Chroma the preset file's LyCORIS module names -> their layers
# (lycoris_flow_file.FlowFile.modules: a fused Linear's diffusers parts)
FLOW_PRESET_MODULES = "lycoris_flow_preset_modules"
_TABLES = {"unet": "blocks", "text": "text_encoder_blocks"}
# what a converted block leaves out takes DyloraBlock's default
_BLOCK_DEFAULTS = {k: attrs.fields_dict(DyloraBlock)[k].default for k in ("conv_rank", "conv_alpha")}


def preset_blocks(conv: Conversion, table: str) -> list[dict]:
    """The converted [[adapter.<table>]] entries so far, in order, as {key: value}."""
    rows: dict[int, dict] = defaultdict(dict)
    for key, (value, _) in conv.values.items():
        if key[:2] == ("adapter", table) and len(key) == 4:
            rows[key[2]][key[3]] = value
    return [rows[i] for i in sorted(rows)]


def has_preset_ranks(conv: Conversion) -> bool:
    """The preset file's map entries gave some layers a dim of their own (blocks that adapt)."""
    return any(b.get("rank") or b.get("conv_rank") for t in _TABLES.values() for b in preset_blocks(conv, t))


def sd_layers(found: Targets, original_names: bool) -> Callable[[str], list[tuple[str, str, Layer]]]:
    """preset_dylora_alphas' `locate` on SD 1.x / 2.x / SDXL: the file's kohya module name to its layer."""

    def locate(name: str) -> list[tuple[str, str, Layer]]:
        where = _layer_of(name, found, original_names)
        return [] if where is None else [where]

    return locate


def _layer_of(name: str, found: Targets, original_names: bool) -> tuple[str, str, Layer] | None:
    """(table, the path blocks search, its Layer) of the file's kohya module `name`, None where the preset
    builds no layer there."""
    if name.startswith("lora_unet_"):
        tail = name.removeprefix("lora_unet_")
        tail = diffusers_name(tail) if original_names else tail
        by_name = {p.replace(".", "_"): p for p in found.unet}
        path = by_name.get(tail)
        return None if path is None else ("unet", path, found.unet[path])
    prefix = next((p for p in TEXT_COMPONENTS if name.startswith(p)), None)
    if prefix is None:
        return None
    component = TEXT_COMPONENTS[prefix]
    wanted = component + "_" + name.removeprefix(prefix)
    by_name = {p.replace(".", "_"): p for p in found.text if p.startswith(component + ".")}
    path = by_name.get(wanted)
    return None if path is None else ("text", path, found.text[path])


def loaded_alpha(alpha: float, truncated: bool) -> float:
    """A file's alpha as DyLoraModule's buffer takes it: toward zero where the buffer is int64 (`truncated`:
    int_buffer, or a network alpha of 0, alpha_zero.ZEROED), else as it is."""
    return float(math.trunc(alpha)) if truncated else alpha


def int_buffer(layer: Layer) -> bool:
    """Whether the layer's DyLoraModule holds its alpha in an int64 buffer: `torch.tensor(alpha)` of a
    Python int (a preset entry's `alpha = 2`, or an alpha of 0 or none, which becomes the int lora_dim), so
    load_state_dict's copy_ truncates the file's alpha toward zero (2.5 loads as 2, 0.5 as 0)."""
    alpha = layer.alpha
    return not alpha or (isinstance(alpha, int) and not isinstance(alpha, bool))


def _adapter_sizes(conv: Conversion) -> dict:
    """The converted DyLoRA adapter's rank, alpha, conv_rank and conv_alpha, the spec's defaults (alphas
    derived from the ranks) where the conversion wrote none."""
    keys = ("rank", "alpha", "conv_rank", "conv_alpha")
    written = {k: conv.values[("adapter", k)][0] for k in keys if ("adapter", k) in conv.values}
    spec = DyloraAdapter(kind="dylora", **written)
    return {k: getattr(spec, k) for k in keys}


def _first(blocks: list[dict], path: str) -> int | None:
    return next((i for i, b in enumerate(blocks) if re.search(b["pattern"], path)), None)


def preset_dylora_alphas(
    file: LoraFile,
    weights: Legacy,
    conv: Conversion,
    locate: Callable[[str], list[tuple[str, str, Layer]]],
    own_alpha,
    drawn: bool = False,
) -> int:
    """Write the file's alphas of the preset's DyLoRA layers as blocks ahead of the preset's (their entry's
    block copied, its alpha or conv_alpha the file's: `own_alpha(alpha, rank, bypass)`, dylora.file_alpha);
    how many layers take another alpha. `locate` gives a file module's layers as (table, path, Layer): one on
    SD (sd_layers), each diffusers part of a fused Linear on Flux / SD3 (lycoris_flow_dylora.py flow_layers),
    which all take the one module's alpha. `own_alpha` returning 0 leaves the layer unbuilt (rank 0), or with
    `drawn` (module_dropout: dylora.zero_drawn) built scaled by 0 (zero_scale), as lycoris_dylora_alphas
    does."""
    adapter = _adapter_sizes(conv)
    bypass_on = conv.values.get(("adapter", "bypass"), (DyloraAdapter(kind="dylora").bypass, ""))[0]
    tables = {t: preset_blocks(conv, _TABLES[t]) for t in _TABLES}
    groups: dict[tuple[str, int | None, bool, float], list[str]] = defaultdict(list)
    for module in file.modules.values():
        for table, path, layer in [] if module.alpha is None else locate(module.name):
            _group(groups, tables, adapter, bypass_on, table, path, layer, module.alpha, own_alpha)
    if not groups:
        return 0
    note = f"LyCORIS --network_weights: {weights.value}'s alpha on the preset entry's dim (only alphas load)"
    for table in _TABLES:
        new = []
        for (where, index, conv_layer, alpha), layers in groups.items():
            if where != table:
                continue
            if index is not None:
                block = dict(tables[table][index])
            elif table == "unet":
                block = dict(adapter)
            else:
                block = {"rank": adapter["rank"], "alpha": adapter["alpha"]}
            block["pattern"] = "^(" + "|".join(re.escape(p) for p in sorted(layers)) + ")$"
            key = "conv_alpha" if conv_layer else "alpha"
            block[key] = alpha
            if alpha == 0 and drawn:  # the update scaled by 0, its module_dropout still drawn: built
                block["zero_scale"] = True
            elif alpha == 0:  # the update scaled by 0: not built (dylora.unbuilt_at_zero)
                block.update({"conv_rank": 0, "conv_alpha": 1.0} if conv_layer else {"rank": 0, "alpha": 1.0})
            new.append(block)
        if new:
            _prepend(conv, _TABLES[table], new, note)
    conv.record(
        weights,
        "mapped",
        "adapter.blocks, adapter.text_encoder_blocks",
        "LyCORIS's DyLoRA loads only the file's alphas (its weights are up_list / down_list): the run starts "
        "from a fresh init, each file layer at its preset entry's dim and the file's alpha",
    )
    return sum(len(v) for v in groups.values())


def _group(groups, tables, adapter, bypass_on, table, path, layer, file_alpha, own_alpha) -> None:
    """Add the layer at `path` to its group in `groups` ((table, block index, conv, alpha): paths) when the
    file's alpha, as the layer's buffer loads it, is not its block's."""
    index = _first(tables[table], path)
    # the layer's sizes: its block's (DyloraBlock's defaults where it leaves them out), else the adapter's
    block = adapter if index is None else {**_BLOCK_DEFAULTS, **tables[table][index]}
    conv_layer = layer.kind == "conv"
    rank = block["conv_rank" if conv_layer else "rank"]
    if not rank:  # a rank-0 block: the layer is not built
        return
    own = block.get("bypass", "adapter")
    bypass = own == "on" if own != "adapter" else bool(bypass_on)
    raw = loaded_alpha(file_alpha, int_buffer(layer))
    alpha = own_alpha(raw, rank, bypass)
    if alpha != float(block["conv_alpha" if conv_layer else "alpha"]):
        groups[(table, index, conv_layer, alpha)].append(path)


def _prepend(conv: Conversion, table: str, blocks: list[dict], note: str) -> None:
    """`blocks` as the first [[adapter.<table>]] entries, the converted ones after them (first match wins)."""
    old = {k: v for k, v in conv.values.items() if k[:2] == ("adapter", table) and len(k) == 4}
    for key in old:
        del conv.values[key]
    for index, block in enumerate(blocks):
        for key, item in block.items():
            conv.put(("adapter", table, index, key), item, note)
    for key, item in old.items():
        conv.values[(*key[:2], key[2] + len(blocks), key[3])] = item

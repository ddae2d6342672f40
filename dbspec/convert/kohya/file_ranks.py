"""kohya --dim_from_weights with per-module ranks: create_network_from_weights builds one LoRA per module of
the file, each at the module's own rank and alpha (networks/lora_flux.py, lora_sd3.py, lora.py), and none
where the file has no module. dbspec's adapter says that with `[[adapter.blocks]]`: one block per (rank,
alpha) and group of the denoiser's modules, their patterns over diffusers' module paths, so the plan shows
every rank; the file stays the weights' source and the plan checks its ranks against the blocks.

Flux, Chroma and SD3 (the original model's names): each kohya module maps to its diffusers paths (a fused
Linear to all its parts, which then share one rank: kohya builds a `split_qkv` file's fused layers unsplit,
one down at three or four times the rank); the blocks list the block indices per group of children, and a
last rank-0 block (pattern `^`) keeps every module the file lacks out, as kohya creates none there (nor for
a module its network does not scan: Chroma's approximator). networks.lora
(SD 1.x / 2.x: diffusers names with `.` written `_`; SDXL: the original U-Net layout's, read back onto
diffusers' by dbspec.unet_layout): one block per (rank, alpha) naming its modules, each `_` matching `.` or
`_`, the 3x3 convolutions' at their conv rank and alpha. The text-encoder modules of every family (CLIP;
Flux's, Chroma's and SD3's T5-XXL under lora_te3) likewise as [[adapter.text_encoder_blocks]] over
`<component>.<path>`, with a last rank-0 block."""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

from dbspec.compiler.lora_file import LoraFile, LoraModule
from dbspec.convert.kohya.blocks import kohya_block_index
from dbspec.families import family_spec, flow_text_prefixes
from dbspec.flow_layout import (
    CHROMA_TOP,
    FLUX_DOUBLE,
    FLUX_SINGLE,
    FLUX_TOP,
    SD3_BLOCK,
    SD3_TOP,
    underscored,
)
from dbspec.unet_layout import diffusers_name

Pair = tuple[int, float]

# kohya module name (after lora_unet_) inside a block -> the diffusers children it is
_FLUX_DOUBLE = underscored(FLUX_DOUBLE)
_FLUX_SINGLE = underscored(FLUX_SINGLE)
# create_network_from_weights scans the embedders (in_dims [0] * 5) and not the final layer
_FLUX_TOP = underscored(FLUX_TOP, lambda key: not key.startswith("final_layer."))
# Chroma (library/chroma_models.py): Flux's blocks without the modulation Linears; of the embedders the
# in_dims filters scan, only img_in and txt_in exist (its approximator, distilled_guidance_layer, matches
# none of `_img_in`, `_time_in`, `_vector_in`, `_guidance_in`, `_txt_in`, and no block is named so)
_CHROMA_DOUBLE = {k: v for k, v in _FLUX_DOUBLE.items() if not k.endswith("_mod_lin")}
_CHROMA_SINGLE = {k: v for k, v in _FLUX_SINGLE.items() if k != "modulation_lin"}
_CHROMA_TOP = {k: v for k, v in _FLUX_TOP.items() if k in ("img_in", "txt_in")}
_SD3_BLOCK = underscored(SD3_BLOCK)
# create_network_from_weights scans emb_dims' filters ([0] * 6): the final layer too, no patch convolution
_SD3_TOP = underscored(SD3_TOP, lambda key: key != "x_embedder.proj")
_LAYOUTS = {
    "flux": ({"double_blocks": ("transformer_blocks", _FLUX_DOUBLE), "single_blocks": (
        "single_transformer_blocks", _FLUX_SINGLE)}, _FLUX_TOP),
    "chroma": ({"double_blocks": ("transformer_blocks", _CHROMA_DOUBLE), "single_blocks": (
        "single_transformer_blocks", _CHROMA_SINGLE)}, _CHROMA_TOP),
    "sd3": ({"joint_blocks": ("transformer_blocks", _SD3_BLOCK)}, _SD3_TOP),
}  # fmt: skip
# LyCORIS's create_network_from_weights matches the file's names against every module of kohya's model
# (unet.named_modules()), not a scan list: Flux's and Chroma's final layer too, Chroma's approximator, SD3's
# patch convolution (refused below)
_LYCORIS_TOP = {"flux": underscored(FLUX_TOP), "chroma": underscored(CHROMA_TOP), "sd3": underscored(SD3_TOP)}


def pair_of(module: LoraModule) -> Pair:
    """kohya's (rank, alpha): LoRAModule takes alpha 0 (or a missing one, networks.lora) as the rank."""
    return module.rank, float(module.alpha) if module.alpha else float(module.rank)


def _same(a: Pair, b: Pair) -> bool:
    return a[0] == b[0] and math.isclose(a[1], b[1], rel_tol=1e-3)


def flow_paths(
    family: str, name: str, lycoris: bool = False
) -> tuple[str, int | None, tuple[str, ...]] | None:
    """(diffusers ModuleList or "", block index or None, children / the path) of kohya's denoiser module
    `name` (without lora_unet_); None where create_network_from_weights creates no LoRA (Flux's final
    layer, names it does not scan: on Chroma the approximator and Flux's modulation Linears too), or, for
    LyCORIS's (`lycoris`), a name dbspec does not place on the model."""
    lists, top = _LAYOUTS[family]
    top = _LYCORIS_TOP[family] if lycoris else top
    if name in top:
        return "", None, (top[name],)
    match = re.fullmatch(r"([a-z]+_blocks)_(\d+)_(.+)", name)
    if match and match[1] in lists:
        blocks, table = lists[match[1]]
        children = table.get(match[3])
        if children:
            return blocks, int(match[2]), children
    return None


def flow_blocks(
    file: LoraFile, family: str, lycoris: bool = False, dora: frozenset[str] = frozenset()
) -> tuple[list[dict], list[str]]:
    """[[adapter.blocks]] tables for the file's denoiser modules (rank, alpha each) and a last rank-0 block,
    and the extra denoiser targets (embedders, LyCORIS's final layer) they need; ValueError for a module
    dbspec cannot adapt. `lycoris`: LyCORIS's create_network_from_weights, which builds a LoCon on whatever
    module of kohya's model the file names, so a name dbspec does not place is a ValueError too. `dora`: the
    modules holding a `dora_scale` where others do not (make_module_from_state_dict builds those with
    weight_decompose): their blocks' `dora = "on"`."""
    groups: dict[tuple[Pair, bool], dict[str, dict[int | None, set[str]]]] = defaultdict(
        lambda: defaultdict(dict)
    )
    extra: list[str] = []
    for module in file.modules.values():
        if not module.name.startswith("lora_unet_"):
            continue
        name = module.name.removeprefix("lora_unet_")
        found = flow_paths(family, name, lycoris)
        if found is None and lycoris and family == "chroma" and flow_paths("flux", name, True) is not None:
            continue  # a Flux Linear Chroma lacks (modulation, time / vector / guidance): LyCORIS builds none
        if found is None and lycoris:
            raise ValueError(f"module `{module.name}` is no Linear of kohya's model dbspec places")
        if found is None:
            continue  # kohya's network has no such module: load_state_dict(strict=False) ignores it
        if module.conv:
            raise ValueError(f"module `{module.name}` adapts a convolution (the patch embedding)")
        blocks, index, children = found
        on = module.name in dora
        key = next((k for k in groups if _same(k[0], pair_of(module)) and k[1] == on), (pair_of(module), on))
        groups[key][blocks].setdefault(index, set()).update(children)
        if not blocks:
            extra.extend(children)
    out = []
    for ((rank, alpha), on), lists in groups.items():
        for blocks, indices in lists.items():
            for pattern in _patterns(blocks, indices):
                out.append(
                    {"pattern": pattern, "rank": rank, "alpha": alpha, **({"dora": "on"} if on else {})}
                )
    out.append({"pattern": "^", "rank": 0, "alpha": 1.0})
    return out, extra


def _patterns(blocks: str, indices: dict[int | None, set[str]]) -> list[str]:
    """Patterns naming exactly these modules: the indices sharing one set of children together."""
    if not blocks:
        paths = sorted(p for children in indices.values() for p in children)
        return ["^(" + "|".join(re.escape(p) for p in paths) + ")$"]
    by_children: dict[frozenset[str], list[int]] = defaultdict(list)
    for index, children in sorted(indices.items(), key=lambda item: item[0] or 0):
        by_children[frozenset(children)].append(index or 0)
    out = []
    for children, numbers in by_children.items():
        names = "|".join(re.escape(c) for c in sorted(children))
        out.append(rf"^{blocks}\.({'|'.join(map(str, numbers))})\.({names})$")
    return out


def denoiser_names(file: LoraFile, original_names: bool = False) -> list[tuple[LoraModule, str]]:
    """(module, diffusers path with `.` written `_`) of the file's networks.lora denoiser modules; kohya's
    SDXL names (`original_names`) read back from the original U-Net layout (ValueError outside it)."""
    out = []
    for module in file.modules.values():
        if module.name.startswith("lora_unet_"):
            name = module.name.removeprefix("lora_unet_")
            out.append((module, diffusers_name(name) if original_names else name))
    return out


def sd_blocks(
    file: LoraFile,
    original_names: bool = False,
    dora: frozenset[str] = frozenset(),
    lr_weights: list[float] | None = None,
) -> list[dict]:
    """networks.lora: blocks naming the file's denoiser modules at their (rank, alpha), linears at `rank` /
    `alpha`, 3x3 convolutions at `conv_rank` / `conv_alpha` (rank 0), each `_` matching `.` or `_` (the
    modules that share a tail after their last index together), then a rank-0 block for the modules the file
    lacks. kohya's names are diffusers' paths with `.` written `_` (SD 1.x / 2.x) or, `original_names` (SDXL),
    the original U-Net layout's, read back onto diffusers' (dbspec.unet_layout); ValueError for a name
    outside it. `dora`: the modules holding a `dora_scale` where others do not (LyCORIS's
    make_module_from_state_dict builds those with weight_decompose): their blocks' dora "on". `lr_weights`:
    networks.lora's block learning-rate weights by kohya block index (blocks.block_lr_weights), which
    create_network_from_weights sets on the network: each module's block trains at the rate times its
    weight (`lr_scale`; at 0 kohya skips the group, dbspec holds the modules: lr_scale 0), one entry per
    block at least (its `index`, kohya's group of the block: the caller pops it)."""
    groups: dict[tuple, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module, name in denoiser_names(file, original_names):
        head, tail = _split(name)
        pair, on = pair_of(module), module.name in dora
        index = kohya_block_index(module.name, original_names) if lr_weights else None
        key = next(
            (k for k in groups if k[0] == module.conv and _same(k[1], pair) and k[2] == on and k[3] == index),
            (module.conv, pair, on, index),
        )
        groups[key][_loose(head)].append(tail)
    out = []
    for (conv, (rank, alpha), on, index), heads in groups.items():
        own: dict = {"dora": "on"} if on else {}
        if index is not None:  # kohya's block (its optimizer group) and its weight
            own["index"] = index
            if lr_weights[index] != 1.0:
                own["lr_scale"] = lr_weights[index]
        for pattern in _named(heads):
            if conv:
                out.append(
                    {
                        "pattern": pattern,
                        "rank": 0,
                        "alpha": 1.0,
                        "conv_rank": rank,
                        "conv_alpha": alpha,
                        **own,
                    }
                )
            else:
                out.append({"pattern": pattern, "rank": rank, "alpha": alpha, **own})
    out.append({"pattern": "^", "rank": 0, "alpha": 1.0})
    return out


# networks.lora's text-encoder prefixes (one encoder; SDXL's two) -> the plan's component
TEXT_COMPONENTS = {"lora_te_": "text_encoder", "lora_te1_": "text_encoder", "lora_te2_": "text_encoder_2"}


def text_blocks(
    file: LoraFile, components: dict[str, str] = TEXT_COMPONENTS, dora: frozenset[str] = frozenset()
) -> list[dict]:
    """[[adapter.text_encoder_blocks]] naming the file's text-encoder modules at their (rank, alpha), patterns
    over `<component>.<transformers path>` (each `_` matching `.` or `_`), then a rank-0 block for the modules
    the file lacks. `components`: kohya's prefix -> the plan's component (networks.lora's by default; Flux's
    and SD3's from flow_components). `dora`: the modules holding a `dora_scale` where others do not
    (LyCORIS's make_module_from_state_dict builds those with weight_decompose): their blocks' dora "on"."""
    groups: dict[tuple[Pair, bool], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for module in file.modules.values():
        prefix = next((p for p in components if module.name.startswith(p)), None)
        if prefix is None:
            continue
        head, tail = _split(module.name.removeprefix(prefix))
        on = module.name in dora
        key = next((k for k in groups if _same(k[0], pair_of(module)) and k[1] == on), (pair_of(module), on))
        groups[key][re.escape(components[prefix]) + r"\." + _loose(head)].append(tail)
    out = []
    for ((rank, alpha), on), heads in groups.items():
        own = {"dora": "on"} if on else {}
        out += [{"pattern": pattern, "rank": rank, "alpha": alpha, **own} for pattern in _named(heads)]
    out.append({"pattern": "^", "rank": 0, "alpha": 1.0})
    return out


def flow_components(family: str) -> dict[str, str]:
    """lora_flux's / lora_sd3's text-encoder prefixes (lora_te1 CLIP-L, lora_te2 CLIP-G, lora_te3 T5-XXL) ->
    the plan's component."""
    return dict(zip(flow_text_prefixes(family), family_spec(family).text_encoder_names))


def per_module_text_blocks(
    file: LoraFile, components: dict[str, str] = TEXT_COMPONENTS, dora: frozenset[str] = frozenset()
) -> list[dict]:
    """text_blocks wherever the file has text-encoder modules: kohya builds exactly those, and a file's last
    layer need not be its encoder's (the converter does not know the layer count), so the adapter's one rank
    and targets alone could adapt layers the file lacks; [] without text-encoder modules."""
    text = text_blocks(file, components, dora)
    return text if len(text) > 1 else []


def _split(name: str) -> tuple[str, str]:
    """(head, tail) of an underscored module name around its last `_<index>_`; ("", name) without one."""
    cut = [m.end() for m in re.finditer(r"_\d+_", name)]
    return (name[: cut[-1] - 1], name[cut[-1] :]) if cut else ("", name)


def _loose(name: str) -> str:
    return name.replace("_", "[._]")


def _named(heads: dict[str, list[str]]) -> list[str]:
    """Patterns naming exactly these modules: head pattern ("" none) -> underscored tails; the heads sharing
    one set of tails together."""
    by_tails: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for head, tails in sorted(heads.items()):
        by_tails[tuple(sorted(tails))].append(head)
    out = []
    for tails, names in by_tails.items():
        tail = "(" + "|".join(_loose(t) for t in tails) + ")"
        out.append(f"^({'|'.join(names)})[._]{tail}$" if names != [""] else f"^{tail}$")
    return out


def common_pair(
    file: LoraFile, conv: bool = False, prefixes: tuple[str, ...] = ("lora_unet_",)
) -> Pair | None:
    """The most frequent (rank, alpha) of the file's denoiser (or `prefixes`') linear (or `conv`olution)
    modules."""
    counts: Counter[Pair] = Counter()
    for module in file.modules.values():
        if module.conv == conv and module.name.startswith(prefixes):
            key = next((p for p in counts if _same(p, pair_of(module))), pair_of(module))
            counts[key] += 1
    return counts.most_common(1)[0][0] if counts else None

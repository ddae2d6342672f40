"""lycoris.kohya `--dim_from_weights` with a LyCORIS Diag-OFT, BOFT or GLoRA file on Flux / SD3
(flux_train_network.py / sd3_train_network.py). LyCORIS's create_network_from_weights (lycoris-lora 4.1.3,
lycoris/kohya.py) builds each file module on the kohya layer of that name with the class its keys pick
(lycoris_sd_rebuilt.py reads the values make_module_from_state_dict takes: Diag-OFT `lora_dim = s` from
`oft_blocks` (n, s, s), `constraint = float(alpha)`, `rescaled` where a `rescale` is held; GLoRA rank `a2`'s
rows, alpha `float(alpha)`, 0 the rank), one module per fused Linear (Flux's img_attn.qkv / txt_attn.qkv /
linear1, SD3's attn.qkv), then train_network.py's load_weights loads the same file into it.

dbspec's equivalent: that kind with `fused_projections` over the file modules' diffusers parts (full paths,
lycoris_flow_weights.diffusers_targets), started from the file (`init_weights`, `init_partial`;
runtime/lycoris_whole_init.py cuts a fused module's blocks / rows into its parts). Diag-OFT: the block size,
constraint (the file's alpha, a negative one 0: LyCORIS constrains only `if constraint > 0`; one norm over a
fused layer's parts, runtime/lycoris_oft.py link_fused_oft) and rescale most modules share, a module at its
own an [[adapter.blocks]] entry over all its diffusers parts; a module whose blocks span two parts of a fused
Linear (was DBS403) too: its parts share its blocks (runtime/fused_oft.py). Flux's final layer (target
`proj_out`, which takes every single block's linear2 along) without some linear2: those layers `exclude`d
(rank-0 blocks at runtime, no rotation, as LyCORIS builds none), Diag-OFT and BOFT alike. GLoRA: the rank and
alpha most modules share, a module at its own an [[adapter.blocks]] entry over its diffusers parts, Flux's
final layer beside a rank-0 block for the single blocks' linear2 the file lacks. BOFT (4-D `oft_blocks`): a
fused BOFT (runtime/lycoris_boft.py tie_fused_boft) at the block-size hint giving most modules their file
split, the constraint and rescale most share, the other modules [[adapter.blocks]] at their own block size,
constraint and rescale over whole fused layers (_boft).
CLIP modules (`lora_te1_*`, SD3's `lora_te2_*` CLIP-G): text_encoder_targets / text_encoder_2_targets
(lycoris_flow_factor_file.clip_targets), a module at its own values an [[adapter.text_encoder_blocks]]
entry; T5-XXL's (Flux's lora_te2_, SD3's lora_te3_), which LyCORIS trains with CLIP's while T5 encodes
(was DBS403): `train.t5` (dbspec's T5 adapter of the file's kind, started from the file as CLIP's are,
runtime/lycoris_whole_init.py), a module at its own values a text-encoder block over its
`text_encoder_2.` / `text_encoder_3.` path, T5's Linears the file lacks at rank 0 (GLoRA) or `exclude`d
within T5 (Diag-OFT, BOFT); with text-encoder outputs cached they would keep the file's weights untrained
where T5 encodes (DBS403). SD3's patch convolution
(`lora_unet_x_embedder_proj`): conv_targets `pos_embed.proj`, GLoRA's at its conv_rank / conv_alpha,
Diag-OFT's / BOFT's at its own values a block naming it. Chroma: DBS403. Checked against lycoris-lora in
tests/runtime/test_lycoris_flow_rebuilt_file.py and test_lycoris_sd3_patch_file.py."""

from __future__ import annotations

import re
from collections import Counter

from dbspec.convert.kohya.lycoris_flow_factor_file import (
    _CLIPS,
    _COMPONENTS,
    _T5,
    _T5_COMPONENT,
    PATCH,
    _clip_path,
    clip_targets,
    final_layer_block,
    t5_left_block,
    t5_path,
)
from dbspec.convert.kohya.file_ranks import _patterns, flow_paths
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule, diffusers_targets, own_blocks
from dbspec.convert.kohya.lycoris_sd_rebuilt import _glora, _kind, _oft
from dbspec.plan.boft import power2_factorization

REBUILT_FLOW = ("oft", "glora")  # the file algos (lycoris_flow_weights._DETECT) mapped here


def flow_rebuilt_file(
    modules: dict[str, LycorisModule], family: str, unet_only: bool, t5_idle: str = ""
) -> dict | str:
    """[adapter] values (`blocks` / `text_encoder_blocks` lists of tables; "t5": train.t5) for the network
    create_network_from_weights builds from a Diag-OFT, BOFT or GLoRA file on `family` (flux or sd3); else
    why not ("invalid:..." where kohya fails, DBS402; otherwise DBS403). `t5_idle`: why T5-XXL's modules
    would never train (model._t5_idle), or ""."""
    norm = next((n for n, m in sorted(modules.items()) if m.algo == "norm"), None)
    if norm is not None:
        return (
            f"module `{norm}` is a NormModule (train_norm's w_norm / b_norm); dbspec offsets no norm of "
            "kohya's fused Flux / SD3 layers"
        )
    kinds = sorted({_kind(m) for m in modules.values()})
    if len(kinds) != 1:
        first = next(n for n, m in sorted(modules.items()) if _kind(m) == kinds[-1])
        return (
            f"module `{first}` is a LyCORIS {kinds[-1]} module beside {kinds[0]} ones; dbspec rebuilds one "
            "kind from a --dim_from_weights file"
        )
    (kind,) = kinds
    if family == "chroma":
        return f"dbspec's {kind} on the fused layers is written in kohya's Flux / SD3 layouts, not Chroma's"
    text = sorted(n for n in modules if n.startswith("lora_te"))
    # apply_to drops them with --network_train_unet_only
    found_text = _text_modules(text, family, t5_idle) if text and not unet_only else ([], [], [], None)
    if isinstance(found_text, str):
        return found_text
    clip_names, t5, text_targets, text_2 = found_text
    denoiser = {n: m for n, m in sorted(modules.items()) if n.startswith("lora_unet")}
    patch = denoiser.pop(PATCH, None) if family == "sd3" else None
    if not denoiser:
        return "it holds no Linear module of the denoiser" if patch else "it holds no module of the denoiser"
    targets = diffusers_targets(list(denoiser), family)
    if isinstance(targets, str):
        return targets
    values: dict[str, dict] = {}
    built = {
        **denoiser,
        **{n: modules[n] for n in (*clip_names, *t5)},
        **({PATCH: patch} if patch else {}),
    }
    for name, module in built.items():
        layer = "conv" if name == PATCH else "linear"
        found = _glora(name, module, layer) if kind == "glora" else _oft(name, module, kind)
        if isinstance(found, str):
            return found
        values[name] = found
    texts = {
        **({"text_encoder_targets": text_targets} if text_targets else {}),
        **({"text_encoder_2_targets": text_2} if text_2 is not None else {}),
        **({"conv_targets": ["pos_embed.proj"]} if patch else {}),
        **({"t5": True} if t5 else {}),
    }
    if kind == "boft":
        found = _boft(values, built, targets, family)
        return found if isinstance(found, str) else _t5_excluded({**found, **texts}, t5, family)
    if kind == "glora":
        linear = {n: (v["rank"], v["alpha"]) for n, v in values.items() if n != PATCH}
        (rank, alpha), _ = Counter(linear.values()).most_common(1)[0]
        own = {n: pair for n, pair in linear.items() if pair != (rank, alpha) and n.startswith("lora_unet")}
        own_text = {n: pair for n, pair in linear.items() if pair != (rank, alpha) and n not in own}
        blocks = [*final_layer_block(targets, family), *own_blocks(own, rank, family)]
        out: dict = {"kind": kind, "rank": rank, "alpha": alpha}
        if patch:  # GLoRAModule on the 2x2 convolution at its own rank and alpha (the only convolution)
            out |= {"conv_rank": values[PATCH]["rank"], "conv_alpha": values[PATCH]["alpha"]}
        text_blocks = [
            *(t5_left_block(t5, family) if t5 else []),  # T5's Linears the file lacks: rank 0
            *(
                {"pattern": _text_pattern(names, family), "rank": r, "alpha": a}
                for (r, a), names in _grouped(own_text).items()
            ),
        ]
    else:
        keys = {n: (v["block_size"], v["constraint"], v["rescaled"]) for n, v in values.items()}
        (size, constraint, rescaled), _ = Counter(keys.values()).most_common(1)[0]
        top = (size, constraint, rescaled)
        out = {"kind": kind, "block_size": size, "constraint": constraint, "rescaled": rescaled}
        out |= _final_layer_exclude(targets, family)
        blocks, text_blocks = _split_oft_blocks(keys, top, family)
        out = _t5_excluded(out, t5, family)
    return {
        **out,
        "denoiser_targets": targets,
        **texts,
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
        **({"text_encoder_blocks": text_blocks} if text_blocks else {}),
    }


def _text_modules(text: list[str], family: str, t5_idle: str) -> tuple | str:
    """(CLIP's module names, T5-XXL's, CLIP's targets, CLIP-G's own or None) of the file's text-encoder
    modules; else why not: a module off the encoders' attention / MLP Linears, or T5-XXL's modules, which
    LyCORIS trains with CLIP's (train_t5xxl or not), where they would never train (`t5_idle`)."""
    clip = clip_targets(text, family)
    if isinstance(clip, str):
        return clip
    t5 = [n for n in text if n.startswith(_T5[family])]
    if t5 and t5_idle:
        return (
            f"module `{t5[0]}` is T5-XXL's, whose LyCORIS modules keep the file's weights untrained where T5 "
            f"encodes: {t5_idle} (dbspec's T5 adapter trains)"
        )
    clip_names = [n for n in text if n.startswith(tuple(_CLIPS[family]))]  # Flux's lora_te3_: none
    return clip_names, t5, *clip


def _grouped(own: dict[str, tuple]) -> dict[tuple, list[str]]:
    groups: dict[tuple, list[str]] = {}
    for name, key in own.items():
        groups.setdefault(key, []).append(name)
    return groups


def _t5_excluded(out: dict, t5: list[str], family: str) -> dict:
    """`out` with T5-XXL's Linears the file lacks `exclude`d (train.t5 adapts every one; a Diag-OFT / BOFT
    block cannot leave a layer out, its block size is at least 1), anchored to T5's component as the full
    file's (lycoris_flow_factor_file._full_file)."""
    component = _T5_COMPONENT[family] if t5 else ""
    left = (
        [rf"^{re.escape(component)}(?:\..*)?" + b["pattern"] for b in t5_left_block(t5, family)] if t5 else []
    )
    return {**out, "exclude": [*out.get("exclude", ()), *left]} if left else out


def _text_pattern(names: list[str], family: str) -> str:
    """A text-encoder block's pattern naming exactly these CLIP (and T5-XXL) modules'
    `<component>.text_model.<path>`s (T5's `<component>.<path>`; lycoris_flow_factor_file.own_text_blocks'
    form)."""
    paths = []
    for name in names:
        if name.startswith(_T5[family]):  # T5-XXL's (train.t5)
            paths.append(re.escape(f"{_T5_COMPONENT[family]}.{t5_path(name, family)}"))
            continue
        found = _clip_path(name, family)
        assert isinstance(found, tuple)  # clip_targets placed every module
        paths.append(re.escape(f"{_COMPONENTS[found[0]]}.text_model.{found[1]}"))
    return f"^(?:{'|'.join(sorted(paths))})$"


def _oft_values(key: tuple[int, float, bool], top: tuple[int, float, bool]) -> dict:
    """An OftBlock's values for modules at `key` (block size, constraint, rescale) beside the adapter's."""
    size, constraint, on = key
    values: dict = {"block_size": size}
    values |= {"constraint": constraint} if constraint != top[1] else {}
    values |= {"rescaled": "on" if on else "off"} if on != top[2] else {}
    return values


def _split_oft_blocks(
    keys: dict[str, tuple[int, float, bool]], top: tuple[int, float, bool], family: str
) -> tuple[list[dict], list[dict]]:
    """[[adapter.blocks]] and [[adapter.text_encoder_blocks]] for the Diag-OFT / BOFT modules at a block
    size, constraint or rescale of their own (`top`: the adapter's): the denoiser's over every diffusers part
    of a fused module, SD3's patch convolution by its path, CLIP's by theirs."""
    own = {n: k for n, k in keys.items() if k != top}
    unet = {n: k for n, k in own.items() if n.startswith("lora_unet") and n != PATCH}
    blocks = _oft_blocks(unet, top[1:], family)
    if PATCH in own:
        blocks.append({"pattern": r"^pos_embed\.proj$", **_oft_values(own[PATCH], top)})
    text = {n: k for n, k in own.items() if n.startswith("lora_te")}
    text_blocks = [
        {"pattern": _text_pattern(names, family), **_oft_values(key, top)}
        for key, names in _grouped(text).items()
    ]
    return blocks, text_blocks


def _boft(
    values: dict[str, dict], built: dict[str, LycorisModule], targets: list[str], family: str
) -> dict | str:
    """The fused BOFT for a BOFT file (ButterflyOFTModules rebuilt at lora_dim = each module's block size s,
    constraint float(alpha), rescaled where it holds a `rescale`): dbspec's BOFT splits each layer by a
    block-size hint B (power2_factorization(width, B)), the adapter's or its [[adapter.blocks]] entry's (a
    fused module's entry over all its parts). The adapter's hint is the file's block size that gives the most
    modules at the constraint and rescale most modules share their file split (ties: the largest; what a
    network_dim-built file holds: every module split by that one hint), the other modules blocks at their own
    block size, constraint and rescale."""
    keys = {n: (v["block_size"], v["constraint"], v["rescaled"]) for n, v in values.items()}
    splits = {n: (built[n].shapes["oft_blocks"][2], built[n].shapes["oft_blocks"][1]) for n in values}
    (constraint, rescaled), _ = Counter(k[1:] for k in keys.values()).most_common(1)[0]

    def fits(hint: int) -> set[str]:
        return {
            n
            for n, (s, count) in splits.items()
            if keys[n][1:] == (constraint, rescaled) and power2_factorization(s * count, hint) == (s, count)
        }

    hint = max(sorted({k[0] for k in keys.values()}), key=lambda h: (len(fits(h)), h))
    top = (hint, constraint, rescaled)
    fitted = fits(hint)
    blocks, text_blocks = _split_oft_blocks(
        {n: top if n in fitted else key for n, key in keys.items()}, top, family
    )
    return {
        "kind": "boft",
        "block_size": hint,
        "constraint": constraint,
        "rescaled": rescaled,
        "denoiser_targets": targets,
        **_final_layer_exclude(targets, family),
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
        **({"text_encoder_blocks": text_blocks} if text_blocks else {}),
    }


def _final_layer_exclude(targets: list[str], family: str) -> dict:
    """Flux's final layer (target `proj_out`, a suffix of every single block's linear2 too) without some
    single blocks' linear2: those layers `exclude`d (no rotation, as LyCORIS builds no module there); a
    Diag-OFT / BOFT block cannot leave a layer out (its block size is at least 1), a rank-0 one can."""
    return (
        {"exclude": [b["pattern"] for b in final_layer_block(targets, family)]}
        if final_layer_block(targets, family)
        else {}
    )


def _oft_blocks(own: dict[str, tuple[int, float, bool]], top: tuple[float, bool], family: str) -> list[dict]:
    """OftBlock tables for the Diag-OFT modules at a block size, constraint or rescale of their own (`top`:
    the adapter's constraint and rescale): one per (size, constraint, rescale), its pattern every diffusers
    part of its modules (a fused Linear's all: one block covers it, as its one DiagOFTModule;
    compiler/fused.py checks the parts agree)."""
    groups: dict[tuple[int, float, bool], dict[str, dict[int | None, set[str]]]] = {}
    for name, key in own.items():
        found = flow_paths(family, name.removeprefix("lora_unet_"), lycoris=True)
        assert found is not None  # diffusers_targets placed every module
        blocks, index, parts = found
        groups.setdefault(key, {}).setdefault(blocks, {}).setdefault(index, set()).update(parts)
    out = []
    for (size, constraint, on), lists in groups.items():
        values: dict = {"block_size": size}
        values |= {"constraint": constraint} if constraint != top[0] else {}
        values |= {"rescaled": "on" if on else "off"} if on != top[1] else {}
        for blocks, indices in lists.items():
            out.extend({"pattern": pattern, **values} for pattern in _patterns(blocks, indices))
    return out

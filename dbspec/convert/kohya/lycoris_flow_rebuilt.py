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
constraint (the file's alpha: one norm over a fused layer's parts, runtime/lycoris_oft.py link_fused_oft)
and rescale most modules share, a module at its own an [[adapter.blocks]] entry over all its diffusers
parts; no block spanning two parts of FLUX.1's fused widths, and Flux's final layer only with every single
block's linear2 (its target `proj_out` takes them along; a Diag-OFT block cannot leave them out); a module
otherwise: DBS403 naming it. GLoRA: the rank and alpha most modules share, a module at its own an
[[adapter.blocks]] entry over its diffusers parts, Flux's final layer beside a rank-0 block for the single
blocks' linear2 the file lacks. BOFT (4-D `oft_blocks`): one fused BOFT (runtime/lycoris_boft.py
tie_fused_boft) at the block-size hint that gives every module its file split (_boft), the constraint and
rescale all modules share; modules at other constraints or rescales, splits one hint cannot give, or Flux's
final layer without every linear2: DBS403 (a fused BOFT takes no [[adapter.blocks]]). Text-encoder modules,
SD3's patch convolution, Chroma: DBS403. Checked
against lycoris-lora in tests/runtime/test_lycoris_flow_rebuilt_file.py."""

from __future__ import annotations

from collections import Counter

from dbspec.convert.kohya.lycoris_flow_factor_file import final_layer_block
from dbspec.convert.kohya.lycoris_flow_oft import FLUX1_FUSED, flux1_misfit
from dbspec.convert.kohya.file_ranks import _patterns, flow_paths
from dbspec.convert.kohya.lycoris_flow_weights import LycorisModule, diffusers_targets, own_blocks
from dbspec.convert.kohya.lycoris_sd_rebuilt import _glora, _kind, _oft
from dbspec.plan.boft import power2_factorization

REBUILT_FLOW = ("oft", "glora")  # the file algos (lycoris_flow_weights._DETECT) mapped here


def flow_rebuilt_file(modules: dict[str, LycorisModule], family: str, unet_only: bool) -> dict | str:
    """[adapter] values (`blocks` a list of tables) for the network create_network_from_weights builds from
    a Diag-OFT or GLoRA file on `family` (flux or sd3); else why not ("invalid:..." where kohya fails,
    DBS402; otherwise DBS403)."""
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
    if text and not unet_only:  # apply_to drops them with --network_train_unet_only
        return (
            f"module `{text[0]}` is a text encoder's {kind} module; dbspec rebuilds a Flux / SD3 {kind} file "
            "on the denoiser only"
        )
    denoiser = {n: m for n, m in sorted(modules.items()) if n.startswith("lora_unet")}
    if not denoiser:
        return "it holds no module of the denoiser"
    targets = diffusers_targets(list(denoiser), family)
    if isinstance(targets, str):
        return targets
    values = {}
    for name, module in denoiser.items():
        found = _glora(name, module, "linear") if kind == "glora" else _oft(name, module, kind)
        if isinstance(found, str):
            return found
        values[name] = found
    if kind == "boft":
        return _boft(values, denoiser, targets, family)
    if kind == "glora":
        pairs = {n: (v["rank"], v["alpha"]) for n, v in values.items()}
        (rank, alpha), _ = Counter(pairs.values()).most_common(1)[0]
        own = {n: pair for n, pair in pairs.items() if pair != (rank, alpha)}
        blocks = [*final_layer_block(targets, family), *own_blocks(own, rank, family)]
        out: dict = {"kind": kind, "rank": rank, "alpha": alpha}
    else:
        keys = {n: (v["block_size"], v["constraint"], v["rescaled"]) for n, v in values.items()}
        (size, constraint, rescaled), _ = Counter(keys.values()).most_common(1)[0]
        for name, v in values.items():
            rows = denoiser[name].shapes["oft_blocks"][0] * v["block_size"]
            misfit = flux1_misfit(v["block_size"]) if family == "flux" and rows in FLUX1_FUSED else ""
            if misfit:
                return f"module `{name}`: {misfit}"
        if final_layer_block(targets, family):
            return (
                "module `lora_unet_final_layer_linear` is diffusers' `proj_out`, a name every single block's "
                "linear2 ends in too, and the file lacks some of those: a Diag-OFT block cannot leave them "
                "out (its block size is at least 1)"
            )
        own = {n: key for n, key in keys.items() if key != (size, constraint, rescaled)}
        out = {"kind": kind, "block_size": size, "constraint": constraint, "rescaled": rescaled}
        blocks = _oft_blocks(own, (constraint, rescaled), family)
    return {
        **out,
        "denoiser_targets": targets,
        "fused_projections": True,
        **({"blocks": blocks} if blocks else {}),
    }


def _boft(
    values: dict[str, dict], denoiser: dict[str, LycorisModule], targets: list[str], family: str
) -> dict | str:
    """One fused BOFT for a BOFT file (ButterflyOFTModules rebuilt at lora_dim = each module's block size s,
    constraint float(alpha), rescaled where it holds a `rescale`): dbspec's BOFT splits every layer by one
    block size hint B (power2_factorization(width, B)), and no [[adapter.blocks]] go with a fused BOFT, so the
    file's modules must share the constraint and rescale, and one B must give every module its file split:
    the largest s (a smaller hint misses that module's size; a larger one only adds splits to choose from).
    What a network_dim-built file holds: each module split by that one hint."""
    named: dict[tuple[float, bool], str] = {}
    for name, v in values.items():
        named.setdefault((v["constraint"], v["rescaled"]), name)
    keys = set(named)
    if len(keys) > 1:
        (one, first), (other, second) = sorted(named.items())[:2]
        return (
            f"modules `{first}` and `{second}` are ButterflyOFTModules at other constraints or rescales "
            f"({one[0]:g}{', rescaled' * one[1]} and {other[0]:g}{', rescaled' * other[1]}); a fused BOFT "
            "has one constraint and rescale (and takes no [[adapter.blocks]])"
        )
    hint = max(v["block_size"] for v in values.values())
    for name in values:
        n, s = denoiser[name].shapes["oft_blocks"][1:3]
        split = power2_factorization(n * s, hint)
        if split != (s, n):
            return (
                f"module `{name}` splits its {n * s} rows into {n} blocks of {s}, but the file's largest "
                f"block size {hint} splits them as {split[1]} blocks of {split[0]}: dbspec's BOFT splits "
                "every layer by one block size (a fused BOFT takes no [[adapter.blocks]])"
            )
    if final_layer_block(targets, family):
        return (
            "module `lora_unet_final_layer_linear` is diffusers' `proj_out`, a name every single block's "
            "linear2 ends in too, and the file lacks some of those: a fused BOFT takes no [[adapter.blocks]] "
            "to leave them out"
        )
    ((constraint, rescaled),) = keys
    return {
        "kind": "boft",
        "block_size": hint,
        "constraint": constraint,
        "rescaled": rescaled,
        "denoiser_targets": targets,
        "fused_projections": True,
    }


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

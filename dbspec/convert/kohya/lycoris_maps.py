"""A LyCORIS preset file's `module_algo_map` / `name_algo_map` as dbspec's per-layer ranks.

lycoris-lora 4.1.3's kohya network (lycoris/kohya.py, LycorisNetworkKohya.__init__) hands each layer's map
entry to create_single_module: the entry's `algo` picks the module class, its `dim` / `alpha` replace the
network's (`dim or lora_dim`, `alpha or self.alpha` on Linear and 1x1 layers; `dim or conv_lora_dim`, `alpha
or self.conv_alpha` on k x k convolutions, which an entry's `dim` adapts even with convolutions off), and its
other keys go to the module class as keyword arguments. lycoris_file._walk resolves which entry reaches each
layer; this module turns the result into `[[adapter.blocks]]` / `[[adapter.text_encoder_blocks]]` (LoRA/LoCon,
LoHa, LoKr, DyLoRA, GLoRA, T-LoRA; a LoKr entry's own `factor`, `decompose_both`, `full_matrix` and
`use_tucker` too), or PresetError (`crash` False) for what dbspec does not express:
another algorithm on some layers (but LoRA/LoCon, LoHa and LoKr mixed on SD / SDXL, a block's `kind`), an
entry's other options, per-layer dims on the other algorithms."""

from __future__ import annotations

import math
import re
from typing import Any

from dbspec.plan.model import BYPASS_KINDS
from dbspec.convert.kohya.lycoris_entry_opts import (
    inert_option,
    decomposed,
    mixed_rank_stabilized,
    own_rank_dropout_scale,
    own_rank_stabilized,
    own_rs_lora,
    own_dora,
    own_dora_axis,
    own_scalar,
    own_tucker,
    split_options,
)
from dbspec.convert.kohya.lycoris_file import Layer, PresetError, Row, Targets, _suffixes
from dbspec.convert.kohya.lycoris_fp8 import forward_on_fp8

# lycoris-lora's network_module_dict: lora and locon are one class (LoConModule)
_CLASS = {"locon": "lora"}
# algorithms whose modules never read dim / alpha (FullModule, IA3Module): a map's values change nothing
_NO_DIMS = ("full", "ia3")
_TUCKER_ENTRIES = ("lora", "loha", "lokr")  # the kinds whose module reads use_tucker
# the networks whose own modules never read use_tucker and whose LoCon / LoHa / LoKr entries' blocks take the
# network's (network_tucker; on SD 1.x/2.x and SDXL)
_TUCKER_TO_ENTRIES = (*_NO_DIMS, "dylora", "glora")
# the adapter kinds whose spec has [[adapter.blocks]], and their ranks' bound (spec AdapterBlock.rank)
_BLOCK_KINDS = ("lora", "loha", "lokr")
# the other algorithms whose layers take a dim and alpha of their own: DyLoRA (spec DyloraBlock; DyLoRAModule
# never reads rs_lora) and GLoRA (spec GloraBlock: both of a layer's pairs at the entry's dim)
_RANKED = (*_BLOCK_KINDS, "dylora", "glora", "diag-oft", "tlora")  # T-LoRA: spec TloraBlock
_MAX_BLOCK_RANK = 100_000  # spec BLOCK_RANK_MAX: a block's rank of any kind but LoKr (LOKR_BLOCK_RANK_MAX)
_OFT = ("diag-oft", "boft")  # their blocks: a block size, constraint and rescale (spec OftBlock)


def _algo(name: str) -> str:
    return _CLASS.get(name, name)


def _rate(value: Any) -> float:
    """A network argument's dropout rate as a number (0 when absent or not one: refused elsewhere)."""
    try:
        return float(value or 0)
    except (TypeError, ValueError):
        return 0.0


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# The keyword arguments each lycoris-lora 4.1.3 module class uses besides those create_single_module sets
# itself (lora_name, module, multiplier, dim, alpha, the dropouts); a map entry's other keys land in the
# class's signature unused (_TAKEN_UNUSED) or its **kwargs, which it never reads.
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
    "full": ("rank_dropout_scale", "bypass_mode"),  # its row mask's rescale (FullModule.make_weight)
    "ia3": ("bypass_mode", "train_on_input"),
    "diag-oft": ("bypass_mode", "constraint", "rescaled"),
    "boft": ("bypass_mode", "constraint", "rescaled"),
    "glora": ("use_scalar", "rank_dropout_scale", "bypass_mode", "rs_lora"),  # (its tucker fixed off)
    "dylora": ("bypass_mode", "block_size"),
    # TLoraModule: its SVD start's choice (create_network never passes them; an entry can) and bypass_mode
    # (use_tucker lands in its rank_dropout_scale, never read; its mask_group_id picks a mask kohya never
    # sets)
    "tlora": ("bypass_mode", "sig_type", "use_data_init"),
}


# Keyword arguments a module class names in its signature and never uses (an entry's value changes nothing;
# lycoris-lora 4.1.3: LycorisBaseModule stores use_tucker / use_scalar / rank_dropout_scale for the classes
# that read them)
_SIGNATURE = ("use_tucker", "use_scalar", "rank_dropout_scale")
_TAKEN_UNUSED = {
    kind: {key: f"{name} takes {key} and never uses it" for key in _SIGNATURE}
    for kind, name in (
        ("full", "FullModule"),
        ("ia3", "IA3Module"),
        ("diag-oft", "DiagOFTModule"),
        ("boft", "ButterflyOFTModule"),
        ("dylora", "DyLoraModule"),
    )
}
_TAKEN_UNUSED["full"].pop("rank_dropout_scale")  # (FullModule's row mask rescale)
_TAKEN_UNUSED["glora"] = {"use_tucker": "GLoRAModule takes use_tucker and never uses it (no Tucker form)"}
_TAKEN_UNUSED["glora"]["weight_decompose"] = "GLoRAModule takes weight_decompose and never uses it"
_TAKEN_UNUSED["dylora"].update(
    train_on_input="DyLoraModule takes train_on_input (IA^3's switch) and never uses it",
    weight_decompose="DyLoraModule takes weight_decompose and never uses it",
    rs_lora="DyLoraModule takes rs_lora and never uses it (its scale is alpha / the drawn rank)",
)
_TAKEN_UNUSED["ia3"].update(
    weight_decompose="IA3Module takes weight_decompose and never uses it",
    rs_lora="IA3Module takes rs_lora and never uses it (its scales have no rank)",
)


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


def _network_lokr(layer: Layer, network: dict[str, Any], factor: int, switches: dict[str, str]):
    """A LoKr entry's block on a network of another algorithm: the network's `factor`, `decompose_both` and
    `unbalanced_factorization`, which create_single_module hands every module and LokrModule alone reads,
    where the entry gives none of its own (its block's `factor` / switches; the adapter of another kind has
    none to inherit; was DBS403, a spec's DBS578)."""
    given = network.get("factor", -1)
    if not factor and given != -1 and "factor" not in dict(layer.options):
        factor = 1 if given == 0 else -1 if given < 0 or given > _MAX_FACTOR else given
    for key in ("decompose_both", "unbalanced_factorization", "full_matrix"):
        if network.get(key) and _SWITCHES[key] not in switches and key not in dict(layer.options):
            switches = {**switches, _SWITCHES[key]: "on"}
    return factor, switches


def _own_unit(layer: Layer, network: dict[str, Any]) -> int:
    """A DyLoRA layer's entry's own `block_size` (a positive int: _dylora_own), its block's `unit`; 0 where
    it is the network's."""
    value = dict(layer.options).get("block_size")
    if _algo(layer.algo) != "dylora" or value is None or _same("block_size", value, network):
        return 0
    return value


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
    if key == "constraint":  # DiagOFTModule's constraint x out_dim: a number (others: _oft_own refuses)
        return _number(value) and float(value) == network[key]
    if key == "block_size":  # DyLoraModule's range(lora_dim // block_size): an int (others: _dylora_own)
        return type(value) is int and value == network[key]
    if key == "sig_type":  # TLoraModule compares it with its three names
        return value == network[key]
    if key == "factor":
        try:
            return int(value) == network[key]
        except (TypeError, ValueError):
            return False
    return bool(value) == network[key]


# why a network of these algorithms holds no block of another kind
_NO_KIND_BLOCKS = {
    "ia3": " (an IA^3 adapter's [[adapter.blocks]] of another kind: without options of their own beyond a "
    "rank, alpha, unit and dora)",
    "diag-oft": " (a Diag-OFT adapter's [[adapter.blocks]] hold a block size, not another kind's rank)",
    "boft": " (a BOFT adapter's [[adapter.blocks]] hold a block size, not another kind's rank)",
    "full": " (a full adapter's [[adapter.blocks]] of another kind: without options of their own beyond a "
    "rank, alpha, unit and dora)",
}


def check_layers(
    found: Targets,
    algo: str,
    network: dict[str, Any],
    kinds: tuple[str, ...] = (),
    kind: str = "",
    bypass: bool = False,
    entry_bypass: bool = False,
    unet: bool = False,
    fp8: str = "",
) -> list[tuple[str, str]]:
    """PresetError for built layers whose map entry changes the algorithm (`kinds`: except to those of
    them, a block's `kind`, on a LoRA/LoCon, LoHa or LoKr network: _mixed_kinds) or hands the
    module class an option it reads with a value other than the network's (`network`: the value
    create_network hands every module for each option; dbspec's adapter options apply to every layer, but
    what blocks carry: on an adapter of `kind` diag-oft or boft its blocks' own constraint and rescaled, on
    dylora their own block size); `bypass`: the adapter's `bypass` gives blocks of BYPASS_BLOCKS their
    LyCORIS bypass forward (network.py on SD 1.x/2.x and SDXL, lycoris_flow_file.py on Flux / SD3 / Chroma's
    fused Linears; without it bypass_mode converts only where every algorithm's bypass forward is inert);
    `entry_bypass`: blocks carry an entry's own bypass_mode (_own_bypass; on Flux / SD3 / Chroma's fused
    Linears over every part); `unet`: SD 1.x/2.x and SDXL (_mixed_kinds); `fp8`: when kohya's --fp8_base
    casts the denoiser (lycoris_fp8.fp8_denoiser: its layers in LyCORIS's default forward stop kohya); the
    (`entry.key`, why) of entry keys the module class never reads (inert)."""
    layers = [*found.text.values(), *found.unet.values()]
    for layer in layers:
        _full_bypass(layer, network)  # kohya stops before anything else matters
        _oft_bypass_dropout(layer, network)
        _tlora_kxk(layer, algo)
    for layer in sorted(found.unet.values(), key=lambda layer: not layer.source):  # entries' layers first
        source = f"`{layer.source}`" if layer.source else f"the algo={algo} network"
        forward_on_fp8(layer.path, _algo(layer.algo), source, _bypassed(layer, network), fp8)
    other = [layer for layer in layers if _algo(layer.algo) != _algo(algo)]
    if other and kinds:
        other = _mixed_kinds(found, algo, network, other, kinds, bypass, unet)
    if other:
        first = other[0]
        raise PresetError(
            f"`{first.source}` gives {len(other)} layer(s) (e.g. {first.path}) algo = {first.algo!r} on an "
            f"algo={algo} network: dbspec trains several algorithms in one run only among LoRA/LoCon, LoHa, "
            "LoKr, DyLoRA, GLoRA, full and IA^3 networks' layers and "
            "LoRA/LoCon, LoHa, LoKr, full, "
            "ia3, diag-oft, boft, glora or dylora entries, on SD 1.x/2.x, "
            "SDXL, Flux, SD3 and Chroma ([[adapter.blocks]] `kind`); elsewhere one adapter kind per run"
            + _NO_KIND_BLOCKS.get(_algo(algo), ""),
            False,
        )
    inert: dict[str, str] = {}
    for layer in layers:
        reads = _READS.get(_algo(layer.algo), ())
        own = _PER_BLOCK.get(_algo(layer.algo), ())
        # Diag-OFT / BOFT blocks carry them: an OFT network's (_oft_blocks), or beside other kinds (_blocks)
        oft = _algo(layer.algo) in _OFT
        if oft and (_algo(layer.algo) == kind or _algo(layer.algo) != _algo(algo)):
            own = (*own, *_oft_own(layer, network))
        if _algo(layer.algo) == "dylora":  # a DyLoRA block's unit (_blocks), beside other kinds too
            own = (*own, *_dylora_own(layer, network))
        if entry_bypass and _own_bypass(algo, layer.algo):  # the block's `bypass` (_blocks)
            own = (*own, "bypass_mode")
        if _input_side(algo, layer):  # an IA^3 entry's train_on_input: its block's `on_input`
            own = (*own, "train_on_input")
        if _algo(layer.algo) == "full" and "bypass_mode" in dict(layer.options):  # false here (_full_bypass)
            own = (*own, "bypass_mode")
            inert[f"{layer.source}.bypass_mode"] = (
                "FullModule has one forward (bypass_mode=True raises): a false bypass_mode beside the "
                "network's changes nothing"
            )
        if _algo(layer.algo) == "tlora" == _algo(algo):  # a T-LoRA network's block's `sig_type` (_blocks)
            own = (*own, *_tlora_own(layer))
        elif _algo(layer.algo) == "tlora" and _algo(algo) in ("lora", "loha", "lokr"):
            # a T-LoRA entry's random start and SVD triplets beside LoCon / LoHa / LoKr (_blocks), on every
            # family (Flux / SD3 / Chroma's fused Linears: one start per fused Linear)
            own = (*own, "use_data_init", *_sig_type(layer))
        elif _algo(layer.algo) == "tlora" and _algo(algo) in _TLORA_START_HOSTS:
            own = (*own, *_TLORA_START_HOSTS[_algo(algo)], *_sig_type(layer))
        read = [(k, v) for k, v in layer.options if k in reads and k not in own and not _same(k, v, network)]
        read, quiet = split_options(_algo(layer.algo), layer.kind, layer.options, read, network, layer.source)
        for key, why in quiet:
            inert[f"{layer.source}.{key}"] = why
        bad = [v for k, v in layer.options if k == "factor" and k in own and not _int(v)]
        if bad:
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) factor = {bad[0]!r}: LokrModule's "
                "int() raises on it",
                True,
            )
        if any(k == "bypass_mode" for k, _ in read) and _algo(layer.algo) in BYPASS_BLOCKS:
            value = dict(read)["bypass_mode"]
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) `bypass_mode` = {value!r}, not the "
                f"algo={algo} network's: a {layer.algo} entry's own bypass_mode is its block's `bypass` "
                "beside a LoCon, LoHa or LoKr network, a DyLoRA or GLoRA network of another algorithm, or "
                "on a Diag-OFT, BOFT, DyLoRA or IA^3 network's own",
                False,
            )
        _tlora_start_unbuilt(layer, read, algo)
        if read:
            keys = ", ".join(f"`{k}` = {v!r}" for k, v in read)
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) {keys}: dbspec's adapter options "
                "apply to every layer ([[adapter.blocks]] carry a rank and an alpha, rs_lora in it, a "
                "scalar, and LoKr's a factor, decompose_both, full_matrix, tucker, unbalanced_factorization "
                "and rs_lora on full factors)",
                False,
            )
        unused = _TAKEN_UNUSED.get(_algo(layer.algo), {})
        for key in [k for k, _ in layer.options if k not in reads]:
            inert[f"{layer.source}.{key}"] = unused.get(key) or (
                f"LyCORIS hands it to {layer.algo}'s module class, whose **kwargs never read it"
            )
        if not (isinstance(layer.dim, int) and not isinstance(layer.dim, bool)) or not _number(layer.alpha):
            raise PresetError(
                f"`{layer.source}` gives {layer.path} dim = {layer.dim!r}, alpha = {layer.alpha!r}: dbspec "
                "expresses an integer dim and a numeric alpha",
                False,
            )
    return list(inert.items())


# the networks besides LoCon / LoHa / LoKr a T-LoRA entry's own start converts on, its T-LoRA pass the same
# there (runtime/mixed_kinds.py; on Flux / SD3 / Chroma's fused Linears fit_fused_tlora beside any kind,
# runtime/prepare.py _tie_fused_kinds; tests/runtime/test_lycoris_tlora_entry_hosts.py, _flux_hosts.py,
# _dylora.py): the keys beside its `sig_type`
_TLORA_START_HOSTS = {
    "full": ("use_data_init",),
    "glora": ("use_data_init",),
    "ia3": ("use_data_init",),
    "dylora": ("use_data_init",),
}


def _tlora_start_unbuilt(layer: Layer, read: list[tuple[str, Any]], algo: str) -> None:
    """PresetError for a T-LoRA entry's own start (`sig_type` / `use_data_init`) on a network other than
    LoCon / LoHa / LoKr, full, IA^3, GLoRA and DyLoRA (_TLORA_START_HOSTS; check_layers lets those
    through), where dbspec builds none (a spec's DBS622)."""
    starts = [(k, v) for k, v in read if k in ("sig_type", "use_data_init")]
    if not starts or _algo(layer.algo) != "tlora":
        return
    keys = ", ".join(f"`{k}` = {v!r}" for k, v in starts)
    raise PresetError(
        f"`{layer.source}` hands its T-LoRA layers (e.g. {layer.path}) {keys}: dbspec starts a T-LoRA "
        "entry's layers its own way beside LoCon / LoHa / LoKr, full, IA^3, GLoRA and DyLoRA layers "
        "(checked against lycoris-lora there), "
        f"not on an algo={algo} network here (a spec's DBS622)",
        False,
    )


# What a network with several algorithms keeps off (DBS578): options LyCORIS hands every module, which act on
# one algorithm's layers only or which dbspec's other kinds do not build
_MIXED_OFF = ("use_tucker", "use_scalar", "weight_decompose", "full_matrix", "rs_lora", "bypass_mode")
# the algorithms whose module's bypass forward (no dropout, no weight decomposition) computes its default one
_BYPASS_INERT = ("lora", "loha", "lokr", "glora", "tlora")
# those whose bypass forward differs and which the adapter's `bypass` gives it (compiler/adapters.py
# BYPASS_KINDS: Diag-OFT / BOFT rotate the output, bias included; DyLoRA adds its one block unscaled; IA^3
# scales the output, bias included: lycoris-lora 4.1.3, tests/runtime/test_lycoris_ia3_bypass.py)
BYPASS_BLOCKS = BYPASS_KINDS


# the networks whose blocks of other kinds carry a LoKr entry's own factor and switches, a LoRA/LoCon / LoHa /
# LoKr entry's own use_scalar and a LoKr entry's own rs_lora (spec AdapterBlock, ScaleBlock, DyloraBlock,
# GloraBlock, TloraBlock)
_LOKR_OWN_NETWORKS = ("lora", "loha", "full", "ia3", "dylora", "glora", "tlora")


# the networks whose entries of their own algorithm a block with a `bypass` expresses (spec OftBlock,
# DyloraBlock, ScaleBlock: an IA^3 adapter's own blocks; on Flux / SD3 / Chroma each part of a fused Linear)
_OWN_BYPASS_NETWORKS = ("diag-oft", "boft", "dylora", "ia3")


def _own_bypass(algo: str, entry: str) -> bool:
    """A block carries the bypass_mode of an entry of algorithm `entry` on an `algo` network: a Diag-OFT,
    BOFT, DyLoRA or IA^3 block (their bypass forward differs from their default one) of any network where
    the entry's algorithm is another (a full / IA^3 network's, a T-LoRA network's IA^3 / DyLoRA entries and
    a Diag-OFT network's BOFT entries: were DBS403), or of a Diag-OFT, BOFT, DyLoRA or IA^3 network's own
    algorithm (the block's `bypass`, runtime/mixed_kinds.py set_block_bypass; plan.model.own_bypass_fits)."""
    if _algo(entry) not in BYPASS_BLOCKS:
        return False
    return _algo(entry) != _algo(algo) or _algo(algo) in _OWN_BYPASS_NETWORKS


def _input_side(algo: str, layer: Layer) -> bool:
    """An IA^3 entry on a LoRA/LoCon, LoHa, LoKr, DyLoRA, GLoRA, full, T-LoRA or IA^3 network, whose own
    `train_on_input` (IA3Module's truth test: a scale per input channel, W ((1 + s) x) + b) its block (of
    kind ia3; an IA^3 network's own) carries as `on_input` (spec AdapterBlock, DyloraBlock, GloraBlock,
    ScaleBlock, TloraBlock, TextEncoderBlock; runtime/blocks.py builds those layers on the input side)."""
    return _algo(layer.algo) == "ia3" and _algo(algo) in (*_BLOCK_KINDS, *_INPUT_SIDE_NETWORKS)


# the networks besides LoRA/LoCon, LoHa and LoKr whose IA^3 entries' own train_on_input a block carries
_INPUT_SIDE_NETWORKS = ("dylora", "glora", "full", "tlora", "ia3")


def own_bypass_switch(algo: str, layer: Layer, network: dict[str, Any]) -> dict[str, str]:
    """{"bypass": "on" / "off"} of a block whose entry gives bypass_mode a truth other than the network's
    (create_single_module hands it over the network's; DiagOFTModule, ButterflyOFTModule, IA3Module and
    DyLoraModule test it for truth), else {}."""
    own = dict(layer.options)
    if not _own_bypass(algo, layer.algo) or "bypass_mode" not in own:
        return {}
    if bool(own["bypass_mode"]) == bool(network.get("bypass_mode")):
        return {}
    return {"bypass": "on" if own["bypass_mode"] else "off"}


def _bypassed(layer: Layer, network: dict[str, Any]) -> bool:
    """The layer's module runs in bypass_mode: its entry's own `bypass_mode` (create_single_module hands it
    over the network's; the modules test it for truth), else the network's."""
    own = dict(layer.options)
    return bool(own["bypass_mode"]) if "bypass_mode" in own else bool(network.get("bypass_mode"))


def _full_bypass(layer: Layer, network: dict[str, Any]) -> None:
    """PresetError (DBS402) for a layer of algo full in bypass_mode: lycoris-lora 4.1.3's FullModule raises
    ValueError("bypass mode is not supported in Full algo.") when create_network builds it (only a
    bypass_mode of None, which kohya's create_network never hands it, is turned off with a warning)."""
    if _algo(layer.algo) == "full" and _bypassed(layer, network):
        raise PresetError(
            f"`{layer.source}` gives {layer.path} algo = 'full' with bypass_mode (its own or the network's): "
            "LyCORIS's FullModule raises ValueError (bypass mode is not supported in Full algo) when "
            "create_network builds it",
            True,
        )


def _oft_bypass_dropout(layer: Layer, network: dict[str, Any]) -> None:
    """PresetError (DBS402) for a Diag-OFT layer in bypass_mode (its own or the network's) beside the
    network's nonzero `dropout` (else --network_dropout, which train_network.py hands on): LyCORIS's
    create_single_module hands every module the network's dropout, and lycoris-lora 4.1.3's
    DiagOFTModule._bypass_forward (lycoris/modules/diag_oft.py: `mask = self.drop(mask)` over
    `torch.ones_like(org_out)`, then `r * scale * mask`) multiplies its (blocks, size, size) rotations by a
    mask shaped like the output (..., blocks, size) in training mode: RuntimeError on the first training
    forward, as for a Diag-OFT network's own (network.py _diag_oft_bypass_dropout)."""
    if _algo(layer.algo) == "diag-oft" and _bypassed(layer, network) and network.get("dropout"):
        raise PresetError(
            f"`{layer.source}` gives {layer.path} algo = {layer.algo!r} in bypass_mode (its own or the "
            f"network's) beside the network's dropout = {network['dropout']:g}: LyCORIS's DiagOFTModule "
            "multiplies its (blocks, size, size) rotations by a dropout mask shaped like the layer's output "
            "(..., blocks, size) in training mode, and torch raises RuntimeError (the shapes do not "
            "broadcast) on the first forward",
            True,
        )


_SIG_TYPES = ("principal", "last", "middle")  # TLoraModule._initialize_from_svd's


def _tlora_own(layer: Layer) -> tuple[str, ...]:
    """The keys of a T-LoRA network's entry its block carries (`sig_type`, `use_data_init`: its
    `data_init`, `bypass_mode`: its `bypass`, beside the network's dropout too: each TLoraModule drops in its
    bypass forward alone, as each TloraLayer does (tests/runtime/test_lycoris_tlora_mixed_opts.py; on Flux /
    SD3 / Chroma's fused Linears one TLoraModule, one mask over its stacked output its parts share,
    tests/runtime/test_lycoris_flow_tlora_mixed_opts.py; was DBS403 there); PresetError (DBS402) for a
    sig_type TLoraModule cannot start from (_initialize_from_svd raises ValueError)."""
    return (*_sig_type(layer), "bypass_mode", "use_data_init")


def _sig_type(layer: Layer) -> tuple[str, ...]:
    """("sig_type",): a T-LoRA entry's own `sig_type`, its block's; PresetError (DBS402) for one TLoraModule
    cannot start from (_initialize_from_svd raises ValueError on anything but its three names)."""
    value = dict(layer.options).get("sig_type", "principal")
    if not (isinstance(value, str) and value in _SIG_TYPES):
        raise PresetError(
            f"`{layer.source}` hands its layers (e.g. {layer.path}) sig_type = {value!r}: LyCORIS's "
            f"TLoraModule raises ValueError (unknown sig_type) on anything but {', '.join(_SIG_TYPES)}",
            True,
        )
    return ("sig_type",)


# convolutions whose kernel is their stride, without padding (SD3's 2x2 stride-2 patch embedding, diffusers'
# name): TLoraModule's 1x1 factors at that stride give an output of the layer's size (its bypass path)
PATCH_CONVS = ("pos_embed.proj",)


def _tlora_kxk(layer: Layer, algo: str) -> None:
    """PresetError (DBS402) for a tlora entry's layer on a k x k convolution with padding or a stride other
    than its kernel (SD's) on another algo's network: lycoris-lora 4.1.3's TLoraModule projects it with 1x1
    factors at the convolution's stride and padding, which give an output of another size, and its forward
    takes the bypass path there and adds it, so kohya stops at the first step (a tlora network's own
    convolutions: network.py _tlora names the preset's). SD3's patch convolution (PATCH_CONVS) gives an
    output of the layer's size there: kohya trains it (its block's kind tlora, lycoris_flux.py)."""
    if _algo(layer.algo) == "tlora" != _algo(algo) and layer.kind == "conv" and layer.path not in PATCH_CONVS:
        raise PresetError(
            f"`{layer.source}` gives {layer.path} (a k x k convolution) algo = 'tlora': LyCORIS's "
            "TLoraModule's 1x1 factors at the convolution's stride and padding give an output of another "
            "size, which its forward adds to the layer's, so kohya stops at the first step (RuntimeError: "
            "the size of tensor a must match the size of tensor b)",
            True,
        )


def _oft_own(layer: Layer, network: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a Diag-OFT / BOFT layer's entry its block carries (`constraint`, `rescaled`, as
    DiagOFTModule and ButterflyOFTModule read them raw: `constraint * out_dim` and the buffer
    `torch.tensor(constraint)`, `if rescaled`);
    PresetError for a constraint kohya cannot build (not a number: torch.tensor raises, DBS402) or that a
    block does not express (a bool). A negative one is the block's constraint 0 (applied_constraint)."""
    own = dict(layer.options)
    if "constraint" in own and not _same("constraint", own["constraint"], network):
        value = own["constraint"]
        if not isinstance(value, (int, float)):
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) constraint = {value!r}: "
                f"LyCORIS's {layer.algo} module stores it with torch.tensor(), which raises on it",
                True,
            )
        if isinstance(value, bool):
            raise PresetError(
                f"`{layer.source}` hands its layers (e.g. {layer.path}) constraint = {value!r}: dbspec's "
                f"{layer.algo} block constraint is a number (LyCORIS would save the bool as the layers' "
                "alpha)",
                False,
            )
    return ("constraint", "rescaled")


# what a negative constraint converts to, said where it is mapped (applied_constraint)
NEGATIVE_CONSTRAINT = (
    "a negative constraint constrains nothing (LyCORIS scales the blocks only if constraint > 0): 0"
)


def applied_constraint(value: float) -> float:
    """The COFT constraint DiagOFTModule / ButterflyOFTModule apply for an entry's `constraint`: lycoris-lora
    4.1.3 scales the skew blocks only `if constraint > 0` (diag_oft.py get_r, functional/diag_oft.py and
    boft.py, kernels/autograd/diag_oft.py `_cscale`: `constraint <= 0` returns no scale), so a negative one
    (NaN too) constrains nothing, as 0; the module saves it back as its `alpha`, dbspec's export 0, which
    LyCORIS's loaders build to the same unconstrained module (tests/runtime/test_lycoris_entry_signs.py)."""
    return float(value) if float(value) > 0 else 0.0


def _dylora_own(layer: Layer, network: dict[str, Any]) -> tuple[str, ...]:
    """The keys of a DyLoRA layer's entry its block carries (`block_size`, its `unit`); PresetError (DBS402)
    for one DyLoraModule cannot build or train with: it reads the value raw (`lora_dim % block_size`,
    `range(lora_dim // block_size)`, `torch.empty(out, block_size)`, `random.randint(0, blocks - 1)`), so
    anything but a positive int raises (a bool, a float or a string in its constructor, 0 dividing, a
    negative one drawing from an empty range)."""
    value = dict(layer.options).get("block_size")
    if value is not None and not (type(value) is int and value > 0):
        raise PresetError(
            f"`{layer.source}` hands its layers (e.g. {layer.path}) block_size = {value!r}: LyCORIS's "
            "DyLoraModule raises on anything but a positive integer",
            True,
        )
    return ("block_size",)


# the algorithms a block's `kind` gives layers beside a LoRA/LoCon, LoHa or LoKr network: on SD 1.x/2.x and
# SDXL LyCORIS's full, IA^3, Diag-OFT, BOFT, GLoRA and DyLoRA algos too (runtime/lycoris_full.py's,
# lycoris_ia3.py's, lycoris_oft.py's, lycoris_boft.py's, lycoris_glora.py's, dylora.py's layers beside the
# others); on Flux, SD3 and Chroma, whose fused Linears hold one module of one kind, all of them: the
# low-rank kinds, BOFT's blocks (runtime/lycoris_boft.py: each part its rows of the butterfly over the stacked
# weight), GLoRA and DyLoRA tied over a fused layer's parts (DyLoRA's down blocks and its one draw per fused
# module shared, runtime/dylora.py tie_fused_dylora), full / IA^3 / Diag-OFT exactly their parts' own (a copy
# of each part's rows, a scale per output row, blocks within a part)
# and T-LoRA's (runtime/lycoris_tlora.py; on a fused Linear one SVD of the stacked weight, Q and λ shared by
# the parts, fit_fused_tlora)
MIXED_FLOW = ("lora", "loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora")
MIXED_SD = MIXED_FLOW


def _bypass_output_dropout(algo: str, layers: list[Layer]) -> bool:
    """Whether the network's `dropout` in bypass_mode beside `layers` of other algorithms is the adapter's
    `output_dropout`: a LoRA/LoCon, LoHa or LoKr network whose entries are of those algorithms too.
    LoConModule's, LohaModule's and LokrModule's bypass_forward_diff in lycoris-lora 4.1.3 each end in
    torch's Dropout of the module's update x scalar, drawn after the module's own `torch.rand(1) <
    module_dropout`, each layer in forward order (tests/runtime/test_lycoris_mixed_bypass_dropout.py); on
    Flux / SD3 / Chroma a fused Linear is one module, one mask over its stacked output its diffusers parts
    share (tests/runtime/test_lycoris_mixed_flow_bypass_dropout.py). IA^3 entries too (was DBS403): IA3Module
    reads neither `dropout` nor `rank_dropout` in either forward (its output scaled in bypass_mode, the
    adapter's `bypass`; its module_dropout draw alone), so their layers draw nothing more
    (tests/runtime/test_lycoris_ia3_entries_bypass_dropout.py)."""
    entries = {_algo(layer.algo) for layer in layers}
    tlora = _algo(algo) == "tlora" and entries <= set(_TLORA_BYPASS)  # its blocks' (_tlora_bypass_inert)
    # BOFT and DyLoRA entries read neither in their bypass forward, Diag-OFT no rank_dropout (its dropout
    # raises: _oft_bypass_dropout, DBS402, first)
    inert = {"ia3", "boft", "dylora", "diag-oft"}
    # an IA^3 / DyLoRA network's own modules read neither: its adapter's dropout and rank_dropout its LoCon /
    # LoHa / LoKr entries' (compiler rules.host_bypass_inert; network.host_bypass_dropout); GLoRA and T-LoRA
    # entries' modules drop in their bypass forward alike (runtime/mixed_kinds.py kind_adapter)
    host = _algo(algo) in ("ia3", "dylora")
    readers = {*_BLOCK_KINDS, "glora", "tlora"}
    return tlora or ((host or _algo(algo) in _BLOCK_KINDS) and entries <= {*readers, *inert})


def _bypass_rank_dropout(algo: str, layers: list[Layer], network: dict[str, Any]) -> bool:
    """Whether a LoRA/LoCon, LoHa or LoKr network's `rank_dropout` in bypass_mode beside LoRA/LoCon, LoHa,
    LoKr (and IA^3) `layers` is the adapter's rank_dropout (the LoRA layers' in rank_dropout_form
    "lycoris_bypass"; a LoHa adapter's LoCon blocks take that form from its own rank_dropout_form, which a
    `dropout` (its output_dropout) implies: compiler/adapters.py). Without a `dropout` too (was DBS403):
    the modules' bypass forward draws its rank mask whether or not a Dropout follows (LyCORIS's `drop` is
    nn.Identity at 0; tests/runtime/test_lycoris_bypass_rank_dropout_alone.py, a LoHa network's
    test_lycoris_loha_bypass_rank_dropout_alone.py). In
    lycoris-lora 4.1.3 LoConModule's bypass_forward_diff masks the down's ranks (`torch.rand(rank)`),
    LohaModule's rebuilds its update with get_weight's row mask (`torch.rand(out)`), LokrModule's draws
    none, each between its module_dropout draw and its Dropout (compiler rules.mixed_bypass_ranks;
    tests/runtime/test_lycoris_mixed_bypass_rank_dropout.py; on Flux / SD3 / Chroma each fused
    Linear one module's draws, test_lycoris_mixed_flow_bypass_dropout.py). A LoKr network's too (was
    DBS403): its adapter's rank_dropout in rank_dropout_form "lycoris_bypass", its LoKr layers drawing none,
    its LoCon / LoHa entries theirs (network._lokr_rank_dropout_on_gpu;
    tests/runtime/test_lycoris_lokr_bypass_rank_dropout.py). A T-LoRA network's beside LoCon, LoHa, LoKr,
    IA^3, Diag-OFT and BOFT entries (was DBS403): TLoraModule never reads it, each entry its bypass mask
    (_tlora_bypass_inert)."""
    bypass = str(network.get("bypass_mode", "false")).lower() != "false"
    low_rank = _algo(algo) in ("lora", "loha", "lokr")
    tlora = _algo(algo) == "tlora" and all(_algo(layer.algo) in _TLORA_BYPASS for layer in layers)
    host = _algo(algo) in ("ia3", "dylora")  # (rules.host_bypass_inert)
    return bypass and (tlora or (low_rank or host) and _bypass_output_dropout(algo, layers))


# the entries whose LyCORIS module's bypass forward a T-LoRA adapter's `bypass` gives their blocks (compiler
# rules.tlora_bypass_inert)
_TLORA_BYPASS = ("lora", "loha", "lokr", "ia3", "diag-oft", "boft", "glora", "dylora")


def _tlora_bypass_inert(layers: list[Layer], network: dict[str, Any]) -> bool:
    """Whether a T-LoRA network's bypass_mode beside entries `layers` of other algorithms is its adapter's
    `bypass` (was DBS403, a spec's DBS578), as a GLoRA network's is (_glora_bypass_inert): LoCon / LoHa /
    LoKr entries (a decomposed one: DBS402 in _mixed_kinds, LyCORIS's bypass forward never decomposes),
    IA^3, Diag-OFT and BOFT entries. Every module gets the network's bypass_mode and `dropout`: TLoraModule
    drops its update in its bypass forward (the adapter's bypass_dropout), LoConModule / LohaModule /
    LokrModule theirs x scalar (the plan's output_dropout), IA3Module and ButterflyOFTModule read none
    (DiagOFTModule's raises: _oft_bypass_dropout, DBS402); GLoRA entries' GLoRAModule its pairs' outputs
    (the adapter's bypass_dropout on them) and DyLoRA entries' DyLoraModule nothing (its one block unscaled:
    several blocks crash, _dylora_fits); its `rank_dropout` each class's bypass mask (LoCon's ranks, LoHa's
    rows, GLoRA's pairs' ranks, the others none: rank_dropout_form "lycoris_bypass"), each after its
    module_dropout draw, in forward order (tests/runtime/test_lycoris_tlora_bypass_entries.py; on Flux /
    SD3 / Chroma each fused Linear one module, its parts sharing its masks)."""
    return network["bypass_mode"] and all(_algo(layer.algo) in _TLORA_BYPASS for layer in layers)


def _bypass_decomposes(layer: Layer, network: dict[str, Any]) -> bool:
    """Whether a LoCon / LoHa / LoKr entry's layer runs LyCORIS's bypass forward (its own bypass_mode, else
    the network's) with a weight decomposition (its own weight_decompose, else the network's dora_wd)."""
    own = dict(layer.options)
    bypass = bool(own["bypass_mode"]) if "bypass_mode" in own else bool(network.get("bypass_mode"))
    return bypass and decomposed(own, network)


def _glora_bypass_inert(layers: list[Layer], network: dict[str, Any]) -> bool:
    """Whether a GLoRA network's bypass_mode beside entries `layers` of other algorithms is its adapter's
    `bypass` (was DBS403, a spec's DBS578): LoCon / LoHa / LoKr entries, none decomposed (the network's
    dora_wd or an entry's own weight_decompose; LyCORIS's bypass forward never decomposes). Their
    LoConModule / LohaModule / LokrModule get the network's bypass_mode, whose bypass forward without a
    dropout, rank_dropout or weight decomposition computes their default one after the same module_dropout
    draw (tests/runtime/test_lycoris_bypass_kinds.py), so the adapter's `bypass` hands their blocks
    (runtime/mixed_kinds.py kind_adapter) a forward equal to lycoris-lora 4.1.3's, the GLoRA layers keeping
    theirs (tests/runtime/test_lycoris_glora_bypass_entries.py). The network's `dropout` there too (was
    DBS403): GLoRAModule's Dropout of each pair's output and those modules' bypass Dropout of their update x
    scalar after the same draws, the adapter's `dropout` (its blocks' output_dropout in the plan;
    tests/runtime/test_lycoris_glora_bypass_dropout_entries.py). Its `rank_dropout` there too (was DBS403):
    each module's own bypass mask, GLoRAModule's pairs' ranks kept where `torch.rand(rank) < rate`,
    LoConModule's where `> rate`, LohaModule's get_weight row mask, LokrModule's none, each after its
    module_dropout draw: the adapter's rank_dropout, its blocks' form settled in the plan (rank_dropout_form
    "lycoris_bypass", compiler/adapters.py _lycoris_rank_dropout_form;
    tests/runtime/test_lycoris_glora_bypass_rank_dropout_entries.py). IA^3 entries too (was DBS403): their
    IA3Module gets the network's bypass_mode, its bypass forward scaling the output (bias included; with an
    entry's own train_on_input the input), the block of kind ia3 in the adapter's settled `bypass`
    (runtime/mixed_kinds.py kind_adapter), after its module_dropout draw alone: IA3Module reads neither
    `dropout` nor `rank_dropout`, nor the network's dora_wd (beside IA^3 entries alone it is inert, as
    outside bypass_mode: DBS405; tests/runtime/test_lycoris_glora_bypass_ia3_entries.py). Diag-OFT and BOFT
    entries too (was DBS403): their modules' bypass forward, the block's settled `bypass`, reading no
    rank_dropout (a Diag-OFT one's dropout stops kohya: _oft_bypass_dropout, DBS402;
    tests/runtime/test_lycoris_glora_bypass_oft_entries.py). DyLoRA entries too (was DBS403): DyLoraModule's
    bypass forward adds its one block unscaled (several blocks per layer crash: _dylora_fits, DBS402),
    reading neither dropout nor rank_dropout (tests/runtime/test_lycoris_glora_bypass_dylora_entries.py)."""
    entries = {_algo(layer.algo) for layer in layers}
    own = any(k == "weight_decompose" for layer in layers for k, _ in layer.options)
    # the network's dora_wd decomposes LoCon / LoHa / LoKr layers alone: GLoRAModule and IA3Module take
    # weight_decompose and never read it (beside IA^3 entries alone inert, DBS405, as outside bypass_mode)
    decomposed = bool(entries & {"lora", "loha", "lokr"}) and bool(network.get("weight_decompose"))
    return (
        entries <= {"lora", "loha", "lokr", "ia3", "diag-oft", "boft", "dylora", "tlora"}
        and not decomposed
        and not own
    )


# the kinds whose LyCORIS modules read the network's use_scalar (GLoRAModule too: a GLoRA network's adapter
# `scalar`, another network's GLoRA blocks' `scalar`, all alike)
_SCALAR_READERS = (*_BLOCK_KINDS, "glora")
# the networks whose adapter has no `scalar`: their LoCon / LoHa / LoKr entries' blocks carry the network's
# use_scalar (_blocks, _scalar_against)
_SCALAR_TO_ENTRIES = (*_NO_DIMS, "dylora", "tlora")


def _switch_expressed(key: str, algo: str, layers: list[Layer], network: dict[str, Any]) -> bool:
    """The network's use_scalar / use_tucker / full_matrix beside entries of other algorithms (`layers`) as
    dbspec's blocks express them (on Flux / SD3 / Chroma each fused Linear's parts alike): LyCORIS hands
    them to every module, and the LoCon / LoHa / LoKr modules read use_scalar and use_tucker (GLoRAModule
    use_scalar), LokrModule full_matrix, the others neither. The adapter's `scalar` / `tucker` are every
    LoRA / LoHa / LoKr layer's but where a block gives its own (runtime/mixed_kinds.py kind_adapter); a
    full / IA^3 / DyLoRA / T-LoRA network's entries' blocks carry its use_scalar (_scalar_against), a LoKr
    entry's block its full_matrix (_network_lokr); a lokr network's full_matrix is its own layers', leaving
    its LoCon / LoHa entries' blocks their Tucker form (compiler/adapters.py _block_switches;
    tests/runtime/test_lycoris_network_switches_entries.py); beside GLoRA entries the GLoRA blocks' `scalar`
    alike (GLoRAModule reads it too)."""
    kinds = {_algo(layer.algo) for layer in layers}
    own = _algo(algo)
    if key == "use_scalar":
        return own in (*_SCALAR_READERS, *_SCALAR_TO_ENTRIES)
    if key == "use_tucker":  # a T-LoRA network's entries' k x k convolutions: their blocks' (network_tucker)
        return own in (*_BLOCK_KINDS, "tlora")
    if key == "full_matrix":
        return own == "lokr" or (own in _LOKR_OWN_NETWORKS and "lokr" in kinds) or "lokr" not in kinds
    return False


def _scalar_against(algo: str, layer: Layer, network: dict[str, Any]) -> tuple[tuple, bool]:
    """(entry options, the adapter's scalar) own_scalar reads for `layer`'s block: on a full / IA^3 / DyLoRA /
    T-LoRA network (no adapter scalar) the network's use_scalar is the entry's unless it gives its own."""
    if _algo(algo) not in _SCALAR_TO_ENTRIES:
        return layer.options, network["use_scalar"]
    return (("use_scalar", network["use_scalar"]), *layer.options), False


def _mixed_kinds(
    found: Targets,
    algo: str,
    network: dict[str, Any],
    other: list[Layer],
    kinds: tuple[str, ...],
    bypass: bool = False,
    unet: bool = False,
) -> list[Layer]:
    """The layers of `other` (another algorithm than the network's) that a block's `kind` cannot express
    (algorithms beyond `kinds`); PresetError for a network
    whose options the kinds do not build alike, or LoKr layers split otherwise than the adapter's kind
    writes them. The network's weight_decompose (dora_wd) is the adapter's `dora` (on a GLoRA / DyLoRA
    network its LoRA / LoHa / LoKr blocks'), which each LoRA / LoHa / LoKr layer takes as its LyCORIS
    module does and the other kinds' modules never read (runtime/mixed_kinds.py kind_adapter; on Flux / SD3
    / Chroma each fused Linear whole); `unet`: SD 1.x/2.x, SDXL, where the network's use_tucker beside
    other kinds is refused on a LoRA/LoCon / LoHa / LoKr network (on a full / IA^3 / DyLoRA / GLoRA one it is
    the entries' blocks' `tucker`, network_tucker; on Flux / SD3 it shapes SD3's patch convolution alone)."""
    if _algo(algo) == "diag-oft":  # its BOFT entries: blocks of kind boft (spec OftBlock `kind`,
        # _oft_blocks), every network option reaching both as LyCORIS hands it them
        return [layer for layer in other if _algo(layer.algo) != "boft"]
    if _algo(algo) not in (*_BLOCK_KINDS, "dylora", "glora", "tlora", *_NO_DIMS):  # DyLoRA's, GLoRA's,
        return other  # T-LoRA's, full's and IA^3's too (their ScaleBlock's `kind`)
    flow = not unet  # the flag: Flux / SD3 / Chroma (lycoris_flow_file.py; below `unet` holds the layers)
    unet = [layer for layer in other if _algo(layer.algo) in kinds]  # and the text encoders'
    if not unet:
        return other
    if _algo(algo) == "tlora":
        _beside_tlora(unet, network, flow)
    first = unet[0]
    # the network's dora_wd: the adapter's dora on a LoRA/LoCon, LoHa or LoKr network; on a GLoRA / DyLoRA
    # one (whose adapter takes none) the `dora` of its LoCon / LoHa / LoKr entries' blocks, as LyCORIS hands
    # it to those modules alone (_network_dora; tests/runtime/test_lycoris_algo_maps.py and
    # test_lycoris_mixed_dylora.py compare them with lycoris-lora on SD 1.x, test_lycoris_mixed_flow_glora.py
    # and test_lycoris_mixed_flow_dylora.py on Flux's fused Linears, each decomposed whole)
    on = [key for key in _MIXED_OFF if network.get(key) and key != "weight_decompose"]
    if flow and _algo(algo) in (
        *_BLOCK_KINDS,
        "dylora",
        "glora",
        *_NO_DIMS,
    ):  # use_tucker shapes LoCon / LoHa / LoKr k x k convolutions alone: on Flux / SD3
        # at most SD3's patch convolution, its block's `tucker` (lycoris_flux._mixed_patch_tucker; was DBS578)
        on = [key for key in on if key != "use_tucker"]
    # the network's rs_lora: each reading kind's blocks' (_blocks: LoCon / LoHa / LoKr / GLoRA entries'
    # alpha x sqrt(dim), LoKr's `rank_stabilized`; DyLoRA, T-LoRA, full, IA^3, Diag-OFT and BOFT modules
    # never read it; on Flux / SD3 / Chroma each fused Linear's parts alike)
    on = [key for key in on if key != "rs_lora"]
    # the network's switches each kind's blocks carry (use_tucker on Flux / SD3 / Chroma: above)
    on = [key for key in on if not _switch_expressed(key, algo, unet, network)]
    if not flow and _algo(algo) in _TUCKER_TO_ENTRIES:  # FullModule / IA3Module / DyLoRA / GLoRA never
        # read it: the LoCon / LoHa / LoKr entries' blocks' `tucker` (network_tucker)
        on = [key for key in on if key != "use_tucker"]
    # their bypass rules differ: rank_dropout (LoConModule masks ranks, LohaModule rows, LokrModule none);
    # `dropout` alone each LoCon / LoHa / LoKr module's bypass_forward_diff applies alike, torch's dropout of
    # its update after its module_dropout draw (adapter.output_dropout on every such layer, a fused Linear's
    # parts sharing its one mask: runtime/prepare.py; beside other kinds not expressed)
    # a LoCon / LoKr network's rank_dropout (a LoHa network's with its bypass dropout) each module's bypass
    # forward reads as its own (_bypass_rank_dropout)
    # a GLoRA network's beside LoCon / LoHa / LoKr entries undecomposed: its adapter's `dropout`, GLoRA's
    # pairs' and those modules' bypass Dropout alike, and its `rank_dropout`, each class's own bypass mask
    # (_glora_bypass_inert)
    inert = _algo(algo) == "glora" and _glora_bypass_inert(unet, network)
    ranks = bool(_rate(network.get("rank_dropout"))) and not (
        _bypass_rank_dropout(algo, unet, network) or inert
    )
    dropout = bool(_rate(network.get("dropout"))) and not (_bypass_output_dropout(algo, unet) or inert)
    drops = ranks or dropout
    # these adapters' blocks of other kinds take no bypass (an IA^3 network's take its bypass_mode: the
    # adapter's `bypass`, as a LoCon network's; FullModule raises on it); a GLoRA network's LoCon / LoHa /
    # LoKr entries undecomposed do (_glora_bypass_inert)
    glora = _algo(algo) == "full" or (_algo(algo) == "glora" and not inert)
    # bypass_mode without those dropouts: the network's own layers (LoRA/LoHa/LoKr inert, DyLoRA's
    # adapter.bypass), or, with no adapter.bypass for the blocks, inert kinds only
    alone = not glora and (bypass or {_algo(algo), *(_algo(x.algo) for x in unet)} <= set(_BYPASS_INERT))
    if "bypass_mode" in on and not drops and alone:
        on.remove("bypass_mode")
    decomposing = [layer for layer in unet if _algo(layer.algo) in _BLOCK_KINDS]
    inert_dora = next((layer for layer in decomposing if _bypass_decomposes(layer, network)), None)
    if _algo(algo) in ("ia3", "glora", "tlora") and inert_dora is not None:  # IA3Module, GLoRAModule take
        # weight_decompose and never read it: the pair reaches the entries alone (network.py's BYPASS_DORA)
        raise PresetError(
            f"`{inert_dora.source}` gives {inert_dora.path} algo = {inert_dora.algo!r} on an "
            f"algo={_algo(algo)} network with bypass_mode and weight decomposition (the network's dora_wd or "
            "the entry's own weight_decompose): with bypass_mode LyCORIS's forward never applies the weight "
            "decomposition, so dora_scale gets no gradient, yet the saved file carries it and its loaders "
            "decompose with it: the file does not compute what kohya trained",
            True,
        )
    lokr = _algo(algo) != "lokr" and any(_algo(layer.algo) == "lokr" for layer in unet)
    if lokr and _algo(algo) not in _LOKR_OWN_NETWORKS:  # elsewhere the LoKr blocks carry the network's
        # factor and switches, which only LokrModule reads (_blocks, _network_lokr)
        on += [key for key in ("decompose_both", "unbalanced_factorization") if network.get(key)]
        on += ["factor"] if network.get("factor", -1) != -1 else []
    # the root kwargs the OFTs alone read, the network's constraint and rescaled, are their blocks' alpha and
    # `rescaled` (_blocks; oft_entries.entries_constraint, entries_rescaled)
    if on:
        named = ", ".join(on)
        if "bypass_mode" in on and drops and alone:  # name the dropouts bypass_mode cannot take here
            rates = [
                f"{key} = {network[key]}"
                for key, drawn in (("dropout", dropout), ("rank_dropout", ranks))
                if drawn
            ]
            named += f" with its {' and '.join(rates)} (bypass_mode alone converts)"
        raise PresetError(
            f"`{first.source}` gives {first.path} algo = {first.algo!r} on an algo={algo} network with "
            f"network_args {named}: dbspec trains several algorithms in one run with the options "
            "every one builds alike (DBS578)",
            False,
        )
    # a LoRA/LoCon, LoHa, full or IA^3 network's LoKr blocks carry them (spec AdapterBlock, ScaleBlock;
    # runtime/mixed_kinds.py builds the LoKr layers alone, each block's own; on Flux / SD3 / Chroma each
    # fused Linear one LokrModule, runtime/fused_lokr.py)
    carried = _algo(algo) in _LOKR_OWN_NETWORKS
    own = next((layer for layer in unet if _own_factor_given(layer)), None) if lokr and not carried else None
    if own is not None:
        raise PresetError(
            f"`{own.source}` gives LoKr layers (e.g. {own.path}) their own factor or switches on an "
            f"algo={algo} network: [[adapter.blocks]] carry LoKr's factor and switches on a lokr adapter, "
            "and beside other kinds on a LoRA/LoCon, LoHa, full, IA^3, DyLoRA or GLoRA network (elsewhere "
            "a LoKr entry's own use_tucker alone, its block's `tucker`)",
            False,
        )
    return [layer for layer in other if layer not in unet]


# the network options a T-LoRA adapter does not hand its blocks of other kinds (spec TloraBlock: a kind, rank,
# alpha, DyLoRA's unit, LoCon / LoHa / LoKr's scalar and LoKr's factor and switches, which carry the
# network's use_scalar, factor, decompose_both, full_matrix and unbalanced_factorization; the adapter's
# module_dropout reaches them): those modules read them, TLoraModule does not. The network's constraint and
# rescaled are its Diag-OFT / BOFT blocks' alpha and `rescaled`, as on the other networks (_blocks,
# oft_entries.entries_constraint / entries_rescaled)
_TLORA_NETWORK_OFF = ("dropout", "rank_dropout", "bypass_mode")


# what a T-LoRA adapter's block of another kind carries of its entry's own options (spec TloraBlock: the OFTs'
# constraint as its alpha, `rescaled`; DyLoRA's block size as its `unit`), checked by _oft_own / _dylora_own
_TLORA_BLOCK_OWN = {"diag-oft": ("constraint", "rescaled"), "boft": ("constraint", "rescaled")}
_TLORA_BLOCK_OWN["dylora"] = ("block_size",)
_TLORA_BLOCK_OWN["ia3"] = ("train_on_input",)  # its block's `on_input` (_input_side)
# a LoCon / LoHa / LoKr entry's own use_scalar, a LoKr entry's own split and switches: its block's `scalar`,
# `factor` and switches (spec TloraBlock; runtime/mixed_kinds.py builds each kind alone)
# and their own rs_lora (its block's alpha x sqrt(dim), a LoKr block's `rank_stabilized`)
_TLORA_BLOCK_OWN.update(
    lora=("use_scalar", "weight_decompose", "wd_on_out", "rs_lora", "use_tucker"),
    loha=("use_scalar", "weight_decompose", "wd_on_out", "rs_lora", "use_tucker"),
)
_TLORA_BLOCK_OWN["glora"] = ("use_scalar", "rs_lora")  # its block's `scalar` (every GLoRA block alike)
_TLORA_BLOCK_OWN["lokr"] = (
    "rs_lora",
    "use_scalar",
    "use_tucker",
    "weight_decompose",
    "wd_on_out",
    "factor",
    "decompose_both",
    "full_matrix",
    "unbalanced_factorization",
)


# the kinds whose LyCORIS modules draw (or never read) the network's rank_dropout as a T-LoRA adapter's
# blocks of other kinds draw it (compiler rules.lycoris_row_masks: LoCon / LoHa / full row masks, Diag-OFT's
# rotations' dropout; LoKr's not)
_TLORA_RANK_DROPOUT = ("lora", "loha", "full", "ia3", "diag-oft", "boft", "glora", "dylora")
# the entries whose own bypass_mode a T-LoRA adapter's block carries (its `bypass`, runtime/mixed_kinds.py
# set_block_bypass: DiagOFTModule's / ButterflyOFTModule's bypass forward, the output rotated, its bias too),
# and whose modules never read the network's dropout outside bypass_mode (DiagOFTModule drops in its bypass
# forward alone, ButterflyOFTModule never), as TLoraModule (tests/runtime/test_lycoris_tlora_mixed_opts.py;
# on Flux / SD3 / Chroma's fused Linears each fused module's bypass forward,
# test_lycoris_flow_tlora_mixed_opts.py)
_TLORA_OFT_ENTRIES = ("diag-oft", "boft")


def _beside_tlora(layers: list[Layer], network: dict[str, Any], flow: bool = False) -> None:
    """PresetError for entries of other algorithms on an algo=tlora network (spec TloraBlock `kind`) that a
    T-LoRA adapter's blocks do not build: on a k x k convolution on Flux / SD3 / Chroma (`flow`; on a U-Net
    their blocks' conv_rank, the adapter's conv_targets: LyCORIS's create_single_module gives them the
    entry's dim, else conv_dim), with an option of their own its block does not carry
    (_TLORA_BLOCK_OWN), or beside a network option those modules read that their blocks do not carry
    (_TLORA_NETWORK_OFF; the network's module_dropout reaches them, its constraint / rescaled the Diag-OFT /
    BOFT blocks', its block_size the DyLoRA blocks' `unit`, its use_scalar and LoKr split and switches the
    LoCon / LoHa / LoKr blocks'); the network's rank_dropout is the adapter's, which those blocks draw, where
    they are all of _TLORA_RANK_DROPOUT's kinds (on Flux / SD3 / Chroma each fused Linear one module's
    mask); beside LoKr entries outside bypass_mode it stops kohya (DBS402: LokrModule's CPU mask). Diag-OFT
    / BOFT entries' own bypass_mode is their block's `bypass` (on Flux / SD3 / Chroma too), and
    outside bypass_mode beside them alone the network's dropout is read by none of the modules (DBS405 in
    network.py); a Diag-OFT layer in bypass_mode with that dropout stops kohya (DBS402,
    _oft_bypass_dropout, in check_layers)."""
    conv = next((layer for layer in layers if layer.kind == "conv"), None)
    if conv is not None and flow:
        raise PresetError(
            f"`{conv.source}` gives {conv.path} (a k x k convolution) algo = {conv.algo!r} on an algo=tlora "
            "network: dbspec's T-LoRA adapter takes blocks of other kinds on Linear and 1x1 layers only on "
            "Flux, SD3 and Chroma",
            False,
        )

    def extra(layer: Layer) -> list[str]:  # the entry's own options its block does not carry (those its
        # class never uses, or that change nothing on its layers, check_layers reports inert)
        own = _TLORA_BLOCK_OWN.get(_algo(layer.algo), ())
        if _algo(layer.algo) in BYPASS_BLOCKS:  # its block's `bypass` (Diag-OFT, BOFT, IA^3, DyLoRA)
            own = (*own, "bypass_mode")
        reads = _READS.get(_algo(layer.algo), ())
        options = dict(layer.options)
        return [
            k
            for k, _ in layer.options
            if k not in own
            and k in reads
            and not _same(k, options[k], network)
            and not inert_option(_algo(layer.algo), layer.kind, k, options, network)
        ]

    own = next((layer for layer in layers if extra(layer)), None)
    if own is not None:
        raise PresetError(
            f"`{own.source}` hands its {own.algo} layers (e.g. {own.path}) {', '.join(extra(own))} on an "
            "algo=tlora network: dbspec's T-LoRA adapter's blocks of other kinds carry a kind, rank and "
            "alpha (LoCon / LoHa / LoKr / GLoRA their use_scalar and rs_lora, LoKr its factor, "
            "decompose_both, full_matrix and unbalanced_factorization, Diag-OFT / BOFT their constraint, "
            "rescaled and bypass_mode, DyLoRA its block_size)",
            False,
        )
    lokr = next((layer for layer in layers if _algo(layer.algo) == "lokr"), None)
    bypass = str(network.get("bypass_mode", "false")).lower() != "false"
    if lokr is not None and _rate(network.get("rank_dropout")) and not bypass:  # as network.py's
        raise PresetError(  # lokr_entries_rank_dropout on the other networks
            f"`{lokr.source}` gives {lokr.path} algo = 'lokr' on an algo=tlora network with network_args "
            "rank_dropout: their LokrModules draw the rank-dropout mask on the CPU and multiply the GPU "
            "weight by it, so kohya stops at the first training step on a GPU (RuntimeError: tensors on two "
            "devices; LyCORIS issue #291)",
            True,
        )
    on = [key for key in _TLORA_NETWORK_OFF if network.get(key)]
    if all(_algo(layer.algo) in _TLORA_RANK_DROPOUT for layer in layers) and "rank_dropout" in on:
        on.remove("rank_dropout")  # the adapter's rank_dropout (network.py _block_rank_dropout)
    if _tlora_bypass_inert(layers, network):  # the adapter's `bypass`, `dropout` and `rank_dropout`, its
        on = [key for key in on if key not in ("bypass_mode", "dropout", "rank_dropout")]  # blocks' too
    if not network["bypass_mode"] and "dropout" in on:  # every module reads it in its bypass forward alone:
        on.remove("dropout")  # the T-LoRA / OFT entries' own bypass_mode (network.py _tlora; else DBS405)
    if on:
        first = layers[0]
        raise PresetError(
            f"`{first.source}` gives {first.path} algo = {first.algo!r} on an algo=tlora network with "
            f"network_args {', '.join(on)}: dbspec's T-LoRA adapter builds its blocks of other kinds with "
            "their kind's defaults, the network's module_dropout and the options their blocks carry "
            "(use_scalar, rs_lora, LoKr's factor and switches; DBS578)",
            False,
        )


def _network_dora(algo: str, layer: Layer, network: dict[str, Any]) -> tuple[tuple, dict[str, Any]]:
    """(entry options, network options) as own_dora / own_dora_axis read them for `layer`'s block. On a
    GLoRA or DyLoRA network (its adapter has no `dora`: off, per output row) the network's dora_wd and
    wd_on_output are the entry's unless it gives its own, as create_single_module hands the root kwargs to
    every module where the entry has none (GLoRAModule and DyLoraModule take weight_decompose and never read
    it; LoConModule, LohaModule and LokrModule decompose): its LoCon / LoHa / LoKr blocks' `dora` /
    `dora_axis` against an adapter that decomposes nothing."""
    if _algo(algo) not in ("glora", "dylora", "tlora", *_NO_DIMS):
        return layer.options, network
    given = (("weight_decompose", network["weight_decompose"]), ("wd_on_out", network["wd_on_out"]))
    return (*given, *layer.options), {**network, "weight_decompose": False, "wd_on_out": True}


def _dylora_fits(source: str, group: list[Layer], unit: int, bypass: bool = False) -> None:
    """PresetError (DBS402) for DyLoRA layers whose dim is not a multiple of their block size: LyCORIS's
    DyLoraModule asserts `lora_dim % block_size == 0` when create_network builds it; in bypass_mode for
    several blocks per layer: its bypass forward views the drawn blocks as the whole rank and raises unless
    the last block is drawn (convert/kohya/dylora.py's rule for a DyLoRA network)."""
    bad = next((layer for layer in group if layer.dim % unit), None)
    if bad is not None:
        raise PresetError(
            f"`{source}` gives {bad.path} algo = 'dylora' at dim {bad.dim} in blocks of {unit}: LyCORIS's "
            "DyLoraModule asserts lora_dim % block_size == 0",
            True,
        )
    several = next((layer for layer in group if layer.dim != unit), None) if bypass else None
    if several is not None:
        raise PresetError(
            f"`{source}` gives {several.path} algo = 'dylora' at dim {several.dim} in blocks of {unit} with "
            "bypass_mode: LyCORIS's DyLoraModule crashes in training (its bypass forward views the drawn "
            "blocks as the whole rank, a shape error unless the last block is drawn)",
            True,
        )


def _own_factor_given(layer: Layer) -> bool:
    """A LoKr entry gives its own factor or switches other than use_tucker (LokrModule's Tucker form, which
    a block of kind lokr carries beside other kinds: its `tucker`, runtime/mixed_kinds.py)."""
    return any(key in ("factor", *_SWITCHES) and key != "use_tucker" for key, _ in layer.options)


def _int(value: Any) -> bool:
    """int(value) succeeds (a TOML integer or float, a string of an integer; a bool is 0 or 1)."""
    try:
        int(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


# the class of rows no model of the family has, but whose paths a block's pattern must not match: a fused
# Linear's parts one block beyond the last (the compiler checks fused layers at every block index a model can
# have, compiler/fused.py: a block's pattern picks all of a fused layer's parts or none at any index)
UNSEEN = "(unseen)"


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
    layers: dict[str, Layer], rows: list[Row], dims, rs_lora: bool, network: dict[str, Any], algo: str = ""
) -> list[dict[str, Any]]:
    dim, alpha, conv_dim, conv_alpha = dims
    defaults = {"linear": (dim, alpha), "conv1": (dim, alpha), "conv": (conv_dim, conv_alpha)}
    # suffixes unique among the adapted layers (and the UNSEEN rows: a deeper model's fused layers' parts)
    built = [row for row in rows if row[0] in layers or row[1] == UNSEEN]
    groups: dict[str, list[Layer]] = {}
    for layer in layers.values():
        groups.setdefault(layer.source, []).append(layer)
    out = []
    for source, group in groups.items():
        entry = _network_dora(algo, group[0], network)  # a GLoRA / DyLoRA network's dora_wd on it
        factor = _own_factor(group[0], network)  # one entry: one factor and set of switches
        switches = _own_switches(group[0], network, any(layer.kind == "conv" for layer in group))
        if algo and _algo(algo) != "lokr" and _algo(group[0].algo) == "lokr":
            factor, switches = _network_lokr(group[0], network, factor, switches)
        same = all((layer.dim, layer.alpha) == defaults[layer.kind] for layer in group)
        kind = _algo(group[0].algo) if algo and _algo(group[0].algo) != _algo(algo) else ""  # one entry
        # the entry's own rs_lora, else the network's as its class reads it (`rs_lora`: the adapter's own
        # layers', off where the network's class never reads it: a DyLoRA / T-LoRA network's entries read it)
        rs = own_rs_lora(_algo(group[0].algo), group[0].options, network["rs_lora"])
        switches.update(own_scalar(_algo(group[0].algo), *_scalar_against(algo, group[0], network)))
        switches.update(own_dora(_algo(group[0].algo), *entry))
        switches.update(own_dora_axis(_algo(group[0].algo), *entry))
        convs = any(layer.kind == "conv" for layer in group)
        switches.update(own_tucker(_algo(group[0].algo), group[0].options, network["use_tucker"], convs))
        # a lokr adapter's own LoKr layers plan its rank_stabilized (the network's rs_lora), a block of kind
        # lokr on another kind's adapter none (compiler/adapters.py _other_lokr_switches)
        planned = rs_lora and not kind
        switches.update(
            own_rank_stabilized(_algo(group[0].algo), group[0].options, network["rs_lora"], planned)
        )
        switches.update(own_rank_dropout_scale(_algo(group[0].algo), group[0].options, network))
        if algo:  # a Diag-OFT / BOFT / DyLoRA / IA^3 entry's own bypass_mode (check_layers let it through;
            # on a DyLoRA network its own algorithm's entries' too)
            switches.update(own_bypass_switch(algo, group[0], network))
        if _input_side(algo, group[0]) and dict(group[0].options).get("train_on_input"):
            switches["on_input"] = True  # IA3Module's `if train_on_input`: its scales on the input channels
        if _algo(group[0].algo) == "tlora" == _algo(algo):  # its own SVD start (_tlora_own)
            entry = dict(group[0].options)
            sig_type = entry.get("sig_type", "principal")
            switches.update({"sig_type": sig_type} if sig_type != "principal" else {})
            if not entry.get("use_data_init", True):  # TLoraModule's `if self.use_data_init`: a random start
                switches["data_init"] = False
            if "bypass_mode" in entry and bool(entry["bypass_mode"]) != network["bypass_mode"]:
                switches["bypass"] = "on" if entry["bypass_mode"] else "off"  # TLoraModule's truth test
        elif _algo(group[0].algo) == "tlora":  # a T-LoRA entry's own start on another network's kind
            entry = dict(group[0].options)
            if not entry.get("use_data_init", True):
                switches["data_init"] = False
            if entry.get("sig_type", "principal") != "principal":  # one of TLoraModule's three (_sig_type)
                switches["sig_type"] = entry["sig_type"]
        unit = _own_unit(group[0], network)
        if not factor and not switches and same and not kind and rs == rs_lora and not unit:
            continue
        linear = next((layer for layer in group if layer.kind != "conv"), None)
        conv = next((layer for layer in group if layer.kind == "conv"), None)
        rank, a = (linear.dim, linear.alpha) if linear else (dim, alpha)  # a block of convolutions only
        block: dict[str, Any] = {
            "pattern": _pattern({layer.path for layer in group}, built),
            **({"kind": kind} if kind else {}),
            "rank": rank,
            "alpha": _alpha(a, rank, rs),
        }
        if conv is not None:
            block.update(conv_rank=conv.dim, conv_alpha=_alpha(conv.alpha, conv.dim, rs))
        if kind in _NO_DIMS:  # FullModule, IA3Module never read dim / alpha: rank 1 switches them on
            block.update(rank=1, alpha=1.0, **({"conv_rank": 1, "conv_alpha": 1.0} if conv else {}))
        oft_own: list[str] = []
        if kind in ("diag-oft", "boft"):  # OFT modules: the dim their block-size hint, the constraint the
            entry = dict(group[0].options)  # network's (create_single_module hands it every module, which
            c = float(network.get("constraint") or 0.0)  # only they read); its own replaces it (the alpha)
            if "constraint" in entry and not _same("constraint", entry["constraint"], network):
                c = applied_constraint(entry["constraint"])  # a number (_oft_own); a negative one: 0
                oft_own.append("constraint")
            block.update(alpha=c, **({"conv_alpha": c} if conv else {}))
            # DiagOFTModule's (ButterflyOFTModule's) `if rescaled`: the entry's own, else the network's
            # (create_single_module hands it the root kwargs the entry does not give); the adapter's off
            if "rescaled" in entry and bool(entry["rescaled"]) != bool(network.get("rescaled")):
                switches["rescaled"] = "on" if entry["rescaled"] else "off"
            elif network.get("rescaled"):
                switches["rescaled"] = "on"
        if factor:
            block["factor"] = factor
        if kind == "dylora":  # DyLoraModule beside other kinds: the entry's block_size, else the network's
            unit = unit or network["block_size"]
            _dylora_fits(source, group, unit, _bypassed(group[0], network))  # refused first without bypass
        if unit:
            block["unit"] = unit
        block.update(switches)
        own = [*([f"algo {group[0].algo}"] if kind else []), "dim / alpha", *(["factor"] if factor else [])]
        own += oft_own
        own += ["block_size"] if unit else []
        # the entry's own, a block's alpha
        given_rs = "rs_lora" in dict(group[0].options) and rs != own_rs_lora(
            _algo(group[0].algo), (), network["rs_lora"]
        )
        what = ", ".join(
            [*own, *switches, *(["rs_lora"] if given_rs and "rank_stabilized" not in switches else [])]
        )
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
    kinds: tuple[str, ...] = (),
    bypass: bool = False,
    entry_bypass: bool = False,
    unet: bool = False,
    fp8: str = "",
) -> tuple[list[dict], list[dict], list[tuple[str, str]]]:
    """([[adapter.blocks]], [[adapter.text_encoder_blocks]], inert entry keys) for the map entries whose
    layers' dim or alpha differ from the network's `dims` (dim, alpha, conv_dim, conv_alpha); `network`: the
    module options create_network hands every module; `applied`: whether LycorisNetworkKohya.apply_to keeps
    the (text-encoder, U-Net) modules it built (it empties a list the script does not train: an entry's
    algorithm, options and dims there change nothing); `bypass`: check_layers'. PresetError where they
    cannot be written; `entry_bypass`, `fp8`: check_layers'."""
    sd = unet  # SD 1.x/2.x, SDXL (below `unet` holds the U-Net's blocks)
    kept = found._replace(text=found.text if applied[0] else {}, unet=found.unet if applied[1] else {})
    inert = [
        *check_layers(kept, algo, network, kinds, kind, bypass, entry_bypass, unet, fp8),
        *_dropped(found, kept),
    ]
    found = kept
    if (
        kind in _NO_DIMS
    ):  # FullModule, IA3Module never read dim / alpha: blocks for other kinds' entries alone
        return (*_other_kind_blocks(found, dims, rs_lora, network, algo if kinds else ""), inert)
    if kind in _OFT:  # an entry's dim: its layers' block-size hint
        return (
            _oft_blocks(found.unet, found.unet_rows, dims, network, kind),
            _oft_blocks(found.text, found.text_rows, dims, network, kind),
            inert,
        )
    rs_lora = rs_lora and kind not in ("dylora", "tlora")  # DyLoraModule, TLoraModule never read it
    unet = _blocks(found.unet, found.unet_rows, dims, rs_lora, network, algo if kinds else "")
    text = _blocks(
        found.text, found.text_rows, (dims[0], dims[1], 0, 0), rs_lora, network, algo if kinds else ""
    )
    if (unet or text) and kind not in _RANKED:
        raise PresetError(
            f"`{_source(unet or text)}` gives some layers their own dim / alpha on algo={algo}: dbspec's "
            "per-layer ranks ([[adapter.blocks]], [[adapter.text_encoder_blocks]]) apply to LoRA/LoCon, "
            "LoHa, LoKr, DyLoRA, GLoRA, Diag-OFT, BOFT and T-LoRA",
            False,
        )
    if _algo(algo) not in _LOKR_OWN_NETWORKS:  # there each kind's layers built alone
        # a LoKr network's own LoKr layers too on SD 1.x/2.x / SDXL (their pass keeps its blocks' own:
        # runtime/mixed_kinds.py kind_adapter, adapters.add_lora's block_rank_stabilized)
        mixed_rank_stabilized([*unet, *text], rank_stabilized=_algo(algo) == "lokr")
    if (
        kind in ("dylora", "glora", "tlora") and kinds and sd
    ):  # the network's use_tucker on its entries' k x k
        network_tucker(unet, network)  # convolutions (on SD3's patch: lycoris_flux._mixed_patch_tucker)
    for block in [*unet, *text]:
        high = max(block["rank"], block.get("conv_rank", 0))
        if high > _MAX_BLOCK_RANK:
            # the entry's own, else the network's (a block of another kind: off, _blocks' `planned`)
            rs = block.get("rank_stabilized", "on" if rs_lora and "kind" not in block else "off") == "on"
            _huge_block(block, high, block.get("kind", kind), rs)
    for block in text:
        block.pop("conv_rank", None), block.pop("conv_alpha", None), block.pop("tucker", None)
    return unet, text, inert


# what a full / IA^3 adapter's blocks of another kind carry (spec ScaleBlock, TextEncoderBlock alike)
_SCALE_BLOCK_KEYS = (
    "pattern",
    "kind",
    "rank",
    "alpha",
    "conv_rank",
    "conv_alpha",
    "unit",
    "tucker",
    "dora",
    "dora_axis",
)


# and an entry's own LoKr split and switches, use_scalar and LoKr rs_lora (each kind's layers built alone,
# runtime/mixed_kinds.py kind_adapter), a Diag-OFT / BOFT entry's own rescaled (its constraint the block's
# alpha)
_SCALE_BLOCK_OWN = (
    "factor",
    "decompose_both",
    "full_matrix",
    "unbalanced_factorization",
    "rank_stabilized",
    "scalar",
    "rescaled",
    "bypass",
    "on_input",  # an IA^3 entry's own train_on_input on a full network (ScaleBlock on_input)
    "sig_type",  # a T-LoRA entry's own start on a full network (ScaleBlock sig_type / data_init)
    "data_init",
)


def _other_kind_blocks(found: Targets, dims, rs_lora: bool, network: dict[str, Any], algo: str):
    """A full / IA^3 network's ([[adapter.blocks]], [[adapter.text_encoder_blocks]]): its map entries of
    another algorithm, each a block of that `kind` at its dim and alpha (spec ScaleBlock), with a LoKr
    entry's own factor and switches, a LoRA/LoCon / LoHa / LoKr entry's own use_scalar, a LoKr entry's own
    rs_lora, a Diag-OFT / BOFT entry's own constraint (the block's alpha) and rescaled, a Diag-OFT / BOFT /
    DyLoRA / IA^3 entry's own bypass_mode, a T-LoRA entry's own start; PresetError for an entry's own option
    such a block does not carry."""
    if not algo:
        return [], []
    unet = [_own_ia3(b) for b in _blocks(found.unet, found.unet_rows, dims, rs_lora, network, algo)]
    text = [
        _own_ia3(b, text=True)
        for b in _blocks(found.text, found.text_rows, (dims[0], dims[1], 0, 0), rs_lora, network, algo)
    ]
    unet, text = [b for b in unet if b], [b for b in text if b]
    for block in [b for b in [*unet, *text] if "kind" in b]:
        keys = (*_SCALE_BLOCK_KEYS, *_SCALE_BLOCK_OWN, "_why")
        extra = [k for k in block if k not in keys]
        own = [k for k in extra if not (k in ("conv_rank", "conv_alpha") and block in text)]
        if own:
            raise PresetError(
                f"`{_source([block])}` gives its {block['kind']} layers their own {', '.join(own)} on an "
                f"algo={algo} network: a full / IA^3 adapter's [[adapter.blocks]] of another kind carry a "
                "rank, alpha, unit, dora, Tucker form, LoKr's factor, switches and rs_lora, a scalar, "
                "Diag-OFT / BOFT's constraint and rescaled and a bypass_mode, no other option of their own",
                False,
            )
        high = max(block["rank"], block.get("conv_rank", 0))
        if high > _MAX_BLOCK_RANK:
            _huge_block(block, high, block["kind"], block.get("rank_stabilized") == "on")
    for block in text:
        block.pop("conv_rank", None), block.pop("conv_alpha", None)
    network_tucker(unet, network)
    return unet, text


def _own_ia3(block: dict[str, Any], text: bool = False) -> dict[str, Any] | None:
    """A full / IA^3 network's block of `_blocks`: one of another kind as it is; an IA^3 network's own
    entry's block with its own bypass_mode (own_bypass_switch) and train_on_input (its `on_input`) as
    {pattern, bypass, on_input} (IA3Module never reads dim / alpha: an IA^3 adapter's own block has no size;
    a text encoder's block, spec TextEncoderBlock, rank 1 and alpha 1, unread); None for an own entry's
    block without either."""
    if "kind" in block:
        return block
    own = [name for key, name in (("bypass", "bypass_mode"), ("on_input", "train_on_input")) if key in block]
    if not own:
        return None
    why = block["_why"].split("`")
    return {
        "pattern": block["pattern"],
        **({"rank": 1, "alpha": 1.0} if text else {}),
        **{key: block[key] for key in ("bypass", "on_input") if key in block},
        "_why": f"kohya lycoris.kohya: the preset file's `{why[1]}` {', '.join(own)}"
        if len(why) > 2
        else block["_why"],
    }


def network_tucker(blocks: list[dict[str, Any]], network: dict[str, Any]) -> None:
    """The network's use_tucker on a full / IA^3 / DyLoRA / GLoRA network (whose own modules never read it)
    beside a preset file's LoCon / LoHa / LoKr entries: LyCORIS hands it to every module, and LoConModule,
    LohaModule and LokrModule build their Tucker form on a k x k convolution, so the entries' U-Net blocks
    with k x k convolutions (a `conv_rank`) and no use_tucker of their own get `tucker = "on"`; their
    Linears and 1x1 convolutions ignore it (checked against lycoris-lora 4.1.3's modules:
    tests/runtime/test_lycoris_whole_main_tucker.py, test_lycoris_network_tucker_entries.py)."""
    if not network.get("use_tucker"):
        return
    for block in blocks:
        if block.get("kind") in _TUCKER_ENTRIES and block.get("conv_rank") and "tucker" not in block:
            block["tucker"] = "on"
            block["_why"] += ", the network's use_tucker"


def _oft_blocks(
    layers: dict[str, Layer], rows: list[Row], dims, network: dict[str, Any], kind: str = ""
) -> list[dict[str, Any]]:
    """Diag-OFT's and BOFT's [[adapter.blocks]]: DiagOFTModule (ButterflyOFTModule alike) takes the layer's
    dim (`dim or lora_dim`, on k x k convolutions `dim or conv_lora_dim`) as its block-size hint and never
    reads alpha; an entry's own `constraint` (a number: _oft_own) and `rescaled` (its truth) replace the
    network's, which create_single_module hands every module only where the entry does not give its own;
    PresetError for an entry's convolutions with conv_dim 0 (dbspec's Diag-OFT and BOFT adapt convolutions
    only with conv_dim). One block per entry and block size: an entry without its own dim gives its linears
    and 1x1 convolutions `lora_dim`, its k x k ones `conv_lora_dim` (network._diag_oft's block over the k x k
    convolutions follows these). A Diag-OFT network's (`kind`) BOFT entries: blocks of kind boft, their own
    ButterflyOFTModules (spec OftBlock `kind`; runtime/mixed_kinds.py builds each kind alone)."""
    dim, conv_dim = dims[0], dims[2]
    built = [row for row in rows if row[0] in layers]
    groups: dict[tuple[str, int], list[Layer]] = {}
    for layer in layers.values():
        groups.setdefault((layer.source, layer.dim), []).append(layer)
    out = []
    for (source, _), group in groups.items():
        entry = dict(group[0].options)  # one entry: one constraint and rescaled
        own: dict[str, Any] = {}
        if "constraint" in entry and not _same("constraint", entry["constraint"], network):
            own["constraint"] = applied_constraint(entry["constraint"])  # a negative one: 0
        if "rescaled" in entry and bool(entry["rescaled"]) != network["rescaled"]:
            own["rescaled"] = "on" if entry["rescaled"] else "off"
        # its own bypass_mode (create_single_module hands it over the network's): the block's `bypass`
        own.update(own_bypass_switch(group[0].algo, group[0], network))
        other = {"kind": _algo(group[0].algo)} if kind and _algo(group[0].algo) != kind else {}
        same = all(layer.dim == (conv_dim if layer.kind == "conv" else dim) for layer in group)
        if not own and not other and same:
            continue
        conv = next((layer for layer in group if layer.kind == "conv"), None)
        if conv is not None and not conv_dim:
            raise PresetError(
                f"`{source}` gives {conv.path} dim = {conv.dim} with conv_dim=0: dbspec's Diag-OFT and BOFT "
                "adapt convolutions only with conv_dim",
                False,
            )
        what = ", ".join([*([f"algo {group[0].algo}"] if other else []), "dim (its block size)", *own])
        out.append(
            {
                "pattern": _pattern({layer.path for layer in group}, built),
                **other,
                "block_size": group[0].dim,
                **own,
                "_why": f"kohya lycoris.kohya: the preset file's `{source}` {what}",
            }
        )
    return out


def _huge_block(block: dict[str, Any], high: int, kind: str, rs_lora: bool) -> None:
    """A block's dim above [[adapter.blocks]]' bound of 100000 for pairs. LoRA/LoCon and LoHa layers train a
    pair at the dim itself (LoConModule's lora_down / lora_up, LohaModule's hada_w*: no module clamps it to
    the layer's width): PresetError. On LoKr (LyCORIS's `dim = 10000000000000` idiom) every layer trains both
    Kronecker factors in full (a factor is full once the dim reaches half the larger part of its split, at
    most the layer's width) and LokrModule replaces alpha by the dim: scale 1, which a block at 100000 builds
    alike on layers narrower than 200000; with rs_lora dim / sqrt(dim) = sqrt(dim), which only the dim
    itself gives (a LoKr block's rank goes past 100000: spec LOKR_BLOCK_RANK_MAX)."""
    where = (
        f"`{_source([block])}` gives some layers dim = {high}, above [[adapter.blocks]]' {_MAX_BLOCK_RANK}"
    )
    if kind != "lokr":
        raise PresetError(
            f"{where}: a {kind} layer trains a pair at that rank (only LoKr's factors cap)", False
        )
    if rs_lora:
        block["_why"] += f" (dim {high}: both Kronecker factors full at rs_lora's sqrt({high}), LokrModule's)"
        return
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

"""LyCORIS's lycoris.kohya `algo=tlora` with flux_train_network.py / sd3_train_network.py (lycoris-lora 4.1.3
lycoris/modules/tlora.py on kohya's Flux / SD3 / Chroma): [adapter] kind "tlora" with `fused_projections =
true`. lycoris_flux.py's map_lycoris_flow hands it the preset's layers.

TLoraModule starts each Linear from the SVD of its weight, W = U S Vh: Q = Vh[:r], P = U[:, :r], trained
singular values λ = S[:r], a frozen copy of that start subtracted, ΔW = (P diag(λ) Q - P0 diag(λ0) Q0) x
alpha / r (alpha 0: r). On kohya's fused Linears (Flux's img_attn.qkv / txt_attn.qkv and the single blocks'
linear1, SD3's attn.qkv) one module spans the stacked rows: ONE SVD of the stacked weight, so diffusers'
parts share Q and λ (and Q0, λ0) and each keeps its rows of P and P0 (runtime/lycoris_tlora.py
fit_fused_tlora). The kohya_lora export writes Q and λ once and P stacked under kohya's name, the file
lycoris-lora loads back. `module_dropout`: one draw per fused module its parts share (runtime/mixed_kinds.py
add_own_module_dropout); `bypass_mode`: adapter.bypass (each part its rows of the bypass update); its
`dropout` (bypass only, --network_dropout too): one torch dropout over the fused module's stacked output,
each part its rows of the mask (runtime/lycoris_tlora.py). --scale_weight_norms (model.py): one norm of the
stacked update, the shared λ scaled once (runtime/max_norm.py). SD3's 2x2 stride-2 patch convolution
(presets full / unet-only) kohya trains, unlike SD's 3x3 ones: TLoraModule's bypass forward with 1x1
factors at stride 2 gives an output of the layer's size, started from the first in-channel columns of the
flattened weight's SVD (runtime/lycoris_tlora.py's patch layer): a denoiser target at conv_dim /
conv_alpha (_put_patch); a dropout outside bypass_mode that path alone applies (the adapter's `dropout`,
runtime/lycoris_tlora.py: the Linears' default forward never reads it). A preset
file (lycoris_flow_file.py, as for the other algos): its targets, its T-LoRA entries' own dims as blocks
over whole fused Linears, the patch at its entry's conv dim (_file_blocks), its entries of other algorithms
blocks of their kind (lycoris_maps._beside_tlora), the network's constraint its Diag-OFT / BOFT blocks' alpha
(oft_entries.entries_constraint; its rescaled their `rescaled`, lycoris_flux._file_rescaled)."""

from __future__ import annotations

from typing import Any

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.kohya.lycoris_flow_args import (
    ignore_args,
    popped,
    put_blocks,
    put_kind,
    put_rest,
    put_targets,
    refuse_rest,
    take_blocks_dora,
)
from dbspec.convert.kohya.entry_args import entries_block_size, entries_lokr_args, entries_scalar_rs_lora
from dbspec.convert.kohya.network import _TLORA_UNREAD, _str_bool, tlora_unread_dropout
from dbspec.convert.kohya.oft_entries import entries_constraint

_UNREAD = ("use_tucker", "use_cp", "use_conv_cp", "disable_conv_cp", "rank_dropout_scale", "full_matrix")
_UNREAD += ("unbalanced_factorization", "block_size", "constraint", "constrain", "verbose")


def map_flow_tlora(
    kwargs: dict[str, str], a: dict[str, Legacy], conv: Conversion, layout, preset: str, text_blocks=()
) -> bool:
    """[adapter] for algo=tlora on kohya's Flux / SD3 / Chroma (`layout`: lycoris_flux.py's LycorisLayout; a
    preset file's map entries' own dims and alphas and its entries of other algorithms: its [[adapter.blocks]]
    over whole fused layers and `text_blocks`); False when refused or invalid (reported)."""
    module, args, dim, alpha = a["network_module"], a["network_args"], a["network_dim"], a["network_alpha"]
    layers, text = layout.presets[preset]
    rank = int(dim.value) if dim.value is not None else 4  # LyCORIS's create_network: None is 4
    scale_alpha = float(alpha.value)
    convs = list(layout.convs.get(layers, ()))
    # conv_dim / conv_alpha (network_dim / network_alpha by default, 0 too): a TLoraModule on SD3's 2x2
    # stride-2 patch convolution (runtime/lycoris_tlora.py: its bypass path, 1x1 factors at the stride)
    patch = None
    if convs:
        conv_alpha = float(kwargs.pop("conv_alpha", "") or scale_alpha)
        patch = (int(float(kwargs.pop("conv_dim", "") or rank)), conv_alpha)
    ignore_args(
        kwargs, args, conv, lambda k: k in ("conv_dim", "conv_alpha"), "the preset reaches no convolution"
    )
    file_blocks = layout.targets(layers, True)[1] if layers != "none" else []
    entries = [*file_blocks, *text_blocks]
    entries_lokr_args(kwargs, entries, args, conv)  # its LoKr blocks' split and switches
    entries_scalar_rs_lora(kwargs, entries, args, conv)  # its LoCon / LoHa / LoKr blocks' scalar
    entries_block_size(kwargs, entries, args, conv)  # its DyLoRA blocks' unit
    take_blocks_dora(kwargs, file_blocks, text_blocks)  # its LoCon / LoHa / LoKr blocks' own dora (read)
    for key, why in _TLORA_UNREAD.items():
        if key in kwargs:
            conv.ignored(popped(args, kwargs, key), why)
    entries_constraint(kwargs, entries, args, conv)  # its Diag-OFT / BOFT blocks' alpha
    ignore_args(kwargs, args, conv, lambda k: k in _UNREAD, "TLoraModule takes it and never reads it")
    why = "LyCORIS's LoRA+ raises the `lora_up` parameters, which T-LoRA has not"
    ignore_args(kwargs, args, conv, lambda k: k.startswith("loraplus_"), why)
    put: dict[str, Any] = {}
    bypass = _str_bool(kwargs.pop("bypass_mode", "false"))  # LyCORIS's str_bool
    if "module_dropout" in kwargs:  # one draw per fused Linear its parts share
        given = popped(args, kwargs, "module_dropout")
        if float(given.value or 0):
            put["module_dropout"] = float(given.value)
        else:
            conv.inert(given, "0 is off")
    given = popped(args, kwargs, "dropout") if "dropout" in kwargs else None
    if given is None and a["network_dropout"].value:  # train_network.py hands it on as `dropout`
        given = a["network_dropout"]
    unsupported: dict[str, str] = {}
    # a T-LoRA entry's own bypass_mode: its fused TLoraModules drop in their bypass forward (the block's
    # `bypass`; one mask per fused Linear, tests/runtime/test_lycoris_flow_tlora_mixed_opts.py)
    own_bypass = layers != "none" and any(
        "kind" not in b and b.get("bypass") == "on" for b in layout.targets(layers, True)[1]
    )
    if given is not None and not float(given.value or 0):
        conv.inert(given, "0 is off")
    elif given is not None and not (bypass or own_bypass) and patch and not 0 <= float(given.value) <= 1:
        conv.invalid(given.key, given.value, given.source, f"torch's Dropout raises for p = {given.value}")
        return False
    elif (
        given is not None and not (bypass or own_bypass) and patch
    ):  # the patch's bypass path drops, the Linears' not
        why = "TLoraModule drops SD3's patch convolution's update alone outside bypass_mode (its bypass path)"
        conv.mapped(given, ("adapter", "dropout"), float(given.value), note=why)
    elif given is not None and not (bypass or own_bypass):
        conv.ignored(given, tlora_unread_dropout(entries))
    elif given is not None and not 0 <= float(given.value) <= 1:  # nn.Dropout raises
        conv.invalid(given.key, given.value, given.source, f"torch's Dropout raises for p = {given.value}")
        return False
    elif given is not None:  # one torch dropout over the fused module's stacked output
        conv.mapped(given, ("adapter", "dropout"), float(given.value))
    unsupported.update(kwargs)
    if refuse_rest(unsupported, args, conv, "tlora", layout.title):
        return False
    put_kind(conv, module, "tlora", preset, "TLoraModule", layout.title)
    conv.mapped(dim, ("adapter", "rank"), rank)
    # TLoraModule: alpha 0 is the rank; a negative one keeps its sign (its update trains flipped: spec alpha)
    conv.mapped(alpha, ("adapter", "alpha"), scale_alpha or float(rank))
    why = "one TLoraModule per fused Linear: one SVD of the stacked weight, Q and λ shared, P the parts' rows"
    put_targets(conv, module, layout, layers, why)
    blocks = _file_blocks(layout, layers, convs, (rank, scale_alpha or float(rank)))
    put_blocks(conv, module, layout, layers, text_blocks, blocks)  # a preset file's entries' own blocks
    if patch:
        _put_patch(
            conv, module, layout, layers, convs, patch, (rank, scale_alpha or float(rank)), len(blocks)
        )
    if bypass:
        put["bypass"] = True
    put_rest(conv, module, args, preset, text, put)
    return True


def _file_blocks(layout, layers: str, convs, network) -> list[dict[str, Any]]:
    """A preset file's [[adapter.blocks]] for a T-LoRA adapter, whose blocks have no conv_rank: an entry's
    block reaching SD3's patch convolution at another dim / alpha there than on its Linears (the walk's
    conv_dim / conv_alpha) is preceded by a block of the patch alone at those (the first match decides); the
    entry's block itself stays where it gives its Linears more than the network's rank and alpha
    (`network`; each layer is one entry's, so a block at those changes nothing)."""
    if layers == "none":
        return []
    out = []
    for block in layout.targets(layers, True)[1]:
        block = dict(block)
        conv_rank, conv_alpha = block.pop("conv_rank", None), block.pop("conv_alpha", None)
        if conv_rank is not None and (conv_rank, conv_alpha) != (block["rank"], block["alpha"]):
            pattern = "|".join("^" + c.replace(".", "\\.") + "$" for c in convs)
            out.append({**block, "pattern": pattern, "rank": conv_rank, "alpha": conv_alpha})
            if (
                set(block) <= {"pattern", "rank", "alpha", "_why"}
                and (block["rank"], block["alpha"]) == network
            ):
                continue
        out.append(block)
    return out


def _put_patch(
    conv: Conversion, module: Legacy, layout, layers: str, convs, patch, network, index: int = 0
) -> None:
    """SD3's patch convolution among the denoiser targets, its TLoraModule at conv_dim / conv_alpha
    (create_network: `conv_alpha or network_alpha`, then TLoraModule's alpha 0 the rank): a block of its own
    (at `index`, after a preset file's blocks, whose first match decides) where they differ from the
    network's rank and alpha (`network`: both, alpha 0 already the rank)."""
    targets = [*layout.targets(layers, True)[0], *convs]
    why = conv.comment(module, "TLoraModule on the 2x2 stride-2 patch convolution: 1x1 factors at its stride")
    conv.put(("adapter", "denoiser_targets"), targets, why)
    rank, alpha = patch
    alpha = alpha or float(rank)
    if (rank, alpha) != network:
        pattern = "|".join("^" + c.replace(".", "\\.") + "$" for c in convs)
        for key, value in (("pattern", pattern), ("rank", rank), ("alpha", alpha)):
            conv.put(("adapter", "blocks", index, key), value, why)

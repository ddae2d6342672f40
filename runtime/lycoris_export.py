"""LoCon, DoRA, LoHa and LoKr adapters in the kohya / LyCORIS key layout A1111, ComfyUI and LyCORIS load.

Module names are kohya's (`lora_unet_*`, `lora_te*_*`, from `exports.kohya_parts`); the weights per module are
LyCORIS's (lycoris/modules/locon.py, loha.py, lokr.py):

- LoRA and LoCon: `lora_down.weight` (rank, in[, k, k]), `lora_up.weight` (out, rank[, 1, 1]), `alpha`; with
  DoRA also `dora_scale`, the magnitude of each output row, shaped (out, 1[, 1, 1]) (LyCORIS's `wd_on_out`).
  LoCon's Tucker form (`use_tucker`, locon_tucker.py) on a k x k convolution: `lora_down.weight` (rank, in, 1,
  1), `lora_mid.weight` (rank, rank, k, k), `lora_up.weight` (out, rank, 1, 1), `alpha`.
- LoHa: `hada_w1_a` (out, rank), `hada_w1_b` (rank, in x k x k), the same for `hada_w2_*`, `alpha`; the update
  is (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank, reshaped to the layer's weight.
- DoRA on LoHa and LoKr, on LoRA per input column or with LoCon's Tucker form (LyCORIS's weight
  decomposition, lycoris_dora.py): `dora_scale` beside the factors, shaped (out, 1[, 1, 1]) for one magnitude
  per output row or (1, in[, 1, 1]) per input column (`wd_on_output = False`), as LyCORIS stores it.
- LoKr: `lokr_w1` (or `lokr_w1_a` @ `lokr_w1_b`) and `lokr_w2` (or `lokr_w2_a` @ `lokr_w2_b`), `alpha`; the
  update is kron(w1, w2) * alpha / rank, where the loaders read the rank off `lokr_w1_a` / `lokr_w2_a`. With
  both factors full there is no rank and the loaders apply scale 1, so peft's alpha / rank goes into
  `lokr_w1` (with rs_lora sqrt(rank), which kohya's `--network_weights` into an rs_lora network, keeping its
  modules' own scale, applies again: docs/converting.md says to divide it out first).

peft keeps its weights in these very shapes (its LoHa and LoKr follow LyCORIS; non-effective convolutions are
flattened the same way), so the export is a renaming plus DoRA's reshape and LoKr's full-factor scale.
LyCORIS's use_scalar (lycoris_switches.py) is folded into `lora_up`, `hada_w1_a` or `lokr_w1` /
`lokr_w1_a`, as LyCORIS saves it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn

from dbspec.plan.model import AdapterPlan, Plan
from dbspec.runtime.adapters import any_scalar, any_tucker, lora_adapter, lycoris_dora, norm_scalars
from dbspec.families import Family, family_spec
from dbspec.runtime.dtypes import to_dtype
from dbspec.runtime.exports import _write, adapted_text, kohya_family_metadata, kohya_parts
from dbspec.runtime.mixed_kinds import mixed

_LOKR = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")
_LOHA = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
_LOHA_TUCKER = ("hada_t1", "hada_t2")  # LyCORIS's names and shapes: peft's effective-conv form is its Tucker


def needs_lycoris_layout(adapter: AdapterPlan, family: Family | None = None) -> bool:
    """Plain LoRA keeps kohya's networks.lora writer (the family's: LoCon on the convolutions its kohya layout
    names too, SD3's patch convolution); everything else is written here."""
    named = family_spec(family).kohya_conv_targets if family else ()
    return (
        adapter.kind in ("loha", "lokr", "full", "ia3", "diag-oft", "boft", "glora", "dylora", "tlora")
        or (
            (adapter.dora or lycoris_dora(adapter)) and not adapter.fused
        )  # a fused LoCon's: the family's kohya writer adds dora_scale
        or (adapter.conv_rank > 0 and not (named and set(adapter.conv_targets) <= set(named)))
        # a fused LoCon's Tucker form on the family's named convolutions (SD3's patch convolution): the
        # family's kohya writer adds its `lora_mid`
        or (any_tucker(adapter) and not (adapter.fused and named and set(adapter.conv_targets) <= set(named)))
        # the scalar (use_scalar's, LyCORIS max norm's fixed one) is folded into lora_up here, a fused
        # LoCon's (lycoris.kohya on kohya's Flux) by the family's kohya writer, which folds it too
        or ((any_scalar(adapter) or norm_scalars(adapter)) and not adapter.fused)
        or mixed(adapter)  # several kinds (runtime/mixed_kinds.py)
        or bool(adapter.denoiser_norms)  # LyCORIS train_norm's U-Net NormModules: lycoris.kohya's network
    )


def lycoris_state(
    *,
    unet: nn.Module | None,
    text_encoders: list,
    family: Family,
    dtype: str,
    lycoris: bool = True,
    empty_ok: bool = False,
) -> dict[str, torch.Tensor]:
    """Every adapted layer's tensors under its kohya name (`lycoris`: lycoris.kohya's, else kohya's
    networks.lora's: T5-XXL's prefix on Flux, exports.kohya_parts), cast to `dtype` (alphas in fp32).
    `empty_ok`: no adapted layer is no error (LyCORIS train_norm's NormModules alone)."""
    cast = to_dtype(dtype)
    tensors: dict[str, torch.Tensor] = {}
    parts = kohya_parts(unet=unet, text_encoders=text_encoders, family=family, lycoris=lycoris)
    for prefix, module, to_path in parts:
        flow = module is unet and bool(family_spec(family).fused_projections)
        fused = module is unet and _fused_lokr(unet, family)
        full = flow and _has_stacked(unet)
        # LoRA on fused layers beside other kinds (runtime/mixed_kinds.py): LoConModule's on the fused Linear
        shared = flow and _has_shared_down(unet)
        ia3 = flow and _has_ia3(unet)
        fused = fused or shared or full or ia3
        if fused:  # LoKr, LoHa, full, IA^3, Diag-OFT on kohya's fused Flux / SD3 Linears: kohya's names
            to_path = _original_name(family)
        layers = _layers(module)
        if ia3:  # IA^3's rows under kohya's fused names; the other kinds' layers (a run of several) below
            tensors.update(_flow_ia3(unet, family, cast))
            layers = [layer for layer in layers if "on_input" not in layer[1]]
        if full or shared:
            # LyCORIS's full / Diag-OFT / GLoRA / DyLoRA and the fused LoRAs: one module per fused Linear, the
            # parts' rows (blocks) stacked, what they share written once; each kind's parts on their own (a
            # run of several kinds, runtime/mixed_kinds.py)
            layers = _stacked_parts(module, family, list(layers))
        for name, weights, alpha in layers:
            if fused and _later_part(module, name):
                continue  # a fused layer's factors, written once under its first part's (the fused) name
            if fused and _swapped(module, name):
                weights = _rows_swapped(name, weights)
            key = f"{prefix}_{to_path(name).replace('.', '_')}"
            for suffix, value in weights.items():
                tensors[f"{key}.{suffix}"] = value.detach().to("cpu", cast, copy=True).contiguous()
            if alpha is not None:  # LyCORIS's full algo has none
                tensors[f"{key}.alpha"] = torch.tensor(alpha, dtype=torch.float32)
    if not tensors and not empty_ok:
        raise ValueError("no adapter layers to export: the modules carry no peft adapter")
    return tensors


def _has_ia3(unet: nn.Module) -> bool:
    from dbspec.runtime.lycoris_ia3 import Ia3Layer

    return any(isinstance(m, Ia3Layer) for m in unet.modules())


def _flow_ia3(unet: nn.Module, family: Family, cast) -> dict[str, torch.Tensor]:
    """IA3Module's tensors on kohya's Flux / SD3 (lycoris.kohya algo=ia3): a fused Linear's (qkv, linear1)
    output-row scales are its parts' concatenated in the original row order, a part left unadapted all 0
    (IA^3's identity); SD3's last context modulation with its (scale, shift) halves swapped to kohya's
    (shift, scale). Input-side scales (a block's `on_input`, LyCORIS's train_on_input): a fused Linear's
    parts share one (runtime/lycoris_ia3.py tie_fused_ia3_inputs), written once, `on_input` 1."""
    found = lora_adapter(unet)
    model = found[0] if found else unet
    table = _table(family)
    fused: dict[str, dict[int, torch.Tensor]] = {}  # kohya name -> part index -> scales
    blocks: dict[str, str] = {}  # kohya name -> its block's module path
    tensors: dict[str, torch.Tensor] = {}
    inputs: dict[str, list[torch.Tensor]] = {}  # kohya name -> its parts' input-side scales (one shared)
    for name, weights, _alpha in _layers(unet):
        if "on_input" not in weights:  # another kind's layer (a run of several kinds)
            continue
        scale = weights["weight"].detach()
        original, part = table.original_name(name)
        if int(weights["on_input"]):  # one scale per input column: no rows to stack or swap
            inputs.setdefault(original, []).append(scale)
            continue
        if part is not None:
            fused.setdefault(original, {})[part] = scale
            blocks[original] = ".".join(name.split(".")[:2])
            continue
        if _swapped(unet, name):
            first, second = scale.chunk(2)
            scale = torch.cat([second, first])
        tensors[original] = scale
    projections = family_spec(family).fused_projections
    for original, rows in fused.items():
        block = blocks[original]
        (children,) = [
            p.parts
            for p in projections
            if original.endswith(f"_{p.kohya_name}") and block.startswith(p.blocks)
        ]
        scales = []
        for index, child in enumerate(children):
            if index in rows:
                scales.append(rows[index])
            else:  # a part left unadapted keeps its rows: IA^3's identity, scale 0
                layer = model.get_submodule(f"{block}.{child}")
                width = getattr(layer, "base_layer", layer).out_features
                scales.append(torch.zeros(width, dtype=next(iter(rows.values())).dtype))
        tensors[original] = torch.cat(scales)
    out: dict[str, torch.Tensor] = {}
    for original, scale in tensors.items():
        out[f"lora_unet_{original}.weight"] = scale.to("cpu", cast, copy=True).contiguous()
        out[f"lora_unet_{original}.on_input"] = torch.tensor(0).to(cast)  # cast as the other writers'
    for original, scales in inputs.items():
        if original in tensors or any(not torch.equal(s, scales[0]) for s in scales[1:]):
            raise ValueError(f"`{original}`: its parts' IA^3 input-side scales differ (one IA3Module's)")
        out[f"lora_unet_{original}.weight"] = scales[0].to("cpu", cast, copy=True).contiguous()
        out[f"lora_unet_{original}.on_input"] = torch.tensor(1).to(cast)
    return out


def _fused_lokr(unet: nn.Module, family: Family) -> bool:
    """Whether the denoiser's LoKr / LoHa layers are LyCORIS's on kohya's Flux / SD3 / Chroma, written under
    kohya's names: some on fused layers (runtime/fused_lokr.py, fused_loha.py), or all on Linears that are no
    part of a fused layer (the embedders, the final layer, the modulations: a preset file's, which
    fused_projections builds alike either way); LoKr / LoHa on separate parts of a fused layer keep
    diffusers' names (kohya's have no place for them)."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer

    if any(hasattr(m, "fused_lokr_rows") or hasattr(m, "fused_loha_parts") for m in unet.modules()):
        return True
    if not family_spec(family).fused_projections:
        return False
    found = lora_adapter(unet)
    model = found[0] if found else unet
    names = [n for n, m in model.named_modules() if isinstance(m, LoKrLayer | LoHaLayer)]
    table = _table(family)
    try:
        return bool(names) and all(table.original_name(n)[1] is None for n in names)
    except ValueError:  # a layer kohya's model has no place for
        return False


def _has_stacked(unet: nn.Module) -> bool:
    """Whether the denoiser carries the full algo, Diag-OFT (LyCORIS's own form), a fused BOFT, GLoRA or
    DyLoRA: their fused Linears' tensors are the parts' stacked by rows (or blocks of rows), what the parts
    share written once (BOFT's blocks)."""
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    stacked = (FullLayer, GloraLayer, DyloraLayer, TloraLayer)
    return any(
        isinstance(m, stacked) or type(m) is DiagOftLayer or getattr(m, "boft_parts", ())  # a fused BOFT's
        for m in unet.modules()
    )


def _has_shared_down(unet: nn.Module) -> bool:
    """Whether LoRA layers of the denoiser share one down-projection (runtime/fused.py
    tie_fused_projections: the parts of a fused Linear)."""
    from peft.tuners.lora import LoraLayer

    found = lora_adapter(unet)
    if found is None:
        return False
    model, adapter = found
    downs = [
        id(m.lora_A[adapter].weight)
        for m in model.modules()
        if isinstance(m, LoraLayer) and adapter in m.lora_A
    ]
    return len(set(downs)) < len(downs)


# the tensor that tells a stacked kind's layer (_stacked_parts): FullModule's, DiagOFTModule's, GLoRAModule's,
# LoConModule's (DyLoRA's alike)
_STACKED_BY = ("diff", "oft_blocks", "a1.weight", "lora_down.weight", "q_layer.weight")


def _stacked_parts(
    module: nn.Module, family: Family, layers: list[tuple[str, dict[str, torch.Tensor], float | None]]
) -> Iterator[tuple[str, dict[str, torch.Tensor], float | None]]:
    """The layers on fused Linears' parts whose kind stacks them (_STACKED_BY: LyCORIS's full, Diag-OFT,
    GLoRA, DyLoRA, and LoRA's shared down) as that kind's one module on the fused Linear (_stacked_full), each
    kind's parts on their own (a run of several kinds: every part of a fused layer is one block's, one kind,
    DBS507 / DBS575); the other layers (LoKr's, LoHa's, tied by their own writers; plain Linears') as they
    are."""
    table = _table(family)
    kinds: dict[str, list[tuple[str, dict[str, torch.Tensor], float | None]]] = {}
    for name, weights, alpha in layers:
        key = next((k for k in _STACKED_BY if k in weights), None)
        if key is not None and table.original_name(name)[1] is not None:
            kinds.setdefault(key, []).append((name, weights, alpha))
        else:
            yield name, weights, alpha
    for parts in kinds.values():
        yield from _stacked_full(module, family, parts)


# the tensors a fused Linear's parts share, written once: GLoRA's (runtime/lycoris_glora.py
# tie_fused_glora), DyLoRA's down (runtime/dylora.py tie_fused_dylora), T-LoRA's Q and singular values
# (runtime/lycoris_tlora.py fit_fused_tlora)
_SHARED_BY_PARTS = (
    "a1.weight",
    "a2.weight",
    "b2.weight",
    "lora_down.weight",
    "q_layer.weight",
    "lambda_layer",
)


def _unadapted(weights: dict[str, torch.Tensor], base: nn.Module) -> dict[str, torch.Tensor]:
    """A fused layer's part the run did not adapt, as the fused module holds its rows: the full algo's zero
    diff, Diag-OFT's zero blocks (R = I, in the adapted parts' block size) and unit rescale."""
    rows = base.weight.shape[0]
    own: dict[str, torch.Tensor] = {}
    for key, like in weights.items():
        if key == "oft_blocks":
            size = like.shape[-1]
            own[key] = torch.zeros(rows // size, size, size)
        elif key == "rescale":
            own[key] = torch.ones(rows, *like.shape[1:])
        else:
            own[key] = torch.zeros_like(base.weight if key == "diff" else base.bias)
    return own


def _stacked_full(
    module: nn.Module, family: Family, layers: list[tuple[str, dict[str, torch.Tensor], float | None]]
) -> Iterator[tuple[str, dict[str, torch.Tensor], float | None]]:
    """The full algo's (Diag-OFT's) layers with each fused Linear's parts as one: its `diff` / `diff_b`
    (`oft_blocks`, `rescale`) the parts' stacked in the original layer's row order, under its first part's
    name (each part's trained copy is exactly its rows of FullModule's copy of the fused weight; each part's
    blocks are DiagOFTModule's over its rows, runtime/lycoris_oft.py fit_fused_oft, or the parts' one
    Parameter of them where they span parts, runtime/fused_oft.py); a part the run did not
    adapt is its rows unchanged. Diag-OFT's alpha (its constraint) is the parts' (one, DBS577)."""
    from dbspec.runtime import flux_kohya, sd3_kohya

    spec = family_spec(family)
    table = sd3_kohya if spec.kohya.network == "networks.lora_sd3" else flux_kohya
    found = lora_adapter(module)
    root = found[0] if found else module
    groups: dict[str, dict[int, tuple[str, dict[str, torch.Tensor]]]] = {}
    for name, weights, alpha in layers:
        original, part = table.original_name(name)
        if part is None:
            yield name, weights, alpha
        else:
            groups.setdefault(original, {})[part] = (name, weights, alpha)
    for original, present in groups.items():
        index, (name, weights, alpha) = min(present.items())
        group = next(
            g
            for g in spec.fused_projections
            if original.endswith(g.kohya_name)
            and name.startswith(g.blocks + ".")
            and name.endswith(g.parts[index])
        )
        prefix = name.removesuffix(group.parts[index])
        stacked: dict[str, list[torch.Tensor]] = {key: [] for key in weights}
        for i, child in enumerate(group.parts):
            if i in present:
                own = present[i][1]
            else:  # not adapted: its rows of the fused copy stay the base's
                layer = root.get_submodule(prefix + child)
                own = _unadapted(weights, getattr(layer, "base_layer", layer))
            for key in stacked:
                stacked[key].append(own[key].to(weights[key].dtype))
        for key in [k for k in _SHARED_BY_PARTS if k in stacked]:  # GLoRA's: one tensor, the first part's
            stacked[key] = stacked[key][:1]
        scales = [w.get("dora_scale") for _, w, _ in present.values()]
        if scales[0] is not None and len(present) > 1 and all(s is scales[0] for s in scales):
            # a LoCon's per input column: the one (1, in) magnitude its parts share (lycoris_dora.py
            # tie_fused_doras), written once as LoConModule holds it
            stacked["dora_scale"] = stacked["dora_scale"][:1]
        blocks = weights.get("oft_blocks")
        shared = blocks is not None and all(w["oft_blocks"] is blocks for _, w, _ in present.values())
        if blocks is not None and (blocks.dim() == 4 or (shared and len(present) > 1)):
            # BOFT's, and Diag-OFT's whose blocks span the parts (runtime/fused_oft.py): the fused
            # module's, one Parameter
            stacked["oft_blocks"] = stacked["oft_blocks"][:1]
        yield (
            prefix + group.parts[0],
            {key: torch.cat(values, dim=0) for key, values in stacked.items()},
            alpha,
        )


def _later_part(module: nn.Module, name: str) -> bool:
    """A fused LoKr / LoHa part after the first: the fused layer is written under the first part's name."""
    found = lora_adapter(module)
    layer = (found[0] if found else module).get_submodule(name)
    rows = getattr(layer, "fused_lokr_rows", None)
    return (rows is not None and rows[0] != 0) or getattr(layer, "fused_loha_later", False)


def _original_name(family: Family):
    """module path -> kohya's module name (library/flux_models.py or sd3_models.py, `.` for `_`) of the
    family's diffusers transformer."""
    table = _table(family)
    return lambda name: table.original_name(name)[0]


def _table(family: Family):
    """The family's diffusers-to-kohya name table (runtime/flux_kohya.py or sd3_kohya.py)."""
    from dbspec.runtime import flux_kohya, sd3_kohya

    return sd3_kohya if family_spec(family).kohya.network == "networks.lora_sd3" else flux_kohya


def _swapped(module: nn.Module, name: str) -> bool:
    """The Linear's rows hold (scale, shift) where kohya's hold (shift, scale) (SD3's last block's context
    modulation: runtime/sd3_kohya.py)."""
    from dbspec.runtime.sd3_kohya import swapped

    found = lora_adapter(module)
    return swapped(name, found[0] if found else module)


def _rows_swapped(name: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """LoHa / LoKr factors of a Linear whose two halves of rows kohya holds the other way round: LoHa's row
    factors (hada_w1_a, hada_w2_a) swap their halves; LoKr's kron(w1, w2) rows follow w1's rows in blocks of
    w2's, so an even number of w1 rows swaps its halves (an odd one has no Kronecker form: refused)."""
    names = ("hada_w1_a", "hada_w2_a", "lokr_w1", "lokr_w1_a", "diff", "diff_b", "oft_blocks", "rescale")
    names += ("b1.weight", "lora_up.weight")  # GLoRA's rows (W a1 a2 follows W's own), DyLoRA's up
    names += ("dora_scale", "p_layer.weight")  # T-LoRA's P rows (Q and λ hold none)
    # BOFT's 4-D blocks rotate kohya's row order already (runtime/lycoris_boft.py boft_swapped), Diag-OFT's
    # odd count of blocks too (one spans the halves: lycoris_oft.py _kohya_order); a magnitude per input
    # column (1, in, ...) holds no rows: the columns keep their order
    keys = [
        k
        for k in names
        if k in weights
        and not (k == "oft_blocks" and (weights[k].dim() == 4 or weights[k].shape[0] % 2))
        and not (k == "dora_scale" and weights[k].shape[0] == 1)
    ]
    if not keys and "oft_blocks" in weights:  # BOFT's without a rescale
        return dict(weights)
    if not keys:
        raise ValueError(f"`{name}`: dbspec writes no kohya form of its adapter with the rows swapped")
    out = dict(weights)
    for key in keys:
        rows = weights[key]
        if rows.shape[0] % 2:
            raise ValueError(
                f"`{name}`: its LoKr factor has {rows.shape[0]} rows (odd), so the update with kohya's "
                "(shift, scale) rows has no Kronecker form; choose adapter.factor so the first factor's rows "
                "are even"
            )
        first, second = rows.chunk(2, dim=0)
        out[key] = torch.cat([second, first], dim=0)
    return out


def _layers(module: nn.Module | None) -> Iterator[tuple[str, dict[str, torch.Tensor], float | None]]:
    """(module path, {kohya weight name: tensor}, kohya alpha or None) for each adapted layer."""
    from peft.tuners.loha import LoHaLayer
    from peft.tuners.lokr import LoKrLayer
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_dora import axis_of, dora_scale_of
    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    found = lora_adapter(module)
    if found is None:
        return
    module, adapter = found
    for name, layer in module.named_modules():
        if isinstance(layer, FullLayer) and adapter in layer.lora_full:
            yield name, _full(layer, adapter), None
            continue
        if isinstance(layer, DyloraLayer) and adapter in layer.lora_dylora_down:  # kohya's networks.dylora
            down, up = layer.full(adapter)
            yield name, {"lora_down.weight": down, "lora_up.weight": up}, float(layer.lora_alpha[adapter])
            continue
        if isinstance(layer, TloraLayer) and adapter in layer.lora_tlora_q:  # TLoraModule's state
            yield name, layer.lycoris_weights(adapter), float(layer.lora_alpha[adapter])
            continue
        if isinstance(layer, GloraLayer) and adapter in layer.lora_glora_a1:  # GLoRAModule's state
            yield name, layer.lycoris_weights(adapter), float(layer.lora_alpha[adapter])
            continue
        if isinstance(layer, DiagOftLayer) and adapter in layer.lora_oft_blocks:
            # DiagOFTModule's state (ButterflyOFTModule's: BoftLayer is one): the blocks, the row rescale
            # when trained; its alpha is the constraint
            weights = {"oft_blocks": layer.lora_oft_blocks[adapter]}
            if adapter in layer.lora_oft_rescale:
                weights["rescale"] = layer.lora_oft_rescale[adapter]
            yield name, weights, float(layer.lora_alpha[adapter])
            continue
        if isinstance(layer, Ia3Layer) and adapter in layer.lora_ia3:
            # IA3Module's state: its scales and the side they act on
            on_input = torch.tensor(int(layer.on_input[adapter]))
            yield name, {"weight": layer.lora_ia3[adapter], "on_input": on_input}, None
            continue
        if isinstance(layer, LoraLayer) and adapter in layer.lora_A:
            found = _lora(name, layer, adapter)
        elif isinstance(layer, LoHaLayer) and adapter in layer.hada_w1_a:
            keys = _LOHA + (_LOHA_TUCKER if adapter in layer.hada_t1 else ())
            weights = {key: getattr(layer, key)[adapter] for key in keys}
            if hasattr(layer, "fused_loha_parts"):  # the fused layer's rows (runtime/fused_loha.py)
                from dbspec.runtime.fused_loha import fused_loha_weights

                weights = fused_loha_weights(layer)
            found = weights, float(layer.scaling[adapter]) * layer.r[adapter]
        elif isinstance(layer, LoKrLayer) and adapter in layer.r:
            found = _lokr(name, layer, adapter)
        else:
            continue
        weights = _fold_scalar(layer, adapter, found[0])
        scale = dora_scale_of(layer, adapter)  # LyCORIS's weight decomposition (lycoris_dora.py)
        parts = getattr(layer, "fused_lokr_parts", None) or getattr(layer, "fused_loha_parts", None)
        # a fused LoKr / LoHa's, per output row: its parts' rows stacked; per input column the parts share
        # one (1, in) magnitude of the stacked weight (lycoris_dora.tie_fused_doras): written as it is
        if scale is not None and parts and axis_of(scale.shape) == "output":
            scale = torch.cat([dora_scale_of(part, adapter) for part in parts])
        if scale is not None:
            weights = {**weights, "dora_scale": scale}  # already in LyCORIS's shape for its axis
        yield name, weights, found[1]


# LyCORIS's use_scalar: the factor each module's custom_state_dict multiplies by its scalar (the update is
# linear in it); LyCORIS loads such a file with scalar 1.
_SCALAR_FACTORS = ("lora_up.weight", "hada_w1_a", "lokr_w1", "lokr_w1_a")


def _fold_scalar(layer, adapter: str, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    from dbspec.runtime.lycoris_switches import layer_scalar

    scalar = layer_scalar(layer, adapter)
    if scalar is None:
        return weights
    key = next(k for k in _SCALAR_FACTORS if k in weights)
    return {**weights, key: weights[key] * scalar}


def _full(layer, adapter: str) -> dict[str, torch.Tensor]:
    """LyCORIS's full algo (FullModule.custom_state_dict): the trained weight minus the base, `diff`, and the
    bias's, `diff_b`, where the layer has a bias."""
    with torch.no_grad():
        weights = {"diff": layer.get_delta_weight(adapter)}
        bias = layer.get_delta_bias(adapter)
        if bias is not None:
            weights["diff_b"] = bias
    return weights


def _lora(name: str, layer, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
    if layer.lora_bias.get(adapter):
        raise ValueError(f"`{name}`: a LoRA bias has no kohya form")
    rank = layer.r[adapter]
    # kohya scales by alpha / rank; peft by `scaling` (alpha / rank, or / sqrt(rank) with rsLoRA).
    weights = {
        "lora_down.weight": layer.lora_A[adapter].weight,
        "lora_up.weight": layer.lora_B[adapter].weight,
    }
    mid = getattr(layer, "lora_mid", {})
    if adapter in mid:  # LoCon's Tucker form
        weights["lora_mid.weight"] = mid[adapter].weight
    if layer.use_dora.get(adapter):
        magnitude = layer.lora_magnitude_vector[adapter].weight  # (out,), or (1, out, 1, 1) for a conv
        base = layer.get_base_layer().weight
        weights["dora_scale"] = magnitude.reshape(base.shape[0], *[1] * (base.dim() - 1))
    return weights, float(layer.scaling[adapter]) * rank


def _lokr(name: str, layer, adapter: str) -> tuple[dict[str, torch.Tensor], float]:
    weights = {key: getattr(layer, key)[adapter] for key in _LOKR if adapter in getattr(layer, key)}
    scaling = float(layer.scaling[adapter])
    if "lokr_w1" in weights and "lokr_w2" in weights:  # no rank to divide by: loaders use scale 1
        weights["lokr_w1"] = weights["lokr_w1"] * scaling
        return weights, 1.0
    return weights, scaling * layer.r[adapter]


def network_args(adapter: AdapterPlan) -> dict[str, str]:
    """kohya's ss_network_args for this adapter (what its training command line would have said)."""
    args: dict[str, str] = {}
    if adapter.kind in (
        "full",
        "ia3",
        "diag-oft",
        "boft",
    ):  # LyCORIS's conv_dim only switches its convolutions on
        args = {"algo": adapter.kind, **({"conv_dim": "1"} if adapter.conv_targets else {})}
        if adapter.kind in ("diag-oft", "boft"):
            args.update(constraint=f"{adapter.oft_constraint:g}", rescaled=str(adapter.oft_rescaled))
        if adapter.bypass:
            args["bypass_mode"] = "True"
        return args
    if adapter.kind == "dylora":  # kohya's networks.dylora (unit; conv_dim = network_dim) or LyCORIS's algo
        if adapter.dylora_form == "kohya":
            args = {"unit": str(adapter.dylora_unit)}
            return {**args, "conv_dim": str(adapter.conv_rank)} if adapter.conv_rank else args
        args.update(algo="dylora", block_size=str(adapter.dylora_unit))
    elif adapter.kind != "lora":
        args["algo"] = adapter.kind
    elif (
        adapter.dora
        or lycoris_dora(adapter)  # a block's own weight decomposition (LyCORIS map entries)
        or any_tucker(adapter)
        or any_scalar(adapter)
        or norm_scalars(adapter)
        or adapter.rank_dropout_form != "kohya"
        or adapter.output_dropout
        or mixed(adapter)
        or adapter.kohya_names == "lycoris"
        or adapter.denoiser_norms  # LyCORIS train_norm on the U-Net
    ):  # LyCORIS's LoRA; kohya's networks.lora has no DoRA, Tucker form, scalar, LoCon's dropouts or other
        # kinds on some layers (a preset file's maps); or named as LyCORIS names it
        args["algo"] = "locon"
    if adapter.conv_rank:
        args.update(conv_dim=str(adapter.conv_rank), conv_alpha=f"{adapter.conv_alpha:g}")
    if adapter.dora:
        args["dora_wd"] = "True"
        if adapter.dora_axis == "input":
            args["wd_on_output"] = "False"
    if adapter.tucker:
        args["use_tucker"] = "True"
    if adapter.kind == "lokr":
        args["factor"] = str(adapter.factor)
        if adapter.decompose_both:
            args["decompose_both"] = "True"
        if adapter.unbalanced_factorization:
            args["unbalanced_factorization"] = "True"
        if adapter.full_matrix:
            args["full_matrix"] = "True"
    if adapter.scalar:
        args["use_scalar"] = "True"
    if adapter.text_encoder_norms or adapter.text_encoder_2_norms or adapter.denoiser_norms:
        args["train_norm"] = "True"
    if adapter.bypass or adapter.rank_dropout_form == "lycoris_bypass" or adapter.output_dropout:
        args["bypass_mode"] = "True"
    return args


def export_lycoris(path: Path, plan: Plan, comps, metadata: dict[str, str]) -> Path:
    """`<name>.kohya.safetensors` for a LoCon, DoRA, LoHa or LoKr run, with the ss_* metadata kohya's
    lycoris.kohya network writes (a `.ckpt` / `.pt` path: the bare state dict, pickled, no metadata)."""
    if plan.adapter.kind == "diag-oft" and plan.adapter.oft_form == "kohya":
        return export_kohya_oft(path, plan, comps, metadata)
    encoders = list(comps.text_encoders) if adapted_text(plan) else []
    a = plan.adapter
    args = network_args(a)
    tensors = lycoris_state(
        unet=comps.unet if plan.train_denoiser else None,
        text_encoders=encoders,
        family=plan.model.family,
        dtype=plan.checkpoints.save_precision,
        lycoris="algo" in args,  # the network ss_network_module names below names the modules
        empty_ok=bool(a.text_encoder_norms or a.text_encoder_2_norms or a.denoiser_norms),  # norms alone
    )
    from dbspec.runtime.exports import kohya_norms

    tensors.update(kohya_norms(plan, comps))  # LyCORIS train_norm's NormModules
    kohya = {
        # A1111 and ComfyUI read the layout from the tensor names; the module says which network wrote it.
        "ss_network_module": "networks.lora" if "algo" not in args else "lycoris.kohya",
        **({"ss_network_module": "networks.dylora"} if "unit" in args else {}),
        "ss_network_dim": str(a.oft_block_size if a.kind in ("diag-oft", "boft") else a.rank),
        "ss_network_alpha": f"{a.alpha:g}",
        "ss_network_args": json.dumps(args, sort_keys=True),
        **kohya_family_metadata(plan.model.family, plan.model.prediction),
    }
    return _write(Path(path), tensors, {**metadata, **kohya})


def kohya_oft_args(adapter: AdapterPlan) -> dict[str, str]:
    """The network_args kohya's networks.oft would have been given for these targets: enable_all_linear
    (Transformer2DModel's every Linear and 1x1 convolution, not CrossAttention's alone) and enable_conv
    (the ResNet, Downsample2D and Upsample2D layers); create_network reads any value as bool(str): True."""
    args = {}
    if "ff.net.2" in adapter.denoiser_targets:
        args["enable_all_linear"] = "True"
    if adapter.conv_targets:
        args["enable_conv"] = "True"
    return args


def export_kohya_oft(path: Path, plan: Plan, comps, metadata: dict[str, str]) -> Path:
    """kohya's networks.oft file (OFTNetwork.save_weights: its state dict): `oft_unet_<kohya module
    name>.oft_blocks` (blocks, size, size) and `.alpha` (kohya's alpha, the constraint per row) for each
    U-Net layer, the names kohya's networks.lora gives the same layers with its `oft_unet` prefix (OFT_PREFIX_
    UNET); the alpha in fp32 as dbspec's other writers keep it (kohya casts it to the save precision too).
    On FLUX.1 and Chroma kohya's networks.oft_flux file: its Flux module names, `oft_blocks.<part>`
    (flux_oft.py)."""
    a, facts = plan.adapter, family_spec(plan.model.family).kohya
    if facts.oft_network == "networks.oft_flux":  # kohya's Flux names, fused layers' parts (flux_oft.py)
        from dbspec.runtime.flux_oft import all_linear, flux_oft_state

        tensors = flux_oft_state(comps.unet, plan.model.family, plan.checkpoints.save_precision)
        args = {"enable_all_linear": "True"} if all_linear(tensors) else {}
    else:
        tensors = lycoris_state(
            unet=comps.unet, text_encoders=[], family=plan.model.family, dtype=plan.checkpoints.save_precision
        )
        tensors = {f"oft_unet_{key.removeprefix('lora_unet_')}": value for key, value in tensors.items()}
        args = kohya_oft_args(a)
    kohya = {
        "ss_network_module": facts.oft_network,
        "ss_network_dim": str(a.oft_blocks),
        "ss_network_alpha": str(float(a.oft_constraint)),
        **({"ss_network_args": json.dumps(args)} if args else {}),
        **kohya_family_metadata(plan.model.family, plan.model.prediction),
    }
    return _write(Path(path), tensors, {**metadata, **kohya})

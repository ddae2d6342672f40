"""Start LyCORIS's full algo / IA^3 / Diag-OFT / BOFT / GLoRA / T-LoRA from its file
(`plan.adapter.init_weights` with kind full / ia3 / diag-oft / boft / glora / tlora: lycoris.kohya
`--network_weights` with flux_train_network.py / sd3_train_network.py (full, IA^3, Diag-OFT, BOFT, GLoRA);
all six also with train_network.py / sdxl_train_network.py, one module per layer under kohya's names: SDXL's
U-Net in the original layout, exports.kohya_parts; T-LoRA on those only). DiagOFTModule /
ButterflyOFTModule take `oft_blocks` and `rescale` as they are (no load hook), GLoRAModule its `a1.weight`,
`a2.weight`, `b1.weight`, `b2.weight` (its load hook sets use_scalar's scalar to 1: runtime/init_weights.py
does after loading), TLoraModule its `q_layer.weight`, `p_layer.weight`, `lambda_layer`. On kohya's Flux /
MMDiT one DiagOFTModule, GLoRAModule or TLoraModule spans a fused Linear's stacked rows (T-LoRA's `q` and
`lambda` into the Parameters its parts share, `p` cut into each part's rows): each part takes its blocks /
rescale rows (the fused block size, runtime/lycoris_oft.py fit_fused_oft), BOFT's blocks into the Parameter
the parts share and its rescale rows to each part (runtime/lycoris_boft.py tie_fused_boft), GLoRA's `a1`,
`a2`, `b2` go into the Parameters the parts share (runtime/lycoris_glora.py tie_fused_glora) and `b1`'s rows
to each part.

train_network.py loads the file after `apply_to` through LyCORIS's `load_weights`, `load_state_dict(strict=
False)`, into one module per Linear of kohya's Flux / MMDiT (a fused q/k/v one module) and of the CLIP
encoders: FullModule's load hook adds the file's `diff` / `diff_b` to the layer's weight and bias (its trained
copy becomes W + diff), IA3Module takes `weight` (the per-row scales) and `on_input` as they are. dbspec's
parts of a fused Linear each train their own copy or scales (runtime/lycoris_full.py, lycoris_ia3.py), so each
takes its rows of the fused tensors; rows of a part the run does not adapt must be 0 (a copy equal to the
base, IA^3's identity), what dbspec's export writes for them. SD3's last context modulation's halves come back
swapped, as the export swapped them (runtime/lycoris_export.py). The slots feed lycoris_init's loader, which
checks names, shapes and `init_partial`."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dbspec.families import family_spec
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.exports import kohya_parts

Slot = tuple[tuple[int, ...], Callable[[torch.Tensor], None]]


def whole_layer_slots(plan, unet: nn.Module, text_encoders: list) -> dict[str, tuple[dict[str, Slot], None]]:
    """kohya module name -> its tensors' slots (no alpha) for every full / IA^3 layer of the run."""
    from dbspec.runtime.lycoris_boft import BoftLayer
    from dbspec.runtime.lycoris_export import _swapped, _table
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    out: dict[str, tuple[dict[str, Slot], None]] = {}
    family, scale = plan.model.family, plan.adapter.init_scale
    fused = bool(family_spec(family).fused_projections)
    # LyCORIS's names: T5-XXL's lora_te2_ on Flux (a full file's T5 modules, train.t5)
    parts = kohya_parts(unet=unet, text_encoders=list(text_encoders), family=family, lycoris=True)
    for prefix, module, to_path in parts:
        found = lora_adapter(module)
        if found is None:
            continue  # a model that does not train: its modules are ignored, as kohya drops its network
        inner, adapter = found
        layers = {name: layer for name, layer in inner.named_modules() if _whole(layer, adapter)}
        for name, layer in layers.items():
            if module is not unet or not fused:  # SD 1.x/2.x, SDXL: one module per layer, kohya's name
                key = f"{prefix}_{to_path(name).replace('.', '_')}"
                if isinstance(layer, DiagOftLayer):  # Diag-OFT, BOFT: one module per layer
                    out[key] = (_oft_slots(layer, adapter, plan.adapter.init_partial), None)
                    continue
                if isinstance(layer, GloraLayer):  # GLoRA: one module per layer
                    out[key] = (_glora_slots(layer, adapter), None)
                    continue
                if isinstance(layer, TloraLayer):  # T-LoRA: SD 1.x/2.x and SDXL (the plan's check)
                    out[key] = (_tlora_slots(layer, adapter), None)
                    continue
                out[key] = (_slots([(layer, layer.get_base_layer())], adapter, False, scale), None)
                continue
            original, part = _table(family).original_name(name)
            rows = (
                [(layer, layer.get_base_layer())]
                if part is None
                else _fused_rows(inner, layers, name, family)
            )
            if rows is None:
                continue  # a later part: the fused layer's slots come with its first adapted part
            key = f"{prefix}_{original.replace('.', '_')}"
            swapped = part is None and _swapped(module, name)
            if isinstance(layer, BoftLayer):  # one ButterflyOFTModule: its blocks the parts' shared ones
                out[key] = (_fused_boft_slots(rows, adapter, plan.adapter.init_partial, swapped), None)
            elif isinstance(layer, DiagOftLayer):  # one DiagOFTModule over the fused layer's rows
                out[key] = (_fused_oft_slots(rows, adapter, plan.adapter.init_partial, swapped), None)
            elif isinstance(layer, GloraLayer):  # one GLoRAModule: a1, a2, b2 shared, b1 the parts' rows
                out[key] = (_fused_glora_slots(rows, adapter, swapped), None)
            elif isinstance(layer, TloraLayer):  # one TLoraModule: Q, λ shared, P the parts' rows
                out[key] = (_fused_tlora_slots(rows, adapter, swapped), None)
            else:
                out[key] = (_slots(rows, adapter, swapped, scale), None)
    return out


def _whole(layer: nn.Module, adapter: str) -> bool:
    from dbspec.runtime.lycoris_full import FullLayer
    from dbspec.runtime.lycoris_ia3 import Ia3Layer
    from dbspec.runtime.lycoris_glora import GloraLayer
    from dbspec.runtime.lycoris_oft import DiagOftLayer, KohyaOftLayer
    from dbspec.runtime.lycoris_tlora import TloraLayer

    return (
        (isinstance(layer, FullLayer) and adapter in layer.lora_full)
        or (isinstance(layer, TloraLayer) and adapter in layer.lora_tlora_q)
        or (isinstance(layer, Ia3Layer) and adapter in layer.lora_ia3)
        or (  # LyCORIS's Diag-OFT and BOFT (BoftLayer is a DiagOftLayer); kohya's own OFT loads elsewhere
            isinstance(layer, DiagOftLayer)
            and not isinstance(layer, KohyaOftLayer)
            and adapter in layer.lora_oft_blocks
        )
        or (isinstance(layer, GloraLayer) and adapter in layer.lora_glora_a1)
    )


def _fused_rows(root: nn.Module, layers: dict, name: str, family) -> list[tuple] | None:
    """(layer or None, its base Linear) of each part of `name`'s fused Linear in kohya's row order; None when
    an earlier part is adapted (the slots come once, with the first adapted part)."""
    group = next(
        g
        for g in family_spec(family).fused_projections
        if name.startswith(g.blocks + ".") and any(name.endswith("." + p) for p in g.parts)
    )
    index = next(i for i, p in enumerate(group.parts) if name.endswith("." + p))
    head = name.removesuffix(group.parts[index])
    rows = []
    for child in group.parts:
        layer = layers.get(head + child)
        base = layer.get_base_layer() if layer is not None else root.get_submodule(head + child)
        rows.append((layer, getattr(base, "base_layer", base)))
    first = next(i for i, (layer, _) in enumerate(rows) if layer is not None)
    return rows if first == index else None


def _slots(rows: list[tuple], adapter: str, swapped: bool, scale: float = 1.0) -> dict[str, Slot]:
    """The file tensors of one LyCORIS module over its rows' layers: full `diff` / `diff_b` (times `scale`,
    adapter.init_scale), IA^3 `weight` / `on_input`."""
    from dbspec.runtime.lycoris_full import FullLayer

    layer = next(layer for layer, _ in rows if layer is not None)
    sizes = [base.weight.shape[0] for _, base in rows]
    if isinstance(layer, FullLayer):
        weight_shape = (sum(sizes), *rows[0][1].weight.shape[1:])
        slots = {"diff": (weight_shape, _rows_copy(rows, sizes, adapter, "weight", swapped, scale))}
        if all(base.bias is not None for _, base in rows):
            slots["diff_b"] = ((sum(sizes),), _rows_copy(rows, sizes, adapter, "bias", swapped, scale))
        return slots
    own = tuple(layer.lora_ia3[adapter].shape)
    shape = own if len(rows) == 1 else (sum(sizes),)
    on_input = layer.on_input[adapter]

    def check(value: torch.Tensor) -> None:
        if int(value) != int(on_input):
            raise ValueError(
                f"`on_input` is {int(value)}; the run's layer scales its {'in' if on_input else 'out'}puts"
            )

    if on_input:  # one scale per input column, a fused layer's parts sharing it: no rows to split or swap
        return {"weight": (own, _input_copy(rows, adapter)), "on_input": ((), check)}
    return {"weight": (shape, _rows_copy(rows, sizes, adapter, "scale", swapped)), "on_input": ((), check)}


def _input_copy(rows: list[tuple], adapter: str):
    """Copy an input-side IA^3 scale (LyCORIS's train_on_input: one per input column) into every part of its
    layer (a fused Linear's parts share it, runtime/lycoris_ia3.py tie_fused_ia3_inputs); every part must be
    adapted, as the run ties them."""

    def copy(value: torch.Tensor) -> None:
        for layer, _ in rows:
            if layer is None:
                raise ValueError("an input-side IA^3 scale over a fused layer's part this run does not adapt")
            target = layer.lora_ia3[adapter]
            target.copy_(value.reshape(target.shape).to(target.device, target.dtype))

    return copy


def _oft_slots(layer: nn.Module, adapter: str, partial: bool) -> dict[str, Slot]:
    """LyCORIS's DiagOFTModule / ButterflyOFTModule state: `oft_blocks` (3-D; BOFT's 4-D) into the blocks,
    `rescale` into the row rescale. Its `alpha` (the constraint) loads into the module's buffer, which its
    forward never reads (it keeps the constraint it was built with): the run's constraint stays. A `rescale`
    the layer has not (the network built without `rescaled`) is an unexpected key to load_state_dict: with
    `partial` (strict=False) ignored, as LyCORIS ignores it, else refused by the loader."""

    into = _into
    blocks = layer.lora_oft_blocks[adapter]
    base = layer.get_base_layer()
    rescale = layer.lora_oft_rescale[adapter] if adapter in layer.lora_oft_rescale else None
    shape = (base.weight.shape[0], *[1] * (base.weight.dim() - 1))
    slots = {"oft_blocks": (tuple(blocks.shape), into(blocks))}
    if rescale is not None or partial:
        slots["rescale"] = (shape, into(rescale) if rescale is not None else lambda value: None)
    return slots


def _glora_slots(layer: nn.Module, adapter: str) -> dict[str, Slot]:
    """GLoRAModule's state: `a1.weight`, `a2.weight`, `b1.weight`, `b2.weight` into the layer's pairs, as
    they are. Its `alpha` loads into the module's buffer, which its forward never reads (it keeps the scale
    it was built with): the run's alpha / rank stays, and no alpha is checked (None)."""
    slots = {}
    for part in ("a1", "a2", "b1", "b2"):
        target = getattr(layer, f"lora_glora_{part}")[adapter]
        slots[f"{part}.weight"] = (tuple(target.shape), _into(target))
    return slots


def _fused_oft_slots(rows: list[tuple], adapter: str, partial: bool, swapped: bool) -> dict[str, Slot]:
    """DiagOFTModule's `oft_blocks` / `rescale` over a fused Linear of kohya's Flux / SD3 (or one Linear,
    `rows` of one): its blocks cut into each part's (runtime/lycoris_oft.py fit_fused_oft gave every part the
    fused module's block size), or into the one Parameter the parts share where its blocks span them
    (runtime/fused_oft.py), its rescale rows too; the blocks over a part the run does not adapt must
    rotate nothing (B - B^T = 0) and its rescale be 1, as dbspec's export writes them. `swapped`: kohya's
    (shift, scale) rows back to diffusers' (scale, shift), as the export swapped them (an odd count of
    blocks stays in kohya's order, as the layer holds it)."""
    layer = next(layer for layer, _ in rows if layer is not None)
    size = layer.lora_oft_blocks[adapter].shape[-1]
    widths = [base.weight.shape[0] for _, base in rows]
    counts = [w // size for w in widths]
    rescaled = adapter in layer.lora_oft_rescale
    tied = "oft_tie" in layer.__dict__  # blocks spanning the parts: one Parameter (runtime/fused_oft.py)
    if tied:
        counts = [sum(widths) // size]

    def blocks(value: torch.Tensor) -> None:
        # an odd count: one block spans the halves, held in kohya's row order (lycoris_oft.py _kohya_order)
        value = _halves(value, swapped and value.shape[0] % 2 == 0)
        if tied:
            _into(layer.lora_oft_blocks[adapter])(value)
            return
        for (part, _), block in zip(rows, value.split(counts, dim=0)):
            if part is None:
                if torch.count_nonzero(block - block.transpose(1, 2)):
                    raise ValueError(
                        "blocks over a fused layer's part this run does not adapt rotate its rows"
                    )
                continue
            _into(part.lora_oft_blocks[adapter])(block)

    def rescale(value: torch.Tensor) -> None:
        value = _halves(value, swapped)
        for (part, _), block in zip(rows, value.split(widths, dim=0)):
            if part is None:
                if not torch.all(block == 1):
                    raise ValueError("rows of a fused layer's part this run does not adapt are rescaled")
                continue
            _into(part.lora_oft_rescale[adapter])(block)

    slots = {"oft_blocks": ((sum(counts), size, size), blocks)}
    if rescaled or partial:  # without a rescale of its own: strict=False's unexpected key, ignored
        shape = (sum(widths), *[1] * (rows[0][1].weight.dim() - 1))  # a convolution's (out, 1, 1, 1)
        slots["rescale"] = (shape, rescale if rescaled else lambda value: None)
    return slots


def _fused_boft_slots(rows: list[tuple], adapter: str, partial: bool, swapped: bool) -> dict[str, Slot]:
    """ButterflyOFTModule's `oft_blocks` / `rescale` over a fused Linear of kohya's Flux / SD3 (or one Linear,
    `rows` of one): the blocks into the Parameter its parts share (runtime/lycoris_boft.py tie_fused_boft:
    the stacked width's split), as they are (a swapped Linear's rotation acts on kohya's row order already,
    `boft_swapped`), the rescale cut into each part's rows (`swapped`: kohya's (shift, scale) halves back to
    diffusers' (scale, shift), as the export swapped them)."""
    if any(part is None for part, _ in rows):  # tie_fused_boft refuses such a run
        raise ValueError("the run adapts some of a fused layer's parts with BOFT, whose blocks span all")
    first = rows[0][0]
    blocks = first.lora_oft_blocks[adapter]
    slots = {"oft_blocks": (tuple(blocks.shape), _into(blocks))}
    targets = [part.lora_oft_rescale[adapter] for part, _ in rows if adapter in part.lora_oft_rescale]
    widths = [base.weight.shape[0] for _, base in rows]

    def rescale(value: torch.Tensor) -> None:
        for target, block in zip(targets, _halves(value, swapped).split(widths, dim=0)):
            _into(target)(block)

    if targets or partial:  # without a rescale of its own: strict=False's unexpected key, ignored
        shape = (sum(widths), *[1] * (rows[0][1].weight.dim() - 1))  # a convolution's (out, 1, 1, 1)
        slots["rescale"] = (shape, rescale if targets else lambda value: None)
    return slots


def _fused_glora_slots(rows: list[tuple], adapter: str, swapped: bool) -> dict[str, Slot]:
    """GLoRAModule's pairs over a fused Linear (or one Linear): `a1`, `a2`, `b2` into the Parameters its
    parts share (runtime/lycoris_glora.py tie_fused_glora), `b1` cut into each part's rows; `swapped`: b1's
    halves back to diffusers' (scale, shift) rows (W a1 a2 follows the layer's own rows)."""
    if any(part is None for part, _ in rows):  # tie_fused_glora refuses such a run
        raise ValueError("the run adapts some of a fused layer's parts with GLoRA, whose pairs span all")
    first = rows[0][0]
    slots = {}
    for name in ("a1", "a2", "b2"):
        target = getattr(first, f"lora_glora_{name}")[adapter]
        slots[f"{name}.weight"] = (tuple(target.shape), _into(target))
    targets = [part.lora_glora_b1[adapter] for part, _ in rows]
    widths = [t.shape[0] for t in targets]

    def b1(value: torch.Tensor) -> None:
        for target, block in zip(targets, _halves(value, swapped).split(widths, dim=0)):
            _into(target)(block)

    slots["b1.weight"] = ((sum(widths), *targets[0].shape[1:]), b1)
    return slots


def _fused_tlora_slots(rows: list[tuple], adapter: str, swapped: bool) -> dict[str, Slot]:
    """TLoraModule's trained tensors over a fused Linear (or one Linear): `q_layer.weight` and `lambda_layer`
    into the Parameters its parts share (runtime/lycoris_tlora.py fit_fused_tlora), `p_layer.weight` cut
    into each part's rows; `swapped`: P's halves back to diffusers' (scale, shift) rows. The frozen start
    stays the one SVD of the stacked (kohya's) weight, as load_state_dict(strict=False) leaves TLoraModule's
    buffers; `alpha` is not read (None), as for T-LoRA on SD (_tlora_slots)."""
    if any(part is None for part, _ in rows):  # fit_fused_tlora refuses such a run
        raise ValueError("the run adapts some of a fused layer's parts with T-LoRA, whose SVD spans all")
    first = rows[0][0]
    slots = {}
    for name, attr in (("q_layer.weight", "lora_tlora_q"), ("lambda_layer", "lora_tlora_lambda")):
        target = getattr(first, attr)[adapter]
        slots[name] = (tuple(target.shape), _into(target))
    targets = [part.lora_tlora_p[adapter] for part, _ in rows]
    widths = [t.shape[0] for t in targets]

    def p_rows(value: torch.Tensor) -> None:
        for target, block in zip(targets, _halves(value, swapped).split(widths, dim=0)):
            _into(target)(block)

    slots["p_layer.weight"] = ((sum(widths), *targets[0].shape[1:]), p_rows)
    return slots


def _halves(value: torch.Tensor, swapped: bool) -> torch.Tensor:
    """kohya's (shift, scale) rows as diffusers' (scale, shift) where `swapped`."""
    if not swapped:
        return value
    if value.shape[0] % 2:
        raise ValueError(f"{value.shape[0]} rows (odd) have no (scale, shift) halves to swap back")
    first, second = value.chunk(2, dim=0)
    return torch.cat([second, first], dim=0)


def _tlora_slots(layer: nn.Module, adapter: str) -> dict[str, Slot]:
    """TLoraModule's state: `q_layer.weight`, `p_layer.weight`, `lambda_layer` into the layer's trained
    tensors, as they are. Its frozen start (base_q / base_p / base_lambda, never in LyCORIS's file) stays the
    base model's SVD, as load_state_dict(strict=False) leaves those buffers; its `alpha` loads into a buffer
    the forward never reads (the run's alpha / rank stays, no alpha checked: None)."""
    return {
        name: (tuple(value.shape), _into(value)) for name, value in layer.lycoris_weights(adapter).items()
    }


def _into(target: torch.Tensor):
    def copy(value: torch.Tensor) -> None:
        target.copy_(value.to(target.device, target.dtype))

    return copy


def _rows_copy(
    rows: list[tuple], sizes: list[int], adapter: str, what: str, swapped: bool, scale: float = 1.0
):
    """Copy a fused tensor's row blocks into the parts: a full copy's weight / bias is the base's plus its
    rows of `diff` / `diff_b` times `scale` (2: kohya's --dim_from_weights, whose create_network_from_weights
    builds FullModule at W + diff before load_weights adds the diff again), an IA^3 part's scales its rows;
    an unadapted part's rows must be 0."""

    def copy(value: torch.Tensor) -> None:
        if swapped:  # kohya's (shift, scale) rows back to diffusers' (scale, shift)
            first, second = value.chunk(2, dim=0)
            value = torch.cat([second, first], dim=0)
        blocks = value.split(sizes, dim=0) if len(rows) > 1 else [value]
        for (layer, base), block in zip(rows, blocks):
            if layer is None:
                if torch.count_nonzero(block):
                    raise ValueError("rows of a fused layer's part this run does not adapt are not 0")
                continue
            if what == "scale":
                target = layer.lora_ia3[adapter]
                target.copy_(block.reshape(target.shape).to(target.device, target.dtype))
                continue
            target = (layer.lora_full if what == "weight" else layer.lora_full_bias)[adapter]
            original = base.weight if what == "weight" else base.bias
            diff = block.float().to(original.device)
            target.copy_((original.float() + (diff * scale if scale != 1 else diff)).to(target.dtype))

    return copy

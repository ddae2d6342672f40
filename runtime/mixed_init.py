"""Start a run of several kinds (runtime/mixed_kinds.py) from LyCORIS's file (`plan.adapter.init_weights`:
lycoris.kohya `--network_weights` with a preset giving layers their own algo, or the file of mixed kinds
`--dim_from_weights` rebuilds) on SD 1.x/2.x, SDXL, and Flux / SD3 / Chroma (each kind's fused Linear one
module under kohya's fused name, its tensors split into the parts as that kind's single-kind start splits
them: factor_slots, whole_layer_slots, _lora_slots).

lycoris.kohya's network holds one module per layer, each of its own class (LoConModule, LohaModule,
LokrModule, FullModule, IA3Module, DiagOFTModule / ButterflyOFTModule, GLoRAModule), and its `load_weights`
is `load_state_dict(strict=False)` of the file into all of them at once. Here every layer of the run gives
its slots under its kohya name, each in its kind's tensors: LoRA's `lora_down` / `lora_up` (a LoCon Tucker
convolution's `lora_mid` too; alpha checked as
runtime/init_weights.py checks it), LoKr's / LoHa's factors (runtime/lycoris_init.py; every LoKr layer of such
a run at LyCORIS's scale, lokr_unit_scale), full / IA^3 / Diag-OFT / BOFT / GLoRA's (runtime/
lycoris_whole_init.py), and lycoris_init's loader fills them: a file tensor of another kind or shape than the
layer's is an error naming it, a layer or file module the other misses too unless `plan.adapter.init_partial`
(then the layer keeps its init; a full layer the file lacks fails even then, as FullModule's load hook pops
its `diff`)."""

from __future__ import annotations

import torch

from dbspec.plan.model import Plan
from dbspec.runtime.adapters import lora_adapter
from dbspec.runtime.exports import kohya_parts
from dbspec.runtime.lycoris_init import Slot, _into, factor_slots, load_fused_lycoris_init


def load_mixed_init(plan: Plan, unet: torch.nn.Module, text_encoders: list) -> int:
    """Copy the file into every kind's layers of the run; returns the file modules set."""
    from dbspec.runtime.lycoris_whole_init import whole_layer_slots

    layers = {
        **_lora_slots(plan, unet, text_encoders),
        **factor_slots(plan, unet, text_encoders, unit_scale=True),  # mixed_kinds.kind_adapter's LoKr
        **whole_layer_slots(plan, unet, text_encoders),
        **_dylora_alphas(plan, unet, text_encoders),
    }
    return load_fused_lycoris_init(plan, unet, text_encoders, layers)


def _dylora_alphas(plan: Plan, unet, text_encoders) -> dict[str, tuple[dict[str, Slot], float]]:
    """kohya name -> (no slot, its alpha) for every DyLoRA layer. LyCORIS's DyLoraModule keeps its weights in
    `up_list` / `down_list`, so load_weights' `load_state_dict(strict=False)` takes none of the file's
    `lora_down` / `lora_up` and only the `alpha` buffer, which get_weight scales by: the layer keeps its own
    init, and the file's alpha must be the one it trains at (the loader checks it;
    compiler/mixed_init_file.py). On Flux / SD3 / Chroma (family fused_projections) the denoiser's layers go
    under kohya's names: a fused Linear (q/k/v, linear1) is one DyLoraModule with one `alpha` buffer, whose
    parts (runtime/dylora.py tie_fused_dylora) must all train at it."""
    from dbspec.families import family_spec
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_export import _table

    family = plan.model.family
    fused = bool(family_spec(family).fused_projections)
    out: dict[str, tuple[dict[str, Slot], float]] = {}
    parts = kohya_parts(unet=unet, text_encoders=list(text_encoders), family=family, lycoris=True)
    for prefix, module, to_path in parts:
        found = lora_adapter(module)
        if found is None:
            continue  # a model that does not train: kohya drops its modules
        inner, adapter = found
        for name, layer in inner.named_modules():
            if not (isinstance(layer, DyloraLayer) and adapter in layer.lora_alpha):
                continue
            alpha = float(layer.lora_alpha[adapter])
            if module is not unet or not fused:  # one module per layer
                out[f"{prefix}_{to_path(name).replace('.', '_')}"] = ({}, alpha)
                continue
            original, _part = _table(family).original_name(name)
            key = f"{prefix}_{original.replace('.', '_')}"
            if key in out and out[key][1] != alpha:
                raise ValueError(  # the compiler plans a fused DyLoraModule's parts from one block
                    f"{plan.adapter.init_weights}: kohya's `{key}` is one DyLoraModule with one alpha; the "
                    f"run's parts of it train at {out[key][1]:g} and {alpha:g}"
                )
            out[key] = ({}, alpha)
    return out


def _lora_slots(plan: Plan, unet, text_encoders) -> dict[str, tuple[dict[str, Slot], float]]:
    """kohya name -> (LoConModule's `lora_down.weight` / `lora_up.weight` slots, its alpha) for every LoRA
    layer (peft's own LoRA layers: not the other kinds' LoraLayer subclasses). On Flux / SD3 / Chroma
    (family fused_projections) the denoiser's layers go under kohya's names: a fused Linear (q/k/v, linear1)
    is one LoConModule, its `lora_down` the one down its parts share (runtime/fused.py
    tie_fused_projections), its `lora_up` their ups' rows stacked in kohya's row order; a Linear whose halves
    of rows kohya holds the other way round (runtime/sd3_kohya.py) takes its `lora_up` halves swapped."""
    from peft.tuners.lora import LoraLayer

    from dbspec.families import family_spec
    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.locon_tucker import TuckerConv2d
    from dbspec.runtime.lycoris_export import _swapped, _table
    from dbspec.runtime.lycoris_init import _dora_slot, _halves_swapped, _rows
    from dbspec.runtime.lycoris_whole_init import _fused_rows, _whole

    family = plan.model.family
    fused = bool(family_spec(family).fused_projections)
    out: dict[str, tuple[dict[str, Slot], float]] = {}
    for prefix, module, to_path in kohya_parts(
        unet=unet, text_encoders=list(text_encoders), family=family, lycoris=True
    ):
        found = lora_adapter(module)
        if found is None:
            continue  # a model that does not train: kohya drops its modules
        inner, adapter = found
        layers = {
            name: layer
            for name, layer in inner.named_modules()
            if isinstance(layer, LoraLayer)
            and not isinstance(layer, DyloraLayer)
            and not _whole(layer, adapter)
            and adapter in layer.lora_A
        }
        for name, layer in layers.items():
            alpha = float(layer.scaling[adapter]) * layer.r[adapter]
            if module is not unet or not fused:  # SD 1.x/2.x, SDXL, the text encoders: one module per layer
                key = f"{prefix}_{to_path(name).replace('.', '_')}"
                slots = {
                    "lora_down.weight": _into(layer.lora_A[adapter].weight),
                    "lora_up.weight": _into(layer.lora_B[adapter].weight),
                }
                if isinstance(layer, TuckerConv2d) and adapter in layer.lora_mid:  # LoCon's Tucker form
                    slots["lora_mid.weight"] = _into(layer.lora_mid[adapter].weight)
                # LoConModule's weight_decompose: its `dora_scale` as it is (runtime/lycoris_dora.py)
                slots |= _dora_slot(layer, adapter)
                out[key] = (slots, alpha)
                continue
            original, part = _table(family).original_name(name)
            key = f"{prefix}_{original.replace('.', '_')}"
            if part is None:  # a Linear of its own in kohya's model
                up = _into(layer.lora_B[adapter].weight)
                slots = {"lora_down.weight": _into(layer.lora_A[adapter].weight), "lora_up.weight": up}
                if isinstance(layer, TuckerConv2d) and adapter in layer.lora_mid:  # SD3's patch convolution
                    slots["lora_mid.weight"] = _into(layer.lora_mid[adapter].weight)
                slots |= _dora_slot(layer, adapter)  # LoConModule's weight_decompose (lycoris_dora.py)
                if _swapped(module, name):  # the rows kohya holds the other way round (a column's: whole)
                    for row in ["lora_up.weight", *(["dora_scale"] if _row_dora(slots) else [])]:
                        slots[row] = _halves_swapped(plan.adapter.init_weights, key, row, slots[row])
                out[key] = (slots, alpha)
                continue
            rows = _fused_rows(inner, layers, name, family)
            if rows is None:
                continue  # a later part: the fused layer's slots come with its first adapted part
            parts = [part_layer for part_layer, _ in rows]
            down = layer.lora_A[adapter].weight
            if any(p is None or p.lora_A[adapter].weight is not down for p in parts):
                raise ValueError(  # the compiler plans every part of a fused LoConModule, tied
                    f"{plan.adapter.init_weights}: kohya's `{key}` is one LoConModule; the run's parts of it "
                    "do not share one down"
                )
            slots = {
                "lora_down.weight": _into(down),
                "lora_up.weight": _rows([p.lora_B[adapter].weight for p in parts]),
                **_fused_dora_slot(parts, adapter),
            }
            out[key] = (slots, alpha)
    return out


def _row_dora(slots: dict[str, Slot]) -> bool:
    """The slots hold a `dora_scale` per output row (LyCORIS's wd_on_out shape (out, 1))."""
    return "dora_scale" in slots and slots["dora_scale"][0][0] != 1


def _fused_dora_slot(parts: list, adapter: str) -> dict[str, Slot]:
    """A fused LoConModule's `dora_scale` with weight_decompose (the layer decomposed in its kind's pass,
    runtime/mixed_kinds.py): per output row its parts' magnitudes stacked in kohya's row order, per input
    column the one (1, in) magnitude they share (runtime/lycoris_dora.py tie_fused_doras), as
    runtime/flow_init.py loads a LoCon network's."""
    from dbspec.runtime.lycoris_dora import axis_of, dora_scale_of
    from dbspec.runtime.lycoris_init import _rows

    scales = [dora_scale_of(p, adapter) for p in parts]
    if scales[0] is None:
        return {}
    if axis_of(scales[0].shape) == "input":
        return {"dora_scale": _into(scales[0])}
    return {"dora_scale": _rows(scales)}

"""Start a run of several kinds (runtime/mixed_kinds.py) from LyCORIS's file (`plan.adapter.init_weights`:
lycoris.kohya `--network_weights` with a preset giving layers their own algo, or the file of mixed kinds
`--dim_from_weights` rebuilds) on SD 1.x/2.x and SDXL.

lycoris.kohya's network holds one module per layer, each of its own class (LoConModule, LohaModule,
LokrModule, FullModule, IA3Module, DiagOFTModule / ButterflyOFTModule, GLoRAModule), and its `load_weights`
is `load_state_dict(strict=False)` of the file into all of them at once. Here every layer of the run gives
its slots under its kohya name, each in its kind's tensors: LoRA's `lora_down` / `lora_up` (alpha checked as
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
    }
    return load_fused_lycoris_init(plan, unet, text_encoders, layers)


def _lora_slots(plan: Plan, unet, text_encoders) -> dict[str, tuple[dict[str, Slot], float]]:
    """kohya name -> (LoConModule's `lora_down.weight` / `lora_up.weight` slots, its alpha) for every LoRA
    layer (peft's own LoRA layers: not the other kinds' LoraLayer subclasses)."""
    from peft.tuners.lora import LoraLayer

    from dbspec.runtime.dylora import DyloraLayer
    from dbspec.runtime.lycoris_whole_init import _whole

    out: dict[str, tuple[dict[str, Slot], float]] = {}
    for prefix, module, to_path in kohya_parts(
        unet=unet, text_encoders=list(text_encoders), family=plan.model.family, lycoris=True
    ):
        found = lora_adapter(module)
        if found is None:
            continue  # a model that does not train: kohya drops its modules
        inner, adapter = found
        for name, layer in inner.named_modules():
            if (
                not isinstance(layer, LoraLayer)
                or isinstance(layer, DyloraLayer)
                or _whole(layer, adapter)
                or adapter not in layer.lora_A
            ):
                continue
            key = f"{prefix}_{to_path(name).replace('.', '_')}"
            slots = {
                "lora_down.weight": _into(layer.lora_A[adapter].weight),
                "lora_up.weight": _into(layer.lora_B[adapter].weight),
            }
            out[key] = (slots, float(layer.scaling[adapter]) * layer.r[adapter])
    return out

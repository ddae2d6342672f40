"""LyCORIS's LoHa on a fused Linear of the original model (`plan.adapter.fused` with adapter kind loha:
lycoris.kohya `algo=loha` with flux_train_network.py, on kohya's Flux).

LyCORIS's LohaModule on kohya's `img_attn.qkv` (single blocks' `linear1`) trains one Hadamard update of the
whole fused weight: ΔW = (w1_a @ w1_b) ⊙ (w2_a @ w2_b) x alpha / rank, w1_a and w2_a (out x rank)
spanning the fused rows, w1_b and w2_b (rank x in) the input. A part's rows of it are
(w1_a[rows] @ w1_b) ⊙ (w2_a[rows] @ w2_b): peft's LoHa on each diffusers part (attn.to_q, to_k, to_v,
proj_mlp), each with its own w1_a / w2_a rows and the layer's w1_b / w2_b shared, is that update exactly.
The shared factors are tied to the first part's Parameters, as runtime/fused.py ties LoRA downs: the
optimizer, the resume state and EMA hold them once, and their gradients are the sum of the parts'. The
file writes the parts' w1_a / w2_a stacked in the fused layer's row order and w1_b / w2_b once
(runtime/lycoris_export.py)."""

from __future__ import annotations

import torch

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME
from dbspec.runtime.fused import fused_parts


def _loha_part(layer) -> bool:
    from peft.tuners.loha import LoHaLayer

    return isinstance(layer, LoHaLayer) and ADAPTER_NAME in layer.hada_w1_a


def tie_fused_loha(module: torch.nn.Module, groups: tuple[FusedPlan, ...]) -> int:
    """Tie the adapted parts' `hada_w1_b` / `hada_w2_b` of every block's fused layers in `module` (peft LoHa
    attached) to the first part's; how many fused layers. ValueError when a fused layer's parts are adapted in
    part, or at other ranks or scales (the compiler refuses those plans)."""
    shared = 0
    for group, index, found in fused_parts(module, groups, _loha_part):
        layers = [layer for _, _, layer in found]
        if not layers:
            continue
        where = f"{group.blocks}.{index} fused {group.name}"
        if len(layers) != len(group.parts):
            raise ValueError(f"{where}: LoHa on a fused layer needs every part adapted ({group.parts})")
        first = layers[0]
        key = (first.r[ADAPTER_NAME], first.scaling[ADAPTER_NAME])
        if any((layer.r[ADAPTER_NAME], layer.scaling[ADAPTER_NAME]) != key for layer in layers):
            raise ValueError(f"{where}: its parts' LoHa ranks or scales differ")
        for layer in layers[1:]:
            layer.hada_w1_b[ADAPTER_NAME] = first.hada_w1_b[ADAPTER_NAME]
            layer.hada_w2_b[ADAPTER_NAME] = first.hada_w2_b[ADAPTER_NAME]
            layer.fused_loha_later = True
        first.fused_loha_parts = layers
        shared += 1
    return shared


def fused_loha_weights(layer) -> dict[str, torch.Tensor]:
    """The fused layer's LyCORIS tensors from its first part: the parts' w1_a / w2_a stacked, w1_b / w2_b."""
    parts = layer.fused_loha_parts
    return {
        "hada_w1_a": torch.cat([p.hada_w1_a[ADAPTER_NAME] for p in parts]),
        "hada_w1_b": layer.hada_w1_b[ADAPTER_NAME],
        "hada_w2_a": torch.cat([p.hada_w2_a[ADAPTER_NAME] for p in parts]),
        "hada_w2_b": layer.hada_w2_b[ADAPTER_NAME],
    }

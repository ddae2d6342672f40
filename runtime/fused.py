"""Shared down-projections of fused layers (`plan.adapter.fused`, adapter.fused_projections).

kohya's LoRA on a fused Linear of the original model (Flux's `img_attn.qkv`: q, k, v in one weight) has one
down-projection A (rank r) and one up-projection B spanning every part's rows: the update of part p's rows
is scale * B_p @ A. diffusers splits the layer into parts (attn.to_q, to_k, to_v), each of which peft gives
its own LoRA; tying the parts' `lora_A` weights to one Parameter makes them exactly kohya's fused LoRA: the
forward pass of part p is scale * B_p @ (A x), and A's gradient is the sum of the parts' (autograd
accumulates into the one Parameter). `module.parameters()` and `named_parameters()` list the shared weight
once (under the first part's name), so the optimizer, the resume state and EMA hold it once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import torch

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME


def fused_parts(
    module: torch.nn.Module, groups: tuple[FusedPlan, ...], adapted: Callable[[Any], bool]
) -> Iterator[tuple[FusedPlan, int, list[tuple[int, str, Any]]]]:
    """Per block of each fused group found in `module`: the group, the block's index, and its parts whose
    layer `adapted` accepts, as (index in the group's parts, part name, layer), in part order."""
    for group in groups:
        try:
            blocks = module.get_submodule(group.blocks)
        except AttributeError:
            continue
        for index, block in enumerate(blocks):
            found = []
            for position, part in enumerate(group.parts):
                try:
                    layer = block.get_submodule(part)
                except AttributeError:
                    continue
                if adapted(layer):
                    found.append((position, part, layer))
            yield group, index, found


def tie_parts(
    module: torch.nn.Module,
    groups: tuple[FusedPlan, ...],
    adapted: Callable[[Any], bool],
    kind: str,
    same: Callable[[Any], tuple],
    differs: str,
    tie: Callable[[Any, Any], None],
) -> int:
    """One LyCORIS module (`kind`) per fused layer: `tie(layer, first)` each later part to the first part.
    ValueError when a fused layer's parts are adapted in part or `same` tells them apart (`differs` says
    what differs). How many fused layers were tied."""
    tied = 0
    for group, index, found in fused_parts(module, groups, adapted):
        if not found:
            continue
        where = f"{group.blocks}.{index}: the fused {group.name}"
        if len(found) != len(group.parts):
            raise ValueError(f"{where}: {kind} on a fused layer needs every part adapted ({group.parts})")
        first = found[0][2]
        for _, part, layer in found[1:]:
            if same(layer) != same(first):
                raise ValueError(f"{where}: {part} has another {differs} than {found[0][1]}")
            tie(layer, first)
        tied += 1
    return tied


def _lora_part(layer: Any) -> bool:
    from peft.tuners.lora import LoraLayer

    return isinstance(layer, LoraLayer) and ADAPTER_NAME in layer.lora_A


def fused_layers(
    module: torch.nn.Module, groups: tuple[FusedPlan, ...]
) -> Iterator[tuple[FusedPlan, list[tuple[int, Any]]]]:
    """Per block of each fused group found in `module`: the group, and its parts that carry dbspec's peft
    LoRA adapter, as (index in the group's parts, layer), in part order."""
    for group, _, found in fused_parts(module, groups, _lora_part):
        yield group, [(position, layer) for position, _, layer in found]


def tie_fused_projections(module: torch.nn.Module, fused: tuple[FusedPlan, ...]) -> int:
    """Tie the adapted parts' `lora_A` weights of every block's fused layers in `module` (the denoiser, peft
    LoRA attached) to the first adapted part's; how many fused layers now share one. ValueError when parts
    of one fused layer have different ranks or scales (the compiler refuses those plans, DBS507)."""
    shared = 0
    for group, index, found in fused_parts(module, fused, _lora_part):
        layers = [(part, layer) for _, part, layer in found]
        if len(layers) < 2:
            continue
        first_part, first = layers[0]
        for part, layer in layers[1:]:
            same = (layer.r[ADAPTER_NAME], layer.scaling[ADAPTER_NAME]) == (
                first.r[ADAPTER_NAME],
                first.scaling[ADAPTER_NAME],
            )
            if not same:
                raise ValueError(
                    f"{group.blocks}.{index}.{part}: rank {layer.r[ADAPTER_NAME]} scale "
                    f"{layer.scaling[ADAPTER_NAME]:g}, but {first_part} of the same fused {group.name} "
                    f"has rank {first.r[ADAPTER_NAME]} scale {first.scaling[ADAPTER_NAME]:g}: one shared "
                    "down-projection needs one rank and scale"
                )
            layer.lora_A[ADAPTER_NAME].weight = first.lora_A[ADAPTER_NAME].weight
            _tie_scalar(layer, first)
        shared += 1
    return shared


def _tie_scalar(layer: Any, first: Any) -> None:
    """LyCORIS's one scalar per fused Linear (LoConModule's `scalar`: use_scalar's trained one, or the fixed
    one its max norm multiplies; runtime/lycoris_switches.py): the parts' `lora_scalar` entries one
    Parameter, the first part's (the parts' ups read it through that ParameterDict)."""
    scalars, own = layer._modules.get("lora_scalar"), first._modules.get("lora_scalar")
    if scalars is not None and own is not None and ADAPTER_NAME in scalars:
        scalars[ADAPTER_NAME] = own[ADAPTER_NAME]


def _lycoris_part(layer: Any) -> bool:
    """A part of a fused LoKr / LoHa (tied by runtime/fused_lokr.py, fused_loha.py)."""
    return (
        hasattr(layer, "fused_lokr_rows")
        or hasattr(layer, "fused_loha_parts")
        or getattr(layer, "fused_loha_later", False)
    )


def tie_fused_scalars(module: torch.nn.Module, fused: tuple[FusedPlan, ...]) -> int:
    """LyCORIS's one scalar per fused LoKr / LoHa module (use_scalar's trained one, or the fixed one its max
    norm multiplies; runtime/lycoris_switches.py, max_norm.py): the parts' `lokr_scalar` / `hada_scalar`
    entries one Parameter, the first part's; how many fused layers (runtime/fused_lokr.py, fused_loha.py tie
    their factors first)."""
    from dbspec.runtime.lycoris_switches import layer_scalar

    tied = 0
    for _, _, found in fused_parts(module, fused, _lycoris_part):
        layers = [layer for _, _, layer in found]
        if len(layers) < 2 or layer_scalar(layers[0]) is None:
            continue
        for layer in layers[1:]:
            for attr in ("lokr_scalar", "hada_scalar"):
                own, first = layer._modules.get(attr), layers[0]._modules.get(attr)
                if own is not None and first is not None and ADAPTER_NAME in own:
                    own[ADAPTER_NAME] = first[ADAPTER_NAME]
        tied += 1
    return tied


class FusedSkip:
    """LyCORIS's module dropout on a fused Linear (DyLoraModule's, ButterflyOFTModule's: runtime/dylora.py,
    lycoris_boft.py), one draw for its `parts` per training forward: the first part called draws
    `torch.rand(1) < p` from torch's global generator, where kohya's one module on the fused layer draws it
    in the forward order (the fused layer's forward, first of its parts'); the others take the same
    outcome. The draw is kept until every part has taken it, so gradient checkpointing's
    recomputation (the generator restored) draws it again alike, and a resumed run draws what an
    uninterrupted one draws (the generator is checkpointed)."""

    def __init__(self, parts: int):
        self.parts, self.left, self.skip = parts, 0, False

    def take(self, p: float) -> bool:
        if self.left == 0:
            self.skip, self.left = bool(torch.rand(1) < p), self.parts
        self.left -= 1
        return self.skip

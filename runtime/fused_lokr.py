"""LyCORIS's LoKr on a fused Linear of the original model (`plan.adapter.fused` with adapter kind lokr:
lycoris.kohya `algo=lokr` with flux_train_network.py, on kohya's Flux).

LyCORIS's LokrModule on kohya's `img_attn.qkv` (q, k, v in one weight; single blocks' `linear1`: q, k, v and
the MLP input) trains one Kronecker update of the whole fused weight: ΔW = kron(w1, w2) x alpha / rank, w1
(out_l x in_m) and w2 (out_k x in_n) from LyCORIS's factorization of the fused out and in dimensions (w2 low
rank, w2_a @ w2_b, below half its larger side; w1 too with decompose_both), scale 1 when both are full.
diffusers splits the layer into parts (attn.to_q, to_k, to_v, proj_mlp), each of which peft gives its own
LoKr layer; here every part's layer holds the same fused-shape factors (one set of Parameters, tied as
runtime/fused.py ties LoRA downs: the optimizer, the resume state and EMA hold them once, under the first
part's names) and its delta is its own rows of the fused Kronecker product, so the parts' updates together are
LokrModule's, and their gradients accumulate into the one set. Each part computes only the w1 rows its rows
need (kron row R = w1 row R // out_k, w2 row R % out_k). The factors start as LyCORIS inits them: w1 (or
w1_a, w1_b) and w2_a kaiming-uniform, w2_b (or a full w2) zero, drawn from the run's seeded generator. A
fused layer's rank and alpha are its parts' (peft's, from [[adapter.blocks]]), its factor, decompose_both and
full_matrix its block's own where that sets them (a LyCORIS map entry's; one block covers all its parts,
compiler/fused.py), else the adapter's.

Each part's class becomes a subclass whose `get_delta_weight` is its rows (`FusedLokrPart`), tied before
LyCORIS's switches wrap the class (runtime/adapters.py add_lora): use_scalar's class (one scalar per fused
layer, its parts' tied by runtime/fused.py tie_fused_scalars) and the weight decomposition (dora_wd,
runtime/lycoris_dora.py: per output row each part decomposes its own rows of the fused weight; per
input column the parts share one magnitude and the whole fused weight's column norms, tie_fused_doras) then
build on the part's rows as LokrModule builds on the fused update. The first part keeps the parts in row
order (`fused_lokr_parts`: the export stacks their dora_scale rows, the max norm takes the whole
product)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from dbspec.plan.model import FusedPlan
from dbspec.runtime.adapters import ADAPTER_NAME, full_lokr_scale
from dbspec.runtime.blocks import block_of
from dbspec.runtime.fused import fused_parts
from dbspec.runtime.lokr_factor import factorization

_KEYS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")


def lokr_shapes(
    out_dim: int,
    in_dim: int,
    rank: int,
    factor: int,
    decompose_both: bool,
    full_matrix: bool,
    unbalanced: bool,
) -> dict[str, tuple[int, int]]:
    """LyCORIS LokrModule's factor shapes for a Linear (lycoris/modules/lokr.py, Linear branch)."""
    in_m, in_n = factorization(in_dim, factor)
    out_l, out_k = factorization(out_dim, factor)
    if unbalanced:
        out_l, out_k = out_k, out_l
    shapes: dict[str, tuple[int, int]] = {}
    if decompose_both and rank < max(out_l, in_m) / 2 and not full_matrix:
        shapes.update(lokr_w1_a=(out_l, rank), lokr_w1_b=(rank, in_m))
    else:
        shapes["lokr_w1"] = (out_l, in_m)
    if rank < max(out_k, in_n) / 2 and not full_matrix:
        shapes.update(lokr_w2_a=(out_k, rank), lokr_w2_b=(rank, in_n))
    else:
        shapes["lokr_w2"] = (out_k, in_n)
    return shapes


def _init(shapes: dict[str, tuple[int, int]], generator: torch.Generator, like: torch.Tensor) -> dict:
    """LyCORIS's init order and rules: w2 (zero when full; w2_a kaiming, w2_b zero), then w1 (kaiming)."""
    params: dict[str, torch.nn.Parameter] = {}
    order = ("lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_w1", "lokr_w1_a", "lokr_w1_b")
    for key in (k for k in order if k in shapes):
        tensor = torch.empty(shapes[key], dtype=torch.float32)
        if key in ("lokr_w2", "lokr_w2_b"):
            tensor.zero_()
        else:
            bound = 1.0 / math.sqrt(shapes[key][1])  # kaiming_uniform_(a=sqrt(5)): 1 / sqrt(fan_in)
            tensor.uniform_(-bound, bound, generator=generator)
        params[key] = torch.nn.Parameter(tensor.to(device=like.device, dtype=like.dtype))
    return params


def fused_lokr_layers(
    module: torch.nn.Module, groups: tuple[FusedPlan, ...]
) -> Iterator[tuple[FusedPlan, int, list]]:
    """Per block of each fused group: (group, block index, [(part, peft LoKr layer)] of the adapted parts)."""
    for group, index, found in fused_parts(module, groups, _lokr_part):
        yield group, index, [(part, layer) for _, part, layer in found]


def _lokr_part(layer) -> bool:
    from peft.tuners.lokr import LoKrLayer

    return isinstance(layer, LoKrLayer) and ADAPTER_NAME in layer.r


def tie_fused_lokr(module: torch.nn.Module, groups: tuple[FusedPlan, ...], adapter: Any, seed: int) -> int:
    """Give every block's fused layers in `module` (peft LoKr attached) one LyCORIS LoKr each, shared by the
    parts; how many. ValueError when a fused layer's parts are adapted in part, or at other ranks or alphas
    (the compiler refuses those plans)."""
    generator = torch.Generator().manual_seed(seed + 7919)
    made = 0
    for group, index, layers in fused_lokr_layers(module, groups):
        if not layers:
            continue
        where = f"{group.blocks}.{index} fused {group.name}"
        if len(layers) != len(group.parts):
            raise ValueError(f"{where}: LoKr on a fused layer needs every part adapted ({group.parts})")
        first = layers[0][1]
        rank, alpha = first.r[ADAPTER_NAME], float(first.alpha[ADAPTER_NAME])
        if any(
            (layer.r[ADAPTER_NAME], float(layer.alpha[ADAPTER_NAME])) != (rank, alpha) for _, layer in layers
        ):
            raise ValueError(f"{where}: its parts' LoKr ranks or alphas differ")
        _check_unwrapped(where, [layer for _, layer in layers])
        bases = [layer.get_base_layer() for _, layer in layers]
        out_dim, in_dim = sum(b.out_features for b in bases), bases[0].in_features
        path = f"{group.blocks}.{index}.{layers[0][0]}"
        shapes = lokr_shapes(out_dim, in_dim, rank, *_own_split(adapter, path))
        like = next(iter(first.lokr_w1.values()), None)
        like = like if like is not None else first.lokr_w1_a[ADAPTER_NAME]
        params = _init(shapes, generator, like)
        full = "lokr_w1" in shapes and "lokr_w2" in shapes  # LokrModule: 1, sqrt(rank) with rs_lora
        scale = full_lokr_scale(rank, _own_rank_stabilized(adapter, path)) if full else alpha / rank
        out_k = shapes["lokr_w2"][0] if "lokr_w2" in shapes else shapes["lokr_w2_a"][0]
        start = 0
        for (_, layer), base in zip(layers, bases):
            for key in _KEYS:
                if ADAPTER_NAME in getattr(layer, key):
                    del getattr(layer, key)[ADAPTER_NAME]
            for key, param in params.items():
                getattr(layer, key)[ADAPTER_NAME] = param
            layer.scaling[ADAPTER_NAME] = scale
            layer.fused_lokr_rows = (start, start + base.out_features, out_k)
            layer.__class__ = _part_class(type(layer))
            start += base.out_features
        first.fused_lokr_parts = [layer for _, layer in layers]
        made += 1
    return made


def _own_rank_stabilized(adapter: Any, path: str) -> bool:
    """LyCORIS's rs_lora on the fused layer whose first part is at `path`: its block's own (a LyCORIS map
    entry's), else the adapter's."""
    block = block_of(adapter.blocks, path)
    if block is None or block.rank_stabilized == "adapter":
        return adapter.lokr_rank_stabilized
    return block.rank_stabilized == "on"


def _own_split(adapter: Any, path: str) -> tuple[int, bool, bool, bool]:
    """(factor, decompose_both, full_matrix, unbalanced_factorization) of the fused layer whose first part is
    at `path`: its block's own (a LyCORIS map entry's; one block covers every part of a fused layer), else
    the adapter's."""
    keys = ("decompose_both", "full_matrix", "unbalanced_factorization")
    block = block_of(adapter.blocks, path)
    if block is None:
        return adapter.factor, *(getattr(adapter, key) for key in keys)
    switch = [
        getattr(adapter, key) if getattr(block, key) == "adapter" else getattr(block, key) == "on"
        for key in keys
    ]
    return block.factor or adapter.factor, *switch


def fused_factors(layer, adapter: str = ADAPTER_NAME) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused layer's (w1, w2) the part's layer holds."""
    w1 = (
        layer.lokr_w1[adapter]
        if adapter in layer.lokr_w1
        else layer.lokr_w1_a[adapter] @ layer.lokr_w1_b[adapter]
    )
    w2 = (
        layer.lokr_w2[adapter]
        if adapter in layer.lokr_w2
        else layer.lokr_w2_a[adapter] @ layer.lokr_w2_b[adapter]
    )
    return w1, w2


class FusedLokrPart:
    """Mixin put in front of peft's LoKr layer class: the update is this part's rows of the fused layer's
    kron(w1, w2) x scale (peft LoKrLayer.get_delta_weight's place, under the switches' classes)."""

    def get_delta_weight(self, adapter_name: str, *, apply_rank_dropout: bool = False) -> torch.Tensor:
        if apply_rank_dropout:
            raise ValueError("rank dropout on a fused LoKr layer is not supported")
        start, stop, out_k = self.fused_lokr_rows
        w1, w2 = fused_factors(self, adapter_name)
        first, last = start // out_k, (stop - 1) // out_k + 1
        rows = torch.kron(w1[first:last], w2)[start - first * out_k : stop - first * out_k]
        return rows * self.scaling[adapter_name]


_CLASSES: dict[type, type] = {}


def _part_class(cls: type) -> type:
    """peft LoKr layer class `cls` with FusedLokrPart in front (registered here by name)."""
    if issubclass(cls, FusedLokrPart):
        return cls
    if cls not in _CLASSES:
        made = type(f"FusedLokr_{cls.__name__}", (FusedLokrPart, cls), {"__module__": __name__})
        _CLASSES[cls] = made
        globals()[made.__name__] = made
    return _CLASSES[cls]


def _check_unwrapped(where: str, layers: list) -> None:
    """The parts' classes are peft's own: LyCORIS's switches (use_scalar, dora_wd) wrap the fused part's
    class, so the parts are tied before them."""
    from dbspec.runtime.lycoris_dora import LycorisDora
    from dbspec.runtime.lycoris_switches import _ScalarLayer

    if any(isinstance(layer, (LycorisDora, _ScalarLayer)) for layer in layers):
        raise ValueError(f"{where}: a fused LoKr's parts are tied before use_scalar / dora_wd wrap them")


def fused_lokr_update(layer, adapter: str = ADAPTER_NAME) -> torch.Tensor:
    """The whole fused layer's kron(w1, w2) x scale (LokrModule's get_weight: no scalar), from any part."""
    w1, w2 = fused_factors(layer, adapter)
    return torch.kron(w1, w2) * layer.scaling[adapter]

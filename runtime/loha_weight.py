"""LoHa's weight update as LyCORIS's LohaModule computes and differentiates it, on peft's LoHa layers.

Two defects of peft 0.21's LoHa against LyCORIS (lycoris/modules/loha.py, what kohya's `lycoris.kohya`
network trains with `algo = loha`):

- The Tucker form (`use_effective_conv2d`, LyCORIS `use_tucker`, `plan.adapter.tucker`) goes through peft's
  `HadaWeightCP`, whose hand-written backward pairs `hada_w1_a` with the second product's core (and
  `hada_w2_a` with the first's): those two factors get wrong gradients (the forward is right). Here the same
  product, ΔW = (t1 ×₁ w1_a ×₂ w1_b) ⊙ (t2 ×₁ w2_a ×₂ w2_b) · alpha / rank, is written with einsums that
  autograd differentiates, which gives LyCORIS's (corrected) gradients. The plain form keeps peft's
  `HadaWeight`, whose backward is LyCORIS's.
- Rank dropout: peft's LoHa always divides the kept rows by the mask's mean; LyCORIS does so only with
  `rank_dropout_scale` (default off). Here the mask is drawn as both draw it (one `torch.rand(out)` on the
  CPU, a row kept where it exceeds `rank_dropout`) and rescaled only where the layer's
  `rank_dropout_scale[adapter]` (peft's LycorisLayer table, which peft's LoHa leaves empty) says so, set from
  `plan.adapter.rank_dropout_scale`. (peft's LoKr already follows that flag: `LoKrConfig.rank_dropout_scale`.)

The layers are peft's LoHa Linear, Conv1d and Conv2d with their class switched after injection to a subclass
with this module's mixin (the same parameters, names and saved layout); LyCORIS's weight decomposition
(runtime/lycoris_dora.py) stacks on top of it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from dbspec.runtime.kohya_rows import in_kohya_rows
from dbspec.runtime.peft_draw import NoIdleDraw

_CLASSES: dict[type, type] = {}


def tucker_product(t: torch.Tensor, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """One LoHa Tucker factor, t ×₁ waᵀ ×₂ wbᵀ: core (rank, rank, k...), wa (rank, out), wb (rank, in) ->
    (out, in, k...), as LyCORIS's einsum (autograd differentiates it)."""
    return torch.einsum("i j ..., j r, i p -> p r ...", t, wb, wa)


def rank_dropout_mask(weight: torch.Tensor, p: float, rescale: bool) -> torch.Tensor:
    """LyCORIS's rank-dropout mask of `weight` (LohaModule / LokrModule `get_weight`): one uniform draw per
    output row from torch's global CPU generator, the row kept where it exceeds `p`; with `rescale`
    (LyCORIS `rank_dropout_scale`) the kept rows divided by the kept share. Shaped to broadcast."""
    drop = (torch.rand(weight.size(0)) > p).to(weight.dtype)
    drop = drop.view(-1, *[1] * (weight.dim() - 1)).to(weight.device)
    if rescale:
        drop /= drop.mean()
    return drop


class LycorisLoha(NoIdleDraw):
    """Mixin put in front of a peft LoHa layer class: LyCORIS's ΔW and rank dropout (module docstring), and
    no module-dropout draw without a rate (runtime/peft_draw.py: LohaModule draws none)."""

    def get_delta_weight(self, adapter_name: str, *, apply_rank_dropout: bool = False) -> torch.Tensor:
        scale = self.scaling[adapter_name]
        if adapter_name in self.hada_t1:
            first = tucker_product(
                self.hada_t1[adapter_name], self.hada_w1_a[adapter_name], self.hada_w1_b[adapter_name]
            )
            second = tucker_product(
                self.hada_t2[adapter_name], self.hada_w2_a[adapter_name], self.hada_w2_b[adapter_name]
            )
            weight = first * second * scale
        else:
            from peft.tuners.loha.layer import make_weight  # its backward is LyCORIS's HadaWeight's

            w1a = self.hada_w1_a[adapter_name]
            weight = make_weight(
                w1a,
                self.hada_w1_b[adapter_name],
                self.hada_w2_a[adapter_name],
                self.hada_w2_b[adapter_name],
                scale=torch.tensor(scale, dtype=w1a.dtype, device=w1a.device),
            )
        weight = weight.reshape(self.get_base_layer().weight.shape)
        if apply_rank_dropout:
            rescale = bool(self.rank_dropout_scale.get(adapter_name, False))
            mask = rank_dropout_mask(weight, self.rank_dropout[adapter_name], rescale)
            weight = weight * in_kohya_rows(mask, self)  # SD3 / Flux's swapped modulation rows
        return weight


def loha_class(cls: type) -> type:
    """The subclass of peft LoHa layer class `cls` with LyCORIS's update."""
    if issubclass(cls, LycorisLoha):
        return cls
    if cls not in _CLASSES:
        made = type(f"LycorisLoha_{cls.__name__}", (LycorisLoha, cls), {"__module__": __name__})
        _CLASSES[cls] = made
        globals()[made.__name__] = made  # pickled by reference, as a module-level class
    return _CLASSES[cls]


def __getattr__(name: str) -> type:
    """The generated classes by name (a fresh process unpickling a converted layer)."""
    if not name.startswith("LycorisLoha_"):
        raise AttributeError(name)
    for cls in peft_loha_classes():
        loha_class(cls)
    if name not in globals():
        raise AttributeError(name)
    return globals()[name]


def peft_loha_classes() -> tuple[type, ...]:
    from peft.tuners.loha import layer

    return (layer.Linear, layer.Conv1d, layer.Conv2d)


def use_lycoris_loha(module: nn.Module, adapter: str, rank_dropout_scale: bool) -> int:
    """Every peft LoHa layer of `module` carrying `adapter` computes LyCORIS's update, its rank dropout
    rescaled only with `rank_dropout_scale`; how many layers."""
    from peft.tuners.loha import LoHaLayer

    layers = [m for m in module.modules() if isinstance(m, LoHaLayer) and adapter in m.r]
    for layer in layers:
        layer.__class__ = loha_class(type(layer))
        layer.rank_dropout_scale[adapter] = rank_dropout_scale
    return len(layers)


def loha_delta(layer: Any, adapter: str, apply_rank_dropout: bool) -> torch.Tensor:
    """A LoHa layer's ΔW the LyCORIS way, whatever its class (converted or peft's own)."""
    return LycorisLoha.get_delta_weight(layer, adapter, apply_rank_dropout=apply_rank_dropout)


@contextmanager
def loha_tucker_layers(own: dict[str, bool]) -> Iterator[None]:
    """peft builds the LoHa layers of `own` ({module path: Tucker form}, a block's own `tucker`: LyCORIS's
    map entries' use_tucker) with a LoHaConfig `use_effective_conv2d` of their own inside the block (peft's
    update_layer reads it off the config it is handed); the others with the config's."""
    from peft.tuners.loha.model import LoHaModel

    create = LoHaModel._create_and_replace

    def create_and_replace(self, config, adapter_name, target, target_name, parent, current_key):
        if current_key in own:
            config = dataclasses.replace(config, use_effective_conv2d=own[current_key])
        return create(self, config, adapter_name, target, target_name, parent, current_key)

    LoHaModel._create_and_replace = create_and_replace
    try:
        yield
    finally:
        LoHaModel._create_and_replace = create


def tucker_of_state(state: dict[str, torch.Tensor], config) -> dict[str, bool]:
    """{path: Tucker form} of the saved LoHa layers built otherwise than peft's `config` says (a run whose
    blocks gave convolutions their own tucker): a Tucker core (`hada_t1`) is the form."""
    layers = {key.rsplit(".", 1)[0] for key in state if key.endswith(".hada_w1_a")}
    held = {key.rsplit(".", 1)[0] for key in state if key.endswith(".hada_t1")}
    own = {path: path in held for path in layers}
    return {path: on for path, on in own.items() if on != config.use_effective_conv2d}

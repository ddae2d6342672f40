"""peft's LoHa / LoKr training forward without its module-dropout draw where the rate is 0.

peft 0.21's LoHa and LoKr layers (peft/tuners/loha/layer.py, lokr/layer.py `forward`) draw `torch.rand(1)`
from torch's global generator in every training forward, to compare it with `module_dropout`, even when that
rate is 0. LyCORIS's LohaModule and LokrModule (lycoris-lora 4.1.3, what kohya's `lycoris.kohya` network
trains) draw it only when module_dropout is set. Anything else a run draws from that generator (rank
dropout's row masks, other kinds' module dropout, the noise) would then come from another state than
kohya's. `NoIdleDraw` runs peft's forward as in evaluation where no active adapter of the layer has a rate,
the rank dropout still applied as in training; with a rate it is peft's forward, which draws what LyCORIS
draws (one number, the update kept above the rate: LyCORIS skips it below).

LoHa layers get it through runtime/loha_weight.py's class; LoKr layers through `LycorisLokr` here: peft's
LoKr Linear, Conv1d and Conv2d (or the class LyCORIS's switches and a fused layer's parts put on them) with
their class switched after injection to a subclass with this mixin (the same parameters, names and saved
layout). A layer with LyCORIS's weight decomposition (runtime/lycoris_dora.py) keeps its class: its own
forward draws only with the rate."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

_CLASSES: dict[type, type] = {}


class NoIdleDraw:
    """Mixin put in front of a peft LoHa / LoKr layer class: no module-dropout draw without a rate."""

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """peft's forward, without its module-dropout draw where the rate is 0 (module docstring): run as
        in evaluation there, the rank dropout still applied as in training (_get_delta_activations)."""
        rates = [self.module_dropout.get(a, 0.0) for a in self.active_adapters if a in self.module_dropout]
        if not self.training or any(rates):
            return super().forward(x, *args, **kwargs)
        self.training, self.dbspec_training = False, True
        try:
            return super().forward(x, *args, **kwargs)
        finally:
            self.training, self.dbspec_training = True, False

    def _get_delta_activations(self, adapter_name: str, input: torch.Tensor, *args: Any, **kwargs: Any):
        if not self.__dict__.get("dbspec_training", False):
            return super()._get_delta_activations(adapter_name, input, *args, **kwargs)
        self.training = True  # the rank dropout of a training forward (forward above)
        try:
            return super()._get_delta_activations(adapter_name, input, *args, **kwargs)
        finally:
            self.training = False


class LycorisLokr(NoIdleDraw):
    """Mixin put in front of a peft LoKr layer class: LokrModule's draws (module docstring)."""


def lokr_class(cls: type) -> type:
    """The subclass of peft LoKr layer class `cls` (or a class put on one) that draws as LokrModule."""
    if issubclass(cls, LycorisLokr):
        return cls
    if cls not in _CLASSES:
        made = type(f"LycorisLokr_{cls.__name__}", (LycorisLokr, cls), {"__module__": __name__})
        _CLASSES[cls] = made
        globals()[made.__name__] = made  # pickled by reference, as a module-level class
    return _CLASSES[cls]


def __getattr__(name: str) -> type:
    """The generated classes of peft's own LoKr classes by name (a fresh process unpickling a layer)."""
    if not name.startswith("LycorisLokr_"):
        raise AttributeError(name)
    from peft.tuners.lokr import layer

    for cls in (layer.Linear, layer.Conv1d, layer.Conv2d):
        lokr_class(cls)
    if name not in globals():
        raise AttributeError(name)
    return globals()[name]


def use_lycoris_lokr(module: nn.Module, adapter: str) -> int:
    """Every peft LoKr layer of `module` carrying `adapter` draws as LokrModule (no LyCORIS weight
    decomposition on it: that forward draws as LokrModule already); how many layers."""
    from peft.tuners.lokr import LoKrLayer

    from dbspec.runtime.lycoris_dora import LycorisDora

    layers = [
        m
        for m in module.modules()
        if isinstance(m, LoKrLayer) and adapter in m.r and not isinstance(m, LycorisDora | NoIdleDraw)
    ]
    for layer in layers:
        layer.__class__ = lokr_class(type(layer))
    return len(layers)

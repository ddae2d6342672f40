"""The forward dbspec's own peft adapter layers share (LoCon's Tucker form, LyCORIS's full, IA^3 and
Diag-OFT): the base layer's output plus each active adapter's, one adapter per batch."""

from __future__ import annotations

from typing import Any

import torch


class AddedOutput:
    """Mixin put before the peft layer class: `forward` adds `_added(x, adapter)` for every active adapter
    the layer holds (`_holds`: the name of its per-adapter ModuleDict/ParameterDict); `_title` names the
    layer kind in messages."""

    _holds: str
    _title: str

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        raise NotImplementedError

    def _base_only(self, x: torch.Tensor, args: tuple, kwargs: dict) -> bool:
        """Check the call (one adapter set per batch; peft's variant argument `alora_offsets`, never given
        to a base layer, taken out of `kwargs`) and say whether the base layer alone answers: adapters
        disabled, merged ones unmerged first."""
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(f"{self._title} does not mix adapters in one batch")
        kwargs.pop("alora_offsets", None)
        if self.disable_adapters and self.merged:
            self.unmerge()
        return bool(self.disable_adapters)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        if self.merged:
            return result
        dtype = result.dtype
        held = getattr(self, self._holds)
        for adapter in self.active_adapters:
            if adapter in held:
                result = result + self._added(x, adapter)
        return result.to(dtype)


class WeightDelta(AddedOutput):
    """AddedOutput for layers whose update is a weight delta (`get_delta_weight`) with no bias: the added
    output is the base layer's op on the delta, and merge/unmerge add and remove the delta it had then."""

    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, torch.nn.Conv2d):
            return torch.nn.functional.conv2d(x, weight, None, base.stride, base.padding, base.dilation)
        return torch.nn.functional.linear(x, weight)

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        delta = self.get_delta_weight(adapter)
        return self._op(self._cast_input_dtype(x, delta.dtype), delta)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        for adapter in adapter_names or self.active_adapters:
            if adapter in getattr(self, self._holds) and adapter not in self.merged_adapters:
                with torch.no_grad():
                    delta = self.get_delta_weight(adapter)
                    base.weight.data += delta.to(base.weight.dtype)
                self._merged_deltas = {**getattr(self, "_merged_deltas", {}), adapter: delta}
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            delta = self._merged_deltas.pop(self.merged_adapters.pop())
            with torch.no_grad():
                base.weight.data -= delta.to(base.weight.dtype)

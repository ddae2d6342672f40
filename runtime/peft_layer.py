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

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        self._check_forward_args(x, *args, **kwargs)
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(f"{self._title} does not mix adapters in one batch")
        kwargs.pop("alora_offsets", None)  # peft's variant argument; never given to a base layer
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
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

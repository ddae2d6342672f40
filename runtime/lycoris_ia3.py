"""LyCORIS's `algo = ia3` (plan.adapter.kind "ia3") as a peft LoRA custom layer.

LyCORIS's IA3Module (lycoris/modules/ia3.py) trains one scale per output channel of a layer (per input
channel with `train_on_input`), `weight`, starting at 0: the layer's weight becomes W x (1 + s), broadcast
over its rows (or columns), and its forward adds op(x, W (1 + s) - W), the merged weight cast to W's dtype
first (a bf16 base rounds it), with no bias, so the bias is not scaled. It saves `weight` (Linear: (out,) or
(in,); convolution: (1, out or in, 1, 1)) and `on_input` (0 or 1).

peft's own IA3 is another update: it scales the layer's whole output (bias included) by a vector that starts
at 1, so its weight decay pulls towards 0 where LyCORIS's pulls towards the base layer. `Ia3Layer` is
LyCORIS's form on peft's LoRA machinery (custom modules, as locon_tucker.py): the scales are a
`lora_ia3` ParameterDict (peft's `lora_` prefix: peft's adapter state dicts, dbspec's trainable-weight filter
and checkpoints hold them). peft builds a custom layer without its module path, so which side a layer scales
rides on peft's per-module rank (`rank_pattern`, saved in its JSON config): rank 2 is the input side, 1 the
output side. Linear and ungrouped Conv2d layers.

`bypass` (plan.adapter.bypass, LyCORIS `bypass_mode`; IA3Module._bypass_forward): the layer's output (its bias
included) times (1 + s) on the output side, the layer applied to x times (1 + s) on the input side (the same
update as the default forward there); merging scales the bias too. The saved tensors are the same."""

from __future__ import annotations

import re
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from dbspec.runtime.peft_layer import AddedOutput

INPUT_SIDE_RANK = 2  # peft's per-module rank marking LyCORIS's train_on_input


class Ia3Layer(AddedOutput, nn.Module, LoraLayer):
    """LyCORIS's IA3Module: a trained scale per output (or input) channel of the frozen layer's weight."""

    _holds = "lora_ia3"
    _title = "LyCORIS's IA^3"

    adapter_layer_names = ("lora_ia3",)

    def __init__(
        self,
        base_layer: nn.Module,
        adapter_name: str,
        config=None,
        r: int = 1,
        bypass: bool = False,
        **kwargs: Any,
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        self.lora_ia3 = nn.ParameterDict()
        self.on_input: dict[str, bool] = {}
        self.ia3_bypass = bypass  # LyCORIS bypass_mode: the output scaled, its bias too
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r)

    def update_layer(self, adapter_name: str, config, r: int = 1, *args: Any, **kwargs: Any) -> None:
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's IA^3: grouped or non-zero-padded convolutions are not supported")
        on_input = r == INPUT_SIDE_RANK
        self.r[adapter_name] = r  # peft's bookkeeping: the side, not a rank
        self.scaling[adapter_name] = 1.0
        self.on_input[adapter_name] = on_input
        size = base.weight.shape[1] if on_input else base.weight.shape[0]
        shape = (1, size, *[1] * (base.weight.dim() - 2)) if isinstance(base, nn.Conv2d) else (size,)
        self.lora_ia3[adapter_name] = nn.Parameter(torch.zeros(shape, dtype=torch.float32))
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """W x s on the layer's rows (or columns), as IA3Module.forward computes it: the merged weight
        W x (1 + s) cast to W's dtype, minus W. Over a bf16 base (kohya's frozen U-Net under bf16) that is
        round(W (1 + s)) - W, not round(W x s): a scale below half of W's bf16 step changes nothing in the
        forward while its gradient still flows (through the cast), as in kohya's run."""
        scale = self.lora_ia3[adapter]
        base = self.get_base_layer().weight.detach()
        weight = base.to(scale.dtype)
        if self.on_input[adapter]:
            merged = weight * (scale + 1)
        else:
            merged = (weight.transpose(0, 1) * (scale + 1)).transpose(0, 1)
        return merged.to(base.dtype) - base

    def _op(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        base = self.get_base_layer()
        if isinstance(base, nn.Conv2d):
            return F.conv2d(x, weight, None, base.stride, base.padding, base.dilation)
        return F.linear(x, weight)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """AddedOutput's forward, or with `ia3_bypass` LyCORIS's bypass forward (IA3Module._channel_scale:
        the channels of dimension 1 of a convolution's, the last of a linear's, times w + 1)."""
        if not self.ia3_bypass:
            return super().forward(x, *args, **kwargs)
        if self._base_only(x, args, kwargs):
            return self.base_layer(x, *args, **kwargs)
        if self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = [a for a in self.active_adapters if a in self.lora_ia3]
        conv = isinstance(self.get_base_layer(), nn.Conv2d)
        for adapter in active:  # the input side first: it scales what the layer reads
            if self.on_input[adapter]:
                x = self._channel_scale(x, adapter, conv)
        result = self.base_layer(x, *args, **kwargs)
        dtype = result.dtype
        for adapter in active:
            if not self.on_input[adapter]:
                result = self._channel_scale(result, adapter, conv)
        return result.to(dtype)

    def _channel_scale(self, x: torch.Tensor, adapter: str, conv: bool) -> torch.Tensor:
        """x times (w + 1) on its channel axis (w: (1, C, 1, 1) on a convolution's dimension 1, (C,) on a
        linear's last), in x's dtype."""
        scale = self.lora_ia3[adapter]
        return (x * (scale + 1)).to(x.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        base = self.get_base_layer()
        for adapter in adapter_names or self.active_adapters:
            if adapter in self.lora_ia3 and adapter not in self.merged_adapters:
                with torch.no_grad():
                    base.weight.data += self.get_delta_weight(adapter).to(base.weight.dtype)
                    if self.ia3_bypass and not self.on_input[adapter] and base.bias is not None:
                        scale = self.lora_ia3[adapter].detach().reshape(-1)  # the bias scaled too
                        base.bias.data = (base.bias.data.to(scale.dtype) * (scale + 1)).to(base.bias.dtype)
                self.merged_adapters.append(adapter)

    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            adapter = self.merged_adapters.pop()
            scale = self.lora_ia3[adapter].detach()
            if self.ia3_bypass and not self.on_input[adapter] and base.bias is not None:
                with torch.no_grad():
                    flat = scale.reshape(-1)
                    base.bias.data = (base.bias.data.to(flat.dtype) / (1 + flat)).to(base.bias.dtype)
            with torch.no_grad():  # W (1 + s) back to W
                merged = base.weight.data.to(scale.dtype)
                if self.on_input[adapter]:
                    restored = merged / (1 + scale)
                else:
                    restored = (merged.transpose(0, 1) / (1 + scale)).transpose(0, 1)
                base.weight.data = restored.to(base.weight.dtype)

    def _added(self, x: torch.Tensor, adapter: str) -> torch.Tensor:
        delta = self.get_delta_weight(adapter)
        return self._op(self._cast_input_dtype(x, delta.dtype), delta)

    def __repr__(self) -> str:
        return "lycoris_ia3." + super().__repr__()


def tie_fused_ia3_inputs(module: nn.Module, fused) -> int:
    """LyCORIS's one IA3Module with train_on_input on a fused Linear (plan.adapter.fused: Flux, SD3, Chroma;
    a block of kind ia3's `on_input`): one scale per input column, which every part reads, so the parts'
    input-side `lora_ia3` entries become one Parameter, the first part's (each part computes
    W_p ((1 + s) x) + b_p, its rows of kohya's fused output; autograd sums the parts' gradients into it, as
    the fused module's). ValueError when a fused layer's parts are adapted in part. How many fused layers."""
    from dbspec.runtime.adapters import ADAPTER_NAME
    from dbspec.runtime.fused import tie_parts

    def adapted(layer) -> bool:
        return isinstance(layer, Ia3Layer) and ADAPTER_NAME in layer.lora_ia3 and layer.on_input[ADAPTER_NAME]

    def tie(layer, first) -> None:
        layer.lora_ia3[ADAPTER_NAME] = first.lora_ia3[ADAPTER_NAME]

    def same(layer) -> tuple:
        return (tuple(layer.lora_ia3[ADAPTER_NAME].shape), layer.ia3_bypass)

    return tie_parts(module, fused, adapted, "LyCORIS's IA^3 on the input side", same, "input width", tie)


def dispatch_ia3(target: nn.Module, adapter_name: str, config, **kwargs: Any) -> nn.Module | None:
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return Ia3Layer(target, adapter_name, config=config, r=kwargs.get("r", 1))
    return None


def dispatch_ia3_bypass(target: nn.Module, adapter_name: str, config, **kwargs: Any) -> nn.Module | None:
    """dispatch_ia3 building layers that run LyCORIS's bypass forward."""
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return Ia3Layer(target, adapter_name, config=config, r=kwargs.get("r", 1), bypass=True)
    return None


def ia3_config(targets: list[str], input_targets: tuple[str, ...], bypass: bool = False):
    """A LoraConfig building Ia3Layer on every target, the input-side ones marked by peft's per-module
    rank; `bypass`: LyCORIS's bypass forward."""
    from peft import LoraConfig

    config = LoraConfig(
        r=1,
        lora_alpha=1.0,
        target_modules=targets,
        # only this module's targets: peft warns of a pattern that matches none of its layers
        rank_pattern={re.escape(t): INPUT_SIDE_RANK for t in input_targets if t in targets},
    )
    return with_ia3(config, bypass)


def with_ia3(config, bypass: bool = False):
    """`config` building Ia3Layer on every target (`bypass`: in LyCORIS's bypass forward); as with_tucker,
    the registration lives on the config."""
    dispatch = dispatch_ia3_bypass if bypass else dispatch_ia3
    config._register_custom_module({nn.Linear: dispatch, nn.Conv2d: dispatch})
    return config


def is_ia3(config) -> bool:
    """`config` builds Ia3Layer (with_ia3): a LoraConfig whose keys are `lora_ia3` (a run of several kinds
    holds LoRA's too under one adapter name, runtime/mixed_kinds.py)."""
    found = (getattr(config, "_custom_modules", None) or {}).values()
    return dispatch_ia3 in found or dispatch_ia3_bypass in found


def has_ia3(state: dict[str, torch.Tensor]) -> bool:
    """A peft LoRA state dict of LyCORIS IA^3 layers."""
    return any(".lora_ia3" in key for key in state)

"""LyCORIS's `algo = glora` (plan.adapter.kind "glora", lycoris/modules/glora.py) as a peft LoRA custom layer.

GLoRAModule trains two low-rank pairs on a layer: A = a1 a2 acting on the weight's input side and B = b1 b2 a
low-rank update, ΔW = (W a1 a2 + b1 b2) x alpha / rank (alpha 0: the rank, scale 1). Shapes as LyCORIS saves
them: `a1.weight` (in, rank[, 1, 1]), `a2.weight` (rank, in[, 1, 1]), `b1.weight` (out, rank[, 1, 1]),
`b2.weight` (rank, in[, k, k]); a1 and b1 start kaiming-uniform (a = sqrt 5), a2 and b2 at zero, so a run
starts at the base model. The forward adds op(x, ΔW) with no bias. Linear and ungrouped, zero-padded Conv2d
layers (its use_scalar is not built here; its Tucker form LyCORIS never builds). peft's rank and alpha
(rank_pattern / alpha_pattern for the convolutions) are GLoRA's, so they ride in peft's JSON config."""

from __future__ import annotations

import math
from typing import Any

import torch
from peft.tuners.lora.layer import LoraLayer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from dbspec.runtime.peft_layer import WeightDelta

_PARTS = ("lora_glora_a1", "lora_glora_a2", "lora_glora_b1", "lora_glora_b2")


class GloraLayer(WeightDelta, nn.Module, LoraLayer):
    """LyCORIS's GLoRAModule: W a1 a2 + b1 b2, scaled by alpha / rank."""

    _holds = "lora_glora_a1"
    _title = "LyCORIS's glora"

    adapter_layer_names = _PARTS

    def __init__(
        self, base_layer: nn.Module, adapter_name: str, config=None, r: int = 4, lora_alpha: float = 1.0, **kw
    ):
        super().__init__()
        LoraLayer.__init__(self, base_layer)
        for part in _PARTS:
            setattr(self, part, nn.ParameterDict())
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, config, r, lora_alpha)

    def update_layer(self, adapter_name: str, config, r: int, lora_alpha: float, *args: Any, **kwargs: Any):
        base = self.get_base_layer()
        conv = isinstance(base, nn.Conv2d)
        if conv and (base.groups != 1 or base.padding_mode != "zeros"):
            raise ValueError("LyCORIS's glora: grouped or non-zero-padded convolutions are not supported")
        out_dim, in_dim, *kernel = base.weight.shape
        point = (1, 1) if conv else ()
        alpha = lora_alpha or r
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = alpha
        self.scaling[adapter_name] = alpha / r
        shapes = {
            "lora_glora_a1": (in_dim, r, *point),
            "lora_glora_a2": (r, in_dim, *point),
            "lora_glora_b1": (out_dim, r, *point),
            "lora_glora_b2": (r, in_dim, *kernel),
        }
        for part, shape in shapes.items():
            weight = torch.zeros(shape)
            if part in ("lora_glora_a1", "lora_glora_b1"):  # LyCORIS: "same as microsoft's"
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
            getattr(self, part)[adapter_name] = nn.Parameter(weight)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=getattr(config, "inference_mode", False))

    def get_delta_weight(self, adapter: str) -> torch.Tensor:
        """(W a1 a2 + b1 b2) x scale: LyCORIS's get_diff_weight."""
        a1, a2, b1, b2 = (getattr(self, part)[adapter] for part in _PARTS)
        weight = self.get_base_layer().weight.to(a1.dtype)
        wb = (b1.flatten(1) @ b2.flatten(1)).view(weight.shape)
        wa = torch.einsum("o i ..., i j -> o j ...", weight, a1.flatten(1))
        wa = torch.einsum("o i ..., i j -> o j ...", wa, a2.flatten(1))
        return (wb + wa) * self.scaling[adapter]

    def lycoris_weights(self, adapter: str) -> dict[str, torch.Tensor]:
        """GLoRAModule's state-dict names for this layer's tensors (its alpha: self.lora_alpha)."""
        return {f"{part.removeprefix('lora_glora_')}.weight": getattr(self, part)[adapter] for part in _PARTS}

    def __repr__(self) -> str:
        return "lycoris_glora." + super().__repr__()


def dispatch_glora(target: nn.Module, adapter_name: str, config, **kwargs: Any):
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if isinstance(base, (nn.Linear, nn.Conv2d)):
        return GloraLayer(
            target,
            adapter_name,
            config=config,
            r=kwargs.get("r", config.r),
            lora_alpha=kwargs.get("lora_alpha", config.lora_alpha),
        )
    return None


def glora_config(targets: list[str], rank: int, alpha: float):
    """A LoraConfig building GloraLayer on every target (peft's rank and alpha are GLoRA's)."""
    from peft import LoraConfig

    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets)
    return with_glora(config)


def with_glora(config):
    config._register_custom_module({nn.Linear: dispatch_glora, nn.Conv2d: dispatch_glora})
    return config


def has_glora(state: dict[str, torch.Tensor]) -> bool:
    return any(".lora_glora_a1" in key for key in state)

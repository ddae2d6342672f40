"""LoRA-FA (`plan.adapter.freeze_down`, kohya's networks.lora_fa): the down projections stay at their init.

kohya's LoRA-FA module draws `lora_down` from a normal distribution with std sqrt(2 / (in + rank)) (`in` the
layer's input features, a convolution's input channels), starts `lora_up` at zero and gives the optimizer
only `lora_up`. Its network's `requires_grad_(True)` (torch's, which sets every parameter's flag and never
calls the modules' own override) still marks `lora_down` as requiring a gradient, so kohya computes it; the
optimizer's `zero_grad` never clears it (it is not the optimizer's), so it accumulates over the run, and the
gradient clipping (over all the network's parameters) counts it and scales it with the others.
`plan.adapter.frozen_down_grad = "kohya"` does the same; "none" computes no gradient for it.
"""

from __future__ import annotations

import math

import torch

from dbspec.runtime.adapters import ADAPTER_NAME


def freeze_down(module: torch.nn.Module, seed: int, grads: bool) -> list[torch.nn.Parameter]:
    """Re-draw every LoRA layer's `lora_A` (kohya's lora_down) in `module` from N(0, 2 / (in + rank)) from a
    generator seeded with `seed`, zero its `lora_B`, and freeze `lora_A` (with `grads`, it keeps requiring a
    gradient, as kohya's); returns the down weights, each once (a fused layer's shared down too)."""
    from peft.tuners.lora import LoraLayer

    generator = torch.Generator().manual_seed(seed)
    downs: dict[int, torch.nn.Parameter] = {}
    with torch.no_grad():
        for layer in module.modules():
            if not isinstance(layer, LoraLayer) or ADAPTER_NAME not in layer.lora_A:
                continue
            down = layer.lora_A[ADAPTER_NAME].weight
            layer.lora_B[ADAPTER_NAME].weight.zero_()
            if id(down) in downs:
                continue
            std = math.sqrt(2.0 / (layer.in_features + layer.r[ADAPTER_NAME]))
            drawn = torch.randn(down.shape, generator=generator, dtype=torch.float32) * std
            down.copy_(drawn.to(down.device, down.dtype))
            down.requires_grad_(grads)
            downs[id(down)] = down
    return list(downs.values())

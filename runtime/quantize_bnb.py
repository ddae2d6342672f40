"""The bitsandbytes backend of runtime/quantize.py, imported only when a plan quantises with bitsandbytes.

Each Linear layer is replaced by bitsandbytes' Linear4bit (nf4: 4-bit NormalFloat, blocks of 64 with double-
quantised absmax, the QLoRA format) or Linear8bitLt (int8: LLM.int8, per-row scales with the 6.0 outlier
threshold transformers uses); the weights quantise when the layer moves to its device. Convolutions stay in
float. Both run on the CPU through bitsandbytes' CPU backend (bitsandbytes >= 0.45; tested in
tests/runtime/test_quantize_backends.py) and on CUDA; peft wraps them with its bitsandbytes LoRA layers.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import bitsandbytes as bnb
import torch

FORMATS = ("nf4", "int8")
LLM_INT8_THRESHOLD = 6.0  # transformers' BitsAndBytesConfig default


def quantize(module: torch.nn.Module, kind: str, exclude: Sequence[str]) -> int:
    targets = [
        (name, layer)
        for name, layer in module.named_modules()
        if type(layer) is torch.nn.Linear and not any(fnmatch(name, pattern) for pattern in exclude)
    ]
    for name, layer in targets:
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, _quantised(layer, kind))
    module.requires_grad_(False)
    return len(targets)


def _quantised(layer: torch.nn.Linear, kind: str) -> torch.nn.Module:
    weight, bias, device = layer.weight.data, layer.bias, layer.weight.device
    has_bias = bias is not None
    if kind == "nf4":
        new = bnb.nn.Linear4bit(
            layer.in_features, layer.out_features, bias=has_bias, compute_dtype=weight.dtype, quant_type="nf4"
        )
        new.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    else:
        new = bnb.nn.Linear8bitLt(
            layer.in_features,
            layer.out_features,
            bias=has_bias,
            has_fp16_weights=False,
            threshold=LLM_INT8_THRESHOLD,
        )
        new.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        new.bias = torch.nn.Parameter(bias.data, requires_grad=False)
    return new.to(device)  # bitsandbytes quantises a weight when it moves to a device


def is_quantized(module: torch.nn.Module) -> bool:
    return any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in module.modules())

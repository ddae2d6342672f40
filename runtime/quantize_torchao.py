"""The torchao backend of runtime/quantize.py, imported only when a plan quantises with torchao.

Weight-only quantisation of Linear layers (`torchao.quantization.quantize_`): int8 (per output row scale) and
fp8 (float8 e4m3, per row scale). The weights become torchao tensor subclasses; convolutions stay in float.
int8 runs on the CPU (tests/runtime/test_quantize_backends.py); fp8 is planned for CUDA GPUs of compute
capability >= 8.9 only (DBS342), where its kernels are meant to run.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig, quantize_

FORMATS = {"int8": Int8WeightOnlyConfig, "fp8": Float8WeightOnlyConfig}


def quantize(module: torch.nn.Module, kind: str, exclude: Sequence[str]) -> int:
    chosen: list[str] = []

    def wanted(layer: torch.nn.Module, name: str) -> bool:
        ok = isinstance(layer, torch.nn.Linear) and not any(fnmatch(name, pattern) for pattern in exclude)
        if ok:
            chosen.append(name)
        return ok

    quantize_(module, FORMATS[kind](), filter_fn=wanted)
    module.requires_grad_(False)
    return len(chosen)


def is_quantized(module: torch.nn.Module) -> bool:
    from torchao.utils import TorchAOBaseTensor

    return any(
        isinstance(getattr(m, "weight", None), TorchAOBaseTensor)
        or isinstance(getattr(getattr(m, "weight", None), "data", None), TorchAOBaseTensor)
        for m in module.modules()
    )

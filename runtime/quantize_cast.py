"""The cast backend of runtime/quantize.py: kohya's `--fp8_base`, frozen weights stored as float8_e4m3fn.

kohya's train_network.py casts the frozen U-Net (and, with `--fp8_base`, the text encoders, their embeddings
left in the mixed-precision dtype) to `torch.float8_e4m3fn`: a plain dtype cast, no scale, and computes under
autocast, which upcasts each weight at its use. Here every floating parameter of the module's layers (every
layer but `torch.nn.Embedding` and those named in `exclude`) is cast the same way and registered behind a
parametrisation that upcasts it to the dtype it had (the plan's dtype of the component) whenever the layer
reads it. The values a layer computes with are exactly kohya's: a float8_e4m3fn value is exact in bf16, fp16
and fp32. It runs on every device (no fp8 kernels: only casts), 1 byte per stored weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatch

import torch
from torch.nn.utils import parametrize

STORAGE = torch.float8_e4m3fn


class Upcast(torch.nn.Module):
    """Parametrisation: the stored float8 weight, read in `dtype`."""

    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.to(self.dtype)


def quantize(
    module: torch.nn.Module, kind: str, exclude: Sequence[str], dtype: torch.dtype | None = None
) -> int:
    """Cast the weights as they are (kohya casts the fp32 weights it loaded straight to float8: one rounding,
    not two through bf16) and read them in `dtype` (default: each weight's own dtype); the parameters and
    buffers left alone (embeddings, `exclude`) are cast to `dtype`. Returns the number of layers cast."""
    if kind != "fp8":
        raise ValueError(f"the cast backend stores fp8 only, not {kind!r}")
    module.requires_grad_(False)
    layers = 0
    for name, layer in list(module.named_modules()):
        if isinstance(layer, torch.nn.Embedding) or any(fnmatch(name, pattern) for pattern in exclude):
            continue
        own = [n for n, p in layer.named_parameters(recurse=False) if p.is_floating_point()]
        for pname in own:
            read_as = dtype or getattr(layer, pname).dtype
            # the cast first: the parametrisation keeps what it is given as its `original`
            setattr(layer, pname, torch.nn.Parameter(getattr(layer, pname).detach().to(STORAGE), False))
            parametrize.register_parametrization(layer, pname, Upcast(read_as), unsafe=True)
            getattr(layer.parametrizations, pname).original.requires_grad_(False)
        layers += bool(own)
    if (
        dtype is not None
    ):  # what stays in float takes the planned dtype (not `module.to`: it would upcast fp8)
        for layer in module.modules():
            for store in (layer._parameters, layer._buffers):
                for t in store.values():
                    if t is not None and t.is_floating_point() and t.dtype != STORAGE:
                        t.data = t.data.to(dtype)
    return layers


def is_quantized(module: torch.nn.Module) -> bool:
    return any(
        isinstance(p, Upcast)
        for m in module.modules()
        if parametrize.is_parametrized(m)
        for plist in m.parametrizations.values()
        for p in plist
    )

"""Quantised frozen base weights under LoRA adapters: one interface, one module per backend.

    backend        module                 formats               layers
    quanto         quantize_quanto.py     int8, int4, fp8       Linear, Conv2d   (deprecated upstream: DBS248)
    torchao        quantize_torchao.py    int8, fp8             Linear           (weight-only)
    bitsandbytes   quantize_bnb.py        nf4, int8             Linear           (Linear4bit, Linear8bitLt)
    cast           quantize_cast.py       fp8                   every layer but Embedding (kohya's fp8_base:
                                                                a plain float8_e4m3fn cast, upcast at use)

The plan settles the backend (`precision.quantize_backend`) and each component's format; the compiler refuses
a format its backend does not make (DBS247), a backend on a device it does not run on (DBS318) and fp8 below
CUDA compute capability 8.9 (DBS342). A backend module is imported only when a plan uses it.

Order, per component (what runtime/prepare.py does):

    module.requires_grad_(False)
    module.to(device, dtype=plan dtype)          # BEFORE quantising: a quantised weight's dtype never changes
    quantize_frozen(module, "nf4", backend="bitsandbytes")
    add_lora(module, ...)                        # AFTER: peft wraps each quantised layer (quanto QLinear,
                                                 # torchao weights, bitsandbytes Linear4bit/Linear8bitLt) so
                                                 # the base stays quantised and frozen, the LoRA weights train
    (cast the LoRA parameters to fp32)
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

import attrs
import torch

BACKENDS = {
    "quanto": ("dbspec.runtime.quantize_quanto", "optimum.quanto"),
    "torchao": ("dbspec.runtime.quantize_torchao", "torchao"),
    "bitsandbytes": ("dbspec.runtime.quantize_bnb", "bitsandbytes"),
    "cast": ("dbspec.runtime.quantize_cast", "torch"),
}
FORMATS = {
    "quanto": ("int8", "int4", "fp8"),
    "torchao": ("int8", "fp8"),
    "bitsandbytes": ("nf4", "int8"),
    "cast": ("fp8",),
}
# First and last convolutions of a UNet: tiny, and the most sensitive to rounding (no-ops on text encoders).
DEFAULT_EXCLUDE: tuple[str, ...] = ("conv_in", "conv_out")


class QuantizedAutocastError(RuntimeError):
    """A quantised module ran under autocast of another dtype."""


@attrs.frozen(kw_only=True)
class QuantizeReport:
    kind: str
    backend: str
    layers: int  # layers whose weights are now quantised
    bytes_before: int  # weights + buffers of the whole module
    bytes_after: int


def backend_module(backend: str) -> ModuleType:
    """The backend's module (importing its library now)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantisation backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    module, library = BACKENDS[backend]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and library.startswith(exc.name):
            hint = "pip install optimum-quanto" if backend == "quanto" else "pip install 'dbspec[quant]'"
            raise ImportError(
                f'precision.quantize_backend = "{backend}" needs the {library} package, which is not '
                f"installed: {hint}"
            ) from exc
        raise


def quantize_frozen(
    module: torch.nn.Module,
    kind: str,
    *,
    backend: str = "quanto",
    exclude: Sequence[str] | None = None,
    dtype: torch.dtype | None = None,
) -> QuantizeReport:
    """Quantise the weights of frozen `module` in place with `backend` in format `kind`, frozen.

    `dtype` (optional) casts the module first; otherwise cast it yourself before calling. Call before
    adapters are attached. fnmatch patterns in `exclude` name submodules to leave in float; by default
    DEFAULT_EXCLUDE, none for the cast backend (kohya's fp8_base casts every U-Net layer). The cast backend
    casts the weights as they are (kohya's single rounding from the loaded fp32) and reads them in `dtype`.
    """
    if exclude is None:
        exclude = () if backend == "cast" else DEFAULT_EXCLUDE
    if backend not in FORMATS:
        raise ValueError(f"unknown quantisation backend {backend!r}; expected one of {', '.join(FORMATS)}")
    if kind not in FORMATS[backend]:
        raise ValueError(
            f"unknown quantisation {kind!r} for backend {backend}; "
            f"expected one of {', '.join(FORMATS[backend])}"
        )
    if any("lora_" in name for name, _ in module.named_modules()):
        raise ValueError("quantise the base weights before attaching LoRA adapters, not after")
    if dtype is not None and backend != "cast":
        module.to(dtype=dtype)
    before = quantized_bytes(module)
    if backend == "cast":
        layers = backend_module(backend).quantize(module, kind, exclude, dtype)
    else:
        layers = backend_module(backend).quantize(module, kind, exclude)
    return QuantizeReport(
        kind=kind, backend=backend, layers=layers, bytes_before=before, bytes_after=quantized_bytes(module)
    )


def is_quantized(module: torch.nn.Module) -> bool:
    """Whether any backend quantised a layer of `module` (only backends already imported are asked)."""
    return any(
        library in sys.modules and backend_module(backend).is_quantized(module)
        for backend, (_, library) in BACKENDS.items()
    )


def quantized_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters and buffers really hold: a quantised weight counts its integer (or
    packed) data and its scales, not the float size it reports."""
    seen: set[int] = set()
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        if id(tensor) not in seen:
            seen.add(id(tensor))
            total += _tensor_bytes(tensor)
    return total


def _tensor_bytes(tensor: torch.Tensor) -> int:
    inner = tensor.data if isinstance(tensor, torch.nn.Parameter) else tensor
    if hasattr(inner, "__tensor_flatten__"):  # quanto QTensor, torchao tensors: sum the tensors inside
        names, _ = inner.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(inner, name)) for name in names)
    total = inner.numel() * inner.element_size()
    return total + _bnb_state_bytes(tensor)


def _bnb_state_bytes(tensor: torch.Tensor) -> int:
    """bitsandbytes keeps a weight's scales beside it: Params4bit.quant_state (absmax, nested when double-
    quantised), Int8Params.SCB (one scale per row)."""
    state = getattr(tensor, "quant_state", None)
    total = 0
    while state is not None:
        absmax = getattr(state, "absmax", None)
        total += absmax.numel() * absmax.element_size() if isinstance(absmax, torch.Tensor) else 0
        state = getattr(state, "state2", None)
    scb = getattr(tensor, "SCB", None)
    return total + (scb.numel() * scb.element_size() if isinstance(scb, torch.Tensor) else 0)


def kernel_build_pending(kind: str, device: torch.device, backend: str = "quanto") -> bool:
    """True when running `kind` on `device` will first compile an extension (quanto int4/fp8; slow)."""
    if backend != "quanto":
        return False
    return backend_module("quanto").kernel_build_pending(kind, device)

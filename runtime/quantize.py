"""Quantised frozen base weights (optimum-quanto) under LoRA adapters.

Order, per component (what `configure_models` does):

    module.requires_grad_(False)
    module.to(device, dtype=plan dtype)      # BEFORE quantising: a quantised weight's dtype can never change
    quantize_frozen(module, "int8")          # Linear/Conv2d weights -> int8/int4/fp8 + per-channel scales
    add_lora(module, ...)                    # AFTER: peft wraps each quanto QLinear (it subclasses
                                             # nn.Linear), so the base stays quantised and frozen, the LoRA
                                             # weights train
    (cast the LoRA parameters to fp32)

Autocast pitfall: under `torch.autocast(dtype=X)` a Linear/Conv asks to cast its weight to X, and a quanto
weight refuses any dtype change ("The dtype of a weights Tensor cannot be changed"). A quantised module works
outside autocast, or under autocast whose dtype equals the dtype it was quantised in (bf16 module in a bf16
region: the cast is a no-op). `quantize_frozen` installs a guard that raises `QuantizedAutocastError` with
that explanation instead of quanto's bare message. `module.to(device)` stays fine after quantising.

Kernels: int8 runs everywhere in plain torch. int4 on CPU, and int4/fp8 in half precision on CUDA, call
quanto C++/CUDA extensions that `torch.utils.cpp_extension` compiles on first use (ninja and a C++ compiler;
nvcc on CUDA; minutes). `kernel_build_pending` says when that is about to happen, so a caller can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import attrs
import torch
from optimum.quanto import QModuleMixin, freeze, qfloat8, qint4, qint8, quantize

QTYPES = {"int8": qint8, "int4": qint4, "fp8": qfloat8}
# First and last convolutions of a UNet: tiny, and the most sensitive to rounding (no-ops on text encoders).
DEFAULT_EXCLUDE: tuple[str, ...] = ("conv_in", "conv_out")


class QuantizedAutocastError(RuntimeError):
    """A quantised module ran under autocast of another dtype."""


@attrs.frozen(kw_only=True)
class QuantizeReport:
    kind: str
    layers: int  # Linear/Conv2d layers whose weights are now quantised
    bytes_before: int  # weights + buffers of the whole module
    bytes_after: int


def quantize_frozen(
    module: torch.nn.Module,
    kind: str,
    *,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
    dtype: torch.dtype | None = None,
) -> QuantizeReport:
    """Quantise the weights of frozen `module` in place (kind: int8 | int4 | fp8) and freeze them.

    `dtype` (optional) casts the module first; otherwise cast it yourself before calling. Call before
    adapters are attached. fnmatch patterns in `exclude` name submodules to leave in float.
    """
    if kind not in QTYPES:
        raise ValueError(f"unknown quantisation {kind!r}; expected one of {', '.join(QTYPES)}")
    if any("lora_" in name for name, _ in module.named_modules()):
        raise ValueError("quantise the base weights before attaching LoRA adapters, not after")
    if dtype is not None:
        module.to(dtype=dtype)
    before = quantized_bytes(module)
    quantize(module, weights=QTYPES[kind], exclude=list(exclude))
    freeze(module)
    module.requires_grad_(
        False
    )  # quanto's freeze wraps each quantised weight in a fresh (trainable) Parameter
    layers = sum(1 for m in module.modules() if isinstance(m, QModuleMixin) and m.frozen)
    if layers:
        _install_autocast_guard(module)
        for m in module.modules():
            if isinstance(m, QModuleMixin) and m.frozen:
                m.register_forward_pre_hook(_contiguous_inputs)
    return QuantizeReport(kind=kind, layers=layers, bytes_before=before, bytes_after=quantized_bytes(module))


def is_quantized(module: torch.nn.Module) -> bool:
    return any(isinstance(m, QModuleMixin) for m in module.modules())


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
    if hasattr(inner, "__tensor_flatten__"):  # quanto QTensor / PackedTensor: sum the tensors inside
        names, _ = inner.__tensor_flatten__()
        return sum(_tensor_bytes(getattr(inner, name)) for name in names)
    return inner.numel() * inner.element_size()


def _contiguous_inputs(module: torch.nn.Module, args: tuple) -> tuple:
    """quanto's CPU int8 matmul (torch._weight_int8pack_mm) rejects activations whose last dimension is
    strided, which diffusers' attention reshapes produce; a copy only when needed."""
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def _install_autocast_guard(module: torch.nn.Module) -> None:
    if getattr(module, "_dbspec_autocast_guard", None) is None:
        module._dbspec_autocast_guard = module.register_forward_pre_hook(_refuse_foreign_autocast)


def _refuse_foreign_autocast(module: torch.nn.Module, args) -> None:
    device_type = next(module.parameters()).device.type
    if not torch.is_autocast_enabled(device_type):
        return
    module_dtype = _float_dtype(module)
    autocast_dtype = torch.get_autocast_dtype(device_type)
    if autocast_dtype != module_dtype:
        raise QuantizedAutocastError(
            f"{type(module).__name__} holds quantised weights in {module_dtype}, but runs under "
            f"{autocast_dtype} autocast, which would cast them (quanto: 'The dtype of a weights Tensor "
            "cannot be changed'). Cast the module to the compute dtype before quantising, or run "
            "it outside autocast."
        )


def _float_dtype(module: torch.nn.Module) -> torch.dtype:
    # A quantised weight reports the float dtype it was quantised from.
    return next(m.weight.dtype for m in module.modules() if isinstance(m, QModuleMixin))


def kernel_build_pending(kind: str, device: torch.device) -> bool:
    """True when running `kind` on `device` will first compile a quanto extension (slow, needs a compiler).

    Conservative: int4 anywhere and fp8 on CUDA may use one; int8 never does.
    """
    if kind == "int8" or (kind == "fp8" and device.type != "cuda"):
        return False
    from optimum.quanto.library.extensions import get_extension, is_extension_available

    name = "quanto_cuda" if device.type == "cuda" else "quanto_cpp"
    if not is_extension_available(name):
        return False  # no extension for this device: quanto falls back to plain torch
    version_file = Path(get_extension(name).build_directory) / "pytorch_version.txt"
    return not (version_file.exists() and version_file.read_text().strip() == torch.__version__)

"""The optimum-quanto backend of runtime/quantize.py, imported only when a plan quantises with quanto.

quanto quantises Linear and Conv2d weights (int8, int4 or fp8 with per-channel or per-group scales).

Autocast pitfall: under `torch.autocast(dtype=X)` a Linear/Conv asks to cast its weight to X, and a quanto
weight refuses any dtype change ("The dtype of a weights Tensor cannot be changed"). A quantised module works
outside autocast, or under autocast whose dtype equals the dtype it was quantised in (bf16 module in a bf16
region: the cast is a no-op). `quantize` installs a guard that raises `QuantizedAutocastError` with that
explanation instead of quanto's bare message. `module.to(device)` stays fine after quantising.

Kernels: int8 runs everywhere in plain torch. int4 on CPU, and int4/fp8 in half precision on CUDA, call
quanto C++/CUDA extensions that `torch.utils.cpp_extension` compiles on first use (ninja and a C++ compiler;
nvcc on CUDA; minutes). `kernel_build_pending` says when that is about to happen, so a caller can say so.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from optimum.quanto import QModuleMixin, freeze, qfloat8, qint4, qint8
from optimum.quanto import quantize as quanto_quantize

from dbspec.runtime.quantize import QuantizedAutocastError

FORMATS = {"int8": qint8, "int4": qint4, "fp8": qfloat8}


def quantize(module: torch.nn.Module, kind: str, exclude: Sequence[str]) -> int:
    """Quantise the Linear/Conv2d weights of `module` in place and freeze them; the layers quantised."""
    quanto_quantize(module, weights=FORMATS[kind], exclude=list(exclude))
    freeze(module)
    module.requires_grad_(
        False
    )  # quanto's freeze wraps each quantised weight in a fresh (trainable) Parameter
    layers = [m for m in module.modules() if isinstance(m, QModuleMixin) and m.frozen]
    if layers:
        _install_autocast_guard(module)
        for m in layers:
            m.register_forward_pre_hook(_inputs_as_computed)
    return len(layers)


def is_quantized(module: torch.nn.Module) -> bool:
    return any(isinstance(m, QModuleMixin) for m in module.modules())


def _inputs_as_computed(module: torch.nn.Module, args: tuple) -> tuple:
    """Each activation contiguous (quanto's CPU int8 matmul, torch._weight_int8pack_mm, rejects a strided
    last dimension, which diffusers' attention reshapes produce) and, under autocast, in its dtype: autocast
    casts a float Linear's input at dispatch, but quanto's QTensor takes F.linear before that
    (__torch_function__), and its CUDA fp8 kernel (marlin) takes bf16 / fp16 only: the first GPU run stopped
    at "fp8_marlin_gemm only supports bfloat16 and float16" on a LayerNorm's fp32 output. Copies only when
    needed."""
    device_type = module.weight.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return tuple(_as_computed(a, dtype) if isinstance(a, torch.Tensor) else a for a in args)


def _as_computed(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
        tensor = tensor.to(dtype)
    return tensor.contiguous()


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

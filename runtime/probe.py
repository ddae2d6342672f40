"""Facts about the installed torch for `dbspec env`: its build, the devices it sees, bf16 support."""

from __future__ import annotations

import torch


def torch_facts() -> dict:
    cuda = torch.cuda.is_available()
    return {
        "installed": True,
        "version": torch.__version__,
        "build": _build(),
        "cuda_available": cuda,
        "cuda_devices": [_device(i) for i in range(torch.cuda.device_count())] if cuda else [],
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "bf16": _bf16(cuda),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def _build() -> str:
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    if getattr(torch.version, "hip", None):
        return f"ROCm {torch.version.hip}"
    return "CPU only"


def _device(index: int) -> dict:
    props = torch.cuda.get_device_properties(index)
    return {
        "index": index,
        "name": props.name,
        "memory_gib": props.total_memory / 2**30,
        "capability": f"{props.major}.{props.minor}",
    }


def _bf16(cuda: bool) -> str:
    if cuda:
        return (
            "supported on cuda:0" if torch.cuda.is_bf16_supported() else "not supported on cuda:0 (use fp16)"
        )
    return "CPU: supported, but slower than fp32 here"

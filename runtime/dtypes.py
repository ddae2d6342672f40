"""The one map from the plan's dtype names to torch dtypes."""

from __future__ import annotations

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def to_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """A plan dtype name ("fp32", "fp16", "bf16") as a torch dtype; a torch dtype passes through."""
    return dtype if isinstance(dtype, torch.dtype) else DTYPES[dtype]


def mixed_dtype(mixed: str) -> torch.dtype | None:
    """The autocast dtype of `precision.mixed` ("no", "fp16", "bf16"); None for "no"."""
    return None if mixed == "no" else DTYPES[mixed]

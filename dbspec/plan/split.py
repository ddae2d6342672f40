"""optimizer.split: the chunks of the trained tensors, one optimizer each (kohya's --fused_optimizer_groups).

A pure function of the tensors' learning rates in sequence, so the runtime (which knows the tensors) and the
tests (which check it against kohya's loop re-implemented from its description) share it. kohya walks the
sequence once: a chunk ends when it holds ceil(tensors / split) tensors, and a new one starts wherever the
learning rate differs from the chunk's; so the result can hold more than `split` chunks (e.g. one more at the
boundary between the denoiser and a text encoder with another rate).
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def split_chunks(lrs: Sequence[float], split: int) -> list[range]:
    """The chunks of a sequence of tensors whose learning rates are `lrs`, as index ranges in order."""
    if split < 1:
        raise ValueError(f"split must be at least 1, got {split}")
    size = math.ceil(len(lrs) / split) if lrs else 0
    chunks: list[range] = []
    start = 0
    for index in range(1, len(lrs) + 1):
        full = index - start == size
        ends = index == len(lrs) or full or lrs[index] != lrs[start]
        if ends:
            chunks.append(range(start, index))
            start = index
    return chunks

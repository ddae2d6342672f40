"""LyCORIS BOFT's block split, torch-free: the plan checks layer widths with it
(dbspec/compiler/boft_widths.py) and the runtime builds its layers by it (runtime/lycoris_boft.py)."""

from __future__ import annotations


def power2_factorization(dimension: int, factor: int) -> tuple[int, int]:
    """LyCORIS's power2factorization: (block_size, block_num), block_size even and <= factor (any, for -1),
    block_num the largest power of two found dividing the dimension that way; (0, 0) when none does."""
    if factor == -1:
        factor = dimension
    m = n = 0
    while m <= factor:
        m += 2
        while dimension % m != 0 and m < dimension:
            m += 2
        if m > factor:
            break
        if bin(dimension // m).count("1") == 1:
            n = dimension // m
    return (dimension // n, n) if n else (0, 0)

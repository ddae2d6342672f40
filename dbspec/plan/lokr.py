"""LyCORIS LoKr's Kronecker split, torch-free: the kohya converter reads with it which layers a huge LoKr
dim trains in full (convert/kohya/lycoris_maps.py), and the runtime builds its layers by it
(runtime/lokr_factor.py)."""

from __future__ import annotations


def factorization(dimension: int, factor: int = -1) -> tuple[int, int]:
    """LyCORIS's factorization (lycoris/functional/general.py): (m, n), m <= n, m x n = dimension. A
    positive factor dividing the dimension gives (factor, dimension / factor) ordered; otherwise the
    divisor pair nearest the square root whose smaller part does not exceed the factor (any with -1)."""
    if factor > 0 and dimension % factor == 0:
        m, n = factor, dimension // factor
        return (n, m) if m > n else (m, n)
    if factor < 0:
        factor = dimension
    m, n = 1, dimension
    while m < n:
        new_m = m + 1
        while dimension % new_m:
            new_m += 1
        new_n = dimension // new_m
        if new_m + new_n > m + n or new_m > factor:
            break
        m, n = new_m, new_n
    return (n, m) if m > n else (m, n)

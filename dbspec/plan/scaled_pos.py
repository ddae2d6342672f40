"""kohya's scaled SD3 position-embedding tables (model.scaled_pos_embed, library/sd3_models.py
MMDiT.enable_scaled_pos_embed) as pure functions of the plan, torch-free: the tables' latent sides from
the dataset resolutions and the area bounds that pick a table at the start of a run. `runtime/scaled_pos.py`
builds the tables and keeps the bounds as tables are added; the compiler and the summary read these."""

from __future__ import annotations

import math
from collections.abc import Iterable

RATIO = 1.5  # kohya MMDiT.POS_EMBED_MAX_RATIO: a table's grid side over its patched side
LATENT_STRIDE = 8  # kohya's `// 8` from a resolution to its latent side (the SD3 VAE's downsampling)
PATCH = 2  # SD3's patch size (every SD3 / SD3.5 denoiser); the runtime reads the denoiser's own


def latent_sides(resolutions: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """kohya's latent_sizes: round(sqrt(width x height)) // 8 of each (width, height), distinct, ascending."""
    return tuple(sorted({round(math.sqrt(w * h)) // LATENT_STRIDE for w, h in resolutions}))


def grid_of(patched: int) -> int:
    """The grid side of the table of a patched side (kohya's int(side x 1.5))."""
    return int(patched * RATIO)


def area_bounds(sides: tuple[int, ...], patch: int = PATCH) -> list[tuple[int, int]]:
    """kohya's resolution_area_to_latent_size at the start: (largest patch area, patched side) per table,
    ascending: the midpoint of neighbouring tables' areas, for the last its whole grid."""
    patched = [s // patch for s in sides]
    bounds = [(a * a + b * b) // 2 for a, b in zip(patched, patched[1:])]
    bounds.append(int((patched[-1] * RATIO) ** 2))
    return list(zip(bounds, patched))


def pick(bounds: list[tuple[int, int]], h: int, w: int) -> int:
    """The patched side of the table a latent of h x w patches picks: the first whose area bound holds its
    area, else the last."""
    return next((side for bound, side in bounds if h * w <= bound), bounds[-1][1])

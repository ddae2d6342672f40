"""kohya's scaled SD3 position-embedding tables (model.scaled_pos_embed, sd3_train_network.py
`--enable_scaled_pos_embed`) settled: the latent sides of the tables from the dataset resolutions, the
detected family checked (DBS550), and the buckets that will make the run add a table (DBS386).

The tables and their area bounds are `dbspec/plan/scaled_pos.py`'s pure functions; the run builds the tables
and adds to them (`runtime/scaled_pos.py`)."""

from __future__ import annotations

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.rules import hit_to_diagnostic, scaled_pos_embed_fits
from dbspec.plan.model import BucketPlan, DatasetPlan, ModelPlan
from dbspec.plan.scaled_pos import LATENT_STRIDE, PATCH, area_bounds, grid_of, latent_sides, pick


def plan_scaled_pos_embed(
    ctx: Context, model: ModelPlan | None, datasets: tuple[DatasetPlan, ...], buckets: tuple[BucketPlan, ...]
) -> ModelPlan | None:
    """The model plan with its scaled tables' latent sides (() when off)."""
    if model is None or not ctx.spec.model.scaled_pos_embed or not datasets:
        return model
    if ctx.spec.model.family == "auto":  # `dbspec check` checked a spelled-out family
        detected = attrs.evolve(ctx.spec, model=attrs.evolve(ctx.spec.model, family=model.family))
        hits = [h for h in scaled_pos_embed_fits(detected, ctx.raw.given) if h.code == "DBS550"]
        ctx.diagnostics += [hit_to_diagnostic(ctx.raw, hit) for hit in hits]
        if hits:
            return model
    sides = latent_sides((d.resolution, d.resolution_height or d.resolution) for d in datasets)
    bounds = area_bounds(sides)
    outgrown = sorted({b.size for b in buckets if _outgrows(bounds, *b.size)})
    if outgrown:
        shown = ", ".join(f"{w}x{h}" for w, h in outgrown)
        ctx.report(
            "DBS386",
            "warning",
            f"model.scaled_pos_embed: bucket(s) {shown} are taller or wider than the scaled position table "
            f"their area picks (tables for latent sides {', '.join(map(str, sides))}); the run adds a table "
            "for each, as kohya does, and later forwards may pick it",
            ("model", "scaled_pos_embed"),
            help="narrow the bucket range (buckets.min_size / max_size), or accept the added tables",
        )
    return attrs.evolve(model, scaled_pos_embed=sides)


def _outgrows(bounds: list[tuple[int, int]], width: int, height: int) -> bool:
    """A bucket's latent is taller or wider than the grid of the starting table its area picks."""
    h, w = height // LATENT_STRIDE // PATCH, width // LATENT_STRIDE // PATCH
    return max(h, w) > grid_of(pick(bounds, h, w))

"""kohya's scaled position-embedding tables for SD3 (plan.model.scaled_pos_embed, sd3_train_network.py
`--enable_scaled_pos_embed`; library/sd3_models.py MMDiT.enable_scaled_pos_embed, cropped_scaled_pos_embed).

Instead of cutting the centred window of its stored table, every forward of the denoiser cuts it from a
sin-cos table built for a training resolution: for a patched side s, a grid of g = int(1.5 s) positions per
axis whose coordinates are i / g x k - k (g - s) / (2 g), k = 16 g / s (`scaled_table`), so a latent of the
resolution spans the positions 0 .. 16 (the base model's 16-patch grid) in the table's centre. There is one
table per dataset resolution (the plan's latent sides, `dbspec/plan/scaled_pos.py`); a forward's latent of
h x w patches takes the first table whose area bound holds h x w (else the last), and when h or w exceeds that
table's grid, a table for max(h, w) is added (and its grid area added to the bounds), which later forwards may
pick, as kohya's model keeps it.

diffusers' SD3Transformer2DModel cuts its window in `PatchEmbed.cropped_pos_embed`; `install` replaces that
method, for the whole run (training, the evaluation loss, validation samples, as kohya's model does in all its
forwards), on the denoiser and the teacher copies, which share one `ScaledTables` (kohya's one model). The
tables are functions of the plan and the sides added so far; checkpoints keep the sides added (`added_sides`,
`restore_sides`), so a resumed run picks as the uninterrupted one. The random window of
`loss.pos_embed_random_crop_rate` (runtime/pos_crop.py) moves within the scaled table the forward picks."""

from __future__ import annotations

import torch
from diffusers.models.embeddings import PatchEmbed

from dbspec.plan.scaled_pos import area_bounds, grid_of, pick
from dbspec.runtime.pos_crop import window

BASE_SIZE = 16  # kohya's get_scaled_2d_sincos_pos_embed base_size: the base model's grid in patches


def scaled_table(dim: int, grid: int, side: int) -> torch.Tensor:
    """The (grid x grid, dim) float32 sin-cos table of patched side `side` (rows: row-major over the grid).

    Coordinates in float32 as kohya's numpy grid; the sines and cosines in float64; per row
    [sin(x w), cos(x w), sin(y w), cos(y w)], x the column's coordinate, y the row's,
    w = 10000^(-j / (dim / 4)) for j < dim / 4."""
    if dim % 4:
        raise ValueError(f"a sin-cos position table needs a width divisible by 4; found {dim}")
    scale = BASE_SIZE * grid / side
    shift = scale * (grid - side) / (2 * grid)
    coords = torch.arange(grid, dtype=torch.float32) / grid * scale - shift
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)
    angles = coords.double()[:, None] * omega[None, :]  # (grid, dim / 4)
    axis = torch.cat([angles.sin(), angles.cos()], dim=1)  # (grid, dim / 2): one axis's half of a row
    x = axis[None, :, :].expand(grid, grid, dim // 2)  # [row, column]: the column's coordinate
    y = axis[:, None, :].expand(grid, grid, dim // 2)
    return torch.cat([x, y], dim=2).reshape(grid * grid, dim).float()


class ScaledTables:
    """The tables of one denoiser (and its teacher copies) and the bounds that pick them, as kohya's MMDiT
    keeps them: `pick` adds a table when a latent outgrows the one its area picks."""

    def __init__(self, dim: int, sides: tuple[int, ...], patch: int, log=None) -> None:
        self.dim, self.patch, self.log = dim, patch, log
        self.bounds = area_bounds(sides, patch)  # (area bound, patched side), ascending
        self.grids = {side: grid_of(side) for _, side in self.bounds}
        self.added: list[int] = []  # patched sides added, in order (the checkpoint keeps them)
        self._tables: dict[tuple[int, torch.device, torch.dtype], torch.Tensor] = {}

    def pick(self, h: int, w: int) -> tuple[int, int]:
        """(patched side, grid) of the table a latent of h x w patches takes, adding one when it outgrows."""
        side = pick(self.bounds, h, w)
        if h > self.grids[side] or w > self.grids[side]:
            side = max(h, w)
            if self.add(side) and self.log is not None:
                self.log(
                    f"model.scaled_pos_embed: added a position table for {side} patches (a {h}x{w}-patch "
                    f"latent is taller or wider than the table its area picks)"
                )
        return side, self.grids[side]

    def add(self, side: int) -> bool:
        """Add the table of a patched side and its bound (its grid's area); False when that bound is there
        already. kohya appends the bound again each time a latent outgrows its table; an equal (area, side)
        entry picks nothing else, so one is kept (and the checkpoint's list of sides stays short)."""
        grid = grid_of(side)
        if (grid * grid, side) in self.bounds:
            return False
        self.grids[side] = grid
        self.bounds = sorted([*self.bounds, (grid * grid, side)])
        self.added.append(side)
        return True

    def table(self, side: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The (1, grid x grid, dim) table of a patched side, built once per device and dtype."""
        key = (side, device, dtype)
        if key not in self._tables:
            built = scaled_table(self.dim, self.grids[side], side)
            self._tables[key] = built.unsqueeze(0).to(device=device, dtype=dtype)
        return self._tables[key]


def table_for(module: PatchEmbed, h: int, w: int) -> tuple[torch.Tensor, int] | None:
    """(table, grid side) an installed module takes for a latent of h x w patches; None when not installed."""
    tables: ScaledTables | None = module.__dict__.get("scaled_tables")
    if tables is None:
        return None
    side, grid = tables.pick(h, w)
    return tables.table(side, module.pos_embed.device, module.pos_embed.dtype), grid


def _scaled(module: PatchEmbed):
    def cropped_pos_embed(height: int, width: int) -> torch.Tensor:
        h, w = height // module.patch_size, width // module.patch_size
        table, grid = table_for(module, h, w)
        return window(table, grid, h, w, (grid - h) // 2, (grid - w) // 2)

    return cropped_pos_embed


def _embeds(models: list) -> list[PatchEmbed]:
    return [
        m
        for model in models
        if model is not None
        for m in model.modules()
        if isinstance(m, PatchEmbed) and m.pos_embed_max_size and m.pos_embed is not None
    ]


def install(plan, models: list, log=None) -> ScaledTables | None:
    """Scaled tables on the patch embeddings of `models` (the denoiser and any teacher copy), for the run."""
    sides = plan.model.scaled_pos_embed
    if not sides:
        return None
    embeds = _embeds(models)
    if not embeds:
        raise ValueError("model.scaled_pos_embed: the denoiser has no cropped position-embedding table")
    first = embeds[0]
    tables = ScaledTables(first.pos_embed.shape[-1], tuple(sides), first.patch_size, log)
    for m in embeds:
        m.scaled_tables = tables
        m.cropped_pos_embed = _scaled(m)  # an instance attribute over diffusers' method
    return tables


def tables_of(model) -> ScaledTables | None:
    """The tables installed on a denoiser (None when off)."""
    return next(
        (m.__dict__["scaled_tables"] for m in _embeds([model]) if "scaled_tables" in m.__dict__), None
    )


def added_sides(model) -> list[int] | None:
    """The patched sides added to the denoiser's tables so far, in order (None when off)."""
    tables = tables_of(model)
    return list(tables.added) if tables is not None else None


def restore_sides(model, sides: list[int] | None) -> None:
    """Add the sides a checkpoint's run had added, in its order, to the freshly installed tables."""
    tables = tables_of(model)
    if tables is None or not sides:
        return
    if tables.added:
        raise RuntimeError("model.scaled_pos_embed: tables were added before the checkpoint's were restored")
    for side in sides:
        tables.add(side)

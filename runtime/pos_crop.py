"""kohya's random position-embedding window for SD3 (plan.loss.pos_embed_random_crop_rate,
sd3_train_network.py `--pos_emb_random_crop_rate`, library/sd3_models.py MMDiT.forward and
cropped_pos_embed): each forward of the denoiser draws `rand() < rate`, and when it holds, the top and left
row of the window it cuts from the stored position-embedding table uniformly (`randint(0, max - h + 1)`, top
first), instead of the centred window.

diffusers' SD3Transformer2DModel cuts its window in `PatchEmbed.cropped_pos_embed`; within `training_windows`
(the forwards of one training micro-batch) each such module of the denoiser and the teacher copy has that
method replaced by one drawing from the run's generator (checkpointed: a resumed run draws the same windows).
Evaluation and validation forwards, outside it, keep diffusers' centred window. With model.scaled_pos_embed
(runtime/scaled_pos.py, installed before) the window moves within the scaled table the forward picks, as
kohya's cropped_scaled_pos_embed draws it (the table picked, and any added, between the rate draw and the
window's)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from diffusers.models.embeddings import PatchEmbed


def window(table: torch.Tensor, max_size: int, height: int, width: int, top: int, left: int) -> torch.Tensor:
    """The (1, height x width, D) rows of a (1, max_size^2, D) table in the window at (top, left)."""
    grid = table.reshape(1, max_size, max_size, -1)[:, top : top + height, left : left + width, :]
    return grid.reshape(1, -1, grid.shape[-1])


def _drawing(module: PatchEmbed, rate: float, generator: torch.Generator):
    # diffusers' own (checks the sizes), or the scaled tables' centred window (runtime/scaled_pos.py)
    centred = module.cropped_pos_embed
    scaled = module.__dict__.get("scaled_tables")  # runtime/scaled_pos.py's, when installed

    def cropped_pos_embed(height: int, width: int) -> torch.Tensor:
        if not torch.rand(1, generator=generator).item() < rate:
            return centred(height, width)
        h, w = height // module.patch_size, width // module.patch_size
        if scaled is not None:  # kohya's cropped_scaled_pos_embed: the picked (or added) table's grid
            side, size = scaled.pick(h, w)
            table = scaled.table(side, module.pos_embed.device, module.pos_embed.dtype)
        else:
            size, table = module.pos_embed_max_size, module.pos_embed
            centred(height, width)  # its size checks (a window larger than the table is an error)
        top = int(torch.randint(0, size - h + 1, (1,), generator=generator).item())
        left = int(torch.randint(0, size - w + 1, (1,), generator=generator).item())
        return window(table, size, h, w, top, left)

    return cropped_pos_embed


@contextlib.contextmanager
def training_windows(plan, models: list, generator: torch.Generator) -> Iterator[None]:
    """Random windows for the denoiser forwards inside (`models`: the denoiser and any teacher copy)."""
    rate = plan.loss.pos_embed_random_crop_rate
    if not rate:
        yield
        return
    patched = [
        m
        for model in models
        if model is not None
        for m in model.modules()
        if isinstance(m, PatchEmbed) and m.pos_embed_max_size and m.pos_embed is not None
    ]
    if not patched:
        raise ValueError(
            "loss.pos_embed_random_crop_rate: the denoiser has no cropped position-embedding table"
        )
    before = [m.__dict__.get("cropped_pos_embed") for m in patched]  # the scaled tables' method, if any
    for m in patched:
        m.cropped_pos_embed = _drawing(m, rate, generator)  # an instance attribute over the method
    try:
        yield
    finally:
        for m, method in zip(patched, before):
            if method is None:
                del m.cropped_pos_embed
            else:
                m.cropped_pos_embed = method

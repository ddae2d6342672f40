"""kohya's scaled SD3 position-embedding tables (model.scaled_pos_embed, sd3_train_network.py
`--enable_scaled_pos_embed`): the tables against kohya's get_scaled_2d_sincos_pos_embed restated in numpy, the
patch embedding of diffusers' SD3Transformer2DModel against kohya's MMDiT.cropped_scaled_pos_embed restated
(a table picked by the latent's patch area, one added when the latent outgrows it, the random window of
pos_emb_random_crop_rate inside it), and a tiny SD3 run whose added table is checkpointed, so it resumes
bit-exact."""

from __future__ import annotations

import math
import random
from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from PIL import Image

from dbspec.runtime import scaled_pos
from dbspec.runtime.execute import execute
from dbspec.runtime.pos_crop import training_windows
from dbspec.runtime.scaled_pos import install, scaled_table
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import compile_spec, final_weights, make_plan, summary_text, write_spec

BASE = "builtin:tiny-sd3"


def kohya_table(dim: int, side: int) -> np.ndarray:
    """kohya's table of patched side `side` (get_scaled_2d_sincos_pos_embed(dim, int(1.5 side),
    sample_size=side), base size 16), restated: float32 coordinates i / g scaled by 16 g / side and shifted so
    the middle `side` positions run from 0 to 16; each row the sines then cosines of the column's coordinate,
    then of the row's, at the frequencies 10000^(-j / (dim / 4)), computed in float64, stored in float32."""
    grid = int(side * 1.5)
    stretch = 16 * grid / side
    coords = np.arange(grid, dtype=np.float32) / grid * stretch - stretch * (grid - side) / (2 * grid)
    freqs = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))

    def encode(values: np.ndarray) -> np.ndarray:
        phase = np.outer(values.reshape(-1).astype(np.float64), freqs)
        return np.concatenate([np.sin(phase), np.cos(phase)], axis=1)

    columns, rows = np.meshgrid(coords, coords)  # columns[i, j] = coords[j]
    return np.concatenate([encode(columns), encode(rows)], axis=1).astype(np.float32)


class KohyaPicker:
    """MMDiT.enable_scaled_pos_embed's bounds and cropped_scaled_pos_embed's choice, restated: bounds are the
    midpoints of neighbouring tables' patch areas, the last table's whole grid; a latent takes the first table
    whose bound holds its area (else the last); when it is taller or wider than that table's grid, a table for
    its longer side is added with its grid's area as bound."""

    def __init__(self, latent_sides: list[int]) -> None:
        patched = [s // 2 for s in sorted(set(latent_sides))]
        self.bounds = [((a * a + b * b) // 2, a) for a, b in zip(patched, patched[1:])]
        self.bounds.append((int((patched[-1] * 1.5) ** 2), patched[-1]))

    def __call__(self, h: int, w: int) -> int:
        side = next((s for bound, s in self.bounds if h * w <= bound), self.bounds[-1][1])
        if max(h, w) > int(side * 1.5):
            side = max(h, w)
            self.bounds = sorted([*self.bounds, (int(side * 1.5) ** 2, side)])
        return side


def kohya_patches(embed, latent: torch.Tensor, side: int, top: int | None = None, left: int | None = None):
    """The projected patches plus the rows of the window of kohya's table for `side` (centred by default),
    picked one by one by their index in the flattened grid."""
    h, w = latent.shape[-2] // embed.patch_size, latent.shape[-1] // embed.patch_size
    grid = int(side * 1.5)
    top = (grid - h) // 2 if top is None else top
    left = (grid - w) // 2 if left is None else left
    table = torch.from_numpy(kohya_table(embed.pos_embed.shape[-1], side))
    rows = [(top + i) * grid + (left + j) for i in range(h) for j in range(w)]
    patches = embed.proj(latent).flatten(2).transpose(1, 2)
    return patches + table[rows, :].unsqueeze(0)


@pytest.mark.parametrize(("dim", "side"), [(16, 4), (16, 10), (64, 7), (1536, 64)])
def test_tables_are_kohyas_formula(dim, side):
    ours = scaled_table(dim, int(side * 1.5), side)
    torch.testing.assert_close(ours, torch.from_numpy(kohya_table(dim, side)), rtol=0, atol=1e-6)
    # the table's centre: the resolution's first patch sits at coordinate 0 (sines 0, cosines 1)
    grid, start = int(side * 1.5), (int(side * 1.5) - side) // 2
    if (grid - side) % 2 == 0:
        origin = ours[start * grid + start]
        quarter = dim // 4
        assert torch.allclose(origin[:quarter], torch.zeros(quarter), atol=1e-6)
        assert torch.allclose(origin[quarter : 2 * quarter], torch.ones(quarter), atol=1e-6)


@pytest.fixture
def transformer():
    return build_pipeline(BASE).transformer


def _plan(tmp_path, extra: str = ""):
    return compile_spec(
        write_spec(tmp_path, base=BASE, steps=2, extra=extra), ["model.scaled_pos_embed=true"]
    )


def test_patch_embedding_picks_and_adds_tables_as_kohya(tmp_path, transformer):
    plan = _plan(tmp_path)
    assert plan.model.scaled_pos_embed == (64 // 8,)  # resolution 64: latent side 8
    sides = [8, 20, 31]  # three resolutions' latent sides: patched 4, 10, 15
    plan = attrs.evolve(plan, model=attrs.evolve(plan.model, scaled_pos_embed=tuple(sides)))
    tables = install(plan, [transformer])
    embed = transformer.pos_embed
    stored = embed.pos_embed.clone()
    kohya = KohyaPicker(sides)
    draw = random.Random(3)
    shapes = [(4, 4), (2, 16), (10, 12), (6, 14), (30, 6), (12, 12), (22, 22), (8, 8), (2, 28), (16, 20)]
    shapes += [(2 * draw.randint(1, 16), 2 * draw.randint(1, 16)) for _ in range(20)]
    with torch.no_grad():
        for h, w in shapes:  # patches per side
            latent = torch.randn(1, 16, 2 * h, 2 * w, generator=torch.Generator().manual_seed(h * 100 + w))
            expected = kohya_patches(embed, latent, kohya(h, w))
            torch.testing.assert_close(embed(latent), expected, rtol=0, atol=1e-6)
    assert tables.added  # some latents outgrew their table
    assert sorted(set(kohya.bounds)) == tables.bounds
    assert torch.equal(embed.pos_embed, stored)  # the stored table is kept (and saved) as it was


@pytest.mark.parametrize("rate", [0.5, 1.0])
def test_random_window_moves_within_the_scaled_table(tmp_path, transformer, rate):
    plan = _plan(tmp_path / "p", extra=f"[loss]\npos_embed_random_crop_rate = {rate}\n")
    plan = attrs.evolve(plan, model=attrs.evolve(plan.model, scaled_pos_embed=(8, 20)))
    install(plan, [transformer])
    embed = transformer.pos_embed
    kohya = KohyaPicker([8, 20])
    ours_gen, kohya_gen = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    shapes = [(4, 4), (10, 8), (2, 8), (6, 10), (3, 5), (12, 4)] * 2
    with torch.no_grad(), training_windows(plan, [transformer], ours_gen):
        for h, w in shapes:
            latent = torch.randn(1, 16, 2 * h, 2 * w, generator=torch.Generator().manual_seed(h * 7 + w))
            # MMDiT.forward: the rate's draw first; cropped_scaled_pos_embed: the table, then top and left
            crop = torch.rand(1, generator=kohya_gen).item() < rate
            side = kohya(h, w)
            grid = int(side * 1.5)
            top = left = None
            if crop:
                top = torch.randint(0, grid - h + 1, (1,), generator=kohya_gen).item()
                left = torch.randint(0, grid - w + 1, (1,), generator=kohya_gen).item()
            torch.testing.assert_close(
                embed(latent), kohya_patches(embed, latent, side, top, left), rtol=0, atol=1e-6
            )
    assert torch.equal(ours_gen.get_state(), kohya_gen.get_state())  # the same draws
    latent = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # outside a training batch: the scaled table's centred window, not the stored one's
        torch.testing.assert_close(
            embed(latent), kohya_patches(embed, latent, kohya(4, 4)), rtol=0, atol=1e-6
        )


# Two resolutions (latent sides 8 and 20: tables of 4 and 10 patches) and a tall dataset whose 32x128 bucket
# (2x8 patches) outgrows the table its area picks: the run adds a table of 8 patches, which later forwards of
# the 160 px dataset's 8x11-ish latents then pick instead of the 10-patch one, as kohya's model would.
TALL = """
[adapter]
kind = "lora"
rank = 4

[checkpoints]
every = 2

[validation]
prompts = ["a photo of ohwx toy"]
every = 3
steps = 2

[[datasets]]
name = "tall"
path = "data/tall"
prompt = "a photo of ohwx toy"
resolution = 64

[[datasets]]
name = "big"
path = "data/toy"
prompt = "a photo of ohwx toy"
resolution = 160
"""


def _tall_plan(tmp: Path):
    folder = tmp / "data" / "tall"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        Image.new("RGB", (64, 320), (40 + 60 * i, 90, 160)).save(folder / f"tall-{i}.png")
    return compile_spec(write_spec(tmp, base=BASE, steps=6, extra=TALL), ["model.scaled_pos_embed=true"])


def test_tiny_sd3_trains_with_scaled_tables_and_resumes_bit_exact(tmp_path, monkeypatch):
    plan = _tall_plan(tmp_path / "whole")
    assert plan.model.scaled_pos_embed == (8, 20)
    assert "position tables" in summary_text(plan)
    whole = execute(plan)
    assert all(math.isfinite(x) for x in whole.losses)
    states = {
        step: torch.load(
            next(Path(whole.output).rglob(f"step-{step:06d}/training_state.pt")), weights_only=True
        )
        for step in (2, 4)
    }
    # the order of this seed: the tall bucket trains in steps 3-4, so the step-4 checkpoint holds its table
    assert states[2]["scaled_pos_sides"] == [] and states[4]["scaled_pos_sides"] == [8]

    parts_plan = _tall_plan(tmp_path / "parts")
    first = execute(parts_plan, stop_after=4)
    second = execute(parts_plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # the checkpoint's tables matter: a resume that forgets them picks the 10-patch table again
    forgetful = _tall_plan(tmp_path / "forgetful")
    execute(forgetful, stop_after=4)
    monkeypatch.setattr("dbspec.runtime.state.restore_sides", lambda model, sides: None)
    assert execute(forgetful, resume=True).losses != second.losses


def test_plain_plans_keep_the_stored_table(tmp_path):
    plan = make_plan(tmp_path, base=BASE, steps=2)
    assert plan.model.scaled_pos_embed == ()
    assert install(plan, [None]) is None
    assert scaled_pos.tables_of(build_pipeline(BASE).transformer) is None


def _diagnostics(tmp: Path, base: str, extra: str = ""):
    from dbspec.frontend import plan_spec
    from tests.runtime.runspec import CPU

    spec = write_spec(tmp, base=base, steps=2, extra=extra)
    return plan_spec(spec, CPU, str(spec), ["model.scaled_pos_embed=true"])


def test_a_bucket_that_outgrows_its_table_is_warned_at_plan_time(tmp_path):
    folder = tmp_path / "data" / "tall"
    folder.mkdir(parents=True)
    Image.new("RGB", (64, 320), (40, 90, 160)).save(folder / "tall-0.png")
    planned = _diagnostics(tmp_path, BASE, TALL.split('[[datasets]]\nname = "big"')[0])
    warned = [d for d in planned.diagnostics if d.code == "DBS386"]
    assert planned.plan is not None and len(warned) == 1
    assert "32x128" in warned[0].message and warned[0].path == "model.scaled_pos_embed"


def test_a_detected_family_without_the_table_is_refused(tmp_path):
    planned = _diagnostics(tmp_path, "builtin:tiny-sdxl")
    assert planned.plan is None
    assert [d.code for d in planned.diagnostics if d.severity == "error"] == ["DBS550"]

"""kohya's random position-embedding window for SD3 (loss.pos_embed_random_crop_rate, sd3_train_network.py
`--pos_emb_random_crop_rate`): the patch embedding of diffusers' SD3Transformer2DModel inside a training batch
against kohya's MMDiT.forward / cropped_pos_embed, restated (a draw `rand() < rate`, then top and left
`randint(0, max - h + 1)`, the window's rows of the stored table), and a tiny SD3 run that resumes
bit-exact."""

from __future__ import annotations

import math

import pytest
import torch

from dbspec.runtime.execute import execute
from dbspec.runtime.pos_crop import training_windows
from dbspec.runtime.tiny import build_pipeline
from tests.runtime.runspec import final_weights, make_plan, summary_text

BASE = "builtin:tiny-sd3"
LORA = '[adapter]\nkind = "lora"\nrank = 4\n\n[checkpoints]\nevery = 2\n'


def kohya_patches(embed, latent: torch.Tensor, rate: float, generator: torch.Generator) -> torch.Tensor:
    """kohya: the projected patches plus the table's rows of the window, drawn as MMDiT.forward draws it; the
    rows picked one by one by their index in the flattened max x max table."""
    p, size = embed.patch_size, embed.pos_embed_max_size
    h, w = latent.shape[-2] // p, latent.shape[-1] // p
    random_crop = torch.rand(1, generator=generator).item() < rate
    if random_crop:
        top = torch.randint(0, size - h + 1, (1,), generator=generator).item()
        left = torch.randint(0, size - w + 1, (1,), generator=generator).item()
    else:
        top, left = (size - h) // 2, (size - w) // 2
    rows = [(top + i) * size + (left + j) for i in range(h) for j in range(w)]
    patches = embed.proj(latent).flatten(2).transpose(1, 2)
    return patches + embed.pos_embed[:, rows, :]


@pytest.fixture(scope="module")
def transformer():
    return build_pipeline(BASE).transformer


@pytest.mark.parametrize("rate", [0.0, 0.5, 1.0])
def test_windows_are_kohyas_draws(tmp_path, transformer, rate):
    plan = make_plan(tmp_path, base=BASE, steps=2, extra=f"[loss]\npos_embed_random_crop_rate = {rate}\n")
    assert plan.loss.pos_embed_random_crop_rate == rate
    embed = transformer.pos_embed
    latent = torch.randn(2, 16, 8, 12, generator=torch.Generator().manual_seed(0))
    ours_gen, kohya_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    centred = embed(latent)
    moved = 0
    with torch.no_grad(), training_windows(plan, [transformer], ours_gen):
        for _ in range(12):
            ours = embed(latent)
            expected = kohya_patches(embed, latent, rate, kohya_gen) if rate else centred
            torch.testing.assert_close(ours, expected, rtol=0, atol=0)
            moved += not torch.equal(ours, centred)
    assert (moved == 0) if rate == 0 else (moved > 0)
    assert rate == 0 or torch.equal(ours_gen.get_state(), kohya_gen.get_state())  # the same draws
    assert torch.equal(embed(latent), centred)  # outside a training batch: diffusers' centred window


def test_tiny_sd3_trains_with_random_windows_and_resumes_bit_exact(tmp_path):
    extra = LORA + "\n[loss]\npos_embed_random_crop_rate = 0.5\ntext_encoder_dropout = [0.2, 0.2, 0.2]\n"
    plan = make_plan(tmp_path / "whole", base=BASE, steps=4, extra=extra)
    assert "position window" in summary_text(plan)
    whole = execute(plan)
    parts_plan = make_plan(tmp_path / "parts", base=BASE, steps=4, extra=extra)
    first = execute(parts_plan, stop_after=2)
    second = execute(parts_plan, resume=True)
    assert second.status == "finished" and first.losses + second.losses == whole.losses
    a, b = final_weights(whole.final), final_weights(second.final)
    assert a and a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(math.isfinite(x) for x in whole.losses)
    only_dropout = extra.replace("pos_embed_random_crop_rate = 0.5\n", "")
    assert (
        execute(make_plan(tmp_path / "centred", base=BASE, steps=4, extra=only_dropout)).losses
        != whole.losses
    )

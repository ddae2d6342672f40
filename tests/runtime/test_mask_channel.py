"""`[[datasets]] mask_channel`: a mask file's luminance (dbspec's default) or its red channel, as kohya's
apply_masked_loss reads a conditioning image (loaded as RGB, channel 0, mapped from [-1, 1] back to [0, 1]).
Tested on a coloured mask where the two differ; the kohya converter writes "red" for conditioning masks."""

from __future__ import annotations

from pathlib import Path

import attrs
import numpy as np
import pytest
import torch
from PIL import Image

from dbspec.runtime.data import load_example, load_mask
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, summary_text, write_spec

RED, CYAN = (255, 0, 0), (0, 200, 255)  # red: R 1, luminance 0.30; cyan: R 0, luminance 0.77


def _coloured_masks(tmp_path: Path, channel: str | None) -> Path:
    extra = '[adapter]\nkind = "lora"\nrank = 2\n'
    dataset_extra = 'masks = "masks"' + (f'\nmask_channel = "{channel}"' if channel else "")
    spec = write_spec(tmp_path, steps=2, dataset_extra=dataset_extra, extra=extra)
    masks = tmp_path / "masks"
    masks.mkdir(exist_ok=True)
    for img in sorted((tmp_path / "data" / "toy").iterdir()):
        size = Image.open(img).size
        mask = Image.new("RGB", size, CYAN)
        mask.paste(RED, (0, 0, size[0] // 2, size[1]))
        mask.save(masks / img.name)
    return spec


def _kohya_mask(path: str) -> np.ndarray:
    """kohya: load_image converts to RGB, the transforms map to [-1, 1], apply_masked_loss takes channel 0
    and maps it back with x / 2 + 0.5."""
    rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
    normalised = (rgb / 255.0 - 0.5) / 0.5
    return normalised[:, :, 0] / 2 + 0.5


@pytest.mark.parametrize("channel", ["red", "luminance"])
def test_a_coloured_mask_reads_as_the_chosen_channel(tmp_path, channel):
    plan = compile_spec(_coloured_masks(tmp_path, channel))
    d = plan.datasets[0]
    assert d.mask_channel == channel
    img = d.images[0]
    mask = load_mask(img, channel=d.mask_channel)
    # the same mask saved as a grey file of that channel: one resize and crop for both
    source = Image.open(img.mask)
    grey = source.convert("RGB").getchannel("R") if channel == "red" else source.convert("L")
    grey_path = tmp_path / "grey.png"
    grey.save(grey_path)
    assert torch.equal(mask, load_mask(attrs.evolve(img, mask=str(grey_path))))
    other = load_mask(img, channel="luminance" if channel == "red" else "red")
    assert (mask - other).abs().max() > 0.3  # the two readings differ on this mask
    _, from_example = load_example(img, mask_channel=d.mask_channel)
    assert torch.equal(from_example, mask)


def test_the_red_channel_is_kohyas_reading(tmp_path):
    plan = compile_spec(_coloured_masks(tmp_path, "red"))
    img = plan.datasets[0].images[0]
    red = np.asarray(Image.open(img.mask).convert("RGB"))[:, :, 0]
    assert np.allclose(_kohya_mask(img.mask), red / 255.0, atol=1e-6)
    lum = np.asarray(Image.open(img.mask).convert("L")) / 255.0
    assert not np.allclose(lum, red / 255.0)


def test_runs_with_the_two_channels_train_differently(tmp_path):
    red = execute(compile_spec(_coloured_masks(tmp_path, "red"), ["output.dir=red"]))
    lum = execute(compile_spec(_coloured_masks(tmp_path, None), ["output.dir=lum"]))
    assert red.status == lum.status == "finished" and red.losses != lum.losses
    assert "red channel" in summary_text(compile_spec(_coloured_masks(tmp_path, "red")))
    assert "red channel" not in summary_text(compile_spec(_coloured_masks(tmp_path, None)))

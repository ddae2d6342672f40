"""kohya's colour augmentation (`datasets[].color_aug`): OpenCV's 8-bit HSV conversion against values recorded
from OpenCV, kohya's draws recomputed here, the plan dropping the latent cache, the converter, and a tiny run
resuming bit-exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from dbspec.runtime.color_aug import bgr_to_hsv, color_aug, hsv_to_bgr
from dbspec.runtime.execute import execute
from tests.runtime.runspec import compile_spec, write_spec

# Recorded with opencv-python-headless 5.0 (one pixel a row: OpenCV's scalar path): cvtColor BGR2HSV of each
# colour, and HSV2BGR after kohya's hue shift (shift + 180 when negative, modulo 180, truncated).
CV = json.loads((Path(__file__).parent / "data" / "opencv_hsv_shift.json").read_text())


def test_bgr_to_hsv_equals_opencv():
    colors = np.array(CV["colors"], dtype=np.uint8).reshape(-1, 1, 3)
    assert bgr_to_hsv(colors).reshape(-1, 3).tolist() == CV["hsv"]


def test_hue_shift_round_trip_matches_opencv_within_one_level():
    """OpenCV's float back-conversion rounds; its vectorised path can differ from its own scalar path by one
    level, so kohya's results are not bit-identical across machines either: at most 1, and rarely."""
    hsv = np.array(CV["hsv"], dtype=np.uint8).reshape(-1, 1, 3)
    got = []
    for k, shift in enumerate(CV["shifts"]):
        one = hsv[k : k + 1].copy()
        shift = 180 + shift if shift < 0 else shift
        one[..., 0] = ((one[..., 0] + shift) % 180).astype(np.uint8)
        got.append(hsv_to_bgr(one).reshape(3).tolist())
    diff = np.abs(np.array(got, dtype=int) - np.array(CV["shifted"], dtype=int))
    assert diff.max() <= 1 and (diff.max(axis=1) > 0).mean() < 0.02


def _expected(image: np.ndarray, seed: int) -> np.ndarray:
    """kohya's AugHelper.color_aug, written out here: p 0.33, then hue (> 0.5) or gamma on raw 0-255."""
    rng = random.Random(seed)
    if rng.random() > 0.33:
        return image
    if rng.random() > 0.5:
        shift = rng.uniform(-8, 8)
        hsv = bgr_to_hsv(image).astype(np.float64)
        hsv[..., 0] = np.floor((hsv[..., 0] + (180 + shift if shift < 0 else shift)) % 180)
        return hsv_to_bgr(hsv.astype(np.uint8))
    gamma = rng.uniform(0.95, 1.05)
    return np.floor(np.minimum(image.astype(np.float64) ** gamma, 255)).astype(np.uint8)


def test_draws_and_branches_are_kohyas():
    image = np.random.default_rng(3).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    kinds = set()
    for seed in range(60):
        got = color_aug(image, random.Random(seed))
        assert np.array_equal(got, _expected(image, seed)), seed
        r = random.Random(seed)
        kinds.add("none" if r.random() > 0.33 else "hue" if r.random() > 0.5 else "gamma")
    assert kinds == {"none", "hue", "gamma"}


def test_colour_augmentation_drops_the_latent_cache_and_shows_why(tmp_path):
    spec = write_spec(tmp_path, dataset_extra="color_aug = true")
    plan = compile_spec(spec)
    assert plan.datasets[0].color_aug and plan.cache.latents
    assert all(not img.latent_keys for img in plan.datasets[0].images)
    assert any("colour augmentation" in n for n in plan.cache.notes)
    plain = compile_spec(write_spec(tmp_path))
    assert not plain.datasets[0].color_aug and all(img.latent_keys for img in plain.datasets[0].images)


def test_a_tiny_run_with_colour_augmentation_resumes_exactly(tmp_path):
    spec = write_spec(tmp_path, steps=4, dataset_extra="color_aug = true\nflip = true")
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    plain = execute(compile_spec(spec, ["output.dir=plain", "datasets.0.color_aug=false"]))
    assert plain.losses != whole.losses


@pytest.mark.parametrize("cache", [False, True])
def test_kohya_color_aug_converts(tmp_path, cache):
    from tests.unit.convert_kit import SD15, errors, fate, images, kohya, plan_of

    images(tmp_path / "img" / "10_ohwx dog", 2, (512, 512))
    cmd = (
        f"train_network.py --pretrained_model_name_or_path {SD15} --train_data_dir img --resolution 512 "
        "--network_module networks.lora --output_dir out --color_aug" + (" --cache_latents" if cache else "")
    )
    outcome = kohya(tmp_path, command=cmd)
    if cache:  # kohya asserts
        assert outcome.exit_code == 1 and any("color_aug" in e for e in errors(outcome))
        return
    assert fate(outcome, "color_aug") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.datasets[0].color_aug

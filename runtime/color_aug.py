"""kohya's colour augmentation (`datasets[].color_aug`, kohya's `color_aug`), per sample from its own seeded
generator (runtime/data.py `sample_rng`, after the crop's draws) so that resume repeats it exactly.

kohya (library/train_util.py AugHelper.color_aug) draws, on the 8-bit crop before the flip: with
probability 0.33 (a draw <= 0.33) one change, then a second draw > 0.5 picks a hue shift, else a gamma:
- hue shift: a uniform draw in [-8, 8] added to the hue of OpenCV's 8-bit HSV (hue 0-179: up to 16 degrees),
  modulo 180, truncated to an integer. kohya converts its RGB array with OpenCV's BGR conversion, so the red
  and blue channels swap roles; done the same here, with OpenCV's 8-bit HSV formulas (fixed-point forward,
  float32 back) in numpy (OpenCV is not a dependency). The forward conversion equals OpenCV's; the way back
  equals its scalar path within one level (tests/runtime/test_color_aug.py, against recorded OpenCV values):
  OpenCV's vectorised path itself differs from its scalar path by one level in some pixels, so kohya's
  images are not bit-identical across machines either.
- gamma: a uniform draw in [0.95, 1.05], each channel value v (0-255, not normalised) -> v ** gamma,
  clipped to 255 and truncated.
Pixels and masks: the mask is not changed (kohya changes the RGB channels only).
"""

from __future__ import annotations

import random

import numpy as np

HUE_LIMIT = 8
_SHIFT = 12  # OpenCV's hsv_shift: fixed-point bits of its 8-bit RGB->HSV tables


def _tables() -> tuple[np.ndarray, np.ndarray]:
    i = np.arange(256, dtype=np.float64)
    with np.errstate(divide="ignore"):
        sdiv = np.where(i > 0, np.rint((255 << _SHIFT) / i), 0)
        hdiv = np.where(i > 0, np.rint((180 << _SHIFT) / (6.0 * i)), 0)
    return sdiv.astype(np.int64), hdiv.astype(np.int64)


_SDIV, _HDIV = _tables()


def color_aug(image: np.ndarray, rng: random.Random) -> np.ndarray:
    """(H, W, 3) uint8 -> (H, W, 3) uint8, changed or not as the draws decide."""
    if rng.random() > 0.33:
        return image
    if rng.random() > 0.5:
        shift = rng.uniform(-HUE_LIMIT, HUE_LIMIT)
        if shift < 0:
            shift = 180 + shift
        hsv = bgr_to_hsv(image)
        hsv[..., 0] = ((hsv[..., 0] + shift) % 180).astype(
            np.uint8
        )  # float -> uint8 truncates, as numpy does
        return hsv_to_bgr(hsv)
    gamma = rng.uniform(0.95, 1.05)
    return np.clip(image.astype(np.float64) ** gamma, 0, 255).astype(np.uint8)


def bgr_to_hsv(image: np.ndarray) -> np.ndarray:
    """OpenCV's COLOR_BGR2HSV on uint8 (hue 0-179): its fixed-point formulas."""
    b, g, r = (image[..., k].astype(np.int64) for k in range(3))
    v = np.maximum(np.maximum(b, g), r)
    vmin = np.minimum(np.minimum(b, g), r)
    diff = v - vmin
    half = 1 << (_SHIFT - 1)
    s = (diff * _SDIV[v] + half) >> _SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + half) >> _SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], axis=-1).astype(np.uint8)


def hsv_to_bgr(hsv: np.ndarray) -> np.ndarray:
    """OpenCV's COLOR_HSV2BGR on uint8: to float (s, v / 255), sector and the four tab values in float32,
    x 255 and rounded half to even (cvRound)."""
    f = np.float32
    h = hsv[..., 0].astype(f) * f(6.0 / 180.0)
    s = hsv[..., 1].astype(f) * f(1.0 / 255.0)
    v = hsv[..., 2].astype(f) * f(1.0 / 255.0)
    sector = np.floor(h)
    h = h - sector
    sector = (sector.astype(np.int64) % 6 + 6) % 6
    one = f(1.0)
    tab = np.stack([v, v * (one - s), v * (one - s * h), v * (one - s * (one - h))], axis=-1)
    order = np.array([[1, 3, 0], [1, 0, 2], [3, 0, 1], [0, 2, 1], [0, 1, 3], [2, 1, 0]])[sector]  # (b, g, r)
    bgr = np.take_along_axis(tab, order, axis=-1)
    bgr = np.where((s == 0)[..., None], v[..., None], bgr)
    return np.clip(np.rint(bgr * f(255.0)), 0, 255).astype(np.uint8)

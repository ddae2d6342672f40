"""Aspect-ratio buckets, computed exactly as kohya-ss sd-scripts computes them.

dbspec promises kohya users the same buckets kohya would train with, so every rule below transcribes
kohya's arithmetic: the same float expressions, `int(x + 0.5)` half-up rounding (not Python's
banker's `round`), floor-to-step with `x - x % step`, and first-wins tie-breaking (`np.argmin`).
Sources: `library/model_util.py: make_bucket_resolutions`, `library/train_util.py: BucketManager
(select_bucket, round_to_steps)`, `BaseDataset.adjust_min_max_bucket_reso_by_steps` and
`trim_and_resize_if_required`. Stdlib only: the compiler runs where numpy and torch are absent.

Where kohya would crash (ZeroDivisionError, a zero-sized bucket, its own asserts) these functions
raise ValueError instead, so the compiler can report it before a run starts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import attrs

Size = tuple[int, int]  # (width, height), kohya's order for resolutions and buckets


@attrs.frozen(kw_only=True)
class Placement:
    """What happens to one image: resize to `resized`, then crop `bucket` out of it at `crop`."""

    bucket: Size  # (W, H) of the training tensor
    resized: Size  # (W, H) after the resize, before the crop
    crop: Size  # (left, top) of the centre crop; with random_crop the runtime draws its own offset
    upscaled: bool  # resize scale > 1


def dataset_size(resolution: int, height: int = 0) -> Size:
    """A dataset's (width, height): `resolution` square, or `resolution` x `resolution_height` (W,H)."""
    return (resolution, height or resolution)


def adjust_min_max(min_reso: int, max_reso: int, step: int) -> Size:
    """kohya's adjust_min_max_bucket_reso_by_steps: floor the minimum, ceil the maximum to `step`."""
    _require_positive("bucket step", step)
    low = min_reso - min_reso % step  # floor to a multiple of step
    high = max_reso if max_reso % step == 0 else max_reso + step - max_reso % step  # ceil
    return low, high


def range_violations(
    resolution: Size, min_reso: int, max_reso: int, step: int, *, listed: bool = True
) -> tuple[str, ...]:
    """Why kohya would refuse (assert) or crash on this bucket range; empty when it is fine. `listed`: kohya
    builds the bucket list (not with bucket_no_upscale, which still asserts the range)."""
    low, high = adjust_min_max(min_reso, max_reso, step)
    problems: list[str] = []
    if low <= 0 and listed:  # make_bucket_resolutions would divide by a zero width
        problems.append(f"min bucket size {min_reso} rounds down to {low} with step {step}")
    if min(resolution) < low:  # kohya asserts min(resolution) >= min_bucket_reso
        problems.append(f"min bucket size {low} is larger than the resolution's short side {min(resolution)}")
    if max(resolution) > high:  # kohya asserts max(resolution) <= max_bucket_reso
        problems.append(
            f"max bucket size {high} is smaller than the resolution's long side {max(resolution)}"
        )
    return tuple(problems)


def bucket_list(resolution: Size, min_reso: int, max_reso: int, step: int) -> tuple[Size, ...]:
    """kohya's make_bucket_resolutions, after adjust_min_max (idempotent), sorted by (W, H)."""
    width, height = _positive_size(resolution)
    low, high = adjust_min_max(min_reso, max_reso, step)
    if low <= 0:
        raise ValueError(
            f"min bucket size {min_reso} rounds down to {low} with step {step}; kohya divides by it"
        )
    max_area = width * height
    buckets: set[Size] = set()
    # the square: float sqrt, float floor-division by step, then int; added even outside [low, high]
    square = int(math.sqrt(max_area) // step) * step
    buckets.add((square, square))
    for bucket_w in range(low, high + 1, step):
        # integer area // width, floored to step, capped at high
        bucket_h = min(high, int((max_area // bucket_w) // step) * step)
        if bucket_h >= low:  # too-flat shapes are dropped, with their mirror
            buckets.add((bucket_w, bucket_h))
            buckets.add((bucket_h, bucket_w))
    return tuple(sorted(buckets))


def place(size: Size, buckets: Sequence[Size]) -> Placement:
    """kohya select_bucket, normal mode: nearest-aspect bucket, cover-resize (up or down), centre crop."""
    width, height = _positive_size(size)
    if not buckets:
        raise ValueError("no buckets to place an image in")
    aspect = width / height
    # an image already the size of a bucket keeps it, even if another bucket has the same aspect
    bucket = (width, height) if (width, height) in buckets else _nearest_aspect(buckets, aspect)
    bucket_w, bucket_h = bucket
    # wider than the bucket -> match heights, else match widths: the resize covers the bucket, never pads
    scale = bucket_h / height if aspect > bucket_w / bucket_h else bucket_w / width
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))  # kohya rounds half up
    return _placement(bucket, resized, upscaled=scale > 1)


def place_no_upscale(size: Size, max_area: int, step: int) -> Placement:
    """kohya select_bucket with bucket_no_upscale: shrink to max_area if larger, bucket = floor to step.

    There is no predefined list and min/max bucket sizes do not apply (kohya ignores them here).
    """
    width, height = _positive_size(size)
    _require_positive("max area", max_area)
    _require_positive("bucket step", step)
    if width * height > max_area:
        resized = _shrink_to_area(width, height, max_area, step)
    else:
        resized = (width, height)  # small images are never enlarged
    # bucket = resized floored to step: crop the remainder, never pad
    bucket = (resized[0] - resized[0] % step, resized[1] - resized[1] % step)
    if bucket[0] == 0 or bucket[1] == 0:
        raise ValueError(
            f"image {width}x{height} gives an empty {bucket[0]}x{bucket[1]} bucket with step {step}"
        )
    return _placement(bucket, resized, upscaled=False)


def place_square(size: Size, resolution: Size) -> Placement:
    """Buckets off: the one bucket is `resolution`; cover-resize and centre crop.

    This is kohya's select_bucket with a single predefined bucket, which its latent-cache path applies.
    (kohya's non-cached path skips the resize and needs images at least `resolution` large: the dataset's
    `resize = "none"`, compiler/datasets.py `_uncropped`.)
    """
    bucket = _positive_size(resolution)
    return place(size, (bucket,))


def _shrink_to_area(width: int, height: int, max_area: int, step: int) -> Size:
    """The no-upscale resize: keep the aspect, fit max_area, put one side on the step grid."""
    aspect = width / height
    ideal_w = math.sqrt(max_area * aspect)  # the real-valued size with area max_area and this aspect
    ideal_h = max_area / ideal_w
    # candidate A rounds the width to the grid first, candidate B the height; kohya keeps the truer aspect
    grid_w = _round_to_steps(ideal_w, step)
    grid_h_for_w = _round_to_steps(grid_w / aspect, step)
    grid_h = _round_to_steps(ideal_h, step)
    grid_w_for_h = _round_to_steps(grid_h * aspect, step)
    if grid_h_for_w == 0 or grid_h == 0:  # kohya divides by these: ZeroDivisionError
        raise ValueError(f"image {width}x{height} is too flat to shrink to area {max_area} on step {step}")
    error_w_first = abs(grid_w / grid_h_for_w - aspect)
    error_h_first = abs(grid_w_for_h / grid_h - aspect)
    if error_w_first < error_h_first:  # strict <: a tie takes the height-first candidate, as kohya
        return grid_w, int(grid_w / aspect + 0.5)
    return int(grid_h * aspect + 0.5), grid_h


def _round_to_steps(value: float, step: int) -> int:
    """kohya BucketManager.round_to_steps: round half up to an int, then floor to a multiple of step."""
    rounded = int(value + 0.5)
    return rounded - rounded % step


def _nearest_aspect(buckets: Sequence[Size], aspect: float) -> Size:
    """The bucket whose w/h is closest to `aspect`; on a tie the first in list order (np.argmin)."""
    errors = [abs(bucket_w / bucket_h - aspect) for bucket_w, bucket_h in buckets]
    return tuple(buckets[min(range(len(errors)), key=errors.__getitem__)])  # min() keeps the first minimum


def _placement(bucket: Size, resized: Size, *, upscaled: bool) -> Placement:
    """Centre crop as trim_and_resize_if_required: offset (resized - bucket) // 2 per axis."""
    if resized[0] < bucket[0] or resized[1] < bucket[1]:  # kohya asserts the trimmed size equals the bucket
        raise ValueError(f"resize {resized} does not cover bucket {bucket}")
    crop = ((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2)
    return Placement(bucket=tuple(bucket), resized=resized, crop=crop, upscaled=upscaled)


def _positive_size(size: Size) -> Size:
    width, height = size
    _require_positive("width", width)
    _require_positive("height", height)
    return width, height


def _require_positive(what: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")

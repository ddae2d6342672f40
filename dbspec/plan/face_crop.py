"""kohya's face-crop augmentation (sd-scripts `BaseDataset.crop_target`) as a pure function of the plan.

For an image whose file name carries a face box (`name_cx_cy_w_h.ext`), each sample draws, from the generator
passed in and in kohya's order:

1. a scale: the smallest that still covers the target resolution, raised so the face is at most `1/hi` of the
   target's short side, and a largest one where it is `1/lo` of it, both capped at 1 (never an upscale); one
   uniform draw between them when they differ, none otherwise;
2. for the vertical, then the horizontal axis, the window start that centres the face; with a random crop it
   is shifted by the sum of two draws in [0, reach] minus reach (reach: the farther image edge from the face),
   else, when the range is a real range and the face is larger than a tenth of the short side and at least
   40 px, by one draw in [-face//20, face//20]; then clamped into the image.

An image already of the target size is used as it is, with no draw. `runtime/data.py` resizes the image to
the returned size and cuts the target at the returned offset (the same window for the mask).
"""

from __future__ import annotations

import random

from dbspec.plan.model import FaceBox, FaceCropPlan, Size


def face_of(plan: FaceCropPlan | None, rel: str) -> FaceBox | None:
    """The face box of the dataset's image `rel`, None when it has none or face crop is off."""
    if plan is None:
        return None
    for box in plan.faces:
        if box.image == rel:
            return box
    return None


def face_window(
    size: Size,
    box: FaceBox,
    target: Size,
    face_range: tuple[float, float],
    *,
    random_crop: bool,
    rng: random.Random,
) -> tuple[Size, tuple[int, int]]:
    """((width, height) to resize the image to, (left, top) of the target-sized window in it)."""
    (width, height), (tw, th), (lo, hi) = size, target, face_range
    if (width, height) == (tw, th):
        return (width, height), (0, 0)
    face, short = max(box.w, box.h), min(tw, th)
    cover = max(th / height, tw / width)
    smallest = min(1.0, max(cover, short / (face * hi)))
    largest = min(1.0, max(smallest, short / (face * lo)))
    scale = smallest if smallest >= largest else rng.uniform(smallest, largest)
    resized = (int(width * scale + 0.5), int(height * scale + 0.5))
    if resized[0] < tw or resized[1] < th:  # the compiler refuses such images (DBS359), as kohya asserts
        raise ValueError(f"a {width}x{height} image scaled by {scale} no longer covers {tw}x{th}")
    starts = []
    for length, span, centre in ((resized[1], th, box.cy), (resized[0], tw, box.cx)):  # kohya: y, then x
        centre = int(centre * scale + 0.5)
        start = centre - span // 2
        if random_crop:
            reach = max(length - centre, centre)
            start += rng.randint(0, reach) + rng.randint(0, reach) - reach
        elif lo != hi and face > short // 10 and face >= 40:
            start += rng.randint(-face // 20, face // 20)
        starts.append(max(0, min(start, length - span)))
    return resized, (starts[1], starts[0])

"""dbspec.compiler.buckets against kohya sd-scripts' own numbers and an independent transcription of it."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbspec.compiler.buckets import (
    Placement,
    adjust_min_max,
    bucket_list,
    place,
    place_no_upscale,
    place_square,
    range_violations,
)

KOHYA_512_BUCKETS = (  # kohya.md §4: 512x512, min 256, max 1024, step 64
    (256, 832), (256, 896), (256, 960), (256, 1024), (320, 704), (320, 768), (384, 640), (448, 576),
    (512, 512), (576, 448), (640, 384), (704, 320), (768, 320), (832, 256), (896, 256), (960, 256),
    (1024, 256),
)  # fmt: skip


class KohyaReference:
    """A line-by-line transcription of kohya's BucketManager, written the way kohya writes it.

    Deliberately shares no code with dbspec: numpy is replaced by plain lists and an explicit argmin
    loop. Failures surface as the exceptions kohya itself would hit (ZeroDivisionError).
    """

    def __init__(self, no_upscale, max_reso, min_size, max_size, reso_steps):
        self.no_upscale = no_upscale
        self.max_reso = max_reso
        self.max_area = max_reso[0] * max_reso[1]
        self.min_size = min_size
        self.max_size = max_size
        self.reso_steps = reso_steps

    @staticmethod
    def adjust_min_max_bucket_reso_by_steps(min_bucket_reso, max_bucket_reso, bucket_reso_steps):
        if min_bucket_reso % bucket_reso_steps != 0:
            min_bucket_reso = min_bucket_reso - min_bucket_reso % bucket_reso_steps
        if max_bucket_reso % bucket_reso_steps != 0:
            max_bucket_reso = max_bucket_reso + bucket_reso_steps - max_bucket_reso % bucket_reso_steps
        return min_bucket_reso, max_bucket_reso

    def make_buckets(self):
        max_width, max_height = self.max_reso
        max_area = max_width * max_height
        resos = set()
        width = int(math.sqrt(max_area) // self.reso_steps) * self.reso_steps
        resos.add((width, width))
        width = self.min_size
        while width <= self.max_size:
            height = min(self.max_size, int((max_area // width) // self.reso_steps) * self.reso_steps)
            if height >= self.min_size:
                resos.add((width, height))
                resos.add((height, width))
            width += self.reso_steps
        resos = list(resos)
        resos.sort()
        self.predefined_resos = resos.copy()
        self.predefined_resos_set = set(resos)
        self.predefined_aspect_ratios = [w / h for w, h in resos]

    def round_to_steps(self, x):
        x = int(x + 0.5)
        return x - x % self.reso_steps

    def select_bucket(self, image_width, image_height):
        aspect_ratio = image_width / image_height
        scale = 1.0
        if not self.no_upscale:
            reso = (image_width, image_height)
            if reso not in self.predefined_resos_set:
                best_id, best_error = 0, None
                for i, ar in enumerate(self.predefined_aspect_ratios):
                    error = abs(ar - aspect_ratio)
                    if best_error is None or error < best_error:  # argmin: first minimum wins
                        best_id, best_error = i, error
                reso = self.predefined_resos[best_id]
            ar_reso = reso[0] / reso[1]
            if aspect_ratio > ar_reso:
                scale = reso[1] / image_height
            else:
                scale = reso[0] / image_width
            resized_size = (int(image_width * scale + 0.5), int(image_height * scale + 0.5))
        else:
            if image_width * image_height > self.max_area:
                resized_width = math.sqrt(self.max_area * aspect_ratio)
                resized_height = self.max_area / resized_width
                b_width_rounded = self.round_to_steps(resized_width)
                b_height_in_wr = self.round_to_steps(b_width_rounded / aspect_ratio)
                ar_width_rounded = b_width_rounded / b_height_in_wr
                b_height_rounded = self.round_to_steps(resized_height)
                b_width_in_hr = self.round_to_steps(b_height_rounded * aspect_ratio)
                ar_height_rounded = b_width_in_hr / b_height_rounded
                if abs(ar_width_rounded - aspect_ratio) < abs(ar_height_rounded - aspect_ratio):
                    resized_size = (b_width_rounded, int(b_width_rounded / aspect_ratio + 0.5))
                else:
                    resized_size = (int(b_height_rounded * aspect_ratio + 0.5), b_height_rounded)
            else:
                resized_size = (image_width, image_height)
            bucket_width = resized_size[0] - resized_size[0] % self.reso_steps
            bucket_height = resized_size[1] - resized_size[1] % self.reso_steps
            reso = (bucket_width, bucket_height)
        ar_error = (reso[0] / reso[1]) - aspect_ratio  # kohya computes it; a zero height crashes here
        return reso, resized_size, ar_error, scale

    @staticmethod
    def trim_offsets(reso, resized_size):
        left = (resized_size[0] - reso[0]) // 2 if resized_size[0] > reso[0] else 0
        top = (resized_size[1] - reso[1]) // 2 if resized_size[1] > reso[1] else 0
        return left, top


def reference_placement(manager: KohyaReference, width: int, height: int) -> Placement | None:
    """kohya's outcome as a Placement, or None where kohya crashes or yields an empty bucket."""
    try:
        reso, resized, _, scale = manager.select_bucket(width, height)
    except ZeroDivisionError:
        return None
    if reso[0] == 0 or reso[1] == 0:
        return None
    crop = KohyaReference.trim_offsets(reso, resized)
    return Placement(bucket=reso, resized=resized, crop=crop, upscaled=scale > 1)


def assert_invariants(placement: Placement, step: int | None) -> None:
    (bucket_w, bucket_h), (resized_w, resized_h), (left, top) = (
        placement.bucket,
        placement.resized,
        placement.crop,
    )
    if step is not None:
        assert bucket_w % step == 0 and bucket_h % step == 0
    assert resized_w >= bucket_w and resized_h >= bucket_h  # the resize covers the bucket
    assert left >= 0 and left + bucket_w <= resized_w  # the crop lies inside the resized image
    assert top >= 0 and top + bucket_h <= resized_h


# ---- kohya.md §4 verified examples --------------------------------------------------------------


def test_the_17_buckets_for_512_square():
    assert bucket_list((512, 512), 256, 1024, 64) == KOHYA_512_BUCKETS


@pytest.mark.parametrize(
    ("size", "bucket", "resized", "upscaled"),
    [
        ((1000, 750), (576, 448), (597, 448), False),
        ((1920, 1080), (640, 384), (683, 384), False),
        ((300, 200), (640, 384), (640, 427), True),
    ],
)
def test_verified_examples_normal_mode(size, bucket, resized, upscaled):
    placement = place(size, KOHYA_512_BUCKETS)
    assert (placement.bucket, placement.resized, placement.upscaled) == (bucket, resized, upscaled)
    assert placement.crop == ((resized[0] - bucket[0]) // 2, (resized[1] - bucket[1]) // 2)


@pytest.mark.parametrize(
    ("size", "bucket", "resized"),
    [
        ((1000, 750), (512, 384), (512, 384)),
        ((1920, 1080), (640, 384), (683, 384)),
        ((300, 200), (256, 192), (300, 200)),
    ],
)
def test_verified_examples_no_upscale(size, bucket, resized):
    placement = place_no_upscale(size, 512 * 512, 64)
    assert (placement.bucket, placement.resized, placement.upscaled) == (bucket, resized, False)


# ---- smaller rules -------------------------------------------------------------------------------


def test_adjust_floors_min_and_ceils_max():
    assert adjust_min_max(250, 1000, 64) == (192, 1024)
    assert adjust_min_max(256, 1024, 64) == (256, 1024)


def test_bucket_list_adjusts_unaligned_bounds_like_kohya():
    assert bucket_list((512, 512), 300, 1000, 64) == bucket_list((512, 512), 256, 1024, 64)


def test_exact_size_match_keeps_its_bucket_without_resize():
    for bucket in KOHYA_512_BUCKETS:
        assert place(bucket, KOHYA_512_BUCKETS) == Placement(
            bucket=bucket, resized=bucket, crop=(0, 0), upscaled=False
        )


def test_aspect_tie_goes_to_the_first_bucket_in_list_order():
    # 300x200 has aspect 1.5: exactly 0.5 from both 1.0 and 2.0
    assert place((300, 200), ((256, 256), (512, 256))).bucket == (256, 256)
    assert place((300, 200), ((512, 256), (256, 256))).bucket == (512, 256)


def test_square_mode_cover_resizes_and_centre_crops():
    assert place_square((1000, 750), (512, 512)) == Placement(
        bucket=(512, 512), resized=(683, 512), crop=(85, 0), upscaled=False
    )
    assert place_square((512, 512), (512, 512)).resized == (512, 512)
    assert place_square((100, 200), (512, 512)) == Placement(
        bucket=(512, 512), resized=(512, 1024), crop=(0, 256), upscaled=True
    )


def test_kohya_crashes_become_value_errors():
    with pytest.raises(ValueError):
        bucket_list((512, 512), 32, 1024, 64)  # min rounds to 0: kohya divides by it
    with pytest.raises(ValueError):
        place_no_upscale((100, 100), 512 * 512, 128)  # floors to an empty bucket
    with pytest.raises(ValueError):
        place_no_upscale((4096, 16), 64 * 64, 64)  # too flat: kohya ZeroDivisionError
    with pytest.raises(ValueError):
        place((0, 10), KOHYA_512_BUCKETS)


def test_range_violations_mirror_kohyas_asserts():
    assert range_violations((512, 512), 256, 1024, 64) == ()
    assert len(range_violations((512, 512), 576, 1024, 64)) == 1  # min above the short side
    assert len(range_violations((1280, 512), 256, 1024, 64)) == 1  # max below the long side
    assert len(range_violations((512, 512), 32, 1024, 64)) == 1  # min rounds to zero


# ---- property tests against the independent transcription ---------------------------------------

steps = st.sampled_from([8, 16, 32, 64, 128]) | st.integers(8, 128)
image_sides = st.integers(64, 4096)


@st.composite
def bucket_configs(draw):
    """A resolution, step and min/max range that kohya accepts (its asserts hold after adjusting)."""
    step = draw(steps)
    resolution = (draw(st.integers(128, 1536)), draw(st.integers(128, 1536)))
    min_reso = draw(st.integers(step, min(resolution)))
    max_reso = draw(st.integers(max(resolution), 2048))
    return resolution, min_reso, max_reso, step


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=bucket_configs(), width=image_sides, height=image_sides, pick_a_bucket=st.integers(0, 3))
def test_place_matches_kohya(config, width, height, pick_a_bucket):
    resolution, min_reso, max_reso, step = config
    low, high = KohyaReference.adjust_min_max_bucket_reso_by_steps(min_reso, max_reso, step)
    kohya = KohyaReference(False, resolution, low, high, step)
    kohya.make_buckets()
    buckets = bucket_list(resolution, min_reso, max_reso, step)
    assert list(buckets) == kohya.predefined_resos
    if pick_a_bucket == 0:  # a quarter of the images exactly match a bucket
        width, height = kohya.predefined_resos[(width * 31 + height) % len(buckets)]
    placement = place((width, height), buckets)
    assert placement == reference_placement(kohya, width, height)
    assert_invariants(placement, step)


@settings(max_examples=3000, deadline=None)
@given(
    resolution=st.tuples(st.integers(64, 2048), st.integers(64, 2048)),
    step=steps,
    width=st.integers(1, 4096),
    height=st.integers(1, 4096),
)
def test_place_no_upscale_matches_kohya(resolution, step, width, height):
    kohya = KohyaReference(True, resolution, None, None, step)
    expected = reference_placement(kohya, width, height)
    if expected is None:  # kohya crashes or trains on an empty tensor: dbspec refuses up front
        with pytest.raises(ValueError):
            place_no_upscale((width, height), resolution[0] * resolution[1], step)
        return
    placement = place_no_upscale((width, height), resolution[0] * resolution[1], step)
    assert placement == expected
    assert_invariants(placement, step)
    assert placement.resized[0] <= width and placement.resized[1] <= height  # never enlarged


@settings(max_examples=500, deadline=None)
@given(
    resolution=st.tuples(st.integers(64, 2048), st.integers(64, 2048)), width=image_sides, height=image_sides
)
def test_place_square_matches_kohya_single_bucket(resolution, width, height):
    kohya = KohyaReference(False, resolution, None, None, None)
    kohya.predefined_resos = [resolution]  # kohya's enable_bucket=False: one fixed bucket
    kohya.predefined_resos_set = {resolution}
    kohya.predefined_aspect_ratios = [resolution[0] / resolution[1]]
    placement = place_square((width, height), resolution)
    assert placement == reference_placement(kohya, width, height)
    assert_invariants(placement, None)

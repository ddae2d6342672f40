"""dbspec.runtime.data: the bucket batch sampler (order, coverage, arithmetic, resume) and image
loading geometry."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dbspec.compiler.schedule import bucket_table, compute_schedule
from dbspec.plan.model import DatasetPlan, ImagePlan
from dbspec.runtime.data import (
    BucketBatchSampler,
    DataError,
    load_example,
    load_mask,
    load_pixels,
    sample_rng,
)

ORIENTATION_TAG = 0x0112


def image_plan(
    path: str = "/nonexistent.png",
    *,
    size=(64, 64),
    bucket=None,
    resized=None,
    crop=(0, 0),
    repeats: int = 1,
    mask: str = "",
) -> ImagePlan:
    return ImagePlan(
        path=str(path),
        rel=Path(path).name,
        sha="0" * 32,
        size=size,
        orientation=1,
        caption="a photo",
        repeats=repeats,
        bucket=bucket or size,
        resized=resized or size,
        crop=crop,
        mask=mask,
    )


def dataset(images, *, role: str = "instance", flip: bool = False) -> DatasetPlan:
    return DatasetPlan(
        name=role,
        role=role,
        path="/data",
        resolution=64,
        crop="center",
        flip=flip,
        mask_source="none",
        images=tuple(images),
    )


def mixed_datasets(flip: bool = False) -> tuple[DatasetPlan, ...]:
    """Three buckets holding 5, 1 and 7 samples; one class image unused (0 repeats)."""
    instance = [image_plan(f"/i{k}.png", size=(64, 64), repeats=2) for k in range(2)]  # 4 in 64x64
    instance.append(image_plan("/wide.png", size=(96, 48), repeats=1))  # 1 in 96x48
    klass = [image_plan(f"/c{k}.png", size=(64, 64), repeats=1) for k in range(1)]  # 1 more in 64x64
    klass += [image_plan(f"/t{k}.png", size=(48, 96), repeats=1) for k in range(7)]  # 7 in 48x96
    klass.append(image_plan("/unused.png", size=(48, 96), repeats=0))
    return dataset(instance, flip=flip), dataset(klass, role="class")


def ids(batches) -> list[list[tuple[int, int, int]]]:
    return [[(s.dataset, s.image, s.aug_seed) for s in batch] for batch in batches]


def test_same_seed_and_epoch_give_the_same_batches():
    a = BucketBatchSampler(mixed_datasets(flip=True), batch_size=2, seed=7)
    b = BucketBatchSampler(mixed_datasets(flip=True), batch_size=2, seed=7)
    assert ids(a.epoch_batches(3)) == ids(b.epoch_batches(3))
    assert [s.flip for bt in a.epoch_batches(3) for s in bt] == [
        s.flip for bt in b.epoch_batches(3) for s in bt
    ]
    assert ids(a.epoch_batches(0)) != ids(a.epoch_batches(1))
    other_seed = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=8)
    assert ids(other_seed.epoch_batches(0)) != ids(a.epoch_batches(0))


def test_global_rng_state_does_not_change_the_order():
    sampler = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=1)
    first = ids(sampler.epoch_batches(0))
    random.seed(123)
    fresh = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=1)
    assert ids(fresh.epoch_batches(0)) == first


def test_every_sample_appears_repeats_times_and_unused_images_never():
    datasets = mixed_datasets()
    sampler = BucketBatchSampler(datasets, batch_size=3, seed=0)
    for epoch in range(3):
        seen = Counter((s.dataset, s.image) for batch in sampler.epoch_batches(epoch) for s in batch)
        expected = {
            (di, ii): img.repeats
            for di, d in enumerate(datasets)
            for ii, img in enumerate(d.images)
            if img.repeats
        }
        assert seen == expected


def test_batches_hold_one_bucket_and_the_partial_batch_is_kept():
    sampler = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=3)
    batches = sampler.epoch_batches(0)
    per_bucket = Counter()
    for batch in batches:
        assert len({s.img.bucket for s in batch}) == 1
        assert 1 <= len(batch) <= 2
        per_bucket[batch[0].img.bucket] += 1
    assert per_bucket == {(64, 64): 3, (96, 48): 1, (48, 96): 4}  # ceil(5/2), ceil(1/2), ceil(7/2)
    assert sorted(len(b) for b in batches) == [1, 1, 1, 2, 2, 2, 2, 2]


def test_roles_come_from_the_dataset():
    batches = BucketBatchSampler(mixed_datasets(), batch_size=4, seed=0).epoch_batches(0)
    roles = {(s.dataset, s.role) for batch in batches for s in batch}
    assert roles == {(0, "instance"), (1, "class")}


@pytest.mark.parametrize(
    ("batch_size", "processes"), [(1, 1), (2, 1), (2, 2), (3, 2), (2, 3), (4, 4), (16, 2)]
)
def test_batches_per_epoch_matches_the_compilers_schedule(batch_size, processes):
    datasets = mixed_datasets()
    samples: dict = {}
    for d in datasets:
        for img in d.images:
            inst, cls = samples.get(img.bucket, (0, 0))
            samples[img.bucket] = (
                (inst + img.repeats, cls) if d.role == "instance" else (inst, cls + img.repeats)
            )
    rows = bucket_table(samples, batch_size)
    schedule = compute_schedule(
        batches_per_epoch=sum(r.batches_per_epoch for r in rows),
        instance_samples=5,
        class_samples=8,
        batch_size=batch_size,
        accumulation=1,
        processes=processes,
        steps=0,
        epochs=1,
        lr=1e-4,
        lr_schedule="constant",
        warmup_steps=0,
        cycles=1,
        text_encoder_stop_step=0,
        checkpoint_every=0,
        validate_every=0,
        validate=False,
        seed=0,
    )
    for rank in range(processes):
        sampler = BucketBatchSampler(datasets, batch_size=batch_size, seed=5, processes=processes, rank=rank)
        assert sampler.batches_per_epoch == len(sampler) == schedule.batches_per_epoch
        assert len(sampler.epoch_batches(0)) == schedule.batches_per_epoch
        assert len(list(iter(sampler))) == schedule.batches_per_epoch


def test_two_processes_split_the_single_process_order_and_pad_evenly():
    datasets = mixed_datasets()  # 8 batches of 2 -> with 3 processes: 3 each, one padded from the start
    whole = ids(BucketBatchSampler(datasets, batch_size=2, seed=9).epoch_batches(4))
    for processes in (2, 3):
        ranks = [
            ids(
                BucketBatchSampler(datasets, batch_size=2, seed=9, processes=processes, rank=r).epoch_batches(
                    4
                )
            )
            for r in range(processes)
        ]
        assert len({len(r) for r in ranks}) == 1
        interleaved = [ranks[i % processes][i // processes] for i in range(len(ranks[0]) * processes)]
        assert interleaved == [whole[i % len(whole)] for i in range(len(interleaved))]


def test_flip_is_drawn_only_where_the_dataset_flips():
    sampler = BucketBatchSampler(mixed_datasets(flip=True), batch_size=2, seed=0)
    flips = {(s.dataset, s.flip) for e in range(4) for batch in sampler.epoch_batches(e) for s in batch}
    assert flips == {(0, True), (0, False), (1, False)}


def test_state_restore_resumes_at_the_next_unseen_batch():
    datasets = mixed_datasets(flip=True)
    reference = BucketBatchSampler(datasets, batch_size=2, seed=4)
    uninterrupted = [b for _ in range(3) for b in reference]
    for stop in (0, 3, 8, 11, 16):  # start, mid-epoch, exactly at an epoch end, mid second, end of second
        first = BucketBatchSampler(datasets, batch_size=2, seed=4)
        seen: list = []
        while len(seen) < stop:
            for batch in first:
                seen.append(batch)
                if len(seen) == stop:
                    break
        state = first.state_dict()
        resumed = BucketBatchSampler(datasets, batch_size=2, seed=4)
        resumed.load_state_dict(state)
        while len(seen) < len(uninterrupted):
            seen.extend(resumed)
        assert ids(seen) == ids(uninterrupted), stop
        assert [s.flip for b in seen for s in b] == [s.flip for b in uninterrupted for s in b]


def test_state_dict_values_and_bad_states():
    sampler = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=0)
    iterator = iter(sampler)
    next(iterator), next(iterator)
    assert sampler.state_dict() == {"epoch": 0, "position": 2}
    for bad in (
        {"epoch": 0},
        {"epoch": 0, "position": 99},
        {"epoch": -1, "position": 0},
        {"epoch": 0, "position": 1, "extra": 1},
    ):
        with pytest.raises(ValueError):
            sampler.load_state_dict(bad)


def test_constructor_rejects_bad_arguments():
    with pytest.raises(ValueError):
        BucketBatchSampler(mixed_datasets(), batch_size=0, seed=0)
    with pytest.raises(ValueError):
        BucketBatchSampler(mixed_datasets(), batch_size=1, seed=0, processes=2, rank=2)
    with pytest.raises(ValueError, match="no samples"):
        BucketBatchSampler([dataset([image_plan(repeats=0)])], batch_size=1, seed=0)


# ---- image loading -----------------------------------------------------------------------------------------


def coordinate_png(path: Path, width: int, height: int) -> Path:
    """R = 4x, G = 4y: every pixel tells where it came from; PNG keeps values exact."""
    x, y = np.meshgrid(np.arange(width), np.arange(height))
    array = np.stack([4 * x, 4 * y, np.full_like(x, 128)], axis=-1).astype(np.uint8)
    Image.fromarray(array, "RGB").save(path)
    return path


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels + 1) * 127.5).round().to(torch.int64).numpy()


def test_exif_rotated_jpeg_is_loaded_upright(tmp_path):
    stored = np.zeros((40, 60, 3), np.uint8)  # stored 60 wide x 40 high: left half red, right half blue
    stored[:, :30] = (255, 0, 0)
    stored[:, 30:] = (0, 0, 255)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = 6  # displayed turned 90 degrees clockwise: the stored left edge is the top
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif, quality=95)
    img = image_plan(str(path), size=(40, 60), bucket=(40, 56), resized=(40, 60), crop=(0, 2))
    pixels = load_pixels(img)
    assert pixels.shape == (3, 56, 40) and pixels.dtype == torch.float32
    top, bottom = pixels[:, :20], pixels[:, -20:]
    assert top[0].mean() > 0.8 and top[2].mean() < -0.8  # red on top
    assert bottom[2].mean() > 0.8 and bottom[0].mean() < -0.8


def test_resize_and_centre_crop_give_the_exact_bucket(tmp_path):
    path = coordinate_png(tmp_path / "wide.png", 60, 30)
    img = image_plan(str(path), size=(60, 30), bucket=(32, 24), resized=(48, 24), crop=(8, 0))
    pixels = load_pixels(img)
    assert pixels.shape == (3, 24, 32)
    assert pixels.min() >= -1 and pixels.max() <= 1


def test_centre_crop_uses_the_plans_offset_and_random_crops_vary(tmp_path):
    path = coordinate_png(tmp_path / "grid.png", 40, 30)
    img = image_plan(str(path), size=(40, 30), bucket=(24, 20), crop=(8, 5))  # no resize: exact pixel values
    centre = to_uint8(load_pixels(img, crop_mode="center"))
    assert centre[0, 0, 0] == 4 * 8 and centre[1, 0, 0] == 4 * 5
    offsets = set()
    for seed in range(20):
        crop = to_uint8(load_pixels(img, crop_mode="random", rng=random.Random(seed)))
        left, top = crop[0, 0, 0] // 4, crop[1, 0, 0] // 4
        assert crop.shape == (3, 20, 24) and 0 <= left <= 16 and 0 <= top <= 10
        assert (crop[0, 0] == 4 * np.arange(left, left + 24)).all()
        offsets.add((left, top))
    assert len(offsets) > 5
    again = load_pixels(img, crop_mode="random", rng=random.Random(3))
    assert torch.equal(again, load_pixels(img, crop_mode="random", rng=random.Random(3)))
    with pytest.raises(ValueError):
        load_pixels(img, crop_mode="random")


def test_flip_mirrors_the_crop(tmp_path):
    path = coordinate_png(tmp_path / "grid.png", 50, 40)
    img = image_plan(str(path), size=(50, 40), bucket=(32, 32), resized=(40, 32), crop=(4, 0))
    assert torch.equal(load_pixels(img, flip=True), torch.flip(load_pixels(img), dims=[2]))


def square_pattern(width: int, height: int) -> np.ndarray:
    pattern = np.zeros((height, width), np.uint8)
    pattern[height // 4 : height // 2, width // 5 : width // 2] = 255
    pattern[height // 2 :, width // 2 + 5 :] = 160
    return pattern


@pytest.mark.parametrize("source", ["folder", "alpha"])
def test_mask_stays_aligned_with_pixels_under_random_crop_and_flip(tmp_path, source):
    pattern = square_pattern(80, 60)
    rgb = np.repeat(pattern[..., None], 3, axis=-1)
    path, mask = tmp_path / "img.png", "alpha"
    if source == "alpha":
        Image.fromarray(np.dstack([rgb, pattern]), "RGBA").save(path)
    else:
        Image.fromarray(rgb, "RGB").save(path)
        mask = str(tmp_path / "mask.png")
        Image.fromarray(pattern, "L").save(mask)
    img = image_plan(str(path), size=(80, 60), bucket=(32, 24), resized=(40, 30), mask=mask)
    for seed in range(5):
        pixels = load_pixels(img, crop_mode="random", flip=True, rng=random.Random(seed))
        alone = load_mask(img, crop_mode="random", flip=True, rng=random.Random(seed))
        both_pixels, both_mask = load_example(img, crop_mode="random", flip=True, rng=random.Random(seed))
        assert alone.shape == (1, 24, 32) and alone.min() >= 0 and alone.max() <= 1
        assert torch.equal(both_pixels, pixels) and torch.equal(both_mask, alone)
        torch.testing.assert_close((pixels[:1] + 1) / 2, alone, atol=1.5 / 255, rtol=0)
    assert load_example(image_plan(str(path), size=(80, 60)))[1] is None


def test_undecodable_images_raise_data_error_naming_the_file(tmp_path):
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all" * 10)
    truncated = tmp_path / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:600])
    missing = tmp_path / "gone.png"
    for path in (garbage, truncated, missing):
        with pytest.raises(DataError) as info:
            load_pixels(image_plan(str(path), size=(64, 64)))
        assert info.value.path == str(path) and str(path) in str(info.value)
        assert info.value.__cause__ is not None


def test_an_image_changed_since_the_plan_is_reported(tmp_path):
    path = coordinate_png(tmp_path / "grid.png", 40, 30)
    with pytest.raises(DataError, match="plan expects 64x64"):
        load_pixels(image_plan(str(path), size=(64, 64)))


def test_sample_rng_is_seeded_from_the_sample():
    sample = BucketBatchSampler(mixed_datasets(), batch_size=2, seed=0).epoch_batches(0)[0][0]
    assert sample_rng(sample).random() == sample_rng(sample).random()

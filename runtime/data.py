"""Training data for one Plan: the bucket batch sampler and image loading (pixels and masks).

The compiler settled each image's bucket, resize, centre crop, caption and repeats; this module only
carries them out. Batches never mix buckets, nothing is dropped, and the order is a pure function of
(seed, epoch), so a resumed run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import io
import random
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Literal, TypeVar

import attrs
import numpy as np
import torch
from PIL import Image, ImageOps

from dbspec.plan.face_crop import face_of, face_window
from dbspec.plan.model import DatasetPlan, FaceBox, ImagePlan, Plan, Size

CropMode = Literal["center", "random"]
MaskChannel = Literal["luminance", "red"]
Batch = tuple["Sample", ...]

# One filter both ways: Pillow widens the Lanczos kernel by the reduction factor, so downscaling is
# properly antialiased (no moire from fabric or hair, unlike point sampling or OpenCV's fixed-width
# Lanczos), and upscaling stays sharper than bilinear/bicubic. kohya uses area-down / Lanczos-up.
RESAMPLE = Image.Resampling.LANCZOS


@attrs.frozen(kw_only=True)
class Sample:
    """One image drawn once in an epoch: what to load and how to augment it."""

    dataset: int  # index into plan.datasets
    image: int  # index into that dataset's images
    role: Literal["instance", "class"]
    flip: bool
    aug_seed: int  # seeds this sample's random crop (sample_rng): resume needs no RNG state but (seed, epoch)
    img: ImagePlan

    @property
    def latent_key(self) -> str:
        """The cache key of this sample's latent ("" when latents are not cached)."""
        return self.img.latent_keys[int(self.flip)] if self.img.latent_keys else ""


def sample_rng(sample: Sample) -> random.Random:
    """A fresh generator for this sample's random augmentation, independent of global RNG state."""
    return random.Random(sample.aug_seed)


class BucketBatchSampler:
    """Single-bucket batches of every sample, shuffled per epoch from (seed, epoch), split across processes.

    Per epoch: each image appears `repeats` times (flip drawn per sample when its dataset flips); samples
    are grouped by dataset group and bucket and shuffled within it; each is cut into batches of its group's
    batch size (`group_batch_sizes`, the default group "" `batch_size`; the last one may be smaller: never
    dropped), so a batch never mixes groups, as kohya's per-[[datasets]] batches; batch order is shuffled;
    process `rank` takes every `processes`-th.
    When the batch count is not a multiple of `processes`, the list is padded by repeating batches from
    its start (as torch's DistributedSampler pads), so every process makes the same number of steps and
    DDP's gradient all-reduce never waits on a process that has finished its epoch.
    """

    def __init__(
        self,
        datasets: Sequence[DatasetPlan],
        *,
        batch_size: int,
        seed: int,
        processes: int = 1,
        rank: int = 0,
        group_batch_sizes: Mapping[str, int] | None = None,
    ) -> None:
        if batch_size < 1 or processes < 1 or not 0 <= rank < processes:
            raise ValueError(
                f"need batch_size >= 1, processes >= 1 and 0 <= rank < processes; got batch_size="
                f"{batch_size}, processes={processes}, rank={rank}"
            )
        self.datasets = tuple(datasets)
        self.batch_size, self.seed, self.processes, self.rank = batch_size, seed, processes, rank
        self.group_batch_sizes = {"": batch_size, **(group_batch_sizes or {})}
        unknown = sorted({d.group for d in self.datasets} - set(self.group_batch_sizes))
        if unknown or min(self.group_batch_sizes.values()) < 1:
            raise ValueError(
                f"every dataset group needs a batch size >= 1; got {self.group_batch_sizes}, missing "
                f"{unknown}"
            )
        self.total_batches = sum(
            -(-n // self.group_batch_sizes[group]) for (group, _), n in _bucket_counts(self.datasets).items()
        )
        if self.total_batches == 0:
            raise ValueError("the datasets hold no samples (every image has 0 repeats)")
        # Same arithmetic as the compiler's SchedulePlan.batches_per_epoch (per process).
        self.batches_per_epoch = -(-self.total_batches // processes)
        self._epoch, self._position = 0, 0
        self._cached: tuple[int, list[Batch]] | None = None

    @classmethod
    def from_plan(cls, plan: Plan, *, rank: int = 0) -> BucketBatchSampler:
        s = plan.schedule
        return cls(
            plan.datasets,
            batch_size=s.batch_size,
            seed=s.seed,
            processes=s.processes,
            rank=rank,
            group_batch_sizes={g.name: g.batch_size for g in plan.groups},
        )

    def __len__(self) -> int:
        return self.batches_per_epoch

    def epoch_batches(self, epoch: int) -> list[Batch]:
        """This process's batches of `epoch`, in order; a pure function of the constructor's
        arguments and epoch."""
        if self._cached is not None and self._cached[0] == epoch:
            return self._cached[1]
        rng = random.Random(f"dbspec-sampler:{self.seed}:{epoch}")  # str seeds hash with sha512: stable
        by_bucket = _draw_samples(self.datasets, rng)
        batches: list[Batch] = []
        for key in sorted(by_bucket):  # (group, bucket): one group's batches only, never mixed
            samples, size = by_bucket[key], self.group_batch_sizes[key[0]]
            rng.shuffle(samples)
            batches += [tuple(samples[i : i + size]) for i in range(0, len(samples), size)]
        rng.shuffle(batches)
        padded = [batches[i % len(batches)] for i in range(self.batches_per_epoch * self.processes)]
        mine = padded[self.rank :: self.processes]
        self._cached = (epoch, mine)
        return mine

    def __iter__(self) -> Iterator[Batch]:
        """The rest of the current epoch from the next unseen batch; iterating again starts the next epoch.

        `position` counts batches handed out, so save state after the handed-out batch has trained. A
        prefetching consumer (a DataLoader with workers given this as batch_sampler) runs ahead of
        training: feed it from this iterator in the main process instead.
        """
        if self._position >= self.batches_per_epoch:
            self._epoch, self._position = self._epoch + 1, 0
        batches = self.epoch_batches(self._epoch)
        while self._position < len(batches):
            batch = batches[self._position]
            self._position += 1
            yield batch

    @property
    def epoch(self) -> int:
        return self._epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self._epoch, "position": self._position}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if set(state) != {"epoch", "position"}:
            raise ValueError(f"sampler state needs exactly `epoch` and `position`, got {sorted(state)}")
        epoch, position = state["epoch"], state["position"]
        if not (
            isinstance(epoch, int)
            and isinstance(position, int)
            and epoch >= 0
            and 0 <= position <= self.batches_per_epoch
        ):
            raise ValueError(
                f"sampler state {dict(state)} does not fit {self.batches_per_epoch} batches per epoch "
                "(was it saved with another batch size, dataset or process count?)"
            )
        self._epoch, self._position = epoch, position


def _bucket_counts(datasets: tuple[DatasetPlan, ...]) -> dict[tuple[str, Size], int]:
    counts: dict[tuple[str, Size], int] = {}
    for d in datasets:
        for img in d.images:
            counts[(d.group, img.bucket)] = counts.get((d.group, img.bucket), 0) + img.repeats
    return {key: n for key, n in counts.items() if n > 0}


def _draw_samples(
    datasets: tuple[DatasetPlan, ...], rng: random.Random
) -> dict[tuple[str, Size], list[Sample]]:
    """Every sample of an epoch grouped by (dataset group, bucket), in plan order, with flips and augmentation
    seeds drawn."""
    by_bucket: dict[tuple[str, Size], list[Sample]] = {}
    for di, d in enumerate(datasets):
        for ii, img in enumerate(d.images):
            for _ in range(img.repeats):
                flip = d.flip and rng.random() < 0.5
                sample = Sample(
                    dataset=di, image=ii, role=d.role, flip=flip, aug_seed=rng.getrandbits(63), img=img
                )
                by_bucket.setdefault((d.group, img.bucket), []).append(sample)
    return by_bucket


class DataError(Exception):
    """An image or mask that cannot be loaded mid-run; `path` lets the loop name the dataset and spec line."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load `{path}`: {reason}")
        self.path, self.reason = path, reason


Item = TypeVar("Item")
Share = tuple[int, int]  # (this process's rank, the number of processes)


def own_share(items: Sequence[Item], share: Share) -> list[Item]:
    """Process `rank`'s share of `items` among `processes`: the items rank, rank + processes, ... A function
    of the list alone, so the shares of all processes cover every item exactly once."""
    rank, processes = share
    if not 0 <= rank < processes:
        raise ValueError(f"share must be (rank, processes) with 0 <= rank < processes, got {share}")
    return list(items[rank::processes])


def verify_sources(datasets: Sequence[DatasetPlan], share: Share = (0, 1)) -> int:
    """Read every image and mask file the plan names, before any cached latent is trusted; report every file
    whose content changed since planning or whose pixels do not decode, all at once.

    A latent cache hit never opens the image, so the hash check is what keeps a run from training on the
    latents of a picture replaced since planning; the plan reads headers only, so the decode is what finds
    pixel data broken behind a valid header before step 1 rather than at the step that needs it. Costs one
    read and one decode of each file per run (seconds for a few hundred photos). Class images the run
    generates are skipped: they are made from the plan. With several processes each checks its `share` of the
    images (`own_share`), before they wait for each other. Returns the bytes read."""
    problems, total = [], 0
    for img in own_share([img for dataset in datasets for img in dataset.images], share):
        for path, sha in img.source_files():
            data, problem = _check_source(path, sha)
            total += len(data)
            if problem:
                problems.append((path, problem))
    if problems:
        path, problem = problems[0]
        others = "".join(f"; `{p}` {why}" for p, why in problems[1:])
        raise DataError(
            path,
            f"{problem}{others}; fix or replace {'them' if others else 'it'} and run `dbspec plan` again",
        )
    return total


def _check_source(path: str, sha: str) -> tuple[bytes, str]:
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        return b"", f"cannot be read ({exc.strerror or exc})"
    if hashlib.blake2b(data, digest_size=16).hexdigest() != sha:
        return data, "its content changed after the plan was made"
    try:
        with Image.open(io.BytesIO(data)) as handle:
            handle.load()
    except Exception as exc:  # noqa: BLE001 - Pillow raises OSError, SyntaxError, ValueError... on broken pixels
        return data, f"does not decode ({type(exc).__name__}: {exc})"
    return data, ""


def crop_offset(img: ImagePlan, crop_mode: CropMode, rng: random.Random | None) -> tuple[int, int]:
    """(left, top) of the bucket-sized window in the resized image: the plan's centre, or a random draw."""
    if crop_mode == "center":
        return img.crop
    if crop_mode != "random":
        raise ValueError(f"crop_mode must be 'center' or 'random', got {crop_mode!r}")
    if rng is None:
        raise ValueError("a random crop needs an rng")
    (rw, rh), (bw, bh) = img.resized, img.bucket
    return rng.randint(0, rw - bw), rng.randint(0, rh - bh)  # exactly two draws


@attrs.frozen
class FaceCrop:
    """One image's face box and its dataset's range (dbspec.plan.face_crop)."""

    box: FaceBox
    range: tuple[float, float]


def face_crop_of(dataset: DatasetPlan, img: ImagePlan) -> FaceCrop | None:
    """The face crop of one of the dataset's images; None when face crop is off or the image has no box."""
    box = face_of(dataset.face_crop, img.rel)
    return (
        None if box is None or dataset.face_crop is None else FaceCrop(box=box, range=dataset.face_crop.range)
    )


def face_fit(
    img: ImagePlan, face: FaceCrop, crop_mode: CropMode, rng: random.Random
) -> tuple[ImagePlan, tuple[int, int]]:
    """The image plan with kohya's face-crop resize, and the window's (left, top): scale and window drawn."""
    resized, offset = face_window(
        img.size, face.box, img.bucket, face.range, random_crop=crop_mode == "random", rng=rng
    )
    return attrs.evolve(img, resized=resized, crop=offset), offset


def load_pixels(
    img: ImagePlan,
    *,
    crop_mode: CropMode = "center",
    flip: bool = False,
    rng: random.Random | None = None,
    upright: bool = True,
) -> torch.Tensor:
    """The training image: float32 (3, H, W) in [-1, 1] with (W, H) = img.bucket. Alpha is dropped.
    `upright`: EXIF orientation applied (the dataset's exif_orientation = "apply"), else the stored pixels."""
    offset = crop_offset(img, crop_mode, rng)
    return _rgb_tensor(_fit(_open(img.path, img.size, upright).convert("RGB"), img, offset, flip))


def load_mask(
    img: ImagePlan,
    *,
    crop_mode: CropMode = "center",
    flip: bool = False,
    rng: random.Random | None = None,
    upright: bool = True,
    channel: MaskChannel = "luminance",
) -> torch.Tensor:
    """The loss mask: float32 (1, H, W) in [0, 1], 0 (dark) = ignored, 1 (white) = trained. `channel`: how
    a mask file is read (the dataset's mask_channel).

    Same resize, crop and flip as load_pixels: given generators in the same state (e.g. two
    `sample_rng(sample)`) both draw the same random window. load_example does both from one draw.
    """
    offset = crop_offset(img, crop_mode, rng)
    return _mask_tensor(_fit(_mask_image(img, None, upright, channel), img, offset, flip))


def load_example(
    img: ImagePlan,
    *,
    crop_mode: CropMode = "center",
    flip: bool = False,
    rng: random.Random | None = None,
    color_aug: bool = False,
    face: FaceCrop | None = None,
    upright: bool = True,
    mask_channel: MaskChannel = "luminance",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pixels and mask (None without one) cut from one crop window, decoding the image once. `color_aug`
    draws kohya's colour augmentation from `rng` after the crop's draws (runtime/color_aug.py). `face`:
    kohya's face crop (its scale and window drawn from `rng` instead of the plan's crop)."""
    if face is not None:
        if rng is None:
            raise ValueError("a face crop needs an rng")
        img, offset = face_fit(img, face, crop_mode, rng)
    else:
        offset = crop_offset(img, crop_mode, rng)
    source = _open(img.path, img.size, upright)
    fitted = _fit(source.convert("RGB"), img, offset, flip)
    if color_aug:
        if rng is None:
            raise ValueError("colour augmentation needs an rng")
        from dbspec.runtime.color_aug import color_aug as augment

        fitted = Image.fromarray(augment(np.array(fitted, dtype=np.uint8), rng))
    pixels = _rgb_tensor(fitted)
    if not img.mask:
        return pixels, None
    return pixels, _mask_tensor(_fit(_mask_image(img, source, upright, mask_channel), img, offset, flip))


def _mask_image(
    img: ImagePlan, source: Image.Image | None, upright: bool = True, channel: MaskChannel = "luminance"
) -> Image.Image:
    """The mask as a grayscale image of the (oriented) image's size: a mask file's luminance or red channel
    (kohya: RGB first, then red), or the alpha."""
    if not img.mask:
        raise ValueError(f"image `{img.path}` has no mask")
    if img.mask == "alpha":
        image = source if source is not None else _open(img.path, img.size, upright)
        return image.convert("RGBA").getchannel(
            "A"
        )  # RGBA first: also covers LA, PA and palette transparency
    mask = _open(img.mask, img.size, upright)
    return mask.convert("RGB").getchannel("R") if channel == "red" else mask.convert("L")


def _open(path: str, expected: Size, upright: bool = True) -> Image.Image:
    """Decode a file with EXIF orientation applied (`upright`) or as stored; any failure becomes a DataError
    naming the file."""
    try:
        with Image.open(path) as handle:
            handle.load()
            # a loaded copy either way: usable after the file closes
            image = ImageOps.exif_transpose(handle) if upright else handle.copy()
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct.error... on bad files
        raise DataError(path, f"{type(exc).__name__}: {exc}") from exc
    if image.size != tuple(expected):
        raise DataError(
            path,
            f"is {image.size[0]}x{image.size[1]}, but the plan expects {expected[0]}x"
            f"{expected[1]}: the file changed after the plan was made; run `dbspec plan` again",
        )
    return image


def _fit(image: Image.Image, img: ImagePlan, offset: tuple[int, int], flip: bool) -> Image.Image:
    """Resize to img.resized, cut img.bucket at `offset`, mirror if asked: the plan's geometry exactly."""
    (rw, rh), (bw, bh), (left, top) = img.resized, img.bucket, offset
    if not (0 <= left <= rw - bw and 0 <= top <= rh - bh):
        raise ValueError(
            f"crop {bw}x{bh} at {offset} does not fit in the resized {rw}x{rh} image `{img.path}`"
        )
    if image.size != (rw, rh):
        image = image.resize((rw, rh), RESAMPLE)
    image = image.crop((left, top, left + bw, top + bh))
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else image


def _rgb_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.uint8)  # (H, W, 3), a writable copy
    return torch.from_numpy(array).permute(2, 0, 1).float().div_(127.5).sub_(1.0).contiguous()


def _mask_tensor(image: Image.Image) -> torch.Tensor:
    array = np.array(image, dtype=np.uint8)  # (H, W)
    return torch.from_numpy(array).unsqueeze(0).float().div_(255.0)

"""How many batches an epoch has, and how class images are balanced, in kohya and in the converted spec.

Converting epoch-based values (max_train_epochs, save/sample every N epochs, warm-up ratios of epoch-based
runs)
and proving that balancing and batching match needs the image folders: this module lists them the way kohya
does (non-recursive, kohya's extensions, sizes as stored: kohya ignores EXIF orientation) and counts batches
with dbspec's own kohya-exact bucket functions. Each kohya [[datasets]] converts to a dbspec dataset group,
which batches and balances class images on its own as kohya does, with `exif_orientation = "ignore"` (the
stored sizes, as kohya).
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from typing import Literal

import attrs
from PIL import Image, UnidentifiedImageError

from dbspec.compiler import buckets as bk
from dbspec.compiler.schedule import balance_class_repeats

EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp"})
_ORIENTATION_TAG = 0x0112
Size = tuple[int, int]


@attrs.frozen(kw_only=True)
class Img:
    path: Path
    size: Size  # as stored, which is what kohya trains on
    orientation: int  # EXIF orientation; the converted spec ignores it, as kohya does

    @property
    def oriented(self) -> Size:
        return (self.size[1], self.size[0]) if self.orientation in (5, 6, 7, 8) else self.size


@attrs.frozen(kw_only=True)
class Bucketing:
    mode: Literal["aspect", "no_upscale", "square"]
    resolution: Size
    min_size: int = 256
    max_size: int = 1024
    step: int = 64

    def bucket(self, size: Size) -> Size:
        """The bucket an image of `size` trains in; (0, 0) where kohya would fail (the compiler says why)."""
        try:
            if self.mode == "square":
                return self.resolution
            if self.mode == "no_upscale":
                return bk.place_no_upscale(size, self.resolution[0] * self.resolution[1], self.step).bucket
            return bk.place(size, _table(self.resolution, self.min_size, self.max_size, self.step)).bucket
        except ValueError:
            return (0, 0)


@functools.lru_cache(maxsize=64)
def _table(resolution: Size, min_size: int, max_size: int, step: int) -> tuple[Size, ...]:
    return bk.bucket_list(resolution, min_size, max_size, step)


@attrs.frozen(kw_only=True)
class Part:
    """One image folder in one dataset: kohya's subset, dbspec's [[datasets]] entry."""

    images: tuple[Img, ...]
    repeats: int
    is_class: bool
    group: int  # kohya [[datasets]] index: batching and balancing happen per group in kohya
    bucketing: Bucketing  # kohya's
    converted: Bucketing  # the converted spec's


@attrs.frozen(kw_only=True)
class Epoch:
    batches: int
    instance_samples: int
    class_samples: int
    class_repeats: tuple[tuple[int, ...], ...]  # per part (empty tuple for instance parts): per-image repeats


def list_images(folder: Path) -> tuple[Img, ...] | None:
    """Images directly in `folder` (sorted, as kohya's glob_images sorts them); None when it is no folder."""
    if not folder.is_dir():
        return None
    found = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() in EXTENSIONS and p.is_file()):
        try:
            with Image.open(path) as im:
                orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)  # PIL's Exif mapping
                found.append(Img(path=path, size=im.size, orientation=orientation))
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # unreadable: the compiler reports it with its own diagnostics
    return tuple(found)


def kohya_epoch(parts: list[Part], batch_sizes: dict[int, int]) -> Epoch:
    """kohya: each [[datasets]] balances its own reg images and makes its own batches."""
    return _grouped_epoch(parts, batch_sizes, raw=True)


def dbspec_epoch(parts: list[Part], batch_sizes: dict[int, int]) -> Epoch:
    """The converted spec: each kohya [[datasets]] is a dataset group (balancing and batches per group, as
    kohya), with the converted buckets and the stored sizes (exif_orientation = "ignore")."""
    return _grouped_epoch(parts, batch_sizes, raw=False)


def _grouped_epoch(parts: list[Part], batch_sizes: dict[int, int], *, raw: bool) -> Epoch:
    repeats: dict[int, tuple[int, ...]] = {}
    batches = 0
    for group in sorted({p.group for p in parts}):
        members = [i for i, p in enumerate(parts) if p.group == group]
        repeats.update(_balance(parts, members))
        counts: Counter = Counter()
        for i in members:
            _count(counts, parts[i], repeats[i], raw=raw)
        batches += sum(-(-n // batch_sizes[group]) for n in counts.values())
    return _epoch(parts, repeats, batches)


def _balance(parts: list[Part], members: list[int]) -> dict[int, tuple[int, ...]]:
    target = sum(len(parts[i].images) * parts[i].repeats for i in members if not parts[i].is_class)
    class_members = [i for i in members if parts[i].is_class]
    flat = [parts[i].repeats for i in class_members for _ in parts[i].images]
    balanced = balance_class_repeats(flat, target)
    out: dict[int, tuple[int, ...]] = {}
    start = 0
    for i in members:
        if parts[i].is_class:
            out[i] = tuple(balanced[start : start + len(parts[i].images)])
            start += len(parts[i].images)
        else:
            out[i] = tuple(parts[i].repeats for _ in parts[i].images)
    return out


def _count(counts: Counter, part: Part, repeats: tuple[int, ...], *, raw: bool) -> None:
    bucketing = part.bucketing if raw else part.converted
    for img, n in zip(part.images, repeats):
        if n:
            counts[bucketing.bucket(img.size)] += n


def _epoch(parts: list[Part], repeats: dict[int, tuple[int, ...]], batches: int) -> Epoch:
    inst = sum(sum(repeats[i]) for i, p in enumerate(parts) if not p.is_class)
    cls = sum(sum(repeats[i]) for i, p in enumerate(parts) if p.is_class)
    return Epoch(
        batches=batches,
        instance_samples=inst,
        class_samples=cls,
        class_repeats=tuple(repeats[i] if p.is_class else () for i, p in enumerate(parts)),
    )

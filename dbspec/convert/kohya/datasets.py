"""kohya datasets and subsets -> [[datasets]], [buckets] and the batch size.

Each kohya subset (one image folder) becomes one dbspec dataset. Captions keep kohya's rule: the sidecar file
`<image stem><caption_extension>` when it exists, else `class_tokens` (captions = "textfile" with `prompt` as
the
fallback). Bucket settings and the batch size are per [[datasets]] in kohya: one kohya [[datasets]] converts
to
[schedule] batch_size and [buckets]; several convert to one [[groups]] table each (batch size, bucket
settings;
the resolution goes on each converted dataset), so batching and reg balancing stay per [[datasets]].
"""

from __future__ import annotations

import math
import attrs

from dbspec.compiler import buckets as bk
from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.epochs import Bucketing, Img, Part, list_images
from dbspec.convert.kohya.data import KDataset, KSubset
from dbspec.convert.kohya.metadata import metadata_images
from dbspec.convert.kohya.subsets import (
    map_custom_attributes,
    map_face_crop,
    map_image_prep,
    map_subset,
    subset_problems,
)
from dbspec.convert.common.paths import PathMapper


@attrs.frozen(kw_only=True)
class Layout:
    """The converted datasets, with what the epoch arithmetic needs."""

    batch_size: Legacy  # the largest of any [[datasets]]
    batches: dict[int, int]  # kohya [[datasets]] index -> its batch size (its group's, in the spec)
    settings: tuple["Settings", ...]  # per kohya [[datasets]]
    parts: tuple[tuple[KDataset, KSubset, tuple[Img, ...] | None], ...]  # kept subsets, with their images
    has_class: bool
    masked: bool

    def epoch_parts(self) -> list[Part] | None:
        """The kept subsets for epoch arithmetic; None when some folder could not be read here."""
        if any(images is None for _, _, images in self.parts):
            return None
        return [
            Part(
                images=_trained_part(d, s, images),
                repeats=s.values["num_repeats"].value,
                is_class=bool(s.values["is_reg"].value),
                group=d.index,
                bucketing=self.settings[d.index].kohya,
                converted=self.settings[d.index].converted,
            )
            for d, s, images in self.parts
        ]


def _trained_part(d: KDataset, s: KSubset, images: tuple[Img, ...]) -> tuple[Img, ...]:
    """The images kohya trains of a subset: with a dataset's validation_split (0 < split <= 1), a non-reg
    subset keeps ceil(n x (1 - split)) of them (train_util.split_train_val; which ones follows kohya's
    shuffle, so with mixed image sizes the bucket counts are an approximation, the image count is exact)."""
    split = d.values["validation_split"].value
    if not split or not 0 < split <= 1 or s.values["is_reg"].value:
        return images
    return images[: math.ceil(len(images) * (1 - split))]


def map_datasets(
    datasets: tuple[KDataset, ...], script: str, cache_latents: bool, paths: PathMapper, conv: Conversion
) -> Layout | None:
    if not datasets:
        conv.invalid(
            "datasets",
            [],
            "dataset_config",
            "no dataset: kohya needs at least one [[datasets]] with subsets (or train_data_dir)",
        )
        return None
    settings = [_dataset_settings(d, script, conv) for d in datasets]
    if any(s is None for s in settings):
        return None
    # One kohya [[datasets]] is dbspec's default group ([schedule] batch_size, [buckets]); several become
    # [[groups]], one each: kohya batches and balances reg images per [[datasets]], and so do dbspec groups.
    grouped = len(datasets) > 1
    if grouped:
        for position, (d, setting) in enumerate(zip(datasets, settings)):
            _write_group(position, d, setting, conv)
    else:
        conv.mapped(
            datasets[0].values["batch_size"],
            ("schedule", "batch_size"),
            datasets[0].values["batch_size"].value,
        )
        _write_buckets(datasets[0], settings[0], conv, ("buckets",))
    parts = _parts(datasets, settings, paths, conv)
    for out_index, (dataset, subset, images) in enumerate(parts):
        setting = settings[dataset.index]
        map_subset(out_index, dataset, subset, images, setting.spec_resolution, paths, conv)
        subset_problems(out_index, dataset, subset, images, setting, cache_latents, conv, script)
        map_custom_attributes(out_index, dataset, subset, script, conv)
        map_face_crop(out_index, subset, setting, cache_latents, conv)
        map_image_prep(out_index, setting, cache_latents, conv)
        if setting.spec_height:
            conv.put(
                ("datasets", out_index, "resolution_height"),
                setting.spec_height,
                f"kohya resolution {setting.resolution[0]},{setting.resolution[1]}: buckets of the area "
                f"{setting.resolution[0] * setting.resolution[1]}"
                if setting.kohya.mode != "square"
                else f"kohya resolution {setting.resolution[0]},{setting.resolution[1]}, buckets off",
            )
        if grouped:
            conv.put(
                ("datasets", out_index, "group"),
                group_name(dataset),
                f"kohya datasets[{dataset.index}]",
            )
    if not parts:
        conv.invalid(
            "datasets",
            "...",
            "dataset_config",
            "no subset with images and repeats >= 1: kohya has nothing to train",
        )
        return None
    uncacheable = [
        s.values[k] for _, s, _ in parts for k in ("random_crop", "color_aug") if s.values[k].value
    ]
    if cache_latents and uncacheable:
        conv.invalid(
            "cache_latents",
            True,
            "command line",
            f"kohya asserts latents are not cached with "
            f"random_crop or color_aug (`{uncacheable[0].key}` is on)",
        )
    has_class = any(s.values["is_reg"].value for _, s, _ in parts)
    masked = any(d.kind == "controlnet" or s.values["alpha_mask"].value for d, s, _ in parts)
    return Layout(
        batch_size=max((d.values["batch_size"] for d in datasets), key=lambda b: b.value),
        batches={d.index: d.values["batch_size"].value for d in datasets},
        settings=tuple(settings),
        parts=tuple(parts),
        has_class=has_class,
        masked=masked,
    )


@attrs.frozen(kw_only=True)
class Settings:
    resolution: tuple[int, int]
    spec_resolution: int
    spec_height: int  # resolution_height: 0 unless a non-square W x H must stay W x H
    kohya: Bucketing
    converted: Bucketing
    mode_key: tuple


def _dataset_settings(d: KDataset, script: str, conv: Conversion) -> Settings | None:
    v = d.values
    if v["batch_size"].value < 1:
        conv.invalid(v["batch_size"].key, v["batch_size"].value, v["batch_size"].source, "must be at least 1")
        return None
    reso = v["resolution"]
    size = _resolution(reso, conv)
    if size is None:
        return None
    enabled = bool(v["enable_bucket"].value)
    step = v["bucket_reso_steps"].value
    mode = "square" if not enabled else "no_upscale" if v["bucket_no_upscale"].value else "aspect"
    low, high = v["min_bucket_reso"].value, v["max_bucket_reso"].value
    if enabled and not _bucket_rules_ok(d, size, script, conv):
        return None
    bounds = bk.adjust_min_max(low, high, step) if enabled else (0, 0)  # step >= 1 checked when enabled
    spec_size = _spec_resolution(reso, size, mode, bounds, conv)
    if spec_size is None:
        return None
    spec_reso, spec_height = spec_size
    kohya = Bucketing(mode=mode, resolution=size, min_size=low, max_size=high, step=step)
    converted = attrs.evolve(kohya, resolution=(spec_reso, spec_height or spec_reso))
    key = (
        (mode,)
        if mode == "square"
        else (mode, step)
        if mode == "no_upscale"
        else (mode, *bk.adjust_min_max(low, high, step), step)
    )
    return Settings(
        resolution=size,
        spec_resolution=spec_reso,
        spec_height=spec_height,
        kohya=kohya,
        converted=converted,
        mode_key=key,
    )


def _resolution(reso: Legacy, conv: Conversion) -> tuple[int, int] | None:
    value = reso.value
    if value is None:
        conv.invalid(
            "resolution",
            None,
            reso.source,
            "kohya needs a resolution (DreamBoothDataset asserts one): set "
            "--resolution or `resolution` in the dataset config",
        )
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return (value, value)
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(x, int) and x > 0 for x in value)
    ):
        return (value[0], value[1])
    conv.invalid(reso.key, value, reso.source, 'expected "N" or "W,H"')
    return None


def _spec_resolution(
    reso: Legacy, size: tuple[int, int], mode: str, bounds: tuple[int, int], conv: Conversion
) -> tuple[int, int] | None:
    """The spec's (resolution, resolution_height): a square N x N, the side N of a non-square W x H whose area
    is N*N with aspect buckets (kohya's buckets use only the area: the same bucket list), else W x H. With
    buckets, a W x H dbspec cannot take (a side not a multiple of 8, or outside 64..4096) becomes another
    pair of the same area that it can (_same_area: the same buckets); else DBS403 saying why."""
    width, height = size
    side = math.isqrt(width * height)
    if width == height or (mode != "square" and side * side == width * height):
        sides = (side,)
        spec = (side, 0)
    else:
        sides = (width, height)
        spec = (width, height)
    bad = [n for n in sides if n % 8 or not 64 <= n <= 4096]
    if not bad:
        return spec
    if mode == "square":
        conv.unsupported(reso, f"resolution {bad[0]}: dbspec needs a multiple of 8 between 64 and 4096")
        return None
    same = _same_area(size, bounds)
    if same is None:
        conv.unsupported(
            reso,
            f"resolution {width}x{height} with buckets: kohya uses only its area {width * height} (its "
            "buckets are multiples of bucket_reso_steps), but no W x H of that area has both sides "
            f"multiples of 8 between 64 and 4096 and within the bucket range {bounds[0]}..{bounds[1]}, as "
            "dbspec's resolution needs (the area must be a multiple of 64)",
            help="give a resolution whose sides are multiples of 8 (the buckets change with its area)",
        )
    return same


def _same_area(size: tuple[int, int], bounds: tuple[int, int]) -> tuple[int, int] | None:
    """A (resolution, resolution_height) of the area W x H with both sides multiples of 8 in 64..4096 and in
    the bucket range (kohya asserts it on the resolution; dbspec alike): the square where there is one, else
    the pair nearest W x H in aspect. kohya's bucket list (make_bucket_resolutions) and no-upscale area read
    only the area, so the buckets are the same. None where no such pair exists."""
    width, height = size
    area = width * height
    if area % 64:
        return None
    low, high = max(64, bounds[0]), min(4096, bounds[1])
    pairs = [
        (8 * a, area // (8 * a))
        for a in range(8, 513)
        if (area // 64) % a == 0 and low <= 8 * a <= high and low <= area // (8 * a) <= high
    ]
    if not pairs:
        return None
    square = [(w, h) for w, h in pairs if w == h]
    if square:
        return (square[0][0], 0)
    aspect = math.log(width / height)
    w, h = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - aspect))
    return (w, h)


def _bucket_rules_ok(d: KDataset, size: tuple[int, int], script: str, conv: Conversion) -> bool:
    v = d.values
    step = v["bucket_reso_steps"]
    multiple = 32 if script.startswith("sdxl") else 64
    ok = True
    if step.value < 1:
        conv.invalid(step.key, step.value, step.source, "kohya divides by bucket_reso_steps")
        return False
    # The masked-loss (ControlNet) dataset class never sets bucket_reso_steps, so kohya's check passes it.
    if step.value % multiple and d.kind != "controlnet":
        conv.invalid(
            step.key,
            step.value,
            step.source,
            f"{script}.py asserts bucket_reso_steps % {multiple} == 0 "
            f"(verify_bucket_reso_steps({multiple})) when buckets are enabled",
        )
        ok = False
    else:  # kohya asserts the range with bucket_no_upscale too (adjust_min_max_bucket_reso_by_steps)
        for problem in bk.range_violations(
            size,
            v["min_bucket_reso"].value,
            v["max_bucket_reso"].value,
            step.value,
            listed=not v["bucket_no_upscale"].value,
        ):
            conv.invalid(
                v["min_bucket_reso"].key,
                v["min_bucket_reso"].value,
                v["min_bucket_reso"].source,
                f"kohya asserts min(resolution) >= min_bucket_reso and max(resolution) <= max_bucket_reso "
                f"(after rounding to bucket_reso_steps): {problem}",
            )
            ok = False
    return ok


def group_name(d: KDataset) -> str:
    """The [[groups]] name of a kohya [[datasets]] entry: its index, as in the report's `datasets[i].`
    keys."""
    return f"datasets{d.index}"


def _write_group(position: int, d: KDataset, s: Settings, conv: Conversion) -> None:
    """One kohya [[datasets]] as one [[groups]] table: its name, batch size and bucket settings."""
    conv.put(("groups", position, "name"), group_name(d), f"kohya datasets[{d.index}]")
    conv.mapped(d.values["batch_size"], ("groups", position, "batch_size"), d.values["batch_size"].value)
    _write_buckets(d, s, conv, ("groups", position))


def _write_buckets(d: KDataset, s: Settings, conv: Conversion, table: tuple) -> None:
    """kohya's bucket keys as [buckets] (table = ("buckets",)) or a group's bucket_* keys."""
    v = d.values
    prefix = "" if table == ("buckets",) else "bucket_"

    def key(name: str) -> tuple:
        return (*table, prefix + name)

    if s.kohya.mode == "square":
        conv.mapped(
            v["enable_bucket"],
            key("mode"),
            "square",
            comment=conv.comment(v["enable_bucket"], "buckets off: one resolution x resolution bucket"),
        )
        for name in ("min_bucket_reso", "max_bucket_reso", "bucket_reso_steps", "bucket_no_upscale"):
            conv.inert(v[name], "buckets are off (enable_bucket = false)")
        return
    conv.mapped(v["enable_bucket"], key("mode"), "aspect")
    conv.mapped(v["bucket_reso_steps"], key("step"), v["bucket_reso_steps"].value)
    if s.kohya.mode == "no_upscale":
        conv.mapped(v["bucket_no_upscale"], key("no_upscale"), True)
        for name in ("min_bucket_reso", "max_bucket_reso"):
            conv.inert(v[name], "ignored with bucket_no_upscale (kohya warns the same)")
        return
    low, high = bk.adjust_min_max(v["min_bucket_reso"].value, v["max_bucket_reso"].value, s.kohya.step)
    conv.mapped(v["min_bucket_reso"], key("min_size"), low)
    conv.mapped(v["max_bucket_reso"], key("max_size"), high)
    if table != ("buckets",):
        conv.mapped(v["bucket_no_upscale"], key("no_upscale"), False)
    else:
        conv.record(v["bucket_no_upscale"], "mapped", "buckets.no_upscale")


def _parts(datasets, settings, paths: PathMapper, conv: Conversion) -> list:
    """Subsets kohya actually trains: repeats >= 1, not a repeated folder of the same dataset, not empty, and
    reg subsets only where the dataset has training images to balance them against."""
    kept = []
    for d in datasets:
        seen: set[str] = set()
        rows = []
        for s in d.subsets:
            image_dir = s.values["image_dir"].value
            legacy = s.values["image_dir"]
            if s.values["num_repeats"].value < 1:
                conv.ignored(s.values["num_repeats"], "num_repeats < 1: kohya skips the subset")
                continue
            if d.kind == "finetune":
                split = d.values["validation_split"]
                if split.value and 0 < split.value <= 1 and split.key not in conv.reports:
                    conv.unsupported(
                        split,
                        "kohya's FineTuningDataset does not split: it trains on every image and its "
                        "validation dataset is a second copy of the whole training set",
                    )
                found = metadata_images(s, paths, conv)
                if found != ():
                    rows.append((d, s, found))
                continue
            if image_dir in seen:
                conv.ignored(
                    legacy, "the same image_dir appears earlier in this dataset: kohya ignores this subset"
                )
                continue
            seen.add(image_dir)
            local = paths.local(image_dir)
            images = list_images(local) if local is not None else None
            if images == ():
                conv.ignored(legacy, "the folder holds no images: kohya skips the subset")
                continue
            rows.append((d, s, images))
        kept += _drop_unbalanced_reg(rows, conv)
    return kept


def _drop_unbalanced_reg(rows: list, conv: Conversion) -> list:
    if any(not s.values["is_reg"].value for _, s, _ in rows):
        return rows
    for _, s, _ in rows:
        conv.ignored(
            s.values["is_reg"],
            "this [[datasets]] has no training images: kohya balances reg images per "
            "dataset against its training images, so these are never used",
        )
    return []

"""SimpleTuner's multidatabackend.json -> [[datasets]] and [buckets].

One image backend = one dataset. `repeats` counts extra passes (SimpleTuner 0 = kohya/dbspec 1).
`is_regularisation_data` makes a class dataset whose target is the frozen base model's prediction in LoRA runs
(dbspec loss.prior = "base_model"). SimpleTuner samples backends in proportion to their length and never
balances class images, so the spec sets schedule.balance_classes = false.
"""

from __future__ import annotations

import math
from typing import Any

import attrs

from dbspec.convert.common.core import Conversion, Legacy
from dbspec.convert.common.paths import PathMapper

ALIGNMENT = 64  # SimpleTuner's aspect_bucket_alignment, forced to 64 for SD 1.x/2.x/SDXL
_CAPTIONS = {"textfile": "textfile", "instanceprompt": "prompt", "filename": "filename"}
_CACHE_KEYS = frozenset(
    {
        "cache_dir_vae",
        "cache_dir",
        "vae_cache_clear_each_epoch",
        "vae_cache_ondemand",
        "vae_cache_disable",
        "text_cache_ondemand",
        "text_cache_disable",
        "skip_file_discovery",
        "hash_filenames",
        "scan_for_errors",
        "metadata_update_interval",
        "preserve_data_backend_cache",
        "type",
        "id",
        "dataset_type",
        "default",
        "disabled",
        "write_batch_size",
        "read_batch_size",
    }
)
_UNSUPPORTED = {
    "probability": "sampling weights (dbspec draws every sample once per epoch)",
    "start_epoch": "curriculum schedules",
    "end_epoch": "curriculum schedules",
    "start_step": "curriculum schedules",
    "end_step": "curriculum schedules",
    "max_num_samples": "random subsets of a folder",
    "minimum_aspect_ratio": "aspect-ratio filters",
    "maximum_aspect_ratio": "aspect-ratio filters",
    "max_upscale_threshold": "upscale limits",
    "caption_filter_list": "caption filters",
    "caption_shuffle": "caption shuffling",
    "disable_multiline_split": "multi-line captions",
    "timestep_sampling_offset": "per-dataset timestep offsets",
    "crop_aspect_buckets": "custom bucket lists",
}


@attrs.frozen(kw_only=True)
class Backends:
    datasets: int  # how many were written
    has_class: bool
    square: bool


def map_backends(
    backends: list, cfg: dict[str, Legacy], lora: bool, paths: PathMapper, conv: Conversion
) -> Backends:
    masks = {
        b["id"]: b
        for b in backends
        if isinstance(b, dict) and "id" in b and _value(b, "dataset_type", "image") == "conditioning"
    }
    written, has_class, shapes = 0, False, set()
    for n, backend in enumerate(backends):
        if not isinstance(backend, dict):
            conv.invalid(f"backends[{n}]", backend, "multidatabackend.json", "expected an object")
            continue
        key = f"backends[{_value(backend, 'id', n)}]"
        legacy = {
            k: Legacy(key=f"{key}.{k}", value=v, source="multidatabackend.json") for k, v in backend.items()
        }
        if not _numbers_ok(legacy, conv):
            continue
        kind = _value(backend, "dataset_type", "image")
        if (
            _value(backend, "disabled", False)
            or kind in ("text_embeds", "image_embeds")
            or _value(backend, "id", None) in masks
        ):
            for item in legacy.values():
                conv.inert(item, "a cache, mask or disabled backend")
            continue
        if kind != "image" or _value(backend, "type", "local") != "local":
            where = _value(backend, "type", "local")
            why = (
                f"a {kind} dataset: dbspec trains on images"
                if kind != "image"
                else "a Hugging Face dataset backend: dbspec reads local image folders (download it first)"
                if where == "huggingface"
                else f"a {where} backend: dbspec reads local image folders"
            )
            conv.unsupported(legacy["dataset_type"] if kind != "image" else legacy["type"], why)
            continue
        shape = _dataset(written, backend, legacy, cfg, masks, paths, conv)
        has_class |= bool(
            _value(backend, "is_regularisation_data", False)
            or _value(backend, "is_regularization_data", False)
        )
        shapes.add(shape)
        written += 1
    square = shapes == {"square"}
    if len(shapes) > 1:
        conv.warn(
            "DBS404",
            "some backends crop to squares and some keep aspect ratios: dbspec has one [buckets] "
            "mode; converted with aspect buckets",
        )
    if "aspect" in shapes:
        note = (
            "SimpleTuner sizes aspect buckets its own way (aspect_bucket_rounding, aspect_bucket_alignment); "
            "dbspec uses kohya's bucket table, so bucket sizes can differ"
        )
        conv.warn("DBS404", note, "crop")
        conv.notes.append(f"differs: {note}")
    for key in ("resolution", "resolution_type", "minimum_image_size"):
        item = cfg[key]
        if item.given and item.key not in conv.reports:
            conv.inert(item, "every image backend sets its own")
    return Backends(datasets=written, has_class=has_class, square=square)


def _numbers_ok(legacy: dict[str, Legacy], conv: Conversion) -> bool:
    ok = True
    for key in ("crop", "is_regularisation_data", "is_regularization_data", "disabled"):
        if key in legacy and isinstance(legacy[key].value, str):
            conv.warn(
                "DBS405",
                f"SimpleTuner `{legacy[key].key}` = {legacy[key].value!r} is a string: SimpleTuner "
                "reads backend values without conversion, so any non-empty string counts as true",
                legacy[key].key,
                help=f"write {key} = true or false without quotes",
            )
    for key in (
        "repeats",
        "resolution",
        "minimum_image_size",
        "maximum_image_size",
        "target_downsample_size",
        "probability",
    ):
        if key in legacy:
            value = legacy[key].value
            try:
                number = float(value)
                ok &= not isinstance(value, bool) and number == number and abs(number) != float("inf")
            except (TypeError, ValueError):
                ok = False
            if not ok:
                conv.invalid(legacy[key].key, value, legacy[key].source, "not a number")
                return False
    return ok


def _value(backend: dict, key: str, default: Any) -> Any:
    """A backend key with SimpleTuner's default for it (SimpleTuner reads backends with dict.get)."""
    return backend[key] if key in backend else default


def _dataset(
    i: int,
    b: dict,
    legacy: dict[str, Legacy],
    cfg: dict[str, Legacy],
    masks: dict,
    paths: PathMapper,
    conv: Conversion,
) -> str:
    at = ("datasets", i)
    if "id" in legacy:
        conv.mapped(legacy["id"], (*at, "name"), str(b["id"]))
    else:
        conv.put((*at, "name"), f"backend-{i}", "SimpleTuner backend without an id")
    folder = legacy["instance_data_dir"] if "instance_data_dir" in legacy else None
    if folder is None:
        conv.invalid(
            f"backends[{i}].instance_data_dir", None, "multidatabackend.json", "a local backend needs it"
        )
        return "aspect"
    conv.mapped(folder, (*at, "path"), paths.for_spec(folder.value))
    reg = [
        legacy[k]
        for k in ("is_regularisation_data", "is_regularization_data")
        if k in legacy and legacy[k].value
    ]
    if reg:
        conv.mapped(reg[0], (*at, "role"), "class")
    _captions(at, b, legacy, conv)
    if "repeats" in legacy:
        conv.mapped(
            legacy["repeats"],
            (*at, "repeats"),
            int(float(legacy["repeats"].value)) + 1,
            comment=conv.comment(legacy["repeats"], "SimpleTuner counts extra passes: +1"),
        )
    shape = _crop(at, b, legacy, conv)
    kind = _resolution(at, legacy, cfg, shape, conv)
    if "conditioning_data" in legacy:
        _masks(at, legacy["conditioning_data"], masks, paths, conv)
    _smallest(at, legacy, cfg, kind, shape, conv)
    _downsample(legacy, cfg, conv)
    dropout = cfg["caption_dropout_probability"]
    if dropout.value:
        note = (
            "SimpleTuner also zeroes a dropped sample's SDXL size conditioning (time ids); dbspec keeps it"
            if cfg["model_family"].value == "sdxl"
            else ""
        )
        if note:
            conv.differs(dropout, note, (*at, "caption_dropout_rate"), float(dropout.value))
        else:
            conv.mapped(dropout, (*at, "caption_dropout_rate"), float(dropout.value))
    for k, item in legacy.items():
        if k in _UNSUPPORTED and item.value not in (None, False, 1, 1.0):
            conv.unsupported(item, f"dbspec has no {_UNSUPPORTED[k]}")
        elif item.key not in conv.reports:
            conv.inert(
                item, "caching or bookkeeping" if k in _CACHE_KEYS else "no effect with these settings"
            )
    return shape


def _captions(at: tuple, b: dict, legacy: dict[str, Legacy], conv: Conversion) -> None:
    strategy = (
        legacy["caption_strategy"]
        if "caption_strategy" in legacy
        else Legacy(key="caption_strategy", value="filename", source="default")
    )
    if strategy.value not in _CAPTIONS:
        conv.unsupported(strategy, "only textfile, instanceprompt and filename captions convert")
        return
    conv.mapped(strategy, (*at, "captions"), _CAPTIONS[strategy.value])
    prompt = legacy["instance_prompt"] if "instance_prompt" in legacy else None
    if strategy.value == "instanceprompt" and prompt is not None:
        conv.mapped(prompt, (*at, "prompt"), prompt.value)
    elif (
        prompt is not None and "prepend_instance_prompt" in legacy and legacy["prepend_instance_prompt"].value
    ):
        conv.mapped(prompt, (*at, "caption_prefix"), prompt.value)
        conv.record(legacy["prepend_instance_prompt"], "mapped", "datasets.caption_prefix")
    if strategy.value == "filename":
        conv.differs(
            strategy, "SimpleTuner cleans file names its own way; dbspec turns underscores into spaces"
        )


def _resolution(
    at: tuple, legacy: dict[str, Legacy], cfg: dict[str, Legacy], shape: str, conv: Conversion
) -> str:
    """The backend's resolution (or the config's). SimpleTuner's factory turns pixel_area into area first
    (edge^2 / 1e6 megapixels); an area's bucket edge is round(int(sqrt(area x 1e6)) / 64) x 64
    (MultiaspectImage.calculate_new_size_by_pixel_area, alignment 64 for SD models), a square's side in
    dbspec terms. pixel sizes the short edge: the same as dbspec's square buckets when the backend crops
    squares."""
    reso = legacy["resolution"] if "resolution" in legacy else cfg["resolution"]
    kind = legacy["resolution_type"] if "resolution_type" in legacy else cfg["resolution_type"]
    if kind.value in ("area", "pixel_area"):
        value = float(reso.value)
        area = (value * value) / (1000**2) if kind.value == "pixel_area" else value
        side = max(ALIGNMENT, round(int(math.sqrt(area * 1e6)) / ALIGNMENT) * ALIGNMENT)
        conv.record(kind, "mapped", "datasets.resolution")
        if kind.value == "area" or side != value:
            what = f"{value:g} megapixels" if kind.value == "area" else f"{value:g} px"
            note = f"{what}: SimpleTuner's {side} px square"
            conv.mapped(reso, (*at, "resolution"), side, comment=conv.comment(reso, note))
        elif not 64 <= side <= 4096:
            conv.unsupported(reso, "dbspec resolutions lie between 64 and 4096")
        else:
            conv.mapped(reso, (*at, "resolution"), side)
        return "area"
    if kind.value != "pixel":
        conv.unsupported(kind, "SimpleTuner's resolution types are pixel, area and pixel_area")
        return str(kind.value)
    if shape != "square":
        conv.unsupported(
            kind,
            "`pixel` sizes each image's short edge and keeps its aspect ratio; dbspec's aspect buckets "
            "keep a pixel area (pixel with crop = true and crop_aspect square converts)",
        )
        return "pixel"
    conv.record(kind, "mapped", "datasets.resolution")
    side = int(float(reso.value))
    if side % 8 or not 64 <= side <= 4096:
        conv.unsupported(reso, "dbspec resolutions are multiples of 8 between 64 and 4096")
        return "pixel"
    conv.mapped(reso, (*at, "resolution"), side)
    return "pixel"


def _smallest(
    at: tuple, legacy: dict[str, Legacy], cfg: dict[str, Legacy], kind: str, shape: str, conv: Conversion
) -> None:
    """minimum_image_size: the backend's, else the config's (SimpleTuner's default for every backend).

    Its meets_resolution_requirements: pixel needs both edges >= it (dbspec's short-side check, exactly);
    area needs width x height >= it x 1e6 and, for square crops, both edges >= floor(sqrt(it x 1e6)).
    A pixel_area backend's own value is turned into megapixels (edge^2 / 1e6) with its resolution, but the
    config's value is not: it counts megapixels there, and SimpleTuner raises above 5.
    """
    own = "minimum_image_size" in legacy
    smallest = legacy["minimum_image_size"] if own else cfg["minimum_image_size"]
    if smallest.value is None or not float(smallest.value):
        return
    value = float(smallest.value)
    comment = conv.comment(smallest, "smaller images are left out")
    if kind == "pixel":
        conv.mapped(smallest, (*at, "min_image_size"), max(1, int(value)), comment=comment)
        conv.put((*at, "on_bad_image"), "skip", comment)
        return
    kind_legacy = legacy["resolution_type"] if "resolution_type" in legacy else cfg["resolution_type"]
    megapixels = (value * value) / 1_000_000 if own and kind_legacy.value == "pixel_area" else value
    if megapixels > 5:
        unit = "the config's value counts megapixels for this pixel_area backend" if not own else "megapixels"
        conv.invalid(
            smallest.key,
            smallest.value,
            smallest.source,
            f"SimpleTuner raises: {unit}, at most 5 (its meets_resolution_requirements)",
            help="give the backend its own minimum_image_size in pixels, or the config's in megapixels",
        )
        return
    area = megapixels * 1_000_000
    edge = max(1, math.floor(math.sqrt(area)))
    if shape == "square" and edge * edge >= area:
        conv.mapped(smallest, (*at, "min_image_size"), edge, comment=comment)
    else:
        conv.differs(
            smallest,
            f"SimpleTuner keeps images of at least {area:g} pixels"
            + (f" with both edges >= {edge}" if shape == "square" else "")
            + f"; dbspec skips images whose short side is below {edge}",
            (*at, "min_image_size"),
            edge,
            comment=comment,
        )
    conv.put((*at, "on_bad_image"), "skip", comment)


def _downsample(legacy: dict[str, Legacy], cfg: dict[str, Legacy], conv: Conversion) -> None:
    """maximum_image_size + target_downsample_size resize oversize images to the target first; equal to the
    resolution they change nothing: every image is resized to the resolution anyway."""
    reso = legacy["resolution"] if "resolution" in legacy else cfg["resolution"]
    keys = [legacy[k] for k in ("maximum_image_size", "target_downsample_size") if k in legacy]
    if not keys:
        return
    values = {float(item.value) for item in keys if item.value is not None}
    if len(keys) == 2 and values == {float(reso.value)}:
        for item in keys:
            conv.inert(item, "equal to the resolution: images are resized to it anyway")
    else:
        for item in keys:
            conv.unsupported(item, "dbspec has no downsampling of oversize images before cropping")


def _crop(at: tuple, b: dict, legacy: dict[str, Legacy], conv: Conversion) -> str:
    crop = bool(_value(b, "crop", False))
    aspect = _value(b, "crop_aspect", "square")
    style = _value(b, "crop_style", "random")
    shape = "square" if crop and aspect == "square" else "aspect"
    for key in ("crop", "crop_aspect"):
        if key in legacy:
            conv.record(
                legacy[key],
                "mapped" if shape == "square" else "differs",
                "buckets.mode",
                "" if shape == "square" else "aspect buckets are sized as kohya sizes them",
            )
    if crop and style in ("random", "center"):
        if style == "random":
            conv.put(
                (*at, "crop"),
                "random",
                conv.comment(legacy["crop_style"])
                if "crop_style" in legacy
                else "SimpleTuner's default crop_style random",
            )
        if "crop_style" in legacy:
            conv.record(legacy["crop_style"], "mapped", "datasets.crop")
    elif crop:
        conv.unsupported(legacy["crop_style"], "dbspec crops at the centre or at random")
    return shape


def _masks(at: tuple, link: Legacy, masks: dict, paths: PathMapper, conv: Conversion) -> None:
    target = masks[link.value] if link.value in masks else None
    if target is None or _value(target, "conditioning_type", "") != "mask":
        conv.unsupported(link, 'only conditioning_type = "mask" backends convert (as loss masks)')
        return
    conv.mapped(link, (*at, "masks"), paths.for_spec(target["instance_data_dir"]))
    # ModelFoundation.loss: channel 0 of the mask loaded as RGB and normalised to [-1, 1], area-resized to the
    # latent, mapped back by x / 2 + 0.5; the loss times it, averaged over (C, H, W): kohya's reading and mean
    conv.put((*at, "mask_channel"), "red", conv.comment(link, "SimpleTuner reads the mask's red channel"))
    conv.put(("loss", "mask_mean"), "image", conv.comment(link, "loss x mask, image mean"))

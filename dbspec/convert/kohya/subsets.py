"""One kohya subset -> one [[datasets]] entry, and every subset setting dbspec cannot keep."""

from __future__ import annotations

import os
import re
from typing import Any

from dbspec.convert.common.core import Conversion, Legacy, show
from dbspec.convert.common.epochs import Img
from dbspec.convert.kohya.data import KDataset, KSubset
from dbspec.convert.common.paths import PathMapper

_SMALL = 64  # dbspec's default min_image_size

# Scripts whose training step reads a subset's custom_attributes["diff_output_preservation"] (Python truth):
# train_network.py's get_noise_pred_and_target (sdxl_train_network.py inherits it), and the same block in
# sd3_train_network.py and flux_train_network.py. The full fine-tune scripts only log custom_attributes.
READS_PRESERVATION = ("train_network", "sdxl_train_network", "sd3_train_network", "flux_train_network")
_PRESERVATION = "diff_output_preservation"
# keys that only matter together with an unsupported feature
_INERT_WITHOUT: dict[str, str] = {
    "cache_info": "a kohya cache file; no effect on training",
}
# kohya's caption processing: subset key -> (kohya's off value, dbspec's type); dbspec has the same options,
# names and meaning on [[datasets]] (dbspec/plan/captions.py).
_CAPTION_OPTIONS: dict[str, tuple[Any, type]] = {
    "shuffle_caption": (False, bool),
    "caption_separator": (",", str),
    "keep_tokens": (0, int),
    "keep_tokens_separator": ("", str),
    "secondary_separator": ("", str),
    "enable_wildcard": (False, bool),
    "caption_dropout_rate": (0.0, float),
    "caption_dropout_every_n_epochs": (0, int),
    "caption_tag_dropout_rate": (0.0, float),
    "token_warmup_min": (1, int),
    "token_warmup_step": (0.0, float),
}
# Values kohya accepts outside dbspec's bounds, and the in-bounds value that behaves exactly the same there.
_SAME_AS = {
    "caption_dropout_rate": (0.0, 1.0),  # random() < rate: never below 0, always at 1 or more
    "caption_tag_dropout_rate": (0.0, 1.0),  # random() >= rate keeps the tag
    "keep_tokens": (0, None),  # only keep_tokens > 0 keeps tags
    "caption_dropout_every_n_epochs": (0, None),  # only n > 0 drops
    "token_warmup_step": (0.0, None),  # a negative step resolves to no warm-up
}


def map_subset(
    i: int,
    dataset: KDataset,
    subset: KSubset,
    images: tuple[Img, ...] | None,
    resolution: int,
    paths: PathMapper,
    conv: Conversion,
) -> None:
    v = subset.values
    at = ("datasets", i)
    image_dir = v["image_dir"]
    conv.put(
        (*at, "name"), _unique_name(conv, v, paths), f"{conv.tool} {image_dir.key}: a name for the folder"
    )
    if dataset.kind == "finetune":
        meta = v["metadata_file"]
        conv.mapped(meta, (*at, "metadata"), paths.for_spec(meta.value))
    if image_dir.value is not None:
        conv.mapped(image_dir, (*at, "path"), paths.for_spec(image_dir.value))
    else:  # a fine-tuning subset without image_dir: its keys are absolute (kohya asserts), `path` unused
        folder = (
            os.path.commonpath([str(img.path.parent) for img in images])
            if images
            else os.path.dirname(v["metadata_file"].value) or "."
        )
        conv.put(
            (*at, "path"),
            paths.for_spec(folder),
            "kohya has no image_dir: the metadata file's keys are absolute paths (the images' folder)",
        )
    if v["is_reg"].value:
        conv.mapped(v["is_reg"], (*at, "role"), "class")
    else:
        conv.record(v["is_reg"], "mapped", "datasets.role")
    if subset.kohya_root:
        conv.put(
            (*at, "layout"),
            "kohya_folders",
            f"{conv.tool} {image_dir.key}: its `N_class tokens` sub-folders (repeats and "
            "prompt from each name)",
        )
    _captions(at, dataset, v, conv, subset.kohya_root)
    if not subset.kohya_root:
        conv.mapped(v["num_repeats"], (*at, "repeats"), v["num_repeats"].value)
    reso = dataset.values["resolution"]
    conv.mapped(reso, (*at, "resolution"), resolution)
    if v["random_crop"].value:
        conv.mapped(v["random_crop"], (*at, "crop"), "random")
    else:
        conv.record(v["random_crop"], "mapped", "datasets.crop")
    _flag(conv, v["flip_aug"], (*at, "flip"))
    if "color_aug" in v:
        _flag(conv, v["color_aug"], (*at, "color_aug"))
    if dataset.kind == "controlnet":
        cond = v["conditioning_data_dir"]
        conv.mapped(cond, (*at, "masks"), paths.for_spec(cond.value))
        # apply_masked_loss reads channel 0 of the conditioning image, loaded as RGB: red
        conv.put((*at, "mask_channel"), "red", conv.comment(cond, "kohya reads the mask's red channel"))
    elif "alpha_mask" in v:
        _flag(conv, v["alpha_mask"], (*at, "mask_from_alpha"))
    if (images and any(min(img.size) < _SMALL for img in images)) or subset.kohya_root:
        conv.put(
            (*at, "min_image_size"), 1, f"{conv.tool} trains images of any size (upscaled into a bucket)"
        )


def _captions(at: tuple, dataset: KDataset, v: dict[str, Legacy], conv: Conversion, root: bool) -> None:
    if dataset.kind == "finetune":  # captions and tags from the metadata file, joined with caption_separator
        for key in ("caption_prefix", "caption_suffix"):
            if v[key].value:
                conv.mapped(v[key], (*at, key), v[key].value)
        _caption_processing(at, v, conv, joins=True)
        return
    ext = v["caption_extension"]
    extension = ext.value if ext.value.startswith(".") else "." + ext.value  # kohya prepends the dot
    note = "caption files, else class_tokens" if dataset.kind == "dreambooth" else "caption files"
    note = "caption files, else each folder's class tokens" if root else note
    conv.put((*at, "captions"), "textfile", f"{conv.tool} reads <image stem>{extension}: {note}")
    conv.mapped(ext, (*at, "caption_extension"), extension)
    tokens = v["class_tokens"] if "class_tokens" in v else None
    if tokens is not None and tokens.value and not root:
        conv.mapped(tokens, (*at, "prompt"), tokens.value)
    for key in ("caption_prefix", "caption_suffix"):
        if v[key].value:
            conv.mapped(v[key], (*at, key), v[key].value)
    _caption_processing(at, v, conv)


def _caption_processing(at: tuple, v: dict[str, Legacy], conv: Conversion, joins: bool = False) -> None:
    """kohya's caption options, one for one; options that cannot act with the others are reported inert."""
    values = {key: _caption_value(key, v[key].value) for key in _CAPTION_OPTIONS if key in v}
    cuts = (
        values.get("shuffle_caption")
        or values.get("caption_tag_dropout_rate", 0) > 0
        or values.get("token_warmup_step", 0) > 0
    )
    inert = {
        "keep_tokens": None
        if cuts
        else "only shuffling, tag dropout and token warm-up keep tags, and they are off",
        "keep_tokens_separator": None
        if cuts
        else "only shuffling, tag dropout and token warm-up cut at it (they are off): the caption trains as "
        "written, separator included, in kohya and in dbspec",
        "caption_separator": None
        if cuts or values.get("secondary_separator") or joins  # joins: a metadata file's caption and tags
        else "only shuffling, tag dropout, token warm-up and secondary_separator use it, and they are off",
        "token_warmup_min": None if values.get("token_warmup_step", 0) > 0 else "token warm-up is off",
    }
    if cuts and values.get("caption_separator") == "":
        sep = v["caption_separator"]
        conv.invalid(sep.key, "", sep.source, "kohya cannot cut captions into tags at an empty separator")
        return
    for key, value in values.items():
        legacy = v[key]
        off = _CAPTION_OPTIONS[key][0]
        why = inert.get(key)
        if why and value != off:
            conv.inert(legacy, why)
        elif value == off:
            conv.record(legacy, "mapped", f"datasets.{key}")
        else:
            note = "" if value == legacy.value else f"kohya behaves the same for {show(legacy.value)}"
            conv.mapped(legacy, (*at, key), value, note=note)


def _caption_value(key: str, value: Any) -> Any:
    """The dbspec value of a kohya caption option (None and "" are off; out-of-bounds values that act like a
    bound become it)."""
    off, kind = _CAPTION_OPTIONS[key]
    if value is None or value == "":
        return off if key != "caption_separator" else ""
    value = kind(value)
    low, high = _SAME_AS.get(key, (None, None))
    if low is not None and value < low:
        return kind(low)
    if high is not None and value > high:
        return kind(high)
    return value


def _flag(conv: Conversion, legacy: Legacy, path: tuple) -> None:
    if legacy.value:
        conv.mapped(legacy, path, True)
    else:
        conv.record(legacy, "mapped", ".".join(str(p) for p in path if isinstance(p, str)))


def _unique_name(conv: Conversion, v: dict[str, Legacy], paths: PathMapper) -> str:
    named = v["image_dir"].value if v["image_dir"].value is not None else v["metadata_file"].value
    folder = paths.name_of(named) or "images"
    if v["image_dir"].value is None:
        folder = folder.rpartition(".")[0] or folder
    base = re.sub(r"^\d+_", "", folder).strip() or folder
    taken = {
        value for path, (value, _) in conv.values.items() if path[0] == "datasets" and path[-1] == "name"
    }
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    return name


def subset_problems(
    index: int,
    dataset: KDataset,
    subset: KSubset,
    images: tuple[Img, ...] | None,
    setting,
    cache_latents: bool,
    conv: Conversion,
    script: str = "",
) -> None:
    v = subset.values
    for key, why in _INERT_WITHOUT.items():
        if key in v and v[key].given:
            conv.inert(v[key], why)
    interp = v["resize_interpolation"]
    if interp.value is not None:
        conv.differs(interp, "dbspec resizes with its own filter; the images keep the same size and crop")
    _dataset_level(dataset, conv)
    if images is not None:
        if dataset.kind != "finetune":  # fine-tuning captions come from the metadata file
            _caption_coverage(index, subset, images, conv)
        _image_checks(subset, images, setting, cache_latents, conv)
    if dataset.kind == "controlnet" or ("alpha_mask" in v and v["alpha_mask"].value):
        # apply_masked_loss: the loss times the mask, then the mean over the whole (latent) image
        key = v["conditioning_data_dir"] if dataset.kind == "controlnet" else v["alpha_mask"]
        conv.mapped(key, ("loss", "mask_mean"), "image", comment=conv.comment(key, "loss x mask, image mean"))


def map_custom_attributes(i: int, dataset: KDataset, subset: KSubset, script: str, conv: Conversion) -> None:
    """kohya's differential output preservation (a subset's custom_attributes.diff_output_preservation, read
    with Python truth by the LoRA scripts) becomes the dataset's preserve_output; no script reads other
    keys."""
    legacy = subset.values["custom_attributes"] if "custom_attributes" in subset.values else None
    if legacy is None or not legacy.given or not isinstance(legacy.value, dict):
        return
    attributes: dict = legacy.value
    others = [key for key in attributes if key != _PRESERVATION]
    unread = f"no kohya script reads {', '.join(others)}" if others else ""
    if not (_PRESERVATION in attributes and attributes[_PRESERVATION]):
        conv.inert(legacy, unread or f"{_PRESERVATION} is off")
        return
    if script not in READS_PRESERVATION:
        conv.inert(legacy, f"{script}.py (a full fine-tune) never reads custom_attributes; it only logs them")
        return
    value = attributes[_PRESERVATION]
    truth = "" if value is True else f"kohya reads {show(value)} as true (Python truth)"
    note = "; ".join(x for x in (truth, unread) if x)
    conv.mapped(legacy, ("datasets", i, "preserve_output"), True, note=note)
    others_in_batch = (
        any(not _preserves(s) for s in dataset.subsets if s.index != subset.index)
        and dataset.values["batch_size"].value > 1
    )
    if script == "train_network" and others_in_batch:
        # NetworkTrainer.call_unet (SD1/SD2) ignores the row indices sdxl/sd3/flux honour: the base model runs
        # on the whole batch, and writing it into the flagged rows fails on a shape mismatch
        conv.differs(
            legacy,
            "kohya's train_network.py (SD1/SD2) predicts the base output for the whole batch and stops with "
            "a shape mismatch when a batch mixes preserved and other samples; dbspec computes it for the "
            "preserved rows only, as sdxl_train_network.py, sd3_train_network.py and flux_train_network.py "
            "do",
        )


def _preserves(subset: KSubset) -> bool:
    legacy = subset.values["custom_attributes"] if "custom_attributes" in subset.values else None
    attributes = legacy.value if legacy is not None and isinstance(legacy.value, dict) else {}
    return bool(_PRESERVATION in attributes and attributes[_PRESERVATION])


def preservation_needs_denoiser(parts: tuple, a: dict[str, Legacy], conv: Conversion) -> None:
    """With no network module on the denoiser (network_train_text_encoder_only, a preset matching no U-Net
    layer) kohya's set_multiplier(0) turns off only the text-encoder modules, after the captions were encoded:
    the preserved target is the prediction itself (zero loss that counts in the batch mean), what dbspec's
    preserve_output computes with the adapter on the text encoder only (DBS609, runtime/step.py). At
    unet_lr 0 (`a`: kohya's arguments) the U-Net's modules are there, held at their start, and switched off
    for that target; held_start_refusal says when that target is still the prediction itself."""
    if ("train", "denoiser") not in conv.values or conv.values[("train", "denoiser")][0] is not False:
        return
    held = conv.facts.get("denoiser_held_at_rate_zero", False)
    refused = held_start_refusal(a, conv) if held else ""
    for i, (_, subset, _) in enumerate(parts):
        if ("datasets", i, "preserve_output") not in conv.values:
            continue
        legacy = subset.values["custom_attributes"]
        if refused:
            del conv.values[("datasets", i, "preserve_output")]
            conv.unsupported(legacy, refused)
            continue
        if held and ("adapter", "dora") in conv.values and conv.values[("adapter", "dora")][0]:
            conv.differs(legacy, _HELD_DORA)
        elif conv.reports[legacy.key].fate == "mapped":  # a difference said before (SD1 batches) stays
            conv.record(legacy, "mapped", note=_HELD_ZERO if held else _NO_MODULE)


_NO_MODULE = (
    "no network module on the U-Net: kohya's target is the prediction itself (zero loss counted in the batch "
    "mean), as dbspec's with the adapter on the text encoder only (DBS609)"
)
_HELD_ZERO = (
    "at unet_lr 0 kohya's U-Net modules are built and held at their start, where they add nothing to a "
    "layer's output (lora_up, or LyCORIS's zero factor, is 0: x + 0 at multiplier 1 and 0 alike), so its "
    "target with them switched off is the prediction itself: zero loss counted in the batch mean, as "
    "dbspec's with the adapter on the text encoder only (DBS609)"
)
_HELD_DORA = (
    "at unet_lr 0 kohya's held U-Net DoRA modules (dora_wd) scale each weight by dora_scale / ||W||, which "
    "rounds away from W: its prediction differs from the switched-off target by rounding, so the preserved "
    "rows carry a rounding-sized loss; dbspec's target is its prediction itself (exactly zero loss, DBS609)"
)


def held_start_refusal(a: dict[str, Legacy], conv: Conversion) -> str:
    """Why kohya's U-Net modules held at unet_lr 0 change its preserved target away from its prediction, or
    "": a --network_weights file's modules start where they add to the layer's output at multiplier 1 but
    not at 0 (its prediction is not its switched-off target), and LoRA-GGPO's perturbation is drawn anew in
    each forward, the switched-off one too. Every other start of kohya's and LyCORIS's modules adds exactly 0
    at both multipliers (lycoris-lora 4.1.3's checked in tests/runtime/test_preserve_output.py)."""
    weights = a["network_weights"] if "network_weights" in a else None
    if weights is not None and weights.value:
        return (
            "at unet_lr 0 kohya's U-Net modules, loaded from the --network_weights file and held there, "
            "change its prediction but are switched off for the preserved target; dbspec's run has no "
            "denoiser adapter to hold them"
        )
    if ("adapter", "ggpo") in conv.values and conv.values[("adapter", "ggpo")][0]:
        return (
            "at unet_lr 0 kohya's held U-Net modules still add LoRA-GGPO's perturbation, drawn anew in "
            "each forward (the switched-off one for the preserved target too); dbspec's run has no "
            "denoiser adapter to perturb"
        )
    return ""


def _dataset_level(dataset: KDataset, conv: Conversion) -> None:
    v = dataset.values
    if v["network_multiplier"].value != 1.0:
        # library/train_util.py puts it in each batch as "network_multipliers", but since v0.10.0 (the sd3
        # merge) train_network.py never reads it: the network trains at the multiplier it was created with,
        # 1.0 (v0.8.2 to v0.9.x called network.set_multiplier with it).
        conv.ignored(
            v["network_multiplier"],
            "train_network.py (v0.10 and later) never applies it: the LoRA trains at multiplier 1.0",
        )
    # validation_split and validation_seed: convert/kohya/evaluation.py (the evaluation holdout)
    for key in ("network_multiplier",):
        if v[key].given and v[key].key not in conv.reports:
            conv.inert(v[key], "no effect with these settings")


def _face_crop_captions(subset: KSubset, images: tuple[Img, ...], ext: str, conv: Conversion) -> set[str]:
    """Images kohya captions from the face-crop name (`name.txt` for `name_x_y_w_h.png`, read_caption's second
    candidate) because they have no caption file of their own; dbspec's textfile captions read only the
    image's own (layout = "kohya_folders" reads both)."""
    found = set()
    for img in images:
        parts = img.path.stem.split("_")
        face = img.path.with_name("_".join(parts[:-4]) + ext) if len(parts) >= 5 else None
        if face is not None and face.is_file() and not img.path.with_suffix(ext).is_file():
            found.add(img.path.name)
    if found:
        tokens = subset.values["class_tokens"].value if "class_tokens" in subset.values else None
        conv.differs(
            subset.values["image_dir"],
            f"{len(found)} image(s) (e.g. {sorted(found)[0]}) have no caption file of their own and kohya "
            f"reads the face-crop one (`name{ext}` for `name_x_y_w_h` images); dbspec captions them with "
            + (f'the prompt "{tokens}"' if tokens else "an empty caption"),
        )
    return found


def _caption_coverage(index: int, subset: KSubset, images: tuple[Img, ...], conv: Conversion) -> None:
    """Images without a caption file in a subset without class_tokens: kohya's empty caption
    (missing_captions = "empty"; was DBS403)."""
    v = subset.values
    tokens = v["class_tokens"].value if "class_tokens" in v else None
    ext = v["caption_extension"].value
    ext = ext if ext.startswith(".") else "." + ext
    face = _face_crop_captions(subset, images, ext, conv)
    if tokens:
        return
    bare = [
        img.path.name
        for img in images
        if not img.path.with_suffix(ext).is_file() and img.path.name not in face
    ]
    if bare:  # DreamBoothDataset: "neither caption file nor class tokens are found. use empty caption"
        why = (
            f"{len(bare)} image(s) (e.g. {bare[0]}) have no {ext} caption file and the subset has no "
            "class_tokens: kohya trains them with an empty caption, with a warning"
        )
    elif face:  # kohya reads their face-crop caption (the DBS404 above); dbspec's own is the empty one
        why = "the face-crop images without a caption file of their own: an empty caption"
    if bare or face:
        conv.put(("datasets", index, "missing_captions"), "empty", conv.comment(v["image_dir"], why))


def map_face_crop(i: int, subset: KSubset, setting, cache_latents: bool, conv: Conversion) -> None:
    """kohya's face_crop_aug_range -> `face_crop`, where kohya's crop_target runs: buckets off and latents
    not cached (cached latents are cut once by trim_and_resize_if_required; with buckets, too)."""
    face = subset.values.get("face_crop_aug_range")
    if face is None or face.value is None:
        return
    value = face.value
    pair = isinstance(value, (list, tuple)) and len(value) == 2
    # a dataset config takes any pair (only --face_crop_aug_range asserts the order): reversed, kohya's
    # crop_target scales by the one scale of [hi, hi] and shifts the window as for a range (DBS616, a warning)
    reversed_ok = pair and value[0] > value[1] and "." in face.key
    if not (pair and (value[0] <= value[1] or reversed_ok)):
        conv.invalid(
            face.key, value, face.source, "kohya asserts two numbers, the lower first (`lower,upper`)"
        )
    elif setting.kohya.mode != "square":
        conv.inert(
            face,
            "kohya crops around faces only with buckets off (enable_bucket); with buckets it "
            "reads the face box and cuts the bucket as usual",
        )
    elif cache_latents:
        conv.inert(face, "the latents kohya caches are cut once without it, and training reads only those")
    else:
        conv.mapped(face, ("datasets", i, "face_crop"), [float(value[0]), float(value[1])])


def map_image_prep(i: int, setting, cache_latents: bool, conv: Conversion) -> None:
    """How kohya prepares images, written for every dataset: EXIF orientation ignored (kohya's load_image
    decodes the stored pixels), and with buckets and latent caching off the resolution cut from the unresized
    image (its non-cached __getitem__ path; with buckets or cached latents it cover-resizes as dbspec)."""
    conv.put(
        ("datasets", i, "exif_orientation"),
        "ignore",
        f"{conv.tool} trains the stored pixels (PIL without EXIF transpose)",
    )
    if setting.kohya.mode == "square" and not cache_latents:
        conv.put(
            ("datasets", i, "resize"),
            "none",
            f"{conv.tool} with buckets and cache_latents off crops the unresized image",
        )


def has_face_box(name: str) -> bool:
    """Whether kohya reads a face box from a file name (five `_` parts or more, the centre x above 0)."""
    parts = os.path.splitext(name)[0].split("_")
    try:
        return len(parts) >= 5 and int(parts[-4]) > 0
    except ValueError:
        return False


def _image_checks(
    subset: KSubset, images: tuple[Img, ...], setting, cache_latents: bool, conv: Conversion
) -> None:
    v = subset.values
    if setting.kohya.mode != "square" or cache_latents:
        return
    width, height = setting.resolution
    face = v["face_crop_aug_range"].value if "face_crop_aug_range" in v else None
    small = [img.path.name for img in images if img.size[0] < width or img.size[1] < height]
    large = [
        img.path.name
        for img in images
        if img.size != (width, height)
        and img.path.name not in small
        and not (face and has_face_box(img.path.name))  # kohya scales and cuts these around the face
    ]
    if small:
        conv.invalid(
            v["image_dir"].key,
            v["image_dir"].value,
            v["image_dir"].source,
            f"with buckets and cache_latents off kohya asserts every image is at least {width}x{height}; "
            f"{small[0]} is smaller",
        )
    elif large and not v["random_crop"].value:
        conv.invalid(
            v["image_dir"].key,
            v["image_dir"].value,
            v["image_dir"].source,
            f"with buckets, cache_latents and random_crop off kohya asserts images are exactly "
            f"{width}x{height}; {large[0]} is larger",
        )

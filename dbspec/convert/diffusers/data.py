"""diffusers DreamBooth data -> [[datasets]], [buckets] and the batch size.

diffusers resizes the short side to `resolution` and crops a square (random unless --center_crop): dbspec's
square buckets do the same. With --with_prior_preservation every batch holds `train_batch_size` instance
images followed by as many class images (one forward pass), the dataset length is max(#class, #instance) and
the shorter list cycles. dbspec pools instance and class samples: batch_size = 2 x train_batch_size, class
images balanced to the instance samples, and instance repeats chosen so an epoch shows every class image, as
diffusers' epoch does.
"""

from __future__ import annotations

import attrs

from dbspec.convert.common.core import DIFFERS, Conversion, Legacy
from dbspec.convert.common.epochs import list_images
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.diffusers.args import SDXL_LORA
from dbspec.convert.diffusers.flow import FLOW_SCRIPTS

# scripts whose DreamBoothDataset draws each instance image's flip and crop once, when it is built
FIXED_DRAWS = (SDXL_LORA, *FLOW_SCRIPTS)

Args = dict[str, Legacy]


@attrs.frozen(kw_only=True)
class Data:
    prior: bool
    batch_size: int  # the spec's
    diffusers_batches: int | None  # diffusers' batches per epoch (None when the images cannot be counted)
    spec_batches: int | None  # the converted spec's


def map_data(a: Args, script: str, paths: PathMapper, conv: Conversion) -> Data | None:
    inst, prompt = a["instance_data_dir"], a["instance_prompt"]
    hub_data = a["dataset_name"] if "dataset_name" in a else None
    if (
        hub_data is not None and hub_data.value
    ):  # the SDXL script's Hugging Face dataset (reported unsupported)
        if inst.value:
            conv.invalid(
                "dataset_name",
                hub_data.value,
                hub_data.source,
                "the script raises: Specify only one of `--dataset_name` or `--instance_data_dir`",
            )
        return None
    if hub_data is not None and not inst.value:
        conv.invalid(
            inst.key,
            None,
            inst.source,
            "the script raises: Specify either `--dataset_name` or `--instance_data_dir`",
        )
    for legacy in (inst, prompt) if hub_data is None else (prompt,):
        if not legacy.value:
            conv.invalid(legacy.key, None, legacy.source, "the script requires it")
    if not inst.value or not prompt.value:
        return None
    prior = bool(a["with_prior_preservation"].value)
    if prior and not (a["class_data_dir"].value and a["class_prompt"].value):
        conv.invalid(
            "with_prior_preservation",
            True,
            a["with_prior_preservation"].source,
            "diffusers raises: prior preservation needs --class_data_dir and --class_prompt",
        )
        return None
    local = paths.local(inst.value)
    images = list_images(local) if local is not None else None
    count = len(images) if images else None
    repeats = a["repeats"] if "repeats" in a else Legacy(key="repeats", value=1, source="default")
    spec_repeats = _instance(a, repeats, count, prior, paths, conv)
    if prior:
        _class(a, paths, conv)
    batch = a["train_batch_size"]
    size = batch.value * (2 if prior else 1)
    if prior:
        conv.differs(
            batch,
            f"diffusers pairs each of the {batch.value} instance images of a batch with a class "
            f"image; dbspec draws batches of {size} from the pooled, balanced samples, so a batch holds "
            "about (not exactly) half class images",
            ("schedule", "batch_size"),
            size,
            comment=conv.comment(batch, f"{batch.value} instance + {batch.value} class images"),
        )
    else:
        conv.mapped(batch, ("schedule", "batch_size"), size)
    _square(a, script, images, conv)
    if prior and script == SDXL_LORA:
        _sdxl_prior(a, conv)
    if count is None:
        conv.depends(
            inst.key, "the instance images could not be counted here: epoch lengths were not checked"
        )
        return Data(prior=prior, batch_size=size, diffusers_batches=None, spec_batches=None)
    length = max(a["num_class_images"].value, count * repeats.value) if prior else count * repeats.value
    samples = count * spec_repeats * (2 if prior else 1)
    return Data(
        prior=prior,
        batch_size=size,
        diffusers_batches=-(-length // batch.value),
        spec_batches=-(-samples // size),
    )


def _instance(
    a: Args, repeats: Legacy, count: int | None, prior: bool, paths: PathMapper, conv: Conversion
) -> int:
    inst, prompt = a["instance_data_dir"], a["instance_prompt"]
    at = ("datasets", 0)
    conv.put((*at, "name"), "instance", f"{conv.tool} instance_data_dir")
    conv.mapped(inst, (*at, "path"), paths.for_spec(inst.value))
    conv.mapped(prompt, (*at, "prompt"), prompt.value)
    spec_repeats = repeats.value
    wanted = a["num_class_images"].value
    if prior and count and count * repeats.value < wanted:
        spec_repeats = -(-wanted // count)
        note = (
            f"{wanted} class images / {count} instance images, rounded up: an epoch shows every class image"
        )
        if wanted % count:
            conv.differs(
                a["num_class_images"],
                f"{wanted} class images do not divide by {count} instance images: "
                f"dbspec's epoch holds {count * spec_repeats} pairs, diffusers' {wanted}",
            )
        conv.put((*at, "repeats"), spec_repeats, f"{conv.tool}: {note}")
        conv.record(repeats, "mapped", "datasets[0].repeats", note)
    elif spec_repeats != 1:
        conv.mapped(repeats, (*at, "repeats"), spec_repeats)
    else:
        conv.record(repeats, "mapped", "datasets[0].repeats")
    return spec_repeats


def _class(a: Args, paths: PathMapper, conv: Conversion) -> None:
    at = ("datasets", 1)
    folder, prompt, number = a["class_data_dir"], a["class_prompt"], a["num_class_images"]
    conv.put((*at, "name"), "class", f"{conv.tool} class_data_dir")
    conv.mapped(folder, (*at, "path"), paths.for_spec(folder.value))
    conv.put((*at, "role"), "class", conv.comment(a["with_prior_preservation"]))
    conv.mapped(prompt, (*at, "prompt"), prompt.value)
    conv.mapped(
        number,
        (*at, "generate"),
        number.value,
        comment=conv.comment(number, "missing class images are generated from class_prompt"),
    )
    local = paths.local(folder.value)
    found = list_images(local) if local is not None else None
    if found and len(found) > number.value:
        conv.differs(
            number,
            f"the class folder holds {len(found)} images: diffusers uses the first {number.value} "
            "it lists, dbspec those the balancing reaches in name order",
        )
    for key in ("sample_batch_size", "prior_generation_precision"):
        if a[key].given:
            conv.inert(a[key], "class-image generation settings: dbspec generates with its own")
    conv.put(("schedule", "balance_classes"), True, f"{conv.tool} shows one class image per instance image")


def _square(a: Args, script: str, images, conv: Conversion) -> None:
    reso, crop = a["resolution"], a["center_crop"]
    conv.put(
        ("buckets", "mode"), "square", f"{conv.tool} resizes the short side to resolution and crops a square"
    )
    for i in (0, 1):
        if ("datasets", i, "path") in conv.values:
            conv.mapped(reso, ("datasets", i, "resolution"), reso.value)
            if not crop.value:
                conv.put(
                    ("datasets", i, "crop"), "random", conv.comment(crop, "no --center_crop: a random crop")
                )
            # the SDXL script flips instance images only; class images are never flipped
            if i == 0 and "random_flip" in a and a["random_flip"].value:
                conv.mapped(a["random_flip"], ("datasets", i, "flip"), True)
    conv.record(crop, "mapped", "datasets.crop")
    if script in FIXED_DRAWS:
        _sdxl_fixed_draws(a, images, conv, script)
    if reso.value % 8 or not 64 <= reso.value <= 4096:
        conv.unsupported(reso, "dbspec resolutions are multiples of 8 between 64 and 4096")
    for key in ("crops_coords_top_left_h", "crops_coords_top_left_w"):
        if key in a and a[key].value:
            conv.differs(a[key], "dbspec conditions SDXL on the actual crop position")
    if "image_interpolation_mode" in a and a["image_interpolation_mode"].value != "lanczos":
        conv.differs(a["image_interpolation_mode"], "dbspec resizes with its own filter")


def quirk(conv: Conversion, legacy: Legacy, why: str) -> None:
    """A behaviour of the script dbspec does not reproduce (DBS404), said even when the key already has
    another difference (`Conversion.differs` says one per key)."""
    conv.record(legacy, "differs", "", why)
    conv.warn(DIFFERS, f"{conv.tool} `{legacy.key}`: {why}", legacy.key)
    conv.notes.append(f"differs: {legacy.key}: {why}")


def _sdxl_fixed_draws(a: Args, images, conv: Conversion, script: str = SDXL_LORA) -> None:
    """train_dreambooth_lora_sdxl.py's DreamBoothDataset.__init__ flips (p = 0.5 with --random_flip) and crops
    every instance image (each --repeats copy on its own) once, when it builds the dataset, and trains those
    pixels every epoch; dbspec draws a sample's flip and crop each time the sample is drawn."""
    flip, crop = a["random_flip"], a["center_crop"]
    build = f"{script}.py draws each instance image's {{what}} once, when it builds the dataset "
    build += "(each --repeats copy its own draw), and trains those same pixels every epoch; dbspec draws it "
    build += "each time the sample is drawn"
    if flip.value:
        quirk(conv, flip, build.format(what="flip (p = 0.5)"))
    oriented = [img.oriented for img in images] if images else None
    if not crop.value and (oriented is None or any(w != h for w, h in oriented)):
        note = "" if oriented is not None else " (when an image is not square; the images were not read here)"
        quirk(conv, crop, build.format(what="random square crop") + note)


def _sdxl_prior(a: Args, conv: Conversion) -> None:
    """What train_dreambooth_lora_sdxl.py does with class images that dbspec does not copy."""
    quirk(
        conv,
        a["with_prior_preservation"],
        "train_dreambooth_lora_sdxl.py conditions each class image on the size and crop of the instance "
        "image it is paired with (collate_fn repeats the instance's original_size and crop_top_left); "
        "dbspec on the class image's own",
    )
    batch = a["train_batch_size"]
    if batch.value >= 2:
        quirk(
            conv,
            batch,
            f"with prior preservation at batch {batch.value}, train_dreambooth_lora_sdxl.py repeats the "
            "prompt pair [instance, class] along a batch ordered [instances..., classes...], so every "
            "second instance image trains with the class prompt and every other class image with the "
            "instance prompt (its pairing is right at batch 1 only); dbspec gives each image its own "
            "dataset's prompt",
        )

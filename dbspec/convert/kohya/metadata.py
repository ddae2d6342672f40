"""A kohya fine-tuning subset (`--in_json`, a subset's `metadata_file`) -> a dataset with `metadata`: the
images its metadata file lists, read here for the epoch arithmetic with the compiler's own rules
(dbspec/compiler/metadata.py: kohya's FineTuningDataset)."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from dbspec.compiler.metadata import image_path, parse_metadata
from dbspec.convert.common.core import DIFFERS, Conversion
from dbspec.convert.common.epochs import Img
from dbspec.convert.common.paths import PathMapper
from dbspec.convert.kohya.data import KSubset

_ORIENTATION_TAG = 0x0112


def metadata_images(s: KSubset, paths: PathMapper, conv: Conversion) -> tuple[Img, ...] | None:
    """The subset's images in the metadata file's order; () when kohya skips or rejects the subset (reported),
    None when the file or an image is not on this machine (the plan reads them)."""
    meta = s.values["metadata_file"]
    image_dir = s.values["image_dir"]
    local = paths.local(meta.value)
    if local is None or not local.is_file():
        conv.depends(
            meta.key,
            f"`{meta.value}` is not on this machine: `dbspec plan` reads it (kohya raises 'no metadata' "
            "where it is missing)",
        )
        return None
    try:
        items = parse_metadata(local.read_text(encoding="utf-8"), local.name)
    except (OSError, UnicodeDecodeError) as exc:
        conv.unreadable(meta, str(exc))
        return ()
    except ValueError as exc:
        if "lists no image" in str(exc):
            conv.ignored(meta, "the metadata file lists no image: kohya skips the subset")
        else:
            conv.invalid(meta.key, meta.value, meta.source, f"kohya cannot use it: the file {exc}")
        return ()
    relative = [key for key, _ in items if not os.path.isabs(key)]
    if relative and image_dir.value is None:
        conv.invalid(
            meta.key,
            meta.value,
            meta.source,
            "kohya asserts image_dir (--train_data_dir) is given when image keys are relative "
            f"(`{relative[0]}`)",
        )
        return ()
    folder = paths.local(image_dir.value) if image_dir.value is not None else local.parent
    if folder is None:
        conv.depends(
            image_dir.key, f"`{image_dir.value}` is not on this machine: `dbspec plan` finds the images"
        )
        return None
    found, missing, stems = [], [], []
    for key, _ in items:
        path = image_path(folder, key)
        if path is None:
            missing.append(key)
            continue
        if not (folder / key).is_file() and not Path(key).is_file():
            stems.append(key)
        found.append(_img(Path(path)))
    _notes(items, folder, stems, meta, conv)
    if missing:
        conv.depends(
            meta.key,
            f"{len(missing)} image(s) it lists are not found here (e.g. `{missing[0]}`): `dbspec plan` looks "
            "for them where the images are",
        )
        return None
    if any(img is None for img in found):
        return None  # unreadable here: the compiler says why
    return tuple(found)


def _img(path: Path) -> Img | None:
    try:
        with Image.open(path) as im:
            orientation = int(im.getexif().get(_ORIENTATION_TAG, 1) or 1)
            return Img(path=path, size=im.size, orientation=orientation)
    except (OSError, UnidentifiedImageError, ValueError):
        return None


def _notes(items: list, folder: Path, stems: list[str], meta, conv: Conversion) -> None:
    if stems:
        conv.warn(
            DIFFERS,
            f"kohya `{meta.key}`: {len(stems)} key(s) name no file as written (e.g. `{stems[0]}`, a file "
            "stem as merge_captions_to_metadata.py writes without --full_path): dbspec finds `<key>.png` "
            "(.jpg, ...) in the image folder, as kohya did before sd-scripts #2186; kohya's current "
            "FineTuningDataset joins the key to image_dir and cannot open it",
            key=meta.key,
        )
    if any("train_resolution" in md for _, md in items):
        conv.notes.append(
            f"{meta.key}: `train_resolution` (prepare_buckets_latents.py) is not read; kohya's current "
            "FineTuningDataset makes buckets from the image sizes too (since sd-scripts #2186)"
        )
    if any(name.endswith(".npz") for name in _listing(folder)):
        conv.notes.append(
            f"{meta.key}: kohya's cached .npz latents beside the images are not read: dbspec encodes the "
            "images and caches its own latents"
        )


def _listing(folder: Path) -> list[str]:
    try:
        return os.listdir(folder)
    except OSError:
        return []

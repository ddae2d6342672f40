"""`layout = "kohya_folders"`: a dataset folder of kohya's `N_class tokens` sub-folders,
expanded at plan time.

kohya (config_util.generate_dreambooth_subsets_config_by_subdirs) lists the immediate sub-folders of
`train_data_dir`: the name split at the first `_` gives the repeats (`int(first)`) and the class tokens (the
rest, `"10_sks dog"` -> 10, `"sks dog"`; `"4000"` -> 4000, `""`); a name without a leading number, or with
repeats below 1, is skipped with a warning; loose files and deeper folders are not read. Each sub-folder is
one subset: its images repeat N times, and an image without a caption file is captioned with the class tokens
(DreamBoothDataset.read_caption, which also tries the face-crop name `name_x_y_w_h.png` -> `name<ext>`).
"""

from __future__ import annotations

from pathlib import Path

import attrs

from dbspec.compiler.context import Context
from dbspec.compiler.images import IMAGE_EXTENSIONS, ImageInfo
from dbspec.spec.model import Dataset


@attrs.frozen(kw_only=True)
class KohyaFolder:
    name: str  # e.g. "10_sks dog"
    path: Path
    repeats: int  # N from the name
    tokens: str  # the class tokens after `N_` ("" for a folder named only `N`)


def kohya_folders(ctx: Context, i: int, d: Dataset) -> list[KohyaFolder] | None:
    """The sub-folders kohya would train, sorted by name; None (reported) when there are none."""
    root = ctx.resolve(d.path)
    at = ("datasets", i, "path")
    if not root.is_dir():
        ctx.report(
            "DBS301",
            "error",
            f"dataset `{d.name}`: `{root}` is not a folder of kohya `N_class tokens` sub-folders",
            at,
            help="check the path (relative to the spec file)",
        )
        return None
    found, loose = [], []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            if entry.suffix.lower() in IMAGE_EXTENSIONS:
                loose.append(entry.name)
            continue
        head, _, tokens = entry.name.partition("_")
        try:
            repeats = int(head)
        except ValueError:
            _skipped(ctx, d, at, entry.name, "the name does not start with `<repeats>_` (e.g. `10_sks dog`)")
            continue
        if repeats < 1:
            _skipped(ctx, d, at, entry.name, f"{repeats} repeats")
            continue
        found.append(KohyaFolder(name=entry.name, path=entry, repeats=repeats, tokens=tokens))
    if loose:
        _skipped(
            ctx,
            d,
            at,
            f"{len(loose)} image(s) directly in it (e.g. {loose[0]})",
            "kohya reads only the `N_class tokens` sub-folders",
        )
    if not found:
        ctx.report(
            "DBS302",
            "error",
            f"dataset `{d.name}`: `{root}` holds no `N_class tokens` sub-folder (e.g. `10_sks dog`)",
            at,
            help='put the images in sub-folders named `<repeats>_<class tokens>`, or use layout = "folder"',
        )
        return None
    return found


def _skipped(ctx: Context, d: Dataset, at: tuple, what: str, why: str) -> None:
    ctx.report(
        "DBS327",
        "warning",
        f"dataset `{d.name}` (kohya folders): `{what}` is not used: {why}",
        at,
        help="rename it `<repeats>_<class tokens>` to train it",
    )


def folder_dataset(d: Dataset, folder: KohyaFolder) -> Dataset:
    """The dataset settings one sub-folder trains with: its repeats and its class tokens as the prompt."""
    return attrs.evolve(d, repeats=folder.repeats * d.repeats, prompt=folder.tokens or d.prompt)


def in_folder(folder: KohyaFolder, info: ImageInfo) -> ImageInfo:
    """An image of a sub-folder, its `rel` relative to the dataset folder (`10_sks dog/img.png`)."""
    return info._replace(rel=f"{folder.name}/{info.rel}")


def face_crop_caption_image(info: ImageInfo, caption_extension: str) -> ImageInfo:
    """kohya's second caption candidate: for `name_x_y_w_h.png` without `name_x_y_w_h<ext>`, `name<ext>`.
    Returns an ImageInfo whose path names that caption's stem (or `info` itself)."""
    image = Path(info.path)
    parts = image.stem.split("_")
    if len(parts) < 5 or image.with_name(image.stem + caption_extension).is_file():
        return info
    stem = "_".join(parts[:-4])
    if not image.with_name(stem + caption_extension).is_file():
        return info
    return info._replace(path=str(image.with_name(stem + image.suffix)))

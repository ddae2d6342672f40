"""`dbspec masks`: write loss masks for an image folder (all white, or from each image's alpha channel)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Literal

from PIL import Image, ImageOps

from dbspec.compiler.images import scan_folder
from dbspec.diagnostics import Diagnostic
from dbspec.util.atomic import write_bytes_atomic

Source = Literal["white", "alpha"]


def write_masks(
    images: Path, out: Path, source: Source, *, overwrite: bool = False, recursive: bool = False
) -> tuple[list[Path], list[Diagnostic]]:
    """One PNG mask per image, same name stem and size (EXIF orientation applied), white = trained.

    Existing masks are kept unless `overwrite`; images without alpha are reported for source "alpha".
    """
    scan = scan_folder(
        images, recursive=recursive, min_size=1, on_bad="skip", cache_dir=None, key_path="images"
    )
    written: list[Path] = []
    problems = list(scan.diagnostics)
    for info in scan.images:
        target = out / Path(info.rel).with_suffix(".png")
        if target.exists() and not overwrite:
            continue
        if source == "alpha" and not info.has_alpha:
            problems.append(
                Diagnostic(
                    code="DBS323",
                    severity="warning",
                    path="images",
                    message=f"image `{info.rel}` has no alpha channel; no mask written",
                )
            )
            continue
        with Image.open(info.path) as im:
            im = ImageOps.exif_transpose(im)
            mask = im.convert("RGBA").getchannel("A") if source == "alpha" else Image.new("L", im.size, 255)
        buffer = io.BytesIO()
        mask.save(buffer, format="PNG")
        write_bytes_atomic(target, buffer.getvalue())
        written.append(target)
    return written, problems

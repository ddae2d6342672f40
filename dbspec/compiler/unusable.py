"""Warnings for dataset files that train differently than their owner may think: files dbspec does not read
(DBS305) and animations, of which only the first frame trains (DBS326). One diagnostic per dataset each,
naming up to LISTED files, so a folder of 10,000 .heic photos is one block, not 10,000."""

from __future__ import annotations

from pathlib import Path

from dbspec.compiler.context import Context
from dbspec.compiler.images import IMAGE_EXTENSIONS, LISTED, SIDECAR_EXTENSIONS, ScanResult

READ = ", ".join(sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS))


def sidecars(caption_extension: str) -> tuple[str, ...]:
    """Name endings never reported: the usual sidecars and this dataset's own caption files."""
    own = caption_extension.lower()
    return SIDECAR_EXTENSIONS + ((own,) if own and own not in SIDECAR_EXTENSIONS else ())


def report_unusable(ctx: Context, index: int, folder: Path, scan: ScanResult) -> None:
    where, path = folder.as_posix(), ("datasets", index, "path")
    if scan.unusable:
        n = len(scan.unusable)
        what = "1 file" if n == 1 else f"{n} files"
        ctx.report(
            "DBS305",
            "warning",
            f"{what} in `{where}` will not train: dbspec reads only {READ} images",
            path,
            notes=_listed([f"`{rel}`" for rel in scan.unusable]),
            help=f"convert them to {READ} to train on them, or move them out of the folder (caption and "
            "sidecar files: .txt, .caption, .json, .npz, .toml and caption_extension are never listed)",
        )
    animated = [img for img in scan.images if img.frames > 1]
    if animated:
        what = "1 animated image" if len(animated) == 1 else f"{len(animated)} animated images"
        ctx.report(
            "DBS326",
            "warning",
            f"{what} in `{where}`: only the first frame of each trains",
            path,
            notes=_listed([f"`{img.rel}` has {img.frames} frames" for img in animated]),
            help="export the frames you want as still images to train on them",
        )


def _listed(names: list[str]) -> tuple[str, ...]:
    more = (f"... and {len(names) - LISTED} more",) if len(names) > LISTED else ()
    return tuple(names[:LISTED]) + more

"""Face boxes for kohya's face-crop augmentation (`datasets[].face_crop`), read from file names at plan time.

kohya (`BaseDataset.load_image_with_face_info`) splits the file name without its extension at `_`; with five
parts or more the last four are the face centre and size `cx_cy_w_h` in pixels, and the face crop applies when
cx > 0. What kohya would crash on is refused here, naming the file: parts that are not integers (DBS360), a
face of size 0 (it divides by it), an image smaller than the resolution (DBS359: its scale never exceeds 1).
"""

from __future__ import annotations

import os

from dbspec import codes
from dbspec.compiler.context import Context
from dbspec.plan.model import FaceBox, FaceCropPlan, ImagePlan
from dbspec.spec.model import Dataset


def plan_face_crop(ctx: Context, i: int, d: Dataset, images: tuple[ImagePlan, ...]) -> FaceCropPlan | None:
    """The dataset's face boxes (None when face_crop is off or malformed: the spec rules report that)."""
    if len(d.face_crop) != 2:
        return None
    faces = []
    for img in images:
        box = _face_box(ctx, i, d, img)
        if box is not None:
            faces.append(box)
    return FaceCropPlan(range=(float(d.face_crop[0]), float(d.face_crop[1])), faces=tuple(faces))


def _face_box(ctx: Context, i: int, d: Dataset, img: ImagePlan) -> FaceBox | None:
    if img.sha.startswith("generated:"):  # dbspec names the class images it generates: no face box
        return None
    parts = os.path.splitext(os.path.basename(img.path))[0].split("_")
    if len(parts) < 5:
        return None
    path = ("datasets", i, "face_crop")
    try:
        cx, cy, w, h = (int(p) for p in parts[-4:])
    except ValueError:
        ctx.report(
            "DBS360",
            "error",
            f"dataset `{d.name}`: `{img.rel}` has five or more `_` parts, so kohya reads "
            f"`{'_'.join(parts[-4:])}` as the face box cx_cy_w_h, and those are not integers",
            path,
            codes.help("DBS360"),
        )
        return None
    if cx <= 0:  # kohya crops around a face only when its centre x is positive
        return None
    problem = ""
    if max(w, h) <= 0:
        problem = f"its face box `{cx}_{cy}_{w}_{h}` has no size"
    elif img.orientation != 1 and d.exif_orientation == "apply":
        problem = f"it carries EXIF orientation {img.orientation} (kohya reads the box unrotated)"
    if problem:
        message = f"dataset `{d.name}`: face box of `{img.rel}`: {problem}"
        ctx.report("DBS360", "error", message, path, codes.help("DBS360"))
        return None
    (width, height), (tw, th) = img.size, img.bucket
    if width < tw or height < th:
        ctx.report(
            "DBS359",
            "error",
            f"dataset `{d.name}`: `{img.rel}` is {width}x{height}, smaller than the {tw}x{th} resolution; "
            "kohya's face crop never scales up",
            path,
            codes.help("DBS359"),
        )
        return None
    return FaceBox(image=img.rel, cx=cx, cy=cy, w=w, h=h)

"""Datasets pass: scan folders, caption every image, pair masks, place images in buckets,
plan class images."""

from __future__ import annotations

import codecs
import functools
import hashlib
import json
from pathlib import Path

import attrs

from dbspec import codes
from dbspec.compiler import buckets as bk
from dbspec.compiler import kohya_folders as kf
from dbspec.compiler import metadata as md
from dbspec.compiler.caches import Keyer
from dbspec.compiler.captions import caption_plan
from dbspec.compiler.context import Context
from dbspec.compiler.face_crop import plan_face_crop
from dbspec.compiler.groups import bucket_settings
from dbspec.compiler.images import ImageInfo, ScanResult, scan_files, scan_folder
from dbspec.compiler.text_masks import has_t5
from dbspec.compiler.unusable import report_unusable, sidecars
from dbspec.plan.captions import fixed_caption
from dbspec.compiler.models import sampler
from dbspec.plan.model import CaptionPlan, DatasetPlan, FolderPlan, GeneratePlan, ImagePlan, ModelPlan
from dbspec.spec.model import Dataset

MANIFEST = ".dbspec-generated.json"  # written by the runtime beside generated class images


@attrs.define(kw_only=True)
class Placer:
    """How one dataset maps an image size to a bucket (kohya-compatible rules, dbspec/compiler/buckets.py)."""

    mode: str
    size: tuple[int, int]  # the dataset's (width, height): its resolution, square unless resolution_height
    step: int
    buckets: tuple[tuple[int, int], ...] = ()
    _placed: dict = attrs.field(factory=dict, eq=False, repr=False)  # size -> Placement: sizes repeat

    def place(self, size: tuple[int, int]) -> bk.Placement:
        if size not in self._placed:
            self._placed[size] = self._compute(size)
        return self._placed[size]

    def _compute(self, size: tuple[int, int]) -> bk.Placement:
        if self.mode == "square":
            return bk.place_square(size, self.size)
        if self.mode == "no_upscale":  # kohya's max area: width x height
            return bk.place_no_upscale(size, self.size[0] * self.size[1], self.step)
        return bk.place(size, self.buckets)


def make_placer(ctx: Context, index: int, d: Dataset) -> Placer | None:
    b = bucket_settings(ctx, d.group)
    size = bk.dataset_size(d.resolution, d.resolution_height)
    if b.mode == "square":
        return Placer(mode="square", size=size, step=b.step)
    if b.no_upscale:
        return Placer(mode="no_upscale", size=size, step=b.step)
    lo = b.min_size or min(size) // 2
    hi = b.max_size or max(size) * 2
    problems = bk.range_violations(size, lo, hi, b.step)
    if problems:
        where = f"group `{d.group}`'s bucket_" if d.group else "buckets."
        hint = f"adjust {where}min_size / max_size / step"
        if lo < b.step:  # the smallest bucket rounds down to 0: the step is too coarse for this resolution
            hint = (
                f"lower {where}step to {lo - lo % 8} or less (kohya's 64 suits 512 px and up), or "
                f"set {where}min_size"
            )
        ctx.report(
            "DBS330",
            "error",
            f"buckets for dataset `{d.name}`: {'; '.join(problems)}",
            ("datasets", index, "resolution"),
            help=hint,
        )
        return None
    return Placer(mode="aspect", size=size, step=b.step, buckets=bk.bucket_list(size, lo, hi, b.step))


def plan_datasets(ctx: Context, model: ModelPlan | None, keyer: Keyer) -> tuple[DatasetPlan, ...]:
    plans = []
    for i, d in enumerate(ctx.spec.datasets):
        plan = _plan_dataset(ctx, i, d, model, keyer)
        if plan is not None:
            plans.append(plan)
    return tuple(plans)


def _plan_dataset(
    ctx: Context, i: int, d: Dataset, model: ModelPlan | None, keyer: Keyer
) -> DatasetPlan | None:
    if d.metadata:
        return _plan_metadata(ctx, i, d, keyer)
    if d.layout == "kohya_folders":
        return _plan_kohya_folders(ctx, i, d, keyer)
    folder = ctx.resolve(d.path)
    placer = make_placer(ctx, i, d)
    generating = d.role == "class" and d.generate > 0
    if generating:  # flow-matching families sample class images with their own scheduler
        path = ("datasets", i, "generate_scheduler")
        d = attrs.evolve(d, generate_scheduler=sampler(ctx, model, d.generate_scheduler, path))
    if generating and not folder.exists():
        scan = ScanResult(images=(), diagnostics=(), cache_hits=0, cache_misses=0)
    else:
        scan = _scan_images(ctx, i, d, folder, recursive=d.recursive)
        for diag in scan.diagnostics:
            if not (generating and diag.code == "DBS302"):  # an empty class folder is fine when we generate
                ctx.adopt(diag, ("datasets", i, "path"))
        report_unusable(ctx, i, folder, scan)
    key = manifest_key(model, d)
    existing, made, stale = _split_generated(folder, as_trained(d, scan.images), key)
    if stale:
        ctx.report(
            "DBS324",
            "warning",
            f"{stale} class images in `{d.path}` were generated for another base model, "
            "prompt, resolution or sampling settings; they will be regenerated",
            ("datasets", i, "generate"),
        )
    generate = _generate_plan(ctx, d, folder, existing, made, key) if generating else None
    if generate is not None:  # the images it already made are planned with those still to make (below)
        planned = {f"class-{seed}.png" for seed in generate.seeds}
        existing = tuple(info for info in existing if info.rel not in planned)
    masks = _masks(ctx, i, d, existing)
    if placer is None or masks is None:
        return None
    captions = caption_plan(d)
    _report_uncaptioned(ctx, i, d, existing)
    images = [_image(ctx, i, d, info, masks, placer, keyer, captions) for info in existing]
    if generate is not None:  # planned alike before and after they exist: a resumed run is the same run
        images += _generated_images(d, generate, placer, keyer, captions)
    skipped = tuple(f"{diag.message}" for diag in scan.diagnostics if diag.severity == "warning")
    kept = tuple(img for img in images if img is not None)
    return _dataset_plan(
        ctx,
        i,
        d,
        kept,
        path=str(folder),
        skipped=skipped,
        generate=generate,
        caption_processing=captions,
    )


def _scan_images(ctx: Context, i: int, d: Dataset, folder: Path, *, recursive: bool) -> ScanResult:
    """The dataset's images in `folder` with their caption sidecars (scan cache in the cache folder)."""
    return scan_folder(
        folder,
        recursive=recursive,
        min_size=d.min_image_size,
        on_bad=d.on_bad_image,
        cache_dir=ctx.cache_dir / "scan",
        key_path=f"datasets[{i}].path",
        sidecars=sidecars(d.caption_extension),
    )


def _plan_kohya_folders(ctx: Context, i: int, d: Dataset, keyer: Keyer) -> DatasetPlan | None:
    """One dataset from kohya's `N_class tokens` sub-folders (compiler/kohya_folders.py): each sub-folder's
    images with its repeats and caption fallback, `rel` relative to the dataset folder."""
    found = kf.kohya_folders(ctx, i, d)
    placer = make_placer(ctx, i, d)
    if found is None:
        return None
    scans, skipped = [], []
    for folder in found:
        scan = _scan_images(ctx, i, d, folder.path, recursive=False)
        for diag in scan.diagnostics:
            if diag.code != "DBS302":  # an empty sub-folder is skipped, as kohya skips it
                ctx.adopt(diag, ("datasets", i, "path"))
        report_unusable(ctx, i, folder.path, scan)
        skipped += [diag.message for diag in scan.diagnostics if diag.severity == "warning"]
        scans.append((folder, as_trained(d, tuple(kf.in_folder(folder, info) for info in scan.images))))
    masks = _masks(ctx, i, attrs.evolve(d, recursive=True), tuple(x for _, infos in scans for x in infos))
    if placer is None or masks is None:
        return None
    captions = caption_plan(d)
    images = []
    for folder, infos in scans:
        sub = kf.folder_dataset(d, folder)
        bare = [info for info in infos if not _caption_source(sub, info)]
        if bare:
            ctx.report(
                "DBS320",
                "warning",
                f"dataset `{d.name}`: kohya folder `{folder.name}` names no class tokens and {len(bare)} of "
                f"its images have no caption file (e.g. `{bare[0].rel}`): they train with an empty "
                "caption, as in kohya",
                ("datasets", i, "captions"),
                help=f"name the folder `{folder.repeats}_<class tokens>`, add caption files, or set prompt",
            )
        empty = _prompt_caption(d.caption_prefix, "", d.caption_suffix)
        for info in infos:
            if info in bare:
                images.append(_image(ctx, i, sub, info, masks, placer, keyer, captions, empty))
                continue
            # kohya's second caption candidate: `name.txt` for `name_x_y_w_h.png` (the image stays the same)
            source = (
                kf.face_crop_caption_image(info, d.caption_extension) if sub.captions == "textfile" else info
            )
            caption = caption_for(ctx, i, sub, source)
            if caption is not None:
                images.append(_image(ctx, i, sub, info, masks, placer, keyer, captions, caption))
    kept = tuple(img for img in images if img is not None)
    return _dataset_plan(
        ctx,
        i,
        d,
        kept,
        skipped=tuple(skipped),
        folders=tuple(
            FolderPlan(
                name=f.name,
                repeats=f.repeats * d.repeats,
                prompt=kf.folder_dataset(d, f).prompt,
                images=len(infos),
            )
            for f, infos in scans
        ),
        caption_processing=captions,
    )


def _plan_metadata(ctx: Context, i: int, d: Dataset, keyer: Keyer) -> DatasetPlan | None:
    """One dataset from kohya's fine-tuning metadata file (compiler/metadata.py): the images it lists, in its
    order, with the captions kohya makes from its `caption` and `tags`."""
    entries = md.metadata_entries(ctx, i, d)
    placer = make_placer(ctx, i, d)
    if entries is None:
        return None
    scan = scan_files(
        [(e.rel, e.path) for e in entries],
        label=f"metadata:{ctx.resolve(d.metadata)}",
        min_size=d.min_image_size,
        on_bad=d.on_bad_image,
        cache_dir=ctx.cache_dir / "scan",
        key_path=f"datasets[{i}].metadata",
    )
    for diag in scan.diagnostics:
        ctx.adopt(diag, ("datasets", i, "metadata"))
    infos = as_trained(d, scan.images)
    # kohya's image_size is the stored size (it ignores EXIF orientation)
    stored = {
        info.path: (info.width, info.height)
        for info in as_trained(attrs.evolve(d, exif_orientation="ignore"), scan.images)
    }
    wrong = md.size_mismatches(entries, stored)
    if wrong:
        ctx.report(
            "DBS337",
            "warning",
            f"dataset `{d.name}`: {len(wrong)} `image_size` value(s) in `{d.metadata}` differ from the "
            f"image files: {'; '.join(wrong[: md.LISTED])}",
            ("datasets", i, "metadata"),
            help="dbspec buckets by the file's size, kohya by image_size: rewrite the metadata file",
        )
    masks = _masks(ctx, i, d, infos)
    if placer is None or masks is None:
        return None
    captions = caption_plan(d)
    by_path = {info.path: info for info in infos}
    images = []
    for entry in entries:
        info = by_path.get(Path(entry.path).as_posix())
        if info is None:  # a problem file, reported by the scan
            continue
        caption = _prompt_caption(d.caption_prefix, entry.caption[:MAX_CAPTION_CHARS], d.caption_suffix)
        images.append(_image(ctx, i, d, info, masks, placer, keyer, captions, caption))
    kept = tuple(img for img in images if img is not None)
    if not scan.images and not any(diag.severity == "error" for diag in scan.diagnostics):
        ctx.report(
            "DBS302",
            "error",
            f"dataset `{d.name}`: no image of `{d.metadata}` is usable",
            ("datasets", i, "metadata"),
            help="fix or replace the images listed above",
        )
    return _dataset_plan(
        ctx,
        i,
        d,
        kept,
        skipped=tuple(diag.message for diag in scan.diagnostics if diag.severity == "warning"),
        caption_processing=captions,
    )


def _report_uncaptioned(ctx: Context, i: int, d: Dataset, infos: tuple[ImageInfo, ...]) -> None:
    """missing_captions = "empty": one warning for the images without a caption file (the empty caption)."""
    if d.missing_captions != "empty" or d.captions != "textfile" or d.prompt:
        return
    bare = [info for info in infos if not _caption_source(d, info, face_crop=False)]
    if bare:
        ctx.report(
            "DBS320",
            "warning",
            f"dataset `{d.name}`: {len(bare)} image(s) have no {d.caption_extension} caption file (e.g. "
            f'`{bare[0].rel}`): they train with an empty caption (missing_captions = "empty"), as in kohya',
            ("datasets", i, "missing_captions"),
            help="add caption files, or set prompt",
        )


def _caption_source(d: Dataset, info: ImageInfo, face_crop: bool = True) -> bool:
    """Whether a kohya-folder image has a caption: a prompt (its class tokens), its file
    name, or a sidecar."""
    if d.prompt or d.captions == "filename":
        return True
    if d.captions == "prompt":
        return False
    image = Path((kf.face_crop_caption_image(info, d.caption_extension) if face_crop else info).path)
    return image.with_name(image.stem + d.caption_extension).is_file()


def caption_for(ctx: Context, i: int, d: Dataset, info: ImageInfo) -> str | None:
    if d.captions == "prompt":
        return _prompt_caption(d.caption_prefix, d.prompt, d.caption_suffix)
    if d.captions == "filename":
        core = Path(info.rel).stem.replace("_", " ").strip()
    else:
        core = _read_caption(ctx, i, d, info)
        if core is None:
            return None
    return _prompt_caption(d.caption_prefix, core, d.caption_suffix)


@functools.lru_cache(maxsize=1024)
def _prompt_caption(prefix: str, core: str, suffix: str) -> str:
    """prefix, caption and suffix joined with spaces (one string per dataset in prompt mode: cached)."""
    return " ".join(part for part in (prefix, core, suffix) if part)


def _read_caption(ctx: Context, i: int, d: Dataset, info: ImageInfo) -> str | None:
    image = Path(info.path)
    sidecar = image.with_name(image.stem + d.caption_extension)  # kohya: splitext(path)[0] + extension
    try:
        text, cut = _read_capped(sidecar)
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    except FileNotFoundError:
        if d.prompt:
            return d.prompt
        if d.missing_captions == "empty":  # said once for the dataset (_report_uncaptioned)
            return ""
        ext = d.caption_extension
        hint = (
            f'; caption_extension is "{ext}": did you mean ".{ext}"?'
            if ext and not ext.startswith(".")
            else ""
        )
        ctx.report(
            "DBS320",
            "error",
            f"no caption file `{sidecar.name}` for image `{info.rel}` in dataset `{d.name}`",
            ("datasets", i, "captions"),
            help=f"write {sidecar.name}, or set prompt to use as a fallback{hint}",
        )
        return None
    except (OSError, UnicodeDecodeError) as exc:
        ctx.report(
            "DBS320",
            "error",
            f"cannot read caption file `{sidecar}`: {exc}",
            ("datasets", i, "captions"),
            help="save caption files as UTF-8 text",
        )
        return None
    if not lines:
        used = f'the prompt "{d.prompt}"' if d.prompt else "an empty caption"
        ctx.report(
            "DBS320",
            "warning",
            f"caption file `{sidecar.name}` is empty: image `{info.rel}` trains with {used}",
            ("datasets", i, "captions"),
        )
        return d.prompt
    # kohya reads the first line, or every non-empty line when wildcards pick one per step
    caption = "\n".join(lines) if d.enable_wildcard else lines[0]
    if cut or len(caption) > MAX_CAPTION_CHARS:
        what = f"more than {MAX_CAPTION_BYTES} bytes" if cut else f"a {len(caption)}-character first line"
        ctx.report(
            "DBS325",
            "warning",
            f"caption file `{sidecar.name}` of image `{info.rel}` holds {what}: only "
            f"its first {MAX_CAPTION_CHARS} characters are kept",
            ("datasets", i, "captions"),
            help="text encoders read at most 77 tokens (225 with long prompts), a few hundred characters",
        )
    return caption[:MAX_CAPTION_CHARS]


MAX_CAPTION_CHARS = 10_000  # far past what 225 tokens can cover; keeps plans and summaries small
MAX_CAPTION_BYTES = 1 << 20


def _read_capped(path: Path) -> tuple[str, bool]:
    """The file's text up to MAX_CAPTION_BYTES (a multi-byte character cut at the end is dropped), and whether
    it was cut. Raises FileNotFoundError, OSError or UnicodeDecodeError as read_text would."""
    with open(path, "rb") as handle:
        raw = handle.read(MAX_CAPTION_BYTES + 1)
    cut = len(raw) > MAX_CAPTION_BYTES
    return codecs.getincrementaldecoder("utf-8")().decode(raw[:MAX_CAPTION_BYTES], final=not cut), cut


def _image(
    ctx: Context,
    i: int,
    d: Dataset,
    info: ImageInfo,
    masks: dict,
    placer: Placer,
    keyer: Keyer,
    captions: CaptionPlan,
    caption: str | None = None,
) -> ImagePlan | None:
    """The image's plan; `caption` when the caller settled it (None: the dataset's rule, caption_for)."""
    caption = caption if caption is not None else caption_for(ctx, i, d, info)
    if caption is None:
        return None
    try:
        p = placer.place((info.width, info.height))
    except ValueError as exc:
        ctx.report(
            "DBS331",
            "error",
            f"image `{info.rel}` in dataset `{d.name}` fits no bucket: {exc}",
            ("datasets", i, "path"),
            help="use a larger image or lower buckets.step",
        )
        return None
    if d.resize == "none" and placer.mode == "square":
        p = _uncropped(ctx, i, d, info, p)
        if p is None:
            return None
    mask_path, mask_sha = masks.get(info.rel, ("", ""))
    text = fixed_caption(caption, captions)
    # a tagged image trained as stored has other pixels than the upright one: its latents get their own keys
    stored = d.exif_orientation == "ignore" and info.orientation != 1
    key_sha = f"{info.sha}:stored" if stored else info.sha
    latent_keys, text_key = keyer.keys(d, key_sha, p.bucket, p.resized, p.crop, text)
    return ImagePlan(
        path=info.path,
        rel=info.rel,
        sha=info.sha,
        size=(info.width, info.height),
        orientation=info.orientation,
        caption=caption,
        repeats=d.repeats,
        bucket=p.bucket,
        resized=p.resized,
        crop=p.crop,
        mask=mask_path,
        mask_sha=mask_sha,
        latent_keys=latent_keys,
        text_key=text_key,
    )


def as_trained(d: Dataset, infos: tuple[ImageInfo, ...]) -> tuple[ImageInfo, ...]:
    """The images with the sizes they train at: the scan's sizes are upright (EXIF orientation applied);
    `exif_orientation = "ignore"` trains the stored pixels, whose width and height a 90-degree tag swaps."""
    if d.exif_orientation == "apply":
        return infos
    return tuple(
        info._replace(width=info.height, height=info.width) if info.orientation in (5, 6, 7, 8) else info
        for info in infos
    )


def _uncropped(ctx: Context, i: int, d: Dataset, info: ImageInfo, p: bk.Placement) -> bk.Placement | None:
    """resize = "none" (kohya with buckets and cache_latents off): the image is not resized and the
    resolution is cut from it (centre offset here; crop = "random" draws its own). Smaller: DBS414."""
    (w, h), (bw, bh) = (info.width, info.height), p.bucket
    if w < bw or h < bh:
        ctx.report(
            "DBS414",
            "error",
            f"image `{info.path}` in dataset `{d.name}` is {w}x{h}, smaller than the {bw}x{bh} resolution "
            'it is cropped to without resizing (resize = "none"; kohya asserts the same)',
            ("datasets", i, "resize"),
            help=codes.help("DBS414"),
        )
        return None
    return bk.Placement(bucket=p.bucket, resized=(w, h), crop=((w - bw) // 2, (h - bh) // 2), upscaled=False)


def _masks(ctx: Context, i: int, d: Dataset, images: tuple[ImageInfo, ...]) -> dict | None:
    """rel -> (mask path, mask sha); every image needs a mask of its own size. None on errors."""
    if d.mask_from_alpha:
        missing = [img.rel for img in images if not img.has_alpha]
        for rel in missing:
            ctx.report(
                "DBS323",
                "error",
                f"image `{rel}` has no alpha channel to use as a mask",
                ("datasets", i, "mask_from_alpha"),
                help="save it as RGBA PNG, or use a masks folder",
            )
        return None if missing else {img.rel: ("alpha", img.sha) for img in images}
    if not d.masks:
        return {}
    scan = scan_folder(
        ctx.resolve(d.masks),
        recursive=d.recursive,
        min_size=1,
        on_bad="error",
        cache_dir=ctx.cache_dir / "scan",
        key_path=f"datasets[{i}].masks",
    )
    for diag in scan.diagnostics:
        ctx.adopt(diag, ("datasets", i, "masks"))
    if any(d.code in ("DBS301", "DBS302") for d in scan.diagnostics):
        return None  # no mask folder: one error says it, not one per image
    by_stem = {str(Path(m.rel).with_suffix("")): m for m in as_trained(d, scan.images)}
    found, ok = {}, not scan.diagnostics
    for img in images:
        mask = by_stem.get(str(Path(img.rel).with_suffix("")))
        if mask is None:
            ok = False
            ctx.report(
                "DBS321",
                "error",
                f"image `{img.rel}` has no mask in `{d.masks}` (looked for `{Path(img.rel).stem}.*`)",
                ("datasets", i, "masks"),
                help="add the mask or remove the image",
            )
        elif (mask.width, mask.height) != (img.width, img.height):
            ok = False
            ctx.report(
                "DBS322",
                "error",
                f"mask `{mask.rel}` is {mask.width}x{mask.height} but image `{img.rel}` is "
                f"{img.width}x{img.height}",
                ("datasets", i, "masks"),
                help="resize the mask to the image size",
            )
        else:
            found[img.rel] = (mask.path, mask.sha)
    return found if ok else None


# Sampling settings that shaped class images before they were options: left out of the key while they hold,
# so folders generated by earlier versions keep their key and are not regenerated.
_CLASSIC_SAMPLING = ("ddpm", 50, 7.5)


def manifest_key(model: ModelPlan | None, d: Dataset) -> str:
    """Identity of the class images a dataset generates; generate_batch is left out (it changes no image)."""
    identity = model.identity if model else "unknown"
    parts: list = [identity, d.prompt, d.resolution, "class-v1"]
    if d.resolution_height and d.resolution_height != d.resolution:  # square keys stay as they were
        parts.append(d.resolution_height)
    sampling = (d.generate_scheduler, d.generate_steps, float(d.generate_guidance))
    if sampling != _CLASSIC_SAMPLING:
        parts.append(list(sampling))
    if model is not None and (model.max_tokens > 75 or has_t5(model.family)):
        # the prompt is encoded as training encodes it (runtime/setup.py long_prompt_inputs)
        encoding = (model.max_tokens, model.t5_max_length, model.t5_attention_mask, model.clip_attention_mask)
        parts.append(["text", *encoding])
    return hashlib.blake2b(json.dumps(parts).encode(), digest_size=16).hexdigest()


def _split_generated(
    folder: Path, images: tuple[ImageInfo, ...], key: str
) -> tuple[tuple[ImageInfo, ...], frozenset[str], int]:
    """Leave out images generated for another base model, prompt, resolution or sampling (they get
    regenerated); also returns the names the manifest lists as made for `key`."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, made_for = frozenset(str(name) for name in manifest["files"]), manifest["key"]
    except (OSError, ValueError, KeyError, TypeError):
        return images, frozenset(), 0
    if made_for == key:
        return images, files, 0
    kept = tuple(img for img in images if img.rel not in files)
    return kept, frozenset(), len(images) - len(kept)


def _generated_seeds(ctx: Context, d: Dataset, existing: tuple[ImageInfo, ...], made: frozenset[str]):
    """The seeds of every class image the dataset generates, made already or not: they follow the images
    it did not generate, so they do not depend on how many were made before an interruption."""
    own = sum(1 for info in existing if info.rel not in made)
    return tuple(ctx.spec.schedule.seed * 1_000_003 + own + k for k in range(max(0, d.generate - own)))


def _generate_plan(
    ctx: Context,
    d: Dataset,
    folder: Path,
    existing: tuple[ImageInfo, ...],
    made: frozenset[str],
    key: str,
) -> GeneratePlan | None:
    seeds = _generated_seeds(ctx, d, existing, made)
    if not seeds:
        return None
    there = {info.rel for info in existing if info.rel in made}
    return GeneratePlan(
        folder=str(folder),
        count=sum(1 for seed in seeds if f"class-{seed}.png" not in there),
        prompt=d.prompt,
        resolution=bk.dataset_size(d.resolution, d.resolution_height),
        seeds=seeds,
        manifest_key=key,
        scheduler=d.generate_scheduler,
        steps=d.generate_steps,
        guidance=float(d.generate_guidance),
        batch_size=d.generate_batch,
    )


def _generated_images(
    d: Dataset, gen: GeneratePlan, placer: Placer, keyer: Keyer, captions: CaptionPlan
) -> list[ImagePlan]:
    placed = placer.place(gen.resolution)
    caption = " ".join(p for p in (d.caption_prefix, d.prompt, d.caption_suffix) if p)
    text = fixed_caption(caption, captions)
    images = []
    for seed in gen.seeds:
        sha = (
            f"generated:{gen.manifest_key}:{seed}"  # made from (model, prompt, resolution, seed): a stable id
        )
        latent_keys, text_key = keyer.keys(d, sha, placed.bucket, placed.resized, placed.crop, text)
        images.append(
            ImagePlan(
                path=str(Path(gen.folder) / f"class-{seed}.png"),
                rel=f"class-{seed}.png",
                sha=sha,
                size=gen.resolution,
                orientation=1,
                caption=caption,
                repeats=d.repeats,
                bucket=placed.bucket,
                resized=placed.resized,
                crop=placed.crop,
                latent_keys=latent_keys,
                text_key=text_key,
            )
        )
    return images


def _dataset_plan(ctx: Context, i: int, d: Dataset, kept: tuple, **source) -> DatasetPlan:
    """The plan of dataset `i` with its usable images `kept`; `source`: what its kind of source adds (the
    folders, the generated images, the captions, the resolved path)."""
    return DatasetPlan(
        name=d.name,
        role=d.role,
        resolution=d.resolution,
        resolution_height=d.resolution_height,
        crop=d.crop,
        flip=d.flip,
        mask_source="folder" if d.masks else "alpha" if d.mask_from_alpha else "none",
        color_aug=d.color_aug,
        preserve_output=d.preserve_output,
        exif_orientation=d.exif_orientation,
        mask_channel=d.mask_channel if d.masks else "luminance",
        resize=d.resize,
        face_crop=plan_face_crop(ctx, i, d, kept),
        images=kept,
        group=d.group,
        **{"path": str(ctx.resolve(d.path)), **source},
    )

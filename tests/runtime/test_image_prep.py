"""kohya's image preparation as options: `exif_orientation = "ignore"` (the stored pixels, as kohya's
load_image decodes them) against "apply" (upright, as diffusers), and `resize = "none"` (the resolution cut
from the unresized image, kohya with buckets and cache_latents off). Expected pixels are cut from PIL's own
decode of the file with numpy, independently of dbspec's loader."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from dbspec.frontend import plan_spec
from dbspec.plan.summary import image_prep_summary
from dbspec.runtime.data import load_example
from dbspec.runtime.execute import execute
from tests.runtime.runspec import CPU, compile_spec, write_spec

SQUARE = '[buckets]\nmode = "square"\nstep = 16'
ORIENTATION = 0x0112


def _jpeg(path: Path, size: tuple[int, int], orientation: int, seed: int) -> None:
    """Noise (every pixel distinct enough to tell any turn or shift), saved with an EXIF orientation tag."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    Image.fromarray(pixels).save(path, exif=exif, quality=95)


def _spec(tmp: Path, dataset_extra: str = "", *, square: bool = True, **kw) -> Path:
    path = write_spec(tmp, dataset_extra=dataset_extra, **kw)
    folder = tmp / "data" / "toy"
    _jpeg(folder / "turned.jpg", (128, 72), 6, seed=1)  # shown turned by 90 degrees: upright 72 x 128
    _jpeg(folder / "upside.jpg", (96, 80), 3, seed=2)  # shown turned by 180 degrees: the same size
    if square:
        path.write_text(path.read_text().replace("[buckets]\nstep = 16", SQUARE))
    return path


def _decoded(path: str, upright: bool) -> np.ndarray:
    """kohya's load_image (PIL open + convert, no transpose), or the upright image (PIL's exif_transpose)."""
    with Image.open(path) as image:
        image.load()
        return np.array((ImageOps.exif_transpose(image) if upright else image).convert("RGB"))


def _uint8(pixels) -> np.ndarray:
    return ((pixels.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()


def _image(plan, rel: str):
    return next(img for img in plan.datasets[0].images if img.rel == rel)


@pytest.mark.parametrize("mode", ["ignore", "apply"])
def test_the_pixels_trained_are_the_stored_or_the_upright_ones(tmp_path, mode):
    plan = compile_spec(_spec(tmp_path, f'exif_orientation = "{mode}"\nresize = "none"'))
    d = plan.datasets[0]
    assert d.exif_orientation == mode and d.resize == "none"
    upright = mode == "apply"
    for rel in ("turned.jpg", "upside.jpg"):
        img = _image(plan, rel)
        source = _decoded(img.path, upright)
        height, width = source.shape[:2]
        assert img.size == (width, height) and img.resized == (width, height)  # no resize
        left, top = (width - 64) // 2, (height - 64) // 2
        pixels, _ = load_example(img, upright=upright)
        assert np.array_equal(_uint8(pixels), source[top : top + 64, left : left + 64])
    assert _image(plan, "turned.jpg").size == ((128, 72) if mode == "ignore" else (72, 128))


def test_aspect_buckets_follow_the_stored_or_upright_size(tmp_path):
    spec = _spec(tmp_path, square=False)
    folder = tmp_path / "data" / "toy"
    Image.new("RGB", (128, 72), "gray").save(folder / "plain-stored.png")  # untagged twins of both sizes
    Image.new("RGB", (72, 128), "gray").save(folder / "plain-upright.png")
    ignored = compile_spec(spec, ['datasets.0.exif_orientation="ignore"'])
    applied = compile_spec(spec)
    stored_bucket = _image(ignored, "plain-stored.png").bucket
    upright_bucket = _image(ignored, "plain-upright.png").bucket
    assert stored_bucket != upright_bucket
    assert _image(ignored, "turned.jpg").bucket == stored_bucket  # kohya's bucket
    assert _image(applied, "turned.jpg").bucket == upright_bucket
    assert any("EXIF orientation" in line for line in image_prep_summary(ignored))
    assert image_prep_summary(applied) == []


def test_latent_caches_are_not_shared_between_stored_and_upright_pixels(tmp_path):
    spec = _spec(tmp_path)
    ignored = compile_spec(spec, ['datasets.0.exif_orientation="ignore"'])
    applied = compile_spec(spec)
    for rel in ("turned.jpg", "upside.jpg"):  # upside: same size, bucket and crop, other pixels
        a, b = _image(ignored, rel), _image(applied, rel)
        assert a.latent_keys and b.latent_keys and not set(a.latent_keys) & set(b.latent_keys)
    assert (_image(ignored, "upside.jpg").bucket, _image(ignored, "upside.jpg").crop) == (
        _image(applied, "upside.jpg").bucket,
        _image(applied, "upside.jpg").crop,
    )
    # untagged images have the same pixels either way: their entries are shared
    assert _image(ignored, "toy-00.png").latent_keys == _image(applied, "toy-00.png").latent_keys


def test_a_mask_file_follows_the_datasets_orientation(tmp_path):
    spec = _spec(tmp_path, 'masks = "data/masks"\nresize = "none"')
    masks = tmp_path / "data" / "masks"
    masks.mkdir()
    for img in sorted((tmp_path / "data" / "toy").iterdir()):
        with Image.open(img) as image:
            stored, tag = image.size, image.getexif().get(ORIENTATION, 1)
        mask = np.random.default_rng(len(img.name)).integers(0, 256, (stored[1], stored[0]), dtype=np.uint8)
        exif = Image.Exif()
        exif[ORIENTATION] = tag
        Image.fromarray(mask).save(masks / f"{img.stem}.png", exif=exif)
    for mode in ("ignore", "apply"):
        plan = compile_spec(spec, [f'datasets.0.exif_orientation="{mode}"'])
        img = _image(plan, "turned.jpg")
        expected = _decoded(img.mask, mode == "apply")[..., 0]
        width, height = img.size
        left, top = (width - 64) // 2, (height - 64) // 2
        _, mask = load_example(img, upright=mode == "apply")
        got = (mask[0] * 255).round().byte().numpy()
        assert np.array_equal(got, expected[top : top + 64, left : left + 64])


def test_resize_none_cuts_kohyas_random_window_from_the_unresized_image(tmp_path):
    plan = compile_spec(_spec(tmp_path, 'resize = "none"\ncrop = "random"'))
    d = plan.datasets[0]
    assert not any(img.latent_keys for img in d.images)  # random windows: no latent cache
    assert any("resize: dataset `toy`: none, a random window" in line for line in image_prep_summary(plan))
    img = _image(plan, "toy-01.png")  # 160 x 120
    assert img.resized == img.size == (160, 120) and img.bucket == (64, 64)
    source = _decoded(img.path, True)
    seen = set()
    for seed in range(40):
        pixels, _ = load_example(img, crop_mode="random", rng=random.Random(seed))
        got = _uint8(pixels)
        # kohya: randint(0, h - 64) rows and randint(0, w - 64) columns of the unresized image. The windows
        # whose pixels agree with the cut at a few points (a window equal to it must), then each compared
        # whole: the corner alone matched thousands of this smooth image's windows (10 s of the test)
        rows, cols = 120 - 64 + 1, 160 - 64 + 1
        candidates = np.ones((rows, cols), dtype=bool)
        for r, c in ((0, 0), (63, 63), (0, 63), (63, 0), (31, 17), (5, 50), (50, 5)):
            candidates &= np.all(source[r : r + rows, c : c + cols] == got[r, c], axis=-1)
        hits = [
            (int(left), int(top))
            for top, left in zip(*np.nonzero(candidates))
            if np.array_equal(got, source[top : top + 64, left : left + 64])
        ]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 30  # the window moves over the whole image


def test_resize_none_with_centre_crops_caches_its_own_latents(tmp_path):
    spec = _spec(tmp_path)
    cut = compile_spec(spec, ['datasets.0.resize="none"'])
    cover = compile_spec(spec)
    a, b = _image(cut, "toy-01.png"), _image(cover, "toy-01.png")
    assert a.resized == (160, 120) and b.resized != (160, 120)
    assert a.latent_keys and not set(a.latent_keys) & set(b.latent_keys)
    same_a, same_b = _image(cut, "toy-00.png"), _image(cover, "toy-00.png")  # 128 x 128: resized in cover
    assert same_a.latent_keys != same_b.latent_keys


def test_an_image_smaller_than_the_resolution_is_refused_naming_it(tmp_path):
    path = _spec(tmp_path, 'resize = "none"\nmin_image_size = 32')
    Image.new("RGB", (80, 48), "gray").save(tmp_path / "data" / "toy" / "short.png")
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None
    found = [d for d in planned.diagnostics if d.code == "DBS414"]
    assert len(found) == 1 and "short.png" in found[0].message and "80x48" in found[0].message
    assert found[0].path == "datasets[0].resize"


def test_resize_none_needs_square_buckets(tmp_path):
    path = _spec(tmp_path, 'resize = "none"', square=False)
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None and "DBS245" in {d.code for d in planned.diagnostics}


@pytest.fixture(scope="module")
def default_losses(tmp_path_factory):
    """The losses of test_a_tiny_run_resumes_exactly's run with its option (resize or exif_orientation) at
    the default, by the dataset lines left: the `resize = "none"` case's and the `exif_orientation = "ignore"`
    random-crop case's are the same run (random crops, flipped, covered, upright), made once for the module
    (it was made once by each)."""
    made: dict[str, list] = {}

    def losses(dataset_extra: str) -> list:
        if dataset_extra not in made:
            spec = _spec(tmp_path_factory.mktemp("default"), dataset_extra, steps=4)
            made[dataset_extra] = execute(compile_spec(spec)).losses
        return made[dataset_extra]

    return losses


@pytest.mark.parametrize(
    ("extra", "resume"),
    [
        # a random window of the unresized image each step (no latent cache): the crops' generator resumes
        ('resize = "none"\ncrop = "random"', True),
        # the stored pixels, latents cached (the cache encodes them) and decoded each step (random crops):
        # the option changes what trains; their resumes restore what the two runs above do (the cached
        # latents' resume: test_run.py's test_interrupted_then_resumed_run_is_bit_identical)
        ('exif_orientation = "ignore"', False),
        ('exif_orientation = "ignore"\ncrop = "random"', False),
    ],
)
def test_a_tiny_run_resumes_exactly(tmp_path, extra, resume, default_losses):
    spec = _spec(tmp_path, f"{extra}\nflip = true", steps=4)
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    if resume:
        plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
        first = execute(plan, stop_after=2)
        second = execute(plan, resume=True)
        assert first.losses + second.losses == whole.losses
    # the option changes what trains: the same run with the option at its default (resize = "cover",
    # exif_orientation = "apply") trains otherwise
    rest = "\n".join(
        line for line in extra.splitlines() if not line.startswith(("resize", "exif_orientation"))
    )
    assert default_losses(f"{rest}\nflip = true") != whole.losses


def test_a_face_box_on_a_tagged_image_is_read_in_the_stored_pixels(tmp_path):
    """kohya reads `name_cx_cy_w_h` in the stored pixel grid: with EXIF ignored the box is where kohya cuts;
    with EXIF applied the image would turn under the box (DBS360)."""
    path = _spec(tmp_path, "face_crop = [1.5, 3.0]")
    _jpeg(tmp_path / "data" / "toy" / "portrait_90_40_40_30.jpg", (160, 96), 6, seed=3)
    plan = compile_spec(path, ['datasets.0.exif_orientation="ignore"'])
    boxes = {(b.image, b.cx, b.cy, b.w, b.h) for b in plan.datasets[0].face_crop.faces}
    assert ("portrait_90_40_40_30.jpg", 90, 40, 40, 30) in boxes
    assert _image(plan, "portrait_90_40_40_30.jpg").size == (160, 96)
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None
    found = [d for d in planned.diagnostics if d.code == "DBS360"]
    assert found and "portrait_90_40_40_30.jpg" in found[0].message and "EXIF" in found[0].message

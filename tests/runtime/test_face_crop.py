"""kohya's face-crop augmentation (`datasets[].face_crop`): the window against kohya's own `crop_target`
(recorded by running it), the plan's face boxes and refusals, the latent cache off, and a tiny run that
resumes bit-exactly."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dbspec.plan.face_crop import face_window
from dbspec.plan.model import FaceBox
from dbspec.runtime.data import face_crop_of, load_example
from dbspec.runtime.execute import execute
from dbspec.frontend import plan_spec
from tests.runtime.runspec import CPU, compile_spec, write_spec

# Recorded by running kohya's BaseDataset.crop_target (sd-scripts HEAD, extracted unchanged into a scratch
# folder) on index images with the global `random` seeded: the resize it asked for, the top-left of the
# window it cut, and the next random() after it (so the number of draws is equal too). The last 24 have a
# reversed range, as a dataset config's face_crop_aug_range may (DBS616), recorded the same way.
KOHYA = json.loads((Path(__file__).parent / "data" / "kohya_face_crop.json").read_text())


@pytest.mark.parametrize("case", KOHYA, ids=lambda c: f"{c['size']}-{c['box']}-{c['range']}-{c['seed']}")
def test_face_window_equals_kohya_crop_target(case):
    rng = random.Random(case["seed"])
    cx, cy, w, h = case["box"]
    resized, offset = face_window(
        tuple(case["size"]),
        FaceBox(image="x.png", cx=cx, cy=cy, w=w, h=h),
        tuple(case["target"]),
        tuple(case["range"]),
        random_crop=case["random_crop"],
        rng=rng,
    )
    assert list(resized) == case["resized"] and list(offset) == case["offset"]
    assert rng.random() == case["next_draw"]  # the same draws, in the same number


def test_the_recorded_cases_cover_every_branch():
    assert {c["random_crop"] for c in KOHYA} == {True, False}
    assert any(c["size"] == c["target"] for c in KOHYA)
    assert any(c["range"][0] == c["range"][1] for c in KOHYA)
    assert any(
        c["range"][0] > c["range"][1] and not c["random_crop"] and c["resized"] != c["size"] for c in KOHYA
    )
    assert any(c["resized"] != c["size"] for c in KOHYA)


FACE_SPEC = "face_crop = [1.5, 3.0]\n"
SQUARE = '[buckets]\nmode = "square"\nstep = 16'


def _face_folder(tmp: Path) -> None:
    """The toy images plus two with face boxes in their names (one larger than the resolution)."""
    write_spec(tmp)
    folder = tmp / "data" / "toy"
    src = sorted(folder.iterdir())[0]
    with Image.open(src) as img:
        img.convert("RGB").resize((160, 120)).save(folder / "portrait_90_50_40_44.png")
        img.convert("RGB").resize((64, 64)).save(folder / "exact_20_20_10_10.png")


def _spec(tmp: Path, dataset_extra: str = FACE_SPEC, **kw) -> Path:
    _face_folder(tmp)
    path = write_spec(tmp, dataset_extra=dataset_extra, **kw)
    text = path.read_text().replace("[buckets]\nstep = 16", SQUARE)
    path.write_text(text)
    return path


def test_the_plan_reads_face_boxes_and_drops_the_latent_cache(tmp_path):
    plan = compile_spec(_spec(tmp_path))
    d = plan.datasets[0]
    assert d.face_crop is not None and d.face_crop.range == (1.5, 3.0)
    assert {(b.image, b.cx, b.cy, b.w, b.h) for b in d.face_crop.faces} == {
        ("portrait_90_50_40_44.png", 90, 50, 40, 44),
        ("exact_20_20_10_10.png", 20, 20, 10, 10),
    }
    assert plan.cache.latents and all(not img.latent_keys for img in d.images)
    assert any("face crop" in n for n in plan.cache.notes)
    plain = compile_spec(_spec(tmp_path, dataset_extra=""))
    assert plain.datasets[0].face_crop is None and all(img.latent_keys for img in plain.datasets[0].images)


def test_load_example_cuts_the_face_window(tmp_path):
    plan = compile_spec(_spec(tmp_path))
    d = plan.datasets[0]
    img = next(i for i in d.images if i.rel.startswith("portrait"))
    face = face_crop_of(d, img)
    assert face is not None
    pixels, _ = load_example(img, crop_mode="center", rng=random.Random(7), face=face)
    assert tuple(pixels.shape) == (3, 64, 64)
    resized, (left, top) = face_window(
        img.size, face.box, (64, 64), (1.5, 3.0), random_crop=False, rng=random.Random(7)
    )
    with Image.open(img.path) as source:
        window = (
            source.convert("RGB")
            .resize(resized, Image.Resampling.LANCZOS)
            .crop((left, top, left + 64, top + 64))
        )
    got = ((pixels.permute(1, 2, 0) + 1) * 127.5).round().byte().numpy()
    assert np.array_equal(got, np.array(window))


@pytest.mark.parametrize(
    ("extra", "buckets", "code"),
    [
        ("face_crop = [1.5, -3.0]", SQUARE, "DBS233"),
        ("face_crop = [0.0, 1.5]", SQUARE, "DBS233"),
        ("face_crop = [2.0]", SQUARE, "DBS233"),
        (FACE_SPEC, "[buckets]\nstep = 16", "DBS234"),
    ],
)
def test_bad_face_crop_settings_are_refused(tmp_path, extra, buckets, code):
    path = _spec(tmp_path, dataset_extra=extra)
    path.write_text(path.read_text().replace(SQUARE, buckets))
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None and code in {d.code for d in planned.diagnostics}


def test_a_reversed_range_plans_with_its_warning(tmp_path):
    """[3.0, 1.5]: kohya's dataset config runs it (the one scale of [1.5, 1.5], its shift kept; the recorded
    reversed cases above), so the spec plans it and says what it does (DBS616)."""
    path = _spec(tmp_path, dataset_extra="face_crop = [3.0, 1.5]\n")
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is not None and planned.plan.datasets[0].face_crop.range == (3.0, 1.5)
    [warning] = [d for d in planned.diagnostics if d.code == "DBS616"]
    assert warning.severity == "warning" and "[1.5, 1.5]" in warning.message


@pytest.mark.parametrize(
    ("name", "size", "code"),
    [
        ("small_5_5_4_4.png", (48, 80), "DBS359"),
        ("bad_a_5_4_4.png", (80, 80), "DBS360"),
        ("nosize_5_5_0_0.png", (80, 80), "DBS360"),
    ],
)
def test_face_boxes_kohya_would_crash_on_are_refused(tmp_path, name, size, code):
    path = _spec(tmp_path, dataset_extra=FACE_SPEC + "min_image_size = 32\n")
    Image.new("RGB", size, "gray").save(tmp_path / "data" / "toy" / name)
    planned = plan_spec(path, CPU, str(path), [])
    assert planned.plan is None
    found = [d for d in planned.diagnostics if d.code == code]
    assert found and name in found[0].message


def test_names_kohya_reads_without_a_face_are_plain_images(tmp_path):
    path = _spec(tmp_path)
    for name in ("a_b_c_d.png", "left_0_5_4_4.png"):  # four parts; a centre x of 0 means no face in kohya
        Image.new("RGB", (80, 80), "gray").save(tmp_path / "data" / "toy" / name)
    faces = {b.image for b in compile_spec(path).datasets[0].face_crop.faces}
    assert "a_b_c_d.png" not in faces and "left_0_5_4_4.png" not in faces


@pytest.mark.parametrize("crop", ["center", "random"])
def test_a_tiny_run_with_face_crop_resumes_exactly(tmp_path, crop):
    spec = _spec(tmp_path, dataset_extra=f'{FACE_SPEC}crop = "{crop}"\nflip = true', steps=4)
    whole = execute(compile_spec(spec, ["output.dir=whole", "checkpoints.every=2"]))
    plan = compile_spec(spec, ["output.dir=parts", "checkpoints.every=2"])
    first = execute(plan, stop_after=2)
    second = execute(plan, resume=True)
    assert first.losses + second.losses == whole.losses
    plain = execute(compile_spec(spec, ["output.dir=plain", "datasets.0.face_crop=[]"]))
    assert plain.losses != whole.losses

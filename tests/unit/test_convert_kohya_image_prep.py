"""How kohya prepares images, converted exactly (issue 12): kohya's load_image decodes the stored pixels (PIL
open + convert, no EXIF transpose), so every converted dataset ignores EXIF orientation; with buckets and
latent caching off its __getitem__ cuts the resolution from the unresized image (a random window with
random_crop, and it asserts the image is at least the resolution), so those datasets crop without resizing.
Expected buckets come from untagged twins of the same sizes in the same plan (whose buckets the bucket tests
prove equal to kohya's), not from the converter."""

from __future__ import annotations

import tomllib

from PIL import Image

from convert_kit import (
    GPU,
    SD15,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    images,
    kohya,
    messages,
    out_path,
    plan_at,
    plan_of,
    write,
)
from dbspec.frontend import plan_spec

LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"


def _datasets(tmp_path) -> list[dict]:
    return tomllib.loads(out_path(tmp_path).read_text())["datasets"]


def test_every_converted_dataset_trains_the_stored_pixels_in_kohyas_bucket(tmp_path):
    folder = tmp_path / "img" / "10_ohwx dog"
    images(folder, 2, (640, 448), prefix="turned", orientation=6)  # shown turned: upright 448 x 640
    images(folder, 1, (640, 448), prefix="stored")  # untagged twins of both sizes
    images(folder, 1, (448, 640), prefix="upright")
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --train_data_dir img --resolution 512 --enable_bucket --output_dir out "
        "--max_train_epochs 2",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert "EXIF" not in messages(outcome, "DBS404")  # no longer a difference
    assert [d.get("exif_orientation") for d in _datasets(tmp_path)] == ["ignore"]
    plan = plan_of(outcome, tmp_path)
    by_name = {img.rel: img for img in plan.datasets[0].images}
    stored, upright = by_name["stored000.png"].bucket, by_name["upright000.png"].bucket
    assert stored != upright
    assert {by_name[f"turned00{k}.png"].bucket for k in range(2)} == {stored}  # kohya's bucket
    assert by_name["turned000.png"].size == (640, 448)
    # the epoch length was proved equal to kohya's (no "differs" on the epoch count)
    assert plan.schedule.total_steps == 2 * plan.schedule.steps_per_epoch
    applied = plan_at(out_path(tmp_path), ['datasets.0.exif_orientation="apply"'])
    assert {img.bucket for img in applied.datasets[0].images if img.rel.startswith("turned")} == {upright}


def test_a_dataset_config_with_several_datasets_ignores_exif_in_each(tmp_path):
    images(tmp_path / "a", 2, (512, 512), orientation=3)
    images(tmp_path / "b", 2, (512, 512))
    write(
        tmp_path / "d.toml",
        "[general]\nenable_bucket = true\n[[datasets]]\nresolution = 512\nbatch_size = 2\n"
        '[[datasets.subsets]]\nimage_dir = "a"\nclass_tokens = "ohwx dog"\n'
        '[[datasets]]\nresolution = 512\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = "b"\n'
        'class_tokens = "ohwx cat"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --output_dir out")
    assert outcome.exit_code == 0, errors(outcome)
    assert [d["exif_orientation"] for d in _datasets(tmp_path)] == ["ignore", "ignore"]
    assert all("resize" not in d for d in _datasets(tmp_path))  # buckets on: kohya resizes


RANDOM_CROP_TOML = """\
[general]
enable_bucket = false
shuffle_caption = false
caption_extension = ".txt"

[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = "photos"
  class_tokens = "ohwx dog"
  num_repeats = 4
  random_crop = true
  flip_aug = true
"""


def test_buckets_off_without_cached_latents_crop_the_unresized_image(tmp_path):
    images(tmp_path / "photos", 3, (700, 560))
    images(tmp_path / "photos", 1, (512, 512), prefix="exact")
    write(tmp_path / "d.toml", RANDOM_CROP_TOML)
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --output_dir out")
    assert outcome.exit_code == 0, errors(outcome)
    assert "unresized" not in messages(outcome, "DBS404")  # no longer a difference
    (d,) = _datasets(tmp_path)
    assert (d["resize"], d["crop"]) == ("none", "random")
    plan = plan_of(outcome, tmp_path)
    ds = plan.datasets[0]
    assert ds.resize == "none" and ds.crop == "random"
    assert all(img.bucket == (512, 512) and img.resized == img.size for img in ds.images)  # never resized
    assert {img.size for img in ds.images} == {(700, 560), (512, 512)}


def test_buckets_off_with_exact_images_and_no_random_crop(tmp_path):
    images(tmp_path / "img" / "5_ohwx dog", 2, (512, 512))
    outcome = kohya(tmp_path, command=f"{LORA} --train_data_dir img --resolution 512 --output_dir out")
    assert outcome.exit_code == 0, errors(outcome)
    assert _datasets(tmp_path)[0]["resize"] == "none"
    ds = plan_of(outcome, tmp_path).datasets[0]
    assert ds.crop == "center" and all(img.crop == (0, 0) and img.latent_keys for img in ds.images)


def test_cached_latents_or_buckets_keep_the_cover_resize(tmp_path):
    images(tmp_path / "img" / "5_ohwx dog", 2, (700, 560))
    for flags in ("--cache_latents", "--cache_latents --cache_latents_to_disk", "--enable_bucket"):
        outcome = kohya(
            tmp_path, command=f"{LORA} --train_data_dir img --resolution 512 --output_dir out {flags}"
        )
        assert outcome.exit_code == 0, errors(outcome)
        assert "resize" not in _datasets(tmp_path)[0], flags
        assert plan_of(outcome, tmp_path).datasets[0].resize == "cover"


def test_images_kohya_would_assert_on_are_refused(tmp_path):
    """Readable folders: the converter refuses (DBS402); folders not here convert, and `dbspec plan` refuses
    the small image naming the file (DBS414) once the folder is there."""
    images(tmp_path / "photos", 1, (480, 640))
    write(tmp_path / "d.toml", RANDOM_CROP_TOML)
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --output_dir out")
    assert outcome.exit_code == 1 and any("smaller" in e for e in errors(outcome))

    remote = tmp_path / "remote"
    command = f"{LORA} --train_data_dir later --resolution 512 --output_dir out --random_crop"
    converted = kohya(remote, command=command)
    assert converted.exit_code == 0 and converted.written, errors(converted)
    assert _datasets(remote)[0]["resize"] == "none" and "DBS406" in codes(converted)
    folder = remote / "later" / "10_ohwx dog"
    images(folder, 1, (640, 640))
    Image.new("RGB", (600, 480), "gray").save(folder / "short.png")
    planned = plan_spec(out_path(remote), GPU)
    assert planned.plan is None
    found = [d for d in planned.diagnostics if d.code == "DBS414"]
    assert len(found) == 1 and "short.png" in found[0].message and "600x480" in found[0].message

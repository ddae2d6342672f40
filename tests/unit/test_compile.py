"""compile_plan as a whole, on fixture datasets and models made in tmp_path.

Datasets (broken files, captions, masks, class images), buckets, schedule, precision, caches, origins and
model facts. The passes' own arithmetic has unit tests of its own (test_buckets, test_schedule, test_images,
test_modelinfo, test_target); these tests check that the compiler wires them together right.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import attrs
import numpy as np
import pytest
from PIL import Image
from safetensors.numpy import save_file

from dbspec.compiler import buckets as bk
from dbspec.compiler import schedule as sched
from dbspec.compiler.caches import entry_path
from dbspec.compiler.datasets import MANIFEST
from dbspec.compiler.models import FAMILY_PARAMS
from dbspec.compiler.target import parse_target
from dbspec.frontend import Planned, check_spec, plan_spec
from dbspec.plan.model import Origin, Plan, TargetEnv

CPU = TargetEnv(device="cpu", memory_bytes=16 * 2**30, bf16=True, description="test cpu")
GPU = parse_target("cuda:24GB:8.9")
RED = (200, 30, 30)
DEFAULT_TABLES = {
    "model": {"base": "builtin:tiny-sd1"},
    "buckets": {"step": 16},
    "schedule": {"steps": 10},
    "cache": {"dir": "cache"},
    "output": {"dir": "out"},
}
DEFAULT_DATASET = {"name": "subject", "path": "inst", "prompt": "a photo of ohwx toy", "resolution": 64}


@pytest.fixture(autouse=True)
def empty_hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub ids never resolve from this machine's Hugging Face cache."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-hub"))


# --- fixtures: images, specs, plans -----------------------------------------------------------------------


def image(path: Path, size: tuple[int, int] = (96, 64), mode: str = "RGB", **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"RGB": RED, "RGBA": (*RED, 128), "L": 255}[mode]
    Image.new(mode, size, color).save(path, **save)
    return path


def noisy_png(size: tuple[int, int]) -> bytes:
    """A PNG that does not compress to nothing, so cutting it in half cuts pixel data."""
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def rotated_jpeg(path: Path, stored: tuple[int, int]) -> Path:
    """A JPEG stored landscape with EXIF orientation 6 (shown rotated a quarter: portrait)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return image(path, stored, format="JPEG", exif=exif)


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(map(toml_value, value)) + "]"
    return repr(value)


def write_spec(folder: Path, *datasets: dict, **tables: dict) -> Path:
    """spec.toml in `folder`: DEFAULT_TABLES updated by `tables` (a None value drops a key), then datasets."""
    lines = ["spec_version = 2"]
    merged = {
        name: {**DEFAULT_TABLES.get(name, {}), **tables.get(name, {})}
        for name in {**DEFAULT_TABLES, **tables}
    }
    for name, table in merged.items():
        lines += ["", f"[{name}]"] + [f"{k} = {toml_value(v)}" for k, v in table.items() if v is not None]
    for dataset in datasets or ({},):
        lines += ["", "[[datasets]]"]
        lines += [
            f"{k} = {toml_value(v)}" for k, v in {**DEFAULT_DATASET, **dataset}.items() if v is not None
        ]
    path = folder / "spec.toml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def compile_in(folder: Path, env: TargetEnv = CPU, overrides: tuple[str, ...] = ()) -> Planned:
    return plan_spec(folder / "spec.toml", env, "spec.toml", list(overrides))


def planned_ok(folder: Path, env: TargetEnv = CPU, overrides: tuple[str, ...] = ()) -> Plan:
    planned = compile_in(folder, env, overrides)
    errors = [f"{d.code} {d.path}: {d.message}" for d in planned.diagnostics if d.severity == "error"]
    assert planned.plan is not None, errors
    return planned.plan


def codes(planned: Planned, severity: str | None = None) -> list[str]:
    return [d.code for d in planned.diagnostics if severity is None or d.severity == severity]


def spec_line(folder: Path, text: str) -> int:
    """1-based line of the first line of spec.toml that starts with `text`."""
    lines = (folder / "spec.toml").read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(text))


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    """Three instance images in inst/: a square, a landscape and a portrait."""
    image(tmp_path / "inst" / "a.png", (64, 64))
    image(tmp_path / "inst" / "b.png", (96, 64))
    image(tmp_path / "inst" / "c.png", (64, 96))
    return tmp_path


# --- problem images ---------------------------------------------------------------------------------------


@pytest.fixture
def broken(tmp_path: Path) -> Path:
    """One good image, one EXIF-rotated good JPEG, and a broken file of every kind."""
    folder = tmp_path / "inst"
    image(folder / "good.png", (96, 64))
    rotated_jpeg(folder / "rotated.jpg", (96, 64))
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is text, not a JPEG")
    data = noisy_png((80, 80))
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    image(folder / "tiny.png", (20, 20))
    return tmp_path


BROKEN_CODES = {"empty.png": "DBS304", "notes.jpg": "DBS303", "cut.png": "DBS308", "tiny.png": "DBS306"}


def test_broken_images_are_errors_naming_each_file_at_the_dataset_path(broken):
    write_spec(broken, {"min_image_size": 32})
    planned = compile_in(broken)
    assert planned.plan is None
    errors = [d for d in planned.diagnostics if d.severity == "error"]
    by_file = {name: [d for d in errors if f"`{name}`" in d.message] for name in BROKEN_CODES}
    assert {name: [d.code for d in found] for name, found in by_file.items()} == {
        name: [code] for name, code in BROKEN_CODES.items()
    }
    assert len(errors) == len(BROKEN_CODES)
    line = spec_line(broken, "path = ")
    for d in errors:
        assert d.path == "datasets[0].path" and (d.span.file, d.span.line) == ("spec.toml", line)
        assert 'on_bad_image = "skip"' in d.help
    assert "32" in by_file["tiny.png"][0].message  # says which limit the image is below


def test_skip_leaves_broken_images_out_and_lists_them(broken):
    write_spec(broken, {"min_image_size": 32, "on_bad_image": "skip"})
    planned = compile_in(broken)
    plan = planned.plan
    assert plan is not None
    (dataset,) = plan.datasets
    assert [img.rel for img in dataset.images] == ["good.png", "rotated.jpg"]
    assert sorted(codes(planned, "warning")) == sorted(BROKEN_CODES.values())
    assert len(dataset.skipped) == len(BROKEN_CODES)
    for name in BROKEN_CODES:
        assert sum(f"`{name}`" in reason for reason in dataset.skipped) == 1
    rotated = dataset.images[1]
    assert (rotated.size, rotated.orientation) == ((64, 96), 6)  # as shown, not as stored
    assert rotated.bucket[0] < rotated.bucket[1]  # a portrait bucket
    assert all(f"`{name}`" in "\n".join(plan.warnings) for name in BROKEN_CODES)


def test_every_image_skipped_is_an_error(tmp_path):
    (tmp_path / "inst").mkdir()
    (tmp_path / "inst" / "empty.png").write_bytes(b"")
    write_spec(tmp_path, {"on_bad_image": "skip"})
    planned = compile_in(tmp_path)
    assert planned.plan is None and "DBS302" in codes(planned, "error")


def test_missing_dataset_folder(tmp_path):
    write_spec(tmp_path, {"path": "nowhere"})
    planned = compile_in(tmp_path)
    assert codes(planned) == ["DBS301"]
    (d,) = planned.diagnostics
    assert "nowhere" in d.message and d.span.line == spec_line(tmp_path, 'path = "nowhere"')


def animated_webp(path: Path, frames: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.new("RGB", (64, 64), (0, 40 * i, 0)) for i in range(frames)]
    images[0].save(path, "WEBP", save_all=True, append_images=images[1:])
    return path


def test_files_the_plan_cannot_use_are_one_warning_per_dataset(toy):
    """DBS305 lists what will not train (up to 20 names and a count), never captions or sidecars; DBS326 names
    animations, which train on their first frame. A warm re-plan (the image cache filled) says the same."""
    inst = toy / "inst"
    for i in range(25):
        image(inst / f"clip{i:02d}.gif", (64, 64), format="GIF")
    (inst / "phone.heic").write_bytes(b"not read")
    for name in ("a.cap", "a.txt", "b.caption", "b.npz", "meta.json", "dataset.toml", ".DS_Store"):
        (inst / name).write_text("ohwx toy")
    animated_webp(inst / "dance.webp", 5)
    write_spec(toy, {"captions": "filename", "caption_extension": ".cap", "prompt": None})
    for _ in ("cold", "warm"):
        planned = compile_in(toy)
        assert planned.plan is not None and codes(planned) == ["DBS305", "DBS326"]
        unusable, animated = planned.diagnostics
        assert unusable.severity == "warning" and unusable.path == "datasets[0].path"
        assert unusable.message.startswith(f"26 files in `{inst.as_posix()}` will not train")
        assert (
            unusable.notes[:2] == ("`clip00.gif`", "`clip01.gif`") and unusable.notes[-1] == "... and 6 more"
        )
        assert len(unusable.notes) == 21 and not any("cap" in n or "json" in n for n in unusable.notes)
        assert animated.message.endswith("only the first frame of each trains")
        assert animated.notes == ("`dance.webp` has 5 frames",)
        (dataset,) = planned.plan.datasets
        assert len(dataset.images) == 4 and dataset.skipped == ()  # the animation trains; nothing was skipped


# --- captions ---------------------------------------------------------------------------------------------


def captions(plan: Plan) -> dict[str, str]:
    return {img.rel: img.caption for d in plan.datasets for img in d.images}


def test_prompt_captions_with_prefix_and_suffix(toy):
    write_spec(toy, {"caption_prefix": "masterpiece,", "caption_suffix": ", 4k"})
    plan = planned_ok(toy)
    assert set(captions(plan).values()) == {"masterpiece, a photo of ohwx toy , 4k"}


def test_textfile_captions_with_a_custom_extension(toy):
    (toy / "inst" / "a.caption").write_text("ohwx toy on a table\nsecond line is ignored\n")
    (toy / "inst" / "b.caption").write_text("  ohwx toy, side view  \n")
    (toy / "inst" / "c.caption").write_text("\n\nohwx toy from above")
    (toy / "inst" / "a.txt").write_text("not this one")
    write_spec(
        toy,
        {"captions": "textfile", "caption_extension": ".caption", "prompt": None, "caption_prefix": "photo:"},
    )
    assert captions(planned_ok(toy)) == {
        "a.png": "photo: ohwx toy on a table",
        "b.png": "photo: ohwx toy, side view",
        "c.png": "photo: ohwx toy from above",
    }


def test_missing_caption_file_is_an_error_without_a_prompt(toy):
    (toy / "inst" / "a.txt").write_text("ohwx toy")
    write_spec(toy, {"captions": "textfile", "prompt": None})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS320", "DBS320"]
    messages = sorted(d.message for d in planned.diagnostics)
    assert "`b.txt`" in messages[0] and "`b.png`" in messages[0] and "`c.png`" in messages[1]
    assert all(d.path == "datasets[0].captions" for d in planned.diagnostics)


def test_missing_caption_file_falls_back_to_the_prompt(toy):
    (toy / "inst" / "a.txt").write_text("ohwx toy, close up")
    write_spec(toy, {"captions": "textfile", "prompt": "a photo of ohwx toy", "caption_suffix": "!"})
    planned = compile_in(toy)
    assert planned.plan is not None and codes(planned) == []
    assert captions(planned.plan) == {
        "a.png": "ohwx toy, close up !",
        "b.png": "a photo of ohwx toy !",
        "c.png": "a photo of ohwx toy !",
    }


def test_filename_captions(tmp_path):
    image(tmp_path / "inst" / "ohwx_toy_on_grass.png")
    image(tmp_path / "inst" / "ohwx toy.jpg", format="JPEG")
    write_spec(tmp_path, {"captions": "filename", "prompt": None, "caption_prefix": "a photo:"})
    assert captions(planned_ok(tmp_path)) == {
        "ohwx toy.jpg": "a photo: ohwx toy",
        "ohwx_toy_on_grass.png": "a photo: ohwx toy on grass",
    }


# --- masks ------------------------------------------------------------------------------------------------


def test_masks_folder_pairs_masks_by_stem(toy):
    for name, size in (("a", (64, 64)), ("b", (96, 64)), ("c", (64, 96))):
        image(toy / "masks" / f"{name}.png", size, mode="L")
    write_spec(toy, {"masks": "masks"})
    plan = planned_ok(toy)
    (dataset,) = plan.datasets
    assert dataset.mask_source == "folder"
    for img in dataset.images:
        mask = toy / "masks" / img.rel
        assert img.mask == mask.as_posix() and len(img.mask_sha) == 32
    assert plan.loss.masked and "mask" in plan.loss.formula


def test_missing_and_mismatched_masks(toy):
    image(toy / "masks" / "a.png", (64, 64), mode="L")
    image(toy / "masks" / "b.png", (50, 50), mode="L")
    write_spec(toy, {"masks": "masks"})
    planned = compile_in(toy)
    assert sorted(codes(planned)) == ["DBS321", "DBS322"]
    by_code = {d.code: d for d in planned.diagnostics}
    assert "`c.png`" in by_code["DBS321"].message
    assert "`b.png`" in by_code["DBS322"].message and "50x50" in by_code["DBS322"].message
    assert "96x64" in by_code["DBS322"].message
    assert by_code["DBS321"].span.line == spec_line(toy, 'masks = "masks"')


def test_mask_from_alpha(tmp_path):
    image(tmp_path / "inst" / "cutout.png", mode="RGBA")
    write_spec(tmp_path, {"mask_from_alpha": True})
    (img,) = planned_ok(tmp_path).datasets[0].images
    assert img.mask == "alpha"
    image(tmp_path / "inst" / "opaque.png")
    planned = compile_in(tmp_path)
    assert codes(planned) == ["DBS323"] and "`opaque.png`" in planned.diagnostics[0].message


# --- class datasets ---------------------------------------------------------------------------------------


def class_dataset(**extra) -> dict:
    return {"name": "toys", "role": "class", "path": "cls", "prompt": "a photo of a toy", **extra}


def test_class_images_are_balanced_to_the_instance_samples_as_kohya(toy):
    for k in range(4):
        image(toy / "cls" / f"c{k}.png", (64, 64))
    write_spec(toy, {"repeats": 5}, class_dataset())
    plan = planned_ok(toy)
    instance, klass = plan.datasets
    assert instance.samples_per_epoch == 15
    expected = sched.balance_class_repeats([1, 1, 1, 1], 15)
    assert [img.repeats for img in klass.images] == expected == [4, 4, 4, 3]
    assert klass.samples_per_epoch == 15
    assert (plan.schedule.instance_samples_per_epoch, plan.schedule.class_samples_per_epoch) == (15, 15)
    assert "mean_class" in plan.loss.formula and plan.loss.prior == "images"


def test_unused_class_images_get_no_cache_keys(toy):
    for k in range(5):
        image(toy / "cls" / f"c{k}.png", (64, 64))
    write_spec(toy, {}, class_dataset())
    klass = planned_ok(toy).datasets[1]
    assert [img.repeats for img in klass.images] == [1, 1, 1, 0, 0]
    assert [bool(img.latent_keys) for img in klass.images] == [True, True, True, False, False]


def test_balance_classes_false_keeps_the_class_repeats(toy):
    for k in range(4):
        image(toy / "cls" / f"c{k}.png", (64, 64))
    write_spec(toy, {"repeats": 5}, class_dataset(repeats=2), schedule={"balance_classes": False})
    plan = planned_ok(toy)
    klass = plan.datasets[1]
    assert [img.repeats for img in klass.images] == [2, 2, 2, 2]
    assert [d.samples_per_epoch for d in plan.datasets] == [15, 8]
    assert plan.schedule.class_samples_per_epoch == 8


def test_generate_plans_the_missing_class_images(toy):
    write_spec(toy, {}, class_dataset(generate=4), schedule={"seed": 7})
    plan = planned_ok(toy)
    klass = plan.datasets[1]
    gen = klass.generate
    assert gen is not None and gen.count == 4 and gen.prompt == "a photo of a toy"
    assert gen.folder == str(toy / "cls") and gen.resolution == (64, 64)
    assert gen.seeds == tuple(7 * 1_000_003 + k for k in range(4))
    assert [img.rel for img in klass.images] == [f"class-{seed}.png" for seed in gen.seeds]
    assert {img.path for img in klass.images} == {str(toy / "cls" / f"class-{s}.png") for s in gen.seeds}
    assert all(img.bucket == (64, 64) and img.caption == "a photo of a toy" for img in klass.images)
    assert klass.samples_per_epoch == 3  # balanced to the 3 instance samples: one generated image unused


def test_generate_counts_the_images_already_there(toy):
    for k in range(2):
        image(toy / "cls" / f"mine{k}.png", (64, 64))
    write_spec(toy, {}, class_dataset(generate=5))
    gen = planned_ok(toy).datasets[1].generate
    assert gen.count == 3 and gen.seeds == (2, 3, 4)
    write_spec(toy, {}, class_dataset(generate=2))
    assert planned_ok(toy).datasets[1].generate is None  # enough images: nothing to make


def _make_class_images(folder: Path, gen, seeds) -> None:
    """What the runtime leaves after making `seeds`: the files and the manifest listing them."""
    for seed in seeds:
        image(folder / f"class-{seed}.png", gen.resolution)
    listed = [f"class-{seed}.png" for seed in seeds]
    (folder / MANIFEST).write_text(json.dumps({"key": gen.manifest_key, "files": listed}))


def test_generated_class_images_keep_the_run_identity(toy):
    """A run interrupted after making its class images resumes under the plan of the same spec: the images
    made are planned as those to make (seeds, manifest key), only the count still to make changes."""
    from dbspec.plan.io import run_hash

    image(toy / "cls" / "mine.png", (64, 64))
    write_spec(toy, {}, class_dataset(generate=4), schedule={"seed": 7})
    before = planned_ok(toy)
    gen = before.datasets[1].generate
    assert gen.count == 3 and gen.seeds == tuple(7 * 1_000_003 + 1 + k for k in range(3))
    _make_class_images(toy / "cls", gen, gen.seeds[:2])  # interrupted after two
    partly = planned_ok(toy)
    assert partly.datasets[1].generate.count == 1
    _make_class_images(toy / "cls", gen, gen.seeds)
    after = planned_ok(toy)
    assert after.datasets[1].generate == attrs.evolve(gen, count=0)
    assert after.datasets[1].images == before.datasets[1].images
    assert run_hash(before) == run_hash(partly) == run_hash(after)
    write_spec(toy, {}, class_dataset(generate=4, generate_steps=20), schedule={"seed": 7})
    changed = planned_ok(toy)  # another sampler: other images, another run
    assert changed.datasets[1].generate.count == 3 and run_hash(changed) != run_hash(after)


def test_the_summary_says_how_many_class_images_exist(toy):
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    write_spec(toy, {}, class_dataset(generate=3))
    gen = planned_ok(toy).datasets[1].generate
    _make_class_images(toy / "cls", gen, gen.seeds[:1])
    console = Console(file=io.StringIO(), width=200)
    render_summary(planned_ok(toy), console)
    assert "2 new, 1 made (ddpm" in console.file.getvalue()


def test_manifest_key_follows_prompt_and_model(toy):
    def key(base_model: str = "builtin:tiny-sd1", **changes) -> str:
        write_spec(toy, {}, class_dataset(generate=2, **changes), model={"base": base_model})
        return planned_ok(toy).datasets[1].generate.manifest_key

    base = key()
    assert key() == base
    assert key(prompt="a photo of a plush toy") != base
    assert key(resolution=128) != base
    assert key("builtin:tiny-sd2") != base


def test_manifest_key_follows_the_prompt_encoding(toy):
    """Class images encode the prompt as training does: the encoding keys the images where it is not the
    pipeline's own (more than one CLIP window, a T5 encoder); a one-window SD prompt keeps its earlier key."""

    def key(**model) -> str:
        write_spec(toy, {}, class_dataset(generate=2), model=model)
        return planned_ok(toy).datasets[1].generate.manifest_key

    sd1 = key(base="builtin:tiny-sd1")
    assert key(base="builtin:tiny-sd1", max_tokens=150) != sd1
    flux = key(base="builtin:tiny-flux")
    assert key(base="builtin:tiny-flux", t5_max_length=16) != flux
    assert key(base="builtin:tiny-flux", t5_attention_mask=True) != flux
    assert key(base="builtin:tiny-flux") == flux


def test_class_image_sampling_is_planned_and_keys_the_manifest(toy):
    def gen(**changes):
        write_spec(toy, {}, class_dataset(generate=2, **changes))
        return planned_ok(toy).datasets[1].generate

    default = gen()
    assert (default.scheduler, default.steps, default.guidance, default.batch_size) == ("ddpm", 50, 7.5, 4)
    # Today's settings keep the key earlier versions wrote: their class images are not regenerated.
    identity = planned_ok(toy).model.identity
    earlier = json.dumps([identity, "a photo of a toy", 64, "class-v1"])
    assert default.manifest_key == hashlib.blake2b(earlier.encode(), digest_size=16).hexdigest()
    custom = gen(generate_scheduler="euler", generate_steps=20, generate_guidance=5.0, generate_batch=2)
    assert (custom.scheduler, custom.steps, custom.guidance, custom.batch_size) == ("euler", 20, 5.0, 2)
    assert gen(generate_batch=1).manifest_key == default.manifest_key  # batching changes no image
    for change in ({"generate_scheduler": "ddim"}, {"generate_steps": 49}, {"generate_guidance": 7.0}):
        assert gen(**change).manifest_key != default.manifest_key, change


@pytest.mark.parametrize(
    "tables,teacher",
    [
        ({}, ("unet",)),
        ({"train": {"text_encoder": True}}, ("unet",)),  # the text encoder trains too, but is not copied
        ({"adapter": {"kind": "lora"}}, ()),  # the adapters are switched off instead
        ({"loss": {"prior": "images"}}, ()),
    ],
)
def test_the_teacher_copy_is_decided_once_and_counted(toy, tables, teacher):
    image(toy / "cls" / "c.png", (64, 64))
    write_spec(toy, {}, class_dataset(), **{"loss": {"prior": "base_model"}, **tables})
    plan = planned_ok(toy)
    assert plan.loss.teacher == teacher
    copied = sum(c.params for c in plan.precision.components if c.name in teacher)
    assert plan.memory.teacher == copied * {"no": 4, "fp16": 2, "bf16": 2}[plan.precision.mixed]


def test_the_summary_shows_the_teacher_and_the_class_image_sampler(toy):
    from rich.console import Console

    from dbspec.plan.summary import render_summary

    write_spec(toy, {}, class_dataset(generate=2, generate_steps=20), loss={"prior": "base_model"})
    console = Console(file=io.StringIO(), width=200)
    render_summary(planned_ok(toy), console)
    text = console.file.getvalue()
    assert "frozen base copy of the unet" in text
    assert "2 new (ddpm, 20 steps, cfg 7.5, batch 4)" in text


def test_no_teacher_without_class_images(toy):
    write_spec(toy, loss={"prior": "base_model"})
    assert planned_ok(toy).loss.teacher == ()


def test_a_base_prior_with_a_frozen_unet_is_refused(toy):
    image(toy / "cls" / "c.png", (64, 64))
    write_spec(
        toy,
        {},
        class_dataset(),
        loss={"prior": "base_model"},
        train={"denoiser": False, "text_encoder": True},
    )
    planned = compile_in(toy)
    assert planned.plan is None and "DBS226" in codes(planned, "error")


def test_images_generated_for_another_key_are_regenerated(toy):
    folder = toy / "cls"
    for name in ("class-0.png", "class-1.png", "mine.png"):
        image(folder / name, (64, 64))
    (folder / MANIFEST).write_text(json.dumps({"key": "0" * 32, "files": ["class-0.png", "class-1.png"]}))
    write_spec(toy, {}, class_dataset(generate=3))
    planned = compile_in(toy)
    assert codes(planned) == ["DBS324"] and "2 class images" in planned.diagnostics[0].message
    klass = planned.plan.datasets[1]
    assert klass.generate.count == 2  # 3 wanted, mine.png kept
    assert [img.rel for img in klass.images][0] == "mine.png"


@pytest.mark.parametrize("make_folder", [False, True], ids=["missing", "empty"])
def test_generate_into_a_missing_or_empty_folder(toy, make_folder):
    if make_folder:
        (toy / "cls").mkdir()
    write_spec(toy, {}, class_dataset(generate=3))
    planned = compile_in(toy)
    assert planned.plan is not None and codes(planned) == []
    assert planned.plan.datasets[1].generate.count == 3


def test_missing_class_folder_without_generate_is_an_error(toy):
    write_spec(toy, {}, class_dataset())
    assert codes(compile_in(toy)) == ["DBS301"]


# --- buckets ----------------------------------------------------------------------------------------------


SIZES = [(64, 64), (96, 64), (64, 96), (200, 100), (77, 131), (300, 40), (128, 128), (1000, 999)]


@pytest.mark.parametrize("resolution,step", [(64, 16), (128, 32), (512, 64)])
def test_each_image_is_placed_as_kohya_places_it(tmp_path, resolution, step):
    for k, size in enumerate(SIZES):
        image(tmp_path / "inst" / f"{k}.png", size)
    write_spec(tmp_path, {"resolution": resolution, "min_image_size": 8}, buckets={"step": step})
    plan = planned_ok(tmp_path)
    table = bk.bucket_list((resolution, resolution), resolution // 2, resolution * 2, step)
    for img in plan.datasets[0].images:
        placed = bk.place(img.size, table)
        assert (img.bucket, img.resized, img.crop) == (placed.bucket, placed.resized, placed.crop), img.rel
    buckets = {img.bucket for img in plan.datasets[0].images}
    assert [b.size for b in plan.buckets] == sorted(buckets)


def test_square_buckets_and_no_upscale(toy):
    write_spec(toy, {}, buckets={"mode": "square"})
    assert {img.bucket for img in planned_ok(toy).datasets[0].images} == {(64, 64)}
    image(toy / "inst" / "d.png", (40, 48))
    write_spec(toy, {"min_image_size": 8}, buckets={"no_upscale": True, "step": 8})
    by_rel = {img.rel: img for img in planned_ok(toy).datasets[0].images}
    assert (by_rel["d.png"].bucket, by_rel["d.png"].resized) == ((40, 48), (40, 48))  # never enlarged


def test_a_short_bucket_warns_and_still_trains(toy):
    for k in range(3):
        image(toy / "inst" / f"sq{k}.png", (64, 64))
    write_spec(toy, {}, schedule={"batch_size": 4})
    planned = compile_in(toy)
    plan = planned.plan
    assert plan is not None
    short = [b for b in plan.buckets if b.short]
    assert {b.size for b in short} == {(80, 48), (48, 80)}  # one landscape and one portrait image each
    assert all(b.batches_per_epoch == 1 for b in short)
    assert codes(planned) == ["DBS333", "DBS333"]
    assert all(d.path == "schedule.batch_size" and "not dropped" in d.message for d in planned.diagnostics)
    assert plan.schedule.batches_per_epoch == sum(b.batches_per_epoch for b in plan.buckets) == 3


# --- schedule ---------------------------------------------------------------------------------------------


def test_steps_give_epochs_and_epochs_give_steps(toy):
    write_spec(toy, {"repeats": 4}, schedule={"steps": 10, "batch_size": 2})
    s = planned_ok(toy).schedule
    # 12 samples in 3 buckets of 4: 2 batches each; 6 steps per epoch
    assert (s.batches_per_epoch, s.steps_per_epoch, s.total_steps, s.epochs) == (6, 6, 10, 2)
    write_spec(toy, {"repeats": 4}, schedule={"steps": None, "epochs": 3, "batch_size": 2})
    s = planned_ok(toy).schedule
    assert (s.total_steps, s.epochs) == (18, 3)


def test_accumulation_and_processes(toy):
    write_spec(toy, {"repeats": 4}, schedule={"steps": None, "epochs": 2, "batch_size": 1, "accumulation": 3})
    s = planned_ok(toy).schedule
    assert (s.batches_per_epoch, s.steps_per_epoch, s.total_steps) == (12, 4, 8)
    s = planned_ok(toy, parse_target("cuda:80GB:9.0:x4")).schedule
    assert (s.processes, s.batches_per_epoch, s.steps_per_epoch, s.total_steps) == (4, 3, 1, 2)


def test_epoch_runs_check_step_rules_at_plan_time(toy):
    write_spec(
        toy,
        {},
        schedule={"steps": None, "epochs": 2},
        train={"text_encoder": True, "text_encoder_stop_step": 6},
        checkpoints={"every": 50},
    )
    checked = check_spec(toy / "spec.toml", "spec.toml")
    assert {d.code for d in checked.diagnostics} == set()  # the step count is unknown before planning
    planned = compile_in(toy)  # 3 samples, batch 1: 3 steps per epoch, 6 steps
    assert sorted(codes(planned)) == ["DBS202", "DBS204"]
    by_code = {d.code: d for d in planned.diagnostics}
    assert "6 steps" in by_code["DBS202"].message and by_code["DBS202"].severity == "error"
    assert by_code["DBS204"].span.line == spec_line(toy, "every = 50")


def test_lr_points_and_checkpoints(toy):
    write_spec(
        toy,
        {"repeats": 10},
        schedule={"steps": 20, "lr_schedule": "linear", "warmup_steps": 4},
        checkpoints={"every": 8},
        validation={"every": 5, "prompts": ["ohwx toy"]},
        optimizer={"lr": 1e-4},
    )
    plan = planned_ok(toy)
    s = plan.schedule
    assert tuple(s.checkpoint_steps) == (8, 16, 20) and plan.checkpoints.steps == s.checkpoint_steps
    assert tuple(s.validation_steps) == (5, 10, 15, 20) and plan.validation.steps == s.validation_steps
    expected = [
        (step, sched.lr_at(step, lr=1e-4, schedule="linear", warmup=4, total=20, cycles=1))
        for step in (0, 4, 8, 16, 20)
    ]
    assert list(s.lr_points) == expected
    assert s.lr_points[1] == (4, 1e-4) and s.lr_points[-1] == (20, 0.0)


# --- precision --------------------------------------------------------------------------------------------


def dtypes(plan: Plan) -> dict[str, tuple[str, str]]:
    return {c.name: (c.dtype, c.trainable) for c in plan.precision.components}


@pytest.mark.parametrize(
    "env,mixed",
    [
        (CPU, "no"),
        (GPU, "bf16"),
        (parse_target("cuda:16GB:7.5"), "fp16"),
        (parse_target("mps:32GB"), "bf16"),
        (TargetEnv(device="mps", bf16=False), "fp16"),
    ],
)
def test_auto_precision_per_device(toy, env, mixed):
    write_spec(toy)
    plan = planned_ok(toy, env)
    frozen = "fp32" if mixed == "no" else mixed
    assert plan.precision.mixed == mixed and "auto" in plan.precision.reason
    assert dtypes(plan) == {
        "unet": ("fp32", "full"),
        "text_encoder": (frozen, "frozen"),
        "vae": ("fp32", "frozen"),
    }
    assert plan.precision.tf32 == (env.device == "cuda")


def test_bf16_without_bf16_is_an_error_unless_it_may_fall_back(toy):
    turing = parse_target("cuda:16GB:7.5")
    write_spec(toy, precision={"mixed": "bf16"})
    planned = compile_in(toy, turing)
    assert codes(planned) == ["DBS340"] and "cc 7.5" in planned.diagnostics[0].message
    assert planned.diagnostics[0].span.line == spec_line(toy, 'mixed = "bf16"')
    write_spec(toy, precision={"mixed": "bf16", "bf16_fallback": "fp16"})
    plan = planned_ok(toy, turing)
    assert plan.precision.mixed == "fp16" and "bf16_fallback" in plan.precision.reason


def test_fp16_on_cpu_warns(toy):
    write_spec(toy, precision={"mixed": "fp16"})
    assert codes(compile_in(toy)) == ["DBS341"]


def test_fp8_needs_compute_capability_8_9(toy):
    write_spec(toy, adapter={"kind": "lora"}, optimizer={"lr": 1e-4}, precision={"quantize_denoiser": "fp8"})
    planned = compile_in(toy, parse_target("cuda:24GB:8.6"))
    assert codes(planned, "error") == ["DBS342"]
    assert "8.6" in next(d.message for d in planned.diagnostics if d.code == "DBS342")
    plan = planned_ok(toy, GPU)
    unet = plan.precision.components[0]
    assert (unet.name, unet.trainable, unet.quantized, unet.dtype) == ("unet", "lora", "fp8", "bf16")


def test_adamw8bit_needs_cuda_or_the_cpu(toy):
    write_spec(toy, optimizer={"kind": "adamw8bit"})
    planned = compile_in(toy, TargetEnv(device="mps", bf16=False))
    assert codes(planned, "error") == ["DBS343"] and "mps" in planned.diagnostics[0].message
    assert planned_ok(toy, GPU).optimizer.kind == "adamw8bit"
    assert planned_ok(toy, CPU).optimizer.kind == "adamw8bit"  # bitsandbytes' CPU backend


def test_quantisation_backends_are_planned_with_their_formats_and_devices(toy):
    lora = {"adapter": {"kind": "lora"}, "optimizer": {"lr": 1e-4}}
    write_spec(toy, **lora, precision={"quantize_denoiser": "nf4", "quantize_backend": "bitsandbytes"})
    plan = planned_ok(toy, CPU)
    assert plan.precision.quantize_backend == "bitsandbytes"
    assert plan.precision.components[0].quantized == "nf4"
    assert codes(compile_in(toy, TargetEnv(device="mps", bf16=False)), "error") == ["DBS318"]
    write_spec(toy, **lora, precision={"quantize_denoiser": "fp8", "quantize_backend": "torchao"})
    assert codes(compile_in(toy, CPU), "error") == ["DBS342"]
    assert planned_ok(toy, GPU).precision.quantize_backend == "torchao"
    write_spec(toy, **lora, precision={"quantize_denoiser": "int4", "quantize_backend": "bitsandbytes"})
    assert codes(compile_in(toy, CPU), "error") == ["DBS247"]
    write_spec(
        toy, **lora, precision={"quantize_denoiser": "int8"}
    )  # a spec from before: quanto, and a warning
    planned = compile_in(toy, CPU)
    assert planned.plan.precision.quantize_backend == "quanto" and "DBS248" in codes(planned, "warning")


def test_errors_from_every_pass_are_reported_together(broken):
    write_spec(broken, {"masks": "masks"}, optimizer={"kind": "adamw8bit"}, precision={"mixed": "bf16"})
    planned = compile_in(broken, TargetEnv(device="mps"))
    assert {"DBS301", "DBS303", "DBS304", "DBS306", "DBS308", "DBS340", "DBS343"} <= set(
        codes(planned, "error")
    )


# --- caches -----------------------------------------------------------------------------------------------


def test_an_entry_on_disk_turns_a_miss_into_a_hit(toy):
    write_spec(toy, {"flip": True})
    plan = planned_ok(toy)
    assert (plan.cache.latent_hits, plan.cache.latent_misses) == (0, 6)  # 3 images x (plain, flipped)
    assert (plan.cache.text_hits, plan.cache.text_misses) == (0, 1)
    first = plan.datasets[0].images[0]
    for kind, key in (("latents", first.latent_keys[1]), ("text", first.text_key)):
        entry = entry_path(Path(plan.cache.dir), kind, key)
        entry.parent.mkdir(parents=True, exist_ok=True)
        entry.write_bytes(b"entry")
    again = planned_ok(toy)
    assert (again.cache.latent_hits, again.cache.latent_misses) == (1, 5)
    assert (again.cache.text_hits, again.cache.text_misses) == (1, 0)
    assert plan.cache.dir == str(toy / "cache")


def latent_keys(plan: Plan) -> dict[str, tuple[str, ...]]:
    return {img.rel: img.latent_keys for d in plan.datasets for img in d.images}


def test_changed_image_bytes_change_only_its_latent_keys(toy):
    write_spec(toy)
    before = latent_keys(planned_ok(toy))
    image(toy / "inst" / "b.png", (96, 64)).write_bytes(noisy_png((96, 64)))  # same size, other pixels
    after = latent_keys(planned_ok(toy))
    assert after["b.png"] != before["b.png"]
    assert (after["a.png"], after["c.png"]) == (before["a.png"], before["c.png"])


def test_changed_resolution_or_vae_dtype_changes_every_latent_key(toy):
    write_spec(toy)
    before = latent_keys(planned_ok(toy))
    write_spec(toy, {"resolution": 128})
    bigger = latent_keys(planned_ok(toy))
    write_spec(toy, precision={"vae_dtype": "bf16"})
    bf16 = latent_keys(planned_ok(toy))
    for rel in before:
        assert len({before[rel], bigger[rel], bf16[rel]}) == 3


def test_no_text_keys_while_the_text_encoder_trains(toy):
    write_spec(toy, train={"text_encoder": True})
    plan = planned_ok(toy)
    assert all(img.text_key == "" for img in plan.datasets[0].images)
    assert not plan.cache.text_embeddings and plan.cache.text_misses == 0
    assert any("text encoder trains" in note for note in plan.cache.notes)
    assert all(img.latent_keys for img in plan.datasets[0].images)


def test_random_crops_are_not_cached(toy):
    write_spec(toy, {"crop": "random"})
    plan = planned_ok(toy)
    assert all(img.latent_keys == () for img in plan.datasets[0].images) and plan.cache.latent_misses == 0
    assert any("random crops" in note for note in plan.cache.notes)


# --- origins ----------------------------------------------------------------------------------------------


def test_origins_say_where_each_value_came_from(toy):
    write_spec(toy, {"repeats": 4}, optimizer={"lr": 1e-4})
    plan = planned_ok(toy, overrides=("schedule.batch_size=2",))
    origins = plan.origins
    assert origins["optimizer.lr"] == Origin(kind="spec", where=f"spec.toml:{spec_line(toy, 'lr = ')}:1")
    assert origins["datasets[0].repeats"].kind == "spec"
    assert origins["datasets[0].repeats"].where == f"spec.toml:{spec_line(toy, 'repeats = ')}:1"
    assert origins["schedule.batch_size"].kind == "--set"
    assert origins["schedule.batch_size"].where.startswith("<--set>:1:")
    assert origins["optimizer.weight_decay"] == Origin(kind="default")
    assert origins["datasets[0].flip"] == Origin(kind="default")
    assert origins["optimizer.text_encoder_lr"].kind == "derived"
    assert origins["schedule.total_steps"].kind == "derived"
    assert origins["model.family"] == Origin(kind="derived", note="detected")
    assert plan.schedule.batch_size == 2


# --- models -----------------------------------------------------------------------------------------------


def diffusers_folder(root: Path) -> dict[str, int]:
    """A tiny SD1-shaped diffusers folder (configs and real safetensors); returns its parameter counts."""

    def json_file(path: Path, value: dict) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))

    json_file(
        root / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": ["diffusers", "AutoencoderKL"],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDIMScheduler"],
            "safety_checker": [None, None],
        },
    )
    json_file(root / "unet" / "config.json", {"cross_attention_dim": 768, "in_channels": 4})
    json_file(root / "scheduler" / "scheduler_config.json", {"prediction_type": "epsilon"})
    json_file(root / "vae" / "config.json", {"latent_channels": 4})
    json_file(root / "text_encoder" / "config.json", {"hidden_size": 768})
    tensors = {
        "unet/diffusion_pytorch_model.safetensors": {
            "conv_in.weight": np.zeros((8, 4, 3, 3), np.float32),
            "conv_in.bias": np.zeros(8, np.float32),
        },
        "vae/diffusion_pytorch_model.safetensors": {
            "encoder.conv_in.weight": np.zeros((4, 3, 3, 3), np.float16)
        },
        "text_encoder/model.safetensors": {"text_model.final_layer_norm.weight": np.zeros(768, np.float32)},
    }
    for rel, weights in tensors.items():
        save_file(weights, str(root / rel))
    return {"unet": 296, "vae": 108, "text_encoder": 768}


def test_model_facts_of_a_diffusers_folder(toy):
    params = diffusers_folder(toy / "models" / "sd15")
    write_spec(toy, model={"base": "models/sd15"})
    plan = planned_ok(toy)
    m = plan.model
    assert (m.source, m.resolved, m.path, m.family, m.prediction) == (
        "diffusers",
        True,
        str(toy / "models" / "sd15"),
        "sd1",
        "epsilon",
    )
    assert m.params == params and m.identity.startswith("sha256:")
    assert {c.name: c.params for c in plan.precision.components} == params
    assert plan.origins["model.prediction"] == Origin(kind="derived", note="detected")


def test_full_exclude_leaves_the_excluded_copies_out_of_the_count_and_memory(toy):
    """A full adapter trains a copy of each targeted layer: its count (and the memory estimate) leave out the
    targeted layers `exclude` matches, read from the model's safetensors headers; an untargeted layer the
    pattern matches (attn2.to_k under to_q-only targets) changes nothing."""
    diffusers_folder(toy / "models" / "sd15")
    attn = "down_blocks.0.attentions.0.transformer_blocks.0"
    unet = {
        "conv_in.weight": np.zeros((8, 4, 3, 3), np.float32),
        "conv_in.bias": np.zeros(8, np.float32),
        f"{attn}.attn1.to_q.weight": np.zeros((8, 8), np.float32),
        f"{attn}.attn2.to_q.weight": np.zeros((8, 16), np.float32),
        f"{attn}.attn2.to_q.bias": np.zeros(8, np.float32),
        f"{attn}.attn2.to_k.weight": np.zeros((8, 24), np.float32),
    }
    save_file(unet, str(toy / "models" / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"))

    def planned(exclude: list[str]) -> Plan:
        adapter = {"kind": "full", "denoiser_targets": ["to_q"], "exclude": exclude}
        write_spec(toy, model={"base": "models/sd15"}, adapter=adapter, optimizer={"lr": 1e-4})
        return planned_ok(toy)

    whole, excluded, untargeted = planned([]), planned([r"attn2\."]), planned([r"to_k$"])
    copied = unet[f"{attn}.attn2.to_q.weight"].size + unet[f"{attn}.attn2.to_q.bias"].size
    assert whole.adapter.params["unet"] - excluded.adapter.params["unet"] == copied
    assert untargeted.adapter.params == whole.adapter.params
    assert excluded.memory.weights < whole.memory.weights
    assert excluded.memory.total < whole.memory.total
    assert untargeted.memory == whole.memory


def test_changed_weights_change_the_identity_and_the_right_cache_keys(toy):
    diffusers_folder(toy / "models" / "sd15")
    write_spec(toy, model={"base": "models/sd15"})
    before = planned_ok(toy)
    unet = toy / "models" / "sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    save_file(
        {"conv_in.weight": np.ones((8, 4, 3, 3), np.float32), "conv_in.bias": np.zeros(8, np.float32)},
        str(unet),
    )  # new UNet weights, same shapes
    after = planned_ok(toy)
    assert after.model.identity != before.model.identity
    assert after.model.vae_identity == before.model.vae_identity  # the VAE did not change: latents stay valid
    assert latent_keys(after) == latent_keys(before)


def test_unresolved_well_known_hub_id_plans(toy):
    write_spec(toy, model={"base": "stabilityai/stable-diffusion-2-1"}, buckets={"step": 16})
    planned = compile_in(toy, GPU)
    assert planned.plan is not None, planned.diagnostics
    m = planned.plan.model
    assert (m.source, m.resolved, m.path, m.family, m.prediction) == ("hub", False, "", "sd2", "v_prediction")
    assert m.params == FAMILY_PARAMS["sd2"]
    assert any("not in the local Hugging Face cache" in note for note in m.notes)
    assert any("huggingface-cli download stabilityai/stable-diffusion-2-1" in note for note in m.notes)
    assert planned.plan.loss.target == "v_prediction"
    assert planned.plan.memory.weights > 865_910_724 * 4  # the real UNet's size, in fp32 for a full fine-tune


def test_unknown_hub_id_asks_for_the_family_once(toy):
    write_spec(toy, model={"base": "someone/my-finetune"})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS313"]
    (d,) = planned.diagnostics
    assert "not in the local Hugging Face cache" in d.message and 'model.family = "sd1"' in d.help
    write_spec(toy, model={"base": "someone/my-finetune", "family": "sdxl"})
    plan = planned_ok(toy)
    assert (plan.model.family, plan.model.prediction, plan.model.resolved) == ("sdxl", "epsilon", False)
    assert [c.name for c in plan.precision.components] == ["unet", "text_encoder", "text_encoder_2", "vae"]


def test_missing_local_model_folder(toy):
    write_spec(toy, model={"base": "./models/nothing-here"})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS310"] and planned.diagnostics[0].path == "model.base"
    assert "no such file or folder" in planned.diagnostics[0].message


def test_missing_folder_that_reads_as_a_hub_id_says_both(toy):
    (toy / "models").mkdir()
    write_spec(toy, model={"base": "models/nothing-here"})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS313"]
    message = planned.diagnostics[0].message
    assert "not in the local Hugging Face cache" in message
    assert f"`{toy / 'models' / 'nothing-here'}` does not exist" in message


def test_builtin_model_plan(toy):
    write_spec(toy)
    m = planned_ok(toy).model
    assert (m.source, m.family, m.prediction, m.resolved) == ("builtin", "sd1", "epsilon", True)
    assert (
        Path(m.path).parent == toy / "cache" / "models" and not Path(m.path).exists()
    )  # built by `dbspec run`
    write_spec(toy, model={"base": "builtin:tiny-sd1", "prediction": "v_prediction"})
    assert codes(compile_in(toy)) == ["DBS312"]


def test_plan_is_deterministic_and_frozen(toy):
    write_spec(toy, {"flip": True})
    first, second = planned_ok(toy), planned_ok(toy)
    assert first == second
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        first.schedule.total_steps = 1


def test_values_the_spec_gives_keep_their_spec_origin(toy):
    write_spec(toy, schedule={"steps": None, "epochs": 2}, precision={"mixed": "bf16"})
    origins = planned_ok(toy, GPU).origins
    assert origins["schedule.epochs"] == Origin(
        kind="spec", where=f"spec.toml:{spec_line(toy, 'epochs = ')}:1"
    )
    assert origins["schedule.total_steps"] == Origin(kind="derived", note="epochs x steps per epoch")
    assert origins["precision.mixed"].kind == "spec"
    write_spec(toy, precision={"mixed": "bf16", "bf16_fallback": "fp16"})
    fallback = planned_ok(toy, parse_target("cuda:16GB:7.5")).origins["precision.mixed"]
    assert fallback.kind == "derived" and "bf16_fallback" in fallback.note
    write_spec(toy)
    origins = planned_ok(toy, GPU).origins
    assert origins["precision.mixed"] == Origin(kind="derived", note="auto: cuda supports bf16")
    assert origins["schedule.epochs"] == Origin(kind="derived", note="total steps / steps per epoch")


def test_caption_extension_without_a_dot_is_named_not_a_crash(toy):
    write_spec(toy, {"captions": "textfile", "caption_extension": "caption", "prompt": None})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS320"] * 3
    first = planned.diagnostics[0]
    assert "`acaption`" in first.message and 'did you mean ".caption"?' in first.help


def test_empty_caption_file_warns_and_says_what_trains_instead(toy):
    for name in ("a", "b", "c"):
        (toy / "inst" / f"{name}.txt").write_text("ohwx toy" if name != "b" else "\n  \n")
    write_spec(toy, {"captions": "textfile"})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS320"] and planned.diagnostics[0].severity == "warning"
    assert 'image `b.png` trains with the prompt "a photo of ohwx toy"' in planned.diagnostics[0].message
    assert captions(planned.plan)["b.png"] == "a photo of ohwx toy"


def test_a_schedule_that_cannot_run_is_an_error(toy):
    # a polynomial warm-up as long as the run: diffusers/transformers divide by its 0 decay steps at the end
    write_spec(toy, schedule={"steps": 10, "lr_schedule": "polynomial", "warmup_steps": 10})
    planned = compile_in(toy)
    assert "DBS334" in codes(planned) and "after the warm-up" in planned.diagnostics[0].message


def test_a_warmup_as_long_as_the_run_plans_with_a_warning(toy):
    write_spec(toy, schedule={"steps": 10, "lr_schedule": "linear", "warmup_steps": 10})
    planned = compile_in(toy)
    assert planned.plan is not None and codes(planned) == ["DBS238"]


def test_a_run_that_does_not_fit_warns(toy):
    write_spec(toy, model={"base": "runwayml/stable-diffusion-v1-5"})
    planned = compile_in(toy, parse_target("cuda:4GB:8.9"))
    assert planned.plan is not None and not planned.plan.memory.fits
    assert codes(planned) == ["DBS350"] and "4.0 GiB" in planned.diagnostics[0].message


def test_a_step_too_coarse_for_the_resolution_says_which_step_fits(toy):
    write_spec(toy, buckets={"step": 64})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS330"]
    (d,) = planned.diagnostics
    assert "rounds down to 0 with step 64" in d.message and "lower buckets.step to 32 or less" in d.help
    assert d.span.line == spec_line(toy, "resolution = 64")


def test_a_huge_caption_file_is_capped_with_a_warning_and_shown_short(toy):
    from rich.console import Console

    from dbspec.compiler.datasets import MAX_CAPTION_CHARS
    from dbspec.plan.summary import render_summary

    (toy / "inst" / "a.txt").write_text("ohwx toy, " * 1_100_000)  # 11 MB on one line
    (toy / "inst" / "b.txt").write_text("ohwx toy " + "é" * 20_000)  # a long line of two-byte characters
    (toy / "inst" / "c.txt").write_text("ohwx toy from above")
    write_spec(toy, {"captions": "textfile", "prompt": None})
    planned = compile_in(toy)
    assert codes(planned) == ["DBS325", "DBS325"]
    assert "more than 1048576 bytes" in planned.diagnostics[0].message
    assert "a 20009-character first line" in planned.diagnostics[1].message
    plan = planned.plan
    assert max(len(c) for c in captions(plan).values()) == MAX_CAPTION_CHARS
    console = Console(file=io.StringIO(), width=120)
    render_summary(plan, console)  # took minutes: rich laid out an 11 MB table cell
    shown = console.file.getvalue()
    assert "ohwx toy, ohwx toy" in shown and "…" in shown and len(shown) < 20_000


def test_denoiser_norms_on_a_detected_transformer_family_are_refused(toy):
    """adapter.denoiser_norms (LyCORIS train_norm's U-Net offsets) on a family dbspec detects as Flux:
    DBS587 at plan time (`dbspec check` refuses a spelled-out family), where the run would fail building
    the model; the same spec on the tiny SD 1.x U-Net plans."""
    adapter = {"kind": "lora", "denoiser_norms": ["norm1", "norm2"]}
    write_spec(toy, {}, model={"base": "builtin:tiny-flux"}, adapter=adapter)
    planned = compile_in(toy)
    assert planned.plan is None and "DBS587" in codes(planned, "error")
    write_spec(toy, {}, model={"base": "builtin:tiny-sd1"}, adapter=adapter)
    assert planned_ok(toy).adapter.denoiser_norms == ("norm1", "norm2")

"""`layout = "kohya_folders"`: kohya's `N_class tokens` sub-folders expanded at plan time, with kohya's rules
(config_util.generate_dreambooth_subsets_config_by_subdirs, DreamBoothDataset.read_caption)
as the expectation."""

from __future__ import annotations

from typer.testing import CliRunner

from convert_kit import GPU, SD15, empty_hub_cache, images, plan_at, write  # noqa: F401
from dbspec.cli import app
from dbspec.frontend import plan_spec


def _spec(tmp_path, extra: str = "") -> object:
    return write(
        tmp_path / "spec.toml",
        f'spec_version = 1\n[model]\nbase = "{SD15}"\n[[datasets]]\nname = "subject"\npath = "train"\n'
        'layout = "kohya_folders"\ncaptions = "textfile"\ncaption_extension = ".txt"\n'
        f"resolution = 512\n{extra}"
        "[schedule]\nsteps = 50\n",
    )


def _kohya_expectation(name: str) -> tuple[int, str] | None:
    """kohya's folder-name rule, written out: int(first `_` field) repeats, the rest the class tokens."""
    tokens = name.split("_")
    try:
        repeats = int(tokens[0])
    except ValueError:
        return None
    return (repeats, "_".join(tokens[1:])) if repeats >= 1 else None


def test_sub_folders_give_repeats_and_caption_fallbacks(tmp_path):
    train = tmp_path / "train"
    names = ["10_sks dog", "5_ohwx_cat", "4000", "notes", "0_off"]
    for name in names:
        images(train / name, 2, (512, 512), prefix=name.replace(" ", "-"))
    write(train / "5_ohwx_cat" / "5_ohwx_cat000.txt", "a caption file wins\n")
    images(train, 1, (512, 512), prefix="loose")
    plan = plan_at(_spec(tmp_path))
    d = plan.datasets[0]
    expected = {n: _kohya_expectation(n) for n in names if _kohya_expectation(n)}
    assert [(f.name, f.repeats, f.prompt, f.images) for f in d.folders] == [
        (n, r, t, 2) for n, (r, t) in sorted(expected.items())
    ]
    by_rel = {img.rel: (img.repeats, img.caption) for img in d.images}
    assert by_rel["10_sks dog/10_sks-dog000.png"] == (10, "sks dog")
    assert by_rel["5_ohwx_cat/5_ohwx_cat000.png"] == (5, "a caption file wins")
    assert by_rel["5_ohwx_cat/5_ohwx_cat001.png"] == (5, "ohwx_cat")
    assert by_rel["4000/4000000.png"] == (4000, "")  # kohya trains it with an empty caption
    assert len(d.images) == 6 and not any(rel.startswith(("notes/", "0_off/", "loose")) for rel in by_rel)
    planned = plan_spec(tmp_path / "spec.toml", GPU)
    warned = "\n".join(x.message for x in planned.diagnostics if x.severity == "warning")
    assert "`notes` is not used" in warned and "`0_off` is not used" in warned and "directly in it" in warned
    assert "`4000` names no class tokens" in warned


def test_face_crop_names_find_the_caption_of_the_whole_image(tmp_path):
    folder = tmp_path / "train" / "3_ohwx"
    images(folder, 1, (512, 512), prefix="face")
    (folder / "face000.png").rename(folder / "face_120_80_64_64.png")
    write(folder / "face.txt", "ohwx person, close-up")
    plan = plan_at(_spec(tmp_path))
    img = plan.datasets[0].images[0]
    assert img.caption == "ohwx person, close-up" and img.path.endswith("face_120_80_64_64.png")


def test_dataset_repeats_multiply_and_plan_lists_the_folders(tmp_path):
    images(tmp_path / "train" / "10_sks dog", 2, (512, 512))
    spec = _spec(tmp_path, "repeats = 2\n")
    plan = plan_at(spec)
    assert {img.repeats for img in plan.datasets[0].images} == {20}
    result = CliRunner().invoke(app, ["plan", str(spec), "--target", "cuda:24GB"])
    assert result.exit_code == 0, result.output
    assert "kohya folders" in result.output and "10_sks dog" in result.output


def test_no_kohya_sub_folder_is_an_error(tmp_path):
    images(tmp_path / "train", 2, (512, 512))
    planned = plan_spec(_spec(tmp_path), GPU)
    assert planned.plan is None
    assert any(x.code == "DBS302" and "N_class tokens" in x.message for x in planned.diagnostics)


def test_masks_folder_mirrors_the_sub_folders(tmp_path):
    images(tmp_path / "train" / "2_ohwx", 2, (512, 512))
    images(tmp_path / "masks" / "2_ohwx", 2, (512, 512))
    plan = plan_at(_spec(tmp_path, 'masks = "masks"\n'))
    assert [
        img.mask.endswith("masks/2_ohwx/" + img.rel.split("/")[1]) for img in plan.datasets[0].images
    ] == [
        True,
        True,
    ]

"""`metadata = "meta.json"`: kohya's fine-tuning dataset (FineTuningDataset) at plan time. The expected
captions, repeats and buckets were computed by kohya's own FineTuningDataset + make_buckets (sd-scripts
48d368f, library/train_util.py:2187) on these images and metadata files, in a scratch folder."""

from __future__ import annotations

import json

from PIL import Image

from convert_kit import GPU, SD15, plan_at, write
from dbspec.frontend import check_spec, plan_spec

SIZES = {"a.png": (640, 480), "b.jpg": (512, 768), "c.png": (300, 500), "d.webp": (1024, 512)}


def _images(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for name, size in SIZES.items():
        Image.new("RGB", size, (10, 20, 30)).save(train / name)
    return train


def _metadata(tmp_path, train) -> None:
    # as kohya's merge_captions_to_metadata.py / merge_dd_tags_to_metadata.py write it (json.dumps, indent=2):
    # relative keys with the extension and one absolute key (--full_path)
    meta = {
        "a.png": {"caption": "a photo of ohwx dog", "tags": "dog, grass, outdoors"},
        str(train / "b.jpg"): {"caption": "ohwx dog sitting"},
        "c.png": {"tags": "dog, close-up"},
        "d.webp": {"caption": "", "tags": ""},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")


def _spec(tmp_path, extra: str = "", buckets: str = "") -> object:
    return write(
        tmp_path / "spec.toml",
        f'spec_version = 1\n[model]\nbase = "{SD15}"\n[[datasets]]\nname = "ft"\npath = "train"\n'
        f'metadata = "meta.json"\nrepeats = 3\nresolution = 512\n{extra}'
        f"[buckets]\nmin_size = 256\nmax_size = 1024\nstep = 64\n{buckets}"
        "[schedule]\nsteps = 50\n",
    )


def _by_name(plan) -> dict:
    return {
        img.rel.rpartition("/")[2]: (img.caption, img.repeats, img.bucket) for img in plan.datasets[0].images
    }


def test_captions_repeats_and_buckets_are_kohyas(tmp_path):
    _metadata(tmp_path, _images(tmp_path))
    plan = plan_at(_spec(tmp_path))
    assert _by_name(plan) == {  # kohya: caption + caption_separator (",") + tags; tags alone; empty
        "a.png": ("a photo of ohwx dog,dog, grass, outdoors", 3, (576, 448)),
        "b.jpg": ("ohwx dog sitting", 3, (384, 640)),
        "c.png": ("dog, close-up", 3, (384, 640)),
        "d.webp": ("", 3, (704, 320)),
    }
    # the file's order, and images inside `path` keep a folder-relative name
    assert [img.rel for img in plan.datasets[0].images] == ["a.png", "b.jpg", "c.png", "d.webp"]


def test_separator_no_upscale_and_square_are_kohyas(tmp_path):
    _metadata(tmp_path, _images(tmp_path))
    plan = plan_at(_spec(tmp_path, 'caption_separator = ", "\n'))
    assert _by_name(plan)["a.png"][0] == "a photo of ohwx dog, dog, grass, outdoors"
    plan = plan_at(_spec(tmp_path, buckets="no_upscale = true\n"))
    assert {k: v[2] for k, v in _by_name(plan).items()} == {
        "a.png": (512, 384),
        "b.jpg": (384, 576),
        "c.png": (256, 448),
        "d.webp": (640, 320),
    }
    plan = plan_at(_spec(tmp_path, buckets='mode = "square"\n'))
    assert {v[2] for v in _by_name(plan).values()} == {(512, 512)}


def test_wildcard_puts_the_tags_after_every_caption_line(tmp_path):
    _images(tmp_path)
    meta = {
        "a.png": {"caption": "line one\nline two\n", "tags": "t1\nt2"},
        "c.png": {"caption": "", "tags": "x"},  # kohya: no caption line, so the tags are lost too
        "d.webp": {"caption": "only\ncaption"},
        "b.jpg": {"caption": "cap", "tags": "tag"},
    }
    (tmp_path / "meta.json").write_text(json.dumps(meta, indent=2))
    plan = plan_at(_spec(tmp_path, "enable_wildcard = true\n"))
    assert {k: v[0] for k, v in _by_name(plan).items()} == {
        "a.png": "line one,t1,t2\nline two,t1,t2",
        "b.jpg": "cap,tag",
        "c.png": "",
        "d.webp": "only\ncaption",
    }


def test_stem_keys_find_the_image_and_jsonl_reads(tmp_path):
    train = _images(tmp_path)
    # merge_captions_to_metadata.py without --full_path writes the file stem as the key
    meta = {"a": {"caption": "first"}, "c": {"caption": "third", "tags": "x"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta, indent=2))
    plan = plan_at(_spec(tmp_path))
    assert {k: v[0] for k, v in _by_name(plan).items()} == {"a.png": "first", "c.png": "third,x"}
    lines = [
        {"image_path": str(train / "d.webp"), "caption": "jsonl caption", "image_size": [1024, 512]},
        {"image_path": "b.jpg", "caption": "b", "tags": "t"},
    ]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    plan = plan_at(
        write(tmp_path / "spec.toml", (tmp_path / "spec.toml").read_text().replace("meta.json", "meta.jsonl"))
    )
    assert _by_name(plan) == {"d.webp": ("jsonl caption", 3, (704, 320)), "b.jpg": ("b,t", 3, (384, 640))}


def _diagnostics(spec):
    planned = plan_spec(spec, GPU)
    return planned.plan, [(d.code, d.severity, d.message, d.help) for d in planned.diagnostics]


def test_missing_images_and_bad_files_name_the_file(tmp_path):
    _images(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"a.png": {"caption": "x"}, "gone": {}, "sub/z.png": {}}))
    plan, diags = _diagnostics(_spec(tmp_path))
    assert plan is None
    (missing,) = [d for d in diags if d[0] == "DBS338"]
    assert "2 image(s) listed in" in missing[2] and "`gone`, `sub/z.png`" in missing[2]
    assert "meta.json" in missing[2] and "path" in missing[3]
    for text, expect in (
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "is not a JSON object"),
        ("{}", "lists no image"),
        ('{"a.png": "caption"}', "the entry `a.png` is not an object"),
        ('{"a.png": {"image_size": [1, 2, 3]}}', "`image_size` that is not [width, height]"),
    ):
        (tmp_path / "meta.json").write_text(text)
        plan, diags = _diagnostics(_spec(tmp_path))
        assert plan is None
        assert any(d[0] == "DBS337" and expect in d[2] and "meta.json" in d[2] for d in diags), (text, diags)
    (tmp_path / "meta.json").unlink()
    plan, diags = _diagnostics(_spec(tmp_path))
    assert plan is None and any(d[0] == "DBS337" and "does not exist" in d[2] for d in diags)


def test_image_size_that_differs_from_the_file_warns(tmp_path):
    _images(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"a.png": {"caption": "x", "image_size": [100, 100]}}))
    plan, diags = _diagnostics(_spec(tmp_path))
    assert plan is not None
    assert any(
        d[0] == "DBS337" and d[1] == "warning" and "says 100x100, the file is 640x480" in d[2] for d in diags
    )


def test_folder_options_do_not_apply(tmp_path):
    _metadata(tmp_path, _images(tmp_path))
    checked = check_spec(_spec(tmp_path, 'captions = "textfile"\nrecursive = true\n'))
    found = [(d.code, d.path) for d in checked.diagnostics if d.severity == "error"]
    assert ("DBS227", "datasets[0].captions") in found and ("DBS227", "datasets[0].recursive") in found


def test_a_broken_listed_image_is_an_error_or_skipped(tmp_path):
    train = _images(tmp_path)
    (train / "c.png").write_bytes(b"not a png")
    (tmp_path / "meta.json").write_text(json.dumps({"a.png": {"caption": "x"}, "c.png": {"caption": "y"}}))
    plan, diags = _diagnostics(_spec(tmp_path))
    assert plan is None and any(d[1] == "error" and "c.png" in d[2] for d in diags), diags
    plan, diags = _diagnostics(_spec(tmp_path, 'on_bad_image = "skip"\n'))
    assert [img.rel for img in plan.datasets[0].images] == ["a.png"]
    assert any(d[1] == "warning" and "c.png" in d[2] for d in diags)


def test_the_output_folder_must_not_hold_the_metadata_file(tmp_path):
    _metadata(tmp_path, _images(tmp_path))
    spec = _spec(tmp_path, extra="", buckets="").read_text().replace('"meta.json"', '"out/meta.json"')
    checked = check_spec(write(tmp_path / "spec.toml", spec + '[output]\ndir = "out"\n'))
    assert any(d.code == "DBS225" and "datasets[0].metadata" in d.message for d in checked.diagnostics)

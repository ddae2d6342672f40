"""kohya fine-tuning datasets (`--in_json` with `--train_data_dir`, dataset-config subsets with
`metadata_file`) convert to datasets with `metadata`. Expected captions, repeats and buckets: kohya's own
FineTuningDataset and make_buckets (sd-scripts 48d368f, library/train_util.py:2187) run on the same images
and metadata files."""

from __future__ import annotations

import json

from PIL import Image

from convert_kit import (
    SD15,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    kohya,
    messages,
    out_path,
    plan_of,
    write,
)

LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"
SIZES = {"a.png": (640, 480), "b.jpg": (512, 768), "c.png": (300, 500), "d.webp": (1024, 512)}
# kohya FineTuningDataset + make_buckets (resolution 512, buckets 256..1024 step 64, num_repeats 3)
KOHYA = {
    "a.png": ("a photo of ohwx dog,dog, grass, outdoors", 3, (576, 448)),
    "b.jpg": ("ohwx dog sitting", 3, (384, 640)),
    "c.png": ("dog, close-up", 3, (384, 640)),
    "d.webp": ("", 3, (704, 320)),
}


def _data(tmp_path, folder: str = "train", meta: str = "meta.json"):
    train = tmp_path / folder
    train.mkdir()
    for name, size in SIZES.items():
        Image.new("RGB", size, (10, 20, 30)).save(train / name)
    # as merge_captions_to_metadata.py / merge_dd_tags_to_metadata.py write it: json.dumps(indent=2)
    entries = {
        "a.png": {"caption": "a photo of ohwx dog", "tags": "dog, grass, outdoors"},
        str(train / "b.jpg"): {"caption": "ohwx dog sitting"},
        "c.png": {"tags": "dog, close-up"},
        "d.webp": {"caption": "", "tags": ""},
    }
    (tmp_path / meta).write_text(json.dumps(entries, indent=2), encoding="utf-8")
    return train


def _by_name(plan, index: int = 0) -> dict:
    return {
        img.rel.rpartition("/")[2]: (img.caption, img.repeats, img.bucket)
        for img in plan.datasets[index].images
    }


def test_in_json_with_train_data_dir_trains_kohyas_captions_repeats_and_buckets(tmp_path):
    _data(tmp_path)
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --in_json meta.json --train_data_dir train --dataset_repeats 3 --resolution 512 "
        "--enable_bucket --train_batch_size 2 --max_train_epochs 2",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, "in_json") == "mapped" and fate(outcome, "dataset_repeats") == "mapped"
    spec = out_path(tmp_path).read_text()
    assert 'metadata = "../meta.json"' in spec and 'path = "../train"' in spec and "repeats = 3" in spec
    plan = plan_of(outcome, tmp_path)
    assert _by_name(plan) == KOHYA
    # kohya's epoch: per bucket ceil(samples / 2): 576x448 3 -> 2, 384x640 6 -> 3, 704x320 3 -> 2; two epochs
    assert plan.schedule.total_steps == 14


def test_sdxl_full_fine_tune_reads_in_json_and_ignores_reg_data_dir(tmp_path):
    _data(tmp_path)
    outcome = kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path {SDXL} --in_json meta.json "
        '--train_data_dir train --reg_data_dir reg --resolution 512 --enable_bucket --caption_separator ", " '
        "--max_train_steps 10",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert "DBS405" in codes(outcome) and "no reg images" in messages(outcome, "DBS405")
    plan = plan_of(outcome, tmp_path)
    assert [d.role for d in plan.datasets] == ["instance"]
    assert _by_name(plan)["a.png"][0] == "a photo of ohwx dog, dog, grass, outdoors"
    assert {k: v[1] for k, v in _by_name(plan).items()} == dict.fromkeys(SIZES, 1)  # dataset_repeats 1


def test_dataset_config_metadata_file_subsets(tmp_path):
    _data(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    Image.new("RGB", (512, 512)).save(other / "e.png")
    # an absolute key and no image_dir; caption options from [general]
    write(
        tmp_path / "abs.json", json.dumps({str(other / "e.png"): {"caption": "e", "tags": "x\ny"}}, indent=2)
    )
    write(
        tmp_path / "d.toml",
        "[general]\nenable_bucket = true\nshuffle_caption = true\nkeep_tokens = 1\n"
        "[[datasets]]\nresolution = 512\nbatch_size = 1\n"
        '[[datasets.subsets]]\nimage_dir = "train"\nmetadata_file = "meta.json"\nnum_repeats = 3\n'
        '[[datasets.subsets]]\nmetadata_file = "abs.json"\nenable_wildcard = true\ncaption_prefix = "pre"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --max_train_steps 10")
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert _by_name(plan, 0) == KOHYA
    (e,) = plan.datasets[1].images
    # kohya: tags' newlines become the separator, after every caption line; the prefix with a space
    assert e.caption == "pre e,x,y" and e.repeats == 1 and plan.datasets[1].path == str(other)
    assert (
        plan.datasets[0].caption_processing.shuffle_caption
        and plan.datasets[0].caption_processing.keep_tokens == 1
    )


def test_stem_keys_are_found_with_a_difference_note(tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    Image.new("RGB", (512, 512)).save(train / "a.png")
    write(
        tmp_path / "meta.json", json.dumps({"a": {"caption": "x", "train_resolution": [512, 512]}}, indent=2)
    )
    npz = train / "a_0512x0512_sd.npz"
    npz.write_bytes(b"")
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --in_json meta.json --train_data_dir train --resolution 512 --max_train_steps 4",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert "file stem" in messages(outcome, "DBS404")
    spec = out_path(tmp_path).read_text()
    assert "train_resolution" in spec and ".npz latents" in spec  # the notes in the header
    assert _by_name(plan_of(outcome, tmp_path)) == {"a.png": ("x", 1, (512, 512))}  # buckets off


def test_rejections_and_missing_files(tmp_path):
    _data(tmp_path)
    # kohya asserts image_dir for relative keys
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nmetadata_file = "meta.json"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --max_train_steps 4")
    assert outcome.exit_code == 1 and "image_dir" in messages(outcome, "DBS402")
    # FineTuningDataset never splits: its validation set is the whole training set
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\nvalidation_split = 0.25\n[[datasets.subsets]]\nimage_dir = "train"\n'
        'metadata_file = "meta.json"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{LORA} --max_train_steps 4")
    assert outcome.exit_code == 1 and "does not split" in messages(outcome, "DBS403")
    # a metadata file that is not on this machine: the spec is written, the plan reads it
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --in_json /elsewhere/meta.json --train_data_dir train --resolution 512 "
        "--max_train_steps 4",
    )
    assert outcome.exit_code == 0 and "DBS406" in codes(outcome)
    assert 'metadata = "/elsewhere/meta.json"' in out_path(tmp_path).read_text()
    # broken JSON: kohya's json.load raises
    write(tmp_path / "meta.json", "{")
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --in_json meta.json --train_data_dir train --resolution 512 --max_train_steps 4",
    )
    assert outcome.exit_code == 1 and "not valid JSON" in messages(outcome, "DBS402")

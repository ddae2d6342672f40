"""kohya caption processing converts one for one: realistic configs using kohya's caption options (dataset
TOML at subset, dataset and general level, --config_file, the command line) convert without
--allow-unsupported, pass `dbspec check`, and the plan holds kohya's effective values (subset > dataset >
general > command line > default, config_util's fallback order); a fraction of token_warmup_step is resolved
as kohya does, floor(f x max steps).
"""

from __future__ import annotations

import math

from convert_kit import (
    SD15,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)

from dbspec.plan.model import CaptionPlan

BASE = f"train_db.py --pretrained_model_name_or_path {SD15}"
OFF = CaptionPlan()


def options(plan, i: int) -> dict:
    """The caption options of dataset i that differ from kohya's defaults."""
    p = plan.datasets[i].caption_processing
    names = ("varying_images", "varying_samples_per_epoch", "empty_text_key")
    return {
        f.name: getattr(p, f.name)
        for f in p.__attrs_attrs__
        if f.name not in names and getattr(p, f.name) != getattr(OFF, f.name)
    }


def converted(tmp_path, **request):
    outcome = kohya(tmp_path, **request)
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), outcome.text
    return outcome, plan_of(outcome, tmp_path)


def test_command_line_shuffle_keep_tokens_and_dropout(tmp_path):
    images(
        tmp_path / "img" / "10_ohwx dog",
        3,
        (512, 512),
        caption="ohwx dog, sitting, grass",
        caption_ext=".txt",
    )
    cmd = (
        f"{BASE} --train_data_dir img --resolution 512 --caption_extension .txt --max_train_steps 300 "
        "--shuffle_caption --keep_tokens 1 --caption_dropout_rate 0.05"
    )
    outcome, plan = converted(tmp_path, command=cmd)
    assert options(plan, 0) == {"shuffle_caption": True, "keep_tokens": 1, "caption_dropout_rate": 0.05}
    assert fate(outcome, "shuffle_caption") == "mapped"
    assert plan.datasets[0].caption_processing.varying_images == 3  # shuffled: encoded per step


def test_dataset_toml_general_level_with_a_regularisation_subset(tmp_path):
    images(tmp_path / "train", 4, (512, 512), caption="ohwx woman, red hair, smiling", caption_ext=".txt")
    images(tmp_path / "reg", 4, (512, 512))
    write(
        tmp_path / "dataset.toml",
        """
[general]
shuffle_caption = true
caption_extension = ".txt"
keep_tokens = 1

[[datasets]]
resolution = 512
batch_size = 2

  [[datasets.subsets]]
  image_dir = "train"
  num_repeats = 10

  [[datasets.subsets]]
  image_dir = "reg"
  class_tokens = "woman"
  is_reg = true
  keep_tokens = 0
""",
    )
    _, plan = converted(
        tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{BASE} --max_train_steps 400"
    )
    assert options(plan, 0) == {"shuffle_caption": True, "keep_tokens": 1}
    assert options(plan, 1) == {"shuffle_caption": True}  # the subset's keep_tokens = 0 wins
    assert plan.datasets[1].caption_processing.varying_images == 0  # one-tag class captions never change
    assert plan.datasets[0].caption_processing.varying_images == 4
    assert plan.train_text_encoder and not plan.cache.text_embeddings  # train_db trains the text encoder


def test_config_file_tag_dropout_every_n_epochs_and_token_warmup_fraction(tmp_path):
    images(
        tmp_path / "img",
        3,
        (512, 512),
        caption="1girl, solo, long hair, looking at viewer",
        caption_ext=".txt",
    )
    write(
        tmp_path / "dataset.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 5\n'
        'caption_extension = ".txt"\n',
    )
    write(
        tmp_path / "config.toml",
        """
[training]
max_train_steps = 1000
[dataset_arguments]
shuffle_caption = true
caption_tag_dropout_rate = 0.1
caption_dropout_every_n_epochs = 5
token_warmup_min = 2
token_warmup_step = 0.2
""",
    )
    _, plan = converted(
        tmp_path, dataset_config=tmp_path / "dataset.toml", config_file=tmp_path / "config.toml", command=BASE
    )
    assert plan.schedule.total_steps == 1000
    assert options(plan, 0) == {
        "shuffle_caption": True,
        "caption_tag_dropout_rate": 0.1,
        "caption_dropout_every_n_epochs": 5,
        "token_warmup_min": 2,
        "token_warmup_step": float(math.floor(0.2 * 1000)),
    }


def test_keep_tokens_separator_secondary_separator_and_wildcards_per_subset(tmp_path):
    folder = tmp_path / "chars"
    images(folder, 2, (512, 512))
    (folder / "img000.txt").write_text(
        "masterpiece, ohwx ||| {red|blue} dress, smile;;;open mouth ||| watermark\nohwx, simple background\n"
    )
    (folder / "img001.txt").write_text("ohwx ||| standing, {day|night}\n")
    write(
        tmp_path / "dataset.toml",
        """
[general]
caption_extension = ".txt"

[[datasets]]
resolution = 512
shuffle_caption = true

  [[datasets.subsets]]
  image_dir = "chars"
  keep_tokens_separator = "|||"
  secondary_separator = ";;;"
  enable_wildcard = true
  caption_tag_dropout_rate = 0.15
""",
    )
    _, plan = converted(
        tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{BASE} --max_train_steps 100"
    )
    assert options(plan, 0) == {
        "shuffle_caption": True,
        "keep_tokens_separator": "|||",
        "secondary_separator": ";;;",
        "enable_wildcard": True,
        "caption_tag_dropout_rate": 0.15,
    }
    first = next(img for img in plan.datasets[0].images if img.rel == "img000.png")
    assert first.caption.count("\n") == 1  # wildcards read every line, as kohya does


def test_two_datasets_with_their_own_options_and_a_custom_separator(tmp_path):
    images(tmp_path / "a", 2, (512, 512), caption="ohwx; cat; sofa", caption_ext=".txt")
    images(tmp_path / "b", 2, (512, 512), caption="ohwx, cat, garden", caption_ext=".txt")
    write(
        tmp_path / "dataset.toml",
        """
[general]
caption_extension = ".txt"
caption_dropout_rate = 0.1

[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = "a"
  shuffle_caption = true
  caption_separator = ";"

[[datasets]]
resolution = 512
caption_dropout_rate = 0.0
  [[datasets.subsets]]
  image_dir = "b"
  caption_dropout_every_n_epochs = 3
""",
    )
    command = f"{BASE} --max_train_steps 100 --stop_text_encoder_training -1"  # frozen: text cache on
    _, plan = converted(tmp_path, dataset_config=tmp_path / "dataset.toml", command=command)
    assert options(plan, 0) == {
        "shuffle_caption": True,
        "caption_separator": ";",
        "caption_dropout_rate": 0.1,
    }
    assert options(plan, 1) == {"caption_dropout_every_n_epochs": 3}
    b = plan.datasets[1].caption_processing
    assert b.varying_images == 0 and b.empty_text_key  # pure dropout: the captions and the empty one cached


def test_values_kohya_accepts_past_the_bounds_convert_to_the_bound_that_acts_the_same(tmp_path):
    images(tmp_path / "img" / "4_ohwx", 2, (512, 512), caption="ohwx, hat", caption_ext=".txt")
    cmd = (
        f"{BASE} --train_data_dir img --resolution 512 --caption_extension .txt --max_train_steps 50 "
        "--caption_tag_dropout_rate 1.5 --keep_tokens -1 --shuffle_caption"
    )
    outcome, plan = converted(tmp_path, command=cmd)
    assert options(plan, 0) == {"shuffle_caption": True, "caption_tag_dropout_rate": 1.0}
    assert fate(outcome, "keep_tokens") == "mapped"  # -1 keeps nothing, like 0: not written
    assert "kohya behaves the same" in outcome.conversion.reports["caption_tag_dropout_rate"].note


def test_options_that_cannot_act_are_inert_and_not_written(tmp_path):
    images(tmp_path / "img" / "4_ohwx", 2, (512, 512), caption="ohwx ||| hat", caption_ext=".txt")
    cmd = (
        f"{BASE} --train_data_dir img --resolution 512 --caption_extension .txt --max_train_steps 50 "
        "--keep_tokens 2 --keep_tokens_separator '|||' --token_warmup_min 3"
    )
    outcome, plan = converted(tmp_path, command=cmd)
    assert options(plan, 0) == {}
    assert {fate(outcome, k) for k in ("keep_tokens", "keep_tokens_separator", "token_warmup_min")} == {
        "inert"
    }
    assert plan.datasets[0].images[0].caption.startswith("ohwx ||| hat")  # trains as written, as in kohya


def test_an_empty_separator_with_shuffling_is_refused_as_kohya_fails(tmp_path):
    images(tmp_path / "img" / "4_ohwx", 2, (512, 512), caption="ohwx, hat", caption_ext=".txt")
    write(tmp_path / "config.toml", 'caption_separator = ""\nshuffle_caption = true\n')
    cmd = f"{BASE} --train_data_dir img --resolution 512 --caption_extension .txt"
    outcome = kohya(tmp_path, command=cmd, config_file=tmp_path / "config.toml")
    assert outcome.exit_code == 1 and not outcome.written
    assert "empty separator" in messages(outcome, "DBS402")


def test_sdxl_text_encoder_output_cache_with_shuffled_captions_is_refused_as_kohya_asserts(tmp_path):
    images(tmp_path / "img" / "4_ohwx", 2, (1024, 1024), caption="ohwx, hat", caption_ext=".txt")
    cmd = (
        f"sdxl_train_network.py --pretrained_model_name_or_path {SDXL} --network_module networks.lora "
        "--train_data_dir img --resolution 1024 --caption_extension .txt --network_train_unet_only "
        "--cache_text_encoder_outputs"
    )
    assert kohya(tmp_path, command=cmd).exit_code == 0
    refused = kohya(tmp_path, command=cmd + " --shuffle_caption")
    assert refused.exit_code == 1 and "shuffle_caption" in messages(refused, "DBS402")

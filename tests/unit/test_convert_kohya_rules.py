"""kohya inputs that kohya rejects, settings dbspec cannot express, and settings that convert with a stated
difference. Rejected inputs write nothing and name kohya's rule; with --allow-unsupported the spec is written
without the inexpressible settings and still compiles."""

from __future__ import annotations

from convert_kit import (
    GPU,
    SD15,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    repeats,
    write,
)

from dbspec.frontend import plan_spec

BASE = f"train_db.py --pretrained_model_name_or_path {SD15}"


def test_is_reg_with_conditioning_data_dir_states_kohyas_rule(tmp_path):
    images(tmp_path / "img", 1, (512, 512))
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'conditioning_data_dir = "mask"\nis_reg = true\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{BASE} --masked_loss")
    assert outcome.exit_code == 1 and not outcome.written and not out_path(tmp_path).exists()
    text = messages(outcome, "DBS402")
    assert "is_reg" in text and "ControlNet" in text and "ConfigSanitizer" in text


def test_conditioning_data_dir_without_masked_loss_is_rejected(tmp_path):
    images(tmp_path / "img", 1, (512, 512))
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'conditioning_data_dir = "mask"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=BASE)
    assert outcome.exit_code == 1 and "needs --masked_loss" in messages(outcome, "DBS402")


def test_bucket_reso_steps_must_divide_by_64_for_train_db(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path, command=f"{BASE} --train_data_dir d --resolution 512 --enable_bucket --bucket_reso_steps 32"
    )
    assert outcome.exit_code == 1
    assert "bucket_reso_steps % 64 == 0" in messages(outcome, "DBS402")


def test_resolution_outside_the_bucket_range_is_kohyas_assert(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path, command=f"{BASE} --train_data_dir d --resolution 512 --enable_bucket --min_bucket_reso 640"
    )
    assert outcome.exit_code == 1 and "min(resolution) >= min_bucket_reso" in messages(outcome, "DBS402")


def test_warmup_with_the_constant_schedule_is_rejected_as_kohya_does(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(tmp_path, command=f"{BASE} --train_data_dir d --resolution 512 --lr_warmup_steps 100")
    assert outcome.exit_code == 1 and "num_warmup_steps" in messages(outcome, "DBS402")


def test_wrong_types_in_dataset_config_and_config_file(tmp_path):
    images(tmp_path / "img", 1, (512, 512))
    write(
        tmp_path / "d.toml",
        "[[datasets]]\nresolution = 512\nvalidation_split = 0\n[[datasets.subsets]]\n"
        'image_dir = "img"\nflip_aug = 1\nnum_repetas = 3\n',
    )
    write(tmp_path / "c.toml", "resolution = 512\n")
    outcome = kohya(
        tmp_path, dataset_config=tmp_path / "d.toml", config_file=tmp_path / "c.toml", command=BASE
    )
    text = messages(outcome, "DBS402")
    assert "expected bool" in text and "expected float" in text and "extra keys not allowed" in text
    assert 'must be a string such as "512"' in text


def test_unsupported_settings_stop_the_conversion_unless_allowed(tmp_path):
    images(tmp_path / "d" / "5_ohwx", 2, (512, 512))
    cmd = (
        f"{BASE} --train_data_dir d --resolution 512 --initial_step 10 "
        "--optimizer_type pytorch_optimizer.Ranger21"  # kohya imports it, dbspec has no Ranger21
    )
    strict = kohya(tmp_path, command=cmd)
    assert strict.exit_code == 1 and not strict.written
    assert {fate(strict, k) for k in ("initial_step", "optimizer_type")} == {"unsupported"}
    allowed = kohya(tmp_path, command=cmd, allow=True)
    assert allowed.exit_code == 0 and "DBS403" in codes(allowed)
    plan = plan_of(allowed, tmp_path)
    assert plan.optimizer.kind == "adamw" and plan.loss.kind == "mse" and repeats(plan, 0) == [5, 5]
    assert "unsupported (left out): initial_step" in allowed.text


def test_non_square_resolution_converts_when_the_area_is_square(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (1024, 256))
    good = kohya(tmp_path, command=f"{BASE} --train_data_dir d --resolution 1024,256 --enable_bucket")
    plan = plan_of(good, tmp_path)
    assert plan.datasets[0].resolution == 512  # kohya's buckets use only the area 1024 x 256 = 512^2
    other = kohya(tmp_path, command=f"{BASE} --train_data_dir d --resolution 768,512 --enable_bucket")
    plan = plan_of(other, tmp_path)  # not a square area: kept as W x H (test_convert_kohya_leftovers.py)
    assert (plan.datasets[0].resolution, plan.datasets[0].resolution_height) == (768, 512)


def test_missing_captions_without_class_tokens_train_with_an_empty_caption(tmp_path):
    """kohya's DreamBoothDataset: "neither caption file nor class tokens are found. use empty caption" (a
    warning per image): missing_captions = "empty" (issue 12; was DBS403), one DBS320 warning at plan time;
    the captioned images keep their own."""
    images(tmp_path / "plain", 3, (512, 512))
    (tmp_path / "plain" / "img000.caption").write_text("a photo of ohwx dog on grass\n", encoding="utf-8")
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "plain"\n'
        'caption_extension = ".caption"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=BASE)
    assert outcome.exit_code == 0 and not {"DBS402", "DBS403"} & codes(outcome), outcome.text
    assert 'missing_captions = "empty"' in out_path(tmp_path).read_text(encoding="utf-8")
    planned = plan_spec(out_path(tmp_path), GPU)
    assert planned.plan is not None
    captions = {img.rel: img.caption for img in planned.plan.datasets[0].images}
    assert captions == {"img000.png": "a photo of ohwx dog on grass", "img001.png": "", "img002.png": ""}
    said = [d for d in planned.diagnostics if d.code == "DBS320"]
    assert [d.severity for d in said] == ["warning"] and "2 image(s)" in said[0].message


def test_exif_rotation_and_text_encoder_stop_are_converted(tmp_path):
    images(tmp_path / "d" / "2_ohwx", 2, (640, 480), orientation=6)
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --enable_bucket "
        "--max_train_steps 300 --stop_text_encoder_training 0 --learning_rate_te 1e-7",
    )
    plan = plan_of(outcome, tmp_path)
    assert "EXIF rotation" not in messages(outcome, "DBS404")
    assert plan.datasets[0].images[0].size == (640, 480)  # the stored pixels, as kohya trains them
    assert not plan.train_text_encoder  # kohya stops the text encoder before the first step
    assert fate(outcome, "learning_rate_te") == "inert"


def test_unknown_options_and_type_errors_on_the_command_line(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --max_train_steps ten "
        "--mixed_precision fp32 --not_an_option 3",
    )
    assert outcome.exit_code == 1
    assert "invalid int value: 'ten'" in messages(outcome, "DBS402")
    assert "invalid choice 'fp32'" in messages(outcome, "DBS402")
    assert fate(outcome, "not_an_option") == "unsupported"


def test_every_given_key_is_in_the_report(tmp_path):
    images(tmp_path / "img", 2, (512, 512))
    write(
        tmp_path / "d.toml",
        "[general]\nflip_aug = false\ncache_info = true\n[[datasets]]\nresolution = 512\n"
        'validation_seed = 3\n[[datasets.subsets]]\nimage_dir = "img"\n'
        'class_tokens = "sks"\nkeep_tokens = 2\n',
    )
    write(tmp_path / "c.toml", '[x]\nhighvram = true\nlog_prefix = "a"\nsave_state = true\n')
    cmd = f"{BASE} --dataset_config d.toml --config_file c --xformers --seed 1 --sample_sampler euler"
    outcome = kohya(tmp_path, command=cmd)
    assert outcome.exit_code == 0, errors(outcome)
    keys = set(outcome.conversion.reports)
    assert {
        "general.flip_aug",
        "general.cache_info",
        "datasets[0].validation_seed",
        "datasets[0].resolution",
        "datasets[0].subsets[0].image_dir",
        "datasets[0].subsets[0].class_tokens",
        "datasets[0].subsets[0].keep_tokens",
        "highvram",
        "log_prefix",
        "save_state",
        "xformers",
        "seed",
        "sample_sampler",
        "config_file",
        "dataset_config",
        "pretrained_model_name_or_path",
    } <= keys


def test_config_file_scalar_text_encoder_lr_and_script_option(tmp_path):
    images(tmp_path / "d" / "2_ohwx", 2, (512, 512))
    write(
        tmp_path / "c.toml",
        f'[model]\npretrained_model_name_or_path = "{SD15}"\n[net]\nnetwork_module = '
        '"networks.lora"\nnetwork_dim = 8\ntext_encoder_lr = 5e-5\nlearning_rate = 1e-4\nresolution = "512"\n'
        'train_data_dir = "d"\nmax_train_steps = 40\n',
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "c.toml", script="train_network")
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.rank, plan.optimizer.lr, plan.optimizer.text_encoder_lr) == (8, 1e-4, 5e-5)
    assert "DBS407" not in codes(outcome)

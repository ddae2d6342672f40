"""Regression tests for kohya converter defects (issue 12): each case is a realistic legacy config, and the
expectation is what kohya's own code does with it (sd-scripts library/config_util.py, library/train_util.py,
train_network.py, networks/lora.py), computed from kohya's rules rather than copied from the converter."""

from __future__ import annotations

import pytest

from convert_kit import (
    plan_at,
    SD15,
    SDXL,
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

BASE = f"train_db.py --pretrained_model_name_or_path {SD15}"
LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"


# --- 1. config_file keys that are not options of the script are dataset fallbacks --------------------------


def test_config_file_dataset_repeats_is_the_repeats_of_every_subset_without_its_own(tmp_path):
    images(tmp_path / "img" / "ohwx", 4, (512, 512), caption="photo of ohwx", caption_ext=".txt")
    write(
        tmp_path / "dataset.toml",
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 512\n'
        '[[datasets.subsets]]\nimage_dir = "img/ohwx"\n',
    )
    # A GUI-era config file: dataset_repeats is no option of train_db.py, but kohya's blueprint reads every
    # namespace attribute, and dataset_repeats is num_repeats there.
    write(
        tmp_path / "config.toml",
        f'[model]\npretrained_model_name_or_path = "{SD15}"\n[dataset]\ndataset_repeats = 10\n'
        'dataset_config = "dataset.toml"\n[training]\nmax_train_epochs = 2\n',
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", script="train_db")
    plan = plan_of(outcome, tmp_path)
    assert repeats(plan, 0) == [10] * 4
    images_, repeat, epochs, batch = 4, 10, 2, 1
    assert plan.schedule.total_steps == epochs * -(-images_ * repeat // batch)  # kohya's epochs x batches
    assert fate(outcome, "dataset_repeats") == "mapped" and "DBS405" not in codes(outcome)


def test_config_file_num_repeats_loses_to_the_dataset_repeats_option_of_fine_tune_capable_scripts(tmp_path):
    images(tmp_path / "data" / "ohwx", 3, (512, 512), caption="ohwx", caption_ext=".caption")
    write(
        tmp_path / "dataset.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "data/ohwx"\n',
    )
    # train_network.py has --dataset_repeats (default 1); argparse adds it to the namespace after the config
    # file's keys, so kohya's renaming dict comprehension lets it overwrite the config file's num_repeats.
    write(tmp_path / "config.toml", "num_repeats = 5\nclass_tokens = 'ohwx cat'\n")
    outcome = kohya(
        tmp_path,
        config_file=tmp_path / "config.toml",
        dataset_config=tmp_path / "dataset.toml",
        command=f"{LORA} --max_train_steps 30",
    )
    plan = plan_of(outcome, tmp_path)
    assert repeats(plan, 0) == [1, 1, 1]
    assert fate(outcome, "class_tokens") == "mapped"  # the fallback prompt of the subset


def test_config_file_dataset_key_of_the_wrong_type_is_kohyas_schema_error(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    write(tmp_path / "config.toml", 'dataset_repeats = "10"\n')
    outcome = kohya(
        tmp_path, config_file=tmp_path / "config.toml", command=f"{BASE} --train_data_dir d --resolution 512"
    )
    assert outcome.exit_code == 1 and "dataset_repeats" in messages(outcome, "DBS402")


# --- 2. bucket_no_upscale keeps kohya's range asserts ----------------------------------------------------


def test_bucket_no_upscale_still_asserts_the_bucket_range(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --enable_bucket --bucket_no_upscale "
        "--min_bucket_reso 640",
    )
    assert outcome.exit_code == 1 and not out_path(tmp_path).exists()
    assert "min(resolution) >= min_bucket_reso" in messages(outcome, "DBS402")


# --- 3. refusals kohya does not make ----------------------------------------------------------------------


def test_keep_tokens_separator_without_shuffling_keeps_the_caption_as_written(tmp_path):
    images(tmp_path / "img", 2, (512, 512), caption="ohwx woman ||| red hair", caption_ext=".txt")
    write(
        tmp_path / "d.toml",
        '[general]\ncaption_extension = ".txt"\nkeep_tokens_separator = "|||"\n[[datasets]]\n'
        'resolution = 512\n[[datasets.subsets]]\nimage_dir = "img"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=BASE)
    plan = plan_of(outcome, tmp_path)
    # process_caption splits at the separator only while shuffling/dropping tags/warming up
    assert plan.datasets[0].images[0].caption == "ohwx woman ||| red hair 0"
    assert fate(outcome, "general.keep_tokens_separator") == "inert"


def test_masked_loss_dataset_with_a_32_bucket_step_converts(tmp_path):
    images(tmp_path / "img", 2, (512, 512), caption="ohwx bag", caption_ext=".txt")
    images(tmp_path / "mask", 2, (512, 512))
    write(
        tmp_path / "d.toml",
        "[[datasets]]\nresolution = 512\nenable_bucket = true\nbucket_reso_steps = 32\n"
        '[[datasets.subsets]]\nimage_dir = "img"\nconditioning_data_dir = "mask"\n'
        'caption_extension = ".txt"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{BASE} --masked_loss")
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.masked and plan.datasets[0].images[0].bucket == (512, 512)
    assert fate(outcome, "datasets[0].bucket_reso_steps") == "mapped"


def test_sdxl_text_encoder_rates_that_differ_do_not_matter_when_the_text_encoders_are_frozen(tmp_path):
    images(tmp_path / "d" / "2_ohwx", 2, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path {SDXL} --train_data_dir d --resolution 1024 "
        "--learning_rate 1e-5 --learning_rate_te1 5e-6 --learning_rate_te2 2e-6 --max_train_steps 20",
    )
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_text_encoder
    assert fate(outcome, "learning_rate_te1") == fate(outcome, "learning_rate_te2") == "inert"


def test_lora_text_encoder_lr_pair_uses_the_first_value(tmp_path):
    images(tmp_path / "d" / "2_ohwx", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{LORA} --train_data_dir d --resolution 512 --learning_rate 1e-4 "
        "--text_encoder_lr 5e-5 1e-5 --max_train_steps 20",
    )
    plan = plan_of(outcome, tmp_path)
    # networks.lora has no prepare_optimizer_params_with_multiple_te_lrs: train_network.py passes [0]
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == pytest.approx(5e-5)


@pytest.mark.parametrize("given", ["--text_encoder_lr 0", "--text_encoder_lr 0 1e-5"])
def test_lora_text_encoder_lr_zero_freezes_the_text_encoder(tmp_path, given):
    """lora.py assemble_params skips a group whose lr is 0 ("NO LR skipping!"), but apply_to still builds the
    text encoder's modules and max_grad_norm's clip counts their gradients: exact as train.text_encoder =
    false without a clip; with one the encoder kept idle (train.text_encoder_idle = "kohya"; more in
    test_convert_kohya_idle_text.py)."""
    images(tmp_path / "d" / "2_ohwx", 2, (512, 512))
    command = f"{LORA} --train_data_dir d --resolution 512 --unet_lr 1e-4 {given} --max_train_steps 20"
    outcome = kohya(tmp_path, command=command + " --max_grad_norm 0")
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_text_encoder and plan.optimizer.lr == pytest.approx(1e-4)
    assert fate(outcome, "text_encoder_lr") == "mapped"
    clipped = kohya(tmp_path, command=command)  # kohya's clip 1.0
    plan = plan_of(clipped, tmp_path)
    assert fate(clipped, "text_encoder_lr") == "mapped" and not plan.train_text_encoder
    assert plan.idle_text_encoders == ("text_encoder",)


# --- 4. a warm-up at least as long as the run --------------------------------------------------------------


@pytest.mark.parametrize("warmup", ["100", "150"])
def test_warmup_not_shorter_than_the_run_converts_with_a_warning(tmp_path, warmup):
    """kohya runs it: transformers' cosine lambda is step / warmup for every step below the warm-up, so the
    LR climbs the whole run and never reaches learning_rate. Moved to test_convert_kohya_leftovers.py for the
    curve; here the defect: it used to convert into a spec that failed to plan."""
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --max_train_steps 100 "
        f"--lr_scheduler cosine --lr_warmup_steps {warmup}",
    )
    assert outcome.exit_code == 0 and fate(outcome, "lr_warmup_steps") == "mapped"
    assert "DBS408" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.warmup_steps == int(warmup) and plan.schedule.total_steps == 100


# --- 5. an empty reg_data_dir is the current folder ---------------------------------------------------------


def test_empty_reg_data_dir_lists_the_current_folder(tmp_path):
    images(tmp_path / "train" / "5_ohwx dog", 2, (512, 512))
    images(tmp_path / "1_dog", 4, (512, 512), prefix="r")
    outcome = kohya(
        tmp_path,
        command=f'{BASE} --train_data_dir train --reg_data_dir "" --resolution 512 --max_train_steps 20',
    )
    plan = plan_of(outcome, tmp_path)
    reg = [d for d in plan.datasets if d.role == "class"]
    assert len(reg) == 1 and reg[0].path == str(tmp_path / "1_dog")  # Path("") / "1_dog" is relative


# --- 6. reports of datasets that differ (fine-tuning datasets: test_convert_kohya_metadata.py) ----


def test_datasets_that_differ_in_batch_size_become_groups_and_report_every_key(tmp_path):
    images(tmp_path / "a", 2, (512, 512), caption="a", caption_ext=".txt")
    images(tmp_path / "b", 2, (512, 512), caption="b", caption_ext=".txt")
    write(
        tmp_path / "d.toml",
        '[general]\ncaption_extension = ".txt"\n'
        '[[datasets]]\nresolution = 512\nbatch_size = 1\n[[datasets.subsets]]\nimage_dir = "a"\n'
        "color_aug = true\nface_crop_aug_range = [2.0, 4.0]\n"
        "[[datasets]]\nresolution = 512\nbatch_size = 2\n[[datasets.subsets]]\n"
        'image_dir = "b"\nflip_aug = true\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=f"{BASE} --max_train_epochs 3")
    assert outcome.exit_code == 0
    assert fate(outcome, "datasets[0].batch_size") == fate(outcome, "datasets[1].batch_size") == "mapped"
    assert fate(outcome, "datasets[0].subsets[0].face_crop_aug_range") == "mapped"  # buckets off, no cache
    assert fate(outcome, "datasets[0].subsets[0].color_aug") == "mapped"
    assert fate(outcome, "datasets[1].subsets[0].flip_aug") == "mapped"
    allowed = kohya(
        tmp_path, dataset_config=tmp_path / "d.toml", command=f"{BASE} --max_train_epochs 3", allow=True
    )
    plan = plan_of(allowed, tmp_path)
    # kohya batches each [[datasets]] apart: ceil(2/1) + ceil(2/2) batches per epoch, 3 epochs
    assert plan.schedule.total_steps == 3 * (2 + 1)
    assert [(g.name, g.batch_size) for g in plan.groups] == [("datasets0", 1), ("datasets1", 2)]
    assert [d.color_aug for d in plan.datasets] == [True, False]
    assert [d.face_crop is not None for d in plan.datasets] == [True, False]


# --- 7. command files with one option per line -------------------------------------------------------------


def test_command_file_without_line_continuations_joins_each_option_line(tmp_path):
    images(tmp_path / "train" / "5_ohwx dog", 2, (512, 512))
    write(
        tmp_path / "train.sh",
        "accelerate launch --num_cpu_threads_per_process 1 train_db.py\n"
        f"  --pretrained_model_name_or_path={SD15}\n"
        "  --train_data_dir=train\n"
        "  --resolution=512\n"
        "  --max_train_steps=40\n"
        "  --learning_rate=1e-6\n",
    )
    outcome = kohya(tmp_path, command="train.sh")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.total_steps == 40 and plan.optimizer.lr == pytest.approx(1e-6)
    text = messages(outcome, "DBS407")
    assert "5 line(s) of train.sh" in text and "--learning_rate=1e-6" in text


def test_options_pasted_one_per_line_without_a_script(tmp_path):
    images(tmp_path / "train" / "5_ohwx dog", 2, (512, 512))
    write(
        tmp_path / "args.txt",
        f"--pretrained_model_name_or_path {SD15}\n--train_data_dir train\n--resolution 512\n"
        "--max_train_steps 30\n",
    )
    outcome = kohya(tmp_path, command="args.txt", script="train_db")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.total_steps == 30 and repeats(plan, 0) == [5, 5]
    assert "3 line(s) of args.txt" in messages(outcome, "DBS407")


# --- 8. wording: what cannot be read here, what kohya crashes on, a script on another family's weights ------


def test_a_dataset_config_missing_here_is_unreadable_not_a_kohya_rule(tmp_path):
    outcome = kohya(tmp_path, command=f"{BASE} --dataset_config /mnt/nas/dataset.toml")
    assert outcome.exit_code == 1
    assert fate(outcome, "dataset_config") == "unreadable"
    assert "cannot be read here" in messages(outcome, "DBS401") and "DBS402" not in codes(outcome)


def test_a_train_data_dir_missing_here_becomes_a_kohya_folders_dataset(tmp_path):
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir data/train --reg_data_dir data/reg --resolution 512 "
        "--caption_extension .txt --max_train_steps 60",
    )
    assert outcome.exit_code == 0, errors(outcome)
    assert "kohya_folders" in messages(outcome, "DBS406")
    # the images arrive later (or the spec moves to the machine that holds them): the plan lists the folders
    images(tmp_path / "data" / "train" / "10_sks dog", 3, (512, 512))
    images(tmp_path / "data" / "reg" / "1_dog", 5, (512, 512), prefix="r")
    plan = plan_of(outcome, tmp_path)
    train, reg = plan.datasets
    assert [(f.name, f.repeats, f.prompt) for f in train.folders] == [("10_sks dog", 10, "sks dog")]
    assert repeats(plan, 0) == [10] * 3 and train.images[0].caption == "sks dog"
    assert reg.role == "class" and reg.images[0].caption == "dog" and plan.schedule.total_steps == 60
    # kohya: reg images, in order, repeated until they match the 30 training samples (30 / 5 = 6 each)
    assert repeats(plan, 1) == [6] * 5


@pytest.mark.parametrize(
    ("args", "why"),
    [
        ('"momentum=0.9"', "AdamW's constructor has no such argument"),  # dbspec dropped it silently before
        ('"foo=1" "weight_decay=0.1"', "no such argument"),
        ('"lr=1e-4"', "gets it twice"),
        ('"betas=0.9"', "a pair of numbers"),
    ],
)
def test_optimizer_args_kohya_crashes_on_are_invalid(tmp_path, args, why):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --optimizer_type AdamW --optimizer_args {args}",
    )
    assert outcome.exit_code == 1 and fate(outcome, "optimizer_args") == "invalid"
    assert why in messages(outcome, "DBS402") and "DBS403" not in codes(outcome)


def test_optimizer_args_the_constructor_takes_still_convert(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"{BASE} --train_data_dir d --resolution 512 --optimizer_type SGD --optimizer_args "
        '"momentum=0.9" "weight_decay=0.01"',
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "sgd" and plan.optimizer.momentum == pytest.approx(0.9)


def test_an_sd1_script_on_sdxl_weights_is_reported_at_conversion(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"train_db.py --pretrained_model_name_or_path {SDXL} --train_data_dir d --resolution 1024",
    )
    assert outcome.exit_code == 1 and not out_path(tmp_path).exists()
    text = messages(outcome, "DBS402")
    assert "builds an SD 1.x model" in text and "SDXL weights" in text


# --- 9. dbspec convert --set --------------------------------------------------------------------------------


def test_only_a_dataset_config_needs_the_base_model_and_set_supplies_it(tmp_path):
    from typer.testing import CliRunner

    from dbspec.cli import app

    images(tmp_path / "img", 3, (512, 512), caption="photo of ohwx dog", caption_ext=".txt")
    write(
        tmp_path / "d.toml",
        '[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 512\n'
        '[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 4\n',
    )
    out = out_path(tmp_path)
    cli = [
        "convert",
        "kohya",
        "--dataset-config",
        str(tmp_path / "d.toml"),
        "--cwd",
        str(tmp_path),
        "-o",
        str(out),
    ]
    missing = CliRunner().invoke(app, cli)
    assert missing.exit_code == 1 and "--set model.base=" in missing.output and not out.exists()
    given = CliRunner().invoke(app, [*cli, "--set", f"model.base={SD15}", "--set", "schedule.seed=7"])
    assert given.exit_code == 0, given.output
    plan = plan_at(out)
    assert plan.model.base == SD15 and plan.schedule.seed == 7 and repeats(plan, 0) == [4] * 3
    assert "dbspec convert --set model.base" in out.read_text()


def test_face_crop_caption_names_are_a_stated_difference_in_dataset_configs(tmp_path):
    folder = tmp_path / "faces"
    images(folder, 1, (512, 512), prefix="face")
    (folder / "face000.png").rename(folder / "face_120_80_64_64.png")
    write(folder / "face.txt", "ohwx person, close-up")
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "faces"\n'
        'caption_extension = ".txt"\nclass_tokens = "ohwx person"\n',
    )
    outcome = kohya(tmp_path, dataset_config=tmp_path / "d.toml", command=BASE)
    assert outcome.exit_code == 0 and "face-crop" in messages(outcome, "DBS404")
    assert fate(outcome, "datasets[0].subsets[0].image_dir") == "differs"

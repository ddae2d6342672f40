"""kohya conversions that keep their meaning, asserted on the compiled plan.

Each case builds the legacy inputs and image folders in tmp_path, converts, and compiles the written spec.
Expected values are kohya's documented semantics (../shared/reference/kohya.md): repeats, per-dataset reg
balancing, bucket sizes, warm-up ratios of max_train_steps, the text-encoder stop step, optimizer defaults.
"""

from __future__ import annotations

import pytest
import tomli

from convert_kit import (
    SD15,
    SD21,
    SDXL,
    codes,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    repeats,
    write,
)
from dbspec.compiler import buckets as bk

KOHYA_512 = bk.bucket_list((512, 512), 256, 1024, 64)


def test_train_db_folder_names_balance_reg_images_and_keep_the_schedule(tmp_path):
    images(tmp_path / "train" / "10_sks dog", 3, (768, 512))
    images(tmp_path / "reg" / "1_dog", 40, (512, 512), prefix="r")
    write(
        tmp_path / "train.sh",
        f"""accelerate launch --num_cpu_threads_per_process 1 train_db.py \\
  --pretrained_model_name_or_path="{SD15}" --train_data_dir=train --reg_data_dir=reg \\
  --output_dir=out --resolution=512 --enable_bucket --train_batch_size=1 --learning_rate=1e-6 \\
  --max_train_steps=1600 --lr_scheduler=cosine --lr_warmup_steps=0.1 --stop_text_encoder_training 400 \\
  --mixed_precision=fp16 --xformers --cache_latents --seed 42
""",
    )
    outcome = kohya(tmp_path, command="train.sh")
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sd1" and plan.model.prediction == "epsilon"
    assert repeats(plan, 0) == [10, 10, 10]
    # kohya: reg images, in order, one repeat each until they match the 30 training samples; the rest unused
    assert repeats(plan, 1) == [1] * 30 + [0] * 10
    assert plan.datasets[1].role == "class" and plan.datasets[1].images[0].caption == "dog"
    assert plan.datasets[0].images[0].bucket == bk.place((768, 512), KOHYA_512).bucket == (640, 384)
    s = plan.schedule
    assert (s.total_steps, s.batch_size, s.warmup_steps, s.text_encoder_stop_step) == (1600, 1, 160, 400)
    assert dict(s.lr_points)[160] == pytest.approx(1e-6) and dict(s.lr_points)[1600] == pytest.approx(0.0)
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == pytest.approx(1e-6)
    assert plan.precision.mixed == "fp16" and plan.schedule.seed == 42
    assert (plan.loss.prior, plan.loss.prior_weight) == ("images", 1.0)
    assert plan.checkpoints.name == "last"
    assert fate(outcome, "xformers") == "inert" and fate(outcome, "lr_warmup_steps") == "mapped"


def test_dataset_config_inherits_general_and_beats_cli_dataset_flags(tmp_path):
    images(tmp_path / "img" / "woman", 4, (512, 768), caption="photo of ohwx woman", caption_ext=".txt")
    images(tmp_path / "img" / "reg", 10, (512, 512), prefix="r")
    write(
        tmp_path / "data.toml",
        """
[general]
caption_extension = ".txt"
enable_bucket = true
[[datasets]]
resolution = 512
batch_size = 2
  [[datasets.subsets]]
  image_dir = "img/woman"
  num_repeats = 5
  class_tokens = "ohwx woman"
  [[datasets.subsets]]
  image_dir = "img/reg"
  is_reg = true
  class_tokens = "woman"
""",
    )
    write(
        tmp_path / "cmd.txt",
        f"train_db.py --pretrained_model_name_or_path {SD15} --dataset_config data.toml "
        "--train_batch_size 8 --flip_aug --max_train_steps 100 --train_data_dir ignored",
    )
    outcome = kohya(tmp_path, command="cmd.txt")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.batch_size == 2  # the dataset config wins over --train_batch_size
    assert plan.datasets[0].images[0].caption == "photo of ohwx woman 0"  # caption file beats class_tokens
    assert plan.datasets[1].images[0].caption == "woman"  # no caption file: class_tokens
    assert plan.datasets[0].flip and plan.datasets[1].flip  # --flip_aug is the fallback for every subset
    assert repeats(plan, 1) == [2] * 10  # 20 training samples: 10 reg images, a second loop adds one each
    assert "DBS405" in {
        d.code for d in outcome.diagnostics
    }  # kohya ignores train_data_dir with a dataset config
    assert fate(outcome, "train_batch_size") == "inert"  # every dataset sets its own batch_size


def test_config_file_is_flattened_and_the_command_line_wins(tmp_path):
    images(tmp_path / "data" / "4_ohwx cat", 2, (640, 640))
    write(
        tmp_path / "cfg.toml",
        f"""
epoch = 10
sdxl = false
[model]
pretrained_model_name_or_path = "{SD15}"
[dataset]
train_data_dir = "data"
resolution = "512"
enable_bucket = true
[training]
learning_rate = 1e-5
max_train_steps = 500
optimizer_type = "Lion"
[training.nested]
lost = 1
""",
    )
    outcome = kohya(
        tmp_path,
        config_file=tmp_path / "cfg.toml",
        command="train_db.py --learning_rate=3e-6 --learning_rate 2e-6",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.lr == pytest.approx(2e-6)  # CLI > config_file, and the last duplicate wins
    assert plan.schedule.total_steps == 500  # from the config file's [training] section
    assert plan.optimizer.kind == "lion" and plan.optimizer.betas == (0.9, 0.99)  # lion_pytorch defaults
    assert plan.optimizer.weight_decay == 0.0
    assert repeats(plan, 0) == [4, 4]
    assert fate(outcome, "epoch") == "inert" and fate(outcome, "sdxl") == "inert"  # GUI keys
    assert "nested" in messages(outcome, "DBS405")


def test_sd2_v_parameterization_clip_skip_and_epoch_run(tmp_path):
    images(tmp_path / "t" / "20_sks", 5, (768, 768))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch train_db.py --v2 --v_parameterization \
        --pretrained_model_name_or_path={SD21} --train_data_dir=t --resolution 768 --clip_skip 2 \
        --max_train_epochs 4 --train_batch_size 2 --gradient_accumulation_steps 2 --lr_scheduler linear \
        --lr_warmup_steps 0.25 --zero_terminal_snr --stop_text_encoder_training -1""",
    )
    plan = plan_of(outcome, tmp_path)
    assert (plan.model.family, plan.model.prediction, plan.model.clip_skip) == ("sd2", "v_prediction", 2)
    assert plan.loss.target == "v_prediction" and plan.loss.zero_terminal_snr
    # 100 samples in batches of 2 -> 50 batches; 2 accumulated -> 25 steps per epoch; 4 epochs
    assert (plan.schedule.epochs, plan.schedule.total_steps) == (4, 100)
    assert plan.schedule.warmup_steps == 25  # kohya: int(0.25 x max_train_steps after the epoch override)
    assert not plan.train_text_encoder  # -1: never train the text encoder


def test_sdxl_full_with_text_encoders_and_32_px_buckets(tmp_path):
    images(tmp_path / "d" / "2_zwx man", 2, (1344, 768))
    outcome = kohya(
        tmp_path,
        command=f"""sdxl_train.py --pretrained_model_name_or_path {SDXL} --train_data_dir d \
        --resolution 1024,1024 --enable_bucket --bucket_reso_steps 32 --min_bucket_reso 512 \
--max_bucket_reso 2048 \
        --train_text_encoder --learning_rate 4e-6 --learning_rate_te1 1e-6 --learning_rate_te2 1e-6 \
        --mixed_precision bf16 --full_bf16 --no_half_vae --max_train_steps 200 --optimizer_type adafactor \
        --optimizer_args relative_step=False scale_parameter=False warmup_init=False""",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sdxl" and plan.train_text_encoder
    assert (plan.optimizer.lr, plan.optimizer.text_encoder_lr) == (pytest.approx(4e-6), pytest.approx(1e-6))
    assert plan.optimizer.kind == "adafactor" and plan.optimizer.weight_decay == 0.0
    expected = bk.place((1344, 768), bk.bucket_list((1024, 1024), 512, 2048, 32)).bucket
    assert plan.datasets[0].images[0].bucket == expected
    assert plan.precision.mixed == "bf16"
    assert fate(outcome, "full_bf16") == "mapped"  # the trained weights are bf16, as in kohya
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding  # round-to-nearest
    assert {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"} == {
        "unet": "bf16",
        "text_encoder": "bf16",
        "text_encoder_2": "bf16",
    }


def test_sdxl_lora_unet_only_with_kohya_targets(tmp_path):
    images(tmp_path / "x" / "8_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch sdxl_train_network.py \
        --pretrained_model_name_or_path={SDXL} --train_data_dir=x --resolution=1024 \
        --network_module=networks.lora --network_dim=32 --network_alpha=16 --network_train_unet_only \
        --cache_text_encoder_outputs --learning_rate=1e-4 --optimizer_type=AdamW8bit \
        --optimizer_args weight_decay=0.05 "betas=0.9,0.99" --max_train_steps=300 --save_every_n_steps=100 \
        --save_precision=fp16 --mixed_precision=bf16 --fp8_base --output_dir={tmp_path}/lora-out""",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.checkpoints.dir == f"{tmp_path}/lora-out"  # an absolute legacy path stays absolute
    assert f'dir = "{tmp_path}/lora-out"' in outcome.text
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 32, 16.0)
    assert "ff.net.2" in a.denoiser_targets and "proj_in" in a.denoiser_targets
    assert not plan.train_text_encoder
    o = plan.optimizer
    assert (o.kind, o.weight_decay, o.betas, o.lr) == ("adamw8bit", 0.05, (0.9, 0.99), pytest.approx(1e-4))
    assert tuple(plan.checkpoints.steps) == (100, 200, 300) and plan.checkpoints.save_precision == "fp16"
    assert plan.checkpoints.exports == ("kohya_lora",) and plan.checkpoints.keep == 0
    assert any(c.quantized == "fp8" for c in plan.precision.components)


def test_sd15_lora_defaults_epochs_and_epoch_intervals(tmp_path):
    images(tmp_path / "set" / "15_sks toy", 4, (512, 512))
    write(
        tmp_path / "prompts.txt",
        "a photo of sks toy on a beach --n blurry --s 28 --l 6.5\n# a comment\n"
        "sks toy in the snow --n blurry --s 28 --l 6.5\n",
    )
    outcome = kohya(
        tmp_path,
        command=f"""train_network.py --pretrained_model_name_or_path {SD15} \
        --train_data_dir set --resolution 512 --network_module networks.lora --unet_lr 1e-4 \
        --text_encoder_lr 5e-5 --max_train_epochs 6 --save_every_n_epochs 2 --train_batch_size 3 \
        --sample_prompts prompts.txt --sample_every_n_epochs 3 --sample_sampler euler_a --lr_scheduler \
        cosine_with_restarts --lr_scheduler_num_cycles 3 --lr_warmup_steps 10 --logging_dir logs""",
    )
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.rank, plan.adapter.alpha) == (4, 1.0)  # networks.lora dim 4, kohya's alpha 1
    assert plan.train_text_encoder  # kohya trains text-encoder LoRA unless --network_train_unet_only
    assert (plan.optimizer.lr, plan.optimizer.text_encoder_lr) == (pytest.approx(1e-4), pytest.approx(5e-5))
    # 60 samples / batch 3 = 20 steps per epoch
    assert (plan.schedule.epochs, plan.schedule.total_steps, plan.schedule.cycles) == (6, 120, 3)
    assert tuple(plan.checkpoints.steps) == (40, 80, 120)
    assert tuple(plan.validation.steps) == (60, 120) and plan.validation.scheduler == "euler_a"
    v = plan.validation
    assert (v.prompts[1], v.negative_prompt, v.inference_steps, v.guidance) == (
        "sks toy in the snow",
        "blurry",
        28,
        6.5,
    )
    assert plan.logging.tensorboard


def test_bucket_no_upscale_places_images_as_kohya(tmp_path):
    images(tmp_path / "d" / "1_a", 1, (300, 200), prefix="small")
    images(tmp_path / "d" / "1_a", 1, (1920, 1080), prefix="wide")
    outcome = kohya(
        tmp_path,
        command=f"train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir d "
        "--resolution 512 --enable_bucket --bucket_no_upscale --min_bucket_reso 320",
    )
    plan = plan_of(outcome, tmp_path)
    buckets = {img.rel: img.bucket for img in plan.datasets[0].images}
    assert buckets == {"small000.png": (256, 192), "wide000.png": (640, 384)}  # kohya.md's verified examples
    assert fate(outcome, "min_bucket_reso") == "inert"


def test_buckets_off_with_cached_latents_is_a_square_bucket(tmp_path):
    images(tmp_path / "d" / "3_b", 2, (768, 512))
    outcome = kohya(
        tmp_path,
        command=f"train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir d "
        "--resolution 512 --cache_latents",
    )
    plan = plan_of(outcome, tmp_path)
    img = plan.datasets[0].images[0]
    assert (img.bucket, img.resized) == ((512, 512), (768, 512))
    assert [b.size for b in plan.buckets] == [(512, 512)]


def test_masked_loss_with_conditioning_folders(tmp_path):
    images(tmp_path / "img", 2, (512, 512))
    images(tmp_path / "mask", 2, (512, 512), mode="RGB")
    write(
        tmp_path / "d.toml",
        """[[datasets]]
resolution = 512
  [[datasets.subsets]]
  image_dir = "img"
  conditioning_data_dir = "mask"
  caption_extension = ".txt"
  num_repeats = 3
""",
    )
    for i in range(2):
        write(tmp_path / "img" / f"img{i:03d}.txt", "ohwx bag")
    outcome = kohya(
        tmp_path,
        dataset_config=tmp_path / "d.toml",
        command=f"train_db.py --pretrained_model_name_or_path {SD15} --masked_loss",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.masked and plan.datasets[0].mask_source == "folder"
    assert plan.datasets[0].images[0].mask.endswith("mask/img000.png")
    # kohya's apply_masked_loss: loss x mask averaged over the whole image, no longer a stated difference
    assert fate(outcome, "datasets[0].subsets[0].conditioning_data_dir") == "mapped"
    assert plan.loss.mask_mean == "image" and "·mask (image mean)" in plan.loss.formula
    assert "DBS404" not in codes(outcome)


def test_alpha_mask_subsets(tmp_path):
    images(tmp_path / "rgba", 2, (512, 512), mode="RGBA")
    write(
        tmp_path / "d.toml",
        '[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = "rgba"\n'
        'class_tokens = "ohwx mug"\nalpha_mask = true\n',
    )
    outcome = kohya(
        tmp_path,
        dataset_config=tmp_path / "d.toml",
        command=f"train_db.py --pretrained_model_name_or_path {SD15}",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.datasets[0].mask_source == "alpha" and plan.loss.masked
    assert plan.loss.mask_mean == "image" and fate(outcome, "datasets[0].subsets[0].alpha_mask") == "mapped"
    assert 'mask_mean = "image"' in out_path(tmp_path).read_text()


def test_alpha_mask_from_the_command_line_in_a_lora_run(tmp_path):
    """train_network.py with `--alpha_mask` (the subsets' fallback) and kohya-style folders: every subset
    masked, the loss averaged over the image; a run without masks keeps the default."""
    images(tmp_path / "x" / "10_ohwx mug", 2, (512, 512), mode="RGBA")
    command = (
        f"accelerate launch train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=x "
        "--resolution=512 --network_module=networks.lora --network_dim=8 --learning_rate=1e-4 "
        "--max_train_steps=20 --save_model_as=safetensors"
    )
    plan = plan_of(kohya(tmp_path, command=command + " --alpha_mask"), tmp_path)
    assert plan.datasets[0].mask_source == "alpha" and plan.loss.mask_mean == "image"
    plan = plan_of(kohya(tmp_path, command=command), tmp_path)
    assert not plan.loss.masked and plan.loss.mask_mean == "mask"
    assert "mask_mean" not in out_path(tmp_path).read_text()


def test_prior_weight_min_snr_and_noise_offset_with_mixed_batches(tmp_path):
    images(tmp_path / "t" / "5_ohwx", 2, (512, 512))
    images(tmp_path / "r" / "1_person", 10, (512, 512), prefix="r")
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path {SD15} --train_data_dir t \
        --reg_data_dir r --resolution 512 --train_batch_size 2 --prior_loss_weight 0.5 --min_snr_gamma 5 \
        --noise_offset 0.05 --loss_type l1 --max_grad_norm 0""",
    )
    plan = plan_of(outcome, tmp_path)
    loss = plan.loss
    assert (loss.kind, loss.prior_weight, loss.min_snr_gamma, loss.noise_offset) == ("l1", 0.5, 5.0, 0.05)
    assert plan.optimizer.max_grad_norm == 0.0
    assert repeats(plan, 1) == [1] * 10  # 10 training samples, 10 reg images
    # mixed batches: kohya's per-sample mean, Min-SNR on reg samples too (loss.prior_reduction = "per_sample")
    assert loss.prior_reduction == "per_sample"
    assert fate(outcome, "train_batch_size") == "mapped" and fate(outcome, "min_snr_gamma") == "mapped"


def test_per_dataset_reg_balance_converts_to_dataset_groups(tmp_path):
    images(tmp_path / "a", 2, (512, 512))
    images(tmp_path / "b", 4, (512, 512), prefix="b")
    images(tmp_path / "reg", 20, (512, 512), prefix="r")
    write(
        tmp_path / "d.toml",
        """[general]
resolution = 512
class_tokens = "ohwx"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "a"
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
[[datasets]]
  [[datasets.subsets]]
  image_dir = "b"
""",
    )
    outcome = kohya(
        tmp_path,
        dataset_config=tmp_path / "d.toml",
        command=f"train_db.py --pretrained_model_name_or_path {SD15}",
    )
    plan = plan_of(outcome, tmp_path)
    # kohya balances the reg images against dataset 0's 2 samples only (not all 6): each [[datasets]] is a
    # group
    assert sum(repeats(plan, 1)) == 2
    assert not messages(outcome, "DBS404")
    assert [(g.name, g.datasets) for g in plan.groups] == [("datasets0", ("a", "reg")), ("datasets1", ("b",))]


def test_a_dataset_with_only_reg_images_trains_none_of_them(tmp_path):
    images(tmp_path / "a", 3, (512, 512))
    images(tmp_path / "reg", 5, (512, 512), prefix="r")
    write(
        tmp_path / "d.toml",
        """[general]
resolution = 512
class_tokens = "ohwx"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "a"
[[datasets]]
  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
""",
    )
    outcome = kohya(
        tmp_path,
        dataset_config=tmp_path / "d.toml",
        command=f"train_db.py --pretrained_model_name_or_path {SD15}",
    )
    plan = plan_of(outcome, tmp_path)
    assert [d.role for d in plan.datasets] == ["instance"] and plan.loss.prior == "none"


def test_windows_paths_survive_and_compile_once_mapped(tmp_path):
    win = r"C:\data\10_sks dog"
    write(
        tmp_path / "d.toml",
        f"[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = '{win}'\n"
        "class_tokens = 'sks dog'\nnum_repeats = 10\n",
    )
    bat = write(
        tmp_path / "run.bat",
        f"@echo off\nset MODEL={SD15}\naccelerate launch train_db.py ^\n"
        '  --pretrained_model_name_or_path="%MODEL%" ^\n  --dataset_config="d.toml" ^\n'
        '  --output_dir="C:\\out\\run 1" --max_train_steps 50\n',
    )
    outcome = kohya(tmp_path, command=str(bat))
    spec = tomli.loads(outcome.text)
    assert spec["datasets"][0]["path"] == win and spec["output"]["dir"] == r"C:\out\run 1"
    images(tmp_path / "here", 2, (512, 512))
    plan = plan_of(outcome, tmp_path, overrides=["datasets[0].path=../here", "output.dir=../out"])
    assert repeats(plan, 0) == [10, 10] and plan.schedule.total_steps == 50


@pytest.mark.parametrize(("command", "tokens"), [("sdxl_train_network.py", 225), ("train_network.py", 150)])
def test_max_token_length_becomes_max_tokens(tmp_path, command, tokens):
    images(tmp_path / "t" / "10_ohwx toy", 2, (1024, 1024))
    base = SDXL if command.startswith("sdxl") else SD15
    outcome = kohya(
        tmp_path,
        command=f"""accelerate launch {command} --pretrained_model_name_or_path={base} --train_data_dir=t \
        --resolution 1024 --network_module networks.lora --network_dim 8 --max_token_length {tokens} \
        --max_train_steps 10 --output_dir out""",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.max_tokens == tokens and fate(outcome, "max_token_length") == "mapped"


def test_max_token_length_75_in_a_config_file_is_one_window(tmp_path):
    """argparse would refuse 75 on the command line; a config file bypasses it and kohya
    uses 75 + 2 tokens."""
    images(tmp_path / "t" / "10_ohwx toy", 2, (512, 512))
    write(
        tmp_path / "cfg.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "t"
resolution = "512"
max_token_length = 75
max_train_steps = 10
""",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_db.py")
    plan = plan_of(outcome, tmp_path)
    assert plan.model.max_tokens == 75 and fate(outcome, "max_token_length") == "mapped"


def test_no_token_padding_is_reported_as_ignored_by_kohya(tmp_path):
    """train_db.py's --no_token_padding sets a dataset flag that kohya's code no longer reads."""
    images(tmp_path / "t" / "10_ohwx toy", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=t "
        "--resolution 512 --no_token_padding --max_train_steps 10",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.max_tokens == 75 and fate(outcome, "no_token_padding") == "inert"
    assert "no_token_padding" in messages(outcome, "DBS405")


def _sdxl_full(tmp_path, rates: str):
    images(tmp_path / "d" / "2_zwx man", 2, (1024, 1024))
    return kohya(
        tmp_path,
        command=f"sdxl_train.py --pretrained_model_name_or_path {SDXL} --train_data_dir d --resolution 1024 "
        f"--train_text_encoder {rates} --max_train_steps 100 --optimizer_type adamw",
    )


def test_sdxl_text_encoders_at_two_rates(tmp_path):
    plan = plan_of(
        _sdxl_full(tmp_path, "--learning_rate 4e-6 --learning_rate_te1 1e-6 --learning_rate_te2 5e-7"),
        tmp_path,
    )
    opt = plan.optimizer
    assert (opt.lr, opt.text_encoder_lr, opt.text_encoder_2_lr) == pytest.approx((4e-6, 1e-6, 5e-7))


def test_sdxl_second_text_encoder_falls_back_to_learning_rate(tmp_path):
    plan = plan_of(_sdxl_full(tmp_path, "--learning_rate 4e-6 --learning_rate_te1 1e-6"), tmp_path)
    assert (plan.optimizer.text_encoder_lr, plan.optimizer.text_encoder_2_lr) == pytest.approx((1e-6, 4e-6))


def test_sdxl_learning_rate_0_trains_only_the_text_encoders(tmp_path):
    """sdxl_train.py: train_unet = learning_rate != 0."""
    outcome = _sdxl_full(tmp_path, "--learning_rate 0 --learning_rate_te1 1e-6 --learning_rate_te2 1e-6")
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and plan.train_text_encoder
    assert plan.optimizer.text_encoder_lr == pytest.approx(1e-6) and plan.optimizer.text_encoder_2_lr is None


def _trainable(plan) -> dict[str, str]:
    return {c.name: c.trainable for c in plan.precision.components}


def test_sdxl_second_text_encoder_at_rate_0_is_frozen(tmp_path):
    """sdxl_train.py: train_text_encoder2 = learning_rate_te2 != 0; the first trains at learning_rate_te1."""
    outcome = _sdxl_full(tmp_path, "--learning_rate 4e-6 --learning_rate_te1 1e-6 --learning_rate_te2 0")
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, "learning_rate_te2") == "mapped" and plan.train_text_encoder
    trainable = _trainable(plan)
    assert (trainable["unet"], trainable["text_encoder"], trainable["text_encoder_2"]) == (
        "full",
        "full",
        "frozen",
    )
    assert (plan.optimizer.lr, plan.optimizer.text_encoder_lr) == pytest.approx((4e-6, 1e-6))
    assert plan.optimizer.text_encoder_2_lr is None  # no group: the second encoder has no trained parameters


@pytest.mark.parametrize(("te2", "rate"), [("--learning_rate_te2 1e-6", 1e-6), ("", 4e-6)])
def test_sdxl_first_text_encoder_at_rate_0_trains_the_second_alone(tmp_path, te2, rate):
    """sdxl_train.py: train_text_encoder1 = learning_rate_te1 != 0; the second trains at learning_rate_te2,
    else learning_rate (`args.learning_rate_te2 or args.learning_rate`)."""
    outcome = _sdxl_full(tmp_path, f"--learning_rate 4e-6 --learning_rate_te1 0 {te2}")
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, "learning_rate_te1") == "mapped" and plan.train_text_encoder
    trainable = _trainable(plan)
    assert (trainable["unet"], trainable["text_encoder"], trainable["text_encoder_2"]) == (
        "full",
        "frozen",
        "full",
    )
    # the second encoder's rate: text_encoder_lr, which text_encoder_2_lr derives from (None: the same)
    assert plan.optimizer.lr == pytest.approx(4e-6) and plan.optimizer.text_encoder_lr == pytest.approx(rate)
    assert plan.optimizer.text_encoder_2_lr is None


def test_lora_unet_lr_0_without_a_clip_trains_only_the_text_encoder(tmp_path):
    """networks.lora skips parameter groups whose learning rate is 0: without a clip its held U-Net
    modules change nothing, so the denoiser is left plain (held_unet.py)."""
    images(tmp_path / "t" / "10_ohwx toy", 2, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"train_network.py --pretrained_model_name_or_path={SD15} --train_data_dir=t "
        "--resolution 512 --network_module networks.lora --unet_lr 0 --text_encoder_lr 5e-5 "
        "--max_train_steps 10 --max_grad_norm 0",
    )
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and plan.train_text_encoder and not plan.adapter.blocks
    assert plan.optimizer.text_encoder_lr == pytest.approx(5e-5)

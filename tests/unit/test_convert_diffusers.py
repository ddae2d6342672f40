"""diffusers DreamBooth command lines -> specs whose plans train what the scripts train."""

from __future__ import annotations

import pytest

from convert_kit import (
    SD15,
    SDXL,
    codes,
    diffusers,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    images,
    messages,
    plan_of,
    repeats,
    write,
)


def test_full_dreambooth_with_prior_preservation(tmp_path):
    images(tmp_path / "dog", 5, (640, 480))
    images(tmp_path / "class", 50, (512, 512), prefix="c")
    write(
        tmp_path / "train.sh",
        f"""export MODEL_NAME="{SD15}"
export INSTANCE_DIR="dog"
accelerate launch train_dreambooth.py \\
  --pretrained_model_name_or_path=$MODEL_NAME --instance_data_dir=$INSTANCE_DIR \\
  --class_data_dir=class --output_dir=out --with_prior_preservation --prior_loss_weight=0.8 \\
  --instance_prompt="a photo of sks dog" --class_prompt="a photo of dog" --resolution=512 \\
  --train_batch_size=1 --gradient_accumulation_steps=1 --learning_rate=5e-6 --lr_scheduler="constant" \\
  --lr_warmup_steps=0 --num_class_images=50 --max_train_steps=400 --train_text_encoder \\
  --mixed_precision=fp16 --use_8bit_adam --offset_noise --center_crop --checkpointing_steps=100 \\
  --validation_prompt="a photo of sks dog in a bucket" --validation_steps=200 --seed=7
""",
    )
    outcome = diffusers(tmp_path, "train.sh")
    plan = plan_of(outcome, tmp_path)
    assert plan.schedule.batch_size == 2  # one instance + one class image per step
    assert (
        repeats(plan, 0) == [10] * 5
    )  # 50 class images / 5 instance images: every class image once per epoch
    assert repeats(plan, 1) == [1] * 50 and plan.datasets[1].generate is None
    assert [b.size for b in plan.buckets] == [(512, 512)] and plan.datasets[0].crop == "center"
    assert plan.datasets[0].images[0].resized == (683, 512)  # short side to 512, then the square crop
    assert (plan.loss.prior, plan.loss.prior_weight, plan.loss.noise_offset) == ("images", 0.8, 0.1)
    assert plan.train_text_encoder and plan.optimizer.kind == "adamw8bit"
    assert plan.schedule.total_steps == 400 and tuple(plan.checkpoints.steps) == (100, 200, 300, 400)
    assert tuple(plan.validation.steps) == (200, 400) and plan.validation.images_per_prompt == 4
    assert plan.validation.scheduler == "dpmpp" and plan.schedule.seed == 7
    assert fate(outcome, "train_batch_size") == "differs"


def test_lora_sd15_epochs_and_validation_epochs(tmp_path):
    images(tmp_path / "toy", 6, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"""accelerate launch train_dreambooth_lora.py \
      --pretrained_model_name_or_path={SD15} --instance_data_dir=toy --instance_prompt="a sks toy" \
      --output_dir=lora --train_batch_size=2 --num_train_epochs=10 --validation_prompt="a sks toy" \
      --validation_epochs=5 --rank=8 --lora_dropout 0.05 --lr_scheduler cosine --lr_warmup_steps 3 \
      --mixed_precision bf16 --scale_lr --gradient_accumulation_steps 2""",
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha, a.dropout) == ("lora", 8, 8.0, 0.05)
    # 6 images / batch 2 = 3 batches, accumulated 2 -> 2 steps per epoch; 10 epochs
    assert (plan.schedule.epochs, plan.schedule.total_steps, plan.schedule.warmup_steps) == (10, 20, 3)
    assert plan.optimizer.lr == pytest.approx(5e-4 * 2 * 2)  # --scale_lr: x accumulation x batch size
    assert tuple(plan.validation.steps) == (10, 20)  # every 5 epochs of 2 steps
    assert plan.datasets[0].crop == "random"  # no --center_crop


def test_lora_sdxl_text_encoder_rate_and_flip(tmp_path):
    images(tmp_path / "cat", 4, (1024, 1024))
    outcome = diffusers(
        tmp_path,
        f"""python train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={SDXL} \
      --pretrained_vae_model_name_or_path=madebyollin/sdxl-vae-fp16-fix --instance_data_dir=cat \
      --instance_prompt="a photo of sks cat" --train_text_encoder --text_encoder_lr 5e-6 \
--learning_rate 1e-4 \
      --random_flip --repeats 3 --train_batch_size 1 --max_train_steps 500 --output_kohya_format \
      --checkpoints_total_limit 2 --mixed_precision bf16 --lr_scheduler constant --use_dora""",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.dora and plan.adapter.kind == "lora"  # the script's LoraConfig(use_dora=True)
    assert plan.model.family == "sdxl" and plan.model.vae == "madebyollin/sdxl-vae-fp16-fix"
    assert (plan.optimizer.lr, plan.optimizer.text_encoder_lr) == (pytest.approx(1e-4), pytest.approx(5e-6))
    assert plan.optimizer.weight_decay == pytest.approx(1e-4)  # the SDXL LoRA script's default
    assert plan.datasets[0].flip and repeats(plan, 0) == [3] * 4 and plan.datasets[0].resolution == 1024
    assert plan.checkpoints.exports == ("kohya_lora",) and plan.checkpoints.keep == 2
    assert plan.schedule.warmup_steps == 0  # constant: the script's 500-step default warm-up does nothing


def test_lora_sdxl_prodigy_as_the_script_builds_it(tmp_path):
    """prodigyopt.Prodigy(groups, betas=(adam_beta1, adam_beta2), beta3=prodigy_beta3,
    weight_decay=adam_weight_decay, eps=adam_epsilon, decouple=..., use_bias_correction=...,
    safeguard_warmup=...), the text encoders' groups moved to learning_rate."""
    images(tmp_path / "cat", 2, (1024, 1024))
    outcome = diffusers(
        tmp_path,
        f"""python train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={SDXL} \
      --instance_data_dir=cat --instance_prompt="a photo of sks cat" --train_text_encoder \
      --text_encoder_lr 5e-6 --optimizer Prodigy --learning_rate 1.0 --adam_beta1 0.9 --adam_beta2 0.99 \
      --prodigy_beta3 0.98 --prodigy_decouple False --adam_weight_decay 0.01 --adam_epsilon 1e-7 \
      --use_8bit_adam --max_train_steps 10 --lr_scheduler constant""",
    )
    plan = plan_of(outcome, tmp_path)
    opt, p = plan.optimizer, plan.optimizer.prodigy
    assert opt.kind == "prodigy" and tuple(opt.betas) == (0.9, 0.99) and p.beta3 == pytest.approx(0.98)
    assert (opt.weight_decay, opt.eps) == (pytest.approx(0.01), pytest.approx(1e-7))
    # type=bool: bool("False") is True, and the two the command leaves out default to True
    assert (p.decouple, p.use_bias_correction, p.safeguard_warmup) == (True, True, True)
    # prodigyopt's defaults, which the script leaves alone
    assert (p.d0, p.d_coef, p.growth_rate, p.slice_p) == (1e-6, 1.0, None, 1)
    # "When using prodigy only learning_rate is used as the initial learning rate"
    assert opt.lr == opt.text_encoder_lr == pytest.approx(1.0)
    assert fate(outcome, "text_encoder_lr") == "inert" and "DBS405" in codes(outcome)
    assert fate(outcome, "use_8bit_adam") == "inert"
    assert "text encoders" in " ".join(d.message for d in outcome.diagnostics if d.path == "text_encoder_lr")


def test_prodigy_options_without_prodigy_and_text_encoder_lr_zero(tmp_path):
    images(tmp_path / "cat", 2, (1024, 1024))
    outcome = diffusers(
        tmp_path,
        f"""python train_dreambooth_lora_sdxl.py --pretrained_model_name_or_path={SDXL} \
      --instance_data_dir=cat --instance_prompt="a photo of sks cat" --train_text_encoder \
      --text_encoder_lr 0 --learning_rate 1e-4 --prodigy_beta3 0.98 --max_train_steps 10""",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adamw" and plan.optimizer.prodigy is None
    assert fate(outcome, "prodigy_beta3") == "inert"
    # `args.text_encoder_lr if args.text_encoder_lr else args.learning_rate`: 0 trains at learning_rate
    assert plan.optimizer.text_encoder_lr == pytest.approx(1e-4)


def test_prior_preservation_needs_class_data(tmp_path):
    images(tmp_path / "dog", 2)
    outcome = diffusers(
        tmp_path,
        f"train_dreambooth.py --pretrained_model_name_or_path {SD15} "
        "--instance_data_dir dog --instance_prompt sks --with_prior_preservation",
    )
    assert outcome.exit_code == 1 and "class_data_dir" in messages(outcome, "DBS402")


def test_warmup_longer_than_the_run_and_unknown_options(tmp_path):
    images(tmp_path / "dog", 2)
    outcome = diffusers(
        tmp_path,
        f"train_dreambooth.py --pretrained_model_name_or_path {SD15} "
        "--instance_data_dir dog --instance_prompt sks --lr_scheduler linear --max_train_steps 300 "
        "--use_dora",
    )
    assert outcome.exit_code == 1  # diffusers' default 500-step warm-up is longer: it runs, with a warning
    assert fate(outcome, "lr_warmup_steps") == "defaulted" and "DBS403" not in codes(outcome)
    assert "not shorter than the 300-step run" in outcome.conversion.reports["lr_warmup_steps"].note
    assert fate(outcome, "use_dora") == "invalid"  # not an option of train_dreambooth.py: argparse exits


def test_mixed_precision_from_accelerate_launch_and_missing(tmp_path):
    images(tmp_path / "dog", 2)
    cmd = (
        f"accelerate launch --mixed_precision bf16 --num_processes 1 train_dreambooth.py "
        f"--pretrained_model_name_or_path {SD15} --instance_data_dir dog --instance_prompt sks "
        "--max_train_steps 10"
    )
    plan = plan_of(diffusers(tmp_path, cmd), tmp_path)
    assert plan.precision.mixed == "bf16"
    bare = diffusers(tmp_path, cmd.replace("--mixed_precision bf16 ", ""))
    assert "DBS407" in codes(bare) and plan_of(bare, tmp_path).precision.mixed == "no"

"""diffusers' train_dreambooth_lora_flux.py, train_dreambooth_lora_sd3.py and train_dreambooth_sd3.py command
lines (their READMEs' settings) convert without --allow-unsupported, pass `dbspec check`, and plan the
scripts' flow draw: weighting_scheme as density and loss weighting, precondition_outputs, guidance_scale."""

from __future__ import annotations

import pytest

from convert_kit import (  # noqa: F401
    codes,
    diffusers,
    messages,
    empty_hub_cache,
    fate,
    images,
    plan_of,
    sd3_script_targets,
)

FLUX = "black-forest-labs/FLUX.1-dev"
SD35M = "stabilityai/stable-diffusion-3.5-medium"
README = (
    '--instance_data_dir=dog --output_dir=out --instance_prompt="a photo of sks dog" --resolution=512 '
    "--train_batch_size=1 --gradient_accumulation_steps=4 --report_to=tensorboard --lr_scheduler=constant "
    '--lr_warmup_steps=0 --max_train_steps=500 --validation_prompt="A photo of sks dog in a bucket" '
    "--validation_epochs=25 --seed=0"
)


def test_flux_lora_readme_command(tmp_path):
    images(tmp_path / "dog", 5, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_flux.py --pretrained_model_name_or_path={FLUX} "
        f'--mixed_precision="bf16" --guidance_scale=1 --optimizer=AdamW --learning_rate=1e-4 --rank 16 '
        f"--lora_alpha 8 --weighting_scheme logit_normal --logit_std 1.2 --cache_latents {README}",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and plan.loss.target == "flow_matching"
    flow = plan.loss.flow
    assert (flow.timesteps, flow.logit_mean, flow.logit_std) == ("logit_normal", 0.0, 1.2)
    assert (flow.weighting, flow.shift, flow.guidance) == (
        "none",
        0.0,
        1.0,
    )  # the model's scheduler, as the script
    assert plan.model.t5_max_length == 512
    assert (plan.adapter.rank, plan.adapter.alpha) == (16, 8.0)
    assert "ff_context.net.2" in plan.adapter.denoiser_targets  # the script's default layers
    assert plan.schedule.total_steps == 500 and plan.schedule.accumulation == 4
    assert plan.optimizer.lr == pytest.approx(1e-4) and plan.optimizer.weight_decay == pytest.approx(1e-4)
    assert plan.validation.scheduler == "flow_euler" and plan.validation.inference_steps == 28
    assert plan.checkpoints.save_precision == "bf16"  # no --upcast_before_saving
    assert fate(outcome, "cache_latents") == "inert"


def test_flux_lora_layers_and_sigma_sqrt(tmp_path):
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_flux.py --pretrained_model_name_or_path={FLUX} "
        '--mixed_precision=bf16 --lora_layers="attn.to_k,attn.to_q,attn.to_v,attn.to_out.0" '
        f"--weighting_scheme sigma_sqrt --upcast_before_saving --max_sequence_length 256 {README}",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.denoiser_targets == ("attn.to_k", "attn.to_q", "attn.to_v", "attn.to_out.0")
    assert (plan.loss.flow.timesteps, plan.loss.flow.weighting) == ("uniform", "sigma_sqrt")
    assert plan.model.t5_max_length == 256 and plan.checkpoints.save_precision == "fp32"


@pytest.mark.parametrize(
    ("scheme", "weighting", "prediction", "fate_"),
    [
        ("logit_normal", "none", "preconditioned", "defaulted"),
        ("sigma_sqrt", "none", "raw", "defaulted"),
        ("cosmap", "cosmap", "preconditioned", "defaulted"),
    ],
)
def test_sd3_lora_precondition_outputs(tmp_path, scheme, weighting, prediction, fate_):
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_sd3.py --pretrained_model_name_or_path={SD35M} "
        f'--mixed_precision="fp16" --learning_rate=4e-4 --weighting_scheme {scheme} {README}',
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sd3" and plan.model.t5_max_length == 77
    assert plan.loss.flow.weighting == weighting and plan.loss.flow.shift == 0.0  # SD3.5's own shift
    # x_t - sigma v against the latents is sigma^2 times the velocity loss; sigma_sqrt's sigma^-2 cancels it
    assert fate(outcome, "precondition_outputs") == fate_ and plan.loss.flow.prediction == prediction
    assert "precondition_outputs" not in messages(outcome, "DBS404")
    assert (plan.adapter.rank, plan.adapter.alpha) == (4, 4.0)
    vae = next(c for c in plan.precision.components if c.name == "vae")
    assert vae.dtype == "fp32"  # the SD3 scripts keep the VAE in fp32


def test_sd3_without_preconditioning_is_the_scripts_loss(tmp_path):
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_sd3.py --pretrained_model_name_or_path={SD35M} "
        f"--mixed_precision=bf16 --precondition_outputs 0 --weighting_scheme mode --mode_scale 0.8 {README}",
    )
    plan = plan_of(outcome, tmp_path)
    flow = plan.loss.flow
    assert (flow.timesteps, flow.mode_scale, flow.weighting) == ("mode", 0.8, "none")
    assert plan.adapter is None or plan.adapter.kind == "none"
    assert fate(outcome, "precondition_outputs") == "mapped"


SD35L = "stabilityai/stable-diffusion-3.5-large"
README_BLOCKS = "12,13,14,15,16,17,18,19,20,21,22,23,24,30,31,32,33,34,35,36,37"  # README_sd3.md's example


@pytest.mark.parametrize(
    ("flags", "layers", "blocks"),
    [
        ('--lora_blocks "12,30"', None, "12,30"),
        (f'--lora_blocks "{README_BLOCKS}"', None, README_BLOCKS),
        (
            '--lora_layers attn.to_k,attn.to_q,attn.to_v,attn.to_out.0 --lora_blocks "12, 30"',
            "attn.to_k,attn.to_q,attn.to_v,attn.to_out.0",
            "12, 30",
        ),
        ("--lora_blocks=7 --lora_layers=ff.net.2,attn.to_add_out", "ff.net.2,attn.to_add_out", "7"),
    ],
)
def test_sd3_lora_blocks_are_the_scripts_target_modules(tmp_path, flags, layers, blocks):
    """peft matches target_modules as module paths or `.`-suffixes of them, as dbspec matches
    adapter.denoiser_targets (runtime/adapters.py hands them to peft): the same list adapts the same modules
    (tests/runtime/test_sd3_lora_blocks.py checks it on SD3.5 large's layout and on a tiny run)."""
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_sd3.py --pretrained_model_name_or_path={SD35L} "
        f"--mixed_precision=bf16 --rank 8 {flags} {README}",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome) and "lora_blocks" not in messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    expected = sd3_script_targets(layers, blocks)
    assert list(plan.adapter.denoiser_targets) == expected and len(set(expected)) == len(expected)
    assert plan.model.family == "sd3" and (plan.adapter.rank, plan.adapter.alpha) == (8, 8.0)
    assert fate(outcome, "lora_blocks") == "mapped" and fate(outcome, "lora_layers") in (
        "mapped",
        "defaulted",
    )


def test_sd3_lora_blocks_repeated_block_is_one_target(tmp_path):
    """peft's LoraConfig keeps target_modules as a set: a block listed twice adapts its layers once."""
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_sd3.py --pretrained_model_name_or_path={SD35M} "
        f"--mixed_precision=bf16 --lora_blocks 3,3 --lora_layers attn.to_q {README}",
    )
    plan = plan_of(outcome, tmp_path)
    assert set(plan.adapter.denoiser_targets) == set(sd3_script_targets("attn.to_q", "3,3"))
    assert plan.adapter.denoiser_targets == ("transformer_blocks.3.attn.to_q",)


def test_sd3_lora_blocks_not_integers_stop_the_script(tmp_path):
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_sd3.py --pretrained_model_name_or_path={SD35M} "
        f"--mixed_precision=bf16 --lora_blocks 12,last {README}",
    )
    assert not outcome.written and "DBS402" in codes(outcome)
    assert "ValueError" in messages(outcome, "DBS402") and fate(outcome, "lora_blocks") == "invalid"


def test_flux_script_has_no_lora_blocks(tmp_path):
    """train_dreambooth_lora_flux.py has --lora_layers but no --lora_blocks: its argparse exits."""
    images(tmp_path / "dog", 3, (512, 512))
    outcome = diffusers(
        tmp_path,
        f"accelerate launch train_dreambooth_lora_flux.py --pretrained_model_name_or_path={FLUX} "
        f"--mixed_precision=bf16 --lora_blocks 3 {README}",
    )
    assert not outcome.written and "unrecognized argument" in messages(outcome, "DBS402")

"""SimpleTuner config.json + multidatabackend.json -> specs, asserted on the compiled plan."""

from __future__ import annotations

import json

from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    fate,
    images,
    messages,
    plan_of,
    repeats,
    simpletuner,
    write,
)


def _files(tmp_path, config: dict, backends: list) -> None:
    write(tmp_path / "config" / "config.json", json.dumps(config))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps(backends))


def test_sdxl_lora_dreambooth_with_regularisation(tmp_path):
    images(tmp_path / "data" / "subject", 3, (1216, 832))
    images(tmp_path / "data" / "reg", 8, (1024, 1024), prefix="r")
    _files(
        tmp_path,
        {
            "--model_type": "lora",
            "--model_family": "sdxl",
            "--pretrained_model_name_or_path": SDXL,
            "--output_dir": "output/models",
            "--lora_rank": 16,
            "--use_dora": True,
            "--learning_rate": "1e-4",
            "--optimizer": "optimi-lion",
            "--lr_scheduler": "polynomial",
            "--lr_warmup_steps": 100,
            "--max_train_steps": 2000,
            "--train_batch_size": 1,
            "--base_model_precision": "int8-quanto",
            "--mixed_precision": "bf16",
            "--noise_offset": 0.0,
            "--checkpointing_steps": 500,
            "--validation_prompt": "a photo of sks man",
            "--validation_steps": 500,
            "--validation_guidance": 5.0,
            "--seed": 3,
            "--data_backend_config": "config/multidatabackend.json",
        },
        [
            {
                "id": "subject",
                "type": "local",
                "instance_data_dir": "data/subject",
                "caption_strategy": "instanceprompt",
                "instance_prompt": "a photo of sks man",
                "repeats": 9,
                "crop": False,
                "resolution": 1024,
                "resolution_type": "pixel_area",
                "cache_dir_vae": "cache/vae/subject",
            },
            {
                "id": "reg",
                "type": "local",
                "instance_data_dir": "data/reg",
                "caption_strategy": "instanceprompt",
                "instance_prompt": "a photo of a man",
                "repeats": 0,
                "resolution": 1024,
                "resolution_type": "pixel_area",
                "is_regularisation_data": True,
            },
            {
                "id": "text-embeds",
                "type": "local",
                "dataset_type": "text_embeds",
                "default": True,
                "cache_dir": "c",
            },
        ],
    )
    outcome = simpletuner(tmp_path, "config/config.json", None)
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sdxl" and (plan.adapter.rank, plan.adapter.dropout) == (16, 0.1)
    assert plan.adapter.dora  # SimpleTuner's LoraConfig(use_dora=True)
    assert repeats(plan, 0) == [10] * 3 and repeats(plan, 1) == [1] * 8  # repeats + 1; no balancing
    assert (plan.loss.prior, plan.schedule.total_steps, plan.schedule.warmup_steps) == (
        "base_model",
        2000,
        100,
    )
    assert plan.optimizer.kind == "lion" and plan.optimizer.max_grad_norm == 2.0  # SimpleTuner's default
    assert any(c.quantized == "int8" for c in plan.precision.components)
    assert plan.validation.guidance == 5.0 and tuple(plan.validation.steps) == (500, 1000, 1500, 2000)
    assert fate(outcome, "backends[text-embeds].cache_dir") == "inert"


def test_square_crops_captions_from_files_and_masks(tmp_path):
    images(tmp_path / "img", 2, (640, 480), caption="ohwx shoe", caption_ext=".txt")
    images(tmp_path / "masks", 2, (640, 480))
    _files(
        tmp_path,
        {
            "model_family": "sd1x",
            "model_type": "full",
            "pretrained_model_name_or_path": SD15,
            "learning_rate": 2e-6,
            "lr_scheduler": "constant",
            "num_train_epochs": 3,
            "train_batch_size": 2,
            "optimizer": "bnb-adamw8bit",
            "offset_noise": True,
            "noise_offset": 0.05,
            "noise_offset_probability": 1.0,
            "snr_gamma": 5,
        },
        [
            {
                "id": "shoes",
                "instance_data_dir": "img",
                "caption_strategy": "textfile",
                "crop": True,
                "crop_aspect": "square",
                "crop_style": "center",
                "resolution": 512,
                "resolution_type": "pixel_area",
                "conditioning_data": "shoe-masks",
            },
            {
                "id": "shoe-masks",
                "dataset_type": "conditioning",
                "conditioning_type": "mask",
                "instance_data_dir": "masks",
            },
        ],
    )
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    plan = plan_of(outcome, tmp_path)
    assert [b.size for b in plan.buckets] == [(512, 512)] and plan.datasets[0].crop == "center"
    assert plan.datasets[0].images[1].caption == "ohwx shoe 1" and plan.loss.masked
    assert plan.adapter.kind == "none" and plan.optimizer.kind == "adamw8bit"
    assert (plan.schedule.epochs, plan.loss.noise_offset, plan.loss.min_snr_gamma) == (3, 0.05, 5.0)
    # ModelFoundation.loss: the mask's red channel, loss x mask averaged over the whole latent (kohya's way)
    assert plan.datasets[0].mask_channel == "red" and plan.loss.mask_mean == "image"
    assert "mask" not in messages(outcome, "DBS404")


def test_torchao_and_bitsandbytes_base_precisions_name_their_backend(tmp_path):
    for level, backend, kind in (("nf4-bnb", "bitsandbytes", "nf4"), ("int8-torchao", "torchao", "int8")):
        folder = tmp_path / level
        images(folder / "img", 2, (512, 512))
        _files(
            folder,
            {
                "model_family": "sd1x",
                "model_type": "lora",
                "pretrained_model_name_or_path": SD15,
                "learning_rate": 1e-4,
                "max_train_steps": 10,
                "base_model_precision": level,
            },
            [
                {
                    "id": "x",
                    "instance_data_dir": "img",
                    "caption_strategy": "instanceprompt",
                    "instance_prompt": "ohwx",
                    "resolution": 512,
                    "resolution_type": "pixel_area",
                }
            ],
        )
        outcome = simpletuner(folder, "config/config.json", "config/multidatabackend.json")
        plan = plan_of(outcome, folder)
        assert plan.precision.quantize_backend == backend, level
        assert next(c for c in plan.precision.components if c.name == "unet").quantized == kind
        assert fate(outcome, "base_model_precision") == "mapped"


def test_pixel_resolution_partial_noise_offset_and_lycoris_are_unsupported(tmp_path):
    images(tmp_path / "img", 2)
    _files(
        tmp_path,
        {
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "lora_type": "lycoris",
            "offset_noise": True,
            "noise_offset": 0.1,
            "lr_scheduler": "sine",
            "some_new_option": 3,
        },
        [
            {
                "id": "a",
                "instance_data_dir": "img",
                "resolution": 1024,
                "resolution_type": "pixel",
                "probability": 0.5,
            }
        ],
    )
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 1 and not outcome.written
    for key in (
        "lora_type",
        "offset_noise",
        "lr_scheduler",
        "some_new_option",
        "backends[a].resolution_type",
        "backends[a].probability",
    ):
        assert fate(outcome, key) == "unsupported", key


def test_other_families_are_not_convertible(tmp_path):
    _files(
        tmp_path,
        {"model_family": "pixart_sigma", "pretrained_model_name_or_path": "PixArt-alpha/PixArt-Sigma"},
        [],
    )
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 1 and "SD 1.x, SD 2.x, SDXL, SD3 and Flux.1" in messages(outcome, "DBS403")

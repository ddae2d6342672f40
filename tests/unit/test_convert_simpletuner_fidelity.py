"""SimpleTuner config.json + multidatabackend.json pairs as its quickstart, examples and DREAMBOOTH docs write
them, converted without --allow-unsupported and asserted on the plan against what SimpleTuner does (bc8e6ab):
its LR curves (helpers/training/custom_schedule.py, transcribed here independently of dbspec's), prediction
type, noise offset, image filters, steps, batch, validation and checkpoint steps."""

from __future__ import annotations

import json
import math

from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    messages,
    plan_of,
    simpletuner,
    write,
)


def _pair(tmp_path, config: dict, backends: list, **extra: dict) -> None:
    write(tmp_path / "config" / "config.json", json.dumps(config, indent=2))
    write(tmp_path / "config" / "multidatabackend.json", json.dumps(backends, indent=2))
    for name, content in extra.items():
        write(tmp_path / "config" / f"{name}.json", json.dumps(content))


def _convert(tmp_path):
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 0 and outcome.written, errors(outcome)
    return outcome


def _backend(name: str, folder: str, **settings) -> dict:
    return {
        "id": name,
        "type": "local",
        "instance_data_dir": folder,
        "caption_strategy": "instanceprompt",
        "instance_prompt": "a photo of sks dog",
        "cache_dir_vae": f"cache/vae/{name}",
        **settings,
    }


TEXT_EMBEDS = {"id": "text-embeds", "type": "local", "dataset_type": "text_embeds", "default": True}


# --- SimpleTuner's own LR formulas, as its trainer calls them ---
def st_cosine(step: int, lr: float, t_0: int, eta_min: float) -> float:
    """custom_schedule.Cosine with steps_per_epoch = -1: T_cur = -step; floor(lr * 1e9) / 1e9."""
    value = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * -step / t_0)) / 2
    return math.floor(value * 1e9) / 1e9


def st_polynomial(step: int, lr: float, warmup: int, total: int, lr_end: float, power: float) -> float:
    if step < warmup:
        return lr * step / max(1, warmup)
    if step > total:
        return lr_end
    return (lr - lr_end) * (1 - (step - warmup) / (total - warmup)) ** power + lr_end


def _points_match(plan, expected) -> None:
    assert len(plan.schedule.lr_points) >= 3
    for step, lr in plan.schedule.lr_points:
        assert math.isclose(lr, expected(step), rel_tol=1e-12, abs_tol=1e-18), (step, lr, expected(step))


# 1 ------------------------------------------------------------------------------------------------
def test_sdxl_lora_quickstart_polynomial_uses_lr_power_and_lr_end(tmp_path):
    images(tmp_path / "datasets" / "dog", 5, (1024, 1024))
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "output_dir": "output/models",
            "lora_rank": 16,
            "learning_rate": 1e-4,
            "lr_scheduler": "polynomial",
            "lr_warmup_steps": 100,
            "max_train_steps": 1000,
            "train_batch_size": 1,
            "checkpointing_steps": 250,
            "checkpoints_total_limit": 3,
            "validation_prompt": "a photo of sks dog in a bucket",
            "validation_steps": 200,
            "mixed_precision": "bf16",
            "optimizer": "optimi-adamw",
            "data_backend_config": "config/multidatabackend.json",
        },
        [_backend("dog", "datasets/dog", repeats=0, crop=False, resolution=1024,
                  resolution_type="pixel_area"), TEXT_EMBEDS],
    )  # fmt: skip
    plan = plan_of(_convert(tmp_path), tmp_path)
    s = plan.schedule
    assert (s.lr_schedule, s.power, s.lr_end, s.warmup_steps) == ("polynomial", 0.8, 4e-7, 100)
    _points_match(plan, lambda k: st_polynomial(k, 1e-4, 100, 1000, 4e-7, 0.8))
    assert (s.total_steps, s.batch_size, plan.model.prediction) == (1000, 1, "epsilon")
    assert tuple(s.checkpoint_steps) == (250, 500, 750, 1000) and plan.checkpoints.keep == 3
    assert tuple(s.validation_steps) == (200, 400, 600, 800, 1000)  # validation_steps -> step interval
    assert plan.loss.noise_offset == 0.0 and not plan.loss.zero_terminal_snr
    assert (
        plan.datasets[0].caption_processing.caption_dropout_rate == 0.1
    )  # caption_dropout_probability's default


# 2 ------------------------------------------------------------------------------------------------
def test_sd2x_flavour_cosine_is_a_wave_with_v_prediction_and_zero_terminal_snr(tmp_path):
    images(tmp_path / "data", 4, (768, 768))
    _pair(
        tmp_path,
        {
            "model_type": "full",
            "model_family": "sd2x",
            "model_flavour": "2.1",
            "learning_rate": 2e-6,
            "lr_scheduler": "cosine",
            "lr_warmup_steps": 50,
            "max_train_steps": 400,
            "train_batch_size": 2,
            "validation_prompt": "sks dog",
            "optimizer": "adamw_bf16",
            "checkpoint_step_interval": 25,
        },
        [_backend("subject", "data", resolution=768, resolution_type="pixel_area", crop=True,
                  crop_aspect="square")],
    )  # fmt: skip
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.model.base == "stabilityai/stable-diffusion-2-1"  # SimpleTuner's sd2x flavour table
    assert plan.model.prediction == "v_prediction" and plan.loss.zero_terminal_snr  # forced for sd2x
    s = plan.schedule
    assert (s.lr_schedule, s.t_max, s.eta_min, s.warmup_steps) == ("simpletuner_cosine", 50, 4e-7, 0)
    _points_match(plan, lambda k: st_cosine(k, 2e-6, 50, 4e-7))
    lr = dict(s.lr_points)
    assert lr[0] == st_cosine(0, 2e-6, 50, 4e-7) and lr[100] == lr[0]  # back up at 2 x 50 steps: a wave
    assert tuple(s.validation_steps)[:3] == (100, 200, 300)  # validation_step_interval's default 100
    assert plan.validation.scheduler == "euler"  # sd2x's DEFAULT_NOISE_SCHEDULER
    assert tuple(s.checkpoint_steps)[:3] == (25, 50, 75)
    assert fate(outcome, "lr_warmup_steps") == "mapped"


# 3 ------------------------------------------------------------------------------------------------
def test_sd1x_constant_with_warmup_steps_offset_noise_and_caption_dropout(tmp_path):
    images(tmp_path / "img", 6, (512, 512))
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "lora_type": "standard",
            "model_family": "sd1x",
            "pretrained_model_name_or_path": SD15,
            "learning_rate": 5e-5,
            "lr_scheduler": "constant",
            "lr_warmup_steps": 20,
            "max_train_steps": 120,
            "train_batch_size": 2,
            "offset_noise": True,
            "noise_offset": 0.05,
            "noise_offset_probability": 1.0,
            "caption_dropout_probability": 0.1,
            "checkpoint_step_interval": 40,
        },
        [_backend("dog", "img", resolution=512, resolution_type="pixel_area")],
    )
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    s = plan.schedule
    assert (s.lr_schedule, s.warmup_steps) == ("constant_with_warmup", 20)  # as SimpleTuner renames it
    _points_match(plan, lambda k: 5e-5 * min(1.0, k / 20))
    assert plan.loss.noise_offset == 0.05 and plan.loss.noise.offset == 0.05
    assert plan.datasets[0].caption_processing.caption_dropout_rate == 0.1  # its collate's empty caption
    assert tuple(s.checkpoint_steps) == (40, 80, 120) and plan.model.prediction == "epsilon"
    assert fate(outcome, "lora_type") == "mapped"
    assert (
        plan.validation.steps == () or not plan.validation.prompts
    )  # no prompt: SimpleTuner never validates


# 4 ------------------------------------------------------------------------------------------------
def test_noise_offset_without_offset_noise_is_not_applied_and_prediction_type_wins(tmp_path):
    images(tmp_path / "img", 3, (512, 512))
    _pair(
        tmp_path,
        {
            "model_family": "sd1x",
            "pretrained_model_name_or_path": SD15,
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
            "noise_offset": 0.1,
            "learning_rate": 1e-4,
            "max_train_steps": 30,
        },
        [_backend("dog", "img", resolution=512)],
    )
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.noise_offset == 0.0 and fate(outcome, "noise_offset") == "inert"
    assert plan.model.prediction == "v_prediction" and plan.loss.zero_terminal_snr
    assert plan.schedule.lr_schedule == "constant_with_warmup"  # SimpleTuner's default, 0 warm-up


# 5 ------------------------------------------------------------------------------------------------
def test_pixel_square_crops_and_config_minimum_image_size_filter_every_backend(tmp_path):
    images(tmp_path / "big", 3, (640, 800))
    images(tmp_path / "big", 2, (400, 900), prefix="small")  # short side 400 < 512: SimpleTuner drops them
    images(tmp_path / "reg", 4, (512, 512), prefix="r")
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sd1x",
            "pretrained_model_name_or_path": SD15,
            "minimum_image_size": 512,
            "resolution_type": "pixel",
            "resolution": 512,
            "learning_rate": 1e-4,
            "max_train_steps": 50,
        },
        [
            _backend("dog", "big", crop=True, crop_aspect="square", crop_style="center"),
            _backend("reg", "reg", crop=True, crop_aspect="square", is_regularisation_data=True,
                     instance_prompt="a photo of a dog"),
        ],
    )  # fmt: skip
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert [b.size for b in plan.buckets] == [(512, 512)]  # pixel 512 + square crop: 512 x 512
    assert len(plan.datasets[0].images) == 3 and len(plan.datasets[0].skipped) == 2
    assert len(plan.datasets[1].images) == 4  # 512 x 512 passes SimpleTuner's 512 <= width and height
    assert fate(outcome, "minimum_image_size") == "mapped" and fate(outcome, "resolution_type") == "mapped"


# 6 ------------------------------------------------------------------------------------------------
def test_area_resolution_megapixels_and_downsample_equal_to_resolution(tmp_path):
    images(tmp_path / "a", 3, (1024, 1024))
    images(tmp_path / "b", 3, (600, 600))
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "learning_rate": 1e-4,
            "max_train_steps": 20,
        },
        [
            _backend("a", "a", resolution=1.0, resolution_type="area", crop=True, crop_aspect="square"),
            _backend("b", "b", resolution=0.25, resolution_type="area", crop=True, crop_aspect="square",
                     maximum_image_size=0.25, target_downsample_size=0.25),
        ],
    )  # fmt: skip
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    # SimpleTuner: edge = round(int(sqrt(area x 1e6)) / 64) x 64 -> 1000 -> 1024, 500 -> 512
    sides = {round(math.sqrt(a * 1e6)) for a in (1.0, 0.25)}
    assert sides == {1000, 500}
    assert sorted(b.size for b in plan.buckets) == [(512, 512), (1024, 1024)]
    assert fate(outcome, "backends[b].maximum_image_size") == "inert"


# 7 ------------------------------------------------------------------------------------------------
def test_config_resolution_with_backend_resolutions_and_learning_rate_after_optimizer(tmp_path):
    images(tmp_path / "img", 4, (1024, 1024))
    _pair(
        tmp_path,
        {
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "resolution": 1024,
            "resolution_type": "pixel_area",
            "optimizer": "adamw_bf16",
            "learning_rate": 8e-5,
            "lr_scheduler": "linear",
            "lr_warmup_steps": 10,
            "max_train_steps": 100,
            "train_batch_size": 4,
            "gradient_accumulation_steps": 2,
        },
        [_backend("dog", "img", resolution=768, resolution_type="pixel_area")],
    )
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.lr == 8e-5 and (plan.schedule.batch_size, plan.schedule.accumulation) == (4, 2)
    assert all(max(b.size) <= 1024 and b.size[0] * b.size[1] <= 768 * 768 for b in plan.buckets)
    _points_match(plan, lambda k: 8e-5 * (k / 10 if k < 10 else max(0.0, (100 - k) / 90)))
    assert fate(outcome, "resolution") == "inert" and fate(outcome, "resolution_type") == "inert"


# 8 ------------------------------------------------------------------------------------------------
def test_lycoris_lokr_config(tmp_path):
    images(tmp_path / "img", 3, (1024, 1024))
    lycoris = {
        "algo": "lokr",
        "multiplier": 1.0,
        "linear_dim": 10000,
        "linear_alpha": 1,
        "factor": 16,
        "apply_preset": {
            "target_module": ["Attention", "FeedForward"],
            "module_algo_map": {"Attention": {"factor": 16}, "FeedForward": {"factor": 16}},
        },
    }
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "lora_type": "lycoris",
            "lycoris_config": "config/lycoris_config.json",
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "learning_rate": 1e-4,
            "max_train_steps": 10,
        },
        [_backend("dog", "img", resolution=1024)],
        lycoris_config=lycoris,
    )
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "lokr" and plan.adapter.rank == 10000 and plan.adapter.alpha == 1.0
    assert plan.adapter.factor == 16
    assert set(plan.adapter.denoiser_targets) == {
        "to_q",
        "to_k",
        "to_v",
        "to_out.0",
        "ff.net.0.proj",
        "ff.net.2",
    }


# 9 ------------------------------------------------------------------------------------------------
def test_huber_loss_with_snr_schedule(tmp_path):
    images(tmp_path / "img", 3, (512, 512))
    _pair(
        tmp_path,
        {
            "model_family": "sd1x",
            "pretrained_model_name_or_path": SD15,
            "loss_type": "huber",
            "huber_schedule": "snr",
            "huber_c": 0.2,
            "learning_rate": 1e-4,
            "max_train_steps": 1200,
        },
        [_backend("dog", "img", resolution=512)],
    )
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert tuple(plan.schedule.checkpoint_steps) == (500, 1000, 1200)  # checkpoint_step_interval's default
    assert plan.loss.kind == "pseudo_huber"  # SimpleTuner's 2c(sqrt(x^2 + c^2) - c)
    assert (plan.loss.huber.schedule, plan.loss.huber.c, plan.loss.huber.scale) == ("snr", 0.2, 1.0)


# 10 -----------------------------------------------------------------------------------------------
def test_sdxl_cosine_without_warmup_uses_a_period_of_1000_epochs_and_accumulation(tmp_path):
    images(tmp_path / "img", 8, (1024, 1024))
    _pair(
        tmp_path,
        {
            "model_type": "lora",
            "model_family": "sdxl",
            "pretrained_model_name_or_path": SDXL,
            "learning_rate": 1e-4,
            "lr_scheduler": "cosine",
            "lr_end": 1e-6,
            "num_train_epochs": 3,
            "train_batch_size": 2,
            "gradient_accumulation_steps": 2,
            "checkpoint_step_interval": 2,
        },
        [_backend("dog", "img", resolution=1024, repeats=1)],
    )
    plan = plan_of(_convert(tmp_path), tmp_path)
    s = plan.schedule
    # 8 images x 2 passes = 16 samples / batch 2 = 8 batches / accumulation 2 = 4 steps per epoch
    assert (s.steps_per_epoch, s.total_steps, s.epochs) == (4, 12, 3)
    assert (s.lr_schedule, s.t_max, s.eta_min) == ("simpletuner_cosine", 1000, 1e-6)  # T_0 0 -> 1000
    _points_match(plan, lambda k: st_cosine(k, 1e-4, 1000, 1e-6))
    assert tuple(s.checkpoint_steps) == (2, 4, 6, 8, 10, 12)


# 11 -----------------------------------------------------------------------------------------------
def test_what_stays_refused_says_why(tmp_path):
    images(tmp_path / "img", 2, (512, 512))
    _pair(
        tmp_path,
        {
            "model_family": "sd1x",
            "pretrained_model_name_or_path": SD15,
            "lr_scheduler": "piecewise_constant",
            "lr_warmup_steps": 100,
            "offset_noise": True,  # noise_offset_probability's default 0.25: a share of steps
            "controlnet": True,
        },
        [
            {"id": "hf", "type": "huggingface", "dataset_name": "user/dogs"},
            _backend("p", "img", resolution=512, resolution_type="pixel"),  # short edge, aspect kept
        ],
    )
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 1 and not outcome.written
    for key in (
        "lr_scheduler",
        "offset_noise",
        "controlnet",
        "backends[hf].type",
        "backends[p].resolution_type",
    ):
        assert fate(outcome, key) == "unsupported", key
    said = messages(outcome, "DBS403")
    assert "Hugging Face dataset backend" in said and "ControlNet" in said and "piecewise" in said


# 12 -----------------------------------------------------------------------------------------------
def test_minimum_image_size_units_follow_the_resolution_type(tmp_path):
    """A pixel_area backend's own minimum is pixels (SimpleTuner squares it into megapixels); the config's is
    taken as megapixels there and SimpleTuner raises above 5."""
    images(tmp_path / "img", 3, (768, 1024))
    images(tmp_path / "img", 2, (480, 640), prefix="small")
    config = {
        "model_type": "lora",
        "model_family": "sdxl",
        "pretrained_model_name_or_path": SDXL,
        "learning_rate": 1e-4,
        "max_train_steps": 10,
    }
    square = {"resolution": 512, "resolution_type": "pixel_area", "crop": True, "crop_aspect": "square"}
    _pair(tmp_path, config, [_backend("dog", "img", minimum_image_size=512, **square)])
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert len(plan.datasets[0].images) == 3 and len(plan.datasets[0].skipped) == 2  # 480 < 512
    assert fate(outcome, "backends[dog].minimum_image_size") == "mapped"

    _pair(tmp_path, {**config, "minimum_image_size": 512}, [_backend("dog", "img", **square)])
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 1 and fate(outcome, "minimum_image_size") == "invalid"

    _pair(tmp_path, {**config, "minimum_image_size": 0.25}, [_backend("dog", "img", **square)])
    plan = plan_of(_convert(tmp_path), tmp_path)  # 0.25 megapixels: both edges >= 500
    assert len(plan.datasets[0].images) == 3 and len(plan.datasets[0].skipped) == 2


# 13 -----------------------------------------------------------------------------------------------
def test_lycoris_loha_and_locon_presets_and_a_preset_less_config(tmp_path):
    images(tmp_path / "img", 3, (512, 512))
    config = {
        "model_type": "lora",
        "lora_type": "lycoris",
        "lycoris_config": "config/lycoris_config.json",
        "model_family": "sd1x",
        "pretrained_model_name_or_path": SD15,
        "learning_rate": 1e-4,
        "max_train_steps": 10,
    }
    preset = {"target_module": ["Attention"]}
    _pair(tmp_path, config, [_backend("dog", "img", resolution=512)],
          lycoris_config={"algo": "loha", "linear_dim": 8, "linear_alpha": 4,
                          "apply_preset": preset})  # fmt: skip
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.alpha) == ("loha", 8, 4.0)
    assert set(plan.adapter.denoiser_targets) == {"to_q", "to_k", "to_v", "to_out.0"}

    _pair(tmp_path, config, [_backend("dog", "img", resolution=512)],
          lycoris_config={"algo": "locon", "apply_preset": preset, "conv_dim": 4})  # fmt: skip
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.alpha) == ("lora", 4, 1.0)  # its defaults 4, 1
    assert fate(outcome, "lycoris.conv_dim") == "inert"  # Attention modules hold no convolution

    # LyCORIS's use_scalar and LoKr's full_matrix: the [adapter] switches, the rank kept
    _pair(tmp_path, config, [_backend("dog", "img", resolution=512)],
          lycoris_config={"algo": "lokr", "linear_dim": 8, "apply_preset": preset, "full_matrix": True,
                          "use_scalar": True})  # fmt: skip
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert (plan.adapter.kind, plan.adapter.rank, plan.adapter.full_matrix, plan.adapter.scalar) == (
        "lokr",
        8,
        True,
        True,
    )

    _pair(tmp_path, config, [_backend("dog", "img", resolution=512)],
          lycoris_config={"algo": "lokr", "factor": 8})  # fmt: skip
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert outcome.exit_code == 1 and "default preset" in messages(outcome, "DBS403")


# 14 -----------------------------------------------------------------------------------------------
def test_no_path_and_no_flavour_takes_the_familys_default_flavour(tmp_path):
    images(tmp_path / "img", 3, (1024, 1024))
    _pair(
        tmp_path,
        {"model_type": "lora", "model_family": "sdxl", "learning_rate": 1e-4, "max_train_steps": 10},
        [_backend("dog", "img", resolution=1024)],
    )
    outcome = _convert(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert plan.model.base == "stabilityai/stable-diffusion-xl-base-1.0"  # sdxl's DEFAULT_MODEL_FLAVOUR
    assert plan.model.prediction == "epsilon"


def test_a_refiner_flavour_is_the_sdxl_refiner_family(tmp_path):
    images(tmp_path / "img", 3, (1024, 1024))
    config = {
        "model_type": "lora",
        "model_family": "sdxl",
        "model_flavour": "refiner-1.0",
        "max_train_steps": 10,
    }
    _pair(tmp_path, {**config, "learning_rate": 1e-4}, [_backend("dog", "img", resolution=1024)])
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert plan.model.base == "stabilityai/stable-diffusion-xl-refiner-1.0"
    assert plan.model.family == "sdxl_refiner" and "text_encoder" not in plan.model.params


# 15 ------------------------------------------------------------------------------------------------
def st_sine(step: int, lr: float, t_0: int, eta_min: float) -> float:
    """custom_schedule.Sine: a continuous sine from step 0, floored to 1e-9."""
    value = eta_min + (lr - eta_min) * (0.5 * (1 + math.sin(math.pi * step / t_0)))
    return math.floor(value * 1e9) / 1e9


def test_sine_and_the_hard_restart_cosine(tmp_path):
    images(tmp_path / "img", 4, (512, 512))
    config = {
        "model_type": "lora",
        "model_family": "sd1x",
        "pretrained_model_name_or_path": SD15,
        "learning_rate": 1.23456789e-4,
        "lr_scheduler": "sine",
        "lr_warmup_steps": 40,
        "max_train_steps": 200,
        "checkpoint_step_interval": 10,
    }
    _pair(tmp_path, config, [_backend("dog", "img", resolution=512)])
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert (plan.schedule.lr_schedule, plan.schedule.t_max, plan.schedule.eta_min) == (
        "simpletuner_sine",
        40,
        4e-7,
    )
    _points_match(plan, lambda k: st_sine(k, 1.23456789e-4, 40, 4e-7))
    assert dict(plan.schedule.lr_points)[0] < 1.23456789e-4 * 0.51  # it starts half-way

    # CosineAnnealingHardRestarts keeps T_cur at 0 (step % -1): the LR never moves from floor(lr x 1e9) / 1e9
    _pair(
        tmp_path, {**config, "lr_scheduler": "cosine_with_restarts"}, [_backend("dog", "img", resolution=512)]
    )
    plan = plan_of(_convert(tmp_path), tmp_path)
    assert (
        plan.schedule.lr_schedule == "constant" and plan.optimizer.lr == math.floor(1.23456789e-4 * 1e9) / 1e9
    )
    _points_match(plan, lambda k: math.floor(1.23456789e-4 * 1e9) / 1e9)

    _pair(tmp_path, {**config, "lr_warmup_steps": 0}, [_backend("dog", "img", resolution=512)])
    outcome = simpletuner(tmp_path, "config/config.json", "config/multidatabackend.json")
    assert (
        outcome.exit_code == 1 and fate(outcome, "lr_warmup_steps") == "invalid"
    )  # its Sine raises on T_0 0

"""kohya sd3_train_network.py's `--enable_scaled_pos_embed` -> model.scaled_pos_embed: a GUI-style
`--config_file` and a dataset config of several resolutions, converted and planned; the plan's latent sides
are kohya's (sd3_train_network.py: round(sqrt(width x height)) // 8 of each dataset's resolution, restated
here), beside the random window of `--pos_emb_random_crop_rate`."""

from __future__ import annotations

import math

from convert_kit import codes, component_file, errors, fate, images, kohya, plan_of, write  # noqa: F401

from tests.runtime.runspec import summary_text

SD35M = "stabilityai/stable-diffusion-3.5-medium"
RESOLUTIONS = [(1024, 1024), (768, 512)]  # (width, height) per kohya dataset, as its get_resolutions gives


def _convert(tmp_path, scaled: bool = True):
    images(tmp_path / "img" / "ohwx", 4, (1024, 1024), caption="photo of ohwx dog", caption_ext=".txt")
    images(tmp_path / "img" / "wide", 4, (960, 640), caption="photo of ohwx dog", caption_ext=".txt")
    write(
        tmp_path / "dataset.toml",
        '[general]\ncaption_extension = ".txt"\nenable_bucket = true\nbucket_reso_steps = 64\n'
        "[[datasets]]\nresolution = 1024\nbatch_size = 2\n"
        '[[datasets.subsets]]\nimage_dir = "img/ohwx"\nnum_repeats = 2\n'
        "[[datasets]]\nresolution = [768, 512]\nbatch_size = 2\n"
        '[[datasets.subsets]]\nimage_dir = "img/wide"\nnum_repeats = 1\n',
    )
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    write(
        tmp_path / "config.toml",
        f'pretrained_model_name_or_path = "{SD35M}"\n'
        'clip_l = "sd3/clip_l.safetensors"\nclip_g = "sd3/clip_g.safetensors"\n'
        't5xxl = "sd3/t5xxl_fp16.safetensors"\ndataset_config = "dataset.toml"\n'
        'output_dir = "out"\noutput_name = "ohwx-sd35m"\nsave_model_as = "safetensors"\n'
        'network_module = "networks.lora_sd3"\nnetwork_dim = 16\nnetwork_alpha = 16\n'
        "network_train_unet_only = true\n"
        'optimizer_type = "AdamW8bit"\nlearning_rate = 1e-4\nlr_scheduler = "constant"\n'
        'max_train_epochs = 4\nsave_every_n_epochs = 1\nmixed_precision = "bf16"\nsave_precision = "bf16"\n'
        'sdpa = true\ngradient_checkpointing = true\nseed = 42\nweighting_scheme = "logit_normal"\n'
        "training_shift = 3.0\ncache_latents_to_disk = true\ncache_text_encoder_outputs = true\n"
        "pos_emb_random_crop_rate = 0.1\n" + ("enable_scaled_pos_embed = true\n" if scaled else ""),
    )
    return kohya(tmp_path, config_file=tmp_path / "config.toml", script="sd3_train_network")


def kohya_latent_sides(resolutions) -> tuple[int, ...]:
    """sd3_train_network.py: one latent side per dataset resolution (8 is the latent stride), then MMDiT
    sorts the distinct ones."""
    return tuple(sorted({round(math.sqrt(w * h)) // 8 for w, h in resolutions}))


def test_the_flag_maps_and_the_plan_has_kohyas_tables(tmp_path):
    outcome = _convert(tmp_path)
    assert "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "enable_scaled_pos_embed") == "mapped"
    assert outcome.conversion.reports["enable_scaled_pos_embed"].target == "model.scaled_pos_embed"
    assert "scaled_pos_embed = true" in outcome.text
    plan = plan_of(outcome, tmp_path)
    expected = kohya_latent_sides(RESOLUTIONS)
    assert expected == (78, 128)  # sqrt(768 x 512) = 627.1: kohya's non-square side
    assert plan.model.scaled_pos_embed == expected
    assert plan.loss.pos_embed_random_crop_rate == 0.1  # the window moves within the scaled tables
    assert sorted({(d.resolution, d.resolution_height or d.resolution) for d in plan.datasets}) == sorted(
        RESOLUTIONS
    )
    text = summary_text(plan)
    # patched sides 39 and 64: grids int(1.5 x side); the first table's areas up to the two areas' midpoint
    assert "latent 78 (39 patches, grid 58, areas up to 2808)" in text
    assert "latent 128 (64 patches, grid 96, areas up to 9216)" in text
    assert (39 * 39 + 64 * 64) // 2 == 2808 and int((64 * 1.5) ** 2) == 9216


def test_without_the_flag_the_stored_table_stays(tmp_path):
    outcome = _convert(tmp_path, scaled=False)
    assert fate(outcome, "enable_scaled_pos_embed") != "unsupported"
    assert "scaled_pos_embed" not in outcome.text
    assert plan_of(outcome, tmp_path).model.scaled_pos_embed == ()

"""kohya sd3_train_network.py's per-encoder caption dropout (`--clip_l_dropout_rate`, `--clip_g_dropout_rate`,
`--t5_dropout_rate`, library/strategy_sd3.py Sd3TextEncodingStrategy) -> loss.text_encoder_dropout, exact;
`--pos_emb_random_crop_rate` -> loss.pos_embed_random_crop_rate, beside `--enable_scaled_pos_embed` ->
model.scaled_pos_embed (tests/unit/test_convert_kohya_sd3_scaled_pos.py)."""

from __future__ import annotations

from convert_kit import codes, component_file, errors, fate, images, kohya, plan_of  # noqa: F401

SD35 = "stabilityai/stable-diffusion-3.5-large"


def _sd3(tmp_path, extra: str, *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        allow=allow,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_sd3 --network_dim 16 --network_alpha 8 --network_train_unet_only --optimizer_type "
        "adamw8bit --learning_rate 1e-4 --max_train_epochs 4 --save_every_n_epochs 1 --weighting_scheme "
        f"logit_normal --cache_latents_to_disk --cache_text_encoder_outputs {extra}",
    )


def test_the_three_rates_become_the_per_encoder_list_with_the_text_cache(tmp_path):
    outcome = _sd3(tmp_path, "--clip_l_dropout_rate 0.1 --clip_g_dropout_rate 0.2 --t5_dropout_rate 0.5")
    assert "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.text_encoder_dropout == (0.1, 0.2, 0.5)
    assert plan.cache.text_embeddings  # kohya drops cached outputs too: zeros need no encoding
    for key in ("clip_l_dropout_rate", "clip_g_dropout_rate", "t5_dropout_rate"):
        assert fate(outcome, key) == "mapped"
        assert outcome.conversion.reports[key].target == "loss.text_encoder_dropout"
    assert "text_encoder_dropout = [0.1, 0.2, 0.5]" in outcome.text


def test_one_rate_keeps_the_others_at_kohyas_default(tmp_path):
    outcome = _sd3(tmp_path, "--t5_dropout_rate 0.3")
    assert plan_of(outcome, tmp_path).loss.text_encoder_dropout == (0.0, 0.0, 0.3)
    assert fate(outcome, "t5_dropout_rate") == "mapped"
    assert fate(outcome, "clip_l_dropout_rate") == "defaulted"


def test_rates_past_the_bounds_act_as_the_bounds(tmp_path):
    """kohya's `rate > 0 and random() < rate`: never below 0, always from 1 on."""
    outcome = _sd3(tmp_path, "--clip_l_dropout_rate -0.2 --clip_g_dropout_rate 1.5 --t5_dropout_rate 1")
    assert plan_of(outcome, tmp_path).loss.text_encoder_dropout == (0.0, 1.0, 1.0)
    assert "acts as 1" in outcome.conversion.reports["clip_g_dropout_rate"].note
    assert "acts as 0" in outcome.conversion.reports["clip_l_dropout_rate"].note


def test_no_rate_writes_nothing(tmp_path):
    outcome = _sd3(tmp_path, "--clip_l_dropout_rate 0")
    assert plan_of(outcome, tmp_path).loss.text_encoder_dropout == ()
    assert "text_encoder_dropout" not in outcome.text


def test_the_random_position_window_maps_beside_the_scaled_tables(tmp_path):
    outcome = _sd3(tmp_path, "--pos_emb_random_crop_rate 0.2 --enable_scaled_pos_embed")
    assert "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "pos_emb_random_crop_rate") == "mapped"
    assert fate(outcome, "enable_scaled_pos_embed") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.loss.pos_embed_random_crop_rate == 0.2
    assert plan.model.scaled_pos_embed == (512 // 8,)


def test_a_random_window_rate_past_one_always_crops(tmp_path):
    outcome = _sd3(tmp_path, "--pos_emb_random_crop_rate 2")
    assert plan_of(outcome, tmp_path).loss.pos_embed_random_crop_rate == 1.0
    assert "acts as 1" in outcome.conversion.reports["pos_emb_random_crop_rate"].note

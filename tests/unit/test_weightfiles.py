"""Where a component's tensors sit in a weight file, by name (dbspec/weightfiles.py): the layouts kohya's and
other tools' files use."""

from __future__ import annotations

from dbspec.families import family_spec
from dbspec.weightfiles import encoder_prefix, encoder_tensors, holds_denoiser, is_openclip, vae_prefix

CLIP_L, CLIP_G, T5 = family_spec("sd3").text_encoders
SDXL_L, SDXL_G = family_spec("sdxl").text_encoders
EMB = "embeddings.token_embedding.weight"
T5_K = "encoder.block.0.layer.0.SelfAttention.k.weight"


def test_clip_files_with_and_without_the_text_model_level():
    assert encoder_prefix([f"text_model.{EMB}", "text_projection.weight"], CLIP_L) == ""
    assert encoder_prefix([EMB, "encoder.layers.0.mlp.fc1.weight"], CLIP_L) == ""
    names = encoder_tensors([f"text_model.{EMB}", "text_projection.weight"], "")
    assert names == {EMB: f"text_model.{EMB}", "text_projection.weight": "text_projection.weight"}


def test_a_checkpoint_with_several_encoders_serves_each_by_its_prefix():
    keys = [
        f"text_encoders.clip_l.transformer.text_model.{EMB}",
        f"text_encoders.clip_g.transformer.text_model.{EMB}",
        f"text_encoders.t5xxl.transformer.{T5_K}",
        "model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight",
    ]
    assert encoder_prefix(keys, CLIP_L) == "text_encoders.clip_l.transformer."
    assert encoder_prefix(keys, CLIP_G) == "text_encoders.clip_g.transformer."
    assert encoder_prefix(keys, T5) == "text_encoders.t5xxl.transformer."
    assert holds_denoiser(keys, family_spec("sd3")) and not holds_denoiser(keys, family_spec("flux"))


def test_two_encoders_under_unknown_prefixes_are_ambiguous():
    keys = [f"a.text_model.{EMB}", f"b.text_model.{EMB}"]
    assert encoder_prefix(keys, CLIP_L) is None


def test_sdxl_single_file_encoders_in_both_layouts():
    keys = [
        f"conditioner.embedders.0.transformer.text_model.{EMB}",
        "conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight",
        "conditioner.embedders.1.model.token_embedding.weight",
    ]
    assert encoder_prefix(keys, SDXL_L) == "conditioner.embedders.0.transformer."
    assert encoder_prefix(keys, SDXL_G) == "conditioner.embedders.1.model."
    assert is_openclip(keys, "conditioner.embedders.1.model.")


def test_a_t5_file_is_no_clip_file():
    assert encoder_prefix(["shared.weight", T5_K], CLIP_L) is None
    assert encoder_prefix(["shared.weight", T5_K], T5) == ""


def test_autoencoder_prefixes():
    assert vae_prefix(["encoder.down.0.block.0.conv1.weight"]) == ""
    assert vae_prefix(["first_stage_model.encoder.down.0.block.0.conv1.weight"]) == "first_stage_model."
    assert vae_prefix(["encoder.down_blocks.0.resnets.0.conv1.weight"]) == ""
    assert vae_prefix(["double_blocks.0.img_attn.qkv.weight"]) is None

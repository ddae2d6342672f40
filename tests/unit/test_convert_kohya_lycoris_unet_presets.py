"""LyCORIS's built-in U-Net-only presets (`preset=unet-only`, `unet-transformer-only`, `unet-convblock-only`,
lycoris-lora 4.1.3 lycoris/config.py): realistic kohya command lines convert without --allow-unsupported, pass
`dbspec check`, and plan the layers LyCORIS builds (tests/runtime/test_lycoris_presets.py builds them with
lycoris-lora); the network has no text-encoder module, so the text encoder does not train."""

from __future__ import annotations

import pytest
from convert_kit import SD15, SD21, SDXL, expressible, fate, images, kohya, plan_of

from dbspec.spec.model import KOHYA_CONV_TARGETS

ATTENTION = {"to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out"}
TIME = {"time_embedding.linear_1", "time_embedding.linear_2"}


def _convert(tmp_path, args: str, model: str = SD15, script: str = "train_network.py"):
    images(tmp_path / "img" / "10_ohwx dog", 3, (512, 512))
    return kohya(
        tmp_path,
        command=f"accelerate launch --num_cpu_threads_per_process 1 {script} "
        f"--pretrained_model_name_or_path={model} --train_data_dir=img --resolution=512 "
        "--output_dir=out --output_name=dog --network_module=lycoris.kohya --network_dim=16 "
        f"--network_alpha=8 --network_args {args} --learning_rate=1e-4 --unet_lr=1e-4 "
        "--text_encoder_lr=5e-5 --max_train_steps=400 --optimizer_type=AdamW8bit --mixed_precision=fp16 "
        "--save_model_as=safetensors",
    )


@pytest.mark.parametrize("model", [SD15, f"{SD21} --v2 --v_parameterization"])
def test_unet_only_is_full_without_the_text_encoder(tmp_path, model):
    args = '"algo=locon" "preset=unet-only" "conv_dim=8" "conv_alpha=4"'
    outcome = expressible(_convert(tmp_path, args, model))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "lora" and (a.rank, a.conv_rank, a.conv_alpha) == (16, 8, 4.0)
    assert set(a.denoiser_targets) == ATTENTION | TIME | {"time_emb_proj", "conv_shortcut"}
    assert set(a.conv_targets) == {*KOHYA_CONV_TARGETS, "conv_in", "conv_out"}
    assert a.text_encoder_targets == ()
    assert plan.train_denoiser and not plan.train_text_encoder
    assert fate(outcome, "network_args") == "mapped"


def test_unet_transformer_only(tmp_path):
    outcome = expressible(_convert(tmp_path, '"algo=loha" "preset=unet-transformer-only"'))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "loha" and set(a.denoiser_targets) == ATTENTION | TIME
    assert a.conv_rank == 0 and a.text_encoder_targets == ()
    assert not plan.train_text_encoder


def test_unet_convblock_only(tmp_path):
    outcome = expressible(_convert(tmp_path, '"algo=lokr" "preset=unet-convblock-only" "conv_dim=4"'))
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "lokr" and set(a.denoiser_targets) == {"time_emb_proj", "conv_shortcut"}
    assert set(a.conv_targets) == {*KOHYA_CONV_TARGETS, "conv_in", "conv_out"} and a.conv_rank == 4
    assert a.text_encoder_targets == () and not plan.train_text_encoder


def test_unet_convblock_only_sdxl_has_no_conv_in_or_out(tmp_path):
    """kohya's SDXL U-Net names its first and last convolutions input_blocks.0.0 / out.2: as for `full`."""
    outcome = expressible(
        _convert(tmp_path, '"algo=locon" "preset=unet-convblock-only"', SDXL, "sdxl_train_network.py")
    )
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert set(a.denoiser_targets) == {"time_emb_proj", "conv_shortcut"}
    assert set(a.conv_targets) == set(KOHYA_CONV_TARGETS)
    assert not plan.train_text_encoder


def test_unet_transformer_only_sdxl_has_no_time_embedding(tmp_path):
    outcome = expressible(
        _convert(tmp_path, '"algo=lora" "preset=unet-transformer-only"', SDXL, "sdxl_train_network.py")
    )
    a = plan_of(outcome, tmp_path).adapter
    assert set(a.denoiser_targets) == ATTENTION and a.text_encoder_targets == ()

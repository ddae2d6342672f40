"""lycoris.kohya --network_weights with a LyCORIS full file (`diff` / `diff_b`) on SD 1.x and SDXL
(convert/kohya/lycoris_sd_full.py; issue 12). Without --dim_from_weights the preset's FullModules load the
file (W + diff: init_scale 1); with it create_network_from_weights builds the file's modules (W + 2 diff:
init_scale 2) over exactly its layers. The numbers against lycoris-lora 4.1.3:
tests/runtime/test_lycoris_sd_full_file.py."""

from __future__ import annotations

import numpy as np
from convert_kit import SDXL, codes, errors, kohya, kohya_lora, messages, plan_of
from safetensors.numpy import save_file

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
FF = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2"
CONV = "lora_unet_down_blocks_1_resnets_0_conv1"
SHORTCUT = "lora_unet_down_blocks_1_resnets_0_conv_shortcut"
TE = "lora_te_text_model_encoder_layers_3_self_attn_k_proj"
FROM = "--network_module lycoris.kohya --network_args algo=full --network_weights prev.safetensors"


def _file(path, modules: dict[str, dict[str, tuple[int, ...]]]) -> None:
    tensors = {}
    for name, shapes in modules.items():
        tensors |= {f"{name}.{k}": np.zeros(s, np.float16) for k, s in shapes.items()}
    save_file(tensors, str(path))


def _sd1(tmp_path, extra: str = "--dim_from_weights", modules=None):
    tmp_path.mkdir(parents=True, exist_ok=True)
    _file(
        tmp_path / "prev.safetensors",
        modules
        or {
            Q: {"diff": (320, 320)},
            FF: {"diff": (320, 1280), "diff_b": (320,)},
            CONV: {"diff": (640, 320, 3, 3), "diff_b": (640,)},
            SHORTCUT: {"diff": (640, 320, 1, 1), "diff_b": (640,)},
            TE: {"diff": (768, 768), "diff_b": (768,)},
        },
    )
    return kohya_lora(tmp_path, f"{FROM} {extra}")


def _picks(targets: list[str], path: str) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def test_dim_from_weights_trains_exactly_the_files_layers_from_w_plus_two_diff(tmp_path):
    outcome = _sd1(tmp_path)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "full" and a.init_scale == 2.0 and a.init_partial and a.init_weights
    assert plan.train_text_encoder and plan.train_denoiser
    unet = {
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2",
        "down_blocks.1.resnets.0.conv_shortcut",
    }
    assert all(_picks(a.denoiser_targets, p) for p in unet)
    others = (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
        "up_blocks.3.attentions.2.proj_out",
    )
    assert not any(_picks(a.denoiser_targets, p) for p in others)
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    assert not _picks(a.conv_targets, "down_blocks.1.resnets.0.conv2")
    assert _picks(a.text_encoder_targets, "text_model.encoder.layers.3.self_attn.k_proj")
    assert not _picks(a.text_encoder_targets, "text_model.encoder.layers.2.self_attn.k_proj")


def test_unet_only_drops_the_text_encoders_modules(tmp_path):
    outcome = _sd1(tmp_path, "--dim_from_weights --network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "full" and not any(
        c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components
    )


def test_file_without_text_encoder_modules_trains_no_text_encoder(tmp_path):
    outcome = _sd1(tmp_path, modules={Q: {"diff": (320, 320)}})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert not any(c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components)


def test_algo_full_without_dim_from_weights_loads_at_w_plus_diff(tmp_path):
    outcome = _sd1(tmp_path, "")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "full" and a.init_scale == 1.0 and a.init_partial and a.init_weights
    assert _picks(
        a.denoiser_targets, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k"
    )  # preset's


def test_sdxl_original_names_read_onto_diffusers_layers(tmp_path):
    from convert_kit import images

    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v": {"diff": (640, 2048)},
            "lora_unet_output_blocks_0_0_in_layers_2": {"diff": (1280, 2560, 3, 3), "diff_b": (1280,)},
            "lora_te2_text_model_encoder_layers_20_mlp_fc1": {"diff": (5120, 1280), "diff_b": (5120,)},
        },
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=64 {FROM} --dim_from_weights --learning_rate=1e-4 "
        "--max_train_steps=3 --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "full" and a.init_scale == 2.0
    assert _picks(a.denoiser_targets, "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v")
    assert not _picks(a.denoiser_targets, "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_v")
    assert _picks(a.conv_targets, "up_blocks.0.resnets.0.conv1")
    assert not _picks(a.conv_targets, "up_blocks.0.resnets.0.conv2")
    # the one list picks no CLIP-L layer (12 layers): CLIP-L trains nothing
    assert _picks(a.text_encoder_2_targets, "text_model.encoder.layers.20.mlp.fc1")
    trained = {c.name for c in plan.precision.components if c.trainable == "lora"}
    assert "text_encoder_2" in trained and "text_encoder" not in trained


def test_bad_files_are_refused_clearly(tmp_path):
    unknown = _sd1(
        tmp_path / "a",
        modules={Q: {"diff": (320, 320)}, "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (9, 3)}},
    )
    assert "lora_unet_double_blocks_0_img_attn_qkv" in messages(unknown, "DBS403"), errors(unknown)
    norm = _sd1(tmp_path / "b", modules={"lora_unet_down_blocks_1_resnets_0_norm1": {"diff": (320,)}})
    assert "FullModule does not take" in messages(norm, "DBS402"), errors(norm)
    flat = _sd1(tmp_path / "c", modules={CONV: {"diff": (640, 2880)}})
    assert "2 dimensions" in messages(flat, "DBS402"), errors(flat)
    # beside LoKr modules a run of several kinds (test_convert_lycoris_sd_mixed.py); beside IA^3 alone not
    mixed = _sd1(
        tmp_path / "d",
        modules={Q: {"diff": (320, 320)}, FF: {"weight": (320,), "on_input": ()}},
    )
    assert "ia3" in messages(mixed, "DBS403"), errors(mixed)


def test_sdxl_algo_full_loads_its_file_at_w_plus_diff(tmp_path):
    from convert_kit import images

    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v": {"diff": (640, 2048)},
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": {"diff": (768, 768), "diff_b": (768,)},
        },
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=64 {FROM} --learning_rate=1e-4 --max_train_steps=3 "
        "--output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "full" and a.init_scale == 1.0 and a.init_partial and a.init_layers == 2

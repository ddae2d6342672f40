"""lycoris.kohya --dim_from_weights with a --network_weights file holding a FullModule (`diff`) on T5-XXL's
gated-MLP output Linear `DenseReluDense.wo` (Flux's / Chroma's lora_te2_, SD3's lora_te3_): LyCORIS 4.1.3's
create_network_from_weights builds it, its apply_to deletes the Linear's `weight`, and transformers'
T5DenseGatedActDense.forward reads `self.wo.weight`, so kohya's first T5 encoding raises AttributeError
(checked with lycoris-lora 4.1.3 on the tiny T5-XXL): DBS402 naming the file and the module, as a preset
file's FullModule there is (lycoris_flow_file.t5_full_output_why). With --network_train_unet_only apply_to
drops T5's modules: it converts."""

from __future__ import annotations

import numpy as np
from convert_kit import codes, component_file, errors, images, kohya, messages, plan_of
from safetensors.numpy import save_file

FLUX = (
    "accelerate launch flux_train_network.py --pretrained_model_name_or_path black-forest-labs/FLUX.1-dev "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --save_model_as safetensors --network_module lycoris.kohya --network_dim 8 "
    "--network_alpha 4 --learning_rate 1e-4 --max_train_steps 100 --timestep_sampling shift "
    "--model_prediction_type raw --guidance_scale 1.0 --network_weights prev.safetensors --dim_from_weights"
)
SD3 = (
    "accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
    "stabilityai/stable-diffusion-3.5-large --clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors "
    "--t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 --save_model_as safetensors "
    "--network_module lycoris.kohya --network_dim 8 --network_alpha 4 --learning_rate 1e-4 "
    "--max_train_steps 100 --network_weights prev.safetensors --dim_from_weights"
)
W = 3072  # FLUX.1's width
DENOISER = {  # a LoKr module and a FullModule of the denoiser (dbspec starts a full block from a `diff`)
    "lora_unet_double_blocks_0_img_attn_proj": {"lokr_w1": (4, 4), "lokr_w2": (768, 768)},
    "lora_unet_double_blocks_0_img_attn_qkv": {"diff": (3 * W, W)},
}


def _file(path, modules: dict[str, dict[str, tuple[int, ...]]]) -> None:
    tensors = {}
    for name, shapes in modules.items():
        tensors |= {f"{name}.{k}": np.zeros(s, np.float16) for k, s in shapes.items()}
        tensors[f"{name}.alpha"] = np.array(1.0, np.float32)
    save_file(tensors, str(path))


def _flux(tmp_path, t5: dict, extra: str = ""):
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    _file(tmp_path / "prev.safetensors", {**DENOISER, **t5})
    return kohya(tmp_path, allow=True, command=f"{FLUX} {extra}")


def test_flux_file_t5_wo_full_module_stops_kohya(tmp_path):
    wo = "lora_te2_encoder_block_1_layer_1_DenseReluDense_wo"
    outcome = _flux(tmp_path, {wo: {"diff": (4096, 10240)}})
    found = messages(outcome, "DBS402")
    assert f"`{wo}.diff`" in found and "prev.safetensors" in found, errors(outcome)
    assert "encoder.block.1.layer.1.DenseReluDense.wo" in found and "T5DenseGatedActDense" in found
    assert "AttributeError" in found
    # a LoCon module there and a FullModule on another T5 Linear convert (train.t5's blocks of their kinds)
    t5 = {
        "lora_te2_encoder_block_0_layer_0_SelfAttention_o": {"diff": (4096, 4096)},
        wo: {"lora_down.weight": (2, 10240), "lora_up.weight": (4096, 2)},
    }
    outcome = _flux(tmp_path, t5)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.t5_targets


def test_flux_file_t5_wo_full_module_converts_unet_only(tmp_path):
    """With --network_train_unet_only LycorisNetworkKohya.apply_to leaves T5's modules out: T5 keeps its
    Linear's weight, kohya runs, the T5 module unused."""
    wo = "lora_te2_encoder_block_1_layer_1_DenseReluDense_wo"
    outcome = _flux(tmp_path, {wo: {"diff": (4096, 10240)}}, "--network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_scale) == ("lokr", 2.0) and not a.t5_targets


def test_sd3_file_t5_wo_full_module_stops_kohya(tmp_path):
    """SD3's T5-XXL is LyCORIS's third text encoder (lora_te3_)."""
    images(tmp_path / "x" / "10_ohwx dog", 2, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    wo = "lora_te3_encoder_block_0_layer_1_DenseReluDense_wo"
    modules = {
        "lora_unet_joint_blocks_0_x_block_attn_proj": {"diff": (2432, 2432)},
        wo: {"diff": (4096, 10240)},
    }
    _file(tmp_path / "prev.safetensors", modules)
    outcome = kohya(tmp_path, allow=True, command=SD3)
    found = messages(outcome, "DBS402")
    assert f"`{wo}.diff`" in found and "encoder.block.0.layer.1.DenseReluDense.wo" in found, errors(outcome)


def test_t5_wo_full_module_without_transformers_forward_is_no_crash(tmp_path):
    """Where T5 never runs T5DenseGatedActDense's own forward after apply_to the FullModule on `wo` stops
    nothing (lycoris_flow_file.t5_wo_weight_read): with text-encoder outputs cached (cached before the network
    is built; T5 waits on the CPU) and with --fp8_base (prepare_text_encoder_fp8 gives T5's gated MLPs a
    forward that calls `wo` without reading its weight). With outputs cached the file and a preset file
    (algo=full over T5Block) meet dbspec's own refusals or convert; with --fp8_base kohya stops earlier, at
    the denoiser's FullModule (Flux cast to float8 as loaded: lycoris_fp8.full_on_fp8), never at `wo`."""
    from test_convert_lycoris_flow_dylora_norms_full_dropout import T5_FILE, _outcome

    wo = "lora_te2_encoder_block_1_layer_1_DenseReluDense_wo"
    for name, flags, words in (
        ("cached", "--cache_text_encoder_outputs", "text-encoder outputs are cached"),
        ("fp8", "--fp8_base --mixed_precision bf16", "full.py line 112"),
    ):
        (tmp_path / name).mkdir()
        outcome = _flux(tmp_path / name, {wo: {"diff": (4096, 10240)}}, flags)
        code = "DBS402" if name == "fp8" else "DBS403"
        assert words in messages(outcome, code) and "DenseReluDense" not in messages(outcome, "DBS402"), (
            name,
            errors(outcome),
        )
        (tmp_path / f"preset_{name}").mkdir()
        outcome = _outcome(tmp_path / f"preset_{name}", "flux", T5_FILE, f'"algo=full" {flags}')
        if name == "cached":  # T5's modules built, never trained: T5 frozen is the same run
            assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
            assert not plan_of(outcome, tmp_path / f"preset_{name}").adapter.t5_targets
        else:  # the denoiser's FullModule on Flux cast as loaded stops kohya at apply_to
            found = messages(outcome, "DBS402")
            assert words in found and "double_blocks.0.img_attn.qkv" in found, errors(outcome)
            assert "DenseReluDense" not in found

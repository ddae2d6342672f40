"""kohya's `--base_weights` with `--base_weights_multiplier` (train_network.py merges each LoRA file into the
base models before building the network): once refused (DBS403), now [[model.merge_adapters]] for SD 1.x/2.x
and SDXL, the i-th multiplier with the i-th file and 1.0 when the list is shorter, and for Flux / SD3 (kohya's
lora_flux / lora_sd3 layout)."""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from convert_kit import SD15, codes, empty_hub_cache, errors, fate, images, kohya, plan_of, write  # noqa: F401

CONFIG = """\
pretrained_model_name_or_path = "{model}"
train_data_dir = "img"
resolution = "512,512"
output_dir = "out"
network_module = "networks.lora"
network_dim = 16
network_alpha = 8
base_weights = [{files}]
{multipliers}
learning_rate = 1e-4
optimizer_type = "AdamW8bit"
max_train_steps = 800
mixed_precision = "fp16"
save_precision = "fp16"
"""


def _lora(path, te: bool = True):
    """A kohya-layout LoRA file for SD 1.5 (zero tensors): a U-Net attention layer and a text-encoder MLP."""
    tensors = {}
    names = {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q": (320, 320)}
    if te:
        names["lora_te_text_model_encoder_layers_0_mlp_fc1"] = (768, 3072)
    for name, (n_in, n_out) in names.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((4, n_in), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((n_out, 4), np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(path))


def _convert(tmp_path, files: str, multipliers: str = ""):
    images(tmp_path / "img" / "10_ohwx cat", 3, (512, 512))
    _lora(tmp_path / "style.safetensors")
    _lora(tmp_path / "detail.safetensors", te=False)
    write(tmp_path / "cfg.toml", CONFIG.format(model=SD15, files=files, multipliers=multipliers))
    return kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")


def test_two_files_with_one_multiplier(tmp_path):
    outcome = _convert(
        tmp_path, '"style.safetensors", "detail.safetensors"', "base_weights_multiplier = [0.6]"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    merges = [
        (m.path.rsplit("/", 1)[-1], m.multiplier, m.components, m.layers) for m in plan.model.merge_adapters
    ]
    assert merges == [
        ("style.safetensors", 0.6, ("text_encoder", "unet"), 2),
        ("detail.safetensors", 1.0, ("unet",), 1),  # kohya's default for a file past the multipliers
    ]
    assert fate(outcome, "base_weights") == "mapped" and fate(outcome, "base_weights_multiplier") == "mapped"


def test_multipliers_without_files_are_not_read(tmp_path):
    images(tmp_path / "img" / "10_ohwx cat", 3, (512, 512))
    text = CONFIG.format(model=SD15, files="", multipliers="base_weights_multiplier = [0.5]")
    write(tmp_path / "cfg.toml", text.replace("base_weights = []\n", ""))
    outcome = kohya(tmp_path, config_file=tmp_path / "cfg.toml", command="accelerate launch train_network.py")
    assert fate(outcome, "base_weights_multiplier") == "inert"
    assert plan_of(outcome, tmp_path).model.merge_adapters == ()


def test_flux_train_network_merges_lora_flux_files(tmp_path):
    """sd-scripts' README Flux LoRA command (docs/flux_train_network.md) with --base_weights: a lora_flux
    file (FLUX.1-dev shapes: the fused img_attn.qkv, CLIP-L's MLP, img_in outside kohya's blocks) merged."""
    from convert_kit import component_file
    from test_convert_lora_flux import README

    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    tensors = {}
    layers = {
        "lora_unet_double_blocks_0_img_attn_qkv": (3072, 3 * 3072),
        "lora_unet_img_in": (64, 3072),
        "lora_te1_text_model_encoder_layers_0_mlp_fc1": (768, 3072),
    }
    for name, (n_in, n_out) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((4, n_in), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((n_out, 4), np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(tmp_path / "style.safetensors"))
    outcome = kohya(
        tmp_path, command=f"{README} --base_weights style.safetensors --base_weights_multiplier 0.7 0.2"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    merges = [
        (m.path.rsplit("/", 1)[-1], m.multiplier, m.components, m.layers) for m in plan.model.merge_adapters
    ]
    assert merges == [("style.safetensors", 0.7, ("text_encoder", "unet"), 3)]
    assert plan.model.identity.endswith("x0.7") and "+merge(text_encoder):" in plan.model.text_identity
    assert fate(outcome, "base_weights") == "mapped" and fate(outcome, "base_weights_multiplier") == "mapped"

"""kohya's Flux/SD3 component files (flux_train_network.py, sd3_train_network.py): a transformer-only
`--pretrained_model_name_or_path`, `--clip_l`, `--clip_g`, `--t5xxl`, `--ae` / `--vae` map exactly to
model.denoiser_file, model.text_encoder_files and model.vae (no DBS404); model.base becomes the family's
published model for configs and tokenizers (DBS418), or what `--set model.base=` gives."""

from __future__ import annotations

import tomllib

import numpy as np
from convert_kit import (  # noqa: F401
    codes,
    component_file,
    empty_hub_cache,
    errors,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
    write,
)
from safetensors.numpy import save_file

FLUX_CONFIG = """\
pretrained_model_name_or_path = "models/flux1-dev.safetensors"
clip_l = "models/clip_l.safetensors"
t5xxl = "models/t5xxl_fp16.safetensors"
ae = "models/ae.safetensors"
train_data_dir = "x"
resolution = "512,512"
network_module = "networks.lora_flux"
network_dim = 16
network_train_unet_only = true
mixed_precision = "bf16"
learning_rate = 1e-4
max_train_steps = 100
cache_text_encoder_outputs = true
timestep_sampling = "shift"
discrete_flow_shift = 3.1582
model_prediction_type = "raw"
guidance_scale = 1.0
"""


def _spec(tmp_path) -> dict:
    return tomllib.loads(out_path(tmp_path).read_text())


def _flux_files(tmp_path):
    for name in ("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / "models" / name)


def test_kohya_flux_config_file_maps_each_component_file(tmp_path):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    _flux_files(tmp_path)
    outcome = kohya(
        tmp_path,
        config_file=write(tmp_path / "flux.toml", FLUX_CONFIG),
        command="accelerate launch flux_train_network.py",
    )
    assert outcome.exit_code == 0, errors(outcome)
    model = _spec(tmp_path)["model"]
    assert model["base"] == "black-forest-labs/FLUX.1-dev"
    assert model["denoiser_file"] == "../models/flux1-dev.safetensors"
    assert model["text_encoder_files"] == ["../models/clip_l.safetensors", "../models/t5xxl_fp16.safetensors"]
    assert model["vae"] == "../models/ae.safetensors"
    for key in ("pretrained_model_name_or_path", "clip_l", "t5xxl", "ae"):
        assert fate(outcome, key) == "mapped", key
    assert "DBS404" not in codes(outcome) or "clip_l" not in messages(outcome, "DBS404")
    assert "DBS418" in codes(outcome) and "FLUX.1-dev" in messages(outcome, "DBS418")
    plan = plan_of(outcome, tmp_path)
    m = plan.model
    assert m.denoiser_file == str(tmp_path / "models" / "flux1-dev.safetensors")
    assert m.text_encoder_files[1] == str(tmp_path / "models" / "t5xxl_fp16.safetensors")
    assert m.vae == str(tmp_path / "models" / "ae.safetensors") and m.family == "flux"


def test_kohya_flux_base_can_be_set_for_configs_and_tokenizers(tmp_path):
    """`--set model.base=...` replaces the published model for configs and tokenizers; the plan checks the
    files against its configs (here a built-in tiny Flux, narrower than Flux.1's files)."""
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    _flux_files(tmp_path)
    outcome = kohya(
        tmp_path,
        config_file=write(tmp_path / "flux.toml", FLUX_CONFIG),
        command="accelerate launch flux_train_network.py",
    )
    assert plan_of(outcome, tmp_path).model.base == "black-forest-labs/FLUX.1-dev"
    from convert_kit import GPU

    from dbspec.frontend import plan_spec

    # the tiny model's encoders are narrower than Flux.1's files: the plan says so, naming each file
    planned = plan_spec(out_path(tmp_path), GPU, overrides=["model.base=builtin:tiny-flux"])
    wrong = {d.path: d.message for d in planned.diagnostics if d.code == "DBS373"}
    assert (
        "768-wide" in wrong["model.text_encoder_files[0]"]
        and "32 wide" in wrong["model.text_encoder_files[0]"]
    )
    assert "t5xxl_fp16.safetensors" in wrong["model.text_encoder_files[1]"]


def test_kohya_flux_with_a_hub_base_keeps_it_and_maps_the_files(tmp_path):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    outcome = kohya(
        tmp_path,
        command="accelerate launch flux_train_network.py --pretrained_model_name_or_path "
        "black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors --t5xxl t5xxl.safetensors "
        "--ae ae.safetensors "
        "--train_data_dir x --resolution 512 --network_module networks.lora_flux --network_dim 4 "
        "--mixed_precision bf16 --max_train_steps 10",
    )
    model = _spec(tmp_path)["model"]
    assert model["base"] == "black-forest-labs/FLUX.1-dev" and "denoiser_file" not in model
    assert model["text_encoder_files"] == ["../clip_l.safetensors", "../t5xxl.safetensors"]
    assert "DBS418" not in codes(outcome)


def _sd3_checkpoint(path, *, depth: int, dual: bool, encoders: bool, vae: bool):
    """An SD3 single file's tensor names: MMDiT joint blocks; CLIP-L, CLIP-G, T5 under text_encoders.*; the
    autoencoder under first_stage_model."""
    prefix = "model.diffusion_model."
    shapes = {f"{prefix}joint_blocks.{i}.x_block.attn.qkv.weight": (3, 2) for i in range(depth)}
    if dual:
        shapes[f"{prefix}joint_blocks.0.x_block.attn2.qkv.weight"] = (3, 2)
    if encoders:
        for name, width in (("clip_l", 768), ("clip_g", 1280)):
            shapes[f"text_encoders.{name}.transformer.text_model.embeddings.token_embedding.weight"] = (
                4,
                width,
            )
        shapes["text_encoders.t5xxl.transformer.encoder.block.0.layer.0.SelfAttention.k.weight"] = (4, 4096)
    if vae:
        shapes["first_stage_model.encoder.down.0.block.0.conv1.weight"] = (4, 4, 3, 3)
        shapes["first_stage_model.decoder.conv_in.weight"] = (4, 16, 3, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: np.zeros(v, dtype=np.float16) for k, v in shapes.items()}, str(path))


def _sd3(tmp_path, flags: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    return kohya(
        tmp_path,
        command="accelerate launch sd3_train_network.py --pretrained_model_name_or_path "
        f"models/sd3.safetensors {flags} --train_data_dir x --resolution 512 --network_module "
        "networks.lora_sd3 --network_dim 16 --network_train_unet_only --mixed_precision bf16 "
        "--max_train_steps 10 --weighting_scheme logit_normal",
    )


def test_kohya_sd35_large_with_its_encoders_inside(tmp_path):
    """sd3_utils reads CLIP-G, T5 and the autoencoder from the checkpoint first: --clip_g / --t5xxl are
    ignored there; --clip_l is read when given."""
    _sd3_checkpoint(tmp_path / "models" / "sd3.safetensors", depth=38, dual=False, encoders=True, vae=True)
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl.safetensors"):
        component_file(tmp_path / "models" / name)
    outcome = _sd3(
        tmp_path,
        "--clip_l models/clip_l.safetensors --clip_g models/clip_g.safetensors "
        "--t5xxl models/t5xxl.safetensors",
    )
    assert outcome.exit_code == 0, errors(outcome)
    model = _spec(tmp_path)["model"]
    checkpoint = "../models/sd3.safetensors"
    assert model["base"] == "stabilityai/stable-diffusion-3.5-large"
    assert model["text_encoder_files"] == ["../models/clip_l.safetensors", checkpoint, checkpoint]
    assert model["vae"] == checkpoint and model["denoiser_file"] == checkpoint
    assert fate(outcome, "clip_g") == "inert" and "from the checkpoint" in messages(outcome, "DBS405")
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "sd3" and plan.model.text_encoder_files[2].endswith("sd3.safetensors")


def test_kohya_sd35_medium_without_encoders_takes_the_flags(tmp_path):
    _sd3_checkpoint(tmp_path / "models" / "sd3.safetensors", depth=24, dual=True, encoders=False, vae=False)
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl.safetensors", "vae.safetensors"):
        component_file(tmp_path / "models" / name)
    outcome = _sd3(
        tmp_path,
        "--clip_l models/clip_l.safetensors --clip_g models/clip_g.safetensors "
        "--t5xxl models/t5xxl.safetensors --vae models/vae.safetensors",
    )
    assert outcome.exit_code == 0, errors(outcome)
    model = _spec(tmp_path)["model"]
    assert model["base"] == "stabilityai/stable-diffusion-3.5-medium"
    assert model["text_encoder_files"] == [
        "../models/clip_l.safetensors",
        "../models/clip_g.safetensors",
        "../models/t5xxl.safetensors",
    ]
    assert model["vae"] == "../models/vae.safetensors"
    plan_of(outcome, tmp_path)


def test_kohya_sd3_checkpoint_without_an_encoder_is_refused_as_kohya_fails(tmp_path):
    """kohya reads CLIP-L from the checkpoint when --clip_l is not given; sd3_utils.load_clip_l returns None
    for a file without one and sd3_train_network.py fails on it: DBS402 names the missing flag."""
    _sd3_checkpoint(tmp_path / "models" / "sd3.safetensors", depth=24, dual=False, encoders=False, vae=True)
    for name in ("clip_g.safetensors", "t5xxl.safetensors"):
        component_file(tmp_path / "models" / name)
    outcome = _sd3(tmp_path, "--clip_g models/clip_g.safetensors --t5xxl models/t5xxl.safetensors")
    assert outcome.exit_code != 0 and not outcome.written
    (message,) = messages(outcome, "DBS402").splitlines() or [""]
    assert "--clip_l is missing" in message and "sd3.safetensors" in message and "CLIP-L" in message
    assert fate(outcome, "clip_l") == "invalid"
    assert "clip_g" not in messages(outcome, "DBS402") and "t5xxl" not in messages(outcome, "DBS402")


def test_kohya_sd3_checkpoint_with_its_encoders_needs_no_flags(tmp_path):
    _sd3_checkpoint(tmp_path / "models" / "sd3.safetensors", depth=38, dual=False, encoders=True, vae=True)
    outcome = _sd3(tmp_path, "")
    assert outcome.exit_code == 0, errors(outcome)
    assert "DBS402" not in codes(outcome)


def _flux_without(tmp_path, dropped: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    _flux_files(tmp_path)
    config = "".join(line + "\n" for line in FLUX_CONFIG.splitlines() if not line.startswith(dropped + " "))
    return kohya(
        tmp_path,
        config_file=write(tmp_path / "flux.toml", config),
        command="accelerate launch flux_train_network.py",
    )


def test_kohya_flux_without_t5xxl_is_refused_as_kohya_fails(tmp_path):
    """flux_train_network.py opens --t5xxl (and --clip_l) whatever the base: without it kohya crashes; the
    converter said nothing and took the base's encoder before."""
    outcome = _flux_without(tmp_path, "t5xxl")
    assert outcome.exit_code != 0 and not outcome.written
    message = messages(outcome, "DBS402")
    assert "--t5xxl is missing" in message and "T5-XXL" in message and "clip_l" not in message
    assert fate(outcome, "t5xxl") == "invalid"


def test_kohya_flux_without_clip_l_is_refused_as_kohya_fails(tmp_path):
    outcome = _flux_without(tmp_path, "clip_l")
    message = messages(outcome, "DBS402")
    assert "--clip_l is missing" in message and "CLIP-L" in message and "t5xxl" not in message
    assert not outcome.written


def test_kohya_flux_schnell_file_takes_schnells_configs(tmp_path):
    """A transformer without a guidance embedding is Flux.1 schnell (kohya's analyze_checkpoint_state)."""
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    _flux_files(tmp_path)
    component_file(tmp_path / "models" / "flux1-schnell.safetensors")
    config = FLUX_CONFIG.replace("flux1-dev.safetensors", "flux1-schnell.safetensors")
    outcome = kohya(
        tmp_path,
        config_file=write(tmp_path / "flux.toml", config),
        command="accelerate launch flux_train_network.py",
    )
    assert _spec(tmp_path)["model"]["base"] == "black-forest-labs/FLUX.1-schnell"
    assert "FLUX.1-schnell" in messages(outcome, "DBS418")

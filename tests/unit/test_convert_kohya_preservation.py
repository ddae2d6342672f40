"""kohya's differential output preservation (a subset's `custom_attributes = { diff_output_preservation = true
}`, read with Python truth by train_network.py's get_noise_pred_and_target, which sdxl_train_network.py
inherits, and by sd3_train_network.py and flux_train_network.py) converts to `datasets[].preserve_output`; the
full fine-tune scripts never read it."""

from __future__ import annotations

import pytest

from convert_kit import (  # noqa: F401
    SD15,
    codes,
    component_file,
    empty_hub_cache,
    errors,
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)

FLUX = "black-forest-labs/FLUX.1-dev"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
LORA = f"train_network.py --pretrained_model_name_or_path {SD15} --network_module networks.lora"
SDXL_LORA = f"sdxl_train_network.py --pretrained_model_name_or_path {SDXL} --network_module networks.lora"
FLUX_LORA = (
    f"flux_train_network.py --pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl "
    "t5xxl_fp16.safetensors --ae ae.safetensors --network_module networks.lora_flux --network_dim 4 "
    "--network_train_unet_only --mixed_precision bf16 --learning_rate 1e-4"
)
SUBJECT_AND_KEEP = """
[general]
enable_bucket = true

[[datasets]]
resolution = {resolution}
batch_size = {batch}

  [[datasets.subsets]]
  image_dir = "subject"
  num_repeats = 4
  class_tokens = "ohwx dog"

  [[datasets.subsets]]
  image_dir = "dogs"
  num_repeats = 1
  class_tokens = "dog"
  {keep}
"""
DOP = "custom_attributes = { diff_output_preservation = true }"
KEY = "datasets[0].subsets[1].custom_attributes"


def _convert(tmp_path, command: str, *, keep: str = DOP, batch: int = 1, resolution: int = 512, allow=False):
    images(tmp_path / "subject", 2, (resolution, resolution))
    images(tmp_path / "dogs", 3, (resolution, resolution))
    text = SUBJECT_AND_KEEP.format(keep=keep, batch=batch, resolution=resolution)
    write(tmp_path / "dataset.toml", text)
    return kohya(
        tmp_path,
        allow=allow,
        dataset_config=tmp_path / "dataset.toml",
        command=f"{command} --output_dir out --max_train_steps 100",
    )


def _preserved(plan) -> dict[str, bool]:
    return {d.name: d.preserve_output for d in plan.datasets}


def test_sd1_lora_keeps_the_base_output_on_the_preserved_subset(tmp_path):
    outcome = _convert(tmp_path, LORA)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert _preserved(plan) == {"subject": False, "dogs": True}
    assert [d.role for d in plan.datasets] == ["instance", "instance"]
    assert "target of dogs: ε̂ of the base model (adapter off)" in plan.loss.formula
    assert "DBS404" not in codes(outcome)


def test_sd1_batches_that_mix_preserved_and_other_samples_differ_from_kohya(tmp_path):
    """train_network.py's call_unet ignores the row indices: kohya runs the base on the whole batch and fails
    when a batch mixes the subsets; dbspec trains what the SDXL/SD3/Flux scripts do."""
    outcome = _convert(tmp_path, LORA, batch=2)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == "differs"
    assert "shape mismatch" in messages(outcome, "DBS404")
    assert _preserved(plan_of(outcome, tmp_path)) == {"subject": False, "dogs": True}
    sdxl = _convert(tmp_path / "sdxl", SDXL_LORA, batch=2, resolution=1024)
    assert fate(sdxl, KEY) == "mapped" and "DBS404" not in codes(sdxl)  # sdxl passes the indices


def test_flux_lora_compares_the_base_output_in_the_losss_form(tmp_path, empty_hub_cache):  # noqa: F811
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)  # kohya's component files (model.text_encoder_files, model.vae)
    outcome = _convert(tmp_path, FLUX_LORA, batch=2)
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and _preserved(plan) == {"subject": False, "dogs": True}
    # kohya's default model_prediction_type sigma_scaled, for the prediction and the base's output alike
    assert "target of dogs: x_t − σ·u\u0302 of the base model (adapter off)" in plan.loss.formula


def test_a_preserved_reg_subset_is_a_class_dataset_with_the_base_target(tmp_path):
    outcome = _convert(tmp_path, LORA + " --prior_loss_weight 0.5", keep=DOP + "\n  is_reg = true")
    assert outcome.exit_code == 0, errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert [(d.role, d.preserve_output) for d in plan.datasets] == [("instance", False), ("class", True)]
    assert plan.loss.prior_weight == 0.5


@pytest.mark.parametrize(
    ("value", "on"),
    [("true", True), ('"false"', True), ("1", True), ("false", False), ("0", False), ('""', False)],
)
def test_kohyas_python_truth_decides(tmp_path, value, on):
    """kohya tests `custom_attributes["diff_output_preservation"]` for Python truth: the string "false" is
    on."""
    outcome = _convert(tmp_path, LORA, keep=f"custom_attributes = {{ diff_output_preservation = {value} }}")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == ("mapped" if on else "inert")
    assert _preserved(plan_of(outcome, tmp_path))["dogs"] is on
    if value == '"false"':
        assert "Python truth" in outcome.conversion.reports[KEY].note


def test_other_attributes_and_full_fine_tunes_are_inert(tmp_path):
    other = _convert(tmp_path / "other", LORA, keep="custom_attributes = { my_flag = true }")
    assert fate(other, KEY) == "inert" and "my_flag" in other.conversion.reports[KEY].note
    full = _convert(tmp_path / "full", f"train_db.py --pretrained_model_name_or_path {SD15}")
    assert full.exit_code == 0, errors(full)
    assert fate(full, KEY) == "inert" and "never reads" in full.conversion.reports[KEY].note
    assert not any(_preserved(plan_of(full, tmp_path / "full")).values())


def test_a_text_encoder_only_lora_keeps_kohyas_zero_loss_rows(tmp_path):
    """With no LoRA on the U-Net (network_train_text_encoder_only) kohya's set_multiplier(0) turns off the
    text-encoder modules only, after the captions were encoded: the preserved target is the prediction itself
    (zero loss, counted in the batch mean), what preserve_output computes with the adapter on the text
    encoder only (was DBS403; DBS609 warns; tests/runtime/test_preserve_output.py runs it)."""
    outcome = _convert(tmp_path, LORA + " --network_train_text_encoder_only")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == "mapped" and "zero loss" in outcome.conversion.reports[KEY].note
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and _preserved(plan) == {"subject": False, "dogs": True}
    from dbspec.plan.summary import preserved_summary

    assert "the denoiser's own prediction" in preserved_summary(plan)[0]


def test_general_custom_attributes_reach_every_subset(tmp_path):
    """custom_attributes is one of kohya's ascendable subset keys: in [general] it applies to every subset."""
    images(tmp_path / "subject", 2, (512, 512))
    images(tmp_path / "dogs", 3, (512, 512))
    text = SUBJECT_AND_KEEP.format(keep="", batch=1, resolution=512)
    write(tmp_path / "dataset.toml", text.replace("enable_bucket = true", "enable_bucket = true\n" + DOP))
    outcome = kohya(tmp_path, dataset_config=tmp_path / "dataset.toml", command=f"{LORA} --output_dir out")
    assert outcome.exit_code == 0, errors(outcome)
    assert _preserved(plan_of(outcome, tmp_path)) == {"subject": True, "dogs": True}
    assert [r.fate for k, r in outcome.conversion.reports.items() if "custom_attributes" in k] == ["mapped"]


# without a clip kohya's held U-Net modules change nothing: the denoiser is left plain (held_unet.py)
HELD = " --unet_lr 0 --text_encoder_lr 1e-5 --max_grad_norm 0"
SDXL_LYCORIS = (
    f"sdxl_train_network.py --pretrained_model_name_or_path {SDXL} --network_module lycoris.kohya "
    "--network_dim 8 --network_alpha 4"
)


def _held_target(outcome, tmp_path, text_lr: float = 1e-5):
    """The conversion maps the preserved subset exactly (mapped, not differs; no DBS403) to the adapter on
    the text encoder only, whose preserved target is the denoiser's own prediction (DBS609); its plan."""
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
    assert KEY not in {d.path for d in outcome.diagnostics if d.code == "DBS404"}
    assert fate(outcome, KEY) == "mapped" and "unet_lr 0" in outcome.conversion.reports[KEY].note
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and plan.train_text_encoder
    assert plan.optimizer.lr == text_lr and _preserved(plan) == {"subject": False, "dogs": True}
    assert "target of dogs: ε̂ itself, no gradient" in plan.loss.formula
    return plan


def test_a_fresh_lora_held_at_unet_lr_0_targets_the_prediction_itself(tmp_path):
    """At unet_lr 0 networks.lora builds the U-Net's modules and leaves their group out of the optimizer:
    they stay at their start, lora_up = 0, where they add exactly 0 to each layer's output at multiplier 1
    and 0 alike, so kohya's target with them switched off is its prediction itself (was DBS403)."""
    plan = _held_target(_convert(tmp_path, LORA + HELD), tmp_path)
    assert plan.adapter.kind == "lora" and plan.adapter.rank == 4


def test_a_fresh_sdxl_lycoris_loha_held_at_unet_lr_0_converts(tmp_path):
    """LyCORIS's LoHa starts with hada_w2_a = 0 (every algo's start adds 0 at both multipliers:
    tests/runtime/test_preserve_output.py checks them on lycoris-lora 4.1.3's modules); SDXL's two CLIP
    encoders train at the first text_encoder_lr value."""
    command = SDXL_LYCORIS + " --network_args algo=loha" + HELD
    plan = _held_target(_convert(tmp_path, command, resolution=1024), tmp_path)
    assert plan.adapter.kind == "loha" and plan.adapter.rank == 8 and plan.adapter.alpha == 4


def test_a_held_dylora_and_lokr_convert_alike(tmp_path):
    dylora = _convert(tmp_path / "dylora", LORA.replace("networks.lora", "networks.dylora") + HELD)
    assert _held_target(dylora, tmp_path / "dylora").adapter.kind == "dylora"
    lokr = LORA.replace("networks.lora", "lycoris.kohya --network_args algo=lokr factor=4") + HELD
    assert _held_target(_convert(tmp_path / "lokr", lokr), tmp_path / "lokr").adapter.kind == "lokr"


def test_held_dora_modules_differ_by_rounding(tmp_path):
    """LyCORIS's DoRA start scales W by dora_scale / ||W||, which rounds: kohya's preserved rows carry a
    rounding-sized loss, dbspec's none. It converts with the difference said (DBS404)."""
    command = LORA.replace("networks.lora", "lycoris.kohya --network_args algo=locon dora_wd=True") + HELD
    outcome = _convert(tmp_path, command)
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, KEY) == "differs" and "rounding" in messages(outcome, "DBS404")
    assert KEY in {d.path for d in outcome.diagnostics if d.code == "DBS404"}
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.dora and not plan.train_denoiser and _preserved(plan)["dogs"]


def test_a_network_weights_start_held_at_unet_lr_0_converts_held(tmp_path):
    """A --network_weights file's U-Net modules held at unet_lr 0 change kohya's prediction and are switched
    off for its target: the denoiser carries the adapter held at lr_scale 0, the file loaded into it, and
    the target is the base model's (adapter off), clip or not (was DBS403); fresh modules under the clip
    alike."""
    from safetensors.numpy import save_file
    import numpy as np

    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    save_file(
        {
            f"{q}.lora_down.weight": np.ones((4, 320), np.float16),
            f"{q}.lora_up.weight": np.ones((320, 4), np.float16),
            f"{q}.alpha": np.array(1.0, np.float32),
        },
        str(tmp_path / "prev.safetensors"),
    )
    clipped = HELD.replace(" --max_grad_norm 0", "")
    for name, command in (("file", HELD), ("clipped", clipped)):
        outcome = _convert(tmp_path, f"{LORA}{command} --network_weights prev.safetensors")
        assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
        assert fate(outcome, KEY) == "mapped", name
        plan = plan_of(outcome, tmp_path)
        assert plan.train_denoiser and plan.adapter.init_weights.endswith("prev.safetensors"), name
        assert [(b.pattern, b.lr_scale) for b in plan.adapter.blocks] == [("", 0.0)], name
        assert _preserved(plan) == {"subject": False, "dogs": True}
        assert "target of dogs: ε̂ of the base model (adapter off)" in plan.loss.formula
    fresh = plan_of(_convert(tmp_path / "fresh", LORA + clipped), tmp_path / "fresh")
    assert fresh.train_denoiser and fresh.adapter.blocks[-1].lr_scale == 0.0


def test_flux_clip_l_with_held_transformer_modules(tmp_path, empty_hub_cache):  # noqa: F811
    """flux_train_network.py at unet_lr 0 with CLIP-L training: the transformer's lora_flux modules held at
    their start (lora_up 0) make the preserved target the prediction itself, in the loss's form; with
    LoRA-GGPO they add a perturbation drawn anew in each forward, the switched-off one too: DBS403."""
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = FLUX_LORA.replace(" --network_train_unet_only", "") + HELD
    outcome = _convert(tmp_path, command, batch=2)
    assert outcome.exit_code == 0 and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, KEY) == "mapped" and "unet_lr 0" in outcome.conversion.reports[KEY].note
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and not plan.train_denoiser and plan.train_text_encoder
    assert _preserved(plan) == {"subject": False, "dogs": True}
    assert "target of dogs: x_t − σ·u\u0302 itself, no gradient" in plan.loss.formula
    ggpo = _convert(tmp_path, command + " --network_args ggpo_sigma=0.03 ggpo_beta=0.01", batch=2)
    assert ggpo.exit_code == 1 and fate(ggpo, KEY) == "unsupported", errors(ggpo)
    assert "LoRA-GGPO" in ggpo.conversion.reports[KEY].note

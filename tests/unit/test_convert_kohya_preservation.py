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
    encoder only (was DBS403; DBS609 warns; tests/runtime/test_preserve_output.py runs it). At unet_lr 0 the
    U-Net's modules exist, held at their start, and kohya switches them off for the target: still DBS403."""
    outcome = _convert(tmp_path, LORA + " --network_train_text_encoder_only")
    assert outcome.exit_code == 0, errors(outcome)
    assert fate(outcome, KEY) == "mapped" and "zero loss" in outcome.conversion.reports[KEY].note
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and _preserved(plan) == {"subject": False, "dogs": True}
    from dbspec.plan.summary import preserved_summary

    assert "the denoiser's own prediction" in preserved_summary(plan)[0]
    held = _convert(tmp_path / "held", LORA + " --unet_lr 0 --text_encoder_lr 1e-5")
    assert held.exit_code == 1 and fate(held, KEY) == "unsupported", errors(held)
    assert "unet_lr 0" in held.conversion.reports[KEY].note


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

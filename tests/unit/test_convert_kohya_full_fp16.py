"""kohya's full_fp16 converted: train_db.py, sdxl_train.py and train_network.py (with mixed_precision fp16)
cast the trained models (LoRA scripts: the network) to fp16 after building the optimizer, which steps them
directly, and patch accelerate's grad scaler to unscale fp16 gradients
(train_util.patch_accelerator_for_fp16_training): precision.weights = "fp16", weights_rounding = "nearest"."""

from __future__ import annotations

import pytest

from convert_kit import (
    SD15,
    SDXL,
    empty_hub_cache,  # noqa: F401 (a pytest fixture)
    errors,
    fate,
    images,
    kohya,
    messages,
    plan_of,
    write,
)

from tests.runtime.runspec import summary_text

SDXL_FULL = f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
max_train_steps = 1500
learning_rate = 4e-6
mixed_precision = "fp16"
full_fp16 = true
gradient_checkpointing = true
cache_latents = true
train_text_encoder = true
"""


def _trained(plan) -> dict[str, str]:
    return {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"}


def test_sdxl_train_full_fp16_with_adamw8bit_steps_fp16_weights(tmp_path):
    """A kohya_ss GUI SDXL fine-tune with full_fp16 and AdamW8bit (kohya's usual pair): DBS404 before, now the
    plan holds the U-Net and both text encoders in fp16, stepped directly under the fp16 grad scaler."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(tmp_path / "config.toml", SDXL_FULL + 'optimizer_type = "AdamW8bit"\n')
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_fp16") == "mapped"
    assert "full_fp16" not in messages(outcome, "DBS404")
    text = (tmp_path / "specs" / "converted.toml").read_text()
    assert 'weights = "fp16"' in text and 'weights_rounding = "nearest"' in text
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adamw8bit" and plan.precision.mixed == "fp16"
    assert plan.precision.weights == "fp16" and not plan.precision.stochastic_rounding
    assert _trained(plan) == {"unet": "fp16", "text_encoder": "fp16", "text_encoder_2": "fp16"}
    fp32 = plan_of(outcome, tmp_path, ["precision.weights=fp32"])
    assert fp32.memory.gradients == 2 * plan.memory.gradients  # fp16 gradients: 2 bytes, not 4


def test_train_db_full_fp16_casts_the_unet_and_text_encoder(tmp_path):
    """train_db.py honours --full_fp16 (unlike --full_bf16): the U-Net and the trained text encoder, fp16."""
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 \
        --learning_rate=2e-6 --max_train_steps=100 --mixed_precision fp16 --full_fp16 \
        --optimizer_type Adafactor --optimizer_args scale_parameter=False relative_step=False \
        warmup_init=False""",
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_fp16") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "adafactor"
    assert plan.precision.weights == "fp16" and plan.precision.mixed == "fp16"
    assert _trained(plan) == {"unet": "fp16", "text_encoder": "fp16"}  # train_db trains the text encoder


def test_train_db_full_fp16_with_torch_adamw_is_refused_at_check(tmp_path):
    """kohya's default optimizer (torch's AdamW) keeps fp16 moments over fp16 weights: they turn inf/NaN on
    small gradients; the conversion refuses the spec with the rule's reason (DBS249 through DBS403)."""
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 \
        --learning_rate=2e-6 --max_train_steps=100 --mixed_precision fp16 --full_fp16""",
    )
    assert fate(outcome, "full_fp16") == "mapped"
    assert not outcome.written
    refused = messages(outcome, "DBS403")
    assert "optimizer.kind = 'adamw'" in refused and 'precision.weights = "fp16"' in refused


def _fused_fp16(tmp_path, extra: str = ""):
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL
        + """optimizer_type = "adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
fused_backward_pass = true
"""
        + extra,
    )
    return kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")


def test_sdxl_train_fused_adafactor_with_full_fp16_steps_from_scaled_gradients(tmp_path):
    """--fused_backward_pass without clipping: kohya's hooks step Adafactor inside backward from the fp16
    gradients of loss x the scaler's initial scale, which nothing unscales or updates:
    precision.fp16_gradients = "scaled" (no DBS404)."""
    outcome = _fused_fp16(tmp_path, "max_grad_norm = 0.0\n")
    assert fate(outcome, "full_fp16") == "mapped" and not messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.weights == "fp16" and not plan.precision.stochastic_rounding
    assert plan.precision.fp16_gradients == "scaled" and plan.optimizer.max_grad_norm == 0.0
    assert plan.optimizer.kind == "adafactor"


def test_sdxl_train_fused_adafactor_with_full_fp16_and_clipping_is_refused(tmp_path):
    """With max_grad_norm (kohya's default 1.0) the hooks clip through accelerate's scaler, which raises on
    the second unscale_ before an update(): kohya fails at the first step (DBS402)."""
    outcome = _fused_fp16(tmp_path)
    assert fate(outcome, "full_fp16") == "invalid" and not outcome.written
    assert "unscale_() has already been called" in messages(outcome, "DBS402")


def test_fused_optimizer_groups_under_fp16_with_clipping_is_refused(tmp_path):
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    body = (
        SDXL_FULL.replace("full_fp16 = true\n", "")
        + 'optimizer_type = "AdamW8bit"\nfused_optimizer_groups = 4\n'
    )
    write(tmp_path / "config.toml", body)
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert fate(outcome, "fused_optimizer_groups") == "invalid" and not outcome.written
    assert "mixed_precision fp16 and max_grad_norm 1" in messages(outcome, "DBS402")


def test_full_fp16_needs_mixed_precision_fp16(tmp_path):
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 \
        --learning_rate=2e-6 --max_train_steps=100 --mixed_precision bf16 --full_fp16""",
    )
    assert fate(outcome, "full_fp16") == "invalid"


# --- fused hooks under mixed_precision fp16 without clipping (issue 12) ----------------------------------

SDXL_FP16_FUSED = f"""accelerate launch --num_cpu_threads_per_process 2 sdxl_train.py \
--pretrained_model_name_or_path={SDXL} --train_data_dir=img --resolution=1024,1024 \
--output_dir=out --output_name=ohwx --save_model_as=safetensors --train_batch_size=1 \
--max_train_steps=1500 --learning_rate=4e-6 --mixed_precision=fp16 --save_precision=fp16 \
--gradient_checkpointing --cache_latents --max_grad_norm=0 --seed=42"""


def _fp16_command(tmp_path, extra: str):
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    return kohya(tmp_path, command=f"{SDXL_FP16_FUSED} {extra}")


def test_fused_adafactor_under_fp16_without_full_fp16_steps_fp32_weights_from_scaled_gradients(tmp_path):
    """--fused_backward_pass under mixed_precision fp16 (fp32 weights): the hooks step Adafactor from the fp32
    gradients of loss x 65536; nothing calls scaler.update(): fp16_gradients = "scaled" (DBS404 before)."""
    outcome = _fp16_command(
        tmp_path,
        '--optimizer_type=Adafactor --optimizer_args "scale_parameter=False" "relative_step=False" '
        '"warmup_init=False" --fused_backward_pass --train_text_encoder',
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, "fused_backward_pass") == "mapped" and not messages(outcome, "DBS404")
    assert 'fp16_gradients = "scaled"' in (tmp_path / "specs" / "converted.toml").read_text()
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.mixed == "fp16" and plan.precision.weights == "fp32"
    assert plan.precision.fp16_gradients == "scaled" and plan.optimizer.max_grad_norm == 0.0
    assert _trained(plan) == {"unet": "fp32", "text_encoder": "fp32", "text_encoder_2": "fp32"}
    assert plan.optimizer.kind == "adafactor" and plan.optimizer.split == 1


def test_fused_adafactor_with_groups_under_fp16_trains_the_first_chunk_from_scaled_gradients(tmp_path):
    outcome = _fp16_command(
        tmp_path,
        "--optimizer_type=Adafactor --optimizer_args scale_parameter=False relative_step=False "
        "warmup_init=False --fused_backward_pass --fused_optimizer_groups=4",
    )
    assert outcome.written, errors(outcome)
    assert not messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.fp16_gradients == "scaled" and plan.precision.weights == "fp32"
    assert (plan.optimizer.split, plan.optimizer.split_train) == (4, "first")


@pytest.mark.parametrize("full_fp16", [False, True])
def test_fused_optimizer_groups_under_fp16_step_the_first_chunk_scaled_the_others_through_the_scaler(
    tmp_path, full_fp16
):
    """--fused_optimizer_groups 4 under mixed_precision fp16 without clipping: kohya's bare first optimizer
    steps from the scaled gradients, the other three through accelerate's wrapper one by one: optimizer.split
    = 4 (AdamW and Adafactor too, whose chunks otherwise step as one) with fp16_gradients = "scaled_first".
    With full_fp16 (fp16 weights) Adafactor: AdamW's fp16 state is refused (DBS403)."""
    kind = "Adafactor --optimizer_args relative_step=False" if full_fp16 else "AdamW"
    extra = f"--optimizer_type={kind} --fused_optimizer_groups=4" + (" --full_fp16" if full_fp16 else "")
    outcome = _fp16_command(tmp_path, extra)
    assert outcome.written, errors(outcome)
    assert fate(outcome, "fused_optimizer_groups") == "mapped" and not messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.fp16_gradients == "scaled_first" and plan.precision.mixed == "fp16"
    assert plan.precision.weights == ("fp16" if full_fp16 else "fp32")
    assert (plan.optimizer.split, plan.optimizer.split_train, plan.optimizer.split_first_step) == (
        4,
        "all",
        "step",
    )
    assert plan.optimizer.kind == ("adafactor" if full_fp16 else "adamw")
    text = summary_text(plan)
    assert "first chunk's gradients NOT unscaled" in text and "the same updates as one" not in text


def test_fused_optimizer_groups_under_fp16_with_accumulation_step_the_first_chunk_per_micro_batch(tmp_path):
    """With gradient_accumulation_steps 2 kohya's bare first optimizer steps after every micro-batch from its
    scaled gradients: split_first_step = "micro_batch", which fp16 mixed precision allows with scaled_first
    (DBS389 otherwise)."""
    outcome = _fp16_command(
        tmp_path,
        "--optimizer_type=Prodigy --learning_rate=1.0 --fused_optimizer_groups=3 "
        "--gradient_accumulation_steps=2",
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.fp16_gradients == "scaled_first"
    assert (plan.optimizer.split, plan.optimizer.split_first_step) == (3, "micro_batch")

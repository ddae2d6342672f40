"""kohya's --fp8_base / --fp8_base_unet become the cast backend (plain float8_e4m3fn storage, upcast at use).

kohya's train_network.py casts the frozen U-Net to float8_e4m3fn with either flag, the text encoders too with
--fp8_base alone (their embeddings stay in the mixed dtype), and asserts mixed precision fp16 or bf16.
"""

from __future__ import annotations

import pytest

from tests.unit.convert_kit import (
    SD15,
    SDXL,
    codes,
    errors,
    expressible,
    fate,
    images,
    kohya,
    kohya_lora,
    plan_of,
)


def _quantized(plan) -> dict[str, str]:
    return {c.name: c.quantized for c in plan.precision.components if c.name != "vae"}


def test_fp8_base_casts_the_unet_and_the_text_encoder_without_a_stated_difference(tmp_path):
    outcome = expressible(
        kohya_lora(tmp_path, "--mixed_precision bf16 --fp8_base --network_dim 8 --gradient_checkpointing"),
        refused=("DBS402", "DBS403", "DBS404"),
    )
    assert fate(outcome, "fp8_base") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.quantize_backend == "cast"
    assert _quantized(plan) == {"unet": "fp8", "text_encoder": "fp8"}
    assert 'quantize_backend = "cast"' in outcome.text
    # the memory estimate counts 1 byte per cast weight: the fp8 plan needs less than the same run without it
    plain = plan_of(
        kohya_lora(tmp_path, "--mixed_precision bf16 --network_dim 8 --gradient_checkpointing"), tmp_path
    )
    assert plan.memory.weights < plain.memory.weights


@pytest.mark.parametrize(
    ("flags", "text_encoders"),
    [
        ("--fp8_base --fp8_base_unet --cache_text_encoder_outputs", "none"),
        ("--fp8_base --fp8_base_unet", "none"),  # fp8_base_unet: kohya keeps the text encoders in bf16
        ("--fp8_base --cache_text_encoder_outputs", "none"),  # cached: kohya's text encoders wait on the CPU
        ("--fp8_base", "fp8"),
    ],
)
def test_fp8_base_on_sdxl_casts_the_text_encoders_where_kohya_does(tmp_path, flags, text_encoders):
    images(tmp_path / "x" / "8_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"""sdxl_train_network.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x \
        --resolution=1024 --network_module=networks.lora --network_dim=16 --network_train_unet_only \
        --learning_rate=1e-4 --max_train_steps=100 --mixed_precision=bf16 {flags} \
        --output_dir={tmp_path}/out""",
    )
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.quantize_backend == "cast"
    assert _quantized(plan) == {"unet": "fp8", "text_encoder": text_encoders, "text_encoder_2": text_encoders}


def test_fp8_base_without_mixed_precision_is_refused_as_kohya_asserts(tmp_path):
    outcome = kohya_lora(tmp_path, "--mixed_precision no --fp8_base")
    assert not outcome.written
    assert any("fp8_base" in e and "mixed_precision" in e for e in errors(outcome)), errors(outcome)


@pytest.mark.parametrize(("script", "base"), [("train_db.py", SD15), ("sdxl_train.py", SDXL)])
def test_fp8_base_on_a_full_fine_tune_is_ignored_as_kohya_never_reads_it(tmp_path, script, base):
    """train_db.py and sdxl_train.py take --fp8_base (train_util's common arguments) and never read it (the
    mirror's sd-scripts: no `fp8_base` in either script): ignored (DBS405; was DBS403), the base
    unquantised."""
    images(tmp_path / "d" / "10_sks dog", 3, (512, 512))
    outcome = expressible(
        kohya(
            tmp_path,
            command=f"{script} --pretrained_model_name_or_path {base} --train_data_dir d "
            "--resolution 512 --max_train_steps 10 --learning_rate 1e-6 --mixed_precision bf16 --fp8_base",
        )
    )
    assert "DBS405" in codes(outcome) and fate(outcome, "fp8_base") == "inert"
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "none" and set(_quantized(plan).values()) == {"none"}


def test_fp8_base_with_kohya_locon_converts_and_plans(tmp_path):
    """networks.lora with conv_dim (LoRA on the 3x3 convolutions) over kohya's fp8 U-Net: dbspec's LoRA
    convolutions wrap the cast layers (DBS260 refuses them only over quanto/torchao/bitsandbytes)."""
    outcome = expressible(
        kohya_lora(
            tmp_path,
            "--mixed_precision fp16 --fp8_base --network_dim 8 --network_args conv_dim=4 conv_alpha=2",
        ),
        refused=("DBS402", "DBS403", "DBS404"),
    )
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.conv_rank == 4 and plan.precision.quantize_backend == "cast"
    assert _quantized(plan) == {"unet": "fp8", "text_encoder": "fp8"}

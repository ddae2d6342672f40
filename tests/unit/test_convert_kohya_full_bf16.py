"""kohya's full_bf16 converted exactly: sdxl_train.py casts the trained U-Net and text encoders to bf16 after
building the optimizer and lets it step them directly (round-to-nearest, its state created from the bf16
parameters), with any optimizer; its fused Adafactor rounds stochastically; train_db.py ignores the flag."""

from __future__ import annotations

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

SDXL_FULL = f"""
pretrained_model_name_or_path = "{SDXL}"
train_data_dir = "img"
resolution = "1024,1024"
max_train_steps = 1500
mixed_precision = "bf16"
full_bf16 = true
gradient_checkpointing = true
cache_latents = true
train_text_encoder = true
"""


def _trained(plan) -> dict[str, str]:
    return {c.name: c.dtype for c in plan.precision.components if c.trainable == "full"}


def test_sdxl_train_full_bf16_with_prodigy_steps_bf16_weights_directly(tmp_path):
    """A kohya_ss GUI SDXL fine-tune with Prodigy (lr 1, decoupled weight decay): DBS404 before, now the
    plan holds bf16 weights stepped by Prodigy itself, its state bf16 like them."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL
        + """learning_rate = 1.0
optimizer_type = "Prodigy"
optimizer_args = ["decouple=True", "weight_decay=0.01"]
""",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_bf16") == "mapped"
    assert "full_bf16" not in messages(outcome, "DBS404")  # no stated difference any more
    text = (tmp_path / "specs" / "converted.toml").read_text()
    assert 'weights = "bf16"' in text and 'weights_rounding = "nearest"' in text
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "prodigy"
    assert plan.precision.mixed == "bf16"
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding
    assert _trained(plan) == {"unet": "bf16", "text_encoder": "bf16", "text_encoder_2": "bf16"}
    # Prodigy's exp_avg, exp_avg_sq, s and p0 (16 bytes per parameter in fp32) in bf16: 8 bytes
    trained = sum(c.params for c in plan.precision.components if c.trainable == "full")
    assert plan.memory.optimizer == trained * 8
    assert any("round-to-nearest" in note for note in plan.memory.notes)


def test_sdxl_train_full_bf16_with_adafactor_and_dadaptation(tmp_path):
    """The common kohya SDXL recipe (Adafactor, fixed lr) and D-Adaptation Adam: both step the bf16 weights
    directly; Adafactor's state stays fp32 (transformers computes in fp32), D-Adaptation's is bf16."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "a.toml",
        SDXL_FULL
        + """learning_rate = 4e-6
optimizer_type = "Adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
""",
    )
    adafactor = kohya(tmp_path, config_file=tmp_path / "a.toml", command="accelerate launch sdxl_train.py")
    plan = plan_of(adafactor, tmp_path)
    assert plan.optimizer.kind == "adafactor" and fate(adafactor, "full_bf16") == "mapped"
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding
    assert _trained(plan) == {"unet": "bf16", "text_encoder": "bf16", "text_encoder_2": "bf16"}
    trained = sum(c.params for c in plan.precision.components if c.trainable == "full")
    assert plan.memory.optimizer == trained * 4  # the fp32 upper bound, as with fp32 weights

    images(tmp_path / "d" / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "d" / "d.toml",
        SDXL_FULL
        + 'learning_rate = 1.0\noptimizer_type = "DAdaptAdam"\noptimizer_args = ["decouple=True"]\n',
    )
    dadapt = kohya(
        tmp_path / "d", config_file=tmp_path / "d" / "d.toml", command="accelerate launch sdxl_train.py"
    )
    plan = plan_of(dadapt, tmp_path / "d")
    assert plan.optimizer.kind == "dadapt_adam" and fate(dadapt, "full_bf16") == "mapped"
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding
    trained = sum(c.params for c in plan.precision.components if c.trainable == "full")
    assert plan.memory.optimizer == trained * 6  # s, exp_avg, exp_avg_sq in bf16


def test_sdxl_train_fused_backward_pass_adafactor_rounds_stochastically(tmp_path):
    """--fused_backward_pass: kohya's patched Adafactor computes each update in fp32 and copies it into the
    bf16 weight with stochastic rounding (library/adafactor_fused.py): dbspec's stochastic rounding."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL
        + """learning_rate = 4e-6
optimizer_type = "adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
fused_backward_pass = true
""",
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert fate(outcome, "full_bf16") == "mapped"
    assert "weights_rounding" not in (tmp_path / "specs" / "converted.toml").read_text()
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.weights == "bf16" and plan.precision.stochastic_rounding


def test_train_db_ignores_full_bf16(tmp_path):
    """train_db.py parses --full_bf16 (train_util's shared arguments) but never casts: fp32 weights."""
    images(tmp_path / "x" / "10_sks dog", 3, (512, 512))
    outcome = kohya(
        tmp_path,
        command=f"""train_db.py --pretrained_model_name_or_path={SD15} --train_data_dir=x --resolution=512 \
        --learning_rate=1e-6 --max_train_steps=400 --mixed_precision bf16 --full_bf16 \
        --optimizer_type Prodigy""",
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_bf16") == "inert"
    text = (tmp_path / "specs" / "converted.toml").read_text()
    assert "weights_rounding" not in text and 'weights = "bf16"' not in text
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.weights == "fp32" and not plan.precision.stochastic_rounding
    assert set(_trained(plan).values()) == {"fp32"} and "unet" in _trained(plan)

"""kohya's full_bf16 converted exactly: sdxl_train.py casts the trained U-Net and text encoders to bf16 after
building the optimizer and lets it step them directly (round-to-nearest, its state created from the bf16
parameters), with any optimizer; its fused Adafactor rounds stochastically; train_db.py ignores the flag."""

from __future__ import annotations

import pytest

from convert_kit import (
    component_file,
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


def _fused_adafactor(tmp_path, extra: str = ""):
    """An sdxl_train.py config_file: full_bf16, fixed-LR Adafactor with the fused backward pass."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL
        + """learning_rate = 4e-6
optimizer_type = "adafactor"
optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]
fused_backward_pass = true
"""
        + extra,
    )
    return kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")


def test_sdxl_train_fused_backward_pass_adafactor_rounds_stochastically(tmp_path):
    """--fused_backward_pass: kohya's patched Adafactor computes each update in fp32 and copies it into the
    bf16 weight with stochastic rounding (library/adafactor_fused.py): dbspec's stochastic rounding."""
    outcome = _fused_adafactor(tmp_path)
    assert fate(outcome, "full_bf16") == "mapped"
    assert "weights_rounding" not in (tmp_path / "specs" / "converted.toml").read_text()
    plan = plan_of(outcome, tmp_path)
    assert plan.precision.weights == "bf16" and plan.precision.stochastic_rounding
    # the parameter hooks clip each gradient by its own norm (kohya's default max_grad_norm 1.0)
    assert fate(outcome, "fused_backward_pass") == "mapped"
    assert (plan.optimizer.clip_mode, plan.optimizer.max_grad_norm) == ("norm_per_tensor", 1.0)


def test_fused_backward_pass_without_clipping_changes_no_clip_mode(tmp_path):
    outcome = _fused_adafactor(tmp_path, "max_grad_norm = 0.0\n")
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.clip_mode, plan.optimizer.max_grad_norm) == ("norm", 0.0)


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


@pytest.mark.parametrize("half", ["bf16", "fp16"])
def test_train_network_lora_full_half_holds_the_adapters_in_half(tmp_path, half):
    """A kohya_ss GUI SD1.5 LoRA (dim 32, alpha 16, AdamW8bit, unet and text encoder rates) with full_bf16 or
    full_fp16: train_network.py casts the LoRA network to that dtype; the frozen base is in it anyway under
    the matching mixed precision."""
    images(tmp_path / "img" / "20_ohwx dog", 4, (512, 512))
    write(
        tmp_path / "config.toml",
        f"""
pretrained_model_name_or_path = "{SD15}"
train_data_dir = "img"
resolution = "512,512"
network_module = "networks.lora"
network_dim = 32
network_alpha = 16
learning_rate = 1e-4
unet_lr = 1e-4
text_encoder_lr = 5e-5
optimizer_type = "AdamW8bit"
lr_scheduler = "cosine"
max_train_steps = 1200
mixed_precision = "{half}"
save_precision = "fp16"
full_{half} = true
cache_latents = true
""",
    )
    outcome = kohya(
        tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch train_network.py"
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, f"full_{half}") == "mapped"
    assert f"full_{half}" not in messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.kind == "lora" and plan.adapter.rank == 32 and plan.optimizer.kind == "adamw8bit"
    assert plan.precision.weights == half and not plan.precision.stochastic_rounding
    parts = {c.name: (c.trainable, c.dtype) for c in plan.precision.components if c.name != "vae"}
    assert parts == {"unet": ("lora", half), "text_encoder": ("lora", half)}
    fp32 = plan_of(outcome, tmp_path, ["precision.weights=fp32", "precision.weights_rounding=stochastic"])
    assert fp32.memory.gradients == 2 * plan.memory.gradients  # adapter gradients: 2 bytes, not 4


def test_sdxl_lora_full_bf16_with_prodigy(tmp_path):
    """sdxl_train_network.py (train_network.py's step) with Prodigy and full_bf16: bf16 adapters stepped by
    Prodigy itself, its state bf16."""
    images(tmp_path / "x" / "8_ohwx", 3, (1024, 1024))
    outcome = kohya(
        tmp_path,
        command=f"""sdxl_train_network.py --pretrained_model_name_or_path={SDXL} --train_data_dir=x \\
        --resolution=1024 --network_module=networks.lora --network_dim 16 --network_alpha 8 \\
        --learning_rate=1.0 --optimizer_type prodigy --optimizer_args decouple=True weight_decay=0.01 \\
        --network_train_unet_only --max_train_steps=100 --mixed_precision bf16 --full_bf16""",
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_bf16") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.kind == "prodigy" and plan.precision.weights == "bf16"
    assert not plan.precision.stochastic_rounding
    lora = {c.name: c.dtype for c in plan.precision.components if c.trainable == "lora"}
    assert lora == {"unet": "bf16"}
    assert any("bf16, half" in note for note in plan.memory.notes)  # Prodigy's state like the adapters


def test_flux_lora_full_bf16_holds_the_adapters_in_bf16(tmp_path):
    """flux_train_network.py inherits train_network.py's cast of the network: bf16 Flux LoRA adapters."""
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)  # kohya's component files (model.text_encoder_files, model.vae)
    outcome = kohya(
        tmp_path,
        command="accelerate launch --mixed_precision bf16 flux_train_network.py "
        "--pretrained_model_name_or_path black-forest-labs/FLUX.1-dev --clip_l clip_l.safetensors "
        "--t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x --resolution 512 "
        "--cache_latents_to_disk --sdpa --seed 42 --gradient_checkpointing --mixed_precision bf16 "
        "--save_precision bf16 --network_module networks.lora_flux --network_dim 4 --network_train_unet_only "
        "--optimizer_type adamw8bit --learning_rate 1e-4 --cache_text_encoder_outputs --max_train_steps 400 "
        "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw "
        "--guidance_scale 1.0 --full_bf16",
    )
    assert outcome.written, errors(outcome)
    assert fate(outcome, "full_bf16") == "mapped"
    plan = plan_of(outcome, tmp_path)
    assert plan.model.family == "flux" and plan.adapter.kind == "lora"
    assert plan.precision.weights == "bf16" and not plan.precision.stochastic_rounding


def test_fused_optimizer_groups_clip_per_tensor_and_split_prodigy(tmp_path):
    """--fused_optimizer_groups clips in each parameter's hook too; with Prodigy kohya's several optimizers
    each estimate their own step size: optimizer.split, exact (no DBS404)."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL + 'learning_rate = 1.0\noptimizer_type = "Prodigy"\nfused_optimizer_groups = 4\n',
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "fused_optimizer_groups") == "mapped"
    assert not messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert plan.optimizer.clip_mode == "norm_per_tensor"
    assert (plan.optimizer.split, plan.optimizer.split_order) == (4, "original")  # kohya's SDXL UNet order


@pytest.mark.parametrize("optimizer", ["DAdaptAdam", "DAdaptLion"])
def test_fused_optimizer_groups_split_d_adaptation(tmp_path, optimizer):
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL + f'learning_rate = 1.0\noptimizer_type = "{optimizer}"\nfused_optimizer_groups = 3\n',
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "fused_optimizer_groups") == "mapped" and not messages(outcome, "DBS404")
    assert plan_of(outcome, tmp_path).optimizer.split == 3


def test_fused_optimizer_groups_with_a_per_tensor_optimizer_keep_one_optimizer(tmp_path):
    """AdamW updates each tensor on its own: kohya's optimizers step as one does, the split is left out."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(
        tmp_path / "config.toml",
        SDXL_FULL + 'learning_rate = 1e-5\noptimizer_type = "AdamW"\nfused_optimizer_groups = 4\n',
    )
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert outcome.written, errors(outcome)
    assert fate(outcome, "fused_optimizer_groups") == "mapped" and not messages(outcome, "DBS404")
    plan = plan_of(outcome, tmp_path)
    assert (plan.optimizer.split, plan.optimizer.clip_mode) == (1, "norm_per_tensor")


@pytest.mark.parametrize("optimizer", ["Prodigy", "AdamW"])
def test_fused_optimizer_groups_with_accumulation_step_the_first_chunk_every_micro_batch(tmp_path, optimizer):
    """With gradient accumulation kohya's hooks call every optimizer's step after each micro-batch, but only
    the first is bare: accelerate's wrappers of the others step once per optimizer step (they accumulate).
    optimizer.split with split_first_step = "micro_batch", for per-tensor optimizers too (no DBS404)."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    lr = "1.0" if optimizer == "Prodigy" else "1e-5"
    body = (
        f'learning_rate = {lr}\noptimizer_type = "{optimizer}"\nfused_optimizer_groups = 2\n'
        "gradient_accumulation_steps = 4\n"
    )
    write(tmp_path / "config.toml", SDXL_FULL + body)
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert fate(outcome, "fused_optimizer_groups") == "mapped" and not messages(outcome, "DBS404")
    text = (tmp_path / "specs" / "converted.toml").read_text()
    assert 'split_first_step = "micro_batch"' in text
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.split, o.split_first_step, o.split_train, o.split_order) == (
        2,
        "micro_batch",
        "all",
        "original",
    )
    assert (o.clip_mode, o.max_grad_norm, plan.schedule.accumulation) == ("norm_per_tensor", 1.0, 4)


def test_fused_backward_pass_with_optimizer_groups_trains_the_first_chunk_alone(tmp_path):
    """kohya patches and hooks only the first of the groups' optimizers when --fused_backward_pass is given
    too: the others never step, so only the first chunk's tensors train (split_train = "first")."""
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    body = (
        'learning_rate = 1e-5\noptimizer_type = "Adafactor"\nfused_backward_pass = true\n'
        "fused_optimizer_groups = 4\n"
        'optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]\n'
    )
    write(tmp_path / "config.toml", SDXL_FULL + body)
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert fate(outcome, "fused_optimizer_groups") == "mapped" and not messages(outcome, "DBS404")
    assert fate(outcome, "fused_backward_pass") == "mapped"
    plan = plan_of(outcome, tmp_path)
    o = plan.optimizer
    assert (o.kind, o.split, o.split_train, o.split_first_step) == ("adafactor", 4, "first", "step")
    assert (o.clip_mode, plan.precision.weights, plan.precision.stochastic_rounding) == (
        "norm_per_tensor",
        "bf16",
        True,
    )


@pytest.mark.parametrize(
    ("body", "says"),
    [
        ('optimizer_type = "AdamW8bit"\n', "optimizer_type Adafactor only"),
        (
            'optimizer_type = "Adafactor"\ngradient_accumulation_steps = 2\n'
            'optimizer_args = ["scale_parameter=False", "relative_step=False", "warmup_init=False"]\n',
            "gradient_accumulation_steps 1",
        ),
    ],
)
def test_fused_backward_pass_refuses_what_kohya_asserts(tmp_path, body, says):
    images(tmp_path / "img" / "10_ohwx woman", 4, (1024, 1024))
    write(tmp_path / "config.toml", SDXL_FULL + "learning_rate = 1e-5\nfused_backward_pass = true\n" + body)
    outcome = kohya(tmp_path, config_file=tmp_path / "config.toml", command="accelerate launch sdxl_train.py")
    assert fate(outcome, "fused_backward_pass") == "invalid" and not outcome.written
    assert says in messages(outcome, "DBS402")

"""kohya lora_flux's `train_t5xxl=True` converted exactly (lora_flux.py train_t5): LoRA on T5-XXL's
T5Attention / T5DenseGatedActDense Linears (`train.t5`), at `text_encoder_lr`'s second value (kohya's
prepare_optimizer_params_with_multiple_te_lrs), refused with cached text-encoder outputs
(flux_train_network.py raises ValueError), inert without a text-encoder LoRA or at rate 0."""

from __future__ import annotations

from convert_kit import codes, component_file, errors, fate, images, kohya, plan_of  # noqa: F401

FLUX = "black-forest-labs/FLUX.1-dev"
# sd-scripts' Flux LoRA command line (docs/flux_train_network.md) training the text encoders: no
# network_train_unet_only, no text-encoder output cache
COMMAND = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 flux_train_network.py "
    f"--pretrained_model_name_or_path {FLUX} --clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors "
    "--ae ae.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk --save_model_as "
    "safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 --seed 42 "
    "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
    "networks.lora_flux --network_dim 16 --network_alpha 8 --optimizer_type adamw8bit --learning_rate 1e-4 "
    "--highvram --max_train_steps 400 --timestep_sampling shift --discrete_flow_shift 3.1582 "
    "--model_prediction_type raw --guidance_scale 1.0"
)
T5 = (
    "q",
    "k",
    "v",
    "o",
    "wi_0",
    "wi_1",
    "wo",
)  # the Linears of transformers' T5Attention, T5DenseGatedActDense


def _flux(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, command=f"{COMMAND} {extra}")


def _trains(plan) -> dict[str, str]:
    return {c.name: c.trainable for c in plan.precision.components}


def test_train_t5xxl_with_two_text_encoder_rates(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 5e-5 2e-5')
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, "network_args train_t5xxl") == "mapped"
    assert not {"DBS402", "DBS403"} & codes(outcome)
    assert _trains(plan) == {
        "unet": "lora",
        "text_encoder": "lora",
        "text_encoder_2": "lora",
        "vae": "frozen",
    }
    assert plan.adapter.t5_targets == T5 and (plan.adapter.rank, plan.adapter.alpha) == (16, 8.0)
    o = plan.optimizer
    assert (o.lr, o.text_encoder_lr, o.text_encoder_2_lr) == (1e-4, 5e-5, 2e-5)
    assert not plan.cache.text_embeddings  # T5's outputs are encoded every step


def test_one_rate_serves_both_encoders(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 3e-5')
    plan = plan_of(outcome, tmp_path)
    assert _trains(plan)["text_encoder_2"] == "lora"
    assert (plan.optimizer.text_encoder_lr, plan.optimizer.text_encoder_2_lr) == (3e-5, None)  # one group


def test_no_rate_is_learning_rate_for_both(tmp_path):
    plan = plan_of(_flux(tmp_path, '--network_args "train_t5xxl=True" --unet_lr 2e-4'), tmp_path)
    o = plan.optimizer
    assert (o.lr, o.text_encoder_lr, o.text_encoder_2_lr) == (2e-4, 1e-4, None)  # kohya's default_lr
    assert _trains(plan)["text_encoder_2"] == "lora"


def test_t5_alone_when_clip_rate_is_zero(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 0 4e-5')
    plan = plan_of(outcome, tmp_path)
    assert (_trains(plan)["text_encoder"], _trains(plan)["text_encoder_2"]) == ("frozen", "lora")
    assert plan.optimizer.text_encoder_2_lr == 4e-5


def test_t5_at_rate_zero_or_unet_only_is_inert(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 1e-5 0')
    assert fate(outcome, "network_args train_t5xxl") == "inert"
    assert _trains(plan_of(outcome, tmp_path))["text_encoder_2"] == "frozen"
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --network_train_unet_only')
    assert fate(outcome, "network_args train_t5xxl") == "inert"
    assert _trains(plan_of(outcome, tmp_path))["text_encoder_2"] == "frozen"


def test_cached_text_encoder_outputs_are_refused_as_kohya_raises(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --cache_text_encoder_outputs_to_disk')
    assert not outcome.written and "ValueError" in "".join(errors(outcome))


def test_train_t5_without_t5_is_refused_at_plan_time(tmp_path):
    from dbspec.frontend import plan_spec
    from tests.runtime.runspec import CPU, write_spec

    for base in ("builtin:tiny-sd1", "builtin:tiny-sdxl"):
        path = write_spec(tmp_path, base=base, extra='[adapter]\nkind = "lora"\n[train]\nt5 = true\n')
        planned = plan_spec(path, CPU, str(path), [])
        assert planned.plan is None
        assert [(d.code, d.path) for d in planned.diagnostics if d.severity == "error"] == [
            ("DBS397", "train.t5")
        ]


def _file_with_t5(path, *, rank: int = 8, alpha: float = 4.0):
    """A kohya lora_flux file (zero tensors) with a double-block layer, a CLIP-L and a T5-XXL module."""
    import numpy as np
    from safetensors.numpy import save_file

    layers = {
        "lora_unet_double_blocks_0_img_attn_proj": (3072, 3072),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
        "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096),
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wi_0": (10240, 4096),
    }
    tensors = {}
    for name, (out, width) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, width), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


def test_dim_from_weights_with_lora_te3_modules_trains_t5(tmp_path):
    """kohya's create_network_from_weights turns train_t5xxl on when a module name holds lora_te3."""
    _file_with_t5(tmp_path / "prev.safetensors")
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    plan = plan_of(outcome, tmp_path)
    assert _trains(plan)["text_encoder_2"] == "lora" and plan.adapter.t5_targets == T5
    assert (plan.adapter.rank, plan.adapter.alpha) == (8, 4.0) and plan.adapter.init_weights
    assert fate(outcome, "network_weights lora_te3") == "mapped"
    cached = _flux(
        tmp_path, "--network_weights prev.safetensors --dim_from_weights --cache_text_encoder_outputs"
    )
    assert not cached.written and "ValueError" in "".join(errors(cached))


def test_network_weights_with_t5_modules_init_the_t5_lora(tmp_path):
    """--network_weights with train_t5xxl=True: the file's lora_te3 modules start T5's LoRA (the plan checks
    them against kohya's T5 targets)."""
    _file_with_t5(tmp_path / "prev.safetensors", rank=16, alpha=8.0)
    outcome = _flux(tmp_path, '--network_weights prev.safetensors --network_args "train_t5xxl=True"')
    plan = plan_of(outcome, tmp_path)
    assert _trains(plan)["text_encoder_2"] == "lora" and plan.adapter.init_weights

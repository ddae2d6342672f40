"""kohya lora_flux's `train_t5xxl=True` converted exactly (lora_flux.py train_t5): LoRA on T5-XXL's
T5Attention / T5DenseGatedActDense Linears (`train.t5`), at `text_encoder_lr`'s second value (kohya's
prepare_optimizer_params_with_multiple_te_lrs), refused with cached text-encoder outputs
(flux_train_network.py raises ValueError), inert without a text-encoder LoRA or at rate 0."""

from __future__ import annotations

import re

from convert_kit import codes, component_file, errors, fate, images, kohya, out_path, plan_of  # noqa: F401

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
    # CLIP-L's modules at rate 0 count in max_grad_norm's clip (test_convert_kohya_idle_text.py): exact at 0
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 0 4e-5 --max_grad_norm 0')
    plan = plan_of(outcome, tmp_path)
    assert (_trains(plan)["text_encoder"], _trains(plan)["text_encoder_2"]) == ("frozen", "lora")
    assert plan.optimizer.text_encoder_2_lr == 4e-5


def test_t5_at_rate_zero_or_unet_only_is_inert(tmp_path):
    outcome = _flux(tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 1e-5 0 --max_grad_norm 0')
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


def _file_at_ranks(path, layers: dict[str, tuple[int, int, int, float]]) -> None:
    """A kohya file (zero tensors): module -> (out, in, rank, alpha)."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {}
    for name, (out, width, rank, alpha) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, width), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


def text_ranks(adapter, paths) -> dict[str, tuple[int, float]]:
    """(rank, alpha) of text-encoder module paths (`<component>.<path>`) by the first text-encoder block whose
    pattern matches (as the runtime), else the adapter's."""
    import re

    out = {}
    for path in paths:
        block = next((b for b in adapter.text_encoder_blocks if re.search(b.pattern, path)), None)
        out[path] = (block.rank, block.alpha) if block else (adapter.rank, adapter.alpha)
    return out


def test_dim_from_weights_builds_each_text_encoder_module_at_its_rank(tmp_path):
    """create_network_from_weights builds each CLIP-L and T5-XXL module of the file at its rank and alpha and
    none the file lacks: [[adapter.text_encoder_blocks]] over `<component>.<path>` (T5's paths as
    transformers names them), a last rank-0 block; no DBS403, and the plan's check of the file passes."""
    _file_at_ranks(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_double_blocks_0_img_attn_proj": (3072, 3072, 16, 8.0),
            "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 8, 4.0),
            "lora_te1_text_model_encoder_layers_0_self_attn_k_proj": (768, 768, 4, 4.0),
            "lora_te1_text_model_encoder_layers_11_mlp_fc2": (768, 3072, 8, 4.0),
            "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096, 2, 1.0),
            "lora_te3_encoder_block_23_layer_1_DenseReluDense_wi_0": (10240, 4096, 8, 4.0),
        },
    )
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    assert fate(outcome, "dim_from_weights") == "mapped" and not {"DBS402", "DBS403"} & codes(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.rank, a.alpha) == (8, 4.0) and a.init_weights and a.init_partial  # the most frequent pair
    assert (_trains(plan)["text_encoder"], _trains(plan)["text_encoder_2"]) == ("lora", "lora")
    clip, t5 = "text_encoder.text_model.encoder.layers", "text_encoder_2.encoder.block"
    assert text_ranks(a, [
        f"{clip}.0.self_attn.q_proj",
        f"{clip}.0.self_attn.k_proj",
        f"{clip}.11.mlp.fc2",
        f"{clip}.0.self_attn.v_proj",
        f"{clip}.1.self_attn.q_proj",
        f"{clip}.11.mlp.fc1",
        f"{t5}.0.layer.0.SelfAttention.q",
        f"{t5}.23.layer.1.DenseReluDense.wi_0",
        f"{t5}.0.layer.0.SelfAttention.k",
        f"{t5}.23.layer.1.DenseReluDense.wi_1",
        f"{t5}.2.layer.0.SelfAttention.q",
    ]) == {
        f"{clip}.0.self_attn.q_proj": (8, 4.0),
        f"{clip}.0.self_attn.k_proj": (4, 4.0),
        f"{clip}.11.mlp.fc2": (8, 4.0),
        f"{clip}.0.self_attn.v_proj": (0, 1.0),  # not in the file: kohya builds none
        f"{clip}.1.self_attn.q_proj": (0, 1.0),
        f"{clip}.11.mlp.fc1": (0, 1.0),
        f"{t5}.0.layer.0.SelfAttention.q": (2, 1.0),
        f"{t5}.23.layer.1.DenseReluDense.wi_0": (8, 4.0),
        f"{t5}.0.layer.0.SelfAttention.k": (0, 1.0),
        f"{t5}.23.layer.1.DenseReluDense.wi_1": (0, 1.0),
        f"{t5}.2.layer.0.SelfAttention.q": (0, 1.0),
    }  # fmt: skip
    assert "[[adapter.text_encoder_blocks]]" in out_path(tmp_path).read_text()


def test_dim_from_weights_names_the_files_layers_even_at_one_rank(tmp_path):
    """Every module of CLIP-L layers and T5-XXL blocks 0 and 1 at one rank: the file's layers at its rank, a
    rank-0 block for the rest (a deeper encoder's later layers get no LoRA, as kohya builds none there)."""
    clip = (
        "self_attn_q_proj",
        "self_attn_k_proj",
        "self_attn_v_proj",
        "self_attn_out_proj",
        "mlp_fc1",
        "mlp_fc2",
    )
    t5 = [f"layer_0_SelfAttention_{p}" for p in "qkvo"] + [
        f"layer_1_DenseReluDense_{p}" for p in ("wi_0", "wi_1", "wo")
    ]
    layers = {"lora_unet_double_blocks_0_img_attn_proj": (3072, 3072, 16, 8.0)}
    for i in range(2):
        layers |= {f"lora_te1_text_model_encoder_layers_{i}_{m}": (8, 8, 4, 2.0) for m in clip}
        layers |= {f"lora_te3_encoder_block_{i}_{m}": (8, 8, 4, 2.0) for m in t5}
    _file_at_ranks(tmp_path / "prev.safetensors", layers)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (4, 2.0) and a.t5_targets == T5
    hits = {
        path: next((b.rank, b.alpha) for b in a.text_encoder_blocks if re.search(b.pattern, path))
        for path in (
            "text_encoder.text_model.encoder.layers.1.mlp.fc2",
            "text_encoder.text_model.encoder.layers.2.mlp.fc2",
            "text_encoder_2.encoder.block.0.layer.1.DenseReluDense.wo",
            "text_encoder_2.encoder.block.5.layer.1.DenseReluDense.wo",
        )
    }
    assert list(hits.values()) == [(4, 2.0), (0, 1.0), (4, 2.0), (0, 1.0)]


def test_dim_from_weights_without_clip_l_modules_trains_t5_alone(tmp_path):
    """A file with T5-XXL modules and no CLIP-L one: kohya builds no CLIP-L LoRA (train.text_encoder =
    false), T5's at the file's ranks (train.t5)."""
    _file_at_ranks(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_double_blocks_0_img_attn_proj": (3072, 3072, 16, 8.0),
            "lora_te3_encoder_block_0_layer_0_SelfAttention_q": (4096, 4096, 2, 1.0),
            "lora_te3_encoder_block_1_layer_0_SelfAttention_q": (4096, 4096, 4, 1.0),
        },
    )
    args = "--network_weights prev.safetensors --dim_from_weights --text_encoder_lr 3e-5 2e-5"
    plan = plan_of(_flux(tmp_path, args), tmp_path)
    assert (_trains(plan)["text_encoder"], _trains(plan)["text_encoder_2"]) == ("frozen", "lora")
    assert plan.optimizer.text_encoder_2_lr == 2e-5  # T5's rate: text_encoder_lr's second value
    t5 = "text_encoder_2.encoder.block"
    assert text_ranks(
        plan.adapter, [f"{t5}.0.layer.0.SelfAttention.q", f"{t5}.1.layer.0.SelfAttention.q"]
    ) == {
        f"{t5}.0.layer.0.SelfAttention.q": (2, 1.0),
        f"{t5}.1.layer.0.SelfAttention.q": (4, 1.0),
    }

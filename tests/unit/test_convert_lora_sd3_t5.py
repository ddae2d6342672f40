"""kohya lora_sd3's `train_t5xxl=True` converted exactly: LoRA on SD3's third text encoder, T5-XXL
(`train.t5`), at `text_encoder_lr`'s third value as lora_sd3's prepare_optimizer_params_with_multiple_te_lrs
pads it (one value: all three; two: [a, b, b]), refused with cached text-encoder outputs
(sd3_train_network.py raises ValueError), inert without a text-encoder LoRA or at rate 0."""

from __future__ import annotations

import pytest
from convert_kit import codes, component_file, errors, fate, images, kohya, plan_of

SD35 = "stabilityai/stable-diffusion-3.5-large"
# sd-scripts' SD3 LoRA command line (docs/sd3_train_network.md) training the text encoders
COMMAND = (
    f"accelerate launch --mixed_precision bf16 --num_cpu_threads_per_process 1 sd3_train_network.py "
    f"--pretrained_model_name_or_path {SD35} --clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors "
    "--t5xxl sd3/t5xxl_fp16.safetensors --train_data_dir x --resolution 512 --cache_latents_to_disk "
    "--save_model_as safetensors --sdpa --persistent_data_loader_workers --max_data_loader_n_workers 2 "
    "--seed 42 --gradient_checkpointing --save_precision bf16 --network_module networks.lora_sd3 "
    "--network_dim 16 --network_alpha 8 --optimizer_type adamw8bit --learning_rate 1e-4 "
    "--max_train_epochs 4 --save_every_n_epochs 1 --weighting_scheme uniform --blocks_to_swap 0"
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


def _sd3(tmp_path, extra: str):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(tmp_path, command=f"{COMMAND} {extra}")


def _kohya_rates(values: list[float], default: float) -> list[float]:
    """prepare_optimizer_params_with_multiple_te_lrs' [CLIP-L, CLIP-G, T5-XXL] rates, from its rule."""
    if not values:
        return [default] * 3
    if len(values) == 1:
        return values * 3
    if len(values) == 2:
        return [values[0], values[1], values[1]]
    return values[:3]


def _plan_rates(plan) -> dict[str, float]:
    """Each trained text encoder's rate as the plan's optimizer groups give it (the runtime's param_groups:
    the third joins the second's group without its own rate, the second the first's)."""
    o = plan.optimizer
    second = o.text_encoder_2_lr if o.text_encoder_2_lr is not None else o.text_encoder_lr
    third = o.text_encoder_3_lr if o.text_encoder_3_lr is not None else second
    adapted = {c.name for c in plan.precision.components if c.trainable != "frozen"}
    trained = adapted - set(plan.idle_text_encoders)  # the idle ones carry the adapter, never stepped
    rates = {"text_encoder": o.text_encoder_lr, "text_encoder_2": second, "text_encoder_3": third}
    return {name: rate for name, rate in rates.items() if name in trained}


@pytest.mark.parametrize(
    "values",
    [[5e-5, 2e-5, 1e-5], [5e-5, 2e-5], [5e-5], [5e-5, 5e-5, 1e-5], [5e-5, 1e-5, 1e-5], []],
    ids=["three", "two", "one", "t5-own", "g-and-t5", "none"],
)
def test_train_t5xxl_trains_t5_at_the_third_rate(tmp_path, values):
    rates = " ".join(f"{v:g}" for v in values)
    extra = '--network_args "train_t5xxl=True"' + (f" --text_encoder_lr {rates}" if values else "")
    outcome = _sd3(tmp_path, extra)
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, "network_args train_t5xxl") == "mapped"
    assert not {"DBS402", "DBS403"} & codes(outcome)
    trained = {c.name: c.trainable for c in plan.precision.components}
    assert trained == {
        "unet": "lora",
        "text_encoder": "lora",
        "text_encoder_2": "lora",
        "text_encoder_3": "lora",
        "vae": "frozen",
    }
    assert plan.adapter.t5_targets == T5 and (plan.adapter.rank, plan.adapter.alpha) == (16, 8.0)
    expected = dict(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), _kohya_rates(values, 1e-4)))
    assert _plan_rates(plan) == expected
    assert plan.optimizer.lr == 1e-4
    assert not plan.cache.text_embeddings  # T5's outputs are encoded every step


def test_clip_g_at_zero_leaves_t5_at_its_rate(tmp_path):
    # CLIP-G's modules at rate 0 count in max_grad_norm's clip (test_convert_kohya_idle_text.py): exact at 0
    outcome = _sd3(
        tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 5e-5 0 1e-5 --max_grad_norm 0'
    )
    plan = plan_of(outcome, tmp_path)
    assert _plan_rates(plan) == {"text_encoder": 5e-5, "text_encoder_3": 1e-5}


@pytest.mark.parametrize("t5", [False, True], ids=["clip", "t5"])
@pytest.mark.parametrize("values", [[0, 5e-5], [0, 5e-5, 2e-5], [0, 1e-4]], ids=["two", "three", "unet-rate"])
def test_clip_l_at_zero_trains_clip_g_alone(tmp_path, values, t5):
    """text_encoder_lr's first value 0: lora_sd3 leaves CLIP-L's group out and trains CLIP-G (and T5-XXL with
    train_t5xxl) at the padded rates, as sdxl_train.py's learning_rate_te1 0 trains the second encoder
    alone (train.text_encoder = false, train.text_encoder_2 = true)."""
    rates = " ".join(f"{v:g}" for v in values)
    extra = ('--network_args "train_t5xxl=True" ' if t5 else "") + f"--text_encoder_lr {rates}"
    outcome = _sd3(tmp_path, f"{extra} --max_grad_norm 0")
    assert not {"DBS402", "DBS403", "DBS404"} & codes(outcome)
    plan = plan_of(outcome, tmp_path)
    expected = dict(zip(("text_encoder", "text_encoder_2", "text_encoder_3"), _kohya_rates(values, 1e-4)))
    expected = {k: v for k, v in expected.items() if v != 0 and (t5 or k != "text_encoder_3")}
    assert _plan_rates(plan) == expected and plan.optimizer.lr == 1e-4
    # kohya's default max_grad_norm 1.0 clips CLIP-L's idle modules' gradients too: the idle CLIP-L
    # (train.text_encoder_idle = "kohya"; test_convert_kohya_idle_text.py)
    clipped = _sd3(tmp_path, extra)
    assert not {"DBS402", "DBS403", "DBS404"} & codes(clipped), errors(clipped)
    plan = plan_of(clipped, tmp_path)
    assert _plan_rates(plan) == expected and plan.idle_text_encoders == ("text_encoder",)


def test_lycoris_clip_l_at_zero_trains_no_text_encoder(tmp_path):
    """lycoris.kohya on SD3: one text group at text_encoder_lr's first value, so 0 trains neither CLIP."""
    command = COMMAND.replace("--network_module networks.lora_sd3", "--network_module lycoris.kohya")
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    extra = "--network_args algo=locon preset=full-lin --text_encoder_lr 0 5e-5 --max_grad_norm 0"
    plan = plan_of(kohya(tmp_path, command=f"{command} {extra}"), tmp_path)
    assert _plan_rates(plan) == {}


def test_t5_rate_zero_is_inert(tmp_path):
    outcome = _sd3(
        tmp_path, '--network_args "train_t5xxl=True" --text_encoder_lr 5e-5 2e-5 0 --max_grad_norm 0'
    )
    assert fate(outcome, "network_args train_t5xxl") == "inert"
    plan = plan_of(outcome, tmp_path)
    assert not plan.adapter.t5_targets
    assert _plan_rates(plan) == {"text_encoder": 5e-5, "text_encoder_2": 2e-5}


def test_unet_only_is_inert(tmp_path):
    outcome = _sd3(tmp_path, '--network_args "train_t5xxl=True" --network_train_unet_only')
    assert fate(outcome, "network_args train_t5xxl") == "inert"
    plan = plan_of(outcome, tmp_path)
    assert {c.name for c in plan.precision.components if c.trainable != "frozen"} == {"unet"}


def test_cached_text_encoder_outputs_are_refused(tmp_path):
    outcome = _sd3(tmp_path, '--network_args "train_t5xxl=True" --cache_text_encoder_outputs')
    assert "DBS402" in codes(outcome)


def test_train_t5xxl_false_is_inert(tmp_path):
    outcome = _sd3(tmp_path, '--network_args "train_t5xxl=False"')
    assert fate(outcome, "network_args train_t5xxl") == "inert"


def test_text_encoder_3_lr_without_a_third_encoder_warns_at_plan_time(tmp_path):
    """DBS399: Flux's T5-XXL is its second text encoder (text_encoder_2_lr); SDXL has no third."""
    from dbspec.frontend import plan_spec
    from tests.runtime.runspec import CPU, write_spec

    for base in ("builtin:tiny-flux", "builtin:tiny-sdxl"):
        extra = '[adapter]\nkind = "lora"\n[train]\ntext_encoder = true\n'
        extra += "t5 = true\n" if base.endswith("flux") else ""
        path = write_spec(tmp_path / base[-4:], base=base, extra=extra)
        planned = plan_spec(path, CPU, str(path), ["optimizer.text_encoder_3_lr=1e-5"])
        assert ("DBS399", "optimizer.text_encoder_3_lr") in [(d.code, d.path) for d in planned.diagnostics]
        assert planned.plan is not None and planned.plan.optimizer.text_encoder_3_lr is None


def _sd3_file_with_t5(path, *, rank: int = 8, alpha: float = 4.0):
    """A kohya lora_sd3 file (zero tensors), SD3.5 large widths: a joint block's output projection, a CLIP-L
    and two T5-XXL (lora_te3) modules."""
    import numpy as np
    from safetensors.numpy import save_file

    layers = {
        "lora_unet_joint_blocks_0_x_block_attn_proj": (2432, 2432),
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
    """lora_sd3's create_network_from_weights turns train_t5xxl on when a module name holds lora_te3; T5 at
    text_encoder_lr's third value."""
    _sd3_file_with_t5(tmp_path / "prev.safetensors")
    outcome = _sd3(
        tmp_path, "--network_weights prev.safetensors --dim_from_weights --text_encoder_lr 5e-5 2e-5 1e-5"
    )
    plan = plan_of(outcome, tmp_path)
    assert fate(outcome, "network_weights lora_te3") == "mapped"
    assert plan.adapter.t5_targets == T5 and (plan.adapter.rank, plan.adapter.alpha) == (8, 4.0)
    assert _plan_rates(plan)["text_encoder_3"] == 1e-5


def test_dim_from_weights_builds_each_text_encoder_module_at_its_rank(tmp_path):
    """lora_sd3's create_network_from_weights: each CLIP-L and T5-XXL module of the file at its rank and
    alpha ([[adapter.text_encoder_blocks]], a rank-0 block for the rest) and no CLIP-G LoRA, the file having
    no lora_te2 module (train.text_encoder_2 = false); no DBS403."""
    import re

    import numpy as np
    from convert_kit import out_path
    from safetensors.numpy import save_file

    layers = {
        "lora_unet_joint_blocks_0_x_block_attn_proj": (2432, 2432, 16, 8.0),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 8, 4.0),
        "lora_te1_text_model_encoder_layers_3_mlp_fc1": (3072, 768, 4, 1.0),
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wo": (4096, 10240, 2, 2.0),
    }
    tensors = {}
    for name, (out, width, rank, alpha) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, width), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _sd3(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    assert not {"DBS402", "DBS403"} & codes(outcome)
    plan = plan_of(outcome, tmp_path)
    trains = {c.name: c.trainable for c in plan.precision.components}
    assert [trains[f"text_encoder{s}"] for s in ("", "_2", "_3")] == ["lora", "frozen", "lora"]
    a = plan.adapter

    def rank(path: str) -> tuple[int, float]:
        block = next(b for b in a.text_encoder_blocks if re.search(b.pattern, path))
        return block.rank, block.alpha

    clip = "text_encoder.text_model.encoder.layers"
    assert rank(f"{clip}.0.self_attn.q_proj") == (8, 4.0)
    assert rank(f"{clip}.3.mlp.fc1") == (4, 1.0)
    assert rank(f"{clip}.0.self_attn.k_proj") == rank(f"{clip}.3.mlp.fc2") == (0, 1.0)
    assert rank("text_encoder_3.encoder.block.0.layer.1.DenseReluDense.wo") == (2, 2.0)
    assert rank("text_encoder_3.encoder.block.0.layer.1.DenseReluDense.wi_0") == (0, 1.0)
    assert "text_encoder_2 = false" in out_path(tmp_path).read_text()


def test_dim_from_weights_without_clip_l_modules_trains_clip_g_and_t5(tmp_path):
    """No lora_te1 module: kohya builds no CLIP-L LoRA (train.text_encoder = false), CLIP-G's and T5's at
    text_encoder_lr's second and third values (train.text_encoder_2 = true, train.t5)."""
    import numpy as np
    from safetensors.numpy import save_file

    tensors = {}
    for name, (out, width) in {
        "lora_unet_joint_blocks_0_x_block_attn_proj": (2432, 2432),
        "lora_te2_text_model_encoder_layers_0_self_attn_q_proj": (1280, 1280),
        "lora_te3_encoder_block_0_layer_1_DenseReluDense_wo": (4096, 10240),
    }.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((4, width), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, 4), np.float16)
        tensors[f"{name}.alpha"] = np.array(2.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    args = "--network_weights prev.safetensors --dim_from_weights --text_encoder_lr 5e-5 2e-5 1e-5"
    plan = plan_of(_sd3(tmp_path, args), tmp_path)
    trains = {c.name: c.trainable for c in plan.precision.components}
    assert [trains[f"text_encoder{s}"] for s in ("", "_2", "_3")] == ["frozen", "lora", "lora"]
    assert _plan_rates(plan)["text_encoder_2"] == 2e-5 and _plan_rates(plan)["text_encoder_3"] == 1e-5

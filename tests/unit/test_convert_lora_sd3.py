"""kohya's networks.lora_sd3 converted exactly (dbspec/convert/kohya/lora_sd3.py): every Linear of the joint
blocks' context and x blocks (the family registry's kohya target set), one shared down-projection per fused
q/k/v Linear (adapter.fused_projections) or, with split_qkv=True, one LoRA per part; block selection,
per-type ranks and emb_dims."""

from __future__ import annotations

import re

from convert_kit import codes, component_file, errors, fate, images, kohya, messages, plan_of  # noqa: F401

from dbspec.families import family_spec

SD35 = "stabilityai/stable-diffusion-3.5-large"


def _sd3(tmp_path, extra: str = ""):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 --network_module "
        "networks.lora_sd3 --network_dim 16 --network_alpha 8 --network_train_unet_only --optimizer_type "
        f"adamw8bit --learning_rate 1e-4 --max_train_epochs 4 --save_every_n_epochs 1 {extra}",
    )


def test_lora_sd3_is_kohyas_joint_block_linears_with_shared_downs(tmp_path):
    outcome = _sd3(tmp_path)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.rank, a.alpha) == (16, 8.0)
    assert list(a.denoiser_targets) == list(family_spec("sd3").kohya_lora_targets)
    assert {"norm1.linear", "norm1_context.linear", "attn2.to_q"} <= set(a.denoiser_targets)
    assert [f.name for f in a.fused] == ["x_block_attn_qkv", "context_block_attn_qkv", "x_block_attn2_qkv"]
    assert a.blocks == ()
    assert fate(outcome, "network_module") == "mapped"
    assert "lora_sd3" not in messages(outcome, "DBS404")


def test_split_qkv_block_indices_type_ranks_and_emb_dims(tmp_path):
    args = (
        '--network_args "split_qkv=True" "train_block_indices=0-9,20" "x_mod_dim=0" "context_attn_dim=4" '
        '"emb_dims=[8,0,0,8,0,0]"'
    )
    outcome = _sd3(tmp_path, args)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.fused == ()
    skip = a.blocks[0]
    assert skip.rank == 0
    assert [i for i in range(38) if re.search(skip.pattern, f"transformer_blocks.{i}.attn.to_q")] == [
        *range(10, 20),
        *range(21, 38),
    ]
    ctx = next(b for b in a.blocks if "add_q_proj" in b.pattern)
    assert (ctx.rank, ctx.alpha) == (4, 8.0)
    assert next(b for b in a.blocks if b.pattern.endswith(r"norm1\.linear$")).rank == 0
    assert {"context_embedder", "text_embedder.linear_1", "text_embedder.linear_2"} <= set(a.denoiser_targets)
    assert "timestep_embedder.linear_1" not in a.denoiser_targets
    assert fate(outcome, "network_args") == "mapped"


def test_the_x_embedder_is_a_lora_on_the_patch_convolution(tmp_path):
    """emb_dims' x value (was DBS403): kohya's LoRAModule on x_embedder.proj (diffusers' pos_embed.proj) at
    that rank and network_alpha, dbspec's conv_targets; its other convolutions none (SD3 has no other)."""
    outcome = _sd3(tmp_path, '--network_args "emb_dims=[0,0,4,0,0,0]"')
    assert fate(outcome, "network_args") == "mapped" and not {"DBS402", "DBS403"} & codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_targets, a.conv_rank, a.conv_alpha) == (("pos_embed.proj",), 4, 8.0)
    assert (a.rank, a.alpha, a.blocks) == (16, 8.0, ())  # the joint blocks' Linears unchanged


def test_conv_dim_sets_the_patch_convolution_before_emb_dims(tmp_path):
    """create_modules reads conv_dim / conv_alpha (default 1.0) for a Conv2d before emb_dims' value: with
    emb_dims given the patch convolution takes conv_dim, even where the x value is 0 (conv_dim 0: none);
    without emb_dims kohya builds nothing there and conv_dim is inert."""
    conv = _sd3(tmp_path / "conv", '--network_args "emb_dims=[0,0,0,0,0,0]" conv_dim=6 conv_alpha=3')
    a = plan_of(conv, tmp_path / "conv").adapter
    assert (a.conv_targets, a.conv_rank, a.conv_alpha) == (("pos_embed.proj",), 6, 3.0)
    default = _sd3(tmp_path / "default", '--network_args "emb_dims=[0,0,4,0,0,0]" conv_dim=2')
    a = plan_of(default, tmp_path / "default").adapter
    assert (a.conv_rank, a.conv_alpha) == (2, 1.0)
    off = _sd3(tmp_path / "off", '--network_args "emb_dims=[0,0,4,0,0,0]" conv_dim=0')
    assert plan_of(off, tmp_path / "off").adapter.conv_targets == ()
    alone = _sd3(tmp_path / "alone", "--network_args conv_dim=6")
    assert plan_of(alone, tmp_path / "alone").adapter.conv_targets == ()


def test_starting_from_a_kohya_sd3_file_maps_to_init_weights(tmp_path):
    """--network_weights with networks.lora_sd3: adapter.init_weights, the fused q/k/v's shared down read at
    plan time (SD3.5 large widths; alpha 8 as network_alpha)."""
    import numpy as np
    from safetensors.numpy import save_file

    width = 2432
    tensors = {}
    for name, out in (("x_block_attn_qkv", 3 * width), ("context_block_mlp_fc2", width)):
        key = f"lora_unet_joint_blocks_0_{name}"
        tensors[f"{key}.lora_down.weight"] = np.zeros((16, width), np.float16)
        tensors[f"{key}.lora_up.weight"] = np.zeros((out, 16), np.float16)
        tensors[f"{key}.alpha"] = np.array(8.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _sd3(tmp_path, "--network_weights prev.safetensors")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    assert plan_of(outcome, tmp_path).adapter.init_layers == 2


def _kohya_sd3_file(path, *, rank: int, alpha: float):
    """A LoRA file in kohya's networks/lora_sd3.py layout at SD3.5 large's width (zero tensors): joint block
    0's fused x_block attention q/k/v (one shared down) and its output projection."""
    import numpy as np
    from safetensors.numpy import save_file

    width = 2432
    tensors = {}
    for name, out in (
        ("joint_blocks_0_x_block_attn_qkv", 3 * width),
        ("joint_blocks_0_x_block_attn_proj", width),
    ):
        tensors[f"lora_unet_{name}.lora_down.weight"] = np.zeros((rank, width), np.float16)
        tensors[f"lora_unet_{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"lora_unet_{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


def test_dim_from_weights_takes_the_rank_of_the_file(tmp_path):
    """lora_sd3's create_network_from_weights: the file's rank and alpha, split_qkv off (shared downs)."""
    _kohya_sd3_file(tmp_path / "prev.safetensors", rank=24, alpha=12.0)
    outcome = _sd3(tmp_path, "--network_weights prev.safetensors --dim_from_weights")
    assert fate(outcome, "dim_from_weights") == "mapped" and fate(outcome, "network_alpha") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (24, 12.0)
    assert "x_block_attn_qkv" in [f.name for f in a.fused]


def _sd3_text(tmp_path, rates: str):
    """The fixture's command with the CLIP encoders' LoRA trained at `rates` (--text_encoder_lr values)."""
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --seed 42 --mixed_precision bf16 "
        "--network_module networks.lora_sd3 --network_dim 16 --network_alpha 8 --optimizer_type adamw8bit "
        f"--learning_rate 1e-4 --text_encoder_lr {rates} --max_train_epochs 4",
    )


def test_clip_g_trains_at_text_encoder_lrs_second_value(tmp_path):
    """lora_sd3's prepare_optimizer_params_with_multiple_te_lrs: [CLIP-L, CLIP-G, T5-XXL] rates, two values
    giving CLIP-G (and T5) the second; a rate of 0 leaves CLIP-G out of the optimizer (exact without a clip:
    test_convert_kohya_idle_text.py)."""
    plan = plan_of(_sd3_text(tmp_path / "two", "5e-5 2e-5"), tmp_path / "two")
    assert (plan.optimizer.text_encoder_lr, plan.optimizer.text_encoder_2_lr) == (5e-5, 2e-5)
    one = plan_of(_sd3_text(tmp_path / "one", "5e-5"), tmp_path / "one")
    assert (one.optimizer.text_encoder_lr, one.optimizer.text_encoder_2_lr) == (5e-5, None)
    off = plan_of(_sd3_text(tmp_path / "off", "5e-5 0 --max_grad_norm 0"), tmp_path / "off")
    trained = {c.name: c.trainable for c in off.precision.components}
    assert trained["text_encoder"] == "lora" and trained["text_encoder_2"] == "frozen"

"""LyCORIS's lycoris.kohya with sd3_train_network.py (dbspec/convert/kohya/lycoris_sd3.py, mapped by
lycoris_flux.py): what lycoris-lora 4.1.3 builds on kohya's MMDiT per preset (full-lin / attn-mlp /
unet-transformer-only: networks.lora_sd3's joint-block Linears and the timestep embedder's two; attn-only:
no MMDiT module, CLIP-L's and CLIP-G's attention; full / unet-only add LoCon on the patch convolution),
algo=lora / locon with shared down-projections, lokr / loha one update per fused q/k/v."""

from __future__ import annotations

import pytest
from convert_kit import codes, component_file, errors, fate, images, kohya, messages, out_path, plan_of  # noqa: F401

from dbspec.families import family_spec

SD35 = "stabilityai/stable-diffusion-3.5-large"
CLIP = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
TARGETS = [*family_spec("sd3").kohya_lora_targets, "timestep_embedder.linear_1", "timestep_embedder.linear_2"]
FUSED = ["x_block_attn_qkv", "context_block_attn_qkv", "x_block_attn2_qkv"]


def _sd3(tmp_path, extra: str = ""):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "clip_g.safetensors", "t5xxl_fp16.safetensors"):
        component_file(tmp_path / "sd3" / name)
    return kohya(
        tmp_path,
        command=f"accelerate launch sd3_train_network.py --pretrained_model_name_or_path {SD35} "
        "--clip_l sd3/clip_l.safetensors --clip_g sd3/clip_g.safetensors --t5xxl sd3/t5xxl_fp16.safetensors "
        "--train_data_dir x --resolution 512 --save_model_as safetensors --sdpa --seed 42 "
        "--gradient_checkpointing --mixed_precision bf16 --save_precision bf16 "
        "--network_module lycoris.kohya --network_dim 16 --network_alpha 8 --optimizer_type adamw8bit "
        "--learning_rate 1e-4 "
        f"--max_train_epochs 4 --save_every_n_epochs 1 {extra}",
    )


def test_locon_full_lin_is_lora_sd3s_fused_network_and_the_timestep_embedder(tmp_path):
    outcome = _sd3(tmp_path, "--text_encoder_lr 5e-5 1e-5 --network_args algo=locon preset=full-lin")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 16, 8.0)
    assert list(a.denoiser_targets) == TARGETS
    assert a.blocks == ()
    assert [f.name for f in a.fused] == FUSED
    assert list(a.text_encoder_targets) == CLIP and list(a.text_encoder_2_targets) == CLIP  # CLIP-L, CLIP-G
    assert plan.train_text_encoder and not a.t5_targets
    # LyCORIS's prepare_optimizer_params: both CLIP encoders at text_encoder_lr's first value
    assert plan.optimizer.text_encoder_lr == 5e-5 and plan.optimizer.text_encoder_2_lr is None
    assert fate(outcome, "network_module") == "mapped"
    assert "DBS403" not in codes(outcome)


def test_lokr_and_loha_are_one_update_per_fused_qkv(tmp_path):
    outcome = _sd3(tmp_path, "--network_train_unet_only --network_args algo=lokr preset=attn-mlp factor=8")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.factor) == ("lokr", 16, 8.0, 8)
    assert list(a.denoiser_targets) == TARGETS and a.blocks == ()
    assert [f.name for f in a.fused] == FUSED
    outcome = _sd3(
        tmp_path, "--network_train_unet_only --network_args algo=loha preset=unet-transformer-only"
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("loha", 16, 8.0)
    assert [f.name for f in a.fused] == FUSED


def test_unet_transformer_only_has_no_text_encoder_module(tmp_path):
    outcome = _sd3(tmp_path, "--network_args algo=locon preset=unet-transformer-only")
    assert "text_encoder = false" in out_path(tmp_path).read_text()
    assert not plan_of(outcome, tmp_path).train_text_encoder


def test_attn_only_is_the_clip_attention_alone(tmp_path):
    outcome = _sd3(tmp_path, "--network_args algo=locon preset=attn-only")
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and plan.train_text_encoder
    assert list(plan.adapter.text_encoder_targets) == CLIP[:4]
    assert list(plan.adapter.text_encoder_2_targets) == CLIP[:4]


@pytest.mark.parametrize("algo", ["glora", "diag-oft", "boft", "dylora", "lokr", "loha", "ia3", "full"])
def test_attn_only_of_every_algo_plans_with_its_kohya_export(tmp_path, algo):
    """attn-only trains CLIP-L's and CLIP-G's attention alone (no fused MMDiT layer): each kind's kohya_lora
    export is LyCORIS's modules on them under lora_te1_ / lora_te2_ (lycoris-lora loads it:
    tests/runtime/test_lycoris_sd3_attn_only.py), so the converted spec plans with save_model_as's export."""
    outcome = _sd3(tmp_path, f"--network_args algo={algo} preset=attn-only")
    plan = plan_of(outcome, tmp_path)
    assert not plan.train_denoiser and plan.train_text_encoder
    assert list(plan.adapter.text_encoder_targets) == CLIP[:4]
    assert list(plan.adapter.text_encoder_2_targets) == CLIP[:4] and not plan.adapter.t5_targets
    assert plan.checkpoints.exports == ("kohya_lora",) and "DBS403" not in codes(outcome)


def test_attn_only_with_unet_only_trains_nothing(tmp_path):
    outcome = _sd3(tmp_path, "--network_train_unet_only --network_args preset=attn-only")
    assert errors(outcome)


def test_full_adds_locon_on_the_patch_convolution(tmp_path):
    """The default preset's PatchEmbed (x_embedder.proj, a 2x2 stride-2 convolution) at conv_dim / conv_alpha,
    which default to network_dim / network_alpha."""
    a = plan_of(_sd3(tmp_path, "--network_args algo=locon conv_dim=4"), tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("lora", 16, 8.0, 4, 8.0)
    assert list(a.conv_targets) == ["pos_embed.proj"] and list(a.denoiser_targets) == TARGETS
    assert list(a.text_encoder_targets) == CLIP
    outcome = _sd3(tmp_path, "--network_args preset=unet-only")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.conv_rank, a.conv_alpha, list(a.conv_targets)) == (16, 8.0, ["pos_embed.proj"])
    assert not plan_of(outcome, tmp_path).train_text_encoder


def test_loha_bypass_dropout_and_dora_with_dropouts_convert_as_on_flux(tmp_path):
    """The fused q/k/v of SD3 take LohaModule's bypass dropout (output_dropout) and dora_wd with the
    dropouts as Flux's fused layers do; bypass_mode with dora_wd is LyCORIS's defect (DBS402)."""
    unet = "--network_train_unet_only --network_args algo=loha preset=attn-mlp module_dropout=0.1 "
    a = plan_of(_sd3(tmp_path, unet + "bypass_mode=True dropout=0.2"), tmp_path).adapter
    assert (a.kind, a.output_dropout, a.module_dropout, a.dora) == ("loha", 0.2, 0.1, False)
    a = plan_of(_sd3(tmp_path, unet + "rank_dropout=0.1 dora_wd=True"), tmp_path).adapter
    assert (a.output_dropout, a.rank_dropout, a.dora) == (0.0, 0.1, True) and [
        f.name for f in a.fused
    ] == FUSED
    assert "DBS402" in codes(_sd3(tmp_path, unet + "bypass_mode=True dora_wd=True"))


def test_lokr_and_loha_on_the_patch_convolution(tmp_path):
    """LokrModule / LohaModule on the patch convolution (x_embedder.proj) at conv_dim / conv_alpha: peft's
    LoKr / LoHa on it (tests/runtime/test_lycoris_sd3.py checks its export against lycoris-lora)."""
    for algo in ("lokr", "loha"):
        outcome = _sd3(tmp_path, f"--network_args algo={algo} preset=unet-only conv_dim=3 conv_alpha=2")
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert (a.kind, a.conv_rank, a.conv_alpha, a.conv_targets) == (algo, 3, 2.0, ("pos_embed.proj",))


@pytest.mark.parametrize("args", ["use_tucker=True", "algo=locon preset=unet-only conv_dim=3 use_cp=True"])
def test_locon_tucker_form_on_the_patch_convolution(tmp_path, args):
    """LoConModule's use_tucker on the 2x2 patch convolution (presets full, unet-only): its 1x1 `lora_down`,
    2x2 stride-2 `lora_mid` and 1x1 `lora_up` are runtime/locon_tucker.py's layer, tucker = true on the
    fused LoCon, the lora_sd3 writer adding `lora_mid` (tests/runtime/test_lycoris_sd3_patch.py: it starts,
    trains and exports as lycoris-lora's LoConModule with use_tucker)."""
    outcome = _sd3(tmp_path, f"--network_args {args}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, f"network_args {args.split()[-1].split('=')[0]}") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.tucker, a.conv_targets) == ("lora", True, ("pos_embed.proj",))
    assert a.conv_rank == (3 if "conv_dim" in args else 16) and [f.name for f in a.fused] == FUSED
    # without the patch convolution no layer takes the form: still the adapter's (a no-op on Linears)
    assert "DBS403" not in codes(_sd3(tmp_path, "--network_args algo=lokr preset=full-lin use_tucker=True"))


@pytest.mark.parametrize(
    "args", ["algo=lokr conv_dim=1 conv_alpha=1 use_tucker=True", "algo=loha preset=unet-only use_cp=True"]
)
def test_lokr_and_loha_tucker_form_on_the_patch_convolution(tmp_path, args):
    """LokrModule's / LohaModule's use_tucker on the 2x2 patch convolution (`lokr_t2`, `hada_t1` /
    `hada_t2`): peft's use_effective_conv2d, tucker = true (tests/runtime/test_lycoris_sd3.py loads its
    export in lycoris-lora's module built with use_tucker)."""
    outcome = _sd3(tmp_path, f"--network_args {args}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, f"network_args {args.split()[-1].split('=')[0]}") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert a.tucker and a.conv_targets == ("pos_embed.proj",) and a.kind == args.split()[0][5:]


def test_diag_oft_full_is_one_block_split_per_fused_qkv_and_the_patch_convolution(tmp_path):
    outcome = _sd3(tmp_path, "--network_train_unet_only --network_args algo=diag-oft preset=full")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint) == ("diag-oft", 16, 0.0)
    assert list(a.denoiser_targets) == TARGETS and [f.name for f in a.fused] == FUSED
    assert list(a.conv_targets) == ["pos_embed.proj"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    _patch_at_conv_dim(tmp_path / "conv", "diag-oft")
    # --scale_weight_norms (was DBS403): DiagOFTModule.apply_max_norm, one norm per fused qkv over its parts'
    # blocks, the patch convolution's module its own (runtime/max_norm.py)
    args = "--network_train_unet_only --scale_weight_norms 2 --network_args algo=diag-oft preset=full"
    outcome = _sd3(tmp_path, args)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.max_norm, a.max_norm_form, [f.name for f in a.fused]) == (2.0, "lycoris", FUSED)


def _patch_at_conv_dim(tmp_path, algo: str) -> None:
    """conv_dim other than network_dim (was DBS403): LyCORIS's create_single_module gives the 2x2 patch
    convolution conv_dim as its block-size hint, the Linears network_dim: a block over pos_embed.proj at 8;
    conv_dim 0 builds no module there (no conv target)."""
    outcome = _sd3(tmp_path, f"--network_train_unet_only --network_args algo={algo} preset=full conv_dim=8")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_block_size == 16 and list(a.conv_targets) == ["pos_embed.proj"]
    assert [(b.pattern, b.rank) for b in a.blocks] == [(r"^(?:pos_embed\.proj)$", 8)]
    none = _sd3(tmp_path, f"--network_train_unet_only --network_args algo={algo} preset=full conv_dim=0")
    assert not {"DBS402", "DBS403"} & codes(none), errors(none)
    a = plan_of(none, tmp_path).adapter
    assert list(a.conv_targets) == [] and a.blocks == ()


def test_glora_full_is_one_module_per_fused_qkv_and_the_patch_convolution(tmp_path):
    outcome = _sd3(tmp_path, "--network_train_unet_only --network_args algo=glora preset=full conv_dim=4")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank, a.conv_alpha) == ("glora", 16, 8.0, 4, 8.0)
    assert list(a.denoiser_targets) == TARGETS and [f.name for f in a.fused] == FUSED
    assert list(a.conv_targets) == ["pos_embed.proj"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_presets_without_modules_and_other_algos_and_t5(tmp_path):
    assert errors(_sd3(tmp_path, "--network_args preset=unet-convblock-only"))


def test_boft_full_is_one_butterfly_module_per_fused_qkv_and_the_patch_convolution(tmp_path):
    """algo=boft: ButterflyOFTModule on the preset's Linears and the patch convolution, one per fused qkv
    (its blocks shared by q, k, v: runtime/lycoris_boft.py); network_dim its block-size hint, conv_dim
    the patch convolution's (_patch_at_conv_dim)."""
    outcome = _sd3(
        tmp_path,
        "--network_train_unet_only --network_args algo=boft preset=full rescaled=True constraint=1e-4",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled) == ("boft", 16, 1e-4, True)
    assert list(a.denoiser_targets) == TARGETS and [f.name for f in a.fused] == FUSED
    assert list(a.conv_targets) == ["pos_embed.proj"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    _patch_at_conv_dim(tmp_path / "conv", "boft")


def test_switches_as_lycoris_builds_them_on_the_mmdit(tmp_path):
    # train_t5xxl: no T5 module (lora_te3), inert; rescaled: OFT's only; train_norm: NormModule on each
    # SingleDiTBlock's affine-less norm1 / norm2 fails at the first forward (lycoris-lora 4.1.3 on kohya's
    # sd3_models.MMDiTBlock: AttributeError), and attn-only builds no MMDiT module (inert)
    outcome = _sd3(tmp_path, "--network_args preset=full-lin train_t5xxl=True rescaled=True")
    assert not plan_of(outcome, tmp_path).adapter.t5_targets
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    outcome = _sd3(tmp_path, "--network_args preset=full-lin train_norm=True")
    assert "AttributeError" in messages(outcome, "DBS402")
    outcome = _sd3(tmp_path, "--network_args preset=attn-only train_norm=True")
    assert fate(outcome, "network_args train_norm") == "inert" and not errors(outcome)
    # a preset file reaching both CLIP encoders' LayerNorms (CLIPEncoderLayer): their offsets, CLIP-L's and
    # CLIP-G's alike (issue 12)
    (tmp_path / "p.toml").write_text(
        'unet_target_module = []\nunet_target_name = []\ntext_encoder_target_module = ["CLIPEncoderLayer"]\n'
    )
    outcome = _sd3(tmp_path, "--network_args preset=p.toml train_norm=True")
    a = plan_of(outcome, tmp_path).adapter
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and not errors(outcome)
    # CLIP-G's layer 20 alone (CLIP-L has 12 layers): CLIP-G's own list, CLIP-L none (was DBS403)
    (tmp_path / "p.toml").write_text(
        "unet_target_module = []\nunet_target_name = []\ntext_encoder_target_module = []\n"
        "text_encoder_target_name = ['text_model\\.encoder\\.layers\\.20\\.layer_norm2']\n"
    )
    outcome = _sd3(tmp_path, "--network_args preset=p.toml train_norm=True")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert (a.text_encoder_norms, a.text_encoder_2_norms) == ((), ("layers.20.layer_norm2",))
    trainable = {c.name: c.trainable for c in plan.precision.components}
    assert (trainable["text_encoder"], trainable["text_encoder_2"]) == ("frozen", "lora") and not errors(
        outcome
    )


def test_locon_bypass_dropouts_are_drawn_per_fused_qkv(tmp_path):
    # LoConModule's bypass forward on each fused q/k/v: one rank mask, then torch's dropout on the update
    outcome = _sd3(tmp_path, "--network_args preset=full-lin bypass_mode=True rank_dropout=0.1 dropout=0.05")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank_dropout, a.rank_dropout_form, a.output_dropout) == (0.1, "lycoris_bypass", 0.05)
    assert [f.name for f in a.fused] == FUSED and "DBS403" not in codes(outcome) and not errors(outcome)


def test_locon_rs_lora_and_use_scalar_convert_as_on_flux(tmp_path):
    # LoConModule on a fused q/k/v: rs_lora scales by alpha / sqrt(rank) (alpha 8 x sqrt(16) = 32 at rank
    # 16), use_scalar one trained scalar per fused Linear, as on Flux (lycoris_flux.py)
    outcome = _sd3(tmp_path, "--network_args algo=locon preset=full-lin rs_lora=True use_scalar=True")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.scalar) == ("lora", 16, 32.0, True)
    assert [f.name for f in a.fused] == FUSED
    assert "DBS403" not in codes(outcome)


def _lycoris_sd3_file(path, algo: str):
    """A file as lycoris.kohya saves it on kohya's SD3.5-large MMDiT (zero tensors, width 2432): a module per
    fused q/k/v Linear and per plain one (the last block's context modulation too), CLIP-L's under lora_te1_;
    a LoCon's lora_down / lora_up / alpha (rank 16, alpha 8), a LoKr's / LoHa's factors."""
    import numpy as np
    from safetensors.numpy import save_file

    width = 2432
    layers = {
        "lora_unet_joint_blocks_0_x_block_attn_qkv": (3 * width, width),
        "lora_unet_joint_blocks_0_context_block_attn_qkv": (3 * width, width),
        "lora_unet_joint_blocks_37_context_block_adaLN_modulation_1": (2 * width, width),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }
    shapes = {
        "locon": lambda out, inp: {"lora_down.weight": (16, inp), "lora_up.weight": (out, 16)},
        "lokr": lambda out, inp: {"lokr_w1": (2, 2), "lokr_w2_a": (2, 2), "lokr_w2_b": (2, 2)},
        "loha": lambda out, inp: {"hada_w1_a": (out, 16), "hada_w1_b": (16, inp)},
        "full": lambda out, inp: {"diff": (out, inp), "diff_b": (out,)},  # FullModule's: no alpha
        "ia3": lambda out, inp: {"weight": (out,), "on_input": ()},  # IA3Module's
    }[algo]
    tensors = {}
    for name, (out, inp) in layers.items():
        tensors |= {f"{name}.{k}": np.zeros(shape, np.float16) for k, shape in shapes(out, inp).items()}
        if algo not in ("full", "ia3"):
            tensors[f"{name}.alpha"] = np.array(8.0, np.float32)
    save_file(tensors, str(path))


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha", "full", "ia3"])
def test_network_weights_start_the_fused_network(tmp_path, algo):
    """train_network.py: apply_to, then LyCORIS's load_weights (load_state_dict(strict=False)) of the file
    on kohya's SD3 names: adapter.init_weights with init_partial (a LoCon's file in lora_sd3's layout,
    runtime/flow_init.py; a LoKr's / LoHa's into the fused factors, runtime/lycoris_init.py; full's diff /
    diff_b and IA3's scales cut into the parts' rows, runtime/lycoris_whole_init.py)."""
    _lycoris_sd3_file(tmp_path / "prev.safetensors", algo)
    outcome = _sd3(tmp_path, f"--network_weights prev.safetensors --network_args algo={algo} preset=full-lin")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    kind = "lora" if algo == "locon" else algo
    assert (a.kind, a.init_weights, a.init_partial, a.init_layers) == (
        kind,
        str(tmp_path / "prev.safetensors"),
        True,
        4,
    )
    assert [f.name for f in a.fused] == ([] if algo in ("full", "ia3") else FUSED)


def test_scale_weight_norms_of_a_locon_is_lycoris_max_norm(tmp_path):
    """LyCORIS's apply_max_norm_regularization on the LoConModules: one norm and scalar per fused Linear (as
    on Flux); a LoKr's too (one norm of its whole fused update)."""
    outcome = _sd3(tmp_path, "--network_args algo=locon preset=full-lin --scale_weight_norms 1.0")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == ("lora", 1.0, "lycoris")
    assert [f.name for f in a.fused] == FUSED
    assert fate(outcome, "scale_weight_norms") == "mapped" and "DBS403" not in codes(outcome)
    lokr = _sd3(tmp_path, "--network_args algo=lokr preset=full-lin --scale_weight_norms 1")
    assert plan_of(lokr, tmp_path).adapter.max_norm == 1.0 and "DBS403" not in codes(lokr)


def test_dora_wd_is_lycoris_weight_decomposition_per_output_row_as_on_flux(tmp_path):
    """LoConModule's dora_wd on each fused q/k/v: one magnitude per output row, adapter.dora in LyCORIS's
    form, its kohya_lora export the lora_sd3 layout with the parts' dora_scale stacked (runtime/sd3_kohya.py,
    no DBS381); a LoKr's as on Flux (its export stacks the parts' dora_scale too)."""
    extra = "--scale_weight_norms 1 --network_args algo=locon preset=full-lin dora_wd=True use_scalar=True"
    outcome = _sd3(tmp_path, extra)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.checkpoints.exports == ("kohya_lora",)
    assert (a.dora, a.dora_form, a.dora_axis, a.scalar) == (True, "lycoris", "output", True)
    assert (a.max_norm, a.max_norm_form) == (1.0, "lycoris")
    assert [f.name for f in a.fused] == FUSED
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    lokr = _sd3(tmp_path, "--network_args algo=lokr preset=full-lin dora_wd=True")
    assert plan_of(lokr, tmp_path).adapter.dora and "DBS403" not in codes(lokr) and not errors(lokr)
    # with LoConModule's dropouts (was DBS403): one draw per fused q/k/v, the masked update decomposed
    drop = "--network_args algo=locon preset=full-lin dora_wd=True module_dropout=0.1 rank_dropout=0.2"
    outcome = _sd3(tmp_path / "drop", drop)
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    assert (a.dora, a.module_dropout, a.rank_dropout, a.rank_dropout_form) == (True, 0.1, 0.2, "lycoris")
    # per input column too (was DBS403): the parts' one (1, in) magnitude, the norm over every part's
    # masked rows
    outcome = _sd3(tmp_path / "columns", drop + " wd_on_output=False")
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "columns").adapter
    assert (a.dora, a.dora_axis, a.module_dropout, a.rank_dropout) == (True, "input", 0.1, 0.2) and a.fused


def test_full_is_a_trained_copy_per_part_and_of_the_patch_convolution(tmp_path):
    outcome = _sd3(tmp_path, "--text_encoder_lr 5e-5 1e-5 --network_args algo=full preset=full-lin")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "full" and list(a.denoiser_targets) == TARGETS and not a.fused
    assert list(a.text_encoder_targets) == CLIP and list(a.text_encoder_2_targets) == CLIP
    # LyCORIS's prepare_optimizer_params: both CLIP encoders at text_encoder_lr's first value
    assert plan.optimizer.text_encoder_lr == 5e-5 and plan.optimizer.text_encoder_2_lr is None
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    # preset full: FullModule on the patch convolution too, a full copy of it (lycoris_full.FullLayer;
    # tests/runtime/test_lycoris_sd3_patch_file.py trains and exports one)
    outcome = _sd3(tmp_path / "full", "--network_args algo=full conv_dim=4")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "full").adapter
    assert a.kind == "full" and a.conv_targets == ("pos_embed.proj",)
    assert fate(outcome, "network_args conv_dim") == "inert"
    # conv_dim=0: create_network's int("0") builds no convolution module (lycoris-lora 4.1.3, scratch run)
    outcome = _sd3(tmp_path / "no_conv", "--network_args algo=full conv_dim=0")
    assert plan_of(outcome, tmp_path / "no_conv").adapter.conv_targets == ()
    # module_dropout / rank_dropout (was DBS403): FullModule's draws, one per fused q/k/v for its parts
    outcome = _sd3(
        tmp_path / "drop", "--network_args algo=full preset=full-lin module_dropout=0.2 rank_dropout=0.3"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    assert (a.module_dropout, a.rank_dropout) == (0.2, 0.3) and [f.name for f in a.fused] == FUSED


def test_ia3_full_scales_the_joint_blocks_the_timestep_embedder_and_the_patch_convolution(tmp_path):
    """algo=ia3 preset=full: IA3Module (one scale per output row) on every Linear LoCon adapts, and on the
    patch convolution (enable_conv; conv_dim only switches it on); CLIP-L's and CLIP-G's attention + MLP."""
    outcome = _sd3(tmp_path, "--network_args algo=ia3 preset=full conv_dim=4")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "ia3" and list(a.denoiser_targets) == TARGETS
    assert list(a.conv_targets) == list(family_spec("sd3").kohya_conv_targets) and not a.input_targets
    assert list(a.text_encoder_targets) == CLIP and list(a.text_encoder_2_targets) == CLIP
    assert fate(outcome, "network_module") == "mapped"
    assert "DBS403" not in codes(outcome)
    # train_on_input in network_args: create_network never hands it to IA3Module (output rows, DBS405)
    outcome = _sd3(tmp_path, "--network_args algo=ia3 preset=attn-mlp train_on_input=True")
    assert "DBS403" not in codes(outcome) and not plan_of(outcome, tmp_path).adapter.input_targets
    assert "module_algo_map" in messages(outcome, "DBS405")
    # module_dropout (was DBS403): IA3Module's one draw per fused q/k/v, its parts sharing it
    outcome = _sd3(tmp_path, "--network_args algo=ia3 preset=full module_dropout=0.25")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.module_dropout == 0.25 and a.fused and all(len(f.parts) == 3 for f in a.fused)
    # bypass_mode (was DBS403 / DBS594): IA3Module's bypass forward, each part scaling its own output rows
    outcome = _sd3(tmp_path, "--network_args algo=ia3 preset=full bypass_mode=True")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.bypass


@pytest.mark.parametrize("algo", ["locon", "lokr"])
def test_network_weights_with_use_scalar_start_the_fused_network(tmp_path, algo):
    """use_scalar with --network_weights (was DBS403): the file's factors hold each module's scalar folded
    in, and every scalar (a fused q/k/v's one, its parts' tied) is 1 after the file loads, as LyCORIS's load
    hook sets it (runtime/init_weights.py; tests/runtime/test_lycoris_flow_start_file.py)."""
    _lycoris_sd3_file(tmp_path / "prev.safetensors", algo)
    extra = f"--network_weights prev.safetensors --network_args algo={algo} preset=full-lin use_scalar=True"
    outcome = _sd3(tmp_path, extra)
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.scalar and a.init_partial and a.init_layers == 4 and [f.name for f in a.fused] == FUSED


@pytest.mark.parametrize("algo", ["full", "ia3", "glora"])
def test_max_norm_of_full_ia3_glora_is_inert(tmp_path, algo):
    """Their modules keep LyCORIS's base apply_max_norm, which scales nothing (was DBS403). (A GLoRA spec's
    plan is not built here: its default kohya_lora export is SD3 LoRA-only, DBS381, whatever the max norm.)"""
    outcome = _sd3(tmp_path, f"--network_args algo={algo} preset=attn-only --scale_weight_norms 1")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert ("adapter", "max_norm") not in outcome.conversion.values
    if algo != "glora":
        assert plan_of(outcome, tmp_path).adapter.max_norm == 0.0

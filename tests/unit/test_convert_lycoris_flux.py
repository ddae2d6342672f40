"""LyCORIS's lycoris.kohya with flux_train_network.py (dbspec/convert/kohya/lycoris_flux.py): algo=lora /
locon is networks.lora_flux's fused network over the LyCORIS preset's layers (lycoris-lora 4.1.3 on kohya's
Flux: full = every double/single-block Linear and CLIP-L's attention + MLP; attn-only = the double blocks'
SelfAttention and CLIP-L's attention); algo=lokr / loha one Kronecker / Hadamard update per fused layer
(their fused_projections); LoCon's rank dropout is LyCORIS's row mask over the fused layer; algo=ia3 one
scale per output row (a fused layer's rows its parts'); algo=diag-oft one block split per fused layer;
algo=glora one GLoRA per fused layer (a1, a2, b2 shared, b1 the parts' rows), algo=dylora one DyLoRA (the
down and the draw shared); LoKr / LoHa dora_wd, use_scalar, --scale_weight_norms and dropouts LyCORIS's on
the fused layer; rescaled (outside OFT), train_t5xxl and train_norm with attn-only change nothing, train_norm
on the blocks' LayerNorms is LyCORIS's AttributeError; the other algos and switches stay DBS403."""

from __future__ import annotations

import pytest
from convert_kit import (  # noqa: F401
    codes,
    component_file,
    errors,
    fate,
    images,
    kohya,
    messages,
    out_path,
    plan_of,
)

from dbspec.families import family_spec

FLUX = "black-forest-labs/FLUX.1-dev"
BASE = (
    f"accelerate launch --mixed_precision bf16 flux_train_network.py --pretrained_model_name_or_path {FLUX} "
    "--clip_l clip_l.safetensors --t5xxl t5xxl_fp16.safetensors --ae ae.safetensors --train_data_dir x "
    "--resolution 512 --cache_latents_to_disk --save_model_as safetensors --sdpa --seed 42 "
    "--mixed_precision bf16 --save_precision bf16 --network_module lycoris.kohya --network_dim 8 "
    "--network_alpha 4 --optimizer_type adamw --learning_rate 1e-4 --max_train_steps 100 "
    "--timestep_sampling shift --discrete_flow_shift 3.1582 --model_prediction_type raw --guidance_scale 1.0"
)


def _flux(tmp_path, extra: str = "", *, allow: bool = False):
    images(tmp_path / "x" / "10_ohwx dog", 4, (512, 512))
    for name in ("clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    return kohya(tmp_path, allow=allow, command=f"{BASE} {extra}")


def test_locon_full_preset_is_lora_flux_fused_network(tmp_path):
    outcome = _flux(tmp_path, "--network_train_unet_only --network_args algo=locon conv_dim=4")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 8, 4.0)
    assert list(a.denoiser_targets) == list(family_spec("flux").kohya_lora_targets)
    assert [(b.pattern, b.rank) for b in a.blocks] == [("^proj_out$", 0)]
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_module") == "mapped"
    assert "DBS403" not in codes(outcome)


def test_default_trains_clip_l_attention_and_mlp_not_t5(tmp_path):
    outcome = _flux(tmp_path)
    plan = plan_of(outcome, tmp_path)
    assert list(plan.adapter.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert not getattr(plan.adapter, "t5_targets", ())


def test_attn_only_is_the_double_blocks_attention(tmp_path):
    outcome = _flux(tmp_path, "--network_args preset=attn-only")
    a = plan_of(outcome, tmp_path).adapter
    assert "proj_mlp" not in a.denoiser_targets and "attn.to_q" in a.denoiser_targets
    assert ("^single_transformer_blocks\\.", 0) in [(b.pattern, b.rank) for b in a.blocks]
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj"]


def test_unet_only_preset_has_no_text_encoder_module(tmp_path):
    outcome = _flux(tmp_path, "--network_args preset=unet-only")
    assert "text_encoder = false" in out_path(tmp_path).read_text()
    assert "DBS403" not in codes(outcome)


def test_loha_is_one_hadamard_update_per_fused_layer(tmp_path):
    outcome = _flux(tmp_path, "--network_train_unet_only --network_args algo=loha factor=4")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("loha", 8, 4.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert "DBS403" not in codes(outcome) and "LoKr only" in messages(outcome, "DBS405")


def test_diag_oft_is_one_block_split_per_fused_layer(tmp_path):
    """algo=diag-oft: DiagOFTModule on every block Linear (LoKr's full paths: the final layer out), its
    lora_dim network_dim (block size 8 on FLUX.1's 9216 / 21504-row fused layers: each block one part's
    rows), the fused layers' parts in one block split; alpha and DiagOFT's unread switches inert / ignored."""
    outcome = _flux(
        tmp_path,
        "--network_dropout 0.1 --network_args algo=diag-oft preset=full use_scalar=True constraint=0",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_form) == ("diag-oft", 8, 0.0, "lycoris")
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert (
        "proj_out" not in a.denoiser_targets and "single_transformer_blocks.37.proj_out" in a.denoiser_targets
    )
    assert "attn.to_q" in a.denoiser_targets and "proj_mlp" in a.denoiser_targets
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert fate(outcome, "network_module") == "mapped" and fate(outcome, "network_alpha") == "inert"
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    assert "only in bypass_mode" in messages(outcome, "DBS405")


def test_diag_oft_bypass_and_rescaled_map_and_its_dropout_is_invalid(tmp_path):
    a = plan_of(_flux(tmp_path, "--network_args algo=diag-oft bypass_mode=True"), tmp_path).adapter
    assert a.bypass and a.fused and not a.oft_rescaled
    # rescaled: DiagOFTModule's learned scale per output row (each part its rows of the fused layer)
    outcome = _flux(tmp_path, "--network_args algo=diag-oft rescaled=True")
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_rescaled and a.fused and fate(outcome, "network_args rescaled") == "mapped"
    outcome = _flux(tmp_path, "--network_args algo=diag-oft bypass_mode=True dropout=0.1", allow=True)
    assert "DBS402" in codes(outcome)


def test_diag_oft_dropouts_are_one_draw_per_fused_module(tmp_path):
    """module_dropout and rank_dropout (was DBS403): DiagOFTModule's skip draw and rotation mask, once per
    fused Linear, its parts sharing them (tests/runtime/test_lycoris_flux_oft.py); its bypass forward never
    reads rank_dropout (DBS405)."""
    outcome = _flux(tmp_path, "--network_args algo=diag-oft module_dropout=0.2 rank_dropout=0.1")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout, len(a.fused)) == ("diag-oft", 0.2, 0.1, 3)
    assert fate(outcome, "network_args rank_dropout") == "mapped"
    outcome = _flux(tmp_path, "--network_args algo=diag-oft bypass_mode=True rank_dropout=0.1")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.bypass, a.rank_dropout) == (True, 0.0) and fate(outcome, "network_args rank_dropout") == "inert"
    assert "default forward only" in messages(outcome, "DBS405")


def test_diag_oft_constraint_maps(tmp_path):
    """constraint (was DBS403): DiagOFTModule's one norm over each fused Linear's blocks, which the parts
    share (runtime/lycoris_oft.py link_fused_oft; tests/runtime/test_lycoris_flux_oft.py)."""
    outcome = _flux(tmp_path, "--network_args algo=diag-oft constraint=1e-3")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.oft_constraint == 1e-3 and a.fused
    assert fate(outcome, "network_args constraint") == "mapped"


@pytest.mark.parametrize(
    "args", ["", " constraint=1e-3 rescaled=True", " bypass_mode=True", " network_dim=9"]
)
def test_diag_oft_max_norm_maps_to_lycoris_form(tmp_path, args):
    """--scale_weight_norms of algo=diag-oft (was DBS403): DiagOFTModule.apply_max_norm on each fused
    Linear's module, the norm over every part's blocks stacked (runtime/max_norm.py;
    tests/runtime/test_lycoris_flux_oft.py); at network_dim 9 the blocks span FLUX.1's parts (shared)."""
    dim = " --network_dim 9" if "network_dim" in args else ""
    extra = args.replace(" network_dim=9", "")
    outcome = _flux(tmp_path, f"--scale_weight_norms 1.5{dim} --network_args algo=diag-oft{extra}")
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form, len(a.fused)) == ("diag-oft", 1.5, "lycoris", 3)
    assert a.oft_block_size == (9 if dim else 8) and a.bypass == ("bypass" in args)
    assert "max_norm = 1.5" in out_path(tmp_path).read_text()


@pytest.mark.parametrize("algo", ["full", "ia3", "glora"])
def test_max_norm_of_modules_that_scale_nothing_is_inert(tmp_path, algo):
    """FullModule, IA3Module and GLoRAModule keep LyCORIS's base apply_max_norm (lycoris-lora 4.1.3
    modules/base.py: `return None, None`), which apply_max_norm_regularization skips (0, 0, 0 logged): inert
    on the fused Linears too (was DBS403)."""
    outcome = _flux(tmp_path, f"--scale_weight_norms 1.5 --network_args algo={algo}")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm) == (algo, 0.0)


def test_max_norm_of_a_glora_file_is_inert(tmp_path):
    """--dim_from_weights with a GLoRA file: GLoRAModules rebuilt from it scale nothing either (was DBS403);
    a Diag-OFT file's modules scale their blocks: LyCORIS's form (was DBS403)."""
    _whole_flux_file(tmp_path / "prev.safetensors", "glora")
    extra = "--network_weights prev.safetensors --dim_from_weights --scale_weight_norms 1"
    extra += " --network_train_unet_only"
    outcome = _flux(tmp_path, extra)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert plan_of(outcome, tmp_path).adapter.kind == "glora"
    (tmp_path / "oft").mkdir()
    _whole_flux_file(tmp_path / "oft" / "prev.safetensors", "diag-oft")
    outcome = _flux(tmp_path / "oft", extra)
    assert not {"DBS402", "DBS403", "DBS577"} & codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "mapped"
    a = plan_of(outcome, tmp_path / "oft").adapter
    assert (a.kind, a.max_norm, a.max_norm_form, a.oft_block_size) == ("diag-oft", 1.0, "lycoris", 96)


def _whole_flux_file(path, algo: str) -> None:
    """A Diag-OFT (network_dim 4: blocks of 96 rows on the 9216-row qkv, rescaled) or GLoRA (rank 8) file as
    lycoris.kohya saves it on kohya's Flux at FLUX.1's widths (zero tensors), CLIP-L's attention too."""
    import numpy as np
    from safetensors.numpy import save_file

    layers = {
        "lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }
    tensors = {}
    for name, (out, inp) in layers.items():
        if algo == "diag-oft":
            tensors[f"{name}.oft_blocks"] = np.zeros((out // 96, 96, 96), np.float16)
            tensors[f"{name}.rescale"] = np.ones((out, 1), np.float16)
        else:
            for key, shape in (("a1", (inp, 8)), ("a2", (8, inp)), ("b1", (out, 8)), ("b2", (8, inp))):
                tensors[f"{name}.{key}.weight"] = np.zeros(shape, np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, np.float32)
    save_file(tensors, str(path))


@pytest.mark.parametrize("algo", ["diag-oft", "glora"])
def test_network_weights_of_a_diag_oft_or_glora_start_the_fused_network(tmp_path, algo):
    """LyCORIS's load_weights (load_state_dict(strict=False)) into one DiagOFTModule / GLoRAModule per fused
    Linear: adapter.init_weights with init_partial, the file's blocks / pairs cut into the fused layers'
    parts when the run loads it (runtime/lycoris_whole_init.py)."""
    _whole_flux_file(tmp_path / "prev.safetensors", algo)
    extra = "rescaled=True" if algo == "diag-oft" else "use_scalar=True"
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors --network_args algo={algo} {extra}")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_weights, a.init_partial, a.init_layers) == (
        algo,
        str(tmp_path / "prev.safetensors"),
        True,
        2,
    )
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert a.scalar if algo == "glora" else a.oft_rescaled


def test_diag_oft_whose_blocks_span_flux1_parts_converts(tmp_path):
    """network_dim 128: LyCORIS's factorization splits the 9216-row qkv as 72 x 128 (128 > 9216 / 128), so
    blocks of 72 rows, and 3072 / 72 is no integer: a block spans q and k. Was DBS403; the parts share the
    fused module's blocks (runtime/fused_oft.py; tests/runtime/test_lycoris_flux_oft.py)."""
    from dbspec.convert.kohya.lycoris_flow_oft import flux1_spans
    from dbspec.plan.lokr import factorization

    assert factorization(9216, 128)[0] == 72 and 3072 % 72
    assert flux1_spans(128) == [72] and flux1_spans(16) == []
    outcome = _flux(tmp_path, "--network_dim 128 --network_args algo=diag-oft")
    assert "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size) == ("diag-oft", 128)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


def test_lokr_is_one_kronecker_update_per_fused_layer(tmp_path):
    outcome = _flux(
        tmp_path,
        "--network_train_unet_only --network_args algo=lokr factor=16 decompose_both=True "
        "loraplus_lr_ratio=4 dropout=0.1",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.factor, a.decompose_both) == ("lokr", 8, 4.0, 16, True)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    targets = list(a.denoiser_targets)
    assert "proj_out" not in targets and "single_transformer_blocks.37.proj_out" in targets
    assert "DBS403" not in codes(outcome)
    assert "lora_up" in messages(outcome, "DBS405") and "only in bypass_mode" in messages(outcome, "DBS405")
    assert plan_of(outcome, tmp_path).checkpoints.exports == ("kohya_lora",)


def test_lokr_attn_only_names_the_double_blocks(tmp_path):
    a = plan_of(_flux(tmp_path, "--network_args algo=lokr preset=attn-only"), tmp_path).adapter
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    assert all(t.startswith("transformer_blocks.") for t in a.denoiser_targets)
    assert len(a.denoiser_targets) == 19 * 8


@pytest.mark.parametrize("algo", ["glora", "diag-oft", "boft", "dylora"])
def test_attn_only_of_the_fused_kinds_plans_with_its_kohya_export(tmp_path, algo):
    """Flux's attn-only reaches the double blocks' attention (fused q/k/v) and CLIP-L's: the plan keeps
    save_model_as's kohya_lora export (LyCORIS's modules under kohya's Flux names)."""
    dim = "--network_dim 18 " if algo == "boft" else ""  # FLUX.1's 9216-row qkv: an even block of 18
    plan = plan_of(_flux(tmp_path, f"{dim}--network_args algo={algo} preset=attn-only"), tmp_path)
    assert plan.train_denoiser and [f.name for f in plan.adapter.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    assert list(plan.adapter.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert plan.checkpoints.exports == ("kohya_lora",)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lokr_and_loha_bypass_is_the_same_update(tmp_path, algo):
    """lycoris-lora 4.1.3's LokrModule / LohaModule bypass forward: scale x ΔW x x scalar after the same
    module_dropout draw (LoHa: the same rank mask), so bypass_mode alone changes nothing (test_lycoris_flux_
    fused_opts.py checks the modules' outputs); LoKr's rank_dropout is never drawn there (ignored)."""
    rank = "rank_dropout=0.1 " if algo == "loha" else ""
    outcome = _flux(tmp_path, f"--network_args algo={algo} bypass_mode=True module_dropout=0.2 {rank}")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout, a.bypass) == (algo, 0.2, 0.1 if rank else 0.0, False)
    assert fate(outcome, "network_args bypass_mode") == "inert" and not errors(outcome)
    if algo == "lokr":
        outcome = _flux(tmp_path, "--network_args algo=lokr bypass_mode=True rank_dropout=0.1")
        assert not errors(outcome) and "never draws" in messages(outcome, "DBS405")


@pytest.mark.parametrize("algo", ["lokr", "loha"])
@pytest.mark.parametrize("where", ["network_args", "network_dropout"])
def test_lokr_and_loha_dropout_in_bypass_mode_is_the_fused_output_dropout(tmp_path, algo, where):
    """LokrModule's / LohaModule's bypass_forward_diff: self.drop (torch's Dropout, network_args' `dropout`
    or --network_dropout, which train_network.py hands on as it) on the fused update x scalar, after the
    module_dropout draw and LoHa's rank mask: adapter.output_dropout, one draw per fused layer
    (test_lycoris_flux_fused_opts.py holds it to lycoris-lora's modules from the same seed)."""
    rate = "dropout=0.25 " if where == "network_args" else ""
    given = "--network_dropout 0.25 " if where == "network_dropout" else ""
    rank = "rank_dropout=0.1 " if algo == "loha" else ""
    command = (
        f"{given}--network_args algo={algo} bypass_mode=True module_dropout=0.2 {rank}{rate}use_scalar=1"
    )
    outcome = _flux(tmp_path, command)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.output_dropout, a.module_dropout, a.scalar) == (algo, 0.25, 0.2, True)
    assert a.rank_dropout == (0.1 if rank else 0.0) and [f.name for f in a.fused][0] == "img_attn_qkv"
    key = "network_args dropout" if rate else "network_dropout"
    assert fate(outcome, key) == "mapped" and fate(outcome, "network_args bypass_mode") == "mapped"
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_lokr_dropout_above_one_in_bypass_mode_is_torchs_value_error(tmp_path):
    outcome = _flux(tmp_path, "--network_args algo=lokr bypass_mode=True dropout=1.5", allow=True)
    assert "ValueError" in messages(outcome, "DBS402")


def test_lokr_and_loha_dropout_outside_bypass_mode_is_ignored(tmp_path):
    outcome = _flux(tmp_path, "--network_dropout 0.1 --network_args algo=loha")
    assert plan_of(outcome, tmp_path).adapter.output_dropout == 0.0
    assert "only in bypass_mode" in messages(outcome, "DBS405") and not errors(outcome)


def test_loha_dropouts_are_one_draw_per_fused_layer(tmp_path):
    """LohaModule on each fused Linear: module_dropout one torch.rand(1) per forward, rank_dropout one row
    mask over the fused update, unscaled (lycoris.kohya never hands rank_dropout_scale on)."""
    extra = "--network_args algo=loha module_dropout=0.2 rank_dropout=0.1 rank_dropout_scale=True"
    outcome = _flux(tmp_path, extra)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout, a.rank_dropout_scale) == ("loha", 0.2, 0.1, False)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args rank_dropout") == "mapped"
    assert "does not pass it" in outcome.conversion.reports["network_args rank_dropout_scale"].note
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_lokr_module_dropout_maps_and_its_rank_dropout_is_invalid(tmp_path):
    """LokrModule's rank-dropout mask stays on the CPU: kohya fails on a GPU (LyCORIS issue #291)."""
    outcome = _flux(tmp_path, "--network_args algo=lokr module_dropout=0.2")
    assert plan_of(outcome, tmp_path).adapter.module_dropout == 0.2 and not errors(outcome)
    assert errors(_flux(tmp_path, "--network_args algo=lokr rank_dropout=0.1", allow=True))


def test_locon_rank_dropout_is_lycoris_row_mask_over_each_fused_layer(tmp_path):
    outcome = _flux(tmp_path, "--network_args rank_dropout=0.1 module_dropout=0.05")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (0.1, "lycoris", 0.05)
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_locon_bypass_rank_dropout_is_one_rank_mask_per_fused_layer(tmp_path):
    # LoConModule.bypass_forward_diff: torch.rand(rank) > rank_dropout over the shared down's output, unscaled
    outcome = _flux(tmp_path, "--network_args bypass_mode=True rank_dropout=0.1 module_dropout=0.2")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank_dropout, a.rank_dropout_form, a.module_dropout) == (0.1, "lycoris_bypass", 0.2)
    assert fate(outcome, "network_args bypass_mode") == "mapped"
    assert "DBS403" not in codes(outcome) and not errors(outcome)


@pytest.mark.parametrize("arg", ["train_t5xxl=True", "train_t5xxl="])
def test_train_t5xxl_builds_no_t5_module_and_changes_nothing(tmp_path, arg):
    # lycoris-lora 4.1.3 on transformers' T5EncoderModel builds no module (no T5 class in its lists, MT5Block
    # is); kohya only flags T5-XXL as trained: the same plan as without, CLIP-L's LoCon and no T5 target
    outcome = _flux(tmp_path, f"--network_args algo=locon {arg}")
    plan = plan_of(outcome, tmp_path)
    assert not plan.adapter.t5_targets
    assert list(plan.adapter.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert fate(outcome, "network_args train_t5xxl") == "inert"
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_train_t5xxl_with_cached_text_outputs_is_kohyas_value_error(tmp_path):
    # flux_train_network.py's post_process_network raises ValueError on network.train_t5xxl with the cache
    outcome = _flux(tmp_path, "--cache_text_encoder_outputs --network_args train_t5xxl=True")
    assert "ValueError" in messages(outcome, "DBS402") and "DBS403" not in codes(outcome)


@pytest.mark.parametrize("preset", ["full", "unet-only", "attn-mlp"])
def test_train_norm_on_the_blocks_is_lycoris_attribute_error(tmp_path, preset):
    # NormModule on Flux's affine-less LayerNorms (img_norm1, pre_norm ...) reads their weight, None: the
    # first training forward of lycoris-lora 4.1.3's network on kohya's Flux raises AttributeError
    outcome = _flux(tmp_path, f"--network_args preset={preset} train_norm=True")
    assert "AttributeError" in messages(outcome, "DBS402") and "DBS403" not in codes(outcome)


def test_train_norm_with_attn_only_and_rescaled_change_nothing(tmp_path):
    # attn-only's SelfAttention holds QKNorm / RMSNorm only: NormModules without parameters; rescaled is
    # read by OFT / BOFT only: the plan is attn-only's LoCon as without them
    outcome = _flux(tmp_path, "--network_args preset=attn-only train_norm=True rescaled=True")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha) == ("lora", 8, 4.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    for key in ("train_norm", "rescaled"):
        assert fate(outcome, f"network_args {key}") == "inert"
    assert "DBS403" not in codes(outcome) and not errors(outcome)


@pytest.mark.parametrize(
    "classes, text, code",
    [
        ('["SelfAttention"]', "[]", None),  # QKNorm / RMSNorm only: NormModules without parameters
        ('["SingleStreamBlock"]', "[]", "DBS402"),  # pre_norm: an affine-less LayerNorm (AttributeError)
        ('["SelfAttention"]', '["CLIPEncoderLayer"]', "mapped"),  # CLIP's affine LayerNorms train offsets
    ],
)
def test_train_norm_with_a_preset_file_follows_the_norms_it_reaches(tmp_path, classes, text, code):
    """train_norm with a preset file: create_single_module gives every "Norm" module the file's walk reaches a
    NormModule, with the built-in presets' outcomes (lycoris-lora 4.1.3 lycoris/modules/norms.py)."""
    (tmp_path / "p.toml").write_text(
        f"unet_target_module = {classes}\nunet_target_name = []\ntext_encoder_target_module = {text}\n"
    )
    outcome = _flux(tmp_path, "--network_args preset=p.toml train_norm=True", allow=True)
    if code is None:
        a = plan_of(outcome, tmp_path).adapter
        assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
        assert fate(outcome, "network_args train_norm") == "inert" and not errors(outcome)
        assert "DBS403" not in codes(outcome)
    elif code == "mapped":  # NormModule's w_norm / b_norm on each CLIP layer's two LayerNorms (issue 12)
        a = plan_of(outcome, tmp_path).adapter
        assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and not errors(outcome)
        assert {"q_proj", "fc2"} <= set(a.text_encoder_targets)
        assert fate(outcome, "network_args train_norm") == "mapped"
    else:
        assert "AttributeError" in messages(outcome, code), errors(outcome)


def test_train_norm_on_clip_beside_full(tmp_path):
    """algo=full with a preset file reaching CLIP's encoder layers: LyCORIS gives the LayerNorms NormModules
    whatever the algo (create_single_module), FullModules the Linears: the trained copies and the offsets
    (lycoris-lora 4.1.3 loads both from the export with the trained outputs:
    tests/runtime/test_lycoris_clip_norms.py)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["SelfAttention"]\nunet_target_name = []\n'
        'text_encoder_target_module = ["CLIPEncoderLayer"]\n'
    )
    outcome = _flux(tmp_path, "--network_args algo=full preset=p.toml train_norm=True")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "full" and a.text_encoder_norms == ("layer_norm1", "layer_norm2")
    assert set(a.text_encoder_targets) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}
    assert fate(outcome, "network_args train_norm") == "mapped" and not errors(outcome)


@pytest.mark.parametrize(  # LoKr's rank_dropout is DBS402 on a GPU (LyCORIS issue #291)
    "algo, drops",
    [
        ("lora", "rank_dropout=0.2 module_dropout=0.1"),
        ("loha", "rank_dropout=0.2 module_dropout=0.1"),
        ("lokr", "module_dropout=0.1"),
        ("full", "rank_dropout=0.2 module_dropout=0.1"),  # was DBS403: the full adapter carries both
        # was DBS403: their modules never read rank_dropout, the offsets' alone (norm_rank_dropout)
        ("boft", "rank_dropout=0.2 module_dropout=0.1 --network_dim 18"),  # a split of every width
        ("dylora", "rank_dropout=0.2 module_dropout=0.1"),
        ("glora", "rank_dropout=0.2 module_dropout=0.1"),
        ("glora", "rank_dropout=0.2 module_dropout=0.1 bypass_mode=True"),  # GLoRA's bypass mask too
    ],
)
def test_train_norm_on_clip_with_lycoris_dropouts(tmp_path, algo, drops):
    """rank_dropout / module_dropout: LyCORIS hands them to every NormModule too, whose draws
    runtime/norm_offsets.py makes alike (the adapters' rates: one source for both)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["SelfAttention"]\nunet_target_name = []\n'
        'text_encoder_target_module = ["CLIPEncoderLayer"]\n'
    )
    args = f"--network_args algo={algo} preset=p.toml train_norm=True {drops}"
    outcome = _flux(tmp_path, args)
    a = plan_of(outcome, tmp_path).adapter
    assert a.text_encoder_norms == ("layer_norm1", "layer_norm2") and not errors(outcome)
    rate = 0.2 if "rank" in drops else 0.0
    alone = algo in ("boft", "dylora") or (algo == "glora" and "bypass" not in drops)
    assert (a.rank_dropout, a.module_dropout) == ((0.0 if alone else rate), 0.1)
    assert a.norm_rank_dropout == rate


def test_train_norm_on_clip_norms_alone_trains_clip(tmp_path):
    """A file reaching CLIP's final LayerNorm and no CLIP Linear: LyCORIS's network holds that NormModule
    alone on CLIP, which trains (its text group at text_encoder_lr): train.text_encoder with no adapter
    target, the offsets alone (runtime/norm_offsets.py)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["SelfAttention"]\nunet_target_name = []\ntext_encoder_target_module = []\n'
        "text_encoder_target_name = ['text_model\\.final_layer_norm']\n"
    )
    outcome = _flux(tmp_path, "--network_args preset=p.toml train_norm=True --text_encoder_lr 5e-5")
    plan = plan_of(outcome, tmp_path)
    assert (
        plan.adapter.text_encoder_norms == ("final_layer_norm",) and plan.adapter.text_encoder_targets == ()
    )
    assert plan.train_text_encoder and plan.optimizer.text_encoder_lr == 5e-5 and not errors(outcome)
    assert {c.name: c.trainable for c in plan.precision.components}["text_encoder"] == "lora"


@pytest.mark.parametrize("text", ['["CLIPEncoderLayer", "T5Block"]', '["T5Block"]'])
def test_train_norm_reaching_t5_norms_leaves_them(tmp_path, text):
    """A file reaching T5-XXL's blocks: LyCORIS's NormModule on a T5LayerNorm (a weight, no `_norm`) is "not
    supported", no parameter and the layer's own forward (tests/runtime/test_lycoris_clip_norms.py builds
    lycoris-lora's network): CLIP's LayerNorms offset, T5's Linears trained (train.t5), T5's norms as they
    are; T5's alone make train_norm inert."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["SelfAttention"]\nunet_target_name = []\n'
        f"text_encoder_target_module = {text}\n"
    )
    outcome = _flux(tmp_path, "--network_args preset=p.toml train_norm=True")
    plan = plan_of(outcome, tmp_path)
    assert plan.adapter.t5_targets and not errors(outcome) and "DBS403" not in codes(outcome)
    report = outcome.conversion.reports["network_args train_norm"]
    assert "T5LayerNorm(s)" in report.note and "not supported" in report.note
    if "CLIPEncoderLayer" in text:
        assert plan.adapter.text_encoder_norms == ("layer_norm1", "layer_norm2") and report.fate == "mapped"
    else:
        assert plan.adapter.text_encoder_norms == () and report.fate == "inert"


def test_rescaled_and_train_t5xxl_with_lokr_and_ia3(tmp_path):
    for algo in ("lokr", "ia3"):
        outcome = _flux(
            tmp_path, f"--network_args algo={algo} rescaled=True train_t5xxl=True train_norm=False"
        )
        assert plan_of(outcome, tmp_path).adapter.kind == algo
        assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_module_dropout_maps_and_dropout_outside_bypass_is_ignored(tmp_path):
    outcome = _flux(tmp_path, "--network_dropout 0.1 --network_args module_dropout=0.2")
    a = plan_of(outcome, tmp_path).adapter
    assert a.module_dropout == 0.2 and not a.down_dropout
    assert "DBS403" not in codes(outcome) and "bypass_mode" in messages(outcome, "DBS405")


@pytest.mark.parametrize(
    "extra",
    ["--network_args bypass_mode=True dropout=0.1", "--network_dropout 0.1 --network_args bypass_mode=True"],
)
def test_dropout_in_bypass_mode_is_the_fused_output_dropout(tmp_path, extra):
    # LoConModule.bypass_forward_diff: self.dropout (torch's Dropout) on the fused module's update, after the
    # rank mask; --network_dropout is handed on as `dropout`
    outcome = _flux(tmp_path, f"{extra} rank_dropout=0.2")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.output_dropout, a.rank_dropout, a.rank_dropout_form, a.dropout) == (
        0.1,
        0.2,
        "lycoris_bypass",
        0,
    )
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_dropout_above_one_is_torchs_value_error(tmp_path):
    assert "ValueError" in messages(_flux(tmp_path, "--network_args bypass_mode=True dropout=1.5"), "DBS402")


def test_switches_off_convert(tmp_path):
    outcome = _flux(tmp_path, "--network_args rank_dropout=0 dora_wd=False bypass_mode=True")
    assert "DBS403" not in codes(outcome)


@pytest.mark.parametrize("algo", ["locon", "loha"])
def test_rs_lora_scales_alpha_by_the_square_root_of_the_rank(tmp_path, algo):
    """LoConModule / LohaModule with rs_lora: scale alpha / sqrt(rank), saved as alpha x sqrt(rank): the
    plain alpha of that scale (network_dim 8, network_alpha 4: 4 x sqrt(8))."""
    outcome = _flux(tmp_path, f"--network_args algo={algo} rs_lora=True")
    a = plan_of(outcome, tmp_path).adapter
    assert a.rank == 8 and a.alpha == pytest.approx(4 * 8**0.5)
    assert a.alpha / a.rank == pytest.approx(4 / 8**0.5)  # the scale LyCORIS trains at
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_rs_lora_on_lokr_scales_alpha_and_full_factors(tmp_path):
    """LokrModule with rs_lora on the fused Linears: low-rank at alpha / sqrt(rank), as LoCon's; a fused layer
    whose two Kronecker factors are full at sqrt(rank) (adapter.rank_stabilized)."""
    outcome = _flux(tmp_path, "--network_args algo=lokr rs_lora=True")
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.lokr_rank_stabilized and a.fused and a.alpha == pytest.approx(4 * 8**0.5)
    # --network_weights: LyCORIS's load_state_dict copies the factors into modules keeping their scale
    # (runtime/lycoris_init.py loads them as they are; tests/runtime/test_lycoris_flux.py)
    import numpy as np
    from safetensors.numpy import save_file

    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {f"{qkv}.{f}": np.zeros((2, 2), np.float16) for f in ("lokr_w1", "lokr_w2")}
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    extra = "--network_weights prev.safetensors --network_args algo=lokr full_matrix=True rs_lora=True"
    outcome = _flux(tmp_path, extra)
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.lokr_rank_stabilized and a.full_matrix and a.init_weights.endswith("prev.safetensors")
    assert a.init_partial


def _lycoris_flux_file(path, *, rank: int, alpha: float):
    """A LoCon file as lycoris.kohya saves it on kohya's Flux at FLUX.1's widths (zero tensors): one
    lora_down / lora_up / alpha per fused Linear (img_attn.qkv, single-block linear1) and per plain one,
    CLIP-L's attention under lora_te1_."""
    import numpy as np
    from safetensors.numpy import save_file

    width = 3072
    layers = {
        "lora_unet_double_blocks_0_img_attn_qkv": (3 * width, width),
        "lora_unet_double_blocks_0_img_attn_proj": (width, width),
        "lora_unet_single_blocks_0_linear1": (3 * width + 4 * width, width),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768),
    }
    tensors = {}
    for name, (out, inp) in layers.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((rank, inp), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, rank), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


def test_network_weights_of_a_locon_start_the_fused_lora(tmp_path):
    """train_network.py: apply_to, then LyCORIS's load_weights (load_state_dict(strict=False)) of the file:
    adapter.init_weights with init_partial, the fused Linears' shared downs as lora_flux's (an rs_lora file
    saves alpha x sqrt(rank), the plan's alpha)."""
    _lycoris_flux_file(tmp_path / "prev.safetensors", rank=8, alpha=4 * 8**0.5)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --network_args algo=locon rs_lora=True")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.init_weights == str(tmp_path / "prev.safetensors") and a.init_partial and a.init_layers == 4
    assert len(a.fused) == 3 and a.alpha == pytest.approx(4 * 8**0.5)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_network_weights_of_lokr_and_loha_start_the_fused_factors(tmp_path, algo):
    """LyCORIS's file of algo=lokr / loha on kohya's Flux (one module per fused Linear): init_weights with
    init_partial on the fused LoKr / LoHa (their modules' names and kind checked at plan time)."""
    import numpy as np
    from safetensors.numpy import save_file

    factors = ("lokr_w1", "lokr_w2_a", "lokr_w2_b") if algo == "lokr" else ("hada_w1_a", "hada_w1_b")
    tensors = {
        f"lora_unet_{m}.{f}": np.zeros((2, 2), np.float16)
        for m in ("double_blocks_0_img_attn_qkv", "single_blocks_0_linear1")
        for f in factors
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors --network_args algo={algo}")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_weights, a.init_partial, a.init_layers) == (
        algo,
        str(tmp_path / "prev.safetensors"),
        True,
        2,
    )


def test_a_locon_file_does_not_start_a_lokr(tmp_path):
    """The plan reads the file's kind: LoCon's lora_down / lora_up into a LoKr is DBS356."""
    from convert_kit import GPU

    from dbspec.frontend import plan_spec

    _lycoris_flux_file(tmp_path / "prev.safetensors", rank=8, alpha=4.0)
    _flux(tmp_path, "--network_weights prev.safetensors --network_args algo=lokr")
    (d,) = [d for d in plan_spec(out_path(tmp_path), GPU).diagnostics if d.code == "DBS356"]
    assert "lora_down" in d.message and "prev.safetensors" in d.message


def test_scale_weight_norms_is_lycoris_max_norm_per_fused_layer(tmp_path):
    """train_network.py calls lycoris.kohya's apply_max_norm_regularization: each LoConModule (one per fused
    Linear) scales its scalar by limit / norm of its whole update: max_norm in LyCORIS's form over the
    fused layers (runtime/max_norm.py joins a fused layer's parts)."""
    outcome = _flux(tmp_path, "--scale_weight_norms 1.5 --network_args algo=locon preset=attn-only")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.max_norm, a.max_norm_form) == (1.5, "lycoris")
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]
    assert fate(outcome, "scale_weight_norms") == "mapped" and "DBS403" not in codes(outcome)
    assert not errors(outcome)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_dora_wd_use_scalar_and_max_norm_of_lokr_and_loha_are_lycoris_per_fused_layer(tmp_path, algo):
    """LokrModule / LohaModule on each fused Linear with dora_wd (one magnitude per output row, each part
    keeps its rows'), use_scalar (one trained scalar from 0) and --scale_weight_norms (apply_max_norm on the
    whole fused update: LoKr's factors, LoHa's scalar scaled once)."""
    extra = f"--scale_weight_norms 1.5 --network_args algo={algo} dora_wd=True use_scalar=True"
    outcome = _flux(tmp_path, extra)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.scalar, a.max_norm) == (algo, True, "output", True, 1.5)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "scale_weight_norms") == "mapped" and "DBS403" not in codes(outcome)
    assert not errors(outcome)


def test_network_weights_of_a_locon_with_dora_wd_start_the_magnitudes(tmp_path):
    """algo=locon dora_wd=True (dora_form "lycoris"): LyCORIS's load_state_dict fills each LoConModule's
    lora_down / lora_up and dora_scale (one magnitude per output row of the fused Linear): init_weights, the
    magnitudes loaded by runtime/flow_init.py (tests/runtime/test_lycoris_sd3.py against lycoris-lora)."""
    import numpy as np
    from safetensors.numpy import save_file

    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {
        f"{qkv}.lora_down.weight": np.zeros((8, 3072), np.float16),
        f"{qkv}.lora_up.weight": np.zeros((9216, 8), np.float16),
        f"{qkv}.alpha": np.array(4.0, np.float32),
        f"{qkv}.dora_scale": np.ones((9216, 1), np.float16),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --network_args algo=locon dora_wd=True")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.init_layers) == (True, "lycoris", 1) and a.init_weights


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_network_weights_with_dora_wd_start_the_magnitudes(tmp_path, algo):
    """--network_weights with algo=lokr / loha dora_wd=True: LyCORIS's load_state_dict fills each module's
    factors and dora_scale (one magnitude per output row of the fused Linear): init_weights with the
    magnitudes (runtime/lycoris_init.py; tests/runtime/test_lycoris_sd3.py against lycoris-lora)."""
    import numpy as np
    from safetensors.numpy import save_file

    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    factors = (
        ("lokr_w1", "lokr_w2") if algo == "lokr" else ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")
    )
    tensors = {f"{qkv}.{f}": np.zeros((2, 2), np.float16) for f in factors}
    tensors[f"{qkv}.dora_scale"] = np.ones((9216, 1), np.float16)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors --network_args algo={algo} dora_wd=True")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.dora and a.init_weights.endswith("prev.safetensors") and a.init_layers == 1


def test_scale_weight_norms_with_locon_rank_dropout_converts(tmp_path):
    """LoConModule.apply_max_norm on the fused Linear draws one row mask over its stacked rows in training
    mode; dbspec's does the same (was DBS403; tests/runtime/test_lycoris_flux.py against LoConModule)."""
    outcome = _flux(tmp_path, "--scale_weight_norms 1.5 --network_args rank_dropout=0.1")
    assert fate(outcome, "scale_weight_norms") == "mapped" and not errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.max_norm, a.max_norm_form, a.rank_dropout, a.rank_dropout_form) == (
        1.5,
        "lycoris",
        0.1,
        "lycoris",
    )
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


@pytest.mark.parametrize("value", ["True", ""])  # LyCORIS's str_bool: "" is on too
def test_use_scalar_is_one_trained_scalar_per_fused_layer(tmp_path, value):
    """LoConModule's use_scalar: a trained scalar from 0 (the up kaiming-uniform), one per fused Linear
    (runtime/fused.py ties the parts'): adapter.scalar with the fused layers."""
    outcome = _flux(tmp_path, f"--network_args algo=locon use_scalar={value}")
    a = plan_of(outcome, tmp_path).adapter
    assert a.scalar and [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_use_scalar_with_network_weights_starts_from_the_file(tmp_path):
    """The file's factors hold each module's trained scalar folded in; LyCORIS's load hook sets every
    module's scalar to 1, and dbspec's run every layer's (a fused layer's one shared scalar) after loading
    it (runtime/init_weights.py)."""
    _lycoris_flux_file(tmp_path / "prev.safetensors", rank=8, alpha=4.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --network_args algo=locon use_scalar=True")
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.scalar and a.init_partial and a.init_weights == str(tmp_path / "prev.safetensors")


def test_use_scalar_false_is_inert(tmp_path):
    outcome = _flux(tmp_path, "--network_args use_scalar=false")
    assert not plan_of(outcome, tmp_path).adapter.scalar and "DBS403" not in codes(outcome)


def test_dora_wd_is_lycoris_weight_decomposition_per_output_row(tmp_path):
    """LoConModule's dora_wd on each fused Linear: one magnitude per output row (wd_on_output, LyCORIS's
    default), so each part keeps its rows': adapter.dora in LyCORIS's form over the fused layers."""
    outcome = _flux(tmp_path, "--scale_weight_norms 1 --network_args algo=locon dora_wd=True use_scalar=True")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.dora_axis, a.scalar) == (True, "lycoris", "output", True)
    assert (a.max_norm, a.max_norm_form) == (1.0, "lycoris")
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_locon_dora_wd_per_input_column_on_fused_layers(tmp_path):
    """LoConModule's weight_decompose with wd_on_output=False on each fused Linear: one magnitude per input
    column of the stacked weight, the parts sharing it and its norms: adapter.dora in LyCORIS's form with
    dora_axis "input" (issue 12; was DBS403; tests/runtime/test_lycoris_flux_locon_columns.py holds it to
    lycoris-lora's LoConModule); with rank_dropout / module_dropout (was DBS403) LoConModule's one draw per
    fused Linear, the masked update decomposed by column norms over every part's masked rows
    (test_lycoris_flux_locon_dora_dropout.py)."""
    command = "--network_args preset=attn-mlp algo=locon dora_wd=True wd_on_output=False use_scalar=1"
    outcome = _flux(tmp_path, "--network_train_unet_only " + command)
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_form, a.dora_axis, a.scalar) == ("lora", True, "lycoris", "input", True)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args wd_on_output") == "mapped"
    (tmp_path / "drop").mkdir()
    outcome = _flux(
        tmp_path / "drop", f"--network_train_unet_only {command} rank_dropout=0.1 module_dropout=0.2"
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    assert (a.dora, a.dora_form, a.dora_axis) == (True, "lycoris", "input")
    assert (a.module_dropout, a.rank_dropout, a.rank_dropout_form) == (0.2, 0.1, "lycoris")


@pytest.mark.parametrize(
    ("arg", "rates"),
    [
        ("dora_wd=True rank_dropout=0.1", (0.0, 0.1)),
        ("dora_wd=True module_dropout=0.1", (0.1, 0.0)),
        ("dora_wd=True module_dropout=0.2 rank_dropout=0.1", (0.2, 0.1)),
    ],
)
def test_dora_wd_with_dropouts_draws_once_per_fused_layer(tmp_path, arg, rates):
    """LoConModule with weight_decompose and its dropouts on each fused Linear, per output row (was DBS403):
    one skip draw and one row mask over the fused update, which the parts share, each decomposing its rows
    (runtime/fused_lycoris_dropout.py add_fused_locon_dora_dropout; issue 12)."""
    outcome = _flux(tmp_path, f"--network_args {arg}")
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_form, a.dora_axis) == (True, "lycoris", "output")
    assert (a.module_dropout, a.rank_dropout) == rates and len(a.fused) == 3
    assert a.rank_dropout_form == "lycoris" or not a.rank_dropout


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lokr_and_loha_dora_wd_per_input_column_on_fused_layers(tmp_path, algo):
    """LokrModule's / LohaModule's weight_decompose with wd_on_output=False on each fused Linear: one
    magnitude per input column of the stacked weight, the parts sharing it and its norms: adapter.dora with
    dora_axis "input" (issue 12; was DBS403; test_lycoris_flux_fused_opts.py holds it to lycoris-lora's
    modules); with module_dropout (and LoHa's rank_dropout) the fused module's one draw, was DBS403
    (test_lycoris_flux_columns_dropout.py; --network_weights: below)."""
    command = f"--network_args preset=attn-mlp algo={algo} dora_wd=True wd_on_output=False use_scalar=1"
    outcome = _flux(tmp_path, "--network_train_unet_only " + command)
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.scalar) == (algo, True, "input", True)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args wd_on_output") == "mapped"
    (tmp_path / "drop").mkdir()
    drops = "module_dropout=0.1" + (" rank_dropout=0.2" if algo == "loha" else "")
    outcome = _flux(tmp_path / "drop", f"--network_train_unet_only {command} {drops}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    assert (a.dora_axis, a.module_dropout, a.rank_dropout) == ("input", 0.1, 0.2 if algo == "loha" else 0.0)


@pytest.mark.parametrize("algo", ["lokr", "loha"])
def test_lokr_and_loha_dora_wd_with_dropouts_decompose_the_masked_update(tmp_path, algo):
    """LokrModule's / LohaModule's rebuild forward with weight_decompose: module_dropout's torch.rand(1)
    skips the whole layer (the base output), LoHa's rank mask multiplies ΔW before the decomposition; on a
    fused Linear one draw for all its parts (runtime/fused_lycoris_dropout.py, test_lycoris_flux_fused_opts.py
    holds it to lycoris-lora's modules); LoKr's rank_dropout stays invalid (its CPU mask)."""
    rank = "rank_dropout=0.1 " if algo == "loha" else ""
    command = f"--network_args preset=attn-mlp algo={algo} dora_wd=True module_dropout=0.2 {rank}use_scalar=1"
    outcome = _flux(tmp_path, "--network_train_unet_only " + command)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.dora, a.dora_axis, a.scalar) == (algo, True, "output", True)
    assert (a.module_dropout, a.rank_dropout) == (0.2, 0.1 if rank else 0.0)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args dora_wd") == "mapped" and not errors(outcome)
    assert "DBS403" not in codes(outcome)


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_dora_wd_in_bypass_mode_is_lycoris_defect(tmp_path, algo):
    """LoConModule's / LokrModule's / LohaModule's forward (lycoris-lora 4.1.3) takes the bypass path before
    the weight decomposition: dora_scale gets no gradient, yet the file saves it and lycoris-lora's loader
    decomposes with it, so the file computes another model (scratch run: 0.1-0.4 apart): DBS402."""
    outcome = _flux(tmp_path, f"--network_args algo={algo} dora_wd=True bypass_mode=True", allow=True)
    assert errors(outcome) and "never applies the weight decomposition" in messages(outcome, "DBS402")


def test_dora_wd_with_network_weights_without_dora_scale_keeps_the_magnitudes_init(tmp_path):
    """LyCORIS's load_state_dict(strict=False) of a file without dora_scale leaves each module's magnitudes
    at their init (the base weight's row norms), as dbspec's init_partial does."""
    _lycoris_flux_file(tmp_path / "prev.safetensors", rank=8, alpha=4.0)
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --network_args dora_wd=True")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.init_partial


def test_a_preset_without_flux_modules_is_invalid(tmp_path):
    outcome = _flux(tmp_path, "--network_args preset=unet-convblock-only")
    assert errors(outcome)


def test_full_is_a_trained_copy_of_each_fused_layers_parts(tmp_path):
    # FullModule on each fused Linear: a copy per diffusers part is the fused copy's rows (no sharing), the
    # LoCon preset's layers by full paths; rank and alpha mean nothing to it; its dropout is never applied
    outcome = _flux(tmp_path, "--network_dropout 0.1 --network_args algo=full use_scalar=True")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "full" and not a.fused and not a.blocks
    assert (
        "proj_out" not in a.denoiser_targets and "single_transformer_blocks.37.proj_out" in a.denoiser_targets
    )
    assert "attn.to_q" in a.denoiser_targets and "proj_mlp" in a.denoiser_targets
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert fate(outcome, "network_module") == "mapped" and fate(outcome, "network_dim") == "inert"
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    assert "never applies its dropout" in messages(outcome, "DBS405")


def test_full_bypass_is_refused(tmp_path):
    outcome = _flux(tmp_path, "--network_args algo=full bypass_mode=True", allow=True)
    assert "DBS403" in codes(outcome) or errors(outcome)


@pytest.mark.parametrize(
    ("args", "rates"),
    [
        ("module_dropout=0.1", (0.1, 0.0)),
        ("rank_dropout=0.25", (0.0, 0.25)),
        ("module_dropout=0.1 rank_dropout=0.25", (0.1, 0.25)),
    ],
)
def test_full_dropouts_share_one_draw_per_fused_layer(tmp_path, args, rates):
    """FullModule's module_dropout and rank_dropout (was DBS403): the adapter's, with fused_projections (the
    parts of a fused Linear are one FullModule: one skip draw and one row mask, runtime/lycoris_full.py;
    issue 12); every part of each fused layer adapted, so the plan takes it."""
    outcome = _flux(tmp_path, f"--network_args algo=full {args}")
    assert not {"DBS402", "DBS403"} & codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.rank_dropout) == ("full", *rates)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    for key in args.split():
        assert fate(outcome, f"network_args {key.split('=')[0]}") == "mapped"


def test_full_zero_dropouts_change_nothing(tmp_path):
    outcome = _flux(tmp_path, "--network_args algo=full module_dropout=0 rank_dropout=0.0")
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.module_dropout, a.rank_dropout, a.fused) == (0.0, 0.0, ())
    assert fate(outcome, "network_args module_dropout") == "inert"


def test_ia3_full_preset_scales_every_block_linear_per_output_row(tmp_path):
    """algo=ia3 with preset full: lycoris-lora 4.1.3 builds IA3Module (one scale per output row, from 0) on
    every double/single-block Linear and CLIP-L's attention + MLP; a fused Linear's rows are its parts'."""
    outcome = _flux(tmp_path, "--network_args algo=ia3 preset=full")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "ia3"
    assert "transformer_blocks.0.attn.to_q" not in a.denoiser_targets  # suffixes, the final layer out
    assert "single_transformer_blocks.37.proj_out" in a.denoiser_targets
    assert "proj_out" not in a.denoiser_targets and "attn.to_q" in a.denoiser_targets
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert not a.input_targets
    assert fate(outcome, "network_module") == "mapped"
    assert "DBS403" not in codes(outcome)


def test_ia3_dropouts_on_flux(tmp_path):
    """IA3Module never reads `dropout` (--network_dropout) or rank_dropout: DBS405; its module_dropout is one
    draw per module, the parts of a fused Linear sharing it (fused_projections; was DBS403)."""
    outcome = _flux(tmp_path, "--network_dropout 0.1 --network_args algo=ia3 preset=full rank_dropout=0.2")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert (
        fate(outcome, "network_args rank_dropout") == "inert" and fate(outcome, "network_dropout") == "inert"
    )
    assert "never reads" in messages(outcome, "DBS405")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.module_dropout, a.fused) == (0.0, ())  # no draw to share: the parts as before
    outcome = _flux(tmp_path, "--network_args algo=ia3 preset=full module_dropout=0.2")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout) == ("ia3", 0.2)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert fate(outcome, "network_args module_dropout") == "mapped"


def test_ia3_bypass_mode_on_flux_is_the_adapters_bypass(tmp_path):
    """algo=ia3 bypass_mode=True (was DBS403 / DBS594): IA3Module's bypass forward, each fused Linear's
    output, bias included, times (1 + s), which each part computes for its own rows (no input side on
    kohya's Flux): adapter.bypass, beside module_dropout's shared draw
    (tests/runtime/test_lycoris_flux_ia3.py against lycoris-lora 4.1.3); `dropout`, which its bypass
    forward never reads either, stays DBS405; LyCORIS's str_bool: "false" is off."""
    outcome = _flux(
        tmp_path, "--network_args algo=ia3 preset=full bypass_mode=True module_dropout=0.2 dropout=0.1"
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    assert fate(outcome, "network_args bypass_mode") == "mapped"
    assert fate(outcome, "network_args dropout") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.bypass, a.module_dropout, a.input_targets) == ("ia3", True, 0.2, ())
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    outcome = _flux(tmp_path, "--network_args algo=ia3 preset=full bypass_mode=false")
    assert fate(outcome, "network_args bypass_mode") == "inert"
    assert not plan_of(outcome, tmp_path).adapter.bypass


@pytest.mark.parametrize("value", ["True", "1", "False"])
def test_ia3_train_on_input_in_network_args_is_never_read(tmp_path, value):
    """lycoris-lora 4.1.3's create_network hands LycorisNetworkKohya a fixed argument list without
    train_on_input: on kohya's Flux every IA3Module keeps on_input 0, whatever the value (scratch run)."""
    outcome = _flux(tmp_path, f"--network_args algo=ia3 preset=full train_on_input={value}")
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "ia3" and not a.input_targets
    assert "module_algo_map" in messages(outcome, "DBS405") and "DBS403" not in codes(outcome)


@pytest.mark.parametrize("algo", ["ia3", "diag-oft", "glora"])
def test_whole_layer_algos_with_a_preset_file_take_its_layers(tmp_path, algo):
    """(was DBS403) the file's layers (the double blocks' Linears, CLIP-L's attention and MLPs by LyCORIS's
    class defaults) are the adapter's targets, the single blocks left out
    (tests/runtime/test_lycoris_flow_file_whole_algos.py checks such files against create_network)."""
    (tmp_path / "p.toml").write_text('unet_target_module = ["DoubleStreamBlock"]\n')
    outcome = _flux(tmp_path, f"--network_args algo={algo} preset=p.toml")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == algo and "add_q_proj" in a.denoiser_targets and "fc1" in a.text_encoder_targets
    assert not any("single" in t or "proj_mlp" in t for t in a.denoiser_targets)


def test_dylora_with_a_preset_file_is_one_module_per_fused_layer(tmp_path):
    """algo=dylora with a preset file (issue 12): DyLoraModule on the layers the file reaches (the double
    blocks' Linears, CLIP-L's attention and MLPs by LyCORIS's class defaults), one per fused Linear; the
    single blocks and the final layer left out."""
    (tmp_path / "p.toml").write_text('unet_target_module = ["DoubleStreamBlock"]\n')
    outcome = _flux(tmp_path, "--network_args algo=dylora block_size=2 preset=p.toml")
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 2, "lycoris")
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]  # no single block
    targets = a.denoiser_targets
    assert any("to_q" in t for t in targets) and not any("proj_mlp" in t for t in targets)


def test_glora_is_one_module_per_fused_layer(tmp_path):
    """algo=glora: GLoRAModule on every block Linear (LoKr's full paths), network_dim / network_alpha its
    rank / alpha, use_scalar one scalar per fused module, bypass_mode its forward; the dropouts outside bypass
    ignored (GLoRAModule applies them only there); dora_wd never read."""
    outcome = _flux(
        tmp_path,
        "--network_dropout 0.1 --network_args algo=glora use_scalar=True rank_dropout=0.2 dora_wd=True",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.scalar, a.bypass) == ("glora", 8, 4.0, True, False)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert (
        "proj_out" not in a.denoiser_targets and "single_transformer_blocks.37.proj_out" in a.denoiser_targets
    )
    assert (a.rank_dropout, a.module_dropout, a.bypass_dropout) == (0.0, 0.0, 0.0)
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    assert "only in bypass_mode" in messages(outcome, "DBS405")
    b = plan_of(_flux(tmp_path, "--network_args algo=glora bypass_mode=True rs_lora=True"), tmp_path).adapter
    assert b.bypass and b.alpha == pytest.approx(4.0 * 8 / 8**0.5)


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("module_dropout=0.1", (0.1, 0.0, 0.0, False)),
        ("bypass_mode=True rank_dropout=0.2", (0.0, 0.2, 0.0, True)),
        ("bypass_mode=True dropout=0.3", (0.0, 0.0, 0.3, True)),
        ("bypass_mode=True module_dropout=0.1 rank_dropout=0.2 dropout=0.3", (0.1, 0.2, 0.3, True)),
    ],
)
def test_glora_draws_per_fused_module_map(tmp_path, arg, expected):
    """GLoRAModule's draws on a fused Linear, one per fused module its parts share (runtime/lycoris_glora.py
    FusedDraws; DBS403 before, issue 12)."""
    outcome = _flux(tmp_path, f"--network_args algo=glora {arg}")
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.module_dropout, a.rank_dropout, a.bypass_dropout, a.bypass) == expected
    assert len(a.fused) == 3


def test_dylora_is_one_module_per_fused_layer(tmp_path):
    """algo=dylora: DyLoraModule on every block Linear (LoKr's full paths), network_dim / network_alpha its
    rank / alpha, block_size its unit, LyCORIS's forward; one module per fused Linear (its down and draw)."""
    outcome = _flux(tmp_path, "--network_dropout 0.1 --network_args algo=dylora block_size=2 use_scalar=True")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.dylora_unit, a.dylora_form) == ("dylora", 8, 4.0, 2, "lycoris")
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert (
        "proj_out" not in a.denoiser_targets and "single_transformer_blocks.37.proj_out" in a.denoiser_targets
    )
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    assert "never reads it" in messages(outcome, "DBS405")
    dropped = plan_of(_flux(tmp_path, "--network_args algo=dylora module_dropout=0.1"), tmp_path).adapter
    assert dropped.module_dropout == 0.1  # one draw per fused module (test_convert_lycoris_flow_dylora_opts)
    assert "DBS402" in codes(_flux(tmp_path, "--network_args algo=dylora block_size=3", allow=True))


def test_full_preset_file_excludes_what_lycoris_builds_no_module_on(tmp_path):
    """algo=full with a preset file: Flux's final layer by name (the target `proj_out`, a suffix of every
    single block's linear2, which LyCORIS leaves) excludes the single blocks' `proj_out`; T5-XXL's attention
    (`T5Attention`): train.t5's full copies, its gated-MLP Linears excluded (tests/runtime/
    test_lycoris_flow_full_t5.py builds lycoris-lora's network from such a file)."""
    import re

    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["SelfAttention"]\nunet_target_name = ["final_layer.linear"]\n'
        'text_encoder_target_module = ["T5Attention"]\n'
    )
    outcome = _flux(tmp_path, "--network_args algo=full preset=p.toml")
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "full" and "proj_out" in a.denoiser_targets and a.t5_targets
    excluded = [b.pattern for b in a.blocks]
    assert excluded == [b.pattern for b in a.text_encoder_blocks] and all(b.rank == 0 for b in a.blocks)

    def out(path: str) -> bool:
        return any(re.search(p, path) for p in excluded)

    assert out("single_transformer_blocks.37.proj_out") and not out("proj_out")
    assert not out("transformer_blocks.0.attn.to_q")
    assert out("text_encoder_2.encoder.block.3.layer.1.DenseReluDense.wi_0")
    assert not out("text_encoder_2.encoder.block.3.layer.0.SelfAttention.o")
    assert not out("text_encoder.text_model.encoder.layers.0.mlp.fc1")


@pytest.mark.parametrize("algo", ["locon", "lokr", "loha"])
def test_network_weights_of_dora_per_input_column_start_the_fused_magnitude(tmp_path, algo):
    """--network_weights with dora_wd=True wd_on_output=False on kohya's Flux (was DBS403 for LoKr / LoHa,
    and LoCon's per-column form): each fused Linear's (1, in) dora_scale loads into the magnitude its parts
    share (runtime/lycoris_init.py, flow_init.py; tests/runtime/test_lycoris_flux_locon_columns.py against
    lycoris-lora); a file whose dora_scale is per output row instead stops LyCORIS's load_state_dict with a
    size mismatch: DBS402 naming the module and both shapes."""
    import numpy as np
    from safetensors.numpy import save_file

    qkv, width = "lora_unet_double_blocks_0_img_attn_qkv", 3072
    if algo == "locon":
        factors = {"lora_down.weight": (8, width), "lora_up.weight": (3 * width, 8)}
    elif algo == "lokr":
        factors = {"lokr_w1": (2, 2), "lokr_w2_a": (2, 8), "lokr_w2_b": (8, 2)}
    else:
        factors = {"hada_w1_a": (2, 2), "hada_w1_b": (2, 2)}

    def write(shape):
        tensors = {f"{qkv}.{k}": np.zeros(s, np.float16) for k, s in factors.items()}
        tensors[f"{qkv}.alpha"] = np.array(4.0, np.float32)
        tensors[f"{qkv}.dora_scale"] = np.ones(shape, np.float16)
        save_file(tensors, str(tmp_path / "prev.safetensors"))

    command = f"--network_weights prev.safetensors --network_args algo={algo} dora_wd=True wd_on_output=False"
    write((1, width))
    outcome = _flux(tmp_path, command)
    assert fate(outcome, "network_weights") == "mapped" and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.dora, a.dora_axis, a.init_partial) == (True, "input", True) and a.fused
    write((3 * width, 1))
    outcome = _flux(tmp_path, command, allow=True)
    assert fate(outcome, "network_weights") == "invalid", errors(outcome)
    # the columns as the module's factors give them (this file's LoKr / LoHa factors are placeholders)
    assert f"`{qkv}.dora_scale` has shape [{3 * width}, 1], not [1, " in messages(outcome, "DBS402")
    if algo == "locon":
        assert f"not [1, {width}]" in messages(outcome, "DBS402")


def test_allow_unsupported_writes_no_full_fine_tune_for_a_refused_network(tmp_path):
    """With --allow-unsupported a network the converter refuses on Flux (here a LoCon entry at dim 200000,
    DBS403: above [[adapter.blocks]]' rank bound, a pair at that rank) leaves no adapter: the spec
    would be a full fine-tune, so nothing is written, the refusal named and no knock-on error about a LoRA
    export on a full fine-tune."""
    from convert_kit import FLUX_LYCORIS

    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock"]\ntext_encoder_target_module = []\n'
        '[module_algo_map.DoubleStreamBlock]\nalgo = "locon"\ndim = 200000\n',
        encoding="utf-8",
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    for name in ("clip_l.safetensors", "t5xxl.safetensors", "ae.safetensors"):
        component_file(tmp_path / name)
    command = f'{FLUX_LYCORIS}--network_args "algo=locon" "preset=p.toml"'
    outcome = kohya(tmp_path, allow=True, command=command)
    assert not outcome.written
    said = [d.message for d in outcome.diagnostics if d.severity == "error"]
    assert len(said) == 1 and "without it the spec would be a full fine-tune" in said[0], said
    assert not any("this is a full fine-tune" in d.message for d in outcome.diagnostics)
    assert any(d.code == "DBS403" and d.severity == "warning" for d in outcome.diagnostics)  # the refusal

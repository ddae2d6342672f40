"""lycoris.kohya `algo=boft` with flux_train_network.py / sd3_train_network.py
(convert/kohya/lycoris_flow_boft.py): one ButterflyOFTModule per fused Linear, `kind = "boft"` with
`fused_projections = true` (its blocks shared by the parts, runtime/lycoris_boft.py tie_fused_boft);
FLUX.1's widths LyCORIS cannot split at network_dim are kohya's own failure (DBS402); what a fused BOFT
cannot do here is refused (DBS403)."""

from __future__ import annotations

import pytest
from convert_kit import codes, errors, fate, messages, plan_of  # noqa: F401
from test_convert_lycoris_flux import _flux

from dbspec.convert.kohya.lycoris_flow_boft import flux1_unsplit
from dbspec.plan.boft import power2_factorization


def test_boft_is_one_butterfly_module_per_fused_layer(tmp_path):
    """network_dim 64 splits every FLUX.1 Linear of preset full (linear1's 21504 rows as 512 blocks of 42);
    constraint and rescaled are the module's; alpha, dropout, rank_dropout and use_scalar never read."""
    outcome = _flux(
        tmp_path,
        "--network_dim 64 --network_dropout 0.1 --network_args algo=boft preset=full constraint=1e-4 "
        "rescaled=True rank_dropout=0.1 use_scalar=True",
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.oft_block_size, a.oft_constraint, a.oft_rescaled, a.bypass) == (
        "boft",
        64,
        1e-4,
        True,
        False,
    )
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert "attn.to_q" in a.denoiser_targets and "proj_mlp" in a.denoiser_targets
    assert "proj_out" not in a.denoiser_targets  # the final layer: no LyCORIS module (LastLayer)
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert fate(outcome, "network_alpha") == "inert" and fate(outcome, "network_module") == "mapped"
    assert "never reads" in messages(outcome, "DBS405")
    assert power2_factorization(21504, 64) == (42, 512)  # the split the runtime gives linear1's parts


def test_attn_only_needs_only_the_attention_widths(tmp_path):
    # preset attn-only: img_attn / txt_attn qkv (9216 = 18 x 512) and proj (3072): network_dim 32 splits them
    outcome = _flux(tmp_path, "--network_dim 32 --network_args algo=boft preset=attn-only")
    assert not errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "boft" and [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv"]


@pytest.mark.parametrize(("dim", "smallest"), [(8, 42), (32, 42)])
def test_flux1_widths_lycoris_cannot_split_are_kohya_s_failure(tmp_path, dim, smallest):
    # 21504 = 2^10 x 21: power2factorization needs an even block of 42 (its 9216-row qkv: 18)
    assert not power2_factorization(21504, dim)[1] and power2_factorization(21504, smallest)[1]
    outcome = _flux(tmp_path, f"--network_dim {dim} --network_args algo=boft", allow=True)
    assert "DBS402" in codes(outcome)
    assert "linear1" in messages(outcome, "DBS402")
    helps = " ".join(d.help or "" for d in outcome.diagnostics if d.code == "DBS402")
    assert f"network_dim to {smallest}" in helps


def test_module_dropout_is_one_draw_per_fused_module(tmp_path):
    """ButterflyOFTModule skips its whole update with one torch.rand(1) per training forward: the fused
    module's parts share the draw (runtime/fused.py FusedSkip; was DBS403)."""
    outcome = _flux(
        tmp_path,
        "--network_dim 64 --network_args algo=boft preset=attn-only module_dropout=0.25 rescaled=True",
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, bool(a.fused)) == ("boft", 0.25, True)
    assert fate(outcome, "network_args module_dropout") == "mapped"
    # 0 is off
    outcome = _flux(tmp_path / "off", "--network_dim 64 --network_args algo=boft module_dropout=0")
    assert plan_of(outcome, tmp_path / "off").adapter.module_dropout == 0.0
    assert fate(outcome, "network_args module_dropout") == "inert"


def test_bypass_mode_rotates_the_fused_output(tmp_path):
    # dropout: ButterflyOFTModule never reads it, in bypass_mode either (DBS405)
    outcome = _flux(tmp_path, "--network_dim 64 --network_args algo=boft bypass_mode=True dropout=0.1")
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.bypass and a.fused and fate(outcome, "network_args bypass_mode") == "mapped"
    assert "never reads" in messages(outcome, "DBS405")


def test_modulation_linears_are_named_where_they_do_not_split(tmp_path):
    # 18432 = 2^11 x 9: img_mod.lin needs a block of 18, so network_dim 16 fails there too
    outcome = _flux(tmp_path, "--network_dim 16 --network_args algo=boft", allow=True)
    assert "img_mod.lin" in messages(outcome, "DBS402") and "linear1" in messages(outcome, "DBS402")


def test_scale_weight_norms_scales_the_fused_module_s_blocks(tmp_path):
    # ButterflyOFTModule.apply_max_norm: the norm of its blocks, which a fused layer's parts share
    outcome = _flux(tmp_path, "--network_dim 64 --scale_weight_norms 1.5 --network_args algo=boft")
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == ("boft", 1.5, "lycoris") and a.fused


def test_network_weights_of_a_fused_boft_start_its_blocks(tmp_path):
    """LyCORIS's load_weights (load_state_dict(strict=False)) into one ButterflyOFTModule per fused Linear:
    adapter.init_weights with init_partial; the blocks go into the parts' shared Parameter and the rescale
    rows to each part when the run loads it (runtime/lycoris_whole_init.py)."""
    import numpy as np
    from safetensors.numpy import save_file

    size, count = power2_factorization(9216, 32)  # FLUX.1's qkv: 18 x 512, popcount(511) + 1 = 10 stages
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    tensors = {
        f"{name}.oft_blocks": np.zeros((10, count, size, size), np.float16),
        f"{name}.rescale": np.ones((9216, 1), np.float16),
        f"{name}.alpha": np.array(0.0, np.float32),
    }
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(
        tmp_path,
        "--network_dim 32 --network_weights prev.safetensors --network_args algo=boft preset=attn-only "
        "rescaled=True",
    )
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_weights, a.init_partial, a.init_layers) == (
        "boft",
        str(tmp_path / "prev.safetensors"),
        True,
        1,
    )
    assert a.fused and a.oft_rescaled


def test_chroma_boft_has_no_modulation_linears(tmp_path):
    """--model_type chroma: kohya's Chroma blocks have no img_mod.lin / txt_mod.lin / modulation.lin, so
    network_dim 42 splits every Linear LyCORIS builds (18432 rows would need 18 too, which 42 covers anyway);
    the fused layers are Flux's."""
    from test_convert_kohya_chroma import _chroma

    assert "img_mod.lin" not in flux1_unsplit(16, "all", chroma=True)
    assert "img_mod.lin" in flux1_unsplit(16, "all", chroma=False)
    outcome = _chroma(tmp_path, '--network_module lycoris.kohya --network_dim 64 --network_args "algo=boft"')
    assert not errors(outcome) and "DBS403" not in codes(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "boft" and [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]
    assert "norm1.linear" not in a.denoiser_targets

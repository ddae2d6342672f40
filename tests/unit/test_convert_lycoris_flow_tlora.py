"""lycoris.kohya algo=tlora with flux_train_network.py (Flux, Chroma) and sd3_train_network.py
(dbspec/convert/kohya/lycoris_flow_tlora.py; was DBS403): kind "tlora" with fused_projections (one
TLoraModule per fused Linear: one SVD of the stacked weight), network_dim / network_alpha its rank / alpha
(alpha 0: the rank), module_dropout, bypass_mode with its dropout and --scale_weight_norms the adapter's;
SD3's 2x2 patch convolution (presets full / unet-only) a T-LoRA
layer at conv_dim / conv_alpha; a preset file's targets and its entries' blocks (T5-XXL's T-LoRA refused)."""

from __future__ import annotations

from convert_kit import codes, errors, messages, plan_of
from test_convert_kohya_chroma import _chroma
from test_convert_lycoris_flux import _flux
from test_convert_lycoris_sd3 import FUSED, TARGETS, _sd3

from dbspec.families import family_spec

FLUX_FUSED = ["img_attn_qkv", "txt_attn_qkv", "linear1"]


def test_flux_tlora_is_one_module_per_fused_layer(tmp_path):
    outcome = _flux(
        tmp_path,
        "--network_dropout 0.1 --network_args algo=tlora module_dropout=0.2 use_scalar=True rank_dropout=0.3",
    )
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.module_dropout, a.bypass, a.bypass_dropout) == (
        "tlora",
        8,
        4.0,
        0.2,
        False,
        0.0,
    )
    assert [f.name for f in a.fused] == FLUX_FUSED
    assert (
        "single_transformer_blocks.37.proj_out" in a.denoiser_targets and "proj_out" not in a.denoiser_targets
    )
    assert list(a.text_encoder_targets) == ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    unread = messages(outcome, "DBS405")
    assert "only in bypass_mode" in unread and "use_scalar" in unread and "rank_dropout" in unread
    bypass = plan_of(
        _flux(tmp_path, "--network_alpha 0 --network_args algo=tlora bypass_mode=True"), tmp_path
    )
    assert (bypass.adapter.bypass, bypass.adapter.alpha) == (True, 8.0)


def test_flux_tlora_bypass_dropout_max_norm_and_preset_file(tmp_path):
    for extra in (
        "--network_args algo=tlora bypass_mode=True dropout=0.1",
        "--network_dropout 0.1 --network_args algo=tlora bypass_mode=True",
    ):
        a = plan_of(_flux(tmp_path, extra), tmp_path).adapter  # one dropout over the fused output
        assert (a.bypass, a.bypass_dropout, len(a.fused)) == (True, 0.1, 3)
    assert "DBS402" in codes(_flux(tmp_path, "--network_args algo=tlora bypass_mode=True dropout=1.5"))
    # LyCORIS's max norm: one norm of each fused module's stacked update (runtime/max_norm.py)
    norms = plan_of(_flux(tmp_path, "--scale_weight_norms 1 --network_args algo=tlora"), tmp_path).adapter
    assert (norms.max_norm, norms.max_norm_form, len(norms.fused)) == (1.0, "lycoris", 3)
    # a preset file (was DBS403): its targets, its T-LoRA entries' dims as blocks; T5-XXL's modules refused
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["DoubleStreamBlock"]\ntext_encoder_target_module = []\n'
        "[module_algo_map.DoubleStreamBlock]\ndim = 2\nalpha = 2\n"
    )
    outcome = _flux(tmp_path, "--network_args algo=tlora preset=p.toml")
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, [f.name for f in a.fused]) == ("tlora", 8, 4.0, FLUX_FUSED[:2])
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks] == [("adapter", 2, 2.0)]
    assert not a.text_encoder_targets and "single_transformer_blocks.0.proj_out" not in a.denoiser_targets
    (tmp_path / "t5.toml").write_text('unet_target_module = []\ntext_encoder_target_module = ["T5Block"]\n')
    outcome = _flux(tmp_path, "--network_args algo=tlora preset=t5.toml")  # was DBS403: train.t5's T-LoRA
    assert not errors(outcome), errors(outcome)
    t5 = plan_of(outcome, tmp_path).adapter
    assert t5.kind == "tlora" and t5.t5_targets


def test_sd3_tlora_full_lin_and_the_patch_convolution(tmp_path):
    outcome = _sd3(tmp_path, "--network_args algo=tlora preset=full-lin")
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.conv_rank) == ("tlora", 16, 8.0, 0)
    assert list(a.denoiser_targets) == TARGETS and [f.name for f in a.fused] == FUSED
    assert "DBS403" not in codes(outcome) and not errors(outcome)
    # presets full / unet-only: TLoraModule on the 2x2 stride-2 patch convolution too (kohya trains it),
    # at conv_dim / conv_alpha: a block of its own where they differ from the network's
    patch = _sd3(tmp_path, "--network_train_unet_only --network_args algo=tlora preset=full")
    a = plan_of(patch, tmp_path).adapter
    assert list(a.denoiser_targets) == [*TARGETS, "pos_embed.proj"] and not a.blocks
    assert not errors(patch) and "DBS403" not in codes(patch)
    own = _sd3(tmp_path, "--network_train_unet_only --network_args algo=tlora preset=unet-only conv_dim=4")
    a = plan_of(own, tmp_path).adapter
    assert [(b.pattern, b.rank, b.alpha) for b in a.blocks] == [("^pos_embed\\.proj$", 4, 8.0)]
    # outside bypass_mode TLoraModule drops the patch's update alone (was DBS403): the adapter's dropout,
    # which its Linears' default forward never reads
    dropped = _sd3(tmp_path, "--network_dropout 0.1 --network_args algo=tlora preset=full")
    assert not errors(dropped) and "DBS403" not in codes(dropped) and "DBS603" not in codes(dropped)
    a = plan_of(dropped, tmp_path).adapter
    assert (a.bypass, a.bypass_dropout, a.denoiser_targets[-1]) == (False, 0.1, "pos_embed.proj")
    assert "DBS402" in codes(_sd3(tmp_path, "--network_args algo=tlora preset=full dropout=1.5"))
    lin = plan_of(_sd3(tmp_path, "--network_dropout 0.1 --network_args algo=tlora preset=full-lin"), tmp_path)
    assert (lin.adapter.bypass, lin.adapter.bypass_dropout) == (False, 0.0)  # no patch: never read


def test_chroma_tlora_is_one_module_per_fused_layer(tmp_path):
    outcome = _chroma(tmp_path, "--network_module lycoris.kohya --network_args algo=tlora preset=attn-mlp")
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and (a.kind, a.rank, a.alpha) == ("tlora", 16, 8.0)
    assert [f.name for f in a.fused] == FLUX_FUSED
    assert set(a.denoiser_targets) <= set(family_spec("chroma").kohya_lora_targets) | {
        f"single_transformer_blocks.{i}.proj_out" for i in range(64)
    }
    assert "DBS403" not in codes(outcome) and not errors(outcome)


def test_fused_tlora_spec_refuses_what_spans_the_parts(tmp_path):
    """A spec's fused T-LoRA with parts in blocks of other sig_types (one SVD of the stacked weight): DBS577;
    without fused_projections each part is its own T-LoRA, which no kohya file holds."""
    from convert_kit import GPU, out_path, plan_spec

    assert plan_of(_flux(tmp_path, "--network_args algo=tlora"), tmp_path).adapter.fused
    for override in (
        ['adapter.blocks=[{pattern = "attn\\\\.to_q$", rank = 8, alpha = 4.0, sig_type = "last"}]'],
    ):
        planned = plan_spec(out_path(tmp_path), GPU, overrides=override)
        assert planned.plan is None and "DBS577" in {d.code for d in planned.diagnostics}, override
    # each part its own SVD: a T-LoRA kohya's fused names have no place for (DBS381 on the kohya export)
    planned = plan_spec(out_path(tmp_path), GPU, overrides=["adapter.fused_projections=false"])
    assert {d.code for d in planned.diagnostics if d.severity == "error"} == {"DBS381"}


def test_flux_network_weights_of_a_tlora_start_the_fused_network(tmp_path):
    """--network_weights (was DBS356): LyCORIS's load_weights into one TLoraModule per fused Linear,
    adapter.init_weights with init_partial; Q and λ into the parts' shared Parameters, P's rows cut into
    the parts when the run loads it (runtime/lycoris_whole_init.py)."""
    import numpy as np
    from safetensors.numpy import save_file

    layers = {
        "lora_unet_double_blocks_0_img_attn_qkv": (9216, 3072),
        "lora_unet_single_blocks_0_linear1": (21504, 3072),
    }
    tensors = {}
    for name, (out, inp) in layers.items():
        tensors[f"{name}.q_layer.weight"] = np.zeros((8, inp), np.float16)
        tensors[f"{name}.p_layer.weight"] = np.zeros((out, 8), np.float16)
        tensors[f"{name}.lambda_layer"] = np.ones((1, 8), np.float16)
        tensors[f"{name}.alpha"] = np.array(4.0, np.float32)
    save_file(tensors, str(tmp_path / "prev.safetensors"))
    outcome = _flux(tmp_path, "--network_weights prev.safetensors --network_args algo=tlora")
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.init_weights, a.init_partial, a.init_layers) == (
        "tlora",
        str(tmp_path / "prev.safetensors"),
        True,
        2,
    )
    assert [f.name for f in a.fused] == FLUX_FUSED


def test_flux_tlora_entries_beside_a_locon_network(tmp_path):
    """A LoCon network's preset-file entries of algo=tlora on Flux (was DBS403 / a spec's DBS604): blocks of
    kind tlora at the entry's dim and alpha, one TLoraModule per fused Linear (fused_projections)."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n'
        '[name_algo_map."double_blocks.*.img_attn.qkv"]\nalgo = "tlora"\ndim = 4\nalpha = 2\n'
    )
    outcome = _flux(
        tmp_path, "--network_train_unet_only --network_args algo=locon preset=p.toml module_dropout=0.1"
    )
    assert "DBS403" not in codes(outcome) and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and a.module_dropout == 0.1 and [f.name for f in a.fused] == FLUX_FUSED[:2]
    assert [(b.kind, b.rank, b.alpha) for b in a.blocks if b.kind == "tlora"] == [("tlora", 4, 2.0)]


def test_tlora_entry_on_sd3_patch_converts(tmp_path):
    """lycoris_maps._tlora_kxk: a tlora entry on SD3's 2x2 stride-2 patch convolution in another algo's
    network converts (was DBS402: TLoraModule's 1x1 factors at the stride give an output of the layer's size,
    so kohya trains it): a block of kind tlora at the entry's conv dim (SD's padded k x k convolutions stop
    kohya: test_convert_kohya_tlora.py)."""
    (tmp_path / "p.toml").write_text(
        'unet_target_module = ["PatchEmbed"]\nunet_target_name = ["joint_blocks.0.x_block.attn.qkv"]\n'
        '[module_algo_map.PatchEmbed]\nalgo = "tlora"\ndim = 4\nalpha = 2\n'
    )
    for algo in ("locon", "lokr", "glora"):
        outcome = _sd3(tmp_path, f"--network_train_unet_only --network_args algo={algo} preset=p.toml")
        assert not errors(outcome) and "DBS402" not in codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert a.conv_targets == ("pos_embed.proj",)
        assert [(b.kind, b.conv_rank, b.conv_alpha) for b in a.blocks] == [("tlora", 4, 2.0)]

"""lycoris.kohya algo=dylora on kohya's Flux / SD3 (convert/kohya/lycoris_flow_dylora.py) with the switches
that act on whole fused modules (issue 12): `--scale_weight_norms` (LycorisNetworkKohya's
apply_max_norm_regularization calls each module's apply_max_norm; DyLoraModule keeps the base class's, which
returns (None, None): nothing scaled, so the limit is inert, unless a preset file's entries give layers a
LoCon / LoKr / LoHa / Diag-OFT module, whose own apply_max_norm scales); `module_dropout`
(one skip draw per fused module, its parts sharing it)."""

from __future__ import annotations

import re

import numpy as np
import pytest
from convert_kit import codes, errors, fate, plan_of
from test_convert_lycoris_flux import _flux
from test_convert_lycoris_sd3 import _sd3
from safetensors.numpy import save_file

# a realistic DyLoRA-on-Flux run: the network's unit 4, CLIP-L trained beside
DYLORA = "--network_args algo=dylora block_size=4 preset=full"


def test_scale_weight_norms_with_dylora_on_flux_is_inert(tmp_path):
    outcome = _flux(tmp_path, f"--scale_weight_norms 1.0 {DYLORA}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm) == ("dylora", 0.0) and a.fused


def test_scale_weight_norms_with_dylora_on_sd3_is_inert(tmp_path):
    outcome = _sd3(tmp_path, "--scale_weight_norms 2 --network_args algo=dylora block_size=8 preset=attn-mlp")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "scale_weight_norms") == "inert"
    assert plan_of(outcome, tmp_path).adapter.max_norm == 0.0


@pytest.mark.parametrize("algo", ["dylora block_size=2", "glora"])
def test_scale_weight_norms_with_a_locon_entry_in_a_dylora_network_scales_it(tmp_path, algo):
    """A preset file's LoCon entry is a LoConModule on the fused q/k/v, whose apply_max_norm scales, the
    DyLoRA / GLoRA modules skipped: the adapter's max_norm in LyCORIS's form (was DBS403; against
    lycoris-lora's modules: tests/runtime/test_lycoris_mixed_flow_max_norm.py)."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n\n'
        '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "locon"\ndim = 4\n',
        encoding="utf-8",
    )
    outcome = _flux(tmp_path, f"--scale_weight_norms 1 --network_args algo={algo} preset=p.toml")
    assert fate(outcome, "scale_weight_norms") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.max_norm, a.max_norm_form) == (algo.split()[0], 1.0, "lycoris") and a.fused
    assert [b.kind for b in a.blocks if b.rank] == ["lora"]


def test_module_dropout_with_dylora_on_flux_is_one_draw_per_fused_module(tmp_path):
    """module_dropout: DyLoraModule.forward's skip draw, one per fused Linear (its parts share it,
    runtime/fused.py FusedSkip), each other layer its own; was DBS403."""
    outcome = _flux(tmp_path, "--network_args algo=dylora block_size=4 module_dropout=0.1 preset=full")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, a.dylora_unit) == ("dylora", 0.1, 4)
    assert [f.name for f in a.fused] == ["img_attn_qkv", "txt_attn_qkv", "linear1"]


def test_module_dropout_with_dylora_on_sd3_maps(tmp_path):
    outcome = _sd3(tmp_path, "--network_args algo=dylora block_size=8 module_dropout=0.25 preset=attn-mlp")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout) == ("dylora", 0.25) and a.fused


def test_module_dropout_with_other_entries_in_a_dylora_network_converts(tmp_path):
    """A preset file's LoCon entry in a DyLoRA network with module_dropout: each LyCORIS module on a fused
    Linear draws once for its parts (runtime/mixed_kinds.py add_module_dropout: the LoCon parts through
    runtime/fused_dropout.py, the DyLoRA parts' FusedSkip); was DBS403."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n\n'
        '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "locon"\ndim = 4\n',
        encoding="utf-8",
    )
    outcome = _flux(tmp_path, "--network_args algo=dylora block_size=2 module_dropout=0.1 preset=p.toml")
    assert not {"DBS402", "DBS403"} & {d.code for d in outcome.diagnostics}
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.module_dropout, [b.kind for b in a.blocks]) == ("dylora", 0.1, ["lora"])


# --- --network_weights: only the file's alphas load (DyLoraModule's weights are up_list / down_list) ---

W = 3072  # FLUX.1's width; the file as LyCORIS saves a DyLoRA network (kohya's LoRA layout, rank 8)


def _file(path, modules: dict[str, tuple[int, int, float]]) -> None:
    """kohya's LoRA layout: name -> (out, in, alpha) at rank 8, zero tensors."""
    tensors = {}
    for name, (out, inp, alpha) in modules.items():
        tensors[f"{name}.lora_down.weight"] = np.zeros((8, inp), np.float16)
        tensors[f"{name}.lora_up.weight"] = np.zeros((out, 8), np.float16)
        tensors[f"{name}.alpha"] = np.array(alpha, np.float32)
    save_file(tensors, str(path))


FLUX_FILE = {
    "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 2.0),  # differs: all three parts at alpha 2
    "lora_unet_double_blocks_0_txt_attn_qkv": (3 * W, W, 4.0),  # the network's alpha
    "lora_unet_double_blocks_3_img_mlp_0": (4 * W, W, 0.1),  # float32 0.1
    "lora_unet_single_blocks_5_linear1": (7 * W, W, 1.0),  # differs: q, k, v and proj_mlp
    "lora_unet_final_layer_linear": (64, W, 1.0),  # no module of the full preset: loads nowhere
    "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 2.0),
    "lora_te1_text_model_encoder_layers_1_mlp_fc1": (3072, 768, 4.0),
}


def _matched(blocks, path: str):
    """The first block whose pattern matches `path` (peft's rank_pattern: the first match)."""
    return next(((b.rank, b.alpha) for b in blocks if re.search(b.pattern, path)), None)


def test_network_weights_with_dylora_on_flux_takes_the_files_alphas_per_fused_layer(tmp_path):
    """LycorisNetworkKohya.load_weights (load_state_dict(strict=False)) loads only each DyLoraModule's alpha
    buffer: the fused Linear's alpha on all its diffusers parts, at the network's rank, from a fresh init;
    a module the network does not build (the final layer) loads nowhere."""
    _file(tmp_path / "prev.safetensors", FLUX_FILE)
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors {DYLORA}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.init_weights) == ("dylora", 8, 4.0, "")
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.0.attn.{part}") == (8, 2.0)
        assert _matched(a.blocks, f"transformer_blocks.1.attn.{part}") is None  # the network's
        assert _matched(a.blocks, f"single_transformer_blocks.5.attn.{part}") == (8, 1.0)
        assert _matched(a.blocks, f"single_transformer_blocks.4.attn.{part}") is None
    assert _matched(a.blocks, "single_transformer_blocks.5.proj_mlp") == (8, 1.0)
    assert _matched(a.blocks, "transformer_blocks.0.attn.add_q_proj") is None
    assert _matched(a.blocks, "transformer_blocks.3.ff.net.0.proj") == (8, float(np.float32(0.1)))
    assert _matched(a.blocks, "proj_out") is None and "proj_out" not in a.denoiser_targets
    text = "text_encoder.text_model.encoder.layers.{}.{}"
    assert _matched(a.text_encoder_blocks, text.format(0, "self_attn.q_proj")) == (8, 2.0)
    assert _matched(a.text_encoder_blocks, text.format(1, "mlp.fc1")) is None


def test_network_weights_with_dylora_at_the_networks_alphas_is_inert(tmp_path):
    _file(tmp_path / "prev.safetensors", {"lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 4.0)})
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors {DYLORA}")
    assert fate(outcome, "network_weights") == "inert" and not errors(outcome)
    assert plan_of(outcome, tmp_path).adapter.blocks == ()


def test_network_weights_with_dylora_at_alpha_zero_build_no_layer_there(tmp_path):
    """An alpha of 0: LyCORIS copies it into DyLoraModule's buffer, which scales the update by 0 (output the
    base's, gradients 0): the fused Linear's parts not built (rank 0), was DBS403; with module_dropout, whose
    draw such a layer still takes (was DBS403), every part built at the rank, scaled by 0 (zero_scale)."""
    modules = {
        "lora_unet_single_blocks_0_linear1": (7 * W, W, 0.0),
        "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 2.0),
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 0.0),
    }
    _file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors {DYLORA}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    assert fate(outcome, "network_weights") == "mapped"
    a = plan_of(outcome, tmp_path).adapter
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"single_transformer_blocks.0.attn.{part}")[0] == 0
        assert _matched(a.blocks, f"transformer_blocks.0.attn.{part}") == (8, 2.0)
    assert _matched(a.blocks, "single_transformer_blocks.0.proj_mlp")[0] == 0
    assert _matched(a.blocks, "single_transformer_blocks.1.proj_mlp") is None  # the network's
    text = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert _matched(a.text_encoder_blocks, text)[0] == 0
    dropout = DYLORA + " module_dropout=0.1"
    outcome = _flux(tmp_path / "drop", f"--network_weights ../prev.safetensors {dropout}")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    zeroed = "single_transformer_blocks.0.{}"
    for path in (*(f"attn.{p}" for p in ("to_q", "to_k", "to_v")), "proj_mlp"):
        block = _block(a.blocks, zeroed.format(path))
        assert (block.rank, block.alpha, block.zero_scale) == (8, 0.0, True)
    assert _block(a.blocks, "transformer_blocks.0.attn.to_q").zero_scale is False
    block = _block(a.text_encoder_blocks, text)
    assert (block.rank, block.alpha, block.zero_scale) == (8, 0.0, True)


def _block(blocks, path: str):
    return next(b for b in blocks if re.search(b.pattern, path))


def test_network_weights_with_dylora_onto_a_preset_files_own_dims(tmp_path):
    """A preset file's entries with their own dims (was DBS403, "per-layer ranks from one source"):
    LycorisNetworkKohya builds each fused Linear's DyLoraModule at its entry's dim and alpha, then
    load_weights copies the file's alpha into its buffer: every part at the entry's dim and the file's
    alpha, truncated toward zero where the entry's alpha is a TOML integer (`torch.tensor(2)`: int64, 3.5
    loads as 3), a 0 leaving the layer unbuilt; layers the file lacks keep their entry's; a layer outside
    the entries at the network's rank with the file's alpha (dylora_preset_alphas.py, as on SD)."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["double_blocks.*_attn.*"]\n\n'
        '[name_algo_map."double_blocks.*.txt_attn.qkv"]\nalgo = "dylora"\ndim = 4\nalpha = 2\n\n'
        '[name_algo_map."double_blocks.*.img_attn.proj"]\nalgo = "dylora"\ndim = 4\nalpha = 1.5\n',
        encoding="utf-8",
    )
    modules = {
        "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 2.0),  # the network's rank 8
        "lora_unet_double_blocks_0_txt_attn_qkv": (3 * W, W, 3.5),  # int64 buffer: 3
        "lora_unet_double_blocks_0_img_attn_proj": (W, W, 0.5),  # float buffer: 0.5
        "lora_unet_double_blocks_0_txt_attn_proj": (W, W, 0.0),  # scaled by 0: not built
        "lora_unet_double_blocks_1_txt_attn_qkv": (3 * W, W, 2.5),  # int64 buffer: 2, the entry's
    }
    _file(tmp_path / "prev.safetensors", modules)
    args = "--network_args algo=dylora block_size=2 preset=p.toml"
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors {args}")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.kind, a.rank, a.alpha, a.init_weights) == ("dylora", 8, 4.0, "")
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.0.attn.{part}") == (8, 2.0)
        assert _matched(a.blocks, f"transformer_blocks.1.attn.{part}") is None  # the network's
    for part in ("add_q_proj", "add_k_proj", "add_v_proj"):
        assert _matched(a.blocks, f"transformer_blocks.0.attn.{part}") == (4, 3.0)
        assert _matched(a.blocks, f"transformer_blocks.1.attn.{part}") == (4, 2.0)  # 2.5 loads as 2
        assert _matched(a.blocks, f"transformer_blocks.2.attn.{part}") == (4, 2.0)  # the entry's
    assert _matched(a.blocks, "transformer_blocks.0.attn.to_out.0") == (4, 0.5)
    assert _matched(a.blocks, "transformer_blocks.1.attn.to_out.0") == (4, 1.5)
    assert _matched(a.blocks, "transformer_blocks.0.attn.to_add_out")[0] == 0
    assert _matched(a.blocks, "transformer_blocks.1.attn.to_add_out") is None
    assert all(b.unit == 2 for b in a.blocks if b.rank and b.unit)
    # with module_dropout the zeroed layer is built at its rank, scaled by 0, as it still draws
    args = args.replace("p.toml", "../p.toml") + " module_dropout=0.5"
    outcome = _flux(tmp_path / "drop", f"--network_weights ../prev.safetensors {args}")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path / "drop").adapter
    block = _block(a.blocks, "transformer_blocks.0.attn.to_add_out")
    assert (block.rank, block.alpha, block.zero_scale) == (8, 0.0, True)


def test_network_weights_with_dylora_at_network_alpha_zero_truncates_on_flux(tmp_path):
    """network_alpha 0: DyLoraModule's buffer is `torch.tensor(lora_dim)`, an int64, so the file's 2.5
    loads as 2 and 0.5 as 0 (scaled by 0: not built), on every part of the fused Linear."""
    modules = {
        "lora_unet_double_blocks_0_img_attn_qkv": (3 * W, W, 2.5),
        "lora_unet_double_blocks_0_txt_attn_qkv": (3 * W, W, 8.9),  # 8: the rank, the network's
        "lora_te1_text_model_encoder_layers_0_self_attn_q_proj": (768, 768, 0.5),
    }
    _file(tmp_path / "prev.safetensors", modules)
    outcome = _flux(tmp_path, f"--network_weights prev.safetensors --network_alpha 0 {DYLORA}")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert (a.rank, a.alpha) == (8, 8.0)  # alpha 0: the rank
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.0.attn.{part}") == (8, 2.0)
    assert _matched(a.blocks, "transformer_blocks.0.attn.add_q_proj") is None
    text = "text_encoder.text_model.encoder.layers.0.self_attn.q_proj"
    assert _matched(a.text_encoder_blocks, text)[0] == 0


def test_network_weights_with_dylora_on_sd3_names_the_mmdit_parts(tmp_path):
    """SD3's kohya names (joint_blocks_N_x_block_attn_qkv, context_block...) onto diffusers' q/k/v and
    add_q/k/v_proj; CLIP-G's modules (LyCORIS's lora_te2_) onto text_encoder_2."""
    width = 2432  # SD3.5-large
    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_joint_blocks_2_x_block_attn_qkv": (3 * width, width, 4.0),
            "lora_unet_joint_blocks_2_context_block_attn_qkv": (3 * width, width, 8.0),  # the network's
            "lora_te2_text_model_encoder_layers_3_self_attn_k_proj": (1280, 1280, 2.0),
        },
    )
    outcome = _sd3(
        tmp_path, "--network_weights prev.safetensors --network_args algo=dylora block_size=8 preset=attn-mlp"
    )
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.2.attn.{part}") == (16, 4.0)
    assert _matched(a.blocks, "transformer_blocks.2.attn.add_k_proj") is None
    path = "text_encoder_2.text_model.encoder.layers.3.self_attn.k_proj"
    assert _matched(a.text_encoder_blocks, path) == (16, 2.0)
    assert _matched(a.text_encoder_blocks, path.replace("text_encoder_2", "text_encoder")) is None


def test_network_weights_with_dylora_on_sd3s_patch_convolution_is_its_conv_alpha(tmp_path):
    """Preset full builds a DyLoraModule on SD3's patch convolution at conv_dim / conv_alpha: the file's
    alpha there (kohya's `x_embedder_proj`) is that layer's conv_alpha, its rank the network's."""
    save_file(
        {
            "lora_unet_x_embedder_proj.lora_down.weight": np.zeros((8, 16, 2, 2), np.float16),
            "lora_unet_x_embedder_proj.lora_up.weight": np.zeros((2432, 8), np.float16),
            "lora_unet_x_embedder_proj.alpha": np.array(2.0, np.float32),
        },
        str(tmp_path / "prev.safetensors"),
    )
    args = "--network_args algo=dylora block_size=8 preset=full conv_dim=8 conv_alpha=4"
    outcome = _sd3(tmp_path, f"--network_weights prev.safetensors {args}")
    assert not errors(outcome) and fate(outcome, "network_weights") == "mapped", errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert "pos_embed.proj" in a.conv_targets
    ((pattern, conv_rank, conv_alpha),) = [(b.pattern, b.conv_rank, b.conv_alpha) for b in a.blocks]
    assert re.search(pattern, "pos_embed.proj") and (conv_rank, conv_alpha) == (8, 2.0)


def test_network_weights_with_dylora_on_chroma(tmp_path):
    """Chroma (kohya's Flux layout without the modulation Linears): a Flux modulation name loads nowhere;
    a fused Linear's alpha goes to its parts; module_dropout maps alike."""
    from test_convert_kohya_chroma import _chroma

    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_double_blocks_0_img_mod_lin": (6 * W, W, 2.0),  # no Chroma module
            "lora_unet_double_blocks_1_img_attn_qkv": (3 * W, W, 2.0),
        },
    )
    args = "--network_args algo=dylora block_size=4 module_dropout=0.1 preset=full"
    outcome = _chroma(tmp_path, f"--network_module lycoris.kohya --network_weights prev.safetensors {args}")
    assert not errors(outcome) and "DBS403" not in codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert plan.model.family == "chroma" and (a.kind, a.module_dropout) == ("dylora", 0.1) and a.fused
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.1.attn.{part}") == (a.rank, 2.0)
    assert all(not re.search(b.pattern, "transformer_blocks.0.norm1.linear") for b in a.blocks)


def test_network_weights_with_dylora_onto_a_preset_files_own_dims_on_sd3(tmp_path):
    """SD3's kohya names (joint_blocks_N_x_block_attn_qkv) and LyCORIS's CLIP-G prefix (lora_te2_) onto the
    entries' dims: each part of the fused qkv at its entry's dim and the file's alpha (an integer entry
    alpha's int64 buffer: 4.5 loads as 4), CLIP-G's layer at the network's rank."""
    (tmp_path / "p.toml").write_text(
        'use_fnmatch = true\nunet_target_module = []\nunet_target_name = ["joint_blocks.*.attn.qkv"]\n'
        'text_encoder_target_module = ["CLIPAttention"]\n\n'
        '[name_algo_map."joint_blocks.*.x_block.attn.qkv"]\nalgo = "dylora"\ndim = 8\nalpha = 2\n',
        encoding="utf-8",
    )
    width = 2432  # SD3.5-large
    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_joint_blocks_2_x_block_attn_qkv": (3 * width, width, 4.5),
            "lora_unet_joint_blocks_2_context_block_attn_qkv": (3 * width, width, 3.0),
            "lora_te2_text_model_encoder_layers_3_self_attn_k_proj": (1280, 1280, 2.0),
        },
    )
    args = "--network_args algo=dylora block_size=8 preset=p.toml"
    outcome = _sd3(tmp_path, f"--network_weights prev.safetensors {args}")
    assert fate(outcome, "network_weights") == "mapped" and not errors(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    for part in ("to_q", "to_k", "to_v"):
        assert _matched(a.blocks, f"transformer_blocks.2.attn.{part}") == (8, 4.0)
        assert _matched(a.blocks, f"transformer_blocks.3.attn.{part}") == (8, 2.0)  # the entry's
    for part in ("add_q_proj", "add_k_proj", "add_v_proj"):
        assert _matched(a.blocks, f"transformer_blocks.2.attn.{part}") == (16, 3.0)
    path = "text_encoder_2.text_model.encoder.layers.3.self_attn.k_proj"
    assert _matched(a.text_encoder_blocks, path) == (16, 2.0)

"""lycoris.kohya --dim_from_weights with a LyCORIS Diag-OFT, BOFT, GLoRA or IA3 file on SD 1.x and SDXL
(convert/kohya/lycoris_sd_rebuilt.py; issue 12): create_network_from_weights builds each module of the file
from its keys (DiagOFTModule at its blocks' size and its alpha as constraint, ButterflyOFTModule alike,
GLoRAModule at a2's rows and its alpha; IA3Module cannot be built: TypeError), so the plan adapts exactly
the file's layers at those values, per-module ones as blocks. The numbers against lycoris-lora 4.1.3:
tests/runtime/test_lycoris_sd_rebuilt_file.py."""

from __future__ import annotations

import re

import numpy as np
from convert_kit import SDXL, codes, errors, images, kohya, kohya_lora, messages, plan_of
from safetensors.numpy import save_file

Q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
K = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"
FF = "lora_unet_up_blocks_3_attentions_2_transformer_blocks_0_ff_net_2"
CONV = "lora_unet_down_blocks_1_resnets_0_conv1"
SHORTCUT = "lora_unet_down_blocks_1_resnets_0_conv_shortcut"
TE = "lora_te_text_model_encoder_layers_3_self_attn_k_proj"
FROM = "--network_module lycoris.kohya --network_args algo=lokr conv_dim=8 --network_weights prev.safetensors"


def _file(path, modules: dict[str, dict[str, object]]) -> None:
    tensors = {}
    for name, shapes in modules.items():
        for key, shape in shapes.items():
            value = np.full((), shape, np.float16) if key == "alpha" else np.zeros(shape, np.float16)
            tensors[f"{name}.{key}"] = value
    save_file(tensors, str(path))


def _convert(tmp_path, modules, extra: str = "--dim_from_weights"):
    tmp_path.mkdir(parents=True, exist_ok=True)
    _file(tmp_path / "prev.safetensors", modules)
    return kohya_lora(tmp_path, f"{FROM} {extra}")


def _picks(targets, path: str) -> bool:
    return any(path == t or path.endswith("." + t) for t in targets)


def _block(blocks, path: str):
    return next((b for b in blocks if re.search(b.pattern, path)), None)


def _oft(size: int, width: int, alpha: float = 1e-3, rescale: bool = True, conv: bool = False) -> dict:
    out: dict[str, object] = {"oft_blocks": (width // size, size, size), "alpha": alpha}
    if rescale:
        out["rescale"] = (width, 1, 1, 1) if conv else (width, 1)
    return out


DIAG = {
    Q: _oft(4, 320),
    FF: _oft(4, 320),
    K: _oft(8, 320, alpha=0.5),  # its own block size and constraint: a block
    CONV: _oft(4, 640, conv=True),
    SHORTCUT: _oft(4, 640, rescale=False, conv=True),  # no rescale: a block with rescaled off
    TE: _oft(4, 768),
}


def test_diag_oft_file_adapts_its_layers_at_their_block_sizes(tmp_path):
    outcome = _convert(tmp_path, DIAG)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "diag-oft" and a.oft_form == "lycoris" and a.init_partial and a.init_weights
    assert a.oft_block_size == 4 and a.oft_rescaled and abs(a.oft_constraint - 1e-3) < 1e-6
    assert all(
        _picks(a.denoiser_targets, p)
        for p in (
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
            "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
            "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2",
            "down_blocks.1.resnets.0.conv_shortcut",
        )
    )
    assert not _picks(a.denoiser_targets, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v")
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    assert not _picks(a.conv_targets, "down_blocks.1.resnets.0.conv2")
    assert _picks(a.text_encoder_targets, "text_model.encoder.layers.3.self_attn.k_proj")
    k = _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k")
    assert k is not None and k.rank == 8 and k.alpha == 0.5  # block size 8, constraint 0.5
    shortcut = _block(a.blocks, "down_blocks.1.resnets.0.conv_shortcut")
    assert shortcut is not None and shortcut.rescaled == "off" and shortcut.rank == 4
    for path in (
        "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
        "down_blocks.1.resnets.0.conv1",
    ):
        assert _block(a.blocks, path) is None, path
    assert fate_of(outcome, "network_dim") == "inert"


def fate_of(outcome, key: str) -> str:
    return outcome.conversion.reports[key].fate


def test_boft_file(tmp_path):
    # BOFT at hint 10 on 320 rows: 32 blocks of 10 (a power of two) in popcount(31) + 1 = 6 stages
    modules = {
        Q: {"oft_blocks": (6, 32, 10, 10), "alpha": 0.0},
        FF: {"oft_blocks": (6, 32, 10, 10), "alpha": 0.0},
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "boft" and a.oft_block_size == 10 and a.oft_constraint == 0 and not a.oft_rescaled
    assert not a.blocks and a.init_partial
    # no module of the text encoder: kohya builds none there
    assert not any(
        c.name == "text_encoder" and c.trainable == "lora"
        for c in plan_of(outcome, tmp_path).precision.components
    )


def test_boft_blocks_its_split_does_not_rebuild_are_invalid(tmp_path):
    outcome = _convert(tmp_path, {Q: {"oft_blocks": (5, 32, 10, 10), "alpha": 0.0}})
    assert "DBS402" in codes(outcome) and "ButterflyOFTModule" in messages(outcome, "DBS402")


def test_diag_oft_blocks_wider_than_many_are_invalid(tmp_path):
    outcome = _convert(tmp_path, {Q: {"oft_blocks": (10, 32, 32), "alpha": 0.0}})
    assert "DBS402" in codes(outcome) and "copy_ raises" in messages(outcome, "DBS402")


def test_oft_module_without_alpha_is_invalid(tmp_path):
    outcome = _convert(tmp_path, {Q: {"oft_blocks": (80, 4, 4)}})
    assert "DBS402" in codes(outcome) and "float(alpha)" in messages(outcome, "DBS402")


def _glora(rank: int, width: int, out: int | None = None, alpha: float = 1.0, conv: int = 0) -> dict:
    out = out or width
    if conv:
        k = (conv, conv)
        return {
            "a1.weight": (width, rank, 1, 1),
            "a2.weight": (rank, width, 1, 1),
            "b1.weight": (out, rank, 1, 1),
            "b2.weight": (rank, width, *k),
            "alpha": alpha,
        }
    return {
        "a1.weight": (width, rank),
        "a2.weight": (rank, width),
        "b1.weight": (out, rank),
        "b2.weight": (rank, width),
        "alpha": alpha,
    }


def test_glora_file_adapts_its_layers_at_their_ranks(tmp_path):
    modules = {
        Q: _glora(4, 320, alpha=2.0),
        FF: _glora(4, 1280, 320, alpha=2.0),
        K: _glora(8, 320, alpha=0.0),  # alpha 0: the rank (scale 1)
        CONV: _glora(2, 320, 640, alpha=1.0, conv=3),
        SHORTCUT: _glora(4, 320, 640, alpha=2.0, conv=1),
        TE: _glora(4, 768, alpha=2.0),
        "lora_te_text_model_encoder_layers_5_mlp_fc1": _glora(16, 768, 3072, alpha=4.0),
    }
    outcome = _convert(tmp_path, modules)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "glora" and a.rank == 4 and a.alpha == 2.0 and a.init_partial
    assert a.conv_rank == 2 and a.conv_alpha == 1.0
    assert _picks(a.conv_targets, "down_blocks.1.resnets.0.conv1")
    assert _picks(a.denoiser_targets, "down_blocks.1.resnets.0.conv_shortcut")
    k = _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k")
    assert k is not None and (k.rank, k.alpha) == (8, 8.0)
    assert _block(a.blocks, "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q") is None
    fc1 = _block(a.text_encoder_blocks, "text_encoder.text_model.encoder.layers.5.mlp.fc1")
    assert fc1 is not None and (fc1.rank, fc1.alpha) == (16, 4.0)
    assert _block(a.text_encoder_blocks, "text_encoder.text_model.encoder.layers.3.self_attn.k_proj") is None


def test_glora_tucker_core_is_invalid(tmp_path):
    module = _glora(2, 320, 640, conv=3) | {"bm.weight": (2, 2, 3, 3)}
    outcome = _convert(tmp_path, {CONV: module})
    assert "DBS402" in codes(outcome) and "bm.weight" in messages(outcome, "DBS402")


def test_ia3_file_is_invalid(tmp_path):
    outcome = _convert(tmp_path, {Q: {"weight": (320,), "on_input": ()}})
    assert "DBS402" in codes(outcome) and "TypeError" in messages(outcome, "DBS402")


def test_mixed_kinds_are_not_expressed(tmp_path):
    outcome = _convert(tmp_path, {Q: _oft(4, 320), FF: _glora(4, 1280, 320)})
    assert "DBS403" in codes(outcome) and "beside" in messages(outcome, "DBS403")


def test_sdxl_original_names(tmp_path):
    _file(
        tmp_path / "prev.safetensors",
        {
            "lora_unet_input_blocks_4_1_transformer_blocks_1_attn2_to_v": _oft(4, 640),
            "lora_unet_output_blocks_0_0_in_layers_2": _oft(4, 1280, conv=True),
            "lora_te2_text_model_encoder_layers_20_mlp_fc1": _oft(8, 5120),
        },
    )
    images(tmp_path / "x" / "10_ohwx", 2, (64, 64))
    outcome = kohya(
        tmp_path,
        command=f"accelerate launch sdxl_train_network.py --pretrained_model_name_or_path={SDXL} "
        f"--train_data_dir=x --resolution=64 {FROM} --dim_from_weights --learning_rate=1e-4 "
        "--max_train_steps=3 --output_dir=out",
    )
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert a.kind == "diag-oft"
    assert _picks(a.denoiser_targets, "down_blocks.1.attentions.0.transformer_blocks.1.attn2.to_v")
    assert _picks(a.conv_targets, "up_blocks.0.resnets.0.conv1")
    fc1 = _block(a.text_encoder_blocks, "text_encoder_2.text_model.encoder.layers.20.mlp.fc1")
    assert fc1 is not None and fc1.rank == 8
    assert not any(c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components)


# LyCORIS's NormModules (a train_norm run's w_norm / b_norm): create_network_from_weights builds one on each
# norm the file names, beside the other modules
NORM1 = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1"
GROUP = "lora_unet_down_blocks_1_resnets_0_norm2"
TE_NORM = "lora_te_text_model_encoder_layers_3_layer_norm1"
LOCON = {
    Q: {"lora_down.weight": (4, 320), "lora_up.weight": (320, 4), "alpha": 2.0},
    TE: {"lora_down.weight": (4, 768), "lora_up.weight": (768, 4), "alpha": 2.0},
}
NORMS = {
    NORM1: {"w_norm": (320,), "b_norm": (320,)},
    GROUP: {"w_norm": (640,), "b_norm": (640,)},
    TE_NORM: {"w_norm": (768,), "b_norm": (768,)},
}


def test_norms_beside_a_locon_file_are_offset_norms(tmp_path):
    outcome = _convert(tmp_path, LOCON | NORMS)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "lora" and a.rank == 4 and a.init_partial
    assert _picks(a.denoiser_norms, "down_blocks.0.attentions.0.transformer_blocks.0.norm1")
    assert _picks(a.denoiser_norms, "down_blocks.1.resnets.0.norm2")
    assert not _picks(a.denoiser_norms, "down_blocks.1.resnets.0.norm1")
    assert not _picks(a.denoiser_norms, "down_blocks.0.attentions.0.transformer_blocks.0.norm2")
    assert _picks(a.text_encoder_norms, "text_model.encoder.layers.3.layer_norm1")
    assert not _picks(a.text_encoder_norms, "text_model.encoder.layers.4.layer_norm1")


def test_norms_beside_oft_and_glora_files(tmp_path):
    for kind, modules in (("diag-oft", {Q: _oft(4, 320)}), ("glora", {Q: _glora(4, 320)})):
        outcome = _convert(tmp_path / kind, modules | NORMS)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path / kind).adapter
        assert a.kind == kind and _picks(a.denoiser_norms, "down_blocks.1.resnets.0.norm2")
        assert _picks(a.text_encoder_norms, "text_model.encoder.layers.3.layer_norm1")


def test_norms_with_unet_only_drop_the_text_encoders(tmp_path):
    outcome = _convert(tmp_path, LOCON | NORMS, "--dim_from_weights --network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.denoiser_norms and not a.text_encoder_norms


def test_norm_offsets_on_a_linear_are_invalid(tmp_path):
    outcome = _convert(tmp_path, LOCON | {K: {"w_norm": (320,), "b_norm": (320,)}})
    assert "DBS402" in codes(outcome) and "NormModule" in messages(outcome, "DBS402")


def test_norms_beside_boft_convert(tmp_path):
    """LyCORIS builds the file's NormModules whatever the other modules: beside BOFT's (was DBS403) the
    adapter's norm offsets too (tests/runtime/test_lycoris_sd_boft_norm_file.py)."""
    outcome = _convert(tmp_path, {Q: {"oft_blocks": (6, 32, 10, 10), "alpha": 0.0}} | NORMS)
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    a = plan_of(outcome, tmp_path).adapter
    assert a.kind == "boft" and a.init_partial
    assert _picks(a.text_encoder_norms, "text_model.encoder.layers.3.layer_norm1")
    assert a.denoiser_norms and not a.text_encoder_targets


def test_text_encoder_norms_alone_build_no_text_encoder_lora(tmp_path):
    outcome = _convert(tmp_path, {Q: LOCON[Q], TE_NORM: NORMS[TE_NORM]})
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    a = plan.adapter
    assert not a.text_encoder_targets and _picks(
        a.text_encoder_norms, "text_model.encoder.layers.3.layer_norm1"
    )
    assert any(c.name == "text_encoder" and c.trainable == "lora" for c in plan.precision.components)


def test_flux_oft_glora_files_convert_there_norm_files_do_not(tmp_path):
    """On kohya's Flux a Diag-OFT / GLoRA file builds dbspec's fused Diag-OFT / GLoRA
    (lycoris_flow_rebuilt.py, was DBS403); a NormModule on a Linear there stops kohya (DBS402, naming it;
    CLIP's convert: test_convert_lycoris_flow_norm_file.py)."""
    from test_convert_lycoris_flow_dim_from_weights import _flux

    qkv = "lora_unet_double_blocks_0_img_attn_qkv"
    for kind, modules in (
        ("diag-oft", {qkv: {"oft_blocks": (2304, 4, 4), "alpha": 0.0}}),
        ("glora", {"lora_unet_double_blocks_0_img_attn_proj": _glora(4, 3072)}),
    ):
        (tmp_path / kind).mkdir()
        _file(tmp_path / kind / "prev.safetensors", modules)
        outcome = _flux(tmp_path / kind)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        assert plan_of(outcome, tmp_path / kind).adapter.kind == kind
    (tmp_path / "norm").mkdir()
    norm = {qkv: {"oft_blocks": (2304, 4, 4), "alpha": 0.0}, "lora_unet_img_in": {"w_norm": (3072,)}}
    _file(tmp_path / "norm" / "prev.safetensors", norm)
    outcome = _flux(tmp_path / "norm", allow=True)
    assert "DBS402" in codes(outcome) and "`lora_unet_img_in.w_norm`" in messages(outcome, "DBS402")


def test_negative_oft_alpha_constrains_nothing(tmp_path):
    """A Diag-OFT / BOFT module's negative alpha (was DBS403): make_module_from_state_dict builds it at
    constraint = alpha, which DiagOFTModule / ButterflyOFTModule apply only `if constraint > 0`: constraint
    0, the modules at 0 and at a negative alpha alike (tests/runtime/test_lycoris_flow_rebuilt_file.py checks
    the rebuilt outputs)."""
    for modules in (
        {Q: _oft(4, 320, alpha=-0.5), FF: _oft(4, 320, alpha=0.0), K: _oft(4, 320, alpha=-2.0)},
        {
            Q: {"oft_blocks": (6, 32, 10, 10), "alpha": -1.0},
            FF: {"oft_blocks": (6, 32, 10, 10), "alpha": 0.0},
        },
    ):
        outcome = _convert(tmp_path, modules)
        assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
        a = plan_of(outcome, tmp_path).adapter
        assert a.oft_constraint == 0.0 and not a.blocks


def test_text_modules_at_text_encoder_lr_0_stay_idle(tmp_path):
    """text_encoder_lr 0: train_network.py's apply_to keeps the text encoder's modules (is_train_text_encoder
    reads no rate), with the file's weights, and LyCORIS's prepare_optimizer_params skips their group: CLIP
    runs rotated and never trains, train.text_encoder_idle = "kohya" (convert/kohya/idle_text.py)."""
    outcome = _convert(tmp_path, DIAG, "--dim_from_weights --text_encoder_lr 0")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
    plan = plan_of(outcome, tmp_path)
    assert plan.idle_text_encoders == ("text_encoder",) and plan.adapter.kind == "diag-oft"
    outcome = _convert(tmp_path, DIAG, "--dim_from_weights --text_encoder_lr 0 --network_train_unet_only")
    assert not {"DBS402", "DBS403"} & codes(outcome), errors(outcome)
